/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "bus-send.h"
#include "bus-util.h"
#include "device-bus.h"
#include "log.h"
#include "loopmgr-bus.h"
#include "manager-bus.h"
#include "manager.h"
#include "options-bus.h"
#include "polkit.h"
#include "range-index.h"

/* Devices on which uid holds at least one reference: what the per-user cap counts. */
static unsigned count_devices_of(Manager *m, uid_t uid) {
        unsigned n = 0;

        MANAGER_FOREACH_DEVICE(d, m)
        if (device_has_reference_of(d, uid))
                n++;
        return n;
}

/* The per-user cap on bindings (SPEC §7 limits, loopmgrd --max-devices-per-user). Root is
 * exempt. A request that will reuse a device the user holds a reference on already adds no
 * device, so it is let through even at the cap; anything else at the cap is refused. */
static int check_device_limit(Manager *m, const AttachRequest *req, sd_bus_error *error) {
        _cleanup_(problem_done) Problem ignored = PROBLEM_NULL;
        uint32_t max = polkit_registry_get_max_devices_per_user(m->polkit);
        _cleanup_(chain_done) Chain chain = {};
        Device *d = NULL;
        unsigned n;

        if (req->uid == 0 || max == POLKIT_DEVICES_UNLIMITED)
                return 0;
        n = count_devices_of(m, req->uid);
        if (n < max)
                return 0;
        if (manager_resolve_request(m, req, &chain) >= 0 &&
            manager_check_aliases(m, &chain, req, &d, &ignored) > 0 &&
            device_has_reference_of(d, req->uid))
                return 0;

        return sd_bus_error_setf(
                error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                "User %u holds references on %u loop devices already, the most one user may hold "
                "(loopmgrd --max-devices-per-user=%" PRIu32 "); detach one first.",
                (unsigned) req->uid, n, max);
}

/* The core's Attach, with its Problem turned into the bus error. */
static int bus_attach(Manager *m, sd_bus_message *message, const AttachRequest *req,
                      sd_bus_error *error) {
        _cleanup_(problem_done) Problem p = PROBLEM_NULL;
        int r;

        r = manager_attach(m, call_of_message(message), req, &p);
        if (r < 0)
                return bus_error_set_problem(error, &p);
        return r;
}

int bus_detach(Manager *m, sd_bus_message *message, Device *d, const DetachOptions *o, uid_t uid,
               sd_bus_error *error) {
        _cleanup_(problem_done) Problem p = PROBLEM_NULL;
        int r;

        r = manager_detach(m, call_of_message(message), d, o, uid, &p);
        if (r < 0)
                return bus_error_set_problem(error, &p);
        return r;
}

/* The backing's path as the kernel names it, for polkit rules and messages; "" if unknown. */
static char *fd_path(int fd) {
        char link[sizeof("/proc/self/fd/") + 12], buf[PATH_MAX];
        ssize_t n;

        (void) snprintf(link, sizeof(link), "/proc/self/fd/%i", fd);
        n = readlink(link, buf, sizeof(buf) - 1);
        if (n < 0)
                n = 0;
        buf[n] = 0;
        return strdup(buf);
}

/* Attach: root, or org.loopmgr.attach. Returns 1 (go on), 0 (polkit asked; return 1 without
 * replying) or a negative errno with *error set. */
static int authorize_attach(Manager *m, sd_bus_message *message, const AttachRequest *req,
                            sd_bus_error *error) {
        const AttachOptions *o = req->options;
        char offset[21], size_limit[21];
        _cleanup_free_ char *file = NULL, *what = NULL;

        if (req->uid == 0)
                return 1;

        file = fd_path(req->fd);
        if (!file ||
            asprintf(&what, "attach %s as a loop device", file[0] ? file : "this file") < 0)
                return bus_error_set_errnof(error, -ENOMEM, "Out of memory.");
        (void) snprintf(offset, sizeof(offset), "%" PRIu64, o->offset);
        (void) snprintf(size_limit, sizeof(size_limit), "%" PRIu64, o->size_limit);

        return polkit_verify_async(m->polkit, message, req->uid, POLKIT_ACTION_ATTACH, what,
                                   (char *[]){
                                           "file",
                                           file,
                                           "read-only",
                                           req->read_only ? "true" : "false",
                                           "offset",
                                           offset,
                                           "size-limit",
                                           size_limit,
                                           NULL,
                                   },
                                   o->no_user_interaction, error);
}

