/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Desktop integration (issue 7), client side: `loopmgrctl open` and `close` run as unprivileged
 * users against the real daemon, a real polkitd and real loop devices, and the interactive
 * authorisation of loopmgrctl with polkit's own text agent on a pseudo-terminal.
 *
 * The users. lmopen1 and lmopen2 (created when missing, left in place, like test-polkit's
 * users). loopmgrctl runs as them through polkit-util's agents (PK_OP_EXEC: their own
 * credentials, stdin not a terminal), or on a pty of ours (forkpty) where a terminal matters.
 * Each has a 0700 directory under the test's temporary directory holding its images. What they
 * execute lies in that directory too (mode 0711): the build's loopmgrctl is copied to
 * <tmpdir>/bin, since the checkout may be out of their reach (a clone in /root, mode 0700), and
 * the fake agents are written to <tmpdir>/shared.
 *
 * The rules. /etc/polkit-1/rules.d/49-loopmgr-open.rules names only the lmopen users; every
 * test writes it and waits until polkitd gives the verdicts the test relies on; the teardowns
 * remove it. /run/loopmgr-test-open.lock keeps two runs of this binary apart.
 *
 * The real agent. pkttyagent runs polkit-agent-helper-1, which is set-uid root, clears its
 * environment and answers polkitd on the default system bus socket,
 * /run/dbus/system_bus_socket, not on the private bus of tests/env.sh. So the child on the pty
 * first enters a mount namespace of its own, mounts a tmpfs on /run/dbus there and binds the
 * private bus socket onto /run/dbus/system_bus_socket, then drops to the user and runs
 * loopmgrctl. The password is a random one set with chpasswd for the length of the test and
 * locked again afterwards (PAM: /etc/pam.d/polkit-1 or "other", i.e. pam_unix).
 *
 * The fake agents. LOOPMGR_PKTTYAGENT points loopmgrctl at shell scripts that record their
 * arguments and their SIGTERM, or die at once: the agent's life cycle without a password.
 *
 * After every test no mount under /run/media/lmopen{1,2}, no device backed by the temporary
 * directory and no process of the users may remain.
 *
 * Run:   eval "$(LOOPMGR_TEST_ENV=/run/loopmgr-open tests/env.sh start)"
 *        meson test -C BUILD test-desktop
 */

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pty.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "polkit-util.h"

#define RULES_FILE PK_RULES_DIR "/49-loopmgr-open.rules"
#define LOCK_FILE  "/run/loopmgr-test-open.lock"
#define MEDIA_DIR  "/run/media"

#define ERROR_NAME_NOT_FOUND LOOPMGR_ERROR_PREFIX "NotFound"

/* How long polkitd may take to load a rules file it was told about by inotify. */
#define RULES_TIMEOUT (5 * USEC_PER_SEC)
/* A pty session: polkit, PAM's delay after a wrong password (2 s), udev. */
#define PTY_TIMEOUT (60 * USEC_PER_SEC)

#define FILE_TEXT "Hello from a disk image opened by loopmgrctl.\n"

static const char *const user_names[] = {"lmopen1", "lmopen2"};
enum { U1, U2, N_USERS };

typedef struct Ctx {
        Env *e;
        uid_t uid[N_USERS];
        gid_t gid[N_USERS];
        char *dir[N_USERS]; /* <tmpdir>/<user>, 0700, the user's */
        char *shared_dir;   /* <tmpdir>/shared, 0755, root's */
        PkAgent agents[N_USERS];
        char *bus_socket;
        char password[33];
        int lock_fd;
        /* What a test allocates: cmocka longjmps out of a failed test past any cleanup
         * attribute, so the test teardown frees it. */
        void **garbage;
        size_t n_garbage;
} Ctx;

static bool group_failed;

/* Hands p to the test teardown; fails the test when p is NULL (out of memory). */
static void *gc(Ctx *c, void *p) {
        void **g;

        assert_non_null(p);
        g = reallocarray(c->garbage, c->n_garbage + 1, sizeof(void *));
        if (!g) {
                free(p);
                fail_msg("out of memory");
        }
        c->garbage = g;
        c->garbage[c->n_garbage++] = p;
        return p;
}

static void gc_free(Ctx *c) {
        for (size_t i = 0; i < c->n_garbage; i++)
                free(c->garbage[i]);
        free(c->garbage);
        c->garbage = NULL;
        c->n_garbage = 0;
}

