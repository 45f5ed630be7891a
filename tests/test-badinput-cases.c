/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-badinput's tests: Manager's signatures, Attach's options, fds, handle indexes and paths,
 * Detach and GetDevice inputs, the Device methods, a recycled loop number. */

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

/* ------------------------------------------------------------------------------------------ */
/* Manager: signatures, unknown methods, Properties */

void test_manager_signatures(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
        const char *M = LOOPMGR_MANAGER_PATH, *I = LOOPMGR_MANAGER_INTERFACE;
        const char *P = PROPERTIES_INTERFACE, *IA = DBUS_ERROR_INVALID_ARGS;

        assert_true(fd >= 0);

        sig_row(e, M, I, "Attach", "a string for the fd (sa{sv})", IA, "sa{sv}", path, 0);
        sig_row(e, M, I, "Attach", "an integer for the fd (ua{sv})", IA, "ua{sv}", 3u, 0);
        sig_row(e, M, I, "Attach", "options missing (h)", IA, "h", fd);
        sig_row(e, M, I, "Attach", "no arguments", IA, "");
        sig_row(e, M, I, "Attach", "an extra argument (ha{sv}s)", IA, "ha{sv}s", fd, 0, "extra");
        sig_row(e, M, I, "Attach", "options as a{ss}", IA, "ha{ss}", fd, 1, "offset", "0");
        sig_row(e, M, I, "Attach", "arguments swapped (a{sv}h)", IA, "a{sv}h", 0, fd);

        sig_row(e, M, I, "AttachPath", "an fd for the path (ha{sv})", IA, "ha{sv}", fd, 0);
        sig_row(e, M, I, "AttachPath", "an object path for the path (oa{sv})", IA, "oa{sv}", "/x",
                0);
        sig_row(e, M, I, "AttachPath", "options missing (s)", IA, "s", path);
        sig_row(e, M, I, "AttachPath", "no arguments", IA, "");
        sig_row(e, M, I, "AttachPath", "an extra argument (sa{sv}b)", IA, "sa{sv}b", path, 0, 1);

        sig_row(e, M, I, "Detach", "a string for the object (sa{sv})", IA, "sa{sv}",
                LOOPMGR_DEVICE_PATH_PREFIX "/1", 0);
        sig_row(e, M, I, "Detach", "a diskseq for the object (ta{sv})", IA, "ta{sv}", (uint64_t) 1,
                0);
        sig_row(e, M, I, "Detach", "options missing (o)", IA, "o", LOOPMGR_DEVICE_PATH_PREFIX "/1");
        sig_row(e, M, I, "Detach", "no arguments", IA, "");
        sig_row(e, M, I, "Detach", "an extra argument (oa{sv}o)", IA, "oa{sv}o",
                LOOPMGR_DEVICE_PATH_PREFIX "/1", 0, "/");

        sig_row(e, M, I, "GetDevice", "no arguments", IA, "");
        sig_row(e, M, I, "GetDevice", "an object path (o)", IA, "o", "/dev/loop0");
        sig_row(e, M, I, "GetDevice", "two strings (ss)", IA, "ss", "/dev/loop0", "loop0");
        sig_row(e, M, I, "GetDevice", "a string array (as)", IA, "as", 1, "/dev/loop0");
        sig_row(e, M, I, "GetDevice", "a number (t)", IA, "t", (uint64_t) 0);

        sig_row(e, M, I, "Resolve", "a string for the fd (sa{sv})", IA, "sa{sv}", path, 0);
        sig_row(e, M, I, "Resolve", "options missing (h)", IA, "h", fd);
        sig_row(e, M, I, "Resolve", "no arguments", IA, "");
        sig_row(e, M, I, "Resolve", "two dictionaries (ha{sv}a{sv})", IA, "ha{sv}a{sv}", fd, 0, 0);

        sig_row(e, M, I, "NoSuchMethod", "unknown method", DBUS_ERROR_UNKNOWN_METHOD, "");
        sig_row(e, M, I, "attach", "method name in the wrong case", DBUS_ERROR_UNKNOWN_METHOD,
                "ha{sv}", fd, 0);
        sig_row(e, M, LOOPMGR_DEVICE_INTERFACE, "SetCapacity",
                "Device method on the manager object", DBUS_ERROR_UNKNOWN_METHOD, "a{sv}", 0);

        sig_row(e, M, P, "Get", "unknown property", DBUS_ERROR_UNKNOWN_PROPERTY, "ss", I,
                "NoSuchProperty");
        sig_row(e, M, P, "Get", "property name in the wrong case", DBUS_ERROR_UNKNOWN_PROPERTY,
                "ss", I, "version");
        sig_row(e, M, P, "Get", "Device property on the manager", DBUS_ERROR_UNKNOWN_PROPERTY, "ss",
                LOOPMGR_DEVICE_INTERFACE, "Node");
        sig_row(e, M, P, "Get", "unknown interface", DBUS_ERROR_UNKNOWN_PROPERTY, "ss",
                "org.example.NoSuchInterface", "Version");
        sig_row(e, M, P, "Get", "interface argument missing (s)", IA, "s", "Version");
        sig_row(e, M, P, "Set", "read-only property Version", DBUS_ERROR_READ_ONLY, "ssv", I,
                "Version", "s", "9.9");
        sig_row(e, M, P, "Set", "Version with the wrong type", DBUS_ERROR_READ_ONLY, "ssv", I,
                "Version", "u", 9u);
        sig_row(e, M, P, "GetAll", "unknown interface", DBUS_ERROR_UNKNOWN_INTERFACE, "s",
                "org.example.NoSuchInterface");

        matrix_end();
}

