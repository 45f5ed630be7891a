/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * "No aliases, ever" (SPEC §1 and §4) on real devices: the same bytes reached by every road a
 * user can take (other names of one file, sub-ranges, loop over loop, loop over a partition,
 * mounted lower layers, devices made behind the daemon's back, concurrent callers, two
 * sub-volumes of one btrfs image) must end up on ONE loop device or be refused with the right
 * D-Bus error name.
 *
 * Like test-integration: the real loopmgrd on the private bus of tests/env.sh, real loop
 * devices, real udev. The group setup starts the daemon; after each test `losetup --list` must
 * agree with the daemon's objects and nothing of the test (device, partition, mount, bind
 * mount) may be left. Everything a test creates is recorded in the group state before (or
 * right after) it exists, because a failed assertion longjmps out of the test body; the
 * teardown unmounts, deletes partitions and detaches in that order.
 *
 * Run:   eval "$(tests/env.sh start)"; meson test -C BUILD test-aliases
 * LOOPMGR_TEST_FILTER / LOOPMGR_TEST_SKIP select tests by cmocka glob.
 *
 * Needs mkfs.ext4, e2fsck, debugfs (e2fsprogs), addpart/delpart/losetup (util-linux) and, for
 * the btrfs test, mkfs.btrfs and btrfs (btrfs-progs): tools/deps.sh installs them.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <ctype.h>
#include <ftw.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"

#define MiB (1024ULL * 1024ULL)
#define KiB 1024ULL

/* How long the daemon may take to learn of something through udev. */
#define SIGNAL_TIMEOUT (2 * USEC_PER_SEC)

/* cmocka does not count a failed group setup/teardown in its return value. */

/* ------------------------------------------------------------------------------------------ */
/* Fixtures */

static int test_teardown(void **state) {
        Env *e = *state;
        bool ok = true;
        size_t n = 0;
        int left;

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
        if (!env_wait_nothing_under(e->tmpdir, 2 * USEC_PER_SEC)) {
                print_error("devices backed by %s are left over\n", e->tmpdir);
                (void) env_detach_all_under(e->tmpdir);
                (void) env_wait_nothing_under(e->tmpdir, 5 * USEC_PER_SEC);
                ok = false;
        }
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
/* Helpers */

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
        } while (0)

/* The attach must have failed with `name`; says what it got instead. */
static void expect_error_impl(int r, const sd_bus_error *error, const Attached *got,
                              const char *what, const char *name, const char *file, int line) {
        if (r >= 0) {
                print_error("%s:%d: %s: expected %s, got success: %s (%s, reused=%s)\n", file, line,
                            what, name, got->node, got->object, got->reused ? "yes" : "no");
                _fail(file, line);
        }
        if (!sd_bus_error_has_name(error, name)) {
                print_error("%s:%d: %s: expected %s, got %s: %s\n", file, line, what, name,
                            error->name ?: strerror(-r), error->message ?: "(no message)");
                _fail(file, line);
        }
        assert_bus_error_impl(r, error, name, file, line);
        /* The log shows what a user would read. */
        print_message("  %s: %s: %s\n", what, error->name + strlen(LOOPMGR_ERROR_PREFIX),
                      error->message);
}
#define expect_error(r, error, got, what, name)                                                    \
        expect_error_impl((r), (error), (got), (what), (name), __FILE__, __LINE__)

/* Whether `word` occurs in `s` not as part of a longer name ("loop1" is not in "loop12" nor
 * in "loop1p1"). */
static bool has_word(const char *s, const char *word) {
        size_t n = strlen(word);
        for (const char *p = s; (p = strstr(p, word)); p++) {
                bool before = p == s || !isalnum((unsigned char) p[-1]);
                bool after = !isalnum((unsigned char) p[n]);
                if (before && after)
                        return true;
        }
        return false;
}

static void message_names_impl(const sd_bus_error *error, const char *word, const char *what,
                               const char *file, int line) {
        if (!error->message || !has_word(error->message, word)) {
                print_error("%s:%d: %s: the %s message does not name '%s': %s\n", file, line, what,
                            error->name, word, error->message ?: "(none)");
                _fail(file, line);
        }
}
#define message_names(error, word, what)                                                           \
        message_names_impl((error), (word), (what), __FILE__, __LINE__)

static bool strv_has_word(char **l, const char *word) {
        for (char **i = l; i && *i; i++)
                if (has_word(*i, word))
                        return true;
        return false;
}

static bool strv_has_substring(char **l, const char *s) {
        for (char **i = l; i && *i; i++)
                if (strstr(*i, s))
                        return true;
        return false;
}

static char *strv_join(char **l) {
        char *s = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&s, &size);
        if (!f)
                return NULL;
        for (char **i = l; i && *i; i++)
                fprintf(f, "%s[%s]", i == l ? "" : " ", *i);
        fclose(f);
        return s;
}

/* The chain (Chain property or Resolve's) has at least `min` lines and names every word. */
static void chain_names_impl(char **chain, size_t n, size_t min, const char *what,
                             const char *const *words, const char *file, int line) {
        _cleanup_free_ char *joined = strv_join(chain);
        if (n < min) {
                print_error("%s:%d: %s: %zu chain line(s), expected at least %zu: %s\n", file, line,
                            what, n, min, joined ?: "");
                _fail(file, line);
        }
        for (const char *const *w = words; *w; w++)
                if (!strv_has_word(chain, *w) && !strv_has_substring(chain, *w)) {
                        print_error("%s:%d: %s: the chain does not name %s: %s\n", file, line, what,
                                    *w, joined ?: "");
                        _fail(file, line);
                }
}
#define chain_names(chain, n, min, what, ...)                                                      \
        chain_names_impl((chain), (n), (min), (what), (const char *const[]){__VA_ARGS__, NULL},    \
                         __FILE__, __LINE__)

static void detach_expect(Env *e, const char *object, const char *expected_state) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *state = NULL;
        int r = call_detach(e, object, &error, &state, 0);
        assert_bus_ok(r, &error, "Detach");
        if (!streq(state, expected_state))
                fail_msg("Detach(%s) returned '%s', expected '%s'", object, state, expected_state);
}

/* Drops the last reference: the binding must be gone when Detach says "detached". */
static void detach_gone(Env *e, const Attached *a) {
        detach_expect(e, a->object, LOOPMGR_STATE_DETACHED);
        if (loop_binding_present(a->node + 5, a->diskseq) != 0)
                fail_msg("%s (diskseq %" PRIu64 ") is still bound after Detach said detached",
                         a->node, a->diskseq);
}

