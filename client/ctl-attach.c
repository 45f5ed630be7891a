/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * loopmgrctl attach, detach and resolve, and the Attach/Detach calls that mount and open make
 * too.
 */

#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "ctl-agent.h"
#include "ctl-common.h"
#include "ctl-devices.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "loopmgr-bus.h"

/* ---- attach ------------------------------------------------------------------------------ */

typedef struct ClientLifetime {
        const char *object; /* set once Attach has answered */
        const char *node;
        bool detached;
} ClientLifetime;

static int on_lifetime_removed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        ClientLifetime *c = userdata;
        const char *object;

        if (sd_bus_message_read(m, "o", &object) < 0 || !c->object || !streq(object, c->object))
                return 0;

        c->detached = true;
        return sd_event_exit(sd_bus_get_event(sd_bus_message_get_bus(m)), 0);
}

static int on_lifetime_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 ||
            !streq(name, LOOPMGR_BUS_NAME) || new_owner[0] != '\0')
                return 0;

        /* Like losing the connection: the reference may have gone with the daemon. */
        return sd_event_exit(sd_bus_get_event(sd_bus_message_get_bus(m)), EXIT_FAILURE);
}

static int wait_client_lifetime(sd_event *event, ClientLifetime *c) {
        int r;

        if (isatty(STDERR_FILENO))
                log_fail(0, "Keeping %s attached until this command is interrupted.", c->node);

        r = sd_event_loop(event);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Event loop failed: %s", strerror(-r));
        if (c->detached) {
                log_fail(0, "%s was detached by someone else.", c->node);
                return 0;
        }
        if (r != 0)
                return log_fail(EXIT_FAILURE,
                                "Lost the connection to loopmgrd; the reference on %s is gone.",
                                c->node);
        return 0;
}

static int attach_append_options(sd_bus_message *m, bool read_only) {
        int r;

        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && (arg_given & OPT_OFFSET))
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_OFFSET, "t", arg_offset);
        if (r >= 0 && (arg_given & OPT_SIZE_LIMIT))
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SIZE_LIMIT, "t", arg_size_limit);
        if (r >= 0 && read_only)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_READ_ONLY, "b", 1);
        if (r >= 0 && arg_partscan)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_PARTSCAN, "b", 1);
        if (r >= 0 && arg_direct_io)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_DIRECT_IO, "s", arg_direct_io);
        if (r >= 0 && arg_sector_size > 0)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SECTOR_SIZE, "u", arg_sector_size);
        if (r >= 0 && arg_exclusive)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SHARING, "s", "exclusive");
        if (r >= 0 && arg_lifetime)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_LIFETIME, "s", arg_lifetime);
        if (r >= 0 && arg_no_wait)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_WAIT_UDEV, "b", 0);
        if (r >= 0 && arg_timeout_usec > 0)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_TIMEOUT_USEC, "t",
                                          arg_timeout_usec);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

/* Manager.Attach of fd with the attach options given on the command line. Returns what
 * sd_bus_call() returns; error is set when the daemon answered with one. */
int call_attach(sd_bus *bus, int fd, bool read_only, sd_bus_error *error,
                sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Attach");
        if (r >= 0)
                r = sd_bus_message_append(m, "h", fd);
        if (r >= 0)
                r = attach_append_options(m, read_only);
        if (r < 0)
                return r;

        return ctl_call(bus, m, call_timeout_usec(), error, ret_reply);
}

