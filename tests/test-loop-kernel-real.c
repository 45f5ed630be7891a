/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The kernel layer against real loop devices. Needs root and /dev/loop-control (exit 77
 * otherwise). Other tests share the kernel: images live in a fresh mkdtemp() directory, every
 * device a test creates is recorded and detached in the teardown, and as a safety net the
 * teardown also detaches any device whose backing file lies in our directory (a device left
 * behind by a failed attach could only be bound to one of our images).
 *
 * ioctl() is interposed (defined below; the core library is linked statically into this
 * executable, so its calls bind here) to fake a kernel without LOOP_CONFIGURE and a failing
 * LOOP_SET_STATUS64, which exercise the fallback path and the cleanup of a half-configured
 * device on real devices.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <linux/blkpg.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/magic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>

#include <cmocka.h>

#include "loop-kernel.h"
#include "util.h"

#define MiB (1024ULL * 1024ULL)

/* ---- ioctl interposition ---- */

static bool fake_no_loop_configure;
static bool fake_set_status_fails;
static unsigned n_loop_configure, n_loop_set_fd, n_loop_clr_fd;
/* What the kernel was handed by the last LOOP_CONFIGURE/LOOP_SET_FD. */
static int last_backing_fd = -1, last_backing_flags = -1;

int ioctl(int fd, unsigned long request, ...) {
        va_list ap;
        void *arg;

        va_start(ap, request);
        arg = va_arg(ap, void *);
        va_end(ap);

        if (request == LOOP_CONFIGURE || request == LOOP_SET_FD) {
                last_backing_fd = request == LOOP_CONFIGURE ? (int) ((struct loop_config *) arg)->fd
                                                            : (int) (unsigned long) arg;
                last_backing_flags = fcntl(last_backing_fd, F_GETFL);
        }
        if (request == LOOP_CONFIGURE) {
                n_loop_configure++;
                if (fake_no_loop_configure) {
                        errno = ENOTTY;
                        return -1;
                }
        }
        if (request == LOOP_SET_FD)
                n_loop_set_fd++;
        if (request == LOOP_CLR_FD)
                n_loop_clr_fd++;
        if (request == LOOP_SET_STATUS64 && fake_set_status_fails) {
                errno = EIO;
                return -1;
        }

        return (int) syscall(SYS_ioctl, fd, request, arg);
}

/* ---- fixture ---- */

static char *real_dir;  /* on a file system that does O_DIRECT, or NULL */
static char *any_dir;   /* where images go when the fs does not matter */
static char *tmpfs_dir; /* on tmpfs, or NULL */
static bool udev_running;

typedef struct Attached {
        char name[16];
        uint64_t diskseq;
} Attached;

typedef struct Fixture {
        Attached devices[16];
        size_t n_devices;
        int fds[16];
        size_t n_fds;
} Fixture;

static uint64_t now_usec(void) {
        struct timespec ts;

        assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

static void sleep_ms(unsigned ms) {
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L};

        (void) nanosleep(&ts, NULL);
}

static bool fs_is_tmpfs(const char *path) {
        struct statfs sfs;

        return statfs(path, &sfs) >= 0 && sfs.f_type == TMPFS_MAGIC;
}

/* Whether a file in dir can be opened with O_DIRECT. */
static bool fs_does_odirect(const char *dir) {
        _cleanup_free_ char *p = NULL;
        int fd;

        if (asprintf(&p, "%s/odirect-probe", dir) < 0)
                return false;
        fd = open(p, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
        (void) unlink(p);
        if (fd < 0)
                return false;
        (void) close(fd);
        return true;
}

static char *make_tmpdir(const char *parent) {
        _cleanup_free_ char *t = NULL;

        if (asprintf(&t, "%s/loopmgr-test-kernel-XXXXXX", parent) < 0)
                return NULL;
        if (!mkdtemp(t))
                return NULL;
        return TAKE_PTR(t);
}

static void rm_rf(const char *dir) {
        char cmd[512];

        if (!dir)
                return;
        (void) snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", dir);
        (void) system(cmd);
}

static int group_setup(void **state) {
        const char *candidates[] = {"/var/tmp", "/tmp", "/root"};

        for (size_t i = 0; i < ELEMENTSOF(candidates) && !real_dir; i++) {
                if (fs_is_tmpfs(candidates[i]))
                        continue;
                real_dir = make_tmpdir(candidates[i]);
                if (real_dir && !fs_does_odirect(real_dir)) {
                        rm_rf(real_dir);
                        free(real_dir);
                        real_dir = NULL;
                }
        }
        any_dir = real_dir ? strdup(real_dir) : make_tmpdir("/tmp");
        if (!any_dir)
                return -1;
        if (!real_dir)
                fprintf(stderr, "# no O_DIRECT-capable file system found: direct-io=on checks "
                                "on real file systems are skipped\n");

        if (fs_is_tmpfs("/dev/shm"))
                tmpfs_dir = make_tmpdir("/dev/shm");

        udev_running = system("udevadm control --ping >/dev/null 2>&1") == 0;
        fprintf(stderr, "# images in %s, tmpfs %s, udev %s\n", any_dir, tmpfs_dir ?: "(none)",
                udev_running ? "running" : "not running");
        return 0;
}

static int group_teardown(void **state) {
        if (real_dir && !streq_ptr(real_dir, any_dir))
                rm_rf(real_dir);
        rm_rf(any_dir);
        rm_rf(tmpfs_dir);
        free(real_dir);
        free(any_dir);
        free(tmpfs_dir);
        return 0;
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));

        if (!f)
                return -1;
        fake_no_loop_configure = fake_set_status_fails = false;
        *state = f;
        return 0;
}

static void track_device(Fixture *f, const LoopStatus *s) {
        assert_true(f->n_devices < ELEMENTSOF(f->devices));
        (void) snprintf(f->devices[f->n_devices].name, sizeof(f->devices[0].name), "%s", s->name);
        f->devices[f->n_devices].diskseq = s->diskseq;
        f->n_devices++;
}

