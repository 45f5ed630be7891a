/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Interactive authorisation on a terminal, as systemctl, udisksctl and pkexec do it: when
 * loopmgrd answers a call with org.freedesktop.DBus.Error.InteractiveAuthorizationRequired
 * (polkit wants a password and no authentication agent runs for us), start polkit's text
 * agent pkttyagent on our terminal, registered for our process (polkitd maps the subject the
 * daemon asks about, our bus name, to the process owning it), wait until it is registered,
 * and send the call again with the allow-interactive-authorization flag. The agent stays for
 * the rest of the command (a verb may make several calls that need authorisation) and is
 * stopped by ctl_agent_close().
 *
 * LOOPMGR_PKTTYAGENT overrides the agent binary (/usr/bin/pkttyagent), for the tests. It is
 * read with secure_getenv(): loopmgrctl is never installed set-uid, but it costs nothing.
 */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-bus.h>

#define CTL_PKTTYAGENT_DEFAULT "/usr/bin/pkttyagent"

/* Whether ctl_call() may start an agent: stdin is a terminal and no --no-ask-password. */
void ctl_agent_set_allowed(bool allowed);

/*
 * Starts the agent unless it runs already, registered for our pid (see agent_exec() for why
 * not --fallback). Returns 0 once it has registered (closed its notify fd while still
 * running), a negative errno otherwise (the agent is stopped again then).
 */
int ctl_agent_open(void);

/* Stops the agent (SIGTERM, then waits for it); nothing when none runs. */
void ctl_agent_close(void);

/*
 * sd_bus_call() of the method call m, which must not have been sent yet. When the reply is
 * InteractiveAuthorizationRequired and asking is allowed, starts the agent and sends a copy of
 * m (same destination, member and arguments, file descriptors duplicated) with the interactive
 * flag, waiting usec plus the time a person needs to type a password. Returns what the last
 * sd_bus_call() returned; error and *ret_reply are those of the last call. When the agent
 * cannot be started, the first error stands and a note on stderr says why.
 */
int ctl_call(sd_bus *bus, sd_bus_message *m, uint64_t usec, sd_bus_error *error,
             sd_bus_message **ret_reply);
