/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Partitioned disk images (issue 15): `loopmgrctl open` of an image holding a partition table
 * mounts every partition with a file system, and `close` unmounts them all; the daemon's
 * Partitions property and the partition option of Device.Mount / Device.Unmount.
 *
 * The setting is test-desktop's (tests/test-desktop.c, whose helpers this binary shares): the
 * unprivileged user lmopen1 (lmopen2 only stands by), the real polkitd of tests/env.sh with the
 * rules file 49-loopmgr-open.rules and the lock /run/loopmgr-test-open.lock (so this binary and
 * test-desktop never run at the same time), loopmgrctl copied to <tmpdir>/bin where the user
 * reaches it.
 *
 * The images are made without a loop device: sfdisk writes the partition table into the file,
 * each file system is made by mkfs.ext4 -d in a file of its own and copied into its partition
 * with dd conv=notrunc. Layout (80 MiB): partition 1 at 1 MiB, 32 MiB, ext4 "LMP1"; partition 2
 * at 33 MiB, 40 MiB, ext4 "LMP2"; each holds hello.txt with a text of its own. A kernel without
 * the table's parser (this host has neither the EFI nor the MSDOS one) makes no partitions
 * itself; the daemon then adds them with BLKPG, so the tests hold on either kernel.
 *
 * After every test: no mount under /run/media/lmopen{1,2}, no device backed by the temporary
 * directory, no partition left on a loop device a test made, no process of the users.
 *
 * Run:   eval "$(LOOPMGR_TEST_ENV=/run/loopmgr-parts tests/env.sh start)"
 *        meson test -C BUILD test-desktop-parts
 */

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "polkit-util.h"
#include "test-desktop.h"

#define ERROR_INVALID_ARGS "org.freedesktop.DBus.Error.InvalidArgs"
#define NO_MOUNT_USER      UINT32_C(0xFFFFFFFF)
#define MIB                (UINT64_C(1024) * 1024)
#define IMAGE_SIZE         (80 * MIB)
#define MEDIA_U1           MEDIA_DIR "/lmopen1"
#define NO_EFI_REASON                                                                              \
        "this kernel has no GPT parser (efi_partition not in /proc/kallsyms): the daemon adds "    \
        "the partitions with BLKPG"

const char *const user_names[] = {"lmopen1", "lmopen2"};

bool group_failed;

static const struct Layout {
        uint64_t start, size;
        const char *label, *name, *text;
} layout[2] = {
        {1 * MIB, 32 * MIB, "LMP1", "lmp-one", "Hello from the first partition.\n"},
        {33 * MIB, 40 * MIB, "LMP2", "lmp-two", "Hello from the second partition.\n"},
};

typedef enum Table { TABLE_GPT, TABLE_DOS } Table;

/* One binding a test made or had made: its partitions must go with it. */
typedef struct Disk {
        char name[32];
        uint64_t diskseq;
        const char *object; /* gc() */
} Disk;

static Disk seen[16];
static size_t n_seen;

/* A Partitions entry; the strings gc(). */
typedef struct Part {
        uint32_t number;
        const char *node;
        uint64_t offset, size;
        const char *type, *label, *uuid, *mount_point;
        uint32_t mount_user;
} Part;

#define MAX_PARTS 8

/* ------------------------------------------------------------------------------------------ */
/* Images */

/* ext4 labelled layout[i].label with hello.txt, made in a file of its own and copied into
 * partition i + 1 of image. */
