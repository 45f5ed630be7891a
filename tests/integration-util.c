/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The test environment: bookkeeping of what a test creates and its cleanup, mounts and
 * partitions, the group fixture and small helpers the integration binaries share. */

#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

/* cmocka wants these first. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-internal.h"
#include "integration-util.h"
#include "loopmgr-bus.h"

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

int grow(void **array, size_t *n, size_t element_size) {
        void *p = realloc(*array, (*n + 1) * element_size);
        if (!p)
                return -ENOMEM;
        *array = p;
        return 0;
}

int strv_push(char ***l, size_t *n, char *s) {
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
        int fd = open(path, flags | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        return env_hold_fd(e, fd);
}

int env_hold_fd(Env *e, int fd) {
        if (grow((void **) &e->held_fds, &e->n_held, sizeof(int)) < 0) {
                safe_close(fd);
                return -ENOMEM;
        }
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

char *device_object_path(uint64_t diskseq) {
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

void fclosep(FILE **f) {
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

bool env_expect_nothing_under(const char *dir, uint64_t usec) {
        if (env_wait_nothing_under(dir, usec))
                return true;
        print_error("devices backed by %s are left over\n", dir);
        (void) env_detach_all_under(dir);
        (void) env_wait_nothing_under(dir, 5 * USEC_PER_SEC);
        return false;
}

int env_run_tests(const char *name, const struct CMUnitTest *tests, size_t n,
                  CMFixtureFunction setup, CMFixtureFunction teardown, const bool *also_failed) {
        const char *reason, *filter;
        int failed;

        if (env_skip_reason(&reason)) {
                printf("skipping: %s\n", reason);
                return 77;
        }
        if (access("/run/udev/control", F_OK) < 0)
                fprintf(stderr, "warning: udev does not seem to run (no /run/udev/control); "
                                "attaching will time out\n");
        filter = getenv("LOOPMGR_TEST_FILTER");
        if (filter && *filter)
                cmocka_set_test_filter(filter);
        filter = getenv("LOOPMGR_TEST_SKIP");
        if (filter && *filter)
                cmocka_set_skip_filter(filter);

        failed = _cmocka_run_group_tests(name, tests, n, setup, teardown);
        if (failed || env_group_failed || (also_failed && *also_failed)) {
                fflush(NULL);
                _exit(1);
        }
        return 0;
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
