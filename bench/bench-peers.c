/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * bench-peers: loopmgrd side by side with its peers, in one run (bench/run.sh sets up the
 * bus, loopmgrd, udisksd and a scratch directory, then runs this; docs/PERFORMANCE.md
 * describes the method).
 *
 *   latency      sequential attach + detach cycles, every peer once per iteration in rotated
 *                order: loopmgr and udisks2 from an in-process sd-bus client, loopmgrctl,
 *                udisksctl, losetup, and losetup followed by udevadm settle (scenario 1)
 *   overhead     Manager.Attach(wait-udev=false) against LOOP_CTL_GET_FREE + LOOP_CONFIGURE
 *                done in this process, alternated (scenario 2)
 *   concurrency  --clients threads, each with its own bus connection and its own image,
 *                attaching and detaching at once; throughput, p99 and errors (scenario 3)
 *   mount        another client's calls while a Mount of a slow image runs, loopmgrd and
 *                udisks2 (scenario 6, bench-mount.c; the shared parts: bench-peers.h)
 *
 * Every device any peer makes is appended to --record ("node diskseq") as soon as this
 * program knows it, so bench/run.sh can take it down whatever happens; every cycle detaches
 * what it attached.
 *
 * Output: markdown tables (--markdown) and "key value" lines (--metrics) from which
 * bench/report.sh computes the targets and draws the plots.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/loop.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "loopmgr-bus.h"

#include "bench/bench-peers.h"

const char *errstr(int r) {
        const char *s = strerrordesc_np(r < 0 ? -r : r);

        return s ?: "unknown error";
}

_noreturn_ void oom(void) {
        fputs("bench-peers: out of memory\n", stderr);
        exit(EXIT_FAILURE);
}

_printf_(1, 2) char *strdup_printf(const char *fmt, ...) {
        va_list ap;
        char *s;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (r < 0)
                oom();
        return s;
}

/* ---- samples ----------------------------------------------------------------------------- */

void series_add(Series *s, double usec) {
        if (s->n == s->n_alloc) {
                size_t n = s->n_alloc ? s->n_alloc * 2 : 64;
                double *v = realloc(s->v, n * sizeof(double));

                if (!v)
                        oom();
                s->v = v;
                s->n_alloc = n;
        }
        s->v[s->n++] = usec;
}

static void series_merge(Series *into, const Series *from) {
        for (size_t i = 0; i < from->n; i++)
                series_add(into, from->v[i]);
}

Stats series_stats(Series *s) {
        if (s->n == 0)
                return (Stats){};
        qsort(s->v, s->n, sizeof(double), cmp_double);
        return (Stats){
                .n = s->n,
                .median = quantile(s->v, s->n, 0.5) / 1e3,
                .p90 = quantile(s->v, s->n, 0.9) / 1e3,
                .p99 = quantile(s->v, s->n, 0.99) / 1e3,
                .max = s->v[s->n - 1] / 1e3,
        };
}

/* ---- the run ----------------------------------------------------------------------------- */

void handle_done(Handle *h) {
        free(h->node);
        free(h->object);
        h->fd = safe_close(h->fd);
        *h = (Handle){.fd = -EBADF};
}

_printf_(2, 3) void metric(Bench *b, const char *fmt, ...) {
        va_list ap;

        if (!b->metrics)
                return;
        va_start(ap, fmt);
        vfprintf(b->metrics, fmt, ap);
        va_end(ap);
        fputc('\n', b->metrics);
        fflush(b->metrics);
}

int read_diskseq(const char *node, uint64_t *ret) {
        char path[128];
        unsigned long long v;
        FILE *f;
        int n;

        if (strncmp(node, "/dev/", 5) != 0)
                return -EINVAL;
        snprintf(path, sizeof(path), "/sys/block/%s/diskseq", node + 5);
        f = fopen(path, "re");
        if (!f)
                return -errno;
        n = fscanf(f, "%llu", &v);
        fclose(f);
        if (n != 1)
                return -EBADMSG;
        *ret = v;
        return 0;
}

bool still_bound(const char *node, uint64_t diskseq) {
        char path[128];
        uint64_t now;

        snprintf(path, sizeof(path), "/sys/block/%s/loop", node + 5);
        if (access(path, F_OK) < 0)
                return false;
        return read_diskseq(node, &now) >= 0 && now == diskseq;
}

int record_device(Bench *b, Handle *h, char **ret_error) {
        int r;

        if (h->diskseq == 0) {
                r = read_diskseq(h->node, &h->diskseq);
                if (r < 0) {
                        *ret_error = strdup_printf("cannot read the diskseq of %s: %s", h->node,
                                                   errstr(r));
                        return r;
                }
        }
        pthread_mutex_lock(&b->lock);
        if (b->record) {
                fprintf(b->record, "%s %" PRIu64 "\n", h->node, h->diskseq);
                fflush(b->record);
        }
        pthread_mutex_unlock(&b->lock);
        return 0;
}

/* Waits (untimed by the callers that use it) until the kernel binding is really gone. */
int wait_gone(const Handle *h) {
        double deadline = now_usec() + TEARDOWN_WAIT_USEC;

        while (still_bound(h->node, h->diskseq)) {
                if (now_usec() > deadline)
                        return -ETIMEDOUT;
                (void) usleep(200);
        }
        return 0;
}

extern char **environ;

int run_capture(char *const argv[], char **ret_output) {
        posix_spawn_file_actions_t fa;
        char buf[4096];
        size_t len = 0;
        int pipefd[2], status, r;
        pid_t pid;
        ssize_t k;

        if (pipe2(pipefd, O_CLOEXEC) < 0)
                return -errno;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDERR_FILENO);
        r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        safe_close(pipefd[1]);
        if (r != 0) {
                safe_close(pipefd[0]);
                return -r;
        }
        while ((k = read(pipefd[0], buf + len, sizeof(buf) - 1 - len)) != 0) {
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                len += (size_t) k;
                if (len >= sizeof(buf) - 1)
                        len = 0; /* keep reading (and discard) until EOF */
        }
        buf[len] = 0;
        safe_close(pipefd[0]);
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        if (ret_output)
                *ret_output = strdup_printf("%s", buf);
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EPROTO;
}

static int run_tool(char *const argv[], char **ret_node, char **ret_error) {
        _cleanup_free_ char *out = NULL;
        const char *p;
        size_t n;
        int r;

        r = run_capture(argv, &out);
        if (r == -EPROTO) {
                for (char *c = out; c && *c; c++)
                        if (*c == '\n')
                                *c = ' ';
                *ret_error = strdup_printf("%s failed: %s", argv[0], out ?: "");
                return r;
        }
        if (r < 0) {
                *ret_error = strdup_printf("cannot run %s: %s", argv[0], errstr(r));
                return r;
        }
        if (!ret_node)
                return 0;
        /* losetup --show and loopmgrctl print the node; udisksctl says "... as /dev/loopN." */
        p = out ? strstr(out, "/dev/loop") : NULL;
        if (!p) {
                *ret_error = strdup_printf("%s printed no /dev/loopN: %s", argv[0], out ?: "");
                return -EBADMSG;
        }
        n = strlen("/dev/loop");
        while (p[n] >= '0' && p[n] <= '9')
                n++;
        *ret_node = strndup(p, n);
        if (!*ret_node)
                oom();
        return 0;
}

static void settle(void) {
        char *argv[] = {(char *) "udevadm", (char *) "settle", (char *) "--timeout=60", NULL};

        if (run_capture(argv, NULL) < 0)
                fputs("bench-peers: warning: udevadm settle failed\n", stderr);
}

/* ---- CPU accounting ---------------------------------------------------------------------- */

