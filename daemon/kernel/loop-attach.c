/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Binding a backing to a loop device (loop_attach()): the device found or made, configured in
 * one LOOP_CONFIGURE (or the legacy SET_FD + SET_STATUS64 pair), read back, and retried on
 * another device when somebody took this one first. docs/KERNEL.md, "Binding a backing".
 */

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "loop-kernel-internal.h"
#include "loop-kernel.h"
#include "util.h"

#ifndef LOOP_CONFIGURE
#define LOOP_CONFIGURE 0x4C0A
#endif
#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif

/* When the device LOOP_CTL_GET_FREE names cannot be taken (attach_with_retries()): how many
 * other existing unbound devices to try, then how many new ones to add with LOOP_CTL_ADD. */
#define ATTACH_SCAN_MAX 16U
#define ATTACH_ADD_MAX  4U
/* How many loop numbers above GET_FREE's answer that search looks at. */
#define ATTACH_PROBE_MAX 256U
/* Old kernels answer LOOP_SET_STATUS64 with EAGAIN while the page cache cannot be dropped. */
#define SET_STATUS_TRIES     5U
#define SET_STATUS_WAIT_USEC 20000U

static bool sector_size_valid(uint32_t s) {
        return s == 512 || s == 1024 || s == 2048 || s == 4096;
}

int loop_validate_range(uint64_t backing_size, uint64_t offset, uint64_t size_limit,
                        uint32_t sector_size, const char **ret_reason, uint64_t *ret_size) {
        const char *reason;
        uint64_t avail, size;

        if (sector_size == 0)
                sector_size = 512;

        if (!sector_size_valid(sector_size))
                reason = "The sector size must be 512, 1024, 2048 or 4096 bytes.";
        else if (offset % 512 != 0)
                reason = "The offset must be a multiple of 512 bytes.";
        else if (size_limit % 512 != 0)
                reason = "The size limit must be a multiple of 512 bytes.";
        else if (offset > (uint64_t) INT64_MAX || size_limit > (uint64_t) INT64_MAX)
                /* The kernel keeps both in loff_t. */
                reason = "The offset or size limit is too large.";
        else if (offset > backing_size)
                reason = "The offset lies beyond the end of the backing file or device.";
        else if (offset == backing_size)
                reason = "The offset equals the size of the backing file or device: the "
                         "device would be empty.";
        else if (size_limit > (uint64_t) INT64_MAX - offset)
                reason = "Offset plus size limit overflows.";
        else if (size_limit > 0 && offset + size_limit > backing_size)
                reason = "Offset plus size limit extends past the end of the backing file or "
                         "device.";
        else {
                avail = backing_size - offset;
                size = size_limit > 0 ? size_limit : avail;
                /* The kernel exposes whole 512-byte sectors only (get_size() >> 9). */
                size -= size % 512;

                if (size < sector_size)
                        reason = "The device would be smaller than one sector.";
                else {
                        if (ret_reason)
                                *ret_reason = NULL;
                        if (ret_size)
                                *ret_size = size;
                        return 0;
                }
        }

        if (ret_reason)
                *ret_reason = reason;
        return -EINVAL;
}

/* Opens the file behind fd again with other flags, through /proc/self/fd: a new file
 * description, so the caller's (shared) one keeps its flags. */
static int fd_reopen(int fd, int flags) {
        char path[sizeof("/proc/self/fd/") + 3 * sizeof(int)];
        int r;

        (void) snprintf(path, sizeof(path), "/proc/self/fd/%i", fd);
        r = open(path, flags | O_CLOEXEC | O_NOCTTY);
        if (r < 0)
                return -errno;
        return r;
}

/* The shared lock of a partition-scanned device moves from the bind's read-write lock fd (*fd,
 * which holds LOCK_SH already) to a read-only fd of the same node, which is returned; *fd is
 * closed with the lock still held, like the bind's own read-write fd (udev's cue, inotify
 * IN_CLOSE_WRITE, to probe the finished device; its attempt to re-read the partition table
 * fails on the shared lock). The hold's own close, just before the teardown, then wakes
 * nobody: a read-write one made udev probe, and re-read the table of, a device on its way
 * out, and hold it open while the teardown waited. When no read-only fd can be had, *fd
 * itself is returned. */
