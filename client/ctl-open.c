/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * loopmgrctl open / close: disk images for desktop users (issue 7).
 *
 * open attaches the image through the caller's own fd (read-only unless --writable, sharing an
 * identical device), asks loopmgrd to mount it under /run/media/<user>/ and hands the attach's
 * reference over to the mount (release-reference), so that the device lives exactly as long as
 * the mount. Opening an image that is open already returns the same mount point: the Attach
 * reuses the device and Mount returns its mount (dropping the surplus reference).
 *
 * An image that holds a partition table and no file system (issue 15) is attached with
 * partscan, and each of its partitions is mounted, one after the other, every Mount with
 * release-reference: the first takes over the attach's reference, the others get references of
 * their own, so the device lives until the last of its mounts goes.
 *
 * close finds the device by a mount point (its own or a partition's) or by its image, asks
 * loopmgrd to unmount every loopmgr mount of it, and waits for the device object to go when
 * the mounts held the last reference.
 *
 * Mounting and unmounting are the daemon's (Device.Mount/Unmount); the client never calls
 * mount(2), so it needs no privileges.
 */

#include <blkid.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include "ctl-agent.h"
#include "ctl-common.h"
#include "ctl-devices.h"
#include "ctl-mount.h"
#include "ctl-output.h"
#include "loopmgr-bus.h"

#define OPT_RELEASE_REFERENCE LOOPMGR_OPT_RELEASE_REFERENCE

/* The wait of close for the device to go, unless --timeout. */
#define CLOSE_TIMEOUT_USEC (10 * USEC_PER_SEC)

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

/* The device whose loopmgr mount, or the loopmgr mount of one of whose partitions, is dir. 0
 * and *ret filled, -ENOENT when none, -ENOMEM, or an exit status (positive) after a failed
 * call. */
static int find_by_mount_point(sd_bus *bus, const char *dir, DeviceInfo *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_list_done) DeviceList list = {};
        int r;

        r = device_list_get(bus, &error, &list);
        if (r == -ENOMEM)
                return r;
        if (r < 0 && sd_bus_error_is_set(&error))
                return log_bus_error(&error, r, "GetManagedObjects");
        if (r < 0)
                return log_parse_error(r);

        for (size_t i = 0; i < list.n; i++)
                if (streq_ptr(list.items[i].mount_point, dir) ||
                    device_info_partition_by_mount_point(list.items + i, dir)) {
                        *ret = list.items[i];
                        list.items[i] = list.items[--list.n];
                        return 0;
                }
        return -ENOENT;
}

static char *make_absolute(const char *path) {
        _cleanup_free_ char *cwd = NULL;
        char *p;

        if (path[0] == '/')
                return strdup(path);
        cwd = getcwd(NULL, 0);
        if (!cwd)
                return NULL;
        if (asprintf(&p, "%s/%s", streq(cwd, "/") ? "" : cwd, path) < 0)
                return NULL;
        return p;
}

/* "Cannot open IMAGE: <the daemon's sentence>", and the exit status for the error. */
static int log_open_error(const char *image, const sd_bus_error *error, int r, const char *what) {
        if (sd_bus_error_is_set(error) && error->message && error->message[0])
                log_fail(0, "Cannot open %s: %s", image, error->message);
        else
                log_fail(0, "Cannot open %s: %s failed: %s", image, what,
                         sd_bus_error_is_set(error) ? error->name : strerror(-r));
        return exit_status_from_bus_error(error, r);
}

static bool error_means_gone(const sd_bus_error *error) {
        return sd_bus_error_has_names(error, SD_BUS_ERROR_UNKNOWN_OBJECT,
                                      SD_BUS_ERROR_UNKNOWN_INTERFACE, SD_BUS_ERROR_UNKNOWN_METHOD,
                                      LOOPMGR_ERROR_NOT_FOUND);
}

/* Device.Mount (release: handing our reference over to the mount) or Device.Unmount of the
 * whole device (partition 0, sent as no option at all: daemons without partitions know no
 * "partition") or of one partition. */
