/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The options of SPEC §3 as every layer above the kernel's sees them: their types, defaults
 * and names. Reading them from a message is the bus layer's (options-bus.h).
 */

#include <stdbool.h>
#include <stdint.h>

#include "loop-kernel.h"

typedef enum Sharing {
        SHARING_SHARED,
        SHARING_EXCLUSIVE,
} Sharing;

typedef enum Lifetime {
        LIFETIME_PERSISTENT,
        LIFETIME_CLIENT,
        LIFETIME_MOUNT, /* internal: held by a Device.Mount mount; never from clients */
} Lifetime;

typedef struct AttachOptions {
        uint64_t offset;
        uint64_t size_limit;
        int read_only; /* -1 = not given (writable if the fd allows it), else 0/1 */
        bool partscan;
        DirectIOMode direct_io;
        uint32_t sector_size; /* 0 = not given */
        Sharing sharing;
        Lifetime lifetime;
        bool wait_udev;
        uint64_t timeout_usec;
        bool no_user_interaction;
        int device; /* "device": bind exactly loop<device>; -1 = any free one */
} AttachOptions;

typedef struct DetachOptions {
        bool wait;
        bool recursive;
        bool all_references;
        uint64_t timeout_usec;
        bool no_user_interaction;
} DetachOptions;

/* Options taken by SetAutoclear/SetCapacity/Resolve: only auth.no_user_interaction. */
typedef struct CommonOptions {
        bool no_user_interaction;
} CommonOptions;

/* Device.Mount (docs/API.md). The strings point into the message; their values are checked by
 * the caller (mount.h), only their types here. */
typedef struct MountOptions {
        const char *fstype;  /* NULL = probe */
        const char *options; /* NULL = none */
        bool release_reference;
        bool no_user_interaction;
        uint32_t partition; /* 0 = the device itself */
} MountOptions;

/* Device.Unmount */
typedef struct UnmountOptions {
        bool force;
        bool no_user_interaction;
        uint32_t partition; /* 0 = the device itself */
} UnmountOptions;

void attach_options_init(AttachOptions *o); /* defaults of SPEC §3 */
void detach_options_init(DetachOptions *o);

/* Each reads one a{sv} from m (the read pointer must be at it) and leaves the pointer after
 * it. Return 0, or a negative errno with *error set (InvalidArgs for bad input). A key given
 * twice is InvalidArgs. timeout-usec 0 is InvalidArgs (use wait-udev=false instead). */

const char *direct_io_mode_to_string(DirectIOMode m);
const char *sharing_to_string(Sharing s);
const char *lifetime_to_string(Lifetime l);
