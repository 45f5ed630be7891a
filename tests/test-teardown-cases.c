/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-teardown's tests 1-7: mounted in this and another namespace, a stacked loop device, an
 * open node, a wait that times out, a mounted partition, the search for openers. */

#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "test-teardown.h"

/* ------------------------------------------------------------------------------------------ */
/* 1. Mounted in our namespace */

void test_mounted(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 64 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_attached_ Attached a = {};

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *openers = catch_properties_changed(e, a.object, "Openers");
        Catcher *states = catch_properties_changed(e, a.object, "State");
        Catcher *removed = catch_interfaces_removed(e);

        size_t mark = catcher_mark(e, openers);
        mount_ok(e, a.node, mnt);
        uint64_t mounted = now_usec();
        expect_changed(e, openers, mark, a.object, "Openers", mounted);
        expect_opener(e, a.object, "mount", mnt, GONE_TIMEOUT);

        mark = catcher_mark(e, states);
        detach_pending(e, &a);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);
        expect_changed(e, states, mark, a.object, "State", now_usec());
        /* Still mounted: the opener is still listed while the teardown waits. */
        expect_opener(e, a.object, "mount", mnt, 0);

        uint64_t gone = umount_ok(e, mnt);
        expect_gone(e, removed, &a, gone, "umount of the last mount");
}

/* ------------------------------------------------------------------------------------------ */
/* 2. Mounted in another mount namespace only */

/* Starts `unshare -m --propagation private sh -c 'mount NODE DIR && echo ok && exec sleep 60'`
 * and waits for its "ok": from then on the device is mounted in a namespace the daemon cannot
 * see, kept alive by the child. */
static pid_t spawn_namespace_mount(const char *node, const char *dir) {
        _cleanup_free_ char *script = NULL;
        int p[2];

        assert_true(n_children < ELEMENTSOF(children));
        assert_true(asprintf(&script, "mount '%s' '%s' && echo ok && exec sleep 60", node, dir) >
                    0);
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);

        fflush(NULL);
        pid_t parent = getpid();
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent)
                        _exit(1);
                if (dup2(p[1], STDOUT_FILENO) < 0 || dup2(p[1], STDERR_FILENO) < 0) {
                        perror("test-teardown: dup2 of stdout and stderr for unshare");
                        _exit(1);
                }
                execlp("unshare", "unshare", "-m", "--propagation", "private", "sh", "-c", script,
                       NULL);
                /* stderr is the pipe: the parent shows this in its failure message. */
                fprintf(stderr, "cannot execute unshare: %m\n");
                _exit(127);
        }
        children[n_children++] = pid;
        (void) close(p[1]);

        /* Read until "ok" or EOF (mount failed), 10 s at most. */
        char buf[1024];
        size_t n = 0;
        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        for (;;) {
                buf[n] = 0;
                if (strstr(buf, "ok\n"))
                        break;
                uint64_t t = now_usec();
                struct pollfd pfd = {.fd = p[0], .events = POLLIN};
                int r = t < deadline ? poll(&pfd, 1, (int) ((deadline - t) / USEC_PER_MSEC) + 1)
                                     : 0;
                ssize_t k = r > 0 ? read(p[0], buf + n, sizeof(buf) - 1 - n) : -1;
                if (k <= 0) {
                        (void) close(p[0]);
                        fail_msg("unshare -m ... mount %s %s did not say ok (%s): %s", node, dir,
                                 r == 0 ? "timeout" : "exited", buf);
                }
                n += (size_t) k;
                if (n >= sizeof(buf) - 1)
                        n = 0;
        }
        (void) close(p[0]);
        return pid;
}

static void kill_child(pid_t pid) {
        for (size_t i = 0; i < n_children; i++)
                if (children[i] == pid) {
                        children[i] = children[--n_children];
                        break;
                }
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, NULL, 0), pid);
}

void test_mounted_other_namespace(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 64 * MiB), *mnt = env_make_dir(e, "ns-mnt");
        _cleanup_attached_ Attached a = {};
        size_t n = 0;

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);

        pid_t child = spawn_namespace_mount(a.node, mnt);
        /* Not in our namespace. */
        assert_int_equal(mounts_under(mnt, &n), 0);
        assert_int_equal(n, 0);

        /* Nothing the daemon can see explains the use: only the exclusive-open probe tells. */
        uint64_t took = expect_opener(e, a.object, "mount", "(other namespace)", GONE_TIMEOUT);
        print_message("  (other namespace) listed after %.1f ms\n", (double) took / USEC_PER_MSEC);

        detach_pending(e, &a);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);

        /* The namespace dies with its last process, and the mount with it. */
        kill_child(child);
        expect_gone(e, removed, &a, now_usec(), "end of the other mount namespace");
}

/* ------------------------------------------------------------------------------------------ */
/* 3. A loop device stacked on it */

