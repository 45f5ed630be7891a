/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <stdio.h>
#include <systemd/sd-event.h>

#include "bus-util.h"
#include "log.h"
#include "polkit.h"

#define POLKIT_BUS_NAME        "org.freedesktop.PolicyKit1"
#define POLKIT_AUTHORITY_PATH  "/org/freedesktop/PolicyKit1/Authority"
#define POLKIT_AUTHORITY_IFACE "org.freedesktop.PolicyKit1.Authority"

/* CheckAuthorization flags (polkit's PolkitCheckAuthorizationFlags). */
#define POLKIT_CHECK_ALLOW_USER_INTERACTION 1U

typedef enum Verdict {
        VERDICT_PENDING,
        VERDICT_ALLOWED,
        VERDICT_DENIED,
        VERDICT_DISMISSED,   /* denied: the person dismissed the authentication dialog */
        VERDICT_CHALLENGE,   /* allowed after authentication the request did not allow */
        VERDICT_UNAVAILABLE, /* polkitd is not on the bus */
        VERDICT_TIMEOUT,
        VERDICT_BUS_LIMIT, /* the bus refused the query: too many calls pending */
        VERDICT_FAILED,    /* polkit answered with an error */
} Verdict;

typedef struct Query Query;

/* One CheckAuthorization for one request message, action and details; kept after the answer
 * until the message ran again. */
struct Query {
        PolkitRegistry *registry;
        sd_bus_message *request; /* the caller's call: keeps its fds alive too */
        char *sender;
        char *action;
        char **details;
        sd_bus_slot *slot;      /* the call to polkit, while pending */
        sd_event_source *defer; /* frees the answered query when idle */
        bool interactive;       /* asked with AllowUserInteraction */
        Verdict verdict;
        char *failure; /* polkit's error message, VERDICT_FAILED */
        Query *prev, *next;
};

struct PolkitRegistry {
        Query *queries;
        unsigned n_pending;
        uint32_t max_devices_per_user;
        uint64_t timeout_usec;
        uint64_t interactive_timeout_usec;
        sd_bus *bus; /* where name_owner_slot watches for vanishing callers */
        sd_bus_slot *name_owner_slot;
};

static bool details_equal(char **a, char **b) {
        size_t i;

        for (i = 0; a && a[i]; i++)
                if (!b || !b[i] || !streq(a[i], b[i]))
                        return false;
        return !b || !b[i];
}

static Query *query_free(Query *q) {
        PolkitRegistry *reg;

        if (!q)
                return NULL;
        reg = q->registry;
        if (q->slot) {
                /* Unref'ing the slot forgets the call; a late answer is dropped by sd-bus. */
                q->slot = sd_bus_slot_unref(q->slot);
                reg->n_pending--;
        }
        if (q->prev)
                q->prev->next = q->next;
        else
                reg->queries = q->next;
        if (q->next)
                q->next->prev = q->prev;
        sd_event_source_disable_unref(q->defer);
        sd_bus_message_unref(q->request);
        free(q->sender);
        free(q->action);
        strv_free(q->details);
        free(q->failure);
        free(q);
        return NULL;
}

int polkit_registry_new(PolkitRegistry **ret) {
        PolkitRegistry *reg;

        reg = calloc(1, sizeof(*reg));
        if (!reg)
                return -ENOMEM;
        reg->max_devices_per_user = POLKIT_DEFAULT_MAX_DEVICES_PER_USER;
        reg->timeout_usec = POLKIT_TIMEOUT_USEC;
        reg->interactive_timeout_usec = POLKIT_INTERACTIVE_TIMEOUT_USEC;
        *ret = reg;
        return 0;
}

PolkitRegistry *polkit_registry_free(PolkitRegistry *reg) {
        if (!reg)
                return NULL;
        while (reg->queries)
                query_free(reg->queries);
        sd_bus_slot_unref(reg->name_owner_slot);
        sd_bus_unref(reg->bus);
        free(reg);
        return NULL;
}

