/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Unit tests of daemon/state/options.c. No bus daemon: sd-bus only needs a started bus object to
 * create messages, so each test gets one on a socketpair (it stays in the authentication
 * state forever, which is fine because nothing is ever sent), builds a method call with the
 * a{sv} followed by a sentinel string, seals and rewinds it, and parses it as the daemon would.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "loopmgr-bus.h"
#include "options-bus.h"
#include "options.h"
#include "util.h"

#define SENTINEL "after-the-dict"

typedef struct Fixture {
        sd_bus *bus;
        int peer_fd;
} Fixture;

static int setup(void **state) {
        Fixture *f;
        int fds[2];

        f = calloc(1, sizeof(*f));
        assert_non_null(f);

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
        assert_int_equal(sd_bus_new(&f->bus), 0);
        /* The bus owns fds[0] from here on and closes it when freed. */
        assert_int_equal(sd_bus_set_fd(f->bus, fds[0], fds[0]), 0);
        assert_true(sd_bus_start(f->bus) >= 0);
        f->peer_fd = fds[1];

        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        sd_bus_close_unref(f->bus);
        safe_close(f->peer_fd);
        free(f);
        return 0;
}

/*
 * Appends one dict entry whose variant has signature sig; the value comes from ap in the C
 * type that sd_bus_message_append() would take ("as" takes a NULL-terminated char **).
 */
static void append_entry(sd_bus_message *m, const char *key, const char *sig, va_list *ap) {
        assert_true(sd_bus_message_open_container(m, 'e', "sv") >= 0);
        assert_true(sd_bus_message_append_basic(m, 's', key) >= 0);
        assert_true(sd_bus_message_open_container(m, 'v', sig) >= 0);

        if (streq(sig, "t") || streq(sig, "x")) {
                uint64_t v = va_arg(*ap, uint64_t);
                assert_true(sd_bus_message_append_basic(m, sig[0], &v) >= 0);
        } else if (streq(sig, "u") || streq(sig, "i") || streq(sig, "b")) {
                uint32_t v = va_arg(*ap, uint32_t);
                assert_true(sd_bus_message_append_basic(m, sig[0], &v) >= 0);
        } else if (streq(sig, "d")) {
                double v = va_arg(*ap, double);
                assert_true(sd_bus_message_append_basic(m, 'd', &v) >= 0);
        } else if (streq(sig, "s") || streq(sig, "o")) {
                const char *v = va_arg(*ap, const char *);
                assert_true(sd_bus_message_append_basic(m, sig[0], v) >= 0);
        } else if (streq(sig, "as")) {
                char **v = va_arg(*ap, char **);
                assert_true(sd_bus_message_append_strv(m, v) >= 0);
        } else
                fail_msg("test helper does not know signature '%s'", sig);

        assert_true(sd_bus_message_close_container(m) >= 0);
        assert_true(sd_bus_message_close_container(m) >= 0);
}

/* build(f, key1, sig1, value1, key2, ..., NULL): a sealed, rewound method call holding
 * a{sv} and then the sentinel string. */
static sd_bus_message *build(Fixture *f, ...) {
        sd_bus_message *m = NULL;
        const char *key;
        va_list ap;

        assert_true(sd_bus_message_new_method_call(f->bus, &m, LOOPMGR_BUS_NAME,
                                                   LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE,
                                                   "Test") >= 0);
        assert_true(sd_bus_message_open_container(m, 'a', "{sv}") >= 0);

        va_start(ap, f);
        while ((key = va_arg(ap, const char *))) {
                const char *sig = va_arg(ap, const char *);
                append_entry(m, key, sig, &ap);
        }
        va_end(ap);

        assert_true(sd_bus_message_close_container(m) >= 0);
        assert_true(sd_bus_message_append_basic(m, 's', SENTINEL) >= 0);
        assert_true(sd_bus_message_seal(m, 1, 0) >= 0);
        assert_true(sd_bus_message_rewind(m, true) >= 0);
        return m;
}

static void assert_after_dict(sd_bus_message *m) {
        const char *s = NULL;

        assert_int_equal(sd_bus_message_read_basic(m, 's', &s), 1);
        assert_string_equal(s, SENTINEL);
}

