/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <stdio.h>

#include "device-path.h"
#include "loopmgr-bus.h"
#include "util.h"

int device_path_new(uint64_t diskseq, char **ret) {
        char *p;

        if (asprintf(&p, "%s/%" PRIu64, LOOPMGR_DEVICE_PATH_PREFIX, diskseq) < 0)
                return -ENOMEM;
        *ret = p;
        return 0;
}

int device_path_parse(const char *path, uint64_t *ret) {
        const char *prefix = LOOPMGR_DEVICE_PATH_PREFIX "/";
        uint64_t v;
        int r;

        if (!path || strncmp(path, prefix, strlen(prefix)) != 0)
                return -EINVAL;
        path += strlen(prefix);
        /* Only the spelling device_path_new() makes names an object: "device/042" is not
         * "device/42" (GetManagedObjects lists the latter only). */
        if (path[0] == '0' && path[1] != 0)
                return -EINVAL;
        r = safe_atou64(path, &v);
        if (r < 0)
                return r;
        *ret = v;
        return 0;
}