/* On-CPU and runnable-waiting nanoseconds of every thread of pid (schedstat). */
static int pid_schedstat(pid_t pid, uint64_t *ret_run, uint64_t *ret_wait) {
        uint64_t run = 0, wait = 0;
        char path[64];
        struct dirent *de;
        bool any = false;
        DIR *d;

        snprintf(path, sizeof(path), "/proc/%d/task", (int) pid);
        d = opendir(path);
        if (!d)
                return -errno;
        while ((de = readdir(d))) {
                char file[sizeof(de->d_name) + sizeof("/schedstat")];
                unsigned long long a, w;
                FILE *f;
                int fd, n;

                if (de->d_name[0] == '.')
                        continue;
                snprintf(file, sizeof(file), "%s/schedstat", de->d_name);
                fd = openat(dirfd(d), file, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        continue;
                f = fdopen(fd, "re");
                if (!f) {
                        safe_close(fd);
                        continue;
                }
                n = fscanf(f, "%llu %llu", &a, &w);
                fclose(f);
                if (n != 2)
                        continue;
                run += a;
                wait += w;
                any = true;
        }
        closedir(d);
        if (!any)
                return -ENOENT;
        *ret_run = run;
        *ret_wait = wait;
        return 0;
}

#define MAX_UDEV_PROCS 256

/* On-CPU nanoseconds of each systemd-udevd process (the manager and its workers), host-wide. */
typedef struct UdevCpu {
        pid_t pid[MAX_UDEV_PROCS];
        uint64_t run[MAX_UDEV_PROCS];
        size_t n;
} UdevCpu;

static void udev_cpu(UdevCpu *ret) {
        struct dirent *de;
        DIR *d = opendir("/proc");

        ret->n = 0;
        if (!d)
                return;
        while ((de = readdir(d))) {
                char path[sizeof(de->d_name) + 16], comm[32] = "";
                uint64_t run, wait;
                FILE *f;

                if (de->d_name[0] < '0' || de->d_name[0] > '9')
                        continue;
                snprintf(path, sizeof(path), "/proc/%s/comm", de->d_name);
                f = fopen(path, "re");
                if (!f)
                        continue;
                if (!fgets(comm, sizeof(comm), f))
                        comm[0] = 0;
                fclose(f);
                comm[strcspn(comm, "\n")] = 0;
                if (strcmp(comm, "systemd-udevd") != 0 && strcmp(comm, "(udev-worker)") != 0)
                        continue;
                if (ret->n < MAX_UDEV_PROCS && pid_schedstat(atoi(de->d_name), &run, &wait) >= 0) {
                        ret->pid[ret->n] = atoi(de->d_name);
                        ret->run[ret->n++] = run;
                }
        }
        closedir(d);
}

/* What udev spent between two snapshots: a worker that started in between counts whole, one
 * that exited in between is lost (udevd keeps its workers for a few seconds of idleness). */
static uint64_t udev_cpu_delta(const UdevCpu *a, const UdevCpu *b) {
        uint64_t sum = 0;

        for (size_t i = 0; i < b->n; i++) {
                uint64_t before = 0;

                for (size_t j = 0; j < a->n; j++)
                        if (a->pid[j] == b->pid[i]) {
                                before = a->run[j];
                                break;
                        }
                if (b->run[i] >= before)
                        sum += b->run[i] - before;
        }
        return sum;
}

static uint64_t rusage_ns(int who) {
        struct rusage ru;

        if (getrusage(who, &ru) < 0)
                return 0;
        return ((uint64_t) ru.ru_utime.tv_sec + (uint64_t) ru.ru_stime.tv_sec) *
                       UINT64_C(1000000000) +
               ((uint64_t) ru.ru_utime.tv_usec + (uint64_t) ru.ru_stime.tv_usec) * UINT64_C(1000);
}

/* This process (its threads, also those that ended) and its waited-for children (the CLI
 * tools). */
static uint64_t client_cpu_ns(void) {
        return rusage_ns(RUSAGE_SELF) + rusage_ns(RUSAGE_CHILDREN);
}

/* CPU spent, in nanoseconds, by each party of a cycle. */
typedef struct Cpu {
        /* other: the daemons that did not serve the peer but react to its devices' uevents
         * all the same (udisksd to loopmgrd's devices and the other way round). */
        uint64_t daemon, daemon_wait, udev, bus, client, other;
        UdevCpu udev_procs; /* snapshots only */
} Cpu;

static void cpu_snapshot(pid_t daemon, const pid_t others[2], pid_t bus, bool with_client,
                         Cpu *ret) {
        uint64_t run = 0, wait = 0;

        ret->daemon = ret->daemon_wait = ret->bus = ret->client = ret->other = 0;
        for (size_t i = 0; others && i < 2; i++)
                if (others[i] > 0 && others[i] != daemon &&
                    pid_schedstat(others[i], &run, &wait) >= 0)
                        ret->other += run;
        if (daemon > 0 && pid_schedstat(daemon, &run, &wait) >= 0) {
                ret->daemon = run;
                ret->daemon_wait = wait;
        }
        if (bus > 0 && pid_schedstat(bus, &run, &wait) >= 0)
                ret->bus = run;
        udev_cpu(&ret->udev_procs);
        if (with_client)
                ret->client = client_cpu_ns();
}

char *bus_error_string(const sd_bus_error *e, int r) {
        if (e && sd_bus_error_is_set(e))
                return strdup_printf("%s: %s", e->name, e->message ?: "(no message)");
        return strdup_printf("%s", errstr(r));
}

/* ---- peers ------------------------------------------------------------------------------- */

typedef struct Peer {
        const char *key, *label;
        int (*attach)(Client *c, Handle *h, char **ret_error);
        int (*detach)(Client *c, Handle *h, char **ret_error);
        bool udisks;
        bool loopmgr; /* the daemon whose CPU is counted: loopmgrd, else udisksd if udisks */
} Peer;

static pid_t peer_daemon(const Bench *b, const Peer *p) {
        return p->loopmgr ? b->loopmgrd_pid : p->udisks ? b->udisksd_pid : 0;
}

static int open_image(const char *file, int flags, char **ret_error) {
        int fd = open(file, flags | O_CLOEXEC | O_NOCTTY);

        if (fd < 0) {
                *ret_error = strdup_printf("cannot open %s: %m", file);
                return -errno;
        }
        return fd;
}

int loopmgr_attach_file(Client *c, Handle *h, const char *file, bool read_only, bool wait_udev,
                        char **ret_error) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *path, *node;
        uint64_t diskseq;
        int reused, r;

        fd = open_image(file, read_only ? O_RDONLY : O_RDWR, ret_error);
        if (fd < 0)
                return fd;
        r = sd_bus_message_new_method_call(c->bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Attach");
        /* read-only only when asked for: the other scenarios send what they always sent */
        if (r >= 0 && read_only)
                r = sd_bus_message_append(m, "ha{sv}", fd, 2, LOOPMGR_OPT_WAIT_UDEV, "b",
                                          (int) wait_udev, LOOPMGR_OPT_READ_ONLY, "b", 1);
        else if (r >= 0)
                r = sd_bus_message_append(m, "ha{sv}", fd, 1, LOOPMGR_OPT_WAIT_UDEV, "b",
                                          (int) wait_udev);
        if (r < 0) {
                *ret_error = strdup_printf("cannot build Attach: %s", errstr(r));
                return r;
        }
        r = sd_bus_call(c->bus, m, BUS_TIMEOUT_USEC, &e, &reply);
        if (r < 0) {
                *ret_error = bus_error_string(&e, r);
                return r;
        }
        r = sd_bus_message_read(reply, "ostb", &path, &node, &diskseq, &reused);
        if (r < 0) {
                *ret_error = strdup_printf("cannot parse the Attach reply: %s", errstr(r));
                return r;
        }
        h->node = strdup(node);
        h->object = strdup(path);
        if (!h->node || !h->object)
                oom();
        h->diskseq = diskseq;
        return record_device(c->b, h, ret_error);
}

int loopmgr_attach_udev(Client *c, Handle *h, char **ret_error) {
        return loopmgr_attach_file(c, h, c->file, false, true, ret_error);
}

static int loopmgr_attach_nowait(Client *c, Handle *h, char **ret_error) {
        return loopmgr_attach_file(c, h, c->file, false, false, ret_error);
}

int loopmgr_detach(Client *c, Handle *h, char **ret_error) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *state;
        int r;

        r = sd_bus_message_new_method_call(c->bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Detach");
        if (r >= 0)
                r = sd_bus_message_append(m, "oa{sv}", h->object, 2, LOOPMGR_OPT_WAIT, "b", 1,
                                          LOOPMGR_OPT_TIMEOUT_USEC, "t",
                                          (uint64_t) DETACH_TIMEOUT_USEC);
        if (r < 0) {
                *ret_error = strdup_printf("cannot build Detach: %s", errstr(r));
                return r;
        }
        r = sd_bus_call(c->bus, m, BUS_TIMEOUT_USEC, &e, &reply);
        if (r < 0) {
                *ret_error = bus_error_string(&e, r);
                return r;
        }
        r = sd_bus_message_read(reply, "s", &state);
        if (r < 0) {
                *ret_error = strdup_printf("cannot parse the Detach reply: %s", errstr(r));
                return r;
        }
        if (strcmp(state, LOOPMGR_STATE_DETACHED) != 0) {
                *ret_error = strdup_printf("Detach(wait=true) of %s returned '%s'", h->node, state);
                return -EBUSY;
        }
        return 0;
}

int udisks_attach_file(Client *c, Handle *h, const char *file, bool read_only, char **ret_error) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *path;
        int r;

        fd = open_image(file, read_only ? O_RDONLY : O_RDWR, ret_error);
        if (fd < 0)
                return fd;
        if (read_only)
                r = sd_bus_call_method(c->bus, UDISKS_BUS_NAME, UDISKS_MANAGER_PATH,
                                       "org.freedesktop.UDisks2.Manager", "LoopSetup", &e, &reply,
                                       "ha{sv}", fd, 2, "auth.no_user_interaction", "b", 1,
                                       "read-only", "b", 1);
        else
                r = sd_bus_call_method(c->bus, UDISKS_BUS_NAME, UDISKS_MANAGER_PATH,
                                       "org.freedesktop.UDisks2.Manager", "LoopSetup", &e, &reply,
                                       "ha{sv}", fd, 1, "auth.no_user_interaction", "b", 1);
        if (r < 0) {
                *ret_error = bus_error_string(&e, r);
                return r;
        }
        r = sd_bus_message_read(reply, "o", &path);
        if (r < 0) {
                *ret_error = strdup_printf("cannot parse the LoopSetup reply: %s", errstr(r));
                return r;
        }
        if (strncmp(path, UDISKS_BLOCK_PREFIX, strlen(UDISKS_BLOCK_PREFIX)) != 0) {
                *ret_error = strdup_printf("LoopSetup returned %s, not a block device", path);
                return -EBADMSG;
        }
        h->object = strdup(path);
        h->node = strdup_printf("/dev/%s", path + strlen(UDISKS_BLOCK_PREFIX));
        if (!h->object)
                oom();
        return record_device(c->b, h, ret_error);
}

