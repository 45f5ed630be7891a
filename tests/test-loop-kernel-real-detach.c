/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-loop-kernel-real's tests of detaching, SetCapacity, autoclear, partitions, deleted
 * backing files, the legacy path, loop over loop, free-device selection and the hint. */

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
#include "test-loop-kernel-real.h"

void test_detach_returns_1(void **state) {
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

void test_detach_held_open(void **state) {
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
void test_detach_nowait_locked(void **state) {
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

void test_detach_nowait_unlocked(void **state) {
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

void test_detach_wrong_diskseq(void **state) {
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

/* loop_open_binding(): the mode asked for, never downgraded, and only the binding named. */
void test_open_binding(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "open.img", 8 * MiB);
        _cleanup_close_ int fd = -EBADF, ro = -EBADF, rw = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {};

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);

        ro = loop_open_binding(NULL, s.name, s.diskseq, false);
        assert_true(ro >= 0);
        assert_int_equal(fcntl(ro, F_GETFL) & O_ACCMODE, O_RDONLY);
        assert_true(fcntl(ro, F_GETFD) & FD_CLOEXEC);
        rw = loop_open_binding(NULL, s.name, s.diskseq, true);
        assert_true(rw >= 0);
        assert_int_equal(fcntl(rw, F_GETFL) & O_ACCMODE, O_RDWR);
        assert_int_equal(pwrite(rw, "loop", 4, 4096), 4);
        assert_int_equal(fsync(rw), 0);
        char buf[4] = "";
        assert_int_equal(pread(fd, buf, 4, 4096), 4);
        assert_memory_equal(buf, "loop", 4);

        assert_int_equal(loop_open_binding(NULL, s.name, s.diskseq + 1, false), -ESTALE);
        assert_int_equal(loop_open_binding(NULL, s.name, s.diskseq - 1, true), -ESTALE);
        loop_status_done(&s);
}

void test_set_capacity(void **state) {
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

void test_set_autoclear(void **state) {
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

void test_attach_autoclear(void **state) {
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

void test_partscan(void **state) {
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

void test_detach_deletes_partitions(void **state) {
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

void test_deleted_backing(void **state) {
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
void test_legacy_path(void **state) {
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
void test_failure_after_configure_clears(void **state) {
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

void test_loop_over_loop(void **state) {
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
void test_locked_free_device_skipped(void **state) {
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
void test_attach_hint(void **state) {
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
