/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-stress under load: stress_mixed (client threads and the alias sampler) and
 * loop_block (systemd's test-loop-block). */

#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "test-stress.h"

/* ------------------------------------------------------------------------------------------ */
/* 7. Mixed stress with an alias sampler */

typedef struct Stress {
        Env *e;
        unsigned n_threads, n_cycles;
        char *shared;   /* ext4 image every thread attaches (and mounts) */
        char **own;     /* two ext4 images per thread */
        Tally replies;  /* "Attach: ok", "Attach: ...Overlap", "Detach: pending", ... */
        Tally problems; /* failures */
        atomic_uint cycles_done;
        atomic_bool stop_sampler;
        uint64_t rss_at_50; /* KiB, taken when cycle 50 of every thread is done */
        uint64_t rss_at_50_time;
        unsigned samples, max_bound, aliases;
        uint64_t sample_usec_max;
        uint64_t start;
} Stress;

typedef struct Worker {
        Stress *s;
        unsigned id;
        unsigned seed;
        sd_bus *bus;
        char *mnt;
        Ref held[4];
        size_t n_held;
        unsigned mounts;
} Worker;

static const char *short_name(const sd_bus_error *error, int r) {
        if (error && error->name)
                return strncmp(error->name, LOOPMGR_ERROR_PREFIX, strlen(LOOPMGR_ERROR_PREFIX)) == 0
                               ? error->name + strlen(LOOPMGR_ERROR_PREFIX)
                               : error->name;
        return strerror(-r);
}

/* One Attach; on success the reference is held by the worker. `allowed` lists the error
 * names (besides the documented ones) that are not failures... there are none: every
 * undocumented error is a failure. */
static bool worker_attach(Worker *w, const char *what, const char *path, int flags,
                          const AttachOpts *o, Ref **ret) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        char key[160];
        Ref ref;

        int r = raw_attach(w->bus, path, flags, o, &error, &ref);
        if (r >= 0) {
                snprintf(key, sizeof(key), "Attach %s: %s", what, ref.reused ? "reused" : "new");
                tally_count(&w->s->replies, key);
                if (strncmp(ref.node, "/dev/loop", 9) != 0 || ref.diskseq == 0) {
                        tally_fail(&w->s->problems,
                                   "thread %u: Attach %s returned node '%s' "
                                   "diskseq %" PRIu64,
                                   w->id, what, ref.node, ref.diskseq);
                }
                assert(w->n_held < ELEMENTSOF(w->held));
                w->held[w->n_held] = ref;
                if (ret)
                        *ret = &w->held[w->n_held];
                w->n_held++;
                return true;
        }
        snprintf(key, sizeof(key), "Attach %s: %s", what, short_name(&error, r));
        tally_count(&w->s->replies, key);
        if (!error_is_documented(&error))
                tally_fail(&w->s->problems,
                           "thread %u: Attach %s failed with an undocumented "
                           "error: %s: %s",
                           w->id, what, error.name ?: strerror(-r), error.message ?: "");
        return false;
}

static void worker_detach(Worker *w, size_t i) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        char st[32], key[96];
        Ref ref = w->held[i];

        w->held[i] = w->held[--w->n_held];
        int r = raw_detach(w->bus, ref.object, &error, st, sizeof(st));
        if (r >= 0) {
                snprintf(key, sizeof(key), "Detach: %s", st);
                tally_count(&w->s->replies, key);
                if (!streq(st, LOOPMGR_STATE_DETACHED) && !streq(st, LOOPMGR_STATE_PENDING) &&
                    !streq(st, LOOPMGR_STATE_ATTACHED))
                        tally_fail(&w->s->problems, "thread %u: Detach %s returned '%s'", w->id,
                                   ref.node, st);
                return;
        }
        snprintf(key, sizeof(key), "Detach: %s", short_name(&error, r));
        tally_count(&w->s->replies, key);
        if (!error_is_documented(&error))
                tally_fail(&w->s->problems,
                           "thread %u: Detach %s failed with an undocumented "
                           "error: %s: %s",
                           w->id, ref.node, error.name ?: strerror(-r), error.message ?: "");
}