int udisks_attach(Client *c, Handle *h, char **ret_error) {
        return udisks_attach_file(c, h, c->file, false, ret_error);
}

int udisks_detach(Client *c, Handle *h, char **ret_error) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(c->bus, UDISKS_BUS_NAME, h->object, "org.freedesktop.UDisks2.Loop",
                               "Delete", &e, NULL, "a{sv}", 1, "auth.no_user_interaction", "b", 1);
        if (r < 0) {
                *ret_error = bus_error_string(&e, r);
                return r;
        }
        return 0;
}

static int tool_attach(Client *c, Handle *h, char *const argv[], char **ret_error) {
        int r;

        r = run_tool(argv, &h->node, ret_error);
        if (r < 0)
                return r;
        return record_device(c->b, h, ret_error);
}

static int losetup_attach(Client *c, Handle *h, char **ret_error) {
        char *argv[] = {(char *) "losetup", (char *) "--find", (char *) "--show", c->file, NULL};

        return tool_attach(c, h, argv, ret_error);
}

static int losetup_detach(Client *c, Handle *h, char **ret_error) {
        char *argv[] = {(char *) "losetup", (char *) "-d", h->node, NULL};

        (void) c;
        return run_tool(argv, NULL, ret_error);
}

static int losetup_settle_attach(Client *c, Handle *h, char **ret_error) {
        int r = losetup_attach(c, h, ret_error);

        if (r >= 0)
                settle();
        return r;
}

static int losetup_settle_detach(Client *c, Handle *h, char **ret_error) {
        int r = losetup_detach(c, h, ret_error);

        if (r >= 0)
                settle();
        return r;
}

static int loopmgrctl_attach(Client *c, Handle *h, char **ret_error) {
        char *argv[] = {(char *) c->b->loopmgrctl, (char *) "attach", c->file, NULL};

        return tool_attach(c, h, argv, ret_error);
}

static int loopmgrctl_detach(Client *c, Handle *h, char **ret_error) {
        char *argv[] = {(char *) c->b->loopmgrctl, (char *) "detach", (char *) "--wait", h->node,
                        NULL};

        return run_tool(argv, NULL, ret_error);
}

static int udisksctl_attach(Client *c, Handle *h, char **ret_error) {
        char *argv[] = {(char *) "udisksctl",
                        (char *) "loop-setup",
                        (char *) "--no-user-interaction",
                        (char *) "-f",
                        c->file,
                        NULL};

        return tool_attach(c, h, argv, ret_error);
}

static int udisksctl_detach(Client *c, Handle *h, char **ret_error) {
        char *argv[] = {(char *) "udisksctl",
                        (char *) "loop-delete",
                        (char *) "--no-user-interaction",
                        (char *) "-b",
                        h->node,
                        NULL};

        (void) c;
        return run_tool(argv, NULL, ret_error);
}

/*
 * The raw cost of making a device, in this process: what loopmgrd (and systemd) do at the
 * kernel level, without the daemon. LOCK_EX on /dev/loop-control around GET_FREE + configure
 * (how cooperating tools avoid taking each other's free device), O_DIRECT backing fd and
 * LO_FLAGS_DIRECT_IO as loopmgrd's default direct-io=auto gives on this file system, and the
 * same second fd of the device that udev's inotify watch needs to see a close-after-write.
 */
static int raw_attach(Client *c, Handle *h, char **ret_error) {
        _cleanup_close_ int ctl = -EBADF, backing = -EBADF, dev = -EBADF;
        struct loop_config config = {
                .info.lo_flags = LO_FLAGS_DIRECT_IO,
        };
        int nr, r = 0;

        backing = open_image(c->file, O_RDWR | O_DIRECT, ret_error);
        if (backing < 0)
                return backing;
        config.fd = (uint32_t) backing;
        ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
        if (ctl < 0) {
                *ret_error = strdup_printf("cannot open /dev/loop-control: %m");
                return -errno;
        }
        for (unsigned attempt = 0; attempt < 16; attempt++) {
                while (flock(ctl, LOCK_EX) < 0)
                        if (errno != EINTR) {
                                *ret_error = strdup_printf("cannot lock /dev/loop-control: %m");
                                return -errno;
                        }
                nr = ioctl(ctl, LOOP_CTL_GET_FREE);
                if (nr < 0) {
                        r = -errno;
                        (void) flock(ctl, LOCK_UN);
                        *ret_error = strdup_printf("LOOP_CTL_GET_FREE: %s", errstr(r));
                        return r;
                }
                free(h->node);
                h->node = strdup_printf("/dev/loop%d", nr);
                dev = safe_close(dev);
                dev = open(h->node, O_RDWR | O_CLOEXEC | O_NOCTTY);
                r = dev < 0 ? -errno : 0;
                if (r >= 0)
                        r = ioctl(dev, LOOP_CONFIGURE, &config) < 0 ? -errno : 0;
                (void) flock(ctl, LOCK_UN);
                if (r != -EBUSY)
                        break;
        }
        if (r < 0) {
                *ret_error = strdup_printf("LOOP_CONFIGURE on %s: %s", h->node, errstr(r));
                return r;
        }
        h->fd = dev;
        dev = -EBADF;
        return record_device(c->b, h, ret_error);
}

