/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The kernel layer: loop ioctls, /dev/loop-control and sysfs, and nothing else. The contract
 * of each function is in loop-kernel.h; docs/KERNEL.md describes the kernel and udev
 * behaviour the code below works around. Binding is in loop-attach.c.
 *
 * Error conventions beyond the header:
 *   -EBADFD  the backing fd cannot back a loop device: O_PATH, write-only, or neither a
 *            regular file nor a block device (the bus layer turns this into InvalidArgs; the
 *            kernel would refuse most of these with EBADF/EINVAL, which could not be told
 *            apart from a refused configuration).
 *   -ESTALE  the binding named by (name, diskseq) is gone, including when the device node
 *            itself no longer exists.
 */

#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <signal.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>

#include "loop-kernel-internal.h"
#include "loop-kernel.h"
#include "loop-partitions.h"
#include "util.h"

#ifndef LOOP_CONFIGURE
#define LOOP_CONFIGURE 0x4C0A
#endif
#ifndef BLKGETDISKSEQ
#define BLKGETDISKSEQ _IOR(0x12, 128, uint64_t)
#endif

/* How long detach waits for udev's LOCK_SH probe to finish: at most ~100 ms, polled every
 * millisecond (a probe takes a few). On 6.11+ kernels the clear is deferred to the last close
 * anyway, so waiting longer buys nothing (docs/KERNEL.md, "Deferred teardown"). */
#define DETACH_LOCK_TRIES     100U
#define DETACH_LOCK_WAIT_USEC 1000U