static int call_mount_method(sd_bus *bus, const char *object, const char *method, bool release,
                             uint32_t partition, sd_bus_error *error, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, object,
                                           LOOPMGR_DEVICE_INTERFACE, method);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && release)
                r = sd_bus_message_append(m, "{sv}", OPT_RELEASE_REFERENCE, "b", 1);
        if (r >= 0 && partition > 0)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_PARTITION, "u", partition);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;
        return ctl_call(bus, m, call_timeout_usec(), error, ret_reply);
}

static int call_mount(sd_bus *bus, const char *object, uint32_t partition, sd_bus_error *error,
                      sd_bus_message **ret_reply) {
        return call_mount_method(bus, object, "Mount", true, partition, error, ret_reply);
}

static int call_unmount(sd_bus *bus, const char *object, uint32_t partition, sd_bus_error *error) {
        return call_mount_method(bus, object, "Unmount", false, partition, error, NULL);
}

static inline void blkid_free_probep(blkid_probe *pr) {
        blkid_free_probe(*pr);
}

/*
 * Whether the image behind fd holds a partition table and no file system, as libblkid sees it
 * (the client reads its own fd: the file is the user's). Returns 1 with the table's type
 * ("gpt", "dos") in *ret_pttype, 0 when it does not, -ENOMEM. A probe that fails or finds
 * something ambiguous counts as "no partition table": the image is then opened as before and
 * the daemon's own probe at Mount says what is wrong with it.
 */
static int probe_partition_table(int fd, char **ret_pttype) {
        _cleanup_(blkid_free_probep) blkid_probe pr = NULL;
        const char *pttype = NULL;
        char *copy;

        pr = blkid_new_probe();
        if (!pr)
                return -ENOMEM;
        if (blkid_probe_set_device(pr, fd, 0, 0) != 0 ||
            blkid_probe_enable_superblocks(pr, true) != 0 ||
            blkid_probe_enable_partitions(pr, true) != 0)
                return 0;
        if (blkid_do_safeprobe(pr) != 0)
                return 0;

        /* A hybrid ISO 9660 image has both (an MBR for booting from USB sticks): it is
         * mounted whole, as before. */
        if (blkid_probe_lookup_value(pr, "TYPE", NULL, NULL) == 0 ||
            blkid_probe_lookup_value(pr, "PTTYPE", &pttype, NULL) != 0 || !pttype || !pttype[0])
                return 0;

        copy = strdup(pttype);
        if (!copy)
                return -ENOMEM;
        *ret_pttype = copy;
        return 1;
}

static int close_device(sd_bus *bus, const DeviceInfo *d, const char *what);

/* --lifetime client: the image stays open while the command runs. */
typedef struct OpenWait {
        const char *object;
        bool closed; /* unmounted or detached by someone else */
} OpenWait;

static int on_open_removed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        OpenWait *w = userdata;
        const char *object;

        if (sd_bus_message_read(m, "o", &object) < 0 || !streq(object, w->object))
                return 0;
        w->closed = true;
        return sd_event_exit(sd_bus_get_event(sd_bus_message_get_bus(m)), 0);
}

/* PropertiesChanged of our device: MountPoint "" means someone closed it. */
static int on_open_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        OpenWait *w = userdata;
        const char *interface;
        int r;

        if (sd_bus_message_read(m, "s", &interface) < 0 ||
            !streq(interface, LOOPMGR_DEVICE_INTERFACE))
                return 0;
        if (sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
                return 0;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *key, *value;

                if (sd_bus_message_read(m, "s", &key) < 0)
                        return 0;
                if (streq(key, "MountPoint")) {
                        if (sd_bus_message_read(m, "v", "s", &value) < 0)
                                return 0;
                        if (!value[0]) {
                                w->closed = true;
                                return sd_event_exit(sd_bus_get_event(sd_bus_message_get_bus(m)),
                                                     0);
                        }
                } else if (sd_bus_message_skip(m, "v") < 0)
                        return 0;
                if (sd_bus_message_exit_container(m) < 0)
                        return 0;
        }
        return 0;
}