static void worker_mount_cycle(Worker *w, const Ref *ref, const char *what) {
        if (mount(ref->node, w->mnt, "ext4", 0, NULL) < 0) {
                tally_fail(&w->s->problems, "thread %u: mount %s (%s) on %s: %m", w->id, ref->node,
                           what, w->mnt);
                return;
        }
        w->mounts++;
        /* A little I/O through the page cache of this device. */
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/t%u", w->mnt, w->id);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, "x", 1) != 1)
                tally_fail(&w->s->problems, "thread %u: writing %s: %m", w->id, path);
        if (fd >= 0)
                close(fd);
        int r = umount_retry(w->mnt);
        if (r < 0) {
                tally_fail(&w->s->problems, "thread %u: umount %s: %s; detaching it lazily", w->id,
                           w->mnt, strerror(-r));
                (void) umount2(w->mnt, MNT_DETACH);
        }
}

static void *worker_run(void *userdata) {
        Worker *w = userdata;
        Stress *s = w->s;
        int r;

        r = sd_bus_open_system(&w->bus);
        if (r < 0) {
                tally_fail(&s->problems, "thread %u: cannot connect to the bus: %s", w->id,
                           strerror(-r));
                return NULL;
        }
        for (unsigned c = 0; c < s->n_cycles; c++) {
                Ref *ref = NULL;

                /* The shared image, whole and writable: the common case, identical requests
                 * from every thread meet on one device. */
                AttachOpts o = ATTACH_OPTS_DEFAULT;
                if (worker_attach(w, "shared", s->shared, O_RDWR, &o, &ref) && c % 4 == w->id % 4)
                        worker_mount_cycle(w, ref, "shared image");

                /* An image of our own. */
                const char *own = s->own[w->id * 2 + c % 2];
                ref = NULL;
                if (worker_attach(w, "own", own, O_RDWR, &o, &ref) && c % 8 == 1)
                        worker_mount_cycle(w, ref, "own image");

                /* Requests that must meet the alias rule over the shared image. */
                unsigned x = (unsigned) rand_r(&w->seed) % 16;
                if (x < 4) {
                        AttachOpts sub = ATTACH_OPTS_DEFAULT;
                        sub.offset = 1 * MiB;
                        sub.size_limit = 1 * MiB;
                        (void) worker_attach(w, "shared [1M, 2M)", s->shared, O_RDWR, &sub, NULL);
                } else if (x == 4) {
                        AttachOpts ex = ATTACH_OPTS_DEFAULT;
                        ex.sharing = "exclusive";
                        (void) worker_attach(w, "shared exclusive", s->shared, O_RDWR, &ex, NULL);
                } else if (x == 5) {
                        AttachOpts ro = ATTACH_OPTS_DEFAULT;
                        ro.read_only = true;
                        (void) worker_attach(w, "shared read-only", s->shared, O_RDONLY, &ro, NULL);
                }

                /* Drop everything, in a random order. */
                while (w->n_held > 0)
                        worker_detach(w, (size_t) rand_r(&w->seed) % w->n_held);

                unsigned done = atomic_fetch_add(&s->cycles_done, 1) + 1;
                if (done == 50 * s->n_threads && s->e->daemon_pid > 0) {
                        uint64_t kib;
                        if (proc_vmrss_kib(s->e->daemon_pid, &kib) >= 0) {
                                s->rss_at_50 = kib;
                                s->rss_at_50_time = now_usec();
                        }
                }
        }
        sd_bus_flush_close_unref(w->bus);
        w->bus = NULL;
        return NULL;
}

static void *sampler_run(void *userdata) {
        Stress *s = userdata;

        while (!atomic_load(&s->stop_sampler)) {
                uint64_t t0 = now_usec();
                Binding *l = NULL;
                size_t n = 0;

                if (bindings_under(s->e->tmpdir, &l, &n) >= 0) {
                        s->samples++;
                        if (n > s->max_bound)
                                s->max_bound = (unsigned) n;
                        for (size_t i = 0; i < n; i++)
                                for (size_t j = i + 1; j < n; j++) {
                                        uint64_t a0, a1, b0, b1;
                                        if (!streq(l[i].backing, l[j].backing))
                                                continue;
                                        binding_range(&l[i], &a0, &a1);
                                        binding_range(&l[j], &b0, &b1);
                                        if (a0 >= b1 || b0 >= a1)
                                                continue;
                                        /* The two readings were not simultaneous: both must
                                         * still be there, unchanged, now. A binding (a
                                         * diskseq) never comes back, so both existed at this
                                         * instant. */
                                        if (!binding_still(&l[i]) || !binding_still(&l[j]))
                                                continue;
                                        s->aliases++;
                                        tally_fail(&s->problems,
                                                   "ALIAS: %s (diskseq %" PRIu64 ") [%" PRIu64
                                                   ", %" PRIu64 ") and %s (diskseq %" PRIu64
                                                   ") [%" PRIu64 ", %" PRIu64 ") of %s",
                                                   l[i].name, l[i].diskseq, a0, a1, l[j].name,
                                                   l[j].diskseq, b0, b1, l[i].backing);
                                }
                }
                free(l);
                uint64_t took = now_usec() - t0;
                if (took > s->sample_usec_max)
                        s->sample_usec_max = took;
                sleep_usec(20 * USEC_PER_MSEC);
        }
        return NULL;
}

