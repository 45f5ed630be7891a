/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * loopmgrctl list and status: the Device objects as a libsmartcols table, as losetup(8) and
 * lsblk(8) print theirs, so that --output, --noheadings, --raw and --json behave the same.
 * list shows one line per device; status shows the columns of one device, one per line. The
 * JSON of both is the table's: {"devices":[{"name":...,"device":...,"object":...,...}]}, keys
 * the lower-case column names.
 *
 * Human output never shows the daemon's sentinels: a uid of UINT32_MAX, a missing property or
 * an empty string is "-" (an empty cell with --raw, null in JSON).
 */

#include <inttypes.h>
#include <libsmartcols.h>
#include <pwd.h>
#include <sys/sysmacros.h>
#include <systemd/sd-bus.h>

#include "ctl-common.h"
#include "ctl-devices.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "loopmgr-bus.h"

typedef enum Column {
        COL_NAME,
        COL_DEVICE,
        COL_OBJECT,
        COL_DISKSEQ,
        COL_MAJMIN,
        COL_SIZE,
        COL_OFFSET,
        COL_SIZELIMIT,
        COL_RO,
        COL_DIO,
        COL_AUTOCLEAR,
        COL_PARTSCAN,
        COL_SECTOR,
        COL_MANAGED,
        COL_OWNER,
        COL_UID,
        COL_REFS,
        COL_STATE,
        COL_BASE,
        COL_RANGE,
        COL_CREATOR,
        COL_BACKING_FILE,
        COL_BACK_MAJMIN,
        COL_BACK_INO,
        COL_ALIASES,
        COL_OPENERS,
        COL_CHAIN,
        COL_MOUNTPOINT,
        COL_MOUNTUSER,
        COL_FSTYPE,
        COL_LABEL,
        COL_UUID,
        _COL_MAX,
} Column;

typedef struct ColumnInfo {
        const char *name;
        double whint;
        int flags;
        int json_type;
        bool list; /* among list's default columns */
} ColumnInfo;

/* clang-format off */
static const ColumnInfo columns_info[_COL_MAX] = {
        [COL_NAME]         = { "NAME",         0.1, 0,              SCOLS_JSON_STRING,       true  },
        [COL_DEVICE]       = { "DEVICE",       0.1, 0,              SCOLS_JSON_STRING,       false },
        [COL_OBJECT]       = { "OBJECT",       0.3, 0,              SCOLS_JSON_STRING,       false },
        [COL_DISKSEQ]      = { "DISKSEQ",      3,   SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,       false },
        [COL_MAJMIN]       = { "MAJ:MIN",      6,   0,              SCOLS_JSON_STRING,       false },
        [COL_SIZE]         = { "SIZE",         5,   SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,       true  },
        [COL_OFFSET]       = { "OFFSET",       5,   SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,       true  },
        [COL_SIZELIMIT]    = { "SIZELIMIT",    5,   SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,       true  },
        [COL_RO]           = { "RO",           1,   SCOLS_FL_RIGHT, SCOLS_JSON_BOOLEAN,      true  },
        [COL_DIO]          = { "DIO",          1,   SCOLS_FL_RIGHT, SCOLS_JSON_BOOLEAN,      true  },
        [COL_AUTOCLEAR]    = { "AUTOCLEAR",    1,   SCOLS_FL_RIGHT, SCOLS_JSON_BOOLEAN,      false },
        [COL_PARTSCAN]     = { "PARTSCAN",     1,   SCOLS_FL_RIGHT, SCOLS_JSON_BOOLEAN,      false },
        [COL_SECTOR]       = { "SECTOR",       4,   SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,       true  },
        [COL_MANAGED]      = { "MANAGED",      1,   SCOLS_FL_RIGHT, SCOLS_JSON_BOOLEAN,      true  },
        [COL_OWNER]        = { "OWNER",        0.1, 0,              SCOLS_JSON_STRING,       true  },
        [COL_UID]          = { "UID",          4,   SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,       false },
        [COL_REFS]         = { "REFS",         2,   SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,       true  },
        [COL_STATE]        = { "STATE",        0.1, 0,              SCOLS_JSON_STRING,       true  },
        [COL_BASE]         = { "BASE",         0.1, 0,              SCOLS_JSON_STRING,       true  },
        [COL_RANGE]        = { "RANGE",        0.1, 0,              SCOLS_JSON_STRING,       true  },
        [COL_CREATOR]      = { "CREATOR",      0.1, 0,              SCOLS_JSON_STRING,       true  },
        [COL_BACKING_FILE] = { "BACKING-FILE", 0.3, 0,              SCOLS_JSON_STRING,       true  },
        [COL_BACK_MAJMIN]  = { "BACK-MAJ:MIN", 6,   0,              SCOLS_JSON_STRING,       false },
        [COL_BACK_INO]     = { "BACK-INO",     4,   SCOLS_FL_RIGHT, SCOLS_JSON_NUMBER,       false },
        [COL_ALIASES]      = { "ALIASES",      0.2, 0,              SCOLS_JSON_ARRAY_STRING, false },
        [COL_OPENERS]      = { "OPENERS",      0.2, 0,              SCOLS_JSON_ARRAY_STRING, false },
        [COL_CHAIN]        = { "CHAIN",        0.2, 0,              SCOLS_JSON_ARRAY_STRING, false },
        [COL_MOUNTPOINT]   = { "MOUNTPOINT",   0.2, 0,              SCOLS_JSON_STRING,       false },
        [COL_MOUNTUSER]    = { "MOUNTUSER",    0.1, 0,              SCOLS_JSON_STRING,       false },
        [COL_FSTYPE]       = { "FSTYPE",       0.1, 0,              SCOLS_JSON_STRING,       false },
        [COL_LABEL]        = { "LABEL",        0.1, 0,              SCOLS_JSON_STRING,       false },
        [COL_UUID]         = { "UUID",         0.1, 0,              SCOLS_JSON_STRING,       false },
};
/* clang-format on */