static void put_ext4(Ctx *c, const char *image, unsigned i) {
        char *tree = gc(c, env_make_dir(c->e, "tree"));
        char *file = gc(c, env_join(tree, "hello.txt"));
        char *fs = fmt(c, "%s/fs-%u.ext4", c->e->tmpdir, ++c->e->file_counter);
        _cleanup_fclose_ FILE *f = NULL;

        assert_int_equal(chmod(tree, 0755), 0); /* the file system's root directory */
        f = fopen(file, "we");
        assert_non_null(f);
        assert_true(fputs(layout[i].text, f) >= 0);
        assert_int_equal(fflush(f), 0);
        assert_int_equal(chmod(file, 0644), 0);

        make_sparse(fs, layout[i].size);
        env_run_ok("mkfs.ext4", "-q", "-F", "-L", layout[i].label, "-d", tree, fs);
        env_run_ok("dd", fmt(c, "if=%s", fs), fmt(c, "of=%s", image), "bs=1M",
                   fmt(c, "seek=%" PRIu64, layout[i].start / MIB), "conv=notrunc", "status=none");
        assert_int_equal(unlink(fs), 0);
}

/* An image of lmopen1's with two partitions; ext4 in partition i + 1 when bit i of fs_mask is
 * set, nothing (zeros) otherwise. */
static char *make_disk(Ctx *c, const char *name, Table table, unsigned fs_mask) {
        char *image = gc(c, env_join(c->dir[U1], name));
        char *script = fmt(c, "label: %s\n", table == TABLE_GPT ? "gpt" : "dos");
        _cleanup_free_ char *out = NULL, *err = NULL;
        char *argv[] = {(char *) "sfdisk", (char *) "-q", image, NULL};

        for (unsigned i = 0; i < ELEMENTSOF(layout); i++) {
                if (table == TABLE_GPT)
                        script = fmt(c, "%sstart=%" PRIu64 ", size=%" PRIu64 ", type=L, name=%s\n",
                                     script, layout[i].start / 512, layout[i].size / 512,
                                     layout[i].name);
                else
                        script = fmt(c, "%sstart=%" PRIu64 ", size=%" PRIu64 ", type=83\n", script,
                                     layout[i].start / 512, layout[i].size / 512);
        }
        make_sparse(image, IMAGE_SIZE);
        int r = run_command(argv, script, &out, &err);
        if (r != 0)
                fail_msg("sfdisk %s -> %d: %s", image, r, err ?: "");
        for (unsigned i = 0; i < ELEMENTSOF(layout); i++)
                if (fs_mask & (1U << i))
                        put_ext4(c, image, i);
        give(c, U1, image);
        return image;
}

/* ------------------------------------------------------------------------------------------ */
/* Devices, partitions, mounts */

static void remember(const char *name, uint64_t diskseq) {
        for (size_t i = 0; i < n_seen; i++)
                if (streq(seen[i].name, name) && seen[i].diskseq == diskseq)
                        return;
        assert_true(n_seen < ELEMENTSOF(seen));
        snprintf(seen[n_seen].name, sizeof(seen[n_seen].name), "%s", name);
        seen[n_seen++].diskseq = diskseq;
}

/* The daemon's device over image. */
static void disk_of(Ctx *c, const char *image, Disk *ret) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_props_ DeviceProps props = {};
        char *object = NULL;
        int r = call_get_device(c->e, image, &error, &object);

        if (r < 0)
                fail_msg("GetDevice(%s): %s", image, error.message ?: strerror(-r));
        gc(c, object);
        r = device_props_get(c->e, object, &error, &props);
        if (r < 0 || !props.name)
                fail_msg("properties of %s: %s", object, error.message ?: strerror(-r));
        *ret = (Disk){.diskseq = props.diskseq, .object = object};
        snprintf(ret->name, sizeof(ret->name), "%s", props.name);
        remember(ret->name, ret->diskseq);
}

