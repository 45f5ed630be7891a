/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Integration tests: the real loopmgrd on a real (private) D-Bus system bus, with real loop
 * devices and the host's udev. No mocks. tests/env.sh provides the bus (and udev and polkitd);
 * this binary starts and stops the daemon itself, and skips (exit 77) only without root,
 * /dev/loop-control or a reachable bus.
 *
 * Every test leaves the machine as it found it: devices a test creates are tracked in the
 * group state (cmocka longjmps out of a failing test, so nothing may live only on its stack)
 * and the per-test teardown detaches what is left, then checks that `losetup --list` and the
 * daemon's ObjectManager agree and that nothing backed by our temporary directory remains.
 *
 * Run:   eval "$(tests/env.sh start)"; meson test -C BUILD --suite integration
 * Set LOOPMGR_TEST_FILTER to a cmocka glob to run a subset (e.g. "test_detach*"), and
 * LOOPMGR_TEST_SKIP to one to leave tests out. LOOPMGR_LOG_LEVEL=debug reaches the daemon.
 *
 * One test (test_attach_udev_timeout) installs a udev rule in /run/udev/rules.d for the
 * duration of the test that delays udev for one image name of ours only.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
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
#include "test-integration.h"

/* ------------------------------------------------------------------------------------------ */
/* Fixtures */

static int group_setup(void **state) {
        Env *e;
        int r;

        r = env_group_setup(state, "test");
        if (r < 0)
                return r;
        e = *state;

        /* ramfs has no O_DIRECT at all (tmpfs gained it in 6.6, so it is no longer the
         * example of a file system without direct I/O). */
        if (asprintf(&e->ramfs, "%s/ramfs", e->tmpdir) < 0) {
                e->ramfs = NULL;
                env_group_failed = true;
                return -1;
        }
        if (mkdir(e->ramfs, 0700) < 0 ||
            mount("ramfs", e->ramfs, "ramfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700") < 0) {
                print_message("note: cannot mount ramfs (%m), the no-direct-I/O test skips\n");
                (void) rmdir(e->ramfs);
                free(e->ramfs);
                e->ramfs = NULL;
        }
        return 0;
}

static int group_teardown(void **state) {
        Env *e = *state;
        bool ok = true;

        /* Devices over ramfs files keep it busy: take them down and unmount it first, so that
         * the shared teardown finds no mount left under the temporary directory. */
        if (e && e->ramfs) {
                if (env_cleanup_test(e) > 0 || env_detach_all_under(e->ramfs) > 0)
                        ok = false;
                (void) env_wait_nothing_under(e->ramfs, 5 * USEC_PER_SEC);
                if (umount2(e->ramfs, 0) < 0) {
                        print_error("umount %s: %m (detaching it lazily)\n", e->ramfs);
                        (void) umount2(e->ramfs, MNT_DETACH);
                        ok = false;
                }
        }
        if (env_group_teardown(state) < 0)
                ok = false;
        if (!ok) {
                env_group_failed = true;
                return -1;
        }
        return 0;
}

static int test_teardown(void **state) {
        Env *e = *state;
        bool ok = true;
        int left;

        left = env_cleanup_test(e);
        if (left > 0) {
                print_error("the test left %d device(s) attached\n", left);
                ok = false;
        }
        if (env_check_consistency(e) < 0)
                ok = false;
        /* Teardowns of pending detaches finish asynchronously after the last close. */
        if (!env_expect_nothing_under(e->tmpdir, 2 * USEC_PER_SEC))
                ok = false;
        /* Whatever happened, the daemon must still be there. */
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
/* Test helpers */

void detach_expect(Env *e, const char *object, const char *expected_state) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *state = NULL;
        int r = call_detach(e, object, &error, &state, 0);
        assert_bus_ok(r, &error, "Detach");
        assert_string_equal(state, expected_state);
}

void detach_gone(Env *e, const Attached *a) {
        detach_expect(e, a->object, LOOPMGR_STATE_DETACHED);
        assert_int_equal(loop_binding_present(a->node + 5, a->diskseq), 0);
}

void assert_no_device_for(const char *path) {
        size_t n;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        if (n != 0)
                fail_msg("%zu loop device(s) backed by %s exist, expected none", n, path);
}

void assert_sysfs_u64(const char *node, const char *attr, uint64_t expected) {
        uint64_t v;
        int r = sysfs_read_u64(node + strlen("/dev/"), attr, &v);
        if (r < 0)
                fail_msg("reading %s of %s: %s", attr, node, strerror(-r));
        if (v != expected)
                fail_msg("%s of %s: kernel says %" PRIu64 ", expected %" PRIu64, attr, node, v,
                         expected);
}

char *make_image(Env *e, uint64_t size) {
        char *path = NULL;
        int r = env_make_image(e, e->tmpdir, size, &path);
        if (r < 0)
                fail_msg("creating an image: %s", strerror(-r));
        return path;
}

bool fs_has_direct_io(const char *dir) {
        struct statfs sfs;
        if (statfs(dir, &sfs) < 0)
                return false;
        return sfs.f_type == EXT4_SUPER_MAGIC_ || sfs.f_type == XFS_SUPER_MAGIC_ ||
               (unsigned) sfs.f_type == BTRFS_SUPER_MAGIC_;
}
/* ------------------------------------------------------------------------------------------ */

#define T(f) cmocka_unit_test_setup_teardown(f, NULL, test_teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_version),
                T(test_attach_simple),
                T(test_attach_offset),
                T(test_attach_offset_size_limit),
                T(test_attach_read_only_option),
                T(test_attach_read_only_fd),
                T(test_attach_read_only_fd_writable),
                T(test_attach_sector_size_4096),
                T(test_direct_io_on),
                T(test_direct_io_off),
                T(test_direct_io_auto),
                T(test_direct_io_unsupported_fs),
                T(test_attach_bad_fds),
                T(test_attach_bad_handle_index),
                T(test_attach_bad_options),
                T(test_detach),
                T(test_device_detach_method),
                T(test_detach_pending),
                T(test_detach_wait_timeout),
                T(test_detach_not_found),
                T(test_get_device),
                T(test_set_capacity),
                T(test_set_autoclear),
                T(test_foreign_device),
                T(test_shared_reuse),
                T(test_alias_refused),
                T(test_attach_udev_timeout),
                T(test_lifetime_client),
                T(test_loop_over_loop_recursive),
                T(test_detach_all_references),
                T(test_attach_while_detach_pending),
                T(test_resolve),
                T(test_concurrent_attach),
                T(test_attach_path),
                T(test_loopmgrctl),
                T(test_daemon_restart),
        };
        return ENV_RUN_TESTS(tests, group_setup, group_teardown, NULL);
}