int verb_attach(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot_removed = NULL, *slot_owner = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *path = args[0], *object, *node;
        bool client = streq_ptr(arg_lifetime, "client"), fallback_read_only = false;
        ClientLifetime lifetime = {};
        uint64_t diskseq;
        int reused, r;

        /* As losetup does: a file we may only read still gives a read-only device. */
        r = open_image(path, arg_read_only, &fd, &fallback_read_only);
        if (r != 0)
                return r;

        if (client) {
                /* Subscribe before Attach: the device could be detached by someone else
                 * (--all-references) before we start waiting. */
                r = event_new_with_signals(bus, NULL, &event);
                if (r < 0)
                        return log_fail(EXIT_FAILURE, "Failed to set up the event loop: %s",
                                        strerror(-r));
                r = sd_bus_match_signal(bus, &slot_removed, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                        OBJECT_MANAGER_INTERFACE, "InterfacesRemoved",
                                        on_lifetime_removed, &lifetime);
                if (r >= 0)
                        r = sd_bus_add_match(bus, &slot_owner, MATCH_DAEMON_OWNER_CHANGED,
                                             on_lifetime_owner_changed, NULL);
                if (r < 0)
                        return log_fail(EXIT_FAILURE, "Failed to subscribe to signals: %s",
                                        strerror(-r));
        }

        r = call_attach(bus, fd, arg_read_only || fallback_read_only, &error, &reply);
        if (r < 0)
                return log_bus_error(&error, r, "Attach");

        /* The daemon holds its own duplicate now; ours would only count as an opener. */
        fd = safe_close(fd);

        r = sd_bus_message_read(reply, "ostb", &object, &node, &diskseq, &reused);
        if (r < 0)
                return log_parse_error(r);

        if (arg_json) {
                fputc('{', stdout);
                json_write_device(stdout, node, object);
                printf(",\"diskseq\":%" PRIu64 ",\"reused\":%s}\n", diskseq,
                       reused ? "true" : "false");
        } else
                printf("%s\n", node);
        r = flush_stdout();
        if (r != 0)
                return r;

        if (fallback_read_only)
                log_fail(0, "%s is not writable, attached read-only.", path);
        if (reused && isatty(STDERR_FILENO))
                log_fail(0, "%s already showed these bytes and is now shared.", node);

        if (!client)
                return 0;

        lifetime.object = object;
        lifetime.node = node;
        return wait_client_lifetime(event, &lifetime);
}

/* ---- detach ------------------------------------------------------------------------------ */

/* Manager.Detach of object with the detach options given on the command line; mount and
 * umount allow none of them, so there it drops exactly one reference of the caller. Returns
 * what sd_bus_call() returns. */
int call_detach(sd_bus *bus, const char *object, sd_bus_error *error, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Detach");
        if (r >= 0)
                r = sd_bus_message_append(m, "o", object);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && arg_wait)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_WAIT, "b", 1);
        if (r >= 0 && arg_recursive)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_RECURSIVE, "b", 1);
        if (r >= 0 && arg_all_references)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_ALL_REFERENCES, "b", 1);
        if (r >= 0 && arg_wait && arg_timeout_usec > 0)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_TIMEOUT_USEC, "t",
                                          arg_timeout_usec);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;

        return ctl_call(bus, m, call_timeout_usec(), error, ret_reply);
}

int verb_detach(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        _cleanup_free_ char *object = NULL;
        const char *state;
        int r;

        r = resolve_device(bus, args[0], &object);
        if (r != 0)
                return r;

        /* The node for --json, while the device is still there. A device that went away in
         * between is Detach's to report. */
        if (arg_json && device_info_get(bus, object, NULL, &d) == -ENOMEM)
                return log_oom();

        r = call_detach(bus, object, &error, &reply);
        if (r < 0)
                return log_bus_error(&error, r, "Detach");

        r = sd_bus_message_read(reply, "s", &state);
        if (r < 0)
                return log_parse_error(r);

        if (arg_json) {
                fputc('{', stdout);
                json_write_device(stdout, d.node, object);
                fputs(",\"state\":", stdout);
                json_write_string(stdout, state);
                fputs("}\n", stdout);
        } else
                printf("%s\n", state);

        return flush_stdout();
}

/* Drops the one reference an Attach of ours took. Never all references: when the device was
 * reused, the references of whoever attached it first must keep it (libmount detaches such a
 * device when the mount fails, util-linux PR #4646; we must not). */
void drop_reference(sd_bus *bus, const char *object, const char *node) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = call_detach(bus, object, &error, &reply);
        if (r < 0) {
                (void) log_bus_error(&error, r, "Detach");
                log_fail(0, "Our reference on %s may remain: 'loopmgrctl detach %s' drops it.",
                         node, node);
        }
}

/*
 * A read-only mount of an image that is attached writable already. A second, read-only device
 * over the same bytes would be an alias, which loopmgrd refuses (Overlap); mount(8) mounts
 * read-only on the writable device it finds, and so do we. Only an identical writable device
 * is taken: if the Attach does not reuse one, the new device is given back. Returns 0 with
 * the Attach reply (read position at the start), or a negative errno when this does not help.
 */
