/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <stdio.h>
#include <sys/sysmacros.h>

#include "bus-util.h"
#include "device-bus.h"
#include "log.h"
#include "loopmgr-bus.h"
#include "manager.h"
#include "polkit.h"

#define DEFINE_GETTER(name, type, expr)                                                        \
        static int property_get_##name(sd_bus *bus, const char *path, const char *interface,  \
                                       const char *property, sd_bus_message *reply,           \
                                       void *userdata, sd_bus_error *error) {                 \
                Device *d = userdata;                                                          \
                return sd_bus_message_append(reply, type, expr);                               \
        }

DEFINE_GETTER(node, "s", d->node);
DEFINE_GETTER(name, "s", d->status.name);
DEFINE_GETTER(diskseq, "t", d->status.diskseq);
DEFINE_GETTER(major, "u", (uint32_t) major(d->status.devnum));
DEFINE_GETTER(minor, "u", (uint32_t) minor(d->status.devnum));
DEFINE_GETTER(backing_file, "s", d->status.backing_file ?: "");
DEFINE_GETTER(backing_device, "t",
              (uint64_t) (d->backing_is_block ? d->status.backing_rdevice : d->status.backing_device));
DEFINE_GETTER(backing_inode, "t", d->backing_is_block ? (uint64_t) 0 : d->status.backing_inode);
DEFINE_GETTER(offset, "t", d->status.offset);
DEFINE_GETTER(size_limit, "t", d->status.size_limit);
DEFINE_GETTER(size, "t", d->status.size);
DEFINE_GETTER(read_only, "b", (int) d->status.read_only);
DEFINE_GETTER(autoclear, "b", (int) d->status.autoclear);
DEFINE_GETTER(partscan, "b", (int) d->status.partscan);
DEFINE_GETTER(direct_io, "b", (int) d->status.direct_io);
DEFINE_GETTER(sector_size, "u", d->status.sector_size);
DEFINE_GETTER(managed, "b", (int) d->managed);
DEFINE_GETTER(owner_uid, "u", (uint32_t) d->owner_uid);
DEFINE_GETTER(references, "u", d->n_references);
DEFINE_GETTER(state, "s", device_state_to_string(d->state));
DEFINE_GETTER(base_kind, "s",
              !d->has_identity ? "" : d->identity.kind == BASE_FILE ? "file" : "block");
DEFINE_GETTER(base_device, "t", d->has_identity ? (uint64_t) d->identity.base_device : 0);
DEFINE_GETTER(base_inode, "t", d->has_identity ? d->identity.base_inode : 0);
DEFINE_GETTER(base_offset, "t", d->has_identity ? d->identity.offset : 0);
DEFINE_GETTER(base_size, "t", d->has_identity ? d->identity.size : 0);