/* LOOP_CLR_FD and the last close, then wait until the binding is really gone: the same end
 * state as loopmgrd's Detach(wait=true). */
static int raw_detach(Client *c, Handle *h, char **ret_error) {
        int r;

        (void) c;
        r = ioctl(h->fd, LOOP_CLR_FD) < 0 ? -errno : 0;
        h->fd = safe_close(h->fd);
        if (r < 0) {
                *ret_error = strdup_printf("LOOP_CLR_FD on %s: %s", h->node, errstr(r));
                return r;
        }
        r = wait_gone(h);
        if (r < 0) {
                *ret_error = strdup_printf("%s did not go away", h->node);
                return r;
        }
        return 0;
}

/* raw_attach, then wait for what loopmgrd's wait-udev waits for: udev's by-diskseq link. The
 * floor of attach-to-usable on this machine, without any daemon. */
static int raw_udev_attach(Client *c, Handle *h, char **ret_error) {
        char link[64];
        double deadline;
        int r;

        r = raw_attach(c, h, ret_error);
        if (r < 0)
                return r;
        snprintf(link, sizeof(link), "/dev/disk/by-diskseq/%" PRIu64, h->diskseq);
        deadline = now_usec() + 10e6;
        while (access(link, F_OK) < 0) {
                if (now_usec() > deadline) {
                        *ret_error = strdup_printf("udev did not create %s within 10 s", link);
                        return -ETIMEDOUT;
                }
                (void) usleep(100);
        }
        return 0;
}

/* Scenario 1. */
static const Peer latency_peers[] = {
        {"loopmgr-dbus", "loopmgr: Attach + Detach(wait) (in-process D-Bus)", loopmgr_attach_udev,
         loopmgr_detach, false, true},
        {"udisks-dbus", "udisks2: LoopSetup + Loop.Delete (in-process D-Bus)", udisks_attach,
         udisks_detach, true, false},
        {"loopmgrctl", "loopmgrctl attach + detach --wait (CLI)", loopmgrctl_attach,
         loopmgrctl_detach, false, true},
        {"udisksctl", "udisksctl loop-setup + loop-delete (CLI)", udisksctl_attach,
         udisksctl_detach, true, false},
        {"losetup", "losetup --find --show + losetup -d (CLI)", losetup_attach, losetup_detach,
         false, false},
        {"losetup-settle", "losetup + udevadm settle, each step (CLI)", losetup_settle_attach,
         losetup_settle_detach, false, false},
        {"raw-udev",
         "floor: raw LOOP_CONFIGURE + wait for udev's by-diskseq link / LOOP_CLR_FD + "
         "wait for the teardown (in-process, no daemon)",
         raw_udev_attach, raw_detach, false, false},
};

/* Scenario 2. */
static const Peer overhead_peers[] = {
        {"loopmgr-nowait", "loopmgr: Attach(wait-udev=false) + Detach(wait) (in-process D-Bus)",
         loopmgr_attach_nowait, loopmgr_detach, false, true},
        {"raw",
         "raw LOOP_CTL_GET_FREE + LOOP_CONFIGURE / LOOP_CLR_FD + wait for the teardown "
         "(in-process)",
         raw_attach, raw_detach, false, false},
};

/* Scenario 3. */
static const Peer concurrency_peers[] = {
        {"loopmgr-dbus", "loopmgr: Attach + Detach(wait) (in-process D-Bus)", loopmgr_attach_udev,
         loopmgr_detach, false, true},
        {"udisks-dbus", "udisks2: LoopSetup + Loop.Delete (in-process D-Bus)", udisks_attach,
         udisks_detach, true, false},
        {"losetup", "losetup --find --show + losetup -d (CLI)", losetup_attach, losetup_detach,
         false, false},
};

typedef struct Result {
        Series attach, detach, cycle;
        unsigned errors;
        char *first_error;
        double wall_usec; /* concurrency: summed wall time of the rounds */
        unsigned cycles;  /* concurrency: completed cycles */
        bool skipped;
        Cpu cpu;        /* summed over the measured cycles (sequential) or rounds */
        unsigned n_cpu; /* sequential: cycles with CPU figures */
        uint64_t attach_cpu, attach_wait; /* the daemon's, during the attach calls alone */
        unsigned n_attach_cpu;
} Result;

static void cpu_add(Cpu *sum, const Cpu *a, const Cpu *b) {
        sum->daemon += b->daemon - a->daemon;
        sum->daemon_wait += b->daemon_wait - a->daemon_wait;
        sum->udev += udev_cpu_delta(&a->udev_procs, &b->udev_procs);
        sum->bus += b->bus - a->bus;
        sum->client += b->client - a->client;
        sum->other += b->other - a->other;
}

void note_error(unsigned *count, char **first, const char *key, char *error) {
        fprintf(stderr, "bench-peers: %s: %s\n", key, error ?: "unknown error");
        (*count)++;
        if (!*first)
                *first = error;
        else
                free(error);
}

static void result_error(Result *res, const char *key, char *error) {
        note_error(&res->errors, &res->first_error, key, error);
}

/* One attach + detach; the times go to res when measure. Returns 0 when both worked. The
 * daemon's schedstat is read (untimed) around the attach when daemon_pid is given. */
static int cycle_once(Client *c, const Peer *p, Result *res, bool measure, pid_t daemon_pid) {
        Handle h = {.fd = -EBADF};
        uint64_t run0 = 0, wait0 = 0, run1 = 0, wait1 = 0;
        bool sched = false;
        char *error = NULL;
        double t0, t1, t1b, t2;
        int r;

        if (daemon_pid > 0)
                sched = pid_schedstat(daemon_pid, &run0, &wait0) >= 0;
        t0 = now_usec();
        r = p->attach(c, &h, &error);
        t1 = now_usec();
        if (sched)
                sched = pid_schedstat(daemon_pid, &run1, &wait1) >= 0;
        t1b = now_usec();
        if (r < 0) {
                result_error(res, p->key, error);
                /* A tool that failed after making a device: take it down if we know it. */
                if (h.node && h.diskseq > 0)
                        (void) p->detach(c, &h, &error);
                handle_done(&h);
                return r;
        }
        r = p->detach(c, &h, &error);
        t2 = now_usec();
        if (r < 0) {
                result_error(res, p->key, error);
                handle_done(&h);
                return r;
        }
        if (measure) {
                series_add(&res->attach, t1 - t0);
                series_add(&res->detach, t2 - t1b);
                series_add(&res->cycle, (t1 - t0) + (t2 - t1b));
                if (sched && run1 >= run0 && wait1 >= wait0) {
                        res->attach_cpu += run1 - run0;
                        res->attach_wait += wait1 - wait0;
                        res->n_attach_cpu++;
                }
        }
        handle_done(&h);
        return 0;
}

