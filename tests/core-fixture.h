/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * What the core's unit tests share: a manager without a bus over a fake sysfs and /dev tree in
 * a temporary directory, send operations (notify.h) that record every answer and signal, and a
 * scripted kernel. The test binaries are linked with -Wl,--wrap for loop_attach,
 * loop_detach_nowait, loop_set_autoclear and loop_read_ids (tests/meson.build): the core's
 * calls of those land in this file, which answers as the test said and records the call.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "manager.h"

/* A call as the core sees it: any pointer the bus layer hands in. This one counts the
 * references the core holds, so a test can tell a call that was answered and released from
 * one that is still queued. */
struct Call {
        unsigned id;
        int refs; /* 1: only the test's own */
};

typedef enum SentKind {
        SENT_ADDED,   /* InterfacesAdded */
        SENT_REMOVED, /* InterfacesRemoved */
        SENT_CHANGED, /* PropertiesChanged; text: the property names, space-separated */
        SENT_ATTACH,  /* Attach reply */
        SENT_DETACH,  /* Detach reply; state */
        SENT_ERROR,   /* error reply; error, text: the sentence */
        SENT_FLUSH,
} SentKind;

typedef struct Sent {
        SentKind kind;
        Call *call;
        uint64_t diskseq; /* the device's, for signals and attach replies */
        bool reused;
        char state[32];
        int error;
        char text[512];
} Sent;

/* One call of the kernel layer that the core made. */
typedef struct KernelCall {
        char name[16];
        uint64_t diskseq;
        bool need_lock; /* loop_detach_nowait() */
        bool autoclear; /* loop_set_autoclear() */
        uint64_t usec;  /* sd_event_now() of the loop when it was made */
} KernelCall;

/* The backing ids loop_read_ids() reports for one loop device. */
typedef struct FakeIds {
        char name[16];
        dev_t device;
        uint64_t inode;
        dev_t rdevice;
} FakeIds;

#define FX_MAX_SENT   512
#define FX_MAX_CALLS  256
#define FX_MAX_SCRIPT 32

typedef struct Fixture {
        char root[64];
        sd_event *event;
        Manager *manager;

        Sent sent[FX_MAX_SENT];
        size_t n_sent;
        char gone_clients[4][32]; /* client_exists() says no for these */
        size_t n_gone_clients;

        /* loop_detach_nowait(): the script first, one answer per call; then -EWOULDBLOCK
         * while lock_held and the call needs the lock, else detach_result. */
        int detach_script[FX_MAX_SCRIPT];
        size_t n_detach_script, detach_pos;
        bool lock_held;
        int detach_result;
        KernelCall detaches[FX_MAX_CALLS];
        size_t n_detaches;

        /* loop_attach(): binds attach_number with attach_diskseq (and writes it into the fake
         * sysfs), or fails with attach_result when negative. */
        unsigned attach_number;
        uint64_t attach_diskseq;
        int attach_result;
        size_t n_attaches;

        int autoclear_result;
        KernelCall autoclears[FX_MAX_CALLS];
        size_t n_autoclears;

        FakeIds ids[16];
        size_t n_ids;
} Fixture;

/* A loop device in the fake sysfs. backing == NULL: unbound. */
typedef struct FakeLoop {
        const char *backing;
        uint64_t offset;
        uint64_t size_limit;
        uint64_t size; /* bytes */
        bool read_only;
        bool autoclear;
        bool partscan;
        bool direct_io;
} FakeLoop;

/* cmocka setup and teardown: *state becomes the Fixture, the manager's send operations the
 * recording ones. */
int fx_setup(void **state);
int fx_teardown(void **state);

void fx_put(Fixture *f, const char *rel, const char *contents);
void fx_fake_loop(Fixture *f, unsigned nr, uint64_t diskseq, const FakeLoop *l);
/* Removes loopN from the fake sysfs altogether. */
void fx_remove_loop(Fixture *f, unsigned nr);
/* Makes /dev/disk/by-diskseq/<diskseq> point at loopN: udev processed the binding. */
void fx_udev_link(Fixture *f, unsigned nr, uint64_t diskseq);
void fx_set_ids(Fixture *f, const char *name, dev_t device, uint64_t inode, dev_t rdevice);
void fx_client_gone(Fixture *f, const char *name);
/* The answers of the next loop_detach_nowait() calls, in order; a terminating 0 is not part
 * of the list (n says how many). */
void fx_script_detach(Fixture *f, size_t n, const int *answers);

/* A test file of `size` bytes under the root; returns an fd on it (the caller closes it). */
int fx_backing_file(Fixture *f, const char *rel, uint64_t size);
/* Attaches the file `rel` (fx_backing_file()) as loop<nr> with diskseq through
 * manager_attach(); returns its result. o may be NULL (defaults, wait_udev off). */
int fx_attach(Fixture *f, Call *call, const char *rel, unsigned nr, uint64_t diskseq,
              const AttachOptions *o, uid_t uid, const char *sender, Problem *error);

/* Runs the event loop until cond(f, userdata) holds or max_usec have passed; returns whether
 * it holds. cond NULL: runs for max_usec. */
bool fx_run(Fixture *f, bool (*cond)(Fixture *f, void *userdata), void *userdata,
            uint64_t max_usec);

/* The first recorded item of this kind (for this call, unless NULL) from index `from` on;
 * NULL if none. */
const Sent *fx_find(Fixture *f, SentKind kind, const Call *call, size_t from);
size_t fx_count(Fixture *f, SentKind kind);
/* The first changed-properties signal of diskseq from `from` on that names property (NULL:
 * any). */
const Sent *fx_find_changed(Fixture *f, uint64_t diskseq, const char *property, size_t from);
void fx_forget_sent(Fixture *f);
/* call was answered with an error of this errno (and this sentence, unless NULL). */
void fx_assert_error(Fixture *f, const Call *call, int error, const char *text);
/* call was answered by a Detach reply saying state. */
void fx_assert_detach_reply(Fixture *f, const Call *call, const char *state);
