/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * libFuzzer target for daemon/state/options.c: attach_options_parse(), detach_options_parse() and
 * common_options_parse(), the first code that touches an unprivileged caller's bytes.
 *
 * The input is decoded into a sequence of (key, D-Bus type, value) entries, which are packed
 * into a real a{sv} with sd-bus (on a socketpair bus that never authenticates, as
 * tests/test-options.c does: sd-bus only needs a started bus object to build messages),
 * sealed, rewound and parsed as the daemon would. Beside "does not crash", the target keeps
 * its own model of the option rules of docs/API.md and aborts when the parser disagrees:
 * accepted input must be exactly what the model accepts (and the parsed values must be the
 * ones given), refused input must be InvalidArgs with a message, and after a successful
 * parse the read pointer must be right after the dictionary.
 *
 * Input layout (everything is optional; missing bytes read as zero):
 *
 *   byte 0        bits 0-1: which parser (0 attach, 1 detach, 2 common, 3 attach)
 *                 bits 2-4: framing; 0-3 a{sv} then a sentinel string, 4 a{ss}, 5 as,
 *                           6 nothing at all, 7 a{sv} wrapped in a variant. 4-7 violate the
 *                           parsers' precondition (sd-bus checks the method signature before
 *                           the daemon sees a message), so there only crashes count.
 *   then entries  key byte:  < 0xe0 one of the known and near-miss keys below,
 *                            >= 0xe0 a literal key: length byte (mod 48), then the bytes
 *                 type byte: one of the variant types below (known types and unexpected
 *                            ones, containers included)
 *                 value:     8 bytes for numbers, length byte + bytes for strings
 */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "loopmgr-bus.h"
#include "options-bus.h"
#include "options.h"
#include "util.h"

#define SENTINEL    "after-the-dict"
#define MAX_ENTRIES 64
/* What options.c promises (docs/API.md): offsets in the kernel's signed loff_t, timeouts up
 * to one hour. */
#define RANGE_MAX   ((uint64_t) INT64_MAX)
#define TIMEOUT_MAX (3600ULL * 1000ULL * 1000ULL)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef enum Set {
        SET_ATTACH,
        SET_DETACH,
        SET_COMMON,
} Set;

/* The model: for each key, the one type it takes and the dictionaries that accept it. */
typedef struct Key {
        const char *name;
        char type; /* 0: no such option anywhere */
        unsigned sets;
} Key;

#define A (1u << SET_ATTACH)
#define D (1u << SET_DETACH)
#define C (1u << SET_COMMON)

enum {
        K_OFFSET,
        K_SIZE_LIMIT,
        K_READ_ONLY,
        K_PARTSCAN,
        K_DIRECT_IO,
        K_SECTOR_SIZE,
        K_SHARING,
        K_LIFETIME,
        K_WAIT_UDEV,
        K_TIMEOUT_USEC,
        K_NO_USER_INTERACTION,
        K_WAIT,
        K_RECURSIVE,
        K_ALL_REFERENCES,
        _K_KNOWN,
};

