/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <pwd.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <time.h>

#include "ctl-devices.h"
#include "ctl-output.h"
#include "ctl-util.h"

typedef union BasicValue {
        uint8_t u8;
        int16_t s16;
        uint16_t u16;
        int32_t s32;
        uint32_t u32;
        int64_t s64;
        uint64_t u64;
        double d;
        int boolean;
        int fd;
        const char *string;
} BasicValue;

static bool type_is_string(char type) {
        return type == SD_BUS_TYPE_STRING || type == SD_BUS_TYPE_OBJECT_PATH ||
               type == SD_BUS_TYPE_SIGNATURE;
}

/* Writes a number or boolean (not a string) as text; json selects true/false vs yes/no and
 * refuses to print NaN and infinities, which JSON cannot express. */
static void write_basic_scalar(FILE *f, char type, const BasicValue *v, bool json) {
        switch (type) {
        case SD_BUS_TYPE_BYTE:
                fprintf(f, "%" PRIu8, v->u8);
                break;
        case SD_BUS_TYPE_INT16:
                fprintf(f, "%" PRIi16, v->s16);
                break;
        case SD_BUS_TYPE_UINT16:
                fprintf(f, "%" PRIu16, v->u16);
                break;
        case SD_BUS_TYPE_INT32:
                fprintf(f, "%" PRIi32, v->s32);
                break;
        case SD_BUS_TYPE_UINT32:
                fprintf(f, "%" PRIu32, v->u32);
                break;
        case SD_BUS_TYPE_INT64:
                fprintf(f, "%" PRIi64, v->s64);
                break;
        case SD_BUS_TYPE_UINT64:
                fprintf(f, "%" PRIu64, v->u64);
                break;
        case SD_BUS_TYPE_DOUBLE:
                if (json && !isfinite(v->d))
                        fputs("null", f);
                else
                        fprintf(f, "%.17g", v->d);
                break;
        case SD_BUS_TYPE_BOOLEAN:
                if (json)
                        fputs(v->boolean ? "true" : "false", f);
                else
                        fputs(v->boolean ? "yes" : "no", f);
                break;
        case SD_BUS_TYPE_UNIX_FD:
                /* A received fd number means nothing to the reader. */
                fputs(json ? "null" : "(fd)", f);
                break;
        default:
                assert(false);
        }
}

void json_write_string(FILE *f, const char *s) {
        fputc('"', f);
        for (const unsigned char *p = (const unsigned char *) s; *p; p++)
                switch (*p) {
                case '"':
                        fputs("\\\"", f);
                        break;
                case '\\':
                        fputs("\\\\", f);
                        break;
                case '\b':
                        fputs("\\b", f);
                        break;
                case '\f':
                        fputs("\\f", f);
                        break;
                case '\n':
                        fputs("\\n", f);
                        break;
                case '\r':
                        fputs("\\r", f);
                        break;
                case '\t':
                        fputs("\\t", f);
                        break;
                default:
                        /* D-Bus guarantees valid UTF-8, so bytes >= 0x80 pass through. */
                        if (*p < 0x20 || *p == 0x7f)
                                fprintf(f, "\\u%04x", *p);
                        else
                                fputc(*p, f);
                }
        fputc('"', f);
}

int json_write_dict_members(sd_bus_message *m, FILE *f, bool *first) {
        const char *contents;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (r == 0 || type != SD_BUS_TYPE_ARRAY || contents[0] != '{')
                return -EBADMSG;

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, contents);
        if (r < 0)
                return r;

        for (;;) {
                const char *entry;
                BasicValue key;
                char key_type;

                r = sd_bus_message_peek_type(m, &type, &entry);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;

                r = sd_bus_message_enter_container(m, SD_BUS_TYPE_DICT_ENTRY, entry);
                if (r < 0)
                        return r;

                key_type = entry[0];
                r = sd_bus_message_read_basic(m, key_type, &key);
                if (r < 0)
                        return r;

                if (!*first)
                        fputc(',', f);
                *first = false;

                /* JSON keys are strings: numeric keys are written as their decimal text. */
                if (type_is_string(key_type))
                        json_write_string(f, key.string);
                else {
                        fputc('"', f);
                        write_basic_scalar(f, key_type, &key, /* json= */ false);
                        fputc('"', f);
                }
                fputc(':', f);

                r = json_write_value(m, f);
                if (r < 0)
                        return r;

                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }

        return sd_bus_message_exit_container(m);
}

