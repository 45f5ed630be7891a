/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The host's view for the integration tests: sysfs attributes of loop devices, running
 * commands (and copies of programs for unprivileged users), losetup --list. */

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* cmocka wants these first. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-internal.h"
#include "integration-util.h"

/* --- sysfs --- */

int sysfs_read(const char *name, const char *attr, char **ret) {
        _cleanup_free_ char *path = NULL;
        char buf[4096];

        if (asprintf(&path, "/sys/block/%s/%s", name, attr) < 0)
                return -ENOMEM;
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        if (n < 0)
                return -errno;
        buf[n] = 0;
        buf[strcspn(buf, "\n")] = 0;
        char *s = strdup(buf);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int sysfs_read_u64(const char *name, const char *attr, uint64_t *ret) {
        _cleanup_free_ char *s = NULL;
        int r = sysfs_read(name, attr, &s);
        if (r < 0)
                return r;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno != 0 || end == s || *end != 0)
                return -EINVAL;
        *ret = v;
        return 0;
}

int loop_binding_present(const char *name, uint64_t diskseq) {
        uint64_t seq;
        int r = sysfs_read_u64(name, "diskseq", &seq);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        if (seq != diskseq)
                return 0;
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "/sys/block/%s/loop", name) < 0)
                return -ENOMEM;
        return access(path, F_OK) == 0;
}

