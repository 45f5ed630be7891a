/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Index of exposed ranges by base object, so that "who exposes bytes of this range of this
 * base?" is answered without scanning every device: a hash table keyed by (kind, device,
 * inode), each bucket an array of entries sorted by offset. Items are opaque pointers.
 */

#include "canonical.h"

typedef struct RangeIndex RangeIndex;

int range_index_new(RangeIndex **ret);
RangeIndex *range_index_free(RangeIndex *x);

/* The same (id, item) pair may be added once; -EEXIST otherwise. */
int range_index_add(RangeIndex *x, const Identity *id, void *item);
/* -ENOENT if (id, item) is not in the index. */
int range_index_remove(RangeIndex *x, const Identity *id, void *item);

/* Calls cb(item, userdata) for each item whose range intersects id's on the same base, in
 * offset order; stops early and returns cb's value when it returns non-zero, else 0.
 * The index must not be modified from cb. */
int range_index_foreach_intersecting(RangeIndex *x, const Identity *id,
                                     int (*cb)(void *item, void *userdata), void *userdata);

size_t range_index_size(RangeIndex *x);
