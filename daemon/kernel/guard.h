/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The guard: loads, attaches and pins the BPF LSM program of daemon/kernel/bpf/loop-guard.bpf.c,
 * which refuses other processes' loop configurations (docs/DESIGN.md, "The guard"). A leaf
 * module: libbpf, the program's maps and its ring buffer; it knows nothing about the manager
 * and reports events through a callback. Pins live in a bpffs directory (GUARD_PIN_DIR): they
 * outlive the daemon, so a daemon killed by a signal leaves the guard in force, and the next
 * one takes it over.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bpf/loop-guard.h"

#define GUARD_PIN_DIR "/sys/fs/bpf/loopmgr"

typedef enum GuardMode {
        GUARD_MODE_OFF = LOOP_GUARD_MODE_OFF,
        GUARD_MODE_AUDIT = LOOP_GUARD_MODE_AUDIT,
        GUARD_MODE_ALIASES = LOOP_GUARD_MODE_ALIASES,
        GUARD_MODE_EXCLUSIVE = LOOP_GUARD_MODE_EXCLUSIVE,
        _GUARD_MODE_MAX,
} GuardMode;

typedef struct loop_guard_key GuardKey;
typedef struct loop_guard_event GuardEvent;
typedef struct Guard Guard;

/* "off", "audit", "aliases", "exclusive"; NULL for anything else. */
const char *guard_mode_to_string(GuardMode mode);
/* The mode, or -EINVAL. */
int guard_mode_from_string(const char *s);

/* Map keys: a file by st_dev and st_ino, a block device by st_rdev (userspace numbers,
 * converted to the kernel's encoding). */
GuardKey guard_key_file(dev_t st_dev, uint64_t ino);
GuardKey guard_key_block(dev_t rdev);
int guard_key_compare(const void *a, const void *b);

/* An entry of the bases map: the key, its holder (the loop device, kernel encoding, whose
 * direct backing it is, or 0) and LOOP_GUARD_BASE_* flags (loop-guard.h, struct
 * loop_guard_base). */
typedef struct GuardBase {
        GuardKey key;
        uint64_t holder;
        uint32_t flags;
} GuardBase;

/* holder: the loop device whose direct backing key is, 0 for none. */
GuardBase guard_base(GuardKey key, dev_t holder, uint32_t flags);
/* Orders by key only. */
int guard_base_compare(const void *a, const void *b);
/* Sorts by key and merges duplicates: a key that two entries name with different holders
 * has none (it is more than one device's backing, or a base for another reason too); the
 * flags are or'ed. Returns the new count. */
size_t guard_bases_uniq(GuardBase *bases, size_t n);

/* "LOOP_CONFIGURE"; "0x4c42" style for unknown ones (buf: at least 16 bytes). */
const char *guard_ioctl_name(uint32_t cmd, char *buf, size_t size);
/* Whether the event is a bind (LOOP_SET_FD, LOOP_CONFIGURE, LOOP_CHANGE_FD). */
bool guard_event_is_bind(const GuardEvent *e);
/* The Creator of a device this event configured: "losetup (pid 1234, uid 0)". */
int guard_event_creator(const GuardEvent *e, char **ret);
/* One line for the log: who, what, on which device, with which backing, the verdict. */
int guard_event_describe(const GuardEvent *e, char **ret);

/* Whether "bpf" is in the active LSM list (the contents of /sys/kernel/security/lsm). */
bool guard_lsm_list_has_bpf(const char *list);

typedef void (*GuardEventHandler)(const GuardEvent *e, void *userdata);

/*
 * Loads the program in `mode` (not off), claims it for the calling process (task storage set
 * through a pidfd of it: a restarted daemon claims it anew, a recycled pid inherits nothing)
 * and attaches it, reusing the maps pinned in pin_dir by an earlier daemon when they are
 * compatible. The pins are replaced only by guard_publish(). On failure returns a negative
 * errno and, in *ret_problem, why in one sentence (the GuardProblem property).
 */
int guard_open(GuardMode mode, const char *pin_dir, GuardEventHandler handler, void *userdata,
               Guard **ret, char **ret_problem);
/* Pins the maps and the links, replacing an earlier daemon's: its program stays attached
 * until its links are replaced, so there is no moment without a guard. */
int guard_publish(Guard *g);
Guard *guard_free(Guard *g);

/* The fd to poll for events (EPOLLIN), and the call that consumes them. */
int guard_event_fd(Guard *g);
int guard_process_events(Guard *g);

/* Makes the bases map hold exactly these entries (guard_bases_uniq()'d). */
int guard_sync_bases(Guard *g, const GuardBase *bases, size_t n);

/* Removes every pin in pin_dir: the guard is gone once no process holds its links. Returns 1
 * if there was something to remove, 0 if not. */
int guard_remove(const char *pin_dir);
