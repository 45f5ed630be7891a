/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Scenario 6 of bench-peers: a slow Mount and everybody else, loopmgrd and udisks2 side by
 * side. An ext4 image is served by tests/slowfs.c (FUSE, direct reads). For each peer and
 * round: the image is attached read-only while its reads are fast (so udev's probe is done),
 * slowfs is made slow (every read sleeps --slow-read-msec) and the device's page cache is
 * dropped, and one client sends the peer's Mount without waiting for it. Until its answer
 * comes, a second client (its own bus connection) reads the peer's Version property and
 * attaches and detaches an unrelated 1 MiB image, each call timed, 20 ms apart. Then slowfs is
 * made fast again and the mount and the device are taken down.
 *
 * loopmgr: Device.Mount({}) and Device.Unmount, Manager.Attach(wait-udev) and Detach(wait) for
 * the other client. udisks2: Filesystem.Mount and Filesystem.Unmount, Manager.LoopSetup and
 * Loop.Delete. Every device either makes goes to the record at once; bench/run.sh unmounts and
 * takes down whatever a failed run leaves.
 */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/fs.h>

#include "loopmgr-bus.h"

#include "bench/bench-peers.h"

#define SLOW_LABEL           "LoopmgrSlow"
#define SLOW_IMAGE_MIB       16
#define MOUNT_TIMEOUT_USEC   (300ULL * 1000ULL * 1000ULL)
#define OTHERS_PAUSE_USEC    20000
#define FS_WAIT_USEC         (30.0 * 1e6)
#define SLOWFS_WAIT_USEC     (10.0 * 1e6)
#define UDISKS_MANAGER_IF    "org.freedesktop.UDisks2.Manager"
#define UDISKS_FILESYSTEM_IF "org.freedesktop.UDisks2.Filesystem"

typedef struct MountPeer {
        const char *key, *label;
        bool udisks;
        /* the other client's attach and detach, the same as scenario 1's */
        int (*attach)(Client *c, Handle *h, char **ret_error);
        int (*detach)(Client *c, Handle *h, char **ret_error);
} MountPeer;

static const MountPeer mount_peers[] = {
        {"loopmgr-dbus",
         "loopmgr: Device.Mount; the other client: Version, Attach(wait-udev) + Detach(wait)",
         false, loopmgr_attach_udev, loopmgr_detach},
        {"udisks-dbus",
         "udisks2: Filesystem.Mount; the other client: Version, LoopSetup + Loop.Delete", true,
         udisks_attach, udisks_detach},
};

#define N_MOUNT_PEERS (sizeof(mount_peers) / sizeof(mount_peers[0]))

struct MountResult {
        Series version, attach, detach, others; /* others: all three kinds */
        Series mount;                           /* the slow Mounts themselves */
        unsigned errors;
        char *first_error;
        bool skipped;
};

/* slowfs, running over the scratch directory's slowfs/ */
typedef struct Slow {
        pid_t pid;
        char *dir, *image, *source;
} Slow;

static void result_fail(MountResult *res, const char *key, char *error) {
        note_error(&res->errors, &res->first_error, key, error);
}

static void slow_stop(Slow *s) {
        if (s->pid > 0) {
                (void) kill(s->pid, SIGTERM);
                (void) waitpid(s->pid, NULL, 0);
        }
        if (s->dir) {
                (void) umount2(s->dir, MNT_DETACH);
                (void) rmdir(s->dir);
        }
        if (s->source)
                (void) unlink(s->source);
        free(s->dir);
        free(s->image);
        free(s->source);
        *s = (Slow){};
}

/* The ext4 image, and slowfs serving it (fast for now) as <dir>/slowfs/image. */
static int slow_start(Bench *b, Slow *s, char **ret_error) {
        _cleanup_free_ char *out = NULL;
        struct stat dir_st, st;
        double deadline;
        int fd, r;

        *s = (Slow){};
        s->source = strdup_printf("%s/slow-source.img", b->dir);
        s->dir = strdup_printf("%s/slowfs", b->dir);
        s->image = strdup_printf("%s/image", s->dir);
        fd = open(s->source, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || ftruncate(fd, (off_t) SLOW_IMAGE_MIB * (off_t) MIB) < 0) {
                *ret_error = strdup_printf("cannot create %s: %m", s->source);
                if (fd >= 0)
                        close(fd);
                return -errno;
        }
        close(fd);
        char *mkfs[] = {(char *) "mkfs.ext4", (char *) "-q", (char *) "-F", (char *) "-L",
                        (char *) SLOW_LABEL,  s->source,     NULL};
        r = run_capture(mkfs, &out);
        if (r < 0) {
                *ret_error = strdup_printf("mkfs.ext4 %s failed: %s", s->source, out ?: errstr(r));
                return r;
        }
        if (mkdir(s->dir, 0755) < 0 || stat(s->dir, &dir_st) < 0) {
                *ret_error = strdup_printf("cannot make %s: %m", s->dir);
                return -errno;
        }
        s->pid = fork();
        if (s->pid < 0) {
                *ret_error = strdup_printf("cannot fork: %m");
                return -errno;
        }
        if (s->pid == 0) {
                _cleanup_free_ char *log = strdup_printf("%s/slowfs.log", b->dir);
                int log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
                char delay[16];

                /* libfuse's chatter goes to the scratch directory, not between the tables */
                if (log_fd >= 0) {
                        (void) dup2(log_fd, STDOUT_FILENO);
                        (void) dup2(log_fd, STDERR_FILENO);
                }
                snprintf(delay, sizeof(delay), "%u", b->slow_read_msec);
                execl(b->slowfs, b->slowfs, s->source, s->dir, delay, (char *) NULL);
                dprintf(log_fd, "bench-peers: cannot run %s: %m\n", b->slowfs);
                _exit(127);
        }
        for (deadline = now_usec() + SLOWFS_WAIT_USEC;;) {
                if (stat(s->image, &st) == 0 && st.st_dev != dir_st.st_dev)
                        return 0;
                if (now_usec() > deadline || waitpid(s->pid, NULL, WNOHANG) == s->pid) {
                        s->pid = 0;
                        *ret_error = strdup_printf("%s did not come up on %s (log: %s/slowfs.log)",
                                                   b->slowfs, s->dir, b->dir);
                        return -ETIMEDOUT;
                }
                (void) usleep(10000);
        }
}

/* From now on every read of the image takes --slow-read-msec; the device's page cache is
 * dropped, so the probe and mount(2) read it again. */
static int slow_go(Slow *s, const char *node, char **ret_error) {
        _cleanup_close_ int fd = -EBADF;

        if (kill(s->pid, SIGUSR1) < 0) {
                *ret_error = strdup_printf("cannot signal slowfs: %m");
                return -errno;
        }
        fd = open(node, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0 || ioctl(fd, BLKFLSBUF, 0) < 0) {
                *ret_error = strdup_printf("cannot drop the page cache of %s: %m", node);
                return -errno;
        }
        return 0;
}

static void slow_fast(Slow *s) {
        (void) kill(s->pid, SIGUSR2);
}

/* ---- the peers' calls ---------------------------------------------------------------------- */

static int peer_attach_slow(const MountPeer *p, Client *c, Handle *h, const char *image,
                            char **ret_error) {
        double deadline;
        int r;

        if (!p->udisks)
                return loopmgr_attach_file(c, h, image, true, true, ret_error);
        r = udisks_attach_file(c, h, image, true, ret_error);
        if (r < 0)
                return r;
        /* udisksd adds the Filesystem interface once udev's probe found ext4. */
        for (deadline = now_usec() + FS_WAIT_USEC;;) {
                _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;

                r = sd_bus_get_property(c->bus, UDISKS_BUS_NAME, h->object, UDISKS_FILESYSTEM_IF,
                                        "MountPoints", &e, &reply, "aay");
                if (r >= 0)
                        return 0;
                if (now_usec() > deadline) {
                        _cleanup_free_ char *why = bus_error_string(&e, r);

                        *ret_error = strdup_printf("udisksd did not show a file system on %s "
                                                   "within %.0f s: %s",
                                                   h->node, FS_WAIT_USEC / 1e6, why);
                        return -ETIMEDOUT;
                }
                (void) usleep(10000);
        }
}

static int peer_version(const MountPeer *p, Client *c, char **ret_error) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *v = NULL;
        int r;

        if (p->udisks)
                r = sd_bus_get_property_string(c->bus, UDISKS_BUS_NAME, UDISKS_MANAGER_PATH,
                                               UDISKS_MANAGER_IF, "Version", &e, &v);
        else
                r = sd_bus_get_property_string(c->bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                               LOOPMGR_MANAGER_INTERFACE, "Version", &e, &v);
        if (r < 0) {
                _cleanup_free_ char *why = bus_error_string(&e, r);

                *ret_error = strdup_printf("Version: %s", why);
        }
        return r;
}