static size_t read_partitions(Ctx *c, const char *object, Part *ret) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *entry = LOOPMGR_DEVICE_PARTITIONS_SIGNATURE + 1; /* "(usttssssu)" */
        size_t n = 0;
        int r;

        r = sd_bus_get_property(c->e->bus, LOOPMGR_BUS_NAME, object, LOOPMGR_DEVICE_INTERFACE,
                                "Partitions", &error, &reply, LOOPMGR_DEVICE_PARTITIONS_SIGNATURE);
        if (r < 0)
                fail_msg("Get Partitions (%s) of %s: %s", LOOPMGR_DEVICE_PARTITIONS_SIGNATURE,
                         object, error.message ?: strerror(-r));
        assert_true(sd_bus_message_enter_container(reply, 'a', entry) >= 0);
        for (;;) {
                const char *node, *type, *label, *uuid, *mp;
                Part p = {};

                r = sd_bus_message_read(reply, entry, &p.number, &node, &p.offset, &p.size, &type,
                                        &label, &uuid, &mp, &p.mount_user);
                if (r < 0)
                        fail_msg("reading Partitions of %s: %s", object, strerror(-r));
                if (r == 0)
                        break;
                assert_true(n < MAX_PARTS);
                p.node = gc(c, strdup(node));
                p.type = gc(c, strdup(type));
                p.label = gc(c, strdup(label));
                p.uuid = gc(c, strdup(uuid));
                p.mount_point = gc(c, strdup(mp));
                ret[n++] = p;
        }
        assert_true(sd_bus_message_exit_container(reply) >= 0);
        return n;
}

/* Partitions once it lists n entries and the labels (NULL: any) are known: Id* may be empty
 * until udev or a Mount's probe found them. Prints what it finally read. */
static size_t await_partitions(Ctx *c, const char *object, size_t n, const char *const *labels,
                               Part *ret) {
        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        size_t got;

        for (;;) {
                bool done;

                got = read_partitions(c, object, ret);
                done = got == n;
                for (size_t i = 0; done && i < n; i++)
                        if (labels[i] && !streq(ret[i].label, labels[i]))
                                done = false;
                if (done || now_usec() >= deadline)
                        break;
                sleep_usec(50 * USEC_PER_MSEC);
        }
        for (size_t i = 0; i < got; i++)
                print_message("  partition %" PRIu32 ": %s at %" PRIu64 "+%" PRIu64
                              ", %s '%s' %s, mounted on '%s' for %" PRIu32 "\n",
                              ret[i].number, ret[i].node, ret[i].offset, ret[i].size, ret[i].type,
                              ret[i].label, ret[i].uuid, ret[i].mount_point, ret[i].mount_user);
        assert_int_equal(got, n);
        return got;
}

/* Entry i of Partitions is partition i + 1 of the layout, on the kernel's partition too. */
static void expect_layout(Ctx *c, const Disk *d, const Part *p, unsigned i) {
        uint64_t start = 0, size = 0;

        assert_int_equal(p->number, i + 1);
        assert_string_equal(p->node, fmt(c, "/dev/%sp%u", d->name, i + 1));
        assert_int_equal(p->offset, layout[i].start);
        assert_int_equal(p->size, layout[i].size);
        assert_int_equal(sysfs_read_u64(d->name, fmt(c, "%sp%u/start", d->name, i + 1), &start), 0);
        assert_int_equal(sysfs_read_u64(d->name, fmt(c, "%sp%u/size", d->name, i + 1), &size), 0);
        assert_int_equal(start * 512, layout[i].start);
        assert_int_equal(size * 512, layout[i].size);
}

/* mount_point is partition i + 1 of d, mounted nosuid,nodev,ro, and the user reads its file. */
static void expect_part_mount(Ctx *c, const Disk *d, const char *mount_point, unsigned i) {
        MountEntry m = {};

        if (find_mount(c, mount_point, &m) < 0)
                fail_msg("%s is not a mount point", mount_point);
        print_message("  %s: %s from %s, %s\n", mount_point, m.fstype, m.source, m.options);
        assert_string_equal(m.source, fmt(c, "/dev/%sp%u", d->name, i + 1));
        assert_string_equal(m.fstype, "ext4");
        if (!has_option(m.options, "nosuid") || !has_option(m.options, "nodev") ||
            !has_option(m.options, "ro"))
                fail_msg("%s lacks nosuid, nodev or ro: %s", mount_point, m.options);
        assert_string_equal(read_as(c, U1, gc(c, env_join(mount_point, "hello.txt"))),
                            layout[i].text);
}

