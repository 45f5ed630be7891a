/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-device.h>
#include <unistd.h>

#include "log.h"
#include "loop-kernel.h"
#include "udev-props.h"
#include "util.h"

static int udev_dir_open(const char *root, bool create, int *ret) {
        _cleanup_free_ char *run = path_join_root(root, "/run");
        _cleanup_close_ int run_fd = -EBADF, lm_fd = -EBADF, fd = -EBADF;

        if (!run)
                return -ENOMEM;
        run_fd = open(run, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (run_fd < 0)
                return -errno;
        if (create && mkdirat(run_fd, "loopmgr", 0755) < 0 && errno != EEXIST)
                return -errno;
        lm_fd = openat(run_fd, "loopmgr", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (lm_fd < 0)
                return -errno;
        if (create && mkdirat(lm_fd, "udev", 0755) < 0 && errno != EEXIST)
                return -errno;
        fd = openat(lm_fd, "udev", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        *ret = TAKE_FD(fd);
        return 0;
}

static bool loop_name_ok(const char *name) {
        unsigned n;
        return loop_name_to_number(name, &n) >= 0;
}

/* A name udev could misread (blanks, quotes) or that is no file name is left out; the uid is
 * always there. */
static bool udev_owner_name_ok(const char *name) {
        return name && *name && strlen(name) <= 255 && !streq(name, ".") && !streq(name, "..") &&
               !strpbrk(name, "/ \t\n\"'\\");
}

const char *udev_owner_name(UdevOwnerCache *cache, uid_t uid, uint64_t now_usec) {
        UdevOwnerName *slot = NULL;
        struct passwd *pw;

        assert(cache);

        for (size_t i = 0; i < ELEMENTSOF(cache->names); i++) {
                UdevOwnerName *e = &cache->names[i];

                if (e->used && e->uid == uid) {
                        if (now_usec - e->stamp < UDEV_OWNER_NAME_TTL_USEC)
                                return e->name[0] ? e->name : NULL;
                        slot = e;
                        break;
                }
        }
        if (!slot) {
                /* Round robin: a handful of users attach at a time. */
                slot = &cache->names[cache->next];
                cache->next = (cache->next + 1) % ELEMENTSOF(cache->names);
        }

        pw = getpwuid(uid);
        *slot = (UdevOwnerName){
                .used = true,
                .uid = uid,
                .stamp = now_usec,
        };
        if (pw && udev_owner_name_ok(pw->pw_name) && strlen(pw->pw_name) < sizeof(slot->name))
                strcpy(slot->name, pw->pw_name);
        return slot->name[0] ? slot->name : NULL;
}

int udev_props_create(const char *root, const char *name, uid_t owner, const char *owner_name,
                      int *ret_fd) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        char text[sizeof("LOOPMGR_MANAGED=1\nLOOPMGR_OWNER_UID=\nLOOPMGR_OWNER=\n") +
                  3 * sizeof(uid_t) + UDEV_OWNER_NAME_MAX];
        int n;

        assert(ret_fd);

        if (!loop_name_ok(name))
                return -EINVAL;
        if (owner_name &&
            (!udev_owner_name_ok(owner_name) || strlen(owner_name) >= UDEV_OWNER_NAME_MAX))
                owner_name = NULL;

        if (owner_name)
                n = snprintf(text, sizeof(text),
                             "LOOPMGR_MANAGED=1\nLOOPMGR_OWNER_UID=%u\nLOOPMGR_OWNER=%s\n",
                             (unsigned) owner, owner_name);
        else
                n = snprintf(text, sizeof(text), "LOOPMGR_MANAGED=1\nLOOPMGR_OWNER_UID=%u\n",
                             (unsigned) owner);
        if (n < 0 || (size_t) n >= sizeof(text))
                return -EINVAL;

        /* One open of the full path, no rename: this runs in every attach. The directory is
         * made on first use. A udev worker reading the file while we rewrite it (only events
         * of the previous, unbound device are possible then: the kernel binds the device
         * after we return) sees an empty file or all of it: a write of a few bytes to tmpfs
         * updates the size after the data. */
        if (asprintf(&path, "%s/%s", MOUNT_UDEV_DIR, name) < 0)
                return -ENOMEM;
        if (root && !streq(root, "/")) {
                char *p = path_join_root(root, path);

                if (!p)
                        return -ENOMEM;
                free(path);
                path = p;
        }
        for (unsigned attempt = 0;; attempt++) {
                fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY,
                          0644);
                if (fd >= 0)
                        break;
                if (errno != ENOENT || attempt > 0)
                        return -errno;

                _cleanup_close_ int dir_fd = -EBADF;
                int r = udev_dir_open(root, true, &dir_fd);
                if (r < 0)
                        return r;
        }

        if (write(fd, text, (size_t) n) != n)
                return errno > 0 ? -errno : -EIO;

        *ret_fd = TAKE_FD(fd);
        return 0;
}

int udev_props_add_diskseq(int fd, uint64_t diskseq) {
        char text[sizeof("LOOPMGR_DISKSEQ=\n") + 20];
        int n;

        n = snprintf(text, sizeof(text), "LOOPMGR_DISKSEQ=%" PRIu64 "\n", diskseq);
        /* Appended in one write: udev reads the line whole or not at all (see above). */
        if (write(fd, text, (size_t) n) != n)
                return errno > 0 ? -errno : -EIO;
        return 0;
}

int udev_props_write(const char *root, const char *name, uid_t owner, uint64_t diskseq) {
        _cleanup_close_ int fd = -EBADF;
        struct passwd *pw;
        int r;

        if (!loop_name_ok(name))
                return -EINVAL;
        pw = getpwuid(owner);
        r = udev_props_create(root, name, owner, pw ? pw->pw_name : NULL, &fd);
        if (r < 0)
                return r;
        if (diskseq > 0)
                return udev_props_add_diskseq(fd, diskseq);
        return 0;
}

/* The LOOPMGR_DISKSEQ of a properties file, 0 when it has none. */
static int udev_props_read_diskseq(int dir_fd, const char *name, uint64_t *ret) {
        _cleanup_close_ int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        char buf[512];
        ssize_t n;
        const char *p;

        if (fd < 0)
                return -errno;
        n = read(fd, buf, sizeof(buf) - 1);
        if (n < 0)
                return -errno;
        buf[n] = 0;
        *ret = 0;
        p = strstr(buf, "LOOPMGR_DISKSEQ=");
        if (p) {
                char num[32];
                size_t k = strspn(p + strlen("LOOPMGR_DISKSEQ="), "0123456789");
                if (k == 0 || k >= sizeof(num))
                        return 0;
                memcpy(num, p + strlen("LOOPMGR_DISKSEQ="), k);
                num[k] = 0;
                (void) safe_atou64(num, ret);
        }
        return 0;
}

void udev_props_remove(const char *root, const char *name, uint64_t diskseq) {
        _cleanup_close_ int dir_fd = -EBADF;
        uint64_t seq = 0;

        if (!loop_name_ok(name) || udev_dir_open(root, false, &dir_fd) < 0)
                return;
        if (diskseq != 0 && (udev_props_read_diskseq(dir_fd, name, &seq) < 0 || seq != diskseq))
                return;
        (void) unlinkat(dir_fd, name, 0);
}

void udev_props_cleanup(const char *root) {
        _cleanup_close_ int dir_fd = -EBADF;
        _cleanup_closedir_ DIR *dir = NULL;

        if (udev_dir_open(root, false, &dir_fd) < 0)
                return;
        dir = fdopendir(dup(dir_fd));
        if (!dir)
                return;
        for (struct dirent *de; (de = readdir(dir));) {
                _cleanup_(loop_status_done) LoopStatus st = {};
                uint64_t seq = 0;

                if (de->d_name[0] == '.') {
                        /* A temporary file of a write that was cut short. */
                        if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                                (void) unlinkat(dir_fd, de->d_name, 0);
                        continue;
                }
                if (!loop_name_ok(de->d_name))
                        continue;
                if (udev_props_read_diskseq(dir_fd, de->d_name, &seq) < 0)
                        continue;
                /* Other daemons (test instances) may share the directory: only files whose
                 * binding is gone are stale. */
                if (loop_read_sysfs(root, de->d_name, &st) >= 0 && st.bound &&
                    (seq == 0 || seq == st.diskseq))
                        continue;
                log_debug("Removing stale udev properties of %s", de->d_name);
                (void) unlinkat(dir_fd, de->d_name, 0);
        }
}

/* ------------------------------------------------------------------------------------------ */
/* What udev recorded */

void udev_decode_string(char *s) {
        char *o = s;

        for (const char *c = s; *c; c++) {
                unsigned v;
                if (c[0] == '\\' && c[1] == 'x' && isxdigit((unsigned char) c[2]) &&
                    isxdigit((unsigned char) c[3]) && sscanf(c + 2, "%2x", &v) == 1 && v != 0) {
                        *o++ = (char) v;
                        c += 3;
                } else
                        *o++ = *c;
        }
        *o = 0;
}

void udev_ids_done(UdevIds *ids) {
        free(ids->type);
        free(ids->label);
        free(ids->uuid);
        *ids = (UdevIds){};
}

/* A copy of the non-empty property key of device, decoded; NULL when absent or empty. */
static int copy_property(sd_device *device, const char *key, char **ret) {
        const char *v;
        char *s;

        if (sd_device_get_property_value(device, key, &v) < 0 || !*v) {
                *ret = NULL;
                return 0;
        }
        s = strdup(v);
        if (!s)
                return -ENOMEM;
        udev_decode_string(s);
        *ret = s;
        return 0;
}

int udev_props_read_ids(sd_device *device, UdevIds *ret) {
        _cleanup_(udev_ids_done) UdevIds ids = {};
        int r;

        assert(ret);

        if (!device)
                return -EINVAL;
        /* A device udev has not processed has no database entry: nothing is known, which is
         * not the same as "no file system" (the ids stay as they are). */
        r = sd_device_get_is_initialized(device);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENODATA;
        r = copy_property(device, "ID_FS_TYPE", &ids.type);
        if (r < 0)
                return r;
        r = copy_property(device, "ID_FS_LABEL_ENC", &ids.label);
        if (r < 0)
                return r;
        r = copy_property(device, "ID_FS_UUID_ENC", &ids.uuid);
        if (r < 0)
                return r;
        *ret = ids;
        ids = (UdevIds){};
        return 0;
}
