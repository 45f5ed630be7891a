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

#define MiB (1024ULL * 1024ULL)

#define DBUS_ERROR_INVALID_ARGS   "org.freedesktop.DBus.Error.InvalidArgs"
#define DBUS_ERROR_FILE_NOT_FOUND "org.freedesktop.DBus.Error.FileNotFound"

#define EXT4_SUPER_MAGIC_  0xEF53
#define XFS_SUPER_MAGIC_   0x58465342
#define BTRFS_SUPER_MAGIC_ 0x9123683E

/* How long signals of an event-driven daemon may take (udev round trip included). */
#define SIGNAL_TIMEOUT (2 * USEC_PER_SEC)

/* cmocka does not count a failed group setup/teardown in its return value. */

/* ------------------------------------------------------------------------------------------ */
/* Daemon process */

/* ------------------------------------------------------------------------------------------ */
/* Consistency of the daemon's view with the kernel's */

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
        if (!env_wait_nothing_under(e->tmpdir, 2 * USEC_PER_SEC)) {
                print_error("devices backed by %s are left over\n", e->tmpdir);
                (void) env_detach_all_under(e->tmpdir);
                (void) env_wait_nothing_under(e->tmpdir, 5 * USEC_PER_SEC);
                ok = false;
        }
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

#define ATTACH_OK(e, path, flags, a, ...)                                                          \
        do {                                                                                       \
                _cleanup_bus_error_ sd_bus_error _err = SD_BUS_ERROR_NULL;                         \
                int _r = attach_file((e), (path), (flags), &_err, (a), __VA_ARGS__);               \
                assert_bus_ok(_r, &_err, "Attach");                                                \
        } while (0)

#define PROPS_OK(e, object, p)                                                                     \
        do {                                                                                       \
                _cleanup_bus_error_ sd_bus_error _err = SD_BUS_ERROR_NULL;                         \
                int _r = device_props_get((e), (object), &_err, (p));                              \
                assert_bus_ok(_r, &_err, "GetAll");                                                \
                if ((p)->type_errors)                                                              \
                        fail_msg("wrong property types on %s: %s", (object), (p)->type_errors);    \
                assert_int_equal((p)->present, DEVICE_PROPS_ALL);                                  \
        } while (0)

static void detach_expect(Env *e, const char *object, const char *expected_state) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *state = NULL;
        int r = call_detach(e, object, &error, &state, 0);
        assert_bus_ok(r, &error, "Detach");
        assert_string_equal(state, expected_state);
}

/* Detaches a device nothing holds and checks that the kernel binding is gone when Detach
 * returns "detached" (not merely requested). */
static void detach_gone(Env *e, const Attached *a) {
        detach_expect(e, a->object, LOOPMGR_STATE_DETACHED);
        assert_int_equal(loop_binding_present(a->node + 5, a->diskseq), 0);
}

static void assert_no_device_for(const char *path) {
        size_t n;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        if (n != 0)
                fail_msg("%zu loop device(s) backed by %s exist, expected none", n, path);
}

static void assert_sysfs_u64(const char *node, const char *attr, uint64_t expected) {
        uint64_t v;
        int r = sysfs_read_u64(node + strlen("/dev/"), attr, &v);
        if (r < 0)
                fail_msg("reading %s of %s: %s", attr, node, strerror(-r));
        if (v != expected)
                fail_msg("%s of %s: kernel says %" PRIu64 ", expected %" PRIu64, attr, node, v,
                         expected);
}

static char *make_image(Env *e, uint64_t size) {
        char *path = NULL;
        int r = env_make_image(e, e->tmpdir, size, &path);
        if (r < 0)
                fail_msg("creating an image: %s", strerror(-r));
        return path;
}

static bool fs_has_direct_io(const char *dir) {
        struct statfs sfs;
        if (statfs(dir, &sfs) < 0)
                return false;
        return sfs.f_type == EXT4_SUPER_MAGIC_ || sfs.f_type == XFS_SUPER_MAGIC_ ||
               (unsigned) sfs.f_type == BTRFS_SUPER_MAGIC_;
}

/* ------------------------------------------------------------------------------------------ */
/* Tests */

static void test_version(void **state) {
        Env *e = *state;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *version = NULL;

        int r = get_version(e, &error, &version);
        assert_bus_ok(r, &error, "Get Version");
        /* Daemon and test come from the same tree. */
        assert_string_equal(version, LOOPMGR_VERSION);
}

static void test_attach_simple(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB);
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};
        struct stat st, file_st;
        char expected_object[256], link[256], target[PATH_MAX];

        Catcher *added = catch_interfaces_added(e);
        ATTACH_OK(e, path, O_RDWR, &a, 0);

        assert_false(a.reused);
        assert_true(a.diskseq > 0);
        assert_true(strncmp(a.node, "/dev/loop", 9) == 0);
        snprintf(expected_object, sizeof(expected_object), LOOPMGR_DEVICE_PATH_PREFIX "/%" PRIu64,
                 a.diskseq);
        assert_string_equal(a.object, expected_object);

        /* Attach waits for udev by default: the by-diskseq link is there right now. */
        snprintf(link, sizeof(link), "/dev/disk/by-diskseq/%" PRIu64, a.diskseq);
        if (!realpath(link, target))
                fail_msg("%s does not exist when Attach returns: %m", link);
        assert_string_equal(target, a.node);

        assert_int_equal(stat(a.node, &st), 0);
        assert_true(S_ISBLK(st.st_mode));
        assert_int_equal(stat(path, &file_st), 0);
        assert_sysfs_u64(a.node, "diskseq", a.diskseq);

        PROPS_OK(e, a.object, &p);
        assert_string_equal(p.node, a.node);
        assert_string_equal(p.name, a.node + 5);
        assert_int_equal(p.diskseq, a.diskseq);
        assert_int_equal(p.major, major(st.st_rdev));
        assert_int_equal(p.minor, minor(st.st_rdev));
        assert_string_equal(p.backing_file, path);
        assert_int_equal(p.backing_device, file_st.st_dev);
        assert_int_equal(p.backing_inode, file_st.st_ino);
        assert_int_equal(p.offset, 0);
        assert_int_equal(p.size_limit, 0);
        assert_int_equal(p.size, 8 * MiB);
        assert_false(p.read_only);
        assert_false(p.autoclear);
        assert_false(p.partscan);
        assert_true(p.managed);
        assert_int_equal(p.owner_uid, 0);
        assert_int_equal(p.references, 1);
        assert_string_equal(p.state, LOOPMGR_STATE_ATTACHED);
        assert_int_equal(p.n_openers, 0);
        assert_true(p.n_chain >= 1);

        /* ... and they are the kernel's truth. */
        assert_sysfs_u64(a.node, "size", 8 * MiB / 512);
        assert_sysfs_u64(a.node, "ro", 0);
        assert_sysfs_u64(a.node, "loop/offset", 0);
        assert_sysfs_u64(a.node, "loop/dio", p.direct_io);
        assert_sysfs_u64(a.node, "queue/logical_block_size", p.sector_size);

        if (catcher_wait(e, added, a.object, a.node, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesAdded for %s", a.object);

        detach_gone(e, &a);
}

static void test_attach_offset(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_free_ char *object = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 1, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
        PROPS_OK(e, a.object, &p);
        assert_int_equal(p.offset, 1 * MiB);
        assert_int_equal(p.size_limit, 0);
        assert_int_equal(p.size, 3 * MiB);
        assert_sysfs_u64(a.node, "loop/offset", 1 * MiB);
        assert_sysfs_u64(a.node, "size", 3 * MiB / 512);

        /* GetDevice by file names the device covering the whole file; this one does not. */
        int r = call_get_device(e, path, &error, &object);
        assert_bus_error(r, &error, LOOPMGR_ERROR_NOT_FOUND);

        detach_gone(e, &a);
}

static void test_attach_offset_size_limit(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
        PROPS_OK(e, a.object, &p);
        assert_int_equal(p.offset, 1 * MiB);
        assert_int_equal(p.size_limit, 2 * MiB);
        assert_int_equal(p.size, 2 * MiB);
        assert_sysfs_u64(a.node, "loop/offset", 1 * MiB);
        assert_sysfs_u64(a.node, "loop/sizelimit", 2 * MiB);
        assert_sysfs_u64(a.node, "size", 2 * MiB / 512);

        detach_gone(e, &a);
}

static void test_attach_read_only_option(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 1, OPT_B(LOOPMGR_OPT_READ_ONLY, true));
        PROPS_OK(e, a.object, &p);
        assert_true(p.read_only);
        assert_sysfs_u64(a.node, "ro", 1);
        detach_gone(e, &a);
}

