/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <libudev.h>
#include <stdlib.h>

#include "log.h"
#include "manager.h"
#include "udev-watch.h"

struct UdevWatch {
        Manager *manager;
        struct udev *udev;
        struct udev_monitor *monitor;
        sd_event_source *source;
};

static int on_udev_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        UdevWatch *w = userdata;

        /* Drain everything queued: one wakeup can carry many events. */
        for (;;) {
                struct udev_device *dev;
                const char *name, *action, *seq;
                uint64_t diskseq = 0;

                errno = 0;
                dev = udev_monitor_receive_device(w->monitor);
                if (!dev) {
                        if (errno == ENOBUFS) {
                                /* The socket overflowed: events were lost, so rebuild the
                                 * whole picture from sysfs. */
                                log_warning("udev monitor overflowed, rescanning loop devices");
                                manager_rescan(w->manager);
                                continue;
                        }
                        break;
                }

                name = udev_device_get_sysname(dev);
                action = udev_device_get_action(dev);
                seq = udev_device_get_property_value(dev, "DISKSEQ");
                if (seq && safe_atou64(seq, &diskseq) < 0)
                        diskseq = 0;

                if (name && strncmp(name, "loop", 4) == 0 && name[4] >= '0' && name[4] <= '9')
                        manager_udev_event(w->manager, action ?: "change", name, diskseq);

                udev_device_unref(dev);
        }

        return 0;
}

int udev_watch_new(sd_event *event, Manager *m, UdevWatch **ret) {
        UdevWatch *w;
        int r;

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->manager = m;

        w->udev = udev_new();
        if (!w->udev) {
                r = -errno ?: -ENOMEM;
                goto fail;
        }

        /* "udev", not "kernel": an event from udev means its rules ran, so the
         * /dev/disk/by-diskseq link exists and the probe released its lock. */
        w->monitor = udev_monitor_new_from_netlink(w->udev, "udev");
        if (!w->monitor) {
                r = -errno ?: -ENOMEM;
                goto fail;
        }

        r = udev_monitor_filter_add_match_subsystem_devtype(w->monitor, "block", "disk");
        if (r < 0)
                goto fail;

        /* Large enough for a burst of thousands of devices; overflow is handled anyway. */
        (void) udev_monitor_set_receive_buffer_size(w->monitor, 128 * 1024 * 1024);

        r = udev_monitor_enable_receiving(w->monitor);
        if (r < 0)
                goto fail;

        r = sd_event_add_io(event, &w->source, udev_monitor_get_fd(w->monitor), EPOLLIN,
                            on_udev_event, w);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_description(w->source, "udev-monitor");

        *ret = w;
        return 0;

fail:
        udev_watch_free(w);
        return r;
}

UdevWatch *udev_watch_free(UdevWatch *w) {
        if (!w)
                return NULL;
        sd_event_source_disable_unref(w->source);
        udev_monitor_unref(w->monitor);
        udev_unref(w->udev);
        free(w);
        return NULL;
}
