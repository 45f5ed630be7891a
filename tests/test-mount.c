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
 * disconnecting mid-mount, which leaves nothing behind.
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

#define MiB (1024ULL * 1024ULL)

#define RULES_FILE PK_RULES_DIR "/48-loopmgr-mount-test.rules"
#define LOCK_FILE  "/run/loopmgr-test-mount.lock"
#define MEDIA      "/run/media"

#define ERROR_ACCESS_DENIED "org.freedesktop.DBus.Error.AccessDenied"
#define ERROR_INVALID_ARGS  "org.freedesktop.DBus.Error.InvalidArgs"

#define AGENT_TIMEOUT_MSEC (60 * 1000)

enum { U1, U2, N_USERS };
static const char *const user_names[N_USERS] = {"lmdesk1", "lmdesk2"};

typedef struct Ctx {
        uid_t uid[N_USERS];
        gid_t gid[N_USERS];
        char *dir[N_USERS]; /* <tmpdir>/<user>, 0700, the user's */
        PkAgent agents[N_USERS];
        int lock_fd;
        char *srcdir;
} Ctx;

static Ctx ctx = {
        .agents = {{.fd = -EBADF}, {.fd = -EBADF}},
        .lock_fd = -EBADF,
};

/* ------------------------------------------------------------------------------------------ */
/* Rules */

#define RULE(action, user, result) PK_RULE("org.loopmgr." action, user, result)
/* What every test starts from: both users may attach and mount their own devices. */
#define BASE_RULES                                                                                 \
        RULE("attach", "lmdesk1", "YES")                                                           \
        RULE("attach", "lmdesk2", "YES")                                                           \
        RULE("mount", "lmdesk1", "YES")                                                            \
        RULE("mount", "lmdesk2", "YES") RULE("mount-others", "lmdesk1", "NO")
/* lmdesk2's mount-others verdict, which tests change, last. */
#define BASE_RULES_U2_NO BASE_RULES RULE("mount-others", "lmdesk2", "NO")

static sd_bus *test_bus;

static void set_rules(const char *text) {
        int r = pk_rules_write(RULES_FILE, text);
        if (r < 0)
                fail_msg("writing %s: %s", RULES_FILE, strerror(-r));
}

static void expect_verdict(unsigned who, const char *action, PkVerdict v) {
        PkVerdict last = PK_VERDICT_NO;
        int r = pk_await_verdict(test_bus, ctx.agents[who].unique_name, action, v, 5 * USEC_PER_SEC,
                                 &last);
        if (r < 0)
                fail_msg("polkit says %s for %s / %s, expected %s (%s)", pk_verdict_name(last),
                         user_names[who], action, pk_verdict_name(v), strerror(-r));
}

/* ------------------------------------------------------------------------------------------ */
/* Calls as the users */

static void agent_do(unsigned who, PkRequest *q, PkReply *p) {
        int r = pk_agent_call(&ctx.agents[who], q, p, AGENT_TIMEOUT_MSEC);
        if (r < 0)
                fail_msg("no reply from the agent for %s: %s", user_names[who], strerror(-r));
}

/* Attach(fd opened as the user) with read-only and, unless NULL, lifetime as given; tracks the
 * device. */
static void user_attach_lifetime(Env *e, unsigned who, const char *path, bool read_only,
                                 const char *lifetime, Attached *ret) {
        static PkRequest q;
        static PkReply p;

        pk_request_call(&q, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, "Attach");
        assert_int_equal(pk_request_arg(&q, 'h', read_only ? O_RDONLY : O_RDWR, path), 0);
        if (lifetime)
                assert_int_equal(pk_request_options(&q, 2, OPT_B(LOOPMGR_OPT_READ_ONLY, read_only),
                                                    OPT_S(LOOPMGR_OPT_LIFETIME, lifetime)),
                                 0);
        else
                assert_int_equal(pk_request_options(&q, 1, OPT_B(LOOPMGR_OPT_READ_ONLY, read_only)),
                                 0);
        agent_do(who, &q, &p);
        pk_expect_ok(&p, "Attach");
        const PkValue *object = pk_reply_value(&p, 0, 'o'), *node = pk_reply_value(&p, 1, 's'),
                      *diskseq = pk_reply_value(&p, 2, 't');
        assert_non_null(object);
        assert_non_null(node);
        assert_non_null(diskseq);
        assert_true(strncmp(node->string, "/dev/", 5) == 0);
        assert_int_equal(env_track_device(e, node->string + 5, diskseq->number), 0);
        *ret = (Attached){.object = strdup(object->string),
                          .node = strdup(node->string),
                          .diskseq = diskseq->number};
        assert_non_null(ret->object);
        assert_non_null(ret->node);
}

