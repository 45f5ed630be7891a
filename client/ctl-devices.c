/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <linux/major.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <stdlib.h>
#include <string.h>

#include "ctl-common.h"
#include "ctl-devices.h"
#include "ctl-util.h"
#include "loopmgr-bus.h"

static void partition_info_done(PartitionInfo *p) {
        free(p->node);
        free(p->id_type);
        free(p->id_label);
        free(p->id_uuid);
        free(p->mount_point);
        *p = (PartitionInfo){};
}

static void partitions_free(PartitionInfo *l, size_t n) {
        for (size_t i = 0; i < n; i++)
                partition_info_done(l + i);
        free(l);
}

void device_info_done(DeviceInfo *d) {
        free(d->object);
        free(d->name);
        free(d->node);
        free(d->backing_file);
        free(d->state);
        free(d->creator);
        free(d->mount_point);
        free(d->id_type);
        free(d->id_label);
        free(d->id_uuid);
        strv_free(d->aliases);
        strv_free(d->openers);
        strv_free(d->chain);
        partitions_free(d->partitions, d->n_partitions);
        free(d->base_kind);
        *d = (DeviceInfo){};
}

/* Openers (a(ss)) as "KIND WHAT" lines. */
static int read_openers(sd_bus_message *m, char ***field) {
        _cleanup_strv_free_ char **l = NULL;
        const char *kind, *what;
        size_t n = 0;
        int r;

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, "a(ss)");
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "(ss)");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_read(m, "(ss)", &kind, &what)) > 0) {
                char **c = reallocarray(l, n + 2, sizeof(char *));

                if (!c)
                        return -ENOMEM;
                l = c;
                if (asprintf(&l[n], "%s %s", kind, what) < 0) {
                        l[n] = NULL;
                        return -ENOMEM;
                }
                l[++n] = NULL;
        }
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(m);
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        strv_free(*field);
        *field = TAKE_PTR(l);
        return 0;
}

static int partition_compare(const void *a, const void *b) {
        const PartitionInfo *x = a, *y = b;

        return x->number < y->number ? -1 : x->number > y->number;
}

/* Partitions (a(usttssssu)) into d->partitions, sorted by number (the daemon sends them so;
 * open mounts them in this order). */
static int read_partitions(sd_bus_message *m, DeviceInfo *d) {
        PartitionInfo *l = NULL;
        size_t n = 0;
        int r;

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT,
                                           LOOPMGR_DEVICE_PARTITIONS_SIGNATURE);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY,
                                           LOOPMGR_DEVICE_PARTITIONS_SIGNATURE + 1);
        if (r < 0)
                return r;
        for (;;) {
                const char *node, *type, *label, *uuid, *mount_point;
                PartitionInfo p = {}, *c;

                r = sd_bus_message_read(m, "(usttssssu)", &p.number, &node, &p.offset, &p.size,
                                        &type, &label, &uuid, &mount_point, &p.mount_user);
                if (r <= 0)
                        break;
                c = reallocarray(l, n + 1, sizeof(PartitionInfo));
                if (!c) {
                        r = -ENOMEM;
                        break;
                }
                l = c;
                p.node = strdup(node);
                p.id_type = strdup(type);
                p.id_label = strdup(label);
                p.id_uuid = strdup(uuid);
                p.mount_point = strdup(mount_point);
                l[n++] = p;
                if (!p.node || !p.id_type || !p.id_label || !p.id_uuid || !p.mount_point) {
                        r = -ENOMEM;
                        break;
                }
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r < 0) {
                partitions_free(l, n);
                return r;
        }

        if (n > 1)
                qsort(l, n, sizeof(PartitionInfo), partition_compare);
        partitions_free(d->partitions, d->n_partitions);
        d->partitions = l;
        d->n_partitions = n;
        d->present |= PRESENT_PARTITIONS;
        return 0;
}

