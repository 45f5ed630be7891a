/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The few helpers loopmgrctl needs besides include/loopmgr-cleanup.h, in the shape of the
 * daemon's util.h. The client does not include daemon headers: include/ is the only thing the
 * two share.
 */

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loopmgr-cleanup.h"

static inline void fclosep(FILE **f) {
        if (*f)
                (void) fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

static inline size_t strv_length(char *const *l) {
        size_t n = 0;
        for (; l && l[n]; n++)
                ;
        return n;
}

static inline const char *strempty(const char *s) {
        return s ?: "";
}

/* A new string formatted as printf() would; NULL when out of memory. */
_printf_(1, 2) static inline char *strdup_printf(const char *fmt, ...) {
        va_list ap;
        char *s;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&s, fmt, ap);
        va_end(ap);
        return r < 0 ? NULL : s;
}
