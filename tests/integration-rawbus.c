/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "integration-rawbus.h"
#include "util.h"

/* D-Bus wire protocol constants (D-Bus specification, "Message Format"). */
#define MSG_TYPE_METHOD_CALL   1
#define MSG_TYPE_METHOD_RETURN 2
#define MSG_TYPE_ERROR         3
#define FIELD_PATH             1
#define FIELD_INTERFACE        2
#define FIELD_MEMBER           3
#define FIELD_ERROR_NAME       4
#define FIELD_REPLY_SERIAL     5
#define FIELD_DESTINATION      6
#define FIELD_SENDER           7
#define FIELD_SIGNATURE        8
#define FIELD_UNIX_FDS         9

#define MAX_MESSAGE (1024 * 1024)

typedef struct Buf {
        uint8_t *data;
        size_t size;
        size_t allocated;
} Buf;

static void buf_done(Buf *b) {
        free(b->data);
        *b = (Buf){};
}

static int buf_reserve(Buf *b, size_t n) {
        if (b->size + n <= b->allocated)
                return 0;
        size_t a = (b->size + n) * 2;
        uint8_t *d = realloc(b->data, a);
        if (!d)
                return -ENOMEM;
        b->data = d;
        b->allocated = a;
        return 0;
}

static int buf_put(Buf *b, const void *p, size_t n) {
        if (n == 0)
                return 0;
        int r = buf_reserve(b, n);
        if (r < 0)
                return r;
        memcpy(b->data + b->size, p, n);
        b->size += n;
        return 0;
}

static int buf_align(Buf *b, size_t align) {
        static const uint8_t zeros[8] = {};
        size_t pad = (align - b->size % align) % align;
        return buf_put(b, zeros, pad);
}

static int buf_put_u8(Buf *b, uint8_t v) {
        return buf_put(b, &v, 1);
}

static int buf_put_u32(Buf *b, uint32_t v) {
        int r = buf_align(b, 4);
        if (r < 0)
                return r;
        /* We always send little-endian messages ('l' in the fixed header). */
        v = htole32(v);
        return buf_put(b, &v, 4);
}

static int buf_put_string(Buf *b, const char *s) {
        size_t n = strlen(s);
        int r = buf_put_u32(b, (uint32_t) n);
        if (r < 0)
                return r;
        return buf_put(b, s, n + 1);
}

static int buf_put_signature(Buf *b, const char *s) {
        size_t n = strlen(s);
        int r = buf_put_u8(b, (uint8_t) n);
        if (r < 0)
                return r;
        return buf_put(b, s, n + 1);
}

/* One header field: a (yv) struct, 8-aligned, whose variant holds a string-like value. */
static int field_string(Buf *b, uint8_t code, const char *sig, const char *value) {
        int r = buf_align(b, 8);
        if (r < 0)
                return r;
        r = buf_put_u8(b, code);
        if (r < 0)
                return r;
        r = buf_put_signature(b, sig);
        if (r < 0)
                return r;
        if (streq(sig, "g"))
                return buf_put_signature(b, value);
        return buf_put_string(b, value);
}

static int field_u32(Buf *b, uint8_t code, uint32_t value) {
        int r = buf_align(b, 8);
        if (r < 0)
                return r;
        r = buf_put_u8(b, code);
        if (r < 0)
                return r;
        r = buf_put_signature(b, "u");
        if (r < 0)
                return r;
        return buf_put_u32(b, value);
}

/* Builds a complete little-endian method call. body may be NULL (no signature then). */
static int build_call(Buf *out, uint32_t serial, const char *destination, const char *path,
                      const char *interface, const char *member, const char *signature,
                      const Buf *body, unsigned n_fds) {
        Buf fields = {};
        int r;

        r = field_string(&fields, FIELD_PATH, "o", path);
        if (r >= 0)
                r = field_string(&fields, FIELD_INTERFACE, "s", interface);
        if (r >= 0)
                r = field_string(&fields, FIELD_MEMBER, "s", member);
        if (r >= 0)
                r = field_string(&fields, FIELD_DESTINATION, "s", destination);
        if (r >= 0 && signature)
                r = field_string(&fields, FIELD_SIGNATURE, "g", signature);
        if (r >= 0 && n_fds > 0)
                r = field_u32(&fields, FIELD_UNIX_FDS, n_fds);
        if (r < 0)
                goto finish;

        uint8_t fixed[4] = {'l', MSG_TYPE_METHOD_CALL, 0, 1};
        r = buf_put(out, fixed, 4);
        if (r >= 0)
                r = buf_put_u32(out, body ? (uint32_t) body->size : 0);
        if (r >= 0)
                r = buf_put_u32(out, serial);
        if (r >= 0)
                r = buf_put_u32(out, (uint32_t) fields.size);
        if (r >= 0)
                r = buf_put(out, fields.data, fields.size);
        if (r >= 0)
                r = buf_align(out, 8);
        if (r >= 0 && body)
                r = buf_put(out, body->data, body->size);
finish:
        buf_done(&fields);
        return r;
}

