/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The registry (registry.h) on its own: devices inserted and removed by hand, looked up by
 * loop number, diskseq (the open-addressing hash, grown and shrunk by backward shift), device
 * number, object path and the specs manager_find_device() takes; MANAGER_FOREACH_DEVICE().
 */

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "core-fixture.h"
#include "device-path.h"
#include "loopmgr-bus.h"
#include "registry.h"

/* A device for loop<nr> with this diskseq and device number, not yet registered. */
static Device *new_device(Fixture *f, unsigned nr, uint64_t diskseq, dev_t devnum) {
        LoopStatus st = {
                .number = nr, .devnum = devnum, .diskseq = diskseq, .bound = true, .size = 4096};
        Device *d = NULL;

        snprintf(st.name, sizeof(st.name), "loop%u", nr);
        assert_int_equal(device_new(f->manager, &f->manager->last_reference_id, &st, false, &d), 0);
        return d;
}

static Device *insert(Fixture *f, unsigned nr, uint64_t diskseq) {
        Device *d = new_device(f, nr, diskseq, makedev(LOOP_MAJOR_NUMBER, nr));

        assert_int_equal(registry_insert(f->manager, d), 0);
        return d;
}

static void drop(Fixture *f, Device *d) {
        registry_remove(f->manager, d);
        device_free(d);
}

static void test_insert_lookup(void **state) {
        Fixture *f = *state;
        Device *a, *b, *far;

        assert_null(manager_get_device_by_number(f->manager, 0));
        assert_null(manager_get_device_by_diskseq(f->manager, 1));

        a = insert(f, 0, 100);
        b = insert(f, 5, 105);
        far = insert(f, 1000, 9); /* grows the array past twice its size */

        assert_int_equal(f->manager->n_devices, 3);
        assert_true(f->manager->n_slots > 1000);
        assert_ptr_equal(manager_get_device_by_number(f->manager, 0), a);
        assert_ptr_equal(manager_get_device_by_number(f->manager, 5), b);
        assert_ptr_equal(manager_get_device_by_number(f->manager, 1000), far);
        assert_null(manager_get_device_by_number(f->manager, 4));
        assert_null(manager_get_device_by_number(f->manager, 100000));

        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, 100), a);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, 105), b);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, 9), far);
        assert_null(manager_get_device_by_diskseq(f->manager, 101));
        assert_null(manager_get_device_by_diskseq(f->manager, 0));

        assert_true(registry_contains(f->manager, b));
        drop(f, b);
        assert_int_equal(f->manager->n_devices, 2);
        assert_null(manager_get_device_by_number(f->manager, 5));
        assert_null(manager_get_device_by_diskseq(f->manager, 105));
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, 100), a);

        /* A device that is not in (another one with the same number) is left alone. */
        b = new_device(f, 0, 200, makedev(LOOP_MAJOR_NUMBER, 0));
        assert_false(registry_contains(f->manager, b));
        registry_remove(f->manager, b);
        device_free(b);
        assert_ptr_equal(manager_get_device_by_number(f->manager, 0), a);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, 100), a);
        assert_int_equal(f->manager->n_devices, 2);
}

/* The hash's home slot of a diskseq in a table of `size` (registry.c): used only to build
 * collisions, so a change of the hash makes these tests less pointed, not wrong. */
static size_t home_slot(uint64_t diskseq, size_t size) {
        return (size_t) ((diskseq * UINT64_C(0x9e3779b97f4a7c15)) >> 32) & (size - 1);
}

static void test_diskseq_grows(void **state) {
        Fixture *f = *state;
        enum { N = 700 };
        Device **devices = calloc(N, sizeof(Device *));
        size_t size_before;

        assert_non_null(devices);
        /* Consecutive diskseqs, as the kernel hands them out, plus some far apart. */
        for (unsigned i = 0; i < N; i++)
                devices[i] = insert(f, i, i % 7 == 0 ? UINT64_C(1) << 40 | i : 1000 + i);
        assert_int_equal(f->manager->n_devices, N);
        /* At most half full: grown from 64 to at least 2 * N. */
        assert_true(f->manager->by_diskseq_size >= 2 * N);
        assert_int_equal(f->manager->by_diskseq_size & (f->manager->by_diskseq_size - 1), 0);
        for (unsigned i = 0; i < N; i++)
                assert_ptr_equal(
                        manager_get_device_by_diskseq(f->manager, devices[i]->status.diskseq),
                        devices[i]);

        /* Every third one goes: the others stay findable, the gone ones are not. */
        size_before = f->manager->by_diskseq_size;
        for (unsigned i = 0; i < N; i += 3) {
                uint64_t seq = devices[i]->status.diskseq;

                drop(f, devices[i]);
                devices[i] = NULL;
                assert_null(manager_get_device_by_diskseq(f->manager, seq));
        }
        assert_int_equal(f->manager->by_diskseq_size, size_before);
        for (unsigned i = 0; i < N; i++) {
                uint64_t seq = i % 7 == 0 ? UINT64_C(1) << 40 | i : 1000 + i;

                if (devices[i])
                        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, seq),
                                         devices[i]);
                else
                        assert_null(manager_get_device_by_diskseq(f->manager, seq));
        }
        /* And their diskseqs can be used again. */
        devices[0] = insert(f, 0, 1000);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, 1000), devices[0]);
        free(devices);
}

