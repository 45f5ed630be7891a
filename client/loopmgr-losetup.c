/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * loopmgr-losetup: losetup(8)'s command line and output (util-linux 2.38), carried out by
 * loopmgrd, so that scripts keep working where only the daemon may configure loop devices.
 *
 * Configuration goes through the daemon (Attach with the caller's fd, Detach, SetCapacity);
 * listings come from one GetManagedObjects call and are printed with libsmartcols, as losetup
 * prints them. Differences that the daemon imposes (no aliases) are in the man page.
 */

#include <ctype.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <libsmartcols.h>
#include <linux/loop.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <systemd/sd-bus.h>

#include "ctl-devices.h"
#include "ctl-util.h"
#include "loopmgr-bus.h"
#include "losetup.h"

/* The daemon's own udev/teardown timeout plus headroom: requests wait their turn in it. */
#define CALL_TIMEOUT_USEC (LOOPMGR_DEFAULT_TIMEOUT_USEC + 60ULL * 1000000ULL)

typedef enum Action {
        ACT_NONE,
        ACT_CREATE,
        ACT_DELETE,
        ACT_DELETE_ALL,
        ACT_SHOW,
        ACT_SHOW_ONE,
        ACT_FIND_FREE,
        ACT_SET_CAPACITY,
        ACT_SET_DIRECT_IO,
        ACT_SET_BLOCKSIZE,
} Action;

Column arg_columns[_COL_MAX * 2];
size_t arg_n_columns;
bool arg_no_headings, arg_raw, arg_json, arg_list, arg_nooverlap, arg_show;
bool arg_read_only, arg_partscan, arg_has_offset, arg_has_sizelimit;
bool arg_set_dio, arg_use_dio, arg_set_blocksize;
uint64_t arg_offset, arg_sizelimit, arg_blocksize;

__attribute__((noreturn)) static void try_help(void) {
        fprintf(stderr, "Try '%s --help' for more information.\n", program_invocation_short_name);
        exit(EXIT_FAILURE);
}

/* ---- parsing ------------------------------------------------------------------------------ */

/* util-linux's strtosize(): a number with an optional K/M/G/T/P/E suffix, binary by default
 * or with "iB", decimal with "B" (KB = 1000). Returns 0 or -EINVAL/-ERANGE. */
static int parse_size(const char *s, uint64_t *ret) {
        static const char suffixes[] = "KMGTPE";
        unsigned long long v;
        const char *p, *q;
        uint64_t base = 1024, mult = 1;
        char *end;

        if (!s || !*s || *s == '-' || isspace((unsigned char) *s))
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 0);
        if (errno != 0)
                return -errno;
        if (end == s)
                return -EINVAL;
        if (*end) {
                p = strchr(suffixes, toupper((unsigned char) *end));
                if (!p)
                        return -EINVAL;
                q = end + 1;
                if (q[0] == 'i' && q[1] == 'B' && !q[2])
                        ;
                else if (q[0] == 'B' && !q[1])
                        base = 1000;
                else if (q[0])
                        return -EINVAL;
                for (long n = p - suffixes + 1; n > 0; n--) {
                        if (mult > UINT64_MAX / base)
                                return -ERANGE;
                        mult *= base;
                }
        }
        if (v > UINT64_MAX / mult)
                return -ERANGE;
        *ret = (uint64_t) v * mult;
        return 0;
}

static uint64_t parse_size_or_exit(const char *s, const char *what) {
        uint64_t v = 0;
        int r;

        r = parse_size(s, &v);
        if (r < 0) {
                warn_errno(-r, "%s: '%s'", what, s);
                exit(EXIT_FAILURE);
        }
        return v;
}

/* ---- actions ------------------------------------------------------------------------------ */

static void warn_size(const char *file) {
        uint64_t size = arg_sizelimit;
        struct stat st;

        if (!size) {
                if (stat(file, &st) < 0 || S_ISBLK(st.st_mode))
                        return;
                size = (uint64_t) st.st_size;
                if (arg_has_offset)
                        size -= arg_offset;
        }
        if (size < 512)
                warnx_("%s: Warning: file is smaller than 512 bytes; the loop device may be "
                       "useless or invisible for system tools.",
                       file);
        else if (size % 512)
                warnx_("%s: Warning: file does not fit into a 512-byte sector; the end of the "
                       "file will be ignored.",
                       file);
}

