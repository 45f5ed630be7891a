/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Helpers for the integration tests: the test environment (temporary directory, the daemon
 * process, the bus), bookkeeping of everything a test creates so that the teardown can remove
 * it even after a failed assertion (cmocka longjmps out of the test body, so nothing may live
 * only on the test's stack), D-Bus call wrappers, property readers, a signal catcher with a
 * deadline, and small readers of sysfs and losetup.
 *
 * Helpers return 0 or a negative errno like the rest of the project; the assert_* macros
 * below are the only things that fail a test.
 */

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

#include "util.h"

#define USEC_PER_MSEC 1000ULL
#define USEC_PER_SEC  1000000ULL

/* Options for the a{sv} builders: each expands to key, signature, value with the exact C
 * type sd-bus reads for that signature (varargs do not convert for us). */
#define OPT_T(key, v) (const char *) (key), "t", (uint64_t) (v)
#define OPT_U(key, v) (const char *) (key), "u", (unsigned) (v)
#define OPT_B(key, v) (const char *) (key), "b", (int) (v)
#define OPT_S(key, v) (const char *) (key), "s", (const char *) (v)
#define OPT_I(key, v) (const char *) (key), "i", (int) (v)

typedef struct TrackedDevice {
        char *name;       /* "loop5" */
        uint64_t diskseq; /* the binding we created; never touch another one */
} TrackedDevice;

typedef enum CatchKind {
        CATCH_INTERFACES_ADDED,   /* Device interface added */
        CATCH_INTERFACES_REMOVED, /* Device interface removed */
        CATCH_PROPERTIES_CHANGED, /* a given Device property changed (or invalidated) */
} CatchKind;

/* Every matching signal is recorded (object path, and the Device's Node for
 * InterfacesAdded), so a test can wait for a path or node it learns only later. */
typedef struct Catcher {
        CatchKind kind;
        sd_bus_slot *slot;
        char *property; /* PropertiesChanged: the property name */
        size_t count;
        char **paths; /* count entries */
        char **nodes; /* count entries, NULL where unknown */
} Catcher;

typedef struct Env {
        char *tmpdir; /* /var/tmp/loopmgr-test.XXXXXX (a real fs: direct I/O works) */
        char *ramfs;  /* <tmpdir>/ramfs with ramfs mounted (no O_DIRECT), or NULL */
        char *loopmgrd;
        char *loopmgrctl;
        char *bus_address;
        pid_t daemon_pid;
        char *daemon_unique_name;
        sd_bus *bus;
        unsigned file_counter;

        TrackedDevice *tracked;
        size_t n_tracked;
        int *held_fds;
        size_t n_held;
        Catcher **catchers;
        size_t n_catchers;
        sd_bus **extra_buses;
        size_t n_extra_buses;
        char *udev_rule; /* a temporary rules file in /run/udev/rules.d, or NULL */
} Env;

/* Bookkeeping; all of it is undone by env_cleanup_test(). */
int env_track_device(Env *e, const char *name, uint64_t diskseq);
int env_hold(Env *e, const char *path, int flags); /* open() and remember */
void env_release(Env *e, int fd);                  /* close() and forget */
int env_new_bus(Env *e, sd_bus **ret);             /* extra connection */
/* Installs a temporary udev rule (and reloads udev) until the end of the test. */
int env_add_udev_rule(Env *e, const char *text);
void env_close_bus(Env *e, sd_bus *bus);
/* Closes held fds, drops catchers, extra buses and the udev rule, then detaches (through the
 * daemon, with losetup -d as last resort) every tracked binding that is still there. Returns
 * the number of tracked bindings that were still attached. */
int env_cleanup_test(Env *e);

/* Creates <dir>/img-<n>.img of the given size (sparse) and returns its path. */
int env_make_image(Env *e, const char *dir, uint64_t size, char **ret_path);

/* Time */
uint64_t now_usec(void);
void sleep_usec(uint64_t usec);

/* --- The daemon's API --- */

typedef struct Attached {
        char *object;
        char *node;
        uint64_t diskseq;
        bool reused;
} Attached;

void attached_done(Attached *a);

/* Calls Manager.Attach with fd and the n options given as OPT_*() triples. On success the
 * device is tracked for cleanup. */
int call_attach(Env *e, sd_bus *bus, int fd, sd_bus_error *error, Attached *ret, unsigned n_options,
                ...);
/* Opens path with open_flags, then call_attach(). */
int attach_file(Env *e, const char *path, int open_flags, sd_bus_error *error, Attached *ret,
                unsigned n_options, ...);
int call_attach_path(Env *e, const char *path, sd_bus_error *error, Attached *ret,
                     unsigned n_options, ...);
/* Manager.Detach(object, options) -> state (caller frees). */
int call_detach(Env *e, const char *object, sd_bus_error *error, char **ret_state,
                unsigned n_options, ...);
/* Device.Detach(options) on the object itself. */
int call_device_detach(Env *e, const char *object, sd_bus_error *error, char **ret_state,
                       unsigned n_options, ...);
int call_get_device(Env *e, const char *what, sd_bus_error *error, char **ret_object);
int call_set_autoclear(Env *e, const char *object, bool value, sd_bus_error *error);
int call_set_capacity(Env *e, const char *object, sd_bus_error *error);
int get_version(Env *e, sd_bus_error *error, char **ret);

/* All properties of org.loopmgr.LoopManager1.Device. */
typedef struct DeviceProps {
        char *node;
        char *name;
        uint64_t diskseq;
        uint32_t major;
        uint32_t minor;
        char *backing_file;
        uint64_t backing_device;
        uint64_t backing_inode;
        uint64_t offset;
        uint64_t size_limit;
        uint64_t size;
        bool read_only;
        bool autoclear;
        bool partscan;
        bool direct_io;
        uint32_t sector_size;
        bool managed;
        uint32_t owner_uid;
        uint32_t references;
        char *state;
        char **opener_kinds; /* Openers, split into two NULL-terminated lists */
        char **opener_descriptions;
        size_t n_openers;
        char **chain;
        size_t n_chain;

        uint32_t present;  /* bit per property in the order above */
        char *type_errors; /* "Name: got x, want y; ..." or NULL */
} DeviceProps;

#define DEVICE_PROPS_ALL ((UINT32_C(1) << 22) - 1)

void device_props_done(DeviceProps *p);
/* Reads an a{sv} of Device properties at the message's read pointer. */
int device_props_read(sd_bus_message *m, DeviceProps *ret);
/* Properties.GetAll on the object. */
int device_props_get(Env *e, const char *object, sd_bus_error *error, DeviceProps *ret);

/* ObjectManager.GetManagedObjects, reduced to the Device objects. */
typedef struct DaemonDevice {
        char *object;
        DeviceProps props;
} DaemonDevice;

int daemon_devices_list(Env *e, DaemonDevice **ret, size_t *ret_n);
void daemon_devices_free(DaemonDevice *l, size_t n);

/* --- Signals --- */

/* Installs a match (synchronously, so nothing that happens after this returns can be missed)
 * and records matching signals in the returned catcher, which the Env owns. */
Catcher *catch_interfaces_added(Env *e);
Catcher *catch_interfaces_removed(Env *e);
Catcher *catch_properties_changed(Env *e, const char *path, const char *property);
/* Processes the bus until a signal was recorded whose object path is 'path' and Node is
 * 'node' (either may be NULL for "any"), or the timeout passes. Returns the index of the
 * record, or -ETIMEDOUT. */
int catcher_wait(Env *e, Catcher *c, const char *path, const char *node, uint64_t timeout_usec);
/* Processes whatever is queued without waiting. */
void bus_drain(Env *e);

/* --- The kernel's view --- */

/* /sys/block/<name>/<attr> as a string / number. */
int sysfs_read(const char *name, const char *attr, char **ret);
int sysfs_read_u64(const char *name, const char *attr, uint64_t *ret);
/* 1 if <name> still carries diskseq and has a backing file, 0 if not, <0 on error. */
int loop_binding_present(const char *name, uint64_t diskseq);
/* Waits until loop_binding_present() is 0. Returns true if it went away in time. */
bool wait_binding_gone(const char *name, uint64_t diskseq, uint64_t timeout_usec);

/* `losetup --json --list`, parsed through jq. */
typedef struct LosetupEntry {
        char *node; /* /dev/loopN */
        char *back_file;
        uint64_t offset;
        uint64_t size_limit;
} LosetupEntry;

int losetup_list(LosetupEntry **ret, size_t *ret_n);
void losetup_entries_free(LosetupEntry *l, size_t n);
/* Number of bound devices whose backing file is 'path' or, when prefix is true, lies under
 * the directory 'path'. */
int losetup_count_backed_by(const char *path, bool prefix, size_t *ret);

/* Runs argv (no shell), optionally feeding stdin_data, capturing stdout (and stderr into
 * *ret_stderr if non-NULL). Returns the exit status (0..255), 128+signal when killed, or a
 * negative errno. */
int run_command(char *const *argv, const char *stdin_data, char **ret_stdout, char **ret_stderr);

/* Assertions on bus results. */
void assert_bus_ok_impl(int r, const sd_bus_error *error, const char *what, const char *file,
                        int line);
void assert_bus_error_impl(int r, const sd_bus_error *error, const char *name, const char *file,
                           int line);
#define assert_bus_ok(r, error, what) assert_bus_ok_impl((r), (error), (what), __FILE__, __LINE__)
#define assert_bus_error(r, error, name)                                                           \
        assert_bus_error_impl((r), (error), (name), __FILE__, __LINE__)

static inline void bus_error_freep(sd_bus_error *e) {
        sd_bus_error_free(e);
}
#define _cleanup_bus_error_ _cleanup_(bus_error_freep)
static inline void attached_donep(Attached *a) {
        attached_done(a);
}
#define _cleanup_attached_ _cleanup_(attached_donep)
static inline void device_props_donep(DeviceProps *p) {
        device_props_done(p);
}
#define _cleanup_props_ _cleanup_(device_props_donep)
