/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * What the two files of loopmgr-losetup share: losetup's columns, the parsed arguments the
 * listings read, losetup's messages, and the device list (read from loopmgrd through
 * ctl-devices.c, filtered and printed as losetup prints it; losetup-list.c).
 */

#include <libsmartcols.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <systemd/sd-bus.h>

#include "ctl-devices.h"
#include "ctl-util.h"

typedef enum Column {
        COL_NAME,
        COL_AUTOCLR,
        COL_BACK_FILE,
        COL_BACK_INO,
        COL_BACK_MAJMIN,
        COL_MAJMIN,
        COL_OFFSET,
        COL_PARTSCAN,
        COL_RO,
        COL_SIZELIMIT,
        COL_DIO,
        COL_LOGSEC,
        _COL_MAX,
} Column;

typedef struct ColumnInfo {
        const char *name;
        double whint;
        int flags;
        int json_type;
        const char *help;
} ColumnInfo;

extern const ColumnInfo columns_info[_COL_MAX];

/* Parsed arguments (loopmgr-losetup.c) that the listings read */
extern Column arg_columns[_COL_MAX * 2];
extern size_t arg_n_columns;
extern bool arg_no_headings, arg_raw, arg_json;
extern uint64_t arg_offset;

/* Messages: "loopmgr-losetup: ...[: strerror(err)]", losetup's err(3)/warn(3) shape. */
_printf_(2, 3) void warn_errno(int err, const char *fmt, ...);
#define warnx_(...) warn_errno(0, __VA_ARGS__)
/* The daemon's sentence, on a line of its own after losetup's message. */
void warn_daemon(const sd_bus_error *error);
/* The errno of a failed call (never 0). */
int bus_errno(const sd_bus_error *error, int r);

/* -O: "+LIST" adds to the columns chosen so far (the defaults), "LIST" replaces them. */
int parse_columns(const char *list);

/* losetup's is_loopdev(): a block device node of the loop major; errno ENODEV when not. */
bool is_loop_node(const char *path, dev_t *ret_devnum);
/* "loop5" is /dev/loop5 for losetup; anything with a slash is taken as it is. */
char *device_arg_name(const char *arg);
DeviceInfo *find_by_devnum(DeviceList *l, dev_t devnum);
/* Every device, sorted; a message on failure. */
int list_devices(sd_bus *bus, DeviceList *ret);
/* Keeps only the devices over file (and at arg_offset, with by_offset). */
void list_filter_file(DeviceList *l, const char *file, bool by_offset);
/* losetup -a's line of one device. */
void print_device_line(const DeviceInfo *d, const char *name);
/* Prints the devices (one when only is set, else all in l) as losetup's --list table. */
int show_table(const DeviceList *l, const DeviceInfo *only, const char *only_name);

/* LOOP_CTL_GET_FREE's answer from sysfs: 0 and the number, or a negative errno. */
int find_free(unsigned *ret);
/* The listed device of the node arg, NULL when it is none. */
const DeviceInfo *lookup_device(DeviceList *l, const char *arg);
/* What losetup --list shows of an unbound device (sysfs); -ENODEV when arg is no loop node. */
int unbound_device_info(const char *arg, const char *name, DeviceInfo *ret);
