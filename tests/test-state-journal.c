/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-state's tests of the writer and the journal: round trip, one device at a time,
 * compaction, damage, semantics. */

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

void test_writer_round_trip(void **state) {
        _cleanup_(state_writer_freep) StateWriter *w = NULL;
        char *dir = make_temp_dir();
        uint64_t diskseq = 100;
        struct stat snap, journal, st;
        State s = {};

        assert_int_equal(state_writer_new(dir, &w), 0);

        /* The first save writes a snapshot and an empty journal. */
        make_sample(&s);
        assert_int_equal(writer_save(w, &s), 0);
        expect_load(dir, &s);
        snap = stat_in(dir, "devices");
        journal = stat_in(dir, "devices.journal");

        /* Saving what is already on disk writes nothing. */
        assert_int_equal(writer_save(w, &s), 0);
        st = stat_in(dir, "devices.journal");
        assert_int_equal(st.st_size, journal.st_size);

        /* Changes go to the journal; the snapshot stays as it is. */
        for (unsigned i = 0; i < 300; i++) {
                mutate(&s, &diskseq);
                assert_int_equal(writer_save(w, &s), 0);
                expect_load(dir, &s);
        }
        st = stat_in(dir, "devices");
        assert_int_equal(st.st_ino, snap.st_ino);
        st = stat_in(dir, "devices.journal");
        assert_true(st.st_size > journal.st_size);

        /* A persistent reference handed over with an owner: recorded without one, and a
         * second save with the same input finds nothing changed. */
        {
                StateRef ref = {.uid = 5,
                                .lifetime = LIFETIME_PERSISTENT,
                                .owner = (char *) ":1.9",
                                .confirmed = true};
                StateDevice d = {.name = "loop900", .diskseq = 77, .refs = &ref, .n_refs = 1};
                StateDevice *added;
                State with = {};

                state_copy(&s, &with);
                assert_int_equal(state_add_device(&with, "loop900", 77, false, 0, &added), 0);
                assert_int_equal(state_device_add_ref(added, 5, LIFETIME_PERSISTENT, NULL, true),
                                 0);
                for (unsigned k = 0; k < 2; k++) {
                        state_writer_begin(w);
                        for (size_t i = 0; i < s.n_devices; i++)
                                assert_int_equal(state_writer_device(w, &s.devices[i]), 0);
                        assert_int_equal(state_writer_device(w, &d), 0);
                        assert_int_equal(state_writer_commit(w, s.has_intent, &s.intent), 0);
                        if (k == 0)
                                journal = stat_in(dir, "devices.journal");
                }
                st = stat_in(dir, "devices.journal");
                assert_int_equal(st.st_size, journal.st_size);
                expect_load(dir, &with);
                state_done(&with);
                assert_int_equal(writer_save(w, &s), 0);
                expect_load(dir, &s);
        }

        /* Out of order: refused, and the next save writes everything anew. */
        if (s.n_devices >= 2) {
                StateDevice d = s.devices[1];

                state_writer_begin(w);
                d.refs = NULL;
                d.n_refs = 0;
                assert_int_equal(state_writer_device(w, &d), 0);
                d = s.devices[0];
                d.refs = NULL;
                d.n_refs = 0;
                assert_int_equal(state_writer_device(w, &d), -EINVAL);
                assert_int_equal(writer_save(w, &s), 0);
                st = stat_in(dir, "devices");
                assert_int_not_equal(st.st_ino, snap.st_ino);
                expect_load(dir, &s);
        }

        state_done(&s);
        remove_dir(dir);
}

/* Saves of one device at a time (the manager's attach and removal paths): each replaces, adds
 * or drops one record and keeps the others, through compactions, and loads back exactly. */
