/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The libmount side of "loopmgrctl mount" and "loopmgrctl umount": splitting mount options
 * into what the loop device needs and what the mount needs, mounting a loop device node,
 * finding what is mounted on a directory, and unmounting it.
 *
 * libmount never sets up or deletes a loop device here. It would do so for a regular file
 * source or the options loop, offset= and sizelimit= (and then detach a device it merely
 * reused when the mount failed, util-linux PR #4646), or on umount for a mount recorded with
 * "loop" in utab. So the source is always the loop device node loopmgrd handed out, those
 * options never reach libmount, and loop deletion is switched off before unmounting.
 *
 * Functions return 0 or a negative errno; the ones that talk to libmount also hand back
 * libmount's own message for the user (mount(8)'s wording) where there is one.
 */

#include <stdbool.h>
#include <stdint.h>

typedef struct MountOptions {
        char *options;    /* for libmount, loop options removed; NULL when none are left */
        char *offset;     /* value of the last offset=, NULL if none */
        char *size_limit; /* value of the last sizelimit=, NULL if none */
        bool read_only;   /* the mount is read-only: the last of ro/rw says so */
} MountOptions;

void mount_options_done(MountOptions *o);

/*
 * Splits a comma-separated mount option string (as given to mount -o; NULL for none). "loop"
 * alone is dropped (the device is always a loop device), offset= and sizelimit= are taken
 * out for the attach. -EINVAL with *ret_bad set to the offending option (owned by the caller)
 * for options that only make sense when libmount sets up the loop device itself: loop=DEV,
 * encryption=, offset or sizelimit without a value; or for a string libmount cannot parse
 * (*ret_bad NULL then).
 */
int mount_options_parse(const char *optstr, MountOptions *ret, char **ret_bad);

/* Whether option `name` is among o->options. */
bool mount_options_has(const MountOptions *o, const char *name);

/* Appends "ro" to o->options (the device turned out read-only) and sets o->read_only. */
int mount_options_force_read_only(MountOptions *o);

/*
 * Mounts block device `source` on `target`; fstype NULL lets libmount probe it (blkid).
 * Returns 0 when the file system is mounted, even if only updating libmount's utab failed
 * afterwards (then *ret_message is a warning). Otherwise a negative errno (the mount(2)
 * errno when the system call failed) and *ret_message says why in mount(8)'s words. Either
 * message may be NULL; the caller frees it.
 */
int ctl_mount(const char *source, const char *target, const char *fstype, const char *options,
              char **ret_message);

/*
 * The file system mounted last on dir (what umount would unmount): its mount point as the
 * kernel shows it and its source (the device path for block-device file systems). -ENOENT
 * when dir is not a mount point in this mount namespace.
 */
int ctl_find_mount(const char *dir, char **ret_target, char **ret_source);

/* Unmounts target without ever deleting a loop device; messages as for ctl_mount(). */
int ctl_umount(const char *target, char **ret_message);
