/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/param.h>
#include <sys/sysmacros.h>
#include <systemd/sd-daemon.h>

#include "block-use.h"
#include "bus-util.h"
#include "device-bus.h"
#include "log.h"
#include "loopmgr-bus.h"
#include "manager-aliases.h"
#include "manager-bus.h"
#include "manager-guard.h"
#include "manager.h"
#include "mount.h"
#include "range-index.h"
#include "udev-watch.h"

static Device *device_lower(Manager *m, Device *d);

int manager_new(sd_event *event, const char *root, const char *state_dir, Manager **ret) {
        Manager *m;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->event = sd_event_ref(event);
        if (root && !streq(root, "/")) {
                m->root = strdup(root);
                if (!m->root)
                        goto oom;
        }
        m->guard_pin_dir = GUARD_PIN_DIR;
        m->state_dir = strdup(state_dir ?: "/run/loopmgr");
        if (!m->state_dir)
                goto oom;
        if (range_index_new(&m->index) < 0)
                goto oom;

        *ret = m;
        return 0;
oom:
        manager_free(m);
        return -ENOMEM;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        /* Devices stay bound: persistent references outlive the daemon. Pending calls are
         * dropped with the bus connection. */
        for (size_t i = 0; i < m->n_slots; i++)
                device_free(m->devices[i]);
        free(m->devices);
        free(m->by_diskseq);
        range_index_free(m->index);

        manager_guard_stop(m);
        free(m->guard_problem);
        state_done(&m->restored);
        state_writer_free(m->state_writer);
        foreign_mounts_done(&m->foreign);
        mnt_unref_table(m->mounts);
        mnt_unref_table(m->mounts_seen);
        sd_event_source_disable_unref(m->mount_source);
        mnt_unref_monitor(m->mount_monitor);
        sd_bus_slot_unref(m->name_owner_slot);
        udev_watch_free(m->udev_watch);
        sd_bus_flush_close_unref(m->bus);
        sd_event_unref(m->event);
        free(m->root);
        free(m->state_dir);
        free(m);
        return NULL;
}

Device *manager_get_device_by_number(Manager *m, unsigned number) {
        return number < m->n_slots ? m->devices[number] : NULL;
}

static size_t diskseq_hash(uint64_t diskseq, size_t size) {
        /* Fibonacci hashing: diskseqs are consecutive numbers. */
        return (size_t) ((diskseq * UINT64_C(0x9e3779b97f4a7c15)) >> 32) & (size - 1);
}

static void diskseq_index_put(Device **table, size_t size, Device *d) {
        size_t i = diskseq_hash(d->status.diskseq, size);

        while (table[i])
                i = (i + 1) & (size - 1);
        table[i] = d;
}

/* Called with d already in m->devices: the table stays at most half full. */
static int diskseq_index_add(Manager *m, Device *d) {
        if (m->n_devices * 2 > m->by_diskseq_size) {
                size_t size = MAX(m->by_diskseq_size * 2, (size_t) 64);
                Device **t = calloc(size, sizeof(Device *));

                if (!t)
                        return -ENOMEM;
                for (size_t i = 0; i < m->by_diskseq_size; i++)
                        if (m->by_diskseq[i])
                                diskseq_index_put(t, size, m->by_diskseq[i]);
                free(m->by_diskseq);
                m->by_diskseq = t;
                m->by_diskseq_size = size;
        }
        diskseq_index_put(m->by_diskseq, m->by_diskseq_size, d);
        return 0;
}

static void diskseq_index_remove(Manager *m, Device *d) {
        size_t mask = m->by_diskseq_size - 1, i, j;

        if (m->by_diskseq_size == 0)
                return;
        for (i = diskseq_hash(d->status.diskseq, m->by_diskseq_size); m->by_diskseq[i] != d;
             i = (i + 1) & mask)
                if (!m->by_diskseq[i])
                        return;
        m->by_diskseq[i] = NULL;

        /* Backward shift: move up what would otherwise be cut off from its home slot. */
        for (j = (i + 1) & mask; m->by_diskseq[j]; j = (j + 1) & mask) {
                size_t home = diskseq_hash(m->by_diskseq[j]->status.diskseq, m->by_diskseq_size);

                /* Stays if its home lies cyclically in (i, j]. */
                if (i < j ? (home > i && home <= j) : (home > i || home <= j))
                        continue;
                m->by_diskseq[i] = m->by_diskseq[j];
                m->by_diskseq[j] = NULL;
                i = j;
        }
}

Device *manager_get_device_by_diskseq(Manager *m, uint64_t diskseq) {
        if (m->by_diskseq_size == 0)
                return NULL;
        for (size_t i = diskseq_hash(diskseq, m->by_diskseq_size); m->by_diskseq[i];
             i = (i + 1) & (m->by_diskseq_size - 1))
                if (m->by_diskseq[i]->status.diskseq == diskseq)
                        return m->by_diskseq[i];
        return NULL;
}

Device *manager_get_device_by_devnum(Manager *m, dev_t devnum) {
        Device *d;

        if (major(devnum) != LOOP_MAJOR_NUMBER)
                return NULL;
        /* Without partitions (max_part=0, the default) the minor is the loop number. */
        d = manager_get_device_by_number(m, minor(devnum));
        if (d && d->status.devnum == devnum)
                return d;
        for (size_t i = 0; i < m->n_slots; i++)
                if (m->devices[i] && m->devices[i]->status.devnum == devnum)
                        return m->devices[i];
        return NULL;
}

Device *manager_get_device_by_path(Manager *m, const char *path) {
        uint64_t diskseq;

        if (bus_device_path_parse(path, &diskseq) < 0)
                return NULL;
        return manager_get_device_by_diskseq(m, diskseq);
}

/* What the state files record of d; sd borrows from d and from the writer's scratch array. */
static int state_device_of(StateWriter *w, Device *d, StateDevice *sd) {
        size_t k;

        *sd = (StateDevice) {
                .diskseq = d->status.diskseq,
                .pending = d->state == DEVICE_DETACH_PENDING,
                .owner_uid = d->owner_uid,
                .n_refs = d->n_references,
        };
        memcpy(sd->name, d->status.name, sizeof(sd->name));
        sd->refs = state_writer_refs(w, sd->n_refs);
        if (!sd->refs && sd->n_refs > 0)
                return -ENOMEM;
        /* The list is newest first; record oldest first so a reload keeps the order. */
        k = sd->n_refs;
        for (Reference *ref = d->references; ref && k > 0; ref = ref->next)
                sd->refs[--k] = (StateRef) { .uid = ref->uid, .lifetime = ref->lifetime,
                                             .owner = ref->owner, .confirmed = ref->confirmed };
        assert(k == 0);
        return 0;
}

int manager_save_state(Manager *m) {
        StateWriter *w;
        int r;

        /* Start-up: while the record read back is being matched with the kernel, the registry
         * holds only part of it. The files keep all of it until manager_resume() saves. */
        if (m->restored.n_devices > 0 || m->restored.has_intent)
                return 0;

        if (!m->state_writer) {
                r = state_writer_new(m->state_dir, &m->state_writer);
                if (r < 0)
                        return log_warning_errno(r, "Failed to write the state file in %s: %m",
                                                 m->state_dir);
        }
        w = m->state_writer;

        /* The writer compares what it is given with what it wrote last and appends only the
         * difference to the journal: no allocation for devices that did not change. */
        state_writer_begin(w);
        for (size_t i = 0; i < m->n_slots; i++) {
                Device *d = m->devices[i];
                StateDevice sd;

                if (!d || !d->managed)
                        continue;
                r = state_device_of(w, d, &sd);
                if (r < 0)
                        goto fail;
                r = state_writer_device(w, &sd);
                if (r < 0)
                        goto fail;
        }

        r = state_writer_commit(w, m->has_intent, &m->intent);
        if (r < 0)
                goto fail;
        return 0;

fail:
        return log_warning_errno(r, "Failed to write the state file in %s: %m", m->state_dir);
}

/* A save after a change to d alone (NULL: to the intent alone), on the attach path: it writes
 * d's record without going through the other devices, whose walk made every attach cost more
 * with every binding (1,000 bindings: a few thousand cache-missing comparisons per save). Falls
 * back to a full save whenever the writer is not in sync with the files. */
static int manager_save_device_state(Manager *m, Device *d) {
        StateDevice sd;
        int r;

        if (m->restored.n_devices > 0 || m->restored.has_intent || !m->state_writer)
                return manager_save_state(m);
        if (d && d->managed) {
                r = state_device_of(m->state_writer, d, &sd);
                if (r < 0)
                        return log_warning_errno(r, "Failed to write the state file in %s: %m",
                                                 m->state_dir);
        }
        r = state_writer_commit_one(m->state_writer, d && d->managed ? &sd : NULL,
                                    m->has_intent, &m->intent);
        if (r == -ESTALE)
                return manager_save_state(m);
        if (r < 0)
                return log_warning_errno(r, "Failed to write the state file in %s: %m",
                                         m->state_dir);
        return 0;
}

/* The same after d left the registry: its record is dropped, the others are kept. */
static int manager_save_dropped_state(Manager *m, Device *d) {
        int r;

        if (m->restored.n_devices > 0 || m->restored.has_intent || !m->state_writer)
                return manager_save_state(m);
        r = state_writer_commit_drop(m->state_writer, d->status.name, m->has_intent, &m->intent);
        if (r == -ESTALE)
                return manager_save_state(m);
        if (r < 0)
                return log_warning_errno(r, "Failed to write the state file in %s: %m",
                                         m->state_dir);
        return 0;
}

