/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
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
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "polkit-util.h"

/* ------------------------------------------------------------------------------------------ */
/* Users */

int pk_ensure_user(const char *name, uid_t *ret_uid, gid_t *ret_gid) {
        struct passwd *pw = getpwnam(name);
        if (!pw) {
                char *argv[] = {(char *) "useradd",
                                (char *) "--system",
                                (char *) "--no-create-home",
                                (char *) "--shell",
                                (char *) "/usr/sbin/nologin",
                                (char *) name,
                                NULL};
                _cleanup_free_ char *err = NULL;
                int r = run_command(argv, NULL, NULL, &err);
                if (r != 0) {
                        print_error("useradd %s failed (%d): %s\n", name, r, err ?: "");
                        return r < 0 ? r : -EPROTO;
                }
                print_message("created the system user %s for this test (it stays)\n", name);
                pw = getpwnam(name);
                if (!pw)
                        return -ENOENT;
        }
        if (pw->pw_uid == 0) {
                print_error("user %s is root\n", name);
                return -EPERM;
        }
        *ret_uid = pw->pw_uid;
        *ret_gid = pw->pw_gid;
        return 0;
}

int pk_make_dir(const char *path, mode_t mode, uid_t uid, gid_t gid) {
        if (mkdir(path, mode) < 0)
                return -errno;
        /* mkdir() applies the umask. */
        if (chmod(path, mode) < 0 || chown(path, uid, gid) < 0)
                return -errno;
        return 0;
}

bool pk_process_gone(pid_t pid) {
        _cleanup_free_ char *path = NULL, *s = NULL;
        if (asprintf(&path, "/proc/%d/stat", (int) pid) < 0)
                return false;
        if (read_one_line_file(path, &s) < 0)
                return true;
        const char *p = strrchr(s, ')');
        return p && (p[2] == 'Z' || p[2] == 'X');
}

size_t pk_user_processes(const uid_t *uids, size_t n_uids) {
        _cleanup_(closedirp) DIR *d = NULL;
        size_t n = 0;

        d = opendir("/proc");
        if (!d)
                return 0;
        for (struct dirent *de; (de = readdir(d));) {
                struct stat st;
                if (de->d_name[0] < '1' || de->d_name[0] > '9')
                        continue;
                if (fstatat(dirfd(d), de->d_name, &st, 0) < 0)
                        continue;
                for (size_t i = 0; i < n_uids; i++)
                        if (uids[i] != 0 && st.st_uid == uids[i] &&
                            !pk_process_gone(atoi(de->d_name))) {
                                print_error("process %s of uid %u is still running\n", de->d_name,
                                            (unsigned) uids[i]);
                                n++;
                        }
        }
        return n;
}

/* ------------------------------------------------------------------------------------------ */
/* polkit */

const char *pk_verdict_name(PkVerdict v) {
        return v == PK_VERDICT_YES ? "yes" : v == PK_VERDICT_NO ? "no" : "challenge";
}

int pk_check(sd_bus *bus, const char *subject, const char *action, PkVerdict *ret,
             sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        int authorized, challenge, r;

        r = sd_bus_message_new_method_call(bus, &m, PK_POLKIT_NAME, PK_POLKIT_PATH,
                                           PK_POLKIT_INTERFACE, "CheckAuthorization");
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "(sa{sv})s", "system-bus-name", 1, "name", "s", subject,
                                  action);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "a{ss}us", 0, 0U, "");
        if (r < 0)
                return r;
        r = sd_bus_call(bus, m, 10 * USEC_PER_SEC, error, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
        if (r < 0)
                return r;
        *ret = authorized ? PK_VERDICT_YES : challenge ? PK_VERDICT_CHALLENGE : PK_VERDICT_NO;
        return 0;
}

int pk_await_verdict(sd_bus *bus, const char *subject, const char *action, PkVerdict want,
                     uint64_t timeout_usec, PkVerdict *ret_last) {
        uint64_t deadline = now_usec() + timeout_usec;
        for (;;) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                PkVerdict v = PK_VERDICT_NO;
                int r = pk_check(bus, subject, action, &v, &error);
                if (r >= 0 && ret_last)
                        *ret_last = v;
                if (r >= 0 && v == want)
                        return 0;
                if (now_usec() >= deadline) {
                        if (r < 0)
                                print_error("polkit CheckAuthorization(%s, %s): %s: %s\n", subject,
                                            action, error.name ?: strerror(-r),
                                            error.message ?: "");
                        return r < 0 ? r : -ETIMEDOUT;
                }
                sleep_usec(50 * USEC_PER_MSEC);
        }
}

