/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Device.Mount and Device.Unmount with their blocking system calls on worker threads
 * (mount-job.h). Everything in this file but job_thread() runs on the event loop.
 */

#include <signal.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/mount.h>

#include "log.h"
#include "manager.h"
#include "mount-job.h"
#include "partitions.h"
#include "registry.h"

static MountJob *job_free(MountJob *j) {
        if (!j)
                return NULL;
        sd_event_source_disable_unref(j->event_source);
        if (j->event_fd >= 0)
                (void) close(j->event_fd);
        mount_work_done(&j->mount);
        free(j->unmount.path);
        free(j->node);
        free(j->mount_point);
        free(j->sender);
        manager_call_unref(j->manager, j->call);
        free(j);
        return NULL;
}

static MountJob *job_new(Manager *m, MountJobKind kind, uint64_t diskseq, unsigned partition,
                         dev_t devnum, const char *node, Call *call, const char *sender,
                         uid_t uid) {
        MountJob *j = calloc(1, sizeof(*j));

        if (!j)
                return NULL;
        j->manager = m;
        j->kind = kind;
        j->diskseq = diskseq;
        j->partition = partition;
        j->devnum = devnum;
        j->uid = uid;
        j->event_fd = -EBADF;
        j->mount = (MountWork){.dev_fd = -EBADF, .user_fd = -EBADF};
        j->node = strdup(node);
        if (sender)
                j->sender = strdup(sender);
        if (!j->node || (sender && !j->sender))
                return job_free(j);
        j->call = manager_call_ref(m, call);
        return j;
}

/* The worker: the blocking calls on the job's own copies, nothing else. Its last act is the
 * write to the eventfd; from then on the job is the loop's again (it joins the thread before
 * reading what the worker wrote). */
static void *job_thread(void *userdata) {
        MountJob *j = userdata;
        uint64_t one = 1;

        if (j->kind == MOUNT_JOB_MOUNT)
                (void) mount_work_run(&j->mount);
        else
                j->unmount.error = umount2(j->unmount.path, j->unmount.flags) < 0 ? -errno : 0;
        while (write(j->event_fd, &one, sizeof(one)) < 0 && errno == EINTR)
                ;
        return NULL;
}

static void job_unlink(Manager *m, MountJob *j) {
        for (MountJob **i = &m->mount_jobs; *i; i = &(*i)->next)
                if (*i == j) {
                        *i = j->next;
                        j->next = NULL;
                        return;
                }
}

/* The device the job is for, if it still exists, no longer carrying the job. */
static Device *job_take_device(Manager *m, MountJob *j) {
        Device *d = manager_get_device_by_diskseq(m, j->diskseq);

        if (d && d->mount_job == j)
                d->mount_job = NULL;
        return d;
}

/* After a job: a device that lost its last reference while the job ran (its holder went away)
 * was kept for the job; it goes now. */
static void job_settle(Manager *m, Device *d) {
        int r;

        if (!d || d->mount_job || d->n_references > 0 || !d->managed || d->state != DEVICE_ATTACHED)
                return;
        r = device_teardown(m, d);
        if (r < 0)
                log_warning_errno(r, "Failed to detach %s: %m", d->node);
}

static int on_job_done(sd_event_source *s, int fd, uint32_t revents, void *userdata);

static int job_start(Manager *m, MountJob *j, Device *d) {
        sigset_t all, old;
        int r;

        j->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (j->event_fd < 0)
                return -errno;
        r = sd_event_add_io(m->event, &j->event_source, j->event_fd, EPOLLIN, on_job_done, j);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(j->event_source, "mount-job");

        /* Signals are the loop's (signalfd): the worker blocks them all. */
        (void) sigfillset(&all);
        (void) pthread_sigmask(SIG_SETMASK, &all, &old);
        r = -pthread_create(&j->thread, NULL, job_thread, j);
        (void) pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0)
                return r;
        j->started = true;
        j->next = m->mount_jobs;
        m->mount_jobs = j;
        if (d)
                d->mount_job = j;
        return 0;
}

/* Unmounts what a Mount made for nobody (its caller went away, the device changed), on a
 * worker as well: the unmount of a file system writes to it. */