/* SIGINT/SIGTERM: close the image. The bus is taken off the event loop first: sd-bus closes a
 * connection attached to a loop when that loop exits, and close needs it. */
static int on_open_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        sd_bus *bus = userdata;

        (void) sd_bus_detach_event(bus);
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

/* The first mount point of d, the whole device's or a partition's ("" when none). */
static const char *first_mount_point(const DeviceInfo *d) {
        if (d->mount_point && d->mount_point[0])
                return d->mount_point;
        for (size_t i = 0; i < d->n_partitions; i++)
                if (d->partitions[i].mount_point && d->partitions[i].mount_point[0])
                        return d->partitions[i].mount_point;
        return "";
}

/* Waits until interrupted, then closes the mounts of d: what this open mounted. */
static int open_wait_client(sd_bus *bus, sd_event *event, OpenWait *w, const char *image,
                            const DeviceInfo *d) {
        int r;

        if (isatty(STDERR_FILENO))
                log_fail(0, "Keeping %s open until this command is interrupted.", image);

        r = sd_event_loop(event);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Event loop failed: %s", strerror(-r));
        if (w->closed) {
                log_fail(0, "%s was closed by someone else.", image);
                return 0;
        }
        if (r != 0 || !sd_bus_is_open(bus))
                return log_fail(EXIT_FAILURE,
                                "Lost the connection to loopmgrd; %s stays open on %s "
                                "('loopmgrctl close %s' closes it).",
                                image, first_mount_point(d), first_mount_point(d));
        return close_device(bus, d, image);
}

/* What Attach answered for the image open is opening. */
typedef struct Opened {
        const char *image;
        const char *pttype; /* the partition table libblkid found, NULL for a file system */
        const char *object;
        const char *node;
        uint64_t diskseq;
        bool reused;
} Opened;

static void print_partitions_json(const Opened *o, const DeviceInfo *d) {
        bool first = true;

        fputc('[', stdout);
        for (size_t i = 0; i < d->n_partitions; i++) {
                const PartitionInfo *p = d->partitions + i;

                if (!p->mount_point[0])
                        continue;
                fputs(first ? "{" : ",{", stdout);
                first = false;
                json_write_device(stdout, o->node, o->object);
                printf(",\"partition\":%" PRIu32 ",\"partition_device\":", p->number);
                json_write_string(stdout, p->node);
                fputs(",\"mount_point\":", stdout);
                json_write_string(stdout, p->mount_point);
                printf(",\"diskseq\":%" PRIu64 ",\"reused\":%s}", o->diskseq,
                       o->reused ? "true" : "false");
        }
        fputs("]\n", stdout);
}

/*
 * A partitioned image, attached with partscan: Mount of every partition in number order, one
 * after the other (the daemon runs one Mount or Unmount of a device at a time). Partitions
 * without a file system are skipped, other failures reported and the rest still mounted. On
 * success *ret holds the device with the mount point each partition got ("" for the ones not
 * mounted) and 0 is returned; when nothing could be mounted, our reference is dropped and an
 * exit status returned.
 */
