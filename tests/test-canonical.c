/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <linux/dm-ioctl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "blockdev.h"
#include "canonical.h"
#include "util.h"

#define MiB (UINT64_C(1) << 20)

/* ---- A fake sysfs tree ---------------------------------------------------------------------- */

static char *root;

static void mkdir_parents(const char *path) {
        _cleanup_free_ char *p = strdup(path);

        assert_non_null(p);
        for (char *s = strchr(p + 1, '/'); s; s = strchr(s + 1, '/')) {
                *s = '\0';
                if (mkdir(p, 0755) < 0)
                        assert_int_equal(errno, EEXIST);
                *s = '/';
        }
}

static void fake_write(const char *rel, const char *fmt, ...) _printf_(2, 3);
static void fake_write(const char *rel, const char *fmt, ...) {
        _cleanup_free_ char *p = NULL;
        va_list ap;
        FILE *f;

        p = path_join_root(root, rel);
        assert_non_null(p);
        mkdir_parents(p);
        f = fopen(p, "we");
        assert_non_null(f);
        va_start(ap, fmt);
        assert_true(vfprintf(f, fmt, ap) >= 0);
        va_end(ap);
        assert_int_equal(fclose(f), 0);
}

static void fake_symlink(const char *rel, const char *target) {
        _cleanup_free_ char *p = path_join_root(root, rel);

        assert_non_null(p);
        mkdir_parents(p);
        assert_int_equal(symlink(target, p), 0);
}

static void fake_mkdir(const char *rel) {
        _cleanup_free_ char *p = path_join_root(root, rel);

        assert_non_null(p);
        mkdir_parents(p);
        assert_int_equal(mkdir(p, 0755), 0);
}

/* A block device at /sys/<syspath> ("devices/virtual/block/loop0") with its dev attribute and
 * the /sys/dev/block/M:m link, as the kernel lays them out. */
static void fake_block(const char *syspath, dev_t d) {
        char rel[256], target[256];

        (void) snprintf(rel, sizeof(rel), "/sys/%s/dev", syspath);
        fake_write(rel, "%u:%u\n", major(d), minor(d));
        (void) snprintf(rel, sizeof(rel), "/sys/dev/block/%u:%u", major(d), minor(d));
        (void) snprintf(target, sizeof(target), "../../%s", syspath);
        fake_symlink(rel, target);
}

static void fake_partition(const char *syspath, dev_t d, unsigned nr, uint64_t start_sectors,
                           uint64_t size_sectors) {
        char rel[256];

        fake_block(syspath, d);
        (void) snprintf(rel, sizeof(rel), "/sys/%s/partition", syspath);
        fake_write(rel, "%u\n", nr);
        (void) snprintf(rel, sizeof(rel), "/sys/%s/start", syspath);
        fake_write(rel, "%" PRIu64 "\n", start_sectors);
        (void) snprintf(rel, sizeof(rel), "/sys/%s/size", syspath);
        fake_write(rel, "%" PRIu64 "\n", size_sectors);
}

/* A loop device as loop_read_sysfs() reads it (/sys/block/<name> link and attributes). */
static void fake_kernel_loop(const char *name, dev_t d, bool bound) {
        char syspath[128], rel[256], target[256];

        (void) snprintf(syspath, sizeof(syspath), "devices/virtual/block/%s", name);
        fake_block(syspath, d);
        (void) snprintf(rel, sizeof(rel), "/sys/block/%s", name);
        (void) snprintf(target, sizeof(target), "../%s", syspath);
        fake_symlink(rel, target);

#define ATTR(a, ...)                                                                               \
        do {                                                                                       \
                (void) snprintf(rel, sizeof(rel), "/sys/%s/" a, syspath);                          \
                fake_write(rel, __VA_ARGS__);                                                      \
        } while (0)
        ATTR("size", "%u\n", bound ? 2048u : 0u);
        ATTR("ro", "0\n");
        ATTR("diskseq", "17\n");
        ATTR("queue/logical_block_size", "512\n");
        if (bound) {
                ATTR("loop/backing_file", "/var/tmp/k.img\n");
                ATTR("loop/offset", "0\n");
                ATTR("loop/sizelimit", "0\n");
                ATTR("loop/autoclear", "0\n");
                ATTR("loop/partscan", "0\n");
                ATTR("loop/dio", "0\n");
        }
#undef ATTR
}

static int rm_one(const char *p, const struct stat *st, int type, struct FTW *f) {
        return remove(p);
}

static int setup_root(void **state) {
        char t[] = "/tmp/test-canonical-XXXXXX";

        if (!mkdtemp(t))
                return -1;
        root = strdup(t);
        return root ? 0 : -1;
}

static int teardown_root(void **state) {
        if (root)
                (void) nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(root);
        root = NULL;
        return 0;
}

/* ---- A fake registry of loop devices (the manager's lookup) --------------------------------- */

typedef struct FakeLoop {
        dev_t devnum;
        LoopLayerInfo info;
} FakeLoop;

typedef struct Registry {
        FakeLoop loops[64];
        size_t n;
        int fail; /* returned for every look-up when non-zero */
        unsigned calls;
} Registry;

static void reg_add(Registry *r, dev_t d, Backing b, uint64_t offset, uint64_t size,
                    const char *backing_file) {
        assert_true(r->n < ELEMENTSOF(r->loops));
        r->loops[r->n++] = (FakeLoop){
                .devnum = d,
                .info = {.backing = b,
                         .offset = offset,
                         .size = size,
                         .backing_file = backing_file},
        };
}

static int reg_lookup(dev_t devnum, void *userdata, LoopLayerInfo *ret) {
        Registry *r = userdata;

        r->calls++;
        if (r->fail)
                return r->fail;
        for (size_t i = 0; i < r->n; i++)
                if (r->loops[i].devnum == devnum) {
                        *ret = r->loops[i].info;
                        return 1;
                }
        return 0;
}

