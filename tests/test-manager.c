/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The manager without a bus and without root: reconciliation against a fake sysfs tree (a
 * foreign binding appears, is rebound, unbound, removed), the alias rule on hand-made
 * identities, device lookup, and references.
 */

#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cmocka.h>

#include "bus-util.h"
#include "loopmgr-bus.h"
#include "manager.h"
#include "range-index.h"

typedef struct Fixture {
        char root[64];
        sd_event *event;
        Manager *manager;
} Fixture;

/* The error name the bus layer gives the problem (bus_error_set_problem()). */
static bool problem_has_name(const Problem *p, const char *name) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        bool has;

        (void) bus_error_set_problem(&e, p);
        has = sd_bus_error_has_name(&e, name);
        sd_bus_error_free(&e);
        return has;
}

static void put(const char *root, const char *rel, const char *contents) {
        char path[512], cmd[600];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", root, rel);
        snprintf(cmd, sizeof(cmd), "mkdir -p \"$(dirname '%s')\"", path);
        assert_int_equal(system(cmd), 0);
        f = fopen(path, "we");
        assert_non_null(f);
        fputs(contents, f);
        assert_int_equal(fclose(f), 0);
}

/* A loop device in the fake sysfs; backing == NULL makes it unbound. */
static void fake_loop(const char *root, unsigned nr, uint64_t diskseq, const char *backing,
                      uint64_t offset, uint64_t size) {
        char rel[128], v[64];

        snprintf(rel, sizeof(rel), "sys/block/loop%u/dev", nr);
        snprintf(v, sizeof(v), "7:%u\n", nr);
        put(root, rel, v);
        snprintf(rel, sizeof(rel), "sys/block/loop%u/diskseq", nr);
        snprintf(v, sizeof(v), "%" PRIu64 "\n", diskseq);
        put(root, rel, v);
        snprintf(rel, sizeof(rel), "sys/block/loop%u/size", nr);
        snprintf(v, sizeof(v), "%" PRIu64 "\n", backing ? size / 512 : 0);
        put(root, rel, v);
        snprintf(rel, sizeof(rel), "sys/block/loop%u/ro", nr);
        put(root, rel, "0\n");
        snprintf(rel, sizeof(rel), "sys/block/loop%u/queue/logical_block_size", nr);
        put(root, rel, "512\n");

        snprintf(rel, sizeof(rel), "rm -rf '%s/sys/block/loop%u/loop'", root, nr);
        assert_int_equal(system(rel), 0);
        if (!backing)
                return;

        snprintf(rel, sizeof(rel), "sys/block/loop%u/loop/backing_file", nr);
        snprintf(v, sizeof(v), "%s\n", backing);
        put(root, rel, v);
        snprintf(rel, sizeof(rel), "sys/block/loop%u/loop/offset", nr);
        snprintf(v, sizeof(v), "%" PRIu64 "\n", offset);
        put(root, rel, v);
        snprintf(rel, sizeof(rel), "sys/block/loop%u/loop/sizelimit", nr);
        put(root, rel, "0\n");
        snprintf(rel, sizeof(rel), "sys/block/loop%u/loop/autoclear", nr);
        put(root, rel, "0\n");
        snprintf(rel, sizeof(rel), "sys/block/loop%u/loop/partscan", nr);
        put(root, rel, "0\n");
        snprintf(rel, sizeof(rel), "sys/block/loop%u/loop/dio", nr);
        put(root, rel, "0\n");
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));

        if (!f)
                return -1;
        snprintf(f->root, sizeof(f->root), "/tmp/loopmgr-test-manager-XXXXXX");
        if (!mkdtemp(f->root) || sd_event_new(&f->event) < 0 ||
            manager_new(f->event, f->root, f->root, &f->manager) < 0)
                return -1;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        char cmd[128];

        manager_free(f->manager);
        sd_event_unref(f->event);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->root);
        (void) system(cmd);
        free(f);
        return 0;
}