/* ------------------------------------------------------------------------------------------ */
/* Options, offsets and sizes */

void test_attach_options(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
        const char *IA = DBUS_ERROR_INVALID_ARGS;
        const uint64_t top = (uint64_t) INT64_MAX - 511; /* largest multiple of 512 in loff_t */

        assert_true(fd >= 0);

        /* A valid call first: the rows below fail because of their input, not the setup. */
        attach_row(e, "offset 512, size-limit 1 MiB (control)", ACCEPTED, fd,
                   OPTS(OT("offset", 512), OT("size-limit", MiB)));

        /* Keys */
        attach_row(e, "unknown key", IA, fd, OPTS(OB("no-such-option", true)));
        attach_row(e, "misspelt key readonly", IA, fd, OPTS(OB("readonly", true)));
        attach_row(e, "empty key", IA, fd, OPTS(OB("", true)));
        attach_row(e, "key in the wrong case (Offset)", IA, fd, OPTS(OT("Offset", 0)));
        attach_row(e, "key given twice (read-only)", IA, fd,
                   OPTS(OB("read-only", true), OB("read-only", false)));
        attach_row(e, "detach option (wait)", IA, fd, OPTS(OB("wait", true)));

        /* Types: each key with a type it does not take */
        attach_row(e, "offset as u", IA, fd, OPTS(OU("offset", 512)));
        attach_row(e, "offset as i (-512)", IA, fd, OPTS(OI("offset", -512)));
        attach_row(e, "offset as s", IA, fd, OPTS(OS("offset", "512")));
        attach_row(e, "offset as d", IA, fd, OPTS(OD("offset", 512.0)));
        attach_row(e, "size-limit as u", IA, fd, OPTS(OU("size-limit", 512)));
        attach_row(e, "read-only as s", IA, fd, OPTS(OS("read-only", "true")));
        attach_row(e, "read-only as u", IA, fd, OPTS(OU("read-only", 1)));
        attach_row(e, "partscan as i", IA, fd, OPTS(OI("partscan", 1)));
        attach_row(e, "direct-io as b", IA, fd, OPTS(OB("direct-io", true)));
        attach_row(e, "direct-io as as", IA, fd, OPTS(OAS("direct-io", "on")));
        attach_row(e, "sector-size as t", IA, fd, OPTS(OT("sector-size", 4096)));
        attach_row(e, "sharing as b", IA, fd, OPTS(OB("sharing", false)));
        attach_row(e, "lifetime as u", IA, fd, OPTS(OU("lifetime", 0)));
        attach_row(e, "wait-udev as s", IA, fd, OPTS(OS("wait-udev", "yes")));
        attach_row(e, "timeout-usec as u", IA, fd, OPTS(OU("timeout-usec", 1000000)));
        attach_row(e, "auth.no_user_interaction as s", IA, fd,
                   OPTS(OS("auth.no_user_interaction", "true")));

        /* Values */
        attach_row(e, "offset 2^63", IA, fd, OPTS(OT("offset", UINT64_C(1) << 63)));
        attach_row(e, "offset 2^64-512", IA, fd, OPTS(OT("offset", UINT64_MAX - 511)));
        attach_row(e, "offset 2^63-512 (fits loff_t, beyond the end)", IA, fd,
                   OPTS(OT("offset", top)));
        attach_row(e, "offset 513", IA, fd, OPTS(OT("offset", 513)));
        attach_row(e, "offset 1", IA, fd, OPTS(OT("offset", 1)));
        attach_row(e, "offset = file size (empty device)", IA, fd, OPTS(OT("offset", 2 * MiB)));
        attach_row(e, "offset 4 MiB (beyond the end)", IA, fd, OPTS(OT("offset", 4 * MiB)));
        attach_row(e, "size-limit 100", IA, fd, OPTS(OT("size-limit", 100)));
        attach_row(e, "size-limit 2^64-512", IA, fd, OPTS(OT("size-limit", UINT64_MAX - 511)));
        attach_row(e, "size-limit 4 MiB (longer than the file)", IA, fd,
                   OPTS(OT("size-limit", 4 * MiB)));
        attach_row(e, "offset 1 MiB + size-limit 1.5 MiB (past the end)", IA, fd,
                   OPTS(OT("offset", MiB), OT("size-limit", 3 * MiB / 2)));
        attach_row(e, "offset+size-limit overflow (2^62 + 2^62)", IA, fd,
                   OPTS(OT("offset", UINT64_C(1) << 62), OT("size-limit", UINT64_C(1) << 62)));
        attach_row(e, "offset+size-limit overflow (2^63-512 + 512)", IA, fd,
                   OPTS(OT("offset", top), OT("size-limit", 512)));
        attach_row(e, "offset 1 MiB + size-limit 2^64-512 (wraps)", IA, fd,
                   OPTS(OT("offset", MiB), OT("size-limit", UINT64_MAX - 511)));
        attach_row(e, "size-limit 2 KiB with sector-size 4096", IA, fd,
                   OPTS(OT("size-limit", 2048), OU("sector-size", 4096)));
        attach_row(e, "sector-size 0", IA, fd, OPTS(OU("sector-size", 0)));
        attach_row(e, "sector-size 3", IA, fd, OPTS(OU("sector-size", 3)));
        attach_row(e, "sector-size 8192", IA, fd, OPTS(OU("sector-size", 8192)));
        attach_row(e, "sector-size 2^32-1", IA, fd, OPTS(OU("sector-size", UINT32_MAX)));
        attach_row(e, "direct-io maybe", IA, fd, OPTS(OS("direct-io", "maybe")));
        attach_row(e, "direct-io ON (case)", IA, fd, OPTS(OS("direct-io", "ON")));
        attach_row(e, "direct-io empty", IA, fd, OPTS(OS("direct-io", "")));
        attach_row(e, "sharing x", IA, fd, OPTS(OS("sharing", "x")));
        attach_row(e, "lifetime forever", IA, fd, OPTS(OS("lifetime", "forever")));
        attach_row(e, "timeout-usec 0", IA, fd, OPTS(OT("timeout-usec", 0)));
        attach_row(e, "timeout-usec 2 h", IA, fd, OPTS(OT("timeout-usec", 7200ULL * USEC_PER_SEC)));
        attach_row(e, "timeout-usec 2^64-1", IA, fd, OPTS(OT("timeout-usec", UINT64_MAX)));

        /* The same parser behind AttachPath and Resolve. */
        attach_path_row(e, "unknown key", IA, path, OPTS(OB("no-such-option", true)));
        attach_path_row(e, "offset as u", IA, path, OPTS(OU("offset", 512)));
        attach_path_row(e, "offset 2^63", IA, path, OPTS(OT("offset", UINT64_C(1) << 63)));
        attach_path_row(e, "offset 513", IA, path, OPTS(OT("offset", 513)));
        attach_path_row(e, "size-limit 100", IA, path, OPTS(OT("size-limit", 100)));
        attach_path_row(e, "offset+size-limit overflow", IA, path,
                        OPTS(OT("offset", top), OT("size-limit", 512)));
        attach_path_row(e, "direct-io maybe", IA, path, OPTS(OS("direct-io", "maybe")));

        resolve_row(e, "offset 512 (control)", ACCEPTED, fd, OPTS(OT("offset", 512)));
        resolve_row(e, "unknown key", IA, fd, OPTS(OB("no-such-option", true)));
        resolve_row(e, "detach option (recursive)", IA, fd, OPTS(OB("recursive", true)));
        resolve_row(e, "offset as u", IA, fd, OPTS(OU("offset", 512)));
        resolve_row(e, "offset 2^63", IA, fd, OPTS(OT("offset", UINT64_C(1) << 63)));
        resolve_row(e, "offset 2^64-512", IA, fd, OPTS(OT("offset", UINT64_MAX - 511)));
        resolve_row(e, "offset 513", IA, fd, OPTS(OT("offset", 513)));
        resolve_row(e, "offset 4 MiB (beyond the end)", IA, fd, OPTS(OT("offset", 4 * MiB)));
        resolve_row(e, "size-limit 100", IA, fd, OPTS(OT("size-limit", 100)));
        resolve_row(e, "offset+size-limit overflow", IA, fd,
                    OPTS(OT("offset", top), OT("size-limit", 512)));

        matrix_end();
}

