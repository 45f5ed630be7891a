/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The alias rule (SPEC section 4) on a prospective binding: its chain resolved down to the
 * base, the existing devices over the same bytes found through the range index (reuse the
 * identical one, refuse an overlap), and the block devices it passes through checked idle.
 */

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>

#include "block-use.h"
#include "log.h"
#include "manager.h"
#include "mount-job.h"
#include "registry.h"

typedef struct AliasScan {
        const Chain *chain;
        const AttachRequest *req;
        Device *reuse;
        Device *conflict;  /* first intersecting device not in the chain (rule 3) */
        Device *exclusive; /* first intersecting device, for sharing=exclusive */
} AliasScan;

static int alias_scan_one(Device *e, void *userdata) {
        AliasScan *a = userdata;
        const Identity *id = &a->chain->identity;

        if (!a->exclusive)
                a->exclusive = e;

        /* Rule 1 candidate: same bytes, same read-only mode. Prefer attached over pending
         * (manager_attach() revives a pending one), then managed, then the lowest number. */
        if (identity_equal_range(id, &e->identity) && e->status.read_only == a->req->read_only) {
                if (!a->reuse ||
                    (a->reuse->state == DEVICE_DETACH_PENDING && e->state == DEVICE_ATTACHED) ||
                    (a->reuse->state == e->state && e->managed && !a->reuse->managed))
                        a->reuse = e;
                return 0;
        }

        /* Rule 2: a device in the request's own chain is what it stacks on. Whether that
         * device is idle is checked on the chain as a whole (check_chain_busy()). */
        if (chain_contains(a->chain, e->status.devnum))
                return 0;

        if (!a->conflict)
                a->conflict = e;
        return 0;
}

typedef struct BusyScan {
        Manager *m;
        struct libmnt_table *mounts;
        bool read_only;
        Problem *error;
} BusyScan;

static int check_one_busy(dev_t devnum, const char *name, void *userdata) {
        BusyScan *b = userdata;
        BlockUse use = {};
        Device *e = manager_get_device_by_devnum(b->m, devnum);
        int r;

        /* Not mounted yet, but about to be: a device stacked on it now would alias the mount. */
        if (e && e->mount_job)
                return manager_mount_job_busy(e, b->error);
        r = block_use_probe(b->m->root, devnum, name, b->mounts, manager_foreign_mounts(b->m),
                            &use);
        if (r < 0)
                return problem_setf(b->error, r, "Cannot tell whether /dev/%s is in use: %s.", name,
                                    strerror(-r));
        if (use.in_use && !(b->read_only && use.read_only)) {
                r = problem_setf(
                        b->error, -EBUSY,
                        "/dev/%s is %s; a loop device over it would expose the bytes of a file "
                        "system in use%s.",
                        name, use.description ?: "in use",
                        use.read_only ? " (read-only use: a read-only attach is allowed)" : "");
                block_use_done(&use);
                return r;
        }
        block_use_done(&use);
        return 0;
}

/* Rule 2's other half: every block device the request passes through must be idle (not
 * mounted, not held), in any namespace, unless both the use and the new device are read-only.
 * The partitions of those devices that meet the covered range are checked too: looping a
 * whole disk would alias a mounted partition of it. */
static int check_chain_busy(Manager *m, const Chain *chain, bool read_only, Problem *error) {
        _cleanup_(mnt_unref_tablep) struct libmnt_table *mounts = NULL;
        BusyScan b = {.m = m, .read_only = read_only, .error = error};
        int r = 0;

        if (chain->n_layers < 2 ||
            (chain->n_layers == 2 && chain->layers[1].kind == LAYER_BASE_FILE))
                return 0; /* a plain file: no block device on the way */

        mounts = manager_mount_table(m);
        b.mounts = mounts;

        for (size_t i = 1; i < chain->n_layers && r == 0; i++) {
                const Layer *l = &chain->layers[i];

                if (l->devnum == 0 || !l->name[0])
                        continue;
                /* Partitions first, so that Busy names the mounted partition and its mount
                 * point rather than the disk. */
                if (l->kind != LAYER_PARTITION)
                        r = block_foreach_partition_in_range(
                                m->root, l->name, chain->layers[i - 1].offset,
                                chain->layers[i - 1].size, check_one_busy, &b);
                if (r == 0)
                        r = check_one_busy(l->devnum, l->name, &b);
        }

        if (r < 0 && !problem_is_set(error))
                return problem_setf(error, r, "Cannot check the devices below: %s.", strerror(-r));
        return r;
}

