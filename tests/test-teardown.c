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

#define MiB (1024ULL * 1024ULL)

/* How long the daemon may take to learn of something through udev. */
#define SIGNAL_TIMEOUT (2 * USEC_PER_SEC)
/* The bound on "the last opener went" -> InterfacesRemoved (and on Openers catching up). */
#define GONE_TIMEOUT (1 * USEC_PER_SEC)

/* cmocka does not count a failed group setup/teardown in its return value. */

/* Processes the test started (the holder of another mount namespace); killed by the
 * teardown. */
static pid_t children[4];
static size_t n_children;

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

static char *make_image(Env *e, uint64_t size) {
        char *path = NULL;
        int r = env_make_image(e, e->tmpdir, size, &path);
        if (r < 0)
                fail_msg("creating an image: %s", strerror(-r));
        return path;
}

static void mkfs_ext4(const char *target) {
        /* nodiscard: discarding a loop device punches holes, slow and pointless here. */
        env_run_ok("mkfs.ext4", "-q", "-F", "-E", "nodiscard", target);
}

static void mount_ok(Env *e, const char *source, const char *target) {
        int r = env_mount(e, source, target, "ext4", 0, NULL);
        if (r < 0)
                fail_msg("mount %s on %s: %s", source, target, strerror(-r));
}

/* Unmounts and returns the time right after umount(2) succeeded: the last opener is gone. */
static uint64_t umount_ok(Env *e, const char *target) {
        int r = -EBUSY;
        /* udev's probe may still hold a file system that was just mounted, for a moment. */
        for (unsigned i = 0; i < 20 && r == -EBUSY; i++) {
                if (i > 0)
                        sleep_usec(100 * USEC_PER_MSEC);
                r = env_umount(e, target);
        }
        if (r < 0)
                fail_msg("umount %s: %s", target, strerror(-r));
        return now_usec();
}

static char *openers_string(const DeviceProps *p) {
        char *s = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&s, &size);
        if (!f)
                return NULL;
        fputc('[', f);
        for (size_t i = 0; i < p->n_openers; i++)
                fprintf(f, "%s(%s, %s)", i > 0 ? " " : "", p->opener_kinds[i],
                        p->opener_descriptions[i]);
        fputc(']', f);
        fclose(f);
        return s;
}

static bool has_opener(const DeviceProps *p, const char *kind, const char *description) {
        for (size_t i = 0; i < p->n_openers; i++)
                if (streq(p->opener_kinds[i], kind) &&
                    streq(p->opener_descriptions[i], description))
                        return true;
        return false;
}

/* Reads Openers until it lists (kind, description) or the timeout passes; returns how long it
 * took. Fails the test with the last list seen otherwise. */
static uint64_t expect_opener_impl(Env *e, const char *object, const char *kind,
                                   const char *description, uint64_t timeout, const char *file,
                                   int line) {
        uint64_t start = now_usec(), deadline = start + timeout;
        for (;;) {
                _cleanup_props_ DeviceProps p = {};
                PROPS_OK(e, object, &p);
                if (has_opener(&p, kind, description)) {
                        _cleanup_free_ char *l = openers_string(&p);
                        print_message("  Openers of %s: %s\n", p.node, l ?: "?");
                        return now_usec() - start;
                }
                if (now_usec() >= deadline) {
                        _cleanup_free_ char *l = openers_string(&p);
                        print_error("%s:%d: Openers of %s (%s) do not list (%s, %s) after %" PRIu64
                                    " ms: %s\n",
                                    file, line, p.node, object, kind, description,
                                    (uint64_t) (timeout / USEC_PER_MSEC), l ?: "?");
                        _fail(file, line);
                }
                sleep_usec(20 * USEC_PER_MSEC);
        }
}
#define expect_opener(e, object, kind, description, timeout)                                       \
        expect_opener_impl((e), (object), (kind), (description), (timeout), __FILE__, __LINE__)

