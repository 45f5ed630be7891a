/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * polkit.c against a scripted polkit authority: a private dbus-daemon (needs no root), a
 * "daemon" connection whose test method asks polkit_verify_async(), a fake
 * org.freedesktop.PolicyKit1 that answers as each test tells it (or not at all), and callers.
 * Checks what polkit is sent (subject, action, details, flags), that the request runs again
 * after the answer, every verdict's error name, the limits on pending queries, timeouts, and
 * that a vanished caller's queries are dropped. Skips (77) without dbus-daemon.
 */

#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
#include <time.h>

#include <cmocka.h>

#include "polkit.h"
#include "util.h"
#include "test-polkit-unit.h"

/* Shared by the tests; test_bus_limit starts one with a small limit of its own. */
static PrivateBus main_bus = {.pid = -1};

static int setup(void **state) {
        *state = ctx_new(main_bus.address);
        return 0;
}

static int teardown(void **state) {
        ctx_free(*state);
        return 0;
}

static int group_setup(void **state) {
        int r;

        if (access(DBUS_DAEMON, X_OK) < 0)
                return 0; /* main() skips */
        /* Above the 256 calls the total cap test keeps waiting on one connection. */
        r = start_bus(&main_bus, 1024);
        if (r < 0) {
                fprintf(stderr, "Cannot start a private dbus-daemon: %s\n", strerror(-r));
                return -1;
        }
        return 0;
}

static int group_teardown(void **state) {
        stop_bus(&main_bus);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_detail_escape),
                cmocka_unit_test(test_registry_defaults),
                cmocka_unit_test_setup_teardown(test_allowed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_interactive_flag, setup, teardown),
                cmocka_unit_test_setup_teardown(test_challenge, setup, teardown),
                cmocka_unit_test_setup_teardown(test_denied, setup, teardown),
                cmocka_unit_test_setup_teardown(test_polkit_error, setup, teardown),
                cmocka_unit_test_setup_teardown(test_polkit_absent, setup, teardown),
                cmocka_unit_test_setup_teardown(test_root_not_asked, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_registry, setup, teardown),
                cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
                cmocka_unit_test_setup_teardown(test_limit_per_connection, setup, teardown),
                cmocka_unit_test_setup_teardown(test_limit_total, setup, teardown),
                cmocka_unit_test_setup_teardown(test_caller_vanishes, setup, teardown),
                cmocka_unit_test(test_bus_limit),
        };

        if (access(DBUS_DAEMON, X_OK) < 0) {
                printf("SKIP: %s is not installed; these tests need a private bus.\n", DBUS_DAEMON);
                return 77;
        }
        (void) signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