static int track_fd(Fixture *f, int fd) {
        assert_true(fd >= 0);
        assert_true(f->n_fds < ELEMENTSOF(f->fds));
        f->fds[f->n_fds++] = fd;
        return fd;
}

static void untrack_fd(Fixture *f, int fd) {
        for (size_t i = 0; i < f->n_fds; i++)
                if (f->fds[i] == fd)
                        f->fds[i] = -EBADF;
        (void) close(fd);
}

/* Waits until <name> no longer carries diskseq; returns whether it happened in time. */
static bool wait_gone(const char *name, uint64_t diskseq, unsigned timeout_ms) {
        for (unsigned waited = 0;; waited += 10) {
                LoopStatus s = {};
                bool gone;
                int r;

                r = loop_read_sysfs(NULL, name, &s);
                gone = r == -ENOENT || (r >= 0 && (!s.bound || s.diskseq != diskseq));
                loop_status_done(&s);
                if (gone)
                        return true;
                if (waited >= timeout_ms)
                        return false;
                sleep_ms(10);
        }
}

static void detach_and_wait(const char *name, uint64_t diskseq) {
        int r;

        r = loop_detach(NULL, name, diskseq);
        if (r == 0 && !wait_gone(name, diskseq, 5000))
                fprintf(stderr, "# WARNING: %s (diskseq %" PRIu64 ") still bound after detach\n",
                        name, diskseq);
        else if (r < 0 && r != -ESTALE)
                fprintf(stderr, "# WARNING: detaching %s failed: %s\n", name, strerror(-r));
}

static bool backed_by_dir(const LoopStatus *s, const char *dir) {
        size_t l;

        if (!dir || !s->bound || !s->backing_file)
                return false;
        l = strlen(dir);
        return strncmp(s->backing_file, dir, l) == 0 && s->backing_file[l] == '/';
}

/* Number of devices whose sysfs backing_file is exactly path. */
static size_t count_devices_backed_by(const char *path) {
        _cleanup_strv_free_ char **names = NULL;
        size_t n = 0;

        assert_int_equal(loop_list(NULL, &names), 0);
        for (char **i = names; *i; i++) {
                LoopStatus s = {};

                if (loop_read_sysfs(NULL, *i, &s) < 0)
                        continue;
                n += s.bound && streq_ptr(s.backing_file, path);
                loop_status_done(&s);
        }
        return n;
}

/* Number of devices bound to files in our directories. */
static size_t count_our_devices(void) {
        _cleanup_strv_free_ char **names = NULL;
        size_t n = 0;

        assert_int_equal(loop_list(NULL, &names), 0);
        for (char **i = names; *i; i++) {
                LoopStatus s = {};

                if (loop_read_sysfs(NULL, *i, &s) < 0)
                        continue;
                if (backed_by_dir(&s, any_dir) || backed_by_dir(&s, real_dir) ||
                    backed_by_dir(&s, tmpfs_dir))
                        n++;
                loop_status_done(&s);
        }
        return n;
}

static int teardown(void **state) {
        Fixture *f = *state;
        _cleanup_strv_free_ char **names = NULL;

        fake_no_loop_configure = fake_set_status_fails = false;

        for (size_t i = 0; i < f->n_fds; i++)
                if (f->fds[i] >= 0)
                        (void) close(f->fds[i]);

        /* Devices stacked on one of ours that we did not record (a failed attach that left
         * one behind): only while ours still carries our diskseq, so that a recycled loopN of
         * somebody else is never mistaken for ours. */
        for (size_t i = f->n_devices; i > 0; i--) {
                _cleanup_strv_free_ char **all = NULL;
                _cleanup_free_ char *node = NULL;
                LoopStatus lower = {};
                bool ours;

                if (loop_read_sysfs(NULL, f->devices[i - 1].name, &lower) < 0)
                        continue;
                ours = lower.bound && lower.diskseq == f->devices[i - 1].diskseq;
                loop_status_done(&lower);
                if (!ours || asprintf(&node, "/dev/%s", f->devices[i - 1].name) < 0 ||
                    loop_list(NULL, &all) < 0)
                        continue;

                for (char **j = all; *j; j++) {
                        LoopStatus s = {};
                        bool tracked = false;

                        if (loop_read_sysfs(NULL, *j, &s) < 0)
                                continue;
                        for (size_t k = 0; k < f->n_devices; k++)
                                tracked = tracked || (streq(f->devices[k].name, s.name) &&
                                                      f->devices[k].diskseq == s.diskseq);
                        if (s.bound && !tracked && streq_ptr(s.backing_file, node)) {
                                fprintf(stderr, "# cleaning up left-over %s (%s)\n", s.name,
                                        s.backing_file);
                                detach_and_wait(s.name, s.diskseq);
                        }
                        loop_status_done(&s);
                }
        }

        /* Reverse order: devices stacked on our devices first. */
        for (size_t i = f->n_devices; i > 0; i--)
                detach_and_wait(f->devices[i - 1].name, f->devices[i - 1].diskseq);

        /* Safety net, see the top of the file. */
        if (loop_list(NULL, &names) >= 0)
                for (char **i = names; *i; i++) {
                        LoopStatus s = {};

                        if (loop_read_sysfs(NULL, *i, &s) < 0)
                                continue;
                        if (backed_by_dir(&s, any_dir) || backed_by_dir(&s, real_dir) ||
                            backed_by_dir(&s, tmpfs_dir)) {
                                fprintf(stderr, "# cleaning up left-over %s (%s)\n", s.name,
                                        s.backing_file);
                                detach_and_wait(s.name, s.diskseq);
                        }
                        loop_status_done(&s);
                }

        free(f);
        return 0;
}

/* Creates <dir>/<name> of the given size; returns the path. */
static char *make_image(const char *dir, const char *name, uint64_t size) {
        char *p;
        int fd;

        assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
        fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        assert_int_equal(close(fd), 0);
        return p;
}

