/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The manager's side of the guard (guard.h): starts it in the mode asked for, keeps its map
 * of bases exact (every base and block device a loop device uses, mounted and held block
 * devices, disks with their partitions), and turns its events into log lines and Creators.
 */

#include "guard.h"

typedef struct Manager Manager;
typedef struct Device Device;

/* Loads and attaches the guard in m->guard_requested; on failure sets m->guard_problem and
 * logs it once; the daemon then runs unguarded. Mode off removes an earlier daemon's pins. */
void manager_guard_start(Manager *m);
/* After the first enumeration: fills the map from the kernel's state, then replaces an
 * earlier daemon's pins with ours. */
void manager_guard_publish(Manager *m);
/* Recomputes the bases from the devices and the mount table (no-op before publish or when
 * unguarded). Called whenever a device appears, goes, or changes identity, and on mount
 * changes. */
void manager_guard_sync(Manager *m);
/* A foreign device appeared (before it is announced): gives it the Creator an event named for
 * it, if any. */
void manager_guard_device_added(Manager *m, Device *d);
void manager_guard_stop(Manager *m);

/* The key set of one block device: itself, and for a disk or a partition the disk and every
 * partition of it (a partition in use counts for its disk, the disk for its partitions).
 * holder: the loop device whose direct backing devnum is (0: none); only devnum's own entry
 * has it. flags (LOOP_GUARD_BASE_*) go to every entry. Appends to *keys (realloc'd, *n_keys
 * updated). */
int guard_keys_add_block(const char *root, dev_t devnum, dev_t holder, uint32_t flags,
                         GuardBase **keys, size_t *n_keys);
