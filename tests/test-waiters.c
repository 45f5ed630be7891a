/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Waiters (waiter.c) and their timeouts (manager_waiter_timeout(), teardown.c): an Attach that
 * waits for udev and a Detach that waits for the teardown, answered by the event they wait for
 * or, when their timer fires first, with -ETIMEDOUT and what was undone. Timers run on a real
 * sd-event loop; the kernel is scripted (core-fixture.c).
 */

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core-fixture.h"
#include "loopmgr-bus.h"
#include "registry.h"

#define NR      3
#define DISKSEQ 30

static uint64_t monotonic_usec(void) {
        struct timespec ts;

        assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static int attach(Fixture *f, Call *call, bool wait_udev, uint64_t timeout_usec, uid_t uid) {
        Problem error = PROBLEM_NULL;
        AttachOptions o;
        int r;

        attach_options_init(&o);
        o.wait_udev = wait_udev;
        o.timeout_usec = timeout_usec;
        r = fx_attach(f, call, "a.img", NR, DISKSEQ, &o, uid, ":1.1", &error);
        assert_false(problem_is_set(&error));
        return r;
}

/* loop3 attached for uid 1000 without waiting for udev: the device a Detach then waits on. */
static Device *attached(Fixture *f, Call *call) {
        assert_int_equal(attach(f, call, false, 20000, 1000), 1);
        assert_non_null(fx_find(f, SENT_ATTACH, call, 0));
        return manager_get_device_by_diskseq(f->manager, DISKSEQ);
}

static int detach(Fixture *f, Call *call, bool wait, uint64_t timeout_usec) {
        Problem error = PROBLEM_NULL;
        DetachOptions o;
        int r;

        detach_options_init(&o);
        o.wait = wait;
        o.timeout_usec = timeout_usec;
        r = manager_detach(f->manager, call, manager_get_device_by_diskseq(f->manager, DISKSEQ), &o,
                           1000, &error);
        assert_false(problem_is_set(&error));
        return r;
}

static bool answered(Fixture *f, void *userdata) {
        const Call *call = userdata;

        return fx_find(f, SENT_ATTACH, call, 0) || fx_find(f, SENT_DETACH, call, 0) ||
               fx_find(f, SENT_ERROR, call, 0);
}

static size_t answers_to(Fixture *f, const Call *call) {
        size_t n = 0;

        for (size_t i = 0; i < f->n_sent; i++)
                n += f->sent[i].call == call;
        return n;
}

/* Attach, udev never done, the last reference: the reference goes, and the device with it. */
static void test_attach_timeout_detaches(void **state) {
        Fixture *f = *state;
        Call call = {.id = 1, .refs = 1};
        uint64_t start;
        Device *d;

        start = monotonic_usec();
        assert_int_equal(attach(f, &call, true, 20000, 1000), 1);
        d = manager_get_device_by_diskseq(f->manager, DISKSEQ);
        assert_non_null(d);
        assert_non_null(d->waiters);
        assert_int_equal(d->waiters->kind, WAITER_ATTACH);
        assert_int_equal(d->n_references, 1);
        assert_false(d->references->confirmed);
        assert_int_equal(call.refs, 2);
        assert_null(fx_find(f, SENT_ATTACH, &call, 0));

        assert_true(fx_run(f, answered, &call, 2000000));
        assert_true(monotonic_usec() - start >= 20000);
        fx_assert_error(f, &call, -ETIMEDOUT,
                        "udev did not finish processing /dev/loop3 in time; the "
                        "device was detached again.");
        assert_int_equal(answers_to(f, &call), 1);
        assert_int_equal(call.refs, 1);

        /* Torn down: the kernel was asked, the object is gone. */
        assert_int_equal(f->n_detaches, 1);
        assert_string_equal(f->detaches[0].name, "loop3");
        assert_int_equal(f->detaches[0].diskseq, DISKSEQ);
        assert_non_null(fx_find(f, SENT_REMOVED, NULL, 0));
        assert_null(manager_get_device_by_number(f->manager, NR));
}

/* Attach reusing a device somebody else holds: only this call's reference goes. */
static void test_attach_timeout_keeps_shared(void **state) {
        Fixture *f = *state;
        Call first = {.id = 2, .refs = 1}, second = {.id = 3, .refs = 1};
        Device *d;
        size_t mark;

        assert_int_equal(attach(f, &first, false, 20000, 1000), 1);
        assert_non_null(fx_find(f, SENT_ATTACH, &first, 0));
        d = manager_get_device_by_diskseq(f->manager, DISKSEQ);
        assert_int_equal(attach(f, &second, true, 20000, 2000), 1);
        assert_int_equal(d->n_references, 2);
        assert_true(device_has_reference_of(d, 2000));
        mark = f->n_sent;

        assert_true(fx_run(f, answered, &second, 2000000));
        fx_assert_error(f, &second, -ETIMEDOUT,
                        "udev did not finish processing /dev/loop3 in time; the "
                        "reference this call took was dropped.");
        assert_int_equal(second.refs, 1);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, DISKSEQ), d);
        assert_int_equal(d->n_references, 1);
        assert_false(device_has_reference_of(d, 2000));
        assert_true(device_has_reference_of(d, 1000));
        assert_non_null(fx_find_changed(f, DISKSEQ, "References", mark));
        assert_int_equal(f->n_detaches, 0);
        assert_null(d->waiters);
}

