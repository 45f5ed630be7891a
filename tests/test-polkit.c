/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Authorisation (SPEC §7) against a real polkitd and real users: the actions org.loopmgr.attach,
 * attach-path, detach-others and open-device (Device.OpenDevice, test-polkit-open.c), decided by
 * polkit for the caller's bus connection (subject system-bus-name); root never asks; a caller may
 * change a device it holds a reference on without asking; AccessDenied when polkit says no,
 * InteractiveAuthorizationRequired when polkit wants a password the caller did not allow it to ask
 * for; AccessDenied naming polkit when polkitd is not there; LimitsExceeded past the per-user cap
 * on bindings.
 *
 * The users. The group setup creates two unprivileged system users when they do not exist
 * (lmtest1 and lmtest2: `useradd --system --no-create-home --shell /usr/sbin/nologin`) and
 * leaves them in place afterwards. Each test forks one "agent" per user: a child that drops
 * to that user (setgroups, setresgid, setresuid), opens its OWN connection to the bus in
 * DBUS_SYSTEM_BUS_ADDRESS and then performs the calls the test sends it over a socketpair,
 * opening image files itself, as that user, so that "cannot open" is a real EACCES. Each user
 * has a directory of its own under the test's temporary directory (mode 0700, its files
 * 0600), and a shared directory holds a file nobody but root may read.
 *
 * The rules. polkitd reads /etc/polkit-1/rules.d (shared by every polkitd on the host: the
 * rules written here only ever name the test users or this process's pid). A test writes
 * /etc/polkit-1/rules.d/49-loopmgr-test.rules and then asks polkitd itself
 * (CheckAuthorization for the agent's bus name, as root) until the verdicts it relies on are
 * in effect, 5 s at most; the teardown removes the file. A lock on
 * /run/loopmgr-test-polkit.lock keeps two runs of this binary (two environment instances)
 * from fighting over that file and the users.
 *
 * polkitd. One test stops the environment's polkitd (the pid recorded in the instance
 * directory, which is the directory of the bus socket, checked against the bus's owner of
 * org.freedesktop.PolicyKit1) and starts it again with `tests/env.sh start` on the same
 * instance, in the test body and, should the test fail, in its teardown.
 *
 * The daemon. Started by the group setup like test-aliases does; the cap tests restart it with
 * LOOPMGR_MAX_DEVICES_PER_USER or --max-devices-per-user and the teardown restores the
 * default one. After every test nothing backed by the temporary directory may be left, the
 * daemon and the kernel must agree, and no process of the test users may remain.
 *
 * Run:   eval "$(LOOPMGR_TEST_ENV=/run/loopmgr-pktest tests/env.sh start)"
 *        meson test -C BUILD test-polkit
 * LOOPMGR_TEST_FILTER / LOOPMGR_TEST_SKIP select tests by cmocka glob.
 */

#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "polkit-util.h"
#include "test-polkit.h"

const char *const user_names[] = {"lmtest1", "lmtest2"};

bool group_failed;
/* ------------------------------------------------------------------------------------------ */
/* polkitd of the environment */

int read_pid_file(const char *path, pid_t *ret) {
        _cleanup_free_ char *s = NULL;
        uint64_t v;
        int r = read_one_line_file(path, &s);
        if (r < 0)
                return r;
        r = safe_atou64(s, &v);
        if (r < 0)
                return r;
        if (v == 0 || v > INT_MAX)
                return -ERANGE;
        *ret = (pid_t) v;
        return 0;
}

bool process_is(pid_t pid, const char *comm) {
        _cleanup_free_ char *path = NULL, *s = NULL;
        if (asprintf(&path, "/proc/%d/comm", (int) pid) < 0)
                return false;
        return read_one_line_file(path, &s) >= 0 && streq(s, comm);
}

int bus_owner_pid(Env *e, const char *name, pid_t *ret) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t pid;
        int r = sd_bus_call_method(e->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                   "org.freedesktop.DBus", "GetConnectionUnixProcessID", &error,
                                   &reply, "s", name);
        if (r < 0) {
                if (sd_bus_error_has_name(&error, "org.freedesktop.DBus.Error.NameHasNoOwner")) {
                        *ret = 0;
                        return 0;
                }
                return r;
        }
        r = sd_bus_message_read(reply, "u", &pid);
        if (r < 0)
                return r;
        *ret = (pid_t) pid;
        return 0;
}

