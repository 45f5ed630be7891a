/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>

#include <cmocka.h>

#include "range-index.h"
#include "util.h"

static Identity file_id(uint64_t inode, uint64_t offset, uint64_t size) {
        return (Identity){.kind = BASE_FILE,
                          .base_device = makedev(254, 1),
                          .base_inode = inode,
                          .offset = offset,
                          .size = size};
}

static Identity block_id(dev_t d, uint64_t offset, uint64_t size) {
        return (Identity){.kind = BASE_BLOCK, .base_device = d, .offset = offset, .size = size};
}

/* Collects the items a query visits, in visiting order. */
typedef struct Hits {
        void *items[64];
        size_t n;
        size_t stop_after; /* 0: never stop */
} Hits;

static int collect(void *item, void *userdata) {
        Hits *h = userdata;

        assert_true(h->n < ELEMENTSOF(h->items));
        h->items[h->n++] = item;
        if (h->stop_after != 0 && h->n == h->stop_after)
                return 42;
        return 0;
}

static size_t query(RangeIndex *x, const Identity *id, Hits *h) {
        *h = (Hits){};
        assert_int_equal(range_index_foreach_intersecting(x, id, collect, h), 0);
        return h->n;
}

static void test_add_remove(void **state) {
        RangeIndex *x = NULL;
        Identity a = file_id(1, 0, 4096), b = file_id(1, 4096, 4096);
        int i1, i2;

        assert_int_equal(range_index_new(&x), 0);
        assert_int_equal(range_index_size(x), 0);

        assert_int_equal(range_index_add(x, &a, &i1), 0);
        assert_int_equal(range_index_add(x, &a, &i1), -EEXIST);
        /* The same range for another item, and the same item for another range, are fine. */
        assert_int_equal(range_index_add(x, &a, &i2), 0);
        assert_int_equal(range_index_add(x, &b, &i1), 0);
        assert_int_equal(range_index_size(x), 3);

        assert_int_equal(range_index_remove(x, &b, &i2), -ENOENT);
        assert_int_equal(range_index_remove(x, &a, &i1), 0);
        assert_int_equal(range_index_remove(x, &a, &i1), -ENOENT);
        assert_int_equal(range_index_size(x), 2);

        /* Another base with the same range is another key. */
        Identity other = file_id(2, 0, 4096);
        assert_int_equal(range_index_remove(x, &other, &i2), -ENOENT);

        assert_int_equal(range_index_remove(x, &a, &i2), 0);
        assert_int_equal(range_index_remove(x, &b, &i1), 0);
        assert_int_equal(range_index_size(x), 0);
        /* Removing the last entry dropped the base; re-adding works. */
        assert_int_equal(range_index_add(x, &a, &i1), 0);
        assert_int_equal(range_index_size(x), 1);

        Identity zero = file_id(1, 0, 0);
        assert_int_equal(range_index_add(x, &zero, &i1), -EINVAL);

        assert_null(range_index_free(x));
        assert_null(range_index_free(NULL));
}

static void test_intersect_adjacent(void **state) {
        RangeIndex *x = NULL;
        Identity a = file_id(1, 4096, 4096);
        Identity before = file_id(1, 0, 4096), after = file_id(1, 8192, 4096);
        Identity inside = file_id(1, 5000, 1), overlap_l = file_id(1, 4095, 2);
        Identity overlap_r = file_id(1, 8191, 100), cover = file_id(1, 0, 1 << 20);
        Hits h;
        int item;

        assert_int_equal(range_index_new(&x), 0);
        assert_int_equal(range_index_add(x, &a, &item), 0);

        /* Half-open ranges: touching is not intersecting. */
        assert_int_equal(query(x, &before, &h), 0);
        assert_int_equal(query(x, &after, &h), 0);

        assert_int_equal(query(x, &inside, &h), 1);
        assert_ptr_equal(h.items[0], &item);
        assert_int_equal(query(x, &overlap_l, &h), 1);
        assert_int_equal(query(x, &overlap_r, &h), 1);
        assert_int_equal(query(x, &cover, &h), 1);
        assert_int_equal(query(x, &a, &h), 1);

        /* A query of size 0 meets nothing. */
        Identity empty = file_id(1, 5000, 0);
        assert_int_equal(query(x, &empty, &h), 0);

        range_index_free(x);
}

