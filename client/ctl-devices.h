/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The Device objects of loopmgrd as its clients (loopmgrctl, loopmgr-losetup) read them: the
 * one walker of GetManagedObjects and InterfacesAdded (device_interfaces_read()), Device
 * properties parsed into DeviceInfo. Functions return 0 or a negative errno (or what
 * sd_bus_call() returns) and print nothing.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

/* One element of the Partitions property (a(usttssssu)), a partition the kernel or loopmgrd
 * made on the device. */
typedef struct PartitionInfo {
        uint32_t number;
        char *node;      /* "/dev/loop0p1" */
        uint64_t offset; /* bytes from the start of the device */
        uint64_t size;   /* bytes */
        char *id_type;   /* "" until udev or a Mount's probe found them */
        char *id_label;
        char *id_uuid;
        char *mount_point;   /* where Device.Mount mounted it, "" when not */
        uint32_t mount_user; /* UINT32_MAX: nobody */
} PartitionInfo;

typedef struct DeviceInfo {
        char *object;
        char *name;
        char *node;
        char *backing_file;
        char *state;
        char *creator;     /* who configured it (the guard's report), "" when unknown */
        char *mount_point; /* where Device.Mount mounted it, "" when not */
        char *id_type;     /* udev's file system probe: ID_FS_TYPE, ID_FS_LABEL, ID_FS_UUID */
        char *id_label;
        char *id_uuid;
        char **aliases; /* object paths of devices over some of the same bytes */
        char **openers; /* "KIND WHAT", e.g. "mount /mnt" */
        char **chain;   /* the layers down to the base, one line each */
        uint64_t diskseq;
        uint64_t size;
        uint64_t offset;
        uint64_t size_limit;
        uint32_t sector_size;
        uint32_t owner_uid;
        uint32_t references;
        uint32_t n_aliases;  /* strv_length(aliases) */
        uint32_t mount_user; /* UINT32_MAX (or not PRESENT_MOUNT_USER): nobody */
        int read_only;
        int direct_io;
        int managed;
        int autoclear;
        int partscan;
        uint32_t major;
        uint32_t minor;
        uint64_t backing_device; /* dev_t */
        uint64_t backing_inode;
        /* The canonical identity; daemons before 0.2 do not send it. */
        char *base_kind;
        uint64_t base_device;
        uint64_t base_inode;
        uint64_t base_offset;
        uint64_t base_size;
        /* Partitions, sorted by number; older daemons do not send it (PRESENT_PARTITIONS). */
        PartitionInfo *partitions;
        size_t n_partitions;
        unsigned present; /* PRESENT_* bits of the properties above that were sent */
} DeviceInfo;

/* Which of the optional properties were sent (DeviceInfo.present). */
enum {
        PRESENT_BASE_DEVICE = 1 << 0,
        PRESENT_BASE_INODE = 1 << 1,
        PRESENT_BASE_OFFSET = 1 << 2,
        PRESENT_BASE_SIZE = 1 << 3,
        PRESENT_MOUNT_USER = 1 << 4,
        PRESENT_OWNER_UID = 1 << 5,
        PRESENT_PARTITIONS = 1 << 6,
};

typedef struct DeviceList {
        DeviceInfo *items;
        size_t n;
} DeviceList;

void device_info_done(DeviceInfo *d);
void device_list_done(DeviceList *l);

/* Walks an a{sv} of properties (or Resolve keys): f gets each key and the signature in its
 * variant, with the variant next to read; it returns > 0 when it read the variant, 0 to have it
 * skipped, or a negative errno, which ends the walk. */
typedef int (*bus_property_func_t)(sd_bus_message *m, const char *key, const char *contents,
                                   void *userdata);
int bus_read_properties(sd_bus_message *m, bus_property_func_t f, void *userdata);

/* A variant of contents "as" or "ao" into *field (replacing what it held). */
int bus_read_variant_strv(sd_bus_message *m, const char *contents, char ***field);

/* Reads an a{sv} of Device properties into *d. Unknown properties and properties with an
 * unexpected type are skipped: a newer daemon may add or change some. */
int device_info_read(sd_bus_message *m, DeviceInfo *d);

/* Reads the a{sa{sv}} of interfaces of object (GetManagedObjects, InterfacesAdded). Returns 1
 * with *ret filled when the object is a Device, 0 when it is not (*ret untouched). */
int device_interfaces_read(sd_bus_message *m, const char *object, DeviceInfo *ret);

/* Parses a GetManagedObjects reply into the Device objects it lists, sorted by name (loop2
 * before loop10). */
int device_list_parse(sd_bus_message *reply, DeviceList *ret);

/* GetManagedObjects and device_list_parse(). Returns what sd_bus_call() returns; error is
 * set when the daemon answered with one. */
int device_list_get(sd_bus *bus, sd_bus_error *error, DeviceList *ret);

/* Properties.GetAll of the Device interface of object into *ret; as device_list_get(). */
int device_info_get(sd_bus *bus, const char *object, sd_bus_error *error, DeviceInfo *ret);

/* Whether path is a block device node of the loop major; its dev_t in *ret_devnum (may be
 * NULL). */
bool path_is_loop_node(const char *path, dev_t *ret_devnum);

/* Formatting for people */
#define FORMAT_BASE_MAX 96
/* "file 254:0 ino 403312", "block 8:0"; "-" for a daemon that does not say. */
const char *format_base(const char *kind, uint64_t device, uint64_t inode, bool has_inode,
                        char buf[static FORMAT_BASE_MAX]);
/* "OFFSET+LENGTH" in exact bytes. */
const char *format_range(uint64_t offset, uint64_t size, char buf[static 48]);
/* The base and range of d, "-" when the daemon did not send them. */
const char *device_info_base(const DeviceInfo *d, char buf[static FORMAT_BASE_MAX]);
const char *device_info_range(const DeviceInfo *d, char buf[static 48]);
/* Name, else node, else object path. */
const char *device_display_name(const DeviceInfo *d);

/* Whether loopmgr mounted d or any of its partitions. */
bool device_info_is_mounted(const DeviceInfo *d);
/* The partition of d that loopmgr mounted on dir, NULL if none. */
const PartitionInfo *device_info_partition_by_mount_point(const DeviceInfo *d, const char *dir);