void test_stress_mixed(void **state) {
        Env *e = *state;
        Stress s = {
                .e = e,
                .n_threads = env_unsigned("LOOPMGR_STRESS_THREADS", 8),
                .n_cycles = env_unsigned("LOOPMGR_STRESS_CYCLES", 200),
        };
        _cleanup_free_ char *dir = env_make_dir(e, "mixed");
        Worker *workers = calloc(s.n_threads, sizeof(Worker));
        pthread_t *threads = calloc(s.n_threads, sizeof(pthread_t));
        pthread_t sampler;
        unsigned rss_limit = env_unsigned("LOOPMGR_STRESS_RSS_KIB", 4096);
        uint64_t rss_start = 0, rss_end = 0;

        assert_non_null(workers);
        assert_non_null(threads);
        pthread_mutex_init(&s.replies.lock, NULL);
        pthread_mutex_init(&s.problems.lock, NULL);

        s.shared = make_image_in(e, dir, 16 * MiB);
        mkfs_ext4(s.shared);
        s.own = calloc(s.n_threads * 2, sizeof(char *));
        assert_non_null(s.own);
        for (unsigned i = 0; i < s.n_threads * 2; i++) {
                s.own[i] = make_image_in(e, dir, 8 * MiB);
                mkfs_ext4(s.own[i]);
        }
        for (unsigned i = 0; i < s.n_threads; i++) {
                workers[i] = (Worker){.s = &s, .id = i, .seed = 0x5eed + i};
                assert_true(asprintf(&workers[i].mnt, "%s/mnt-%u", dir, i) > 0);
                assert_int_equal(mkdir(workers[i].mnt, 0700), 0);
        }
        (void) proc_vmrss_kib(e->daemon_pid, &rss_start);

        print_message("  %u threads x %u cycles, daemon VmRSS %" PRIu64 " KiB at the start\n",
                      s.n_threads, s.n_cycles, rss_start);
        s.start = now_usec();
        assert_int_equal(pthread_create(&sampler, NULL, sampler_run, &s), 0);
        for (unsigned i = 0; i < s.n_threads; i++)
                assert_int_equal(pthread_create(&threads[i], NULL, worker_run, &workers[i]), 0);
        for (unsigned i = 0; i < s.n_threads; i++)
                pthread_join(threads[i], NULL);
        uint64_t elapsed = now_usec() - s.start;

        /* Pending teardowns finish after the last close; the sampler keeps watching. */
        bool empty = env_wait_nothing_under(dir, 5 * USEC_PER_SEC);
        atomic_store(&s.stop_sampler, true);
        pthread_join(sampler, NULL);
        (void) proc_vmrss_kib(e->daemon_pid, &rss_end);

        unsigned mounts = 0;
        for (unsigned i = 0; i < s.n_threads; i++)
                mounts += workers[i].mounts;
        print_message("  %u cycles in %.1f s (%.1f cycles/s), %u mounts\n",
                      atomic_load(&s.cycles_done), (double) elapsed / USEC_PER_SEC,
                      atomic_load(&s.cycles_done) / ((double) elapsed / USEC_PER_SEC), mounts);
        tally_print(&s.replies, "replies");
        print_message("  sampler: %u samples, up to %u bindings of the test at once, slowest "
                      "sample %.1f ms, %u alias(es)\n",
                      s.samples, s.max_bound, (double) s.sample_usec_max / USEC_PER_MSEC,
                      s.aliases);
        print_message("  daemon VmRSS: %" PRIu64 " KiB at the start, %" PRIu64
                      " KiB after cycle 50, %" PRIu64 " KiB at the end (%+" PRId64 " KiB)\n",
                      rss_start, s.rss_at_50, rss_end, (int64_t) rss_end - (int64_t) s.rss_at_50);

        for (unsigned i = 0; i < s.n_threads; i++)
                free(workers[i].mnt);
        for (unsigned i = 0; i < s.n_threads * 2; i++)
                free(s.own[i]);
        free(s.own);
        free(s.shared);
        free(workers);
        free(threads);

        unsigned failures = tally_report(&s.problems);
        if (!empty) {
                Binding *l = NULL;
                size_t n = 0;
                if (bindings_under(dir, &l, &n) >= 0)
                        for (size_t i = 0; i < n; i++) {
                                print_error("  left over: %s (diskseq %" PRIu64 ") over %s\n",
                                            l[i].name, l[i].diskseq, l[i].backing);
                                (void) env_track_device(e, l[i].name, l[i].diskseq);
                        }
                free(l);
                fail_msg("devices of the stress test are left 5 s after the last Detach");
        }
        if (failures > 0)
                fail_msg("%u failure(s) under stress (listed above)", failures);
        if (s.rss_at_50 > 0 && s.n_cycles > 50 && rss_end > s.rss_at_50 + rss_limit)
                fail_msg("the daemon's VmRSS grew by %" PRIu64 " KiB between cycle 50 and the end "
                         "(limit %u KiB)",
                         rss_end - s.rss_at_50, rss_limit);
}

