/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The options' defaults and names (options.h); reading them from a bus message is the bus
 * layer's (options-bus.c). */

#include <assert.h>
#include <stddef.h>

#include "loopmgr-bus.h"
#include "options.h"

void attach_options_init(AttachOptions *o) {
        assert(o);

        *o = (AttachOptions){
                .offset = 0,
                .size_limit = 0,
                .read_only = -1,
                .partscan = false,
                .direct_io = DIRECT_IO_AUTO,
                .sector_size = 0,
                .sharing = SHARING_SHARED,
                .lifetime = LIFETIME_PERSISTENT,
                .wait_udev = true,
                .timeout_usec = LOOPMGR_DEFAULT_TIMEOUT_USEC,
                .no_user_interaction = false,
                .device = -1,
        };
}

void detach_options_init(DetachOptions *o) {
        assert(o);

        *o = (DetachOptions){
                .wait = false,
                .recursive = false,
                .all_references = false,
                .timeout_usec = LOOPMGR_DEFAULT_TIMEOUT_USEC,
                .no_user_interaction = false,
        };
}

const char *direct_io_mode_to_string(DirectIOMode m) {
        switch (m) {
        case DIRECT_IO_AUTO:
                return "auto";
        case DIRECT_IO_ON:
                return "on";
        case DIRECT_IO_OFF:
                return "off";
        }
        return NULL;
}

const char *sharing_to_string(Sharing s) {
        switch (s) {
        case SHARING_SHARED:
                return "shared";
        case SHARING_EXCLUSIVE:
                return "exclusive";
        }
        return NULL;
}

const char *lifetime_to_string(Lifetime l) {
        switch (l) {
        case LIFETIME_PERSISTENT:
                return "persistent";
        case LIFETIME_CLIENT:
                return "client";
        case LIFETIME_MOUNT:
                return "mount";
        }
        return NULL;
}