/* Processes the bus until the catcher recorded more than n signals, or the timeout passes. */
static int catcher_wait_more(Env *e, Catcher *c, size_t n, uint64_t timeout_usec) {
        uint64_t deadline = now_usec() + timeout_usec;
        for (;;) {
                if (c->count > n)
                        return (int) n;
                int r = sd_bus_process(e->bus, NULL);
                if (r < 0)
                        fail_msg("sd_bus_process() failed: %s", strerror(-r));
                if (r > 0)
                        continue;
                uint64_t t = now_usec();
                if (t >= deadline)
                        return -ETIMEDOUT;
                r = sd_bus_wait(e->bus, deadline - t);
                if (r < 0 && r != -EINTR)
                        fail_msg("sd_bus_wait() failed: %s", strerror(-r));
        }
}

/* Everything the daemon sent so far is processed; returns how many signals c holds, so that a
 * later expect_changed() counts only what a following change causes. */
static size_t catcher_mark(Env *e, Catcher *c) {
        /* A round trip to the daemon: signals it sent before answering are queued before the
         * reply. */
        _cleanup_free_ char *version = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        assert_bus_ok(get_version(e, &error, &version), &error, "Version");
        bus_drain(e);
        return c->count;
}

/* A PropertiesChanged for `property` of the object after the mark (catcher holding `mark`
 * signals) must arrive within a second of the change. */
static void expect_changed_impl(Env *e, Catcher *c, size_t mark, const char *object,
                                const char *property, uint64_t since, const char *file, int line) {
        int r = catcher_wait_more(e, c, mark, GONE_TIMEOUT);
        if (r < 0) {
                print_error("%s:%d: no PropertiesChanged for %s of %s within %" PRIu64
                            " ms (SPEC §5: every property emits it when it changes)\n",
                            file, line, property, object,
                            (uint64_t) (GONE_TIMEOUT / USEC_PER_MSEC));
                _fail(file, line);
        }
        print_message("  PropertiesChanged(%s) %.1f ms after the change\n", property,
                      (double) (now_usec() - since) / USEC_PER_MSEC);
}
#define expect_changed(e, c, mark, object, property, since)                                        \
        expect_changed_impl((e), (c), (mark), (object), (property), (since), __FILE__, __LINE__)

static void expect_state_impl(Env *e, const char *object, const char *expected, const char *file,
                              int line) {
        _cleanup_props_ DeviceProps p = {};
        PROPS_OK(e, object, &p);
        if (!streq_ptr(p.state, expected)) {
                print_error("%s:%d: State of %s is '%s', expected '%s'\n", file, line, object,
                            p.state ?: "(none)", expected);
                _fail(file, line);
        }
}
#define expect_state(e, object, expected)                                                          \
        expect_state_impl((e), (object), (expected), __FILE__, __LINE__)

static void detach_pending_impl(Env *e, const Attached *a, const char *file, int line) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *state = NULL;
        int r = call_detach(e, a->object, &error, &state, 0);
        assert_bus_ok_impl(r, &error, "Detach", file, line);
        if (!streq(state, LOOPMGR_STATE_PENDING)) {
                print_error("%s:%d: Detach(%s) of a device still open returned '%s', expected "
                            "'%s'\n",
                            file, line, a->node, state, LOOPMGR_STATE_PENDING);
                _fail(file, line);
        }
        /* The kernel must still have it: "pending" is not a polite "detached". */
        if (loop_binding_present(a->node + 5, a->diskseq) != 1) {
                print_error("%s:%d: %s is no longer bound, yet Detach said pending\n", file, line,
                            a->node);
                _fail(file, line);
        }
}
#define detach_pending(e, a) detach_pending_impl((e), (a), __FILE__, __LINE__)

/* After the last opener went at `since`: InterfacesRemoved for the object within a second and
 * the kernel binding gone. Returns the index of the signal in the catcher. */
