/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * What the benchmark clients (bench-attach, bench-peers) share: the clock, quantiles and table
 * cells (cleanup helpers: include/loopmgr-cleanup.h). Header-only: the benchmarks link no part
 * of the daemon, so that they measure it from outside.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "loopmgr-cleanup.h"

#define MIB (UINT64_C(1) << 20)

static inline double now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e6 + (double) ts.tv_nsec / 1e3;
}

static inline int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;

        return x < y ? -1 : x > y;
}

/* Linear interpolation between closest ranks (numpy's default), on a sorted array. */
static inline double quantile(const double *sorted, size_t n, double q) {
        double pos = q * (double) (n - 1), frac;
        size_t lo = (size_t) pos;

        if (lo + 1 >= n)
                return sorted[n - 1];
        frac = pos - (double) lo;
        return sorted[lo] + frac * (sorted[lo + 1] - sorted[lo]);
}

/* Table cells: no pipes, no newlines. */
static inline void put_cell(FILE *f, const char *s) {
        for (; s && *s; s++)
                fputc(*s == '|' ? '/' : *s == '\n' ? ' ' : *s, f);
}
