/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Resume (persist.c): the start-up of manager_start() without its watchers. A restored
 * ownership record (state.h) is matched with the fake sysfs by rescanning, then
 * manager_resume() drops references whose holder went away or was never answered, tears down
 * what nobody holds any more, finishes pending teardowns and a binding a previous run made but
 * never recorded, and writes the record as it now stands.
 */

#include <stdio.h>
#include <stdlib.h>
#include <sys/sysmacros.h>

#include "core-fixture.h"
#include "registry.h"

static const FakeLoop image = {.backing = "/var/tmp/x.img", .size = 1 << 20};

static StateDevice *restored(Fixture *f, const char *name, uint64_t diskseq, bool pending) {
        StateDevice *sd = NULL;

        assert_int_equal(state_add_device(&f->manager->restored, name, diskseq, pending, 1000, &sd),
                         0);
        return sd;
}

/* What manager_start() does between reading the record and resuming. */
static void start(Fixture *f) {
        f->manager->has_restored_intent = f->manager->restored.has_intent;
        f->manager->restored_intent = f->manager->restored.intent;
        manager_rescan(f->manager);
        state_done(&f->manager->restored);
        manager_resume(f->manager);
}

static bool detached(Fixture *f, const char *name, uint64_t diskseq) {
        for (size_t i = 0; i < f->n_detaches; i++)
                if (strcmp(f->detaches[i].name, name) == 0 && f->detaches[i].diskseq == diskseq)
                        return true;
        return false;
}

static const StateDevice *saved(const State *s, const char *name) {
        for (size_t i = 0; i < s->n_devices; i++)
                if (strcmp(s->devices[i].name, name) == 0)
                        return &s->devices[i];
        return NULL;
}

static void test_vanished_client(void **state) {
        Fixture *f = *state;
        State s = {};
        const StateDevice *sd;
        Device *d;

        /* loop2: held only by a client that is gone: torn down. */
        fx_fake_loop(f, 2, 20, &image);
        assert_int_equal(state_device_add_ref(restored(f, "loop2", 20, false), 1000,
                                              LIFETIME_CLIENT, ":1.5", true),
                         0);
        /* loop3: the same client and a persistent reference: only the client's goes. */
        fx_fake_loop(f, 3, 30, &image);
        {
                StateDevice *r3 = restored(f, "loop3", 30, false);

                assert_int_equal(state_device_add_ref(r3, 1000, LIFETIME_PERSISTENT, NULL, true),
                                 0);
                assert_int_equal(state_device_add_ref(r3, 1000, LIFETIME_CLIENT, ":1.5", true), 0);
                assert_int_equal(state_device_add_ref(r3, 2000, LIFETIME_CLIENT, ":1.6", true), 0);
        }
        fx_client_gone(f, ":1.5");

        start(f);

        assert_true(detached(f, "loop2", 20));
        assert_null(manager_get_device_by_number(f->manager, 2));
        assert_false(detached(f, "loop3", 30));
        d = manager_get_device_by_diskseq(f->manager, 30);
        assert_non_null(d);
        assert_true(d->managed);
        assert_int_equal(d->n_references, 2);
        for (Reference *ref = d->references; ref; ref = ref->next)
                assert_true(ref->owner == NULL || strcmp(ref->owner, ":1.6") == 0);
        assert_int_equal(d->state, DEVICE_ATTACHED);

        /* The record now says so. */
        assert_int_equal(state_load(f->root, &s), 0);
        assert_null(saved(&s, "loop2"));
        sd = saved(&s, "loop3");
        assert_non_null(sd);
        assert_int_equal(sd->diskseq, 30);
        assert_int_equal(sd->n_refs, 2);
        assert_int_equal(sd->refs[0].lifetime, LIFETIME_PERSISTENT);
        assert_string_equal(sd->refs[1].owner, ":1.6");
        state_done(&s);
}