/* losetup --nooverlap's test against one device over the same file: 2 for the same range, 1
 * for an overlap, 0 for none. */
static int range_conflict(const DeviceInfo *d) {
        if (d->size_limit == arg_sizelimit && d->offset == arg_offset)
                return 2;
        if (d->size_limit != 0 && arg_offset >= d->offset + d->size_limit)
                return 0;
        if (arg_sizelimit != 0 && arg_offset + arg_sizelimit <= d->offset)
                return 0;
        return 1;
}

/* The first device over file that conflicts (losetup's loopcxt_find_overlap()). */
static int find_overlap(DeviceList *l, const char *file, const DeviceInfo **ret) {
        list_filter_file(l, file, false);
        for (size_t i = 0; i < l->n; i++) {
                int c = range_conflict(l->items + i);

                if (c > 0) {
                        *ret = l->items + i;
                        return c;
                }
        }
        return 0;
}

static int append_options(sd_bus_message *m, const char *device, bool read_only) {
        int r;

        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        if (arg_has_offset) {
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_OFFSET, "t", arg_offset);
                if (r < 0)
                        return r;
        }
        if (arg_sizelimit) {
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SIZE_LIMIT, "t", arg_sizelimit);
                if (r < 0)
                        return r;
        }
        if (read_only) {
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_READ_ONLY, "b", 1);
                if (r < 0)
                        return r;
        }
        if (arg_partscan) {
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_PARTSCAN, "b", 1);
                if (r < 0)
                        return r;
        }
        if (arg_set_blocksize) {
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SECTOR_SIZE, "u",
                                          (uint32_t) arg_blocksize);
                if (r < 0)
                        return r;
        }
        if (device) {
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_DEVICE, "s", device);
                if (r < 0)
                        return r;
        }
        /* losetup uses direct I/O only when asked to. Shared: an identical device comes back
         * (reused), which do_create() accepts only for --nooverlap; exclusive would also refuse
         * a device stacked on a loop device, which losetup makes. */
        r = sd_bus_message_append(m, "{sv}{sv}{sv}", LOOPMGR_OPT_DIRECT_IO, "s",
                                  arg_use_dio ? "on" : "off", LOOPMGR_OPT_SHARING, "s", "shared",
                                  LOOPMGR_OPT_LIFETIME, "s", "persistent");
        if (r < 0)
                return r;
        return sd_bus_message_close_container(m);
}

/* Detach of the one reference of ours that Attach just gave us. */
static void drop_reference(sd_bus *bus, const char *object, const char *node) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                               LOOPMGR_MANAGER_INTERFACE, "Detach", &error, NULL, "oa{sv}", object,
                               0);
        if (r < 0) {
                warn_errno(bus_errno(&error, r), "%s: failed to drop the reference", node);
                warn_daemon(&error);
        }
}

/* Whether the kernel has a binding on device ("loopN" or "/dev/loopN"). */
static bool device_bound(const char *device) {
        char path[64];

        if (strncmp(device, "/dev/", 5) == 0)
                device += 5;
        (void) snprintf(path, sizeof(path), "/sys/block/%s/loop", device);
        return access(path, F_OK) >= 0;
}

/* Attach for -f FILE (name NULL) and DEV FILE (name as losetup prints it, device what the
 * daemon's "device" option gets). */