static void scols_unref_tablep(struct libscols_table **tb) {
        scols_unref_table(*tb);
}

/* ---- columns ----------------------------------------------------------------------------- */

typedef struct ColumnList {
        Column items[_COL_MAX * 2];
        size_t n;
} ColumnList;

static int column_from_name(const char *name, size_t len) {
        for (size_t i = 0; i < _COL_MAX; i++)
                if (strncasecmp(name, columns_info[i].name, len) == 0 &&
                    columns_info[i].name[len] == '\0')
                        return (int) i;
        return -1;
}

/* The columns of --output ("+LIST" adds to the defaults, "LIST" replaces them), else the
 * defaults: list's usual ones in a table, every column for JSON and status. Returns 0 or an
 * exit status. */
static int columns_select(bool all, ColumnList *ret) {
        const char *p = arg_output;

        ret->n = 0;
        if (!p || p[0] == '+')
                for (size_t i = 0; i < _COL_MAX; i++)
                        if (all || columns_info[i].list)
                                ret->items[ret->n++] = (Column) i;
        if (!p)
                return 0;
        if (p[0] == '+')
                p++;
        else
                ret->n = 0;

        for (;;) {
                size_t len = strcspn(p, ",");
                int c = column_from_name(p, len);

                if (c < 0)
                        return log_usage("Unknown column '%.*s' in --output.", (int) len, p);
                if (ret->n >= ELEMENTSOF(ret->items))
                        return log_usage("Too many columns in --output.");
                ret->items[ret->n++] = (Column) c;
                if (!p[len])
                        return 0;
                p += len + 1;
        }
}

/* ---- cells ------------------------------------------------------------------------------- */

static char *user_name(uint32_t uid) {
        struct passwd *pw = getpwuid(uid);
        char *s;

        if (pw)
                return strdup(pw->pw_name);
        return asprintf(&s, "%" PRIu32, uid) < 0 ? NULL : s;
}

static char *cell_string(const char *s) {
        return s && s[0] ? strdup(s) : NULL;
}

/* Array cells: one element a line, which libsmartcols turns into a JSON array; in a table,
 * joined with sep. NULL for an empty list. */
static char *cell_strv(char **l, const char *sep) {
        size_t n = 0, len = 0;
        char *s, *p;

        for (; l && l[n]; n++)
                len += strlen(l[n]) + strlen(sep);
        if (n == 0)
                return NULL;
        s = p = malloc(len + 1);
        if (!s)
                return NULL;
        for (size_t i = 0; i < n; i++)
                p = stpcpy(stpcpy(p, i > 0 ? sep : ""), l[i]);
        return s;
}

static const char *one_zero(int b) {
        return b ? "1" : "0";
}

/*
 * The text of one cell, NULL for none (an unset value, or the daemon's "nobody"). *ret_failed
 * is set when NULL means out of memory. Sizes are exact bytes except SIZE in a table, where
 * they are rounded as losetup and lsblk print them.
 */
