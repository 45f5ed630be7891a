/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-desktop's tests: open and close of ext4, writable and squashfs images, other users,
 * errors, interactive and fake agents, the client's lifetime, usage. */

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

/* ------------------------------------------------------------------------------------------ */
/* Tests */

/* The mount of an open image: under /run/media/<user>/, from a loop device, nosuid and nodev
 * (and ro when expected), and the user reads the file in it. */
static void check_open_mount(Ctx *c, unsigned who, const char *mount_point, bool read_only) {
        char *prefix = NULL, *file;
        MountEntry m = {};
        static PkRequest q;
        static PkReply p;

        assert_true(asprintf(&prefix, MEDIA_DIR "/%s/", user_names[who]) > 0);
        gc(c, prefix);
        if (strncmp(mount_point, prefix, strlen(prefix)) != 0)
                fail_msg("mount point '%s' is not under %s", mount_point, prefix);

        if (find_mount(c, mount_point, &m) < 0)
                fail_msg("%s is not a mount point", mount_point);
        print_message("  %s: %s from %s, %s\n", mount_point, m.fstype, m.source, m.options);
        if (strncmp(m.source, "/dev/loop", 9) != 0)
                fail_msg("%s is mounted from %s, not a loop device", mount_point, m.source);
        if (!has_option(m.options, "nosuid") || !has_option(m.options, "nodev"))
                fail_msg("%s lacks nosuid or nodev: %s", mount_point, m.options);
        if (read_only && !has_option(m.options, "ro"))
                fail_msg("%s is not read-only: %s", mount_point, m.options);

        /* The user reads the file, as themselves. */
        file = gc(c, env_join(mount_point, "hello.txt"));
        q = (PkRequest){.op = PK_OP_READ_FILE};
        assert_int_equal(pk_request_arg(&q, 's', 0, file), 0);
        assert_int_equal(pk_agent_call(&c->agents[who], &q, &p, 0), 0);
        if (p.r < 0 || p.open_errno != 0)
                fail_msg("%s cannot read %s: %s", user_names[who], file, pk_reply_error(&p));
        assert_string_equal(p.data, FILE_TEXT);
}

/* open of an ext4 image: mounted for the user; a second open gives the same mount and no
 * second device; close by directory unmounts it and the device goes. */
void test_open_ext4(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "disk.ext4", "lmopen-ext4");
        char *mp = NULL;
        Run a = {}, b = {}, d = {};

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        ctl_as(c, U1, &a, "open", image);
        expect_status(&a, 0, "open of an ext4 image");
        mp = first_line(c, a.out);
        assert_string_equal(mp, MEDIA_DIR "/lmopen1/lmopen-ext4");
        check_open_mount(c, U1, mp, true);
        assert_int_equal(devices_of(image), 1);

        ctl_as(c, U1, &b, "open", image);
        expect_status(&b, 0, "second open");
        assert_string_equal(b.out, a.out);
        assert_int_equal(devices_of(image), 1);

        ctl_as(c, U1, &d, "close", mp);
        expect_status(&d, 0, "close by directory");
        expect_contains(d.out, "Unmounted " MEDIA_DIR "/lmopen1/lmopen-ext4", "close output");
        expect_contains(d.out, "detached", "close output");
        MountEntry m = {};
        assert_int_equal(find_mount(c, mp, &m), -ENOENT);
        assert_true(wait_no_device(image));
        expect_daemon_forgot(c, image);
}

/* --writable: a read-write mount; close by image name. */
void test_open_writable(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "rw.ext4", "lmopen-rw");
        char *mp = NULL;
        MountEntry m = {};
        Run a = {}, b = {}, d = {};

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        ctl_as(c, U1, &a, "open", "--writable", image);
        expect_status(&a, 0, "open --writable");
        mp = first_line(c, a.out);
        check_open_mount(c, U1, mp, false);
        assert_int_equal(find_mount(c, mp, &m), 0);
        assert_true(has_option(m.options, "rw"));

        /* A read-only open of the same image shares the writable device and its mount. */
        ctl_as(c, U1, &b, "open", image);
        expect_status(&b, 0, "read-only open of an image open writable");
        assert_string_equal(b.out, a.out);
        assert_int_equal(devices_of(image), 1);

        ctl_as(c, U1, &d, "close", image);
        expect_status(&d, 0, "close by image");
        assert_true(wait_no_device(image));
        expect_daemon_forgot(c, image);
}

