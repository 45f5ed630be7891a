/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * loopmgr-losetup's listings: losetup's columns and messages, the device list as loopmgrd
 * reports it (ctl-devices.c), filtered and printed as losetup prints it (libsmartcols), and
 * what sysfs tells of devices the daemon does not list.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/loop.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>

#include "loopmgr-bus.h"
#include "losetup.h"

/* losetup's columns: headers, width hints, flags and JSON types as util-linux 2.38 has them. */
const ColumnInfo columns_info[_COL_MAX] = {
        [COL_NAME] = {"NAME", 0.25, 0, SCOLS_JSON_STRING, "loop device name"},
        [COL_AUTOCLR] = {"AUTOCLEAR", 1, SCOLS_FL_RIGHT, SCOLS_JSON_BOOLEAN, "autoclear flag set"},
        [COL_BACK_FILE] = {"BACK-FILE", 0.3, 0, SCOLS_JSON_STRING, "device backing file"},
        [COL_BACK_INO] = {"BACK-INO", 4, SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,
                          "backing file inode number"},
        [COL_BACK_MAJMIN] = {"BACK-MAJ:MIN", 6, 0, SCOLS_JSON_STRING,
                             "backing file major:minor device number"},
        [COL_MAJMIN] = {"MAJ:MIN", 3, 0, SCOLS_JSON_STRING, "loop device major:minor number"},
        [COL_OFFSET] = {"OFFSET", 5, SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,
                        "offset from the beginning"},
        [COL_PARTSCAN] = {"PARTSCAN", 1, SCOLS_FL_RIGHT, SCOLS_JSON_BOOLEAN, "partscan flag set"},
        [COL_RO] = {"RO", 1, SCOLS_FL_RIGHT, SCOLS_JSON_BOOLEAN, "read-only device"},
        [COL_SIZELIMIT] = {"SIZELIMIT", 5, SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,
                           "size limit of the file in bytes"},
        [COL_DIO] = {"DIO", 1, SCOLS_FL_RIGHT, SCOLS_JSON_BOOLEAN,
                     "access backing file with direct-io"},
        [COL_LOGSEC] = {"LOG-SEC", 4, SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,
                        "logical sector size in bytes"},
};

/* ---- messages: losetup's, which are err(3)/warn(3) shaped ---------------------------------- */

_printf_(2, 3) void warn_errno(int err, const char *fmt, ...) {
        va_list ap;

        fflush(stdout);
        fprintf(stderr, "%s: ", program_invocation_short_name);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        if (err > 0)
                fprintf(stderr, ": %s", strerror(err));
        fputc('\n', stderr);
}

/* The daemon's sentence, on a line of its own after losetup's message. */
void warn_daemon(const sd_bus_error *error) {
        if (sd_bus_error_is_set(error) && error->message && error->message[0])
                warnx_("%s", error->message);
}

int bus_errno(const sd_bus_error *error, int r) {
        int e = sd_bus_error_is_set(error) ? sd_bus_error_get_errno(error) : -r;
        return e > 0 ? e : EIO;
}

/* ---- columns ---- */

static int column_from_name(const char *name, size_t len) {
        for (size_t i = 0; i < _COL_MAX; i++)
                if (strncasecmp(name, columns_info[i].name, len) == 0 &&
                    columns_info[i].name[len] == '\0')
                        return (int) i;
        warnx_("unknown column: %.*s", (int) len, name);
        return -1;
}

/* -O: "+LIST" adds to the columns chosen so far (the defaults), "LIST" replaces them. */
int parse_columns(const char *list) {
        const char *p = list;

        if (*p == '+')
                p++;
        else
                arg_n_columns = 0;
        if (!*p)
                return -EINVAL;
        for (;;) {
                size_t len = strcspn(p, ",");
                int c;

                if (len == 0 || arg_n_columns >= ELEMENTSOF(arg_columns))
                        return -EINVAL;
                c = column_from_name(p, len);
                if (c < 0)
                        return -EINVAL;
                arg_columns[arg_n_columns++] = (Column) c;
                if (!p[len])
                        return 0;
                p += len + 1;
        }
}

/* ---- devices ------------------------------------------------------------------------------ */

/* losetup's is_loopdev(): a block device node of the loop major; errno ENODEV when not. */
bool is_loop_node(const char *path, dev_t *ret_devnum) {
        if (path_is_loop_node(path, ret_devnum))
                return true;
        errno = ENODEV;
        return false;
}

/* "loop5" is /dev/loop5 for losetup; anything with a slash is taken as it is. */
char *device_arg_name(const char *arg) {
        char *s;

        if (strchr(arg, '/'))
                return strdup(arg);
        return asprintf(&s, "/dev/%s", arg) < 0 ? NULL : s;
}

DeviceInfo *find_by_devnum(DeviceList *l, dev_t devnum) {
        for (size_t i = 0; i < l->n; i++)
                if (l->items[i].major == major(devnum) && l->items[i].minor == minor(devnum))
                        return l->items + i;
        return NULL;
}

