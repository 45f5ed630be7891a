/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>

#include <sys/sysmacros.h>

#include <cmocka.h>

#include "util.h"

static char *tmpdir;

static int group_setup(void **state) {
        char t[] = "/tmp/loopmgr-test-util-XXXXXX";

        if (!mkdtemp(t))
                return -1;
        tmpdir = strdup(t);
        return tmpdir ? 0 : -1;
}

static int group_teardown(void **state) {
        char cmd[256];

        if (!tmpdir)
                return 0;
        (void) snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", tmpdir);
        (void) system(cmd);
        free(tmpdir);
        tmpdir = NULL;
        return 0;
}

/* Writes exactly n bytes (which may contain NULs) to <tmpdir>/<name>; returns the path. */
static char *write_file(const char *name, const char *data, size_t n) {
        char *path;
        FILE *f;

        assert_true(asprintf(&path, "%s/%s", tmpdir, name) > 0);
        f = fopen(path, "we");
        assert_non_null(f);
        assert_int_equal(fwrite(data, 1, n, f), n);
        assert_int_equal(fclose(f), 0);
        return path;
}

static void check_read(const char *name, const char *data, size_t n, const char *expect) {
        _cleanup_free_ char *path = write_file(name, data, n);
        _cleanup_free_ char *s = NULL;

        assert_int_equal(read_one_line_file(path, &s), 0);
        assert_non_null(s);
        assert_string_equal(s, expect);
}

static void test_read_one_line_file(void **state) {
        check_read("plain", "hello\n", 6, "hello");
        check_read("no-newline", "hello", 5, "hello");
        check_read("empty", "", 0, "");
        check_read("only-newline", "\n", 1, "");
        /* Only one trailing newline belongs to the file format; the rest is the value (a
         * backing file name may contain or end in newlines). */
        check_read("two-lines", "a\nb\n", 4, "a\nb");
        check_read("double-newline", "x\n\n", 3, "x\n");
        check_read("spaces", "/var/tmp/a b.img (deleted)\n", 27, "/var/tmp/a b.img (deleted)");
}

static void test_read_one_line_file_long(void **state) {
        /* Longer than the first buffer size, to exercise the growing path. */
        size_t n = 5000;
        _cleanup_free_ char *data = malloc(n + 1), *expect = NULL, *path = NULL, *s = NULL;

        assert_non_null(data);
        memset(data, 'x', n - 1);
        data[n - 1] = '\n';
        data[n] = '\0';
        expect = strndup(data, n - 1);
        assert_non_null(expect);

        path = write_file("long", data, n);
        assert_int_equal(read_one_line_file(path, &s), 0);
        assert_int_equal(strlen(s), n - 1);
        assert_string_equal(s, expect);
}

static void test_read_one_line_file_errors(void **state) {
        _cleanup_free_ char *missing = NULL, *nul = NULL, *huge = NULL, *bigdata = NULL;
        char *s = (char *) 0x1;
        size_t bign = 200 * 1024;

        assert_true(asprintf(&missing, "%s/does-not-exist", tmpdir) > 0);
        assert_int_equal(read_one_line_file(missing, &s), -ENOENT);
        assert_ptr_equal(s, (char *) 0x1);

        nul = write_file("nul", "ab\0cd\n", 6);
        assert_int_equal(read_one_line_file(nul, &s), -EBADMSG);
        assert_ptr_equal(s, (char *) 0x1);

        assert_int_equal(read_one_line_file(tmpdir, &s), -EISDIR);
        assert_ptr_equal(s, (char *) 0x1);

        bigdata = malloc(bign);
        assert_non_null(bigdata);
        memset(bigdata, 'y', bign);
        huge = write_file("huge", bigdata, bign);
        assert_int_equal(read_one_line_file(huge, &s), -EFBIG);
        assert_ptr_equal(s, (char *) 0x1);
}

