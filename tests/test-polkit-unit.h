/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-polkit-unit share: the private bus, the fake authority, the context
 * and its calls, and its tests. */

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

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

/* Starts a dbus-daemon; max_replies is its cap on calls one connection may have waiting. */
int start_bus(PrivateBus *b, unsigned max_replies);

void stop_bus(PrivateBus *b);
sd_bus *connect_bus(Ctx *c);

/* Runs the loop until cond(c, data) holds; fails the test after 10 s. */
void run_until(Ctx *c, bool (*cond)(Ctx *c, void *data), void *data);

/* Runs the loop for a while (lets idle sources and late messages through). */
void run_for(Ctx *c, unsigned msec);
void fake_start(Ctx *c, FakeMode mode);
void fake_release_all(Ctx *c, FakeMode mode);
const char *fake_detail(Fake *f, const char *key);
void reply_done(Reply *rep);
bool cond_reply(Ctx *c, void *data);
bool cond_fake_calls(Ctx *c, void *data);
bool cond_no_pending(Ctx *c, void *data);
Ctx *ctx_new(const char *address);
void ctx_free(Ctx *c);

/* Calls the test method from `client`; the reply lands in *rep. */
void call(sd_bus *client, const char *action, uint32_t uid, bool nui, Reply *rep);

/* One call from a fresh client with the fake in `mode`; returns the reply. */
void one_call(Ctx *c, FakeMode mode, bool interactive, bool nui, Reply *rep);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_allowed(void **state);
void test_interactive_flag(void **state);
void test_challenge(void **state);
void test_denied(void **state);
void test_polkit_error(void **state);
void test_polkit_absent(void **state);
void test_root_not_asked(void **state);
void test_no_registry(void **state);
void test_timeout(void **state);
void test_limit_per_connection(void **state);
void test_limit_total(void **state);
void test_bus_limit(void **state);
void test_caller_vanishes(void **state);
void test_detail_escape(void **state);
void test_registry_defaults(void **state);
