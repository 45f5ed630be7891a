/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-integration's tests of devices over time: foreign devices, sharing and aliases, udev
 * timeouts, client lifetime, stacking, Resolve, concurrency, AttachPath, loopmgrctl, restart. */

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

void test_foreign_device(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *out = NULL, *object = NULL, *out2 = NULL;
        _cleanup_props_ DeviceProps p = {};
        uint64_t diskseq;

        Catcher *added = catch_interfaces_added(e);
        Catcher *removed = catch_interfaces_removed(e);

        char *argv[] = {(char *) "losetup", (char *) "--find", (char *) "--show", path, NULL};
        assert_int_equal(run_command(argv, NULL, &out, NULL), 0);
        out[strcspn(out, "\n")] = 0;
        assert_true(strncmp(out, "/dev/loop", 9) == 0);
        assert_int_equal(sysfs_read_u64(out + 5, "diskseq", &diskseq), 0);
        assert_int_equal(env_track_device(e, out + 5, diskseq), 0);

        /* Event-driven: the object appears without anyone asking the daemon. */
        int i = catcher_wait(e, added, NULL, out, SIGNAL_TIMEOUT);
        if (i < 0)
                fail_msg("no InterfacesAdded for the foreign %s within 2 s", out);
        object = strdup(added->paths[i]);
        assert_non_null(object);

        PROPS_OK(e, object, &p);
        assert_false(p.managed);
        assert_string_equal(p.backing_file, path);
        assert_int_equal(p.diskseq, diskseq);
        /* Nobody asked loopmgrd for it, so nobody holds a reference through it. */
        assert_int_equal(p.references, 0);
        assert_string_equal(p.state, LOOPMGR_STATE_ATTACHED);

        char *argv2[] = {(char *) "losetup", (char *) "-d", out, NULL};
        assert_int_equal(run_command(argv2, NULL, &out2, NULL), 0);
        if (catcher_wait(e, removed, object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("no InterfacesRemoved for the foreign %s after losetup -d", out);
        assert_true(wait_binding_gone(out + 5, diskseq, SIGNAL_TIMEOUT));
}

void test_shared_reuse(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {}, b = {};
        _cleanup_props_ DeviceProps p = {}, q = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        assert_false(a.reused);
        ATTACH_OK(e, path, O_RDWR, &b, 0);
        assert_true(b.reused);
        assert_string_equal(b.object, a.object);
        assert_string_equal(b.node, a.node);
        assert_int_equal(b.diskseq, a.diskseq);

        PROPS_OK(e, a.object, &p);
        assert_int_equal(p.references, 2);
        size_t n;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        assert_int_equal(n, 1);

        /* Dropping one reference keeps the device for the other. */
        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        PROPS_OK(e, a.object, &q);
        assert_int_equal(q.references, 1);
        assert_string_equal(q.state, LOOPMGR_STATE_ATTACHED);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 1);

        detach_gone(e, &a);
}

void test_alias_refused(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_attached_ Attached a = {}, b = {}, x = {};
        int r;

        /* [0, 2M) and [2M, 4M) share no byte. */
        ATTACH_OK(e, path, O_RDWR, &a, 1, OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
        ATTACH_OK(e, path, O_RDWR, &b, 1, OPT_T(LOOPMGR_OPT_OFFSET, 2 * MiB));
        assert_false(b.reused);
        assert_string_not_equal(a.object, b.object);

        /* [1M, 3M) intersects both: rule 3, and the message names a culprit. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, path, O_RDWR, &error, &x, 2, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB),
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
                assert_bus_error(r, &error, LOOPMGR_ERROR_OVERLAP);
                if (!strstr(error.message, a.node + 5) && !strstr(error.message, b.node + 5))
                        fail_msg("Overlap message does not name %s or %s: %s", a.node, b.node,
                                 error.message);
        }
        /* The whole file intersects both as well. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, path, O_RDWR, &error, &x, 0);
                assert_bus_error(r, &error, LOOPMGR_ERROR_OVERLAP);
        }
        /* Identical range but read-only: not rule 1, so an alias. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, path, O_RDWR, &error, &x, 2,
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB),
                                OPT_B(LOOPMGR_OPT_READ_ONLY, true));
                assert_bus_error(r, &error, LOOPMGR_ERROR_OVERLAP);
        }
        /* Identical range, exclusive. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = attach_file(e, path, O_RDWR, &error, &x, 2,
                                OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB),
                                OPT_S(LOOPMGR_OPT_SHARING, "exclusive"));
                assert_bus_error(r, &error, LOOPMGR_ERROR_BUSY);
        }

        size_t n;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        assert_int_equal(n, 2);

        detach_gone(e, &a);
        detach_gone(e, &b);
}

void test_attach_udev_timeout(void **state) {
        Env *e = *state;
        _cleanup_free_ char *image = make_image(e, 2 * MiB), *path = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};

        /* Make udev slow for this one image only: PROGRAM runs while the rules are evaluated,
         * before udev creates the by-diskseq link, and udev holds the device open meanwhile. */
        assert_true(asprintf(&path, "%s/udev-slow-%d.img", e->tmpdir, (int) getpid()) > 0);
        assert_int_equal(rename(image, path), 0);
        assert_int_equal(
                env_add_udev_rule(
                        e,
                        "# written by loopmgr's test-integration; removed at the end of the test\n"
                        "SUBSYSTEM==\"block\", KERNEL==\"loop*\", "
                        "ATTR{loop/backing_file}==\"*/udev-slow-*\", PROGRAM=\"/bin/sleep 1\"\n"),
                0);

        uint64_t start = now_usec();
        int r = attach_file(e, path, O_RDWR, &error, &a, 1,
                            OPT_T(LOOPMGR_OPT_TIMEOUT_USEC, 300 * USEC_PER_MSEC));
        uint64_t elapsed = now_usec() - start;
        assert_bus_error(r, &error, LOOPMGR_ERROR_TIMEOUT);
        if (elapsed < 300 * USEC_PER_MSEC)
                fail_msg("Timeout after %" PRIu64 " ms, before the 300 ms asked for",
                         elapsed / 1000);

        /* "Nothing is left behind": the teardown completes once udev lets go of the device
         * (the kernel defers it to the last close). */
        uint64_t deadline = now_usec() + 3 * USEC_PER_SEC;
        size_t n;
        for (;;) {
                assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
                if (n == 0 || now_usec() >= deadline)
                        break;
                sleep_usec(50 * USEC_PER_MSEC);
        }
        if (n != 0)
                fail_msg("a device for %s is left after the udev timeout", path);
}

void test_lifetime_client(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_close_ int fd = -EBADF;
        _cleanup_attached_ Attached a = {};
        sd_bus *client;

        assert_int_equal(env_new_bus(e, &client), 0);
        fd = open(path, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        int r = call_attach(e, client, fd, &error, &a, 1, OPT_S(LOOPMGR_OPT_LIFETIME, "client"));
        assert_bus_ok(r, &error, "Attach(lifetime=client)");

        Catcher *removed = catch_interfaces_removed(e);
        env_close_bus(e, client);
        if (catcher_wait(e, removed, a.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("the client's device %s outlived its connection", a.object);
        assert_true(wait_binding_gone(a.node + 5, a.diskseq, SIGNAL_TIMEOUT));
}

void test_loop_over_loop_recursive(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached lower = {}, same = {}, upper = {};
        _cleanup_props_ DeviceProps pl = {}, pu = {};

        ATTACH_OK(e, path, O_RDWR, &lower, 0);

        /* A loop over the whole of lower exposes exactly lower's bytes: rule 1 hands lower
         * back instead of stacking an identical device on it. */
        ATTACH_OK(e, lower.node, O_RDWR, &same, 0);
        assert_true(same.reused);
        assert_string_equal(same.object, lower.object);
        detach_expect(e, lower.object, LOOPMGR_STATE_ATTACHED);

        /* A loop over part of lower is a real stack (rule 2: lower is in its chain). */
        ATTACH_OK(e, lower.node, O_RDWR, &upper, 1, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
        assert_false(upper.reused);
        assert_string_not_equal(upper.object, lower.object);

        PROPS_OK(e, upper.object, &pu);
        assert_int_equal(pu.size, 3 * MiB);
        assert_int_equal(pu.offset, 1 * MiB);
        if (pu.n_chain < 2)
                fail_msg("Chain of a loop over a loop has %zu entries", pu.n_chain);
        PROPS_OK(e, lower.object, &pl);
        bool seen = false;
        for (size_t i = 0; i < pl.n_openers; i++)
                if (streq(pl.opener_kinds[i], "loop"))
                        seen = true;
        if (!seen)
                fail_msg("Openers of %s do not list the stacked %s", lower.node, upper.node);

        Catcher *removed = catch_interfaces_removed(e);
        int r = call_detach(e, lower.object, &error, &st, 2, OPT_B(LOOPMGR_OPT_RECURSIVE, true),
                            OPT_B(LOOPMGR_OPT_WAIT, true));
        assert_bus_ok(r, &error, "Detach(recursive)");
        assert_string_equal(st, LOOPMGR_STATE_DETACHED);
        assert_int_equal(loop_binding_present(upper.node + 5, upper.diskseq), 0);
        assert_int_equal(loop_binding_present(lower.node + 5, lower.diskseq), 0);
        if (catcher_wait(e, removed, upper.object, NULL, SIGNAL_TIMEOUT) < 0 ||
            catcher_wait(e, removed, lower.object, NULL, SIGNAL_TIMEOUT) < 0)
                fail_msg("InterfacesRemoved missing after the recursive detach");
}

void test_detach_all_references(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {}, c = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        ATTACH_OK(e, path, O_RDWR, &c, 0);
        assert_true(c.reused);
        PROPS_OK(e, a.object, &p);
        assert_int_equal(p.references, 2);

        int r = call_detach(e, a.object, &error, &st, 1, OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true));
        assert_bus_ok(r, &error, "Detach(all-references)");
        assert_string_equal(st, LOOPMGR_STATE_DETACHED);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 0);
}

/* SPEC §3: an identical Attach while the device is detach-pending cancels the pending
 * teardown and reuses the device when the kernel still allows it (it does here: the device
 * is still bound and open, so clearing AUTOCLEAR revives it). */
void test_attach_while_detach_pending(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {}, b = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        int fd = env_hold(e, a.node, O_RDONLY);
        assert_true(fd >= 0);
        detach_expect(e, a.object, LOOPMGR_STATE_PENDING);

        int r = attach_file(e, path, O_RDWR, &error, &b, 0);
        assert_bus_ok(r, &error, "Attach while the identical device is detach-pending");
        if (b.reused) {
                /* Revived: attached again, and our close must not tear it down any more. */
                assert_string_equal(b.object, a.object);
                PROPS_OK(e, b.object, &p);
                assert_string_equal(p.state, LOOPMGR_STATE_ATTACHED);
                assert_false(p.autoclear);
                assert_int_equal(p.references, 1);
                env_release(e, fd);
                sleep_usec(300 * USEC_PER_MSEC);
                assert_int_equal(loop_binding_present(b.node + 5, b.diskseq), 1);
                detach_gone(e, &b);
        } else {
                /* A fresh binding is only allowed once the old one is gone: never an alias. */
                assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 0);
                env_release(e, fd);
                detach_gone(e, &b);
        }
}

void test_resolve(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        const char *kind = NULL;
        uint64_t base_device = 0, base_inode = 0, offset = UINT64_MAX, size = 0;
        size_t n_chain = 0;
        bool alias_seen = false;
        int r;

        ATTACH_OK(e, path, O_RDWR, &a, 1, OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 2 * MiB));
        fd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);

        r = sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                               LOOPMGR_MANAGER_INTERFACE, "Resolve", &error, &reply, "ha{sv}", fd,
                               1, LOOPMGR_OPT_OFFSET, "t", (uint64_t) (1 * MiB));
        assert_bus_ok(r, &error, "Resolve");

        assert_true(sd_bus_message_enter_container(reply, 'a', "{sv}") > 0);
        while ((r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                const char *key, *contents;
                assert_true(sd_bus_message_read_basic(reply, 's', &key) > 0);
                assert_true(sd_bus_message_peek_type(reply, NULL, &contents) > 0);
                if (streq(key, "base-kind") && streq(contents, "s"))
                        assert_true(sd_bus_message_read(reply, "v", "s", &kind) > 0);
                else if (streq(key, "base-device") && streq(contents, "t"))
                        assert_true(sd_bus_message_read(reply, "v", "t", &base_device) > 0);
                else if (streq(key, "base-inode") && streq(contents, "t"))
                        assert_true(sd_bus_message_read(reply, "v", "t", &base_inode) > 0);
                else if (streq(key, "offset") && streq(contents, "t"))
                        assert_true(sd_bus_message_read(reply, "v", "t", &offset) > 0);
                else if (streq(key, "size") && streq(contents, "t"))
                        assert_true(sd_bus_message_read(reply, "v", "t", &size) > 0);
                else if (streq(key, "chain") && streq(contents, "as")) {
                        const char *line;
                        assert_true(sd_bus_message_enter_container(reply, 'v', "as") > 0);
                        assert_true(sd_bus_message_enter_container(reply, 'a', "s") > 0);
                        while (sd_bus_message_read_basic(reply, 's', &line) > 0)
                                n_chain++;
                        assert_true(sd_bus_message_exit_container(reply) > 0);
                        assert_true(sd_bus_message_exit_container(reply) > 0);
                } else if (streq(key, "aliases") && streq(contents, "ao")) {
                        const char *o;
                        assert_true(sd_bus_message_enter_container(reply, 'v', "ao") > 0);
                        assert_true(sd_bus_message_enter_container(reply, 'a', "o") > 0);
                        while (sd_bus_message_read_basic(reply, 'o', &o) > 0)
                                if (streq(o, a.object))
                                        alias_seen = true;
                        assert_true(sd_bus_message_exit_container(reply) > 0);
                        assert_true(sd_bus_message_exit_container(reply) > 0);
                } else
                        fail_msg("Resolve returned unexpected key %s of type %s", key, contents);
                assert_true(sd_bus_message_exit_container(reply) > 0);
        }
        assert_true(r >= 0);

        assert_non_null(kind);
        assert_string_equal(kind, "file");
        assert_int_equal(base_device, st.st_dev);
        assert_int_equal(base_inode, st.st_ino);
        assert_int_equal(offset, 1 * MiB);
        assert_int_equal(size, 3 * MiB);
        assert_true(n_chain >= 1);
        /* [1M, 4M) meets the device's [0, 2M). */
        if (!alias_seen)
                fail_msg("Resolve does not list %s among the aliases", a.object);
        /* Resolving attaches nothing. */
        size_t n;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        assert_int_equal(n, 1);

        detach_gone(e, &a);
}

typedef struct AsyncAttach {
        bool done;
        int error_errno;
        char *error_name;
        char *object;
        char *node;
        uint64_t diskseq;
        int reused;
        uint64_t usec; /* when the reply arrived, after the first call */
} AsyncAttach;

static int async_attach_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        AsyncAttach *a = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        const char *object, *node;

        a->done = true;
        if (e) {
                a->error_name = strdup(e->name);
                return 0;
        }
        if (sd_bus_message_read(m, "ostb", &object, &node, &a->diskseq, &a->reused) < 0) {
                a->error_name = strdup("(unparsable reply)");
                return 0;
        }
        a->object = strdup(object);
        a->node = strdup(node);
        return 0;
}