void sleep_usec(uint64_t usec) {
        struct timespec ts = {
                .tv_sec = (time_t) (usec / 1000000U),
                .tv_nsec = (long) (usec % 1000000U) * 1000L,
        };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

void loop_status_done(LoopStatus *s) {
        if (!s)
                return;
        free(s->backing_file);
        *s = (LoopStatus){};
}

void loop_status_donep(LoopStatus *s) {
        loop_status_done(s);
}

/* Opens <root>/<path>; returns the fd or a negative errno. */
int open_root(const char *root, const char *path, int flags) {
        _cleanup_free_ char *p = NULL;
        int fd;

        p = path_join_root(root, path);
        if (!p)
                return -ENOMEM;

        fd = open(p, flags);
        if (fd < 0)
                return -errno;
        return fd;
}

int open_device(const char *root, const char *name, int flags) {
        char path[sizeof("/dev/") + sizeof(((LoopStatus *) NULL)->name)];

        (void) snprintf(path, sizeof(path), "/dev/%s", name);
        return open_root(root, path, flags | O_CLOEXEC | O_NOCTTY);
}

/*
 * Opens the block device devnum through a device node of our own, "/dev/.loopmgr-<name>-<pid>",
 * made for this open and unlinked right after it. udev watches /dev/loopN with inotify and
 * answers every close of a writable file of it (IN_CLOSE_WRITE) with a synthesised "change"
 * event: a second full probe (blkid, symlinks, rules) of a binding whose own "change" event
 * LOOP_CONFIGURE has already sent, which doubled udev's work per attach. inotify watches
 * inodes, and our node is another inode of the same device. The node is made in devtmpfs
 * because /run may be mounted nodev; it is 0600 and lives for the open only. Fails (-EPERM
 * without CAP_MKNOD or when the device cgroup refuses, -EACCES on a nodev root, ...) when the
 * caller must open /dev/<name> itself.
 */
int open_device_private(const char *root, const char *name, dev_t devnum, int flags) {
        _cleanup_free_ char *path = NULL;
        char rel[sizeof("/dev/.loopmgr--") + 16 + 3 * sizeof(pid_t)];
        int fd, r;

        (void) snprintf(rel, sizeof(rel), "/dev/.loopmgr-%s-%i", name, (int) getpid());
        path = path_join_root(root, rel);
        if (!path)
                return -ENOMEM;

        /* EEXIST: left by a process of ours that died between mknod and unlink. */
        if (mknod(path, S_IFBLK | 0600, devnum) < 0) {
                if (errno != EEXIST)
                        return -errno;
                if (unlink(path) < 0 || mknod(path, S_IFBLK | 0600, devnum) < 0)
                        return -errno;
        }
        fd = open(path, flags | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
        r = fd < 0 ? -errno : fd;
        (void) unlink(path);
        return r;
}

void loop_private_nodes_cleanup(const char *root) {
        _cleanup_free_ char *dirpath = NULL;
        _cleanup_closedir_ DIR *d = NULL;
        struct dirent *de;

        dirpath = path_join_root(root, "/dev");
        if (!dirpath)
                return;
        d = opendir(dirpath);
        if (!d)
                return;
        while ((de = readdir(d))) {
                const char *dash;
                uint64_t pid;

                if (strncmp(de->d_name, ".loopmgr-", strlen(".loopmgr-")) != 0)
                        continue;
                dash = strrchr(de->d_name, '-');
                if (!dash || safe_atou64(dash + 1, &pid) < 0 || pid == 0 || pid > INT_MAX)
                        continue;
                /* A live process of that pid may be in the middle of its open. */
                if (kill((pid_t) pid, 0) >= 0 || errno != ESRCH)
                        continue;
                (void) unlinkat(dirfd(d), de->d_name, 0);
        }
}

/* <root>/sys/block/<name>[/<attr>]; NULL when out of memory. Joined by hand: asprintf()
 * costs about 1,000 instructions, and a path is built for every sysfs file read. */
static char *sysfs_path(const char *root, const char *name, const char *attr) {
        static const char prefix[] = "/sys/block/";
        size_t nl = strlen(name), al = attr ? strlen(attr) : 0, n = 0;
        _cleanup_free_ char *rel = NULL;

        rel = malloc(sizeof(prefix) + nl + 1 + al);
        if (!rel)
                return NULL;
        memcpy(rel, prefix, sizeof(prefix) - 1);
        n = sizeof(prefix) - 1;
        memcpy(rel + n, name, nl);
        n += nl;
        if (attr) {
                rel[n++] = '/';
                memcpy(rel + n, attr, al);
                n += al;
        }
        rel[n] = 0;
        return path_join_root(root, rel);
}

/* Reads <root>/sys/block/<name>/<attr>. */
int sysfs_read(const char *root, const char *name, const char *attr, char **ret) {
        _cleanup_free_ char *p = NULL;

        p = sysfs_path(root, name, attr);
        if (!p)
                return -ENOMEM;

        return read_one_line_file(p, ret);
}

int sysfs_read_u64(const char *root, const char *name, const char *attr, uint64_t *ret) {
        _cleanup_free_ char *s = NULL;
        int r;

        r = sysfs_read(root, name, attr, &s);
        if (r < 0)
                return r;
        r = safe_atou64(s, ret);
        if (r < 0)
                return r == -ERANGE ? r : -EBADMSG;
        return 0;
}

static int sysfs_read_bool(const char *root, const char *name, const char *attr, bool *ret) {
        uint64_t v;
        int r;

        r = sysfs_read_u64(root, name, attr, &v);
        if (r < 0)
                return r;
        if (v > 1)
                return -EBADMSG;
        *ret = v;
        return 0;
}

static int sysfs_exists(const char *root, const char *name, const char *attr) {
        _cleanup_free_ char *p = NULL;

        p = sysfs_path(root, name, attr);
        if (!p)
                return -ENOMEM;

        if (access(p, F_OK) < 0)
                return errno == ENOENT ? 0 : -errno;
        return 1;
}

/* "7:5" as printed by the kernel's sysfs "dev" attribute. */
/*
 * LOOP_GET_STATUS64 reports lo_device/lo_rdevice as huge_encode_dev(), i.e. new_encode_dev():
 * minor bits 0-7 in bits 0-7, major (12 bits) in bits 8-19, minor bits 8-19 in bits 20-31.
 * For the 12:20 split of the kernel's dev_t that equals glibc's makedev() encoding, but decode
 * explicitly rather than rely on that coincidence.
 */
dev_t decode_kernel_dev(uint64_t v) {
        unsigned ma = (unsigned) ((v & 0xfff00U) >> 8);
        unsigned mi = (unsigned) ((v & 0xffU) | ((v >> 12) & 0xfff00U));

        return makedev(ma, mi);
}

/* BLKGETDISKSEQ (5.15+), falling back to the sysfs attribute. */
static int device_get_diskseq(int fd, const char *root, const char *name, uint64_t *ret) {
        uint64_t seq = 0;
        int r;

        if (ioctl(fd, BLKGETDISKSEQ, &seq) >= 0) {
                *ret = seq;
                return 0;
        }
        if (errno != ENOTTY && errno != EINVAL)
                return -errno;

        r = sysfs_read_u64(root, name, "diskseq", &seq);
        if (r < 0)
                return r;
        *ret = seq;
        return 0;
}

/*
 * Deletes every partition the kernel lists under <root>/sys/block/<name>/ with BLKPG. Without
 * PARTSCAN the kernel keeps manually added partitions (addpart, BLKPG_ADD_PARTITION) across
 * LOOP_CLR_FD, and the next binding of loopN would inherit partitions of the old contents.
 * Returns the number of partitions deleted or the first error (after trying all of them).
 */
int device_remove_partitions(const char *root, const char *name, int fd) {
        _cleanup_free_ LoopPartition *parts = NULL;
        size_t n = 0;
        int r;

        r = loop_read_partitions(root, name, &parts, &n);
        if (r < 0)
                return r == -ENOENT ? 0 : r;
        return loop_delete_partitions(fd, parts, n);
}

int loop_list(const char *root, char ***ret_names) {
        _cleanup_free_ char *dirpath = NULL;
        _cleanup_strv_free_ char **names = NULL;
        _cleanup_free_ unsigned *numbers = NULL;
        size_t n = 0, allocated = 0;
        _cleanup_closedir_ DIR *d = NULL;

        assert(ret_names);

        dirpath = path_join_root(root, "/sys/block");
        if (!dirpath)
                return -ENOMEM;

        d = opendir(dirpath);
        if (!d)
                return -errno;

        for (struct dirent *de; (de = readdir(d));) {
                unsigned nr;

                if (loop_name_to_number(de->d_name, &nr) < 0)
                        continue;

                if (n + 1 >= allocated) {
                        size_t m = allocated ? allocated * 2 : 16;
                        char **a;
                        unsigned *b;

                        a = realloc(names, m * sizeof(*names));
                        if (!a)
                                return -ENOMEM;
                        names = a;
                        names[n] = NULL; /* a strv again, for the cleanup */
                        b = realloc(numbers, m * sizeof(*numbers));
                        if (!b)
                                return -ENOMEM;
                        numbers = b;
                        allocated = m;
                }

                names[n] = strdup(de->d_name);
                if (!names[n])
                        return -ENOMEM;
                numbers[n] = nr;
                names[++n] = NULL;
        }

        if (!names) {
                names = calloc(1, sizeof(*names));
                if (!names)
                        return -ENOMEM;
        }

        /* Insertion sort by number: "loop10" after "loop2"; lists are short. */
        for (size_t i = 1; i < n; i++) {
                char *s = names[i];
                unsigned v = numbers[i];
                size_t j = i;

                for (; j > 0 && numbers[j - 1] > v; j--) {
                        names[j] = names[j - 1];
                        numbers[j] = numbers[j - 1];
                }
                names[j] = s;
                numbers[j] = v;
        }

        *ret_names = TAKE_PTR(names);
        return 0;
}

int loop_read_sysfs(const char *root, const char *name, LoopStatus *ret) {
        _cleanup_(loop_status_donep) LoopStatus s = {};
        _cleanup_free_ char *dev = NULL;
        uint64_t sectors, lbs;
        unsigned nr;
        int r;

        assert(ret);

        r = loop_name_to_number(name, &nr);
        if (r < 0)
                return r;

        r = sysfs_exists(root, name, NULL);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENOENT;

        (void) snprintf(s.name, sizeof(s.name), "%s", name);
        s.number = nr;

        r = sysfs_read(root, name, "dev", &dev);
        if (r < 0)
                return r;
        r = parse_devnum(dev, &s.devnum);
        if (r < 0)
                return r == -EINVAL ? -EBADMSG : r; /* garbage in a sysfs attribute */

        /* diskseq exists since 5.15; older kernels have no identity beyond the name. */
        r = sysfs_read_u64(root, name, "diskseq", &s.diskseq);
        if (r == -ENOENT)
                s.diskseq = 0;
        else if (r < 0)
                return r;

        r = sysfs_read_u64(root, name, "size", &sectors);
        if (r < 0)
                return r;
        if (sectors > UINT64_MAX / 512)
                return -ERANGE;
        s.size = sectors * 512;

        r = sysfs_read_bool(root, name, "ro", &s.read_only);
        if (r < 0)
                return r;

        r = sysfs_read_u64(root, name, "queue/logical_block_size", &lbs);
        if (r < 0)
                return r;
        if (lbs == 0 || lbs > UINT32_MAX)
                return -EBADMSG;
        s.sector_size = (uint32_t) lbs;

        r = sysfs_exists(root, name, "loop");
        if (r < 0)
                return r;
        s.bound = r > 0;

        if (s.bound) {
                r = sysfs_read(root, name, "loop/backing_file", &s.backing_file);
                if (r >= 0)
                        r = sysfs_read_u64(root, name, "loop/offset", &s.offset);
                if (r >= 0)
                        r = sysfs_read_u64(root, name, "loop/sizelimit", &s.size_limit);
                if (r >= 0)
                        r = sysfs_read_bool(root, name, "loop/autoclear", &s.autoclear);
                if (r >= 0)
                        r = sysfs_read_bool(root, name, "loop/partscan", &s.partscan);
                if (r >= 0) {
                        /* loop/dio appeared in 4.10. */
                        r = sysfs_read_bool(root, name, "loop/dio", &s.direct_io);
                        if (r == -ENOENT && sysfs_exists(root, name, "loop") > 0)
                                r = 0;
                }
                if (r == -ENOENT && sysfs_exists(root, name, "loop") == 0) {
                        /* The teardown removed the loop/ group while we read it. */
                        free(s.backing_file);
                        s.backing_file = NULL;
                        s.bound = false;
                        s.offset = s.size_limit = 0;
                        s.autoclear = s.partscan = s.direct_io = false;
                } else if (r < 0)
                        return r;
        }

        *ret = s;
        s = (LoopStatus){};
        return 0;
}

int loop_read_ids(const char *root, LoopStatus *status) {
        _cleanup_close_ int fd = -EBADF;
        struct loop_info64 info = {};
        struct stat st;
        uint64_t seq = 0;
        int r;

        assert(status);

        if (!status->bound)
                return -EINVAL;

        /* Read-only: a close after a write open would make udev re-probe the device. */
        fd = open_device(root, status->name, O_RDONLY | O_NONBLOCK);
        if (fd < 0)
                return fd;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISBLK(st.st_mode) || (status->devnum != 0 && st.st_rdev != status->devnum))
                return -ENODEV;

        r = device_get_diskseq(fd, root, status->name, &seq);
        if (r < 0)
                return r;
        if (seq != status->diskseq)
                return -ESTALE;

        if (ioctl(fd, LOOP_GET_STATUS64, &info) < 0)
                /* ENXIO: unbound by now, the diskseq bump is just not visible yet. */
                return errno == ENXIO ? -ESTALE : -errno;

        status->backing_device = decode_kernel_dev(info.lo_device);
        status->backing_inode = info.lo_inode;
        status->backing_rdevice = decode_kernel_dev(info.lo_rdevice);
        return 0;
}

int loop_backing_size(int fd, uint64_t *ret) {
        struct stat st;

        assert(ret);

        if (fstat(fd, &st) < 0)
                return -errno;

        if (S_ISREG(st.st_mode)) {
                if (st.st_size < 0)
                        return -EBADMSG;
                *ret = (uint64_t) st.st_size;
                return 0;
        }

        if (S_ISBLK(st.st_mode)) {
                uint64_t size;

                if (ioctl(fd, BLKGETSIZE64, &size) < 0)
                        return -errno;
                *ret = size;
                return 0;
        }

        return -EBADFD;
}

/* <name> opened with exactly flags and checked to carry diskseq. */
static int open_binding_exact(const char *root, const char *name, uint64_t diskseq, int flags) {
        _cleanup_close_ int fd = -EBADF;
        uint64_t seq = 0;
        unsigned nr;
        int r;

        r = loop_name_to_number(name, &nr);
        if (r < 0)
                return r;

        fd = open_device(root, name, flags);
        if (fd == -ENOENT || fd == -ENODEV)
                return -ESTALE;
        if (fd < 0)
                return fd;

        r = device_get_diskseq(fd, root, name, &seq);
        if (r < 0)
                return r;
        if (seq != diskseq)
                return -ESTALE;

        return TAKE_FD(fd);
}

/* The same for the daemon's own ioctls: a write open a read-only device refuses is retried
 * read-only. */
static int open_binding(const char *root, const char *name, uint64_t diskseq, int flags) {
        int fd;

        fd = open_binding_exact(root, name, diskseq, flags);
        if ((fd == -EROFS || fd == -EACCES) && (flags & O_ACCMODE) == O_RDWR)
                /* A read-only device may refuse a write open; the ioctls do not need one
                 * (CAP_SYS_ADMIN), only udev's close-after-write re-probe is lost. */
                fd = open_binding_exact(root, name, diskseq, (flags & ~O_ACCMODE) | O_RDONLY);
        return fd;
}

int loop_open_binding(const char *root, const char *name, uint64_t diskseq, bool writable) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        fd = open_binding_exact(root, name, diskseq, writable ? O_RDWR : O_RDONLY);
        if (fd < 0)
                return fd;
        /* The diskseq check falls back to sysfs on kernels without BLKGETDISKSEQ, which says
         * nothing about the node: the fd must be a block device of that number. */
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISBLK(st.st_mode))
                return -ENOTBLK;
        return TAKE_FD(fd);
}