static void test_diskseq_backward_shift(void **state) {
        Fixture *f = *state;
        uint64_t last[5], first[2], seq;
        size_t n_last = 0, n_first = 0;
        Device *d[7];

        /* Diskseqs whose home is the last slot of the first table (64 slots: up to 32 devices),
         * and two whose home is slot 0: one cluster that wraps around the end. */
        for (seq = 1; n_last < 5 || n_first < 2; seq++) {
                size_t h = home_slot(seq, 64);

                if (h == 63 && n_last < 5)
                        last[n_last++] = seq;
                else if (h == 0 && n_first < 2)
                        first[n_first++] = seq;
        }
        for (unsigned i = 0; i < 5; i++)
                d[i] = insert(f, i, last[i]);
        for (unsigned i = 0; i < 2; i++)
                d[5 + i] = insert(f, 5 + i, first[i]);
        assert_int_equal(f->manager->by_diskseq_size, 64);
        /* The cluster: slot 63, then 0 to 5. */
        assert_ptr_equal(f->manager->by_diskseq[63], d[0]);
        assert_ptr_equal(f->manager->by_diskseq[0], d[1]);

        /* The head goes: everything after it in the cluster moves back, across the end. */
        drop(f, d[0]);
        assert_ptr_equal(f->manager->by_diskseq[63], d[1]);
        for (unsigned i = 1; i < 7; i++)
                assert_ptr_equal(manager_get_device_by_diskseq(f->manager, d[i]->status.diskseq),
                                 d[i]);
        assert_null(manager_get_device_by_diskseq(f->manager, last[0]));

        /* One in the middle, whose successors include devices at home in slot 0. */
        drop(f, d[3]);
        for (unsigned i = 1; i < 7; i++)
                if (i != 3)
                        assert_ptr_equal(
                                manager_get_device_by_diskseq(f->manager, d[i]->status.diskseq),
                                d[i]);
        assert_null(manager_get_device_by_diskseq(f->manager, last[3]));
        /* No hole is left inside what remains of the cluster: the five slots from 63 on hold
         * the five devices, and the slot after them is free. */
        for (size_t k = 0; k < 5; k++)
                assert_non_null(f->manager->by_diskseq[(63 + k) & 63]);
        assert_null(f->manager->by_diskseq[4]);

        /* All of them go, in another order. */
        drop(f, d[6]);
        drop(f, d[1]);
        drop(f, d[5]);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, last[2]), d[2]);
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, last[4]), d[4]);
        drop(f, d[4]);
        drop(f, d[2]);
        assert_int_equal(f->manager->n_devices, 0);
        for (size_t k = 0; k < f->manager->by_diskseq_size; k++)
                assert_null(f->manager->by_diskseq[k]);
}

static void test_devnum(void **state) {
        Fixture *f = *state;
        Device *a, *b, *lower, *upper;

        a = insert(f, 3, 30);
        /* With partitions (max_part), the minor is not the loop number: found by walking. */
        b = new_device(f, 4, 40, makedev(LOOP_MAJOR_NUMBER, 64));
        assert_int_equal(registry_insert(f->manager, b), 0);

        assert_ptr_equal(manager_get_device_by_devnum(f->manager, makedev(7, 3)), a);
        assert_ptr_equal(manager_get_device_by_devnum(f->manager, makedev(7, 64)), b);
        assert_null(manager_get_device_by_devnum(f->manager, makedev(7, 4)));
        assert_null(manager_get_device_by_devnum(f->manager, makedev(8, 3)));
        assert_null(manager_get_device_by_devnum(f->manager, makedev(7, 5)));

        /* The device below one stacked on it. */
        lower = a;
        upper = insert(f, 9, 90);
        assert_null(manager_get_device_below(f->manager, upper));
        upper->backing_is_block = true;
        upper->status.backing_rdevice = lower->status.devnum;
        assert_ptr_equal(manager_get_device_below(f->manager, upper), lower);
        upper->status.backing_rdevice = makedev(8, 0);
        assert_null(manager_get_device_below(f->manager, upper));
}

