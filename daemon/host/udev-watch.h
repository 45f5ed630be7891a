/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The uevents of loop disks on an sd-event loop, handed to a callback with userdata: the
 * kernel's (a netlink socket of our own, parsed by uevent.c; at once, for the state of
 * bindings) and udev's (sd_device_monitor with a kernel socket filter for block disks; after
 * its rules ran, for the by-diskseq link; and of the partitions of loop disks, for what its
 * blkid builtin found on them). Knows nothing of the manager.
 */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-device.h>
#include <systemd/sd-event.h>

typedef struct UdevWatch UdevWatch;

typedef struct UdevWatchEvent {
        /* "add", "change", ...; NULL: events were lost (the kernel socket overflowed), the
         * whole picture must be read again. */
        const char *action;
        const char *sysname; /* "loop0" */
        /* udev events of a partition of the disk sysname: its number (loop0p<N>); 0: of the
         * disk itself. */
        unsigned partition;
        uint64_t diskseq; /* 0: none */
        bool from_udev;   /* udev's copy, after its rules ran; else the kernel's */
        /* Kernel events: every event of the name in this batch was a plain change
         * (uevent.h). Several events of one device in a batch are delivered once. */
        bool plain;
        /* udev events: the kernel events queued when this event arrived were delivered
         * first (the handler asked with UDEV_WATCH_FLUSH_KERNEL). */
        bool kernel_flushed;
        /* udev events: the device as udev broadcast it, with its properties after the rules
         * ran (what udev's database records for it too); valid during the call. NULL for the
         * kernel's. */
        sd_device *device;
} UdevWatchEvent;

/* What a handler returns for a udev event it cannot place yet (a binding it does not know):
 * the kernel's copy of the event may still be queued. The watch delivers the queued kernel
 * events, then this event again with kernel_flushed set (whatever the handler returns then). */
#define UDEV_WATCH_FLUSH_KERNEL 1

typedef int (*UdevWatchHandler)(const UdevWatchEvent *event, void *userdata);

int udev_watch_new(sd_event *event, UdevWatchHandler handler, void *userdata, UdevWatch **ret);
UdevWatch *udev_watch_free(UdevWatch *w);

/* Delivers the kernel uevents already queued, without waiting for the event loop: for a
 * caller that must see a binding whose ioctl returned a moment ago (its uevent is queued
 * before the ioctl returns). Not for use from inside the handler. */
void udev_watch_flush_kernel(UdevWatch *w);