int loop_hold_device(const char *root, const char *name, uint64_t diskseq) {
        _cleanup_close_ int fd = -EBADF;

        fd = loop_open_binding(root, name, diskseq, false);
        if (fd < 0)
                return fd;
        if (flock(fd, LOCK_SH | LOCK_NB) < 0)
                return -errno;
        return TAKE_FD(fd);
}

/* 1 if the binding carrying diskseq is gone from <name>, 0 if it is still there. Reads only
 * what decides it (the device, its diskseq, its loop/ group), in loop_read_sysfs()'s order:
 * each sysfs file costs an open, two reads and a close (about 7 us of kernel time here), and
 * a whole loop_read_sysfs() of a bound device reads eleven of them. */
static int binding_gone(const char *root, const char *name, uint64_t diskseq) {
        uint64_t seq;
        unsigned nr;
        int r;

        /* Only names of loop devices make paths (no "sda", no "../loop5"). */
        r = loop_name_to_number(name, &nr);
        if (r < 0)
                return r;
        r = sysfs_exists(root, name, NULL);
        if (r <= 0)
                return r < 0 ? r : 1;
        /* diskseq exists since 5.15; older kernels have no identity beyond the name. */
        r = sysfs_read_u64(root, name, "diskseq", &seq);
        if (r == -ENOENT) {
                if (sysfs_exists(root, name, NULL) == 0)
                        return 1; /* the device itself went meanwhile */
                seq = 0;
        } else if (r < 0)
                return r;
        r = sysfs_exists(root, name, "loop");
        if (r < 0)
                return r;
        return r == 0 || seq != diskseq;
}

