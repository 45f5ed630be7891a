/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Attach: the request's chain checked against the alias rule, then the identical device
 * reused (revived if its teardown is pending) or a new binding made, recorded before anybody
 * can see it, and the caller answered now or once udev has processed the binding.
 */

#include <inttypes.h>
#include <stdio.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "log.h"
#include "loopmgr-bus.h"
#include "manager.h"
#include "partitions.h"
#include "media-mount.h"
#include "udev-props.h"
#include "registry.h"
#include "waiter.h"

static const char *fd_type_problem(mode_t mode) {
        if (S_ISDIR(mode))
                return "is a directory";
        if (S_ISFIFO(mode))
                return "is a pipe";
        if (S_ISSOCK(mode))
                return "is a socket";
        if (S_ISCHR(mode))
                return "is a character device";
        if (S_ISLNK(mode))
                return "is a symbolic link";
        if (!S_ISREG(mode) && !S_ISBLK(mode))
                return "is neither a regular file nor a block device";
        return NULL;
}

int attach_request_prepare(int fd, const AttachOptions *o, AttachRequest *req, Problem *error) {
        const char *problem, *reason = NULL;
        int flags, r;

        flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return problem_setf(error, -EBADF, "The file descriptor is not usable: %m.");
        if (flags & O_PATH)
                return problem_setf(
                        error, -EBADF,
                        "The file descriptor was opened with O_PATH; open the file for reading.");
        if (fstat(fd, &req->st) < 0)
                return problem_setf(error, -EBADF, "Cannot stat the file descriptor: %m.");
        problem = fd_type_problem(req->st.st_mode);
        if (problem)
                return problem_setf(error, -EINVAL,
                                    "The file descriptor %s; a loop device needs a regular "
                                    "file or a block device.",
                                    problem);

        switch (flags & O_ACCMODE) {
        case O_RDONLY:
                if (o->read_only == 0)
                        return problem_setf(
                                error, -EINVAL,
                                "read-only=false was asked for, but the file descriptor is opened "
                                "read-only; open it read-write for a writable device.");
                req->read_only = true;
                break;
        case O_RDWR:
                req->read_only = o->read_only == 1;
                break;
        default:
                return problem_setf(error, -EINVAL,
                                    "The file descriptor is opened write-only; a loop "
                                    "device must be able to read it.");
        }

        r = loop_backing_size(fd, &req->backing_size);
        if (r < 0)
                return problem_setf(error, -EINVAL, "Cannot determine the size of the backing: %s.",
                                    strerror(-r));
        r = loop_validate_range(req->backing_size, o->offset, o->size_limit, o->sector_size,
                                &reason, &req->size);
        if (r < 0)
                return problem_setf(error, -EINVAL, "%s",
                                    reason ?: "Invalid offset or size limit.");

        req->fd = fd;
        req->options = o;
        return 0;
}

/* The caller has its answer: its reference now counts across restarts. Returns 1 if a
 * reference was confirmed. */
static int attach_confirm(Device *d, uint64_t ref_id) {
        Reference *ref = device_find_reference(d, ref_id);

        log_debug("%s: confirming reference %" PRIu64 ": %s", d->node, ref_id,
                  !ref             ? "not found"
                  : ref->confirmed ? "already confirmed"
                                   : "confirmed");

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
                (void) manager_send_attach_reply(m, w->call, d, w->reused);
                waiter_free(w);
        }
        /* Out of the process now, not after whatever signals are queued before it: the
         * references are already recorded as answered. */
        if (confirmed > 0)
                manager_send_flush(m);
}

/* Marks d as processed by udev once its by-diskseq link exists, and answers every Attach
 * queued on it: whoever notices first (an event, or a later Attach) completes all waiters. */
