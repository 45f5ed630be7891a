/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Authorisation (SPEC §7) against a real polkitd and real users: the actions org.loopmgr.attach,
 * attach-path and detach-others, decided by polkit for the caller's bus connection (subject
 * system-bus-name); root never asks; a caller may change a device it holds a reference on
 * without asking; AccessDenied when polkit says no, InteractiveAuthorizationRequired when polkit
 * wants a password the caller did not allow it to ask for; AccessDenied naming polkit when
 * polkitd is not there; LimitsExceeded past the per-user cap on bindings.
 *
 * The users. The group setup creates two unprivileged system users when they do not exist
 * (lmtest1 and lmtest2: `useradd --system --no-create-home --shell /usr/sbin/nologin`) and
 * leaves them in place afterwards. Each test forks one "agent" per user: a child that drops
 * to that user (setgroups, setresgid, setresuid), opens its OWN connection to the bus in
 * DBUS_SYSTEM_BUS_ADDRESS and then performs the calls the test sends it over a socketpair,
 * opening image files itself, as that user, so that "cannot open" is a real EACCES. Each user
 * has a directory of its own under the test's temporary directory (mode 0700, its files
 * 0600), and a shared directory holds a file nobody but root may read.
 *
 * The rules. polkitd reads /etc/polkit-1/rules.d (shared by every polkitd on the host: the
 * rules written here only ever name the test users or this process's pid). A test writes
 * /etc/polkit-1/rules.d/49-loopmgr-test.rules and then asks polkitd itself
 * (CheckAuthorization for the agent's bus name, as root) until the verdicts it relies on are
 * in effect, 5 s at most; the teardown removes the file. A lock on
 * /run/loopmgr-test-polkit.lock keeps two runs of this binary (two environment instances)
 * from fighting over that file and the users.
 *
 * polkitd. One test stops the environment's polkitd (the pid recorded in the instance
 * directory, which is the directory of the bus socket, checked against the bus's owner of
 * org.freedesktop.PolicyKit1) and starts it again with `tests/env.sh start` on the same
 * instance, in the test body and, should the test fail, in its teardown.
 *
 * The daemon. Started by the group setup like test-aliases does; the cap tests restart it with
 * LOOPMGR_MAX_DEVICES_PER_USER or --max-devices-per-user and the teardown restores the
 * default one. After every test nothing backed by the temporary directory may be left, the
 * daemon and the kernel must agree, and no process of the test users may remain.
 *
 * Run:   eval "$(LOOPMGR_TEST_ENV=/run/loopmgr-pktest tests/env.sh start)"
 *        meson test -C BUILD test-polkit
 * LOOPMGR_TEST_FILTER / LOOPMGR_TEST_SKIP select tests by cmocka glob.
 */

#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "polkit-util.h"

#define MiB (1024ULL * 1024ULL)

#define RULES_FILE PK_RULES_DIR "/49-loopmgr-test.rules"
#define LOCK_FILE  "/run/loopmgr-test-polkit.lock"

#define POLKIT_NAME      PK_POLKIT_NAME
#define POLKIT_INTERFACE PK_POLKIT_INTERFACE

#define ERROR_ACCESS_DENIED   "org.freedesktop.DBus.Error.AccessDenied"
#define ERROR_INTERACTIVE     "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
#define ERROR_INVALID_ARGS    "org.freedesktop.DBus.Error.InvalidArgs"
#define ERROR_LIMITS_EXCEEDED "org.freedesktop.DBus.Error.LimitsExceeded"

/* How long polkitd may take to load a rules file it was told about by inotify. */
#define RULES_TIMEOUT (5 * USEC_PER_SEC)
/* An agent's call may wait for udev (the daemon's default 10 s) and for polkit. */
#define AGENT_TIMEOUT_MSEC (60 * 1000)

static const char *const user_names[] = {"lmtest1", "lmtest2"};

/* Who asks: the two agents, or the test itself (root, on e->bus). */
enum { U1, U2, ROOT, N_USERS = 2 };

/* cmocka does not count a failed group setup/teardown in its return value. */
static bool group_failed;

/* ------------------------------------------------------------------------------------------ */
/* What the tests ask the agents (polkit-util.h) to do. */

typedef enum AgentOp {
        OP_ATTACH,        /* open(target, flags) as the user, then Manager.Attach(fd, options) */
        OP_ATTACH_PATH,   /* Manager.AttachPath(target, options) */
        OP_DETACH,        /* Manager.Detach(target, options) */
        OP_DEVICE_DETACH, /* Device.Detach(options) on the object target */
        OP_SET_AUTOCLEAR, /* Device.SetAutoclear(arg != 0, options) */
        OP_SET_CAPACITY,  /* Device.SetCapacity(options) */
} AgentOp;

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
static void copy_string(char *dst, size_t size, const char *src) {
        size_t n = src ? strnlen(src, size - 1) : 0;
        if (n > 0)
                memcpy(dst, src, n);
        dst[n] = 0;
}

/* Sends one request to the agent of `who` and waits for its reply. Devices it attached are
 * tracked for the cleanup at once. */
static void agent_call(Ctx *c, unsigned who, AgentOp op, const char *target, int arg,
                       bool interactive, AgentReply *ret, unsigned n_options, ...) {
        PkAgent *a = &c->agents[who];
        static PkRequest q;
        static PkReply p;
        va_list ap;
        int r;

        assert_true(who < N_USERS);
        if (a->fd < 0)
                fail_msg("the agent for %s is not running", user_names[who]);

        switch (op) {
        case OP_ATTACH:
                pk_request_call(&q, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, "Attach");
                r = pk_request_arg(&q, 'h', (uint64_t) arg, target);
                break;
        case OP_ATTACH_PATH:
                pk_request_call(&q, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, "AttachPath");
                r = pk_request_arg(&q, 's', 0, target);
                break;
        case OP_DETACH:
                pk_request_call(&q, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, "Detach");
                r = pk_request_arg(&q, 'o', 0, target);
                break;
        case OP_DEVICE_DETACH:
                pk_request_call(&q, target, LOOPMGR_DEVICE_INTERFACE, "Detach");
                r = 0;
                break;
        case OP_SET_AUTOCLEAR:
                pk_request_call(&q, target, LOOPMGR_DEVICE_INTERFACE, "SetAutoclear");
                r = pk_request_arg(&q, 'b', arg != 0, NULL);
                break;
        case OP_SET_CAPACITY:
                pk_request_call(&q, target, LOOPMGR_DEVICE_INTERFACE, "SetCapacity");
                r = 0;
                break;
        default:
                fail_msg("unknown agent operation %d", (int) op);
        }
        assert_int_equal(r, 0);
        q.interactive = interactive;
        va_start(ap, n_options);
        r = pk_request_options_va(&q, n_options, ap);
        va_end(ap);
        if (r < 0)
                fail_msg("options for the agent: %s", strerror(-r));

        r = pk_agent_call(a, &q, &p, AGENT_TIMEOUT_MSEC);
        if (r < 0)
                fail_msg("no reply from the agent for %s: %s", user_names[who], strerror(-r));

        *ret = (AgentReply){.r = p.r, .open_errno = p.open_errno, .called = p.called};
        copy_string(ret->error_name, sizeof(ret->error_name), p.error_name);
        copy_string(ret->error_message, sizeof(ret->error_message), p.error_message);
        if (p.r >= 0 && (op == OP_ATTACH || op == OP_ATTACH_PATH)) {
                const PkValue *object = pk_reply_value(&p, 0, 'o'),
                              *node = pk_reply_value(&p, 1, 's'),
                              *diskseq = pk_reply_value(&p, 2, 't'),
                              *reused = pk_reply_value(&p, 3, 'b');
                if (!object || !node || !diskseq || !reused || p.n_values != 4) {
                        ret->r = -EBADMSG;
                        copy_string(ret->error_name, sizeof(ret->error_name), "(malformed reply)");
                } else {
                        copy_string(ret->object, sizeof(ret->object), object->string);
                        copy_string(ret->node, sizeof(ret->node), node->string);
                        ret->diskseq = diskseq->number;
                        ret->reused = reused->number != 0;
                }
        } else if (p.r >= 0 && (op == OP_DETACH || op == OP_DEVICE_DETACH)) {
                const PkValue *state = pk_reply_value(&p, 0, 's');
                if (!state || p.n_values != 1) {
                        ret->r = -EBADMSG;
                        copy_string(ret->error_name, sizeof(ret->error_name), "(malformed reply)");
                } else
                        copy_string(ret->state, sizeof(ret->state), state->string);
        }
        if (ret->r >= 0 && ret->node[0]) {
                if (strncmp(ret->node, "/dev/", 5) != 0)
                        fail_msg("%s got a device with Node '%s'", user_names[who], ret->node);
                (void) env_track_device(&c->e, ret->node + 5, ret->diskseq);
        }
}

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

static const char *reply_error(const AgentReply *p) {
        static char buf[sizeof(p->error_name) + sizeof(p->error_message) + 64];
        if (p->open_errno)
                snprintf(buf, sizeof(buf), "open() as the user: %s", strerror(p->open_errno));
        else if (p->error_name[0])
                snprintf(buf, sizeof(buf), "%s: %s", p->error_name,
                         p->error_message[0] ? p->error_message : "(no message)");
        else
                snprintf(buf, sizeof(buf), "%s", strerror(-p->r));
        return buf;
}

static void expect_ok_impl(const AgentReply *p, const char *what, const char *file, int line) {
        if (p->r >= 0)
                return;
        print_error("%s:%d: %s failed: %s\n", file, line, what, reply_error(p));
        _fail(file, line);
}
#define expect_ok(p, what) expect_ok_impl((p), (what), __FILE__, __LINE__)

static void expect_error_impl(const AgentReply *p, const char *name, const char *what,
                              const char *file, int line) {
        if (p->r >= 0) {
                print_error("%s:%d: %s: expected %s, got success%s%s\n", file, line, what, name,
                            p->node[0] ? ": " : "", p->node[0] ? p->node : p->state);
                _fail(file, line);
        }
        if (!p->called || !streq(p->error_name, name)) {
                print_error("%s:%d: %s: expected %s, got %s\n", file, line, what, name,
                            reply_error(p));
                _fail(file, line);
        }
        if (!p->error_message[0]) {
                print_error("%s:%d: %s: error %s carries no message\n", file, line, what, name);
                _fail(file, line);
        }
        /* The log shows what a user would read. */
        print_message("  %s: %s: %s\n", what, strrchr(p->error_name, '.') + 1, p->error_message);
}
#define expect_error(p, name, what) expect_error_impl((p), (name), (what), __FILE__, __LINE__)

static void expect_state_impl(const AgentReply *p, const char *state, const char *what,
                              const char *file, int line) {
        expect_ok_impl(p, what, file, line);
        if (!streq(p->state, state)) {
                print_error("%s:%d: %s returned '%s', expected '%s'\n", file, line, what, p->state,
                            state);
                _fail(file, line);
        }
}
#define expect_state(p, state, what) expect_state_impl((p), (state), (what), __FILE__, __LINE__)

/* ------------------------------------------------------------------------------------------ */
/* polkit */

typedef PkVerdict Verdict;
#define VERDICT_NO        PK_VERDICT_NO
#define VERDICT_YES       PK_VERDICT_YES
#define VERDICT_CHALLENGE PK_VERDICT_CHALLENGE

static const char *subject_name(Ctx *c, unsigned who) {
        const char *name = NULL;
        if (who == ROOT) {
                assert_true(sd_bus_get_unique_name(c->e.bus, &name) >= 0);
                return name;
        }
        if (!c->agents[who].unique_name)
                fail_msg("the agent for %s is not running", user_names[who]);
        return c->agents[who].unique_name;
}

typedef struct Expect {
        unsigned who;
        const char *action; /* without "org.loopmgr." */
        Verdict verdict;
} Expect;

/* Waits until polkitd gives every expected verdict (it reloads rules on inotify). */
static void await_verdicts(Ctx *c, const Expect *x, size_t n) {
        uint64_t deadline = now_usec() + RULES_TIMEOUT;

        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *action = NULL;
                assert_true(asprintf(&action, "org.loopmgr.%s", x[i].action) > 0);
                for (;;) {
                        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                        Verdict v = VERDICT_NO;
                        int r = pk_check(c->e.bus, subject_name(c, x[i].who), action, &v, &error);
                        if (r >= 0 && v == x[i].verdict)
                                break;
                        if (now_usec() >= deadline) {
                                if (r < 0)
                                        fail_msg("polkit CheckAuthorization(%s, %s): %s: %s",
                                                 x[i].who == ROOT ? "root" : user_names[x[i].who],
                                                 action, error.name ?: strerror(-r),
                                                 error.message ?: "");
                                fail_msg("polkit still says %s for %s / %s after %u s, expected "
                                         "%s (rules in %s)",
                                         pk_verdict_name(v),
                                         x[i].who == ROOT ? "root" : user_names[x[i].who], action,
                                         (unsigned) (RULES_TIMEOUT / USEC_PER_SEC),
                                         pk_verdict_name(x[i].verdict), RULES_FILE);
                        }
                        sleep_usec(50 * USEC_PER_MSEC);
                }
        }
}

