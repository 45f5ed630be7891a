/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-mount's tests on a slow image: slowfs (tests/slowfs.c) makes every read take 300 ms, a
 * Mount of it takes seconds, and meanwhile other clients are answered at once, Detach of the
 * device is refused Busy, and a caller that disconnects mid-mount leaves nothing behind. */

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include "integration-util.h"
#include "loopmgr-bus.h"
#include "polkit-util.h"
#include "test-mount.h"

/* A slow image: slowfs (tests/slowfs.c) serves an image whose reads each take SLOW_READ_MSEC
 * once it is told to (SIGUSR1), so a Mount of a loop device over it takes seconds. */

#define SLOW_READ_MSEC    300 /* what slowfs_start() passes */
#define OTHERS_LIMIT_MSEC 50

static pid_t slowfs_pid;
static char *slowfs_dir;

void slowfs_stop(void) {
        if (slowfs_pid > 0) {
                (void) kill(slowfs_pid, SIGTERM);
                (void) waitpid(slowfs_pid, NULL, 0);
                slowfs_pid = 0;
        }
        if (slowfs_dir) {
                (void) umount2(slowfs_dir, MNT_DETACH);
                (void) rmdir(slowfs_dir);
                free(slowfs_dir);
                slowfs_dir = NULL;
        }
}

/* The image on slowfs (reads still fast), or NULL with a skip when slowfs cannot run here. */
static char *slowfs_start(const char *image) {
        const char *bin = getenv("LOOPMGR_SLOWFS");
        char *path = NULL;
        struct stat dir_st, st;

        if (!bin || !*bin || access(bin, X_OK) < 0 || access("/dev/fuse", R_OK | W_OK) < 0) {
                print_message("  no slowfs (libfuse3, /dev/fuse): skipped\n");
                return NULL;
        }
        assert_true(asprintf(&slowfs_dir, "%s/slowfs", ctx.dir[U1]) > 0);
        (void) mkdir(slowfs_dir, 0755);
        assert_int_equal(stat(slowfs_dir, &dir_st), 0);
        slowfs_pid = fork();
        assert_true(slowfs_pid >= 0);
        if (slowfs_pid == 0) {
                execl(bin, bin, image, slowfs_dir, "300", (char *) NULL);
                _exit(127);
        }
        assert_true(asprintf(&path, "%s/image", slowfs_dir) > 0);
        for (uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;;) {
                if (stat(path, &st) == 0 && st.st_dev != dir_st.st_dev)
                        return path;
                if (now_usec() >= deadline || waitpid(slowfs_pid, NULL, WNOHANG) == slowfs_pid)
                        fail_msg("slowfs did not come up on %s", slowfs_dir);
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

/* From now on every read of the image takes SLOW_READ_MSEC; the device's page cache is dropped
 * so that the probe and the mount read it again. */
static void slowfs_go_slow(const char *node) {
        int fd = open(node, O_RDONLY | O_CLOEXEC);

        assert_true(fd >= 0);
        assert_int_equal(kill(slowfs_pid, SIGUSR1), 0);
        assert_int_equal(ioctl(fd, BLKFLSBUF, 0), 0);
        close(fd);
}

/* Sends Mount(release-reference) as the user without waiting for the answer. */
static void user_mount_start(unsigned who, const char *object) {
        static PkRequest q;

        pk_request_call(&q, object, LOOPMGR_DEVICE_INTERFACE, "Mount");
        assert_int_equal(pk_request_options(&q, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true)), 0);
        assert_int_equal(pk_agent_send(&ctx.agents[who], &q), 0);
}

static bool agent_answered(unsigned who) {
        struct pollfd pfd = {.fd = ctx.agents[who].fd, .events = POLLIN};
        return poll(&pfd, 1, 0) > 0;
}

static double msec_since(uint64_t t) {
        return (double) (now_usec() - t) / 1000.0;
}

/* A Mount that takes seconds (every read of the image 300 ms) keeps nobody else waiting:
 * meanwhile another client's Version reads, an Attach and a Detach of an unrelated image are
 * answered in under 50 ms, and a Detach of the device being mounted says Busy. */
void test_slow_mount_others(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "slow.img", "Slow");
        _cleanup_free_ char *fast = NULL, *slow = NULL, *mp = NULL;
        _cleanup_attached_ Attached a = {}, b = {};
        double version_max = 0, attach_ms, detach_ms, mount_ms;
        unsigned n_version = 0;
        static PkReply p;
        uint64_t t0, t;

        slow = slowfs_start(img);
        if (!slow)
                skip();
        assert_int_equal(env_make_image(e, e->tmpdir, 1 * MiB, &fast), 0);
        user_attach(e, U1, slow, true, &a);
        slowfs_go_slow(a.node);

        user_mount_start(U1, a.object);
        t0 = now_usec();
        sleep_usec(100 * USEC_PER_MSEC);

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_free_ char *st = NULL;
                int r = call_device_detach(e, a.object, &error, &st, 0);
                assert_bus_error(r, &error, LOOPMGR_ERROR_BUSY);
                print_message("  Detach during the Mount: %s: %s\n", error.name, error.message);
        }
        for (unsigned i = 0; i < 20; i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_free_ char *v = NULL;
                double ms;

                t = now_usec();
                assert_bus_ok(get_version(e, &error, &v), &error, "Version");
                ms = msec_since(t);
                version_max = ms > version_max ? ms : version_max;
                n_version++;
                sleep_usec(20 * USEC_PER_MSEC);
        }
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_free_ char *st = NULL;

                t = now_usec();
                assert_bus_ok(attach_file(e, fast, O_RDWR, &error, &b, 0), &error, "Attach");
                attach_ms = msec_since(t);
                t = now_usec();
                assert_bus_ok(call_device_detach(e, b.object, &error, &st, 0), &error, "Detach");
                detach_ms = msec_since(t);
        }
        if (agent_answered(U1))
                fail_msg("the Mount was answered within %.0f ms, before the other calls were "
                         "done: the image is not slow enough to tell",
                         msec_since(t0));

        assert_int_equal(pk_agent_receive(&ctx.agents[U1], &p, 120 * 1000), 0);
        mount_ms = msec_since(t0);
        mp = strdup(mount_point_of(e, &p));
        assert_string_equal(mp, MEDIA "/lmdesk1/Slow");
        expect_mounted(mp, "ext4", (const char *[]){"ro", "nosuid", "nodev", NULL}, NULL);
        print_message("  slow Mount (%u ms a read): %.0f ms; meanwhile another client: Version "
                      "max %.1f ms (%u reads), Attach %.1f ms, Detach %.1f ms (limit %u ms)\n",
                      SLOW_READ_MSEC, mount_ms, version_max, n_version, attach_ms, detach_ms,
                      OTHERS_LIMIT_MSEC);
        assert_true(mount_ms > 1000);
        assert_true(version_max < OTHERS_LIMIT_MSEC);
        assert_true(attach_ms < OTHERS_LIMIT_MSEC);

        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount");
        env_forget_mount(e, mp);
        expect_device_gone(e, &a);
}