static uint32_t references_of(Env *e, const char *object) {
        _cleanup_props_ DeviceProps p = {};
        PROPS_OK(e, object, &p);
        return p.references;
}

static void expect_references_impl(Env *e, const char *object, uint32_t expected, const char *what,
                                   const char *file, int line) {
        uint32_t got = references_of(e, object);
        if (got != expected) {
                print_error("%s:%d: %s: References of %s is %u, expected %u\n", file, line, what,
                            object, got, expected);
                _fail(file, line);
        }
}
#define expect_references(e, object, expected, what)                                               \
        expect_references_impl((e), (object), (expected), (what), __FILE__, __LINE__)

static char *make_image(Env *e, uint64_t size) {
        char *path = NULL;
        int r = env_make_image(e, e->tmpdir, size, &path);
        if (r < 0)
                fail_msg("creating an image: %s", strerror(-r));
        return path;
}

/* loopmgrctl ARGS...; the exit status. */
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

#define CTL_OK(e, ...)                                                                             \
        do {                                                                                       \
                _cleanup_free_ char *_o = NULL, *_e = NULL;                                        \
                int _r = ctl((e), &_o, &_e, __VA_ARGS__, NULL);                                    \
                if (_r != 0)                                                                       \
                        fail_msg("loopmgrctl %s: exit %d, expected 0%s\nstdout: %s\nstderr: %s",   \
                                 #__VA_ARGS__, _r,                                                 \
                                 _r == 2 ? " (2 is a usage error: is this verb implemented?)"      \
                                         : "",                                                     \
                                 _o ?: "", _e ?: "");                                              \
        } while (0)

static void mkfs_ext4(const char *target) {
        /* nodiscard: discarding a loop device punches holes, slow and pointless here. */
        env_run_ok("mkfs.ext4", "-q", "-F", "-E", "nodiscard", target);
}

static void write_file_at(const char *dir, const char *name, const char *content) {
        _cleanup_free_ char *path = env_join(dir, name);
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                fail_msg("creating %s: %m", path);
        size_t n = strlen(content);
        if (write(fd, content, n) != (ssize_t) n || fsync(fd) < 0)
                fail_msg("writing %s: %m", path);
}

/* Lines of `losetup -j FILE`: the devices util-linux sees over the file (dev/inode). */
static size_t losetup_j_count(const char *path) {
        _cleanup_free_ char *out = NULL;
        size_t n = 0;
        int r = env_run(&out, NULL, "losetup", "-j", path, NULL);
        if (r != 0)
                fail_msg("losetup -j %s exited with %d", path, r);
        for (char *p = out; *p; p++)
                if (*p == '\n')
                        n++;
        return n;
}

static void expect_losetup_j(const char *path, size_t expected, const char *what) {
        size_t n = losetup_j_count(path);
        if (n != expected) {
                _cleanup_free_ char *out = NULL;
                (void) env_run(&out, NULL, "losetup", "-j", path, NULL);
                fail_msg("%s: losetup -j %s lists %zu device(s), expected %zu:\n%s", what, path, n,
                         expected, out ?: "");
        }
}

/* The mount (tracked for the teardown) must succeed. */
static void mount_ok(Env *e, const char *source, const char *target, const char *fstype,
                     unsigned long flags) {
        int r = env_mount(e, source, target, fstype, flags, NULL);
        if (r < 0)
                fail_msg("mount %s on %s (%s): %s", source, target, fstype ?: "bind", strerror(-r));
}

static void umount_ok(Env *e, const char *target) {
        int r = -EBUSY;
        /* udev's probe may still hold a file system that was just mounted, for a moment. */
        for (unsigned i = 0; i < 20 && r == -EBUSY; i++) {
                if (i > 0)
                        sleep_usec(100 * USEC_PER_MSEC);
                r = env_umount(e, target);
        }
        if (r < 0)
                fail_msg("umount %s: %s", target, strerror(-r));
}

static char *add_partition(Env *e, const Attached *a, unsigned partno, uint64_t start_sector,
                           uint64_t n_sectors) {
        char *node = NULL;
        int r = env_add_partition(e, a->node + 5, a->diskseq, partno, start_sector, n_sectors,
                                  &node);
        if (r < 0) {
                fail_msg("adding partition %u to %s: %s", partno, a->node, strerror(-r));
                return NULL;
        }
        return node;
}

static void delete_partition(Env *e, const Attached *a, unsigned partno) {
        int r = -EBUSY;
        /* The device stacked on it was just detached; its last close may be in flight. */
        for (unsigned i = 0; i < 20 && r < 0; i++) {
                if (i > 0)
                        sleep_usec(100 * USEC_PER_MSEC);
                r = env_delete_partition(e, a->node + 5, partno);
        }
        if (r < 0)
                fail_msg("delpart %s %u: %s", a->node, partno, strerror(-r));
}

/* losetup --find --show FILE behind the daemon's back; tracked. Returns the node. */
static char *losetup_foreign(Env *e, const char *path, const char *extra, uint64_t *ret_diskseq) {
        _cleanup_free_ char *out = NULL, *err = NULL;
        uint64_t diskseq;
        int r;

        if (extra)
                r = env_run(&out, &err, "losetup", "--find", "--show", extra, path, NULL);
        else
                r = env_run(&out, &err, "losetup", "--find", "--show", path, NULL);
        if (r != 0)
                fail_msg("losetup --find --show %s: exit %d: %s", path, r, err ?: "");
        out[strcspn(out, "\n")] = 0;
        if (strncmp(out, "/dev/loop", 9) != 0)
                fail_msg("losetup --find --show printed '%s'", out);
        assert_int_equal(sysfs_read_u64(out + 5, "diskseq", &diskseq), 0);
        assert_int_equal(env_track_device(e, out + 5, diskseq), 0);
        *ret_diskseq = diskseq;
        return TAKE_PTR(out);
}