static int hold_read_only(int *fd) {
        _cleanup_close_ int ro = fd_reopen(*fd, O_RDONLY | O_NONBLOCK);

        if (ro < 0 || flock(ro, LOCK_SH | LOCK_NB) < 0)
                return TAKE_FD(*fd);
        *fd = safe_close(*fd);
        return TAKE_FD(ro);
}

/* The loop block size at which the kernel will accept direct I/O on this backing object;
 * mirrors loop_query_min_dio_size() (6.15+): a block device's logical block size, else the
 * file system's STATX_DIOALIGN, else the logical block size of the file system's device,
 * else 512. */
static uint32_t backing_dio_alignment(const char *root, int fd, const struct stat *st) {
        struct statx sx = {};

        if (S_ISBLK(st->st_mode)) {
                int ssz = 0;

                if (ioctl(fd, BLKSSZGET, &ssz) >= 0 && ssz > 0)
                        return (uint32_t) ssz;
                return 512;
        }

        if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) >= 0 &&
            (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align > 0)
                return sx.stx_dio_offset_align;

        for (unsigned i = 0; i < 2; i++) {
                _cleanup_free_ char *rel = NULL, *p = NULL, *s = NULL;
                uint64_t v;

                /* /sys/dev/block/M:m is the whole disk or a partition; a partition has no
                 * queue/ of its own, its parent does. */
                if (asprintf(&rel, "/sys/dev/block/%u:%u/%squeue/logical_block_size",
                             major(st->st_dev), minor(st->st_dev), i == 0 ? "" : "../") < 0)
                        break;
                p = path_join_root(root, rel);
                if (!p)
                        break;
                if (read_one_line_file(p, &s) < 0)
                        continue;
                if (safe_atou64(s, &v) >= 0 && v > 0 && v <= UINT32_MAX)
                        return (uint32_t) v;
        }

        return 512;
}

static void fill_file_name(struct loop_info64 *info, int fd) {
        char path[sizeof("/proc/self/fd/") + 3 * sizeof(int)];
        char target[PATH_MAX];
        ssize_t n;

        /* lo_file_name is only informational (LOOP_GET_STATUS users such as old losetup); sysfs
         * backing_file is what everybody reads. Truncate silently. */
        (void) snprintf(path, sizeof(path), "/proc/self/fd/%i", fd);
        n = readlink(path, target, sizeof(target) - 1);
        if (n <= 0)
                return;
        if ((size_t) n >= sizeof(info->lo_file_name))
                n = sizeof(info->lo_file_name) - 1;
        memcpy(info->lo_file_name, target, (size_t) n);
        info->lo_file_name[n] = '\0';
}

/* Clears a device that LOOP_CONFIGURE (or LOOP_SET_FD) bound, unless disarmed: every error
 * path after the binding leaves the device as it found it. */
typedef struct AttachGuard {
        int fd;
        bool armed;
} AttachGuard;

static void attach_guard_release(AttachGuard *g) {
        if (g->armed && g->fd >= 0) {
                int saved = errno;

                (void) ioctl(g->fd, LOOP_CLR_FD);
                errno = saved;
        }
        g->armed = false;
}

int set_status_retry(int fd, const struct loop_info64 *info) {
        for (unsigned i = 0;; i++) {
                if (ioctl(fd, LOOP_SET_STATUS64, info) >= 0)
                        return 0;
                if (errno != EAGAIN || i + 1 >= SET_STATUS_TRIES)
                        return -errno;
                sleep_usec(SET_STATUS_WAIT_USEC);
        }
}

/* Pre-5.8 kernels: LOOP_SET_FD + LOOP_SET_BLOCK_SIZE + LOOP_SET_STATUS64 + LOOP_SET_DIRECT_IO.
 * Arms the guard as soon as the fd is bound. */