static void job_undo(Manager *m, MountJob *done, Device *d) {
        _cleanup_free_ char *path = NULL;
        MountJob *j;
        int r = -ENOMEM;

        j = job_new(m, MOUNT_JOB_UNDO, done->diskseq, done->partition, done->devnum, done->node,
                    NULL, NULL, done->uid);
        if (j) {
                j->mount_point = strdup(done->mount.mount_point);
                j->unmount.path = path_join_root(m->root, done->mount.mount_point);
                j->unmount.flags = UMOUNT_NOFOLLOW | MNT_DETACH;
                if (j->mount_point && j->unmount.path) {
                        r = job_start(m, j, d);
                        if (r >= 0)
                                return;
                }
        }
        /* Could not start the worker: unmount here, rather than leave the mount behind. */
        log_warning_errno(r, "%s: cannot unmount %s on a worker (%m); unmounting it in the loop",
                          done->node, done->mount.mount_point);
        job_free(j);
        path = path_join_root(m->root, done->mount.mount_point);
        if (path && umount2(path, UMOUNT_NOFOLLOW | MNT_DETACH) >= 0)
                mount_remove_dir(m, done->mount.mount_point);
}

static void mount_job_reply_error(Manager *m, MountJob *j) {
        const MountWork *w = &j->mount;
        int r = w->error;

        if (r == -EMEDIUMTYPE)
                (void) manager_send_errorf(m, j->call, r, "%s holds %s.", j->node,
                                           w->what ?: "no file system");
        else if (r == -ESTALE)
                (void) manager_send_errorf(m, j->call, -ENODEV,
                                           "%s was detached or rebound meanwhile.", j->node);
        else if (r == -EOPNOTSUPP)
                /* ENOPKG: the bus layer's NotSupported (no driver for it in this kernel). */
                (void) manager_send_errorf(m, j->call, -ENOPKG, "Cannot mount %s: %s.", j->node,
                                           w->what ?: "not supported by this kernel");
        else
                (void) manager_send_errorf(m, j->call, r, "Cannot mount %s: %s: %s.", j->node,
                                           w->what ?: "error", strerror(-r));
}

/* The mount the job is about on d; NULL when d no longer has that partition (or another one
 * has its number by now). */
static DeviceMount *job_mount(Device *d, MountJob *j) {
        if (!d || device_mount_devnum(d, j->partition) != j->devnum)
                return NULL;
        return device_get_mount(d, j->partition);
}

static void mount_job_finish(Manager *m, MountJob *j) {
        MountWork *w = &j->mount;
        Device *d = job_take_device(m, j);
        DeviceMount *mnt = job_mount(d, j);
        bool gone;

        if (mnt && w->probed) {
                if (j->partition == 0)
                        mount_set_ids(m, d, &w->probe);
                else
                        manager_set_partition_ids(m, d, device_get_partition(d, j->partition),
                                                  w->probe.type, w->probe.label, w->probe.uuid);
        }
        if (w->foreign_mount)
                log_warning("%s: the mount on /run/media/%s was not the device's; unmounted it",
                            j->node, w->user);

        /* Gone: NameOwnerChanged said so, or the bus does now (the signal may still be
         * queued behind this event). */
        gone = j->caller_gone || (j->sender && !manager_client_exists(m, j->sender));
        if (w->error < 0) {
                log_debug_errno(w->error, "%s: mount failed: %s: %m", j->node, w->what ?: "");
                if (!gone)
                        mount_job_reply_error(m, j);
                job_settle(m, d);
                return;
        }

        if (gone || !mnt || d->state != DEVICE_ATTACHED || mnt->point) {
                log_info("%s: mounted on %s, but %s; unmounting it again", j->node, w->mount_point,
                         gone ? "the caller went away meanwhile" : "the device changed meanwhile");
                if (!gone)
                        (void) manager_send_errorf(m, j->call, -ENODEV,
                                                   "%s was detached or rebound meanwhile.",
                                                   j->node);
                job_undo(m, j, d);
                job_settle(m, d);
                return;
        }

        mnt->point = TAKE_PTR(w->mount_point);
        mnt->uid = j->uid;
        mnt->ref_id = 0;
        if (j->release_reference &&
            manager_release_to_mount(m, d, j->partition, device_own_reference(d, j->uid), j->uid) <
                    0)
                log_warning("%s: out of memory handing the reference over to the mount", j->node);
        log_info("Mounted %s (%s) on %s for uid %u", j->node, w->fstype_used, mnt->point,
                 (unsigned) j->uid);
        manager_emit_mount_changed(m, d, j->partition);
        (void) manager_send_mount_reply(m, j->call, mnt->point);
        job_settle(m, d);
}

