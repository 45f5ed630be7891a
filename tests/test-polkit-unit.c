/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * polkit.c against a scripted polkit authority: a private dbus-daemon (needs no root), a
 * "daemon" connection whose test method asks polkit_verify_async(), a fake
 * org.freedesktop.PolicyKit1 that answers as each test tells it (or not at all), and callers.
 * Checks what polkit is sent (subject, action, details, flags), that the request runs again
 * after the answer, every verdict's error name, the limits on pending queries, timeouts, and
 * that a vanished caller's queries are dropped. Skips (77) without dbus-daemon.
 */

#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
#include <time.h>

#include <cmocka.h>

#include "polkit.h"
#include "util.h"

#define DBUS_DAEMON     "/usr/bin/dbus-daemon"
#define TEST_PATH       "/org/loopmgr/Test"
#define TEST_IFACE      "org.loopmgr.Test"
#define PK_ERROR_FAILED "org.freedesktop.PolicyKit1.Error.Failed"

typedef struct PrivateBus {
        char dir[64];
        char address[PATH_MAX + 16];
        pid_t pid;
} PrivateBus;

/* Shared by the tests; test_bus_limit starts one with a small limit of its own. */
static PrivateBus main_bus = {.pid = -1};

typedef enum FakeMode {
        FAKE_ALLOW,
        FAKE_DENY,
        FAKE_DISMISS,
        FAKE_CHALLENGE,
        FAKE_ERROR,
        FAKE_HOLD, /* keep the call; the test answers it (or never does) */
} FakeMode;

typedef struct Fake {
        sd_bus *bus;
        FakeMode mode;
        unsigned calls;
        char *subject_kind, *subject_name, *action;
        char **details; /* key, value, ... as received */
        uint32_t flags;
        sd_bus_message *held[512];
        size_t n_held;
} Fake;

typedef struct Reply {
        bool done;
        char *error_name; /* NULL: success */
        char *error_message;
} Reply;

typedef struct Ctx {
        const char *address; /* of the private bus */
        sd_event *event;
        sd_bus *daemon;
        PolkitRegistry *reg;
        bool use_registry;
        unsigned runs; /* how often the test method ran */
        Fake fake;
} Ctx;

/* ---- the private bus ------------------------------------------------------------------- */

static bool socket_ready(const char *path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        _cleanup_close_ int fd = -EBADF;

        if (strlen(path) >= sizeof(sa.sun_path))
                return false;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return false;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        return connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0;
}

/* Starts a dbus-daemon; max_replies is its cap on calls one connection may have waiting. */
static int start_bus(PrivateBus *b, unsigned max_replies) {
        char conf[PATH_MAX], sock[PATH_MAX];
        FILE *f;

        strcpy(b->dir, "/tmp/test-polkit-unit.XXXXXX");
        if (!mkdtemp(b->dir))
                return -errno;
        (void) snprintf(conf, sizeof(conf), "%s/bus.conf", b->dir);
        (void) snprintf(sock, sizeof(sock), "%s/socket", b->dir);
        (void) snprintf(b->address, sizeof(b->address), "unix:path=%s", sock);

        f = fopen(conf, "we");
        if (!f)
                return -errno;
        /* The limits of a system bus, but for max_replies_per_connection (128 there). */
        fprintf(f,
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration "
                "1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig>\n"
                "  <type>custom</type>\n"
                "  <listen>unix:path=%s</listen>\n"
                "  <auth>EXTERNAL</auth>\n"
                "  <policy context=\"default\">\n"
                "    <allow send_destination=\"*\" eavesdrop=\"true\"/>\n"
                "    <allow eavesdrop=\"true\"/>\n"
                "    <allow own=\"*\"/>\n"
                "  </policy>\n"
                "  <limit name=\"max_replies_per_connection\">%u</limit>\n"
                "</busconfig>\n",
                sock, max_replies);
        if (fclose(f) != 0)
                return -errno;

        b->pid = fork();
        if (b->pid < 0)
                return -errno;
        if (b->pid == 0) {
                int null = open("/dev/null", O_RDWR | O_CLOEXEC);
                /* Our stderr, for saying why the exec failed. */
                int saved_stderr = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);

                /* Quiet: it complains about rlimits it may not raise when not root. */
                if (null >= 0) {
                        (void) dup2(null, STDIN_FILENO);
                        (void) dup2(null, STDOUT_FILENO);
                        (void) dup2(null, STDERR_FILENO);
                }
                execl(DBUS_DAEMON, DBUS_DAEMON, "--nofork", "--nopidfile", "--nosyslog",
                      "--config-file", conf, (char *) NULL);
                if (saved_stderr >= 0)
                        dprintf(saved_stderr, "test-polkit-unit: cannot execute %s: %m\n",
                                DBUS_DAEMON);
                _exit(127);
        }

        for (int i = 0; i < 500; i++) {
                if (socket_ready(sock))
                        return 0;
                if (waitpid(b->pid, NULL, WNOHANG) == b->pid) {
                        b->pid = -1;
                        return -ECHILD;
                }
                (void) nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
        }
        return -ETIMEDOUT;
}