static void fclosep(FILE **f) {
        if (*f)
                (void) fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

/* ------------------------------------------------------------------------------------------ */
/* Running loopmgrctl as a user */

typedef struct Run {
        int status;
        const char *out; /* gc() */
        const char *err;
} Run;

/* loopmgrctl ARGS... as user `who`, without a terminal. */
static void ctl_as_impl(Ctx *c, unsigned who, Run *ret, const char *file, int line, ...) {
        static PkRequest q;
        static PkReply p;
        const char *arg;
        va_list ap;
        int r;

        q = (PkRequest){.op = PK_OP_EXEC, .timeout_msec = 60 * 1000};
        r = pk_request_arg(&q, 's', 0, c->e->loopmgrctl);
        assert_int_equal(r, 0);
        va_start(ap, line);
        while ((arg = va_arg(ap, const char *)))
                assert_int_equal(pk_request_arg(&q, 's', 0, arg), 0);
        va_end(ap);

        r = pk_agent_call(&c->agents[who], &q, &p, 70 * 1000);
        if (r < 0 || p.r < 0)
                fail_msg("%s:%d: running loopmgrctl as %s: %s", file, line, user_names[who],
                         strerror(-(r < 0 ? r : p.r)));
        ret->status = p.status;
        ret->out = gc(c, strdup(p.data));
        ret->err = gc(c, strdup(p.error_message));
        print_message("  %s: loopmgrctl ... -> %d, stdout '%s', stderr '%s'\n", user_names[who],
                      p.status, p.data, p.error_message);
}
#define ctl_as(c, who, ret, ...)                                                                   \
        ctl_as_impl((c), (who), (ret), __FILE__, __LINE__, __VA_ARGS__, NULL)

static void expect_status_impl(const Run *r, int status, const char *what, const char *file,
                               int line) {
        if (r->status != status)
                fail_msg("%s:%d: %s: exit status %d, expected %d; stdout '%s', stderr '%s'", file,
                         line, what, r->status, status, r->out, r->err);
}
#define expect_status(r, status, what) expect_status_impl((r), (status), (what), __FILE__, __LINE__)

static void expect_contains_impl(const char *haystack, const char *needle, const char *what,
                                 const char *file, int line) {
        if (!haystack) {
                fail_msg("%s:%d: %s: no text to look for '%s' in", file, line, what, needle);
                return;
        }
        if (!strstr(haystack, needle))
                fail_msg("%s:%d: %s: '%s' does not contain '%s'", file, line, what, haystack,
                         needle);
}
#define expect_contains(h, n, what) expect_contains_impl((h), (n), (what), __FILE__, __LINE__)

/* The first line of s. */
static char *first_line(Ctx *c, const char *s) {
        return gc(c, strndup(s, strcspn(s, "\n")));
}

/* ------------------------------------------------------------------------------------------ */
/* Mounts, devices */

typedef struct MountEntry {
        const char *source; /* gc() */
        const char *fstype;
        const char *options; /* per-mount and super options, joined with a comma */
} MountEntry;

/* The topmost mount on target in our mount namespace: 0, -ENOENT when there is none. */
static int find_mount(Ctx *c, const char *target, MountEntry *ret) {
        _cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
        _cleanup_free_ char *line = NULL;
        size_t size = 0;
        bool found = false;

        if (!f)
                return -errno;
        while (getline(&line, &size, f) > 0) {
                char mp[PATH_MAX], opts[1024], fstype[64], source[PATH_MAX], super[1024];
                const char *sep;

                /* 36 35 98:0 /root /mnt opts [optional fields] - fstype source super */
                if (sscanf(line, "%*s %*s %*s %*s %4095s %1023s", mp, opts) != 2)
                        continue;
                sep = strstr(line, " - ");
                if (!sep || sscanf(sep + 3, "%63s %4095s %1023s", fstype, source, super) != 3)
                        continue;
                if (!streq(mp, target))
                        continue;
                char *o;
                if (asprintf(&o, "%s,%s", opts, super) < 0)
                        o = NULL;
                *ret = (MountEntry){
                        .source = gc(c, strdup(source)),
                        .fstype = gc(c, strdup(fstype)),
                        .options = gc(c, o),
                };
                found = true; /* keep going: the last one listed is on top */
        }
        return found ? 0 : -ENOENT;
}

static bool has_option(const char *options, const char *name) {
        size_t l = strlen(name);

        for (const char *p = options; p && *p;) {
                if (strncmp(p, name, l) == 0 && (p[l] == ',' || p[l] == 0))
                        return true;
                p = strchr(p, ',');
                if (p)
                        p++;
        }
        return false;
}

/* Mount points under dir (prefix match on "dir/"), in mountinfo order; NULL-terminated. */
static char **mounts_below(const char *dir) {
        _cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
        _cleanup_free_ char *line = NULL, *prefix = NULL;
        char **l = calloc(1, sizeof(char *));
        size_t size = 0, n = 0;

        if (!l || !f || asprintf(&prefix, "%s/", dir) < 0)
                return l;
        while (getline(&line, &size, f) > 0) {
                char mp[PATH_MAX], **nl;

                if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1 ||
                    strncmp(mp, prefix, strlen(prefix)) != 0)
                        continue;
                nl = reallocarray(l, n + 2, sizeof(char *));
                if (!nl)
                        break;
                l = nl;
                l[n] = strdup(mp);
                if (!l[n])
                        break;
                l[++n] = NULL;
        }
        return l;
}

/* Devices bound to path (losetup's view, the kernel's truth). */
static size_t devices_of(const char *path) {
        size_t n = 0;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        return n;
}

/* Waits up to 5 s until no device is bound to path. */
static bool wait_no_device(const char *path) {
        uint64_t deadline = now_usec() + 5 * USEC_PER_SEC;

        while (devices_of(path) > 0) {
                if (now_usec() >= deadline)
                        return false;
                sleep_usec(20 * USEC_PER_MSEC);
        }
        return true;
}

/* The daemon does not know the image any more either. */
static void expect_daemon_forgot_impl(Ctx *c, const char *image, const char *file, int line) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *object = NULL;
        int r = call_get_device(c->e, image, &error, &object);

        if (r >= 0 || !sd_bus_error_has_name(&error, ERROR_NAME_NOT_FOUND)) {
                const char *o = object ? gc(c, TAKE_PTR(object)) : "?";
                fail_msg("%s:%d: GetDevice(%s) still finds %s (%s)", file, line, image, o,
                         error.name ?: "no error");
        }
}
#define expect_daemon_forgot(c, image) expect_daemon_forgot_impl((c), (image), __FILE__, __LINE__)

/* ------------------------------------------------------------------------------------------ */
/* Images */

/* A tree with one file, FILE_TEXT in hello.txt, for mkfs -d and mksquashfs. */
static char *make_tree(Ctx *c) {
        char *dir = gc(c, env_make_dir(c->e, "tree"));
        /* Becomes the root directory of the image (mksquashfs keeps its mode). */
        assert_int_equal(chmod(dir, 0755), 0);
        char *file = gc(c, env_join(dir, "hello.txt"));
        _cleanup_fclose_ FILE *f = fopen(file, "we");

        assert_non_null(f);
        assert_true(fputs(FILE_TEXT, f) >= 0);
        assert_int_equal(fflush(f), 0);
        assert_int_equal(chmod(file, 0644), 0);
        return dir;
}

static void give(Ctx *c, unsigned who, const char *path) {
        assert_int_equal(chown(path, c->uid[who], c->gid[who]), 0);
        assert_int_equal(chmod(path, 0600), 0);
}