static void expect_unmounted(Ctx *c, const char *mount_point) {
        MountEntry m = {};
        struct stat st;

        if (find_mount(c, mount_point, &m) == 0)
                fail_msg("%s is still mounted (from %s)", mount_point, m.source);
        if (stat(mount_point, &st) == 0 || errno != ENOENT)
                fail_msg("%s is left behind", mount_point);
}

/* After close: no device over image, the daemon forgot it, the binding and its partitions are
 * gone, and neither mount point of the layout is left. */
static void expect_disk_gone(Ctx *c, const char *image, const Disk *d) {
        if (!wait_no_device(image))
                fail_msg("a loop device over %s is left", image);
        expect_daemon_forgot(c, image);
        if (!wait_binding_gone(d->name, d->diskseq, 5 * USEC_PER_SEC))
                fail_msg("%s (diskseq %" PRIu64 ") is still bound", d->name, d->diskseq);
        if (!wait_no_partitions(d->name))
                fail_msg("%s still has %zu partition(s)", d->name, count_partitions(d->name));
        for (unsigned i = 0; i < ELEMENTSOF(layout); i++)
                expect_unmounted(c, fmt(c, MEDIA_U1 "/%s", layout[i].label));
}

/* ------------------------------------------------------------------------------------------ */
/* Calls as lmopen1 */

static void call_as_u1(Ctx *c, PkRequest *q, PkReply *p) {
        int r = pk_agent_call(&c->agents[U1], q, p, 70 * 1000);
        if (r < 0)
                fail_msg("no reply from the agent of %s: %s", user_names[U1], strerror(-r));
}

/* Attach(fd opened by the user, read-only, partscan); tracked for the cleanup. */
static void attach_partscan(Ctx *c, const char *image, Disk *ret) {
        static PkRequest q;
        static PkReply p;

        pk_request_call(&q, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, "Attach");
        assert_int_equal(pk_request_arg(&q, 'h', O_RDONLY, image), 0);
        assert_int_equal(pk_request_options(&q, 2, OPT_B(LOOPMGR_OPT_READ_ONLY, true),
                                            OPT_B(LOOPMGR_OPT_PARTSCAN, true)),
                         0);
        call_as_u1(c, &q, &p);
        pk_expect_ok(&p, "Attach with partscan");
        const PkValue *object = pk_reply_value(&p, 0, 'o'), *node = pk_reply_value(&p, 1, 's'),
                      *diskseq = pk_reply_value(&p, 2, 't');
        assert_non_null(object);
        assert_non_null(node);
        assert_non_null(diskseq);
        assert_true(strncmp(node->string, "/dev/", 5) == 0);
        assert_int_equal(env_track_device(c->e, node->string + 5, diskseq->number), 0);
        *ret = (Disk){.diskseq = diskseq->number, .object = gc(c, strdup(object->string))};
        snprintf(ret->name, sizeof(ret->name), "%s", node->string + 5);
        remember(ret->name, ret->diskseq);
}

/* Mount or Unmount on the device with the n options given as OPT_*() triples. */
static void device_call(Ctx *c, const char *object, const char *member, PkReply *p, unsigned n,
                        ...) {
        static PkRequest q;
        va_list ap;

        pk_request_call(&q, object, LOOPMGR_DEVICE_INTERFACE, member);
        va_start(ap, n);
        int r = pk_request_options_va(&q, n, ap);
        va_end(ap);
        assert_int_equal(r, 0);
        call_as_u1(c, &q, p);
        print_message("  %s(%u option(s)) -> %s\n", member, n, p->r < 0 ? pk_reply_error(p) : "ok");
}

