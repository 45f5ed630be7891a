/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The partitions of a device (partitions.c) on the fake sysfs root: read when a device with a
 * partition scan is found or re-read, kept across re-reads with their mounts, announced when
 * they change; and the references of partition mounts (device-ops.c,
 * manager_release_to_mount()): the first mount takes the caller's over, each further one gets
 * its own, a surplus one is dropped.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core-fixture.h"
#include "partitions.h"
#include "registry.h"

static const FakeLoop disk = {.backing = "/var/tmp/disk.img", .size = 64 << 20, .partscan = true};

/* loopN's partition k in the fake sysfs: blkext 259:minor, start and size in sectors. */
static void fake_partition(Fixture *f, unsigned nr, unsigned k, unsigned minor, uint64_t start,
                           uint64_t sectors) {
        char rel[128], text[64];

        snprintf(rel, sizeof(rel), "sys/block/loop%u/loop%up%u/partition", nr, nr, k);
        snprintf(text, sizeof(text), "%u\n", k);
        fx_put(f, rel, text);
        snprintf(rel, sizeof(rel), "sys/block/loop%u/loop%up%u/start", nr, nr, k);
        snprintf(text, sizeof(text), "%llu\n", (unsigned long long) start);
        fx_put(f, rel, text);
        snprintf(rel, sizeof(rel), "sys/block/loop%u/loop%up%u/size", nr, nr, k);
        snprintf(text, sizeof(text), "%llu\n", (unsigned long long) sectors);
        fx_put(f, rel, text);
        snprintf(rel, sizeof(rel), "sys/block/loop%u/loop%up%u/dev", nr, nr, k);
        snprintf(text, sizeof(text), "259:%u\n", minor);
        fx_put(f, rel, text);
}

static void remove_partition(Fixture *f, unsigned nr, unsigned k) {
        char cmd[256];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s/sys/block/loop%u/loop%up%u'", f->root, nr, nr, k);
        assert_int_equal(system(cmd), 0);
}

static Device *found_device(Fixture *f, unsigned nr) {
        char name[16];
        Device *d;

        snprintf(name, sizeof(name), "loop%u", nr);
        assert_int_equal(manager_reconcile(f->manager, name), 0);
        d = manager_get_device_by_number(f->manager, nr);
        assert_non_null(d);
        return d;
}

static void test_read(void **state) {
        Fixture *f = *state;
        Device *d;

        fx_fake_loop(f, 3, 30, &disk);
        /* Out of order in the directory: listed by number. */
        fake_partition(f, 3, 2, 5, 67584, 94208);
        fake_partition(f, 3, 1, 4, 2048, 65536);
        d = found_device(f, 3);

        assert_int_equal(d->n_partitions, 2);
        assert_int_equal(d->partitions[0].number, 1);
        assert_string_equal(d->partitions[0].node, "/dev/loop3p1");
        assert_int_equal(d->partitions[0].start, 2048 * 512);
        assert_int_equal(d->partitions[0].size, 65536ULL * 512);
        assert_int_equal(d->partitions[0].devnum, makedev(259, 4));
        assert_int_equal(d->partitions[1].number, 2);
        assert_int_equal(d->partitions[1].start, 67584ULL * 512);
        assert_null(d->partitions[1].mount.point);
        assert_ptr_equal(device_get_partition(d, 2), &d->partitions[1]);
        assert_null(device_get_partition(d, 3));
        assert_ptr_equal(device_get_mount(d, 0), &d->mount);
        assert_ptr_equal(device_get_mount(d, 1), &d->partitions[0].mount);
        assert_null(device_get_mount(d, 7));
        assert_int_equal(device_mount_devnum(d, 2), makedev(259, 5));
        assert_int_equal(device_mount_devnum(d, 0), d->status.devnum);
        assert_string_equal(device_mount_node(d, 0), "/dev/loop3");
        assert_null(device_mount_node(d, 9));
        assert_int_equal(device_n_mounts(d), 3);
}

static void test_no_partscan(void **state) {
        Fixture *f = *state;
        FakeLoop plain = disk;
        Device *d;

        /* Without a partition scan the directory is not even read. */
        plain.partscan = false;
        fx_fake_loop(f, 4, 40, &plain);
        fake_partition(f, 4, 1, 6, 2048, 2048);
        d = found_device(f, 4);
        assert_int_equal(d->n_partitions, 0);
        assert_null(d->partitions);
}

static void test_reread(void **state) {
        Fixture *f = *state;
        size_t mark;
        Device *d;

        fx_fake_loop(f, 5, 50, &disk);
        fake_partition(f, 5, 1, 8, 2048, 4096);
        d = found_device(f, 5);
        assert_int_equal(d->n_partitions, 1);
        d->partitions[0].id_label = strdup("ONE");
        assert_non_null(d->partitions[0].id_label);

        /* Nothing changed: no signal, and what was known stays. */
        mark = f->n_sent;
        assert_int_equal(manager_read_partitions(f->manager, d, true), 0);
        assert_null(fx_find_changed(f, 50, "Partitions", mark));
        assert_string_equal(d->partitions[0].id_label, "ONE");

        /* A second one appears (BLKPG by somebody, a rescan): announced, the first kept. */
        fake_partition(f, 5, 2, 9, 8192, 4096);
        mark = f->n_sent;
        assert_int_equal(manager_read_partitions(f->manager, d, true), 0);
        assert_non_null(fx_find_changed(f, 50, "Partitions", mark));
        assert_int_equal(d->n_partitions, 2);
        assert_string_equal(d->partitions[0].id_label, "ONE");

        /* Partition 1 is another device now (removed and added again): a new entry. */
        remove_partition(f, 5, 1);
        fake_partition(f, 5, 1, 10, 2048, 4096);
        assert_int_equal(manager_read_partitions(f->manager, d, true), 0);
        assert_int_equal(d->partitions[0].devnum, makedev(259, 10));
        assert_null(d->partitions[0].id_label);

        /* The ids of a probe: announced once, not again when the same. */
        mark = f->n_sent;
        manager_set_partition_ids(f->manager, d, &d->partitions[1], "ext4", "TWO", "u-u-i-d");
        assert_non_null(fx_find_changed(f, 50, "Partitions", mark));
        assert_string_equal(d->partitions[1].id_type, "ext4");
        mark = f->n_sent;
        manager_set_partition_ids(f->manager, d, &d->partitions[1], "ext4", "TWO", "u-u-i-d");
        assert_null(fx_find_changed(f, 50, "Partitions", mark));
        manager_set_partition_ids(f->manager, d, &d->partitions[1], "", NULL, NULL);
        assert_null(d->partitions[1].id_type);
        assert_null(d->partitions[1].id_label);
}