static int configure_legacy(int fd, const struct loop_config *lc, AttachGuard *guard) {
        _cleanup_close_ int ro_fd = -EBADF;
        struct loop_info64 info = lc->info;
        int set_fd = (int) lc->fd, fl, r;

        /* LOOP_SET_FD takes read-only from the backing fd alone. */
        fl = fcntl(set_fd, F_GETFL);
        if (fl < 0)
                return -errno;
        if ((lc->info.lo_flags & LO_FLAGS_READ_ONLY) && (fl & O_ACCMODE) != O_RDONLY) {
                ro_fd = fd_reopen(set_fd, O_RDONLY | (fl & O_DIRECT));
                if (ro_fd < 0)
                        return ro_fd;
                set_fd = ro_fd;
        }

        if (ioctl(fd, LOOP_SET_FD, (unsigned long) set_fd) < 0)
                return -errno;
        guard->armed = true;

        if (lc->block_size != 0 && lc->block_size != 512 &&
            ioctl(fd, LOOP_SET_BLOCK_SIZE, (unsigned long) lc->block_size) < 0)
                return -errno;

        info.lo_flags &= LO_FLAGS_AUTOCLEAR;
        r = set_status_retry(fd, &info);
        if (r < 0)
                return r;

        /* EINVAL: the kernel cannot do direct I/O here; the verification decides what that
         * means for the request. */
        if ((lc->info.lo_flags & LO_FLAGS_DIRECT_IO) && ioctl(fd, LOOP_SET_DIRECT_IO, 1UL) < 0 &&
            errno != EINVAL)
                return -errno;

        return 0;
}

typedef struct AttachPlan {
        int fd; /* the fd handed to the kernel */
        uint32_t sector_size;
        bool direct_io;
} AttachPlan;

/* Internal: direct I/O was requested but the kernel did not enable it; the device has been
 * cleared again. */
#define ERRNO_DIO_REFUSED ENOANO

/*
 * The LoopStatus of the binding we just made, from the device fd we still hold (an AUTOCLEAR
 * binding cannot go away under us) and the LOOP_GET_STATUS64 answer we already have, instead
 * of a dozen sysfs attributes: one open/read/close each cost more than the configure itself.
 * The sysfs attributes report the same values (test-loop-kernel-real compares them):
 *   size: get_capacity() * 512 = BLKGETSIZE64; sector size: queue/logical_block_size =
 *   BLKSSZGET; ro: set_disk_ro() follows LO_FLAGS_READ_ONLY; loop/{offset,sizelimit,autoclear,
 *   partscan,dio}: lo_offset, lo_sizelimit, lo_flags; diskseq: BLKGETDISKSEQ; loop/backing_file
 *   is file_path() of the backing file, the same d_path() that /proc/self/fd/<fd> shows for
 *   the fd we handed to the kernel.
 */
static int status_from_device(int fd, const char *name, int nr, const struct loop_info64 *info,
                              int backing_fd, LoopStatus *ret) {
        _cleanup_(loop_status_donep) LoopStatus s = {};
        char path[sizeof("/proc/self/fd/") + 3 * sizeof(int)];
        char target[PATH_MAX];
        struct stat st;
        uint64_t size;
        ssize_t n;
        int ssz = 0;

        (void) snprintf(s.name, sizeof(s.name), "%s", name);
        s.number = (unsigned) nr;
        s.bound = true;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISBLK(st.st_mode))
                return -ENODEV;
        s.devnum = st.st_rdev;

        /* Without BLKGETDISKSEQ (before 5.15) there is no identity beyond the name, as in
         * loop_read_sysfs(). */
        if (ioctl(fd, BLKGETDISKSEQ, &s.diskseq) < 0) {
                if (errno != ENOTTY && errno != EINVAL)
                        return -errno;
                s.diskseq = 0;
        }
        if (ioctl(fd, BLKGETSIZE64, &size) < 0)
                return -errno;
        s.size = size - size % 512;
        if (ioctl(fd, BLKSSZGET, &ssz) < 0)
                return -errno;
        if (ssz <= 0)
                return -EBADMSG;
        s.sector_size = (uint32_t) ssz;

        s.backing_device = decode_kernel_dev(info->lo_device);
        s.backing_inode = info->lo_inode;
        s.backing_rdevice = decode_kernel_dev(info->lo_rdevice);
        s.offset = info->lo_offset;
        s.size_limit = info->lo_sizelimit;
        s.read_only = info->lo_flags & LO_FLAGS_READ_ONLY;
        s.autoclear = info->lo_flags & LO_FLAGS_AUTOCLEAR;
        s.partscan = info->lo_flags & LO_FLAGS_PARTSCAN;
        s.direct_io = info->lo_flags & LO_FLAGS_DIRECT_IO;

        (void) snprintf(path, sizeof(path), "/proc/self/fd/%i", backing_fd);
        n = readlink(path, target, sizeof(target) - 1);
        if (n < 0)
                return -errno;
        target[n] = '\0';
        s.backing_file = strdup(target);
        if (!s.backing_file)
                return -ENOMEM;

        *ret = s;
        s = (LoopStatus){};
        return 0;
}

