/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The manager: the core's state and operations. It tracks every loop device on the host and
 * is the one place where state changes happen. Everything runs on one sd-event loop, so a
 * check and the action that depends on it never interleave with another request's. The core
 * knows nothing of D-Bus: requests come in as function calls, answers and signals go out
 * through the bus layer's send operations (notify.h), failures as a Problem.
 *
 * The operations are in their modules (the file named at each group below); this header
 * declares them all.
 */

#include <stdbool.h>
#include <stdint.h>
#include <libmount.h>
#include <sys/stat.h>
#include <systemd/sd-event.h>

#include "block-use.h"
#include "device.h"
#include "guard.h"
#include "media-mount.h"
#include "udev-props.h"
#include "notify.h"
#include "options.h"
#include "problem.h"
#include "registry.h"
#include "state.h"
#include "udev-watch.h"

struct sd_bus;

/* Who configured a loop device whose uevent has not come yet (manager-guard.c). */
typedef struct GuardCreator {
        unsigned number;
        char *creator;
        uint64_t usec; /* CLOCK_MONOTONIC of the event */
} GuardCreator;
typedef struct RangeIndex RangeIndex;

typedef struct Manager {
        sd_event *event;
        /* The bus layer's: its connection (NULL in unit tests), its state and the operations
         * through which the core answers and announces (notify.h). */
        struct sd_bus *bus;
        struct BusState *bus_state;
        const ManagerSendOps *send;
        UdevWatch *udev_watch;
        struct libmnt_monitor *mount_monitor;
        sd_event_source *mount_source;

        /* The loop device whose binding went last: most likely unbound now, and the first
         * one the next attach tries (LoopConfig.hint). */
        unsigned free_hint;
        bool has_free_hint;

        /* Our mount table, parsed at most once per event-loop iteration. */
        struct libmnt_table *mounts;
        uint64_t mounts_iteration;
        /* The mount table as of the last mount-monitor event. The next change is diffed
         * against it, so that only devices whose mounts changed are re-checked. */
        struct libmnt_table *mounts_seen;

        /* Mounts in other namespaces, read at most once per event-loop iteration. */
        ForeignMounts foreign;
        uint64_t foreign_iteration;
        bool foreign_valid;

        char *root; /* NULL: the real root; tests may point the kernel layer elsewhere */
        char *state_dir;

        Device **devices; /* indexed by loop number */
        size_t n_slots;
        size_t n_devices;
        /* The same devices by diskseq (open addressing, linear probing): object paths name
         * devices by diskseq, and sd-bus looks up every path it serves. */
        Device **by_diskseq;
        size_t by_diskseq_size; /* a power of two, or 0 */
        RangeIndex *index;      /* devices with an identity, by base object and range */
        uint64_t last_reference_id;

        State restored;            /* the ownership record read at start-up, until reconciled */
        StateWriter *state_writer; /* writes it: snapshot + journal */
        struct PolkitRegistry
                *polkit; /* polkit.h: authorisation queries and limits; main owns it */
        bool has_intent; /* an attach between "recorded" and "bound and recorded" */
        StateIntent intent;
        bool has_restored_intent;
        StateIntent restored_intent;
        UdevOwnerCache udev_owners; /* user names for the udev properties (mount.h) */

        /* The guard (manager-guard.c): what was asked for, what is in force, and why not. */
        GuardMode guard_requested;
        GuardMode guard_mode;
        char *guard_problem; /* NULL when the mode asked for is in force */
        const char *guard_pin_dir;
        Guard *guard;
        bool guard_published; /* the map is filled from the kernel's state, pins are ours */
        sd_event_source *guard_source;
        GuardCreator guard_creators[16];

        /* Mounts and unmounts running on worker threads (mount-job.h), newest first. */
        MountJob *mount_jobs;
} Manager;