static void wait_udev(const LoopStatus *s) {
        if (!udev_running)
                return;
        for (unsigned i = 0; i < 1000; i++) {
                if (loop_udev_link_ready(NULL, s->name, s->diskseq) > 0)
                        break;
                sleep_ms(10);
        }
        assert_int_equal(loop_udev_link_ready(NULL, s->name, s->diskseq), 1);
        /* Whatever else udev queued for the device (a partition scan's events). */
        (void) system("udevadm settle --timeout=10");
}

static int attach(Fixture *f, int fd, const LoopConfig *c, LoopStatus *ret) {
        int r;

        r = loop_attach(NULL, fd, c, ret);
        if (r >= 0)
                track_device(f, ret);
        return r;
}

static void check_against_sysfs(const LoopStatus *s) {
        LoopStatus again = {};

        assert_int_equal(loop_read_sysfs(NULL, s->name, &again), 0);
        assert_true(again.bound);
        assert_true(again.diskseq == s->diskseq);
        assert_true(again.devnum == s->devnum);
        assert_true(again.size == s->size);
        assert_true(again.offset == s->offset);
        assert_true(again.size_limit == s->size_limit);
        assert_int_equal(again.sector_size, s->sector_size);
        assert_int_equal(again.read_only, s->read_only);
        assert_int_equal(again.direct_io, s->direct_io);
        assert_int_equal(again.autoclear, s->autoclear);
        assert_int_equal(again.partscan, s->partscan);
        assert_string_equal(again.backing_file, s->backing_file);
        /* loop_attach() reads its result from the device, not sysfs: the ids must agree too. */
        assert_int_equal(loop_read_ids(NULL, &again), 0);
        assert_true(again.backing_device == s->backing_device);
        assert_true(again.backing_inode == s->backing_inode);
        assert_true(again.backing_rdevice == s->backing_rdevice);
        loop_status_done(&again);
}

static void check_node(const LoopStatus *s) {
        _cleanup_free_ char *node = NULL;
        struct stat st;

        assert_true(asprintf(&node, "/dev/%s", s->name) > 0);
        assert_int_equal(stat(node, &st), 0);
        assert_true(S_ISBLK(st.st_mode));
        assert_true(st.st_rdev == s->devnum);
        assert_int_equal(major(s->devnum), 7);
}

/* ---- tests ---- */

static void test_attach_basic(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "basic.img", 16 * MiB);
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {};
        struct stat st;
        uint64_t t0, t1, t2;
        int r;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);

        t0 = now_usec();
        assert_int_equal(attach(f, fd, &c, &s), 0);
        t1 = now_usec();

        assert_true(s.bound);
        assert_true(s.diskseq != 0);
        assert_int_equal(strncmp(s.name, "loop", 4), 0);
        check_node(&s);
        assert_string_equal(s.backing_file, img);
        /* The ids are the kernel's lo_device/lo_inode: they must equal stat() of the file. */
        assert_true(s.backing_device == st.st_dev);
        assert_true(s.backing_inode == st.st_ino);
        assert_true(s.backing_rdevice == 0);
        assert_true(s.size == 16 * MiB);
        assert_true(s.offset == 0);
        assert_true(s.size_limit == 0);
        assert_int_equal(s.sector_size, 512);
        assert_false(s.read_only);
        assert_false(s.autoclear);
        assert_false(s.partscan);
        assert_false(s.direct_io);
        check_against_sysfs(&s);

        /* loop_read_ids on its own gives the same */
        s.backing_device = 0;
        s.backing_inode = 0;
        assert_int_equal(loop_read_ids(NULL, &s), 0);
        assert_true(s.backing_device == st.st_dev);
        assert_true(s.backing_inode == st.st_ino);
        s.diskseq++;
        assert_int_equal(loop_read_ids(NULL, &s), -ESTALE);
        s.diskseq--;

        /* The caller's fd is not modified. */
        assert_int_equal(fcntl(fd, F_GETFL) & (O_DIRECT | O_ACCMODE), O_RDWR);

        /* Timing without waiting for udev (it would add its probe). */
        t2 = now_usec();
        r = loop_detach(NULL, s.name, s.diskseq);
        fprintf(stderr, "# attach %.2f ms, detach %.2f ms (returned %d, udev %s)\n",
                (t1 - t0) / 1000.0, (now_usec() - t2) / 1000.0, r,
                udev_running ? "running" : "not running");
        assert_true(r == 0 || r == 1);
        assert_true(wait_gone(s.name, s.diskseq, 5000));
        loop_status_done(&s);
}

static void test_attach_timing(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "timing.img", 16 * MiB);
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_AUTO};
        uint64_t attach_total = 0, detach_total = 0, attach_max = 0, detach_max = 0;
        const unsigned n = 10;
        unsigned immediate = 0;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);

        for (unsigned i = 0; i < n; i++) {
                LoopStatus s = {};
                uint64_t t0, t1, t2;
                int r;

                t0 = now_usec();
                assert_int_equal(attach(f, fd, &c, &s), 0);
                t1 = now_usec();
                r = loop_detach(NULL, s.name, s.diskseq);
                t2 = now_usec();
                assert_true(r == 0 || r == 1);
                immediate += r == 1;
                assert_true(wait_gone(s.name, s.diskseq, 5000));

                attach_total += t1 - t0;
                detach_total += t2 - t1;
                attach_max = t1 - t0 > attach_max ? t1 - t0 : attach_max;
                detach_max = t2 - t1 > detach_max ? t2 - t1 : detach_max;
                loop_status_done(&s);
        }

        fprintf(stderr,
                "# %u x attach (direct-io auto) + immediate detach: attach avg %.2f ms max "
                "%.2f ms, detach avg %.2f ms max %.2f ms, %u/%u detached synchronously\n",
                n, attach_total / 1000.0 / n, attach_max / 1000.0, detach_total / 1000.0 / n,
                detach_max / 1000.0, immediate, n);
}