static int mount_partitions(sd_bus *bus, const Opened *o, DeviceInfo *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        size_t n_mounted = 0;
        int status = 0, r;

        r = device_info_get(bus, o->object, &error, &d);
        if (r < 0) {
                if (r == -ENOMEM)
                        status = log_oom();
                else if (!sd_bus_error_is_set(&error))
                        status = log_parse_error(r);
                else
                        status = log_open_error(o->image, &error, r, "GetAll");
                drop_reference(bus, o->object, o->node);
                return status;
        }
        if (!(d.present & PRESENT_PARTITIONS)) {
                drop_reference(bus, o->object, o->node);
                return log_fail(EXIT_FAILURE,
                                "Cannot open %s: it holds a partition table (%s), and this "
                                "loopmgrd does not mount partitions.",
                                o->image, o->pttype);
        }

        for (size_t i = 0; i < d.n_partitions; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                PartitionInfo *p = d.partitions + i;
                const char *mount_point;
                char *copy;

                sd_bus_error_free(&error);
                r = call_mount(bus, o->object, p->number, &error, &reply);
                if (r >= 0)
                        r = sd_bus_message_read(reply, "s", &mount_point);
                if (r >= 0) {
                        copy = strdup(mount_point);
                        if (!copy)
                                return log_oom();
                        free(p->mount_point);
                        p->mount_point = copy;
                        n_mounted++;
                        continue;
                }
                /* Not ours, and not mounted now: close must leave it alone. */
                p->mount_point[0] = '\0';

                if (sd_bus_error_has_name(&error, LOOPMGR_ERROR_NO_FILE_SYSTEM)) {
                        /* Swap, an empty or an encrypted partition: nothing to mount there. */
                        if (isatty(STDERR_FILENO))
                                log_fail(0,
                                         "Not mounting %s: it holds no file system loopmgr "
                                         "mounts.",
                                         p->node);
                        continue;
                }
                if (reply)
                        /* Mounted, but the reply is not what the contract says. */
                        log_parse_error(r);
                else if (sd_bus_error_is_set(&error) && error.message && error.message[0])
                        log_fail(0, "Cannot mount %s: %s", p->node, error.message);
                else
                        log_fail(0, "Cannot mount %s: Mount failed: %s", p->node,
                                 sd_bus_error_is_set(&error) ? error.name : strerror(-r));
                if (status == 0)
                        status = reply ? EXIT_FAILURE : exit_status_from_bus_error(&error, r);
                /* The device went away (detached by someone else): no partition is left. */
                if (error_means_gone(&error))
                        break;
        }

        if (n_mounted == 0) {
                /* The exit status of a whole-device Mount that found no file system. */
                const sd_bus_error no_fs =
                        SD_BUS_ERROR_MAKE_CONST(LOOPMGR_ERROR_NO_FILE_SYSTEM, NULL);

                /* Nobody took our reference over. */
                drop_reference(bus, o->object, o->node);
                if (status != 0)
                        return log_fail(status,
                                        "Cannot open %s: none of its partitions could be "
                                        "mounted.",
                                        o->image);
                return log_fail(exit_status_from_bus_error(&no_fs, -EMEDIUMTYPE),
                                "Cannot open %s: it holds a partition table (%s) and no "
                                "partition with a file system loopmgr mounts.",
                                o->image, o->pttype);
        }

        /* Only what this open mounted: the whole device's mount is not ours. */
        free(d.mount_point);
        d.mount_point = NULL;
        *ret = d;
        d = (DeviceInfo){};
        return 0;
}

