/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Block device helpers for the canonicaliser: what sysfs says about a device number
 * (<root>/sys/dev/block/M:m) and what device-mapper says about a dm device's table. Every
 * function that touches the file system takes a root directory (NULL or "/" = the real one).
 * The table parsers are pure so that tests can feed them text on a kernel without dm.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Kernel name ("sda1", "loop3", "dm-0") of devnum: the basename of the sysfs symlink.
 * -ENOENT when the device does not exist (any more). ret_name is at least `size` bytes. */
int blockdev_get_name(const char *root, dev_t devnum, char *ret_name, size_t size);

typedef struct PartitionInfo {
        dev_t parent;   /* the whole disk */
        uint64_t start; /* bytes on the parent */
        uint64_t size;  /* bytes */
} PartitionInfo;

/* Returns 1 and fills *ret if devnum is a partition, 0 if it is a whole device, -ENOENT if the
 * device does not exist. */
int blockdev_get_partition(const char *root, dev_t devnum, PartitionInfo *ret);

/* Returns 1 if devnum is a device-mapper device (sysfs dm/ group), 0 if not. */
int blockdev_is_dm(const char *root, dev_t devnum);

typedef struct DmTarget {
        uint64_t start;  /* sectors of the dm device */
        uint64_t length; /* sectors */
        char type[16];   /* "linear", "striped", ... */
        char *params;    /* owned */
} DmTarget;

typedef struct DmTable {
        DmTarget *targets; /* sorted as the kernel reports them (by start) */
        size_t n_targets;
} DmTable;

void dm_table_done(DmTable *t);

/* Reads the live table of devnum through <root>/dev/mapper/control (DM_TABLE_STATUS with
 * DM_STATUS_TABLE_FLAG). -ENOENT when there is no control node (no device-mapper), -ENXIO when
 * the device has no live table. */
int dm_read_table(const char *root, dev_t devnum, DmTable *ret);

/* Parses the data area of a DM_TABLE_STATUS reply: `count` struct dm_target_spec records
 * starting at `data` (the ioctl's data_start), `size` bytes in all. -EBADMSG on a malformed
 * buffer. */
int dm_table_parse(const void *data, size_t size, unsigned count, DmTable *ret);

/* Parses a "linear" target's parameters "<major>:<minor> <start_sector>". -EINVAL when they
 * are not in that form (e.g. a path, which the kernel never prints). */
int dm_linear_parse_params(const char *params, dev_t *ret_device, uint64_t *ret_start_sector);

/* If the byte range [offset, offset + size) of the dm device lies inside ONE linear target,
 * returns 1 with the target's device and the range's start on it (bytes); 0 if it does not
 * (spans targets, a non-linear target, a hole, unparseable params): the dm device is then an
 * opaque base. -EOVERFLOW on arithmetic overflow. */
int dm_table_map(const DmTable *t, uint64_t offset, uint64_t size, dev_t *ret_device,
                 uint64_t *ret_offset);
