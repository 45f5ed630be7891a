/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* cmocka wants these first. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"

#define PROPERTIES_INTERFACE     "org.freedesktop.DBus.Properties"
#define OBJECT_MANAGER_INTERFACE "org.freedesktop.DBus.ObjectManager"

/* Bus calls that may wait for udev get the daemon's default udev timeout plus slack. */
#define CALL_TIMEOUT_USEC (30 * USEC_PER_SEC)

uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000ULL;
}

void sleep_usec(uint64_t usec) {
        struct timespec ts = {
                .tv_sec = (time_t) (usec / USEC_PER_SEC),
                .tv_nsec = (long) (usec % USEC_PER_SEC) * 1000L,
        };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static int grow(void **array, size_t *n, size_t element_size) {
        void *p = realloc(*array, (*n + 1) * element_size);
        if (!p)
                return -ENOMEM;
        *array = p;
        return 0;
}

static int strv_push(char ***l, size_t *n, char *s) {
        char **p = realloc(*l, (*n + 2) * sizeof(char *));
        if (!p)
                return -ENOMEM;
        p[(*n)++] = s;
        p[*n] = NULL;
        *l = p;
        return 0;
}

/* --- Bookkeeping --- */

int env_track_device(Env *e, const char *name, uint64_t diskseq) {
        for (size_t i = 0; i < e->n_tracked; i++)
                if (streq(e->tracked[i].name, name) && e->tracked[i].diskseq == diskseq)
                        return 0;

        char *n = strdup(name);
        if (!n)
                return -ENOMEM;
        if (grow((void **) &e->tracked, &e->n_tracked, sizeof(TrackedDevice)) < 0) {
                free(n);
                return -ENOMEM;
        }
        e->tracked[e->n_tracked++] = (TrackedDevice){.name = n, .diskseq = diskseq};
        return 0;
}

int env_hold(Env *e, const char *path, int flags) {
        if (grow((void **) &e->held_fds, &e->n_held, sizeof(int)) < 0)
                return -ENOMEM;
        int fd = open(path, flags | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        e->held_fds[e->n_held++] = fd;
        return fd;
}

void env_release(Env *e, int fd) {
        for (size_t i = 0; i < e->n_held; i++)
                if (e->held_fds[i] == fd) {
                        safe_close(fd);
                        e->held_fds[i] = e->held_fds[--e->n_held];
                        return;
                }
        assert_true(!"env_release() of an fd that is not held");
}

int env_new_bus(Env *e, sd_bus **ret) {
        sd_bus *bus = NULL;
        int r;

        if (grow((void **) &e->extra_buses, &e->n_extra_buses, sizeof(sd_bus *)) < 0)
                return -ENOMEM;
        r = sd_bus_open_system(&bus);
        if (r < 0)
                return r;
        (void) sd_bus_error_add_map(loopmgr_error_map);
        e->extra_buses[e->n_extra_buses++] = bus;
        *ret = bus;
        return 0;
}

void env_close_bus(Env *e, sd_bus *bus) {
        for (size_t i = 0; i < e->n_extra_buses; i++)
                if (e->extra_buses[i] == bus) {
                        e->extra_buses[i] = e->extra_buses[--e->n_extra_buses];
                        sd_bus_flush_close_unref(bus);
                        return;
                }
        assert_true(!"env_close_bus() of a bus that is not ours");
}

static void udev_reload(void) {
        char *argv[] = {(char *) "udevadm", (char *) "control", (char *) "--reload", NULL};
        (void) run_command(argv, NULL, NULL, NULL);
}

int env_add_udev_rule(Env *e, const char *text) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;

        if (e->udev_rule)
                return -EBUSY;
        if (mkdir("/run/udev/rules.d", 0755) < 0 && errno != EEXIST)
                return -errno;
        if (asprintf(&path, "/run/udev/rules.d/00-loopmgr-test-%d.rules", (int) getpid()) < 0)
                return -ENOMEM;
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        e->udev_rule = TAKE_PTR(path);
        size_t n = strlen(text);
        if (write(fd, text, n) != (ssize_t) n)
                return errno > 0 ? -errno : -EIO;
        udev_reload();
        return 0;
}

static void catcher_free(Catcher *c) {
        if (!c)
                return;
        sd_bus_slot_unref(c->slot);
        free(c->property);
        for (size_t i = 0; i < c->count; i++) {
                free(c->paths[i]);
                free(c->nodes[i]);
        }
        free(c->paths);
        free(c->nodes);
        free(c);
}

static char *device_object_path(uint64_t diskseq) {
        char *p;
        if (asprintf(&p, LOOPMGR_DEVICE_PATH_PREFIX "/%" PRIu64, diskseq) < 0)
                return NULL;
        return p;
}

/* Last resort: losetup -d, but only while the device still carries our diskseq. */
static void force_detach(const TrackedDevice *t) {
        if (loop_binding_present(t->name, t->diskseq) <= 0)
                return;
        _cleanup_free_ char *node = NULL;
        if (asprintf(&node, "/dev/%s", t->name) < 0)
                return;
        char *argv[] = {(char *) "losetup", (char *) "-d", node, NULL};
        (void) run_command(argv, NULL, NULL, NULL);
}

/* --- Mounts and partitions --- */

int env_track_mount(Env *e, const char *target) {
        char *t = strdup(target);
        if (!t)
                return -ENOMEM;
        if (grow((void **) &e->mounts, &e->n_mounts, sizeof(char *)) < 0) {
                free(t);
                return -ENOMEM;
        }
        e->mounts[e->n_mounts++] = t;
        return 0;
}

void env_forget_mount(Env *e, const char *target) {
        /* Newest entry first, and keep the order: the cleanup unmounts newest first. */
        for (size_t i = e->n_mounts; i-- > 0;)
                if (streq(e->mounts[i], target)) {
                        free(e->mounts[i]);
                        memmove(e->mounts + i, e->mounts + i + 1,
                                (e->n_mounts - i - 1) * sizeof(char *));
                        e->n_mounts--;
                        return;
                }
}

int env_mount(Env *e, const char *source, const char *target, const char *fstype,
              unsigned long flags, const char *data) {
        int r;

        /* Tracked first: whatever happens next, the cleanup knows the mount point. */
        r = env_track_mount(e, target);
        if (r < 0)
                return r;
        if (mount(source, target, fstype, flags, data) < 0) {
                r = -errno;
                env_forget_mount(e, target);
                return r;
        }
        return 0;
}

int env_umount(Env *e, const char *target) {
        if (umount2(target, 0) < 0)
                return -errno;
        env_forget_mount(e, target);
        return 0;
}

static void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}

int mounts_under(const char *dir, size_t *ret) {
        _cleanup_(fclosep) FILE *f = fopen("/proc/self/mountinfo", "re");
        _cleanup_free_ char *line = NULL;
        size_t size = 0, count = 0, len = strlen(dir);

        if (!f)
                return -errno;
        while (getline(&line, &size, f) > 0) {
                /* ID PARENT MAJ:MIN ROOT MOUNT-POINT ...; our paths need no unescaping. */
                char *p = line;
                for (int field = 0; field < 4 && p; field++) {
                        p = strchr(p, ' ');
                        if (p)
                                p++;
                }
                if (!p)
                        continue;
                p[strcspn(p, " ")] = 0;
                if (strncmp(p, dir, len) == 0 && (p[len] == 0 || p[len] == '/'))
                        count++;
        }
        *ret = count;
        return 0;
}

