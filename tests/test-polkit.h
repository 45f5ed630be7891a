/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-polkit share: constants, the agents' and the monitor's helpers, and
 * its tests. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "integration-util.h"
#include "polkit-util.h"

#define MiB                   (1024ULL * 1024ULL)
#define RULES_FILE            PK_RULES_DIR "/49-loopmgr-test.rules"
#define LOCK_FILE             "/run/loopmgr-test-polkit.lock"
#define POLKIT_NAME           PK_POLKIT_NAME
#define POLKIT_INTERFACE      PK_POLKIT_INTERFACE
#define ERROR_ACCESS_DENIED   "org.freedesktop.DBus.Error.AccessDenied"
#define ERROR_INTERACTIVE     "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
#define ERROR_INVALID_ARGS    "org.freedesktop.DBus.Error.InvalidArgs"
#define ERROR_LIMITS_EXCEEDED "org.freedesktop.DBus.Error.LimitsExceeded"
#define ERROR_BUSY            "org.loopmgr.LoopManager1.Error.Busy"

/* How long polkitd may take to load a rules file it was told about by inotify. */
#define RULES_TIMEOUT (5 * USEC_PER_SEC)

/* An agent's call may wait for udev (the daemon's default 10 s) and for polkit. */
#define AGENT_TIMEOUT_MSEC (60 * 1000)

/* The two test users, by the index of their agent (U1, U2). */
extern const char *const user_names[2];

/* Who asks: the two agents, or the test itself (root, on e->bus). */
enum { U1, U2, ROOT, N_USERS = 2 };

/* cmocka does not count a failed group setup/teardown in its return value. */
extern bool group_failed;

typedef enum AgentOp {
        OP_ATTACH,        /* open(target, flags) as the user, then Manager.Attach(fd, options) */
        OP_ATTACH_PATH,   /* Manager.AttachPath(target, options) */
        OP_DETACH,        /* Manager.Detach(target, options) */
        OP_DEVICE_DETACH, /* Device.Detach(options) on the object target */
        OP_SET_AUTOCLEAR, /* Device.SetAutoclear(arg != 0, options) */
        OP_SET_CAPACITY,  /* Device.SetCapacity(options) */
        OP_OPEN_DEVICE,   /* Device.OpenDevice(the mode MODE_* arg names, options) */
} AgentOp;

/* The modes OP_OPEN_DEVICE asks for: "r", "rw", and "w", which the daemon must refuse. */
enum { MODE_R, MODE_RW, MODE_BAD };

typedef struct AgentReply {
        int r;          /* 0, or a negative errno */
        int open_errno; /* OP_ATTACH: errno of the agent's open(), 0 when it worked */
        bool called;    /* a method call went to the daemon */
        char error_name[256];
        char error_message[2048];
        char object[256];
        char node[64];
        uint64_t diskseq;
        bool reused;
        char state[64];
        int fd; /* the fd a reply carried (OpenDevice), held in the Env until released; or -EBADF */
} AgentReply;

typedef struct TestUser {
        uid_t uid;
        gid_t gid;
        char *dir; /* <tmpdir>/<name>, 0700, the user's */
} TestUser;

/* The group state: the Env of integration-util first, so helpers taking an Env work. */
typedef struct Ctx {
        Env e;
        TestUser users[N_USERS];
        PkAgent agents[N_USERS];
        char *shared_dir; /* <tmpdir>/shared, 0755, root's */
        char *instance;   /* the environment's state directory */
        char *srcdir;     /* for tests/env.sh */
        int lock_fd;
        sd_bus *monitor; /* a bus monitor connection, see monitor_start() */
        unsigned n_sentinels;
        bool daemon_custom;  /* restarted with a cap: restore the default one */
        bool polkit_stopped; /* start it again */
} Ctx;

/* Truncating copy (the reply fields are fixed-size). */
void copy_string(char *dst, size_t size, const char *src);