char *make_image(Bench *b, const char *key, unsigned client) {
        _cleanup_close_ int fd = -EBADF;
        char *path;

        pthread_mutex_lock(&b->lock);
        path = strdup_printf("%s/%s-%u-%06u.img", b->dir, key, client, b->file_counter++);
        pthread_mutex_unlock(&b->lock);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
        if (fd < 0 || ftruncate(fd, (off_t) MIB) < 0) {
                fprintf(stderr, "bench-peers: cannot create %s: %m\n", path);
                exit(EXIT_FAILURE);
        }
        return path;
}

int client_open(Bench *b, Client *c, const char *key, unsigned nr) {
        int r;

        *c = (Client){.b = b};
        c->file = make_image(b, key, nr);
        r = sd_bus_open_system(&c->bus);
        if (r < 0)
                fprintf(stderr, "bench-peers: cannot connect to the system bus: %s\n", errstr(r));
        return r;
}

void client_close(Client *c) {
        if (c->file)
                (void) unlink(c->file);
        free(c->file);
        sd_bus_flush_close_unref(c->bus);
        *c = (Client){};
}

/* Sequential cycles, every peer once per iteration, the first one rotating. udev is settled
 * (untimed) before every cycle, so none runs in the wake of the previous one. */
static void run_sequential(Bench *b, const char *what, const Peer *peers, size_t n_peers,
                           Result *results) {
        Client clients[8];
        double t0 = now_usec();

        for (size_t k = 0; k < n_peers; k++) {
                if (client_open(b, &clients[k], peers[k].key, 0) < 0)
                        exit(EXIT_FAILURE);
                if (peers[k].udisks && !b->have_udisks) {
                        results[k].skipped = true;
                        results[k].first_error = strdup_printf("udisksd is not on the bus");
                }
        }
        fprintf(stderr, "bench-peers: %s: %u + %u warm-up iterations of %zu peers\n", what,
                b->iterations, b->warmup, n_peers);
        for (unsigned i = 0; i < b->warmup + b->iterations; i++) {
                for (size_t j = 0; j < n_peers; j++) {
                        size_t k = (i + j) % n_peers;

                        if (results[k].skipped)
                                continue;
                        Cpu c0, c1;
                        bool measure = i >= b->warmup;

                        settle();
                        cpu_snapshot(peer_daemon(b, &peers[k]), NULL, b->bus_pid, false, &c0);
                        if (cycle_once(&clients[k], &peers[k], &results[k], measure,
                                       peer_daemon(b, &peers[k])) >= 0 &&
                            measure) {
                                cpu_snapshot(peer_daemon(b, &peers[k]), NULL, b->bus_pid, false,
                                             &c1);
                                cpu_add(&results[k].cpu, &c0, &c1);
                                results[k].n_cpu++;
                        }
                        if (results[k].errors >= PEER_MAX_FAILURES) {
                                fprintf(stderr, "bench-peers: %s: giving up after %u errors\n",
                                        peers[k].key, results[k].errors);
                                results[k].skipped = true;
                        }
                }
                if ((i + 1) % 50 == 0)
                        fprintf(stderr, "bench-peers:   %u\n", i + 1);
        }
        for (size_t k = 0; k < n_peers; k++)
                client_close(&clients[k]);
        fprintf(stderr, "bench-peers: %s took %.1f s\n", what, (now_usec() - t0) / 1e6);
}

typedef struct Worker {
        Client client;
        const Peer *peer;
        unsigned cycles;
        pthread_barrier_t *start;
        Result res;
} Worker;

static void *worker_main(void *userdata) {
        Worker *w = userdata;

        pthread_barrier_wait(w->start);
        for (unsigned i = 0; i < w->cycles; i++)
                (void) cycle_once(&w->client, w->peer, &w->res, true, 0);
        return NULL;
}

/* One round of one peer: all clients at once, each on its own image and connection. */
static void concurrency_round(Bench *b, const Peer *p, Result *res) {
        _cleanup_free_ Worker *workers = NULL;
        _cleanup_free_ pthread_t *threads = NULL;
        pthread_barrier_t start;
        unsigned started = 0;
        double t0, t1;
        Cpu c0, c1;

        workers = calloc(b->clients, sizeof(Worker));
        threads = calloc(b->clients, sizeof(pthread_t));
        if (!workers || !threads)
                oom();
        pthread_barrier_init(&start, NULL, b->clients + 1);
        for (unsigned i = 0; i < b->clients; i++) {
                workers[i].peer = p;
                workers[i].cycles = b->conc_cycles;
                workers[i].start = &start;
                if (client_open(b, &workers[i].client, p->key, i) < 0)
                        exit(EXIT_FAILURE);
                /* The connection is set up (Hello) before the clock starts. */
                (void) sd_bus_get_unique_name(workers[i].client.bus, &(const char *){NULL});
        }
        for (unsigned i = 0; i < b->clients; i++) {
                if (pthread_create(&threads[i], NULL, worker_main, &workers[i]) != 0) {
                        fputs("bench-peers: cannot start a thread\n", stderr);
                        exit(EXIT_FAILURE);
                }
                started++;
        }
        settle();
        cpu_snapshot(peer_daemon(b, p), (pid_t[2]){b->loopmgrd_pid, b->udisksd_pid}, b->bus_pid,
                     true, &c0);
        t0 = now_usec();
        pthread_barrier_wait(&start);
        for (unsigned i = 0; i < started; i++)
                pthread_join(threads[i], NULL);
        t1 = now_usec();
        cpu_snapshot(peer_daemon(b, p), (pid_t[2]){b->loopmgrd_pid, b->udisksd_pid}, b->bus_pid,
                     true, &c1);
        cpu_add(&res->cpu, &c0, &c1);
        pthread_barrier_destroy(&start);

        res->wall_usec += t1 - t0;
        for (unsigned i = 0; i < b->clients; i++) {
                Result *wr = &workers[i].res;

                res->cycles += (unsigned) wr->cycle.n;
                series_merge(&res->attach, &wr->attach);
                series_merge(&res->detach, &wr->detach);
                series_merge(&res->cycle, &wr->cycle);
                res->errors += wr->errors;
                if (!res->first_error)
                        res->first_error = wr->first_error;
                else
                        free(wr->first_error);
                free(wr->attach.v);
                free(wr->detach.v);
                free(wr->cycle.v);
                client_close(&workers[i].client);
        }
}

/* Rounds of all peers, the first one rotating; a warm-up round (one cycle per client) first. */
static void run_concurrency(Bench *b, Result *results) {
        size_t n = ELEMENTSOF(concurrency_peers);
        double t0 = now_usec();
        unsigned cycles = b->conc_cycles;

        fprintf(stderr,
                "bench-peers: concurrency: %u clients x %u cycles, %u rounds of %zu peers\n",
                b->clients, b->conc_cycles, b->conc_rounds, n);
        for (size_t k = 0; k < n; k++)
                if (concurrency_peers[k].udisks && !b->have_udisks) {
                        results[k].skipped = true;
                        results[k].first_error = strdup_printf("udisksd is not on the bus");
                }

        /* Warm-up: not counted. */
        b->conc_cycles = 1;
        for (size_t k = 0; k < n; k++) {
                Result warm = {};

                if (results[k].skipped)
                        continue;
                concurrency_round(b, &concurrency_peers[k], &warm);
                free(warm.attach.v);
                free(warm.detach.v);
                free(warm.cycle.v);
                free(warm.first_error);
        }
        b->conc_cycles = cycles;

        for (unsigned round = 0; round < b->conc_rounds; round++)
                for (size_t j = 0; j < n; j++) {
                        size_t k = (round + j) % n;

                        if (!results[k].skipped)
                                concurrency_round(b, &concurrency_peers[k], &results[k]);
                }
        fprintf(stderr, "bench-peers: concurrency took %.1f s\n", (now_usec() - t0) / 1e6);
}

/* ---- output ------------------------------------------------------------------------------ */

