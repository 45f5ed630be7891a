/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The daemon's API for the integration tests: Attach, Detach and the other calls, Device
 * properties, GetManagedObjects, Resolve, and assertions on bus results. */

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* cmocka wants these first. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-internal.h"
#include "integration-util.h"
#include "loopmgr-bus.h"

/* --- Calls --- */

void attached_done(Attached *a) {
        free(a->object);
        free(a->node);
        *a = (Attached){};
}

static int append_options(sd_bus_message *m, unsigned n, va_list *ap) {
        int r;

        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        for (unsigned i = 0; i < n; i++) {
                const char *key = va_arg(*ap, const char *);
                const char *sig = va_arg(*ap, const char *);

                r = sd_bus_message_open_container(m, 'e', "sv");
                if (r < 0)
                        return r;
                r = sd_bus_message_append_basic(m, 's', key);
                if (r < 0)
                        return r;
                r = sd_bus_message_open_container(m, 'v', sig);
                if (r < 0)
                        return r;
                switch (sig[0]) {
                case 't': {
                        uint64_t v = va_arg(*ap, uint64_t);
                        r = sd_bus_message_append_basic(m, 't', &v);
                        break;
                }
                case 'u': {
                        uint32_t v = va_arg(*ap, unsigned);
                        r = sd_bus_message_append_basic(m, 'u', &v);
                        break;
                }
                case 'b': {
                        int v = va_arg(*ap, int);
                        r = sd_bus_message_append_basic(m, 'b', &v);
                        break;
                }
                case 'i': {
                        int32_t v = va_arg(*ap, int);
                        r = sd_bus_message_append_basic(m, 'i', &v);
                        break;
                }
                case 's':
                        r = sd_bus_message_append_basic(m, 's', va_arg(*ap, const char *));
                        break;
                default:
                        return -EINVAL;
                }
                if (r < 0)
                        return r;
                r = sd_bus_message_close_container(m);
                if (r < 0)
                        return r;
                r = sd_bus_message_close_container(m);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(m);
}

static int read_attach_reply(Env *e, sd_bus_message *reply, Attached *ret) {
        const char *object, *node;
        uint64_t diskseq;
        int reused, r;

        r = sd_bus_message_read(reply, "ostb", &object, &node, &diskseq, &reused);
        if (r < 0)
                return r;
        Attached a = {.object = strdup(object),
                      .node = strdup(node),
                      .diskseq = diskseq,
                      .reused = reused};
        if (!a.object || !a.node) {
                attached_done(&a);
                return -ENOMEM;
        }
        /* Track before anything can fail, so that the teardown removes it. */
        if (strncmp(node, "/dev/", 5) == 0)
                (void) env_track_device(e, node + 5, diskseq);
        *ret = a;
        return 0;
}

static int vcall_attach(Env *e, sd_bus *bus, const char *method, const char *sig, const void *arg,
                        sd_bus_error *error, Attached *ret, unsigned n, va_list *ap) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus ?: e->bus, &m, LOOPMGR_BUS_NAME,
                                           LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, method);
        if (r < 0)
                return r;
        if (sig[0] == 'h')
                r = sd_bus_message_append_basic(m, 'h', arg);
        else
                r = sd_bus_message_append_basic(m, 's', arg);
        if (r < 0)
                return r;
        r = append_options(m, n, ap);
        if (r < 0)
                return r;
        r = sd_bus_call(bus ?: e->bus, m, CALL_TIMEOUT_USEC, error, &reply);
        if (r < 0)
                return r;
        return read_attach_reply(e, reply, ret);
}

int call_attach(Env *e, sd_bus *bus, int fd, sd_bus_error *error, Attached *ret, unsigned n_options,
                ...) {
        va_list ap;
        va_start(ap, n_options);
        int r = vcall_attach(e, bus, "Attach", "h", &fd, error, ret, n_options, &ap);
        va_end(ap);
        return r;
}