/* Sends one request to the agent of `who` and waits for its reply. Devices it attached are
 * tracked for the cleanup at once. */
void agent_call(Ctx *c, unsigned who, AgentOp op, const char *target, int arg, bool interactive,
                AgentReply *ret, unsigned n_options, ...);

#define user_attach(c, who, path, flags, ret, ...)                                                 \
        agent_call((c), (who), OP_ATTACH, (path), (flags), false, (ret), __VA_ARGS__)

#define user_attach_path(c, who, path, ret, ...)                                                   \
        agent_call((c), (who), OP_ATTACH_PATH, (path), 0, false, (ret), __VA_ARGS__)

#define user_detach(c, who, object, ret, ...)                                                      \
        agent_call((c), (who), OP_DETACH, (object), 0, false, (ret), __VA_ARGS__)

#define user_device_detach(c, who, object, ret, ...)                                               \
        agent_call((c), (who), OP_DEVICE_DETACH, (object), 0, false, (ret), __VA_ARGS__)

#define user_set_autoclear(c, who, object, value, ret)                                             \
        agent_call((c), (who), OP_SET_AUTOCLEAR, (object), (value), false, (ret), 0)

#define user_set_capacity(c, who, object, ret)                                                     \
        agent_call((c), (who), OP_SET_CAPACITY, (object), 0, false, (ret), 0)

#define user_open_device(c, who, object, mode, ret, ...)                                           \
        agent_call((c), (who), OP_OPEN_DEVICE, (object), (mode), false, (ret), __VA_ARGS__)

const char *reply_error(const AgentReply *p);
void expect_ok_impl(const AgentReply *p, const char *what, const char *file, int line);

#define expect_ok(p, what) expect_ok_impl((p), (what), __FILE__, __LINE__)

void expect_error_impl(const AgentReply *p, const char *name, const char *what, const char *file,
                       int line);

#define expect_error(p, name, what) expect_error_impl((p), (name), (what), __FILE__, __LINE__)

void expect_state_impl(const AgentReply *p, const char *state, const char *what, const char *file,
                       int line);

#define expect_state(p, state, what) expect_state_impl((p), (state), (what), __FILE__, __LINE__)

typedef PkVerdict Verdict;

#define VERDICT_NO        PK_VERDICT_NO
#define VERDICT_YES       PK_VERDICT_YES
#define VERDICT_CHALLENGE PK_VERDICT_CHALLENGE

const char *subject_name(Ctx *c, unsigned who);

typedef struct Expect {
        unsigned who;
        const char *action; /* without "org.loopmgr." */
        Verdict verdict;
} Expect;

/* Waits until polkitd gives every expected verdict (it reloads rules on inotify). */
void await_verdicts(Ctx *c, const Expect *x, size_t n);

#define RULE(action, user, result) PK_RULE("org.loopmgr." action, user, result)

/* A NULL-terminated list of RULE()s, joined into one file. */
#define RULES(...) ((const char *const[]){__VA_ARGS__, NULL})

#define EXPECTS(...) (const Expect[]){__VA_ARGS__}, ELEMENTSOF(((const Expect[]){__VA_ARGS__}))

void set_rules_impl(Ctx *c, const char *const *rules, const Expect *x, size_t n);

#define set_rules(c, rules, ...) set_rules_impl((c), (rules), EXPECTS(__VA_ARGS__))

void no_rules(Ctx *c, const Expect *x, size_t n);

typedef struct PolkitCall {
        char *kind;    /* subject kind */
        char *subject; /* its "name" detail (system-bus-name) */
        char *action;
        uint32_t flags;
} PolkitCall;

#define SENTINEL_PREFIX "org.loopmgr.Test.Sentinel"

void polkit_calls_free(PolkitCall *l, size_t n);
void monitor_stop(Ctx *c);

/* Installs a bus monitor (root may) for the CheckAuthorization calls on the bus, and the
 * sentinel calls of monitor_collect(). */
