/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The registry: every loop binding the daemon tracks, by loop number (the array), by diskseq
 * (an open-addressing hash: object paths name devices by diskseq, and sd-bus looks up every
 * path it serves) and by base object and range (the range index, what the alias rule asks).
 * Nothing here has side effects beyond the indexes: lifecycle.c adds and removes devices with
 * everything that goes with it.
 */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/param.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "device-path.h"
#include "log.h"
#include "manager.h"
#include "range-index.h"
#include "registry.h"

typedef struct RegistryVisit {
        int (*fn)(Device *d, void *userdata);
        void *userdata;
} RegistryVisit;

static int registry_visit_one(void *item, void *userdata) {
        RegistryVisit *v = userdata;

        return v->fn(item, v->userdata);
}

Device *manager_get_device_by_number(Manager *m, unsigned number) {
        return number < m->n_slots ? m->devices[number] : NULL;
}

static size_t diskseq_hash(uint64_t diskseq, size_t size) {
        /* Fibonacci hashing: diskseqs are consecutive numbers. */
        return (size_t) ((diskseq * UINT64_C(0x9e3779b97f4a7c15)) >> 32) & (size - 1);
}

static void diskseq_index_put(Device **table, size_t size, Device *d) {
        size_t i = diskseq_hash(d->status.diskseq, size);

        while (table[i])
                i = (i + 1) & (size - 1);
        table[i] = d;
}

/* Called with d already in m->devices: the table stays at most half full. */
static int diskseq_index_add(Manager *m, Device *d) {
        if (m->n_devices * 2 > m->by_diskseq_size) {
                size_t size = MAX(m->by_diskseq_size * 2, (size_t) 64);
                Device **t = calloc(size, sizeof(Device *));

                if (!t)
                        return -ENOMEM;
                for (size_t i = 0; i < m->by_diskseq_size; i++)
                        if (m->by_diskseq[i])
                                diskseq_index_put(t, size, m->by_diskseq[i]);
                free(m->by_diskseq);
                m->by_diskseq = t;
                m->by_diskseq_size = size;
        }
        diskseq_index_put(m->by_diskseq, m->by_diskseq_size, d);
        return 0;
}

static void diskseq_index_remove(Manager *m, Device *d) {
        size_t mask = m->by_diskseq_size - 1, i, j;

        if (m->by_diskseq_size == 0)
                return;
        for (i = diskseq_hash(d->status.diskseq, m->by_diskseq_size); m->by_diskseq[i] != d;
             i = (i + 1) & mask)
                if (!m->by_diskseq[i])
                        return;
        m->by_diskseq[i] = NULL;

        /* Backward shift: move up what would otherwise be cut off from its home slot. */
        for (j = (i + 1) & mask; m->by_diskseq[j]; j = (j + 1) & mask) {
                size_t home = diskseq_hash(m->by_diskseq[j]->status.diskseq, m->by_diskseq_size);

                /* Stays if its home lies cyclically in (i, j]. */
                if (i < j ? (home > i && home <= j) : (home > i || home <= j))
                        continue;
                m->by_diskseq[i] = m->by_diskseq[j];
                m->by_diskseq[j] = NULL;
                i = j;
        }
}

Device *manager_get_device_by_diskseq(Manager *m, uint64_t diskseq) {
        if (m->by_diskseq_size == 0)
                return NULL;
        for (size_t i = diskseq_hash(diskseq, m->by_diskseq_size); m->by_diskseq[i];
             i = (i + 1) & (m->by_diskseq_size - 1))
                if (m->by_diskseq[i]->status.diskseq == diskseq)
                        return m->by_diskseq[i];
        return NULL;
}

Device *manager_get_device_by_devnum(Manager *m, dev_t devnum) {
        Device *d;

        if (major(devnum) != LOOP_MAJOR_NUMBER)
                return NULL;
        /* Without partitions (max_part=0, the default) the minor is the loop number
         * (docs/KERNEL.md, "Partitions"). */
        d = manager_get_device_by_number(m, minor(devnum));
        if (d && d->status.devnum == devnum)
                return d;
        MANAGER_FOREACH_DEVICE(e, m)
        if (e->status.devnum == devnum)
                return e;
        return NULL;
}

Device *manager_get_device_by_path(Manager *m, const char *path) {
        uint64_t diskseq;

        if (device_path_parse(path, &diskseq) < 0)
                return NULL;
        return manager_get_device_by_diskseq(m, diskseq);
}

Device *manager_get_device_below(Manager *m, Device *d) {
        Device *lower;

        if (!d->backing_is_block)
                return NULL;
        lower = manager_get_device_by_devnum(m, d->status.backing_rdevice);
        if (lower)
                return lower;
        /* Through a partition: the chain's next loop layer. */
        for (size_t i = 1; d->has_identity && i < d->chain.n_layers; i++)
                if (d->chain.layers[i].kind == LAYER_LOOP)
                        return manager_get_device_by_devnum(m, d->chain.layers[i].devnum);
        return NULL;
}