#define RULE(action, user, result) PK_RULE("org.loopmgr." action, user, result)

/* A NULL-terminated list of RULE()s, joined into one file. */
#define RULES(...) ((const char *const[]){__VA_ARGS__, NULL})

#define EXPECTS(...) (const Expect[]){__VA_ARGS__}, ELEMENTSOF(((const Expect[]){__VA_ARGS__}))

static void set_rules_impl(Ctx *c, const char *const *rules, const Expect *x, size_t n) {
        _cleanup_free_ char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);
        assert_non_null(f);
        fputs("/* Written by loopmgr's tests/test-polkit for the length of one test. */\n", f);
        for (const char *const *r = rules; *r; r++)
                fputs(*r, f);
        assert_int_equal(fclose(f), 0);
        int r = pk_rules_write(RULES_FILE, text);
        if (r < 0)
                fail_msg("writing %s: %s", RULES_FILE, strerror(-r));
        await_verdicts(c, x, n);
}
#define set_rules(c, rules, ...) set_rules_impl((c), (rules), EXPECTS(__VA_ARGS__))

static void no_rules(Ctx *c, const Expect *x, size_t n) {
        pk_rules_remove(RULES_FILE);
        await_verdicts(c, x, n);
}

/* ------------------------------------------------------------------------------------------ */
/* What the daemon asks polkit: a bus monitor sees every CheckAuthorization call. */

typedef struct PolkitCall {
        char *kind;    /* subject kind */
        char *subject; /* its "name" detail (system-bus-name) */
        char *action;
        uint32_t flags;
} PolkitCall;

#define SENTINEL_PREFIX "org.loopmgr.Test.Sentinel"

static void polkit_calls_free(PolkitCall *l, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(l[i].kind);
                free(l[i].subject);
                free(l[i].action);
        }
        free(l);
}

static void monitor_stop(Ctx *c) {
        c->monitor = sd_bus_flush_close_unref(c->monitor);
}

/* Installs a bus monitor (root may) for the CheckAuthorization calls on the bus, and the
 * sentinel calls of monitor_collect(). */
static void monitor_start(Ctx *c) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *rule2 = NULL;
        const char *me = NULL;
        sd_bus *bus = NULL;
        int r;

        assert_true(sd_bus_get_unique_name(c->e.bus, &me) >= 0);
        assert_true(asprintf(&rule2,
                             "type='method_call',sender='%s',destination='org.freedesktop.DBus',"
                             "member='GetNameOwner',arg0namespace='" SENTINEL_PREFIX "'",
                             me) > 0);
        /* A monitor must never send, so sd-bus has to know before the connection starts. */
        r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, c->e.bus_address);
        if (r >= 0)
                r = sd_bus_set_bus_client(bus, true);
        if (r >= 0)
                r = sd_bus_set_monitor(bus, true);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r >= 0)
                r = sd_bus_message_new_method_call(
                        bus, &m, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                        "org.freedesktop.DBus.Monitoring", "BecomeMonitor");
        if (r >= 0)
                r = sd_bus_message_append(m, "asu", 2,
                                          "type='method_call',interface='" POLKIT_INTERFACE
                                          "',member='CheckAuthorization'",
                                          rule2, 0U);
        if (r >= 0)
                r = sd_bus_call(bus, m, 10 * USEC_PER_SEC, &error, NULL);
        if (r < 0) {
                sd_bus_flush_close_unref(bus);
                fail_msg("cannot monitor the bus: %s: %s", error.name ?: strerror(-r),
                         error.message ?: "");
        }
        monitor_stop(c);
        c->monitor = bus;
}

static int read_polkit_call(sd_bus_message *m, PolkitCall *ret) {
        const char *kind, *action, *key;
        PolkitCall p = {};
        int r;

        r = sd_bus_message_enter_container(m, 'r', "sa{sv}");
        if (r < 0)
                return r;
        r = sd_bus_message_read(m, "s", &kind);
        if (r < 0)
                return r;
        p.kind = strdup(kind);
        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                goto fail;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                r = sd_bus_message_read(m, "s", &key);
                if (r < 0)
                        goto fail;
                if (streq(key, "name") && !p.subject) {
                        const char *name;
                        r = sd_bus_message_read(m, "v", "s", &name);
                        if (r < 0)
                                goto fail;
                        p.subject = strdup(name);
                } else {
                        r = sd_bus_message_skip(m, "v");
                        if (r < 0)
                                goto fail;
                }
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        goto fail;
        }
        if (r < 0)
                goto fail;
        r = sd_bus_message_exit_container(m);
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r >= 0)
                r = sd_bus_message_read(m, "s", &action);
        if (r < 0)
                goto fail;
        p.action = strdup(action);
        r = sd_bus_message_skip(m, "a{ss}");
        if (r >= 0)
                r = sd_bus_message_read(m, "u", &p.flags);
        if (r < 0)
                goto fail;
        *ret = p;
        return 0;
fail:
        free(p.kind);
        free(p.subject);
        free(p.action);
        return r;
}

/* Everything the daemon asked polkit since the last collection: sends a sentinel call from
 * the test's connection (after the replies the test waited for, so after anything the daemon
 * sent before them) and reads the monitor up to it. */