void monitor_start(Ctx *c);

int read_polkit_call(sd_bus_message *m, PolkitCall *ret);

/* Everything the daemon asked polkit since the last collection: sends a sentinel call from
 * the test's connection (after the replies the test waited for, so after anything the daemon
 * sent before them) and reads the monitor up to it. */
void monitor_collect(Ctx *c, PolkitCall **ret, size_t *ret_n);

/* The daemon asked polkit exactly once since the last collection, for `who`'s connection, about
 * `action`, with `flags`; or, with action NULL, not at all. */
void expect_asked_impl(Ctx *c, unsigned who, const char *action, uint32_t flags, const char *what,
                       const char *file, int line);

#define expect_asked(c, who, action, flags, what)                                                  \
        expect_asked_impl((c), (who), (action), (flags), (what), __FILE__, __LINE__)

#define expect_not_asked(c, what) expect_asked_impl((c), 0, NULL, 0, (what), __FILE__, __LINE__)

int read_pid_file(const char *path, pid_t *ret);
bool process_is(pid_t pid, const char *comm);

/* The pid owning `name` on the bus, 0 when nobody does. */
int bus_owner_pid(Env *e, const char *name, pid_t *ret);

void polkit_stop(Ctx *c);

/* `tests/env.sh start` on this instance starts polkitd again (and leaves the rest alone). */
int polkit_restart(Ctx *c);

int daemon_restart(Ctx *c, char *const *args, char *const *env);

/* A fresh image in the user's directory, owned by the user, mode 0600. */
char *user_image(Ctx *c, unsigned who, uint64_t size);

/* A fresh image in the shared directory, root's, with the given mode. */
char *shared_image(Ctx *c, uint64_t size, mode_t mode);

void expect_not_attached_impl(const char *path, const char *what, const char *file, int line);

#define expect_not_attached(path, what) expect_not_attached_impl((path), (what), __FILE__, __LINE__)

#define PROPS_OK(e, object, p)                                                                     \
        do {                                                                                       \
                _cleanup_bus_error_ sd_bus_error _err = SD_BUS_ERROR_NULL;                         \
                int _r = device_props_get((e), (object), &_err, (p));                              \
                assert_bus_ok(_r, &_err, "GetAll");                                                \
                if ((p)->type_errors)                                                              \
                        fail_msg("wrong property types on %s: %s", (object), (p)->type_errors);    \
        } while (0)

void expect_owner_refs_impl(Ctx *c, const char *object, uid_t owner, uint32_t refs,
                            const char *file, int line);

#define expect_owner_refs(c, object, owner, refs)                                                  \
        expect_owner_refs_impl((c), (object), (owner), (refs), __FILE__, __LINE__)

void expect_gone_impl(const AgentReply *a, const char *file, int line);

#define expect_gone(a) expect_gone_impl((a), __FILE__, __LINE__)

/* The Autoclear property reaches `value` (PropertiesChanged is asynchronous to the call only
 * in the kernel's view; the daemon reads the flag back). */
void expect_autoclear_impl(Ctx *c, const char *object, bool value, const char *file, int line);

#define expect_autoclear(c, object, value)                                                         \
        expect_autoclear_impl((c), (object), (value), __FILE__, __LINE__)

int hold_node(Ctx *c, const AgentReply *a);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_polkit_questions(void **state);
void test_attach_own_file(void **state);
void test_cannot_attach_unreadable(void **state);
void test_readonly_fd(void **state);
void test_attach_path(void **state);
void test_other_users_device(void **state);
void test_owner_manages_own_device(void **state);
void test_all_references(void **state);
void test_interaction_required(void **state);
void test_defaults_challenge(void **state);
void test_open_device_owner(void **state);
void test_open_device_others(void **state);
void test_polkitd_stopped(void **state);
void test_cap_environment(void **state);
void test_cap_option(void **state);