int attach_share_writable(sd_bus *bus, const char *image, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *object, *node;
        uint64_t diskseq;
        int reused, r;

        r = open_backing(image, O_RDWR, &fd);
        if (r < 0)
                return r;

        r = call_attach(bus, fd, /* read_only= */ false, &error, &reply);
        if (r < 0)
                return r;

        r = sd_bus_message_read(reply, "ostb", &object, &node, &diskseq, &reused);
        if (r < 0)
                return r;
        if (!reused) {
                /* The overlapping device went away in between: this one is new, and writable
                 * where a read-only device was asked for. */
                drop_reference(bus, object, node);
                return -EADDRINUSE;
        }

        r = sd_bus_message_rewind(reply, true);
        if (r < 0)
                return r;
        *ret_reply = TAKE_PTR(reply);
        return 0;
}

/* ---- resolve ----------------------------------------------------------------------------- */

/* Resolve's answer (SPEC §3). Keys this client does not know are kept, formatted, in extra. */
typedef struct ResolveInfo {
        char *base_kind;
        uint64_t base_device;
        uint64_t base_inode;
        uint64_t offset;
        uint64_t size;
        unsigned present; /* RESOLVE_HAS_* */
        char **chain;
        char **aliases; /* device object paths */
        FieldList extra;
} ResolveInfo;

enum {
        RESOLVE_HAS_DEVICE = 1 << 0,
        RESOLVE_HAS_INODE = 1 << 1,
        RESOLVE_HAS_OFFSET = 1 << 2,
        RESOLVE_HAS_SIZE = 1 << 3,
};

static void resolve_info_done(ResolveInfo *i) {
        free(i->base_kind);
        strv_free(i->chain);
        strv_free(i->aliases);
        field_list_done(&i->extra);
        *i = (ResolveInfo){};
}

/* One key of Resolve's answer into the ResolveInfo at userdata; unknown keys into extra. */
static int resolve_key(sd_bus_message *m, const char *key, const char *contents, void *userdata) {
        /* clang-format off */
        static const struct {
                const char *key;
                size_t offset;
                unsigned present;
        } numbers[] = {
                { "base-device", offsetof(ResolveInfo, base_device), RESOLVE_HAS_DEVICE },
                { "base-inode",  offsetof(ResolveInfo, base_inode),  RESOLVE_HAS_INODE  },
                { "offset",      offsetof(ResolveInfo, offset),      RESOLVE_HAS_OFFSET },
                { "size",        offsetof(ResolveInfo, size),        RESOLVE_HAS_SIZE   },
        };
        /* clang-format on */
        ResolveInfo *info = userdata;
        char **lines = NULL;
        const char *s;
        int r;

        if (streq(key, "base-kind") && streq(contents, "s")) {
                r = sd_bus_message_read(m, "v", "s", &s);
                if (r < 0)
                        return r;
                free(info->base_kind);
                info->base_kind = strdup(s);
                return info->base_kind ? 1 : -ENOMEM;
        }
        if ((streq(key, "chain") && streq(contents, "as")) ||
            (streq(key, "aliases") && streq(contents, "ao"))) {
                r = bus_read_variant_strv(m, contents,
                                          streq(key, "chain") ? &info->chain : &info->aliases);
                return r < 0 ? r : 1;
        }
        if (streq(contents, "t"))
                for (size_t i = 0; i < ELEMENTSOF(numbers); i++) {
                        if (!streq(key, numbers[i].key))
                                continue;
                        r = sd_bus_message_read(m, "v", "t", (uint8_t *) info + numbers[i].offset);
                        if (r < 0)
                                return r;
                        info->present |= numbers[i].present;
                        return 1;
                }

        /* Whatever a newer daemon adds, formatted. */
        r = format_property(key, m, &lines);
        if (r < 0)
                return r;
        r = field_list_add(&info->extra, key, lines);
        return r < 0 ? r : 1;
}

static int resolve_info_read(sd_bus_message *m, ResolveInfo *info) {
        return bus_read_properties(m, resolve_key, info);
}

/* One line for an aliasing device: its node and what it exposes, from its properties. A
 * device that went away in the meantime is shown by its object path. */
