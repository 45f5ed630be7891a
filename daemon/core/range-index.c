/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "range-index.h"
#include "util.h"

/*
 * A chained hash table of bases. Each base keeps its entries in an array sorted by
 * (offset, end, item) plus, for each position, the largest end among the entries up to it.
 * That prefix maximum never decreases, so a query [s, e) binary-searches both the first entry
 * that can still reach past s and the first entry starting at or after e, and only looks at
 * the entries in between: nested and overlapping ranges stay correct without an interval tree.
 * Insertion and removal are O(n) per base (memmove), which is fine for the number of loop
 * devices over one file.
 */

typedef struct Entry {
        uint64_t offset;
        uint64_t end;     /* exclusive, saturated at UINT64_MAX */
        uint64_t max_end; /* max(end) of this entry and all before it */
        void *item;
} Entry;

typedef struct Base {
        struct Base *next; /* hash chain */
        BaseKind kind;
        dev_t device;
        uint64_t inode;
        Entry *entries;
        size_t n_entries;
        size_t n_allocated;
} Base;

struct RangeIndex {
        Base **buckets;
        size_t n_buckets; /* a power of two */
        size_t n_bases;
        size_t n_entries;
};

#define INITIAL_BUCKETS 16u

static uint64_t mix64(uint64_t x) {
        /* splitmix64's finaliser: cheap and spreads device/inode bits over the whole word. */
        x ^= x >> 30;
        x *= UINT64_C(0xbf58476d1ce4e5b9);
        x ^= x >> 27;
        x *= UINT64_C(0x94d049bb133111eb);
        x ^= x >> 31;
        return x;
}

static uint64_t base_hash(BaseKind kind, dev_t device, uint64_t inode) {
        return mix64(mix64((uint64_t) device ^ ((uint64_t) kind << 62)) ^ inode);
}

static bool base_matches(const Base *b, const Identity *id) {
        return b->kind == id->kind && b->device == id->base_device && b->inode == id->base_inode;
}

static uint64_t identity_end(const Identity *id) {
        uint64_t end;

        if (__builtin_add_overflow(id->offset, id->size, &end))
                return UINT64_MAX;
        return end;
}

int range_index_new(RangeIndex **ret) {
        RangeIndex *x;

        assert(ret);

        x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        x->buckets = calloc(INITIAL_BUCKETS, sizeof(Base *));
        if (!x->buckets) {
                free(x);
                return -ENOMEM;
        }
        x->n_buckets = INITIAL_BUCKETS;

        *ret = x;
        return 0;
}

static Base *base_free(Base *b) {
        if (!b)
                return NULL;
        free(b->entries);
        free(b);
        return NULL;
}

RangeIndex *range_index_free(RangeIndex *x) {
        if (!x)
                return NULL;

        for (size_t i = 0; i < x->n_buckets; i++)
                while (x->buckets[i]) {
                        Base *b = x->buckets[i];

                        x->buckets[i] = b->next;
                        base_free(b);
                }
        free(x->buckets);
        free(x);
        return NULL;
}

size_t range_index_size(RangeIndex *x) {
        return x ? x->n_entries : 0;
}

static Base **base_slot(RangeIndex *x, const Identity *id) {
        Base **slot;

        slot = &x->buckets[base_hash(id->kind, id->base_device, id->base_inode) &
                           (x->n_buckets - 1)];
        while (*slot && !base_matches(*slot, id))
                slot = &(*slot)->next;
        return slot;
}

static int grow(RangeIndex *x) {
        Base **n;
        size_t nb;

        if (x->n_bases < x->n_buckets)
                return 0; /* load factor below 1 */
        if (x->n_buckets > SIZE_MAX / 2 / sizeof(Base *))
                return 0; /* cannot grow; chains just get longer */
        nb = x->n_buckets * 2;

        n = calloc(nb, sizeof(Base *));
        if (!n)
                return -ENOMEM;

        for (size_t i = 0; i < x->n_buckets; i++)
                while (x->buckets[i]) {
                        Base *b = x->buckets[i];
                        size_t h;

                        x->buckets[i] = b->next;
                        h = base_hash(b->kind, b->device, b->inode) & (nb - 1);
                        b->next = n[h];
                        n[h] = b;
                }

        free(x->buckets);
        x->buckets = n;
        x->n_buckets = nb;
        return 0;
}

static int entry_cmp(const Entry *e, uint64_t offset, uint64_t end, const void *item) {
        if (e->offset != offset)
                return e->offset < offset ? -1 : 1;
        if (e->end != end)
                return e->end < end ? -1 : 1;
        if ((uintptr_t) e->item != (uintptr_t) item)
                return (uintptr_t) e->item < (uintptr_t) item ? -1 : 1;
        return 0;
}