static Backing file_backing(dev_t d, uint64_t ino) {
        return (Backing){.device = d, .inode = ino};
}

static Backing block_backing(dev_t d) {
        return (Backing){.is_block = true, .device = d};
}

static Layer request(const char *path) {
        return (Layer){.kind = LAYER_REQUEST, .path = (char *) path};
}

static Layer loop_top(const char *name, dev_t d, const char *path) {
        Layer l = {.kind = LAYER_LOOP, .devnum = d, .path = (char *) path};

        (void) snprintf(l.name, sizeof(l.name), "%s", name);
        return l;
}

static void assert_lines(const Chain *c, const char *const *expected) {
        _cleanup_strv_free_ char **lines = NULL;
        size_t n = 0;

        assert_int_equal(chain_format(c, &lines), 0);
        for (; expected[n]; n++) {
                assert_non_null(lines[n]);
                assert_string_equal(lines[n], expected[n]);
        }
        assert_null(lines[n]);
        assert_int_equal(n, c->n_layers);
}

static void assert_layer(const Chain *c, size_t i, LayerKind kind, dev_t d, const char *name,
                         const char *path, uint64_t offset, uint64_t size) {
        const Layer *l;

        assert_true(i < c->n_layers);
        l = &c->layers[i];
        assert_int_equal(l->kind, kind);
        assert_true(l->devnum == d);
        assert_string_equal(l->name, name);
        if (path)
                assert_string_equal(l->path, path);
        else
                assert_null(l->path);
        assert_int_equal(l->offset, offset);
        assert_int_equal(l->size, size);
}

/* ---- Files and loop devices known to the caller -------------------------------------------- */

static void test_file_base(void **state) {
        Layer top = request("/var/tmp/a.img");
        Backing b = file_backing(makedev(254, 1), 42);
        Chain c = {};

        assert_int_equal(chain_resolve(root, &top, &b, 4096, 8192, NULL, NULL, &c), 0);
        assert_int_equal(c.identity.kind, BASE_FILE);
        assert_true(c.identity.base_device == makedev(254, 1));
        assert_int_equal(c.identity.base_inode, 42);
        assert_int_equal(c.identity.offset, 4096);
        assert_int_equal(c.identity.size, 8192);
        assert_int_equal(c.identity.depth, 1);
        assert_int_equal(c.n_layers, 2);
        assert_layer(&c, 0, LAYER_REQUEST, 0, "", "/var/tmp/a.img", 4096, 8192);
        assert_layer(&c, 1, LAYER_BASE_FILE, 0, "", "/var/tmp/a.img", 4096, 8192);
        /* The path is a copy. */
        assert_ptr_not_equal(c.layers[0].path, top.path);
        assert_lines(&c,
                     (const char *const[]){"request: bytes 4096+8192 of /var/tmp/a.img",
                                           "file /var/tmp/a.img (device 254:1, inode 42)", NULL});
        chain_done(&c);
        assert_null(c.layers);
        assert_int_equal(c.n_layers, 0);
        chain_done(&c); /* idempotent */

        /* Without a path, the file is described by its ids. */
        top = request(NULL);
        assert_int_equal(chain_resolve(root, &top, &b, 0, 512, NULL, NULL, &c), 0);
        assert_lines(&c,
                     (const char *const[]){"request: bytes 0+512 of file (device 254:1, inode 42)",
                                           "file (device 254:1, inode 42)", NULL});
        chain_done(&c);
}

static void test_loop_via_lookup(void **state) {
        Registry reg = {};
        Layer top = loop_top("loop5", makedev(7, 5), "/dev/loop3");
        Backing b = block_backing(makedev(7, 3));
        Chain c = {};

        fake_block("devices/virtual/block/loop3", makedev(7, 3));
        reg_add(&reg, makedev(7, 3), file_backing(makedev(254, 1), 1234), MiB, 32 * MiB,
                "/var/tmp/a.img");

        assert_int_equal(chain_resolve(root, &top, &b, 4096, 8192, reg_lookup, &reg, &c), 0);
        assert_int_equal(reg.calls, 1);
        assert_int_equal(c.identity.kind, BASE_FILE);
        assert_true(c.identity.base_device == makedev(254, 1));
        assert_int_equal(c.identity.base_inode, 1234);
        assert_int_equal(c.identity.offset, MiB + 4096);
        assert_int_equal(c.identity.size, 8192);
        assert_int_equal(c.identity.depth, 2);
        assert_int_equal(c.n_layers, 3);
        assert_layer(&c, 0, LAYER_LOOP, makedev(7, 5), "loop5", "/dev/loop3", 4096, 8192);
        assert_layer(&c, 1, LAYER_LOOP, makedev(7, 3), "loop3", "/var/tmp/a.img", MiB + 4096, 8192);
        assert_layer(&c, 2, LAYER_BASE_FILE, 0, "", "/var/tmp/a.img", MiB + 4096, 8192);
        assert_lines(&c,
                     (const char *const[]){"loop5: bytes 4096+8192 of /dev/loop3",
                                           "loop3: bytes 1052672+8192 of /var/tmp/a.img",
                                           "file /var/tmp/a.img (device 254:1, inode 1234)", NULL});

        assert_true(chain_contains(&c, makedev(7, 5)));
        assert_true(chain_contains(&c, makedev(7, 3)));
        assert_false(chain_contains(&c, makedev(7, 4)));
        assert_false(chain_contains(&c, 0));
        assert_false(chain_contains(NULL, makedev(7, 3)));
        chain_done(&c);

        /* The whole of loop3 fits; one byte more does not. */
        assert_int_equal(chain_resolve(root, &top, &b, 0, 32 * MiB, reg_lookup, &reg, &c), 0);
        chain_done(&c);
        assert_int_equal(chain_resolve(root, &top, &b, 1, 32 * MiB, reg_lookup, &reg, &c), -ERANGE);
        assert_int_equal(chain_resolve(root, &top, &b, 32 * MiB, 512, reg_lookup, &reg, &c),
                         -ERANGE);
        assert_null(c.layers);

        /* The caller's error is passed on. */
        reg.fail = -EIO;
        assert_int_equal(chain_resolve(root, &top, &b, 0, 512, reg_lookup, &reg, &c), -EIO);
}

