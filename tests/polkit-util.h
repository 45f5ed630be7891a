/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Helpers for integration tests that act as unprivileged users against a real polkitd
 * (test-polkit, test-mount, test-desktop):
 *
 *  - test users: pk_ensure_user() creates a system user when it does not exist (and leaves
 *    it in place);
 *  - polkit rules: pk_rules_write() replaces a rules file in /etc/polkit-1/rules.d at once,
 *    pk_await_verdict() asks polkitd itself until it gives the verdict a test relies on;
 *  - agents: pk_agent_start() forks a child that drops to a user (setgroups, setresgid,
 *    setresuid) and changes to /, opens its OWN connection to the bus in
 *    DBUS_SYSTEM_BUS_ADDRESS and then does what pk_agent_call() sends it over a socketpair: a
 *    D-Bus method call (with fds opened as that user), reading a file, or running a command,
 *    all as that user;
 *  - a lock file that serialises two runs of one binary.
 *
 * Like integration-util, helpers return 0 or a negative errno; only pk_expect_*() fail a test.
 */

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

#define PK_RULES_DIR "/etc/polkit-1/rules.d"

#define PK_POLKIT_NAME      "org.freedesktop.PolicyKit1"
#define PK_POLKIT_PATH      "/org/freedesktop/PolicyKit1/Authority"
#define PK_POLKIT_INTERFACE "org.freedesktop.PolicyKit1.Authority"

/* --- Users --- */

/* getpwnam(name), running `useradd --system --no-create-home --shell /usr/sbin/nologin name`
 * first when there is no such user. Refuses uid 0. */
int pk_ensure_user(const char *name, uid_t *ret_uid, gid_t *ret_gid);
/* mkdir + chmod (no umask) + chown. */
int pk_make_dir(const char *path, mode_t mode, uid_t uid, gid_t gid);
/* Number of live (not zombie) processes owned by any of the n uids; each is printed. */
size_t pk_user_processes(const uid_t *uids, size_t n);
bool pk_process_gone(pid_t pid);

/* --- polkit --- */

typedef enum PkVerdict {
        PK_VERDICT_NO,
        PK_VERDICT_YES,
        PK_VERDICT_CHALLENGE,
} PkVerdict;

const char *pk_verdict_name(PkVerdict v);
/* What polkitd answers, without interaction, for the bus name `subject` and the action. */
int pk_check(sd_bus *bus, const char *subject, const char *action, PkVerdict *ret,
             sd_bus_error *error);
/* Asks until polkitd answers `want` (it reloads rules on inotify) or timeout_usec passed
 * (-ETIMEDOUT, *ret_last = the last answer; other errors as pk_check()). */
int pk_await_verdict(sd_bus *bus, const char *subject, const char *action, PkVerdict want,
                     uint64_t timeout_usec, PkVerdict *ret_last);

/* Writes text to path (a file in PK_RULES_DIR) through a temporary file and rename(), so that
 * polkitd never reads half of it; mode 0644 (polkitd does not run as root). */
int pk_rules_write(const char *path, const char *text);
/* Removes path (and the temporary file of pk_rules_write()); ENOENT is fine. */
void pk_rules_remove(const char *path);

/* One rule: for exactly this action id and user name, the result (YES, NO, AUTH_ADMIN, ...). */
#define PK_RULE(action_id, user, result)                                                           \
        "polkit.addRule(function(action, subject) {\n"                                             \
        "        if (action.id == \"" action_id "\" && subject.user == \"" user "\")\n"            \
        "                return polkit.Result." result ";\n"                                       \
        "});\n"

/* flock(LOCK_EX) on path, waiting up to timeout_usec; *ret_fd holds the lock until closed. */
int pk_lock(const char *path, uint64_t timeout_usec, int *ret_fd);

/* --- Agents --- */

#define PK_MAX_ARGS    8
#define PK_MAX_OPTIONS 8
#define PK_MAX_VALUES  8
#define PK_STRING_MAX  1024
#define PK_DATA_MAX    8192

/* A typed value. Types: b y q u i t x d(not supported) s o g, and 'h': `string` is a path the
 * agent opens as the user with open flags `number` and passes as a unix fd. */
typedef struct PkValue {
        char type;
        uint64_t number; /* b y q u t; i x as two's complement */
        char string[PK_STRING_MAX];
} PkValue;

typedef struct PkOption {
        char key[64];
        PkValue value;
} PkOption;

