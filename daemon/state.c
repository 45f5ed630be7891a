/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "loop-kernel.h"
#include "state.h"
#include "util.h"

#define STATE_MAGIC "loopmgr-state 1\n"
#define STATE_MAX_SIZE (64u * 1024u * 1024u)

static uint64_t fnv1a64(const char *p, size_t n) {
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        for (size_t i = 0; i < n; i++) {
                h ^= (unsigned char) p[i];
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}

void state_done(State *s) {
        if (!s)
                return;
        for (size_t i = 0; i < s->n_devices; i++) {
                for (size_t j = 0; j < s->devices[i].n_refs; j++)
                        free(s->devices[i].refs[j].owner);
                free(s->devices[i].refs);
        }
        free(s->devices);
        *s = (State) {};
}

int state_add_device(State *s, const char *name, uint64_t diskseq, bool pending, uid_t owner_uid,
                     StateDevice **ret) {
        StateDevice *n;
        unsigned nr;

        if (loop_name_to_number(name, &nr) < 0 || strlen(name) >= sizeof(n->name))
                return -EINVAL;
        if (s->n_devices >= STATE_MAX_DEVICES)
                return -E2BIG;

        n = realloc(s->devices, (s->n_devices + 1) * sizeof(StateDevice));
        if (!n)
                return -ENOMEM;
        s->devices = n;
        n = &s->devices[s->n_devices++];
        *n = (StateDevice) { .diskseq = diskseq, .pending = pending, .owner_uid = owner_uid };
        strcpy(n->name, name);
        if (ret)
                *ret = n;
        return 0;
}

static bool owner_valid(const char *owner) {
        /* Unique bus names: ":" followed by letters, digits, '.', '_' and '-'. */
        if (!owner || owner[0] != ':' || !owner[1] || strlen(owner) > 255)
                return false;
        for (const char *p = owner + 1; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
                        return false;
        return true;
}

int state_device_add_ref(StateDevice *d, uid_t uid, Lifetime lifetime, const char *owner,
                         bool confirmed) {
        StateRef *n;
        char *o = NULL;

        if (lifetime == LIFETIME_CLIENT) {
                if (!owner_valid(owner))
                        return -EINVAL;
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
        d->refs[d->n_refs++] = (StateRef) { .uid = uid, .lifetime = lifetime, .owner = o,
                                            .confirmed = confirmed };
        return 0;
}

const StateDevice *state_find(const State *s, const char *name, uint64_t diskseq) {
        for (size_t i = 0; i < s->n_devices; i++)
                if (s->devices[i].diskseq == diskseq && streq(s->devices[i].name, name))
                        return &s->devices[i];
        return NULL;
}

int state_serialize(const State *s, char **ret_text, size_t *ret_len) {
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        FILE *f;

        f = open_memstream(&buf, &len);
        if (!f)
                return -ENOMEM;

        fputs(STATE_MAGIC, f);
        for (size_t i = 0; i < s->n_devices; i++) {
                const StateDevice *d = &s->devices[i];

                fprintf(f, "device %s %" PRIu64 " %s %u\n", d->name, d->diskseq,
                        d->pending ? "detach-pending" : "attached", (unsigned) d->owner_uid);
                for (size_t j = 0; j < d->n_refs; j++)
                        fprintf(f, "ref %u %s %s %s\n", (unsigned) d->refs[j].uid,
                                lifetime_to_string(d->refs[j].lifetime),
                                d->refs[j].owner ?: "-",
                                d->refs[j].confirmed ? "confirmed" : "unconfirmed");
        }
        if (s->has_intent)
                fprintf(f, "intent %s %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %u\n",
                        s->intent.is_block ? "block" : "file", s->intent.device, s->intent.inode,
                        s->intent.offset, s->intent.size_limit, (unsigned) s->intent.uid);
        if (fflush(f) != 0 || ferror(f)) {
                fclose(f);
                return -ENOMEM;
        }
        fprintf(f, "end %016" PRIx64 "\n", fnv1a64(buf, len));
        if (fclose(f) != 0)
                return -ENOMEM;

        *ret_len = len;
        *ret_text = TAKE_PTR(buf);
        return 0;
}

static int parse_uid(const char *s, uid_t *ret) {
        uint64_t v;

        if (safe_atou64(s, &v) < 0 || v >= (uint64_t) (uid_t) -1)
                return -EBADMSG;
        *ret = (uid_t) v;
        return 0;
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

int state_parse(const char *text, size_t len, State *ret) {
        _cleanup_free_ char *copy = NULL;
        State s = {};
        StateDevice *current = NULL;
        size_t magic = strlen(STATE_MAGIC);
        bool ended = false;
        char *line, *next;
        int r = -EBADMSG;

        if (!text || len < magic || len > STATE_MAX_SIZE || memcmp(text, STATE_MAGIC, magic) != 0)
                return -EBADMSG;
        if (memchr(text, '\0', len) || text[len - 1] != '\n')
                return -EBADMSG;        /* embedded NUL, or truncated mid-line */

        copy = strndup(text, len);
        if (!copy)
                return -ENOMEM;

        for (line = copy + magic; *line; line = next) {
                char *w[8];
                size_t n;

                next = strchr(line, '\n');
                *next++ = '\0';
                if (ended)
                        goto fail;      /* nothing may follow the checksum */

                n = split_words(line, w, ELEMENTSOF(w));
                if (n == 2 && streq(w[0], "end")) {
                        uint64_t want;
                        char hex[17];

                        if (strlen(w[1]) != 16)
                                goto fail;
                        want = fnv1a64(text, (size_t) (line - copy));
                        snprintf(hex, sizeof(hex), "%016" PRIx64, want);
                        if (!streq(hex, w[1]))
                                goto fail;
                        ended = true;
                } else if (n == 5 && streq(w[0], "device")) {
                        uint64_t seq;
                        uid_t owner;
                        bool pending;

                        if (safe_atou64(w[2], &seq) < 0 || parse_uid(w[4], &owner) < 0)
                                goto fail;
                        if (streq(w[3], "attached"))
                                pending = false;
                        else if (streq(w[3], "detach-pending"))
                                pending = true;
                        else
                                goto fail;
                        if (state_find(&s, w[1], seq))
                                goto fail;      /* the same binding twice */
                        r = state_add_device(&s, w[1], seq, pending, owner, &current);
                        if (r < 0)
                                goto fail_r;
                } else if (n == 7 && streq(w[0], "intent") && !s.has_intent) {
                        StateIntent in = {};

                        if (streq(w[1], "block"))
                                in.is_block = true;
                        else if (!streq(w[1], "file"))
                                goto fail;
                        if (safe_atou64(w[2], &in.device) < 0 || safe_atou64(w[3], &in.inode) < 0 ||
                            safe_atou64(w[4], &in.offset) < 0 ||
                            safe_atou64(w[5], &in.size_limit) < 0 || parse_uid(w[6], &in.uid) < 0)
                                goto fail;
                        s.intent = in;
                        s.has_intent = true;
                        current = NULL;         /* refs belong to devices only */
                } else if (n == 5 && streq(w[0], "ref") && current) {
                        Lifetime lt;
                        bool confirmed;
                        uid_t uid;

                        if (parse_uid(w[1], &uid) < 0)
                                goto fail;
                        if (streq(w[4], "confirmed"))
                                confirmed = true;
                        else if (streq(w[4], "unconfirmed"))
                                confirmed = false;
                        else
                                goto fail;
                        if (streq(w[2], "persistent") && streq(w[3], "-"))
                                lt = LIFETIME_PERSISTENT;
                        else if (streq(w[2], "client"))
                                lt = LIFETIME_CLIENT;
                        else
                                goto fail;
                        r = state_device_add_ref(current, uid, lt,
                                                 lt == LIFETIME_CLIENT ? w[3] : NULL, confirmed);
                        if (r < 0)
                                goto fail_r;
                } else
                        goto fail;
        }

        if (!ended)
                goto fail;
        *ret = s;
        return 0;

fail:
        r = -EBADMSG;
fail_r:
        if (r == -EINVAL || r == -E2BIG)
                r = -EBADMSG;
        state_done(&s);
        return r;
}

int state_save(const char *dir, const State *s) {
        _cleanup_free_ char *text = NULL, *tmp = NULL, *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        size_t len, done = 0;
        int r;

        r = state_serialize(s, &text, &len);
        if (r < 0)
                return r;
        if (asprintf(&path, "%s/%s", dir, STATE_FILE_NAME) < 0 ||
            asprintf(&tmp, "%s/.%s.tmp", dir, STATE_FILE_NAME) < 0)
                return -ENOMEM;

        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        while (done < len) {
                ssize_t k = write(fd, text + done, len - done);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        goto fail;
                }
                done += (size_t) k;
        }
        if (fsync(fd) < 0) {
                r = -errno;
                goto fail;
        }
        fd = safe_close(fd);

        /* rename() is atomic: readers see the old file or the new one, never a mix. */
        if (rename(tmp, path) < 0) {
                r = -errno;
                goto fail;
        }
        return 0;

fail:
        (void) unlink(tmp);
        return r;
}

int state_load(const char *dir, State *ret) {
        _cleanup_free_ char *path = NULL, *buf = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        size_t done = 0;

        if (asprintf(&path, "%s/%s", dir, STATE_FILE_NAME) < 0)
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
        return state_parse(buf, done, ret);
}