static int expect_gone_impl(Env *e, Catcher *removed, const Attached *a, uint64_t since,
                            const char *what, const char *file, int line) {
        int i = catcher_wait(e, removed, a->object, NULL, GONE_TIMEOUT);
        uint64_t took = now_usec() - since;
        if (i < 0) {
                int bound = loop_binding_present(a->node + 5, a->diskseq);
                /* Tell the two failures apart: the kernel did not finish, or the daemon did not
                 * say so. */
                if (catcher_wait(e, removed, a->object, NULL, SIGNAL_TIMEOUT) >= 0)
                        print_error("%s:%d: %s: InterfacesRemoved for %s came only after %.1f ms "
                                    "(expected < %" PRIu64 " ms)\n",
                                    file, line, what, a->node,
                                    (double) (now_usec() - since) / USEC_PER_MSEC,
                                    (uint64_t) (GONE_TIMEOUT / USEC_PER_MSEC));
                else
                        print_error("%s:%d: %s: no InterfacesRemoved for %s (%s) within %" PRIu64
                                    " ms; the kernel binding is %s\n",
                                    file, line, what, a->node, a->object,
                                    (uint64_t) ((GONE_TIMEOUT + SIGNAL_TIMEOUT) / USEC_PER_MSEC),
                                    bound == 1   ? "still there"
                                    : bound == 0 ? "gone"
                                                 : "unknown");
                _fail(file, line);
        }
        if (loop_binding_present(a->node + 5, a->diskseq) != 0) {
                print_error("%s:%d: %s: InterfacesRemoved for %s, but the kernel still has the "
                            "binding (diskseq %" PRIu64 ")\n",
                            file, line, what, a->node, a->diskseq);
                _fail(file, line);
        }
        print_message("  %s: %s gone %.1f ms after the last opener went\n", what, a->node,
                      (double) took / USEC_PER_MSEC);
        return i;
}
#define expect_gone(e, removed, a, since, what)                                                    \
        expect_gone_impl((e), (removed), (a), (since), (what), __FILE__, __LINE__)

/* umount(2), retried while udev's probe holds the file system for a moment; -errno. */
static int umount_retry_quiet(const char *target) {
        for (unsigned i = 0;; i++) {
                if (umount2(target, 0) == 0)
                        return 0;
                if (errno != EBUSY || i >= 50)
                        return -errno;
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

/* Drops the test's reference; the device must go within the signal timeout. */
static void detach_gone_or_pending(Env *e, const Attached *a) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *state = NULL;
        int r = call_detach(e, a->object, &error, &state, 0);
        assert_bus_ok(r, &error, "Detach");
        if (!wait_binding_gone(a->node + 5, a->diskseq, SIGNAL_TIMEOUT))
                fail_msg("%s is still bound %" PRIu64 " ms after Detach said %s", a->node,
                         (uint64_t) (SIGNAL_TIMEOUT / USEC_PER_MSEC), state);
}

/* ------------------------------------------------------------------------------------------ */
/* 1. Mounted in our namespace */

static void test_mounted(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 64 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_attached_ Attached a = {};

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *openers = catch_properties_changed(e, a.object, "Openers");
        Catcher *states = catch_properties_changed(e, a.object, "State");
        Catcher *removed = catch_interfaces_removed(e);

        size_t mark = catcher_mark(e, openers);
        mount_ok(e, a.node, mnt);
        uint64_t mounted = now_usec();
        expect_changed(e, openers, mark, a.object, "Openers", mounted);
        expect_opener(e, a.object, "mount", mnt, GONE_TIMEOUT);

        mark = catcher_mark(e, states);
        detach_pending(e, &a);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);
        expect_changed(e, states, mark, a.object, "State", now_usec());
        /* Still mounted: the opener is still listed while the teardown waits. */
        expect_opener(e, a.object, "mount", mnt, 0);

        uint64_t gone = umount_ok(e, mnt);
        expect_gone(e, removed, &a, gone, "umount of the last mount");
}

/* ------------------------------------------------------------------------------------------ */
/* 2. Mounted in another mount namespace only */

