/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * One tracked binding and its references: a leaf, which knows nothing of the registry, the
 * bus or the kernel. The manager's modules do the rest (manager.h).
 */

#include <assert.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <libmount.h>
#include <stdio.h>
#include <sys/sysmacros.h>

#include "device-path.h"
#include "device.h"
#include "log.h"
#include "loopmgr-bus.h"

const char *device_state_to_string(DeviceState s) {
        return s == DEVICE_DETACH_PENDING ? LOOPMGR_STATE_DETACH_PENDING : LOOPMGR_STATE_ATTACHED;
}

int device_new(Manager *m, uint64_t *reference_ids, const LoopStatus *status, bool managed,
               Device **ret) {
        Device *d;
        int r;

        d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        d->manager = m;
        d->reference_ids = reference_ids;
        d->mount.uid = (uid_t) -1;
        d->hold_fd = -EBADF;
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

        r = device_path_new(status->diskseq, &d->path);
        if (r >= 0 && asprintf(&d->node, "/dev/%s", status->name) < 0) {
                d->node = NULL;
                r = -ENOMEM;
        }
        if (r < 0) {
                device_free(d);
                return r;
        }

        *ret = d;
        return 0;
}

Device *device_free(Device *d) {
        if (!d)
                return NULL;

        /* The waiters are the manager's to answer (waiter.h): none may be left. */
        assert(!d->waiters);
        sd_event_source_disable_unref(d->teardown_retry);
        device_drop_all_references(d);
        strv_free(d->openers);
        free(d->creator);
        chain_done(&d->chain);
        loop_status_done(&d->status);
        device_mount_clear(&d->mount);
        device_partitions_free(d);
        if (d->hold_fd >= 0)
                (void) close(d->hold_fd);
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
        ref->id = ++*d->reference_ids;
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

void device_mount_clear(DeviceMount *mnt) {
        free(mnt->point);
        *mnt = (DeviceMount){.uid = (uid_t) -1};
}

void device_partitions_free(Device *d) {
        for (size_t i = 0; i < d->n_partitions; i++) {
                DevicePartition *p = &d->partitions[i];

                free(p->node);
                free(p->id_type);
                free(p->id_label);
                free(p->id_uuid);
                device_mount_clear(&p->mount);
        }
        free(d->partitions);
        d->partitions = NULL;
        d->n_partitions = 0;
}

DevicePartition *device_get_partition(Device *d, unsigned number) {
        for (size_t i = 0; i < d->n_partitions; i++)
                if (d->partitions[i].number == number)
                        return &d->partitions[i];
        return NULL;
}

DeviceMount *device_get_mount(Device *d, unsigned partition) {
        DevicePartition *p;

        if (partition == 0)
                return &d->mount;
        p = device_get_partition(d, partition);
        return p ? &p->mount : NULL;
}

dev_t device_mount_devnum(Device *d, unsigned partition) {
        DevicePartition *p = partition ? device_get_partition(d, partition) : NULL;

        return partition == 0 ? d->status.devnum : p ? p->devnum : 0;
}

const char *device_mount_node(Device *d, unsigned partition) {
        DevicePartition *p = partition ? device_get_partition(d, partition) : NULL;

        return partition == 0 ? d->node : p ? p->node : NULL;
}

DeviceMount *device_mount_at(Device *d, size_t i, dev_t *ret_devnum, unsigned *ret_partition) {
        DevicePartition *p = i > 0 ? &d->partitions[i - 1] : NULL;

        if (ret_devnum)
                *ret_devnum = p ? p->devnum : d->status.devnum;
        if (ret_partition)
                *ret_partition = p ? p->number : 0;
        return p ? &p->mount : &d->mount;
}

bool device_has_mount_reference_of(Device *d, uid_t uid) {
        for (Reference *r = d->references; r; r = r->next)
                if (r->uid == uid && r->lifetime == LIFETIME_MOUNT)
                        return true;
        return false;
}

bool device_has_mounts(Device *d) {
        if (d->mount.point)
                return true;
        for (size_t i = 0; i < d->n_partitions; i++)
                if (d->partitions[i].mount.point)
                        return true;
        return false;
}
