/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

typedef struct Manager Manager;

/* Registers the Device interface as a fallback under LOOPMGR_DEVICE_PATH_PREFIX, with a node
 * enumerator so introspection and GetManagedObjects see every device. */
int device_bus_register(Manager *m);