void test_stacked_loop(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB);
        _cleanup_attached_ Attached a = {}, b = {};
        _cleanup_free_ char *st_b = NULL;

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *openers = catch_properties_changed(e, a.object, "Openers");
        Catcher *removed = catch_interfaces_removed(e);

        size_t mark = catcher_mark(e, openers);
        uint64_t t0 = now_usec();
        ATTACH_OK(e, a.node, O_RDWR, &b, 1, OPT_T(LOOPMGR_OPT_OFFSET, 1 * MiB));
        if (b.reused || streq(b.object, a.object))
                fail_msg("loop over %s at offset 1M: got %s (reused=%s), expected a new device",
                         a.node, b.node, b.reused ? "yes" : "no");
        expect_changed(e, openers, mark, a.object, "Openers", t0);
        expect_opener(e, a.object, "loop", b.node, GONE_TIMEOUT);

        detach_pending(e, &a);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);
        /* A pending lower device does not disturb the upper one. */
        expect_state(e, b.object, LOOPMGR_STATE_ATTACHED);

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = call_detach(e, b.object, &error, &st_b, 0);
                assert_bus_ok(r, &error, "Detach of the upper device");
        }
        uint64_t t = now_usec();
        print_message("  Detach of the upper device %s: %s\n", b.node, st_b);
        if (!streq(st_b, LOOPMGR_STATE_DETACHED) && !streq(st_b, LOOPMGR_STATE_PENDING))
                fail_msg("Detach of the idle upper device %s returned '%s'", b.node, st_b);
        int ib = expect_gone(e, removed, &b, t, "upper device detached");
        int ia = expect_gone(e, removed, &a, t, "its last opener (the upper device) gone");
        if (ib > ia)
                fail_msg("InterfacesRemoved came for the lower device %s before the upper one %s",
                         a.node, b.node);
}

/* ------------------------------------------------------------------------------------------ */
/* 4. A process holding the node open */

void test_held_open(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 8 * MiB);
        _cleanup_attached_ Attached a = {};
        _cleanup_props_ DeviceProps p = {};

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);
        int fd = env_hold(e, a.node, O_RDONLY);
        if (fd < 0)
                fail_msg("open %s: %s", a.node, strerror(-fd));

        detach_pending(e, &a);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);
        /* A plain opener is not named (the kernel cannot tell who cheaply; see docs/API.md),
         * and nothing else holds the device. */
        PROPS_OK(e, a.object, &p);
        if (p.n_openers != 0) {
                _cleanup_free_ char *l = openers_string(&p);
                fail_msg("Openers of %s held only by a plain open(): %s, expected none", a.node,
                         l ?: "?");
        }

        env_release(e, fd);
        expect_gone(e, removed, &a, now_usec(), "close of the last fd");
}

/* ------------------------------------------------------------------------------------------ */
/* 5. Detach(wait=true) that times out */

void test_wait_timeout(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 64 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *st = NULL;

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);
        Catcher *removed = catch_interfaces_removed(e);
        mount_ok(e, a.node, mnt);

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                uint64_t t = now_usec();
                int r = call_detach(e, a.object, &error, &st, 2, OPT_B(LOOPMGR_OPT_WAIT, true),
                                    OPT_T(LOOPMGR_OPT_TIMEOUT_USEC, 300 * USEC_PER_MSEC));
                uint64_t took = now_usec() - t;
                if (r >= 0)
                        fail_msg("Detach(wait, 300 ms) of mounted %s returned '%s', expected %s",
                                 a.node, st, LOOPMGR_ERROR_TIMEOUT);
                assert_bus_error(r, &error, LOOPMGR_ERROR_TIMEOUT);
                print_message("  Detach(wait, 300 ms): %s after %.1f ms: %s\n", error.name,
                              (double) took / USEC_PER_MSEC, error.message);
                if (took < 290 * USEC_PER_MSEC || took > 2 * USEC_PER_SEC)
                        fail_msg("Detach(wait, timeout 300 ms) failed after %.1f ms",
                                 (double) took / USEC_PER_MSEC);
        }
        /* The teardown is still pending, not cancelled. */
        if (loop_binding_present(a.node + 5, a.diskseq) != 1)
                fail_msg("%s is gone while still mounted", a.node);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);

        uint64_t gone = umount_ok(e, mnt);
        expect_gone(e, removed, &a, gone, "umount after the timed-out wait");
}

/* ------------------------------------------------------------------------------------------ */
/* 6. A mounted partition added with addpart */

static bool partition_node_present(const char *disk, const char *part) {
        _cleanup_free_ char *p = NULL;
        assert_true(asprintf(&p, "/sys/block/%s/%s", disk, part) > 0);
        return access(p, F_OK) == 0;
}