/* After the partition scan: when the kernel made no partitions (it has no parser for the
 * table), the ones libblkid finds are added with BLKPG (loop-partitions.h). A table that cannot
 * be read or a partition the kernel refuses is no failure of the attach: the device works, the
 * caller learns from *ret what is missing. */
static int add_missing_partitions(const char *root, const char *name, int fd, LoopTableAdd *ret) {
        _cleanup_free_ LoopPartition *parts = NULL;
        size_t n = 0;
        int r;

        *ret = (LoopTableAdd){};
        r = loop_read_partitions(root, name, &parts, &n);
        if (r < 0)
                return r;
        if (n > 0)
                return 0;
        r = loop_add_table_partitions(fd, ret);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                *ret = (LoopTableAdd){.error = r};
        return 0;
}

/* Binds loop<nr> once. Returns -EBUSY, -EAGAIN, -ENXIO, -ENODEV or -ENOENT when another
 * device should be tried, -ERRNO_DIO_REFUSED when direct I/O did not stick. */
static int configure_device(const char *root, int nr, const LoopConfig *c, const AttachPlan *plan,
                            LoopStatus *ret) {
        _cleanup_(loop_status_donep) LoopStatus s = {};
        _cleanup_close_ int fd = -EBADF, lock_fd = -EBADF;
        _cleanup_(attach_guard_release) AttachGuard guard = {.fd = -EBADF};
        struct loop_info64 info = {};
        struct loop_config lc = {};
        LoopTableAdd table_added = {};
        char name[sizeof(s.name)];
        bool quiet;
        int r;

        (void) snprintf(name, sizeof(name), "loop%i", nr);

        /*
         * Two ways to keep udev's probes off a half-made binding (BLOCK_DEVICE_LOCKING):
         *
         * Quiet (no partition scan): LOOP_CONFIGURE makes the binding whole in one step, and
         * its "change" event is the one udev needs. Only a device udev is still probing (the
         * teardown of its previous binding) is skipped: LOCK_EX on a read-only fd of
         * /dev/loopN, released again before the bind, because udev postpones an event of a
         * locked device and then waits for an IN_CLOSE_WRITE of /dev/loopN (or 200 ms) to try
         * again. The device is bound through a private node (open_device_private()), so that
         * no close of ours makes udev probe the binding a second time.
         *
         * Locked (partition scan, or no private node): the lock is held across the bind and
         * the partition scan, on a second read-write fd of /dev/loopN; its close makes udev
         * probe the finished device (and retry the event it postponed).
         */
        quiet = !c->partscan;
        if (quiet) {
                struct stat st;

                lock_fd = open_device(root, name, O_RDONLY | O_NONBLOCK);
                if (lock_fd < 0)
                        return lock_fd;
                if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0)
                        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
                if (fstat(lock_fd, &st) < 0)
                        return -errno;
                fd = open_device_private(root, name, st.st_rdev, O_RDWR | O_NONBLOCK);
                lock_fd = safe_close(lock_fd);
                if (fd < 0)
                        quiet = false;
        }
        if (!quiet) {
                fd = open_device(root, name, O_RDWR | O_NONBLOCK);
                if (fd < 0)
                        return fd;
                lock_fd = open_device(root, name, O_RDWR | O_NONBLOCK);
                if (lock_fd < 0)
                        return lock_fd;
                if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0)
                        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        }

        /* Tools that skip the loop-control lock (losetup) may have bound it meanwhile. */
        if (ioctl(fd, LOOP_GET_STATUS64, &info) >= 0)
                return -EBUSY;
        if (errno != ENXIO)
                return -errno;

        /* Partitions left over from an earlier binding would show the old contents. */
        r = device_remove_partitions(root, name, fd);
        if (r < 0)
                return -EBUSY;

        if (c->prepare) {
                r = c->prepare(name, c->userdata);
                if (r < 0)
                        return r;
        }

        lc.fd = (uint32_t) plan->fd;
        lc.block_size = plan->sector_size;
        lc.info.lo_offset = c->offset;
        lc.info.lo_sizelimit = c->size_limit;
        /* No PARTSCAN here: with it, partitions appear, vanish and reappear when udev opens
         * the device between the change event and the rescan; it is enabled further down. */
        lc.info.lo_flags = (c->read_only ? LO_FLAGS_READ_ONLY : 0) |
                           (c->autoclear ? LO_FLAGS_AUTOCLEAR : 0) |
                           (plan->direct_io ? LO_FLAGS_DIRECT_IO : 0);
        fill_file_name(&lc.info, plan->fd);

        guard.fd = fd;
        if (ioctl(fd, LOOP_CONFIGURE, &lc) >= 0)
                guard.armed = true;
        else {
                r = -errno;
                /* Only a missing ioctl (pre-5.8) falls back; a refused configuration fails
                 * the same way through the old path. */
                if (r != -ENOTTY && r != -EINVAL)
                        return r;
                r = configure_legacy(fd, &lc, &guard);
                if (r < 0)
                        return r;
        }

        if (ioctl(fd, LOOP_GET_STATUS64, &info) < 0)
                return -errno;

        /* Since 6.13 the kernel silently drops DIRECT_IO when the block size or the offset does
         * not fit the backing's direct I/O alignment (loop_update_dio()). */
        if (plan->direct_io && !(info.lo_flags & LO_FLAGS_DIRECT_IO))
                return -ERRNO_DIO_REFUSED;
        if (!plan->direct_io && (info.lo_flags & LO_FLAGS_DIRECT_IO) &&
            ioctl(fd, LOOP_SET_DIRECT_IO, 0UL) < 0)
                return -errno;

        if (info.lo_offset != c->offset || info.lo_sizelimit != c->size_limit ||
            (c->read_only && !(info.lo_flags & LO_FLAGS_READ_ONLY)))
                return -EIO;

        if (c->partscan) {
                info.lo_flags |= LO_FLAGS_PARTSCAN;
                r = set_status_retry(fd, &info);
                if (r < 0)
                        return r;
                /* Still under the lock: udev probes the device with its partitions. */
                r = add_missing_partitions(root, name, fd, &table_added);
                if (r < 0)
                        return r;
        }

        r = status_from_device(fd, name, nr, &info, plan->fd, &s);
        if (r < 0)
                return r;
        s.table_added = table_added;

        guard.armed = false;
        /* With a partition scan the caller may keep the device's lock, shared from now on
         * (loop-kernel.h, LoopConfig.ret_hold_fd): udev probes it, but cannot take it to
         * re-read the partition table when a writer closes the device. */
        if (c->partscan && c->ret_hold_fd && flock(lock_fd, LOCK_SH | LOCK_NB) >= 0)
                *c->ret_hold_fd = hold_read_only(&lock_fd);
        lock_fd = safe_close(lock_fd);

        *ret = s;
        s = (LoopStatus){};
        return 0;
}

