/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <linux/netlink.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "log.h"
#include "manager.h"
#include "uevent.h"
#include "udev-watch.h"
#include "util.h"

struct UdevWatch {
        Manager *manager;
        /* "kernel": uevents as the kernel sends them, at once: the state of a binding is
         * re-read from sysfs on each, so the registry never lags behind udev's queue.
         * "udev": the same events after udev ran its rules: only these prove that the
         * by-diskseq link exists. Raw netlink sockets, parsed by uevent.c. */
        int kernel_fd, udev_fd;
        sd_event_source *kernel_source, *udev_source;
};

/* Loop devices named by the kernel events of one drain, each reconciled once at its end. */
typedef struct PendingNames {
        char names[64][16];
        uint64_t diskseq[64];
        bool plain[64];         /* every event of the name was plain (manager.h) */
        size_t n;
} PendingNames;

static void pending_flush(UdevWatch *w, PendingNames *p) {
        for (size_t i = 0; i < p->n; i++)
                manager_udev_event(w->manager, "change", p->names[i], p->diskseq[i], false,
                                   p->plain[i]);
        p->n = 0;
}

static void pending_add(UdevWatch *w, PendingNames *p, const char *name, uint64_t diskseq,
                        bool plain) {
        for (size_t i = 0; i < p->n; i++)
                if (streq(p->names[i], name)) {
                        p->plain[i] = false;    /* two events: not just the announcement */
                        p->diskseq[i] = diskseq;
                        return;
                }
        if (p->n == ELEMENTSOF(p->names))
                pending_flush(w, p);
        snprintf(p->names[p->n], sizeof(p->names[p->n]), "%s", name);
        p->plain[p->n] = plain;
        p->diskseq[p->n++] = diskseq;
}

/* One message from fd into buf (len bytes). Returns 1 for a message of a loop disk from the
 * right sender (info filled), 0 for one to skip, -EAGAIN when the queue is empty, -ENOBUFS
 * when the socket overflowed. */
static int receive_one(int fd, bool from_udev, char *buf, size_t size, UeventInfo *info) {
        union {
                struct cmsghdr cmsghdr;
                uint8_t buf[CMSG_SPACE(sizeof(struct ucred))];
        } control = {};
        struct sockaddr_nl sender = {};
        struct iovec iov = { .iov_base = buf, .iov_len = size };
        struct msghdr msg = {
                .msg_name = &sender,
                .msg_namelen = sizeof(sender),
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = &control,
                .msg_controllen = sizeof(control),
        };
        struct ucred *cred = NULL;
        ssize_t n;
        int r;

        n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
                return errno == EINTR ? 0 : -errno;
        if ((msg.msg_flags & MSG_TRUNC) || msg.msg_namelen < sizeof(sender) ||
            sender.nl_family != AF_NETLINK)
                return 0;

        if (!from_udev) {
                /* Only the kernel (port 0) speaks on the kernel group. */
                if (sender.nl_pid != 0 || sender.nl_groups != UEVENT_GROUP_KERNEL)
                        return 0;
        } else {
                /* udevd runs as root; anybody else on the group is ignored, as libudev does. */
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
                            c->cmsg_len == CMSG_LEN(sizeof(struct ucred)))
                                cred = (struct ucred *) CMSG_DATA(c);
                if (sender.nl_pid == 0 || sender.nl_groups != UEVENT_GROUP_UDEV || !cred ||
                    cred->uid != 0)
                        return 0;
        }

        r = uevent_parse(buf, (size_t) n, from_udev ? UEVENT_GROUP_UDEV : UEVENT_GROUP_KERNEL,
                         info);
        if (r < 0) {
                log_debug_errno(r, "Ignoring a malformed %s uevent: %m", from_udev ? "udev" : "kernel");
                return 0;
        }
        return r;
}

static int on_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        UdevWatch *w = userdata;
        bool from_udev = s == w->udev_source;
        PendingNames pending = {};
        /* udev's messages carry every property and link of a device: a few KiB. */
        char buf[16384];

        /* Drain everything queued: one wakeup can carry many events. A kernel event only
         * makes the device it names be read again from sysfs, so several events of one
         * device cost one read, done once the queue is empty. udev's events are handled one
         * by one: each may complete the attaches waiting for its diskseq. */
        for (;;) {
                UeventInfo info;
                int r;

                r = receive_one(fd, from_udev, buf, sizeof(buf), &info);
                if (r == -EAGAIN || r == -EWOULDBLOCK)
                        break;
                if (r == -ENOBUFS) {
                        /* The socket overflowed: events were lost, so rebuild the whole
                         * picture from sysfs. */
                        log_warning("uevent socket overflowed, rescanning loop devices");
                        pending.n = 0;
                        manager_rescan(w->manager);
                        continue;
                }
                if (r < 0) {
                        log_warning_errno(r, "Cannot read uevents: %m");
                        break;
                }
                if (r == 0)
                        continue;

                if (!from_udev)
                        pending_add(w, &pending, info.sysname, info.diskseq, info.plain);
                else
                        manager_udev_event(w->manager, info.action, info.sysname, info.diskseq,
                                           true, false);
        }

        pending_flush(w, &pending);
        return 0;
}

static int monitor_open(UdevWatch *w, sd_event *event, unsigned group, int *ret_fd,
                        sd_event_source **ret_source) {
        struct sockaddr_nl sa = {
                .nl_family = AF_NETLINK,
                .nl_groups = group,
        };
        /* Large enough for a burst of thousands of devices; overflow is handled. FORCE needs
         * CAP_NET_ADMIN; without it the kernel caps the size at net.core.rmem_max. */
        int fd, one = 1, size = 128 * 1024 * 1024, r;

        fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT);
        if (fd < 0)
                return -errno;
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) < 0)
                (void) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
        if ((group == UEVENT_GROUP_UDEV &&
             setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0) ||
            bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                r = -errno;
                safe_close(fd);
                return r;
        }
        r = sd_event_add_io(event, ret_source, fd, EPOLLIN, on_event, w);
        if (r < 0) {
                safe_close(fd);
                return r;
        }
        (void) sd_event_source_set_description(*ret_source,
                                               group == UEVENT_GROUP_UDEV ? "udev" : "kernel");
        *ret_fd = fd;
        return 0;
}

void udev_watch_flush_kernel(UdevWatch *w) {
        /* The same handler as a wakeup would run: everything queued is processed now. */
        (void) on_event(w->kernel_source, w->kernel_fd, EPOLLIN, w);
}

int udev_watch_new(sd_event *event, Manager *m, UdevWatch **ret) {
        UdevWatch *w;
        int r;

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->manager = m;
        w->kernel_fd = w->udev_fd = -EBADF;

        r = monitor_open(w, event, UEVENT_GROUP_KERNEL, &w->kernel_fd, &w->kernel_source);
        if (r < 0)
                goto fail;
        r = monitor_open(w, event, UEVENT_GROUP_UDEV, &w->udev_fd, &w->udev_source);
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
        safe_close(w->kernel_fd);
        safe_close(w->udev_fd);
        free(w);
        return NULL;
}