static char *device_cell(const DeviceInfo *d, Column c, bool json, bool *ret_failed) {
        char buf[FORMAT_BASE_MAX], *s = NULL;

        *ret_failed = false;
        switch (c) {
        case COL_NAME:
                /* "!": another device shows some of the same bytes (Aliases). */
                s = strdup_printf("%s%s", device_display_name(d),
                                  !json && d->n_aliases > 0 ? "!" : "");
                break;
        case COL_DEVICE:
                return cell_string(d->node);
        case COL_OBJECT:
                return cell_string(d->object);
        case COL_DISKSEQ:
                s = strdup_printf("%" PRIu64, d->diskseq);
                break;
        case COL_MAJMIN:
                s = strdup_printf("%" PRIu32 ":%" PRIu32, d->major, d->minor);
                break;
        case COL_SIZE:
                if (json)
                        s = strdup_printf("%" PRIu64, d->size);
                else
                        s = strdup(format_size(d->size, buf));
                break;
        case COL_OFFSET:
                s = strdup_printf("%" PRIu64, d->offset);
                break;
        case COL_SIZELIMIT:
                s = strdup_printf("%" PRIu64, d->size_limit);
                break;
        case COL_RO:
                return strdup(one_zero(d->read_only));
        case COL_DIO:
                return strdup(one_zero(d->direct_io));
        case COL_AUTOCLEAR:
                return strdup(one_zero(d->autoclear));
        case COL_PARTSCAN:
                return strdup(one_zero(d->partscan));
        case COL_SECTOR:
                s = strdup_printf("%" PRIu32, d->sector_size);
                break;
        case COL_MANAGED:
                return strdup(one_zero(d->managed));
        case COL_OWNER:
        case COL_UID:
                if (!d->managed || !(d->present & PRESENT_OWNER_UID) || d->owner_uid == UINT32_MAX)
                        return NULL;
                s = c == COL_UID ? strdup_printf("%" PRIu32, d->owner_uid)
                                 : user_name(d->owner_uid);
                break;
        case COL_REFS:
                s = strdup_printf("%" PRIu32, d->references);
                break;
        case COL_STATE:
                return cell_string(d->state);
        case COL_BASE:
                if (!(d->present & PRESENT_BASE_DEVICE) || !d->base_kind || !d->base_kind[0])
                        return NULL;
                s = strdup(device_info_base(d, buf));
                break;
        case COL_RANGE:
                if ((d->present & (PRESENT_BASE_OFFSET | PRESENT_BASE_SIZE)) !=
                    (PRESENT_BASE_OFFSET | PRESENT_BASE_SIZE))
                        return NULL;
                s = strdup(device_info_range(d, buf));
                break;
        case COL_CREATOR:
                return cell_string(d->creator);
        case COL_BACKING_FILE:
                return cell_string(d->backing_file);
        case COL_BACK_MAJMIN:
                if (d->backing_device == 0)
                        return NULL;
                s = strdup_printf("%u:%u", major((dev_t) d->backing_device),
                                  minor((dev_t) d->backing_device));
                break;
        case COL_BACK_INO:
                if (d->backing_inode == 0)
                        return NULL;
                s = strdup_printf("%" PRIu64, d->backing_inode);
                break;
        case COL_ALIASES:
        case COL_OPENERS:
        case COL_CHAIN: {
                char **l = c == COL_ALIASES ? d->aliases : c == COL_OPENERS ? d->openers : d->chain;

                if (!l || !l[0])
                        return NULL;
                s = cell_strv(l, json ? "\n" : ", ");
                break;
        }
        case COL_MOUNTPOINT:
                return cell_string(d->mount_point);
        case COL_MOUNTUSER:
                if (!(d->present & PRESENT_MOUNT_USER) || d->mount_user == UINT32_MAX)
                        return NULL;
                s = user_name(d->mount_user);
                break;
        case COL_FSTYPE:
                return cell_string(d->id_type);
        case COL_LABEL:
                return cell_string(d->id_label);
        case COL_UUID:
                return cell_string(d->id_uuid);
        default:
                return NULL;
        }
        *ret_failed = !s;
        return s;
}

/* ---- tables ------------------------------------------------------------------------------ */

static struct libscols_table *table_new(const char *json_name) {
        struct libscols_table *tb = scols_new_table();

