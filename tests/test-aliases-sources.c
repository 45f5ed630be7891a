/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-aliases, scenarios 6 to 10: a device made behind the daemon's back, concurrent
 * identical attaches, btrfs sub-volumes, ext4 attached twice, Resolve through the layers. */

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <ctype.h>
#include <ftw.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "test-aliases.h"

/* ------------------------------------------------------------------------------------------ */
/* 6. A device made behind the daemon's back */

static void foreign_reuse(Env *e, bool wait_for_daemon) {
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_free_ char *node = NULL, *object = NULL, *st = NULL;
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {}, q = {};
        uint64_t diskseq;

        node = losetup_foreign(e, path, NULL, &diskseq);
        if (wait_for_daemon)
                object = object_for_node(e, node);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        if (!a.reused || !streq(a.node, node) || a.diskseq != diskseq)
                fail_msg("Attach of a file losetup bound to %s (diskseq %" PRIu64 ")%s: got %s "
                         "(diskseq %" PRIu64 ", reused=%s), expected the foreign device reused",
                         node, diskseq,
                         wait_for_daemon ? "" : " just before, without waiting for udev", a.node,
                         a.diskseq, a.reused ? "yes" : "no");
        expect_losetup_j(path, 1, "foreign device plus Attach");
        if (!object)
                object = object_for_node(e, node);
        assert_string_equal(object, a.object);

        PROPS_OK(e, a.object, &p);
        /* The daemon did not make the binding, so it stays foreign (Managed=false) while it
         * counts the reference it handed out. */
        if (p.managed)
                fail_msg("the foreign %s turned Managed=true after a reuse", node);
        if (p.references != 1)
                fail_msg("References of the reused foreign %s: %u, expected 1 (ours)", node,
                         p.references);

        /* Dropping our reference: report what happens to a device we did not make. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = call_detach(e, a.object, &error, &st, 0);
                assert_bus_ok(r, &error, "Detach of our reference on a foreign device");
        }
        int present = loop_binding_present(node + 5, diskseq);
        print_message("observed: Detach of the only daemon reference on the foreign %s returned "
                      "'%s'; the binding is %s\n",
                      node, st, present > 0 ? "still there" : "gone");
        if (present > 0) {
                PROPS_OK(e, object, &q);
                print_message("observed: afterwards Managed=%s References=%u State=%s\n",
                              q.managed ? "true" : "false", q.references, q.state);
                assert_int_equal(q.references, 0);
                env_run_ok("losetup", "-d", node);
        }
        if (!wait_binding_gone(node + 5, diskseq, SIGNAL_TIMEOUT))
                fail_msg("the foreign %s is still bound", node);
}

static size_t strv_count(char **l) {
        size_t n = 0;

        while (l && l[n])
                n++;
        return n;
}

/* Device.Aliases of object, as a string list. */
static char **aliases_of(Env *e, const char *object) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        char **l = NULL;
        int r;

        r = sd_bus_get_property(e->bus, LOOPMGR_BUS_NAME, object, LOOPMGR_DEVICE_INTERFACE,
                                "Aliases", &error, &reply, "ao");
        assert_bus_ok(r, &error, "Aliases");
        assert_int_equal(sd_bus_message_read_strv(reply, &l), 1);
        return l;
}