static int parse_address(const char *address, struct sockaddr_un *ret, socklen_t *ret_len) {
        /* "unix:path=/run/x,guid=...;tcp:..." — take the first unix entry. */
        const char *p = address;

        while (p && *p) {
                const char *end = strchr(p, ';');
                size_t len = end ? (size_t) (end - p) : strlen(p);
                if (len > 5 && strncmp(p, "unix:", 5) == 0) {
                        _cleanup_free_ char *entry = strndup(p + 5, len - 5);
                        if (!entry)
                                return -ENOMEM;
                        for (char *kv = strtok(entry, ","); kv; kv = strtok(NULL, ",")) {
                                bool abstract = strncmp(kv, "abstract=", 9) == 0;
                                if (!abstract && strncmp(kv, "path=", 5) != 0)
                                        continue;
                                const char *v = kv + (abstract ? 9 : 5);
                                struct sockaddr_un sa = {.sun_family = AF_UNIX};
                                size_t vl = strlen(v);
                                if (vl + 1 > sizeof(sa.sun_path))
                                        return -ENAMETOOLONG;
                                memcpy(sa.sun_path + (abstract ? 1 : 0), v, vl);
                                *ret = sa;
                                *ret_len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) +
                                                        vl + (abstract ? 1 : 0));
                                return 0;
                        }
                }
                p = end ? end + 1 : NULL;
        }
        return -EAFNOSUPPORT;
}

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

static int wait_fd(int fd, short events, uint64_t deadline) {
        uint64_t n = now_usec();
        if (n >= deadline)
                return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int) ((deadline - n + 999) / 1000));
        if (r < 0)
                return -errno;
        if (r == 0)
                return -ETIMEDOUT;
        return 0;
}

/* Reads whatever is available into b, closing any fds that arrive with it. */
static int read_some(int fd, Buf *b, uint64_t deadline) {
        int r = wait_fd(fd, POLLIN, deadline);
        if (r < 0)
                return r;
        r = buf_reserve(b, 4096);
        if (r < 0)
                return r;

        union {
                struct cmsghdr h;
                uint8_t buf[CMSG_SPACE(sizeof(int) * 16)];
        } control;
        struct iovec iov = {.iov_base = b->data + b->size, .iov_len = b->allocated - b->size};
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = &control,
                .msg_controllen = sizeof(control),
        };
        ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0)
                return -errno;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                        int *fds = (int *) CMSG_DATA(c);
                        for (size_t i = 0; i < k; i++)
                                safe_close(fds[i]);
                }
        if (n == 0)
                return -ECONNRESET;
        b->size += (size_t) n;
        return 0;
}

static int read_line(int fd, Buf *b, char **ret, uint64_t deadline) {
        for (;;) {
                for (size_t i = 0; i + 1 < b->size; i++)
                        if (b->data[i] == '\r' && b->data[i + 1] == '\n') {
                                char *l = strndup((char *) b->data, i);
                                if (!l)
                                        return -ENOMEM;
                                memmove(b->data, b->data + i + 2, b->size - i - 2);
                                b->size -= i + 2;
                                *ret = l;
                                return 0;
                        }
                if (b->size > 4096)
                        return -EPROTO;
                int r = read_some(fd, b, deadline);
                if (r < 0)
                        return r;
        }
}

typedef struct Reader {
        const uint8_t *p;
        size_t size;
        size_t pos;
        bool big_endian;
} Reader;

static int rd_align(Reader *r, size_t a) {
        size_t n = (r->pos + a - 1) / a * a;
        if (n > r->size)
                return -EBADMSG;
        r->pos = n;
        return 0;
}

