/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * What the daemon and its clients share: bus names, object paths, interface names, error
 * names with the errno each maps to, and option keys. Nothing in here may depend on daemon
 * internals.
 */

#include <errno.h>
#include <systemd/sd-bus.h>

#define LOOPMGR_BUS_NAME           "org.loopmgr.LoopManager1"
#define LOOPMGR_MANAGER_PATH       "/org/loopmgr/LoopManager1"
#define LOOPMGR_DEVICE_PATH_PREFIX "/org/loopmgr/LoopManager1/device"
#define LOOPMGR_MANAGER_INTERFACE  "org.loopmgr.LoopManager1.Manager"
#define LOOPMGR_DEVICE_INTERFACE   "org.loopmgr.LoopManager1.Device"

#define LOOPMGR_ERROR_PREFIX         "org.loopmgr.LoopManager1.Error."
#define LOOPMGR_ERROR_OVERLAP        LOOPMGR_ERROR_PREFIX "Overlap"
#define LOOPMGR_ERROR_BUSY           LOOPMGR_ERROR_PREFIX "Busy"
#define LOOPMGR_ERROR_NOT_FOUND      LOOPMGR_ERROR_PREFIX "NotFound"
#define LOOPMGR_ERROR_TIMEOUT        LOOPMGR_ERROR_PREFIX "Timeout"
#define LOOPMGR_ERROR_NO_FREE_DEVICE LOOPMGR_ERROR_PREFIX "NoFreeDevice"
#define LOOPMGR_ERROR_CYCLE          LOOPMGR_ERROR_PREFIX "Cycle"
/* Device.Mount / Device.Unmount */
#define LOOPMGR_ERROR_NO_FILE_SYSTEM LOOPMGR_ERROR_PREFIX "NoFileSystem"
#define LOOPMGR_ERROR_NOT_MOUNTED    LOOPMGR_ERROR_PREFIX "NotMounted"

/*
 * One errno per error name, used in both directions: the daemon's *-bus.c files turn a
 * negative errno from the core into the D-Bus error name through this table, and clients
 * register it with sd_bus_error_add_map() so sd_bus_error_get_errno() gives the errno back.
 * InvalidArgs (EINVAL), AccessDenied (EACCES) and InteractiveAuthorizationRequired are
 * sd-bus built-ins.
 */
static const sd_bus_error_map loopmgr_error_map[] = {
        SD_BUS_ERROR_MAP(LOOPMGR_ERROR_OVERLAP, EADDRINUSE),
        SD_BUS_ERROR_MAP(LOOPMGR_ERROR_BUSY, EBUSY),
        SD_BUS_ERROR_MAP(LOOPMGR_ERROR_NOT_FOUND, ENODEV),
        SD_BUS_ERROR_MAP(LOOPMGR_ERROR_TIMEOUT, ETIMEDOUT),
        SD_BUS_ERROR_MAP(LOOPMGR_ERROR_NO_FREE_DEVICE, ENOSPC),
        SD_BUS_ERROR_MAP(LOOPMGR_ERROR_CYCLE, ELOOP),
        SD_BUS_ERROR_MAP(LOOPMGR_ERROR_NO_FILE_SYSTEM, EMEDIUMTYPE),
        SD_BUS_ERROR_MAP(LOOPMGR_ERROR_NOT_MOUNTED, ENOTCONN),
        SD_BUS_ERROR_MAP_END};

/* Attach options (SPEC §3) */
#define LOOPMGR_OPT_OFFSET              "offset"                   /* t */
#define LOOPMGR_OPT_SIZE_LIMIT          "size-limit"               /* t */
#define LOOPMGR_OPT_READ_ONLY           "read-only"                /* b */
#define LOOPMGR_OPT_PARTSCAN            "partscan"                 /* b */
#define LOOPMGR_OPT_DIRECT_IO           "direct-io"                /* s: auto|on|off */
#define LOOPMGR_OPT_SECTOR_SIZE         "sector-size"              /* u: 512|1024|2048|4096 */
#define LOOPMGR_OPT_SHARING             "sharing"                  /* s: shared|exclusive */
#define LOOPMGR_OPT_LIFETIME            "lifetime"                 /* s: persistent|client */
#define LOOPMGR_OPT_WAIT_UDEV           "wait-udev"                /* b */
#define LOOPMGR_OPT_TIMEOUT_USEC        "timeout-usec"             /* t */
#define LOOPMGR_OPT_NO_USER_INTERACTION "auth.no_user_interaction" /* b */
/* Not in SPEC: bind exactly this device (loopmgr-losetup DEV FILE) */
#define LOOPMGR_OPT_DEVICE "device" /* s: loopN or /dev/loopN */

/* Detach options (SPEC §3) */
#define LOOPMGR_OPT_WAIT           "wait"           /* b */
#define LOOPMGR_OPT_RECURSIVE      "recursive"      /* b */
#define LOOPMGR_OPT_ALL_REFERENCES "all-references" /* b */

/* Device.Mount options (docs/API.md); auth.no_user_interaction as above */
#define LOOPMGR_OPT_FSTYPE            "fstype"            /* s */
#define LOOPMGR_OPT_MOUNT_OPTIONS     "options"           /* s: comma-separated */
#define LOOPMGR_OPT_RELEASE_REFERENCE "release-reference" /* b */
/* Device.Mount and Device.Unmount: the partition (its number) instead of the device itself. */
#define LOOPMGR_OPT_PARTITION "partition" /* u */
/* Device.Unmount options */
/* The Device property Partitions: (number, node, offset, size, IdType, IdLabel, IdUUID,
 * MountPoint, MountUser) of each partition, by number (docs/API.md). */
#define LOOPMGR_DEVICE_PARTITIONS_SIGNATURE "a(usttssssu)"
#define LOOPMGR_OPT_FORCE                   "force" /* b */

/* Values of the Device State property and of Detach's reply. "attached" is also what
 * Detach returns when the caller's reference was dropped but others keep the device. */
#define LOOPMGR_STATE_ATTACHED       "attached"
#define LOOPMGR_STATE_DETACH_PENDING "detach-pending"
#define LOOPMGR_STATE_PENDING        "pending"
#define LOOPMGR_STATE_DETACHED       "detached"

#define LOOPMGR_DEFAULT_TIMEOUT_USEC (10ULL * 1000ULL * 1000ULL)