void test_writer_commit_one(void **state) {
        _cleanup_(state_writer_freep) StateWriter *w = NULL;
        char *dir = make_temp_dir();
        StateIntent intent = {.device = 2049, .inode = 12, .size_limit = 4096, .uid = 1000};
        uint64_t diskseq = 500;
        State s = {};

        assert_int_equal(state_writer_new(dir, &w), 0);
        state_writer_set_journal_limit(w, 512);

        /* Not in sync with the files before the first full save: the caller must make one. */
        assert_int_equal(state_writer_commit_one(w, NULL, false, NULL), -ESTALE);
        assert_int_equal(state_writer_commit_drop(w, "loop1", false, NULL), -ESTALE);

        make_sample(&s);
        assert_int_equal(writer_save(w, &s), 0);
        expect_load(dir, &s);

        for (unsigned i = 0; i < 400; i++) {
                char name[16];
                State next = {};
                bool with_intent = rnd(4) == 0;

                (void) snprintf(name, sizeof(name), "loop%u", rnd(24));
                state_copy_without(&s, name, &next);
                next.has_intent = with_intent;
                if (with_intent)
                        intent.offset = 512ULL * i;

                switch (rnd(3)) {
                case 0: { /* add or replace name */
                        StateDevice *d;
                        unsigned n_refs = rnd(4);

                        assert_int_equal(
                                state_add_device(&next, name, ++diskseq, rnd(2), rnd(3) * 1000, &d),
                                0);
                        for (unsigned j = 0; j < n_refs; j++) {
                                Lifetime lt = (Lifetime) rnd(3);
                                const char *owner = lt == LIFETIME_CLIENT  ? ":1.42"
                                                    : lt == LIFETIME_MOUNT ? "/run/media/u/x y"
                                                                           : NULL;

                                assert_int_equal(
                                        state_device_add_ref(d, 1000 + j, lt, owner, rnd(2)), 0);
                        }
                        assert_int_equal(state_writer_commit_one(w, d, with_intent, &intent), 0);
                        break;
                }
                case 1: /* drop name, recorded or not */
                        assert_int_equal(state_writer_commit_drop(w, name, with_intent, &intent),
                                         0);
                        break;
                default: /* only the intent changes */
                        state_done(&next);
                        state_copy(&s, &next);
                        next.has_intent = with_intent;
                        next.intent = intent;
                        assert_int_equal(state_writer_commit_one(w, NULL, with_intent, &intent), 0);
                        break;
                }
                if (with_intent)
                        next.intent = intent;
                expect_load(dir, &next);
                state_done(&s);
                s = next;
        }

        /* A full save afterwards agrees with what the partial ones left. */
        assert_int_equal(writer_save(w, &s), 0);
        expect_load(dir, &s);

        state_done(&s);
        remove_dir(dir);
}

void test_writer_compaction(void **state) {
        _cleanup_(state_writer_freep) StateWriter *w = NULL;
        char *dir = make_temp_dir();
        uint64_t diskseq = 100;
        unsigned compactions = 0;
        struct stat prev, st;
        State s = {};

        assert_int_equal(state_writer_new(dir, &w), 0);
        state_writer_set_journal_limit(w, 600);
        assert_int_equal(writer_save(w, &s), 0);
        prev = stat_in(dir, "devices");

        for (unsigned i = 0; i < 400; i++) {
                mutate(&s, &diskseq);
                assert_int_equal(writer_save(w, &s), 0);
                expect_load(dir, &s);
                st = stat_in(dir, "devices.journal");
                assert_true(st.st_size <= 600);
                st = stat_in(dir, "devices");
                if (st.st_ino != prev.st_ino)
                        compactions++;
                prev = st;
        }
        assert_true(compactions >= 10);

        /* No temporary file is left behind. */
        assert_int_equal(access(dir, F_OK), 0);
        {
                char path[128];

                snprintf(path, sizeof(path), "%s/.devices.journal.tmp", dir);
                assert_int_equal(access(path, F_OK), -1);
                snprintf(path, sizeof(path), "%s/.devices.tmp", dir);
                assert_int_equal(access(path, F_OK), -1);
        }

        state_done(&s);
        remove_dir(dir);
}

static void write_file_in(const char *dir, const char *name, const char *data, size_t len) {
        char path[128];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        f = fopen(path, "we");
        assert_non_null(f);
        assert_int_equal(fwrite(data, 1, len, f), len);
        assert_int_equal(fclose(f), 0);
}

static char *read_file_in(const char *dir, const char *name, size_t *ret_len) {
        char path[128];
        struct stat st;
        char *buf;
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", dir, name);
        f = fopen(path, "re");
        assert_non_null(f);
        assert_int_equal(fstat(fileno(f), &st), 0);
        buf = malloc((size_t) st.st_size + 1);
        assert_non_null(buf);
        assert_int_equal(fread(buf, 1, (size_t) st.st_size, f), (size_t) st.st_size);
        fclose(f);
        *ret_len = (size_t) st.st_size;
        return buf;
}

/* 1 if the record loads as want, -1 if it is refused (-EBADMSG); fails the test for anything
 * else (another state, another error). */
