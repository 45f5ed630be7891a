/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Calls the core answers later (waiter.c). */

#include "device.h"

/* Queues `call` on d (a reference is taken) with a timer of timeout_usec, after which
 * manager_waiter_timeout() answers it. */
int manager_add_waiter(Manager *m, Device *d, WaiterKind kind, Call *call, bool reused, uid_t uid,
                       uint64_t timeout_usec, Waiter **ret);
/* Removes w from d's list without freeing it. */
void waiter_unlink(Device *d, Waiter *w);
/* Frees w, dropping its reference on the call, unanswered. */
Waiter *waiter_free(Waiter *w);
/* Frees every waiter of d, unanswered (shutdown). */
void manager_free_waiters(Manager *m, Device *d);