static void test_offset_size_limit(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "offset.img", 16 * MiB);
        _cleanup_close_ int fd = -EBADF;
        int dev;
        _cleanup_free_ char *node = NULL;
        LoopConfig c = {.offset = 1 * MiB, .size_limit = 4 * MiB, .direct_io = DIRECT_IO_OFF};
        LoopStatus s = {}, s2 = {};
        char buf[512], pattern[512];

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        memset(pattern, 0xa5, sizeof(pattern));
        memcpy(pattern, "loopmgr offset test", 19);
        assert_int_equal(pwrite(fd, pattern, sizeof(pattern), 1 * MiB), sizeof(pattern));
        assert_int_equal(fsync(fd), 0);

        assert_int_equal(attach(f, fd, &c, &s), 0);
        assert_true(s.offset == 1 * MiB);
        assert_true(s.size_limit == 4 * MiB);
        assert_true(s.size == 4 * MiB);
        check_against_sysfs(&s);

        /* Sector 0 of the device is byte 1 MiB of the file. */
        assert_true(asprintf(&node, "/dev/%s", s.name) > 0);
        dev = track_fd(f, open(node, O_RDONLY | O_CLOEXEC));
        assert_int_equal(pread(dev, buf, sizeof(buf), 0), sizeof(buf));
        assert_memory_equal(buf, pattern, sizeof(buf));
        untrack_fd(f, dev);

        /* offset only: to the end */
        c.size_limit = 0;
        c.offset = 3 * MiB;
        assert_int_equal(attach(f, fd, &c, &s2), 0);
        assert_true(s2.size == 13 * MiB);
        assert_true(s2.offset == 3 * MiB);
        assert_true(s2.size_limit == 0);
        assert_string_not_equal(s.name, s2.name);

        loop_status_done(&s);
        loop_status_done(&s2);
}

static void test_bad_range_creates_nothing(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "range.img", 4 * MiB);
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.offset = 4 * MiB, .direct_io = DIRECT_IO_OFF};
        LoopStatus s = {};

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), -EINVAL);
        c.offset = 0;
        c.size_limit = 8 * MiB;
        assert_int_equal(attach(f, fd, &c, &s), -EINVAL);
        c.size_limit = 0;
        c.offset = 4096 + 1;
        assert_int_equal(attach(f, fd, &c, &s), -EINVAL);
        assert_int_equal(count_our_devices(), 0);
}

static void test_read_only_fd(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "ro.img", 8 * MiB);
        _cleanup_free_ char *node = NULL;
        _cleanup_close_ int fd = -EBADF, rw = -EBADF;
        LoopConfig c = {.read_only = false, .direct_io = DIRECT_IO_AUTO};
        LoopStatus s = {}, s2 = {};
        int dev, r;

        fd = open(img, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        assert_true(s.read_only);
        check_against_sysfs(&s);

        /* Writes are refused, whether already at open or at write time. */
        assert_true(asprintf(&node, "/dev/%s", s.name) > 0);
        dev = open(node, O_RDWR | O_CLOEXEC);
        if (dev < 0)
                assert_true(errno == EROFS || errno == EACCES);
        else {
                char buf[512] = {};
                int ro = 0;

                track_fd(f, dev);
                assert_int_equal(ioctl(dev, BLKROGET, &ro), 0);
                assert_int_equal(ro, 1);
                assert_true(pwrite(dev, buf, sizeof(buf), 0) < 0);
                assert_true(errno == EPERM || errno == EROFS);
                untrack_fd(f, dev);
        }

        /* read-only requested on a writable fd */
        rw = open(img, O_RDWR | O_CLOEXEC);
        assert_true(rw >= 0);
        c.read_only = true;
        assert_int_equal(attach(f, rw, &c, &s2), 0);
        assert_true(s2.read_only);

        /* Read-only devices detach like any other. */
        r = loop_detach(NULL, s2.name, s2.diskseq);
        assert_true(r == 0 || r == 1);
        assert_true(wait_gone(s2.name, s2.diskseq, 5000));

        loop_status_done(&s);
        loop_status_done(&s2);
}

static void test_sector_size_4096(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "4k.img", 8 * MiB);
        _cleanup_free_ char *node = NULL;
        _cleanup_close_ int fd = -EBADF;
        int dev;
        LoopConfig c = {.sector_size = 4096, .direct_io = DIRECT_IO_AUTO};
        LoopStatus s = {};
        int ssz = 0;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        assert_int_equal(s.sector_size, 4096);
        assert_true(s.size == 8 * MiB);
        check_against_sysfs(&s);

        assert_true(asprintf(&node, "/dev/%s", s.name) > 0);
        dev = track_fd(f, open(node, O_RDONLY | O_CLOEXEC));
        assert_int_equal(ioctl(dev, BLKSSZGET, &ssz), 0);
        assert_int_equal(ssz, 4096);
        loop_status_done(&s);
}

static void test_direct_io_real_fs(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = NULL;
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_ON};
        LoopStatus on = {}, autom = {}, off = {};

        if (!real_dir) {
                fprintf(stderr, "# no O_DIRECT-capable file system, skipping\n");
                skip();
        }

        img = make_image(real_dir, "dio.img", 8 * MiB);
        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);

        assert_int_equal(attach(f, fd, &c, &on), 0);
        assert_true(on.direct_io);
        /* A file description of our own, opened with O_DIRECT, the caller's access mode. */
        assert_true(last_backing_fd != fd);
        assert_int_equal(last_backing_flags & (O_DIRECT | O_ACCMODE), O_DIRECT | O_RDWR);
        /* default sector size with direct I/O: the file system's alignment, at least 512 */
        assert_true(on.sector_size >= 512 && on.sector_size <= 4096);
        check_against_sysfs(&on);

        c.direct_io = DIRECT_IO_AUTO;
        assert_int_equal(attach(f, fd, &c, &autom), 0);
        assert_true(autom.direct_io);

        c.direct_io = DIRECT_IO_OFF;
        assert_int_equal(attach(f, fd, &c, &off), 0);
        assert_false(off.direct_io);
        assert_int_equal(last_backing_flags & O_DIRECT, 0);
        assert_int_equal(off.sector_size, 512);

        /* The caller's file description never gets O_DIRECT. */
        assert_int_equal(fcntl(fd, F_GETFL) & O_DIRECT, 0);

        loop_status_done(&on);
        loop_status_done(&autom);
        loop_status_done(&off);
}