void polkit_registry_set_max_devices_per_user(PolkitRegistry *reg, uint32_t max) {
        reg->max_devices_per_user = max;
}

uint32_t polkit_registry_get_max_devices_per_user(const PolkitRegistry *reg) {
        return reg ? reg->max_devices_per_user : POLKIT_DEFAULT_MAX_DEVICES_PER_USER;
}

void polkit_registry_set_timeouts(PolkitRegistry *reg, uint64_t usec, uint64_t interactive_usec) {
        reg->timeout_usec = usec ?: POLKIT_TIMEOUT_USEC;
        reg->interactive_timeout_usec = interactive_usec ?: POLKIT_INTERACTIVE_TIMEOUT_USEC;
}

unsigned polkit_registry_n_pending(const PolkitRegistry *reg, const char *sender) {
        unsigned n = 0;

        if (!reg)
                return 0;
        if (!sender)
                return reg->n_pending;
        for (Query *q = reg->queries; q; q = q->next)
                if (q->slot && streq(q->sender, sender))
                        n++;
        return n;
}

/* Length of the valid UTF-8 sequence at s that D-Bus accepts in a string (sd-bus refuses
 * surrogates, code points beyond U+10FFFF, U+FDD0..U+FDEF and U+xFFFE/U+xFFFF), or 0. */