static void monitor_collect(Ctx *c, PolkitCall **ret, size_t *ret_n) {
        _cleanup_free_ char *sentinel = NULL;
        PolkitCall *l = NULL;
        size_t n = 0;
        bool seen = false;
        int r;

        assert_true(asprintf(&sentinel, SENTINEL_PREFIX ".s%u", ++c->n_sentinels) > 0);
        r = sd_bus_call_method_async(c->e.bus, NULL, "org.freedesktop.DBus",
                                     "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                     "GetNameOwner", NULL, NULL, "s", sentinel);
        if (r < 0)
                fail_msg("sending the sentinel: %s", strerror(-r));
        r = sd_bus_flush(c->e.bus);
        if (r < 0)
                fail_msg("sending the sentinel: %s", strerror(-r));

        uint64_t deadline = now_usec() + 5 * USEC_PER_SEC;
        while (!seen) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                r = sd_bus_process(c->monitor, &m);
                if (r < 0)
                        fail_msg("reading the bus monitor: %s", strerror(-r));
                if (!m) {
                        if (r > 0)
                                continue;
                        uint64_t now = now_usec();
                        if (now >= deadline)
                                fail_msg("the bus monitor did not see the sentinel in 5 s");
                        (void) sd_bus_wait(c->monitor, deadline - now);
                        continue;
                }
                if (sd_bus_message_is_method_call(m, "org.freedesktop.DBus", "GetNameOwner")) {
                        const char *name;
                        if (sd_bus_message_read(m, "s", &name) >= 0 && streq(name, sentinel))
                                seen = true;
                        continue;
                }
                if (!sd_bus_message_is_method_call(m, POLKIT_INTERFACE, "CheckAuthorization") ||
                    !streq_ptr(sd_bus_message_get_sender(m), c->e.daemon_unique_name))
                        continue;
                PolkitCall p;
                r = read_polkit_call(m, &p);
                if (r < 0)
                        fail_msg("a CheckAuthorization call of loopmgrd that does not parse: %s",
                                 strerror(-r));
                PolkitCall *nl = realloc(l, (n + 1) * sizeof(PolkitCall));
                assert_non_null(nl);
                l = nl;
                l[n++] = p;
        }
        *ret = l;
        *ret_n = n;
}

/* The daemon asked polkit exactly once since the last collection, for `who`'s connection, about
 * `action`, with `flags`; or, with action NULL, not at all. */
static void expect_asked_impl(Ctx *c, unsigned who, const char *action, uint32_t flags,
                              const char *what, const char *file, int line) {
        PolkitCall *l = NULL;
        size_t n = 0;
        bool ok;

        assert_non_null(c->monitor);
        monitor_collect(c, &l, &n);
        if (!action)
                ok = n == 0;
        else
                ok = n == 1 && streq_ptr(l[0].kind, "system-bus-name") &&
                     streq_ptr(l[0].subject, subject_name(c, who)) &&
                     streq_ptr(l[0].action, action) && l[0].flags == flags;
        if (!ok) {
                if (action)
                        print_error("%s:%d: %s: expected one CheckAuthorization(system-bus-name "
                                    "%s, %s, flags %u), got %zu:\n",
                                    file, line, what, subject_name(c, who), action, flags, n);
                else
                        print_error("%s:%d: %s: expected no CheckAuthorization, got %zu:\n", file,
                                    line, what, n);
                for (size_t i = 0; i < n; i++)
                        print_error("  CheckAuthorization(%s %s, %s, flags %u)\n", l[i].kind ?: "?",
                                    l[i].subject ?: "?", l[i].action ?: "?", l[i].flags);
        }
        polkit_calls_free(l, n);
        if (!ok)
                _fail(file, line);
}
#define expect_asked(c, who, action, flags, what)                                                  \
        expect_asked_impl((c), (who), (action), (flags), (what), __FILE__, __LINE__)
#define expect_not_asked(c, what) expect_asked_impl((c), 0, NULL, 0, (what), __FILE__, __LINE__)

/* ------------------------------------------------------------------------------------------ */
/* polkitd of the environment */

static int read_pid_file(const char *path, pid_t *ret) {
        _cleanup_free_ char *s = NULL;
        uint64_t v;
        int r = read_one_line_file(path, &s);
        if (r < 0)
                return r;
        r = safe_atou64(s, &v);
        if (r < 0)
                return r;
        if (v == 0 || v > INT_MAX)
                return -ERANGE;
        *ret = (pid_t) v;
        return 0;
}

static bool process_is(pid_t pid, const char *comm) {
        _cleanup_free_ char *path = NULL, *s = NULL;
        if (asprintf(&path, "/proc/%d/comm", (int) pid) < 0)
                return false;
        return read_one_line_file(path, &s) >= 0 && streq(s, comm);
}

/* The pid owning `name` on the bus, 0 when nobody does. */
static int bus_owner_pid(Env *e, const char *name, pid_t *ret) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t pid;
        int r = sd_bus_call_method(e->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                   "org.freedesktop.DBus", "GetConnectionUnixProcessID", &error,
                                   &reply, "s", name);
        if (r < 0) {
                if (sd_bus_error_has_name(&error, "org.freedesktop.DBus.Error.NameHasNoOwner")) {
                        *ret = 0;
                        return 0;
                }
                return r;
        }
        r = sd_bus_message_read(reply, "u", &pid);
        if (r < 0)
                return r;
        *ret = (pid_t) pid;
        return 0;
}

static void polkit_stop(Ctx *c) {
        _cleanup_free_ char *pidfile = NULL;
        pid_t pid = 0, owner = 0;
        int r;

        assert_true(asprintf(&pidfile, "%s/polkitd.pid", c->instance) > 0);
        r = read_pid_file(pidfile, &pid);
        if (r < 0)
                fail_msg("%s: %s", pidfile, strerror(-r));
        r = bus_owner_pid(&c->e, POLKIT_NAME, &owner);
        if (r < 0)
                fail_msg("who owns %s: %s", POLKIT_NAME, strerror(-r));
        /* Only the polkitd of this environment instance, and only when the bus agrees. */
        if (owner != pid || !process_is(pid, "polkitd"))
                fail_msg("%s names pid %d, but %s is owned by pid %d: not stopping anything",
                         pidfile, (int) pid, POLKIT_NAME, (int) owner);

        c->polkit_stopped = true;
        if (kill(pid, SIGTERM) < 0)
                fail_msg("kill(%d): %s", (int) pid, strerror(errno));
        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        for (;;) {
                r = bus_owner_pid(&c->e, POLKIT_NAME, &owner);
                if (r >= 0 && owner == 0 && pk_process_gone(pid))
                        break;
                if (now_usec() >= deadline)
                        fail_msg("polkitd (pid %d) did not go away within 10 s of SIGTERM",
                                 (int) pid);
                sleep_usec(20 * USEC_PER_MSEC);
        }
        print_message("  stopped polkitd (pid %d)\n", (int) pid);
}

