/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-aliases, scenarios 1 to 5: one file under many names, ranges of one file, loop over
 * loop, loop over a partition, looping a mounted device. */

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <ctype.h>
#include <ftw.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "test-aliases.h"

/* ------------------------------------------------------------------------------------------ */
/* 1. One file, many names */

/* Hard link, symlink, bind mount and /proc/self/fd/N all reach the same inode: every Attach
 * must hand back the first device (identity is (st_dev, st_ino), never a path). */
void test_same_file_other_names(void **state) {
        Env *e = *state;
        _cleanup_free_ char *src = env_make_dir(e, "src"), *bind = env_make_dir(e, "bind");
        _cleanup_free_ char *path = NULL, *hard = NULL, *sym = NULL, *via_bind = NULL,
                            *via_proc = NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        assert_int_equal(env_make_image(e, src, 4 * MiB, &path), 0);
        hard = env_join(src, "hard-link.img");
        if (link(path, hard) < 0)
                fail_msg("link %s %s: %m", path, hard);
        sym = env_join(e->tmpdir, "symlink.img");
        if (symlink(path, sym) < 0)
                fail_msg("symlink %s %s: %m", path, sym);
        mount_ok(e, src, bind, NULL, MS_BIND);
        via_bind = env_join(bind, strrchr(path, '/') + 1);
        int fd = env_hold(e, path, O_RDWR);
        assert_true(fd >= 0);
        assert_true(asprintf(&via_proc, "/proc/self/fd/%d", fd) > 0);

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        assert_false(a.reused);
        expect_references(e, a.object, 1, "first attach");

        const char *names[] = {hard, sym, via_bind, via_proc};
        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached b = {};
                _cleanup_free_ char *what = NULL;

                assert_true(asprintf(&what, "Attach of the same file as %s", names[i]) > 0);
                int r = attach_file(e, names[i], O_RDWR, &error, &b, 0);
                assert_bus_ok(r, &error, what);
                if (!b.reused || !streq(b.object, a.object))
                        fail_msg("%s: got %s (%s, reused=%s), expected the existing %s (%s, "
                                 "reused=yes)",
                                 what, b.node, b.object, b.reused ? "yes" : "no", a.node, a.object);
                expect_references(e, a.object, (uint32_t) i + 2, what);
        }
        expect_losetup_j(path, 1, "after five attaches by five names");
        expect_losetup_j(hard, 1, "after five attaches by five names");
        PROPS_OK(e, a.object, &p);
        assert_string_equal(p.backing_file, path);

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &a);

        env_release(e, fd);
        umount_ok(e, bind);
}

/* ------------------------------------------------------------------------------------------ */
/* 2. Ranges of one file */