/* Starts `unshare -m --propagation private sh -c 'mount NODE DIR && echo ok && exec sleep 60'`
 * and waits for its "ok": from then on the device is mounted in a namespace the daemon cannot
 * see, kept alive by the child. */
static pid_t spawn_namespace_mount(const char *node, const char *dir) {
        _cleanup_free_ char *script = NULL;
        int p[2];

        assert_true(n_children < ELEMENTSOF(children));
        assert_true(asprintf(&script, "mount '%s' '%s' && echo ok && exec sleep 60", node, dir) >
                    0);
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);

        fflush(NULL);
        pid_t parent = getpid();
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(1);
                if (dup2(p[1], STDOUT_FILENO) < 0 || dup2(p[1], STDERR_FILENO) < 0) {
                        perror("test-teardown: dup2 of stdout and stderr for unshare");
                        _exit(1);
                }
                execlp("unshare", "unshare", "-m", "--propagation", "private", "sh", "-c", script,
                       NULL);
                /* stderr is the pipe: the parent shows this in its failure message. */
                fprintf(stderr, "cannot execute unshare: %m\n");
                _exit(127);
        }
        children[n_children++] = pid;
        (void) close(p[1]);

        /* Read until "ok" or EOF (mount failed), 10 s at most. */
        char buf[1024];
        size_t n = 0;
        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        for (;;) {
                buf[n] = 0;
                if (strstr(buf, "ok\n"))
                        break;
                uint64_t t = now_usec();
                struct pollfd pfd = {.fd = p[0], .events = POLLIN};
                int r = t < deadline ? poll(&pfd, 1, (int) ((deadline - t) / USEC_PER_MSEC) + 1)
                                     : 0;
                ssize_t k = r > 0 ? read(p[0], buf + n, sizeof(buf) - 1 - n) : -1;
                if (k <= 0) {
                        (void) close(p[0]);
                        fail_msg("unshare -m ... mount %s %s did not say ok (%s): %s", node, dir,
                                 r == 0 ? "timeout" : "exited", buf);
                }
                n += (size_t) k;
                if (n >= sizeof(buf) - 1)
                        n = 0;
        }
        (void) close(p[0]);
        return pid;
}

static void kill_child(pid_t pid) {
        for (size_t i = 0; i < n_children; i++)
                if (children[i] == pid) {
                        children[i] = children[--n_children];
                        break;
                }
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, NULL, 0), pid);
}

static void test_mounted_other_namespace(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 64 * MiB), *mnt = env_make_dir(e, "ns-mnt");
        _cleanup_attached_ Attached a = {};
        size_t n = 0;

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);

        pid_t child = spawn_namespace_mount(a.node, mnt);
        /* Not in our namespace. */
        assert_int_equal(mounts_under(mnt, &n), 0);
        assert_int_equal(n, 0);

        /* Nothing the daemon can see explains the use: only the exclusive-open probe tells. */
        uint64_t took = expect_opener(e, a.object, "mount", "(other namespace)", GONE_TIMEOUT);
        print_message("  (other namespace) listed after %.1f ms\n", (double) took / USEC_PER_MSEC);

        detach_pending(e, &a);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);

        /* The namespace dies with its last process, and the mount with it. */
        kill_child(child);
        expect_gone(e, removed, &a, now_usec(), "end of the other mount namespace");
}

/* ------------------------------------------------------------------------------------------ */
/* 3. A loop device stacked on it */