static char *rules_tmp_path(const char *path) {
        const char *slash = strrchr(path, '/');
        char *tmp = NULL;
        if (!slash)
                return NULL;
        if (asprintf(&tmp, "%.*s/.%s.tmp", (int) (slash - path), path, slash + 1) < 0)
                return NULL;
        return tmp;
}

int pk_rules_write(const char *path, const char *text) {
        _cleanup_free_ char *tmp = rules_tmp_path(path);
        _cleanup_close_ int fd = -EBADF;
        size_t n = strlen(text);

        if (!tmp)
                return -ENOMEM;
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        if (write(fd, text, n) != (ssize_t) n || fsync(fd) < 0 || fchmod(fd, 0644) < 0) {
                int r = -errno;
                (void) unlink(tmp);
                return r;
        }
        if (rename(tmp, path) < 0) {
                int r = -errno;
                (void) unlink(tmp);
                return r;
        }
        return 0;
}

void pk_rules_remove(const char *path) {
        _cleanup_free_ char *tmp = rules_tmp_path(path);
        if (tmp)
                (void) unlink(tmp);
        if (unlink(path) < 0 && errno != ENOENT)
                print_error("cannot remove %s: %s\n", path, strerror(errno));
}

int pk_lock(const char *path, uint64_t timeout_usec, int *ret_fd) {
        _cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        uint64_t deadline = now_usec() + timeout_usec;
        bool said = false;
        while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                if (errno != EWOULDBLOCK)
                        return -errno;
                if (!said) {
                        print_message("waiting for another run holding %s\n", path);
                        said = true;
                }
                if (now_usec() >= deadline) {
                        print_error("%s has been held for %u s\n", path,
                                    (unsigned) (timeout_usec / USEC_PER_SEC));
                        return -ETIMEDOUT;
                }
                sleep_usec(200 * USEC_PER_MSEC);
        }
        *ret_fd = TAKE_FD(fd);
        return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The agent (child side) */

/* Truncating copy (the reply fields are fixed-size). */
static void copy_string(char *dst, size_t size, const char *src) {
        size_t n = src ? strnlen(src, size - 1) : 0;
        if (n > 0)
                memcpy(dst, src, n);
        dst[n] = 0;
}

/* Appends one value; an 'h' is opened here, as the user, and closed by the caller via *fds. */
static int append_value(sd_bus_message *m, const PkValue *v, int *fd, PkReply *p) {
        switch (v->type) {
        case 'b': {
                int b = v->number != 0;
                return sd_bus_message_append_basic(m, 'b', &b);
        }
        case 'y': {
                uint8_t x = (uint8_t) v->number;
                return sd_bus_message_append_basic(m, 'y', &x);
        }
        case 'q': {
                uint16_t x = (uint16_t) v->number;
                return sd_bus_message_append_basic(m, 'q', &x);
        }
        case 'u':
        case 'i': {
                uint32_t x = (uint32_t) v->number;
                return sd_bus_message_append_basic(m, v->type, &x);
        }
        case 't':
        case 'x':
                return sd_bus_message_append_basic(m, v->type, &v->number);
        case 's':
        case 'o':
        case 'g':
                return sd_bus_message_append_basic(m, v->type, v->string);
        case 'h':
                /* As the user: exactly what that user could hand the daemon. */
                *fd = open(v->string, (int) v->number | O_CLOEXEC);
                if (*fd < 0) {
                        p->open_errno = errno;
                        return -errno;
                }
                return sd_bus_message_append_basic(m, 'h', fd);
        default:
                return -EINVAL;
        }
}

/* The agent's copy of the first fd of the last reply, which goes to the test process with the
 * answer (SCM_RIGHTS). */
static int agent_reply_fd = -EBADF;