static void stop_bus(PrivateBus *b) {
        char path[PATH_MAX];

        if (b->pid > 0) {
                (void) kill(b->pid, SIGTERM);
                (void) waitpid(b->pid, NULL, 0);
                b->pid = -1;
        }
        if (!b->dir[0])
                return;
        (void) snprintf(path, sizeof(path), "%s/bus.conf", b->dir);
        (void) unlink(path);
        (void) snprintf(path, sizeof(path), "%s/socket", b->dir);
        (void) unlink(path);
        (void) rmdir(b->dir);
        b->dir[0] = 0;
}

static sd_bus *connect_bus(Ctx *c) {
        sd_bus *bus = NULL;

        assert_true(sd_bus_new(&bus) >= 0);
        assert_true(sd_bus_set_address(bus, c->address) >= 0);
        assert_true(sd_bus_set_bus_client(bus, true) >= 0);
        assert_true(sd_bus_start(bus) >= 0);
        assert_true(sd_bus_attach_event(bus, c->event, SD_EVENT_PRIORITY_NORMAL) >= 0);
        return bus;
}

/* Runs the loop until cond(c, data) holds; fails the test after 10 s. */
static void run_until(Ctx *c, bool (*cond)(Ctx *c, void *data), void *data) {
        for (int i = 0; i < 1000; i++) {
                if (cond(c, data))
                        return;
                assert_true(sd_event_run(c->event, 10 * 1000) >= 0);
        }
        fail_msg("condition not reached in time");
}

/* Runs the loop for a while (lets idle sources and late messages through). */
static void run_for(Ctx *c, unsigned msec) {
        for (unsigned i = 0; i < msec / 5; i++)
                assert_true(sd_event_run(c->event, 5 * 1000) >= 0);
}

/* ---- the fake polkit authority ------------------------------------------------------- */

static void fake_forget(Fake *f) {
        free(f->subject_kind);
        free(f->subject_name);
        free(f->action);
        strv_free(f->details);
        f->subject_kind = f->subject_name = f->action = NULL;
        f->details = NULL;
}

static int fake_answer(sd_bus_message *call, FakeMode mode) {
        switch (mode) {
        case FAKE_ALLOW:
                return sd_bus_reply_method_return(call, "(bba{ss})", 1, 0, 0);
        case FAKE_DENY:
                return sd_bus_reply_method_return(call, "(bba{ss})", 0, 0, 0);
        case FAKE_DISMISS:
                return sd_bus_reply_method_return(call, "(bba{ss})", 0, 0, 1, "polkit.dismissed",
                                                  "true");
        case FAKE_CHALLENGE:
                return sd_bus_reply_method_return(call, "(bba{ss})", 0, 1, 0);
        case FAKE_ERROR:
        default:
                return sd_bus_reply_method_errorf(call, PK_ERROR_FAILED,
                                                  "Action org.loopmgr.nope is not registered");
        }
}