static void test_stacked_loop(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB);
        _cleanup_attached_ Attached a = {}, b = {};
        _cleanup_free_ char *st_b = NULL;

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *openers = catch_properties_changed(e, a.object, "Openers");
        Catcher *removed = catch_interfaces_removed(e);

        size_t mark = catcher_mark(e, openers);
        uint64_t t0 = now_usec();
        ATTACH_OK(e, a.node, O_RDWR, &b, 1, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
        if (b.reused || streq(b.object, a.object))
                fail_msg("loop over %s at offset 1M: got %s (reused=%s), expected a new device",
                         a.node, b.node, b.reused ? "yes" : "no");
        expect_changed(e, openers, mark, a.object, "Openers", t0);
        expect_opener(e, a.object, "loop", b.node, GONE_TIMEOUT);

        detach_pending(e, &a);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);
        /* A pending lower device does not disturb the upper one. */
        expect_state(e, b.object, LOOPMGR_STATE_ATTACHED);

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = call_detach(e, b.object, &error, &st_b, 0);
                assert_bus_ok(r, &error, "Detach of the upper device");
        }
        uint64_t t = now_usec();
        print_message("  Detach of the upper device %s: %s\n", b.node, st_b);
        if (!streq(st_b, LOOPMGR_STATE_DETACHED) && !streq(st_b, LOOPMGR_STATE_PENDING))
                fail_msg("Detach of the idle upper device %s returned '%s'", b.node, st_b);
        int ib = expect_gone(e, removed, &b, t, "upper device detached");
        int ia = expect_gone(e, removed, &a, t, "its last opener (the upper device) gone");
        if (ib > ia)
                fail_msg("InterfacesRemoved came for the lower device %s before the upper one %s",
                         a.node, b.node);
}

/* ------------------------------------------------------------------------------------------ */
/* 4. A process holding the node open */

static void test_held_open(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB);
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);
        int fd = env_hold(e, a.node, O_RDONLY);
        if (fd < 0)
                fail_msg("open %s: %s", a.node, strerror(-fd));

        detach_pending(e, &a);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);
        /* A plain opener is not named (the kernel cannot tell who cheaply; see docs/API.md),
         * and nothing else holds the device. */
        PROPS_OK(e, a.object, &p);
        if (p.n_openers != 0) {
                _cleanup_free_ char *l = openers_string(&p);
                fail_msg("Openers of %s held only by a plain open(): %s, expected none", a.node,
                         l ?: "?");
        }

        env_release(e, fd);
        expect_gone(e, removed, &a, now_usec(), "close of the last fd");
}

/* ------------------------------------------------------------------------------------------ */
/* 5. Detach(wait=true) that times out */

static void test_wait_timeout(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 64 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *st = NULL;

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);
        mount_ok(e, a.node, mnt);

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                uint64_t t = now_usec();
                int r = call_detach(e, a.object, &error, &st, 2, OPT_B(LOOPMGR_OPT_WAIT, true),
                                    OPT_T(LOOPMGR_OPT_TIMEOUT_USEC, 300 * USEC_PER_MSEC));
                uint64_t took = now_usec() - t;
                if (r >= 0)
                        fail_msg("Detach(wait, 300 ms) of mounted %s returned '%s', expected %s",
                                 a.node, st, LOOPMGR_ERROR_TIMEOUT);
                assert_bus_error(r, &error, LOOPMGR_ERROR_TIMEOUT);
                print_message("  Detach(wait, 300 ms): %s after %.1f ms: %s\n", error.name,
                              (double) took / USEC_PER_MSEC, error.message);
                if (took < 290 * USEC_PER_MSEC || took > 2 * USEC_PER_SEC)
                        fail_msg("Detach(wait, timeout 300 ms) failed after %.1f ms",
                                 (double) took / USEC_PER_MSEC);
        }
        /* The teardown is still pending, not cancelled. */
        if (loop_binding_present(a.node + 5, a.diskseq) != 1)
                fail_msg("%s is gone while still mounted", a.node);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);

        uint64_t gone = umount_ok(e, mnt);
        expect_gone(e, removed, &a, gone, "umount after the timed-out wait");
}

/* ------------------------------------------------------------------------------------------ */
/* 6. A mounted partition added with addpart */

static bool partition_node_present(const char *disk, const char *part) {
        _cleanup_free_ char *p = NULL;
        assert_true(asprintf(&p, "/sys/block/%s/%s", disk, part) > 0);
        return access(p, F_OK) == 0;
}

