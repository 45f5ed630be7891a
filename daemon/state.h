/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The ownership record: which loop bindings the daemon manages, who holds references on them
 * and which teardowns are pending. Written atomically to <state dir>/devices whenever it
 * changes (before a new device becomes visible), read back at start-up and reconciled with
 * the kernel by diskseq. The format is line-based text with a version line and a closing
 * checksum, so a truncated or altered file is detected rather than trusted:
 *
 *   loopmgr-state 1
 *   device loop3 412 attached 1000
 *   ref 1000 persistent - confirmed
 *   ref 0 client :1.42 unconfirmed
 *   intent file 65024 403311 0 0 1000
 *   end 9f3c2a0d1b7e4c55
 *
 * "end" carries the FNV-1a 64-bit hash of every byte before that line.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "options.h"

#define STATE_FILE_NAME "devices"
#define STATE_MAX_DEVICES 65536
#define STATE_MAX_REFERENCES 65536

typedef struct StateRef {
        uid_t uid;
        Lifetime lifetime;
        char *owner;            /* unique bus name for client lifetime, else NULL */
        bool confirmed;         /* the Attach that took it was answered */
} StateRef;

typedef struct StateDevice {
        char name[16];          /* loopN */
        uint64_t diskseq;
        bool pending;           /* detach-pending */
        uid_t owner_uid;
        StateRef *refs;
        size_t n_refs;
} StateDevice;

/* An attach in flight: recorded before the kernel binds, cleared once the device itself is
 * recorded. A bound device that matches a leftover intent and no device record was made by a
 * daemon that died before answering anyone: the next start tears it down. The daemon binds
 * one device at a time, so there is at most one intent. */
typedef struct StateIntent {
        bool is_block;          /* backing is a block device (device = st_rdev) */
        uint64_t device;        /* st_dev of the file, or st_rdev of the block device */
        uint64_t inode;         /* files only */
        uint64_t offset;
        uint64_t size_limit;
        uid_t uid;
} StateIntent;

typedef struct State {
        StateDevice *devices;
        size_t n_devices;
        bool has_intent;
        StateIntent intent;
} State;

void state_done(State *s);

/* Appends a device (copying name) and returns it for adding references. */
int state_add_device(State *s, const char *name, uint64_t diskseq, bool pending, uid_t owner_uid,
                     StateDevice **ret);
int state_device_add_ref(StateDevice *d, uid_t uid, Lifetime lifetime, const char *owner,
                         bool confirmed);
const StateDevice *state_find(const State *s, const char *name, uint64_t diskseq);

int state_serialize(const State *s, char **ret_text, size_t *ret_len);
/* -EBADMSG for anything malformed, truncated or failing the checksum. */
int state_parse(const char *text, size_t len, State *ret);

/* Replaces <dir>/devices atomically (temporary file, fsync, rename). */
int state_save(const char *dir, const State *s);
/* -ENOENT when there is no file, -EBADMSG when it is corrupt. */
int state_load(const char *dir, State *ret);