int verb_open(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL, *mount_reply = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot_removed = NULL, *slot_changed = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_(device_info_done) DeviceInfo opened = {};
        _cleanup_free_ char *pttype = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *image = args[0], *mount_point;
        bool client = streq_ptr(arg_lifetime, "client");
        Opened o = {.image = image};
        OpenWait wait = {};
        struct stat st;
        int reused, r;

        r = open_backing(image, arg_writable ? O_RDWR : O_RDONLY, &fd);
        if (r == -ENOENT)
                return log_fail(EXIT_NOT_FOUND, "Cannot open %s: no such file.", image);
        if (arg_writable && (r == -EACCES || r == -EPERM || r == -EROFS))
                return log_fail(EXIT_NOT_AUTHORISED,
                                "Cannot open %s writable: %s. Open it without --writable to "
                                "mount it read-only.",
                                image, strerror(-r));
        if (r < 0)
                return log_fail(exit_status_from_local_errno(-r), "Cannot open %s: %s.", image,
                                strerror(-r));

        if (fstat(fd, &st) < 0)
                return log_fail(EXIT_FAILURE, "Cannot open %s: %s.", image, strerror(errno));
        if (S_ISDIR(st.st_mode))
                return log_fail(EXIT_FAILURE,
                                "Cannot open %s: it is a directory, not a disk "
                                "image.",
                                image);
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
                return log_fail(EXIT_FAILURE,
                                "Cannot open %s: it is neither a regular file nor "
                                "a block device.",
                                image);
        if (S_ISREG(st.st_mode) && st.st_size == 0)
                return log_fail(EXIT_FAILURE, "Cannot open %s: the file is empty.", image);

        r = probe_partition_table(fd, &pttype);
        if (r < 0)
                return log_oom();
        o.pttype = pttype;
        /* open has no --partscan: a partitioned image needs the partitions, and the attach
         * options are read from the parsed arguments. */
        if (pttype)
                arg_partscan = true;

        if (client) {
                /* Before Attach: SIGINT and SIGTERM are blocked from here on, and handled by the
                 * event loop that waits once the image is open. */
                r = event_new_with_signals(bus, on_open_signal, &event);
                if (r < 0)
                        return log_fail(EXIT_FAILURE, "Failed to set up the event loop: %s",
                                        strerror(-r));
        }

        r = call_attach(bus, fd, !arg_writable, &error, &reply);
        if (r < 0 && !arg_writable && sd_bus_error_has_name(&error, LOOPMGR_ERROR_OVERLAP) &&
            attach_share_writable(bus, image, &reply) >= 0)
                /* Open writable already (by us or by someone who let us share it): a second,
                 * read-only device would alias it. The mount is that device's. */
                r = 0;
        if (r < 0 && arg_writable && sd_bus_error_has_name(&error, LOOPMGR_ERROR_OVERLAP)) {
                r = log_open_error(image, &error, r, "Attach");
                log_fail(0, "If it is open read-only, 'loopmgrctl close %s' first.", image);
                return r;
        }
        if (r < 0)
                return log_open_error(image, &error, r, "Attach");

        /* The daemon holds its own duplicate now; ours would count as an opener. */
        fd = safe_close(fd);

        r = sd_bus_message_read(reply, "ostb", &o.object, &o.node, &o.diskseq, &reused);
        if (r < 0)
                return log_parse_error(r);
        o.reused = reused;

        if (client) {
                /* Subscribed before Mount: nobody can close it before we listen. A partitioned
                 * device has no mount of its own, so only its going away counts for it. */
                wait.object = o.object;
                r = sd_bus_match_signal(bus, &slot_removed, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                        OBJECT_MANAGER_INTERFACE, "InterfacesRemoved",
                                        on_open_removed, &wait);
                if (r >= 0 && !pttype)
                        r = sd_bus_match_signal(bus, &slot_changed, LOOPMGR_BUS_NAME, o.object,
                                                PROPERTIES_INTERFACE, "PropertiesChanged",
                                                on_open_changed, &wait);
                if (r < 0) {
                        drop_reference(bus, o.object, o.node);
                        return log_fail(EXIT_FAILURE, "Failed to subscribe to signals: %s",
                                        strerror(-r));
                }
        }

        if (pttype) {
                r = mount_partitions(bus, &o, &opened);
                if (r != 0)
                        return r;
                if (arg_json)
                        print_partitions_json(&o, &opened);
                else
                        for (size_t i = 0; i < opened.n_partitions; i++)
                                if (opened.partitions[i].mount_point[0])
                                        printf("%s\n", opened.partitions[i].mount_point);
        } else {
                sd_bus_error_free(&error);
                r = call_mount(bus, o.object, 0, &error, &mount_reply);
                if (r < 0) {
                        int status = log_open_error(image, &error, r, "Mount");

                        /* Only the reference this Attach took: if the device was reused,
                         * whoever attached it first keeps theirs. */
                        drop_reference(bus, o.object, o.node);
                        return status;
                }

                r = sd_bus_message_read(mount_reply, "s", &mount_point);
                if (r < 0)
                        return log_parse_error(r);

                opened.object = strdup(o.object);
                opened.node = strdup(o.node);
                opened.mount_point = strdup(mount_point);
                if (!opened.object || !opened.node || !opened.mount_point)
                        return log_oom();

                if (arg_json) {
                        fputc('{', stdout);
                        json_write_device(stdout, o.node, o.object);
                        fputs(",\"mount_point\":", stdout);
                        json_write_string(stdout, mount_point);
                        printf(",\"diskseq\":%" PRIu64 ",\"reused\":%s}\n", o.diskseq,
                               o.reused ? "true" : "false");
                } else
                        printf("%s\n", mount_point);
        }
        r = flush_stdout();
        if (r != 0 || !client)
                return r;

        return open_wait_client(bus, event, &wait, image, &opened);
}

