/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-mount's tests: ext4, squashfs and vfat images, mount-others, polkit's no, names,
 * refusals, an external umount, a daemon restart, udev properties. */

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "polkit-util.h"
#include "test-mount.h"

/* ------------------------------------------------------------------------------------------ */
/* Tests */

/* lmdesk1 opens an ext4 image as `loopmgrctl open` would: Attach, Mount(release-reference). */
void test_ext4_owner(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "e.img", "Holiday");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL, *file = NULL, *prop = NULL;
        static PkReply p;

        user_attach(e, U1, img, false, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp = strdup(mount_point_of(e, &p));
        assert_string_equal(mp, MEDIA "/lmdesk1/Holiday");
        expect_mounted(mp, "ext4", (const char *[]){"rw", "nosuid", "nodev", NULL}, NULL);

        prop = get_string_prop(e, a.object, "MountPoint");
        assert_string_equal(prop, mp);
        assert_int_equal(get_u32_prop(e, a.object, "MountUser"), ctx.uid[U1]);
        assert_int_equal(get_u32_prop(e, a.object, "References"), 1);
        free(prop);
        prop = get_string_prop(e, a.object, "IdType");
        assert_string_equal(prop, "ext4");
        free(prop);
        prop = get_string_prop(e, a.object, "IdLabel");
        assert_string_equal(prop, "Holiday");

        /* The user reads the file; the other user cannot even enter /run/media/lmdesk1. */
        assert_true(asprintf(&file, "%s/hello.txt", mp) > 0);
        if (user_read(U1, file, &p) < 0)
                fail_msg("lmdesk1 cannot read %s: %s", file, pk_reply_error(&p));
        assert_string_equal(p.data, "hello from e.img\n");
        assert_int_equal(user_read(U2, file, &p), -EACCES);

        /* A second Mount: the same mount point, no second mount. */
        user_device_call(U1, a.object, "Mount", &p, 0);
        pk_expect_ok(&p, "second Mount");
        assert_string_equal(pk_reply_value(&p, 0, 's')->string, mp);

        /* A second `open`: Attach reuses the device, Mount(release-reference) returns the same
         * mount point and drops the surplus reference, as the mount holds one already. */
        {
                _cleanup_attached_ Attached again = {};
                user_attach(e, U1, img, false, &again);
                assert_string_equal(again.object, a.object);
                assert_int_equal(get_u32_prop(e, a.object, "References"), 2);
                user_device_call(U1, a.object, "Mount", &p, 1,
                                 OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
                pk_expect_ok(&p, "Mount of the reused device");
                assert_string_equal(pk_reply_value(&p, 0, 's')->string, mp);
                assert_int_equal(get_u32_prop(e, a.object, "References"), 1);
        }

        /* lmdesk2: no mount of its own here, no mount-others. */
        user_device_call(U2, a.object, "Mount", &p, 0);
        pk_expect_error(&p, LOOPMGR_ERROR_BUSY, "Mount of lmdesk1's mount by lmdesk2");
        user_device_call(U2, a.object, "Unmount", &p, 0);
        pk_expect_error(&p, ERROR_ACCESS_DENIED, "Unmount by lmdesk2");
        assert_true(mountinfo_find(mp, NULL, NULL, NULL));

        /* Unmount: the mount goes, its directory too, and with its reference the device. */
        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount");
        env_forget_mount(e, mp);
        assert_false(mountinfo_find(mp, NULL, NULL, NULL));
        assert_int_equal(access(mp, F_OK), -1);
        expect_device_gone(e, &a);
        size_t n = 1;
        assert_int_equal(losetup_count_backed_by(img, false, &n), 0);
        assert_int_equal(n, 0);

        user_device_call(U1, a.object, "Unmount", &p, 0);
        assert_true(p.r < 0);
}

/* squashfs: read-only whatever the device, readable by its user. */
void test_squashfs(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_squashfs(e, U1, "s.sqfs");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL, *file = NULL;
        static PkReply p;

        user_attach(e, U1, img, true, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp = strdup(mount_point_of(e, &p));
        /* squashfs has neither label nor UUID. */
        assert_string_equal(mp, MEDIA "/lmdesk1/disk");
        expect_mounted(mp, "squashfs", (const char *[]){"ro", "nosuid", "nodev", NULL}, NULL);
        assert_true(asprintf(&file, "%s/hello.txt", mp) > 0);
        if (user_read(U1, file, &p) < 0)
                fail_msg("lmdesk1 cannot read %s: %s", file, pk_reply_error(&p));
        assert_string_equal(p.data, "hello from s.sqfs\n");

        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount");
        env_forget_mount(e, mp);
        expect_device_gone(e, &a);
}

/* A read-only device gets a read-only mount; vfat gets the caller's uid= and gid=. */
void test_vfat_owner_ids(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_vfat(e, U1, "v.img", "STICK");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL, *uid = NULL, *gid = NULL;
        static PkReply p;

        user_attach(e, U1, img, true, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        if (!kernel_has_fs("vfat")) {
                /* Kernels without FAT (no driver, no modules): the daemon says so, and leaves
                 * nothing behind. uid=/gid= are covered by test-mount-unit then. */
                pk_expect_error(&p, "org.freedesktop.DBus.Error.NotSupported", "Mount of vfat");
                assert_non_null(strstr(p.error_message, "vfat"));
                assert_int_equal(access(MEDIA "/lmdesk1/STICK", F_OK), -1);
                _cleanup_free_ char *type = get_string_prop(e, a.object, "IdType");
                assert_string_equal(type, "vfat");
                _cleanup_free_ char *label = get_string_prop(e, a.object, "IdLabel");
                assert_string_equal(label, "STICK");
                print_message("  this kernel has no vfat: Mount refused as expected\n");
                user_detach(e, U1, &a, true);
                return;
        }
        mp = strdup(mount_point_of(e, &p));
        assert_string_equal(mp, MEDIA "/lmdesk1/STICK");
        assert_true(asprintf(&uid, "uid=%u", (unsigned) ctx.uid[U1]) > 0);
        assert_true(asprintf(&gid, "gid=%u", (unsigned) ctx.gid[U1]) > 0);
        expect_mounted(mp, "vfat", (const char *[]){"ro", "nosuid", "nodev", NULL},
                       (const char *[]){uid, gid, NULL});
        struct stat st;
        assert_int_equal(stat(mp, &st), 0);
        assert_int_equal(st.st_uid, ctx.uid[U1]);

        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount");
        env_forget_mount(e, mp);
        expect_device_gone(e, &a);
}

/* Unmount of another user's mount with mount-others; Mount of another user's device needs it
 * too. */
void test_mount_others(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "o.img", "shared");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL;
        static PkReply p;

        user_attach(e, U1, img, false, &a);
        /* Not mounted yet: lmdesk2 holds no reference, polkit says no to mount-others. */
        user_device_call(U2, a.object, "Mount", &p, 0);
        pk_expect_error(&p, ERROR_ACCESS_DENIED, "Mount of lmdesk1's device by lmdesk2");

        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp = strdup(mount_point_of(e, &p));

        set_rules(BASE_RULES RULE("mount-others", "lmdesk2", "YES"));
        expect_verdict(U2, "org.loopmgr.mount-others", PK_VERDICT_YES);
        user_device_call(U2, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount by lmdesk2 with mount-others");
        env_forget_mount(e, mp);
        assert_false(mountinfo_find(mp, NULL, NULL, NULL));
        expect_device_gone(e, &a);
}

/* polkit says no to org.loopmgr.mount: AccessDenied, nothing mounted. */
void test_polkit_no(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "n.img", "nope");
        _cleanup_attached_ Attached a = {};
        static PkReply p;

        set_rules(RULE("attach", "lmdesk1", "YES") RULE("mount", "lmdesk1", "NO"));
        expect_verdict(U1, "org.loopmgr.mount", PK_VERDICT_NO);
        expect_verdict(U1, "org.loopmgr.attach", PK_VERDICT_YES);
        user_attach(e, U1, img, false, &a);
        user_device_call(U1, a.object, "Mount", &p, 0);
        pk_expect_error(&p, ERROR_ACCESS_DENIED, "Mount with polkit saying no");
        assert_false(mountinfo_find(MEDIA "/lmdesk1/nope", NULL, NULL, NULL));
        assert_int_equal(access(MEDIA "/lmdesk1/nope", F_OK), -1);
        _cleanup_free_ char *mpp = get_string_prop(e, a.object, "MountPoint");
        assert_string_equal(mpp, "");
        assert_int_equal(get_u32_prop(e, a.object, "MountUser"), UINT32_MAX);
        user_detach(e, U1, &a, true);
}

/* Labels are the user's: '/' and leading dots are replaced; a taken name gets a suffix. */
void test_names(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img1 = make_ext4(e, U1, "n1.img", "..a/b");
        _cleanup_free_ char *img2 = make_ext4(e, U1, "n2.img", "..a/b");
        _cleanup_attached_ Attached a1 = {}, a2 = {};
        _cleanup_free_ char *mp1 = NULL, *mp2 = NULL;
        static PkReply p;

        user_attach(e, U1, img1, false, &a1);
        user_attach(e, U1, img2, false, &a2);
        user_device_call(U1, a1.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp1 = strdup(mount_point_of(e, &p));
        user_device_call(U1, a2.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp2 = strdup(mount_point_of(e, &p));
        assert_string_equal(mp1, MEDIA "/lmdesk1/__a_b");
        assert_string_equal(mp2, MEDIA "/lmdesk1/__a_b1");
        expect_mounted(mp2, "ext4", (const char *[]){"nosuid", "nodev", NULL}, NULL);

        /* A symbolic link planted where a name would go is never followed: root could, but
         * the daemon makes its own directory next to it. */
        assert_int_equal(symlink("/etc", MEDIA "/lmdesk1/__a_b2"), 0);
        _cleanup_free_ char *img3 = make_ext4(e, U1, "n3.img", "..a/b");
        _cleanup_attached_ Attached a3 = {};
        user_attach(e, U1, img3, false, &a3);
        user_device_call(U1, a3.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        _cleanup_free_ char *mp3 = strdup(mount_point_of(e, &p));
        (void) unlink(MEDIA "/lmdesk1/__a_b2");
        assert_string_equal(mp3, MEDIA "/lmdesk1/__a_b3");
        assert_false(mountinfo_find("/etc", NULL, NULL, NULL));

        for (unsigned i = 0; i < 3; i++) {
                const Attached *a = i == 0 ? &a1 : i == 1 ? &a2 : &a3;
                const char *mp = i == 0 ? mp1 : i == 1 ? mp2 : mp3;
                user_device_call(U1, a->object, "Unmount", &p, 0);
                pk_expect_ok(&p, "Unmount");
                env_forget_mount(e, mp);
                expect_device_gone(e, a);
        }
}

/* Options that are not allowed, no file system, no reference to hand over. */
void test_refusals(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "r.img", "refuse");
        _cleanup_free_ char *blank = make_blank(e, U1, "blank.img");
        _cleanup_attached_ Attached a = {}, b = {};
        static PkReply p;

        user_attach(e, U1, img, false, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_S(LOOPMGR_OPT_FSTYPE, "nfs"));
        pk_expect_error(&p, ERROR_INVALID_ARGS, "fstype nfs");
        assert_non_null(strstr(p.error_message, "nfs"));
        user_device_call(U1, a.object, "Mount", &p, 1,
                         OPT_S(LOOPMGR_OPT_MOUNT_OPTIONS, "noatime,suid"));
        pk_expect_error(&p, ERROR_INVALID_ARGS, "options suid");
        assert_non_null(strstr(p.error_message, "'suid'"));
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_S(LOOPMGR_OPT_MOUNT_OPTIONS, "dev"));
        pk_expect_error(&p, ERROR_INVALID_ARGS, "options dev");
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B("bogus", true));
        pk_expect_error(&p, ERROR_INVALID_ARGS, "unknown option");
        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_error(&p, LOOPMGR_ERROR_NOT_MOUNTED, "Unmount of nothing");
        /* lmdesk2 has no reference to hand over (and it is not its device). */
        user_device_call(U2, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        pk_expect_error(&p, ERROR_INVALID_ARGS, "release-reference without a reference");

        /* The lifetime of a mount's reference is the daemon's own. */
        {
                static PkRequest q;
                pk_request_call(&q, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, "Attach");
                assert_int_equal(pk_request_arg(&q, 'h', O_RDWR, img), 0);
                assert_int_equal(pk_request_options(&q, 1, OPT_S(LOOPMGR_OPT_LIFETIME, "mount")),
                                 0);
                agent_do(U1, &q, &p);
                pk_expect_error(&p, ERROR_INVALID_ARGS, "Attach with lifetime mount");
        }

        /* Extra options that are allowed: ro and noexec. */
        user_device_call(U1, a.object, "Mount", &p, 1,
                         OPT_S(LOOPMGR_OPT_MOUNT_OPTIONS, "ro,noexec,noatime"));
        _cleanup_free_ char *mp = strdup(mount_point_of(e, &p));
        expect_mounted(mp, "ext4",
                       (const char *[]){"ro", "noexec", "noatime", "nosuid", "nodev", NULL}, NULL);
        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount");
        env_forget_mount(e, mp);
        /* No reference was handed over: the device stays. */
        assert_true(object_exists(e, a.object));

        user_attach(e, U1, blank, false, &b);
        user_device_call(U1, b.object, "Mount", &p, 0);
        pk_expect_error(&p, LOOPMGR_ERROR_NO_FILE_SYSTEM, "Mount of a blank image");
        user_detach(e, U1, &a, true);
        user_detach(e, U1, &b, true);
}

/* umount(8) behind the daemon's back: MountPoint is cleared, the reference released. */
void test_external_umount(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "x.img", "extern");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL;
        static PkReply p;

        user_attach(e, U1, img, false, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp = strdup(mount_point_of(e, &p));
        assert_int_equal(env_umount(e, mp), 0);
        expect_device_gone(e, &a);
        assert_int_equal(access(mp, F_OK), -1);
}

/* A daemon restart keeps the mount and its reference (state record, mountinfo). */
void test_restart(void **state) {
        Env *e = *state;
        _cleanup_free_ char *img = make_ext4(e, U1, "k.img", "keep");
        _cleanup_attached_ Attached a = {};
        _cleanup_free_ char *mp = NULL, *prop = NULL;
        static PkReply p;

        user_attach(e, U1, img, false, &a);
        user_device_call(U1, a.object, "Mount", &p, 1, OPT_B(LOOPMGR_OPT_RELEASE_REFERENCE, true));
        mp = strdup(mount_point_of(e, &p));

        /* The agents' connections would not survive the restart's checks: stop them. */
        for (unsigned i = 0; i < N_USERS; i++)
                pk_agent_stop(&ctx.agents[i]);
        assert_int_equal(env_stop_daemon(e), 0);
        assert_int_equal(env_start_daemon(e), 0);
        for (unsigned i = 0; i < N_USERS; i++)
                assert_int_equal(pk_agent_start(&ctx.agents[i], ctx.uid[i], ctx.gid[i]), 0);
        expect_verdict(U1, "org.loopmgr.mount", PK_VERDICT_YES);

        prop = get_string_prop(e, a.object, "MountPoint");
        assert_string_equal(prop, mp);
        assert_int_equal(get_u32_prop(e, a.object, "MountUser"), ctx.uid[U1]);
        assert_int_equal(get_u32_prop(e, a.object, "References"), 1);

        /* Detach of the user's own reference prefers one that no mount holds. */
        _cleanup_attached_ Attached again = {};
        user_attach(e, U1, img, false, &again);
        assert_string_equal(again.object, a.object);
        assert_int_equal(get_u32_prop(e, a.object, "References"), 2);
        {
                static PkRequest q;
                pk_request_call(&q, a.object, LOOPMGR_DEVICE_INTERFACE, "Detach");
                agent_do(U1, &q, &p);
                pk_expect_ok(&p, "Detach");
        }
        assert_int_equal(get_u32_prop(e, a.object, "References"), 1);
        assert_true(mountinfo_find(mp, NULL, NULL, NULL));

        user_device_call(U1, a.object, "Unmount", &p, 0);
        pk_expect_ok(&p, "Unmount after the restart");
        env_forget_mount(e, mp);
        expect_device_gone(e, &a);
}

/* udev properties of managed devices, through the rule of udev/90-loopmgr.rules. */
void test_udev_properties(void **state) {
        Env *e = *state;
        _cleanup_free_ char *rules = NULL, *text = NULL, *out = NULL, *img = NULL;
        _cleanup_attached_ Attached a = {};
        size_t size = 0;

        assert_true(asprintf(&rules, "%s/udev/90-loopmgr.rules", ctx.srcdir) > 0);
        FILE *f = fopen(rules, "re");
        assert_non_null(f);
        assert_true(getdelim(&text, &size, '\0', f) > 0);
        fclose(f);
        assert_int_equal(env_add_udev_rule(e, text), 0);

        img = make_ext4(e, U1, "u.img", "udev");
        user_attach(e, U1, img, false, &a);
        /* Attach answered once udev processed the binding; the file was there before. */
        assert_int_equal(env_run(&out, NULL, "udevadm", "info", "--query=property", a.node, NULL),
                         0);
        print_message("  udevadm info %s:\n%s", a.node, out);
        /* IdType/IdLabel: probed when udev reported the binding, before Attach answered. */
        _cleanup_free_ char *type = get_string_prop(e, a.object, "IdType");
        _cleanup_free_ char *label = get_string_prop(e, a.object, "IdLabel");
        assert_string_equal(type, "ext4");
        assert_string_equal(label, "udev");
        assert_non_null(strstr(out, "LOOPMGR_MANAGED=1\n"));
        _cleanup_free_ char *owner = NULL, *owner_uid = NULL;
        assert_true(asprintf(&owner, "LOOPMGR_OWNER=%s\n", user_names[U1]) > 0);
        assert_true(asprintf(&owner_uid, "LOOPMGR_OWNER_UID=%u\n", (unsigned) ctx.uid[U1]) > 0);
        assert_non_null(strstr(out, owner));
        assert_non_null(strstr(out, owner_uid));

        /* The file goes with the binding. */
        _cleanup_free_ char *file = NULL;
        assert_true(asprintf(&file, "/run/loopmgr/udev/%s", a.node + 5) > 0);
        assert_int_equal(access(file, R_OK), 0);
        user_detach(e, U1, &a, true);
        /* Gone, or (other daemons share the kernel) describing somebody else's new binding. */
        _cleanup_free_ char *left = NULL, *mine = NULL;
        assert_true(asprintf(&mine, "LOOPMGR_DISKSEQ=%" PRIu64 "\n", a.diskseq) > 0);
        if (read_one_line_file(file, &left) >= 0) {
                FILE *g = fopen(file, "re");
                char buf[512] = "";
                if (g) {
                        size_t n = fread(buf, 1, sizeof(buf) - 1, g);
                        buf[n] = 0;
                        fclose(g);
                }
                if (strstr(buf, mine))
                        fail_msg("%s still describes the detached binding:\n%s", file, buf);
        }
}