/* GetDevice(node) until the daemon knows the device (it learns of foreign ones via udev). */
static char *object_for_node(Env *e, const char *node) {
        uint64_t deadline = now_usec() + SIGNAL_TIMEOUT;
        for (;;) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                char *object = NULL;
                int r = call_get_device(e, node, &error, &object);
                if (r >= 0)
                        return object;
                if (now_usec() >= deadline)
                        fail_msg("GetDevice(%s): %s: %s", node, error.name ?: strerror(-r),
                                 error.message ?: "");
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

static bool strv_contains(char **l, const char *s) {
        for (char **i = l; i && *i; i++)
                if (streq(*i, s))
                        return true;
        return false;
}

/* ------------------------------------------------------------------------------------------ */
/* 1. One file, many names */

/* Hard link, symlink, bind mount and /proc/self/fd/N all reach the same inode: every Attach
 * must hand back the first device (identity is (st_dev, st_ino), never a path). */
static void test_same_file_other_names(void **state) {
        Env *e = *state;
        _cleanup_free_ char *src = env_make_dir(e, "src"), *bind = env_make_dir(e, "bind");
        _cleanup_free_ char *path = NULL, *hard = NULL, *sym = NULL, *via_bind = NULL,
                            *via_proc = NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        assert_int_equal(env_make_image(e, src, 4 * MiB, &path), 0);
        hard = env_join(src, "hard-link.img");
        if (link(path, hard) < 0)
                fail_msg("link %s %s: %m", path, hard);
        sym = env_join(e->tmpdir, "symlink.img");
        if (symlink(path, sym) < 0)
                fail_msg("symlink %s %s: %m", path, sym);
        mount_ok(e, src, bind, NULL, MS_BIND);
        via_bind = env_join(bind, strrchr(path, '/') + 1);
        int fd = env_hold(e, path, O_RDWR);
        assert_true(fd >= 0);
        assert_true(asprintf(&via_proc, "/proc/self/fd/%d", fd) > 0);

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        assert_false(a.reused);
        expect_references(e, a.object, 1, "first attach");

        const char *names[] = {hard, sym, via_bind, via_proc};
        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached b = {};
                _cleanup_free_ char *what = NULL;

                assert_true(asprintf(&what, "Attach of the same file as %s", names[i]) > 0);
                int r = attach_file(e, names[i], O_RDWR, &error, &b, 0);
                assert_bus_ok(r, &error, what);
                if (!b.reused || !streq(b.object, a.object))
                        fail_msg("%s: got %s (%s, reused=%s), expected the existing %s (%s, "
                                 "reused=yes)",
                                 what, b.node, b.object, b.reused ? "yes" : "no", a.node, a.object);
                expect_references(e, a.object, (uint32_t) i + 2, what);
        }
        expect_losetup_j(path, 1, "after five attaches by five names");
        expect_losetup_j(hard, 1, "after five attaches by five names");
        PROPS_OK(e, a.object, &p);
        assert_string_equal(p.backing_file, path);

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &a);

        env_release(e, fd);
        umount_ok(e, bind);
}

/* ------------------------------------------------------------------------------------------ */
/* 2. Ranges of one file */

static void test_ranges(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB);
        _cleanup_attached_ Attached a = {}, same = {}, d = {}, adj = {};
        int r;

        /* a = [1M, 3M) */
        ATTACH_OK(e, path, O_RDWR, &a, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
        assert_false(a.reused);

        /* Identical range: reused. */
        ATTACH_OK(e, path, O_RDWR, &same, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
        if (!same.reused || !streq(same.object, a.object))
                fail_msg("identical range [1M, 3M): got %s (reused=%s), expected %s reused",
                         same.node, same.reused ? "yes" : "no", a.node);
        expect_references(e, a.object, 2, "identical range");

        /* [2.5M, 4M) overlaps [1M, 3M): the message names the device and both ranges. The
         * numbers are chosen so that every start, end and length is distinct. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, path, O_RDWR, &error, &x, 2,
                                OPT_T(LOOPMGR_OPT_OFFSET, 2 * MiB + 512 * KiB),
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 1 * MiB + 512 * KiB));
                expect_error(r, &error, &x, "overlapping sub-range [2.5M, 4M)",
                             LOOPMGR_ERROR_OVERLAP);
                message_names(&error, a.node + 5, "overlap");
                /* Existing [1048576, 3145728), length 2097152; requested [2621440, 4194304),
                 * length 1572864: the start and the end (or length) of each. */
                message_names(&error, "1048576", "overlap: existing range start");
                if (!has_word(error.message, "3145728") && !has_word(error.message, "2097152"))
                        fail_msg("the Overlap message does not give the existing range's end "
                                 "(3145728) or length (2097152): %s",
                                 error.message);
                message_names(&error, "2621440", "overlap: requested range start");
                if (!has_word(error.message, "4194304") && !has_word(error.message, "1572864"))
                        fail_msg("the Overlap message does not give the requested range's end "
                                 "(4194304) or length (1572864): %s",
                                 error.message);
        }
        /* A range inside a's and one containing it overlap as well. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, path, O_RDWR, &error, &x, 2, OPT_T(LOOPMGR_OPT_OFFSET, 2 * MiB),
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 512 * KiB));
                expect_error(r, &error, &x, "sub-range [2M, 2.5M) inside [1M, 3M)",
                             LOOPMGR_ERROR_OVERLAP);
        }
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, path, O_RDWR, &error, &x, 0);
                expect_error(r, &error, &x, "whole file around [1M, 3M)", LOOPMGR_ERROR_OVERLAP);
        }

        /* Disjoint ranges: separate devices. [3M, 4M) touches a's end (half-open ranges
         * share no byte), [4M, 8M) touches that one's. */
        ATTACH_OK(e, path, O_RDWR, &adj, 2, OPT_T(LOOPMGR_OPT_OFFSET, 3 * MiB),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 1 * MiB));
        ATTACH_OK(e, path, O_RDWR, &d, 1, OPT_T(LOOPMGR_OPT_OFFSET, 4 * MiB));
        assert_false(adj.reused);
        assert_false(d.reused);
        assert_string_not_equal(adj.object, a.object);
        assert_string_not_equal(d.object, a.object);
        assert_string_not_equal(d.object, adj.object);
        expect_losetup_j(path, 3, "three disjoint ranges");

        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &a);
        detach_gone(e, &adj);
        detach_gone(e, &d);
}

