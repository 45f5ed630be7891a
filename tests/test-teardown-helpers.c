/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-teardown's helpers: attach, mounts, openers, signals, states, pending detaches. */

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

/* ------------------------------------------------------------------------------------------ */
/* Helpers */

char *make_image(Env *e, uint64_t size) {
        char *path = NULL;
        int r = env_make_image(e, e->tmpdir, size, &path);
        if (r < 0)
                fail_msg("creating an image: %s", strerror(-r));
        return path;
}

void mkfs_ext4(const char *target) {
        /* nodiscard: discarding a loop device punches holes, slow and pointless here. */
        env_run_ok("mkfs.ext4", "-q", "-F", "-E", "nodiscard", target);
}

void mount_ok(Env *e, const char *source, const char *target) {
        int r = env_mount(e, source, target, "ext4", 0, NULL);
        if (r < 0)
                fail_msg("mount %s on %s: %s", source, target, strerror(-r));
}

uint64_t umount_ok(Env *e, const char *target) {
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

char *openers_string(const DeviceProps *p) {
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

uint64_t expect_opener_impl(Env *e, const char *object, const char *kind, const char *description,
                            uint64_t timeout, const char *file, int line) {
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

int catcher_wait_more(Env *e, Catcher *c, size_t n, uint64_t timeout_usec) {
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

size_t catcher_mark(Env *e, Catcher *c) {
        /* A round trip to the daemon: signals it sent before answering are queued before the
         * reply. */
        _cleanup_free_ char *version = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        assert_bus_ok(get_version(e, &error, &version), &error, "Version");
        bus_drain(e);
        return c->count;
}

void expect_changed_impl(Env *e, Catcher *c, size_t mark, const char *object, const char *property,
                         uint64_t since, const char *file, int line) {
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

void expect_state_impl(Env *e, const char *object, const char *expected, const char *file,
                       int line) {
        _cleanup_props_ DeviceProps p = {};
        PROPS_OK(e, object, &p);
        if (!streq_ptr(p.state, expected)) {
                print_error("%s:%d: State of %s is '%s', expected '%s'\n", file, line, object,
                            p.state ?: "(none)", expected);
                _fail(file, line);
        }
}

void detach_pending_impl(Env *e, const Attached *a, const char *file, int line) {
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

int expect_gone_impl(Env *e, Catcher *removed, const Attached *a, uint64_t since, const char *what,
                     const char *file, int line) {
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

int umount_retry_quiet(const char *target) {
        for (unsigned i = 0;; i++) {
                if (umount2(target, 0) == 0)
                        return 0;
                if (errno != EBUSY || i >= 50)
                        return -errno;
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

void detach_gone_or_pending(Env *e, const Attached *a) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *state = NULL;
        int r = call_detach(e, a->object, &error, &state, 0);
        assert_bus_ok(r, &error, "Detach");
        if (!wait_binding_gone(a->node + 5, a->diskseq, SIGNAL_TIMEOUT))
                fail_msg("%s is still bound %" PRIu64 " ms after Detach said %s", a->node,
                         (uint64_t) (SIGNAL_TIMEOUT / USEC_PER_MSEC), state);
}
