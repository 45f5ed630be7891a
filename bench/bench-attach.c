/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * bench-attach: what the alias check and the registry cost, seen from an in-process sd-bus
 * client of loopmgrd (bench/run.sh sets up the bus, the daemon and a scratch directory, then
 * runs this; docs/PERFORMANCE.md describes the method).
 *
 * Scenarios, each at several populations (the bindings that exist besides the one measured:
 * none of ours, then each count of --bindings, 100 and 1,000 by default, of ours):
 *   attach    Manager.Attach of a fresh sparse 1 MiB file, wait-udev=true and wait-udev=false
 *             alternated (ABBA), then Manager.Detach(wait=true) timed separately
 *   resolve   Manager.Resolve of the top of file -> loop A -> partition of A -> loop B -> loop C
 *             (offset), alternated with Resolve of a plain file
 *   objects   ObjectManager.GetManagedObjects, and the daemon's VmRSS
 *
 * Each figure is the round trip of one call as this client sees it; next to it, the daemon's
 * own on-CPU and runnable-waiting time during the call (schedstat), which tells the daemon's
 * work apart from bus, udev and kernel time and from a busy machine.
 *
 * A scenario that cannot run reports "failed: <error>" and the run goes on. Every device this
 * program makes is appended to --record ("node diskseq") before anything else happens to it,
 * so bench/run.sh can take it down if this program dies; at the end this program detaches
 * every device it made and removes the idle loop devices the kernel created for it.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/blkpg.h>
#include <linux/loop.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "loopmgr-bus.h"

#include "bench/bench-util.h"

/* In the shape of the daemon's util.h (a client includes no daemon headers: include/ is what
 * clients and daemon share). */
#define TAKE_PTR(p)                                                                                \
        ({                                                                                         \
                __typeof__(p) _p_ = (p);                                                           \
                (p) = NULL;                                                                        \
                _p_;                                                                               \
        })

#define BUS_TIMEOUT_USEC    (120ULL * 1000ULL * 1000ULL)
#define DETACH_TIMEOUT_USEC (30ULL * 1000ULL * 1000ULL)
/* A row gives up after this many failed iterations: one bad iteration should not cost the
 * numbers, a broken scenario should not cost minutes. */
#define ROW_MAX_FAILURES 3
#define MAX_ROWS         64
#define MAX_POPULATIONS  8
#define MAX_FACTS        64

typedef struct Row {
        char *label;
        unsigned population; /* bindings of ours that existed during the measurement */
        double *v;           /* microseconds */
        size_t n, n_alloc;
        /* The daemon's time on a CPU and waiting for one (runnable), summed over the calls
         * in v, from /proc/PID/task/TID/schedstat; n_sched calls had both readings. */
        double cpu_usec, wait_usec;
        size_t n_sched;
        unsigned n_failed;
        char *error; /* the first failure, or why the row could not run */
} Row;

typedef struct Created {
        char *path; /* D-Bus object path */
        char *node; /* /dev/loopN */
        uint64_t diskseq;
        bool gone;
} Created;

typedef struct Bench {
        sd_bus *bus;
        const char *dir;
        FILE *record;
        unsigned bindings[MAX_POPULATIONS]; /* ascending */
        size_t n_bindings;
        unsigned iterations, warmup, resolve_iterations, gmo_iterations;
        bool remove_idle;
        uint32_t daemon_pid;
        /* What the daemon's threads did during the last call_timed(), see Row. */
        double last_cpu_usec, last_wait_usec;
        bool last_sched;

        Created **created;
        size_t n_created, n_created_alloc;

        bool *preexisting; /* loop numbers that existed when we started */
        size_t n_preexisting;

        Row rows[MAX_ROWS];
        size_t n_rows;
        char *facts[MAX_FACTS];
        size_t n_facts;
        unsigned file_counter;
} Bench;

static _printf_(1, 2) char *strdup_printf(const char *fmt, ...) {
        va_list ap;
        char *s;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (r < 0) {
                fputs("bench-attach: out of memory\n", stderr);
                exit(EXIT_FAILURE);
        }
        return s;
}

static _printf_(2, 3) void fact(Bench *b, const char *fmt, ...) {
        va_list ap;
        char *s;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (r < 0)
                return;
        fprintf(stderr, "bench-attach: %s\n", s);
        if (b->n_facts >= MAX_FACTS) {
                free(s);
                return;
        }
        b->facts[b->n_facts++] = s;
}

static Row *row_new(Bench *b, unsigned population, const char *label) {
        Row *row;

        if (b->n_rows >= MAX_ROWS) {
                fputs("bench-attach: too many rows\n", stderr);
                exit(EXIT_FAILURE);
        }
        row = &b->rows[b->n_rows++];
        *row = (Row){.label = strdup_printf("%s", label), .population = population};
        return row;
}

/* Adds a sample of the call that just returned (its schedstat deltas are in b). */
static void row_add(Bench *b, Row *row, double usec) {
        if (b->last_sched) {
                row->cpu_usec += b->last_cpu_usec;
                row->wait_usec += b->last_wait_usec;
                row->n_sched++;
        }
        if (row->n == row->n_alloc) {
                size_t n = row->n_alloc ? row->n_alloc * 2 : 64;
                double *v = realloc(row->v, n * sizeof(double));

                if (!v) {
                        fputs("bench-attach: out of memory\n", stderr);
                        exit(EXIT_FAILURE);
                }
                row->v = v;
                row->n_alloc = n;
        }
        row->v[row->n++] = usec;
}

/* Records a failure (takes `error`); returns true while the row may go on. */
static bool row_fail(Row *row, char *error) {
        fprintf(stderr, "bench-attach: %s (%u bindings): %s\n", row->label, row->population,
                error ?: "unknown error");
        row->n_failed++;
        if (!row->error)
                row->error = error;
        else
                free(error);
        return row->n_failed < ROW_MAX_FAILURES;
}

static bool row_usable(const Row *row) {
        return row->n > 0;
}

typedef struct Stats {
        double median, p90, p99, min, max;
} Stats;

static Stats row_stats(Row *row) {
        qsort(row->v, row->n, sizeof(double), cmp_double);
        return (Stats){
                .median = quantile(row->v, row->n, 0.5),
                .p90 = quantile(row->v, row->n, 0.9),
                .p99 = quantile(row->v, row->n, 0.99),
                .min = row->v[0],
                .max = row->v[row->n - 1],
        };
}

static char *bus_error_string(const sd_bus_error *e, int r) {
        if (e && sd_bus_error_is_set(e))
                return strdup_printf("%s: %s", e->name, e->message ?: "(no message)");
        return strdup_printf("%s", strerror(r < 0 ? -r : r));
}

/* Sums "on-CPU ns, runnable-but-waiting ns" over the threads of pid (sd-event daemons have
 * one, but a library may start a helper thread). */
