/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-canonical's tests of device-mapper tables and of the identity predicates. */

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <linux/dm-ioctl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "blockdev.h"
#include "canonical.h"
#include "util.h"
#include "test-canonical.h"

/* ---- Device-mapper tables -------------------------------------------------------------------- */

void test_dm_linear_params(void **state) {
        dev_t d;
        uint64_t s;

        assert_int_equal(dm_linear_parse_params("8:16 2048", &d, &s), 0);
        assert_true(d == makedev(8, 16));
        assert_int_equal(s, 2048);
        assert_int_equal(dm_linear_parse_params("259:1048575 0", &d, &s), 0);
        assert_true(d == makedev(259, 1048575));

        assert_int_equal(dm_linear_parse_params("/dev/sdb 2048", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("8:16", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("8:16 ", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params(" 8:16 0", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("8:16 2048 1", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("8:16 -1", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("4096:0 0", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("8:16 18446744073709551615", &d, &s), -EOVERFLOW);
}

void test_dm_map(void **state) {
        DmTarget targets[] = {
                {.start = 0, .length = 2048, .type = "linear", .params = (char *) "8:16 4096"},
                {.start = 2048, .length = 2048, .type = "linear", .params = (char *) "8:32 0"},
                {.start = 4096,
                 .length = 2048,
                 .type = "striped",
                 .params = (char *) "2 128 8:16 0 8:32 0"},
                /* a hole of 2048 sectors, then: */
                {.start = 8192, .length = 1024, .type = "linear", .params = (char *) "/dev/x 0"},
        };
        DmTable t = {.targets = targets, .n_targets = ELEMENTSOF(targets)};
        DmTable one = {.targets = targets, .n_targets = 1};
        dev_t d;
        uint64_t o;

        /* Single linear target. */
        assert_int_equal(dm_table_map(&one, 512, 4096, &d, &o), 1);
        assert_true(d == makedev(8, 16));
        assert_int_equal(o, 4096 * 512 + 512);
        assert_int_equal(dm_table_map(&one, 2048 * 512 - 512, 512, &d, &o), 1);
        /* Past its end: nothing maps it. */
        assert_int_equal(dm_table_map(&one, 2048 * 512 - 512, 1024, &d, &o), 0);

        /* Second of several. */
        assert_int_equal(dm_table_map(&t, 2048 * 512, 2048 * 512, &d, &o), 1);
        assert_true(d == makedev(8, 32));
        assert_int_equal(o, 0);
        assert_int_equal(dm_table_map(&t, 2048 * 512 + 4096, 512, &d, &o), 1);
        assert_int_equal(o, 4096);

        /* Spanning the first two linear targets: opaque. */
        assert_int_equal(dm_table_map(&t, 2048 * 512 - 512, 1024, &d, &o), 0);
        /* A non-linear target: opaque. */
        assert_int_equal(dm_table_map(&t, 4096 * 512, 512, &d, &o), 0);
        /* A hole: opaque. */
        assert_int_equal(dm_table_map(&t, 7000 * 512, 512, &d, &o), 0);
        /* Linear with params we cannot parse: opaque. */
        assert_int_equal(dm_table_map(&t, 8192 * 512, 512, &d, &o), 0);
        /* Empty table. */
        DmTable empty = {};
        assert_int_equal(dm_table_map(&empty, 0, 512, &d, &o), 0);

        assert_int_equal(dm_table_map(&t, 0, 0, &d, &o), -EINVAL);
        assert_int_equal(dm_table_map(&t, UINT64_MAX, 2, &d, &o), -EOVERFLOW);

        DmTarget big[] = {
                {.start = 0,
                 .length = 16,
                 .type = "linear",
                 .params = (char *) "8:0 36028797018963967"}, /* (2^64 - 1) / 512 */
        };
        DmTable tb = {.targets = big, .n_targets = 1};
        assert_int_equal(dm_table_map(&tb, 1024, 512, &d, &o), -EOVERFLOW);
}

/* Lays out a DM_TABLE_STATUS data area as drivers/md/dm-ioctl.c:retrieve_status() does. */
static size_t put_target(uint8_t *buf, size_t pos, uint64_t start, uint64_t len, const char *type,
                         const char *params) {
        struct dm_target_spec spec = {.sector_start = start, .length = len};
        size_t l = strlen(params) + 1, next;

        (void) snprintf(spec.target_type, sizeof(spec.target_type), "%s", type);
        next = (pos + sizeof(spec) + l + 7) & ~(size_t) 7;
        spec.next = (uint32_t) next;
        memcpy(buf + pos, &spec, sizeof(spec));
        memcpy(buf + pos + sizeof(spec), params, l);
        return next;
}

void test_dm_table_parse(void **state) {
        _Alignas(8) uint8_t buf[1024] = {};
        DmTable t = {};
        size_t end;

        end = put_target(buf, 0, 0, 2048, "linear", "8:16 2048");
        end = put_target(buf, end, 2048, 100, "zero", "");
        assert_int_equal(dm_table_parse(buf, end, 2, &t), 0);
        assert_int_equal(t.n_targets, 2);
        assert_string_equal(t.targets[0].type, "linear");
        assert_string_equal(t.targets[0].params, "8:16 2048");
        assert_int_equal(t.targets[0].length, 2048);
        assert_string_equal(t.targets[1].type, "zero");
        assert_string_equal(t.targets[1].params, "");
        assert_int_equal(t.targets[1].start, 2048);
        dm_table_done(&t);
        assert_null(t.targets);

        /* No targets. */
        assert_int_equal(dm_table_parse(NULL, 0, 0, &t), 0);
        assert_int_equal(t.n_targets, 0);
        dm_table_done(&t);

        /* Truncated: the params string has no NUL inside the buffer. */
        end = put_target(buf, 0, 0, 2048, "linear", "8:16 2048");
        assert_int_equal(dm_table_parse(buf, sizeof(struct dm_target_spec) + 4, 1, &t), -EBADMSG);
        /* More targets claimed than present. */
        assert_int_equal(dm_table_parse(buf, end, 2, &t), -EBADMSG);
        assert_int_equal(dm_table_parse(buf, end, 1000000, &t), -EBADMSG);
        /* A "next" that does not move forward. */
        ((struct dm_target_spec *) buf)->next = 0;
        (void) put_target(buf, end, 2048, 1, "linear", "8:0 0");
        assert_int_equal(dm_table_parse(buf, sizeof(buf), 2, &t), -EBADMSG);
        /* A zero-length target. */
        (void) put_target(buf, 0, 0, 0, "linear", "8:0 0");
        assert_int_equal(dm_table_parse(buf, sizeof(buf), 1, &t), -EBADMSG);
}

/* ---- Identity predicates --------------------------------------------------------------------- */

void test_identity_predicates(void **state) {
        Identity a = {.kind = BASE_FILE,
                      .base_device = makedev(254, 1),
                      .base_inode = 42,
                      .offset = 4096,
                      .size = 4096,
                      .depth = 1};
        Identity b = a, blk = a;

        b.depth = 3;
        assert_true(identity_same_base(&a, &b));
        assert_true(identity_equal_range(&a, &b));
        assert_true(identity_intersect(&a, &b));

        b.offset = 8192; /* adjacent */
        assert_false(identity_intersect(&a, &b));
        assert_false(identity_intersect(&b, &a));
        assert_false(identity_equal_range(&a, &b));
        b.offset = 8191;
        assert_true(identity_intersect(&a, &b));
        assert_true(identity_intersect(&b, &a));
        b.offset = 0; /* adjacent below */
        assert_false(identity_intersect(&a, &b));
        b.size = 4097;
        assert_true(identity_intersect(&a, &b));

        b.base_inode = 43;
        assert_false(identity_same_base(&a, &b));
        assert_false(identity_intersect(&a, &b));

        /* A block device and a file with the same numbers are different bases. */
        blk.kind = BASE_BLOCK;
        assert_false(identity_same_base(&a, &blk));
        assert_false(identity_intersect(&a, &blk));
}