static void test_mounted_partition(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 64 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_free_ char *part = NULL;
        _cleanup_attached_ Attached a = {};
        char disk[32];

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        snprintf(disk, sizeof(disk), "%s", a.node + 5);
        Catcher *removed = catch_interfaces_removed(e);
        int r = env_add_partition(e, disk, a.diskseq, 1, 2048, 100000, &part);
        if (r < 0)
                fail_msg("addpart %s 1 2048 100000: %s", a.node, strerror(-r));
        const char *part_name = strrchr(part, '/') + 1;
        mkfs_ext4(part);
        /* From here on only the mount changes what holds the disk. */
        Catcher *openers = catch_properties_changed(e, a.object, "Openers");

        size_t mark = catcher_mark(e, openers);
        mount_ok(e, part, mnt);
        uint64_t mounted = now_usec();
        expect_changed(e, openers, mark, a.object, "Openers", mounted);
        /* The partition's mount holds the disk: it is listed on the disk. */
        expect_opener(e, a.object, "mount", mnt, GONE_TIMEOUT);

        detach_pending(e, &a);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);

        uint64_t gone = umount_ok(e, mnt);
        expect_gone(e, removed, &a, gone, "umount of the partition");

        /* The kernel keeps BLKPG partitions of a cleared device without PARTSCAN; the daemon
         * removes them so that the next binding of loopN does not inherit a stale one. */
        uint64_t deadline = now_usec() + GONE_TIMEOUT;
        while (partition_node_present(disk, part_name) && now_usec() < deadline)
                sleep_usec(20 * USEC_PER_MSEC);
        if (partition_node_present(disk, part_name)) {
                /* Do not leave it on the host for the next user of loopN. */
                _cleanup_free_ char *loopdir = NULL;
                assert_true(asprintf(&loopdir, "/sys/block/%s/loop", disk) > 0);
                if (access(loopdir, F_OK) < 0)
                        (void) env_delete_partition(e, disk, 1);
                fail_msg("/sys/block/%s/%s is left over after the teardown of %s", disk, part_name,
                         a.node);
        }
        env_forget_partition(e, disk, 1);
}

/* ------------------------------------------------------------------------------------------ */
/* 7. Looking for openers must not disturb them */

/* The daemon learns of mounts in other namespaces with an exclusive-open probe. An O_EXCL open
 * is a claim: while it lasts, mount(2), mkfs and anything else opening the device O_EXCL fail
 * with EBUSY. A user's mount must never fail because the daemon looked. Here the device is
 * mounted and unmounted in a loop while a child keeps asking for its Openers (as a file
 * manager showing the device would), and every mount and unmount changes the mount table
 * (which makes the daemon re-check the openers of every device). */
static void test_probe_does_not_disturb_mounts(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 32 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_attached_ Attached a = {};
        unsigned iterations = 1000, busy = 0, other = 0;
        int first_other = 0;

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);

        assert_true(n_children < ELEMENTSOF(children));
        fflush(NULL);
        pid_t parent = getpid();
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *bus = NULL;
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent || sd_bus_open_system(&bus) < 0)
                        _exit(1);
                /* Bounded: 60 s at most, killed by the test long before. */
                for (uint64_t end = now_usec() + 60 * USEC_PER_SEC; now_usec() < end;) {
                        sd_bus_message *reply = NULL;
                        (void) sd_bus_get_property(bus, LOOPMGR_BUS_NAME, a.object,
                                                   LOOPMGR_DEVICE_INTERFACE, "Openers", NULL,
                                                   &reply, "a(ss)");
                        sd_bus_message_unref(reply);
                }
                _exit(0);
        }
        children[n_children++] = pid;

        uint64_t t0 = now_usec();
        unsigned seed = (unsigned) t0;
        unsigned i;
        for (i = 0; i < iterations && now_usec() - t0 < 8 * USEC_PER_SEC; i++) {
                /* Idle for a random moment: the daemon reacts to the umount (and to the
                 * child's churn) by probing the idle device; the next mount lands anywhere in
                 * that. */
                sleep_usec((uint64_t) (rand_r(&seed) % 2000));
                if (mount(a.node, mnt, "ext4", 0, NULL) < 0) {
                        if (errno == EBUSY)
                                busy++;
                        else if (other++ == 0)
                                first_other = errno;
                        continue;
                }
                if (umount_retry_quiet(mnt) < 0) {
                        (void) umount2(mnt, MNT_DETACH);
                        fail_msg("umount %s: %m", mnt);
                }
        }
        uint64_t took = now_usec() - t0;
        kill_child(pid);

        iterations = i;
        print_message("  %u mounts of %s in %.1f s while a client reads Openers: %u EBUSY, %u "
                      "other failure(s)\n",
                      iterations, a.node, (double) took / USEC_PER_SEC, busy, other);
        if (busy > 0)
                fail_msg("%u of %u mounts of %s failed with EBUSY: something claimed the idle "
                         "device exclusively (an O_EXCL open probe looking for Openers?)",
                         busy, iterations, a.node);
        if (other > 0)
                fail_msg("%u of %u mounts of %s failed, the first with %s", other, iterations,
                         a.node, strerror(first_other));
        detach_gone_or_pending(e, &a);
}

