/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sysmacros.h>

#include "block-use.h"
#include "util.h"

void block_use_done(BlockUse *u) {
        if (!u)
                return;
        free(u->description);
        *u = (BlockUse){};
}

/* Reads <root>/sys/class/block/<name>/<attr> as an unsigned number. */
static int read_block_attr(const char *root, const char *name, const char *attr, uint64_t *ret) {
        _cleanup_free_ char *rel = NULL, *path = NULL, *line = NULL;
        int r;

        if (asprintf(&rel, "/sys/class/block/%s/%s", name, attr) < 0)
                return -ENOMEM;
        path = path_join_root(root, rel);
        if (!path)
                return -ENOMEM;
        r = read_one_line_file(path, &line);
        if (r < 0)
                return r;
        return safe_atou64(line, ret);
}

static int append(char **s, const char *what) {
        char *n;

        if (asprintf(&n, "%s%s%s", *s ?: "", *s ? ", " : "", what) < 0)
                return -ENOMEM;
        free(*s);
        *s = n;
        return 0;
}

void foreign_mounts_done(ForeignMounts *f) {
        if (!f)
                return;
        for (size_t i = 0; i < f->n; i++)
                free(f->mounts[i].target);
        free(f->mounts);
        *f = (ForeignMounts){};
}

/* Reads <proc>/<pid>/ns/mnt relative to the open /proc: this runs for every process on the
 * host, so no path is built on the heap. */
static int ns_of(int proc_fd, const char *pid, char *buf, size_t size) {
        char rel[64];
        ssize_t k;

        if (snprintf(rel, sizeof(rel), "%s/ns/mnt", pid) >= (int) sizeof(rel))
                return -ENAMETOOLONG;
        k = readlinkat(proc_fd, rel, buf, size - 1);
        if (k < 0)
                return -errno;
        buf[k] = 0;
        return 0;
}

static int add_namespace_mounts(const char *root, const char *pid, ForeignMounts *f) {
        _cleanup_free_ char *rel = NULL, *path = NULL;
        _cleanup_(mnt_unref_tablep) struct libmnt_table *t = NULL;
        _cleanup_(mnt_free_iterp) struct libmnt_iter *it = NULL;
        struct libmnt_fs *fs;

        if (asprintf(&rel, "/proc/%s/mountinfo", pid) < 0)
                return -ENOMEM;
        path = path_join_root(root, rel);
        if (!path)
                return -ENOMEM;
        t = mnt_new_table();
        if (!t)
                return -ENOMEM;
        if (mnt_table_parse_file(t, path) < 0)
                return 0; /* the process went away */
        it = mnt_new_iter(MNT_ITER_FORWARD);
        while (it && mnt_table_next_fs(t, it, &fs) == 0) {
                dev_t dev = mnt_fs_get_devno(fs);
                ForeignMount *n;

                /* Only block devices can matter: loop (7), blkext partitions (259), disks. */
                if (dev == 0 || major(dev) == 0)
                        continue;
                n = realloc(f->mounts, (f->n + 1) * sizeof(ForeignMount));
                if (!n)
                        return -ENOMEM;
                f->mounts = n;
                n = &f->mounts[f->n];
                *n = (ForeignMount){
                        .devnum = dev,
                        .read_only = mnt_optstr_get_option(mnt_fs_get_vfs_options(fs), "ro", NULL,
                                                           NULL) == 0,
                        .target = strdup(mnt_fs_get_target(fs) ?: "?"),
                        .pid = (pid_t) atoi(pid),
                };
                if (!n->target)
                        return -ENOMEM;
                f->n++;
        }
        return 0;
}

int foreign_mounts_scan(const char *root, ForeignMounts *ret) {
        _cleanup_free_ char *proc = NULL;
        ForeignMounts f = {};
        char own[64], **seen = NULL;
        size_t n_seen = 0;
        _cleanup_closedir_ DIR *dir = NULL;
        struct dirent *de;
        int r = 0;

        proc = path_join_root(root, "/proc");
        if (!proc)
                return -ENOMEM;
        dir = opendir(proc);
        if (!dir)
                return -errno;
        if (ns_of(dirfd(dir), "self", own, sizeof(own)) < 0)
                own[0] = 0;

        while (r == 0 && (de = readdir(dir))) {
                char ns[64], **n;
                bool known = false;

                if (de->d_name[0] < '1' || de->d_name[0] > '9')
                        continue;
                if (ns_of(dirfd(dir), de->d_name, ns, sizeof(ns)) < 0 || streq(ns, own))
                        continue;
                for (size_t i = 0; i < n_seen && !known; i++)
                        known = streq(seen[i], ns);
                if (known)
                        continue;

                n = realloc(seen, (n_seen + 1) * sizeof(char *));
                if (!n || !(n[n_seen] = strdup(ns))) {
                        if (n)
                                seen = n;
                        r = -ENOMEM;
                        break;
                }
                seen = n;
                n_seen++;
                r = add_namespace_mounts(root, de->d_name, &f);
        }
        for (size_t i = 0; i < n_seen; i++)
                free(seen[i]);
        free(seen);

        if (r < 0) {
                foreign_mounts_done(&f);
                return r;
        }
        *ret = f;
        return 0;
}