/* Checks an InvalidArgs refusal whose message contains every given fragment. */
static void assert_invalid(int r, sd_bus_error *e, const char *fragment1, const char *fragment2) {
        assert_int_equal(r, -EINVAL);
        assert_true(sd_bus_error_has_name(e, SD_BUS_ERROR_INVALID_ARGS));
        assert_non_null(e->message);
        if (fragment1 && !strstr(e->message, fragment1))
                fail_msg("error message '%s' lacks '%s'", e->message, fragment1);
        if (fragment2 && !strstr(e->message, fragment2))
                fail_msg("error message '%s' lacks '%s'", e->message, fragment2);
        /* A sentence a person can act on. */
        assert_true(e->message[strlen(e->message) - 1] == '.');
}

#define PARSE_ATTACH_OK(f, o, ...)                                                                 \
        do {                                                                                       \
                sd_bus_message *_m = build(f, __VA_ARGS__);                                        \
                sd_bus_error _e = SD_BUS_ERROR_NULL;                                               \
                assert_int_equal(attach_options_parse(_m, (o), &_e), 0);                           \
                assert_false(sd_bus_error_is_set(&_e));                                            \
                assert_after_dict(_m);                                                             \
                sd_bus_message_unref(_m);                                                          \
        } while (0)

/* Parses with a poisoned output struct and checks that a refusal leaves it untouched. */
#define PARSE_ATTACH_FAIL(f, frag1, frag2, ...)                                                    \
        do {                                                                                       \
                sd_bus_message *_m = build(f, __VA_ARGS__);                                        \
                sd_bus_error _e = SD_BUS_ERROR_NULL;                                               \
                AttachOptions _o, _poison;                                                         \
                memset(&_poison, 0xa5, sizeof(_poison));                                           \
                _o = _poison;                                                                      \
                assert_invalid(attach_options_parse(_m, &_o, &_e), &_e, frag1, frag2);             \
                assert_memory_equal(&_o, &_poison, sizeof(_o));                                    \
                sd_bus_error_free(&_e);                                                            \
                sd_bus_message_unref(_m);                                                          \
        } while (0)

#define PARSE_DETACH_OK(f, o, ...)                                                                 \
        do {                                                                                       \
                sd_bus_message *_m = build(f, __VA_ARGS__);                                        \
                sd_bus_error _e = SD_BUS_ERROR_NULL;                                               \
                assert_int_equal(detach_options_parse(_m, (o), &_e), 0);                           \
                assert_after_dict(_m);                                                             \
                sd_bus_message_unref(_m);                                                          \
        } while (0)

#define PARSE_DETACH_FAIL(f, frag1, frag2, ...)                                                    \
        do {                                                                                       \
                sd_bus_message *_m = build(f, __VA_ARGS__);                                        \
                sd_bus_error _e = SD_BUS_ERROR_NULL;                                               \
                DetachOptions _o, _poison;                                                         \
                memset(&_poison, 0x5a, sizeof(_poison));                                           \
                _o = _poison;                                                                      \
                assert_invalid(detach_options_parse(_m, &_o, &_e), &_e, frag1, frag2);             \
                assert_memory_equal(&_o, &_poison, sizeof(_o));                                    \
                sd_bus_error_free(&_e);                                                            \
                sd_bus_message_unref(_m);                                                          \
        } while (0)

#define PARSE_COMMON_FAIL(f, frag1, frag2, ...)                                                    \
        do {                                                                                       \
                sd_bus_message *_m = build(f, __VA_ARGS__);                                        \
                sd_bus_error _e = SD_BUS_ERROR_NULL;                                               \
                CommonOptions _o = {};                                                             \
                assert_invalid(common_options_parse(_m, &_o, &_e), &_e, frag1, frag2);             \
                assert_false(_o.no_user_interaction);                                              \
                sd_bus_error_free(&_e);                                                            \
                sd_bus_message_unref(_m);                                                          \
        } while (0)