void polkit_stop(Ctx *c) {
        _cleanup_free_ char *pidfile = NULL;
        pid_t pid = 0, owner = 0;
        int r;

        assert_true(asprintf(&pidfile, "%s/polkitd.pid", c->instance) > 0);
        r = read_pid_file(pidfile, &pid);
        if (r < 0)
                fail_msg("%s: %s", pidfile, strerror(-r));
        r = bus_owner_pid(&c->e, POLKIT_NAME, &owner);
        if (r < 0)
                fail_msg("who owns %s: %s", POLKIT_NAME, strerror(-r));
        /* Only the polkitd of this environment instance, and only when the bus agrees. */
        if (owner != pid || !process_is(pid, "polkitd"))
                fail_msg("%s names pid %d, but %s is owned by pid %d: not stopping anything",
                         pidfile, (int) pid, POLKIT_NAME, (int) owner);

        c->polkit_stopped = true;
        if (kill(pid, SIGTERM) < 0)
                fail_msg("kill(%d): %s", (int) pid, strerror(errno));
        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        for (;;) {
                r = bus_owner_pid(&c->e, POLKIT_NAME, &owner);
                if (r >= 0 && owner == 0 && pk_process_gone(pid))
                        break;
                if (now_usec() >= deadline)
                        fail_msg("polkitd (pid %d) did not go away within 10 s of SIGTERM",
                                 (int) pid);
                sleep_usec(20 * USEC_PER_MSEC);
        }
        print_message("  stopped polkitd (pid %d)\n", (int) pid);
}

