/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/sysmacros.h>
#include <stdlib.h>
#include <string.h>

#include "ctl-common.h"
#include "ctl-devices.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "loopmgr-bus.h"

void device_info_done(DeviceInfo *d) {
        free(d->object);
        free(d->name);
        free(d->node);
        free(d->backing_file);
        free(d->state);
        free(d->creator);
        free(d->base_kind);
        free(d->json);
        *d = (DeviceInfo){};
}

/* Reads an a{sv} of Device properties into *d. Unknown properties and properties with an
 * unexpected type are skipped: a newer daemon may add or change some, and the table view
 * should still work. */
int device_info_read(sd_bus_message *m, DeviceInfo *d) {
        /* clang-format off */
        static const struct {
                const char *name;
                char type;
                size_t offset;
                unsigned present;
        } map[] = {
                { "Name",        's', offsetof(DeviceInfo, name)         },
                { "Node",        's', offsetof(DeviceInfo, node)         },
                { "BackingFile", 's', offsetof(DeviceInfo, backing_file) },
                { "State",       's', offsetof(DeviceInfo, state)        },
                { "Creator",     's', offsetof(DeviceInfo, creator)      },
                { "DiskSeq",     't', offsetof(DeviceInfo, diskseq)      },
                { "Size",        't', offsetof(DeviceInfo, size)         },
                { "Offset",      't', offsetof(DeviceInfo, offset)       },
                { "SizeLimit",   't', offsetof(DeviceInfo, size_limit)   },
                { "SectorSize",  'u', offsetof(DeviceInfo, sector_size)  },
                { "OwnerUID",    'u', offsetof(DeviceInfo, owner_uid)    },
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
        int r;

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r < 0)
                return r;

        while ((r = sd_bus_message_enter_container(m, SD_BUS_TYPE_DICT_ENTRY, "sv")) > 0) {
                const char *key, *contents;
                bool done = false;
                char type;

                r = sd_bus_message_read_basic(m, 's', &key);
                if (r < 0)
                        return r;
                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        return r;

                /* Aliases (ao): how many; `loopmgrctl status` shows the paths. */
                if (streq(key, "Aliases") && streq(contents, "ao")) {
                        const char *o;

                        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, "ao");
                        if (r >= 0)
                                r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "o");
                        while (r >= 0 && (r = sd_bus_message_read_basic(m, 'o', &o)) > 0)
                                d->n_aliases++;
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                        done = true;
                }

                for (size_t i = 0; i < ELEMENTSOF(map) && !done; i++) {
                        void *field = (uint8_t *) d + map[i].offset;
                        const char *s;

                        if (!streq(key, map[i].name) || contents[0] != map[i].type ||
                            contents[1] != '\0')
                                continue;

                        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, contents);
                        if (r < 0)
                                return r;
                        if (map[i].type == 's') {
                                r = sd_bus_message_read_basic(m, 's', &s);
                                if (r < 0)
                                        return r;
                                free(*(char **) field);
                                *(char **) field = strdup(s);
                                if (!*(char **) field)
                                        return -ENOMEM;
                        } else {
                                r = sd_bus_message_read_basic(m, map[i].type, field);
                                if (r < 0)
                                        return r;
                        }
                        r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                        d->present |= map[i].present;
                        done = true;
                }
                if (!done) {
                        r = sd_bus_message_skip(m, "v");
                        if (r < 0)
                                return r;
                }

                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;

        return sd_bus_message_exit_container(m);
}

/* Reads one a{sv} of Device properties belonging to object: the JSON text of all of them
 * (with the object path added as "ObjectPath") when json is set, and the known ones into *d.
 * The dictionary is read twice; the caller must have entered a container around it, which
 * sd_bus_message_rewind(m, false) returns to, and skip_before names what precedes the
 * dictionary in that container. */
static int device_info_read_with_json(sd_bus_message *m, const char *object, bool json,
                                      const char *skip_before, DeviceInfo *d) {
        int r;

        if (json) {
                _cleanup_free_ char *buf = NULL;
                bool first = false;
                size_t size = 0;
                FILE *f;

                f = open_memstream(&buf, &size);
                if (!f)
                        return -ENOMEM;
                fputs("{\"ObjectPath\":", f);
                json_write_string(f, object);
                r = json_write_dict_members(m, f, &first);
                fputc('}', f);
                if (fclose(f) != 0)
                        return -ENOMEM;
                if (r < 0)
                        return r;

                r = sd_bus_message_rewind(m, false);
                if (r < 0)
                        return r;
                if (skip_before) {
                        r = sd_bus_message_skip(m, skip_before);
                        if (r < 0)
                                return r;
                }
                d->json = TAKE_PTR(buf);
        }

        d->object = strdup(object);
        if (!d->object)
                return -ENOMEM;

        return device_info_read(m, d);
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

/* Parses a GetManagedObjects reply into the Device objects it lists, sorted by name.
 * Returns 0 or a negative errno. */
int device_list_parse(sd_bus_message *reply, bool json, DeviceList *ret) {
        _cleanup_(device_list_done) DeviceList list = {};
        int r;

        r = sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}");
        if (r < 0)
                return r;

        while ((r = sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}")) > 0) {
                const char *object;

                r = sd_bus_message_read(reply, "o", &object);
                if (r < 0)
                        return r;

                r = sd_bus_message_enter_container(reply, 'a', "{sa{sv}}");
                if (r < 0)
                        return r;

                while ((r = sd_bus_message_enter_container(reply, 'e', "sa{sv}")) > 0) {
                        const char *interface;
                        DeviceInfo *items;

                        r = sd_bus_message_read(reply, "s", &interface);
                        if (r < 0)
                                return r;

                        if (streq(interface, LOOPMGR_DEVICE_INTERFACE)) {
                                items = reallocarray(list.items, list.n + 1, sizeof(DeviceInfo));
                                if (!items)
                                        return -ENOMEM;
                                list.items = items;
                                list.items[list.n++] = (DeviceInfo){};

                                r = device_info_read_with_json(reply, object, json, "s",
                                                               list.items + list.n - 1);
                        } else
                                r = sd_bus_message_skip(reply, "a{sv}");
                        if (r < 0)
                                return r;

                        r = sd_bus_message_exit_container(reply);
                        if (r < 0)
                                return r;
                }
                if (r < 0)
                        return r;

                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        return r;
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

int call_get_managed_objects(sd_bus *bus, sd_bus_error *error, sd_bus_message **ret) {
        return sd_bus_call_method(bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                  OBJECT_MANAGER_INTERFACE, "GetManagedObjects", error, ret, NULL);
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