typedef struct CloseWait {
        const char *object;
        bool gone;
} CloseWait;

static int on_close_removed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        CloseWait *w = userdata;
        const char *object;

        if (sd_bus_message_read(m, "o", &object) >= 0 && streq(object, w->object))
                w->gone = true;
        return 0;
}

/* Dispatches what arrived until w->gone or the deadline; 0, -ETIMEDOUT, or a bus errno. */
static int close_wait(sd_bus *bus, CloseWait *w, uint64_t deadline) {
        int r;

        while (!w->gone) {
                uint64_t n;

                r = sd_bus_process(bus, NULL);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                n = now_usec();
                if (n >= deadline)
                        return -ETIMEDOUT;
                r = sd_bus_wait(bus, deadline - n);
                if (r < 0 && r != -EINTR)
                        return r;
        }
        return 0;
}

/* The mount points close unmounted, in order (pointing into the DeviceInfo), and as one text
 * for messages: "A" or "A, B". */
typedef struct Unmounted {
        const char **items;
        size_t n;
        char *text;
} Unmounted;

static void unmounted_done(Unmounted *u) {
        free(u->items);
        free(u->text);
        *u = (Unmounted){};
}

static int unmounted_join(Unmounted *u) {
        size_t len = 1;
        char *p;

        for (size_t i = 0; i < u->n; i++)
                len += strlen(u->items[i]) + 2;
        u->text = p = malloc(len);
        if (!u->text)
                return -ENOMEM;
        *p = '\0';
        for (size_t i = 0; i < u->n; i++)
                p = stpcpy(stpcpy(p, i > 0 ? ", " : ""), u->items[i]);
        return 0;
}

static int close_print(const DeviceInfo *d, const Unmounted *u, const char *state) {
        if (arg_json) {
                fputc('{', stdout);
                json_write_device(stdout, d->node, d->object);
                fputs(",\"mount_point\":", stdout);
                json_write_string(stdout, u->n > 0 ? u->items[0] : "");
                if (u->n > 1) {
                        fputs(",\"mount_points\":[", stdout);
                        for (size_t i = 0; i < u->n; i++) {
                                if (i > 0)
                                        fputc(',', stdout);
                                json_write_string(stdout, u->items[i]);
                        }
                        fputc(']', stdout);
                }
                fputs(",\"state\":", stdout);
                json_write_string(stdout, state);
                fputs("}\n", stdout);
        }
        return flush_stdout();
}

/*
 * Unmount of every loopmgr mount of d, the whole device's and its partitions', one after the
 * other (the daemon runs one at a time per device), into *u. A single mount fails as close
 * always has ("Cannot close WHAT: ..."); of several, each failure is reported, the others are
 * still unmounted, and one that someone else unmounted in between counts as done. Returns 0
 * or an exit status.
 */