int attach_file(Env *e, const char *path, int open_flags, sd_bus_error *error, Attached *ret,
                unsigned n_options, ...) {
        _cleanup_close_ int fd = open(path, open_flags | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        va_list ap;
        va_start(ap, n_options);
        int r = vcall_attach(e, NULL, "Attach", "h", &fd, error, ret, n_options, &ap);
        va_end(ap);
        return r;
}

int call_attach_path(Env *e, const char *path, sd_bus_error *error, Attached *ret,
                     unsigned n_options, ...) {
        va_list ap;
        va_start(ap, n_options);
        int r = vcall_attach(e, NULL, "AttachPath", "s", path, error, ret, n_options, &ap);
        va_end(ap);
        return r;
}

static int vcall_detach(Env *e, const char *path, const char *interface, const char *object,
                        sd_bus_error *error, char **ret_state, unsigned n, va_list *ap) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *state;
        int r;

        r = sd_bus_message_new_method_call(e->bus, &m, LOOPMGR_BUS_NAME, path, interface, "Detach");
        if (r < 0)
                return r;
        if (object) {
                r = sd_bus_message_append_basic(m, 'o', object);
                if (r < 0)
                        return r;
        }
        r = append_options(m, n, ap);
        if (r < 0)
                return r;
        r = sd_bus_call(e->bus, m, CALL_TIMEOUT_USEC, error, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "s", &state);
        if (r < 0)
                return r;
        char *s = strdup(state);
        if (!s)
                return -ENOMEM;
        *ret_state = s;
        return 0;
}

int call_detach(Env *e, const char *object, sd_bus_error *error, char **ret_state,
                unsigned n_options, ...) {
        va_list ap;
        va_start(ap, n_options);
        int r = vcall_detach(e, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, object, error,
                             ret_state, n_options, &ap);
        va_end(ap);
        return r;
}

int call_device_detach(Env *e, const char *object, sd_bus_error *error, char **ret_state,
                       unsigned n_options, ...) {
        va_list ap;
        va_start(ap, n_options);
        int r = vcall_detach(e, object, LOOPMGR_DEVICE_INTERFACE, NULL, error, ret_state, n_options,
                             &ap);
        va_end(ap);
        return r;
}

int call_get_device(Env *e, const char *what, sd_bus_error *error, char **ret_object) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *object;
        int r;

        r = sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                               LOOPMGR_MANAGER_INTERFACE, "GetDevice", error, &reply, "s", what);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "o", &object);
        if (r < 0)
                return r;
        char *s = strdup(object);
        if (!s)
                return -ENOMEM;
        *ret_object = s;
        return 0;
}

int call_set_autoclear(Env *e, const char *object, bool value, sd_bus_error *error) {
        return sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, object, LOOPMGR_DEVICE_INTERFACE,
                                  "SetAutoclear", error, NULL, "ba{sv}", (int) value, 0);
}

int call_set_capacity(Env *e, const char *object, sd_bus_error *error) {
        return sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, object, LOOPMGR_DEVICE_INTERFACE,
                                  "SetCapacity", error, NULL, "a{sv}", 0);
}

int get_version(Env *e, sd_bus_error *error, char **ret) {
        return sd_bus_get_property_string(e->bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                          LOOPMGR_MANAGER_INTERFACE, "Version", error, ret);
}

/* --- Properties --- */

typedef struct PropInfo {
        const char *name;
        const char *signature;
        size_t offset;
} PropInfo;

#define PROP(n, s, f)                                                                              \
        { n, s, offsetof(DeviceProps, f) }