static void test_object_path(void **state) {
        Fixture *f = *state;
        char *p = NULL;
        uint64_t seq = 0;
        Device *d;

        assert_int_equal(device_path_new(42, &p), 0);
        assert_string_equal(p, LOOPMGR_DEVICE_PATH_PREFIX "/42");
        assert_int_equal(device_path_parse(p, &seq), 0);
        assert_int_equal(seq, 42);
        free(p);
        assert_int_equal(device_path_new(UINT64_MAX, &p), 0);
        assert_string_equal(p, LOOPMGR_DEVICE_PATH_PREFIX "/18446744073709551615");
        assert_int_equal(device_path_parse(p, &seq), 0);
        assert_true(seq == UINT64_MAX);
        free(p);

        seq = 7;
        assert_int_equal(device_path_parse(LOOPMGR_DEVICE_PATH_PREFIX "/0", &seq), 0);
        assert_int_equal(seq, 0);
        /* Only the spelling device_path_new() makes. */
        seq = 7;
        assert_int_equal(device_path_parse(LOOPMGR_DEVICE_PATH_PREFIX "/042", &seq), -EINVAL);
        assert_int_equal(device_path_parse(LOOPMGR_DEVICE_PATH_PREFIX "/00", &seq), -EINVAL);
        assert_true(device_path_parse(LOOPMGR_DEVICE_PATH_PREFIX "/", &seq) < 0);
        assert_true(device_path_parse(LOOPMGR_DEVICE_PATH_PREFIX "/42x", &seq) < 0);
        assert_true(device_path_parse(LOOPMGR_DEVICE_PATH_PREFIX "/-1", &seq) < 0);
        assert_true(device_path_parse(LOOPMGR_DEVICE_PATH_PREFIX "/18446744073709551616", &seq) <
                    0);
        assert_int_equal(device_path_parse(LOOPMGR_DEVICE_PATH_PREFIX "42", &seq), -EINVAL);
        assert_int_equal(device_path_parse("/org/loopmgr/LoopManager1", &seq), -EINVAL);
        assert_int_equal(device_path_parse(NULL, &seq), -EINVAL);
        assert_int_equal(seq, 7); /* untouched on failure */

        d = insert(f, 2, 42);
        assert_string_equal(d->path, LOOPMGR_DEVICE_PATH_PREFIX "/42");
        assert_ptr_equal(manager_get_device_by_path(f->manager, d->path), d);
        assert_null(manager_get_device_by_path(f->manager, LOOPMGR_DEVICE_PATH_PREFIX "/042"));
        assert_null(manager_get_device_by_path(f->manager, LOOPMGR_DEVICE_PATH_PREFIX "/43"));
        assert_null(manager_get_device_by_path(f->manager, "/org/loopmgr/LoopManager1"));
}

static void test_foreach(void **state) {
        Fixture *f = *state;
        static const unsigned numbers[] = {0, 1, 2, 7, 8, 30, 31, 200};
        enum { N = sizeof(numbers) / sizeof(numbers[0]) };
        unsigned visits[N] = {}, n = 0, last = 0;
        bool first = true;

        /* Empty: the body never runs. */
        MANAGER_FOREACH_DEVICE(d, f->manager)
        fail_msg("visited %s in an empty registry", d->node);

        for (unsigned i = 0; i < N; i++)
                (void) insert(f, numbers[i], 500 + numbers[i]);

        /* Each once, by loop number. */
        MANAGER_FOREACH_DEVICE(d, f->manager) {
                for (unsigned i = 0; i < N; i++)
                        if (numbers[i] == d->status.number)
                                visits[i]++;
                assert_true(first || d->status.number > last);
                last = d->status.number;
                first = false;
                n++;
        }
        assert_int_equal(n, N);
        for (unsigned i = 0; i < N; i++)
                assert_int_equal(visits[i], 1);

        /* continue, and nested walks with their own counters. */
        n = 0;
        MANAGER_FOREACH_DEVICE(d, f->manager) {
                unsigned inner = 0;

                if (d->status.number == 1 || d->status.number == 30)
                        continue;
                MANAGER_FOREACH_DEVICE(e, f->manager)
                inner++;
                assert_int_equal(inner, N);
                n++;
        }
        assert_int_equal(n, N - 2);

        /* Removing the device the body is given: every other one is still visited. */
        n = 0;
        MANAGER_FOREACH_DEVICE(d, f->manager) {
                n++;
                if (d->status.number % 2 == 0)
                        drop(f, d);
        }
        assert_int_equal(n, N);
        assert_int_equal(f->manager->n_devices, 3);
        assert_non_null(manager_get_device_by_number(f->manager, 1));
        assert_non_null(manager_get_device_by_number(f->manager, 7));
        assert_non_null(manager_get_device_by_number(f->manager, 31));
        assert_null(manager_get_device_by_diskseq(f->manager, 500));
        assert_non_null(manager_get_device_by_diskseq(f->manager, 531));

        /* manager_remove_device() in the body, as reconciliation does. */
        MANAGER_FOREACH_DEVICE(d, f->manager)
        manager_remove_device(f->manager, d, -ENXIO);
        assert_int_equal(f->manager->n_devices, 0);
        assert_int_equal(fx_count(f, SENT_REMOVED), 3);
}