static size_t utf8_valid_prefix(const unsigned char *s) {
        uint32_t c;
        size_t n;

        if (s[0] < 0x80)
                return 1;
        if (s[0] >= 0xc2 && s[0] <= 0xdf) {
                n = 2;
                c = s[0] & 0x1f;
        } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
                n = 3;
                c = s[0] & 0x0f;
        } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
                n = 4;
                c = s[0] & 0x07;
        } else
                return 0;
        for (size_t i = 1; i < n; i++) {
                if ((s[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
                        return 0;
                c = (c << 6) | (s[i] & 0x3f);
        }
        if ((n == 3 && c < 0x800) || (n == 4 && c < 0x10000) || c >= 0x110000)
                return 0; /* overlong or out of range */
        if ((c & 0xfffff800) == 0xd800 || (c >= 0xfdd0 && c <= 0xfdef) || (c & 0xfffe) == 0xfffe)
                return 0;
        return n;
}

int polkit_detail_escape(const char *s, char **ret) {
        const unsigned char *p;
        bool valid = true;
        char *e, *o;

        for (p = (const unsigned char *) s; *p;) {
                size_t n = utf8_valid_prefix(p);

                if (n == 0) {
                        valid = false;
                        break;
                }
                p += n;
        }
        if (valid) {
                e = strdup(s);
                if (!e)
                        return -ENOMEM;
                *ret = e;
                return 0;
        }

        /* Worst case: every byte becomes \xNN. */
        e = o = malloc(strlen(s) * 4 + 1);
        if (!e)
                return -ENOMEM;
        for (p = (const unsigned char *) s; *p;) {
                size_t n = utf8_valid_prefix(p);

                if (n == 0) {
                        o += sprintf(o, "\\x%02x", *p);
                        p++;
                } else if (*p == '\\') {
                        *o++ = '\\';
                        *o++ = '\\';
                        p++;
                } else {
                        memcpy(o, p, n);
                        o += n;
                        p += n;
                }
        }
        *o = 0;
        *ret = e;
        return 0;
}

static int on_defer(sd_event_source *s, void *userdata) {
        /* Runs at idle priority, after the bus dispatched the message we put back into its read
         * queue: the verdict has been used (or the object is gone) and is not needed any more. */
        query_free(userdata);
        return 0;
}

static const char *verdict_to_string(Verdict v) {
        static const char *const table[] = {
                [VERDICT_PENDING] = "pending",     [VERDICT_ALLOWED] = "allowed",
                [VERDICT_DENIED] = "denied",       [VERDICT_DISMISSED] = "dismissed",
                [VERDICT_CHALLENGE] = "challenge", [VERDICT_UNAVAILABLE] = "polkit unavailable",
                [VERDICT_TIMEOUT] = "timeout",     [VERDICT_BUS_LIMIT] = "bus limit",
                [VERDICT_FAILED] = "failed",
        };

        return (size_t) v < ELEMENTSOF(table) ? table[v] : "?";
}

static Verdict verdict_from_reply(sd_bus_message *reply, char **ret_failure) {
        int authorized, challenge, r;
        const char *k, *v;
        bool dismissed = false;

        if (sd_bus_message_is_method_error(reply, NULL)) {
                const sd_bus_error *e = sd_bus_message_get_error(reply);

                /* sd_bus_error_has_names() needs libsystemd 247; meson asks for 246. */
                if (sd_bus_error_has_name(e, SD_BUS_ERROR_SERVICE_UNKNOWN) ||
                    sd_bus_error_has_name(e, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                        return VERDICT_UNAVAILABLE;
                if (sd_bus_error_has_name(e, SD_BUS_ERROR_NO_REPLY) ||
                    sd_bus_error_has_name(e, SD_BUS_ERROR_TIMEOUT))
                        return VERDICT_TIMEOUT;
                /* dbus-daemon caps the calls one connection may have waiting for replies
                 * (max_replies_per_connection, 128 unless configured otherwise). */
                if (sd_bus_error_has_name(e, SD_BUS_ERROR_LIMITS_EXCEEDED))
                        return VERDICT_BUS_LIMIT;
                *ret_failure = strdup(e->message ?: e->name);
                return VERDICT_FAILED;
        }

        r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
        if (r >= 0)
                r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "{ss}");
        while (r >= 0) {
                r = sd_bus_message_read(reply, "{ss}", &k, &v);
                if (r <= 0)
                        break;
                if (streq(k, "polkit.dismissed") && streq(v, "true"))
                        dismissed = true;
        }
        if (r < 0) {
                *ret_failure = strdup("its answer could not be parsed");
                return VERDICT_FAILED;
        }

        if (authorized)
                return VERDICT_ALLOWED;
        if (challenge)
                return VERDICT_CHALLENGE;
        return dismissed ? VERDICT_DISMISSED : VERDICT_DENIED;
}

static int on_polkit_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        Query *q = userdata;
        sd_bus *bus = sd_bus_message_get_bus(q->request);
        int r;

        q->slot = sd_bus_slot_unref(q->slot);
        q->registry->n_pending--;

        q->verdict = verdict_from_reply(reply, &q->failure);
        log_debug("polkit: %s for %s: %s%s%s", q->action, q->sender, verdict_to_string(q->verdict),
                  q->failure ? ": " : "", q->failure ?: "");

        /* Run the request again from the top; free the verdict once that happened. The defer
         * source is idle-priority, and the bus's own event sources (normal priority) keep
         * dispatching while its read queue is not empty, so the message runs first. */
        r = sd_event_add_defer(sd_bus_get_event(bus), &q->defer, on_defer, q);
        if (r >= 0)
                r = sd_event_source_set_priority(q->defer, SD_EVENT_PRIORITY_IDLE);
        if (r >= 0)
                r = sd_bus_message_rewind(q->request, true);
        if (r >= 0)
                r = sd_bus_enqueue_for_read(bus, q->request);
        if (r < 0) {
                log_debug_errno(r, "polkit: cannot dispatch the request again: %m");
                (void) bus_reply_errnof(q->request, r,
                                        "The authorisation answer could not be processed: %s.",
                                        strerror(-r));
                query_free(q);
        }
        return 0;
}

/* A caller that goes away needs no answer: forget its pending queries, so they stop counting
 * against the limits at once. */
static int on_name_owner_changed(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        PolkitRegistry *reg = userdata;
        const char *name, *old_owner, *new_owner;
        Query *q, *next;
        int r;

        r = sd_bus_message_read(message, "sss", &name, &old_owner, &new_owner);
        if (r < 0 || name[0] != ':' || new_owner[0] != 0)
                return 0;

        for (q = reg->queries; q; q = next) {
                next = q->next;
                if (q->slot && streq(q->sender, name)) {
                        log_debug("polkit: %s went away, dropping its query for %s", name,
                                  q->action);
                        query_free(q);
                }
        }
        return 0;
}

static void watch_callers(PolkitRegistry *reg, sd_bus *bus) {
        int r;

        if (reg->bus)
                return;
        r = sd_bus_match_signal_async(bus, &reg->name_owner_slot, "org.freedesktop.DBus",
                                      "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                      "NameOwnerChanged", on_name_owner_changed, NULL, reg);
        if (r < 0) {
                /* Not fatal: queries of vanished callers then just last until polkit answers. */
                log_debug_errno(r, "polkit: cannot watch for vanishing callers: %m");
                return;
        }
        reg->bus = sd_bus_ref(bus);
}

static int query_result(const Query *q, const char *what, sd_bus_error *error) {
        switch (q->verdict) {
        case VERDICT_PENDING:
                return 0;
        case VERDICT_ALLOWED:
                return 1;
        case VERDICT_CHALLENGE:
                /* Also when interaction was allowed: polkit answers a challenge when no
                 * authentication agent runs for the caller. Either way the caller could
                 * authenticate, given an agent; the error name tells it so. */
                if (q->interactive)
                        return sd_bus_error_setf(
                                error, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,
                                "Authentication is required to %s (polkit action %s), but no "
                                "polkit authentication agent is available to ask for it.",
                                what, q->action);
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,
                        "Authentication is required to %s (polkit action %s), but the request "
                        "does not allow interactive authorisation.",
                        what, q->action);
        case VERDICT_DENIED:
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Not authorised to %s (polkit action %s).", what,
                                         q->action);
        case VERDICT_DISMISSED:
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "Not authorised to %s: the authentication was dismissed "
                                         "(polkit action %s).",
                                         what, q->action);
        case VERDICT_UNAVAILABLE:
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_ACCESS_DENIED,
                        "polkit is not running, so only root may %s (polkit action %s).", what,
                        q->action);
        case VERDICT_TIMEOUT:
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                         "polkit did not answer in time, so only root may %s now "
                                         "(polkit action %s).",
                                         what, q->action);
        case VERDICT_BUS_LIMIT:
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                        "Too many authorisation requests are waiting for polkit; try again later "
                        "(the message bus refused another one for polkit action %s).",
                        q->action);
        case VERDICT_FAILED:
        default:
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_ACCESS_DENIED,
                        "Not authorised to %s: polkit could not check the action %s (%s).", what,
                        q->action, q->failure ?: "out of memory");
        }
}

