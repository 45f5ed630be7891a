/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-canonical's tests of chains: files and loop devices known to the caller, partitions and
 * opaque block devices, the kernel fallback in a fake tree, errors. */

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
#include "test-canonical.h"

/* ---- Files and loop devices known to the caller -------------------------------------------- */

void test_file_base(void **state) {
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

void test_loop_via_lookup(void **state) {
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

void test_loop_over_loop_no_sysfs(void **state) {
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

void test_partition_of_disk(void **state) {
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

void test_partition_over_loop(void **state) {
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

void test_partition_loop_major(void **state) {
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

void test_nested_loop_partition_loop(void **state) {
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

void test_dm_opaque_without_control(void **state) {
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

void test_kernel_fallback_unbound(void **state) {
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

void test_vanished_device(void **state) {
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

void test_invalid(void **state) {
        Layer top = request(NULL);
        Backing b = file_backing(makedev(254, 1), 42);
        Chain c = {};

        assert_int_equal(chain_resolve(root, &top, &b, 0, 0, NULL, NULL, &c), -EINVAL);
        assert_int_equal(chain_resolve(root, NULL, &b, 0, 1, NULL, NULL, &c), -EINVAL);
        assert_int_equal(chain_resolve(root, &top, NULL, 0, 1, NULL, NULL, &c), -EINVAL);
        assert_int_equal(chain_resolve(root, &top, &b, 0, 1, NULL, NULL, NULL), -EINVAL);
        assert_int_equal(chain_format(NULL, NULL), -EINVAL);
}

void test_overflow(void **state) {
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

void test_cycle(void **state) {
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

void test_depth_limit(void **state) {
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
