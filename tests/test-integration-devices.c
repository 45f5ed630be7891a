/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-integration's tests of the calls on a device: Detach (also pending, with a timeout,
 * not found), GetDevice, SetCapacity, SetAutoclear. */

#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <ftw.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-rawbus.h"
#include "integration-util.h"
#include "loopmgr-bus.h"
#include "test-integration.h"

void test_detach(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *object = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);

        detach_gone(e, &a);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for %s", a.object);

        int r = device_props_get(e, a.object, &error, &p);
        assert_true(r < 0);
        sd_bus_error_free(&error);
        r = call_get_device(e, a.node, &error, &object);
        assert_bus_error(r, &error, LOOPMGR_ERROR_NOT_FOUND);
}

void test_device_detach_method(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);

        /* Bad detach options are refused and change nothing. */
        int r = call_device_detach(e, a.object, &error, &st, 1, OPT_B("no-such-option", true));
        assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        sd_bus_error_free(&error);
        r = call_device_detach(e, a.object, &error, &st, 1, OPT_S(LOOPMGR_OPT_WAIT, "yes"));
        assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        sd_bus_error_free(&error);
        r = call_detach(e, a.object, &error, &st, 1, OPT_T(LOOPMGR_OPT_TIMEOUT_USEC, 0));
        assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        sd_bus_error_free(&error);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 1);

        r = call_device_detach(e, a.object, &error, &st, 1, OPT_B(LOOPMGR_OPT_WAIT, true));
        assert_bus_ok(r, &error, "Device.Detach");
        assert_string_equal(st, LOOPMGR_STATE_DETACHED);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 0);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for %s", a.object);
}

