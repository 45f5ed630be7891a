/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * What the scenarios of bench-peers share: the run (Bench), a client and its bus connection,
 * what one attach made, the sample series, the device record, and the attach and detach calls
 * of loopmgrd and udisks2. bench-peers.c has scenarios 1-3 and main(), bench-mount.c scenario
 * 6 (a slow Mount and everybody else).
 */

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <systemd/sd-bus.h>

#include "bench/bench-util.h"

#define _noreturn_ __attribute__((noreturn))

#define BUS_TIMEOUT_USEC    (60ULL * 1000ULL * 1000ULL)
#define DETACH_TIMEOUT_USEC (30ULL * 1000ULL * 1000ULL)
#define TEARDOWN_WAIT_USEC  (10.0 * 1e6)
#define PEER_MAX_FAILURES   5
#define UDISKS_BUS_NAME     "org.freedesktop.UDisks2"
#define UDISKS_MANAGER_PATH "/org/freedesktop/UDisks2/Manager"
#define UDISKS_BLOCK_PREFIX "/org/freedesktop/UDisks2/block_devices/"

typedef struct Series {
        double *v; /* microseconds */
        size_t n, n_alloc;
} Series;

typedef struct Stats {
        size_t n;
        double median, p90, p99, max; /* milliseconds */
} Stats;

typedef struct Bench {
        const char *dir, *loopmgrctl;
        FILE *record, *metrics;
        pthread_mutex_t lock; /* record, file counter */
        unsigned iterations, warmup, clients, conc_cycles, conc_rounds;
        unsigned file_counter;
        unsigned scenarios; /* bit k-1: scenario k runs (and is reported) */
        /* Scenario 2: the median of the per-iteration differences loopmgr - raw (ms), each
         * pair run back to back in the same iteration; n 0 when the series do not pair up. */
        double overhead_paired_ms;
        size_t overhead_pairs;
        bool have_udisks;
        pid_t loopmgrd_pid, udisksd_pid, bus_pid;
        /* Scenario 6: tests/slowfs.c, the delay of each read once slow, Mounts per peer. */
        const char *slowfs;
        unsigned slow_read_msec, mount_rounds;
} Bench;

/* One client: its bus connection and its image. */
typedef struct Client {
        Bench *b;
        sd_bus *bus;
        char *file;
} Client;

/* What one attach made. */
typedef struct Handle {
        char *node, *object; /* object: the D-Bus path, for the in-process peers */
        uint64_t diskseq;
        int fd; /* raw peer: our fd of the loop device */
} Handle;

const char *errstr(int r);
_noreturn_ void oom(void);
_printf_(1, 2) char *strdup_printf(const char *fmt, ...);

void series_add(Series *s, double usec);
/* Sorts s in place. */
Stats series_stats(Series *s);

_printf_(2, 3) void metric(Bench *b, const char *fmt, ...);
/* "<prefix>.<what>.median" and ".p99" (ms), when s has samples. */
void emit_stats(Bench *b, const char *prefix, const char *what, const Stats *s);

void handle_done(Handle *h);
int read_diskseq(const char *node, uint64_t *ret);
/* The binding node/diskseq still exists. */
bool still_bound(const char *node, uint64_t diskseq);
/* Notes the device in the record before anything else happens to it. */
int record_device(Bench *b, Handle *h, char **ret_error);
/* Waits until the kernel binding is really gone. */
int wait_gone(const Handle *h);
/* Runs argv; its stdout and stderr come back in *ret_output. 0 when it exited with 0. */
int run_capture(char *const argv[], char **ret_output);
char *bus_error_string(const sd_bus_error *e, int r);
/* Counts a failed call of peer key, prints it and keeps the first error (takes error over). */
void note_error(unsigned *count, char **first, const char *key, char *error);

/* A new empty 1 MiB image in the scratch directory. */
char *make_image(Bench *b, const char *key, unsigned client);
int client_open(Bench *b, Client *c, const char *key, unsigned nr);
void client_close(Client *c);

/* Manager.Attach of file (read_only: an O_RDONLY fd and read-only=true). */
int loopmgr_attach_file(Client *c, Handle *h, const char *file, bool read_only, bool wait_udev,
                        char **ret_error);
/* loopmgr_attach_file() of the client's own image, read-write, with the udev wait. */
int loopmgr_attach_udev(Client *c, Handle *h, char **ret_error);
/* Manager.Detach(wait=true): returns when the kernel binding is gone. */
int loopmgr_detach(Client *c, Handle *h, char **ret_error);
/* udisks2 Manager.LoopSetup of file: returns once udisksd has the block object. */
int udisks_attach_file(Client *c, Handle *h, const char *file, bool read_only, char **ret_error);
/* udisks_attach_file() of the client's own image, read-write. */
int udisks_attach(Client *c, Handle *h, char **ret_error);
/* Loop.Delete: LOOP_CLR_FD; on 6.11+ the teardown itself happens at the last close. */
int udisks_detach(Client *c, Handle *h, char **ret_error);

/* Scenario 6 (bench-mount.c). */
typedef struct MountResult MountResult;
MountResult *run_mount(Bench *b);
void print_mount(Bench *b, FILE *f, const MountResult *results);
void mount_result_free(MountResult *results);
