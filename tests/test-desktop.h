/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-desktop share: constants, the context, helpers, and its tests. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "integration-util.h"
#include "polkit-util.h"

#define RULES_FILE           PK_RULES_DIR "/49-loopmgr-open.rules"
#define LOCK_FILE            "/run/loopmgr-test-open.lock"
#define MEDIA_DIR            "/run/media"
#define ERROR_NAME_NOT_FOUND LOOPMGR_ERROR_PREFIX "NotFound"

/* How long polkitd may take to load a rules file it was told about by inotify. */
#define RULES_TIMEOUT (5 * USEC_PER_SEC)

/* A pty session: polkit, PAM's delay after a wrong password (2 s), udev. */
#define PTY_TIMEOUT (60 * USEC_PER_SEC)

#define FILE_TEXT "Hello from a disk image opened by loopmgrctl.\n"

/* The two test users, by index (U1, U2). */
extern const char *const user_names[2];
enum { U1, U2, N_USERS };

typedef struct Ctx {
        Env *e;
        uid_t uid[N_USERS];
        gid_t gid[N_USERS];
        char *dir[N_USERS]; /* <tmpdir>/<user>, 0700, the user's */
        char *shared_dir;   /* <tmpdir>/shared, 0755, root's */
        PkAgent agents[N_USERS];
        char *bus_socket;
        char password[33];
        int lock_fd;
        /* What a test allocates: cmocka longjmps out of a failed test past any cleanup
         * attribute, so the test teardown frees it. */
        void **garbage;
        size_t n_garbage;
} Ctx;

extern bool group_failed;

/* Hands p to the test teardown; fails the test when p is NULL (out of memory). */
void *gc(Ctx *c, void *p);

void gc_free(Ctx *c);
static inline void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}

#define _cleanup_fclose_ _cleanup_(fclosep)

typedef struct Run {
        int status;
        const char *out; /* gc() */
        const char *err;
} Run;

/* loopmgrctl ARGS... as user `who`, without a terminal. */
void ctl_as_impl(Ctx *c, unsigned who, Run *ret, const char *file, int line, ...);

#define ctl_as(c, who, ret, ...)                                                                   \
        ctl_as_impl((c), (who), (ret), __FILE__, __LINE__, __VA_ARGS__, NULL)

void expect_status_impl(const Run *r, int status, const char *what, const char *file, int line);

#define expect_status(r, status, what) expect_status_impl((r), (status), (what), __FILE__, __LINE__)

void expect_contains_impl(const char *haystack, const char *needle, const char *what,
                          const char *file, int line);

#define expect_contains(h, n, what) expect_contains_impl((h), (n), (what), __FILE__, __LINE__)

/* The first line of s. */
char *first_line(Ctx *c, const char *s);

typedef struct MountEntry {
        const char *source; /* gc() */
        const char *fstype;
        const char *options; /* per-mount and super options, joined with a comma */
} MountEntry;

/* The topmost mount on target in our mount namespace: 0, -ENOENT when there is none. */
int find_mount(Ctx *c, const char *target, MountEntry *ret);

bool has_option(const char *options, const char *name);

/* Mount points under dir (prefix match on "dir/"), in mountinfo order; NULL-terminated. */
char **mounts_below(const char *dir);

/* Devices bound to path (losetup's view, the kernel's truth). */
size_t devices_of(const char *path);

/* Waits up to 5 s until no device is bound to path. */
bool wait_no_device(const char *path);

/* The daemon does not know the image any more either. */
void expect_daemon_forgot_impl(Ctx *c, const char *image, const char *file, int line);

#define expect_daemon_forgot(c, image) expect_daemon_forgot_impl((c), (image), __FILE__, __LINE__)

/* A tree with one file, FILE_TEXT in hello.txt, for mkfs -d and mksquashfs. */
char *make_tree(Ctx *c);

void give(Ctx *c, unsigned who, const char *path);
char *make_ext4(Ctx *c, unsigned who, const char *name, const char *label);
char *make_squashfs(Ctx *c, unsigned who, const char *name);

/* The content of path (up to PK_DATA_MAX bytes) as the user reads it; fails the test when the
 * user cannot open it. gc(). */
char *read_as(Ctx *c, unsigned who, const char *path);

