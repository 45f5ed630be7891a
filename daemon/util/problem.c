/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdarg.h>
#include <stdio.h>

#include "problem.h"

int problem_setfv(Problem *p, int error, const char *format, va_list ap) {
        char *text = NULL;

        if (error == 0)
                error = -EIO;
        if (error > 0)
                error = -error;
        if (!p)
                return error;
        if (vasprintf(&text, format, ap) < 0)
                text = NULL;
        free(p->message);
        p->error = error;
        p->message = text;
        return error;
}

int problem_setf(Problem *p, int error, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        error = problem_setfv(p, error, format, ap);
        va_end(ap);
        return error;
}

void problem_done(Problem *p) {
        if (!p)
                return;
        free(p->message);
        *p = PROBLEM_NULL;
}
