/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The kernel layer against fake sysfs and /dev trees: no root, no loop devices. Every test
 * gets a fresh root directory from mkdtemp() and builds what it needs in it.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "loop-kernel.h"
#include "util.h"

static int setup_root(void **state) {
        char t[] = "/tmp/loopmgr-test-loop-kernel-XXXXXX";
        char *root;

        if (!mkdtemp(t))
                return -1;
        root = strdup(t);
        if (!root)
                return -1;
        *state = root;
        return 0;
}

static int teardown_root(void **state) {
        char *root = *state;
        char cmd[256];

        if (!root)
                return 0;
        (void) snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", root);
        (void) system(cmd);
        free(root);
        return 0;
}

static void mkdir_p(const char *path) {
        _cleanup_free_ char *p = strdup(path);

        assert_non_null(p);
        for (char *s = p + 1; *s; s++) {
                if (*s != '/')
                        continue;
                *s = '\0';
                assert_true(mkdir(p, 0755) >= 0 || errno == EEXIST);
                *s = '/';
        }
        assert_true(mkdir(p, 0755) >= 0 || errno == EEXIST);
}

/* Creates <root>/<rel> with the given contents, making parent directories. */
static void put(const char *root, const char *rel, const char *contents) {
        _cleanup_free_ char *path = NULL;
        char *slash;
        FILE *f;

        assert_true(asprintf(&path, "%s/%s", root, rel) > 0);
        slash = strrchr(path, '/');
        *slash = '\0';
        mkdir_p(path);
        *slash = '/';

        f = fopen(path, "we");
        assert_non_null(f);
        assert_true(fputs(contents, f) >= 0);
        assert_int_equal(fclose(f), 0);
}

static void putf(const char *root, const char *name, const char *attr, const char *fmt, ...)
        _printf_(4, 5);

static void putf(const char *root, const char *name, const char *attr, const char *fmt, ...) {
        _cleanup_free_ char *rel = NULL, *val = NULL;
        va_list ap;

        assert_true(asprintf(&rel, "sys/block/%s/%s", name, attr) > 0);
        va_start(ap, fmt);
        assert_true(vasprintf(&val, fmt, ap) >= 0);
        va_end(ap);
        put(root, rel, val);
}

typedef struct FakeDevice {
        const char *name;
        unsigned major, minor;
        uint64_t diskseq;
        uint64_t sectors;
        bool ro;
        unsigned lbs;
        bool bound;
        const char *backing;
        uint64_t offset, sizelimit;
        bool autoclear, partscan, dio;
} FakeDevice;

/* Lays out <root>/sys/block/<name> the way the kernel does (the attributes we read). */
static void fake_device(const char *root, const FakeDevice *d) {
        putf(root, d->name, "dev", "%u:%u\n", d->major, d->minor);
        putf(root, d->name, "diskseq", "%" PRIu64 "\n", d->diskseq);
        putf(root, d->name, "size", "%" PRIu64 "\n", d->sectors);
        putf(root, d->name, "ro", "%d\n", d->ro);
        putf(root, d->name, "queue/logical_block_size", "%u\n", d->lbs);
        putf(root, d->name, "partscan", "%d\n", 0);
        if (!d->bound)
                return;
        putf(root, d->name, "loop/backing_file", "%s\n", d->backing);
        putf(root, d->name, "loop/offset", "%" PRIu64 "\n", d->offset);
        putf(root, d->name, "loop/sizelimit", "%" PRIu64 "\n", d->sizelimit);
        putf(root, d->name, "loop/autoclear", "%d\n", d->autoclear);
        putf(root, d->name, "loop/partscan", "%d\n", d->partscan);
        putf(root, d->name, "loop/dio", "%d\n", d->dio);
}

static const FakeDevice bound5 = {
        .name = "loop5",
        .major = 7,
        .minor = 5,
        .diskseq = 42,
        .sectors = 2048,
        .ro = true,
        .lbs = 4096,
        .bound = true,
        .backing = "/var/tmp/images/a b.img",
        .offset = 1048576,
        .sizelimit = 1048576,
        .autoclear = true,
        .partscan = false,
        .dio = true,
};