/* ------------------------------------------------------------------------------------------ */
/* File descriptors */

void test_attach_fds(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB), *gone = make_image(e, 2 * MiB);
        _cleanup_free_ char *empty = make_image(e, 0), *tiny = make_image(e, 100);
        _cleanup_close_ int pipe_r = -EBADF, pipe_w = -EBADF, sock0 = -EBADF, sock1 = -EBADF;
        _cleanup_close_ int dir = -EBADF, opath = -EBADF, null = -EBADF, wronly = -EBADF;
        _cleanup_close_ int rdonly = -EBADF, efd = -EBADF, proc = -EBADF, deleted = -EBADF;
        _cleanup_close_ int empty_fd = -EBADF, tiny_fd = -EBADF, dgram = -EBADF;
        const char *IA = DBUS_ERROR_INVALID_ARGS;
        int p[2], s[2];

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pipe_r = p[0];
        pipe_w = p[1];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
        sock0 = s[0];
        sock1 = s[1];
        assert_true((dgram = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) >= 0 ||
                    (dgram = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) >= 0);
        assert_true((dir = open(e->tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0);
        assert_true((opath = open(path, O_PATH | O_CLOEXEC)) >= 0);
        assert_true((null = open("/dev/null", O_RDWR | O_CLOEXEC)) >= 0);
        assert_true((wronly = open(path, O_WRONLY | O_CLOEXEC)) >= 0);
        assert_true((rdonly = open(path, O_RDONLY | O_CLOEXEC)) >= 0);
        assert_true((efd = eventfd(0, EFD_CLOEXEC)) >= 0);
        assert_true((proc = open("/proc/version", O_RDONLY | O_CLOEXEC)) >= 0);
        assert_true((empty_fd = open(empty, O_RDWR | O_CLOEXEC)) >= 0);
        assert_true((tiny_fd = open(tiny, O_RDWR | O_CLOEXEC)) >= 0);

        attach_row(e, "fd is a pipe (read end)", IA, pipe_r, NO_OPTS);
        attach_row(e, "fd is a pipe (write end)", IA, pipe_w, NO_OPTS);
        attach_row(e, "fd is a unix stream socket", IA, sock0, NO_OPTS);
        attach_row(e, "fd is a datagram socket", IA, dgram, NO_OPTS);
        attach_row(e, "fd is a directory", IA, dir, NO_OPTS);
        attach_row(e, "fd is O_PATH", IA, opath, NO_OPTS);
        attach_row(e, "fd is O_WRONLY", IA, wronly, NO_OPTS);
        attach_row(e, "fd is a character device (/dev/null)", IA, null, NO_OPTS);
        attach_row(e, "fd is an eventfd (anonymous inode)", IA, efd, NO_OPTS);
        attach_row(e, "fd is /proc/version (size 0)", IA, proc, NO_OPTS);
        attach_row(e, "fd is an empty file", IA, empty_fd, NO_OPTS);
        attach_row(e, "fd is a 100-byte file (< 1 sector)", IA, tiny_fd, NO_OPTS);
        attach_row(e, "O_RDONLY fd with read-only=false", IA, rdonly, OPTS(OB("read-only", false)));

        resolve_row(e, "fd is a pipe", IA, pipe_r, NO_OPTS);
        resolve_row(e, "fd is a socket", IA, sock0, NO_OPTS);
        resolve_row(e, "fd is a directory", IA, dir, NO_OPTS);
        resolve_row(e, "fd is O_PATH", IA, opath, NO_OPTS);
        resolve_row(e, "fd is O_WRONLY", IA, wronly, NO_OPTS);
        resolve_row(e, "fd is a character device (/dev/null)", IA, null, NO_OPTS);
        resolve_row(e, "fd is an eventfd", IA, efd, NO_OPTS);

        /* A file deleted after it was opened is accepted, like losetup does (docs/API.md): the
         * caller can read it, and the kernel names it "<path> (deleted)". */
        assert_true((deleted = open(gone, O_RDWR | O_CLOEXEC)) >= 0);
        assert_int_equal(unlink(gone), 0);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached a = {};
                _cleanup_props_ DeviceProps props = {};
                const char *suffix = " (deleted)";
                int r = call_attach(e, NULL, deleted, &error, &a, 0);
                if (r >= 0)
                        matrix.devices++;
                row(e, "Manager.Attach", "fd of a deleted file", ACCEPTED, r, &error);
                if (r >= 0) {
                        sd_bus_error_free(&error);
                        r = device_props_get(e, a.object, &error, &props);
                        assert_bus_ok(r, &error, "GetAll");
                        size_t n = props.backing_file ? strlen(props.backing_file) : 0;
                        print_message("  BackingFile of the deleted file: '%s'\n",
                                      props.backing_file ?: "");
                        if (n < strlen(suffix) ||
                            !streq(props.backing_file + n - strlen(suffix), suffix) ||
                            strncmp(props.backing_file, gone, strlen(gone)) != 0)
                                fail_msg("BackingFile is '%s', expected '%s%s'",
                                         props.backing_file ?: "", gone, suffix);
                        resolve_row(e, "fd of a deleted file", ACCEPTED, deleted, NO_OPTS);
                        release_device(e, &a);
                }
        }

        matrix_end();
}