static const char *mount_partition(Ctx *c, const char *object, unsigned partno) {
        static PkReply p;

        device_call(c, object, "Mount", &p, 1, OPT_U(LOOPMGR_OPT_PARTITION, partno));
        pk_expect_ok(&p, "Mount of a partition");
        const PkValue *v = pk_reply_value(&p, 0, 's');
        assert_non_null(v);
        assert_int_equal(env_track_mount(c->e, v->string), 0);
        return gc(c, strdup(v->string));
}

/* ------------------------------------------------------------------------------------------ */
/* Tests */

static const char *const both_labels[] = {"LMP1", "LMP2"};
#define BOTH_LINES MEDIA_U1 "/LMP1\n" MEDIA_U1 "/LMP2\n"

/* open of a GPT image: both partitions mounted for the user, one line each in partition order;
 * Partitions tells their places, file systems and mounts; close by the image leaves nothing. */
static void test_open_gpt(void **state) {
        Ctx *c = *state;
        char *image = make_disk(c, "disk-gpt.img", TABLE_GPT, 3);
        Part parts[MAX_PARTS];
        Run a = {}, d = {};
        Disk disk;

        set_rules(c, BASE_RULES, BASE_VERDICTS);
        ctl_as(c, U1, &a, "open", image);
        expect_status(&a, 0, "open of a GPT image");
        assert_string_equal(a.out, BOTH_LINES);
        assert_int_equal(devices_of(image), 1);

        disk_of(c, image, &disk);
        assert_int_equal(count_partitions(disk.name), 2);
        await_partitions(c, disk.object, 2, both_labels, parts);
        for (unsigned i = 0; i < 2; i++) {
                const char *mp = fmt(c, MEDIA_U1 "/%s", layout[i].label);

                expect_layout(c, &disk, &parts[i], i);
                assert_string_equal(parts[i].type, "ext4");
                assert_string_equal(parts[i].label, layout[i].label);
                assert_true(parts[i].uuid[0] != 0);
                assert_string_equal(parts[i].mount_point, mp);
                assert_int_equal(parts[i].mount_user, c->uid[U1]);
                expect_part_mount(c, &disk, mp, i);
        }

        ctl_as(c, U1, &d, "close", image);
        expect_status(&d, 0, "close of a GPT image");
        expect_disk_gone(c, image, &disk);
}

/* A second open gives the same mounts on the same device; close by one of the mount points
 * unmounts both, and the device goes. */
static void test_close_by_mount_point(void **state) {
        Ctx *c = *state;
        char *image = make_disk(c, "close-gpt.img", TABLE_GPT, 3);
        Run a = {}, b = {}, d = {};
        Disk disk;

        set_rules(c, BASE_RULES, BASE_VERDICTS);
        ctl_as(c, U1, &a, "open", image);
        expect_status(&a, 0, "open");
        assert_string_equal(a.out, BOTH_LINES);
        disk_of(c, image, &disk);

        ctl_as(c, U1, &b, "open", image);
        expect_status(&b, 0, "second open");
        assert_string_equal(b.out, BOTH_LINES);
        assert_int_equal(devices_of(image), 1);

        ctl_as(c, U1, &d, "close", MEDIA_U1 "/LMP2");
        expect_status(&d, 0, "close by the second partition's mount point");
        expect_disk_gone(c, image, &disk);
}