static int fake_check_authorization(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Fake *f = userdata;
        const char *kind, *key, *action, *value, *cancel;
        size_t n = 0;
        int r;

        fake_forget(f);
        f->calls++;

        assert_int_equal(sd_bus_message_enter_container(m, 'r', "sa{sv}"), 1);
        assert_int_equal(sd_bus_message_read(m, "s", &kind), 1);
        f->subject_kind = strdup(kind);
        assert_int_equal(sd_bus_message_enter_container(m, 'a', "{sv}"), 1);
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                assert_int_equal(sd_bus_message_read(m, "s", &key), 1);
                if (streq(key, "name")) {
                        assert_int_equal(sd_bus_message_read(m, "v", "s", &value), 1);
                        f->subject_name = strdup(value);
                } else
                        assert_true(sd_bus_message_skip(m, "v") >= 0);
                assert_true(sd_bus_message_exit_container(m) >= 0);
        }
        assert_int_equal(r, 0);
        assert_true(sd_bus_message_exit_container(m) >= 0);
        assert_true(sd_bus_message_exit_container(m) >= 0);

        assert_int_equal(sd_bus_message_read(m, "s", &action), 1);
        f->action = strdup(action);
        f->details = calloc(1, sizeof(char *));
        assert_int_equal(sd_bus_message_enter_container(m, 'a', "{ss}"), 1);
        while ((r = sd_bus_message_read(m, "{ss}", &key, &value)) > 0) {
                f->details = realloc(f->details, (n + 3) * sizeof(char *));
                f->details[n++] = strdup(key);
                f->details[n++] = strdup(value);
                f->details[n] = NULL;
        }
        assert_int_equal(r, 0);
        assert_true(sd_bus_message_exit_container(m) >= 0);
        assert_int_equal(sd_bus_message_read(m, "us", &f->flags, &cancel), 1);
        assert_string_equal(cancel, "");

        if (f->mode == FAKE_HOLD) {
                assert_true(f->n_held < ELEMENTSOF(f->held));
                f->held[f->n_held++] = sd_bus_message_ref(m);
                return 1;
        }
        r = fake_answer(m, f->mode);
        return r < 0 ? r : 1;
}

static const sd_bus_vtable fake_vtable[] = {SD_BUS_VTABLE_START(0),
                                            SD_BUS_METHOD("CheckAuthorization", "(sa{sv})sa{ss}us",
                                                          "(bba{ss})", fake_check_authorization,
                                                          SD_BUS_VTABLE_UNPRIVILEGED),
                                            SD_BUS_VTABLE_END};

static void fake_start(Ctx *c, FakeMode mode) {
        c->fake.mode = mode;
        c->fake.bus = connect_bus(c);
        assert_int_equal(sd_bus_add_object_vtable(
                                 c->fake.bus, NULL, "/org/freedesktop/PolicyKit1/Authority",
                                 "org.freedesktop.PolicyKit1.Authority", fake_vtable, &c->fake),
                         0);
        assert_true(sd_bus_request_name(c->fake.bus, "org.freedesktop.PolicyKit1", 0) >= 0);
}

static void fake_release_all(Ctx *c, FakeMode mode) {
        for (size_t i = 0; i < c->fake.n_held; i++) {
                assert_true(fake_answer(c->fake.held[i], mode) >= 0);
                c->fake.held[i] = sd_bus_message_unref(c->fake.held[i]);
        }
        c->fake.n_held = 0;
}

static const char *fake_detail(Fake *f, const char *key) {
        for (char **i = f->details; i && i[0]; i += 2)
                if (streq(i[0], key))
                        return i[1];
        return NULL;
}

/* ---- the "daemon" under test ------------------------------------------------------------ */