        if (!tb)
                return NULL;
        scols_table_enable_raw(tb, arg_raw);
        scols_table_enable_json(tb, arg_json);
        scols_table_enable_noheadings(tb, arg_no_legend);
        if (arg_json)
                scols_table_set_name(tb, json_name);
        return tb;
}

/* One line per device, the columns given; "-" in empty cells of a table for people. Returns 0
 * or a negative errno. */
static int devices_table(const DeviceInfo *devices, size_t n, const ColumnList *cols,
                         struct libscols_table **ret) {
        _cleanup_(scols_unref_tablep) struct libscols_table *tb = table_new("devices");
        bool dash = !arg_json && !arg_raw;

        if (!tb)
                return -ENOMEM;
        for (size_t i = 0; i < cols->n; i++) {
                const ColumnInfo *ci = columns_info + cols->items[i];
                bool array = arg_json && ci->json_type == SCOLS_JSON_ARRAY_STRING;
                struct libscols_column *cl = scols_table_new_column(
                        tb, ci->name, ci->whint, ci->flags | (array ? SCOLS_FL_WRAP : 0));

                if (!cl)
                        return -ENOMEM;
                if (arg_json && scols_column_set_json_type(cl, ci->json_type) < 0)
                        return -ENOMEM;
                /* A JSON array of the cell's lines, as lsblk's MOUNTPOINTS (and like it, [null]
                 * for an empty list). */
                if (array && scols_column_set_wrapfunc(cl, scols_wrapnl_chunksize,
                                                       scols_wrapnl_nextchunk, NULL) < 0)
                        return -ENOMEM;
        }

        for (size_t k = 0; k < n; k++) {
                struct libscols_line *ln = scols_table_new_line(tb, NULL);

                if (!ln)
                        return -ENOMEM;
                for (size_t i = 0; i < cols->n; i++) {
                        bool failed;
                        char *s = device_cell(devices + k, cols->items[i], arg_json, &failed);

                        if (failed)
                                return -ENOMEM;
                        if (!s && dash)
                                s = strdup("-");
                        if (s && scols_line_refer_data(ln, i, s) < 0) {
                                free(s);
                                return -ENOMEM;
                        }
                }
        }
        *ret = TAKE_PTR(tb);
        return 0;
}

static int print_table(struct libscols_table *tb) {
        if (scols_print_table(tb) < 0)
                return log_fail(EXIT_FAILURE, "Failed to print the table: %s", strerror(errno));
        return flush_stdout();
}

/* ---- list -------------------------------------------------------------------------------- */

int verb_list(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(scols_unref_tablep) struct libscols_table *tb = NULL;
        _cleanup_(device_list_done) DeviceList list = {};
        ColumnList cols;
        size_t n_aliased = 0;
        int r;

        r = columns_select(arg_json, &cols);
        if (r != 0)
                return r;

        r = device_list_get(bus, &error, &list);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0 && sd_bus_error_is_set(&error))
                return log_bus_error(&error, r, "GetManagedObjects");
        if (r < 0)
                return log_parse_error(r);

        /* Like losetup: nothing at all when there is nothing to list; JSON says so, for
         * scripts. */
        if (list.n == 0 && !arg_json)
                return 0;

        r = devices_table(list.items, list.n, &cols, &tb);
        if (r < 0)
                return log_oom();
        r = print_table(tb);
        if (r != 0)
                return r;

        for (size_t i = 0; i < list.n; i++)
                if (list.items[i].n_aliases > 0)
                        n_aliased++;
        if (n_aliased > 0 && !arg_no_legend && !arg_raw && !arg_json)
                printf("\n! %zu device(s) expose bytes that another device exposes too, an alias "
                       "made without loopmgrd: see ALIASES in loopmgrctl status.\n",
                       n_aliased);
        return flush_stdout();
}

/* ---- status ------------------------------------------------------------------------------ */

/* The columns of one device, one a line: "COLUMN: value" with the names right-aligned, lists
 * one element a line (with --raw: "COLUMN value", escaped as libsmartcols escapes). */