static void user_attach(Env *e, unsigned who, const char *path, bool read_only, Attached *ret) {
        user_attach_lifetime(e, who, path, read_only, NULL, ret);
}

/* Device.Mount or Device.Unmount as the user, with n OPT_*() options. */
static void user_device_call(unsigned who, const char *object, const char *member, PkReply *p,
                             unsigned n, ...) {
        static PkRequest q;
        va_list ap;

        pk_request_call(&q, object, LOOPMGR_DEVICE_INTERFACE, member);
        va_start(ap, n);
        int r = pk_request_options_va(&q, n, ap);
        va_end(ap);
        assert_int_equal(r, 0);
        agent_do(who, &q, p);
}

/* Device.Detach of the user's own reference; waits until the device is gone when it was the
 * last one. */
static void expect_device_gone(Env *e, const Attached *a);
static void user_detach(Env *e, unsigned who, const Attached *a, bool last) {
        static PkRequest q;
        static PkReply p;
        pk_request_call(&q, a->object, LOOPMGR_DEVICE_INTERFACE, "Detach");
        agent_do(who, &q, &p);
        pk_expect_ok(&p, "Detach");
        if (last)
                expect_device_gone(e, a);
}

/* The mount point a successful Mount returned; tracked so that the cleanup unmounts it. */
static const char *mount_point_of(Env *e, const PkReply *p) {
        pk_expect_ok(p, "Mount");
        const PkValue *v = pk_reply_value(p, 0, 's');
        assert_non_null(v);
        assert_int_equal(env_track_mount(e, v->string), 0);
        return v->string;
}

static int user_read(unsigned who, const char *path, PkReply *p) {
        static PkRequest q;
        memset(&q, 0, sizeof(q));
        q.op = PK_OP_READ_FILE;
        assert_int_equal(pk_request_arg(&q, 's', 0, path), 0);
        agent_do(who, &q, p);
        return p->r;
}

/* ------------------------------------------------------------------------------------------ */
/* What the daemon and the kernel say */

static char *get_string_prop(Env *e, const char *object, const char *name) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        char *s = NULL;
        int r = sd_bus_get_property_string(e->bus, LOOPMGR_BUS_NAME, object,
                                           LOOPMGR_DEVICE_INTERFACE, name, &error, &s);
        if (r < 0)
                fail_msg("Get %s of %s: %s", name, object, error.message ?: strerror(-r));
        return s;
}

static uint32_t get_u32_prop(Env *e, const char *object, const char *name) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        uint32_t v = 0;
        int r = sd_bus_get_property_trivial(e->bus, LOOPMGR_BUS_NAME, object,
                                            LOOPMGR_DEVICE_INTERFACE, name, &error, 'u', &v);
        if (r < 0)
                fail_msg("Get %s of %s: %s", name, object, error.message ?: strerror(-r));
        return v;
}

static bool object_exists(Env *e, const char *object) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        char *s = NULL;
        int r = sd_bus_get_property_string(e->bus, LOOPMGR_BUS_NAME, object,
                                           LOOPMGR_DEVICE_INTERFACE, "Node", &error, &s);
        free(s);
        return r >= 0;
}

