/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * What the guard's BPF program (loop-guard.bpf.c) and its loader (daemon/kernel/guard.c) share: the
 * layout of its maps and of the events it sends. Plain fixed-width types only, so that the
 * BPF target and the host agree on every offset.
 */

#include <linux/types.h>

enum {
        LOOP_GUARD_MODE_OFF = 0,       /* the program passes everything, reports nothing */
        LOOP_GUARD_MODE_AUDIT = 1,     /* reports other processes' configurations */
        LOOP_GUARD_MODE_ALIASES = 2,   /* and refuses their binds of a known base (EEXIST) */
        LOOP_GUARD_MODE_EXCLUSIVE = 3, /* and refuses every configuration of theirs (EPERM) */
};

/* The one entry of the "config" array. */
struct loop_guard_config {
        __u32 mode;
        __u32 reserved;
};

/*
 * A key of the "bases" hash: a file by the (s_dev, i_ino) of its inode, or a block device by
 * its number with ino 0 (no inode has number 0). Device numbers are in the kernel's internal
 * encoding, major << 20 | minor, which is what s_dev and i_rdev hold.
 */
struct loop_guard_key {
        __u64 dev;
        __u64 ino;
};

#define LOOP_GUARD_KDEV(major, minor) ((((__u64) (major)) << 20) | (__u64) (minor))
#define LOOP_GUARD_KDEV_MAJOR(k)      ((unsigned) ((k) >> 20))
#define LOOP_GUARD_KDEV_MINOR(k)      ((unsigned) ((k) &0xfffff))

/*
 * The value of a "bases" entry.
 *
 * holder: the loop device (kernel encoding) whose direct backing the key is, when that is all
 * the key is; 0 when anything else makes it a base too (a mount, a holder, a lower layer, a
 * relative of a used disk or partition, a loop device itself), or when more than one loop
 * device binds it. Only an entry with a holder can be stale or pending (the program asks the
 * kernel and the "pending" map); any other is refused as it stands.
 *
 * flags: LOOP_GUARD_BASE_IN_USE when something uses the device or file beyond its being a
 * loop device (the entry of loopN itself has it when loopN is mounted, held, or a backing).
 * A holder in use is not merely in a teardown that an opener delays: the bind is an alias.
 */
struct loop_guard_base {
        __u64 holder;
        __u32 flags;
        __u32 reserved;
};

#define LOOP_GUARD_BASE_IN_USE (1u << 0)

/* The value the daemon's task-storage entry holds: which loopmgrd claimed the guard. */
struct loop_guard_allowed {
        __u32 allowed;
        __u32 reserved;
};

/* event.flags */
#define LOOP_GUARD_EVENT_COMPAT        (1u << 0) /* through the 32-bit (compat) ioctl path */
#define LOOP_GUARD_EVENT_CONTROL       (1u << 1) /* on /dev/loop-control, not a loop device */
#define LOOP_GUARD_EVENT_BACKING       (1u << 2) /* backing_* are filled in */
#define LOOP_GUARD_EVENT_BACKING_BLOCK (1u << 3) /* the backing is a block device */
#define LOOP_GUARD_EVENT_STALE                                                                     \
        (1u << 4) /* passed: the map names the backing, but no                                     \
                   * loop device binds it any more */
#define LOOP_GUARD_EVENT_PENDING                                                                   \
        (1u << 5) /* refused with EBUSY: the one device over it                                    \
                   * is in the teardown a LOOP_CLR_FD deferred */

/* One configuration by a process other than loopmgrd, as the ring buffer carries it. */
struct loop_guard_event {
        __u32 pid; /* thread group id */
        __u32 uid; /* real uid */
        __u32 cmd; /* the ioctl */
        __u32 flags;
        __s32 verdict; /* 0 passed, or the negative errno it was refused with */
        __u32 reserved;
        __u64 device;      /* the loop device (kernel encoding), 0 for loop-control */
        __u64 arg;         /* LOOP_CTL_ADD/REMOVE: the number */
        __u64 backing_dev; /* file: s_dev; block device: i_rdev */
        __u64 backing_ino; /* file: i_ino; block device: 0 */
        char comm[16];
};
