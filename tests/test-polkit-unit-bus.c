/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-polkit-unit's helpers: the private bus, the fake polkit authority, the daemon side,
 * replies and conditions, the context, calls. */

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
#include "test-polkit-unit.h"

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

int start_bus(PrivateBus *b, unsigned max_replies) {
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

void stop_bus(PrivateBus *b) {
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

sd_bus *connect_bus(Ctx *c) {
        sd_bus *bus = NULL;

        assert_true(sd_bus_new(&bus) >= 0);
        assert_true(sd_bus_set_address(bus, c->address) >= 0);
        assert_true(sd_bus_set_bus_client(bus, true) >= 0);
        assert_true(sd_bus_start(bus) >= 0);
        assert_true(sd_bus_attach_event(bus, c->event, SD_EVENT_PRIORITY_NORMAL) >= 0);
        return bus;
}

void run_until(Ctx *c, bool (*cond)(Ctx *c, void *data), void *data) {
        for (int i = 0; i < 1000; i++) {
                if (cond(c, data))
                        return;
                assert_true(sd_event_run(c->event, 10 * 1000) >= 0);
        }
        fail_msg("condition not reached in time");
}

void run_for(Ctx *c, unsigned msec) {
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

void fake_start(Ctx *c, FakeMode mode) {
        c->fake.mode = mode;
        c->fake.bus = connect_bus(c);
        assert_int_equal(sd_bus_add_object_vtable(
                                 c->fake.bus, NULL, "/org/freedesktop/PolicyKit1/Authority",
                                 "org.freedesktop.PolicyKit1.Authority", fake_vtable, &c->fake),
                         0);
        assert_true(sd_bus_request_name(c->fake.bus, "org.freedesktop.PolicyKit1", 0) >= 0);
}

void fake_release_all(Ctx *c, FakeMode mode) {
        for (size_t i = 0; i < c->fake.n_held; i++) {
                assert_true(fake_answer(c->fake.held[i], mode) >= 0);
                c->fake.held[i] = sd_bus_message_unref(c->fake.held[i]);
        }
        c->fake.n_held = 0;
}

const char *fake_detail(Fake *f, const char *key) {
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

void reply_done(Reply *rep) {
        free(rep->error_name);
        free(rep->error_message);
        *rep = (Reply){};
}

bool cond_reply(Ctx *c, void *data) {
        return ((Reply *) data)->done;
}

bool cond_fake_calls(Ctx *c, void *data) {
        return c->fake.calls >= *(unsigned *) data;
}

bool cond_no_pending(Ctx *c, void *data) {
        return polkit_registry_n_pending(c->reg, NULL) == 0;
}

Ctx *ctx_new(const char *address) {
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

void ctx_free(Ctx *c) {
        c->reg = polkit_registry_free(c->reg);
        for (size_t i = 0; i < c->fake.n_held; i++)
                sd_bus_message_unref(c->fake.held[i]);
        fake_forget(&c->fake);
        sd_bus_flush_close_unref(c->fake.bus);
        sd_bus_flush_close_unref(c->daemon);
        sd_event_unref(c->event);
        free(c);
}

void call(sd_bus *client, const char *action, uint32_t uid, bool nui, Reply *rep) {
        assert_true(sd_bus_call_method_async(client, NULL, "org.loopmgr.Test", TEST_PATH,
                                             TEST_IFACE, "Check", on_reply, rep, "sub", action, uid,
                                             (int) nui) >= 0);
}

void one_call(Ctx *c, FakeMode mode, bool interactive, bool nui, Reply *rep) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *client = NULL;

        if (!c->fake.bus)
                fake_start(c, mode);
        c->fake.mode = mode;
        client = connect_bus(c);
        assert_int_equal(sd_bus_set_allow_interactive_authorization(client, interactive), 0);
        call(client, POLKIT_ACTION_ATTACH, 1000, nui, rep);
        run_until(c, cond_reply, rep);
}
