/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The guard's pure parts (daemon/kernel/guard.c, daemon/core/manager-guard.c): mode names, map keys
 * in the kernel's device number encoding, event formatting for the log and the Creator property,
 * the LSM list, and the key set of a block device in a fake sysfs tree. Loading the program needs
 * a kernel that allows it: tests/test-guard-host.c and tests/vm/tests-guard.sh.
 */

#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <setjmp.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <cmocka.h>
#include <ftw.h>

#include "guard.h"
#include "manager-guard.h"
#include "util.h"

static void test_mode_names(void **state) {
        static const char *const names[] = {"off", "audit", "aliases", "exclusive"};

        for (int i = 0; i < (int) ELEMENTSOF(names); i++) {
                assert_int_equal(guard_mode_from_string(names[i]), i);
                assert_string_equal(guard_mode_to_string(i), names[i]);
        }
        assert_int_equal(GUARD_MODE_ALIASES, LOOP_GUARD_MODE_ALIASES);
        assert_int_equal(guard_mode_from_string("Aliases"), -EINVAL);
        assert_int_equal(guard_mode_from_string(""), -EINVAL);
        assert_int_equal(guard_mode_from_string("on"), -EINVAL);
        assert_int_equal(guard_mode_from_string(NULL), -EINVAL);
        assert_null(guard_mode_to_string(_GUARD_MODE_MAX));
}

static void test_keys(void **state) {
        GuardKey k;

        /* The kernel's dev_t: major << 20 | minor, not glibc's encoding. */
        k = guard_key_block(makedev(8, 1));
        assert_int_equal(k.dev, (8u << 20) | 1u);
        assert_int_equal(k.ino, 0);
        k = guard_key_block(makedev(259, 70000));
        assert_int_equal(k.dev, (259ull << 20) | 70000u);
        k = guard_key_file(makedev(254, 3), 123456789012ull);
        assert_int_equal(k.dev, (254u << 20) | 3u);
        assert_int_equal(k.ino, 123456789012ull);
        assert_int_equal(LOOP_GUARD_KDEV_MAJOR(k.dev), 254);
        assert_int_equal(LOOP_GUARD_KDEV_MINOR(k.dev), 3);
}

static void test_bases_uniq(void **state) {
        GuardBase b[] = {
                guard_base(guard_key_file(makedev(8, 1), 12), makedev(7, 3), 1),
                guard_base(guard_key_block(makedev(7, 0)), 0, 0),
                guard_base(guard_key_file(makedev(8, 1), 12), makedev(7, 3), 1),
                guard_base(guard_key_block(makedev(7, 0)), makedev(7, 1), 1),
                guard_base(guard_key_file(makedev(8, 1), 11), makedev(7, 4), 0),
                guard_base(guard_key_block(makedev(8, 0)), makedev(7, 5), 0),
                guard_base(guard_key_block(makedev(8, 0)), makedev(7, 6), 0),
        };
        size_t n = guard_bases_uniq(b, ELEMENTSOF(b));

        assert_int_equal(n, 4);
        for (size_t i = 1; i < n; i++)
                assert_true(guard_base_compare(&b[i - 1], &b[i]) < 0);
        /* Sorted by dev, then ino: 7:0, 8:0, then the files on 8:1. The holder stays where
         * every entry names the same one; two devices, or a base for another reason too,
         * leave none. */
        assert_int_equal(b[0].key.dev, LOOP_GUARD_KDEV(7, 0));
        assert_int_equal(b[0].holder, 0);
        assert_int_equal(b[0].flags, 1); /* or'ed */
        assert_int_equal(b[1].key.dev, LOOP_GUARD_KDEV(8, 0));
        assert_int_equal(b[1].holder, 0);
        assert_int_equal(b[1].flags, 0);
        assert_int_equal(b[2].key.ino, 11);
        assert_int_equal(b[2].holder, LOOP_GUARD_KDEV(7, 4));
        assert_int_equal(b[3].key.ino, 12);
        assert_int_equal(b[3].holder, LOOP_GUARD_KDEV(7, 3));
        assert_int_equal(b[3].flags, 1);
        assert_int_equal(guard_bases_uniq(b, 0), 0);
        /* The kernel's encoding for the holder too. */
        assert_int_equal(guard_base(guard_key_block(makedev(7, 0)), makedev(7, 1048575), 0).holder,
                         (7ull << 20) | 1048575u);
}

static GuardEvent event(const char *comm, uint32_t cmd, int verdict) {
        GuardEvent e = {
                .pid = 1234,
                .uid = 1000,
                .cmd = cmd,
                .verdict = verdict,
                .device = LOOP_GUARD_KDEV(7, 1),
        };

        memcpy(e.comm, comm, strnlen(comm, sizeof(e.comm)));
        return e;
}