static void test_read_sysfs_bound(void **state) {
        const char *root = *state;
        LoopStatus s = {};

        fake_device(root, &bound5);
        assert_int_equal(loop_read_sysfs(root, "loop5", &s), 0);

        assert_string_equal(s.name, "loop5");
        assert_int_equal(s.number, 5);
        assert_true(s.devnum == makedev(7, 5));
        assert_true(s.diskseq == 42);
        assert_true(s.bound);
        assert_string_equal(s.backing_file, "/var/tmp/images/a b.img");
        assert_true(s.offset == 1048576);
        assert_true(s.size_limit == 1048576);
        assert_true(s.size == 2048 * 512);
        assert_int_equal(s.sector_size, 4096);
        assert_true(s.read_only);
        assert_true(s.autoclear);
        assert_false(s.partscan);
        assert_true(s.direct_io);
        /* ids come from LOOP_GET_STATUS64, not sysfs */
        assert_true(s.backing_device == 0 && s.backing_inode == 0 && s.backing_rdevice == 0);

        loop_status_done(&s);
        assert_null(s.backing_file);
        assert_false(s.bound);
        assert_int_equal(s.name[0], '\0');
        /* idempotent */
        loop_status_done(&s);
        loop_status_done(NULL);
}

static void test_read_sysfs_unbound(void **state) {
        const char *root = *state;
        FakeDevice d = {
                .name = "loop12",
                .major = 7,
                .minor = 12,
                .diskseq = 9,
                .sectors = 0,
                .lbs = 512,
                .bound = false,
        };
        LoopStatus s = {};

        fake_device(root, &d);
        assert_int_equal(loop_read_sysfs(root, "loop12", &s), 0);
        assert_string_equal(s.name, "loop12");
        assert_int_equal(s.number, 12);
        assert_true(s.devnum == makedev(7, 12));
        assert_true(s.diskseq == 9);
        assert_false(s.bound);
        assert_null(s.backing_file);
        assert_true(s.size == 0);
        assert_int_equal(s.sector_size, 512);
        assert_false(s.read_only);
        loop_status_done(&s);
}

static void test_read_sysfs_deleted_backing(void **state) {
        const char *root = *state;
        FakeDevice d = bound5;
        LoopStatus s = {};

        d.backing = "/var/tmp/gone.img (deleted)";
        fake_device(root, &d);
        assert_int_equal(loop_read_sysfs(root, "loop5", &s), 0);
        assert_true(s.bound);
        /* Display only: kept verbatim, the suffix is not stripped nor interpreted. */
        assert_string_equal(s.backing_file, "/var/tmp/gone.img (deleted)");
        loop_status_done(&s);
}

static void test_read_sysfs_high_minor(void **state) {
        const char *root = *state;
        FakeDevice d = bound5;
        LoopStatus s = {};

        /* Minors above 255 use the high bits of dev_t. */
        d.name = "loop300";
        d.minor = 300;
        fake_device(root, &d);
        assert_int_equal(loop_read_sysfs(root, "loop300", &s), 0);
        assert_int_equal(major(s.devnum), 7);
        assert_int_equal(minor(s.devnum), 300);
        assert_int_equal(s.number, 300);
        loop_status_done(&s);
}

static void test_read_sysfs_missing(void **state) {
        const char *root = *state;
        LoopStatus s = {.number = 777};

        put(root, "sys/block/.keep", "");
        assert_int_equal(loop_read_sysfs(root, "loop3", &s), -ENOENT);
        assert_int_equal(s.number, 777);

        /* Not a loop device name at all. */
        assert_int_equal(loop_read_sysfs(root, "sda", &s), -EINVAL);
        assert_int_equal(loop_read_sysfs(root, "loop", &s), -EINVAL);
        assert_int_equal(loop_read_sysfs(root, "../loop3", &s), -EINVAL);
        assert_int_equal(s.number, 777);
}