static int read_schedstat(uint32_t pid, uint64_t *ret_run_ns, uint64_t *ret_wait_ns) {
        uint64_t run = 0, wait = 0;
        char path[64];
        struct dirent *de;
        bool any = false;
        DIR *d;

        snprintf(path, sizeof(path), "/proc/%" PRIu32 "/task", pid);
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
                        continue; /* the thread just exited */
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
        *ret_run_ns = run;
        *ret_wait_ns = wait;
        return 0;
}

/* Sends m and waits for the reply; *ret_usec is the round trip as the client sees it. The
 * daemon's schedstat is read just outside the timed window, into b->last_*. */
static int call_timed(Bench *b, sd_bus_message *m, uint64_t timeout_usec, double *ret_usec,
                      sd_bus_message **ret_reply, char **ret_error) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        uint64_t run0 = 0, wait0 = 0, run1 = 0, wait1 = 0;
        bool sched;
        double t0, t1;
        int r;

        sched = read_schedstat(b->daemon_pid, &run0, &wait0) >= 0;
        t0 = now_usec();
        r = sd_bus_call(b->bus, m, timeout_usec, &e, &reply);
        t1 = now_usec();
        sched = sched && read_schedstat(b->daemon_pid, &run1, &wait1) >= 0 && run1 >= run0 &&
                wait1 >= wait0;
        b->last_sched = sched;
        b->last_cpu_usec = sched ? (double) (run1 - run0) / 1e3 : 0;
        b->last_wait_usec = sched ? (double) (wait1 - wait0) / 1e3 : 0;
        if (r < 0) {
                *ret_error = bus_error_string(&e, r);
                return r;
        }
        if (ret_usec)
                *ret_usec = t1 - t0;
        if (ret_reply)
                *ret_reply = reply;
        else
                sd_bus_message_unref(reply);
        return 0;
}

static int new_manager_call(Bench *b, const char *member, sd_bus_message **ret) {
        return sd_bus_message_new_method_call(b->bus, ret, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                              LOOPMGR_MANAGER_INTERFACE, member);
}

static void record_created(Bench *b, Created *c) {
        if (b->n_created == b->n_created_alloc) {
                size_t n = b->n_created_alloc ? b->n_created_alloc * 2 : 256;
                Created **l = realloc(b->created, n * sizeof(Created *));

                if (!l) {
                        fputs("bench-attach: out of memory\n", stderr);
                        exit(EXIT_FAILURE);
                }
                b->created = l;
                b->n_created_alloc = n;
        }
        b->created[b->n_created++] = c;
        if (b->record) {
                fprintf(b->record, "%s %" PRIu64 "\n", c->node, c->diskseq);
                fflush(b->record);
        }
}

/* Manager.Attach(fd, {wait-udev, offset}); the new device goes into the record at once. */
static int attach(Bench *b, int fd, bool wait_udev, uint64_t offset, Created **ret,
                  double *ret_usec, char **ret_error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *path, *node;
        uint64_t diskseq;
        Created *c;
        int reused, r;

        r = new_manager_call(b, "Attach", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "h", fd);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_WAIT_UDEV, "b", (int) wait_udev);
        if (r >= 0 && offset > 0)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_OFFSET, "t", offset);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0) {
                *ret_error = strdup_printf("cannot build Attach: %s", strerror(-r));
                return r;
        }

        r = call_timed(b, m, BUS_TIMEOUT_USEC, ret_usec, &reply, ret_error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "ostb", &path, &node, &diskseq, &reused);
        if (r < 0) {
                *ret_error = strdup_printf("cannot parse the Attach reply: %s", strerror(-r));
                return r;
        }

        c = calloc(1, sizeof(*c));
        if (!c || !(c->path = strdup(path)) || !(c->node = strdup(node))) {
                fputs("bench-attach: out of memory\n", stderr);
                exit(EXIT_FAILURE);
        }
        c->diskseq = diskseq;
        /* Even a reused device carries a reference of ours, which the Detach drops. */
        record_created(b, c);
        *ret = c;
        return 0;
}

/* Manager.Detach(device, {wait: true}): returns only when the kernel binding is gone. */
static int detach(Bench *b, Created *c, bool all_references, double *ret_usec, char **ret_error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *state;
        int r;

        r = new_manager_call(b, "Detach", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "o", c->path);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0)
                r = sd_bus_message_append(m, "{sv}{sv}", LOOPMGR_OPT_WAIT, "b", 1,
                                          LOOPMGR_OPT_TIMEOUT_USEC, "t",
                                          (uint64_t) DETACH_TIMEOUT_USEC);
        if (r >= 0 && all_references)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_ALL_REFERENCES, "b", 1);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0) {
                *ret_error = strdup_printf("cannot build Detach: %s", strerror(-r));
                return r;
        }

        r = call_timed(b, m, BUS_TIMEOUT_USEC, ret_usec, &reply, ret_error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "s", &state);
        if (r < 0) {
                *ret_error = strdup_printf("cannot parse the Detach reply: %s", strerror(-r));
                return r;
        }
        if (strcmp(state, LOOPMGR_STATE_DETACHED) != 0) {
                *ret_error = strdup_printf("Detach(wait=true) of %s returned '%s', not '%s'",
                                           c->node, state, LOOPMGR_STATE_DETACHED);
                return -EBUSY;
        }
        c->gone = true;
        return 0;
}

/* Manager.Resolve(fd, {}). */
static int resolve(Bench *b, int fd, double *ret_usec, sd_bus_message **ret_reply,
                   char **ret_error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = new_manager_call(b, "Resolve", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "h", fd);
        if (r >= 0)
                r = sd_bus_message_append(m, "a{sv}", 0);
        if (r < 0) {
                *ret_error = strdup_printf("cannot build Resolve: %s", strerror(-r));
                return r;
        }
        return call_timed(b, m, BUS_TIMEOUT_USEC, ret_usec, ret_reply, ret_error);
}

/* One line from a Resolve reply: the identity, how many aliases, and the chain. */
static char *describe_identity(sd_bus_message *reply) {
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        FILE *f;
        int r;

        f = open_memstream(&buf, &size);
        if (!f)
                return NULL;

        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                const char *key, *contents, *s;
                uint64_t t;
                char type;

                r = sd_bus_message_read(reply, "s", &key);
                if (r >= 0)
                        r = sd_bus_message_peek_type(reply, &type, &contents);
                if (r >= 0)
                        r = sd_bus_message_enter_container(reply, 'v', contents);
                if (r < 0)
                        break;

                if (strcmp(contents, "s") == 0 && sd_bus_message_read(reply, "s", &s) >= 0)
                        fprintf(f, "%s=%s ", key, s);
                else if (strcmp(contents, "t") == 0 && sd_bus_message_read(reply, "t", &t) >= 0) {
                        if (strcmp(key, "base-device") == 0)
                                fprintf(f, "%s=%u:%u ", key, major((dev_t) t), minor((dev_t) t));
                        else
                                fprintf(f, "%s=%" PRIu64 " ", key, t);
                } else if (strcmp(contents, "ao") == 0 || strcmp(contents, "as") == 0) {
                        unsigned n = 0;

                        r = sd_bus_message_enter_container(reply, 'a', contents + 1);
                        if (strcmp(contents, "as") == 0)
                                fprintf(f, "%s=[", key);
                        while (r >= 0 &&
                               (r = sd_bus_message_read_basic(reply, contents[1], &s)) > 0) {
                                if (strcmp(contents, "as") == 0)
                                        fprintf(f, "%s%s", n > 0 ? " > " : "", s);
                                n++;
                        }
                        if (strcmp(contents, "as") == 0)
                                fputs("] ", f);
                        else
                                fprintf(f, "%s=%u ", key, n);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(reply);
                } else
                        r = sd_bus_message_skip(reply, contents);
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
        }
        if (r < 0)
                fprintf(f, "(reply not fully parsed: %s)", strerror(-r));
        if (fclose(f) != 0)
                return NULL;
        return TAKE_PTR(buf);
}