int bus_read_properties(sd_bus_message *m, bus_property_func_t f, void *userdata) {
        int r;

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, SD_BUS_TYPE_DICT_ENTRY, "sv")) > 0) {
                const char *key, *contents;
                char type;

                r = sd_bus_message_read_basic(m, 's', &key);
                if (r >= 0)
                        r = sd_bus_message_peek_type(m, &type, &contents);
                if (r >= 0)
                        r = f(m, key, contents, userdata);
                if (r == 0)
                        r = sd_bus_message_skip(m, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

int bus_read_variant_strv(sd_bus_message *m, const char *contents, char ***field) {
        _cleanup_strv_free_ char **l = NULL;
        int r;

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, contents);
        if (r >= 0)
                r = sd_bus_message_read_strv(m, &l);
        if (r >= 0)
                r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        strv_free(*field);
        *field = TAKE_PTR(l);
        return 0;
}

/* The Device properties DeviceInfo keeps, by name and D-Bus type. */
/* clang-format off */
static const struct {
        const char *name;
        char type;
        size_t offset;
        unsigned present;
} device_properties[] = {
        { "Name",        's', offsetof(DeviceInfo, name)         },
        { "Node",        's', offsetof(DeviceInfo, node)         },
        { "BackingFile", 's', offsetof(DeviceInfo, backing_file) },
        { "State",       's', offsetof(DeviceInfo, state)        },
        { "Creator",     's', offsetof(DeviceInfo, creator)      },
        { "MountPoint",  's', offsetof(DeviceInfo, mount_point)  },
        { "IdType",      's', offsetof(DeviceInfo, id_type)      },
        { "IdLabel",     's', offsetof(DeviceInfo, id_label)     },
        { "IdUUID",      's', offsetof(DeviceInfo, id_uuid)      },
        { "MountUser",   'u', offsetof(DeviceInfo, mount_user),  PRESENT_MOUNT_USER },
        { "DiskSeq",     't', offsetof(DeviceInfo, diskseq)      },
        { "Size",        't', offsetof(DeviceInfo, size)         },
        { "Offset",      't', offsetof(DeviceInfo, offset)       },
        { "SizeLimit",   't', offsetof(DeviceInfo, size_limit)   },
        { "SectorSize",  'u', offsetof(DeviceInfo, sector_size)  },
        { "OwnerUID",    'u', offsetof(DeviceInfo, owner_uid),   PRESENT_OWNER_UID  },
        { "References",  'u', offsetof(DeviceInfo, references)   },
        { "ReadOnly",    'b', offsetof(DeviceInfo, read_only)    },
        { "DirectIO",    'b', offsetof(DeviceInfo, direct_io)    },
        { "Managed",     'b', offsetof(DeviceInfo, managed)      },
        { "Autoclear",   'b', offsetof(DeviceInfo, autoclear)    },
        { "PartScan",    'b', offsetof(DeviceInfo, partscan)     },
        { "Major",       'u', offsetof(DeviceInfo, major)        },
        { "Minor",       'u', offsetof(DeviceInfo, minor)        },
        { "BackingDevice", 't', offsetof(DeviceInfo, backing_device) },
        { "BackingInode",  't', offsetof(DeviceInfo, backing_inode)  },
        { "BaseKind",    's', offsetof(DeviceInfo, base_kind)    },
        { "BaseDevice",  't', offsetof(DeviceInfo, base_device),  PRESENT_BASE_DEVICE },
        { "BaseInode",   't', offsetof(DeviceInfo, base_inode),   PRESENT_BASE_INODE  },
        { "BaseOffset",  't', offsetof(DeviceInfo, base_offset),  PRESENT_BASE_OFFSET },
        { "BaseSize",    't', offsetof(DeviceInfo, base_size),    PRESENT_BASE_SIZE   },
};
/* clang-format on */

/* One Device property into the DeviceInfo at userdata; 0 for what it does not keep. */
static int device_property(sd_bus_message *m, const char *key, const char *contents,
                           void *userdata) {
        DeviceInfo *d = userdata;
        int r;

        if ((streq(key, "Aliases") && streq(contents, "ao")) ||
            (streq(key, "Chain") && streq(contents, "as"))) {
                char ***field = streq(key, "Aliases") ? &d->aliases : &d->chain;

                r = bus_read_variant_strv(m, contents, field);
                if (r < 0)
                        return r;
                if (field == &d->aliases)
                        d->n_aliases = (uint32_t) strv_length(d->aliases);
                return 1;
        }
        if (streq(key, "Openers") && streq(contents, "a(ss)")) {
                r = read_openers(m, &d->openers);
                return r < 0 ? r : 1;
        }
        if (streq(key, "Partitions") && streq(contents, LOOPMGR_DEVICE_PARTITIONS_SIGNATURE)) {
                r = read_partitions(m, d);
                return r < 0 ? r : 1;
        }

        for (size_t i = 0; i < ELEMENTSOF(device_properties); i++) {
                void *field = (uint8_t *) d + device_properties[i].offset;
                const char *s;

                if (!streq(key, device_properties[i].name) ||
                    contents[0] != device_properties[i].type || contents[1] != '\0')
                        continue;

                r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, contents);
                if (r < 0)
                        return r;
                if (device_properties[i].type == 's') {
                        r = sd_bus_message_read_basic(m, 's', &s);
                        if (r < 0)
                                return r;
                        free(*(char **) field);
                        *(char **) field = strdup(s);
                        if (!*(char **) field)
                                return -ENOMEM;
                } else {
                        r = sd_bus_message_read_basic(m, device_properties[i].type, field);
                        if (r < 0)
                                return r;
                }
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
                d->present |= device_properties[i].present;
                return 1;
        }
        return 0;
}