/* `tests/env.sh start` on this instance starts polkitd again (and leaves the rest alone). */
static int polkit_restart(Ctx *c) {
        _cleanup_free_ char *script = NULL, *envvar = NULL, *out = NULL, *err = NULL;
        pid_t owner = 0;

        if (asprintf(&script, "%s/tests/env.sh", c->srcdir) < 0 ||
            asprintf(&envvar, "LOOPMGR_TEST_ENV=%s", c->instance) < 0)
                return -ENOMEM;
        char *argv[] = {(char *) "env", envvar, (char *) "bash", script, (char *) "start", NULL};
        int r = run_command(argv, NULL, &out, &err);
        if (r != 0) {
                print_error("%s start failed (%d): %s\n", script, r, err ?: "");
                return r < 0 ? r : -EPROTO;
        }
        r = bus_owner_pid(&c->e, POLKIT_NAME, &owner);
        if (r < 0)
                return r;
        if (owner == 0) {
                print_error("%s start did not bring %s back\n", script, POLKIT_NAME);
                return -ESRCH;
        }
        c->polkit_stopped = false;
        print_message("  polkitd is back (pid %d)\n", (int) owner);
        return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The daemon */

static int daemon_restart(Ctx *c, char *const *args, char *const *env) {
        int r = env_stop_daemon(&c->e);
        if (r < 0) {
                print_error("loopmgrd did not stop cleanly: %s\n", strerror(-r));
                group_failed = true;
        }
        c->daemon_custom = args || env;
        r = env_start_daemon_with(&c->e, args, env);
        if (r < 0)
                print_error("restarting loopmgrd: %s\n", strerror(-r));
        return r;
}

/* ------------------------------------------------------------------------------------------ */
/* Files */

/* A fresh image in the user's directory, owned by the user, mode 0600. */
static char *user_image(Ctx *c, unsigned who, uint64_t size) {
        char *path = NULL;
        int r = env_make_image(&c->e, c->users[who].dir, size, &path);
        if (r < 0)
                fail_msg("creating an image: %s", strerror(-r));
        if (chown(path, c->users[who].uid, c->users[who].gid) < 0) {
                int saved = errno;
                free(path);
                fail_msg("chown: %s", strerror(saved));
        }
        return path;
}

/* A fresh image in the shared directory, root's, with the given mode. */
static char *shared_image(Ctx *c, uint64_t size, mode_t mode) {
        char *path = NULL;
        int r = env_make_image(&c->e, c->shared_dir, size, &path);
        if (r < 0)
                fail_msg("creating an image: %s", strerror(-r));
        if (chmod(path, mode) < 0) {
                int saved = errno;
                free(path);
                fail_msg("chmod: %s", strerror(saved));
        }
        return path;
}

static void expect_not_attached_impl(const char *path, const char *what, const char *file,
                                     int line) {
        size_t n = 0;
        int r = losetup_count_backed_by(path, false, &n);
        if (r < 0) {
                print_error("%s:%d: losetup: %s\n", file, line, strerror(-r));
                _fail(file, line);
        }
        if (n > 0) {
                print_error("%s:%d: %s: %zu loop device(s) exist over %s\n", file, line, what, n,
                            path);
                _fail(file, line);
        }
}
#define expect_not_attached(path, what) expect_not_attached_impl((path), (what), __FILE__, __LINE__)

#define PROPS_OK(e, object, p)                                                                     \
        do {                                                                                       \
                _cleanup_bus_error_ sd_bus_error _err = SD_BUS_ERROR_NULL;                         \
                int _r = device_props_get((e), (object), &_err, (p));                              \
                assert_bus_ok(_r, &_err, "GetAll");                                                \
                if ((p)->type_errors)                                                              \
                        fail_msg("wrong property types on %s: %s", (object), (p)->type_errors);    \
        } while (0)

static void expect_owner_refs_impl(Ctx *c, const char *object, uid_t owner, uint32_t refs,
                                   const char *file, int line) {
        _cleanup_props_ DeviceProps p = {};
        PROPS_OK(&c->e, object, &p);
        if (p.owner_uid != owner || p.references != refs || !streq_ptr(p.state, "attached")) {
                print_error("%s:%d: %s: OwnerUID %u, References %u, State %s; expected %u, %u, "
                            "attached\n",
                            file, line, object, p.owner_uid, p.references, p.state ?: "(none)",
                            (unsigned) owner, refs);
                _fail(file, line);
        }
}
#define expect_owner_refs(c, object, owner, refs)                                                  \
        expect_owner_refs_impl((c), (object), (owner), (refs), __FILE__, __LINE__)

static void expect_gone_impl(const AgentReply *a, const char *file, int line) {
        if (!wait_binding_gone(a->node + 5, a->diskseq, 2 * USEC_PER_SEC)) {
                print_error("%s:%d: %s (diskseq %" PRIu64 ") is still bound after Detach said "
                            "detached\n",
                            file, line, a->node, a->diskseq);
                _fail(file, line);
        }
}
#define expect_gone(a) expect_gone_impl((a), __FILE__, __LINE__)

/* The Autoclear property reaches `value` (PropertiesChanged is asynchronous to the call only
 * in the kernel's view; the daemon reads the flag back). */
static void expect_autoclear_impl(Ctx *c, const char *object, bool value, const char *file,
                                  int line) {
        uint64_t deadline = now_usec() + 2 * USEC_PER_SEC;
        for (;;) {
                _cleanup_props_ DeviceProps p = {};
                PROPS_OK(&c->e, object, &p);
                if (p.autoclear == value)
                        return;
                if (now_usec() >= deadline) {
                        print_error("%s:%d: Autoclear of %s is %s, expected %s\n", file, line,
                                    object, p.autoclear ? "true" : "false",
                                    value ? "true" : "false");
                        _fail(file, line);
                }
                sleep_usec(20 * USEC_PER_MSEC);
        }
}
#define expect_autoclear(c, object, value)                                                         \
        expect_autoclear_impl((c), (object), (value), __FILE__, __LINE__)

static int hold_node(Ctx *c, const AgentReply *a) {
        int fd = env_hold(&c->e, a->node, O_RDONLY);
        if (fd < 0)
                fail_msg("open(%s): %s", a->node, strerror(-fd));
        return fd;
}

/* ------------------------------------------------------------------------------------------ */
/* Fixtures */

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

/* The directory of the bus socket in DBUS_SYSTEM_BUS_ADDRESS is the env.sh instance. */
static int find_instance(char **ret) {
        const char *address = getenv("DBUS_SYSTEM_BUS_ADDRESS");
        const char *prefix = "unix:path=";
        if (!address || strncmp(address, prefix, strlen(prefix)) != 0)
                return -EINVAL;
        const char *path = address + strlen(prefix);
        const char *end = strchr(path, ',');
        _cleanup_free_ char *socket = end ? strndup(path, (size_t) (end - path)) : strdup(path);
        if (!socket)
                return -ENOMEM;
        char *slash = strrchr(socket, '/');
        if (!slash || !streq(slash, "/system_bus_socket"))
                return -EINVAL;
        *slash = 0;
        const char *env = getenv("LOOPMGR_TEST_ENV");
        if (env && *env && !streq(env, socket))
                print_message("note: LOOPMGR_TEST_ENV=%s, but the bus is that of %s; using the "
                              "latter\n",
                              env, socket);
        *ret = TAKE_PTR(socket);
        return 0;
}

static void ctx_free(Ctx *c) {
        Env *e = &c->e;
        for (unsigned i = 0; i < N_USERS; i++) {
                pk_agent_stop(&c->agents[i]);
                free(c->users[i].dir);
        }
        monitor_stop(c);
        free(e->tracked);
        free(e->held_fds);
        free(e->catchers);
        free(e->extra_buses);
        free(e->mounts);
        free(e->partitions);
        sd_bus_flush_close_unref(e->bus);
        free(e->daemon_unique_name);
        free(e->tmpdir);
        free(e->loopmgrd);
        free(e->loopmgrctl);
        free(e->bus_address);
        free(c->shared_dir);
        free(c->instance);
        free(c->srcdir);
        safe_close(c->lock_fd); /* drops the lock */
        free(c);
}

static int group_teardown(void **state);

static int group_setup(void **state) {
        Ctx *c = calloc(1, sizeof(Ctx));
        Env *e;
        char tmpl[] = "/var/tmp/loopmgr-polkit.XXXXXX";
        const char *srcdir;
        int r;

        if (!c)
                goto fail;
        *state = c;
        e = &c->e;
        c->lock_fd = -EBADF;
        for (unsigned i = 0; i < N_USERS; i++)
                c->agents[i] = PK_AGENT_NULL;

        if (pk_lock(LOCK_FILE, 240 * USEC_PER_SEC, &c->lock_fd) < 0)
                goto fail;
        /* A file left by a run that was killed would decide for this one. */
        pk_rules_remove(RULES_FILE);

        for (unsigned i = 0; i < N_USERS; i++)
                if (pk_ensure_user(user_names[i], &c->users[i].uid, &c->users[i].gid) < 0)
                        goto fail;

        if (find_instance(&c->instance) < 0) {
                print_error("DBUS_SYSTEM_BUS_ADDRESS=%s is not the socket of a tests/env.sh "
                            "instance\n",
                            getenv("DBUS_SYSTEM_BUS_ADDRESS"));
                goto fail;
        }
        srcdir = getenv("LOOPMGR_SRCDIR");
        if (!srcdir || !*srcdir) {
                print_error("LOOPMGR_SRCDIR is not set (run under meson test)\n");
                goto fail;
        }
        c->srcdir = strdup(srcdir);

        if (!mkdtemp(tmpl)) {
                print_error("mkdtemp(%s): %m\n", tmpl);
                goto fail;
        }
        e->tmpdir = strdup(tmpl);
        e->bus_address = strdup(getenv("DBUS_SYSTEM_BUS_ADDRESS"));
        if (!e->tmpdir || !e->bus_address || !c->srcdir)
                goto fail;
        /* The users reach their own directories through it, and nothing else. */
        if (chmod(e->tmpdir, 0711) < 0) {
                print_error("chmod %s: %m\n", e->tmpdir);
                goto fail;
        }
        for (unsigned i = 0; i < N_USERS; i++) {
                if (asprintf(&c->users[i].dir, "%s/%s", e->tmpdir, user_names[i]) < 0) {
                        c->users[i].dir = NULL;
                        goto fail;
                }
                r = pk_make_dir(c->users[i].dir, 0700, c->users[i].uid, c->users[i].gid);
                if (r < 0) {
                        print_error("%s: %s\n", c->users[i].dir, strerror(-r));
                        goto fail;
                }
        }
        if (asprintf(&c->shared_dir, "%s/shared", e->tmpdir) < 0) {
                c->shared_dir = NULL;
                goto fail;
        }
        r = pk_make_dir(c->shared_dir, 0755, 0, 0);
        if (r < 0) {
                print_error("%s: %s\n", c->shared_dir, strerror(-r));
                goto fail;
        }

        if (env_find_binary("LOOPMGRD", "loopmgrd", &e->loopmgrd) < 0 ||
            env_find_binary("LOOPMGRCTL", "loopmgrctl", &e->loopmgrctl) < 0)
                goto fail;
        if (access(e->loopmgrd, X_OK) < 0) {
                print_error("%s: %m\n", e->loopmgrd);
                goto fail;
        }

        r = sd_bus_open_system(&e->bus);
        if (r < 0) {
                print_error("Cannot connect to the system bus: %s\n", strerror(-r));
                goto fail;
        }
        (void) sd_bus_error_add_map(loopmgr_error_map);

        r = env_start_daemon(e);
        if (r < 0) {
                print_error("Failed to start %s: %s\n", e->loopmgrd, strerror(-r));
                goto fail;
        }
        print_message("loopmgrd %s (pid %d, %s), images in %s, environment %s, users %s (%u) "
                      "and %s (%u)\n",
                      e->loopmgrd, (int) e->daemon_pid, e->daemon_unique_name, e->tmpdir,
                      c->instance, user_names[0], (unsigned) c->users[0].uid, user_names[1],
                      (unsigned) c->users[1].uid);
        return 0;

fail:
        group_failed = true;
        /* cmocka runs no group teardown after a failed setup. */
        (void) group_teardown(state);
        return -1;
}

/* Processes of the test users still running (agents that did not go away). */
static size_t user_processes(Ctx *c) {
        uid_t uids[N_USERS];
        for (unsigned i = 0; i < N_USERS; i++)
                uids[i] = c->users[i].uid;
        return pk_user_processes(uids, N_USERS);
}

static int group_teardown(void **state) {
        Ctx *c = *state;
        Env *e;
        bool ok = true;
        size_t n = 0;

        if (!c)
                return 0;
        e = &c->e;

        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&c->agents[i]);
        pk_rules_remove(RULES_FILE);
        if (c->polkit_stopped && polkit_restart(c) < 0)
                ok = false;
        if (e->bus && env_cleanup_test(e) > 0)
                ok = false;
        if (e->tmpdir) {
                if (env_detach_all_under(e->tmpdir) > 0)
                        ok = false;
                if (!env_wait_nothing_under(e->tmpdir, 5 * USEC_PER_SEC)) {
                        print_error("devices backed by %s survive the cleanup\n", e->tmpdir);
                        ok = false;
                }
        }
        if (env_stop_daemon(e) < 0)
                ok = false;
        if (e->tmpdir) {
                if (mounts_under(e->tmpdir, &n) >= 0 && n > 0) {
                        print_error("%zu mount(s) under %s survive the cleanup; not removing "
                                    "the directory\n",
                                    n, e->tmpdir);
                        ok = false;
                } else
                        (void) nftw(e->tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
        }
        if (user_processes(c) > 0)
                ok = false;

        ctx_free(c);
        *state = NULL;
        if (!ok) {
                group_failed = true;
                return -1;
        }
        return 0;
}

static int test_setup(void **state) {
        Ctx *c = *state;
        for (unsigned i = 0; i < N_USERS; i++)
                if (pk_agent_start(&c->agents[i], c->users[i].uid, c->users[i].gid) < 0) {
                        print_error("cannot start the agent for %s\n", user_names[i]);
                        return -1;
                }
        return 0;
}

static int test_teardown(void **state) {
        Ctx *c = *state;
        Env *e = &c->e;
        bool ok = true;
        int left, r;

        /* The users' connections go first: nothing of theirs may act during the cleanup. */
        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&c->agents[i]);
        monitor_stop(c);
        pk_rules_remove(RULES_FILE);
        if (c->polkit_stopped) {
                print_error("the test left polkitd stopped; starting it again\n");
                if (polkit_restart(c) < 0) {
                        group_failed = true;
                        ok = false;
                }
        }

        left = env_cleanup_test(e);
        if (left > 0) {
                print_error("the test left %d device(s) attached\n", left);
                ok = false;
        }
        if (env_check_consistency_under(e, e->tmpdir) < 0)
                ok = false;
        if (!env_wait_nothing_under(e->tmpdir, 2 * USEC_PER_SEC)) {
                print_error("devices backed by %s are left over\n", e->tmpdir);
                (void) env_detach_all_under(e->tmpdir);
                (void) env_wait_nothing_under(e->tmpdir, 5 * USEC_PER_SEC);
                ok = false;
        }
        if (user_processes(c) > 0)
                ok = false;

        int status;
        if (e->daemon_pid > 0 && waitpid(e->daemon_pid, &status, WNOHANG) == e->daemon_pid) {
                print_error("loopmgrd died (%s %d)\n", WIFEXITED(status) ? "status" : "signal",
                            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                e->daemon_pid = 0;
                c->daemon_custom = true; /* start a default one for the next test */
                ok = false;
        }
        if (c->daemon_custom || e->daemon_pid <= 0) {
                r = daemon_restart(c, NULL, NULL);
                if (r < 0) {
                        group_failed = true;
                        ok = false;
                }
        }
        return ok ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Tests */

/* What the daemon asks polkit, seen on the bus: a user's request is checked for the user's own
 * connection (subject system-bus-name) with the action of the method and the message's
 * interaction flag (unless auth.no_user_interaction); requests on a device the caller holds a
 * reference on are not checked; root is never asked, whatever it does. (polkit itself always
 * says yes for uid 0, so only the bus shows whether root was asked.) */
static void test_polkit_questions(void **state) {
        Ctx *c = *state;
        Env *e = &c->e;
        _cleanup_free_ char *p1 = NULL, *p2 = NULL, *p3 = NULL, *p4 = NULL;
        _cleanup_attached_ Attached r3 = {}, r4 = {};
        AgentReply a = {}, b = {}, x = {};

        set_rules(c,
                  RULES(RULE("attach", "lmtest1", "YES"), RULE("attach-path", "lmtest1", "YES"),
                        RULE("detach-others", "lmtest1", "NO"),
                        RULE("detach-others", "lmtest2", "YES")),
                  {U1, "attach", VERDICT_YES}, {U1, "attach-path", VERDICT_YES},
                  {U1, "detach-others", VERDICT_NO}, {U2, "detach-others", VERDICT_YES});
        monitor_start(c);
        expect_not_asked(c, "before anything happened");

        p1 = user_image(c, U1, 4 * MiB);
        user_attach(c, U1, p1, O_RDWR, &a, 0);
        expect_ok(&a, "Attach by lmtest1");
        expect_asked(c, U1, "org.loopmgr.attach", 0, "Attach by lmtest1");
        agent_call(c, U1, OP_ATTACH, p1, O_RDWR, true, &x, 0);
        expect_ok(&x, "Attach by lmtest1, interaction allowed");
        expect_asked(c, U1, "org.loopmgr.attach", 1, "Attach with the interactive flag");
        agent_call(c, U1, OP_ATTACH, p1, O_RDWR, true, &x, 1,
                   OPT_B(LOOPMGR_OPT_NO_USER_INTERACTION, true));
        expect_ok(&x, "Attach by lmtest1, interactive flag and auth.no_user_interaction");
        expect_asked(c, U1, "org.loopmgr.attach", 0,
                     "Attach with the interactive flag and auth.no_user_interaction");
        if (!x.reused || !streq(x.object, a.object))
                fail_msg("the same Attach gave %s, expected %s again", x.object, a.object);
        expect_owner_refs(c, a.object, c->users[U1].uid, 3);

        /* Its own device: nothing to ask. */
        user_set_capacity(c, U1, a.object, &x);
        expect_ok(&x, "SetCapacity by the owner");
        user_detach(c, U1, a.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_ATTACHED, "Detach of one of its three references");
        user_device_detach(c, U1, a.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_ATTACHED, "Detach of one of its two references");
        expect_not_asked(c, "SetCapacity and Detach by the owner");

        /* all-references is detach-others, even for the owner. */
        user_detach(c, U1, a.object, &x, 1, OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true));
        expect_error(&x, ERROR_ACCESS_DENIED, "Detach(all-references) by the owner");
        expect_asked(c, U1, "org.loopmgr.detach-others", 0, "Detach(all-references)");

        /* Another user's device. */
        user_set_capacity(c, U2, a.object, &x);
        expect_ok(&x, "SetCapacity by lmtest2 with detach-others");
        expect_asked(c, U2, "org.loopmgr.detach-others", 0, "SetCapacity by lmtest2");

        p2 = user_image(c, U1, 4 * MiB);
        user_attach_path(c, U1, p2, &b, 0);
        expect_ok(&b, "AttachPath by lmtest1");
        expect_asked(c, U1, "org.loopmgr.attach-path", 0, "AttachPath by lmtest1");

        /* Root, on the users' devices and on its own. */
        p3 = user_image(c, U2, 4 * MiB);
        p4 = user_image(c, U2, 4 * MiB);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = attach_file(e, p3, O_RDWR, &error, &r3, 0);
                assert_bus_ok(r, &error, "Attach by root");
        }
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = call_attach_path(e, p4, &error, &r4, 0);
                assert_bus_ok(r, &error, "AttachPath by root");
        }
        expect_owner_refs(c, r3.object, 0, 1);
        expect_owner_refs(c, r4.object, 0, 1);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = call_set_capacity(e, a.object, &error);
                assert_bus_ok(r, &error, "SetCapacity by root of lmtest1's device");
        }
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = call_set_autoclear(e, b.object, false, &error);
                assert_bus_ok(r, &error, "SetAutoclear by root of lmtest1's device");
        }
        const char *objects[] = {a.object, b.object, r3.object, r4.object};
        const char *nodes[] = {a.node, b.node, r3.node, r4.node};
        const uint64_t seqs[] = {a.diskseq, b.diskseq, r3.diskseq, r4.diskseq};
        for (size_t i = 0; i < ELEMENTSOF(objects); i++) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_free_ char *st = NULL;
                int r = call_detach(e, objects[i], &error, &st, 1,
                                    OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true));
                assert_bus_ok(r, &error, "Detach(all-references) by root");
                assert_string_equal(st, LOOPMGR_STATE_DETACHED);
                assert_true(wait_binding_gone(nodes[i] + 5, seqs[i], 2 * USEC_PER_SEC));
        }
        expect_not_asked(c, "root's requests");
}

