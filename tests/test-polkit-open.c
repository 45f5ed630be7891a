/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Device.OpenDevice (docs/API.md) as the test users: the owner and a reference holder get an fd
 * of the exact binding without asking, anybody else needs org.loopmgr.open-device; rw on a
 * read-only device and bad modes are refused; the fd holds the device open, so a Detach
 * meanwhile answers pending. The agents pass the fd of the reply back to the test (SCM_RIGHTS),
 * which checks it and reads and writes through it.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "polkit-util.h"
#include "test-polkit.h"

#ifndef BLKGETDISKSEQ
#define BLKGETDISKSEQ _IOR(0x12, 128, uint64_t)
#endif

#define MARK_IMAGE  "written into the image file before Attach\n"
#define MARK_DEVICE "written through the fd of OpenDevice\n"
#define MARK_OFFSET (1024 * 1024)

static void write_file_at(const char *path, off_t offset, const char *text) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || pwrite(fd, text, strlen(text), offset) != (ssize_t) strlen(text))
                fail_msg("writing %s: %s", path, strerror(errno));
}

static bool file_has_at(int fd, off_t offset, const char *text) {
        char buf[128] = "";
        size_t n = strlen(text);
        assert_true(n < sizeof(buf));
        return pread(fd, buf, n, offset) == (ssize_t) n && memcmp(buf, text, n) == 0;
}

/* x (a reply of OpenDevice) carries an fd of exactly dev's binding, opened with accmode, that
 * reads what the image holds. */
static void expect_device_fd_impl(const AgentReply *x, const AgentReply *dev, int accmode,
                                  const char *what, const char *file, int line) {
        struct stat st, node;
        uint64_t seq = 0;
        int flags;

        expect_ok_impl(x, what, file, line);
        if (x->fd < 0) {
                print_error("%s:%d: %s: the reply carries no fd\n", file, line, what);
                _fail(file, line);
        }
        flags = fcntl(x->fd, F_GETFL);
        if (fstat(x->fd, &st) < 0 || stat(dev->node, &node) < 0 || !S_ISBLK(st.st_mode) ||
            st.st_rdev != node.st_rdev || ioctl(x->fd, BLKGETDISKSEQ, &seq) < 0 ||
            seq != dev->diskseq || flags < 0 || (flags & O_ACCMODE) != accmode) {
                print_error("%s:%d: %s: the fd is not %s (diskseq %" PRIu64 ") opened %s: "
                            "diskseq %" PRIu64 ", flags 0%o\n",
                            file, line, what, dev->node, dev->diskseq,
                            accmode == O_RDWR ? "O_RDWR" : "O_RDONLY", seq, (unsigned) flags);
                _fail(file, line);
        }
        if (!file_has_at(x->fd, 0, MARK_IMAGE)) {
                print_error("%s:%d: %s: the fd does not read the image's bytes\n", file, line,
                            what);
                _fail(file, line);
        }
        print_message("  %s: fd of %s, %s\n", what, dev->node,
                      accmode == O_RDWR ? "read-write" : "read-only");
}
#define expect_device_fd(x, dev, accmode, what)                                                    \
        expect_device_fd_impl((x), (dev), (accmode), (what), __FILE__, __LINE__)

/* /dev/loopN is root:disk 0660: the user cannot open its own device without the daemon. */
static void expect_user_cannot_open(Ctx *c, unsigned who, const char *node) {
        static PkRequest q;
        static PkReply p;
        memset(&q, 0, sizeof(q));
        q.op = PK_OP_READ_FILE;
        assert_int_equal(pk_request_arg(&q, 's', 0, node), 0);
        int r = pk_agent_call(&c->agents[who], &q, &p, AGENT_TIMEOUT_MSEC);
        if (r < 0)
                fail_msg("no reply from the agent for %s: %s", user_names[who], strerror(-r));
        if (p.open_errno != EACCES)
                fail_msg("%s opening %s itself: %s, expected EACCES", user_names[who], node,
                         p.open_errno ? strerror(p.open_errno) : "it worked");
}

