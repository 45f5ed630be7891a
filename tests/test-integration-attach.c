/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-integration's tests of Attach: options, offsets, read-only, sector size, direct I/O,
 * bad file descriptors, handle indexes and options. */

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
/* Tests */

void test_version(void **state) {
        Env *e = *state;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *version = NULL;

        int r = get_version(e, &error, &version);
        assert_bus_ok(r, &error, "Get Version");
        /* Daemon and test come from the same tree. */
        assert_string_equal(version, LOOPMGR_VERSION);
}

void test_attach_simple(void **state) {
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

void test_attach_offset(void **state) {
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

void test_attach_offset_size_limit(void **state) {
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

void test_attach_read_only_option(void **state) {
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

void test_attach_read_only_fd(void **state) {
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

void test_attach_read_only_fd_writable(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};

        int r = attach_file(e, path, O_RDONLY, &error, &a, 1, OPT_B(LOOPMGR_OPT_READ_ONLY, false));
        assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        assert_no_device_for(path);
}

void test_attach_sector_size_4096(void **state) {
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

void test_direct_io_on(void **state) {
        Env *e = *state;
        if (!fs_has_direct_io(e->tmpdir))
                skip();
        direct_io_case(e, "on", true);
}

void test_direct_io_off(void **state) {
        direct_io_case(*state, "off", false);
}

void test_direct_io_auto(void **state) {
        Env *e = *state;
        if (!fs_has_direct_io(e->tmpdir))
                skip();
        direct_io_case(e, "auto", true);
}

/* A backing file system without O_DIRECT: "on" must fail and leave nothing behind, "auto"
 * must fall back. The SPEC names no error for an impossible "on"; docs/API.md documents
 * InvalidArgs. */
void test_direct_io_unsupported_fs(void **state) {
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

void test_attach_bad_fds(void **state) {
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
void test_attach_bad_handle_index(void **state) {
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

void test_attach_bad_options(void **state) {
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
