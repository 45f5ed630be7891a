/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The ownership record: round trip, and every kind of damage detected rather than trusted. */

#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "state.h"
#include "util.h"
#include "test-state.h"

void make_sample(State *s) {
        StateDevice *d;

        *s = (State){};
        assert_int_equal(state_add_device(s, "loop3", 412, false, 1000, &d), 0);
        assert_int_equal(state_device_add_ref(d, 1000, LIFETIME_PERSISTENT, NULL, true), 0);
        assert_int_equal(state_device_add_ref(d, 0, LIFETIME_CLIENT, ":1.42", false), 0);
        assert_int_equal(state_add_device(s, "loop12", 9000000000ULL, true, 0, &d), 0);
        s->has_intent = true;
        s->intent = (StateIntent){
                .device = 65024, .inode = 403311, .offset = 4096, .size_limit = 0, .uid = 1000};
}

/* ---- the journal ------------------------------------------------------------------------ */

bool states_same(const State *a, const State *b) {
        /* The order of devices is not part of the record's meaning: a journal appends. */
        if (a->n_devices != b->n_devices || a->has_intent != b->has_intent)
                return false;
        if (a->has_intent &&
            (a->intent.is_block != b->intent.is_block || a->intent.device != b->intent.device ||
             a->intent.inode != b->intent.inode || a->intent.offset != b->intent.offset ||
             a->intent.size_limit != b->intent.size_limit || a->intent.uid != b->intent.uid))
                return false;
        for (size_t i = 0; i < a->n_devices; i++) {
                const StateDevice *x = &a->devices[i], *y = state_find(b, x->name, x->diskseq);

                if (!y || x->pending != y->pending || x->owner_uid != y->owner_uid ||
                    x->n_refs != y->n_refs)
                        return false;
                for (size_t j = 0; j < x->n_refs; j++)
                        if (x->refs[j].uid != y->refs[j].uid ||
                            x->refs[j].lifetime != y->refs[j].lifetime ||
                            x->refs[j].confirmed != y->refs[j].confirmed ||
                            !streq_ptr(x->refs[j].owner, y->refs[j].owner))
                                return false;
        }
        return true;
}

static int compare_number(const void *a, const void *b) {
        const StateDevice *x = a, *y = b;

        return x->number < y->number ? -1 : x->number > y->number;
}

int writer_save(StateWriter *w, State *s) {
        int r;

        if (s->n_devices > 1)
                qsort(s->devices, s->n_devices, sizeof(StateDevice), compare_number);
        state_writer_begin(w);
        for (size_t i = 0; i < s->n_devices; i++) {
                StateDevice d = s->devices[i];
                StateRef *refs = state_writer_refs(w, d.n_refs);

                assert_true(refs || d.n_refs == 0);
                if (d.n_refs > 0)
                        memcpy(refs, d.refs, d.n_refs * sizeof(StateRef));
                d.refs = refs;
                r = state_writer_device(w, &d);
                if (r < 0)
                        return r;
        }
        return state_writer_commit(w, s->has_intent, &s->intent);
}

void state_copy_without(const State *s, const char *skip, State *ret) {
        *ret = (State){.has_intent = s->has_intent, .intent = s->intent};
        for (size_t i = 0; i < s->n_devices; i++) {
                const StateDevice *d = &s->devices[i];
                StateDevice *n;

                if (skip && streq(d->name, skip))
                        continue;
                assert_int_equal(
                        state_add_device(ret, d->name, d->diskseq, d->pending, d->owner_uid, &n),
                        0);
                for (size_t j = 0; j < d->n_refs; j++)
                        assert_int_equal(state_device_add_ref(n, d->refs[j].uid,
                                                              d->refs[j].lifetime, d->refs[j].owner,
                                                              d->refs[j].confirmed),
                                         0);
        }
}

void state_copy(const State *s, State *ret) {
        state_copy_without(s, NULL, ret);
}

static uint64_t rnd_state = 88172645463325252ULL;

unsigned rnd(unsigned n) {
        rnd_state ^= rnd_state << 13;
        rnd_state ^= rnd_state >> 7;
        rnd_state ^= rnd_state << 17;
        return (unsigned) (rnd_state % n);
}

