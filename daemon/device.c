/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <libmount.h>
#include <stdio.h>
#include <sys/sysmacros.h>

#include "block-use.h"
#include "bus-util.h"
#include "device.h"
#include "log.h"
#include "loopmgr-bus.h"
#include "manager.h"

const char *device_state_to_string(DeviceState s) {
        return s == DEVICE_DETACH_PENDING ? LOOPMGR_STATE_DETACH_PENDING : LOOPMGR_STATE_ATTACHED;
}

int device_loop_info_lookup(dev_t devnum, void *userdata, LoopLayerInfo *ret) {
        Manager *m = userdata;
        Device *d = manager_get_device_by_devnum(m, devnum);

        if (!d || !d->status.bound || d->status.size == 0)
                return 0;
        if (d->backing_is_block)
                ret->backing = (Backing) { .is_block = true, .device = d->status.backing_rdevice };
        else if (d->status.backing_device != 0 || d->status.backing_inode != 0)
                ret->backing = (Backing) { .device = d->status.backing_device,
                                           .inode = d->status.backing_inode };
        else
                return 0;       /* ids unknown: let the canonicaliser ask the kernel */
        ret->offset = d->status.offset;
        ret->size = d->status.size;
        ret->backing_file = d->status.backing_file;
        return 1;
}

void device_update_identity(Device *d) {
        Layer top;
        Backing b;
        int r;

        d->has_identity = false;
        chain_done(&d->chain);
        if (!d->status.bound || d->status.size == 0)
                return;

        d->backing_is_block = d->status.backing_rdevice != 0;
        if (d->backing_is_block)
                b = (Backing) { .is_block = true, .device = d->status.backing_rdevice };
        else if (d->status.backing_device != 0 || d->status.backing_inode != 0)
                b = (Backing) { .device = d->status.backing_device,
                                .inode = d->status.backing_inode };
        else
                return;         /* ids unknown (device in rundown): no identity */

        top = (Layer) { .kind = LAYER_LOOP, .devnum = d->status.devnum,
                        .path = d->status.backing_file };
        snprintf(top.name, sizeof(top.name), "%s", d->status.name);

        r = chain_resolve(d->manager->root, &top, &b, d->status.offset, d->status.size,
                          device_loop_info_lookup, d->manager, &d->chain);
        if (r < 0) {
                log_debug_errno(r, "Cannot resolve the chain of %s: %m", d->status.name);
                return;
        }
        d->identity = d->chain.identity;
        d->has_identity = true;
}

int device_new(Manager *m, const LoopStatus *status, bool managed, Device **ret) {
        Device *d;
        int r;

        d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        d->manager = m;
        d->mount_uid = (uid_t) -1;
        d->status = *status;
        d->status.backing_file = NULL;
        if (status->backing_file) {
                d->status.backing_file = strdup(status->backing_file);
                if (!d->status.backing_file) {
                        free(d);
                        return -ENOMEM;
                }
        }
        d->managed = managed;
        d->state = DEVICE_ATTACHED;

        r = bus_device_path(status->diskseq, &d->path);
        if (r >= 0 && asprintf(&d->node, "/dev/%s", status->name) < 0) {
                d->node = NULL;
                r = -ENOMEM;
        }
        if (r < 0) {
                device_free(d);
                return r;
        }

        device_update_identity(d);
        *ret = d;
        return 0;
}

Waiter *waiter_free(Waiter *w) {
        if (!w)
                return NULL;
        sd_event_source_disable_unref(w->timeout);
        sd_bus_message_unref(w->message);
        free(w);
        return NULL;
}

Device *device_free(Device *d) {
        if (!d)
                return NULL;

        while (d->waiters) {
                Waiter *w = d->waiters;
                d->waiters = w->next;
                waiter_free(w);
        }
        sd_event_source_disable_unref(d->teardown_retry);
        device_drop_all_references(d);
        strv_free(d->openers);
        free(d->creator);
        chain_done(&d->chain);
        loop_status_done(&d->status);
        free(d->mount_point);
        free(d->id_type);
        free(d->id_label);
        free(d->id_uuid);
        free(d->path);
        free(d->node);
        free(d);
        return NULL;
}

int device_add_reference(Device *d, uid_t uid, Lifetime lifetime, const char *owner) {
        Reference *ref;

        ref = calloc(1, sizeof(*ref));
        if (!ref)
                return -ENOMEM;
        ref->id = ++d->manager->last_reference_id;
        ref->uid = uid;
        ref->lifetime = lifetime;
        ref->confirmed = true;
        if ((lifetime == LIFETIME_CLIENT || lifetime == LIFETIME_MOUNT) && owner) {
                ref->owner = strdup(owner);
                if (!ref->owner) {
                        free(ref);
                        return -ENOMEM;
                }
        }

        if (d->n_references == 0)
                d->owner_uid = uid;
        ref->next = d->references;
        d->references = ref;
        d->n_references++;
        return 0;
}