static void test_loop_over_loop_no_sysfs(void **state) {
        /* Devices the caller knows need no sysfs entry; without one they have no name. */
        Registry reg = {};
        Layer top = request(NULL);
        Backing b = block_backing(makedev(7, 1));
        Chain c = {};

        reg_add(&reg, makedev(7, 1), block_backing(makedev(7, 0)), 512, 4096, "/dev/loop0");
        reg_add(&reg, makedev(7, 0), file_backing(makedev(254, 1), 42), 1024, MiB, "/x (deleted)");

        assert_int_equal(chain_resolve(root, &top, &b, 1024, 2048, reg_lookup, &reg, &c), 0);
        assert_int_equal(c.identity.kind, BASE_FILE);
        assert_int_equal(c.identity.base_inode, 42);
        assert_int_equal(c.identity.offset, 1024 + 512 + 1024);
        assert_int_equal(c.identity.depth, 3);
        assert_lines(&c, (const char *const[]){"request: bytes 1024+2048 of block device 7:1",
                                               "loop 7:1: bytes 1536+2048 of block device 7:0",
                                               "loop 7:0: bytes 2560+2048 of /x (deleted)",
                                               "file /x (deleted) (device 254:1, inode 42)", NULL});
        chain_done(&c);

        /* Past the end of the lower device. */
        assert_int_equal(chain_resolve(root, &top, &b, 4096, 512, reg_lookup, &reg, &c), -ERANGE);
}

/* ---- Partitions and opaque block devices ---------------------------------------------------- */

static void test_partition_of_disk(void **state) {
        Layer top = request(NULL);
        Backing b = block_backing(makedev(8, 1));
        Chain c = {};

        fake_block("devices/pci0000:00/host0/block/sda", makedev(8, 0));
        fake_partition("devices/pci0000:00/host0/block/sda/sda1", makedev(8, 1), 1, 2048, 4096);

        assert_int_equal(chain_resolve(root, &top, &b, 512, 4096, NULL, NULL, &c), 0);
        assert_int_equal(c.identity.kind, BASE_BLOCK);
        assert_true(c.identity.base_device == makedev(8, 0));
        assert_int_equal(c.identity.base_inode, 0);
        assert_int_equal(c.identity.offset, MiB + 512);
        assert_int_equal(c.identity.size, 4096);
        assert_int_equal(c.identity.depth, 2);
        assert_layer(&c, 1, LAYER_PARTITION, makedev(8, 1), "sda1", NULL, MiB + 512, 4096);
        assert_layer(&c, 2, LAYER_BASE_BLOCK, makedev(8, 0), "sda", NULL, MiB + 512, 4096);
        assert_lines(&c, (const char *const[]){"request: bytes 512+4096 of /dev/sda1",
                                               "partition sda1: bytes 1049088+4096 of /dev/sda",
                                               "block device sda (8:0)", NULL});
        assert_true(chain_contains(&c, makedev(8, 1)));
        assert_true(chain_contains(&c, makedev(8, 0)));
        chain_done(&c);

        /* The partition is 4096 sectors: its last byte fits, one more does not. */
        assert_int_equal(chain_resolve(root, &top, &b, 4096 * 512 - 1, 1, NULL, NULL, &c), 0);
        assert_int_equal(c.identity.offset, MiB + 4096 * 512 - 1);
        chain_done(&c);
        assert_int_equal(chain_resolve(root, &top, &b, 4096 * 512 - 1, 2, NULL, NULL, &c), -ERANGE);

        /* The whole disk is a base of its own. */
        b = block_backing(makedev(8, 0));
        assert_int_equal(chain_resolve(root, &top, &b, 0, 512, NULL, NULL, &c), 0);
        assert_int_equal(c.n_layers, 2);
        assert_int_equal(c.identity.kind, BASE_BLOCK);
        assert_int_equal(c.identity.depth, 1);
        chain_done(&c);
}

static void test_partition_over_loop(void **state) {
        Registry reg = {};
        Layer top = request(NULL);
        Backing b = block_backing(makedev(259, 0));
        Chain c = {};

        fake_block("devices/virtual/block/loop0", makedev(7, 0));
        fake_partition("devices/virtual/block/loop0/loop0p1", makedev(259, 0), 1, 2048, 4096);
        reg_add(&reg, makedev(7, 0), file_backing(makedev(254, 1), 42), 0, 8 * MiB, "/a.img");

        assert_int_equal(chain_resolve(root, &top, &b, 4096, 8192, reg_lookup, &reg, &c), 0);
        assert_int_equal(c.identity.kind, BASE_FILE);
        assert_int_equal(c.identity.base_inode, 42);
        assert_int_equal(c.identity.offset, MiB + 4096);
        assert_int_equal(c.identity.depth, 3);
        assert_lines(&c,
                     (const char *const[]){"request: bytes 4096+8192 of /dev/loop0p1",
                                           "partition loop0p1: bytes 1052672+8192 of /dev/loop0",
                                           "loop0: bytes 1052672+8192 of /a.img",
                                           "file /a.img (device 254:1, inode 42)", NULL});
        chain_done(&c);

        /* A partition that reaches past its loop device (stale view): -ERANGE on the loop. */
        reg.loops[0].info.size = MiB + 4096;
        assert_int_equal(chain_resolve(root, &top, &b, 4096, 8192, reg_lookup, &reg, &c), -ERANGE);
}

