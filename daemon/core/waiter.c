/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Waiters: calls the core answers later (an Attach until udev has processed the binding, a
 * Detach until the teardown), each with its timer. The call is the bus layer's (notify.h):
 * the core holds a reference and answers it through the send operations.
 */

#include "manager.h"
#include "waiter.h"

void waiter_unlink(Device *d, Waiter *w) {
        for (Waiter **i = &d->waiters; *i; i = &(*i)->next)
                if (*i == w) {
                        *i = w->next;
                        w->next = NULL;
                        return;
                }
}

static int on_waiter_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Waiter *w = userdata;

        manager_waiter_timeout(w->manager, w);
        return 0;
}

int manager_add_waiter(Manager *m, Device *d, WaiterKind kind, Call *call, bool reused, uid_t uid,
                       uint64_t timeout_usec, Waiter **ret) {
        Waiter *w;
        int r;

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->manager = m;
        w->device = d;
        w->kind = kind;
        w->reused = reused;
        w->uid = uid;
        w->call = m->send && m->send->call_ref ? m->send->call_ref(call) : call;

        r = sd_event_add_time_relative(m->event, &w->timeout, CLOCK_MONOTONIC, timeout_usec, 0,
                                       on_waiter_timeout, w);
        if (r < 0) {
                waiter_free(w);
                return r;
        }

        w->next = d->waiters;
        d->waiters = w;
        if (ret)
                *ret = w;
        return 0;
}

Waiter *waiter_free(Waiter *w) {
        if (!w)
                return NULL;
        sd_event_source_disable_unref(w->timeout);
        if (w->manager->send && w->manager->send->call_unref)
                w->manager->send->call_unref(w->call);
        free(w);
        return NULL;
}

void manager_free_waiters(Manager *m, Device *d) {
        while (d->waiters) {
                Waiter *w = d->waiters;

                d->waiters = w->next;
                waiter_free(w);
        }
}
