/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/sysmacros.h>

#include "bus-send.h"
#include "bus-util.h"
#include "device-bus.h"
#include "log.h"
#include "loopmgr-bus.h"
#include "manager-aliases.h"
#include "manager-bus.h"
#include "manager.h"
#include "media-mount.h"
#include "mount-job.h"
#include "udev-props.h"
#include "openers.h"
#include "options-bus.h"
#include "polkit.h"

#define DEFINE_GETTER(name, type, expr)                                                            \
        static int property_get_##name(sd_bus *bus, const char *path, const char *interface,       \
                                       const char *property, sd_bus_message *reply,                \
                                       void *userdata, sd_bus_error *error) {                      \
                Device *d = userdata;                                                              \
                return sd_bus_message_append(reply, type, expr);                                   \
        }

DEFINE_GETTER(node, "s", d->node);
DEFINE_GETTER(name, "s", d->status.name);
DEFINE_GETTER(diskseq, "t", d->status.diskseq);
DEFINE_GETTER(major, "u", (uint32_t) major(d->status.devnum));
DEFINE_GETTER(minor, "u", (uint32_t) minor(d->status.devnum));
DEFINE_GETTER(backing_file, "s", d->status.backing_file ?: "");
DEFINE_GETTER(creator, "s", d->managed ? "loopmgrd" : d->creator ?: "");
DEFINE_GETTER(backing_device, "t",
              (uint64_t) (d->backing_is_block ? d->status.backing_rdevice
                                              : d->status.backing_device));
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
              !d->has_identity                ? ""
              : d->identity.kind == BASE_FILE ? "file"
                                              : "block");
DEFINE_GETTER(base_device, "t", d->has_identity ? (uint64_t) d->identity.base_device : 0);
DEFINE_GETTER(base_inode, "t", d->has_identity ? d->identity.base_inode : 0);
DEFINE_GETTER(base_offset, "t", d->has_identity ? d->identity.offset : 0);
DEFINE_GETTER(base_size, "t", d->has_identity ? d->identity.size : 0);
DEFINE_GETTER(mount_point, "s", d->mount.point ?: "");
DEFINE_GETTER(mount_user, "u", d->mount.point ? (uint32_t) d->mount.uid : UINT32_MAX);
DEFINE_GETTER(id_type, "s", d->id_type ?: "");
DEFINE_GETTER(id_label, "s", d->id_label ?: "");
DEFINE_GETTER(id_uuid, "s", d->id_uuid ?: "");

static int property_get_partitions(sd_bus *bus, const char *path, const char *interface,
                                   const char *property, sd_bus_message *reply, void *userdata,
                                   sd_bus_error *error) {
        Device *d = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "(usttssssu)");
        for (size_t i = 0; r >= 0 && i < d->n_partitions; i++) {
                const DevicePartition *p = &d->partitions[i];

                r = sd_bus_message_append(reply, "(usttssssu)", p->number, p->node, p->start,
                                          p->size, p->id_type ?: "", p->id_label ?: "",
                                          p->id_uuid ?: "", p->mount.point ?: "",
                                          p->mount.point ? (uint32_t) p->mount.uid : UINT32_MAX);
        }
        if (r < 0)
                return r;
        return sd_bus_message_close_container(reply);
}

static int property_get_aliases(sd_bus *bus, const char *path, const char *interface,
                                const char *property, sd_bus_message *reply, void *userdata,
                                sd_bus_error *error) {
        _cleanup_free_ Device **list = NULL;
        Device *d = userdata;
        int r;

        r = manager_device_aliases(d->manager, d, &list);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "o");
        for (Device **p = list; r >= 0 && *p; p++)
                r = sd_bus_message_append(reply, "o", (*p)->path);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r;
}

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
                r = manager_device_openers(d->manager, d, NULL, &pairs);
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
        MANAGER_FOREACH_DEVICE(e, m) {
                if (e == d || !e->backing_is_block || e->status.backing_rdevice != d->status.devnum)
                        continue;
                if (!device_has_reference_of(e, uid) || stacked_beyond(m, e, uid, depth + 1))
                        return true;
        }
        return false;
}

/* polkit_verify_async() for action on d, with the details every Device action gives (device,
 * file, owner-uid, managed) and one more, key = value. */