static void unmount_job_finish(Manager *m, MountJob *j) {
        Device *d = job_take_device(m, j);
        DeviceMount *mnt = job_mount(d, j);
        uint64_t ref_id;
        int r;

        r = mount_unmount_finish(m, j->devnum, j->mount_point, j->unmount.error);
        if (j->kind == MOUNT_JOB_UNDO) {
                if (r < 0)
                        log_warning_errno(r, "%s: cannot unmount %s again: %m", j->node,
                                          j->mount_point);
                else
                        log_info("Unmounted %s from %s again", j->node, j->mount_point);
                job_settle(m, d);
                return;
        }

        if (r == -EBUSY)
                (void) manager_send_errorf(m, j->call, r,
                                           "%s is in use (open files or a process working "
                                           "inside it); close them, or unmount with force.",
                                           j->mount_point);
        else if (r < 0)
                (void) manager_send_errorf(m, j->call, r, "Cannot unmount %s: %s.", j->mount_point,
                                           strerror(-r));
        if (r < 0) {
                job_settle(m, d);
                return;
        }

        log_info("Unmounted %s from %s", j->node, j->mount_point);
        if (!mnt || !streq_ptr(mnt->point, j->mount_point)) {
                (void) manager_send_unmount_reply(m, j->call);
                job_settle(m, d);
                return;
        }
        ref_id = mnt->ref_id;
        manager_device_clear_mount(m, d, j->partition);
        (void) manager_send_unmount_reply(m, j->call);
        /* The reference the mount held goes with it; the last one detaches the device (the
         * teardown completes once the file system let go of it). May free d. */
        if (manager_release_reference(m, d, ref_id) == 0)
                job_settle(m, d);
}

static int on_job_done(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        MountJob *j = userdata;
        Manager *m = j->manager;
        uint64_t n;

        if (read(fd, &n, sizeof(n)) < 0 && errno == EAGAIN)
                return 0;
        /* The worker wrote its last; joining makes what it wrote ours. */
        (void) pthread_join(j->thread, NULL);
        j->started = false;
        job_unlink(m, j);
        /* Safe inside the dispatch: sd-event frees the source after the callback. */
        j->event_source = sd_event_source_disable_unref(j->event_source);

        if (j->kind == MOUNT_JOB_MOUNT)
                mount_job_finish(m, j);
        else
                unmount_job_finish(m, j);
        job_free(j);
        return 0;
}

int manager_mount_job_busy(Device *d, Problem *error) {
        if (!d->mount_job)
                return 0;
        switch (d->mount_job->kind) {
        case MOUNT_JOB_MOUNT:
                return problem_setf(error, -EBUSY, "A mount of %s is in progress.", d->node);
        case MOUNT_JOB_UNMOUNT:
                return problem_setf(error, -EBUSY, "An unmount of %s is in progress.", d->node);
        case MOUNT_JOB_UNDO:
        default:
                return problem_setf(error, -EBUSY, "%s is being unmounted again.", d->node);
        }
}

int manager_mount_target(Device *d, unsigned partition, DeviceMount **ret, Problem *error) {
        DeviceMount *mnt;
        int r;

        r = manager_mount_job_busy(d, error);
        if (r < 0)
                return r;
        mnt = device_get_mount(d, partition);
        if (!mnt)
                return problem_setf(error, -EINVAL, "%s has no partition %u.", d->node, partition);
        if (ret)
                *ret = mnt;
        return 0;
}

