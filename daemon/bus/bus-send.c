/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The send operations (notify.h): every signal, reply and error the core asks for goes out
 * here, and the connection is set up and taken down here.
 */

#include <systemd/sd-daemon.h>

#include "bus-send.h"
#include "device-bus.h"
#include "log.h"
#include "loopmgr-bus.h"
#include "manager-bus.h"

static void send_device_added(Manager *m, Device *d) {
        if (m->bus)
                (void) sd_bus_emit_object_added(m->bus, d->path);
}

static void send_device_removed(Manager *m, Device *d) {
        if (m->bus)
                (void) sd_bus_emit_object_removed(m->bus, d->path);
}

static void send_device_changed(Manager *m, Device *d, char **properties) {
        if (m->bus)
                (void) sd_bus_emit_properties_changed_strv(m->bus, d->path,
                                                           LOOPMGR_DEVICE_INTERFACE, properties);
}

static int send_attach_reply(Manager *m, Call *call, Device *d, bool reused) {
        return sd_bus_reply_method_return(message_of_call(call), "ostb", d->path, d->node,
                                          d->status.diskseq, reused);
}

static int send_detach_reply(Manager *m, Call *call, const char *state) {
        return sd_bus_reply_method_return(message_of_call(call), "s", state);
}

static int send_mount_reply(Manager *m, Call *call, const char *mount_point) {
        return sd_bus_reply_method_return(message_of_call(call), "s", mount_point);
}

static int send_unmount_reply(Manager *m, Call *call) {
        return sd_bus_reply_method_return(message_of_call(call), NULL);
}

static int send_error_reply(Manager *m, Call *call, const Problem *p) {
        _cleanup_(sd_bus_error_freep) sd_bus_error error = SD_BUS_ERROR_NULL;

        (void) bus_error_set_problem(&error, p);
        return sd_bus_reply_method_error(message_of_call(call), &error);
}

static Call *send_call_ref(Call *call) {
        return call_of_message(sd_bus_message_ref(message_of_call(call)));
}

static Call *send_call_unref(Call *call) {
        sd_bus_message_unref(message_of_call(call));
        return NULL;
}

static void send_flush(Manager *m) {
        if (m->bus)
                (void) sd_bus_flush(m->bus);
}

static bool send_client_exists(Manager *m, const char *name) {
        sd_bus_message *reply = NULL;
        int r, has = 1;

        if (!m->bus)
                return true;
        r = sd_bus_call_method(m->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "NameHasOwner", NULL, &reply, "s", name);
        if (r >= 0 && sd_bus_message_read(reply, "b", &has) < 0)
                has = 1;
        sd_bus_message_unref(reply);
        /* When in doubt keep the reference: dropping it could tear down a device in use. */
        return r < 0 || has;
}

static const ManagerSendOps bus_send_ops = {
        .device_added = send_device_added,
        .device_removed = send_device_removed,
        .device_changed = send_device_changed,
        .attach_reply = send_attach_reply,
        .detach_reply = send_detach_reply,
        .mount_reply = send_mount_reply,
        .unmount_reply = send_unmount_reply,
        .error_reply = send_error_reply,
        .call_ref = send_call_ref,
        .call_unref = send_call_unref,
        .flush = send_flush,
        .client_exists = send_client_exists,
};

static int on_name_owner_changed(sd_bus_message *message, void *userdata, sd_bus_error *ret_error) {
        Manager *m = userdata;
        const char *name, *old_owner, *new_owner;
        int r;

        r = sd_bus_message_read(message, "sss", &name, &old_owner, &new_owner);
        if (r < 0 || name[0] != ':' || new_owner[0] != 0)
                return 0;
        manager_client_vanished(m, name);
        return 0;
}

int manager_bus_start(Manager *m) {
        int r;

        m->bus_state = calloc(1, sizeof(BusState));
        if (!m->bus_state)
                return log_error_errno(-ENOMEM, "Failed to allocate the bus state: %m");
        m->send = &bus_send_ops;

        r = sd_bus_open_system(&m->bus);
        if (r < 0)
                return log_error_errno(r, "Failed to connect to the system bus: %m");
        (void) sd_bus_set_description(m->bus, "loopmgrd");

        r = sd_bus_attach_event(m->bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Failed to attach the bus to the event loop: %m");

        r = manager_bus_register(m);
        if (r < 0)
                return log_error_errno(r, "Failed to register the manager object: %m");
        r = device_bus_register(m);
        if (r < 0)
                return log_error_errno(r, "Failed to register device objects: %m");

        r = sd_bus_match_signal_async(m->bus, &m->bus_state->name_owner_slot,
                                      "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                      "org.freedesktop.DBus", "NameOwnerChanged",
                                      on_name_owner_changed, NULL, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch bus clients: %m");
        return 0;
}

int manager_bus_take_name(Manager *m) {
        int r;

        r = sd_bus_request_name(m->bus, LOOPMGR_BUS_NAME, 0);
        if (r < 0)
                return log_error_errno(r, "Failed to acquire the bus name %s: %m",
                                       LOOPMGR_BUS_NAME);

        log_info("loopmgrd %s ready, %zu loop device(s) bound", LOOPMGR_VERSION, m->n_devices);
        (void) sd_notify(false, "READY=1\nSTATUS=Managing loop devices");
        return 0;
}

void manager_bus_stop(Manager *m) {
        if (!m)
                return;
        if (m->bus_state)
                sd_bus_slot_unref(m->bus_state->name_owner_slot);
        m->bus = sd_bus_flush_close_unref(m->bus);
        free(m->bus_state);
        m->bus_state = NULL;
}