int loop_detach_nowait(const char *root, const char *name, uint64_t diskseq, bool need_lock) {
        _cleanup_close_ int fd = -EBADF;
        int r;

        r = binding_gone(root, name, diskseq);
        if (r < 0)
                return r;
        if (r > 0)
                return -ESTALE;

        /* Read-only: the ioctls below need CAP_SYS_ADMIN, not a write open, and closing a fd
         * opened for writing makes udev (inotify IN_CLOSE_WRITE) re-probe the device, an
         * event and a probe per detach for nothing. */
        fd = open_binding(root, name, diskseq, O_RDONLY | O_NONBLOCK);
        if (fd == -ENXIO)
                /* 6.11+: the device is in rundown, new opens fail until the teardown is done.
                 * The teardown was already requested: report how far it got. */
                return binding_gone(root, name, diskseq);
        if (fd < 0)
                return fd;

        /* LOCK_EX waits for udev's LOCK_SH probe (without it, udev's open would defer the
         * teardown to its close and Detach would answer "pending" for an idle device). Never
         * waited for here: the caller retries later while need_lock, and without it goes on,
         * the kernel defers the clear if udev still has the device open. */
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                if (errno != EWOULDBLOCK)
                        return -errno;
                if (need_lock)
                        return -EWOULDBLOCK;
        }

        /* Best effort: a partition that is open (mounted) cannot be deleted, the clear is then
         * deferred by the kernel anyway. */
        (void) device_remove_partitions(root, name, fd);
        (void) fsync(fd);

        if (ioctl(fd, LOOP_CLR_FD) < 0) {
                /* ENXIO: not bound any more, somebody else cleared it meanwhile. */
                if (errno != ENXIO)
                        return -errno;
        }

        /* On 6.11+ LOOP_CLR_FD only sets AUTOCLEAR (and rundown if we are the only opener):
         * the teardown runs in the release of the last opener, which may be this close. */
        fd = safe_close(fd);

        return binding_gone(root, name, diskseq);
}

