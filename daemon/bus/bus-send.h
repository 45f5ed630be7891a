/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The bus layer's side of the core's boundary (notify.h): the send operations that turn what
 * the core announces and answers into signals and replies, the bus state the manager carries
 * for this layer, and the start-up of the connection.
 */

#include <systemd/sd-bus.h>

#include "bus-util.h"
#include "manager.h"

/* What the bus layer keeps in Manager.bus_state. */
typedef struct BusState {
        sd_bus_slot *name_owner_slot;
        SenderUidCache sender_uids;
} BusState;

/* The method call as the core holds it, and back. */
static inline Call *call_of_message(sd_bus_message *message) {
        return (Call *) message;
}
static inline sd_bus_message *message_of_call(Call *call) {
        return (sd_bus_message *) call;
}

/* Connects to the system bus, registers the objects, watches clients going away and installs
 * the send operations in m. Before manager_start(). */
int manager_bus_start(Manager *m);
/* Takes the bus name and says the daemon is ready. After manager_start(). */
int manager_bus_take_name(Manager *m);
/* Drops the connection and the bus state (manager_free() does not know them). */
void manager_bus_stop(Manager *m);
