/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* A libudev monitor of block disks on an sd-event loop: tells the manager about every event
 * udev has finished processing for a loop device ("udev" netlink group, so symlinks exist). */

#include <systemd/sd-event.h>

typedef struct Manager Manager;
typedef struct UdevWatch UdevWatch;

int udev_watch_new(sd_event *event, Manager *m, UdevWatch **ret);
UdevWatch *udev_watch_free(UdevWatch *w);