static void test_read_sysfs_no_diskseq(void **state) {
        const char *root = *state;
        _cleanup_free_ char *p = NULL;
        LoopStatus s = {};

        /* Kernels before 5.15 have no diskseq attribute. */
        fake_device(root, &bound5);
        assert_true(asprintf(&p, "%s/sys/block/loop5/diskseq", root) > 0);
        assert_int_equal(unlink(p), 0);
        assert_int_equal(loop_read_sysfs(root, "loop5", &s), 0);
        assert_true(s.diskseq == 0);
        assert_true(s.bound);
        loop_status_done(&s);
}

static void check_garbage(const char *root, const char *attr, const char *value, int expect) {
        LoopStatus s = {.number = 4242};

        fake_device(root, &bound5);
        putf(root, "loop5", attr, "%s", value);
        assert_int_equal(loop_read_sysfs(root, "loop5", &s), expect);
        /* Written only on success. */
        assert_int_equal(s.number, 4242);
        assert_null(s.backing_file);
}

static void test_read_sysfs_garbage(void **state) {
        const char *root = *state;

        check_garbage(root, "size", "lots\n", -EBADMSG);
        check_garbage(root, "size", "-1\n", -EBADMSG);
        check_garbage(root, "size", "99999999999999999999999\n", -ERANGE);
        /* 2^63 sectors do not fit into bytes */
        check_garbage(root, "size", "9223372036854775808\n", -ERANGE);
        check_garbage(root, "dev", "7\n", -EBADMSG);
        check_garbage(root, "dev", "7:x\n", -EBADMSG);
        check_garbage(root, "dev", "4096:0\n", -EBADMSG);
        check_garbage(root, "ro", "2\n", -EBADMSG);
        check_garbage(root, "ro", "yes\n", -EBADMSG);
        check_garbage(root, "diskseq", "0x10\n", -EBADMSG);
        check_garbage(root, "queue/logical_block_size", "0\n", -EBADMSG);
        check_garbage(root, "loop/offset", "12 \n", -EBADMSG);
        check_garbage(root, "loop/sizelimit", "\n", -EBADMSG);
        check_garbage(root, "loop/autoclear", "on\n", -EBADMSG);
        check_garbage(root, "loop/dio", "-0\n", -EBADMSG);
}

static void test_read_sysfs_missing_loop_attr(void **state) {
        const char *root = *state;
        _cleanup_free_ char *p = NULL;
        LoopStatus s = {.number = 4242};

        /* The loop/ group is there but an attribute is missing: an error, not "unbound". */
        fake_device(root, &bound5);
        assert_true(asprintf(&p, "%s/sys/block/loop5/loop/offset", root) > 0);
        assert_int_equal(unlink(p), 0);
        assert_int_equal(loop_read_sysfs(root, "loop5", &s), -ENOENT);
        assert_int_equal(s.number, 4242);
}

static void test_list(void **state) {
        const char *root = *state;
        _cleanup_strv_free_ char **names = NULL;
        const char *expect[] = {"loop0", "loop1", "loop2", "loop10", "loop11", "loop100"};
        const char *dirs[] = {"loop10", "loop2",  "sda",   "loop100", "loop0",        "loopback",
                              "loop01", "loop11", "loop1", "vda1",    "loop-control", "loop3p1"};
        size_t n = 0;

        for (size_t i = 0; i < ELEMENTSOF(dirs); i++) {
                _cleanup_free_ char *rel = NULL;

                assert_true(asprintf(&rel, "sys/block/%s/dev", dirs[i]) > 0);
                put(root, rel, "7:0\n");
        }

        assert_int_equal(loop_list(root, &names), 0);
        assert_non_null(names);
        for (; names[n]; n++) {
                assert_true(n < ELEMENTSOF(expect));
                assert_string_equal(names[n], expect[n]);
        }
        assert_int_equal(n, ELEMENTSOF(expect));
}

static void test_list_empty(void **state) {
        const char *root = *state;
        _cleanup_strv_free_ char **names = NULL;
        char **sentinel = (char **) 0x1;

        /* No sysfs at all. */
        assert_int_equal(loop_list(root, &sentinel), -ENOENT);
        assert_ptr_equal(sentinel, (char **) 0x1);

        put(root, "sys/block/sda/dev", "8:0\n");
        assert_int_equal(loop_list(root, &names), 0);
        assert_non_null(names);
        assert_null(names[0]);
}