/* AttachPath: root, or org.loopmgr.attach-path; asked before the path is even looked at. */
static int authorize_attach_path(Manager *m, sd_bus_message *message, const char *path,
                                 const AttachOptions *o, uid_t uid, sd_bus_error *error) {
        _cleanup_free_ char *what = NULL;

        if (uid == 0)
                return 1;
        if (asprintf(&what, "have loopmgrd open %s and attach it as a loop device", path) < 0)
                return bus_error_set_errnof(error, -ENOMEM, "Out of memory.");

        return polkit_verify_async(m->polkit, message, uid, POLKIT_ACTION_ATTACH_PATH, what,
                                   (char *[]){
                                           "file",
                                           (char *) path,
                                           "read-only",
                                           o->read_only == 1 ? "true" : "false",
                                           NULL,
                                   },
                                   o->no_user_interaction, error);
}

/* Validates the backing fd against the options and fills the request (the core's checks,
 * as the bus error). */
static int prepare_request(int fd, const AttachOptions *o, AttachRequest *req,
                           sd_bus_error *error) {
        _cleanup_(problem_done) Problem p = PROBLEM_NULL;

        if (attach_request_prepare(fd, o, req, &p) < 0)
                return bus_error_set_problem(error, &p);
        return 0;
}

/* Reads the (h fd, a{sv} options) arguments of Attach and Resolve and validates both. */
static int read_fd_request(sd_bus_message *message, AttachOptions *o, AttachRequest *req,
                           sd_bus_error *error) {
        int fd, r;

        r = sd_bus_message_read(message, "h", &fd);
        if (r < 0)
                return sd_bus_error_set(
                        error, SD_BUS_ERROR_INVALID_ARGS,
                        "The file descriptor argument is invalid (handle index out of range?).");
        r = attach_options_parse(message, o, error);
        if (r < 0)
                return r;
        return prepare_request(fd, o, req, error);
}

static int method_attach(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        AttachRequest req = {};
        AttachOptions o;
        uid_t uid = (uid_t) -1;
        int r;

        /* Everything about the request is validated before polkit is asked, and this runs
         * again from the top when polkit answered (polkit.h): nothing changes before that. */
        r = read_fd_request(message, &o, &req, error);
        if (r < 0)
                return r;
        r = bus_sender_uid_or_deny(&m->bus_state->sender_uids, message, &uid, error);
        if (r < 0)
                return r;
        req.uid = uid;
        req.sender = sd_bus_message_get_sender(message);

        /* Before polkit, so a user at the cap is not asked for a password in vain. */
        r = check_device_limit(m, &req, error);
        if (r < 0)
                return r;
        r = authorize_attach(m, message, &req, error);
        if (r <= 0)
                return r < 0 ? r : 1; /* 0: polkit was asked; we run again when it answers */

        return bus_attach(m, message, &req, error);
}

/* Why AttachPath could not open the path, as the error a caller can act on. */
static int attach_path_open_error(const char *path, int e, sd_bus_error *error) {
        switch (e) {
        case ENOENT:
        case ENOTDIR: /* a component is not a directory: nothing by that name */
                return sd_bus_error_setf(error, SD_BUS_ERROR_FILE_NOT_FOUND, "%s does not exist.",
                                         path);
        case ENXIO: /* a socket, or a device node without a device */
        case ELOOP: /* symbolic links that loop: a bad path, not a loop device chain */
        case ENAMETOOLONG:
        case EISDIR:
                errno = e;
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Cannot open %s: %m.",
                                         path);
        case EROFS:
                return sd_bus_error_setf(
                        error, SD_BUS_ERROR_INVALID_ARGS,
                        "%s is on a read-only file system; ask for read-only=true.", path);
        case EACCES:
        case EPERM:
                errno = e;
                return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED, "Cannot open %s: %m.",
                                         path);
        default:
                errno = e;
                return bus_error_set_errnof(error, -e, "Cannot open %s: %m.", path);
        }
}