static char *make_ext4(Ctx *c, unsigned who, const char *name, const char *label) {
        char *tree = make_tree(c);
        char *image = gc(c, env_join(c->dir[who], name));
        _cleanup_fclose_ FILE *f = fopen(image, "we");

        assert_non_null(f);
        assert_int_equal(ftruncate(fileno(f), 16 * 1024 * 1024), 0);
        env_run_ok("mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, image);
        give(c, who, image);
        return image;
}

static char *make_squashfs(Ctx *c, unsigned who, const char *name) {
        char *tree = make_tree(c);
        char *image = gc(c, env_join(c->dir[who], name));

        env_run_ok("mksquashfs", tree, image, "-quiet", "-noappend", "-all-root", "-no-progress");
        give(c, who, image);
        return image;
}

/* Random bytes: no file system blkid knows. */
static char *make_noise(Ctx *c, unsigned who, const char *name) {
        char *image = gc(c, env_join(c->dir[who], name));
        _cleanup_close_ int in = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        _cleanup_close_ int out = open(image, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        char buf[65536];

        assert_true(in >= 0 && out >= 0);
        for (int i = 0; i < 16; i++) {
                assert_int_equal(read(in, buf, sizeof(buf)), (ssize_t) sizeof(buf));
                assert_int_equal(write(out, buf, sizeof(buf)), (ssize_t) sizeof(buf));
        }
        give(c, who, image);
        return image;
}

/* ------------------------------------------------------------------------------------------ */
/* polkit rules */

static void set_rules_impl(Ctx *c, const char *text, const char *file, int line, ...) {
        char *all = NULL;
        const char *action;
        va_list ap;
        int r;

        if (asprintf(&all, "/* Written by loopmgr's tests/test-desktop for one test. */\n%s",
                     text) < 0)
                fail();
        gc(c, all);
        r = pk_rules_write(RULES_FILE, all);
        if (r < 0)
                fail_msg("%s:%d: writing %s: %s", file, line, RULES_FILE, strerror(-r));

        /* Triples: user index, action id, verdict. */
        va_start(ap, line);
        while ((action = va_arg(ap, const char *))) {
                unsigned who = va_arg(ap, unsigned);
                PkVerdict want = va_arg(ap, PkVerdict), last = PK_VERDICT_NO;

                r = pk_await_verdict(c->e->bus, c->agents[who].unique_name, action, want,
                                     RULES_TIMEOUT, &last);
                if (r < 0) {
                        static char why[512];
                        sd_bus_error error = SD_BUS_ERROR_NULL;
                        PkVerdict v;

                        va_end(ap);
                        /* Say why: "Action ... is not registered" means the actions file in
                         * /usr/share/polkit-1/actions is not this tree's (another checkout's
                         * tests/env.sh installed its own). */
                        (void) pk_check(c->e->bus, c->agents[who].unique_name, action, &v, &error);
                        snprintf(why, sizeof(why), "%s", error.message ?: strerror(-r));
                        sd_bus_error_free(&error);
                        fail_msg("%s:%d: polkit says %s for %s / %s, expected %s (%s)", file, line,
                                 pk_verdict_name(last), user_names[who], action,
                                 pk_verdict_name(want), why);
                }
        }
        va_end(ap);
}
#define set_rules(c, text, ...) set_rules_impl((c), (text), __FILE__, __LINE__, __VA_ARGS__, NULL)

#define RULE_ALL(user, result)                                                                     \
        PK_RULE("org.loopmgr.attach", user, result) PK_RULE("org.loopmgr.mount", user, result)

/* Both users may attach and mount their own images without asking; mount-others is polkit's
 * default (auth_admin: a challenge without a session). */
#define BASE_RULES RULE_ALL("lmopen1", "YES") RULE_ALL("lmopen2", "YES")
#define BASE_VERDICTS                                                                              \
        "org.loopmgr.attach", U1, PK_VERDICT_YES, "org.loopmgr.mount", U1, PK_VERDICT_YES,         \
                "org.loopmgr.mount", U2, PK_VERDICT_YES, "org.loopmgr.mount-others", U2,           \
                PK_VERDICT_CHALLENGE

/* ------------------------------------------------------------------------------------------ */
/* loopmgrctl on a pseudo-terminal */

typedef struct PtyRun {
        int status;
        const char *output; /* everything the terminal showed; gc() */
        unsigned prompts;
} PtyRun;

typedef struct PtyOptions {
        unsigned who;
        bool system_bus_namespace; /* bind the private bus onto /run/dbus/system_bus_socket */
        const char *password;      /* typed at every "Password:" prompt; NULL: none */
        const char *agent;         /* LOOPMGR_PKTTYAGENT, or NULL */
        const char *agent_log;     /* LMOPEN_FAKE_LOG for the fake agents, or NULL */
} PtyOptions;

_Noreturn static void pty_child(Ctx *c, const PtyOptions *o, char *const *argv) {
        if (o->system_bus_namespace) {
                int fd;

                if (unshare(CLONE_NEWNS) < 0 ||
                    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
                    mount("tmpfs", "/run/dbus", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0) {
                        perror("test-desktop: namespace for the system bus");
                        _exit(120);
                }
                fd = open("/run/dbus/system_bus_socket", O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
                if (fd < 0 ||
                    mount(c->bus_socket, "/run/dbus/system_bus_socket", NULL, MS_BIND, NULL) < 0) {
                        perror("test-desktop: binding the bus socket");
                        _exit(121);
                }
                close(fd);
        }
        if ((o->agent && setenv("LOOPMGR_PKTTYAGENT", o->agent, 1) < 0) ||
            (o->agent_log && setenv("LMOPEN_FAKE_LOG", o->agent_log, 1) < 0)) {
                perror("test-desktop: setenv");
                _exit(122);
        }
        if (setgroups(0, NULL) < 0 ||
            setresgid(c->gid[o->who], c->gid[o->who], c->gid[o->who]) < 0 ||
            setresuid(c->uid[o->who], c->uid[o->who], c->uid[o->who]) < 0) {
                perror("test-desktop: dropping to the user");
                _exit(123);
        }
        if (chdir("/") < 0) {
                perror("test-desktop: chdir /");
                _exit(124);
        }
        execv(argv[0], argv);
        fprintf(stderr, "test-desktop: cannot execute %s as %s: %m\n", argv[0], user_names[o->who]);
        _exit(127);
}

/* Runs argv on a new pty as the user, typing the password at each prompt (three at most). */
static void pty_run(Ctx *c, const PtyOptions *o, char *const *argv, PtyRun *ret) {
        _cleanup_free_ char *buf = NULL;
        size_t len = 0, scanned = 0;
        uint64_t deadline = now_usec() + PTY_TIMEOUT;
        int master = -EBADF, status;
        pid_t pid;

        buf = calloc(1, 1);
        assert_non_null(buf);
        fflush(stdout);
        fflush(stderr);
        pid = forkpty(&master, NULL, NULL, NULL);
        assert_true(pid >= 0);
        if (pid == 0)
                pty_child(c, o, argv);

        for (;;) {
                struct pollfd p = {.fd = master, .events = POLLIN};
                uint64_t n = now_usec();
                char chunk[4096], *nb, *prompt;
                ssize_t k;
                int r;

                if (n >= deadline) {
                        (void) kill(pid, SIGKILL);
                        break;
                }
                r = poll(&p, 1, (int) ((deadline - n) / USEC_PER_MSEC) + 1);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0)
                        continue;
                k = read(master, chunk, sizeof(chunk));
                if (k <= 0) /* EIO: the last process on the terminal went */
                        break;
                nb = realloc(buf, len + (size_t) k + 1);
                assert_non_null(nb);
                buf = nb;
                memcpy(buf + len, chunk, (size_t) k);
                len += (size_t) k;
                buf[len] = 0;

                while ((prompt = strstr(buf + scanned, "Password:"))) {
                        scanned = (size_t) (prompt - buf) + strlen("Password:");
                        ret->prompts++;
                        if (o->password && ret->prompts <= 3) {
                                /* pkttyagent switches echo off after printing the prompt. */
                                sleep_usec(200 * USEC_PER_MSEC);
                                assert_true(write(master, o->password, strlen(o->password)) > 0);
                                assert_int_equal(write(master, "\n", 1), 1);
                        }
                }
        }
        close(master);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        ret->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        ret->output = gc(c, TAKE_PTR(buf));
        print_message("  pty as %s: %s -> %d, %u prompt(s), output:\n%s\n", user_names[o->who],
                      argv[1], ret->status, ret->prompts, ret->output);
}

/* ------------------------------------------------------------------------------------------ */
/* Fixtures */

static int set_password(const char *user, const char *password, bool encrypted) {
        _cleanup_free_ char *line = NULL, *err = NULL;
        char *argv[] = {(char *) "chpasswd", encrypted ? (char *) "-e" : NULL, NULL};

        if (asprintf(&line, "%s:%s\n", user, password) < 0)
                return -ENOMEM;
        int r = run_command(argv, line, NULL, &err);
        if (r != 0) {
                print_error("chpasswd for %s failed (%d): %s\n", user, r, err ?: "");
                return r < 0 ? r : -EPROTO;
        }
        return 0;
}

static size_t count_strv(char **l) {
        size_t n = 0;
        while (l && l[n])
                n++;
        return n;
}

/* Unmounts whatever is left under /run/media/lmopen*: those users are this test's only. */
static size_t unmount_leftovers(void) {
        size_t n = 0;

        for (unsigned i = 0; i < N_USERS; i++) {
                _cleanup_free_ char *dir = NULL;
                _cleanup_strv_free_ char **l = NULL;

                if (asprintf(&dir, MEDIA_DIR "/%s", user_names[i]) < 0)
                        continue;
                l = mounts_below(dir);
                n += count_strv(l);
                /* Newest first. */
                for (size_t j = count_strv(l); j > 0; j--) {
                        print_error("unmounting the leftover %s\n", l[j - 1]);
                        if (umount2(l[j - 1], MNT_DETACH) < 0)
                                print_error("umount %s: %m\n", l[j - 1]);
                }
        }
        return n;
}

static int group_teardown(void **state);

static int group_setup(void **state) {
        Ctx *c = calloc(1, sizeof(Ctx));
        void *estate = NULL;
        const char *address, *prefix = "unix:path=";
        unsigned char rnd[16];
        int r;

        if (!c)
                goto fail;
        *state = c;
        c->lock_fd = -EBADF;
        for (unsigned i = 0; i < N_USERS; i++)
                c->agents[i] = PK_AGENT_NULL;

        r = pk_lock(LOCK_FILE, 240 * USEC_PER_SEC, &c->lock_fd);
        if (r < 0) {
                print_error("%s: %s\n", LOCK_FILE, strerror(-r));
                goto fail;
        }
        pk_rules_remove(RULES_FILE);

        for (unsigned i = 0; i < N_USERS; i++)
                if (pk_ensure_user(user_names[i], &c->uid[i], &c->gid[i]) < 0)
                        goto fail;

        /* A password nobody knows, for this run only. */
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t) sizeof(rnd))
                goto fail;
        for (size_t i = 0; i < sizeof(rnd); i++)
                snprintf(c->password + 2 * i, 3, "%02x", rnd[i]);
        if (set_password(user_names[U1], c->password, false) < 0)
                goto fail;

        address = getenv("DBUS_SYSTEM_BUS_ADDRESS");
        if (!address || strncmp(address, prefix, strlen(prefix)) != 0) {
                print_error("DBUS_SYSTEM_BUS_ADDRESS=%s is not a unix:path= address\n",
                            address ?: "");
                goto fail;
        }
        c->bus_socket = strndup(address + strlen(prefix), strcspn(address + strlen(prefix), ","));
        if (!c->bus_socket)
                goto fail;

        if (env_group_setup(&estate, "desktop") < 0) {
                c->e = estate;
                goto fail;
        }
        c->e = estate;

        /* The users reach their own directories through it, and nothing else. */
        if (chmod(c->e->tmpdir, 0711) < 0)
                goto fail;
        /* And run loopmgrctl from it: the build tree may be out of their reach. */
        if (env_loopmgrctl_for_users(c->e) < 0)
                goto fail;
        for (unsigned i = 0; i < N_USERS; i++) {
                c->dir[i] = env_join(c->e->tmpdir, user_names[i]);
                r = pk_make_dir(c->dir[i], 0700, c->uid[i], c->gid[i]);
                if (r < 0) {
                        print_error("%s: %s\n", c->dir[i], strerror(-r));
                        goto fail;
                }
        }
        c->shared_dir = env_join(c->e->tmpdir, "shared");
        r = pk_make_dir(c->shared_dir, 0755, 0, 0);
        if (r < 0)
                goto fail;
        return 0;

fail:
        group_failed = true;
        (void) group_teardown(state);
        return -1;
}

static int group_teardown(void **state) {
        Ctx *c = *state;
        bool ok = true;

        if (!c)
                return 0;
        gc_free(c);
        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&c->agents[i]);
        pk_rules_remove(RULES_FILE);
        /* Lock the account again: "!" is no valid hash. */
        if (c->uid[U1] > 0 && set_password(user_names[U1], "!", true) < 0)
                ok = false;
        if (unmount_leftovers() > 0)
                ok = false;

        if (c->e) {
                Env *e = c->e;
                if (e->tmpdir && env_detach_all_under(e->tmpdir) > 0)
                        ok = false;
                if (e->tmpdir && !env_wait_nothing_under(e->tmpdir, 5 * USEC_PER_SEC))
                        ok = false;
                void *estate = e;
                if (env_group_teardown(&estate) < 0)
                        ok = false;
        }
        if (pk_user_processes(c->uid, N_USERS) > 0)
                ok = false;

        for (unsigned i = 0; i < N_USERS; i++)
                free(c->dir[i]);
        free(c->shared_dir);
        free(c->bus_socket);
        safe_close(c->lock_fd);
        free(c);
        *state = NULL;
        if (!ok)
                group_failed = true;
        return ok ? 0 : -1;
}