void test_ranges(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB);
        _cleanup_attached_ Attached a = {}, same = {}, d = {}, adj = {};
        int r;

        /* a = [1M, 3M) */
        ATTACH_OK(e, path, O_RDWR, &a, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
        assert_false(a.reused);

        /* Identical range: reused. */
        ATTACH_OK(e, path, O_RDWR, &same, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
        if (!same.reused || !streq(same.object, a.object))
                fail_msg("identical range [1M, 3M): got %s (reused=%s), expected %s reused",
                         same.node, same.reused ? "yes" : "no", a.node);
        expect_references(e, a.object, 2, "identical range");

        /* [2.5M, 4M) overlaps [1M, 3M): the message names the device and both ranges. The
         * numbers are chosen so that every start, end and length is distinct. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, path, O_RDWR, &error, &x, 2,
                                OPT_T(LOOPMGR_OPT_OFFSET, 2 * MiB + 512 * KiB),
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 1 * MiB + 512 * KiB));
                expect_error(r, &error, &x, "overlapping sub-range [2.5M, 4M)",
                             LOOPMGR_ERROR_OVERLAP);
                message_names(&error, a.node + 5, "overlap");
                /* Existing [1048576, 3145728), length 2097152; requested [2621440, 4194304),
                 * length 1572864: the start and the end (or length) of each. */
                message_names(&error, "1048576", "overlap: existing range start");
                if (!has_word(error.message, "3145728") && !has_word(error.message, "2097152"))
                        fail_msg("the Overlap message does not give the existing range's end "
                                 "(3145728) or length (2097152): %s",
                                 error.message);
                message_names(&error, "2621440", "overlap: requested range start");
                if (!has_word(error.message, "4194304") && !has_word(error.message, "1572864"))
                        fail_msg("the Overlap message does not give the requested range's end "
                                 "(4194304) or length (1572864): %s",
                                 error.message);
        }
        /* A range inside a's and one containing it overlap as well. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, path, O_RDWR, &error, &x, 2, OPT_T(LOOPMGR_OPT_OFFSET, 2 * MiB),
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 512 * KiB));
                expect_error(r, &error, &x, "sub-range [2M, 2.5M) inside [1M, 3M)",
                             LOOPMGR_ERROR_OVERLAP);
        }
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, path, O_RDWR, &error, &x, 0);
                expect_error(r, &error, &x, "whole file around [1M, 3M)", LOOPMGR_ERROR_OVERLAP);
        }

        /* Disjoint ranges: separate devices. [3M, 4M) touches a's end (half-open ranges
         * share no byte), [4M, 8M) touches that one's. */
        ATTACH_OK(e, path, O_RDWR, &adj, 2, OPT_T(LOOPMGR_OPT_OFFSET, 3 * MiB),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 1 * MiB));
        ATTACH_OK(e, path, O_RDWR, &d, 1, OPT_T(LOOPMGR_OPT_OFFSET, 4 * MiB));
        assert_false(adj.reused);
        assert_false(d.reused);
        assert_string_not_equal(adj.object, a.object);
        assert_string_not_equal(d.object, a.object);
        assert_string_not_equal(d.object, adj.object);
        expect_losetup_j(path, 3, "three disjoint ranges");

        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &a);
        detach_gone(e, &adj);
        detach_gone(e, &d);
}

/* size-limit 0 means "to the end": the same bytes as an explicit limit reaching the end. */
void test_size_limit_zero_is_to_the_end(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_attached_ Attached a = {}, b = {}, c = {}, o = {}, p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        ATTACH_OK(e, path, O_RDWR, &b, 1, OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 4 * MiB));
        if (!b.reused || !streq(b.object, a.object))
                fail_msg("size-limit=4M on a 4M file: got %s (reused=%s), expected %s reused",
                         b.node, b.reused ? "yes" : "no", a.node);
        ATTACH_OK(e, path, O_RDWR, &c, 2, OPT_T(LOOPMGR_OPT_OFFSET, 0),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 0));
        if (!c.reused || !streq(c.object, a.object))
                fail_msg("offset=0 size-limit=0: got %s (reused=%s), expected %s reused", c.node,
                         c.reused ? "yes" : "no", a.node);
        expect_references(e, a.object, 3, "three spellings of the whole file");
        expect_losetup_j(path, 1, "three spellings of the whole file");
        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &a);

        /* The same with an offset: [1M, end) both ways. */
        ATTACH_OK(e, path, O_RDWR, &o, 1, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
        ATTACH_OK(e, path, O_RDWR, &p, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 3 * MiB));
        if (!p.reused || !streq(p.object, o.object))
                fail_msg("offset=1M size-limit=3M on a 4M file: got %s (reused=%s), expected %s "
                         "(offset=1M) reused",
                         p.node, p.reused ? "yes" : "no", o.node);
        detach_expect(e, o.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &o);
}

/* ------------------------------------------------------------------------------------------ */
/* 3. Loop over loop */

