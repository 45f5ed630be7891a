/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-canonical share: the fake sysfs tree, the fake registry of loop
 * devices, the helpers that build and check chains, and its tests. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "blockdev.h"
#include "canonical.h"
#include "util.h"

#define MiB (UINT64_C(1) << 20)

extern char *root; /* the fake tree, a fresh directory per test */
void fake_write(const char *rel, const char *fmt, ...) _printf_(2, 3);
void fake_mkdir(const char *rel);

/* A block device at /sys/<syspath> ("devices/virtual/block/loop0") with its dev attribute and
 * the /sys/dev/block/M:m link, as the kernel lays them out. */
void fake_block(const char *syspath, dev_t d);

void fake_partition(const char *syspath, dev_t d, unsigned nr, uint64_t start_sectors,
                    uint64_t size_sectors);

/* A loop device as loop_read_sysfs() reads it (/sys/block/<name> link and attributes). */
void fake_kernel_loop(const char *name, dev_t d, bool bound);

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

void reg_add(Registry *r, dev_t d, Backing b, uint64_t offset, uint64_t size,
             const char *backing_file);

int reg_lookup(dev_t devnum, void *userdata, LoopLayerInfo *ret);
Backing file_backing(dev_t d, uint64_t ino);
Backing block_backing(dev_t d);
Layer request(const char *path);
Layer loop_top(const char *name, dev_t d, const char *path);
void assert_lines(const Chain *c, const char *const *expected);

void assert_layer(const Chain *c, size_t i, LayerKind kind, dev_t d, const char *name,
                  const char *path, uint64_t offset, uint64_t size);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_file_base(void **state);
void test_loop_via_lookup(void **state);
void test_loop_over_loop_no_sysfs(void **state);
void test_partition_of_disk(void **state);
void test_partition_over_loop(void **state);
void test_partition_loop_major(void **state);
void test_nested_loop_partition_loop(void **state);
void test_dm_opaque_without_control(void **state);
void test_kernel_fallback_unbound(void **state);
void test_vanished_device(void **state);
void test_invalid(void **state);
void test_overflow(void **state);
void test_cycle(void **state);
void test_depth_limit(void **state);
void test_dm_linear_params(void **state);
void test_dm_map(void **state);
void test_dm_table_parse(void **state);
void test_identity_predicates(void **state);