void emit_stats(Bench *b, const char *prefix, const char *what, const Stats *s) {
        if (s->n == 0)
                return;
        metric(b, "%s.%s.median %.4f", prefix, what, s->median);
        metric(b, "%s.%s.p99 %.4f", prefix, what, s->p99);
}

/* Table of one sequential scenario; ratios against peers[ref]. */
static void print_sequential(Bench *b, FILE *f, const char *scenario, const Peer *peers,
                             size_t n_peers, Result *results, size_t ref) {
        Stats at[8], de[8], cy[8];

        for (size_t k = 0; k < n_peers; k++) {
                at[k] = series_stats(&results[k].attach);
                de[k] = series_stats(&results[k].detach);
                cy[k] = series_stats(&results[k].cycle);
        }
        fprintf(f,
                "| peer | n | errors | attach median | attach p99 | detach median | detach p99 | "
                "attach + detach median | p99 | ratio to %s (median) | daemon CPU / cycle | "
                "daemon CPU wait / cycle | udev CPU / cycle | bus CPU / cycle |\n",
                peers[ref].key);
        fputs("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n", f);
        for (size_t k = 0; k < n_peers; k++) {
                char prefix[64];

                fprintf(f, "| %s | %zu | %u | ", peers[k].label, cy[k].n, results[k].errors);
                if (cy[k].n == 0) {
                        fputs("failed: ", f);
                        put_cell(f, results[k].first_error ?: "no sample");
                        fputs(" | | | | | | | | | | |\n", f);
                        continue;
                }
                fprintf(f, "%.3f | %.3f | %.3f | %.3f | %.3f | %.3f | ", at[k].median, at[k].p99,
                        de[k].median, de[k].p99, cy[k].median, cy[k].p99);
                if (cy[ref].n > 0)
                        fprintf(f, "%.3f | ", cy[k].median / cy[ref].median);
                else
                        fputs("n/a | ", f);
                if (results[k].n_cpu > 0) {
                        double n = (double) results[k].n_cpu * 1e6;
                        const Cpu *cpu = &results[k].cpu;

                        if (peers[k].loopmgr || peers[k].udisks)
                                fprintf(f, "%.3f | %.3f | ", (double) cpu->daemon / n,
                                        (double) cpu->daemon_wait / n);
                        else
                                fputs("- | - | ", f);
                        fprintf(f, "%.3f | %.3f |\n", (double) cpu->udev / n,
                                (double) cpu->bus / n);
                } else
                        fputs("n/a | n/a | n/a | n/a |\n", f);

                snprintf(prefix, sizeof(prefix), "%s.%s", scenario, peers[k].key);
                emit_stats(b, prefix, "attach", &at[k]);
                emit_stats(b, prefix, "detach", &de[k]);
                emit_stats(b, prefix, "cycle", &cy[k]);
                metric(b, "%s.n %zu", prefix, cy[k].n);
                metric(b, "%s.errors %u", prefix, results[k].errors);
        }
        for (size_t k = 0; k < n_peers; k++)
                if (results[k].errors > 0 && cy[k].n > 0) {
                        fprintf(f, "\n* %s: %u failed cycles (not in the figures), first: ",
                                peers[k].key, results[k].errors);
                        put_cell(f, results[k].first_error);
                        fputc('\n', f);
                }
        fputs("\nTimes in milliseconds. CPU columns: on-CPU time of the daemon that served the "
              "peer (loopmgrd or udisksd, all threads), the time it was runnable but waiting for a "
              "CPU, of systemd-udevd and its workers (host-wide: other users' devices count too), "
              "and of the private dbus-daemon, per measured cycle (schedstat).\n",
              f);
}

static void print_concurrency(Bench *b, FILE *f, Result *results) {
        size_t n = ELEMENTSOF(concurrency_peers);
        double tput[8] = {};
        Stats at[8], cy[8];
        size_t ref = 1;

        for (size_t k = 0; k < n; k++) {
                at[k] = series_stats(&results[k].attach);
                cy[k] = series_stats(&results[k].cycle);
                if (results[k].wall_usec > 0)
                        tput[k] = results[k].cycles / (results[k].wall_usec / 1e6);
        }
        fprintf(f,
                "%u clients at once, each with its own bus connection (or process) and its own "
                "image, %u attach + detach cycles each per round, %u rounds per peer (peers "
                "alternate round by round), after one warm-up round.\n\n",
                b->clients, b->conc_cycles, b->conc_rounds);
        fputs("| peer | cycles | errors | throughput (cycles/s) | ratio to udisks-dbus | attach "
              "median | attach p99 | cycle median | cycle p99 | CPU / cycle: daemon | udev | bus | "
              "clients | other daemon | total | CPU-bound ceiling (cycles/s) |\n",
              f);
        fputs("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
              f);
        for (size_t k = 0; k < n; k++) {
                char prefix[64];

                fprintf(f, "| %s | %u | %u | ", concurrency_peers[k].label, results[k].cycles,
                        results[k].errors);
                if (cy[k].n == 0) {
                        fputs("failed: ", f);
                        put_cell(f, results[k].first_error ?: "no sample");
                        fputs(" | | | | | | | | | | | | |\n", f);
                        continue;
                }
                fprintf(f, "%.1f | ", tput[k]);
                if (tput[ref] > 0)
                        fprintf(f, "%.2f | ", tput[k] / tput[ref]);
                else
                        fputs("n/a | ", f);
                fprintf(f, "%.3f | %.3f | %.3f | %.3f | ", at[k].median, at[k].p99, cy[k].median,
                        cy[k].p99);
                if (results[k].cycles > 0) {
                        const Cpu *cpu = &results[k].cpu;
                        double per = (double) results[k].cycles * 1e6;
                        double total = (double) (cpu->daemon + cpu->udev + cpu->bus + cpu->client +
                                                 cpu->other) /
                                       per;

                        fprintf(f, "%.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.0f |\n",
                                (double) cpu->daemon / per, (double) cpu->udev / per,
                                (double) cpu->bus / per, (double) cpu->client / per,
                                (double) cpu->other / per, total,
                                total > 0 ? (double) sysconf(_SC_NPROCESSORS_ONLN) * 1e3 / total
                                          : 0);
                        metric(b, "s3.%s.cpu_total_ms %.4f", concurrency_peers[k].key, total);
                        metric(b, "s3.%s.cpu_daemon_ms %.4f", concurrency_peers[k].key,
                               (double) cpu->daemon / per);
                        metric(b, "s3.%s.cpu_udev_ms %.4f", concurrency_peers[k].key,
                               (double) cpu->udev / per);
                } else
                        fputs("n/a | n/a | n/a | n/a | n/a | n/a | n/a |\n", f);

                snprintf(prefix, sizeof(prefix), "s3.%s", concurrency_peers[k].key);
                metric(b, "%s.throughput %.3f", prefix, tput[k]);
                metric(b, "%s.cycles %u", prefix, results[k].cycles);
                metric(b, "%s.errors %u", prefix, results[k].errors);
                emit_stats(b, prefix, "attach", &at[k]);
                emit_stats(b, prefix, "cycle", &cy[k]);
        }
        for (size_t k = 0; k < n; k++)
                if (results[k].errors > 0) {
                        fprintf(f,
                                "\n* %s: %u failed operations, first: ", concurrency_peers[k].key,
                                results[k].errors);
                        put_cell(f, results[k].first_error);
                        fputc('\n', f);
                }
        fputs("\nTimes in milliseconds. Throughput counts completed cycles over the summed wall "
              "time "
              "of the rounds. CPU per cycle: on-CPU time of the daemon (loopmgrd or udisksd), of "
              "systemd-udevd and its workers (host-wide), of the private dbus-daemon, of the "
              "clients (threads and the CLI processes they ran), and of the other daemon on the "
              "bus (udisksd during loopmgr's rounds, loopmgrd during udisks2's, both during "
              "losetup's), which follows every block device's uevents whoever made the device, "
              "over the rounds, divided by the completed cycles; the ceiling is the online CPUs "
              "divided by the total: no client "
              "could go faster on this machine without making a cycle cheaper.\n",
              f);
}