static void expect_device_gone(Env *e, const Attached *a) {
        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        while (object_exists(e, a->object) || loop_binding_present(a->node + 5, a->diskseq) > 0) {
                if (now_usec() >= deadline)
                        fail_msg("%s (%s) is still there", a->node, a->object);
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

/* The fields of the mountinfo line whose mount point is `path`: mount options and super
 * options; false when there is none. */
static bool mountinfo_find(const char *path, char **ret_opts, char **ret_super, char **ret_type) {
        FILE *f = fopen("/proc/self/mountinfo", "re");
        char *line = NULL;
        size_t size = 0;
        bool found = false;

        assert_non_null(f);
        while (getline(&line, &size, f) > 0) {
                char target[4096], opts[1024], rest[4096];
                /* id parent maj:min root target opts ... - type source super */
                if (sscanf(line, "%*s %*s %*s %*s %4095s %1023s %4095[^\n]", target, opts, rest) !=
                    3)
                        continue;
                if (!streq(target, path))
                        continue;
                /* Optional fields (there may be none), then "-". */
                const char *dash = strncmp(rest, "- ", 2) == 0 ? rest - 1 : strstr(rest, " - ");
                char type[64] = "", source[1024] = "", super[1024] = "";
                if (!dash || sscanf(dash + 3, "%63s %1023s %1023s", type, source, super) < 2)
                        continue;
                if (ret_opts)
                        *ret_opts = strdup(opts);
                if (ret_super)
                        *ret_super = strdup(super);
                if (ret_type)
                        *ret_type = strdup(type);
                found = true;
        }
        free(line);
        fclose(f);
        return found;
}

static bool has_option(const char *list, const char *opt) {
        size_t n = strlen(opt);
        for (const char *p = list; p && *p;) {
                size_t k = strcspn(p, ",");
                if (k == n && strncmp(p, opt, n) == 0)
                        return true;
                p += k + (p[k] ? 1 : 0);
        }
        return false;
}

static void expect_mounted(const char *path, const char *type, const char *const *opts,
                           const char *const *super) {
        _cleanup_free_ char *o = NULL, *s = NULL, *t = NULL;
        if (!mountinfo_find(path, &o, &s, &t))
                fail_msg("%s is not in /proc/self/mountinfo", path);
        print_message("  %s: %s %s %s\n", path, t, o, s);
        assert_string_equal(t, type);
        for (; opts && *opts; opts++)
                if (!has_option(o, *opts))
                        fail_msg("%s is mounted with '%s', without %s", path, o, *opts);
        for (; super && *super; super++)
                if (!has_option(s, *super))
                        fail_msg("%s has super options '%s', without %s", path, s, *super);
}

/* The kernel mounts type (built in or loaded; a module it could load is not considered). */
static bool kernel_has_fs(const char *type) {
        FILE *f = fopen("/proc/filesystems", "re");
        char line[256];
        bool found = false;

        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                char *t = strrchr(line, '\t');
                t = t ? t + 1 : line;
                t[strcspn(t, "\n")] = 0;
                if (streq(t, type))
                        found = true;
        }
        fclose(f);
        if (!found && access("/lib/modules", F_OK) >= 0) {
                /* Loadable: the daemon's mount would load it. */
                found = true;
        }
        return found;
}

/* ------------------------------------------------------------------------------------------ */
/* Images */

/* dir/<name> with a file hello.txt ("hello from <name>\n") inside, owned by the user. */
static char *content_dir(Env *e, const char *name) {
        _cleanup_free_ char *dir = NULL, *file = NULL;
        assert_true(asprintf(&dir, "%s/content-%s", e->tmpdir, name) > 0);
        (void) mkdir(dir, 0755);
        assert_true(asprintf(&file, "%s/hello.txt", dir) > 0);
        FILE *f = fopen(file, "we");
        assert_non_null(f);
        fprintf(f, "hello from %s\n", name);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(chmod(file, 0644), 0);
        return TAKE_PTR(dir);
}

static char *user_image(Env *e, unsigned who, const char *name) {
        char *path = NULL;
        assert_true(asprintf(&path, "%s/%s", ctx.dir[who], name) > 0);
        return path;
}

static void give(unsigned who, const char *path) {
        assert_int_equal(chown(path, ctx.uid[who], ctx.gid[who]), 0);
        assert_int_equal(chmod(path, 0600), 0);
}

static char *make_ext4(Env *e, unsigned who, const char *name, const char *label) {
        _cleanup_free_ char *content = content_dir(e, name);
        char *img = user_image(e, who, name);
        int fd = open(img, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 16 * MiB), 0);
        close(fd);
        env_run_ok("mkfs.ext4", "-q", "-F", "-L", label, "-d", content, img);
        give(who, img);
        return img;
}

static char *make_squashfs(Env *e, unsigned who, const char *name) {
        _cleanup_free_ char *content = content_dir(e, name);
        char *img = user_image(e, who, name);
        env_run_ok("mksquashfs", content, img, "-quiet", "-noappend", "-no-progress");
        give(who, img);
        return img;
}