static void test_direct_io_caller_odirect_off(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = NULL;
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {};

        if (!real_dir)
                skip();

        /* An O_DIRECT backing fd makes the kernel enable direct I/O by itself; off means off. */
        img = make_image(real_dir, "odirect.img", 8 * MiB);
        fd = open(img, O_RDWR | O_DIRECT | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        assert_false(s.direct_io);
        /* The kernel got a buffered file description, the caller's keeps O_DIRECT. */
        assert_true(last_backing_fd != fd);
        assert_int_equal(last_backing_flags & (O_DIRECT | O_ACCMODE), O_RDWR);
        assert_true(fcntl(fd, F_GETFL) & O_DIRECT);
        loop_status_done(&s);
}

static void test_direct_io_tmpfs(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = NULL;
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_ON};
        LoopStatus s = {}, s2 = {};
        int r;

        if (!tmpfs_dir) {
                fprintf(stderr, "# no tmpfs at /dev/shm, skipping\n");
                skip();
        }

        img = make_image(tmpfs_dir, "tmpfs.img", 8 * MiB);
        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);

        /* tmpfs refused O_DIRECT before 6.6 ("tmpfs: trivial support for direct IO"); since
         * then loop does direct I/O on it. Either way: on is honoured or refused cleanly. */
        r = attach(f, fd, &c, &s);
        fprintf(stderr, "# direct-io=on on tmpfs: %s\n", r >= 0 ? "honoured" : strerror(-r));
        if (r >= 0)
                assert_true(s.direct_io);
        else {
                assert_true(r == -EOPNOTSUPP || r == -EINVAL);
                assert_int_equal(count_our_devices(), 0);
        }

        /* auto always works */
        c.direct_io = DIRECT_IO_AUTO;
        assert_int_equal(attach(f, fd, &c, &s2), 0);
        assert_true(s2.bound);

        loop_status_done(&s);
        loop_status_done(&s2);
}

/* Loop over a 4096-byte-sector loop device: the kernel refuses direct I/O for an upper device
 * with 512-byte sectors (loop_update_dio()), which makes direct-io=on fail after
 * LOOP_CONFIGURE succeeded: the device must be cleared again. */
static void test_direct_io_on_refused_over_4k(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "lower.img", 8 * MiB);
        _cleanup_free_ char *node = NULL;
        _cleanup_close_ int fd = -EBADF;
        int lower_fd;
        LoopConfig c = {.sector_size = 4096, .direct_io = DIRECT_IO_OFF};
        LoopStatus lower = {}, upper = {}, upper2 = {};
        struct stat st;
        unsigned clr_before;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &lower), 0);
        assert_int_equal(lower.sector_size, 4096);

        assert_true(asprintf(&node, "/dev/%s", lower.name) > 0);
        lower_fd = track_fd(f, open(node, O_RDWR | O_CLOEXEC));
        assert_int_equal(fstat(lower_fd, &st), 0);

        c.sector_size = 512;
        c.direct_io = DIRECT_IO_ON;
        clr_before = n_loop_clr_fd;
        assert_int_equal(count_devices_backed_by(node), 0);
        assert_int_equal(attach(f, lower_fd, &c, &upper), -EOPNOTSUPP);
        /* It was configured (that is how we learn the kernel's verdict) and cleared again. */
        assert_true(n_loop_clr_fd > clr_before);
        for (unsigned i = 0; i < 500 && count_devices_backed_by(node) > 0; i++)
                sleep_ms(10);
        assert_int_equal(count_devices_backed_by(node), 0);

        /* auto falls back to buffered I/O */
        c.direct_io = DIRECT_IO_AUTO;
        assert_int_equal(attach(f, lower_fd, &c, &upper), 0);
        assert_false(upper.direct_io);
        assert_int_equal(upper.sector_size, 512);
        /* Block device backing: lo_rdevice names it, lo_device/lo_inode are the node's. */
        assert_true(upper.backing_rdevice == lower.devnum);
        assert_true(upper.backing_rdevice == st.st_rdev);
        assert_true(upper.backing_device == st.st_dev);
        assert_true(upper.backing_inode == st.st_ino);
        assert_string_equal(upper.backing_file, node);

        /* Default sector size over a block device is its logical block size. */
        c.sector_size = 0;
        c.direct_io = DIRECT_IO_OFF;
        assert_int_equal(attach(f, lower_fd, &c, &upper2), 0);
        assert_int_equal(upper2.sector_size, 4096);

        loop_status_done(&lower);
        loop_status_done(&upper);
        loop_status_done(&upper2);
}

static void test_detach_returns_1(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "detach.img", 8 * MiB);
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {};

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        wait_udev(&s);

        assert_int_equal(loop_detach(NULL, s.name, s.diskseq), 1);
        assert_true(wait_gone(s.name, s.diskseq, 0));
        /* Once gone, the same request is stale. */
        assert_int_equal(loop_detach(NULL, s.name, s.diskseq), -ESTALE);
        loop_status_done(&s);
}