int loop_detach(const char *root, const char *name, uint64_t diskseq) {
        int r;

        /* Bounded (see DETACH_LOCK_TRIES), for the callers that cannot wait on the event
         * loop (error paths right after an attach). */
        for (unsigned i = 0;; i++) {
                r = loop_detach_nowait(root, name, diskseq, i < DETACH_LOCK_TRIES);
                if (r != -EWOULDBLOCK)
                        return r;
                sleep_usec(DETACH_LOCK_WAIT_USEC);
        }
}

/* Both read-only, like loop_detach_nowait(): CAP_SYS_ADMIN suffices, and no udev re-probe
 * follows our close (the kernel's own change uevent for a resize does). */
int loop_set_capacity(const char *root, const char *name, uint64_t diskseq) {
        _cleanup_close_ int fd = -EBADF;

        fd = open_binding(root, name, diskseq, O_RDONLY | O_NONBLOCK);
        if (fd < 0)
                return fd;

        if (ioctl(fd, LOOP_SET_CAPACITY, 0UL) < 0)
                return errno == ENXIO ? -ESTALE : -errno;
        return 0;
}

int loop_set_autoclear(const char *root, const char *name, uint64_t diskseq, bool autoclear) {
        _cleanup_close_ int fd = -EBADF;
        struct loop_info64 info = {};
        int r;

        fd = open_binding(root, name, diskseq, O_RDONLY | O_NONBLOCK);
        if (fd < 0)
                return fd;

        if (ioctl(fd, LOOP_GET_STATUS64, &info) < 0)
                return errno == ENXIO ? -ESTALE : -errno;

        if (!!(info.lo_flags & LO_FLAGS_AUTOCLEAR) == autoclear)
                return 0;

        if (autoclear)
                info.lo_flags |= LO_FLAGS_AUTOCLEAR;
        else
                info.lo_flags &= ~LO_FLAGS_AUTOCLEAR;

        /* Note: with AUTOCLEAR set, our own close below may be the last one and tear the
         * device down; that is exactly the kernel semantics the caller asked for. */
        r = set_status_retry(fd, &info);
        return r == -ENXIO ? -ESTALE : r;
}

