/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-polkit-unit's tests: verdicts, flags, challenges, errors, an absent polkit, root, no
 * registry, timeouts, the limits, a vanished caller, detail escaping, registry defaults. */

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

/* ---- tests --------------------------------------------------------------------------------- */

void test_allowed(void **state) {
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

void test_interactive_flag(void **state) {
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

void test_challenge(void **state) {
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

void test_denied(void **state) {
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

void test_polkit_error(void **state) {
        Ctx *c = *state;
        Reply rep = {};

        one_call(c, FAKE_ERROR, false, false, &rep);
        assert_string_equal(rep.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_non_null(strstr(rep.error_message, "is not registered"));
        reply_done(&rep);
}

void test_polkit_absent(void **state) {
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

void test_root_not_asked(void **state) {
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

void test_no_registry(void **state) {
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

void test_timeout(void **state) {
        Ctx *c = *state;
        Reply rep = {};

        polkit_registry_set_timeouts(c->reg, 200 * 1000, 200 * 1000);
        one_call(c, FAKE_HOLD, false, false, &rep);
        assert_string_equal(rep.error_name, SD_BUS_ERROR_ACCESS_DENIED);
        assert_non_null(strstr(rep.error_message, "did not answer in time"));
        assert_int_equal(polkit_registry_n_pending(c->reg, NULL), 0);
        reply_done(&rep);
}

void test_limit_per_connection(void **state) {
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

void test_limit_total(void **state) {
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
void test_bus_limit(void **state) {
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

void test_caller_vanishes(void **state) {
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

void test_detail_escape(void **state) {
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

void test_registry_defaults(void **state) {
        _cleanup_(polkit_registry_freep) PolkitRegistry *reg = NULL;

        assert_int_equal(polkit_registry_get_max_devices_per_user(NULL), 64);
        assert_int_equal(polkit_registry_new(&reg), 0);
        assert_int_equal(polkit_registry_get_max_devices_per_user(reg), 64);
        polkit_registry_set_max_devices_per_user(reg, 3);
        assert_int_equal(polkit_registry_get_max_devices_per_user(reg), 3);
        assert_int_equal(polkit_registry_n_pending(reg, NULL), 0);
        assert_int_equal(polkit_registry_n_pending(reg, ":1.1"), 0);
}
