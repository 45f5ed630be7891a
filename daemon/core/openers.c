/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Openers: what holds a tracked device open, as the Openers property lists it: mounts of it
 * or its partitions in our namespace and in others, block devices stacked on it (holders),
 * and the loop devices it backs.
 */

#include <dirent.h>
#include <libmount.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/sysmacros.h>

#include "manager.h"
#include "openers.h"
#include "registry.h"

static int strv_push_printf(char ***l, size_t *n, const char *format, ...) _printf_(3, 4);
static int strv_push_printf(char ***l, size_t *n, const char *format, ...) {
        char **nl, *s;
        va_list ap;
        int r;

        va_start(ap, format);
        r = vasprintf(&s, format, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;

        nl = realloc(*l, sizeof(char *) * (*n + 2));
        if (!nl) {
                free(s);
                return -ENOMEM;
        }
        nl[(*n)++] = s;
        nl[*n] = NULL;
        *l = nl;
        return 0;
}

/* Whether dev is a partition of d: /sys/dev/block/MAJ:MIN resolves to .../<name>/<partition>. */
static bool devnum_is_partition_of(Manager *m, Device *d, dev_t dev) {
        _cleanup_free_ char *link = NULL, *target = NULL;
        char buf[PATH_MAX];
        const char *parent_end, *parent;
        ssize_t k;

        /* Partitions of a loop device are blkext (259), or loop minors with max_part set: no
         * other device can be one, and the sysfs lookup is the expensive part. */
        if (major(dev) != 259 && major(dev) != LOOP_MAJOR_NUMBER)
                return false;
        if (dev == d->status.devnum)
                return false;

        if (asprintf(&target, "/sys/dev/block/%u:%u", major(dev), minor(dev)) < 0)
                return false;
        link = path_join_root(m->root, target);
        if (!link)
                return false;
        k = readlink(link, buf, sizeof(buf) - 1);
        if (k <= 0)
                return false;
        buf[k] = 0;

        parent_end = strrchr(buf, '/');
        if (!parent_end)
                return false;
        buf[parent_end - buf] = 0;
        parent = strrchr(buf, '/');
        parent = parent ? parent + 1 : buf;
        return streq(parent, d->status.name);
}

int manager_device_openers(Manager *m, Device *d, struct libmnt_table *mounts, char ***ret_pairs) {
        return manager_device_openers_with(m, d, mounts, manager_foreign_mounts(m), ret_pairs);
}

int manager_device_openers_with(Manager *m, Device *d, struct libmnt_table *mounts,
                                const ForeignMounts *foreign, char ***ret_pairs) {
        _cleanup_strv_free_ char **l = NULL;
        _cleanup_free_ char *holders = NULL, *sys = NULL;
        _cleanup_(mnt_unref_tablep) struct libmnt_table *fresh = NULL;
        _cleanup_closedir_ DIR *dir = NULL;
        struct libmnt_table *tb = mounts;
        size_t n = 0;
        int r;

        /* Mounts visible in our namespace (the device itself or any of its partitions). */
        if (!tb)
                tb = fresh = manager_mount_table(m);
        if (tb) {
                _cleanup_(mnt_free_iterp) struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
                struct libmnt_fs *fs;

                while (it && mnt_table_next_fs(tb, it, &fs) == 0) {
                        dev_t dev = mnt_fs_get_devno(fs);

                        if (dev == 0)
                                continue;
                        if (dev == d->status.devnum || devnum_is_partition_of(m, d, dev)) {
                                r = strv_push_printf(&l, &n, "mount");
                                if (r >= 0)
                                        r = strv_push_printf(&l, &n, "%s",
                                                             mnt_fs_get_target(fs) ?: "?");
                                if (r < 0)
                                        return r;
                        }
                }
        }

        /* Block devices stacked on it (device-mapper, md, ...). Loop devices are virtual
         * block devices: their real sysfs directory spares the walk through the /sys/block
         * symlink, half the cost of this per-device lookup (GetManagedObjects does it for
         * every device). /sys/block is the fallback for trees that lack it (tests). */
        sys = path_join_root(m->root, "/sys/devices/virtual/block");
        if (!sys || asprintf(&holders, "%s/%s/holders", sys, d->status.name) < 0) {
                holders = NULL;
                return -ENOMEM;
        }
        dir = opendir(holders);
        if (!dir && errno == ENOENT) {
                free(sys);
                free(holders);
                holders = NULL;
                sys = path_join_root(m->root, "/sys/block");
                if (!sys || asprintf(&holders, "%s/%s/holders", sys, d->status.name) < 0) {
                        holders = NULL;
                        return -ENOMEM;
                }
                dir = opendir(holders);
        }
        if (dir) {
                struct dirent *de;

                while ((de = readdir(dir)))
                        if (de->d_name[0] != '.') {
                                r = strv_push_printf(&l, &n, "holder");
                                if (r >= 0)
                                        r = strv_push_printf(&l, &n, "/dev/%s", de->d_name);
                                if (r < 0)
                                        return r;
                        }
        }

        /* Mounts in other namespaces (read from their mountinfo: the device is not opened,
         * so a concurrent mount is never disturbed). */
        if (foreign) {
                const ForeignMounts *f = foreign;

                for (size_t i = 0; i < f->n; i++) {
                        dev_t dev = f->mounts[i].devnum;

                        if (dev != d->status.devnum && !devnum_is_partition_of(m, d, dev))
                                continue;
                        r = strv_push_printf(&l, &n, "mount");
                        if (r >= 0)
                                r = strv_push_printf(&l, &n, "(other namespace)");
                        if (r < 0)
                                return r;
                }
        }

        /* Loop devices using it, or one of its partitions, as their backing. */
        MANAGER_FOREACH_DEVICE(o, m) {
                if (o == d || !o->backing_is_block ||
                    (o->status.backing_rdevice != d->status.devnum &&
                     !devnum_is_partition_of(m, d, o->status.backing_rdevice)))
                        continue;
                r = strv_push_printf(&l, &n, "loop");
                if (r >= 0)
                        r = strv_push_printf(&l, &n, "%s", o->node);
                if (r < 0)
                        return r;
        }

        if (!l) {
                l = calloc(1, sizeof(char *));
                if (!l)
                        return -ENOMEM;
        }
        *ret_pairs = TAKE_PTR(l);
        return 0;
}
