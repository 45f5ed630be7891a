/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * libFuzzer target for daemon/state/state.c: state_parse() reads the ownership record at start-up,
 * and a record damaged by a crash, a full disk or a hand edit must be refused, never trusted
 * or crashed on.
 *
 * Each input is parsed twice:
 *
 *   1. as it is;
 *   2. "fixed up": with the "loopmgr-state 1" line put in front when it is missing, a final
 *      newline added, a trailing "end ..." line dropped and a correct "end <FNV-1a>" line
 *      appended. Without this the checksum would stop almost every mutation at the last
 *      line, and the fuzzer would never reach the device and ref lines.
 *
 * Whenever a parse succeeds, the result must survive state_serialize() -> state_parse()
 * unchanged, and serialising that again must give the same bytes; whenever it fails, it must
 * fail with -EBADMSG (or -ENOMEM), as state.h promises.
 *
 * An input that starts with "loopmgr-journal 1 " is a journal instead: it is replayed with
 * state_journal_replay() onto a sample snapshot of the generation its header names, as it is
 * and fixed up (every record's "commit" line recomputed, so the fuzzer gets past the chained
 * checksums to the device, ref, drop and intent lines). A replay that succeeds must leave a
 * record that obeys the same rules and round-trips the same way.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "state.h"
#include "util.h"