static int method_check(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Ctx *c = userdata;
        const char *action;
        uint32_t uid;
        int nui, r;

        c->runs++;
        r = sd_bus_message_read(m, "sub", &action, &uid, &nui);
        if (r < 0)
                return r;
        r = polkit_verify_async(c->use_registry ? c->reg : NULL, m, uid, action, "do the test",
                                (char *[]){"file",
                                           "/srv/\xff"
                                           "a\\b.img",
                                           "device", "/dev/loop7", NULL},
                                nui, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1; /* polkit asked; runs again when it answers */
        return sd_bus_reply_method_return(m, "s", "done");
}

static const sd_bus_vtable test_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("Check", "sub", "s", method_check, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END};

static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Reply *rep = userdata;
        const char *s;

        rep->done = true;
        if (sd_bus_message_is_method_error(m, NULL)) {
                rep->error_name = strdup(sd_bus_message_get_error(m)->name);
                rep->error_message = strdup(sd_bus_message_get_error(m)->message ?: "");
                return 0;
        }
        assert_int_equal(sd_bus_message_read(m, "s", &s), 1);
        assert_string_equal(s, "done");
        return 0;
}

static void reply_done(Reply *rep) {
        free(rep->error_name);
        free(rep->error_message);
        *rep = (Reply){};
}

static bool cond_reply(Ctx *c, void *data) {
        return ((Reply *) data)->done;
}

static bool cond_fake_calls(Ctx *c, void *data) {
        return c->fake.calls >= *(unsigned *) data;
}

static bool cond_no_pending(Ctx *c, void *data) {
        return polkit_registry_n_pending(c->reg, NULL) == 0;
}

static Ctx *ctx_new(const char *address) {
        Ctx *c = calloc(1, sizeof(Ctx));

        assert_non_null(c);
        c->address = address;
        assert_int_equal(sd_event_new(&c->event), 0);
        assert_int_equal(polkit_registry_new(&c->reg), 0);
        c->use_registry = true;
        c->daemon = connect_bus(c);
        assert_int_equal(
                sd_bus_add_object_vtable(c->daemon, NULL, TEST_PATH, TEST_IFACE, test_vtable, c),
                0);
        assert_true(sd_bus_request_name(c->daemon, "org.loopmgr.Test", 0) >= 0);
        return c;
}

static void ctx_free(Ctx *c) {
        c->reg = polkit_registry_free(c->reg);
        for (size_t i = 0; i < c->fake.n_held; i++)
                sd_bus_message_unref(c->fake.held[i]);
        fake_forget(&c->fake);
        sd_bus_flush_close_unref(c->fake.bus);
        sd_bus_flush_close_unref(c->daemon);
        sd_event_unref(c->event);
        free(c);
}

static int setup(void **state) {
        *state = ctx_new(main_bus.address);
        return 0;
}

static int teardown(void **state) {
        ctx_free(*state);
        return 0;
}

/* Calls the test method from `client`; the reply lands in *rep. */
static void call(sd_bus *client, const char *action, uint32_t uid, bool nui, Reply *rep) {
        assert_true(sd_bus_call_method_async(client, NULL, "org.loopmgr.Test", TEST_PATH,
                                             TEST_IFACE, "Check", on_reply, rep, "sub", action, uid,
                                             (int) nui) >= 0);
}

