/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <acl/libacl.h>
#include <assert.h>
#include <blkid.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/acl.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "device.h"
#include "log.h"
#include "manager.h"
#include "media-mount.h"
#include "udev-props.h"
#include "util.h"

#ifndef BLKGETDISKSEQ
#define BLKGETDISKSEQ _IOR(0x12, 128, __u64)
#endif

/* The longest mount directory name we make (NAME_MAX is 255; room for a suffix). */
#define MOUNT_NAME_MAX 200U
/* name, name1 ... name999 */
#define MOUNT_SUFFIX_MAX 1000U

static const char *const allowed_types[] = {
        "ext2",  "ext3",  "ext4",  "xfs",     "btrfs", "squashfs", "erofs", "vfat",
        "msdos", "exfat", "ntfs3", "iso9660", "udf",   "f2fs",     NULL,
};

/* No owners on disk: everything would belong to root without uid=/gid=. */
static const char *const ownerless_types[] = {
        "vfat", "msdos", "exfat", "ntfs", "ntfs3", "iso9660", "udf", NULL,
};

static const char *const read_only_types[] = {
        "squashfs", "erofs", "iso9660", "udf", NULL,
};

static bool in_list(const char *const *l, const char *s) {
        if (!s)
                return false;
        for (; *l; l++)
                if (streq(*l, s))
                        return true;
        return false;
}

bool mount_fstype_allowed(const char *fstype) {
        return in_list(allowed_types, fstype);
}

bool mount_fstype_ownerless(const char *fstype) {
        return in_list(ownerless_types, fstype);
}

bool mount_fstype_read_only(const char *fstype) {
        return in_list(read_only_types, fstype);
}

void mount_probe_done(MountProbe *p) {
        free(p->type);
        free(p->label);
        free(p->uuid);
        free(p->pttype);
        free(p->usage);
        *p = (MountProbe){};
}

static int probe_lookup(blkid_probe pr, const char *name, char **ret) {
        const char *v = NULL;

        if (blkid_probe_lookup_value(pr, name, &v, NULL) < 0 || !v) {
                *ret = NULL;
                return 0;
        }
        *ret = strdup(v);
        return *ret ? 0 : -ENOMEM;
}

int mount_probe_fd(int fd, MountProbe *ret) {
        _cleanup_(blkid_free_probep) blkid_probe pr = NULL;
        _cleanup_(mount_probe_done) MountProbe p = {};
        int r;

        r = blkid_probe_from_fd(fd, &pr);
        if (r < 0)
                return r;
        (void) blkid_probe_enable_superblocks(pr, 1);
        (void) blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_LABEL | BLKID_SUBLKS_UUID |
                                                             BLKID_SUBLKS_TYPE |
                                                             BLKID_SUBLKS_USAGE);
        (void) blkid_probe_enable_partitions(pr, 1);

        errno = 0;
        r = blkid_do_safeprobe(pr);
        if (r == -2 || r == 1) {
                /* Ambivalent (two signatures) or nothing: no file system we would trust. */
                *ret = (MountProbe){};
                return 0;
        }
        if (r < 0)
                return errno > 0 ? -errno : -EIO;
        r = probe_lookup(pr, "TYPE", &p.type);
        if (r >= 0)
                r = probe_lookup(pr, "LABEL", &p.label);
        if (r >= 0)
                r = probe_lookup(pr, "UUID", &p.uuid);
        if (r >= 0)
                r = probe_lookup(pr, "PTTYPE", &p.pttype);
        if (r >= 0)
                r = probe_lookup(pr, "USAGE", &p.usage);
        if (r < 0)
                return r;

        *ret = p;
        p = (MountProbe){};
        return 0;
}

static const struct {
        const char *name;
        unsigned long flag;
} extra_options[] = {
        {"ro", MS_RDONLY},         {"noexec", MS_NOEXEC},
        {"noatime", MS_NOATIME},   {"nodiratime", MS_NODIRATIME},
        {"relatime", MS_RELATIME}, {"sync", MS_SYNCHRONOUS},
        {"dirsync", MS_DIRSYNC},
};

