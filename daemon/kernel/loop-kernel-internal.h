/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What loop-kernel.c and loop-attach.c share; not for other modules (loop-kernel.h is the
 * layer's interface). */

#include <stdint.h>
#include <sys/types.h>

#include "loop-kernel.h"

struct loop_info64;

void sleep_usec(uint64_t usec);
/* root-relative open. */
int open_root(const char *root, const char *path, int flags);
/* /dev/<name> under root. */
int open_device(const char *root, const char *name, int flags);
/* A private node of devnum in /run/loopmgr, so that udev's inotify watch on /dev/<name> sees
 * no close of ours. */
int open_device_private(const char *root, const char *name, dev_t devnum, int flags);
/* The kernel's 12:20 dev_t encoding as an ioctl reports it. */
dev_t decode_kernel_dev(uint64_t v);
/* <root>/sys/block/<name>/<attr>, as a string (one line) or as a number. */
int sysfs_read(const char *root, const char *name, const char *attr, char **ret);
int sysfs_read_u64(const char *root, const char *name, const char *attr, uint64_t *ret);
/* Deletes the partitions of <name> (BLKPG) through fd. */
int device_remove_partitions(const char *root, const char *name, int fd);
/* loop_status_done() for _cleanup_. */
void loop_status_donep(LoopStatus *s);
/* LOOP_SET_STATUS64, tried again while old kernels answer EAGAIN (loop-attach.c). */
int set_status_retry(int fd, const struct loop_info64 *info);
