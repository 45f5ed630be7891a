/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * loopmgrctl monitor: device events as they happen, one line (or JSON object) each.
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

/* ---- monitor ----------------------------------------------------------------------------- */

typedef struct KnownDevice {
        char *object;
        char *name;
        char *node;
        uint64_t diskseq;
} KnownDevice;

typedef struct Monitor {
        KnownDevice *known; /* objects seen, so that removals can still name them */
        size_t n_known;
        int status; /* set when writing the output failed */
} Monitor;

static void monitor_forget_all(Monitor *mon);

static void monitor_done(Monitor *mon) {
        monitor_forget_all(mon);
        free(mon->known);
        *mon = (Monitor){};
}

static KnownDevice *monitor_find(Monitor *mon, const char *object) {
        for (size_t i = 0; i < mon->n_known; i++)
                if (streq(mon->known[i].object, object))
                        return mon->known + i;
        return NULL;
}

/* Replaces *field with a copy of value unless they are equal or value is NULL. Running out of
 * memory here only costs names in later lines: not worth failing. */
static void known_set(char **field, const char *value) {
        char *c;

        if (!value || streq_ptr(*field, value))
                return;
        c = strdup(value);
        if (!c)
                return;
        free(*field);
        *field = c;
}

static void monitor_remember(Monitor *mon, const char *object, const char *name, const char *node,
                             uint64_t diskseq) {
        KnownDevice *k = monitor_find(mon, object), *items;

        if (!k) {
                char *o = strdup(object);

                items = o ? reallocarray(mon->known, mon->n_known + 1, sizeof(KnownDevice)) : NULL;
                if (!items) {
                        free(o);
                        return;
                }
                mon->known = items;
                k = mon->known + mon->n_known++;
                *k = (KnownDevice){.object = o};
        }
        known_set(&k->name, name);
        known_set(&k->node, node);
        if (diskseq > 0)
                k->diskseq = diskseq;
}

static void monitor_forget(Monitor *mon, const char *object) {
        KnownDevice *k = monitor_find(mon, object);

        if (!k)
                return;
        free(k->object);
        free(k->name);
        free(k->node);
        *k = mon->known[--mon->n_known];
}

static void monitor_forget_all(Monitor *mon) {
        for (size_t i = 0; i < mon->n_known; i++) {
                free(mon->known[i].object);
                free(mon->known[i].name);
                free(mon->known[i].node);
        }
        mon->n_known = 0;
}

/* The diskseq is the last element of a device object path (SPEC §2). */
static uint64_t diskseq_from_object(const char *object) {
        size_t l = strlen(LOOPMGR_DEVICE_PATH_PREFIX "/");
        uint64_t v = 0;

        if (strncmp(object, LOOPMGR_DEVICE_PATH_PREFIX "/", l) != 0 || !object[l])
                return 0;
        for (const char *p = object + l; *p; p++) {
                if (!isdigit((unsigned char) *p) || v > (UINT64_MAX - 9) / 10)
                        return 0;
                v = v * 10 + (uint64_t) (*p - '0');
        }
        return v;
}

/* "loop3 diskseq=42", or the object path for what is not a known device. */
static void monitor_print_subject(Monitor *mon, const char *object) {
        KnownDevice *k = monitor_find(mon, object);
        uint64_t diskseq = k && k->diskseq > 0 ? k->diskseq : diskseq_from_object(object);
        _cleanup_free_ char *e = escape_human(k && k->name ? k->name : object);

        fputs(e ?: object, stdout);
        if (diskseq > 0)
                printf(" diskseq=%" PRIu64, diskseq);
}

static void monitor_json_begin(Monitor *mon, const char *event, const char *object) {
        KnownDevice *k = object ? monitor_find(mon, object) : NULL;
        char ts[64];

        fputs("{\"timestamp\":", stdout);
        json_write_string(stdout, format_timestamp_now(ts));
        fputs(",\"event\":", stdout);
        json_write_string(stdout, event);
        if (object) {
                fputc(',', stdout);
                json_write_device(stdout, k ? k->node : NULL, object);
                fputs(",\"name\":", stdout);
                if (k && k->name)
                        json_write_string(stdout, k->name);
                else
                        fputs("null", stdout);
        }
}

/* The line of InterfacesAdded/Removed: the interfaces (names, or names and properties) as
 * the signal carries them, read from m. */
