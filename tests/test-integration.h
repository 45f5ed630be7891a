/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-integration share: constants, helpers, and its tests. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "integration-util.h"

#define MiB                       (1024ULL * 1024ULL)
#define DBUS_ERROR_INVALID_ARGS   "org.freedesktop.DBus.Error.InvalidArgs"
#define DBUS_ERROR_FILE_NOT_FOUND "org.freedesktop.DBus.Error.FileNotFound"
#define EXT4_SUPER_MAGIC_         0xEF53
#define XFS_SUPER_MAGIC_          0x58465342
#define BTRFS_SUPER_MAGIC_        0x9123683E

/* How long signals of an event-driven daemon may take (udev round trip included). */
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
                assert_int_equal((p)->present, DEVICE_PROPS_ALL);                                  \
        } while (0)

void detach_expect(Env *e, const char *object, const char *expected_state);

/* Detaches a device nothing holds and checks that the kernel binding is gone when Detach
 * returns "detached" (not merely requested). */
void detach_gone(Env *e, const Attached *a);

void assert_no_device_for(const char *path);
void assert_sysfs_u64(const char *node, const char *attr, uint64_t expected);
char *make_image(Env *e, uint64_t size);
bool fs_has_direct_io(const char *dir);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_version(void **state);
void test_attach_simple(void **state);
void test_attach_offset(void **state);
void test_attach_offset_size_limit(void **state);
void test_attach_read_only_option(void **state);
void test_attach_read_only_fd(void **state);
void test_attach_read_only_fd_writable(void **state);
void test_attach_sector_size_4096(void **state);
void test_direct_io_on(void **state);
void test_direct_io_off(void **state);
void test_direct_io_auto(void **state);
void test_direct_io_unsupported_fs(void **state);
void test_attach_bad_fds(void **state);
void test_attach_bad_handle_index(void **state);
void test_attach_bad_options(void **state);
void test_detach(void **state);
void test_device_detach_method(void **state);
void test_detach_pending(void **state);
void test_detach_wait_timeout(void **state);
void test_detach_not_found(void **state);
void test_get_device(void **state);
void test_set_capacity(void **state);
void test_set_autoclear(void **state);
void test_foreign_device(void **state);
void test_shared_reuse(void **state);
void test_alias_refused(void **state);
void test_attach_udev_timeout(void **state);
void test_lifetime_client(void **state);
void test_loop_over_loop_recursive(void **state);
void test_detach_all_references(void **state);
void test_attach_while_detach_pending(void **state);
void test_resolve(void **state);
void test_concurrent_attach(void **state);
void test_attach_path(void **state);
void test_loopmgrctl(void **state);
void test_daemon_restart(void **state);