/* Unknown properties and properties with an unexpected type are skipped: a newer daemon may add
 * or change some, and the table view should still work. */
int device_info_read(sd_bus_message *m, DeviceInfo *d) {
        return bus_read_properties(m, device_property, d);
}

static int device_info_compare(const void *a, const void *b) {
        const DeviceInfo *x = a, *y = b;
        int c;

        /* strverscmp() orders loop2 before loop10. */
        c = strverscmp(strempty(x->name), strempty(y->name));
        if (c != 0)
                return c;
        return strcmp(x->object, y->object);
}

void device_list_done(DeviceList *l) {
        for (size_t i = 0; i < l->n; i++)
                device_info_done(l->items + i);
        free(l->items);
        *l = (DeviceList){};
}

int device_interfaces_read(sd_bus_message *m, const char *object, DeviceInfo *ret) {
        _cleanup_(device_info_done) DeviceInfo d = {};
        bool is_device = false;
        int r;

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "{sa{sv}}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, SD_BUS_TYPE_DICT_ENTRY, "sa{sv}")) > 0) {
                const char *interface;

                r = sd_bus_message_read_basic(m, 's', &interface);
                if (r < 0)
                        return r;
                if (streq(interface, LOOPMGR_DEVICE_INTERFACE) && !is_device) {
                        is_device = true;
                        r = device_info_read(m, &d);
                } else
                        r = sd_bus_message_skip(m, "a{sv}");
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        if (!is_device)
                return 0;

        d.object = strdup(object);
        if (!d.object)
                return -ENOMEM;
        *ret = d;
        d = (DeviceInfo){};
        return 1;
}