static int read_reply_values(sd_bus_message *reply, PkReply *p) {
        for (;;) {
                const char *contents;
                char type;
                int r = sd_bus_message_peek_type(reply, &type, &contents);
                if (r < 0)
                        return r;
                if (r == 0)
                        return 0;
                PkValue *v = p->n_values < PK_MAX_VALUES ? &p->values[p->n_values++] : NULL;
                if (v)
                        v->type = type;
                if (v && type == 'h') {
                        int fd = -EBADF;
                        r = sd_bus_message_read_basic(reply, 'h', &fd);
                        if (r < 0)
                                return r;
                        if (agent_reply_fd < 0) {
                                agent_reply_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                                if (agent_reply_fd < 0)
                                        return -errno;
                                p->has_fd = true;
                        }
                        v->number = (uint64_t) fcntl(fd, F_GETFL);
                        continue;
                }
                if (!v || type == 'a' || type == 'v' || type == 'r' || type == 'e' || type == 'd' ||
                    type == 'h') {
                        char sig[2] = {type, 0};
                        r = sd_bus_message_skip(reply, type == 'a' || type == 'v' || type == 'r' ||
                                                                       type == 'e'
                                                               ? NULL
                                                               : sig);
                        if (r < 0)
                                return r;
                        continue;
                }
                union {
                        uint8_t y;
                        uint16_t q;
                        uint32_t u;
                        int b;
                        uint64_t t;
                        const char *s;
                } x = {};
                r = sd_bus_message_read_basic(reply, type, &x);
                if (r < 0)
                        return r;
                switch (type) {
                case 'y':
                        v->number = x.y;
                        break;
                case 'q':
                        v->number = x.q;
                        break;
                case 'u':
                case 'i':
                        v->number = x.u;
                        break;
                case 'b':
                        v->number = x.b != 0;
                        break;
                case 't':
                case 'x':
                        v->number = x.t;
                        break;
                default:
                        copy_string(v->string, sizeof(v->string), x.s);
                }
        }
}

static void agent_call_method(sd_bus *bus, const PkRequest *q, PkReply *p) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        int fds[PK_MAX_ARGS + PK_MAX_OPTIONS];
        int r;

        for (unsigned i = 0; i < ELEMENTSOF(fds); i++)
                fds[i] = -EBADF;

        r = sd_bus_message_new_method_call(bus, &m, q->destination[0] ? q->destination : NULL,
                                           q->path, q->interface[0] ? q->interface : NULL,
                                           q->member);
        if (r >= 0)
                r = sd_bus_message_set_allow_interactive_authorization(m, q->interactive);
        for (unsigned i = 0; r >= 0 && i < q->n_args && i < PK_MAX_ARGS; i++)
                r = append_value(m, &q->args[i], &fds[i], p);
        if (r >= 0 && q->with_options) {
                r = sd_bus_message_open_container(m, 'a', "{sv}");
                for (unsigned i = 0; r >= 0 && i < q->n_options && i < PK_MAX_OPTIONS; i++) {
                        const PkOption *o = &q->options[i];
                        char sig[2] = {o->value.type, 0};
                        r = sd_bus_message_open_container(m, 'e', "sv");
                        if (r >= 0)
                                r = sd_bus_message_append_basic(m, 's', o->key);
                        if (r >= 0)
                                r = sd_bus_message_open_container(m, 'v', sig);
                        if (r >= 0)
                                r = append_value(m, &o->value, &fds[PK_MAX_ARGS + i], p);
                        if (r >= 0)
                                r = sd_bus_message_close_container(m);
                        if (r >= 0)
                                r = sd_bus_message_close_container(m);
                }
                if (r >= 0)
                        r = sd_bus_message_close_container(m);
        }
        if (r < 0) {
                p->r = r;
                goto finish;
        }

        p->called = true;
        r = sd_bus_call(bus, m, (uint64_t) (q->timeout_msec > 0 ? q->timeout_msec : 45000) * 1000,
                        &error, &reply);
        if (r < 0) {
                p->r = r;
                copy_string(p->error_name, sizeof(p->error_name), error.name);
                copy_string(p->error_message, sizeof(p->error_message), error.message);
                goto finish;
        }
        r = read_reply_values(reply, p);
        if (r < 0) {
                p->r = r;
                copy_string(p->error_name, sizeof(p->error_name), "(malformed reply)");
        }
finish:
        for (unsigned i = 0; i < ELEMENTSOF(fds); i++)
                safe_close(fds[i]);
}