static int json_write_sequence(sd_bus_message *m, FILE *f, char container, const char *contents) {
        int r;

        r = sd_bus_message_enter_container(m, container, contents);
        if (r < 0)
                return r;

        fputc('[', f);
        for (bool first = true;; first = false) {
                r = sd_bus_message_at_end(m, false);
                if (r < 0)
                        return r;
                if (r > 0)
                        break;

                if (!first)
                        fputc(',', f);
                r = json_write_value(m, f);
                if (r < 0)
                        return r;
        }
        fputc(']', f);

        return sd_bus_message_exit_container(m);
}

void json_write_device(FILE *f, const char *node, const char *object) {
        fputs("\"device\":", f);
        if (node)
                json_write_string(f, node);
        else
                fputs("null", f);
        fputs(",\"object\":", f);
        json_write_string(f, object);
}

int json_write_value(sd_bus_message *m, FILE *f) {
        const char *contents;
        BasicValue v;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (r == 0)
                return -EBADMSG;

        switch (type) {
        case SD_BUS_TYPE_ARRAY:
                if (contents[0] == '{') {
                        bool first = true;

                        fputc('{', f);
                        r = json_write_dict_members(m, f, &first);
                        fputc('}', f);
                        return r;
                }
                return json_write_sequence(m, f, SD_BUS_TYPE_ARRAY, contents);

        case SD_BUS_TYPE_STRUCT:
                return json_write_sequence(m, f, SD_BUS_TYPE_STRUCT, contents);

        case SD_BUS_TYPE_VARIANT:
                r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, contents);
                if (r < 0)
                        return r;
                r = json_write_value(m, f);
                if (r < 0)
                        return r;
                return sd_bus_message_exit_container(m);

        case SD_BUS_TYPE_DICT_ENTRY:
                return -EBADMSG; /* only reachable through an array, handled above */

        default:
                r = sd_bus_message_read_basic(m, type, &v);
                if (r < 0)
                        return r;
                if (type_is_string(type))
                        json_write_string(f, v.string);
                else
                        write_basic_scalar(f, type, &v, /* json= */ true);
                return 0;
        }
}

const char *format_size(uint64_t bytes, char buf[static FORMAT_SIZE_MAX]) {
        static const char letters[] = "BKMGTPE";
        uint64_t dec, frac;
        unsigned exp = 0;

        /* Same rounding as util-linux's size_to_human_string(), so that our SIZE column
         * matches losetup's and lsblk's for the same device. */
        while (exp < 60 && bytes >= (UINT64_C(1) << (exp + 10)))
                exp += 10;

        dec = bytes >> exp;
        frac = exp > 0 ? bytes & ((UINT64_C(1) << exp) - 1) : 0;
        if (frac > 0) {
                /* three decimal digits, then round to one */
                if (frac >= UINT64_MAX / 1000)
                        frac = ((frac / 1024) * 1000) >> (exp - 10);
                else
                        frac = (frac * 1000) >> exp;
                frac = (frac + 50) / 100;
                if (frac >= 10) {
                        dec++;
                        frac = 0;
                }
        }

        if (frac > 0)
                snprintf(buf, FORMAT_SIZE_MAX, "%" PRIu64 ".%" PRIu64 "%c", dec, frac,
                         letters[exp / 10]);
        else
                snprintf(buf, FORMAT_SIZE_MAX, "%" PRIu64 "%c", dec, letters[exp / 10]);
        return buf;
}

const char *format_timestamp_now(char buf[static 64]) {
        struct timespec ts;
        struct tm tm;
        long off;
        size_t n;

        if (clock_gettime(CLOCK_REALTIME, &ts) < 0 || !localtime_r(&ts.tv_sec, &tm)) {
                snprintf(buf, 64, "-");
                return buf;
        }

        n = strftime(buf, 64, "%Y-%m-%dT%H:%M:%S", &tm);
        off = tm.tm_gmtoff / 60;
        snprintf(buf + n, 64 - n, ".%06ld%c%02ld:%02ld", ts.tv_nsec / 1000, off < 0 ? '-' : '+',
                 labs(off) / 60, labs(off) % 60);
        return buf;
}

