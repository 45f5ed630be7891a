/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-teardown's tests 8: Detach while udev's probe (here: the test's LOCK_SH) holds the
 * device. */

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

void test_detach_while_locked(void **state) {
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

void test_detach_lock_timeout(void **state) {
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
