/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The kernel layer against real loop devices. Needs root and /dev/loop-control (exit 77
 * otherwise). Other tests share the kernel: images live in a fresh mkdtemp() directory, every
 * device a test creates is recorded and detached in the teardown, and as a safety net the
 * teardown also detaches any device whose backing file lies in our directory (a device left
 * behind by a failed attach could only be bound to one of our images).
 *
 * ioctl() is interposed (defined below; the core library is linked statically into this
 * executable, so its calls bind here) to fake a kernel without LOOP_CONFIGURE and a failing
 * LOOP_SET_STATUS64, which exercise the fallback path and the cleanup of a half-configured
 * device on real devices.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <linux/blkpg.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/magic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>

#include <cmocka.h>

#include "loop-kernel.h"
#include "util.h"
#include "test-loop-kernel-real.h"
/* ---- ioctl interposition ---- */

bool fake_no_loop_configure;

bool fake_set_status_fails;

unsigned n_loop_configure, n_loop_set_fd, n_loop_clr_fd;

/* What the kernel was handed by the last LOOP_CONFIGURE/LOOP_SET_FD. */
int last_backing_fd = -1, last_backing_flags = -1;
int ioctl(int fd, unsigned long request, ...) {
        va_list ap;
        void *arg;

        va_start(ap, request);
        arg = va_arg(ap, void *);
        va_end(ap);

        if (request == LOOP_CONFIGURE || request == LOOP_SET_FD) {
                last_backing_fd = request == LOOP_CONFIGURE ? (int) ((struct loop_config *) arg)->fd
                                                            : (int) (unsigned long) arg;
                last_backing_flags = fcntl(last_backing_fd, F_GETFL);
        }
        if (request == LOOP_CONFIGURE) {
                n_loop_configure++;
                if (fake_no_loop_configure) {
                        errno = ENOTTY;
                        return -1;
                }
        }
        if (request == LOOP_SET_FD)
                n_loop_set_fd++;
        if (request == LOOP_CLR_FD)
                n_loop_clr_fd++;
        if (request == LOOP_SET_STATUS64 && fake_set_status_fails) {
                errno = EIO;
                return -1;
        }

        return (int) syscall(SYS_ioctl, fd, request, arg);
}

/* ---- fixture ---- */

char *real_dir; /* on a file system that does O_DIRECT, or NULL */

char *any_dir; /* where images go when the fs does not matter */

char *tmpfs_dir; /* on tmpfs, or NULL */

bool udev_running;

uint64_t now_usec(void) {
        struct timespec ts;

        assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

void sleep_ms(unsigned ms) {
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L};

        (void) nanosleep(&ts, NULL);
}

bool fs_is_tmpfs(const char *path) {
        struct statfs sfs;

        return statfs(path, &sfs) >= 0 && sfs.f_type == TMPFS_MAGIC;
}

bool fs_does_odirect(const char *dir) {
        _cleanup_free_ char *p = NULL;
        int fd;

        if (asprintf(&p, "%s/odirect-probe", dir) < 0)
                return false;
        fd = open(p, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
        (void) unlink(p);
        if (fd < 0)
                return false;
        (void) close(fd);
        return true;
}

char *make_tmpdir(const char *parent) {
        _cleanup_free_ char *t = NULL;

        if (asprintf(&t, "%s/loopmgr-test-kernel-XXXXXX", parent) < 0)
                return NULL;
        if (!mkdtemp(t))
                return NULL;
        return TAKE_PTR(t);
}

void rm_rf(const char *dir) {
        char cmd[512];

        if (!dir)
                return;
        (void) snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", dir);
        (void) system(cmd);
}
static int group_setup(void **state) {
        const char *candidates[] = {"/var/tmp", "/tmp", "/root"};

        for (size_t i = 0; i < ELEMENTSOF(candidates) && !real_dir; i++) {
                if (fs_is_tmpfs(candidates[i]))
                        continue;
                real_dir = make_tmpdir(candidates[i]);
                if (real_dir && !fs_does_odirect(real_dir)) {
                        rm_rf(real_dir);
                        free(real_dir);
                        real_dir = NULL;
                }
        }
        any_dir = real_dir ? strdup(real_dir) : make_tmpdir("/tmp");
        if (!any_dir)
                return -1;
        if (!real_dir)
                fprintf(stderr, "# no O_DIRECT-capable file system found: direct-io=on checks "
                                "on real file systems are skipped\n");

        if (fs_is_tmpfs("/dev/shm"))
                tmpfs_dir = make_tmpdir("/dev/shm");

        udev_running = system("udevadm control --ping >/dev/null 2>&1") == 0;
        fprintf(stderr, "# images in %s, tmpfs %s, udev %s\n", any_dir, tmpfs_dir ?: "(none)",
                udev_running ? "running" : "not running");
        return 0;
}

static int group_teardown(void **state) {
        if (real_dir && !streq_ptr(real_dir, any_dir))
                rm_rf(real_dir);
        rm_rf(any_dir);
        rm_rf(tmpfs_dir);
        free(real_dir);
        free(any_dir);
        free(tmpfs_dir);
        return 0;
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));

        if (!f)
                return -1;
        fake_no_loop_configure = fake_set_status_fails = false;
        *state = f;
        return 0;
}