static int rd_u32(Reader *r, uint32_t *ret) {
        if (rd_align(r, 4) < 0 || r->pos + 4 > r->size)
                return -EBADMSG;
        uint32_t v;
        memcpy(&v, r->p + r->pos, 4);
        r->pos += 4;
        *ret = r->big_endian ? be32toh(v) : le32toh(v);
        return 0;
}

static int rd_string(Reader *r, bool short_len, char **ret) {
        uint32_t len;
        if (short_len) {
                if (r->pos + 1 > r->size)
                        return -EBADMSG;
                len = r->p[r->pos++];
        } else if (rd_u32(r, &len) < 0)
                return -EBADMSG;
        if (r->pos + len + 1 > r->size)
                return -EBADMSG;
        char *s = strndup((const char *) r->p + r->pos, len);
        if (!s)
                return -ENOMEM;
        r->pos += len + 1;
        *ret = s;
        return 0;
}

/* Parses one complete message at the start of b. Returns its total length, 0 if more data is
 * needed, or a negative errno. */
static int parse_message(const Buf *b, int *ret_type, uint32_t *ret_reply_serial,
                         RawReply *ret_reply) {
        if (b->size < 16)
                return 0;
        Reader rd = {.p = b->data, .size = b->size, .pos = 4, .big_endian = b->data[0] == 'B'};
        uint32_t body_len, serial, fields_len;
        if (b->data[0] != 'l' && b->data[0] != 'B')
                return -EBADMSG;
        (void) rd_u32(&rd, &body_len);
        (void) rd_u32(&rd, &serial);
        (void) rd_u32(&rd, &fields_len);
        size_t header_end = (16 + (size_t) fields_len + 7) / 8 * 8;
        size_t total = header_end + body_len;
        if (total > MAX_MESSAGE)
                return -EBADMSG;
        if (b->size < total)
                return 0;

        RawReply reply = {};
        uint32_t reply_serial = 0;
        _cleanup_free_ char *signature = NULL;
        rd.size = 16 + fields_len;
        while (rd.pos < rd.size) {
                if (rd_align(&rd, 8) < 0 || rd.pos >= rd.size)
                        break;
                uint8_t code = rd.p[rd.pos++];
                _cleanup_free_ char *sig = NULL;
                if (rd_string(&rd, true, &sig) < 0)
                        goto bad;
                if (streq(sig, "u")) {
                        uint32_t v;
                        if (rd_u32(&rd, &v) < 0)
                                goto bad;
                        if (code == FIELD_REPLY_SERIAL)
                                reply_serial = v;
                } else if (streq(sig, "s") || streq(sig, "o") || streq(sig, "g")) {
                        _cleanup_free_ char *v = NULL;
                        if (rd_string(&rd, streq(sig, "g"), &v) < 0)
                                goto bad;
                        if (code == FIELD_ERROR_NAME && !reply.error_name)
                                reply.error_name = TAKE_PTR(v);
                        else if (code == FIELD_SENDER && !reply.sender)
                                reply.sender = TAKE_PTR(v);
                        else if (code == FIELD_SIGNATURE && !signature)
                                signature = TAKE_PTR(v);
                } else
                        goto bad;
        }

        if (signature && signature[0] == 's') {
                Reader body = {
                        .p = b->data + header_end, .size = body_len, .big_endian = rd.big_endian};
                (void) rd_string(&body, false, &reply.error_message);
        }

        *ret_type = b->data[1];
        *ret_reply_serial = reply_serial;
        *ret_reply = reply;
        return (int) total;
bad:
        raw_reply_done(&reply);
        return -EBADMSG;
}

void raw_reply_done(RawReply *r) {
        free(r->error_name);
        free(r->error_message);
        free(r->sender);
        *r = (RawReply){};
}

static int send_all(int fd, const Buf *msg, const int *fds, unsigned n_fds) {
        union {
                struct cmsghdr h;
                uint8_t buf[CMSG_SPACE(sizeof(int) * 16)];
        } control = {};
        struct iovec iov = {.iov_base = msg->data, .iov_len = msg->size};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

        if (n_fds > 16)
                return -E2BIG;
        if (n_fds > 0) {
                mh.msg_control = &control;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
                memcpy(CMSG_DATA(c), fds, sizeof(int) * n_fds);
        }
        ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (n < 0)
                return -errno;
        if ((size_t) n != msg->size)
                return -EIO; /* our messages are tiny; a short write means something is off */
        return 0;
}

