/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>

#include <sys/sysmacros.h>

#include "util.h"

/* sysfs attributes are at most a page; the biggest thing we read is loop/backing_file, a path.
 * Anything much larger is not what the caller thinks it is. */
#define READ_FILE_MAX (64U * 1024U)

int read_one_line_file(const char *path, char **ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        size_t allocated = 0, n = 0;

        assert(path);
        assert(ret);

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;

        for (;;) {
                ssize_t k;

                if (allocated - n < 2) {
                        size_t m = allocated == 0 ? 256 : allocated * 2;
                        char *p;

                        if (m > READ_FILE_MAX + 2)
                                return -EFBIG;
                        p = realloc(buf, m);
                        if (!p)
                                return -ENOMEM;
                        buf = p;
                        allocated = m;
                }

                k = read(fd, buf + n, allocated - n - 1);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                n += (size_t) k;
        }

        if (!buf) {
                buf = strdup("");
                if (!buf)
                        return -ENOMEM;
        }
        buf[n] = '\0';

        /* An embedded NUL would silently truncate the value: this is not a text attribute. */
        if (strlen(buf) != n)
                return -EBADMSG;

        /* Strip exactly one trailing newline: sysfs prints "%s\n", and a backing file name may
         * itself end in (or contain) a newline that belongs to the value. */
        if (n > 0 && buf[n - 1] == '\n')
                buf[n - 1] = '\0';

        *ret = TAKE_PTR(buf);
        return 0;
}

int safe_atou64(const char *s, uint64_t *ret) {
        uint64_t v = 0;

        assert(ret);

        /* strtoull() accepts leading white space, a sign (and negates "-1" into UINT64_MAX),
         * "0x" prefixes depending on base, and needs errno juggling: parse by hand instead. */
        if (!s || *s == '\0')
                return -EINVAL;

        for (const char *p = s; *p; p++) {
                unsigned d;

                if (*p < '0' || *p > '9')
                        return -EINVAL;
                d = (unsigned) (*p - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }

        *ret = v;
        return 0;
}

char *path_join_root(const char *root, const char *path) {
        size_t rl, pl;
        char *r;

        assert(path);

        if (!root)
                root = "";

        /* Drop trailing slashes of the root, so "/", "//" and "" all mean the real root and
         * "/tmp/x/" joins like "/tmp/x". */
        rl = strlen(root);
        while (rl > 0 && root[rl - 1] == '/')
                rl--;

        /* Likewise drop the leading slashes of the path; we insert exactly one. */
        while (*path == '/')
                path++;

        /* By hand rather than asprintf() (about 1,000 instructions): every sysfs read the
         * daemon makes joins its path here. */
        pl = strlen(path);
        r = malloc(rl + 1 + pl + 1);
        if (!r)
                return NULL;
        memcpy(r, root, rl);
        r[rl] = '/';
        memcpy(r + rl + 1, path, pl + 1);

        return r;
}

int parse_devnum(const char *s, dev_t *ret) {
        _cleanup_free_ char *copy = NULL;
        uint64_t ma, mi;
        char *colon;

        copy = strdup(s);
        if (!copy)
                return -ENOMEM;
        colon = strchr(copy, ':');
        if (!colon)
                return -EINVAL;
        *colon = '\0';

        if (safe_atou64(copy, &ma) < 0 || safe_atou64(colon + 1, &mi) < 0)
                return -EINVAL;
        /* The kernel's dev_t has 12 bits of major and 20 of minor. */
        if (ma >= (1U << 12) || mi >= (1U << 20))
                return -EINVAL;

        *ret = makedev((unsigned) ma, (unsigned) mi);
        return 0;
}

int loop_name_to_number(const char *name, unsigned *ret) {
        const char *p;
        uint64_t v;

        assert(ret);

        if (!name || strncmp(name, "loop", 4) != 0)
                return -EINVAL;
        p = name + 4;

        /* The kernel names devices "loop%d": no leading zeros, so "loop01" cannot be a device
         * name and accepting it would give two spellings for one device. */
        if (p[0] == '0' && p[1] != '\0')
                return -EINVAL;
        if (safe_atou64(p, &v) < 0)
                return -EINVAL;
        /* LOOP_CTL_GET_FREE and LOOP_CTL_ADD speak int. */
        if (v > INT_MAX)
                return -EINVAL;

        *ret = (unsigned) v;
        return 0;
}

int blkid_probe_from_fd(int fd, blkid_probe *ret) {
        blkid_probe pr = blkid_new_probe();

        if (!pr)
                return -ENOMEM;
        errno = 0;
        if (blkid_probe_set_device(pr, fd, 0, 0) < 0) {
                int r = errno > 0 ? -errno : -EIO;

                blkid_free_probe(pr);
                return r;
        }
        *ret = pr;
        return 0;
}
