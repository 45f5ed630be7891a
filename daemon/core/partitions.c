/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The partitions of a device (the Partitions property, docs/API.md): read from sysfs when the
 * device is bound or re-read (a device with a partition scan only), with what udev's blkid
 * builtin or a Mount's probe found on each, and each with a loopmgr mount of its own.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loop-partitions.h"
#include "manager.h"
#include "media-mount.h"
#include "partitions.h"
#include "udev-props.h"
#include "util.h"

static void partition_done(DevicePartition *p) {
        free(p->node);
        free(p->id_type);
        free(p->id_label);
        free(p->id_uuid);
        device_mount_clear(&p->mount);
}

/* The entry of old that stands for the same partition as lp (same number and device). */
static DevicePartition *find_same(DevicePartition *old, size_t n_old, const LoopPartition *lp) {
        for (size_t i = 0; i < n_old; i++)
                if (old[i].number == lp->number && old[i].devnum == lp->devnum)
                        return &old[i];
        return NULL;
}

/* What udev's database says of a partition found anew (after a restart, or one somebody else
 * added): a small file under /run/udev, no device I/O. Nothing when udev has not processed it
 * yet; its event brings the ids then (manager_partition_udev_event()). */
static void read_udev_ids(DevicePartition *p) {
        _cleanup_(sd_device_unrefp) sd_device *device = NULL;
        _cleanup_(udev_ids_done) UdevIds ids = {};

        if (sd_device_new_from_devnum(&device, 'b', p->devnum) < 0 ||
            udev_props_read_ids(device, &ids) < 0)
                return;
        p->id_type = TAKE_PTR(ids.type);
        p->id_label = TAKE_PTR(ids.label);
        p->id_uuid = TAKE_PTR(ids.uuid);
}

static bool listed(const DevicePartition *o, const LoopPartition *lps, size_t n) {
        for (size_t k = 0; k < n; k++)
                if (o->number == lps[k].number && o->devnum == lps[k].devnum)
                        return true;
        return false;
}

int manager_read_partitions(Manager *m, Device *d, bool emit) {
        _cleanup_free_ LoopPartition *lps = NULL;
        DevicePartition *parts = NULL, *old = d->partitions;
        size_t n = 0, n_old = d->n_partitions, n_new = 0;
        bool changed;
        int r;

        r = loop_read_partitions(m->root, d->status.name, &lps, &n);
        if (r < 0)
                return r;
        /* A mounted partition cannot go (the kernel refuses to delete or rescan it while it
         * is open); should the list not show it all the same, its mount and the reference it
         * holds stay known until the mount is gone. */
        n_new = n;
        for (size_t i = 0; i < n_old; i++)
                if (old[i].mount.point && !listed(&old[i], lps, n))
                        n_new++;
        if (n_new == 0 && n_old == 0)
                return 0;
        if (n_new > 0) {
                parts = calloc(n_new, sizeof(*parts));
                if (!parts)
                        return -ENOMEM;
        }
        /* Everything that can fail first, nothing moved yet: the nodes of new partitions. */
        for (size_t i = 0; i < n; i++)
                if (!find_same(old, n_old, &lps[i]) &&
                    asprintf(&parts[i].node, "/dev/%s", lps[i].name) < 0) {
                        parts[i].node = NULL;
                        for (size_t k = 0; k < i; k++)
                                free(parts[k].node);
                        free(parts);
                        return -ENOMEM;
                }

        changed = n_new != n_old;
        for (size_t i = 0; i < n; i++) {
                DevicePartition *p = &parts[i], *o = find_same(old, n_old, &lps[i]);

                if (o) {
                        changed = changed || o != &old[i] || o->start != lps[i].start ||
                                  o->size != lps[i].size;
                        *p = *o;
                        *o = (DevicePartition){};
                } else {
                        changed = true;
                        p->number = lps[i].number;
                        p->devnum = lps[i].devnum;
                        p->mount.uid = (uid_t) -1;
                        /* udev's database is the real root's (unit tests have another). */
                        if (!m->root)
                                read_udev_ids(p);
                }
                p->start = lps[i].start;
                p->size = lps[i].size;
        }
        n_new = n;
        for (size_t i = 0; i < n_old; i++)
                if (old[i].mount.point) {
                        log_warning("%s: partition %u is mounted on %s but no longer listed",
                                    d->node, old[i].number, old[i].mount.point);
                        parts[n_new++] = old[i];
                        old[i] = (DevicePartition){};
                }
        for (size_t i = 0; i < n_old; i++)
                partition_done(&old[i]);
        free(old);
        d->partitions = parts;
        d->n_partitions = n_new;
        if (changed && emit)
                manager_emit_device_changed(m, d, (char *[]){"Partitions", NULL});
        return 0;
}

static bool set_string(char **field, const char *value) {
        char *v;

        if (streq_ptr(*field ?: "", value ?: ""))
                return false;
        v = value && *value ? strdup(value) : NULL;
        if (value && *value && !v)
                return false;
        free(*field);
        *field = v;
        return true;
}

void manager_set_partition_ids(Manager *m, Device *d, DevicePartition *p, const char *type,
                               const char *label, const char *uuid) {
        bool changed = false;

        changed |= set_string(&p->id_type, type);
        changed |= set_string(&p->id_label, label);
        changed |= set_string(&p->id_uuid, uuid);
        if (changed)
                manager_emit_device_changed(m, d, (char *[]){"Partitions", NULL});
}

void manager_hold_partitions(Manager *m, Device *d) {
        int fd;

        if (!d->managed || !d->status.partscan || d->hold_fd >= 0 || d->state != DEVICE_ATTACHED)
                return;
        fd = loop_hold_device(m->root, d->status.name, d->status.diskseq);
        if (fd < 0) {
                log_debug_errno(fd, "%s: cannot hold its partitions: %m", d->node);
                return;
        }
        d->hold_fd = fd;
}

void manager_partition_udev_event(Manager *m, Device *d, unsigned number, sd_device *device) {
        _cleanup_(udev_ids_done) UdevIds ids = {};
        DevicePartition *p;

        /* A partition udev has processed: added or removed (BLKPG, a rescan), or probed. */
        if (manager_read_partitions(m, d, true) < 0)
                return;
        p = device_get_partition(d, number);
        if (!p || !device || udev_props_read_ids(device, &ids) < 0)
                return;
        manager_set_partition_ids(m, d, p, ids.type, ids.label, ids.uuid);
}