static void cleanup_mounts(Env *e) {
        for (size_t i = e->n_mounts; i-- > 0;) {
                const char *t = e->mounts[i];

                /* Several mounts may sit on one point; EINVAL means none (is) left. udev's
                 * probe can hold a file system for a moment after it is mounted. */
                for (unsigned attempt = 0;; attempt++) {
                        if (umount2(t, 0) == 0) {
                                print_message("cleanup: unmounted %s\n", t);
                                continue;
                        }
                        if (errno == EINVAL || errno == ENOENT)
                                break;
                        if (errno == EBUSY && attempt < 20) {
                                sleep_usec(100 * USEC_PER_MSEC);
                                continue;
                        }
                        print_error("cleanup: umount %s: %m, detaching it lazily\n", t);
                        (void) umount2(t, MNT_DETACH);
                        break;
                }
                free(e->mounts[i]);
        }
        e->n_mounts = 0;
}

static int partition_name(const char *disk, unsigned partno, char *buf, size_t size) {
        size_t len = strlen(disk);
        /* The kernel puts a 'p' between a disk name ending in a digit and the number. */
        bool digit = len > 0 && disk[len - 1] >= '0' && disk[len - 1] <= '9';
        int n = snprintf(buf, size, "%s%s%u", disk, digit ? "p" : "", partno);
        return n > 0 && (size_t) n < size ? 0 : -ENAMETOOLONG;
}

static int partition_present(const char *disk, unsigned partno) {
        char part[64], path[PATH_MAX];

        if (partition_name(disk, partno, part, sizeof(part)) < 0)
                return -ENAMETOOLONG;
        snprintf(path, sizeof(path), "/sys/block/%s/%s", disk, part);
        return access(path, F_OK) == 0;
}

static int run_partx(const char *tool, const char *disk, unsigned partno, uint64_t start,
                     uint64_t n_sectors, char **ret_stderr) {
        char node[64], no[16], s[32], n[32];
        char *argv[6] = {(char *) tool, node, no, s, n, NULL};

        snprintf(node, sizeof(node), "/dev/%s", disk);
        snprintf(no, sizeof(no), "%u", partno);
        snprintf(s, sizeof(s), "%" PRIu64, start);
        snprintf(n, sizeof(n), "%" PRIu64, n_sectors);
        if (streq(tool, "delpart"))
                argv[3] = NULL;
        return run_command(argv, NULL, NULL, ret_stderr);
}

int env_add_partition(Env *e, const char *disk, uint64_t diskseq, unsigned partno,
                      uint64_t start_sector, uint64_t n_sectors, char **ret_node) {
        _cleanup_free_ char *err = NULL;
        char part[64], path[PATH_MAX];
        char *d;
        int r;

        r = partition_name(disk, partno, part, sizeof(part));
        if (r < 0)
                return r;
        d = strdup(disk);
        if (!d)
                return -ENOMEM;
        if (grow((void **) &e->partitions, &e->n_partitions, sizeof(TrackedPartition)) < 0) {
                free(d);
                return -ENOMEM;
        }
        e->partitions[e->n_partitions++] =
                (TrackedPartition){.disk = d, .diskseq = diskseq, .partno = partno};

        r = run_partx("addpart", disk, partno, start_sector, n_sectors, &err);
        if (r != 0) {
                print_error("addpart /dev/%s %u %" PRIu64 " %" PRIu64 ": %s\n", disk, partno,
                            start_sector, n_sectors, r < 0 ? strerror(-r) : err);
                /* Nothing was added (or the cleanup finds it absent and skips it). */
                return r < 0 ? r : -EIO;
        }

        /* devtmpfs creates the node when the kernel adds the partition; wait for it and
         * check it is the partition's block device, not a stale node. */
        uint64_t deadline = now_usec() + 5 * USEC_PER_SEC;
        for (;;) {
                _cleanup_free_ char *devnum = NULL;
                unsigned ma, mi;
                struct stat st;

                snprintf(path, sizeof(path), "/sys/class/block/%s/dev", part);
                if (read_one_line_file(path, &devnum) >= 0 &&
                    sscanf(devnum, "%u:%u", &ma, &mi) == 2) {
                        snprintf(path, sizeof(path), "/dev/%s", part);
                        if (stat(path, &st) >= 0 && S_ISBLK(st.st_mode) &&
                            st.st_rdev == makedev(ma, mi))
                                break;
                }
                if (now_usec() >= deadline) {
                        print_error("/dev/%s did not appear within 5 s of addpart\n", part);
                        return -ETIMEDOUT;
                }
                sleep_usec(10 * USEC_PER_MSEC);
        }

        char *node = strdup(path);
        if (!node)
                return -ENOMEM;
        *ret_node = node;
        return 0;
}

static void forget_partition(Env *e, size_t i) {
        free(e->partitions[i].disk);
        memmove(e->partitions + i, e->partitions + i + 1,
                (e->n_partitions - i - 1) * sizeof(TrackedPartition));
        e->n_partitions--;
}

int env_delete_partition(Env *e, const char *disk, unsigned partno) {
        _cleanup_free_ char *err = NULL;
        int r;

        r = run_partx("delpart", disk, partno, 0, 0, &err);
        if (r < 0)
                return r;
        if (r != 0) /* delpart says why on stderr; EBUSY is the one failure we expect */
                return strstr(err, "busy") ? -EBUSY : -EIO;
        for (size_t i = e->n_partitions; i-- > 0;)
                if (streq(e->partitions[i].disk, disk) && e->partitions[i].partno == partno) {
                        forget_partition(e, i);
                        break;
                }
        return 0;
}

void env_forget_partition(Env *e, const char *disk, unsigned partno) {
        for (size_t i = e->n_partitions; i-- > 0;)
                if (streq(e->partitions[i].disk, disk) && e->partitions[i].partno == partno) {
                        forget_partition(e, i);
                        return;
                }
}

/* Deletes the tracked partitions of disk/diskseq (all of them when disk is NULL), but only
 * while that binding is still there: a recycled loopN is someone else's. */
static void cleanup_partitions(Env *e, const char *disk, uint64_t diskseq) {
        for (size_t i = e->n_partitions; i-- > 0;) {
                TrackedPartition *p = &e->partitions[i];

                if (disk && (!streq(p->disk, disk) || p->diskseq != diskseq))
                        continue;
                if (loop_binding_present(p->disk, p->diskseq) > 0 &&
                    partition_present(p->disk, p->partno) > 0) {
                        /* An opener that is going away (a stacked device's teardown, udev's
                         * probe) makes delpart fail with EBUSY for a moment. */
                        int r = -EBUSY;
                        for (unsigned attempt = 0; attempt < 30 && r != 0; attempt++) {
                                if (attempt > 0)
                                        sleep_usec(100 * USEC_PER_MSEC);
                                r = run_partx("delpart", p->disk, p->partno, 0, 0, NULL);
                        }
                        if (r != 0)
                                print_error("cleanup: delpart /dev/%s %u failed\n", p->disk,
                                            p->partno);
                        else
                                print_message("cleanup: deleted partition %u of %s\n", p->partno,
                                              p->disk);
                }
                forget_partition(e, i);
        }
}

