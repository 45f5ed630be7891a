/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What daemon/mount.c used to be, now two modules: media mounts (media-mount.h) and the
 * properties exchanged with udev (udev-props.h). For callers written before the split; new
 * code includes the module it uses. */

#include "media-mount.h"
#include "udev-props.h"
