/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-state share: a sample record, the writer's helpers (comparison,
 * copies, random changes, temporary directories), and its tests. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "state.h"
#include "util.h"

void make_sample(State *s);

bool states_same(const State *a, const State *b);

/* One save through the writer, as the manager does it: devices in increasing number. */
int writer_save(StateWriter *w, State *s);

/* A copy of s, without the device called skip (if any; NULL: all of them). */
void state_copy_without(const State *s, const char *skip, State *ret);

void state_copy(const State *s, State *ret);
unsigned rnd(unsigned n);

/* A lifetime other than persistent and client, if options.c has one (e.g. mount): its owner
 * is free text and exercises the escaping. -1 if none. */
int other_lifetime(void);

/* One random change of the kind the manager makes. */
void mutate(State *s, uint64_t *diskseq);

char *make_temp_dir(void);
void remove_dir(char *dir);
struct stat stat_in(const char *dir, const char *name);
void expect_load(const char *dir, const State *want);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_round_trip(void **state);
void test_empty(void **state);
void test_damage_detected(void **state);
void test_semantic_errors(void **state);
void test_save_load(void **state);
void test_owner_escaping(void **state);
void test_boot_id(void **state);
void test_writer_round_trip(void **state);
void test_writer_commit_one(void **state);
void test_writer_compaction(void **state);
void test_journal_damage(void **state);
void test_journal_semantics(void **state);
