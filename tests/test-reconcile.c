/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Reconciliation (reconcile.c) on the fake sysfs tree, driven by the events the udev watch
 * reports (manager_udev_event()): a binding appears, its status changes, the same loopN is
 * rebound (a new diskseq), it goes; and what the core announces and answers on the way.
 */

#include <stdio.h>
#include <stdlib.h>
#include <sys/sysmacros.h>

#include "core-fixture.h"
#include "loopmgr-bus.h"
#include "registry.h"

static const FakeLoop image = {.backing = "/var/tmp/x.img", .size = 1 << 20};

static void kernel_event(Fixture *f, const char *action, const char *name, uint64_t diskseq) {
        manager_udev_event(f->manager, &(UdevWatchEvent){.action = action,
                                                         .sysname = name,
                                                         .diskseq = diskseq,
                                                         .from_udev = false,
                                                         .plain = false});
}

/* The first InterfacesAdded or InterfacesRemoved (kind) of diskseq from `from` on. */
static const Sent *signal_of(Fixture *f, SentKind kind, uint64_t diskseq, size_t from) {
        for (const Sent *s = fx_find(f, kind, NULL, from); s;
             s = fx_find(f, kind, NULL, (size_t) (s - f->sent) + 1))
                if (s->diskseq == diskseq)
                        return s;
        return NULL;
}

#define added(f, diskseq, from)   signal_of(f, SENT_ADDED, diskseq, from)
#define removed(f, diskseq, from) signal_of(f, SENT_REMOVED, diskseq, from)

static void test_binding_appears(void **state) {
        Fixture *f = *state;
        Device *d;

        fx_set_ids(f, "loop4", makedev(254, 1), 77, 0);
        fx_fake_loop(f, 4, 40, &image);
        /* Not loop disks: ignored. */
        kernel_event(f, "add", "sda", 40);
        kernel_event(f, "add", "loop4p1", 40);
        assert_int_equal(f->n_sent, 0);

        kernel_event(f, "add", "loop4", 40);
        assert_int_equal(fx_count(f, SENT_ADDED), 1);
        assert_non_null(added(f, 40, 0));
        d = manager_get_device_by_diskseq(f->manager, 40);
        assert_non_null(d);
        assert_ptr_equal(manager_get_device_by_number(f->manager, 4), d);
        assert_false(d->managed);
        assert_int_equal(d->n_references, 0);
        assert_string_equal(d->status.backing_file, "/var/tmp/x.img");
        assert_int_equal(d->status.size, 1 << 20);
        /* The ids the kernel reported give it an identity. */
        assert_true(d->has_identity);
        assert_int_equal(d->identity.kind, BASE_FILE);
        assert_true(d->identity.base_device == makedev(254, 1));
        assert_int_equal(d->identity.base_inode, 77);
        assert_int_equal(d->identity.size, 1 << 20);
        assert_non_null(d->openers);

        /* The same again: nothing new, nothing said. */
        kernel_event(f, "change", "loop4", 40);
        assert_int_equal(f->n_sent, 1);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, 40), d);

        /* A free device appearing (LOOP_CTL_ADD) is no object. */
        fx_fake_loop(f, 5, 50, NULL);
        kernel_event(f, "add", "loop5", 50);
        assert_null(manager_get_device_by_number(f->manager, 5));
        assert_int_equal(f->n_sent, 1);
}

