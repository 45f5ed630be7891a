/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Device.Mount and Device.Unmount off the event loop (docs/DESIGN.md, "One thread, one
 * loop"). The probe, mount(2) and umount2(2) can take seconds on a slow or damaged image, so
 * each runs on a worker thread of its own, one per job. The job is owned by the loop: its
 * inputs are copied in (MountWork, UnmountWork of media-mount.h) before the thread starts,
 * the worker touches nothing but them, and it reports its end through an eventfd on the
 * sd-event loop, where the thread is joined and every state change happens: the device
 * records the mount, the call is answered, or what the worker did is undone.
 *
 * While a job runs the device carries it (Device.mount_job): Mount, Unmount and Detach of the
 * device answer Busy, stacking a loop device on it is refused, and its teardown (the last
 * reference dropped by a client that went away) waits until the job is over.
 */

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "device.h"
#include "media-mount.h"
#include "problem.h"

typedef enum MountJobKind {
        MOUNT_JOB_MOUNT,   /* Device.Mount */
        MOUNT_JOB_UNMOUNT, /* Device.Unmount */
        MOUNT_JOB_UNDO,    /* a Mount whose caller went away, unmounted again */
} MountJobKind;

/* An umount2(2) as the worker runs it. */
typedef struct UnmountWork {
        char *path; /* the mount point under the root */
        int flags;  /* umount2() flags */
        int error;  /* out: 0 or the negative errno */
} UnmountWork;

struct MountJob {
        Manager *manager;
        MountJobKind kind;
        uint64_t diskseq;   /* the device, looked up again at the end: it may be gone */
        unsigned partition; /* what is mounted: that partition of it, 0: the device itself */
        dev_t devnum;       /* ... and its device number */
        char *node;         /* ... and node */
        char *mount_point;  /* UNMOUNT, UNDO: the mount point */
        Call *call;         /* the call to answer (a reference); NULL for UNDO */
        char *sender;       /* the caller's unique bus name */
        bool caller_gone;   /* its connection went away meanwhile */
        uid_t uid;
        bool release_reference; /* MOUNT: hand the caller's reference to the mount */
        MountWork mount;        /* MOUNT: the worker's */
        UnmountWork unmount;    /* UNMOUNT, UNDO: the worker's */

        pthread_t thread;
        bool started; /* thread is joinable */
        int event_fd; /* the worker writes to it when done */
        sd_event_source *event_source;
        MountJob *next; /* Manager.mount_jobs */
};

/* Device.Mount: starts the job for an authorised request (of req->partition, 0: the device
 * itself; -EINVAL when d has no such partition) and answers `call` with the mount
 * point (or an error) once it is done. Returns 1 when queued, or a negative errno with *error
 * set (nothing was answered nor changed then): Busy while another job of d runs. sender: the
 * caller's unique bus name. */
int manager_mount(Manager *m, Call *call, Device *d, const MountRequest *req,
                  bool release_reference, const char *sender, Problem *error);
/* Device.Unmount of the loopmgr mount of partition `partition` of d (0: of d itself; lazily
 * with force): answered once umount2(2) returned; the reference the mount held goes then.
 * Returns as manager_mount(); -ENOTCONN when there is no such mount, -EINVAL when d has no
 * such partition. */
int manager_unmount(Manager *m, Call *call, Device *d, unsigned partition, bool force,
                    const char *sender, Problem *error);
/* The mount of partition `partition` of d (0: d's own) that a Mount or Unmount is about, in
 * *ret (may be NULL, for the check alone): Busy (-EBUSY) while a job of d runs, -EINVAL when d
 * has no such partition, both with *error set. */
int manager_mount_target(Device *d, unsigned partition, DeviceMount **ret, Problem *error);
/* Busy (-EBUSY with *error set) while a job of d runs, else 0. */
int manager_mount_job_busy(Device *d, Problem *error);
/* A bus client went away: its jobs finish, and a Mount of its is then undone. */
void manager_mount_jobs_client_vanished(Manager *m, const char *unique_name);
/* Shutdown: waits for every worker, undoes the mounts nobody was told of, frees the jobs. */
void manager_stop_mount_jobs(Manager *m);