/* ------------------------------------------------------------------------------------------ */
/* 8. Detach while udev's probe (here: the test's LOCK_SH) holds the device */

/* How long the daemon keeps retrying LOCK_EX before it goes on without it (daemon/core/teardown.c).
 */
#define LOCK_BUDGET (100 * USEC_PER_MSEC)
/* A GetDevice during such a Detach must not wait for it. */
#define PROMPT_BOUND (50 * USEC_PER_MSEC)

typedef struct AsyncDetach {
        bool done;
        uint64_t at;
        char *state; /* the reply, or NULL */
        char *error; /* the error name, or NULL */
} AsyncDetach;

static int on_detach_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        AsyncDetach *ad = userdata;
        const char *state;

        ad->done = true;
        ad->at = now_usec();
        if (sd_bus_message_is_method_error(m, NULL))
                ad->error = strdup(sd_bus_message_get_error(m)->name);
        else if (sd_bus_message_read(m, "s", &state) >= 0)
                ad->state = strdup(state);
        return 0;
}

static void detach_async(Env *e, sd_bus *bus, const char *object, AsyncDetach *ad) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

        assert_int_equal(sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME,
                                                        LOOPMGR_MANAGER_PATH,
                                                        LOOPMGR_MANAGER_INTERFACE, "Detach"),
                         0);
        assert_true(sd_bus_message_append(m, "oa{sv}", object, 0) >= 0);
        assert_true(sd_bus_call_async(bus, NULL, m, on_detach_reply, ad, 0) >= 0);
        assert_true(sd_bus_flush(bus) >= 0);
}

/* Processes bus until ad is answered or `until` (now_usec()) passes. */
static void detach_pump(sd_bus *bus, AsyncDetach *ad, uint64_t until) {
        while (!ad->done) {
                uint64_t n = now_usec();
                int r = sd_bus_process(bus, NULL);
                assert_true(r >= 0);
                if (r > 0)
                        continue;
                if (n >= until)
                        break;
                assert_true(sd_bus_wait(bus, until - n) >= 0);
        }
}

/* GetDevice of a device whose Detach waits for the lock: answered at once, still there. */
static void get_device_prompt(Env *e, const Attached *a) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *object = NULL;
        uint64_t t = now_usec();
        int r = call_get_device(e, a->node, &error, &object);
        uint64_t took = now_usec() - t;

        assert_bus_ok(r, &error, "GetDevice");
        assert_string_equal(object, a->object);
        print_message("  GetDevice during the locked Detach: %.1f ms\n",
                      (double) took / USEC_PER_MSEC);
        if (took > PROMPT_BOUND)
                fail_msg("GetDevice took %.1f ms while a Detach waited for the device's lock",
                         (double) took / USEC_PER_MSEC);
}