static void test_detach_held_open(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "held.img", 8 * MiB);
        _cleanup_free_ char *node = NULL;
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {}, now = {};
        int holder;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        wait_udev(&s);

        assert_true(asprintf(&node, "/dev/%s", s.name) > 0);
        holder = track_fd(f, open(node, O_RDONLY | O_CLOEXEC));

        /* 6.11+: LOOP_CLR_FD only requests the teardown while somebody holds the device. */
        assert_int_equal(loop_detach(NULL, s.name, s.diskseq), 0);
        assert_int_equal(loop_read_sysfs(NULL, s.name, &now), 0);
        assert_true(now.bound);
        assert_true(now.diskseq == s.diskseq);
        /* the pending clear shows as autoclear */
        assert_true(now.autoclear);
        loop_status_done(&now);

        /* Requesting again is harmless and still pending. */
        assert_int_equal(loop_detach(NULL, s.name, s.diskseq), 0);

        untrack_fd(f, holder);
        assert_true(wait_gone(s.name, s.diskseq, 5000));
        loop_status_done(&s);
}

/* loop_detach_nowait() never waits for a flock holder (udev's probe): -EWOULDBLOCK and nothing
 * done while need_lock, the clear requested without the lock otherwise; and it opens the
 * device read-only, so that its close raises no IN_CLOSE_WRITE re-probe. */
static void test_detach_nowait_locked(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "nowait.img", 8 * MiB);
        _cleanup_free_ char *node = NULL;
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {}, now = {};
        uint64_t t;
        int holder;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        wait_udev(&s);

        assert_true(asprintf(&node, "/dev/%s", s.name) > 0);
        holder = track_fd(f, open(node, O_RDONLY | O_CLOEXEC));
        assert_int_equal(flock(holder, LOCK_SH), 0);

        t = now_usec();
        assert_int_equal(loop_detach_nowait(NULL, s.name, s.diskseq, true), -EWOULDBLOCK);
        /* No sleeping inside: well under the old 100 ms poll. */
        assert_true(now_usec() - t < 20000);
        assert_int_equal(loop_read_sysfs(NULL, s.name, &now), 0);
        assert_true(now.bound);
        assert_false(now.autoclear); /* nothing requested */
        loop_status_done(&now);

        /* Without the lock: requested, deferred to the holder's close. */
        assert_int_equal(loop_detach_nowait(NULL, s.name, s.diskseq, false), 0);
        assert_int_equal(loop_read_sysfs(NULL, s.name, &now), 0);
        assert_true(now.bound);
        assert_true(now.autoclear);
        loop_status_done(&now);

        untrack_fd(f, holder);
        assert_true(wait_gone(s.name, s.diskseq, 5000));
        assert_int_equal(loop_detach_nowait(NULL, s.name, s.diskseq, true), -ESTALE);
        loop_status_done(&s);
}

static void test_detach_nowait_unlocked(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "nowait1.img", 8 * MiB);
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {};
        int r;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        wait_udev(&s);

        /* A read-only open suffices for BLKPG, LOOP_CLR_FD (root): gone at once, once udev's
         * re-probe after the attach (close-after-write) let go of its lock. */
        for (unsigned i = 0;; i++) {
                r = loop_detach_nowait(NULL, s.name, s.diskseq, true);
                if (r != -EWOULDBLOCK || i >= 1000)
                        break;
                usleep(1000);
        }
        assert_int_equal(r, 1);
        assert_true(wait_gone(s.name, s.diskseq, 0));
        loop_status_done(&s);
}

static void test_detach_wrong_diskseq(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "stale.img", 8 * MiB);
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {}, now = {};

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);

        assert_int_equal(loop_detach(NULL, s.name, s.diskseq - 1), -ESTALE);
        assert_int_equal(loop_detach(NULL, s.name, s.diskseq + 1), -ESTALE);
        assert_int_equal(loop_set_capacity(NULL, s.name, s.diskseq + 1), -ESTALE);
        assert_int_equal(loop_set_autoclear(NULL, s.name, s.diskseq + 1, true), -ESTALE);

        /* untouched */
        assert_int_equal(loop_read_sysfs(NULL, s.name, &now), 0);
        assert_true(now.bound);
        assert_true(now.diskseq == s.diskseq);
        assert_false(now.autoclear);
        loop_status_done(&now);
        loop_status_done(&s);
}

static void test_set_capacity(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "grow.img", 8 * MiB);
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {}, now = {};

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        assert_true(s.size == 8 * MiB);

        assert_int_equal(ftruncate(fd, 24 * MiB), 0);
        assert_int_equal(loop_read_sysfs(NULL, s.name, &now), 0);
        assert_true(now.size == 8 * MiB);
        loop_status_done(&now);

        assert_int_equal(loop_set_capacity(NULL, s.name, s.diskseq), 0);
        assert_int_equal(loop_read_sysfs(NULL, s.name, &now), 0);
        assert_true(now.size == 24 * MiB);
        /* same binding */
        assert_true(now.diskseq == s.diskseq);
        loop_status_done(&now);
        loop_status_done(&s);
}

static void test_set_autoclear(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "autoclear.img", 8 * MiB);
        _cleanup_free_ char *node = NULL;
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {}, now = {};
        int holder;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        assert_false(s.autoclear);

        assert_true(asprintf(&node, "/dev/%s", s.name) > 0);
        holder = track_fd(f, open(node, O_RDONLY | O_CLOEXEC));

        assert_int_equal(loop_set_autoclear(NULL, s.name, s.diskseq, true), 0);
        assert_int_equal(loop_read_sysfs(NULL, s.name, &now), 0);
        assert_true(now.autoclear);
        loop_status_done(&now);

        assert_int_equal(loop_set_autoclear(NULL, s.name, s.diskseq, false), 0);
        assert_int_equal(loop_read_sysfs(NULL, s.name, &now), 0);
        assert_false(now.autoclear);
        assert_true(now.bound);
        loop_status_done(&now);

        /* With autoclear on, the last close tears the binding down. */
        assert_int_equal(loop_set_autoclear(NULL, s.name, s.diskseq, true), 0);
        assert_int_equal(loop_read_sysfs(NULL, s.name, &now), 0);
        assert_true(now.bound);
        loop_status_done(&now);
        untrack_fd(f, holder);
        assert_true(wait_gone(s.name, s.diskseq, 5000));
        loop_status_done(&s);
}