/* An authorised user attaches its own file by fd: the device is its (OwnerUID, one
 * reference), writable because the fd is; it detaches it again. Another user without the
 * authorisation is refused. */
static void test_attach_own_file(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *path = NULL, *path2 = NULL;
        _cleanup_props_ DeviceProps p = {};
        AgentReply a = {}, d = {}, x = {};

        set_rules(c, RULES(RULE("attach", "lmtest1", "YES"), RULE("attach", "lmtest2", "NO")),
                  {U1, "attach", VERDICT_YES}, {U2, "attach", VERDICT_NO});

        path = user_image(c, U1, 8 * MiB);
        user_attach(c, U1, path, O_RDWR, &a, 0);
        expect_ok(&a, "Attach by lmtest1 of its own file");
        if (a.reused)
                fail_msg("a fresh file was reused: %s", a.object);
        PROPS_OK(&c->e, a.object, &p);
        assert_int_equal(p.owner_uid, c->users[U1].uid);
        assert_int_equal(p.references, 1);
        assert_false(p.read_only);
        assert_true(p.managed);
        assert_string_equal(p.backing_file, path);
        assert_string_equal(p.node, a.node);

        path2 = user_image(c, U2, 8 * MiB);
        user_attach(c, U2, path2, O_RDWR, &x, 0);
        expect_error(&x, ERROR_ACCESS_DENIED, "Attach by lmtest2, polkit says no");
        expect_not_attached(path2, "a refused Attach");

        user_detach(c, U1, a.object, &d, 0);
        expect_state(&d, LOOPMGR_STATE_DETACHED, "Detach by the owner");
        expect_gone(&a);
}