static void test_nested_and_order(void **state) {
        RangeIndex *x = NULL;
        /* A long range first, short ones nested inside it, and one after all of them. */
        Identity big = file_id(1, 0, 1 << 20), small1 = file_id(1, 4096, 512);
        Identity small2 = file_id(1, 8192, 512), tail = file_id(1, 2 << 20, 4096);
        Identity q;
        Hits h;
        int ib, i1, i2, it;

        assert_int_equal(range_index_new(&x), 0);
        assert_int_equal(range_index_add(x, &tail, &it), 0);
        assert_int_equal(range_index_add(x, &small2, &i2), 0);
        assert_int_equal(range_index_add(x, &big, &ib), 0);
        assert_int_equal(range_index_add(x, &small1, &i1), 0);

        /* Past the short ones but inside the big one: the big one must still be found even
         * though entries between it and the query end do not reach the query. */
        q = file_id(1, 100000, 10);
        assert_int_equal(query(x, &q, &h), 1);
        assert_ptr_equal(h.items[0], &ib);

        /* Everything, in offset order. */
        q = file_id(1, 0, UINT64_MAX);
        assert_int_equal(query(x, &q, &h), 4);
        assert_ptr_equal(h.items[0], &ib);
        assert_ptr_equal(h.items[1], &i1);
        assert_ptr_equal(h.items[2], &i2);
        assert_ptr_equal(h.items[3], &it);

        q = file_id(1, 4200, 4096); /* meets big, small1 and small2 */
        assert_int_equal(query(x, &q, &h), 3);
        assert_ptr_equal(h.items[0], &ib);
        assert_ptr_equal(h.items[1], &i1);
        assert_ptr_equal(h.items[2], &i2);

        /* Early stop returns the callback's value. */
        h = (Hits){.stop_after = 2};
        assert_int_equal(range_index_foreach_intersecting(x, &q, collect, &h), 42);
        assert_int_equal(h.n, 2);

        /* After removing the big one, the gap between small2 and tail is empty. */
        assert_int_equal(range_index_remove(x, &big, &ib), 0);
        q = file_id(1, 100000, 10);
        assert_int_equal(query(x, &q, &h), 0);
        q = file_id(1, 4200, 4096);
        assert_int_equal(query(x, &q, &h), 2);

        range_index_free(x);
}

static void test_multiple_bases(void **state) {
        RangeIndex *x = NULL;
        enum { N = 300 };
        static int items[N];
        Hits h;

        assert_int_equal(range_index_new(&x), 0);

        /* Many bases force the table to grow; the same range on each of them. Files and block
         * devices with colliding numbers are different bases too. */
        for (unsigned i = 0; i < N; i++) {
                Identity id = i % 2 ? file_id(i / 2, 0, 4096) : block_id(makedev(254, 1), 0, 4096);

                if (i % 2 == 0)
                        id.base_inode = 0, id.base_device = makedev(8, i);
                assert_int_equal(range_index_add(x, &id, &items[i]), 0);
        }
        Identity blk_same_numbers = block_id(makedev(254, 1), 0, 4096);
        assert_int_equal(range_index_add(x, &blk_same_numbers, &items[0]), 0);
        assert_int_equal(range_index_size(x), N + 1);

        for (unsigned i = 0; i < N; i++) {
                Identity id = i % 2 ? file_id(i / 2, 100, 1) : block_id(makedev(8, i), 100, 1);

                assert_int_equal(query(x, &id, &h), 1);
                assert_ptr_equal(h.items[0], &items[i]);
        }
        Identity q = block_id(makedev(254, 1), 0, 1);
        assert_int_equal(query(x, &q, &h), 1);
        assert_ptr_equal(h.items[0], &items[0]);
        q = file_id(4242, 0, 1);
        assert_int_equal(query(x, &q, &h), 0);

        range_index_free(x);
}