static void test_name_to_number(void **state) {
        unsigned n = 99;

        assert_int_equal(loop_name_to_number("loop0", &n), 0);
        assert_int_equal(n, 0);
        assert_int_equal(loop_name_to_number("loop7", &n), 0);
        assert_int_equal(n, 7);
        assert_int_equal(loop_name_to_number("loop123456", &n), 0);
        assert_int_equal(n, 123456);
        assert_int_equal(loop_name_to_number("loop2147483647", &n), 0);
        assert_int_equal(n, 2147483647U);

        n = 99;
        assert_int_equal(loop_name_to_number("loop2147483648", &n), -EINVAL);
        assert_int_equal(loop_name_to_number("loop", &n), -EINVAL);
        assert_int_equal(loop_name_to_number("loop01", &n), -EINVAL);
        assert_int_equal(loop_name_to_number("loop00", &n), -EINVAL);
        assert_int_equal(loop_name_to_number("loop-1", &n), -EINVAL);
        assert_int_equal(loop_name_to_number("loop+1", &n), -EINVAL);
        assert_int_equal(loop_name_to_number("loop1p2", &n), -EINVAL);
        assert_int_equal(loop_name_to_number("loop 1", &n), -EINVAL);
        assert_int_equal(loop_name_to_number("/dev/loop1", &n), -EINVAL);
        assert_int_equal(loop_name_to_number("Loop1", &n), -EINVAL);
        assert_int_equal(loop_name_to_number("loop-control", &n), -EINVAL);
        assert_int_equal(loop_name_to_number("", &n), -EINVAL);
        assert_int_equal(loop_name_to_number(NULL, &n), -EINVAL);
        assert_int_equal(loop_name_to_number("loop99999999999999999999999", &n), -EINVAL);
        assert_int_equal(n, 99);
}

static void check_range_ok(uint64_t backing, uint64_t offset, uint64_t limit, uint32_t ss,
                           uint64_t expect) {
        const char *reason = "sentinel";
        uint64_t size = 0;

        assert_int_equal(loop_validate_range(backing, offset, limit, ss, &reason, &size), 0);
        assert_true(size == expect);
        assert_null(reason);
        /* NULL out parameters are fine */
        assert_int_equal(loop_validate_range(backing, offset, limit, ss, NULL, NULL), 0);
}

static void check_range_bad_why(uint64_t backing, uint64_t offset, uint64_t limit, uint32_t ss,
                                const char *why) {
        const char *reason = NULL;
        uint64_t size = 4711;

        assert_int_equal(loop_validate_range(backing, offset, limit, ss, &reason, &size), -EINVAL);
        assert_non_null(reason);
        if (why && !strstr(reason, why))
                fail_msg("\"%s\" does not say \"%s\"", reason, why);
        assert_true(strlen(reason) > 10);
        assert_true(reason[strlen(reason) - 1] == '.');
        assert_true(size == 4711);
        assert_int_equal(loop_validate_range(backing, offset, limit, ss, NULL, NULL), -EINVAL);
}

#define check_range_bad(b, o, l, s) check_range_bad_why(b, o, l, s, NULL)

static void test_validate_range(void **state) {
        const uint64_t M = 1024 * 1024;

        /* 0 = to the end */
        check_range_ok(16 * M, 0, 0, 0, 16 * M);
        check_range_ok(16 * M, 0, 0, 512, 16 * M);
        check_range_ok(16 * M, M, 0, 0, 15 * M);
        check_range_ok(16 * M, M, 4 * M, 0, 4 * M);
        /* limit exactly up to the end */
        check_range_ok(16 * M, M, 15 * M, 0, 15 * M);
        check_range_ok(16 * M, 0, 16 * M, 4096, 16 * M);
        /* last sector */
        check_range_ok(16 * M, 16 * M - 512, 0, 0, 512);
        check_range_ok(16 * M, 16 * M - 512, 512, 512, 512);
        /* a backing size that is not a multiple of 512: the kernel exposes whole sectors */
        check_range_ok(1000, 0, 0, 0, 512);
        check_range_ok(16 * M + 100, 0, 0, 0, 16 * M);
}

