/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Teardown: a device nobody references any more is cleared in the kernel. udev's probe may
 * hold a lock on it for a moment (retried on a timer, never waiting in the event loop); the
 * kernel defers the clear while the device is open (the device is pending, then gone when the
 * last opener closes). Detach, the release of references and the waiters' timeouts end here.
 */

#include <inttypes.h>
#include <stdio.h>
#include <sys/param.h>

#include "log.h"
#include "loopmgr-bus.h"
#include "manager.h"
#include "mount-job.h"
#include "registry.h"
#include "waiter.h"

/* A teardown that finds the device flock()ed (udev probing it) is retried every 1 ms for 20 ms,
 * then backing off to 4 ms, for at most 100 ms (a probe takes a few); then it goes on without the
 * lock and the kernel defers the clear to the holder's close (6.11+; docs/KERNEL.md, "Deferred
 * teardown"). */
#define TEARDOWN_RETRY_FIRST_USEC 1000U
#define TEARDOWN_RETRY_MAX_USEC   4000U
#define TEARDOWN_RETRY_FAST_USEC  20000U
#define TEARDOWN_LOCK_BUDGET_USEC 100000U

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
                manager_emit_device_changed(m, d, (char *[]){"State", NULL});
        }
        log_info("%s is still open; teardown pending until it is closed", d->node);
        return 0;
}

/* Answers the Detach calls queued on d: with error r if negative, else with state. only_nowait:
 * just those that waited for the teardown request, not for the teardown itself. */