char *escape_human(const char *s) {
        char *buf = NULL;
        size_t size = 0;
        FILE *f;

        f = open_memstream(&buf, &size);
        if (!f)
                return NULL;

        for (const unsigned char *p = (const unsigned char *) s; *p; p++)
                if (*p == '\\')
                        fputs("\\\\", f);
                else if (*p == '\n')
                        fputs("\\n", f);
                else if (*p == '\t')
                        fputs("\\t", f);
                else if (*p < 0x20 || *p == 0x7f)
                        fprintf(f, "\\x%02x", *p);
                else
                        fputc(*p, f);

        if (fclose(f) != 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

/* Human text of one value, on one line: structs as space-separated fields (Openers' (ss)
 * reads "mount /mnt"), nested arrays in brackets, dictionaries as k=v. */
static int format_value_inline(sd_bus_message *m, FILE *f) {
        const char *contents;
        BasicValue v;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (r == 0)
                return -EBADMSG;

        switch (type) {
        case SD_BUS_TYPE_ARRAY:
        case SD_BUS_TYPE_STRUCT:
        case SD_BUS_TYPE_DICT_ENTRY: {
                bool dict = type == SD_BUS_TYPE_ARRAY && contents[0] == '{';

                r = sd_bus_message_enter_container(m, type, contents);
                if (r < 0)
                        return r;

                if (type == SD_BUS_TYPE_ARRAY)
                        fputc(dict ? '{' : '[', f);
                for (bool first = true;; first = false) {
                        r = sd_bus_message_at_end(m, false);
                        if (r < 0)
                                return r;
                        if (r > 0)
                                break;
                        if (!first)
                                fputs(type == SD_BUS_TYPE_ARRAY        ? ", "
                                      : type == SD_BUS_TYPE_DICT_ENTRY ? "="
                                                                       : " ",
                                      f);
                        r = format_value_inline(m, f);
                        if (r < 0)
                                return r;
                }
                if (type == SD_BUS_TYPE_ARRAY)
                        fputc(dict ? '}' : ']', f);

                return sd_bus_message_exit_container(m);
        }

        case SD_BUS_TYPE_VARIANT:
                r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, contents);
                if (r < 0)
                        return r;
                r = format_value_inline(m, f);
                if (r < 0)
                        return r;
                return sd_bus_message_exit_container(m);

        default:
                r = sd_bus_message_read_basic(m, type, &v);
                if (r < 0)
                        return r;
                if (type_is_string(type))
                        fputs(v.string, f);
                else
                        write_basic_scalar(f, type, &v, /* json= */ false);
                return 0;
        }
}

static bool name_is_size(const char *name) {
        return streq(name, "Size") || streq(name, "Offset") || streq(name, "SizeLimit") ||
               streq(name, "BaseOffset") || streq(name, "BaseSize") || streq(name, "size") ||
               streq(name, "offset");
}

static bool name_is_devnum(const char *name) {
        return streq(name, "BackingDevice") || streq(name, "BaseDevice") ||
               streq(name, "base-device");
}

static int strv_push(char ***l, char *s) {
        size_t n = strv_length(*l);
        char **c;

        if (!s)
                return -ENOMEM;

        c = reallocarray(*l, n + 2, sizeof(char *));
        if (!c) {
                free(s);
                return -ENOMEM;
        }
        c[n] = s;
        c[n + 1] = NULL;
        *l = c;
        return 0;
}

static int format_scalar_line(const char *name, const char *contents, sd_bus_message *m,
                              char **ret) {
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        FILE *f;
        int r;

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;

        if (streq(contents, "t") && (name_is_size(name) || name_is_devnum(name))) {
                char sz[FORMAT_SIZE_MAX];
                uint64_t v;

                r = sd_bus_message_read_basic(m, 't', &v);
                if (r < 0)
                        goto fail;
                if (name_is_devnum(name)) {
                        if (v == 0)
                                fputs("-", f);
                        else
                                fprintf(f, "%u:%u", major((dev_t) v), minor((dev_t) v));
                } else if (v < 1024)
                        fprintf(f, "%" PRIu64, v);
                else
                        fprintf(f, "%" PRIu64 " (%s)", v, format_size(v, sz));

        } else if (streq(contents, "u") && (streq(name, "OwnerUID") || streq(name, "MountUser"))) {
                struct passwd *pw;
                uint32_t uid;

                r = sd_bus_message_read_basic(m, 'u', &uid);
                if (r < 0)
                        goto fail;
                if (uid == UINT32_MAX) /* nobody */
                        fputs("-", f);
                else if ((pw = getpwuid(uid)))
                        fprintf(f, "%" PRIu32 " (%s)", uid, pw->pw_name);
                else
                        fprintf(f, "%" PRIu32, uid);

        } else if (streq(contents, "s")) {
                const char *s;

                /* An empty string is the daemon's "none" (MountPoint, Creator, IdLabel...). */
                r = sd_bus_message_read_basic(m, 's', &s);
                if (r < 0)
                        goto fail;
                fputs(s[0] ? s : "-", f);
        } else {
                r = format_value_inline(m, f);
                if (r < 0)
                        goto fail;
        }

        if (fclose(f) != 0)
                return -ENOMEM;
        *ret = TAKE_PTR(buf);
        return 0;

fail:
        fclose(f);
        return r;
}

int format_property(const char *name, sd_bus_message *m, char ***ret_lines) {
        _cleanup_strv_free_ char **lines = NULL;
        const char *contents;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (r == 0 || type != SD_BUS_TYPE_VARIANT)
                return -EBADMSG;

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, contents);
        if (r < 0)
                return r;

        if (contents[0] == SD_BUS_TYPE_ARRAY) {
                r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, contents + 1);
                if (r < 0)
                        return r;
                for (;;) {
                        const char *element;
                        char *line = NULL;
                        char t;

                        r = sd_bus_message_peek_type(m, &t, &element);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                break;

                        r = format_scalar_line(name, "", m, &line);
                        if (r < 0)
                                return r;
                        r = strv_push(&lines, line);
                        if (r < 0)
                                return r;
                }
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        } else {
                char *line = NULL;

                r = format_scalar_line(name, contents, m, &line);
                if (r < 0)
                        return r;
                r = strv_push(&lines, line);
                if (r < 0)
                        return r;
        }

        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        if (!lines) {
                lines = calloc(1, sizeof(char *));
                if (!lines)
                        return -ENOMEM;
        }
        *ret_lines = TAKE_PTR(lines);
        return 0;
}

