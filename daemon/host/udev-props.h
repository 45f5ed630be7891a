/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The properties loopmgrd and udev exchange about loop devices. One job: the files the
 * daemon writes for udev (/run/loopmgr/udev/loopN, imported by udev/90-loopmgr.rules:
 * LOOPMGR_MANAGED, LOOPMGR_OWNER_UID, LOOPMGR_OWNER, LOOPMGR_DISKSEQ), with the uid -> user
 * name cache that spares the attach path an NSS lookup, and what udev recorded about a
 * device (ID_FS_TYPE and the encoded label and UUID of its blkid builtin), read from the
 * sd_device of udev's event rather than from udev's private database files. Knows nothing
 * of the manager.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-device.h>

/* /run/loopmgr/udev/<name>, the properties file the udev rule imports (under the manager's
 * root). */
#define MOUNT_UDEV_DIR "/run/loopmgr/udev"
/* Writes the properties of a managed binding of name for owner uid (diskseq 0: not known yet,
 * before the kernel binds it). Looks the user name up (NSS). */
int udev_props_write(const char *root, const char *name, uid_t owner, uint64_t diskseq);

/* The attach path's split of udev_props_write(), without an NSS lookup and with one open and
 * one write before the bind: udev_props_create() writes the properties without the diskseq
 * (owner_name NULL: none) and returns the open file, udev_props_add_diskseq() appends the
 * diskseq once the kernel has bound the device. */
int udev_props_create(const char *root, const char *name, uid_t owner, const char *owner_name,
                      int *ret_fd);
int udev_props_add_diskseq(int fd, uint64_t diskseq);

/* User names for LOOPMGR_OWNER by uid, so that an attach does no NSS lookup (getpwuid() reads
 * nsswitch.conf and /etc/passwd, or asks userdb over varlink: more than the rest of the
 * attach). Entries are refreshed after UDEV_OWNER_NAME_TTL_USEC. */
#define UDEV_OWNER_NAME_MAX      64U
#define UDEV_OWNER_NAME_TTL_USEC (60U * 1000000U)
typedef struct UdevOwnerName {
        bool used;
        uid_t uid;
        uint64_t stamp;                 /* CLOCK_MONOTONIC usec of the lookup */
        char name[UDEV_OWNER_NAME_MAX]; /* "" when the uid has no (usable) name */
} UdevOwnerName;
typedef struct UdevOwnerCache {
        UdevOwnerName names[4];
        size_t next;
} UdevOwnerCache;
/* The cached name of uid (NULL: none usable), looked up when missing or older than the TTL. */
const char *udev_owner_name(UdevOwnerCache *cache, uid_t uid, uint64_t now_usec);
/* Removes the file of name if it describes diskseq (or any binding when diskseq is 0). */
void udev_props_remove(const char *root, const char *name, uint64_t diskseq);
/* Removes files whose binding is gone (the named device is unbound or has another diskseq). */
void udev_props_cleanup(const char *root);

/* What udev's blkid builtin recorded for a device; strings are NULL when absent. */
typedef struct UdevIds {
        char *type;  /* ID_FS_TYPE */
        char *label; /* ID_FS_LABEL_ENC, decoded */
        char *uuid;  /* ID_FS_UUID_ENC, decoded */
} UdevIds;

void udev_ids_done(UdevIds *ids);
/* The ids udev recorded for a device: of a device from sd_device_monitor, what it broadcast
 * after its rules ran (the same properties it wrote to its database a moment before; no I/O),
 * else what sd-device reads from udev's database. -ENODATA when udev has not processed the
 * device, -ENOMEM. */
int udev_props_read_ids(sd_device *device, UdevIds *ret);
/* udev's \xNN encoding of *_ENC values (udev_device_encode_string()), decoded in place; a
 * \x00 stays as it is. */
void udev_decode_string(char *s);