int manager_mount(Manager *m, Call *call, Device *d, const MountRequest *req,
                  bool release_reference, const char *sender, Problem *error) {
        _cleanup_free_ char *what = NULL;
        const char *node;
        MountJob *j;
        int r;

        r = manager_mount_target(d, req->partition, NULL, error);
        if (r < 0)
                return r;
        node = device_mount_node(d, req->partition);
        j = job_new(m, MOUNT_JOB_MOUNT, d->status.diskseq, req->partition,
                    device_mount_devnum(d, req->partition), node, call, sender, req->uid);
        if (!j)
                return problem_setf(error, -ENOMEM, "Out of memory.");
        j->release_reference = release_reference;

        r = mount_work_prepare(m, d, req, &j->mount, &what);
        if (r == -ESTALE)
                r = problem_setf(error, -ENODEV, "%s was detached or rebound meanwhile.", node);
        else if (r < 0)
                r = problem_setf(error, r, "Cannot mount %s: %s: %s.", node, what ?: "error",
                                 strerror(-r));
        if (r >= 0) {
                r = job_start(m, j, d);
                if (r < 0)
                        r = problem_setf(error, r, "Cannot start the mount of %s: %s.", node,
                                         strerror(-r));
        }
        if (r < 0) {
                job_free(j);
                return r;
        }
        log_debug("%s: mount started for uid %u", node, (unsigned) req->uid);
        return 1;
}

int manager_unmount(Manager *m, Call *call, Device *d, unsigned partition, bool force,
                    const char *sender, Problem *error) {
        DeviceMount *mnt;
        const char *node;
        MountJob *j;
        int r;

        r = manager_mount_target(d, partition, &mnt, error);
        if (r < 0)
                return r;
        node = device_mount_node(d, partition);
        if (!mnt->point)
                return problem_setf(error, -ENOTCONN, "%s has no mount made by loopmgr.", node);
        j = job_new(m, MOUNT_JOB_UNMOUNT, d->status.diskseq, partition,
                    device_mount_devnum(d, partition), node, call, sender, mnt->uid);
        if (!j)
                return problem_setf(error, -ENOMEM, "Out of memory.");
        j->mount_point = strdup(mnt->point);
        j->unmount.path = path_join_root(m->root, mnt->point);
        j->unmount.flags = UMOUNT_NOFOLLOW | (force ? MNT_DETACH : 0);
        r = j->mount_point && j->unmount.path ? job_start(m, j, d) : -ENOMEM;
        if (r < 0) {
                job_free(j);
                return problem_setf(error, r, "Cannot start the unmount of %s: %s.", node,
                                    strerror(-r));
        }
        return 1;
}

void manager_mount_jobs_client_vanished(Manager *m, const char *unique_name) {
        for (MountJob *j = m->mount_jobs; j; j = j->next)
                if (j->sender && streq(j->sender, unique_name)) {
                        j->caller_gone = true;
                        log_info("%s: the caller of its %s went away; it is undone when the "
                                 "kernel returns",
                                 j->node, j->kind == MOUNT_JOB_MOUNT ? "mount" : "unmount");
                }
}

void manager_stop_mount_jobs(Manager *m) {
        while (m->mount_jobs) {
                MountJob *j = m->mount_jobs;
                m->mount_jobs = j->next;
                if (j->started) {
                        log_info("%s: waiting for its %s to return before exiting", j->node,
                                 j->kind == MOUNT_JOB_MOUNT ? "mount" : "unmount");
                        (void) pthread_join(j->thread, NULL);
                        j->started = false;
                }
                (void) job_take_device(m, j);
                if (j->kind == MOUNT_JOB_MOUNT && j->mount.error == 0 && j->mount.mount_point) {
                        /* Its caller was never answered: nothing may stay behind. */
                        _cleanup_free_ char *path = path_join_root(m->root, j->mount.mount_point);

                        if (path && umount2(path, UMOUNT_NOFOLLOW | MNT_DETACH) >= 0)
                                mount_remove_dir(m, j->mount.mount_point);
                        log_info("%s: unmounted %s, whose caller was not answered", j->node,
                                 j->mount.mount_point);
                } else if (j->kind != MOUNT_JOB_MOUNT && j->unmount.error == 0)
                        mount_remove_dir(m, j->mount_point);
                job_free(j);
        }
}
