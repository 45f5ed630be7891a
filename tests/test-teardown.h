/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-teardown share: timeouts, the children a test started, the helpers
 * (attach, mounts, openers, signals, states, pending detaches), and its tests. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "integration-util.h"
#include "loopmgr-bus.h"

#define MiB (1024ULL * 1024ULL)

/* How long the daemon may take to learn of something through udev. */
#define SIGNAL_TIMEOUT (2 * USEC_PER_SEC)
/* The bound on "the last opener went" -> InterfacesRemoved (and on Openers catching up). */
#define GONE_TIMEOUT (1 * USEC_PER_SEC)

/* Processes the test started (the holder of another mount namespace); killed by the
 * teardown. */
extern pid_t children[4];
extern size_t n_children;

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

char *make_image(Env *e, uint64_t size);
void mkfs_ext4(const char *target);
void mount_ok(Env *e, const char *source, const char *target);

/* Unmounts and returns the time right after umount(2) succeeded: the last opener is gone. */
uint64_t umount_ok(Env *e, const char *target);

char *openers_string(const DeviceProps *p);

/* Reads Openers until it lists (kind, description) or the timeout passes; returns how long it
 * took. Fails the test with the last list seen otherwise. */
uint64_t expect_opener_impl(Env *e, const char *object, const char *kind, const char *description,
                            uint64_t timeout, const char *file, int line);

#define expect_opener(e, object, kind, description, timeout)                                       \
        expect_opener_impl((e), (object), (kind), (description), (timeout), __FILE__, __LINE__)

/* Processes the bus until the catcher recorded more than n signals, or the timeout passes. */
int catcher_wait_more(Env *e, Catcher *c, size_t n, uint64_t timeout_usec);

/* Everything the daemon sent so far is processed; returns how many signals c holds, so that a
 * later expect_changed() counts only what a following change causes. */
size_t catcher_mark(Env *e, Catcher *c);

/* A PropertiesChanged for `property` of the object after the mark (catcher holding `mark`
 * signals) must arrive within a second of the change. */
void expect_changed_impl(Env *e, Catcher *c, size_t mark, const char *object, const char *property,
                         uint64_t since, const char *file, int line);

#define expect_changed(e, c, mark, object, property, since)                                        \
        expect_changed_impl((e), (c), (mark), (object), (property), (since), __FILE__, __LINE__)

void expect_state_impl(Env *e, const char *object, const char *expected, const char *file,
                       int line);

#define expect_state(e, object, expected)                                                          \
        expect_state_impl((e), (object), (expected), __FILE__, __LINE__)

void detach_pending_impl(Env *e, const Attached *a, const char *file, int line);

#define detach_pending(e, a) detach_pending_impl((e), (a), __FILE__, __LINE__)

/* After the last opener went at `since`: InterfacesRemoved for the object within a second and
 * the kernel binding gone. Returns the index of the signal in the catcher. */
int expect_gone_impl(Env *e, Catcher *removed, const Attached *a, uint64_t since, const char *what,
                     const char *file, int line);

#define expect_gone(e, removed, a, since, what)                                                    \
        expect_gone_impl((e), (removed), (a), (since), (what), __FILE__, __LINE__)

/* umount(2), retried while udev's probe holds the file system for a moment; -errno. */
int umount_retry_quiet(const char *target);

/* Drops the test's reference; the device must go within the signal timeout. */
void detach_gone_or_pending(Env *e, const Attached *a);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_mounted(void **state);
void test_mounted_other_namespace(void **state);
void test_stacked_loop(void **state);
void test_held_open(void **state);
void test_wait_timeout(void **state);
void test_mounted_partition(void **state);
void test_probe_does_not_disturb_mounts(void **state);
void test_detach_while_locked(void **state);
void test_detach_lock_timeout(void **state);