/* SPEC §1: concurrent requests for the same data coalesce; no two devices for one file. */
void test_concurrent_attach(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_free_ char *st = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_props_ DeviceProps p = {};
        enum { N = 8 };
        sd_bus *buses[N];
        sd_bus_slot *slots[N] = {};
        AsyncAttach results[N] = {};
        _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
        size_t reused = 0;

        assert_true(fd >= 0);
        for (size_t i = 0; i < N; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                assert_int_equal(env_new_bus(e, &buses[i]), 0);
                assert_true(sd_bus_message_new_method_call(
                                    buses[i], &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                    LOOPMGR_MANAGER_INTERFACE, "Attach") >= 0);
                assert_true(sd_bus_message_append(m, "ha{sv}", fd, 0) >= 0);
                assert_true(sd_bus_call_async(buses[i], &slots[i], m, async_attach_reply,
                                              &results[i], 30 * USEC_PER_SEC) >= 0);
        }

        uint64_t start = now_usec(), deadline = start + 30 * USEC_PER_SEC;
        for (;;) {
                size_t done = 0;
                for (size_t i = 0; i < N; i++) {
                        while (sd_bus_process(buses[i], NULL) > 0)
                                ;
                        if (results[i].done && results[i].usec == 0)
                                results[i].usec = now_usec() - start;
                        done += results[i].done;
                }
                if (done == N)
                        break;
                if (now_usec() >= deadline)
                        break;
                sleep_usec(5 * USEC_PER_MSEC);
        }

        /* Track everything first, so the teardown cleans up whatever the assertions find. */
        for (size_t i = 0; i < N; i++)
                if (results[i].node && strncmp(results[i].node, "/dev/", 5) == 0)
                        (void) env_track_device(e, results[i].node + 5, results[i].diskseq);

        bool ok = true;
        for (size_t i = 0; i < N; i++) {
                if (!results[i].done || !results[i].object) {
                        print_error("attach %zu: %s after %" PRIu64 " ms\n", i,
                                    results[i].done ? results[i].error_name : "no reply",
                                    results[i].usec / 1000);
                        ok = false;
                } else if (!streq(results[i].object, results[0].object ?: "")) {
                        print_error("attach %zu got %s, attach 0 got %s\n", i, results[i].object,
                                    results[0].object);
                        ok = false;
                } else if (results[i].reused)
                        reused++;
        }
        for (size_t i = 0; i < N; i++) {
                sd_bus_slot_unref(slots[i]);
                free(results[i].error_name);
                free(results[i].node);
        }
        if (!ok) {
                for (size_t i = 0; i < N; i++)
                        free(results[i].object);
                fail_msg("concurrent identical Attach calls did not coalesce on one device");
        }
        char *object = results[0].object;
        for (size_t i = 1; i < N; i++)
                free(results[i].object);

        size_t n;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(reused, N - 1);
        int r = device_props_get(e, object, &error, &p);
        if (r < 0)
                free(object);
        assert_bus_ok(r, &error, "GetAll");
        if (p.references != N)
                fail_msg("%u references after %d attaches", p.references, N);

        r = call_detach(e, object, &error, &st, 1, OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true));
        free(object);
        assert_bus_ok(r, &error, "Detach(all-references)");
        assert_string_equal(st, LOOPMGR_STATE_DETACHED);
}

