/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdarg.h>
#include <stdio.h>

#include "problem.h"

int problem_setf(Problem *p, int error, const char *format, ...) {
        char *text = NULL;
        va_list ap;

        if (error == 0)
                error = -EIO;
        if (error > 0)
                error = -error;
        if (!p)
                return error;
        va_start(ap, format);
        if (vasprintf(&text, format, ap) < 0)
                text = NULL;
        va_end(ap);
        free(p->message);
        p->error = error;
        p->message = text;
        return error;
}

void problem_done(Problem *p) {
        if (!p)
                return;
        free(p->message);
        *p = PROBLEM_NULL;
}
