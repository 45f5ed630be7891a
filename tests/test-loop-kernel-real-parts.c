/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-loop-kernel-real's tests of partitioned images: the partitions of a partition scan,
 * added with BLKPG from libblkid's list where the kernel has no parser (loop-partitions.h),
 * and the shared lock that keeps udev from re-reading them (LoopConfig.ret_hold_fd). */

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <cmocka.h>

#include "loop-partitions.h"
#include "test-loop-kernel-real.h"
#include "util.h"

/* Whether this kernel reads GPT tables itself (built in: the parser is in kallsyms). */
static bool kernel_has_gpt_parser(void) {
        return system("grep -qw efi_partition /proc/kallsyms 2>/dev/null") == 0;
}

/* A 16 MiB GPT image with two 4 MiB partitions at 1 MiB and 5 MiB. NULL (skip) without
 * sfdisk. */
static char *make_gpt_image(const char *name) {
        char *img = make_image(any_dir, name, 16 * MiB);
        _cleanup_free_ char *cmd = NULL;

        assert_true(asprintf(&cmd,
                             "printf 'label: gpt\\n,4MiB,L\\n,4MiB,L\\n' | sfdisk -q '%s' "
                             ">/dev/null 2>&1",
                             img) > 0);
        if (system(cmd) != 0) {
                free(img);
                return NULL;
        }
        return img;
}

void test_partscan_table(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_gpt_image("gpt.img");
        _cleanup_free_ LoopPartition *parts = NULL;
        _cleanup_free_ char *node = NULL;
        _cleanup_close_ int fd = -EBADF, hold = -EBADF, other = -EBADF, again = -EBADF;
        LoopConfig c = {.partscan = true, .direct_io = DIRECT_IO_OFF, .ret_hold_fd = &hold};
        LoopStatus s = {};
        size_t n = 0;
        int r;

        if (!img) {
                fprintf(stderr, "sfdisk is missing: cannot make a GPT image\n");
                skip();
        }
        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);

        /* The partitions exist when loop_attach() returns, made by whichever of the two. */
        assert_int_equal(loop_read_partitions(NULL, s.name, &parts, &n), 0);
        assert_int_equal(n, 2);
        assert_int_equal(parts[0].number, 1);
        assert_int_equal(parts[0].start, 1 * MiB);
        assert_int_equal(parts[0].size, 4 * MiB);
        assert_int_equal(parts[1].number, 2);
        assert_int_equal(parts[1].start, 5 * MiB);
        assert_int_equal(parts[1].size, 4 * MiB);
        if (kernel_has_gpt_parser())
                assert_int_equal(s.table_added.added, 0);
        else {
                assert_int_equal(s.table_added.added, 2);
                assert_string_equal(s.table_added.pttype, "gpt");
        }
        assert_int_equal(s.table_added.failed, 0);

        /* The hold: shared, so udev's LOCK_EX|LOCK_NB (before its BLKRRPART) fails while its
         * LOCK_SH probes pass. */
        assert_true(hold >= 0);
        /* read-only: its close before the teardown makes udev do nothing (IN_CLOSE_WRITE) */
        assert_int_equal(fcntl(hold, F_GETFL) & O_ACCMODE, O_RDONLY);
        assert_true(asprintf(&node, "/dev/%s", s.name) > 0);
        other = open(node, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        assert_true(other >= 0);
        assert_int_equal(flock(other, LOCK_EX | LOCK_NB), -1);
        assert_int_equal(errno, EWOULDBLOCK);
        assert_int_equal(flock(other, LOCK_SH | LOCK_NB), 0);
        other = safe_close(other);

        /* What a restarted daemon takes again, for this binding only. */
        again = loop_hold_device(NULL, s.name, s.diskseq);
        assert_true(again >= 0);
        assert_int_equal(loop_hold_device(NULL, s.name, s.diskseq + 1000000), -ESTALE);

        /* Both go before the detach, whose exclusive lock they would block. */
        hold = safe_close(hold);
        again = safe_close(again);
        wait_udev(&s);
        r = loop_detach(NULL, s.name, s.diskseq);
        assert_true(r == 1 || (r == 0 && wait_gone(s.name, s.diskseq, 5000)));
        free(parts);
        parts = NULL;
        r = loop_read_partitions(NULL, s.name, &parts, &n);
        assert_true(r == -ENOENT || (r == 0 && n == 0));
        loop_status_done(&s);
}

void test_partscan_no_table(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "notable.img", 8 * MiB);
        _cleanup_free_ LoopPartition *parts = NULL;
        _cleanup_close_ int fd = -EBADF, hold = -EBADF;
        LoopConfig c = {.partscan = true, .direct_io = DIRECT_IO_OFF, .ret_hold_fd = &hold};
        LoopStatus s = {};
        size_t n = 1;

        /* Nothing to read: nothing added, and nothing wrong. */
        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        assert_int_equal(s.table_added.added, 0);
        assert_int_equal(s.table_added.failed, 0);
        assert_int_equal(s.table_added.error, 0);
        assert_string_equal(s.table_added.pttype, "");
        assert_int_equal(loop_read_partitions(NULL, s.name, &parts, &n), 0);
        assert_int_equal(n, 0);
        assert_true(hold >= 0);
        hold = safe_close(hold);
        loop_status_done(&s);
}

void test_no_hold_without_partscan(void **state) {
        Fixture *f = *state;
        _cleanup_free_ char *img = make_image(any_dir, "nohold.img", 8 * MiB);
        _cleanup_close_ int fd = -EBADF;
        int hold = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF, .ret_hold_fd = &hold};
        LoopStatus s = {};

        fd = open(img, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(attach(f, fd, &c, &s), 0);
        assert_int_equal(hold, -EBADF);
        loop_status_done(&s);
}