int loop_udev_link_ready(const char *root, const char *name, uint64_t diskseq) {
        _cleanup_free_ char *p = NULL;
        char rel[sizeof("/dev/disk/by-diskseq/") + 20];
        char target[PATH_MAX];
        const char *base;
        ssize_t n;

        assert(name);

        (void) snprintf(rel, sizeof(rel), "/dev/disk/by-diskseq/%" PRIu64, diskseq);
        p = path_join_root(root, rel);
        if (!p)
                return -ENOMEM;

        n = readlink(p, target, sizeof(target) - 1);
        if (n < 0)
                return errno == ENOENT ? 0 : -errno;
        target[n] = '\0';

        base = strrchr(target, '/');
        base = base ? base + 1 : target;

        /* diskseq is unique per boot, so a link to another name is not "ours yet": 0. */
        return streq(base, name);
}

int loop_remove_stale_partitions(const char *root, const char *name) {
        _cleanup_close_ int ctl = -EBADF, fd = -EBADF;
        struct loop_info64 info = {};

        /* Under the loop-control lock, so that a cooperating tool cannot bind the device
         * between our "unbound?" check and the deletion. */
        ctl = open_root(root, "/dev/loop-control", O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (ctl >= 0)
                while (flock(ctl, LOCK_EX) < 0)
                        if (errno != EINTR)
                                return -errno;

        fd = open_device(root, name, O_RDONLY | O_NONBLOCK);
        if (fd < 0)
                return fd;
        if (ioctl(fd, LOOP_GET_STATUS64, &info) >= 0)
                return -EBUSY; /* bound again: its partitions are not stale */
        if (errno != ENXIO)
                return -errno;

        return device_remove_partitions(root, name, fd);
}
