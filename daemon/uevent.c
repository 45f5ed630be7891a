/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>

#include "loop-kernel.h"
#include "uevent.h"
#include "util.h"

/* The header systemd-udevd puts before the properties (sd-device's device-monitor.c; the
 * same layout since udev 148). Only the fields up to properties_len are read. */
typedef struct UdevNetlinkHeader {
        char prefix[8];         /* "libudev\0" */
        uint32_t magic;         /* htonl(UEVENT_UDEV_MAGIC) */
        uint32_t header_size;
        uint32_t properties_off;
        uint32_t properties_len;
        uint32_t filter_subsystem_hash;
        uint32_t filter_devtype_hash;
        uint32_t filter_tag_bloom_hi;
        uint32_t filter_tag_bloom_lo;
} UdevNetlinkHeader;

/* The value of "KEY=" when s is that property, else NULL. */
static const char *property_value(const char *s, size_t n, const char *key, size_t keylen) {
        if (n <= keylen || memcmp(s, key, keylen) != 0 || s[keylen] != '=')
                return NULL;
        return s + keylen + 1;
}

#define PROPERTY(s, n, key) property_value(s, n, key, strlen(key))

int uevent_parse(const char *buf, size_t len, unsigned group, UeventInfo *ret) {
        const char *p, *end, *action = NULL, *devpath = NULL, *subsystem = NULL,
                               *devtype = NULL, *seq = NULL, *name;
        bool special = false;
        UeventInfo info = {};
        uint64_t diskseq = 0;
        unsigned number;

        if (!buf || !ret)
                return -EINVAL;

        if (group == UEVENT_GROUP_UDEV) {
                UdevNetlinkHeader h;

                if (len < sizeof(h))
                        return -EBADMSG;
                memcpy(&h, buf, sizeof(h));
                if (memcmp(h.prefix, "libudev", sizeof(h.prefix)) != 0 ||
                    ntohl(h.magic) != UEVENT_UDEV_MAGIC)
                        return -EBADMSG;
                if (h.properties_off < sizeof(h) || h.properties_off > len ||
                    h.properties_len > len - h.properties_off || h.properties_len == 0)
                        return -EBADMSG;
                p = buf + h.properties_off;
                end = p + h.properties_len;
        } else if (group == UEVENT_GROUP_KERNEL) {
                /* "ACTION@DEVPATH" first; the properties repeat both. */
                const char *first_end = memchr(buf, 0, len);

                if (!first_end || !memchr(buf, '@', (size_t) (first_end - buf)))
                        return -EBADMSG;
                p = first_end + 1;
                end = buf + len;
        } else
                return -EINVAL;

        /* The last property may lack its NUL only if it is cut off: such a message is bad. */
        if (p < end && end[-1] != 0)
                return -EBADMSG;

        while (p < end) {
                size_t n = strlen(p);
                const char *v;

                if ((v = PROPERTY(p, n, "ACTION")))
                        action = v;
                else if ((v = PROPERTY(p, n, "DEVPATH")))
                        devpath = v;
                else if ((v = PROPERTY(p, n, "SUBSYSTEM")))
                        subsystem = v;
                else if ((v = PROPERTY(p, n, "DEVTYPE")))
                        devtype = v;
                else if ((v = PROPERTY(p, n, "DISKSEQ")))
                        seq = v;
                else if (PROPERTY(p, n, "RESIZE") || PROPERTY(p, n, "DISK_MEDIA_CHANGE") ||
                         PROPERTY(p, n, "SYNTH_UUID"))
                        special = true;
                p += n + 1;
        }

        if (!action || !devpath || !subsystem)
                return -EBADMSG;
        if (!streq(subsystem, "block") || !devtype || !streq(devtype, "disk"))
                return 0;
        name = strrchr(devpath, '/');
        name = name ? name + 1 : devpath;
        if (strlen(name) >= sizeof(info.sysname) || loop_name_to_number(name, &number) < 0)
                return 0;
        if (seq && safe_atou64(seq, &diskseq) < 0)
                diskseq = 0;

        info.action = action;
        strcpy(info.sysname, name);
        info.diskseq = diskseq;
        info.plain = streq(action, "change") && !special;
        *ret = info;
        return 1;
}