int other_lifetime(void) {
        for (int l = 0; lifetime_to_string((Lifetime) l); l++)
                if (l != LIFETIME_PERSISTENT && l != LIFETIME_CLIENT)
                        return l;
        return -1;
}

void mutate(State *s, uint64_t *diskseq) {
        unsigned op = rnd(8);
        char name[16], owner[64];
        StateDevice *d;

        if (s->n_devices == 0 || op == 0) {
                unsigned nr = rnd(64);

                snprintf(name, sizeof(name), "loop%u", nr);
                for (size_t i = 0; i < s->n_devices; i++)
                        if (streq(s->devices[i].name, name))
                                return;
                assert_int_equal(state_add_device(s, name, ++*diskseq, false, rnd(3) * 1000, &d),
                                 0);
                snprintf(owner, sizeof(owner), ":1.%u", rnd(1000));
                assert_int_equal(
                        state_device_add_ref(d, d->owner_uid,
                                             rnd(2) ? LIFETIME_CLIENT : LIFETIME_PERSISTENT, owner,
                                             false),
                        0);
                return;
        }

        d = &s->devices[rnd((unsigned) s->n_devices)];
        switch (op) {
        case 1: {
                int l = other_lifetime();

                snprintf(owner, sizeof(owner), ":1.%u", rnd(1000));
                if (l >= 0 && rnd(2))
                        /* Spaces, a backslash, a newline, a lone dash: all must survive. */
                        snprintf(owner, sizeof(owner), "%s",
                                 (const char *[]){"/mnt/a b", "/run/x\\y\nz", "-",
                                                  "/m\xc3\xa9"}[rnd(4)]);
                else
                        l = rnd(2) ? LIFETIME_CLIENT : LIFETIME_PERSISTENT;
                assert_int_equal(state_device_add_ref(d, rnd(2000), (Lifetime) l, owner, rnd(2)),
                                 0);
                break;
        }
        case 2:
                for (size_t j = 0; j < d->n_refs; j++)
                        d->refs[j].confirmed = true;
                break;
        case 3:
                d->pending = !d->pending;
                break;
        case 4:
        case 5: {
                size_t i = (size_t) (d - s->devices);

                for (size_t j = 0; j < d->n_refs; j++)
                        free(d->refs[j].owner);
                free(d->refs);
                memmove(d, d + 1, (s->n_devices - i - 1) * sizeof(StateDevice));
                s->n_devices--;
                break;
        }
        case 6:
                s->has_intent = true;
                s->intent = (StateIntent){.is_block = rnd(2),
                                          .device = rnd(1000),
                                          .inode = rnd(100000),
                                          .offset = rnd(4) * 512,
                                          .uid = rnd(2000)};
                break;
        default:
                s->has_intent = false;
                break;
        }
}

char *make_temp_dir(void) {
        char *dir = strdup("/tmp/loopmgr-test-state-XXXXXX");

        assert_non_null(dir);
        assert_non_null(mkdtemp(dir));
        return dir;
}

void remove_dir(char *dir) {
        char cmd[128];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        assert_int_equal(system(cmd), 0);
        free(dir);
}

struct stat stat_in(const char *dir, const char *name) {
        char path[128];
        struct stat st = {};

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        assert_int_equal(stat(path, &st), 0);
        return st;
}

void expect_load(const char *dir, const State *want) {
        State t = {};

        assert_int_equal(state_load(dir, &t), 0);
        assert_true(states_same(want, &t));
        state_done(&t);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_round_trip),        cmocka_unit_test(test_empty),
                cmocka_unit_test(test_damage_detected),   cmocka_unit_test(test_semantic_errors),
                cmocka_unit_test(test_save_load),         cmocka_unit_test(test_writer_round_trip),
                cmocka_unit_test(test_writer_commit_one), cmocka_unit_test(test_writer_compaction),
                cmocka_unit_test(test_journal_damage),    cmocka_unit_test(test_journal_semantics),
                cmocka_unit_test(test_owner_escaping),    cmocka_unit_test(test_boot_id),
        };

        return cmocka_run_group_tests_name("state", tests, NULL, NULL);
}