/* ------------------------------------------------------------------------------------------ */
/* 8. systemd's test-loop-block, in our terms */

typedef struct LoopBlock {
        const char *image;
        unsigned n_iterations;
        uint64_t part_start, part_sectors;
        Tally problems;
        Tally replies;
} LoopBlock;

typedef struct LoopBlockWorker {
        LoopBlock *lb;
        unsigned id;
        char *mnt;
        uint64_t max_iteration_usec;
        unsigned partitions_added;
} LoopBlockWorker;

/* /dev/<disk>p1 of the current binding, added with addpart when it is not there yet (another
 * thread may add it at the same time: then it exists afterwards, which is all we need). */
static int ensure_partition(LoopBlockWorker *w, const Ref *ref, char *node, size_t size) {
        const char *disk = ref->node + 5;
        char sys[PATH_MAX], start[32], sectors[32];
        uint64_t deadline = now_usec() + 5 * USEC_PER_SEC;

        snprintf(node, size, "%sp1", ref->node);
        snprintf(sys, sizeof(sys), "/sys/block/%s/%sp1", disk, disk);
        if (access(sys, F_OK) < 0) {
                _cleanup_free_ char *err = NULL;
                snprintf(start, sizeof(start), "%" PRIu64, w->lb->part_start);
                snprintf(sectors, sizeof(sectors), "%" PRIu64, w->lb->part_sectors);
                char *argv[] = {
                        (char *) "addpart", (char *) ref->node, (char *) "1", start, sectors, NULL};
                int r = run_command(argv, NULL, NULL, &err);
                if (r != 0 && access(sys, F_OK) < 0) {
                        tally_fail(&w->lb->problems, "thread %u: addpart %s 1: exit %d: %s", w->id,
                                   ref->node, r, err ?: "");
                        return -EIO;
                }
                if (r == 0)
                        w->partitions_added++;
        }
        /* devtmpfs makes the node; it must be this partition's. */
        for (;;) {
                char dev[64], devattr[PATH_MAX];
                unsigned ma, mi;
                struct stat st;
                snprintf(devattr, sizeof(devattr), "%sp1/dev", disk);
                if (read_attr(disk, devattr, dev, sizeof(dev)) >= 0 &&
                    sscanf(dev, "%u:%u", &ma, &mi) == 2 && stat(node, &st) >= 0 &&
                    S_ISBLK(st.st_mode) && st.st_rdev == makedev(ma, mi)) {
                        /* The kernel announces a BLKPG partition (sysfs, uevent, devtmpfs
                         * node) a moment before it registers the block device: opens fail
                         * with ENXIO until then (add_partition(): device_add() comes before
                         * bdev_add()). Ready means openable. */
                        int fd = open(node, O_RDONLY | O_CLOEXEC);
                        if (fd >= 0) {
                                close(fd);
                                return 0;
                        }
                        if (errno != ENXIO) {
                                tally_fail(&w->lb->problems, "thread %u: open %s: %m", w->id, node);
                                return -errno;
                        }
                }
                if (now_usec() >= deadline) {
                        tally_fail(&w->lb->problems, "thread %u: %s did not appear", w->id, node);
                        return -ETIMEDOUT;
                }
                sleep_usec(5 * USEC_PER_MSEC);
        }
}