static void agent_read_file(const PkRequest *q, PkReply *p) {
        _cleanup_close_ int fd = -EBADF;
        if (q->n_args < 1) {
                p->r = -EINVAL;
                return;
        }
        fd = open(q->args[0].string, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                p->open_errno = errno;
                p->r = -errno;
                return;
        }
        while (p->size < PK_DATA_MAX) {
                ssize_t n = read(fd, p->data + p->size, PK_DATA_MAX - p->size);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        p->r = -errno;
                        return;
                }
                if (n == 0)
                        break;
                p->size += (size_t) n;
        }
        p->data[p->size] = 0;
}

static void agent_exec(const PkRequest *q, PkReply *p) {
        char *argv[PK_MAX_ARGS + 1];
        _cleanup_free_ char *out = NULL, *err = NULL;

        if (q->n_args < 1 || q->n_args > PK_MAX_ARGS) {
                p->r = -EINVAL;
                return;
        }
        for (unsigned i = 0; i < q->n_args; i++)
                argv[i] = (char *) q->args[i].string;
        argv[q->n_args] = NULL;
        int r = run_command(argv, NULL, &out, &err);
        if (r < 0) {
                p->r = r;
                return;
        }
        p->status = r;
        p->size = out ? strlen(out) : 0;
        if (p->size > PK_DATA_MAX)
                p->size = PK_DATA_MAX;
        if (out)
                memcpy(p->data, out, p->size);
        p->data[p->size] = 0;
        copy_string(p->error_message, sizeof(p->error_message), err);
}

/* send(), with fd (when >= 0) as SCM_RIGHTS. */
static ssize_t send_with_fd(int sock, const void *buf, size_t size, int fd) {
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int))];
        } control = {};
        struct iovec iov = {.iov_base = (void *) buf, .iov_len = size};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

        if (fd >= 0) {
                mh.msg_control = &control;
                mh.msg_controllen = sizeof(control);
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(c), &fd, sizeof(int));
        }
        return sendmsg(sock, &mh, MSG_NOSIGNAL);
}

static _Noreturn void agent_main(int fd, pid_t parent, uid_t uid, gid_t gid) {
        static PkReply hello, p;
        static PkRequest q;
        sd_bus *bus = NULL;
        int r;

        /* Nothing of the test process but the socket: the parent's bus connection and held
         * device nodes must not be used, or kept open, by another user. */
        if (dup2(fd, 3) < 0)
                _exit(2);
        fd = 3;
        if (close_range(4, ~0U, 0) < 0)
                _exit(2);

        if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
                _exit(3);
        /* Nor its working directory, the build tree, which the user may not be able to reach. */
        if (chdir("/") < 0)
                _exit(3);
        /* The parent-death signal is reset by the change of credentials, so set it now. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
                _exit(4);

        hello.uid = geteuid();
        if (getuid() != uid || getegid() != gid || getgid() != gid)
                hello.r = -EPERM;
        else {
                r = sd_bus_open_system(&bus);
                if (r >= 0) {
                        const char *name;
                        r = sd_bus_get_unique_name(bus, &name);
                        if (r >= 0)
                                copy_string(hello.unique_name, sizeof(hello.unique_name), name);
                }
                hello.r = r < 0 ? r : 0;
        }
        if (send(fd, &hello, sizeof(hello), MSG_NOSIGNAL) != sizeof(hello) || hello.r < 0)
                _exit(5);

        for (;;) {
                ssize_t n = recv(fd, &q, sizeof(q), 0);
                if (n == 0)
                        break;
                if (n != sizeof(q))
                        _exit(6);
                memset(&p, 0, sizeof(p));
                switch (q.op) {
                case PK_OP_CALL:
                        agent_call_method(bus, &q, &p);
                        break;
                case PK_OP_READ_FILE:
                        agent_read_file(&q, &p);
                        break;
                case PK_OP_EXEC:
                        agent_exec(&q, &p);
                        break;
                default:
                        p.r = -EINVAL;
                }
                if (send_with_fd(fd, &p, sizeof(p), agent_reply_fd) != sizeof(p))
                        _exit(7);
                agent_reply_fd = safe_close(agent_reply_fd);
        }
        sd_bus_flush_close_unref(bus);
        _exit(0);
}

/* ------------------------------------------------------------------------------------------ */
/* The agent (parent side) */

/* One message; an fd that came with it goes to *ret_fd (-EBADF when none), or is closed when
 * ret_fd is NULL. */
static int recv_timeout(int fd, void *buf, size_t size, int timeout_msec, int *ret_fd) {
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int))];
        } control = {};
        struct iovec iov = {.iov_base = buf, .iov_len = size};
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = &control,
                .msg_controllen = sizeof(control),
        };
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int passed = -EBADF;

        if (ret_fd)
                *ret_fd = -EBADF;
        int r = poll(&pfd, 1, timeout_msec);
        if (r < 0)
                return -errno;
        if (r == 0)
                return -ETIMEDOUT;
        ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
                return -errno;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
                    c->cmsg_len == CMSG_LEN(sizeof(int)))
                        memcpy(&passed, CMSG_DATA(c), sizeof(int));
        if (ret_fd)
                *ret_fd = passed;
        else
                safe_close(passed);
        if (n == 0)
                return -ECONNRESET;
        if ((size_t) n != size)
                return -EBADMSG;
        return 0;
}