static void test_partition_loop_major(void **state) {
        /* With loop.max_part set, loop partitions have major 7: an unknown 7:x that has a
         * partition attribute is a partition, not a loop device for the kernel fallback. */
        Registry reg = {};
        Layer top = request(NULL);
        Backing b = block_backing(makedev(7, 17));
        Chain c = {};

        fake_block("devices/virtual/block/loop1", makedev(7, 16));
        fake_partition("devices/virtual/block/loop1/loop1p1", makedev(7, 17), 1, 8, 8);
        reg_add(&reg, makedev(7, 16), file_backing(makedev(254, 1), 7), 0, MiB, NULL);

        assert_int_equal(chain_resolve(root, &top, &b, 0, 4096, reg_lookup, &reg, &c), 0);
        assert_int_equal(c.identity.offset, 4096);
        assert_int_equal(c.layers[1].kind, LAYER_PARTITION);
        assert_int_equal(c.layers[2].kind, LAYER_LOOP);
        /* No backing path known: the file layer has none. */
        assert_null(c.layers[3].path);
        assert_lines(&c,
                     (const char *const[]){"request: bytes 0+4096 of /dev/loop1p1",
                                           "partition loop1p1: bytes 4096+4096 of /dev/loop1",
                                           "loop1: bytes 4096+4096 of file (device 254:1, inode 7)",
                                           "file (device 254:1, inode 7)", NULL});
        chain_done(&c);
}

static void test_nested_loop_partition_loop(void **state) {
        /* loop2 over loop0p1 (a partition of loop0) over a file; the request is over loop2. */
        Registry reg = {};
        Layer top = loop_top("loop9", makedev(7, 9), "/dev/loop2");
        Backing b = block_backing(makedev(7, 2));
        Chain c = {};

        fake_block("devices/virtual/block/loop0", makedev(7, 0));
        fake_block("devices/virtual/block/loop2", makedev(7, 2));
        fake_partition("devices/virtual/block/loop0/loop0p1", makedev(259, 3), 1, 2048, 8192);
        reg_add(&reg, makedev(7, 2), block_backing(makedev(259, 3)), 4096, 2 * MiB, "/dev/loop0p1");
        reg_add(&reg, makedev(7, 0), file_backing(makedev(254, 2), 99), 512, 16 * MiB, "/b.img");

        assert_int_equal(chain_resolve(root, &top, &b, 1024, 4096, reg_lookup, &reg, &c), 0);
        assert_int_equal(c.identity.kind, BASE_FILE);
        assert_true(c.identity.base_device == makedev(254, 2));
        assert_int_equal(c.identity.base_inode, 99);
        assert_int_equal(c.identity.offset, 1024 + 4096 + MiB + 512);
        assert_int_equal(c.identity.size, 4096);
        assert_int_equal(c.identity.depth, 4);
        assert_int_equal(c.n_layers, 5);
        assert_layer(&c, 0, LAYER_LOOP, makedev(7, 9), "loop9", "/dev/loop2", 1024, 4096);
        assert_layer(&c, 1, LAYER_LOOP, makedev(7, 2), "loop2", "/dev/loop0p1", 5120, 4096);
        assert_layer(&c, 2, LAYER_PARTITION, makedev(259, 3), "loop0p1", NULL, MiB + 5120, 4096);
        assert_layer(&c, 3, LAYER_LOOP, makedev(7, 0), "loop0", "/b.img", MiB + 5632, 4096);
        assert_layer(&c, 4, LAYER_BASE_FILE, 0, "", "/b.img", MiB + 5632, 4096);
        assert_lines(&c,
                     (const char *const[]){"loop9: bytes 1024+4096 of /dev/loop2",
                                           "loop2: bytes 5120+4096 of /dev/loop0p1",
                                           "partition loop0p1: bytes 1053696+4096 of /dev/loop0",
                                           "loop0: bytes 1054208+4096 of /b.img",
                                           "file /b.img (device 254:2, inode 99)", NULL});
        for (size_t i = 0; i < 4; i++)
                assert_true(chain_contains(&c, c.layers[i].devnum));
        chain_done(&c);
}

static void test_dm_opaque_without_control(void **state) {
        /* This kernel has no device-mapper: a dm device whose table cannot be read is a base. */
        Layer top = request(NULL);
        Backing b = block_backing(makedev(254, 0));
        Chain c = {};

        fake_block("devices/virtual/block/dm-0", makedev(254, 0));
        fake_mkdir("/sys/devices/virtual/block/dm-0/dm");
        assert_int_equal(blockdev_is_dm(root, makedev(254, 0)), 1);

        assert_int_equal(chain_resolve(root, &top, &b, 0, 4096, NULL, NULL, &c), 0);
        assert_int_equal(c.identity.kind, BASE_BLOCK);
        assert_true(c.identity.base_device == makedev(254, 0));
        assert_lines(&c, (const char *const[]){"request: bytes 0+4096 of /dev/dm-0",
                                               "block device dm-0 (254:0)", NULL});
        chain_done(&c);

        /* A control node that is not one (a regular file) degrades the same way. */
        fake_write("/dev/mapper/control", "x");
        assert_int_equal(chain_resolve(root, &top, &b, 0, 4096, NULL, NULL, &c), 0);
        assert_int_equal(c.identity.kind, BASE_BLOCK);
        assert_int_equal(c.n_layers, 2);
        chain_done(&c);
}

/* ---- Kernel fallback in a fake tree --------------------------------------------------------- */