/* What Attach asks for, once the bus layer has validated the fd and the options. */
typedef struct AttachRequest {
        int fd; /* borrowed, the backing: regular file or block device */
        struct stat st;
        bool read_only; /* resolved: the fd's access mode and the option */
        uint64_t backing_size;
        uint64_t size; /* bytes the device will expose */
        const AttachOptions *options;
        uid_t uid;
        const char *sender; /* unique bus name, for lifetime = client */
} AttachRequest;

/* manager.c */
int manager_new(sd_event *event, const char *root, const char *state_dir, Manager **ret);
Manager *manager_free(Manager *m);
/* Reads the ownership record, starts the udev and mount watches and the guard, enumerates
 * the loop devices that exist and resumes what the record says. The bus layer connects
 * before (the resume asks which clients still exist) and takes the name after. */
int manager_start(Manager *m);

/* reconcile.c */
/* Re-reads one loop device from the kernel and brings the object in line: adds, updates,
 * or removes it (completing waiters). Called for udev events and at start-up. */
int manager_reconcile(Manager *m, const char *name);
/* Called by the udev watch for every event of a loop disk: from the kernel as it happens, and
 * from udev once its rules ran (from_udev). plain: only "change" events that report no resize,
 * media change or replay (RESIZE, DISK_MEDIA_CHANGE, SYNTH_UUID), one of them the binding's
 * own announcement. Returns UDEV_WATCH_FLUSH_KERNEL for a udev event of a binding the
 * registry does not know yet unless ev->kernel_flushed, else 0. */
int manager_udev_event(Manager *m, const UdevWatchEvent *ev);
/* Called when the udev monitor lost events: reconciles every loop device. */
void manager_rescan(Manager *m);
/* Adopts bound loop devices the registry has not seen yet (udev may not have reported them). */
void manager_adopt_unseen(Manager *m);

/* alias-rule.c */
/* Applies the alias rule (SPEC section 4) to a request whose chain is `chain`: finds the
 * existing device it must reuse (rule 1), or refuses it. Returns 1 with *ret_reuse set, 0 when
 * a new device may be made, or a negative errno with *error set: -EADDRINUSE (rule 3,
 * Overlap), -EBUSY (exclusive, or a block device in the chain is mounted or held). */
int manager_check_aliases(Manager *m, const Chain *chain, const AttachRequest *req,
                          Device **ret_reuse, Problem *error);
/* Resolves the chain of a prospective binding (Attach, Resolve); the top layer describes the
 * request. */
int manager_resolve_request(Manager *m, const AttachRequest *req, Chain *ret);
/* The one sentence for a manager_resolve_request() failure r; returns the errno to report. */
int manager_resolve_problem(int r, Problem *error);

/* mount-watch.c */
int manager_watch_mounts(Manager *m);
/* Mounts in every other mount namespace, cached for the current event-loop iteration (so one
 * GetManagedObjects reads /proc once). Never NULL; empty when unreadable. */
const ForeignMounts *manager_foreign_mounts(Manager *m);
/* The same as last read, without reading them again (once, if never): what event handlers
 * use. */
const ForeignMounts *manager_foreign_mounts_known(Manager *m);
/* The mount table of the daemon's namespace (under the root), or NULL if unreadable. */
struct libmnt_table *manager_mount_table(Manager *m);
/* Recomputes d's Openers and emits PropertiesChanged when they differ from the last ones
 * published. mounts: a parsed mount table, or NULL to use the last one read. */
void manager_refresh_openers(Manager *m, Device *d, struct libmnt_table *mounts);

/* attach.c */
/* Validates a backing fd against the options and fills *req (fd, stat, read-only mode, sizes).
 * Nothing is changed. */
int attach_request_prepare(int fd, const AttachOptions *o, AttachRequest *req, Problem *error);
/* The Attach core: reuse or bind, register, and answer `call` now or once udev is done.
 * Returns 1 if the answer was sent or queued, or a negative errno with *error set (nothing
 * was answered then). */
int manager_attach(Manager *m, Call *call, const AttachRequest *req, Problem *error);
/* Whether udev has processed d (its by-diskseq link exists); answers d's Attach waiters
 * then. */