/* AttachPath with a path that does not exist: ENOENT, which sd-bus and systemd name
 * FileNotFound. NotFound is reserved for "no such device". */
void test_attach_path(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {}, x = {};
        _cleanup_props_ DeviceProps p = {};
        char missing[PATH_MAX];

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = call_attach_path(e, path, &error, &a, 0);
                assert_bus_ok(r, &error, "AttachPath");
        }
        PROPS_OK(e, a.object, &p);
        assert_string_equal(p.backing_file, path);
        assert_true(p.managed);
        assert_int_equal(p.references, 1);

        snprintf(missing, sizeof(missing), "%s/no-such-file", e->tmpdir);
        const struct {
                const char *path;
                const char *error;
        } bad[] = {
                {"relative/path.img", DBUS_ERROR_INVALID_ARGS},
                {"", DBUS_ERROR_INVALID_ARGS},
                {e->tmpdir, DBUS_ERROR_INVALID_ARGS},
                {"/dev/null", DBUS_ERROR_INVALID_ARGS},
                {missing, DBUS_ERROR_FILE_NOT_FOUND},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = call_attach_path(e, bad[i].path, &error, &x, 0);
                if (r >= 0)
                        fail_msg("AttachPath(%s) succeeded: %s", bad[i].path, x.node);
                if (!sd_bus_error_has_name(&error, bad[i].error))
                        fail_msg("AttachPath('%s'): expected %s, got %s: %s", bad[i].path,
                                 bad[i].error, error.name, error.message);
                assert_true(error.message && error.message[0]);
        }

        detach_gone(e, &a);
}