/* printf into a new string, gc(). */
char *fmt(Ctx *c, const char *format, ...) _printf_(2, 3);

/* A new sparse file of size bytes, mode 0600. */
void make_sparse(const char *path, uint64_t size);

/* The kernel's partitions of the device name: /sys/block/<name>/<name>p<N>. */
size_t count_partitions(const char *name);

/* Waits (5 s) until the unbound loop device name has no partitions; a new binding of that name
 * is someone else's and not looked at (true). */
bool wait_no_partitions(const char *name);

/* Loop devices without a binding that keep partitions. None should exist: a rise in the count
 * after a failed open means the open left one (of a device whose name it never told). */
size_t unbound_with_partitions(void);

/* s without white space, gc(): for loose matching of JSON. */
char *squeeze(Ctx *c, const char *s);

size_t occurrences(const char *haystack, const char *needle);

/* Unmounts (MNT_DETACH, newest first) and removes whatever mount is left under
 * /run/media/<user> of the test users; returns how many there were. */
size_t unmount_media_leftovers(void);
/* A test's teardown: the agents stopped, the rules removed, c's garbage freed; then a failure
 * (-1) when the test left mounts under /run/media/lmopen*, devices over the temp directory,
 * processes of the users, an inconsistent daemon, or check (may be NULL) says false. What was
 * left is removed. */
int desktop_test_teardown(Ctx *c, bool (*check)(void));
/* A test's setup: a polkit agent for each user. 0 or -1. */
int desktop_test_setup(Ctx *c);
/* A group's setup: the shared lock (LOCK_FILE) taken, the rules removed, the users made
 * (desktop_group_start()); the environment `name` brought up, with the users' directories and
 * the copy of loopmgrctl they run (desktop_group_env()). 0 or a negative errno. */
int desktop_group_start(Ctx *c);
int desktop_group_env(Ctx *c, const char *name);
/* A group's teardown: what the setups made undone, devices and mounts left over removed;
 * false when anything was left over or check (may be NULL) says false. c itself is not
 * freed. */
bool desktop_group_stop(Ctx *c, bool (*check)(void));

/* Random bytes: no file system blkid knows. */
char *make_noise(Ctx *c, unsigned who, const char *name);

void set_rules_impl(Ctx *c, const char *text, const char *file, int line, ...);

#define set_rules(c, text, ...) set_rules_impl((c), (text), __FILE__, __LINE__, __VA_ARGS__, NULL)

#define RULE_ALL(user, result)                                                                     \
        PK_RULE("org.loopmgr.attach", user, result) PK_RULE("org.loopmgr.mount", user, result)

/* Both users may attach and mount their own images without asking; mount-others is polkit's
 * default (auth_admin: a challenge without a session). */
#define BASE_RULES RULE_ALL("lmopen1", "YES") RULE_ALL("lmopen2", "YES")

#define BASE_VERDICTS                                                                              \
        "org.loopmgr.attach", U1, PK_VERDICT_YES, "org.loopmgr.mount", U1, PK_VERDICT_YES,         \
                "org.loopmgr.mount", U2, PK_VERDICT_YES, "org.loopmgr.mount-others", U2,           \
                PK_VERDICT_CHALLENGE

typedef struct PtyRun {
        int status;
        const char *output; /* everything the terminal showed; gc() */
        unsigned prompts;
} PtyRun;

typedef struct PtyOptions {
        unsigned who;
        bool system_bus_namespace; /* bind the private bus onto /run/dbus/system_bus_socket */
        const char *password;      /* typed at every "Password:" prompt; NULL: none */
        const char *agent;         /* LOOPMGR_PKTTYAGENT, or NULL */
        const char *agent_log;     /* LMOPEN_FAKE_LOG for the fake agents, or NULL */
} PtyOptions;

/* Runs argv on a new pty as the user, typing the password at each prompt (three at most). */
void pty_run(Ctx *c, const PtyOptions *o, char *const *argv, PtyRun *ret);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_open_ext4(void **state);
void test_open_writable(void **state);
void test_open_squashfs(void **state);
void test_other_user(void **state);
void test_errors(void **state);
void test_interactive_agent(void **state);
void test_fake_agent(void **state);
void test_open_client_lifetime(void **state);
void test_usage(void **state);
