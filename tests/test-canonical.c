/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/sysmacros.h>

#include <cmocka.h>

#include "canonical.h"

/* A fake registry: loop0 over a file, loop1 over loop0. */
static Identity fake_loop0, fake_loop1;

static const Identity *lookup(dev_t devnum, void *userdata) {
        if (devnum == makedev(7, 0))
                return &fake_loop0;
        if (devnum == makedev(7, 1))
                return &fake_loop1;
        return NULL;
}

static void test_file_base(void **state) {
        Backing b = { .device = makedev(254, 1), .inode = 42 };
        Identity id;

        assert_int_equal(identity_compute(&b, 4096, 8192, lookup, NULL, &id), 0);
        assert_int_equal(id.kind, BASE_FILE);
        assert_true(id.base_device == makedev(254, 1));
        assert_int_equal(id.base_inode, 42);
        assert_int_equal(id.offset, 4096);
        assert_int_equal(id.size, 8192);
        assert_int_equal(id.depth, 1);
}

static void test_loop_over_loop(void **state) {
        Backing file = { .device = makedev(254, 1), .inode = 42 };
        Backing on0 = { .is_block = true, .device = makedev(7, 0) };
        Backing on1 = { .is_block = true, .device = makedev(7, 1) };
        Identity id;

        assert_int_equal(identity_compute(&file, 1024, 1 << 20, lookup, NULL, &fake_loop0), 0);
        assert_int_equal(identity_compute(&on0, 512, 4096, lookup, NULL, &fake_loop1), 0);
        assert_int_equal(fake_loop1.kind, BASE_FILE);
        assert_int_equal(fake_loop1.base_inode, 42);
        assert_int_equal(fake_loop1.offset, 1024 + 512);
        assert_int_equal(fake_loop1.depth, 2);

        /* Two layers down, offsets add up. */
        assert_int_equal(identity_compute(&on1, 1024, 2048, lookup, NULL, &id), 0);
        assert_int_equal(id.offset, 1024 + 512 + 1024);
        assert_int_equal(id.depth, 3);

        /* Past the end of the lower device: our view of it is stale. */
        assert_int_equal(identity_compute(&on1, 4096, 512, lookup, NULL, &id), -ERANGE);
}

static void test_opaque_block_and_unknown_loop(void **state) {
        Backing disk = { .is_block = true, .device = makedev(8, 0) };
        Backing unknown_loop = { .is_block = true, .device = makedev(7, 9) };
        Identity id;

        assert_int_equal(identity_compute(&disk, 0, 512, lookup, NULL, &id), 0);
        assert_int_equal(id.kind, BASE_BLOCK);
        assert_int_equal(id.base_inode, 0);

        /* A loop device we do not know is an opaque base rather than an error. */
        assert_int_equal(identity_compute(&unknown_loop, 0, 512, lookup, NULL, &id), 0);
        assert_int_equal(id.kind, BASE_BLOCK);
        assert_true(id.base_device == makedev(7, 9));
}

static void test_bad_input(void **state) {
        Backing b = { .device = 1, .inode = 1 };
        Identity id;

        assert_int_equal(identity_compute(&b, 0, 0, lookup, NULL, &id), -EINVAL);
        assert_int_equal(identity_compute(&b, UINT64_MAX - 10, 512, lookup, NULL, &id), -EOVERFLOW);
        assert_int_equal(identity_compute(NULL, 0, 512, lookup, NULL, &id), -EINVAL);
}

static void test_depth_limit(void **state) {
        Backing on0 = { .is_block = true, .device = makedev(7, 0) };
        Identity id;

        fake_loop0 = (Identity) { .kind = BASE_FILE, .base_device = 1, .base_inode = 1,
                                  .offset = 0, .size = 1 << 20, .depth = IDENTITY_MAX_DEPTH };
        assert_int_equal(identity_compute(&on0, 0, 512, lookup, NULL, &id), -ELOOP);
}

static void test_ranges(void **state) {
        Identity a = { .kind = BASE_FILE, .base_device = 1, .base_inode = 2, .offset = 0, .size = 1024 };
        Identity b = a, c = a, d = a, e = a;

        b.offset = 1024;                /* adjacent: no intersection */
        c.offset = 512;                 /* overlaps the second half */
        d.base_inode = 3;               /* other file */
        e.kind = BASE_BLOCK;            /* same numbers, other kind of base */

        assert_true(identity_equal_range(&a, &a));
        assert_false(identity_intersect(&a, &b));
        assert_false(identity_intersect(&b, &a));
        assert_true(identity_intersect(&a, &c));
        assert_true(identity_intersect(&c, &a));
        assert_false(identity_equal_range(&a, &c));
        assert_false(identity_intersect(&a, &d));
        assert_false(identity_same_base(&a, &e));

        /* Containment counts as intersection both ways. */
        c = a;
        c.offset = 256;
        c.size = 256;
        assert_true(identity_intersect(&a, &c));
        assert_true(identity_intersect(&c, &a));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_file_base),
                cmocka_unit_test(test_loop_over_loop),
                cmocka_unit_test(test_opaque_block_and_unknown_loop),
                cmocka_unit_test(test_bad_input),
                cmocka_unit_test(test_depth_limit),
                cmocka_unit_test(test_ranges),
        };

        return cmocka_run_group_tests_name("canonical", tests, NULL, NULL);
}
