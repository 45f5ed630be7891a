/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Desktop integration (issue 7), client side: `loopmgrctl open` and `close` run as unprivileged
 * users against the real daemon, a real polkitd and real loop devices, and the interactive
 * authorisation of loopmgrctl with polkit's own text agent on a pseudo-terminal.
 *
 * The users. lmopen1 and lmopen2 (created when missing, left in place, like test-polkit's
 * users). loopmgrctl runs as them through polkit-util's agents (PK_OP_EXEC: their own
 * credentials, stdin not a terminal), or on a pty of ours (forkpty) where a terminal matters.
 * Each has a 0700 directory under the test's temporary directory holding its images. What they
 * execute lies in that directory too (mode 0711): the build's loopmgrctl is copied to
 * <tmpdir>/bin, since the checkout may be out of their reach (a clone in /root, mode 0700), and
 * the fake agents are written to <tmpdir>/shared.
 *
 * The rules. /etc/polkit-1/rules.d/49-loopmgr-open.rules names only the lmopen users; every
 * test writes it and waits until polkitd gives the verdicts the test relies on; the teardowns
 * remove it. /run/loopmgr-test-open.lock keeps two runs of this binary apart.
 *
 * The real agent. pkttyagent runs polkit-agent-helper-1, which is set-uid root, clears its
 * environment and answers polkitd on the default system bus socket,
 * /run/dbus/system_bus_socket, not on the private bus of tests/env.sh. So the child on the pty
 * first enters a mount namespace of its own, mounts a tmpfs on /run/dbus there and binds the
 * private bus socket onto /run/dbus/system_bus_socket, then drops to the user and runs
 * loopmgrctl. The password is a random one set with chpasswd for the length of the test and
 * locked again afterwards (PAM: /etc/pam.d/polkit-1 or "other", i.e. pam_unix).
 *
 * The fake agents. LOOPMGR_PKTTYAGENT points loopmgrctl at shell scripts that record their
 * arguments and their SIGTERM, or die at once: the agent's life cycle without a password.
 *
 * After every test no mount under /run/media/lmopen{1,2}, no device backed by the temporary
 * directory and no process of the users may remain.
 *
 * Run:   eval "$(LOOPMGR_TEST_ENV=/run/loopmgr-open tests/env.sh start)"
 *        meson test -C BUILD test-desktop
 */

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pty.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "polkit-util.h"
#include "test-desktop.h"
const char *const user_names[] = {"lmopen1", "lmopen2"};

bool group_failed;

/* ------------------------------------------------------------------------------------------ */
/* Fixtures */

static int set_password(const char *user, const char *password, bool encrypted) {
        _cleanup_free_ char *line = NULL, *err = NULL;
        char *argv[] = {(char *) "chpasswd", encrypted ? (char *) "-e" : NULL, NULL};

        if (asprintf(&line, "%s:%s\n", user, password) < 0)
                return -ENOMEM;
        int r = run_command(argv, line, NULL, &err);
        if (r != 0) {
                print_error("chpasswd for %s failed (%d): %s\n", user, r, err ?: "");
                return r < 0 ? r : -EPROTO;
        }
        return 0;
}

static int group_teardown(void **state);

static int group_setup(void **state) {
        Ctx *c = calloc(1, sizeof(Ctx));
        const char *address, *prefix = "unix:path=";
        unsigned char rnd[16];

        *state = c;
        if (!c || desktop_group_start(c) < 0)
                goto fail;

        /* A password nobody knows, for this run only. */
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t) sizeof(rnd))
                goto fail;
        for (size_t i = 0; i < sizeof(rnd); i++)
                snprintf(c->password + 2 * i, 3, "%02x", rnd[i]);
        if (set_password(user_names[U1], c->password, false) < 0)
                goto fail;

        address = getenv("DBUS_SYSTEM_BUS_ADDRESS");
        if (!address || strncmp(address, prefix, strlen(prefix)) != 0) {
                print_error("DBUS_SYSTEM_BUS_ADDRESS=%s is not a unix:path= address\n",
                            address ?: "");
                goto fail;
        }
        c->bus_socket = strndup(address + strlen(prefix), strcspn(address + strlen(prefix), ","));
        if (!c->bus_socket)
                goto fail;

        if (desktop_group_env(c, "desktop") < 0)
                goto fail;
        c->shared_dir = env_join(c->e->tmpdir, "shared");
        if (pk_make_dir(c->shared_dir, 0755, 0, 0) < 0)
                goto fail;
        return 0;

fail:
        group_failed = true;
        (void) group_teardown(state);
        return -1;
}

static int group_teardown(void **state) {
        Ctx *c = *state;
        bool ok = true;

        if (!c)
                return 0;
        /* Lock the account again: "!" is no valid hash. */
        if (c->uid[U1] > 0 && set_password(user_names[U1], "!", true) < 0)
                ok = false;
        if (!desktop_group_stop(c, NULL))
                ok = false;
        free(c->shared_dir);
        free(c->bus_socket);
        free(c);
        *state = NULL;
        if (!ok)
                group_failed = true;
        return ok ? 0 : -1;
}

static int test_setup(void **state) {
        return desktop_test_setup(*state);
}

static int test_teardown(void **state) {
        return desktop_test_teardown(*state, NULL);
}

#define T(f) cmocka_unit_test_setup_teardown(f, test_setup, test_teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_open_ext4),  T(test_open_writable), T(test_open_squashfs),
                T(test_other_user), T(test_errors),        T(test_interactive_agent),
                T(test_fake_agent), T(test_usage),         T(test_open_client_lifetime),
        };
        return ENV_RUN_TESTS(tests, group_setup, group_teardown, &group_failed);
}
