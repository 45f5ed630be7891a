/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * libFuzzer target for daemon/state.c: state_parse() reads the ownership record at start-up,
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
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "state.h"
#include "util.h"

#define MAGIC "loopmgr-state 1\n"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The same hash as state.c (the file format fixes it, see state.h). */
static uint64_t fnv1a64(const char *p, size_t n) {
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        for (size_t i = 0; i < n; i++) {
                h ^= (unsigned char) p[i];
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}

static bool states_equal(const State *a, const State *b) {
        if (a->n_devices != b->n_devices || a->has_intent != b->has_intent)
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

static void check(const char *text, size_t len) {
        _cleanup_free_ char *out1 = NULL, *out2 = NULL;
        State s = {}, t = {};
        size_t len1, len2;
        int r;

        r = state_parse(text, len, &s);
        if (r < 0) {
                if (r != -EBADMSG && r != -ENOMEM)
                        die("state_parse failed with something other than -EBADMSG", text, len);
                if (s.n_devices != 0 || s.devices)
                        die("state_parse wrote its result on failure", text, len);
                return;
        }

        /* The parsed record obeys the rules state_add_device()/state_device_add_ref() enforce. */
        for (size_t i = 0; i < s.n_devices; i++) {
                const StateDevice *d = &s.devices[i];

                if (strncmp(d->name, "loop", 4) != 0 || strlen(d->name) >= sizeof(d->name))
                        die("a device name that is not loopN", text, len);
                if (state_find(&s, d->name, d->diskseq) != d)
                        die("the same binding twice", text, len);
                for (size_t j = 0; j < d->n_refs; j++)
                        if ((d->refs[j].lifetime == LIFETIME_CLIENT) != (d->refs[j].owner != NULL))
                                die("a client reference without an owner, or the reverse", text,
                                    len);
        }

        if (state_serialize(&s, &out1, &len1) < 0)
                die("state_serialize failed on a parsed record", text, len);
        if (memchr(out1, '\0', len1) || len1 != strlen(out1))
                die("state_serialize wrote a NUL", out1, len1);
        r = state_parse(out1, len1, &t);
        if (r < 0)
                die("the serialised record does not parse", out1, len1);
        if (!states_equal(&s, &t))
                die("serialize -> parse changed the record", out1, len1);
        if (state_serialize(&t, &out2, &len2) < 0)
                die("state_serialize failed the second time", out1, len1);
        if (len1 != len2 || memcmp(out1, out2, len1) != 0)
                die("serialising the same record twice gave different bytes", out2, len2);

        state_done(&s);
        state_done(&t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *text = (const char *) data;
        size_t magic = strlen(MAGIC), body_len = size, n = 0;
        _cleanup_free_ char *fixed = NULL;

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