static bool is_ours(const Bench *b, const char *path) {
        for (size_t i = b->n_created; i-- > 0;)
                if (!b->created[i]->gone && strcmp(b->created[i]->path, path) == 0)
                        return true;
        return false;
}

/* The Node property of one object's a{sa{sv}}, or NULL. */
static int read_device_node(sd_bus_message *reply, const char **ret_node) {
        const char *node = NULL;
        int r;

        r = sd_bus_message_enter_container(reply, 'a', "{sa{sv}}");
        while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "sa{sv}")) > 0) {
                const char *iface;

                r = sd_bus_message_read(reply, "s", &iface);
                if (r >= 0 && strcmp(iface, LOOPMGR_DEVICE_INTERFACE) == 0) {
                        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
                        while (r >= 0 &&
                               (r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                                const char *prop;

                                r = sd_bus_message_read(reply, "s", &prop);
                                if (r >= 0 && strcmp(prop, "Node") == 0)
                                        r = sd_bus_message_read(reply, "v", "s", &node);
                                else if (r >= 0)
                                        r = sd_bus_message_skip(reply, "v");
                                if (r >= 0)
                                        r = sd_bus_message_exit_container(reply);
                        }
                        if (r >= 0)
                                r = sd_bus_message_exit_container(reply);
                } else if (r >= 0)
                        r = sd_bus_message_skip(reply, "a{sv}");
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(reply);
        if (r < 0)
                return r;
        *ret_node = node;
        return 0;
}

/* ObjectManager.GetManagedObjects; *ret_objects is the number of object paths in the reply,
 * *ret_others the nodes of those that are not devices of this run (NULL if none). */
static int get_managed_objects(Bench *b, double *ret_usec, unsigned *ret_objects,
                               unsigned *ret_n_others, char **ret_others, char **ret_error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_free_ char *others = NULL;
        size_t others_size = 0;
        unsigned n = 0, n_others = 0;
        FILE *o;
        int r;

        r = sd_bus_message_new_method_call(b->bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           "org.freedesktop.DBus.ObjectManager",
                                           "GetManagedObjects");
        if (r < 0) {
                *ret_error = strdup_printf("cannot build GetManagedObjects: %s", strerror(-r));
                return r;
        }
        r = call_timed(b, m, BUS_TIMEOUT_USEC, ret_usec, &reply, ret_error);
        if (r < 0)
                return r;
        if (!ret_objects)
                return 0;

        o = open_memstream(&others, &others_size);
        if (!o) {
                *ret_error = strdup_printf("out of memory");
                return -ENOMEM;
        }
        r = sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}");
        while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}")) > 0) {
                const char *path, *node = NULL;

                r = sd_bus_message_read(reply, "o", &path);
                if (r >= 0)
                        r = read_device_node(reply, &node);
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r >= 0 && !is_ours(b, path)) {
                        if (n_others < 8)
                                fprintf(o, "%s%s", n_others > 0 ? ", " : "", node ?: path);
                        n_others++;
                }
                n++;
        }
        if (fclose(o) != 0 && r >= 0)
                r = -ENOMEM;
        if (r < 0) {
                *ret_error =
                        strdup_printf("cannot parse the GetManagedObjects reply: %s", strerror(-r));
                return r;
        }
        *ret_objects = n;
        if (ret_n_others)
                *ret_n_others = n_others;
        if (ret_others)
                *ret_others = n_others > 0 ? TAKE_PTR(others) : NULL;
        return 0;
}

static int get_daemon_pid(Bench *b, uint32_t *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t pid;
        int r;

        r = sd_bus_call_method(b->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "GetConnectionUnixProcessID", &e, &reply,
                               "s", LOOPMGR_BUS_NAME);
        if (r < 0) {
                fprintf(stderr, "bench-attach: cannot find %s on the bus: %s\n", LOOPMGR_BUS_NAME,
                        e.message ?: strerror(-r));
                return r;
        }
        r = sd_bus_message_read(reply, "u", &pid);
        if (r < 0)
                return r;
        *ret = pid;
        return 0;
}

/* A "Vm*:" line of /proc/PID/status, in kB. */
static int read_status_kb(uint32_t pid, const char *field, unsigned long *ret) {
        char path[64], line[256];
        size_t len = strlen(field);
        FILE *f;
        int r = -ENOENT;

        snprintf(path, sizeof(path), "/proc/%" PRIu32 "/status", pid);
        f = fopen(path, "re");
        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, field, len) == 0 && line[len] == ':') {
                        r = sscanf(line + len + 1, "%lu", ret) == 1 ? 0 : -EBADMSG;
                        break;
                }
        fclose(f);
        return r;
}

extern char **environ;

/* udevadm settle: the measurements start from a quiet udev, not in the wake of the last one. */
static int udev_settle(void) {
        char *argv[] = {(char *) "udevadm", (char *) "settle", (char *) "--timeout=120", NULL};
        pid_t pid;
        int status, r;

        r = posix_spawnp(&pid, "udevadm", NULL, NULL, argv, environ);
        if (r != 0)
                return -r;
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -ETIMEDOUT;
}

static void settle_or_warn(void) {
        int r = udev_settle();

        if (r < 0)
                fprintf(stderr, "bench-attach: warning: udevadm settle failed: %s\n", strerror(-r));
}

/* A sparse file of `size` bytes in the scratch directory, opened read-write. */
static int make_file(Bench *b, const char *prefix, uint64_t size, char **ret_path, int *ret_fd) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *path = NULL;

        path = strdup_printf("%s/%s-%06u", b->dir, prefix, b->file_counter++);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
        if (fd < 0)
                return -errno;
        if (ftruncate(fd, (off_t) size) < 0) {
                int r = -errno;

                (void) unlink(path);
                return r;
        }
        *ret_path = TAKE_PTR(path);
        *ret_fd = fd;
        fd = -EBADF;
        return 0;
}

static void unlink_freep(char **path) {
        if (*path) {
                (void) unlink(*path);
                free(*path);
        }
}
#define _cleanup_unlink_free_ _cleanup_(unlink_freep)

