/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Small helpers in the shape of systemd's and c-stdaux's: cleanup attributes and hand-offs
 * (the ones the client and the benchmarks use too are in include/loopmgr-cleanup.h). */

#include <blkid.h>
#include <dirent.h>
#include <errno.h>
#include <libmount.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "loopmgr-cleanup.h"

#define _unused_ __attribute__((unused))

#define TAKE_FD(fd)                                                                                \
        ({                                                                                         \
                int _fd_ = (fd);                                                                   \
                (fd) = -EBADF;                                                                     \
                _fd_;                                                                              \
        })

/* Destructors for the cleanup attribute; each accepts NULL, as closedir() does not. */
static inline void closedirp(DIR **d) {
        if (*d)
                (void) closedir(*d);
}
#define _cleanup_closedir_ _cleanup_(closedirp)

static inline void mnt_free_iterp(struct libmnt_iter **it) {
        mnt_free_iter(*it);
}

/* Drops one reference: a table handed on (TAKE_PTR) or referenced again keeps its count. */
static inline void mnt_unref_tablep(struct libmnt_table **t) {
        mnt_unref_table(*t);
}

static inline void blkid_free_probep(blkid_probe *pr) {
        if (*pr)
                blkid_free_probe(*pr);
}

/* A libblkid probe of the device open at fd (which stays the caller's): 0 and *ret, or a
 * negative errno. */
int blkid_probe_from_fd(int fd, blkid_probe *ret);

/* A deep copy; NULL for NULL or when out of memory. */
static inline char **strv_copy(char **l) {
        size_t n = 0;
        char **c;

        if (!l)
                return NULL;
        while (l[n])
                n++;
        c = calloc(n + 1, sizeof(char *));
        if (!c)
                return NULL;
        for (size_t i = 0; i < n; i++)
                if (!(c[i] = strdup(l[i]))) {
                        strv_free(c);
                        return NULL;
                }
        return c;
}

/* Reads a whole small file (sysfs attribute) and strips the trailing newline. */
int read_one_line_file(const char *path, char **ret);
/* Parses an unsigned decimal integer, refusing signs, junk and overflow. */
int safe_atou64(const char *s, uint64_t *ret);
/* Parses "MAJOR:MINOR" as the kernel prints it (sysfs "dev"); -EINVAL for anything else. */
int parse_devnum(const char *s, dev_t *ret);
/* Joins a root directory (NULL or "/" means the real root) and an absolute path. */
char *path_join_root(const char *root, const char *path);

/* Parses "loopN" (no /dev/ prefix) into N; -EINVAL for anything else. */
int loop_name_to_number(const char *name, unsigned *ret);
