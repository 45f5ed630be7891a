/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The pure parts of daemon/core/media-mount.c and daemon/host/udev-props.c: allowed file system
 * types, extra mount options, mount directory names from labels, the flags and data handed to
 * mount(2) (nosuid,nodev always, ro where it belongs, uid=/gid= for file systems without
 * owners), the udev properties files under a fake root, and the decoding of udev's *_ENC
 * values. No root, no devices.
 */

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "media-mount.h"
#include "udev-props.h"
#include "util.h"

static void test_types(void **state) {
        const char *allowed[] = {"ext2", "ext3",  "ext4",  "xfs",   "btrfs",   "squashfs", "erofs",
                                 "vfat", "msdos", "exfat", "ntfs3", "iso9660", "udf",      "f2fs"};
        for (size_t i = 0; i < ELEMENTSOF(allowed); i++)
                assert_true(mount_fstype_allowed(allowed[i]));
        const char *refused[] = {"",     "nfs",  "cifs", "proc",  "sysfs", "tmpfs", "overlay",
                                 "fuse", "ntfs", "EXT4", "ext4 ", "bind",  "swap",  "crypto_LUKS"};
        for (size_t i = 0; i < ELEMENTSOF(refused); i++)
                assert_false(mount_fstype_allowed(refused[i]));
        assert_false(mount_fstype_allowed(NULL));

        assert_true(mount_fstype_ownerless("vfat"));
        assert_true(mount_fstype_ownerless("exfat"));
        assert_true(mount_fstype_ownerless("iso9660"));
        assert_false(mount_fstype_ownerless("ext4"));
        assert_false(mount_fstype_ownerless("squashfs"));
        assert_true(mount_fstype_read_only("squashfs"));
        assert_true(mount_fstype_read_only("erofs"));
        assert_true(mount_fstype_read_only("iso9660"));
        assert_false(mount_fstype_read_only("ext4"));
}

static void test_extra_options(void **state) {
        unsigned long flags = 0;
        char *bad = NULL;

        assert_int_equal(mount_parse_extra_options(NULL, &flags, &bad), 0);
        assert_int_equal(mount_parse_extra_options("", &flags, &bad), 0);
        assert_int_equal(flags, 0);
        assert_int_equal(mount_parse_extra_options("ro,noexec,noatime,nodiratime,relatime,sync,"
                                                   "dirsync",
                                                   &flags, &bad),
                         0);
        assert_int_equal(flags, MS_RDONLY | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME |
                                        MS_SYNCHRONOUS | MS_DIRSYNC);

        const char *refused[][2] = {
                {"suid", "suid"},       {"noatime,dev", "dev"},
                {"exec", "exec"},       {"ro,,noexec", ""},
                {"rw", "rw"},           {"bind", "bind"},
                {"uid=0", "uid=0"},     {"ro,", ""},
                {"remount", "remount"}, {"noexec,nosuid", "nosuid"},
        };
        for (size_t i = 0; i < ELEMENTSOF(refused); i++) {
                flags = 0;
                bad = NULL;
                assert_int_equal(mount_parse_extra_options(refused[i][0], &flags, &bad), -EINVAL);
                assert_non_null(bad);
                assert_string_equal(bad, refused[i][1]);
                free(bad);
        }
}

static void check_name(const char *label, const char *uuid, const char *expected) {
        MountProbe p = {.label = (char *) label, .uuid = (char *) uuid};
        char *name = NULL;
        assert_int_equal(mount_name_from_probe(&p, &name), 0);
        assert_string_equal(name, expected);
        free(name);
}

static void test_names(void **state) {
        check_name("Holiday", "1234", "Holiday");
        check_name(NULL, "1234-ABCD", "1234-ABCD");
        check_name("", "1234-ABCD", "1234-ABCD");
        check_name(NULL, NULL, "disk");
        check_name("a/b", NULL, "a_b");
        check_name("/", NULL, "_");
        check_name(".", NULL, "_");
        check_name("..", NULL, "__");
        check_name("../../etc", NULL, "___.._etc");
        check_name(".hidden", NULL, "_hidden");
        check_name("a.b", NULL, "a.b");
        check_name("new\nline\ttab", NULL, "new_line_tab");
        check_name("My Disk", NULL, "My Disk");
        check_name("Ünïcödé", NULL, "Ünïcödé");

        /* Long labels are cut, never inside a UTF-8 sequence. */
        char longlabel[400];
        memset(longlabel, 'x', 199);
        strcpy(longlabel + 199, "é and more");
        MountProbe p = {.label = longlabel};
        char *name = NULL;
        assert_int_equal(mount_name_from_probe(&p, &name), 0);
        assert_int_equal(strlen(name), 199);
        free(name);
}