static void test_mounted_stays(void **state) {
        Fixture *f = *state;
        Device *d;

        fx_fake_loop(f, 6, 60, &disk);
        fake_partition(f, 6, 1, 11, 2048, 4096);
        fake_partition(f, 6, 2, 12, 8192, 4096);
        d = found_device(f, 6);
        d->partitions[1].mount.point = strdup("/run/media/u/TWO");
        assert_non_null(d->partitions[1].mount.point);
        d->partitions[1].mount.uid = 1000;

        /* Both gone from sysfs: the unmounted one goes, the mounted one is kept (with its
         * mount) until its mount is gone. */
        remove_partition(f, 6, 1);
        remove_partition(f, 6, 2);
        assert_int_equal(manager_read_partitions(f->manager, d, true), 0);
        assert_int_equal(d->n_partitions, 1);
        assert_int_equal(d->partitions[0].number, 2);
        assert_string_equal(d->partitions[0].mount.point, "/run/media/u/TWO");
        assert_true(device_has_mounts(d));

        device_mount_clear(&d->partitions[0].mount);
        assert_false(device_has_mounts(d));
        assert_int_equal(manager_read_partitions(f->manager, d, true), 0);
        assert_int_equal(d->n_partitions, 0);
}

static unsigned mount_references(Device *d, uid_t uid) {
        unsigned n = 0;

        for (Reference *r = d->references; r; r = r->next)
                n += r->uid == uid && r->lifetime == LIFETIME_MOUNT;
        return n;
}

static void set_mount(Device *d, unsigned partition, const char *point) {
        DeviceMount *mnt = device_get_mount(d, partition);

        assert_non_null(mnt);
        mnt->point = strdup(point);
        assert_non_null(mnt->point);
        mnt->uid = 1000;
}

static void test_release_to_mounts(void **state) {
        Fixture *f = *state;
        Reference *own;
        Device *d;

        fx_fake_loop(f, 7, 70, &disk);
        fake_partition(f, 7, 1, 13, 2048, 4096);
        fake_partition(f, 7, 2, 14, 8192, 4096);
        d = found_device(f, 7);
        assert_int_equal(device_add_reference(d, 1000, LIFETIME_PERSISTENT, NULL), 0);
        own = device_own_reference(d, 1000);
        assert_non_null(own);

        /* The first partition's mount takes the caller's reference over. */
        set_mount(d, 1, "/run/media/u/ONE");
        assert_int_equal(manager_release_to_mount(f->manager, d, 1, own, 1000), 0);
        assert_int_equal(d->n_references, 1);
        assert_int_equal(own->lifetime, LIFETIME_MOUNT);
        assert_string_equal(own->owner, "/run/media/u/ONE");
        assert_int_equal(d->partitions[0].mount.ref_id, own->id);
        assert_null(device_own_reference(d, 1000));
        assert_true(device_has_mount_reference_of(d, 1000));

        /* The second one: the caller has none of its own left, so a new one. */
        set_mount(d, 2, "/run/media/u/TWO");
        assert_int_equal(manager_release_to_mount(f->manager, d, 2, NULL, 1000), 0);
        assert_int_equal(d->n_references, 2);
        assert_int_equal(mount_references(d, 1000), 2);
        assert_non_null(device_find_reference(d, d->partitions[1].mount.ref_id));
        assert_string_equal(device_find_reference(d, d->partitions[1].mount.ref_id)->owner,
                            "/run/media/u/TWO");
        assert_int_not_equal(d->partitions[1].mount.ref_id, d->partitions[0].mount.ref_id);

        /* Opened again (a reused attach, its reference): surplus, dropped. */
        assert_int_equal(device_add_reference(d, 1000, LIFETIME_PERSISTENT, NULL), 0);
        own = device_own_reference(d, 1000);
        assert_int_equal(manager_release_to_mount(f->manager, d, 2, own, 1000), 0);
        assert_int_equal(d->n_references, 2);
        assert_null(device_own_reference(d, 1000));

        /* Another user who handed nothing over gets nothing. */
        set_mount(d, 0, "/run/media/v/disk");
        assert_int_equal(manager_release_to_mount(f->manager, d, 0, NULL, 2000), 0);
        assert_int_equal(d->n_references, 2);
        assert_int_equal(d->mount.ref_id, 0);

        /* No such partition, or not mounted: nothing to do. */
        assert_int_equal(manager_release_to_mount(f->manager, d, 5, NULL, 1000), 0);
        assert_int_equal(d->n_references, 2);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)
        const struct CMUnitTest tests[] = {
                T(test_read),          T(test_no_partscan),       T(test_reread),
                T(test_mounted_stays), T(test_release_to_mounts),
        };
#undef T
        return cmocka_run_group_tests(tests, NULL, NULL);
}
