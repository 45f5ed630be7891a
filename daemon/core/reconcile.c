/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Reconciliation: the registry brought in line with the kernel. One loop device is re-read
 * from sysfs and added, updated or removed (manager_reconcile()); the udev watch's events say
 * which (manager_udev_event()); a lost event or the start-up re-reads them all.
 */

#include <inttypes.h>
#include <stdio.h>

#include "log.h"
#include "manager.h"
#include "media-mount.h"
#include "udev-props.h"
#include "openers.h"
#include "partitions.h"
#include "registry.h"
#include "udev-watch.h"

/* The mounts of other namespaces as last read, without reading them again (once, if never):
 * what event handlers use. Those raise no event of their own, so a read of Openers or a busy
 * check reads them afresh (manager_foreign_mounts()), and the cache is that read. */
const ForeignMounts *manager_foreign_mounts_known(Manager *m) {
        return m->foreign_valid ? &m->foreign : manager_foreign_mounts(m);
}

int manager_reconcile(Manager *m, const char *device_name) {
        _cleanup_(loop_status_done) LoopStatus st = {};
        char name[sizeof(st.name)];
        unsigned number;
        Device *d;
        int r;

        /* A copy: callers pass the name of a device that this may free. */
        if (strlen(device_name) >= sizeof(name))
                return -EINVAL;
        memcpy(name, device_name, strlen(device_name) + 1);
        r = loop_name_to_number(name, &number);
        if (r < 0)
                return r;
        d = manager_get_device_by_number(m, number);

        if (!d) {
                _cleanup_free_ char *rel = NULL, *path = NULL;

                /* Nothing known and nothing bound (a free device created or removed, or the
                 * unbinding of one already gone): one lookup instead of reading it whole. */
                if (asprintf(&rel, "/sys/block/%s/loop", name) < 0)
                        return -ENOMEM;
                path = path_join_root(m->root, rel);
                if (!path)
                        return -ENOMEM;
                if (access(path, F_OK) < 0 && errno == ENOENT)
                        return 0;
        }

        r = loop_read_sysfs(m->root, name, &st);
        if (r == -ENOENT || (r >= 0 && !st.bound)) {
                if (d) {
                        bool ours = d->managed;

                        manager_remove_device(m, d, -ENXIO);
                        /* A teardown the kernel deferred to the last close could not delete
                         * partitions that were still mounted; they outlive the binding. */
                        if (ours && r >= 0) {
                                r = loop_remove_stale_partitions(m->root, name);
                                if (r > 0)
                                        log_info("Deleted %d partition(s) left on %s after its "
                                                 "teardown",
                                                 r, name);
                        }
                }
                return 0;
        }
        if (r < 0)
                return r;

        if (d && d->status.diskseq != st.diskseq) {
                /* Same loopN, new binding: the old one is gone. */
                manager_remove_device(m, d, -ENXIO);
                d = NULL;
        }

        if (d) {
                manager_update_status(m, d, &st);
                if (d->status.partscan || d->n_partitions > 0)
                        (void) manager_read_partitions(m, d, true);
                return 0;
        }

        /* A binding made behind our back (or before we started). Its backing ids need
         * LOOP_GET_STATUS64; a device already in rundown refuses opens, and then we simply
         * don't know its identity. */
        r = loop_read_ids(m->root, &st);
        if (r == -ESTALE)
                return 0; /* rebound between the two reads: its own event follows */
        if (r < 0)
                log_debug_errno(r, "Cannot read backing ids of %s: %m", name);

        r = device_new(m, &m->last_reference_id, &st, false, &d);
        if (r < 0)
                return r;
        if (st.partscan)
                (void) manager_read_partitions(m, d, false);
        registry_update_identity(m, d);
        r = manager_restore_device(d, state_find(&m->restored, name, st.diskseq));
        if (r < 0) {
                device_free(d);
                return r;
        }
        /* InterfacesAdded carries Openers: computed from what is already read, as for any
         * event (manager_refresh_openers()), so that a binding appearing on the host does not
         * cost a scan of every process. A later read of the property is fresh. */
        if (manager_device_openers_with(m, d, m->mounts, manager_foreign_mounts_known(m),
                                        &d->openers) >= 0)
                (void) sd_event_get_iteration(m->event, &d->openers_iteration);
        r = manager_add_device(m, d, true);
        if (r < 0) {
                device_free(d);
                return r;
        }
        return 0;
}