static void test_flags_and_data(void **state) {
        MountRequest req = {.uid = 1000, .gid = 1001, .user = "u", .flags = 0};
        unsigned long flags;
        char *data = NULL;

        assert_int_equal(mount_flags_and_data("ext4", &req, &flags, &data), 0);
        assert_int_equal(flags, MS_NOSUID | MS_NODEV);
        assert_null(data);

        assert_int_equal(mount_flags_and_data("squashfs", &req, &flags, &data), 0);
        assert_int_equal(flags, MS_NOSUID | MS_NODEV | MS_RDONLY);
        assert_null(data);

        assert_int_equal(mount_flags_and_data("vfat", &req, &flags, &data), 0);
        assert_int_equal(flags, MS_NOSUID | MS_NODEV);
        assert_string_equal(data, "uid=1000,gid=1001");
        free(data);

        req.read_only = true;
        req.flags = MS_NOEXEC | MS_BIND | MS_REMOUNT | MS_REC;
        assert_int_equal(mount_flags_and_data("iso9660", &req, &flags, &data), 0);
        assert_int_equal(flags, MS_NOSUID | MS_NODEV | MS_RDONLY | MS_NOEXEC);
        assert_string_equal(data, "uid=1000,gid=1001");
        free(data);

        req.read_only = false;
        req.flags = MS_RDONLY;
        assert_int_equal(mount_flags_and_data("xfs", &req, &flags, &data), 0);
        assert_int_equal(flags, MS_NOSUID | MS_NODEV | MS_RDONLY);
        assert_null(data);
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

static char *read_file(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t size = 0;
        if (!f)
                return NULL;
        if (getdelim(&buf, &size, '\0', f) < 0) {
                free(buf);
                buf = NULL;
        }
        fclose(f);
        return buf;
}

static void test_udev_props(void **state) {
        char root[] = "/tmp/loopmgr-mount-unit.XXXXXX";
        _cleanup_free_ char *run = NULL, *file = NULL, *text = NULL;

        assert_non_null(mkdtemp(root));
        assert_true(asprintf(&run, "%s/run", root) > 0);
        assert_int_equal(mkdir(run, 0755), 0);
        assert_true(asprintf(&file, "%s/run/loopmgr/udev/loop7", root) > 0);

        assert_int_equal(udev_props_write(root, "loop7", 0, 0), 0);
        text = read_file(file);
        assert_non_null(text);
        assert_string_equal(text, "LOOPMGR_MANAGED=1\nLOOPMGR_OWNER_UID=0\nLOOPMGR_OWNER=root\n");
        free(text);

        assert_int_equal(udev_props_write(root, "loop7", 0, 42), 0);
        text = read_file(file);
        assert_non_null(strstr(text, "LOOPMGR_DISKSEQ=42\n"));

        /* Only the binding the file describes removes it. */
        udev_props_remove(root, "loop7", 41);
        assert_int_equal(access(file, F_OK), 0);
        udev_props_remove(root, "loop7", 42);
        assert_int_equal(access(file, F_OK), -1);

        /* Names that are not loop devices are refused. */
        assert_int_equal(udev_props_write(root, "../x", 0, 1), -EINVAL);
        assert_int_equal(udev_props_write(root, "sda", 0, 1), -EINVAL);

        (void) nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void test_udev_decode(void **state) {
        char s1[] = "My\\x20Disk\\x2fx", s2[] = "a\\x00b\\x4", s3[] = "\\xzz\\x41";

        udev_decode_string(s1);
        assert_string_equal(s1, "My Disk/x");
        /* A NUL is never produced; a cut-off or non-hex escape stays as it is. */
        udev_decode_string(s2);
        assert_string_equal(s2, "a\\x00b\\x4");
        udev_decode_string(s3);
        assert_string_equal(s3, "\\xzzA");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_types),      cmocka_unit_test(test_extra_options),
                cmocka_unit_test(test_names),      cmocka_unit_test(test_flags_and_data),
                cmocka_unit_test(test_udev_props), cmocka_unit_test(test_udev_decode),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
