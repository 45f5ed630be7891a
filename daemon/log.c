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
                [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit",
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

int log_internal(int level, int error, const char *file, int line, const char *func,
                 const char *format, ...) {
        int e = error < 0 ? -error : error;
        va_list ap;

        if (level > log_max_level)
                return -e;

        /* "<N>" prefixes let journald keep the level when we run under systemd. */
        fprintf(stderr, "<%d>", level);
        errno = e;
        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);
        if (level >= LOG_DEBUG)
                fprintf(stderr, " (%s:%d %s)", file, line, func);
        fputc('\n', stderr);

        errno = e;
        return -e;
}
