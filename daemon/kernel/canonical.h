/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The canonicaliser: maps what a loop device (or a prospective one) exposes to a byte range
 * on a base object, following every layer, and keeps the layers for display. A base is a
 * regular file (st_dev, st_ino) or a block device that is neither a loop device, nor a
 * partition, nor a device-mapper linear mapping we can see through. No D-Bus in here; block
 * devices are read through sysfs (and the device-mapper control node) under a root directory
 * that tests can point at a fake tree.
 *
 * Layers followed:
 *   loop       its backing, at its offset, clipped by its size (through the caller's lookup,
 *              else the kernel: sysfs + LOOP_GET_STATUS64 with lo_rdevice for block backings)
 *   partition  <root>/sys/dev/block/M:m/{partition,start,size}, continuing with the parent
 *   dm linear  a dm device whose table maps the whole requested range into ONE linear target
 *              (other tables, or ranges spanning targets, make the dm device an opaque base)
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define LOOP_MAJOR_NUMBER 7u
#define CHAIN_MAX_DEPTH   16

typedef enum BaseKind {
        BASE_FILE,
        BASE_BLOCK,
} BaseKind;

typedef struct Identity {
        BaseKind kind;
        dev_t base_device;   /* file: st_dev of the inode; block: the base device */
        uint64_t base_inode; /* file: st_ino; block: 0 */
        uint64_t offset;     /* first byte on the base */
        uint64_t size;       /* bytes, > 0 */
        unsigned depth;      /* layers above the base */
} Identity;

/* What one layer is backed by: a file (st_dev, st_ino) or a block device (st_rdev). */
typedef struct Backing {
        bool is_block;
        dev_t device;   /* file: st_dev; block: st_rdev */
        uint64_t inode; /* file: st_ino */
} Backing;

typedef enum LayerKind {
        LAYER_REQUEST, /* a prospective binding (Attach before binding, Resolve) */
        LAYER_LOOP,
        LAYER_PARTITION,
        LAYER_DM_LINEAR,
        LAYER_BASE_BLOCK,
        LAYER_BASE_FILE,
} LayerKind;

typedef struct Layer {
        LayerKind kind;
        dev_t devnum;    /* the block device this layer is; 0 for REQUEST and BASE_FILE */
        char name[32];   /* kernel name: "loop3", "sda1", "dm-0"; "" when none */
        char *path;      /* owned, may be NULL: backing file path (display only) */
        uint64_t offset; /* where the covered bytes start on the layer below (bases: on
                          * themselves, equal to the identity's offset) */
        uint64_t size;   /* bytes of this layer covered by the range */
} Layer;

typedef struct Chain {
        Layer *layers; /* top first; the last one is the base */
        size_t n_layers;
        Identity identity;
} Chain;

/* What the caller (the manager's registry) knows about a bound loop device. */
typedef struct LoopLayerInfo {
        Backing backing;
        uint64_t offset;          /* on the backing */
        uint64_t size;            /* bytes the loop device exposes */
        const char *backing_file; /* display, may be NULL; copied */
} LoopLayerInfo;

/* Returns 1 and fills *ret if devnum is a bound loop device the caller knows, 0 if unknown
 * (the canonicaliser then asks the kernel), negative errno on error. */
typedef int (*LoopInfoLookup)(dev_t devnum, void *userdata, LoopLayerInfo *ret);

/*
 * Resolves the range [offset, offset + size) of `backing`. `top` is the template of the first
 * layer (kind, devnum, name and path of the device being described, or LAYER_REQUEST); its
 * offset and size are filled in. Then the walk follows the backing down to the base.
 *   -ELOOP: a device appears twice in the chain (cycle) or it is deeper than CHAIN_MAX_DEPTH
 *   -EOVERFLOW: offset arithmetic overflows
 *   -ERANGE: the range does not fit inside a lower layer
 *   -EINVAL: size 0 or NULL arguments; -ENOENT: a device vanished during the walk
 */
int chain_resolve(const char *root, const Layer *top, const Backing *backing, uint64_t offset,
                  uint64_t size, LoopInfoLookup lookup, void *userdata, Chain *ret);
void chain_done(Chain *c);

/* One human-readable line per layer, top first (the Chain property, Resolve's "chain"). */
int chain_format(const Chain *c, char ***ret_lines);

/* Whether the chain passes through block device devnum (any layer, the top included). */
bool chain_contains(const Chain *c, dev_t devnum);

bool identity_same_base(const Identity *a, const Identity *b);
bool identity_equal_range(const Identity *a, const Identity *b); /* same base and range */
bool identity_intersect(const Identity *a, const Identity *b);   /* same base, ranges meet */