static void test_validate_range_bad(void **state) {
        const uint64_t M = 1024 * 1024;

        /* Each refusal says why, in a sentence a person can act on. */
        check_range_bad_why(16 * M, 16 * M, 0, 0, "would be empty");
        check_range_bad_why(16 * M, 17 * M, 0, 0, "beyond the end");
        check_range_bad_why(16 * M, 0, 32 * M, 0, "past the end");
        check_range_bad_why(UINT64_MAX - 511, (uint64_t) INT64_MAX - 1023, 1024, 0, "overflows");
        check_range_bad_why(UINT64_MAX - 511, 512, UINT64_MAX - 511, 0, "too large");
        check_range_bad_why(16 * M, 511, 0, 0, "offset must be a multiple of 512");
        check_range_bad_why(16 * M, 0, 1000, 0, "size limit must be a multiple of 512");
        check_range_bad_why(16 * M, 0, 0, 3000, "sector size must be");
        check_range_bad_why(511, 0, 0, 0, "smaller than one sector");

        /* offset == size: the device would be empty */
        check_range_bad(16 * M, 16 * M, 0, 0);
        /* offset > size */
        check_range_bad(16 * M, 17 * M, 0, 0);
        check_range_bad(0, 512, 0, 0);
        /* empty backing object */
        check_range_bad(0, 0, 0, 0);
        /* smaller than one sector */
        check_range_bad(511, 0, 0, 0);
        check_range_bad(16 * M + 100, 16 * M, 0, 0);
        check_range_bad(16 * M, 16 * M - 512, 0, 4096);
        check_range_bad(16 * M, 0, 2048, 4096);
        /* limit past the end */
        check_range_bad(16 * M, M, 15 * M + 512, 0);
        check_range_bad(16 * M, 0, 32 * M, 0);
        /* offset + limit overflows: in 64 bits, and in the kernel's signed loff_t */
        check_range_bad(UINT64_MAX - 511, 512, UINT64_MAX - 511, 0);
        check_range_bad(UINT64_MAX - 511, UINT64_MAX - 1023, 1024, 0);
        check_range_bad(UINT64_MAX - 511, (uint64_t) INT64_MAX - 511, (uint64_t) INT64_MAX - 511,
                        0);
        check_range_bad(UINT64_MAX - 511, (uint64_t) INT64_MAX - 1023, 1024, 0);
        /* but right up to the loff_t limit is fine */
        check_range_ok(UINT64_MAX - 511, (uint64_t) INT64_MAX - 1535, 1024, 0, 1024);
        /* beyond loff_t */
        check_range_bad(UINT64_MAX - 511, (uint64_t) INT64_MAX + 1, 0, 0);
        /* unaligned */
        check_range_bad(16 * M, 1, 0, 0);
        check_range_bad(16 * M, 511, 0, 0);
        check_range_bad(16 * M, 0, 1000, 0);
        check_range_bad(16 * M, 512, 513, 0);
        /* invalid sector sizes */
        check_range_bad(16 * M, 0, 0, 256);
        check_range_bad(16 * M, 0, 0, 3000);
        check_range_bad(16 * M, 0, 0, 8192);
}

static void test_udev_link_ready(void **state) {
        const char *root = *state;
        _cleanup_free_ char *dir = NULL, *l1 = NULL, *l2 = NULL, *l3 = NULL, *l4 = NULL;

        /* No /dev/disk at all (no udev): not ready, not an error. */
        assert_int_equal(loop_udev_link_ready(root, "loop5", 42), 0);

        assert_true(asprintf(&dir, "%s/dev/disk/by-diskseq", root) > 0);
        mkdir_p(dir);
        assert_int_equal(loop_udev_link_ready(root, "loop5", 42), 0);

        assert_true(asprintf(&l1, "%s/42", dir) > 0);
        assert_int_equal(symlink("../../loop5", l1), 0);
        assert_int_equal(loop_udev_link_ready(root, "loop5", 42), 1);
        /* basename compare, not prefix */
        assert_int_equal(loop_udev_link_ready(root, "loop55", 42), 0);
        assert_int_equal(loop_udev_link_ready(root, "loop", 42), 0);
        /* another diskseq */
        assert_int_equal(loop_udev_link_ready(root, "loop5", 43), 0);

        /* link to another device */
        assert_true(asprintf(&l2, "%s/43", dir) > 0);
        assert_int_equal(symlink("../../loop6", l2), 0);
        assert_int_equal(loop_udev_link_ready(root, "loop5", 43), 0);
        assert_int_equal(loop_udev_link_ready(root, "loop6", 43), 1);

        /* absolute target */
        assert_true(asprintf(&l3, "%s/18446744073709551615", dir) > 0);
        assert_int_equal(symlink("/dev/loop7", l3), 0);
        assert_int_equal(loop_udev_link_ready(root, "loop7", UINT64_MAX), 1);

        /* not a symlink: an error */
        assert_true(asprintf(&l4, "%s/44", dir) > 0);
        put(root, "dev/disk/by-diskseq/44", "");
        assert_int_equal(loop_udev_link_ready(root, "loop5", 44), -EINVAL);
}

