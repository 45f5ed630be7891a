/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The a{sv} option dictionaries of the methods, read and validated (options-bus.c): each
 * unknown key, wrong type or bad value fails with InvalidArgs and a sentence naming it. */

#include <systemd/sd-bus.h>

#include "options.h"

int attach_options_parse(sd_bus_message *m, AttachOptions *ret, sd_bus_error *error);
int detach_options_parse(sd_bus_message *m, DetachOptions *ret, sd_bus_error *error);
int common_options_parse(sd_bus_message *m, CommonOptions *ret, sd_bus_error *error);
int mount_options_parse(sd_bus_message *m, MountOptions *ret, sd_bus_error *error);
int unmount_options_parse(sd_bus_message *m, UnmountOptions *ret, sd_bus_error *error);
