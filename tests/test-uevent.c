/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* uevent.c: the kernel's netlink messages as the daemon parses them (uevent_parse_kernel()),
 * and the translation of an event's properties, whoever parsed them (uevent_from_fields(),
 * which uevent_from_device() feeds from the sd_device of udev's monitor), into what reaches
 * the manager. */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "uevent.h"
#include "util.h"

/* A message from NUL-separated parts: props is "A=1\0B=2\0" with its length. */
static size_t kernel_msg(char *buf, size_t size, const char *head, const char *props,
                         size_t props_len) {
        size_t n = strlen(head) + 1;

        assert_true(n + props_len <= size);
        memcpy(buf, head, n);
        memcpy(buf + n, props, props_len);
        return n + props_len;
}

#define KPROPS(s) s, sizeof(s) - 1

static void test_kernel_change(void **state) {
        char buf[512];
        UeventInfo info;
        size_t n = kernel_msg(buf, sizeof(buf), "change@/devices/virtual/block/loop12",
                              KPROPS("ACTION=change\0DEVPATH=/devices/virtual/block/loop12\0"
                                     "SUBSYSTEM=block\0MAJOR=7\0MINOR=12\0DEVNAME=loop12\0"
                                     "DEVTYPE=disk\0DISKSEQ=4711\0SEQNUM=99\0"));

        assert_int_equal(uevent_parse_kernel(buf, n, &info), 1);
        assert_string_equal(info.action, "change");
        assert_string_equal(info.sysname, "loop12");
        assert_int_equal(info.diskseq, 4711);
        assert_true(info.plain);
}

static void test_kernel_not_plain(void **state) {
        static const char *const specials[] = {"RESIZE=1", "DISK_MEDIA_CHANGE=1", "SYNTH_UUID=0"};
        char props[256], buf[512];
        UeventInfo info;

        for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++) {
                int k = snprintf(props, sizeof(props),
                                 "ACTION=change%cDEVPATH=/devices/virtual/block/loop0%c"
                                 "SUBSYSTEM=block%cDEVTYPE=disk%c%s%cDISKSEQ=5%c",
                                 0, 0, 0, 0, specials[i], 0, 0);
                size_t n = kernel_msg(buf, sizeof(buf), "change@/devices/virtual/block/loop0",
                                      props, (size_t) k);

                assert_int_equal(uevent_parse_kernel(buf, n, &info), 1);
                assert_false(info.plain);
                assert_int_equal(info.diskseq, 5);
        }

        /* Not a change at all. */
        size_t n = kernel_msg(buf, sizeof(buf), "add@/devices/virtual/block/loop3",
                              KPROPS("ACTION=add\0DEVPATH=/devices/virtual/block/loop3\0"
                                     "SUBSYSTEM=block\0DEVTYPE=disk\0"));
        assert_int_equal(uevent_parse_kernel(buf, n, &info), 1);
        assert_string_equal(info.action, "add");
        assert_int_equal(info.diskseq, 0);
        assert_false(info.plain);
}

/* uevent_parse_kernel() of a kernel message made of head and props. */
static int parse_kernel(const char *head, const char *props, size_t props_len) {
        char buf[512];
        UeventInfo info;

        return uevent_parse_kernel(buf, kernel_msg(buf, sizeof(buf), head, props, props_len),
                                   &info);
}

#define PARSE_KERNEL(head, props) parse_kernel(head, KPROPS(props))

static void test_kernel_other_devices(void **state) {
        assert_int_equal(
                PARSE_KERNEL("change@/devices/virtual/block/loop0/loop0p1",
                             "ACTION=change\0DEVPATH=/devices/virtual/block/loop0/loop0p1\0"
                             "SUBSYSTEM=block\0DEVTYPE=partition\0"),
                0);
        assert_int_equal(PARSE_KERNEL("change@/devices/pci0000:00/block/vda",
                                      "ACTION=change\0DEVPATH=/devices/pci0000:00/block/vda\0"
                                      "SUBSYSTEM=block\0DEVTYPE=disk\0"),
                         0);
        assert_int_equal(
                PARSE_KERNEL("add@/devices/virtual/net/lo",
                             "ACTION=add\0DEVPATH=/devices/virtual/net/lo\0SUBSYSTEM=net\0"),
                0);
        /* "loop" followed by something that is not a number, or a name too long to be one. */
        assert_int_equal(PARSE_KERNEL("change@/devices/virtual/block/loopx",
                                      "ACTION=change\0DEVPATH=/devices/virtual/block/loopx\0"
                                      "SUBSYSTEM=block\0DEVTYPE=disk\0"),
                         0);
        assert_int_equal(
                PARSE_KERNEL("change@/devices/virtual/block/loop12345678901234",
                             "ACTION=change\0DEVPATH=/devices/virtual/block/loop12345678901234\0"
                             "SUBSYSTEM=block\0DEVTYPE=disk\0"),
                0);
}

static void test_kernel_malformed(void **state) {
        char buf[64];
        UeventInfo info;

        /* No "@" in the first string. */
        assert_int_equal(PARSE_KERNEL("libudev",
                                      "ACTION=change\0DEVPATH=/devices/virtual/block/loop0\0"
                                      "SUBSYSTEM=block\0DEVTYPE=disk\0"),
                         -EBADMSG);
        /* The last property cut off (no NUL). */
        assert_int_equal(PARSE_KERNEL("change@/devices/virtual/block/loop0",
                                      "ACTION=change\0DEVPATH=/devices/virtual/block/loop0\0"
                                      "SUBSYSTEM=block\0DEVTYPE=di"),
                         -EBADMSG);
        /* No ACTION. */
        assert_int_equal(PARSE_KERNEL("change@/devices/virtual/block/loop0",
                                      "DEVPATH=/devices/virtual/block/loop0\0SUBSYSTEM=block\0"
                                      "DEVTYPE=disk\0"),
                         -EBADMSG);
        /* No NUL at all. */
        memset(buf, 'x', sizeof(buf));
        assert_int_equal(uevent_parse_kernel(buf, sizeof(buf), &info), -EBADMSG);
        assert_int_equal(uevent_parse_kernel(buf, 0, &info), -EBADMSG);
        assert_int_equal(uevent_parse_kernel(NULL, 0, &info), -EINVAL);
}

