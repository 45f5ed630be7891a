/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * A failure the core explains to whoever asked: a negative errno and one sentence. Core
 * operations fill one instead of building bus errors; the bus layer turns it into the error
 * name and message of its reply (bus-util.h, bus_error_set_problem()), the one place where an
 * errno becomes a name.
 */

#include <stdarg.h>

#include "util.h"

typedef struct Problem {
        int error;     /* negative errno; 0 when nothing was set */
        char *message; /* owned; NULL when none could be made (out of memory) */
} Problem;

#define PROBLEM_NULL ((Problem){})

/* Sets p (which may be NULL: the sentence is not wanted) and returns error (negative; 0
 * becomes -EIO). An earlier problem in p is replaced. */
int problem_setf(Problem *p, int error, const char *format, ...) _printf_(3, 4);
int problem_setfv(Problem *p, int error, const char *format, va_list ap) _printf_(3, 0);
void problem_done(Problem *p);
/* Whether p was set. */
static inline bool problem_is_set(const Problem *p) {
        return p && p->error != 0;
}
