/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Stress and faults on real devices, bounded in time and count:
 *
 *   stress_mixed       N client threads (own bus connection each) x M cycles of shared and
 *                      distinct attaches, sub-range and read-only and exclusive requests over
 *                      the shared image, mounts, detaches; a sampler thread checks every 20 ms
 *                      from sysfs that no two bound devices expose intersecting bytes of one
 *                      file; every reply is a success or a documented error; nothing is left;
 *                      the daemon's VmRSS does not grow past cycle 50.
 *   loop_block         systemd's test-loop-block in our terms: N threads attach one image
 *                      read-only (shared), mount a BLKPG partition of it read-only, unmount,
 *                      detach, in a loop; every call of every thread must succeed.
 *   fault_*            SIGKILL of the daemon during an attach burst and during a pending
 *                      teardown, references and client owners across SIGKILL/SIGTERM, a device
 *                      bound by losetup while the daemon is down, a corrupt state file, udev
 *                      that never answers (a udev rule that stalls our devices; and, when it is
 *                      safe for the host, udevd stopped).
 *
 * Figures (timings, counts, RSS) are printed for the record.
 *
 * Knobs: LOOPMGR_STRESS_THREADS, LOOPMGR_STRESS_CYCLES (stress_mixed, default 8 x 200),
 * LOOPMGR_STRESS_RSS_KIB (allowed VmRSS growth, default 4096), LOOPMGR_LOOPBLOCK_THREADS,
 * LOOPMGR_LOOPBLOCK_ITERATIONS (default 8 x 25), LOOPMGR_BURST_ROUNDS (default 8),
 * LOOPMGR_TEST_STOP_UDEV=1 (stop udevd even though other environments may use it; by default
 * only when tests/env.sh started it and no other environment is up).
 *
 * Run:   export LOOPMGR_TEST_ENV=/run/loopmgr-stress; eval "$(tests/env.sh start)"
 *        meson test -C BUILD test-stress
 * LOOPMGR_TEST_FILTER / LOOPMGR_TEST_SKIP select tests by cmocka glob.
 */

#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "test-stress.h"

bool udev_stopped;

bool udev_was_env_sh;

/* ------------------------------------------------------------------------------------------ */
/* Fixtures (as in test-aliases) */

