/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-loop-kernel-real's tests of attaching: ranges, read-only, sector size, direct I/O. */

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

/* ---- tests ---- */

void test_attach_basic(void **state) {
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

void test_attach_timing(void **state) {
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

void test_offset_size_limit(void **state) {
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

void test_bad_range_creates_nothing(void **state) {
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

void test_read_only_fd(void **state) {
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

void test_sector_size_4096(void **state) {
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

void test_direct_io_real_fs(void **state) {
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

void test_direct_io_caller_odirect_off(void **state) {
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

void test_direct_io_tmpfs(void **state) {
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
void test_direct_io_on_refused_over_4k(void **state) {
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