/* ---- loop devices the kernel creates on demand ------------------------------------------- */

static int scan_loop_numbers(bool **ret, size_t *ret_n) {
        _cleanup_free_ bool *set = NULL;
        size_t n = 0;
        struct dirent *de;
        DIR *d;

        d = opendir("/sys/block");
        if (!d)
                return -errno;
        while ((de = readdir(d))) {
                unsigned nr;
                char tail;

                if (sscanf(de->d_name, "loop%u%c", &nr, &tail) != 1)
                        continue;
                if (nr >= n) {
                        size_t m = nr + 1 > n * 2 ? nr + 1 : n * 2;
                        bool *l = realloc(set, m * sizeof(bool));

                        if (!l) {
                                closedir(d);
                                return -ENOMEM;
                        }
                        memset(l + n, 0, (m - n) * sizeof(bool));
                        set = l;
                        n = m;
                }
                set[nr] = true;
        }
        closedir(d);
        *ret = TAKE_PTR(set);
        *ret_n = n;
        return 0;
}

/*
 * Removes (LOOP_CTL_REMOVE) the loop devices the kernel created on demand for our bindings
 * (numbers our devices had that did not exist when we started) once they are idle again: a
 * thousand idle nodes would slow down everybody's enumeration afterwards. Devices other
 * people made during the run are left alone. Highest number first, because LOOP_CTL_GET_FREE
 * hands out the lowest idle device: a tool that looks for a free device while we remove gets
 * one we are not about to remove. Each removal holds the loop-control lock that loopmgrd and
 * systemd take around GET_FREE + configure, and the kernel refuses (EBUSY) for a device that
 * is bound or open.
 */
static void remove_idle_devices(Bench *b) {
        _cleanup_free_ bool *now = NULL, *ours = NULL;
        _cleanup_close_ int ctl = -EBADF;
        unsigned removed = 0, busy = 0, failed = 0;
        size_t n_now = 0;
        double t0 = now_usec();
        int r;

        r = scan_loop_numbers(&now, &n_now);
        if (r < 0) {
                fact(b, "idle loop devices were not removed: cannot read /sys/block: %s",
                     strerror(-r));
                return;
        }
        ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (ctl < 0) {
                fact(b, "idle loop devices were not removed: /dev/loop-control: %m");
                return;
        }
        ours = calloc(n_now ? n_now : 1, sizeof(bool));
        if (!ours)
                return;
        for (size_t i = 0; i < b->n_created; i++) {
                unsigned nr;
                char tail;

                if (sscanf(b->created[i]->node, "/dev/loop%u%c", &nr, &tail) == 1 && nr < n_now)
                        ours[nr] = true;
        }

        for (size_t nr = n_now; nr-- > 0;) {
                char path[64];

                if (!now[nr] || !ours[nr] || (nr < b->n_preexisting && b->preexisting[nr]))
                        continue;
                snprintf(path, sizeof(path), "/sys/block/loop%zu/loop", nr);
                if (access(path, F_OK) == 0) {
                        busy++; /* bound again, by somebody else since */
                        continue;
                }
                while (flock(ctl, LOCK_EX) < 0)
                        if (errno != EINTR)
                                break;
                r = ioctl(ctl, LOOP_CTL_REMOVE, (int) nr) < 0 ? -errno : 0;
                (void) flock(ctl, LOCK_UN);
                if (r == 0)
                        removed++;
                else if (r == -EBUSY || r == -ENODEV)
                        busy++;
                else
                        failed++;
        }
        fact(b,
             "removed %u idle loop devices the kernel had created on demand for this run in "
             "%.1f s (%u left because someone bound or opened them since, %u failed)",
             removed, (now_usec() - t0) / 1e6, busy, failed);
}

/* ---- scenarios --------------------------------------------------------------------------- */

/* One attach (timed in `row`) of a fresh file, then its detach (timed in `det`). Returns
 * false once either row has given up. */
static bool attach_detach_once(Bench *b, bool wait_udev, bool measure, Row *row, Row *det) {
        _cleanup_unlink_free_ char *file = NULL;
        _cleanup_close_ int fd = -EBADF;
        char *error = NULL;
        Created *c = NULL;
        double usec;
        int r;

        settle_or_warn();
        r = make_file(b, "fresh", MIB, &file, &fd);
        if (r < 0)
                return row_fail(
                        row, strdup_printf("cannot create a file in %s: %s", b->dir, strerror(-r)));
        r = attach(b, fd, wait_udev, 0, &c, &usec, &error);
        fd = safe_close(fd);
        if (r < 0)
                return row_fail(row, error);
        if (measure)
                row_add(b, row, usec);

        /* Detach is measured from a settled state too (a probe still running would make it
         * wait for udev's lock, which is udev's cost, not the daemon's). */
        settle_or_warn();
        r = detach(b, c, false, &usec, &error);
        if (r < 0)
                return row_fail(det, error) && row->n_failed < ROW_MAX_FAILURES;
        if (measure)
                row_add(b, det, usec);
        return row->n_failed < ROW_MAX_FAILURES && det->n_failed < ROW_MAX_FAILURES;
}

static void scenario_attach(Bench *b, unsigned population) {
        Row *rows[2], *det;
        bool going = true;

        rows[0] = row_new(b, population, "Attach, wait-udev=true");
        rows[1] = row_new(b, population, "Attach, wait-udev=false");
        det = row_new(b, population, "Detach, wait=true");

        fprintf(stderr,
                "bench-attach: attach/detach with %u bindings of ours: %u + %u warm-up "
                "iterations of each mode\n",
                population, b->iterations, b->warmup);
        for (unsigned i = 0; going && i < b->warmup + b->iterations; i++)
                for (unsigned k = 0; going && k < 2; k++) {
                        /* ABBA: each mode goes first and second equally often. */
                        unsigned mode = i % 2 == 0 ? k : 1 - k;

                        going = attach_detach_once(b, mode == 0, i >= b->warmup, rows[mode], det);
                }
        if (det->n == 0 && !det->error)
                det->error = strdup_printf("did not run: no attach succeeded");
}

typedef struct ChainSetup {
        Created *a, *b, *c;
        char *file;
        char *partition;
        int top_fd;
} ChainSetup;

static int open_block(const char *node, int flags, char **ret_error) {
        int fd;

        fd = open(node, flags | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                *ret_error = strdup_printf("cannot open %s: %m", node);
                return -errno;
        }
        return fd;
}