/* First position whose entry is >= (offset, end, item). */
static size_t lower_bound(const Base *b, uint64_t offset, uint64_t end, const void *item) {
        size_t lo = 0, hi = b->n_entries;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (entry_cmp(&b->entries[mid], offset, end, item) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

static void recompute_max_end(Base *b, size_t from) {
        for (size_t i = from; i < b->n_entries; i++) {
                uint64_t prev = i > 0 ? b->entries[i - 1].max_end : 0;

                b->entries[i].max_end = b->entries[i].end > prev ? b->entries[i].end : prev;
        }
}

int range_index_add(RangeIndex *x, const Identity *id, void *item) {
        Base **slot, *b;
        uint64_t end;
        size_t pos;
        int r;

        if (!x || !id || id->size == 0)
                return -EINVAL;
        end = identity_end(id);

        slot = base_slot(x, id);
        b = *slot;
        if (b) {
                pos = lower_bound(b, id->offset, end, item);
                if (pos < b->n_entries && entry_cmp(&b->entries[pos], id->offset, end, item) == 0)
                        return -EEXIST;
        } else {
                /* Grow first, so that the new base lands in the final table. */
                r = grow(x);
                if (r < 0)
                        return r;

                b = calloc(1, sizeof(*b));
                if (!b)
                        return -ENOMEM;
                b->kind = id->kind;
                b->device = id->base_device;
                b->inode = id->base_inode;
                pos = 0;
        }

        if (b->n_entries == b->n_allocated) {
                size_t na = b->n_allocated ? b->n_allocated * 2 : 4;
                Entry *e;

                e = reallocarray(b->entries, na, sizeof(Entry));
                if (!e) {
                        if (b->n_entries == 0)
                                base_free(b); /* not linked yet */
                        return -ENOMEM;
                }
                b->entries = e;
                b->n_allocated = na;
        }

        memmove(b->entries + pos + 1, b->entries + pos, (b->n_entries - pos) * sizeof(Entry));
        b->entries[pos] = (Entry){.offset = id->offset, .end = end, .item = item};
        b->n_entries++;
        recompute_max_end(b, pos);

        if (b->n_entries == 1) {
                /* A new base: link it into the (possibly regrown) table. */
                slot = base_slot(x, id);
                assert(!*slot);
                *slot = b;
                x->n_bases++;
        }
        x->n_entries++;
        return 0;
}

int range_index_remove(RangeIndex *x, const Identity *id, void *item) {
        Base **slot, *b;
        uint64_t end;
        size_t pos;

        if (!x || !id)
                return -EINVAL;
        end = identity_end(id);

        slot = base_slot(x, id);
        b = *slot;
        if (!b)
                return -ENOENT;

        pos = lower_bound(b, id->offset, end, item);
        if (pos >= b->n_entries || entry_cmp(&b->entries[pos], id->offset, end, item) != 0)
                return -ENOENT;

        memmove(b->entries + pos, b->entries + pos + 1, (b->n_entries - pos - 1) * sizeof(Entry));
        b->n_entries--;
        x->n_entries--;

        if (b->n_entries == 0) {
                *slot = b->next;
                base_free(b);
                x->n_bases--;
        } else
                recompute_max_end(b, pos);

        return 0;
}

int range_index_foreach_intersecting(RangeIndex *x, const Identity *id,
                                     int (*cb)(void *item, void *userdata), void *userdata) {
        const Base *b;
        uint64_t start, end;
        size_t lo, hi, first, last;

        if (!x || !id || !cb)
                return -EINVAL;
        if (id->size == 0)
                return 0;
        start = id->offset;
        end = identity_end(id);

        b = *base_slot(x, id);
        if (!b)
                return 0;

        /* first = the first entry whose prefix maximum end reaches past start: every entry
         * before it ends at or before start. */
        lo = 0;
        hi = b->n_entries;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (b->entries[mid].max_end <= start)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        first = lo;

        /* last = the first entry starting at or after end: it and all after it miss. */
        lo = first;
        hi = b->n_entries;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (b->entries[mid].offset < end)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        last = lo;

        for (size_t i = first; i < last; i++) {
                int r;

                if (b->entries[i].end <= start)
                        continue; /* nested before a longer entry that does reach */
                r = cb(b->entries[i].item, userdata);
                if (r != 0)
                        return r;
        }
        return 0;
}