static int unmount_all(sd_bus *bus, const DeviceInfo *d, const char *what, Unmounted *u) {
        size_t n_mounts = 0;
        int status = 0, r;

        for (size_t i = 0; i <= d->n_partitions; i++) {
                const char *mp = i > 0 ? d->partitions[i - 1].mount_point : d->mount_point;

                if (mp && mp[0])
                        n_mounts++;
        }
        u->items = calloc(n_mounts > 0 ? n_mounts : 1, sizeof(char *));
        if (!u->items)
                return log_oom();

        for (size_t i = 0; i <= d->n_partitions; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                const PartitionInfo *p = i > 0 ? d->partitions + i - 1 : NULL;
                const char *mp = p ? p->mount_point : d->mount_point;

                if (!mp || !mp[0])
                        continue;
                r = call_unmount(bus, d->object, p ? p->number : 0, &error);
                if (r >= 0) {
                        u->items[u->n++] = mp;
                        continue;
                }

                if (n_mounts == 1) {
                        if (!sd_bus_error_is_set(&error) || !error.message || !error.message[0])
                                return log_bus_error(&error, r, "Unmount");
                        /* NotMounted: someone closed it in between; Busy names what is in
                         * use. */
                        log_fail(0, "Cannot close %s: %s", what, error.message);
                        if (sd_bus_error_has_name(&error, LOOPMGR_ERROR_NOT_MOUNTED))
                                return EXIT_NOT_FOUND;
                        return exit_status_from_bus_error(&error, r);
                }
                if (sd_bus_error_has_name(&error, LOOPMGR_ERROR_NOT_MOUNTED))
                        continue;
                if (sd_bus_error_is_set(&error) && error.message && error.message[0])
                        log_fail(0, "Cannot unmount %s: %s", mp, error.message);
                else
                        log_fail(0, "Cannot unmount %s: Unmount failed: %s", mp,
                                 sd_bus_error_is_set(&error) ? error.name : strerror(-r));
                if (status == 0)
                        status = exit_status_from_bus_error(&error, r);
        }

        if (unmounted_join(u) < 0)
                return log_oom();
        if (status != 0) {
                /* The device stays: what is still mounted holds it. */
                if (u->n > 0 && !arg_json)
                        printf("Unmounted %s.\n", u->text);
                (void) flush_stdout();
                return status;
        }
        if (u->n == 0)
                return log_fail(EXIT_NOT_FOUND,
                                "Cannot close %s: someone else unmounted it in the meantime.",
                                what);
        return 0;
}

/* Unmount of every loopmgr mount of d, then what became of the device: gone (waited for
 * unless --no-wait), going, or kept by other references. `what` names it in messages (what
 * the user typed). Returns an exit status. */
static int close_device(sd_bus *bus, const DeviceInfo *d, const char *what) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_info_done) DeviceInfo after = {};
        _cleanup_(unmounted_done) Unmounted u = {};
        uint64_t timeout = arg_timeout_usec > 0 ? arg_timeout_usec : CLOSE_TIMEOUT_USEC;
        CloseWait w = {};
        int r;

        /* Before Unmount: the object may go while it answers. */
        w.object = d->object;
        r = sd_bus_match_signal(bus, &slot, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                OBJECT_MANAGER_INTERFACE, "InterfacesRemoved", on_close_removed,
                                &w);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Failed to subscribe to signals: %s", strerror(-r));

        r = unmount_all(bus, d, what, &u);
        if (r != 0)
                return r;

        /* What became of the device: gone, going, or kept by other references. */
        r = close_wait(bus, &w, 0);
        if (r < 0 && r != -ETIMEDOUT)
                return log_fail(EXIT_FAILURE, "Lost the connection to the bus: %s", strerror(-r));
        if (!w.gone) {
                sd_bus_error_free(&error);
                r = device_info_get(bus, d->object, &error, &after);
                if (r < 0 && error_means_gone(&error))
                        w.gone = true;
                else if (r == -ENOMEM)
                        return log_oom();
                else if (r < 0)
                        return log_bus_error(&error, r, "GetAll");
        }

        if (!w.gone &&
            (after.references > 0 && !streq_ptr(after.state, LOOPMGR_STATE_DETACH_PENDING))) {
                if (!arg_json)
                        printf("Unmounted %s; %s stays attached: %" PRIu32 " other "
                               "reference%s hold%s it.\n",
                               u.text, d->node, after.references, after.references == 1 ? "" : "s",
                               after.references == 1 ? "s" : "");
                return close_print(d, &u, LOOPMGR_STATE_ATTACHED);
        }

        if (!w.gone && arg_no_wait) {
                if (!arg_json)
                        printf("Unmounted %s; %s is being detached.\n", u.text, d->node);
                return close_print(d, &u, LOOPMGR_STATE_PENDING);
        }

        r = close_wait(bus, &w, now_usec() + timeout);
        if (r == -ETIMEDOUT) {
                close_print(d, &u, LOOPMGR_STATE_PENDING);
                return log_fail(EXIT_TIMEOUT,
                                "Unmounted %s, but %s was not detached within %" PRIu64 " s: "
                                "something still has it open ('loopmgrctl status %s' shows "
                                "what). loopmgrd detaches it when that goes.",
                                u.text, d->node, (timeout + USEC_PER_SEC - 1) / USEC_PER_SEC,
                                d->node);
        }
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Lost the connection to the bus: %s", strerror(-r));

        if (!arg_json)
                printf("Unmounted %s and detached %s.\n", u.text, d->node);
        return close_print(d, &u, LOOPMGR_STATE_DETACHED);
}