/* One call from a fresh client with the fake in `mode`; returns the reply. */
static void one_call(Ctx *c, FakeMode mode, bool interactive, bool nui, Reply *rep) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *client = NULL;

        if (!c->fake.bus)
                fake_start(c, mode);
        c->fake.mode = mode;
        client = connect_bus(c);
        assert_int_equal(sd_bus_set_allow_interactive_authorization(client, interactive), 0);
        call(client, POLKIT_ACTION_ATTACH, 1000, nui, rep);
        run_until(c, cond_reply, rep);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_allowed(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *client = NULL;
        Ctx *c = *state;
        Reply rep = {};
        const char *unique;

        fake_start(c, FAKE_ALLOW);
        client = connect_bus(c);
        assert_int_equal(sd_bus_get_unique_name(client, &unique), 0);
        call(client, POLKIT_ACTION_ATTACH, 1000, false, &rep);
        run_until(c, cond_reply, &rep);

        assert_null(rep.error_name);
        /* Asked once, and the request ran twice: once to ask, once with the verdict. */
        assert_int_equal(c->fake.calls, 1);
        assert_int_equal(c->runs, 2);
        assert_string_equal(c->fake.subject_kind, "system-bus-name");
        assert_string_equal(c->fake.subject_name, unique);
        assert_string_equal(c->fake.action, POLKIT_ACTION_ATTACH);
        assert_int_equal(c->fake.flags, 0);
        assert_string_equal(fake_detail(&c->fake, "device"), "/dev/loop7");
        /* Not UTF-8: escaped, so the call to polkit is a valid D-Bus message. */
        assert_string_equal(fake_detail(&c->fake, "file"), "/srv/\\xffa\\\\b.img");
        assert_int_equal(polkit_registry_n_pending(c->reg, NULL), 0);
        reply_done(&rep);

        /* A second request is a new question: verdicts belong to one message. */
        call(client, POLKIT_ACTION_ATTACH, 1000, false, &rep);
        run_until(c, cond_reply, &rep);
        assert_null(rep.error_name);
        assert_int_equal(c->fake.calls, 2);
        reply_done(&rep);
}

static void test_interactive_flag(void **state) {
        Ctx *c = *state;
        Reply rep = {};

        one_call(c, FAKE_ALLOW, true, false, &rep);
        assert_null(rep.error_name);
        assert_int_equal(c->fake.flags, 1);
        reply_done(&rep);

        /* auth.no_user_interaction=true wins over the header flag. */
        one_call(c, FAKE_ALLOW, true, true, &rep);
        assert_null(rep.error_name);
        assert_int_equal(c->fake.flags, 0);
        reply_done(&rep);

        one_call(c, FAKE_ALLOW, false, false, &rep);
        assert_int_equal(c->fake.flags, 0);
        reply_done(&rep);
}

static void test_challenge(void **state) {
        Ctx *c = *state;
        Reply rep = {};

        one_call(c, FAKE_CHALLENGE, false, false, &rep);
        assert_string_equal(rep.error_name, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED);
        assert_non_null(strstr(rep.error_message, "does not allow interactive"));
        assert_non_null(strstr(rep.error_message, POLKIT_ACTION_ATTACH));
        reply_done(&rep);

        /* Interaction allowed, still a challenge: polkit found no agent to ask. */
        one_call(c, FAKE_CHALLENGE, true, false, &rep);
        assert_string_equal(rep.error_name, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED);
        assert_non_null(strstr(rep.error_message, "no polkit authentication agent"));
        reply_done(&rep);
}

