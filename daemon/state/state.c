/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The ownership record (state.h): the model, its text format, the parser and the loader of
 * the snapshot and its journal. The writer that keeps the files in step is state-writer.c.
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

#include "loop-kernel.h"
#include "state-internal.h"
#include "state.h"
#include "util.h"

uint64_t fnv1a64_update(uint64_t h, const char *p, size_t n) {
        for (size_t i = 0; i < n; i++) {
                h ^= (unsigned char) p[i];
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}

uint64_t fnv1a64(const char *p, size_t n) {
        return fnv1a64_update(FNV_OFFSET, p, n);
}

/* A growable text buffer: cheaper than a memstream for the few lines of a journal record. An
 * allocation failure sticks, and is reported once at the end. */

void buf_done(Buf *b) {
        free(b->data);
        *b = (Buf){};
}

_printf_(2, 3) void buf_printf(Buf *b, const char *format, ...) {
        va_list ap;
        int k;

        while (!b->failed) {
                size_t avail = b->allocated - b->len, want;
                char *n;

                va_start(ap, format);
                k = vsnprintf(b->data ? b->data + b->len : NULL, avail, format, ap);
                va_end(ap);
                if (k < 0)
                        break;
                if ((size_t) k < avail) {
                        b->len += (size_t) k;
                        return;
                }
                want = MAX(MAX(b->allocated * 2, b->len + (size_t) k + 1), (size_t) 256);
                n = realloc(b->data, want);
                if (!n)
                        break;
                b->data = n;
                b->allocated = want;
        }
        b->failed = true;
}

static bool owner_needs_escape(unsigned char c) {
        return c <= ' ' || c >= 0x7f || c == '\\';
}

static void buf_put_owner(Buf *b, const char *owner) {
        if (!owner) {
                buf_printf(b, "-");
                return;
        }
        if (streq(owner, "-")) {
                buf_printf(b, "\\x2d");
                return;
        }
        for (const char *p = owner; *p; p++) {
                if (owner_needs_escape((unsigned char) *p))
                        buf_printf(b, "\\x%02x", (unsigned char) *p);
                else
                        buf_printf(b, "%c", *p);
        }
}

void format_device(Buf *b, const StateDevice *d) {
        buf_printf(b, "device %s %" PRIu64 " %s %u\n", d->name, d->diskseq,
                   d->pending ? "detach-pending" : "attached", (unsigned) d->owner_uid);
        for (size_t j = 0; j < d->n_refs; j++) {
                buf_printf(b, "ref %u %s ", (unsigned) d->refs[j].uid,
                           lifetime_to_string(d->refs[j].lifetime) ?: "invalid");
                buf_put_owner(b, d->refs[j].owner);
                buf_printf(b, " %s\n", d->refs[j].confirmed ? "confirmed" : "unconfirmed");
        }
}

void format_intent(Buf *b, const StateIntent *in) {
        buf_printf(b, "intent %s %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %u\n",
                   in->is_block ? "block" : "file", in->device, in->inode, in->offset,
                   in->size_limit, (unsigned) in->uid);
}

void device_done(StateDevice *d) {
        for (size_t j = 0; j < d->n_refs; j++)
                free(d->refs[j].owner);
        free(d->refs);
        d->refs = NULL;
        d->n_refs = 0;
}

void state_done(State *s) {
        if (!s)
                return;
        for (size_t i = 0; i < s->n_devices; i++)
                device_done(&s->devices[i]);
        free(s->devices);
        *s = (State){};
}

int state_grow(State *s) {
        StateDevice *n;

        if (s->n_devices >= STATE_MAX_DEVICES)
                return -E2BIG;
        n = realloc(s->devices, (s->n_devices + 1) * sizeof(StateDevice));
        if (!n)
                return -ENOMEM;
        s->devices = n;
        return 0;
}

int state_add_device(State *s, const char *name, uint64_t diskseq, bool pending, uid_t owner_uid,
                     StateDevice **ret) {
        StateDevice *n;
        unsigned nr;
        int r;

        if (loop_name_to_number(name, &nr) < 0 || strlen(name) >= sizeof(n->name))
                return -EINVAL;
        r = state_grow(s);
        if (r < 0)
                return r;
        n = &s->devices[s->n_devices++];
        *n = (StateDevice){
                .number = nr, .diskseq = diskseq, .pending = pending, .owner_uid = owner_uid};
        strcpy(n->name, name);
        if (ret)
                *ret = n;
        return 0;
}

static bool bus_name_valid(const char *owner) {
        /* Unique bus names: ":" followed by letters, digits, '.', '_' and '-'. */
        if (!owner || owner[0] != ':' || !owner[1] || strlen(owner) > 255)
                return false;
        for (const char *p = owner + 1; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
                        return false;
        return true;
}

/* What a reference of this lifetime must name as its holder: client references a unique bus
 * name, persistent ones nobody (owner is ignored), any other lifetime (e.g. a mount's mount
 * point) a non-empty string. */
static int owner_check(Lifetime lifetime, const char *owner) {
        if (!lifetime_to_string(lifetime))
                return -EINVAL;
        if (lifetime == LIFETIME_PERSISTENT)
                return 0;
        if (lifetime == LIFETIME_CLIENT)
                return bus_name_valid(owner) ? 1 : -EINVAL;
        return owner && owner[0] && strlen(owner) <= OWNER_MAX ? 1 : -EINVAL;
}

int state_device_add_ref(StateDevice *d, uid_t uid, Lifetime lifetime, const char *owner,
                         bool confirmed) {
        StateRef *n;
        char *o = NULL;
        int r;

        r = owner_check(lifetime, owner);
        if (r < 0)
                return r;
        if (r > 0) {
                o = strdup(owner);
                if (!o)
                        return -ENOMEM;
        }
        if (d->n_refs >= STATE_MAX_REFERENCES) {
                free(o);
                return -E2BIG;
        }

        n = realloc(d->refs, (d->n_refs + 1) * sizeof(StateRef));
        if (!n) {
                free(o);
                return -ENOMEM;
        }
        d->refs = n;
        d->refs[d->n_refs++] =
                (StateRef){.uid = uid, .lifetime = lifetime, .owner = o, .confirmed = confirmed};
        return 0;
}

int device_copy(StateDevice *dst, const StateDevice *src) {
        StateDevice n = *src;
        int r;

        n.refs = NULL;
        n.n_refs = 0;
        for (size_t j = 0; j < src->n_refs; j++) {
                r = state_device_add_ref(&n, src->refs[j].uid, src->refs[j].lifetime,
                                         src->refs[j].owner, src->refs[j].confirmed);
                if (r < 0) {
                        device_done(&n);
                        return r;
                }
        }
        *dst = n;
        return 0;
}

bool devices_equal(const StateDevice *a, const StateDevice *b) {
        if (a->diskseq != b->diskseq || a->pending != b->pending || a->owner_uid != b->owner_uid ||
            a->n_refs != b->n_refs || !streq(a->name, b->name))
                return false;
        for (size_t j = 0; j < a->n_refs; j++)
                if (a->refs[j].uid != b->refs[j].uid ||
                    a->refs[j].lifetime != b->refs[j].lifetime ||
                    a->refs[j].confirmed != b->refs[j].confirmed ||
                    /* persistent references record no owner, whatever they were given */
                    (a->refs[j].lifetime != LIFETIME_PERSISTENT &&
                     !streq_ptr(a->refs[j].owner, b->refs[j].owner)))
                        return false;
        return true;
}

bool intents_equal(const StateIntent *a, const StateIntent *b) {
        return a->is_block == b->is_block && a->device == b->device && a->inode == b->inode &&
               a->offset == b->offset && a->size_limit == b->size_limit && a->uid == b->uid;
}

const StateDevice *state_find(const State *s, const char *name, uint64_t diskseq) {
        for (size_t i = 0; i < s->n_devices; i++)
                if (s->devices[i].diskseq == diskseq && streq(s->devices[i].name, name))
                        return &s->devices[i];
        return NULL;
}

static size_t state_find_name(const State *s, const char *name) {
        for (size_t i = 0; i < s->n_devices; i++)
                if (streq(s->devices[i].name, name))
                        return i;
        return NO_DEVICE;
}

void state_remove_at(State *s, size_t i) {
        device_done(&s->devices[i]);
        memmove(&s->devices[i], &s->devices[i + 1], (s->n_devices - i - 1) * sizeof(StateDevice));
        s->n_devices--;
}

void format_snapshot(Buf *b, const State *s) {
        buf_printf(b, "%s", STATE_MAGIC);
        if (s->has_generation)
                buf_printf(b, "generation %016" PRIx64 "\n", s->generation);
        if (s->boot_id[0])
                buf_printf(b, "boot %s\n", s->boot_id);
        for (size_t i = 0; i < s->n_devices; i++)
                format_device(b, &s->devices[i]);
        if (s->has_intent)
                format_intent(b, &s->intent);
        if (!b->failed)
                buf_printf(b, "end %016" PRIx64 "\n", fnv1a64(b->data, b->len));
}

int state_serialize(const State *s, char **ret_text, size_t *ret_len) {
        Buf b = {};

        format_snapshot(&b, s);
        if (b.failed) {
                buf_done(&b);
                return -ENOMEM;
        }
        *ret_len = b.len;
        *ret_text = b.data;
        return 0;
}

/* As the kernel prints it: lowercase hex digits and dashes. */
static bool boot_id_valid(const char *s) {
        size_t n = strlen(s);

        if (n == 0 || n >= sizeof(((State *) NULL)->boot_id))
                return false;
        for (const char *p = s; *p; p++)
                if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || *p == '-'))
                        return false;
        return true;
}