/* A user cannot attach what it cannot open: the open fails in the user's process and nothing
 * reaches the daemon; an O_PATH handle (which needs no read permission) is refused by the
 * daemon; AttachPath without attach-path does not let the daemon open it either. */
static void test_cannot_attach_unreadable(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *secret = NULL;
        AgentReply a = {};

        set_rules(c, RULES(RULE("attach", "lmtest1", "YES"), RULE("attach-path", "lmtest1", "NO")),
                  {U1, "attach", VERDICT_YES}, {U1, "attach-path", VERDICT_NO});

        secret = shared_image(c, 4 * MiB, 0600);
        user_attach(c, U1, secret, O_RDONLY, &a, 0);
        if (a.r >= 0 || a.open_errno != EACCES || a.called)
                fail_msg("lmtest1 opening root's 0600 file: expected EACCES before any call, got "
                         "%s (called: %s)",
                         a.r >= 0 ? "success" : reply_error(&a), a.called ? "yes" : "no");
        user_attach(c, U1, secret, O_RDWR, &a, 0);
        if (a.r >= 0 || a.open_errno != EACCES || a.called)
                fail_msg("lmtest1 opening root's 0600 file read-write: expected EACCES, got %s",
                         a.r >= 0 ? "success" : reply_error(&a));
        expect_not_attached(secret, "files the user cannot open");

        /* O_PATH needs only search permission on the directory. */
        user_attach(c, U1, secret, O_PATH, &a, 0);
        expect_error(&a, ERROR_INVALID_ARGS, "Attach by lmtest1 of an O_PATH handle");
        expect_not_attached(secret, "an O_PATH handle");

        user_attach_path(c, U1, secret, &a, 0);
        expect_error(&a, ERROR_ACCESS_DENIED, "AttachPath by lmtest1 without attach-path");
        expect_not_attached(secret, "AttachPath without attach-path");
}

/* An O_RDONLY fd gives a read-only device, and asking for more is InvalidArgs. */
static void test_readonly_fd(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *path = NULL;
        _cleanup_props_ DeviceProps p = {};
        AgentReply a = {}, d = {};

        set_rules(c, RULES(RULE("attach", "lmtest1", "YES")), {U1, "attach", VERDICT_YES});

        path = user_image(c, U1, 4 * MiB);
        user_attach(c, U1, path, O_RDONLY, &a, 1, OPT_B(LOOPMGR_OPT_READ_ONLY, false));
        expect_error(&a, ERROR_INVALID_ARGS, "Attach(read-only=false) of an O_RDONLY fd");
        expect_not_attached(path, "a writable device from a read-only fd");

        user_attach(c, U1, path, O_RDONLY, &a, 0);
        expect_ok(&a, "Attach of an O_RDONLY fd");
        PROPS_OK(&c->e, a.object, &p);
        assert_true(p.read_only);
        assert_int_equal(p.owner_uid, c->users[U1].uid);
        assert_int_equal(p.references, 1);
        _cleanup_free_ char *ro = NULL;
        assert_int_equal(sysfs_read(a.node + 5, "ro", &ro), 0);
        assert_string_equal(ro, "1");

        user_detach(c, U1, a.object, &d, 0);
        expect_state(&d, LOOPMGR_STATE_DETACHED, "Detach by the owner");
        expect_gone(&a);
}

/* AttachPath needs attach-path, and holding attach does not imply it. */
static void test_attach_path(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *path = NULL;
        AgentReply a = {}, d = {};

        set_rules(c, RULES(RULE("attach", "lmtest1", "YES"), RULE("attach-path", "lmtest1", "NO")),
                  {U1, "attach", VERDICT_YES}, {U1, "attach-path", VERDICT_NO});
        path = user_image(c, U1, 4 * MiB);
        user_attach_path(c, U1, path, &a, 0);
        expect_error(&a, ERROR_ACCESS_DENIED, "AttachPath by lmtest1, polkit says no");
        expect_not_attached(path, "a refused AttachPath");

        set_rules(c, RULES(RULE("attach-path", "lmtest1", "YES")),
                  {U1, "attach-path", VERDICT_YES});
        user_attach_path(c, U1, path, &a, 0);
        expect_ok(&a, "AttachPath by lmtest1 with attach-path");
        expect_owner_refs(c, a.object, c->users[U1].uid, 1);

        user_detach(c, U1, a.object, &d, 0);
        expect_state(&d, LOOPMGR_STATE_DETACHED, "Detach by the owner");
        expect_gone(&a);
}

/* A second user can neither detach nor change the first user's device without
 * detach-others, and can with it. */
static void test_other_users_device(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *path = NULL;
        AgentReply a = {}, x = {};

        set_rules(c,
                  RULES(RULE("attach", "lmtest1", "YES"), RULE("attach", "lmtest2", "YES"),
                        RULE("detach-others", "lmtest1", "NO"),
                        RULE("detach-others", "lmtest2", "NO")),
                  {U1, "attach", VERDICT_YES}, {U2, "attach", VERDICT_YES},
                  {U2, "detach-others", VERDICT_NO});

        path = user_image(c, U1, 4 * MiB);
        user_attach(c, U1, path, O_RDWR, &a, 0);
        expect_ok(&a, "Attach by lmtest1");

        user_detach(c, U2, a.object, &x, 0);
        expect_error(&x, ERROR_ACCESS_DENIED, "Manager.Detach of lmtest1's device by lmtest2");
        user_device_detach(c, U2, a.object, &x, 0);
        expect_error(&x, ERROR_ACCESS_DENIED, "Device.Detach of lmtest1's device by lmtest2");
        user_detach(c, U2, a.object, &x, 1, OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true));
        expect_error(&x, ERROR_ACCESS_DENIED, "Detach(all-references) by lmtest2");
        user_set_autoclear(c, U2, a.object, true, &x);
        expect_error(&x, ERROR_ACCESS_DENIED, "SetAutoclear of lmtest1's device by lmtest2");
        user_set_capacity(c, U2, a.object, &x);
        expect_error(&x, ERROR_ACCESS_DENIED, "SetCapacity of lmtest1's device by lmtest2");

        /* Nothing of it happened. */
        expect_owner_refs(c, a.object, c->users[U1].uid, 1);
        expect_autoclear(c, a.object, false);
        assert_int_equal(loop_binding_present(a.node + 5, a.diskseq), 1);

        set_rules(c,
                  RULES(RULE("attach", "lmtest1", "YES"), RULE("detach-others", "lmtest2", "YES")),
                  {U2, "detach-others", VERDICT_YES});

        user_set_capacity(c, U2, a.object, &x);
        expect_ok(&x, "SetCapacity by lmtest2 with detach-others");
        /* Held open, so that the kernel does not clear it at once. */
        int fd = hold_node(c, &a);
        user_set_autoclear(c, U2, a.object, true, &x);
        expect_ok(&x, "SetAutoclear(true) by lmtest2 with detach-others");
        expect_autoclear(c, a.object, true);
        user_set_autoclear(c, U2, a.object, false, &x);
        expect_ok(&x, "SetAutoclear(false) by lmtest2 with detach-others");
        expect_autoclear(c, a.object, false);
        env_release(&c->e, fd);
        expect_owner_refs(c, a.object, c->users[U1].uid, 1);

        /* Like root: holding no reference of its own, it takes the device down. */
        user_detach(c, U2, a.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_DETACHED, "Detach of lmtest1's device by lmtest2");
        expect_gone(&a);
}

/* The owner changes and detaches its own device without any detach-others, but may not drop
 * all references with it. */
