/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <systemd/sd-bus.h>

#include "device-path.h"
#include "problem.h"
#include "util.h"

/* Sets *error from a negative errno through loopmgr_error_map (our error names) or the sd-bus
 * built-ins, with a formatted message. Returns r. The only place errno becomes a name. */
int bus_error_set_errnof(sd_bus_error *error, int r, const char *format, ...) _printf_(3, 4);
/* The same from a core Problem (an errno and a sentence). */
int bus_error_set_problem(sd_bus_error *error, const Problem *p);
/* Replies to a queued call with an error from errno and message. */
int bus_reply_errnof(sd_bus_message *m, int r, const char *format, ...) _printf_(3, 4);

/*
 * The uids of the last few callers, by unique bus name. Without a cache every call costs a
 * synchronous GetConnectionCredentials round trip to the bus daemon (the system bus does not
 * attach credentials to messages): the larger part of what an Attach spends on the bus. A
 * unique name names one connection for the lifetime of the bus and is never given out again,
 * and the bus daemon recorded that connection's uid once, at connect: the answer cannot
 * change. The bus's id is part of the key, in case we ever talk to another bus instance.
 */
#define SENDER_UID_CACHE_SIZE 32U

typedef struct SenderUid {
        sd_id128_t bus_id;
        char name[64];
        uid_t uid;
        uint64_t used; /* 0: empty */
} SenderUid;

typedef struct SenderUidCache {
        SenderUid entries[SENDER_UID_CACHE_SIZE];
        uint64_t clock;
} SenderUidCache;

/* uid of the sender of m: the effective uid the bus reports for its connection, never one read
 * from /proc (-EPERM then). c: the cache to use (NULL: none). */
int bus_message_sender_uid(SenderUidCache *c, sd_bus_message *m, uid_t *ret);

/* bus_message_sender_uid(), or AccessDenied with a sentence: nothing can be authorised for a
 * caller whose uid is unknown. */
int bus_sender_uid_or_deny(SenderUidCache *c, sd_bus_message *message, uid_t *ret_uid,
                           sd_bus_error *error);

static inline void sd_bus_error_freep(sd_bus_error *e) {
        sd_bus_error_free(e);
}
