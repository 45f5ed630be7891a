/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <sys/sysmacros.h>

#include "canonical.h"

int identity_compute(const Backing *backing, uint64_t offset, uint64_t size,
                     IdentityLookup lookup, void *userdata, Identity *ret) {
        Identity id;
        uint64_t end;

        if (!backing || !ret || size == 0)
                return -EINVAL;
        if (__builtin_add_overflow(offset, size, &end))
                return -EOVERFLOW;

        if (backing->is_block && major(backing->device) == LOOP_MAJOR_NUMBER && lookup) {
                const Identity *lower = lookup(backing->device, userdata);

                if (lower) {
                        uint64_t base_offset;

                        /* The kernel clips a loop device to its backing, so a range outside
                         * the lower device means our view of it is stale. */
                        if (end > lower->size)
                                return -ERANGE;
                        if (lower->depth >= IDENTITY_MAX_DEPTH)
                                return -ELOOP;
                        if (__builtin_add_overflow(lower->offset, offset, &base_offset))
                                return -EOVERFLOW;

                        id = *lower;
                        id.offset = base_offset;
                        id.size = size;
                        id.depth = lower->depth + 1;
                        *ret = id;
                        return 0;
                }
        }

        id = (Identity) {
                .kind = backing->is_block ? BASE_BLOCK : BASE_FILE,
                .base_device = backing->device,
                .base_inode = backing->is_block ? 0 : backing->inode,
                .offset = offset,
                .size = size,
                .depth = 1,
        };
        *ret = id;
        return 0;
}

bool identity_same_base(const Identity *a, const Identity *b) {
        return a->kind == b->kind && a->base_device == b->base_device &&
               a->base_inode == b->base_inode;
}

bool identity_equal_range(const Identity *a, const Identity *b) {
        return identity_same_base(a, b) && a->offset == b->offset && a->size == b->size;
}

bool identity_intersect(const Identity *a, const Identity *b) {
        /* Half-open ranges [offset, offset + size); sizes are > 0 and sums were checked. */
        return identity_same_base(a, b) && a->offset < b->offset + b->size &&
               b->offset < a->offset + a->size;
}