bool manager_check_udev_ready(Manager *m, Device *d) {
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
        manager_emit_device_changed(m, d, (char *[]){"State", "Autoclear", NULL});
        /* The caller adds its reference and records the state right after. */

        /* Detach(wait=true) calls were waiting for a teardown that no longer happens. */
        for (Waiter **i = &d->waiters; *i;) {
                Waiter *w = *i;

                if (w->kind != WAITER_DETACH) {
                        i = &w->next;
                        continue;
                }
                *i = w->next;
                (void) manager_send_detach_reply(m, w->call, LOOPMGR_STATE_ATTACHED);
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
        char name[16]; /* the last device prepared */
        int fd;        /* its properties file, or -EBADF */
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
static int attach_reply_or_wait(Manager *m, Call *call, Device *d, bool reused, uid_t uid,
                                uint64_t ref_id, const AttachOptions *o) {
        Waiter *w;
        int r;

        if (o->wait_udev && !manager_check_udev_ready(m, d)) {
                r = manager_add_waiter(m, d, WAITER_ATTACH, call, reused, uid, o->timeout_usec, &w);
                if (r >= 0)
                        w->ref_id = ref_id;
                return r;
        }
        /* Record first, answer second, and flush (see complete_attach_waiters()). */
        if (attach_confirm(d, ref_id) > 0 && d->managed)
                (void) manager_save_state(m);
        r = manager_send_attach_reply(m, call, d, reused);
        if (r >= 0)
                manager_send_flush(m);
        return r;
}

/* What loop_attach() added with BLKPG because the kernel's scan made no partitions. */
static void log_table_added(const LoopStatus *st) {
        const LoopTableAdd *t = &st->table_added;

        if (t->added > 0)
                log_info("%s: the kernel made no partitions of its %s partition table; added %u "
                         "with BLKPG",
                         st->name, t->pttype, t->added);
        if (t->failed > 0)
                log_warning_errno(t->error,
                                  "%s: %u partition(s) of its %s partition table could "
                                  "not be added: %m",
                                  st->name, t->failed, t->pttype);
        else if (t->error < 0)
                log_warning_errno(t->error, "%s: cannot read its partition table: %m", st->name);
}

int manager_attach(Manager *m, Call *call, const AttachRequest *req, Problem *error) {
        const AttachOptions *o = req->options;
        _cleanup_(loop_status_done) LoopStatus st = {};
        _cleanup_(chain_done) Chain chain = {};
        Device *d = NULL, *old;
        _cleanup_close_ int hold_fd = -EBADF;
        uint64_t ref_id = 0;
        LoopConfig config;
        int r;

        r = manager_resolve_request(m, req, &chain);
        if (r < 0)
                return manager_resolve_problem(r, error);

        /* Stacking on a device we are tearing down would keep it open forever. */
        for (size_t i = 1; i < chain.n_layers; i++) {
                Device *lower;

                if (chain.layers[i].kind != LAYER_LOOP)
                        continue;
                lower = manager_get_device_by_devnum(m, chain.layers[i].devnum);
                if (lower && lower->state == DEVICE_DETACH_PENDING)
                        return problem_setf(error, -EBUSY,
                                            "%s, below the requested device, is being torn down.",
                                            lower->node);
        }

        r = manager_check_aliases(m, &chain, req, &d, error);
        if (r < 0)
                return r;
        /* The identical device is not the one asked for: binding that one would be an alias. */
        if (r > 0 && o->device >= 0 && d->status.number != (unsigned) o->device)
                return problem_setf(
                        error, -EBUSY,
                        "%s exposes exactly these bytes already; loop%d cannot be bound to them "
                        "too.",
                        d->node, o->device);
        if (r > 0 && d->state == DEVICE_DETACH_PENDING) {
                r = device_revive(m, d);
                if (r < 0)
                        return problem_setf(
                                error, -EBUSY,
                                "%s exposes exactly these bytes but its teardown can no longer be "
                                "cancelled (%s); retry once it is gone.",
                                d->node, strerror(-r));
        }
        if (r > 0) {
                r = device_add_reference(d, req->uid, o->lifetime, req->sender);
                if (r < 0)
                        return problem_setf(error, r, "Out of memory.");
                /* Recorded as unconfirmed until the caller has its answer: a daemon killed in
                 * between must not leave a reference nobody knows it holds. */
                d->references->confirmed = false;
                ref_id = d->references->id;
                r = manager_save_device_state(m, d);
                if (r < 0) {
                        (void) device_drop_reference(d, req->uid);
                        return problem_setf(
                                error, r,
                                "Cannot record the new reference in the state directory: %s.",
                                strerror(-r));
                }
                manager_emit_device_changed(m, d, (char *[]){"References", NULL});
                log_info("Reusing %s for uid %u (%u references)", d->node, (unsigned) req->uid,
                         d->n_references);
                r = attach_reply_or_wait(m, call, d, true, req->uid, ref_id, o);
                if (r < 0) {
                        (void) device_drop_reference_id(d, ref_id);
                        manager_emit_device_changed(m, d, (char *[]){"References", NULL});
                        return problem_setf(error, r, "Failed to reply: %s", strerror(-r));
                }
                return 1;
        }

        _cleanup_(udev_prepare_done) UdevPrepare prepare = {.m = m, .uid = req->uid, .fd = -EBADF};
        config = (LoopConfig){
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
                .ret_hold_fd = &hold_fd,
        };

        /* Record the intent first: if we die between the bind and recording the device, the
         * next start finds the binding that matches it and nobody's record, and tears it
         * down (its caller never got an answer). */
        m->intent = (StateIntent){
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
                return problem_setf(error, r,
                                    "Cannot record the attach in the state directory %s: %s.",
                                    m->state_dir, strerror(-r));
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
                return problem_setf(
                        error, -EBUSY,
                        "loop%d is bound already, being torn down, or in use by somebody else.",
                        o->device);
        if (o->device >= 0 && r == -ENODEV)
                return problem_setf(error, -ENODEV,
                                    "loop%d does not exist and the kernel cannot create it.",
                                    o->device);
        if (r == -EBUSY || r == -ENOSPC || r == -EAGAIN)
                return problem_setf(error, -ENOSPC, "The kernel has no free loop device (%s).",
                                    strerror(-r));
        if (r == -EOPNOTSUPP)
                return problem_setf(
                        error, -EINVAL,
                        "direct-io=on was asked for, but the backing file system does not support "
                        "direct I/O with this sector size.");
        if (r < 0)
                return problem_setf(error, r == -ENOMEM ? r : -EINVAL,
                                    "The kernel refused to configure the loop device: %s.",
                                    strerror(-r));

        /* Our own fstat() is the authority on what we bound, whatever the ioctl reports. */
        st.backing_rdevice = S_ISBLK(req->st.st_mode) ? req->st.st_rdev : 0;
        st.backing_device = S_ISBLK(req->st.st_mode) ? st.backing_device : req->st.st_dev;
        st.backing_inode = req->st.st_ino;

        old = manager_get_device_by_number(m, st.number);
        if (old)
                /* A binding we had not yet seen go away. */
                manager_remove_device(m, old, -ENXIO);

        log_table_added(&st);
        r = device_new(m, &m->last_reference_id, &st, true, &d);
        if (r >= 0 && st.partscan) {
                /* In InterfacesAdded and the answer already: they exist now. */
                (void) manager_read_partitions(m, d, false);
                d->hold_fd = TAKE_FD(hold_fd);
        }
        /* Before any loop_detach() below, whose exclusive lock it would block. */
        hold_fd = safe_close(hold_fd);
        if (r >= 0) {
                registry_update_identity(m, d);
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
                return problem_setf(error, r, "Failed to register the new device: %s.",
                                    strerror(-r));
        }

        /* The answer (or the waiter) first, then the announcement to everybody else and the
         * log line: building InterfacesAdded with every property costs more than the rest of
         * the attach, and the caller has no use for it. */
        r = attach_reply_or_wait(m, call, d, false, req->uid, ref_id, o);
        manager_announce_device(m, d);
        log_info("Attached %s (diskseq %" PRIu64 ") for uid %u", d->node, d->status.diskseq,
                 (unsigned) req->uid);
        if (r < 0) {
                device_drop_all_references(d);
                d->hold_fd = safe_close(d->hold_fd);
                if (loop_detach(m->root, d->status.name, d->status.diskseq) != 0)
                        manager_remove_device(m, d, r);
                return problem_setf(error, r, "Failed to wait for udev: %s.", strerror(-r));
        }
        return 1;
}