static void test_safe_atou64(void **state) {
        uint64_t v;

        assert_int_equal(safe_atou64("0", &v), 0);
        assert_true(v == 0);
        assert_int_equal(safe_atou64("42", &v), 0);
        assert_true(v == 42);
        assert_int_equal(safe_atou64("007", &v), 0);
        assert_true(v == 7);
        assert_int_equal(safe_atou64("18446744073709551615", &v), 0);
        assert_true(v == UINT64_MAX);
        assert_int_equal(safe_atou64("18446744073709551614", &v), 0);
        assert_true(v == UINT64_MAX - 1);

        v = 12345;
        /* Overflow, just past the limit and far past it. */
        assert_int_equal(safe_atou64("18446744073709551616", &v), -ERANGE);
        assert_int_equal(safe_atou64("18446744073709551620", &v), -ERANGE);
        assert_int_equal(safe_atou64("99999999999999999999999", &v), -ERANGE);
        /* Signs: strtoull() would turn "-1" into UINT64_MAX. */
        assert_int_equal(safe_atou64("-1", &v), -EINVAL);
        assert_int_equal(safe_atou64("-0", &v), -EINVAL);
        assert_int_equal(safe_atou64("+1", &v), -EINVAL);
        /* Empty, white space, junk, other bases. */
        assert_int_equal(safe_atou64("", &v), -EINVAL);
        assert_int_equal(safe_atou64(NULL, &v), -EINVAL);
        assert_int_equal(safe_atou64(" 1", &v), -EINVAL);
        assert_int_equal(safe_atou64("1 ", &v), -EINVAL);
        assert_int_equal(safe_atou64("1\n", &v), -EINVAL);
        assert_int_equal(safe_atou64("1a", &v), -EINVAL);
        assert_int_equal(safe_atou64("0x10", &v), -EINVAL);
        assert_int_equal(safe_atou64("1.5", &v), -EINVAL);
        assert_int_equal(safe_atou64("1e3", &v), -EINVAL);
        /* Output untouched on failure. */
        assert_true(v == 12345);
}

static void check_join(const char *root, const char *path, const char *expect) {
        _cleanup_free_ char *s = path_join_root(root, path);

        assert_non_null(s);
        assert_string_equal(s, expect);
}

static void test_parse_devnum(void **state) {
        dev_t d = 0;

        assert_int_equal(parse_devnum("7:5", &d), 0);
        assert_true(d == makedev(7, 5));
        assert_int_equal(parse_devnum("4095:1048575", &d), 0);
        assert_true(d == makedev(4095, 1048575));

        d = makedev(1, 1);
        assert_int_equal(parse_devnum("7", &d), -EINVAL);
        assert_int_equal(parse_devnum("7:x", &d), -EINVAL);
        assert_int_equal(parse_devnum(":5", &d), -EINVAL);
        assert_int_equal(parse_devnum("-7:5", &d), -EINVAL);
        assert_int_equal(parse_devnum("4096:0", &d), -EINVAL);    /* 12-bit major */
        assert_int_equal(parse_devnum("7:1048576", &d), -EINVAL); /* 20-bit minor */
        assert_int_equal(parse_devnum("", &d), -EINVAL);
        assert_true(d == makedev(1, 1)); /* untouched on failure */
}

static void test_path_join_root(void **state) {
        check_join(NULL, "/sys/block", "/sys/block");
        check_join("/", "/sys/block", "/sys/block");
        check_join("", "/sys/block", "/sys/block");
        check_join("//", "/sys/block", "/sys/block");
        check_join("/tmp/fake", "/sys/block", "/tmp/fake/sys/block");
        check_join("/tmp/fake/", "/sys/block", "/tmp/fake/sys/block");
        check_join("/tmp/fake//", "//sys/block", "/tmp/fake/sys/block");
        check_join("/tmp/fake", "sys/block", "/tmp/fake/sys/block");
        check_join("/tmp/fake", "/", "/tmp/fake/");
        check_join(NULL, "/", "/");
        check_join("relative/root", "/dev/loop0", "relative/root/dev/loop0");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_read_one_line_file),
                cmocka_unit_test(test_read_one_line_file_long),
                cmocka_unit_test(test_read_one_line_file_errors),
                cmocka_unit_test(test_safe_atou64),
                cmocka_unit_test(test_parse_devnum),
                cmocka_unit_test(test_path_join_root),
        };

        return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