int env_cleanup_test(Env *e) {
        int left = 0;

        for (size_t i = 0; i < e->n_held; i++)
                safe_close(e->held_fds[i]);
        e->n_held = 0;

        for (size_t i = 0; i < e->n_catchers; i++)
                catcher_free(e->catchers[i]);
        e->n_catchers = 0;

        for (size_t i = 0; i < e->n_extra_buses; i++)
                sd_bus_flush_close_unref(e->extra_buses[i]);
        e->n_extra_buses = 0;

        if (e->udev_rule) {
                (void) unlink(e->udev_rule);
                udev_reload();
                free(e->udev_rule);
                e->udev_rule = NULL;
        }

        /* Nothing can be detached while it is mounted. */
        cleanup_mounts(e);

        /* Newest first: a device stacked on an older one must go before it. */
        for (size_t i = e->n_tracked; i-- > 0;) {
                TrackedDevice *t = &e->tracked[i];

                /* Partitions of this binding: the devices stacked on them are newer, so they
                 * are gone by now and delpart no longer meets an opener. */
                cleanup_partitions(e, t->name, t->diskseq);

                if (loop_binding_present(t->name, t->diskseq) > 0) {
                        left++;
                        print_message("cleanup: %s (diskseq %" PRIu64 ") still attached, "
                                      "detaching it\n",
                                      t->name, t->diskseq);

                        _cleanup_free_ char *object = device_object_path(t->diskseq);
                        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                        _cleanup_free_ char *state = NULL;
                        if (object && e->bus)
                                (void) call_detach(
                                        e, object, &error, &state, 3,
                                        OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true),
                                        OPT_B(LOOPMGR_OPT_WAIT, true),
                                        OPT_T(LOOPMGR_OPT_TIMEOUT_USEC, 3 * USEC_PER_SEC));
                        if (!wait_binding_gone(t->name, t->diskseq, 2 * USEC_PER_SEC)) {
                                force_detach(t);
                                if (!wait_binding_gone(t->name, t->diskseq, 5 * USEC_PER_SEC))
                                        print_error("cleanup: %s (diskseq %" PRIu64 ") could "
                                                    "not be detached\n",
                                                    t->name, t->diskseq);
                        }
                }
                free(t->name);
        }
        e->n_tracked = 0;
        /* Partitions of bindings that were not tracked as devices. */
        cleanup_partitions(e, NULL, 0);

        return left;
}

int env_make_image(Env *e, const char *dir, uint64_t size, char **ret_path) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;

        if (asprintf(&path, "%s/img-%u.img", dir, ++e->file_counter) < 0)
                return -ENOMEM;
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        /* A recognisable first sector, the rest sparse. */
        char sector[512];
        memset(sector, 0, sizeof(sector));
        snprintf(sector, sizeof(sector), "loopmgr test image %u", e->file_counter);
        if (size >= sizeof(sector) && pwrite(fd, sector, sizeof(sector), 0) != sizeof(sector))
                return -errno;
        if (ftruncate(fd, (off_t) size) < 0)
                return -errno;
        *ret_path = TAKE_PTR(path);
        return 0;
}

/* --- Calls --- */

void attached_done(Attached *a) {
        free(a->object);
        free(a->node);
        *a = (Attached){};
}

static int append_options(sd_bus_message *m, unsigned n, va_list *ap) {
        int r;

        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        for (unsigned i = 0; i < n; i++) {
                const char *key = va_arg(*ap, const char *);
                const char *sig = va_arg(*ap, const char *);

                r = sd_bus_message_open_container(m, 'e', "sv");
                if (r < 0)
                        return r;
                r = sd_bus_message_append_basic(m, 's', key);
                if (r < 0)
                        return r;
                r = sd_bus_message_open_container(m, 'v', sig);
                if (r < 0)
                        return r;
                switch (sig[0]) {
                case 't': {
                        uint64_t v = va_arg(*ap, uint64_t);
                        r = sd_bus_message_append_basic(m, 't', &v);
                        break;
                }
                case 'u': {
                        uint32_t v = va_arg(*ap, unsigned);
                        r = sd_bus_message_append_basic(m, 'u', &v);
                        break;
                }
                case 'b': {
                        int v = va_arg(*ap, int);
                        r = sd_bus_message_append_basic(m, 'b', &v);
                        break;
                }
                case 'i': {
                        int32_t v = va_arg(*ap, int);
                        r = sd_bus_message_append_basic(m, 'i', &v);
                        break;
                }
                case 's':
                        r = sd_bus_message_append_basic(m, 's', va_arg(*ap, const char *));
                        break;
                default:
                        return -EINVAL;
                }
                if (r < 0)
                        return r;
                r = sd_bus_message_close_container(m);
                if (r < 0)
                        return r;
                r = sd_bus_message_close_container(m);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(m);
}

static int read_attach_reply(Env *e, sd_bus_message *reply, Attached *ret) {
        const char *object, *node;
        uint64_t diskseq;
        int reused, r;

        r = sd_bus_message_read(reply, "ostb", &object, &node, &diskseq, &reused);
        if (r < 0)
                return r;
        Attached a = {.object = strdup(object),
                      .node = strdup(node),
                      .diskseq = diskseq,
                      .reused = reused};
        if (!a.object || !a.node) {
                attached_done(&a);
                return -ENOMEM;
        }
        /* Track before anything can fail, so that the teardown removes it. */
        if (strncmp(node, "/dev/", 5) == 0)
                (void) env_track_device(e, node + 5, diskseq);
        *ret = a;
        return 0;
}

static int vcall_attach(Env *e, sd_bus *bus, const char *method, const char *sig, const void *arg,
                        sd_bus_error *error, Attached *ret, unsigned n, va_list *ap) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus ?: e->bus, &m, LOOPMGR_BUS_NAME,
                                           LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, method);
        if (r < 0)
                return r;
        if (sig[0] == 'h')
                r = sd_bus_message_append_basic(m, 'h', arg);
        else
                r = sd_bus_message_append_basic(m, 's', arg);
        if (r < 0)
                return r;
        r = append_options(m, n, ap);
        if (r < 0)
                return r;
        r = sd_bus_call(bus ?: e->bus, m, CALL_TIMEOUT_USEC, error, &reply);
        if (r < 0)
                return r;
        return read_attach_reply(e, reply, ret);
}

int call_attach(Env *e, sd_bus *bus, int fd, sd_bus_error *error, Attached *ret, unsigned n_options,
                ...) {
        va_list ap;
        va_start(ap, n_options);
        int r = vcall_attach(e, bus, "Attach", "h", &fd, error, ret, n_options, &ap);
        va_end(ap);
        return r;
}

int attach_file(Env *e, const char *path, int open_flags, sd_bus_error *error, Attached *ret,
                unsigned n_options, ...) {
        _cleanup_close_ int fd = open(path, open_flags | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        va_list ap;
        va_start(ap, n_options);
        int r = vcall_attach(e, NULL, "Attach", "h", &fd, error, ret, n_options, &ap);
        va_end(ap);
        return r;
}

int call_attach_path(Env *e, const char *path, sd_bus_error *error, Attached *ret,
                     unsigned n_options, ...) {
        va_list ap;
        va_start(ap, n_options);
        int r = vcall_attach(e, NULL, "AttachPath", "s", path, error, ret, n_options, &ap);
        va_end(ap);
        return r;
}

static int vcall_detach(Env *e, const char *path, const char *interface, const char *object,
                        sd_bus_error *error, char **ret_state, unsigned n, va_list *ap) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *state;
        int r;

        r = sd_bus_message_new_method_call(e->bus, &m, LOOPMGR_BUS_NAME, path, interface, "Detach");
        if (r < 0)
                return r;
        if (object) {
                r = sd_bus_message_append_basic(m, 'o', object);
                if (r < 0)
                        return r;
        }
        r = append_options(m, n, ap);
        if (r < 0)
                return r;
        r = sd_bus_call(e->bus, m, CALL_TIMEOUT_USEC, error, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "s", &state);
        if (r < 0)
                return r;
        char *s = strdup(state);
        if (!s)
                return -ENOMEM;
        *ret_state = s;
        return 0;
}

int call_detach(Env *e, const char *object, sd_bus_error *error, char **ret_state,
                unsigned n_options, ...) {
        va_list ap;
        va_start(ap, n_options);
        int r = vcall_detach(e, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, object, error,
                             ret_state, n_options, &ap);
        va_end(ap);
        return r;
}

int call_device_detach(Env *e, const char *object, sd_bus_error *error, char **ret_state,
                       unsigned n_options, ...) {
        va_list ap;
        va_start(ap, n_options);
        int r = vcall_detach(e, object, LOOPMGR_DEVICE_INTERFACE, NULL, error, ret_state, n_options,
                             &ap);
        va_end(ap);
        return r;
}

int call_get_device(Env *e, const char *what, sd_bus_error *error, char **ret_object) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *object;
        int r;

        r = sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                               LOOPMGR_MANAGER_INTERFACE, "GetDevice", error, &reply, "s", what);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "o", &object);
        if (r < 0)
                return r;
        char *s = strdup(object);
        if (!s)
                return -ENOMEM;
        *ret_object = s;
        return 0;
}

