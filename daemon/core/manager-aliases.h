/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Aliases the daemon did not prevent: two devices exposing some of the same bytes of one base
 * with neither stacked on the other, made by others while the guard was off or auditing, or
 * before the daemon started. They are the Device property Aliases (both devices name each
 * other), a warning logged once per pair when the second device appears, and a marker in
 * `loopmgrctl list`. The alias rule (manager_check_aliases()) keeps the daemon's own attaches
 * out of it.
 */

#include <stddef.h>

typedef struct Manager Manager;
typedef struct Device Device;

/* The devices d aliases, in offset order, as a NULL-terminated array (free() it; the devices
 * are the manager's). Returns their number, or -ENOMEM. */
int manager_device_aliases(Manager *m, Device *d, Device ***ret);

/* d was indexed: it appeared (old NULL) or its identity changed (old: its aliases before, an
 * empty list when none). Logs each alias that is new, once, and tells clients whose Aliases
 * changed. */
void manager_aliases_added(Manager *m, Device *d, Device **old);

/* The devices in list (d's aliases before it left the index) lose d: their Aliases changed. */
void manager_aliases_removed(Manager *m, Device **list);
