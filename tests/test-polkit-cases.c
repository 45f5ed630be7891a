/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-polkit's tests: attaching as a user, other users' devices, interaction, the
 * defaults, polkitd stopped, the per-user cap. */

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
/* Tests */

/* What the daemon asks polkit, seen on the bus: a user's request is checked for the user's own
 * connection (subject system-bus-name) with the action of the method and the message's
 * interaction flag (unless auth.no_user_interaction); requests on a device the caller holds a
 * reference on are not checked; root is never asked, whatever it does. (polkit itself always
 * says yes for uid 0, so only the bus shows whether root was asked.) */
void test_polkit_questions(void **state) {
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
void test_attach_own_file(void **state) {
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
void test_cannot_attach_unreadable(void **state) {
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
void test_readonly_fd(void **state) {
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
void test_attach_path(void **state) {
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
void test_other_users_device(void **state) {
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
void test_owner_manages_own_device(void **state) {
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
void test_all_references(void **state) {
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
void test_interaction_required(void **state) {
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
void test_defaults_challenge(void **state) {
        Ctx *c = *state;
        Env *e = &c->e;
        _cleanup_free_ char *path = NULL, *path2 = NULL;
        _cleanup_attached_ Attached r1 = {};
        AgentReply x = {};

        no_rules(c,
                 EXPECTS({U1, "attach", VERDICT_CHALLENGE}, {U1, "attach-path", VERDICT_CHALLENGE},
                         {U1, "detach-others", VERDICT_CHALLENGE},
                         {U1, "open-device", VERDICT_CHALLENGE}));

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
        user_open_device(c, U1, r1.object, MODE_R, &x, 0);
        expect_error(&x, ERROR_INTERACTIVE, "OpenDevice of root's device, default policy");
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
void test_polkitd_stopped(void **state) {
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
void test_cap_environment(void **state) {
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
void test_cap_option(void **state) {
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