static void test_event_creator(void **state) {
        _cleanup_free_ char *a = NULL, *b = NULL, *c = NULL;
        GuardEvent e = event("losetup", 0x4C0A, 0);

        assert_int_equal(guard_event_creator(&e, &a), 0);
        assert_string_equal(a, "losetup (pid 1234, uid 1000)");
        /* 16 bytes with no terminator: the kernel's comm is at most 15 characters, but the
         * buffer comes from BPF and is not trusted. */
        e = event("0123456789abcdefXYZ", 0x4C00, 0);
        assert_int_equal(guard_event_creator(&e, &b), 0);
        assert_string_equal(b, "0123456789abcde (pid 1234, uid 1000)");
        e = event("a\nb c\x7f", 0x4C00, 0);
        assert_int_equal(guard_event_creator(&e, &c), 0);
        assert_string_equal(c, "a?b?c? (pid 1234, uid 1000)");
}

static void test_event_describe(void **state) {
        _cleanup_free_ char *a = NULL, *b = NULL, *c = NULL, *d = NULL, *f = NULL, *g = NULL;
        GuardEvent e = event("losetup", 0x4C0A, -EEXIST);
        char buf[16];

        e.flags = LOOP_GUARD_EVENT_BACKING;
        e.backing_dev = LOOP_GUARD_KDEV(254, 1);
        e.backing_ino = 4242;
        assert_int_equal(guard_event_describe(&e, &a), 0);
        assert_string_equal(a, "losetup (pid 1234, uid 1000): LOOP_CONFIGURE on loop1, backing "
                               "inode 4242 on 254:1: refused (EEXIST, an alias)");
        e = event("mount", 0x4C00, -EPERM);
        e.flags =
                LOOP_GUARD_EVENT_COMPAT | LOOP_GUARD_EVENT_BACKING | LOOP_GUARD_EVENT_BACKING_BLOCK;
        e.backing_dev = LOOP_GUARD_KDEV(7, 0);
        assert_int_equal(guard_event_describe(&e, &b), 0);
        assert_string_equal(b, "mount (pid 1234, uid 1000): LOOP_SET_FD (32-bit) on loop1, "
                               "backing block device 7:0: refused (EPERM)");
        e = event("losetup", 0x4C80, 0);
        e.flags = LOOP_GUARD_EVENT_CONTROL;
        e.device = 0;
        e.arg = 9;
        assert_int_equal(guard_event_describe(&e, &c), 0);
        assert_string_equal(c, "losetup (pid 1234, uid 1000): LOOP_CTL_ADD on /dev/loop-control "
                               "(9): passed");
        assert_false(guard_event_is_bind(&e));
        e = event("x", 0x4C06, 0);
        assert_true(guard_event_is_bind(&e));
        e = event("x", 0x4C04, 0);
        assert_false(guard_event_is_bind(&e));
        assert_string_equal(guard_ioctl_name(0x4C42, buf, sizeof(buf)), "0x4c42");
        assert_string_equal(guard_ioctl_name(0x4C09, buf, sizeof(buf)), "LOOP_SET_BLOCK_SIZE");
        e = event("x", 0x4C01, 0);
        assert_int_equal(guard_event_describe(&e, &d), 0);
        assert_string_equal(d, "x (pid 1234, uid 1000): LOOP_CLR_FD on loop1: passed");
        e = event("losetup", 0x4C0A, -EBUSY);
        e.flags = LOOP_GUARD_EVENT_BACKING | LOOP_GUARD_EVENT_PENDING;
        e.backing_dev = LOOP_GUARD_KDEV(254, 1);
        e.backing_ino = 7;
        assert_int_equal(guard_event_describe(&e, &f), 0);
        assert_string_equal(f, "losetup (pid 1234, uid 1000): LOOP_CONFIGURE on loop1, backing "
                               "inode 7 on 254:1: refused (EBUSY, the device over it is going)");
        e = event("losetup", 0x4C0A, 0);
        e.flags = LOOP_GUARD_EVENT_BACKING | LOOP_GUARD_EVENT_STALE;
        e.backing_dev = LOOP_GUARD_KDEV(254, 1);
        e.backing_ino = 7;
        assert_int_equal(guard_event_describe(&e, &g), 0);
        assert_string_equal(g, "losetup (pid 1234, uid 1000): LOOP_CONFIGURE on loop1, backing "
                               "inode 7 on 254:1: passed (the device over it is gone)");
}

static void test_lsm_list(void **state) {
        assert_true(guard_lsm_list_has_bpf("lockdown,capability,landlock,yama,apparmor,bpf"));
        assert_true(guard_lsm_list_has_bpf("bpf"));
        assert_true(guard_lsm_list_has_bpf("capability,bpf,selinux\n"));
        assert_false(guard_lsm_list_has_bpf("lockdown,capability,landlock,yama,apparmor"));
        assert_false(guard_lsm_list_has_bpf("bpfx,xbpf,bp"));
        assert_false(guard_lsm_list_has_bpf(""));
}