static void *loop_block_run(void *userdata) {
        LoopBlockWorker *w = userdata;
        LoopBlock *lb = w->lb;
        sd_bus *bus = NULL;
        int r;

        r = sd_bus_open_system(&bus);
        if (r < 0) {
                tally_fail(&lb->problems, "thread %u: cannot connect to the bus: %s", w->id,
                           strerror(-r));
                return NULL;
        }
        for (unsigned i = 0; i < lb->n_iterations; i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                AttachOpts o = ATTACH_OPTS_DEFAULT;
                char node[64], st[32];
                uint64_t t0 = now_usec();
                Ref ref;

                o.read_only = true;
                r = raw_attach(bus, lb->image, O_RDONLY, &o, &error, &ref);
                if (r < 0) {
                        tally_count(&lb->replies, short_name(&error, r));
                        tally_fail(&lb->problems,
                                   "thread %u, iteration %u: Attach (read-only, "
                                   "shared): %s: %s",
                                   w->id, i, error.name ?: strerror(-r), error.message ?: "");
                        continue;
                }
                tally_count(&lb->replies, ref.reused ? "Attach: reused" : "Attach: new");
                if (ensure_partition(w, &ref, node, sizeof(node)) >= 0) {
                        if (mount(node, w->mnt, "ext4", MS_RDONLY, NULL) < 0) {
                                int saved = errno;
                                /* What the kernel says right after, for the report. */
                                char sys[PATH_MAX];
                                uint64_t seq = 0;
                                snprintf(sys, sizeof(sys), "/sys/block/%s/%sp1", ref.node + 5,
                                         ref.node + 5);
                                bool part = access(sys, F_OK) == 0;
                                (void) read_attr_u64(ref.node + 5, "diskseq", &seq);
                                int bound = loop_binding_present(ref.node + 5, ref.diskseq);
                                tally_fail(&lb->problems,
                                           "thread %u, iteration %u: mount -o ro "
                                           "%s %s: %s (reference on diskseq %" PRIu64
                                           ", reused=%s; now: diskseq %" PRIu64 ", that binding "
                                           "%s, %sp1 %s)",
                                           w->id, i, node, w->mnt, strerror(saved), ref.diskseq,
                                           ref.reused ? "yes" : "no", seq,
                                           bound == 1 ? "bound" : "gone", ref.node + 5,
                                           part ? "present" : "absent");
                        } else {
                                char f[PATH_MAX];
                                struct stat sb;
                                snprintf(f, sizeof(f), "%s/hello", w->mnt);
                                if (stat(f, &sb) < 0)
                                        tally_fail(&lb->problems, "thread %u: %s: %m", w->id, f);
                                r = umount_retry(w->mnt);
                                if (r < 0) {
                                        tally_fail(&lb->problems, "thread %u: umount %s: %s", w->id,
                                                   w->mnt, strerror(-r));
                                        (void) umount2(w->mnt, MNT_DETACH);
                                }
                        }
                }
                sd_bus_error_free(&error);
                r = raw_detach(bus, ref.object, &error, st, sizeof(st));
                if (r < 0)
                        tally_fail(&lb->problems, "thread %u, iteration %u: Detach %s: %s: %s",
                                   w->id, i, ref.node, error.name ?: strerror(-r),
                                   error.message ?: "");
                else {
                        char key[64];
                        snprintf(key, sizeof(key), "Detach: %s", st);
                        tally_count(&lb->replies, key);
                }
                uint64_t took = now_usec() - t0;
                if (took > w->max_iteration_usec)
                        w->max_iteration_usec = took;
        }
        sd_bus_flush_close_unref(bus);
        return NULL;
}