int call_set_autoclear(Env *e, const char *object, bool value, sd_bus_error *error) {
        return sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, object, LOOPMGR_DEVICE_INTERFACE,
                                  "SetAutoclear", error, NULL, "ba{sv}", (int) value, 0);
}

int call_set_capacity(Env *e, const char *object, sd_bus_error *error) {
        return sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, object, LOOPMGR_DEVICE_INTERFACE,
                                  "SetCapacity", error, NULL, "a{sv}", 0);
}

int get_version(Env *e, sd_bus_error *error, char **ret) {
        return sd_bus_get_property_string(e->bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                          LOOPMGR_MANAGER_INTERFACE, "Version", error, ret);
}

/* --- Properties --- */

typedef struct PropInfo {
        const char *name;
        const char *signature;
        size_t offset;
} PropInfo;

#define PROP(n, s, f)                                                                              \
        { n, s, offsetof(DeviceProps, f) }
static const PropInfo prop_table[] = {
        PROP("Node", "s", node),
        PROP("Name", "s", name),
        PROP("DiskSeq", "t", diskseq),
        PROP("Major", "u", major),
        PROP("Minor", "u", minor),
        PROP("BackingFile", "s", backing_file),
        PROP("BackingDevice", "t", backing_device),
        PROP("BackingInode", "t", backing_inode),
        PROP("Offset", "t", offset),
        PROP("SizeLimit", "t", size_limit),
        PROP("Size", "t", size),
        PROP("ReadOnly", "b", read_only),
        PROP("Autoclear", "b", autoclear),
        PROP("PartScan", "b", partscan),
        PROP("DirectIO", "b", direct_io),
        PROP("SectorSize", "u", sector_size),
        PROP("Managed", "b", managed),
        PROP("OwnerUID", "u", owner_uid),
        PROP("References", "u", references),
        PROP("State", "s", state),
        PROP("Openers", "a(ss)", opener_kinds),
        PROP("Chain", "as", chain),
};
/* DEVICE_PROPS_ALL is one bit per entry; keep them in step. */
_Static_assert(ELEMENTSOF(prop_table) == 22, "prop_table and DeviceProps out of step");

void device_props_done(DeviceProps *p) {
        free(p->node);
        free(p->name);
        free(p->backing_file);
        free(p->state);
        strv_free(p->opener_kinds);
        strv_free(p->opener_descriptions);
        strv_free(p->chain);
        free(p->type_errors);
        *p = (DeviceProps){};
}

static int note_type_error(DeviceProps *p, const char *name, const char *got, const char *want) {
        char *s;
        if (asprintf(&s, "%s%s%s: got '%s', want '%s'", p->type_errors ?: "",
                     p->type_errors ? "; " : "", name, got, want) < 0)
                return -ENOMEM;
        free(p->type_errors);
        p->type_errors = s;
        return 0;
}

static int read_prop_value(sd_bus_message *m, const PropInfo *info, DeviceProps *p) {
        uint8_t *field = (uint8_t *) p + info->offset;
        int r;

        if (streq(info->signature, "s")) {
                const char *s;
                r = sd_bus_message_read_basic(m, 's', &s);
                if (r < 0)
                        return r;
                char *d = strdup(s);
                if (!d)
                        return -ENOMEM;
                free(*(char **) field);
                *(char **) field = d;
        } else if (streq(info->signature, "t")) {
                r = sd_bus_message_read_basic(m, 't', field);
        } else if (streq(info->signature, "u")) {
                r = sd_bus_message_read_basic(m, 'u', field);
        } else if (streq(info->signature, "b")) {
                int b;
                r = sd_bus_message_read_basic(m, 'b', &b);
                if (r >= 0)
                        *(bool *) field = b;
        } else if (streq(info->signature, "as")) {
                strv_free(p->chain);
                p->chain = NULL;
                p->n_chain = 0;
                r = sd_bus_message_enter_container(m, 'a', "s");
                if (r < 0)
                        return r;
                const char *s;
                while ((r = sd_bus_message_read_basic(m, 's', &s)) > 0) {
                        char *d = strdup(s);
                        if (!d || strv_push(&p->chain, &p->n_chain, d) < 0) {
                                free(d);
                                return -ENOMEM;
                        }
                }
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
        } else { /* a(ss) */
                size_t nk = 0, nd = 0;
                strv_free(p->opener_kinds);
                strv_free(p->opener_descriptions);
                p->opener_kinds = p->opener_descriptions = NULL;
                r = sd_bus_message_enter_container(m, 'a', "(ss)");
                if (r < 0)
                        return r;
                const char *k, *d;
                while ((r = sd_bus_message_read(m, "(ss)", &k, &d)) > 0) {
                        char *kk = strdup(k), *dd = strdup(d);
                        if (!kk || !dd || strv_push(&p->opener_kinds, &nk, kk) < 0) {
                                free(kk);
                                free(dd);
                                return -ENOMEM;
                        }
                        if (strv_push(&p->opener_descriptions, &nd, dd) < 0) {
                                free(dd);
                                return -ENOMEM;
                        }
                }
                if (r < 0)
                        return r;
                p->n_openers = nk;
                r = sd_bus_message_exit_container(m);
        }
        return r < 0 ? r : 0;
}

int device_props_read(sd_bus_message *m, DeviceProps *ret) {
        DeviceProps p = {};
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *name, *contents;
                const PropInfo *info = NULL;
                size_t idx = 0;
                char type;

                r = sd_bus_message_read_basic(m, 's', &name);
                if (r < 0)
                        goto fail;
                for (idx = 0; idx < ELEMENTSOF(prop_table); idx++)
                        if (streq(prop_table[idx].name, name)) {
                                info = &prop_table[idx];
                                break;
                        }
                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        goto fail;
                if (!info) {
                        r = sd_bus_message_skip(m, "v");
                } else if (!streq(contents, info->signature)) {
                        r = note_type_error(&p, name, contents, info->signature);
                        if (r >= 0)
                                r = sd_bus_message_skip(m, "v");
                } else {
                        r = sd_bus_message_enter_container(m, 'v', contents);
                        if (r >= 0)
                                r = read_prop_value(m, info, &p);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                        if (r >= 0)
                                p.present |= UINT32_C(1) << idx;
                }
                if (r < 0)
                        goto fail;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        goto fail;
        }
        if (r < 0)
                goto fail;
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                goto fail;
        *ret = p;
        return 0;
fail:
        device_props_done(&p);
        return r;
}

int device_props_get(Env *e, const char *object, sd_bus_error *error, DeviceProps *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, object, PROPERTIES_INTERFACE, "GetAll",
                               error, &reply, "s", LOOPMGR_DEVICE_INTERFACE);
        if (r < 0)
                return r;
        return device_props_read(reply, ret);
}

void daemon_devices_free(DaemonDevice *l, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(l[i].object);
                device_props_done(&l[i].props);
        }
        free(l);
}