static const Key keys[] = {
        [K_OFFSET] = {LOOPMGR_OPT_OFFSET, 't', A},
        [K_SIZE_LIMIT] = {LOOPMGR_OPT_SIZE_LIMIT, 't', A},
        [K_READ_ONLY] = {LOOPMGR_OPT_READ_ONLY, 'b', A},
        [K_PARTSCAN] = {LOOPMGR_OPT_PARTSCAN, 'b', A},
        [K_DIRECT_IO] = {LOOPMGR_OPT_DIRECT_IO, 's', A},
        [K_SECTOR_SIZE] = {LOOPMGR_OPT_SECTOR_SIZE, 'u', A},
        [K_SHARING] = {LOOPMGR_OPT_SHARING, 's', A},
        [K_LIFETIME] = {LOOPMGR_OPT_LIFETIME, 's', A},
        [K_WAIT_UDEV] = {LOOPMGR_OPT_WAIT_UDEV, 'b', A},
        [K_TIMEOUT_USEC] = {LOOPMGR_OPT_TIMEOUT_USEC, 't', A | D},
        [K_NO_USER_INTERACTION] = {LOOPMGR_OPT_NO_USER_INTERACTION, 'b', A | D | C},
        [K_WAIT] = {LOOPMGR_OPT_WAIT, 'b', D},
        [K_RECURSIVE] = {LOOPMGR_OPT_RECURSIVE, 'b', D},
        [K_ALL_REFERENCES] = {LOOPMGR_OPT_ALL_REFERENCES, 'b', D},
        /* Near misses: none of these is an option. */
        {"", 0, 0},
        {"Offset", 0, 0},
        {"readonly", 0, 0},
        {"size_limit", 0, 0},
        {"offset ", 0, 0},
        {"auth.no_user_interaction\x01", 0, 0},
        {"direct-io\xc3\xa9", 0, 0},
        {"timeout", 0, 0},
};

/* Variant contents the decoder can produce. */
static const char *const types[] = {
        "t", "u", "b",  "s",  "i",     "x", "y",    "n",     "q",  "d",
        "o", "g", "as", "ay", "a{sv}", "v", "(tt)", "a{ss}", "at", "(b)",
};

static sd_bus *bus;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        int fds[2];

        /* The peer end stays open (and unread) for the life of the process. */
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0 || sd_bus_new(&bus) < 0 ||
            sd_bus_set_fd(bus, fds[0], fds[0]) < 0 || sd_bus_start(bus) < 0) {
                fprintf(stderr, "fuzz-options: cannot set up an sd-bus object\n");
                abort();
        }
        return 0;
}

/* A cursor over the fuzz input; reads past the end give zeros. */
typedef struct Input {
        const uint8_t *p;
        size_t left;
} Input;

static uint8_t take_u8(Input *in) {
        if (in->left == 0)
                return 0;
        in->left--;
        return *in->p++;
}

static uint64_t take_u64(Input *in) {
        uint64_t v = 0;

        for (unsigned i = 0; i < 8; i++)
                v = (v << 8) | take_u8(in);
        return v;
}

/* A string of at most max bytes, NUL-terminated into buf (size max + 1). sd-bus refuses
 * strings that are not UTF-8, which ends the input early: that is fine. */
static const char *take_string(Input *in, char *buf, size_t max) {
        size_t n = take_u8(in) % (max + 1);

        if (n > in->left)
                n = in->left;
        memcpy(buf, in->p, n);
        buf[n] = '\0';
        in->p += n;
        in->left -= n;
        return buf;
}

/* One decoded entry as the model sees it. */
typedef struct Entry {
        int key; /* index into keys[], or -1 for a literal key */
        char *literal;
        const char *type;
        uint64_t u64;
        char str[64];
} Entry;