static void test_detach_stale_fake(void **state) {
        const char *root = *state;
        FakeDevice unbound = {
                .name = "loop6",
                .major = 7,
                .minor = 6,
                .diskseq = 50,
                .lbs = 512,
        };

        /* These are refused from sysfs alone, before /dev (absent here) is touched. */
        fake_device(root, &bound5);
        fake_device(root, &unbound);
        assert_int_equal(loop_detach(root, "loop5", 41), -ESTALE);
        assert_int_equal(loop_detach(root, "loop5", 43), -ESTALE);
        assert_int_equal(loop_detach(root, "loop6", 50), -ESTALE);
        assert_int_equal(loop_detach(root, "loop9", 1), -ESTALE);
        assert_int_equal(loop_detach(root, "sda", 1), -EINVAL);
        /* Right diskseq, but no device node in the fake /dev. */
        assert_int_equal(loop_detach(root, "loop5", 42), -ESTALE);
        assert_int_equal(loop_set_capacity(root, "loop5", 42), -ESTALE);
        assert_int_equal(loop_set_autoclear(root, "loop5", 42, true), -ESTALE);
        assert_int_equal(loop_set_capacity(root, "../loop5", 42), -EINVAL);
}

static void test_read_ids_fake(void **state) {
        const char *root = *state;
        LoopStatus s = {};

        fake_device(root, &bound5);
        assert_int_equal(loop_read_sysfs(root, "loop5", &s), 0);

        /* No node. */
        assert_int_equal(loop_read_ids(root, &s), -ENOENT);
        /* A node that is not the block device sysfs describes. */
        put(root, "dev/loop5", "not a block device");
        assert_int_equal(loop_read_ids(root, &s), -ENODEV);
        assert_true(s.backing_device == 0 && s.backing_inode == 0);

        /* Unbound devices have no ids. */
        s.bound = false;
        assert_int_equal(loop_read_ids(root, &s), -EINVAL);
        loop_status_done(&s);
}

