/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Device.Mount and Device.Unmount (docs/API.md) against a real polkitd, with two unprivileged
 * users (lmdesk1, lmdesk2, created when absent and left in place) calling from their own bus
 * connections through the agents of polkit-util.h: ext4, squashfs and vfat images mounted under
 * /run/media/<user>/ with nosuid,nodev (ro, uid=/gid= where they belong), readable by their user
 * and nobody else; the same mount point for a second Mount; Unmount with release-reference
 * tearing the device down; mount-others for somebody else's mount; polkit saying no; label
 * sanitisation and name collisions; bad options; no file system; a mount removed by umount(8)
 * behind the daemon's back; a daemon restart keeping the mount and its reference; the udev
 * properties of managed devices; a Mount of a slow image (slowfs.c: every read 300 ms) that
 * keeps no other client waiting, with Detach refused Busy meanwhile, and its caller
 * disconnecting mid-mount, which leaves nothing behind (test-mount-slow.c).
 *
 * polkit rules are written to /etc/polkit-1/rules.d/48-loopmgr-mount-test.rules for the length
 * of one test (they only ever name the test users). A lock on /run/loopmgr-test-mount.lock
 * keeps two runs of this binary from fighting over that file, the users and /run/media/lmdesk*.
 * Every test unmounts what it mounted, detaches what it attached and removes the mount
 * directories, also when it fails.
 *
 * Run:   eval "$(LOOPMGR_TEST_ENV=/run/loopmgr-mountd tests/env.sh start)"
 *        meson test -C BUILD test-mount
 */

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

const char *const user_names[N_USERS] = {"lmdesk1", "lmdesk2"};

Ctx ctx = {
        .agents = {{.fd = -EBADF}, {.fd = -EBADF}},
        .lock_fd = -EBADF,
};

/* ------------------------------------------------------------------------------------------ */
/* Fixtures */

/* Removes the (empty) mount directories of the test users; the user directories go too. */
static bool clean_media(void) {
        bool ok = true;
        for (unsigned i = 0; i < N_USERS; i++) {
                _cleanup_free_ char *dir = NULL;
                assert_true(asprintf(&dir, MEDIA "/%s", user_names[i]) > 0);
                DIR *d = opendir(dir);
                if (!d)
                        continue;
                for (struct dirent *de; (de = readdir(d));) {
                        if (streq(de->d_name, ".") || streq(de->d_name, ".."))
                                continue;
                        print_error("left behind: %s/%s\n", dir, de->d_name);
                        ok = false;
                        if (unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) < 0 &&
                            (errno != ENOTDIR || unlinkat(dirfd(d), de->d_name, 0) < 0))
                                print_error("cannot remove %s/%s: %m\n", dir, de->d_name);
                }
                closedir(d);
                (void) rmdir(dir);
        }
        return ok;
}

/* polkitd knows org.loopmgr.mount and mount-others. The actions file is shared by every
 * environment instance on the host, and an instance that stops may take it away: `tests/env.sh
 * start` on ours installs it again (and does nothing else when all is up). */
static bool actions_known(sd_bus *bus) {
        const char *me = NULL;
        if (sd_bus_get_unique_name(bus, &me) < 0)
                return false;
        for (unsigned i = 0; i < 2; i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                PkVerdict v;
                if (pk_check(bus, me, i == 0 ? "org.loopmgr.mount" : "org.loopmgr.mount-others", &v,
                             &error) < 0)
                        return false;
        }
        return true;
}

static int ensure_actions(sd_bus *bus) {
        const char *address = getenv("DBUS_SYSTEM_BUS_ADDRESS");
        const char *prefix = "unix:path=";
        _cleanup_free_ char *instance = NULL, *script = NULL, *envvar = NULL, *err = NULL;

        if (actions_known(bus))
                return 0;
        if (!address || strncmp(address, prefix, strlen(prefix)) != 0)
                return -EINVAL;
        instance = strndup(address + strlen(prefix), strcspn(address + strlen(prefix), ","));
        if (!instance || !strrchr(instance, '/'))
                return -EINVAL;
        *strrchr(instance, '/') = 0;
        if (asprintf(&script, "%s/tests/env.sh", ctx.srcdir) < 0 ||
            asprintf(&envvar, "LOOPMGR_TEST_ENV=%s", instance) < 0)
                return -ENOMEM;
        print_message("polkitd does not know org.loopmgr.mount; running %s start\n", script);
        char *argv[] = {(char *) "env", envvar, (char *) "bash", script, (char *) "start", NULL};
        int r = run_command(argv, NULL, NULL, &err);
        if (r != 0)
                print_error("%s start failed (%d): %s\n", script, r, err ?: "");
        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        while (!actions_known(bus)) {
                if (now_usec() >= deadline) {
                        print_error("polkitd still does not know org.loopmgr.mount\n");
                        return -ENOENT;
                }
                sleep_usec(100 * USEC_PER_MSEC);
        }
        return 0;
}

