/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <string.h>

#include "loop-kernel.h"
#include "uevent.h"
#include "util.h"

/* Properties whose presence makes a "change" more than a binding's announcement. */
static const char *const special_keys[] = {"RESIZE", "DISK_MEDIA_CHANGE", "SYNTH_UUID"};

int uevent_from_fields(const UeventFields *f, UeventInfo *ret) {
        UeventInfo info = {};
        uint64_t diskseq = 0;
        const char *name;
        unsigned number;

        if (!f || !ret)
                return -EINVAL;
        if (!f->action || !f->devpath || !f->subsystem)
                return -EBADMSG;
        if (!streq(f->subsystem, "block") || !f->devtype || !streq(f->devtype, "disk"))
                return 0;
        name = strrchr(f->devpath, '/');
        name = name ? name + 1 : f->devpath;
        if (strlen(name) >= sizeof(info.sysname) || loop_name_to_number(name, &number) < 0)
                return 0;
        if (f->diskseq && safe_atou64(f->diskseq, &diskseq) < 0)
                diskseq = 0;

        info.action = f->action;
        strcpy(info.sysname, name);
        info.diskseq = diskseq;
        info.plain = streq(f->action, "change") && !f->special;
        *ret = info;
        return 1;
}

/* The value of "KEY=" when s is that property, else NULL. */
static const char *property_value(const char *s, size_t n, const char *key, size_t keylen) {
        if (n <= keylen || memcmp(s, key, keylen) != 0 || s[keylen] != '=')
                return NULL;
        return s + keylen + 1;
}

#define PROPERTY(s, n, key) property_value(s, n, key, strlen(key))

/*
 * Why a parser of our own for the kernel's group, when sd-device parses udev's: libsystemd
 * 252 offers no public monitor of the kernel group, and the figures. The format is kernel
 * ABI, not udev's internals. sd-device turns every property of a message into hash table
 * entries: receiving, parsing and freeing one udev message of a loop disk costs the daemon
 * about 76,000 instructions, this parser about 900 for a kernel message (callgrind over the
 * same attach/detach workload, docs/PERFORMANCE.md, "sd-device against the hand parsers").
 * The kernel sends as many messages as udev, and they are the ones that keep the registry
 * current, so going through sd-device for them too (sd_device_new_from_syspath() per event,
 * which also reads the device's uevent file) would double that cost again.
 */
int uevent_parse_kernel(const char *buf, size_t len, UeventInfo *ret) {
        UeventFields f = {};
        const char *p, *end, *first_end;

        if (!buf || !ret)
                return -EINVAL;

        /* "ACTION@DEVPATH" first; the properties repeat both. */
        first_end = memchr(buf, 0, len);
        if (!first_end || !memchr(buf, '@', (size_t) (first_end - buf)))
                return -EBADMSG;
        p = first_end + 1;
        end = buf + len;

        /* The last property may lack its NUL only if it is cut off: such a message is bad. */
        if (p < end && end[-1] != 0)
                return -EBADMSG;

        while (p < end) {
                size_t n = strlen(p);
                const char *v;

                if ((v = PROPERTY(p, n, "ACTION")))
                        f.action = v;
                else if ((v = PROPERTY(p, n, "DEVPATH")))
                        f.devpath = v;
                else if ((v = PROPERTY(p, n, "SUBSYSTEM")))
                        f.subsystem = v;
                else if ((v = PROPERTY(p, n, "DEVTYPE")))
                        f.devtype = v;
                else if ((v = PROPERTY(p, n, "DISKSEQ")))
                        f.diskseq = v;
                else
                        for (size_t i = 0; i < ELEMENTSOF(special_keys); i++)
                                if (PROPERTY(p, n, special_keys[i]))
                                        f.special = true;
                p += n + 1;
        }

        return uevent_from_fields(&f, ret);
}

/* The kernel's names of the actions (lib/kobject_uevent.c), in sd_device_action_t order. */
static const char *const action_names[] = {
        [SD_DEVICE_ADD] = "add",   [SD_DEVICE_REMOVE] = "remove", [SD_DEVICE_CHANGE] = "change",
        [SD_DEVICE_MOVE] = "move", [SD_DEVICE_ONLINE] = "online", [SD_DEVICE_OFFLINE] = "offline",
        [SD_DEVICE_BIND] = "bind", [SD_DEVICE_UNBIND] = "unbind",
};

int uevent_from_device(sd_device *device, UeventInfo *ret) {
        sd_device_action_t action;
        UeventFields f = {};
        uint64_t diskseq;
        int r;

        if (!device || !ret)
                return -EINVAL;

        /* Through sd-device's getters: a device from a monitor is sealed, it reads nothing
         * from sysfs or udev's database, the fields are the broadcast's. A device that came
         * from elsewhere has no action and is refused. */
        if (sd_device_get_action(device, &action) >= 0 && action >= 0 &&
            (size_t) action < ELEMENTSOF(action_names))
                f.action = action_names[action];
        (void) sd_device_get_devpath(device, &f.devpath);
        (void) sd_device_get_subsystem(device, &f.subsystem);
        (void) sd_device_get_devtype(device, &f.devtype);
        /* The diskseq sd-device keeps as a field, and no property lookup: the four lookups
         * this made (DISKSEQ, RESIZE & co.) cost about 13,000 instructions an event, most of
         * it sd-device preparing the device's properties on the first, and most udev events
         * of a loop disk need no property at all. Whether an event is plain is the kernel's
         * copy's to say (UdevWatchEvent.plain). */
        r = uevent_from_fields(&f, ret);
        if (r > 0) {
                ret->diskseq = sd_device_get_diskseq(device, &diskseq) >= 0 ? diskseq : 0;
                ret->plain = false;
        }
        return r;
}

int uevent_loop_partition_name(const char *name, char *ret_disk, size_t size,
                               unsigned *ret_number) {
        const char *p;
        unsigned number;
        uint64_t k;
        size_t n;

        if (!name || strncmp(name, "loop", 4) != 0)
                return 0;
        p = strchr(name + 4, 'p');
        if (!p)
                return 0;
        n = (size_t) (p - name);
        if (n >= size || n >= 16)
                return 0;
        memcpy(ret_disk, name, n);
        ret_disk[n] = 0;
        if (loop_name_to_number(ret_disk, &number) < 0 || p[1] < '1' || p[1] > '9' ||
            safe_atou64(p + 1, &k) < 0 || k > INT32_MAX)
                return 0;
        *ret_number = (unsigned) k;
        return 1;
}