/* Every intersecting entry exactly once, nothing else, in offset order: against brute force. */
typedef struct Ref {
        Identity id;
        bool present;
} Ref;

typedef struct Check {
        const Ref *refs;
        size_t n_refs;
        bool *visited;
        const Identity *q;
        uint64_t last_offset;
        size_t n;
} Check;

static int check_cb(void *item, void *userdata) {
        Check *c = userdata;
        const Ref *r = item;
        size_t i = (size_t) (r - c->refs);

        assert_true(i < c->n_refs);
        assert_true(r->present);
        assert_true(identity_intersect(&r->id, c->q));
        assert_false(c->visited[i]);
        assert_true(r->id.offset >= c->last_offset);
        c->visited[i] = true;
        c->last_offset = r->id.offset;
        c->n++;
        return 0;
}

static void test_random_vs_brute_force(void **state) {
        enum { N = 10000, BASES = 3, QUERIES = 2000 };
        RangeIndex *x = NULL;
        Ref *refs;
        bool *visited;
        size_t present = 0;

        srand(4711);
        refs = calloc(N, sizeof(Ref));
        visited = calloc(N, sizeof(bool));
        assert_non_null(refs);
        assert_non_null(visited);
        assert_int_equal(range_index_new(&x), 0);

        for (size_t i = 0; i < N; i++) {
                /* Mostly short ranges, some long ones that nest many others. */
                uint64_t off = (uint64_t) (rand() % 1000000);
                uint64_t size = rand() % 20 == 0 ? (uint64_t) (rand() % 200000) + 1
                                                 : (uint64_t) (rand() % 500) + 1;

                refs[i].id = file_id(1 + (unsigned) rand() % BASES, off, size);
                refs[i].present = true;
                assert_int_equal(range_index_add(x, &refs[i].id, &refs[i]), 0);
                present++;
        }
        /* Remove a third again. */
        for (size_t i = 0; i < N; i += 3) {
                assert_int_equal(range_index_remove(x, &refs[i].id, &refs[i]), 0);
                refs[i].present = false;
                present--;
        }
        assert_int_equal(range_index_size(x), present);

        for (unsigned k = 0; k < QUERIES; k++) {
                Identity q =
                        file_id(1 + (unsigned) rand() % (BASES + 1), (uint64_t) (rand() % 1100000),
                                (uint64_t) (rand() % (k % 2 ? 50 : 5000)) + 1);
                Check c = {.refs = refs, .n_refs = N, .visited = visited, .q = &q};
                size_t expected = 0;

                memset(visited, 0, N * sizeof(bool));
                assert_int_equal(range_index_foreach_intersecting(x, &q, check_cb, &c), 0);

                for (size_t i = 0; i < N; i++) {
                        bool hit = refs[i].present && identity_intersect(&refs[i].id, &q);

                        assert_int_equal(hit, visited[i]);
                        expected += hit;
                }
                assert_int_equal(c.n, expected);
        }

        range_index_free(x);
        free(visited);
        free(refs);
}

static void test_huge_ranges(void **state) {
        RangeIndex *x = NULL;
        /* offset + size overflowing saturates instead of wrapping to a tiny end. */
        Identity top = file_id(1, UINT64_MAX - 10, 100), q = file_id(1, UINT64_MAX - 1, 1);
        Identity low = file_id(1, 0, 1);
        Hits h;
        int item;

        assert_int_equal(range_index_new(&x), 0);
        assert_int_equal(range_index_add(x, &top, &item), 0);
        assert_int_equal(query(x, &q, &h), 1);
        assert_int_equal(query(x, &low, &h), 0);
        assert_int_equal(range_index_remove(x, &top, &item), 0);
        range_index_free(x);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_add_remove),
                cmocka_unit_test(test_intersect_adjacent),
                cmocka_unit_test(test_nested_and_order),
                cmocka_unit_test(test_multiple_bases),
                cmocka_unit_test(test_random_vs_brute_force),
                cmocka_unit_test(test_huge_ranges),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