static void complete_detach_waiters(Manager *m, Device *d, bool only_nowait, int r,
                                    const char *state) {
        for (Waiter **i = &d->waiters; *i;) {
                Waiter *w = *i;

                if (w->kind != WAITER_DETACH || (only_nowait && w->wait)) {
                        i = &w->next;
                        continue;
                }
                *i = w->next;
                if (r < 0)
                        (void) manager_send_errorf(m, w->call, r, "Failed to detach %s: %s.",
                                                   d->node, strerror(-r));
                else
                        (void) manager_send_detach_reply(m, w->call, state);
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
                complete_detach_waiters(m, d, false, 0, LOOPMGR_STATE_ATTACHED);
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
                return 0; /* d is gone, its waiters were answered "detached" */
        if (r < 0) {
                log_warning_errno(r, "Failed to detach %s: %m", d->node);
                complete_detach_waiters(m, d, false, r, NULL);
                return 0;
        }
        complete_detach_waiters(m, d, true, 0, LOOPMGR_STATE_PENDING);
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
int device_teardown(Manager *m, Device *d) {
        uint64_t now = 0;
        int r;

        if (d->teardown_retry)
                return 2;
        if (d->mount_job) {
                /* The mount job's end settles the device (mount-job.c job_settle()). */
                log_debug("%s: teardown waits for its mount job", d->node);
                return 0;
        }

        /* Our shared lock would block the exclusive one the teardown takes. */
        d->hold_fd = safe_close(d->hold_fd);
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

void manager_device_clear_mount(Manager *m, Device *d, unsigned partition) {
        DeviceMount *mnt = device_get_mount(d, partition);

        if (!mnt)
                return;
        device_mount_clear(mnt);
        manager_emit_mount_changed(m, d, partition);
}

int manager_release_reference(Manager *m, Device *d, uint64_t ref_id) {
        int r;

        if (ref_id == 0 || device_drop_reference_id(d, ref_id) <= 0)
                return 0;
        if (d->managed)
                (void) manager_save_state(m);
        manager_emit_device_changed(m, d, (char *[]){"References", NULL});
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

        waiter_unlink(d, w);

        if (w->kind == WAITER_DETACH && d->teardown_retry)
                (void) manager_send_errorf(m, w->call, -ETIMEDOUT,
                                           "%s is still locked (udev probing it); its teardown "
                                           "is requested as soon as it is released.",
                                           d->node);
        else if (w->kind == WAITER_DETACH)
                (void) manager_send_errorf(m, w->call, -ETIMEDOUT,
                                           "%s is still open; its teardown stays pending and "
                                           "completes when the last user closes it.",
                                           d->node);
        if (w->kind == WAITER_DETACH) {
                waiter_free(w);
                return;
        }

        /* Attach: nothing may be left behind. Drop the reference this call took; if it was
         * the last one, the device goes again. */
        if (device_drop_reference_id(d, w->ref_id) > 0) {
                if (d->managed)
                        (void) manager_save_state(m);
                manager_emit_device_changed(m, d, (char *[]){"References", NULL});
        }

        if (d->n_references > 0 || !d->managed || d->state != DEVICE_ATTACHED) {
                (void) manager_send_errorf(m, w->call, -ETIMEDOUT,
                                           "udev did not finish processing %s in time; the "
                                           "reference this call took was dropped.",
                                           d->node);
                waiter_free(w);
                return;
        }

        (void) manager_send_errorf(m, w->call, -ETIMEDOUT,
                                   "udev did not finish processing %s in time; the device was "
                                   "detached again.",
                                   d->node);
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

        MANAGER_FOREACH_DEVICE(e, m) {
                uint64_t diskseq = e->status.diskseq;

                if (e == d || !e->backing_is_block || e->status.backing_rdevice != devnum)
                        continue;
                if (e->mount_job)
                        return -EBUSY;
                r = detach_stacked(m, e, depth + 1);
                if (r < 0)
                        return r;
                /* The recursion may have removed devices, e among them: look it up again (the
                 * walk itself reads the next slot afresh). */
                e = manager_get_device_by_diskseq(m, diskseq);
                if (!e || e->state != DEVICE_ATTACHED)
                        continue;
                if (e->n_references > 0) {
                        device_drop_all_references(e);
                        manager_emit_device_changed(m, e, (char *[]){"References", NULL});
                }
                r = device_teardown(m, e);
                if (r < 0)
                        return r;
        }
        return 0;
}

int manager_detach(Manager *m, Call *call, Device *d, const DetachOptions *o, uid_t uid,
                   Problem *error) {
        unsigned before = d->n_references;
        uint64_t diskseq = d->status.diskseq;
        Waiter *w;
        int r;

        /* Busy rather than waiting: the mount may take as long as the image makes it. */
        r = manager_mount_job_busy(d, error);
        if (r < 0)
                return r;

        /* Also for a device already pending: what is stacked on it is what keeps it open. */
        if (o->recursive) {
                r = detach_stacked(m, d, 1);
                if (r < 0)
                        return problem_setf(error, r,
                                            "Failed to detach the devices stacked on %s: %s.",
                                            d->node, strerror(-r));
                /* A stacked device's teardown can complete synchronously, but never removes
                 * d itself; still, don't trust a pointer across teardowns. */
                if (manager_get_device_by_diskseq(m, diskseq) != d)
                        return manager_send_detach_reply(m, call, LOOPMGR_STATE_DETACHED);
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
                                manager_emit_device_changed(m, d, (char *[]){"References", NULL});
                        return manager_send_detach_reply(m, call, LOOPMGR_STATE_ATTACHED);
                }

                r = device_teardown(m, d);
                if (r == 1)
                        /* Gone: InterfacesRemoved says all a References change would. */
                        return manager_send_detach_reply(m, call, LOOPMGR_STATE_DETACHED);
                if (changed)
                        manager_emit_device_changed(m, d, (char *[]){"References", NULL});
                if (r < 0)
                        return problem_setf(error, r, "Failed to detach %s: %s.", d->node,
                                            strerror(-r));
        }

        if (d->teardown_retry) {
                /* Teardown request under way (udev holds the device): answered when made. */
                r = manager_add_waiter(m, d, WAITER_DETACH, call, false, uid, o->timeout_usec, &w);
                if (r < 0)
                        return problem_setf(error, r, "Failed to wait for the teardown: %s.",
                                            strerror(-r));
                w->wait = o->wait;
                return 1;
        }

        /* Pending: the kernel finishes when the last opener closes, and a udev event tells us. */
        if (!o->wait)
                return manager_send_detach_reply(m, call, LOOPMGR_STATE_PENDING);

        r = manager_add_waiter(m, d, WAITER_DETACH, call, false, uid, o->timeout_usec, &w);
        if (r < 0)
                return problem_setf(error, r, "Failed to wait for the teardown: %s.", strerror(-r));
        w->wait = true;
        return 1;
}

void manager_client_vanished(Manager *m, const char *name) {
        int r;

        /* A connection went away: its mounts in flight are undone when they return, and its
         * lifetime=client references are dropped (a device with a mount job in flight goes
         * once the job is over). */
        manager_mount_jobs_client_vanished(m, name);
        MANAGER_FOREACH_DEVICE(d, m) {
                if (device_drop_client_references(d, name) == 0)
                        continue;
                if (d->managed)
                        (void) manager_save_state(m);
                manager_emit_device_changed(m, d, (char *[]){"References", NULL});
                log_info("%s: dropped references of vanished client %s", d->node, name);
                if (d->n_references == 0 && d->managed && d->state == DEVICE_ATTACHED) {
                        r = device_teardown(m, d);
                        if (r < 0)
                                log_warning_errno(r, "Failed to detach %s: %m", d->node);
                }
        }
}