void test_detach_pending(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        int fd = env_hold(e, a.node, O_RDONLY);
        assert_true(fd >= 0);

        Catcher *changed = catch_properties_changed(e, a.object, "State");
        Catcher *removed = catch_interfaces_removed(e);

        detach_expect(e, a.object, LOOPMGR_STATE_PENDING);
        PROPS_OK(e, a.object, &p);
        assert_string_equal(p.state, LOOPMGR_STATE_DETACH_PENDING);
        if (catcher_wait(e, changed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no PropertiesChanged(State) for %s", a.object);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 1);
        /* Nothing arrived for the removal yet: we still hold the device. */
        bus_drain(e);
        assert_int_equal(removed->count, 0);

        env_release(e, fd);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for %s within 2 s of the last close", a.object);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 0);
}

void test_detach_wait_timeout(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        int fd = env_hold(e, a.node, O_RDONLY);
        assert_true(fd >= 0);
        Catcher *removed = catch_interfaces_removed(e);

        uint64_t start = now_usec();
        int r = call_detach(e, a.object, &error, &st, 2, OPT_B(LOOPMGR_OPT_WAIT, true),
                            OPT_T(LOOPMGR_OPT_TIMEOUT_USEC, 300 * USEC_PER_MSEC));
        uint64_t elapsed = now_usec() - start;
        assert_bus_error(r, &error, LOOPMGR_ERROR_TIMEOUT);
        if (elapsed < 250 * USEC_PER_MSEC || elapsed > 5 * USEC_PER_SEC)
                fail_msg("Detach(wait, 300 ms) returned after %" PRIu64 " ms", elapsed / 1000);

        /* The teardown is still pending, not cancelled. */
        PROPS_OK(e, a.object, &p);
        assert_string_equal(p.state, LOOPMGR_STATE_DETACH_PENDING);

        env_release(e, fd);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for %s within 2 s of the last close", a.object);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 0);
}

void test_detach_not_found(void **state) {
        Env *e = *state;
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;

        int r = call_detach(e, LOOPMGR_DEVICE_PATH_PREFIX "/18446744073709551615", &error, &st, 0);
        assert_bus_error(r, &error, LOOPMGR_ERROR_NOT_FOUND);
        sd_bus_error_free(&error);
        r = call_detach(e, LOOPMGR_DEVICE_PATH_PREFIX "/0", &error, &st, 0);
        assert_bus_error(r, &error, LOOPMGR_ERROR_NOT_FOUND);
        sd_bus_error_free(&error);
        r = call_detach(e, "/org/example/NotADevice", &error, &st, 0);
        assert_bus_error(r, &error, LOOPMGR_ERROR_NOT_FOUND);
}

void test_get_device(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *other = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {};
        char by_diskseq[64], missing[PATH_MAX];

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        snprintf(by_diskseq, sizeof(by_diskseq), "/dev/disk/by-diskseq/%" PRIu64, a.diskseq);
        snprintf(missing, sizeof(missing), "%s/no-such-file", e->tmpdir);

        const char *good[] = {a.node, a.node + 5, by_diskseq, path};
        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_free_ char *object = NULL;
                int r = call_get_device(e, good[i], &error, &object);
                assert_bus_ok(r, &error, good[i]);
                if (!streq(object, a.object))
                        fail_msg("GetDevice(%s) = %s, expected %s", good[i], object, a.object);
        }

        /* Well-formed names that match nothing are NotFound; strings that are none of the
         * accepted forms (not absolute, not loopN) are InvalidArgs (docs/API.md). */
        const struct {
                const char *what;
                const char *error;
        } bad[] = {
                {"/dev/loop999999", LOOPMGR_ERROR_NOT_FOUND},
                {"loop999999", LOOPMGR_ERROR_NOT_FOUND},
                {"/dev/disk/by-diskseq/999999999999", LOOPMGR_ERROR_NOT_FOUND},
                {missing, LOOPMGR_ERROR_NOT_FOUND},
                {other, LOOPMGR_ERROR_NOT_FOUND}, /* a file nothing is attached to */
                {"nonsense", DBUS_ERROR_INVALID_ARGS},
                {"loopx", DBUS_ERROR_INVALID_ARGS},
                {"", DBUS_ERROR_INVALID_ARGS},
                {"/dev/null", DBUS_ERROR_INVALID_ARGS}, /* neither a loop device nor a file */
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_free_ char *object = NULL;
                int r = call_get_device(e, bad[i].what, &error, &object);
                if (r >= 0)
                        fail_msg("GetDevice('%s') = %s, expected %s", bad[i].what, object,
                                 bad[i].error);
                if (!sd_bus_error_has_name(&error, bad[i].error))
                        fail_msg("GetDevice('%s'): expected %s, got %s: %s", bad[i].what,
                                 bad[i].error, error.name, error.message);
                assert_true(error.message && error.message[0]);
        }

        detach_gone(e, &a);
}

void test_set_capacity(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 1 * MiB);
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {}, q = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        PROPS_OK(e, a.object, &p);
        assert_int_equal(p.size, 1 * MiB);

        assert_int_equal(truncate(path, 3 * MiB), 0);
        Catcher *changed = catch_properties_changed(e, a.object, "Size");

        int r = sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, a.object, LOOPMGR_DEVICE_INTERFACE,
                                   "SetCapacity", &error, NULL, "a{sv}", 1, "bogus", "b", 1);
        assert_bus_error(r, &error, DBUS_ERROR_INVALID_ARGS);
        sd_bus_error_free(&error);

        r = call_set_capacity(e, a.object, &error);
        assert_bus_ok(r, &error, "SetCapacity");
        PROPS_OK(e, a.object, &q);
        assert_int_equal(q.size, 3 * MiB);
        assert_sysfs_u64(a.node, "size", 3 * MiB / 512);
        if (catcher_wait(e, changed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no PropertiesChanged(Size) for %s", a.object);

        detach_gone(e, &a);
}

void test_set_autoclear(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        /* Hold the device: with autoclear set, the kernel tears it down at the last close,
         * and udev's probe after our SetAutoclear could be that last close. */
        int fd = env_hold(e, a.node, O_RDONLY);
        assert_true(fd >= 0);

        Catcher *changed = catch_properties_changed(e, a.object, "Autoclear");
        Catcher *removed = catch_interfaces_removed(e);

        int r = call_set_autoclear(e, a.object, true, &error);
        assert_bus_ok(r, &error, "SetAutoclear");
        PROPS_OK(e, a.object, &p);
        assert_true(p.autoclear);
        assert_sysfs_u64(a.node, "loop/autoclear", 1);
        if (catcher_wait(e, changed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no PropertiesChanged(Autoclear) for %s", a.object);

        /* The kernel clears the device at our close; the daemon notices and drops it. */
        env_release(e, fd);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for %s after the autoclear", a.object);
        assert_true(wait_binding_gone(a.node + 5, a.diskseq, SIGNAL_TIMEOUT));
}