int mount_parse_extra_options(const char *s, unsigned long *flags, char **ret_bad) {
        const char *p = s;

        if (!s || !*s)
                return 0;
        for (;;) {
                size_t n = strcspn(p, ",");
                bool found = false;

                for (size_t i = 0; i < ELEMENTSOF(extra_options); i++)
                        if (strlen(extra_options[i].name) == n &&
                            strncmp(extra_options[i].name, p, n) == 0) {
                                *flags |= extra_options[i].flag;
                                found = true;
                                break;
                        }
                if (!found) {
                        if (ret_bad)
                                *ret_bad = strndup(p, n);
                        return -EINVAL;
                }
                if (!p[n])
                        return 0;
                p += n + 1;
        }
}

int mount_flags_and_data(const char *fstype, const MountRequest *req, unsigned long *ret_flags,
                         char **ret_data) {
        unsigned long flags = MS_NOSUID | MS_NODEV | req->flags;
        char *data = NULL;

        /* Whatever the caller asked for, never a way around nosuid,nodev. */
        flags &= ~(unsigned long) (MS_REMOUNT | MS_BIND | MS_MOVE | MS_REC | MS_SHARED |
                                   MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE);
        if (req->read_only || mount_fstype_read_only(fstype))
                flags |= MS_RDONLY;
        if (mount_fstype_ownerless(fstype) &&
            asprintf(&data, "uid=%u,gid=%u", (unsigned) req->uid, (unsigned) req->gid) < 0)
                return -ENOMEM;
        *ret_flags = flags;
        *ret_data = data;
        return 0;
}

int mount_name_from_probe(const MountProbe *p, char **ret) {
        const char *src = p && p->label && *p->label ? p->label
                          : p && p->uuid && *p->uuid ? p->uuid
                                                     : "disk";
        size_t n = strlen(src);
        char *s;

        if (n > MOUNT_NAME_MAX) {
                /* Cut at a character boundary: never leave half a UTF-8 sequence. */
                n = MOUNT_NAME_MAX;
                while (n > 0 && ((unsigned char) src[n] & 0xC0) == 0x80)
                        n--;
        }
        s = strndup(src, n);
        if (!s)
                return -ENOMEM;
        for (char *c = s; *c; c++)
                if (*c == '/' || (unsigned char) *c < 0x20 || *c == 0x7F)
                        *c = '_';
        /* Leading dots: hidden names, "." and "..". */
        for (char *c = s; *c == '.'; c++)
                *c = '_';
        if (!*s) {
                free(s);
                s = strdup("disk");
                if (!s)
                        return -ENOMEM;
        }
        *ret = s;
        return 0;
}

/* An fd of node of d's binding: checked to be devnum (d itself or a partition of it) and to
 * carry d's diskseq (a partition reports its disk's). */
static int open_binding(Manager *m, Device *d, const char *node, dev_t devnum, int *ret) {
        _cleanup_free_ char *path = path_join_root(m->root, node);
        _cleanup_close_ int fd = -EBADF;
        uint64_t seq = 0;
        struct stat st;

        if (!path)
                return -ENOMEM;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISBLK(st.st_mode) || st.st_rdev != devnum)
                return -ESTALE;
        if (ioctl(fd, BLKGETDISKSEQ, &seq) < 0)
                return -errno;
        if (seq != d->status.diskseq)
                return -ESTALE;
        *ret = TAKE_FD(fd);
        return 0;
}

static bool streq_or_empty(const char *a, const char *b) {
        return streq(a ?: "", b ?: "");
}

/* Stores the probe in d, emitting the properties that changed. */
void mount_set_ids(Manager *m, Device *d, const MountProbe *p) {
        char *changed[4];
        size_t n = 0;

#define SET(field, value, prop)                                                                    \
        if (!streq_or_empty(d->field, value)) {                                                    \
                char *v = (value) ? strdup(value) : NULL;                                          \
                if (!(value) || v) {                                                               \
                        free(d->field);                                                            \
                        d->field = v;                                                              \
                        changed[n++] = (char *) prop;                                              \
                }                                                                                  \
        }
        SET(id_type, p->type, "IdType");
        SET(id_label, p->label, "IdLabel");
        SET(id_uuid, p->uuid, "IdUUID");
#undef SET
        changed[n] = NULL;
        if (n > 0)
                manager_emit_device_changed(m, d, changed);
}

void mount_update_ids(Manager *m, Device *d, sd_device *device) {
        _cleanup_(udev_ids_done) UdevIds ids = {};

        /* What udev's blkid builtin found: no device I/O on this path, which runs for every
         * udev event of a managed device. Mount probes the device itself. */
        if (udev_props_read_ids(device, &ids) < 0)
                return;
        mount_set_ids(m, d, &(MountProbe){.type = ids.type, .label = ids.label, .uuid = ids.uuid});
}

