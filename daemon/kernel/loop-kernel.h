/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The kernel layer: loop ioctls, /dev/loop-control and sysfs. It knows nothing of D-Bus or
 * of the manager. Every function that touches sysfs or /dev takes a root directory ("root":
 * NULL or "/" means the real one) so that unit tests can point it at a fake tree.
 *
 * Functions return 0 (or a documented non-negative value) on success and a negative errno on
 * failure; output parameters (ret_*) are written only on success.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "loop-partitions.h"

typedef enum DirectIOMode {
        DIRECT_IO_AUTO,
        DIRECT_IO_ON,
        DIRECT_IO_OFF,
} DirectIOMode;

typedef struct LoopConfig {
        /* Optional: loop<hint> is tried first (a device the caller saw unbound a moment ago),
         * before LOOP_CTL_GET_FREE, which walks every loop device from the lowest number up.
         * Anything wrong with it (bound, locked, gone) just falls back. */
        bool use_hint;
        unsigned hint;
        /* Optional: bind exactly loop<device> and no other (created with LOOP_CTL_ADD when it
         * does not exist, like losetup does); the hint is ignored then. */
        bool use_device;
        unsigned device;
        uint64_t offset;      /* bytes, multiple of 512 */
        uint64_t size_limit;  /* bytes, 0 = to the end of the backing object */
        uint32_t sector_size; /* 0 = default (backing logical block size with direct I/O, else 512)
                               */
        bool read_only;       /* forced true when the backing fd is O_RDONLY */
        bool autoclear;
        bool partscan;
        DirectIOMode direct_io;
        /* Optional: called with "loopN" once that device is locked and known to be free, right
         * before the kernel binds it, so that files udev reads for the binding's first event
         * (the udev properties of mount.h) exist in time. An error skips the device and fails
         * the attach. May be called for several devices when one is taken by somebody else. */
        int (*prepare)(const char *name, void *userdata);
        void *userdata;
        /* Optional, with partscan: receives a read-only fd of the bound device that holds a
         * shared flock (LOCK_SH) on it, taken over from the bind's exclusive one without a gap
         * (docs/KERNEL.md, "Partitions"). udev takes LOCK_EX|LOCK_NB before it re-reads a
         * disk's partition table (BLKRRPART) when a writer closed it: while this is held it
         * does not, so partitions added with BLKPG, which a kernel without the table's parser
         * would drop at a re-read, stay. Close it before loop_detach(), whose LOCK_EX it would
         * block. Left alone when no lock could be kept. */
        int *ret_hold_fd;
} LoopConfig;

/* One loop device as the kernel reports it (sysfs, plus LOOP_GET_STATUS64 for ids). */
typedef struct LoopStatus {
        char name[16];   /* "loop5" */
        unsigned number; /* 5 */
        dev_t devnum;    /* major:minor of /dev/loop5 */
        uint64_t diskseq;
        bool bound; /* has a backing file (sysfs loop/ group exists) */

        /* Only meaningful when bound: */
        char *backing_file;     /* sysfs display path, may end in " (deleted)"; owned */
        dev_t backing_device;   /* lo_device: st_dev of the backing inode (0 if unknown) */
        uint64_t backing_inode; /* lo_inode (0 if unknown) */
        dev_t backing_rdevice;  /* lo_rdevice: the block device when the backing is one, else 0 */
        uint64_t offset;
        uint64_t size_limit;
        uint64_t size;        /* bytes the device exposes (sysfs size * 512) */
        uint32_t sector_size; /* queue/logical_block_size */
        bool read_only;
        bool autoclear;
        bool partscan;
        bool direct_io;
        /* loop_attach() with partscan only: the partitions it added itself, because the
         * kernel's scan made none of a table libblkid found (loop-partitions.h). */
        LoopTableAdd table_added;
} LoopStatus;

void loop_status_done(LoopStatus *s); /* frees owned fields, leaves *s zeroed */

/* Names ("loopN") of every loop block device in <root>/sys/block, sorted by number. */
int loop_list(const char *root, char ***ret_names);

/* Reads <root>/sys/block/<name>/... into *ret. A device without the loop/ group is reported
 * with bound = false. -ENOENT when the device does not exist. */
int loop_read_sysfs(const char *root, const char *name, LoopStatus *ret);

/* Fills backing_device/backing_inode/backing_rdevice of a bound device through
 * LOOP_GET_STATUS64 on <root>/dev/<name>, after checking with BLKGETDISKSEQ that the device
 * still carries status->diskseq (-ESTALE if not, -ENXIO if the device is in rundown). */
int loop_read_ids(const char *root, LoopStatus *status);

/* Size in bytes of a backing fd: a regular file's st_size or a block device's BLKGETSIZE64. */
int loop_backing_size(int fd, uint64_t *ret);