static void test_attach_autoclear(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "autoclear2.img", 8 * MiB);
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.autoclear = true, .direct_io = DIRECT_IO_OFF};
        LoopStatus s = {};

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        /* Read back while attach still held the device. */
        assert_true(s.bound);
        assert_true(s.autoclear);
        assert_true(s.backing_inode != 0);
        /* Nobody holds it now: the kernel clears it (once udev let go of it). */
        assert_true(wait_gone(s.name, s.diskseq, 5000));
        loop_status_done(&s);
}

static void test_partscan(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "partscan.img", 8 * MiB);
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.partscan = true, .direct_io = DIRECT_IO_OFF};
        LoopStatus s = {};

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        assert_true(s.partscan);
        loop_status_done(&s);
}

static bool partition_exists(const char *name, unsigned pno) {
        _cleanup_free_ char *p = NULL;

        assert_true(asprintf(&p, "/sys/block/%s/%sp%u", name, name, pno) > 0);
        return access(p, F_OK) >= 0;
}

static void test_detach_deletes_partitions(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "parts.img", 16 * MiB);
        _cleanup_free_ char *node = NULL;
        _cleanup_close_ int fd = -EBADF;
        int dev;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {};
        int r;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);

        /* What addpart(8) does. Without partscan the kernel keeps such partitions across
         * LOOP_CLR_FD: the next binding of this loopN would inherit them. */
        assert_true(asprintf(&node, "/dev/%s", s.name) > 0);
        dev = track_fd(f, open(node, O_RDWR | O_CLOEXEC));
        for (unsigned i = 1; i <= 2; i++) {
                struct blkpg_partition p = {
                        .start = (long long) (i * 4 * MiB),
                        .length = (long long) (2 * MiB),
                        .pno = (int) i,
                };
                struct blkpg_ioctl_arg a = {
                        .op = BLKPG_ADD_PARTITION,
                        .datalen = sizeof(p),
                        .data = &p,
                };

                assert_int_equal(ioctl(dev, BLKPG, &a), 0);
        }
        untrack_fd(f, dev);
        assert_true(partition_exists(s.name, 1));
        assert_true(partition_exists(s.name, 2));
        wait_udev(&s);

        r = loop_detach(NULL, s.name, s.diskseq);
        assert_true(r == 1 || (r == 0 && wait_gone(s.name, s.diskseq, 5000)));
        assert_false(partition_exists(s.name, 1));
        assert_false(partition_exists(s.name, 2));
        loop_status_done(&s);
}

static void test_deleted_backing(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "deleted.img", 8 * MiB);
        _cleanup_free_ char *expect = NULL;
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {}, now = {};
        struct stat st;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        assert_int_equal(unlink(img), 0);

        assert_int_equal(loop_read_sysfs(NULL, s.name, &now), 0);
        assert_true(asprintf(&expect, "%s (deleted)", img) > 0);
        assert_string_equal(now.backing_file, expect);
        assert_int_equal(loop_read_ids(NULL, &now), 0);
        assert_true(now.backing_inode == st.st_ino);
        assert_true(now.backing_device == st.st_dev);
        loop_status_done(&now);
        loop_status_done(&s);
}

/* Pre-5.8 kernels: no LOOP_CONFIGURE. */
static void test_legacy_path(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(real_dir ?: any_dir, "legacy.img", 16 * MiB);
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {
                .offset = 2 * MiB,
                .size_limit = 8 * MiB,
                .sector_size = 4096,
                .read_only = true,
                .partscan = true,
                .direct_io = real_dir ? DIRECT_IO_ON : DIRECT_IO_OFF,
        };
        LoopStatus s = {};
        unsigned set_fd_before = n_loop_set_fd;
        struct stat st;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);

        fake_no_loop_configure = true;
        assert_int_equal(attach(f, fd, &c, &s), 0);
        fake_no_loop_configure = false;
        assert_true(n_loop_set_fd > set_fd_before);

        assert_true(s.offset == 2 * MiB);
        assert_true(s.size_limit == 8 * MiB);
        assert_true(s.size == 8 * MiB);
        assert_int_equal(s.sector_size, 4096);
        assert_true(s.read_only);
        assert_true(s.partscan);
        assert_int_equal(s.direct_io, real_dir != NULL);
        assert_true(s.backing_inode == st.st_ino);
        check_against_sysfs(&s);
        loop_status_done(&s);
}

/* A failure after LOOP_CONFIGURE succeeded (here: enabling partscan) must clear the device. */
static void test_failure_after_configure_clears(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "halfway.img", 8 * MiB);
        _cleanup_close_ int fd = -EBADF;
        LoopConfig c = {.partscan = true, .direct_io = DIRECT_IO_OFF};
        LoopStatus s = {};
        unsigned configure_before = n_loop_configure, clr_before = n_loop_clr_fd;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);

        fake_set_status_fails = true;
        assert_int_equal(attach(f, fd, &c, &s), -EIO);
        fake_set_status_fails = false;
        assert_true(n_loop_configure > configure_before);
        assert_true(n_loop_clr_fd > clr_before);

        /* The kernel may still be running the teardown (our fds were the last openers, or
         * udev's are); it must finish without anybody detaching. */
        for (unsigned i = 0; i < 500 && count_our_devices() > 0; i++)
                sleep_ms(10);
        assert_int_equal(count_our_devices(), 0);
}

static void test_loop_over_loop(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "cycle.img", 8 * MiB);
        _cleanup_free_ char *node = NULL;
        _cleanup_close_ int fd = -EBADF;
        int self;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {}, upper = {};

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);

        /* Stacking on a loop device works and the upper device names the lower one. */
        assert_true(asprintf(&node, "/dev/%s", s.name) > 0);
        self = track_fd(f, open(node, O_RDWR | O_CLOEXEC));
        assert_int_equal(attach(f, self, &c, &upper), 0);
        assert_true(upper.backing_rdevice == s.devnum);
        assert_true(upper.size == s.size);
        loop_status_done(&s);
        loop_status_done(&upper);
}