static int test_teardown(void **state) {
        Env *e = *state;
        bool ok = true;
        size_t n = 0;
        int left;

        if (udev_stopped)
                udev_restart();
        if (e->n_mounts > 0) {
                print_error("the test left %zu mount(s), the newest %s\n", e->n_mounts,
                            e->mounts[e->n_mounts - 1]);
                ok = false;
        }
        if (e->n_partitions > 0) {
                print_error("the test left %zu partition(s)\n", e->n_partitions);
                ok = false;
        }
        /* A fault test may have left the daemon down. */
        if (e->daemon_pid <= 0 && env_start_daemon(e) < 0) {
                print_error("cannot restart loopmgrd\n");
                env_group_failed = true;
                ok = false;
        }
        left = env_cleanup_test(e);
        if (left > 0) {
                print_error("the test left %d device(s) attached\n", left);
                ok = false;
        }
        if (e->daemon_pid > 0 && env_check_consistency_under(e, e->tmpdir) < 0)
                ok = false;
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

unsigned env_unsigned(const char *name, unsigned def) {
        const char *v = getenv(name);
        if (!v || !*v)
                return def;
        char *end;
        unsigned long n = strtoul(v, &end, 10);
        if (*end || n == 0 || n > 100000)
                return def;
        return (unsigned) n;
}

char *make_image_in(Env *e, const char *dir, uint64_t size) {
        char *path = NULL;
        int r = env_make_image(e, dir, size, &path);
        if (r < 0)
                fail_msg("creating an image in %s: %s", dir, strerror(-r));
        return path;
}

void mkfs_ext4(const char *target) {
        env_run_ok("mkfs.ext4", "-q", "-F", "-E", "nodiscard", target);
}

int umount_retry(const char *target) {
        for (unsigned i = 0;; i++) {
                if (umount2(target, 0) == 0)
                        return 0;
                if (errno != EBUSY || i >= 50)
                        return -errno;
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

char *object_path(uint64_t diskseq) {
        char *p;
        assert_true(asprintf(&p, LOOPMGR_DEVICE_PATH_PREFIX "/%" PRIu64, diskseq) > 0);
        return p;
}

/* ------------------------------------------------------------------------------------------ */
/* The kernel's view from sysfs, safe to call from any thread */

int read_attr(const char *name, const char *attr, char *buf, size_t size) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "/sys/block/%s/%s", name, attr);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        ssize_t n = read(fd, buf, size - 1);
        int saved = errno;
        close(fd);
        if (n < 0)
                return -saved;
        buf[n] = 0;
        buf[strcspn(buf, "\n")] = 0;
        return 0;
}

int read_attr_u64(const char *name, const char *attr, uint64_t *ret) {
        char buf[64];
        int r = read_attr(name, attr, buf, sizeof(buf));
        if (r < 0)
                return r;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(buf, &end, 10);
        if (errno || end == buf)
                return -EINVAL;
        *ret = v;
        return 0;
}

int binding_read(const char *name, const char *prefix, Binding *ret) {
        Binding b = {};
        uint64_t seq2;
        int r;

        r = read_attr(name, "loop/backing_file", b.backing, sizeof(b.backing));
        if (r < 0)
                return -ENOENT;
        if (prefix) {
                size_t len = strlen(prefix);
                if (strncmp(b.backing, prefix, len) != 0 || b.backing[len] != '/')
                        return -ESRCH;
        }
        if (read_attr_u64(name, "diskseq", &b.diskseq) < 0 ||
            read_attr_u64(name, "loop/offset", &b.offset) < 0 ||
            read_attr_u64(name, "loop/sizelimit", &b.sizelimit) < 0)
                return -ENOENT;
        char again[PATH_MAX];
        if (read_attr(name, "loop/backing_file", again, sizeof(again)) < 0 ||
            read_attr_u64(name, "diskseq", &seq2) < 0)
                return -ENOENT;
        if (seq2 != b.diskseq || !streq(again, b.backing))
                return -EAGAIN;
        snprintf(b.name, sizeof(b.name), "%s", name);
        *ret = b;
        return 0;
}

int read_text_file(const char *path, char **ret) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        char *buf = NULL;
        size_t n = 0, alloc = 0;

        if (fd < 0)
                return -errno;
        for (;;) {
                if (alloc - n < 4096) {
                        char *p = realloc(buf, alloc + 65536);
                        if (!p) {
                                free(buf);
                                return -ENOMEM;
                        }
                        buf = p;
                        alloc += 65536;
                }
                ssize_t k = read(fd, buf + n, alloc - n - 1);
                if (k < 0) {
                        int saved = errno;
                        free(buf);
                        return -saved;
                }
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        buf[n] = 0;
        *ret = buf;
        return 0;
}

int bindings_under(const char *prefix, Binding **ret, size_t *ret_n) {
        DIR *d = opendir("/sys/block");
        Binding *l = NULL;
        size_t n = 0, alloc = 0;
        struct dirent *de;

        if (!d)
                return -errno;
        while ((de = readdir(d))) {
                Binding b;
                if (strncmp(de->d_name, "loop", 4) != 0)
                        continue;
                int r = -EAGAIN;
                for (unsigned i = 0; i < 5 && r == -EAGAIN; i++)
                        r = binding_read(de->d_name, prefix, &b);
                if (r < 0)
                        continue;
                if (n == alloc) {
                        alloc = alloc ? alloc * 2 : 16;
                        Binding *p = realloc(l, alloc * sizeof(Binding));
                        if (!p) {
                                free(l);
                                closedir(d);
                                return -ENOMEM;
                        }
                        l = p;
                }
                l[n++] = b;
        }
        closedir(d);
        *ret = l;
        *ret_n = n;
        return 0;
}

void binding_range(const Binding *b, uint64_t *ret_start, uint64_t *ret_end) {
        struct stat st;
        uint64_t size = stat(b->backing, &st) == 0 ? (uint64_t) st.st_size : UINT64_MAX;
        uint64_t end = b->sizelimit > 0 ? b->offset + b->sizelimit : size;
        if (end > size)
                end = size;
        *ret_start = b->offset;
        *ret_end = end;
}

bool binding_still(const Binding *b) {
        Binding now;
        return binding_read(b->name, NULL, &now) == 0 && now.diskseq == b->diskseq &&
               streq(now.backing, b->backing) && now.offset == b->offset &&
               now.sizelimit == b->sizelimit;
}

/* ------------------------------------------------------------------------------------------ */
/* Raw calls for worker threads (the Env helpers are not thread-safe) */

int raw_attach_message(sd_bus *bus, int fd, const AttachOpts *o, sd_bus_message **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Attach");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "h", fd);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        if (o->offset > 0 &&
            (r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_OFFSET, "t", o->offset)) < 0)
                return r;
        if (o->size_limit > 0 &&
            (r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SIZE_LIMIT, "t", o->size_limit)) < 0)
                return r;
        if (o->sharing &&
            (r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SHARING, "s", o->sharing)) < 0)
                return r;
        if (o->read_only >= 0 &&
            (r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_READ_ONLY, "b", o->read_only)) < 0)
                return r;
        if (o->timeout_usec > 0 && (r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_TIMEOUT_USEC,
                                                              "t", o->timeout_usec)) < 0)
                return r;
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