static void assert_attach_defaults(const AttachOptions *o) {
        assert_int_equal(o->offset, 0);
        assert_int_equal(o->size_limit, 0);
        assert_int_equal(o->read_only, -1);
        assert_false(o->partscan);
        assert_int_equal(o->direct_io, DIRECT_IO_AUTO);
        assert_int_equal(o->sector_size, 0);
        assert_int_equal(o->sharing, SHARING_SHARED);
        assert_int_equal(o->lifetime, LIFETIME_PERSISTENT);
        assert_true(o->wait_udev);
        assert_int_equal(o->timeout_usec, LOOPMGR_DEFAULT_TIMEOUT_USEC);
        assert_false(o->no_user_interaction);
        assert_int_equal(o->device, -1);
}

static void test_attach_defaults(void **state) {
        AttachOptions o;

        attach_options_init(&o);
        assert_attach_defaults(&o);

        /* An empty dictionary gives the defaults whatever the struct held before. */
        memset(&o, 0xff, sizeof(o));
        PARSE_ATTACH_OK(*state, &o, NULL);
        assert_attach_defaults(&o);
}

static void test_attach_all_keys(void **state) {
        AttachOptions o;

        /* clang-format off */
        PARSE_ATTACH_OK(*state, &o,
                        LOOPMGR_OPT_OFFSET, "t", UINT64_C(1048576),
                        LOOPMGR_OPT_SIZE_LIMIT, "t", UINT64_C(4194304),
                        LOOPMGR_OPT_READ_ONLY, "b", 1,
                        LOOPMGR_OPT_PARTSCAN, "b", 1,
                        LOOPMGR_OPT_DIRECT_IO, "s", "on",
                        LOOPMGR_OPT_SECTOR_SIZE, "u", 4096,
                        LOOPMGR_OPT_SHARING, "s", "exclusive",
                        LOOPMGR_OPT_LIFETIME, "s", "client",
                        LOOPMGR_OPT_WAIT_UDEV, "b", 0,
                        LOOPMGR_OPT_TIMEOUT_USEC, "t", UINT64_C(2500000),
                        LOOPMGR_OPT_NO_USER_INTERACTION, "b", 1,
                        NULL);
        /* clang-format on */
        assert_int_equal(o.offset, 1048576);
        assert_int_equal(o.size_limit, 4194304);
        assert_int_equal(o.read_only, 1);
        assert_true(o.partscan);
        assert_int_equal(o.direct_io, DIRECT_IO_ON);
        assert_int_equal(o.sector_size, 4096);
        assert_int_equal(o.sharing, SHARING_EXCLUSIVE);
        assert_int_equal(o.lifetime, LIFETIME_CLIENT);
        assert_false(o.wait_udev);
        assert_int_equal(o.timeout_usec, 2500000);
        assert_true(o.no_user_interaction);
}

static void test_attach_good_values(void **state) {
        static const uint32_t sector_sizes[] = {512, 1024, 2048, 4096};
        AttachOptions o;

        /* Explicit false is recorded as 0, not as "not given". */
        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_READ_ONLY, "b", 0, NULL);
        assert_int_equal(o.read_only, 0);

        /* clang-format off */
        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_SIZE_LIMIT, "t", UINT64_C(0),
                        LOOPMGR_OPT_OFFSET, "t", UINT64_C(0), NULL);
        /* clang-format on */
        assert_int_equal(o.size_limit, 0);
        assert_int_equal(o.offset, 0);

        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_OFFSET, "t", UINT64_C(512), NULL);
        assert_int_equal(o.offset, 512);

        /* The largest offset the kernel's loff_t can hold, rounded down to 512. */
        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_OFFSET, "t", (uint64_t) INT64_MAX / 512 * 512,
                        NULL);
        assert_int_equal(o.offset, (uint64_t) INT64_MAX / 512 * 512);

        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_DIRECT_IO, "s", "off", NULL);
        assert_int_equal(o.direct_io, DIRECT_IO_OFF);
        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_DIRECT_IO, "s", "auto", NULL);
        assert_int_equal(o.direct_io, DIRECT_IO_AUTO);

        for (size_t i = 0; i < ELEMENTSOF(sector_sizes); i++) {
                PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_SECTOR_SIZE, "u", sector_sizes[i], NULL);
                assert_int_equal(o.sector_size, sector_sizes[i]);
        }

        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_SHARING, "s", "shared", NULL);
        assert_int_equal(o.sharing, SHARING_SHARED);
        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_LIFETIME, "s", "persistent", NULL);
        assert_int_equal(o.lifetime, LIFETIME_PERSISTENT);
        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_WAIT_UDEV, "b", 1, NULL);
        assert_true(o.wait_udev);
        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_PARTSCAN, "b", 0, NULL);
        assert_false(o.partscan);

        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_TIMEOUT_USEC, "t", UINT64_C(1), NULL);
        assert_int_equal(o.timeout_usec, 1);
        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_TIMEOUT_USEC, "t", UINT64_C(3600000000), NULL);
        assert_int_equal(o.timeout_usec, UINT64_C(3600000000));

        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_DEVICE, "s", "loop0", NULL);
        assert_int_equal(o.device, 0);
        PARSE_ATTACH_OK(*state, &o, LOOPMGR_OPT_DEVICE, "s", "/dev/loop17", NULL);
        assert_int_equal(o.device, 17);
}

