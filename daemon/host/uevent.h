/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * One uevent of a loop disk, reduced to the five fields the daemon reads, from either source
 * udev-watch.c listens to:
 *
 *   kernel (NETLINK_KOBJECT_UEVENT group 1): "ACTION@DEVPATH\0KEY=VALUE\0...", the kernel's
 *     ABI (Documentation/ABI/testing/sysfs-uevent), parsed here in place
 *     (uevent_parse_kernel()). libsystemd 252 has no public monitor of this group
 *     (sd_device_monitor_new() listens to udev's), and the kernel's copy is the one that
 *     keeps the registry current while udev's queue is long (docs/DESIGN.md);
 *   udev (group 2): what systemd-udevd broadcasts after its rules ran, received by
 *     sd_device_monitor (its format is udev's own business) and translated from the
 *     sd_device it makes (uevent_from_device()).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-device.h>

typedef struct UeventInfo {
        const char *action; /* "add", "change", "remove", ...: points into the message */
        char sysname[16];   /* "loop0" */
        uint64_t diskseq;   /* 0: none */
        /* A "change" that reports nothing but itself: no RESIZE, DISK_MEDIA_CHANGE or
         * SYNTH_UUID (a binding's own announcement is one). */
        bool plain;
} UeventInfo;

/* The properties of one uevent that decide what it is; NULL when absent. */
typedef struct UeventFields {
        const char *action;
        const char *devpath;
        const char *subsystem;
        const char *devtype;
        const char *diskseq;
        bool special; /* RESIZE, DISK_MEDIA_CHANGE or SYNTH_UUID is present */
} UeventFields;

/* Returns 1 and fills *ret for a whole loop disk (SUBSYSTEM=block, DEVTYPE=disk, DEVPATH
 * ending in /loopN), 0 for any other device, -EBADMSG when ACTION, DEVPATH or SUBSYSTEM is
 * missing. ret->action points to f->action. */
int uevent_from_fields(const UeventFields *f, UeventInfo *ret);

/* Parses one message of the kernel's group in buf[0..len); as uevent_from_fields(), and
 * -EBADMSG for a message that is not well formed. */
int uevent_parse_kernel(const char *buf, size_t len, UeventInfo *ret);

/* The same for a device sd_device_monitor received; ret->action is a static string, and
 * ret->plain is false: whether an event is plain is the kernel's copy's to say. */
int uevent_from_device(sd_device *device, UeventInfo *ret);

/* Whether name is "loop<N>p<K>", a partition of a loop disk: 1 with the disk's name in
 * ret_disk (size bytes) and K in *ret_number, else 0. */
int uevent_loop_partition_name(const char *name, char *ret_disk, size_t size, unsigned *ret_number);
