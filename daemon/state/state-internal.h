/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What state.c and state-writer.c share; not for other modules (state.h is the interface). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "state.h"
#include "util.h"

#define STATE_MAGIC       "loopmgr-state 1\n"
#define JOURNAL_MAGIC     "loopmgr-journal 1 "
#define STATE_MAX_SIZE    (64u * 1024u * 1024u)
#define OWNER_MAX         4096
#define JOURNAL_MIN_LIMIT (64u * 1024u)
#define NO_DEVICE         SIZE_MAX
#define FNV_OFFSET        UINT64_C(0xcbf29ce484222325)

typedef struct Buf {
        char *data;
        size_t len, allocated;
        bool failed;
} Buf;

uint64_t fnv1a64_update(uint64_t h, const char *p, size_t n);
uint64_t fnv1a64(const char *p, size_t n);
void buf_done(Buf *b);
void buf_printf(Buf *b, const char *format, ...) _printf_(2, 3);
void format_device(Buf *b, const StateDevice *d);
void format_intent(Buf *b, const StateIntent *in);
void device_done(StateDevice *d);
int state_grow(State *s);
int device_copy(StateDevice *dst, const StateDevice *src);
bool devices_equal(const StateDevice *a, const StateDevice *b);
bool intents_equal(const StateIntent *a, const StateIntent *b);
void state_remove_at(State *s, size_t i);
void format_snapshot(Buf *b, const State *s);
int write_temporary(const char *tmp, const char *text, size_t len, bool sync);