static void test_attach_bad_device(void **state) {
        PARSE_ATTACH_FAIL(*state, "Option 'device' must name a loop device as 'loopN' or ",
                          "got 'sda'.", LOOPMGR_OPT_DEVICE, "s", "sda", NULL);
        PARSE_ATTACH_FAIL(*state, "'device'", "got 'loop01'.", LOOPMGR_OPT_DEVICE, "s", "loop01",
                          NULL);
        PARSE_ATTACH_FAIL(*state, "'device'", "got '/dev/loop'.", LOOPMGR_OPT_DEVICE, "s",
                          "/dev/loop", NULL);
        PARSE_ATTACH_FAIL(*state, "'device'", "got '/dev//dev/loop1'.", LOOPMGR_OPT_DEVICE, "s",
                          "/dev//dev/loop1", NULL);
        PARSE_ATTACH_FAIL(*state, "'device'", "got 'loop4294967296'.", LOOPMGR_OPT_DEVICE, "s",
                          "loop4294967296", NULL);
        PARSE_ATTACH_FAIL(*state, "'device'", "got ''.", LOOPMGR_OPT_DEVICE, "s", "", NULL);
        PARSE_ATTACH_FAIL(*state, "'device'", "expected 's'", LOOPMGR_OPT_DEVICE, "u", 3, NULL);
        /* An attach option only. */
        PARSE_DETACH_FAIL(*state, "'device'", "attach option", LOOPMGR_OPT_DEVICE, "s", "loop0",
                          NULL);
}

static void test_attach_wrong_types(void **state) {
        static char *strv[] = {(char *) "on", NULL};

        /* The brief's exact wording, once. */
        PARSE_ATTACH_FAIL(*state, "Option 'offset' has type 's', expected 't' (uint64).", NULL,
                          LOOPMGR_OPT_OFFSET, "s", "4096", NULL);

        /* uint32 where uint64 is expected is still wrong: no silent widening. */
        PARSE_ATTACH_FAIL(*state, "'offset'", "has type 'u'", LOOPMGR_OPT_OFFSET, "u", 4096, NULL);
        PARSE_ATTACH_FAIL(*state, "'size-limit'", "has type 'x'", LOOPMGR_OPT_SIZE_LIMIT, "x",
                          UINT64_C(4096), NULL);
        PARSE_ATTACH_FAIL(*state, "'read-only'", "expected 'b' (boolean)", LOOPMGR_OPT_READ_ONLY,
                          "u", 1, NULL);
        PARSE_ATTACH_FAIL(*state, "'partscan'", "has type 's'", LOOPMGR_OPT_PARTSCAN, "s", "true",
                          NULL);
        PARSE_ATTACH_FAIL(*state, "'direct-io'", "expected 's' (string)", LOOPMGR_OPT_DIRECT_IO,
                          "b", 1, NULL);
        PARSE_ATTACH_FAIL(*state, "'direct-io'", "has type 'as'", LOOPMGR_OPT_DIRECT_IO, "as", strv,
                          NULL);
        PARSE_ATTACH_FAIL(*state, "'sector-size'", "expected 'u' (uint32)", LOOPMGR_OPT_SECTOR_SIZE,
                          "t", UINT64_C(4096), NULL);
        PARSE_ATTACH_FAIL(*state, "'sector-size'", "has type 'i'", LOOPMGR_OPT_SECTOR_SIZE, "i",
                          4096, NULL);
        PARSE_ATTACH_FAIL(*state, "'sharing'", "has type 'o'", LOOPMGR_OPT_SHARING, "o", "/shared",
                          NULL);
        PARSE_ATTACH_FAIL(*state, "'lifetime'", "has type 'b'", LOOPMGR_OPT_LIFETIME, "b", 1, NULL);
        PARSE_ATTACH_FAIL(*state, "'wait-udev'", "has type 'd'", LOOPMGR_OPT_WAIT_UDEV, "d", 1.0,
                          NULL);
        PARSE_ATTACH_FAIL(*state, "'timeout-usec'", "has type 'u'", LOOPMGR_OPT_TIMEOUT_USEC, "u",
                          1000, NULL);
        PARSE_ATTACH_FAIL(*state, "'auth.no_user_interaction'", "has type 's'",
                          LOOPMGR_OPT_NO_USER_INTERACTION, "s", "yes", NULL);

        /* A wrong type after good keys is still found. */
        /* clang-format off */
        PARSE_ATTACH_FAIL(*state, "'partscan'", "has type 'u'",
                          LOOPMGR_OPT_OFFSET, "t", UINT64_C(512),
                          LOOPMGR_OPT_READ_ONLY, "b", 1,
                          LOOPMGR_OPT_PARTSCAN, "u", 1, NULL);
        /* clang-format on */
}