static char *make_vfat(Env *e, unsigned who, const char *name, const char *label) {
        char *img = user_image(e, who, name);
        int fd = open(img, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 16 * MiB), 0);
        close(fd);
        env_run_ok("mkfs.vfat", "-n", label, img);
        give(who, img);
        return img;
}

static char *make_blank(Env *e, unsigned who, const char *name) {
        char *img = user_image(e, who, name);
        int fd = open(img, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 8 * MiB), 0);
        close(fd);
        give(who, img);
        return img;
}

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

static void slowfs_stop(void);

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
        if (!env_wait_nothing_under(e->tmpdir, 5 * USEC_PER_SEC)) {
                print_error("devices backed by %s are left over\n", e->tmpdir);
                (void) env_detach_all_under(e->tmpdir);
                (void) env_wait_nothing_under(e->tmpdir, 5 * USEC_PER_SEC);
                ok = false;
        }
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

/* ------------------------------------------------------------------------------------------ */
/* Tests */

/* lmdesk1 opens an ext4 image as `loopmgrctl open` would: Attach, Mount(release-reference). */
static void test_ext4_owner(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "e.img", "Holiday");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL, *file = NULL, *prop = NULL;
        static PkReply p;

        user_attach(e, U1, img, false, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp = strdup(mount_point_of(e, &p));
        assert_string_equal(mp, MEDIA "/lmdesk1/Holiday");
        expect_mounted(mp, "ext4", (const char *[]){"rw", "nosuid", "nodev", NULL}, NULL);

        prop = get_string_prop(e, a.object, "MountPoint");
        assert_string_equal(prop, mp);
        assert_int_equal(get_u32_prop(e, a.object, "MountUser"), ctx.uid[U1]);
        assert_int_equal(get_u32_prop(e, a.object, "References"), 1);
        free(prop);
        prop = get_string_prop(e, a.object, "IdType");
        assert_string_equal(prop, "ext4");
        free(prop);
        prop = get_string_prop(e, a.object, "IdLabel");
        assert_string_equal(prop, "Holiday");

        /* The user reads the file; the other user cannot even enter /run/media/lmdesk1. */
        assert_true(asprintf(&file, "%s/hello.txt", mp) > 0);
        if (user_read(U1, file, &p) < 0)
                fail_msg("lmdesk1 cannot read %s: %s", file, pk_reply_error(&p));
        assert_string_equal(p.data, "hello from e.img\n");
        assert_int_equal(user_read(U2, file, &p), -EACCES);

        /* A second Mount: the same mount point, no second mount. */
        user_device_call(U1, a.object, "Mount", &p, 0);
        pk_expect_ok(&p, "second Mount");
        assert_string_equal(pk_reply_value(&p, 0, 's')->string, mp);

        /* A second `open`: Attach reuses the device, Mount(release-reference) returns the same
         * mount point and drops the surplus reference, as the mount holds one already. */
        {
                _cleanup_attached_ Attached again = {};
                user_attach(e, U1, img, false, &again);
                assert_string_equal(again.object, a.object);
                assert_int_equal(get_u32_prop(e, a.object, "References"), 2);
                user_device_call(U1, a.object, "Mount", &p, 1,
                                 OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
                pk_expect_ok(&p, "Mount of the reused device");
                assert_string_equal(pk_reply_value(&p, 0, 's')->string, mp);
                assert_int_equal(get_u32_prop(e, a.object, "References"), 1);
        }

        /* lmdesk2: no mount of its own here, no mount-others. */
        user_device_call(U2, a.object, "Mount", &p, 0);
        pk_expect_error(&p, LOOPMGR_ERROR_BUSY, "Mount of lmdesk1's mount by lmdesk2");
        user_device_call(U2, a.object, "Unmount", &p, 0);
        pk_expect_error(&p, ERROR_ACCESS_DENIED, "Unmount by lmdesk2");
        assert_true(mountinfo_find(mp, NULL, NULL, NULL));

        /* Unmount: the mount goes, its directory too, and with its reference the device. */
        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount");
        env_forget_mount(e, mp);
        assert_false(mountinfo_find(mp, NULL, NULL, NULL));
        assert_int_equal(access(mp, F_OK), -1);
        expect_device_gone(e, &a);
        size_t n = 1;
        assert_int_equal(losetup_count_backed_by(img, false, &n), 0);
        assert_int_equal(n, 0);

        user_device_call(U1, a.object, "Unmount", &p, 0);
        assert_true(p.r < 0);
}

/* squashfs: read-only whatever the device, readable by its user. */
static void test_squashfs(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_squashfs(e, U1, "s.sqfs");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL, *file = NULL;
        static PkReply p;

        user_attach(e, U1, img, true, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp = strdup(mount_point_of(e, &p));
        /* squashfs has neither label nor UUID. */
        assert_string_equal(mp, MEDIA "/lmdesk1/disk");
        expect_mounted(mp, "squashfs", (const char *[]){"ro", "nosuid", "nodev", NULL}, NULL);
        assert_true(asprintf(&file, "%s/hello.txt", mp) > 0);
        if (user_read(U1, file, &p) < 0)
                fail_msg("lmdesk1 cannot read %s: %s", file, pk_reply_error(&p));
        assert_string_equal(p.data, "hello from s.sqfs\n");

        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount");
        env_forget_mount(e, mp);
        expect_device_gone(e, &a);
}

/* A read-only device gets a read-only mount; vfat gets the caller's uid= and gid=. */
static void test_vfat_owner_ids(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_vfat(e, U1, "v.img", "STICK");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL, *uid = NULL, *gid = NULL;
        static PkReply p;

        user_attach(e, U1, img, true, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        if (!kernel_has_fs("vfat")) {
                /* Kernels without FAT (no driver, no modules): the daemon says so, and leaves
                 * nothing behind. uid=/gid= are covered by test-mount-unit then. */
                pk_expect_error(&p, "org.freedesktop.DBus.Error.NotSupported", "Mount of vfat");
                assert_non_null(strstr(p.error_message, "vfat"));
                assert_int_equal(access(MEDIA "/lmdesk1/STICK", F_OK), -1);
                _cleanup_free_ char *type = get_string_prop(e, a.object, "IdType");
                assert_string_equal(type, "vfat");
                _cleanup_free_ char *label = get_string_prop(e, a.object, "IdLabel");
                assert_string_equal(label, "STICK");
                print_message("  this kernel has no vfat: Mount refused as expected\n");
                user_detach(e, U1, &a, true);
                return;
        }
        mp = strdup(mount_point_of(e, &p));
        assert_string_equal(mp, MEDIA "/lmdesk1/STICK");
        assert_true(asprintf(&uid, "uid=%u", (unsigned) ctx.uid[U1]) > 0);
        assert_true(asprintf(&gid, "gid=%u", (unsigned) ctx.gid[U1]) > 0);
        expect_mounted(mp, "vfat", (const char *[]){"ro", "nosuid", "nodev", NULL},
                       (const char *[]){uid, gid, NULL});
        struct stat st;
        assert_int_equal(stat(mp, &st), 0);
        assert_int_equal(st.st_uid, ctx.uid[U1]);

        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount");
        env_forget_mount(e, mp);
        expect_device_gone(e, &a);
}

/* Unmount of another user's mount with mount-others; Mount of another user's device needs it
 * too. */
static void test_mount_others(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "o.img", "shared");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL;
        static PkReply p;

        user_attach(e, U1, img, false, &a);
        /* Not mounted yet: lmdesk2 holds no reference, polkit says no to mount-others. */
        user_device_call(U2, a.object, "Mount", &p, 0);
        pk_expect_error(&p, ERROR_ACCESS_DENIED, "Mount of lmdesk1's device by lmdesk2");

        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp = strdup(mount_point_of(e, &p));

        set_rules(BASE_RULES RULE("mount-others", "lmdesk2", "YES"));
        expect_verdict(U2, "org.loopmgr.mount-others", PK_VERDICT_YES);
        user_device_call(U2, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount by lmdesk2 with mount-others");
        env_forget_mount(e, mp);
        assert_false(mountinfo_find(mp, NULL, NULL, NULL));
        expect_device_gone(e, &a);
}

/* polkit says no to org.loopmgr.mount: AccessDenied, nothing mounted. */
static void test_polkit_no(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "n.img", "nope");
        _cleanup_attached_ Attached a = {};
        static PkReply p;

        set_rules(RULE("attach", "lmdesk1", "YES") RULE("mount", "lmdesk1", "NO"));
        expect_verdict(U1, "org.loopmgr.mount", PK_VERDICT_NO);
        expect_verdict(U1, "org.loopmgr.attach", PK_VERDICT_YES);
        user_attach(e, U1, img, false, &a);
        user_device_call(U1, a.object, "Mount", &p, 0);
        pk_expect_error(&p, ERROR_ACCESS_DENIED, "Mount with polkit saying no");
        assert_false(mountinfo_find(MEDIA "/lmdesk1/nope", NULL, NULL, NULL));
        assert_int_equal(access(MEDIA "/lmdesk1/nope", F_OK), -1);
        _cleanup_free_ char *mpp = get_string_prop(e, a.object, "MountPoint");
        assert_string_equal(mpp, "");
        assert_int_equal(get_u32_prop(e, a.object, "MountUser"), UINT32_MAX);
        user_detach(e, U1, &a, true);
}

/* Labels are the user's: '/' and leading dots are replaced; a taken name gets a suffix. */
static void test_names(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img1 = make_ext4(e, U1, "n1.img", "..a/b");
        _cleanup_free_ char *img2 = make_ext4(e, U1, "n2.img", "..a/b");
        _cleanup_attached_ Attached a1 = {}, a2 = {};
        _cleanup_free_ char *mp1 = NULL, *mp2 = NULL;
        static PkReply p;

        user_attach(e, U1, img1, false, &a1);
        user_attach(e, U1, img2, false, &a2);
        user_device_call(U1, a1.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp1 = strdup(mount_point_of(e, &p));
        user_device_call(U1, a2.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp2 = strdup(mount_point_of(e, &p));
        assert_string_equal(mp1, MEDIA "/lmdesk1/__a_b");
        assert_string_equal(mp2, MEDIA "/lmdesk1/__a_b1");
        expect_mounted(mp2, "ext4", (const char *[]){"nosuid", "nodev", NULL}, NULL);

        /* A symbolic link planted where a name would go is never followed: root could, but
         * the daemon makes its own directory next to it. */
        assert_int_equal(symlink("/etc", MEDIA "/lmdesk1/__a_b2"), 0);
        _cleanup_free_ char *img3 = make_ext4(e, U1, "n3.img", "..a/b");
        _cleanup_attached_ Attached a3 = {};
        user_attach(e, U1, img3, false, &a3);
        user_device_call(U1, a3.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        _cleanup_free_ char *mp3 = strdup(mount_point_of(e, &p));
        (void) unlink(MEDIA "/lmdesk1/__a_b2");
        assert_string_equal(mp3, MEDIA "/lmdesk1/__a_b3");
        assert_false(mountinfo_find("/etc", NULL, NULL, NULL));

        for (unsigned i = 0; i < 3; i++) {
                const Attached *a = i == 0 ? &a1 : i == 1 ? &a2 : &a3;
                const char *mp = i == 0 ? mp1 : i == 1 ? mp2 : mp3;
                user_device_call(U1, a->object, "Unmount", &p, 0);
                pk_expect_ok(&p, "Unmount");
                env_forget_mount(e, mp);
                expect_device_gone(e, a);
        }
}

/* Options that are not allowed, no file system, no reference to hand over. */
static void test_refusals(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "r.img", "refuse");
        _cleanup_free_ char *blank = make_blank(e, U1, "blank.img");
        _cleanup_attached_ Attached a = {}, b = {};
        static PkReply p;

        user_attach(e, U1, img, false, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_S(LOOPMGR_OPT_FSTYPE, "nfs"));
        pk_expect_error(&p, ERROR_INVALID_ARGS, "fstype nfs");
        assert_non_null(strstr(p.error_message, "nfs"));
        user_device_call(U1, a.object, "Mount", &p, 1,
                         OPT_S(LOOPMGR_OPT_MOUNT_OPTIONS, "noatime,suid"));
        pk_expect_error(&p, ERROR_INVALID_ARGS, "options suid");
        assert_non_null(strstr(p.error_message, "'suid'"));
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_S(LOOPMGR_OPT_MOUNT_OPTIONS, "dev"));
        pk_expect_error(&p, ERROR_INVALID_ARGS, "options dev");
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B("bogus", true));
        pk_expect_error(&p, ERROR_INVALID_ARGS, "unknown option");
        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_error(&p, LOOPMGR_ERROR_NOT_MOUNTED, "Unmount of nothing");
        /* lmdesk2 has no reference to hand over (and it is not its device). */
        user_device_call(U2, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        pk_expect_error(&p, ERROR_INVALID_ARGS, "release-reference without a reference");

        /* The lifetime of a mount's reference is the daemon's own. */
        {
                static PkRequest q;
                pk_request_call(&q, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, "Attach");
                assert_int_equal(pk_request_arg(&q, 'h', O_RDWR, img), 0);
                assert_int_equal(pk_request_options(&q, 1, OPT_S(LOOPMGR_OPT_LIFETIME, "mount")),
                                 0);
                agent_do(U1, &q, &p);
                pk_expect_error(&p, ERROR_INVALID_ARGS, "Attach with lifetime mount");
        }

        /* Extra options that are allowed: ro and noexec. */
        user_device_call(U1, a.object, "Mount", &p, 1,
                         OPT_S(LOOPMGR_OPT_MOUNT_OPTIONS, "ro,noexec,noatime"));
        _cleanup_free_ char *mp = strdup(mount_point_of(e, &p));
        expect_mounted(mp, "ext4",
                       (const char *[]){"ro", "noexec", "noatime", "nosuid", "nodev", NULL}, NULL);
        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount");
        env_forget_mount(e, mp);
        /* No reference was handed over: the device stays. */
        assert_true(object_exists(e, a.object));

        user_attach(e, U1, blank, false, &b);
        user_device_call(U1, b.object, "Mount", &p, 0);
        pk_expect_error(&p, LOOPMGR_ERROR_NO_FILE_SYSTEM, "Mount of a blank image");
        user_detach(e, U1, &a, true);
        user_detach(e, U1, &b, true);
}

/* umount(8) behind the daemon's back: MountPoint is cleared, the reference released. */
static void test_external_umount(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "x.img", "extern");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL;
        static PkReply p;

        user_attach(e, U1, img, false, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp = strdup(mount_point_of(e, &p));
        assert_int_equal(env_umount(e, mp), 0);
        expect_device_gone(e, &a);
        assert_int_equal(access(mp, F_OK), -1);
}

/* A daemon restart keeps the mount and its reference (state record, mountinfo). */
static void test_restart(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "k.img", "keep");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL, *prop = NULL;
        static PkReply p;

        user_attach(e, U1, img, false, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp = strdup(mount_point_of(e, &p));

        /* The agents' connections would not survive the restart's checks: stop them. */
        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&ctx.agents[i]);
        assert_int_equal(env_stop_daemon(e), 0);
        assert_int_equal(env_start_daemon(e), 0);
        for (unsigned i = 0; i < N_USERS; i++)
                assert_int_equal(pk_agent_start(&ctx.agents[i], ctx.uid[i], ctx.gid[i]), 0);
        expect_verdict(U1, "org.loopmgr.mount", PK_VERDICT_YES);

        prop = get_string_prop(e, a.object, "MountPoint");
        assert_string_equal(prop, mp);
        assert_int_equal(get_u32_prop(e, a.object, "MountUser"), ctx.uid[U1]);
        assert_int_equal(get_u32_prop(e, a.object, "References"), 1);

        /* Detach of the user's own reference prefers one that no mount holds. */
        _cleanup_attached_ Attached again = {};
        user_attach(e, U1, img, false, &again);
        assert_string_equal(again.object, a.object);
        assert_int_equal(get_u32_prop(e, a.object, "References"), 2);
        {
                static PkRequest q;
                pk_request_call(&q, a.object, LOOPMGR_DEVICE_INTERFACE, "Detach");
                agent_do(U1, &q, &p);
                pk_expect_ok(&p, "Detach");
        }
        assert_int_equal(get_u32_prop(e, a.object, "References"), 1);
        assert_true(mountinfo_find(mp, NULL, NULL, NULL));

        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount after the restart");
        env_forget_mount(e, mp);
        expect_device_gone(e, &a);
}

/* udev properties of managed devices, through the rule of udev/90-loopmgr.rules. */
static void test_udev_properties(void **state) {
        Env *e = *state;
        _cleanup_free_ char *rules = NULL, *text = NULL, *out = NULL, *img = NULL;
        _cleanup_attached_ Attached a = {};
        size_t size = 0;

        assert_true(asprintf(&rules, "%s/udev/90-loopmgr.rules", ctx.srcdir) > 0);
        FILE *f = fopen(rules, "re");
        assert_non_null(f);
        assert_true(getdelim(&text, &size, '\0', f) > 0);
        fclose(f);
        assert_int_equal(env_add_udev_rule(e, text), 0);

        img = make_ext4(e, U1, "u.img", "udev");
        user_attach(e, U1, img, false, &a);
        /* Attach answered once udev processed the binding; the file was there before. */
        assert_int_equal(env_run(&out, NULL, "udevadm", "info", "--query=property", a.node, NULL),
                         0);
        print_message("  udevadm info %s:\n%s", a.node, out);
        /* IdType/IdLabel: probed when udev reported the binding, before Attach answered. */
        _cleanup_free_ char *type = get_string_prop(e, a.object, "IdType");
        _cleanup_free_ char *label = get_string_prop(e, a.object, "IdLabel");
        assert_string_equal(type, "ext4");
        assert_string_equal(label, "udev");
        assert_non_null(strstr(out, "LOOPMGR_MANAGED=1\n"));
        _cleanup_free_ char *owner = NULL, *owner_uid = NULL;
        assert_true(asprintf(&owner, "LOOPMGR_OWNER=%s\n", user_names[U1]) > 0);
        assert_true(asprintf(&owner_uid, "LOOPMGR_OWNER_UID=%u\n", (unsigned) ctx.uid[U1]) > 0);
        assert_non_null(strstr(out, owner));
        assert_non_null(strstr(out, owner_uid));

        /* The file goes with the binding. */
        _cleanup_free_ char *file = NULL;
        assert_true(asprintf(&file, "/run/loopmgr/udev/%s", a.node + 5) > 0);
        assert_int_equal(access(file, R_OK), 0);
        user_detach(e, U1, &a, true);
        /* Gone, or (other daemons share the kernel) describing somebody else's new binding. */
        _cleanup_free_ char *left = NULL, *mine = NULL;
        assert_true(asprintf(&mine, "LOOPMGR_DISKSEQ=%" PRIu64 "\n", a.diskseq) > 0);
        if (read_one_line_file(file, &left) >= 0) {
                FILE *g = fopen(file, "re");
                char buf[512] = "";
                if (g) {
                        size_t n = fread(buf, 1, sizeof(buf) - 1, g);
                        buf[n] = 0;
                        fclose(g);
                }
                if (strstr(buf, mine))
                        fail_msg("%s still describes the detached binding:\n%s", file, buf);
        }
}

/* ------------------------------------------------------------------------------------------ */
/* A slow image: slowfs (tests/slowfs.c) serves an image whose reads each take SLOW_READ_MSEC
 * once it is told to (SIGUSR1), so a Mount of a loop device over it takes seconds. */

#define SLOW_READ_MSEC    300 /* what slowfs_start() passes */
#define OTHERS_LIMIT_MSEC 50

static pid_t slowfs_pid;
static char *slowfs_dir;

static void slowfs_stop(void) {
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
static void test_slow_mount_others(void **state) {
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
static void test_slow_mount_disconnect(void **state) {
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

#define T(f) cmocka_unit_test_setup_teardown(f, test_setup, test_teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_ext4_owner),      T(test_squashfs),          T(test_vfat_owner_ids),
                T(test_mount_others),    T(test_polkit_no),         T(test_names),
                T(test_refusals),        T(test_external_umount),   T(test_restart),
                T(test_udev_properties), T(test_slow_mount_others), T(test_slow_mount_disconnect),
        };
        const char *reason;

        if (env_skip_reason(&reason)) {
                printf("skipping: %s\n", reason);
                return 77;
        }
        const char *filter = getenv("LOOPMGR_TEST_FILTER");
        if (filter && *filter)
                cmocka_set_test_filter(filter);

        int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
        if (env_group_failed && failed == 0)
                failed = 1;
        if (failed) {
                fflush(NULL);
                _exit(1);
        }
        return 0;
}
