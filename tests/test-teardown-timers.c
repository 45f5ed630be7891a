/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The teardown retry timer (teardown.c): a Detach that finds the device flock()ed (udev's
 * probe) is retried on Device.teardown_retry, every 1 ms for 20 ms, then backing off to 4 ms,
 * for at most 100 ms, then without the lock; its waiters are answered as the kernel's answer
 * decides, and an identical Attach meanwhile cancels it. The kernel is
 * loop_detach_nowait(), scripted (core-fixture.c).
 */

#include <stdio.h>
#include <stdlib.h>

#include "core-fixture.h"
#include "loopmgr-bus.h"
#include "registry.h"

#define NR      3
#define DISKSEQ 30
#define UID     1000

/* loop3 attached for UID through manager_attach(), one persistent reference. */
static Device *attach_managed(Fixture *f) {
        Problem error = PROBLEM_NULL;
        Call call = {.id = 100, .refs = 1};
        Device *d;

        assert_int_equal(fx_attach(f, &call, "a.img", NR, DISKSEQ, NULL, UID, ":1.1", &error), 1);
        assert_false(problem_is_set(&error));
        assert_non_null(fx_find(f, SENT_ATTACH, &call, 0));
        assert_int_equal(call.refs, 1);
        d = manager_get_device_by_diskseq(f->manager, DISKSEQ);
        assert_non_null(d);
        assert_true(d->managed);
        assert_int_equal(d->n_references, 1);
        fx_forget_sent(f);
        return d;
}

static int detach(Fixture *f, Call *call, bool wait) {
        Problem error = PROBLEM_NULL;
        DetachOptions o;
        int r;

        detach_options_init(&o);
        o.wait = wait;
        r = manager_detach(f->manager, call, manager_get_device_by_diskseq(f->manager, DISKSEQ), &o,
                           UID, &error);
        assert_false(problem_is_set(&error));
        return r;
}

static bool gone(Fixture *f, void *userdata) {
        return !manager_get_device_by_diskseq(f->manager, DISKSEQ);
}

static bool answered(Fixture *f, void *userdata) {
        const Call *call = userdata;

        return fx_find(f, SENT_DETACH, call, 0) || fx_find(f, SENT_ERROR, call, 0);
}

static unsigned waiters_of(Device *d, WaiterKind kind) {
        unsigned n = 0;

        for (Waiter *w = d->waiters; w; w = w->next)
                n += w->kind == kind;
        return n;
}

/* Locked twice, then gone: the Detach is queued and answered "detached" by the retry. */
static void test_retry_until_gone(void **state) {
        Fixture *f = *state;
        Call call = {.id = 1, .refs = 1};
        const Sent *s;
        Device *d;

        d = attach_managed(f);
        fx_script_detach(f, 3, (int[]){-EWOULDBLOCK, -EWOULDBLOCK, 1});
        assert_int_equal(detach(f, &call, false), 1);

        /* Not answered yet: queued on the device, the retry armed. */
        assert_null(fx_find(f, SENT_DETACH, &call, 0));
        assert_non_null(d->teardown_retry);
        assert_int_equal(waiters_of(d, WAITER_DETACH), 1);
        assert_int_equal(call.refs, 2);
        assert_int_equal(d->n_references, 0);
        assert_int_equal(d->state, DEVICE_ATTACHED);
        assert_int_equal(f->n_detaches, 1);

        assert_true(fx_run(f, gone, NULL, 2000000));
        assert_int_equal(f->n_detaches, 3);
        for (size_t i = 0; i < 3; i++) {
                assert_string_equal(f->detaches[i].name, "loop3");
                assert_int_equal(f->detaches[i].diskseq, DISKSEQ);
                assert_true(f->detaches[i].need_lock);
        }
        /* The first retry waits its millisecond. */
        assert_true(f->detaches[1].usec - f->detaches[0].usec >= 1000);
        assert_true(f->detaches[2].usec - f->detaches[1].usec >= 1000);

        fx_assert_detach_reply(f, &call, LOOPMGR_STATE_DETACHED);
        assert_int_equal(fx_count(f, SENT_DETACH), 1);
        assert_int_equal(fx_count(f, SENT_ERROR), 0);
        s = fx_find(f, SENT_REMOVED, NULL, 0);
        assert_non_null(s);
        assert_int_equal(s->diskseq, DISKSEQ);
        assert_int_equal(call.refs, 1);
        assert_int_equal(f->manager->n_devices, 0);
}