static void test_attach_bad_values(void **state) {
        PARSE_ATTACH_FAIL(*state, "Option 'sector-size' must be 512, 1024, 2048 or 4096, got 513.",
                          NULL, LOOPMGR_OPT_SECTOR_SIZE, "u", 513, NULL);
        PARSE_ATTACH_FAIL(*state, "'sector-size'", "got 0.", LOOPMGR_OPT_SECTOR_SIZE, "u", 0, NULL);
        PARSE_ATTACH_FAIL(*state, "'sector-size'", "got 256.", LOOPMGR_OPT_SECTOR_SIZE, "u", 256,
                          NULL);
        PARSE_ATTACH_FAIL(*state, "'sector-size'", "got 8192.", LOOPMGR_OPT_SECTOR_SIZE, "u", 8192,
                          NULL);

        PARSE_ATTACH_FAIL(*state, "'offset'", "multiple of 512, got 513.", LOOPMGR_OPT_OFFSET, "t",
                          UINT64_C(513), NULL);
        PARSE_ATTACH_FAIL(*state, "'offset'", "multiple of 512, got 1.", LOOPMGR_OPT_OFFSET, "t",
                          UINT64_C(1), NULL);
        /* A multiple of 512 that does not fit the kernel's signed loff_t. */
        PARSE_ATTACH_FAIL(*state, "'offset'", "must be at most", LOOPMGR_OPT_OFFSET, "t",
                          UINT64_C(1) << 63, NULL);
        PARSE_ATTACH_FAIL(*state, "'size-limit'", "multiple of 512, got 100.",
                          LOOPMGR_OPT_SIZE_LIMIT, "t", UINT64_C(100), NULL);
        PARSE_ATTACH_FAIL(*state, "'size-limit'", "must be at most", LOOPMGR_OPT_SIZE_LIMIT, "t",
                          UINT64_MAX - 511, NULL);
        /* Each fine on its own, the sum overflows. */
        /* clang-format off */
        PARSE_ATTACH_FAIL(*state, "'offset'", "'size-limit'",
                          LOOPMGR_OPT_OFFSET, "t", UINT64_C(1) << 62,
                          LOOPMGR_OPT_SIZE_LIMIT, "t", UINT64_C(1) << 62, NULL);
        /* clang-format on */

        PARSE_ATTACH_FAIL(*state, "'direct-io'", "got 'maybe'.", LOOPMGR_OPT_DIRECT_IO, "s",
                          "maybe", NULL);
        PARSE_ATTACH_FAIL(*state, "'direct-io'", "got 'ON'.", LOOPMGR_OPT_DIRECT_IO, "s", "ON",
                          NULL);
        PARSE_ATTACH_FAIL(*state, "'direct-io'", "got ''.", LOOPMGR_OPT_DIRECT_IO, "s", "", NULL);
        PARSE_ATTACH_FAIL(*state, "'sharing'", "'shared' or 'exclusive', got 'private'.",
                          LOOPMGR_OPT_SHARING, "s", "private", NULL);
        PARSE_ATTACH_FAIL(*state, "'lifetime'", "'persistent' or 'client', got 'forever'.",
                          LOOPMGR_OPT_LIFETIME, "s", "forever", NULL);

        PARSE_ATTACH_FAIL(*state, "'timeout-usec'", "got 0.", LOOPMGR_OPT_TIMEOUT_USEC, "t",
                          UINT64_C(0), NULL);
        PARSE_ATTACH_FAIL(*state, "'timeout-usec'", "1 hour", LOOPMGR_OPT_TIMEOUT_USEC, "t",
                          UINT64_C(3600000001), NULL);
        PARSE_ATTACH_FAIL(*state, "'timeout-usec'", "got 18446744073709551615.",
                          LOOPMGR_OPT_TIMEOUT_USEC, "t", UINT64_MAX, NULL);
}