/* The device LOOP_CTL_GET_FREE names is locked (udev probing it after a teardown, here: us with
 * LOCK_SH like udev): the attach takes another device at once, it neither sleeps until the
 * lock goes nor fails. */
static void test_locked_free_device_skipped(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "locked.img", 8 * MiB);
        _cleanup_close_ int fd = -EBADF, ctl = -EBADF, held = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {};
        char locked[32];
        uint64_t t0, t1;
        int nr;

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
        assert_true(ctl >= 0);
        nr = ioctl(ctl, LOOP_CTL_GET_FREE);
        assert_true(nr >= 0);
        (void) snprintf(locked, sizeof(locked), "/dev/loop%i", nr);
        held = open(locked, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        assert_true(held >= 0);
        assert_int_equal(flock(held, LOCK_SH | LOCK_NB), 0);

        for (unsigned i = 0; i < 3; i++) {
                t0 = now_usec();
                assert_int_equal(attach(f, fd, &c, &s), 0);
                t1 = now_usec();
                fprintf(stderr, "# loop%i locked: attached %s in %.2f ms\n", nr, s.name,
                        (t1 - t0) / 1000.0);
                assert_string_not_equal(s.name, locked + strlen("/dev/"));
                /* The old code slept at least 1 ms per round until the lock went away. */
                assert_true(t1 - t0 < 1000000);
                check_against_sysfs(&s);
                assert_true(loop_detach(NULL, s.name, s.diskseq) >= 0);
                assert_true(wait_gone(s.name, s.diskseq, 5000));
                loop_status_done(&s);
        }

        /* Unlocked, the device is usable again. */
        held = safe_close(held);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        check_against_sysfs(&s);
        loop_status_done(&s);
}

/* Attaches fd with c, checks the binding against sysfs, detaches it again; the number it had. */
static unsigned attach_check_detach(Fixture *f, int fd, const LoopConfig *c) {
        LoopStatus s = {};
        unsigned nr;

        assert_int_equal(attach(f, fd, c, &s), 0);
        check_against_sysfs(&s);
        nr = s.number;
        assert_true(loop_detach(NULL, s.name, s.diskseq) >= 0);
        assert_true(wait_gone(s.name, s.diskseq, 5000));
        loop_status_done(&s);
        return nr;
}

/* LoopConfig.hint: tried first; anything wrong with it falls back to LOOP_CTL_GET_FREE. */
static void test_attach_hint(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "hint.img", 8 * MiB);
        _cleanup_free_ char *img2 = make_image(any_dir, "hint2.img", 8 * MiB);
        _cleanup_close_ int fd = -EBADF, fd2 = -EBADF, ctl = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus a = {};
        char path[64];
        int added = -1;

        fd = open(img, O_RDWR | O_CLOEXEC);
        fd2 = open(img2, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0 && fd2 >= 0);

        /* A hint naming a bound device falls back. */
        assert_int_equal(attach(f, fd, &c, &a), 0);
        c.use_hint = true;
        c.hint = a.number;
        assert_int_not_equal(attach_check_detach(f, fd2, &c), a.number);

        /* So does a hint naming no device at all. */
        c.hint = 999999;
        (void) snprintf(path, sizeof(path), "/sys/block/loop%u", c.hint);
        assert_int_equal(access(path, F_OK), -1);
        assert_int_not_equal(attach_check_detach(f, fd2, &c), c.hint);

        /* A free device that LOOP_CTL_GET_FREE would not name (it is not the lowest): taken. */
        ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
        assert_true(ctl >= 0);
        for (int k = 4000; k < 5000 && added < 0; k++) {
                (void) snprintf(path, sizeof(path), "/sys/block/loop%i", k);
                if (access(path, F_OK) < 0 && errno == ENOENT)
                        added = ioctl(ctl, LOOP_CTL_ADD, (unsigned long) k);
        }
        assert_true(added >= 4000);
        if (udev_running)
                (void) system("udevadm settle --timeout=10");
        c.hint = (unsigned) added;
        assert_int_equal(attach_check_detach(f, fd2, &c), (unsigned) added);
        if (udev_running)
                (void) system("udevadm settle --timeout=10");
        for (unsigned i = 0; i < 50 && ioctl(ctl, LOOP_CTL_REMOVE, (unsigned long) added) < 0; i++)
                sleep_ms(20);

        assert_true(loop_detach(NULL, a.name, a.diskseq) >= 0);
        assert_true(wait_gone(a.name, a.diskseq, 5000));
        loop_status_done(&a);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_attach_basic),
                T(test_attach_timing),
                T(test_locked_free_device_skipped),
                T(test_attach_hint),
                T(test_offset_size_limit),
                T(test_bad_range_creates_nothing),
                T(test_read_only_fd),
                T(test_sector_size_4096),
                T(test_direct_io_real_fs),
                T(test_direct_io_caller_odirect_off),
                T(test_direct_io_tmpfs),
                T(test_direct_io_on_refused_over_4k),
                T(test_detach_returns_1),
                T(test_detach_held_open),
                T(test_detach_nowait_locked),
                T(test_detach_nowait_unlocked),
                T(test_detach_wrong_diskseq),
                T(test_set_capacity),
                T(test_set_autoclear),
                T(test_attach_autoclear),
                T(test_partscan),
                T(test_detach_deletes_partitions),
                T(test_deleted_backing),
                T(test_legacy_path),
                T(test_failure_after_configure_clears),
                T(test_loop_over_loop),
        };

        if (geteuid() != 0) {
                fprintf(stderr, "test-loop-kernel-real: needs root to configure loop devices, "
                                "skipping.\n");
                return 77;
        }
        if (access("/dev/loop-control", F_OK) < 0) {
                fprintf(stderr, "test-loop-kernel-real: no /dev/loop-control (loop driver "
                                "missing?), skipping.\n");
                return 77;
        }

        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