static int do_create(sd_bus *bus, const char *name, const char *device, const char *file) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(device_list_done) DeviceList list = {};
        _cleanup_close_ int fd = -EBADF;
        const DeviceInfo *conflict = NULL;
        const char *node = NULL, *object = NULL;
        bool read_only = arg_read_only;
        int reused = 0;
        int r, c = 0, err;

        if (arg_set_blocksize && arg_blocksize != 512 && arg_blocksize != 1024 &&
            arg_blocksize != 2048 && arg_blocksize != 4096) {
                warn_errno(EINVAL, "%s: failed to set up loop device", file);
                return EXIT_FAILURE;
        }

        if (arg_nooverlap) {
                if (list_devices(bus, &list) < 0) {
                        warnx_("failed to inspect loop devices");
                        return EXIT_FAILURE;
                }
                c = find_overlap(&list, file, &conflict);
                /* With a device named, any conflict is one; without, the same range is
                 * reused. */
                if (c == 1 || (c == 2 && name)) {
                        warnx_("%s: overlapping loop device exists", file);
                        return EXIT_FAILURE;
                }
                if (c == 2 && conflict->read_only && !arg_read_only) {
                        warnx_("%s: overlapping read-only loop device exists", file);
                        return EXIT_FAILURE;
                }
        }

        /* losetup -L -r hands out an identical writable device; the daemon reuses a device
         * only for a request of the same mode, so ask for a writable one then. */
        if (c == 2 && arg_read_only && !conflict->read_only) {
                fd = open(file, O_RDWR | O_CLOEXEC | O_NOCTTY);
                read_only = fd < 0;
        }
        /* losetup opens read-write unless told otherwise, read-only when it may not write. */
        if (fd < 0 && !read_only)
                fd = open(file, O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (fd < 0 && (read_only || errno == EROFS || errno == EACCES || errno == EPERM))
                fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                warn_errno(errno, "%s: failed to use backing file", file);
                return EXIT_FAILURE;
        }

        /* A named device that is unbound but busy for a moment (udev probing it after a
         * teardown, the teardown itself) would be free for the kernel's LOOP_CONFIGURE in
         * losetup soon after: wait for it, up to 5 s. */
        for (unsigned attempt = 0;; attempt++) {
                m = sd_bus_message_unref(m);
                reply = sd_bus_message_unref(reply);
                sd_bus_error_free(&error);

                r = sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                                   LOOPMGR_MANAGER_INTERFACE, "Attach");
                if (r >= 0)
                        r = sd_bus_message_append(m, "h", fd);
                if (r >= 0)
                        r = append_options(m, name ? device : NULL, read_only);
                if (r < 0) {
                        warn_errno(-r, "%s: failed to set up loop device", file);
                        return EXIT_FAILURE;
                }
                r = sd_bus_call(bus, m, CALL_TIMEOUT_USEC, &error, &reply);
                if (r >= 0 || !name || attempt >= 50 || bus_errno(&error, r) != EBUSY ||
                    device_bound(device))
                        break;
                (void) usleep(100 * 1000);
        }
        if (r < 0) {
                err = bus_errno(&error, r);
                if (arg_nooverlap && err == EADDRINUSE)
                        warnx_("%s: overlapping loop device exists", file);
                else if (arg_nooverlap && c == 2)
                        warn_errno(err, "%s: failed to re-use loop device", file);
                else
                        /* losetup names the device when it could not open it. */
                        warn_errno(err == EADDRINUSE ? EBUSY : err,
                                   "%s: failed to set up loop device",
                                   name && err == ENODEV ? name : file);
                warn_daemon(&error);
                return EXIT_FAILURE;
        }
        r = sd_bus_message_read(reply, "ostb", &object, &node, NULL, &reused);
        if (r < 0) {
                warn_errno(-r, "failed to parse the reply of loopmgrd");
                return EXIT_FAILURE;
        }
        if (reused && !arg_nooverlap) {
                /* losetup would make a second device over these bytes, an alias: refuse, and
                 * give back the reference the daemon just handed us. */
                warn_errno(EBUSY, "%s: failed to set up loop device", file);
                warnx_("%s exposes exactly these bytes already; a second device over them would "
                       "be an alias (--nooverlap reuses it).",
                       node);
                drop_reference(bus, object, node);
                return EXIT_FAILURE;
        }

        if (arg_show)
                printf("%s\n", name ?: node);
        warn_size(file);
        return 0;
}