static void test_attach_unknown_and_duplicate(void **state) {
        PARSE_ATTACH_FAIL(*state, "Unknown option 'ofset'.", NULL, "ofset", "t", UINT64_C(512),
                          NULL);
        PARSE_ATTACH_FAIL(*state, "Unknown option ''.", NULL, "", "b", 1, NULL);
        /* Keys are case-sensitive, like every D-Bus name. */
        PARSE_ATTACH_FAIL(*state, "Unknown option 'Offset'.", NULL, "Offset", "t", UINT64_C(512),
                          NULL);
        /* Unknown keys are refused even after valid ones, and whatever their type. */
        /* clang-format off */
        PARSE_ATTACH_FAIL(*state, "Unknown option 'autoclear'.", NULL,
                          LOOPMGR_OPT_OFFSET, "t", UINT64_C(512),
                          "autoclear", "b", 1, NULL);
        /* clang-format on */

        /* clang-format off */
        PARSE_ATTACH_FAIL(*state, "Option 'offset' is given more than once.", NULL,
                          LOOPMGR_OPT_OFFSET, "t", UINT64_C(512),
                          LOOPMGR_OPT_OFFSET, "t", UINT64_C(512), NULL);
        /* clang-format on */
        /* clang-format off */
        PARSE_ATTACH_FAIL(*state, "'read-only'", "more than once",
                          LOOPMGR_OPT_READ_ONLY, "b", 1,
                          LOOPMGR_OPT_PARTSCAN, "b", 1,
                          LOOPMGR_OPT_READ_ONLY, "b", 0, NULL);
        /* clang-format on */
        /* The duplicate is reported as such even when its type is also wrong. */
        /* clang-format off */
        PARSE_ATTACH_FAIL(*state, "'lifetime'", "more than once",
                          LOOPMGR_OPT_LIFETIME, "s", "client",
                          LOOPMGR_OPT_LIFETIME, "b", 1, NULL);
        /* clang-format on */
}

static void test_attach_refuses_detach_keys(void **state) {
        PARSE_ATTACH_FAIL(*state, "'wait'", "detach option", LOOPMGR_OPT_WAIT, "b", 1, NULL);
        PARSE_ATTACH_FAIL(*state, "'recursive'", "detach option", LOOPMGR_OPT_RECURSIVE, "b", 1,
                          NULL);
        PARSE_ATTACH_FAIL(*state, "'all-references'", "detach option", LOOPMGR_OPT_ALL_REFERENCES,
                          "b", 1, NULL);
}

static void test_detach_defaults(void **state) {
        DetachOptions o;

        memset(&o, 0xff, sizeof(o));
        PARSE_DETACH_OK(*state, &o, NULL);
        assert_false(o.wait);
        assert_false(o.recursive);
        assert_false(o.all_references);
        assert_int_equal(o.timeout_usec, LOOPMGR_DEFAULT_TIMEOUT_USEC);
        assert_false(o.no_user_interaction);

        memset(&o, 0xff, sizeof(o));
        detach_options_init(&o);
        assert_false(o.wait);
        assert_int_equal(o.timeout_usec, LOOPMGR_DEFAULT_TIMEOUT_USEC);
}

