/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Minimal logging to stderr (journald picks it up under systemd). Core code logs at debug
 * only; the layer that decides logs once. log_*_errno() return the negative errno so that
 * "return log_error_errno(r, ...)" works, and set errno so "%m" prints it.
 */

#include <errno.h>
#include <syslog.h>

#include "util.h"

void log_set_max_level(int level);
int log_get_max_level(void);
int log_parse_level(const char *s); /* "debug", "info", ...; -EINVAL otherwise */

int log_internal(int level, int error, const char *file, int line, const char *func,
                 const char *format, ...) _printf_(6, 7);

#define log_full_errno(level, error, ...)                                                          \
        log_internal((level), (error), __FILE__, __LINE__, __func__, __VA_ARGS__)

#define log_debug(...)   log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...)    log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...)  log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...)   log_full_errno(LOG_ERR, 0, __VA_ARGS__)

#define log_debug_errno(e, ...)   log_full_errno(LOG_DEBUG, (e), __VA_ARGS__)
#define log_info_errno(e, ...)    log_full_errno(LOG_INFO, (e), __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, (e), __VA_ARGS__)
#define log_error_errno(e, ...)   log_full_errno(LOG_ERR, (e), __VA_ARGS__)
