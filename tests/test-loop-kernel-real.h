/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-loop-kernel-real share: the ioctl counters, the fixture's state
 * and helpers, and its tests. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop-kernel.h"

/* Calls counted by the ioctl() interposition, and what the kernel was handed by the last
 * LOOP_CONFIGURE/LOOP_SET_FD. */
extern unsigned n_loop_configure, n_loop_set_fd, n_loop_clr_fd;
extern int last_backing_fd, last_backing_flags;

extern char *real_dir;  /* on a file system that does O_DIRECT, or NULL */
extern char *any_dir;   /* where images go when the fs does not matter */
extern char *tmpfs_dir; /* on tmpfs, or NULL */

#define MiB (1024ULL * 1024ULL)

extern bool fake_no_loop_configure;
extern bool fake_set_status_fails;

extern bool udev_running;

typedef struct Attached {
        char name[16];
        uint64_t diskseq;
} Attached;

typedef struct Fixture {
        Attached devices[16];
        size_t n_devices;
        int fds[16];
        size_t n_fds;
} Fixture;

uint64_t now_usec(void);
void sleep_ms(unsigned ms);
bool fs_is_tmpfs(const char *path);

/* Whether a file in dir can be opened with O_DIRECT. */
bool fs_does_odirect(const char *dir);

char *make_tmpdir(const char *parent);
void rm_rf(const char *dir);

void track_device(Fixture *f, const LoopStatus *s);
int track_fd(Fixture *f, int fd);
void untrack_fd(Fixture *f, int fd);

/* Waits until <name> no longer carries diskseq; returns whether it happened in time. */
bool wait_gone(const char *name, uint64_t diskseq, unsigned timeout_ms);

void detach_and_wait(const char *name, uint64_t diskseq);
bool backed_by_dir(const LoopStatus *s, const char *dir);

/* Number of devices whose sysfs backing_file is exactly path. */
size_t count_devices_backed_by(const char *path);

/* Number of devices bound to files in our directories. */
size_t count_our_devices(void);

char *make_image(const char *dir, const char *name, uint64_t size);
void wait_udev(const LoopStatus *s);
int attach(Fixture *f, int fd, const LoopConfig *c, LoopStatus *ret);
void check_against_sysfs(const LoopStatus *s);
void check_node(const LoopStatus *s);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_attach_basic(void **state);
void test_partscan_table(void **state);
void test_partscan_no_table(void **state);
void test_no_hold_without_partscan(void **state);
void test_attach_timing(void **state);
void test_offset_size_limit(void **state);
void test_bad_range_creates_nothing(void **state);
void test_read_only_fd(void **state);
void test_sector_size_4096(void **state);
void test_direct_io_real_fs(void **state);
void test_direct_io_caller_odirect_off(void **state);
void test_direct_io_tmpfs(void **state);
void test_direct_io_on_refused_over_4k(void **state);
void test_detach_returns_1(void **state);
void test_detach_held_open(void **state);
void test_detach_nowait_locked(void **state);
void test_detach_nowait_unlocked(void **state);
void test_detach_wrong_diskseq(void **state);
void test_open_binding(void **state);
void test_set_capacity(void **state);
void test_set_autoclear(void **state);
void test_attach_autoclear(void **state);
void test_partscan(void **state);
void test_detach_deletes_partitions(void **state);
void test_deleted_backing(void **state);
void test_legacy_path(void **state);
void test_failure_after_configure_clears(void **state);
void test_loop_over_loop(void **state);
void test_locked_free_device_skipped(void **state);
void test_attach_hint(void **state);