static int append_details(sd_bus_message *m, const char *what, char **details) {
        _cleanup_free_ char *message = NULL, *escaped = NULL;
        int r;

        r = sd_bus_message_open_container(m, 'a', "{ss}");
        for (char **i = details; r >= 0 && i && i[0] && i[1]; i += 2) {
                _cleanup_free_ char *v = NULL;

                r = polkit_detail_escape(i[1], &v);
                if (r >= 0)
                        r = sd_bus_message_append(m, "{ss}", i[0], v);
        }
        /* What the authentication dialog says: this very file or device, not just the action's
         * generic message. polkit takes polkit.message together with a gettext domain (there is
         * no translation catalogue: the text is shown as it is). */
        if (r >= 0 && what) {
                if (asprintf(&message, "Authentication is required to %s.", what) < 0)
                        return -ENOMEM;
                r = polkit_detail_escape(message, &escaped);
                if (r >= 0)
                        r = sd_bus_message_append(m, "{ss}{ss}", "polkit.message", escaped,
                                                  "polkit.gettext_domain", "loopmgr");
        }
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

int polkit_verify_async(PolkitRegistry *reg, sd_bus_message *call, uid_t uid, const char *action,
                        const char *what, char **details, bool no_user_interaction,
                        sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *pk = NULL;
        sd_bus *bus = sd_bus_message_get_bus(call);
        const char *sender;
        bool interactive;
        Query *q;
        int r;

        /* Root is never asked (SPEC §7). */
        if (uid == 0)
                return 1;

        if (!reg)
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_ACCESS_DENIED,
                        "polkit is not available, so only root may %s (polkit action %s).", what,
                        action);

        /* The second (or later) time this request runs: polkit has answered. */
        for (q = reg->queries; q; q = q->next)
                if (q->request == call && streq(q->action, action) &&
                    details_equal(q->details, details))
                        return query_result(q, what, error);

        sender = sd_bus_message_get_sender(call);
        if (!sender || !sd_bus_get_event(bus))
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_ACCESS_DENIED,
                        "The caller has no name on the bus, so polkit cannot be asked; only root "
                        "may %s.",
                        what);

        if (polkit_registry_n_pending(reg, sender) >= POLKIT_PENDING_MAX_PER_CONNECTION)
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                        "This connection has %u authorisation requests waiting for polkit "
                        "already; wait for their answers before sending more.",
                        POLKIT_PENDING_MAX_PER_CONNECTION);
        if (reg->n_pending >= POLKIT_PENDING_MAX)
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                        "%u authorisation requests are waiting for polkit already; try again "
                        "later.",
                        POLKIT_PENDING_MAX);

        interactive = sd_bus_message_get_allow_interactive_authorization(call) > 0 &&
                      !no_user_interaction;

        r = sd_bus_message_new_method_call(bus, &pk, POLKIT_BUS_NAME, POLKIT_AUTHORITY_PATH,
                                           POLKIT_AUTHORITY_IFACE, "CheckAuthorization");
        if (r >= 0)
                r = sd_bus_message_append(pk, "(sa{sv})s", "system-bus-name", 1, "name", "s",
                                          sender, action);
        if (r >= 0)
                r = append_details(pk, what, details);
        if (r >= 0)
                /* No cancellation id: a vanished caller's query is dropped on our side. */
                r = sd_bus_message_append(
                        pk, "us", interactive ? POLKIT_CHECK_ALLOW_USER_INTERACTION : 0U, "");
        if (r < 0)
                return bus_error_set_errnof(error, r, "Cannot ask polkit: %s.", strerror(-r));

        q = calloc(1, sizeof(*q));
        if (!q)
                return bus_error_set_errnof(error, -ENOMEM, "Out of memory.");
        q->registry = reg;
        q->interactive = interactive;
        q->sender = strdup(sender);
        q->action = strdup(action);
        q->details = details ? strv_copy(details) : calloc(1, sizeof(char *));
        if (!q->sender || !q->action || !q->details) {
                query_free(q);
                return bus_error_set_errnof(error, -ENOMEM, "Out of memory.");
        }
        q->next = reg->queries;
        if (reg->queries)
                reg->queries->prev = q;
        reg->queries = q;

        r = sd_bus_call_async(bus, &q->slot, pk, on_polkit_reply, q,
                              interactive ? reg->interactive_timeout_usec : reg->timeout_usec);
        if (r < 0) {
                query_free(q);
                return bus_error_set_errnof(error, r, "Cannot ask polkit: %s.", strerror(-r));
        }
        reg->n_pending++;
        q->request = sd_bus_message_ref(call);

        watch_callers(reg, bus);
        log_debug("polkit: asking about %s for %s (uid %u%s)", action, sender, (unsigned) uid,
                  interactive ? ", interactive" : "");
        return 0;
}
