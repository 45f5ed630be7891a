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

/* A partition the test added with BLKPG (addpart) on one binding of a loop device. */
typedef struct TrackedPartition {
        char *disk;       /* "loop5" */
        uint64_t diskseq; /* of the binding the partition was added to */
        unsigned partno;
} TrackedPartition;

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

        /* Mount points (bind mounts included) the test made or asked loopmgrctl for; the
         * cleanup unmounts them newest first, before any device goes. */
        char **mounts;
        size_t n_mounts;
        TrackedPartition *partitions;
        size_t n_partitions;
} Env;

/* Bookkeeping; all of it is undone by env_cleanup_test(). */
int env_track_device(Env *e, const char *name, uint64_t diskseq);
int env_hold(Env *e, const char *path, int flags); /* open() and remember */
int env_hold_fd(Env *e, int fd);                   /* remember fd (closed on failure) */
void env_release(Env *e, int fd);                  /* close() and forget */
int env_new_bus(Env *e, sd_bus **ret);             /* extra connection */
/* Installs a temporary udev rule (and reloads udev) until the end of the test. */
int env_add_udev_rule(Env *e, const char *text);
void env_close_bus(Env *e, sd_bus *bus);
/* Mounts: env_mount() tracks target and then mount(2)s; env_umount() unmounts and forgets.
 * env_track_mount() only records a mount point (one made by another program). */
int env_track_mount(Env *e, const char *target);
void env_forget_mount(Env *e, const char *target);
int env_mount(Env *e, const char *source, const char *target, const char *fstype,
              unsigned long flags, const char *data);
int env_umount(Env *e, const char *target);
/* Number of mount points at or below dir in this mount namespace. */
int mounts_under(const char *dir, size_t *ret);
/* addpart DISK PARTNO START SIZE (512-byte sectors) on the binding disk/diskseq, tracked; waits
 * until /dev/<disk>p<partno> exists and returns that node. env_delete_partition() runs delpart
 * and forgets the partition. */
int env_add_partition(Env *e, const char *disk, uint64_t diskseq, unsigned partno,
                      uint64_t start_sector, uint64_t n_sectors, char **ret_node);
int env_delete_partition(Env *e, const char *disk, unsigned partno);
/* Forgets a tracked partition that went away by itself (the daemon removed it). */
void env_forget_partition(Env *e, const char *disk, unsigned partno);
/* Closes held fds, drops catchers, extra buses and the udev rule, unmounts tracked mounts, then
 * detaches (through the daemon, with losetup -d as last resort) every tracked binding that is
 * still there, newest first, deleting its tracked partitions just before. Returns the number of
 * tracked bindings that were still attached. */
int env_cleanup_test(Env *e);

/* Creates <dir>/img-<n>.img of the given size (sparse) and returns its path. */
int env_make_image(Env *e, const char *dir, uint64_t size, char **ret_path);

/* Time */
uint64_t now_usec(void);
void sleep_usec(uint64_t usec);

/* --- The daemon process (shared by the integration test binaries) --- */

/* $env_name, else <build dir>/name next to the test binary's directory. */
int env_find_binary(const char *env_name, const char *name, char **ret);
/* Forks e->loopmgrd with LOOPMGR_STATE_DIR=<tmpdir>/state and waits (10 s at most) until it
 * owns the bus name; refuses (-EADDRINUSE) when another daemon owns it already. */
int env_start_daemon(Env *e);
/* The same with extra command line arguments and "NAME=value" environment entries (either
 * NULL-terminated list may be NULL). */
int env_start_daemon_with(Env *e, char *const *args, char *const *env);
/* SIGTERM and wait; 0 only when the daemon exited with status 0 (sanitizer reports abort). */
int env_stop_daemon(Env *e);
/* Sends sig and reaps the daemon (10 s at most, then SIGKILL). 0 when it died of sig or, for a
 * signal it handles (SIGTERM), exited with status 0; -EPROTO otherwise. */
int env_kill_daemon(Env *e, int sig);
/* VmRSS of a process in KiB, from /proc/PID/status. */
int proc_vmrss_kib(pid_t pid, uint64_t *ret);
/* `losetup --json --list` and the daemon's ObjectManager agree (retried for up to 3 s, as
 * other tests on the kernel create and remove devices); prints the differences and returns
 * <0 when they do not. */
int env_check_consistency(Env *e);
/* The same, but when the whole host does not settle within 3 s (other users of the kernel
 * churning devices faster than udev tells the daemon), only the devices backed, through any
 * layers, by files under dir must agree; the differences left out are counted in a note. */
int env_check_consistency_under(Env *e, const char *dir);
/* Only the second half of env_check_consistency_under(): the devices backed by files under
 * dir must agree (retried for up to timeout_usec), whatever the rest of the host does. For a
 * check after every call of a long sequence, where waiting for a busy host to settle would
 * cost seconds each time. */