/* Opens (creating when missing) a root-owned directory name in dir_fd, never following a
 * symbolic link, and makes sure nobody else can write to it. */
static int open_root_dir(int dir_fd, const char *name, mode_t mode, int *ret) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        if (mkdirat(dir_fd, name, mode) < 0 && errno != EEXIST)
                return -errno;
        fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        /* Not made by root (a user could not have: the parent is root's): something is wrong
         * here, don't mount anything into it. */
        if (!S_ISDIR(st.st_mode) || st.st_uid != 0 || st.st_gid != 0)
                return -EPERM;
        if ((st.st_mode & 07777) != mode && fchmod(fd, mode) < 0)
                return -errno;
        *ret = TAKE_FD(fd);
        return 0;
}

static int set_user_acl(int fd, uid_t uid) {
        _cleanup_free_ char *text = NULL;
        acl_t acl;
        int r = 0;

        /* As udisks: the directory is root's, the user may list and enter it. */
        if (asprintf(&text, "u::rwx,g::r-x,o::---,u:%u:r-x,m::r-x", (unsigned) uid) < 0)
                return -ENOMEM;
        acl = acl_from_text(text);
        if (!acl)
                return -errno;
        if (acl_set_fd(fd, acl) < 0)
                r = -errno;
        acl_free(acl);
        return r;
}

static bool user_name_valid(const char *user) {
        return user && *user && !strchr(user, '/') && !streq(user, ".") && !streq(user, "..") &&
               strlen(user) <= 255;
}

/* The fd of /run/media/<user>, made as needed: /run/media root:root 0755, /run/media/<user>
 * root:root 0750 with the user's ACL. */
