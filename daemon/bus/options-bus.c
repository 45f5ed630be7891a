/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The a{sv} option dictionaries of SPEC §3. One generic reader walks the dictionary, checks
 * each key against the table of the method it belongs to (known key, right variant type, not
 * given twice) and hands the value to a per-set function that validates it. Every refusal is
 * InvalidArgs with a sentence that names the key, because the caller is usually a script
 * author who typed the key by hand into busctl.
 */

#include <assert.h>
#include <inttypes.h>
#include <stddef.h>
#include <string.h>

#include "loopmgr-bus.h"
#include "options-bus.h"
#include "options.h"
#include "util.h"

/* Upper bound for timeout-usec: long enough for a slow udev on a loaded machine, short enough
 * that a typo (seconds given as microseconds times a million) does not park a request for a
 * day while it holds the serialisation point. */
#define OPTIONS_TIMEOUT_USEC_MAX (3600ULL * 1000ULL * 1000ULL)

/* The kernel keeps offsets and size limits in loff_t, a signed 64-bit type. */
#define OPTIONS_RANGE_MAX ((uint64_t) INT64_MAX)

typedef enum OptionSet {
        OPTION_SET_ATTACH = 1 << 0,
        OPTION_SET_DETACH = 1 << 1,
        OPTION_SET_COMMON = 1 << 2,
        OPTION_SET_MOUNT = 1 << 3,
        OPTION_SET_UNMOUNT = 1 << 4,
        OPTION_SET_ALL = OPTION_SET_ATTACH | OPTION_SET_DETACH | OPTION_SET_COMMON |
                         OPTION_SET_MOUNT | OPTION_SET_UNMOUNT,
} OptionSet;

typedef enum OptionId {
        OPTION_OFFSET,
        OPTION_SIZE_LIMIT,
        OPTION_READ_ONLY,
        OPTION_PARTSCAN,
        OPTION_DIRECT_IO,
        OPTION_SECTOR_SIZE,
        OPTION_SHARING,
        OPTION_LIFETIME,
        OPTION_WAIT_UDEV,
        OPTION_TIMEOUT_USEC,
        OPTION_NO_USER_INTERACTION,
        OPTION_WAIT,
        OPTION_RECURSIVE,
        OPTION_ALL_REFERENCES,
        OPTION_FSTYPE,
        OPTION_MOUNT_OPTIONS,
        OPTION_RELEASE_REFERENCE,
        OPTION_FORCE,
        OPTION_DEVICE,
        OPTION_PARTITION,
        _OPTION_MAX,
} OptionId;

typedef struct OptionDef {
        const char *key;
        char type;      /* the only D-Bus type the variant may carry */
        OptionSet sets; /* which dictionaries accept it */
} OptionDef;

/* clang-format off */
static const OptionDef option_table[_OPTION_MAX] = {
        [OPTION_OFFSET]              = { LOOPMGR_OPT_OFFSET,              't', OPTION_SET_ATTACH },
        [OPTION_SIZE_LIMIT]          = { LOOPMGR_OPT_SIZE_LIMIT,          't', OPTION_SET_ATTACH },
        [OPTION_READ_ONLY]           = { LOOPMGR_OPT_READ_ONLY,           'b', OPTION_SET_ATTACH },
        [OPTION_PARTSCAN]            = { LOOPMGR_OPT_PARTSCAN,            'b', OPTION_SET_ATTACH },
        [OPTION_DIRECT_IO]           = { LOOPMGR_OPT_DIRECT_IO,           's', OPTION_SET_ATTACH },
        [OPTION_SECTOR_SIZE]         = { LOOPMGR_OPT_SECTOR_SIZE,         'u', OPTION_SET_ATTACH },
        [OPTION_SHARING]             = { LOOPMGR_OPT_SHARING,             's', OPTION_SET_ATTACH },
        [OPTION_LIFETIME]            = { LOOPMGR_OPT_LIFETIME,            's', OPTION_SET_ATTACH },
        [OPTION_WAIT_UDEV]           = { LOOPMGR_OPT_WAIT_UDEV,           'b', OPTION_SET_ATTACH },
        [OPTION_TIMEOUT_USEC]        = { LOOPMGR_OPT_TIMEOUT_USEC,        't',
                                         OPTION_SET_ATTACH | OPTION_SET_DETACH },
        [OPTION_NO_USER_INTERACTION] = { LOOPMGR_OPT_NO_USER_INTERACTION, 'b', OPTION_SET_ALL },
        [OPTION_WAIT]                = { LOOPMGR_OPT_WAIT,                'b', OPTION_SET_DETACH },
        [OPTION_RECURSIVE]           = { LOOPMGR_OPT_RECURSIVE,           'b', OPTION_SET_DETACH },
        [OPTION_ALL_REFERENCES]      = { LOOPMGR_OPT_ALL_REFERENCES,      'b', OPTION_SET_DETACH },
        [OPTION_FSTYPE]              = { LOOPMGR_OPT_FSTYPE,              's', OPTION_SET_MOUNT },
        [OPTION_MOUNT_OPTIONS]       = { LOOPMGR_OPT_MOUNT_OPTIONS,       's', OPTION_SET_MOUNT },
        [OPTION_RELEASE_REFERENCE]   = { LOOPMGR_OPT_RELEASE_REFERENCE,   'b', OPTION_SET_MOUNT },
        [OPTION_FORCE]               = { LOOPMGR_OPT_FORCE,               'b', OPTION_SET_UNMOUNT },
        [OPTION_DEVICE]              = { LOOPMGR_OPT_DEVICE,              's', OPTION_SET_ATTACH },
        [OPTION_PARTITION]           = { LOOPMGR_OPT_PARTITION,           'u',
                                         OPTION_SET_MOUNT | OPTION_SET_UNMOUNT },
};
/* clang-format on */