/* The contrast: udev done before the timer, the Attach is answered and the timer gone. */
static void test_attach_answered_by_udev(void **state) {
        Fixture *f = *state;
        Call call = {.id = 4, .refs = 1};
        const Sent *s;
        Device *d;

        assert_int_equal(attach(f, &call, true, 30000, 1000), 1);
        d = manager_get_device_by_diskseq(f->manager, DISKSEQ);
        fx_udev_link(f, NR, DISKSEQ);
        manager_udev_event(f->manager, &(UdevWatchEvent){.action = "change",
                                                         .sysname = "loop3",
                                                         .diskseq = DISKSEQ,
                                                         .from_udev = true,
                                                         .plain = true});

        s = fx_find(f, SENT_ATTACH, &call, 0);
        assert_non_null(s);
        assert_false(s->reused);
        assert_int_equal(s->diskseq, DISKSEQ);
        assert_non_null(fx_find(f, SENT_FLUSH, NULL, 0));
        assert_true(d->udev_ready);
        assert_true(d->references->confirmed);
        assert_null(d->waiters);
        assert_int_equal(call.refs, 1);

        /* Past the timeout nothing more is said. */
        assert_false(fx_run(f, NULL, NULL, 60000));
        assert_int_equal(answers_to(f, &call), 1);
        assert_int_equal(d->n_references, 1);
}

/* Detach(wait) of a device still open: the timeout says so, the teardown stays pending. */
static void test_detach_timeout_open(void **state) {
        Fixture *f = *state;
        Call att = {.id = 5, .refs = 1}, call = {.id = 6, .refs = 1};
        Device *d;

        d = attached(f, &att);
        f->detach_result = 0;
        assert_int_equal(detach(f, &call, true, 20000), 1);
        assert_int_equal(d->state, DEVICE_DETACH_PENDING);
        assert_null(d->teardown_retry);
        assert_int_equal(call.refs, 2);

        assert_true(fx_run(f, answered, &call, 2000000));
        fx_assert_error(f, &call, -ETIMEDOUT,
                        "/dev/loop3 is still open; its teardown stays pending and "
                        "completes when the last user closes it.");
        assert_int_equal(call.refs, 1);
        assert_null(d->waiters);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, DISKSEQ), d);
        assert_int_equal(d->state, DEVICE_DETACH_PENDING);
        assert_int_equal(f->n_detaches, 1);
}

/* Detach while udev's probe holds the lock, timing out before the lock budget: the sentence
 * says so, and the teardown is still made afterwards (without a second answer). */
static void test_detach_timeout_locked(void **state) {
        Fixture *f = *state;
        Call att = {.id = 7, .refs = 1}, call = {.id = 8, .refs = 1};
        Device *d;

        d = attached(f, &att);
        f->lock_held = true;
        assert_int_equal(detach(f, &call, false, 10000), 1);
        assert_non_null(d->teardown_retry);

        assert_true(fx_run(f, answered, &call, 2000000));
        fx_assert_error(f, &call, -ETIMEDOUT,
                        "/dev/loop3 is still locked (udev probing it); its teardown "
                        "is requested as soon as it is released.");
        assert_int_equal(call.refs, 1);
        assert_non_null(manager_get_device_by_diskseq(f->manager, DISKSEQ));
        assert_non_null(d->teardown_retry);

        /* The budget runs out, the kernel clears it without the lock. */
        while (manager_get_device_by_diskseq(f->manager, DISKSEQ))
                assert_true(sd_event_run(f->event, 2000000) > 0);
        assert_false(f->detaches[f->n_detaches - 1].need_lock);
        assert_int_equal(answers_to(f, &call), 1);
        assert_non_null(fx_find(f, SENT_REMOVED, NULL, 0));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_attach_timeout_detaches, fx_setup,
                                                fx_teardown),
                cmocka_unit_test_setup_teardown(test_attach_timeout_keeps_shared, fx_setup,
                                                fx_teardown),
                cmocka_unit_test_setup_teardown(test_attach_answered_by_udev, fx_setup,
                                                fx_teardown),
                cmocka_unit_test_setup_teardown(test_detach_timeout_open, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_detach_timeout_locked, fx_setup, fx_teardown),
        };

        return cmocka_run_group_tests_name("waiters", tests, NULL, NULL);
}
