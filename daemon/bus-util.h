/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <systemd/sd-bus.h>

#include "util.h"

/* Sets *error from a negative errno through loopmgr_error_map (our error names) or the sd-bus
 * built-ins, with a formatted message. Returns r. The only place errno becomes a name. */
int bus_error_set_errnof(sd_bus_error *error, int r, const char *format, ...) _printf_(3, 4);
/* Replies to a queued call with an error from errno and message. */
int bus_reply_errnof(sd_bus_message *m, int r, const char *format, ...) _printf_(3, 4);

/* Object path of a device: LOOPMGR_DEVICE_PATH_PREFIX "/<diskseq>". */
int bus_device_path(uint64_t diskseq, char **ret);
/* Parses the diskseq back; -EINVAL if the path is not a device path. */
int bus_device_path_parse(const char *path, uint64_t *ret);

/* uid of the sender of m: the effective uid the bus reports for its connection, never one read
 * from /proc (-EPERM then). */
int bus_message_sender_uid(sd_bus_message *m, uid_t *ret);

/* bus_message_sender_uid(), or AccessDenied with a sentence: nothing can be authorised for a
 * caller whose uid is unknown. */
int bus_sender_uid_or_deny(sd_bus_message *message, uid_t *ret_uid, sd_bus_error *error);

static inline void sd_bus_error_freep(sd_bus_error *e) {
        sd_bus_error_free(e);
}
