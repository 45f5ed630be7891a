/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* uevent_parse_kernel() on arbitrary bytes. Byte 0 is skipped (it picked the group when udev's
 * format was parsed here too; the corpus keeps it), the rest is the message. Besides the
 * sanitizers, checks what a result of 1 promises. */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loop-kernel.h"
#include "uevent.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        UeventInfo info;
        unsigned number;
        char *copy;
        int r;

        if (size < 1)
                return 0;
        /* An exact-size heap copy, so that ASan sees any read past the message. */
        copy = malloc(size - 1 ?: 1);
        if (!copy)
                return 0;
        memcpy(copy, data + 1, size - 1);
        r = uevent_parse_kernel(copy, size - 1, &info);
        if (r == 1) {
                if (!info.action || loop_name_to_number(info.sysname, &number) < 0)
                        abort();
                if ((const char *) info.action < copy ||
                    (const char *) info.action >= copy + size - 1)
                        abort();
        } else if (r != 0 && r != -EBADMSG)
                abort();
        free(copy);
        return 0;
}
