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
#include "test-aliases.h"

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
/* Helpers */

void expect_error_impl(int r, const sd_bus_error *error, const Attached *got, const char *what,
                       const char *name, const char *file, int line) {
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

bool has_word(const char *s, const char *word) {
        size_t n = strlen(word);
        for (const char *p = s; (p = strstr(p, word)); p++) {
                bool before = p == s || !isalnum((unsigned char) p[-1]);
                bool after = !isalnum((unsigned char) p[n]);
                if (before && after)
                        return true;
        }
        return false;
}

void message_names_impl(const sd_bus_error *error, const char *word, const char *what,
                        const char *file, int line) {
        if (!error->message || !has_word(error->message, word)) {
                print_error("%s:%d: %s: the %s message does not name '%s': %s\n", file, line, what,
                            error->name, word, error->message ?: "(none)");
                _fail(file, line);
        }
}

bool strv_has_word(char **l, const char *word) {
        for (char **i = l; i && *i; i++)
                if (has_word(*i, word))
                        return true;
        return false;
}

bool strv_has_substring(char **l, const char *s) {
        for (char **i = l; i && *i; i++)
                if (strstr(*i, s))
                        return true;
        return false;
}

char *strv_join(char **l) {
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

void chain_names_impl(char **chain, size_t n, size_t min, const char *what,
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

void detach_expect(Env *e, const char *object, const char *expected_state) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *state = NULL;
        int r = call_detach(e, object, &error, &state, 0);
        assert_bus_ok(r, &error, "Detach");
        if (!streq(state, expected_state))
                fail_msg("Detach(%s) returned '%s', expected '%s'", object, state, expected_state);
}

void detach_gone(Env *e, const Attached *a) {
        detach_expect(e, a->object, LOOPMGR_STATE_DETACHED);
        if (loop_binding_present(a->node + 5, a->diskseq) != 0)
                fail_msg("%s (diskseq %" PRIu64 ") is still bound after Detach said detached",
                         a->node, a->diskseq);
}

uint32_t references_of(Env *e, const char *object) {
        _cleanup_props_ DeviceProps p = {};
        PROPS_OK(e, object, &p);
        return p.references;
}

void expect_references_impl(Env *e, const char *object, uint32_t expected, const char *what,
                            const char *file, int line) {
        uint32_t got = references_of(e, object);
        if (got != expected) {
                print_error("%s:%d: %s: References of %s is %u, expected %u\n", file, line, what,
                            object, got, expected);
                _fail(file, line);
        }
}

char *make_image(Env *e, uint64_t size) {
        char *path = NULL;
        int r = env_make_image(e, e->tmpdir, size, &path);
        if (r < 0)
                fail_msg("creating an image: %s", strerror(-r));
        return path;
}

int ctl(Env *e, char **ret_out, char **ret_err, const char *arg, ...) {
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

void mkfs_ext4(const char *target) {
        /* nodiscard: discarding a loop device punches holes, slow and pointless here. */
        env_run_ok("mkfs.ext4", "-q", "-F", "-E", "nodiscard", target);
}

void write_file_at(const char *dir, const char *name, const char *content) {
        _cleanup_free_ char *path = env_join(dir, name);
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                fail_msg("creating %s: %m", path);
        size_t n = strlen(content);
        if (write(fd, content, n) != (ssize_t) n || fsync(fd) < 0)
                fail_msg("writing %s: %m", path);
}

size_t losetup_j_count(const char *path) {
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

void expect_losetup_j(const char *path, size_t expected, const char *what) {
        size_t n = losetup_j_count(path);
        if (n != expected) {
                _cleanup_free_ char *out = NULL;
                (void) env_run(&out, NULL, "losetup", "-j", path, NULL);
                fail_msg("%s: losetup -j %s lists %zu device(s), expected %zu:\n%s", what, path, n,
                         expected, out ?: "");
        }
}

void mount_ok(Env *e, const char *source, const char *target, const char *fstype,
              unsigned long flags) {
        int r = env_mount(e, source, target, fstype, flags, NULL);
        if (r < 0)
                fail_msg("mount %s on %s (%s): %s", source, target, fstype ?: "bind", strerror(-r));
}

void umount_ok(Env *e, const char *target) {
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

char *add_partition(Env *e, const Attached *a, unsigned partno, uint64_t start_sector,
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

void delete_partition(Env *e, const Attached *a, unsigned partno) {
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

char *losetup_foreign(Env *e, const char *path, const char *extra, uint64_t *ret_diskseq) {
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

char *object_for_node(Env *e, const char *node) {
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

bool strv_contains(char **l, const char *s) {
        for (char **i = l; i && *i; i++)
                if (streq(*i, s))
                        return true;
        return false;
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
        return ENV_RUN_TESTS(tests, group_setup, group_teardown, NULL);
}