static int device_verify_async(Device *d, sd_bus_message *message, uid_t uid, const char *action,
                               const char *what, const char *key, const char *value,
                               bool no_user_interaction, sd_bus_error *error) {
        char owner[12];

        (void) snprintf(owner, sizeof(owner), "%u", (unsigned) d->owner_uid);
        return polkit_verify_async(d->manager->polkit, message, uid, action, what,
                                   (char *[]){
                                           "device",
                                           d->node,
                                           "file",
                                           d->status.backing_file ?: "",
                                           "owner-uid",
                                           owner,
                                           "managed",
                                           d->managed ? "true" : "false",
                                           (char *) key,
                                           (char *) value,
                                           NULL,
                                   },
                                   no_user_interaction, error);
}

int device_bus_authorize_change(Device *d, sd_bus_message *message, DeviceChange change,
                                bool all_references, bool recursive, bool no_user_interaction,
                                uid_t *ret_uid, sd_bus_error *error) {
        _cleanup_free_ char *what = NULL;
        const char *operation;
        uid_t uid = (uid_t) -1;
        int r;

        r = bus_sender_uid_or_deny(&d->manager->bus_state->sender_uids, message, &uid, error);
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
                        r = asprintf(&what,
                                     "detach the loop devices stacked on %s, which other "
                                     "users or programs hold",
                                     d->node);
                else
                        r = asprintf(&what, "detach %s, which another user or program set up",
                                     d->node);
                break;
        case DEVICE_CHANGE_AUTOCLEAR:
                operation = "set-autoclear";
                r = asprintf(&what,
                             "change the autoclear flag of %s, which another user or "
                             "program set up",
                             d->node);
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

        return device_verify_async(d, message, uid, POLKIT_ACTION_DETACH_OTHERS, what, "operation",
                                   operation, no_user_interaction, error);
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
                return r < 0 ? r : 1; /* 0: polkit was asked; we run again when it answers */
        return bus_detach(d->manager, message, d, &o, uid, error);
}

