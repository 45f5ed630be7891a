/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The mount table as the core uses it: watched (libmount's monitor on /proc/self/mountinfo),
 * parsed at most once per event-loop iteration, diffed against the last change so that only
 * the devices whose mounts changed get their Openers recomputed, and the mounts of other
 * namespaces, read at most once per iteration.
 */

#include <limits.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/param.h>
#include <sys/sysmacros.h>

#include "log.h"
#include "manager-guard.h"
#include "manager.h"
#include "media-mount.h"
#include "udev-props.h"
#include "openers.h"
#include "registry.h"

static bool strv_equal(char **a, char **b) {
        for (; a && b && *a && *b; a++, b++)
                if (!streq(*a, *b))
                        return false;
        return (!a || !*a) && (!b || !*b);
}

void manager_refresh_openers(Manager *m, Device *d, struct libmnt_table *mounts) {
        _cleanup_strv_free_ char **pairs = NULL;

        /* Event handlers call this: they use the newest mount table and foreign-namespace
         * scan already read rather than reading them again. Those are at least as new as
         * the Openers last published (a read of the property computes them from the same
         * caches), and a change of our mount table comes with its own event. */
        if (!mounts)
                mounts = m->mounts;
        if (manager_device_openers_with(m, d, mounts, manager_foreign_mounts_known(m), &pairs) <
                    0 ||
            strv_equal(pairs, d->openers))
                return;
        strv_free(d->openers);
        d->openers = TAKE_PTR(pairs);
        manager_emit_device_changed(m, d, (char *[]){"Openers", NULL});
}

typedef struct MountKey {
        dev_t devnum;
        const char *target;
} MountKey;

static int mount_key_compare(const void *a, const void *b) {
        const MountKey *x = a, *y = b;

        if (x->devnum != y->devnum)
                return x->devnum < y->devnum ? -1 : 1;
        return strcmp(x->target, y->target);
}

/* The (block device, mount point) pairs of t, sorted; they point into t. */
static int mount_keys(struct libmnt_table *t, MountKey **ret, size_t *ret_n) {
        _cleanup_(mnt_free_iterp) struct libmnt_iter *it = NULL;
        _cleanup_free_ MountKey *keys = NULL;
        struct libmnt_fs *fs;
        size_t n = 0, size = 0;

        it = mnt_new_iter(MNT_ITER_FORWARD);
        if (!it)
                return -ENOMEM;
        while (mnt_table_next_fs(t, it, &fs) == 0) {
                dev_t dev = mnt_fs_get_devno(fs);

                if (dev == 0 || major(dev) == 0)
                        continue;
                if (n == size) {
                        MountKey *k;

                        size = MAX(size * 2, (size_t) 16);
                        k = realloc(keys, size * sizeof(MountKey));
                        if (!k)
                                return -ENOMEM;
                        keys = k;
                }
                keys[n++] = (MountKey){.devnum = dev, .target = mnt_fs_get_target(fs) ?: ""};
        }
        if (n > 0)
                qsort(keys, n, sizeof(MountKey), mount_key_compare);
        *ret = TAKE_PTR(keys);
        *ret_n = n;
        return 0;
}

/* The tracked loop device whose Openers list a mount of dev: dev itself, or the disk dev is a
 * partition of. Returns 1 with *ret set (NULL: none of ours), 0 when that cannot be told (a
 * partition already deleted). */
static int device_for_mount(Manager *m, dev_t dev, Device **ret) {
        _cleanup_free_ char *rel = NULL, *link = NULL;
        char buf[PATH_MAX], *slash;
        const char *parent;
        unsigned number;
        ssize_t k;

        *ret = manager_get_device_by_devnum(m, dev);
        if (*ret)
                return 1;
        /* Partitions of a loop device are blkext (259), or loop minors with max_part set. */
        if (major(dev) != 259 && major(dev) != LOOP_MAJOR_NUMBER)
                return 1;
        if (asprintf(&rel, "/sys/dev/block/%u:%u", major(dev), minor(dev)) < 0)
                return 0;
        link = path_join_root(m->root, rel);
        if (!link)
                return 0;
        k = readlink(link, buf, sizeof(buf) - 1);
        if (k <= 0)
                return 0;
        buf[k] = 0;
        slash = strrchr(buf, '/');
        if (!slash)
                return 0;
        *slash = 0;
        parent = strrchr(buf, '/');
        parent = parent ? parent + 1 : buf;
        if (loop_name_to_number(parent, &number) >= 0)
                *ret = manager_get_device_by_number(m, number);
        return 1;
}

/* Re-checks the Openers of the devices whose mounts differ between the two tables. Returns 0
 * when it could not tell which (the caller re-checks them all). */
static int refresh_changed_mounts(Manager *m, struct libmnt_table *old, struct libmnt_table *new) {
        _cleanup_free_ MountKey *a = NULL, *b = NULL;
        size_t na = 0, nb = 0, i = 0, j = 0;
        dev_t last = 0;

        if (mount_keys(old, &a, &na) < 0 || mount_keys(new, &b, &nb) < 0)
                return 0;

        /* A merge of the two sorted lists: each pair in only one of them is a change. */
        while (i < na || j < nb) {
                int c = i >= na ? 1 : j >= nb ? -1 : mount_key_compare(&a[i], &b[j]);
                dev_t dev;
                Device *d;

                if (c == 0) {
                        i++;
                        j++;
                        continue;
                }
                dev = c < 0 ? a[i++].devnum : b[j++].devnum;
                if (dev == last)
                        continue;
                last = dev;
                if (device_for_mount(m, dev, &d) == 0)
                        return 0;
                if (d)
                        manager_refresh_openers(m, d, new);
        }
        return 1;
}

static int on_mounts_changed(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        struct libmnt_table *mounts;

        /* Drain the monitor; what changed is found by comparing the table as a whole with
         * the one of the previous change. */
        while (mnt_monitor_next_change(m->mount_monitor, NULL, NULL) == 0)
                ;
        (void) mnt_monitor_event_cleanup(m->mount_monitor);
        mnt_unref_table(m->mounts);
        m->mounts = NULL;

        mounts = manager_mount_table(m);
        if (!mounts)
                return 0;
        /* Only devices whose mounts (their own or their partitions') changed can have other
         * Openers now; without a previous table, or when a changed mount cannot be placed,
         * every device is re-checked against the one parsed table. */
        if (!m->mounts_seen || refresh_changed_mounts(m, m->mounts_seen, mounts) == 0)
                MANAGER_FOREACH_DEVICE(d, m)
        manager_refresh_openers(m, d, mounts);
        mnt_unref_table(m->mounts_seen);
        mnt_ref_table(mounts);
        m->mounts_seen = mounts;
        /* Device.Mount mounts unmounted by other means (may free devices). */
        mount_check_table(m, mounts);
        mnt_unref_table(mounts);
        /* Mounted block devices are bases of the guard. */
        manager_guard_sync(m);
        return 0;
}

int manager_watch_mounts(Manager *m) {
        int r, fd;

        m->mount_monitor = mnt_new_monitor();
        if (!m->mount_monitor)
                return -ENOMEM;
        /* The "kernel" monitor watches /proc/self/mountinfo: every mount and unmount in our
         * namespace, whoever made it. */
        r = mnt_monitor_enable_kernel(m->mount_monitor, 1);
        if (r < 0)
                return r;
        fd = mnt_monitor_get_fd(m->mount_monitor);
        if (fd < 0)
                return fd;
        r = sd_event_add_io(m->event, &m->mount_source, fd, EPOLLIN, on_mounts_changed, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(m->mount_source, "mount-monitor");
        /* The baseline the first change is compared with: read afresh now that the monitor
         * is on, so that no change falls between the two. */
        mnt_unref_table(m->mounts);
        m->mounts = NULL;
        m->mounts_seen = manager_mount_table(m);
        return 0;
}

/* Whether what was read in this event-loop iteration is still current. Iteration 0 is the
 * start-up of the daemon (connected, before the loop runs): it announces every device with
 * its Openers, and one read serves them all. Without a bus (unit tests) nothing is cached
 * at iteration 0, as the loop may never run. */
static bool same_iteration(Manager *m, uint64_t then, uint64_t *ret_now) {
        uint64_t iteration = 0;

        (void) sd_event_get_iteration(m->event, &iteration);
        *ret_now = iteration;
        return then == iteration && (iteration != 0 || m->bus);
}

const ForeignMounts *manager_foreign_mounts(Manager *m) {
        uint64_t iteration;

        if (same_iteration(m, m->foreign_iteration, &iteration) && m->foreign_valid)
                return &m->foreign;

        foreign_mounts_done(&m->foreign);
        if (foreign_mounts_scan(m->root, &m->foreign) < 0)
                m->foreign = (ForeignMounts){};
        m->foreign_iteration = iteration;
        m->foreign_valid = true;
        return &m->foreign;
}

struct libmnt_table *manager_mount_table(Manager *m) {
        _cleanup_(mnt_unref_tablep) struct libmnt_table *t = NULL;
        _cleanup_free_ char *path = NULL;
        uint64_t iteration;

        /* One parse per event-loop iteration (GetManagedObjects asks once per device), and
         * a fresh one after the mount monitor fired. */
        if (same_iteration(m, m->mounts_iteration, &iteration) && m->mounts) {
                mnt_ref_table(m->mounts);
                return m->mounts;
        }

        path = path_join_root(m->root, "/proc/self/mountinfo");
        if (!path)
                return NULL;
        t = mnt_new_table();
        if (t && mnt_table_parse_file(t, path) < 0)
                return NULL;
        /* One reference for the cache, one for the caller. */
        mnt_unref_table(m->mounts);
        mnt_ref_table(t);
        m->mounts = t;
        m->mounts_iteration = iteration;
        return TAKE_PTR(t);
}
