/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The partitions of a loop device (docs/KERNEL.md, "Partitions"). The kernel makes them with
 * its own partition scan (LO_FLAGS_PARTSCAN) when it has a parser for the table; where it has
 * none (this project's host kernel lacks the MSDOS and EFI parsers), they can be added with
 * BLKPG from libblkid's partition list, as util-linux's `partx --add` does.
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct LoopPartition {
        unsigned number; /* the N of loopXpN */
        dev_t devnum;
        uint64_t start; /* bytes from the start of the device */
        uint64_t size;  /* bytes */
        char name[32];  /* "loop0p1" */
} LoopPartition;

/* The partitions <root>/sys/block/<name>/ lists, by number. *ret is NULL with *ret_n 0 when
 * there are none. -ENOENT when the device does not exist. */
int loop_read_partitions(const char *root, const char *name, LoopPartition **ret, size_t *ret_n);

/* BLKPG_DEL_PARTITION of each, through fd of the disk. Returns how many went, or the first
 * error (after trying all of them); a partition already gone counts as no error. */
int loop_delete_partitions(int fd, const LoopPartition *parts, size_t n);

/* What loop_add_table_partitions() did. */
typedef struct LoopTableAdd {
        char pttype[16]; /* libblkid's name of the table ("gpt", "dos"), "" when none */
        unsigned added;  /* partitions added */
        unsigned failed; /* entries that could not be added */
        int error;       /* the first BLKPG error, 0 if none */
} LoopTableAdd;

/* Reads the partition table on the device open at fd with libblkid and adds each partition
 * of it with BLKPG_ADD_PARTITION (extended DOS partitions excepted: they only hold the logical
 * ones). For a device whose partition scan made no partitions. A device without a partition
 * table is no error (nothing added). Returns 0, or a negative errno when the probe failed. */
int loop_add_table_partitions(int fd, LoopTableAdd *ret);