/* file -> loop A -> A's partition 1 (BLKPG, bytes 1-9 MiB) -> loop B -> loop C (offset 1 MiB). */
static int chain_build(Bench *b, ChainSetup *ch, char **ret_error) {
        struct blkpg_partition part = {
                .start = (long long) MIB,
                .length = (long long) (8 * MIB),
                .pno = 1,
        };
        struct blkpg_ioctl_arg arg = {
                .op = BLKPG_ADD_PARTITION,
                .datalen = sizeof(part),
                .data = &part,
        };
        _cleanup_close_ int fd = -EBADF;
        char *error = NULL;
        struct stat st;
        int r;

        r = make_file(b, "chain", 16 * MIB, &ch->file, &fd);
        if (r < 0) {
                *ret_error = strdup_printf("cannot create the chain's file: %s", strerror(-r));
                return r;
        }
        r = attach(b, fd, true, 0, &ch->a, NULL, &error);
        fd = safe_close(fd);
        if (r < 0) {
                *ret_error = strdup_printf("attaching loop A over the file: %s", error);
                free(error);
                return r;
        }

        fd = open_block(ch->a->node, O_RDONLY, ret_error);
        if (fd < 0)
                return fd;
        if (ioctl(fd, BLKPG, &arg) < 0) {
                r = -errno;
                *ret_error = strdup_printf("adding partition 1 to %s with BLKPG: %s", ch->a->node,
                                           strerror(-r));
                return r;
        }
        fd = safe_close(fd);

        /* devtmpfs creates the node with the partition; udev then probes it. */
        ch->partition = strdup_printf("%sp1", ch->a->node);
        for (unsigned i = 0; i < 50 && (stat(ch->partition, &st) < 0 || !S_ISBLK(st.st_mode)); i++)
                (void) usleep(100 * 1000);
        settle_or_warn();

        fd = open_block(ch->partition, O_RDWR, ret_error);
        if (fd < 0)
                return fd;
        r = attach(b, fd, true, 0, &ch->b, NULL, &error);
        fd = safe_close(fd);
        if (r < 0) {
                *ret_error = strdup_printf("attaching loop B over the partition %s: %s",
                                           ch->partition, error);
                free(error);
                return r;
        }

        fd = open_block(ch->b->node, O_RDWR, ret_error);
        if (fd < 0)
                return fd;
        r = attach(b, fd, true, MIB, &ch->c, NULL, &error);
        fd = safe_close(fd);
        if (r < 0) {
                *ret_error = strdup_printf("attaching loop C over %s at offset 1 MiB: %s",
                                           ch->b->node, error);
                free(error);
                return r;
        }

        fd = open_block(ch->c->node, O_RDONLY, ret_error);
        if (fd < 0)
                return fd;
        ch->top_fd = fd;
        fd = -EBADF;
        return 0;
}

/* Top first: each layer holds the one below it open. loopmgrd deletes A's partition when it
 * detaches A. What fails here is left to the final clean-up. */
static void chain_teardown(Bench *b, ChainSetup *ch) {
        Created *layers[] = {ch->c, ch->b, ch->a};

        ch->top_fd = safe_close(ch->top_fd);
        for (size_t i = 0; i < ELEMENTSOF(layers); i++) {
                char *error = NULL;

                if (!layers[i] || layers[i]->gone)
                        continue;
                if (detach(b, layers[i], true, NULL, &error) < 0) {
                        fprintf(stderr, "bench-attach: cannot detach %s of the chain: %s\n",
                                layers[i]->node, error);
                        free(error);
                }
        }
        if (ch->file)
                (void) unlink(ch->file);
        free(ch->file);
        free(ch->partition);
        *ch = (ChainSetup){.top_fd = -EBADF};
}

static void scenario_resolve(Bench *b, unsigned population) {
        _cleanup_unlink_free_ char *plain_file = NULL;
        _cleanup_close_ int plain_fd = -EBADF;
        ChainSetup ch = {.top_fd = -EBADF};
        Row *rows[2];
        int fds[2];
        char *error = NULL;
        int r;

        rows[0] = row_new(b, population, "Resolve, top of the 4-layer chain");
        rows[1] = row_new(b, population, "Resolve, plain file");

        r = make_file(b, "plain", 16 * MIB, &plain_file, &plain_fd);
        if (r < 0) {
                rows[1]->error = strdup_printf("cannot create the file: %s", strerror(-r));
                rows[1]->n_failed = ROW_MAX_FAILURES;
        }

        r = chain_build(b, &ch, &error);
        if (r < 0) {
                rows[0]->error = strdup_printf("setting up the chain: %s", error);
                rows[0]->n_failed = ROW_MAX_FAILURES;
                fprintf(stderr, "bench-attach: %s\n", rows[0]->error);
                free(error);
        }
        fds[0] = ch.top_fd;
        fds[1] = plain_fd;
        settle_or_warn();

        /* What the daemon says these are, once, for the record. */
        for (unsigned k = 0; k < 2; k++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                _cleanup_free_ char *text = NULL;

                if (rows[k]->n_failed >= ROW_MAX_FAILURES)
                        continue;
                if (resolve(b, fds[k], NULL, &reply, &error) < 0) {
                        (void) row_fail(rows[k], error);
                        continue;
                }
                text = describe_identity(reply);
                fact(b, "%s, %u bindings of ours: %s", rows[k]->label, population,
                     text ?: "(cannot describe)");
        }

        fprintf(stderr,
                "bench-attach: Resolve with %u bindings of ours: %u + %u warm-up "
                "iterations of each\n",
                population, b->resolve_iterations, b->warmup);
        for (unsigned i = 0; i < b->warmup + b->resolve_iterations; i++)
                for (unsigned k = 0; k < 2; k++) {
                        unsigned which = i % 2 == 0 ? k : 1 - k;
                        double usec;

                        if (rows[which]->n_failed >= ROW_MAX_FAILURES)
                                continue;
                        if (resolve(b, fds[which], &usec, NULL, &error) < 0)
                                (void) row_fail(rows[which], error);
                        else if (i >= b->warmup)
                                row_add(b, rows[which], usec);
                }

        chain_teardown(b, &ch);
}

typedef struct Snapshot {
        const char *point;
        unsigned population;
        unsigned objects, n_others;
        unsigned long rss_kb, hwm_kb;
        bool have_objects, have_rss;
} Snapshot;

static void snapshot(Bench *b, Snapshot *s, const char *point, unsigned population) {
        _cleanup_free_ char *others = NULL;
        char *error = NULL;

        *s = (Snapshot){.point = point, .population = population};
        settle_or_warn();
        if (get_managed_objects(b, NULL, &s->objects, &s->n_others, &others, &error) >= 0) {
                s->have_objects = true;
                if (others)
                        fact(b, "%s: %u objects are not devices of this run: %s%s", point,
                             s->n_others, others, s->n_others > 8 ? ", ..." : "");
        } else {
                fprintf(stderr, "bench-attach: GetManagedObjects failed: %s\n", error);
                free(error);
        }
        s->have_rss = read_status_kb(b->daemon_pid, "VmRSS", &s->rss_kb) >= 0 &&
                      read_status_kb(b->daemon_pid, "VmHWM", &s->hwm_kb) >= 0;
}

