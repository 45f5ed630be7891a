/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "guard.h"
#include "log.h"
#include "bus-send.h"
#include "manager.h"
#include "polkit.h"

static const char *arg_state_dir = NULL;
static uint32_t arg_max_devices_per_user = POLKIT_DEFAULT_MAX_DEVICES_PER_USER;
static GuardMode arg_guard = GUARD_MODE_OFF;
static bool arg_remove_guard = false;

static void help(void) {
        printf("Usage: loopmgrd [OPTIONS]\n\n"
               "The loop device manager daemon: owns org.loopmgr.LoopManager1 on the system bus\n"
               "(or the bus in $DBUS_SYSTEM_BUS_ADDRESS) and configures every loop device.\n\n"
               "  -h --help              Show this help\n"
               "     --version           Show the version\n"
               "     --log-level=LEVEL   debug, info, notice, warning or err (default: info,\n"
               "                         or $LOOPMGR_LOG_LEVEL)\n"
               "     --state-dir=DIR     State directory (default: $LOOPMGR_STATE_DIR or\n"
               "                         /run/loopmgr)\n"
               "     --max-devices-per-user=N|unlimited\n"
               "                         Loop devices one non-root user may hold references on\n"
               "                         (default: $LOOPMGR_MAX_DEVICES_PER_USER or %u)\n"
               "     --guard=off|audit|aliases|exclusive\n"
               "                         The BPF LSM guard against other processes' loop\n"
               "                         configurations (default: $LOOPMGR_GUARD or off)\n"
               "     --remove-guard      Remove the guard a loopmgrd left pinned, and exit\n",
               POLKIT_DEFAULT_MAX_DEVICES_PER_USER);
}

/* "unlimited", or a decimal number below UINT32_MAX (0: no non-root user may hold any). */
static int parse_max_devices(const char *s, uint32_t *ret) {
        uint64_t v;
        int r;

        if (streq(s, "unlimited")) {
                *ret = POLKIT_DEVICES_UNLIMITED;
                return 0;
        }
        r = safe_atou64(s, &v);
        if (r < 0)
                return r;
        if (v >= POLKIT_DEVICES_UNLIMITED)
                return -ERANGE;
        *ret = (uint32_t) v;
        return 0;
}

static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_LOG_LEVEL,
                ARG_STATE_DIR,
                ARG_MAX_DEVICES,
                ARG_GUARD,
                ARG_REMOVE_GUARD,
        };
        static const struct option options[] = {
                {"help", no_argument, NULL, 'h'},
                {"version", no_argument, NULL, ARG_VERSION},
                {"log-level", required_argument, NULL, ARG_LOG_LEVEL},
                {"state-dir", required_argument, NULL, ARG_STATE_DIR},
                {"max-devices-per-user", required_argument, NULL, ARG_MAX_DEVICES},
                {"guard", required_argument, NULL, ARG_GUARD},
                {"remove-guard", no_argument, NULL, ARG_REMOVE_GUARD},
                {}};
        const char *e;
        int c, l;

        e = getenv("LOOPMGR_LOG_LEVEL");
        if (e && (l = log_parse_level(e)) >= 0)
                log_set_max_level(l);
        arg_state_dir = getenv("LOOPMGR_STATE_DIR");
        e = getenv("LOOPMGR_MAX_DEVICES_PER_USER");
        if (e && *e && parse_max_devices(e, &arg_max_devices_per_user) < 0) {
                log_error("Invalid $LOOPMGR_MAX_DEVICES_PER_USER '%s': expected a number or "
                          "'unlimited'.",
                          e);
                return -EINVAL;
        }

        e = getenv("LOOPMGR_GUARD");
        if (e && *e) {
                l = guard_mode_from_string(e);
                if (l < 0) {
                        log_error("Invalid $LOOPMGR_GUARD '%s': expected off, audit, aliases or "
                                  "exclusive.",
                                  e);
                        return -EINVAL;
                }
                arg_guard = l;
        }

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("loopmgrd %s\n", LOOPMGR_VERSION);
                        return 0;
                case ARG_LOG_LEVEL:
                        l = log_parse_level(optarg);
                        if (l < 0) {
                                log_error("Unknown log level '%s'.", optarg);
                                return -EINVAL;
                        }
                        log_set_max_level(l);
                        break;
                case ARG_STATE_DIR:
                        arg_state_dir = optarg;
                        break;
                case ARG_MAX_DEVICES:
                        if (parse_max_devices(optarg, &arg_max_devices_per_user) < 0) {
                                log_error("Invalid --max-devices-per-user '%s': expected a number "
                                          "or 'unlimited'.",
                                          optarg);
                                return -EINVAL;
                        }
                        break;
                case ARG_GUARD:
                        l = guard_mode_from_string(optarg);
                        if (l < 0) {
                                log_error("Invalid --guard '%s': expected off, audit, aliases or "
                                          "exclusive.",
                                          optarg);
                                return -EINVAL;
                        }
                        arg_guard = l;
                        break;
                case ARG_REMOVE_GUARD:
                        arg_remove_guard = true;
                        break;
                default:
                        return -EINVAL;
                }

        if (optind < argc) {
                log_error("loopmgrd takes no arguments.");
                return -EINVAL;
        }
        return 1;
}

