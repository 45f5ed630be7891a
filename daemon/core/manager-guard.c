/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>

#include "blockdev.h"
#include "device.h"
#include "log.h"
#include "manager-guard.h"
#include "manager.h"

/* A Creator waits at most this long for its device to appear. */
#define CREATOR_TTL_USEC (30ULL * 1000000ULL)

static void *mfree(void *p) {
        free(p);
        return NULL;
}

static int keys_add(GuardBase **keys, size_t *n, GuardKey k, dev_t holder, uint32_t flags) {
        GuardBase *nk = realloc(*keys, (*n + 1) * sizeof(GuardBase));

        if (!nk)
                return -ENOMEM;
        nk[(*n)++] = guard_base(k, holder, flags);
        *keys = nk;
        return 0;
}

int guard_keys_add_block(const char *root, dev_t devnum, dev_t holder, uint32_t flags,
                         GuardBase **keys, size_t *n_keys) {
        _cleanup_free_ char *dir = NULL, *sys = NULL;
        _cleanup_closedir_ DIR *d = NULL;
        PartitionInfo pi;
        dev_t disk = devnum;
        int r;

        r = keys_add(keys, n_keys, guard_key_block(devnum), holder, flags);
        if (r < 0)
                return r;
        r = blockdev_get_partition(root, devnum, &pi);
        if (r < 0)
                return r == -ENOENT ? 0 : r;
        if (r > 0) {
                disk = pi.parent;
                r = keys_add(keys, n_keys, guard_key_block(disk), 0, flags);
                if (r < 0)
                        return r;
        }
        /* The partitions are the subdirectories of the disk's with a "partition" attribute. */
        if (asprintf(&sys, "/sys/dev/block/%u:%u", major(disk), minor(disk)) < 0)
                return -ENOMEM;
        dir = path_join_root(root, sys);
        if (!dir)
                return -ENOMEM;
        d = opendir(dir);
        if (!d)
                return 0;
        for (struct dirent *de; (de = readdir(d));) {
                _cleanup_free_ char *p = NULL, *v = NULL;
                dev_t part;

                if (de->d_name[0] == '.')
                        continue;
                if (asprintf(&p, "%s/%s/partition", dir, de->d_name) < 0)
                        return -ENOMEM;
                if (access(p, F_OK) < 0)
                        continue;
                free(p);
                if (asprintf(&p, "%s/%s/dev", dir, de->d_name) < 0)
                        return -ENOMEM;
                if (read_one_line_file(p, &v) < 0 || parse_devnum(v, &part) < 0)
                        continue;
                /* The device itself again, with its holder: the merge keeps that. */
                r = keys_add(keys, n_keys, guard_key_block(part), part == devnum ? holder : 0,
                             flags);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Whether the directory at path lists anything but dot files; false when it cannot be read. */
static bool dir_has_entries(const char *path) {
        _cleanup_closedir_ DIR *d = opendir(path);

        if (!d)
                return false;
        for (struct dirent *e; (e = readdir(d));)
                if (e->d_name[0] != '.')
                        return true;
        return false;
}

/* Block devices that something holds (a dm or md device on them): /sys/class/block/X/holders
 * is not empty. */
static int keys_add_held(const char *root, GuardBase **keys, size_t *n) {
        _cleanup_free_ char *dir = path_join_root(root, "/sys/class/block");
        _cleanup_closedir_ DIR *d = NULL;
        int r = 0;

        if (!dir)
                return -ENOMEM;
        d = opendir(dir);
        if (!d)
                return 0;
        for (struct dirent *de; r >= 0 && (de = readdir(d));) {
                _cleanup_free_ char *h = NULL, *p = NULL, *v = NULL;
                dev_t devnum;

                if (de->d_name[0] == '.')
                        continue;
                if (asprintf(&h, "%s/%s/holders", dir, de->d_name) < 0)
                        return -ENOMEM;
                if (!dir_has_entries(h))
                        continue;
                if (asprintf(&p, "%s/%s/dev", dir, de->d_name) < 0)
                        return -ENOMEM;
                if (read_one_line_file(p, &v) < 0 || parse_devnum(v, &devnum) < 0)
                        continue;
                r = guard_keys_add_block(root, devnum, 0, LOOP_GUARD_BASE_IN_USE, keys, n);
        }
        return r;
}

/* Block devices mounted in the daemon's namespace (the device numbers of mountinfo that are
 * block devices: not those of virtual file systems). */
static int keys_add_mounted(Manager *m, GuardBase **keys, size_t *n) {
        _cleanup_(mnt_unref_tablep) struct libmnt_table *t = manager_mount_table(m);
        _cleanup_(mnt_free_iterp) struct libmnt_iter *it = NULL;
        struct libmnt_fs *fs;
        int r = 0;

        if (!t)
                return 0;
        it = mnt_new_iter(MNT_ITER_FORWARD);
        if (!it)
                return -ENOMEM;
        while (r >= 0 && mnt_table_next_fs(t, it, &fs) == 0) {
                dev_t devnum = mnt_fs_get_devno(fs);
                char name[64];

                if (major(devnum) == 0)
                        continue;
                if (blockdev_get_name(m->root, devnum, name, sizeof(name)) < 0)
                        continue;
                r = guard_keys_add_block(m->root, devnum, 0, LOOP_GUARD_BASE_IN_USE, keys, n);
        }
        return r;
}

static int keys_add_device(Manager *m, Device *d, GuardBase **keys, size_t *n) {
        dev_t self = d->status.devnum;
        int r;

        /* The device itself (loop over it) and its partitions: a device, in use only if
         * something else says so. */
        r = guard_keys_add_block(m->root, self, 0, 0, keys, n);
        if (r < 0)
                return r;
        /* Its direct backing, held by it: the guard can tell when the kernel let it go. */
        if (d->status.backing_rdevice != 0) {
                r = guard_keys_add_block(m->root, d->status.backing_rdevice, self,
                                         LOOP_GUARD_BASE_IN_USE, keys, n);
                if (r < 0)
                        return r;
        } else if (d->status.backing_inode != 0) {
                r = keys_add(keys, n,
                             guard_key_file(d->status.backing_device, d->status.backing_inode),
                             self, LOOP_GUARD_BASE_IN_USE);
                if (r < 0)
                        return r;
        }
        /* Whatever it lies on below that: the top layer is the device, the next one its
         * backing (already in). */
        for (size_t i = 0; i < d->chain.n_layers; i++) {
                const Layer *l = &d->chain.layers[i];

                if (l->kind == LAYER_BASE_FILE) {
                        if (d->chain.identity.base_device == d->status.backing_device &&
                            d->chain.identity.base_inode == d->status.backing_inode)
                                continue;
                        r = keys_add(keys, n,
                                     guard_key_file(d->chain.identity.base_device,
                                                    d->chain.identity.base_inode),
                                     0, LOOP_GUARD_BASE_IN_USE);
                } else if (l->devnum != 0 && l->devnum != self &&
                           l->devnum != d->status.backing_rdevice)
                        r = guard_keys_add_block(m->root, l->devnum, 0, LOOP_GUARD_BASE_IN_USE,
                                                 keys, n);
                if (r < 0)
                        return r;
        }
        return 0;
}

void manager_guard_sync(Manager *m) {
        _cleanup_free_ GuardBase *keys = NULL;
        size_t n = 0;
        int r = 0;

        if (!m->guard || !m->guard_published)
                return;
        MANAGER_FOREACH_DEVICE(d, m) {
                if (r < 0)
                        break;
                if (d->status.bound)
                        r = keys_add_device(m, d, &keys, &n);
        }
        if (r >= 0)
                r = keys_add_mounted(m, &keys, &n);
        if (r >= 0)
                r = keys_add_held(m->root, &keys, &n);
        if (r >= 0) {
                n = guard_bases_uniq(keys, n);
                r = guard_sync_bases(m->guard, keys, n);
        }
        if (r < 0)
                log_warning_errno(r, "Failed to update the guard's map of bases: %m");
        else
                log_debug("guard: %zu bases", n);
}

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

static void set_creator(Manager *m, Device *d, char *creator) {
        char *changed[] = {(char *) "Creator", NULL};

        free(d->creator);
        d->creator = creator;
        manager_emit_device_changed(m, d, changed);
}

void manager_guard_device_added(Manager *m, Device *d) {
        uint64_t now = now_usec();

        if (d->managed || d->creator)
                return;
        for (size_t i = 0; i < ELEMENTSOF(m->guard_creators); i++) {
                GuardCreator *c = &m->guard_creators[i];

                if (!c->creator || c->number != d->status.number)
                        continue;
                /* Not announced yet: InterfacesAdded carries it, no PropertiesChanged. */
                if (now - c->usec <= CREATOR_TTL_USEC) {
                        free(d->creator);
                        d->creator = TAKE_PTR(c->creator);
                }
                c->creator = mfree(c->creator);
        }
}

static void on_guard_event(const GuardEvent *e, void *userdata) {
        Manager *m = userdata;
        _cleanup_free_ char *line = NULL, *creator = NULL;
        unsigned number;
        Device *d;

        /* Refusals always reach the log; what passed only in audit mode, whose purpose is
         * the report (in aliases mode the Creator keeps who made a device), and a pass that
         * the map alone would have refused (it was behind the kernel). */
        if (guard_event_describe(e, &line) >= 0) {
                if (e->verdict != 0)
                        log_notice("Guard: %s", line);
                else if (m->guard_mode == GUARD_MODE_AUDIT || (e->flags & LOOP_GUARD_EVENT_STALE))
                        log_info("Guard: %s", line);
                else
                        log_debug("Guard: %s", line);
        }
        if (e->verdict != 0 || !guard_event_is_bind(e))
                return;
        if (guard_event_creator(e, &creator) < 0)
                return;
        number = LOOP_GUARD_KDEV_MINOR(e->device);
        d = manager_get_device_by_number(m, number);
        if (d && !d->managed && !d->creator && d->status.bound) {
                set_creator(m, d, TAKE_PTR(creator));
                return;
        }
        /* The device's uevent has not come yet: keep the name for it, in the oldest slot. */
        {
                GuardCreator *slot = &m->guard_creators[0];

                for (size_t i = 0; i < ELEMENTSOF(m->guard_creators); i++) {
                        GuardCreator *c = &m->guard_creators[i];

                        if (!c->creator || c->number == number) {
                                slot = c;
                                break;
                        }
                        if (c->usec < slot->usec)
                                slot = c;
                }
                free(slot->creator);
                slot->creator = TAKE_PTR(creator);
                slot->number = number;
                slot->usec = now_usec();
        }
}

static int on_guard_fd(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        int r;

        r = guard_process_events(m->guard);
        if (r < 0)
                log_debug_errno(r, "guard: reading events failed: %m");
        return 0;
}

void manager_guard_start(Manager *m) {
        _cleanup_free_ char *problem = NULL;
        int r;

        m->guard_mode = GUARD_MODE_OFF;
        if (m->guard_requested == GUARD_MODE_OFF) {
                r = guard_remove(m->guard_pin_dir);
                if (r > 0)
                        log_info("Guard off: removed the guard an earlier loopmgrd left in %s.",
                                 m->guard_pin_dir);
                else if (r < 0)
                        log_warning_errno(r, "Failed to remove the guard pinned in %s: %m",
                                          m->guard_pin_dir);
                return;
        }
        r = guard_open(m->guard_requested, m->guard_pin_dir, on_guard_event, m, &m->guard,
                       &problem);
        if (r < 0) {
                free(m->guard_problem);
                m->guard_problem = TAKE_PTR(problem);
                if (!m->guard_problem)
                        m->guard_problem = strdup(strerror(-r));
                log_warning("The guard (%s) is not in force, running unguarded: %s.",
                            guard_mode_to_string(m->guard_requested),
                            m->guard_problem ?: "out of memory");
                /* A guard an earlier daemon pinned would go on refusing with a map nobody
                 * keeps, and refuse us too (we are not in its task storage): unguarded means
                 * unguarded. */
                r = guard_remove(m->guard_pin_dir);
                if (r > 0)
                        log_warning("Removed the guard an earlier loopmgrd left in %s, which this "
                                    "one cannot take over.",
                                    m->guard_pin_dir);
                return;
        }
        r = sd_event_add_io(m->event, &m->guard_source, guard_event_fd(m->guard), EPOLLIN,
                            on_guard_fd, m);
        if (r < 0)
                log_warning_errno(r, "Failed to watch the guard's events, none are reported: %m");
        m->guard_mode = m->guard_requested;
}

void manager_guard_publish(Manager *m) {
        int r;

        if (!m->guard)
                return;
        m->guard_published = true;
        manager_guard_sync(m);
        r = guard_publish(m->guard);
        if (r < 0) {
                log_warning_errno(r,
                                  "Failed to pin the guard in %s; it stays only while loopmgrd "
                                  "runs: %m",
                                  m->guard_pin_dir);
                return;
        }
        log_info("Guard in force: %s (pinned in %s).", guard_mode_to_string(m->guard_mode),
                 m->guard_pin_dir);
}

void manager_guard_stop(Manager *m) {
        m->guard_source = sd_event_source_disable_unref(m->guard_source);
        m->guard = guard_free(m->guard);
        for (size_t i = 0; i < ELEMENTSOF(m->guard_creators); i++)
                m->guard_creators[i].creator = mfree(m->guard_creators[i].creator);
}