static void scenario_objects(Bench *b, unsigned population) {
        Row *row = row_new(b, population, "GetManagedObjects");

        for (unsigned i = 0; i < b->warmup + b->gmo_iterations; i++) {
                char *error = NULL;
                double usec;

                if (get_managed_objects(b, &usec, NULL, NULL, NULL, &error) < 0) {
                        if (!row_fail(row, error))
                                return;
                } else if (i >= b->warmup)
                        row_add(b, row, usec);
        }
}

typedef struct Population {
        Created **devices;
        char **files;
        size_t n;
} Population;

/* Grows the population to `target` bindings on separate sparse files, wait-udev=false (the
 * arrays are sized for the largest count of --bindings). Stops at the first failure
 * (NoFreeDevice when the kernel runs out) and keeps what it has; returns false then. */
static bool populate(Bench *b, Population *p, unsigned target) {
        unsigned max = b->n_bindings > 0 ? b->bindings[b->n_bindings - 1] : 1;
        size_t n0 = p->n;
        double t0, t1, t2;
        bool complete = true;

        if (!p->devices)
                p->devices = calloc(max ? max : 1, sizeof(Created *));
        if (!p->files)
                p->files = calloc(max ? max : 1, sizeof(char *));
        if (!p->devices || !p->files) {
                fputs("bench-attach: out of memory\n", stderr);
                exit(EXIT_FAILURE);
        }

        fprintf(stderr, "bench-attach: growing to %u bindings\n", target);
        t0 = now_usec();
        while (p->n < target) {
                _cleanup_close_ int fd = -EBADF;
                char *error = NULL;
                int r;

                r = make_file(b, "bind", MIB, &p->files[p->n], &fd);
                if (r < 0) {
                        fact(b, "creating bindings stopped after %zu: cannot create a file: %s",
                             p->n, strerror(-r));
                        complete = false;
                        break;
                }
                r = attach(b, fd, false, 0, &p->devices[p->n], NULL, &error);
                if (r < 0) {
                        (void) unlink(p->files[p->n]);
                        free(p->files[p->n]);
                        p->files[p->n] = NULL;
                        fact(b, "creating bindings stopped after %zu of %u: %s", p->n, target,
                             error);
                        free(error);
                        complete = false;
                        break;
                }
                p->n++;
                if (p->n % 100 == 0)
                        fprintf(stderr, "bench-attach:   %zu\n", p->n);
        }
        t1 = now_usec();
        settle_or_warn();
        t2 = now_usec();
        fact(b,
             "created %zu bindings through the daemon (wait-udev=false, %zu to %zu) in %.1f s "
             "(%.2f ms each); udev settled %.1f s later",
             p->n - n0, n0, p->n, (t1 - t0) / 1e6,
             p->n > n0 ? (t1 - t0) / 1e3 / (double) (p->n - n0) : 0.0, (t2 - t1) / 1e6);
        return complete;
}

static void depopulate(Bench *b, Population *p) {
        unsigned failed = 0;
        double t0, t1;

        fprintf(stderr, "bench-attach: detaching %zu bindings\n", p->n);
        t0 = now_usec();
        for (size_t i = p->n; i-- > 0;) {
                char *error = NULL;

                if (detach(b, p->devices[i], false, NULL, &error) < 0) {
                        if (failed++ == 0)
                                fact(b, "detaching the bindings: first failure: %s", error);
                        free(error);
                }
                (void) unlink(p->files[i]);
                free(p->files[i]);
        }
        t1 = now_usec();
        fact(b, "detached %zu bindings (Detach wait=true, newest first) in %.1f s, %u failed", p->n,
             (t1 - t0) / 1e6, failed);
        free(p->devices);
        free(p->files);
        *p = (Population){};
}

/* Every device we made and still hold, newest first, whatever happened before. Returns how
 * many could not be detached. */
static unsigned cleanup_created(Bench *b) {
        unsigned failed = 0;

        for (size_t i = b->n_created; i-- > 0;) {
                Created *c = b->created[i];
                char *error = NULL;

                if (!c->gone && detach(b, c, true, NULL, &error) < 0) {
                        fprintf(stderr,
                                "bench-attach: warning: cannot detach %s (diskseq %" PRIu64
                                "): %s\n",
                                c->node, c->diskseq, error);
                        free(error);
                        failed++;
                }
        }
        return failed;
}

/* ---- output ------------------------------------------------------------------------------ */

static const Row *find_row(const Bench *b, const char *label, unsigned population) {
        for (size_t i = 0; i < b->n_rows; i++)
                if (b->rows[i].population == population && strcmp(b->rows[i].label, label) == 0)
                        return &b->rows[i];
        return NULL;
}

/* A short key for the --metrics lines of a row. */
static const char *row_key(const char *label) {
        static const struct {
                const char *label, *key;
        } keys[] = {
                {"GetManagedObjects", "gmo"},
                {"Attach, wait-udev=true", "attach-udev"},
                {"Attach, wait-udev=false", "attach-nowait"},
                {"Detach, wait=true", "detach"},
                {"Resolve, top of the 4-layer chain", "resolve-chain"},
                {"Resolve, plain file", "resolve-plain"},
        };

        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                if (strcmp(keys[i].label, label) == 0)
                        return keys[i].key;
        return NULL;
}

/* "key value" lines for bench/report.sh (targets and plots). */
static void print_metrics(Bench *b, FILE *f, const Snapshot *snaps, size_t n_snaps) {
        for (size_t i = 0; i < b->n_rows; i++) {
                Row *row = &b->rows[i];
                const char *key = row_key(row->label);
                Stats st;

                if (!key || !row_usable(row))
                        continue;
                st = row_stats(row);
                fprintf(f, "s4.%u.%s.median %.4f\n", row->population, key, st.median / 1e3);
                fprintf(f, "s4.%u.%s.p99 %.4f\n", row->population, key, st.p99 / 1e3);
                if (row->n_sched > 0)
                        fprintf(f, "s4.%u.%s.cpu %.4f\n", row->population, key,
                                row->cpu_usec / 1e3 / (double) row->n_sched);
        }
        for (size_t i = 0; i < n_snaps; i++) {
                const Snapshot *s = &snaps[i];

                if (!s->have_rss)
                        continue;
                if (strcmp(s->point, "after detaching everything") == 0)
                        fprintf(f, "s4.after.rss_kb %lu\n", s->rss_kb);
                else
                        fprintf(f, "s4.%u.rss_kb %lu\n", s->population, s->rss_kb);
        }
}

