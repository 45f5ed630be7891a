/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <linux/netlink.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <systemd/sd-device.h>

#include "log.h"
#include "uevent.h"
#include "udev-watch.h"
#include "util.h"

#define UEVENT_GROUP_KERNEL 1U

/* Large enough for a burst of thousands of devices; overflow is handled. FORCE needs
 * CAP_NET_ADMIN; without it the kernel caps the size at net.core.rmem_max. */
#define RECEIVE_BUFFER_SIZE (128U * 1024U * 1024U)

struct UdevWatch {
        UdevWatchHandler handler;
        void *userdata;
        /* "kernel": uevents as the kernel sends them, at once: the state of a binding is
         * re-read from sysfs on each, so the registry never lags behind udev's queue. A raw
         * netlink socket, parsed by uevent.c. */
        int kernel_fd;
        sd_event_source *kernel_source;
        /* "udev": the same events after udev ran its rules: only these prove that the
         * by-diskseq link exists. sd-device checks the sender (uid 0, not the kernel). */
        sd_device_monitor *udev_monitor;
};

/* Loop devices named by the kernel events of one drain, each delivered once at its end. */
typedef struct PendingNames {
        char names[64][16];
        uint64_t diskseq[64];
        bool plain[64]; /* every event of the name was plain (uevent.h) */
        size_t n;
} PendingNames;

static void deliver(UdevWatch *w, const UdevWatchEvent *ev) {
        (void) w->handler(ev, w->userdata);
}

static void pending_flush(UdevWatch *w, PendingNames *p) {
        for (size_t i = 0; i < p->n; i++)
                deliver(w, &(UdevWatchEvent){
                                   .action = "change",
                                   .sysname = p->names[i],
                                   .diskseq = p->diskseq[i],
                                   .plain = p->plain[i],
                           });
        p->n = 0;
}

static void pending_add(UdevWatch *w, PendingNames *p, const char *name, uint64_t diskseq,
                        bool plain) {
        for (size_t i = 0; i < p->n; i++)
                if (streq(p->names[i], name)) {
                        p->plain[i] = false; /* two events: not just the announcement */
                        p->diskseq[i] = diskseq;
                        return;
                }
        if (p->n == ELEMENTSOF(p->names))
                pending_flush(w, p);
        snprintf(p->names[p->n], sizeof(p->names[p->n]), "%s", name);
        p->plain[p->n] = plain;
        p->diskseq[p->n++] = diskseq;
}

/* One message of the kernel socket into buf (size bytes). Returns 1 for a message of a loop
 * disk from the kernel (info filled), 0 for one to skip, -EAGAIN when the queue is empty,
 * -ENOBUFS when the socket overflowed. */
static int receive_kernel(int fd, char *buf, size_t size, UeventInfo *info) {
        struct sockaddr_nl sender = {};
        struct iovec iov = {.iov_base = buf, .iov_len = size};
        struct msghdr msg = {
                .msg_name = &sender,
                .msg_namelen = sizeof(sender),
                .msg_iov = &iov,
                .msg_iovlen = 1,
        };
        ssize_t n;
        int r;

        n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
                return errno == EINTR ? 0 : -errno;
        if ((msg.msg_flags & MSG_TRUNC) || msg.msg_namelen < sizeof(sender) ||
            sender.nl_family != AF_NETLINK)
                return 0;
        /* Only the kernel (port 0) speaks on the kernel group. */
        if (sender.nl_pid != 0 || sender.nl_groups != UEVENT_GROUP_KERNEL)
                return 0;

        r = uevent_parse_kernel(buf, (size_t) n, info);
        if (r < 0) {
                log_debug_errno(r, "Ignoring a malformed kernel uevent: %m");
                return 0;
        }
        return r;
}

/* Drains the kernel socket. A kernel event only makes the device it names be read again, so
 * several events of one device cost one delivery, made once the queue is empty. */
static void drain_kernel(UdevWatch *w) {
        PendingNames pending = {};
        /* Kernel uevents of block devices are a few hundred bytes. */
        char buf[8192];

        for (;;) {
                UeventInfo info;
                int r;

                r = receive_kernel(w->kernel_fd, buf, sizeof(buf), &info);
                if (r == -EAGAIN || r == -EWOULDBLOCK)
                        break;
                if (r == -ENOBUFS) {
                        /* The socket overflowed: events were lost, so rebuild the whole
                         * picture from sysfs. */
                        log_warning("uevent socket overflowed, rescanning loop devices");
                        pending.n = 0;
                        deliver(w, &(UdevWatchEvent){});
                        continue;
                }
                if (r < 0) {
                        log_warning_errno(r, "Cannot read uevents: %m");
                        break;
                }
                if (r > 0)
                        pending_add(w, &pending, info.sysname, info.diskseq, info.plain);
        }
        pending_flush(w, &pending);
}