static void test_denied(void **state) {
        Ctx *c = *state;
        Reply rep = {};

        one_call(c, FAKE_DENY, false, false, &rep);
        assert_string_equal(rep.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_string_equal(rep.error_message,
                            "Not authorised to do the test (polkit action org.loopmgr.attach).");
        assert_int_equal(c->runs, 2);
        reply_done(&rep);

        one_call(c, FAKE_DISMISS, true, false, &rep);
        assert_string_equal(rep.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_non_null(strstr(rep.error_message, "dismissed"));
        reply_done(&rep);
}

static void test_polkit_error(void **state) {
        Ctx *c = *state;
        Reply rep = {};

        one_call(c, FAKE_ERROR, false, false, &rep);
        assert_string_equal(rep.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_non_null(strstr(rep.error_message, "is not registered"));
        reply_done(&rep);
}

static void test_polkit_absent(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *client = NULL;
        Ctx *c = *state;
        Reply rep = {};

        client = connect_bus(c);
        call(client, POLKIT_ACTION_DETACH_OTHERS, 1000, false, &rep);
        run_until(c, cond_reply, &rep);
        assert_string_equal(rep.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_string_equal(rep.error_message,
                            "polkit is not running, so only root may do the test "
                            "(polkit action org.loopmgr.detach-others).");
        reply_done(&rep);

        /* Root is never asked, polkit or not. */
        call(client, POLKIT_ACTION_DETACH_OTHERS, 0, false, &rep);
        run_until(c, cond_reply, &rep);
        assert_null(rep.error_name);
        reply_done(&rep);
}

static void test_root_not_asked(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *client = NULL;
        Ctx *c = *state;
        Reply rep = {};

        fake_start(c, FAKE_DENY);
        client = connect_bus(c);
        call(client, POLKIT_ACTION_ATTACH_PATH, 0, false, &rep);
        run_until(c, cond_reply, &rep);
        assert_null(rep.error_name);
        assert_int_equal(c->fake.calls, 0);
        assert_int_equal(c->runs, 1);
        reply_done(&rep);
}

static void test_no_registry(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *client = NULL;
        Ctx *c = *state;
        Reply rep = {};

        fake_start(c, FAKE_ALLOW);
        c->use_registry = false;
        client = connect_bus(c);
        call(client, POLKIT_ACTION_ATTACH, 1000, false, &rep);
        run_until(c, cond_reply, &rep);
        assert_string_equal(rep.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_non_null(strstr(rep.error_message, "only root"));
        assert_int_equal(c->fake.calls, 0);
        reply_done(&rep);
}

static void test_timeout(void **state) {
        Ctx *c = *state;
        Reply rep = {};

        polkit_registry_set_timeouts(c->reg, 200 * 1000, 200 * 1000);
        one_call(c, FAKE_HOLD, false, false, &rep);
        assert_string_equal(rep.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_non_null(strstr(rep.error_message, "did not answer in time"));
        assert_int_equal(polkit_registry_n_pending(c->reg, NULL), 0);
        reply_done(&rep);
}

static void test_limit_per_connection(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *client = NULL, *other = NULL;
        Reply reps[POLKIT_PENDING_MAX_PER_CONNECTION + 1] = {}, rep = {};
        Ctx *c = *state;
        unsigned want = POLKIT_PENDING_MAX_PER_CONNECTION;
        const char *unique;

        fake_start(c, FAKE_HOLD);
        client = connect_bus(c);
        assert_int_equal(sd_bus_get_unique_name(client, &unique), 0);
        for (size_t i = 0; i < ELEMENTSOF(reps); i++)
                call(client, POLKIT_ACTION_ATTACH, 1000, false, &reps[i]);

        /* The one beyond the cap is refused at once; polkit never hears of it. */
        run_until(c, cond_reply, &reps[POLKIT_PENDING_MAX_PER_CONNECTION]);
        assert_string_equal(reps[POLKIT_PENDING_MAX_PER_CONNECTION].error_name,
                            SD_BUS_ERROR_LIMITS_EXCEEDED);
        run_until(c, cond_fake_calls, &want);
        run_for(c, 50);
        assert_int_equal(c->fake.calls, POLKIT_PENDING_MAX_PER_CONNECTION);
        assert_int_equal(polkit_registry_n_pending(c->reg, unique),
                         POLKIT_PENDING_MAX_PER_CONNECTION);

        /* Another connection has its own allowance. */
        other = connect_bus(c);
        call(other, POLKIT_ACTION_ATTACH, 1000, false, &rep);
        want++;
        run_until(c, cond_fake_calls, &want);
        assert_false(rep.done);

        fake_release_all(c, FAKE_ALLOW);
        for (size_t i = 0; i < POLKIT_PENDING_MAX_PER_CONNECTION; i++) {
                run_until(c, cond_reply, &reps[i]);
                assert_null(reps[i].error_name);
        }
        run_until(c, cond_reply, &rep);
        assert_null(rep.error_name);
        assert_int_equal(polkit_registry_n_pending(c->reg, NULL), 0);
        for (size_t i = 0; i < ELEMENTSOF(reps); i++)
                reply_done(&reps[i]);
        reply_done(&rep);
}

static void test_limit_total(void **state) {
        enum { N_CLIENTS = POLKIT_PENDING_MAX / POLKIT_PENDING_MAX_PER_CONNECTION };
        sd_bus *clients[N_CLIENTS + 1] = {};
        Reply *reps, extra = {};
        Ctx *c = *state;
        unsigned want = POLKIT_PENDING_MAX;

        reps = calloc(POLKIT_PENDING_MAX, sizeof(Reply));
        assert_non_null(reps);
        fake_start(c, FAKE_HOLD);
        for (size_t i = 0; i < N_CLIENTS; i++) {
                clients[i] = connect_bus(c);
                for (size_t j = 0; j < POLKIT_PENDING_MAX_PER_CONNECTION; j++)
                        call(clients[i], POLKIT_ACTION_ATTACH, 1000, false,
                             &reps[i * POLKIT_PENDING_MAX_PER_CONNECTION + j]);
        }
        run_until(c, cond_fake_calls, &want);
        assert_int_equal(polkit_registry_n_pending(c->reg, NULL), POLKIT_PENDING_MAX);

        clients[N_CLIENTS] = connect_bus(c);
        call(clients[N_CLIENTS], POLKIT_ACTION_ATTACH, 1000, false, &extra);
        run_until(c, cond_reply, &extra);
        assert_string_equal(extra.error_name, SD_BUS_ERROR_LIMITS_EXCEEDED);

        fake_release_all(c, FAKE_DENY);
        for (size_t i = 0; i < POLKIT_PENDING_MAX; i++) {
                run_until(c, cond_reply, &reps[i]);
                assert_string_equal(reps[i].error_name, SD_BUS_ERROR_ACCESS_DENIED);
                reply_done(&reps[i]);
        }
        reply_done(&extra);
        free(reps);
        for (size_t i = 0; i <= N_CLIENTS; i++)
                sd_bus_flush_close_unref(clients[i]);
}

/* The bus refusing our call to polkit (dbus-daemon's max_replies_per_connection, 128 on a
 * system bus) is a limit too, not a polkit failure. */
static void test_bus_limit(void **state) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *client = NULL, *other = NULL;
        PrivateBus small = {.pid = -1};
        Reply reps[4] = {}, rep = {};
        unsigned want = ELEMENTSOF(reps);
        Ctx *c;

        assert_int_equal(start_bus(&small, ELEMENTSOF(reps)), 0);
        c = ctx_new(small.address);
        fake_start(c, FAKE_HOLD);
        client = connect_bus(c);
        for (size_t i = 0; i < ELEMENTSOF(reps); i++)
                call(client, POLKIT_ACTION_ATTACH, 1000, false, &reps[i]);
        run_until(c, cond_fake_calls, &want);

        other = connect_bus(c);
        call(other, POLKIT_ACTION_ATTACH, 1000, false, &rep);
        run_until(c, cond_reply, &rep);
        assert_string_equal(rep.error_name, SD_BUS_ERROR_LIMITS_EXCEEDED);
        assert_non_null(strstr(rep.error_message, "message bus refused"));
        reply_done(&rep);

        fake_release_all(c, FAKE_ALLOW);
        for (size_t i = 0; i < ELEMENTSOF(reps); i++) {
                run_until(c, cond_reply, &reps[i]);
                assert_null(reps[i].error_name);
                reply_done(&reps[i]);
        }
        client = sd_bus_flush_close_unref(client);
        other = sd_bus_flush_close_unref(other);
        ctx_free(c);
        stop_bus(&small);
}

static void test_caller_vanishes(void **state) {
        Ctx *c = *state;
        Reply reps[3] = {};
        sd_bus *client;
        unsigned want = 3, runs;

        fake_start(c, FAKE_HOLD);
        client = connect_bus(c);
        for (size_t i = 0; i < ELEMENTSOF(reps); i++)
                call(client, POLKIT_ACTION_ATTACH, 1000, false, &reps[i]);
        run_until(c, cond_fake_calls, &want);
        assert_int_equal(polkit_registry_n_pending(c->reg, NULL), 3);
        runs = c->runs;

        /* Pending replies die with the connection: drop them before the slots go. */
        sd_bus_flush_close_unref(client);
        run_until(c, cond_no_pending, NULL);

        /* polkit's late answers are dropped; the requests do not run again. */
        fake_release_all(c, FAKE_ALLOW);
        run_for(c, 100);
        assert_int_equal(c->runs, runs);
}

static void test_detail_escape(void **state) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                {"", ""},
                {"/srv/plain.img", "/srv/plain.img"},
                {"/srv/caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x92\xbe",
                 "/srv/caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x92\xbe"},
                {"back\\slash", "back\\slash"}, /* valid: unchanged */
                {"bad\xff\\", "bad\\xff\\\\"},
                {"\xc3", "\\xc3"},                            /* truncated sequence */
                {"\xc0\xaf", "\\xc0\\xaf"},                   /* overlong '/' */
                {"\xe0\x80\xaf", "\\xe0\\x80\\xaf"},          /* overlong, 3 bytes */
                {"\xed\xa0\x80", "\\xed\\xa0\\x80"},          /* UTF-16 surrogate */
                {"\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"}, /* beyond U+10FFFF */
                {"\xef\xbf\xbe", "\\xef\\xbf\\xbe"},          /* U+FFFE */
                {"a\xe2\x82", "a\\xe2\\x82"},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *e = NULL;

                assert_int_equal(polkit_detail_escape(cases[i].in, &e), 0);
                assert_string_equal(e, cases[i].out);
        }
}

static void test_registry_defaults(void **state) {
        _cleanup_(polkit_registry_freep) PolkitRegistry *reg = NULL;

        assert_int_equal(polkit_registry_get_max_devices_per_user(NULL), 64);
        assert_int_equal(polkit_registry_new(&reg), 0);
        assert_int_equal(polkit_registry_get_max_devices_per_user(reg), 64);
        polkit_registry_set_max_devices_per_user(reg, 3);
        assert_int_equal(polkit_registry_get_max_devices_per_user(reg), 3);
        assert_int_equal(polkit_registry_n_pending(reg, NULL), 0);
        assert_int_equal(polkit_registry_n_pending(reg, ":1.1"), 0);
}

static int group_setup(void **state) {
        int r;

        if (access(DBUS_DAEMON, X_OK) < 0)
                return 0; /* main() skips */
        /* Above the 256 calls the total cap test keeps waiting on one connection. */
        r = start_bus(&main_bus, 1024);
        if (r < 0) {
                fprintf(stderr, "Cannot start a private dbus-daemon: %s\n", strerror(-r));
                return -1;
        }
        return 0;
}

static int group_teardown(void **state) {
        stop_bus(&main_bus);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_detail_escape),
                cmocka_unit_test(test_registry_defaults),
                cmocka_unit_test_setup_teardown(test_allowed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_interactive_flag, setup, teardown),
                cmocka_unit_test_setup_teardown(test_challenge, setup, teardown),
                cmocka_unit_test_setup_teardown(test_denied, setup, teardown),
                cmocka_unit_test_setup_teardown(test_polkit_error, setup, teardown),
                cmocka_unit_test_setup_teardown(test_polkit_absent, setup, teardown),
                cmocka_unit_test_setup_teardown(test_root_not_asked, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_registry, setup, teardown),
                cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
                cmocka_unit_test_setup_teardown(test_limit_per_connection, setup, teardown),
                cmocka_unit_test_setup_teardown(test_limit_total, setup, teardown),
                cmocka_unit_test_setup_teardown(test_caller_vanishes, setup, teardown),
                cmocka_unit_test(test_bus_limit),
        };

        if (access(DBUS_DAEMON, X_OK) < 0) {
                printf("SKIP: %s is not installed; these tests need a private bus.\n", DBUS_DAEMON);
                return 77;
        }
        (void) signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