/* The Mount in flight: its answer, when it came. */
typedef struct Pending {
        bool done;
        double t_done;
        char *mount_point, *error;
} Pending;

static int on_mount_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Pending *pe = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        const char *mp;
        int r;

        (void) ret_error;
        pe->done = true;
        pe->t_done = now_usec();
        if (e) {
                _cleanup_free_ char *why = bus_error_string(e, -EIO);

                pe->error = strdup_printf("Mount: %s", why);
        } else if ((r = sd_bus_message_read(m, "s", &mp)) < 0)
                pe->error = strdup_printf("cannot parse the Mount reply: %s", errstr(r));
        else
                pe->mount_point = strdup_printf("%s", mp);
        return 0;
}

static int peer_mount_send(const MountPeer *p, Client *c, const Handle *h, Pending *pe,
                           sd_bus_slot **ret_slot, char **ret_error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        if (p->udisks)
                r = sd_bus_message_new_method_call(c->bus, &m, UDISKS_BUS_NAME, h->object,
                                                   UDISKS_FILESYSTEM_IF, "Mount");
        else
                r = sd_bus_message_new_method_call(c->bus, &m, LOOPMGR_BUS_NAME, h->object,
                                                   LOOPMGR_DEVICE_INTERFACE, "Mount");
        if (r >= 0)
                r = sd_bus_message_append(m, "a{sv}", 1, "auth.no_user_interaction", "b", 1);
        if (r >= 0)
                r = sd_bus_call_async(c->bus, ret_slot, m, on_mount_reply, pe, MOUNT_TIMEOUT_USEC);
        if (r >= 0)
                r = sd_bus_flush(c->bus);
        if (r < 0)
                *ret_error = strdup_printf("cannot send Mount: %s", errstr(r));
        return r;
}