bool device_has_reference_of(Device *d, uid_t uid) {
        for (Reference *r = d->references; r; r = r->next)
                if (r->uid == uid)
                        return true;
        return false;
}

static void reference_unlink(Device *d, Reference **link) {
        Reference *r = *link;

        *link = r->next;
        free(r->owner);
        free(r);
        d->n_references--;
}

Reference *device_find_reference(Device *d, uint64_t id) {
        for (Reference *r = d->references; r; r = r->next)
                if (r->id == id)
                        return r;
        return NULL;
}

int device_drop_reference_id(Device *d, uint64_t id) {
        for (Reference **i = &d->references; *i; i = &(*i)->next)
                if ((*i)->id == id) {
                        reference_unlink(d, i);
                        return 1;
                }
        return 0;
}

int device_drop_reference(Device *d, uid_t uid) {
        /* The list is newest first, so this drops the newest reference of uid; one a mount
         * holds only when there is no other (the mount would otherwise lose it under the
         * user's file manager). */
        for (int pass = 0; pass < 2; pass++)
                for (Reference **i = &d->references; *i; i = &(*i)->next)
                        if ((*i)->uid == uid && (pass == 1 || (*i)->lifetime != LIFETIME_MOUNT)) {
                                reference_unlink(d, i);
                                return 1;
                        }
        return 0;
}

void device_drop_all_references(Device *d) {
        while (d->references)
                reference_unlink(d, &d->references);
}

unsigned device_drop_client_references(Device *d, const char *owner) {
        unsigned n = 0;

        for (Reference **i = &d->references; *i;) {
                if ((*i)->lifetime == LIFETIME_CLIENT && streq_ptr((*i)->owner, owner)) {
                        reference_unlink(d, i);
                        n++;
                } else
                        i = &(*i)->next;
        }
        return n;
}

void device_unlink_waiter(Device *d, Waiter *w) {
        for (Waiter **i = &d->waiters; *i; i = &(*i)->next)
                if (*i == w) {
                        *i = w->next;
                        w->next = NULL;
                        return;
                }
}

static int on_waiter_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Waiter *w = userdata;

        manager_waiter_timeout(w->device->manager, w);
        return 0;
}

int device_add_waiter(Device *d, WaiterKind kind, sd_bus_message *message, bool reused,
                      uid_t uid, uint64_t timeout_usec, Waiter **ret) {
        Waiter *w;
        int r;

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->device = d;
        w->kind = kind;
        w->reused = reused;
        w->uid = uid;
        w->message = sd_bus_message_ref(message);

        r = sd_event_add_time_relative(d->manager->event, &w->timeout, CLOCK_MONOTONIC,
                                       timeout_usec, 0, on_waiter_timeout, w);
        if (r < 0) {
                waiter_free(w);
                return r;
        }

        w->next = d->waiters;
        d->waiters = w;
        if (ret)
                *ret = w;
        return 0;
}