static void expect_state_prop(Ctx *c, const char *object, const char *state) {
        _cleanup_props_ DeviceProps p = {};
        PROPS_OK(&c->e, object, &p);
        if (!streq_ptr(p.state, state))
                fail_msg("State of %s is %s, expected %s", object, p.state ?: "(none)", state);
}

/* The owner opens its device read-only and read-write without any open-device, the bytes reach
 * the backing file; bad modes and options are refused; the fd holds the device open, so a
 * Detach meanwhile is pending and the device goes when the fd is closed. */
void test_open_device_owner(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int file = -EBADF;
        AgentReply a = {}, x = {}, w = {};

        set_rules(c, RULES(RULE("attach", "lmtest1", "YES"), RULE("open-device", "lmtest1", "NO")),
                  {U1, "attach", VERDICT_YES}, {U1, "open-device", VERDICT_NO});

        path = user_image(c, U1, 4 * MiB);
        write_file_at(path, 0, MARK_IMAGE);
        user_attach(c, U1, path, O_RDWR, &a, 0);
        expect_ok(&a, "Attach by lmtest1");
        expect_user_cannot_open(c, U1, a.node);

        user_open_device(c, U1, a.object, MODE_R, &x, 0);
        expect_device_fd(&x, &a, O_RDONLY, "OpenDevice('r') by the owner");
        assert_int_equal(write(x.fd, "x", 1), -1);
        assert_int_equal(errno, EBADF);
        env_release(&c->e, x.fd);

        user_open_device(c, U1, a.object, MODE_RW, &w, 1,
                         OPT_B(LOOPMGR_OPT_NO_USER_INTERACTION, true));
        expect_device_fd(&w, &a, O_RDWR, "OpenDevice('rw') by the owner");
        assert_int_equal(pwrite(w.fd, MARK_DEVICE, strlen(MARK_DEVICE), MARK_OFFSET),
                         (ssize_t) strlen(MARK_DEVICE));
        assert_int_equal(fsync(w.fd), 0);
        file = open(path, O_RDONLY | O_CLOEXEC);
        assert_true(file >= 0);
        if (!file_has_at(file, MARK_OFFSET, MARK_DEVICE))
                fail_msg("what was written through the device is not in %s", path);

        user_open_device(c, U1, a.object, MODE_BAD, &x, 0);
        expect_error(&x, ERROR_INVALID_ARGS, "OpenDevice('w')");
        assert_true(x.fd < 0);
        user_open_device(c, U1, a.object, MODE_R, &x, 1, OPT_B(LOOPMGR_OPT_WAIT, true));
        expect_error(&x, ERROR_INVALID_ARGS, "OpenDevice with the option 'wait'");

        /* An opener like any other: the kernel defers the teardown to the last close. */
        user_device_detach(c, U1, a.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_PENDING, "Detach while the user holds the fd");
        expect_state_prop(c, a.object, LOOPMGR_STATE_DETACH_PENDING);
        user_open_device(c, U1, a.object, MODE_R, &x, 0);
        expect_error(&x, ERROR_BUSY, "OpenDevice of a device being torn down");
        assert_true(file_has_at(w.fd, MARK_OFFSET, MARK_DEVICE));
        env_release(&c->e, w.fd);
        expect_gone(&a);
}

/* Somebody else's device: a reference holder opens it without asking, but not read-write when
 * it is read-only; anybody else needs org.loopmgr.open-device (AccessDenied when polkit says no,
 * InteractiveAuthorizationRequired when it wants a password nobody may ask for). */