/* Checks offset/size-limit against the backing size: offset and size limit multiples of 512,
 * offset inside the backing object, offset + size-limit not overflowing and not past the
 * end. Returns -EINVAL (with a static human-readable reason in *ret_reason if non-NULL) or
 * 0 with the number of bytes the device will expose in *ret_size. */
int loop_validate_range(uint64_t backing_size, uint64_t offset, uint64_t size_limit,
                        uint32_t sector_size, const char **ret_reason, uint64_t *ret_size);

/*
 * Binds backing_fd to a free loop device: under flock(LOCK_EX) on /dev/loop-control, the
 * device LOOP_CTL_GET_FREE names, or when that one is locked or taken, a bounded number of
 * other unbound devices and then devices created with LOOP_CTL_ADD (never sleeping);
 * LOCK_EX|LOCK_NB on a second fd of the device while configuring, LOOP_CONFIGURE
 * (LOOP_SET_FD + LOOP_SET_STATUS64 only on ENOTTY/EINVAL), partscan enabled after
 * configuring, direct I/O verified, and the final state read back from the device fd.
 * On any error the half-configured device is cleared again. The backing fd is reopened with
 * O_DIRECT internally when direct I/O is wanted; the caller's fd is not modified.
 *   -EBUSY/-ENOSPC: no device could be taken; -EINVAL: the kernel refused the
 *   configuration; -EOPNOTSUPP: direct_io = ON and the kernel did not honour it.
 * With use_device: -EBUSY when that device is bound, being torn down or locked by somebody
 * else (udev's probe), -ENODEV when it does not exist and LOOP_CTL_ADD cannot create it.
 */
int loop_attach(const char *root, int backing_fd, const LoopConfig *config, LoopStatus *ret);

/*
 * Requests teardown of <name> if it still carries diskseq: LOCK_EX (bounded wait for udev's
 * probe), BLKPG deletion of partitions, fsync, LOOP_CLR_FD, close. Returns 1 if the binding
 * is gone when this returns, 0 if the kernel deferred the teardown to the last close (6.11+),
 * -ESTALE if the device no longer carries diskseq (already gone).
 */
int loop_detach(const char *root, const char *name, uint64_t diskseq);

/*
 * The same without ever sleeping: when need_lock and udev (or anybody) holds a flock on the
 * device, nothing is done and -EWOULDBLOCK is returned, for the caller to retry later (the
 * daemon does so on an event-loop timer). Without need_lock it goes on without the lock.
 * The device is opened read-only (CAP_SYS_ADMIN suffices for the ioctls), so that the close
 * does not make udev re-probe it.
 */
int loop_detach_nowait(const char *root, const char *name, uint64_t diskseq, bool need_lock);

/* Deletes partitions left on an UNBOUND device (the kernel keeps manually added ones after a
 * deferred teardown). -EBUSY if the device is bound again. Returns how many were deleted. */
int loop_remove_stale_partitions(const char *root, const char *name);

/* Removes the private device nodes (/dev/.loopmgr-<name>-<pid>, see loop_attach()) that a
 * process killed between making and removing one left behind: those whose pid is gone. */
void loop_private_nodes_cleanup(const char *root);

/*
 * An fd of <root>/dev/<name>, to hand to a client (Device.OpenDevice): opened O_RDONLY, or O_RDWR
 * when writable (never silently downgraded), O_CLOEXEC, and checked to carry diskseq. -ESTALE
 * when the binding changed or the node is gone, -ENOTBLK when the node is no block device,
 * -EROFS/-EACCES as the kernel refuses a write open, else the errno of open().
 */
int loop_open_binding(const char *root, const char *name, uint64_t diskseq, bool writable);

/* An fd of <root>/dev/<name> (read-only, so that its close makes udev do nothing) carrying
 * diskseq, with a shared flock: what LoopConfig.ret_hold_fd hands out at the attach, taken
 * again by a restarted daemon. -EWOULDBLOCK when somebody holds LOCK_EX, -ESTALE as
 * loop_open_binding(). */
int loop_hold_device(const char *root, const char *name, uint64_t diskseq);

/* LOOP_SET_CAPACITY / LOOP_SET_STATUS64 toggling AUTOCLEAR, both after the diskseq check. */
int loop_set_capacity(const char *root, const char *name, uint64_t diskseq);
int loop_set_autoclear(const char *root, const char *name, uint64_t diskseq, bool autoclear);

/* Whether udev has processed the binding: <root>/dev/disk/by-diskseq/<diskseq> exists and
 * points at <name>. Returns 1, 0, or a negative errno. */
int loop_udev_link_ready(const char *root, const char *name, uint64_t diskseq);