int list_devices(sd_bus *bus, DeviceList *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = device_list_get(bus, &error, ret);
        if (r < 0 && sd_bus_error_is_set(&error)) {
                warn_errno(bus_errno(&error, r), "failed to list loop devices");
                warn_daemon(&error);
        } else if (r < 0)
                warn_errno(-r, "failed to list loop devices");
        return r;
}

/* The backing's dev_t and inode as LOOP_GET_STATUS64 reports them (lo_device, lo_inode),
 * which is what losetup prints. For files that is what the daemon sends; for block backings
 * the daemon sends the backing device itself, so ask the kernel like losetup does (reading,
 * not configuring). Both 0 when unknown (losetup's "[]"). */
static void backing_ids(const DeviceInfo *d, uint64_t *ret_dev, uint64_t *ret_ino) {
        _cleanup_close_ int fd = -EBADF;
        struct loop_info64 info = {};

        *ret_dev = *ret_ino = 0;
        if (d->backing_inode != 0) {
                *ret_dev = d->backing_device;
                *ret_ino = d->backing_inode;
                return;
        }
        fd = open(d->node, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd < 0 || ioctl(fd, LOOP_GET_STATUS64, &info) < 0)
                return;
        *ret_dev = info.lo_device;
        *ret_ino = info.lo_inode;
}

/* losetup -j: the same inode when both are known, else the same backing file name. */
static bool device_uses(const DeviceInfo *d, const struct stat *st, const char *file,
                        const char *canonical) {
        uint64_t dev, ino;

        backing_ids(d, &dev, &ino);
        if (st && (dev || ino))
                return ino == st->st_ino && (dev_t) dev == st->st_dev;
        return streq(strempty(d->backing_file), file) ||
               (canonical && streq(strempty(d->backing_file), canonical));
}

/* Keeps only the devices over file (and at arg_offset, with by_offset). */
void list_filter_file(DeviceList *l, const char *file, bool by_offset) {
        _cleanup_free_ char *canonical = realpath(file, NULL);
        struct stat st;
        bool has_st = stat(file, &st) == 0;
        size_t n = 0;

        for (size_t i = 0; i < l->n; i++) {
                DeviceInfo *d = l->items + i;

                if (device_uses(d, has_st ? &st : NULL, file, canonical) &&
                    (!by_offset || d->offset == arg_offset))
                        l->items[n++] = *d;
                else
                        device_info_done(d);
        }
        l->n = n;
}

void print_device_line(const DeviceInfo *d, const char *name) {
        uint64_t dev, ino;

        backing_ids(d, &dev, &ino);
        if (!dev && !ino)
                printf("%s: []: (%s)", name, strempty(d->backing_file));
        else
                printf("%s: [%04" PRIu64 "]:%" PRIu64 " (%s)", name, dev, ino,
                       strempty(d->backing_file));
        if (d->offset)
                printf(", offset %" PRIu64, d->offset);
        if (d->size_limit)
                printf(", sizelimit %" PRIu64, d->size_limit);
        printf("\n");
}

/* Hands s (NULL: out of memory) to cell i of ln. */
static int refer_cell(struct libscols_line *ln, size_t i, char *s) {
        int r;

        if (!s)
                return -ENOMEM;
        r = scols_line_refer_data(ln, i, s);
        if (r < 0)
                free(s);
        return r;
}

static const char *one_zero(int b) {
        return b ? "1" : "0";
}

static int table_add_device(struct libscols_table *tb, const DeviceInfo *d, const char *name) {
        struct libscols_line *ln;
        uint64_t dev, ino;
        int r = 0;

        ln = scols_table_new_line(tb, NULL);
        if (!ln)
                return -ENOMEM;
        backing_ids(d, &dev, &ino);

        for (size_t i = 0; i < arg_n_columns && r >= 0; i++)
                switch (arg_columns[i]) {
                case COL_NAME:
                        r = scols_line_set_data(ln, i, name);
                        break;
                case COL_AUTOCLR:
                        r = scols_line_set_data(ln, i, one_zero(d->autoclear));
                        break;
                case COL_BACK_FILE:
                        r = scols_line_set_data(ln, i, strempty(d->backing_file));
                        break;
                case COL_BACK_INO:
                        if (ino)
                                r = refer_cell(ln, i, strdup_printf("%" PRIu64, ino));
                        break;
                case COL_BACK_MAJMIN:
                        if (dev)
                                r = refer_cell(ln, i,
                                               strdup_printf("%8u:%-3u", major((dev_t) dev),
                                                             minor((dev_t) dev)));
                        break;
                case COL_MAJMIN:
                        r = refer_cell(ln, i, strdup_printf("%3u:%-3u", d->major, d->minor));
                        break;
                case COL_OFFSET:
                        if (d->object) /* unknown for an unbound device */
                                r = refer_cell(ln, i, strdup_printf("%" PRIu64, d->offset));
                        break;
                case COL_PARTSCAN:
                        r = scols_line_set_data(ln, i, one_zero(d->partscan));
                        break;
                case COL_RO:
                        r = scols_line_set_data(ln, i, one_zero(d->read_only));
                        break;
                case COL_SIZELIMIT:
                        if (d->object)
                                r = refer_cell(ln, i, strdup_printf("%" PRIu64, d->size_limit));
                        break;
                case COL_DIO:
                        r = scols_line_set_data(ln, i, one_zero(d->direct_io));
                        break;
                case COL_LOGSEC:
                        r = refer_cell(ln, i, strdup_printf("%" PRIu32, d->sector_size));
                        break;
                default:
                        r = -EINVAL;
                }
        return r;
}

