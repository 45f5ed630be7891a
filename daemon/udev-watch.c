/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <libudev.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/epoll.h>

#include "log.h"
#include "manager.h"
#include "udev-watch.h"

struct UdevWatch {
        Manager *manager;
        struct udev *udev;
        /* "kernel": uevents as the kernel sends them, at once: the state of a binding is
         * re-read from sysfs on each, so the registry never lags behind udev's queue.
         * "udev": the same events after udev ran its rules: only these prove that the
         * by-diskseq link exists. */
        struct udev_monitor *kernel_monitor, *udev_monitor;
        sd_event_source *kernel_source, *udev_source;
};

/* Loop devices named by the kernel events of one drain, each reconciled once at its end. */
typedef struct PendingNames {
        char names[64][16];
        uint64_t diskseq[64];
        size_t n;
} PendingNames;

static void pending_flush(UdevWatch *w, PendingNames *p) {
        for (size_t i = 0; i < p->n; i++)
                manager_udev_event(w->manager, "change", p->names[i], p->diskseq[i], false);
        p->n = 0;
}

static void pending_add(UdevWatch *w, PendingNames *p, const char *name, uint64_t diskseq) {
        for (size_t i = 0; i < p->n; i++)
                if (streq(p->names[i], name)) {
                        p->diskseq[i] = diskseq;
                        return;
                }
        if (p->n == ELEMENTSOF(p->names))
                pending_flush(w, p);
        snprintf(p->names[p->n], sizeof(p->names[p->n]), "%s", name);
        p->diskseq[p->n++] = diskseq;
}

static int on_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        UdevWatch *w = userdata;
        bool from_udev = s == w->udev_source;
        struct udev_monitor *monitor = from_udev ? w->udev_monitor : w->kernel_monitor;
        PendingNames pending = {};

        /* Drain everything queued: one wakeup can carry many events. A kernel event only
         * makes the device it names be read again from sysfs, so several events of one
         * device (a binding sends two at once, udev's close-after-write watch adds more) cost
         * one read, done once the queue is empty. udev's events are handled one by one: each
         * may complete the attaches waiting for its diskseq. */
        for (;;) {
                struct udev_device *dev;
                const char *name, *action, *seq;
                uint64_t diskseq = 0;

                errno = 0;
                dev = udev_monitor_receive_device(monitor);
                if (!dev) {
                        if (errno == ENOBUFS) {
                                /* The socket overflowed: events were lost, so rebuild the
                                 * whole picture from sysfs. */
                                log_warning("udev monitor overflowed, rescanning loop devices");
                                pending.n = 0;
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

                if (name && strncmp(name, "loop", 4) == 0 && name[4] >= '0' && name[4] <= '9') {
                        if (!from_udev && strlen(name) < sizeof(pending.names[0]))
                                pending_add(w, &pending, name, diskseq);
                        else
                                manager_udev_event(w->manager, action ?: "change", name,
                                                   diskseq, from_udev);
                }

                udev_device_unref(dev);
        }

        pending_flush(w, &pending);
        return 0;
}

static int monitor_open(UdevWatch *w, sd_event *event, const char *group,
                        struct udev_monitor **ret_monitor, sd_event_source **ret_source) {
        struct udev_monitor *mon;
        int r;

        mon = udev_monitor_new_from_netlink(w->udev, group);
        if (!mon)
                return -errno ?: -ENOMEM;

        r = udev_monitor_filter_add_match_subsystem_devtype(mon, "block", "disk");
        if (r >= 0) {
                /* Large enough for a burst of thousands of devices; overflow is handled. */
                (void) udev_monitor_set_receive_buffer_size(mon, 128 * 1024 * 1024);
                r = udev_monitor_enable_receiving(mon);
        }
        if (r >= 0)
                r = sd_event_add_io(event, ret_source, udev_monitor_get_fd(mon), EPOLLIN,
                                    on_event, w);
        if (r < 0) {
                udev_monitor_unref(mon);
                return r;
        }
        (void) sd_event_source_set_description(*ret_source, group);
        *ret_monitor = mon;
        return 0;
}

void udev_watch_flush_kernel(UdevWatch *w) {
        /* The same handler as a wakeup would run: everything queued is processed now. */
        (void) on_event(w->kernel_source, udev_monitor_get_fd(w->kernel_monitor), EPOLLIN, w);
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

        r = monitor_open(w, event, "kernel", &w->kernel_monitor, &w->kernel_source);
        if (r < 0)
                goto fail;
        r = monitor_open(w, event, "udev", &w->udev_monitor, &w->udev_source);
        if (r < 0)
                goto fail;

        *ret = w;
        return 0;

fail:
        udev_watch_free(w);
        return r;
}

UdevWatch *udev_watch_free(UdevWatch *w) {
        if (!w)
                return NULL;
        sd_event_source_disable_unref(w->kernel_source);
        sd_event_source_disable_unref(w->udev_source);
        udev_monitor_unref(w->kernel_monitor);
        udev_monitor_unref(w->udev_monitor);
        udev_unref(w->udev);
        free(w);
        return NULL;
}
