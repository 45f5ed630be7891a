/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <stdlib.h>

#include "device.h"
#include "log.h"
#include "manager-aliases.h"
#include "manager.h"
#include "range-index.h"

typedef struct AliasCollect {
        Device *device;
        Device **list;
        size_t n;
        int error;
} AliasCollect;

/* Devices over the same bytes are aliases unless one is stacked on the other (loop over loop:
 * the upper device's chain holds the lower one), which the alias rule allows on idle lower
 * devices. */
static bool is_alias(Device *d, Device *e) {
        return e != d && !chain_contains(&d->chain, e->status.devnum) &&
               !chain_contains(&e->chain, d->status.devnum);
}

static int collect_one(void *item, void *userdata) {
        AliasCollect *c = userdata;
        Device *e = item, **nl;

        if (!is_alias(c->device, e))
                return 0;
        nl = realloc(c->list, (c->n + 2) * sizeof(Device *));
        if (!nl) {
                c->error = -ENOMEM;
                return 1;
        }
        c->list = nl;
        c->list[c->n++] = e;
        c->list[c->n] = NULL;
        return 0;
}

int manager_device_aliases(Manager *m, Device *d, Device ***ret) {
        AliasCollect c = {.device = d};
        int r;

        if (d->has_identity && registry_contains(m, d)) {
                r = range_index_foreach_intersecting(m->index, &d->identity, collect_one, &c);
                if (r < 0 || c.error < 0) {
                        free(c.list);
                        return c.error < 0 ? c.error : r;
                }
        }
        if (!c.list) {
                c.list = calloc(1, sizeof(Device *));
                if (!c.list)
                        return -ENOMEM;
        }
        *ret = c.list;
        return (int) c.n;
}

static bool in_list(Device **list, Device *e) {
        for (; list && *list; list++)
                if (*list == e)
                        return true;
        return false;
}

static void emit_aliases_changed(Manager *m, Device *e) {
        char *props[] = {(char *) "Aliases", NULL};

        manager_emit_device_changed(m, e, props);
}

static const char *creator_of(Device *d) {
        if (d->managed)
                return "loopmgrd";
        return d->creator && d->creator[0] ? d->creator : "a process the daemon did not see";
}

void manager_aliases_added(Manager *m, Device *d, Device **old) {
        _cleanup_free_ Device **now = NULL;
        int n;

        n = manager_device_aliases(m, d, &now);
        if (n < 0) {
                log_warning_errno(n, "Cannot look for aliases of %s: %m", d->node);
                return;
        }
        for (int i = 0; i < n; i++) {
                Device *e = now[i];

                if (in_list(old, e))
                        continue;
                log_warning(
                        "%s and %s expose the same data: bytes %" PRIu64 "-%" PRIu64 " and "
                        "%" PRIu64 "-%" PRIu64 " of %s; %s was made by %s, %s by %s. Two page "
                        "caches over one file system corrupt it when both are written.",
                        e->node, d->node, e->identity.offset, e->identity.offset + e->identity.size,
                        d->identity.offset, d->identity.offset + d->identity.size,
                        d->status.backing_file && d->status.backing_file[0] ? d->status.backing_file
                                                                            : "the same backing",
                        e->node, creator_of(e), d->node, creator_of(d));
                emit_aliases_changed(m, e);
        }
        if (!old)
                return; /* a new device: InterfacesAdded carries its Aliases */
        /* An identity change: those that are no longer aliases, and d's own list. */
        for (Device **p = old; *p; p++)
                if (!in_list(now, *p))
                        emit_aliases_changed(m, *p);
        if (n > 0 || old[0])
                emit_aliases_changed(m, d);
}

void manager_aliases_removed(Manager *m, Device **list) {
        for (; list && *list; list++)
                emit_aliases_changed(m, *list);
}