static int format_alias(sd_bus *bus, const char *object, char **ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        char range[48];
        int r;

        r = device_info_get(bus, object, &error, &d);
        if (r == -ENOMEM)
                return r;
        if (r < 0 || !d.node) {
                *ret = strdup(object);
                return *ret ? 0 : -ENOMEM;
        }

        /* The range on the base when the daemon tells it, else the device's own window on
         * its backing. */
        if (strcmp(device_info_range(&d, range), "-") != 0)
                r = asprintf(ret, "%s: bytes %s of the base, %s, %" PRIu32 " reference%s, %s",
                             d.node, range, d.read_only ? "read-only" : "read-write", d.references,
                             d.references == 1 ? "" : "s", strempty(d.state));
        else
                r = asprintf(ret,
                             "%s: offset %" PRIu64 ", %" PRIu64 " bytes, %s, %" PRIu32
                             " reference%s, %s",
                             d.node, d.offset, d.size, d.read_only ? "read-only" : "read-write",
                             d.references, d.references == 1 ? "" : "s", strempty(d.state));
        return r < 0 ? -ENOMEM : 0;
}

static int resolve_print(sd_bus *bus, ResolveInfo *info) {
        _cleanup_(field_list_done) FieldList fields = {};
        _cleanup_strv_free_ char **aliases = NULL;
        char base[FORMAT_BASE_MAX], range[48], sz[FORMAT_SIZE_MAX], *line;
        size_t n = strv_length(info->aliases);
        int r;

        aliases = calloc(n + 1, sizeof(char *));
        if (!aliases)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                r = format_alias(bus, info->aliases[i], &aliases[i]);
                if (r < 0)
                        return r;
        }

        if (info->chain) {
                r = field_list_add(&fields, "chain", TAKE_PTR(info->chain));
                if (r < 0)
                        return r;
        }

        r = field_list_add_one(&fields, "base",
                               (info->present & RESOLVE_HAS_DEVICE)
                                       ? format_base(info->base_kind, info->base_device,
                                                     info->base_inode,
                                                     info->present & RESOLVE_HAS_INODE, base)
                                       : "-");
        if (r < 0)
                return r;

        if ((info->present & (RESOLVE_HAS_OFFSET | RESOLVE_HAS_SIZE)) ==
            (RESOLVE_HAS_OFFSET | RESOLVE_HAS_SIZE)) {
                if (asprintf(&line, "%s (%s)", format_range(info->offset, info->size, range),
                             format_size(info->size, sz)) < 0)
                        return -ENOMEM;
                r = field_list_add_one(&fields, "range", line);
                free(line);
        } else
                r = field_list_add_one(&fields, "range", "-");
        if (r < 0)
                return r;

        r = field_list_add(&fields, "aliases", TAKE_PTR(aliases));
        if (r < 0)
                return r;

        /* Whatever a newer daemon adds, after what we know. */
        for (size_t i = 0; i < info->extra.n; i++) {
                r = field_list_add(&fields, info->extra.items[i].name,
                                   TAKE_PTR(info->extra.items[i].lines));
                if (r < 0)
                        return r;
        }

        return field_list_print(&fields);
}

int verb_resolve(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(resolve_info_done) ResolveInfo info = {};
        _cleanup_close_ int fd = -EBADF;
        const char *path = args[0];
        int r;

        r = open_backing(path, O_RDONLY, &fd);
        if (r < 0)
                return log_fail(exit_status_from_local_errno(-r), "Failed to open %s: %s", path,
                                strerror(-r));

        r = sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Resolve");
        if (r >= 0)
                r = sd_bus_message_append(m, "h", fd);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && (arg_given & OPT_OFFSET))
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_OFFSET, "t", arg_offset);
        if (r >= 0 && (arg_given & OPT_SIZE_LIMIT))
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SIZE_LIMIT, "t", arg_size_limit);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_create_error(r);

        r = ctl_call(bus, m, call_timeout_usec(), &error, &reply);
        if (r < 0)
                return log_bus_error(&error, r, "Resolve");

        if (arg_json) {
                r = json_write_value(reply, stdout);
                if (r < 0)
                        return log_parse_error(r);
                fputc('\n', stdout);
                return flush_stdout();
        }

        r = resolve_info_read(reply, &info);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0)
                return log_parse_error(r);

        r = resolve_print(bus, &info);
        if (r < 0)
                return log_oom();
        return flush_stdout();
}
