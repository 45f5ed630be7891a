/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Is a block device in use? Used by the alias rule (a new loop device must not expose bytes of
 * a block device that is mounted or held, SPEC §4 rule 2) and by the Openers property. The
 * sources, none of which opens the device (an exclusive open probe would itself make a
 * concurrent mount fail with EBUSY):
 *   - the mount table of our namespace (names the mount point, tells read-only mounts),
 *   - the mount tables of every other mount namespace on the host, one /proc/PID/mountinfo
 *     per distinct namespace (ForeignMounts),
 *   - sysfs holders/ (device-mapper, md, ... stacked on it).
 */

#include <libmount.h>
#include <stdbool.h>
#include <sys/types.h>

typedef struct ForeignMount {
        dev_t devnum;
        bool read_only;
        char *target; /* the mount point as seen in that namespace */
        pid_t pid;    /* a process in that namespace */
} ForeignMount;

typedef struct ForeignMounts {
        ForeignMount *mounts;
        size_t n;
} ForeignMounts;

/* Scans <root>/proc/PID/ns/mnt for namespaces other than our own and reads one mountinfo of
 * each. Processes that vanish or cannot be read are skipped. */
int foreign_mounts_scan(const char *root, ForeignMounts *ret);
void foreign_mounts_done(ForeignMounts *f);

typedef struct BlockUse {
        bool in_use;
        bool read_only;    /* every use we can see is a read-only mount (or the device is
                            * read-only itself), so a read-only loop over it is harmless */
        char *description; /* "mounted on /mnt/a", "held by dm-0", ...; owned */
} BlockUse;

void block_use_done(BlockUse *u);

/* mounts: a parsed libmount table of our namespace; foreign: the other namespaces' mounts
 * (either may be NULL). name: the kernel name ("loop3", "sda1") used for sysfs. */
int block_use_probe(const char *root, dev_t devnum, const char *name, struct libmnt_table *mounts,
                    const ForeignMounts *foreign, BlockUse *ret);

/* Partitions of `name` whose byte range meets [offset, offset + size): calls cb with each
 * partition's devnum and name; stops when cb returns non-zero and returns that. */
int block_foreach_partition_in_range(const char *root, const char *name, uint64_t offset,
                                     uint64_t size,
                                     int (*cb)(dev_t devnum, const char *name, void *userdata),
                                     void *userdata);
