/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The signal catcher of the integration tests: InterfacesAdded, InterfacesRemoved and
 * PropertiesChanged of the daemon's objects, waited for with a deadline. */

#include <stdlib.h>
#include <string.h>

/* cmocka wants these first. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-internal.h"
#include "integration-util.h"
#include "loopmgr-bus.h"

/* --- Signals --- */

void catcher_free(Catcher *c) {
        if (!c)
                return;
        sd_bus_slot_unref(c->slot);
        free(c->property);
        for (size_t i = 0; i < c->count; i++) {
                free(c->paths[i]);
                free(c->nodes[i]);
        }
        free(c->paths);
        free(c->nodes);
        free(c);
}

static int catcher_record(Catcher *c, const char *path, const char *node) {
        char **p = realloc(c->paths, (c->count + 1) * sizeof(char *));
        if (!p)
                return -ENOMEM;
        c->paths = p;
        char **n = realloc(c->nodes, (c->count + 1) * sizeof(char *));
        if (!n)
                return -ENOMEM;
        c->nodes = n;
        c->paths[c->count] = strdup(path);
        c->nodes[c->count] = node ? strdup(node) : NULL;
        c->count++;
        return 0;
}

static int catcher_handler(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Catcher *c = userdata;
        _cleanup_free_ char *node = NULL;
        const char *path;
        bool hit = false;
        int r;

        /* A signal we cannot parse is simply not recorded: the waiting test then fails with
         * a timeout that names what it waited for. */
        if (c->kind == CATCH_PROPERTIES_CHANGED) {
                const char *iface, *name;
                path = sd_bus_message_get_path(m);
                if (!path)
                        return 0;
                r = sd_bus_message_read(m, "s", &iface);
                if (r < 0 || !streq(iface, LOOPMGR_DEVICE_INTERFACE))
                        return 0;
                r = sd_bus_message_enter_container(m, 'a', "{sv}");
                if (r < 0)
                        return 0;
                while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                        if (sd_bus_message_read_basic(m, 's', &name) < 0)
                                return 0;
                        if (streq(name, c->property))
                                hit = true;
                        if (sd_bus_message_skip(m, "v") < 0 || sd_bus_message_exit_container(m) < 0)
                                return 0;
                }
                if (r < 0 || sd_bus_message_exit_container(m) < 0)
                        return 0;
                r = sd_bus_message_enter_container(m, 'a', "s");
                if (r < 0)
                        return 0;
                while ((r = sd_bus_message_read_basic(m, 's', &name)) > 0)
                        if (streq(name, c->property))
                                hit = true;
        } else {
                r = sd_bus_message_read_basic(m, 'o', &path);
                if (r < 0)
                        return 0;
                if (c->kind == CATCH_INTERFACES_REMOVED) {
                        const char *iface;
                        r = sd_bus_message_enter_container(m, 'a', "s");
                        if (r < 0)
                                return 0;
                        while ((r = sd_bus_message_read_basic(m, 's', &iface)) > 0)
                                if (streq(iface, LOOPMGR_DEVICE_INTERFACE))
                                        hit = true;
                } else {
                        r = sd_bus_message_enter_container(m, 'a', "{sa{sv}}");
                        if (r < 0)
                                return 0;
                        while ((r = sd_bus_message_enter_container(m, 'e', "sa{sv}")) > 0) {
                                const char *iface;
                                if (sd_bus_message_read_basic(m, 's', &iface) < 0)
                                        return 0;
                                if (streq(iface, LOOPMGR_DEVICE_INTERFACE)) {
                                        _cleanup_props_ DeviceProps p = {};
                                        if (device_props_read(m, &p) < 0)
                                                return 0;
                                        hit = true;
                                        free(node);
                                        node = TAKE_PTR(p.node);
                                } else if (sd_bus_message_skip(m, "a{sv}") < 0)
                                        return 0;
                                if (sd_bus_message_exit_container(m) < 0)
                                        return 0;
                        }
                }
        }

        if (hit)
                (void) catcher_record(c, path, node);
        return 0;
}

static Catcher *catcher_new(Env *e, CatchKind kind, const char *path, const char *property) {
        Catcher *c = calloc(1, sizeof(Catcher));
        int r;

        assert_non_null(c);
        assert_int_equal(grow((void **) &e->catchers, &e->n_catchers, sizeof(Catcher *)), 0);
        e->catchers[e->n_catchers++] = c;
        c->kind = kind;
        c->property = property ? strdup(property) : NULL;

        const char *member = kind == CATCH_INTERFACES_ADDED     ? "InterfacesAdded"
                             : kind == CATCH_INTERFACES_REMOVED ? "InterfacesRemoved"
                                                                : "PropertiesChanged";
        /* Synchronous AddMatch: once this returns, the bus routes the signals to us. */
        r = sd_bus_match_signal(e->bus, &c->slot, LOOPMGR_BUS_NAME,
                                kind == CATCH_PROPERTIES_CHANGED ? path : LOOPMGR_MANAGER_PATH,
                                kind == CATCH_PROPERTIES_CHANGED ? PROPERTIES_INTERFACE
                                                                 : OBJECT_MANAGER_INTERFACE,
                                member, catcher_handler, c);
        if (r < 0)
                fail_msg("AddMatch for %s failed: %s", member, strerror(-r));
        return c;
}

Catcher *catch_interfaces_added(Env *e) {
        return catcher_new(e, CATCH_INTERFACES_ADDED, NULL, NULL);
}

Catcher *catch_interfaces_removed(Env *e) {
        return catcher_new(e, CATCH_INTERFACES_REMOVED, NULL, NULL);
}

Catcher *catch_properties_changed(Env *e, const char *path, const char *property) {
        return catcher_new(e, CATCH_PROPERTIES_CHANGED, path, property);
}

static int catcher_find(const Catcher *c, const char *path, const char *node) {
        for (size_t i = 0; i < c->count; i++)
                if ((!path || streq_ptr(c->paths[i], path)) &&
                    (!node || streq_ptr(c->nodes[i], node)))
                        return (int) i;
        return -ENOENT;
}

int catcher_wait(Env *e, Catcher *c, const char *path, const char *node, uint64_t timeout_usec) {
        uint64_t deadline = now_usec() + timeout_usec;

        for (;;) {
                int i = catcher_find(c, path, node);
                if (i >= 0)
                        return i;
                int r = sd_bus_process(e->bus, NULL);
                if (r < 0)
                        fail_msg("sd_bus_process() failed: %s", strerror(-r));
                if (r > 0)
                        continue;
                uint64_t n = now_usec();
                if (n >= deadline)
                        return -ETIMEDOUT;
                r = sd_bus_wait(e->bus, deadline - n);
                if (r < 0 && r != -EINTR)
                        fail_msg("sd_bus_wait() failed: %s", strerror(-r));
        }
}

void bus_drain(Env *e) {
        while (sd_bus_process(e->bus, NULL) > 0)
                ;
}
