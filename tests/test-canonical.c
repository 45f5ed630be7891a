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
#include "test-canonical.h"

/* ---- A fake sysfs tree ---------------------------------------------------------------------- */

char *root;

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

void fake_write(const char *rel, const char *fmt, ...) {
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

void fake_mkdir(const char *rel) {
        _cleanup_free_ char *p = path_join_root(root, rel);

        assert_non_null(p);
        mkdir_parents(p);
        assert_int_equal(mkdir(p, 0755), 0);
}

void fake_block(const char *syspath, dev_t d) {
        char rel[256], target[256];

        (void) snprintf(rel, sizeof(rel), "/sys/%s/dev", syspath);
        fake_write(rel, "%u:%u\n", major(d), minor(d));
        (void) snprintf(rel, sizeof(rel), "/sys/dev/block/%u:%u", major(d), minor(d));
        (void) snprintf(target, sizeof(target), "../../%s", syspath);
        fake_symlink(rel, target);
}

void fake_partition(const char *syspath, dev_t d, unsigned nr, uint64_t start_sectors,
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

void fake_kernel_loop(const char *name, dev_t d, bool bound) {
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

void reg_add(Registry *r, dev_t d, Backing b, uint64_t offset, uint64_t size,
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

int reg_lookup(dev_t devnum, void *userdata, LoopLayerInfo *ret) {
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

Backing file_backing(dev_t d, uint64_t ino) {
        return (Backing){.device = d, .inode = ino};
}

Backing block_backing(dev_t d) {
        return (Backing){.is_block = true, .device = d};
}

Layer request(const char *path) {
        return (Layer){.kind = LAYER_REQUEST, .path = (char *) path};
}

Layer loop_top(const char *name, dev_t d, const char *path) {
        Layer l = {.kind = LAYER_LOOP, .devnum = d, .path = (char *) path};

        (void) snprintf(l.name, sizeof(l.name), "%s", name);
        return l;
}

void assert_lines(const Chain *c, const char *const *expected) {
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

void assert_layer(const Chain *c, size_t i, LayerKind kind, dev_t d, const char *name,
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