static void test_attach_read_only_fd(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        /* The fd's access mode bounds the device. */
        ATTACH_OK(e, path, O_RDONLY, &a, 0);
        PROPS_OK(e, a.object, &p);
        assert_true(p.read_only);
        assert_sysfs_u64(a.node, "ro", 1);
        detach_gone(e, &a);
}

static void test_attach_read_only_fd_writable(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};

        int r = attach_file(e, path, O_RDONLY, &error, &a, 1, OPT_B(LOOPMGR_OPT_READ_ONLY, false));
        assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        assert_no_device_for(path);
}

static void test_attach_sector_size_4096(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 1, OPT_U(LOOPMGR_OPT_SECTOR_SIZE, 4096));
        PROPS_OK(e, a.object, &p);
        assert_int_equal(p.sector_size, 4096);
        assert_int_equal(p.size, 4 * MiB);
        assert_sysfs_u64(a.node, "queue/logical_block_size", 4096);
        detach_gone(e, &a);
}

static void direct_io_case(Env *e, const char *mode, bool expected) {
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 1, OPT_S(LOOPMGR_OPT_DIRECT_IO, mode));
        PROPS_OK(e, a.object, &p);
        if (p.direct_io != expected)
                fail_msg("direct-io=%s on %s: DirectIO %d, expected %d", mode, e->tmpdir,
                         p.direct_io, expected);
        assert_sysfs_u64(a.node, "loop/dio", expected);
        detach_gone(e, &a);
}

static void test_direct_io_on(void **state) {
        Env *e = *state;
        if (!fs_has_direct_io(e->tmpdir))
                skip();
        direct_io_case(e, "on", true);
}

static void test_direct_io_off(void **state) {
        direct_io_case(*state, "off", false);
}

static void test_direct_io_auto(void **state) {
        Env *e = *state;
        if (!fs_has_direct_io(e->tmpdir))
                skip();
        direct_io_case(e, "auto", true);
}

/* A backing file system without O_DIRECT: "on" must fail and leave nothing behind, "auto"
 * must fall back. The SPEC names no error for an impossible "on"; docs/API.md documents
 * InvalidArgs. */
static void test_direct_io_unsupported_fs(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {}, b = {};
        _cleanup_props_ DeviceProps p = {};

        if (!e->ramfs)
                skip();
        assert_int_equal(env_make_image(e, e->ramfs, 4 * MiB, &path), 0);

        int r = attach_file(e, path, O_RDWR, &error, &a, 1, OPT_S(LOOPMGR_OPT_DIRECT_IO, "on"));
        assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        assert_no_device_for(path);

        ATTACH_OK(e, path, O_RDWR, &b, 1, OPT_S(LOOPMGR_OPT_DIRECT_IO, "auto"));
        PROPS_OK(e, b.object, &p);
        assert_false(p.direct_io);
        assert_int_equal(p.sector_size, 512);
        assert_sysfs_u64(b.node, "loop/dio", 0);
        detach_gone(e, &b);
}

static void bad_fd_case(Env *e, int fd, const char *what) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};

        int r = call_attach(e, NULL, fd, &error, &a, 0);
        if (r >= 0)
                fail_msg("Attach of %s succeeded (%s)", what, a.node);
        if (!sd_bus_error_has_name(&error, DBUS_ERROR_INVALID_ARGS))
                fail_msg("Attach of %s: expected InvalidArgs, got %s: %s", what, error.name,
                         error.message);
        assert_non_null(error.message);
        assert_true(strlen(error.message) > 0);
}

static void test_attach_bad_fds(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_close_ int pipe_r = -EBADF, pipe_w = -EBADF, sock0 = -EBADF, sock1 = -EBADF;
        _cleanup_close_ int dir = -EBADF, opath = -EBADF, null = -EBADF, wronly = -EBADF;
        int p[2], s[2];

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pipe_r = p[0];
        pipe_w = p[1];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
        sock0 = s[0];
        sock1 = s[1];
        dir = open(e->tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(dir >= 0);
        opath = open(path, O_PATH | O_CLOEXEC);
        assert_true(opath >= 0);
        null = open("/dev/null", O_RDWR | O_CLOEXEC);
        assert_true(null >= 0);
        wronly = open(path, O_WRONLY | O_CLOEXEC);
        assert_true(wronly >= 0);

        bad_fd_case(e, pipe_r, "a pipe (read end)");
        bad_fd_case(e, pipe_w, "a pipe (write end)");
        bad_fd_case(e, sock0, "a socket");
        bad_fd_case(e, dir, "a directory");
        bad_fd_case(e, opath, "an O_PATH fd");
        /* Neither a regular file nor a block device. */
        bad_fd_case(e, null, "a character device");
        /* A write-only fd does not let the caller read the file; a device over it would. */
        bad_fd_case(e, wronly, "a write-only fd");

        assert_no_device_for(path);
}

/* An 'h' argument whose index does not refer to an attached fd. sd-bus cannot send that,
 * so this speaks the wire protocol itself. (A negative index, 0xffffffff, is rejected by
 * dbus-daemon, which drops the sender, and so never reaches loopmgrd.) */
static void test_attach_bad_handle_index(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
        static const struct {
                uint32_t index;
                unsigned n_fds;
        } cases[] = {
                {1, 1}, /* one past the end */
                {7, 1},
                {0, 0}, /* no fds at all */
        };

        assert_true(fd >= 0);
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                RawReply reply = {};
                int r = raw_call_with_handle(e->bus_address, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                             LOOPMGR_MANAGER_INTERFACE, "Attach", cases[i].index,
                                             &fd, cases[i].n_fds, 10 * USEC_PER_SEC, &reply);
                if (r < 0)
                        fail_msg("handle %u with %u fds: no reply (%s)", cases[i].index,
                                 cases[i].n_fds, strerror(-r));
                print_message("handle %u with %u fds: %s: %s (from %s)\n", cases[i].index,
                              cases[i].n_fds, reply.error_name ?: "method return",
                              reply.error_message ?: "", reply.sender ?: "?");
                bool ok = reply.type == 3 && streq_ptr(reply.error_name, DBUS_ERROR_INVALID_ARGS) &&
                          reply.error_message && reply.error_message[0] &&
                          streq_ptr(reply.sender, e->daemon_unique_name);
                raw_reply_done(&reply);
                if (!ok)
                        fail_msg("handle %u with %u fds: expected InvalidArgs with a message "
                                 "from loopmgrd",
                                 cases[i].index, cases[i].n_fds);
        }

        /* Still alive and well. */
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *version = NULL;
        assert_bus_ok(get_version(e, &error, &version), &error, "Get Version");
        assert_no_device_for(path);
}