static void print_all(Bench *b, FILE *f, Result *lat, Result *ovh, Result *conc, Series *ping,
                      const MountResult *mount) {
        Stats l, r;

        if (b->scenarios & 1) {
                fputs("#### 1. Attach-to-usable latency (sequential attach + detach cycles)\n\n",
                      f);
                print_sequential(b, f, "s1", latency_peers, ELEMENTSOF(latency_peers), lat, 1);
        }
        if (!(b->scenarios & 2))
                goto concurrency;

        fputs("\n#### 2. Daemon overhead (no udev wait) against raw LOOP_CONFIGURE\n\n", f);
        print_sequential(b, f, "s2", overhead_peers, ELEMENTSOF(overhead_peers), ovh, 1);
        l = series_stats(&ovh[0].attach);
        r = series_stats(&ovh[1].attach);
        if (l.n > 0 && r.n > 0) {
                Stats pg = series_stats(ping);

                fprintf(f,
                        "\nDaemon overhead on attach (median loopmgr - median raw): **%.3f ms**; "
                        "on "
                        "detach: %.3f ms.\n",
                        l.median - r.median,
                        series_stats(&ovh[0].detach).median - series_stats(&ovh[1].detach).median);
                metric(b, "s2.overhead.attach.median %.4f", l.median - r.median);
                if (b->overhead_pairs > 0) {
                        fprintf(f,
                                "The median of the %zu per-iteration differences (loopmgr's attach "
                                "minus raw's in the same iteration, run back to back, so that both "
                                "see the same machine): **%.3f ms**.\n",
                                b->overhead_pairs, b->overhead_paired_ms);
                        metric(b, "s2.overhead.attach.paired_median %.4f", b->overhead_paired_ms);
                }
                fputs("\nWhere the attach time goes (means per call, ms): ", f);
                if (pg.n > 0) {
                        fprintf(f,
                                "a D-Bus round trip to loopmgrd that does no work "
                                "(`org.freedesktop.DBus.Peer.Ping`, %zu calls) takes %.3f "
                                "(median; p99 %.3f); ",
                                pg.n, pg.median, pg.p99);
                        metric(b, "s2.ping.median %.4f", pg.median);
                }
                if (ovh[0].n_attach_cpu > 0) {
                        double cpu = (double) ovh[0].attach_cpu / 1e6 / ovh[0].n_attach_cpu;
                        double wait = (double) ovh[0].attach_wait / 1e6 / ovh[0].n_attach_cpu;

                        fprintf(f,
                                "loopmgrd was on a CPU for %.3f and runnable but waiting for a "
                                "CPU for %.3f per Attach(wait-udev=false); the rest of the round "
                                "trip is the bus, the kernel's work for the daemon (LOOP_CONFIGURE "
                                "itself: the raw attach) and the daemon blocked (fdatasync of its "
                                "state, locks).\n",
                                cpu, wait);
                        metric(b, "s2.loopmgr-nowait.attach.cpu %.4f", cpu);
                        metric(b, "s2.loopmgr-nowait.attach.cpu_wait %.4f", wait);
                } else
                        fputc('\n', f);
        }

concurrency:
        if (b->scenarios & 4) {
                fputs("\n#### 3. Concurrency\n\n", f);
                print_concurrency(b, f, conc);
        }
        if (b->scenarios & 32) {
                fputs("\n#### 6. A slow Mount and everybody else\n\n", f);
                print_mount(b, f, mount);
        }
}

/* Before anything sorts the series (series_stats() sorts in place): element i of each is the
 * attach of iteration i, as long as neither peer failed an iteration. */
static void paired_overhead(Bench *b, const Series *loopmgr, const Series *raw) {
        Series d = {};

        if (loopmgr->n == 0 || loopmgr->n != raw->n)
                return;
        for (size_t i = 0; i < loopmgr->n; i++)
                series_add(&d, loopmgr->v[i] - raw->v[i]);
        b->overhead_paired_ms = series_stats(&d).median;
        b->overhead_pairs = d.n;
        free(d.v);
}

/* ---- main -------------------------------------------------------------------------------- */

/* Peer.Ping to loopmgrd, which sd-bus answers without calling the daemon's code: the floor of
 * any method call on this bus. Alternated with nothing; after scenario 2. */
static void measure_ping(Bench *b, Series *ret) {
        sd_bus *bus = NULL;

        if (sd_bus_open_system(&bus) < 0)
                return;
        for (unsigned i = 0; i < b->warmup + 10 * b->iterations; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
                double t0 = now_usec();

                if (sd_bus_call_method(bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                       "org.freedesktop.DBus.Peer", "Ping", &e, NULL, "") < 0)
                        break;
                if (i >= b->warmup)
                        series_add(ret, now_usec() - t0);
        }
        sd_bus_flush_close_unref(bus);
}

static pid_t name_pid(sd_bus *bus, const char *name) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t pid;

        if (sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "GetConnectionUnixProcessID", &e, &reply,
                               "s", name) < 0 ||
            sd_bus_message_read(reply, "u", &pid) < 0)
                return 0;
        return (pid_t) pid;
}

static bool udisks_present(sd_bus *bus) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int has = 0;

        if (sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "NameHasOwner", &e, &reply, "s",
                               UDISKS_BUS_NAME) < 0)
                return false;
        return sd_bus_message_read(reply, "b", &has) >= 0 && has;
}

static int parse_unsigned(const char *s, unsigned *ret) {
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno != 0 || end == s || *end != 0 || s[0] == '-' || v > 100000000)
                return -EINVAL;
        *ret = (unsigned) v;
        return 0;
}

static void help(void) {
        printf("bench-peers --dir DIR --loopmgrctl PATH [OPTIONS]\n\n"
               "loopmgrd against udisks2, losetup and raw LOOP_CONFIGURE on\n"
               "DBUS_SYSTEM_BUS_ADDRESS (run it through bench/run.sh).\n\n"
               "  --dir DIR             scratch directory for the images\n"
               "  --loopmgrctl PATH     the CLI to measure\n"
               "  --record FILE         append \"node diskseq\" of every device made\n"
               "  --markdown FILE       write the result tables there\n"
               "  --metrics FILE        write \"key value\" lines there\n"
               "  --iterations N        sequential cycles per peer (100)\n"
               "  --warmup N            warm-up cycles per peer, not counted (10)\n"
               "  --clients N           concurrent clients (8)\n"
               "  --cycles N            cycles per client and round (10)\n"
               "  --rounds N            concurrency rounds per peer (3)\n"
               "  --bus-pid PID         the bus daemon, for its CPU time\n"
               "  --slowfs PATH         tests/slowfs.c, built (scenario 6 skips without it)\n"
               "  --slow-read-msec N    scenario 6: every read of the slow image (300)\n"
               "  --mount-rounds N      scenario 6: slow Mounts per peer (3)\n"
               "  --scenarios LIST      only these of 1,2,3,6 (all), for working on one\n");
}

