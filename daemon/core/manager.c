/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The manager: the core's state (manager.h) and its start-up. The jobs are in their own
 * modules: registry.c (the indexes), lifecycle.c (devices added, changed, removed),
 * reconcile.c (the registry in line with the kernel), mount-watch.c (the mount table),
 * alias-rule.c, attach.c, teardown.c, persist.c (the ownership record), waiter.c (calls
 * answered later), manager-guard.c and manager-aliases.c.
 */

#include <stdio.h>

#include "log.h"
#include "manager-guard.h"
#include "manager.h"
#include "media-mount.h"
#include "mount-job.h"
#include "partitions.h"
#include "udev-props.h"
#include "range-index.h"
#include "registry.h"
#include "udev-watch.h"
#include "waiter.h"

int manager_new(sd_event *event, const char *root, const char *state_dir, Manager **ret) {
        Manager *m;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->event = sd_event_ref(event);
        if (root && !streq(root, "/")) {
                m->root = strdup(root);
                if (!m->root)
                        goto oom;
        }
        m->guard_pin_dir = GUARD_PIN_DIR;
        m->state_dir = strdup(state_dir ?: "/run/loopmgr");
        if (!m->state_dir)
                goto oom;
        if (range_index_new(&m->index) < 0)
                goto oom;

        *ret = m;
        return 0;
oom:
        manager_free(m);
        return -ENOMEM;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;

        /* No worker may outlive the state it reports to. */
        manager_stop_mount_jobs(m);
        /* Devices stay bound: persistent references outlive the daemon. Pending calls are
         * dropped with the bus connection. */
        MANAGER_FOREACH_DEVICE(d, m) {
                manager_free_waiters(m, d);
                device_free(d);
        }
        free(m->devices);
        free(m->by_diskseq);
        range_index_free(m->index);

        manager_guard_stop(m);
        free(m->guard_problem);
        state_done(&m->restored);
        state_writer_free(m->state_writer);
        foreign_mounts_done(&m->foreign);
        mnt_unref_table(m->mounts);
        mnt_unref_table(m->mounts_seen);
        sd_event_source_disable_unref(m->mount_source);
        mnt_unref_monitor(m->mount_monitor);
        udev_watch_free(m->udev_watch);
        sd_event_unref(m->event);
        free(m->root);
        free(m->state_dir);
        free(m);
        return NULL;
}

static int on_udev_watch_event(const UdevWatchEvent *ev, void *userdata) {
        Manager *m = userdata;

        if (!ev->action) {
                manager_rescan(m);
                return 0;
        }
        return manager_udev_event(m, ev);
}

int manager_start(Manager *m) {
        int r;

        r = state_load(m->state_dir, &m->restored);
        if (r == -EBADMSG) {
                _cleanup_free_ char *from = NULL, *to = NULL;

                /* Never trust a damaged record: keep it for inspection and rebuild from the
                 * kernel (the bindings it named are adopted as unmanaged). */
                log_warning("The state file in %s is corrupt or truncated; rebuilding it from "
                            "the kernel, its devices are adopted as unmanaged.",
                            m->state_dir);
                if (asprintf(&from, "%s/" STATE_FILE_NAME, m->state_dir) < 0)
                        from = NULL;
                else if (asprintf(&to, "%s/" STATE_FILE_NAME ".corrupt", m->state_dir) < 0)
                        to = NULL;
                else
                        (void) rename(from, to);
                /* The damage may be in the journal: keep it next to the snapshot. */
                free(from);
                free(to);
                from = to = NULL;
                if (asprintf(&from, "%s/" STATE_JOURNAL_NAME, m->state_dir) < 0)
                        from = NULL;
                else if (asprintf(&to, "%s/" STATE_JOURNAL_NAME ".corrupt", m->state_dir) < 0)
                        to = NULL;
                else
                        (void) rename(from, to);
        } else if (r == -ESTALE)
                /* /run survived a reboot: the bindings it names are gone with that kernel. */
                log_info("The state file in %s is from an earlier boot; starting afresh.",
                         m->state_dir);
        else if (r < 0 && r != -ENOENT)
                log_warning_errno(r, "Failed to read the state file in %s, starting afresh: %m",
                                  m->state_dir);

        /* Watch before enumerating, so that nothing happens unseen in between. */
        r = udev_watch_new(m->event, on_udev_watch_event, m, &m->udev_watch);
        if (r < 0)
                return log_error_errno(r, "Failed to start the udev monitor: %m");
        r = manager_watch_mounts(m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch the mount table: %m");
        /* The guard before the first enumeration, so that no foreign configuration goes
         * unseen between the two; its map is filled once the devices are known. */
        manager_guard_start(m);
        m->has_restored_intent = m->restored.has_intent;
        m->restored_intent = m->restored.intent;
        manager_rescan(m);
        state_done(&m->restored);
        /* Before the references are resumed: a mount's reference lives as long as its mount. */
        mount_adopt(m);
        MANAGER_FOREACH_DEVICE(d, m)
        manager_hold_partitions(m, d);
        manager_resume(m);
        udev_props_cleanup(m->root);
        loop_private_nodes_cleanup(m->root);
        manager_guard_publish(m);
        return 0;
}
