/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * slowfs IMAGE MOUNTPOINT DELAY_MSEC: a FUSE file system with one read-only file, /image, whose
 * bytes are IMAGE's, for a slow disk image (tests/test-mount.c, the slow Mount). Reads are
 * direct (no page cache on the FUSE side) and fast until the process gets SIGUSR1; from then on
 * every read sleeps DELAY_MSEC first, so that a loop device over /image makes a file system
 * whose probe and mount(2) take seconds; SIGUSR2 makes them fast again (bench-peers' scenario
 * 6 mounts the image over and over). Runs in the foreground until unmounted or SIGTERM.
 * Needs root (mounts with allow_other, so that the test users can open /image).
 */

#define FUSE_USE_VERSION 31

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int image_fd = -1;
static struct stat image_st;
static unsigned delay_msec;
static volatile sig_atomic_t slow;

static void on_usr(int sig) {
        slow = sig == SIGUSR1;
}

static int sf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
        (void) fi;
        memset(st, 0, sizeof(*st));
        if (strcmp(path, "/") == 0) {
                st->st_mode = S_IFDIR | 0755;
                st->st_nlink = 2;
                return 0;
        }
        if (strcmp(path, "/image") != 0)
                return -ENOENT;
        st->st_mode = S_IFREG | 0444;
        st->st_nlink = 1;
        st->st_size = image_st.st_size;
        st->st_uid = image_st.st_uid;
        st->st_gid = image_st.st_gid;
        return 0;
}

static int sf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
        (void) offset;
        (void) fi;
        (void) flags;
        if (strcmp(path, "/") != 0)
                return -ENOENT;
        fill(buf, ".", NULL, 0, 0);
        fill(buf, "..", NULL, 0, 0);
        fill(buf, "image", NULL, 0, 0);
        return 0;
}

static int sf_open(const char *path, struct fuse_file_info *fi) {
        if (strcmp(path, "/image") != 0)
                return -ENOENT;
        if ((fi->flags & O_ACCMODE) != O_RDONLY)
                return -EROFS;
        fi->direct_io = 1;
        return 0;
}

static int sf_read(const char *path, char *buf, size_t size, off_t offset,
                   struct fuse_file_info *fi) {
        ssize_t n;

        (void) path;
        (void) fi;
        if (slow)
                (void) nanosleep(
                        &(struct timespec){.tv_sec = delay_msec / 1000,
                                           .tv_nsec = (long) (delay_msec % 1000) * 1000000L},
                        NULL);
        n = pread(image_fd, buf, size, offset);
        return n < 0 ? -errno : (int) n;
}

static const struct fuse_operations ops = {
        .getattr = sf_getattr,
        .readdir = sf_readdir,
        .open = sf_open,
        .read = sf_read,
};

int main(int argc, char *argv[]) {
        char *fuse_argv[] = {argv[0],
                             (char *) "-f",
                             (char *) "-o",
                             (char *) "allow_other,ro,fsname=slowfs,subtype=slowfs",
                             argc > 2 ? argv[2] : NULL,
                             NULL};

        if (argc != 4) {
                fprintf(stderr, "usage: %s IMAGE MOUNTPOINT DELAY_MSEC\n", argv[0]);
                return 2;
        }
        delay_msec = (unsigned) strtoul(argv[3], NULL, 10);
        image_fd = open(argv[1], O_RDONLY | O_CLOEXEC);
        if (image_fd < 0 || fstat(image_fd, &image_st) < 0) {
                perror(argv[1]);
                return 1;
        }
        if (signal(SIGUSR1, on_usr) == SIG_ERR || signal(SIGUSR2, on_usr) == SIG_ERR) {
                perror("signal");
                return 1;
        }
        return fuse_main(5, fuse_argv, &ops, NULL);
}
