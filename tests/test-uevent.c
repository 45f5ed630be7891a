/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* uevent_parse(): the kernel's and udev's netlink messages, as the daemon reads them. */

#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "uevent.h"

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

        assert_int_equal(uevent_parse(buf, n, UEVENT_GROUP_KERNEL, &info), 1);
        assert_string_equal(info.action, "change");
        assert_string_equal(info.sysname, "loop12");
        assert_int_equal(info.diskseq, 4711);
        assert_true(info.plain);
}

static void test_kernel_not_plain(void **state) {
        static const char *const specials[] = { "RESIZE=1", "DISK_MEDIA_CHANGE=1",
                                                "SYNTH_UUID=0" };
        char props[256], buf[512];
        UeventInfo info;

        for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++) {
                int k = snprintf(props, sizeof(props),
                                 "ACTION=change%cDEVPATH=/devices/virtual/block/loop0%c"
                                 "SUBSYSTEM=block%cDEVTYPE=disk%c%s%cDISKSEQ=5%c",
                                 0, 0, 0, 0, specials[i], 0, 0);
                size_t n = kernel_msg(buf, sizeof(buf), "change@/devices/virtual/block/loop0",
                                      props, (size_t) k);

                assert_int_equal(uevent_parse(buf, n, UEVENT_GROUP_KERNEL, &info), 1);
                assert_false(info.plain);
                assert_int_equal(info.diskseq, 5);
        }

        /* Not a change at all. */
        size_t n = kernel_msg(buf, sizeof(buf), "add@/devices/virtual/block/loop3",
                              KPROPS("ACTION=add\0DEVPATH=/devices/virtual/block/loop3\0"
                                     "SUBSYSTEM=block\0DEVTYPE=disk\0"));
        assert_int_equal(uevent_parse(buf, n, UEVENT_GROUP_KERNEL, &info), 1);
        assert_string_equal(info.action, "add");
        assert_int_equal(info.diskseq, 0);
        assert_false(info.plain);
}

/* uevent_parse() of a kernel message made of head and props. */
static int parse_kernel(const char *head, const char *props, size_t props_len) {
        char buf[512];
        UeventInfo info;

        return uevent_parse(buf, kernel_msg(buf, sizeof(buf), head, props, props_len),
                            UEVENT_GROUP_KERNEL, &info);
}

#define PARSE_KERNEL(head, props) parse_kernel(head, KPROPS(props))

static void test_kernel_other_devices(void **state) {
        assert_int_equal(PARSE_KERNEL("change@/devices/virtual/block/loop0/loop0p1",
                                      "ACTION=change\0DEVPATH=/devices/virtual/block/loop0/loop0p1\0"
                                      "SUBSYSTEM=block\0DEVTYPE=partition\0"),
                         0);
        assert_int_equal(PARSE_KERNEL("change@/devices/pci0000:00/block/vda",
                                      "ACTION=change\0DEVPATH=/devices/pci0000:00/block/vda\0"
                                      "SUBSYSTEM=block\0DEVTYPE=disk\0"),
                         0);
        assert_int_equal(PARSE_KERNEL("add@/devices/virtual/net/lo",
                                      "ACTION=add\0DEVPATH=/devices/virtual/net/lo\0SUBSYSTEM=net\0"),
                         0);
        /* "loop" followed by something that is not a number, or a name too long to be one. */
        assert_int_equal(PARSE_KERNEL("change@/devices/virtual/block/loopx",
                                      "ACTION=change\0DEVPATH=/devices/virtual/block/loopx\0"
                                      "SUBSYSTEM=block\0DEVTYPE=disk\0"),
                         0);
        assert_int_equal(PARSE_KERNEL("change@/devices/virtual/block/loop12345678901234",
                                      "ACTION=change\0DEVPATH=/devices/virtual/block/loop12345678901234\0"
                                      "SUBSYSTEM=block\0DEVTYPE=disk\0"),
                         0);
}