/* size-limit 0 means "to the end": the same bytes as an explicit limit reaching the end. */
static void test_size_limit_zero_is_to_the_end(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_attached_ Attached a = {}, b = {}, c = {}, o = {}, p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        ATTACH_OK(e, path, O_RDWR, &b, 1, OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 4 * MiB));
        if (!b.reused || !streq(b.object, a.object))
                fail_msg("size-limit=4M on a 4M file: got %s (reused=%s), expected %s reused",
                         b.node, b.reused ? "yes" : "no", a.node);
        ATTACH_OK(e, path, O_RDWR, &c, 2, OPT_T(LOOPMGR_OPT_OFFSET, 0),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 0));
        if (!c.reused || !streq(c.object, a.object))
                fail_msg("offset=0 size-limit=0: got %s (reused=%s), expected %s reused", c.node,
                         c.reused ? "yes" : "no", a.node);
        expect_references(e, a.object, 3, "three spellings of the whole file");
        expect_losetup_j(path, 1, "three spellings of the whole file");
        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &a);

        /* The same with an offset: [1M, end) both ways. */
        ATTACH_OK(e, path, O_RDWR, &o, 1, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
        ATTACH_OK(e, path, O_RDWR, &p, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 3 * MiB));
        if (!p.reused || !streq(p.object, o.object))
                fail_msg("offset=1M size-limit=3M on a 4M file: got %s (reused=%s), expected %s "
                         "(offset=1M) reused",
                         p.node, p.reused ? "yes" : "no", o.node);
        detach_expect(e, o.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &o);
}

/* ------------------------------------------------------------------------------------------ */
/* 3. Loop over loop */

static void test_loop_over_idle_loop(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB);
        _cleanup_attached_ Attached lower = {}, same = {}, upper = {};
        _cleanup_props_ DeviceProps pu = {};

        ATTACH_OK(e, path, O_RDWR, &lower, 0);

        /* The whole of lower is exactly lower's bytes: lower itself comes back. */
        ATTACH_OK(e, lower.node, O_RDWR, &same, 0);
        if (!same.reused || !streq(same.object, lower.object))
                fail_msg("loop over the whole of %s: got %s (%s, reused=%s), expected %s itself",
                         lower.node, same.node, same.object, same.reused ? "yes" : "no",
                         lower.node);
        expect_references(e, lower.object, 2, "whole-device attach of the lower device");
        detach_expect(e, lower.object, LOOPMGR_STATE_ATTACHED);

        /* A sub-range of an idle lower device: a real second layer. */
        ATTACH_OK(e, lower.node, O_RDWR, &upper, 1, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
        assert_false(upper.reused);
        assert_string_not_equal(upper.object, lower.object);
        PROPS_OK(e, upper.object, &pu);
        assert_int_equal(pu.size, 7 * MiB);
        chain_names(pu.chain, pu.n_chain, 2, "Chain of the loop over a loop", upper.node + 5,
                    lower.node + 5, path);
        expect_losetup_j(path, 1, "loop over loop");

        detach_gone(e, &upper);
        detach_gone(e, &lower);
}

/* SPEC §4 rule 2: stacking on a lower device that is mounted is Busy, unless the mount and the
 * new device are both read-only. */
static void test_loop_over_mounted_loop(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 16 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_attached_ Attached lower = {}, ro = {};
        _cleanup_props_ DeviceProps pr = {};
        int r;

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &lower, 0);
        mount_ok(e, lower.node, mnt, "ext4", 0);

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, lower.node, O_RDWR, &error, &x, 1,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
                expect_error(r, &error, &x, "sub-range of a mounted loop device",
                             LOOPMGR_ERROR_BUSY);
                message_names(&error, lower.node + 5, "Busy (mounted lower device)");
                message_names(&error, mnt, "Busy (mounted lower device): the mount point");
        }
        /* A read-only device over a read-write mount is still refused. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, lower.node, O_RDONLY, &error, &x, 2,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                                OPT_B(LOOPMGR_OPT_READ_ONLY, true));
                expect_error(r, &error, &x, "read-only sub-range of a read-write mounted device",
                             LOOPMGR_ERROR_BUSY);
        }

        /* Read-only mount: a writable device on top is Busy, a read-only one is allowed. */
        umount_ok(e, mnt);
        mount_ok(e, lower.node, mnt, "ext4", MS_RDONLY);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, lower.node, O_RDWR, &error, &x, 1,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
                expect_error(r, &error, &x, "writable sub-range of a read-only mounted device",
                             LOOPMGR_ERROR_BUSY);
                message_names(&error, lower.node + 5, "Busy (read-only mount)");
        }
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, lower.node, O_RDONLY, &error, &ro, 2,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                                OPT_B(LOOPMGR_OPT_READ_ONLY, true));
                assert_bus_ok(r, &error,
                              "read-only Attach (O_RDONLY fd) over a read-only mounted device");
        }
        assert_false(ro.reused);
        PROPS_OK(e, ro.object, &pr);
        assert_true(pr.read_only);
        chain_names(pr.chain, pr.n_chain, 2, "Chain of the read-only loop over a mounted loop",
                    lower.node + 5);

        detach_gone(e, &ro);
        umount_ok(e, mnt);
        detach_gone(e, &lower);
}

/* ------------------------------------------------------------------------------------------ */
/* 4. Loop over a partition */

static void test_loop_over_partition(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_free_ char *part = NULL;
        _cleanup_attached_ Attached a = {}, p = {}, same = {}, file_range = {};
        _cleanup_props_ DeviceProps pp = {};
        int r;

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        /* Sectors 2048..6143: bytes [1M, 3M) of the file. */
        part = add_partition(e, &a, 1, 2048, 4096);
        const char *part_name = strrchr(part, '/') + 1;

        /* (a) Loop over the partition: a is in its chain and idle, so it is allowed. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, part, O_RDWR, &error, &p, 0);
                assert_bus_ok(r, &error, "Attach of the partition (a in its chain)");
        }
        assert_false(p.reused);
        PROPS_OK(e, p.object, &pp);
        assert_int_equal(pp.size, 2 * MiB);
        chain_names(pp.chain, pp.n_chain, 3, "Chain of a loop over a partition of a loop",
                    p.node + 5, part_name, a.node + 5, path);

        /* (b) [1M, 2M) of the file meets the partition's bytes and a's; neither is in the
         * chain of a request on the file itself. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, path, O_RDWR, &error, &x, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 1 * MiB));
                expect_error(r, &error, &x, "file range [1M, 2M) under a loop over a partition",
                             LOOPMGR_ERROR_OVERLAP);
        }

        /* (c) [1M, 3M) of the file is exactly what the loop over the partition exposes. */
        ATTACH_OK(e, path, O_RDWR, &file_range, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
        if (!file_range.reused || !streq(file_range.object, p.object))
                fail_msg("file range [1M, 3M): got %s (%s, reused=%s), expected the loop over "
                         "the partition %s (%s) reused",
                         file_range.node, file_range.object, file_range.reused ? "yes" : "no",
                         p.node, p.object);
        /* And the partition once more: identical as well. */
        ATTACH_OK(e, part, O_RDWR, &same, 0);
        if (!same.reused || !streq(same.object, p.object))
                fail_msg("second Attach of %s: got %s (reused=%s), expected %s reused", part,
                         same.node, same.reused ? "yes" : "no", p.node);
        expect_references(e, p.object, 3, "loop over the partition, reached three ways");
        expect_losetup_j(path, 1, "loop over a partition");

        detach_expect(e, p.object, LOOPMGR_STATE_ATTACHED);
        detach_expect(e, p.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &p);

        /* (d) A mounted partition: looping it is Busy, and so is a sub-range of a that
         * covers the mounted bytes. */
        mkfs_ext4(part);
        mount_ok(e, part, mnt, "ext4", 0);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, part, O_RDWR, &error, &x, 0);
                expect_error(r, &error, &x, "loop over a mounted partition", LOOPMGR_ERROR_BUSY);
                message_names(&error, part_name, "Busy (mounted partition)");
                message_names(&error, mnt, "Busy (mounted partition): the mount point");
        }
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, a.node, O_RDWR, &error, &x, 2,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 1 * MiB));
                expect_error(r, &error, &x,
                             "sub-range of a loop device over its mounted partition's bytes",
                             LOOPMGR_ERROR_BUSY);
        }

        umount_ok(e, mnt);
        delete_partition(e, &a, 1);
        detach_gone(e, &a);
}