static void test_owner_manages_own_device(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *path = NULL;
        AgentReply a = {}, x = {};
        uint64_t size = 0;

        set_rules(c,
                  RULES(RULE("attach", "lmtest1", "YES"), RULE("detach-others", "lmtest1", "NO")),
                  {U1, "attach", VERDICT_YES}, {U1, "detach-others", VERDICT_NO});

        path = user_image(c, U1, 4 * MiB);
        user_attach(c, U1, path, O_RDWR, &a, 0);
        expect_ok(&a, "Attach by lmtest1");

        /* The file grows; SetCapacity makes the device see it. */
        if (truncate(path, 8 * MiB) < 0)
                fail_msg("truncate %s: %s", path, strerror(errno));
        user_set_capacity(c, U1, a.object, &x);
        expect_ok(&x, "SetCapacity by the owner");
        assert_int_equal(sysfs_read_u64(a.node + 5, "size", &size), 0);
        assert_int_equal(size * 512, 8 * MiB);

        int fd = hold_node(c, &a);
        user_set_autoclear(c, U1, a.object, true, &x);
        expect_ok(&x, "SetAutoclear(true) by the owner");
        expect_autoclear(c, a.object, true);
        user_set_autoclear(c, U1, a.object, false, &x);
        expect_ok(&x, "SetAutoclear(false) by the owner");
        expect_autoclear(c, a.object, false);
        env_release(&c->e, fd);

        user_device_detach(c, U1, a.object, &x, 1, OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true));
        expect_error(&x, ERROR_ACCESS_DENIED, "Detach(all-references) by the owner");
        expect_owner_refs(c, a.object, c->users[U1].uid, 1);

        user_device_detach(c, U1, a.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_DETACHED, "Device.Detach by the owner");
        expect_gone(&a);
}

/* Two users share one read-only device: each drops only its own reference; all-references
 * needs detach-others, even for the owner. */
static void test_all_references(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *path = NULL;
        AgentReply a = {}, b = {}, x = {};

        set_rules(c,
                  RULES(RULE("attach", "lmtest1", "YES"), RULE("attach", "lmtest2", "YES"),
                        RULE("detach-others", "lmtest1", "NO"),
                        RULE("detach-others", "lmtest2", "NO")),
                  {U1, "attach", VERDICT_YES}, {U2, "attach", VERDICT_YES},
                  {U1, "detach-others", VERDICT_NO}, {U2, "detach-others", VERDICT_NO});

        path = shared_image(c, 4 * MiB, 0644);
        user_attach(c, U1, path, O_RDONLY, &a, 0);
        expect_ok(&a, "Attach by lmtest1");
        user_attach(c, U2, path, O_RDONLY, &b, 0);
        expect_ok(&b, "the same Attach by lmtest2");
        if (!b.reused || !streq(a.object, b.object))
                fail_msg("lmtest2 got %s (reused=%s), expected lmtest1's %s", b.object,
                         b.reused ? "yes" : "no", a.object);
        expect_owner_refs(c, a.object, c->users[U1].uid, 2);

        /* lmtest2 holds a reference: it may drop it without asking. */
        user_detach(c, U2, a.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_ATTACHED, "Detach by lmtest2 of its reference");
        expect_owner_refs(c, a.object, c->users[U1].uid, 1);
        user_attach(c, U2, path, O_RDONLY, &b, 0);
        expect_ok(&b, "Attach by lmtest2 again");
        expect_owner_refs(c, a.object, c->users[U1].uid, 2);

        user_detach(c, U1, a.object, &x, 1, OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true));
        expect_error(&x, ERROR_ACCESS_DENIED, "Detach(all-references) by the owner");
        user_detach(c, U2, a.object, &x, 1, OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true));
        expect_error(&x, ERROR_ACCESS_DENIED, "Detach(all-references) by the other holder");
        expect_owner_refs(c, a.object, c->users[U1].uid, 2);

        set_rules(c,
                  RULES(RULE("attach", "lmtest1", "YES"), RULE("detach-others", "lmtest1", "YES"),
                        RULE("detach-others", "lmtest2", "NO")),
                  {U1, "detach-others", VERDICT_YES});
        user_detach(c, U1, a.object, &x, 1, OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true));
        expect_state(&x, LOOPMGR_STATE_DETACHED, "Detach(all-references) with detach-others");
        expect_gone(&a);
}

/* A rule answering AUTH_ADMIN: the caller did not allow interaction (the header flag unset, or
 * set but auth.no_user_interaction=true), so InteractiveAuthorizationRequired, for every
 * action. */
static void test_interaction_required(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *path = NULL, *path2 = NULL;
        AgentReply a = {}, x = {};

        set_rules(c,
                  RULES(RULE("attach", "lmtest1", "AUTH_ADMIN"),
                        RULE("attach-path", "lmtest1", "AUTH_ADMIN"),
                        RULE("detach-others", "lmtest1", "AUTH_ADMIN"),
                        RULE("attach", "lmtest2", "YES")),
                  {U1, "attach", VERDICT_CHALLENGE}, {U1, "attach-path", VERDICT_CHALLENGE},
                  {U1, "detach-others", VERDICT_CHALLENGE}, {U2, "attach", VERDICT_YES});

        path = user_image(c, U1, 4 * MiB);
        agent_call(c, U1, OP_ATTACH, path, O_RDWR, false, &x, 0);
        expect_error(&x, ERROR_INTERACTIVE, "Attach, AUTH_ADMIN, no interactive flag");
        agent_call(c, U1, OP_ATTACH, path, O_RDWR, true, &x, 1,
                   OPT_B(LOOPMGR_OPT_NO_USER_INTERACTION, true));
        expect_error(&x, ERROR_INTERACTIVE,
                     "Attach, AUTH_ADMIN, interactive flag but auth.no_user_interaction");
        agent_call(c, U1, OP_ATTACH_PATH, path, 0, false, &x, 0);
        expect_error(&x, ERROR_INTERACTIVE, "AttachPath, AUTH_ADMIN, no interactive flag");
        agent_call(c, U1, OP_ATTACH_PATH, path, 0, true, &x, 1,
                   OPT_B(LOOPMGR_OPT_NO_USER_INTERACTION, true));
        expect_error(&x, ERROR_INTERACTIVE,
                     "AttachPath, AUTH_ADMIN, interactive flag but auth.no_user_interaction");

        /* Interaction allowed, but no authentication agent exists here: polkit cannot ask
         * anybody, and the call must fail (promptly) rather than succeed. */
        agent_call(c, U1, OP_ATTACH, path, O_RDWR, true, &x, 0);
        if (x.r >= 0 || !x.called ||
            (!streq(x.error_name, ERROR_ACCESS_DENIED) && !streq(x.error_name, ERROR_INTERACTIVE)))
                fail_msg("Attach with interaction allowed and no polkit agent: expected "
                         "AccessDenied or InteractiveAuthorizationRequired, got %s",
                         x.r >= 0 ? "success" : reply_error(&x));
        print_message("  Attach, interaction allowed, no agent: %s: %s\n", x.error_name,
                      x.error_message);
        expect_not_attached(path, "refused attaches");

        path2 = user_image(c, U2, 4 * MiB);
        user_attach(c, U2, path2, O_RDWR, &a, 0);
        expect_ok(&a, "Attach by lmtest2");
        agent_call(c, U1, OP_DETACH, a.object, 0, false, &x, 0);
        expect_error(&x, ERROR_INTERACTIVE, "Detach of another's device, no interactive flag");
        agent_call(c, U1, OP_DEVICE_DETACH, a.object, 0, true, &x, 1,
                   OPT_B(LOOPMGR_OPT_NO_USER_INTERACTION, true));
        expect_error(&x, ERROR_INTERACTIVE,
                     "Device.Detach of another's device, auth.no_user_interaction");
        agent_call(c, U1, OP_SET_AUTOCLEAR, a.object, true, false, &x, 0);
        expect_error(&x, ERROR_INTERACTIVE, "SetAutoclear of another's device, no flag");
        agent_call(c, U1, OP_SET_CAPACITY, a.object, 0, true, &x, 1,
                   OPT_B(LOOPMGR_OPT_NO_USER_INTERACTION, true));
        expect_error(&x, ERROR_INTERACTIVE,
                     "SetCapacity of another's device, auth.no_user_interaction");
        expect_owner_refs(c, a.object, c->users[U2].uid, 1);
        expect_autoclear(c, a.object, false);

        user_detach(c, U2, a.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_DETACHED, "Detach by the owner");
        expect_gone(&a);
}

/* Without any rule, the shipped defaults (auth_admin for a caller outside an active session)
 * are a challenge: InteractiveAuthorizationRequired. */
static void test_defaults_challenge(void **state) {
        Ctx *c = *state;
        Env *e = &c->e;
        _cleanup_free_ char *path = NULL, *path2 = NULL;
        _cleanup_attached_ Attached r1 = {};
        AgentReply x = {};

        no_rules(c,
                 EXPECTS({U1, "attach", VERDICT_CHALLENGE}, {U1, "attach-path", VERDICT_CHALLENGE},
                         {U1, "detach-others", VERDICT_CHALLENGE}));

        path = user_image(c, U1, 4 * MiB);
        user_attach(c, U1, path, O_RDWR, &x, 0);
        expect_error(&x, ERROR_INTERACTIVE, "Attach under the default policy");
        user_attach_path(c, U1, path, &x, 0);
        expect_error(&x, ERROR_INTERACTIVE, "AttachPath under the default policy");
        expect_not_attached(path, "refused attaches");

        path2 = user_image(c, U2, 4 * MiB);
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = attach_file(e, path2, O_RDWR, &error, &r1, 0);
                assert_bus_ok(r, &error, "Attach by root");
        }
        user_detach(c, U1, r1.object, &x, 0);
        expect_error(&x, ERROR_INTERACTIVE, "Detach of root's device under the default policy");
        user_set_capacity(c, U1, r1.object, &x);
        expect_error(&x, ERROR_INTERACTIVE, "SetCapacity of root's device, default policy");
        expect_owner_refs(c, r1.object, 0, 1);

        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *st = NULL;
        int r = call_detach(e, r1.object, &error, &st, 0);
        assert_bus_ok(r, &error, "Detach by root");
        assert_string_equal(st, LOOPMGR_STATE_DETACHED);
        assert_true(wait_binding_gone(r1.node + 5, r1.diskseq, 2 * USEC_PER_SEC));
}