/* Waits until Aliases of object is exactly the n paths given. */
static void expect_aliases(Env *e, const char *object, const char *what, size_t n, ...) {
        uint64_t deadline = now_usec() + SIGNAL_TIMEOUT;

        for (;;) {
                _cleanup_strv_free_ char **l = aliases_of(e, object);
                bool ok = strv_count(l) == n;
                va_list ap;

                va_start(ap, n);
                for (size_t i = 0; ok && i < n; i++)
                        ok = strv_contains(l, va_arg(ap, const char *));
                va_end(ap);
                if (ok)
                        return;
                if (now_usec() >= deadline)
                        fail_msg("%s: Aliases of %s lists %zu device(s) (%s%s), expected %zu", what,
                                 object, strv_count(l), l && l[0] ? l[0] : "",
                                 l && l[0] && l[1] ? ", ..." : "", n);
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

/* Aliases made behind the daemon's back (no guard on this machine): two losetup devices over
 * one file name each other in Aliases, a device over other bytes of it is none, `loopmgrctl
 * list` marks the two, and when one goes the other's Aliases is empty again. */
void test_foreign_aliases(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 16 * MiB);
        _cleanup_free_ char *n1 = NULL, *n2 = NULL, *n3 = NULL, *o1 = NULL, *o2 = NULL, *o3 = NULL,
                            *out = NULL;
        uint64_t s1, s2, s3;

        n1 = losetup_foreign(e, path, "--sizelimit=8388608", &s1);
        n2 = losetup_foreign(e, path, "--sizelimit=4194304", &s2);
        n3 = losetup_foreign(e, path, "--offset=8388608", &s3);
        o1 = object_for_node(e, n1);
        o2 = object_for_node(e, n2);
        o3 = object_for_node(e, n3);

        expect_aliases(e, o1, "two devices over the first 4 MiB", 1, o2);
        expect_aliases(e, o2, "two devices over the first 4 MiB", 1, o1);
        expect_aliases(e, o3, "a device over the second half", 0);

        assert_int_equal(env_run(&out, NULL, e->loopmgrctl, "list", NULL), 0);
        {
                _cleanup_free_ char *m1 = NULL, *m2 = NULL, *m3 = NULL;

                assert_true(asprintf(&m1, "%s! ", n1 + 5) > 0);
                assert_true(asprintf(&m2, "%s! ", n2 + 5) > 0);
                assert_true(asprintf(&m3, "%s! ", n3 + 5) > 0);
                if (!strstr(out, m1) || !strstr(out, m2) || strstr(out, m3) ||
                    !strstr(out, "expose bytes that another device exposes too"))
                        fail_msg("loopmgrctl list does not mark exactly %s and %s:\n%s", n1, n2,
                                 out);
        }

        env_run_ok("losetup", "-d", n2);
        if (!wait_binding_gone(n2 + 5, s2, SIGNAL_TIMEOUT))
                fail_msg("the foreign %s is still bound after losetup -d", n2);
        expect_aliases(e, o1, "after the other one went", 0);
        env_run_ok("losetup", "-d", n1);
        env_run_ok("losetup", "-d", n3);
        if (!wait_binding_gone(n1 + 5, s1, SIGNAL_TIMEOUT) ||
            !wait_binding_gone(n3 + 5, s3, SIGNAL_TIMEOUT))
                fail_msg("the foreign devices are still bound after losetup -d");
}

/* The daemon knows the foreign device (it heard of it from udev) when the Attach comes. */
void test_foreign_reuse(void **state) {
        foreign_reuse(*state, true);
}

/* What a script does: losetup, then at once the Attach, racing udev's report of the new
 * device to the daemon. It must not get a second device either. */
void test_foreign_reuse_immediate(void **state) {
        foreign_reuse(*state, false);
}

/* ------------------------------------------------------------------------------------------ */
/* 7. Concurrent identical attaches */

typedef struct AsyncAttach {
        bool done;
        char *error_name;
        char *error_message;
        char *object;
        char *node;
        uint64_t diskseq;
        int reused;
} AsyncAttach;

static int async_attach_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        AsyncAttach *a = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        const char *object, *node;

        a->done = true;
        if (e) {
                a->error_name = strdup(e->name);
                a->error_message = e->message ? strdup(e->message) : NULL;
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

enum { N_CONCURRENT = 16 };

typedef struct Concurrent {
        sd_bus_slot *slots[N_CONCURRENT];
        AsyncAttach results[N_CONCURRENT];
} Concurrent;

static void concurrent_done(Concurrent *c) {
        for (size_t i = 0; i < N_CONCURRENT; i++) {
                sd_bus_slot_unref(c->slots[i]);
                free(c->results[i].error_name);
                free(c->results[i].error_message);
                free(c->results[i].object);
                free(c->results[i].node);
        }
}

void test_concurrent_attach_16(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 4 * MiB);
        _cleanup_(concurrent_done) Concurrent c = {};
        sd_bus *buses[N_CONCURRENT];
        _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
        size_t reused = 0;

        assert_true(fd >= 0);
        /* Connect everyone first, then send: the calls reach the daemon back to back. */
        for (size_t i = 0; i < N_CONCURRENT; i++)
                assert_int_equal(env_new_bus(e, &buses[i]), 0);
        for (size_t i = 0; i < N_CONCURRENT; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                assert_true(sd_bus_message_new_method_call(
                                    buses[i], &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                    LOOPMGR_MANAGER_INTERFACE, "Attach") >= 0);
                assert_true(sd_bus_message_append(m, "ha{sv}", fd, 0) >= 0);
                assert_true(sd_bus_call_async(buses[i], &c.slots[i], m, async_attach_reply,
                                              &c.results[i], 30 * USEC_PER_SEC) >= 0);
        }

        uint64_t deadline = now_usec() + 30 * USEC_PER_SEC;
        for (;;) {
                size_t done = 0;
                for (size_t i = 0; i < N_CONCURRENT; i++) {
                        while (sd_bus_process(buses[i], NULL) > 0)
                                ;
                        done += c.results[i].done;
                }
                if (done == N_CONCURRENT || now_usec() >= deadline)
                        break;
                sleep_usec(5 * USEC_PER_MSEC);
        }

        /* Track everything first, so the teardown cleans up whatever the assertions find. */
        for (size_t i = 0; i < N_CONCURRENT; i++)
                if (c.results[i].node && strncmp(c.results[i].node, "/dev/", 5) == 0)
                        (void) env_track_device(e, c.results[i].node + 5, c.results[i].diskseq);

        bool ok = true;
        for (size_t i = 0; i < N_CONCURRENT; i++) {
                AsyncAttach *r = &c.results[i];
                if (!r->done || !r->object) {
                        print_error("attach %zu: %s: %s\n", i, r->done ? r->error_name : "no reply",
                                    r->error_message ?: "");
                        ok = false;
                } else if (!streq(r->object, c.results[0].object ?: "")) {
                        print_error("attach %zu got %s (%s), attach 0 got %s (%s)\n", i, r->object,
                                    r->node, c.results[0].object, c.results[0].node);
                        ok = false;
                } else if (r->reused)
                        reused++;
        }
        if (!ok)
                fail_msg("%d concurrent identical Attach calls did not all get one device",
                         N_CONCURRENT);
        const char *object = c.results[0].object;
        if (reused != N_CONCURRENT - 1)
                fail_msg("%zu of %d concurrent attaches said reused, expected %d", reused,
                         N_CONCURRENT, N_CONCURRENT - 1);
        expect_losetup_j(path, 1, "16 concurrent attaches");
        expect_references(e, object, N_CONCURRENT, "16 concurrent attaches");

        /* Each connection drops its reference: the last one takes the device down. */
        for (size_t i = 0; i < N_CONCURRENT; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                const char *st;
                int r = sd_bus_call_method(buses[i], LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Detach", &error, &reply,
                                           "oa{sv}", object, 0);
                assert_bus_ok(r, &error, "Detach");
                assert_true(sd_bus_message_read(reply, "s", &st) > 0);
                bool last = i == N_CONCURRENT - 1;
                if (!streq(st, last ? LOOPMGR_STATE_DETACHED : LOOPMGR_STATE_ATTACHED))
                        fail_msg("Detach %zu of %d returned '%s', expected '%s'", i + 1,
                                 N_CONCURRENT, st,
                                 last ? LOOPMGR_STATE_DETACHED : LOOPMGR_STATE_ATTACHED);
                if (!last)
                        expect_references(e, object, N_CONCURRENT - (uint32_t) i - 1,
                                          "after a detach");
        }
        if (loop_binding_present(c.results[0].node + 5, c.results[0].diskseq) != 0)
                fail_msg("%s is still bound after the last Detach", c.results[0].node);
        expect_losetup_j(path, 0, "after 16 detaches");
}

/* ------------------------------------------------------------------------------------------ */
/* 8. btrfs sub-volumes: the classic `mount -o loop` alias */

static bool have_program(const char *name) {
        _cleanup_free_ char *out = NULL;
        return env_run(&out, NULL, "sh", "-c", "command -v \"$0\"", name, NULL) == 0;
}

static bool kernel_has_filesystem(const char *name) {
        _cleanup_free_ char *text = NULL;
        size_t size = 0;
        FILE *f = fopen("/proc/filesystems", "re");
        bool found = false;

        if (!f)
                return true; /* cannot tell: let mount say */
        while (getline(&text, &size, f) > 0) {
                /* "nodev\tramfs\n" or "\text4\n" */
                char *t = strrchr(text, '\t');
                t = t ? t + 1 : text;
                t[strcspn(t, "\n")] = 0;
                if (streq(t, name))
                        found = true;
        }
        fclose(f);
        return found;
}

/* Mounts through `loopmgrctl mount` and records the device it used for the teardown. */
static void ctl_mount(Env *e, const char *image, const char *dir, const char *options) {
        assert_int_equal(env_track_mount(e, dir), 0);
        if (options)
                CTL_OK(e, "mount", image, dir, "-o", options);
        else
                CTL_OK(e, "mount", image, dir);

        /* The device it mounted: the one exposing the whole image. */
        _cleanup_free_ char *object = object_for_node(e, image);
        _cleanup_props_ DeviceProps p = {};
        PROPS_OK(e, object, &p);
        assert_int_equal(env_track_device(e, p.name, p.diskseq), 0);
}

static void ctl_umount(Env *e, const char *dir) {
        CTL_OK(e, "umount", dir);
        env_forget_mount(e, dir);
}

void test_btrfs_subvolumes(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = NULL, *top = NULL, *d1 = NULL, *d2 = NULL;
        _cleanup_free_ char *sub_a = NULL, *sub_b = NULL, *object = NULL, *leak = NULL;
        _cleanup_props_ DeviceProps p = {}, q = {};
        struct stat st;

        /* A kernel without btrfs is a machine we cannot test this on; missing tools are a
         * broken set-up (tools/deps.sh installs them). */
        if (!kernel_has_filesystem("btrfs")) {
                print_message("skipping: this kernel has no btrfs\n");
                skip();
        }
        if (!have_program("mkfs.btrfs") || !have_program("btrfs"))
                fail_msg("mkfs.btrfs or btrfs is missing: run tools/deps.sh (btrfs-progs)");
        path = make_image(e, 256 * MiB);
        top = env_make_dir(e, "btrfs-top");
        d1 = env_make_dir(e, "btrfs-a");
        d2 = env_make_dir(e, "btrfs-b");
        env_run_ok("mkfs.btrfs", "-q", "-f", path);

        ctl_mount(e, path, top, NULL);
        sub_a = env_join(top, "a");
        sub_b = env_join(top, "b");
        env_run_ok("btrfs", "subvolume", "create", sub_a);
        env_run_ok("btrfs", "subvolume", "create", sub_b);
        ctl_umount(e, top);
        expect_losetup_j(path, 0, "after loopmgrctl umount of the top level");

        ctl_mount(e, path, d1, "subvol=a");
        ctl_mount(e, path, d2, "subvol=b");
        expect_losetup_j(path, 1, "two sub-volumes of one image mounted");
        object = object_for_node(e, path);
        PROPS_OK(e, object, &p);
        if (p.references != 2)
                fail_msg("References of %s with two sub-volumes mounted: %u, expected 2", p.node,
                         p.references);

        write_file_at(d1, "in-a", "written through sub-volume a\n");
        write_file_at(d2, "in-b", "written through sub-volume b\n");
        /* Two sub-volumes, not one directory twice. */
        leak = env_join(d1, "in-b");
        assert_true(stat(leak, &st) < 0 && errno == ENOENT);

        ctl_umount(e, d1);
        PROPS_OK(e, object, &q);
        if (q.references != 1 || loop_binding_present(p.name, p.diskseq) != 1)
                fail_msg("after umount of one sub-volume: References %u (expected 1), bound %d",
                         q.references, loop_binding_present(p.name, p.diskseq));
        ctl_umount(e, d2);
        if (!wait_binding_gone(p.name, p.diskseq, SIGNAL_TIMEOUT))
                fail_msg("%s is still bound after both sub-volumes were unmounted", p.node);
        expect_losetup_j(path, 0, "after both umounts");

        env_run_ok("btrfs", "check", "--readonly", path);
}

/* ------------------------------------------------------------------------------------------ */
/* 9. ext4 attached twice */

void test_ext4_attached_twice(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 32 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_free_ char *out = NULL, *err = NULL;
        _cleanup_attached_ Attached a = {}, b = {};
        const char *content = "one device, one page cache\n";

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        ATTACH_OK(e, path, O_RDWR, &b, 0);
        if (!b.reused || !streq(b.object, a.object))
                fail_msg("second Attach of the ext4 image: got %s (reused=%s), expected %s", b.node,
                         b.reused ? "yes" : "no", a.node);
        expect_losetup_j(path, 1, "ext4 image attached twice");

        mount_ok(e, a.node, mnt, "ext4", 0);
        write_file_at(mnt, "hello.txt", content);
        umount_ok(e, mnt);

        detach_expect(e, a.object, LOOPMGR_STATE_ATTACHED);
        detach_gone(e, &a);

        env_run_ok("e2fsck", "-fn", path);
        int r = env_run(&out, &err, "debugfs", "-R", "cat /hello.txt", path, NULL);
        if (r != 0 || !streq(out, content))
                fail_msg("debugfs cat /hello.txt: exit %d, got '%s', expected '%s' (%s)", r,
                         out ?: "", content, err ?: "");
}

/* ------------------------------------------------------------------------------------------ */
/* 10. Resolve through loop over partition over loop */

void test_resolve_partition_chain(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB), *part = NULL;
        _cleanup_attached_ Attached a = {}, p = {};
        _cleanup_resolved_ Resolved r1 = {}, r2 = {}, r3 = {};
        _cleanup_close_ int pfd = -EBADF, ffd = -EBADF;
        _cleanup_props_ DeviceProps pp = {};
        struct stat st;
        int r;

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        part = add_partition(e, &a, 1, 2048, 4096);
        const char *part_name = strrchr(part, '/') + 1;
        ATTACH_OK(e, part, O_RDWR, &p, 0);
        assert_int_equal(stat(path, &st), 0);

        /* Everything P exposes: [1M, 3M) of the file, through three layers. */
        pfd = open(p.node, O_RDONLY | O_CLOEXEC);
        assert_true(pfd >= 0);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = call_resolve(e, pfd, &error, &r1, 0);
                assert_bus_ok(r, &error, "Resolve of the loop over the partition");
        }
        if (r1.unexpected)
                fail_msg("Resolve returned unexpected keys: %s", r1.unexpected);
        assert_non_null(r1.base_kind);
        assert_string_equal(r1.base_kind, "file");
        assert_int_equal(r1.base_device, st.st_dev);
        assert_int_equal(r1.base_inode, st.st_ino);
        assert_int_equal(r1.offset, 1 * MiB);
        assert_int_equal(r1.size, 2 * MiB);
        chain_names(r1.chain, r1.n_chain, 3, "Resolve chain (loop/partition/loop/file)", p.node + 5,
                    part_name, a.node + 5, path);
        if (!strv_contains(r1.aliases, p.object) || !strv_contains(r1.aliases, a.object)) {
                _cleanup_free_ char *l = strv_join(r1.aliases);
                fail_msg("Resolve aliases %s, expected both %s and %s", l ?: "", p.object,
                         a.object);
        }

        /* A sub-range of P: [1.5M, 2M) of the file. */
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = call_resolve(e, pfd, &error, &r2, 2, OPT_T(LOOPMGR_OPT_OFFSET, 512 * KiB),
                                 OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 512 * KiB));
                assert_bus_ok(r, &error, "Resolve of a sub-range of the loop over the partition");
        }
        assert_int_equal(r2.offset, 1 * MiB + 512 * KiB);
        assert_int_equal(r2.size, 512 * KiB);
        if (!strv_contains(r2.aliases, p.object) || !strv_contains(r2.aliases, a.object))
                fail_msg("Resolve of [1.5M, 2M): aliases do not list both %s and %s", p.object,
                         a.object);

        /* [4M, 5M) of the file: only a exposes it, not the loop over the partition. */
        ffd = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(ffd >= 0);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                r = call_resolve(e, ffd, &error, &r3, 2, OPT_T(LOOPMGR_OPT_OFFSET, 4 * MiB),
                                 OPT_T(LOOPMGR_OPT_SIZE_LIMIT, 1 * MiB));
                assert_bus_ok(r, &error, "Resolve of file bytes [4M, 5M)");
        }
        if (!strv_contains(r3.aliases, a.object) || strv_contains(r3.aliases, p.object)) {
                _cleanup_free_ char *l = strv_join(r3.aliases);
                fail_msg("Resolve of [4M, 5M): aliases %s, expected %s and not %s", l ?: "",
                         a.object, p.object);
        }

        /* The Chain property says the same. */
        PROPS_OK(e, p.object, &pp);
        chain_names(pp.chain, pp.n_chain, 3, "Chain property of the loop over the partition",
                    part_name, a.node + 5);

        pfd = safe_close(pfd);
        detach_gone(e, &p);
        delete_partition(e, &a, 1);
        detach_gone(e, &a);
}