int daemon_devices_list(Env *e, DaemonDevice **ret, size_t *ret_n) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        DaemonDevice *l = NULL;
        size_t n = 0;
        int r;

        r = sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                               OBJECT_MANAGER_INTERFACE, "GetManagedObjects", &error, &reply, "");
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}");
        if (r < 0)
                goto fail;
        while ((r = sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}")) > 0) {
                const char *object;
                DeviceProps props = {};
                bool is_device = false;

                r = sd_bus_message_read_basic(reply, 'o', &object);
                if (r < 0)
                        goto fail;
                r = sd_bus_message_enter_container(reply, 'a', "{sa{sv}}");
                if (r < 0)
                        goto fail;
                while ((r = sd_bus_message_enter_container(reply, 'e', "sa{sv}")) > 0) {
                        const char *iface;
                        r = sd_bus_message_read_basic(reply, 's', &iface);
                        if (r < 0)
                                goto fail;
                        if (streq(iface, LOOPMGR_DEVICE_INTERFACE) && !is_device) {
                                r = device_props_read(reply, &props);
                                is_device = r >= 0;
                        } else
                                r = sd_bus_message_skip(reply, "a{sv}");
                        if (r < 0)
                                goto fail;
                        r = sd_bus_message_exit_container(reply);
                        if (r < 0) {
                                device_props_done(&props);
                                goto fail;
                        }
                }
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r < 0) {
                        device_props_done(&props);
                        goto fail;
                }
                if (!is_device)
                        continue;
                char *o = strdup(object);
                if (!o || grow((void **) &l, &n, sizeof(DaemonDevice)) < 0) {
                        free(o);
                        device_props_done(&props);
                        r = -ENOMEM;
                        goto fail;
                }
                l[n++] = (DaemonDevice){.object = o, .props = props};
        }
        if (r < 0)
                goto fail;
        *ret = l;
        *ret_n = n;
        return 0;
fail:
        daemon_devices_free(l, n);
        return r;
}

/* --- Signals --- */

static int catcher_record(Catcher *c, const char *path, const char *node) {
        char **p = realloc(c->paths, (c->count + 1) * sizeof(char *));
        if (!p)
                return -ENOMEM;
        c->paths = p;
        char **n = realloc(c->nodes, (c->count + 1) * sizeof(char *));
        if (!n)
                return -ENOMEM;
        c->nodes = n;
        c->paths[c->count] = strdup(path);
        c->nodes[c->count] = node ? strdup(node) : NULL;
        c->count++;
        return 0;
}

static int catcher_handler(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Catcher *c = userdata;
        _cleanup_free_ char *node = NULL;
        const char *path;
        bool hit = false;
        int r;

        /* A signal we cannot parse is simply not recorded: the waiting test then fails with
         * a timeout that names what it waited for. */
        if (c->kind == CATCH_PROPERTIES_CHANGED) {
                const char *iface, *name;
                path = sd_bus_message_get_path(m);
                if (!path)
                        return 0;
                r = sd_bus_message_read(m, "s", &iface);
                if (r < 0 || !streq(iface, LOOPMGR_DEVICE_INTERFACE))
                        return 0;
                r = sd_bus_message_enter_container(m, 'a', "{sv}");
                if (r < 0)
                        return 0;
                while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                        if (sd_bus_message_read_basic(m, 's', &name) < 0)
                                return 0;
                        if (streq(name, c->property))
                                hit = true;
                        if (sd_bus_message_skip(m, "v") < 0 || sd_bus_message_exit_container(m) < 0)
                                return 0;
                }
                if (r < 0 || sd_bus_message_exit_container(m) < 0)
                        return 0;
                r = sd_bus_message_enter_container(m, 'a', "s");
                if (r < 0)
                        return 0;
                while ((r = sd_bus_message_read_basic(m, 's', &name)) > 0)
                        if (streq(name, c->property))
                                hit = true;
        } else {
                r = sd_bus_message_read_basic(m, 'o', &path);
                if (r < 0)
                        return 0;
                if (c->kind == CATCH_INTERFACES_REMOVED) {
                        const char *iface;
                        r = sd_bus_message_enter_container(m, 'a', "s");
                        if (r < 0)
                                return 0;
                        while ((r = sd_bus_message_read_basic(m, 's', &iface)) > 0)
                                if (streq(iface, LOOPMGR_DEVICE_INTERFACE))
                                        hit = true;
                } else {
                        r = sd_bus_message_enter_container(m, 'a', "{sa{sv}}");
                        if (r < 0)
                                return 0;
                        while ((r = sd_bus_message_enter_container(m, 'e', "sa{sv}")) > 0) {
                                const char *iface;
                                if (sd_bus_message_read_basic(m, 's', &iface) < 0)
                                        return 0;
                                if (streq(iface, LOOPMGR_DEVICE_INTERFACE)) {
                                        _cleanup_props_ DeviceProps p = {};
                                        if (device_props_read(m, &p) < 0)
                                                return 0;
                                        hit = true;
                                        free(node);
                                        node = TAKE_PTR(p.node);
                                } else if (sd_bus_message_skip(m, "a{sv}") < 0)
                                        return 0;
                                if (sd_bus_message_exit_container(m) < 0)
                                        return 0;
                        }
                }
        }

        if (hit)
                (void) catcher_record(c, path, node);
        return 0;
}

static Catcher *catcher_new(Env *e, CatchKind kind, const char *path, const char *property) {
        Catcher *c = calloc(1, sizeof(Catcher));
        int r;

        assert_non_null(c);
        assert_int_equal(grow((void **) &e->catchers, &e->n_catchers, sizeof(Catcher *)), 0);
        e->catchers[e->n_catchers++] = c;
        c->kind = kind;
        c->property = property ? strdup(property) : NULL;

        const char *member = kind == CATCH_INTERFACES_ADDED     ? "InterfacesAdded"
                             : kind == CATCH_INTERFACES_REMOVED ? "InterfacesRemoved"
                                                                : "PropertiesChanged";
        /* Synchronous AddMatch: once this returns, the bus routes the signals to us. */
        r = sd_bus_match_signal(e->bus, &c->slot, LOOPMGR_BUS_NAME,
                                kind == CATCH_PROPERTIES_CHANGED ? path : LOOPMGR_MANAGER_PATH,
                                kind == CATCH_PROPERTIES_CHANGED ? PROPERTIES_INTERFACE
                                                                 : OBJECT_MANAGER_INTERFACE,
                                member, catcher_handler, c);
        if (r < 0)
                fail_msg("AddMatch for %s failed: %s", member, strerror(-r));
        return c;
}

Catcher *catch_interfaces_added(Env *e) {
        return catcher_new(e, CATCH_INTERFACES_ADDED, NULL, NULL);
}

Catcher *catch_interfaces_removed(Env *e) {
        return catcher_new(e, CATCH_INTERFACES_REMOVED, NULL, NULL);
}

Catcher *catch_properties_changed(Env *e, const char *path, const char *property) {
        return catcher_new(e, CATCH_PROPERTIES_CHANGED, path, property);
}

static int catcher_find(const Catcher *c, const char *path, const char *node) {
        for (size_t i = 0; i < c->count; i++)
                if ((!path || streq_ptr(c->paths[i], path)) &&
                    (!node || streq_ptr(c->nodes[i], node)))
                        return (int) i;
        return -ENOENT;
}

int catcher_wait(Env *e, Catcher *c, const char *path, const char *node, uint64_t timeout_usec) {
        uint64_t deadline = now_usec() + timeout_usec;

        for (;;) {
                int i = catcher_find(c, path, node);
                if (i >= 0)
                        return i;
                int r = sd_bus_process(e->bus, NULL);
                if (r < 0)
                        fail_msg("sd_bus_process() failed: %s", strerror(-r));
                if (r > 0)
                        continue;
                uint64_t n = now_usec();
                if (n >= deadline)
                        return -ETIMEDOUT;
                r = sd_bus_wait(e->bus, deadline - n);
                if (r < 0 && r != -EINTR)
                        fail_msg("sd_bus_wait() failed: %s", strerror(-r));
        }
}

void bus_drain(Env *e) {
        while (sd_bus_process(e->bus, NULL) > 0)
                ;
}

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

/* --- assertions --- */

void assert_bus_ok_impl(int r, const sd_bus_error *error, const char *what, const char *file,
                        int line) {
        if (r >= 0)
                return;
        print_error("%s:%d: %s failed: %s (%s)\n", file, line, what,
                    error && error->name ? error->name : strerror(-r),
                    error && error->message ? error->message : "no message");
        _fail(file, line);
}