void track_device(Fixture *f, const LoopStatus *s) {
        assert_true(f->n_devices < ELEMENTSOF(f->devices));
        (void) snprintf(f->devices[f->n_devices].name, sizeof(f->devices[0].name), "%s", s->name);
        f->devices[f->n_devices].diskseq = s->diskseq;
        f->n_devices++;
}

int track_fd(Fixture *f, int fd) {
        assert_true(fd >= 0);
        assert_true(f->n_fds < ELEMENTSOF(f->fds));
        f->fds[f->n_fds++] = fd;
        return fd;
}

void untrack_fd(Fixture *f, int fd) {
        for (size_t i = 0; i < f->n_fds; i++)
                if (f->fds[i] == fd)
                        f->fds[i] = -EBADF;
        (void) close(fd);
}

bool wait_gone(const char *name, uint64_t diskseq, unsigned timeout_ms) {
        for (unsigned waited = 0;; waited += 10) {
                LoopStatus s = {};
                bool gone;
                int r;

                r = loop_read_sysfs(NULL, name, &s);
                gone = r == -ENOENT || (r >= 0 && (!s.bound || s.diskseq != diskseq));
                loop_status_done(&s);
                if (gone)
                        return true;
                if (waited >= timeout_ms)
                        return false;
                sleep_ms(10);
        }
}

void detach_and_wait(const char *name, uint64_t diskseq) {
        int r;

        r = loop_detach(NULL, name, diskseq);
        if (r == 0 && !wait_gone(name, diskseq, 5000))
                fprintf(stderr, "# WARNING: %s (diskseq %" PRIu64 ") still bound after detach\n",
                        name, diskseq);
        else if (r < 0 && r != -ESTALE)
                fprintf(stderr, "# WARNING: detaching %s failed: %s\n", name, strerror(-r));
}

bool backed_by_dir(const LoopStatus *s, const char *dir) {
        size_t l;

        if (!dir || !s->bound || !s->backing_file)
                return false;
        l = strlen(dir);
        return strncmp(s->backing_file, dir, l) == 0 && s->backing_file[l] == '/';
}

size_t count_devices_backed_by(const char *path) {
        _cleanup_strv_free_ char **names = NULL;
        size_t n = 0;

        assert_int_equal(loop_list(NULL, &names), 0);
        for (char **i = names; *i; i++) {
                LoopStatus s = {};

                if (loop_read_sysfs(NULL, *i, &s) < 0)
                        continue;
                n += s.bound && streq_ptr(s.backing_file, path);
                loop_status_done(&s);
        }
        return n;
}

size_t count_our_devices(void) {
        _cleanup_strv_free_ char **names = NULL;
        size_t n = 0;

        assert_int_equal(loop_list(NULL, &names), 0);
        for (char **i = names; *i; i++) {
                LoopStatus s = {};

                if (loop_read_sysfs(NULL, *i, &s) < 0)
                        continue;
                if (backed_by_dir(&s, any_dir) || backed_by_dir(&s, real_dir) ||
                    backed_by_dir(&s, tmpfs_dir))
                        n++;
                loop_status_done(&s);
        }
        return n;
}
static int teardown(void **state) {
        Fixture *f = *state;
        _cleanup_strv_free_ char **names = NULL;

        fake_no_loop_configure = fake_set_status_fails = false;

        for (size_t i = 0; i < f->n_fds; i++)
                if (f->fds[i] >= 0)
                        (void) close(f->fds[i]);

        /* Devices stacked on one of ours that we did not record (a failed attach that left
         * one behind): only while ours still carries our diskseq, so that a recycled loopN of
         * somebody else is never mistaken for ours. */
        for (size_t i = f->n_devices; i > 0; i--) {
                _cleanup_strv_free_ char **all = NULL;
                _cleanup_free_ char *node = NULL;
                LoopStatus lower = {};
                bool ours;

                if (loop_read_sysfs(NULL, f->devices[i - 1].name, &lower) < 0)
                        continue;
                ours = lower.bound && lower.diskseq == f->devices[i - 1].diskseq;
                loop_status_done(&lower);
                if (!ours || asprintf(&node, "/dev/%s", f->devices[i - 1].name) < 0 ||
                    loop_list(NULL, &all) < 0)
                        continue;

                for (char **j = all; *j; j++) {
                        LoopStatus s = {};
                        bool tracked = false;

                        if (loop_read_sysfs(NULL, *j, &s) < 0)
                                continue;
                        for (size_t k = 0; k < f->n_devices; k++)
                                tracked = tracked || (streq(f->devices[k].name, s.name) &&
                                                      f->devices[k].diskseq == s.diskseq);
                        if (s.bound && !tracked && streq_ptr(s.backing_file, node)) {
                                fprintf(stderr, "# cleaning up left-over %s (%s)\n", s.name,
                                        s.backing_file);
                                detach_and_wait(s.name, s.diskseq);
                        }
                        loop_status_done(&s);
                }
        }

        /* Reverse order: devices stacked on our devices first. */
        for (size_t i = f->n_devices; i > 0; i--)
                detach_and_wait(f->devices[i - 1].name, f->devices[i - 1].diskseq);

        /* Safety net, see the top of the file. */
        if (loop_list(NULL, &names) >= 0)
                for (char **i = names; *i; i++) {
                        LoopStatus s = {};

                        if (loop_read_sysfs(NULL, *i, &s) < 0)
                                continue;
                        if (backed_by_dir(&s, any_dir) || backed_by_dir(&s, real_dir) ||
                            backed_by_dir(&s, tmpfs_dir)) {
                                fprintf(stderr, "# cleaning up left-over %s (%s)\n", s.name,
                                        s.backing_file);
                                detach_and_wait(s.name, s.diskseq);
                        }
                        loop_status_done(&s);
                }

        free(f);
        return 0;
}

