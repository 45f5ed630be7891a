/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * One loop binding (loopN with one diskseq) as the daemon tracks it. A device is created when
 * the daemon binds it (managed) or notices a binding made behind its back (foreign), and freed
 * when the kernel binding is gone. The manager owns all devices.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "canonical.h"
#include "loop-kernel.h"
#include "options.h"

typedef struct Manager Manager;
/* A call the core answers later: the bus layer's, opaque here (notify.h). */
typedef struct Call Call;
typedef struct Device Device;
typedef struct Reference Reference;
typedef struct Waiter Waiter;
/* A Mount or Unmount running on a worker thread (mount-job.h). */
typedef struct MountJob MountJob;

typedef enum DeviceState {
        DEVICE_ATTACHED,
        DEVICE_DETACH_PENDING,
} DeviceState;

struct Reference {
        uint64_t id; /* unique within this run of the daemon */
        uid_t uid;
        Lifetime lifetime;
        char *owner;    /* unique bus name of the holder, for lifetime = client; the
                         * mount point (mount_escape()d), for lifetime = mount */
        bool confirmed; /* the Attach that took it was answered */
        Reference *next;
};

typedef enum WaiterKind {
        WAITER_ATTACH, /* reply to Attach once udev has processed the binding */
        WAITER_DETACH, /* reply to Detach(wait=true) once the binding is gone */
} WaiterKind;

struct Waiter {
        Manager *manager;
        Device *device;
        WaiterKind kind;
        Call *call;      /* the call to reply to (a reference) */
        bool reused;     /* WAITER_ATTACH: the reply's "reused" */
        uid_t uid;       /* WAITER_ATTACH: whose reference the attach took */
        uint64_t ref_id; /* WAITER_ATTACH: the reference, confirmed on reply */
        bool wait;       /* WAITER_DETACH: Detach(wait); false: the call only
                          * waits for the teardown request (d->teardown_retry)
                          * and is answered "pending" once that is made */
        sd_event_source *timeout;
        Waiter *next;
};

/* A loopmgr mount (Device.Mount): of the device, or of one of its partitions. */
typedef struct DeviceMount {
        char *point;     /* /run/media/<user>/<name>, NULL when none */
        uid_t uid;       /* whose mount */
        uint64_t ref_id; /* the reference the mount holds (lifetime mount), 0 if none */
} DeviceMount;

/* A partition of the device (the Partitions property). */
typedef struct DevicePartition {
        unsigned number; /* the N of loopXpN */
        dev_t devnum;
        char *node;     /* /dev/loopXpN */
        uint64_t start; /* bytes */
        uint64_t size;  /* bytes */
        char *id_type;  /* what libblkid (udev's, or a Mount's probe) found; NULL: nothing yet */
        char *id_label;
        char *id_uuid;
        DeviceMount mount;
} DevicePartition;

struct Device {
        Manager *manager;        /* the owner; device.c itself never looks inside */
        uint64_t *reference_ids; /* the owner's counter: reference ids are unique in a run */
        LoopStatus status;       /* as last read from the kernel */
        char *path;              /* /org/loopmgr/LoopManager1/device/<diskseq> */
        char *node;              /* /dev/loopN */

        bool has_identity; /* false when the backing could not be identified */
        Identity identity; /* == chain.identity; the key of the manager's range index */
        Chain chain;       /* every layer down to the base, this device first */
        bool backing_is_block;

        bool managed;
        uid_t owner_uid; /* first reference holder; 0 for foreign devices */
        Reference *references;
        unsigned n_references;

        DeviceState state;
        char **openers;             /* last published Openers pairs (NULL: none computed yet) */
        uint64_t openers_iteration; /* event-loop iteration that computed them */
        bool udev_ready;            /* udev processed this binding (by-diskseq link exists) */
        /* We made this binding and read it back from the device: the plain "change" uevent
         * LOOP_CONFIGURE sent for it says nothing new (manager_udev_event()). */
        bool bind_event_expected;
        Waiter *waiters;
        /* Teardown requested while somebody (udev's probe) held a flock on the device: retried
         * on this timer instead of waiting in the event loop (teardown.c device_teardown()). */
        sd_event_source *teardown_retry;
        uint64_t teardown_deadline; /* CLOCK_MONOTONIC; after it, go on without the lock */
        uint64_t teardown_delay;    /* the next retry's delay, backing off */

        /* Device.Mount (media-mount.h): the loopmgr mount of the device itself, if any. */
        DeviceMount mount;
        MountJob *mount_job; /* the Mount/Unmount in flight, NULL when none (the manager's) */
        /* Its partitions, by number, as sysfs showed them last (partitions.c); only read for
         * a device with a partition scan. Each can have a loopmgr mount of its own. */
        DevicePartition *partitions;
        size_t n_partitions;
        /* A managed device with a partition scan: our read-only fd of it with a shared flock,
         * so that udev does not re-read (and, on a kernel without the parser, drop) its
         * partitions when a writer closes it (docs/KERNEL.md, "Partitions"). -EBADF: none.
         * Closed before the teardown, whose exclusive lock it would block. */
        int hold_fd;
        char *id_type; /* what libblkid found, NULL when nothing (yet) */
        char *id_label;
        char *id_uuid;
        /* Who configured it: "loopmgrd" for managed devices, "losetup (pid 1234, uid 0)" for
         * a foreign one the guard saw being made, NULL when unknown. */
        char *creator;
};

int device_new(Manager *m, uint64_t *reference_ids, const LoopStatus *status, bool managed,
               Device **ret);
/* Frees d; its waiters must be gone (waiter.h). */
Device *device_free(Device *d);

const char *device_state_to_string(DeviceState s);

/* Adds a confirmed reference (d->references is the new one afterwards). */
int device_add_reference(Device *d, uid_t uid, Lifetime lifetime, const char *owner);
Reference *device_find_reference(Device *d, uint64_t id);
/* Drops the reference with this id; returns 1 if it was there. */
int device_drop_reference_id(Device *d, uint64_t id);
bool device_has_reference_of(Device *d, uid_t uid);
/* Drops one reference of uid (the newest, a mount's only when uid holds no other); returns 1
 * if one was dropped, 0 if none. */
int device_drop_reference(Device *d, uid_t uid);
void device_drop_all_references(Device *d);
/* Drops the client-lifetime references held by `owner`; returns how many. */
unsigned device_drop_client_references(Device *d, const char *owner);

/* The mount of partition `partition` of d (0: of d itself), NULL when d has no such partition. */
DeviceMount *device_get_mount(Device *d, unsigned partition);
DevicePartition *device_get_partition(Device *d, unsigned number);
/* The block device (and its node) that the mount of `partition` mounts. */
dev_t device_mount_devnum(Device *d, unsigned partition);
const char *device_mount_node(Device *d, unsigned partition);
/* d's mounts by index: 0 is d's own, 1 .. n_partitions its partitions'. ret_devnum and
 * ret_partition (may be NULL): what that mount mounts. */
static inline size_t device_n_mounts(const Device *d) {
        return 1 + d->n_partitions;
}
DeviceMount *device_mount_at(Device *d, size_t i, dev_t *ret_devnum, unsigned *ret_partition);
/* Whether a mount of d holds a reference of uid. */
bool device_has_mount_reference_of(Device *d, uid_t uid);
/* Whether d or one of its partitions is mounted by loopmgr. */
bool device_has_mounts(Device *d);
void device_mount_clear(DeviceMount *mnt);
void device_partitions_free(Device *d);

/* Human-readable chain, top layer first (the Chain property and Resolve's "chain"). */
int device_chain(Device *d, char ***ret);