static int open_user_dir(Manager *m, const char *user, uid_t uid, bool create, int *ret) {
        _cleanup_free_ char *run = path_join_root(m->root, "/run");
        _cleanup_close_ int run_fd = -EBADF, media_fd = -EBADF, user_fd = -EBADF;
        int r;

        if (!run)
                return -ENOMEM;
        if (!user_name_valid(user))
                return -EINVAL;
        run_fd = open(run, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (run_fd < 0)
                return -errno;
        if (!create) {
                media_fd = openat(run_fd, "media", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (media_fd < 0)
                        return -errno;
                user_fd = openat(media_fd, user, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (user_fd < 0)
                        return -errno;
                *ret = TAKE_FD(user_fd);
                return 0;
        }
        r = open_root_dir(run_fd, "media", 0755, &media_fd);
        if (r < 0)
                return r;
        r = open_root_dir(media_fd, user, 0750, &user_fd);
        if (r < 0)
                return r;
        if (uid != 0) {
                r = set_user_acl(user_fd, uid);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_FD(user_fd);
        return 0;
}

static int mount_what(char **ret_what, const char *format, ...) _printf_(2, 3);
static int mount_what(char **ret_what, const char *format, ...) {
        va_list ap;

        if (!ret_what)
                return 0;
        va_start(ap, format);
        if (vasprintf(ret_what, format, ap) < 0)
                *ret_what = NULL;
        va_end(ap);
        return 0;
}

void mount_work_done(MountWork *w) {
        if (w->dev_fd >= 0)
                (void) close(w->dev_fd);
        if (w->user_fd >= 0)
                (void) close(w->user_fd);
        free(w->source);
        free(w->node);
        free(w->user);
        free(w->fstype);
        free(w->mount_point);
        free(w->what);
        mount_probe_done(&w->probe);
        *w = (MountWork){.dev_fd = -EBADF, .user_fd = -EBADF};
}

int mount_work_prepare(Manager *m, Device *d, const MountRequest *req, MountWork *w,
                       char **ret_what) {
        const char *node = device_mount_node(d, req->partition);
        dev_t devnum = device_mount_devnum(d, req->partition);
        int r;

        *w = (MountWork){.dev_fd = -EBADF, .user_fd = -EBADF};
        if (!node)
                return -ENXIO;
        /* Held open until the mount holds the device itself: while we have it open, the
         * binding cannot be replaced (a teardown waits for the last close). */
        r = open_binding(m, d, node, devnum, &w->dev_fd);
        if (r < 0) {
                mount_what(ret_what, "cannot open %s as this binding", node);
                goto fail;
        }
        r = open_user_dir(m, req->user, req->uid, true, &w->user_fd);
        if (r < 0) {
                mount_what(ret_what, "cannot prepare " MOUNT_MEDIA_DIR "/%s", req->user);
                goto fail;
        }
        w->source = path_join_root(m->root, node);
        w->node = strdup(node);
        w->user = strdup(req->user);
        if (!w->source || !w->node || !w->user ||
            (req->fstype && !(w->fstype = strdup(req->fstype)))) {
                r = -ENOMEM;
                goto fail;
        }
        w->devnum = devnum;
        w->uid = req->uid;
        w->gid = req->gid;
        w->flags = req->flags;
        w->read_only = req->read_only;
        return 0;
fail:
        mount_work_done(w);
        return r;
}

static int mount_work_fail(MountWork *w, int r, const char *format, ...) _printf_(3, 4);
static int mount_work_fail(MountWork *w, int r, const char *format, ...) {
        va_list ap;

        if (format && !w->what) {
                va_start(ap, format);
                if (vasprintf(&w->what, format, ap) < 0)
                        w->what = NULL;
                va_end(ap);
        }
        w->error = r;
        return r;
}

/* The worker's part (docs/DESIGN.md, "One thread, one loop"): everything here may block on
 * the image, and nothing here touches the manager, a device or the log. */
int mount_work_run(MountWork *w) {
        _cleanup_close_ int dir_fd = -EBADF;
        _cleanup_free_ char *name = NULL, *candidate = NULL, *data = NULL, *target = NULL,
                            *mount_point = NULL;
        const MountRequest req = {
                .uid = w->uid,
                .gid = w->gid,
                .user = w->user,
                .fstype = w->fstype,
                .flags = w->flags,
                .read_only = w->read_only,
        };
        unsigned long flags;
        const char *fstype;
        struct stat st;
        int r;

        r = mount_probe_fd(w->dev_fd, &w->probe);
        if (r < 0)
                return mount_work_fail(w, r, "cannot probe %s", w->node);
        w->probed = true;
        MountProbe *p = &w->probe;

        fstype = req.fstype;
        if (!fstype) {
                if (!p->type) {
                        if (p->pttype)
                                return mount_work_fail(
                                        w, -EMEDIUMTYPE,
                                        "a partition table (%s), no file system (its partitions "
                                        "are mounted one by one: option 'partition')",
                                        p->pttype);
                        return mount_work_fail(w, -EMEDIUMTYPE, "no recognised file system");
                }
                /* blkid says "ntfs"; the kernel's driver is ntfs3. */
                fstype = streq(p->type, "ntfs") ? "ntfs3" : p->type;
                if (!mount_fstype_allowed(fstype))
                        return mount_work_fail(w, -EMEDIUMTYPE,
                                               "%s (usage %s), which loopmgr does not mount",
                                               p->type, p->usage ?: "unknown");
        } else if (!mount_fstype_allowed(fstype))
                return mount_work_fail(w, -EPROTONOSUPPORT, NULL);

        r = mount_flags_and_data(fstype, &req, &flags, &data);
        if (r < 0)
                return mount_work_fail(w, r, NULL);
        r = mount_name_from_probe(p, &name);
        if (r < 0)
                return mount_work_fail(w, r, NULL);

        for (unsigned i = 0;; i++) {
                free(candidate);
                candidate = NULL;
                if (i == 0)
                        candidate = strdup(name);
                else if (asprintf(&candidate, "%s%u", name, i) < 0)
                        candidate = NULL;
                if (!candidate)
                        return mount_work_fail(w, -ENOMEM, NULL);
                if (mkdirat(w->user_fd, candidate, 0700) >= 0)
                        break;
                if (errno != EEXIST)
                        return mount_work_fail(w, -errno, "cannot make " MOUNT_MEDIA_DIR "/%s/%s",
                                               w->user, candidate);
                if (i + 1 >= MOUNT_SUFFIX_MAX)
                        return mount_work_fail(w, -EEXIST,
                                               "no free name for " MOUNT_MEDIA_DIR "/%s/%s",
                                               w->user, name);
        }

        dir_fd = openat(w->user_fd, candidate, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dir_fd < 0) {
                r = -errno;
                (void) unlinkat(w->user_fd, candidate, AT_REMOVEDIR);
                return mount_work_fail(w, r, NULL);
        }
        if (asprintf(&target, "/proc/self/fd/%d", dir_fd) < 0 ||
            asprintf(&mount_point, MOUNT_MEDIA_DIR "/%s/%s", w->user, candidate) < 0) {
                (void) unlinkat(w->user_fd, candidate, AT_REMOVEDIR);
                return mount_work_fail(w, -ENOMEM, NULL);
        }

        /* The target through our O_PATH fd: whatever happens to the path meanwhile, the mount
         * lands on the directory we just made. */
        if (mount(w->source, target, fstype, flags, data) < 0) {
                r = -errno;
                (void) unlinkat(w->user_fd, candidate, AT_REMOVEDIR);
                if (r == -ENODEV)
                        /* The kernel knows no such file system type (no driver, no module). */
                        return mount_work_fail(w, -EOPNOTSUPP,
                                               "this kernel cannot mount %s file systems", fstype);
                return mount_work_fail(w, r, "mount -t %s %s %s failed", fstype, w->node,
                                       mount_point);
        }

        /* Trust, but verify: the file system on the directory is this device's. */
        if (fstatat(w->user_fd, candidate, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            st.st_dev != w->devnum) {
                w->foreign_mount = true;
                (void) umount2(target, MNT_DETACH);
                (void) unlinkat(w->user_fd, candidate, AT_REMOVEDIR);
                return mount_work_fail(w, -EIO, "the mount on %s did not show %s", mount_point,
                                       w->node);
        }

        (void) snprintf(w->fstype_used, sizeof(w->fstype_used), "%s", fstype);
        w->mount_point = TAKE_PTR(mount_point);
        w->error = 0;
        return 0;
}

static int split_mount_point(const char *mount_point, char **ret_user, const char **ret_name) {
        const char *prefix = MOUNT_MEDIA_DIR "/";
        const char *rest, *slash;
        char *user;

        if (strncmp(mount_point, prefix, strlen(prefix)) != 0)
                return -EINVAL;
        rest = mount_point + strlen(prefix);
        slash = strchr(rest, '/');
        if (!slash || slash == rest || !slash[1] || strchr(slash + 1, '/'))
                return -EINVAL;
        user = strndup(rest, (size_t) (slash - rest));
        if (!user)
                return -ENOMEM;
        *ret_user = user;
        *ret_name = slash + 1;
        return 0;
}

void mount_remove_dir(Manager *m, const char *mount_point) {
        _cleanup_free_ char *user = NULL;
        _cleanup_close_ int user_fd = -EBADF;
        const char *name;

        if (split_mount_point(mount_point, &user, &name) < 0)
                return;
        if (open_user_dir(m, user, 0, false, &user_fd) < 0)
                return;
        /* Only an empty directory goes: if something is mounted there still, EBUSY. */
        if (unlinkat(user_fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
                log_debug_errno(-errno, "Cannot remove %s: %m", mount_point);
}

int mount_unmount_finish(Manager *m, dev_t devnum, const char *mount_point, int r) {
        /* Unmounted by other means already: what counts is that it is gone. */
        if (r == -EINVAL || r == -ENOENT) {
                struct libmnt_table *t = manager_mount_table(m);
                bool still = t && mount_table_has(t, devnum, mount_point);

                mnt_unref_table(t);
                if (still)
                        return r;
        } else if (r < 0)
                return r;
        mount_remove_dir(m, mount_point);
        return 0;
}

int mount_find_target(struct libmnt_table *t, dev_t devnum, char **ret) {
        _cleanup_(mnt_free_iterp) struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
        struct libmnt_fs *fs;
        char *target = NULL;

        if (!it)
                return -ENOMEM;
        while (mnt_table_next_fs(t, it, &fs) == 0)
                if (mnt_fs_get_devno(fs) == devnum && mnt_fs_get_target(fs)) {
                        target = strdup(mnt_fs_get_target(fs));
                        break;
                }
        *ret = target;
        return 0;
}

bool mount_table_has(struct libmnt_table *t, dev_t devnum, const char *path) {
        _cleanup_(mnt_free_iterp) struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
        struct libmnt_fs *fs;

        if (!it)
                return true; /* when in doubt, it is still there */
        while (mnt_table_next_fs(t, it, &fs) == 0)
                if (mnt_fs_get_devno(fs) == devnum && streq_ptr(mnt_fs_get_target(fs), path))
                        return true;
        return false;
}

/* Whether a mount of d holds the reference id. */
static bool reference_taken(Device *d, uint64_t id) {
        for (size_t i = 0; i < device_n_mounts(d); i++)
                if (device_mount_at(d, i, NULL, NULL)->ref_id == id)
                        return true;
        return false;
}

/* The restored reference of the mount on point: the mount-lifetime one that names it, else
 * (with any) one that names no mount of d (a state written before each mount had its own). */
static Reference *claim_mount_reference(Device *d, const char *point, bool any) {
        for (Reference *r = d->references; r; r = r->next)
                if (r->lifetime == LIFETIME_MOUNT && !reference_taken(d, r->id) &&
                    (any || streq_ptr(r->owner, point)))
                        return r;
        return NULL;
}

/* The mount of d's mount i in the table: its mount point under /run/media/<user>/. */
static void adopt_one(Device *d, struct libmnt_table *t, size_t i) {
        _cleanup_(mnt_free_iterp) struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
        unsigned partition;
        dev_t devnum;
        DeviceMount *mnt = device_mount_at(d, i, &devnum, &partition);
        struct libmnt_fs *fs;

        while (it && mnt_table_next_fs(t, it, &fs) == 0) {
                _cleanup_free_ char *user = NULL;
                const char *name, *target = mnt_fs_get_target(fs);
                struct passwd *pw;

                if (mnt_fs_get_devno(fs) != devnum || !target ||
                    split_mount_point(target, &user, &name) < 0)
                        continue;
                pw = getpwnam(user);
                if (!pw)
                        continue;
                free(mnt->point);
                mnt->point = strdup(target);
                if (!mnt->point)
                        continue;
                mnt->uid = pw->pw_uid;
                mnt->ref_id = 0;
                log_info("%s: adopted its mount on %s (uid %u)", device_mount_node(d, partition),
                         target, (unsigned) pw->pw_uid);
                return;
        }
}

void mount_adopt(Manager *m) {
        _cleanup_(mnt_unref_tablep) struct libmnt_table *t = manager_mount_table(m);

        /* Without a mount table nothing can be told: keep every reference as it was. */
        if (!t) {
                log_warning("Cannot read the mount table; mounts are not adopted.");
                return;
        }

        MANAGER_FOREACH_DEVICE(d, m) {
                if (!d->managed)
                        continue;
                for (size_t i = 0; i < device_n_mounts(d); i++)
                        adopt_one(d, t, i);

                /* The references the mounts held: still held by the mounts that are there,
                 * dropped (unmounted while we were not running) for the others. One per
                 * mount. */
                for (int any = 0; any <= 1; any++)
                        for (size_t i = 0; i < device_n_mounts(d); i++) {
                                DeviceMount *mnt = device_mount_at(d, i, NULL, NULL);
                                Reference *keep;

                                if (!mnt->point || mnt->ref_id)
                                        continue;
                                keep = claim_mount_reference(d, mnt->point, any);
                                if (keep)
                                        mnt->ref_id = keep->id;
                        }
                for (Reference *r = d->references; r;) {
                        if (r->lifetime != LIFETIME_MOUNT || reference_taken(d, r->id)) {
                                r = r->next;
                                continue;
                        }
                        log_info("%s: its mount is gone; dropping the reference it held", d->node);
                        (void) device_drop_reference_id(d, r->id);
                        r = d->references;
                }
        }
}

void mount_check_table(Manager *m, struct libmnt_table *t) {
        MANAGER_FOREACH_DEVICE(d, m) {
                uint64_t ref_ids[16];
                size_t n_refs = 0;

                /* An unmount in flight: its job settles the device when umount2() returns. */
                if (d->mount_job)
                        continue;
                for (size_t i = 0; i < device_n_mounts(d); i++) {
                        unsigned partition;
                        dev_t devnum;
                        DeviceMount *mnt = device_mount_at(d, i, &devnum, &partition);

                        if (!mnt->point || mount_table_has(t, devnum, mnt->point))
                                continue;
                        log_info("%s: %s was unmounted by other means",
                                 device_mount_node(d, partition), mnt->point);
                        mount_remove_dir(m, mnt->point);
                        if (mnt->ref_id && n_refs < ELEMENTSOF(ref_ids))
                                ref_ids[n_refs++] = mnt->ref_id;
                        manager_device_clear_mount(m, d, partition);
                }
                /* May tear the device down and free it, with the last of them. */
                for (size_t i = 0; i < n_refs; i++)
                        if (manager_release_reference(m, d, ref_ids[i]) != 0)
                                break;
        }
}
