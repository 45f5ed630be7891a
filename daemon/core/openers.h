/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What holds a tracked device open (openers.c). */

#include <libmount.h>

#include "device.h"

struct ForeignMounts;

/* Pairs (kind, description) for the Openers property. mounts: a parsed mount table to use, or
 * NULL to read one; the mounts of other namespaces are read afresh. */
int manager_device_openers(Manager *m, Device *d, struct libmnt_table *mounts, char ***ret_pairs);
/* The same with the mounts of other namespaces given (NULL: none known): what event handlers
 * use, so that a uevent or a mount in our namespace does not rescan every process. */
int manager_device_openers_with(Manager *m, Device *d, struct libmnt_table *mounts,
                                const struct ForeignMounts *foreign, char ***ret_pairs);
