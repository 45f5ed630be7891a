/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Authorisation (SPEC §7): polkit asked over sd-bus, without libpolkit, and the limits that are
 * decided together with it.
 *
 * polkit answers asynchronously and the daemon must never block on it, so a method handler
 * works like this (the pattern of systemd's bus-polkit.c):
 *
 *   1. It validates its arguments and everything else it can, changing nothing.
 *   2. It calls polkit_verify_async(). Root is allowed at once. Otherwise the first call sends
 *      CheckAuthorization for the caller's bus name and returns 0: the handler returns 1
 *      without replying, and the caller's message (with its fds) stays referenced here.
 *   3. When polkit answers, the verdict is stored with the message, and the message is put
 *      back into the connection's read queue (sd_bus_enqueue_for_read()). The handler runs
 *      again from the top, re-validating against the state of *now*; polkit_verify_async()
 *      finds the verdict for this message, action and details and returns 1 or an error.
 *   4. An idle event source frees the verdict once the message ran again.
 *
 * So no state changes before polkit answered, and a verdict is only ever used for the exact
 * request (message, action, details) it was given for.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

#define POLKIT_ACTION_ATTACH        "org.loopmgr.attach"
#define POLKIT_ACTION_ATTACH_PATH   "org.loopmgr.attach-path"
#define POLKIT_ACTION_DETACH_OTHERS "org.loopmgr.detach-others"
#define POLKIT_ACTION_MOUNT         "org.loopmgr.mount"
#define POLKIT_ACTION_MOUNT_OTHERS  "org.loopmgr.mount-others"
#define POLKIT_ACTION_OPEN_DEVICE   "org.loopmgr.open-device"

/* Authorisation queries waiting for polkit, per caller connection and in total. A caller
 * beyond them gets LimitsExceeded at once; polkit is not asked. */
#define POLKIT_PENDING_MAX_PER_CONNECTION 16U
#define POLKIT_PENDING_MAX                256U

/* How long polkit may take: a non-interactive check is a rules evaluation; an interactive one
 * waits for a person to type a password in an authentication agent. */
#define POLKIT_TIMEOUT_USEC             (25ULL * 1000ULL * 1000ULL)
#define POLKIT_INTERACTIVE_TIMEOUT_USEC (5ULL * 60ULL * 1000ULL * 1000ULL)

/* Devices a non-root user may hold references on (loopmgrd --max-devices-per-user). */
#define POLKIT_DEFAULT_MAX_DEVICES_PER_USER 64U
#define POLKIT_DEVICES_UNLIMITED            UINT32_MAX

typedef struct PolkitRegistry PolkitRegistry;

int polkit_registry_new(PolkitRegistry **ret);
/* Drops every query: pending callers get no reply (the daemon is going away). */
PolkitRegistry *polkit_registry_free(PolkitRegistry *reg);
static inline void polkit_registry_freep(PolkitRegistry **reg) {
        *reg = polkit_registry_free(*reg);
}

void polkit_registry_set_max_devices_per_user(PolkitRegistry *reg, uint32_t max);
/* POLKIT_DEFAULT_MAX_DEVICES_PER_USER for a NULL registry. */
uint32_t polkit_registry_get_max_devices_per_user(const PolkitRegistry *reg);
/* For tests: shorter timeouts (0 keeps the default). */
void polkit_registry_set_timeouts(PolkitRegistry *reg, uint64_t usec, uint64_t interactive_usec);
/* Queries sent to polkit and not answered yet; with sender != NULL only that connection's. */
unsigned polkit_registry_n_pending(const PolkitRegistry *reg, const char *sender);

/*
 * Is the sender of `call` (effective uid `uid`, from the bus) allowed `action`?
 *
 * `what` completes "Not authorised to ..." in error messages ("attach /srv/a.img as a loop
 * device"). `details` are key/value pairs (NULL-terminated, may be NULL) given to polkit rules
 * as action.lookup(key); values must be valid UTF-8 (polkit_detail_escape()). Interaction is
 * allowed only when the message carries the allow-interactive-authorization flag and the caller
 * did not pass auth.no_user_interaction=true (`no_user_interaction`).
 *
 * Returns 1 if allowed, 0 if a polkit query is now pending (the handler must return 1 without
 * replying; it runs again when polkit answers), or a negative errno with *error set:
 * AccessDenied (denied, polkit not running or failing), InteractiveAuthorizationRequired,
 * LimitsExceeded (too many pending queries). A NULL registry means polkit is not available:
 * only root is allowed.
 */
int polkit_verify_async(PolkitRegistry *reg, sd_bus_message *call, uid_t uid, const char *action,
                        const char *what, char **details, bool no_user_interaction,
                        sd_bus_error *error);

/* A polkit detail value from an arbitrary string (a path): unchanged when it is valid UTF-8,
 * otherwise C-escaped (backslash as \\, each byte of an invalid sequence as \xNN). */
int polkit_detail_escape(const char *s, char **ret);
