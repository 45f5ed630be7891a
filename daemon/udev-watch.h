/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The uevents of loop disks on an sd-event loop (netlink, parsed by uevent.h): the kernel's (at
 * once, for the state of bindings) and udev's (after its rules ran, for the by-diskseq link). */

#include <systemd/sd-event.h>

typedef struct Manager Manager;
typedef struct UdevWatch UdevWatch;

int udev_watch_new(sd_event *event, Manager *m, UdevWatch **ret);
UdevWatch *udev_watch_free(UdevWatch *w);

/* Processes the kernel uevents already queued, without waiting for the event loop. */
void udev_watch_flush_kernel(UdevWatch *w);
