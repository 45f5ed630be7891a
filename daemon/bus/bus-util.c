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
        case ENOPKG:
                /* The core's word for "this kernel has no driver for it" (Mount's file
                 * system type): EOPNOTSUPP is taken, for options the daemon refuses. */
                return SD_BUS_ERROR_NOT_SUPPORTED;
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

int bus_error_set_problem(sd_bus_error *error, const Problem *p) {
        if (!p || p->error == 0)
                return bus_error_set_errnof(error, -EIO, "Internal error: no reason was given.");
        if (!p->message)
                return bus_error_set_errnof(error, p->error, NULL);
        return bus_error_set_errnof(error, p->error, "%s", p->message);
}

int bus_reply_errnof(sd_bus_message *m, int r, const char *format, ...) {
        _cleanup_(sd_bus_error_freep) sd_bus_error error = SD_BUS_ERROR_NULL;
        va_list ap;

        va_start(ap, format);
        (void) bus_error_set_errnofv(&error, r, format, ap);
        va_end(ap);
        return sd_bus_reply_method_error(m, &error);
}

static SenderUid *sender_uid_lookup(SenderUidCache *c, sd_id128_t bus_id, const char *name,
                                    bool add) {
        SenderUid *oldest = &c->entries[0];

        for (size_t i = 0; i < SENDER_UID_CACHE_SIZE; i++) {
                SenderUid *e = &c->entries[i];

                if (e->used && sd_id128_equal(e->bus_id, bus_id) && streq(e->name, name)) {
                        e->used = ++c->clock;
                        return e;
                }
                if (e->used < oldest->used)
                        oldest = e;
        }
        if (!add)
                return NULL;
        *oldest = (SenderUid){
                .bus_id = bus_id,
                .used = ++c->clock,
        };
        (void) snprintf(oldest->name, sizeof(oldest->name), "%s", name);
        return oldest;
}

int bus_message_sender_uid(SenderUidCache *c, sd_bus_message *m, uid_t *ret) {
        sd_bus_creds *creds = NULL;
        sd_id128_t bus_id = SD_ID128_NULL;
        const char *sender;
        SenderUid *e;
        uid_t uid;
        int r;

        /* Only unique names (":1.42") are keys: a well-known name changes hands. */
        sender = sd_bus_message_get_sender(m);
        if (!sender || sender[0] != ':' || strlen(sender) >= sizeof(e->name) ||
            sd_bus_get_bus_id(sd_bus_message_get_bus(m), &bus_id) < 0)
                sender = NULL;
        if (sender) {
                e = c ? sender_uid_lookup(c, bus_id, sender, false) : NULL;
                if (e) {
                        *ret = e->uid;
                        return 0;
                }
        }

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
        if (sender && c)
                sender_uid_lookup(c, bus_id, sender, true)->uid = uid;
        *ret = uid;
        return 0;
}

int bus_sender_uid_or_deny(SenderUidCache *c, sd_bus_message *message, uid_t *ret_uid,
                           sd_bus_error *error) {
        uid_t uid;
        int r;

        r = bus_message_sender_uid(c, message, &uid);
        if (r < 0)
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_ACCESS_DENIED,
                        "Cannot identify the caller (%s), so it is not authorised.", strerror(-r));
        *ret_uid = uid;
        return 0;
}