static int strv_push_printf(char ***l, size_t *n, const char *format, ...) _printf_(3, 4);
static int strv_push_printf(char ***l, size_t *n, const char *format, ...) {
        char **nl, *s;
        va_list ap;
        int r;

        va_start(ap, format);
        r = vasprintf(&s, format, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;

        nl = realloc(*l, sizeof(char *) * (*n + 2));
        if (!nl) {
                free(s);
                return -ENOMEM;
        }
        nl[(*n)++] = s;
        nl[*n] = NULL;
        *l = nl;
        return 0;
}

int device_chain(Device *d, char ***ret) {
        char **l;

        if (d->has_identity)
                return chain_format(&d->chain, ret);

        /* No identity (the ids could not be read, e.g. during rundown): say what we know. */
        l = calloc(2, sizeof(char *));
        if (!l)
                return -ENOMEM;
        if (asprintf(&l[0], "%s: backing %s (not identified)", d->status.name,
                     d->status.backing_file ?: "unknown") < 0) {
                free(l);
                return -ENOMEM;
        }
        *ret = l;
        return 0;
}

/* Whether dev is a partition of d: /sys/dev/block/MAJ:MIN resolves to .../<name>/<partition>. */
static bool devnum_is_partition_of(Device *d, dev_t dev) {
        _cleanup_free_ char *link = NULL, *target = NULL;
        char buf[PATH_MAX];
        const char *parent_end, *parent;
        ssize_t k;

        /* Partitions of a loop device are blkext (259), or loop minors with max_part set: no
         * other device can be one, and the sysfs lookup is the expensive part. */
        if (major(dev) != 259 && major(dev) != LOOP_MAJOR_NUMBER)
                return false;
        if (dev == d->status.devnum)
                return false;

        if (asprintf(&target, "/sys/dev/block/%u:%u", major(dev), minor(dev)) < 0)
                return false;
        link = path_join_root(d->manager->root, target);
        if (!link)
                return false;
        k = readlink(link, buf, sizeof(buf) - 1);
        if (k <= 0)
                return false;
        buf[k] = 0;

        parent_end = strrchr(buf, '/');
        if (!parent_end)
                return false;
        buf[parent_end - buf] = 0;
        parent = strrchr(buf, '/');
        parent = parent ? parent + 1 : buf;
        return streq(parent, d->status.name);
}

int device_openers(Device *d, struct libmnt_table *mounts, char ***ret_pairs) {
        return device_openers_with(d, mounts, manager_foreign_mounts(d->manager), ret_pairs);
}

int device_openers_with(Device *d, struct libmnt_table *mounts, const ForeignMounts *foreign,
                        char ***ret_pairs) {
        _cleanup_strv_free_ char **l = NULL;
        _cleanup_free_ char *holders = NULL, *sys = NULL;
        struct libmnt_table *tb = mounts;
        size_t n = 0;
        DIR *dir;
        int r;

        /* Mounts visible in our namespace (the device itself or any of its partitions). */
        if (!tb)
                tb = manager_mount_table(d->manager);
        if (tb) {
                struct libmnt_iter *it = mnt_new_iter(MNT_ITER_FORWARD);
                struct libmnt_fs *fs;

                while (it && mnt_table_next_fs(tb, it, &fs) == 0) {
                        dev_t dev = mnt_fs_get_devno(fs);

                        if (dev == 0)
                                continue;
                        if (dev == d->status.devnum || devnum_is_partition_of(d, dev)) {
                                r = strv_push_printf(&l, &n, "mount");
                                if (r >= 0)
                                        r = strv_push_printf(&l, &n, "%s", mnt_fs_get_target(fs) ?: "?");
                                if (r < 0) {
                                        mnt_free_iter(it);
                                        if (tb != mounts)
                                                mnt_unref_table(tb);
                                        return r;
                                }
                        }
                }
                mnt_free_iter(it);
        }
        if (tb != mounts)
                mnt_unref_table(tb);

        /* Block devices stacked on it (device-mapper, md, ...). Loop devices are virtual
         * block devices: their real sysfs directory spares the walk through the /sys/block
         * symlink, half the cost of this per-device lookup (GetManagedObjects does it for
         * every device). /sys/block is the fallback for trees that lack it (tests). */
        sys = path_join_root(d->manager->root, "/sys/devices/virtual/block");
        if (!sys || asprintf(&holders, "%s/%s/holders", sys, d->status.name) < 0) {
                holders = NULL;
                return -ENOMEM;
        }
        dir = opendir(holders);
        if (!dir && errno == ENOENT) {
                free(sys);
                free(holders);
                holders = NULL;
                sys = path_join_root(d->manager->root, "/sys/block");
                if (!sys || asprintf(&holders, "%s/%s/holders", sys, d->status.name) < 0) {
                        holders = NULL;
                        return -ENOMEM;
                }
                dir = opendir(holders);
        }
        if (dir) {
                struct dirent *de;

                while ((de = readdir(dir)))
                        if (de->d_name[0] != '.') {
                                r = strv_push_printf(&l, &n, "holder");
                                if (r >= 0)
                                        r = strv_push_printf(&l, &n, "/dev/%s", de->d_name);
                                if (r < 0) {
                                        closedir(dir);
                                        return r;
                                }
                        }
                closedir(dir);
        }

        /* Mounts in other namespaces (read from their mountinfo: the device is not opened,
         * so a concurrent mount is never disturbed). */
        if (foreign) {
                const ForeignMounts *f = foreign;

                for (size_t i = 0; i < f->n; i++) {
                        dev_t dev = f->mounts[i].devnum;

                        if (dev != d->status.devnum && !devnum_is_partition_of(d, dev))
                                continue;
                        r = strv_push_printf(&l, &n, "mount");
                        if (r >= 0)
                                r = strv_push_printf(&l, &n, "(other namespace)");
                        if (r < 0)
                                return r;
                }
        }

        /* Loop devices using it, or one of its partitions, as their backing. */
        for (size_t i = 0; i < d->manager->n_slots; i++) {
                Device *o = d->manager->devices[i];

                if (!o || o == d || !o->backing_is_block ||
                    (o->status.backing_rdevice != d->status.devnum &&
                     !devnum_is_partition_of(d, o->status.backing_rdevice)))
                        continue;
                r = strv_push_printf(&l, &n, "loop");
                if (r >= 0)
                        r = strv_push_printf(&l, &n, "%s", o->node);
                if (r < 0)
                        return r;
        }

        if (!l) {
                l = calloc(1, sizeof(char *));
                if (!l)
                        return -ENOMEM;
        }
        *ret_pairs = TAKE_PTR(l);
        return 0;
}
