/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * bench-state: the ownership record at 1,000 bindings, two ways, in one run on one file system.
 *
 *   journal  today's writer (daemon/state/state-writer.c, linked from libloopmgrd-core as the tests
 *            link it): <dir>/devices (snapshot) + <dir>/devices.journal, one checksummed record
 *            appended per save, compaction into a new snapshot past the journal's bound
 *   files    a prototype of one small file per device, as systemd keeps one per unit, session
 *            or machine under /run and as loopmgrd keeps /run/loopmgr/udev/loopN:
 *            <dir>/devices.d/loopN holds that device alone, in the snapshot format
 *            (state_serialize() of a one-device State: magic, boot line, the device's lines as
 *            format_device() writes them, the checksum line), replaced by writing
 *            .loopN.tmp and renaming it over loopN; a dropped device is one unlink; the intent
 *            is <dir>/devices.d/intent (written the same way, unlinked when cleared). Like
 *            today's writer, nothing is fsynced (state.h: the record lives as long as the
 *            kernel it describes).
 *
 * The operations are the daemon's (daemon/core/persist.c, attach.c, lifecycle.c, teardown.c):
 *   attach   three saves: the intent (commit_one(NULL)), the device with its new reference
 *            unconfirmed and the intent cleared (commit_one(d)), the reference confirmed
 *            (commit_one(d)); measured while the population grows from 0 to 1,000 (device N
 *            after N-1 exist) and in cycles at 1,000
 *   detach   the caller's references dropped and a full save (manager_save_state(): every
 *            device walked and compared), then the record dropped (commit_drop)
 *   save-all a full save of 1,000 unchanged devices (nothing to write)
 *   rewrite  a full save by a new writer: the first save of a run (journal: compaction into a
 *            snapshot; files: every file written)
 *   load     reading 1,000 devices back at start-up (state_load(); files: readdir + parse
 *            each with state_parse())
 * Rounds alternate the order of the two schemes (ABBA); each round starts from empty
 * directories. Figures: the median over rounds of each round's median, and the mean over all
 * samples (which carries the journal's compactions).
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loop-kernel.h"
#include "state-internal.h"
#include "state.h"
#include "util.h"

#include "bench/bench-util.h"

#define BINDINGS_DEFAULT 1000
#define ROUNDS_DEFAULT   5
#define CYCLES_DEFAULT   200
#define REPEATS_DEFAULT  20
#define FILES_DIR        "devices.d"
#define INTENT_FILE      "intent"

/* ------------------------------------------------------------------------------------------ */
/* The prototype: one file per device. */

typedef struct DirWriter {
        char *path;     /* <dir>/devices.d */
        int dir_fd;
        char boot_id[37];
        State cache;    /* what the files say, sorted by loop number */
        bool has_intent;
        size_t cursor;  /* staging position of a full save */
} DirWriter;

static int dir_writer_new(const char *dir, DirWriter *ret) {
        *ret = (DirWriter) { .dir_fd = -EBADF };
        if (asprintf(&ret->path, "%s/%s", dir, FILES_DIR) < 0)
                return -ENOMEM;
        if (mkdir(ret->path, 0700) < 0 && errno != EEXIST)
                return -errno;
        ret->dir_fd = open(ret->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (ret->dir_fd < 0)
                return -errno;
        if (state_read_boot_id(ret->boot_id) < 0)
                ret->boot_id[0] = '\0';
        return 0;
}

static void dir_writer_done(DirWriter *w) {
        safe_close(w->dir_fd);
        free(w->path);
        state_done(&w->cache);
}

/* One file replaced atomically: .NAME.tmp written (by the core's write_temporary(), as the
 * journal writer writes its snapshot), renamed over NAME. No fsync (state.h). */
static int dir_replace(DirWriter *w, const char *name, const State *one) {
        _cleanup_free_ char *text = NULL;
        char tmp[PATH_MAX];
        size_t len;
        int fd, r;

        r = state_serialize(one, &text, &len);
        if (r < 0)
                return r;
        snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", w->path, name);
        fd = write_temporary(tmp, text, len, false);
        if (fd < 0)
                return fd;
        safe_close(fd);
        if (renameat(AT_FDCWD, tmp, w->dir_fd, name) < 0) {
                r = -errno;
                (void) unlink(tmp);
        }
        return r;
}

static int dir_unlink(DirWriter *w, const char *name) {
        return unlinkat(w->dir_fd, name, 0) < 0 && errno != ENOENT ? -errno : 0;
}

/* Where loop number nr is or belongs in the cache: the lower bound state-writer.c searches
 * for the same purpose (static there). */
static size_t cache_slot(const State *c, unsigned nr) {
        size_t lo = 0, hi = c->n_devices;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (c->devices[mid].number < nr)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

/* Writes d's file and remembers it at slot i (replacing the entry there if it is d's). */
static int dir_put_at(DirWriter *w, size_t i, const StateDevice *d, unsigned nr) {
        State one = { .devices = (StateDevice *) d, .n_devices = 1 };
        State *c = &w->cache;
        StateDevice copy;
        int r;

        strcpy(one.boot_id, w->boot_id);
        r = dir_replace(w, d->name, &one);
        if (r < 0)
                return r;
        r = device_copy(&copy, d);
        if (r < 0)
                return r;
        copy.number = nr;
        if (i < c->n_devices && c->devices[i].number == nr)
                device_done(&c->devices[i]);
        else {
                r = state_grow(c);
                if (r < 0) {
                        device_done(&copy);
                        return r;
                }
                memmove(&c->devices[i + 1], &c->devices[i],
                        (c->n_devices - i) * sizeof(StateDevice));
                c->n_devices++;
        }
        c->devices[i] = copy;
        return 0;
}

static int dir_drop_at(DirWriter *w, size_t i) {
        int r = dir_unlink(w, w->cache.devices[i].name);

        if (r >= 0)
                state_remove_at(&w->cache, i);
        return r;
}

static int dir_set_intent(DirWriter *w, bool has_intent, const StateIntent *intent) {
        State one = { .has_intent = has_intent };
        int r;

        if (!has_intent && !w->has_intent)
                return 0;
        if (has_intent) {
                one.intent = *intent;
                strcpy(one.boot_id, w->boot_id);
                r = dir_replace(w, INTENT_FILE, &one);
        } else
                r = dir_unlink(w, INTENT_FILE);
        if (r >= 0)
                w->has_intent = has_intent;
        return r;
}

/* commit_one(): d's file (if it changed), then the intent (a crash in between leaves the
 * device recorded next to the intent, which then matches no unmanaged binding). */
static int dir_commit_one(DirWriter *w, const StateDevice *d, bool has_intent,
                          const StateIntent *intent) {
        if (d) {
                unsigned nr;
                size_t i;
                int r;

                if (loop_name_to_number(d->name, &nr) < 0)
                        return -EINVAL;
                i = cache_slot(&w->cache, nr);
                if (!(i < w->cache.n_devices && w->cache.devices[i].number == nr &&
                      devices_equal(&w->cache.devices[i], d))) {
                        r = dir_put_at(w, i, d, nr);
                        if (r < 0)
                                return r;
                }
        }
        return dir_set_intent(w, has_intent, intent);
}

static int dir_commit_drop(DirWriter *w, const char *name, bool has_intent,
                           const StateIntent *intent) {
        unsigned nr;
        size_t i;
        int r;

        if (loop_name_to_number(name, &nr) < 0)
                return -EINVAL;
        i = cache_slot(&w->cache, nr);
        if (i < w->cache.n_devices && w->cache.devices[i].number == nr) {
                r = dir_drop_at(w, i);
                if (r < 0)
                        return r;
        }
        return dir_set_intent(w, has_intent, intent);
}

/* A full save, as the journal writer's: every device in loop-number order, compared with what
 * the files say; the changed ones written, the missing ones unlinked. */
static void dir_begin(DirWriter *w) {
        w->cursor = 0;
}

static int dir_device(DirWriter *w, const StateDevice *d) {
        State *c = &w->cache;
        unsigned nr;
        int r;

        if (w->cursor < c->n_devices && devices_equal(&c->devices[w->cursor], d)) {
                w->cursor++;
                return 0;
        }
        if (loop_name_to_number(d->name, &nr) < 0)
                return -EINVAL;
        while (w->cursor < c->n_devices && c->devices[w->cursor].number < nr) {
                r = dir_drop_at(w, w->cursor);
                if (r < 0)
                        return r;
        }
        r = dir_put_at(w, w->cursor, d, nr);
        if (r < 0)
                return r;
        w->cursor++;
        return 0;
}

static int dir_commit(DirWriter *w, bool has_intent, const StateIntent *intent) {
        while (w->cursor < w->cache.n_devices) {
                int r = dir_drop_at(w, w->cursor);

                if (r < 0)
                        return r;
        }
        return dir_set_intent(w, has_intent, intent);
}

static int compare_number(const void *a, const void *b) {
        const StateDevice *x = a, *y = b;

        return x->number < y->number ? -1 : x->number > y->number;
}

/* Start-up: every file of the directory, each a valid one-device snapshot named after its
 * device (or the intent). Leftover temporary files (a crash before their rename) are skipped.
 * -EBADMSG for a damaged file, -ESTALE for one of another boot. */
static int dir_load(const char *dir, State *ret) {
        _cleanup_free_ char *path = NULL;
        _cleanup_(state_done) State s = {};
        char now[37] = "", buf[8192];
        struct dirent *de;
        DIR *d;
        int r = 0;

        if (asprintf(&path, "%s/%s", dir, FILES_DIR) < 0)
                return -ENOMEM;
        d = opendir(path);
        if (!d)
                return -errno;
        (void) state_read_boot_id(now);
        while ((de = readdir(d))) {
                _cleanup_(state_done) State one = {};
                _cleanup_close_ int fd = -EBADF;
                bool is_intent;
                ssize_t n;

                if (de->d_name[0] == '.')
                        continue;
                is_intent = streq(de->d_name, INTENT_FILE);
                fd = openat(dirfd(d), de->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                if (fd < 0) {
                        r = -errno;
                        break;
                }
                n = read(fd, buf, sizeof(buf));
                if (n < 0) {
                        r = -errno;
                        break;
                }
                if ((size_t) n == sizeof(buf) || state_parse(buf, (size_t) n, &one) < 0 ||
                    one.n_devices != (is_intent ? 0 : 1) || one.has_intent != is_intent ||
                    (!is_intent && !streq(one.devices[0].name, de->d_name))) {
                        r = -EBADMSG;
                        break;
                }
                if (now[0] && one.boot_id[0] && !streq(now, one.boot_id)) {
                        r = -ESTALE;
                        break;
                }
                if (is_intent) {
                        s.has_intent = true;
                        s.intent = one.intent;
                        continue;
                }
                r = state_grow(&s);
                if (r < 0)
                        break;
                s.devices[s.n_devices++] = one.devices[0];
                one.n_devices = 0;      /* moved */
        }
        closedir(d);
        if (r < 0)
                return r;
        qsort(s.devices, s.n_devices, sizeof(StateDevice), compare_number);
        *ret = s;
        s = (State) {};
        return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The two schemes behind one interface. */

typedef struct Scheme {
        const char *name;
        StateWriter *jw;
        DirWriter dw;
        char *dir;
} Scheme;

static int scheme_open(Scheme *s) {
        if (s->jw || s->dw.dir_fd >= 0)
                return 0;
        if (streq(s->name, "journal"))
                return state_writer_new(s->dir, &s->jw);
        return dir_writer_new(s->dir, &s->dw);
}

static void scheme_close(Scheme *s) {
        s->jw = state_writer_free(s->jw);
        dir_writer_done(&s->dw);
        s->dw = (DirWriter) { .dir_fd = -EBADF };
}

static int save_one(Scheme *s, const StateDevice *d, bool has_intent, const StateIntent *in) {
        if (s->jw) {
                int r = state_writer_commit_one(s->jw, d, has_intent, in);

                return r == -ESTALE ? -EIO : r;         /* the benchmark keeps it in sync */
        }
        return dir_commit_one(&s->dw, d, has_intent, in);
}

static int save_drop(Scheme *s, const char *name) {
        if (s->jw)
                return state_writer_commit_drop(s->jw, name, false, NULL);
        return dir_commit_drop(&s->dw, name, false, NULL);
}

static int save_all(Scheme *s, const State *model) {
        int r;

        if (s->jw) {
                state_writer_begin(s->jw);
                for (size_t i = 0; i < model->n_devices; i++) {
                        r = state_writer_device(s->jw, &model->devices[i]);
                        if (r < 0)
                                return r;
                }
                return state_writer_commit(s->jw, false, NULL);
        }
        dir_begin(&s->dw);
        for (size_t i = 0; i < model->n_devices; i++) {
                r = dir_device(&s->dw, &model->devices[i]);
                if (r < 0)
                        return r;
        }
        return dir_commit(&s->dw, false, NULL);
}

static int load(Scheme *s, State *ret) {
        return s->jw ? state_load(s->dir, ret) : dir_load(s->dir, ret);
}

/* ------------------------------------------------------------------------------------------ */
/* The model: N devices with 1-3 references each (a client's, a persistent one, a mount's). */

static uint64_t next_diskseq = 100;

static int model_attach(State *m, unsigned nr, StateDevice **ret) {
        StateDevice *d;
        char name[16], owner[64];
        int r;

        snprintf(name, sizeof(name), "loop%u", nr);
        r = state_add_device(m, name, next_diskseq++, false, 1000 + nr % 7, &d);
        if (r < 0)
                return r;
        for (unsigned k = 0; k < 1 + nr % 3 && r >= 0; k++) {
                Lifetime lt = k == 0 ? LIFETIME_CLIENT : k == 1 ? LIFETIME_PERSISTENT
                                                                : LIFETIME_MOUNT;

                if (k == 0)
                        snprintf(owner, sizeof(owner), ":1.%u", 40 + nr);
                else
                        snprintf(owner, sizeof(owner), "/media/user%u/volume-%u", nr % 7, nr);
                /* The attach's own reference is confirmed by the third save. */
                r = state_device_add_ref(d, 1000 + nr % 7, lt, owner, k > 0);
        }
        *ret = d;
        return r;
}

static double clock_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e6 + (double) ts.tv_nsec / 1e3;
}

/* The three saves of one attach of loop nr (appended to the model). */
static __attribute__((noinline)) int op_attach(Scheme *s, State *m, unsigned nr) {
        StateIntent in = { .device = 0xfe01, .inode = 400000 + nr, .uid = 1000 + nr % 7 };
        StateDevice *d;
        int r;

        r = save_one(s, NULL, true, &in);
        if (r >= 0)
                r = model_attach(m, nr, &d);
        if (r >= 0)
                r = save_one(s, d, false, NULL);
        if (r >= 0) {
                d->refs[0].confirmed = true;
                r = save_one(s, d, false, NULL);
        }
        return r;
}

/* Detach of the last device: its references dropped and a full save, then its record
 * dropped as the binding goes. */
static __attribute__((noinline)) int op_detach(Scheme *s, State *m) {
        StateDevice *d = &m->devices[m->n_devices - 1];
        char name[16];
        int r;

        device_done(d);
        r = save_all(s, m);
        if (r < 0)
                return r;
        strcpy(name, d->name);
        m->n_devices--;
        return save_drop(s, name);
}

static __attribute__((noinline)) int op_save_all(Scheme *s, State *m) {
        return save_all(s, m);
}

static __attribute__((noinline)) int op_rewrite(Scheme *s, State *m) {
        scheme_close(s);
        int r = scheme_open(s);

        return r < 0 ? r : save_all(s, m);
}

static __attribute__((noinline)) int op_load(Scheme *s, State *ret) {
        return load(s, ret);
}

/* ------------------------------------------------------------------------------------------ */
/* Samples and the table. */

enum { OP_GROW, OP_ATTACH, OP_DETACH, OP_SAVE_ALL, OP_REWRITE, OP_LOAD_FRESH, OP_LOAD, N_OPS };
static const char *const op_names[N_OPS] = {
        [OP_GROW] = "attach, population growing 0 -> N (3 saves)",
        [OP_ATTACH] = "attach at N (3 saves)",
        [OP_DETACH] = "detach at N (full save + drop)",
        [OP_SAVE_ALL] = "full save, nothing changed",
        [OP_REWRITE] = "full save by a new writer (first save of a run)",
        [OP_LOAD_FRESH] = "load at start-up, right after a full save",
        [OP_LOAD] = "load at start-up, after N/10 more attach + detach cycles",
};

typedef struct Samples {
        double *v;
        size_t n, allocated;
} Samples;

static void sample_add(Samples *s, double v) {
        if (s->n == s->allocated) {
                size_t want = s->allocated ? 2 * s->allocated : 256;
                double *n = realloc(s->v, want * sizeof(double));

                if (!n) {
                        fprintf(stderr, "bench-state: out of memory\n");
                        exit(EXIT_FAILURE);
                }
                s->v = n;
                s->allocated = want;
        }
        s->v[s->n++] = v;
}

static double median_of(double *v, size_t n) {
        if (n == 0)
                return 0;
        qsort(v, n, sizeof(double), cmp_double);
        return quantile(v, n, 0.5);
}

/* Per scheme and operation: each round's median, and every sample. */
typedef struct Figures {
        double round_median[16];
        size_t rounds;
        Samples all;
} Figures;

static void figures_add_round(Figures *f, Samples *round) {
        for (size_t i = 0; i < round->n; i++)
                sample_add(&f->all, round->v[i]);
        if (f->rounds < ELEMENTSOF(f->round_median))
                f->round_median[f->rounds++] = median_of(round->v, round->n);
        round->n = 0;
}

static double figures_median(Figures *f) {
        double v[16];

        memcpy(v, f->round_median, f->rounds * sizeof(double));
        return median_of(v, f->rounds);
}

static double figures_mean(const Figures *f) {
        double sum = 0;

        for (size_t i = 0; i < f->all.n; i++)
                sum += f->all.v[i];
        return f->all.n ? sum / (double) f->all.n : 0;
}

static double figures_p99(Figures *f) {
        double *v = f->all.v;

        qsort(v, f->all.n, sizeof(double), cmp_double);
        return f->all.n ? quantile(v, f->all.n, 0.99) : 0;
}

/* ------------------------------------------------------------------------------------------ */

static void fail(const char *what, int r) {
        fprintf(stderr, "bench-state: %s: %s\n", what, strerror(-r));
        exit(EXIT_FAILURE);
}

static bool same_records(const State *a, const State *b) {
        if (a->n_devices != b->n_devices)
                return false;
        for (size_t i = 0; i < a->n_devices; i++)
                if (!devices_equal(&a->devices[i], &b->devices[i]))
                        return false;
        return true;
}

/* Runs one operation, adds its time to samples, and stops the benchmark if it failed. */
#define TIMED(samples, what, call)                                                                 \
        do {                                                                                       \
                double t_ = clock_usec();                                                          \
                int r_ = (call);                                                                   \
                                                                                                   \
                sample_add((samples), clock_usec() - t_);                                          \
                if (r_ < 0)                                                                        \
                        fail((what), r_);                                                          \
        } while (0)

/* Loads the record n times, checking each time that it says what the model does. */
static void load_rounds(Scheme *s, const State *m, unsigned n, Samples *smp) {
        for (unsigned i = 0; i < n; i++) {
                _cleanup_(state_done) State got = {};

                TIMED(smp, "load", op_load(s, &got));
                if (!same_records(&got, m)) {
                        fprintf(stderr, "bench-state: %s: the record read back differs\n",
                                s->name);
                        exit(EXIT_FAILURE);
                }
        }
}

static void run_round(Scheme *s, unsigned bindings, unsigned cycles, unsigned repeats,
                      Figures *fig) {
        _cleanup_(state_done) State m = {};
        Samples smp[N_OPS] = {};
        int r;

        r = scheme_open(s);
        if (r < 0)
                fail("opening the writer", r);

        /* The first save of a run (the journal writer compacts), then the population. */
        r = save_all(s, &m);
        if (r < 0)
                fail("first save", r);
        for (unsigned nr = 0; nr < bindings; nr++)
                TIMED(&smp[OP_GROW], "attach", op_attach(s, &m, nr));
        for (unsigned i = 0; i < cycles; i++) {
                TIMED(&smp[OP_ATTACH], "attach", op_attach(s, &m, bindings));
                TIMED(&smp[OP_DETACH], "detach", op_detach(s, &m));
        }
        for (unsigned i = 0; i < cycles; i++)
                TIMED(&smp[OP_SAVE_ALL], "full save", op_save_all(s, &m));
        for (unsigned i = 0; i < repeats; i++)
                TIMED(&smp[OP_REWRITE], "rewrite", op_rewrite(s, &m));
        /* Load what a run left: a snapshot and an empty journal (or the files) first, then
         * with a journal of some records behind it. */
        load_rounds(s, &m, repeats, &smp[OP_LOAD_FRESH]);
        for (unsigned i = 0; i < bindings / 10; i++) {
                r = op_attach(s, &m, bindings);
                if (r >= 0)
                        r = op_detach(s, &m);
                if (r < 0)
                        fail("attach", r);
        }
        load_rounds(s, &m, repeats, &smp[OP_LOAD]);
        scheme_close(s);

        for (int op = 0; op < N_OPS; op++) {
                figures_add_round(&fig[op], &smp[op]);
                free(smp[op].v);
        }
}

static int remove_tree(const char *dir) {
        char cmd[4096];

        /* Our own mkdtemp() directory, nothing else. */
        snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", dir);
        return system(cmd);
}

static void disk_use(const char *dir, const char *name) {
        char cmd[4096];

        snprintf(cmd, sizeof(cmd), "printf '%%s: ' '%s'; du -sk --apparent-size '%s' | cut -f1 | "
                 "tr -d '\\n'; printf ' KiB apparent, '; du -sk '%s' | cut -f1 | tr -d '\\n'; "
                 "printf ' KiB allocated, %%s entries\\n' \"$(find '%s' | wc -l)\"", name, dir,
                 dir, dir);
        (void) system(cmd);
}

static void usage(void) {
        printf("bench-state [--dir DIR] [--bindings N] [--rounds N] [--cycles N] [--repeats N]\n"
               "  --dir DIR       where the scratch directories go (default /dev/shm: a tmpfs,\n"
               "                  as /run is); one run, one file system\n"
               "  --bindings N    population (default %d)\n"
               "  --rounds N      rounds, alternating which scheme goes first (default %d)\n"
               "  --cycles N      attach + detach cycles and unchanged full saves per round\n"
               "                  (default %d)\n"
               "  --repeats N     rewrites and loads per round (default %d)\n",
               BINDINGS_DEFAULT, ROUNDS_DEFAULT, CYCLES_DEFAULT, REPEATS_DEFAULT);
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                { "dir", required_argument, NULL, 'd' },
                { "bindings", required_argument, NULL, 'b' },
                { "rounds", required_argument, NULL, 'r' },
                { "cycles", required_argument, NULL, 'c' },
                { "repeats", required_argument, NULL, 'n' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *base = "/dev/shm";
        unsigned bindings = BINDINGS_DEFAULT, rounds = ROUNDS_DEFAULT, cycles = CYCLES_DEFAULT,
                 repeats = REPEATS_DEFAULT;
        Figures fig[2][N_OPS] = {};
        const char *names[2] = { "journal", "files" };
        char fstype[64] = "?";
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'd': base = optarg; break;
                case 'b': bindings = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'r': rounds = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'c': cycles = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'n': repeats = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'h': usage(); return EXIT_SUCCESS;
                default: usage(); return EXIT_FAILURE;
                }
        if (bindings < 1 || bindings >= STATE_MAX_DEVICES || rounds < 1 || rounds > 16 ||
            cycles < 1 || repeats < 1) {
                usage();
                return EXIT_FAILURE;
        }

        {
                char cmd[4200];
                FILE *p;

                snprintf(cmd, sizeof(cmd), "findmnt -no FSTYPE -T '%s' 2>/dev/null || stat -f -c %%T '%s'",
                         base, base);
                p = popen(cmd, "r");
                if (p && fgets(fstype, sizeof(fstype), p))
                        fstype[strcspn(fstype, "\n")] = '\0';
                if (p)
                        pclose(p);
        }

        for (unsigned round = 0; round < rounds; round++)
                for (int k = 0; k < 2; k++) {
                        /* ABBA: journal first in even rounds, files first in odd ones. */
                        int which = (round % 2) ^ k;
                        Scheme s = { .name = names[which], .dw = { .dir_fd = -EBADF } };
                        char *dir;

                        if (asprintf(&dir, "%s/bench-state.XXXXXX", base) < 0 || !mkdtemp(dir))
                                fail("mkdtemp", -errno);
                        s.dir = dir;
                        run_round(&s, bindings, cycles, repeats, fig[which]);
                        /* What each scheme leaves on disk after the last round. */
                        if (round == rounds - 1)
                                disk_use(dir, s.name);
                        (void) remove_tree(dir);
                        free(dir);
                }

        printf("bench-state: %u bindings (1-3 references each), %u rounds (ABBA), %u attach + "
               "detach cycles and %u unchanged full saves per round, %u rewrites and loads per "
               "round; %s (%s)\n\n",
               bindings, rounds, cycles, cycles, repeats, base, fstype);
        printf("| operation | journal µs | files µs | files / journal | journal mean | files mean "
               "| journal p99 | files p99 |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for (int op = 0; op < N_OPS; op++) {
                double a = figures_median(&fig[0][op]), b = figures_median(&fig[1][op]);

                printf("| %s | %.1f | %.1f | %.2f | %.1f | %.1f | %.1f | %.1f |\n", op_names[op],
                       a, b, a > 0 ? b / a : 0, figures_mean(&fig[0][op]),
                       figures_mean(&fig[1][op]), figures_p99(&fig[0][op]),
                       figures_p99(&fig[1][op]));
        }
        for (int w = 0; w < 2; w++)
                for (int op = 0; op < N_OPS; op++)
                        free(fig[w][op].all.v);
        return EXIT_SUCCESS;
}
