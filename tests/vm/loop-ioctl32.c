/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * loop-ioctl32 set-fd|configure LOOPDEV FILE: binds FILE to LOOPDEV with LOOP_SET_FD or
 * LOOP_CONFIGURE, built as a static 32-bit program (tests/vm/build-helpers.sh) so that the
 * ioctl takes the kernel's compat path (security_file_ioctl_compat). Prints "bound" or the
 * error and exits 0, or with the errno.
 */

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char *argv[]) {
        struct loop_config config;
        int fd, dev, r;

        if (argc != 4 || (strcmp(argv[1], "set-fd") != 0 && strcmp(argv[1], "configure") != 0)) {
                fprintf(stderr, "usage: loop-ioctl32 set-fd|configure LOOPDEV FILE\n");
                return 2;
        }
        fd = open(argv[3], O_RDWR | O_CLOEXEC);
        if (fd < 0) {
                fprintf(stderr, "open %s: %s\n", argv[3], strerror(errno));
                return 2;
        }
        dev = open(argv[2], O_RDWR | O_CLOEXEC);
        if (dev < 0) {
                fprintf(stderr, "open %s: %s\n", argv[2], strerror(errno));
                return 2;
        }
        if (strcmp(argv[1], "set-fd") == 0)
                r = ioctl(dev, LOOP_SET_FD, fd);
        else {
                memset(&config, 0, sizeof(config));
                config.fd = (unsigned) fd;
                r = ioctl(dev, LOOP_CONFIGURE, &config);
        }
        if (r < 0) {
                r = errno;
                printf("%s %s: %s\n", argv[1], argv[2], strerror(r));
                return r;
        }
        printf("bound\n");
        return 0;
}