static void test_backing_size(void **state) {
        const char *root = *state;
        _cleanup_free_ char *p = NULL;
        _cleanup_close_ int fd = -EBADF, dfd = -EBADF;
        int pipefd[2];
        uint64_t size = 17;

        put(root, "img", "");
        assert_true(asprintf(&p, "%s/img", root) > 0);
        assert_int_equal(truncate(p, 12345), 0);
        fd = open(p, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(loop_backing_size(fd, &size), 0);
        assert_true(size == 12345);

        size = 17;
        assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
        assert_int_equal(loop_backing_size(pipefd[0], &size), -EBADFD);
        (void) close(pipefd[0]);
        (void) close(pipefd[1]);

        dfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(dfd >= 0);
        assert_int_equal(loop_backing_size(dfd, &size), -EBADFD);
        assert_int_equal(loop_backing_size(-1, &size), -EBADF);
        assert_true(size == 17);
}

/* loop_attach refuses bad fds and bad ranges before it touches /dev/loop-control: the fake
 * root has none, so reaching it would show up as -ENOENT, never as a device. */
static void test_attach_refuses_early(void **state) {
        const char *root = *state;
        _cleanup_free_ char *p = NULL;
        _cleanup_close_ int ro = -EBADF, rw = -EBADF, wo = -EBADF, path = -EBADF, dir = -EBADF;
        LoopConfig c = {.direct_io = DIRECT_IO_OFF};
        LoopStatus s = {.number = 4242};
        int pipefd[2];

        put(root, "img", "");
        assert_true(asprintf(&p, "%s/img", root) > 0);
        assert_int_equal(truncate(p, 1024 * 1024), 0);

        ro = open(p, O_RDONLY | O_CLOEXEC);
        rw = open(p, O_RDWR | O_CLOEXEC);
        wo = open(p, O_WRONLY | O_CLOEXEC);
        path = open(p, O_PATH | O_CLOEXEC);
        dir = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(ro >= 0 && rw >= 0 && wo >= 0 && path >= 0 && dir >= 0);
        assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);

        assert_int_equal(loop_attach(root, -1, &c, &s), -EBADF);
        assert_int_equal(loop_attach(root, path, &c, &s), -EBADFD);
        assert_int_equal(loop_attach(root, wo, &c, &s), -EBADFD);
        assert_int_equal(loop_attach(root, dir, &c, &s), -EBADFD);
        assert_int_equal(loop_attach(root, pipefd[0], &c, &s), -EBADFD);
        (void) close(pipefd[0]);
        (void) close(pipefd[1]);

        c.offset = 1024 * 1024;
        assert_int_equal(loop_attach(root, rw, &c, &s), -EINVAL);
        c.offset = 100;
        assert_int_equal(loop_attach(root, rw, &c, &s), -EINVAL);
        c.offset = 0;
        c.size_limit = 2 * 1024 * 1024;
        assert_int_equal(loop_attach(root, ro, &c, &s), -EINVAL);
        c.size_limit = 0;
        c.sector_size = 1000;
        assert_int_equal(loop_attach(root, ro, &c, &s), -EINVAL);
        c.sector_size = 0;

        /* A valid request gets as far as the (missing) loop-control node. */
        assert_int_equal(loop_attach(root, ro, &c, &s), -ENOENT);
        assert_int_equal(s.number, 4242);
}

/* Private nodes left by dead processes go, those of live ones and other files stay. */
static void test_private_nodes_cleanup(void **state) {
        const char *root = *state;
        char dead[64], alive[64], path[256];
        pid_t child;
        int status;

        child = fork();
        assert_true(child >= 0);
        if (child == 0)
                _exit(0);
        assert_int_equal(waitpid(child, &status, 0), child);

        (void) snprintf(dead, sizeof(dead), "/dev/.loopmgr-loop3-%i", (int) child);
        (void) snprintf(alive, sizeof(alive), "/dev/.loopmgr-loop4-%i", (int) getpid());
        put(root, dead, "");
        put(root, alive, "");
        put(root, "/dev/loop3", "");
        put(root, "/dev/.loopmgr-loop5-x", "");

        loop_private_nodes_cleanup(root);
        (void) snprintf(path, sizeof(path), "%s%s", root, dead);
        assert_int_equal(access(path, F_OK), -1);
        (void) snprintf(path, sizeof(path), "%s%s", root, alive);
        assert_int_equal(access(path, F_OK), 0);
        (void) snprintf(path, sizeof(path), "%s/dev/loop3", root);
        assert_int_equal(access(path, F_OK), 0);
        (void) snprintf(path, sizeof(path), "%s/dev/.loopmgr-loop5-x", root);
        assert_int_equal(access(path, F_OK), 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup_root, teardown_root)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_read_sysfs_bound),
                T(test_read_sysfs_unbound),
                T(test_read_sysfs_deleted_backing),
                T(test_read_sysfs_high_minor),
                T(test_read_sysfs_missing),
                T(test_read_sysfs_no_diskseq),
                T(test_read_sysfs_garbage),
                T(test_read_sysfs_missing_loop_attr),
                T(test_list),
                T(test_list_empty),
                T(test_name_to_number),
                T(test_validate_range),
                T(test_validate_range_bad),
                T(test_udev_link_ready),
                T(test_detach_stale_fake),
                T(test_read_ids_fake),
                T(test_backing_size),
                T(test_attach_refuses_early),
                T(test_private_nodes_cleanup),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
