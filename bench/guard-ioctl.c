/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * bench/guard-ioctl.c: the cost of one ioctl that is not a loop ioctl, which every process on
 * the host pays once a BPF LSM program sits on the file_ioctl hook. Runs N FIONREAD ioctls on a
 * pipe (the cheapest ioctl there is: the hook's share of it is as large as it gets) and prints
 * the mean in nanoseconds. Built statically by bench/guard-vm.sh, run in the guest by
 * bench/guard-guest.sh.
 *
 *   guard-ioctl N   ->   "ns_per_ioctl 123.4"
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e9 + (double) ts.tv_nsec;
}

int main(int argc, char *argv[]) {
        char *end = NULL;
        unsigned long n;
        int p[2], avail;
        double t0, t1;

        if (argc != 2 || (n = strtoul(argv[1], &end, 10)) == 0 || *end) {
                fprintf(stderr, "usage: guard-ioctl N (N > 0 ioctls)\n");
                return 2;
        }
        if (pipe(p) < 0) {
                fprintf(stderr, "guard-ioctl: pipe: %s\n", strerror(errno));
                return 1;
        }
        t0 = now_ns();
        for (unsigned long i = 0; i < n; i++)
                if (ioctl(p[0], FIONREAD, &avail) < 0) {
                        fprintf(stderr, "guard-ioctl: FIONREAD: %s\n", strerror(errno));
                        return 1;
                }
        t1 = now_ns();
        printf("ns_per_ioctl %.1f\n", (t1 - t0) / (double) n);
        return 0;
}