static int group_setup(void **state) {
        const char *srcdir = getenv("LOOPMGR_SRCDIR");

        if (pk_lock(LOCK_FILE, 240 * USEC_PER_SEC, &ctx.lock_fd) < 0)
                goto fail;
        pk_rules_remove(RULES_FILE);
        for (unsigned i = 0; i < N_USERS; i++)
                if (pk_ensure_user(user_names[i], &ctx.uid[i], &ctx.gid[i]) < 0)
                        goto fail;
        if (!srcdir || !*srcdir) {
                print_error("LOOPMGR_SRCDIR is not set (run under meson test)\n");
                goto fail;
        }
        ctx.srcdir = strdup(srcdir);
        if (!ctx.srcdir)
                goto fail;
        /* Mount directories left by a run that was killed. */
        (void) clean_media();

        if (env_group_setup(state, "mount") < 0)
                return -1;
        Env *e = *state;
        test_bus = e->bus;
        if (ensure_actions(e->bus) < 0)
                goto fail;
        /* The users reach their own directories through it, and nothing else. */
        if (chmod(e->tmpdir, 0711) < 0)
                goto fail;
        for (unsigned i = 0; i < N_USERS; i++) {
                if (asprintf(&ctx.dir[i], "%s/%s", e->tmpdir, user_names[i]) < 0) {
                        ctx.dir[i] = NULL;
                        goto fail;
                }
                if (pk_make_dir(ctx.dir[i], 0700, ctx.uid[i], ctx.gid[i]) < 0)
                        goto fail;
        }
        return 0;
fail:
        env_group_failed = true;
        return -1;
}

static int group_teardown(void **state) {
        int r = env_group_teardown(state);
        pk_rules_remove(RULES_FILE);
        for (unsigned i = 0; i < N_USERS; i++) {
                pk_agent_stop(&ctx.agents[i]);
                free(ctx.dir[i]);
                ctx.dir[i] = NULL;
        }
        if (!clean_media())
                r = -1;
        free(ctx.srcdir);
        ctx.lock_fd = safe_close(ctx.lock_fd);
        if (r < 0)
                env_group_failed = true;
        return r;
}

static int test_setup_fail(void) {
        /* cmocka runs no teardown after a failed setup. */
        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&ctx.agents[i]);
        pk_rules_remove(RULES_FILE);
        return -1;
}

static int test_setup(void **state) {
        if (ensure_actions(test_bus) < 0)
                return -1;
        for (unsigned i = 0; i < N_USERS; i++)
                if (pk_agent_start(&ctx.agents[i], ctx.uid[i], ctx.gid[i]) < 0)
                        return test_setup_fail();
        if (pk_rules_write(RULES_FILE, BASE_RULES_U2_NO) < 0)
                return test_setup_fail();
        for (unsigned i = 0; i < N_USERS; i++)
                if (pk_await_verdict(test_bus, ctx.agents[i].unique_name, "org.loopmgr.mount",
                                     PK_VERDICT_YES, 5 * USEC_PER_SEC, NULL) < 0 ||
                    pk_await_verdict(test_bus, ctx.agents[i].unique_name, "org.loopmgr.attach",
                                     PK_VERDICT_YES, 5 * USEC_PER_SEC, NULL) < 0 ||
                    pk_await_verdict(test_bus, ctx.agents[i].unique_name,
                                     "org.loopmgr.mount-others", PK_VERDICT_NO, 5 * USEC_PER_SEC,
                                     NULL) < 0) {
                        print_error("polkit does not pick up %s\n", RULES_FILE);
                        return test_setup_fail();
                }
        return 0;
}

static int test_teardown(void **state) {
        Env *e = *state;
        bool ok = true;
        int status;

        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&ctx.agents[i]);
        pk_rules_remove(RULES_FILE);

        /* Tracked mounts first (the daemon sees them go and releases their references), then
         * the devices. */
        int left = env_cleanup_test(e);
        if (left > 0) {
                print_error("the test left %d device(s) attached\n", left);
                ok = false;
        }
        if (!env_expect_nothing_under(e->tmpdir, 5 * USEC_PER_SEC))
                ok = false;
        slowfs_stop();
        if (!clean_media())
                ok = false;
        if (pk_user_processes(ctx.uid, N_USERS) > 0)
                ok = false;
        if (e->daemon_pid > 0 && waitpid(e->daemon_pid, &status, WNOHANG) == e->daemon_pid) {
                print_error("loopmgrd died\n");
                e->daemon_pid = 0;
                ok = false;
                if (env_start_daemon(e) < 0)
                        env_group_failed = true;
        }
        return ok ? 0 : -1;
}

#define T(f) cmocka_unit_test_setup_teardown(f, test_setup, test_teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_ext4_owner),      T(test_squashfs),          T(test_vfat_owner_ids),
                T(test_mount_others),    T(test_polkit_no),         T(test_names),
                T(test_refusals),        T(test_external_umount),   T(test_restart),
                T(test_udev_properties), T(test_slow_mount_others), T(test_slow_mount_disconnect),
        };
        return ENV_RUN_TESTS(tests, group_setup, group_teardown, NULL);
}