static int on_kernel_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        drain_kernel(userdata);
        return 0;
}

/* A partition of a loop disk, after udev's rules (its blkid builtin) ran on it. */
static int on_udev_partition_event(UdevWatch *w, sd_device *device) {
        const char *sysname = NULL, *devtype = NULL;
        sd_device_action_t action;
        char disk[16];
        unsigned number;

        if (sd_device_get_devtype(device, &devtype) < 0 || !streq_ptr(devtype, "partition") ||
            sd_device_get_sysname(device, &sysname) < 0 ||
            uevent_loop_partition_name(sysname, disk, sizeof(disk), &number) <= 0 ||
            sd_device_get_action(device, &action) < 0)
                return 0;
        deliver(w, &(UdevWatchEvent){
                           .action = action == SD_DEVICE_REMOVE ? "remove" : "change",
                           .sysname = disk,
                           .partition = number,
                           .from_udev = true,
                           .device = device,
                   });
        return 0;
}

static int on_udev_event(sd_device_monitor *monitor, sd_device *device, void *userdata) {
        UdevWatch *w = userdata;
        UeventInfo info;
        UdevWatchEvent ev;
        int r;

        r = uevent_from_device(device, &info);
        if (r < 0)
                log_debug_errno(r,
                                "Ignoring a udev event without ACTION, DEVPATH or SUBSYSTEM: %m");
        if (r == 0)
                return on_udev_partition_event(w, device);
        if (r < 0)
                return 0;

        ev = (UdevWatchEvent){
                .action = info.action,
                .sysname = info.sysname,
                .diskseq = info.diskseq,
                .from_udev = true,
                .device = device,
        };
        /* The handler never calls back into the watch: when it needs the kernel's queued
         * events first, it says so and gets the event again. */
        if (w->handler(&ev, w->userdata) == UDEV_WATCH_FLUSH_KERNEL) {
                drain_kernel(w);
                ev.kernel_flushed = true;
                deliver(w, &ev);
        }
        return 0;
}

static int kernel_open(UdevWatch *w, sd_event *event) {
        struct sockaddr_nl sa = {
                .nl_family = AF_NETLINK,
                .nl_groups = UEVENT_GROUP_KERNEL,
        };
        int size = RECEIVE_BUFFER_SIZE, r;

        w->kernel_fd =
                socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT);
        if (w->kernel_fd < 0)
                return -errno;
        if (setsockopt(w->kernel_fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) < 0)
                (void) setsockopt(w->kernel_fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
        if (bind(w->kernel_fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -errno;
        r = sd_event_add_io(event, &w->kernel_source, w->kernel_fd, EPOLLIN, on_kernel_event, w);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(w->kernel_source, "kernel");
        return 0;
}

static int udev_open(UdevWatch *w, sd_event *event) {
        int r;

        r = sd_device_monitor_new(&w->udev_monitor);
        if (r < 0)
                return r;
        /* sd-device falls back to SO_RCVBUF itself without CAP_NET_ADMIN. */
        (void) sd_device_monitor_set_receive_buffer_size(w->udev_monitor, RECEIVE_BUFFER_SIZE);
        /* A socket filter in the kernel: udev's events of anything but block disks (the
         * host's network, input, partitions...) no longer wake the daemon. */
        r = sd_device_monitor_filter_add_match_subsystem_devtype(w->udev_monitor, "block", "disk");
        if (r < 0)
                return r;
        /* And partitions: what udev's blkid builtin found on those of loop disks (the
         * Partitions property); the host's others are dropped in on_udev_partition_event(). */
        r = sd_device_monitor_filter_add_match_subsystem_devtype(w->udev_monitor, "block",
                                                                 "partition");
        if (r < 0)
                return r;
        r = sd_device_monitor_attach_event(w->udev_monitor, event);
        if (r < 0)
                return r;
        (void) sd_device_monitor_set_description(w->udev_monitor, "udev");
        return sd_device_monitor_start(w->udev_monitor, on_udev_event, w);
}

void udev_watch_flush_kernel(UdevWatch *w) {
        if (w)
                drain_kernel(w);
}

int udev_watch_new(sd_event *event, UdevWatchHandler handler, void *userdata, UdevWatch **ret) {
        UdevWatch *w;
        int r;

        if (!event || !handler || !ret)
                return -EINVAL;
        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->handler = handler;
        w->userdata = userdata;
        w->kernel_fd = -EBADF;

        r = kernel_open(w, event);
        if (r < 0)
                goto fail;
        r = udev_open(w, event);
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
        safe_close(w->kernel_fd);
        if (w->udev_monitor) {
                (void) sd_device_monitor_stop(w->udev_monitor);
                (void) sd_device_monitor_detach_event(w->udev_monitor);
                sd_device_monitor_unref(w->udev_monitor);
        }
        free(w);
        return NULL;
}