int manager_find_device(Manager *m, const char *spec, Device **ret) {
        const char *byseq = "/dev/disk/by-diskseq/";
        struct stat st;
        unsigned number;
        Device *d;

        if (!spec || !*spec)
                return -EINVAL;

        if (strncmp(spec, byseq, strlen(byseq)) == 0) {
                uint64_t seq;

                if (safe_atou64(spec + strlen(byseq), &seq) < 0)
                        return -EINVAL;
                d = manager_get_device_by_diskseq(m, seq);
                if (!d)
                        return -ENODEV;
                *ret = d;
                return 0;
        }

        if (loop_name_to_number(strncmp(spec, "/dev/", 5) == 0 ? spec + 5 : spec, &number) >= 0) {
                d = manager_get_device_by_number(m, number);
                if (!d)
                        return -ENODEV;
                *ret = d;
                return 0;
        }

        if (spec[0] != '/')
                return -EINVAL;
        if (stat(spec, &st) < 0)
                return -errno;

        if (S_ISBLK(st.st_mode)) {
                d = manager_get_device_by_devnum(m, st.st_rdev);
                if (!d)
                        return -ENODEV;
                *ret = d;
                return 0;
        }
        if (!S_ISREG(st.st_mode))
                return -EINVAL;

        /* A backing file: the device that exposes all of it, a managed one first. */
        d = NULL;
        MANAGER_FOREACH_DEVICE(e, m) {
                if (!e->has_identity || e->identity.kind != BASE_FILE ||
                    e->identity.base_device != st.st_dev ||
                    e->identity.base_inode != (uint64_t) st.st_ino || e->identity.offset != 0 ||
                    e->identity.size != (uint64_t) st.st_size)
                        continue;
                if (!d || (e->managed && !d->managed))
                        d = e;
        }
        if (!d)
                return -ENODEV;
        *ret = d;
        return 0;
}

int registry_loop_info_lookup(dev_t devnum, void *userdata, LoopLayerInfo *ret) {
        Manager *m = userdata;
        Device *d = manager_get_device_by_devnum(m, devnum);
        Backing b;

        if (!d || !d->status.bound || d->status.size == 0)
                return 0;
        if (d->backing_is_block)
                b = (Backing){.is_block = true, .device = d->status.backing_rdevice};
        else if (d->status.backing_device != 0 || d->status.backing_inode != 0)
                b = (Backing){.device = d->status.backing_device, .inode = d->status.backing_inode};
        else
                return 0; /* ids unknown: let the canonicaliser ask the kernel */
        *ret = (LoopLayerInfo){
                .backing = b,
                .offset = d->status.offset,
                .size = d->status.size,
                .backing_file = d->status.backing_file,
        };
        return 1;
}

static void device_update_identity(Manager *m, Device *d) {
        Layer top;
        Backing b;
        int r;

        d->has_identity = false;
        chain_done(&d->chain);
        if (!d->status.bound || d->status.size == 0)
                return;

        d->backing_is_block = d->status.backing_rdevice != 0;
        if (d->backing_is_block)
                b = (Backing){.is_block = true, .device = d->status.backing_rdevice};
        else if (d->status.backing_device != 0 || d->status.backing_inode != 0)
                b = (Backing){.device = d->status.backing_device, .inode = d->status.backing_inode};
        else
                return; /* ids unknown (device in rundown): no identity */

        top = (Layer){
                .kind = LAYER_LOOP, .devnum = d->status.devnum, .path = d->status.backing_file};
        snprintf(top.name, sizeof(top.name), "%s", d->status.name);

        r = chain_resolve(m->root, &top, &b, d->status.offset, d->status.size,
                          registry_loop_info_lookup, m, &d->chain);
        if (r < 0) {
                log_debug_errno(r, "Cannot resolve the chain of %s: %m", d->status.name);
                return;
        }
        d->identity = d->chain.identity;
        d->has_identity = true;
}

int registry_insert(Manager *m, Device *d) {
        unsigned n = d->status.number;
        int r;

        if (n >= m->n_slots) {
                size_t k = n + 1 > m->n_slots * 2 ? n + 1 : m->n_slots * 2;
                Device **nd = realloc(m->devices, k * sizeof(Device *));

                if (!nd)
                        return -ENOMEM;
                memset(nd + m->n_slots, 0, (k - m->n_slots) * sizeof(Device *));
                m->devices = nd;
                m->n_slots = k;
        }
        assert(!m->devices[n]);
        if (d->has_identity) {
                r = range_index_add(m->index, &d->identity, d);
                if (r < 0)
                        return r;
        }
        m->devices[n] = d;
        m->n_devices++;
        r = diskseq_index_add(m, d);
        if (r < 0) {
                m->devices[n] = NULL;
                m->n_devices--;
                if (d->has_identity)
                        (void) range_index_remove(m->index, &d->identity, d);
                return r;
        }
        return 0;
}

bool registry_contains(Manager *m, Device *d) {
        return d->status.number < m->n_slots && m->devices[d->status.number] == d;
}

void registry_remove(Manager *m, Device *d) {
        if (!registry_contains(m, d))
                return;
        diskseq_index_remove(m, d);
        m->devices[d->status.number] = NULL;
        m->n_devices--;
        if (d->has_identity)
                (void) range_index_remove(m->index, &d->identity, d);
}

void registry_update_identity(Manager *m, Device *d) {
        bool indexed = registry_contains(m, d);

        if (d->has_identity && indexed)
                (void) range_index_remove(m->index, &d->identity, d);
        device_update_identity(m, d);
        if (d->has_identity && indexed && range_index_add(m->index, &d->identity, d) < 0) {
                log_warning("Out of memory indexing %s; it is treated as unidentified.", d->node);
                d->has_identity = false;
        }
}

int registry_foreach_intersecting(Manager *m, const Identity *id,
                                  int (*fn)(Device *d, void *userdata), void *userdata) {
        RegistryVisit v = {.fn = fn, .userdata = userdata};

        return range_index_foreach_intersecting(m->index, id, registry_visit_one, &v);
}