int state_read_boot_id(char ret[static 37]) {
        _cleanup_free_ char *id = NULL;
        int r;

        r = read_one_line_file("/proc/sys/kernel/random/boot_id", &id);
        if (r < 0)
                return r;
        if (!boot_id_valid(id))
                return -EIO;
        strcpy(ret, id);
        return 0;
}

static int parse_uid(const char *s, uid_t *ret) {
        uint64_t v;

        if (safe_atou64(s, &v) < 0 || v >= (uint64_t) (uid_t) -1)
                return -EBADMSG;
        *ret = (uid_t) v;
        return 0;
}

/* Exactly 16 lowercase hex digits, as written. */
static int parse_hex64(const char *s, uint64_t *ret) {
        uint64_t v = 0;

        if (strlen(s) != 16)
                return -EBADMSG;
        for (const char *p = s; *p; p++) {
                if (*p >= '0' && *p <= '9')
                        v = v << 4 | (uint64_t) (*p - '0');
                else if (*p >= 'a' && *p <= 'f')
                        v = v << 4 | (uint64_t) (*p - 'a' + 10);
                else
                        return -EBADMSG;
        }
        *ret = v;
        return 0;
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* The reverse of buf_put_owner(): "-" is none, \xHH a byte. Only the canonical form is
 * accepted (what needs escaping is escaped, nothing else is). */
static int owner_unescape(const char *s, char **ret) {
        _cleanup_free_ char *o = NULL;
        size_t n = 0;

        if (streq(s, "-")) {
                *ret = NULL;
                return 0;
        }
        o = malloc(strlen(s) + 1);
        if (!o)
                return -ENOMEM;
        for (const char *p = s; *p; p++) {
                int hi, lo;

                if (*p != '\\') {
                        o[n++] = *p;
                        continue;
                }
                if (p[1] != 'x' || (hi = unhex(p[2])) < 0 || (lo = unhex(p[3])) < 0)
                        return -EBADMSG;
                o[n] = (char) (hi << 4 | lo);
                /* '-' is escaped only when it is the whole owner. */
                if (o[n] == '\0' ||
                    (o[n] == '-' ? !streq(s, "\\x2d") : !owner_needs_escape((unsigned char) o[n])))
                        return -EBADMSG;
                n++;
                p += 3;
        }
        o[n] = '\0';
        if (n == 0)
                return -EBADMSG;
        *ret = TAKE_PTR(o);
        return 0;
}

/* Lifetimes as lifetime_to_string() spells them: whatever options.c knows. */
static int lifetime_from_state_string(const char *s, Lifetime *ret) {
        for (int l = 0; l < 64; l++) {
                const char *name = lifetime_to_string((Lifetime) l);

                if (!name)
                        break;
                if (streq(s, name)) {
                        *ret = (Lifetime) l;
                        return 0;
                }
        }
        return -EBADMSG;
}

/* Splits line (modified in place) into at most n words separated by single spaces. */
static size_t split_words(char *line, char **words, size_t n) {
        size_t k = 0;

        for (char *p = line; p && *p && k < n;) {
                words[k++] = p;
                p = strchr(p, ' ');
                if (p)
                        *p++ = '\0';
        }
        return k;
}

/* Which of the two keywords of a field word is: false for no, true for yes. */
static int parse_keyword(const char *word, const char *no, const char *yes, bool *ret) {
        if (streq(word, yes))
                *ret = true;
        else if (streq(word, no))
                *ret = false;
        else
                return -EBADMSG;
        return 0;
}

/* Applies one line of a snapshot (journal = false) or of a journal record to s. *current is
 * the device that "ref" lines belong to. */
static int apply_line(State *s, char *line, bool journal, size_t *current) {
        char *w[8];
        size_t n, i;
        int r;

        n = split_words(line, w, ELEMENTSOF(w));
        if (n == 5 && streq(w[0], "device")) {
                uint64_t seq;
                uid_t owner;
                bool pending;

                if (safe_atou64(w[2], &seq) < 0 || parse_uid(w[4], &owner) < 0 ||
                    parse_keyword(w[3], "attached", "detach-pending", &pending) < 0)
                        return -EBADMSG;

                i = state_find_name(s, w[1]);
                if (i != NO_DEVICE) {
                        /* A loopN has one binding at a time: in the journal, a device line
                         * replaces the device with its references; in a snapshot, it is a
                         * second record of the same device. */
                        if (!journal)
                                return -EBADMSG;
                        device_done(&s->devices[i]);
                        s->devices[i].diskseq = seq;
                        s->devices[i].pending = pending;
                        s->devices[i].owner_uid = owner;
                } else {
                        r = state_add_device(s, w[1], seq, pending, owner, NULL);
                        if (r < 0)
                                return r;
                        i = s->n_devices - 1;
                }
                *current = i;
                return 0;
        }
        if (n == 5 && streq(w[0], "ref") && *current != NO_DEVICE) {
                _cleanup_free_ char *owner = NULL;
                Lifetime lt;
                bool confirmed;
                uid_t uid;

                if (parse_uid(w[1], &uid) < 0 || lifetime_from_state_string(w[2], &lt) < 0 ||
                    parse_keyword(w[4], "unconfirmed", "confirmed", &confirmed) < 0)
                        return -EBADMSG;
                r = owner_unescape(w[3], &owner);
                if (r < 0)
                        return r;
                /* "-" for persistent references, and only for them. */
                if ((lt == LIFETIME_PERSISTENT) != !owner)
                        return -EBADMSG;
                return state_device_add_ref(&s->devices[*current], uid, lt, owner, confirmed);
        }
        if (n == 7 && streq(w[0], "intent") && (journal || !s->has_intent)) {
                StateIntent in = {};

                if (parse_keyword(w[1], "file", "block", &in.is_block) < 0 ||
                    safe_atou64(w[2], &in.device) < 0 || safe_atou64(w[3], &in.inode) < 0 ||
                    safe_atou64(w[4], &in.offset) < 0 || safe_atou64(w[5], &in.size_limit) < 0 ||
                    parse_uid(w[6], &in.uid) < 0)
                        return -EBADMSG;
                s->intent = in;
                s->has_intent = true;
                *current = NO_DEVICE; /* refs belong to devices only */
                return 0;
        }
        if (n == 1 && journal && streq(w[0], "no-intent")) {
                s->has_intent = false;
                *current = NO_DEVICE;
                return 0;
        }
        if (n == 3 && journal && streq(w[0], "drop")) {
                uint64_t seq;

                i = state_find_name(s, w[1]);
                if (safe_atou64(w[2], &seq) < 0 || i == NO_DEVICE || s->devices[i].diskseq != seq)
                        return -EBADMSG;
                state_remove_at(s, i);
                *current = NO_DEVICE;
                return 0;
        }
        return -EBADMSG;
}

static int bad(int r) {
        /* Anything the record says that the model refuses is a malformed record. */
        return r == -ENOMEM ? r : -EBADMSG;
}

int state_parse(const char *text, size_t len, State *ret) {
        _cleanup_free_ char *copy = NULL;
        _cleanup_(state_done) State s = {};
        size_t magic = strlen(STATE_MAGIC), current = NO_DEVICE;
        bool ended = false, header = true;
        char *line, *next;
        int r;

        if (!text || len < magic || len > STATE_MAX_SIZE || memcmp(text, STATE_MAGIC, magic) != 0)
                return -EBADMSG;
        if (memchr(text, '\0', len) || text[len - 1] != '\n')
                return -EBADMSG; /* embedded NUL, or truncated mid-line */

        copy = strndup(text, len);
        if (!copy)
                return -ENOMEM;

        for (line = copy + magic; *line; line = next) {
                next = strchr(line, '\n');
                *next++ = '\0';
                if (ended)
                        return -EBADMSG; /* nothing may follow the checksum */

                if (strncmp(line, "end ", 4) == 0) {
                        uint64_t want;

                        if (parse_hex64(line + 4, &want) < 0 ||
                            want != fnv1a64(text, (size_t) (line - copy)))
                                return -EBADMSG;
                        ended = true;
                } else if (strncmp(line, "generation ", 11) == 0 && header && !s.has_generation &&
                           !s.boot_id[0]) {
                        if (parse_hex64(line + 11, &s.generation) < 0)
                                return -EBADMSG;
                        s.has_generation = true;
                } else if (strncmp(line, "boot ", 5) == 0 && header && !s.boot_id[0]) {
                        if (!boot_id_valid(line + 5))
                                return -EBADMSG;
                        strcpy(s.boot_id, line + 5);
                } else {
                        header = false;
                        r = apply_line(&s, line, false, &current);
                        if (r < 0)
                                return bad(r);
                }
        }

        if (!ended)
                return -EBADMSG;
        *ret = s;
        s = (State){};
        return 0;
}

/* The next complete line at text[pos...len): returns its end (after '\n'), or 0 if there is
 * no complete line. */
static size_t line_end(const char *text, size_t len, size_t pos) {
        const char *nl = memchr(text + pos, '\n', len - pos);

        return nl ? (size_t) (nl - text) + 1 : 0;
}

static int apply_record(State *s, const char *text, size_t len, uint64_t seq) {
        _cleanup_free_ char *copy = NULL;
        size_t current = NO_DEVICE;
        char *line, *next, head[32];
        int r;

        copy = strndup(text, len);
        if (!copy)
                return -ENOMEM;
        next = strchr(copy, '\n');
        *next++ = '\0';
        snprintf(head, sizeof(head), "record %" PRIu64, seq);
        if (!streq(copy, head))
                return -EBADMSG;
        for (line = next; *line; line = next) {
                next = strchr(line, '\n');
                *next++ = '\0';
                r = apply_line(s, line, true, &current);
                if (r < 0)
                        return bad(r);
        }
        return 0;
}

int state_journal_replay(State *s, const char *text, size_t len) {
        size_t magic = strlen(JOURNAL_MAGIC), pos;
        uint64_t generation, chain, seq = 1;
        char hex[17];
        int r;

        /* The header is written whole before the journal is renamed into place: it is never
         * torn. */
        if (!text || len < magic + 17 || len > STATE_MAX_SIZE ||
            memcmp(text, JOURNAL_MAGIC, magic) != 0 || text[magic + 16] != '\n')
                return -EBADMSG;
        memcpy(hex, text + magic, 16);
        hex[16] = '\0';
        if (parse_hex64(hex, &generation) < 0)
                return -EBADMSG;
        if (!s->has_generation || generation != s->generation)
                return 0; /* from before the snapshot was written: already in it */

        pos = magic + 17;
        chain = fnv1a64(text, pos);
        while (pos < len) {
                size_t end = line_end(text, len, pos), commit = 0, k;
                uint64_t want = 0;
                bool valid;

                /* The record runs up to its "commit" line. Another record before it means
                 * this one is damaged: a torn write only ever cuts the last record short. */
                for (k = end; k > 0 && k < len; k = line_end(text, len, k)) {
                        if (strncmp(text + k, "commit ", MIN((size_t) 7, len - k)) == 0) {
                                commit = k;
                                break;
                        }
                        if (len - k >= 7 && memcmp(text + k, "record ", 7) == 0)
                                return -EBADMSG;
                }
                if (end == 0 || commit == 0 || (end = line_end(text, len, commit)) == 0)
                        return 0; /* incomplete: the last write was torn */

                valid = end - commit == 7 + 16 + 1 && !memchr(text + pos, '\0', end - pos);
                if (valid) {
                        memcpy(hex, text + commit + 7, 16);
                        valid = parse_hex64(hex, &want) >= 0 &&
                                want == fnv1a64_update(chain, text + pos, commit - pos);
                }
                if (!valid)
                        /* Torn if it is the last record, damage before it otherwise. */
                        return end == len ? 0 : -EBADMSG;

                r = apply_record(s, text + pos, commit - pos, seq);
                if (r < 0)
                        return r;
                chain = want;
                seq++;
                pos = end;
        }
        return 0;
}

static int write_all(int fd, const char *p, size_t len) {
        while (len > 0) {
                ssize_t k = write(fd, p, len);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += k;
                len -= (size_t) k;
        }
        return 0;
}

/* Writes text to a fresh temporary file (and fsyncs it if asked); the caller renames it.
 * Returns the open fd. */
int write_temporary(const char *tmp, const char *text, size_t len, bool sync) {
        _cleanup_close_ int fd = -EBADF;
        int r;

        fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        r = write_all(fd, text, len);
        if (r >= 0 && sync && fsync(fd) < 0)
                r = -errno;
        if (r < 0) {
                (void) unlink(tmp);
                return r;
        }
        return TAKE_FD(fd);
}

int state_save(const char *dir, const State *s) {
        _cleanup_free_ char *text = NULL, *tmp = NULL, *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        size_t len;
        int r;

        r = state_serialize(s, &text, &len);
        if (r < 0)
                return r;
        if (asprintf(&path, "%s/%s", dir, STATE_FILE_NAME) < 0 ||
            asprintf(&tmp, "%s/.%s.tmp", dir, STATE_FILE_NAME) < 0)
                return -ENOMEM;

        fd = write_temporary(tmp, text, len, true);
        if (fd < 0)
                return fd;
        /* rename() is atomic: readers see the old file or the new one, never a mix. */
        if (rename(tmp, path) < 0) {
                r = -errno;
                (void) unlink(tmp);
                return r;
        }
        return 0;
}

static int read_file_at(const char *dir, const char *name, char **ret, size_t *ret_len) {
        _cleanup_free_ char *path = NULL, *buf = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        size_t done = 0;

        if (asprintf(&path, "%s/%s", dir, name) < 0)
                return -ENOMEM;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || st.st_size <= 0 || (uint64_t) st.st_size > STATE_MAX_SIZE)
                return -EBADMSG;

        buf = malloc((size_t) st.st_size);
        if (!buf)
                return -ENOMEM;
        while (done < (size_t) st.st_size) {
                ssize_t k = read(fd, buf + done, (size_t) st.st_size - done);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                done += (size_t) k;
        }
        *ret = TAKE_PTR(buf);
        *ret_len = done;
        return 0;
}

int state_load(const char *dir, State *ret) {
        _cleanup_free_ char *snapshot = NULL, *journal = NULL;
        _cleanup_(state_done) State s = {};
        size_t len;
        int r;

        r = read_file_at(dir, STATE_FILE_NAME, &snapshot, &len);
        if (r < 0)
                return r;
        r = state_parse(snapshot, len, &s);
        if (r < 0)
                return r;
        if (s.boot_id[0]) {
                char now[37];

                /* The bindings it names went with the kernel that booted then. */
                if (state_read_boot_id(now) >= 0 && !streq(now, s.boot_id))
                        return -ESTALE;
        }

        if (s.has_generation) {
                r = read_file_at(dir, STATE_JOURNAL_NAME, &journal, &len);
                if (r == -ENOENT)
                        len = 0;
                else if (r < 0)
                        return r;
                if (len > 0) {
                        r = state_journal_replay(&s, journal, len);
                        if (r < 0)
                                return r;
                }
        }
        *ret = s;
        s = (State){};
        return 0;
}