/* squashfs: mounted read-only; --json for open and close. */
void test_open_squashfs(void **state) {
        Ctx *c = *state;
        char *image = make_squashfs(c, U1, "disk.squashfs");
        char *mp = NULL, *mp_json = NULL;
        Run a = {}, b = {}, d = {};
        MountEntry m = {};

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        ctl_as(c, U1, &a, "open", image);
        expect_status(&a, 0, "open of a squashfs image");
        mp = first_line(c, a.out);
        check_open_mount(c, U1, mp, true);
        assert_int_equal(find_mount(c, mp, &m), 0);
        assert_string_equal(m.fstype, "squashfs");

        ctl_as(c, U1, &b, "open", "--json", image);
        expect_status(&b, 0, "open --json");
        assert_true(asprintf(&mp_json, "\"mount_point\":\"%s\"", mp) > 0);
        gc(c, mp_json);
        expect_contains(b.out, mp_json, "open --json");
        expect_contains(b.out, "\"device\":\"/dev/loop", "open --json");
        expect_contains(b.out, "\"object\":\"" LOOPMGR_DEVICE_PATH_PREFIX "/", "open --json");
        expect_contains(b.out, "\"reused\":true", "open --json");
        assert_int_equal(devices_of(image), 1);

        ctl_as(c, U1, &d, "close", "--json", image);
        expect_status(&d, 0, "close --json");
        expect_contains(d.out, mp_json, "close --json");
        expect_contains(d.out, "\"state\":\"detached\"", "close --json");
        assert_true(wait_no_device(image));
        expect_daemon_forgot(c, image);
}

/* Another user cannot close a user's image without mount-others; with it, they can. */
void test_other_user(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "other.ext4", "lmopen-other");
        char *mp = NULL;
        Run a = {}, b = {}, d = {};
        MountEntry m = {};

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        ctl_as(c, U1, &a, "open", image);
        expect_status(&a, 0, "open");
        mp = first_line(c, a.out);

        /* lmopen2 cannot even look into /run/media/lmopen1; close matches the path as given
         * (a trailing slash aside). */
        char *mp_slash = NULL;
        assert_true(asprintf(&mp_slash, "%s/", mp) > 0);
        gc(c, mp_slash);
        ctl_as(c, U2, &b, "close", mp_slash);
        expect_status(&b, 4, "close of another user's mount without mount-others");
        assert_int_equal(find_mount(c, mp, &m), 0);
        assert_int_equal(devices_of(image), 1);

        set_rules(c, BASE_RULES PK_RULE("org.loopmgr.mount-others", "lmopen2", "YES"),
                  "org.loopmgr.mount-others", U2, PK_VERDICT_YES);
        ctl_as(c, U2, &d, "close", mp);
        expect_status(&d, 0, "close of another user's mount with mount-others");
        assert_int_equal(find_mount(c, mp, &m), -ENOENT);
        assert_true(wait_no_device(image));
        expect_daemon_forgot(c, image);
}

/* Mistakes: clear messages, distinct exit statuses, and nothing left behind. */
void test_errors(void **state) {
        Ctx *c = *state;
        char *missing = gc(c, env_join(c->dir[U1], "missing.img"));
        char *noise = make_noise(c, U1, "noise.img");
        char *ext4 = make_ext4(c, U1, "closed.ext4", "lmopen-closed");
        Run a = {}, b = {}, d = {}, e = {}, f = {}, g = {};

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        ctl_as(c, U1, &a, "open", missing);
        expect_status(&a, 5, "open of a missing file");
        expect_contains(a.err, "no such file", "open of a missing file");

        ctl_as(c, U1, &b, "open", noise);
        expect_status(&b, 1, "open of a file without a file system");
        expect_contains(b.err, "Cannot open", "open of noise");
        assert_true(wait_no_device(noise));
        expect_daemon_forgot(c, noise);

        ctl_as(c, U1, &d, "close", ext4);
        expect_status(&d, 5, "close of an image that is not open");
        expect_contains(d.err, "is not open", "close of an image that is not open");

        ctl_as(c, U1, &e, "close", c->dir[U1]);
        expect_status(&e, 5, "close of a directory that is no mount point");
        expect_contains(e.err, "not a mount point of loopmgr's", "close of a plain directory");

        ctl_as(c, U1, &f, "open", c->dir[U1]);
        expect_status(&f, 1, "open of a directory");
        expect_contains(f.err, "directory", "open of a directory");

        /* lmopen2 cannot read lmopen1's image: no attach at all. */
        ctl_as(c, U2, &g, "open", ext4);
        expect_status(&g, 4, "open of an image the user cannot read");
        assert_int_equal(devices_of(ext4), 0);
        assert_int_equal(devices_of(noise), 0);

        /* Nor close it: the path cannot even be looked at. */
        Run h = {};
        ctl_as(c, U2, &h, "close", ext4);
        expect_status(&h, 4, "close of an image the user cannot see");
        expect_contains(h.err, "Permission denied", "close of an image the user cannot see");
}

