/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The two netlink uevent streams of loop disks, parsed in place (udev-watch.c reads them):
 *
 *   kernel (NETLINK_KOBJECT_UEVENT group 1): "ACTION@DEVPATH\0KEY=VALUE\0...", the kernel's
 *     ABI (Documentation/ABI/testing/sysfs-uevent), sent by the kernel (sender port 0);
 *   udev (group 2): what systemd-udevd broadcasts after its rules ran, a header (prefix
 *     "libudev", magic 0xfeedcafe in network order, the offset and length of the properties)
 *     and "KEY=VALUE\0..." properties, sent by a root process (SCM_CREDENTIALS uid 0).
 *
 * libudev parses every property of every message into hash tables and frees them again: most
 * of what the daemon spent on events, for the five fields it reads.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UEVENT_GROUP_KERNEL 1U
#define UEVENT_GROUP_UDEV   2U
#define UEVENT_UDEV_MAGIC   0xfeedcafeU

typedef struct UeventInfo {
        const char *action;     /* "add", "change", "remove", ...: points into the buffer */
        char sysname[16];       /* "loop0" */
        uint64_t diskseq;       /* 0: none */
        /* A "change" that reports nothing but itself: no RESIZE, DISK_MEDIA_CHANGE or
         * SYNTH_UUID (a binding's own announcement is one). */
        bool plain;
} UeventInfo;

/* Parses one message of the group (UEVENT_GROUP_*) in buf[0..len). Returns 1 and fills *ret
 * for a whole loop disk (SUBSYSTEM=block, DEVTYPE=disk, DEVPATH ending in /loopN), 0 for any
 * other device, -EBADMSG for a message that is not well formed. */
int uevent_parse(const char *buf, size_t len, unsigned group, UeventInfo *ret);