static int status_table(const DeviceInfo *d, const ColumnList *cols, struct libscols_table **ret) {
        _cleanup_(scols_unref_tablep) struct libscols_table *tb = table_new("devices");

        if (!tb)
                return -ENOMEM;
        scols_table_enable_noheadings(tb, true);
        if (!scols_table_new_column(tb, "FIELD", 0.1, arg_raw ? 0 : SCOLS_FL_RIGHT) ||
            !scols_table_new_column(tb, "VALUE", 0.9, 0))
                return -ENOMEM;

        for (size_t i = 0; i < cols->n; i++) {
                Column c = cols->items[i];
                bool failed, list = columns_info[c].json_type == SCOLS_JSON_ARRAY_STRING;
                _cleanup_free_ char *s = device_cell(d, c, /* json= */ list, &failed);
                char *p = s;

                if (failed)
                        return -ENOMEM;
                /* One line per element of a list: the continuation lines have no name. */
                do {
                        struct libscols_line *ln = scols_table_new_line(tb, NULL);
                        size_t len = p ? strcspn(p, "\n") : 0;
                        _cleanup_free_ char *name = NULL, *value = NULL;

                        if (!ln)
                                return -ENOMEM;
                        if (p == s &&
                            asprintf(&name, "%s%s", columns_info[c].name, arg_raw ? "" : ":") < 0)
                                return -ENOMEM;
                        value = p ? strndup(p, len) : strdup(arg_raw ? "" : "-");
                        if (!value || (name && scols_line_set_data(ln, 0, name) < 0) ||
                            scols_line_set_data(ln, 1, value) < 0)
                                return -ENOMEM;
                        p = p && p[len] ? p + len + 1 : NULL;
                } while (p);
        }
        *ret = TAKE_PTR(tb);
        return 0;
}

/* The partitions of a device (Partitions) below its status, as a table. */
typedef enum PartitionColumn {
        PCOL_NUMBER,
        PCOL_DEVICE,
        PCOL_SIZE,
        PCOL_FSTYPE,
        PCOL_LABEL,
        PCOL_MOUNTPOINT,
        _PCOL_MAX,
} PartitionColumn;

/* clang-format off */
static const ColumnInfo partition_columns_info[_PCOL_MAX] = {
        [PCOL_NUMBER]     = { "NUMBER",     2,   SCOLS_FL_RIGHT },
        [PCOL_DEVICE]     = { "DEVICE",     0.1, 0 },
        [PCOL_SIZE]       = { "SIZE",       5,   SCOLS_FL_RIGHT },
        [PCOL_FSTYPE]     = { "FSTYPE",     0.1, 0 },
        [PCOL_LABEL]      = { "LABEL",      0.1, 0 },
        [PCOL_MOUNTPOINT] = { "MOUNTPOINT", 0.2, 0 },
};
/* clang-format on */

/* The text of one cell, NULL for an empty one (or out of memory: *ret_failed). */
static char *partition_cell(const PartitionInfo *p, PartitionColumn c, bool *ret_failed) {
        char buf[FORMAT_SIZE_MAX], *s;

        *ret_failed = false;
        switch (c) {
        case PCOL_NUMBER:
                s = strdup_printf("%" PRIu32, p->number);
                break;
        case PCOL_DEVICE:
                return cell_string(p->node);
        case PCOL_SIZE:
                s = strdup(format_size(p->size, buf));
                break;
        case PCOL_FSTYPE:
                return cell_string(p->id_type);
        case PCOL_LABEL:
                return cell_string(p->id_label);
        case PCOL_MOUNTPOINT:
                return cell_string(p->mount_point);
        default:
                return NULL;
        }
        *ret_failed = !s;
        return s;
}

/* One line per partition; "-" in empty cells unless --raw, as for devices. */
static int partitions_table(const DeviceInfo *d, struct libscols_table **ret) {
        _cleanup_(scols_unref_tablep) struct libscols_table *tb = table_new("partitions");

        if (!tb)
                return -ENOMEM;
        for (size_t i = 0; i < _PCOL_MAX; i++)
                if (!scols_table_new_column(tb, partition_columns_info[i].name,
                                            partition_columns_info[i].whint,
                                            partition_columns_info[i].flags))
                        return -ENOMEM;

        for (size_t k = 0; k < d->n_partitions; k++) {
                struct libscols_line *ln = scols_table_new_line(tb, NULL);

                if (!ln)
                        return -ENOMEM;
                for (size_t i = 0; i < _PCOL_MAX; i++) {
                        bool failed;
                        char *s = partition_cell(d->partitions + k, (PartitionColumn) i, &failed);

                        if (failed)
                                return -ENOMEM;
                        if (!s && !arg_raw)
                                s = strdup("-");
                        if (s && scols_line_refer_data(ln, i, s) < 0) {
                                free(s);
                                return -ENOMEM;
                        }
                }
        }
        *ret = TAKE_PTR(tb);
        return 0;
}