static int method_set_autoclear(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(problem_done) Problem p = PROBLEM_NULL;
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
                return sd_bus_error_setf(error, LOOPMGR_ERROR_BUSY, "%s is being torn down.",
                                         d->node);
        r = device_bus_authorize_change(d, message, DEVICE_CHANGE_AUTOCLEAR, false, false,
                                        o.no_user_interaction, &uid, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = manager_set_autoclear(d->manager, d, value, &p);
        if (r < 0)
                return bus_error_set_problem(error, &p);
        return sd_bus_reply_method_return(message, NULL);
}

static int method_set_capacity(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(problem_done) Problem p = PROBLEM_NULL;
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

        r = manager_set_capacity(d->manager, d, &p);
        if (r < 0)
                return bus_error_set_problem(error, &p);
        return sd_bus_reply_method_return(message, NULL);
}

static int authorize_mount(Device *d, unsigned partition, sd_bus_message *message, uid_t uid,
                           bool others, const char *fstype, bool no_user_interaction,
                           sd_bus_error *error) {
        _cleanup_free_ char *what = NULL;
        const DeviceMount *mnt = device_get_mount(d, partition);
        const DevicePartition *part = partition ? device_get_partition(d, partition) : NULL;
        const char *node = device_mount_node(d, partition);
        bool mounted = mnt && mnt->point;
        char owner[12];
        int r;

        if (others)
                r = asprintf(&what, "%s the file system of %s, which %s",
                             mounted ? "unmount" : "mount", node,
                             mounted ? "another user mounted" : "another user or program set up");
        else
                r = asprintf(&what, "mount the file system of %s", node);
        if (r < 0)
                return bus_error_set_errnof(error, -ENOMEM, "Out of memory.");
        (void) snprintf(owner, sizeof(owner), "%u", (unsigned) d->owner_uid);

        return polkit_verify_async(d->manager->polkit, message, uid,
                                   others ? POLKIT_ACTION_MOUNT_OTHERS : POLKIT_ACTION_MOUNT, what,
                                   (char *[]) {
                                           "device", (char *) node,
                                           "file", d->status.backing_file ?: "",
                                           "owner-uid", owner,
                                           "managed", d->managed ? "true" : "false",
                                           "fstype", (char *) (fstype ?: part ? part->id_type ?: ""
                                                                              : d->id_type ?: ""),
                                           "operation", mounted ? "unmount" : "mount",
                                           NULL,
                                   },
                                   no_user_interaction, error);
}

static int method_mount(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *bad = NULL, *user = NULL, *elsewhere = NULL;
        _cleanup_(problem_done) Problem p = PROBLEM_NULL;
        Device *d = userdata;
        Manager *m = d->manager;
        struct libmnt_table *t;
        unsigned long flags = 0;
        uid_t uid = (uid_t) -1;
        DeviceMount *mnt;
        const char *node;
        Reference *own;
        struct passwd *pw;
        MountOptions o;
        dev_t devnum;
        gid_t gid;
        int r;

        r = mount_options_parse(message, &o, error);
        if (r < 0)
                return r;
        if (o.fstype && !mount_fstype_allowed(o.fstype))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Option 'fstype': '%s' is not a file system type loopmgr "
                                         "mounts (ext2 ext3 ext4 xfs btrfs squashfs erofs vfat "
                                         "msdos exfat ntfs3 iso9660 udf f2fs).",
                                         o.fstype);
        r = mount_parse_extra_options(o.options, &flags, &bad);
        if (r < 0)
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_INVALID_ARGS,
                        "Option 'options': mount option '%s' is not allowed (only "
                        "ro, noexec, noatime, nodiratime, relatime, sync, dirsync; "
                        "nosuid and nodev are always set).",
                        bad ?: "");
        r = bus_sender_uid_or_deny(&m->bus_state->sender_uids, message, &uid, error);
        if (r < 0)
                return r;
        if (d->state != DEVICE_ATTACHED)
                return sd_bus_error_setf(error, LOOPMGR_ERROR_BUSY, "%s is being torn down.",
                                         d->node);
        if (manager_mount_target(d, o.partition, &mnt, &p) < 0)
                return bus_error_set_problem(error, &p);
        node = device_mount_node(d, o.partition);
        devnum = device_mount_devnum(d, o.partition);

        own = device_own_reference(d, uid);
        /* Without a reference of its own the caller may still have handed it to the mount of
         * another partition of d: this mount then gets one of its own. */
        if (o.release_reference && !own && !device_has_mount_reference_of(d, uid))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Option 'release-reference': you hold no reference on %s "
                                         "to hand over to the mount.",
                                         d->node);

        if (mnt->point) {
                /* Already mounted by us: the same mount again, for its user. */
                if (uid != 0 && uid != mnt->uid)
                        return sd_bus_error_setf(error, LOOPMGR_ERROR_BUSY,
                                                 "%s is mounted on %s for another user.", node,
                                                 mnt->point);
                if (o.release_reference) {
                        r = manager_release_to_mount(m, d, o.partition, own, uid);
                        if (r < 0)
                                return bus_error_set_errnof(error, r, "Out of memory.");
                }
                return sd_bus_reply_method_return(message, "s", mnt->point);
        }

        t = manager_mount_table(m);
        if (t) {
                r = mount_find_target(t, devnum, &elsewhere);
                mnt_unref_table(t);
                if (r < 0)
                        return bus_error_set_errnof(error, r, "Out of memory.");
        }
        if (elsewhere)
                return sd_bus_error_setf(error, LOOPMGR_ERROR_BUSY,
                                         "%s is already mounted on %s (not by loopmgr).", node,
                                         elsewhere);
        {
                const ForeignMounts *f = manager_foreign_mounts(m);
                for (size_t i = 0; i < f->n; i++)
                        if (f->mounts[i].devnum == devnum)
                                return sd_bus_error_setf(error, LOOPMGR_ERROR_BUSY,
                                                         "%s is already mounted on %s in the mount "
                                                         "namespace of process %d.",
                                                         node, f->mounts[i].target ?: "?",
                                                         (int) f->mounts[i].pid);
        }

        pw = getpwuid(uid);
        if (!pw || !pw->pw_name || !*pw->pw_name || strchr(pw->pw_name, '/') ||
            pw->pw_name[0] == '.')
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_ACCESS_DENIED,
                        "uid %u has no usable user name for a directory in " MOUNT_MEDIA_DIR ".",
                        (unsigned) uid);
        user = strdup(pw->pw_name);
        if (!user)
                return bus_error_set_errnof(error, -ENOMEM, "Out of memory.");
        gid = pw->pw_gid;

        if (uid != 0) {
                bool mine = device_has_reference_of(d, uid) || (d->managed && d->owner_uid == uid);

                r = authorize_mount(d, o.partition, message, uid, !mine, o.fstype,
                                    o.no_user_interaction, error);
                if (r <= 0)
                        return r < 0 ? r : 1; /* 0: polkit was asked; we run again */
        }

        r = manager_mount(m, call_of_message(message), d,
                          &(MountRequest){
                                  .uid = uid,
                                  .gid = gid,
                                  .user = user,
                                  .fstype = o.fstype,
                                  .flags = flags,
                                  .read_only = d->status.read_only || (flags & MS_RDONLY),
                                  .partition = o.partition,
                          },
                          o.release_reference, sd_bus_message_get_sender(message), &p);
        if (r < 0)
                return bus_error_set_problem(error, &p);
        return 1; /* answered when the mount returns (mount-job.h) */
}

