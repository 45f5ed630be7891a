/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

#include "options.h"

typedef struct Manager Manager;
typedef struct Device Device;

/* Registers the manager object, its ObjectManager and the Manager interface. */
int manager_bus_register(Manager *m);
/* The core's Detach for the call `message` (Manager.Detach, Device.Detach), with its Problem
 * turned into *error. */

int bus_detach(Manager *m, sd_bus_message *message, Device *d, const DetachOptions *o, uid_t uid,
               sd_bus_error *error);
