/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The registry (registry.c): every tracked device by loop number, diskseq, device number,
 * object path and base range. Every module walks it with MANAGER_FOREACH_DEVICE() and looks
 * devices up through these functions; nobody touches the arrays.
 */

#include "canonical.h"
#include "device.h"

#define REGISTRY_CONCAT_(a, b) a##b
#define REGISTRY_CONCAT(a, b)  REGISTRY_CONCAT_(a, b)

/* The next device from slot *i on, or NULL at the end; *i is past it afterwards. */
static inline Device *registry_next_(Device **slots, size_t n_slots, size_t *i) {
        while (*i < n_slots) {
                Device *d = slots[(*i)++];

                if (d)
                        return d;
        }
        return NULL;
}

/* One loop, so that break ends the walk; the outer one runs once and only scopes i. */
#define REGISTRY_FOREACH_(d, m, i, once)                                                           \
        for (size_t i = 0, once = 1; once; once = 0)                                               \
                for (Device *d = registry_next_((m)->devices, (m)->n_slots, &i); d;                \
                     d = registry_next_((m)->devices, (m)->n_slots, &i))

/* Every tracked device, by loop number. The body may remove the device it is given (the
 * walk reads the next slot afresh), not others. break and continue work as in any loop. */
#define MANAGER_FOREACH_DEVICE(d, m)                                                               \
        REGISTRY_FOREACH_(d, m, REGISTRY_CONCAT(registry_i_, __COUNTER__),                         \
                          REGISTRY_CONCAT(registry_once_, __COUNTER__))

Device *manager_get_device_by_number(Manager *m, unsigned number);
Device *manager_get_device_by_diskseq(Manager *m, uint64_t diskseq);
Device *manager_get_device_by_devnum(Manager *m, dev_t devnum);
Device *manager_get_device_by_path(Manager *m, const char *path);
/* /dev/loopN, loopN, /dev/disk/by-diskseq/N or a backing file covered whole. */
int manager_find_device(Manager *m, const char *spec, Device **ret);
/* The loop device below d, if d stacks on one (directly or through a partition of it). */
Device *manager_get_device_below(Manager *m, Device *d);

/* Calls fn for every device whose identity meets id's range (the range index). */
int registry_foreach_intersecting(Manager *m, const Identity *id,
                                  int (*fn)(Device *d, void *userdata), void *userdata);

/* The canonicaliser's question to the registry: what bound loop device devnum is backed by
 * (a LoopInfoLookup, userdata the Manager). */
int registry_loop_info_lookup(dev_t devnum, void *userdata, LoopLayerInfo *ret);

/* Puts d in every index (its slot must be free); rolls back and returns <0 on failure. */
int registry_insert(Manager *m, Device *d);
bool registry_contains(Manager *m, Device *d);
/* Takes d out of every index (no-op when it is not in). */
void registry_remove(Manager *m, Device *d);
/* Recomputes d's chain and identity from its status, keeping the range index in step when d
 * is registered. */
void registry_update_identity(Manager *m, Device *d);
