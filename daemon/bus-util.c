/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

#include "bus-util.h"
#include "loopmgr-bus.h"

static const char *errno_to_error_name(int r) {
        int e = r < 0 ? -r : r;

        for (const sd_bus_error_map *i = loopmgr_error_map; i->name; i++)
                if (i->code == e)
                        return i->name;

        switch (e) {
        case EINVAL:
        case EBADF:
        case EBADFD:
        case EOVERFLOW:
        case ERANGE:
        case EISDIR:
        case ENOTBLK:
        case EOPNOTSUPP:
                return SD_BUS_ERROR_INVALID_ARGS;
        case EPERM:
        case EACCES:
                return SD_BUS_ERROR_ACCESS_DENIED;
        case ENOENT:
        case ENXIO:
        case ESTALE:
                return LOOPMGR_ERROR_NOT_FOUND;
        case ENOMEM:
                return SD_BUS_ERROR_NO_MEMORY;
        case ENOBUFS:
                return SD_BUS_ERROR_LIMITS_EXCEEDED;
        default:
                return SD_BUS_ERROR_FAILED;
        }
}

static int bus_error_set_errnofv(sd_bus_error *error, int r, const char *format, va_list ap) {
        _cleanup_free_ char *text = NULL;

        if (r == 0)
                r = -EIO;
        if (r > 0)
                r = -r;
        if (format && vasprintf(&text, format, ap) < 0)
                text = NULL;
        if (!text) {
                errno = -r;
                if (asprintf(&text, "%m") < 0)
                        return sd_bus_error_set_errno(error, r);
        }
        (void) sd_bus_error_set(error, errno_to_error_name(r), text);
        return r;
}

int bus_error_set_errnof(sd_bus_error *error, int r, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        r = bus_error_set_errnofv(error, r, format, ap);
        va_end(ap);
        return r;
}

int bus_reply_errnof(sd_bus_message *m, int r, const char *format, ...) {
        _cleanup_(sd_bus_error_freep) sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;

        va_start(ap, format);
        (void) bus_error_set_errnofv(&error, r, format, ap);
        va_end(ap);
        return sd_bus_reply_method_error(m, &error);
}

int bus_device_path(uint64_t diskseq, char **ret) {
        char *p;

        if (asprintf(&p, "%s/%" PRIu64, LOOPMGR_DEVICE_PATH_PREFIX, diskseq) < 0)
                return -ENOMEM;
        *ret = p;
        return 0;
}

int bus_device_path_parse(const char *path, uint64_t *ret) {
        const char *prefix = LOOPMGR_DEVICE_PATH_PREFIX "/";
        uint64_t v;
        int r;

        if (!path || strncmp(path, prefix, strlen(prefix)) != 0)
                return -EINVAL;
        path += strlen(prefix);
        /* Only the spelling bus_device_path() makes names an object: "device/042" is not
         * "device/42" (GetManagedObjects lists the latter only). */
        if (path[0] == '0' && path[1] != 0)
                return -EINVAL;
        r = safe_atou64(path, &v);
        if (r < 0)
                return r;
        *ret = v;
        return 0;
}

int bus_message_sender_uid(sd_bus_message *m, uid_t *ret) {
        sd_bus_creds *creds = NULL;
        uid_t uid;
        int r;

        r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &creds);
        if (r < 0)
                return r;
        /* Authorisation decides on this uid: take it from the bus (SO_PEERCRED, as the bus
         * daemon recorded it at connect), never from /proc, which a caller can race. */
        if (sd_bus_creds_get_augmented_mask(creds) & SD_BUS_CREDS_EUID)
                r = -EPERM;
        else
                r = sd_bus_creds_get_euid(creds, &uid);
        sd_bus_creds_unref(creds);
        if (r < 0)
                return r;
        *ret = uid;
        return 0;
}

int bus_sender_uid_or_deny(sd_bus_message *message, uid_t *ret_uid, sd_bus_error *error) {
        uid_t uid;
        int r;

        r = bus_message_sender_uid(message, &uid);
        if (r < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Cannot identify the caller (%s), so it is not authorised.",
                                         strerror(-r));
        *ret_uid = uid;
        return 0;
}