/* polkitd gone: users are refused with a message that says why; root is not affected; a
 * user's own device needs no polkit. When polkitd is back, so are the authorisations. */
static void test_polkitd_stopped(void **state) {
        Ctx *c = *state;
        Env *e = &c->e;
        _cleanup_free_ char *own = NULL, *other = NULL, *rootfile = NULL;
        _cleanup_attached_ Attached ra = {};
        AgentReply a = {}, x = {};

        set_rules(c, RULES(RULE("attach", "lmtest1", "YES"), RULE("attach-path", "lmtest1", "YES")),
                  {U1, "attach", VERDICT_YES}, {U1, "attach-path", VERDICT_YES});
        own = user_image(c, U1, 4 * MiB);
        other = user_image(c, U1, 4 * MiB);
        rootfile = user_image(c, U2, 4 * MiB);
        user_attach(c, U1, own, O_RDWR, &a, 0);
        expect_ok(&a, "Attach by lmtest1 while polkitd runs");

        polkit_stop(c);

        user_attach(c, U1, other, O_RDWR, &x, 0);
        expect_error(&x, ERROR_ACCESS_DENIED, "Attach by lmtest1 without polkitd");
        if (!strcasestr(x.error_message, "polkit"))
                fail_msg("the AccessDenied message does not mention polkit: %s", x.error_message);
        user_attach_path(c, U1, other, &x, 0);
        expect_error(&x, ERROR_ACCESS_DENIED, "AttachPath by lmtest1 without polkitd");
        if (!strcasestr(x.error_message, "polkit"))
                fail_msg("the AccessDenied message does not mention polkit: %s", x.error_message);
        expect_not_attached(other, "attaches refused without polkitd");

        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                int r = attach_file(e, rootfile, O_RDWR, &error, &ra, 0);
                assert_bus_ok(r, &error, "Attach by root without polkitd");
        }
        {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_free_ char *st = NULL;
                int r = call_detach(e, ra.object, &error, &st, 0);
                assert_bus_ok(r, &error, "Detach by root without polkitd");
                assert_string_equal(st, LOOPMGR_STATE_DETACHED);
                assert_true(wait_binding_gone(ra.node + 5, ra.diskseq, 2 * USEC_PER_SEC));
        }

        /* Its own device: no question to ask. */
        user_set_capacity(c, U1, a.object, &x);
        expect_ok(&x, "SetCapacity by the owner without polkitd");
        user_detach(c, U1, a.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_DETACHED, "Detach by the owner without polkitd");
        expect_gone(&a);

        if (polkit_restart(c) < 0)
                fail_msg("could not start polkitd again");
        await_verdicts(c, EXPECTS({U1, "attach", VERDICT_YES}));
        user_attach(c, U1, other, O_RDWR, &a, 0);
        expect_ok(&a, "Attach by lmtest1 once polkitd is back");
        user_detach(c, U1, a.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_DETACHED, "Detach by the owner");
        expect_gone(&a);
}

static void detach_all_of(Ctx *c, unsigned who, const AgentReply *a, unsigned times) {
        AgentReply x = {};
        for (unsigned i = 0; i < times; i++) {
                user_detach(c, who, a->object, &x, 0);
                expect_state(&x, i + 1 < times ? LOOPMGR_STATE_ATTACHED : LOOPMGR_STATE_DETACHED,
                             "Detach by the owner");
        }
        expect_gone(a);
}

/* LOOPMGR_MAX_DEVICES_PER_USER=2: a user's third distinct device is LimitsExceeded; taking
 * another reference on one of its devices does not count again; the cap is per user and
 * frees up with a detach. */
static void test_cap_environment(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *p1 = NULL, *p2 = NULL, *p3 = NULL, *q1 = NULL;
        AgentReply a = {}, b = {}, a2 = {}, d = {}, x = {}, o = {};
        char *env[] = {(char *) "LOOPMGR_MAX_DEVICES_PER_USER=2", NULL};

        if (daemon_restart(c, NULL, env) < 0)
                fail_msg("cannot restart loopmgrd with %s", env[0]);
        set_rules(c, RULES(RULE("attach", "lmtest1", "YES"), RULE("attach", "lmtest2", "YES")),
                  {U1, "attach", VERDICT_YES}, {U2, "attach", VERDICT_YES});

        p1 = user_image(c, U1, 4 * MiB);
        p2 = user_image(c, U1, 4 * MiB);
        p3 = user_image(c, U1, 4 * MiB);
        q1 = user_image(c, U2, 4 * MiB);

        user_attach(c, U1, p1, O_RDWR, &a, 0);
        expect_ok(&a, "first device of lmtest1");
        user_attach(c, U1, p2, O_RDWR, &b, 0);
        expect_ok(&b, "second device of lmtest1");
        user_attach(c, U1, p1, O_RDWR, &a2, 0);
        expect_ok(&a2, "another reference on its first device, at the cap");
        if (!a2.reused || !streq(a2.object, a.object))
                fail_msg("the same Attach gave %s (reused=%s), expected %s", a2.object,
                         a2.reused ? "yes" : "no", a.object);
        expect_owner_refs(c, a.object, c->users[U1].uid, 2);

        user_attach(c, U1, p3, O_RDWR, &x, 0);
        expect_error(&x, ERROR_LIMITS_EXCEEDED, "third distinct device of lmtest1, cap 2");
        expect_not_attached(p3, "an Attach past the cap");

        user_attach(c, U2, q1, O_RDWR, &o, 0);
        expect_ok(&o, "lmtest2 has a cap of its own");

        /* One device less, one more allowed. */
        detach_all_of(c, U1, &b, 1);
        user_attach(c, U1, p3, O_RDWR, &d, 0);
        expect_ok(&d, "lmtest1 after detaching one device");
        user_attach(c, U1, p2, O_RDWR, &x, 0);
        expect_error(&x, ERROR_LIMITS_EXCEEDED, "at the cap again");
        expect_not_attached(p2, "an Attach past the cap");

        detach_all_of(c, U1, &a, 2);
        detach_all_of(c, U1, &d, 1);
        detach_all_of(c, U2, &o, 1);
}

/* The same with the command line option, cap 1. */
static void test_cap_option(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *p1 = NULL, *p2 = NULL;
        AgentReply a = {}, b = {}, x = {};
        char *args[] = {(char *) "--max-devices-per-user=1", NULL};

        if (daemon_restart(c, args, NULL) < 0)
                fail_msg("cannot restart loopmgrd with %s", args[0]);
        set_rules(c, RULES(RULE("attach", "lmtest1", "YES")), {U1, "attach", VERDICT_YES});

        p1 = user_image(c, U1, 4 * MiB);
        p2 = user_image(c, U1, 4 * MiB);
        user_attach(c, U1, p1, O_RDWR, &a, 0);
        expect_ok(&a, "first device of lmtest1");
        user_attach(c, U1, p2, O_RDWR, &x, 0);
        expect_error(&x, ERROR_LIMITS_EXCEEDED, "second distinct device of lmtest1, cap 1");
        expect_not_attached(p2, "an Attach past the cap");
        detach_all_of(c, U1, &a, 1);
        user_attach(c, U1, p2, O_RDWR, &b, 0);
        expect_ok(&b, "lmtest1 after detaching its device");
        detach_all_of(c, U1, &b, 1);
}

/* ------------------------------------------------------------------------------------------ */

#define T(f) cmocka_unit_test_setup_teardown(f, test_setup, test_teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_polkit_questions),
                T(test_attach_own_file),
                T(test_cannot_attach_unreadable),
                T(test_readonly_fd),
                T(test_attach_path),
                T(test_other_users_device),
                T(test_owner_manages_own_device),
                T(test_all_references),
                T(test_interaction_required),
                T(test_defaults_challenge),
                T(test_polkitd_stopped),
                T(test_cap_environment),
                T(test_cap_option),
        };
        const char *reason;

        if (env_skip_reason(&reason)) {
                printf("skipping: %s\n", reason);
                return 77;
        }
        /* The default daemon must have the default cap. */
        (void) unsetenv("LOOPMGR_MAX_DEVICES_PER_USER");

        const char *filter = getenv("LOOPMGR_TEST_FILTER");
        if (filter && *filter)
                cmocka_set_test_filter(filter);
        filter = getenv("LOOPMGR_TEST_SKIP");
        if (filter && *filter)
                cmocka_set_skip_filter(filter);

        int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
        if (group_failed && failed == 0)
                failed = 1;
        if (failed) {
                /* A failed assertion longjmps past the test's cleanup handlers, so LeakSanitizer
                 * would add its own (meaningless) report; the failure is reported already. */
                fflush(NULL);
                _exit(1);
        }
        return 0;
}
