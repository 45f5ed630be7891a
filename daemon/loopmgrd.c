/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "log.h"
#include "manager.h"

static const char *arg_state_dir = NULL;

static void help(void) {
        printf("Usage: loopmgrd [OPTIONS]\n\n"
               "The loop device manager daemon: owns org.loopmgr.LoopManager1 on the system bus\n"
               "(or the bus in $DBUS_SYSTEM_BUS_ADDRESS) and configures every loop device.\n\n"
               "  -h --help              Show this help\n"
               "     --version           Show the version\n"
               "     --log-level=LEVEL   debug, info, notice, warning or err (default: info,\n"
               "                         or $LOOPMGR_LOG_LEVEL)\n"
               "     --state-dir=DIR     State directory (default: $LOOPMGR_STATE_DIR or\n"
               "                         /run/loopmgr)\n");
}

static int parse_argv(int argc, char *argv[]) {
        enum { ARG_VERSION = 0x100, ARG_LOG_LEVEL, ARG_STATE_DIR };
        static const struct option options[] = {
                { "help",      no_argument,       NULL, 'h'           },
                { "version",   no_argument,       NULL, ARG_VERSION   },
                { "log-level", required_argument, NULL, ARG_LOG_LEVEL },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                {}
        };
        const char *e;
        int c, l;

        e = getenv("LOOPMGR_LOG_LEVEL");
        if (e && (l = log_parse_level(e)) >= 0)
                log_set_max_level(l);
        arg_state_dir = getenv("LOOPMGR_STATE_DIR");

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
        r = manager_start(m);
        if (r < 0)
                goto finish;

        r = sd_event_loop(event);
        if (r < 0)
                log_error_errno(r, "Event loop failed: %m");
        else
                log_info("Exiting; bound devices stay attached.");

finish:
        (void) sd_notify(false, "STOPPING=1");
        manager_free(m);
        sd_event_unref(event);
        return r < 0 ? 1 : 0;
}