static void test_unconfirmed_dropped(void **state) {
        Fixture *f = *state;
        State s = {};
        Device *d;

        /* loop2: one unconfirmed reference only (the previous run died waiting for udev). */
        fx_fake_loop(f, 2, 20, &image);
        assert_int_equal(state_device_add_ref(restored(f, "loop2", 20, false), 1000,
                                              LIFETIME_PERSISTENT, NULL, false),
                         0);
        /* loop4: a confirmed one and an unconfirmed one of another caller. */
        fx_fake_loop(f, 4, 40, &image);
        {
                StateDevice *r4 = restored(f, "loop4", 40, false);

                assert_int_equal(state_device_add_ref(r4, 1000, LIFETIME_PERSISTENT, NULL, true),
                                 0);
                assert_int_equal(state_device_add_ref(r4, 3000, LIFETIME_CLIENT, ":1.9", false), 0);
        }

        start(f);

        assert_true(detached(f, "loop2", 20));
        assert_null(manager_get_device_by_number(f->manager, 2));
        d = manager_get_device_by_diskseq(f->manager, 40);
        assert_non_null(d);
        assert_int_equal(d->n_references, 1);
        assert_true(d->references->confirmed);
        assert_int_equal(d->references->uid, 1000);
        assert_false(device_has_reference_of(d, 3000));
        assert_false(detached(f, "loop4", 40));

        assert_int_equal(state_load(f->root, &s), 0);
        assert_int_equal(s.n_devices, 1);
        assert_string_equal(s.devices[0].name, "loop4");
        assert_int_equal(s.devices[0].n_refs, 1);
        state_done(&s);
}

static void test_pending_and_stale(void **state) {
        Fixture *f = *state;
        Device *d;

        /* loop2: pending when the previous run stopped, still referenced: the teardown is
         * requested again (and stays pending: still open). */
        fx_fake_loop(f, 2, 20, &image);
        assert_int_equal(state_device_add_ref(restored(f, "loop2", 20, true), 1000,
                                              LIFETIME_PERSISTENT, NULL, true),
                         0);
        /* loop5: the record names diskseq 50, the kernel has another binding there now: not
         * ours, adopted as foreign and left alone. */
        fx_fake_loop(f, 5, 55, &image);
        assert_int_equal(state_device_add_ref(restored(f, "loop5", 50, false), 1000,
                                              LIFETIME_PERSISTENT, NULL, true),
                         0);
        f->detach_result = 0;

        start(f);

        assert_true(detached(f, "loop2", 20));
        d = manager_get_device_by_diskseq(f->manager, 20);
        assert_non_null(d);
        assert_int_equal(d->state, DEVICE_DETACH_PENDING);

        d = manager_get_device_by_diskseq(f->manager, 55);
        assert_non_null(d);
        assert_false(d->managed);
        assert_int_equal(d->n_references, 0);
        assert_false(detached(f, "loop5", 55));
        assert_int_equal(f->n_detaches, 1);
}

static void test_intent_torn_down(void **state) {
        Fixture *f = *state;
        State s = {};

        /* The previous run recorded an attach of (254:1, inode 77) and died before recording
         * the device: the unmanaged binding of exactly that is its, and goes. */
        f->manager->restored.has_intent = true;
        f->manager->restored.intent =
                (StateIntent){.device = makedev(254, 1), .inode = 77, .uid = 1000};
        fx_fake_loop(f, 6, 60, &image);
        fx_set_ids(f, "loop6", makedev(254, 1), 77, 0);
        /* Looked at before it (the walk goes by loop number, and stops matching once the
         * intent's binding is found): another file, the same file at another offset, and a
         * managed device over the same file, which is recorded and so not the intent's. */
        fx_fake_loop(f, 2, 20, &image);
        fx_set_ids(f, "loop2", makedev(254, 1), 78, 0);
        fx_fake_loop(f, 3, 30,
                     &(FakeLoop){.backing = "/var/tmp/x.img", .offset = 4096, .size = 4096});
        fx_set_ids(f, "loop3", makedev(254, 1), 77, 0);
        fx_fake_loop(f, 1, 10, &image);
        fx_set_ids(f, "loop1", makedev(254, 1), 77, 0);
        assert_int_equal(state_device_add_ref(restored(f, "loop1", 10, false), 1000,
                                              LIFETIME_PERSISTENT, NULL, true),
                         0);

        start(f);

        assert_true(detached(f, "loop6", 60));
        assert_null(manager_get_device_by_number(f->manager, 6));
        assert_int_equal(f->n_detaches, 1);
        assert_non_null(manager_get_device_by_diskseq(f->manager, 10));
        assert_non_null(manager_get_device_by_diskseq(f->manager, 20));
        assert_non_null(manager_get_device_by_diskseq(f->manager, 30));
        assert_false(f->manager->has_restored_intent);

        /* The record keeps loop1 and no intent. */
        assert_int_equal(state_load(f->root, &s), 0);
        assert_false(s.has_intent);
        assert_int_equal(s.n_devices, 1);
        assert_string_equal(s.devices[0].name, "loop1");
        state_done(&s);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_vanished_client, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_unconfirmed_dropped, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_pending_and_stale, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_intent_torn_down, fx_setup, fx_teardown),
        };

        return cmocka_run_group_tests_name("resume", tests, NULL, NULL);
}