static int detach_one(sd_bus *bus, DeviceList *l, const char *arg) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_free_ char *name = NULL;
        const DeviceInfo *d;
        dev_t devnum;
        int r;

        if (!is_loop_node(arg, &devnum)) {
                warn_errno(ENODEV, "%s: failed to use device", arg);
                return -ENODEV;
        }
        name = device_arg_name(arg);
        if (!name)
                return -ENOMEM;
        d = find_by_devnum(l, devnum);
        if (!d) {
                /* What LOOP_CLR_FD says of an unbound device. */
                warn_errno(ENXIO, "%s: detach failed", name);
                return -ENXIO;
        }

        r = sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Detach");
        if (r >= 0)
                r = sd_bus_message_append(m, "o", d->object);
        /* Root detaches the device whoever holds it, as LOOP_CLR_FD would; others drop their
         * own reference (the daemon refuses the rest unless polkit says yes). */
        if (r >= 0)
                r = geteuid() == 0 ? sd_bus_message_append(m, "a{sv}", 1,
                                                           LOOPMGR_OPT_ALL_REFERENCES, "b", 1)
                                   : sd_bus_message_append(m, "a{sv}", 0);
        if (r >= 0)
                r = sd_bus_call(bus, m, CALL_TIMEOUT_USEC, &error, &reply);
        if (r < 0) {
                warn_errno(bus_errno(&error, r), "%s: detach failed", name);
                warn_daemon(&error);
                return r;
        }
        return 0;
}

static int do_set_capacity(sd_bus *bus, DeviceList *l, const char *name, const DeviceInfo *d) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        if (!d) {
                warn_errno(ENXIO, "%s: set capacity failed", name);
                return EXIT_FAILURE;
        }
        r = sd_bus_call_method(bus, LOOPMGR_BUS_NAME, d->object, LOOPMGR_DEVICE_INTERFACE,
                               "SetCapacity", &error, NULL, "a{sv}", 0);
        if (r < 0) {
                warn_errno(bus_errno(&error, r), "%s: set capacity failed", name);
                warn_daemon(&error);
                return EXIT_FAILURE;
        }
        return 0;
}

/* ---- command line ------------------------------------------------------------------------- */

static void help(void) {
        printf("\nUsage:\n"
               " %1$s [options] [<loopdev>]\n"
               " %1$s [options] -f | <loopdev> <file>\n"
               "\nSet up and control loop devices through loopmgrd.\n"
               "\nOptions:\n"
               " -a, --all                     list all used devices\n"
               " -d, --detach <loopdev>...     detach one or more devices\n"
               " -D, --detach-all              detach all used devices\n"
               " -f, --find                    find first unused device\n"
               " -c, --set-capacity <loopdev>  resize the device\n"
               " -j, --associated <file>       list all devices associated with <file>\n"
               " -L, --nooverlap               avoid possible conflict between devices\n"
               "\n"
               " -o, --offset <num>            start at offset <num> into file\n"
               "     --sizelimit <num>         device is limited to <num> bytes of the file\n"
               " -b, --sector-size <num>       set the logical sector size to <num>\n"
               " -P, --partscan                create a partitioned loop device\n"
               " -r, --read-only               set up a read-only loop device\n"
               "     --direct-io[=<on|off>]    open backing file with O_DIRECT\n"
               "     --show                    print device name after setup (with -f)\n"
               " -v, --verbose                 verbose mode\n"
               "\n"
               " -J, --json                    use JSON --list output format\n"
               " -l, --list                    list info about all or specified (default)\n"
               " -n, --noheadings              don't print headings for --list output\n"
               " -O, --output <cols>           specify columns to output for --list\n"
               "     --output-all              output all columns\n"
               "     --raw                     use raw --list output format\n"
               "\n"
               " -h, --help                    display this help\n"
               " -V, --version                 display version\n"
               "\nAvailable output columns:\n",
               program_invocation_short_name);
        for (size_t i = 0; i < _COL_MAX; i++)
                printf(" %12s  %s\n", columns_info[i].name, columns_info[i].help);
        printf("\nFor more details see loopmgr-losetup(8).\n");
}

enum {
        OPT_SIZELIMIT = 0x100,
        OPT_SHOW,
        OPT_RAW,
        OPT_DIO,
        OPT_OUTPUT_ALL,
};