int raw_call_with_handle(const char *address, const char *destination, const char *path,
                         const char *interface, const char *member, uint32_t handle_index,
                         const int *fds, unsigned n_fds, uint64_t timeout_usec, RawReply *ret) {
        uint64_t deadline = now_usec() + timeout_usec;
        _cleanup_close_ int fd = -EBADF;
        Buf in = {}, call = {};
        struct sockaddr_un sa;
        socklen_t sa_len;
        int r;

        r = parse_address(address, &sa, &sa_len);
        if (r < 0)
                return r;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *) &sa, sa_len) < 0)
                return -errno;

        /* SASL EXTERNAL with our uid in hex-encoded ASCII, then ask for fd passing. */
        char uid[32], hex[65] = {}, auth[128];
        snprintf(uid, sizeof(uid), "%u", (unsigned) getuid());
        for (size_t i = 0; uid[i]; i++)
                snprintf(hex + 2 * i, 3, "%02x", (unsigned char) uid[i]);
        int n = snprintf(auth, sizeof(auth), "%cAUTH EXTERNAL %s\r\n", 0, hex);
        Buf out = {.data = (uint8_t *) auth, .size = (size_t) n};
        r = send_all(fd, &out, NULL, 0);
        if (r < 0)
                return r;

        _cleanup_free_ char *line = NULL, *line2 = NULL;
        r = read_line(fd, &in, &line, deadline);
        if (r < 0)
                goto finish;
        if (strncmp(line, "OK ", 3) != 0) {
                r = -EACCES;
                goto finish;
        }
        static const char negotiate[] = "NEGOTIATE_UNIX_FD\r\n";
        out = (Buf){.data = (uint8_t *) negotiate, .size = strlen(negotiate)};
        r = send_all(fd, &out, NULL, 0);
        if (r < 0)
                goto finish;
        r = read_line(fd, &in, &line2, deadline);
        if (r < 0)
                goto finish;
        if (!streq(line2, "AGREE_UNIX_FD")) {
                r = -EOPNOTSUPP;
                goto finish;
        }
        static const char begin[] = "BEGIN\r\n";
        out = (Buf){.data = (uint8_t *) begin, .size = strlen(begin)};
        r = send_all(fd, &out, NULL, 0);
        if (r < 0)
                goto finish;

        /* Hello first (the bus requires it); our call follows its reply. */
        Buf hello = {}, body = {};
        r = build_call(&hello, 1, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                       "org.freedesktop.DBus", "Hello", NULL, NULL, 0);
        if (r >= 0)
                r = buf_put_u32(&body, handle_index);
        if (r >= 0)
                r = buf_put_u32(&body, 0); /* a{sv}: empty array ... */
        if (r >= 0)
                r = buf_align(&body, 8); /* ... still padded to its 8-byte elements */
        if (r >= 0)
                r = build_call(&call, 2, destination, path, interface, member, "ha{sv}", &body,
                               n_fds);
        if (r >= 0)
                r = send_all(fd, &hello, NULL, 0);
        buf_done(&hello);
        buf_done(&body);
        if (r < 0) {
                buf_done(&call);
                goto finish;
        }

        /* Wait for Hello's reply before sending fds: bytes that arrive while the bus still
         * reads the connection in its authentication mode lose their SCM_RIGHTS, and the bus
         * then drops us for a message whose fds are missing. */
        bool sent = false;
        for (;;) {
                int type;
                uint32_t reply_serial;
                RawReply reply = {};

                r = parse_message(&in, &type, &reply_serial, &reply);
                if (r < 0)
                        goto finish;
                if (r == 0) {
                        r = read_some(fd, &in, deadline);
                        if (r < 0)
                                goto finish;
                        continue;
                }
                memmove(in.data, in.data + r, in.size - (size_t) r);
                in.size -= (size_t) r;
                if (!sent && reply_serial == 1) {
                        raw_reply_done(&reply);
                        if (type != MSG_TYPE_METHOD_RETURN) {
                                r = -EPROTO;
                                goto finish;
                        }
                        r = send_all(fd, &call, fds, n_fds);
                        if (r < 0)
                                goto finish;
                        sent = true;
                        continue;
                }
                if (sent && (type == MSG_TYPE_METHOD_RETURN || type == MSG_TYPE_ERROR) &&
                    reply_serial == 2) {
                        reply.type = type;
                        *ret = reply;
                        r = 0;
                        goto finish;
                }
                raw_reply_done(&reply);
        }

finish:
        buf_done(&call);
        buf_done(&in);
        return r;
}