static void test_detach_all_keys(void **state) {
        DetachOptions o;

        /* clang-format off */
        PARSE_DETACH_OK(*state, &o,
                        LOOPMGR_OPT_WAIT, "b", 1,
                        LOOPMGR_OPT_RECURSIVE, "b", 1,
                        LOOPMGR_OPT_ALL_REFERENCES, "b", 1,
                        LOOPMGR_OPT_TIMEOUT_USEC, "t", UINT64_C(30000000),
                        LOOPMGR_OPT_NO_USER_INTERACTION, "b", 1,
                        NULL);
        /* clang-format on */
        assert_true(o.wait);
        assert_true(o.recursive);
        assert_true(o.all_references);
        assert_int_equal(o.timeout_usec, 30000000);
        assert_true(o.no_user_interaction);

        /* clang-format off */
        PARSE_DETACH_OK(*state, &o, LOOPMGR_OPT_WAIT, "b", 0, LOOPMGR_OPT_RECURSIVE, "b", 0,
                        NULL);
        /* clang-format on */
        assert_false(o.wait);
        assert_false(o.recursive);
}

static void test_detach_wrong_types_and_values(void **state) {
        PARSE_DETACH_FAIL(*state, "'wait'", "has type 's', expected 'b' (boolean)",
                          LOOPMGR_OPT_WAIT, "s", "yes", NULL);
        PARSE_DETACH_FAIL(*state, "'recursive'", "has type 'u'", LOOPMGR_OPT_RECURSIVE, "u", 1,
                          NULL);
        PARSE_DETACH_FAIL(*state, "'all-references'", "has type 't'", LOOPMGR_OPT_ALL_REFERENCES,
                          "t", UINT64_C(1), NULL);
        PARSE_DETACH_FAIL(*state, "'timeout-usec'", "has type 'd'", LOOPMGR_OPT_TIMEOUT_USEC, "d",
                          1.5, NULL);
        PARSE_DETACH_FAIL(*state, "'auth.no_user_interaction'", "has type 'u'",
                          LOOPMGR_OPT_NO_USER_INTERACTION, "u", 0, NULL);

        PARSE_DETACH_FAIL(*state, "'timeout-usec'", "got 0.", LOOPMGR_OPT_TIMEOUT_USEC, "t",
                          UINT64_C(0), NULL);
        PARSE_DETACH_FAIL(*state, "'timeout-usec'", "1 hour", LOOPMGR_OPT_TIMEOUT_USEC, "t",
                          UINT64_C(7200000000), NULL);

        PARSE_DETACH_FAIL(*state, "Unknown option 'force'.", NULL, "force", "b", 1, NULL);
        /* clang-format off */
        PARSE_DETACH_FAIL(*state, "'wait'", "more than once",
                          LOOPMGR_OPT_WAIT, "b", 1, LOOPMGR_OPT_WAIT, "b", 1, NULL);
        /* clang-format on */
}

static void test_detach_refuses_attach_keys(void **state) {
        PARSE_DETACH_FAIL(*state, "Option 'offset' is an attach option", NULL, LOOPMGR_OPT_OFFSET,
                          "t", UINT64_C(0), NULL);
        PARSE_DETACH_FAIL(*state, "'read-only'", "attach option", LOOPMGR_OPT_READ_ONLY, "b", 1,
                          NULL);
        PARSE_DETACH_FAIL(*state, "'wait-udev'", "attach option", LOOPMGR_OPT_WAIT_UDEV, "b", 1,
                          NULL);
        PARSE_DETACH_FAIL(*state, "'lifetime'", "attach option", LOOPMGR_OPT_LIFETIME, "s",
                          "client", NULL);
}

