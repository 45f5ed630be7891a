/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The partitions of a device (Device.partitions, the Partitions property; docs/API.md,
 * "Partitioned images"). Read from sysfs, for a device with a partition scan, whenever the
 * device is bound or re-read; udev's events of a partition bring what its blkid builtin found.
 */

#include <stdbool.h>
#include <systemd/sd-device.h>

#include "device.h"

typedef struct Manager Manager;

/* Reads d's partitions from sysfs again. An entry that stands for the same partition as
 * before (number and device number) keeps its ids and mount. With emit, PropertiesChanged
 * of Partitions when the list changed. */
int manager_read_partitions(Manager *m, Device *d, bool emit);

/* Stores what a probe found on partition p of d (NULL or "": nothing), emitting Partitions
 * when it changed. */
void manager_set_partition_ids(Manager *m, Device *d, DevicePartition *p, const char *type,
                               const char *label, const char *uuid);

/* A managed device with a partition scan that has no hold fd (Device.hold_fd; a restarted
 * daemon's devices) gets one. */
void manager_hold_partitions(Manager *m, Device *d);

/* udev's event of partition `number` of d: the list read again, the partition's ids from the
 * event's properties (no I/O). */
void manager_partition_udev_event(Manager *m, Device *d, unsigned number, sd_device *device);
