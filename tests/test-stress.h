/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-stress share: constants, helpers and types, and its tests. */

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "integration-util.h"

#define MiB            (1024ULL * 1024ULL)
#define SIGNAL_TIMEOUT (2 * USEC_PER_SEC)
#define CALL_TIMEOUT   (30 * USEC_PER_SEC)
#define STATE_FILE     "devices"
#define STATE_FILE_BAD "devices.corrupt"
#define ENV_GLOBAL_DIR "/run/loopmgr-env"

/* udevd stopped by fault_udev_stopped, to be restarted by the teardown whatever happens. */
extern bool udev_stopped;

extern bool udev_was_env_sh;
void udev_restart(void);

#define ATTACH_OK(e, path, flags, a, ...)                                                          \
        do {                                                                                       \
                _cleanup_bus_error_ sd_bus_error _err = SD_BUS_ERROR_NULL;                         \
                int _r = attach_file((e), (path), (flags), &_err, (a), __VA_ARGS__);               \
                assert_bus_ok(_r, &_err, "Attach");                                                \
        } while (0)

#define PROPS_OK(e, object, p)                                                                     \
        do {                                                                                       \
                _cleanup_bus_error_ sd_bus_error _err = SD_BUS_ERROR_NULL;                         \
                int _r = device_props_get((e), (object), &_err, (p));                              \
                assert_bus_ok(_r, &_err, "GetAll");                                                \
                if ((p)->type_errors)                                                              \
                        fail_msg("wrong property types on %s: %s", (object), (p)->type_errors);    \
        } while (0)

unsigned env_unsigned(const char *name, unsigned def);
char *make_image_in(Env *e, const char *dir, uint64_t size);
void mkfs_ext4(const char *target);

/* umount(2), retried while udev's probe holds the fresh file system; -errno. */
int umount_retry(const char *target);

char *object_path(uint64_t diskseq);

typedef struct Binding {
        char name[32];
        uint64_t diskseq;
        char backing[PATH_MAX];
        uint64_t offset;
        uint64_t sizelimit;
} Binding;

int read_attr(const char *name, const char *attr, char *buf, size_t size);
int read_attr_u64(const char *name, const char *attr, uint64_t *ret);

/* One consistent reading of loopN's binding: -ENOENT when unbound, -EAGAIN when it changed
 * while being read, -ESRCH when its backing file is not under prefix (then nothing else is
 * read: the sampler skips the host's other devices cheaply). */
int binding_read(const char *name, const char *prefix, Binding *ret);

int read_text_file(const char *path, char **ret);

/* Every bound loop device backed by a file under prefix. */
int bindings_under(const char *prefix, Binding **ret, size_t *ret_n);

/* [start, end) of the backing file the binding exposes. */
void binding_range(const Binding *b, uint64_t *ret_start, uint64_t *ret_end);

/* The same binding (diskseq) is still there, unchanged. */
bool binding_still(const Binding *b);

typedef struct Ref {
        char object[96];
        char node[32];
        uint64_t diskseq;
        bool reused;
} Ref;

typedef struct AttachOpts {
        uint64_t offset, size_limit;
        const char *sharing;
        int read_only; /* -1: not given */
        uint64_t timeout_usec;
} AttachOpts;

#define ATTACH_OPTS_DEFAULT ((AttachOpts){.read_only = -1})

int raw_attach_message(sd_bus *bus, int fd, const AttachOpts *o, sd_bus_message **ret);
int read_ref(sd_bus_message *reply, Ref *ret);

int raw_attach(sd_bus *bus, const char *path, int flags, const AttachOpts *o, sd_bus_error *error,
               Ref *ret);

int raw_detach(sd_bus *bus, const char *object, sd_bus_error *error, char *ret_state, size_t size);

#define MAX_NAMES    32
#define MAX_MESSAGES 20

typedef struct Tally {
        pthread_mutex_t lock;
        struct {
                char name[128];
                unsigned count;
        } names[MAX_NAMES];
        size_t n_names;
        unsigned n_failures;
        char *messages[MAX_MESSAGES];
        size_t n_messages;
} Tally;

void tally_count(Tally *t, const char *name);
void tally_fail(Tally *t, const char *format, ...) _printf_(2, 3);
void tally_print(Tally *t, const char *what);

/* Prints and frees the failure messages; returns the number of failures. */
unsigned tally_report(Tally *t);

bool error_is_documented(const sd_bus_error *error);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_stress_mixed(void **state);
void test_loop_block(void **state);
void test_fault_kill_during_attach_burst(void **state);
void test_fault_kill_pending_teardown(void **state);
void test_fault_kill_keeps_references(void **state);
void test_fault_adopt_while_down(void **state);
void test_fault_corrupt_state(void **state);
void test_fault_udev_stalled(void **state);
void test_fault_udev_stopped(void **state);