/* open --json: a list of one object per mounted partition. */
static void test_open_json(void **state) {
        Ctx *c = *state;
        char *image = make_disk(c, "json-gpt.img", TABLE_GPT, 3);
        Run a = {}, d = {};
        char *json;
        Disk disk;

        set_rules(c, BASE_RULES, BASE_VERDICTS);
        ctl_as(c, U1, &a, "open", "--json", image);
        expect_status(&a, 0, "open --json");
        disk_of(c, image, &disk);
        json = squeeze(c, a.out);
        if (json[0] != '[' || json[strlen(json) - 1] != ']')
                fail_msg("open --json printed no list: %s", a.out);
        assert_int_equal(occurrences(json, "\"mount_point\":"), 2);
        expect_contains(json, "\"partition\":1", "open --json");
        expect_contains(json, "\"partition\":2", "open --json");
        expect_contains(json, "\"mount_point\":\"" MEDIA_U1 "/LMP1\"", "open --json");
        expect_contains(json, "\"mount_point\":\"" MEDIA_U1 "/LMP2\"", "open --json");
        expect_contains(json, fmt(c, "\"device\":\"/dev/%s\"", disk.name), "open --json");
        expect_contains(json, fmt(c, "\"partition_device\":\"/dev/%sp1\"", disk.name),
                        "open --json");
        expect_contains(json, fmt(c, "\"partition_device\":\"/dev/%sp2\"", disk.name),
                        "open --json");
        expect_contains(json, fmt(c, "\"object\":\"%s\"", disk.object), "open --json");
        expect_contains(json, fmt(c, "\"diskseq\":%" PRIu64, disk.diskseq), "open --json");
        if (strstr(json, "\"mount_point\":\"" MEDIA_U1 "/LMP2\"") <
            strstr(json, "\"mount_point\":\"" MEDIA_U1 "/LMP1\""))
                fail_msg("open --json lists the partitions out of order: %s", a.out);

        ctl_as(c, U1, &d, "close", image);
        expect_status(&d, 0, "close");
        expect_disk_gone(c, image, &disk);
}

/* The bus API: partitions present when Attach (partscan) answers; Mount of a missing partition,
 * of the whole device, twice of one partition; Unmount of one not mounted. */
static void test_bus_partitions(void **state) {
        Ctx *c = *state;
        char *image = make_disk(c, "bus-gpt.img", TABLE_GPT, 3);
        static PkReply p;
        Part parts[MAX_PARTS];
        const char *mp, *again;
        Disk disk;

        set_rules(c, BASE_RULES, BASE_VERDICTS);
        attach_partscan(c, image, &disk);
        /* Made by the kernel or added by the daemon before it answered. */
        assert_int_equal(count_partitions(disk.name), 2);
        for (unsigned i = 1; i <= 2; i++) {
                const char *node = fmt(c, "/dev/%sp%u", disk.name, i);
                uint64_t deadline = now_usec() + 2 * USEC_PER_SEC;
                while (access(node, F_OK) < 0 && now_usec() < deadline)
                        sleep_usec(20 * USEC_PER_MSEC);
                if (access(node, F_OK) < 0)
                        fail_msg("no %s after Attach answered", node);
        }
        await_partitions(c, disk.object, 2, (const char *const[]){NULL, NULL}, parts);
        for (unsigned i = 0; i < 2; i++) {
                expect_layout(c, &disk, &parts[i], i);
                assert_string_equal(parts[i].mount_point, "");
                assert_int_equal(parts[i].mount_user, NO_MOUNT_USER);
        }

        device_call(c, disk.object, "Mount", &p, 1, OPT_U(LOOPMGR_OPT_PARTITION, 9));
        pk_expect_error(&p, ERROR_INVALID_ARGS, "Mount of partition 9");
        expect_contains(p.error_message, "no partition 9", "Mount of partition 9");

        device_call(c, disk.object, "Mount", &p, 0);
        pk_expect_error(&p, LOOPMGR_ERROR_NO_FILE_SYSTEM, "Mount of the whole device");
        expect_contains(p.error_message, "partition table", "Mount of the whole device");

        mp = mount_partition(c, disk.object, 1);
        assert_string_equal(mp, MEDIA_U1 "/LMP1");
        again = mount_partition(c, disk.object, 1);
        assert_string_equal(again, mp);
        expect_part_mount(c, &disk, mp, 0);
        await_partitions(c, disk.object, 2, both_labels, parts);
        assert_string_equal(parts[0].mount_point, mp);
        assert_int_equal(parts[0].mount_user, c->uid[U1]);
        assert_string_equal(parts[1].mount_point, "");
        assert_int_equal(parts[1].mount_user, NO_MOUNT_USER);
        /* MountPoint stays the whole device's. */
        char *whole = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = sd_bus_get_property_string(c->e->bus, LOOPMGR_BUS_NAME, disk.object,
                                           LOOPMGR_DEVICE_INTERFACE, "MountPoint", &error, &whole);
        assert_bus_ok(r, &error, "Get MountPoint");
        assert_string_equal(gc(c, whole), "");

        device_call(c, disk.object, "Unmount", &p, 1, OPT_U(LOOPMGR_OPT_PARTITION, 2));
        pk_expect_error(&p, LOOPMGR_ERROR_NOT_MOUNTED, "Unmount of a partition not mounted");

        device_call(c, disk.object, "Unmount", &p, 1, OPT_U(LOOPMGR_OPT_PARTITION, 1));
        pk_expect_ok(&p, "Unmount of partition 1");
        env_forget_mount(c->e, mp);
        expect_unmounted(c, mp);
        read_partitions(c, disk.object, parts);
        assert_string_equal(parts[0].mount_point, "");
        assert_int_equal(parts[0].mount_user, NO_MOUNT_USER);

        device_call(c, disk.object, "Detach", &p, 0);
        pk_expect_ok(&p, "Detach");
        expect_disk_gone(c, image, &disk);
}