bool wait_binding_gone(const char *name, uint64_t diskseq, uint64_t timeout_usec) {
        uint64_t deadline = now_usec() + timeout_usec;
        for (;;) {
                if (loop_binding_present(name, diskseq) == 0)
                        return true;
                if (now_usec() >= deadline)
                        return false;
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

/* --- processes --- */

/* "<what> <arg>: <strerror(error)>" and a newline to fd, from a forked child: nothing but
 * writev(), which is async-signal-safe (the test may have threads). */
static void child_report(int fd, const char *what, const char *arg, int error) {
        const char *reason = strerrordesc_np(error) ?: "unknown error";
        struct iovec iov[] = {
                {(char *) what, strlen(what)},     {(char *) " ", 1},
                {(char *) arg, strlen(arg)},       {(char *) ": ", 2},
                {(char *) reason, strlen(reason)}, {(char *) "\n", 1},
        };
        (void) writev(fd, iov, ELEMENTSOF(iov));
}

int run_command(char *const *argv, const char *stdin_data, char **ret_stdout, char **ret_stderr) {
        int in[2] = {-EBADF, -EBADF}, out[2] = {-EBADF, -EBADF}, err[2] = {-EBADF, -EBADF};
        char *bufs[2] = {};
        size_t sizes[2] = {};
        int r = 0;

        if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
                r = -errno;
                goto finish;
        }
        pid_t pid = fork();
        if (pid < 0) {
                r = -errno;
                goto finish;
        }
        if (pid == 0) {
                if (dup2(in[0], STDIN_FILENO) < 0 || dup2(out[1], STDOUT_FILENO) < 0 ||
                    dup2(err[1], STDERR_FILENO) < 0) {
                        /* err[1] is still open here: it closes on exec only. */
                        child_report(err[1], "cannot set up stdin, stdout and stderr for", argv[0],
                                     errno);
                        _exit(127);
                }
                execvp(argv[0], argv);
                child_report(STDERR_FILENO, "cannot execute", argv[0], errno);
                _exit(127);
        }
        in[0] = safe_close(in[0]);
        out[1] = safe_close(out[1]);
        err[1] = safe_close(err[1]);

        size_t in_left = stdin_data ? strlen(stdin_data) : 0;
        const char *in_pos = stdin_data;
        if (in_left == 0)
                in[1] = safe_close(in[1]);
        (void) fcntl(in[1], F_SETFL, O_NONBLOCK);

        while (out[0] >= 0 || err[0] >= 0 || in[1] >= 0) {
                struct pollfd p[3] = {
                        {.fd = out[0], .events = POLLIN},
                        {.fd = err[0], .events = POLLIN},
                        {.fd = in[1], .events = POLLOUT},
                };
                if (poll(p, 3, 60 * 1000) <= 0) {
                        (void) kill(pid, SIGKILL);
                        r = -ETIMEDOUT;
                        break;
                }
                for (int i = 0; i < 2; i++) {
                        int *fd = i == 0 ? &out[0] : &err[0];
                        if (*fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                                continue;
                        char *nb = realloc(bufs[i], sizes[i] + 4096 + 1);
                        if (!nb) {
                                r = -ENOMEM;
                                *fd = safe_close(*fd);
                                continue;
                        }
                        bufs[i] = nb;
                        ssize_t n = read(*fd, bufs[i] + sizes[i], 4096);
                        if (n <= 0)
                                *fd = safe_close(*fd);
                        else
                                sizes[i] += (size_t) n;
                        bufs[i][sizes[i]] = 0;
                }
                if (in[1] >= 0 && (p[2].revents & (POLLOUT | POLLERR | POLLHUP))) {
                        ssize_t n = write(in[1], in_pos, in_left);
                        if (n <= 0)
                                in_left = 0;
                        else {
                                in_pos += n;
                                in_left -= (size_t) n;
                        }
                        if (in_left == 0)
                                in[1] = safe_close(in[1]);
                }
        }

        int status;
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR) {
                        r = -errno;
                        goto finish;
                }
        if (r >= 0)
                r = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        /* 127: the command could not be run (or a shell did not find one); the caller that
         * did not ask for stderr would never learn why. */
        if (r == 127 && !ret_stderr && bufs[1] && bufs[1][0])
                print_error("%s exited with 127: %s", argv[0], bufs[1]);

finish:
        safe_close(in[0]);
        safe_close(in[1]);
        safe_close(out[0]);
        safe_close(out[1]);
        safe_close(err[0]);
        safe_close(err[1]);
        if (r >= 0 && ret_stdout)
                *ret_stdout = bufs[0] ?: strdup("");
        else
                free(bufs[0]);
        if (r >= 0 && ret_stderr)
                *ret_stderr = bufs[1] ?: strdup("");
        else
                free(bufs[1]);
        return r;
}

/* Fails (-EACCES) unless dir and every directory above it may be searched by others. */
static int check_searchable_by_others(const char *dir, const char *for_what) {
        _cleanup_free_ char *p = realpath(dir, NULL);
        if (!p)
                return -errno;
        for (;;) {
                const char *d = p[0] ? p : "/";
                struct stat st;
                if (stat(d, &st) < 0)
                        return -errno;
                if (!(st.st_mode & S_IXOTH)) {
                        print_error("%s (mode %04o) may not be searched by other users, so they "
                                    "cannot run %s\n",
                                    d, (unsigned) (st.st_mode & 07777), for_what);
                        return -EACCES;
                }
                char *slash = strrchr(p, '/');
                if (!slash || !p[0])
                        return 0;
                *slash = 0;
        }
}

int copy_for_users(const char *src, const char *dir, char **ret) {
        _cleanup_free_ char *name = strdup(src), *path = NULL, *tmp = NULL;
        _cleanup_close_ int in = -EBADF, out = -EBADF;
        char buf[65536];
        int r;

        if (!name)
                return -ENOMEM;
        if (mkdir(dir, 0755) == 0) {
                if (chmod(dir, 0755) < 0) /* mkdir() applies the umask */
                        return -errno;
        } else if (errno != EEXIST)
                return -errno;
        r = check_searchable_by_others(dir, src);
        if (r < 0)
                return r;
        if (asprintf(&path, "%s/%s", dir, basename(name)) < 0) {
                path = NULL;
                return -ENOMEM;
        }
        if (asprintf(&tmp, "%s/.%s.XXXXXX", dir, basename(name)) < 0) {
                tmp = NULL;
                return -ENOMEM;
        }

        in = open(src, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (in < 0)
                return -errno;
        out = mkostemp(tmp, O_CLOEXEC);
        if (out < 0)
                return -errno;
        for (;;) {
                ssize_t n = read(in, buf, sizeof(buf));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = -errno;
                        goto fail;
                }
                if (n == 0)
                        break;
                for (ssize_t done = 0; done < n;) {
                        ssize_t k = write(out, buf + done, (size_t) (n - done));
                        if (k < 0 && errno == EINTR)
                                continue;
                        if (k < 0) {
                                r = -errno;
                                goto fail;
                        }
                        done += k;
                }
        }
        if (fchmod(out, 0755) < 0) {
                r = -errno;
                goto fail;
        }
        /* Closed before anything can run it (ETXTBSY); rename() replaces an older copy
         * even while it runs. */
        r = close(TAKE_FD(out));
        if (r < 0 || rename(tmp, path) < 0) {
                r = -errno;
                goto fail;
        }
        *ret = TAKE_PTR(path);
        return 0;

fail:
        (void) unlink(tmp);
        return r;
}

/* --- losetup --- */

void losetup_entries_free(LosetupEntry *l, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(l[i].node);
                free(l[i].back_file);
        }
        free(l);
}

