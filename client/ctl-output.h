/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Output helpers of loopmgrctl: JSON written straight from sd_bus_message values (so that
 * --json shows every property the daemon sends, including ones this client does not know),
 * human formatting of property values, and named fields printed as "Name: value" lines.
 *
 * The readers consume exactly one complete value from the message and return 0 or a negative
 * errno (-EBADMSG when the message is not what was expected).
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <systemd/sd-bus.h>

/* JSON */
void json_write_string(FILE *f, const char *s);
/* "device":NODE,"object":OBJECT, the two names of a device in every --json document (node
 * NULL: null). */
void json_write_device(FILE *f, const char *node, const char *object);
/* Any D-Bus value: dictionaries become objects (keys as strings), other arrays and structs
 * become arrays, variants are unwrapped, booleans true/false, numbers as numbers. */
int json_write_value(sd_bus_message *m, FILE *f);
/* The members of a dictionary ("k":v,...) without the braces, so a caller can add its own
 * members to the same object. *first is cleared once a member has been written. */
int json_write_dict_members(sd_bus_message *m, FILE *f, bool *first);

/* Human output */
#define FORMAT_SIZE_MAX 32
/* 1536 -> "1.5K", like losetup/lsblk (binary units, one decimal only when needed). */
const char *format_size(uint64_t bytes, char buf[static FORMAT_SIZE_MAX]);
/* The current time as "2024-05-01T13:45:01.123456+02:00". */
const char *format_timestamp_now(char buf[static 64]);
/* s with backslashes doubled and control characters shown as \n, \t, \xNN, so that a
 * hostile file name cannot forge extra lines or terminal escapes. Returns NULL on OOM. */
char *escape_human(const char *s);
/* Reads the variant holding the value of property (or Resolve key) name and returns it as
 * lines of text: one line for scalars, one per element for arrays (possibly none). Knows
 * the units of loopmgr's properties (sizes in bytes, dev_t, uid). */
int format_property(const char *name, sd_bus_message *m, char ***ret_lines);

/* Fields: named values of one or more lines, printed as "Name: value" */
typedef struct Field {
        char *name;
        char **lines;
} Field;

typedef struct FieldList {
        Field *items;
        size_t n;
} FieldList;

void field_list_done(FieldList *l);
/* Takes ownership of lines, also on failure. */
int field_list_add(FieldList *l, const char *name, char **lines);
int field_list_add_one(FieldList *l, const char *name, const char *value);
/* "Name: value" with the names right-aligned, continuation lines of arrays under the first,
 * and "-" for empty arrays. */
int field_list_print(const FieldList *l);
/* Reads an a{sv} into formatted fields (format_property()), in the order they were sent. */
int field_list_read(sd_bus_message *m, FieldList *l);