void assert_bus_error_impl(int r, const sd_bus_error *error, const char *name, const char *file,
                           int line) {
        if (r >= 0) {
                print_error("%s:%d: expected error %s, but the call succeeded\n", file, line, name);
                _fail(file, line);
        }
        if (!sd_bus_error_has_name(error, name)) {
                print_error("%s:%d: expected error %s, got %s: %s (r=%s)\n", file, line, name,
                            error->name ?: "(none)", error->message ?: "(no message)",
                            strerror(-r));
                _fail(file, line);
        }
        if (!error->message || strlen(error->message) == 0) {
                print_error("%s:%d: error %s carries no message\n", file, line, name);
                _fail(file, line);
        }
}

/* --- The daemon process --- */

int env_find_binary(const char *env_name, const char *name, char **ret) {
        const char *v = getenv(env_name);
        if (v && *v) {
                char *s = strdup(v);
                if (!s)
                        return -ENOMEM;
                *ret = s;
                return 0;
        }
        /* Fallback: the build directory, one level above tests/. */
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (n < 0)
                return -errno;
        exe[n] = 0;
        char *dir = dirname(dirname(exe));
        if (asprintf(ret, "%s/%s", dir, name) < 0)
                return -ENOMEM;
        return 0;
}

static int bus_name_owner(Env *e, char **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *owner;
        int r;

        r = sd_bus_call_method(e->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "GetNameOwner", &error, &reply, "s",
                               LOOPMGR_BUS_NAME);
        if (r < 0)
                return sd_bus_error_has_name(&error, "org.freedesktop.DBus.Error.NameHasNoOwner")
                               ? 0
                               : r;
        r = sd_bus_message_read(reply, "s", &owner);
        if (r < 0)
                return r;
        if (ret) {
                *ret = strdup(owner);
                if (!*ret)
                        return -ENOMEM;
        }
        return 1;
}

int env_start_daemon(Env *e) {
        return env_start_daemon_with(e, NULL, NULL);
}