int manager_udev_event(Manager *m, const UdevWatchEvent *ev) {
        const char *action = ev->action, *name = ev->sysname;
        uint64_t diskseq = ev->diskseq;
        bool from_udev = ev->from_udev, plain = ev->plain;
        unsigned number;
        Device *d;
        int r;

        log_debug("%s: %s %s diskseq %" PRIu64, from_udev ? "udev" : "kernel", action, name,
                  diskseq);
        if (ev->partition > 0) {
                /* udev is done with a partition of name: its ids, or its going. */
                if (loop_name_to_number(name, &number) >= 0 &&
                    (d = manager_get_device_by_number(m, number)) && d->state == DEVICE_ATTACHED)
                        manager_partition_udev_event(m, d, ev->partition, ev->device);
                return 0;
        }

        r = loop_name_to_number(name, &number);
        if (r < 0)
                return 0;
        d = manager_get_device_by_number(m, number);
        if (from_udev && d && d->teardown_retry)
                /* udev is done with an event of the device, so its probe has probably let
                 * go of the lock a pending teardown waits for: try now, not at the next
                 * tick of the retry timer. */
                (void) sd_event_source_set_time(d->teardown_retry, 1);

        if (!from_udev || !m->udev_watch) {
                /* The kernel's event: only the device it names is re-read; not at all for
                 * the announcement of a binding manager_attach() made and read back from the
                 * device a moment ago, where a dozen sysfs files would tell nothing new. */
                bool announcement =
                        d && d->bind_event_expected && plain && d->status.diskseq == diskseq;

                if (d)
                        d->bind_event_expected = false;
                if (!announcement) {
                        r = manager_reconcile(m, name);
                        if (r < 0)
                                log_warning_errno(r, "Failed to update %s after udev event: %m",
                                                  name);
                        d = manager_get_device_by_number(m, number);
                        if (d && d->openers)
                                /* Only devices whose Openers somebody has seen: the first
                                 * read computes. */
                                manager_refresh_openers(m, d, NULL);
                }
        } else if ((!d || d->status.diskseq != diskseq) && !ev->kernel_flushed)
                /* udev's copy of an event is preceded by the kernel's, which the registry
                 * reflects once processed: re-reading sysfs for it again would only repeat
                 * that. The kernel's copy may still be queued (both monitors woke us up):
                 * the watch processes it first and hands this event back. */
                return UDEV_WATCH_FLUSH_KERNEL;

        /* IdType/IdLabel/IdUUID: udev ran its rules after a change of the content. */
        if (from_udev && d && d->managed && d->status.diskseq == diskseq &&
            d->state == DEVICE_ATTACHED)
                mount_update_ids(m, d, ev->device);
        if (!from_udev || !d || d->udev_ready || d->status.diskseq != diskseq)
                return 0;

        /* udev broadcast an event for this very binding after running its rules: the
         * by-diskseq link is made by them, check that it exists rather than assume. */
        (void) manager_check_udev_ready(m, d);
        return 0;
}

void manager_rescan(Manager *m) {
        _cleanup_strv_free_ char **names = NULL;
        int r;

        r = loop_list(m->root, &names);
        if (r < 0) {
                log_error_errno(r, "Failed to enumerate loop devices: %m");
                return;
        }

        /* Devices we track that no longer exist at all. */
        MANAGER_FOREACH_DEVICE(d, m) {
                bool found = false;

                if (!d)
                        continue;
                for (char **n = names; *n && !found; n++)
                        found = streq(*n, d->status.name);
                if (!found)
                        manager_remove_device(m, d, -ENXIO);
        }

        for (char **n = names; *n; n++) {
                r = manager_reconcile(m, *n);
                if (r < 0)
                        log_warning_errno(r, "Failed to read %s: %m", *n);
                else {
                        unsigned number;
                        Device *d;

                        if (loop_name_to_number(*n, &number) >= 0 &&
                            (d = manager_get_device_by_number(m, number)))
                                (void) manager_check_udev_ready(m, d);
                }
        }
}

void manager_adopt_unseen(Manager *m) {
        _cleanup_strv_free_ char **names = NULL;

        /* A request that closely follows `losetup` may arrive before we processed the uevent
         * of that binding. The kernel sends the uevent inside the ioctl, before losetup even
         * returns (docs/KERNEL.md, "Uevents and udev"), so it is already queued on our kernel
         * monitor: process the queue now. This
         * costs what is pending, not what exists. */
        if (m->udev_watch) {
                udev_watch_flush_kernel(m->udev_watch);
                return;
        }

        /* No monitor (unit tests): look at every loop device we have no object for. */
        if (loop_list(m->root, &names) < 0)
                return;
        for (char **n = names; *n; n++) {
                _cleanup_free_ char *rel = NULL, *path = NULL;
                unsigned number;

                if (loop_name_to_number(*n, &number) < 0 || manager_get_device_by_number(m, number))
                        continue;
                if (asprintf(&rel, "/sys/block/%s/loop", *n) < 0)
                        return;
                path = path_join_root(m->root, rel);
                if (path && access(path, F_OK) >= 0)
                        (void) manager_reconcile(m, *n);
        }
}