void test_open_device_others(void **state) {
        Ctx *c = *state;
        _cleanup_free_ char *path = NULL, *shared = NULL;
        AgentReply a = {}, b = {}, r = {}, x = {};

        set_rules(c,
                  RULES(RULE("attach", "lmtest1", "YES"), RULE("attach", "lmtest2", "YES"),
                        RULE("open-device", "lmtest1", "NO"), RULE("open-device", "lmtest2", "NO")),
                  {U1, "attach", VERDICT_YES}, {U2, "attach", VERDICT_YES},
                  {U1, "open-device", VERDICT_NO}, {U2, "open-device", VERDICT_NO});

        path = user_image(c, U1, 4 * MiB);
        write_file_at(path, 0, MARK_IMAGE);
        user_attach(c, U1, path, O_RDWR, &a, 0);
        expect_ok(&a, "Attach by lmtest1");
        user_open_device(c, U2, a.object, MODE_R, &x, 0);
        expect_error(&x, ERROR_ACCESS_DENIED, "OpenDevice of lmtest1's device by lmtest2");
        assert_true(x.fd < 0);

        /* A read-only device two users share: the second one holds a reference. */
        shared = shared_image(c, 4 * MiB, 0644);
        write_file_at(shared, 0, MARK_IMAGE);
        user_attach(c, U1, shared, O_RDONLY, &r, 0);
        expect_ok(&r, "read-only Attach by lmtest1");
        user_attach(c, U2, shared, O_RDONLY, &b, 0);
        expect_ok(&b, "the same Attach by lmtest2");
        if (!b.reused || !streq(r.object, b.object))
                fail_msg("lmtest2 got %s, expected lmtest1's %s", b.object, r.object);
        user_open_device(c, U2, r.object, MODE_R, &x, 0);
        expect_device_fd(&x, &r, O_RDONLY, "OpenDevice('r') by a reference holder");
        env_release(&c->e, x.fd);
        user_open_device(c, U2, r.object, MODE_RW, &x, 0);
        expect_error(&x, ERROR_INVALID_ARGS, "OpenDevice('rw') of a read-only device");
        if (!strstr(x.error_message, r.node) || !strstr(x.error_message, "read-only"))
                fail_msg("the refusal does not name %s as read-only: %s", r.node, x.error_message);
        user_open_device(c, U1, r.object, MODE_RW, &x, 0);
        expect_error(&x, ERROR_INVALID_ARGS, "OpenDevice('rw') of a read-only device, owner");

        set_rules(c,
                  RULES(RULE("attach", "lmtest1", "YES"),
                        RULE("open-device", "lmtest2", "AUTH_ADMIN")),
                  {U2, "open-device", VERDICT_CHALLENGE});
        user_open_device(c, U2, a.object, MODE_R, &x, 0);
        expect_error(&x, ERROR_INTERACTIVE, "OpenDevice by lmtest2, AUTH_ADMIN, no flag");
        agent_call(c, U2, OP_OPEN_DEVICE, a.object, MODE_RW, true, &x, 1,
                   OPT_B(LOOPMGR_OPT_NO_USER_INTERACTION, true));
        expect_error(&x, ERROR_INTERACTIVE,
                     "OpenDevice by lmtest2, AUTH_ADMIN, interactive flag but "
                     "auth.no_user_interaction");

        set_rules(c, RULES(RULE("attach", "lmtest1", "YES"), RULE("open-device", "lmtest2", "YES")),
                  {U2, "open-device", VERDICT_YES});
        user_open_device(c, U2, a.object, MODE_RW, &x, 0);
        expect_device_fd(&x, &a, O_RDWR, "OpenDevice('rw') by lmtest2 with open-device");
        env_release(&c->e, x.fd);
        /* It changed nothing of the device's bookkeeping. */
        expect_owner_refs(c, a.object, c->users[U1].uid, 1);

        user_detach(c, U1, a.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_DETACHED, "Detach by the owner after the fd was closed");
        expect_gone(&a);
        user_detach(c, U2, r.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_ATTACHED, "Detach by lmtest2 of its reference");
        user_detach(c, U1, r.object, &x, 0);
        expect_state(&x, LOOPMGR_STATE_DETACHED, "Detach by lmtest1 of the read-only device");
        expect_gone(&r);
}