/* A fake sysfs tree: sda with partitions sda1 and sda2, loop0 without partitions. */
static char root[] = "/tmp/test-guard.XXXXXX";

static void fake_file(const char *rel, const char *content) {
        _cleanup_free_ char *p = path_join_root(root, rel);
        char *s;
        FILE *f;

        assert_non_null(p);
        for (s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
                *s = 0;
                (void) mkdir(p, 0755);
                *s = '/';
        }
        f = fopen(p, "we");
        assert_non_null(f);
        fputs(content, f);
        assert_int_equal(fclose(f), 0);
}

static void fake_link(const char *rel, const char *target) {
        _cleanup_free_ char *p = path_join_root(root, rel);

        assert_non_null(p);
        assert_int_equal(symlink(target, p), 0);
}

static int setup_tree(void **state) {
        assert_non_null(mkdtemp(root));
        fake_file("/sys/devices/pci/block/sda/dev", "8:0\n");
        fake_file("/sys/devices/pci/block/sda/sda1/dev", "8:1\n");
        fake_file("/sys/devices/pci/block/sda/sda1/partition", "1\n");
        fake_file("/sys/devices/pci/block/sda/sda1/start", "2048\n");
        fake_file("/sys/devices/pci/block/sda/sda1/size", "2048\n");
        fake_file("/sys/devices/pci/block/sda/sda2/dev", "8:2\n");
        fake_file("/sys/devices/pci/block/sda/sda2/partition", "2\n");
        fake_file("/sys/devices/pci/block/sda/sda2/start", "4096\n");
        fake_file("/sys/devices/pci/block/sda/sda2/size", "2048\n");
        fake_file("/sys/devices/pci/block/sda/queue/logical_block_size", "512\n");
        fake_file("/sys/devices/virtual/block/loop0/dev", "7:0\n");
        fake_file("/sys/dev/block/.keep", "");
        fake_link("/sys/dev/block/8:0", "../../devices/pci/block/sda");
        fake_link("/sys/dev/block/8:1", "../../devices/pci/block/sda/sda1");
        fake_link("/sys/dev/block/8:2", "../../devices/pci/block/sda/sda2");
        fake_link("/sys/dev/block/7:0", "../../devices/virtual/block/loop0");
        return 0;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f) {
        return remove(p);
}

static int teardown_tree(void **state) {
        return nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static size_t keys_of(dev_t d, dev_t holder, GuardBase **keys) {
        size_t n = 0;

        *keys = NULL;
        assert_int_equal(guard_keys_add_block(root, d, holder, LOOP_GUARD_BASE_IN_USE, keys, &n),
                         0);
        return guard_bases_uniq(*keys, n);
}

static void test_block_keys(void **state) {
        _cleanup_free_ GuardBase *a = NULL, *b = NULL, *c = NULL, *d = NULL;
        GuardKey want[] = {guard_key_block(makedev(8, 0)), guard_key_block(makedev(8, 1)),
                           guard_key_block(makedev(8, 2))};
        size_t n;

        /* A partition counts for the disk, and the disk for all its partitions; only the
         * device itself has the holder. */
        n = keys_of(makedev(8, 1), makedev(7, 2), &a);
        assert_int_equal(n, 3);
        for (size_t i = 0; i < n; i++) {
                assert_memory_equal(&a[i].key, &want[i], sizeof(GuardKey));
                assert_int_equal(a[i].holder, i == 1 ? LOOP_GUARD_KDEV(7, 2) : 0);
                assert_int_equal(a[i].flags, LOOP_GUARD_BASE_IN_USE);
        }
        n = keys_of(makedev(8, 0), makedev(7, 2), &b);
        assert_int_equal(n, 3);
        for (size_t i = 0; i < n; i++) {
                assert_memory_equal(&b[i].key, &want[i], sizeof(GuardKey));
                assert_int_equal(b[i].holder, i == 0 ? LOOP_GUARD_KDEV(7, 2) : 0);
        }
        n = keys_of(makedev(7, 0), 0, &c);
        assert_int_equal(n, 1);
        assert_int_equal(c[0].key.dev, LOOP_GUARD_KDEV(7, 0));
        assert_int_equal(c[0].holder, 0);
        /* A device that is gone counts for itself only. */
        n = keys_of(makedev(7, 9), makedev(7, 1), &d);
        assert_int_equal(n, 1);
        assert_int_equal(d[0].key.dev, LOOP_GUARD_KDEV(7, 9));
        assert_int_equal(d[0].holder, LOOP_GUARD_KDEV(7, 1));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_mode_names),
                cmocka_unit_test(test_keys),
                cmocka_unit_test(test_bases_uniq),
                cmocka_unit_test(test_event_creator),
                cmocka_unit_test(test_event_describe),
                cmocka_unit_test(test_lsm_list),
                cmocka_unit_test_setup_teardown(test_block_keys, setup_tree, teardown_tree),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