static void scols_unref_tablep(struct libscols_table **tb) {
        scols_unref_table(*tb);
}

/* Prints the devices (one when only is set, else all in l) as losetup's --list table. */
int show_table(const DeviceList *l, const DeviceInfo *only, const char *only_name) {
        __attribute__((cleanup(scols_unref_tablep))) struct libscols_table *tb = NULL;
        int r;

        tb = scols_new_table();
        if (!tb)
                return -ENOMEM;
        scols_table_enable_raw(tb, arg_raw);
        scols_table_enable_json(tb, arg_json);
        scols_table_enable_noheadings(tb, arg_no_headings);
        if (arg_json)
                scols_table_set_name(tb, "loopdevices");

        for (size_t i = 0; i < arg_n_columns; i++) {
                const ColumnInfo *ci = columns_info + arg_columns[i];
                struct libscols_column *cl;

                cl = scols_table_new_column(tb, ci->name, ci->whint, ci->flags);
                if (!cl)
                        return -ENOMEM;
                if (arg_json)
                        scols_column_set_json_type(cl, ci->json_type);
        }

        for (size_t i = 0; only ? i < 1 : i < l->n; i++) {
                r = table_add_device(tb, only ?: l->items + i, only ? only_name : l->items[i].node);
                if (r < 0)
                        return r;
        }

        return scols_print_table(tb);
}

/* ---- devices from sysfs ---- */

/* LOOP_CTL_GET_FREE's answer, read from sysfs (no ioctl on /dev/loop-control): the lowest
 * unbound loop device, else the lowest number without a device, which the kernel creates when
 * it is bound. */
int find_free(unsigned *ret) {
        unsigned first_gap = UINT_MAX;

        for (unsigned n = 0; n < 1U << 20; n++) {
                char path[64];

                (void) snprintf(path, sizeof(path), "/sys/block/loop%u", n);
                if (access(path, F_OK) < 0) {
                        if (errno != ENOENT)
                                return -errno;
                        if (first_gap == UINT_MAX)
                                first_gap = n;
                        /* Devices are numbered densely unless somebody asked for loopN; stop
                         * after a long run of gaps. */
                        if (n - first_gap > 1024)
                                break;
                        continue;
                }
                (void) snprintf(path, sizeof(path), "/sys/block/loop%u/loop", n);
                if (access(path, F_OK) < 0 && errno == ENOENT) {
                        *ret = n;
                        return 0;
                }
        }
        if (first_gap == UINT_MAX)
                return -ENOSPC;
        *ret = first_gap;
        return 0;
}

const DeviceInfo *lookup_device(DeviceList *l, const char *arg) {
        dev_t devnum;

        if (!is_loop_node(arg, &devnum))
                return NULL;
        return find_by_devnum(l, devnum);
}

static int read_sysfs_u64(dev_t devnum, const char *attr, uint64_t *ret) {
        _cleanup_fclose_ FILE *f = NULL;
        char path[96];
        uint64_t v;

        (void) snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/%s", major(devnum), minor(devnum),
                        attr);
        f = fopen(path, "re");
        if (!f)
                return -errno;
        if (fscanf(f, "%" SCNu64, &v) != 1)
                return -EBADMSG;
        *ret = v;
        return 0;
}

/* What losetup --list shows of a device that is not bound: its numbers, read-only flag and
 * sector size from sysfs; the binding's own columns stay empty (object NULL). */
int unbound_device_info(const char *arg, const char *name, DeviceInfo *ret) {
        DeviceInfo u = {};
        uint64_t v = 0;
        dev_t devnum;
        int r;

        if (!is_loop_node(arg, &devnum))
                return -ENODEV;
        u.major = major(devnum);
        u.minor = minor(devnum);
        r = read_sysfs_u64(devnum, "queue/logical_block_size", &v);
        u.sector_size = r < 0 ? 0 : (uint32_t) v;
        r = read_sysfs_u64(devnum, "ro", &v);
        u.read_only = r >= 0 && v;
        u.node = strdup(name);
        if (!u.node)
                return -ENOMEM;
        *ret = u;
        return 0;
}
