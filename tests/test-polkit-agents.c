/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-polkit's helpers for the agents (the unprivileged users' callers), polkit's
 * answers and the bus monitor that sees every CheckAuthorization call. */

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
#include "test-polkit.h"

/* ------------------------------------------------------------------------------------------ */
/* What the tests ask the agents (polkit-util.h) to do. */

void copy_string(char *dst, size_t size, const char *src) {
        size_t n = src ? strnlen(src, size - 1) : 0;
        if (n > 0)
                memcpy(dst, src, n);
        dst[n] = 0;
}

void agent_call(Ctx *c, unsigned who, AgentOp op, const char *target, int arg, bool interactive,
                AgentReply *ret, unsigned n_options, ...) {
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
        case OP_OPEN_DEVICE: {
                static const char *const modes[] = {
                        [MODE_R] = "r", [MODE_RW] = "rw", [MODE_BAD] = "w"};
                pk_request_call(&q, target, LOOPMGR_DEVICE_INTERFACE, "OpenDevice");
                assert_true(arg >= 0 && (size_t) arg < ELEMENTSOF(modes));
                r = pk_request_arg(&q, 's', 0, modes[arg]);
                break;
        }
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

        int fd = -EBADF;
        r = pk_agent_call_fd(a, &q, &p, AGENT_TIMEOUT_MSEC, &fd);
        if (r < 0)
                fail_msg("no reply from the agent for %s: %s", user_names[who], strerror(-r));

        *ret = (AgentReply){.r = p.r, .open_errno = p.open_errno, .called = p.called, .fd = fd};
        /* Closed by the cleanup should the test fail while it holds it. */
        if (fd >= 0 && env_hold_fd(&c->e, fd) < 0)
                fail_msg("out of memory holding the fd of a reply");
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

const char *reply_error(const AgentReply *p) {
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

void expect_ok_impl(const AgentReply *p, const char *what, const char *file, int line) {
        if (p->r >= 0)
                return;
        print_error("%s:%d: %s failed: %s\n", file, line, what, reply_error(p));
        _fail(file, line);
}

void expect_error_impl(const AgentReply *p, const char *name, const char *what, const char *file,
                       int line) {
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

void expect_state_impl(const AgentReply *p, const char *state, const char *what, const char *file,
                       int line) {
        expect_ok_impl(p, what, file, line);
        if (!streq(p->state, state)) {
                print_error("%s:%d: %s returned '%s', expected '%s'\n", file, line, what, p->state,
                            state);
                _fail(file, line);
        }
}

/* ------------------------------------------------------------------------------------------ */
/* polkit */

const char *subject_name(Ctx *c, unsigned who) {
        const char *name = NULL;
        if (who == ROOT) {
                assert_true(sd_bus_get_unique_name(c->e.bus, &name) >= 0);
                return name;
        }
        if (!c->agents[who].unique_name)
                fail_msg("the agent for %s is not running", user_names[who]);
        return c->agents[who].unique_name;
}

void await_verdicts(Ctx *c, const Expect *x, size_t n) {
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

void set_rules_impl(Ctx *c, const char *const *rules, const Expect *x, size_t n) {
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

void no_rules(Ctx *c, const Expect *x, size_t n) {
        pk_rules_remove(RULES_FILE);
        await_verdicts(c, x, n);
}

/* ------------------------------------------------------------------------------------------ */
/* What the daemon asks polkit: a bus monitor sees every CheckAuthorization call. */

void polkit_calls_free(PolkitCall *l, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(l[i].kind);
                free(l[i].subject);
                free(l[i].action);
        }
        free(l);
}

void monitor_stop(Ctx *c) {
        c->monitor = sd_bus_flush_close_unref(c->monitor);
}

void monitor_start(Ctx *c) {
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

int read_polkit_call(sd_bus_message *m, PolkitCall *ret) {
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

void monitor_collect(Ctx *c, PolkitCall **ret, size_t *ret_n) {
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

void expect_asked_impl(Ctx *c, unsigned who, const char *action, uint32_t flags, const char *what,
                       const char *file, int line) {
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