static void test_status_changes(void **state) {
        Fixture *f = *state;
        FakeLoop l = image;
        const Sent *s;
        size_t mark;
        Device *d;

        fx_fake_loop(f, 4, 40, &l);
        kernel_event(f, "add", "loop4", 40);
        d = manager_get_device_by_diskseq(f->manager, 40);
        assert_non_null(d);

        mark = f->n_sent;
        l.autoclear = true;
        fx_fake_loop(f, 4, 40, &l);
        kernel_event(f, "change", "loop4", 40);
        assert_int_equal(f->n_sent, mark + 1);
        s = fx_find_changed(f, 40, NULL, mark);
        assert_non_null(s);
        assert_string_equal(s->text, "Autoclear BaseOffset BaseSize Chain");
        assert_true(d->status.autoclear);

        mark = f->n_sent;
        l.size = 2 << 20;
        l.read_only = true;
        fx_fake_loop(f, 4, 40, &l);
        kernel_event(f, "change", "loop4", 40);
        s = fx_find_changed(f, 40, NULL, mark);
        assert_non_null(s);
        assert_string_equal(s->text, "Size ReadOnly BaseOffset BaseSize Chain");
        assert_int_equal(d->status.size, 2 << 20);
        assert_true(d->status.read_only);

        mark = f->n_sent;
        l.backing = "/var/tmp/x.img (deleted)";
        l.offset = 4096;
        fx_fake_loop(f, 4, 40, &l);
        kernel_event(f, "change", "loop4", 40);
        s = fx_find_changed(f, 40, NULL, mark);
        assert_non_null(s);
        assert_string_equal(s->text, "Offset BackingFile BaseOffset BaseSize Chain");
        assert_string_equal(d->status.backing_file, "/var/tmp/x.img (deleted)");

        /* Still the same object, never removed or added again. */
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, 40), d);
        assert_int_equal(fx_count(f, SENT_ADDED), 1);
        assert_int_equal(fx_count(f, SENT_REMOVED), 0);
}

static void test_diskseq_changes(void **state) {
        Fixture *f = *state;
        const Sent *gone, *came;
        Device *d;

        fx_fake_loop(f, 4, 40, &image);
        kernel_event(f, "add", "loop4", 40);
        assert_non_null(manager_get_device_by_diskseq(f->manager, 40));

        /* Unbound and bound again before we looked: the same loopN, another binding. */
        fx_fake_loop(f, 4, 41, &(FakeLoop){.backing = "/var/tmp/y.img", .size = 8192});
        kernel_event(f, "change", "loop4", 41);
        gone = removed(f, 40, 0);
        came = added(f, 41, 0);
        assert_non_null(gone);
        assert_non_null(came);
        assert_true(gone < came); /* the old object goes before the new one comes */
        assert_null(manager_get_device_by_diskseq(f->manager, 40));
        d = manager_get_device_by_diskseq(f->manager, 41);
        assert_non_null(d);
        assert_ptr_equal(manager_get_device_by_number(f->manager, 4), d);
        assert_string_equal(d->path, LOOPMGR_DEVICE_PATH_PREFIX "/41");
        assert_string_equal(d->status.backing_file, "/var/tmp/y.img");
        assert_int_equal(f->manager->n_devices, 1);
}

/* A binding goes: the object is removed and whoever waited on it is answered. */
static void test_binding_goes(void **state) {
        Fixture *f = *state;
        Call att = {.id = 1, .refs = 1}, first = {.id = 2, .refs = 1}, det = {.id = 3, .refs = 1};
        Problem error = PROBLEM_NULL;
        DetachOptions dopt;
        AttachOptions o;
        Device *d;

        /* A foreign one: removed. */
        fx_fake_loop(f, 4, 40, &image);
        kernel_event(f, "add", "loop4", 40);
        fx_fake_loop(f, 4, 40, NULL);
        kernel_event(f, "change", "loop4", 40);
        assert_non_null(removed(f, 40, 0));
        assert_null(manager_get_device_by_number(f->manager, 4));

        /* Ours, with an Attach still waiting for udev: the Attach fails. */
        attach_options_init(&o);
        o.timeout_usec = 10000000;
        assert_int_equal(fx_attach(f, &att, "a.img", 3, 30, &o, 1000, ":1.1", &error), 1);
        assert_int_equal(att.refs, 2);
        fx_fake_loop(f, 3, 30, NULL);
        kernel_event(f, "change", "loop3", 30);
        fx_assert_error(f, &att, -ENXIO,
                        "/dev/loop3 was detached before udev finished processing it.");
        assert_int_equal(att.refs, 1);
        assert_non_null(removed(f, 30, 0));
        assert_null(manager_get_device_by_number(f->manager, 3));

        /* Ours, pending, with a Detach(wait): removed from sysfs altogether, "detached". */
        o.wait_udev = false;
        assert_int_equal(fx_attach(f, &first, "a.img", 3, 31, &o, 1000, ":1.1", &error), 1);
        d = manager_get_device_by_diskseq(f->manager, 31);
        assert_non_null(d);
        detach_options_init(&dopt);
        dopt.wait = true;
        f->detach_result = 0;
        assert_int_equal(manager_detach(f->manager, &det, d, &dopt, 1000, &error), 1);
        assert_false(problem_is_set(&error));
        assert_int_equal(d->state, DEVICE_DETACH_PENDING);
        assert_null(fx_find(f, SENT_DETACH, &det, 0));

        fx_remove_loop(f, 3);
        kernel_event(f, "remove", "loop3", 31);
        fx_assert_detach_reply(f, &det, LOOPMGR_STATE_DETACHED);
        assert_int_equal(det.refs, 1);
        assert_non_null(removed(f, 31, 0));
        assert_int_equal(f->manager->n_devices, 0);
}