/* A string for JSON, null for the daemon's "" (as the table's JSON has it for empty cells). */
static void json_write_string_or_null(FILE *f, const char *s) {
        if (s && s[0])
                json_write_string(f, s);
        else
                fputs("null", f);
}

/* "partitions":[{...},...], the keys those of the device's columns that mean the same. */
static int write_partitions_json(FILE *f, const DeviceInfo *d) {
        fputs("\"partitions\": [", f);
        for (size_t i = 0; i < d->n_partitions; i++) {
                const PartitionInfo *p = d->partitions + i;
                _cleanup_free_ char *user = NULL;
                const char *name = strrchr(p->node, '/');

                if (p->mount_point[0] && p->mount_user != UINT32_MAX) {
                        user = user_name(p->mount_user);
                        if (!user)
                                return -ENOMEM;
                }
                fprintf(f, "%s{\"number\": %" PRIu32 ", \"name\": ", i > 0 ? ", " : "", p->number);
                json_write_string_or_null(f, name ? name + 1 : p->node);
                fputs(", \"device\": ", f);
                json_write_string_or_null(f, p->node);
                fprintf(f,
                        ", \"offset\": %" PRIu64 ", \"size\": %" PRIu64 ", \"fstype\": ", p->offset,
                        p->size);
                json_write_string_or_null(f, p->id_type);
                fputs(", \"label\": ", f);
                json_write_string_or_null(f, p->id_label);
                fputs(", \"uuid\": ", f);
                json_write_string_or_null(f, p->id_uuid);
                fputs(", \"mountpoint\": ", f);
                json_write_string_or_null(f, p->mount_point);
                fputs(", \"mountuser\": ", f);
                json_write_string_or_null(f, user);
                fputc('}', f);
        }
        fputc(']', f);
        return 0;
}

static size_t skip_space_back(const char *s, size_t i) {
        while (i > 0 && strchr(" \t\n", s[i - 1]))
                i--;
        return i;
}

/*
 * status --json: the table's JSON, {"devices":[{...}]}, with "partitions":[...] added to the
 * device's object when the daemon sent Partitions. libsmartcols (2.38) has no cells that are
 * JSON objects, so the member goes in before the brace that closes the device's object: the
 * last '}' before the last ']'.
 */
static int print_status_json(struct libscols_table *tb, const DeviceInfo *d) {
        _cleanup_free_ char *doc = NULL;
        size_t i;
        int r;

        if (!(d->present & PRESENT_PARTITIONS))
                return print_table(tb);

        if (scols_print_table_to_string(tb, &doc) < 0 || !doc)
                return log_oom();
        i = skip_space_back(doc, strlen(doc));
        if (i > 0 && doc[i - 1] == '}')
                i = skip_space_back(doc, i - 1);
        if (i > 0 && doc[i - 1] == ']')
                i = skip_space_back(doc, i - 1);
        if (i == 0 || doc[i - 1] != '}')
                return log_fail(EXIT_FAILURE, "Unexpected JSON from libsmartcols: %s", doc);
        i = skip_space_back(doc, i - 1);

        fwrite(doc, 1, i, stdout);
        fputs(",\n         ", stdout);
        r = write_partitions_json(stdout, d);
        if (r < 0)
                return log_oom();
        fputs(doc + i, stdout);
        return flush_stdout();
}

int verb_status(sd_bus *bus, char **args) {
        _cleanup_(scols_unref_tablep) struct libscols_table *tb = NULL, *partitions = NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        _cleanup_free_ char *object = NULL;
        ColumnList cols;
        int r;

        r = columns_select(/* all= */ true, &cols);
        if (r != 0)
                return r;

        r = resolve_device(bus, args[0], &object);
        if (r != 0)
                return r;

        r = device_info_get_or_log(bus, object, &d);
        if (r != 0)
                return r;

        if (arg_json) {
                r = devices_table(&d, 1, &cols, &tb);
                if (r < 0)
                        return log_oom();
                return print_status_json(tb, &d);
        }

        r = status_table(&d, &cols, &tb);
        if (r < 0)
                return log_oom();
        r = print_table(tb);
        if (r != 0)
                return r;

        /* The partitions belong to the default view: --output LIST (no "+") replaces it. */
        if (d.n_partitions == 0 || (arg_output && arg_output[0] != '+'))
                return 0;
        r = partitions_table(&d, &partitions);
        if (r < 0)
                return log_oom();
        fputc('\n', stdout);
        return print_table(partitions);
}