/* Appends {key: variant} to the open a{sv}; <0 if sd-bus refused the value. */
static int append_entry(sd_bus_message *m, const char *key, Entry *e, Input *in) {
        const char *t = e->type;
        int r;

        r = sd_bus_message_open_container(m, 'e', "sv");
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(m, 's', key);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, 'v', t);
        if (r < 0)
                return r;

        if (strchr("tuixynq", t[0]) && t[1] == '\0') {
                e->u64 = take_u64(in);
                /* sd-bus reads the width of the type from the pointer. */
                uint64_t v64 = e->u64;
                uint32_t v32 = (uint32_t) e->u64;
                uint16_t v16 = (uint16_t) e->u64;
                uint8_t v8 = (uint8_t) e->u64;
                const void *p = strchr("tx", t[0])   ? (const void *) &v64
                                : strchr("ui", t[0]) ? (const void *) &v32
                                : strchr("nq", t[0]) ? (const void *) &v16
                                                     : (const void *) &v8;
                r = sd_bus_message_append_basic(m, t[0], p);
        } else if (streq(t, "b")) {
                int v = take_u8(in);
                e->u64 = v != 0;
                r = sd_bus_message_append_basic(m, 'b', &v);
        } else if (streq(t, "d")) {
                uint64_t bits = take_u64(in);
                double v;
                memcpy(&v, &bits, sizeof(v));
                r = sd_bus_message_append_basic(m, 'd', &v);
        } else if (streq(t, "s")) {
                r = sd_bus_message_append_basic(m, 's',
                                                take_string(in, e->str, sizeof(e->str) - 1));
        } else if (streq(t, "o")) {
                r = sd_bus_message_append_basic(m, 'o', "/org/loopmgr/LoopManager1/device/1");
        } else if (streq(t, "g")) {
                r = sd_bus_message_append_basic(m, 'g', "ha{sv}");
        } else if (streq(t, "as")) {
                r = sd_bus_message_append(m, "as", 2, take_string(in, e->str, 8), "on");
        } else if (streq(t, "ay")) {
                r = sd_bus_message_append_array(m, 'y', in->p, in->left < 8 ? in->left : 8);
        } else if (streq(t, "a{sv}")) {
                /* A nested dictionary that looks like options. */
                r = sd_bus_message_append(m, "a{sv}", 1, LOOPMGR_OPT_OFFSET, "t", take_u64(in));
        } else if (streq(t, "v")) {
                r = sd_bus_message_append(m, "v", "t", take_u64(in));
        } else if (streq(t, "(tt)")) {
                r = sd_bus_message_append(m, "(tt)", take_u64(in), take_u64(in));
        } else if (streq(t, "a{ss}")) {
                r = sd_bus_message_append(m, "a{ss}", 1, "direct-io", take_string(in, e->str, 8));
        } else if (streq(t, "at")) {
                r = sd_bus_message_append(m, "at", 1, take_u64(in));
        } else if (streq(t, "(b)")) {
                r = sd_bus_message_append(m, "(b)", (int) take_u8(in));
        } else
                abort(); /* types[] and this function are out of step */
        if (r < 0)
                return r;

        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;
        return sd_bus_message_close_container(m);
}

static bool one_of(const char *s, const char *a, const char *b, const char *c) {
        return streq(s, a) || streq(s, b) || (c && streq(s, c));
}

/* The model's verdict on one entry of the given set; fills the expected values. */
static bool entry_valid(Set set, const Entry *e, AttachOptions *ao, DetachOptions *dopt,
                        CommonOptions *co) {
        if (e->key < 0 || e->key >= _K_KNOWN)
                return false;
        const Key *k = &keys[e->key];
        if (!(k->sets & (1u << set)))
                return false;
        if (e->type[0] != k->type || e->type[1] != '\0')
                return false;

        switch (e->key) {
        case K_OFFSET:
        case K_SIZE_LIMIT:
                if (e->u64 % 512 != 0 || e->u64 > RANGE_MAX)
                        return false;
                *(e->key == K_OFFSET ? &ao->offset : &ao->size_limit) = e->u64;
                return true;
        case K_READ_ONLY:
                ao->read_only = (int) e->u64;
                return true;
        case K_PARTSCAN:
                ao->partscan = e->u64;
                return true;
        case K_DIRECT_IO:
                if (!one_of(e->str, "auto", "on", "off"))
                        return false;
                ao->direct_io = streq(e->str, "auto") ? DIRECT_IO_AUTO
                                : streq(e->str, "on") ? DIRECT_IO_ON
                                                      : DIRECT_IO_OFF;
                return true;
        case K_SECTOR_SIZE: {
                uint32_t v = (uint32_t) e->u64;
                if (v != 512 && v != 1024 && v != 2048 && v != 4096)
                        return false;
                ao->sector_size = v;
                return true;
        }
        case K_SHARING:
                if (!one_of(e->str, "shared", "exclusive", NULL))
                        return false;
                ao->sharing = streq(e->str, "shared") ? SHARING_SHARED : SHARING_EXCLUSIVE;
                return true;
        case K_LIFETIME:
                if (!one_of(e->str, "persistent", "client", NULL))
                        return false;
                ao->lifetime = streq(e->str, "persistent") ? LIFETIME_PERSISTENT : LIFETIME_CLIENT;
                return true;
        case K_WAIT_UDEV:
                ao->wait_udev = e->u64;
                return true;
        case K_TIMEOUT_USEC:
                if (e->u64 == 0 || e->u64 > TIMEOUT_MAX)
                        return false;
                if (set == SET_ATTACH)
                        ao->timeout_usec = e->u64;
                else
                        dopt->timeout_usec = e->u64;
                return true;
        case K_NO_USER_INTERACTION:
                ao->no_user_interaction = dopt->no_user_interaction = co->no_user_interaction =
                        e->u64;
                return true;
        case K_WAIT:
                dopt->wait = e->u64;
                return true;
        case K_RECURSIVE:
                dopt->recursive = e->u64;
                return true;
        case K_ALL_REFERENCES:
                dopt->all_references = e->u64;
                return true;
        }
        return false;
}