static int ctl(Env *e, char **ret_out, char **ret_err, const char *arg, ...) {
        char *argv[16] = {e->loopmgrctl};
        size_t n = 1;
        va_list ap;

        va_start(ap, arg);
        for (const char *a = arg; a && n < ELEMENTSOF(argv) - 1; a = va_arg(ap, const char *))
                argv[n++] = (char *) a;
        va_end(ap);
        argv[n] = NULL;
        return run_command(argv, NULL, ret_out, ret_err);
}

#define CTL_EXPECT(e, status, ...)                                                                 \
        do {                                                                                       \
                _cleanup_free_ char *_o = NULL, *_e = NULL;                                        \
                int _r = ctl((e), &_o, &_e, __VA_ARGS__, NULL);                                    \
                if (_r != (status))                                                                \
                        fail_msg("loopmgrctl %s: exit %d, expected %d\nstdout: %s\n"               \
                                 "stderr: %s",                                                     \
                                 #__VA_ARGS__, _r, (status), _o ?: "", _e ?: "");                  \
        } while (0)

/* jq -e FILTER with $a, $b, $c bound to the strings given; 0 when the filter holds. */
static int jq_check(const char *json, const char *filter, const char *a, const char *b,
                    const char *c) {
        _cleanup_free_ char *out = NULL;
        char *argv[] = {(char *) "jq", (char *) "-e",      (char *) "--arg",
                        (char *) "a",  (char *) (a ?: ""), (char *) "--arg",
                        (char *) "b",  (char *) (b ?: ""), (char *) "--arg",
                        (char *) "c",  (char *) (c ?: ""), (char *) filter,
                        NULL};
        return run_command(argv, json, &out, NULL);
}

#define CTL_OK(e, out, ...)                                                                        \
        do {                                                                                       \
                _cleanup_free_ char *_e = NULL;                                                    \
                free(out);                                                                         \
                out = NULL;                                                                        \
                int _r = ctl((e), &(out), &_e, __VA_ARGS__, NULL);                                 \
                if (_r != 0)                                                                       \
                        fail_msg("loopmgrctl %s: exit %d\nstdout: %s\nstderr: %s", #__VA_ARGS__,   \
                                 _r, (out) ?: "", _e ?: "");                                       \
        } while (0)

/* The exit codes are those of man/loopmgrctl.1: 0 ok, 1 failure, 2 usage, 3 conflict
 * (Overlap/Busy/Cycle), 4 not authorised, 5 not found, 6 timeout. */
void test_loopmgrctl(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_free_ char *object = NULL, *out = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_props_ DeviceProps p = {};
        int r;

        if (access(e->loopmgrctl, X_OK) < 0)
                fail_msg("%s: %m", e->loopmgrctl);

        CTL_EXPECT(e, 0, "--help");
        CTL_EXPECT(e, 2, "--no-such-flag");
        CTL_EXPECT(e, 2, "no-such-verb");
        CTL_EXPECT(e, 2, "attach"); /* missing argument */
        CTL_EXPECT(e, 2, "attach", "--offset", "nonsense", path);
        CTL_EXPECT(e, 2, "attach", "--direct-io", "maybe", path);
        assert_no_device_for(path);

        CTL_OK(e, out, "attach", "--json", path);
        r = call_get_device(e, path, &error, &object);
        assert_bus_ok(r, &error, "GetDevice after loopmgrctl attach");
        PROPS_OK(e, object, &p);
        assert_int_equal(env_track_device(e, p.name, p.diskseq), 0);
        assert_true(p.managed);
        assert_int_equal(p.references, 1);
        if (jq_check(out, ".object == $a and .device == $b and .reused == false", object, p.node,
                     NULL) != 0)
                fail_msg("loopmgrctl attach --json: unexpected output: %s", out);

        /* The same file again is the same device (shared), with a second reference. */
        CTL_OK(e, out, "attach", "--json", path);
        if (jq_check(out, ".object == $a and .reused == true", object, NULL, NULL) != 0)
                fail_msg("second loopmgrctl attach --json: unexpected output: %s", out);

        /* Conflicts exit with 3. */
        CTL_EXPECT(e, 3, "attach", "--exclusive", path);
        CTL_EXPECT(e, 3, "attach", "--offset", "1048576", path);

        CTL_OK(e, out, "list", "--json");
        if (jq_check(out,
                     ".devices | type == \"array\" and "
                     "(map(select(.device == $a and .object == $b and .\"backing-file\" == $c "
                     "and .managed == true and .refs == 2)) | length == 1)",
                     p.node, object, path) != 0)
                fail_msg("loopmgrctl list --json does not show %s as expected: %s", p.node, out);
        CTL_OK(e, out, "list");
        if (!strstr(out, p.name) && !strstr(out, p.node))
                fail_msg("loopmgrctl list does not mention %s: %s", p.node, out);

        CTL_OK(e, out, "status", p.node);
        if (!strstr(out, path))
                fail_msg("loopmgrctl status %s does not show the backing file: %s", p.node, out);
        CTL_OK(e, out, "status", "--json", path);
        if (jq_check(out,
                     ".devices | length == 1 and (.[0] | .object == $a and .device == $b and "
                     ".\"backing-file\" == $c)",
                     object, p.node, path) != 0)
                fail_msg("loopmgrctl status --json %s: unexpected output: %s", path, out);

        /* Drop both references: by node, then by backing file. */
        CTL_OK(e, out, "detach", "--json", p.node);
        if (jq_check(out, ".object == $a and .device == $b and .state == \"attached\"", object,
                     p.node, NULL) != 0)
                fail_msg("loopmgrctl detach --json (first reference): %s", out);
        assert_int_equal(loop_binding_present(p.name, p.diskseq), 1);
        CTL_OK(e, out, "detach", "--json", path);
        if (jq_check(out, ".object == $a and .device == $b and .state == \"detached\"", object,
                     p.node, NULL) != 0)
                fail_msg("loopmgrctl detach --json (last reference): %s", out);
        if (!wait_binding_gone(p.name, p.diskseq, SIGNAL_TIMEOUT))
                fail_msg("%s still attached after loopmgrctl detach", p.node);

        /* No such device: 5. */
        CTL_EXPECT(e, 5, "detach", "/dev/loop999999");
        CTL_EXPECT(e, 5, "status", "/dev/loop999999");
        CTL_EXPECT(e, 5, "detach", path);
}

/* Managed devices and their references survive a daemon restart (state in
 * LOOPMGR_STATE_DIR): a restarted daemon must not forget what it was asked to keep. */
void test_daemon_restart(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 2 * MiB);
        _cleanup_attached_ Attached a = {}, b = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        ATTACH_OK(e, path, O_RDWR, &b, 0);
        assert_true(b.reused);

        if (env_stop_daemon(e) < 0) {
                env_group_failed = true;
                fail_msg("loopmgrd did not exit cleanly on SIGTERM");
        }
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 1);
        if (env_start_daemon(e) < 0) {
                env_group_failed = true;
                fail_msg("loopmgrd did not start again");
        }

        PROPS_OK(e, a.object, &p);
        assert_true(p.managed);
        assert_int_equal(p.references, 2);
        assert_string_equal(p.backing_file, path);

        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &a);
}