typedef struct OptCase {
        const char *what;
        const char *key;
        const char *sig;
        uint64_t t;
        uint32_t u;
        int b;
        const char *s;
} OptCase;

static void bad_option_case(Env *e, const char *path, const OptCase *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
        int r;

        assert_true(fd >= 0);
        assert_int_equal(sd_bus_message_new_method_call(e->bus, &m, LOOPMGR_BUS_NAME,
                                                        LOOPMGR_MANAGER_PATH,
                                                        LOOPMGR_MANAGER_INTERFACE, "Attach"),
                         0);
        assert_true(sd_bus_message_append(m, "h", fd) >= 0);
        assert_true(sd_bus_message_open_container(m, 'a', "{sv}") >= 0);
        /* Two entries for the duplicate-key case, one otherwise. */
        for (int i = 0; i < (streq(c->what, "duplicate key") ? 2 : 1); i++) {
                switch (c->sig[0]) {
                case 't':
                        r = sd_bus_message_append(m, "{sv}", c->key, "t", c->t);
                        break;
                case 'u':
                        r = sd_bus_message_append(m, "{sv}", c->key, "u", c->u);
                        break;
                case 'b':
                        r = sd_bus_message_append(m, "{sv}", c->key, "b", c->b);
                        break;
                case 'i':
                        r = sd_bus_message_append(m, "{sv}", c->key, "i", (int32_t) c->u);
                        break;
                case 'a':
                        r = sd_bus_message_append(m, "{sv}", c->key, "as", 1, "x");
                        break;
                default:
                        r = sd_bus_message_append(m, "{sv}", c->key, "s", c->s);
                }
                assert_true(r >= 0);
        }
        assert_true(sd_bus_message_close_container(m) >= 0);

        r = sd_bus_call(e->bus, m, 30 * USEC_PER_SEC, &error, NULL);
        if (r >= 0) {
                print_error("Attach with %s (%s) succeeded\n", c->key, c->what);
                /* Let the teardown find it: it is backed by our directory. */
                fail_msg("bad option accepted: %s: %s", c->key, c->what);
        }
        if (!sd_bus_error_has_name(&error, DBUS_ERROR_INVALID_ARGS))
                fail_msg("option %s (%s): expected InvalidArgs, got %s: %s", c->key, c->what,
                         error.name, error.message);
        if (!error.message || !error.message[0])
                fail_msg("option %s (%s): InvalidArgs without a message", c->key, c->what);
}

static void test_attach_bad_options(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        const OptCase cases[] = {
                {"unknown key", "no-such-option", "b", .b = 1},
                {"misspelt key", "readonly", "b", .b = 1},
                {"duplicate key", LOOPMGR_OPT_READ_ONLY, "b", .b = 1},
                /* wrong type, one per key */
                {"wrong type", LOOPMGR_OPT_OFFSET, "u", .u = 512},
                {"wrong type", LOOPMGR_OPT_SIZE_LIMIT, "u", .u = 512},
                {"wrong type", LOOPMGR_OPT_READ_ONLY, "s", .s = "true"},
                {"wrong type", LOOPMGR_OPT_PARTSCAN, "i", .u = 1},
                {"wrong type", LOOPMGR_OPT_DIRECT_IO, "b", .b = 1},
                {"wrong type", LOOPMGR_OPT_SECTOR_SIZE, "t", .t = 4096},
                {"wrong type", LOOPMGR_OPT_SHARING, "b", .b = 0},
                {"wrong type", LOOPMGR_OPT_LIFETIME, "u", .u = 0},
                {"wrong type", LOOPMGR_OPT_WAIT_UDEV, "s", .s = "yes"},
                {"wrong type", LOOPMGR_OPT_TIMEOUT_USEC, "u", .u = 1000000},
                {"wrong type", LOOPMGR_OPT_NO_USER_INTERACTION, "s", .s = "true"},
                {"wrong type (array)", LOOPMGR_OPT_DIRECT_IO, "as"},
                /* bad values */
                {"not a multiple of 512", LOOPMGR_OPT_OFFSET, "t", .t = 513},
                {"not a multiple of 512", LOOPMGR_OPT_SIZE_LIMIT, "t", .t = 513},
                {"not a power of two", LOOPMGR_OPT_SECTOR_SIZE, "u", .u = 513},
                {"too small", LOOPMGR_OPT_SECTOR_SIZE, "u", .u = 256},
                {"too large", LOOPMGR_OPT_SECTOR_SIZE, "u", .u = 8192},
                {"zero", LOOPMGR_OPT_SECTOR_SIZE, "u", .u = 0},
                {"unknown mode", LOOPMGR_OPT_DIRECT_IO, "s", .s = "maybe"},
                {"empty mode", LOOPMGR_OPT_DIRECT_IO, "s", .s = ""},
                {"unknown mode", LOOPMGR_OPT_SHARING, "s", .s = "x"},
                {"unknown mode", LOOPMGR_OPT_LIFETIME, "s", .s = "x"},
                {"zero", LOOPMGR_OPT_TIMEOUT_USEC, "t", .t = 0},
                {"beyond the end", LOOPMGR_OPT_OFFSET, "t", .t = 4 * MiB},
                {"far beyond the end", LOOPMGR_OPT_OFFSET, "t", .t = UINT64_MAX - 511},
                {"longer than the file", LOOPMGR_OPT_SIZE_LIMIT, "t", .t = 4 * MiB},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                bad_option_case(e, path, &cases[i]);

        /* offset + size-limit overflowing 64 bits. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached a = {};
                int r = attach_file(e, path, O_RDWR, &error, &a, 2,
                                    OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                                    OPT_T(LOOPMGR_OPT_SIZE_LIMIT, UINT64_MAX - 511));
                assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        }
        /* The same options checks apply to AttachPath. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached a = {};
                int r = call_attach_path(e, path, &error, &a, 1,
                                         OPT_S(LOOPMGR_OPT_DIRECT_IO, "maybe"));
                assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        }

        assert_no_device_for(path);

        /* After all of that the daemon still answers. */
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *version = NULL, *object = NULL;
        assert_bus_ok(get_version(e, &error, &version), &error, "Get Version");
        sd_bus_error_free(&error);
        int r = call_get_device(e, "/dev/loop999999", &error, &object);
        assert_bus_error(r, &error, LOOPMGR_ERROR_NOT_FOUND);
}

static void test_detach(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *object = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);

        detach_gone(e, &a);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for %s", a.object);

        int r = device_props_get(e, a.object, &error, &p);
        assert_true(r < 0);
        sd_bus_error_free(&error);
        r = call_get_device(e, a.node, &error, &object);
        assert_bus_error(r, &error, LOOPMGR_ERROR_NOT_FOUND);
}