static int test_setup(void **state) {
        Ctx *c = *state;

        for (unsigned i = 0; i < N_USERS; i++) {
                int r = pk_agent_start(&c->agents[i], c->uid[i], c->gid[i]);
                if (r < 0) {
                        print_error("cannot start the agent for %s: %s\n", user_names[i],
                                    strerror(-r));
                        return -1;
                }
        }
        return 0;
}

static int test_teardown(void **state) {
        Ctx *c = *state;
        Env *e = c->e;
        bool ok = true;

        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&c->agents[i]);
        pk_rules_remove(RULES_FILE);
        gc_free(c);

        if (unmount_leftovers() > 0) {
                print_error("the test left mounts under " MEDIA_DIR "/lmopen*\n");
                ok = false;
        }
        if (env_cleanup_test(e) > 0)
                ok = false;
        if (!env_wait_nothing_under(e->tmpdir, 5 * USEC_PER_SEC)) {
                print_error("devices backed by %s are left over\n", e->tmpdir);
                (void) env_detach_all_under(e->tmpdir);
                (void) env_wait_nothing_under(e->tmpdir, 5 * USEC_PER_SEC);
                ok = false;
        }
        if (env_check_consistency_under(e, e->tmpdir) < 0)
                ok = false;
        if (pk_user_processes(c->uid, N_USERS) > 0)
                ok = false;
        return ok ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Tests */