static const PropInfo prop_table[] = {
        PROP("Node", "s", node),
        PROP("Name", "s", name),
        PROP("DiskSeq", "t", diskseq),
        PROP("Major", "u", major),
        PROP("Minor", "u", minor),
        PROP("BackingFile", "s", backing_file),
        PROP("BackingDevice", "t", backing_device),
        PROP("BackingInode", "t", backing_inode),
        PROP("Offset", "t", offset),
        PROP("SizeLimit", "t", size_limit),
        PROP("Size", "t", size),
        PROP("ReadOnly", "b", read_only),
        PROP("Autoclear", "b", autoclear),
        PROP("PartScan", "b", partscan),
        PROP("DirectIO", "b", direct_io),
        PROP("SectorSize", "u", sector_size),
        PROP("Managed", "b", managed),
        PROP("OwnerUID", "u", owner_uid),
        PROP("References", "u", references),
        PROP("State", "s", state),
        PROP("Openers", "a(ss)", opener_kinds),
        PROP("Chain", "as", chain),
};
/* DEVICE_PROPS_ALL is one bit per entry; keep them in step. */
_Static_assert(ELEMENTSOF(prop_table) == 22, "prop_table and DeviceProps out of step");

void device_props_done(DeviceProps *p) {
        free(p->node);
        free(p->name);
        free(p->backing_file);
        free(p->state);
        strv_free(p->opener_kinds);
        strv_free(p->opener_descriptions);
        strv_free(p->chain);
        free(p->type_errors);
        *p = (DeviceProps){};
}

static int note_type_error(DeviceProps *p, const char *name, const char *got, const char *want) {
        char *s;
        if (asprintf(&s, "%s%s%s: got '%s', want '%s'", p->type_errors ?: "",
                     p->type_errors ? "; " : "", name, got, want) < 0)
                return -ENOMEM;
        free(p->type_errors);
        p->type_errors = s;
        return 0;
}

static int read_prop_value(sd_bus_message *m, const PropInfo *info, DeviceProps *p) {
        uint8_t *field = (uint8_t *) p + info->offset;
        int r;

        if (streq(info->signature, "s")) {
                const char *s;
                r = sd_bus_message_read_basic(m, 's', &s);
                if (r < 0)
                        return r;
                char *d = strdup(s);
                if (!d)
                        return -ENOMEM;
                free(*(char **) field);
                *(char **) field = d;
        } else if (streq(info->signature, "t")) {
                r = sd_bus_message_read_basic(m, 't', field);
        } else if (streq(info->signature, "u")) {
                r = sd_bus_message_read_basic(m, 'u', field);
        } else if (streq(info->signature, "b")) {
                int b;
                r = sd_bus_message_read_basic(m, 'b', &b);
                if (r >= 0)
                        *(bool *) field = b;
        } else if (streq(info->signature, "as")) {
                strv_free(p->chain);
                p->chain = NULL;
                p->n_chain = 0;
                r = sd_bus_message_enter_container(m, 'a', "s");
                if (r < 0)
                        return r;
                const char *s;
                while ((r = sd_bus_message_read_basic(m, 's', &s)) > 0) {
                        char *d = strdup(s);
                        if (!d || strv_push(&p->chain, &p->n_chain, d) < 0) {
                                free(d);
                                return -ENOMEM;
                        }
                }
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
        } else { /* a(ss) */
                size_t nk = 0, nd = 0;
                strv_free(p->opener_kinds);
                strv_free(p->opener_descriptions);
                p->opener_kinds = p->opener_descriptions = NULL;
                r = sd_bus_message_enter_container(m, 'a', "(ss)");
                if (r < 0)
                        return r;
                const char *k, *d;
                while ((r = sd_bus_message_read(m, "(ss)", &k, &d)) > 0) {
                        char *kk = strdup(k), *dd = strdup(d);
                        if (!kk || !dd || strv_push(&p->opener_kinds, &nk, kk) < 0) {
                                free(kk);
                                free(dd);
                                return -ENOMEM;
                        }
                        if (strv_push(&p->opener_descriptions, &nd, dd) < 0) {
                                free(dd);
                                return -ENOMEM;
                        }
                }
                if (r < 0)
                        return r;
                p->n_openers = nk;
                r = sd_bus_message_exit_container(m);
        }
        return r < 0 ? r : 0;
}