/* Locked all along: retried by the schedule of teardown.c, then without the lock. */
static void test_backoff_and_budget(void **state) {
        Fixture *f = *state;
        Call call = {.id = 2, .refs = 1};
        uint64_t t0, deadline, delay = 1000, next = 0;
        unsigned fast = 0, at_2ms = 0, at_4ms = 0;
        size_t done = 1;
        Device *d;

        d = attach_managed(f);
        /* One iteration first, so that sd_event_now() is the same for the core and the
         * fixture until the next one. */
        assert_true(sd_event_run(f->event, 0) >= 0);
        f->lock_held = true;
        f->detach_result = 0; /* then the kernel defers the clear to the last close */
        assert_int_equal(detach(f, &call, false), 1);

        t0 = f->detaches[0].usec;
        deadline = t0 + 100000;
        assert_true(f->detaches[0].need_lock);
        assert_true(d->teardown_deadline == deadline);
        assert_int_equal(sd_event_source_get_time(d->teardown_retry, &next), 0);
        assert_true(next == t0 + 1000);

        while (d->teardown_retry) {
                const KernelCall *c;
                uint64_t elapsed, expected;

                assert_true(sd_event_run(f->event, 2000000) > 0);
                assert_int_equal(f->n_detaches, done + 1);
                c = &f->detaches[done++];
                /* Never before its time. */
                assert_true(c->usec >= next);
                if (c->usec >= deadline) {
                        /* The budget is spent: the last try goes on without the lock. */
                        assert_false(c->need_lock);
                        assert_null(d->teardown_retry);
                        break;
                }
                assert_true(c->need_lock);
                elapsed = c->usec - t0;
                if (elapsed >= 20000)
                        delay = delay * 2 < 4000 ? delay * 2 : 4000;
                expected = c->usec + delay < deadline ? c->usec + delay : deadline;
                assert_non_null(d->teardown_retry);
                assert_int_equal(sd_event_source_get_time(d->teardown_retry, &next), 0);
                assert_true(next == expected);
                fast += elapsed < 20000 && next - c->usec == 1000;
                at_2ms += next - c->usec == 2000;
                at_4ms += next - c->usec == 4000;
        }
        assert_true(f->detaches[done - 1].usec >= deadline);
        assert_false(f->detaches[done - 1].need_lock);
        assert_true(fast >= 1);
        assert_int_equal(at_2ms, 1);
        assert_true(at_4ms >= 1);

        /* The kernel deferred it: pending, and the call that did not wait says so. */
        assert_int_equal(d->state, DEVICE_DETACH_PENDING);
        fx_assert_detach_reply(f, &call, LOOPMGR_STATE_PENDING);
        assert_non_null(fx_find_changed(f, DISKSEQ, "State", 0));
        assert_int_equal(call.refs, 1);
        assert_int_equal(waiters_of(d, WAITER_DETACH), 0);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, DISKSEQ), d);
}

/* Pending after the retry: a call that did not wait hears "pending", one that waits stays
 * queued until the binding is gone. */
static void test_retry_pending_then_gone(void **state) {
        Fixture *f = *state;
        Call nowait = {.id = 3, .refs = 1}, wait = {.id = 4, .refs = 1};
        Device *d;

        d = attach_managed(f);
        f->lock_held = true;
        assert_int_equal(detach(f, &nowait, false), 1);
        /* A second Detach while the retry runs joins it. */
        assert_int_equal(detach(f, &wait, true), 1);
        assert_int_equal(waiters_of(d, WAITER_DETACH), 2);
        assert_int_equal(f->n_detaches, 1); /* no second request while one is under way */

        f->lock_held = false;
        f->detach_result = 0;
        assert_true(fx_run(f, answered, &nowait, 2000000));
        fx_assert_detach_reply(f, &nowait, LOOPMGR_STATE_PENDING);
        assert_null(fx_find(f, SENT_DETACH, &wait, 0));
        assert_int_equal(waiters_of(d, WAITER_DETACH), 1);
        assert_int_equal(d->state, DEVICE_DETACH_PENDING);
        assert_null(d->teardown_retry);
        assert_int_equal(nowait.refs, 1);
        assert_int_equal(wait.refs, 2);

        /* The last opener closed: the kernel unbinds and says so. */
        fx_fake_loop(f, NR, DISKSEQ, NULL);
        manager_udev_event(f->manager, &(UdevWatchEvent){.action = "change",
                                                         .sysname = "loop3",
                                                         .diskseq = DISKSEQ,
                                                         .from_udev = false,
                                                         .plain = false});
        fx_assert_detach_reply(f, &wait, LOOPMGR_STATE_DETACHED);
        assert_int_equal(wait.refs, 1);
        assert_null(manager_get_device_by_number(f->manager, NR));
}

/* The kernel fails the request: every queued Detach hears why, the device stays. */
static void test_retry_error(void **state) {
        Fixture *f = *state;
        Call call = {.id = 5, .refs = 1};
        Device *d;

        d = attach_managed(f);
        fx_script_detach(f, 2, (int[]){-EWOULDBLOCK, -EIO});
        assert_int_equal(detach(f, &call, true), 1);
        assert_true(fx_run(f, answered, &call, 2000000));

        fx_assert_error(f, &call, -EIO, "Failed to detach /dev/loop3: Input/output error.");
        assert_null(fx_find(f, SENT_DETACH, &call, 0));
        assert_int_equal(call.refs, 1);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, DISKSEQ), d);
        assert_int_equal(d->state, DEVICE_ATTACHED);
        assert_null(d->teardown_retry);
        assert_null(d->waiters);
}