static int peer_unmount(const MountPeer *p, Client *c, const Handle *h, char **ret_error) {
        _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
        int r;

        if (p->udisks)
                r = sd_bus_call_method(c->bus, UDISKS_BUS_NAME, h->object, UDISKS_FILESYSTEM_IF,
                                       "Unmount", &e, NULL, "a{sv}", 1, "auth.no_user_interaction",
                                       "b", 1);
        else
                r = sd_bus_call_method(c->bus, LOOPMGR_BUS_NAME, h->object,
                                       LOOPMGR_DEVICE_INTERFACE, "Unmount", &e, NULL, "a{sv}", 0);
        if (r < 0) {
                _cleanup_free_ char *why = bus_error_string(&e, r);

                *ret_error = strdup_printf("Unmount of %s: %s", h->node, why);
        }
        return r;
}

/* The slow device, after its Unmount. udisksd sets autoclear on a loop device it mounts (the
 * teardown follows the unmount), so a Loop.Delete that fails on a device that went is fine. */
static int peer_detach_slow(const MountPeer *p, Client *c, Handle *h, char **ret_error) {
        int r = p->detach(c, h, ret_error);

        if (r < 0 && p->udisks && wait_gone(h) >= 0) {
                free(*ret_error);
                *ret_error = NULL;
                return 0;
        }
        return r;
}

/* ---- one round ----------------------------------------------------------------------------- */

static void timed_add(MountResult *res, Series *s, double usec) {
        series_add(s, usec);
        series_add(&res->others, usec);
}

/* The other client's calls, until the Mount in flight is answered. */
static int others_while_mounting(const MountPeer *p, Client *mounter, Client *other, Pending *pe,
                                 MountResult *res, unsigned *ret_n, char **ret_error) {
        unsigned n = 0;
        int r;

        for (;;) {
                Handle h = {.fd = -EBADF};
                double t0, t1, t2;

                while ((r = sd_bus_process(mounter->bus, NULL)) > 0)
                        ;
                if (r < 0) {
                        *ret_error = strdup_printf("the mounting client's bus: %s", errstr(r));
                        return r;
                }
                if (pe->done)
                        break;
                t0 = now_usec();
                r = peer_version(p, other, ret_error);
                if (r < 0)
                        return r;
                timed_add(res, &res->version, now_usec() - t0);
                t1 = now_usec();
                r = p->attach(other, &h, ret_error);
                if (r < 0) {
                        handle_done(&h);
                        return r;
                }
                t2 = now_usec();
                timed_add(res, &res->attach, t2 - t1);
                r = p->detach(other, &h, ret_error);
                if (r < 0) {
                        handle_done(&h);
                        return r;
                }
                timed_add(res, &res->detach, now_usec() - t2);
                if (p->udisks)
                        (void) wait_gone(&h); /* untimed: the teardown follows the last close */
                handle_done(&h);
                n++;
                (void) usleep(OTHERS_PAUSE_USEC);
        }
        *ret_n = n;
        return 0;
}