static void test_detach_while_locked(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB);
        _cleanup_attached_ Attached a = {};
        AsyncDetach ad = {};
        sd_bus *bus = NULL;

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);
        int fd = env_hold(e, a.node, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                fail_msg("open %s: %s", a.node, strerror(-fd));
        if (flock(fd, LOCK_SH) < 0)
                fail_msg("flock(LOCK_SH) %s: %m", a.node);

        assert_int_equal(env_new_bus(e, &bus), 0);
        detach_async(e, bus, a.object, &ad);
        /* Let the daemon take the Detach first. */
        detach_pump(bus, &ad, now_usec() + 10 * USEC_PER_MSEC);
        if (ad.done)
                fail_msg("Detach of %s answered '%s' while the test held LOCK_SH", a.node,
                         ad.state ?: ad.error ?: "?");
        get_device_prompt(e, &a);
        if (loop_binding_present(a.node + 5, a.diskseq) != 1)
                fail_msg("%s went while the test held LOCK_SH", a.node);

        /* Released well inside the daemon's lock budget: the detach goes through then, and
         * nothing holds the device any more, so it is gone at once. */
        uint64_t released = now_usec();
        env_release(e, fd);
        detach_pump(bus, &ad, now_usec() + SIGNAL_TIMEOUT);
        if (!ad.done)
                fail_msg("Detach of %s not answered after the lock was released", a.node);
        print_message("  Detach answered %.1f ms after the lock was released: %s\n",
                      (double) (ad.at - released) / USEC_PER_MSEC, ad.state ?: ad.error);
        if (!streq_ptr(ad.state, LOOPMGR_STATE_DETACHED))
                fail_msg("Detach of %s after the lock was released: '%s', expected '%s'", a.node,
                         ad.state ?: ad.error ?: "?", LOOPMGR_STATE_DETACHED);
        (void) expect_gone(e, removed, &a, released, "release of the lock");
        free(ad.state);
        free(ad.error);
        env_close_bus(e, bus);
}

static void test_detach_lock_timeout(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB);
        _cleanup_attached_ Attached a = {};
        AsyncDetach ad = {};
        sd_bus *bus = NULL;

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);
        int fd = env_hold(e, a.node, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                fail_msg("open %s: %s", a.node, strerror(-fd));
        if (flock(fd, LOCK_SH) < 0)
                fail_msg("flock(LOCK_SH) %s: %m", a.node);

        assert_int_equal(env_new_bus(e, &bus), 0);
        uint64_t sent = now_usec();
        detach_async(e, bus, a.object, &ad);
        detach_pump(bus, &ad, now_usec() + 10 * USEC_PER_MSEC);
        get_device_prompt(e, &a);

        /* Held past the budget: the daemon goes on without the lock, the kernel defers the
         * teardown to our close, and the Detach says so. */
        detach_pump(bus, &ad, sent + SIGNAL_TIMEOUT);
        if (!ad.done)
                fail_msg("Detach of %s not answered while the lock was held", a.node);
        print_message("  Detach answered after %.1f ms with the lock held: %s\n",
                      (double) (ad.at - sent) / USEC_PER_MSEC, ad.state ?: ad.error);
        if (ad.at - sent < LOCK_BUDGET * 9 / 10)
                fail_msg("Detach of locked %s answered after %.1f ms, before the lock budget",
                         a.node, (double) (ad.at - sent) / USEC_PER_MSEC);
        if (!streq_ptr(ad.state, LOOPMGR_STATE_PENDING))
                fail_msg("Detach of %s with the lock held: '%s', expected '%s'", a.node,
                         ad.state ?: ad.error ?: "?", LOOPMGR_STATE_PENDING);
        if (loop_binding_present(a.node + 5, a.diskseq) != 1)
                fail_msg("%s is no longer bound, yet Detach said pending", a.node);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);

        uint64_t released = now_usec();
        env_release(e, fd);
        (void) expect_gone(e, removed, &a, released, "close of the lock holder");
        free(ad.state);
        free(ad.error);
        env_close_bus(e, bus);
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
