/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The ownership record as the core sees it: what the state files say of each managed device
 * (state.h writes and reads them), the saves after a change, and the resume at start-up that
 * matches the record with the kernel and finishes what a previous run left half done.
 */

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>

#include "log.h"
#include "manager.h"

/* What the state files record of d; sd borrows from d and from the writer's scratch array. */
static int state_device_of(StateWriter *w, Device *d, StateDevice *sd) {
        size_t k;

        *sd = (StateDevice){
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
                sd->refs[--k] = (StateRef){.uid = ref->uid,
                                           .lifetime = ref->lifetime,
                                           .owner = ref->owner,
                                           .confirmed = ref->confirmed};
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
        MANAGER_FOREACH_DEVICE(d, m) {
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
/* Whether a partial save can be appended: start-up is done and the writer has the files. */
static bool partial_save_possible(Manager *m) {
        return m->restored.n_devices == 0 && !m->restored.has_intent && m->state_writer;
}

/* The outcome of a partial commit: a writer out of step with the files (-ESTALE) falls back to
 * a full save. */
static int partial_save_done(Manager *m, int r) {
        if (r == -ESTALE)
                return manager_save_state(m);
        if (r < 0)
                return log_warning_errno(r, "Failed to write the state file in %s: %m",
                                         m->state_dir);
        return 0;
}

int manager_save_device_state(Manager *m, Device *d) {
        StateDevice sd;
        int r;

        if (!partial_save_possible(m))
                return manager_save_state(m);
        if (d && d->managed) {
                r = state_device_of(m->state_writer, d, &sd);
                if (r < 0)
                        return log_warning_errno(r, "Failed to write the state file in %s: %m",
                                                 m->state_dir);
        }
        r = state_writer_commit_one(m->state_writer, d && d->managed ? &sd : NULL, m->has_intent,
                                    &m->intent);
        return partial_save_done(m, r);
}

/* The same after d left the registry: its record is dropped, the others are kept. */
int manager_save_dropped_state(Manager *m, Device *d) {
        if (!partial_save_possible(m))
                return manager_save_state(m);
        return partial_save_done(m, state_writer_commit_drop(m->state_writer, d->status.name,
                                                             m->has_intent, &m->intent));
}

/* Gives a binding found at start-up back what the ownership record says about it. */
int manager_restore_device(Device *d, const StateDevice *sd) {
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

void manager_resume(Manager *m) {
        MANAGER_FOREACH_DEVICE(d, m) {
                bool dropped = false;
                int r;

                if (!d)
                        continue;

                if (m->has_restored_intent && device_matches_intent(d, &m->restored_intent)) {
                        /* Bound by our previous run, which died before recording it: nobody
                         * was told about it, so nobody holds it. */
                        log_warning("%s was attached by a previous run that stopped before "
                                    "recording it; detaching it.",
                                    d->node);
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
                            manager_client_exists(m, ref->owner)) {
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
                                 "never answered",
                                 d->node);

                if (d->n_references == 0 || d->state == DEVICE_DETACH_PENDING) {
                        d->state = DEVICE_ATTACHED;
                        const char *node = d->node;

                        /* d may be gone afterwards; its node name with it. */
                        r = device_teardown(m, d);
                        if (r < 0)
                                log_warning_errno(r, "Failed to resume the teardown of %s: %m",
                                                  r == 1 ? "a device" : node);
                }
        }

        (void) manager_save_state(m);
}