int block_use_probe(const char *root, dev_t devnum, const char *name, struct libmnt_table *mounts,
                    const ForeignMounts *foreign, BlockUse *ret) {
        _cleanup_free_ char *desc = NULL, *rel = NULL, *holders = NULL;
        bool in_use = false, all_ro = true, seen_mount = false;
        _cleanup_closedir_ DIR *dir = NULL;
        uint64_t ro = 0;

        /* Mounts in our namespace: named, and we can tell read-only ones. */
        if (mounts) {
                _cleanup_(mnt_free_iterp) struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
                struct libmnt_fs *fs;

                if (!it)
                        return -ENOMEM;
                while (mnt_table_next_fs(mounts, it, &fs) == 0) {
                        _cleanup_free_ char *what = NULL;

                        if (mnt_fs_get_devno(fs) != devnum)
                                continue;
                        in_use = seen_mount = true;
                        if (mnt_optstr_get_option(mnt_fs_get_vfs_options(fs), "ro", NULL, NULL) !=
                            0)
                                all_ro = false;
                        if (asprintf(&what, "mounted on %s", mnt_fs_get_target(fs) ?: "?") < 0 ||
                            append(&desc, what) < 0)
                                return -ENOMEM;
                }
        }

        /* Block devices stacked on it. */
        if (asprintf(&rel, "/sys/dev/block/%u:%u/holders", major(devnum), minor(devnum)) < 0)
                return -ENOMEM;
        holders = path_join_root(root, rel);
        if (!holders)
                return -ENOMEM;
        dir = opendir(holders);
        if (dir) {
                struct dirent *de;

                while ((de = readdir(dir))) {
                        _cleanup_free_ char *what = NULL;

                        if (de->d_name[0] == '.')
                                continue;
                        in_use = true;
                        all_ro = false;
                        if (asprintf(&what, "held by %s", de->d_name) < 0 ||
                            append(&desc, what) < 0)
                                return -ENOMEM;
                }
        }

        /* Mounts in other namespaces. */
        for (size_t i = 0; foreign && i < foreign->n; i++) {
                _cleanup_free_ char *what = NULL;

                if (foreign->mounts[i].devnum != devnum)
                        continue;
                in_use = seen_mount = true;
                if (!foreign->mounts[i].read_only)
                        all_ro = false;
                if (asprintf(&what, "mounted on %s in another mount namespace (process %d)",
                             foreign->mounts[i].target, (int) foreign->mounts[i].pid) < 0 ||
                    append(&desc, what) < 0)
                        return -ENOMEM;
        }

        /* A read-only device can only have read-only users. */
        if (read_block_attr(root, name, "ro", &ro) >= 0 && ro == 1)
                all_ro = true;

        *ret = (BlockUse){
                .in_use = in_use,
                .read_only = in_use && all_ro && (seen_mount || ro == 1),
                .description = TAKE_PTR(desc),
        };
        return 0;
}

int block_foreach_partition_in_range(const char *root, const char *name, uint64_t offset,
                                     uint64_t size,
                                     int (*cb)(dev_t devnum, const char *name, void *userdata),
                                     void *userdata) {
        _cleanup_free_ char *rel = NULL, *path = NULL;
        struct dirent *de;
        _cleanup_closedir_ DIR *dir = NULL;
        uint64_t end;
        int r = 0;

        if (__builtin_add_overflow(offset, size, &end))
                return -EOVERFLOW;
        if (asprintf(&rel, "/sys/class/block/%s", name) < 0)
                return -ENOMEM;
        path = path_join_root(root, rel);
        if (!path)
                return -ENOMEM;
        dir = opendir(path);
        if (!dir)
                return errno == ENOENT ? 0 : -errno;

        while (r == 0 && (de = readdir(dir))) {
                _cleanup_free_ char *dev = NULL, *devpath = NULL, *line = NULL;
                uint64_t start, len, pstart, pend;
                unsigned maj, min;

                if (de->d_name[0] == '.' || strncmp(de->d_name, name, strlen(name)) != 0)
                        continue;
                if (read_block_attr(root, de->d_name, "start", &start) < 0 ||
                    read_block_attr(root, de->d_name, "size", &len) < 0)
                        continue; /* not a partition */
                if (start > UINT64_MAX / 512 || len > UINT64_MAX / 512)
                        continue;
                pstart = start * 512;
                if (__builtin_add_overflow(pstart, len * 512, &pend))
                        continue;
                if (pstart >= end || offset >= pend)
                        continue;

                if (asprintf(&dev, "/sys/class/block/%s/dev", de->d_name) < 0)
                        return -ENOMEM;
                devpath = path_join_root(root, dev);
                if (!devpath)
                        return -ENOMEM;
                if (read_one_line_file(devpath, &line) < 0 ||
                    sscanf(line, "%u:%u", &maj, &min) != 2)
                        continue;
                r = cb(makedev(maj, min), de->d_name, userdata);
        }
        return r;
}