/* One value as read from the variant; which member is valid follows OptionDef.type. */
typedef union OptionValue {
        uint64_t u64;
        uint32_t u32;
        int boolean;
        const char *string; /* points into the message */
} OptionValue;

typedef int (*option_handler_t)(OptionId id, const OptionValue *v, void *userdata,
                                sd_bus_error *error);

static const char *type_name(char type) {
        switch (type) {
        case 't':
                return "uint64";
        case 'u':
                return "uint32";
        case 'b':
                return "boolean";
        case 's':
                return "string";
        default:
                return "unknown";
        }
}

static const char *set_method_name(OptionSet set) {
        switch (set) {
        case OPTION_SET_ATTACH:
                return "attach";
        case OPTION_SET_DETACH:
                return "detach";
        case OPTION_SET_MOUNT:
                return "mount";
        case OPTION_SET_UNMOUNT:
                return "unmount";
        default:
                return "this method";
        }
}

static int option_unknown(const char *key, OptionSet set, sd_bus_error *error) {
        /* A key that exists in another set is a mix-up rather than a typo: say which. */
        for (size_t i = 0; i < _OPTION_MAX; i++) {
                if (!streq(option_table[i].key, key))
                        continue;

                if (option_table[i].sets & OPTION_SET_ATTACH)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' is an attach option and is not "
                                                 "accepted by %s.",
                                                 key, set_method_name(set));
                if (option_table[i].sets & OPTION_SET_DETACH)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' is a detach option and is not "
                                                 "accepted by %s.",
                                                 key, set_method_name(set));
        }

        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Unknown option '%s'.", key);
}

static int options_parse(sd_bus_message *m, OptionSet set, option_handler_t handler, void *userdata,
                         sd_bus_error *error) {
        bool seen[_OPTION_MAX] = {};
        int r;

        assert(m);
        assert(handler);

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r == -ENXIO)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Expected an options dictionary of type a{sv}.");
        if (r < 0)
                return r;

        for (;;) {
                const OptionDef *def = NULL;
                const char *key, *contents;
                OptionValue v = {};
                OptionId id;
                char type;

                r = sd_bus_message_enter_container(m, SD_BUS_TYPE_DICT_ENTRY, "sv");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;

                r = sd_bus_message_read_basic(m, SD_BUS_TYPE_STRING, &key);
                if (r < 0)
                        return r;

                for (id = 0; id < _OPTION_MAX; id++)
                        if ((option_table[id].sets & set) && streq(option_table[id].key, key)) {
                                def = option_table + id;
                                break;
                        }
                if (!def)
                        return option_unknown(key, set, error);

                if (seen[id])
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' is given more than once.", key);
                seen[id] = true;

                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        return r;
                if (r == 0 || type != SD_BUS_TYPE_VARIANT || !contents)
                        return -EBADMSG; /* impossible in a sealed a{sv} */

                /* Compare the whole contained signature, not only its first character: a
                 * variant holding "as" must not pass as "a" anything. Skip the variant so the
                 * message stays consistent for whoever looks at it after us. */
                if (contents[0] != def->type || contents[1] != '\0') {
                        r = sd_bus_message_skip(m, "v");
                        if (r < 0)
                                return r;
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' has type '%s', expected '%c' (%s).",
                                                 key, contents, def->type, type_name(def->type));
                }

                r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, contents);
                if (r < 0)
                        return r;

                switch (def->type) {
                case 't':
                        r = sd_bus_message_read_basic(m, 't', &v.u64);
                        break;
                case 'u':
                        r = sd_bus_message_read_basic(m, 'u', &v.u32);
                        break;
                case 'b':
                        r = sd_bus_message_read_basic(m, 'b', &v.boolean);
                        break;
                case 's':
                        r = sd_bus_message_read_basic(m, 's', &v.string);
                        break;
                default:
                        assert(false);
                        r = -EINVAL;
                }
                if (r < 0)
                        return r;

                r = sd_bus_message_exit_container(m); /* variant */
                if (r < 0)
                        return r;

                r = handler(id, &v, userdata, error);
                if (r < 0)
                        return r;

                r = sd_bus_message_exit_container(m); /* dict entry */
                if (r < 0)
                        return r;
        }

        r = sd_bus_message_exit_container(m); /* array */
        if (r < 0)
                return r;

        return 0;
}