int device_props_read(sd_bus_message *m, DeviceProps *ret) {
        DeviceProps p = {};
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *name, *contents;
                const PropInfo *info = NULL;
                size_t idx = 0;
                char type;

                r = sd_bus_message_read_basic(m, 's', &name);
                if (r < 0)
                        goto fail;
                for (idx = 0; idx < ELEMENTSOF(prop_table); idx++)
                        if (streq(prop_table[idx].name, name)) {
                                info = &prop_table[idx];
                                break;
                        }
                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        goto fail;
                if (!info) {
                        r = sd_bus_message_skip(m, "v");
                } else if (!streq(contents, info->signature)) {
                        r = note_type_error(&p, name, contents, info->signature);
                        if (r >= 0)
                                r = sd_bus_message_skip(m, "v");
                } else {
                        r = sd_bus_message_enter_container(m, 'v', contents);
                        if (r >= 0)
                                r = read_prop_value(m, info, &p);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                        if (r >= 0)
                                p.present |= UINT32_C(1) << idx;
                }
                if (r < 0)
                        goto fail;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        goto fail;
        }
        if (r < 0)
                goto fail;
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                goto fail;
        *ret = p;
        return 0;
fail:
        device_props_done(&p);
        return r;
}

int device_props_get(Env *e, const char *object, sd_bus_error *error, DeviceProps *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, object, PROPERTIES_INTERFACE, "GetAll",
                               error, &reply, "s", LOOPMGR_DEVICE_INTERFACE);
        if (r < 0)
                return r;
        return device_props_read(reply, ret);
}

void daemon_devices_free(DaemonDevice *l, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(l[i].object);
                device_props_done(&l[i].props);
        }
        free(l);
}

int daemon_devices_list(Env *e, DaemonDevice **ret, size_t *ret_n) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        DaemonDevice *l = NULL;
        size_t n = 0;
        int r;

        r = sd_bus_call_method(e->bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                               OBJECT_MANAGER_INTERFACE, "GetManagedObjects", &error, &reply, "");
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}");
        if (r < 0)
                goto fail;
        while ((r = sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}")) > 0) {
                const char *object;
                DeviceProps props = {};
                bool is_device = false;

                r = sd_bus_message_read_basic(reply, 'o', &object);
                if (r < 0)
                        goto fail;
                r = sd_bus_message_enter_container(reply, 'a', "{sa{sv}}");
                if (r < 0)
                        goto fail;
                while ((r = sd_bus_message_enter_container(reply, 'e', "sa{sv}")) > 0) {
                        const char *iface;
                        r = sd_bus_message_read_basic(reply, 's', &iface);
                        if (r < 0)
                                goto fail;
                        if (streq(iface, LOOPMGR_DEVICE_INTERFACE) && !is_device) {
                                r = device_props_read(reply, &props);
                                is_device = r >= 0;
                        } else
                                r = sd_bus_message_skip(reply, "a{sv}");
                        if (r < 0)
                                goto fail;
                        r = sd_bus_message_exit_container(reply);
                        if (r < 0) {
                                device_props_done(&props);
                                goto fail;
                        }
                }
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r < 0) {
                        device_props_done(&props);
                        goto fail;
                }
                if (!is_device)
                        continue;
                char *o = strdup(object);
                if (!o || grow((void **) &l, &n, sizeof(DaemonDevice)) < 0) {
                        free(o);
                        device_props_done(&props);
                        r = -ENOMEM;
                        goto fail;
                }
                l[n++] = (DaemonDevice){.object = o, .props = props};
        }
        if (r < 0)
                goto fail;
        *ret = l;
        *ret_n = n;
        return 0;
fail:
        daemon_devices_free(l, n);
        return r;
}

/* --- Resolve --- */

void resolved_done(Resolved *r) {
        free(r->base_kind);
        strv_free(r->chain);
        strv_free(r->aliases);
        free(r->unexpected);
        *r = (Resolved){};
}