static void print_results(Bench *b, FILE *f, const unsigned *loaded, size_t n_loaded,
                          const Snapshot *snaps, size_t n_snaps) {
        Stats stats[MAX_ROWS] = {};
        bool any_notes = false;

        for (size_t i = 0; i < b->n_rows; i++)
                if (row_usable(&b->rows[i]))
                        stats[i] = row_stats(&b->rows[i]);

        fputs("#### Latency (client round trip, milliseconds)\n\n", f);
        fputs("| scenario | bindings of ours | n | median | p90 | p99 | max | daemon CPU / call "
              "| daemon CPU wait / call |\n",
              f);
        fputs("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n", f);
        for (size_t i = 0; i < b->n_rows; i++) {
                const Row *row = &b->rows[i];

                fprintf(f, "| %s | %u | ", row->label, row->population);
                if (!row_usable(row)) {
                        fputs("0 | failed: ", f);
                        put_cell(f, row->error ?: "no sample");
                        fputs(" | | | | | |\n", f);
                        continue;
                }
                fprintf(f, "%zu | %.3f | %.3f | %.3f | %.3f | ", row->n, stats[i].median / 1e3,
                        stats[i].p90 / 1e3, stats[i].p99 / 1e3, stats[i].max / 1e3);
                if (row->n_sched > 0)
                        fprintf(f, "%.3f | %.3f |\n", row->cpu_usec / 1e3 / (double) row->n_sched,
                                row->wait_usec / 1e3 / (double) row->n_sched);
                else
                        fputs("n/a | n/a |\n", f);
        }

        for (size_t i = 0; i < b->n_rows; i++) {
                const Row *row = &b->rows[i];

                if (!row_usable(row) || row->n_failed == 0)
                        continue;
                if (!any_notes)
                        fputs("\nFailed iterations (not in the figures):\n\n", f);
                any_notes = true;
                fprintf(f, "* %s, %u bindings: %u failed, first: ", row->label, row->population,
                        row->n_failed);
                put_cell(f, row->error);
                fputc('\n', f);
        }

        if (n_loaded == 0)
                fputs("\n#### Ratio (not computed: no binding could be created for a loaded "
                      "case)\n\n",
                      f);
        for (size_t l = 0; l < n_loaded; l++) {
                unsigned population = loaded[l];

                fprintf(f,
                        "\n#### Ratio %u bindings / 0 bindings (issue target for Attach: at most "
                        "1.2)\n\n",
                        population);
                fputs("| scenario | median | p90 | p99 | daemon CPU / call |\n"
                      "|---|---:|---:|---:|---:|\n",
                      f);
                for (size_t i = 0; i < b->n_rows; i++) {
                        const Row *zero = &b->rows[i], *full;
                        Stats z, w;

                        if (zero->population != 0)
                                continue;
                        full = find_row(b, zero->label, population);
                        fprintf(f, "| %s | ", zero->label);
                        if (!full || !row_usable(zero) || !row_usable(full)) {
                                fputs("n/a (a side failed or did not run) | | | |\n", f);
                                continue;
                        }
                        z = stats[i];
                        w = stats[full - b->rows];
                        fprintf(f, "%.2f | %.2f | %.2f | ", w.median / z.median, w.p90 / z.p90,
                                w.p99 / z.p99);
                        if (zero->n_sched > 0 && full->n_sched > 0 && zero->cpu_usec > 0)
                                fprintf(f, "%.2f |\n",
                                        (full->cpu_usec / (double) full->n_sched) /
                                                (zero->cpu_usec / (double) zero->n_sched));
                        else
                                fputs("n/a |\n", f);
                }
        }

        fputs("\n#### Daemon memory\n\n", f);
        fputs("| point | bindings of ours | objects on the bus (not ours) | VmRSS (KiB) | "
              "VmHWM (KiB) |\n",
              f);
        fputs("|---|---:|---:|---:|---:|\n", f);
        for (size_t i = 0; i < n_snaps; i++) {
                const Snapshot *s = &snaps[i];

                fprintf(f, "| %s | %u | ", s->point, s->population);
                if (s->have_objects)
                        fprintf(f, "%u (%u) | ", s->objects, s->n_others);
                else
                        fputs("failed | ", f);
                if (s->have_rss)
                        fprintf(f, "%lu | %lu |\n", s->rss_kb, s->hwm_kb);
                else
                        fputs("n/a | n/a |\n", f);
        }

        fputs("\n#### Notes from the run\n\n", f);
        for (size_t i = 0; i < b->n_facts; i++) {
                fputs("* ", f);
                put_cell(f, b->facts[i]);
                fputc('\n', f);
        }
}

static void run_phase(Bench *b, void (*scenario)(Bench *b, unsigned population),
                      unsigned population, const char *what) {
        double t0 = now_usec();

        scenario(b, population);
        fprintf(stderr, "bench-attach: %s with %u bindings of ours took %.1f s\n", what, population,
                (now_usec() - t0) / 1e6);
}

/* ---- main -------------------------------------------------------------------------------- */

static void help(void) {
        printf("bench-attach --dir DIR [OPTIONS]\n\n"
               "Measures loopmgrd from a client on DBUS_SYSTEM_BUS_ADDRESS (run it through\n"
               "bench/run.sh, which sets up the bus, the daemon and the scratch directory).\n\n"
               "  --dir DIR                  scratch directory for the backing files\n"
               "  --record FILE              append \"node diskseq\" of every device made\n"
               "  --markdown FILE            write the result tables there as well\n"
               "  --bindings N[,N...]        bindings of ours for the loaded cases, ascending\n"
               "                             (100,1000)\n"
               "  --metrics FILE             write \"key value\" lines there (bench/report.sh)\n"
               "  --iterations N             attach/detach iterations per mode and case (150)\n"
               "  --resolve-iterations N     Resolve iterations per target and case (1000)\n"
               "  --gmo-iterations N         GetManagedObjects iterations per case (20)\n"
               "  --warmup N                 warm-up iterations before each measurement (10)\n"
               "  --keep-idle-devices        do not LOOP_CTL_REMOVE the loop devices the kernel\n"
               "                             created on demand during the run\n");
}

static int parse_unsigned(const char *s, unsigned *ret);

/* "100,1000": ascending counts, at most MAX_POPULATIONS; "0" alone means no loaded case. */
static int parse_bindings(const char *s, unsigned *ret, size_t *ret_n) {
        _cleanup_free_ char *copy = strdup(s);
        unsigned v[MAX_POPULATIONS];
        size_t n = 0;
        char *save = NULL;

        if (!copy)
                return -ENOMEM;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (n >= MAX_POPULATIONS || parse_unsigned(t, &v[n]) < 0)
                        return -EINVAL;
                if (v[n] == 0)
                        continue;
                if (n > 0 && v[n] <= v[n - 1])
                        return -EINVAL;
                n++;
        }
        memcpy(ret, v, n * sizeof(unsigned));
        *ret_n = n;
        return 0;
}

static int parse_unsigned(const char *s, unsigned *ret) {
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno != 0 || end == s || *end != 0 || s[0] == '-' || v > 1000000)
                return -EINVAL;
        *ret = (unsigned) v;
        return 0;
}

