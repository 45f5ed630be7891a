/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

/* The one process-wide setting besides parsed arguments: it is a parsed argument. */
static int log_max_level = LOG_INFO;

void log_set_max_level(int level) {
        log_max_level = level;
}

int log_get_max_level(void) {
        return log_max_level;
}

int log_parse_level(const char *s) {
        static const char *const names[] = {
                [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",     [LOG_CRIT] = "crit",
                [LOG_ERR] = "err",     [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
                [LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
        };

        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (streq(s, names[i]))
                        return (int) i;
        if (streq(s, "error"))
                return LOG_ERR;
        return -EINVAL;
}

/* n advanced by a snprintf() result k, kept inside a buffer of size bytes (minus one). */
static size_t advance(size_t n, int k, size_t size) {
        if (k < 0)
                return n;
        return n + (size_t) k < size - 1 ? n + (size_t) k : size - 1;
}

int log_internal(int level, int error, const char *file, int line, const char *func,
                 const char *format, ...) {
        int e = error < 0 ? -error : error;
        va_list ap;

        if (level > log_max_level)
                return -e;

        /* "<N>" prefixes let journald keep the level when we run under systemd. One line, one
         * write: stderr is unbuffered, and three writes per line cost the attach path two
         * system calls for nothing (and let lines of two processes interleave). A line that
         * does not fit is cut. */
        char buf[2048];
        size_t n;
        int k;

        k = snprintf(buf, sizeof(buf), "<%d>", level);
        n = advance(0, k, sizeof(buf));
        errno = e;
        va_start(ap, format);
        k = vsnprintf(buf + n, sizeof(buf) - n, format, ap);
        va_end(ap);
        n = advance(n, k, sizeof(buf));
        if (level >= LOG_DEBUG) {
                k = snprintf(buf + n, sizeof(buf) - n, " (%s:%d %s)", file, line, func);
                n = advance(n, k, sizeof(buf));
        }
        buf[n++] = '\n'; /* n <= sizeof(buf) - 1 here */
        (void) fwrite(buf, 1, n, stderr);

        errno = e;
        return -e;
}
