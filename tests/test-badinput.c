/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Bad input for every method of the API, against the real daemon: wrong signatures, unknown and
 * mistyped options, offsets and sizes that are huge, unaligned or overflow, handle indexes that
 * name no fd, fds of the wrong kind, object paths that do not name a device (or name one that
 * is gone while its loopN lives on with a new diskseq), and the Properties interface.
 *
 * Each call is one row of a matrix (method, input, expected error, got), printed as the test
 * runs:
 *
 *   | Manager.Attach  | fd is a pipe (read end)  | InvalidArgs  | InvalidArgs  |
 *
 * After EVERY call the daemon must still answer (Version) and no device may have leaked:
 * exactly the devices the test holds on purpose are bound to files of its directory, and
 * `losetup --list` agrees with the daemon's objects about them. A row whose error differs from
 * the expected one is marked MISMATCH and the test fails once its whole table is printed; a
 * dead daemon or a leaked device fails it at once.
 *
 * Where the D-Bus library answers for the daemon (a signature that does not match the method,
 * an unknown method, property or object) the expected names are sd-bus's: InvalidArgs,
 * UnknownMethod, UnknownProperty, PropertyReadOnly, UnknownObject.
 *
 * Like test-aliases: the real loopmgrd on the private bus of tests/env.sh, real loop devices,
 * real udev; the group setup starts the daemon. Runs as root (root never asks polkit).
 *
 * Run:   eval "$(tests/env.sh start)"; meson test -C BUILD test-badinput
 * LOOPMGR_TEST_FILTER / LOOPMGR_TEST_SKIP select tests by cmocka glob.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <ftw.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-rawbus.h"
#include "integration-util.h"
#include "loopmgr-bus.h"
#include "test-badinput.h"

/* cmocka does not count a failed group setup/teardown in its return value. */

struct Matrix matrix;

/* ------------------------------------------------------------------------------------------ */
/* Fixtures (as in test-aliases.c) */

static int test_setup(void **state) {
        free(matrix.mismatch_list);
        matrix.mismatch_list = NULL;
        matrix.rows = matrix.mismatches = matrix.devices = 0;
        print_message("| %-22s | %-50s | %-22s | %-22s |\n", "method", "input", "expected", "got");
        return 0;
}

static int test_teardown(void **state) {
        Env *e = *state;
        bool ok = true;
        int left, status;

        left = env_cleanup_test(e);
        if (left > 0) {
                print_error("the test left %d device(s) attached\n", left);
                ok = false;
        }
        if (env_check_consistency_under(e, e->tmpdir) < 0)
                ok = false;
        if (!env_expect_nothing_under(e->tmpdir, 2 * USEC_PER_SEC))
                ok = false;
        if (e->daemon_pid > 0 && waitpid(e->daemon_pid, &status, WNOHANG) == e->daemon_pid) {
                print_error("loopmgrd died (%s %d)\n", WIFEXITED(status) ? "status" : "signal",
                            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                e->daemon_pid = 0;
                env_group_failed = true;
                ok = false;
        }
        return ok ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------ */

#define T(f) cmocka_unit_test_setup_teardown(f, test_setup, test_teardown)

static int group_setup(void **state) {
        return env_group_setup(state, "bad");
}

static int group_teardown(void **state) {
        return env_group_teardown(state);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_manager_signatures),   T(test_attach_options),
                T(test_attach_fds),           T(test_handle_indexes),
                T(test_attach_path_inputs),   T(test_detach_objects),
                T(test_get_device_inputs),    T(test_device_methods),
                T(test_recycled_loop_number),
        };
        return ENV_RUN_TESTS(tests, group_setup, group_teardown, NULL);
}
