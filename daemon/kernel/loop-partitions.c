/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The partitions of a loop device (docs/KERNEL.md, "Partitions"): as sysfs lists them, and, on
 * a kernel without the parser of the device's partition table, added with BLKPG from
 * libblkid's partition list, as util-linux's `partx --add` does.
 */

#include <blkid.h>
#include <dirent.h>
#include <errno.h>
#include <linux/blkpg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "loop-kernel-internal.h"
#include "loop-partitions.h"
#include "util.h"

static int cmp_partition(const void *a, const void *b) {
        const LoopPartition *x = a, *y = b;

        return x->number < y->number ? -1 : x->number > y->number;
}

/* One entry of /sys/block/<name>/: "<name>p<N>" with a partition attribute. 1 and *ret filled,
 * 0 when the entry is no partition (or went away meanwhile). */
static int read_partition(const char *root, const char *name, const char *entry,
                          LoopPartition *ret) {
        _cleanup_free_ char *attr = NULL, *dev = NULL;
        size_t namelen = strlen(name);
        uint64_t pno, start, size;
        dev_t devnum;

        if (strncmp(entry, name, namelen) != 0 || entry[namelen] != 'p' ||
            strlen(entry) >= sizeof(ret->name))
                return 0;
        if (asprintf(&attr, "%s/partition", entry) < 0)
                return -ENOMEM;
        if (sysfs_read_u64(root, name, attr, &pno) < 0 || pno == 0 || pno > INT32_MAX)
                return 0;
        free(attr);
        if (asprintf(&attr, "%s/start", entry) < 0)
                return -ENOMEM;
        if (sysfs_read_u64(root, name, attr, &start) < 0)
                return 0;
        free(attr);
        if (asprintf(&attr, "%s/size", entry) < 0)
                return -ENOMEM;
        if (sysfs_read_u64(root, name, attr, &size) < 0)
                return 0;
        free(attr);
        if (asprintf(&attr, "%s/dev", entry) < 0)
                return -ENOMEM;
        if (sysfs_read(root, name, attr, &dev) < 0 || parse_devnum(dev, &devnum) < 0)
                return 0;
        /* start and size are in 512-byte sectors whatever the logical block size. */
        if (start > UINT64_MAX / 512 || size > UINT64_MAX / 512)
                return 0;

        *ret = (LoopPartition){
                .number = (unsigned) pno,
                .devnum = devnum,
                .start = start * 512,
                .size = size * 512,
        };
        (void) snprintf(ret->name, sizeof(ret->name), "%s", entry);
        return 1;
}

int loop_read_partitions(const char *root, const char *name, LoopPartition **ret, size_t *ret_n) {
        _cleanup_free_ char *rel = NULL, *dirpath = NULL;
        _cleanup_free_ LoopPartition *parts = NULL;
        _cleanup_closedir_ DIR *d = NULL;
        size_t n = 0, allocated = 0;
        int r;

        if (asprintf(&rel, "/sys/block/%s", name) < 0)
                return -ENOMEM;
        dirpath = path_join_root(root, rel);
        if (!dirpath)
                return -ENOMEM;
        d = opendir(dirpath);
        if (!d)
                return -errno;

        for (struct dirent *de; (de = readdir(d));) {
                LoopPartition p;

                r = read_partition(root, name, de->d_name, &p);
                if (r < 0)
                        return r;
                if (r == 0)
                        continue;
                if (n == allocated) {
                        size_t m = allocated ? allocated * 2 : 4;
                        LoopPartition *np = realloc(parts, m * sizeof(*np));

                        if (!np)
                                return -ENOMEM;
                        parts = np;
                        allocated = m;
                }
                parts[n++] = p;
        }
        if (n > 1)
                qsort(parts, n, sizeof(*parts), cmp_partition);
        *ret = TAKE_PTR(parts);
        *ret_n = n;
        return 0;
}

static int blkpg(int fd, int op, unsigned pno, uint64_t start, uint64_t length) {
        struct blkpg_partition p = {
                .start = (long long) start,
                .length = (long long) length,
                .pno = (int) pno,
        };
        struct blkpg_ioctl_arg a = {
                .op = op,
                .datalen = sizeof(p),
                .data = &p,
        };

        return ioctl(fd, BLKPG, &a) < 0 ? -errno : 0;
}

int loop_delete_partitions(int fd, const LoopPartition *parts, size_t n) {
        int r = 0, removed = 0;

        for (size_t i = 0; i < n; i++) {
                int k = blkpg(fd, BLKPG_DEL_PARTITION, parts[i].number, 0, 0);

                /* ENXIO: somebody else deleted it meanwhile. */
                if (k < 0 && k != -ENXIO && r == 0)
                        r = k;
                if (k >= 0)
                        removed++;
        }
        return r < 0 ? r : removed;
}

int loop_add_table_partitions(int fd, LoopTableAdd *ret) {
        _cleanup_(blkid_free_probep) blkid_probe pr = NULL;
        LoopTableAdd out = {};
        blkid_partlist ls;
        blkid_parttable tab;
        int n, r;

        r = blkid_probe_from_fd(fd, &pr);
        if (r < 0)
                return r;
        (void) blkid_probe_enable_superblocks(pr, 0);
        (void) blkid_probe_enable_partitions(pr, 1);

        errno = 0;
        ls = blkid_probe_get_partitions(pr);
        if (!ls) {
                /* No partition table at all is no error: nothing to add. */
                *ret = out;
                return errno > 0 && errno != EINVAL ? -errno : 0;
        }
        tab = blkid_partlist_get_table(ls);
        if (tab && blkid_parttable_get_type(tab))
                (void) snprintf(out.pttype, sizeof(out.pttype), "%s",
                                blkid_parttable_get_type(tab));

        n = blkid_partlist_numof_partitions(ls);
        for (int i = 0; i < n; i++) {
                blkid_partition par = blkid_partlist_get_partition(ls, i);
                long long start, size;
                int pno;

                if (!par)
                        continue;
                /* An extended (DOS) partition only holds the logical ones: nothing to mount,
                 * and its "contents" would overlap theirs. */
                if (blkid_partition_is_extended(par))
                        continue;
                pno = blkid_partition_get_partno(par);
                start = (long long) blkid_partition_get_start(par);
                size = (long long) blkid_partition_get_size(par);
                if (pno <= 0 || start < 0 || size <= 0 || start > INT64_MAX / 512 ||
                    size > INT64_MAX / 512) {
                        out.failed++;
                        continue;
                }
                /* libblkid counts in 512-byte sectors, BLKPG in bytes. */
                r = blkpg(fd, BLKPG_ADD_PARTITION, (unsigned) pno, (uint64_t) start * 512,
                          (uint64_t) size * 512);
                if (r < 0) {
                        if (out.error == 0)
                                out.error = r;
                        out.failed++;
                        continue;
                }
                out.added++;
        }
        *ret = out;
        return 0;
}