static int method_attach_path(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_close_ int fd = -EBADF;
        AttachRequest req = {};
        const char *path;
        AttachOptions o;
        uid_t uid = (uid_t) -1;
        int r;

        r = sd_bus_message_read(message, "s", &path);
        if (r < 0)
                return r;
        r = attach_options_parse(message, &o, error);
        if (r < 0)
                return r;
        if (path[0] != '/')
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "The path '%s' is not absolute.", path);
        if (strlen(path) >= PATH_MAX)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "The path is longer than %d bytes.", PATH_MAX - 1);
        r = bus_sender_uid_or_deny(&m->bus_state->sender_uids, message, &uid, error);
        if (r < 0)
                return r;

        /* The daemon opens the path with its own privileges: an unprivileged caller needs
         * attach-path first, so not even the existence of the path is revealed before. */
        r = authorize_attach_path(m, message, path, &o, uid, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        /* Read-write unless asked otherwise; fall back to read-only only when the caller did
         * not insist on a writable device, like losetup. */
        fd = open(path, (o.read_only == 1 ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY);
        if (fd < 0 && o.read_only == -1 && (errno == EROFS || errno == EACCES || errno == EPERM))
                fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return attach_path_open_error(path, errno, error);

        r = prepare_request(fd, &o, &req, error);
        if (r < 0)
                return r;
        req.uid = uid;
        req.sender = sd_bus_message_get_sender(message);
        r = check_device_limit(m, &req, error);
        if (r < 0)
                return r;

        return bus_attach(m, message, &req, error);
}

static int method_detach(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *path;
        DetachOptions o;
        Device *d;
        uid_t uid = (uid_t) -1;
        int r;

        r = sd_bus_message_read(message, "o", &path);
        if (r < 0)
                return r;
        r = detach_options_parse(message, &o, error);
        if (r < 0)
                return r;

        d = manager_get_device_by_path(m, path);
        if (!d)
                return sd_bus_error_setf(
                        error, LOOPMGR_ERROR_NOT_FOUND,
                        "There is no loop device %s; it may have been detached already.", path);

        r = device_bus_authorize_change(d, message, DEVICE_CHANGE_DETACH, o.all_references,
                                        o.recursive, o.no_user_interaction, &uid, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        return bus_detach(m, message, d, &o, uid, error);
}

static int method_get_device(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *spec;
        Device *d;
        int r;

        r = sd_bus_message_read(message, "s", &spec);
        if (r < 0)
                return r;

        r = manager_find_device(m, spec, &d);
        if (r == -EINVAL)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "'%s' is neither a loop device (/dev/loopN, loopN, "
                                         "/dev/disk/by-diskseq/N) nor the absolute path of a file.",
                                         spec);
        if (r < 0)
                return sd_bus_error_setf(
                        error, LOOPMGR_ERROR_NOT_FOUND, "No loop device matches '%s'%s%s.", spec,
                        r == -ENODEV ? "" : ": ", r == -ENODEV ? "" : strerror(-r));

        return sd_bus_reply_method_return(message, "o", d->path);
}

/* Appends {key: variant of array of `type` ('s' or 'o')} to an open a{sv}. */
static int append_entry_array(sd_bus_message *m, const char *key, char type, char **items) {
        char sig[3] = {'a', type, 0};
        int r;

        r = sd_bus_message_open_container(m, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", key);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'v', sig);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', sig + 1);
        for (char **i = items; r >= 0 && i && *i; i++)
                r = sd_bus_message_append_basic(m, type, *i);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

typedef struct PathList {
        char **paths;
        size_t n;
} PathList;

static int collect_path(Device *d, void *userdata) {
        PathList *l = userdata;
        char **n = realloc(l->paths, (l->n + 2) * sizeof(char *));

        if (!n)
                return -ENOMEM;
        l->paths = n;
        /* Borrowed: the devices outlive the reply being built. */
        l->paths[l->n++] = d->path;
        l->paths[l->n] = NULL;
        return 0;
}

static int method_resolve(sd_bus_message *message, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_strv_free_ char **lines = NULL;
        _cleanup_(chain_done) Chain chain = {};
        PathList aliases = {};
        Manager *m = userdata;
        AttachRequest req = {};
        AttachOptions o;
        const Identity *id;
        int r;

        r = read_fd_request(message, &o, &req, error);
        if (r < 0)
                return r;

        r = manager_resolve_request(m, &req, &chain);
        if (r < 0) {
                _cleanup_(problem_done) Problem p = PROBLEM_NULL;

                (void) manager_resolve_problem(r, &p);
                return bus_error_set_problem(error, &p);
        }
        id = &chain.identity;

        r = chain_format(&chain, &lines);
        if (r < 0)
                return r;
        r = registry_foreach_intersecting(m, id, collect_path, &aliases);
        if (r < 0) {
                free(aliases.paths);
                return r;
        }

        r = sd_bus_message_new_method_return(message, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r >= 0)
                r = sd_bus_message_append(reply, "{sv}{sv}{sv}{sv}{sv}", "base-kind", "s",
                                          id->kind == BASE_FILE ? "file" : "block", "base-device",
                                          "t", (uint64_t) id->base_device, "base-inode", "t",
                                          id->base_inode, "offset", "t", id->offset, "size", "t",
                                          id->size);
        if (r >= 0)
                r = append_entry_array(reply, "chain", 's', lines);
        if (r >= 0)
                r = append_entry_array(reply, "aliases", 'o', aliases.paths);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        free(aliases.paths);
        if (r < 0)
                return r;

        return sd_bus_send(NULL, reply, NULL);
}

static int property_get_version(sd_bus *bus, const char *path, const char *interface,
                                const char *property, sd_bus_message *reply, void *userdata,
                                sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", LOOPMGR_VERSION);
}

/* The guard's mode in force and, when it is not the one asked for, why (manager-guard.c). Both
 * are settled at start-up, before the name is taken. */
static int property_get_guard(sd_bus *bus, const char *path, const char *interface,
                              const char *property, sd_bus_message *reply, void *userdata,
                              sd_bus_error *error) {
        Manager *m = userdata;

        return sd_bus_message_append(reply, "s", guard_mode_to_string(m->guard_mode));
}

static int property_get_guard_problem(sd_bus *bus, const char *path, const char *interface,
                                      const char *property, sd_bus_message *reply, void *userdata,
                                      sd_bus_error *error) {
        Manager *m = userdata;

        return sd_bus_message_append(reply, "s", m->guard_problem ?: "");
}

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Guard", "s", property_get_guard, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("GuardProblem", "s", property_get_guard_problem, 0,
                        SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD_WITH_ARGS("Attach", SD_BUS_ARGS("h", fd, "a{sv}", options),
                                SD_BUS_RESULT("o", device, "s", node, "t", diskseq, "b", reused),
                                method_attach, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("AttachPath", SD_BUS_ARGS("s", path, "a{sv}", options),
                                SD_BUS_RESULT("o", device, "s", node, "t", diskseq, "b", reused),
                                method_attach_path, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Detach", SD_BUS_ARGS("o", device, "a{sv}", options),
                                SD_BUS_RESULT("s", state), method_detach,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetDevice", SD_BUS_ARGS("s", node_or_file),
                                SD_BUS_RESULT("o", device), method_get_device,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Resolve", SD_BUS_ARGS("h", fd, "a{sv}", options),
                                SD_BUS_RESULT("a{sv}", identity), method_resolve,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END};

int manager_bus_register(Manager *m) {
        int r;

        r = sd_bus_add_object_vtable(m->bus, NULL, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE,
                                     manager_vtable, m);
        if (r < 0)
                return r;
        return sd_bus_add_object_manager(m->bus, NULL, LOOPMGR_MANAGER_PATH);
}