static int method_unmount(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(problem_done) Problem p = PROBLEM_NULL;
        Device *d = userdata;
        Manager *m = d->manager;
        DeviceMount *mnt;
        UnmountOptions o;
        uid_t uid = (uid_t) -1;
        int r;

        r = unmount_options_parse(message, &o, error);
        if (r < 0)
                return r;
        r = bus_sender_uid_or_deny(&m->bus_state->sender_uids, message, &uid, error);
        if (r < 0)
                return r;
        if (manager_mount_target(d, o.partition, &mnt, &p) < 0)
                return bus_error_set_problem(error, &p);
        if (!mnt->point)
                return sd_bus_error_setf(error, LOOPMGR_ERROR_NOT_MOUNTED,
                                         "%s has no mount made by loopmgr.",
                                         device_mount_node(d, o.partition));
        /* Its user needs nobody's permission to unmount it. */
        if (uid != 0 && uid != mnt->uid) {
                r = authorize_mount(d, o.partition, message, uid, true, NULL, o.no_user_interaction,
                                    error);
                if (r <= 0)
                        return r < 0 ? r : 1;
        }

        r = manager_unmount(m, call_of_message(message), d, o.partition, o.force,
                            sd_bus_message_get_sender(message), &p);
        if (r < 0)
                return bus_error_set_problem(error, &p);
        return 1; /* answered when umount2() returns (mount-job.h) */
}

/* Device.OpenDevice: its owner and its reference holders need nobody's permission. */
static int authorize_open_device(Device *d, sd_bus_message *message, uid_t uid, bool writable,
                                 bool no_user_interaction, sd_bus_error *error) {
        _cleanup_free_ char *what = NULL;

        if (uid == 0 || device_has_reference_of(d, uid) || (d->managed && d->owner_uid == uid))
                return 1;
        if (asprintf(&what, "open %s for %s, which another user or program set up", d->node,
                     writable ? "reading and writing" : "reading") < 0)
                return bus_error_set_errnof(error, -ENOMEM, "Out of memory.");

        return device_verify_async(d, message, uid, POLKIT_ACTION_OPEN_DEVICE, what, "mode",
                                   writable ? "rw" : "r", no_user_interaction, error);
}

static int method_open_device(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(problem_done) Problem p = PROBLEM_NULL;
        _cleanup_close_ int fd = -EBADF;
        Device *d = userdata;
        uid_t uid = (uid_t) -1;
        const char *mode;
        CommonOptions o;
        bool writable;
        int r;

        r = sd_bus_message_read(message, "s", &mode);
        if (r < 0)
                return r;
        if (!streq(mode, "r") && !streq(mode, "rw"))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Mode '%s' is neither 'r' (read-only) nor 'rw' "
                                         "(read-write).",
                                         mode);
        writable = streq(mode, "rw");
        r = common_options_parse(message, &o, error);
        if (r < 0)
                return r;
        r = manager_check_open_device(d, writable, &p);
        if (r < 0)
                return bus_error_set_problem(error, &p);
        r = bus_sender_uid_or_deny(&d->manager->bus_state->sender_uids, message, &uid, error);
        if (r < 0)
                return r;
        r = authorize_open_device(d, message, uid, writable, o.no_user_interaction, error);
        if (r <= 0)
                return r < 0 ? r : 1; /* 0: polkit was asked; we run again when it answers */

        r = manager_open_device(d->manager, d, writable, &fd, &p);
        if (r < 0)
                return bus_error_set_problem(error, &p);
        log_info("%s opened %s for uid %u", d->node, writable ? "read-write" : "read-only",
                 (unsigned) uid);
        return sd_bus_reply_method_return(message, "h", fd);
}

