/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/sysmacros.h>

#include "block-use.h"
#include "util.h"

void block_use_done(BlockUse *u) {
        if (!u)
                return;
        free(u->description);
        *u = (BlockUse) {};
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

int block_use_probe(const char *root, dev_t devnum, const char *name, struct libmnt_table *mounts,
                    BlockUse *ret) {
        _cleanup_free_ char *desc = NULL, *rel = NULL, *holders = NULL, *node = NULL;
        bool in_use = false, all_ro = true, seen_mount = false;
        uint64_t ro = 0;
        DIR *dir;
        int fd;

        /* Mounts in our namespace: named, and we can tell read-only ones. */
        if (mounts) {
                struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
                struct libmnt_fs *fs;

                if (!it)
                        return -ENOMEM;
                while (mnt_table_next_fs(mounts, it, &fs) == 0) {
                        _cleanup_free_ char *what = NULL;

                        if (mnt_fs_get_devno(fs) != devnum)
                                continue;
                        in_use = seen_mount = true;
                        if (mnt_optstr_get_option(mnt_fs_get_vfs_options(fs), "ro", NULL, NULL) != 0)
                                all_ro = false;
                        if (asprintf(&what, "mounted on %s", mnt_fs_get_target(fs) ?: "?") < 0 ||
                            append(&desc, what) < 0) {
                                mnt_free_iter(it);
                                return -ENOMEM;
                        }
                }
                mnt_free_iter(it);
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
                        if (asprintf(&what, "held by %s", de->d_name) < 0 || append(&desc, what) < 0) {
                                closedir(dir);
                                return -ENOMEM;
                        }
                }
                closedir(dir);
        }

        /* Anyone holding it exclusively, in any namespace: mounts elsewhere show up here. */
        free(rel);
        rel = NULL;
        if (asprintf(&rel, "/dev/%s", name) < 0)
                return -ENOMEM;
        node = path_join_root(root, rel);
        if (!node)
                return -ENOMEM;
        fd = open(node, O_RDONLY | O_EXCL | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd >= 0)
                (void) close(fd);
        else if (errno == EBUSY) {
                if (!in_use) {
                        /* Nothing we can see explains it: a mount in another namespace, or an
                         * exclusive opener. We cannot tell whether that use is read-only. */
                        in_use = true;
                        all_ro = false;
                        if (append(&desc, "in use by an exclusive opener (mounted in another mount "
                                          "namespace, or claimed by a program)") < 0)
                                return -ENOMEM;
                }
        }
        /* Other failures (no node in this root, a device in rundown) leave only the evidence
         * gathered above. */

        /* A read-only device can only have read-only users. */
        if (read_block_attr(root, name, "ro", &ro) >= 0 && ro == 1)
                all_ro = true;

        *ret = (BlockUse) {
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
        uint64_t end;
        DIR *dir;
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
                        continue;       /* not a partition */
                if (start > UINT64_MAX / 512 || len > UINT64_MAX / 512)
                        continue;
                pstart = start * 512;
                if (__builtin_add_overflow(pstart, len * 512, &pend))
                        continue;
                if (pstart >= end || offset >= pend)
                        continue;

                if (asprintf(&dev, "/sys/class/block/%s/dev", de->d_name) < 0) {
                        r = -ENOMEM;
                        break;
                }
                devpath = path_join_root(root, dev);
                if (!devpath) {
                        r = -ENOMEM;
                        break;
                }
                if (read_one_line_file(devpath, &line) < 0 || sscanf(line, "%u:%u", &maj, &min) != 2)
                        continue;
                r = cb(makedev(maj, min), de->d_name, userdata);
        }
        closedir(dir);
        return r;
}
