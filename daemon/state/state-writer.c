/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The writer of the ownership record: it compares what it is given with what the files say
 * and appends only the difference to the journal as one checksummed record, compacting into
 * a new snapshot when the journal grows past its limit.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/param.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "state-internal.h"
#include "state.h"
#include "util.h"

struct StateWriter {
        char *snapshot_path, *snapshot_tmp, *journal_path, *journal_tmp, *dir;
        int journal_fd;

        /* What the files say (when synced), sorted by loop number. */
        State cache;
        bool synced;   /* false: the next commit writes a snapshot from what is staged */
        size_t cursor; /* staging position in cache */

        uint64_t seq;   /* of the last record in the journal */
        uint64_t chain; /* its commit hash */
        size_t journal_size, snapshot_size, limit;

        char boot_id[37]; /* this boot's, "" if unknown */
        Buf record;       /* the body of the record being staged */
        StateRef *scratch;
        size_t n_scratch;
};

int state_writer_new(const char *dir, StateWriter **ret) {
        StateWriter *w;

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->journal_fd = -EBADF;
        if (state_read_boot_id(w->boot_id) < 0)
                w->boot_id[0] = '\0';
        if (!(w->dir = strdup(dir)) ||
            asprintf(&w->snapshot_path, "%s/%s", dir, STATE_FILE_NAME) < 0 ||
            asprintf(&w->snapshot_tmp, "%s/.%s.tmp", dir, STATE_FILE_NAME) < 0 ||
            asprintf(&w->journal_path, "%s/%s", dir, STATE_JOURNAL_NAME) < 0 ||
            asprintf(&w->journal_tmp, "%s/.%s.tmp", dir, STATE_JOURNAL_NAME) < 0) {
                state_writer_free(w);
                return -ENOMEM;
        }
        *ret = w;
        return 0;
}

StateWriter *state_writer_free(StateWriter *w) {
        if (!w)
                return NULL;
        safe_close(w->journal_fd);
        state_done(&w->cache);
        buf_done(&w->record);
        free(w->scratch);
        free(w->snapshot_path);
        free(w->snapshot_tmp);
        free(w->journal_path);
        free(w->journal_tmp);
        free(w->dir);
        free(w);
        return NULL;
}

void state_writer_set_journal_limit(StateWriter *w, size_t bytes) {
        w->limit = bytes;
}

void state_writer_begin(StateWriter *w) {
        /* After a failure the files may say anything between the old and the new state: the
         * next commit writes everything anew. */
        if (!w->synced) {
                state_done(&w->cache);
                strcpy(w->cache.boot_id, w->boot_id);
        }
        w->cursor = 0;
        w->record.len = 0;
        w->record.failed = false;
}

StateRef *state_writer_refs(StateWriter *w, size_t n) {
        if (n > w->n_scratch) {
                StateRef *s = reallocarray(w->scratch, n, sizeof(StateRef));

                if (!s)
                        return NULL;
                w->scratch = s;
                w->n_scratch = n;
        }
        return w->scratch;
}

static void writer_drop_at(StateWriter *w, size_t i) {
        buf_printf(&w->record, "drop %s %" PRIu64 "\n", w->cache.devices[i].name,
                   w->cache.devices[i].diskseq);
        state_remove_at(&w->cache, i);
}