static void test_device_detach_method(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);

        /* Bad detach options are refused and change nothing. */
        int r = call_device_detach(e, a.object, &error, &st, 1, OPT_B("no-such-option", true));
        assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        sd_bus_error_free(&error);
        r = call_device_detach(e, a.object, &error, &st, 1, OPT_S(LOOPMGR_OPT_WAIT, "yes"));
        assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        sd_bus_error_free(&error);
        r = call_detach(e, a.object, &error, &st, 1, OPT_T(LOOPMGR_OPT_TIMEOUT_USEC, 0));
        assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        sd_bus_error_free(&error);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 1);

        r = call_device_detach(e, a.object, &error, &st, 1, OPT_B(LOOPMGR_OPT_WAIT, true));
        assert_bus_ok(r, &error, "Device.Detach");
        assert_string_equal(st, LOOPMGR_STATE_DETACHED);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 0);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for %s", a.object);
}

static void test_detach_pending(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        int fd = env_hold(e, a.node, O_RDONLY);
        assert_true(fd >= 0);

        Catcher *changed = catch_properties_changed(e, a.object, "State");
        Catcher *removed = catch_interfaces_removed(e);

        detach_expect(e, a.object, LOOPMGR_STATE_PENDING);
        PROPS_OK(e, a.object, &p);
        assert_string_equal(p.state, LOOPMGR_STATE_DETACH_PENDING);
        if (catcher_wait(e, changed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no PropertiesChanged(State) for %s", a.object);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 1);
        /* Nothing arrived for the removal yet: we still hold the device. */
        bus_drain(e);
        assert_int_equal(removed->count, 0);

        env_release(e, fd);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for %s within 2 s of the last close", a.object);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 0);
}

static void test_detach_wait_timeout(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        int fd = env_hold(e, a.node, O_RDONLY);
        assert_true(fd >= 0);
        Catcher *removed = catch_interfaces_removed(e);

        uint64_t start = now_usec();
        int r = call_detach(e, a.object, &error, &st, 2, OPT_B(LOOPMGR_OPT_WAIT, true),
                            OPT_T(LOOPMGR_OPT_TIMEOUT_USEC, 300 * USEC_PER_MSEC));
        uint64_t elapsed = now_usec() - start;
        assert_bus_error(r, &error, LOOPMGR_ERROR_TIMEOUT);
        if (elapsed < 250 * USEC_PER_MSEC || elapsed > 5 * USEC_PER_SEC)
                fail_msg("Detach(wait, 300 ms) returned after %" PRIu64 " ms", elapsed / 1000);

        /* The teardown is still pending, not cancelled. */
        PROPS_OK(e, a.object, &p);
        assert_string_equal(p.state, LOOPMGR_STATE_DETACH_PENDING);

        env_release(e, fd);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for %s within 2 s of the last close", a.object);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 0);
}

static void test_detach_not_found(void **state) {
        Env *e = *state;
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;

        int r = call_detach(e, LOOPMGR_DEVICE_PATH_PREFIX "/18446744073709551615", &error, &st, 0);
        assert_bus_error(r, &error, LOOPMGR_ERROR_NOT_FOUND);
        sd_bus_error_free(&error);
        r = call_detach(e, LOOPMGR_DEVICE_PATH_PREFIX "/0", &error, &st, 0);
        assert_bus_error(r, &error, LOOPMGR_ERROR_NOT_FOUND);
        sd_bus_error_free(&error);
        r = call_detach(e, "/org/example/NotADevice", &error, &st, 0);
        assert_bus_error(r, &error, LOOPMGR_ERROR_NOT_FOUND);
}

static void test_get_device(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *other = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {};
        char by_diskseq[64], missing[PATH_MAX];

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        snprintf(by_diskseq, sizeof(by_diskseq), "/dev/disk/by-diskseq/%" PRIu64, a.diskseq);
        snprintf(missing, sizeof(missing), "%s/no-such-file", e->tmpdir);

        const char *good[] = {a.node, a.node + 5, by_diskseq, path};
        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_free_ char *object = NULL;
                int r = call_get_device(e, good[i], &error, &object);
                assert_bus_ok(r, &error, good[i]);
                if (!streq(object, a.object))
                        fail_msg("GetDevice(%s) = %s, expected %s", good[i], object, a.object);
        }

        /* Well-formed names that match nothing are NotFound; strings that are none of the
         * accepted forms (not absolute, not loopN) are InvalidArgs (docs/API.md). */
        const struct {
                const char *what;
                const char *error;
        } bad[] = {
                {"/dev/loop999999", LOOPMGR_ERROR_NOT_FOUND},
                {"loop999999", LOOPMGR_ERROR_NOT_FOUND},
                {"/dev/disk/by-diskseq/999999999999", LOOPMGR_ERROR_NOT_FOUND},
                {missing, LOOPMGR_ERROR_NOT_FOUND},
                {other, LOOPMGR_ERROR_NOT_FOUND}, /* a file nothing is attached to */
                {"nonsense", DBUS_ERROR_INVALID_ARGS},
                {"loopx", DBUS_ERROR_INVALID_ARGS},
                {"", DBUS_ERROR_INVALID_ARGS},
                {"/dev/null", DBUS_ERROR_INVALID_ARGS}, /* neither a loop device nor a file */
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_free_ char *object = NULL;
                int r = call_get_device(e, bad[i].what, &error, &object);
                if (r >= 0)
                        fail_msg("GetDevice('%s') = %s, expected %s", bad[i].what, object,
                                 bad[i].error);
                if (!sd_bus_error_has_name(&error, bad[i].error))
                        fail_msg("GetDevice('%s'): expected %s, got %s: %s", bad[i].what,
                                 bad[i].error, error.name, error.message);
                assert_true(error.message && error.message[0]);
        }

        detach_gone(e, &a);
}

static void test_set_capacity(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 1 * MiB);
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {}, q = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        PROPS_OK(e, a.object, &p);
        assert_int_equal(p.size, 1 * MiB);

        assert_int_equal(truncate(path, 3 * MiB), 0);
        Catcher *changed = catch_properties_changed(e, a.object, "Size");

        int r = sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, a.object, LOOPMGR_DEVICE_INTERFACE,
                                   "SetCapacity", &error, NULL, "a{sv}", 1, "bogus", "b", 1);
        assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        sd_bus_error_free(&error);

        r = call_set_capacity(e, a.object, &error);
        assert_bus_ok(r, &error, "SetCapacity");
        PROPS_OK(e, a.object, &q);
        assert_int_equal(q.size, 3 * MiB);
        assert_sysfs_u64(a.node, "size", 3 * MiB / 512);
        if (catcher_wait(e, changed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no PropertiesChanged(Size) for %s", a.object);

        detach_gone(e, &a);
}

static void test_set_autoclear(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        /* Hold the device: with autoclear set, the kernel tears it down at the last close,
         * and udev's probe after our SetAutoclear could be that last close. */
        int fd = env_hold(e, a.node, O_RDONLY);
        assert_true(fd >= 0);

        Catcher *changed = catch_properties_changed(e, a.object, "Autoclear");
        Catcher *removed = catch_interfaces_removed(e);

        int r = call_set_autoclear(e, a.object, true, &error);
        assert_bus_ok(r, &error, "SetAutoclear");
        PROPS_OK(e, a.object, &p);
        assert_true(p.autoclear);
        assert_sysfs_u64(a.node, "loop/autoclear", 1);
        if (catcher_wait(e, changed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no PropertiesChanged(Autoclear) for %s", a.object);

        /* The kernel clears the device at our close; the daemon notices and drops it. */
        env_release(e, fd);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for %s after the autoclear", a.object);
        assert_true(wait_binding_gone(a.node + 5, a.diskseq, SIGNAL_TIMEOUT));
}

static void test_foreign_device(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *out = NULL, *object = NULL, *out2 = NULL;
        _cleanup_props_ DeviceProps p = {};
        uint64_t diskseq;

        Catcher *added = catch_interfaces_added(e);
        Catcher *removed = catch_interfaces_removed(e);

        char *argv[] = {(char *) "losetup", (char *) "--find", (char *) "--show", path, NULL};
        assert_int_equal(run_command(argv, NULL, &out, NULL), 0);
        out[strcspn(out, "\n")] = 0;
        assert_true(strncmp(out, "/dev/loop", 9) == 0);
        assert_int_equal(sysfs_read_u64(out + 5, "diskseq", &diskseq), 0);
        assert_int_equal(env_track_device(e, out + 5, diskseq), 0);

        /* Event-driven: the object appears without anyone asking the daemon. */
        int i = catcher_wait(e, added, NULL, out, SIGNAL_TIMEOUT);
        if (i < 0)
                fail_msg("no InterfacesAdded for the foreign %s within 2 s", out);
        object = strdup(added->paths[i]);
        assert_non_null(object);

        PROPS_OK(e, object, &p);
        assert_false(p.managed);
        assert_string_equal(p.backing_file, path);
        assert_int_equal(p.diskseq, diskseq);
        /* Nobody asked loopmgrd for it, so nobody holds a reference through it. */
        assert_int_equal(p.references, 0);
        assert_string_equal(p.state, LOOPMGR_STATE_ATTACHED);

        char *argv2[] = {(char *) "losetup", (char *) "-d", out, NULL};
        assert_int_equal(run_command(argv2, NULL, &out2, NULL), 0);
        if (catcher_wait(e, removed, object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for the foreign %s after losetup -d", out);
        assert_true(wait_binding_gone(out + 5, diskseq, SIGNAL_TIMEOUT));
}

static void test_shared_reuse(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {}, b = {};
        _cleanup_props_ DeviceProps p = {}, q = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        assert_false(a.reused);
        ATTACH_OK(e, path, O_RDWR, &b, 0);
        assert_true(b.reused);
        assert_string_equal(b.object, a.object);
        assert_string_equal(b.node, a.node);
        assert_int_equal(b.diskseq, a.diskseq);

        PROPS_OK(e, a.object, &p);
        assert_int_equal(p.references, 2);
        size_t n;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        assert_int_equal(n, 1);

        /* Dropping one reference keeps the device for the other. */
        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        PROPS_OK(e, a.object, &q);
        assert_int_equal(q.references, 1);
        assert_string_equal(q.state, LOOPMGR_STATE_ATTACHED);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 1);

        detach_gone(e, &a);
}

static void test_alias_refused(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_attached_ Attached a = {}, b = {}, x = {};
        int r;

        /* [0, 2M) and [2M, 4M) share no byte. */
        ATTACH_OK(e, path, O_RDWR, &a, 1, OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
        ATTACH_OK(e, path, O_RDWR, &b, 1, OPT_T(LOOPMGR_OPT_OFFSET, 2 * MiB));
        assert_false(b.reused);
        assert_string_not_equal(a.object, b.object);

        /* [1M, 3M) intersects both: rule 3, and the message names a culprit. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, path, O_RDWR, &error, &x, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
                assert_bus_error(r, &error, LOOPMGR_ERROR_OVERLAP);
                if (!strstr(error.message, a.node + 5) && !strstr(error.message, b.node + 5))
                        fail_msg("Overlap message does not name %s or %s: %s", a.node, b.node,
                                 error.message);
        }
        /* The whole file intersects both as well. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, path, O_RDWR, &error, &x, 0);
                assert_bus_error(r, &error, LOOPMGR_ERROR_OVERLAP);
        }
        /* Identical range but read-only: not rule 1, so an alias. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, path, O_RDWR, &error, &x, 2,
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB),
                                OPT_B(LOOPMGR_OPT_READ_ONLY, true));
                assert_bus_error(r, &error, LOOPMGR_ERROR_OVERLAP);
        }
        /* Identical range, exclusive. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, path, O_RDWR, &error, &x, 2,
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB),
                                OPT_S(LOOPMGR_OPT_SHARING, "exclusive"));
                assert_bus_error(r, &error, LOOPMGR_ERROR_BUSY);
        }

        size_t n;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        assert_int_equal(n, 2);

        detach_gone(e, &a);
        detach_gone(e, &b);
}

static void test_attach_udev_timeout(void **state) {
        Env *e = *state;
        _cleanup_free_ char *image = make_image(e, 2 * MiB), *path = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};

        /* Make udev slow for this one image only: PROGRAM runs while the rules are evaluated,
         * before udev creates the by-diskseq link, and udev holds the device open meanwhile. */
        assert_true(asprintf(&path, "%s/udev-slow-%d.img", e->tmpdir, (int) getpid()) > 0);
        assert_int_equal(rename(image, path), 0);
        assert_int_equal(
                env_add_udev_rule(
                        e,
                        "# written by loopmgr's test-integration; removed at the end of the test\n"
                        "SUBSYSTEM==\"block\", KERNEL==\"loop*\", "
                        "ATTR{loop/backing_file}==\"*/udev-slow-*\", PROGRAM=\"/bin/sleep 1\"\n"),
                0);

        uint64_t start = now_usec();
        int r = attach_file(e, path, O_RDWR, &error, &a, 1,
                            OPT_T(LOOPMGR_OPT_TIMEOUT_USEC, 300 * USEC_PER_MSEC));
        uint64_t elapsed = now_usec() - start;
        assert_bus_error(r, &error, LOOPMGR_ERROR_TIMEOUT);
        if (elapsed < 300 * USEC_PER_MSEC)
                fail_msg("Timeout after %" PRIu64 " ms, before the 300 ms asked for",
                         elapsed / 1000);

        /* "Nothing is left behind": the teardown completes once udev lets go of the device
         * (the kernel defers it to the last close). */
        uint64_t deadline = now_usec() + 3 * USEC_PER_SEC;
        size_t n;
        for (;;) {
                assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
                if (n == 0 || now_usec() >= deadline)
                        break;
                sleep_usec(50 * USEC_PER_MSEC);
        }
        if (n != 0)
                fail_msg("a device for %s is left after the udev timeout", path);
}

static void test_lifetime_client(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_close_ int fd = -EBADF;
        _cleanup_attached_ Attached a = {};
        sd_bus *client;

        assert_int_equal(env_new_bus(e, &client), 0);
        fd = open(path, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        int r = call_attach(e, client, fd, &error, &a, 1, OPT_S(LOOPMGR_OPT_LIFETIME, "client"));
        assert_bus_ok(r, &error, "Attach(lifetime=client)");

        Catcher *removed = catch_interfaces_removed(e);
        env_close_bus(e, client);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("the client's device %s outlived its connection", a.object);
        assert_true(wait_binding_gone(a.node + 5, a.diskseq, SIGNAL_TIMEOUT));
}

static void test_loop_over_loop_recursive(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached lower = {}, same = {}, upper = {};
        _cleanup_props_ DeviceProps pl = {}, pu = {};

        ATTACH_OK(e, path, O_RDWR, &lower, 0);

        /* A loop over the whole of lower exposes exactly lower's bytes: rule 1 hands lower
         * back instead of stacking an identical device on it. */
        ATTACH_OK(e, lower.node, O_RDWR, &same, 0);
        assert_true(same.reused);
        assert_string_equal(same.object, lower.object);
        detach_expect(e, lower.object, LOOPMGR_STATE_ATTACHED);

        /* A loop over part of lower is a real stack (rule 2: lower is in its chain). */
        ATTACH_OK(e, lower.node, O_RDWR, &upper, 1, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
        assert_false(upper.reused);
        assert_string_not_equal(upper.object, lower.object);

        PROPS_OK(e, upper.object, &pu);
        assert_int_equal(pu.size, 3 * MiB);
        assert_int_equal(pu.offset, 1 * MiB);
        if (pu.n_chain < 2)
                fail_msg("Chain of a loop over a loop has %zu entries", pu.n_chain);
        PROPS_OK(e, lower.object, &pl);
        bool seen = false;
        for (size_t i = 0; i < pl.n_openers; i++)
                if (streq(pl.opener_kinds[i], "loop"))
                        seen = true;
        if (!seen)
                fail_msg("Openers of %s do not list the stacked %s", lower.node, upper.node);

        Catcher *removed = catch_interfaces_removed(e);
        int r = call_detach(e, lower.object, &error, &st, 2, OPT_B(LOOPMGR_OPT_RECURSIVE, true),
                            OPT_B(LOOPMGR_OPT_WAIT, true));
        assert_bus_ok(r, &error, "Detach(recursive)");
        assert_string_equal(st, LOOPMGR_STATE_DETACHED);
        assert_int_equal(loop_binding_present(upper.node + 5, upper.diskseq), 0);
        assert_int_equal(loop_binding_present(lower.node + 5, lower.diskseq), 0);
        if (catcher_wait(e, removed, upper.object, NULL, SIGNAL_TIMEOUT) < 0 ||
            catcher_wait(e, removed, lower.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("InterfacesRemoved missing after the recursive detach");
}

static void test_detach_all_references(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {}, c = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        ATTACH_OK(e, path, O_RDWR, &c, 0);
        assert_true(c.reused);
        PROPS_OK(e, a.object, &p);
        assert_int_equal(p.references, 2);

        int r = call_detach(e, a.object, &error, &st, 1, OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true));
        assert_bus_ok(r, &error, "Detach(all-references)");
        assert_string_equal(st, LOOPMGR_STATE_DETACHED);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 0);
}

/* SPEC §3: an identical Attach while the device is detach-pending cancels the pending
 * teardown and reuses the device when the kernel still allows it (it does here: the device
 * is still bound and open, so clearing AUTOCLEAR revives it). */
static void test_attach_while_detach_pending(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {}, b = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        int fd = env_hold(e, a.node, O_RDONLY);
        assert_true(fd >= 0);
        detach_expect(e, a.object, LOOPMGR_STATE_PENDING);

        int r = attach_file(e, path, O_RDWR, &error, &b, 0);
        assert_bus_ok(r, &error, "Attach while the identical device is detach-pending");
        if (b.reused) {
                /* Revived: attached again, and our close must not tear it down any more. */
                assert_string_equal(b.object, a.object);
                PROPS_OK(e, b.object, &p);
                assert_string_equal(p.state, LOOPMGR_STATE_ATTACHED);
                assert_false(p.autoclear);
                assert_int_equal(p.references, 1);
                env_release(e, fd);
                sleep_usec(300 * USEC_PER_MSEC);
                assert_int_equal(loop_binding_present(b.node + 5, b.diskseq), 1);
                detach_gone(e, &b);
        } else {
                /* A fresh binding is only allowed once the old one is gone: never an alias. */
                assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 0);
                env_release(e, fd);
                detach_gone(e, &b);
        }
}

static void test_resolve(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        const char *kind = NULL;
        uint64_t base_device = 0, base_inode = 0, offset = UINT64_MAX, size = 0;
        size_t n_chain = 0;
        bool alias_seen = false;
        int r;

        ATTACH_OK(e, path, O_RDWR, &a, 1, OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
        fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);

        r = sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                               LOOPMGR_MANAGER_INTERFACE, "Resolve", &error, &reply, "ha{sv}", fd,
                               1, LOOPMGR_OPT_OFFSET, "t", (uint64_t) (1 * MiB));
        assert_bus_ok(r, &error, "Resolve");

        assert_true(sd_bus_message_enter_container(reply, 'a', "{sv}") > 0);
        while ((r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                const char *key, *contents;
                assert_true(sd_bus_message_read_basic(reply, 's', &key) > 0);
                assert_true(sd_bus_message_peek_type(reply, NULL, &contents) > 0);
                if (streq(key, "base-kind") && streq(contents, "s"))
                        assert_true(sd_bus_message_read(reply, "v", "s", &kind) > 0);
                else if (streq(key, "base-device") && streq(contents, "t"))
                        assert_true(sd_bus_message_read(reply, "v", "t", &base_device) > 0);
                else if (streq(key, "base-inode") && streq(contents, "t"))
                        assert_true(sd_bus_message_read(reply, "v", "t", &base_inode) > 0);
                else if (streq(key, "offset") && streq(contents, "t"))
                        assert_true(sd_bus_message_read(reply, "v", "t", &offset) > 0);
                else if (streq(key, "size") && streq(contents, "t"))
                        assert_true(sd_bus_message_read(reply, "v", "t", &size) > 0);
                else if (streq(key, "chain") && streq(contents, "as")) {
                        const char *line;
                        assert_true(sd_bus_message_enter_container(reply, 'v', "as") > 0);
                        assert_true(sd_bus_message_enter_container(reply, 'a', "s") > 0);
                        while (sd_bus_message_read_basic(reply, 's', &line) > 0)
                                n_chain++;
                        assert_true(sd_bus_message_exit_container(reply) > 0);
                        assert_true(sd_bus_message_exit_container(reply) > 0);
                } else if (streq(key, "aliases") && streq(contents, "ao")) {
                        const char *o;
                        assert_true(sd_bus_message_enter_container(reply, 'v', "ao") > 0);
                        assert_true(sd_bus_message_enter_container(reply, 'a', "o") > 0);
                        while (sd_bus_message_read_basic(reply, 'o', &o) > 0)
                                if (streq(o, a.object))
                                        alias_seen = true;
                        assert_true(sd_bus_message_exit_container(reply) > 0);
                        assert_true(sd_bus_message_exit_container(reply) > 0);
                } else
                        fail_msg("Resolve returned unexpected key %s of type %s", key, contents);
                assert_true(sd_bus_message_exit_container(reply) > 0);
        }
        assert_true(r >= 0);

        assert_non_null(kind);
        assert_string_equal(kind, "file");
        assert_int_equal(base_device, st.st_dev);
        assert_int_equal(base_inode, st.st_ino);
        assert_int_equal(offset, 1 * MiB);
        assert_int_equal(size, 3 * MiB);
        assert_true(n_chain >= 1);
        /* [1M, 4M) meets the device's [0, 2M). */
        if (!alias_seen)
                fail_msg("Resolve does not list %s among the aliases", a.object);
        /* Resolving attaches nothing. */
        size_t n;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        assert_int_equal(n, 1);

        detach_gone(e, &a);
}

typedef struct AsyncAttach {
        bool done;
        int error_errno;
        char *error_name;
        char *object;
        char *node;
        uint64_t diskseq;
        int reused;
        uint64_t usec; /* when the reply arrived, after the first call */
} AsyncAttach;

static int async_attach_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        AsyncAttach *a = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        const char *object, *node;

        a->done = true;
        if (e) {
                a->error_name = strdup(e->name);
                return 0;
        }
        if (sd_bus_message_read(m, "ostb", &object, &node, &a->diskseq, &a->reused) < 0) {
                a->error_name = strdup("(unparsable reply)");
                return 0;
        }
        a->object = strdup(object);
        a->node = strdup(node);
        return 0;
}

/* SPEC §1: concurrent requests for the same data coalesce; no two devices for one file. */
static void test_concurrent_attach(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_props_ DeviceProps p = {};
        enum { N = 8 };
        sd_bus *buses[N];
        sd_bus_slot *slots[N] = {};
        AsyncAttach results[N] = {};
        _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
        size_t reused = 0;

        assert_true(fd >= 0);
        for (size_t i = 0; i < N; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                assert_int_equal(env_new_bus(e, &buses[i]), 0);
                assert_true(sd_bus_message_new_method_call(
                                    buses[i], &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                    LOOPMGR_MANAGER_INTERFACE, "Attach") >= 0);
                assert_true(sd_bus_message_append(m, "ha{sv}", fd, 0) >= 0);
                assert_true(sd_bus_call_async(buses[i], &slots[i], m, async_attach_reply,
                                              &results[i], 30 * USEC_PER_SEC) >= 0);
        }

        uint64_t start = now_usec(), deadline = start + 30 * USEC_PER_SEC;
        for (;;) {
                size_t done = 0;
                for (size_t i = 0; i < N; i++) {
                        while (sd_bus_process(buses[i], NULL) > 0)
                                ;
                        if (results[i].done && results[i].usec == 0)
                                results[i].usec = now_usec() - start;
                        done += results[i].done;
                }
                if (done == N)
                        break;
                if (now_usec() >= deadline)
                        break;
                sleep_usec(5 * USEC_PER_MSEC);
        }

        /* Track everything first, so the teardown cleans up whatever the assertions find. */
        for (size_t i = 0; i < N; i++)
                if (results[i].node && strncmp(results[i].node, "/dev/", 5) == 0)
                        (void) env_track_device(e, results[i].node + 5, results[i].diskseq);

        bool ok = true;
        for (size_t i = 0; i < N; i++) {
                if (!results[i].done || !results[i].object) {
                        print_error("attach %zu: %s after %" PRIu64 " ms\n", i,
                                    results[i].done ? results[i].error_name : "no reply",
                                    results[i].usec / 1000);
                        ok = false;
                } else if (!streq(results[i].object, results[0].object ?: "")) {
                        print_error("attach %zu got %s, attach 0 got %s\n", i, results[i].object,
                                    results[0].object);
                        ok = false;
                } else if (results[i].reused)
                        reused++;
        }
        for (size_t i = 0; i < N; i++) {
                sd_bus_slot_unref(slots[i]);
                free(results[i].error_name);
                free(results[i].node);
        }
        if (!ok) {
                for (size_t i = 0; i < N; i++)
                        free(results[i].object);
                fail_msg("concurrent identical Attach calls did not coalesce on one device");
        }
        char *object = results[0].object;
        for (size_t i = 1; i < N; i++)
                free(results[i].object);

        size_t n;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(reused, N - 1);
        int r = device_props_get(e, object, &error, &p);
        if (r < 0)
                free(object);
        assert_bus_ok(r, &error, "GetAll");
        if (p.references != N)
                fail_msg("%u references after %d attaches", p.references, N);

        r = call_detach(e, object, &error, &st, 1, OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true));
        free(object);
        assert_bus_ok(r, &error, "Detach(all-references)");
        assert_string_equal(st, LOOPMGR_STATE_DETACHED);
}

/* AttachPath with a path that does not exist: ENOENT, which sd-bus and systemd name
 * FileNotFound. NotFound is reserved for "no such device". */
static void test_attach_path(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {}, x = {};
        _cleanup_props_ DeviceProps p = {};
        char missing[PATH_MAX];

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = call_attach_path(e, path, &error, &a, 0);
                assert_bus_ok(r, &error, "AttachPath");
        }
        PROPS_OK(e, a.object, &p);
        assert_string_equal(p.backing_file, path);
        assert_true(p.managed);
        assert_int_equal(p.references, 1);

        snprintf(missing, sizeof(missing), "%s/no-such-file", e->tmpdir);
        const struct {
                const char *path;
                const char *error;
        } bad[] = {
                {"relative/path.img", DBUS_ERROR_INVALID_ARGS},
                {"", DBUS_ERROR_INVALID_ARGS},
                {e->tmpdir, DBUS_ERROR_INVALID_ARGS},
                {"/dev/null", DBUS_ERROR_INVALID_ARGS},
                {missing, DBUS_ERROR_FILE_NOT_FOUND},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = call_attach_path(e, bad[i].path, &error, &x, 0);
                if (r >= 0)
                        fail_msg("AttachPath(%s) succeeded: %s", bad[i].path, x.node);
                if (!sd_bus_error_has_name(&error, bad[i].error))
                        fail_msg("AttachPath('%s'): expected %s, got %s: %s", bad[i].path,
                                 bad[i].error, error.name, error.message);
                assert_true(error.message && error.message[0]);
        }

        detach_gone(e, &a);
}

static int ctl(Env *e, char **ret_out, char **ret_err, const char *arg, ...) {
        char *argv[16] = {e->loopmgrctl};
        size_t n = 1;
        va_list ap;

        va_start(ap, arg);
        for (const char *a = arg; a && n < ELEMENTSOF(argv) - 1; a = va_arg(ap, const char *))
                argv[n++] = (char *) a;
        va_end(ap);
        argv[n] = NULL;
        return run_command(argv, NULL, ret_out, ret_err);
}

#define CTL_EXPECT(e, status, ...)                                                                 \
        do {                                                                                       \
                _cleanup_free_ char *_o = NULL, *_e = NULL;                                        \
                int _r = ctl((e), &_o, &_e, __VA_ARGS__, NULL);                                    \
                if (_r != (status))                                                                \
                        fail_msg("loopmgrctl %s: exit %d, expected %d\nstdout: %s\n"               \
                                 "stderr: %s",                                                     \
                                 #__VA_ARGS__, _r, (status), _o ?: "", _e ?: "");                  \
        } while (0)

/* jq -e FILTER with $a, $b, $c bound to the strings given; 0 when the filter holds. */
static int jq_check(const char *json, const char *filter, const char *a, const char *b,
                    const char *c) {
        _cleanup_free_ char *out = NULL;
        char *argv[] = {(char *) "jq", (char *) "-e",      (char *) "--arg",
                        (char *) "a",  (char *) (a ?: ""), (char *) "--arg",
                        (char *) "b",  (char *) (b ?: ""), (char *) "--arg",
                        (char *) "c",  (char *) (c ?: ""), (char *) filter,
                        NULL};
        return run_command(argv, json, &out, NULL);
}

#define CTL_OK(e, out, ...)                                                                        \
        do {                                                                                       \
                _cleanup_free_ char *_e = NULL;                                                    \
                free(out);                                                                         \
                out = NULL;                                                                        \
                int _r = ctl((e), &(out), &_e, __VA_ARGS__, NULL);                                 \
                if (_r != 0)                                                                       \
                        fail_msg("loopmgrctl %s: exit %d\nstdout: %s\nstderr: %s", #__VA_ARGS__,   \
                                 _r, (out) ?: "", _e ?: "");                                       \
        } while (0)

/* The exit codes are those of man/loopmgrctl.1: 0 ok, 1 failure, 2 usage, 3 conflict
 * (Overlap/Busy/Cycle), 4 not authorised, 5 not found, 6 timeout. */
static void test_loopmgrctl(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_free_ char *object = NULL, *out = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_props_ DeviceProps p = {};
        int r;

        if (access(e->loopmgrctl, X_OK) < 0)
                fail_msg("%s: %m", e->loopmgrctl);

        CTL_EXPECT(e, 0, "--help");
        CTL_EXPECT(e, 2, "--no-such-flag");
        CTL_EXPECT(e, 2, "no-such-verb");
        CTL_EXPECT(e, 2, "attach"); /* missing argument */
        CTL_EXPECT(e, 2, "attach", "--offset", "nonsense", path);
        CTL_EXPECT(e, 2, "attach", "--direct-io", "maybe", path);
        assert_no_device_for(path);

        CTL_OK(e, out, "attach", "--json", path);
        r = call_get_device(e, path, &error, &object);
        assert_bus_ok(r, &error, "GetDevice after loopmgrctl attach");
        PROPS_OK(e, object, &p);
        assert_int_equal(env_track_device(e, p.name, p.diskseq), 0);
        assert_true(p.managed);
        assert_int_equal(p.references, 1);
        if (jq_check(out, ".object == $a and .device == $b and .reused == false", object, p.node,
                     NULL) != 0)
                fail_msg("loopmgrctl attach --json: unexpected output: %s", out);

        /* The same file again is the same device (shared), with a second reference. */
        CTL_OK(e, out, "attach", "--json", path);
        if (jq_check(out, ".object == $a and .reused == true", object, NULL, NULL) != 0)
                fail_msg("second loopmgrctl attach --json: unexpected output: %s", out);

        /* Conflicts exit with 3. */
        CTL_EXPECT(e, 3, "attach", "--exclusive", path);
        CTL_EXPECT(e, 3, "attach", "--offset", "1048576", path);

        CTL_OK(e, out, "list", "--json");
        if (jq_check(out,
                     ".devices | type == \"array\" and "
                     "(map(select(.device == $a and .object == $b and .\"backing-file\" == $c "
                     "and .managed == true and .refs == 2)) | length == 1)",
                     p.node, object, path) != 0)
                fail_msg("loopmgrctl list --json does not show %s as expected: %s", p.node, out);
        CTL_OK(e, out, "list");
        if (!strstr(out, p.name) && !strstr(out, p.node))
                fail_msg("loopmgrctl list does not mention %s: %s", p.node, out);

        CTL_OK(e, out, "status", p.node);
        if (!strstr(out, path))
                fail_msg("loopmgrctl status %s does not show the backing file: %s", p.node, out);
        CTL_OK(e, out, "status", "--json", path);
        if (jq_check(out,
                     ".devices | length == 1 and (.[0] | .object == $a and .device == $b and "
                     ".\"backing-file\" == $c)",
                     object, p.node, path) != 0)
                fail_msg("loopmgrctl status --json %s: unexpected output: %s", path, out);

        /* Drop both references: by node, then by backing file. */
        CTL_OK(e, out, "detach", "--json", p.node);
        if (jq_check(out, ".object == $a and .device == $b and .state == \"attached\"", object,
                     p.node, NULL) != 0)
                fail_msg("loopmgrctl detach --json (first reference): %s", out);
        assert_int_equal(loop_binding_present(p.name, p.diskseq), 1);
        CTL_OK(e, out, "detach", "--json", path);
        if (jq_check(out, ".object == $a and .device == $b and .state == \"detached\"", object,
                     p.node, NULL) != 0)
                fail_msg("loopmgrctl detach --json (last reference): %s", out);
        if (!wait_binding_gone(p.name, p.diskseq, SIGNAL_TIMEOUT))
                fail_msg("%s still attached after loopmgrctl detach", p.node);

        /* No such device: 5. */
        CTL_EXPECT(e, 5, "detach", "/dev/loop999999");
        CTL_EXPECT(e, 5, "status", "/dev/loop999999");
        CTL_EXPECT(e, 5, "detach", path);
}

/* Managed devices and their references survive a daemon restart (state in
 * LOOPMGR_STATE_DIR): a restarted daemon must not forget what it was asked to keep. */
static void test_daemon_restart(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {}, b = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        ATTACH_OK(e, path, O_RDWR, &b, 0);
        assert_true(b.reused);

        if (env_stop_daemon(e) < 0) {
                env_group_failed = true;
                fail_msg("loopmgrd did not exit cleanly on SIGTERM");
        }
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 1);
        if (env_start_daemon(e) < 0) {
                env_group_failed = true;
                fail_msg("loopmgrd did not start again");
        }

        PROPS_OK(e, a.object, &p);
        assert_true(p.managed);
        assert_int_equal(p.references, 2);
        assert_string_equal(p.backing_file, path);

        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &a);
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
        const char *reason;

        if (env_skip_reason(&reason)) {
                printf("skipping: %s\n", reason);
                return 77;
        }
        if (access("/run/udev/control", F_OK) < 0)
                fprintf(stderr, "warning: udev does not seem to run (no /run/udev/control); "
                                "attaching will time out\n");

        const char *filter = getenv("LOOPMGR_TEST_FILTER");
        if (filter && *filter)
                cmocka_set_test_filter(filter);
        filter = getenv("LOOPMGR_TEST_SKIP");
        if (filter && *filter)
                cmocka_set_skip_filter(filter);

        int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
        if (env_group_failed && failed == 0)
                failed = 1;
        if (failed) {
                /* A failed assertion longjmps past the test's cleanup handlers, so LeakSanitizer
                 * would add its own (meaningless) report and abort; the failure is reported
                 * already. Leaks are checked on successful runs. */
                fflush(NULL);
                _exit(1);
        }
        return 0;
}
