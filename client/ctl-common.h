/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * What the verbs of loopmgrctl share across its source files: exit statuses, the parsed
 * arguments that more than one file reads, error reporting, and the calls to loopmgrd that
 * several verbs make. Defined in loopmgrctl.c unless noted.
 *
 * Conventions: functions returning "an exit status" print their own message and return 0 or
 * one of the EXIT_* codes; the others return 0 or a negative errno (or what sd_bus_call()
 * returns) and print nothing.
 */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "ctl-util.h"

enum {
        EXIT_USAGE = 2,
        EXIT_CONFLICT = 3,       /* Overlap, Busy, Cycle */
        EXIT_NOT_AUTHORISED = 4, /* AccessDenied, InteractiveAuthorizationRequired */
        EXIT_NOT_FOUND = 5,      /* NotFound, or the file does not exist */
        EXIT_TIMEOUT = 6,
};

#define USEC_PER_SEC UINT64_C(1000000)
/* A person typing a password into a polkit agent needs longer than the default 25 s. */
#define CALL_INTERACTIVE_USEC (300 * USEC_PER_SEC)

#define OBJECT_MANAGER_INTERFACE "org.freedesktop.DBus.ObjectManager"
#define PROPERTIES_INTERFACE     "org.freedesktop.DBus.Properties"

/* Parsed arguments read outside loopmgrctl.c. */
extern const char *arg_lifetime;
extern bool arg_no_wait;
extern uint64_t arg_timeout_usec;
extern bool arg_json;
extern bool arg_writable;

/* Messages and exit statuses */
_printf_(2, 3) int log_fail(int status, const char *fmt, ...);
int log_bus_error(const sd_bus_error *error, int r, const char *what);
int log_oom(void);
int log_create_error(int r);
int log_parse_error(int r);
int flush_stdout(void);
int exit_status_from_local_errno(int err);
int exit_status_from_bus_error(const sd_bus_error *error, int r);

/* Helpers */
uint64_t call_timeout_usec(void);
/* Opens a file the user named (O_CLOEXEC|O_NOCTTY added), without hanging on a FIFO. */
int open_backing(const char *path, int flags, int *ret_fd);
/* The device object for a node, file, or object path (Manager.GetDevice); an exit status. */
int resolve_device(sd_bus *bus, const char *arg, char **ret_object);
int event_new_with_signals(sd_bus *bus, sd_event **ret);

/* Calls to loopmgrd, with the attach/detach options given on the command line. */
int call_attach(sd_bus *bus, int fd, bool read_only, sd_bus_error *error,
                sd_bus_message **ret_reply);
int call_detach(sd_bus *bus, const char *object, sd_bus_error *error, sd_bus_message **ret_reply);
/* Detach of one reference of ours, reporting a failure (it never changes the exit status). */
void drop_reference(sd_bus *bus, const char *object, const char *node);
/* Attach O_RDWR that succeeds only by reusing an identical writable device (a read-only
 * request for an image that is attached writable already); -EADDRINUSE when not reused. */
int attach_share_writable(sd_bus *bus, const char *image, sd_bus_message **ret_reply);

/* ctl-open.c */
int verb_open(sd_bus *bus, char **args);
int verb_close(sd_bus *bus, char **args);