/* ------------------------------------------------------------------------------------------ */
/* 5. Looping a mounted device */

static void test_mounted_device(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 16 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_attached_ Attached a = {}, whole = {};
        int r;

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        mount_ok(e, a.node, mnt, "ext4", 0);

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, a.node, O_RDWR, &error, &x, 1,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
                expect_error(r, &error, &x, "offset 1M on a mounted loop device",
                             LOOPMGR_ERROR_BUSY);
                message_names(&error, a.node + 5, "Busy (mounted device)");
                message_names(&error, mnt, "Busy (mounted device): the mount point");
        }
        /* The whole of it is identical to it: rule 1 wins, the mount does not matter. */
        ATTACH_OK(e, a.node, O_RDWR, &whole, 0);
        if (!whole.reused || !streq(whole.object, a.object))
                fail_msg("whole range of the mounted %s: got %s (reused=%s), expected it reused",
                         a.node, whole.node, whole.reused ? "yes" : "no");
        expect_references(e, a.object, 2, "whole range of a mounted device");
        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);

        umount_ok(e, mnt);
        detach_gone(e, &a);
}

static void test_mounted_foreign_device(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 16 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_free_ char *node = NULL, *object = NULL;
        uint64_t diskseq;
        int r;

        mkfs_ext4(path);
        node = losetup_foreign(e, path, NULL, &diskseq);
        object = object_for_node(e, node);
        mount_ok(e, node, mnt, "ext4", 0);

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, node, O_RDWR, &error, &x, 1, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
                expect_error(r, &error, &x, "offset 1M on a mounted foreign loop device",
                             LOOPMGR_ERROR_BUSY);
                message_names(&error, node + 5, "Busy (mounted foreign device)");
                message_names(&error, mnt, "Busy (mounted foreign device): the mount point");
        }

        umount_ok(e, mnt);
        env_run_ok("losetup", "-d", node);
        if (!wait_binding_gone(node + 5, diskseq, SIGNAL_TIMEOUT))
                fail_msg("the foreign %s is still bound after losetup -d", node);
}

/* ------------------------------------------------------------------------------------------ */
/* 6. A device made behind the daemon's back */

static void foreign_reuse(Env *e, bool wait_for_daemon) {
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_free_ char *node = NULL, *object = NULL, *st = NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {}, q = {};
        uint64_t diskseq;

        node = losetup_foreign(e, path, NULL, &diskseq);
        if (wait_for_daemon)
                object = object_for_node(e, node);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        if (!a.reused || !streq(a.node, node) || a.diskseq != diskseq)
                fail_msg("Attach of a file losetup bound to %s (diskseq %" PRIu64 ")%s: got %s "
                         "(diskseq %" PRIu64 ", reused=%s), expected the foreign device reused",
                         node, diskseq,
                         wait_for_daemon ? "" : " just before, without waiting for udev", a.node,
                         a.diskseq, a.reused ? "yes" : "no");
        expect_losetup_j(path, 1, "foreign device plus Attach");
        if (!object)
                object = object_for_node(e, node);
        assert_string_equal(object, a.object);

        PROPS_OK(e, a.object, &p);
        /* The daemon did not make the binding, so it stays foreign (Managed=false) while it
         * counts the reference it handed out. */
        if (p.managed)
                fail_msg("the foreign %s turned Managed=true after a reuse", node);
        if (p.references != 1)
                fail_msg("References of the reused foreign %s: %u, expected 1 (ours)", node,
                         p.references);

        /* Dropping our reference: report what happens to a device we did not make. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = call_detach(e, a.object, &error, &st, 0);
                assert_bus_ok(r, &error, "Detach of our reference on a foreign device");
        }
        int present = loop_binding_present(node + 5, diskseq);
        print_message("observed: Detach of the only daemon reference on the foreign %s returned "
                      "'%s'; the binding is %s\n",
                      node, st, present > 0 ? "still there" : "gone");
        if (present > 0) {
                PROPS_OK(e, object, &q);
                print_message("observed: afterwards Managed=%s References=%u State=%s\n",
                              q.managed ? "true" : "false", q.references, q.state);
                assert_int_equal(q.references, 0);
                env_run_ok("losetup", "-d", node);
        }
        if (!wait_binding_gone(node + 5, diskseq, SIGNAL_TIMEOUT))
                fail_msg("the foreign %s is still bound", node);
}

static size_t strv_count(char **l) {
        size_t n = 0;

        while (l && l[n])
                n++;
        return n;
}

/* Device.Aliases of object, as a string list. */
static char **aliases_of(Env *e, const char *object) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        char **l = NULL;
        int r;

        r = sd_bus_get_property(e->bus, LOOPMGR_BUS_NAME, object, LOOPMGR_DEVICE_INTERFACE,
                                "Aliases", &error, &reply, "ao");
        assert_bus_ok(r, &error, "Aliases");
        assert_int_equal(sd_bus_message_read_strv(reply, &l), 1);
        return l;
}