static int loads_as(const char *dir, const State *want) {
        State t = {};
        int r;

        r = state_load(dir, &t);
        if (r == -EBADMSG)
                return -1;
        assert_int_equal(r, 0);
        r = states_same(want, &t);
        state_done(&t);
        if (!r)
                fail_msg("the record loaded as another state");
        return 1;
}

void test_journal_damage(void **state) {
        _cleanup_(state_writer_freep) StateWriter *w = NULL;
        char *dir = make_temp_dir();
        uint64_t diskseq = 500;
        State *states[21] = {};
        size_t ends[21], n = 20, len, header;
        _cleanup_free_ char *journal = NULL, *copy = NULL, *old = NULL;
        size_t old_len;

        assert_int_equal(state_writer_new(dir, &w), 0);
        states[0] = calloc(1, sizeof(State));
        assert_non_null(states[0]);
        make_sample(states[0]);
        assert_int_equal(writer_save(w, states[0]), 0);
        ends[0] = (size_t) stat_in(dir, "devices.journal").st_size;
        for (size_t k = 1; k <= n; k++) {
                states[k] = calloc(1, sizeof(State));
                assert_non_null(states[k]);
                state_copy(states[k - 1], states[k]);
                do
                        mutate(states[k], &diskseq);
                while (states_same(states[k], states[k - 1]));
                assert_int_equal(writer_save(w, states[k]), 0);
                ends[k] = (size_t) stat_in(dir, "devices.journal").st_size;
                assert_true(ends[k] > ends[k - 1]);
        }
        journal = read_file_in(dir, "devices.journal", &len);
        assert_int_equal(len, ends[n]);
        header = ends[0];
        assert_int_equal(loads_as(dir, states[n]), 1);

        /* Every truncation: a torn last record is ignored, the records before it count. A
         * journal cut inside its header (never written that way) is refused. */
        for (size_t t = 0; t < len; t++) {
                size_t whole = 0;

                write_file_in(dir, "devices.journal", journal, t);
                for (size_t k = 0; k <= n; k++)
                        if (ends[k] <= t)
                                whole = k;
                if (t < header)
                        assert_int_equal(state_load(dir, &(State){}), -EBADMSG);
                else
                        assert_int_equal(loads_as(dir, states[whole]), 1);
        }

        /* Every single-byte change: in the last record it is a torn write (the state before
         * it), before that damage (refused) or a journal of another generation (the snapshot
         * alone); never anything else. */
        copy = malloc(len);
        assert_non_null(copy);
        for (size_t i = 0; i < len; i++)
                for (unsigned bit = 0; bit < 8; bit += 3) {
                        memcpy(copy, journal, len);
                        copy[i] ^= (char) (1u << bit);
                        write_file_in(dir, "devices.journal", copy, len);
                        if (i >= ends[n - 1])
                                assert_int_equal(loads_as(dir, states[n - 1]), 1);
                        else if (i >= header)
                                assert_int_equal(loads_as(dir, states[0]), -1);
                        else
                                (void) loads_as(dir, states[0]);
                }

        /* Garbage after the last record is a torn record too (so is a copy of the last
         * record: its chained checksum fails); a record repeated before another is not. */
        free(copy);
        copy = malloc(len * 3);
        assert_non_null(copy);
        memcpy(copy, journal, len);
        memcpy(copy + len, "record 99\ndevice lo", 19);
        write_file_in(dir, "devices.journal", copy, len + 19);
        assert_int_equal(loads_as(dir, states[n]), 1);
        memcpy(copy + len, journal + ends[n - 1], len - ends[n - 1]);
        write_file_in(dir, "devices.journal", copy, len + len - ends[n - 1]);
        assert_int_equal(loads_as(dir, states[n]), 1);
        memcpy(copy + len + len - ends[n - 1], journal + ends[n - 1], len - ends[n - 1]);
        write_file_in(dir, "devices.journal", copy, len + 2 * (len - ends[n - 1]));
        assert_int_equal(loads_as(dir, states[0]), -1);

        /* A journal from before the last compaction is ignored: the snapshot contains it. */
        old = read_file_in(dir, "devices.journal", &old_len);
        write_file_in(dir, "devices.journal", journal, len);
        state_writer_set_journal_limit(w, 1);
        assert_int_equal(writer_save(w, states[0]), 0);
        write_file_in(dir, "devices.journal", journal, len);
        assert_int_equal(loads_as(dir, states[0]), 1);

        /* No journal at all: the snapshot. */
        {
                char path[128];

                snprintf(path, sizeof(path), "%s/devices.journal", dir);
                assert_int_equal(unlink(path), 0);
                assert_int_equal(loads_as(dir, states[0]), 1);
        }

        for (size_t k = 0; k <= n; k++) {
                state_done(states[k]);
                free(states[k]);
        }
        remove_dir(dir);
}