static void test_rescan_adopts_foreign(void **state) {
        Fixture *f = *state;
        Device *d;

        fake_loop(f->root, 0, 11, "/var/tmp/a.img", 4096, 1 << 20);
        fake_loop(f->root, 1, 12, NULL, 0, 0);
        fake_loop(f->root, 10, 13, "/var/tmp/b.img (deleted)", 0, 8192);

        manager_rescan(f->manager);
        assert_int_equal(f->manager->n_devices, 2);

        d = manager_get_device_by_number(f->manager, 0);
        assert_non_null(d);
        assert_false(d->managed);
        assert_int_equal(d->n_references, 0);
        assert_int_equal(d->state, DEVICE_ATTACHED);
        assert_int_equal(d->status.diskseq, 11);
        assert_int_equal(d->status.offset, 4096);
        assert_int_equal(d->status.size, 1 << 20);
        assert_string_equal(d->status.backing_file, "/var/tmp/a.img");
        assert_string_equal(d->node, "/dev/loop0");
        assert_string_equal(d->path, LOOPMGR_DEVICE_PATH_PREFIX "/11");

        assert_null(manager_get_device_by_number(f->manager, 1));
        assert_ptr_equal(manager_get_device_by_diskseq(f->manager, 13),
                         manager_get_device_by_number(f->manager, 10));
        assert_ptr_equal(manager_get_device_by_devnum(f->manager, makedev(7, 10)),
                         manager_get_device_by_number(f->manager, 10));
        assert_null(manager_get_device_by_devnum(f->manager, makedev(8, 10)));
        assert_ptr_equal(manager_get_device_by_path(f->manager, LOOPMGR_DEVICE_PATH_PREFIX "/11"),
                         d);
        assert_null(manager_get_device_by_path(f->manager, LOOPMGR_DEVICE_PATH_PREFIX "/x"));
}

static void test_reconcile_rebind_unbind_remove(void **state) {
        Fixture *f = *state;
        Device *d;

        fake_loop(f->root, 3, 20, "/var/tmp/a.img", 0, 4096);
        assert_int_equal(manager_reconcile(f->manager, "loop3"), 0);
        d = manager_get_device_by_number(f->manager, 3);
        assert_non_null(d);
        assert_int_equal(d->status.diskseq, 20);

        /* A property change on the same binding updates the object in place. */
        fake_loop(f->root, 3, 20, "/var/tmp/a.img", 0, 8192);
        assert_int_equal(manager_reconcile(f->manager, "loop3"), 0);
        assert_ptr_equal(manager_get_device_by_number(f->manager, 3), d);
        assert_int_equal(d->status.size, 8192);

        /* Rebound behind our back: a new diskseq is a new object. */
        fake_loop(f->root, 3, 22, "/var/tmp/c.img", 0, 4096);
        assert_int_equal(manager_reconcile(f->manager, "loop3"), 0);
        d = manager_get_device_by_number(f->manager, 3);
        assert_non_null(d);
        assert_int_equal(d->status.diskseq, 22);
        assert_null(manager_get_device_by_diskseq(f->manager, 20));
        assert_string_equal(d->status.backing_file, "/var/tmp/c.img");

        /* Unbound: the object goes. */
        fake_loop(f->root, 3, 23, NULL, 0, 0);
        assert_int_equal(manager_reconcile(f->manager, "loop3"), 0);
        assert_null(manager_get_device_by_number(f->manager, 3));
        assert_int_equal(f->manager->n_devices, 0);

        /* Gone from sysfs altogether (LOOP_CTL_REMOVE). */
        fake_loop(f->root, 3, 24, "/var/tmp/a.img", 0, 4096);
        assert_int_equal(manager_reconcile(f->manager, "loop3"), 0);
        assert_int_equal(f->manager->n_devices, 1);
        {
                char cmd[128];

                snprintf(cmd, sizeof(cmd), "rm -rf '%s/sys/block/loop3'", f->root);
                assert_int_equal(system(cmd), 0);
        }
        manager_rescan(f->manager);
        assert_int_equal(f->manager->n_devices, 0);

        assert_int_equal(manager_reconcile(f->manager, "sda"), -EINVAL);
}

/* Gives a device a file identity by hand (the fake tree has no /dev to read ids from). */
static Device *with_identity(Fixture *f, unsigned nr, uint64_t inode, uint64_t offset,
                             uint64_t size, bool managed) {
        Device *d = manager_get_device_by_number(f->manager, nr);

        assert_non_null(d);
        if (d->has_identity)
                assert_int_equal(range_index_remove(f->manager->index, &d->identity, d), 0);
        d->managed = managed;
        d->has_identity = true;
        d->identity = (Identity){.kind = BASE_FILE,
                                 .base_device = makedev(254, 0),
                                 .base_inode = inode,
                                 .offset = offset,
                                 .size = size,
                                 .depth = 1};
        assert_int_equal(range_index_add(f->manager->index, &d->identity, d), 0);
        return d;
}

