/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * loopmgrctl list and status.
 */

#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "ctl-agent.h"
#include "ctl-common.h"
#include "ctl-devices.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "loopmgr-bus.h"

/* ---- list -------------------------------------------------------------------------------- */

int verb_list(sd_bus *bus, char **args) {
        static const char *const headers[] = {
                "NAME",  "SIZE",   "OFFSET",  "SIZELIMIT", "RO",
                "DIO",   "SECTOR", "MANAGED", "OWNER",     "REFS",
                "STATE", "BASE",   "RANGE",   "CREATOR",   "BACKING-FILE",
        };
        static const TableAlign align[] = {
                TABLE_ALIGN_LEFT,  TABLE_ALIGN_RIGHT, TABLE_ALIGN_RIGHT, TABLE_ALIGN_RIGHT,
                TABLE_ALIGN_RIGHT, TABLE_ALIGN_RIGHT, TABLE_ALIGN_RIGHT, TABLE_ALIGN_RIGHT,
                TABLE_ALIGN_LEFT,  TABLE_ALIGN_RIGHT, TABLE_ALIGN_LEFT,  TABLE_ALIGN_LEFT,
                TABLE_ALIGN_LEFT,  TABLE_ALIGN_LEFT,  TABLE_ALIGN_LEFT,
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_list_done) DeviceList list = {};
        _cleanup_(table_freep) Table *table = NULL;
        size_t n_aliased = 0;
        int r;

        r = call_get_managed_objects(bus, &error, &reply);
        if (r < 0)
                return log_bus_error(&error, r, "GetManagedObjects");

        r = device_list_parse(reply, arg_json, &list);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0)
                return log_parse_error(r);

        if (arg_json) {
                fputc('[', stdout);
                for (size_t i = 0; i < list.n; i++) {
                        if (i > 0)
                                fputc(',', stdout);
                        fputs(list.items[i].json, stdout);
                }
                fputs("]\n", stdout);
                return flush_stdout();
        }

        table = table_new(ELEMENTSOF(headers), headers, align);
        if (!table)
                return log_oom();

        for (size_t i = 0; i < list.n; i++) {
                const DeviceInfo *d = list.items + i;
                char size[FORMAT_SIZE_MAX], offset[32], limit[32], sector[16], owner[64], refs[16],
                        base[FORMAT_BASE_MAX], range[48], name[80];
                const char *cells[ELEMENTSOF(headers)];

                /* Offsets and limits in exact bytes, as losetup prints them: a rounded "1M"
                 * would hide that an offset is 1 MiB + 512. */
                snprintf(offset, sizeof(offset), "%" PRIu64, d->offset);
                snprintf(limit, sizeof(limit), "%" PRIu64, d->size_limit);
                snprintf(sector, sizeof(sector), "%" PRIu32, d->sector_size);
                snprintf(refs, sizeof(refs), "%" PRIu32, d->references);
                if (!d->managed || d->owner_uid == UINT32_MAX)
                        snprintf(owner, sizeof(owner), "-");
                else {
                        struct passwd *pw = getpwuid(d->owner_uid);

                        if (pw)
                                snprintf(owner, sizeof(owner), "%s", pw->pw_name);
                        else
                                snprintf(owner, sizeof(owner), "%" PRIu32, d->owner_uid);
                }

                /* "!": another device shows some of the same bytes (Aliases). */
                snprintf(name, sizeof(name), "%s%s", device_display_name(d),
                         d->n_aliases > 0 ? "!" : "");
                if (d->n_aliases > 0)
                        n_aliased++;
                cells[0] = name;
                cells[1] = format_size(d->size, size);
                cells[2] = offset;
                cells[3] = limit;
                cells[4] = d->read_only ? "1" : "0";
                cells[5] = d->direct_io ? "1" : "0";
                cells[6] = sector;
                cells[7] = d->managed ? "1" : "0";
                cells[8] = owner;
                cells[9] = refs;
                cells[10] = d->state ?: "-";
                cells[11] = device_info_base(d, base);
                cells[12] = device_info_range(d, range);
                /* Who configured it: "loopmgrd", or what the daemon's guard saw make a foreign
                 * device ("losetup (pid 1234, uid 0)"); "-" when nobody knows. */
                cells[13] = d->creator && d->creator[0] ? d->creator : "-";
                cells[14] = d->backing_file && d->backing_file[0] ? d->backing_file : "-";

                r = table_add_row(table, cells);
                if (r < 0)
                        return log_oom();
        }

        /* Like losetup: nothing at all when there is nothing to list. */
        if (table_rows(table) > 0) {
                r = table_print(table, stdout, !arg_no_legend);
                if (r < 0)
                        return log_oom();
        }
        if (n_aliased > 0 && !arg_no_legend)
                printf("\n! %zu device(s) expose bytes that another device exposes too, an alias "
                       "made without loopmgrd: see Aliases in loopmgrctl status.\n",
                       n_aliased);
        return flush_stdout();
}

/* ---- status ------------------------------------------------------------------------------ */

int verb_status(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(field_list_done) FieldList fields = {};
        _cleanup_free_ char *object = NULL;
        int r;

        r = resolve_device(bus, args[0], &object);
        if (r != 0)
                return r;

        r = sd_bus_call_method(bus, LOOPMGR_BUS_NAME, object, PROPERTIES_INTERFACE, "GetAll",
                               &error, &reply, "s", LOOPMGR_DEVICE_INTERFACE);
        if (r < 0)
                return log_bus_error(&error, r, "GetAll");

        if (arg_json) {
                bool first = false;

                fputs("{\"ObjectPath\":", stdout);
                json_write_string(stdout, object);
                r = json_write_dict_members(reply, stdout, &first);
                if (r < 0)
                        return log_parse_error(r);
                fputs("}\n", stdout);
                return flush_stdout();
        }

        r = field_list_add_one(&fields, "Object", object);
        if (r < 0)
                return log_oom();
        r = field_list_read(reply, &fields);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0)
                return log_parse_error(r);

        r = field_list_print(&fields);
        if (r < 0)
                return log_oom();
        return flush_stdout();
}