/* Waits for the answer of the Mount in flight (after a failure of the other client). */
static void wait_mount_answer(Client *mounter, Pending *pe) {
        double deadline = now_usec() + MOUNT_TIMEOUT_USEC;

        while (!pe->done && now_usec() < deadline) {
                if (sd_bus_process(mounter->bus, NULL) > 0)
                        continue;
                if (sd_bus_wait(mounter->bus, 100000) < 0)
                        break;
        }
}

static void mount_round(const MountPeer *p, Slow *s, Client *mounter, Client *other,
                        MountResult *res, unsigned round) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        Handle h = {.fd = -EBADF};
        Pending pe = {};
        unsigned n = 0;
        char *error = NULL;
        double t0 = 0;
        int r;

        r = peer_attach_slow(p, mounter, &h, s->image, &error);
        if (r < 0) {
                result_fail(res, p->key, error);
                if (h.node && h.diskseq > 0 && still_bound(h.node, h.diskseq) &&
                    p->detach(mounter, &h, &error) < 0)
                        result_fail(res, p->key, error);
                handle_done(&h);
                return;
        }
        r = slow_go(s, h.node, &error);
        if (r >= 0) {
                t0 = now_usec();
                r = peer_mount_send(p, mounter, &h, &pe, &slot, &error);
        }
        if (r >= 0) {
                r = others_while_mounting(p, mounter, other, &pe, res, &n, &error);
                if (r < 0)
                        wait_mount_answer(mounter, &pe);
        }
        slow_fast(s);
        if (r < 0)
                result_fail(res, p->key, error);
        else if (pe.error) {
                result_fail(res, p->key, pe.error);
                pe.error = NULL;
        } else if (n == 0)
                result_fail(res, p->key,
                            strdup_printf("the Mount was answered after %.0f ms, before the other "
                                          "client's first call: the image is not slow enough",
                                          (pe.t_done - t0) / 1e3));
        else {
                series_add(&res->mount, pe.t_done - t0);
                fprintf(stderr,
                        "bench-peers:   %s round %u: Mount %.0f ms (%s), %u rounds of the other "
                        "client's calls meanwhile\n",
                        p->key, round + 1, (pe.t_done - t0) / 1e3, pe.mount_point, n);
        }
        error = NULL;
        if (pe.mount_point && peer_unmount(p, mounter, &h, &error) < 0)
                result_fail(res, p->key, error);
        error = NULL;
        if (still_bound(h.node, h.diskseq) && peer_detach_slow(p, mounter, &h, &error) < 0)
                result_fail(res, p->key, error);
        free(pe.mount_point);
        free(pe.error);
        handle_done(&h);
}

MountResult *run_mount(Bench *b) {
        MountResult *results = calloc(N_MOUNT_PEERS, sizeof(MountResult));
        double t0 = now_usec();
        char *error = NULL;
        Slow s = {};

        if (!results)
                oom();
        if (!b->slowfs)
                error = strdup_printf("no --slowfs given");
        else if (slow_start(b, &s, &error) < 0)
                fprintf(stderr, "bench-peers: 6. mount: %s\n", error);
        if (error) {
                for (size_t k = 0; k < N_MOUNT_PEERS; k++) {
                        results[k].skipped = true;
                        results[k].first_error = strdup_printf("%s", error);
                }
                free(error);
                slow_stop(&s);
                return results;
        }
        fprintf(stderr,
                "bench-peers: 6. mount: %u rounds per peer, every read of the image %u ms once "
                "slow\n",
                b->mount_rounds, b->slow_read_msec);
        for (unsigned i = 0; i < b->mount_rounds; i++)
                for (size_t j = 0; j < N_MOUNT_PEERS; j++) {
                        size_t k = (i + j) % N_MOUNT_PEERS;
                        Client mounter, other;

                        if (results[k].skipped)
                                continue;
                        if (mount_peers[k].udisks && !b->have_udisks) {
                                results[k].skipped = true;
                                results[k].first_error = strdup_printf("udisksd is not on the bus");
                                continue;
                        }
                        if (client_open(b, &mounter, "s6-mount", 0) < 0 ||
                            client_open(b, &other, "s6-other", 0) < 0)
                                exit(EXIT_FAILURE);
                        mount_round(&mount_peers[k], &s, &mounter, &other, &results[k], i);
                        client_close(&mounter);
                        client_close(&other);
                        if (results[k].errors >= PEER_MAX_FAILURES) {
                                fprintf(stderr, "bench-peers: %s: giving up after %u errors\n",
                                        mount_peers[k].key, results[k].errors);
                                results[k].skipped = true;
                        }
                }
        slow_stop(&s);
        fprintf(stderr, "bench-peers: 6. mount took %.1f s\n", (now_usec() - t0) / 1e6);
        return results;
}