/* The kernel's announcement of a binding attach made and read back is not re-read; the next
 * event is. */
static void test_own_announcement_not_reread(void **state) {
        Fixture *f = *state;
        Call call = {.id = 4, .refs = 1};
        Problem error = PROBLEM_NULL;
        size_t mark;
        Device *d;

        assert_int_equal(fx_attach(f, &call, "a.img", 3, 30, NULL, 1000, ":1.1", &error), 1);
        d = manager_get_device_by_diskseq(f->manager, 30);
        assert_true(d->bind_event_expected);
        /* sysfs says something else than what attach read back (it never would; here it
         * shows whether sysfs was read). */
        fx_fake_loop(f, 3, 30, &(FakeLoop){.backing = d->status.backing_file, .size = 4096});
        mark = f->n_sent;
        manager_udev_event(f->manager, &(UdevWatchEvent){.action = "change",
                                                         .sysname = "loop3",
                                                         .diskseq = 30,
                                                         .from_udev = false,
                                                         .plain = true});
        assert_null(fx_find_changed(f, 30, "Size", mark));
        assert_false(d->bind_event_expected);
        assert_int_equal(d->status.size, 1 << 20);

        manager_udev_event(f->manager, &(UdevWatchEvent){.action = "change",
                                                         .sysname = "loop3",
                                                         .diskseq = 30,
                                                         .from_udev = false,
                                                         .plain = true});
        assert_non_null(fx_find_changed(f, 30, "Size", mark));
        assert_int_equal(d->status.size, 4096);
}

/* Without a udev monitor, bound devices without an object are adopted, free ones are not. */
static void test_adopt_unseen(void **state) {
        Fixture *f = *state;

        fx_fake_loop(f, 5, 50, &image);
        fx_fake_loop(f, 6, 60, NULL);
        fx_fake_loop(f, 7, 70, &image);
        manager_adopt_unseen(f->manager);
        assert_int_equal(f->manager->n_devices, 2);
        assert_non_null(manager_get_device_by_diskseq(f->manager, 50));
        assert_non_null(manager_get_device_by_diskseq(f->manager, 70));
        assert_null(manager_get_device_by_number(f->manager, 6));
        assert_int_equal(fx_count(f, SENT_ADDED), 2);

        /* Known ones are not read again. */
        fx_fake_loop(f, 5, 51, &image);
        manager_adopt_unseen(f->manager);
        assert_non_null(manager_get_device_by_diskseq(f->manager, 50));
        assert_int_equal(fx_count(f, SENT_ADDED), 2);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_binding_appears, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_status_changes, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_diskseq_changes, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_binding_goes, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_own_announcement_not_reread, fx_setup,
                                                fx_teardown),
                cmocka_unit_test_setup_teardown(test_adopt_unseen, fx_setup, fx_teardown),
        };

        return cmocka_run_group_tests_name("reconcile", tests, NULL, NULL);
}