/* Partitions without a file system are passed over; none at all: open fails naming the
 * partition table, and no device is left. The first image has an MBR (dos) table. */
static void test_partial_and_bare(void **state) {
        Ctx *c = *state;
        char *half = make_disk(c, "half-dos.img", TABLE_DOS, 1);
        char *bare = make_disk(c, "bare-gpt.img", TABLE_GPT, 0);
        Run a = {}, b = {}, d = {};
        Disk disk;

        set_rules(c, BASE_RULES, BASE_VERDICTS);
        ctl_as(c, U1, &a, "open", half);
        expect_status(&a, 0, "open of an image with one file system in two partitions");
        assert_string_equal(a.out, MEDIA_U1 "/LMP1\n");
        disk_of(c, half, &disk);
        assert_int_equal(count_partitions(disk.name), 2);
        expect_part_mount(c, &disk, MEDIA_U1 "/LMP1", 0);
        ctl_as(c, U1, &d, "close", half);
        expect_status(&d, 0, "close");
        expect_disk_gone(c, half, &disk);

        size_t orphans = unbound_with_partitions();
        ctl_as(c, U1, &b, "open", bare);
        if (b.status == 0)
                fail_msg("open of partitions without file systems succeeded: %s", b.out);
        expect_contains(b.err, "partition table", "open of partitions without file systems");
        expect_contains(b.err, "gpt", "open of partitions without file systems");
        if (!wait_no_device(bare))
                fail_msg("a loop device over %s is left", bare);
        expect_daemon_forgot(c, bare);
        uint64_t deadline = now_usec() + 5 * USEC_PER_SEC;
        while (unbound_with_partitions() > orphans && now_usec() < deadline)
                sleep_usec(20 * USEC_PER_MSEC);
        if (unbound_with_partitions() > orphans)
                fail_msg("the failed open left partitions on an unbound loop device");
}

/* Where the kernel has the EFI parser, the partitions are the kernel's own (a parsed GPT
 * entry gives the partition its name, PARTNAME in the uevent; BLKPG cannot) and open works. */