/* ---- output -------------------------------------------------------------------------------- */

/* The statistics of a copy of s (series_stats() sorts in place; the results stay as they
 * are for the second print). */
static Stats stats_of(const Series *s) {
        Series c = {.n = s->n};
        Stats st;

        if (c.n > 0) {
                c.v = malloc(c.n * sizeof(double));
                if (!c.v)
                        oom();
                memcpy(c.v, s->v, c.n * sizeof(double));
        }
        st = series_stats(&c);
        free(c.v);
        return st;
}

void print_mount(Bench *b, FILE *f, const MountResult *results) {
        static const char *const call_names[] = {"Version", "attach", "detach"};
        Stats all[N_MOUNT_PEERS] = {};

        fprintf(f,
                "An ext4 image (%u MiB) on `tests/slowfs.c` (FUSE, direct reads), attached "
                "read-only while fast; then every read takes %u ms, the device's page cache is "
                "dropped and one client sends the peer's Mount. Until it is answered, a second "
                "client reads the peer's `Version` property and attaches and detaches an "
                "unrelated 1 MiB image, 20 ms apart. %u rounds per peer, the first peer "
                "rotating. Times in ms.\n\n",
                SLOW_IMAGE_MIB, b->slow_read_msec, b->mount_rounds);
        fputs("| peer | the slow Mounts: median (n) | the other client's calls: n | median | "
              "p90 | p99 | max | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
              f);
        for (size_t k = 0; k < N_MOUNT_PEERS; k++) {
                const char *key = mount_peers[k].key;
                _cleanup_free_ char *prefix = strdup_printf("s6.%s", key);
                Stats m = stats_of(&results[k].mount);

                all[k] = stats_of(&results[k].others);
                fprintf(f, "| %s | ", mount_peers[k].label);
                if (results[k].skipped && all[k].n == 0) {
                        fputs("skipped: ", f);
                        put_cell(f, results[k].first_error);
                        fputs(" | | | | | | |\n", f);
                        continue;
                }
                fprintf(f, "%.0f (%zu) | %zu | %.2f | %.2f | %.2f | %.2f | %u |\n", m.median, m.n,
                        all[k].n, all[k].median, all[k].p90, all[k].p99, all[k].max,
                        results[k].errors);
                metric(b, "%s.mount.median %.1f", prefix, m.median);
                metric(b, "%s.mount.n %zu", prefix, m.n);
                metric(b, "%s.others.n %zu", prefix, all[k].n);
                emit_stats(b, prefix, "others", &all[k]);
                metric(b, "%s.others.max %.4f", prefix, all[k].max);
                metric(b, "%s.errors %u", prefix, results[k].errors);
        }
        fputs("\nBy call:\n\n| peer | call | n | median | p90 | p99 | max |\n"
              "|---|---|---:|---:|---:|---:|---:|\n",
              f);
        for (size_t k = 0; k < N_MOUNT_PEERS; k++) {
                const Series *calls[] = {&results[k].version, &results[k].attach,
                                         &results[k].detach};

                for (size_t i = 0; i < 3; i++) {
                        Stats st = stats_of(calls[i]);

                        if (st.n > 0)
                                fprintf(f, "| %s | %s | %zu | %.2f | %.2f | %.2f | %.2f |\n",
                                        mount_peers[k].key, call_names[i], st.n, st.median, st.p90,
                                        st.p99, st.max);
                }
        }
        if (all[0].n > 0 && all[1].n > 0 && all[1].p99 > 0)
                fprintf(f,
                        "\nThe other client's p99 during a slow Mount, loopmgr / udisks2: "
                        "**%.3f**.\n",
                        all[0].p99 / all[1].p99);
        for (size_t k = 0; k < N_MOUNT_PEERS; k++)
                if (results[k].first_error && !results[k].skipped)
                        fprintf(f, "\n%s: first error: %s\n", mount_peers[k].key,
                                results[k].first_error);
}

void mount_result_free(MountResult *results) {
        if (!results)
                return;
        for (size_t k = 0; k < N_MOUNT_PEERS; k++) {
                free(results[k].version.v);
                free(results[k].attach.v);
                free(results[k].detach.v);
                free(results[k].others.v);
                free(results[k].mount.v);
                free(results[k].first_error);
        }
        free(results);
}
