/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The small operations on one device that the bus layer's Device methods ask for: autoclear,
 * capacity, an fd of the device for a client, and the hand-over of a caller's reference to its
 * mount. The kernel is asked here, never from the bus layer.
 */

#include "loop-kernel.h"
#include "manager.h"

int manager_set_autoclear(Manager *m, Device *d, bool value, Problem *error) {
        int r;

        r = loop_set_autoclear(m->root, d->status.name, d->status.diskseq, value);
        if (r < 0)
                return problem_setf(error, r == -ESTALE ? -ENODEV : r,
                                    "Failed to set autoclear on %s: %s.", d->node, strerror(-r));

        /* With nothing holding it open, the kernel clears the device right away on 6.11+;
         * reconcile reads either outcome and emits the matching signals. */
        (void) manager_reconcile(m, d->status.name);
        return 0;
}

int manager_set_capacity(Manager *m, Device *d, Problem *error) {
        int r;

        r = loop_set_capacity(m->root, d->status.name, d->status.diskseq);
        if (r < 0)
                return problem_setf(error, r == -ESTALE ? -ENODEV : r,
                                    "Failed to update the capacity of %s: %s.", d->node,
                                    strerror(-r));
        (void) manager_reconcile(m, d->status.name);
        return 0;
}

int manager_check_open_device(Device *d, bool writable, Problem *error) {
        /* A device being torn down goes as soon as its last opener closes; a new fd would only
         * keep it pending. */
        if (d->state != DEVICE_ATTACHED)
                return problem_setf(error, -EBUSY, "%s is being torn down.", d->node);
        if (writable && d->status.read_only)
                return problem_setf(error, -EINVAL,
                                    "%s is a read-only device; open it with mode 'r'.", d->node);
        return 0;
}

int manager_open_device(Manager *m, Device *d, bool writable, int *ret_fd, Problem *error) {
        int fd, r;

        r = manager_check_open_device(d, writable, error);
        if (r < 0)
                return r;

        fd = loop_open_binding(m->root, d->status.name, d->status.diskseq, writable);
        if (fd == -ESTALE)
                return problem_setf(error, -ENODEV, "%s was detached or rebound meanwhile.",
                                    d->node);
        if (writable && (fd == -EROFS || fd == -EACCES))
                return problem_setf(error, -EINVAL,
                                    "The kernel refuses to open %s for writing (%s); open it with "
                                    "mode 'r'.",
                                    d->node, strerror(-fd));
        if (fd < 0)
                return problem_setf(error, fd, "Cannot open %s: %s.", d->node, strerror(-fd));
        *ret_fd = fd;
        return 0;
}

/* The caller's newest reference on d that no mount holds. */
Reference *device_own_reference(Device *d, uid_t uid) {
        for (Reference *r = d->references; r; r = r->next)
                if (r->uid == uid && r->lifetime != LIFETIME_MOUNT)
                        return r;
        return NULL;
}

static void references_changed(Manager *m, Device *d) {
        if (d->managed)
                (void) manager_save_state(m);
        manager_emit_device_changed(m, d, (char *[]){"References", NULL});
}

int manager_release_to_mount(Manager *m, Device *d, unsigned partition, Reference *own, uid_t uid) {
        DeviceMount *mnt = device_get_mount(d, partition);
        char *owner;
        int r;

        if (!mnt || !mnt->point)
                return 0;
        if (mnt->ref_id && device_find_reference(d, mnt->ref_id)) {
                /* The mount holds one already: the caller's is surplus. */
                if (own) {
                        (void) device_drop_reference_id(d, own->id);
                        references_changed(m, d);
                }
                return 0;
        }
        if (!own) {
                /* The caller handed its reference to another mount of d (another partition):
                 * this mount keeps d too, with a reference of its own. */
                if (!device_has_mount_reference_of(d, uid))
                        return 0;
                r = device_add_reference(d, uid, LIFETIME_MOUNT, mnt->point);
                if (r < 0)
                        return r;
                mnt->ref_id = d->references->id;
                references_changed(m, d);
                return 0;
        }
        owner = strdup(mnt->point);
        if (!owner)
                return -ENOMEM;
        free(own->owner);
        own->owner = owner;
        own->lifetime = LIFETIME_MOUNT;
        own->confirmed = true;
        mnt->ref_id = own->id;
        if (d->managed)
                (void) manager_save_state(m);
        return 0;
}