/* -ESTALE: sysfs decides. Still bound with that diskseq: an error. Gone from sysfs: gone,
 * "detached". (Not "unbound but still listed" for a managed device: device_teardown_finish()
 * hands manager_reconcile() d->status.name, which it reads again for
 * loop_remove_stale_partitions() after removing d: a use after free.) */
static void test_retry_stale(void **state) {
        Fixture *f = *state;
        Call first = {.id = 6, .refs = 1}, second = {.id = 7, .refs = 1};
        Device *d;

        d = attach_managed(f);
        fx_script_detach(f, 2, (int[]){-EWOULDBLOCK, -ESTALE});
        assert_int_equal(detach(f, &first, true), 1);
        assert_true(fx_run(f, answered, &first, 2000000));
        fx_assert_error(f, &first, -EIO, NULL);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, DISKSEQ), d);

        fx_script_detach(f, 2, (int[]){-EWOULDBLOCK, -ESTALE});
        fx_remove_loop(f, NR);
        assert_int_equal(detach(f, &second, true), 1);
        assert_true(fx_run(f, answered, &second, 2000000));
        fx_assert_detach_reply(f, &second, LOOPMGR_STATE_DETACHED);
        assert_null(manager_get_device_by_diskseq(f->manager, DISKSEQ));
        assert_int_equal(first.refs, 1);
        assert_int_equal(second.refs, 1);
}

/* An identical Attach while the retry waits takes the device again: no teardown, the Detach
 * hears "attached". */
static void test_identical_attach_cancels(void **state) {
        Fixture *f = *state;
        Call call = {.id = 8, .refs = 1}, again = {.id = 9, .refs = 1};
        Problem error = PROBLEM_NULL;
        const Sent *s;
        Device *d;

        d = attach_managed(f);
        f->lock_held = true;
        assert_int_equal(detach(f, &call, true), 1);
        assert_non_null(d->teardown_retry);

        assert_int_equal(fx_attach(f, &again, "a.img", NR, DISKSEQ, NULL, 2000, ":1.2", &error), 1);
        assert_false(problem_is_set(&error));
        assert_int_equal(f->n_attaches, 1); /* reused: the kernel was not asked to bind */
        s = fx_find(f, SENT_ATTACH, &again, 0);
        assert_non_null(s);
        assert_true(s->reused);
        assert_int_equal(s->diskseq, DISKSEQ);
        assert_int_equal(d->n_references, 1);

        assert_true(fx_run(f, answered, &call, 2000000));
        fx_assert_detach_reply(f, &call, LOOPMGR_STATE_ATTACHED);
        /* Only the first request reached the kernel. */
        assert_int_equal(f->n_detaches, 1);
        assert_null(d->teardown_retry);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, DISKSEQ), d);
        assert_int_equal(d->state, DEVICE_ATTACHED);
        assert_true(device_has_reference_of(d, 2000));
        assert_int_equal(call.refs, 1);
}

/* udev is done with an event of the device: its probe let go, the retry runs at once. */
static void test_udev_event_retries_now(void **state) {
        Fixture *f = *state;
        Call call = {.id = 10, .refs = 1};
        uint64_t next = 0;
        Device *d;

        d = attach_managed(f);
        f->lock_held = true;
        assert_int_equal(detach(f, &call, false), 1);
        assert_int_equal(sd_event_source_get_time(d->teardown_retry, &next), 0);
        assert_true(next > 1);

        f->lock_held = false;
        manager_udev_event(f->manager, &(UdevWatchEvent){.action = "change",
                                                         .sysname = "loop3",
                                                         .diskseq = DISKSEQ,
                                                         .from_udev = true,
                                                         .plain = true});
        assert_int_equal(sd_event_source_get_time(d->teardown_retry, &next), 0);
        assert_true(next == 1);
        /* Due already: one iteration without waiting runs it. */
        assert_true(sd_event_run(f->event, 0) > 0);
        assert_int_equal(f->n_detaches, 2);
        assert_null(manager_get_device_by_diskseq(f->manager, DISKSEQ));
        fx_assert_detach_reply(f, &call, LOOPMGR_STATE_DETACHED);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_retry_until_gone, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_backoff_and_budget, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_retry_pending_then_gone, fx_setup,
                                                fx_teardown),
                cmocka_unit_test_setup_teardown(test_retry_error, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_retry_stale, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_identical_attach_cancels, fx_setup,
                                                fx_teardown),
                cmocka_unit_test_setup_teardown(test_udev_event_retries_now, fx_setup, fx_teardown),
        };

        return cmocka_run_group_tests_name("teardown-timers", tests, NULL, NULL);
}
