/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Canonical identity of a loop binding: the byte range it exposes on a base object (a
 * regular file, or a block device that is not itself a loop device). Pure: the caller
 * supplies a lookup for loop devices it knows, so this needs neither the kernel nor D-Bus.
 *
 * This version follows loop over loop (through the lookup) and treats every other block
 * device, partitions included, as an opaque base.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define LOOP_MAJOR_NUMBER 7u

typedef enum BaseKind {
        BASE_FILE,
        BASE_BLOCK,
} BaseKind;

typedef struct Identity {
        BaseKind kind;
        dev_t base_device;      /* file: st_dev of the inode; block: the base device */
        uint64_t base_inode;    /* file: st_ino; block: 0 */
        uint64_t offset;        /* first byte on the base */
        uint64_t size;          /* bytes, > 0 */
        unsigned depth;         /* loop layers above the base, >= 1 for a loop device */
} Identity;

/* What one loop layer is backed by: a file (dev, ino) or a block device (rdev). */
typedef struct Backing {
        bool is_block;
        dev_t device;           /* file: st_dev; block: st_rdev */
        uint64_t inode;         /* file: st_ino */
} Backing;

/* Returns the identity of loop device `devnum` if it is a known bound loop device. */
typedef const Identity *(*IdentityLookup)(dev_t devnum, void *userdata);

#define IDENTITY_MAX_DEPTH 16

/*
 * The identity of a layer exposing [offset, offset + size) of `backing`. A backing that is a
 * known loop device is followed (its identity shifted by offset and clipped to it).
 *   -ELOOP: deeper than IDENTITY_MAX_DEPTH; -EOVERFLOW: offset + size overflows;
 *   -ERANGE: the range lies outside the lower loop device.
 */
int identity_compute(const Backing *backing, uint64_t offset, uint64_t size,
                     IdentityLookup lookup, void *userdata, Identity *ret);

bool identity_same_base(const Identity *a, const Identity *b);
bool identity_equal_range(const Identity *a, const Identity *b);   /* same base and range */
bool identity_intersect(const Identity *a, const Identity *b);     /* same base, ranges meet */
