/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Is a block device in use? Used by the alias rule: a new loop device must not expose bytes of
 * a block device that is mounted or held (SPEC §4 rule 2), in any mount namespace. Three
 * sources, because none is complete alone:
 *   - the mount table of our namespace (names the mount point, tells read-only mounts),
 *   - sysfs holders/ (device-mapper, md, ... stacked on it),
 *   - an O_EXCL open probe: the kernel refuses it with EBUSY while the device is mounted in
 *     ANY namespace or claimed by a holder; the probe's own open is closed at once.
 */

#include <libmount.h>
#include <stdbool.h>
#include <sys/types.h>

typedef struct BlockUse {
        bool in_use;
        bool read_only;         /* every use we can see is a read-only mount (or the device is
                                 * read-only itself), so a read-only loop over it is harmless */
        char *description;      /* "mounted on /mnt/a", "held by dm-0", ...; owned */
} BlockUse;

void block_use_done(BlockUse *u);

/* mounts: a parsed libmount table of our namespace (may be NULL: mounts are then only seen
 * through the probe). name: the kernel name ("loop3", "sda1") used for /dev and sysfs. */
int block_use_probe(const char *root, dev_t devnum, const char *name, struct libmnt_table *mounts,
                    BlockUse *ret);

/* Partitions of `name` whose byte range meets [offset, offset + size): calls cb with each
 * partition's devnum and name; stops when cb returns non-zero and returns that. */
int block_foreach_partition_in_range(const char *root, const char *name, uint64_t offset,
                                     uint64_t size,
                                     int (*cb)(dev_t devnum, const char *name, void *userdata),
                                     void *userdata);
