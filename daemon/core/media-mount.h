/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Device.Mount / Device.Unmount (docs/API.md): mounting a loop device's file system for a
 * desktop user under /run/media/<user>/<name>, as udisks does, without its helpers.
 *
 * The daemon runs as root and everything about the image is the user's: its content, its
 * label, its file system type. So:
 *   - the device is probed with libblkid at Mount time, on an fd of the very binding (diskseq
 *     checked), and mounted from that fd (/proc/self/fd/N), never from a path that could have
 *     been rebound in between;
 *   - only the file system types of MOUNT_ALLOWED_TYPES are mounted, always nosuid,nodev;
 *   - the mount point name comes from the label, with '/' and leading dots replaced, and
 *     /run/media and /run/media/<user> are root-owned directories opened with O_NOFOLLOW and
 *     used through dir fds (mkdirat, openat): no symbolic link is ever followed there, and the
 *     user cannot create anything in them.
 *
 * The glue with the manager: the Device fields mount_point, mount_uid, mount_ref_id and
 * id_type/id_label/id_uuid; mount_adopt() at start-up and mount_check_table() whenever the
 * mount table changed.
 *
 * This module's one job is media mounts (and the Id* properties their probe shares); the
 * properties exchanged with udev are udev-props.h's.
 */

#include <stdbool.h>
#include <stdint.h>
#include <libmount.h>
#include <sys/types.h>
#include <systemd/sd-device.h>

typedef struct Manager Manager;
typedef struct Device Device;

#define MOUNT_MEDIA_DIR "/run/media"

/* What libblkid found on a device. Strings are NULL when absent. */
typedef struct MountProbe {
        char *type; /* TYPE (file systems) */
        char *label;
        char *uuid;
        char *pttype; /* PTTYPE, when the content is a partition table */
        char *usage;  /* USAGE: filesystem, raid, crypto, other */
} MountProbe;

void mount_probe_done(MountProbe *p);
/* Probes the block device open at fd (superblocks and partition tables). */
int mount_probe_fd(int fd, MountProbe *ret);

/* The file system types Mount accepts (probed or given as fstype). */
bool mount_fstype_allowed(const char *fstype);
/* Types without owners, that get uid=/gid= of the caller. */
bool mount_fstype_ownerless(const char *fstype);
/* Types that can only be mounted read-only. */
bool mount_fstype_read_only(const char *fstype);

/* Parses the "options" option: a comma-separated list of ro, noexec, noatime, nodiratime,
 * relatime, sync, dirsync; ORs MS_* flags into *flags. -EINVAL with *ret_bad (allocated) naming
 * the first option that is not allowed. Empty items are refused too. */
int mount_parse_extra_options(const char *s, unsigned long *flags, char **ret_bad);

/* The mount directory name for a probe: LABEL, else UUID, else "disk"; '/' and leading dots
 * replaced by '_', control characters too; at most 200 bytes (cut at a UTF-8 boundary). */
int mount_name_from_probe(const MountProbe *p, char **ret);

/* Everything Mount needs, resolved by the bus layer. */
typedef struct MountRequest {
        uid_t uid;           /* whose mount: the caller */
        gid_t gid;           /* the caller's primary group */
        const char *user;    /* the caller's user name */
        const char *fstype;  /* NULL: the probed type */
        unsigned long flags; /* extra MS_* flags from "options" */
        bool read_only;      /* device read-only or asked for */
        unsigned partition;  /* the partition to mount, 0: the device itself */
} MountRequest;

/* The mount(2) flags and data for fstype: always MS_NOSUID|MS_NODEV, MS_RDONLY when asked or
 * the type is read-only, "uid=,gid=" of the caller for types without owners (else data NULL). */
int mount_flags_and_data(const char *fstype, const MountRequest *req, unsigned long *ret_flags,
                         char **ret_data);

/* A Mount as the worker thread runs it (mount-job.h; docs/DESIGN.md, "One thread, one loop"):
 * the inputs are copies and fds made on the loop, the outputs are read there once the worker
 * has been joined. The worker touches nothing else. */
typedef struct MountWork {
        /* in */
        int dev_fd;   /* the binding, diskseq checked (open_binding()) */
        int user_fd;  /* /run/media/<user>, made and checked on the loop */
        char *source; /* the node as mount(2) gets it (under the root) */
        char *node;   /* /dev/loopN, for messages */
        char *user;   /* the caller's user name */
        char *fstype; /* NULL: the probed type */
        dev_t devnum; /* what the mount must show */
        uid_t uid;
        gid_t gid;
        unsigned long flags; /* extra MS_* flags from "options" */
        bool read_only;
        /* out */
        int error;   /* 0: mounted on mount_point */
        bool probed; /* probe holds what libblkid found */
        MountProbe probe;
        char fstype_used[64];
        char *mount_point;  /* /run/media/<user>/<name> */
        char *what;         /* which step failed, when it did (may be NULL) */
        bool foreign_mount; /* the mount did not show the device (and was undone) */
} MountWork;

/* Opens d's binding and /run/media/<user> (made as needed) and copies the request into *w.
 * On the loop. On failure *w is empty and *ret_what (allocated) names the step. */
int mount_work_prepare(Manager *m, Device *d, const MountRequest *req, MountWork *w,
                       char **ret_what);
/* Probes the device, makes /run/media/<user>/<name> and mounts the device there: the blocking
 * part, on the worker. Errors (also in w->error): -EMEDIUMTYPE with w->what (what blkid found)
 * when there is no mountable file system, -EPROTONOSUPPORT when fstype is not allowed,
 * -EOPNOTSUPP when the kernel has no driver for it, else errno of the failing step (with
 * w->what naming it). Nothing is left behind on failure. */
int mount_work_run(MountWork *w);
void mount_work_done(MountWork *w);

/* Stores a probe in d's IdType/IdLabel/IdUUID, emitting the properties that changed. */
void mount_set_ids(Manager *m, Device *d, const MountProbe *p);

/* What the umount2(2) of mount_point (of devnum) returned, r, made final on the loop: -EINVAL
 * or -ENOENT count as done when the mount table no longer has it; when done, the directory is
 * removed and 0 returned. -EBUSY when the file system is in use. */
int mount_unmount_finish(Manager *m, dev_t devnum, const char *mount_point, int r);
/* Removes the (empty) directory of a loopmgr mount point. */
void mount_remove_dir(Manager *m, const char *mount_point);

/* Where devnum is mounted in the daemon's namespace (first mount point, allocated), 0 with
 * NULL when nowhere. */
int mount_find_target(struct libmnt_table *t, dev_t devnum, char **ret);

/* Is the mount point path a loopmgr mount of devnum in the table? */
bool mount_table_has(struct libmnt_table *t, dev_t devnum, const char *path);

/* At start-up, after the devices were restored and before references are resumed: gives each
 * managed device its mount found under /run/media/<user>/ in the mount table, ties the restored
 * mount-lifetime reference to it, and drops mount references whose mount is gone. */
void mount_adopt(Manager *m);

/* The mount table changed: a loopmgr mount that is gone (unmounted by other means) clears the
 * device's MountPoint and releases its reference (the device may be torn down and freed). */
void mount_check_table(Manager *m, struct libmnt_table *t);

/* Updates IdType/IdLabel/IdUUID from what udev's blkid builtin found, as udev broadcast it
 * in this event of the device (udev_props_read_ids()), emitting PropertiesChanged when they
 * differ. No I/O at all: it runs for every udev event of a managed device. The caller makes
 * sure the event was for this binding. */
void mount_update_ids(Manager *m, Device *d, sd_device *device);