static int read_string_array(sd_bus_message *m, char type, char ***l, size_t *n) {
        const char *s;
        int r;

        r = sd_bus_message_enter_container(m, 'a', type == 'o' ? "o" : "s");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_read_basic(m, type, &s)) > 0) {
                char *d = strdup(s);
                if (!d || strv_push(l, n, d) < 0) {
                        free(d);
                        return -ENOMEM;
                }
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

static int read_resolved(sd_bus_message *m, Resolved *p) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *key, *contents;
                uint64_t *t = NULL;

                r = sd_bus_message_read_basic(m, 's', &key);
                if (r < 0)
                        return r;
                r = sd_bus_message_peek_type(m, NULL, &contents);
                if (r < 0)
                        return r;
                if (streq(key, "base-device"))
                        t = &p->base_device;
                else if (streq(key, "base-inode"))
                        t = &p->base_inode;
                else if (streq(key, "offset"))
                        t = &p->offset;
                else if (streq(key, "size"))
                        t = &p->size;

                if (t && streq(contents, "t"))
                        r = sd_bus_message_read(m, "v", "t", t);
                else if (streq(key, "base-kind") && streq(contents, "s")) {
                        const char *s;
                        r = sd_bus_message_read(m, "v", "s", &s);
                        if (r >= 0) {
                                free(p->base_kind);
                                p->base_kind = strdup(s);
                                if (!p->base_kind)
                                        r = -ENOMEM;
                        }
                } else if ((streq(key, "chain") && streq(contents, "as")) ||
                           (streq(key, "aliases") && streq(contents, "ao"))) {
                        bool chain = streq(key, "chain");
                        r = sd_bus_message_enter_container(m, 'v', contents);
                        if (r >= 0)
                                r = chain ? read_string_array(m, 's', &p->chain, &p->n_chain)
                                          : read_string_array(m, 'o', &p->aliases, &p->n_aliases);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                } else {
                        char *s;
                        if (asprintf(&s, "%s%s%s:%s", p->unexpected ?: "", p->unexpected ? " " : "",
                                     key, contents) < 0)
                                return -ENOMEM;
                        free(p->unexpected);
                        p->unexpected = s;
                        r = sd_bus_message_skip(m, "v");
                }
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

int call_resolve(Env *e, int fd, sd_bus_error *error, Resolved *ret, unsigned n_options, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        Resolved p = {};
        va_list ap;
        int r;

        r = sd_bus_message_new_method_call(e->bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Resolve");
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(m, 'h', &fd);
        if (r < 0)
                return r;
        va_start(ap, n_options);
        r = append_options(m, n_options, &ap);
        va_end(ap);
        if (r < 0)
                return r;
        r = sd_bus_call(e->bus, m, CALL_TIMEOUT_USEC, error, &reply);
        if (r < 0)
                return r;
        r = read_resolved(reply, &p);
        if (r < 0) {
                resolved_done(&p);
                return r;
        }
        *ret = p;
        return 0;
}

/* --- assertions --- */

void assert_bus_ok_impl(int r, const sd_bus_error *error, const char *what, const char *file,
                        int line) {
        if (r >= 0)
                return;
        print_error("%s:%d: %s failed: %s (%s)\n", file, line, what,
                    error && error->name ? error->name : strerror(-r),
                    error && error->message ? error->message : "no message");
        _fail(file, line);
}

void assert_bus_error_impl(int r, const sd_bus_error *error, const char *name, const char *file,
                           int line) {
        if (r >= 0) {
                print_error("%s:%d: expected error %s, but the call succeeded\n", file, line, name);
                _fail(file, line);
        }
        if (!sd_bus_error_has_name(error, name)) {
                print_error("%s:%d: expected error %s, got %s: %s (r=%s)\n", file, line, name,
                            error->name ?: "(none)", error->message ?: "(no message)",
                            strerror(-r));
                _fail(file, line);
        }
        if (!error->message || strlen(error->message) == 0) {
                print_error("%s:%d: error %s carries no message\n", file, line, name);
                _fail(file, line);
        }
}