/* The mount of an open image: under /run/media/<user>/, from a loop device, nosuid and nodev
 * (and ro when expected), and the user reads the file in it. */
static void check_open_mount(Ctx *c, unsigned who, const char *mount_point, bool read_only) {
        char *prefix = NULL, *file;
        MountEntry m = {};
        static PkRequest q;
        static PkReply p;

        assert_true(asprintf(&prefix, MEDIA_DIR "/%s/", user_names[who]) > 0);
        gc(c, prefix);
        if (strncmp(mount_point, prefix, strlen(prefix)) != 0)
                fail_msg("mount point '%s' is not under %s", mount_point, prefix);

        if (find_mount(c, mount_point, &m) < 0)
                fail_msg("%s is not a mount point", mount_point);
        print_message("  %s: %s from %s, %s\n", mount_point, m.fstype, m.source, m.options);
        if (strncmp(m.source, "/dev/loop", 9) != 0)
                fail_msg("%s is mounted from %s, not a loop device", mount_point, m.source);
        if (!has_option(m.options, "nosuid") || !has_option(m.options, "nodev"))
                fail_msg("%s lacks nosuid or nodev: %s", mount_point, m.options);
        if (read_only && !has_option(m.options, "ro"))
                fail_msg("%s is not read-only: %s", mount_point, m.options);

        /* The user reads the file, as themselves. */
        file = gc(c, env_join(mount_point, "hello.txt"));
        q = (PkRequest){.op = PK_OP_READ_FILE};
        assert_int_equal(pk_request_arg(&q, 's', 0, file), 0);
        assert_int_equal(pk_agent_call(&c->agents[who], &q, &p, 0), 0);
        if (p.r < 0 || p.open_errno != 0)
                fail_msg("%s cannot read %s: %s", user_names[who], file, pk_reply_error(&p));
        assert_string_equal(p.data, FILE_TEXT);
}

/* open of an ext4 image: mounted for the user; a second open gives the same mount and no
 * second device; close by directory unmounts it and the device goes. */
static void test_open_ext4(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "disk.ext4", "lmopen-ext4");
        char *mp = NULL;
        Run a = {}, b = {}, d = {};

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        ctl_as(c, U1, &a, "open", image);
        expect_status(&a, 0, "open of an ext4 image");
        mp = first_line(c, a.out);
        assert_string_equal(mp, MEDIA_DIR "/lmopen1/lmopen-ext4");
        check_open_mount(c, U1, mp, true);
        assert_int_equal(devices_of(image), 1);

        ctl_as(c, U1, &b, "open", image);
        expect_status(&b, 0, "second open");
        assert_string_equal(b.out, a.out);
        assert_int_equal(devices_of(image), 1);

        ctl_as(c, U1, &d, "close", mp);
        expect_status(&d, 0, "close by directory");
        expect_contains(d.out, "Unmounted " MEDIA_DIR "/lmopen1/lmopen-ext4", "close output");
        expect_contains(d.out, "detached", "close output");
        MountEntry m = {};
        assert_int_equal(find_mount(c, mp, &m), -ENOENT);
        assert_true(wait_no_device(image));
        expect_daemon_forgot(c, image);
}