static void test_kernel_fallback_unbound(void **state) {
        Layer top = request(NULL);
        Backing b = block_backing(makedev(7, 6));
        Chain c = {};

        fake_kernel_loop("loop6", makedev(7, 6), false);
        assert_int_equal(chain_resolve(root, &top, &b, 0, 512, NULL, NULL, &c), -ENXIO);

        /* Bound in sysfs but no device node to ask LOOP_GET_STATUS64: it is gone for us. */
        fake_kernel_loop("loop7", makedev(7, 7), true);
        b = block_backing(makedev(7, 7));
        assert_int_equal(chain_resolve(root, &top, &b, 0, 512, NULL, NULL, &c), -ENOENT);
}

static void test_vanished_device(void **state) {
        Registry reg = {};
        Layer top = request(NULL);
        Backing b = block_backing(makedev(8, 32));
        Chain c = {};

        /* Neither in sysfs nor known: gone. */
        assert_int_equal(chain_resolve(root, &top, &b, 0, 512, NULL, NULL, &c), -ENOENT);
        b = block_backing(makedev(7, 12));
        assert_int_equal(chain_resolve(root, &top, &b, 0, 512, reg_lookup, &reg, &c), -ENOENT);
        assert_int_equal(reg.calls, 1);
}

/* ---- Errors -------------------------------------------------------------------------------- */

static void test_invalid(void **state) {
        Layer top = request(NULL);
        Backing b = file_backing(makedev(254, 1), 42);
        Chain c = {};

        assert_int_equal(chain_resolve(root, &top, &b, 0, 0, NULL, NULL, &c), -EINVAL);
        assert_int_equal(chain_resolve(root, NULL, &b, 0, 1, NULL, NULL, &c), -EINVAL);
        assert_int_equal(chain_resolve(root, &top, NULL, 0, 1, NULL, NULL, &c), -EINVAL);
        assert_int_equal(chain_resolve(root, &top, &b, 0, 1, NULL, NULL, NULL), -EINVAL);
        assert_int_equal(chain_format(NULL, NULL), -EINVAL);
}

static void test_overflow(void **state) {
        Registry reg = {};
        Layer top = request(NULL);
        Backing f = file_backing(makedev(254, 1), 42);
        Backing b = block_backing(makedev(7, 0));
        Chain c = {};

        assert_int_equal(chain_resolve(root, &top, &f, UINT64_MAX - 10, 100, NULL, NULL, &c),
                         -EOVERFLOW);
        assert_int_equal(chain_resolve(root, &top, &f, UINT64_MAX - 100, 100, NULL, NULL, &c), 0);
        chain_done(&c);

        /* A loop whose offset pushes the range past 2^64. */
        reg_add(&reg, makedev(7, 0), f, UINT64_MAX - 4096, UINT64_MAX, NULL);
        assert_int_equal(chain_resolve(root, &top, &b, 4097, 512, reg_lookup, &reg, &c),
                         -EOVERFLOW);
        /* The start maps, but the end would not be addressable below. */
        assert_int_equal(chain_resolve(root, &top, &b, 4000, 512, reg_lookup, &reg, &c),
                         -EOVERFLOW);
        assert_int_equal(chain_resolve(root, &top, &b, 0, 4096, reg_lookup, &reg, &c), 0);
        assert_int_equal(c.identity.offset, UINT64_MAX - 4096);
        chain_done(&c);

        /* A partition start at the end of 64 bits. */
        fake_block("devices/virtual/block/vda", makedev(252, 0));
        fake_partition("devices/virtual/block/vda/vda1", makedev(252, 1), 1, UINT64_MAX / 512, 16);
        b = block_backing(makedev(252, 1));
        assert_int_equal(chain_resolve(root, &top, &b, 0, 4096, NULL, NULL, &c), -EOVERFLOW);
}

static void test_cycle(void **state) {
        Registry reg = {};
        Layer top = request(NULL);
        Backing b = block_backing(makedev(7, 1));
        Chain c = {};

        /* loop1 -> loop2 -> loop1 */
        reg_add(&reg, makedev(7, 1), block_backing(makedev(7, 2)), 0, MiB, NULL);
        reg_add(&reg, makedev(7, 2), block_backing(makedev(7, 1)), 0, MiB, NULL);
        assert_int_equal(chain_resolve(root, &top, &b, 0, 512, reg_lookup, &reg, &c), -ELOOP);

        /* The top's own device counts: loop3 described over loop4, which is over loop3. */
        reg.n = 0;
        reg_add(&reg, makedev(7, 4), block_backing(makedev(7, 3)), 0, MiB, NULL);
        top = loop_top("loop3", makedev(7, 3), NULL);
        b = block_backing(makedev(7, 4));
        assert_int_equal(chain_resolve(root, &top, &b, 0, 512, reg_lookup, &reg, &c), -ELOOP);

        /* A loop device over itself. */
        b = block_backing(makedev(7, 3));
        assert_int_equal(chain_resolve(root, &top, &b, 0, 512, reg_lookup, &reg, &c), -ELOOP);

        /* A partition whose "parent" link points back at a loop device above it. */
        reg.n = 0;
        fake_block("devices/virtual/block/loop5", makedev(7, 5));
        fake_partition("devices/virtual/block/loop5/loop5p1", makedev(259, 5), 1, 0, 2048);
        reg_add(&reg, makedev(7, 5), block_backing(makedev(259, 5)), 0, MiB, NULL);
        top = request(NULL);
        b = block_backing(makedev(7, 5));
        assert_int_equal(chain_resolve(root, &top, &b, 0, 512, reg_lookup, &reg, &c), -ELOOP);
}

