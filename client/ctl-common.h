/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * What the verbs of loopmgrctl share across its source files: exit statuses, the parsed
 * arguments that more than one file reads, error reporting, and the calls to loopmgrd that
 * several verbs make. Each declaration names the file that defines it.
 *
 * Conventions: functions returning "an exit status" print their own message and return 0 or
 * one of the EXIT_* codes; the others return 0 or a negative errno (or what sd_bus_call()
 * returns) and print nothing.
 */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "ctl-devices.h"
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

/* Headroom over the daemon's own udev/teardown timeout for the D-Bus call itself: requests are
 * serialised in the daemon, so ours may wait behind others before its timer starts. */
#define CALL_MARGIN_USEC (60 * USEC_PER_SEC)
/* The daemon appearing on or leaving the bus. */
#define MATCH_DAEMON_OWNER_CHANGED                                                                 \
        "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"                \
        "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='" LOOPMGR_BUS_NAME "'"

/* Options, as bits so that each verb can refuse the ones that mean nothing to it. */
typedef enum OptionFlag {
        OPT_OFFSET = 1 << 0,
        OPT_SIZE_LIMIT = 1 << 1,
        OPT_READ_ONLY = 1 << 2,
        OPT_PARTSCAN = 1 << 3,
        OPT_DIRECT_IO = 1 << 4,
        OPT_SECTOR_SIZE = 1 << 5,
        OPT_EXCLUSIVE = 1 << 6,
        OPT_LIFETIME = 1 << 7,
        OPT_NO_WAIT = 1 << 8,
        OPT_TIMEOUT = 1 << 9,
        OPT_WAIT = 1 << 10,
        OPT_RECURSIVE = 1 << 11,
        OPT_ALL_REFERENCES = 1 << 12,
        OPT_JSON = 1 << 13,
        OPT_NO_LEGEND = 1 << 14,
        OPT_OPTIONS = 1 << 15,
        OPT_TYPES = 1 << 16,
        OPT_VERBOSE = 1 << 17,
        OPT_WRITABLE = 1 << 18,
        OPT_RAW = 1 << 19,
        OPT_OUTPUT = 1 << 20,
        _OPT_COUNT = 21,
} OptionFlag;

/* Parsed arguments (loopmgrctl.c), read by the verbs. */
extern unsigned arg_given; /* OptionFlag bits of the options given */
extern uint64_t arg_offset;
extern uint64_t arg_size_limit;
extern bool arg_read_only;
extern bool arg_partscan;
extern const char *arg_direct_io;
extern uint32_t arg_sector_size;
extern bool arg_exclusive;
extern const char *arg_lifetime;
extern bool arg_no_wait;
extern uint64_t arg_timeout_usec;
extern bool arg_wait;
extern bool arg_recursive;
extern bool arg_all_references;
extern bool arg_json;
extern bool arg_writable;
extern bool arg_no_legend; /* --no-legend, --noheadings */
extern bool arg_raw;
extern const char *arg_output;  /* --output: columns of list and status */
extern char *arg_mount_options; /* the -o/--options of mount, joined with commas */
extern const char *arg_fstype;
extern bool arg_verbose;
extern bool arg_interactive; /* may polkit ask the user (stdin a terminal, no --no-ask-password) */

/* Messages and exit statuses (ctl-common.c) */
_printf_(2, 3) int log_fail(int status, const char *fmt, ...);
/* A usage error: the message, the hint at --help, and EXIT_USAGE. */
_printf_(1, 2) int log_usage(const char *fmt, ...);
int log_bus_error(const sd_bus_error *error, int r, const char *what);
int log_oom(void);
int log_create_error(int r);
int log_parse_error(int r);
int flush_stdout(void);
int exit_status_from_local_errno(int err);
int exit_status_from_bus_error(const sd_bus_error *error, int r);

/* A size option (BYTES, a multiple of 512) into *ret; 0 or an exit status (loopmgrctl.c). */
int parse_size_arg(const char *flag, const char *s, uint64_t *ret);

/* Helpers (ctl-common.c) */
uint64_t call_timeout_usec(void);
/* Opens a file the user named (O_CLOEXEC|O_NOCTTY added), without hanging on a FIFO. */
int open_backing(const char *path, int flags, int *ret_fd);
/* The device object for a node, file, or object path (Manager.GetDevice); an exit status. */
int resolve_device(sd_bus *bus, const char *arg, char **ret_object);
/* An event loop with the bus attached that SIGINT/SIGTERM end, or on_signal handles (NULL:
 * end the loop with 0). */
int event_new_with_signals(sd_bus *bus, sd_event_signal_handler_t on_signal, sd_event **ret);
/* device_info_get() of object into *ret; 0 or an exit status (the message printed). */
int device_info_get_or_log(sd_bus *bus, const char *object, DeviceInfo *ret);
/* Opens the image of attach and mount: read-write unless read_only, read-only when it may
 * only be read (*ret_fallback_read_only set then, as losetup and mount(8) do); a regular file
 * or block device. 0 or an exit status (the message printed). */
int open_image(const char *path, bool read_only, int *ret_fd, bool *ret_fallback_read_only);

/* Calls to loopmgrd (ctl-attach.c), with the attach/detach options given on the command line. */
int call_attach(sd_bus *bus, int fd, bool read_only, sd_bus_error *error,
                sd_bus_message **ret_reply);
int call_detach(sd_bus *bus, const char *object, sd_bus_error *error, sd_bus_message **ret_reply);
/* Detach of one reference of ours, reporting a failure (it never changes the exit status). */
void drop_reference(sd_bus *bus, const char *object, const char *node);
/* Attach O_RDWR that succeeds only by reusing an identical writable device (a read-only
 * request for an image that is attached writable already); -EADDRINUSE when not reused. */
int attach_share_writable(sd_bus *bus, const char *image, sd_bus_message **ret_reply);

/* The verbs: each returns an exit status. */
int verb_attach(sd_bus *bus, char **args);  /* ctl-attach.c */
int verb_detach(sd_bus *bus, char **args);  /* ctl-attach.c */
int verb_resolve(sd_bus *bus, char **args); /* ctl-attach.c */
int verb_list(sd_bus *bus, char **args);    /* ctl-list.c */
int verb_status(sd_bus *bus, char **args);  /* ctl-list.c */
int verb_monitor(sd_bus *bus, char **args); /* ctl-monitor.c */
int verb_mount(sd_bus *bus, char **args);   /* ctl-mount.c */
int verb_umount(sd_bus *bus, char **args);  /* ctl-mount.c */
int verb_open(sd_bus *bus, char **args);    /* ctl-open.c */
int verb_close(sd_bus *bus, char **args);   /* ctl-open.c */