/* --writable: a read-write mount; close by image name. */
static void test_open_writable(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "rw.ext4", "lmopen-rw");
        char *mp = NULL;
        MountEntry m = {};
        Run a = {}, b = {}, d = {};

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        ctl_as(c, U1, &a, "open", "--writable", image);
        expect_status(&a, 0, "open --writable");
        mp = first_line(c, a.out);
        check_open_mount(c, U1, mp, false);
        assert_int_equal(find_mount(c, mp, &m), 0);
        assert_true(has_option(m.options, "rw"));

        /* A read-only open of the same image shares the writable device and its mount. */
        ctl_as(c, U1, &b, "open", image);
        expect_status(&b, 0, "read-only open of an image open writable");
        assert_string_equal(b.out, a.out);
        assert_int_equal(devices_of(image), 1);

        ctl_as(c, U1, &d, "close", image);
        expect_status(&d, 0, "close by image");
        assert_true(wait_no_device(image));
        expect_daemon_forgot(c, image);
}

/* squashfs: mounted read-only; --json for open and close. */
static void test_open_squashfs(void **state) {
        Ctx *c = *state;
        char *image = make_squashfs(c, U1, "disk.squashfs");
        char *mp = NULL, *mp_json = NULL;
        Run a = {}, b = {}, d = {};
        MountEntry m = {};

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        ctl_as(c, U1, &a, "open", image);
        expect_status(&a, 0, "open of a squashfs image");
        mp = first_line(c, a.out);
        check_open_mount(c, U1, mp, true);
        assert_int_equal(find_mount(c, mp, &m), 0);
        assert_string_equal(m.fstype, "squashfs");

        ctl_as(c, U1, &b, "open", "--json", image);
        expect_status(&b, 0, "open --json");
        assert_true(asprintf(&mp_json, "\"mount_point\":\"%s\"", mp) > 0);
        gc(c, mp_json);
        expect_contains(b.out, mp_json, "open --json");
        expect_contains(b.out, "\"device\":\"/dev/loop", "open --json");
        expect_contains(b.out, "\"object\":\"" LOOPMGR_DEVICE_PATH_PREFIX "/", "open --json");
        expect_contains(b.out, "\"reused\":true", "open --json");
        assert_int_equal(devices_of(image), 1);

        ctl_as(c, U1, &d, "close", "--json", image);
        expect_status(&d, 0, "close --json");
        expect_contains(d.out, mp_json, "close --json");
        expect_contains(d.out, "\"state\":\"detached\"", "close --json");
        assert_true(wait_no_device(image));
        expect_daemon_forgot(c, image);
}

/* Another user cannot close a user's image without mount-others; with it, they can. */
static void test_other_user(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "other.ext4", "lmopen-other");
        char *mp = NULL;
        Run a = {}, b = {}, d = {};
        MountEntry m = {};

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        ctl_as(c, U1, &a, "open", image);
        expect_status(&a, 0, "open");
        mp = first_line(c, a.out);

        /* lmopen2 cannot even look into /run/media/lmopen1; close matches the path as given
         * (a trailing slash aside). */
        char *mp_slash = NULL;
        assert_true(asprintf(&mp_slash, "%s/", mp) > 0);
        gc(c, mp_slash);
        ctl_as(c, U2, &b, "close", mp_slash);
        expect_status(&b, 4, "close of another user's mount without mount-others");
        assert_int_equal(find_mount(c, mp, &m), 0);
        assert_int_equal(devices_of(image), 1);

        set_rules(c, BASE_RULES PK_RULE("org.loopmgr.mount-others", "lmopen2", "YES"),
                  "org.loopmgr.mount-others", U2, PK_VERDICT_YES);
        ctl_as(c, U2, &d, "close", mp);
        expect_status(&d, 0, "close of another user's mount with mount-others");
        assert_int_equal(find_mount(c, mp, &m), -ENOENT);
        assert_true(wait_no_device(image));
        expect_daemon_forgot(c, image);
}

/* Mistakes: clear messages, distinct exit statuses, and nothing left behind. */
static void test_errors(void **state) {
        Ctx *c = *state;
        char *missing = gc(c, env_join(c->dir[U1], "missing.img"));
        char *noise = make_noise(c, U1, "noise.img");
        char *ext4 = make_ext4(c, U1, "closed.ext4", "lmopen-closed");
        Run a = {}, b = {}, d = {}, e = {}, f = {}, g = {};

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        ctl_as(c, U1, &a, "open", missing);
        expect_status(&a, 5, "open of a missing file");
        expect_contains(a.err, "no such file", "open of a missing file");

        ctl_as(c, U1, &b, "open", noise);
        expect_status(&b, 1, "open of a file without a file system");
        expect_contains(b.err, "Cannot open", "open of noise");
        assert_true(wait_no_device(noise));
        expect_daemon_forgot(c, noise);

        ctl_as(c, U1, &d, "close", ext4);
        expect_status(&d, 5, "close of an image that is not open");
        expect_contains(d.err, "is not open", "close of an image that is not open");

        ctl_as(c, U1, &e, "close", c->dir[U1]);
        expect_status(&e, 5, "close of a directory that is no mount point");
        expect_contains(e.err, "not a mount point of loopmgr's", "close of a plain directory");

        ctl_as(c, U1, &f, "open", c->dir[U1]);
        expect_status(&f, 1, "open of a directory");
        expect_contains(f.err, "directory", "open of a directory");

        /* lmopen2 cannot read lmopen1's image: no attach at all. */
        ctl_as(c, U2, &g, "open", ext4);
        expect_status(&g, 4, "open of an image the user cannot read");
        assert_int_equal(devices_of(ext4), 0);
        assert_int_equal(devices_of(noise), 0);

        /* Nor close it: the path cannot even be looked at. */
        Run h = {};
        ctl_as(c, U2, &h, "close", ext4);
        expect_status(&h, 4, "close of an image the user cannot see");
        expect_contains(h.err, "Permission denied", "close of an image the user cannot see");
}