static int monitor_json_interfaces(Monitor *mon, const char *event, const char *object,
                                   sd_bus_message *m) {
        int r;

        monitor_json_begin(mon, event, object);
        fputs(",\"interfaces\":", stdout);
        r = json_write_value(m, stdout);
        fputs("}\n", stdout);
        return r;
}

static void monitor_line_begin(const char *event) {
        char ts[64];

        printf("%s %-7s ", format_timestamp_now(ts), event);
}

static int monitor_line_end(Monitor *mon, sd_bus_message *m) {
        if (fflush(stdout) == 0 && !ferror(stdout))
                return 0;

        /* Nobody reads us any more (e.g. a closed pipe with SIGPIPE ignored): stop. */
        if (mon->status == 0)
                mon->status = log_fail(EXIT_FAILURE, "Failed to write to standard output: %s",
                                       strerror(errno));
        return sd_event_exit(sd_bus_get_event(sd_bus_message_get_bus(m)), 0);
}

static int on_interfaces_added(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        _cleanup_(device_info_done) DeviceInfo d = {};
        Monitor *mon = userdata;
        bool is_device = false;
        const char *object;
        int r;

        r = sd_bus_message_read(m, "o", &object);
        if (r < 0)
                goto fail;

        /* First pass: learn the name, so that the JSON line can carry it too. */
        r = device_interfaces_read(m, object, &d);
        if (r < 0)
                goto fail;
        is_device = r > 0;
        if (is_device)
                monitor_remember(mon, object, d.name, d.node, d.diskseq);

        if (arg_json) {
                r = sd_bus_message_rewind(m, true);
                if (r >= 0)
                        r = sd_bus_message_skip(m, "o");
                if (r < 0)
                        goto fail;
                r = monitor_json_interfaces(mon, "added", object, m);
                if (r < 0)
                        goto fail;
        } else {
                monitor_line_begin("added");
                monitor_print_subject(mon, object);
                if (is_device) {
                        _cleanup_free_ char *backing = escape_human(
                                d.backing_file && d.backing_file[0] ? d.backing_file : "-");
                        char size[FORMAT_SIZE_MAX];

                        printf(" size=%s offset=%" PRIu64 " ro=%s managed=%s state=%s "
                               "backing-file=%s",
                               format_size(d.size, size), d.offset, d.read_only ? "yes" : "no",
                               d.managed ? "yes" : "no", d.state ?: "-", backing ?: "-");
                }
                fputc('\n', stdout);
        }
        return monitor_line_end(mon, m);

fail:
        log_fail(0, "Failed to parse InterfacesAdded: %s", strerror(-r));
        return 0;
}

static int on_interfaces_removed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        const char *object;
        int r;

        r = sd_bus_message_read(m, "o", &object);
        if (r < 0)
                goto fail;

        if (arg_json) {
                r = monitor_json_interfaces(mon, "removed", object, m);
                if (r < 0)
                        goto fail;
        } else {
                monitor_line_begin("removed");
                monitor_print_subject(mon, object);
                fputc('\n', stdout);
        }

        monitor_forget(mon, object);
        return monitor_line_end(mon, m);

fail:
        log_fail(0, "Failed to parse InterfacesRemoved: %s", strerror(-r));
        return 0;
}

/* " KEY=VALUE" of one changed property, list elements joined with commas. */
static int print_changed_property(sd_bus_message *m, const char *key, const char *contents,
                                  void *userdata) {
        _cleanup_strv_free_ char **lines = NULL;
        int r;

        r = format_property(key, m, &lines);
        if (r < 0)
                return r;

        printf(" %s=", key);
        for (size_t i = 0; lines[i]; i++) {
                _cleanup_free_ char *e = escape_human(lines[i]);

                printf("%s%s", i > 0 ? "," : "", e ?: "?");
        }
        if (!lines[0])
                fputs("-", stdout);
        return 1;
}