static bool sector_size_valid(uint32_t s) {
        return s == 512 || s == 1024 || s == 2048 || s == 4096;
}

static int parse_timeout(const char *key, uint64_t value, uint64_t *ret, sd_bus_error *error) {
        if (value == 0 || value > OPTIONS_TIMEOUT_USEC_MAX)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Option '%s' must be between 1 and %llu microseconds "
                                         "(1 hour), got %" PRIu64 ".",
                                         key, OPTIONS_TIMEOUT_USEC_MAX, value);
        *ret = value;
        return 0;
}

static int parse_range_value(const char *key, uint64_t value, uint64_t *ret, sd_bus_error *error) {
        if (value % 512 != 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Option '%s' must be a multiple of 512, got %" PRIu64 ".",
                                         key, value);
        if (value > OPTIONS_RANGE_MAX)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Option '%s' must be at most %" PRIu64 ", got %" PRIu64
                                         ".",
                                         key, OPTIONS_RANGE_MAX, value);
        *ret = value;
        return 0;
}

static int attach_option_handler(OptionId id, const OptionValue *v, void *userdata,
                                 sd_bus_error *error) {
        AttachOptions *o = userdata;
        const char *key = option_table[id].key;

        switch (id) {
        case OPTION_OFFSET:
                return parse_range_value(key, v->u64, &o->offset, error);

        case OPTION_SIZE_LIMIT:
                return parse_range_value(key, v->u64, &o->size_limit, error);

        case OPTION_READ_ONLY:
                o->read_only = !!v->boolean;
                return 0;

        case OPTION_PARTSCAN:
                o->partscan = v->boolean;
                return 0;

        case OPTION_DIRECT_IO:
                if (streq(v->string, "auto"))
                        o->direct_io = DIRECT_IO_AUTO;
                else if (streq(v->string, "on"))
                        o->direct_io = DIRECT_IO_ON;
                else if (streq(v->string, "off"))
                        o->direct_io = DIRECT_IO_OFF;
                else
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' must be 'auto', 'on' or 'off', "
                                                 "got '%s'.",
                                                 key, v->string);
                return 0;

        case OPTION_SECTOR_SIZE:
                if (!sector_size_valid(v->u32))
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' must be 512, 1024, 2048 or 4096, "
                                                 "got %" PRIu32 ".",
                                                 key, v->u32);
                o->sector_size = v->u32;
                return 0;

        case OPTION_SHARING:
                if (streq(v->string, "shared"))
                        o->sharing = SHARING_SHARED;
                else if (streq(v->string, "exclusive"))
                        o->sharing = SHARING_EXCLUSIVE;
                else
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' must be 'shared' or 'exclusive', "
                                                 "got '%s'.",
                                                 key, v->string);
                return 0;

        case OPTION_LIFETIME:
                if (streq(v->string, "persistent"))
                        o->lifetime = LIFETIME_PERSISTENT;
                else if (streq(v->string, "client"))
                        o->lifetime = LIFETIME_CLIENT;
                else
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' must be 'persistent' or 'client', "
                                                 "got '%s'.",
                                                 key, v->string);
                return 0;

        case OPTION_WAIT_UDEV:
                o->wait_udev = v->boolean;
                return 0;

        case OPTION_TIMEOUT_USEC:
                return parse_timeout(key, v->u64, &o->timeout_usec, error);

        case OPTION_DEVICE: {
                const char *name = v->string;
                unsigned nr;

                if (strncmp(name, "/dev/", 5) == 0)
                        name += 5;
                if (loop_name_to_number(name, &nr) < 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "Option '%s' must name a loop device as 'loopN' "
                                                 "or '/dev/loopN', got '%s'.",
                                                 key, v->string);
                o->device = (int) nr;
                return 0;
        }

        case OPTION_NO_USER_INTERACTION:
                o->no_user_interaction = v->boolean;
                return 0;

        default:
                assert(false);
                return -EINVAL;
        }
}