void test_loop_over_idle_loop(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB);
        _cleanup_attached_ Attached lower = {}, same = {}, upper = {};
        _cleanup_props_ DeviceProps pu = {};

        ATTACH_OK(e, path, O_RDWR, &lower, 0);

        /* The whole of lower is exactly lower's bytes: lower itself comes back. */
        ATTACH_OK(e, lower.node, O_RDWR, &same, 0);
        if (!same.reused || !streq(same.object, lower.object))
                fail_msg("loop over the whole of %s: got %s (%s, reused=%s), expected %s itself",
                         lower.node, same.node, same.object, same.reused ? "yes" : "no",
                         lower.node);
        expect_references(e, lower.object, 2, "whole-device attach of the lower device");
        detach_expect(e, lower.object, LOOPMGR_STATE_ATTACHED);

        /* A sub-range of an idle lower device: a real second layer. */
        ATTACH_OK(e, lower.node, O_RDWR, &upper, 1, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
        assert_false(upper.reused);
        assert_string_not_equal(upper.object, lower.object);
        PROPS_OK(e, upper.object, &pu);
        assert_int_equal(pu.size, 7 * MiB);
        chain_names(pu.chain, pu.n_chain, 2, "Chain of the loop over a loop", upper.node + 5,
                    lower.node + 5, path);
        expect_losetup_j(path, 1, "loop over loop");

        detach_gone(e, &upper);
        detach_gone(e, &lower);
}

/* SPEC §4 rule 2: stacking on a lower device that is mounted is Busy, unless the mount and the
 * new device are both read-only. */
void test_loop_over_mounted_loop(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 16 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_attached_ Attached lower = {}, ro = {};
        _cleanup_props_ DeviceProps pr = {};
        int r;

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &lower, 0);
        mount_ok(e, lower.node, mnt, "ext4", 0);

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, lower.node, O_RDWR, &error, &x, 1,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
                expect_error(r, &error, &x, "sub-range of a mounted loop device",
                             LOOPMGR_ERROR_BUSY);
                message_names(&error, lower.node + 5, "Busy (mounted lower device)");
                message_names(&error, mnt, "Busy (mounted lower device): the mount point");
        }
        /* A read-only device over a read-write mount is still refused. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, lower.node, O_RDONLY, &error, &x, 2,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                                OPT_B(LOOPMGR_OPT_READ_ONLY, true));
                expect_error(r, &error, &x, "read-only sub-range of a read-write mounted device",
                             LOOPMGR_ERROR_BUSY);
        }

        /* Read-only mount: a writable device on top is Busy, a read-only one is allowed. */
        umount_ok(e, mnt);
        mount_ok(e, lower.node, mnt, "ext4", MS_RDONLY);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, lower.node, O_RDWR, &error, &x, 1,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
                expect_error(r, &error, &x, "writable sub-range of a read-only mounted device",
                             LOOPMGR_ERROR_BUSY);
                message_names(&error, lower.node + 5, "Busy (read-only mount)");
        }
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, lower.node, O_RDONLY, &error, &ro, 2,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                                OPT_B(LOOPMGR_OPT_READ_ONLY, true));
                assert_bus_ok(r, &error,
                              "read-only Attach (O_RDONLY fd) over a read-only mounted device");
        }
        assert_false(ro.reused);
        PROPS_OK(e, ro.object, &pr);
        assert_true(pr.read_only);
        chain_names(pr.chain, pr.n_chain, 2, "Chain of the read-only loop over a mounted loop",
                    lower.node + 5);

        detach_gone(e, &ro);
        umount_ok(e, mnt);
        detach_gone(e, &lower);
}

/* ------------------------------------------------------------------------------------------ */
/* 4. Loop over a partition */