/* polkit wants lmopen1's password for attach: loopmgrctl on a terminal runs pkttyagent, the
 * password is typed, the call is retried and the image opens. A wrong password: refused,
 * nothing left. --no-ask-password: no prompt at all. */
void test_interactive_agent(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "agent.ext4", "lmopen-agent");
        PtyRun a = {}, b = {}, d = {};
        Run e = {};
        char *mp = NULL;
        struct stat st;

        if (stat("/run/dbus", &st) < 0 || !S_ISDIR(st.st_mode) ||
            access("/usr/bin/pkttyagent", X_OK) < 0 ||
            access("/usr/lib/polkit-1/polkit-agent-helper-1", X_OK) < 0) {
                print_message("skipped: needs /run/dbus, pkttyagent and polkit-agent-helper-1\n");
                skip();
        }

        set_rules(c,
                  PK_RULE("org.loopmgr.attach", "lmopen1", "AUTH_SELF")
                          PK_RULE("org.loopmgr.mount", "lmopen1", "YES"),
                  "org.loopmgr.attach", U1, PK_VERDICT_CHALLENGE, "org.loopmgr.mount", U1,
                  PK_VERDICT_YES);

        char *argv_open[] = {c->e->loopmgrctl, (char *) "open", image, NULL};
        pty_run(c, &(PtyOptions){.who = U1, .system_bus_namespace = true, .password = "wrong"},
                argv_open, &a);
        assert_int_equal(a.status, 4);
        assert_true(a.prompts >= 1);
        assert_true(wait_no_device(image));

        pty_run(c, &(PtyOptions){.who = U1, .system_bus_namespace = true, .password = c->password},
                argv_open, &b);
        assert_int_equal(b.status, 0);
        assert_int_equal(b.prompts, 1);
        expect_contains(b.output, "AUTHENTICATION COMPLETE", "pkttyagent's output");
        expect_contains(b.output, MEDIA_DIR "/lmopen1/lmopen-agent", "open's output");
        mp = gc(c, strdup(MEDIA_DIR "/lmopen1/lmopen-agent"));
        check_open_mount(c, U1, mp, true);

        ctl_as(c, U1, &e, "close", mp);
        expect_status(&e, 0, "close");
        assert_true(wait_no_device(image));

        char *argv_nask[] = {c->e->loopmgrctl, (char *) "open", (char *) "--no-ask-password", image,
                             NULL};
        pty_run(c, &(PtyOptions){.who = U1, .system_bus_namespace = true, .password = "x"},
                argv_nask, &d);
        assert_int_equal(d.status, 4);
        assert_int_equal(d.prompts, 0);
        expect_contains(d.output, "does not allow interactive", "--no-ask-password");
        assert_true(wait_no_device(image));
}

/* The agent's life cycle, with fake agents (LOOPMGR_PKTTYAGENT): started with --notify-fd
 * and --process <loopmgrctl's pid> only on InteractiveAuthorizationRequired, the call retried
 * once it closed the fd, stopped with SIGTERM; an agent that dies at once is reported. */