static int detach_option_handler(OptionId id, const OptionValue *v, void *userdata,
                                 sd_bus_error *error) {
        DetachOptions *o = userdata;

        switch (id) {
        case OPTION_WAIT:
                o->wait = v->boolean;
                return 0;

        case OPTION_RECURSIVE:
                o->recursive = v->boolean;
                return 0;

        case OPTION_ALL_REFERENCES:
                o->all_references = v->boolean;
                return 0;

        case OPTION_TIMEOUT_USEC:
                return parse_timeout(option_table[id].key, v->u64, &o->timeout_usec, error);

        case OPTION_NO_USER_INTERACTION:
                o->no_user_interaction = v->boolean;
                return 0;

        default:
                assert(false);
                return -EINVAL;
        }
}

static int common_option_handler(OptionId id, const OptionValue *v, void *userdata,
                                 sd_bus_error *error) {
        CommonOptions *o = userdata;

        switch (id) {
        case OPTION_NO_USER_INTERACTION:
                o->no_user_interaction = v->boolean;
                return 0;

        default:
                assert(false);
                return -EINVAL;
        }
}

static int mount_option_handler(OptionId id, const OptionValue *v, void *userdata,
                                sd_bus_error *error) {
        MountOptions *o = userdata;

        switch (id) {
        case OPTION_FSTYPE:
                o->fstype = v->string;
                return 0;

        case OPTION_MOUNT_OPTIONS:
                o->options = v->string;
                return 0;

        case OPTION_RELEASE_REFERENCE:
                o->release_reference = v->boolean;
                return 0;

        case OPTION_PARTITION:
                o->partition = v->u32;
                return 0;

        case OPTION_NO_USER_INTERACTION:
                o->no_user_interaction = v->boolean;
                return 0;

        default:
                assert(false);
                return -EINVAL;
        }
}

static int unmount_option_handler(OptionId id, const OptionValue *v, void *userdata,
                                  sd_bus_error *error) {
        UnmountOptions *o = userdata;

        switch (id) {
        case OPTION_FORCE:
                o->force = v->boolean;
                return 0;

        case OPTION_PARTITION:
                o->partition = v->u32;
                return 0;

        case OPTION_NO_USER_INTERACTION:
                o->no_user_interaction = v->boolean;
                return 0;

        default:
                assert(false);
                return -EINVAL;
        }
}

int mount_options_parse(sd_bus_message *m, MountOptions *ret, sd_bus_error *error) {
        MountOptions o = {};
        int r;

        r = options_parse(m, OPTION_SET_MOUNT, mount_option_handler, &o, error);
        if (r < 0)
                return r;
        *ret = o;
        return 0;
}

int unmount_options_parse(sd_bus_message *m, UnmountOptions *ret, sd_bus_error *error) {
        UnmountOptions o = {};
        int r;

        r = options_parse(m, OPTION_SET_UNMOUNT, unmount_option_handler, &o, error);
        if (r < 0)
                return r;
        *ret = o;
        return 0;
}

int attach_options_parse(sd_bus_message *m, AttachOptions *ret, sd_bus_error *error) {
        AttachOptions o;
        int r;

        assert(m);
        assert(ret);

        attach_options_init(&o);

        r = options_parse(m, OPTION_SET_ATTACH, attach_option_handler, &o, error);
        if (r < 0)
                return r;

        /* Each value is in range on its own; the end of the window must be too. */
        if (o.size_limit > OPTIONS_RANGE_MAX - o.offset)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Options 'offset' (%" PRIu64 ") and 'size-limit' (%" PRIu64
                                         ") together exceed the largest possible size.",
                                         o.offset, o.size_limit);

        *ret = o;
        return 0;
}

int detach_options_parse(sd_bus_message *m, DetachOptions *ret, sd_bus_error *error) {
        DetachOptions o;
        int r;

        assert(m);
        assert(ret);

        detach_options_init(&o);

        r = options_parse(m, OPTION_SET_DETACH, detach_option_handler, &o, error);
        if (r < 0)
                return r;

        *ret = o;
        return 0;
}

int common_options_parse(sd_bus_message *m, CommonOptions *ret, sd_bus_error *error) {
        CommonOptions o = {};
        int r;

        assert(m);
        assert(ret);

        r = options_parse(m, OPTION_SET_COMMON, common_option_handler, &o, error);
        if (r < 0)
                return r;

        *ret = o;
        return 0;
}