int main(int argc, char *argv[]) {
        enum {
                ARG_DIR = 0x100,
                ARG_LOOPMGRCTL,
                ARG_RECORD,
                ARG_MARKDOWN,
                ARG_METRICS,
                ARG_ITERATIONS,
                ARG_WARMUP,
                ARG_CLIENTS,
                ARG_CYCLES,
                ARG_ROUNDS,
                ARG_BUS_PID,
                ARG_SCENARIOS,
                ARG_SLOWFS,
                ARG_SLOW_READ_MSEC,
                ARG_MOUNT_ROUNDS,
        };
        static const struct option options[] = {
                {"help", no_argument, NULL, 'h'},
                {"dir", required_argument, NULL, ARG_DIR},
                {"loopmgrctl", required_argument, NULL, ARG_LOOPMGRCTL},
                {"record", required_argument, NULL, ARG_RECORD},
                {"markdown", required_argument, NULL, ARG_MARKDOWN},
                {"metrics", required_argument, NULL, ARG_METRICS},
                {"iterations", required_argument, NULL, ARG_ITERATIONS},
                {"warmup", required_argument, NULL, ARG_WARMUP},
                {"clients", required_argument, NULL, ARG_CLIENTS},
                {"cycles", required_argument, NULL, ARG_CYCLES},
                {"rounds", required_argument, NULL, ARG_ROUNDS},
                {"bus-pid", required_argument, NULL, ARG_BUS_PID},
                {"scenarios", required_argument, NULL, ARG_SCENARIOS},
                {"slowfs", required_argument, NULL, ARG_SLOWFS},
                {"slow-read-msec", required_argument, NULL, ARG_SLOW_READ_MSEC},
                {"mount-rounds", required_argument, NULL, ARG_MOUNT_ROUNDS},
                {}};
        Bench b = {
                .iterations = 100,
                .warmup = 10,
                .clients = 8,
                .conc_cycles = 10,
                .conc_rounds = 3,
                .scenarios = 1 | 2 | 4 | 32,
                .slow_read_msec = 300,
                .mount_rounds = 3,
        };
        MountResult *mount = NULL;
        Result lat[ELEMENTSOF(latency_peers)] = {}, ovh[ELEMENTSOF(overhead_peers)] = {},
               conc[ELEMENTSOF(concurrency_peers)] = {};
        const char *record = NULL, *markdown = NULL, *metrics = NULL;
        Series ping = {};
        sd_bus *bus = NULL;
        int c, r = 0;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                unsigned *target = NULL;

                switch (c) {
                case 'h':
                        help();
                        return EXIT_SUCCESS;
                case ARG_DIR:
                        b.dir = optarg;
                        break;
                case ARG_LOOPMGRCTL:
                        b.loopmgrctl = optarg;
                        break;
                case ARG_RECORD:
                        record = optarg;
                        break;
                case ARG_MARKDOWN:
                        markdown = optarg;
                        break;
                case ARG_METRICS:
                        metrics = optarg;
                        break;
                case ARG_ITERATIONS:
                        target = &b.iterations;
                        break;
                case ARG_WARMUP:
                        target = &b.warmup;
                        break;
                case ARG_CLIENTS:
                        target = &b.clients;
                        break;
                case ARG_CYCLES:
                        target = &b.conc_cycles;
                        break;
                case ARG_ROUNDS:
                        target = &b.conc_rounds;
                        break;
                case ARG_SCENARIOS:
                        b.scenarios = 0;
                        for (const char *p = optarg; *p; p++) {
                                if ((*p >= '1' && *p <= '3') || *p == '6')
                                        b.scenarios |= 1U << (*p - '1');
                                else if (*p != ',') {
                                        fprintf(stderr,
                                                "bench-peers: '%s' is not a list of 1, 2, 3, 6\n",
                                                optarg);
                                        return 2;
                                }
                        }
                        break;
                case ARG_SLOWFS:
                        b.slowfs = optarg;
                        break;
                case ARG_SLOW_READ_MSEC:
                        target = &b.slow_read_msec;
                        break;
                case ARG_MOUNT_ROUNDS:
                        target = &b.mount_rounds;
                        break;
                case ARG_BUS_PID: {
                        unsigned v;

                        if (parse_unsigned(optarg, &v) < 0) {
                                fprintf(stderr, "bench-peers: '%s' is not a pid\n", optarg);
                                return 2;
                        }
                        b.bus_pid = (pid_t) v;
                        break;
                }
                default:
                        return 2;
                }
                if (target && parse_unsigned(optarg, target) < 0) {
                        fprintf(stderr, "bench-peers: '%s' is not a count\n", optarg);
                        return 2;
                }
        }
        if (optind < argc || !b.dir || !b.loopmgrctl) {
                fputs("bench-peers: --dir and --loopmgrctl are required (see --help)\n", stderr);
                return 2;
        }
        if (b.iterations == 0 || b.clients == 0 || b.clients > 64 || b.conc_cycles == 0 ||
            b.conc_rounds == 0 || b.mount_rounds == 0 || b.slow_read_msec == 0) {
                fputs("bench-peers: counts must be at least 1 (and at most 64 clients)\n", stderr);
                return 2;
        }
        pthread_mutex_init(&b.lock, NULL);
        if (record) {
                b.record = fopen(record, "ae");
                if (!b.record) {
                        fprintf(stderr, "bench-peers: cannot open %s: %m\n", record);
                        return EXIT_FAILURE;
                }
        }
        if (metrics) {
                b.metrics = fopen(metrics, "ae");
                if (!b.metrics) {
                        fprintf(stderr, "bench-peers: cannot open %s: %m\n", metrics);
                        return EXIT_FAILURE;
                }
        }
        r = sd_bus_open_system(&bus);
        if (r < 0) {
                fprintf(stderr, "bench-peers: cannot connect to the system bus: %s\n", errstr(r));
                return EXIT_FAILURE;
        }
        b.have_udisks = udisks_present(bus);
        b.loopmgrd_pid = name_pid(bus, LOOPMGR_BUS_NAME);
        if (b.have_udisks)
                b.udisksd_pid = name_pid(bus, UDISKS_BUS_NAME);
        if (!b.have_udisks)
                fputs("bench-peers: warning: udisksd is not on the bus, its rows will say so\n",
                      stderr);
        sd_bus_flush_close_unref(bus);

        if (b.scenarios & 1)
                run_sequential(&b, "1. latency", latency_peers, ELEMENTSOF(latency_peers), lat);
        if (b.scenarios & 2) {
                run_sequential(&b, "2. overhead", overhead_peers, ELEMENTSOF(overhead_peers), ovh);
                paired_overhead(&b, &ovh[0].attach, &ovh[1].attach);
                measure_ping(&b, &ping);
        }
        if (b.scenarios & 4)
                run_concurrency(&b, conc);
        if (b.scenarios & 32)
                mount = run_mount(&b);

        print_all(&b, stdout, lat, ovh, conc, &ping, mount);
        if (markdown) {
                FILE *f = fopen(markdown, "we");

                if (!f) {
                        fprintf(stderr, "bench-peers: cannot write %s: %m\n", markdown);
                        r = -errno;
                } else {
                        FILE *m = b.metrics;

                        b.metrics = NULL; /* the metrics went out with stdout's tables */
                        print_all(&b, f, lat, ovh, conc, &ping, mount);
                        b.metrics = m;
                        if (fclose(f) != 0)
                                r = -errno;
                }
        }

        for (size_t k = 0; k < ELEMENTSOF(lat); k++) {
                free(lat[k].attach.v), free(lat[k].detach.v), free(lat[k].cycle.v);
                free(lat[k].first_error);
        }
        for (size_t k = 0; k < ELEMENTSOF(ovh); k++) {
                free(ovh[k].attach.v), free(ovh[k].detach.v), free(ovh[k].cycle.v);
                free(ovh[k].first_error);
        }
        for (size_t k = 0; k < ELEMENTSOF(conc); k++) {
                free(conc[k].attach.v), free(conc[k].detach.v), free(conc[k].cycle.v);
                free(conc[k].first_error);
        }
        if (b.record)
                fclose(b.record);
        if (b.metrics)
                fclose(b.metrics);
        free(ping.v);
        mount_result_free(mount);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