/* What udev's monitor hands over for a processed change of a loop disk (sd_device
 * properties), and what the manager gets from it. */
static void test_fields_udev_change(void **state) {
        UeventFields f = {
                .action = "change",
                .devpath = "/devices/virtual/block/loop7",
                .subsystem = "block",
                .devtype = "disk",
                .diskseq = "123456789012",
        };
        UeventInfo info;

        assert_int_equal(uevent_from_fields(&f, &info), 1);
        assert_ptr_equal(info.action, f.action);
        assert_string_equal(info.sysname, "loop7");
        assert_int_equal(info.diskseq, 123456789012ULL);
        assert_true(info.plain);

        f.special = true;
        assert_int_equal(uevent_from_fields(&f, &info), 1);
        assert_false(info.plain);

        /* A diskseq that is no number counts as none, as from the kernel. */
        f.diskseq = "12x";
        assert_int_equal(uevent_from_fields(&f, &info), 1);
        assert_int_equal(info.diskseq, 0);
        f.diskseq = NULL;
        assert_int_equal(uevent_from_fields(&f, &info), 1);
        assert_int_equal(info.diskseq, 0);
        f.action = "remove";
        assert_int_equal(uevent_from_fields(&f, &info), 1);
        assert_string_equal(info.action, "remove");
        assert_false(info.plain);
}

static void test_fields_other_devices(void **state) {
        static const UeventFields others[] = {
                {"change", "/devices/virtual/block/loop0/loop0p1", "block", "partition"},
                {"change", "/devices/virtual/block/loop0", "block", NULL},
                {"change", "/devices/pci0000:00/block/vda", "block", "disk"},
                {"add", "/devices/virtual/net/lo", "net", NULL},
                {"change", "/devices/virtual/block/loopx", "block", "disk"},
                {"change", "/devices/virtual/block/loop12345678901234", "block", "disk"},
                {"change", "loop3", "net", "disk"},
        };
        UeventFields f = {"change", "loop3", "block", "disk"};
        UeventInfo info;

        for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
                assert_int_equal(uevent_from_fields(&others[i], &info), 0);
        /* A DEVPATH without a slash is its own name. */
        assert_int_equal(uevent_from_fields(&f, &info), 1);
        assert_string_equal(info.sysname, "loop3");
}

static void test_fields_malformed(void **state) {
        UeventFields f = {"change", "/devices/virtual/block/loop0", "block", "disk"};
        UeventInfo info;

        f.action = NULL;
        assert_int_equal(uevent_from_fields(&f, &info), -EBADMSG);
        f.action = "change";
        f.devpath = NULL;
        assert_int_equal(uevent_from_fields(&f, &info), -EBADMSG);
        f.devpath = "/devices/virtual/block/loop0";
        f.subsystem = NULL;
        assert_int_equal(uevent_from_fields(&f, &info), -EBADMSG);
        assert_int_equal(uevent_from_fields(NULL, &info), -EINVAL);
        assert_int_equal(uevent_from_device(NULL, &info), -EINVAL);
}

/* A device that did not come from a monitor (here: from sysfs, when the machine has a loop
 * device) carries no ACTION: it is refused, not mistaken for an event. */
static void test_device_without_action(void **state) {
        _cleanup_(sd_device_unrefp) sd_device *device = NULL;
        UeventInfo info;

        if (sd_device_new_from_syspath(&device, "/sys/devices/virtual/block/loop0") < 0)
                skip();
        assert_int_equal(uevent_from_device(device, &info), -EBADMSG);
}

static void test_partition_names(void **state) {
        static const char *const bad[] = {
                "loop0",
                "loop0p",
                "loop0p0",
                "loop0p01",
                "loopp1",
                "loopxp1",
                "sda1",
                "nvme0n1p1",
                "loop0p1x",
                "loop0p+1",
                "loop0p-1",
                "loop12345678901234p1",
                "loop0p99999999999",
                "",
                "p1",
        };
        char disk[16];
        unsigned n = 0;

        assert_int_equal(uevent_loop_partition_name("loop0p1", disk, sizeof(disk), &n), 1);
        assert_string_equal(disk, "loop0");
        assert_int_equal(n, 1);
        assert_int_equal(uevent_loop_partition_name("loop17p12", disk, sizeof(disk), &n), 1);
        assert_string_equal(disk, "loop17");
        assert_int_equal(n, 12);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                assert_int_equal(uevent_loop_partition_name(bad[i], disk, sizeof(disk), &n), 0);
        assert_int_equal(uevent_loop_partition_name(NULL, disk, sizeof(disk), &n), 0);
        /* Too small a buffer for the disk's name. */
        assert_int_equal(uevent_loop_partition_name("loop17p1", disk, 6, &n), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_partition_names),
                cmocka_unit_test(test_kernel_change),
                cmocka_unit_test(test_kernel_not_plain),
                cmocka_unit_test(test_kernel_other_devices),
                cmocka_unit_test(test_kernel_malformed),
                cmocka_unit_test(test_fields_udev_change),
                cmocka_unit_test(test_fields_other_devices),
                cmocka_unit_test(test_fields_malformed),
                cmocka_unit_test(test_device_without_action),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