/* polkit wants lmopen1's password for attach: loopmgrctl on a terminal runs pkttyagent, the
 * password is typed, the call is retried and the image opens. A wrong password: refused,
 * nothing left. --no-ask-password: no prompt at all. */
static void test_interactive_agent(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "agent.ext4", "lmopen-agent");
        PtyRun a = {}, b = {}, d = {};
        Run e = {};
        char *mp = NULL;
        struct stat st;

        if (stat("/run/dbus", &st) < 0 || !S_ISDIR(st.st_mode) ||
            access("/usr/bin/pkttyagent", X_OK) < 0 ||
            access("/usr/lib/polkit-1/polkit-agent-helper-1", X_OK) < 0) {
                print_message("skipped: needs /run/dbus, pkttyagent and polkit-agent-helper-1\n");
                skip();
        }

        set_rules(c,
                  PK_RULE("org.loopmgr.attach", "lmopen1", "AUTH_SELF")
                          PK_RULE("org.loopmgr.mount", "lmopen1", "YES"),
                  "org.loopmgr.attach", U1, PK_VERDICT_CHALLENGE, "org.loopmgr.mount", U1,
                  PK_VERDICT_YES);

        char *argv_open[] = {c->e->loopmgrctl, (char *) "open", image, NULL};
        pty_run(c, &(PtyOptions){.who = U1, .system_bus_namespace = true, .password = "wrong"},
                argv_open, &a);
        assert_int_equal(a.status, 4);
        assert_true(a.prompts >= 1);
        assert_true(wait_no_device(image));

        pty_run(c, &(PtyOptions){.who = U1, .system_bus_namespace = true, .password = c->password},
                argv_open, &b);
        assert_int_equal(b.status, 0);
        assert_int_equal(b.prompts, 1);
        expect_contains(b.output, "AUTHENTICATION COMPLETE", "pkttyagent's output");
        expect_contains(b.output, MEDIA_DIR "/lmopen1/lmopen-agent", "open's output");
        mp = gc(c, strdup(MEDIA_DIR "/lmopen1/lmopen-agent"));
        check_open_mount(c, U1, mp, true);

        ctl_as(c, U1, &e, "close", mp);
        expect_status(&e, 0, "close");
        assert_true(wait_no_device(image));

        char *argv_nask[] = {c->e->loopmgrctl, (char *) "open", (char *) "--no-ask-password", image,
                             NULL};
        pty_run(c, &(PtyOptions){.who = U1, .system_bus_namespace = true, .password = "x"},
                argv_nask, &d);
        assert_int_equal(d.status, 4);
        assert_int_equal(d.prompts, 0);
        expect_contains(d.output, "does not allow interactive", "--no-ask-password");
        assert_true(wait_no_device(image));
}

/* The agent's life cycle, with fake agents (LOOPMGR_PKTTYAGENT): started with --notify-fd
 * and --process <loopmgrctl's pid> only on InteractiveAuthorizationRequired, the call retried
 * once it closed the fd, stopped with SIGTERM; an agent that dies at once is reported. */
static void test_fake_agent(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "fake.ext4", "lmopen-fake");
        char *agent = gc(c, env_join(c->shared_dir, "fake-agent"));
        char *dying = gc(c, env_join(c->shared_dir, "dying-agent"));
        char *log = gc(c, env_join(c->dir[U1], "agent.log"));
        char *text;
        PtyRun a = {}, b = {}, d = {};
        static PkRequest q;
        static PkReply p;

        /* Records its arguments, closes the notify fd (the argument after --notify-fd) as
         * pkttyagent does once registered, and notes SIGTERM. */
        static const char fake[] = "#!/bin/sh\n"
                                   "echo \"args $*\" >> \"$LMOPEN_FAKE_LOG\"\n"
                                   "fd=$2\n"
                                   "eval \"exec $fd>&-\"\n"
                                   "trap 'echo TERM >> \"$LMOPEN_FAKE_LOG\"; exit 0' TERM\n"
                                   "i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
                                   "echo TIMEOUT >> \"$LMOPEN_FAKE_LOG\"\n";
        static const char die[] = "#!/bin/sh\nexit 1\n";

        FILE *f = fopen(agent, "we");
        assert_non_null(f);
        assert_true(fputs(fake, f) >= 0);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(chmod(agent, 0755), 0);
        f = fopen(dying, "we");
        assert_non_null(f);
        assert_true(fputs(die, f) >= 0);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(chmod(dying, 0755), 0);

        set_rules(c,
                  PK_RULE("org.loopmgr.attach", "lmopen1", "AUTH_SELF")
                          PK_RULE("org.loopmgr.mount", "lmopen1", "YES"),
                  "org.loopmgr.attach", U1, PK_VERDICT_CHALLENGE);

        char *argv_open[] = {c->e->loopmgrctl, (char *) "open", image, NULL};
        pty_run(c, &(PtyOptions){.who = U1, .agent = agent, .agent_log = log}, argv_open, &a);
        /* The fake agent answers nothing: the retry fails like the first call. */
        assert_int_equal(a.status, 4);
        expect_contains(a.output, "no polkit authentication agent is available", "retry");
        assert_true(wait_no_device(image));

        q = (PkRequest){.op = PK_OP_READ_FILE};
        assert_int_equal(pk_request_arg(&q, 's', 0, log), 0);
        assert_int_equal(pk_agent_call(&c->agents[U1], &q, &p, 0), 0);
        assert_int_equal(p.open_errno, 0);
        text = gc(c, strdup(p.data));
        print_message("  fake agent log:\n%s", text);
        expect_contains(text, "args --notify-fd ", "the agent's arguments");
        expect_contains(text, " --process ", "the agent's arguments");
        expect_contains(text, "TERM", "the agent was stopped");
        if (strstr(text, "TIMEOUT"))
                fail_msg("the fake agent was never stopped");
        /* One agent for the one call that needed it. */
        assert_null(strstr(strstr(text, "args") + 1, "args"));

        pty_run(c, &(PtyOptions){.who = U1, .agent = dying}, argv_open, &b);
        assert_int_equal(b.status, 4);
        /* Either it was seen gone before the retry or after it. */
        if (!strstr(b.output, "Cannot start a polkit authentication agent") &&
            !strstr(b.output, "agent on this terminal exited"))
                fail_msg("a dying agent is not reported: %s", b.output);
        assert_true(wait_no_device(image));

        /* Without a terminal no agent is started at all. */
        Run n = {};
        ctl_as(c, U1, &n, "open", image);
        expect_status(&n, 4, "open without a terminal");
        if (strstr(n.err, "Cannot start"))
                fail_msg("an agent was tried without a terminal");

        /* Allowed without asking: no agent either. */
        set_rules(c, BASE_RULES, BASE_VERDICTS);
        (void) unlink(log);
        pty_run(c, &(PtyOptions){.who = U1, .agent = agent, .agent_log = log}, argv_open, &d);
        assert_int_equal(d.status, 0);
        assert_int_equal(access(log, F_OK), -1);
        Run cl = {};
        ctl_as(c, U1, &cl, "close", image);
        expect_status(&cl, 0, "close");
        assert_true(wait_no_device(image));
}