int env_check_consistency_only_under(Env *e, const char *dir, uint64_t timeout_usec);
/* losetup -d of every device backed by a file under dir (everything there is ours); returns
 * how many there were. */
size_t env_detach_all_under(const char *dir);
bool env_wait_nothing_under(const char *dir, uint64_t timeout_usec);

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

/* Manager.Resolve(fd, options). */
typedef struct Resolved {
        char *base_kind;
        uint64_t base_device;
        uint64_t base_inode;
        uint64_t offset;
        uint64_t size;
        char **chain; /* NULL-terminated */
        size_t n_chain;
        char **aliases; /* NULL-terminated object paths */
        size_t n_aliases;
        char *unexpected; /* keys of unknown name or type, "key:type ..." or NULL */
} Resolved;

void resolved_done(Resolved *r);
int call_resolve(Env *e, int fd, sd_bus_error *error, Resolved *ret, unsigned n_options, ...);

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
 * negative errno. When argv[0] cannot be executed the status is 127 and stderr says which file
 * and why ("cannot execute /x/y: Permission denied"); without ret_stderr that is printed. */
int run_command(char *const *argv, const char *stdin_data, char **ret_stdout, char **ret_stderr);

/* Copies the file src to dir/<its base name> (replacing an older copy), mode 0755, owned by
 * whoever runs the test, and returns the copy's path. dir is created (0755) when missing. For
 * what unprivileged test users execute: the build tree may lie where they cannot reach it (a
 * checkout under /root, mode 0700). Fails with -EACCES, saying which one, when dir or a
 * directory above it is not searchable by everyone. */
int copy_for_users(const char *src, const char *dir, char **ret);

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
static inline void resolved_donep(Resolved *r) {
        resolved_done(r);
}
#define _cleanup_resolved_ _cleanup_(resolved_donep)

/* The group fixture shared by the integration binaries. env_group_setup() makes a temporary
 * directory /var/tmp/loopmgr-<name>.XXXXXX, connects to the bus and starts the daemon;
 * env_group_teardown() detaches everything under that directory, stops the daemon and removes
 * the directory (not if mounts survive). Either sets env_group_failed on failure, which main()
 * turns into a failing exit status (cmocka does not count group fixtures). */
extern bool env_group_failed;
void env_free(Env *e);
int env_group_setup(void **state, const char *name);
int env_group_teardown(void **state);

/* Points e->loopmgrctl at a copy in <tmpdir>/bin (copy_for_users()) for binaries that run it
 * as unprivileged users: they reach the temporary directory (which they must be able to search:
 * mode 0711) but maybe not the build tree. */
int env_loopmgrctl_for_users(Env *e);

/* A new directory <tmpdir>/<prefix>-N; fails the test if it cannot be made. */
char *env_make_dir(Env *e, const char *prefix);
/* dir/name, allocated; fails the test when out of memory. */
char *env_join(const char *dir, const char *name);
/* Runs a NULL-terminated command line; returns its exit status, output in *ret_out/err. */
int env_run(char **ret_out, char **ret_err, const char *arg0, ...);
void env_run_ok_impl(const char *file, int line, const char *arg0, ...);
/* The command must exit 0, else the test fails with its output. */
#define env_run_ok(...) env_run_ok_impl(__FILE__, __LINE__, __VA_ARGS__, NULL)
/* A test's teardown check: no device is backed by anything under dir within usec; when some
 * are, says so, detaches them (waiting 5 s more) and returns false. */
bool env_expect_nothing_under(const char *dir, uint64_t usec);
/* Why the integration tests cannot run here (not root, no loop-control, no bus), or 0. */
int env_skip_reason(const char **ret);

/* The main() of an integration test: exit status 77 (skipped) when env_skip_reason() says so,
 * a warning when udev does not run, LOOPMGR_TEST_FILTER and LOOPMGR_TEST_SKIP as cmocka's
 * filters, then the group. It failed when a test did, or env_group_failed or *also_failed
 * (may be NULL) is set: then _exit(1) after a flush, since a failed assertion longjmps past
 * the tests' cleanup handlers and LeakSanitizer would add its own (meaningless) report;
 * leaks are checked on successful runs. Returns 0 otherwise. */
int env_run_tests(const char *name, const struct CMUnitTest *tests, size_t n,
                  CMFixtureFunction setup, CMFixtureFunction teardown, const bool *also_failed);
#define ENV_RUN_TESTS(tests, setup, teardown, also_failed)                                         \
        env_run_tests(#tests, tests, sizeof(tests) / sizeof((tests)[0]), setup, teardown,          \
                      also_failed)
