/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/dm-ioctl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "blockdev.h"
#include "util.h"

/* <root>/sys/dev/block/M:m[/attr] */
static char *sysfs_dev_path(const char *root, dev_t devnum, const char *attr) {
        _cleanup_free_ char *rel = NULL;

        if (asprintf(&rel, "/sys/dev/block/%u:%u%s%s", major(devnum), minor(devnum),
                     attr ? "/" : "", attr ?: "") < 0)
                return NULL;
        return path_join_root(root, rel);
}

static int sysfs_dev_read_u64(const char *root, dev_t devnum, const char *attr, uint64_t *ret) {
        _cleanup_free_ char *p = NULL, *s = NULL;
        int r;

        p = sysfs_dev_path(root, devnum, attr);
        if (!p)
                return -ENOMEM;
        r = read_one_line_file(p, &s);
        if (r < 0)
                return r;
        r = safe_atou64(s, ret);
        if (r < 0)
                return r == -ERANGE ? r : -EBADMSG;
        return 0;
}

static int sysfs_dev_exists(const char *root, dev_t devnum, const char *attr) {
        _cleanup_free_ char *p = NULL;

        p = sysfs_dev_path(root, devnum, attr);
        if (!p)
                return -ENOMEM;
        if (access(p, F_OK) < 0)
                return errno == ENOENT ? 0 : -errno;
        return 1;
}

int blockdev_get_name(const char *root, dev_t devnum, char *ret_name, size_t size) {
        _cleanup_free_ char *p = NULL;
        char target[PATH_MAX];
        const char *base;
        ssize_t n;

        assert(ret_name);

        p = sysfs_dev_path(root, devnum, NULL);
        if (!p)
                return -ENOMEM;
        n = readlink(p, target, sizeof(target) - 1);
        if (n < 0)
                return -errno;
        target[n] = '\0';

        base = strrchr(target, '/');
        base = base ? base + 1 : target;
        if (*base == '\0' || strlen(base) >= size)
                return -EBADMSG;

        strcpy(ret_name, base);
        return 0;
}

int blockdev_get_partition(const char *root, dev_t devnum, PartitionInfo *ret) {
        _cleanup_free_ char *p = NULL, *s = NULL;
        uint64_t start, size;
        dev_t parent;
        int r;

        assert(ret);

        r = sysfs_dev_exists(root, devnum, NULL);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENOENT;

        r = sysfs_dev_exists(root, devnum, "partition");
        if (r <= 0)
                return r;

        /* Both in 512-byte sectors whatever the logical block size (block/partitions/core.c). */
        r = sysfs_dev_read_u64(root, devnum, "start", &start);
        if (r < 0)
                return r;
        r = sysfs_dev_read_u64(root, devnum, "size", &size);
        if (r < 0)
                return r;
        if (start > UINT64_MAX / 512 || size > UINT64_MAX / 512)
                return -EOVERFLOW;

        /* The parent disk is the sysfs parent directory; "link/.." resolves through the link. */
        p = sysfs_dev_path(root, devnum, "../dev");
        if (!p)
                return -ENOMEM;
        r = read_one_line_file(p, &s);
        if (r < 0)
                return r;
        r = parse_devnum(s, &parent);
        if (r < 0)
                return -EBADMSG;
        if (parent == devnum)
                return -EBADMSG;

        *ret = (PartitionInfo){
                .parent = parent,
                .start = start * 512,
                .size = size * 512,
        };
        return 1;
}

int blockdev_is_dm(const char *root, dev_t devnum) {
        return sysfs_dev_exists(root, devnum, "dm");
}

void dm_table_done(DmTable *t) {
        if (!t)
                return;
        for (size_t i = 0; i < t->n_targets; i++)
                free(t->targets[i].params);
        free(t->targets);
        *t = (DmTable){};
}

static void dm_table_donep(DmTable *t) {
        dm_table_done(t);
}

int dm_table_parse(const void *data, size_t size, unsigned count, DmTable *ret) {
        _cleanup_(dm_table_donep) DmTable t = {};
        const uint8_t *buf = data;
        size_t pos = 0;

        assert(ret);

        if (count > 0 && !data)
                return -EBADMSG;
        /* Every target needs at least a spec and a NUL; this bounds the allocation. */
        if (count > size / (sizeof(struct dm_target_spec) + 1))
                return -EBADMSG;

        if (count > 0) {
                t.targets = calloc(count, sizeof(DmTarget));
                if (!t.targets)
                        return -ENOMEM;
        }

        for (unsigned i = 0; i < count; i++) {
                struct dm_target_spec spec;
                const char *params, *nul;
                size_t type_len;

                if (pos > size || size - pos < sizeof(spec))
                        return -EBADMSG;
                memcpy(&spec, buf + pos, sizeof(spec));

                params = (const char *) buf + pos + sizeof(spec);
                nul = memchr(params, '\0', size - pos - sizeof(spec));
                if (!nul)
                        return -EBADMSG;

                type_len = strnlen(spec.target_type, sizeof(spec.target_type));
                if (type_len == 0 || type_len >= sizeof(t.targets[i].type))
                        return -EBADMSG;
                if (spec.length == 0 || spec.sector_start > UINT64_MAX / 512 - spec.length)
                        return -EBADMSG;

                memcpy(t.targets[i].type, spec.target_type, type_len);
                t.targets[i].type[type_len] = '\0';
                t.targets[i].start = spec.sector_start;
                t.targets[i].length = spec.length;
                t.targets[i].params = strdup(params);
                if (!t.targets[i].params)
                        return -ENOMEM;
                t.n_targets++;

                /* "next" is the offset of the following spec from the start of the data area
                 * (drivers/md/dm-ioctl.c:retrieve_status()); it must move forward. */
                if (i + 1 < count) {
                        if (spec.next <= pos)
                                return -EBADMSG;
                        pos = spec.next;
                }
        }

        *ret = t;
        t = (DmTable){};
        return 0;
}