/* A journal with correct checksums around arbitrary records. */
static char *journal_with(uint64_t generation, const char *const *bodies, size_t n) {
        char *out = NULL;
        uint64_t h;
        size_t len;
        FILE *f = open_memstream(&out, &len);

        assert_non_null(f);
        fprintf(f, "loopmgr-journal 1 %016llx\n", (unsigned long long) generation);
        fflush(f);
        h = UINT64_C(0xcbf29ce484222325);
        for (size_t i = 0; i < len; i++) {
                h ^= (unsigned char) out[i];
                h *= UINT64_C(0x100000001b3);
        }
        for (size_t r = 0; r < n; r++) {
                size_t start;

                fflush(f);
                start = len;
                fputs(bodies[r], f);
                fflush(f);
                for (size_t i = start; i < len; i++) {
                        h ^= (unsigned char) out[i];
                        h *= UINT64_C(0x100000001b3);
                }
                fprintf(f, "commit %016llx\n", (unsigned long long) h);
        }
        fclose(f);
        return out;
}

void test_journal_semantics(void **state) {
        static const char *const bad[] = {
                "record 1\ndrop loop9 1\n",                 /* not there */
                "record 1\ndrop loop3 999\n",               /* another binding */
                "record 2\n",                               /* out of sequence */
                "record 1\nref 0 persistent - confirmed\n", /* ref before device */
                "record 1\nend 0000000000000000\n",         /* snapshot line */
                "record 1\ngeneration 0000000000000001\n",  /* snapshot line */
                "record 1\ndevice loop3 1 attached 0\nref 0 client - confirmed\n",
                "record 1\ndevice loop4 1 attached 0\nref 0 x\\x41 persistent confirmed\n",
                "record 1\nno-intent\nref 0 persistent - confirmed\n",
        };
        char *dir = make_temp_dir();
        State s = {}, t = {};
        char *j;

        make_sample(&s);
        s.has_generation = true;
        s.generation = 0x1234;
        assert_int_equal(state_save(dir, &s), 0);

        /* Replace, drop, intents, a record that changes nothing. */
        j = journal_with(0x1234,
                         (const char *const[]){
                                 "record 1\ndevice loop3 412 detach-pending 7\nref 5 persistent - "
                                 "unconfirmed\n",
                                 "record 2\ndrop loop12 9000000000\nno-intent\n",
                                 "record 3\n",
                                 "record 4\nintent block 2049 0 0 0 3\ndevice loop0 1 attached 0\n",
                         },
                         4);
        write_file_in(dir, "devices.journal", j, strlen(j));
        free(j);
        assert_int_equal(state_load(dir, &t), 0);
        assert_int_equal(t.n_devices, 2);
        assert_true(t.devices[0].pending);
        assert_int_equal(t.devices[0].owner_uid, 7);
        assert_int_equal(t.devices[0].n_refs, 1);
        assert_int_equal(t.devices[0].refs[0].uid, 5);
        assert_false(t.devices[0].refs[0].confirmed);
        assert_string_equal(t.devices[1].name, "loop0");
        assert_true(t.has_intent);
        assert_true(t.intent.is_block);
        assert_int_equal(t.intent.device, 2049);
        state_done(&t);

        /* Another generation's journal is not applied. */
        j = journal_with(0x1235, (const char *const[]){"record 1\ndrop loop3 412\n"}, 1);
        write_file_in(dir, "devices.journal", j, strlen(j));
        free(j);
        assert_int_equal(state_load(dir, &t), 0);
        assert_true(states_same(&s, &t));
        state_done(&t);

        /* Correctly checksummed nonsense is refused, whether last or not. */
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                for (size_t last = 0; last < 2; last++) {
                        j = journal_with(0x1234, (const char *const[]){bad[i], "record 2\n"},
                                         last ? 1 : 2);
                        write_file_in(dir, "devices.journal", j, strlen(j));
                        free(j);
                        print_message("bad record %zu\n", i);
                        assert_int_equal(state_load(dir, &t), -EBADMSG);
                }
        }

        state_done(&s);
        remove_dir(dir);
}