static void test_kernel_malformed(void **state) {
        char buf[64];
        UeventInfo info;

        /* No "@" in the first string. */
        assert_int_equal(PARSE_KERNEL("libudev", "ACTION=change\0DEVPATH=/devices/virtual/block/loop0\0"
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
        assert_int_equal(uevent_parse(buf, sizeof(buf), UEVENT_GROUP_KERNEL, &info), -EBADMSG);
        assert_int_equal(uevent_parse(buf, 0, UEVENT_GROUP_KERNEL, &info), -EBADMSG);
        assert_int_equal(uevent_parse(buf, sizeof(buf), 7, &info), -EINVAL);
}

/* udev's header, as systemd-udevd writes it (host byte order but for the magic). */
typedef struct Header {
        char prefix[8];
        uint32_t magic, header_size, properties_off, properties_len;
        uint32_t subsystem_hash, devtype_hash, bloom_hi, bloom_lo;
} Header;

static size_t udev_msg(char *buf, size_t size, const char *props, size_t props_len,
                       Header *ret_header) {
        Header h = {
                .prefix = "libudev",
                .magic = htonl(UEVENT_UDEV_MAGIC),
                .header_size = sizeof(Header),
                .properties_off = sizeof(Header),
                .properties_len = (uint32_t) props_len,
        };

        assert_true(sizeof(h) + props_len <= size);
        memcpy(buf, &h, sizeof(h));
        memcpy(buf + sizeof(h), props, props_len);
        if (ret_header)
                *ret_header = h;
        return sizeof(h) + props_len;
}

#define UPROPS                                                                                  \
        KPROPS("ACTION=change\0DEVPATH=/devices/virtual/block/loop7\0SUBSYSTEM=block\0"       \
               "DEVNAME=/dev/loop7\0DEVTYPE=disk\0DISKSEQ=123456789012\0SEQNUM=5\0"            \
               "ID_FS_TYPE=ext4\0DEVLINKS=/dev/disk/by-diskseq/123456789012\0TAGS=:systemd:\0")

static void test_udev_message(void **state) {
        char buf[1024];
        UeventInfo info;
        size_t n = udev_msg(buf, sizeof(buf), UPROPS, NULL);

        assert_int_equal(uevent_parse(buf, n, UEVENT_GROUP_UDEV, &info), 1);
        assert_string_equal(info.action, "change");
        assert_string_equal(info.sysname, "loop7");
        assert_int_equal(info.diskseq, 123456789012ULL);
        assert_true(info.plain);

        /* A kernel message is no udev message, and the other way round. */
        assert_int_equal(uevent_parse(buf, n, UEVENT_GROUP_KERNEL, &info), -EBADMSG);
}

static void test_udev_malformed(void **state) {
        char buf[1024];
        UeventInfo info;
        Header h;
        size_t n = udev_msg(buf, sizeof(buf), UPROPS, &h);

        /* Shorter than the header. */
        assert_int_equal(uevent_parse(buf, sizeof(Header) - 1, UEVENT_GROUP_UDEV, &info),
                         -EBADMSG);
        /* Properties beyond the message. */
        assert_int_equal(uevent_parse(buf, n - 1, UEVENT_GROUP_UDEV, &info), -EBADMSG);

        Header bad = h;
        bad.magic = UEVENT_UDEV_MAGIC; /* host order: wrong on little-endian machines */
        if (htonl(UEVENT_UDEV_MAGIC) != UEVENT_UDEV_MAGIC) {
                memcpy(buf, &bad, sizeof(bad));
                assert_int_equal(uevent_parse(buf, n, UEVENT_GROUP_UDEV, &info), -EBADMSG);
        }
        bad = h;
        memcpy(bad.prefix, "libudeX", 8);
        memcpy(buf, &bad, sizeof(bad));
        assert_int_equal(uevent_parse(buf, n, UEVENT_GROUP_UDEV, &info), -EBADMSG);
        bad = h;
        bad.properties_off = 4; /* inside the header */
        memcpy(buf, &bad, sizeof(bad));
        assert_int_equal(uevent_parse(buf, n, UEVENT_GROUP_UDEV, &info), -EBADMSG);
        bad = h;
        bad.properties_len = UINT32_MAX; /* would wrap around */
        memcpy(buf, &bad, sizeof(bad));
        assert_int_equal(uevent_parse(buf, n, UEVENT_GROUP_UDEV, &info), -EBADMSG);
        bad = h;
        bad.properties_off = UINT32_MAX;
        memcpy(buf, &bad, sizeof(bad));
        assert_int_equal(uevent_parse(buf, n, UEVENT_GROUP_UDEV, &info), -EBADMSG);

        /* Restored, it parses again. */
        memcpy(buf, &h, sizeof(h));
        assert_int_equal(uevent_parse(buf, n, UEVENT_GROUP_UDEV, &info), 1);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_kernel_change),
                cmocka_unit_test(test_kernel_not_plain),
                cmocka_unit_test(test_kernel_other_devices),
                cmocka_unit_test(test_kernel_malformed),
                cmocka_unit_test(test_udev_message),
                cmocka_unit_test(test_udev_malformed),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