/* The encoding dm_ioctl.dev is decoded with: huge_decode_dev() (12-bit major, 20-bit minor). */
static uint64_t encode_kernel_dev(dev_t d) {
        unsigned ma = major(d), mi = minor(d);

        return (mi & 0xffU) | ((uint64_t) ma << 8) | ((uint64_t) (mi & ~0xffU) << 12);
}

int dm_read_table(const char *root, dev_t devnum, DmTable *ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *p = NULL;
        size_t bufsize = 16 * 1024;

        assert(ret);

        p = path_join_root(root, "/dev/mapper/control");
        if (!p)
                return -ENOMEM;
        fd = open(p, O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;

        for (unsigned attempt = 0; attempt < 8; attempt++) {
                _cleanup_free_ struct dm_ioctl *dmi = NULL;

                dmi = calloc(1, bufsize);
                if (!dmi)
                        return -ENOMEM;
                dmi->version[0] = DM_VERSION_MAJOR;
                dmi->version[1] = 0;
                dmi->version[2] = 0;
                dmi->data_size = (uint32_t) bufsize;
                dmi->data_start = sizeof(struct dm_ioctl);
                dmi->flags = DM_STATUS_TABLE_FLAG;
                dmi->dev = encode_kernel_dev(devnum);

                if (ioctl(fd, DM_TABLE_STATUS, dmi) < 0)
                        return errno == ENXIO ? -ENOENT : -errno;

                if (dmi->flags & DM_BUFFER_FULL_FLAG) {
                        bufsize *= 2;
                        continue;
                }
                if (!(dmi->flags & DM_ACTIVE_PRESENT_FLAG))
                        return -ENXIO;
                if (dmi->data_start < sizeof(struct dm_ioctl) || dmi->data_size > bufsize ||
                    dmi->data_size < dmi->data_start)
                        return -EBADMSG;

                return dm_table_parse((const uint8_t *) dmi + dmi->data_start,
                                      dmi->data_size - dmi->data_start, dmi->target_count, ret);
        }

        return -E2BIG;
}

int dm_linear_parse_params(const char *params, dev_t *ret_device, uint64_t *ret_start_sector) {
        _cleanup_free_ char *dev = NULL;
        const char *space;
        uint64_t start;
        dev_t d;
        int r;

        assert(params);

        space = strchr(params, ' ');
        if (!space || space == params)
                return -EINVAL;
        dev = strndup(params, space - params);
        if (!dev)
                return -ENOMEM;

        r = parse_devnum(dev, &d);
        if (r < 0)
                return r;
        /* safe_atou64() refuses junk, so trailing text (more parameters) is refused too. */
        r = safe_atou64(space + 1, &start);
        if (r < 0)
                return -EINVAL;
        if (start > UINT64_MAX / 512)
                return -EOVERFLOW;

        if (ret_device)
                *ret_device = d;
        if (ret_start_sector)
                *ret_start_sector = start;
        return 0;
}

int dm_table_map(const DmTable *t, uint64_t offset, uint64_t size, dev_t *ret_device,
                 uint64_t *ret_offset) {
        uint64_t end;

        assert(t);

        if (size == 0)
                return -EINVAL;
        if (__builtin_add_overflow(offset, size, &end))
                return -EOVERFLOW;

        for (size_t i = 0; i < t->n_targets; i++) {
                const DmTarget *tg = &t->targets[i];
                uint64_t tstart, tend, start_sector, mapped;
                dev_t d;

                /* dm_table_parse() checked (start + length) * 512 does not overflow, but a
                 * caller may have built the table by hand. */
                if (tg->start > UINT64_MAX / 512 || tg->length > UINT64_MAX / 512 ||
                    __builtin_add_overflow(tg->start * 512, tg->length * 512, &tend))
                        return -EOVERFLOW;
                tstart = tg->start * 512;

                if (offset >= tend || end <= tstart)
                        continue; /* disjoint */

                /* The range meets this target: it must lie inside it, and it must be linear. */
                if (offset < tstart || end > tend)
                        return 0;
                if (!streq(tg->type, "linear") || !tg->params)
                        return 0;
                if (dm_linear_parse_params(tg->params, &d, &start_sector) < 0)
                        return 0;
                if (__builtin_add_overflow(start_sector * 512, offset - tstart, &mapped))
                        return -EOVERFLOW;

                if (ret_device)
                        *ret_device = d;
                if (ret_offset)
                        *ret_offset = mapped;
                return 1;
        }

        /* Not covered by any target: past the end, or in a hole of the table. */
        return 0;
}
