/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The object path that names a device (include/loopmgr-bus.h, the public contract): plain
 * string work, which the core uses to name devices and the bus layer to find them. */

#include <stdint.h>

/* LOOPMGR_DEVICE_PATH_PREFIX "/<diskseq>". */
int device_path_new(uint64_t diskseq, char **ret);
/* Parses the diskseq back; -EINVAL if the path is not a device path. */
int device_path_parse(const char *path, uint64_t *ret);