#define MAGIC         "loopmgr-state 1\n"
#define JOURNAL_MAGIC "loopmgr-journal 1 "

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The same hash as state.c (the file format fixes it, see state.h). */
static uint64_t fnv1a64_update(uint64_t h, const char *p, size_t n) {
        for (size_t i = 0; i < n; i++) {
                h ^= (unsigned char) p[i];
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}

static uint64_t fnv1a64(const char *p, size_t n) {
        return fnv1a64_update(UINT64_C(0xcbf29ce484222325), p, n);
}

static bool states_equal(const State *a, const State *b) {
        if (a->n_devices != b->n_devices || a->has_intent != b->has_intent ||
            a->has_generation != b->has_generation ||
            (a->has_generation && a->generation != b->generation) ||
            strcmp(a->boot_id, b->boot_id) != 0)
                return false;
        if (a->has_intent &&
            (a->intent.is_block != b->intent.is_block || a->intent.device != b->intent.device ||
             a->intent.inode != b->intent.inode || a->intent.offset != b->intent.offset ||
             a->intent.size_limit != b->intent.size_limit || a->intent.uid != b->intent.uid))
                return false;
        for (size_t i = 0; i < a->n_devices; i++) {
                const StateDevice *x = &a->devices[i], *y = &b->devices[i];

                if (!streq(x->name, y->name) || x->diskseq != y->diskseq ||
                    x->pending != y->pending || x->owner_uid != y->owner_uid ||
                    x->n_refs != y->n_refs)
                        return false;
                for (size_t j = 0; j < x->n_refs; j++)
                        if (x->refs[j].uid != y->refs[j].uid ||
                            x->refs[j].lifetime != y->refs[j].lifetime ||
                            x->refs[j].confirmed != y->refs[j].confirmed ||
                            !streq_ptr(x->refs[j].owner, y->refs[j].owner))
                                return false;
        }
        return true;
}

static void die(const char *what, const char *text, size_t len) {
        fprintf(stderr, "fuzz-state: %s; input (%zu bytes):\n%.*s\n", what, len,
                (int) (len > 4096 ? 4096 : len), text);
        abort();
}

/* A record that parsed or replayed: it obeys the rules state_add_device() and
 * state_device_add_ref() enforce, and survives serialize -> parse unchanged. Takes s. */
static void verify(State *s, const char *text, size_t len) {
        _cleanup_free_ char *out1 = NULL, *out2 = NULL;
        State t = {};
        size_t len1, len2;

        for (size_t i = 0; i < s->n_devices; i++) {
                const StateDevice *d = &s->devices[i];

                if (strncmp(d->name, "loop", 4) != 0 || strlen(d->name) >= sizeof(d->name))
                        die("a device name that is not loopN", text, len);
                for (size_t k = 0; k < i; k++)
                        if (streq(s->devices[k].name, d->name))
                                die("the same device twice", text, len);
                for (size_t j = 0; j < d->n_refs; j++)
                        if ((d->refs[j].lifetime == LIFETIME_PERSISTENT) !=
                            (d->refs[j].owner == NULL))
                                die("a persistent reference with an owner, or another without one",
                                    text, len);
        }

        if (state_serialize(s, &out1, &len1) < 0)
                die("state_serialize failed on a parsed record", text, len);
        if (memchr(out1, '\0', len1) || len1 != strlen(out1))
                die("state_serialize wrote a NUL", out1, len1);
        if (state_parse(out1, len1, &t) < 0)
                die("the serialised record does not parse", out1, len1);
        if (!states_equal(s, &t))
                die("serialize -> parse changed the record", out1, len1);
        if (state_serialize(&t, &out2, &len2) < 0)
                die("state_serialize failed the second time", out1, len1);
        if (len1 != len2 || memcmp(out1, out2, len1) != 0)
                die("serialising the same record twice gave different bytes", out2, len2);

        state_done(s);
        state_done(&t);
}

static void check(const char *text, size_t len) {
        State s = {};
        int r;

        r = state_parse(text, len, &s);
        if (r < 0) {
                if (r != -EBADMSG && r != -ENOMEM)
                        die("state_parse failed with something other than -EBADMSG", text, len);
                if (s.n_devices != 0 || s.devices)
                        die("state_parse wrote its result on failure", text, len);
                return;
        }
        verify(&s, text, len);
}

/* Replays a journal onto a sample snapshot whose generation matches its header. */
static void check_journal(const char *text, size_t len) {
        size_t magic = strlen(JOURNAL_MAGIC);
        State s = {};
        StateDevice *d;
        int r;

        s.has_generation = true;
        if (len >= magic + 16)
                for (size_t i = magic; i < magic + 16; i++)
                        s.generation =
                                s.generation << 4 |
                                (uint64_t) (text[i] >= 'a' ? text[i] - 'a' + 10 : text[i] - '0');
        if (state_add_device(&s, "loop3", 412, false, 1000, &d) < 0 ||
            state_device_add_ref(d, 1000, LIFETIME_PERSISTENT, NULL, true) < 0 ||
            state_device_add_ref(d, 0, LIFETIME_CLIENT, ":1.42", false) < 0 ||
            state_add_device(&s, "loop12", 9000000000ULL, true, 0, NULL) < 0) {
                state_done(&s);
                return;
        }

        r = state_journal_replay(&s, text, len);
        if (r < 0) {
                if (r != -EBADMSG && r != -ENOMEM)
                        die("state_journal_replay failed with something other than -EBADMSG", text,
                            len);
                state_done(&s);
                return;
        }
        verify(&s, text, len);
}

/* The journal with every record's "commit" line recomputed: records end where the input has a
 * line starting with "commit", or at its end. */
static void check_journal_fixed(const char *text, size_t len) {
        size_t magic = strlen(JOURNAL_MAGIC), pos, n, start;
        _cleanup_free_ char *fixed = NULL;
        const char *nl;
        uint64_t h;

        nl = memchr(text, '\n', len);
        if (!nl)
                return;
        pos = (size_t) (nl - text) + 1;
        if (pos != magic + 17)
                return;
        /* Room for the text plus a commit line per line of it. */
        fixed = malloc(len + 1 + (len / 2 + 2) * 24);
        if (!fixed)
                return;
        memcpy(fixed, text, pos);
        n = pos;
        h = fnv1a64(fixed, n);
        start = n;
        while (pos < len) {
                size_t e;

                nl = memchr(text + pos, '\n', len - pos);
                e = nl ? (size_t) (nl - text) + 1 : len;
                if (e - pos >= 6 && memcmp(text + pos, "commit", 6) == 0) {
                        h = fnv1a64_update(h, fixed + start, n - start);
                        n += (size_t) sprintf(fixed + n, "commit %016" PRIx64 "\n", h);
                        start = n;
                } else {
                        memcpy(fixed + n, text + pos, e - pos);
                        n += e - pos;
                        if (!nl)
                                fixed[n++] = '\n';
                }
                pos = e;
        }
        if (n > start) {
                h = fnv1a64_update(h, fixed + start, n - start);
                n += (size_t) sprintf(fixed + n, "commit %016" PRIx64 "\n", h);
        }
        check_journal(fixed, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *text = (const char *) data;
        size_t magic = strlen(MAGIC), body_len = size, n = 0;
        _cleanup_free_ char *fixed = NULL;

        if (size >= strlen(JOURNAL_MAGIC) &&
            memcmp(text, JOURNAL_MAGIC, strlen(JOURNAL_MAGIC)) == 0) {
                check_journal(text, size);
                check_journal_fixed(text, size);
                return 0;
        }

        check(text, size);

        /* 2. The fixed-up variant. Drop the last line if it is an "end" line. */
        if (body_len > 0 && text[body_len - 1] == '\n') {
                const char *last = memrchr(text, '\n', body_len - 1);
                last = last ? last + 1 : text;
                if ((size_t) (text + body_len - last) >= 4 && memcmp(last, "end ", 4) == 0)
                        body_len = (size_t) (last - text);
        }

        fixed = malloc(magic + body_len + 1 + 4 + 16 + 1 + 1);
        if (!fixed)
                return 0;
        if (body_len < magic || memcmp(text, MAGIC, magic) != 0) {
                memcpy(fixed, MAGIC, magic);
                n = magic;
        }
        memcpy(fixed + n, text, body_len);
        n += body_len;
        if (n > 0 && fixed[n - 1] != '\n')
                fixed[n++] = '\n';
        n += (size_t) sprintf(fixed + n, "end %016" PRIx64 "\n", fnv1a64(fixed, n));

        check(fixed, n);
        return 0;
}