void test_loop_block(void **state) {
        Env *e = *state;
        _cleanup_free_ char *dir = env_make_dir(e, "loop-block");
        _cleanup_free_ char *image = make_image_in(e, dir, 64 * MiB), *part = NULL;
        _cleanup_free_ char *mnt = env_make_dir(e, "mnt"), *hello = NULL;
        _cleanup_attached_ Attached a = {};
        unsigned n_threads = env_unsigned("LOOPMGR_LOOPBLOCK_THREADS", 8);
        LoopBlock lb = {
                .image = image,
                .n_iterations = env_unsigned("LOOPMGR_LOOPBLOCK_ITERATIONS", 25),
                .part_start = 2048,
                .part_sectors = 100000,
        };
        int r;

        pthread_mutex_init(&lb.problems.lock, NULL);
        pthread_mutex_init(&lb.replies.lock, NULL);

        /* The image: one partition with an ext4 file system holding a file. */
        ATTACH_OK(e, image, O_RDWR, &a, 0);
        r = env_add_partition(e, a.node + 5, a.diskseq, 1, lb.part_start, lb.part_sectors, &part);
        if (r < 0)
                fail_msg("addpart %s: %s", a.node, strerror(-r));
        mkfs_ext4(part);
        r = env_mount(e, part, mnt, "ext4", 0, NULL);
        if (r < 0)
                fail_msg("mount %s: %s", part, strerror(-r));
        hello = env_join(mnt, "hello");
        int fd = open(hello, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        close(fd);
        r = umount_retry(mnt);
        if (r < 0)
                fail_msg("umount %s: %s", mnt, strerror(-r));
        env_forget_mount(e, mnt);
        r = -EBUSY;
        for (unsigned i = 0; i < 50 && r < 0; i++) {
                if (i > 0)
                        sleep_usec(20 * USEC_PER_MSEC);
                r = env_delete_partition(e, a.node + 5, 1);
        }
        if (r < 0)
                fail_msg("delpart %s 1: %s", a.node, strerror(-r));
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_free_ char *st = NULL;
                r = call_detach(e, a.object, &error, &st, 2, OPT_B(LOOPMGR_OPT_WAIT, true),
                                OPT_T(LOOPMGR_OPT_TIMEOUT_USEC, 5 * USEC_PER_SEC));
                assert_bus_ok(r, &error, "Detach of the writable set-up device");
        }

        LoopBlockWorker *w = calloc(n_threads, sizeof(LoopBlockWorker));
        pthread_t *threads = calloc(n_threads, sizeof(pthread_t));
        assert_non_null(w);
        assert_non_null(threads);
        for (unsigned i = 0; i < n_threads; i++) {
                w[i] = (LoopBlockWorker){.lb = &lb, .id = i};
                assert_true(asprintf(&w[i].mnt, "%s/mnt-%u", dir, i) > 0);
                assert_int_equal(mkdir(w[i].mnt, 0700), 0);
        }
        uint64_t t0 = now_usec();
        for (unsigned i = 0; i < n_threads; i++)
                assert_int_equal(pthread_create(&threads[i], NULL, loop_block_run, &w[i]), 0);
        for (unsigned i = 0; i < n_threads; i++)
                pthread_join(threads[i], NULL);
        uint64_t elapsed = now_usec() - t0;

        uint64_t slowest = 0;
        unsigned added = 0;
        for (unsigned i = 0; i < n_threads; i++) {
                if (w[i].max_iteration_usec > slowest)
                        slowest = w[i].max_iteration_usec;
                added += w[i].partitions_added;
                free(w[i].mnt);
        }
        free(w);
        free(threads);
        print_message("  %u threads x %u iterations in %.1f s, slowest iteration %.1f ms, "
                      "partition added %u time(s)\n",
                      n_threads, lb.n_iterations, (double) elapsed / USEC_PER_SEC,
                      (double) slowest / USEC_PER_MSEC, added);
        tally_print(&lb.replies, "replies");

        bool empty = env_wait_nothing_under(dir, 5 * USEC_PER_SEC);
        unsigned failures = tally_report(&lb.problems);
        if (!empty) {
                Binding *l = NULL;
                size_t n = 0;
                if (bindings_under(dir, &l, &n) >= 0)
                        for (size_t i = 0; i < n; i++) {
                                print_error("  left over: %s (diskseq %" PRIu64 ")\n", l[i].name,
                                            l[i].diskseq);
                                (void) env_track_device(e, l[i].name, l[i].diskseq);
                        }
                free(l);
                fail_msg("devices of the test are left 5 s after the last Detach");
        }
        if (failures > 0)
                fail_msg("%u failure(s) in the test-loop-block workload (listed above)", failures);
}