int device_list_parse(sd_bus_message *reply, DeviceList *ret) {
        _cleanup_(device_list_done) DeviceList list = {};
        int r;

        r = sd_bus_message_enter_container(reply, SD_BUS_TYPE_ARRAY, "{oa{sa{sv}}}");
        if (r < 0)
                return r;

        while ((r = sd_bus_message_enter_container(reply, SD_BUS_TYPE_DICT_ENTRY, "oa{sa{sv}}")) >
               0) {
                DeviceInfo *items;
                const char *object;

                r = sd_bus_message_read_basic(reply, 'o', &object);
                if (r < 0)
                        return r;

                items = reallocarray(list.items, list.n + 1, sizeof(DeviceInfo));
                if (!items)
                        return -ENOMEM;
                list.items = items;
                r = device_interfaces_read(reply, object, list.items + list.n);
                if (r < 0)
                        return r;
                if (r > 0)
                        list.n++;

                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;

        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                return r;

        if (list.n > 1)
                qsort(list.items, list.n, sizeof(DeviceInfo), device_info_compare);

        *ret = list;
        list = (DeviceList){};
        return 0;
}

int device_list_get(sd_bus *bus, sd_bus_error *error, DeviceList *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_call_method(bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                               OBJECT_MANAGER_INTERFACE, "GetManagedObjects", error, &reply, NULL);
        if (r < 0)
                return r;
        return device_list_parse(reply, ret);
}

int device_info_get(sd_bus *bus, const char *object, sd_bus_error *error, DeviceInfo *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        int r;

        r = sd_bus_call_method(bus, LOOPMGR_BUS_NAME, object, PROPERTIES_INTERFACE, "GetAll", error,
                               &reply, "s", LOOPMGR_DEVICE_INTERFACE);
        if (r < 0)
                return r;
        r = device_info_read(reply, &d);
        if (r < 0)
                return r;
        d.object = strdup(object);
        if (!d.object)
                return -ENOMEM;
        *ret = d;
        d = (DeviceInfo){};
        return 0;
}

bool path_is_loop_node(const char *path, dev_t *ret_devnum) {
        struct stat st;

        if (!path || stat(path, &st) < 0 || !S_ISBLK(st.st_mode) || major(st.st_rdev) != LOOP_MAJOR)
                return false;
        if (ret_devnum)
                *ret_devnum = st.st_rdev;
        return true;
}

/* ---- formatting for people ---- */

/* "file 254:0 ino 403312", "block 8:0"; "-" for a daemon that does not say. */
const char *format_base(const char *kind, uint64_t device, uint64_t inode, bool has_inode,
                        char buf[static FORMAT_BASE_MAX]) {
        if (!kind || !kind[0])
                return "-";
        if (streq(kind, "file") && has_inode)
                snprintf(buf, FORMAT_BASE_MAX, "file %u:%u ino %" PRIu64, major((dev_t) device),
                         minor((dev_t) device), inode);
        else
                snprintf(buf, FORMAT_BASE_MAX, "%s %u:%u", kind, major((dev_t) device),
                         minor((dev_t) device));
        return buf;
}

/* "OFFSET+LENGTH" in exact bytes. */
const char *format_range(uint64_t offset, uint64_t size, char buf[static 48]) {
        snprintf(buf, 48, "%" PRIu64 "+%" PRIu64, offset, size);
        return buf;
}

const char *device_info_base(const DeviceInfo *d, char buf[static FORMAT_BASE_MAX]) {
        if (!(d->present & PRESENT_BASE_DEVICE))
                return "-";
        return format_base(d->base_kind, d->base_device, d->base_inode,
                           d->present & PRESENT_BASE_INODE, buf);
}

const char *device_info_range(const DeviceInfo *d, char buf[static 48]) {
        if ((d->present & (PRESENT_BASE_OFFSET | PRESENT_BASE_SIZE)) !=
            (PRESENT_BASE_OFFSET | PRESENT_BASE_SIZE))
                return "-";
        return format_range(d->base_offset, d->base_size, buf);
}

const char *device_display_name(const DeviceInfo *d) {
        if (d->name && d->name[0])
                return d->name;
        if (d->node && d->node[0])
                return d->node;
        return d->object;
}

bool device_info_is_mounted(const DeviceInfo *d) {
        if (d->mount_point && d->mount_point[0])
                return true;
        for (size_t i = 0; i < d->n_partitions; i++)
                if (d->partitions[i].mount_point[0])
                        return true;
        return false;
}

const PartitionInfo *device_info_partition_by_mount_point(const DeviceInfo *d, const char *dir) {
        for (size_t i = 0; i < d->n_partitions; i++)
                if (d->partitions[i].mount_point[0] && streq(d->partitions[i].mount_point, dir))
                        return d->partitions + i;
        return NULL;
}