void test_fake_agent(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "fake.ext4", "lmopen-fake");
        char *agent = gc(c, env_join(c->shared_dir, "fake-agent"));
        char *dying = gc(c, env_join(c->shared_dir, "dying-agent"));
        char *log = gc(c, env_join(c->dir[U1], "agent.log"));
        char *text;
        PtyRun a = {}, b = {}, d = {};
        static PkRequest q;
        static PkReply p;

        /* Records its arguments, closes the notify fd (the argument after --notify-fd) as
         * pkttyagent does once registered, and notes SIGTERM. The trap comes first: once the
         * fd is closed loopmgrctl may stop the agent at any moment. */
        static const char fake[] = "#!/bin/sh\n"
                                   "trap 'echo TERM >> \"$LMOPEN_FAKE_LOG\"; exit 0' TERM\n"
                                   "echo \"args $*\" >> \"$LMOPEN_FAKE_LOG\"\n"
                                   "fd=$2\n"
                                   "eval \"exec $fd>&-\"\n"
                                   "i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n"
                                   "echo TIMEOUT >> \"$LMOPEN_FAKE_LOG\"\n";
        static const char die[] = "#!/bin/sh\nexit 1\n";

        FILE *f = fopen(agent, "we");
        assert_non_null(f);
        assert_true(fputs(fake, f) >= 0);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(chmod(agent, 0755), 0);
        f = fopen(dying, "we");
        assert_non_null(f);
        assert_true(fputs(die, f) >= 0);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(chmod(dying, 0755), 0);

        set_rules(c,
                  PK_RULE("org.loopmgr.attach", "lmopen1", "AUTH_SELF")
                          PK_RULE("org.loopmgr.mount", "lmopen1", "YES"),
                  "org.loopmgr.attach", U1, PK_VERDICT_CHALLENGE);

        char *argv_open[] = {c->e->loopmgrctl, (char *) "open", image, NULL};
        pty_run(c, &(PtyOptions){.who = U1, .agent = agent, .agent_log = log}, argv_open, &a);
        /* The fake agent answers nothing: the retry fails like the first call. */
        assert_int_equal(a.status, 4);
        expect_contains(a.output, "no polkit authentication agent is available", "retry");
        assert_true(wait_no_device(image));

        q = (PkRequest){.op = PK_OP_READ_FILE};
        assert_int_equal(pk_request_arg(&q, 's', 0, log), 0);
        assert_int_equal(pk_agent_call(&c->agents[U1], &q, &p, 0), 0);
        assert_int_equal(p.open_errno, 0);
        text = gc(c, strdup(p.data));
        print_message("  fake agent log:\n%s", text);
        expect_contains(text, "args --notify-fd ", "the agent's arguments");
        expect_contains(text, " --process ", "the agent's arguments");
        expect_contains(text, "TERM", "the agent was stopped");
        if (strstr(text, "TIMEOUT"))
                fail_msg("the fake agent was never stopped");
        /* One agent for the one call that needed it. */
        assert_null(strstr(strstr(text, "args") + 1, "args"));

        pty_run(c, &(PtyOptions){.who = U1, .agent = dying}, argv_open, &b);
        assert_int_equal(b.status, 4);
        /* Either it was seen gone before the retry or after it. */
        if (!strstr(b.output, "Cannot start a polkit authentication agent") &&
            !strstr(b.output, "agent on this terminal exited"))
                fail_msg("a dying agent is not reported: %s", b.output);
        assert_true(wait_no_device(image));

        /* Without a terminal no agent is started at all. */
        Run n = {};
        ctl_as(c, U1, &n, "open", image);
        expect_status(&n, 4, "open without a terminal");
        if (strstr(n.err, "Cannot start"))
                fail_msg("an agent was tried without a terminal");

        /* Allowed without asking: no agent either. */
        set_rules(c, BASE_RULES, BASE_VERDICTS);
        (void) unlink(log);
        pty_run(c, &(PtyOptions){.who = U1, .agent = agent, .agent_log = log}, argv_open, &d);
        assert_int_equal(d.status, 0);
        assert_int_equal(access(log, F_OK), -1);
        Run cl = {};
        ctl_as(c, U1, &cl, "close", image);
        expect_status(&cl, 0, "close");
        assert_true(wait_no_device(image));
}