int read_ref(sd_bus_message *reply, Ref *ret) {
        const char *object, *node;
        uint64_t diskseq;
        int reused, r;

        r = sd_bus_message_read(reply, "ostb", &object, &node, &diskseq, &reused);
        if (r < 0)
                return r;
        Ref ref = {.diskseq = diskseq, .reused = reused};
        snprintf(ref.object, sizeof(ref.object), "%s", object);
        snprintf(ref.node, sizeof(ref.node), "%s", node);
        *ret = ref;
        return 0;
}

int raw_attach(sd_bus *bus, const char *path, int flags, const AttachOpts *o, sd_bus_error *error,
               Ref *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_close_ int fd = open(path, flags | O_CLOEXEC);
        int r;

        if (fd < 0)
                return -errno;
        r = raw_attach_message(bus, fd, o, &m);
        if (r < 0)
                return r;
        r = sd_bus_call(bus, m, CALL_TIMEOUT, error, &reply);
        if (r < 0)
                return r;
        return read_ref(reply, ret);
}

int raw_detach(sd_bus *bus, const char *object, sd_bus_error *error, char *ret_state, size_t size) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *st;
        int r;

        r = sd_bus_call_method(bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                               LOOPMGR_MANAGER_INTERFACE, "Detach", error, &reply, "oa{sv}", object,
                               0);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "s", &st);
        if (r < 0)
                return r;
        snprintf(ret_state, size, "%s", st);
        return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Counters shared by worker threads */

void tally_count(Tally *t, const char *name) {
        pthread_mutex_lock(&t->lock);
        size_t i;
        for (i = 0; i < t->n_names; i++)
                if (streq(t->names[i].name, name))
                        break;
        if (i == t->n_names && i < MAX_NAMES) {
                snprintf(t->names[i].name, sizeof(t->names[i].name), "%.*s",
                         (int) sizeof(t->names[i].name) - 1, name);
                t->n_names++;
        }
        if (i < MAX_NAMES)
                t->names[i].count++;
        pthread_mutex_unlock(&t->lock);
}

void tally_fail(Tally *t, const char *format, ...) {
        char *msg = NULL;
        va_list ap;
        va_start(ap, format);
        if (vasprintf(&msg, format, ap) < 0)
                msg = NULL;
        va_end(ap);
        pthread_mutex_lock(&t->lock);
        t->n_failures++;
        if (msg && t->n_messages < MAX_MESSAGES)
                t->messages[t->n_messages++] = TAKE_PTR(msg);
        pthread_mutex_unlock(&t->lock);
        free(msg);
}

void tally_print(Tally *t, const char *what) {
        print_message("  %s:\n", what);
        for (size_t i = 0; i < t->n_names; i++)
                print_message("    %-52s %u\n", t->names[i].name, t->names[i].count);
}

unsigned tally_report(Tally *t) {
        for (size_t i = 0; i < t->n_messages; i++) {
                print_error("  %s\n", t->messages[i]);
                free(t->messages[i]);
        }
        if (t->n_failures > t->n_messages)
                print_error("  ... and %u more\n", t->n_failures - (unsigned) t->n_messages);
        t->n_messages = 0;
        return t->n_failures;
}

bool error_is_documented(const sd_bus_error *error) {
        return sd_bus_error_has_name(error, LOOPMGR_ERROR_OVERLAP) ||
               sd_bus_error_has_name(error, LOOPMGR_ERROR_BUSY) ||
               sd_bus_error_has_name(error, LOOPMGR_ERROR_NOT_FOUND) ||
               sd_bus_error_has_name(error, LOOPMGR_ERROR_TIMEOUT);
}
/* ------------------------------------------------------------------------------------------ */

#define T(f) cmocka_unit_test_setup_teardown(f, NULL, test_teardown)

static int group_setup(void **state) {
        /* ASan keeps freed memory in a quarantine of 256 MiB: the daemon's VmRSS would measure
         * how much it allocates, not what it keeps. A small quarantine (still catching recent
         * use-after-free) makes stress_mixed's RSS figure mean something. The daemon inherits
         * this; a build without ASan ignores it. */
        {
                const char *old = getenv("ASAN_OPTIONS");
                _cleanup_free_ char *v = NULL;
                if (asprintf(&v, "%s%squarantine_size_mb=16", old ?: "", old && *old ? ":" : "") <
                            0 ||
                    setenv("ASAN_OPTIONS", v, 1) < 0)
                        return -1;
        }

        return env_group_setup(state, "stress");
}

static int group_teardown(void **state) {
        if (udev_stopped)
                udev_restart();
        return env_group_teardown(state);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_stress_mixed),
                T(test_loop_block),
                T(test_fault_kill_during_attach_burst),
                T(test_fault_kill_pending_teardown),
                T(test_fault_kill_keeps_references),
                T(test_fault_adopt_while_down),
                T(test_fault_corrupt_state),
                T(test_fault_udev_stalled),
                T(test_fault_udev_stopped),
        };
        return ENV_RUN_TESTS(tests, group_setup, group_teardown, NULL);
}