int state_writer_device(StateWriter *w, const StateDevice *d) {
        State *c = &w->cache;
        StateDevice copy;
        unsigned nr;
        int r;

        /* The common case, an unchanged device, without parsing its name: every save goes
         * through all managed devices, so this runs once per device and save (1,000 bindings:
         * the bulk of an attach's own work). The cache is in order, so a device equal to the
         * one at the cursor is in order too. */
        if (w->cursor < c->n_devices && devices_equal(&c->devices[w->cursor], d)) {
                w->cursor++;
                return 0;
        }

        if (loop_name_to_number(d->name, &nr) < 0 ||
            (w->cursor > 0 && c->devices[w->cursor - 1].number >= nr)) {
                w->synced = false;
                return -EINVAL;
        }

        /* Whatever the cache has before this number was not staged: it is gone. */
        while (w->cursor < c->n_devices && c->devices[w->cursor].number < nr)
                writer_drop_at(w, w->cursor);

        if (w->cursor < c->n_devices && c->devices[w->cursor].number == nr &&
            devices_equal(&c->devices[w->cursor], d)) {
                w->cursor++;
                return 0;
        }

        r = device_copy(&copy, d);
        if (r >= 0 && !(w->cursor < c->n_devices && c->devices[w->cursor].number == nr)) {
                r = state_grow(c);
                if (r < 0)
                        device_done(&copy);
        }
        if (r < 0) {
                w->synced = false;
                return r;
        }
        copy.number = nr;
        if (w->cursor < c->n_devices && c->devices[w->cursor].number == nr)
                device_done(&c->devices[w->cursor]);
        else {
                memmove(&c->devices[w->cursor + 1], &c->devices[w->cursor],
                        (c->n_devices - w->cursor) * sizeof(StateDevice));
                c->n_devices++;
        }
        c->devices[w->cursor++] = copy;
        /* The copy, as validated and normalised by state_device_add_ref(). */
        format_device(&w->record, &c->devices[w->cursor - 1]);
        return 0;
}

static uint64_t new_generation(uint64_t old) {
        uint64_t g;

        if (getrandom(&g, sizeof(g), GRND_NONBLOCK) != sizeof(g)) {
                struct timespec ts;

                (void) clock_gettime(CLOCK_MONOTONIC, &ts);
                g = (uint64_t) ts.tv_sec * UINT64_C(1000000000) + (uint64_t) ts.tv_nsec;
                g ^= (uint64_t) getpid() << 40;
        }
        return g == old ? g + 1 : g;
}

/* Writes the cache as a new snapshot with a new generation and starts an empty journal for
 * it. The journal is prepared first and renamed last: until it is, the old journal names the
 * old generation and is ignored next to the new snapshot, which already contains it. */
static int writer_compact(StateWriter *w) {
        _cleanup_close_ int jfd = -EBADF, sfd = -EBADF;
        char header[64];
        Buf b = {};
        uint64_t generation;
        int r, hlen;

        generation = new_generation(w->cache.generation);
        hlen = snprintf(header, sizeof(header), JOURNAL_MAGIC "%016" PRIx64 "\n", generation);
        jfd = write_temporary(w->journal_tmp, header, (size_t) hlen, false);
        if (jfd < 0)
                return jfd;

        w->cache.has_generation = true;
        w->cache.generation = generation;
        format_snapshot(&b, &w->cache);
        if (b.failed) {
                r = -ENOMEM;
                goto fail;
        }
        sfd = write_temporary(w->snapshot_tmp, b.data, b.len, false);
        if (sfd < 0) {
                r = sfd;
                goto fail;
        }
        if (rename(w->snapshot_tmp, w->snapshot_path) < 0) {
                r = -errno;
                (void) unlink(w->snapshot_tmp);
                goto fail;
        }
        if (rename(w->journal_tmp, w->journal_path) < 0) {
                r = -errno;
                goto fail;
        }
        safe_close(w->journal_fd);
        w->journal_fd = TAKE_FD(jfd);
        w->journal_size = (size_t) hlen;
        w->snapshot_size = b.len;
        w->seq = 0;
        w->chain = fnv1a64(header, (size_t) hlen);
        buf_done(&b);
        return 0;

fail:
        (void) unlink(w->journal_tmp);
        buf_done(&b);
        return r;
}