int polkit_restart(Ctx *c) {
        _cleanup_free_ char *script = NULL, *envvar = NULL, *out = NULL, *err = NULL;
        pid_t owner = 0;

        if (asprintf(&script, "%s/tests/env.sh", c->srcdir) < 0 ||
            asprintf(&envvar, "LOOPMGR_TEST_ENV=%s", c->instance) < 0)
                return -ENOMEM;
        char *argv[] = {(char *) "env", envvar, (char *) "bash", script, (char *) "start", NULL};
        int r = run_command(argv, NULL, &out, &err);
        if (r != 0) {
                print_error("%s start failed (%d): %s\n", script, r, err ?: "");
                return r < 0 ? r : -EPROTO;
        }
        r = bus_owner_pid(&c->e, POLKIT_NAME, &owner);
        if (r < 0)
                return r;
        if (owner == 0) {
                print_error("%s start did not bring %s back\n", script, POLKIT_NAME);
                return -ESRCH;
        }
        c->polkit_stopped = false;
        print_message("  polkitd is back (pid %d)\n", (int) owner);
        return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The daemon */

int daemon_restart(Ctx *c, char *const *args, char *const *env) {
        int r = env_stop_daemon(&c->e);
        if (r < 0) {
                print_error("loopmgrd did not stop cleanly: %s\n", strerror(-r));
                group_failed = true;
        }
        c->daemon_custom = args || env;
        r = env_start_daemon_with(&c->e, args, env);
        if (r < 0)
                print_error("restarting loopmgrd: %s\n", strerror(-r));
        return r;
}

/* ------------------------------------------------------------------------------------------ */
/* Files */

char *user_image(Ctx *c, unsigned who, uint64_t size) {
        char *path = NULL;
        int r = env_make_image(&c->e, c->users[who].dir, size, &path);
        if (r < 0)
                fail_msg("creating an image: %s", strerror(-r));
        if (chown(path, c->users[who].uid, c->users[who].gid) < 0) {
                int saved = errno;
                free(path);
                fail_msg("chown: %s", strerror(saved));
        }
        return path;
}

char *shared_image(Ctx *c, uint64_t size, mode_t mode) {
        char *path = NULL;
        int r = env_make_image(&c->e, c->shared_dir, size, &path);
        if (r < 0)
                fail_msg("creating an image: %s", strerror(-r));
        if (chmod(path, mode) < 0) {
                int saved = errno;
                free(path);
                fail_msg("chmod: %s", strerror(saved));
        }
        return path;
}

void expect_not_attached_impl(const char *path, const char *what, const char *file, int line) {
        size_t n = 0;
        int r = losetup_count_backed_by(path, false, &n);
        if (r < 0) {
                print_error("%s:%d: losetup: %s\n", file, line, strerror(-r));
                _fail(file, line);
        }
        if (n > 0) {
                print_error("%s:%d: %s: %zu loop device(s) exist over %s\n", file, line, what, n,
                            path);
                _fail(file, line);
        }
}

void expect_owner_refs_impl(Ctx *c, const char *object, uid_t owner, uint32_t refs,
                            const char *file, int line) {
        _cleanup_props_ DeviceProps p = {};
        PROPS_OK(&c->e, object, &p);
        if (p.owner_uid != owner || p.references != refs || !streq_ptr(p.state, "attached")) {
                print_error("%s:%d: %s: OwnerUID %u, References %u, State %s; expected %u, %u, "
                            "attached\n",
                            file, line, object, p.owner_uid, p.references, p.state ?: "(none)",
                            (unsigned) owner, refs);
                _fail(file, line);
        }
}

void expect_gone_impl(const AgentReply *a, const char *file, int line) {
        if (!wait_binding_gone(a->node + 5, a->diskseq, 2 * USEC_PER_SEC)) {
                print_error("%s:%d: %s (diskseq %" PRIu64 ") is still bound after Detach said "
                            "detached\n",
                            file, line, a->node, a->diskseq);
                _fail(file, line);
        }
}

void expect_autoclear_impl(Ctx *c, const char *object, bool value, const char *file, int line) {
        uint64_t deadline = now_usec() + 2 * USEC_PER_SEC;
        for (;;) {
                _cleanup_props_ DeviceProps p = {};
                PROPS_OK(&c->e, object, &p);
                if (p.autoclear == value)
                        return;
                if (now_usec() >= deadline) {
                        print_error("%s:%d: Autoclear of %s is %s, expected %s\n", file, line,
                                    object, p.autoclear ? "true" : "false",
                                    value ? "true" : "false");
                        _fail(file, line);
                }
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

int hold_node(Ctx *c, const AgentReply *a) {
        int fd = env_hold(&c->e, a->node, O_RDONLY);
        if (fd < 0)
                fail_msg("open(%s): %s", a->node, strerror(-fd));
        return fd;
}
/* ------------------------------------------------------------------------------------------ */
/* Fixtures */

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

/* The directory of the bus socket in DBUS_SYSTEM_BUS_ADDRESS is the env.sh instance. */
static int find_instance(char **ret) {
        const char *address = getenv("DBUS_SYSTEM_BUS_ADDRESS");
        const char *prefix = "unix:path=";
        if (!address || strncmp(address, prefix, strlen(prefix)) != 0)
                return -EINVAL;
        const char *path = address + strlen(prefix);
        const char *end = strchr(path, ',');
        _cleanup_free_ char *socket = end ? strndup(path, (size_t) (end - path)) : strdup(path);
        if (!socket)
                return -ENOMEM;
        char *slash = strrchr(socket, '/');
        if (!slash || !streq(slash, "/system_bus_socket"))
                return -EINVAL;
        *slash = 0;
        const char *env = getenv("LOOPMGR_TEST_ENV");
        if (env && *env && !streq(env, socket))
                print_message("note: LOOPMGR_TEST_ENV=%s, but the bus is that of %s; using the "
                              "latter\n",
                              env, socket);
        *ret = TAKE_PTR(socket);
        return 0;
}

static void ctx_free(Ctx *c) {
        Env *e = &c->e;
        for (unsigned i = 0; i < N_USERS; i++) {
                pk_agent_stop(&c->agents[i]);
                free(c->users[i].dir);
        }
        monitor_stop(c);
        free(e->tracked);
        free(e->held_fds);
        free(e->catchers);
        free(e->extra_buses);
        free(e->mounts);
        free(e->partitions);
        sd_bus_flush_close_unref(e->bus);
        free(e->daemon_unique_name);
        free(e->tmpdir);
        free(e->loopmgrd);
        free(e->loopmgrctl);
        free(e->bus_address);
        free(c->shared_dir);
        free(c->instance);
        free(c->srcdir);
        safe_close(c->lock_fd); /* drops the lock */
        free(c);
}

static int group_teardown(void **state);

static int group_setup(void **state) {
        Ctx *c = calloc(1, sizeof(Ctx));
        Env *e;
        char tmpl[] = "/var/tmp/loopmgr-polkit.XXXXXX";
        const char *srcdir;
        int r;

        if (!c)
                goto fail;
        *state = c;
        e = &c->e;
        c->lock_fd = -EBADF;
        for (unsigned i = 0; i < N_USERS; i++)
                c->agents[i] = PK_AGENT_NULL;

        if (pk_lock(LOCK_FILE, 240 * USEC_PER_SEC, &c->lock_fd) < 0)
                goto fail;
        /* A file left by a run that was killed would decide for this one. */
        pk_rules_remove(RULES_FILE);

        for (unsigned i = 0; i < N_USERS; i++)
                if (pk_ensure_user(user_names[i], &c->users[i].uid, &c->users[i].gid) < 0)
                        goto fail;

        if (find_instance(&c->instance) < 0) {
                print_error("DBUS_SYSTEM_BUS_ADDRESS=%s is not the socket of a tests/env.sh "
                            "instance\n",
                            getenv("DBUS_SYSTEM_BUS_ADDRESS"));
                goto fail;
        }
        srcdir = getenv("LOOPMGR_SRCDIR");
        if (!srcdir || !*srcdir) {
                print_error("LOOPMGR_SRCDIR is not set (run under meson test)\n");
                goto fail;
        }
        c->srcdir = strdup(srcdir);

        if (!mkdtemp(tmpl)) {
                print_error("mkdtemp(%s): %m\n", tmpl);
                goto fail;
        }
        e->tmpdir = strdup(tmpl);
        e->bus_address = strdup(getenv("DBUS_SYSTEM_BUS_ADDRESS"));
        if (!e->tmpdir || !e->bus_address || !c->srcdir)
                goto fail;
        /* The users reach their own directories through it, and nothing else. */
        if (chmod(e->tmpdir, 0711) < 0) {
                print_error("chmod %s: %m\n", e->tmpdir);
                goto fail;
        }
        for (unsigned i = 0; i < N_USERS; i++) {
                if (asprintf(&c->users[i].dir, "%s/%s", e->tmpdir, user_names[i]) < 0) {
                        c->users[i].dir = NULL;
                        goto fail;
                }
                r = pk_make_dir(c->users[i].dir, 0700, c->users[i].uid, c->users[i].gid);
                if (r < 0) {
                        print_error("%s: %s\n", c->users[i].dir, strerror(-r));
                        goto fail;
                }
        }
        if (asprintf(&c->shared_dir, "%s/shared", e->tmpdir) < 0) {
                c->shared_dir = NULL;
                goto fail;
        }
        r = pk_make_dir(c->shared_dir, 0755, 0, 0);
        if (r < 0) {
                print_error("%s: %s\n", c->shared_dir, strerror(-r));
                goto fail;
        }

        if (env_find_binary("LOOPMGRD", "loopmgrd", &e->loopmgrd) < 0 ||
            env_find_binary("LOOPMGRCTL", "loopmgrctl", &e->loopmgrctl) < 0)
                goto fail;
        if (access(e->loopmgrd, X_OK) < 0) {
                print_error("%s: %m\n", e->loopmgrd);
                goto fail;
        }

        r = sd_bus_open_system(&e->bus);
        if (r < 0) {
                print_error("Cannot connect to the system bus: %s\n", strerror(-r));
                goto fail;
        }
        (void) sd_bus_error_add_map(loopmgr_error_map);

        r = env_start_daemon(e);
        if (r < 0) {
                print_error("Failed to start %s: %s\n", e->loopmgrd, strerror(-r));
                goto fail;
        }
        print_message("loopmgrd %s (pid %d, %s), images in %s, environment %s, users %s (%u) "
                      "and %s (%u)\n",
                      e->loopmgrd, (int) e->daemon_pid, e->daemon_unique_name, e->tmpdir,
                      c->instance, user_names[0], (unsigned) c->users[0].uid, user_names[1],
                      (unsigned) c->users[1].uid);
        return 0;

fail:
        group_failed = true;
        /* cmocka runs no group teardown after a failed setup. */
        (void) group_teardown(state);
        return -1;
}

/* Processes of the test users still running (agents that did not go away). */
static size_t user_processes(Ctx *c) {
        uid_t uids[N_USERS];
        for (unsigned i = 0; i < N_USERS; i++)
                uids[i] = c->users[i].uid;
        return pk_user_processes(uids, N_USERS);
}

static int group_teardown(void **state) {
        Ctx *c = *state;
        Env *e;
        bool ok = true;
        size_t n = 0;

        if (!c)
                return 0;
        e = &c->e;

        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&c->agents[i]);
        pk_rules_remove(RULES_FILE);
        if (c->polkit_stopped && polkit_restart(c) < 0)
                ok = false;
        if (e->bus && env_cleanup_test(e) > 0)
                ok = false;
        if (e->tmpdir) {
                if (env_detach_all_under(e->tmpdir) > 0)
                        ok = false;
                if (!env_wait_nothing_under(e->tmpdir, 5 * USEC_PER_SEC)) {
                        print_error("devices backed by %s survive the cleanup\n", e->tmpdir);
                        ok = false;
                }
        }
        if (env_stop_daemon(e) < 0)
                ok = false;
        if (e->tmpdir) {
                if (mounts_under(e->tmpdir, &n) >= 0 && n > 0) {
                        print_error("%zu mount(s) under %s survive the cleanup; not removing "
                                    "the directory\n",
                                    n, e->tmpdir);
                        ok = false;
                } else
                        (void) nftw(e->tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
        }
        if (user_processes(c) > 0)
                ok = false;

        ctx_free(c);
        *state = NULL;
        if (!ok) {
                group_failed = true;
                return -1;
        }
        return 0;
}

static int test_setup(void **state) {
        Ctx *c = *state;
        for (unsigned i = 0; i < N_USERS; i++)
                if (pk_agent_start(&c->agents[i], c->users[i].uid, c->users[i].gid) < 0) {
                        print_error("cannot start the agent for %s\n", user_names[i]);
                        return -1;
                }
        return 0;
}

static int test_teardown(void **state) {
        Ctx *c = *state;
        Env *e = &c->e;
        bool ok = true;
        int left, r;

        /* The users' connections go first: nothing of theirs may act during the cleanup. */
        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&c->agents[i]);
        monitor_stop(c);
        pk_rules_remove(RULES_FILE);
        if (c->polkit_stopped) {
                print_error("the test left polkitd stopped; starting it again\n");
                if (polkit_restart(c) < 0) {
                        group_failed = true;
                        ok = false;
                }
        }

        left = env_cleanup_test(e);
        if (left > 0) {
                print_error("the test left %d device(s) attached\n", left);
                ok = false;
        }
        if (env_check_consistency_under(e, e->tmpdir) < 0)
                ok = false;
        if (!env_expect_nothing_under(e->tmpdir, 2 * USEC_PER_SEC))
                ok = false;
        if (user_processes(c) > 0)
                ok = false;

        int status;
        if (e->daemon_pid > 0 && waitpid(e->daemon_pid, &status, WNOHANG) == e->daemon_pid) {
                print_error("loopmgrd died (%s %d)\n", WIFEXITED(status) ? "status" : "signal",
                            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                e->daemon_pid = 0;
                c->daemon_custom = true; /* start a default one for the next test */
                ok = false;
        }
        if (c->daemon_custom || e->daemon_pid <= 0) {
                r = daemon_restart(c, NULL, NULL);
                if (r < 0) {
                        group_failed = true;
                        ok = false;
                }
        }
        return ok ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------ */

#define T(f) cmocka_unit_test_setup_teardown(f, test_setup, test_teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_polkit_questions),
                T(test_attach_own_file),
                T(test_cannot_attach_unreadable),
                T(test_readonly_fd),
                T(test_attach_path),
                T(test_other_users_device),
                T(test_owner_manages_own_device),
                T(test_all_references),
                T(test_interaction_required),
                T(test_defaults_challenge),
                T(test_open_device_owner),
                T(test_open_device_others),
                T(test_polkitd_stopped),
                T(test_cap_environment),
                T(test_cap_option),
        };
        /* The default daemon must have the default cap. */
        (void) unsetenv("LOOPMGR_MAX_DEVICES_PER_USER");
        return ENV_RUN_TESTS(tests, group_setup, group_teardown, &group_failed);
}