static void manager_announce_device(Manager *m, Device *d) {
        (void) sd_bus_emit_object_added(m->bus, d->path);
        {
                Device *lower = device_lower(m, d);

                if (lower)
                        manager_refresh_openers(m, lower, NULL);
        }
}

/* announce: emit InterfacesAdded now; false for the caller that answers its client first and
 * announces right after (manager_announce_device()). */
static int manager_add_device(Manager *m, Device *d, bool announce) {
        unsigned n = d->status.number;

        if (n >= m->n_slots) {
                size_t k = n + 1 > m->n_slots * 2 ? n + 1 : m->n_slots * 2;
                Device **nd = realloc(m->devices, k * sizeof(Device *));

                if (!nd)
                        return -ENOMEM;
                memset(nd + m->n_slots, 0, (k - m->n_slots) * sizeof(Device *));
                m->devices = nd;
                m->n_slots = k;
        }
        assert(!m->devices[n]);
        if (d->has_identity) {
                int r = range_index_add(m->index, &d->identity, d);

                if (r < 0)
                        return r;
        }
        m->devices[n] = d;
        m->n_devices++;
        {
                int r = diskseq_index_add(m, d);

                if (r < 0) {
                        m->devices[n] = NULL;
                        m->n_devices--;
                        if (d->has_identity)
                                (void) range_index_remove(m->index, &d->identity, d);
                        return r;
                }
        }

        /* The ownership record is written before anybody can see the device, so a crash
         * right after this point cannot lose the reference. */
        if (d->managed) {
                int r = manager_save_device_state(m, d);

                if (r < 0) {
                        diskseq_index_remove(m, d);
                        m->devices[n] = NULL;
                        m->n_devices--;
                        if (d->has_identity)
                                (void) range_index_remove(m->index, &d->identity, d);
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
        if (m->bus)
                (void) sd_bus_emit_properties_changed_strv(m->bus, d->path,
                                                           LOOPMGR_DEVICE_INTERFACE, properties);
}

/* The caller has its answer: its reference now counts across restarts. Returns 1 if a
 * reference was confirmed. */
static int attach_confirm(Device *d, uint64_t ref_id) {
        Reference *ref = device_find_reference(d, ref_id);

        log_debug("%s: confirming reference %" PRIu64 ": %s", d->node, ref_id,
                  !ref ? "not found" : ref->confirmed ? "already confirmed" : "confirmed");

        if (!ref || ref->confirmed)
                return 0;
        ref->confirmed = true;
        return 1;
}

static void complete_attach_waiters(Manager *m, Device *d) {
        unsigned confirmed = 0;

        /* Record first, answer second: once a caller has its answer, a crash must not cost it
         * the reference. (A crash between the two leaves a recorded reference whose caller got
         * an error instead of a reply; its holder is that caller, not nobody.) */
        for (Waiter *w = d->waiters; w; w = w->next)
                if (w->kind == WAITER_ATTACH)
                        confirmed += attach_confirm(d, w->ref_id);
        if (confirmed > 0 && d->managed)
                (void) manager_save_device_state(m, d);

        for (Waiter **i = &d->waiters; *i;) {
                Waiter *w = *i;

                if (w->kind != WAITER_ATTACH) {
                        i = &w->next;
                        continue;
                }
                *i = w->next;
                (void) manager_bus_reply_attach(w->message, d, w->reused);
                waiter_free(w);
        }
        /* Out of the process now, not after whatever signals are queued before it: the
         * references are already recorded as answered. */
        if (confirmed > 0)
                (void) sd_bus_flush(m->bus);
}

/* Marks d as processed by udev once its by-diskseq link exists, and answers every Attach
 * queued on it: whoever notices first (an event, or a later Attach) completes all waiters. */
static bool device_check_udev_ready(Manager *m, Device *d) {
        int r;

        if (!d->udev_ready) {
                r = loop_udev_link_ready(m->root, d->status.name, d->status.diskseq);
                log_debug("udev: %s diskseq %" PRIu64 " link ready: %d", d->status.name,
                          d->status.diskseq, r);
                if (r <= 0)
                        return false;
                d->udev_ready = true;
        }
        complete_attach_waiters(m, d);
        return true;
}

void manager_remove_device(Manager *m, Device *d, int attach_error) {
        _cleanup_free_ Device **aliases = NULL;

        /* InterfacesRemoved must go out while the object can still be found. */
        (void) sd_bus_emit_object_removed(m->bus, d->path);
        m->free_hint = d->status.number;
        m->has_free_hint = true;

        if (m->devices[d->status.number] == d) {
                /* Out of memory: the others' Aliases change unannounced. */
                (void) manager_device_aliases(m, d, &aliases);
                diskseq_index_remove(m, d);
                m->devices[d->status.number] = NULL;
                m->n_devices--;
                if (d->has_identity)
                        (void) range_index_remove(m->index, &d->identity, d);
                if (d->managed)
                        (void) manager_save_dropped_state(m, d);
        }

        while (d->waiters) {
                Waiter *w = d->waiters;

                d->waiters = w->next;
                if (w->kind == WAITER_DETACH)
                        (void) sd_bus_reply_method_return(w->message, "s", LOOPMGR_STATE_DETACHED);
                else
                        (void) bus_reply_errnof(w->message, attach_error ?: -ENXIO,
                                                "%s was detached before udev finished processing it.",
                                                d->node);
                waiter_free(w);
        }

        if (d->managed)
                udev_props_remove(m->root, d->status.name, d->status.diskseq);
        log_debug("%s (diskseq %" PRIu64 ") is gone", d->node, d->status.diskseq);
        {
                Device *lower = device_lower(m, d);

                device_free(d);
                if (lower)
                        manager_refresh_openers(m, lower, NULL);
        }
        manager_aliases_removed(m, aliases);
        manager_guard_sync(m);
}

void manager_update_identity(Manager *m, Device *d) {
        _cleanup_free_ Device **old = NULL;
        bool indexed = m->devices[d->status.number] == d;

        if (indexed && manager_device_aliases(m, d, &old) < 0)
                old = NULL;
        if (d->has_identity && indexed)
                (void) range_index_remove(m->index, &d->identity, d);
        device_update_identity(d);
        if (d->has_identity && indexed && range_index_add(m->index, &d->identity, d) < 0) {
                log_warning("Out of memory indexing %s; it is treated as unidentified.", d->node);
                d->has_identity = false;
        }
        if (indexed) {
                if (old)
                        manager_aliases_added(m, d, old);
                manager_guard_sync(m);
        }
}

/* Copies what sysfs says into d and collects the names of changed properties. */
static void device_update_status(Manager *m, Device *d, LoopStatus *st) {
        char *changed[20];
        size_t n = 0;

#define CHECK(field, prop)                              \
        if (d->status.field != st->field) {             \
                d->status.field = st->field;            \
                changed[n++] = (char *) prop;           \
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

/* Gives a binding found at start-up back what the ownership record says about it. */
static int device_restore(Device *d, const StateDevice *sd) {
        int r;

        if (!sd)
                return 0;
        d->managed = true;
        d->state = sd->pending ? DEVICE_DETACH_PENDING : DEVICE_ATTACHED;
        for (size_t i = 0; i < sd->n_refs; i++) {
                r = device_add_reference(d, sd->refs[i].uid, sd->refs[i].lifetime,
                                         sd->refs[i].owner);
                if (r < 0)
                        return r;
                d->references->confirmed = sd->refs[i].confirmed;
        }
        d->owner_uid = sd->owner_uid;
        return 0;
}

/* The mounts of other namespaces as last read, without reading them again (once, if never):
 * what event handlers use. Those raise no event of their own, so a read of Openers or a busy
 * check reads them afresh (manager_foreign_mounts()), and the cache is that read. */
static const ForeignMounts *foreign_mounts_known(Manager *m) {
        return m->foreign_valid ? &m->foreign : manager_foreign_mounts(m);
}

int manager_reconcile(Manager *m, const char *name) {
        _cleanup_(loop_status_done) LoopStatus st = {};
        unsigned number;
        Device *d;
        int r;

        r = loop_name_to_number(name, &number);
        if (r < 0)
                return r;
        d = manager_get_device_by_number(m, number);

        if (!d) {
                _cleanup_free_ char *rel = NULL, *path = NULL;

                /* Nothing known and nothing bound (a free device created or removed, or the
                 * unbinding of one already gone): one lookup instead of reading it whole. */
                if (asprintf(&rel, "/sys/block/%s/loop", name) < 0)
                        return -ENOMEM;
                path = path_join_root(m->root, rel);
                if (!path)
                        return -ENOMEM;
                if (access(path, F_OK) < 0 && errno == ENOENT)
                        return 0;
        }

        r = loop_read_sysfs(m->root, name, &st);
        if (r == -ENOENT || (r >= 0 && !st.bound)) {
                if (d) {
                        bool ours = d->managed;

                        manager_remove_device(m, d, -ENXIO);
                        /* A teardown the kernel deferred to the last close could not delete
                         * partitions that were still mounted; they outlive the binding. */
                        if (ours && r >= 0) {
                                r = loop_remove_stale_partitions(m->root, name);
                                if (r > 0)
                                        log_info("Deleted %d partition(s) left on %s after its "
                                                 "teardown", r, name);
                        }
                }
                return 0;
        }
        if (r < 0)
                return log_debug_errno(r, "Failed to read sysfs of %s: %m", name);

        if (d && d->status.diskseq != st.diskseq) {
                /* Same loopN, new binding: the old one is gone. */
                manager_remove_device(m, d, -ENXIO);
                d = NULL;
        }

        if (d) {
                device_update_status(m, d, &st);
                return 0;
        }

        /* A binding made behind our back (or before we started). Its backing ids need
         * LOOP_GET_STATUS64; a device already in rundown refuses opens, and then we simply
         * don't know its identity. */
        r = loop_read_ids(m->root, &st);
        if (r == -ESTALE)
                return 0;       /* rebound between the two reads: its own event follows */
        if (r < 0)
                log_debug_errno(r, "Cannot read backing ids of %s: %m", name);

        r = device_new(m, &st, false, &d);
        if (r < 0)
                return r;
        r = device_restore(d, state_find(&m->restored, name, st.diskseq));
        if (r < 0) {
                device_free(d);
                return r;
        }
        /* InterfacesAdded carries Openers: computed from what is already read, as for any
         * event (manager_refresh_openers()), so that a binding appearing on the host does not
         * cost a scan of every process. A later read of the property is fresh. */
        if (device_openers_with(d, m->mounts, foreign_mounts_known(m), &d->openers) >= 0)
                (void) sd_event_get_iteration(m->event, &d->openers_iteration);
        r = manager_add_device(m, d, true);
        if (r < 0) {
                device_free(d);
                return r;
        }
        return 0;
}

int manager_udev_event(Manager *m, const UdevWatchEvent *ev) {
        const char *action = ev->action, *name = ev->sysname;
        uint64_t diskseq = ev->diskseq;
        bool from_udev = ev->from_udev, plain = ev->plain;
        unsigned number;
        Device *d;
        int r;

        log_debug("%s: %s %s diskseq %" PRIu64, from_udev ? "udev" : "kernel", action, name,
                  diskseq);

        r = loop_name_to_number(name, &number);
        if (r < 0)
                return 0;
        d = manager_get_device_by_number(m, number);
        if (from_udev && d && d->teardown_retry)
                /* udev is done with an event of the device, so its probe has probably let
                 * go of the lock a pending teardown waits for: try now, not at the next
                 * tick of the retry timer. */
                (void) sd_event_source_set_time(d->teardown_retry, 1);

        if (!from_udev || !m->udev_watch) {
                /* The kernel's event: only the device it names is re-read; not at all for
                 * the announcement of a binding manager_attach() made and read back from the
                 * device a moment ago, where a dozen sysfs files would tell nothing new. */
                bool announcement = d && d->bind_event_expected && plain &&
                                    d->status.diskseq == diskseq;

                if (d)
                        d->bind_event_expected = false;
                if (!announcement) {
                        r = manager_reconcile(m, name);
                        if (r < 0)
                                log_warning_errno(r, "Failed to update %s after udev event: %m",
                                                  name);
                        d = manager_get_device_by_number(m, number);
                        if (d && d->openers)
                                /* Only devices whose Openers somebody has seen: the first
                                 * read computes. */
                                manager_refresh_openers(m, d, NULL);
                }
        } else if ((!d || d->status.diskseq != diskseq) && !ev->kernel_flushed)
                /* udev's copy of an event is preceded by the kernel's, which the registry
                 * reflects once processed: re-reading sysfs for it again would only repeat
                 * that. The kernel's copy may still be queued (both monitors woke us up):
                 * the watch processes it first and hands this event back. */
                return UDEV_WATCH_FLUSH_KERNEL;

        /* IdType/IdLabel/IdUUID: udev ran its rules after a change of the content. */
        if (from_udev && d && d->managed && d->status.diskseq == diskseq &&
            d->state == DEVICE_ATTACHED)
                mount_update_ids(m, d, ev->device);
        if (!from_udev || !d || d->udev_ready || d->status.diskseq != diskseq)
                return 0;

        /* udev broadcast an event for this very binding after running its rules: the
         * by-diskseq link is made by them, check that it exists rather than assume. */
        (void) device_check_udev_ready(m, d);
        return 0;
}

static int on_udev_watch_event(const UdevWatchEvent *ev, void *userdata) {
        Manager *m = userdata;

        if (!ev->action) {
                manager_rescan(m);
                return 0;
        }
        return manager_udev_event(m, ev);
}

void manager_rescan(Manager *m) {
        _cleanup_strv_free_ char **names = NULL;
        int r;

        r = loop_list(m->root, &names);
        if (r < 0) {
                log_error_errno(r, "Failed to enumerate loop devices: %m");
                return;
        }

        /* Devices we track that no longer exist at all. */
        for (size_t i = 0; i < m->n_slots; i++) {
                Device *d = m->devices[i];
                bool found = false;

                if (!d)
                        continue;
                for (char **n = names; *n && !found; n++)
                        found = streq(*n, d->status.name);
                if (!found)
                        manager_remove_device(m, d, -ENXIO);
        }

        for (char **n = names; *n; n++) {
                r = manager_reconcile(m, *n);
                if (r < 0)
                        log_warning_errno(r, "Failed to read %s: %m", *n);
                else {
                        unsigned number;
                        Device *d;

                        if (loop_name_to_number(*n, &number) >= 0 &&
                            (d = manager_get_device_by_number(m, number)))
                                (void) device_check_udev_ready(m, d);
                }
        }
}

typedef struct AliasScan {
        const Chain *chain;
        const AttachRequest *req;
        Device *reuse;
        Device *conflict;       /* first intersecting device not in the chain (rule 3) */
        Device *exclusive;      /* first intersecting device, for sharing=exclusive */
} AliasScan;

static int alias_scan_one(void *item, void *userdata) {
        AliasScan *a = userdata;
        Device *e = item;
        const Identity *id = &a->chain->identity;

        if (!a->exclusive)
                a->exclusive = e;

        /* Rule 1 candidate: same bytes, same read-only mode. Prefer attached over pending
         * (manager_attach() revives a pending one), then managed, then the lowest number. */
        if (identity_equal_range(id, &e->identity) && e->status.read_only == a->req->read_only) {
                if (!a->reuse ||
                    (a->reuse->state == DEVICE_DETACH_PENDING && e->state == DEVICE_ATTACHED) ||
                    (a->reuse->state == e->state && e->managed && !a->reuse->managed))
                        a->reuse = e;
                return 0;
        }

        /* Rule 2: a device in the request's own chain is what it stacks on. Whether that
         * device is idle is checked on the chain as a whole (check_chain_busy()). */
        if (chain_contains(a->chain, e->status.devnum))
                return 0;

        if (!a->conflict)
                a->conflict = e;
        return 0;
}

static bool strv_equal(char **a, char **b) {
        for (; a && b && *a && *b; a++, b++)
                if (!streq(*a, *b))
                        return false;
        return (!a || !*a) && (!b || !*b);
}

void manager_refresh_openers(Manager *m, Device *d, struct libmnt_table *mounts) {
        _cleanup_strv_free_ char **pairs = NULL;

        /* Event handlers call this: they use the newest mount table and foreign-namespace
         * scan already read rather than reading them again. Those are at least as new as
         * the Openers last published (a read of the property computes them from the same
         * caches), and a change of our mount table comes with its own event. */
        if (!mounts)
                mounts = m->mounts;
        if (device_openers_with(d, mounts, foreign_mounts_known(m), &pairs) < 0 ||
            strv_equal(pairs, d->openers))
                return;
        strv_free(d->openers);
        d->openers = TAKE_PTR(pairs);
        manager_emit_device_changed(m, d, (char *[]) { "Openers", NULL });
}

/* The loop device below d, if d stacks on one (directly or through a partition of it). */
static Device *device_lower(Manager *m, Device *d) {
        Device *lower;

        if (!d->backing_is_block)
                return NULL;
        lower = manager_get_device_by_devnum(m, d->status.backing_rdevice);
        if (lower)
                return lower;
        /* Through a partition: the chain's next loop layer. */
        for (size_t i = 1; d->has_identity && i < d->chain.n_layers; i++)
                if (d->chain.layers[i].kind == LAYER_LOOP)
                        return manager_get_device_by_devnum(m, d->chain.layers[i].devnum);
        return NULL;
}

typedef struct MountKey {
        dev_t devnum;
        const char *target;
} MountKey;

static int mount_key_compare(const void *a, const void *b) {
        const MountKey *x = a, *y = b;

        if (x->devnum != y->devnum)
                return x->devnum < y->devnum ? -1 : 1;
        return strcmp(x->target, y->target);
}

/* The (block device, mount point) pairs of t, sorted; they point into t. */
static int mount_keys(struct libmnt_table *t, MountKey **ret, size_t *ret_n) {
        struct libmnt_iter *it;
        struct libmnt_fs *fs;
        MountKey *keys = NULL;
        size_t n = 0, size = 0;

        it = mnt_new_iter(MNT_ITER_FORWARD);
        if (!it)
                return -ENOMEM;
        while (mnt_table_next_fs(t, it, &fs) == 0) {
                dev_t dev = mnt_fs_get_devno(fs);

                if (dev == 0 || major(dev) == 0)
                        continue;
                if (n == size) {
                        MountKey *k;

                        size = MAX(size * 2, (size_t) 16);
                        k = realloc(keys, size * sizeof(MountKey));
                        if (!k) {
                                free(keys);
                                mnt_free_iter(it);
                                return -ENOMEM;
                        }
                        keys = k;
                }
                keys[n++] = (MountKey) { .devnum = dev, .target = mnt_fs_get_target(fs) ?: "" };
        }
        mnt_free_iter(it);
        if (n > 0)
                qsort(keys, n, sizeof(MountKey), mount_key_compare);
        *ret = keys;
        *ret_n = n;
        return 0;
}

/* The tracked loop device whose Openers list a mount of dev: dev itself, or the disk dev is a
 * partition of. Returns 1 with *ret set (NULL: none of ours), 0 when that cannot be told (a
 * partition already deleted). */
static int device_for_mount(Manager *m, dev_t dev, Device **ret) {
        _cleanup_free_ char *rel = NULL, *link = NULL;
        char buf[PATH_MAX], *slash;
        const char *parent;
        unsigned number;
        ssize_t k;

        *ret = manager_get_device_by_devnum(m, dev);
        if (*ret)
                return 1;
        /* Partitions of a loop device are blkext (259), or loop minors with max_part set. */
        if (major(dev) != 259 && major(dev) != LOOP_MAJOR_NUMBER)
                return 1;
        if (asprintf(&rel, "/sys/dev/block/%u:%u", major(dev), minor(dev)) < 0)
                return 0;
        link = path_join_root(m->root, rel);
        if (!link)
                return 0;
        k = readlink(link, buf, sizeof(buf) - 1);
        if (k <= 0)
                return 0;
        buf[k] = 0;
        slash = strrchr(buf, '/');
        if (!slash)
                return 0;
        *slash = 0;
        parent = strrchr(buf, '/');
        parent = parent ? parent + 1 : buf;
        if (loop_name_to_number(parent, &number) >= 0)
                *ret = manager_get_device_by_number(m, number);
        return 1;
}

/* Re-checks the Openers of the devices whose mounts differ between the two tables. Returns 0
 * when it could not tell which (the caller re-checks them all). */
static int refresh_changed_mounts(Manager *m, struct libmnt_table *old, struct libmnt_table *new) {
        _cleanup_free_ MountKey *a = NULL, *b = NULL;
        size_t na = 0, nb = 0, i = 0, j = 0;
        dev_t last = 0;

        if (mount_keys(old, &a, &na) < 0 || mount_keys(new, &b, &nb) < 0)
                return 0;

        /* A merge of the two sorted lists: each pair in only one of them is a change. */
        while (i < na || j < nb) {
                int c = i >= na ? 1 : j >= nb ? -1 : mount_key_compare(&a[i], &b[j]);
                dev_t dev;
                Device *d;

                if (c == 0) {
                        i++;
                        j++;
                        continue;
                }
                dev = c < 0 ? a[i++].devnum : b[j++].devnum;
                if (dev == last)
                        continue;
                last = dev;
                if (device_for_mount(m, dev, &d) == 0)
                        return 0;
                if (d)
                        manager_refresh_openers(m, d, new);
        }
        return 1;
}

static int on_mounts_changed(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        struct libmnt_table *mounts;

        /* Drain the monitor; what changed is found by comparing the table as a whole with
         * the one of the previous change. */
        while (mnt_monitor_next_change(m->mount_monitor, NULL, NULL) == 0)
                ;
        (void) mnt_monitor_event_cleanup(m->mount_monitor);
        mnt_unref_table(m->mounts);
        m->mounts = NULL;

        mounts = manager_mount_table(m);
        if (!mounts)
                return 0;
        /* Only devices whose mounts (their own or their partitions') changed can have other
         * Openers now; without a previous table, or when a changed mount cannot be placed,
         * every device is re-checked against the one parsed table. */
        if (!m->mounts_seen || refresh_changed_mounts(m, m->mounts_seen, mounts) == 0)
                for (size_t i = 0; i < m->n_slots; i++)
                        if (m->devices[i])
                                manager_refresh_openers(m, m->devices[i], mounts);
        mnt_unref_table(m->mounts_seen);
        mnt_ref_table(mounts);
        m->mounts_seen = mounts;
        /* Device.Mount mounts unmounted by other means (may free devices). */
        mount_check_table(m, mounts);
        mnt_unref_table(mounts);
        /* Mounted block devices are bases of the guard. */
        manager_guard_sync(m);
        return 0;
}

static int manager_watch_mounts(Manager *m) {
        int r, fd;

        m->mount_monitor = mnt_new_monitor();
        if (!m->mount_monitor)
                return -ENOMEM;
        /* The "kernel" monitor watches /proc/self/mountinfo: every mount and unmount in our
         * namespace, whoever made it. */
        r = mnt_monitor_enable_kernel(m->mount_monitor, 1);
        if (r < 0)
                return r;
        fd = mnt_monitor_get_fd(m->mount_monitor);
        if (fd < 0)
                return fd;
        r = sd_event_add_io(m->event, &m->mount_source, fd, EPOLLIN, on_mounts_changed, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(m->mount_source, "mount-monitor");
        /* The baseline the first change is compared with: read afresh now that the monitor
         * is on, so that no change falls between the two. */
        mnt_unref_table(m->mounts);
        m->mounts = NULL;
        m->mounts_seen = manager_mount_table(m);
        return 0;
}

/* Whether what was read in this event-loop iteration is still current. Iteration 0 is the
 * start-up of the daemon (connected, before the loop runs): it announces every device with
 * its Openers, and one read serves them all. Without a bus (unit tests) nothing is cached
 * at iteration 0, as the loop may never run. */
static bool same_iteration(Manager *m, uint64_t then, uint64_t *ret_now) {
        uint64_t iteration = 0;

        (void) sd_event_get_iteration(m->event, &iteration);
        *ret_now = iteration;
        return then == iteration && (iteration != 0 || m->bus);
}

const ForeignMounts *manager_foreign_mounts(Manager *m) {
        uint64_t iteration;

        if (same_iteration(m, m->foreign_iteration, &iteration) && m->foreign_valid)
                return &m->foreign;

        foreign_mounts_done(&m->foreign);
        if (foreign_mounts_scan(m->root, &m->foreign) < 0)
                m->foreign = (ForeignMounts) {};
        m->foreign_iteration = iteration;
        m->foreign_valid = true;
        return &m->foreign;
}

struct libmnt_table *manager_mount_table(Manager *m) {
        _cleanup_free_ char *path = NULL;
        uint64_t iteration;
        struct libmnt_table *t;

        /* One parse per event-loop iteration (GetManagedObjects asks once per device), and
         * a fresh one after the mount monitor fired. */
        if (same_iteration(m, m->mounts_iteration, &iteration) && m->mounts) {
                mnt_ref_table(m->mounts);
                return m->mounts;
        }

        path = path_join_root(m->root, "/proc/self/mountinfo");
        if (!path)
                return NULL;
        t = mnt_new_table();
        if (t && mnt_table_parse_file(t, path) < 0) {
                mnt_unref_table(t);
                return NULL;
        }
        mnt_unref_table(m->mounts);
        m->mounts = t;
        m->mounts_iteration = iteration;
        mnt_ref_table(t);
        return t;
}

typedef struct BusyScan {
        Manager *m;
        struct libmnt_table *mounts;
        bool read_only;
        sd_bus_error *error;
} BusyScan;

static int check_one_busy(dev_t devnum, const char *name, void *userdata) {
        BusyScan *b = userdata;
        BlockUse use = {};
        int r;

        r = block_use_probe(b->m->root, devnum, name, b->mounts, manager_foreign_mounts(b->m), &use);
        if (r < 0)
                return bus_error_set_errnof(b->error, r, "Cannot tell whether /dev/%s is in use: %s.",
                                            name, strerror(-r));
        if (use.in_use && !(b->read_only && use.read_only)) {
                r = bus_error_set_errnof(b->error, -EBUSY,
                        "/dev/%s is %s; a loop device over it would expose the bytes of a file "
                        "system in use%s.", name, use.description ?: "in use",
                        use.read_only ? " (read-only use: a read-only attach is allowed)" : "");
                block_use_done(&use);
                return r;
        }
        block_use_done(&use);
        return 0;
}

/* Rule 2's other half: every block device the request passes through must be idle (not
 * mounted, not held), in any namespace, unless both the use and the new device are read-only.
 * The partitions of those devices that meet the covered range are checked too: looping a
 * whole disk would alias a mounted partition of it. */
static int check_chain_busy(Manager *m, const Chain *chain, bool read_only, sd_bus_error *error) {
        struct libmnt_table *mounts = NULL;
        BusyScan b = { .m = m, .read_only = read_only, .error = error };
        int r = 0;

        if (chain->n_layers < 2 || (chain->n_layers == 2 && chain->layers[1].kind == LAYER_BASE_FILE))
                return 0;       /* a plain file: no block device on the way */

        mounts = manager_mount_table(m);
        b.mounts = mounts;

        for (size_t i = 1; i < chain->n_layers && r == 0; i++) {
                const Layer *l = &chain->layers[i];

                if (l->devnum == 0 || !l->name[0])
                        continue;
                /* Partitions first, so that Busy names the mounted partition and its mount
                 * point rather than the disk. */
                if (l->kind != LAYER_PARTITION)
                        r = block_foreach_partition_in_range(m->root, l->name,
                                                             chain->layers[i - 1].offset,
                                                             chain->layers[i - 1].size,
                                                             check_one_busy, &b);
                if (r == 0)
                        r = check_one_busy(l->devnum, l->name, &b);
        }

        mnt_unref_table(mounts);
        if (r < 0 && !sd_bus_error_is_set(error))
                return bus_error_set_errnof(error, r, "Cannot check the devices below: %s.",
                                            strerror(-r));
        return r;
}

int manager_check_aliases(Manager *m, const Chain *chain, const AttachRequest *req,
                          Device **ret_reuse, sd_bus_error *error) {
        const Identity *id = &chain->identity;
        AliasScan a = { .chain = chain, .req = req };
        Device *e;
        int r;

        r = range_index_foreach_intersecting(m->index, id, alias_scan_one, &a);
        if (r < 0)
                return bus_error_set_errnof(error, r, "Cannot search existing devices: %s.",
                                            strerror(-r));

        /* Rule 1 first: handing back an identical device creates no new device, so no alias. */
        if (req->options->sharing == SHARING_SHARED && a.reuse) {
                *ret_reuse = a.reuse;
                return 1;
        }

        if (req->options->sharing == SHARING_EXCLUSIVE && a.exclusive) {
                e = a.exclusive;
                return bus_error_set_errnof(error, -EBUSY,
                        "%s already exposes bytes %" PRIu64 "-%" PRIu64 " of the same backing, and "
                        "sharing=exclusive was asked for.",
                        e->node, e->identity.offset, e->identity.offset + e->identity.size);
        }

        /* Rule 3: anything else over these bytes, outside the request's chain. */
        e = a.conflict ?: (a.reuse && !chain_contains(chain, a.reuse->status.devnum) ? a.reuse : NULL);
        if (e)
                return bus_error_set_errnof(error, -EADDRINUSE,
                        "%s already exposes bytes %" PRIu64 "-%" PRIu64 " of the same backing, "
                        "which overlaps the requested bytes %" PRIu64 "-%" PRIu64 "%s; a second "
                        "device over the same data would corrupt it.",
                        e->node, e->identity.offset, e->identity.offset + e->identity.size,
                        id->offset, id->offset + id->size,
                        identity_equal_range(id, &e->identity) ?
                                (e->status.read_only != req->read_only ?
                                         " (with a different read-only mode)" : "") : "");

        /* Rule 2: what we stack on must be idle. */
        r = check_chain_busy(m, chain, req->read_only, error);
        if (r < 0)
                return r;
        return 0;
}

void manager_adopt_unseen(Manager *m) {
        _cleanup_strv_free_ char **names = NULL;

        /* A request that closely follows `losetup` may arrive before we processed the uevent
         * of that binding. The kernel sends the uevent inside the ioctl, before losetup even
         * returns, so it is already queued on our kernel monitor: process the queue now. This
         * costs what is pending, not what exists. */
        if (m->udev_watch) {
                udev_watch_flush_kernel(m->udev_watch);
                return;
        }

        /* No monitor (unit tests): look at every loop device we have no object for. */
        if (loop_list(m->root, &names) < 0)
                return;
        for (char **n = names; *n; n++) {
                _cleanup_free_ char *rel = NULL, *path = NULL;
                unsigned number;

                if (loop_name_to_number(*n, &number) < 0 || manager_get_device_by_number(m, number))
                        continue;
                if (asprintf(&rel, "/sys/block/%s/loop", *n) < 0)
                        return;
                path = path_join_root(m->root, rel);
                if (path && access(path, F_OK) >= 0)
                        (void) manager_reconcile(m, *n);
        }
}

int manager_resolve_request(Manager *m, const AttachRequest *req, Chain *ret) {
        _cleanup_free_ char *proc = NULL;
        Layer top = { .kind = LAYER_REQUEST };
        char path[PATH_MAX];
        Backing backing;
        ssize_t k;

        manager_adopt_unseen(m);

        if (S_ISBLK(req->st.st_mode))
                backing = (Backing) { .is_block = true, .device = req->st.st_rdev };
        else
                backing = (Backing) { .device = req->st.st_dev, .inode = req->st.st_ino };

        /* The path is for display only: identity comes from the fd. */
        if (asprintf(&proc, "/proc/self/fd/%d", req->fd) < 0)
                return -ENOMEM;
        k = readlink(proc, path, sizeof(path) - 1);
        if (k > 0) {
                path[k] = 0;
                top.path = path;
        }

        return chain_resolve(m->root, &top, &backing, req->options->offset, req->size,
                             device_loop_info_lookup, m, ret);
}

/* Cancels a pending teardown. On 6.11+ LOOP_CLR_FD on a device that others hold open only
 * sets AUTOCLEAR (the rundown state is entered only with a single opener), so clearing
 * AUTOCLEAR again keeps the binding. Returns 1 when revived, negative errno otherwise (-ENXIO:
 * the kernel is already running the device down). */
static int device_revive(Manager *m, Device *d) {
        int r;

        r = loop_set_autoclear(m->root, d->status.name, d->status.diskseq, false);
        if (r < 0)
                return r;

        d->state = DEVICE_ATTACHED;
        d->status.autoclear = false;
        manager_emit_device_changed(m, d, (char *[]) { "State", "Autoclear", NULL });
        /* The caller adds its reference and records the state right after. */

        /* Detach(wait=true) calls were waiting for a teardown that no longer happens. */
        for (Waiter **i = &d->waiters; *i;) {
                Waiter *w = *i;

                if (w->kind != WAITER_DETACH) {
                        i = &w->next;
                        continue;
                }
                *i = w->next;
                (void) sd_bus_reply_method_return(w->message, "s", LOOPMGR_STATE_ATTACHED);
                waiter_free(w);
        }

        log_info("%s: pending teardown cancelled by an identical attach", d->node);
        return 1;
}

/* loop_attach()'s prepare hook: the udev properties file of the device about to be bound
 * (mount.h), written before the kernel binds it so udev's first event imports it. The file
 * stays open so that the diskseq can be appended after the bind. */
typedef struct UdevPrepare {
        Manager *m;
        uid_t uid;
        char name[16];  /* the last device prepared */
        int fd;         /* its properties file, or -EBADF */
} UdevPrepare;

static int udev_prepare(const char *name, void *userdata) {
        UdevPrepare *p = userdata;
        uint64_t now = 0;
        int r;

        if (p->name[0] && !streq(p->name, name))
                udev_props_remove(p->m->root, p->name, 0);
        p->fd = safe_close(p->fd);
        (void) snprintf(p->name, sizeof(p->name), "%s", name);
        (void) sd_event_now(p->m->event, CLOCK_MONOTONIC, &now);
        r = udev_props_create(p->m->root, name, p->uid,
                              udev_owner_name(&p->m->udev_owners, p->uid, now), &p->fd);
        if (r < 0)
                /* Desktop shells lose a hint, the device works all the same. */
                log_debug_errno(r, "Cannot write the udev properties of %s: %m", name);
        return 0;
}

static void udev_prepare_done(UdevPrepare *p) {
        p->fd = safe_close(p->fd);
}

/* Replies now, or queues the reply until udev has processed the binding. */
static int attach_reply_or_wait(Manager *m, sd_bus_message *message, Device *d, bool reused,
                                uid_t uid, uint64_t ref_id, const AttachOptions *o) {
        Waiter *w;
        int r;

        if (o->wait_udev && !device_check_udev_ready(m, d)) {
                r = device_add_waiter(d, WAITER_ATTACH, message, reused, uid, o->timeout_usec, &w);
                if (r >= 0)
                        w->ref_id = ref_id;
                return r;
        }
        /* Record first, answer second, and flush (see complete_attach_waiters()). */
        if (attach_confirm(d, ref_id) > 0 && d->managed)
                (void) manager_save_state(m);
        r = manager_bus_reply_attach(message, d, reused);
        if (r >= 0)
                (void) sd_bus_flush(m->bus);
        return r;
}

int manager_attach(Manager *m, sd_bus_message *message, const AttachRequest *req,
                   sd_bus_error *error) {
        const AttachOptions *o = req->options;
        _cleanup_(loop_status_done) LoopStatus st = {};
        _cleanup_(chain_done) Chain chain = {};
        Device *d = NULL, *old;
        uint64_t ref_id = 0;
        LoopConfig config;
        int r;

        r = manager_resolve_request(m, req, &chain);
        if (r == -ELOOP)
                return bus_error_set_errnof(error, -ELOOP,
                        "The backing chain loops back on itself or is deeper than %d layers; "
                        "a loop device cannot be its own backing.", CHAIN_MAX_DEPTH);
        if (r == -ENXIO)
                return bus_error_set_errnof(error, -EINVAL,
                        "A loop device in the backing chain is not bound to anything.");
        if (r < 0)
                return bus_error_set_errnof(error, r == -ENOMEM ? r : -EINVAL,
                        "Cannot map the requested range onto its backing: %s.", strerror(-r));

        /* Stacking on a device we are tearing down would keep it open forever. */
        for (size_t i = 1; i < chain.n_layers; i++) {
                Device *lower;

                if (chain.layers[i].kind != LAYER_LOOP)
                        continue;
                lower = manager_get_device_by_devnum(m, chain.layers[i].devnum);
                if (lower && lower->state == DEVICE_DETACH_PENDING)
                        return bus_error_set_errnof(error, -EBUSY,
                                "%s, below the requested device, is being torn down.", lower->node);
        }

        r = manager_check_aliases(m, &chain, req, &d, error);
        if (r < 0)
                return r;
        /* The identical device is not the one asked for: binding that one would be an alias. */
        if (r > 0 && o->device >= 0 && d->status.number != (unsigned) o->device)
                return bus_error_set_errnof(error, -EBUSY,
                        "%s exposes exactly these bytes already; loop%d cannot be bound to them "
                        "too.", d->node, o->device);
        if (r > 0 && d->state == DEVICE_DETACH_PENDING) {
                r = device_revive(m, d);
                if (r < 0)
                        return bus_error_set_errnof(error, -EBUSY,
                                "%s exposes exactly these bytes but its teardown can no longer be "
                                "cancelled (%s); retry once it is gone.", d->node, strerror(-r));
        }
        if (r > 0) {
                r = device_add_reference(d, req->uid, o->lifetime, req->sender);
                if (r < 0)
                        return bus_error_set_errnof(error, r, "Out of memory.");
                /* Recorded as unconfirmed until the caller has its answer: a daemon killed in
                 * between must not leave a reference nobody knows it holds. */
                d->references->confirmed = false;
                ref_id = d->references->id;
                r = manager_save_device_state(m, d);
                if (r < 0) {
                        (void) device_drop_reference(d, req->uid);
                        return bus_error_set_errnof(error, r,
                                "Cannot record the new reference in the state directory: %s.",
                                strerror(-r));
                }
                manager_emit_device_changed(m, d, (char *[]) { "References", NULL });
                log_info("Reusing %s for uid %u (%u references)", d->node, (unsigned) req->uid,
                         d->n_references);
                r = attach_reply_or_wait(m, message, d, true, req->uid, ref_id, o);
                if (r < 0) {
                        (void) device_drop_reference_id(d, ref_id);
                        manager_emit_device_changed(m, d, (char *[]) { "References", NULL });
                        return bus_error_set_errnof(error, r, "Failed to reply: %s", strerror(-r));
                }
                return 1;
        }

        _cleanup_(udev_prepare_done) UdevPrepare prepare = { .m = m, .uid = req->uid, .fd = -EBADF };
        config = (LoopConfig) {
                .use_hint = m->has_free_hint && o->device < 0,
                .hint = m->free_hint,
                .use_device = o->device >= 0,
                .device = o->device >= 0 ? (unsigned) o->device : 0,
                .offset = o->offset,
                .size_limit = o->size_limit,
                .sector_size = o->sector_size,
                .read_only = req->read_only,
                .partscan = o->partscan,
                .direct_io = o->direct_io,
                .prepare = udev_prepare,
                .userdata = &prepare,
        };

        /* Record the intent first: if we die between the bind and recording the device, the
         * next start finds the binding that matches it and nobody's record, and tears it
         * down (its caller never got an answer). */
        m->intent = (StateIntent) {
                .is_block = S_ISBLK(req->st.st_mode),
                .device = S_ISBLK(req->st.st_mode) ? req->st.st_rdev : req->st.st_dev,
                .inode = S_ISBLK(req->st.st_mode) ? 0 : req->st.st_ino,
                .offset = o->offset,
                .size_limit = o->size_limit,
                .uid = req->uid,
        };
        m->has_intent = true;
        r = manager_save_device_state(m, NULL);
        if (r < 0) {
                m->has_intent = false;
                return bus_error_set_errnof(error, r,
                        "Cannot record the attach in the state directory %s: %s.", m->state_dir,
                        strerror(-r));
        }

        r = loop_attach(m->root, req->fd, &config, &st);
        if (r < 0) {
                m->has_intent = false;
                (void) manager_save_state(m);
                if (prepare.name[0])
                        udev_props_remove(m->root, prepare.name, 0);
        } else if (prepare.fd >= 0 && streq(prepare.name, st.name))
                /* Now with the diskseq, which tells this binding's file from a later one's. */
                (void) udev_props_add_diskseq(prepare.fd, st.diskseq);
        if (o->device >= 0 && r == -EBUSY)
                return bus_error_set_errnof(error, -EBUSY,
                        "loop%d is bound already, being torn down, or in use by somebody else.",
                        o->device);
        if (o->device >= 0 && r == -ENODEV)
                return bus_error_set_errnof(error, -ENODEV,
                        "loop%d does not exist and the kernel cannot create it.", o->device);
        if (r == -EBUSY || r == -ENOSPC || r == -EAGAIN)
                return bus_error_set_errnof(error, -ENOSPC,
                        "The kernel has no free loop device (%s).", strerror(-r));
        if (r == -EOPNOTSUPP)
                return bus_error_set_errnof(error, -EINVAL,
                        "direct-io=on was asked for, but the backing file system does not support "
                        "direct I/O with this sector size.");
        if (r < 0)
                return bus_error_set_errnof(error, r == -ENOMEM ? r : -EINVAL,
                        "The kernel refused to configure the loop device: %s.", strerror(-r));

        /* Our own fstat() is the authority on what we bound, whatever the ioctl reports. */
        st.backing_rdevice = S_ISBLK(req->st.st_mode) ? req->st.st_rdev : 0;
        st.backing_device = S_ISBLK(req->st.st_mode) ? st.backing_device : req->st.st_dev;
        st.backing_inode = req->st.st_ino;

        old = manager_get_device_by_number(m, st.number);
        if (old)
                /* A binding we had not yet seen go away. */
                manager_remove_device(m, old, -ENXIO);

        r = device_new(m, &st, true, &d);
        if (r >= 0) {
                d->bind_event_expected = true;
                /* Nothing can hold a device we have just bound: no need to look. */
                d->openers = calloc(1, sizeof(char *));
                (void) sd_event_get_iteration(m->event, &d->openers_iteration);
                r = device_add_reference(d, req->uid, o->lifetime, req->sender);
        }
        if (r >= 0) {
                /* Answered right after the save that records the device (no udev wait): that
                 * save may as well record the reference as confirmed, sparing a second one.
                 * Otherwise it stays unconfirmed until the answer goes out. */
                d->references->confirmed = !o->wait_udev;
                ref_id = d->references->id;
        }
        /* The save in manager_add_device() records the device and drops the intent at once. */
        m->has_intent = false;
        if (r >= 0) {
                r = manager_add_device(m, d, false);
                if (r < 0)
                        d = device_free(d);
        } else
                d = device_free(d);
        if (r < 0) {
                (void) loop_detach(m->root, st.name, st.diskseq);
                (void) manager_save_state(m);
                return bus_error_set_errnof(error, r, "Failed to register the new device: %s.",
                                            strerror(-r));
        }

        /* The answer (or the waiter) first, then the announcement to everybody else and the
         * log line: building InterfacesAdded with every property costs more than the rest of
         * the attach, and the caller has no use for it. */
        r = attach_reply_or_wait(m, message, d, false, req->uid, ref_id, o);
        manager_announce_device(m, d);
        log_info("Attached %s (diskseq %" PRIu64 ") for uid %u", d->node, d->status.diskseq,
                 (unsigned) req->uid);
        if (r < 0) {
                device_drop_all_references(d);
                if (loop_detach(m->root, d->status.name, d->status.diskseq) != 0)
                        manager_remove_device(m, d, r);
                return bus_error_set_errnof(error, r, "Failed to wait for udev: %s.", strerror(-r));
        }
        return 1;
}

/* A teardown that finds the device flock()ed (udev probing it) is retried every 1 ms for 20 ms,
 * then backing off to 4 ms, for at most 100 ms (a probe takes a few); then it goes on without the lock and
 * the kernel defers the clear to the holder's close (6.11+). */
#define TEARDOWN_RETRY_FIRST_USEC  1000U
#define TEARDOWN_RETRY_MAX_USEC    4000U
#define TEARDOWN_RETRY_FAST_USEC   20000U
#define TEARDOWN_LOCK_BUDGET_USEC  100000U

/* What loop_detach_nowait() returned, turned into the device's fate. Returns 1 when gone (the
 * object was removed), 0 when pending. */
static int device_teardown_finish(Manager *m, Device *d, int r) {
        uint64_t diskseq = d->status.diskseq;

        if (r == -ENXIO)
                /* The kernel refuses opens of a device whose rundown has started: the teardown
                 * is under way already. */
                r = 0;
        if (r == -ESTALE || r == -ENOENT) {
                /* The device could not be opened as this binding. Don't take that on trust:
                 * sysfs says whether the binding is really gone (reconcile removes it then). */
                (void) manager_reconcile(m, d->status.name);
                if (manager_get_device_by_diskseq(m, diskseq) != d)
                        return 1;
                return -EIO;
        }
        if (r < 0)
                return r;
        if (r > 0) {
                manager_remove_device(m, d, -ENXIO);
                return 1;
        }

        if (d->state != DEVICE_DETACH_PENDING) {
                d->state = DEVICE_DETACH_PENDING;
                if (d->managed)
                        (void) manager_save_state(m);
                manager_emit_device_changed(m, d, (char *[]) { "State", NULL });
        }
        log_info("%s is still open; teardown pending until it is closed", d->node);
        return 0;
}

/* Answers the Detach calls queued on d: with error r if negative, else with state. only_nowait:
 * just those that waited for the teardown request, not for the teardown itself. */
static void complete_detach_waiters(Device *d, bool only_nowait, int r, const char *state) {
        for (Waiter **i = &d->waiters; *i;) {
                Waiter *w = *i;

                if (w->kind != WAITER_DETACH || (only_nowait && w->wait)) {
                        i = &w->next;
                        continue;
                }
                *i = w->next;
                if (r < 0)
                        (void) bus_reply_errnof(w->message, r, "Failed to detach %s: %s.",
                                                d->node, strerror(-r));
                else
                        (void) sd_bus_reply_method_return(w->message, "s", state);
                waiter_free(w);
        }
}

static int teardown_schedule(Manager *m, Device *d, uint64_t now);

static int on_teardown_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        Device *d = userdata;
        Manager *m = d->manager;
        uint64_t now = usec;
        int r;

        /* Safe inside the dispatch: sd-event frees the source after the callback. */
        d->teardown_retry = sd_event_source_disable_unref(d->teardown_retry);

        if (d->n_references > 0 || d->state != DEVICE_ATTACHED) {
                /* An identical Attach took the device again meanwhile: nothing to tear down. */
                log_debug("%s: teardown cancelled, referenced again", d->node);
                complete_detach_waiters(d, false, 0, LOOPMGR_STATE_ATTACHED);
                return 0;
        }

        (void) sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        r = loop_detach_nowait(m->root, d->status.name, d->status.diskseq,
                               now < d->teardown_deadline);
        if (r == -EWOULDBLOCK) {
                /* Every millisecond while a probe would still be running (it takes a few): the
                 * Detach answers as soon as udev lets go. Then backing off. */
                uint64_t elapsed = now + TEARDOWN_LOCK_BUDGET_USEC - d->teardown_deadline;

                if (elapsed >= TEARDOWN_RETRY_FAST_USEC)
                        d->teardown_delay = MIN(d->teardown_delay * 2, TEARDOWN_RETRY_MAX_USEC);
                if (teardown_schedule(m, d, now) >= 0)
                        return 0;
                r = loop_detach_nowait(m->root, d->status.name, d->status.diskseq, false);
        }

        r = device_teardown_finish(m, d, r);
        if (r > 0)
                return 0;       /* d is gone, its waiters were answered "detached" */
        if (r < 0) {
                log_warning_errno(r, "Failed to detach %s: %m", d->node);
                complete_detach_waiters(d, false, r, NULL);
                return 0;
        }
        complete_detach_waiters(d, true, 0, LOOPMGR_STATE_PENDING);
        return 0;
}

static int teardown_schedule(Manager *m, Device *d, uint64_t now) {
        uint64_t next = MIN(now + d->teardown_delay, d->teardown_deadline);

        /* Accuracy 1 µs: sd-event's default (0) would let the timer slip by up to 250 ms. */
        return sd_event_add_time(m->event, &d->teardown_retry, CLOCK_MONOTONIC, next, 1,
                                 on_teardown_retry, d);
}

/* Requests the kernel teardown of a device nobody references. Returns 1 when gone (the object
 * was removed), 0 when pending, 2 when under way: udev's probe holds a flock on the device and
 * the request is retried on a timer (never waiting in the event loop, where every other
 * client would wait too); Detach calls queue a WAITER_DETACH then, answered when it is made. */
static int device_teardown(Manager *m, Device *d) {
        uint64_t now = 0;
        int r;

        if (d->teardown_retry)
                return 2;

        r = loop_detach_nowait(m->root, d->status.name, d->status.diskseq, true);
        if (r == -EWOULDBLOCK) {
                (void) sd_event_now(m->event, CLOCK_MONOTONIC, &now);
                d->teardown_deadline = now + TEARDOWN_LOCK_BUDGET_USEC;
                d->teardown_delay = TEARDOWN_RETRY_FIRST_USEC;
                r = teardown_schedule(m, d, now);
                if (r >= 0) {
                        log_debug("%s is locked (udev probing?); teardown retried", d->node);
                        return 2;
                }
                r = loop_detach_nowait(m->root, d->status.name, d->status.diskseq, false);
        }
        return device_teardown_finish(m, d, r);
}

void manager_device_clear_mount(Manager *m, Device *d) {
        free(d->mount_point);
        d->mount_point = NULL;
        d->mount_uid = (uid_t) -1;
        d->mount_ref_id = 0;
        manager_emit_device_changed(m, d, (char *[]) { "MountPoint", "MountUser", NULL });
}

int manager_release_reference(Manager *m, Device *d, uint64_t ref_id) {
        int r;

        if (ref_id == 0 || device_drop_reference_id(d, ref_id) <= 0)
                return 0;
        if (d->managed)
                (void) manager_save_state(m);
        manager_emit_device_changed(m, d, (char *[]) { "References", NULL });
        if (d->n_references > 0 || !d->managed || d->state != DEVICE_ATTACHED)
                return 0;
        r = device_teardown(m, d);
        if (r < 0)
                return log_warning_errno(r, "Failed to detach %s: %m", d->node);
        return r == 1;
}

void manager_waiter_timeout(Manager *m, Waiter *w) {
        Device *d = w->device;
        int r;

        device_unlink_waiter(d, w);

        if (w->kind == WAITER_DETACH && d->teardown_retry)
                (void) bus_reply_errnof(w->message, -ETIMEDOUT,
                                        "%s is still locked (udev probing it); its teardown is "
                                        "requested as soon as it is released.", d->node);
        else if (w->kind == WAITER_DETACH)
                (void) bus_reply_errnof(w->message, -ETIMEDOUT,
                                        "%s is still open; its teardown stays pending and "
                                        "completes when the last user closes it.", d->node);
        if (w->kind == WAITER_DETACH) {
                waiter_free(w);
                return;
        }

        /* Attach: nothing may be left behind. Drop the reference this call took; if it was
         * the last one, the device goes again. */
        if (device_drop_reference_id(d, w->ref_id) > 0) {
                if (d->managed)
                        (void) manager_save_state(m);
                manager_emit_device_changed(m, d, (char *[]) { "References", NULL });
        }

        if (d->n_references > 0 || !d->managed || d->state != DEVICE_ATTACHED) {
                (void) bus_reply_errnof(w->message, -ETIMEDOUT,
                                        "udev did not finish processing %s in time; the reference "
                                        "this call took was dropped.", d->node);
                waiter_free(w);
                return;
        }

        (void) bus_reply_errnof(w->message, -ETIMEDOUT,
                                "udev did not finish processing %s in time; the device was "
                                "detached again.", d->node);
        waiter_free(w);
        r = device_teardown(m, d);
        if (r < 0)
                log_warning_errno(r, "Failed to detach %s after the udev timeout: %m", d->node);
}

/* Detaches the loop devices stacked on d, deepest first: their backing holds d open, so d's
 * own teardown could not finish before theirs. */
static int detach_stacked(Manager *m, Device *d, unsigned depth) {
        dev_t devnum = d->status.devnum;
        int r;

        if (depth > CHAIN_MAX_DEPTH)
                return -ELOOP;

        for (size_t i = 0; i < m->n_slots; i++) {
                Device *e = m->devices[i];

                if (!e || e == d || !e->backing_is_block || e->status.backing_rdevice != devnum)
                        continue;
                r = detach_stacked(m, e, depth + 1);
                if (r < 0)
                        return r;
                /* The recursion may have removed devices; look the slot up again. */
                e = m->devices[i];
                if (!e || e->state != DEVICE_ATTACHED)
                        continue;
                if (e->n_references > 0) {
                        device_drop_all_references(e);
                        manager_emit_device_changed(m, e, (char *[]) { "References", NULL });
                }
                r = device_teardown(m, e);
                if (r < 0)
                        return r;
        }
        return 0;
}

int manager_detach(Manager *m, sd_bus_message *message, Device *d, const DetachOptions *o,
                   uid_t uid, sd_bus_error *error) {
        unsigned before = d->n_references;
        uint64_t diskseq = d->status.diskseq;
        Waiter *w;
        int r;

        /* Also for a device already pending: what is stacked on it is what keeps it open. */
        if (o->recursive) {
                r = detach_stacked(m, d, 1);
                if (r < 0)
                        return bus_error_set_errnof(error, r,
                                "Failed to detach the devices stacked on %s: %s.", d->node,
                                strerror(-r));
                /* A stacked device's teardown can complete synchronously, but never removes
                 * d itself; still, don't trust a pointer across teardowns. */
                if (manager_get_device_by_diskseq(m, diskseq) != d)
                        return sd_bus_reply_method_return(message, "s", LOOPMGR_STATE_DETACHED);
        }

        if (d->state == DEVICE_ATTACHED) {
                bool own = !o->all_references && device_has_reference_of(d, uid);

                if (!own)
                        /* A caller without a reference of its own (root, or detach-others
                         * once polkit is there) detaches the device itself. */
                        device_drop_all_references(d);
                else
                        (void) device_drop_reference(d, uid);

                bool changed = d->n_references != before;

                if (changed && d->managed)
                        (void) manager_save_state(m);

                /* A device made behind our back (losetup, mount -o loop) that a caller reused:
                 * dropping the last of *our* references hands it back to whoever made it. Only
                 * a caller holding no reference detaches it outright. */
                if (d->n_references > 0 || (!d->managed && own)) {
                        if (changed)
                                manager_emit_device_changed(m, d, (char *[]) { "References", NULL });
                        return sd_bus_reply_method_return(message, "s", LOOPMGR_STATE_ATTACHED);
                }

                r = device_teardown(m, d);
                if (r == 1)
                        /* Gone: InterfacesRemoved says all a References change would. */
                        return sd_bus_reply_method_return(message, "s", LOOPMGR_STATE_DETACHED);
                if (changed)
                        manager_emit_device_changed(m, d, (char *[]) { "References", NULL });
                if (r < 0)
                        return bus_error_set_errnof(error, r, "Failed to detach %s: %s.", d->node,
                                                    strerror(-r));
        }

        if (d->teardown_retry) {
                /* Teardown request under way (udev holds the device): answered when made. */
                r = device_add_waiter(d, WAITER_DETACH, message, false, uid, o->timeout_usec, &w);
                if (r < 0)
                        return bus_error_set_errnof(error, r, "Failed to wait for the teardown: %s.",
                                                    strerror(-r));
                w->wait = o->wait;
                return 1;
        }

        /* Pending: the kernel finishes when the last opener closes, and a udev event tells us. */
        if (!o->wait)
                return sd_bus_reply_method_return(message, "s", LOOPMGR_STATE_PENDING);

        r = device_add_waiter(d, WAITER_DETACH, message, false, uid, o->timeout_usec, &w);
        if (r < 0)
                return bus_error_set_errnof(error, r, "Failed to wait for the teardown: %s.",
                                            strerror(-r));
        w->wait = true;
        return 1;
}

static int on_name_owner_changed(sd_bus_message *message, void *userdata, sd_bus_error *ret_error) {
        Manager *m = userdata;
        const char *name, *old_owner, *new_owner;
        int r;

        r = sd_bus_message_read(message, "sss", &name, &old_owner, &new_owner);
        if (r < 0 || name[0] != ':' || new_owner[0] != 0)
                return 0;

        /* A connection went away: drop its lifetime=client references. */
        for (size_t i = 0; i < m->n_slots; i++) {
                Device *d = m->devices[i];

                if (!d || device_drop_client_references(d, name) == 0)
                        continue;
                if (d->managed)
                        (void) manager_save_state(m);
                manager_emit_device_changed(m, d, (char *[]) { "References", NULL });
                log_info("%s: dropped references of vanished client %s", d->node, name);
                if (d->n_references == 0 && d->managed && d->state == DEVICE_ATTACHED) {
                        r = device_teardown(m, d);
                        if (r < 0)
                                log_warning_errno(r, "Failed to detach %s: %m", d->node);
                }
        }
        return 0;
}

int manager_find_device(Manager *m, const char *spec, Device **ret) {
        const char *byseq = "/dev/disk/by-diskseq/";
        struct stat st;
        unsigned number;
        Device *d;

        if (!spec || !*spec)
                return -EINVAL;

        if (strncmp(spec, byseq, strlen(byseq)) == 0) {
                uint64_t seq;

                if (safe_atou64(spec + strlen(byseq), &seq) < 0)
                        return -EINVAL;
                d = manager_get_device_by_diskseq(m, seq);
                if (!d)
                        return -ENODEV;
                *ret = d;
                return 0;
        }

        if (loop_name_to_number(strncmp(spec, "/dev/", 5) == 0 ? spec + 5 : spec, &number) >= 0) {
                d = manager_get_device_by_number(m, number);
                if (!d)
                        return -ENODEV;
                *ret = d;
                return 0;
        }

        if (spec[0] != '/')
                return -EINVAL;
        if (stat(spec, &st) < 0)
                return -errno;

        if (S_ISBLK(st.st_mode)) {
                d = manager_get_device_by_devnum(m, st.st_rdev);
                if (!d)
                        return -ENODEV;
                *ret = d;
                return 0;
        }
        if (!S_ISREG(st.st_mode))
                return -EINVAL;

        /* A backing file: the device that exposes all of it, a managed one first. */
        d = NULL;
        for (size_t i = 0; i < m->n_slots; i++) {
                Device *e = m->devices[i];

                if (!e || !e->has_identity || e->identity.kind != BASE_FILE ||
                    e->identity.base_device != st.st_dev ||
                    e->identity.base_inode != (uint64_t) st.st_ino ||
                    e->identity.offset != 0 || e->identity.size != (uint64_t) st.st_size)
                        continue;
                if (!d || (e->managed && !d->managed))
                        d = e;
        }
        if (!d)
                return -ENODEV;
        *ret = d;
        return 0;
}

static bool bus_name_has_owner(Manager *m, const char *name) {
        sd_bus_message *reply = NULL;
        int r, has = 1;

        r = sd_bus_call_method(m->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "NameHasOwner", NULL, &reply, "s", name);
        if (r >= 0 && sd_bus_message_read(reply, "b", &has) < 0)
                has = 1;
        sd_bus_message_unref(reply);
        /* When in doubt keep the reference: dropping it could tear down a device in use. */
        return r < 0 || has;
}

/* After the restored devices were matched with the kernel: drop client references whose
 * holder disappeared while we were not running, finish what a previous run left half done,
 * and write the record as it now stands. */
static bool device_matches_intent(Device *d, const StateIntent *in) {
        if (d->managed || !d->status.bound || d->status.offset != in->offset ||
            d->status.size_limit != in->size_limit)
                return false;
        if (in->is_block)
                return d->backing_is_block && (uint64_t) d->status.backing_rdevice == in->device;
        return !d->backing_is_block && (uint64_t) d->status.backing_device == in->device &&
               d->status.backing_inode == in->inode;
}

static void manager_resume(Manager *m) {
        for (size_t i = 0; i < m->n_slots; i++) {
                Device *d = m->devices[i];
                bool dropped = false;
                int r;

                if (!d)
                        continue;

                if (m->has_restored_intent && device_matches_intent(d, &m->restored_intent)) {
                        /* Bound by our previous run, which died before recording it: nobody
                         * was told about it, so nobody holds it. */
                        log_warning("%s was attached by a previous run that stopped before "
                                    "recording it; detaching it.", d->node);
                        m->has_restored_intent = false;
                        r = device_teardown(m, d);
                        if (r < 0)
                                log_warning_errno(r, "Failed to detach it: %m");
                        continue;
                }

                if (!d->managed)
                        continue;

                /* Dropping frees the holder's references (and its name): copy the name and
                 * start over from the head after each drop. */
                for (Reference *ref = d->references; ref;) {
                        _cleanup_free_ char *owner = NULL;

                        if (ref->lifetime != LIFETIME_CLIENT || !ref->owner ||
                            bus_name_has_owner(m, ref->owner)) {
                                ref = ref->next;
                                continue;
                        }
                        owner = strdup(ref->owner);
                        if (!owner)
                                break;
                        log_debug("%s: client %s is gone", d->node, owner);
                        dropped = device_drop_client_references(d, owner) > 0 || dropped;
                        ref = d->references;
                }
                /* A reference whose Attach was never answered: its caller does not know it
                 * holds it (the previous run died while waiting for udev). */
                for (Reference **ref = &d->references; *ref;) {
                        if ((*ref)->confirmed) {
                                ref = &(*ref)->next;
                                continue;
                        }
                        log_debug("%s: reference %" PRIu64 " of uid %u was never confirmed",
                                  d->node, (*ref)->id, (unsigned) (*ref)->uid);
                        (void) device_drop_reference_id(d, (*ref)->id);
                        dropped = true;
                }
                if (dropped)
                        log_info("%s: dropped references of callers that went away or were "
                                 "never answered", d->node);

                if (d->n_references == 0 || d->state == DEVICE_DETACH_PENDING) {
                        d->state = DEVICE_ATTACHED;
                        r = device_teardown(m, d);
                        if (r < 0)
                                log_warning_errno(r, "Failed to resume the teardown of %s: %m",
                                                  m->devices[i] ? m->devices[i]->node : "a device");
                }
        }

        (void) manager_save_state(m);
}

int manager_start(Manager *m) {
        int r;

        r = sd_bus_open_system(&m->bus);
        if (r < 0)
                return log_error_errno(r, "Failed to connect to the system bus: %m");
        (void) sd_bus_set_description(m->bus, "loopmgrd");

        r = sd_bus_attach_event(m->bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Failed to attach the bus to the event loop: %m");

        r = manager_bus_register(m);
        if (r < 0)
                return log_error_errno(r, "Failed to register the manager object: %m");
        r = device_bus_register(m);
        if (r < 0)
                return log_error_errno(r, "Failed to register device objects: %m");

        r = sd_bus_match_signal_async(m->bus, &m->name_owner_slot, "org.freedesktop.DBus",
                                      "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                      "NameOwnerChanged", on_name_owner_changed, NULL, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch bus clients: %m");

        r = state_load(m->state_dir, &m->restored);
        if (r == -EBADMSG) {
                _cleanup_free_ char *from = NULL, *to = NULL;

                /* Never trust a damaged record: keep it for inspection and rebuild from the
                 * kernel (the bindings it named are adopted as unmanaged). */
                log_warning("The state file in %s is corrupt or truncated; rebuilding it from "
                            "the kernel, its devices are adopted as unmanaged.", m->state_dir);
                if (asprintf(&from, "%s/" STATE_FILE_NAME, m->state_dir) < 0)
                        from = NULL;
                else if (asprintf(&to, "%s/" STATE_FILE_NAME ".corrupt", m->state_dir) < 0)
                        to = NULL;
                else
                        (void) rename(from, to);
                /* The damage may be in the journal: keep it next to the snapshot. */
                free(from);
                free(to);
                from = to = NULL;
                if (asprintf(&from, "%s/" STATE_JOURNAL_NAME, m->state_dir) < 0)
                        from = NULL;
                else if (asprintf(&to, "%s/" STATE_JOURNAL_NAME ".corrupt", m->state_dir) < 0)
                        to = NULL;
                else
                        (void) rename(from, to);
        } else if (r == -ESTALE)
                /* /run survived a reboot: the bindings it names are gone with that kernel. */
                log_info("The state file in %s is from an earlier boot; starting afresh.",
                         m->state_dir);
        else if (r < 0 && r != -ENOENT)
                log_warning_errno(r, "Failed to read the state file in %s, starting afresh: %m",
                                  m->state_dir);

        /* Watch before enumerating, so that nothing happens unseen in between. */
        r = udev_watch_new(m->event, on_udev_watch_event, m, &m->udev_watch);
        if (r < 0)
                return log_error_errno(r, "Failed to start the udev monitor: %m");
        r = manager_watch_mounts(m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch the mount table: %m");
        /* The guard before the first enumeration, so that no foreign configuration goes
         * unseen between the two; its map is filled once the devices are known. */
        manager_guard_start(m);
        m->has_restored_intent = m->restored.has_intent;
        m->restored_intent = m->restored.intent;
        manager_rescan(m);
        state_done(&m->restored);
        /* Before the references are resumed: a mount's reference lives as long as its mount. */
        mount_adopt(m);
        manager_resume(m);
        udev_props_cleanup(m->root);
        loop_private_nodes_cleanup(m->root);
        manager_guard_publish(m);

        r = sd_bus_request_name(m->bus, LOOPMGR_BUS_NAME, 0);
        if (r < 0)
                return log_error_errno(r, "Failed to acquire the bus name %s: %m", LOOPMGR_BUS_NAME);

        log_info("loopmgrd %s ready, %zu loop device(s) bound", LOOPMGR_VERSION, m->n_devices);
        (void) sd_notify(false, "READY=1\nSTATUS=Managing loop devices");
        return 0;
}