static void test_kernel_scan(void **state) {
        Ctx *c = *state;
        char *image;
        Run a = {}, d = {};
        Disk disk;
        int r = env_run(NULL, NULL, "grep", "-qw", "efi_partition", "/proc/kallsyms", NULL);

        if (r != 0) {
                print_message("  skipped: " NO_EFI_REASON "\n");
                skip();
        }
        image = make_disk(c, "kernel-gpt.img", TABLE_GPT, 3);
        set_rules(c, BASE_RULES, BASE_VERDICTS);
        ctl_as(c, U1, &a, "open", image);
        expect_status(&a, 0, "open of a GPT image on a kernel with the EFI parser");
        assert_string_equal(a.out, BOTH_LINES);
        disk_of(c, image, &disk);
        for (unsigned i = 0; i < 2; i++) {
                _cleanup_fclose_ FILE *f = NULL;
                char line[256];
                bool named = false;

                f = fopen(fmt(c, "/sys/block/%s/%sp%u/uevent", disk.name, disk.name, i + 1), "re");
                assert_non_null(f);
                while (fgets(line, sizeof(line), f))
                        if (streq(line, fmt(c, "PARTNAME=%s\n", layout[i].name)))
                                named = true;
                if (!named)
                        fail_msg("%sp%u has no PARTNAME=%s: not the kernel's partition", disk.name,
                                 i + 1, layout[i].name);
                expect_part_mount(c, &disk, fmt(c, MEDIA_U1 "/%s", layout[i].label), i);
        }
        ctl_as(c, U1, &d, "close", image);
        expect_status(&d, 0, "close");
        expect_disk_gone(c, image, &disk);
}

/* ------------------------------------------------------------------------------------------ */
/* Fixtures */

/* The partitions of every binding a test made must be gone with it; ones left on a device
 * nobody has bound since are deleted. */
static bool check_seen_partitions(void) {
        bool ok = true;

        for (size_t i = 0; i < n_seen; i++) {
                const char *name = seen[i].name;

                if (!wait_binding_gone(name, seen[i].diskseq, 5 * USEC_PER_SEC)) {
                        print_error("%s (diskseq %" PRIu64 ") is still bound\n", name,
                                    seen[i].diskseq);
                        ok = false;
                        continue;
                }
                if (wait_no_partitions(name))
                        continue;
                print_error("%s is unbound but keeps %zu partition(s)\n", name,
                            count_partitions(name));
                ok = false;
                for (unsigned k = 1; k <= MAX_PARTS; k++) {
                        _cleanup_free_ char *node = NULL, *part = NULL;
                        if (asprintf(&node, "/dev/%s", name) < 0 || asprintf(&part, "%u", k) < 0)
                                break;
                        char *argv[] = {(char *) "delpart", node, part, NULL};
                        (void) run_command(argv, NULL, NULL, NULL);
                }
        }
        n_seen = 0;
        return ok;
}

static int group_teardown(void **state);

static int group_setup(void **state) {
        Ctx *c = calloc(1, sizeof(Ctx));

        *state = c;
        if (!c || desktop_group_start(c) < 0 || desktop_group_env(c, "desktop-parts") < 0) {
                group_failed = true;
                (void) group_teardown(state);
                return -1;
        }
        return 0;
}

static int group_teardown(void **state) {
        Ctx *c = *state;
        bool ok;

        if (!c)
                return 0;
        ok = desktop_group_stop(c, check_seen_partitions);
        free(c);
        *state = NULL;
        if (!ok)
                group_failed = true;
        return ok ? 0 : -1;
}

static int test_setup(void **state) {
        n_seen = 0;
        return desktop_test_setup(*state);
}

static int test_teardown(void **state) {
        return desktop_test_teardown(*state, check_seen_partitions);
}

#define T(f) cmocka_unit_test_setup_teardown(f, test_setup, test_teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_open_gpt),       T(test_close_by_mount_point), T(test_open_json),
                T(test_bus_partitions), T(test_partial_and_bare),     T(test_kernel_scan),
        };
        return ENV_RUN_TESTS(tests, group_setup, group_teardown, &group_failed);
}
