/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>
#include <systemd/sd-bus.h>

typedef struct Manager Manager;
typedef struct Device Device;

/* Registers the manager object, its ObjectManager and the Manager interface. */
int manager_bus_register(Manager *m);
/* Sends Attach's reply (o device, s node, t diskseq, b reused). */
int manager_bus_reply_attach(sd_bus_message *message, Device *d, bool reused);