bool manager_check_udev_ready(Manager *m, Device *d);

/* teardown.c */
/* Detach: drops uid's reference (or all), tears the device down when none is left, answers
 * `call` now or queues it. Returns as manager_attach(). */
int manager_detach(Manager *m, Call *call, Device *d, const DetachOptions *o, uid_t uid,
                   Problem *error);
/* Requests the kernel teardown of a device nobody references. Returns 1 when gone (freed), 0
 * when pending, 2 when retried on a timer (udev's probe holds a lock on it), <0 on error. */
int device_teardown(Manager *m, Device *d);
/* Device.Mount (media-mount.h): forgets the loopmgr mount of partition `partition` of d (0:
 * of d itself; MountPoint, MountUser or Partitions). */
void manager_device_clear_mount(Manager *m, Device *d, unsigned partition);
/* Drops the reference ref_id of d (0: nothing to drop); when it was the last one of a managed
 * device, requests the teardown. Returns 1 when d is gone (freed), 0 if not, <0 on error. */
int manager_release_reference(Manager *m, Device *d, uint64_t ref_id);
/* A waiter's timer fired: answers it with Timeout and undoes what its call did. Takes w. */
void manager_waiter_timeout(Manager *m, Waiter *w);
/* A bus client went away: drops its lifetime=client references. */
void manager_client_vanished(Manager *m, const char *unique_name);

/* device-ops.c */
int manager_set_autoclear(Manager *m, Device *d, bool value, Problem *error);
int manager_set_capacity(Manager *m, Device *d, Problem *error);
/* Device.OpenDevice: an fd of d's binding (diskseq checked), O_RDONLY or O_RDWR, for the caller
 * to keep (it holds the device open: a detach meanwhile is deferred). -EBUSY when d is being torn
 * down, -EINVAL for a write open of a read-only device, -ENODEV when the binding changed. */
int manager_open_device(Manager *m, Device *d, bool writable, int *ret_fd, Problem *error);
/* Its refusals that need no kernel, for the bus layer to give before asking polkit. */
int manager_check_open_device(Device *d, bool writable, Problem *error);
/* The caller's newest reference on d that no mount holds. */
Reference *device_own_reference(Device *d, uid_t uid);
/* Device.Mount's release-reference for the mount of partition `partition` of d (0: of d):
 * the mount takes the caller's reference `own` over; when the mount holds one already, `own`
 * is dropped as surplus; when the caller has none left (NULL) because it handed it to another
 * mount of d, this mount gets a reference of uid's of its own, so that d lives as long as any
 * of its mounts. */
int manager_release_to_mount(Manager *m, Device *d, unsigned partition, Reference *own, uid_t uid);

/* lifecycle.c */
/* Registers d, records it and updates the guard; announce: InterfacesAdded now (false for
 * the caller that answers its client first and calls manager_announce_device() after). */
int manager_add_device(Manager *m, Device *d, bool announce);
void manager_announce_device(Manager *m, Device *d);
/* Completes a device's removal: emits InterfacesRemoved, answers waiters, frees it. */
void manager_remove_device(Manager *m, Device *d, int attach_error);
/* Recomputes d's chain and identity and keeps the range index, aliases and guard in step. */
void manager_update_identity(Manager *m, Device *d);
/* Copies what sysfs says (st) into d and announces the properties that changed. */
void manager_update_status(Manager *m, Device *d, LoopStatus *st);

/* persist.c */
/* Writes the ownership record (managed devices, their references, pending teardowns). */
int manager_save_state(Manager *m);
/* The same after a change to d alone (NULL: to the intent alone). */
int manager_save_device_state(Manager *m, Device *d);
/* The same after d left the registry. */
int manager_save_dropped_state(Manager *m, Device *d);
/* Gives a binding found at start-up back what the ownership record says about it. */
int manager_restore_device(Device *d, const StateDevice *sd);
/* After the restored devices were matched with the kernel: drops references whose holder
 * went away, finishes what a previous run left half done, writes the record. */
void manager_resume(Manager *m);