/* Creates <dir>/<name> of the given size; returns the path. */
char *make_image(const char *dir, const char *name, uint64_t size) {
        char *p;
        int fd;

        assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
        fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        assert_int_equal(close(fd), 0);
        return p;
}

void wait_udev(const LoopStatus *s) {
        if (!udev_running)
                return;
        for (unsigned i = 0; i < 1000; i++) {
                if (loop_udev_link_ready(NULL, s->name, s->diskseq) > 0)
                        break;
                sleep_ms(10);
        }
        assert_int_equal(loop_udev_link_ready(NULL, s->name, s->diskseq), 1);
        /* Whatever else udev queued for the device (a partition scan's events). */
        (void) system("udevadm settle --timeout=10");
}

int attach(Fixture *f, int fd, const LoopConfig *c, LoopStatus *ret) {
        int r;

        r = loop_attach(NULL, fd, c, ret);
        if (r >= 0)
                track_device(f, ret);
        return r;
}

void check_against_sysfs(const LoopStatus *s) {
        LoopStatus again = {};

        assert_int_equal(loop_read_sysfs(NULL, s->name, &again), 0);
        assert_true(again.bound);
        assert_true(again.diskseq == s->diskseq);
        assert_true(again.devnum == s->devnum);
        assert_true(again.size == s->size);
        assert_true(again.offset == s->offset);
        assert_true(again.size_limit == s->size_limit);
        assert_int_equal(again.sector_size, s->sector_size);
        assert_int_equal(again.read_only, s->read_only);
        assert_int_equal(again.direct_io, s->direct_io);
        assert_int_equal(again.autoclear, s->autoclear);
        assert_int_equal(again.partscan, s->partscan);
        assert_string_equal(again.backing_file, s->backing_file);
        /* loop_attach() reads its result from the device, not sysfs: the ids must agree too. */
        assert_int_equal(loop_read_ids(NULL, &again), 0);
        assert_true(again.backing_device == s->backing_device);
        assert_true(again.backing_inode == s->backing_inode);
        assert_true(again.backing_rdevice == s->backing_rdevice);
        loop_status_done(&again);
}

void check_node(const LoopStatus *s) {
        _cleanup_free_ char *node = NULL;
        struct stat st;

        assert_true(asprintf(&node, "/dev/%s", s->name) > 0);
        assert_int_equal(stat(node, &st), 0);
        assert_true(S_ISBLK(st.st_mode));
        assert_true(st.st_rdev == s->devnum);
        assert_int_equal(major(s->devnum), 7);
}
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_attach_basic),
                T(test_attach_timing),
                T(test_locked_free_device_skipped),
                T(test_attach_hint),
                T(test_offset_size_limit),
                T(test_bad_range_creates_nothing),
                T(test_read_only_fd),
                T(test_sector_size_4096),
                T(test_direct_io_real_fs),
                T(test_direct_io_caller_odirect_off),
                T(test_direct_io_tmpfs),
                T(test_direct_io_on_refused_over_4k),
                T(test_detach_returns_1),
                T(test_detach_held_open),
                T(test_detach_nowait_locked),
                T(test_detach_nowait_unlocked),
                T(test_detach_wrong_diskseq),
                T(test_open_binding),
                T(test_set_capacity),
                T(test_set_autoclear),
                T(test_attach_autoclear),
                T(test_partscan),
                T(test_detach_deletes_partitions),
                T(test_partscan_table),
                T(test_partscan_no_table),
                T(test_no_hold_without_partscan),
                T(test_deleted_backing),
                T(test_legacy_path),
                T(test_failure_after_configure_clears),
                T(test_loop_over_loop),
        };

        if (geteuid() != 0) {
                fprintf(stderr, "test-loop-kernel-real: needs root to configure loop devices, "
                                "skipping.\n");
                return 77;
        }
        if (access("/dev/loop-control", F_OK) < 0) {
                fprintf(stderr, "test-loop-kernel-real: no /dev/loop-control (loop driver "
                                "missing?), skipping.\n");
                return 77;
        }

        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