/* --lifetime client: open stays in the foreground and closes the image on SIGTERM. */
static void test_open_client_lifetime(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "client.ext4", "lmopen-client");
        const char *mp = MEDIA_DIR "/lmopen1/lmopen-client";
        uint64_t deadline;
        MountEntry m = {};
        int fds[2], status;
        char out[4096] = "";
        ssize_t n, len = 0;
        pid_t pid;

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
        fflush(stdout);
        fflush(stderr);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                if (dup2(fds[1], STDOUT_FILENO) < 0) {
                        perror("test-desktop: dup2 stdout");
                        _exit(123);
                }
                if (setgroups(0, NULL) < 0 || setresgid(c->gid[U1], c->gid[U1], c->gid[U1]) < 0 ||
                    setresuid(c->uid[U1], c->uid[U1], c->uid[U1]) < 0) {
                        perror("test-desktop: dropping to the user");
                        _exit(123);
                }
                execl(c->e->loopmgrctl, c->e->loopmgrctl, "open", "--lifetime=client", image,
                      (char *) NULL);
                fprintf(stderr, "test-desktop: cannot execute %s as %s: %m\n", c->e->loopmgrctl,
                        user_names[U1]);
                _exit(127);
        }
        close(fds[1]);

        /* The mount point on stdout means: open and waiting. */
        deadline = now_usec() + 30 * USEC_PER_SEC;
        while (!strchr(out, '\n') && now_usec() < deadline) {
                struct pollfd p = {.fd = fds[0], .events = POLLIN};
                if (poll(&p, 1, 100) <= 0)
                        continue;
                n = read(fds[0], out + len, sizeof(out) - 1 - (size_t) len);
                if (n <= 0)
                        break;
                len += n;
                out[len] = 0;
        }
        if (strncmp(out, mp, strlen(mp)) != 0) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                close(fds[0]);
                fail_msg("open --lifetime=client printed '%s'", out);
        }
        assert_int_equal(find_mount(c, mp, &m), 0);
        sleep_usec(200 * USEC_PER_MSEC);
        assert_int_equal(waitpid(pid, &status, WNOHANG), 0);

        assert_int_equal(kill(pid, SIGTERM), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        n = read(fds[0], out + len, sizeof(out) - 1 - (size_t) len);
        if (n > 0)
                out[len + n] = 0;
        close(fds[0]);
        print_message("  open --lifetime=client, then SIGTERM: status %d, output:\n%s",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1, out);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        expect_contains(out, "Unmounted " MEDIA_DIR "/lmopen1/lmopen-client and detached",
                        "output after SIGTERM");
        assert_int_equal(find_mount(c, mp, &m), -ENOENT);
        assert_true(wait_no_device(image));
        expect_daemon_forgot(c, image);
}

/* Usage errors of open and close: exit status 2 before anything is asked of the daemon. */
static void test_usage(void **state) {
        Ctx *c = *state;
        static const char *const cases[][5] = {
                {"open", NULL},
                {"open", "a.img", "b.img", NULL},
                {"open", "--exclusive", "a.img", NULL},
                {"open", "--offset=512", "a.img", NULL},
                {"open", "--lifetime=forever", "a.img", NULL},
                {"open", "--no-wait", "a.img", NULL},
                {"close", NULL},
                {"close", "--writable", "a.img", NULL},
                {"close", "--no-wait", "--timeout=1", "a.img", NULL},
                {"attach", "--writable", "a.img", NULL},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *out = NULL, *err = NULL;
                int r = env_run(&out, &err, c->e->loopmgrctl, cases[i][0], cases[i][1],
                                cases[i][1] ? cases[i][2] : NULL,
                                cases[i][1] && cases[i][2] ? cases[i][3] : NULL, NULL);

                print_message("  loopmgrctl %s %s ... -> %d: %s", cases[i][0], cases[i][1] ?: "", r,
                              err ?: "");
                if (r != 2)
                        fail_msg("loopmgrctl %s %s: exit status %d, expected 2 (usage)",
                                 cases[i][0], cases[i][1] ?: "", r);
        }
}

#define T(f) cmocka_unit_test_setup_teardown(f, test_setup, test_teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_open_ext4),  T(test_open_writable), T(test_open_squashfs),
                T(test_other_user), T(test_errors),        T(test_interactive_agent),
                T(test_fake_agent), T(test_usage),         T(test_open_client_lifetime),
        };
        const char *reason;

        if (env_skip_reason(&reason)) {
                printf("skipping: %s\n", reason);
                return 77;
        }

        const char *filter = getenv("LOOPMGR_TEST_FILTER");
        if (filter && *filter)
                cmocka_set_test_filter(filter);
        filter = getenv("LOOPMGR_TEST_SKIP");
        if (filter && *filter)
                cmocka_set_skip_filter(filter);

        int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
        if ((group_failed || env_group_failed) && failed == 0)
                failed = 1;
        return failed ? 1 : 0;
}