/* Whether configure_device() failed because of that device only (another one may work):
 * EBUSY: somebody bound it first; ENXIO/ENODEV/ENOENT: it is being torn down or was removed
 * (LOOP_CTL_REMOVE) meanwhile; EAGAIN: somebody (udev's probe) holds its lock. */
static bool attach_try_another(int r) {
        return r == -EBUSY || r == -EAGAIN || r == -ENXIO || r == -ENODEV || r == -ENOENT;
}

/*
 * Unbound loop devices (no loop/ group in <root>/sys/block) numbered from first up, at most max
 * of them, looking at no more than ATTACH_PROBE_MAX numbers and stopping at the first number
 * that has no device: *ret_next is that number, where LOOP_CTL_ADD may create one. Only the
 * numbers above LOOP_CTL_GET_FREE's answer are of interest, it names the lowest unbound device,
 * and probing numbers costs two faccessat() each instead of a readdir of every block device.
 */
static int find_unbound(const char *root, unsigned first, unsigned *numbers, size_t max,
                        size_t *ret_n, unsigned *ret_next) {
        _cleanup_free_ char *dirpath = NULL;
        _cleanup_close_ int dfd = -EBADF;
        size_t n = 0;
        unsigned k = first;

        dirpath = path_join_root(root, "/sys/block");
        if (!dirpath)
                return -ENOMEM;
        dfd = open(dirpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;

        for (unsigned probed = 0; probed < ATTACH_PROBE_MAX && n < max && k < INT_MAX;
             probed++, k++) {
                char attr[sizeof("loop/loop") + 3 * sizeof(unsigned)];

                (void) snprintf(attr, sizeof(attr), "loop%u/loop", k);
                if (faccessat(dfd, attr, F_OK, 0) >= 0 || errno != ENOENT)
                        continue; /* bound, or we cannot tell */
                (void) snprintf(attr, sizeof(attr), "loop%u", k);
                if (faccessat(dfd, attr, F_OK, 0) < 0) {
                        if (errno == ENOENT)
                                break; /* the first gap */
                        continue;
                }
                numbers[n++] = k;
        }

        *ret_n = n;
        *ret_next = k;
        return 0;
}

/*
 * Under flock(LOCK_EX) on /dev/loop-control, like systemd, so that cooperating tools do not
 * steal each other's devices: the device LOOP_CTL_GET_FREE names; when that one cannot be
 * taken, other existing unbound devices above it; then devices we add with LOOP_CTL_ADD.
 * Never sleeps: loopmgrd serves every client from one thread, and the usual reason GET_FREE's
 * device cannot be taken is udev still probing it (LOCK_SH) after the previous binding's
 * teardown, which takes as long as udev takes. systemd sleeps 10-250 ms there and retries the
 * same device; a different device is free right now. Bounded: at most 1 + ATTACH_SCAN_MAX +
 * ATTACH_ADD_MAX devices are tried, then -EBUSY.
 */
static int attach_with_retries(const char *root, const LoopConfig *c, const AttachPlan *plan,
                               LoopStatus *ret) {
        _cleanup_close_ int ctl = -EBADF;
        unsigned candidates[ATTACH_SCAN_MAX];
        size_t n_candidates = 0;
        unsigned next = 0;
        int nr, r;

        ctl = open_root(root, "/dev/loop-control", O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (ctl < 0)
                return ctl;

        /* Released by the close. */
        while (flock(ctl, LOCK_EX) < 0)
                if (errno != EINTR)
                        return -errno;

        if (c->use_device) {
                if (c->device >= INT_MAX)
                        return -ENODEV;
                /* EEXIST is the usual case: the device is there already. */
                if (ioctl(ctl, LOOP_CTL_ADD, (unsigned long) c->device) < 0 && errno != EEXIST)
                        return errno == ENOMEM ? -ENOMEM : -ENODEV;
                r = configure_device(root, (int) c->device, c, plan, ret);
                if (r == -EAGAIN || r == -ENXIO)
                        return -EBUSY;
                if (r == -ENOENT)
                        return -ENODEV; /* removed (LOOP_CTL_REMOVE) meanwhile */
                return r;
        }

        if (c->use_hint && c->hint < INT_MAX) {
                r = configure_device(root, (int) c->hint, c, plan, ret);
                if (r >= 0 || !attach_try_another(r))
                        return r;
        }

        nr = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (nr < 0 && errno != ENOSPC)
                return -errno;
        if (nr >= 0 && !(c->use_hint && (unsigned) nr == c->hint)) {
                r = configure_device(root, nr, c, plan, ret);
                if (r >= 0 || !attach_try_another(r))
                        return r;
        }

        r = find_unbound(root, nr >= 0 ? (unsigned) nr + 1 : 0, candidates, ATTACH_SCAN_MAX,
                         &n_candidates, &next);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n_candidates; i++) {
                r = configure_device(root, (int) candidates[i], c, plan, ret);
                if (r >= 0 || !attach_try_another(r))
                        return r;
        }

        for (unsigned added = 0, tries = 0;
             added < ATTACH_ADD_MAX && tries < 2 * ATTACH_ADD_MAX && next < INT_MAX; tries++) {
                nr = ioctl(ctl, LOOP_CTL_ADD, (unsigned long) next);
                if (nr < 0) {
                        /* EEXIST: somebody created it meanwhile; we will try the next one. */
                        if (errno != EEXIST)
                                return errno == ENOSPC || errno == ENOMEM ? -ENOSPC : -errno;
                        next++;
                        continue;
                }
                added++;
                next = (unsigned) nr + 1;
                r = configure_device(root, nr, c, plan, ret);
                if (r >= 0 || !attach_try_another(r))
                        return r;
        }

        return -EBUSY;
}

int loop_attach(const char *root, int backing_fd, const LoopConfig *config, LoopStatus *ret) {
        _cleanup_close_ int dio_fd = -EBADF, buffered_fd = -EBADF;
        LoopConfig c;
        struct stat st;
        uint64_t backing_size;
        uint32_t dio_align = 0;
        bool want_dio;
        int fl, accmode, r;

        assert(config);
        assert(ret);

        if (backing_fd < 0)
                return -EBADF;

        fl = fcntl(backing_fd, F_GETFL);
        if (fl < 0)
                return -errno;
        accmode = fl & O_ACCMODE;
        /* Reopening an O_PATH fd through /proc would upgrade it to a real open the caller was
         * never granted; a write-only fd cannot serve reads. */
        if ((fl & O_PATH) || accmode == O_WRONLY)
                return -EBADFD;
        if (fstat(backing_fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
                return -EBADFD;

        c = *config;
        /* The fd's access mode bounds the device: the kernel would force this anyway. */
        if (accmode == O_RDONLY)
                c.read_only = true;

        if (c.sector_size != 0 && !sector_size_valid(c.sector_size))
                return -EINVAL;

        r = loop_backing_size(backing_fd, &backing_size);
        if (r < 0)
                return r;
        r = loop_validate_range(backing_size, c.offset, c.size_limit, c.sector_size, NULL, NULL);
        if (r < 0)
                return r;

        want_dio = c.direct_io != DIRECT_IO_OFF;
        if (want_dio) {
                /* Never fcntl(F_SETFL, O_DIRECT) the caller's fd: the file description is shared
                 * with the caller. */
                dio_fd = fd_reopen(backing_fd, accmode | O_DIRECT);
                if (dio_fd < 0) {
                        /* EINVAL: the file system refuses O_DIRECT (tmpfs before 6.6, ...). */
                        if (c.direct_io == DIRECT_IO_ON)
                                return dio_fd == -EINVAL ? -EOPNOTSUPP : dio_fd;
                        want_dio = false;
                } else
                        dio_align = backing_dio_alignment(root, dio_fd, &st);
        }

        /* auto: only ask for direct I/O when the kernel will grant it, so that the common
         * fallback needs no second configure round. on: let the kernel be the judge. */
        if (want_dio && c.direct_io == DIRECT_IO_AUTO) {
                uint32_t ss = c.sector_size ?: (dio_align <= 4096 ? dio_align : 0);

                if (ss == 0 || ss < dio_align || c.offset % dio_align != 0)
                        want_dio = false;
        }

        for (;;) {
                AttachPlan plan = {
                        .direct_io = want_dio,
                };

                if (want_dio)
                        plan.fd = dio_fd;
                else if (fl & O_DIRECT) {
                        /* The kernel turns direct I/O on for any O_DIRECT backing file. */
                        if (buffered_fd < 0) {
                                buffered_fd = fd_reopen(backing_fd, accmode);
                                if (buffered_fd < 0)
                                        return buffered_fd;
                        }
                        plan.fd = buffered_fd;
                } else
                        plan.fd = backing_fd;

                /* Default sector size: a block device's own logical block size (so that on-disk
                 * structures addressed in LBAs, like GPT, keep their meaning); for files the
                 * direct I/O alignment when direct I/O is used, else 512. */
                if (c.sector_size != 0)
                        plan.sector_size = c.sector_size;
                else if (S_ISBLK(st.st_mode)) {
                        int ssz = 0;

                        if (ioctl(backing_fd, BLKSSZGET, &ssz) < 0)
                                return -errno;
                        plan.sector_size = ssz > 0 ? (uint32_t) ssz : 512;
                } else if (want_dio && dio_align >= 512 && dio_align <= 4096)
                        plan.sector_size = dio_align;
                else
                        plan.sector_size = 512;

                r = loop_validate_range(backing_size, c.offset, c.size_limit, plan.sector_size,
                                        NULL, NULL);
                if (r < 0)
                        return r;

                r = attach_with_retries(root, &c, &plan, ret);
                if (r != -ERRNO_DIO_REFUSED)
                        return r;

                /* The device has been cleared again by the guard. */
                if (c.direct_io == DIRECT_IO_ON)
                        return -EOPNOTSUPP;
                want_dio = false;
        }
}

/* Opens <name> for an operation on the binding carrying diskseq. */