static void test_depth_limit(void **state) {
        Registry reg = {};
        Layer top = request(NULL);
        Backing b;
        Chain c = {};

        /* loop0 over a file, loop(i+1) over loop(i), each 512 bytes in. */
        reg_add(&reg, makedev(7, 0), file_backing(makedev(254, 1), 42), 512, MiB, NULL);
        for (unsigned i = 1; i < 40; i++)
                reg_add(&reg, makedev(7, i), block_backing(makedev(7, i - 1)), 512, MiB, NULL);

        /* request + k loops = k + 1 layers above the file. */
        for (unsigned k = 1; k < 40; k++) {
                int r;

                b = block_backing(makedev(7, k - 1));
                r = chain_resolve(root, &top, &b, 0, 4096, reg_lookup, &reg, &c);
                if (k + 1 <= CHAIN_MAX_DEPTH) {
                        assert_int_equal(r, 0);
                        assert_int_equal(c.identity.depth, k + 1);
                        assert_int_equal(c.n_layers, k + 2);
                        assert_int_equal(c.identity.offset, 512 * k);
                        chain_done(&c);
                } else
                        assert_int_equal(r, -ELOOP);
        }
}

/* ---- Device-mapper tables -------------------------------------------------------------------- */

static void test_dm_linear_params(void **state) {
        dev_t d;
        uint64_t s;

        assert_int_equal(dm_linear_parse_params("8:16 2048", &d, &s), 0);
        assert_true(d == makedev(8, 16));
        assert_int_equal(s, 2048);
        assert_int_equal(dm_linear_parse_params("259:1048575 0", &d, &s), 0);
        assert_true(d == makedev(259, 1048575));

        assert_int_equal(dm_linear_parse_params("/dev/sdb 2048", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("8:16", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("8:16 ", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params(" 8:16 0", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("8:16 2048 1", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("8:16 -1", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("4096:0 0", &d, &s), -EINVAL);
        assert_int_equal(dm_linear_parse_params("8:16 18446744073709551615", &d, &s), -EOVERFLOW);
}

static void test_dm_map(void **state) {
        DmTarget targets[] = {
                {.start = 0, .length = 2048, .type = "linear", .params = (char *) "8:16 4096"},
                {.start = 2048, .length = 2048, .type = "linear", .params = (char *) "8:32 0"},
                {.start = 4096,
                 .length = 2048,
                 .type = "striped",
                 .params = (char *) "2 128 8:16 0 8:32 0"},
                /* a hole of 2048 sectors, then: */
                {.start = 8192, .length = 1024, .type = "linear", .params = (char *) "/dev/x 0"},
        };
        DmTable t = {.targets = targets, .n_targets = ELEMENTSOF(targets)};
        DmTable one = {.targets = targets, .n_targets = 1};
        dev_t d;
        uint64_t o;

        /* Single linear target. */
        assert_int_equal(dm_table_map(&one, 512, 4096, &d, &o), 1);
        assert_true(d == makedev(8, 16));
        assert_int_equal(o, 4096 * 512 + 512);
        assert_int_equal(dm_table_map(&one, 2048 * 512 - 512, 512, &d, &o), 1);
        /* Past its end: nothing maps it. */
        assert_int_equal(dm_table_map(&one, 2048 * 512 - 512, 1024, &d, &o), 0);

        /* Second of several. */
        assert_int_equal(dm_table_map(&t, 2048 * 512, 2048 * 512, &d, &o), 1);
        assert_true(d == makedev(8, 32));
        assert_int_equal(o, 0);
        assert_int_equal(dm_table_map(&t, 2048 * 512 + 4096, 512, &d, &o), 1);
        assert_int_equal(o, 4096);

        /* Spanning the first two linear targets: opaque. */
        assert_int_equal(dm_table_map(&t, 2048 * 512 - 512, 1024, &d, &o), 0);
        /* A non-linear target: opaque. */
        assert_int_equal(dm_table_map(&t, 4096 * 512, 512, &d, &o), 0);
        /* A hole: opaque. */
        assert_int_equal(dm_table_map(&t, 7000 * 512, 512, &d, &o), 0);
        /* Linear with params we cannot parse: opaque. */
        assert_int_equal(dm_table_map(&t, 8192 * 512, 512, &d, &o), 0);
        /* Empty table. */
        DmTable empty = {};
        assert_int_equal(dm_table_map(&empty, 0, 512, &d, &o), 0);

        assert_int_equal(dm_table_map(&t, 0, 0, &d, &o), -EINVAL);
        assert_int_equal(dm_table_map(&t, UINT64_MAX, 2, &d, &o), -EOVERFLOW);

        DmTarget big[] = {
                {.start = 0,
                 .length = 16,
                 .type = "linear",
                 .params = (char *) "8:0 36028797018963967"}, /* (2^64 - 1) / 512 */
        };
        DmTable tb = {.targets = big, .n_targets = 1};
        assert_int_equal(dm_table_map(&tb, 1024, 512, &d, &o), -EOVERFLOW);
}

/* Lays out a DM_TABLE_STATUS data area as drivers/md/dm-ioctl.c:retrieve_status() does. */
static size_t put_target(uint8_t *buf, size_t pos, uint64_t start, uint64_t len, const char *type,
                         const char *params) {
        struct dm_target_spec spec = {.sector_start = start, .length = len};
        size_t l = strlen(params) + 1, next;

        (void) snprintf(spec.target_type, sizeof(spec.target_type), "%s", type);
        next = (pos + sizeof(spec) + l + 7) & ~(size_t) 7;
        spec.next = (uint32_t) next;
        memcpy(buf + pos, &spec, sizeof(spec));
        memcpy(buf + pos + sizeof(spec), params, l);
        return next;
}

static void test_dm_table_parse(void **state) {
        _Alignas(8) uint8_t buf[1024] = {};
        DmTable t = {};
        size_t end;

        end = put_target(buf, 0, 0, 2048, "linear", "8:16 2048");
        end = put_target(buf, end, 2048, 100, "zero", "");
        assert_int_equal(dm_table_parse(buf, end, 2, &t), 0);
        assert_int_equal(t.n_targets, 2);
        assert_string_equal(t.targets[0].type, "linear");
        assert_string_equal(t.targets[0].params, "8:16 2048");
        assert_int_equal(t.targets[0].length, 2048);
        assert_string_equal(t.targets[1].type, "zero");
        assert_string_equal(t.targets[1].params, "");
        assert_int_equal(t.targets[1].start, 2048);
        dm_table_done(&t);
        assert_null(t.targets);

        /* No targets. */
        assert_int_equal(dm_table_parse(NULL, 0, 0, &t), 0);
        assert_int_equal(t.n_targets, 0);
        dm_table_done(&t);

        /* Truncated: the params string has no NUL inside the buffer. */
        end = put_target(buf, 0, 0, 2048, "linear", "8:16 2048");
        assert_int_equal(dm_table_parse(buf, sizeof(struct dm_target_spec) + 4, 1, &t), -EBADMSG);
        /* More targets claimed than present. */
        assert_int_equal(dm_table_parse(buf, end, 2, &t), -EBADMSG);
        assert_int_equal(dm_table_parse(buf, end, 1000000, &t), -EBADMSG);
        /* A "next" that does not move forward. */
        ((struct dm_target_spec *) buf)->next = 0;
        (void) put_target(buf, end, 2048, 1, "linear", "8:0 0");
        assert_int_equal(dm_table_parse(buf, sizeof(buf), 2, &t), -EBADMSG);
        /* A zero-length target. */
        (void) put_target(buf, 0, 0, 0, "linear", "8:0 0");
        assert_int_equal(dm_table_parse(buf, sizeof(buf), 1, &t), -EBADMSG);
}

/* ---- Identity predicates --------------------------------------------------------------------- */

static void test_identity_predicates(void **state) {
        Identity a = {.kind = BASE_FILE,
                      .base_device = makedev(254, 1),
                      .base_inode = 42,
                      .offset = 4096,
                      .size = 4096,
                      .depth = 1};
        Identity b = a, blk = a;

        b.depth = 3;
        assert_true(identity_same_base(&a, &b));
        assert_true(identity_equal_range(&a, &b));
        assert_true(identity_intersect(&a, &b));

        b.offset = 8192; /* adjacent */
        assert_false(identity_intersect(&a, &b));
        assert_false(identity_intersect(&b, &a));
        assert_false(identity_equal_range(&a, &b));
        b.offset = 8191;
        assert_true(identity_intersect(&a, &b));
        assert_true(identity_intersect(&b, &a));
        b.offset = 0; /* adjacent below */
        assert_false(identity_intersect(&a, &b));
        b.size = 4097;
        assert_true(identity_intersect(&a, &b));

        b.base_inode = 43;
        assert_false(identity_same_base(&a, &b));
        assert_false(identity_intersect(&a, &b));

        /* A block device and a file with the same numbers are different bases. */
        blk.kind = BASE_BLOCK;
        assert_false(identity_same_base(&a, &blk));
        assert_false(identity_intersect(&a, &blk));
}

/* ---- Real devices (root) --------------------------------------------------------------------- */

typedef struct Real {
        char dir[64];
        char image[96];
        char loop[32];  /* /dev/loopN over the image */
        char upper[32]; /* /dev/loopM over /dev/loopNp1 */
        bool partition;
} Real;

static Real real;

static int run(const char *fmt, ...) _printf_(1, 2);
static int run(const char *fmt, ...) {
        _cleanup_free_ char *cmd = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&cmd, fmt, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        r = system(cmd);
        return r == 0 ? 0 : -EIO;
}

static int run_read(char *buf, size_t size, const char *cmd) {
        FILE *p = popen(cmd, "re");
        size_t n;

        if (!p)
                return -errno;
        n = fread(buf, 1, size - 1, p);
        buf[n] = '\0';
        if (pclose(p) != 0)
                return -EIO;
        buf[strcspn(buf, "\n")] = '\0';
        return n > 0 ? 0 : -EIO;
}

static void real_detach(const char *node) {
        /* The kernel may hold the device briefly (udev probing): retry. */
        for (unsigned i = 0; i < 50; i++) {
                if (run("losetup -d %s 2>/dev/null", node) == 0)
                        return;
                (void) usleep(100 * 1000);
        }
}

static int setup_real(void **state) {
        real = (Real){};
        if (geteuid() != 0 || access("/dev/loop-control", W_OK) < 0)
                return 0; /* the test skips */

        (void) snprintf(real.dir, sizeof(real.dir), "/var/tmp/test-canonical-XXXXXX");
        if (!mkdtemp(real.dir))
                return -1;
        (void) snprintf(real.image, sizeof(real.image), "%s/a.img", real.dir);
        if (run("truncate -s 8M %s", real.image) < 0)
                return -1;
        return 0;
}

static int teardown_real(void **state) {
        if (real.upper[0])
                real_detach(real.upper);
        if (real.partition) {
                for (unsigned i = 0; i < 50; i++) {
                        if (run("delpart %s 1 2>/dev/null", real.loop) == 0)
                                break;
                        (void) usleep(100 * 1000);
                }
        }
        if (real.loop[0])
                real_detach(real.loop);
        if (real.image[0])
                (void) unlink(real.image);
        if (real.dir[0])
                (void) rmdir(real.dir);
        return 0;
}

static dev_t sysfs_devnum(const char *syspath) {
        _cleanup_free_ char *s = NULL;
        dev_t d = 0;

        assert_int_equal(read_one_line_file(syspath, &s), 0);
        assert_int_equal(parse_devnum(s, &d), 0);
        return d;
}

static void test_real_partition_over_loop(void **state) {
        char path[256], cmd[512];
        const char *name, *uname;
        struct stat st;
        Layer top = request(NULL);
        Backing b;
        Chain c = {};
        dev_t part, loopdev, upperdev;

        if (!real.dir[0])
                skip();

        assert_int_equal(stat(real.image, &st), 0);
        (void) snprintf(cmd, sizeof(cmd), "losetup --show -f %s", real.image);
        assert_int_equal(run_read(real.loop, sizeof(real.loop), cmd), 0);
        name = real.loop + strlen("/dev/");

        /* 2048 sectors in (1 MiB), 4096 sectors long (2 MiB). No partition table parsers on
         * this kernel, so BLKPG it is. */
        assert_int_equal(run("addpart %s 1 2048 4096", real.loop), 0);
        real.partition = true;

        (void) snprintf(path, sizeof(path), "/sys/block/%s/%sp1/dev", name, name);
        part = sysfs_devnum(path);
        (void) snprintf(path, sizeof(path), "/sys/block/%s/dev", name);
        loopdev = sysfs_devnum(path);

        /* Nothing known to a caller: the kernel fallback describes the loop device. */
        b = block_backing(part);
        assert_int_equal(chain_resolve(NULL, &top, &b, 4096, 8192, NULL, NULL, &c), 0);
        assert_int_equal(c.identity.kind, BASE_FILE);
        assert_true(c.identity.base_device == st.st_dev);
        assert_int_equal(c.identity.base_inode, st.st_ino);
        assert_int_equal(c.identity.offset, MiB + 4096);
        assert_int_equal(c.identity.size, 8192);
        assert_int_equal(c.identity.depth, 3);
        assert_int_equal(c.n_layers, 4);
        assert_int_equal(c.layers[1].kind, LAYER_PARTITION);
        assert_true(c.layers[1].devnum == part);
        assert_int_equal(c.layers[2].kind, LAYER_LOOP);
        assert_true(c.layers[2].devnum == loopdev);
        assert_string_equal(c.layers[2].name, name);
        assert_string_equal(c.layers[2].path, real.image);
        assert_string_equal(c.layers[3].path, real.image);
        chain_done(&c);

        /* Past the end of the partition. */
        assert_int_equal(chain_resolve(NULL, &top, &b, 2 * MiB - 4096, 8192, NULL, NULL, &c),
                         -ERANGE);

        /* A loop device over the partition, 64 KiB in: the kernel reports its backing as a
         * block device (lo_rdevice), and the walk goes through the partition. */
        (void) snprintf(cmd, sizeof(cmd), "losetup --show -f -o 65536 %sp1", real.loop);
        assert_int_equal(run_read(real.upper, sizeof(real.upper), cmd), 0);
        uname = real.upper + strlen("/dev/");
        (void) snprintf(path, sizeof(path), "/sys/block/%s/dev", uname);
        upperdev = sysfs_devnum(path);

        b = block_backing(upperdev);
        assert_int_equal(chain_resolve(NULL, &top, &b, 512, 512, NULL, NULL, &c), 0);
        assert_int_equal(c.identity.kind, BASE_FILE);
        assert_int_equal(c.identity.base_inode, st.st_ino);
        assert_int_equal(c.identity.offset, MiB + 65536 + 512);
        assert_int_equal(c.identity.depth, 4);
        assert_true(chain_contains(&c, upperdev));
        assert_true(chain_contains(&c, part));
        assert_true(chain_contains(&c, loopdev));
        chain_done(&c);

        /* Unlinked: the identity comes from (st_dev, st_ino), never from the path. */
        assert_int_equal(unlink(real.image), 0);
        assert_int_equal(chain_resolve(NULL, &top, &b, 512, 512, NULL, NULL, &c), 0);
        assert_true(c.identity.base_device == st.st_dev);
        assert_int_equal(c.identity.base_inode, st.st_ino);
        assert_int_equal(c.identity.offset, MiB + 65536 + 512);
        assert_non_null(strstr(c.layers[c.n_layers - 1].path, "(deleted)"));
        chain_done(&c);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_file_base, setup_root, teardown_root),
                cmocka_unit_test_setup_teardown(test_loop_via_lookup, setup_root, teardown_root),
                cmocka_unit_test_setup_teardown(test_loop_over_loop_no_sysfs, setup_root,
                                                teardown_root),
                cmocka_unit_test_setup_teardown(test_partition_of_disk, setup_root, teardown_root),
                cmocka_unit_test_setup_teardown(test_partition_over_loop, setup_root,
                                                teardown_root),
                cmocka_unit_test_setup_teardown(test_partition_loop_major, setup_root,
                                                teardown_root),
                cmocka_unit_test_setup_teardown(test_nested_loop_partition_loop, setup_root,
                                                teardown_root),
                cmocka_unit_test_setup_teardown(test_dm_opaque_without_control, setup_root,
                                                teardown_root),
                cmocka_unit_test_setup_teardown(test_kernel_fallback_unbound, setup_root,
                                                teardown_root),
                cmocka_unit_test_setup_teardown(test_vanished_device, setup_root, teardown_root),
                cmocka_unit_test_setup_teardown(test_invalid, setup_root, teardown_root),
                cmocka_unit_test_setup_teardown(test_overflow, setup_root, teardown_root),
                cmocka_unit_test_setup_teardown(test_cycle, setup_root, teardown_root),
                cmocka_unit_test_setup_teardown(test_depth_limit, setup_root, teardown_root),
                cmocka_unit_test(test_dm_linear_params),
                cmocka_unit_test(test_dm_map),
                cmocka_unit_test(test_dm_table_parse),
                cmocka_unit_test(test_identity_predicates),
                cmocka_unit_test_setup_teardown(test_real_partition_over_loop, setup_real,
                                                teardown_real),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