static void test_common(void **state) {
        sd_bus_message *m;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        CommonOptions o;

        m = build(*state, NULL);
        o.no_user_interaction = true;
        assert_int_equal(common_options_parse(m, &o, &e), 0);
        assert_false(o.no_user_interaction);
        assert_after_dict(m);
        sd_bus_message_unref(m);

        m = build(*state, LOOPMGR_OPT_NO_USER_INTERACTION, "b", 1, NULL);
        assert_int_equal(common_options_parse(m, &o, &e), 0);
        assert_true(o.no_user_interaction);
        assert_after_dict(m);
        sd_bus_message_unref(m);

        PARSE_COMMON_FAIL(*state, "'auth.no_user_interaction'", "has type 's'",
                          LOOPMGR_OPT_NO_USER_INTERACTION, "s", "true", NULL);
        PARSE_COMMON_FAIL(*state, "'offset'", "attach option", LOOPMGR_OPT_OFFSET, "t", UINT64_C(0),
                          NULL);
        PARSE_COMMON_FAIL(*state, "'timeout-usec'", "attach option", LOOPMGR_OPT_TIMEOUT_USEC, "t",
                          UINT64_C(1000), NULL);
        PARSE_COMMON_FAIL(*state, "'wait'", "detach option", LOOPMGR_OPT_WAIT, "b", 1, NULL);
        PARSE_COMMON_FAIL(*state, "Unknown option 'x'.", NULL, "x", "b", 1, NULL);
        /* clang-format off */
        PARSE_COMMON_FAIL(*state, "'auth.no_user_interaction'", "more than once",
                          LOOPMGR_OPT_NO_USER_INTERACTION, "b", 1,
                          LOOPMGR_OPT_NO_USER_INTERACTION, "b", 1, NULL);
        /* clang-format on */
}

static void test_wrong_dictionary_type(void **state) {
        Fixture *f = *state;
        sd_bus_message *m = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        AttachOptions o;

        /* The vtable signature normally guarantees a{sv}; the parser must not trust that. */
        assert_true(sd_bus_message_new_method_call(f->bus, &m, LOOPMGR_BUS_NAME,
                                                   LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE,
                                                   "Test") >= 0);
        assert_true(sd_bus_message_append(m, "a{ss}", 1, "offset", "0") >= 0);
        assert_true(sd_bus_message_seal(m, 1, 0) >= 0);
        assert_true(sd_bus_message_rewind(m, true) >= 0);

        assert_invalid(attach_options_parse(m, &o, &e), &e, "a{sv}", NULL);
        sd_bus_error_free(&e);
        sd_bus_message_unref(m);
}

static void test_to_string(void **state) {
        assert_string_equal(direct_io_mode_to_string(DIRECT_IO_AUTO), "auto");
        assert_string_equal(direct_io_mode_to_string(DIRECT_IO_ON), "on");
        assert_string_equal(direct_io_mode_to_string(DIRECT_IO_OFF), "off");
        assert_null(direct_io_mode_to_string((DirectIOMode) 42));
        assert_string_equal(sharing_to_string(SHARING_SHARED), "shared");
        assert_string_equal(sharing_to_string(SHARING_EXCLUSIVE), "exclusive");
        assert_null(sharing_to_string((Sharing) 42));
        assert_string_equal(lifetime_to_string(LIFETIME_PERSISTENT), "persistent");
        assert_string_equal(lifetime_to_string(LIFETIME_CLIENT), "client");
        assert_null(lifetime_to_string((Lifetime) 42));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_attach_defaults, setup, teardown),
                cmocka_unit_test_setup_teardown(test_attach_all_keys, setup, teardown),
                cmocka_unit_test_setup_teardown(test_attach_good_values, setup, teardown),
                cmocka_unit_test_setup_teardown(test_attach_wrong_types, setup, teardown),
                cmocka_unit_test_setup_teardown(test_attach_bad_values, setup, teardown),
                cmocka_unit_test_setup_teardown(test_attach_bad_device, setup, teardown),
                cmocka_unit_test_setup_teardown(test_attach_unknown_and_duplicate, setup, teardown),
                cmocka_unit_test_setup_teardown(test_attach_refuses_detach_keys, setup, teardown),
                cmocka_unit_test_setup_teardown(test_detach_defaults, setup, teardown),
                cmocka_unit_test_setup_teardown(test_detach_all_keys, setup, teardown),
                cmocka_unit_test_setup_teardown(test_detach_wrong_types_and_values, setup,
                                                teardown),
                cmocka_unit_test_setup_teardown(test_detach_refuses_attach_keys, setup, teardown),
                cmocka_unit_test_setup_teardown(test_common, setup, teardown),
                cmocka_unit_test_setup_teardown(test_wrong_dictionary_type, setup, teardown),
                cmocka_unit_test(test_to_string),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