/* ---- fields ---- */

void field_list_done(FieldList *l) {
        for (size_t i = 0; i < l->n; i++) {
                free(l->items[i].name);
                strv_free(l->items[i].lines);
        }
        free(l->items);
        *l = (FieldList){};
}

/* Takes ownership of lines, also on failure. */
int field_list_add(FieldList *l, const char *name, char **lines) {
        Field *items;
        char *n;

        n = strdup(name);
        items = n ? reallocarray(l->items, l->n + 1, sizeof(Field)) : NULL;
        if (!items) {
                free(n);
                strv_free(lines);
                return -ENOMEM;
        }
        l->items = items;
        l->items[l->n++] = (Field){.name = n, .lines = lines};
        return 0;
}

int field_list_add_one(FieldList *l, const char *name, const char *value) {
        char **lines = calloc(2, sizeof(char *));

        if (!lines)
                return -ENOMEM;
        lines[0] = strdup(value);
        if (!lines[0]) {
                free(lines);
                return -ENOMEM;
        }
        return field_list_add(l, name, lines);
}

/* "Name: value" with the names right-aligned, continuation lines of arrays under the first,
 * and "-" for empty arrays. */
int field_list_print(const FieldList *l) {
        int width = 0;

        for (size_t i = 0; i < l->n; i++)
                if ((int) strlen(l->items[i].name) > width)
                        width = (int) strlen(l->items[i].name);

        for (size_t i = 0; i < l->n; i++) {
                char **lines = l->items[i].lines;

                if (!lines || !lines[0]) {
                        printf("%*s: -\n", width, l->items[i].name);
                        continue;
                }
                for (size_t j = 0; lines[j]; j++) {
                        _cleanup_free_ char *e = escape_human(lines[j]);

                        if (!e)
                                return -ENOMEM;
                        if (j == 0)
                                printf("%*s: %s\n", width, l->items[i].name, e);
                        else
                                printf("%*s  %s\n", width, "", e);
                }
        }
        return 0;
}

/* Reads an a{sv} into formatted fields, in the order the daemon sent them. */
static int field_add_property(sd_bus_message *m, const char *key, const char *contents,
                              void *userdata) {
        char **lines = NULL;
        int r;

        r = format_property(key, m, &lines);
        if (r < 0)
                return r;
        r = field_list_add(userdata, key, lines);
        return r < 0 ? r : 1;
}

int field_list_read(sd_bus_message *m, FieldList *l) {
        return bus_read_properties(m, field_add_property, l);
}