int losetup_list(LosetupEntry **ret, size_t *ret_n) {
        _cleanup_free_ char *json = NULL, *tsv = NULL;
        char *losetup[] = {(char *) "losetup",
                           (char *) "--json",
                           (char *) "--list",
                           (char *) "--output",
                           (char *) "NAME,BACK-FILE,OFFSET,SIZELIMIT",
                           NULL};
        /* Numbers or strings depending on the util-linux version: tostring covers both. */
        char *jq[] = {(char *) "jq", (char *) "-r",
                      (char *) ".loopdevices[]? | [.name, (.[\"back-file\"] // \"\"), "
                               "(.offset // 0 | tostring), (.sizelimit // 0 | tostring)] "
                               "| @tsv",
                      NULL};
        LosetupEntry *l = NULL;
        size_t n = 0;
        int r;

        r = run_command(losetup, NULL, &json, NULL);
        if (r < 0)
                return r;
        if (r != 0)
                return -EIO;
        if (json[strspn(json, " \t\n")] != 0) { /* no devices: no output at all */
                r = run_command(jq, json, &tsv, NULL);
                if (r < 0)
                        return r;
                if (r != 0)
                        return -EBADMSG;
        }

        for (char *line = tsv ? strtok(tsv, "\n") : NULL; line; line = strtok(NULL, "\n")) {
                char *f[4] = {};
                char *p = line;
                for (int i = 0; i < 4; i++) {
                        f[i] = p;
                        p = p ? strchr(p, '\t') : NULL;
                        if (p)
                                *p++ = 0;
                }
                if (!f[3]) {
                        losetup_entries_free(l, n);
                        return -EBADMSG;
                }
                if (grow((void **) &l, &n, sizeof(LosetupEntry)) < 0) {
                        losetup_entries_free(l, n);
                        return -ENOMEM;
                }
                l[n] = (LosetupEntry){
                        .node = strdup(f[0]),
                        .back_file = strdup(f[1]),
                        .offset = strtoull(f[2], NULL, 10),
                        .size_limit = strtoull(f[3], NULL, 10),
                };
                n++;
                if (!l[n - 1].node || !l[n - 1].back_file) {
                        losetup_entries_free(l, n);
                        return -ENOMEM;
                }
        }
        *ret = l;
        *ret_n = n;
        return 0;
}

int losetup_count_backed_by(const char *path, bool prefix, size_t *ret) {
        LosetupEntry *l;
        size_t n, count = 0, len = strlen(path);
        int r;

        r = losetup_list(&l, &n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                const char *b = l[i].back_file;
                if (prefix ? strncmp(b, path, len) == 0 && b[len] == '/' : streq(b, path))
                        count++;
                /* A deleted backing file is shown with this suffix. */
                else if (!prefix && strncmp(b, path, len) == 0 && streq(b + len, " (deleted)"))
                        count++;
        }
        losetup_entries_free(l, n);
        *ret = count;
        return 0;
}

/* --- Command lines --- */

/* Runs a NULL-terminated command line; returns its exit status, output in *ret_out/err. */
static int vrun(char **ret_out, char **ret_err, const char *arg0, va_list ap) {
        char *argv[32] = {(char *) arg0};
        size_t n = 1;
        for (const char *a; (a = va_arg(ap, const char *)) && n < ELEMENTSOF(argv) - 1;)
                argv[n++] = (char *) a;
        argv[n] = NULL;
        return run_command(argv, NULL, ret_out, ret_err);
}

int env_run(char **ret_out, char **ret_err, const char *arg0, ...) {
        va_list ap;
        va_start(ap, arg0);
        int r = vrun(ret_out, ret_err, arg0, ap);
        va_end(ap);
        return r;
}

/* The command must exit 0. */
void env_run_ok_impl(const char *file, int line, const char *arg0, ...) {
        _cleanup_free_ char *out = NULL, *err = NULL;
        va_list ap;
        va_start(ap, arg0);
        int r = vrun(&out, &err, arg0, ap);
        va_end(ap);
        if (r != 0) {
                print_error("%s:%d: %s exited with %d%s%s\nstdout: %s\nstderr: %s\n", file, line,
                            arg0, r, r < 0 ? ": " : "", r < 0 ? strerror(-r) : "", out ?: "",
                            err ?: "");
                _fail(file, line);
        }
}