/* --lifetime client: open stays in the foreground and closes the image on SIGTERM. */
void test_open_client_lifetime(void **state) {
        Ctx *c = *state;
        char *image = make_ext4(c, U1, "client.ext4", "lmopen-client");
        const char *mp = MEDIA_DIR "/lmopen1/lmopen-client";
        uint64_t deadline;
        MountEntry m = {};
        int fds[2], status;
        char out[4096] = "";
        ssize_t n, len = 0;
        pid_t pid;

        set_rules(c, BASE_RULES, BASE_VERDICTS);

        assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
        fflush(stdout);
        fflush(stderr);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                if (dup2(fds[1], STDOUT_FILENO) < 0) {
                        perror("test-desktop: dup2 stdout");
                        _exit(123);
                }
                if (setgroups(0, NULL) < 0 || setresgid(c->gid[U1], c->gid[U1], c->gid[U1]) < 0 ||
                    setresuid(c->uid[U1], c->uid[U1], c->uid[U1]) < 0) {
                        perror("test-desktop: dropping to the user");
                        _exit(123);
                }
                execl(c->e->loopmgrctl, c->e->loopmgrctl, "open", "--lifetime=client", image,
                      (char *) NULL);
                fprintf(stderr, "test-desktop: cannot execute %s as %s: %m\n", c->e->loopmgrctl,
                        user_names[U1]);
                _exit(127);
        }
        close(fds[1]);

        /* The mount point on stdout means: open and waiting. */
        deadline = now_usec() + 30 * USEC_PER_SEC;
        while (!strchr(out, '\n') && now_usec() < deadline) {
                struct pollfd p = {.fd = fds[0], .events = POLLIN};
                if (poll(&p, 1, 100) <= 0)
                        continue;
                n = read(fds[0], out + len, sizeof(out) - 1 - (size_t) len);
                if (n <= 0)
                        break;
                len += n;
                out[len] = 0;
        }
        if (strncmp(out, mp, strlen(mp)) != 0) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                close(fds[0]);
                fail_msg("open --lifetime=client printed '%s'", out);
        }
        assert_int_equal(find_mount(c, mp, &m), 0);
        sleep_usec(200 * USEC_PER_MSEC);
        assert_int_equal(waitpid(pid, &status, WNOHANG), 0);

        assert_int_equal(kill(pid, SIGTERM), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        n = read(fds[0], out + len, sizeof(out) - 1 - (size_t) len);
        if (n > 0)
                out[len + n] = 0;
        close(fds[0]);
        print_message("  open --lifetime=client, then SIGTERM: status %d, output:\n%s",
                      WIFEXITED(status) ? WEXITSTATUS(status) : -1, out);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        expect_contains(out, "Unmounted " MEDIA_DIR "/lmopen1/lmopen-client and detached",
                        "output after SIGTERM");
        assert_int_equal(find_mount(c, mp, &m), -ENOENT);
        assert_true(wait_no_device(image));
        expect_daemon_forgot(c, image);
}

/* Usage errors of open and close: exit status 2 before anything is asked of the daemon. */
void test_usage(void **state) {
        Ctx *c = *state;
        static const char *const cases[][5] = {
                {"open", NULL},
                {"open", "a.img", "b.img", NULL},
                {"open", "--exclusive", "a.img", NULL},
                {"open", "--offset=512", "a.img", NULL},
                {"open", "--lifetime=forever", "a.img", NULL},
                {"open", "--no-wait", "a.img", NULL},
                {"close", NULL},
                {"close", "--writable", "a.img", NULL},
                {"close", "--no-wait", "--timeout=1", "a.img", NULL},
                {"attach", "--writable", "a.img", NULL},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *out = NULL, *err = NULL;
                int r = env_run(&out, &err, c->e->loopmgrctl, cases[i][0], cases[i][1],
                                cases[i][1] ? cases[i][2] : NULL,
                                cases[i][1] && cases[i][2] ? cases[i][3] : NULL, NULL);

                print_message("  loopmgrctl %s %s ... -> %d: %s", cases[i][0], cases[i][1] ?: "", r,
                              err ?: "");
                if (r != 2)
                        fail_msg("loopmgrctl %s %s: exit status %d, expected 2 (usage)",
                                 cases[i][0], cases[i][1] ?: "", r);
        }
}