static int print_changed_human(sd_bus_message *m) {
        int r;

        r = bus_read_properties(m, print_changed_property, NULL);
        if (r < 0)
                return r;

        /* Invalidated properties come without a value. */
        r = sd_bus_message_enter_container(m, 'a', "s");
        if (r < 0)
                return r;
        for (;;) {
                const char *key;

                r = sd_bus_message_read_basic(m, 's', &key);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                printf(" %s=(invalidated)", key);
        }
        return sd_bus_message_exit_container(m);
}

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        const char *object = sd_bus_message_get_path(m), *interface;
        int r;

        if (!object)
                return 0;

        r = sd_bus_message_read(m, "s", &interface);
        if (r < 0)
                goto fail;

        if (arg_json) {
                monitor_json_begin(mon, "changed", object);
                fputs(",\"interface\":", stdout);
                json_write_string(stdout, interface);
                fputs(",\"changed\":", stdout);
                r = json_write_value(m, stdout);
                if (r >= 0) {
                        fputs(",\"invalidated\":", stdout);
                        r = json_write_value(m, stdout);
                }
                fputs("}\n", stdout);
        } else {
                monitor_line_begin("changed");
                monitor_print_subject(mon, object);
                r = print_changed_human(m);
                fputc('\n', stdout);
        }
        if (r < 0)
                goto fail;
        return monitor_line_end(mon, m);

fail:
        log_fail(0, "Failed to parse PropertiesChanged: %s", strerror(-r));
        return 0;
}

static void monitor_print_daemon(Monitor *mon, const char *event, const char *owner) {
        if (arg_json) {
                monitor_json_begin(mon, event, NULL);
                fputs(",\"owner\":", stdout);
                json_write_string(stdout, owner);
                fputs("}\n", stdout);
        } else {
                monitor_line_begin(event);
                printf("%s\n", owner);
        }
}

/* Learns the names of the existing devices, only to name them in later removals. A daemon
 * that is not running (yet) is fine, so failures are ignored. */
static void monitor_learn_devices(Monitor *mon, sd_bus *bus) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_list_done) DeviceList list = {};

        if (device_list_get(bus, &error, &list) < 0)
                return;

        for (size_t i = 0; i < list.n; i++)
                monitor_remember(mon, list.items[i].object, list.items[i].name, list.items[i].node,
                                 list.items[i].diskseq);
}

static int on_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 ||
            !streq(name, LOOPMGR_BUS_NAME))
                return 0;

        if (old_owner[0]) {
                /* A daemon that went away sends no InterfacesRemoved for its objects. */
                monitor_forget_all(mon);
                monitor_print_daemon(mon, "daemon-stopped", old_owner);
        }
        if (new_owner[0]) {
                monitor_print_daemon(mon, "daemon-started", new_owner);
                /* Its devices exist from the start and are never announced as added. */
                monitor_learn_devices(mon, sd_bus_message_get_bus(m));
        }

        return monitor_line_end(mon, m);
}

int verb_monitor(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot_added = NULL, *slot_removed = NULL,
                                                  *slot_changed = NULL, *slot_owner = NULL;
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_(monitor_done) Monitor mon = {};
        int r;

        r = event_new_with_signals(bus, NULL, &event);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Failed to set up the event loop: %s", strerror(-r));

        /* Subscribe first, then learn the current devices: nothing can fall in between.
         * sd_bus_match_signal()/sd_bus_add_match() return once the bus has the match. */
        r = sd_bus_match_signal(bus, &slot_added, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                OBJECT_MANAGER_INTERFACE, "InterfacesAdded", on_interfaces_added,
                                &mon);
        if (r >= 0)
                r = sd_bus_match_signal(bus, &slot_removed, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                        OBJECT_MANAGER_INTERFACE, "InterfacesRemoved",
                                        on_interfaces_removed, &mon);
        if (r >= 0)
                /* path_namespace covers the manager and every device object below it. */
                r = sd_bus_add_match(bus, &slot_changed,
                                     "type='signal',"
                                     "sender='" LOOPMGR_BUS_NAME "',"
                                     "interface='" PROPERTIES_INTERFACE "',"
                                     "member='PropertiesChanged',"
                                     "path_namespace='" LOOPMGR_MANAGER_PATH "'",
                                     on_properties_changed, &mon);
        if (r >= 0)
                r = sd_bus_add_match(bus, &slot_owner, MATCH_DAEMON_OWNER_CHANGED, on_owner_changed,
                                     &mon);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Failed to subscribe to signals: %s", strerror(-r));

        monitor_learn_devices(&mon, bus);

        if (!arg_json && isatty(STDERR_FILENO))
                log_fail(0, "Monitoring loop devices. Press Ctrl-C to stop.");

        r = sd_event_loop(event);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Event loop failed: %s", strerror(-r));
        if (mon.status != 0)
                return mon.status;
        if (r != 0)
                return log_fail(EXIT_FAILURE, "Lost the connection to the bus.");
        return 0;
}
