/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-aliases share: constants, helpers, and its tests. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "integration-util.h"

#define MiB (1024ULL * 1024ULL)
#define KiB 1024ULL

/* How long the daemon may take to learn of something through udev. */
#define SIGNAL_TIMEOUT (2 * USEC_PER_SEC)

#define ATTACH_OK(e, path, flags, a, ...)                                                          \
        do {                                                                                       \
                _cleanup_bus_error_ sd_bus_error _err = SD_BUS_ERROR_NULL;                         \
                int _r = attach_file((e), (path), (flags), &_err, (a), __VA_ARGS__);               \
                assert_bus_ok(_r, &_err, "Attach");                                                \
        } while (0)

#define PROPS_OK(e, object, p)                                                                     \
        do {                                                                                       \
                _cleanup_bus_error_ sd_bus_error _err = SD_BUS_ERROR_NULL;                         \
                int _r = device_props_get((e), (object), &_err, (p));                              \
                assert_bus_ok(_r, &_err, "GetAll");                                                \
                if ((p)->type_errors)                                                              \
                        fail_msg("wrong property types on %s: %s", (object), (p)->type_errors);    \
        } while (0)

/* The attach must have failed with `name`; says what it got instead. */
void expect_error_impl(int r, const sd_bus_error *error, const Attached *got, const char *what,
                       const char *name, const char *file, int line);

#define expect_error(r, error, got, what, name)                                                    \
        expect_error_impl((r), (error), (got), (what), (name), __FILE__, __LINE__)

/* Whether `word` occurs in `s` not as part of a longer name ("loop1" is not in "loop12" nor
 * in "loop1p1"). */
bool has_word(const char *s, const char *word);

void message_names_impl(const sd_bus_error *error, const char *word, const char *what,
                        const char *file, int line);

#define message_names(error, word, what)                                                           \
        message_names_impl((error), (word), (what), __FILE__, __LINE__)

bool strv_has_word(char **l, const char *word);
bool strv_has_substring(char **l, const char *s);
char *strv_join(char **l);

/* The chain (Chain property or Resolve's) has at least `min` lines and names every word. */
void chain_names_impl(char **chain, size_t n, size_t min, const char *what,
                      const char *const *words, const char *file, int line);

#define chain_names(chain, n, min, what, ...)                                                      \
        chain_names_impl((chain), (n), (min), (what), (const char *const[]){__VA_ARGS__, NULL},    \
                         __FILE__, __LINE__)

void detach_expect(Env *e, const char *object, const char *expected_state);

/* Drops the last reference: the binding must be gone when Detach says "detached". */
void detach_gone(Env *e, const Attached *a);

uint32_t references_of(Env *e, const char *object);

void expect_references_impl(Env *e, const char *object, uint32_t expected, const char *what,
                            const char *file, int line);

#define expect_references(e, object, expected, what)                                               \
        expect_references_impl((e), (object), (expected), (what), __FILE__, __LINE__)

char *make_image(Env *e, uint64_t size);

/* loopmgrctl ARGS...; the exit status. */
int ctl(Env *e, char **ret_out, char **ret_err, const char *arg, ...);

#define CTL_OK(e, ...)                                                                             \
        do {                                                                                       \
                _cleanup_free_ char *_o = NULL, *_e = NULL;                                        \
                int _r = ctl((e), &_o, &_e, __VA_ARGS__, NULL);                                    \
                if (_r != 0)                                                                       \
                        fail_msg("loopmgrctl %s: exit %d, expected 0%s\nstdout: %s\nstderr: %s",   \
                                 #__VA_ARGS__, _r,                                                 \
                                 _r == 2 ? " (2 is a usage error: is this verb implemented?)"      \
                                         : "",                                                     \
                                 _o ?: "", _e ?: "");                                              \
        } while (0)

void mkfs_ext4(const char *target);
void write_file_at(const char *dir, const char *name, const char *content);

/* Lines of `losetup -j FILE`: the devices util-linux sees over the file (dev/inode). */
size_t losetup_j_count(const char *path);

void expect_losetup_j(const char *path, size_t expected, const char *what);

/* The mount (tracked for the teardown) must succeed. */
void mount_ok(Env *e, const char *source, const char *target, const char *fstype,
              unsigned long flags);

void umount_ok(Env *e, const char *target);

char *add_partition(Env *e, const Attached *a, unsigned partno, uint64_t start_sector,
                    uint64_t n_sectors);

void delete_partition(Env *e, const Attached *a, unsigned partno);

/* losetup --find --show FILE behind the daemon's back; tracked. Returns the node. */
char *losetup_foreign(Env *e, const char *path, const char *extra, uint64_t *ret_diskseq);

/* GetDevice(node) until the daemon knows the device (it learns of foreign ones via udev). */
char *object_for_node(Env *e, const char *node);

bool strv_contains(char **l, const char *s);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_same_file_other_names(void **state);
void test_ranges(void **state);
void test_size_limit_zero_is_to_the_end(void **state);
void test_loop_over_idle_loop(void **state);
void test_loop_over_mounted_loop(void **state);
void test_loop_over_partition(void **state);
void test_mounted_device(void **state);
void test_mounted_foreign_device(void **state);
void test_foreign_aliases(void **state);
void test_foreign_reuse(void **state);
void test_foreign_reuse_immediate(void **state);
void test_concurrent_attach_16(void **state);
void test_btrfs_subvolumes(void **state);
void test_ext4_attached_twice(void **state);
void test_resolve_partition_chain(void **state);