int env_start_daemon_with(Env *e, char *const *args, char *const *env) {
        _cleanup_free_ char *state_dir = NULL;
        pid_t parent = getpid();
        size_t n_args = 0;
        int r;

        if (asprintf(&state_dir, "%s/state", e->tmpdir) < 0)
                return -ENOMEM;

        r = bus_name_owner(e, NULL);
        if (r < 0)
                return r;
        if (r > 0) {
                print_error("%s is already owned on this bus: another loopmgrd is running\n",
                            LOOPMGR_BUS_NAME);
                return -EADDRINUSE;
        }

        while (args && args[n_args])
                n_args++;

        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                /* Never outlive the test binary, even if it crashes. */
                (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (getppid() != parent)
                        _exit(1);
                if (setenv("LOOPMGR_STATE_DIR", state_dir, 1) < 0)
                        _exit(1);
                for (char *const *i = env; i && *i; i++)
                        if (putenv(*i) < 0)
                                _exit(1);
                char **argv = calloc(n_args + 2, sizeof(char *));
                if (!argv)
                        _exit(1);
                argv[0] = (char *) "loopmgrd";
                for (size_t i = 0; i < n_args; i++)
                        argv[i + 1] = args[i];
                execv(e->loopmgrd, argv);
                fprintf(stderr, "Failed to execute %s: %m\n", e->loopmgrd);
                _exit(127);
        }
        e->daemon_pid = pid;

        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        for (;;) {
                int status;
                pid_t w = waitpid(pid, &status, WNOHANG);
                if (w == pid) {
                        e->daemon_pid = 0;
                        print_error("loopmgrd exited during startup (%s %d)\n",
                                    WIFEXITED(status) ? "status" : "signal",
                                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                        return -ECHILD;
                }
                free(e->daemon_unique_name);
                e->daemon_unique_name = NULL;
                r = bus_name_owner(e, &e->daemon_unique_name);
                if (r < 0)
                        return r;
                if (r > 0)
                        return 0;
                if (now_usec() >= deadline) {
                        print_error("loopmgrd did not take %s within 10 s\n", LOOPMGR_BUS_NAME);
                        return -ETIMEDOUT;
                }
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

int env_kill_daemon(Env *e, int sig) {
        int status;

        if (e->daemon_pid <= 0)
                return -ESRCH;
        if (kill(e->daemon_pid, sig) < 0)
                return -errno;

        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        for (;;) {
                pid_t w = waitpid(e->daemon_pid, &status, WNOHANG);
                if (w == e->daemon_pid)
                        break;
                if (w < 0)
                        return -errno;
                if (now_usec() >= deadline) {
                        print_error("loopmgrd did not exit within 10 s of signal %d, killing it\n",
                                    sig);
                        (void) kill(e->daemon_pid, SIGKILL);
                        (void) waitpid(e->daemon_pid, &status, 0);
                        e->daemon_pid = 0;
                        return -ETIMEDOUT;
                }
                sleep_usec(2 * USEC_PER_MSEC);
        }
        e->daemon_pid = 0;
        free(e->daemon_unique_name);
        e->daemon_unique_name = NULL;

        if (WIFSIGNALED(status))
                return WTERMSIG(status) == sig ? 0 : -EPROTO;
        /* A signal the daemon handles (SIGTERM) must end in a clean exit. */
        return WEXITSTATUS(status) == 0 ? 0 : -EPROTO;
}

int proc_vmrss_kib(pid_t pid, uint64_t *ret) {
        _cleanup_free_ char *path = NULL, *line = NULL;
        size_t size = 0;

        if (asprintf(&path, "/proc/%d/status", (int) pid) < 0)
                return -ENOMEM;
        _cleanup_(fclosep) FILE *f = fopen(path, "re");
        if (!f)
                return -errno;
        while (getline(&line, &size, f) > 0) {
                unsigned long long v;
                if (sscanf(line, "VmRSS: %llu kB", &v) == 1) {
                        *ret = v;
                        return 0;
                }
        }
        return -ENODATA;
}

int env_stop_daemon(Env *e) {
        int status;

        if (e->daemon_pid <= 0)
                return 0;
        if (kill(e->daemon_pid, SIGTERM) < 0)
                return -errno;

        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        for (;;) {
                pid_t w = waitpid(e->daemon_pid, &status, WNOHANG);
                if (w == e->daemon_pid)
                        break;
                if (w < 0)
                        return -errno;
                if (now_usec() >= deadline) {
                        print_error("loopmgrd did not exit within 10 s of SIGTERM, killing it\n");
                        (void) kill(e->daemon_pid, SIGKILL);
                        (void) waitpid(e->daemon_pid, &status, 0);
                        e->daemon_pid = 0;
                        return -ETIMEDOUT;
                }
                sleep_usec(20 * USEC_PER_MSEC);
        }
        e->daemon_pid = 0;

        if (WIFSIGNALED(status)) {
                print_error("loopmgrd was killed by signal %d (%s)\n", WTERMSIG(status),
                            strsignal(WTERMSIG(status)));
                return -EPROTO;
        }
        if (WEXITSTATUS(status) != 0) {
                print_error("loopmgrd exited with status %d\n", WEXITSTATUS(status));
                return -EPROTO;
        }
        return 0;
}

/* Whether backing (a path) is under dir, or is the node of a device in names[] or of one of
 * its partitions ("/dev/loop3", "/dev/loop3p1"). */
static bool backing_in_scope(const char *backing, const char *dir, char **names, size_t n_names) {
        size_t len = strlen(dir);

        if (!backing)
                return false;
        if (strncmp(backing, dir, len) == 0 && backing[len] == '/')
                return true;
        if (strncmp(backing, "/dev/", 5) != 0)
                return false;
        for (size_t i = 0; i < n_names; i++) {
                size_t l = strlen(names[i]);
                const char *rest = backing + 5 + l;
                if (strncmp(backing + 5, names[i], l) != 0)
                        continue;
                if (*rest == 0)
                        return true;
                if (*rest == 'p' && rest[1] && strspn(rest + 1, "0123456789") == strlen(rest + 1))
                        return true;
        }
        return false;
}

/* The nodes ("/dev/loopN") of every device that is backed, directly or through other loop
 * devices and their partitions, by a file under dir, in either view. */
static int scope_nodes(const char *dir, const LosetupEntry *l, size_t nl, const DaemonDevice *d,
                       size_t nd, char ***ret, size_t *ret_n) {
        char **names = NULL; /* "loopN" */
        size_t n = 0;
        bool added;

        do {
                added = false;
                for (size_t i = 0; i < nl + nd; i++) {
                        const char *node = i < nl ? l[i].node : d[i - nl].props.node;
                        const char *backing =
                                i < nl ? l[i].back_file : d[i - nl].props.backing_file;
                        bool known = false;

                        if (!node || strncmp(node, "/dev/", 5) != 0)
                                continue;
                        for (size_t j = 0; j < n; j++)
                                if (streq(names[j], node + 5))
                                        known = true;
                        if (known || !backing_in_scope(backing, dir, names, n))
                                continue;
                        char *s = strdup(node + 5);
                        if (!s || strv_push(&names, &n, s) < 0) {
                                free(s);
                                strv_free(names);
                                return -ENOMEM;
                        }
                        added = true;
                }
        } while (added);

        *ret = names;
        *ret_n = n;
        return 0;
}

static bool node_in(char **names, size_t n, const char *node) {
        if (!node || strncmp(node, "/dev/", 5) != 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (streq(names[i], node + 5))
                        return true;
        return false;
}

/* One snapshot of both views; 1 and a report of the differences when they disagree. With a
 * scope, only devices backed (through any layers) by files under that directory count, and
 * *ret_ignored says how many differences elsewhere were left out. */
static int consistency_report(Env *e, const char *scope, char **ret_report, size_t *ret_ignored) {
        LosetupEntry *l = NULL;
        DaemonDevice *d = NULL;
        size_t nl = 0, nd = 0, n_names = 0, ignored = 0;
        char **names = NULL;
        char *report = NULL;
        size_t report_size = 0;
        FILE *f;
        int r;

        r = losetup_list(&l, &nl);
        if (r < 0)
                return r;
        r = daemon_devices_list(e, &d, &nd);
        if (r < 0) {
                losetup_entries_free(l, nl);
                return r;
        }
        if (scope)
                r = scope_nodes(scope, l, nl, d, nd, &names, &n_names);
        f = r < 0 ? NULL : open_memstream(&report, &report_size);
        if (!f) {
                losetup_entries_free(l, nl);
                daemon_devices_free(d, nd);
                strv_free(names);
                return -ENOMEM;
        }

        for (size_t i = 0; i < nl; i++) {
                const DaemonDevice *match = NULL;
                if (scope && !node_in(names, n_names, l[i].node)) {
                        /* Counted below only if it differs. */
                        for (size_t j = 0; j < nd; j++)
                                if (streq_ptr(d[j].props.node, l[i].node))
                                        match = &d[j];
                        if (!match || !streq_ptr(match->props.backing_file, l[i].back_file) ||
                            match->props.offset != l[i].offset ||
                            match->props.size_limit != l[i].size_limit)
                                ignored++;
                        continue;
                }
                for (size_t j = 0; j < nd; j++)
                        if (streq_ptr(d[j].props.node, l[i].node))
                                match = &d[j];
                if (!match) {
                        fprintf(f,
                                "  kernel: %s bound to '%s' (offset %" PRIu64 "), daemon: no "
                                "object\n",
                                l[i].node, l[i].back_file, l[i].offset);
                        continue;
                }
                if (!streq_ptr(match->props.backing_file, l[i].back_file))
                        fprintf(f, "  %s: kernel backing file '%s', daemon BackingFile '%s'\n",
                                l[i].node, l[i].back_file, match->props.backing_file);
                if (match->props.offset != l[i].offset)
                        fprintf(f, "  %s: kernel offset %" PRIu64 ", daemon Offset %" PRIu64 "\n",
                                l[i].node, l[i].offset, match->props.offset);
                if (match->props.size_limit != l[i].size_limit)
                        fprintf(f,
                                "  %s: kernel sizelimit %" PRIu64 ", daemon SizeLimit %" PRIu64
                                "\n",
                                l[i].node, l[i].size_limit, match->props.size_limit);
        }
        for (size_t j = 0; j < nd; j++) {
                bool found = false;
                for (size_t i = 0; i < nl; i++)
                        if (streq_ptr(d[j].props.node, l[i].node))
                                found = true;
                if (scope && !node_in(names, n_names, d[j].props.node)) {
                        if (!found)
                                ignored++;
                        continue;
                }
                if (!found)
                        fprintf(f, "  daemon: %s for %s, kernel: not bound\n", d[j].object,
                                d[j].props.node ?: "(no Node)");
                _cleanup_free_ char *expected = device_object_path(d[j].props.diskseq);
                if (expected && !streq(expected, d[j].object))
                        fprintf(f, "  daemon: %s has DiskSeq %" PRIu64 "\n", d[j].object,
                                d[j].props.diskseq);
                if (d[j].props.present != DEVICE_PROPS_ALL)
                        fprintf(f, "  daemon: %s lacks properties (mask %#x)\n", d[j].object,
                                d[j].props.present);
                if (d[j].props.type_errors)
                        fprintf(f, "  daemon: %s property types: %s\n", d[j].object,
                                d[j].props.type_errors);
        }

        fclose(f);
        losetup_entries_free(l, nl);
        daemon_devices_free(d, nd);
        strv_free(names);
        if (ret_ignored)
                *ret_ignored = ignored;
        if (report_size == 0) {
                free(report);
                return 0;
        }
        *ret_report = report;
        return 1;
}

static int check_consistency_scoped(Env *e, const char *scope, uint64_t timeout_usec, bool quiet) {
        uint64_t deadline = now_usec() + timeout_usec;
        _cleanup_free_ char *report = NULL;
        size_t ignored = 0;

        for (;;) {
                free(report);
                report = NULL;
                int r = consistency_report(e, scope, &report, &ignored);
                if (r < 0) {
                        print_error("consistency check failed: %s\n", strerror(-r));
                        return r;
                }
                if (r == 0) {
                        if (ignored > 0 && !quiet)
                                print_message("note: %zu difference(s) between losetup and the "
                                              "daemon on devices not backed by %s ignored "
                                              "(other users of this kernel)\n",
                                              ignored, scope);
                        return 0;
                }
                if (now_usec() >= deadline)
                        break;
                sleep_usec(100 * USEC_PER_MSEC);
        }
        if (!quiet)
                print_error("losetup --list and the daemon's objects disagree%s%s:\n%s",
                            scope ? " on devices backed by " : "", scope ?: "", report);
        return -1;
}

int env_check_consistency(Env *e) {
        return check_consistency_scoped(e, NULL, 3 * USEC_PER_SEC, false);
}

int env_check_consistency_under(Env *e, const char *dir) {
        /* The whole host first; when other users of the kernel keep udev (and so the daemon)
         * busy, our own devices must still agree exactly. */
        if (check_consistency_scoped(e, NULL, 3 * USEC_PER_SEC, true) == 0)
                return 0;
        return check_consistency_scoped(e, dir, 3 * USEC_PER_SEC, false);
}

int env_check_consistency_only_under(Env *e, const char *dir, uint64_t timeout_usec) {
        /* Quietly (no note about the rest of the host after every call); on failure once more
         * to print the differences. */
        if (check_consistency_scoped(e, dir, timeout_usec, true) == 0)
                return 0;
        return check_consistency_scoped(e, dir, 0, false);
}

size_t env_detach_all_under(const char *dir) {
        LosetupEntry *l = NULL;
        size_t n = 0, count = 0, len = strlen(dir);

        if (losetup_list(&l, &n) < 0)
                return 0;
        for (size_t i = 0; i < n; i++)
                if (strncmp(l[i].back_file, dir, len) == 0 && l[i].back_file[len] == '/') {
                        char *argv[] = {(char *) "losetup", (char *) "-d", l[i].node, NULL};
                        print_message("cleanup: losetup -d %s (%s)\n", l[i].node, l[i].back_file);
                        (void) run_command(argv, NULL, NULL, NULL);
                        count++;
                }
        losetup_entries_free(l, n);
        return count;
}

bool env_wait_nothing_under(const char *dir, uint64_t timeout_usec) {
        uint64_t deadline = now_usec() + timeout_usec;
        for (;;) {
                size_t n;
                if (losetup_count_backed_by(dir, true, &n) >= 0 && n == 0)
                        return true;
                if (now_usec() >= deadline)
                        return false;
                sleep_usec(50 * USEC_PER_MSEC);
        }
}

/* --- Resolve --- */

void resolved_done(Resolved *r) {
        free(r->base_kind);
        strv_free(r->chain);
        strv_free(r->aliases);
        free(r->unexpected);
        *r = (Resolved){};
}

static int read_string_array(sd_bus_message *m, char type, char ***l, size_t *n) {
        const char *s;
        int r;

        r = sd_bus_message_enter_container(m, 'a', type == 'o' ? "o" : "s");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_read_basic(m, type, &s)) > 0) {
                char *d = strdup(s);
                if (!d || strv_push(l, n, d) < 0) {
                        free(d);
                        return -ENOMEM;
                }
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

static int read_resolved(sd_bus_message *m, Resolved *p) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *key, *contents;
                uint64_t *t = NULL;

                r = sd_bus_message_read_basic(m, 's', &key);
                if (r < 0)
                        return r;
                r = sd_bus_message_peek_type(m, NULL, &contents);
                if (r < 0)
                        return r;
                if (streq(key, "base-device"))
                        t = &p->base_device;
                else if (streq(key, "base-inode"))
                        t = &p->base_inode;
                else if (streq(key, "offset"))
                        t = &p->offset;
                else if (streq(key, "size"))
                        t = &p->size;

                if (t && streq(contents, "t"))
                        r = sd_bus_message_read(m, "v", "t", t);
                else if (streq(key, "base-kind") && streq(contents, "s")) {
                        const char *s;
                        r = sd_bus_message_read(m, "v", "s", &s);
                        if (r >= 0) {
                                free(p->base_kind);
                                p->base_kind = strdup(s);
                                if (!p->base_kind)
                                        r = -ENOMEM;
                        }
                } else if ((streq(key, "chain") && streq(contents, "as")) ||
                           (streq(key, "aliases") && streq(contents, "ao"))) {
                        bool chain = streq(key, "chain");
                        r = sd_bus_message_enter_container(m, 'v', contents);
                        if (r >= 0)
                                r = chain ? read_string_array(m, 's', &p->chain, &p->n_chain)
                                          : read_string_array(m, 'o', &p->aliases, &p->n_aliases);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                } else {
                        char *s;
                        if (asprintf(&s, "%s%s%s:%s", p->unexpected ?: "", p->unexpected ? " " : "",
                                     key, contents) < 0)
                                return -ENOMEM;
                        free(p->unexpected);
                        p->unexpected = s;
                        r = sd_bus_message_skip(m, "v");
                }
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

int call_resolve(Env *e, int fd, sd_bus_error *error, Resolved *ret, unsigned n_options, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        Resolved p = {};
        va_list ap;
        int r;

        r = sd_bus_message_new_method_call(e->bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Resolve");
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(m, 'h', &fd);
        if (r < 0)
                return r;
        va_start(ap, n_options);
        r = append_options(m, n_options, &ap);
        va_end(ap);
        if (r < 0)
                return r;
        r = sd_bus_call(e->bus, m, CALL_TIMEOUT_USEC, error, &reply);
        if (r < 0)
                return r;
        r = read_resolved(reply, &p);
        if (r < 0) {
                resolved_done(&p);
                return r;
        }
        *ret = p;
        return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The group fixture every integration binary shares */

bool env_group_failed;

static int env_rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

void env_free(Env *e) {
        if (!e)
                return;
        free(e->tracked);
        free(e->held_fds);
        free(e->catchers);
        free(e->extra_buses);
        free(e->mounts);
        free(e->partitions);
        sd_bus_flush_close_unref(e->bus);
        free(e->daemon_unique_name);
        free(e->tmpdir);
        free(e->ramfs);
        free(e->loopmgrd);
        free(e->loopmgrctl);
        free(e->bus_address);
        free(e);
}

int env_group_setup(void **state, const char *name) {
        Env *e = calloc(1, sizeof(Env));
        char tmpl[PATH_MAX];
        int r;

        if (!e)
                goto fail;
        *state = e;
        (void) snprintf(tmpl, sizeof(tmpl), "/var/tmp/loopmgr-%s.XXXXXX", name);

        if (!mkdtemp(tmpl)) {
                print_error("mkdtemp(%s): %m\n", tmpl);
                goto fail;
        }
        e->tmpdir = strdup(tmpl);
        e->bus_address = strdup(getenv("DBUS_SYSTEM_BUS_ADDRESS"));
        if (!e->tmpdir || !e->bus_address)
                goto fail;

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
        print_message("loopmgrd %s (pid %d, %s), images in %s\n", e->loopmgrd, (int) e->daemon_pid,
                      e->daemon_unique_name, e->tmpdir);
        return 0;

fail:
        env_group_failed = true;
        return -1;
}

int env_group_teardown(void **state) {
        Env *e = *state;
        bool ok = true;
        size_t n = 0;

        if (!e)
                return 0;

        if (env_cleanup_test(e) > 0)
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
                        (void) nftw(e->tmpdir, env_rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
        }

        env_free(e);
        *state = NULL;
        if (!ok) {
                env_group_failed = true;
                return -1;
        }
        return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Small helpers the integration binaries share */

int env_loopmgrctl_for_users(Env *e) {
        _cleanup_free_ char *bin = NULL;
        char *copy = NULL;
        int r;

        if (asprintf(&bin, "%s/bin", e->tmpdir) < 0)
                return -ENOMEM;
        r = copy_for_users(e->loopmgrctl, bin, &copy);
        if (r < 0) {
                print_error("cannot copy %s to %s for the test users: %s\n", e->loopmgrctl, bin,
                            strerror(-r));
                return r;
        }
        print_message("the test users run %s, a copy of %s\n", copy, e->loopmgrctl);
        free(e->loopmgrctl);
        e->loopmgrctl = copy;
        return 0;
}

char *env_make_dir(Env *e, const char *prefix) {
        char *path;
        assert_true(asprintf(&path, "%s/%s-%u", e->tmpdir, prefix, ++e->file_counter) > 0);
        if (mkdir(path, 0700) < 0) {
                int saved = errno;
                free(path);
                fail_msg("mkdir under %s: %s", e->tmpdir, strerror(saved));
        }
        return path;
}

char *env_join(const char *dir, const char *name) {
        char *p;
        assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
        return p;
}

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

int env_skip_reason(const char **ret) {
        if (geteuid() != 0) {
                *ret = "not running as root";
                return 1;
        }
        if (access("/dev/loop-control", F_OK) < 0) {
                *ret = "no /dev/loop-control";
                return 1;
        }
        const char *address = getenv("DBUS_SYSTEM_BUS_ADDRESS");
        if (!address || !*address) {
                *ret = "DBUS_SYSTEM_BUS_ADDRESS is not set (run under tests/env.sh)";
                return 1;
        }
        sd_bus *bus = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = sd_bus_open_system(&bus);
        if (r >= 0)
                r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                       "org.freedesktop.DBus", "GetId", &error, NULL, "");
        sd_bus_flush_close_unref(bus);
        if (r < 0) {
                *ret = "the bus in DBUS_SYSTEM_BUS_ADDRESS is unreachable";
                return 1;
        }
        return 0;
}
