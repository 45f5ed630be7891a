/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Deferred teardown (SPEC §1 "Defer teardown", §3 Detach, §5 State and Openers) on real
 * devices: a Detach of a device that is still open returns "pending", the device shows
 * State "detach-pending" and says who holds it in Openers, and when the last opener goes the
 * kernel finishes the teardown and the daemon announces it with InterfacesRemoved. Openers:
 *   - a mount in the daemon's namespace (of the device or of one of its partitions),
 *   - a mount in another mount namespace ("(other namespace)", from the exclusive-open probe),
 *   - a loop device stacked on it,
 * and a plain process holding the node open, which the kernel cannot name cheaply: not listed,
 * but Detach still says "pending".
 *
 * Every "gone" is timed from the moment the last opener went (printed) and must take less than
 * a second: the daemon learns of it from uevents and the mount table monitor, not by polling.
 *
 * Like test-aliases: the real loopmgrd on the private bus of tests/env.sh, real loop devices,
 * real udev; after each test `losetup --list` must agree with the daemon and nothing of the
 * test may be left.
 *
 * Run:   eval "$(tests/env.sh start)"; meson test -C BUILD test-teardown
 * LOOPMGR_TEST_FILTER / LOOPMGR_TEST_SKIP select tests by cmocka glob.
 *
 * Needs mkfs.ext4 (e2fsprogs), addpart/unshare/losetup (util-linux).
 */

#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "test-teardown.h"

/* cmocka does not count a failed group setup/teardown in its return value. */

pid_t children[4];
size_t n_children;

/* ------------------------------------------------------------------------------------------ */
/* Fixtures */

static void kill_children(void) {
        for (size_t i = 0; i < n_children; i++) {
                (void) kill(children[i], SIGKILL);
                (void) waitpid(children[i], NULL, 0);
                print_message("cleanup: killed child %d\n", (int) children[i]);
        }
        n_children = 0;
}

static int test_teardown(void **state) {
        Env *e = *state;
        bool ok = true;
        size_t n = 0;
        int left;

        /* The holder of another namespace goes first: its mount keeps a device open. */
        kill_children();
        /* A test that ran to its end removed its mounts and partitions itself. */
        if (e->n_mounts > 0) {
                print_error("the test left %zu mount(s), the newest %s\n", e->n_mounts,
                            e->mounts[e->n_mounts - 1]);
                ok = false;
        }
        if (e->n_partitions > 0) {
                print_error("the test left %zu partition(s)\n", e->n_partitions);
                ok = false;
        }
        left = env_cleanup_test(e);
        if (left > 0) {
                print_error("the test left %d device(s) attached\n", left);
                ok = false;
        }
        if (env_check_consistency_under(e, e->tmpdir) < 0)
                ok = false;
        /* Teardowns of pending detaches finish asynchronously after the last close. */
        if (!env_expect_nothing_under(e->tmpdir, 2 * USEC_PER_SEC))
                ok = false;
        if (mounts_under(e->tmpdir, &n) < 0 || n > 0) {
                print_error("%zu mount(s) under %s are left over\n", n, e->tmpdir);
                ok = false;
        }
        int status;
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

#define T(f) cmocka_unit_test_setup_teardown(f, NULL, test_teardown)

static int group_setup(void **state) {
        return env_group_setup(state, "teardown");
}

static int group_teardown(void **state) {
        kill_children();
        return env_group_teardown(state);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_mounted),
                T(test_mounted_other_namespace),
                T(test_stacked_loop),
                T(test_held_open),
                T(test_wait_timeout),
                T(test_mounted_partition),
                T(test_probe_does_not_disturb_mounts),
                T(test_detach_while_locked),
                T(test_detach_lock_timeout),
        };
        return ENV_RUN_TESTS(tests, group_setup, group_teardown, NULL);
}