static const struct option longopts[] = {
        {"all", no_argument, NULL, 'a'},
        {"set-capacity", required_argument, NULL, 'c'},
        {"detach", required_argument, NULL, 'd'},
        {"detach-all", no_argument, NULL, 'D'},
        {"find", no_argument, NULL, 'f'},
        {"nooverlap", no_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {"associated", required_argument, NULL, 'j'},
        {"json", no_argument, NULL, 'J'},
        {"list", no_argument, NULL, 'l'},
        {"sector-size", required_argument, NULL, 'b'},
        {"noheadings", no_argument, NULL, 'n'},
        {"offset", required_argument, NULL, 'o'},
        {"output", required_argument, NULL, 'O'},
        {"output-all", no_argument, NULL, OPT_OUTPUT_ALL},
        {"sizelimit", required_argument, NULL, OPT_SIZELIMIT},
        {"partscan", no_argument, NULL, 'P'},
        {"read-only", no_argument, NULL, 'r'},
        {"direct-io", optional_argument, NULL, OPT_DIO},
        {"raw", no_argument, NULL, OPT_RAW},
        {"show", no_argument, NULL, OPT_SHOW},
        {"verbose", no_argument, NULL, 'v'},
        {"version", no_argument, NULL, 'V'},
        {},
};

/* losetup's groups of mutually exclusive options (util-linux's err_exclusive_options()). */
static const int exclusive[][7] = {
        {'D', 'a', 'c', 'd', 'f', 'j'},
        {'D', 'c', 'd', 'f', 'l'},
        {'D', 'c', 'd', 'f', 'O'},
        {'J', OPT_RAW},
};

static void check_exclusive(int c, int seen[]) {
        for (size_t g = 0; g < ELEMENTSOF(exclusive); g++)
                for (size_t k = 0; exclusive[g][k]; k++) {
                        if (exclusive[g][k] != c)
                                continue;
                        if (seen[g] == 0)
                                seen[g] = c;
                        else if (seen[g] != c) {
                                fprintf(stderr, "%s: mutually exclusive arguments:",
                                        program_invocation_short_name);
                                for (size_t j = 0; exclusive[g][j]; j++) {
                                        const struct option *o = NULL;

                                        for (o = longopts; o->name; o++)
                                                if (o->val == exclusive[g][j])
                                                        break;
                                        if (o->name)
                                                fprintf(stderr, " --%s", o->name);
                                        else
                                                fprintf(stderr, " -%c", exclusive[g][j]);
                                }
                                fputc('\n', stderr);
                                exit(EXIT_FAILURE);
                        }
                        break;
                }
}

static int run(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(device_list_done) DeviceList list = {};
        _cleanup_free_ char *dev_name = NULL;
        const char *dev_arg = NULL, *file = NULL, *outarg = NULL;
        const DeviceInfo *d = NULL;
        Action act = ACT_NONE;
        int seen[ELEMENTSOF(exclusive)] = {};
        int c, r, res = 0;
        dev_t devnum;

        while ((c = getopt_long(argc, argv, "ab:c:d:Dfhj:JlLno:O:PrvV", longopts, NULL)) != -1) {
                check_exclusive(c, seen);
                switch (c) {
                case 'a':
                        act = ACT_SHOW;
                        break;
                case 'b':
                        arg_set_blocksize = true;
                        arg_blocksize =
                                parse_size_or_exit(optarg, "failed to parse logical block size");
                        break;
                case 'c':
                case 'd':
                        act = c == 'c' ? ACT_SET_CAPACITY : ACT_DELETE;
                        if (!is_loop_node(optarg, NULL)) {
                                warn_errno(ENODEV, "%s: failed to use device", optarg);
                                return EXIT_FAILURE;
                        }
                        dev_arg = optarg;
                        break;
                case 'D':
                        act = ACT_DELETE_ALL;
                        break;
                case 'f':
                        act = ACT_FIND_FREE;
                        break;
                case 'J':
                        arg_json = true;
                        break;
                case 'j':
                        act = ACT_SHOW;
                        file = optarg;
                        break;
                case 'l':
                        arg_list = true;
                        break;
                case 'L':
                        arg_nooverlap = true;
                        break;
                case 'n':
                        arg_no_headings = true;
                        break;
                case OPT_RAW:
                        arg_raw = true;
                        break;
                case 'o':
                        arg_offset = parse_size_or_exit(optarg, "failed to parse offset");
                        arg_has_offset = true;
                        break;
                case 'O':
                        outarg = optarg;
                        arg_list = true;
                        break;
                case OPT_OUTPUT_ALL:
                        for (arg_n_columns = 0; arg_n_columns < _COL_MAX; arg_n_columns++)
                                arg_columns[arg_n_columns] = (Column) arg_n_columns;
                        break;
                case 'P':
                        arg_partscan = true;
                        break;
                case 'r':
                        arg_read_only = true;
                        break;
                case OPT_SHOW:
                        arg_show = true;
                        break;
                case OPT_DIO:
                        arg_set_dio = arg_use_dio = true;
                        if (optarg && streq(optarg, "off"))
                                arg_use_dio = false;
                        else if (optarg && !streq(optarg, "on")) {
                                warnx_("argument error: '%s'", optarg);
                                return EXIT_FAILURE;
                        }
                        break;
                case 'v':
                        break;
                case OPT_SIZELIMIT:
                        arg_sizelimit = parse_size_or_exit(optarg, "failed to parse size");
                        arg_has_sizelimit = true;
                        break;
                case 'h':
                        help();
                        return 0;
                case 'V':
                        printf("%s from loopmgr %s (util-linux 2.38 losetup interface)\n",
                               program_invocation_short_name, LOOPMGR_VERSION);
                        return 0;
                default:
                        try_help();
                }
        }

        /* The defaults of losetup: no arguments, or only --raw/--json, is --list --all. */
        if (argc == 1 || (act == ACT_NONE && argc == 2 && (arg_raw || arg_json))) {
                act = ACT_SHOW;
                arg_list = true;
        }
        if (arg_list && arg_n_columns == 0) {
                static const Column defaults[] = {COL_NAME, COL_SIZELIMIT, COL_OFFSET, COL_AUTOCLR,
                                                  COL_RO,   COL_BACK_FILE, COL_DIO,    COL_LOGSEC};
                for (size_t i = 0; i < ELEMENTSOF(defaults); i++)
                        arg_columns[arg_n_columns++] = defaults[i];
        }

        if (act == ACT_FIND_FREE && optind < argc) {
                act = ACT_CREATE;
                file = argv[optind++];
                if (optind < argc) {
                        warnx_("unexpected arguments");
                        return EXIT_FAILURE;
                }
        }
        if (arg_list && act == ACT_NONE && optind == argc)
                act = ACT_SHOW;
        if (act == ACT_NONE && optind + 1 == argc) {
                if (arg_set_dio) {
                        act = ACT_SET_DIRECT_IO;
                        arg_use_dio = false; /* only a setup option from here on */
                } else if (arg_set_blocksize)
                        act = ACT_SET_BLOCKSIZE;
                else
                        act = ACT_SHOW_ONE;
                dev_arg = argv[optind++];
                if (!is_loop_node(dev_arg, NULL)) {
                        warn_errno(ENODEV, "%s: failed to use device", dev_arg);
                        return EXIT_FAILURE;
                }
        }
        if (act == ACT_NONE) {
                act = ACT_CREATE;
                if (optind >= argc) {
                        warnx_("no loop device specified");
                        return EXIT_FAILURE;
                }
                dev_arg = argv[optind++];
                if (optind >= argc) {
                        warnx_("no file specified");
                        return EXIT_FAILURE;
                }
                file = argv[optind++];
        }

        if (act != ACT_CREATE &&
            (arg_sizelimit || arg_read_only || arg_partscan || arg_use_dio || arg_show)) {
                warnx_("the options %s are allowed during loop device setup only",
                       "--{sizelimit,partscan,read-only,show}");
                return EXIT_FAILURE;
        }
        if (arg_has_offset && act != ACT_CREATE && (act != ACT_SHOW || !file)) {
                warnx_("the option --offset is not allowed in this context");
                return EXIT_FAILURE;
        }
        if (outarg && parse_columns(outarg) < 0)
                return EXIT_FAILURE;

        if (dev_arg) {
                dev_name = device_arg_name(dev_arg);
                if (!dev_name) {
                        warnx_("out of memory");
                        return EXIT_FAILURE;
                }
        }

        /* Nothing below -f needs the daemon. */
        if (act == ACT_FIND_FREE) {
                unsigned n = 0;

                r = find_free(&n);
                if (r < 0) {
                        warn_errno(-r, "cannot find an unused loop device");
                        return EXIT_FAILURE;
                }
                printf("/dev/loop%u\n", n);
                return 0;
        }
        if (act == ACT_SET_DIRECT_IO || act == ACT_SET_BLOCKSIZE) {
                warnx_("%s: changing the %s of a bound device is not supported by loopmgrd; "
                       "detach it and set it up again",
                       dev_name, act == ACT_SET_DIRECT_IO ? "direct I/O mode" : "sector size");
                return EXIT_FAILURE;
        }

        r = sd_bus_open_system(&bus);
        if (r >= 0)
                r = sd_bus_error_add_map(loopmgr_error_map);
        if (r < 0) {
                warn_errno(-r, "failed to connect to the system bus");
                return EXIT_FAILURE;
        }

        if (act == ACT_CREATE) {
                _cleanup_free_ char *device = NULL;

                /* A node that does not exist yet names the device the daemon creates. */
                if (dev_arg && is_loop_node(dev_arg, &devnum) &&
                    asprintf(&device, "loop%u", minor(devnum)) < 0) {
                        warnx_("out of memory");
                        return EXIT_FAILURE;
                }
                return do_create(bus, dev_name, device ?: dev_name, file);
        }

        if (list_devices(bus, &list) < 0)
                return EXIT_FAILURE;

        switch (act) {
        case ACT_DELETE:
                res += detach_one(bus, &list, dev_arg) < 0;
                for (; optind < argc; optind++)
                        res += detach_one(bus, &list, argv[optind]) < 0;
                break;
        case ACT_DELETE_ALL:
                for (size_t i = 0; i < list.n; i++)
                        res += detach_one(bus, &list, list.items[i].node) < 0;
                break;
        case ACT_SHOW:
                if (file)
                        list_filter_file(&list, file, arg_has_offset);
                if (arg_list)
                        res = show_table(&list, NULL, NULL) < 0;
                else
                        for (size_t i = 0; i < list.n; i++)
                                print_device_line(list.items + i, list.items[i].node);
                break;
        case ACT_SHOW_ONE:
                d = lookup_device(&list, dev_arg);
                if (!d && arg_list) {
                        /* losetup lists an unbound device with what sysfs has of it. */
                        _cleanup_(device_info_done) DeviceInfo u = {};

                        r = unbound_device_info(dev_arg, dev_name, &u);
                        if (r < 0) {
                                warn_errno(-r, "%s", dev_name);
                                return EXIT_FAILURE;
                        }
                        res = show_table(&list, &u, dev_name) < 0;
                        break;
                }
                if (!d) {
                        /* What losetup says: the sysfs backing_file is missing. */
                        warn_errno(ENOENT, "%s", dev_name);
                        return EXIT_FAILURE;
                }
                if (arg_list)
                        res = show_table(&list, d, dev_name) < 0;
                else
                        print_device_line(d, dev_name);
                break;
        case ACT_SET_CAPACITY:
                return do_set_capacity(bus, &list, dev_name, lookup_device(&list, dev_arg));
        default:
                warnx_("bad usage");
                try_help();
        }

        return res ? EXIT_FAILURE : 0;
}

int main(int argc, char *argv[]) {
        int r = run(argc, argv);

        if (fflush(stdout) != 0 || ferror(stdout)) {
                warn_errno(errno, "write error");
                return EXIT_FAILURE;
        }
        return r;
}