int main(int argc, char *argv[]) {
        enum {
                ARG_DIR = 0x100,
                ARG_RECORD,
                ARG_MARKDOWN,
                ARG_BINDINGS,
                ARG_ITERATIONS,
                ARG_RESOLVE_ITERATIONS,
                ARG_GMO_ITERATIONS,
                ARG_WARMUP,
                ARG_KEEP_IDLE,
                ARG_METRICS,
        };
        static const struct option options[] = {
                {"help", no_argument, NULL, 'h'},
                {"dir", required_argument, NULL, ARG_DIR},
                {"record", required_argument, NULL, ARG_RECORD},
                {"markdown", required_argument, NULL, ARG_MARKDOWN},
                {"bindings", required_argument, NULL, ARG_BINDINGS},
                {"iterations", required_argument, NULL, ARG_ITERATIONS},
                {"resolve-iterations", required_argument, NULL, ARG_RESOLVE_ITERATIONS},
                {"gmo-iterations", required_argument, NULL, ARG_GMO_ITERATIONS},
                {"warmup", required_argument, NULL, ARG_WARMUP},
                {"keep-idle-devices", no_argument, NULL, ARG_KEEP_IDLE},
                {"metrics", required_argument, NULL, ARG_METRICS},
                {}};
        Bench b = {
                .bindings = {100, 1000},
                .n_bindings = 2,
                .iterations = 150,
                .resolve_iterations = 1000,
                .gmo_iterations = 20,
                .warmup = 10,
                .remove_idle = true,
        };
        const char *record = NULL, *markdown = NULL, *metrics = NULL;
        unsigned loaded[MAX_POPULATIONS];
        size_t n_loaded = 0;
        Population pop = {};
        Snapshot snaps[MAX_POPULATIONS + 2];
        size_t n_snaps = 0;
        unsigned left;
        double t0, t1;
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
                case ARG_RECORD:
                        record = optarg;
                        break;
                case ARG_MARKDOWN:
                        markdown = optarg;
                        break;
                case ARG_BINDINGS:
                        r = parse_bindings(optarg, b.bindings, &b.n_bindings);
                        if (r < 0) {
                                fprintf(stderr,
                                        "bench-attach: --bindings takes ascending counts "
                                        "separated by commas, not '%s'\n",
                                        optarg);
                                return 2;
                        }
                        break;
                case ARG_METRICS:
                        metrics = optarg;
                        break;
                case ARG_ITERATIONS:
                        target = &b.iterations;
                        break;
                case ARG_RESOLVE_ITERATIONS:
                        target = &b.resolve_iterations;
                        break;
                case ARG_GMO_ITERATIONS:
                        target = &b.gmo_iterations;
                        break;
                case ARG_WARMUP:
                        target = &b.warmup;
                        break;
                case ARG_KEEP_IDLE:
                        b.remove_idle = false;
                        break;
                default:
                        return 2;
                }
                if (target && parse_unsigned(optarg, target) < 0) {
                        fprintf(stderr, "bench-attach: '%s' is not a count\n", optarg);
                        return 2;
                }
        }
        if (optind < argc || !b.dir) {
                fprintf(stderr, "bench-attach: %s (see --help)\n",
                        b.dir ? "unexpected arguments" : "--dir is required");
                return 2;
        }
        if (b.iterations == 0 || b.resolve_iterations == 0 || b.gmo_iterations == 0) {
                fputs("bench-attach: iteration counts must be at least 1\n", stderr);
                return 2;
        }

        if (record) {
                b.record = fopen(record, "ae");
                if (!b.record) {
                        fprintf(stderr, "bench-attach: cannot open %s: %m\n", record);
                        return EXIT_FAILURE;
                }
        }
        r = scan_loop_numbers(&b.preexisting, &b.n_preexisting);
        if (r < 0) {
                fprintf(stderr, "bench-attach: cannot read /sys/block: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        r = sd_bus_open_system(&b.bus);
        if (r < 0) {
                fprintf(stderr, "bench-attach: cannot connect to the system bus: %s\n",
                        strerror(-r));
                return EXIT_FAILURE;
        }
        r = get_daemon_pid(&b, &b.daemon_pid);
        if (r < 0)
                return EXIT_FAILURE;

        t0 = now_usec();

        /* Empty: no binding of ours (other users' devices on the host are counted in the
         * objects column). */
        snapshot(&b, &snaps[n_snaps++], "start", 0);
        run_phase(&b, scenario_objects, 0, "GetManagedObjects");
        run_phase(&b, scenario_attach, 0, "attach/detach");
        run_phase(&b, scenario_resolve, 0, "Resolve");

        for (size_t l = 0; l < b.n_bindings; l++) {
                bool complete = populate(&b, &pop, b.bindings[l]);
                unsigned n = (unsigned) pop.n;

                /* A short population (the kernel ran out) is measured once, at what it got. */
                if (n == 0 || (n_loaded > 0 && loaded[n_loaded - 1] == n))
                        break;
                loaded[n_loaded++] = n;
                snapshot(&b, &snaps[n_snaps++], "loaded", n);
                run_phase(&b, scenario_objects, n, "GetManagedObjects");
                run_phase(&b, scenario_attach, n, "attach/detach");
                run_phase(&b, scenario_resolve, n, "Resolve");
                if (!complete)
                        break;
        }
        depopulate(&b, &pop);

        left = cleanup_created(&b);
        t1 = now_usec();
        settle_or_warn();
        fact(&b, "udev settled %.1f s after the last detach", (now_usec() - t1) / 1e6);
        snapshot(&b, &snaps[n_snaps++], "after detaching everything", 0);
        if (b.remove_idle)
                remove_idle_devices(&b);
        fact(&b, "bench-attach ran for %.0f s in all, its set-up and clean-up included",
             (now_usec() - t0) / 1e6);

        putchar('\n');
        print_results(&b, stdout, loaded, n_loaded, snaps, n_snaps);
        if (metrics) {
                FILE *f = fopen(metrics, "ae");

                if (!f) {
                        fprintf(stderr, "bench-attach: cannot write %s: %m\n", metrics);
                        r = -errno;
                } else {
                        print_metrics(&b, f, snaps, n_snaps);
                        if (fclose(f) != 0)
                                r = -errno;
                }
        }
        if (markdown) {
                FILE *f = fopen(markdown, "we");

                if (!f) {
                        fprintf(stderr, "bench-attach: cannot write %s: %m\n", markdown);
                        r = -errno;
                } else {
                        print_results(&b, f, loaded, n_loaded, snaps, n_snaps);
                        if (fclose(f) != 0)
                                r = -errno;
                }
        }

        for (size_t i = 0; i < b.n_rows; i++) {
                free(b.rows[i].label);
                free(b.rows[i].v);
                free(b.rows[i].error);
        }
        for (size_t i = 0; i < b.n_facts; i++)
                free(b.facts[i]);
        for (size_t i = 0; i < b.n_created; i++) {
                free(b.created[i]->path);
                free(b.created[i]->node);
                free(b.created[i]);
        }
        free(b.created);
        free(b.preexisting);
        if (b.record)
                fclose(b.record);
        sd_bus_flush_close_unref(b.bus);
        if (left > 0) {
                fprintf(stderr, "bench-attach: %u devices of this run could not be detached\n",
                        left);
                return EXIT_FAILURE;
        }
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