int manager_check_aliases(Manager *m, const Chain *chain, const AttachRequest *req,
                          Device **ret_reuse, Problem *error) {
        const Identity *id = &chain->identity;
        AliasScan a = {.chain = chain, .req = req};
        Device *e;
        int r;

        r = registry_foreach_intersecting(m, id, alias_scan_one, &a);
        if (r < 0)
                return problem_setf(error, r, "Cannot search existing devices: %s.", strerror(-r));

        /* Rule 1 first: handing back an identical device creates no new device, so no alias. */
        if (req->options->sharing == SHARING_SHARED && a.reuse) {
                *ret_reuse = a.reuse;
                return 1;
        }

        if (req->options->sharing == SHARING_EXCLUSIVE && a.exclusive) {
                e = a.exclusive;
                return problem_setf(
                        error, -EBUSY,
                        "%s already exposes bytes %" PRIu64 "-%" PRIu64 " of the same backing, and "
                        "sharing=exclusive was asked for.",
                        e->node, e->identity.offset, e->identity.offset + e->identity.size);
        }

        /* Rule 3: anything else over these bytes, outside the request's chain. */
        e = a.conflict
                    ?: (a.reuse && !chain_contains(chain, a.reuse->status.devnum) ? a.reuse : NULL);
        if (e)
                return problem_setf(
                        error, -EADDRINUSE,
                        "%s already exposes bytes %" PRIu64 "-%" PRIu64 " of the same backing, "
                        "which overlaps the requested bytes %" PRIu64 "-%" PRIu64 "%s; a second "
                        "device over the same data would corrupt it.",
                        e->node, e->identity.offset, e->identity.offset + e->identity.size,
                        id->offset, id->offset + id->size,
                        identity_equal_range(id, &e->identity)
                                ? (e->status.read_only != req->read_only
                                           ? " (with a different read-only mode)"
                                           : "")
                                : "");

        /* Rule 2: what we stack on must be idle. */
        r = check_chain_busy(m, chain, req->read_only, error);
        if (r < 0)
                return r;
        return 0;
}

int manager_resolve_request(Manager *m, const AttachRequest *req, Chain *ret) {
        _cleanup_free_ char *proc = NULL;
        Layer top = {.kind = LAYER_REQUEST};
        char path[PATH_MAX];
        Backing backing;
        ssize_t k;

        manager_adopt_unseen(m);

        if (S_ISBLK(req->st.st_mode))
                backing = (Backing){.is_block = true, .device = req->st.st_rdev};
        else
                backing = (Backing){.device = req->st.st_dev, .inode = req->st.st_ino};

        /* The path is for display only: identity comes from the fd. */
        if (asprintf(&proc, "/proc/self/fd/%d", req->fd) < 0)
                return -ENOMEM;
        k = readlink(proc, path, sizeof(path) - 1);
        if (k > 0) {
                path[k] = 0;
                top.path = path;
        }

        return chain_resolve(m->root, &top, &backing, req->options->offset, req->size,
                             registry_loop_info_lookup, m, ret);
}

int manager_resolve_problem(int r, Problem *error) {
        if (r == -ELOOP)
                return problem_setf(error, -ELOOP,
                                    "The backing chain loops back on itself or is deeper than %d "
                                    "layers; a loop device cannot be its own backing.",
                                    CHAIN_MAX_DEPTH);
        if (r == -ENXIO)
                return problem_setf(error, -EINVAL,
                                    "A loop device in the backing chain is not bound to anything.");
        return problem_setf(error, r == -ENOMEM ? r : -EINVAL,
                            "Cannot map the requested range onto its backing: %s.", strerror(-r));
}