typedef enum PkOp {
        /* Method call to `destination` (default org.loopmgr.LoopManager1): the args in order,
         * then an a{sv} of the options when with_options is set. */
        PK_OP_CALL,
        /* Reads up to PK_DATA_MAX bytes of the file args[0].string as the user. */
        PK_OP_READ_FILE,
        /* Runs argv = args[0..n_args) (strings; args[0] looked up in PATH) as the user, with the
         * agent's environment; stdout into data, stderr into error_message, status (127 and
         * why in error_message when it cannot be executed: the build tree may be out of the
         * user's reach, see env_loopmgrctl_for_users()). */
        PK_OP_EXEC,
} PkOp;

typedef struct PkRequest {
        PkOp op;
        char destination[256];
        char path[256];
        char interface[128];
        char member[64];
        bool interactive; /* the message's allow-interactive-authorization flag */
        int timeout_msec; /* of the call / command; 0 = 45 s */
        unsigned n_args;
        PkValue args[PK_MAX_ARGS];
        bool with_options;
        unsigned n_options;
        PkOption options[PK_MAX_OPTIONS];
} PkRequest;

typedef struct PkReply {
        int r;          /* 0, or a negative errno */
        int open_errno; /* an 'h' argument or PK_OP_READ_FILE: errno of open(), 0 if it worked */
        bool called;    /* the method call went out */
        char error_name[256];
        char error_message[2048];
        /* PK_OP_CALL: the basic values of the reply's top level, in order (containers are
         * skipped and recorded with their type letter only; an 'h' has the fd's F_GETFL flags
         * as number, and the first one goes to the test process: pk_agent_call_fd()). */
        bool has_fd;
        unsigned n_values;
        PkValue values[PK_MAX_VALUES];
        /* PK_OP_READ_FILE, PK_OP_EXEC */
        size_t size;
        char data[PK_DATA_MAX + 1]; /* NUL-terminated */
        int status;                 /* PK_OP_EXEC: exit status, 128+signal when killed */
        /* The hello message */
        char unique_name[64];
        uid_t uid;
} PkReply;

typedef struct PkAgent {
        pid_t pid;
        int fd;
        uid_t uid;
        char *unique_name; /* its bus connection */
} PkAgent;

#define PK_AGENT_NULL ((PkAgent){.pid = 0, .fd = -EBADF})

/* Forks the agent for uid/gid and waits for its hello (15 s). */
int pk_agent_start(PkAgent *a, uid_t uid, gid_t gid);
/* Closes the socket (the agent exits), reaps it (SIGKILL after 5 s). Idempotent. */
void pk_agent_stop(PkAgent *a);
/* Sends the request, waits for the reply (timeout_msec, 0 = 60 s). <0 only when the agent
 * did not answer; what the call itself did is in ret->r. */
int pk_agent_call(PkAgent *a, const PkRequest *q, PkReply *ret, int timeout_msec);
/* The same, with the first fd of the method's reply (the agent's copy, passed over the socket
 * and closed in the agent) in *ret_fd, -EBADF when the reply carried none. */
int pk_agent_call_fd(PkAgent *a, const PkRequest *q, PkReply *ret, int timeout_msec, int *ret_fd);
/* pk_agent_call() in two halves, for a call left running while the test does other things. */
int pk_agent_send(PkAgent *a, const PkRequest *q);
int pk_agent_receive(PkAgent *a, PkReply *ret, int timeout_msec);

/* Request builders. pk_request_call() fills in a method call on the daemon's bus name. */
void pk_request_call(PkRequest *q, const char *path, const char *interface, const char *member);
/* Appends an argument; returns -E2BIG when full. */
int pk_request_arg(PkRequest *q, char type, uint64_t number, const char *string);
/* Appends n options given as OPT_*() triples (key, signature, value) of integration-util.h. */
int pk_request_options_va(PkRequest *q, unsigned n, va_list ap);
int pk_request_options(PkRequest *q, unsigned n, ...);

/* "name: message", "open() as the user: ...", or strerror; a static buffer. */
const char *pk_reply_error(const PkReply *p);
/* The i-th reply value of type `type`, or NULL. */
const PkValue *pk_reply_value(const PkReply *p, unsigned i, char type);

/* For cmocka tests: the reply succeeded / failed with exactly this D-Bus error name (and a
 * message, which is printed). */
void pk_expect_ok_impl(const PkReply *p, const char *what, const char *file, int line);
void pk_expect_error_impl(const PkReply *p, const char *name, const char *what, const char *file,
                          int line);
#define pk_expect_ok(p, what)          pk_expect_ok_impl((p), (what), __FILE__, __LINE__)
#define pk_expect_error(p, name, what) pk_expect_error_impl((p), (name), (what), __FILE__, __LINE__)
