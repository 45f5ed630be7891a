/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The ownership record: which loop bindings the daemon manages, who holds references on them
 * and which teardowns are pending. Read back at start-up and reconciled with the kernel by
 * diskseq. It is kept in two files in the state directory:
 *
 * <dir>/devices, the snapshot: line-based text with a version line and a closing checksum,
 * so a truncated or altered file is detected rather than trusted. Replaced atomically
 * (temporary file, rename; state_save() also fsyncs).
 *
 *   loopmgr-state 1
 *   generation 5be0c3a4e1f29d07
 *   boot 3f0d1c52-8d0e-4c4e-9a57-0b8f4b1c2d3e
 *   device loop3 412 attached 1000
 *   ref 1000 persistent - confirmed
 *   ref 0 client :1.42 unconfirmed
 *   intent file 65024 403311 0 0 1000
 *   end 9f3c2a0d1b7e4c55
 *
 * "end" carries the FNV-1a 64-bit hash of every byte before that line. "generation" (optional)
 * names the journal that continues this snapshot, "boot" (optional) the kernel boot it
 * describes: a record of another boot is stale, the bindings it names went with that kernel.
 *
 * <dir>/devices.journal, the changes since that snapshot, appended one record per save:
 *
 *   loopmgr-journal 1 5be0c3a4e1f29d07
 *   record 1
 *   device loop5 415 attached 1000          (adds loop5, or replaces it with its references)
 *   ref 1000 client :1.43 unconfirmed
 *   drop loop3 412                          (loop3 with diskseq 412 is no longer managed)
 *   no-intent                               (or an "intent" line: sets it)
 *   commit 0c2f5d0e7a1b9c33
 *
 * A record's "commit" carries the FNV-1a hash of its bytes from "record" on, seeded with the
 * previous commit's hash (the first record's with the hash of the header line), so records
 * cannot be reordered, repeated or moved to another journal. Loading replays the valid
 * records in order; a last record that is incomplete or fails its checksum is a write torn
 * by a crash and is ignored (that save never returned), anything invalid before the last
 * record makes the whole record -EBADMSG. A journal whose generation is not the snapshot's is
 * left over from before a compaction whose snapshot already contains it, and is ignored.
 *
 * Durability: the record describes kernel state that lives exactly as long as the kernel, so
 * it is written to the page cache without fsync: what a save wrote survives the daemon (killed
 * at any point), and after a reboot the boot id makes the record stale anyway.
 *
 * Owners are written with bytes outside 0x21-0x7e and '\' as \xHH, and an owner that is
 * exactly "-" as \x2d ("-" stands for none).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "options.h"

#define STATE_FILE_NAME      "devices"
#define STATE_JOURNAL_NAME   "devices.journal"
#define STATE_MAX_DEVICES    65536
#define STATE_MAX_REFERENCES 65536

typedef struct StateRef {
        uid_t uid;
        Lifetime lifetime;
        char *owner;    /* client: unique bus name; persistent: NULL; others: their
                         * holder (e.g. a mount point) */
        bool confirmed; /* the Attach that took it was answered */
} StateRef;

typedef struct StateDevice {
        char name[16];   /* loopN */
        unsigned number; /* N, filled in by state_add_device() */
        uint64_t diskseq;
        bool pending; /* detach-pending */
        uid_t owner_uid;
        StateRef *refs;
        size_t n_refs;
} StateDevice;

/* An attach in flight: recorded before the kernel binds, cleared once the device itself is
 * recorded. A bound device that matches a leftover intent and no device record was made by a
 * daemon that died before answering anyone: the next start tears it down. The daemon binds
 * one device at a time, so there is at most one intent. */
typedef struct StateIntent {
        bool is_block;   /* backing is a block device (device = st_rdev) */
        uint64_t device; /* st_dev of the file, or st_rdev of the block device */
        uint64_t inode;  /* files only */
        uint64_t offset;
        uint64_t size_limit;
        uid_t uid;
} StateIntent;

typedef struct State {
        StateDevice *devices;
        size_t n_devices;
        bool has_intent;
        StateIntent intent;
        bool has_generation; /* the snapshot's "generation" line */
        uint64_t generation;
        char boot_id[37]; /* the snapshot's "boot" line: the kernel's boot id, or "" */
} State;

void state_done(State *s);

/* Appends a device (copying name) and returns it for adding references. */
int state_add_device(State *s, const char *name, uint64_t diskseq, bool pending, uid_t owner_uid,
                     StateDevice **ret);
int state_device_add_ref(StateDevice *d, uid_t uid, Lifetime lifetime, const char *owner,
                         bool confirmed);
const StateDevice *state_find(const State *s, const char *name, uint64_t diskseq);

/* The snapshot format. */
int state_serialize(const State *s, char **ret_text, size_t *ret_len);
/* -EBADMSG for anything malformed, truncated or failing the checksum. */
int state_parse(const char *text, size_t len, State *ret);

/* Applies the journal `text` to the snapshot in *s (see above): 0 when the valid records were
 * applied (none if the journal belongs to another generation), -EBADMSG when the journal is
 * damaged other than at its end (then *s is left valid but meaningless: free it). */
int state_journal_replay(State *s, const char *text, size_t len);

/* Replaces <dir>/devices atomically (temporary file, fsync, rename) with s as it is. */
int state_save(const char *dir, const State *s);
/* The snapshot plus its journal. -ENOENT when there is no snapshot, -EBADMSG when either is
 * corrupt, -ESTALE when it was written in another boot (its bindings are gone). */
int state_load(const char *dir, State *ret);
/* /proc/sys/kernel/random/boot_id. */
int state_read_boot_id(char ret[static 37]);

/*
 * Incremental saving: the writer remembers what the files say and appends only what changed.
 * A save is state_writer_begin(), state_writer_device() for every managed device in increasing
 * loop number, then state_writer_commit(), which writes a journal record (or nothing, when
 * nothing changed) and returns once it is written. The first commit, every commit after a
 * failed one, and a commit that finds the journal over its bound write a new snapshot and an
 * empty journal instead (compaction).
 */
typedef struct StateWriter StateWriter;

int state_writer_new(const char *dir, StateWriter **ret);
StateWriter *state_writer_free(StateWriter *w);
static inline void state_writer_freep(StateWriter **w) {
        state_writer_free(*w);
}
/* Journal bound in bytes before compaction; 0: the default (the snapshot's size, at least
 * 64 KiB). */
void state_writer_set_journal_limit(StateWriter *w, size_t bytes);

void state_writer_begin(StateWriter *w);
/* A scratch array of n references for the caller to fill and pass in the next
 * state_writer_device(); valid until then. NULL when out of memory. */
StateRef *state_writer_refs(StateWriter *w, size_t n);
/* d and everything it points to are borrowed. -EINVAL when out of order. */
int state_writer_device(StateWriter *w, const StateDevice *d);
int state_writer_commit(StateWriter *w, bool has_intent, const StateIntent *intent);
/*
 * A save where at most one device changed since the last one: d (NULL: none, only the intent)
 * replaces or adds the record of its loop number and every other device is kept as the files
 * say, so the cost does not grow with the number of bindings. The caller vouches that nothing
 * else changed. -ESTALE when the writer is not in sync with the files (first save, or after a
 * failure): the caller makes a full save instead.
 */
int state_writer_commit_one(StateWriter *w, const StateDevice *d, bool has_intent,
                            const StateIntent *intent);
/* Likewise when the only change is that loop device name is no longer recorded. */
int state_writer_commit_drop(StateWriter *w, const char *name, bool has_intent,
                             const StateIntent *intent);