/* The caller of a slow Mount disconnects mid-mount: once mount(2) returns, the daemon unmounts
 * it again, removes the directory and, the caller's lifetime=client reference being the only
 * one, detaches the device. */
void test_slow_mount_disconnect(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "gone.img", "Gone");
        _cleanup_free_ char *slow = NULL;
        _cleanup_attached_ Attached a = {};
        size_t n = 0, entries = 0;
        uint64_t t0, t_kill;
        DIR *dir;

        slow = slowfs_start(img);
        if (!slow)
                skip();
        user_attach_lifetime(e, U1, slow, true, "client", &a);
        slowfs_go_slow(a.node);

        user_mount_start(U1, a.object);
        t0 = now_usec();
        sleep_usec(300 * USEC_PER_MSEC);
        assert_false(agent_answered(U1));
        assert_int_equal(kill(ctx.agents[U1].pid, SIGKILL), 0);
        pk_agent_stop(&ctx.agents[U1]);
        t_kill = now_usec();

        for (uint64_t deadline = now_usec() + 120 * USEC_PER_SEC;
             object_exists(e, a.object) || loop_binding_present(a.node + 5, a.diskseq) > 0;) {
                if (now_usec() >= deadline)
                        fail_msg("%s is still there 120 s after its caller went away", a.node);
                sleep_usec(50 * USEC_PER_MSEC);
        }
        assert_int_equal(mounts_under(MEDIA "/lmdesk1", &n), 0);
        assert_int_equal(n, 0);
        dir = opendir(MEDIA "/lmdesk1");
        if (dir) {
                for (struct dirent *de; (de = readdir(dir));)
                        if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                                entries++;
                closedir(dir);
        }
        assert_int_equal(entries, 0);
        print_message("  caller killed %.0f ms into the Mount; %.0f ms later no mount, no "
                      "directory in " MEDIA "/lmdesk1 and no device are left\n",
                      (double) (t_kill - t0) / 1000.0, msec_since(t_kill));
}