/* A one-layer request chain over a file, or a two-layer one stacked on loop device `lower`. */
static void request_chain(Chain *c, Layer layers[2], const Identity *id, dev_t lower) {
        layers[0] = (Layer){.kind = LAYER_REQUEST, .offset = id->offset, .size = id->size};
        layers[1] = (Layer){.kind = lower ? LAYER_LOOP : LAYER_BASE_FILE, .devnum = lower};
        if (lower)
                snprintf(layers[1].name, sizeof(layers[1].name), "loop%u", minor(lower));
        *c = (Chain){.layers = layers, .n_layers = 2, .identity = *id};
}

static void test_alias_rule(void **state) {
        Fixture *f = *state;
        Problem error = PROBLEM_NULL;
        AttachOptions o;
        AttachRequest req = {.options = &o};
        Identity id = {.kind = BASE_FILE,
                       .base_device = makedev(254, 0),
                       .base_inode = 100,
                       .offset = 0,
                       .size = 1 << 20,
                       .depth = 1};
        Device *foreign, *managed, *reuse = NULL;
        Layer layers[2];
        Chain c;

        attach_options_init(&o);
        fake_loop(f->root, 0, 30, "/x", 0, 1 << 20);
        fake_loop(f->root, 1, 31, "/x", 0, 1 << 20);
        fake_loop(f->root, 2, 32, "/y", 0, 4096);
        manager_rescan(f->manager);
        foreign = with_identity(f, 0, 100, 0, 1 << 20, false);
        managed = with_identity(f, 1, 100, 0, 1 << 20, true);
        (void) with_identity(f, 2, 100, 2 << 20, 4096, true); /* disjoint, same file */

        /* Rule 1: identical and shared: reuse, the managed device first. */
        request_chain(&c, layers, &id, 0);
        assert_int_equal(manager_check_aliases(f->manager, &c, &req, &reuse, &error), 1);
        assert_ptr_equal(reuse, managed);

        /* Other read-only mode: not identical, so an overlap. */
        req.read_only = true;
        assert_int_equal(manager_check_aliases(f->manager, &c, &req, &reuse, &error), -EADDRINUSE);
        assert_true(problem_has_name(&error, LOOPMGR_ERROR_OVERLAP));
        assert_non_null(strstr(error.message, "read-only"));
        problem_done(&error);
        req.read_only = false;

        /* A sub-range: overlap naming a device and both ranges. */
        id.offset = 512;
        id.size = 4096;
        request_chain(&c, layers, &id, 0);
        assert_int_equal(manager_check_aliases(f->manager, &c, &req, &reuse, &error), -EADDRINUSE);
        assert_true(problem_has_name(&error, LOOPMGR_ERROR_OVERLAP));
        assert_non_null(strstr(error.message, "/dev/loop0"));
        assert_non_null(strstr(error.message, "512-4608"));
        problem_done(&error);

        /* Exclusive: any intersection is Busy, identical included. */
        id.offset = 0;
        id.size = 1 << 20;
        request_chain(&c, layers, &id, 0);
        o.sharing = SHARING_EXCLUSIVE;
        assert_int_equal(manager_check_aliases(f->manager, &c, &req, &reuse, &error), -EBUSY);
        assert_true(problem_has_name(&error, LOOPMGR_ERROR_BUSY));
        problem_done(&error);
        o.sharing = SHARING_SHARED;

        /* Disjoint range of the same file, and another file: a new device may be made. */
        id.offset = 4 << 20;
        id.size = 4096;
        request_chain(&c, layers, &id, 0);
        assert_int_equal(manager_check_aliases(f->manager, &c, &req, &reuse, &error), 0);
        id.offset = 0;
        id.base_inode = 101;
        request_chain(&c, layers, &id, 0);
        assert_int_equal(manager_check_aliases(f->manager, &c, &req, &reuse, &error), 0);

        /* Stacking on a device of the request's own chain is allowed (loop over loop); the
         * other device over the same bytes is not in the chain, so it is an overlap... */
        id = foreign->identity;
        id.offset += 512;
        id.size = 4096;
        id.depth = 2;
        request_chain(&c, layers, &id, foreign->status.devnum);
        assert_int_equal(manager_check_aliases(f->manager, &c, &req, &reuse, &error), -EADDRINUSE);
        assert_non_null(strstr(error.message, "/dev/loop1"));
        problem_done(&error);
        /* ...and once it is gone, only the lower device is in the way. */
        assert_int_equal(range_index_remove(f->manager->index, &managed->identity, managed), 0);
        managed->has_identity = false;
        assert_int_equal(manager_check_aliases(f->manager, &c, &req, &reuse, &error), 0);

        /* An identical device that is being torn down is a candidate (manager_attach revives
         * it), but an attached twin is preferred over it. */
        id = foreign->identity;
        request_chain(&c, layers, &id, 0);
        foreign->state = DEVICE_DETACH_PENDING;
        reuse = NULL;
        assert_int_equal(manager_check_aliases(f->manager, &c, &req, &reuse, &error), 1);
        assert_ptr_equal(reuse, foreign);
        (void) with_identity(f, 1, 100, 0, 1 << 20, false);
        reuse = NULL;
        assert_int_equal(manager_check_aliases(f->manager, &c, &req, &reuse, &error), 1);
        assert_ptr_equal(reuse, managed);
}

