/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The guard on a host that cannot have it: loopmgrd --guard=aliases on the test bus, where the
 * kernel refuses the BPF LSM program (a kernel without bpf in its active LSM list, or one that
 * refuses trampoline programs, as the CI host's does with EPERM). The daemon must say why in
 * GuardProblem, report Guard "off", leave no pins behind and serve as it does unguarded. Where
 * the kernel does load it, the test checks the opposite (Guard "aliases", no problem) and
 * removes the pins again. The guard in force is tested in the VM (tests/vm/tests-guard.sh).
 */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"

#define MiB (1024ULL * 1024ULL)

static char *manager_prop(Env *e, const char *name) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        char *v = NULL;
        int r;

        r = sd_bus_get_property_string(e->bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                       LOOPMGR_MANAGER_INTERFACE, name, &error, &v);
        if (r < 0)
                fail_msg("Get %s: %s (%s)", name, error.message ?: strerror(-r), error.name ?: "-");
        return v;
}

static char *device_prop(Env *e, const char *object, const char *name) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        char *v = NULL;
        int r;

        r = sd_bus_get_property_string(e->bus, LOOPMGR_BUS_NAME, object, LOOPMGR_DEVICE_INTERFACE,
                                       name, &error, &v);
        if (r < 0)
                fail_msg("Get %s of %s: %s", name, object, error.message ?: strerror(-r));
        return v;
}

static void restart_with(Env *e, char *const *args) {
        if (env_stop_daemon(e) < 0) {
                env_group_failed = true;
                fail_msg("loopmgrd did not exit cleanly on SIGTERM");
        }
        if (env_start_daemon_with(e, args, NULL) < 0) {
                env_group_failed = true;
                fail_msg("loopmgrd did not start");
        }
}

static void test_guard_unavailable(void **state) {
        Env *e = *state;
        char *args[] = {(char *) "--guard=aliases", NULL};
        _cleanup_free_ char *guard = NULL, *problem = NULL, *path = NULL, *creator = NULL,
                            *lsm = NULL, *state_after = NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        int fd, r;

        restart_with(e, args);
        guard = manager_prop(e, "Guard");
        problem = manager_prop(e, "GuardProblem");
        print_message("Guard=%s GuardProblem=\"%s\"\n", guard, problem);

        if (streq(guard, "aliases")) {
                /* This kernel allows the guard: no problem to report, and the pins are ours. */
                assert_string_equal(problem, "");
                assert_int_equal(access("/sys/fs/bpf/loopmgr/link-ioctl", F_OK), 0);
        } else {
                assert_string_equal(guard, "off");
                fd = open("/sys/kernel/security/lsm", O_RDONLY | O_CLOEXEC);
                if (fd >= 0) {
                        char buf[256] = {};

                        (void) !read(fd, buf, sizeof(buf) - 1);
                        close(fd);
                        lsm = strdup(buf);
                }
                if (!HAVE_GUARD)
                        assert_string_equal(problem, "the daemon was built without the guard");
                else if (lsm && !strstr(lsm, "bpf"))
                        assert_string_equal(problem,
                                            "the kernel has no bpf LSM in its active list");
                else {
                        /* The kernel's answer, in strerror() words (EPERM on the CI host). */
                        const char *prefix = "loading the BPF LSM program failed: ";

                        if (strncmp(problem, prefix, strlen(prefix)) != 0 ||
                            strlen(problem) == strlen(prefix))
                                fail_msg("GuardProblem \"%s\" does not say why the load failed",
                                         problem);
                }
                /* Nothing pinned by a guard that failed to load. */
                assert_int_equal(access("/sys/fs/bpf/loopmgr", F_OK), -1);
        }

        /* And it serves as an unguarded daemon does. */
        r = env_make_image(e, e->tmpdir, 2 * MiB, &path);
        assert_int_equal(r, 0);
        r = attach_file(e, path, O_RDWR, &error, &a, 0);
        assert_bus_ok(r, &error, "Attach with the guard unavailable");
        creator = device_prop(e, a.object, "Creator");
        assert_string_equal(creator, "loopmgrd");
        r = call_detach(e, a.object, &error, &state_after, 0);
        assert_bus_ok(r, &error, "Detach");
        assert_string_equal(state_after, LOOPMGR_STATE_DETACHED);

        if (streq(guard, "aliases")) {
                char *rm[] = {e->loopmgrd, (char *) "--remove-guard", NULL};

                restart_with(e, NULL);
                assert_int_equal(run_command(rm, NULL, NULL, NULL), 0);
        }
}

static void test_guard_off(void **state) {
        Env *e = *state;
        char *args[] = {(char *) "--guard=off", NULL};
        _cleanup_free_ char *guard = NULL, *problem = NULL;

        restart_with(e, args);
        guard = manager_prop(e, "Guard");
        problem = manager_prop(e, "GuardProblem");
        assert_string_equal(guard, "off");
        assert_string_equal(problem, "");
}

static void test_guard_bad_mode(void **state) {
        Env *e = *state;
        _cleanup_free_ char *err = NULL, *err2 = NULL;
        char *argv[] = {e->loopmgrd, (char *) "--guard=on", NULL};
        char *argv2[] = {(char *) "env", (char *) "LOOPMGR_GUARD=strict", e->loopmgrd, NULL};

        assert_int_equal(run_command(argv, NULL, NULL, &err), 2);
        assert_non_null(strstr(err, "Invalid --guard 'on'"));
        assert_int_equal(run_command(argv2, NULL, NULL, &err2), 2);
        assert_non_null(strstr(err2, "Invalid $LOOPMGR_GUARD 'strict'"));
}

static int group_setup(void **state) {
        return env_group_setup(state, "guard");
}

static int group_teardown(void **state) {
        Env *e = *state;

        /* The group fixture's daemon runs as every other binary's does: unguarded. */
        if (e && env_stop_daemon(e) >= 0)
                (void) env_start_daemon(e);
        return env_group_teardown(state);
}

static int test_teardown(void **state) {
        Env *e = *state;

        return env_cleanup_test(e) > 0 ? -1 : 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, NULL, test_teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_guard_unavailable),
                T(test_guard_off),
                T(test_guard_bad_mode),
        };
        return ENV_RUN_TESTS(tests, group_setup, group_teardown, NULL);
}
