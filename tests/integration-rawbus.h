/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * A deliberately minimal D-Bus client on a raw socket, for the one thing sd-bus refuses to do:
 * send a message whose 'h' (unix fd) argument is an index that does not refer to one of the
 * attached file descriptors. udisks crashed on exactly such a message until 2025 (a negative
 * index); a real client (GDBus) can send one, so the daemon must answer it with an error and
 * keep running.
 */

#include <stdint.h>

typedef struct RawReply {
        int type;            /* 2 = method return, 3 = error */
        char *error_name;    /* for errors */
        char *error_message; /* first string argument of an error, if any */
        char *sender;        /* unique name of whoever sent the reply */
} RawReply;

void raw_reply_done(RawReply *r);

/*
 * Connects to the bus at 'address' (a D-Bus address string; the first unix:path= or
 * unix:abstract= entry is used), says Hello, and calls destination/path/interface.member with
 * the body (h handle_index, a{sv} {}) while attaching the n_fds file descriptors in fds.
 * Waits at most timeout_usec for the reply. Returns 0 and fills *ret, or a negative errno
 * (-ECONNRESET if the bus closed the connection instead of replying).
 */
int raw_call_with_handle(const char *address, const char *destination, const char *path,
                         const char *interface, const char *member, uint32_t handle_index,
                         const int *fds, unsigned n_fds, uint64_t timeout_usec, RawReply *ret);