static void die(const char *what, Set set, int r, const sd_bus_error *error) {
        fprintf(stderr, "fuzz-options: %s (set %d, r=%d, error %s: %s)\n", what, (int) set, r,
                error->name ?: "-", error->message ?: "-");
        abort();
}

static bool attach_equal(const AttachOptions *a, const AttachOptions *b) {
        return a->offset == b->offset && a->size_limit == b->size_limit &&
               a->read_only == b->read_only && a->partscan == b->partscan &&
               a->direct_io == b->direct_io && a->sector_size == b->sector_size &&
               a->sharing == b->sharing && a->lifetime == b->lifetime &&
               a->wait_udev == b->wait_udev && a->timeout_usec == b->timeout_usec &&
               a->no_user_interaction == b->no_user_interaction;
}

static bool detach_equal(const DetachOptions *a, const DetachOptions *b) {
        return a->wait == b->wait && a->recursive == b->recursive &&
               a->all_references == b->all_references && a->timeout_usec == b->timeout_usec &&
               a->no_user_interaction == b->no_user_interaction;
}

static int parse(Set set, sd_bus_message *m, AttachOptions *ao, DetachOptions *dopt,
                 CommonOptions *co, sd_bus_error *error) {
        switch (set) {
        case SET_ATTACH:
                return attach_options_parse(m, ao, error);
        case SET_DETACH:
                return detach_options_parse(m, dopt, error);
        default:
                return common_options_parse(m, co, error);
        }
}

/* Framings 4-7: anything but a plain a{sv} at the read pointer. Only crashes and sanitizer
 * reports count; whatever the parser answers is its business. */