static int property_get_openers(sd_bus *bus, const char *path, const char *interface,
                                const char *property, sd_bus_message *reply, void *userdata,
                                sd_bus_error *error) {
        _cleanup_strv_free_ char **pairs = NULL;
        Device *d = userdata;
        int r;

        uint64_t iteration = 0;

        /* Fresh on read (a mount in another namespace raises no event), except within the
         * event-loop iteration that computed them; the result becomes the baseline for
         * change signals. */
        (void) sd_event_get_iteration(d->manager->event, &iteration);
        if (d->openers && d->openers_iteration == iteration && iteration != 0)
                pairs = strv_copy(d->openers);
        else {
                r = device_openers(d, NULL, &pairs);
                if (r < 0)
                        return r;
                strv_free(d->openers);
                d->openers = strv_copy(pairs);
                d->openers_iteration = iteration;
        }
        if (!pairs)
                return -ENOMEM;
        r = sd_bus_message_open_container(reply, 'a', "(ss)");
        if (r < 0)
                return r;
        for (char **i = pairs; i[0] && i[1]; i += 2) {
                r = sd_bus_message_append(reply, "(ss)", i[0], i[1]);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static int property_get_chain(sd_bus *bus, const char *path, const char *interface,
                              const char *property, sd_bus_message *reply, void *userdata,
                              sd_bus_error *error) {
        _cleanup_strv_free_ char **chain = NULL;
        int r;

        r = device_chain(userdata, &chain);
        if (r < 0)
                return r;
        return sd_bus_message_append_strv(reply, chain);
}

/* Does a recursive detach of d reach a device (stacked on d, at any depth) that uid holds no
 * reference on? Mirrors what the manager's recursive detach tears down. */
static bool stacked_beyond(Manager *m, Device *d, uid_t uid, unsigned depth) {
        if (depth > CHAIN_MAX_DEPTH)
                return true;
        for (size_t i = 0; i < m->n_slots; i++) {
                Device *e = m->devices[i];

                if (!e || e == d || !e->backing_is_block ||
                    e->status.backing_rdevice != d->status.devnum)
                        continue;
                if (!device_has_reference_of(e, uid) || stacked_beyond(m, e, uid, depth + 1))
                        return true;
        }
        return false;
}

int device_bus_authorize_change(Device *d, sd_bus_message *message, DeviceChange change,
                                bool all_references, bool recursive, bool no_user_interaction,
                                uid_t *ret_uid, sd_bus_error *error) {
        _cleanup_free_ char *what = NULL;
        char owner[12];
        const char *operation;
        uid_t uid = (uid_t) -1;
        int r;

        r = bus_sender_uid_or_deny(message, &uid, error);
        if (r < 0)
                return r;
        *ret_uid = uid;
        if (uid == 0)
                return 1;

        if (!all_references && device_has_reference_of(d, uid) &&
            !(recursive && stacked_beyond(d->manager, d, uid, 1)))
                return 1;

        switch (change) {
        case DEVICE_CHANGE_DETACH:
                operation = "detach";
                if (all_references)
                        r = asprintf(&what, "drop every reference on %s and detach it", d->node);
                else if (device_has_reference_of(d, uid))
                        r = asprintf(&what, "detach the loop devices stacked on %s, which other "
                                     "users or programs hold", d->node);
                else
                        r = asprintf(&what, "detach %s, which another user or program set up",
                                     d->node);
                break;
        case DEVICE_CHANGE_AUTOCLEAR:
                operation = "set-autoclear";
                r = asprintf(&what, "change the autoclear flag of %s, which another user or "
                             "program set up", d->node);
                break;
        case DEVICE_CHANGE_CAPACITY:
        default:
                operation = "set-capacity";
                r = asprintf(&what, "update the size of %s, which another user or program set up",
                             d->node);
                break;
        }
        if (r < 0)
                return bus_error_set_errnof(error, -ENOMEM, "Out of memory.");
        (void) snprintf(owner, sizeof(owner), "%u", (unsigned) d->owner_uid);

        return polkit_verify_async(d->manager->polkit, message, uid, POLKIT_ACTION_DETACH_OTHERS,
                                   what,
                                   (char *[]) {
                                           "device", d->node,
                                           "file", d->status.backing_file ?: "",
                                           "owner-uid", owner,
                                           "managed", d->managed ? "true" : "false",
                                           "operation", (char *) operation,
                                           NULL,
                                   },
                                   no_user_interaction, error);
}

static int method_detach(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        DetachOptions o;
        uid_t uid = (uid_t) -1;
        int r;

        r = detach_options_parse(message, &o, error);
        if (r < 0)
                return r;
        r = device_bus_authorize_change(d, message, DEVICE_CHANGE_DETACH, o.all_references,
                                        o.recursive, o.no_user_interaction, &uid, error);
        if (r <= 0)
                return r < 0 ? r : 1;   /* 0: polkit was asked; we run again when it answers */
        return manager_detach(d->manager, message, d, &o, uid, error);
}

static int method_set_autoclear(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        CommonOptions o;
        uid_t uid = (uid_t) -1;
        int value, r;

        r = sd_bus_message_read(message, "b", &value);
        if (r < 0)
                return r;
        r = common_options_parse(message, &o, error);
        if (r < 0)
                return r;
        if (d->state != DEVICE_ATTACHED)
                return sd_bus_error_setf(error, LOOPMGR_ERROR_BUSY,
                                         "%s is being torn down.", d->node);
        r = device_bus_authorize_change(d, message, DEVICE_CHANGE_AUTOCLEAR, false, false,
                                        o.no_user_interaction, &uid, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = loop_set_autoclear(d->manager->root, d->status.name, d->status.diskseq, value);
        if (r < 0)
                return bus_error_set_errnof(error, r == -ESTALE ? -ENODEV : r,
                                            "Failed to set autoclear on %s: %m.", d->node);

        /* With nothing holding it open, the kernel clears the device right away on 6.11+;
         * reconcile reads either outcome and emits the matching signals. */
        (void) manager_reconcile(d->manager, d->status.name);
        return sd_bus_reply_method_return(message, NULL);
}

static int method_set_capacity(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        CommonOptions o;
        uid_t uid = (uid_t) -1;
        int r;

        r = common_options_parse(message, &o, error);
        if (r < 0)
                return r;
        r = device_bus_authorize_change(d, message, DEVICE_CHANGE_CAPACITY, false, false,
                                        o.no_user_interaction, &uid, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = loop_set_capacity(d->manager->root, d->status.name, d->status.diskseq);
        if (r < 0)
                return bus_error_set_errnof(error, r == -ESTALE ? -ENODEV : r,
                                            "Failed to update the capacity of %s: %m.", d->node);

        (void) manager_reconcile(d->manager, d->status.name);
        return sd_bus_reply_method_return(message, NULL);
}

#define PROP(name, sig, getter) \
        SD_BUS_PROPERTY(name, sig, property_get_##getter, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE)
#define PROP_CONST(name, sig, getter) \
        SD_BUS_PROPERTY(name, sig, property_get_##getter, 0, SD_BUS_VTABLE_PROPERTY_CONST)

static const sd_bus_vtable device_vtable[] = {
        SD_BUS_VTABLE_START(0),
        PROP_CONST("Node", "s", node),
        PROP_CONST("Name", "s", name),
        PROP_CONST("DiskSeq", "t", diskseq),
        PROP_CONST("Major", "u", major),
        PROP_CONST("Minor", "u", minor),
        PROP("BackingFile", "s", backing_file),
        PROP_CONST("BackingDevice", "t", backing_device),
        PROP_CONST("BackingInode", "t", backing_inode),
        PROP("Offset", "t", offset),
        PROP("SizeLimit", "t", size_limit),
        PROP("Size", "t", size),
        PROP("ReadOnly", "b", read_only),
        PROP("Autoclear", "b", autoclear),
        PROP("PartScan", "b", partscan),
        PROP("DirectIO", "b", direct_io),
        PROP("SectorSize", "u", sector_size),
        PROP_CONST("Managed", "b", managed),
        PROP("OwnerUID", "u", owner_uid),
        PROP("References", "u", references),
        PROP("State", "s", state),
        PROP("Openers", "a(ss)", openers),
        PROP("Chain", "as", chain),
        /* Not in SPEC §5: the canonical range, so clients need not parse Chain. */
        PROP("BaseKind", "s", base_kind),
        PROP("BaseDevice", "t", base_device),
        PROP("BaseInode", "t", base_inode),
        PROP("BaseOffset", "t", base_offset),
        PROP("BaseSize", "t", base_size),
        SD_BUS_METHOD_WITH_ARGS("Detach", SD_BUS_ARGS("a{sv}", options),
                                SD_BUS_RESULT("s", state), method_detach,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetAutoclear", SD_BUS_ARGS("b", value, "a{sv}", options),
                                SD_BUS_NO_RESULT, method_set_autoclear,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetCapacity", SD_BUS_ARGS("a{sv}", options),
                                SD_BUS_NO_RESULT, method_set_capacity,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END
};

static int device_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                       void **found, sd_bus_error *error) {
        Device *d = manager_get_device_by_path(userdata, path);

        if (!d)
                return 0;
        *found = d;
        return 1;
}

static int device_enumerate(sd_bus *bus, const char *path, void *userdata, char ***nodes,
                            sd_bus_error *error) {
        Manager *m = userdata;
        char **l;
        size_t n = 0;

        l = calloc(m->n_devices + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < m->n_slots && n < m->n_devices; i++) {
                if (!m->devices[i])
                        continue;
                l[n] = strdup(m->devices[i]->path);
                if (!l[n]) {
                        strv_free(l);
                        return -ENOMEM;
                }
                n++;
        }
        *nodes = l;
        return 0;
}

int device_bus_register(Manager *m) {
        int r;

        r = sd_bus_add_fallback_vtable(m->bus, NULL, LOOPMGR_DEVICE_PATH_PREFIX,
                                       LOOPMGR_DEVICE_INTERFACE, device_vtable, device_find, m);
        if (r < 0)
                return r;
        return sd_bus_add_node_enumerator(m->bus, NULL, LOOPMGR_DEVICE_PATH_PREFIX,
                                          device_enumerate, m);
}
