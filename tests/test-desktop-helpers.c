/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-desktop's helpers: loopmgrctl as a user, mounts and devices, images, polkit rules,
 * loopmgrctl on a pseudo-terminal; partitions and text for test-desktop-parts. */

#include <ctype.h>
#include <dirent.h>
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
#include "test-desktop.h"

/* ------------------------------------------------------------------------------------------ */
/* Running loopmgrctl as a user */

void ctl_as_impl(Ctx *c, unsigned who, Run *ret, const char *file, int line, ...) {
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

void expect_status_impl(const Run *r, int status, const char *what, const char *file, int line) {
        if (r->status != status)
                fail_msg("%s:%d: %s: exit status %d, expected %d; stdout '%s', stderr '%s'", file,
                         line, what, r->status, status, r->out, r->err);
}

void expect_contains_impl(const char *haystack, const char *needle, const char *what,
                          const char *file, int line) {
        if (!haystack) {
                fail_msg("%s:%d: %s: no text to look for '%s' in", file, line, what, needle);
                return;
        }
        if (!strstr(haystack, needle))
                fail_msg("%s:%d: %s: '%s' does not contain '%s'", file, line, what, haystack,
                         needle);
}

char *first_line(Ctx *c, const char *s) {
        return gc(c, strndup(s, strcspn(s, "\n")));
}

/* ------------------------------------------------------------------------------------------ */
/* Mounts, devices */

int find_mount(Ctx *c, const char *target, MountEntry *ret) {
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

bool has_option(const char *options, const char *name) {
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

char **mounts_below(const char *dir) {
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

size_t devices_of(const char *path) {
        size_t n = 0;
        assert_int_equal(losetup_count_backed_by(path, false, &n), 0);
        return n;
}

bool wait_no_device(const char *path) {
        uint64_t deadline = now_usec() + 5 * USEC_PER_SEC;

        while (devices_of(path) > 0) {
                if (now_usec() >= deadline)
                        return false;
                sleep_usec(20 * USEC_PER_MSEC);
        }
        return true;
}

void expect_daemon_forgot_impl(Ctx *c, const char *image, const char *file, int line) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *object = NULL;
        int r = call_get_device(c->e, image, &error, &object);

        if (r >= 0 || !sd_bus_error_has_name(&error, ERROR_NAME_NOT_FOUND)) {
                const char *o = object ? gc(c, TAKE_PTR(object)) : "?";
                fail_msg("%s:%d: GetDevice(%s) still finds %s (%s)", file, line, image, o,
                         error.name ?: "no error");
        }
}

/* ------------------------------------------------------------------------------------------ */
/* Images */

char *make_tree(Ctx *c) {
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

void give(Ctx *c, unsigned who, const char *path) {
        assert_int_equal(chown(path, c->uid[who], c->gid[who]), 0);
        assert_int_equal(chmod(path, 0600), 0);
}

char *make_ext4(Ctx *c, unsigned who, const char *name, const char *label) {
        char *tree = make_tree(c);
        char *image = gc(c, env_join(c->dir[who], name));
        _cleanup_fclose_ FILE *f = fopen(image, "we");

        assert_non_null(f);
        assert_int_equal(ftruncate(fileno(f), 16 * 1024 * 1024), 0);
        env_run_ok("mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, image);
        give(c, who, image);
        return image;
}

char *make_squashfs(Ctx *c, unsigned who, const char *name) {
        char *tree = make_tree(c);
        char *image = gc(c, env_join(c->dir[who], name));

        env_run_ok("mksquashfs", tree, image, "-quiet", "-noappend", "-all-root", "-no-progress");
        give(c, who, image);
        return image;
}

char *make_noise(Ctx *c, unsigned who, const char *name) {
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

char *read_as(Ctx *c, unsigned who, const char *path) {
        static PkRequest q;
        static PkReply p;

        q = (PkRequest){.op = PK_OP_READ_FILE};
        assert_int_equal(pk_request_arg(&q, 's', 0, path), 0);
        assert_int_equal(pk_agent_call(&c->agents[who], &q, &p, 0), 0);
        if (p.r < 0 || p.open_errno != 0)
                fail_msg("%s cannot read %s: %s", user_names[who], path, pk_reply_error(&p));
        return gc(c, strdup(p.data));
}

/* ------------------------------------------------------------------------------------------ */
/* polkit rules */

void set_rules_impl(Ctx *c, const char *text, const char *file, int line, ...) {
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

/* ------------------------------------------------------------------------------------------ */
/* loopmgrctl on a pseudo-terminal */

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

void pty_run(Ctx *c, const PtyOptions *o, char *const *argv, PtyRun *ret) {
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
/* Partitions, text (test-desktop-parts) */

char *fmt(Ctx *c, const char *format, ...) {
        char *s = NULL;
        va_list ap;

        va_start(ap, format);
        int r = vasprintf(&s, format, ap);
        va_end(ap);
        assert_true(r >= 0);
        return gc(c, s);
}

void make_sparse(const char *path, uint64_t size) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

        if (fd < 0)
                fail_msg("creating %s: %s", path, strerror(errno));
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
}

size_t count_partitions(const char *name) {
        _cleanup_free_ char *path = NULL;
        size_t n = 0, l = strlen(name);
        struct dirent *de;
        DIR *d;

        assert_true(asprintf(&path, "/sys/block/%s", name) > 0);
        d = opendir(path);
        if (!d)
                return 0;
        while ((de = readdir(d)))
                if (strncmp(de->d_name, name, l) == 0 && de->d_name[l] == 'p' &&
                    isdigit((unsigned char) de->d_name[l + 1]))
                        n++;
        closedir(d);
        return n;
}

bool wait_no_partitions(const char *name) {
        uint64_t deadline = now_usec() + 5 * USEC_PER_SEC;
        _cleanup_free_ char *loop = NULL;

        assert_true(asprintf(&loop, "/sys/block/%s/loop", name) > 0);
        while (count_partitions(name) > 0 && access(loop, F_OK) < 0) {
                if (now_usec() >= deadline)
                        return false;
                sleep_usec(20 * USEC_PER_MSEC);
        }
        return true;
}

size_t unbound_with_partitions(void) {
        size_t n = 0;
        struct dirent *de;
        DIR *d = opendir("/sys/block");

        if (!d)
                return 0;
        while ((de = readdir(d))) {
                _cleanup_free_ char *loop = NULL;

                if (strncmp(de->d_name, "loop", 4) != 0 ||
                    asprintf(&loop, "/sys/block/%s/loop", de->d_name) < 0)
                        continue;
                if (access(loop, F_OK) < 0 && count_partitions(de->d_name) > 0)
                        n++;
        }
        closedir(d);
        return n;
}

char *squeeze(Ctx *c, const char *s) {
        char *t = gc(c, strdup(s)), *o = t;

        for (; *s; s++)
                if (!isspace((unsigned char) *s))
                        *o++ = *s;
        *o = 0;
        return t;
}

size_t occurrences(const char *haystack, const char *needle) {
        size_t n = 0;

        for (const char *p = haystack; (p = strstr(p, needle)); p += strlen(needle))
                n++;
        return n;
}

size_t unmount_media_leftovers(void) {
        size_t n = 0;

        for (unsigned i = 0; i < N_USERS; i++) {
                _cleanup_free_ char *dir = NULL;
                _cleanup_strv_free_ char **l = NULL;
                size_t k = 0;

                if (asprintf(&dir, MEDIA_DIR "/%s", user_names[i]) < 0)
                        continue;
                l = mounts_below(dir);
                while (l && l[k])
                        k++;
                n += k;
                for (; k > 0; k--) { /* newest first */
                        print_error("unmounting the leftover %s\n", l[k - 1]);
                        if (umount2(l[k - 1], MNT_DETACH) < 0)
                                print_error("umount %s: %m\n", l[k - 1]);
                        (void) rmdir(l[k - 1]);
                }
        }
        return n;
}

int desktop_test_teardown(Ctx *c, bool (*check)(void)) {
        Env *e = c->e;
        bool ok = true;

        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&c->agents[i]);
        pk_rules_remove(RULES_FILE);
        gc_free(c);

        if (unmount_media_leftovers() > 0) {
                print_error("the test left mounts under " MEDIA_DIR "/lmopen*\n");
                ok = false;
        }
        if (env_cleanup_test(e) > 0)
                ok = false;
        if (!env_expect_nothing_under(e->tmpdir, 5 * USEC_PER_SEC))
                ok = false;
        if (check && !check())
                ok = false;
        if (env_check_consistency_under(e, e->tmpdir) < 0)
                ok = false;
        if (pk_user_processes(c->uid, N_USERS) > 0)
                ok = false;
        return ok ? 0 : -1;
}

int desktop_group_start(Ctx *c) {
        int r;

        c->lock_fd = -EBADF;
        for (unsigned i = 0; i < N_USERS; i++)
                c->agents[i] = PK_AGENT_NULL;
        r = pk_lock(LOCK_FILE, 240 * USEC_PER_SEC, &c->lock_fd);
        if (r < 0) {
                print_error("%s: %s\n", LOCK_FILE, strerror(-r));
                return r;
        }
        pk_rules_remove(RULES_FILE);
        for (unsigned i = 0; i < N_USERS; i++) {
                r = pk_ensure_user(user_names[i], &c->uid[i], &c->gid[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

int desktop_group_env(Ctx *c, const char *name) {
        void *estate = NULL;
        int r;

        r = env_group_setup(&estate, name);
        c->e = estate;
        if (r < 0)
                return r;
        /* The users reach their own directories through it, and nothing else; and run
         * loopmgrctl's copy from it: the build tree may be out of their reach. */
        if (chmod(c->e->tmpdir, 0711) < 0)
                return -errno;
        r = env_loopmgrctl_for_users(c->e);
        if (r < 0)
                return r;
        for (unsigned i = 0; i < N_USERS; i++) {
                c->dir[i] = env_join(c->e->tmpdir, user_names[i]);
                r = pk_make_dir(c->dir[i], 0700, c->uid[i], c->gid[i]);
                if (r < 0) {
                        print_error("%s: %s\n", c->dir[i], strerror(-r));
                        return r;
                }
        }
        return 0;
}

bool desktop_group_stop(Ctx *c, bool (*check)(void)) {
        bool ok = true;

        gc_free(c);
        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&c->agents[i]);
        pk_rules_remove(RULES_FILE);
        if (unmount_media_leftovers() > 0)
                ok = false;
        if (c->e) {
                Env *e = c->e;
                void *estate = e;

                if (e->tmpdir && env_detach_all_under(e->tmpdir) > 0)
                        ok = false;
                if (e->tmpdir && !env_wait_nothing_under(e->tmpdir, 5 * USEC_PER_SEC))
                        ok = false;
                if (check && !check())
                        ok = false;
                if (env_group_teardown(&estate) < 0)
                        ok = false;
                c->e = NULL;
        }
        if (pk_user_processes(c->uid, N_USERS) > 0)
                ok = false;
        for (unsigned i = 0; i < N_USERS; i++) {
                free(c->dir[i]);
                c->dir[i] = NULL;
        }
        c->lock_fd = safe_close(c->lock_fd);
        return ok;
}

int desktop_test_setup(Ctx *c) {
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

void *gc(Ctx *c, void *p) {
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

void gc_free(Ctx *c) {
        for (size_t i = 0; i < c->n_garbage; i++)
                free(c->garbage[i]);
        free(c->garbage);
        c->garbage = NULL;
        c->n_garbage = 0;
}