static void run_raw(Set set, unsigned framing, Input *in) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *m = NULL;
        AttachOptions ao;
        DetachOptions dopt;
        CommonOptions co;
        char buf[64];
        int r;

        if (sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Fuzz") < 0)
                abort();
        switch (framing) {
        case 4:
                r = sd_bus_message_append(m, "a{ss}", 1, take_string(in, buf, 32),
                                          take_string(in, buf + 33, 30));
                break;
        case 5:
                r = sd_bus_message_append(m, "as", 1, take_string(in, buf, 32));
                break;
        case 6:
                r = 0;
                break;
        default:
                r = sd_bus_message_append(m, "v", "a{sv}", 1, take_string(in, buf, 32), "t",
                                          take_u64(in));
        }
        if (r >= 0 && sd_bus_message_seal(m, 1, 0) >= 0 && sd_bus_message_rewind(m, true) >= 0)
                (void) parse(set, m, &ao, &dopt, &co, &error);
        sd_bus_error_free(&error);
        sd_bus_message_unref(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Input in = {data, size};
        uint8_t head = take_u8(&in);
        Set set = (head & 3) == 3 ? SET_ATTACH : (Set) (head & 3);
        unsigned framing = (head >> 2) & 7;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *m = NULL;
        Entry entries[MAX_ENTRIES];
        size_t n = 0;
        bool seen[_K_KNOWN] = {};
        bool expect_ok = true;
        AttachOptions ao, want_ao;
        DetachOptions dopt, want_dopt;
        CommonOptions co = {}, want_co = {};
        int r;

        if (!bus)
                (void) LLVMFuzzerInitialize(NULL, NULL);

        if (framing >= 4) {
                run_raw(set, framing, &in);
                return 0;
        }

        attach_options_init(&want_ao);
        detach_options_init(&want_dopt);

        if (sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Fuzz") < 0)
                abort();
        if (sd_bus_message_open_container(m, 'a', "{sv}") < 0)
                abort();

        while (in.left > 0 && n < MAX_ENTRIES) {
                Entry *e = &entries[n];
                uint8_t kb = take_u8(&in);
                const char *key;

                *e = (Entry){};
                if (kb >= 0xe0) {
                        char buf[49];
                        e->key = -1;
                        e->literal = strdup(take_string(&in, buf, 48));
                        if (!e->literal)
                                abort();
                        key = e->literal;
                        /* A literal spelling of a known key is that key. */
                        for (int k = 0; k < _K_KNOWN; k++)
                                if (streq(keys[k].name, key))
                                        e->key = k;
                } else {
                        e->key = kb % ELEMENTSOF(keys);
                        key = keys[e->key].name;
                }
                e->type = types[take_u8(&in) % ELEMENTSOF(types)];
                n++;

                if (append_entry(m, key, e, &in) < 0)
                        goto out; /* sd-bus refused the value (not UTF-8...): nothing to parse */

                if (!expect_ok)
                        continue;
                /* The first problem decides; a known key given twice is one. */
                if (e->key >= 0 && e->key < _K_KNOWN && (keys[e->key].sets & (1u << set))) {
                        if (seen[e->key]) {
                                expect_ok = false;
                                continue;
                        }
                        seen[e->key] = true;
                }
                if (!entry_valid(set, e, &want_ao, &want_dopt, &want_co))
                        expect_ok = false;
        }
        if (sd_bus_message_close_container(m) < 0 ||
            sd_bus_message_append_basic(m, 's', SENTINEL) < 0 || sd_bus_message_seal(m, 1, 0) < 0 ||
            sd_bus_message_rewind(m, true) < 0)
                goto out;

        if (set == SET_ATTACH && expect_ok && want_ao.size_limit > RANGE_MAX - want_ao.offset)
                expect_ok = false;

        r = parse(set, m, &ao, &dopt, &co, &error);
        if (r >= 0) {
                const char *s = NULL;

                if (!expect_ok)
                        die("the parser accepted what the option rules refuse", set, r, &error);
                if (r != 0)
                        die("the parser returned a positive value", set, r, &error);
                if (sd_bus_error_is_set(&error))
                        die("the parser succeeded but set an error", set, r, &error);
                if ((set == SET_ATTACH && !attach_equal(&ao, &want_ao)) ||
                    (set == SET_DETACH && !detach_equal(&dopt, &want_dopt)) ||
                    (set == SET_COMMON && co.no_user_interaction != want_co.no_user_interaction))
                        die("the parsed values differ from the ones given", set, r, &error);
                if (sd_bus_message_read_basic(m, 's', &s) != 1 || !s || !streq(s, SENTINEL))
                        die("the read pointer is not right after the dictionary", set, r, &error);
        } else {
                if (expect_ok)
                        die("the parser refused what the option rules accept", set, r, &error);
                if (!sd_bus_error_has_name(&error, SD_BUS_ERROR_INVALID_ARGS) || r != -EINVAL)
                        die("a refusal that is not InvalidArgs", set, r, &error);
                if (!error.message || !error.message[0])
                        die("InvalidArgs without a message", set, r, &error);
        }

out:
        for (size_t i = 0; i < n; i++)
                free(entries[i].literal);
        sd_bus_error_free(&error);
        sd_bus_message_unref(m);
        return 0;
}