static int writer_append(StateWriter *w) {
        Buf b = {};
        uint64_t hash;
        size_t done = 0;
        int r = 0;

        buf_printf(&b, "record %" PRIu64 "\n", w->seq + 1);
        if (!b.failed && w->record.len > 0) {
                buf_printf(&b, "%.*s", (int) w->record.len, w->record.data);
        }
        hash = b.failed ? 0 : fnv1a64_update(w->chain, b.data, b.len);
        buf_printf(&b, "commit %016" PRIx64 "\n", hash);
        if (b.failed) {
                buf_done(&b);
                return -ENOMEM;
        }

        while (done < b.len) {
                ssize_t k = pwrite(w->journal_fd, b.data + done, b.len - done,
                                   (off_t) (w->journal_size + done));

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                done += (size_t) k;
        }
        if (r < 0) {
                /* Whatever reached the file is a torn or unacknowledged record: take it back
                 * (the next commit writes a new snapshot anyway). Best effort: a failure
                 * changes nothing for the caller, who gets r. The result goes to a variable
                 * because glibc's fortified build marks ftruncate() warn_unused_result, which
                 * a (void) cast does not quiet. */
                int ignored = ftruncate(w->journal_fd, (off_t) w->journal_size);
                (void) ignored;
                buf_done(&b);
                return r;
        }
        w->journal_size += b.len;
        w->seq++;
        w->chain = hash;
        buf_done(&b);
        return 0;
}

int state_writer_commit_one(StateWriter *w, const StateDevice *d, bool has_intent,
                            const StateIntent *intent) {
        State *c = &w->cache;
        int r;

        if (!w->synced || w->journal_fd < 0)
                return -ESTALE;

        w->record.len = 0;
        w->record.failed = false;
        w->cursor = 0;
        if (d) {
                unsigned nr;
                size_t lo = 0, hi = c->n_devices;

                if (loop_name_to_number(d->name, &nr) < 0)
                        return -EINVAL;
                /* The cache is sorted by number: stage d where it belongs, as a full save
                 * would have, and state_writer_device() replaces, keeps or inserts it. */
                while (lo < hi) {
                        size_t mid = lo + (hi - lo) / 2;

                        if (c->devices[mid].number < nr)
                                lo = mid + 1;
                        else
                                hi = mid;
                }
                w->cursor = lo;
                r = state_writer_device(w, d);
                if (r < 0)
                        return r;
        }
        /* Everything after the cursor is kept: nothing to drop. */
        w->cursor = c->n_devices;
        return state_writer_commit(w, has_intent, intent);
}

int state_writer_commit_drop(StateWriter *w, const char *name, bool has_intent,
                             const StateIntent *intent) {
        State *c = &w->cache;
        size_t lo = 0, hi;
        unsigned nr;

        if (!w->synced || w->journal_fd < 0)
                return -ESTALE;
        if (loop_name_to_number(name, &nr) < 0)
                return -EINVAL;

        w->record.len = 0;
        w->record.failed = false;
        hi = c->n_devices;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (c->devices[mid].number < nr)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        /* What a full save without this number would drop: whatever the files hold there. */
        if (lo < c->n_devices && c->devices[lo].number == nr)
                writer_drop_at(w, lo);
        w->cursor = c->n_devices;
        return state_writer_commit(w, has_intent, intent);
}

int state_writer_commit(StateWriter *w, bool has_intent, const StateIntent *intent) {
        State *c = &w->cache;
        size_t limit;
        int r;

        while (w->cursor < c->n_devices)
                writer_drop_at(w, w->cursor);

        if (has_intent != c->has_intent || (has_intent && !intents_equal(intent, &c->intent))) {
                if (has_intent)
                        format_intent(&w->record, intent);
                else
                        buf_printf(&w->record, "no-intent\n");
                c->has_intent = has_intent;
                c->intent = has_intent ? *intent : (StateIntent){};
        }
        if (w->record.failed) {
                w->synced = false;
                return -ENOMEM;
        }

        limit = w->limit > 0 ? w->limit : MAX(w->snapshot_size, (size_t) JOURNAL_MIN_LIMIT);
        /* Plus the "record" and "commit" lines. (No fsync anywhere: see state.h.) */
        if (!w->synced || w->journal_fd < 0 || w->journal_size + w->record.len + 64 > limit)
                r = writer_compact(w);
        else if (w->record.len == 0)
                return 0; /* nothing changed */
        else
                r = writer_append(w);
        w->synced = r >= 0;
        return r;
}