void test_mounted_partition(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 64 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_free_ char *part = NULL;
        _cleanup_attached_ Attached a = {};
        char disk[32];

        ATTACH_OK(e, path, O_RDWR, &a, 0);
        snprintf(disk, sizeof(disk), "%s", a.node + 5);
        Catcher *removed = catch_interfaces_removed(e);
        int r = env_add_partition(e, disk, a.diskseq, 1, 2048, 100000, &part);
        if (r < 0)
                fail_msg("addpart %s 1 2048 100000: %s", a.node, strerror(-r));
        const char *part_name = strrchr(part, '/') + 1;
        mkfs_ext4(part);
        /* From here on only the mount changes what holds the disk. */
        Catcher *openers = catch_properties_changed(e, a.object, "Openers");

        size_t mark = catcher_mark(e, openers);
        mount_ok(e, part, mnt);
        uint64_t mounted = now_usec();
        expect_changed(e, openers, mark, a.object, "Openers", mounted);
        /* The partition's mount holds the disk: it is listed on the disk. */
        expect_opener(e, a.object, "mount", mnt, GONE_TIMEOUT);

        detach_pending(e, &a);
        expect_state(e, a.object, LOOPMGR_STATE_DETACH_PENDING);

        uint64_t gone = umount_ok(e, mnt);
        expect_gone(e, removed, &a, gone, "umount of the partition");

        /* The kernel keeps BLKPG partitions of a cleared device without PARTSCAN; the daemon
         * removes them so that the next binding of loopN does not inherit a stale one. */
        uint64_t deadline = now_usec() + GONE_TIMEOUT;
        while (partition_node_present(disk, part_name) && now_usec() < deadline)
                sleep_usec(20 * USEC_PER_MSEC);
        if (partition_node_present(disk, part_name)) {
                /* Do not leave it on the host for the next user of loopN. */
                _cleanup_free_ char *loopdir = NULL;
                assert_true(asprintf(&loopdir, "/sys/block/%s/loop", disk) > 0);
                if (access(loopdir, F_OK) < 0)
                        (void) env_delete_partition(e, disk, 1);
                fail_msg("/sys/block/%s/%s is left over after the teardown of %s", disk, part_name,
                         a.node);
        }
        env_forget_partition(e, disk, 1);
}

/* ------------------------------------------------------------------------------------------ */
/* 7. Looking for openers must not disturb them */

/* The daemon learns of mounts in other namespaces with an exclusive-open probe. An O_EXCL open
 * is a claim: while it lasts, mount(2), mkfs and anything else opening the device O_EXCL fail
 * with EBUSY. A user's mount must never fail because the daemon looked. Here the device is
 * mounted and unmounted in a loop while a child keeps asking for its Openers (as a file
 * manager showing the device would), and every mount and unmount changes the mount table
 * (which makes the daemon re-check the openers of every device). */
void test_probe_does_not_disturb_mounts(void **state) {
        Env *e = *state;
        _cleanup_free_ char *path = make_image(e, 32 * MiB), *mnt = env_make_dir(e, "mnt");
        _cleanup_attached_ Attached a = {};
        unsigned iterations = 1000, busy = 0, other = 0;
        int first_other = 0;

        mkfs_ext4(path);
        ATTACH_OK(e, path, O_RDWR, &a, 0);

        assert_true(n_children < ELEMENTSOF(children));
        fflush(NULL);
        pid_t parent = getpid();
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sd_bus *bus = NULL;
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent || sd_bus_open_system(&bus) < 0)
                        _exit(1);
                /* Bounded: 60 s at most, killed by the test long before. */
                for (uint64_t end = now_usec() + 60 * USEC_PER_SEC; now_usec() < end;) {
                        sd_bus_message *reply = NULL;
                        (void) sd_bus_get_property(bus, LOOPMGR_BUS_NAME, a.object,
                                                   LOOPMGR_DEVICE_INTERFACE, "Openers", NULL,
                                                   &reply, "a(ss)");
                        sd_bus_message_unref(reply);
                }
                _exit(0);
        }
        children[n_children++] = pid;

        uint64_t t0 = now_usec();
        unsigned seed = (unsigned) t0;
        unsigned i;
        for (i = 0; i < iterations && now_usec() - t0 < 8 * USEC_PER_SEC; i++) {
                /* Idle for a random moment: the daemon reacts to the umount (and to the
                 * child's churn) by probing the idle device; the next mount lands anywhere in
                 * that. */
                sleep_usec((uint64_t) (rand_r(&seed) % 2000));
                if (mount(a.node, mnt, "ext4", 0, NULL) < 0) {
                        if (errno == EBUSY)
                                busy++;
                        else if (other++ == 0)
                                first_other = errno;
                        continue;
                }
                if (umount_retry_quiet(mnt) < 0) {
                        (void) umount2(mnt, MNT_DETACH);
                        fail_msg("umount %s: %m", mnt);
                }
        }
        uint64_t took = now_usec() - t0;
        kill_child(pid);

        iterations = i;
        print_message("  %u mounts of %s in %.1f s while a client reads Openers: %u EBUSY, %u "
                      "other failure(s)\n",
                      iterations, a.node, (double) took / USEC_PER_SEC, busy, other);
        if (busy > 0)
                fail_msg("%u of %u mounts of %s failed with EBUSY: something claimed the idle "
                         "device exclusively (an O_EXCL open probe looking for Openers?)",
                         busy, iterations, a.node);
        if (other > 0)
                fail_msg("%u of %u mounts of %s failed, the first with %s", other, iterations,
                         a.node, strerror(first_other));
        detach_gone_or_pending(e, &a);
}