static void test_find_device(void **state) {
        Fixture *f = *state;
        Device *d = NULL, *found = NULL;

        fake_loop(f->root, 7, 77, "/z", 0, 4096);
        manager_rescan(f->manager);
        d = manager_get_device_by_number(f->manager, 7);
        assert_non_null(d);

        assert_int_equal(manager_find_device(f->manager, "loop7", &found), 0);
        assert_ptr_equal(found, d);
        found = NULL;
        assert_int_equal(manager_find_device(f->manager, "/dev/loop7", &found), 0);
        assert_ptr_equal(found, d);
        found = NULL;
        assert_int_equal(manager_find_device(f->manager, "/dev/disk/by-diskseq/77", &found), 0);
        assert_ptr_equal(found, d);

        assert_int_equal(manager_find_device(f->manager, "loop8", &found), -ENODEV);
        assert_int_equal(manager_find_device(f->manager, "/dev/disk/by-diskseq/78", &found),
                         -ENODEV);
        assert_int_equal(manager_find_device(f->manager, "/dev/disk/by-diskseq/x", &found),
                         -EINVAL);
        assert_int_equal(manager_find_device(f->manager, "nonsense", &found), -EINVAL);
        assert_int_equal(manager_find_device(f->manager, "", &found), -EINVAL);
        assert_int_equal(manager_find_device(f->manager, "/nonexistent/file", &found), -ENOENT);
}

static void test_references(void **state) {
        Fixture *f = *state;
        Device *d;

        fake_loop(f->root, 5, 50, "/r", 0, 4096);
        manager_rescan(f->manager);
        d = manager_get_device_by_number(f->manager, 5);
        assert_non_null(d);

        assert_int_equal(device_add_reference(d, 1000, LIFETIME_PERSISTENT, ":1.5"), 0);
        assert_int_equal(d->owner_uid, 1000);
        assert_int_equal(device_add_reference(d, 0, LIFETIME_CLIENT, ":1.6"), 0);
        assert_int_equal(device_add_reference(d, 1000, LIFETIME_CLIENT, ":1.7"), 0);
        assert_int_equal(d->n_references, 3);
        assert_int_equal(d->owner_uid, 1000); /* the first holder stays the owner */

        assert_true(device_has_reference_of(d, 0));
        assert_false(device_has_reference_of(d, 42));

        /* Persistent references are not dropped with a connection. */
        assert_int_equal(device_drop_client_references(d, ":1.5"), 0);
        assert_int_equal(device_drop_client_references(d, ":1.7"), 1);
        assert_int_equal(d->n_references, 2);

        assert_int_equal(device_drop_reference(d, 42), 0);
        assert_int_equal(device_drop_reference(d, 1000), 1);
        assert_int_equal(device_drop_reference(d, 1000), 0);
        assert_int_equal(d->n_references, 1);
        device_drop_all_references(d);
        assert_int_equal(d->n_references, 0);
        assert_null(d->references);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_rescan_adopts_foreign, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reconcile_rebind_unbind_remove, setup,
                                                teardown),
                cmocka_unit_test_setup_teardown(test_alias_rule, setup, teardown),
                cmocka_unit_test_setup_teardown(test_find_device, setup, teardown),
                cmocka_unit_test_setup_teardown(test_references, setup, teardown),
        };

        return cmocka_run_group_tests_name("manager", tests, NULL, NULL);
}
