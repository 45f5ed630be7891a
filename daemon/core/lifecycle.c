/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * A device's way through the registry: added (recorded, the guard's map updated, announced),
 * changed (identity, status), removed (waiters answered, announced, freed), and what the core
 * tells the world on the way, through the bus layer's send operations (notify.h).
 */

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

#include "log.h"
#include "loopmgr-bus.h"
#include "manager-aliases.h"
#include "manager-guard.h"
#include "manager.h"
#include "media-mount.h"
#include "udev-props.h"
#include "registry.h"
#include "waiter.h"

void manager_announce_device(Manager *m, Device *d) {
        Device *lower;

        manager_send_device_added(m, d);
        lower = manager_get_device_below(m, d);
        if (lower)
                manager_refresh_openers(m, lower, NULL);
}

/* announce: emit InterfacesAdded now; false for the caller that answers its client first and
 * announces right after (manager_announce_device()). */
int manager_add_device(Manager *m, Device *d, bool announce) {
        int r;

        r = registry_insert(m, d);
        if (r < 0)
                return r;

        /* The ownership record is written before anybody can see the device, so a crash
         * right after this point cannot lose the reference. */
        if (d->managed) {
                r = manager_save_device_state(m, d);
                if (r < 0) {
                        registry_remove(m, d);
                        return r;
                }
        }

        /* The guard's map knows the device before anybody is told of it. */
        manager_guard_sync(m);
        manager_guard_device_added(m, d);
        manager_aliases_added(m, d, NULL);
        if (announce)
                manager_announce_device(m, d);
        log_debug("%s (diskseq %" PRIu64 ") %s", d->node, d->status.diskseq,
                  d->managed ? "attached" : "appeared (not managed)");
        return 0;
}

void manager_emit_device_changed(Manager *m, Device *d, char **properties) {
        if (m->send && m->send->device_changed)
                m->send->device_changed(m, d, properties);
}

void manager_emit_mount_changed(Manager *m, Device *d, unsigned partition) {
        if (partition == 0)
                manager_emit_device_changed(m, d, (char *[]){"MountPoint", "MountUser", NULL});
        else
                manager_emit_device_changed(m, d, (char *[]){"Partitions", NULL});
}

void manager_send_device_added(Manager *m, Device *d) {
        if (m->send && m->send->device_added)
                m->send->device_added(m, d);
}

void manager_send_flush(Manager *m) {
        if (m->send && m->send->flush)
                m->send->flush(m);
}

bool manager_client_exists(Manager *m, const char *unique_name) {
        /* Without a bus nobody can be asked: keep the reference. */
        return !m->send || !m->send->client_exists || m->send->client_exists(m, unique_name);
}

void manager_remove_device(Manager *m, Device *d, int attach_error) {
        _cleanup_free_ Device **aliases = NULL;

        /* InterfacesRemoved must go out while the object can still be found. */
        if (m->send && m->send->device_removed)
                m->send->device_removed(m, d);
        m->free_hint = d->status.number;
        m->has_free_hint = true;

        if (registry_contains(m, d)) {
                /* Out of memory: the others' Aliases change unannounced. */
                (void) manager_device_aliases(m, d, &aliases);
                registry_remove(m, d);
                if (d->managed)
                        (void) manager_save_dropped_state(m, d);
        }

        while (d->waiters) {
                Waiter *w = d->waiters;

                d->waiters = w->next;
                if (w->kind == WAITER_DETACH)
                        (void) manager_send_detach_reply(m, w->call, LOOPMGR_STATE_DETACHED);
                else
                        (void) manager_send_errorf(m, w->call, attach_error ?: -ENXIO,
                                                   "%s was detached before udev finished "
                                                   "processing it.",
                                                   d->node);
                waiter_free(w);
        }

        if (d->managed)
                udev_props_remove(m->root, d->status.name, d->status.diskseq);
        log_debug("%s (diskseq %" PRIu64 ") is gone", d->node, d->status.diskseq);
        {
                Device *lower = manager_get_device_below(m, d);

                device_free(d);
                if (lower)
                        manager_refresh_openers(m, lower, NULL);
        }
        manager_aliases_removed(m, aliases);
        manager_guard_sync(m);
}

void manager_update_identity(Manager *m, Device *d) {
        _cleanup_free_ Device **old = NULL;
        bool indexed = registry_contains(m, d);

        if (indexed && manager_device_aliases(m, d, &old) < 0)
                old = NULL;
        registry_update_identity(m, d);
        if (indexed) {
                if (old)
                        manager_aliases_added(m, d, old);
                manager_guard_sync(m);
        }
}

/* Copies what sysfs says into d and collects the names of changed properties. */
void manager_update_status(Manager *m, Device *d, LoopStatus *st) {
        char *changed[20];
        size_t n = 0;

#define CHECK(field, prop)                                                                         \
        if (d->status.field != st->field) {                                                        \
                d->status.field = st->field;                                                       \
                changed[n++] = (char *) prop;                                                      \
        }
        CHECK(offset, "Offset");
        CHECK(size_limit, "SizeLimit");
        CHECK(size, "Size");
        CHECK(sector_size, "SectorSize");
        CHECK(read_only, "ReadOnly");
        CHECK(autoclear, "Autoclear");
        CHECK(partscan, "PartScan");
        CHECK(direct_io, "DirectIO");
#undef CHECK
        if (!streq_ptr(d->status.backing_file, st->backing_file)) {
                free(d->status.backing_file);
                d->status.backing_file = TAKE_PTR(st->backing_file);
                changed[n++] = (char *) "BackingFile";
        }
        changed[n] = NULL;

        if (n > 0) {
                manager_update_identity(m, d);
                changed[n++] = (char *) "BaseOffset";
                changed[n++] = (char *) "BaseSize";
                changed[n++] = (char *) "Chain";
                changed[n] = NULL;
                manager_emit_device_changed(m, d, changed);
        }
}

int manager_send_attach_reply(Manager *m, Call *call, Device *d, bool reused) {
        if (!m->send || !m->send->attach_reply)
                return 0;
        return m->send->attach_reply(m, call, d, reused);
}

int manager_send_detach_reply(Manager *m, Call *call, const char *state) {
        if (!m->send || !m->send->detach_reply)
                return 0;
        return m->send->detach_reply(m, call, state);
}

int manager_send_mount_reply(Manager *m, Call *call, const char *mount_point) {
        if (!m->send || !m->send->mount_reply)
                return 0;
        return m->send->mount_reply(m, call, mount_point);
}

int manager_send_unmount_reply(Manager *m, Call *call) {
        if (!m->send || !m->send->unmount_reply)
                return 0;
        return m->send->unmount_reply(m, call);
}

Call *manager_call_ref(Manager *m, Call *call) {
        return m->send && m->send->call_ref && call ? m->send->call_ref(call) : call;
}

Call *manager_call_unref(Manager *m, Call *call) {
        if (m->send && m->send->call_unref && call)
                m->send->call_unref(call);
        return NULL;
}

int manager_send_problem(Manager *m, Call *call, const Problem *p) {
        if (!m->send || !m->send->error_reply)
                return 0;
        return m->send->error_reply(m, call, p);
}

int manager_send_errorf(Manager *m, Call *call, int error, const char *format, ...) {
        _cleanup_(problem_done) Problem p = PROBLEM_NULL;
        va_list ap;

        va_start(ap, format);
        (void) problem_setfv(&p, error, format, ap);
        va_end(ap);
        return manager_send_problem(m, call, &p);
}
