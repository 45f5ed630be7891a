/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * What the core tells the world, and how it answers the calls it queued: operations the bus
 * layer provides (manager-bus.c installs them in Manager.send at start-up). The core calls
 * them only through the manager_send_*() functions (lifecycle.c), which do nothing when they
 * are not set: unit tests run the core without a bus. A Call is whatever the bus layer gave
 * the core with a request (its method call); the core only refs, unrefs and answers it.
 */

#include <stdbool.h>

#include "device.h"
#include "problem.h"

typedef struct ManagerSendOps {
        void (*device_added)(Manager *m, Device *d);   /* InterfacesAdded */
        void (*device_removed)(Manager *m, Device *d); /* InterfacesRemoved */
        void (*device_changed)(Manager *m, Device *d, char **properties);
        int (*attach_reply)(Manager *m, Call *call, Device *d, bool reused);
        int (*detach_reply)(Manager *m, Call *call, const char *state);
        int (*mount_reply)(Manager *m, Call *call, const char *mount_point);
        int (*unmount_reply)(Manager *m, Call *call);
        int (*error_reply)(Manager *m, Call *call, const Problem *p);
        Call *(*call_ref)(Call *call);
        Call *(*call_unref)(Call *call);
        /* Out of the process now, not after whatever is queued before it. */
        void (*flush)(Manager *m);
        /* Whether a unique bus name still has an owner (true when it cannot be told). */
        bool (*client_exists)(Manager *m, const char *unique_name);
} ManagerSendOps;

void manager_send_device_added(Manager *m, Device *d);
void manager_emit_device_changed(Manager *m, Device *d, char **properties);
/* The properties that show the mount of partition `partition` of d (0: of d itself). */
void manager_emit_mount_changed(Manager *m, Device *d, unsigned partition);
int manager_send_attach_reply(Manager *m, Call *call, Device *d, bool reused);
int manager_send_detach_reply(Manager *m, Call *call, const char *state);
int manager_send_mount_reply(Manager *m, Call *call, const char *mount_point);
int manager_send_unmount_reply(Manager *m, Call *call);
int manager_send_problem(Manager *m, Call *call, const Problem *p);
int manager_send_errorf(Manager *m, Call *call, int error, const char *format, ...) _printf_(4, 5);
/* Takes and drops a reference on a call (no-ops without a bus). */
Call *manager_call_ref(Manager *m, Call *call);
Call *manager_call_unref(Manager *m, Call *call);
void manager_send_flush(Manager *m);
bool manager_client_exists(Manager *m, const char *unique_name);
