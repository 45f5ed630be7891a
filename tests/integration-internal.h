/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the integration-*.c files of the test library share among themselves (not the tests). */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <systemd/sd-bus.h>

#include "integration-util.h"

#define PROPERTIES_INTERFACE     "org.freedesktop.DBus.Properties"
#define OBJECT_MANAGER_INTERFACE "org.freedesktop.DBus.ObjectManager"

/* Bus calls that may wait for udev get the daemon's default udev timeout plus slack. */
#define CALL_TIMEOUT_USEC (30 * USEC_PER_SEC)

/* Room for one more element at the end of *array (of *n elements of element_size). */
int grow(void **array, size_t *n, size_t element_size);
/* Appends s to the NULL-terminated list *l of *n entries. */
int strv_push(char ***l, size_t *n, char *s);
void fclosep(FILE **f);
/* LOOPMGR_DEVICE_PATH_PREFIX/<diskseq>, allocated. */
char *device_object_path(uint64_t diskseq);
void catcher_free(Catcher *c);