void pk_agent_stop(PkAgent *a) {
        int status;

        a->fd = safe_close(a->fd);
        if (a->pid > 0) {
                /* EOF makes it exit; a stuck call gets SIGKILL after 5 s. */
                uint64_t deadline = now_usec() + 5 * USEC_PER_SEC;
                for (;;) {
                        pid_t w = waitpid(a->pid, &status, WNOHANG);
                        if (w == a->pid || (w < 0 && errno != EINTR))
                                break;
                        if (now_usec() >= deadline) {
                                print_error("agent %d did not exit, killing it\n", (int) a->pid);
                                (void) kill(a->pid, SIGKILL);
                                (void) waitpid(a->pid, &status, 0);
                                break;
                        }
                        sleep_usec(10 * USEC_PER_MSEC);
                }
        }
        a->pid = 0;
        free(a->unique_name);
        a->unique_name = NULL;
}

int pk_agent_start(PkAgent *a, uid_t uid, gid_t gid) {
        static PkReply hello;
        int pair[2];
        int r;

        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
                return -errno;
        /* Requests and replies are single messages of some KiB each. */
        int size = 4 * (int) sizeof(PkReply);
        for (unsigned i = 0; i < 2; i++) {
                (void) setsockopt(pair[i], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
                (void) setsockopt(pair[i], SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
        }
        pid_t parent = getpid();
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
                r = -errno;
                safe_close(pair[0]);
                safe_close(pair[1]);
                return r;
        }
        if (pid == 0)
                agent_main(pair[1], parent, uid, gid);
        safe_close(pair[1]);
        *a = (PkAgent){.pid = pid, .fd = pair[0], .uid = uid};

        r = recv_timeout(a->fd, &hello, sizeof(hello), 15 * 1000, NULL);
        if (r < 0) {
                pk_agent_stop(a);
                print_error("the agent for uid %u did not start: %s\n", (unsigned) uid,
                            strerror(-r));
                return r;
        }
        if (hello.r < 0 || hello.uid != uid) {
                print_error("the agent for uid %u cannot use the bus %s: %s (euid %u); is the "
                            "socket reachable by that user?\n",
                            (unsigned) uid, getenv("DBUS_SYSTEM_BUS_ADDRESS"), strerror(-hello.r),
                            (unsigned) hello.uid);
                pk_agent_stop(a);
                return hello.r < 0 ? hello.r : -EPERM;
        }
        a->unique_name = strdup(hello.unique_name);
        if (!a->unique_name) {
                pk_agent_stop(a);
                return -ENOMEM;
        }
        return 0;
}

int pk_agent_send(PkAgent *a, const PkRequest *q) {
        if (a->fd < 0)
                return -ENOTCONN;
        if (send(a->fd, q, sizeof(*q), MSG_NOSIGNAL) != sizeof(*q))
                return -errno;
        return 0;
}

static int agent_receive(PkAgent *a, PkReply *ret, int timeout_msec, int *ret_fd) {
        if (ret_fd)
                *ret_fd = -EBADF;
        if (a->fd < 0)
                return -ENOTCONN;
        memset(ret, 0, sizeof(*ret));
        return recv_timeout(a->fd, ret, sizeof(*ret), timeout_msec > 0 ? timeout_msec : 60000,
                            ret_fd);
}

int pk_agent_receive(PkAgent *a, PkReply *ret, int timeout_msec) {
        return agent_receive(a, ret, timeout_msec, NULL);
}

int pk_agent_call_fd(PkAgent *a, const PkRequest *q, PkReply *ret, int timeout_msec, int *ret_fd) {
        int r = pk_agent_send(a, q);

        if (r < 0) {
                if (ret_fd)
                        *ret_fd = -EBADF;
                return r;
        }
        return agent_receive(a, ret, timeout_msec, ret_fd);
}

int pk_agent_call(PkAgent *a, const PkRequest *q, PkReply *ret, int timeout_msec) {
        return pk_agent_call_fd(a, q, ret, timeout_msec, NULL);
}

void pk_request_call(PkRequest *q, const char *path, const char *interface, const char *member) {
        memset(q, 0, sizeof(*q));
        q->op = PK_OP_CALL;
        copy_string(q->destination, sizeof(q->destination), LOOPMGR_BUS_NAME);
        copy_string(q->path, sizeof(q->path), path);
        copy_string(q->interface, sizeof(q->interface), interface);
        copy_string(q->member, sizeof(q->member), member);
        q->with_options = true;
}

int pk_request_arg(PkRequest *q, char type, uint64_t number, const char *string) {
        if (q->n_args >= PK_MAX_ARGS)
                return -E2BIG;
        PkValue *v = &q->args[q->n_args++];
        *v = (PkValue){.type = type, .number = number};
        copy_string(v->string, sizeof(v->string), string);
        return 0;
}

int pk_request_options_va(PkRequest *q, unsigned n, va_list ap) {
        for (unsigned i = 0; i < n; i++) {
                if (q->n_options >= PK_MAX_OPTIONS)
                        return -E2BIG;
                PkOption *o = &q->options[q->n_options++];
                const char *key = va_arg(ap, const char *);
                const char *sig = va_arg(ap, const char *);

                *o = (PkOption){};
                copy_string(o->key, sizeof(o->key), key);
                o->value.type = sig[0];
                switch (sig[0]) {
                case 't':
                        o->value.number = va_arg(ap, uint64_t);
                        break;
                case 'u':
                        o->value.number = va_arg(ap, unsigned);
                        break;
                case 'i':
                        o->value.number = (uint32_t) va_arg(ap, int);
                        break;
                case 'b':
                        o->value.number = va_arg(ap, int) != 0;
                        break;
                case 's':
                case 'o':
                        copy_string(o->value.string, sizeof(o->value.string),
                                    va_arg(ap, const char *));
                        break;
                default:
                        return -EINVAL;
                }
        }
        return 0;
}

int pk_request_options(PkRequest *q, unsigned n, ...) {
        va_list ap;
        va_start(ap, n);
        int r = pk_request_options_va(q, n, ap);
        va_end(ap);
        return r;
}

const char *pk_reply_error(const PkReply *p) {
        static char buf[sizeof(p->error_name) + sizeof(p->error_message) + 64];
        if (p->open_errno)
                snprintf(buf, sizeof(buf), "open() as the user: %s", strerror(p->open_errno));
        else if (p->error_name[0])
                snprintf(buf, sizeof(buf), "%s: %s", p->error_name,
                         p->error_message[0] ? p->error_message : "(no message)");
        else
                snprintf(buf, sizeof(buf), "%s", strerror(-p->r));
        return buf;
}

const PkValue *pk_reply_value(const PkReply *p, unsigned i, char type) {
        if (i >= p->n_values || p->values[i].type != type)
                return NULL;
        return &p->values[i];
}

void pk_expect_ok_impl(const PkReply *p, const char *what, const char *file, int line) {
        if (p->r >= 0)
                return;
        print_error("%s:%d: %s failed: %s\n", file, line, what, pk_reply_error(p));
        _fail(file, line);
}

void pk_expect_error_impl(const PkReply *p, const char *name, const char *what, const char *file,
                          int line) {
        if (p->r >= 0) {
                print_error("%s:%d: %s: expected %s, got success\n", file, line, what, name);
                _fail(file, line);
        }
        if (!p->called || strcmp(p->error_name, name) != 0) {
                print_error("%s:%d: %s: expected %s, got %s\n", file, line, what, name,
                            pk_reply_error(p));
                _fail(file, line);
        }
        if (!p->error_message[0]) {
                print_error("%s:%d: %s: error %s carries no message\n", file, line, what, name);
                _fail(file, line);
        }
        /* The log shows what a user would read. */
        print_message("  %s: %s: %s\n", what, strrchr(p->error_name, '.') + 1, p->error_message);
}