/* Waits until Aliases of object is exactly the n paths given. */
static void expect_aliases(Env *e, const char *object, const char *what, size_t n, ...) {
        uint64_t deadline = now_usec() + SIGNAL_TIMEOUT;

        for (;;) {
                _cleanup_strv_free_ char **l = aliases_of(e, object);
                bool ok = strv_count(l) == n;
                va_list ap;

                va_start(ap, n);
                for (size_t i = 0; ok && i < n; i++)
                        ok = strv_contains(l, va_arg(ap, const char *));
                va_end(ap);
                if (ok)
                        return;
                if (now_usec() >= deadline)
                        fail_msg("%s: Aliases of %s lists %zu device(s) (%s%s), expected %zu", what,
                                 object, strv_count(l), l && l[0] ? l[0] : "",
                                 l && l[0] && l[1] ? ", ..." : "", n);
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

/* Aliases made behind the daemon's back (no guard on this machine): two losetup devices over
 * one file name each other in Aliases, a device over other bytes of it is none, `loopmgrctl
 * list` marks the two, and when one goes the other's Aliases is empty again. */
static void test_foreign_aliases(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 16 * MiB);
        _cleanup_free_ char *n1 = NULL, *n2 = NULL, *n3 = NULL, *o1 = NULL, *o2 = NULL, *o3 = NULL,
                            *out = NULL;
        uint64_t s1, s2, s3;

        n1 = losetup_foreign(e, path, "--sizelimit=8388608", &s1);
        n2 = losetup_foreign(e, path, "--sizelimit=4194304", &s2);
        n3 = losetup_foreign(e, path, "--offset=8388608", &s3);
        o1 = object_for_node(e, n1);
        o2 = object_for_node(e, n2);
        o3 = object_for_node(e, n3);

        expect_aliases(e, o1, "two devices over the first 4 MiB", 1, o2);
        expect_aliases(e, o2, "two devices over the first 4 MiB", 1, o1);
        expect_aliases(e, o3, "a device over the second half", 0);

        assert_int_equal(env_run(&out, NULL, e->loopmgrctl, "list", NULL), 0);
        {
                _cleanup_free_ char *m1 = NULL, *m2 = NULL, *m3 = NULL;

                assert_true(asprintf(&m1, "%s! ", n1 + 5) > 0);
                assert_true(asprintf(&m2, "%s! ", n2 + 5) > 0);
                assert_true(asprintf(&m3, "%s! ", n3 + 5) > 0);
                if (!strstr(out, m1) || !strstr(out, m2) || strstr(out, m3) ||
                    !strstr(out, "expose bytes that another device exposes too"))
                        fail_msg("loopmgrctl list does not mark exactly %s and %s:\n%s", n1, n2,
                                 out);
        }

        env_run_ok("losetup", "-d", n2);
        if (!wait_binding_gone(n2 + 5, s2, SIGNAL_TIMEOUT))
                fail_msg("the foreign %s is still bound after losetup -d", n2);
        expect_aliases(e, o1, "after the other one went", 0);
        env_run_ok("losetup", "-d", n1);
        env_run_ok("losetup", "-d", n3);
        if (!wait_binding_gone(n1 + 5, s1, SIGNAL_TIMEOUT) ||
            !wait_binding_gone(n3 + 5, s3, SIGNAL_TIMEOUT))
                fail_msg("the foreign devices are still bound after losetup -d");
}

/* The daemon knows the foreign device (it heard of it from udev) when the Attach comes. */
static void test_foreign_reuse(void **state) {
        foreign_reuse(*state, true);
}

/* What a script does: losetup, then at once the Attach, racing udev's report of the new
 * device to the daemon. It must not get a second device either. */
static void test_foreign_reuse_immediate(void **state) {
        foreign_reuse(*state, false);
}

/* ------------------------------------------------------------------------------------------ */
/* 7. Concurrent identical attaches */

typedef struct AsyncAttach {
        bool done;
        char *error_name;
        char *error_message;
        char *object;
        char *node;
        uint64_t diskseq;
        int reused;
} AsyncAttach;

static int async_attach_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        AsyncAttach *a = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        const char *object, *node;

        a->done = true;
        if (e) {
                a->error_name = strdup(e->name);
                a->error_message = e->message ? strdup(e->message) : NULL;
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

enum { N_CONCURRENT = 16 };

typedef struct Concurrent {
        sd_bus_slot *slots[N_CONCURRENT];
        AsyncAttach results[N_CONCURRENT];
} Concurrent;

static void concurrent_done(Concurrent *c) {
        for (size_t i = 0; i < N_CONCURRENT; i++) {
                sd_bus_slot_unref(c->slots[i]);
                free(c->results[i].error_name);
                free(c->results[i].error_message);
                free(c->results[i].object);
                free(c->results[i].node);
        }
}

static void test_concurrent_attach_16(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_(concurrent_done) Concurrent c = {};
        sd_bus *buses[N_CONCURRENT];
        _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
        size_t reused = 0;

        assert_true(fd >= 0);
        /* Connect everyone first, then send: the calls reach the daemon back to back. */
        for (size_t i = 0; i < N_CONCURRENT; i++)
                assert_int_equal(env_new_bus(e, &buses[i]), 0);
        for (size_t i = 0; i < N_CONCURRENT; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                assert_true(sd_bus_message_new_method_call(
                                    buses[i], &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                    LOOPMGR_MANAGER_INTERFACE, "Attach") >= 0);
                assert_true(sd_bus_message_append(m, "ha{sv}", fd, 0) >= 0);
                assert_true(sd_bus_call_async(buses[i], &c.slots[i], m, async_attach_reply,
                                              &c.results[i], 30 * USEC_PER_SEC) >= 0);
        }

        uint64_t deadline = now_usec() + 30 * USEC_PER_SEC;
        for (;;) {
                size_t done = 0;
                for (size_t i = 0; i < N_CONCURRENT; i++) {
                        while (sd_bus_process(buses[i], NULL) > 0)
                                ;
                        done += c.results[i].done;
                }
                if (done == N_CONCURRENT || now_usec() >= deadline)
                        break;
                sleep_usec(5 * USEC_PER_MSEC);
        }

        /* Track everything first, so the teardown cleans up whatever the assertions find. */
        for (size_t i = 0; i < N_CONCURRENT; i++)
                if (c.results[i].node && strncmp(c.results[i].node, "/dev/", 5) == 0)
                        (void) env_track_device(e, c.results[i].node + 5, c.results[i].diskseq);

        bool ok = true;
        for (size_t i = 0; i < N_CONCURRENT; i++) {
                AsyncAttach *r = &c.results[i];
                if (!r->done || !r->object) {
                        print_error("attach %zu: %s: %s\n", i, r->done ? r->error_name : "no reply",
                                    r->error_message ?: "");
                        ok = false;
                } else if (!streq(r->object, c.results[0].object ?: "")) {
                        print_error("attach %zu got %s (%s), attach 0 got %s (%s)\n", i, r->object,
                                    r->node, c.results[0].object, c.results[0].node);
                        ok = false;
                } else if (r->reused)
                        reused++;
        }
        if (!ok)
                fail_msg("%d concurrent identical Attach calls did not all get one device",
                         N_CONCURRENT);
        const char *object = c.results[0].object;
        if (reused != N_CONCURRENT - 1)
                fail_msg("%zu of %d concurrent attaches said reused, expected %d", reused,
                         N_CONCURRENT, N_CONCURRENT - 1);
        expect_losetup_j(path, 1, "16 concurrent attaches");
        expect_references(e, object, N_CONCURRENT, "16 concurrent attaches");

        /* Each connection drops its reference: the last one takes the device down. */
        for (size_t i = 0; i < N_CONCURRENT; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                const char *st;
                int r = sd_bus_call_method(buses[i], LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Detach", &error, &reply,
                                           "oa{sv}", object, 0);
                assert_bus_ok(r, &error, "Detach");
                assert_true(sd_bus_message_read(reply, "s", &st) > 0);
                bool last = i == N_CONCURRENT - 1;
                if (!streq(st, last ? LOOPMGR_STATE_DETACHED : LOOPMGR_STATE_ATTACHED))
                        fail_msg("Detach %zu of %d returned '%s', expected '%s'", i + 1,
                                 N_CONCURRENT, st,
                                 last ? LOOPMGR_STATE_DETACHED : LOOPMGR_STATE_ATTACHED);
                if (!last)
                        expect_references(e, object, N_CONCURRENT - (uint32_t) i - 1,
                                          "after a detach");
        }
        if (loop_binding_present(c.results[0].node + 5, c.results[0].diskseq) != 0)
                fail_msg("%s is still bound after the last Detach", c.results[0].node);
        expect_losetup_j(path, 0, "after 16 detaches");
}

/* ------------------------------------------------------------------------------------------ */
/* 8. btrfs sub-volumes: the classic `mount -o loop` alias */

static bool have_program(const char *name) {
        _cleanup_free_ char *out = NULL;
        return env_run(&out, NULL, "sh", "-c", "command -v \"$0\"", name, NULL) == 0;
}

static bool kernel_has_filesystem(const char *name) {
        _cleanup_free_ char *text = NULL;
        size_t size = 0;
        FILE *f = fopen("/proc/filesystems", "re");
        bool found = false;

        if (!f)
                return true; /* cannot tell: let mount say */
        while (getline(&text, &size, f) > 0) {
                /* "nodev\tramfs\n" or "\text4\n" */
                char *t = strrchr(text, '\t');
                t = t ? t + 1 : text;
                t[strcspn(t, "\n")] = 0;
                if (streq(t, name))
                        found = true;
        }
        fclose(f);
        return found;
}

/* Mounts through `loopmgrctl mount` and records the device it used for the teardown. */
static void ctl_mount(Env *e, const char *image, const char *dir, const char *options) {
        assert_int_equal(env_track_mount(e, dir), 0);
        if (options)
                CTL_OK(e, "mount", image, dir, "-o", options);
        else
                CTL_OK(e, "mount", image, dir);

        /* The device it mounted: the one exposing the whole image. */
        _cleanup_free_ char *object = object_for_node(e, image);
        _cleanup_props_ DeviceProps p = {};
        PROPS_OK(e, object, &p);
        assert_int_equal(env_track_device(e, p.name, p.diskseq), 0);
}

static void ctl_umount(Env *e, const char *dir) {
        CTL_OK(e, "umount", dir);
        env_forget_mount(e, dir);
}

static void test_btrfs_subvolumes(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = NULL, *top = NULL, *d1 = NULL, *d2 = NULL;
        _cleanup_free_ char *sub_a = NULL, *sub_b = NULL, *object = NULL, *leak = NULL;
        _cleanup_props_ DeviceProps p = {}, q = {};
        struct stat st;

        /* A kernel without btrfs is a machine we cannot test this on; missing tools are a
         * broken set-up (tools/deps.sh installs them). */
        if (!kernel_has_filesystem("btrfs")) {
                print_message("skipping: this kernel has no btrfs\n");
                skip();
        }
        if (!have_program("mkfs.btrfs") || !have_program("btrfs"))
                fail_msg("mkfs.btrfs or btrfs is missing: run tools/deps.sh (btrfs-progs)");
        path = make_image(e, 256 * MiB);
        top = env_make_dir(e, "btrfs-top");
        d1 = env_make_dir(e, "btrfs-a");
        d2 = env_make_dir(e, "btrfs-b");
        env_run_ok("mkfs.btrfs", "-q", "-f", path);

        ctl_mount(e, path, top, NULL);
        sub_a = env_join(top, "a");
        sub_b = env_join(top, "b");
        env_run_ok("btrfs", "subvolume", "create", sub_a);
        env_run_ok("btrfs", "subvolume", "create", sub_b);
        ctl_umount(e, top);
        expect_losetup_j(path, 0, "after loopmgrctl umount of the top level");

        ctl_mount(e, path, d1, "subvol=a");
        ctl_mount(e, path, d2, "subvol=b");
        expect_losetup_j(path, 1, "two sub-volumes of one image mounted");
        object = object_for_node(e, path);
        PROPS_OK(e, object, &p);
        if (p.references != 2)
                fail_msg("References of %s with two sub-volumes mounted: %u, expected 2", p.node,
                         p.references);

        write_file_at(d1, "in-a", "written through sub-volume a\n");
        write_file_at(d2, "in-b", "written through sub-volume b\n");
        /* Two sub-volumes, not one directory twice. */
        leak = env_join(d1, "in-b");
        assert_true(stat(leak, &st) < 0 && errno == ENOENT);

        ctl_umount(e, d1);
        PROPS_OK(e, object, &q);
        if (q.references != 1 || loop_binding_present(p.name, p.diskseq) != 1)
                fail_msg("after umount of one sub-volume: References %u (expected 1), bound %d",
                         q.references, loop_binding_present(p.name, p.diskseq));
        ctl_umount(e, d2);
        if (!wait_binding_gone(p.name, p.diskseq, SIGNAL_TIMEOUT))
                fail_msg("%s is still bound after both sub-volumes were unmounted", p.node);
        expect_losetup_j(path, 0, "after both umounts");

        env_run_ok("btrfs", "check", "--readonly", path);
}

/* ------------------------------------------------------------------------------------------ */
/* 9. ext4 attached twice */

static void test_ext4_attached_twice(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 32 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_free_ char *out = NULL, *err = NULL;
        _cleanup_attached_ Attached a = {}, b = {};
        const char *content = "one device, one page cache\n";

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        ATTACH_OK(e, path, O_RDWR, &b, 0);
        if (!b.reused || !streq(b.object, a.object))
                fail_msg("second Attach of the ext4 image: got %s (reused=%s), expected %s", b.node,
                         b.reused ? "yes" : "no", a.node);
        expect_losetup_j(path, 1, "ext4 image attached twice");

        mount_ok(e, a.node, mnt, "ext4", 0);
        write_file_at(mnt, "hello.txt", content);
        umount_ok(e, mnt);

        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &a);

        env_run_ok("e2fsck", "-fn", path);
        int r = env_run(&out, &err, "debugfs", "-R", "cat /hello.txt", path, NULL);
        if (r != 0 || !streq(out, content))
                fail_msg("debugfs cat /hello.txt: exit %d, got '%s', expected '%s' (%s)", r,
                         out ?: "", content, err ?: "");
}

/* ------------------------------------------------------------------------------------------ */
/* 10. Resolve through loop over partition over loop */

static void test_resolve_partition_chain(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB), *part = NULL;
        _cleanup_attached_ Attached a = {}, p = {};
        _cleanup_resolved_ Resolved r1 = {}, r2 = {}, r3 = {};
        _cleanup_close_ int pfd = -EBADF, ffd = -EBADF;
        _cleanup_props_ DeviceProps pp = {};
        struct stat st;
        int r;

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        part = add_partition(e, &a, 1, 2048, 4096);
        const char *part_name = strrchr(part, '/') + 1;
        ATTACH_OK(e, part, O_RDWR, &p, 0);
        assert_int_equal(stat(path, &st), 0);

        /* Everything P exposes: [1M, 3M) of the file, through three layers. */
        pfd = open(p.node, O_RDONLY | O_CLOEXEC);
        assert_true(pfd >= 0);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = call_resolve(e, pfd, &error, &r1, 0);
                assert_bus_ok(r, &error, "Resolve of the loop over the partition");
        }
        if (r1.unexpected)
                fail_msg("Resolve returned unexpected keys: %s", r1.unexpected);
        assert_non_null(r1.base_kind);
        assert_string_equal(r1.base_kind, "file");
        assert_int_equal(r1.base_device, st.st_dev);
        assert_int_equal(r1.base_inode, st.st_ino);
        assert_int_equal(r1.offset, 1 * MiB);
        assert_int_equal(r1.size, 2 * MiB);
        chain_names(r1.chain, r1.n_chain, 3, "Resolve chain (loop/partition/loop/file)", p.node + 5,
                    part_name, a.node + 5, path);
        if (!strv_contains(r1.aliases, p.object) || !strv_contains(r1.aliases, a.object)) {
                _cleanup_free_ char *l = strv_join(r1.aliases);
                fail_msg("Resolve aliases %s, expected both %s and %s", l ?: "", p.object,
                         a.object);
        }

        /* A sub-range of P: [1.5M, 2M) of the file. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = call_resolve(e, pfd, &error, &r2, 2, OPT_T(LOOPMGR_OPT_OFFSET, 512 * KiB),
                                 OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 512 * KiB));
                assert_bus_ok(r, &error, "Resolve of a sub-range of the loop over the partition");
        }
        assert_int_equal(r2.offset, 1 * MiB + 512 * KiB);
        assert_int_equal(r2.size, 512 * KiB);
        if (!strv_contains(r2.aliases, p.object) || !strv_contains(r2.aliases, a.object))
                fail_msg("Resolve of [1.5M, 2M): aliases do not list both %s and %s", p.object,
                         a.object);

        /* [4M, 5M) of the file: only a exposes it, not the loop over the partition. */
        ffd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(ffd >= 0);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = call_resolve(e, ffd, &error, &r3, 2, OPT_T(LOOPMGR_OPT_OFFSET, 4 * MiB),
                                 OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 1 * MiB));
                assert_bus_ok(r, &error, "Resolve of file bytes [4M, 5M)");
        }
        if (!strv_contains(r3.aliases, a.object) || strv_contains(r3.aliases, p.object)) {
                _cleanup_free_ char *l = strv_join(r3.aliases);
                fail_msg("Resolve of [4M, 5M): aliases %s, expected %s and not %s", l ?: "",
                         a.object, p.object);
        }

        /* The Chain property says the same. */
        PROPS_OK(e, p.object, &pp);
        chain_names(pp.chain, pp.n_chain, 3, "Chain property of the loop over the partition",
                    part_name, a.node + 5);

        pfd = safe_close(pfd);
        detach_gone(e, &p);
        delete_partition(e, &a, 1);
        detach_gone(e, &a);
}

/* ------------------------------------------------------------------------------------------ */

#define T(f) cmocka_unit_test_setup_teardown(f, NULL, test_teardown)

static int group_setup(void **state) {
        return env_group_setup(state, "alias");
}

static int group_teardown(void **state) {
        return env_group_teardown(state);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_same_file_other_names),
                T(test_ranges),
                T(test_size_limit_zero_is_to_the_end),
                T(test_loop_over_idle_loop),
                T(test_loop_over_mounted_loop),
                T(test_loop_over_partition),
                T(test_mounted_device),
                T(test_mounted_foreign_device),
                T(test_foreign_reuse),
                T(test_foreign_reuse_immediate),
                T(test_foreign_aliases),
                T(test_concurrent_attach_16),
                T(test_btrfs_subvolumes),
                T(test_ext4_attached_twice),
                T(test_resolve_partition_chain),
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
                 * would add its own (meaningless) report; the failure is reported already. */
                fflush(NULL);
                _exit(1);
        }
        return 0;
}