int main(int argc, char *argv[]) {
        sd_event *event = NULL;
        Manager *m = NULL;
        sigset_t mask;
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : 0;

        if (arg_remove_guard) {
                /* The pins are the guard: once they are gone and no loopmgrd holds its links,
                 * the kernel detaches it (asynchronously). */
                r = guard_remove(GUARD_PIN_DIR);
                if (r < 0) {
                        log_error_errno(r, "Failed to remove the guard pinned in %s: %m",
                                        GUARD_PIN_DIR);
                        return 1;
                }
                log_info(r > 0 ? "Removed the guard pinned in %s." : "No guard pinned in %s.",
                         GUARD_PIN_DIR);
                return 0;
        }

        if (!arg_state_dir || !*arg_state_dir)
                arg_state_dir = "/run/loopmgr";
        if (mkdir(arg_state_dir, 0755) < 0 && errno != EEXIST) {
                log_error_errno(errno, "Failed to create %s: %m", arg_state_dir);
                return 1;
        }

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        /* A client vanishing mid-reply must not kill us. */
        signal(SIGPIPE, SIG_IGN);

        r = sd_event_default(&event);
        if (r < 0) {
                log_error_errno(r, "Failed to allocate the event loop: %m");
                goto finish;
        }
        (void) sd_event_add_signal(event, NULL, SIGTERM, NULL, NULL);
        (void) sd_event_add_signal(event, NULL, SIGINT, NULL, NULL);
        (void) sd_event_set_watchdog(event, true);

        r = manager_new(event, NULL, arg_state_dir, &m);
        if (r < 0) {
                log_error_errno(r, "Failed to allocate the manager: %m");
                goto finish;
        }
        r = polkit_registry_new(&m->polkit);
        if (r < 0) {
                log_error_errno(r, "Failed to allocate the polkit registry: %m");
                goto finish;
        }
        polkit_registry_set_max_devices_per_user(m->polkit, arg_max_devices_per_user);
        m->guard_requested = arg_guard;
        /* The bus first (the resume asks which clients still exist), the name last: nobody
         * can call before the devices are known. */
        r = manager_bus_start(m);
        if (r < 0)
                goto finish;
        r = manager_start(m);
        if (r < 0)
                goto finish;
        r = manager_bus_take_name(m);
        if (r < 0)
                goto finish;

        r = sd_event_loop(event);
        if (r < 0)
                log_error_errno(r, "Event loop failed: %m");
        else
                log_info("Exiting; bound devices stay attached.");

finish:
        (void) sd_notify(false, "STOPPING=1");
        if (m)
                /* Before the bus goes: pending queries hold messages and slots of it. */
                m->polkit = polkit_registry_free(m->polkit);
        manager_bus_stop(m);
        manager_free(m);
        sd_event_unref(event);
        return r < 0 ? 1 : 0;
}