int verb_close(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        _cleanup_free_ char *path = NULL, *object = NULL;
        const char *arg = args[0];
        struct stat st;
        bool by_dir, inaccessible = false;
        int r;

        /* A directory is a mount point; anything else names an image. A directory we may not
         * enter (another user's /run/media/<user>, 0750) is matched as it is written. */
        if (stat(arg, &st) >= 0) {
                by_dir = S_ISDIR(st.st_mode);
                path = by_dir ? realpath(arg, NULL) : make_absolute(arg);
        } else if (errno == EACCES) {
                size_t l;

                by_dir = inaccessible = true;
                path = make_absolute(arg);
                /* "DIR/" names DIR; the daemon's mount points have no trailing slash. */
                for (l = path ? strlen(path) : 0; l > 1 && path[l - 1] == '/'; l--)
                        path[l - 1] = 0;
        } else if (errno == ENOENT)
                return log_fail(EXIT_NOT_FOUND, "Cannot close %s: no such file or directory.", arg);
        else
                return log_fail(exit_status_from_local_errno(errno), "Cannot close %s: %s.", arg,
                                strerror(errno));
        if (!path)
                return errno == ENOMEM ? log_oom()
                                       : log_fail(EXIT_FAILURE, "Cannot close %s: %s.", arg,
                                                  strerror(errno));

        if (by_dir) {
                r = find_by_mount_point(bus, path, &d);
                if (r == -ENOMEM)
                        return log_oom();
                if (r > 0)
                        return r;
                if (r == -ENOENT && inaccessible)
                        return log_fail(EXIT_NOT_AUTHORISED,
                                        "Cannot close %s: %s, and it is not a mount point of "
                                        "loopmgr's.",
                                        arg, strerror(EACCES));
                if (r == -ENOENT) {
                        _cleanup_free_ char *target = NULL, *source = NULL;

                        if (ctl_find_mount(path, &target, &source) >= 0 && streq(target, path))
                                return log_fail(EXIT_NOT_FOUND,
                                                "Cannot close %s: it is mounted from %s, but not "
                                                "by loopmgr; use umount(8).",
                                                path, source ?: "something");
                        return log_fail(EXIT_NOT_FOUND,
                                        "Cannot close %s: it is not a mount point of loopmgr's "
                                        "(those are under /run/media/<user>/).",
                                        path);
                }
        } else {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                const char *o;

                r = sd_bus_call_method(bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                       LOOPMGR_MANAGER_INTERFACE, "GetDevice", &error, &reply, "s",
                                       path);
                if (r < 0 && sd_bus_error_has_name(&error, LOOPMGR_ERROR_NOT_FOUND))
                        return log_fail(EXIT_NOT_FOUND, "Cannot close %s: it is not open.", arg);
                if (r < 0)
                        return log_bus_error(&error, r, "GetDevice");
                r = sd_bus_message_read(reply, "o", &o);
                if (r < 0)
                        return log_parse_error(r);
                object = strdup(o);
                if (!object)
                        return log_oom();

                r = device_info_get(bus, object, &error, &d);
                if (r < 0 && error_means_gone(&error))
                        return log_fail(EXIT_NOT_FOUND, "Cannot close %s: it is not open.", arg);
                if (r == -ENOMEM)
                        return log_oom();
                if (r < 0)
                        return log_bus_error(&error, r, "GetAll");
                if (!device_info_is_mounted(&d))
                        return log_fail(EXIT_NOT_FOUND,
                                        "Cannot close %s: %s shows it, but loopmgr has not "
                                        "mounted it ('loopmgrctl detach %s' drops a reference).",
                                        arg, strempty(d.node), strempty(d.node));
        }

        return close_device(bus, &d, arg);
}