/* registry.h: "break and continue work as in any loop". */
static void test_foreach_break(void **state) {
        Fixture *f = *state;
        unsigned n = 0, after = 0;
        bool stopped = false;

        for (unsigned i = 0; i < 6; i++)
                (void) insert(f, i * 2, 700 + i);
        MANAGER_FOREACH_DEVICE(d, f->manager) {
                if (stopped)
                        after++;
                n++;
                if (d->status.number == 4) {
                        stopped = true;
                        break;
                }
        }
        /* break ends the walk: nothing after loop4 is visited. */
        assert_int_equal(after, 0);
        assert_true(stopped);
        assert_int_equal(n, 3); /* loop0, loop2, loop4 */
}

/* A device with the identity of the whole (or part) of a real file. */
static Device *insert_over_file(Fixture *f, unsigned nr, const struct stat *st, uint64_t offset,
                                uint64_t size, bool managed) {
        Device *d = new_device(f, nr, 600 + nr, makedev(LOOP_MAJOR_NUMBER, nr));

        d->managed = managed;
        d->has_identity = true;
        d->identity = (Identity){.kind = BASE_FILE,
                                 .base_device = st->st_dev,
                                 .base_inode = st->st_ino,
                                 .offset = offset,
                                 .size = size,
                                 .depth = 1};
        assert_int_equal(registry_insert(f->manager, d), 0);
        return d;
}

static void test_find_device_specs(void **state) {
        Fixture *f = *state;
        char file[128], other[128];
        Device *part, *foreign, *managed, *found = NULL;
        struct stat st;
        int fd;

        fd = fx_backing_file(f, "images/a.img", 65536);
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(close(fd), 0);
        assert_int_equal(close(fx_backing_file(f, "images/b.img", 65536)), 0);
        snprintf(file, sizeof(file), "%s/images/a.img", f->root);
        snprintf(other, sizeof(other), "%s/images/b.img", f->root);

        /* A backing file: only a device that exposes all of it. */
        part = insert_over_file(f, 1, &st, 512, 4096, true);
        assert_int_equal(manager_find_device(f->manager, file, &found), -ENODEV);
        foreign = insert_over_file(f, 2, &st, 0, 65536, false);
        assert_int_equal(manager_find_device(f->manager, file, &found), 0);
        assert_ptr_equal(found, foreign);
        /* A managed one first, wherever it is in the registry. */
        managed = insert_over_file(f, 3, &st, 0, 65536, true);
        found = NULL;
        assert_int_equal(manager_find_device(f->manager, file, &found), 0);
        assert_ptr_equal(found, managed);
        found = NULL;
        assert_int_equal(manager_find_device(f->manager, other, &found), -ENODEV);
        assert_null(found);

        /* Numbers and diskseqs. */
        assert_int_equal(manager_find_device(f->manager, "loop1", &found), 0);
        assert_ptr_equal(found, part);
        assert_int_equal(manager_find_device(f->manager, "/dev/loop2", &found), 0);
        assert_ptr_equal(found, foreign);
        assert_int_equal(manager_find_device(f->manager, "/dev/disk/by-diskseq/603", &found), 0);
        assert_ptr_equal(found, managed);
        found = NULL;
        assert_int_equal(manager_find_device(f->manager, "/dev/disk/by-diskseq/604", &found),
                         -ENODEV);
        assert_int_equal(manager_find_device(f->manager, "/dev/disk/by-diskseq/", &found), -EINVAL);
        assert_int_equal(manager_find_device(f->manager, "/dev/disk/by-diskseq/6x", &found),
                         -EINVAL);
        assert_int_equal(manager_find_device(f->manager, "loop4", &found), -ENODEV);
        assert_int_equal(manager_find_device(f->manager, "loop", &found), -EINVAL);
        assert_int_equal(manager_find_device(f->manager, "sda", &found), -EINVAL);
        assert_int_equal(manager_find_device(f->manager, NULL, &found), -EINVAL);
        /* Not a loop name, so a path: it does not exist. */
        assert_int_equal(manager_find_device(f->manager, "/dev/loopx-nonexistent", &found),
                         -ENOENT);
        /* Neither a block device nor a regular file. */
        assert_int_equal(manager_find_device(f->manager, "/dev/null", &found), -EINVAL);
        assert_null(found);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_insert_lookup, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_diskseq_grows, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_diskseq_backward_shift, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_devnum, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_object_path, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_foreach, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_foreach_break, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_find_device_specs, fx_setup, fx_teardown),
        };

        return cmocka_run_group_tests_name("registry", tests, NULL, NULL);
}
