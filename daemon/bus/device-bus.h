/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

typedef struct Manager Manager;
typedef struct Device Device;

typedef enum DeviceChange {
        DEVICE_CHANGE_DETACH,
        DEVICE_CHANGE_AUTOCLEAR,
        DEVICE_CHANGE_CAPACITY,
} DeviceChange;

/* Registers the Device interface as a fallback under LOOPMGR_DEVICE_PATH_PREFIX, with a node
 * enumerator so introspection and GetManagedObjects see every device. */
int device_bus_register(Manager *m);

/* May the sender of `message` make `change` to d (SPEC §7)? Root may; so may a caller holding a
 * reference on d, unless it asks for all-references or a recursive detach would take down a
 * stacked device it holds no reference on; everyone else needs org.loopmgr.detach-others.
 * Returns 1 (allowed), 0 (polkit was asked: return 1 without replying, the handler runs again
 * when it answered) or a negative errno with *error set. *ret_uid is the caller's uid. */
int device_bus_authorize_change(Device *d, sd_bus_message *message, DeviceChange change,
                                bool all_references, bool recursive, bool no_user_interaction,
                                uid_t *ret_uid, sd_bus_error *error);