/* Handle indexes outside the message's fds (the wire protocol allows them; sd-bus does not
 * send them, so integration-rawbus.c does). */
void test_handle_indexes(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
        static const struct {
                uint32_t index;
                unsigned n_fds;
        } cases[] = {
                {1, 1}, {7, 1}, {0, 0}, {1, 0}, {UINT32_C(1) << 31, 1}, {UINT32_MAX - 1, 1},
        };

        assert_true(fd >= 0);
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                handle_row(e, "Attach", cases[i].index, &fd, cases[i].n_fds);
                handle_row(e, "Resolve", cases[i].index, &fd, cases[i].n_fds);
        }
        matrix_end();
}

/* ------------------------------------------------------------------------------------------ */
/* AttachPath: paths */

void test_attach_path_inputs(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *empty = make_image(e, 0), *tiny = make_image(e, 100);
        _cleanup_free_ char *fifo = NULL, *sock_path = NULL, *loop_a = NULL, *loop_b = NULL;
        _cleanup_free_ char *long_path = NULL, *long_name = NULL, *not_dir = NULL;
        _cleanup_free_ char *missing = NULL, *relative = NULL;
        _cleanup_close_ int sock = -EBADF;
        const char *IA = DBUS_ERROR_INVALID_ARGS;
        struct sockaddr_un sa = {.sun_family = AF_UNIX};

        assert_true(asprintf(&fifo, "%s/fifo", e->tmpdir) > 0);
        assert_int_equal(mkfifo(fifo, 0600), 0);
        assert_true(asprintf(&sock_path, "%s/socket", e->tmpdir) > 0);
        assert_true(strlen(sock_path) < sizeof(sa.sun_path));
        strcpy(sa.sun_path, sock_path);
        assert_true((sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0);
        assert_int_equal(bind(sock, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_true(asprintf(&loop_a, "%s/symlink-a", e->tmpdir) > 0);
        assert_true(asprintf(&loop_b, "%s/symlink-b", e->tmpdir) > 0);
        assert_int_equal(symlink(loop_b, loop_a), 0);
        assert_int_equal(symlink(loop_a, loop_b), 0);
        assert_true(asprintf(&missing, "%s/no-such-file.img", e->tmpdir) > 0);
        assert_true(asprintf(&not_dir, "%s/sub/x.img", path) > 0);
        assert_true(asprintf(&relative, "%s", strrchr(path, '/') + 1) > 0);
        /* Longer than PATH_MAX, and a single component longer than NAME_MAX. */
        assert_non_null(long_path = malloc(PATH_MAX + 64));
        memset(long_path, 'a', PATH_MAX + 63);
        long_path[0] = '/';
        long_path[PATH_MAX + 63] = '\0';
        assert_true(asprintf(&long_name, "%s/%0300d", e->tmpdir, 0) > 0);

        attach_path_row(e, "the image (control)", ACCEPTED, path, NO_OPTS);
        attach_path_row(e, "empty path", IA, "", NO_OPTS);
        attach_path_row(e, "relative path", IA, relative, NO_OPTS);
        attach_path_row(e, "missing file", DBUS_ERROR_FILE_NOT_FOUND, missing, NO_OPTS);
        /* A path through a regular file names nothing: as good as missing. */
        attach_path_row(e, "path through a regular file (ENOTDIR)", DBUS_ERROR_FILE_NOT_FOUND,
                        not_dir, NO_OPTS);
        attach_path_row(e, "directory", IA, e->tmpdir, NO_OPTS);
        attach_path_row(e, "character device /dev/null", IA, "/dev/null", NO_OPTS);
        attach_path_row(e, "fifo", IA, fifo, NO_OPTS);
        /* The rest are bad paths too, not loop chains, missing devices or daemon failures. */
        attach_path_row(e, "unix socket (ENXIO)", IA, sock_path, NO_OPTS);
        attach_path_row(e, "symlink loop (ELOOP)", IA, loop_a, NO_OPTS);
        attach_path_row(e, "path longer than PATH_MAX", IA, long_path, NO_OPTS);
        attach_path_row(e, "component longer than NAME_MAX", IA, long_name, NO_OPTS);
        attach_path_row(e, "empty file", IA, empty, NO_OPTS);
        attach_path_row(e, "100-byte file (< 1 sector)", IA, tiny, NO_OPTS);

        matrix_end();
}

/* ------------------------------------------------------------------------------------------ */
/* Manager.Detach and GetDevice: objects and names */

void test_detach_objects(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *leading_zero = NULL, *child = NULL;
        _cleanup_attached_ Attached a = {};
        const char *NF = LOOPMGR_ERROR_NOT_FOUND, *IA = DBUS_ERROR_INVALID_ARGS;

        hold_device(e, path, &a);
        assert_true(asprintf(&leading_zero, "%s/0%" PRIu64, LOOPMGR_DEVICE_PATH_PREFIX, a.diskseq) >
                    0);
        assert_true(asprintf(&child, "%s/sub", a.object) > 0);

        detach_row(e, "device that never existed (diskseq 2^64-1)", NF,
                   LOOPMGR_DEVICE_PATH_PREFIX "/18446744073709551615", NO_OPTS);
        detach_row(e, "diskseq 0", NF, LOOPMGR_DEVICE_PATH_PREFIX "/0", NO_OPTS);
        detach_row(e, "diskseq beyond 2^64", NF,
                   LOOPMGR_DEVICE_PATH_PREFIX "/99999999999999999999999", NO_OPTS);
        detach_row(e, "not a number (device/abc)", NF, LOOPMGR_DEVICE_PATH_PREFIX "/abc", NO_OPTS);
        detach_row(e, "the device prefix itself", NF, LOOPMGR_DEVICE_PATH_PREFIX, NO_OPTS);
        detach_row(e, "the manager object", NF, LOOPMGR_MANAGER_PATH, NO_OPTS);
        detach_row(e, "root object /", NF, "/", NO_OPTS);
        detach_row(e, "foreign object path", NF, "/org/example/NotADevice", NO_OPTS);
        detach_row(e, "child of a device object", NF, child, NO_OPTS);

        /* Options on a real device: refused before anything happens to it. */
        detach_row(e, "unknown option", IA, a.object, OPTS(OB("no-such-option", true)));
        detach_row(e, "attach option (offset)", IA, a.object, OPTS(OT("offset", 0)));
        detach_row(e, "wait as s", IA, a.object, OPTS(OS("wait", "true")));
        detach_row(e, "recursive as u", IA, a.object, OPTS(OU("recursive", 1)));
        detach_row(e, "all-references as i", IA, a.object, OPTS(OI("all-references", 1)));
        detach_row(e, "timeout-usec 0", IA, a.object, OPTS(OT("timeout-usec", 0)));
        detach_row(e, "timeout-usec as u", IA, a.object, OPTS(OU("timeout-usec", 1000)));
        detach_row(e, "timeout-usec 2^64-1", IA, a.object, OPTS(OT("timeout-usec", UINT64_MAX)));
        detach_row(e, "wait given twice", IA, a.object, OPTS(OB("wait", true), OB("wait", false)));
        assert_untouched(e, &a);

        /* Another spelling of the device's path is not its path: "/device/0<diskseq>" is not
         * an object the daemon publishes (GetManagedObjects lists "/device/<diskseq>"), so it
         * must not act as one. Last, because where it does, this detaches the device. */
        detach_row(e, "device path with a leading zero (device/0N)", NF, leading_zero, NO_OPTS);
        if (matrix.devices > 0)
                release_device(e, &a);

        matrix_end();
}

void test_get_device_inputs(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB), *unattached = make_image(e, 2 * MiB);
        _cleanup_free_ char *long_path = NULL, *missing = NULL, *relative = NULL;
        const char *NF = LOOPMGR_ERROR_NOT_FOUND, *IA = DBUS_ERROR_INVALID_ARGS;
        _cleanup_attached_ Attached a = {};

        hold_device(e, path, &a);
        assert_non_null(long_path = malloc(PATH_MAX + 64));
        memset(long_path, 'a', PATH_MAX + 63);
        long_path[0] = '/';
        long_path[PATH_MAX + 63] = '\0';
        assert_true(asprintf(&missing, "%s/no-such-file.img", e->tmpdir) > 0);
        assert_true(asprintf(&relative, "%s", strrchr(path, '/') + 1) > 0);

        get_device_row(e, "the attached image (control)", ACCEPTED, path);
        get_device_row(e, "its node (control)", ACCEPTED, a.node);
        get_device_row(e, "empty string", IA, "");
        get_device_row(e, "loop (no number)", IA, "loop");
        get_device_row(e, "loop01 (leading zero)", IA, "loop01");
        get_device_row(e, "/dev/loop-1 (absolute, names nothing)", NF, "/dev/loop-1");
        get_device_row(e, "loop2147483648 (beyond int)", IA, "loop2147483648");
        get_device_row(e, "loop99999999999999999999 (beyond 2^64)", IA, "loop99999999999999999999");
        get_device_row(e, "relative path", IA, relative);
        get_device_row(e, "/dev/disk/by-diskseq/abc", IA, "/dev/disk/by-diskseq/abc");
        get_device_row(e, "/dev/disk/by-diskseq/ (empty)", IA, "/dev/disk/by-diskseq/");
        get_device_row(e, "directory", IA, e->tmpdir);
        get_device_row(e, "character device /dev/null", IA, "/dev/null");
        get_device_row(e, "/dev/loop999999 (no such device)", NF, "/dev/loop999999");
        get_device_row(e, "loop999999", NF, "loop999999");
        get_device_row(e, "/dev/disk/by-diskseq/0", NF, "/dev/disk/by-diskseq/0");
        get_device_row(e, "/dev/disk/by-diskseq/2^64-1", NF,
                       "/dev/disk/by-diskseq/18446744073709551615");
        get_device_row(e, "missing file", NF, missing);
        get_device_row(e, "file with no device", NF, unattached);
        get_device_row(e, "path longer than PATH_MAX", NF, long_path);

        release_device(e, &a);
        matrix_end();
}

/* ------------------------------------------------------------------------------------------ */
/* Device methods */

void test_device_methods(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *leading_zero = NULL;
        _cleanup_attached_ Attached a = {};
        const char *IA = DBUS_ERROR_INVALID_ARGS, *UO = DBUS_ERROR_UNKNOWN_OBJECT;
        const char *D = LOOPMGR_DEVICE_INTERFACE, *P = PROPERTIES_INTERFACE;
        const char *none = LOOPMGR_DEVICE_PATH_PREFIX "/18446744073709551615";
        const char *abc = LOOPMGR_DEVICE_PATH_PREFIX "/abc";

        hold_device(e, path, &a);
        assert_true(asprintf(&leading_zero, "%s/0%" PRIu64, LOOPMGR_DEVICE_PATH_PREFIX, a.diskseq) >
                    0);
        const char *O = a.object;
        _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);

        /* Signatures */
        sig_row(e, O, D, "Detach", "no arguments", IA, "");
        sig_row(e, O, D, "Detach", "a boolean (b)", IA, "b", 1);
        sig_row(e, O, D, "Detach", "an extra argument (a{sv}s)", IA, "a{sv}s", 0, "x");
        sig_row(e, O, D, "Detach", "the manager's signature (oa{sv})", IA, "oa{sv}", O, 0);
        sig_row(e, O, D, "SetAutoclear", "value missing (a{sv})", IA, "a{sv}", 0);
        sig_row(e, O, D, "SetAutoclear", "options missing (b)", IA, "b", 1);
        sig_row(e, O, D, "SetAutoclear", "a string for the value (sa{sv})", IA, "sa{sv}", "true",
                0);
        sig_row(e, O, D, "SetAutoclear", "an integer for the value (ua{sv})", IA, "ua{sv}", 1u, 0);
        sig_row(e, O, D, "SetAutoclear", "an extra argument (ba{sv}b)", IA, "ba{sv}b", 1, 0, 1);
        sig_row(e, O, D, "SetCapacity", "no arguments", IA, "");
        sig_row(e, O, D, "SetCapacity", "a number (t)", IA, "t", (uint64_t) 4096);
        sig_row(e, O, D, "SetCapacity", "two dictionaries (a{sv}a{sv})", IA, "a{sv}a{sv}", 0, 0);
        sig_row(e, O, D, "NoSuchMethod", "unknown method", DBUS_ERROR_UNKNOWN_METHOD, "");
        sig_row(e, O, LOOPMGR_MANAGER_INTERFACE, "Attach", "Manager method on a device",
                DBUS_ERROR_UNKNOWN_METHOD, "ha{sv}", fd, 0);

        /* Options */
        device_detach_row(e, "unknown option", IA, O, OPTS(OB("no-such-option", true)));
        device_detach_row(e, "attach option (read-only)", IA, O, OPTS(OB("read-only", true)));
        device_detach_row(e, "wait as s", IA, O, OPTS(OS("wait", "yes")));
        device_detach_row(e, "timeout-usec 0", IA, O, OPTS(OT("timeout-usec", 0)));
        device_detach_row(e, "all-references given twice", IA, O,
                          OPTS(OB("all-references", true), OB("all-references", true)));
        set_autoclear_row(e, "unknown option", IA, O, true, OPTS(OB("no-such-option", true)));
        set_autoclear_row(e, "attach option (offset)", IA, O, true, OPTS(OT("offset", 0)));
        set_autoclear_row(e, "detach option (wait)", IA, O, true, OPTS(OB("wait", true)));
        set_autoclear_row(e, "auth.no_user_interaction as s", IA, O, true,
                          OPTS(OS("auth.no_user_interaction", "yes")));
        set_autoclear_row(
                e, "auth.no_user_interaction twice", IA, O, true,
                OPTS(OB("auth.no_user_interaction", true), OB("auth.no_user_interaction", true)));
        set_capacity_row(e, "unknown option", IA, O, OPTS(OB("no-such-option", true)));
        set_capacity_row(e, "attach option (size-limit)", IA, O, OPTS(OT("size-limit", 512)));
        set_capacity_row(e, "detach option (timeout-usec)", IA, O,
                         OPTS(OT("timeout-usec", USEC_PER_SEC)));
        set_capacity_row(e, "auth.no_user_interaction as u", IA, O,
                         OPTS(OU("auth.no_user_interaction", 1)));

        /* Properties */
        sig_row(e, O, P, "Get", "unknown property", DBUS_ERROR_UNKNOWN_PROPERTY, "ss", D,
                "NoSuchProperty");
        sig_row(e, O, P, "Get", "property name in the wrong case", DBUS_ERROR_UNKNOWN_PROPERTY,
                "ss", D, "node");
        sig_row(e, O, P, "Get", "Manager property on a device", DBUS_ERROR_UNKNOWN_PROPERTY, "ss",
                LOOPMGR_MANAGER_INTERFACE, "Version");
        /* Writing a property must not be a way around SetAutoclear. */
        sig_row(e, O, P, "Set", "Autoclear (read-only property)", DBUS_ERROR_READ_ONLY, "ssv", D,
                "Autoclear", "b", 1);
        sig_row(e, O, P, "Set", "SizeLimit (read-only property)", DBUS_ERROR_READ_ONLY, "ssv", D,
                "SizeLimit", "t", (uint64_t) 512);
        sig_row(e, O, P, "GetAll", "unknown interface", DBUS_ERROR_UNKNOWN_INTERFACE, "s",
                "org.example.NoSuchInterface");
        assert_untouched(e, &a);

        /* Objects that do not exist: the D-Bus library answers for the daemon. */
        device_detach_row(e, "unknown object (diskseq 2^64-1)", UO, none, NO_OPTS);
        device_detach_row(e, "unknown object (device/abc)", UO, abc, NO_OPTS);
        set_autoclear_row(e, "unknown object (diskseq 2^64-1)", UO, none, true, NO_OPTS);
        set_autoclear_row(e, "unknown object (device/abc)", UO, abc, true, NO_OPTS);
        set_capacity_row(e, "unknown object (diskseq 2^64-1)", UO, none, NO_OPTS);
        set_capacity_row(e, "unknown object (device/abc)", UO, abc, NO_OPTS);
        sig_row(e, none, P, "Get", "Node of an unknown object", UO, "ss", D, "Node");
        sig_row(e, none, P, "GetAll", "unknown object", UO, "s", D);
        /* The prefix is a node of the tree (it has children) but no device. */
        set_capacity_row(e, "the device prefix itself", DBUS_ERROR_UNKNOWN_METHOD,
                         LOOPMGR_DEVICE_PATH_PREFIX, NO_OPTS);

        /* Another spelling of the device's own path (see test_detach_objects). */
        sig_row(e, leading_zero, P, "Get", "Node at device/0N (leading zero)", UO, "ss", D, "Node");
        set_capacity_row(e, "device/0N (leading zero)", UO, leading_zero, NO_OPTS);
        set_autoclear_row(e, "device/0N (leading zero), value false", UO, leading_zero, false,
                          NO_OPTS);
        assert_untouched(e, &a);
        device_detach_row(e, "device/0N (leading zero)", UO, leading_zero, NO_OPTS);

        if (matrix.devices > 0)
                release_device(e, &a);
        matrix_end();
}

/* ------------------------------------------------------------------------------------------ */
/* A path whose loopN lives on with another diskseq */

void test_recycled_loop_number(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *old_object = NULL, *old_node = NULL, *old_byseq = NULL;
        _cleanup_attached_ Attached b = {};
        const char *UO = DBUS_ERROR_UNKNOWN_OBJECT, *D = LOOPMGR_DEVICE_INTERFACE;
        uint64_t old_diskseq = 0;
        bool same_number = false;

        /* Attach, note the path, detach, attach again until the same loopN comes back with a
         * new diskseq. LOOP_CTL_GET_FREE hands out the lowest free number, so it normally does
         * at once; another user of the kernel may take it in between, hence the retries. */
        for (unsigned attempt = 0; attempt < 10 && !same_number; attempt++) {
                _cleanup_attached_ Attached a = {};

                if (b.object) {
                        release_device(e, &b);
                        attached_done(&b);
                }
                hold_device(e, path, &a);
                free(old_object);
                free(old_node);
                old_object = strdup(a.object);
                old_node = strdup(a.node);
                old_diskseq = a.diskseq;
                assert_true(old_object && old_node);
                release_device(e, &a);

                hold_device(e, path, &b);
                same_number = streq(b.node, old_node);
                print_message("  attempt %u: %s was %s, now %s (diskseq %" PRIu64 ")\n",
                              attempt + 1, old_object, old_node, b.node, b.diskseq);
        }
        if (!same_number)
                print_message("  note: %s was taken by another user of the kernel each time; "
                              "the stale path is still stale\n",
                              old_node);
        assert_true(b.diskseq != old_diskseq);
        assert_true(asprintf(&old_byseq, "/dev/disk/by-diskseq/%" PRIu64, old_diskseq) > 0);

        detach_row(e, "stale path of a recycled loopN", LOOPMGR_ERROR_NOT_FOUND, old_object,
                   NO_OPTS);
        detach_row(e, "stale path, all-references+wait", LOOPMGR_ERROR_NOT_FOUND, old_object,
                   OPTS(OB("all-references", true), OB("wait", true)));
        device_detach_row(e, "stale path of a recycled loopN", UO, old_object, NO_OPTS);
        set_autoclear_row(e, "stale path of a recycled loopN", UO, old_object, true, NO_OPTS);
        set_capacity_row(e, "stale path of a recycled loopN", UO, old_object, NO_OPTS);
        sig_row(e, old_object, PROPERTIES_INTERFACE, "Get", "Node at a stale path", UO, "ss", D,
                "Node");
        get_device_row(e, "by-diskseq link of the old binding", LOOPMGR_ERROR_NOT_FOUND, old_byseq);
        assert_untouched(e, &b);

        release_device(e, &b);
        matrix_end();
}