void test_loop_over_partition(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_free_ char *part = NULL;
        _cleanup_attached_ Attached a = {}, p = {}, same = {}, file_range = {};
        _cleanup_props_ DeviceProps pp = {};
        int r;

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        /* Sectors 2048..6143: bytes [1M, 3M) of the file. */
        part = add_partition(e, &a, 1, 2048, 4096);
        const char *part_name = strrchr(part, '/') + 1;

        /* (a) Loop over the partition: a is in its chain and idle, so it is allowed. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, part, O_RDWR, &error, &p, 0);
                assert_bus_ok(r, &error, "Attach of the partition (a in its chain)");
        }
        assert_false(p.reused);
        PROPS_OK(e, p.object, &pp);
        assert_int_equal(pp.size, 2 * MiB);
        chain_names(pp.chain, pp.n_chain, 3, "Chain of a loop over a partition of a loop",
                    p.node + 5, part_name, a.node + 5, path);

        /* (b) [1M, 2M) of the file meets the partition's bytes and a's; neither is in the
         * chain of a request on the file itself. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, path, O_RDWR, &error, &x, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 1 * MiB));
                expect_error(r, &error, &x, "file range [1M, 2M) under a loop over a partition",
                             LOOPMGR_ERROR_OVERLAP);
        }

        /* (c) [1M, 3M) of the file is exactly what the loop over the partition exposes. */
        ATTACH_OK(e, path, O_RDWR, &file_range, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                  OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
        if (!file_range.reused || !streq(file_range.object, p.object))
                fail_msg("file range [1M, 3M): got %s (%s, reused=%s), expected the loop over "
                         "the partition %s (%s) reused",
                         file_range.node, file_range.object, file_range.reused ? "yes" : "no",
                         p.node, p.object);
        /* And the partition once more: identical as well. */
        ATTACH_OK(e, part, O_RDWR, &same, 0);
        if (!same.reused || !streq(same.object, p.object))
                fail_msg("second Attach of %s: got %s (reused=%s), expected %s reused", part,
                         same.node, same.reused ? "yes" : "no", p.node);
        expect_references(e, p.object, 3, "loop over the partition, reached three ways");
        expect_losetup_j(path, 1, "loop over a partition");

        detach_expect(e, p.object, LOOPMGR_STATE_ATTACHED);
        detach_expect(e, p.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &p);

        /* (d) A mounted partition: looping it is Busy, and so is a sub-range of a that
         * covers the mounted bytes. */
        mkfs_ext4(part);
        mount_ok(e, part, mnt, "ext4", 0);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, part, O_RDWR, &error, &x, 0);
                expect_error(r, &error, &x, "loop over a mounted partition", LOOPMGR_ERROR_BUSY);
                message_names(&error, part_name, "Busy (mounted partition)");
                message_names(&error, mnt, "Busy (mounted partition): the mount point");
        }
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, a.node, O_RDWR, &error, &x, 2,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 1 * MiB));
                expect_error(r, &error, &x,
                             "sub-range of a loop device over its mounted partition's bytes",
                             LOOPMGR_ERROR_BUSY);
        }

        umount_ok(e, mnt);
        delete_partition(e, &a, 1);
        detach_gone(e, &a);
}

/* ------------------------------------------------------------------------------------------ */
/* 5. Looping a mounted device */

void test_mounted_device(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 16 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_attached_ Attached a = {}, whole = {};
        int r;

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        mount_ok(e, a.node, mnt, "ext4", 0);

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, a.node, O_RDWR, &error, &x, 1,
                                OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
                expect_error(r, &error, &x, "offset 1M on a mounted loop device",
                             LOOPMGR_ERROR_BUSY);
                message_names(&error, a.node + 5, "Busy (mounted device)");
                message_names(&error, mnt, "Busy (mounted device): the mount point");
        }
        /* The whole of it is identical to it: rule 1 wins, the mount does not matter. */
        ATTACH_OK(e, a.node, O_RDWR, &whole, 0);
        if (!whole.reused || !streq(whole.object, a.object))
                fail_msg("whole range of the mounted %s: got %s (reused=%s), expected it reused",
                         a.node, whole.node, whole.reused ? "yes" : "no");
        expect_references(e, a.object, 2, "whole range of a mounted device");
        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);

        umount_ok(e, mnt);
        detach_gone(e, &a);
}

void test_mounted_foreign_device(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 16 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_free_ char *node = NULL, *object = NULL;
        uint64_t diskseq;
        int r;

        mkfs_ext4(path);
        node = losetup_foreign(e, path, NULL, &diskseq);
        object = object_for_node(e, node);
        mount_ok(e, node, mnt, "ext4", 0);

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_attached_ Attached x = {};
                r = attach_file(e, node, O_RDWR, &error, &x, 1, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
                expect_error(r, &error, &x, "offset 1M on a mounted foreign loop device",
                             LOOPMGR_ERROR_BUSY);
                message_names(&error, node + 5, "Busy (mounted foreign device)");
                message_names(&error, mnt, "Busy (mounted foreign device): the mount point");
        }

        umount_ok(e, mnt);
        env_run_ok("losetup", "-d", node);
        if (!wait_binding_gone(node + 5, diskseq, SIGNAL_TIMEOUT))
                fail_msg("the foreign %s is still bound after losetup -d", node);
}
