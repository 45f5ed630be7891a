/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The process helpers of integration-host.c that the integration binaries rely on, without a
 * bus or devices: run_command() (exit status, output, and a message that names what could not
 * be executed and why) and copy_for_users() (what unprivileged test users execute, copied out
 * of a build tree they may not reach: a checkout under /root, mode 0700). The parts that run
 * as another user need root and the user "nobody"; they skip otherwise.
 */

#include <fcntl.h>
#include <pwd.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"

static char *tmpdir;

static int group_setup(void **state) {
        char t[] = "/tmp/loopmgr-test-integration-util-XXXXXX";

        if (!mkdtemp(t))
                return -1;
        tmpdir = strdup(t);
        return tmpdir ? 0 : -1;
}

static int group_teardown(void **state) {
        if (!tmpdir)
                return 0;
        char *argv[] = {(char *) "rm", (char *) "-rf", (char *) "--", tmpdir, NULL};
        (void) run_command(argv, NULL, NULL, NULL);
        free(tmpdir);
        tmpdir = NULL;
        return 0;
}

/* <tmpdir>/name with the given text and mode; returns the path (the caller frees it). */
static char *write_file(const char *name, const char *text, mode_t mode) {
        char *path = env_join(tmpdir, name);
        FILE *f = fopen(path, "we");

        assert_non_null(f);
        assert_true(fputs(text, f) >= 0);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(chmod(path, mode), 0);
        return path;
}

static void expect_contains(const char *haystack, const char *needle) {
        assert_non_null(haystack);
        if (!strstr(haystack, needle))
                fail_msg("'%s' does not contain '%s'", haystack, needle);
}

/* The message a failed exec leaves on stderr. */
static void expect_cannot_execute(const char *err, const char *path, const char *reason) {
        _cleanup_free_ char *want = NULL;

        assert_true(asprintf(&want, "cannot execute %s: %s", path, reason) > 0);
        expect_contains(err, want);
}

static void test_status_and_output(void **state) {
        _cleanup_free_ char *out = NULL, *err = NULL;
        char *argv[] = {(char *) "sh", (char *) "-c",
                        (char *) "read line; echo \"out $line\"; echo err >&2; exit 3", NULL};

        assert_int_equal(run_command(argv, "in\n", &out, &err), 3);
        assert_string_equal(out, "out in\n");
        assert_string_equal(err, "err\n");
}

static void test_missing_file(void **state) {
        _cleanup_free_ char *path = env_join(tmpdir, "no-such-program"), *out = NULL, *err = NULL;
        char *argv[] = {path, NULL};

        assert_int_equal(run_command(argv, NULL, &out, &err), 127);
        assert_string_equal(out, "");
        expect_cannot_execute(err, path, "No such file or directory");
}

static void test_missing_command(void **state) {
        _cleanup_free_ char *err = NULL;
        char *argv[] = {(char *) "loopmgr-no-such-command", NULL};

        assert_int_equal(run_command(argv, NULL, NULL, &err), 127);
        expect_cannot_execute(err, "loopmgr-no-such-command", "No such file or directory");
}

/* No execute bit: EACCES, for root too. */
static void test_not_executable(void **state) {
        _cleanup_free_ char *path = write_file("not-executable", "#!/bin/sh\nexit 0\n", 0644);
        _cleanup_free_ char *err = NULL;
        char *argv[] = {path, (char *) "arg", NULL};

        assert_int_equal(run_command(argv, NULL, NULL, &err), 127);
        expect_cannot_execute(err, path, "Permission denied");
}

/* The copy is there, 0755 whatever the umask, and replaces an older one; a directory that not
 * everyone may search is refused. */
static void test_copy_for_users(void **state) {
        _cleanup_free_ char *src = write_file("prog", "#!/bin/sh\necho ran\n", 0700);
        _cleanup_free_ char *bin = env_join(tmpdir, "bin"), *closed = env_join(tmpdir, "closed");
        _cleanup_free_ char *closed_bin = env_join(closed, "bin");
        _cleanup_free_ char *copy = NULL, *again = NULL, *refused = NULL, *out = NULL;
        mode_t old_umask = umask(077);
        struct stat st;

        assert_int_equal(chmod(tmpdir, 0711), 0);
        assert_int_equal(copy_for_users(src, bin, &copy), 0);
        assert_int_equal(copy_for_users(src, bin, &again), 0);
        (void) umask(old_umask);
        assert_string_equal(copy, again);
        assert_int_equal(stat(bin, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0755);
        assert_int_equal(stat(copy, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0755);

        char *argv[] = {copy, NULL};
        assert_int_equal(run_command(argv, NULL, &out, NULL), 0);
        assert_string_equal(out, "ran\n");

        assert_int_equal(mkdir(closed, 0700), 0);
        print_message("  a refusal is expected:\n");
        assert_int_equal(copy_for_users(src, closed_bin, &refused), -EACCES);
        assert_null(refused);
}

/* As the user "nobody" (root only): run_command() of a program in a 0700 directory says which
 * file it could not execute and why; the copy_for_users() of it runs. */
static void test_as_another_user(void **state) {
        _cleanup_free_ char *closed = env_join(tmpdir, "checkout"), *bin = env_join(tmpdir, "ubin");
        _cleanup_free_ char *prog = env_join(closed, "prog"), *copy = NULL;
        struct passwd *pw = getpwnam("nobody");
        char result[4096] = "";
        int p[2], status;
        ssize_t n, len = 0;

        if (geteuid() != 0 || !pw || pw->pw_uid == 0) {
                print_message("skipped: needs root and the user nobody\n");
                skip();
        }
        assert_int_equal(chmod(tmpdir, 0711), 0);
        assert_int_equal(mkdir(closed, 0700), 0);
        FILE *f = fopen(prog, "we");
        assert_non_null(f);
        assert_true(fputs("#!/bin/sh\necho \"ran as $(id -un)\"\n", f) >= 0);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(chmod(prog, 0755), 0);
        assert_int_equal(copy_for_users(prog, bin, &copy), 0);

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                /* Reports "status|stderr" of the original, then "status|stdout" of the copy. */
                char *a[] = {prog, NULL}, *b[] = {copy, NULL};
                char *out = NULL, *err = NULL;
                int r;

                if (setgroups(0, NULL) < 0 || setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0 ||
                    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0 || chdir("/") < 0) {
                        dprintf(p[1], "cannot drop to nobody: %m\n");
                        _exit(1);
                }
                r = run_command(a, NULL, NULL, &err);
                dprintf(p[1], "%d|%s\n", r, err ?: "");
                r = run_command(b, NULL, &out, NULL);
                dprintf(p[1], "%d|%s", r, out ?: "");
                _exit(0);
        }
        close(p[1]);
        while ((n = read(p[0], result + len, sizeof(result) - 1 - (size_t) len)) > 0)
                len += n;
        result[len] = 0;
        close(p[0]);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        print_message("  as nobody: %s", result);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

        _cleanup_free_ char *first = NULL;
        assert_true(asprintf(&first, "127|cannot execute %s: Permission denied\n", prog) > 0);
        if (strncmp(result, first, strlen(first)) != 0)
                fail_msg("the original in a 0700 directory: '%s', expected '%s'", result, first);
        expect_contains(result + strlen(first), "0|ran as nobody\n");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_status_and_output), cmocka_unit_test(test_missing_file),
                cmocka_unit_test(test_missing_command),   cmocka_unit_test(test_not_executable),
                cmocka_unit_test(test_copy_for_users),    cmocka_unit_test(test_as_another_user),
        };

        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