#define PROP(name, sig, getter)                                                                    \
        SD_BUS_PROPERTY(name, sig, property_get_##getter, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE)
#define PROP_CONST(name, sig, getter)                                                              \
        SD_BUS_PROPERTY(name, sig, property_get_##getter, 0, SD_BUS_VTABLE_PROPERTY_CONST)

static const sd_bus_vtable device_vtable[] = {
        SD_BUS_VTABLE_START(0), PROP_CONST("Node", "s", node), PROP_CONST("Name", "s", name),
        PROP_CONST("DiskSeq", "t", diskseq), PROP_CONST("Major", "u", major),
        PROP_CONST("Minor", "u", minor), PROP("BackingFile", "s", backing_file),
        PROP_CONST("BackingDevice", "t", backing_device),
        PROP_CONST("BackingInode", "t", backing_inode), PROP("Offset", "t", offset),
        PROP("SizeLimit", "t", size_limit), PROP("Size", "t", size),
        PROP("ReadOnly", "b", read_only), PROP("Autoclear", "b", autoclear),
        PROP("PartScan", "b", partscan), PROP("DirectIO", "b", direct_io),
        PROP("SectorSize", "u", sector_size), PROP_CONST("Managed", "b", managed),
        /* Who configured the device (docs/API.md): set once the guard reports it. */
        PROP("Creator", "s", creator),
        /* Devices over some of the same bytes, neither stacked on the other (docs/API.md). */
        PROP("Aliases", "ao", aliases), PROP("OwnerUID", "u", owner_uid),
        PROP("References", "u", references), PROP("State", "s", state),
        PROP("Openers", "a(ss)", openers), PROP("Chain", "as", chain),
        /* Not in SPEC §5: the canonical range, so clients need not parse Chain. */
        PROP("BaseKind", "s", base_kind), PROP("BaseDevice", "t", base_device),
        PROP("BaseInode", "t", base_inode), PROP("BaseOffset", "t", base_offset),
        PROP("BaseSize", "t", base_size),
        /* Device.Mount (docs/API.md) */
        PROP("MountPoint", "s", mount_point), PROP("MountUser", "u", mount_user),
        PROP("IdType", "s", id_type), PROP("IdLabel", "s", id_label), PROP("IdUUID", "s", id_uuid),
        /* Partitioned images (docs/API.md) */
        PROP("Partitions", LOOPMGR_DEVICE_PARTITIONS_SIGNATURE, partitions),
        SD_BUS_METHOD_WITH_ARGS("Detach", SD_BUS_ARGS("a{sv}", options), SD_BUS_RESULT("s", state),
                                method_detach, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetAutoclear", SD_BUS_ARGS("b", value, "a{sv}", options),
                                SD_BUS_NO_RESULT, method_set_autoclear, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetCapacity", SD_BUS_ARGS("a{sv}", options), SD_BUS_NO_RESULT,
                                method_set_capacity, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Mount", SD_BUS_ARGS("a{sv}", options),
                                SD_BUS_RESULT("s", mount_point), method_mount,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Unmount", SD_BUS_ARGS("a{sv}", options), SD_BUS_NO_RESULT,
                                method_unmount, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("OpenDevice", SD_BUS_ARGS("s", mode, "a{sv}", options),
                                SD_BUS_RESULT("h", fd), method_open_device,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END};

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
        MANAGER_FOREACH_DEVICE(d, m) {
                if (n >= m->n_devices)
                        break;
                l[n] = strdup(d->path);
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
