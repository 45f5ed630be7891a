/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * loopmgrctl: the command line client of loopmgrd (SPEC §8).
 *
 * Every verb is a thin layer over one or two D-Bus calls; all decisions (aliases, sharing,
 * authorisation, deferred teardown) are the daemon's. The client only opens the backing file
 * itself for attach, so that a user can attach exactly what they can open, and maps the
 * daemon's error names to exit codes through loopmgr_error_map.
 *
 * Verb functions and their helpers return an exit status (0, or one of the EXIT_* codes
 * below) and print their own error message; only main() turns it into the process status.
 */

#include <ctype.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/major.h>
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
#include "ctl-mount.h"
#include "ctl-output.h"
#include "ctl-util.h"
#include "loopmgr-bus.h"

/* Headroom over the daemon's own udev/teardown timeout for the D-Bus call itself: requests are
 * serialised in the daemon, so ours may wait behind others before its timer starts. */
#define CALL_MARGIN_USEC (60 * USEC_PER_SEC)
/* The daemon appearing on or leaving the bus. */
#define MATCH_DAEMON_OWNER_CHANGED                                                                 \
        "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"                \
        "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='" LOOPMGR_BUS_NAME "'"

/* Options, as bits so that each verb can refuse the ones that mean nothing to it. */
typedef enum OptionFlag {
        OPT_OFFSET = 1 << 0,
        OPT_SIZE_LIMIT = 1 << 1,
        OPT_READ_ONLY = 1 << 2,
        OPT_PARTSCAN = 1 << 3,
        OPT_DIRECT_IO = 1 << 4,
        OPT_SECTOR_SIZE = 1 << 5,
        OPT_EXCLUSIVE = 1 << 6,
        OPT_LIFETIME = 1 << 7,
        OPT_NO_WAIT = 1 << 8,
        OPT_TIMEOUT = 1 << 9,
        OPT_WAIT = 1 << 10,
        OPT_RECURSIVE = 1 << 11,
        OPT_ALL_REFERENCES = 1 << 12,
        OPT_JSON = 1 << 13,
        OPT_NO_LEGEND = 1 << 14,
        OPT_OPTIONS = 1 << 15,
        OPT_TYPES = 1 << 16,
        OPT_VERBOSE = 1 << 17,
        OPT_WRITABLE = 1 << 18,
        _OPT_COUNT = 19,
} OptionFlag;

static const char *const option_flag_names[_OPT_COUNT] = {
        "--offset",      "--size-limit", "--read-only",      "--partscan", "--direct-io",
        "--sector-size", "--exclusive",  "--lifetime",       "--no-wait",  "--timeout",
        "--wait",        "--recursive",  "--all-references", "--json",     "--no-legend",
        "--options",     "--types",      "--verbose",        "--writable",
};

/* -o is --offset for every command but mount, where it is mount(8)'s -o: the values are kept
 * in command-line order until the command is known. */
typedef struct OArg {
        const char *value;
        bool options; /* given as --options, which is never an offset */
} OArg;

static unsigned arg_given;
static uint64_t arg_offset;
static uint64_t arg_size_limit;
static bool arg_read_only;
static bool arg_partscan;
static const char *arg_direct_io;
static uint32_t arg_sector_size;
static bool arg_exclusive;
const char *arg_lifetime;
bool arg_no_wait;
uint64_t arg_timeout_usec;
static bool arg_wait;
static bool arg_recursive;
static bool arg_all_references;
bool arg_json;
bool arg_writable;
static bool arg_no_ask_password;
static bool arg_no_legend;
static char *arg_mount_options; /* the -o/--options of mount, joined with commas */
static const char *arg_fstype;
static bool arg_verbose;
static OArg *arg_o;
static size_t arg_n_o;
/* Derived from stdin being a terminal and --no-ask-password: may polkit ask the user? */
static bool arg_interactive;

/* ---- messages and exit statuses ---------------------------------------------------------- */

_printf_(2, 3) int log_fail(int status, const char *fmt, ...) {
        va_list ap;

        fflush(stdout);
        fputs("loopmgrctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return status;
}

_printf_(1, 2) static int log_usage(const char *fmt, ...) {
        va_list ap;

        fputs("loopmgrctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputs("\nTry 'loopmgrctl --help' for more information.\n", stderr);
        return EXIT_USAGE;
}

/* Exit status for a failure of a local system call on a path the user named. */
int exit_status_from_local_errno(int err) {
        switch (err) {
        case ENOENT:
        case ENOTDIR:
                return EXIT_NOT_FOUND;
        case EACCES:
        case EPERM:
                return EXIT_NOT_AUTHORISED;
        case EBUSY:
                return EXIT_CONFLICT;
        default:
                return EXIT_FAILURE;
        }
}

/* Exit status for a failed method call, from the errno that loopmgr_error_map and sd-bus's
 * built-in map give the error name. */
int exit_status_from_bus_error(const sd_bus_error *error, int r) {
        int err = sd_bus_error_is_set(error) ? sd_bus_error_get_errno(error) : -r;

        switch (err) {
        case EADDRINUSE: /* Overlap */
        case EBUSY:      /* Busy */
        case ELOOP:      /* Cycle */
                return EXIT_CONFLICT;
        case EACCES: /* AccessDenied, InteractiveAuthorizationRequired, AuthFailed */
        case EPERM:
                return EXIT_NOT_AUTHORISED;
        case ENODEV: /* NotFound */
        case ENOENT: /* FileNotFound */
                return EXIT_NOT_FOUND;
        case ETIMEDOUT: /* Timeout, or the call itself got no reply in time */
                return EXIT_TIMEOUT;
        default:
                return EXIT_FAILURE;
        }
}

/* The daemon's messages are sentences meant for the user: print them unchanged. */
int log_bus_error(const sd_bus_error *error, int r, const char *what) {
        if (sd_bus_error_is_set(error) && error->message && error->message[0])
                log_fail(0, "%s", error->message);
        else if (sd_bus_error_is_set(error))
                log_fail(0, "%s failed: %s", what, error->name);
        else
                log_fail(0, "%s failed: %s", what, strerror(-r));
        return exit_status_from_bus_error(error, r);
}

int log_oom(void) {
        return log_fail(EXIT_FAILURE, "Out of memory.");
}

int log_create_error(int r) {
        return log_fail(EXIT_FAILURE, "Failed to build the D-Bus message: %s", strerror(-r));
}

int log_parse_error(int r) {
        return log_fail(EXIT_FAILURE, "Failed to parse the reply of loopmgrd: %s", strerror(-r));
}

int flush_stdout(void) {
        if (fflush(stdout) != 0 || ferror(stdout))
                return log_fail(EXIT_FAILURE, "Failed to write to standard output: %s",
                                strerror(errno));
        return 0;
}

/* ---- argument parsing -------------------------------------------------------------------- */

/* Bytes with an optional binary suffix (K, M, G, T, also written KiB...). Values beyond the
 * kernel's loff_t are refused here, as are overflows of the suffix multiplication. */
static int parse_size(const char *s, uint64_t *ret) {
        static const struct {
                const char *suffix;
                unsigned shift;
        } suffixes[] = {
                {"", 0},     {"B", 0},  {"K", 10},   {"KiB", 10}, {"M", 20},
                {"MiB", 20}, {"G", 30}, {"GiB", 30}, {"T", 40},   {"TiB", 40},
        };
        unsigned long long v;
        char *end;

        if (!isdigit((unsigned char) s[0]))
                return -EINVAL;

        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno == ERANGE)
                return -ERANGE;
        if (errno != 0 || end == s)
                return -EINVAL;

        for (size_t i = 0; i < ELEMENTSOF(suffixes); i++) {
                if (strcasecmp(end, suffixes[i].suffix) != 0)
                        continue;
                if (v > ((uint64_t) INT64_MAX >> suffixes[i].shift))
                        return -ERANGE;
                *ret = (uint64_t) v << suffixes[i].shift;
                return 0;
        }
        return -EINVAL;
}

/* Seconds, possibly fractional ("1.5"), or with a unit: us, ms, s, min. */
static int parse_timeout(const char *s, uint64_t *ret) {
        static const struct {
                const char *unit;
                uint64_t usec;
        } units[] = {
                {"", USEC_PER_SEC},    {"s", USEC_PER_SEC},
                {"sec", USEC_PER_SEC}, {"ms", 1000},
                {"msec", 1000},        {"us", 1},
                {"usec", 1},           {"min", 60 * USEC_PER_SEC},
        };
        unsigned long long whole;
        uint64_t frac = 0, frac_div = 1;
        const char *p;
        char *end;

        if (!isdigit((unsigned char) s[0]))
                return -EINVAL;

        errno = 0;
        whole = strtoull(s, &end, 10);
        if (errno == ERANGE)
                return -ERANGE;
        if (errno != 0)
                return -EINVAL;

        p = end;
        if (*p == '.') {
                p++;
                if (!isdigit((unsigned char) *p))
                        return -EINVAL;
                /* Keep nine digits at most: beyond nanoseconds nothing matters here. */
                for (; isdigit((unsigned char) *p); p++)
                        if (frac_div < UINT64_C(1000000000)) {
                                frac = frac * 10 + (uint64_t) (*p - '0');
                                frac_div *= 10;
                        }
        }

        for (size_t i = 0; i < ELEMENTSOF(units); i++) {
                uint64_t usec;

                if (!streq(p, units[i].unit))
                        continue;
                if (whole > UINT64_MAX / units[i].usec)
                        return -ERANGE;
                usec = whole * units[i].usec;
                /* frac < frac_div <= 1e9 and unit <= 6e7 keep this in range */
                if (usec > UINT64_MAX - frac * units[i].usec / frac_div)
                        return -ERANGE;
                usec += frac * units[i].usec / frac_div;
                *ret = usec;
                return 0;
        }
        return -EINVAL;
}

static int parse_size_arg(const char *flag, const char *s, uint64_t *ret) {
        uint64_t v;
        int r;

        r = parse_size(s, &v);
        if (r == -ERANGE)
                return log_usage("The value of %s is too large: '%s'.", flag, s);
        if (r < 0)
                return log_usage("Invalid value for %s: '%s'. Give bytes, optionally with a "
                                 "K, M, G or T suffix (powers of 1024).",
                                 flag, s);
        if (v % 512 != 0)
                return log_usage("The value of %s must be a multiple of 512, got %" PRIu64 ".",
                                 flag, v);
        *ret = v;
        return 0;
}

static void help(void) {
        printf("loopmgrctl [OPTIONS...] COMMAND [ARGUMENT...]\n"
               "\n"
               "Attach, detach and inspect loop devices through loopmgrd.\n"
               "\n"
               "Commands:\n"
               "  attach FILE|DEV        Attach a file or block device and print the loop\n"
               "                         device node\n"
               "  detach DEV|FILE        Drop a reference on a loop device, print the state\n"
               "  list                   List all loop devices (the default command)\n"
               "  status DEV|FILE        Show every property of one loop device\n"
               "  resolve PATH           Show what PATH maps to and which devices alias it\n"
               "  monitor                Print device events until interrupted\n"
               "  mount IMAGE DIR        Attach IMAGE (sharing an identical device) and mount\n"
               "                         it on DIR, like mount -o loop without aliases\n"
               "  umount DIR             Unmount DIR and drop one reference on its device\n"
               "  open IMAGE             Attach IMAGE and have loopmgrd mount it for you under\n"
               "                         /run/media/USER/; print the mount point (no root\n"
               "                         needed)\n"
               "  close IMAGE|DIR        Unmount what open mounted; the device goes with it\n"
               "\n"
               "Options:\n"
               "  -h --help              Show this help\n"
               "     --version           Show the version\n"
               "  -o --offset=BYTES      Start within the backing object (attach, resolve;\n"
               "                         mount: --offset only)\n"
               "     --size-limit=BYTES  Length of the device, 0 = to the end (attach,\n"
               "                         resolve, mount)\n"
               "  -r --read-only         Attach read-only (attach, mount)\n"
               "  -P --partscan          Let the kernel scan for partitions (attach)\n"
               "     --direct-io=MODE    auto, on or off (attach)\n"
               "  -b --sector-size=SIZE  512, 1024, 2048 or 4096 (attach)\n"
               "     --exclusive         Fail if any device already shows these bytes (attach)\n"
               "     --lifetime=WHAT     persistent, or client: keep the device (open: the\n"
               "                         mount) only while this command runs in the\n"
               "                         foreground (attach, open)\n"
               "     --no-wait           Do not wait for udev to process the device (attach)\n"
               "                         or for the device to go (close)\n"
               "     --timeout=SEC       Bound on waiting for udev (attach), for the\n"
               "                         teardown (detach --wait) or for the device to go\n"
               "                         (close; default 10 s)\n"
               "     --wait              Return only when the device is torn down (detach)\n"
               "     --recursive         Detach devices stacked on this one first (detach)\n"
               "     --all-references    Drop every reference, not only ours (detach)\n"
               "     --json              Print JSON (one object per line for monitor)\n"
               "     --no-legend         Do not print column headers (list)\n"
               "  -o --options=OPTS      Mount options, as for mount -o (mount)\n"
               "  -t --types=FSTYPE      File system type; default: probe it (mount)\n"
               "  -v --verbose           Print the device (mount) or the detach state (umount)\n"
               "     --writable          Open the image read-write (open; default read-only)\n"
               "     --no-ask-password   Never ask for a password: no polkit agent (all)\n"
               "\n"
               "BYTES takes the suffixes K, M, G and T (powers of 1024). Exit status: 0 ok,\n"
               "1 failure, 2 usage, 3 overlap/busy/cycle, 4 not authorised, 5 not found,\n"
               "6 timeout. See loopmgrctl(1).\n");
}

typedef struct Verb Verb;
typedef int (*verb_func_t)(sd_bus *bus, char **args);

struct Verb {
        const char *name;
        unsigned n_args;
        const char *args_help; /* for the usage error */
        unsigned allowed;      /* OptionFlag bits */
        verb_func_t run;
};

static int verb_attach(sd_bus *bus, char **args);
static int verb_detach(sd_bus *bus, char **args);
static int verb_list(sd_bus *bus, char **args);
static int verb_status(sd_bus *bus, char **args);
static int verb_resolve(sd_bus *bus, char **args);
static int verb_monitor(sd_bus *bus, char **args);
static int verb_mount(sd_bus *bus, char **args);
static int verb_umount(sd_bus *bus, char **args);

static const Verb verbs[] = {
        {"attach", 1, "FILE|DEV",
         OPT_OFFSET | OPT_SIZE_LIMIT | OPT_READ_ONLY | OPT_PARTSCAN | OPT_DIRECT_IO |
                 OPT_SECTOR_SIZE | OPT_EXCLUSIVE | OPT_LIFETIME | OPT_NO_WAIT | OPT_TIMEOUT |
                 OPT_JSON,
         verb_attach},
        {"detach", 1, "DEV|FILE",
         OPT_WAIT | OPT_RECURSIVE | OPT_ALL_REFERENCES | OPT_TIMEOUT | OPT_JSON, verb_detach},
        {"list", 0, NULL, OPT_JSON | OPT_NO_LEGEND, verb_list},
        {"status", 1, "DEV|FILE", OPT_JSON, verb_status},
        {"resolve", 1, "PATH", OPT_OFFSET | OPT_SIZE_LIMIT | OPT_JSON, verb_resolve},
        {"monitor", 0, NULL, OPT_JSON, verb_monitor},
        {"mount", 2, "IMAGE DIR",
         OPT_OPTIONS | OPT_TYPES | OPT_VERBOSE | OPT_OFFSET | OPT_SIZE_LIMIT | OPT_READ_ONLY |
                 OPT_DIRECT_IO | OPT_SECTOR_SIZE | OPT_TIMEOUT,
         verb_mount},
        {"umount", 1, "DIR", OPT_VERBOSE, verb_umount},
        {"open", 1, "IMAGE", OPT_WRITABLE | OPT_LIFETIME | OPT_JSON, verb_open},
        {"close", 1, "IMAGE|DIR", OPT_NO_WAIT | OPT_TIMEOUT | OPT_JSON, verb_close},
};

static int push_o(const char *value, bool options) {
        OArg *a = reallocarray(arg_o, arg_n_o + 1, sizeof(OArg));

        if (!a)
                return -ENOMEM;
        arg_o = a;
        arg_o[arg_n_o++] = (OArg){.value = value, .options = options};
        return 0;
}

/* Gives the -o values their meaning once the command is known. Returns 0 or an exit status. */
static int apply_o(const Verb *verb) {
        int r;

        for (size_t i = 0; i < arg_n_o; i++) {
                const char *v = arg_o[i].value;

                if (streq(verb->name, "mount")) {
                        char *joined;

                        if (!v[0])
                                continue;
                        if (!arg_mount_options)
                                joined = strdup(v);
                        else if (asprintf(&joined, "%s,%s", arg_mount_options, v) < 0)
                                joined = NULL;
                        if (!joined)
                                return log_oom();
                        free(arg_mount_options);
                        arg_mount_options = joined;
                        arg_given |= OPT_OPTIONS;
                } else if (arg_o[i].options)
                        arg_given |= OPT_OPTIONS;
                else if (!(verb->allowed & OPT_OFFSET))
                        return log_usage("-o cannot be used with %s.", verb->name);
                else {
                        r = parse_size_arg("-o", v, &arg_offset);
                        if (r != 0)
                                return r;
                        arg_given |= OPT_OFFSET;
                }
        }
        return 0;
}

/* Returns 0 to go on with *ret_verb and *ret_args, -1 when --help/--version were handled,
 * or a positive exit status after a usage error. */
static int parse_argv(int argc, char *argv[], const Verb **ret_verb, char ***ret_args) {
        enum {
                ARG_VERSION = 0x100,
                ARG_OFFSET,
                ARG_SIZE_LIMIT,
                ARG_DIRECT_IO,
                ARG_EXCLUSIVE,
                ARG_LIFETIME,
                ARG_NO_WAIT,
                ARG_TIMEOUT,
                ARG_WAIT,
                ARG_RECURSIVE,
                ARG_ALL_REFERENCES,
                ARG_JSON,
                ARG_NO_LEGEND,
                ARG_OPTIONS,
                ARG_WRITABLE,
                ARG_NO_ASK_PASSWORD,
        };
        /* clang-format off */
        static const struct option options[] = {
                { "help",           no_argument,       NULL, 'h'                },
                { "version",        no_argument,       NULL, ARG_VERSION        },
                { "offset",         required_argument, NULL, ARG_OFFSET         },
                { "size-limit",     required_argument, NULL, ARG_SIZE_LIMIT     },
                { "read-only",      no_argument,       NULL, 'r'                },
                { "partscan",       no_argument,       NULL, 'P'                },
                { "direct-io",      required_argument, NULL, ARG_DIRECT_IO      },
                { "sector-size",    required_argument, NULL, 'b'                },
                { "exclusive",      no_argument,       NULL, ARG_EXCLUSIVE      },
                { "lifetime",       required_argument, NULL, ARG_LIFETIME       },
                { "no-wait",        no_argument,       NULL, ARG_NO_WAIT        },
                { "timeout",        required_argument, NULL, ARG_TIMEOUT        },
                { "wait",           no_argument,       NULL, ARG_WAIT           },
                { "recursive",      no_argument,       NULL, ARG_RECURSIVE      },
                { "all-references", no_argument,       NULL, ARG_ALL_REFERENCES },
                { "json",           no_argument,       NULL, ARG_JSON           },
                { "no-legend",      no_argument,       NULL, ARG_NO_LEGEND      },
                { "options",        required_argument, NULL, ARG_OPTIONS        },
                { "types",          required_argument, NULL, 't'                },
                { "verbose",        no_argument,       NULL, 'v'                },
                { "writable",       no_argument,       NULL, ARG_WRITABLE       },
                { "no-ask-password", no_argument,      NULL, ARG_NO_ASK_PASSWORD },
                {}
        };
        /* clang-format on */
        const Verb *verb = NULL;
        const char *verb_name;
        unsigned long ul;
        size_t n_args;
        char *end;
        int c, r;

        /* No '+' in front: GNU getopt permutes, so options may follow the verb. The ':'
         * makes getopt quiet; we word the errors ourselves. */
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":ho:rPb:t:v", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return -1;

                case ARG_VERSION:
                        printf("loopmgrctl %s\n", LOOPMGR_VERSION);
                        return -1;

                case ARG_OFFSET:
                        r = parse_size_arg("--offset", optarg, &arg_offset);
                        if (r != 0)
                                return r;
                        arg_given |= OPT_OFFSET;
                        break;

                case 'o':
                        /* The offset, or mount options: that depends on the command. */
                        if (push_o(optarg, false) < 0)
                                return log_oom();
                        break;

                case ARG_OPTIONS:
                        if (push_o(optarg, true) < 0)
                                return log_oom();
                        break;

                case 't':
                        if (!optarg[0])
                                return log_usage("--types needs a file system type.");
                        arg_fstype = optarg;
                        arg_given |= OPT_TYPES;
                        break;

                case 'v':
                        arg_verbose = true;
                        arg_given |= OPT_VERBOSE;
                        break;

                case ARG_SIZE_LIMIT:
                        r = parse_size_arg("--size-limit", optarg, &arg_size_limit);
                        if (r != 0)
                                return r;
                        arg_given |= OPT_SIZE_LIMIT;
                        break;

                case 'r':
                        arg_read_only = true;
                        arg_given |= OPT_READ_ONLY;
                        break;

                case 'P':
                        arg_partscan = true;
                        arg_given |= OPT_PARTSCAN;
                        break;

                case ARG_DIRECT_IO:
                        if (!streq(optarg, "auto") && !streq(optarg, "on") && !streq(optarg, "off"))
                                return log_usage("--direct-io takes 'auto', 'on' or 'off', "
                                                 "got '%s'.",
                                                 optarg);
                        arg_direct_io = optarg;
                        arg_given |= OPT_DIRECT_IO;
                        break;

                case 'b':
                        errno = 0;
                        ul = strtoul(optarg, &end, 10);
                        if (errno != 0 || end == optarg || *end != '\0' ||
                            (ul != 512 && ul != 1024 && ul != 2048 && ul != 4096))
                                return log_usage("--sector-size takes 512, 1024, 2048 or 4096, "
                                                 "got '%s'.",
                                                 optarg);
                        arg_sector_size = (uint32_t) ul;
                        arg_given |= OPT_SECTOR_SIZE;
                        break;

                case ARG_EXCLUSIVE:
                        arg_exclusive = true;
                        arg_given |= OPT_EXCLUSIVE;
                        break;

                case ARG_LIFETIME:
                        if (!streq(optarg, "persistent") && !streq(optarg, "client"))
                                return log_usage("--lifetime takes 'persistent' or 'client', "
                                                 "got '%s'.",
                                                 optarg);
                        arg_lifetime = optarg;
                        arg_given |= OPT_LIFETIME;
                        break;

                case ARG_NO_WAIT:
                        arg_no_wait = true;
                        arg_given |= OPT_NO_WAIT;
                        break;

                case ARG_TIMEOUT:
                        r = parse_timeout(optarg, &arg_timeout_usec);
                        if (r == -ERANGE)
                                return log_usage("The value of --timeout is too large: '%s'.",
                                                 optarg);
                        if (r < 0)
                                return log_usage("Invalid value for --timeout: '%s'. Give "
                                                 "seconds, e.g. 30 or 2.5, or a unit: ms, s, "
                                                 "min.",
                                                 optarg);
                        if (arg_timeout_usec == 0)
                                return log_usage("--timeout must be greater than 0.");
                        arg_given |= OPT_TIMEOUT;
                        break;

                case ARG_WAIT:
                        arg_wait = true;
                        arg_given |= OPT_WAIT;
                        break;

                case ARG_RECURSIVE:
                        arg_recursive = true;
                        arg_given |= OPT_RECURSIVE;
                        break;

                case ARG_ALL_REFERENCES:
                        arg_all_references = true;
                        arg_given |= OPT_ALL_REFERENCES;
                        break;

                case ARG_JSON:
                        arg_json = true;
                        arg_given |= OPT_JSON;
                        break;

                case ARG_NO_LEGEND:
                        arg_no_legend = true;
                        arg_given |= OPT_NO_LEGEND;
                        break;

                case ARG_WRITABLE:
                        arg_writable = true;
                        arg_given |= OPT_WRITABLE;
                        break;

                case ARG_NO_ASK_PASSWORD:
                        /* Meaningful for every command: not one of the OPT_* bits. */
                        arg_no_ask_password = true;
                        break;

                case ':':
                        if (strncmp(argv[optind - 1], "--", 2) != 0 && optopt > 0 && optopt < 0x100)
                                return log_usage("Option '-%c' needs an argument.", optopt);
                        return log_usage("Option '%s' needs an argument.", argv[optind - 1]);

                case '?':
                        if (optopt > 0 && optopt < 0x100)
                                return log_usage("Unknown option '-%c'.", optopt);
                        if (optopt == 0)
                                return log_usage("Unknown option '%s'.", argv[optind - 1]);
                        /* a long option without argument given one, --json=x */
                        return log_usage("Option '%s' takes no argument.", argv[optind - 1]);

                default:
                        return log_usage("Unhandled option.");
                }

        verb_name = optind < argc ? argv[optind++] : "list";
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (streq(verbs[i].name, verb_name)) {
                        verb = verbs + i;
                        break;
                }
        if (!verb)
                return log_usage("Unknown command '%s'.", verb_name);

        r = apply_o(verb);
        if (r != 0)
                return r;

        n_args = (size_t) (argc - optind);
        if (n_args < verb->n_args)
                return log_usage("Missing argument: %s %s.", verb->name, verb->args_help);
        if (n_args > verb->n_args)
                return log_usage("Too many arguments for %s: '%s'.", verb->name,
                                 argv[optind + verb->n_args]);

        for (unsigned i = 0; i < _OPT_COUNT; i++)
                if ((arg_given & (1u << i)) && !(verb->allowed & (1u << i)))
                        return log_usage("%s cannot be used with %s.", option_flag_names[i],
                                         verb->name);

        if (streq(verb->name, "close") && arg_no_wait && (arg_given & OPT_TIMEOUT))
                return log_usage("--timeout bounds the wait for the device to go and cannot be "
                                 "combined with --no-wait.");
        if (streq(verb->name, "attach") && arg_no_wait && (arg_given & OPT_TIMEOUT))
                return log_usage("--timeout bounds the wait for udev and cannot be combined "
                                 "with --no-wait.");
        if (streq(verb->name, "detach") && !arg_wait && (arg_given & OPT_TIMEOUT))
                return log_usage("--timeout bounds the wait of --wait; give both or neither.");

        *ret_verb = verb;
        *ret_args = argv + optind;
        return 0;
}

/* ---- helpers ----------------------------------------------------------------------------- */

uint64_t call_timeout_usec(void) {
        uint64_t t = arg_timeout_usec > 0 ? arg_timeout_usec : LOOPMGR_DEFAULT_TIMEOUT_USEC;

        t += CALL_MARGIN_USEC;
        if (arg_interactive)
                t += CALL_INTERACTIVE_USEC;
        return t;
}

static bool is_loop_name(const char *s) {
        if (strncmp(s, "loop", 4) != 0 || !s[4])
                return false;
        for (const char *p = s + 4; *p; p++)
                if (!isdigit((unsigned char) *p))
                        return false;
        return true;
}

static bool is_device_object(const char *s) {
        size_t l = strlen(LOOPMGR_DEVICE_PATH_PREFIX "/");

        return strncmp(s, LOOPMGR_DEVICE_PATH_PREFIX "/", l) == 0 && s[l] &&
               sd_bus_object_path_is_valid(s);
}

/* Opens what the user named for attach/resolve. O_NONBLOCK keeps a FIFO given by mistake
 * from hanging the open; it is cleared again, the daemon gets a plain fd. Returns 0 or a
 * negative errno. */
int open_backing(const char *path, int flags, int *ret_fd) {
        _cleanup_close_ int fd = -EBADF;
        int fl;

        fd = open(path, flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return -errno;

        fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
                return -errno;

        *ret_fd = fd;
        fd = -EBADF;
        return 0;
}

/* Finds the device object for what the user typed: a device object path is taken as it is,
 * everything else goes through Manager.GetDevice, relative file names made absolute first
 * because the daemon does not share our working directory. */
int resolve_device(sd_bus *bus, const char *arg, char **ret_object) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *query = NULL, *cwd = NULL;
        const char *object;
        int r;

        if (is_device_object(arg)) {
                *ret_object = strdup(arg);
                return *ret_object ? 0 : log_oom();
        }

        if (arg[0] == '/' || is_loop_name(arg))
                query = strdup(arg);
        else {
                cwd = getcwd(NULL, 0);
                if (!cwd)
                        return log_fail(EXIT_FAILURE, "Failed to get the current directory: %s",
                                        strerror(errno));
                if (asprintf(&query, "%s/%s", streq(cwd, "/") ? "" : cwd, arg) < 0)
                        query = NULL;
        }
        if (!query)
                return log_oom();

        r = sd_bus_call_method(bus, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                               LOOPMGR_MANAGER_INTERFACE, "GetDevice", &error, &reply, "s", query);
        if (r < 0)
                return log_bus_error(&error, r, "GetDevice");

        r = sd_bus_message_read(reply, "o", &object);
        if (r < 0)
                return log_parse_error(r);

        *ret_object = strdup(object);
        return *ret_object ? 0 : log_oom();
}

static int on_exit_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

/* An event loop that ends with 0 on SIGINT/SIGTERM, with the bus attached so that the daemon
 * can still talk to us while we wait. sd-bus ends the loop with EXIT_FAILURE when the bus
 * connection is lost. */
int event_new_with_signals(sd_bus *bus, sd_event **ret) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        sigset_t mask;
        int r;

        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return -errno;

        r = sd_event_default(&event);
        if (r < 0)
                return r;
        r = sd_event_add_signal(event, NULL, SIGINT, on_exit_signal, NULL);
        if (r < 0)
                return r;
        r = sd_event_add_signal(event, NULL, SIGTERM, on_exit_signal, NULL);
        if (r < 0)
                return r;
        r = sd_bus_attach_event(bus, event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return r;
        r = sd_bus_set_exit_on_disconnect(bus, true);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(event);
        return 0;
}

/* ---- device properties ------------------------------------------------------------------- */

#define FORMAT_BASE_MAX 96

/* "file 254:0 ino 403312", "block 8:0"; "-" for a daemon that does not say. */
static const char *format_base(const char *kind, uint64_t device, uint64_t inode, bool has_inode,
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
static const char *format_range(uint64_t offset, uint64_t size, char buf[static 48]) {
        snprintf(buf, 48, "%" PRIu64 "+%" PRIu64, offset, size);
        return buf;
}

static const char *device_info_base(const DeviceInfo *d, char buf[static FORMAT_BASE_MAX]) {
        if (!(d->present & PRESENT_BASE_DEVICE))
                return "-";
        return format_base(d->base_kind, d->base_device, d->base_inode,
                           d->present & PRESENT_BASE_INODE, buf);
}

static const char *device_info_range(const DeviceInfo *d, char buf[static 48]) {
        if ((d->present & (PRESENT_BASE_OFFSET | PRESENT_BASE_SIZE)) !=
            (PRESENT_BASE_OFFSET | PRESENT_BASE_SIZE))
                return "-";
        return format_range(d->base_offset, d->base_size, buf);
}

static const char *device_display_name(const DeviceInfo *d) {
        if (d->name && d->name[0])
                return d->name;
        if (d->node && d->node[0])
                return d->node;
        return d->object;
}

/* ---- attach ------------------------------------------------------------------------------ */

typedef struct ClientLifetime {
        const char *object; /* set once Attach has answered */
        const char *node;
        bool detached;
} ClientLifetime;

static int on_lifetime_removed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        ClientLifetime *c = userdata;
        const char *object;

        if (sd_bus_message_read(m, "o", &object) < 0 || !c->object || !streq(object, c->object))
                return 0;

        c->detached = true;
        return sd_event_exit(sd_bus_get_event(sd_bus_message_get_bus(m)), 0);
}

static int on_lifetime_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 ||
            !streq(name, LOOPMGR_BUS_NAME) || new_owner[0] != '\0')
                return 0;

        /* Like losing the connection: the reference may have gone with the daemon. */
        return sd_event_exit(sd_bus_get_event(sd_bus_message_get_bus(m)), EXIT_FAILURE);
}

static int wait_client_lifetime(sd_event *event, ClientLifetime *c) {
        int r;

        if (isatty(STDERR_FILENO))
                log_fail(0, "Keeping %s attached until this command is interrupted.", c->node);

        r = sd_event_loop(event);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Event loop failed: %s", strerror(-r));
        if (c->detached) {
                log_fail(0, "%s was detached by someone else.", c->node);
                return 0;
        }
        if (r != 0)
                return log_fail(EXIT_FAILURE,
                                "Lost the connection to loopmgrd; the reference on %s is gone.",
                                c->node);
        return 0;
}

static int attach_append_options(sd_bus_message *m, bool read_only) {
        int r;

        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && (arg_given & OPT_OFFSET))
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_OFFSET, "t", arg_offset);
        if (r >= 0 && (arg_given & OPT_SIZE_LIMIT))
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SIZE_LIMIT, "t", arg_size_limit);
        if (r >= 0 && read_only)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_READ_ONLY, "b", 1);
        if (r >= 0 && arg_partscan)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_PARTSCAN, "b", 1);
        if (r >= 0 && arg_direct_io)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_DIRECT_IO, "s", arg_direct_io);
        if (r >= 0 && arg_sector_size > 0)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SECTOR_SIZE, "u", arg_sector_size);
        if (r >= 0 && arg_exclusive)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SHARING, "s", "exclusive");
        if (r >= 0 && arg_lifetime)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_LIFETIME, "s", arg_lifetime);
        if (r >= 0 && arg_no_wait)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_WAIT_UDEV, "b", 0);
        if (r >= 0 && arg_timeout_usec > 0)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_TIMEOUT_USEC, "t",
                                          arg_timeout_usec);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

/* Manager.Attach of fd with the attach options given on the command line. Returns what
 * sd_bus_call() returns; error is set when the daemon answered with one. */
int call_attach(sd_bus *bus, int fd, bool read_only, sd_bus_error *error,
                sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Attach");
        if (r >= 0)
                r = sd_bus_message_append(m, "h", fd);
        if (r >= 0)
                r = attach_append_options(m, read_only);
        if (r < 0)
                return r;

        return ctl_call(bus, m, call_timeout_usec(), error, ret_reply);
}

static int verb_attach(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot_removed = NULL, *slot_owner = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *path = args[0], *object, *node;
        bool client = streq_ptr(arg_lifetime, "client"), fallback_read_only = false;
        ClientLifetime lifetime = {};
        uint64_t diskseq;
        struct stat st;
        int reused, r;

        r = open_backing(path, arg_read_only ? O_RDONLY : O_RDWR, &fd);
        if (!arg_read_only && (r == -EACCES || r == -EROFS || r == -EPERM)) {
                /* As losetup does: a file we may only read still gives a read-only device. */
                r = open_backing(path, O_RDONLY, &fd);
                fallback_read_only = r >= 0;
        }
        if (r < 0)
                return log_fail(exit_status_from_local_errno(-r), "Failed to open %s: %s", path,
                                strerror(-r));

        if (fstat(fd, &st) < 0)
                return log_fail(EXIT_FAILURE, "Failed to stat %s: %s", path, strerror(errno));
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
                return log_fail(EXIT_FAILURE, "%s is neither a regular file nor a block device.",
                                path);

        if (client) {
                /* Subscribe before Attach: the device could be detached by someone else
                 * (--all-references) before we start waiting. */
                r = event_new_with_signals(bus, &event);
                if (r < 0)
                        return log_fail(EXIT_FAILURE, "Failed to set up the event loop: %s",
                                        strerror(-r));
                r = sd_bus_match_signal(bus, &slot_removed, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                        OBJECT_MANAGER_INTERFACE, "InterfacesRemoved",
                                        on_lifetime_removed, &lifetime);
                if (r >= 0)
                        r = sd_bus_add_match(bus, &slot_owner, MATCH_DAEMON_OWNER_CHANGED,
                                             on_lifetime_owner_changed, NULL);
                if (r < 0)
                        return log_fail(EXIT_FAILURE, "Failed to subscribe to signals: %s",
                                        strerror(-r));
        }

        r = call_attach(bus, fd, arg_read_only || fallback_read_only, &error, &reply);
        if (r < 0)
                return log_bus_error(&error, r, "Attach");

        /* The daemon holds its own duplicate now; ours would only count as an opener. */
        fd = safe_close(fd);

        r = sd_bus_message_read(reply, "ostb", &object, &node, &diskseq, &reused);
        if (r < 0)
                return log_parse_error(r);

        if (arg_json) {
                fputs("{\"device\":", stdout);
                json_write_string(stdout, object);
                fputs(",\"node\":", stdout);
                json_write_string(stdout, node);
                printf(",\"diskseq\":%" PRIu64 ",\"reused\":%s}\n", diskseq,
                       reused ? "true" : "false");
        } else
                printf("%s\n", node);
        r = flush_stdout();
        if (r != 0)
                return r;

        if (fallback_read_only)
                log_fail(0, "%s is not writable, attached read-only.", path);
        if (reused && isatty(STDERR_FILENO))
                log_fail(0, "%s already showed these bytes and is now shared.", node);

        if (!client)
                return 0;

        lifetime.object = object;
        lifetime.node = node;
        return wait_client_lifetime(event, &lifetime);
}

/* ---- detach ------------------------------------------------------------------------------ */

/* Manager.Detach of object with the detach options given on the command line; mount and
 * umount allow none of them, so there it drops exactly one reference of the caller. Returns
 * what sd_bus_call() returns. */
int call_detach(sd_bus *bus, const char *object, sd_bus_error *error, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Detach");
        if (r >= 0)
                r = sd_bus_message_append(m, "o", object);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && arg_wait)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_WAIT, "b", 1);
        if (r >= 0 && arg_recursive)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_RECURSIVE, "b", 1);
        if (r >= 0 && arg_all_references)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_ALL_REFERENCES, "b", 1);
        if (r >= 0 && arg_wait && arg_timeout_usec > 0)
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_TIMEOUT_USEC, "t",
                                          arg_timeout_usec);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;

        return ctl_call(bus, m, call_timeout_usec(), error, ret_reply);
}

static int verb_detach(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *object = NULL;
        const char *state;
        int r;

        r = resolve_device(bus, args[0], &object);
        if (r != 0)
                return r;

        r = call_detach(bus, object, &error, &reply);
        if (r < 0)
                return log_bus_error(&error, r, "Detach");

        r = sd_bus_message_read(reply, "s", &state);
        if (r < 0)
                return log_parse_error(r);

        if (arg_json) {
                fputs("{\"device\":", stdout);
                json_write_string(stdout, object);
                fputs(",\"state\":", stdout);
                json_write_string(stdout, state);
                fputs("}\n", stdout);
        } else
                printf("%s\n", state);

        return flush_stdout();
}

/* ---- list -------------------------------------------------------------------------------- */

static int verb_list(sd_bus *bus, char **args) {
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

typedef struct Field {
        char *name;
        char **lines;
} Field;

typedef struct FieldList {
        Field *items;
        size_t n;
} FieldList;

static void field_list_done(FieldList *l) {
        for (size_t i = 0; i < l->n; i++) {
                free(l->items[i].name);
                strv_free(l->items[i].lines);
        }
        free(l->items);
        *l = (FieldList){};
}

/* Takes ownership of lines, also on failure. */
static int field_list_add(FieldList *l, const char *name, char **lines) {
        Field *items;
        char *n;

        n = strdup(name);
        items = n ? reallocarray(l->items, l->n + 1, sizeof(Field)) : NULL;
        if (!items) {
                free(n);
                strv_free(lines);
                return -ENOMEM;
        }
        l->items = items;
        l->items[l->n++] = (Field){.name = n, .lines = lines};
        return 0;
}

static int field_list_add_one(FieldList *l, const char *name, const char *value) {
        char **lines = calloc(2, sizeof(char *));

        if (!lines)
                return -ENOMEM;
        lines[0] = strdup(value);
        if (!lines[0]) {
                free(lines);
                return -ENOMEM;
        }
        return field_list_add(l, name, lines);
}

/* "Name: value" with the names right-aligned, continuation lines of arrays under the first,
 * and "-" for empty arrays. */
static int field_list_print(const FieldList *l) {
        int width = 0;

        for (size_t i = 0; i < l->n; i++)
                if ((int) strlen(l->items[i].name) > width)
                        width = (int) strlen(l->items[i].name);

        for (size_t i = 0; i < l->n; i++) {
                char **lines = l->items[i].lines;

                if (!lines || !lines[0]) {
                        printf("%*s: -\n", width, l->items[i].name);
                        continue;
                }
                for (size_t j = 0; lines[j]; j++) {
                        _cleanup_free_ char *e = escape_human(lines[j]);

                        if (!e)
                                return -ENOMEM;
                        if (j == 0)
                                printf("%*s: %s\n", width, l->items[i].name, e);
                        else
                                printf("%*s  %s\n", width, "", e);
                }
        }
        return 0;
}

/* Reads an a{sv} into formatted fields, in the order the daemon sent them. */
static int field_list_read(sd_bus_message *m, FieldList *l) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;

        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *key;
                char **lines = NULL;

                r = sd_bus_message_read(m, "s", &key);
                if (r >= 0)
                        r = format_property(key, m, &lines);
                if (r < 0)
                        return r;
                r = field_list_add(l, key, lines);
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

static int verb_status(sd_bus *bus, char **args) {
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

/* ---- resolve ----------------------------------------------------------------------------- */

/* Resolve's answer (SPEC §3). Keys this client does not know are kept, formatted, in extra. */
typedef struct ResolveInfo {
        char *base_kind;
        uint64_t base_device;
        uint64_t base_inode;
        uint64_t offset;
        uint64_t size;
        unsigned present; /* RESOLVE_HAS_* */
        char **chain;
        char **aliases; /* device object paths */
        FieldList extra;
} ResolveInfo;

enum {
        RESOLVE_HAS_DEVICE = 1 << 0,
        RESOLVE_HAS_INODE = 1 << 1,
        RESOLVE_HAS_OFFSET = 1 << 2,
        RESOLVE_HAS_SIZE = 1 << 3,
};

static void resolve_info_done(ResolveInfo *i) {
        free(i->base_kind);
        strv_free(i->chain);
        strv_free(i->aliases);
        field_list_done(&i->extra);
        *i = (ResolveInfo){};
}

static int read_variant_strv(sd_bus_message *m, const char *contents, char ***field) {
        char **l = NULL;
        int r;

        r = sd_bus_message_enter_container(m, 'v', contents);
        if (r < 0)
                return r;
        r = sd_bus_message_read_strv(m, &l);
        if (r < 0)
                return r;
        strv_free(*field);
        *field = l;
        return sd_bus_message_exit_container(m);
}

static int resolve_info_read(sd_bus_message *m, ResolveInfo *info) {
        /* clang-format off */
        static const struct {
                const char *key;
                size_t offset;
                unsigned present;
        } numbers[] = {
                { "base-device", offsetof(ResolveInfo, base_device), RESOLVE_HAS_DEVICE },
                { "base-inode",  offsetof(ResolveInfo, base_inode),  RESOLVE_HAS_INODE  },
                { "offset",      offsetof(ResolveInfo, offset),      RESOLVE_HAS_OFFSET },
                { "size",        offsetof(ResolveInfo, size),        RESOLVE_HAS_SIZE   },
        };
        /* clang-format on */
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;

        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *key, *contents, *s;
                bool done = false;
                char type;

                r = sd_bus_message_read(m, "s", &key);
                if (r >= 0)
                        r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        return r;

                if (streq(key, "base-kind") && streq(contents, "s")) {
                        r = sd_bus_message_read(m, "v", "s", &s);
                        if (r < 0)
                                return r;
                        free(info->base_kind);
                        info->base_kind = strdup(s);
                        if (!info->base_kind)
                                return -ENOMEM;
                        done = true;
                } else if (streq(key, "chain") && streq(contents, "as")) {
                        r = read_variant_strv(m, contents, &info->chain);
                        done = true;
                } else if (streq(key, "aliases") && streq(contents, "ao")) {
                        r = read_variant_strv(m, contents, &info->aliases);
                        done = true;
                } else if (streq(contents, "t"))
                        for (size_t i = 0; i < ELEMENTSOF(numbers) && !done; i++) {
                                if (!streq(key, numbers[i].key))
                                        continue;
                                r = sd_bus_message_read(m, "v", "t",
                                                        (uint8_t *) info + numbers[i].offset);
                                info->present |= numbers[i].present;
                                done = true;
                        }
                if (r < 0)
                        return r;

                if (!done) {
                        char **lines = NULL;

                        r = format_property(key, m, &lines);
                        if (r < 0)
                                return r;
                        r = field_list_add(&info->extra, key, lines);
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

/* One line for an aliasing device: its node and what it exposes, from its properties. A
 * device that went away in the meantime is shown by its object path. */
static int format_alias(sd_bus *bus, const char *object, char **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        char range[48];
        int r;

        r = sd_bus_call_method(bus, LOOPMGR_BUS_NAME, object, PROPERTIES_INTERFACE, "GetAll",
                               &error, &reply, "s", LOOPMGR_DEVICE_INTERFACE);
        if (r >= 0)
                r = device_info_read(reply, &d);
        if (r == -ENOMEM)
                return r;
        if (r < 0 || !d.node) {
                *ret = strdup(object);
                return *ret ? 0 : -ENOMEM;
        }

        /* The range on the base when the daemon tells it, else the device's own window on
         * its backing. */
        if (strcmp(device_info_range(&d, range), "-") != 0)
                r = asprintf(ret, "%s: bytes %s of the base, %s, %" PRIu32 " reference%s, %s",
                             d.node, range, d.read_only ? "read-only" : "read-write", d.references,
                             d.references == 1 ? "" : "s", strempty(d.state));
        else
                r = asprintf(ret,
                             "%s: offset %" PRIu64 ", %" PRIu64 " bytes, %s, %" PRIu32
                             " reference%s, %s",
                             d.node, d.offset, d.size, d.read_only ? "read-only" : "read-write",
                             d.references, d.references == 1 ? "" : "s", strempty(d.state));
        return r < 0 ? -ENOMEM : 0;
}

static int resolve_print(sd_bus *bus, ResolveInfo *info) {
        _cleanup_(field_list_done) FieldList fields = {};
        _cleanup_strv_free_ char **aliases = NULL;
        char base[FORMAT_BASE_MAX], range[48], sz[FORMAT_SIZE_MAX], *line;
        size_t n = strv_length(info->aliases);
        int r;

        aliases = calloc(n + 1, sizeof(char *));
        if (!aliases)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                r = format_alias(bus, info->aliases[i], &aliases[i]);
                if (r < 0)
                        return r;
        }

        if (info->chain) {
                r = field_list_add(&fields, "chain", TAKE_PTR(info->chain));
                if (r < 0)
                        return r;
        }

        r = field_list_add_one(&fields, "base",
                               (info->present & RESOLVE_HAS_DEVICE)
                                       ? format_base(info->base_kind, info->base_device,
                                                     info->base_inode,
                                                     info->present & RESOLVE_HAS_INODE, base)
                                       : "-");
        if (r < 0)
                return r;

        if ((info->present & (RESOLVE_HAS_OFFSET | RESOLVE_HAS_SIZE)) ==
            (RESOLVE_HAS_OFFSET | RESOLVE_HAS_SIZE)) {
                if (asprintf(&line, "%s (%s)", format_range(info->offset, info->size, range),
                             format_size(info->size, sz)) < 0)
                        return -ENOMEM;
                r = field_list_add_one(&fields, "range", line);
                free(line);
        } else
                r = field_list_add_one(&fields, "range", "-");
        if (r < 0)
                return r;

        r = field_list_add(&fields, "aliases", TAKE_PTR(aliases));
        if (r < 0)
                return r;

        /* Whatever a newer daemon adds, after what we know. */
        for (size_t i = 0; i < info->extra.n; i++) {
                r = field_list_add(&fields, info->extra.items[i].name,
                                   TAKE_PTR(info->extra.items[i].lines));
                if (r < 0)
                        return r;
        }

        return field_list_print(&fields);
}

static int verb_resolve(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(resolve_info_done) ResolveInfo info = {};
        _cleanup_close_ int fd = -EBADF;
        const char *path = args[0];
        int r;

        r = open_backing(path, O_RDONLY, &fd);
        if (r < 0)
                return log_fail(exit_status_from_local_errno(-r), "Failed to open %s: %s", path,
                                strerror(-r));

        r = sd_bus_message_new_method_call(bus, &m, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                           LOOPMGR_MANAGER_INTERFACE, "Resolve");
        if (r >= 0)
                r = sd_bus_message_append(m, "h", fd);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && (arg_given & OPT_OFFSET))
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_OFFSET, "t", arg_offset);
        if (r >= 0 && (arg_given & OPT_SIZE_LIMIT))
                r = sd_bus_message_append(m, "{sv}", LOOPMGR_OPT_SIZE_LIMIT, "t", arg_size_limit);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_create_error(r);

        r = ctl_call(bus, m, call_timeout_usec(), &error, &reply);
        if (r < 0)
                return log_bus_error(&error, r, "Resolve");

        if (arg_json) {
                r = json_write_value(reply, stdout);
                if (r < 0)
                        return log_parse_error(r);
                fputc('\n', stdout);
                return flush_stdout();
        }

        r = resolve_info_read(reply, &info);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0)
                return log_parse_error(r);

        r = resolve_print(bus, &info);
        if (r < 0)
                return log_oom();
        return flush_stdout();
}

/* ---- monitor ----------------------------------------------------------------------------- */

typedef struct KnownDevice {
        char *object;
        char *name;
        uint64_t diskseq;
} KnownDevice;

typedef struct Monitor {
        KnownDevice *known; /* objects seen, so that removals can still name them */
        size_t n_known;
        int status; /* set when writing the output failed */
} Monitor;

static void monitor_forget_all(Monitor *mon);

static void monitor_done(Monitor *mon) {
        monitor_forget_all(mon);
        free(mon->known);
        *mon = (Monitor){};
}

static KnownDevice *monitor_find(Monitor *mon, const char *object) {
        for (size_t i = 0; i < mon->n_known; i++)
                if (streq(mon->known[i].object, object))
                        return mon->known + i;
        return NULL;
}

static void monitor_remember(Monitor *mon, const char *object, const char *name, uint64_t diskseq) {
        KnownDevice *k = monitor_find(mon, object), *items;
        char *o, *n;

        if (k) {
                if (name && !streq_ptr(k->name, name)) {
                        n = strdup(name);
                        if (n) {
                                free(k->name);
                                k->name = n;
                        }
                }
                if (diskseq > 0)
                        k->diskseq = diskseq;
                return;
        }

        /* Running out of memory here only costs names in later lines: not worth failing. */
        o = strdup(object);
        n = name ? strdup(name) : NULL;
        items = o ? reallocarray(mon->known, mon->n_known + 1, sizeof(KnownDevice)) : NULL;
        if (!items) {
                free(o);
                free(n);
                return;
        }
        mon->known = items;
        mon->known[mon->n_known++] = (KnownDevice){.object = o, .name = n, .diskseq = diskseq};
}

static void monitor_forget(Monitor *mon, const char *object) {
        KnownDevice *k = monitor_find(mon, object);

        if (!k)
                return;
        free(k->object);
        free(k->name);
        *k = mon->known[--mon->n_known];
}

static void monitor_forget_all(Monitor *mon) {
        for (size_t i = 0; i < mon->n_known; i++) {
                free(mon->known[i].object);
                free(mon->known[i].name);
        }
        mon->n_known = 0;
}

/* The diskseq is the last element of a device object path (SPEC §2). */
static uint64_t diskseq_from_object(const char *object) {
        size_t l = strlen(LOOPMGR_DEVICE_PATH_PREFIX "/");
        uint64_t v = 0;

        if (strncmp(object, LOOPMGR_DEVICE_PATH_PREFIX "/", l) != 0 || !object[l])
                return 0;
        for (const char *p = object + l; *p; p++) {
                if (!isdigit((unsigned char) *p) || v > (UINT64_MAX - 9) / 10)
                        return 0;
                v = v * 10 + (uint64_t) (*p - '0');
        }
        return v;
}

/* "loop3 diskseq=42", or the object path for what is not a known device. */
static void monitor_print_subject(Monitor *mon, const char *object) {
        KnownDevice *k = monitor_find(mon, object);
        uint64_t diskseq = k && k->diskseq > 0 ? k->diskseq : diskseq_from_object(object);
        _cleanup_free_ char *e = escape_human(k && k->name ? k->name : object);

        fputs(e ?: object, stdout);
        if (diskseq > 0)
                printf(" diskseq=%" PRIu64, diskseq);
}

static void monitor_json_begin(Monitor *mon, const char *event, const char *object) {
        KnownDevice *k = object ? monitor_find(mon, object) : NULL;
        char ts[64];

        fputs("{\"timestamp\":", stdout);
        json_write_string(stdout, format_timestamp_now(ts));
        fputs(",\"event\":", stdout);
        json_write_string(stdout, event);
        if (object) {
                fputs(",\"object\":", stdout);
                json_write_string(stdout, object);
                fputs(",\"name\":", stdout);
                if (k && k->name)
                        json_write_string(stdout, k->name);
                else
                        fputs("null", stdout);
        }
}

static void monitor_line_begin(const char *event) {
        char ts[64];

        printf("%s %-7s ", format_timestamp_now(ts), event);
}

static int monitor_line_end(Monitor *mon, sd_bus_message *m) {
        if (fflush(stdout) == 0 && !ferror(stdout))
                return 0;

        /* Nobody reads us any more (e.g. a closed pipe with SIGPIPE ignored): stop. */
        if (mon->status == 0)
                mon->status = log_fail(EXIT_FAILURE, "Failed to write to standard output: %s",
                                       strerror(errno));
        return sd_event_exit(sd_bus_get_event(sd_bus_message_get_bus(m)), 0);
}

static int on_interfaces_added(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        _cleanup_(device_info_done) DeviceInfo d = {};
        Monitor *mon = userdata;
        bool is_device = false;
        const char *object;
        int r;

        r = sd_bus_message_read(m, "o", &object);
        if (r < 0)
                goto fail;

        /* First pass: learn the name, so that the JSON line can carry it too. */
        r = sd_bus_message_enter_container(m, 'a', "{sa{sv}}");
        if (r < 0)
                goto fail;
        while ((r = sd_bus_message_enter_container(m, 'e', "sa{sv}")) > 0) {
                const char *interface;

                r = sd_bus_message_read(m, "s", &interface);
                if (r < 0)
                        goto fail;
                if (streq(interface, LOOPMGR_DEVICE_INTERFACE)) {
                        is_device = true;
                        r = device_info_read(m, &d);
                } else
                        r = sd_bus_message_skip(m, "a{sv}");
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

        if (is_device)
                monitor_remember(mon, object, d.name, d.diskseq);

        if (arg_json) {
                r = sd_bus_message_rewind(m, true);
                if (r >= 0)
                        r = sd_bus_message_skip(m, "o");
                if (r < 0)
                        goto fail;
                monitor_json_begin(mon, "added", object);
                fputs(",\"interfaces\":", stdout);
                r = json_write_value(m, stdout);
                fputs("}\n", stdout);
                if (r < 0)
                        goto fail;
        } else {
                monitor_line_begin("added");
                monitor_print_subject(mon, object);
                if (is_device) {
                        _cleanup_free_ char *backing = escape_human(
                                d.backing_file && d.backing_file[0] ? d.backing_file : "-");
                        char size[FORMAT_SIZE_MAX];

                        printf(" size=%s offset=%" PRIu64 " ro=%s managed=%s state=%s "
                               "backing-file=%s",
                               format_size(d.size, size), d.offset, d.read_only ? "yes" : "no",
                               d.managed ? "yes" : "no", d.state ?: "-", backing ?: "-");
                }
                fputc('\n', stdout);
        }
        return monitor_line_end(mon, m);

fail:
        log_fail(0, "Failed to parse InterfacesAdded: %s", strerror(-r));
        return 0;
}

static int on_interfaces_removed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        const char *object;
        int r;

        r = sd_bus_message_read(m, "o", &object);
        if (r < 0)
                goto fail;

        if (arg_json) {
                monitor_json_begin(mon, "removed", object);
                fputs(",\"interfaces\":", stdout);
                r = json_write_value(m, stdout);
                fputs("}\n", stdout);
                if (r < 0)
                        goto fail;
        } else {
                monitor_line_begin("removed");
                monitor_print_subject(mon, object);
                fputc('\n', stdout);
        }

        monitor_forget(mon, object);
        return monitor_line_end(mon, m);

fail:
        log_fail(0, "Failed to parse InterfacesRemoved: %s", strerror(-r));
        return 0;
}

static int print_changed_human(sd_bus_message *m) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                _cleanup_strv_free_ char **lines = NULL;
                const char *key;

                r = sd_bus_message_read(m, "s", &key);
                if (r >= 0)
                        r = format_property(key, m, &lines);
                if (r < 0)
                        return r;

                printf(" %s=", key);
                for (size_t i = 0; lines[i]; i++) {
                        _cleanup_free_ char *e = escape_human(lines[i]);

                        printf("%s%s", i > 0 ? "," : "", e ?: "?");
                }
                if (!lines[0])
                        fputs("-", stdout);

                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        /* Invalidated properties come without a value. */
        r = sd_bus_message_enter_container(m, 'a', "s");
        if (r < 0)
                return r;
        for (;;) {
                const char *key;

                r = sd_bus_message_read_basic(m, 's', &key);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                printf(" %s=(invalidated)", key);
        }
        return sd_bus_message_exit_container(m);
}

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        const char *object = sd_bus_message_get_path(m), *interface;
        int r;

        if (!object)
                return 0;

        r = sd_bus_message_read(m, "s", &interface);
        if (r < 0)
                goto fail;

        if (arg_json) {
                monitor_json_begin(mon, "changed", object);
                fputs(",\"interface\":", stdout);
                json_write_string(stdout, interface);
                fputs(",\"changed\":", stdout);
                r = json_write_value(m, stdout);
                if (r >= 0) {
                        fputs(",\"invalidated\":", stdout);
                        r = json_write_value(m, stdout);
                }
                fputs("}\n", stdout);
        } else {
                monitor_line_begin("changed");
                monitor_print_subject(mon, object);
                r = print_changed_human(m);
                fputc('\n', stdout);
        }
        if (r < 0)
                goto fail;
        return monitor_line_end(mon, m);

fail:
        log_fail(0, "Failed to parse PropertiesChanged: %s", strerror(-r));
        return 0;
}

static void monitor_print_daemon(Monitor *mon, const char *event, const char *owner) {
        if (arg_json) {
                monitor_json_begin(mon, event, NULL);
                fputs(",\"owner\":", stdout);
                json_write_string(stdout, owner);
                fputs("}\n", stdout);
        } else {
                monitor_line_begin(event);
                printf("%s\n", owner);
        }
}

/* Learns the names of the existing devices, only to name them in later removals. A daemon
 * that is not running (yet) is fine, so failures are ignored. */
static void monitor_learn_devices(Monitor *mon, sd_bus *bus) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_list_done) DeviceList list = {};

        if (call_get_managed_objects(bus, &error, &reply) < 0 ||
            device_list_parse(reply, false, &list) < 0)
                return;

        for (size_t i = 0; i < list.n; i++)
                monitor_remember(mon, list.items[i].object, list.items[i].name,
                                 list.items[i].diskseq);
}

static int on_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 ||
            !streq(name, LOOPMGR_BUS_NAME))
                return 0;

        if (old_owner[0]) {
                /* A daemon that went away sends no InterfacesRemoved for its objects. */
                monitor_forget_all(mon);
                monitor_print_daemon(mon, "daemon-stopped", old_owner);
        }
        if (new_owner[0]) {
                monitor_print_daemon(mon, "daemon-started", new_owner);
                /* Its devices exist from the start and are never announced as added. */
                monitor_learn_devices(mon, sd_bus_message_get_bus(m));
        }

        return monitor_line_end(mon, m);
}

static int verb_monitor(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot_added = NULL, *slot_removed = NULL,
                                                  *slot_changed = NULL, *slot_owner = NULL;
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_(monitor_done) Monitor mon = {};
        int r;

        r = event_new_with_signals(bus, &event);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Failed to set up the event loop: %s", strerror(-r));

        /* Subscribe first, then learn the current devices: nothing can fall in between.
         * sd_bus_match_signal()/sd_bus_add_match() return once the bus has the match. */
        r = sd_bus_match_signal(bus, &slot_added, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                OBJECT_MANAGER_INTERFACE, "InterfacesAdded", on_interfaces_added,
                                &mon);
        if (r >= 0)
                r = sd_bus_match_signal(bus, &slot_removed, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                        OBJECT_MANAGER_INTERFACE, "InterfacesRemoved",
                                        on_interfaces_removed, &mon);
        if (r >= 0)
                /* path_namespace covers the manager and every device object below it. */
                r = sd_bus_add_match(bus, &slot_changed,
                                     "type='signal',"
                                     "sender='" LOOPMGR_BUS_NAME "',"
                                     "interface='" PROPERTIES_INTERFACE "',"
                                     "member='PropertiesChanged',"
                                     "path_namespace='" LOOPMGR_MANAGER_PATH "'",
                                     on_properties_changed, &mon);
        if (r >= 0)
                r = sd_bus_add_match(bus, &slot_owner, MATCH_DAEMON_OWNER_CHANGED, on_owner_changed,
                                     &mon);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Failed to subscribe to signals: %s", strerror(-r));

        monitor_learn_devices(&mon, bus);

        if (!arg_json && isatty(STDERR_FILENO))
                log_fail(0, "Monitoring loop devices. Press Ctrl-C to stop.");

        r = sd_event_loop(event);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Event loop failed: %s", strerror(-r));
        if (mon.status != 0)
                return mon.status;
        if (r != 0)
                return log_fail(EXIT_FAILURE, "Lost the connection to the bus.");
        return 0;
}

/* ---- mount, umount ----------------------------------------------------------------------- */

static int require_root(const char *verb) {
        if (geteuid() == 0)
                return 0;
        return log_fail(EXIT_NOT_AUTHORISED,
                        "%s needs root: in this version loopmgrd accepts changes only from root, "
                        "and mount(2) and umount(2) need privileges anyway.",
                        verb);
}

/* Drops the one reference an Attach of ours took. Never all references: when the device was
 * reused, the references of whoever attached it first must keep it (libmount detaches such a
 * device when the mount fails, util-linux PR #4646; we must not). */
void drop_reference(sd_bus *bus, const char *object, const char *node) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = call_detach(bus, object, &error, &reply);
        if (r < 0) {
                (void) log_bus_error(&error, r, "Detach");
                log_fail(0, "Our reference on %s may remain: 'loopmgrctl detach %s' drops it.",
                         node, node);
        }
}

/*
 * A read-only mount of an image that is attached writable already. A second, read-only device
 * over the same bytes would be an alias, which loopmgrd refuses (Overlap); mount(8) mounts
 * read-only on the writable device it finds, and so do we. Only an identical writable device
 * is taken: if the Attach does not reuse one, the new device is given back. Returns 0 with
 * the Attach reply (read position at the start), or a negative errno when this does not help.
 */
int attach_share_writable(sd_bus *bus, const char *image, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *object, *node;
        uint64_t diskseq;
        int reused, r;

        r = open_backing(image, O_RDWR, &fd);
        if (r < 0)
                return r;

        r = call_attach(bus, fd, /* read_only= */ false, &error, &reply);
        if (r < 0)
                return r;

        r = sd_bus_message_read(reply, "ostb", &object, &node, &diskseq, &reused);
        if (r < 0)
                return r;
        if (!reused) {
                /* The overlapping device went away in between: this one is new, and writable
                 * where a read-only device was asked for. */
                drop_reference(bus, object, node);
                return -EADDRINUSE;
        }

        r = sd_bus_message_rewind(reply, true);
        if (r < 0)
                return r;
        *ret_reply = TAKE_PTR(reply);
        return 0;
}

static int verb_mount(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(mount_options_done) MountOptions mo = {};
        _cleanup_free_ char *bad = NULL, *message = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *image = args[0], *dir = args[1], *object, *node;
        bool fallback_read_only = false;
        uint64_t diskseq;
        struct stat st;
        int reused, r;

        r = mount_options_parse(arg_mount_options, &mo, &bad);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0 && bad)
                return log_usage("The mount option '%s' cannot be used: loopmgrd sets up the loop "
                                 "device itself. Give offset= and sizelimit= a value, and no "
                                 "loop=DEVICE or encryption=.",
                                 bad);
        if (r < 0)
                return log_usage("Cannot parse the mount options '%s'.", arg_mount_options);

        if (mo.offset) {
                if (arg_given & OPT_OFFSET)
                        return log_usage("The offset is given twice (--offset and offset=).");
                r = parse_size_arg("offset=", mo.offset, &arg_offset);
                if (r != 0)
                        return r;
                arg_given |= OPT_OFFSET;
        }
        if (mo.size_limit) {
                if (arg_given & OPT_SIZE_LIMIT)
                        return log_usage("The size limit is given twice (--size-limit and "
                                         "sizelimit=).");
                r = parse_size_arg("sizelimit=", mo.size_limit, &arg_size_limit);
                if (r != 0)
                        return r;
                arg_given |= OPT_SIZE_LIMIT;
        }
        if (arg_read_only && !mo.read_only) {
                r = mount_options_force_read_only(&mo);
                if (r < 0)
                        return log_oom();
        }

        r = require_root("mount");
        if (r != 0)
                return r;

        /* Before attaching anything: the commonest mistake should not create a device only to
         * remove it again. */
        if (stat(dir, &st) < 0) {
                if (errno != ENOENT || !mount_options_has(&mo, "X-mount.mkdir"))
                        return log_fail(exit_status_from_local_errno(errno),
                                        "Cannot mount on %s: %s", dir, strerror(errno));
        } else if (!S_ISDIR(st.st_mode))
                return log_fail(EXIT_FAILURE, "Cannot mount on %s: not a directory.", dir);

        r = open_backing(image, mo.read_only ? O_RDONLY : O_RDWR, &fd);
        if (!mo.read_only && (r == -EACCES || r == -EROFS || r == -EPERM)) {
                /* As attach and mount(8) do: a file we may only read is mounted read-only. */
                r = open_backing(image, O_RDONLY, &fd);
                fallback_read_only = r >= 0;
        }
        if (r < 0)
                return log_fail(exit_status_from_local_errno(-r), "Failed to open %s: %s", image,
                                strerror(-r));

        if (fstat(fd, &st) < 0)
                return log_fail(EXIT_FAILURE, "Failed to stat %s: %s", image, strerror(errno));
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
                return log_fail(EXIT_FAILURE, "%s is neither a regular file nor a block device.",
                                image);

        if (fallback_read_only) {
                r = mount_options_force_read_only(&mo);
                if (r < 0)
                        return log_oom();
                log_fail(0, "%s is not writable, mounting it read-only.", image);
        }

        r = call_attach(bus, fd, mo.read_only, &error, &reply);
        if (r < 0 && mo.read_only && !fallback_read_only &&
            sd_bus_error_has_name(&error, LOOPMGR_ERROR_OVERLAP) &&
            attach_share_writable(bus, image, &reply) >= 0)
                r = 0;
        if (r < 0)
                return log_bus_error(&error, r, "Attach");

        /* The daemon holds its own duplicate now; ours would only count as an opener. */
        fd = safe_close(fd);

        r = sd_bus_message_read(reply, "ostb", &object, &node, &diskseq, &reused);
        if (r < 0)
                return log_parse_error(r);

        r = ctl_mount(node, dir, arg_fstype, mo.options, &message);
        if (r < 0) {
                log_fail(0, "Failed to mount %s (%s) on %s: %s", image, node, dir,
                         message ?: strerror(-r));
                /* Only our own reference: see drop_reference(). */
                drop_reference(bus, object, node);
                return EXIT_FAILURE;
        }
        if (message)
                log_fail(0, "%s is mounted on %s, but: %s", node, dir, message);

        if (!arg_verbose)
                return 0;
        printf("%s\n", node);
        r = flush_stdout();
        if (r != 0)
                return r;
        if (reused)
                log_fail(0, "%s already showed these bytes and is now shared.", node);
        return 0;
}

static int verb_umount(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *props = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        _cleanup_free_ char *target = NULL, *source = NULL, *object = NULL, *message = NULL;
        const char *dir = args[0], *state;
        struct stat st;
        int r;

        r = require_root("umount");
        if (r != 0)
                return r;

        r = ctl_find_mount(dir, &target, &source);
        if (r == -ENOENT)
                return log_fail(EXIT_FAILURE, "%s is not a mount point.", dir);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Failed to read the mount table: %s", strerror(-r));

        /* Only file systems on loop devices: anything else is umount(8)'s business and must
         * never lead to a Detach. */
        if (!source || stat(source, &st) < 0 || !S_ISBLK(st.st_mode) ||
            major(st.st_rdev) != LOOP_MAJOR)
                return log_fail(EXIT_FAILURE,
                                "%s is mounted from %s, which is not a loop device; use umount(8).",
                                target, source ?: "something that is not a device");

        r = resolve_device(bus, source, &object);
        if (r != 0)
                return r;
        r = sd_bus_call_method(bus, LOOPMGR_BUS_NAME, object, PROPERTIES_INTERFACE, "GetAll",
                               &error, &props, "s", LOOPMGR_DEVICE_INTERFACE);
        if (r < 0)
                return log_bus_error(&error, r, "GetAll");
        r = device_info_read(props, &d);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0)
                return log_parse_error(r);

        r = ctl_umount(target, &message);
        if (r < 0)
                /* Still mounted: the reference stays with the mount. */
                return log_fail(EXIT_FAILURE, "Failed to unmount %s: %s", target,
                                message ?: strerror(-r));
        if (message)
                log_fail(0, "%s is unmounted, but: %s", target, message);

        if (!d.managed) {
                /* Detaching as root without a reference would tear down a device someone
                 * else set up; it is theirs to remove. */
                log_fail(0, "%s was not attached through loopmgrd and is left as it is.", source);
                return 0;
        }
        if (streq_ptr(d.state, LOOPMGR_STATE_DETACH_PENDING)) {
                /* Already asked to go: our unmount lets the kernel finish. */
                state = LOOPMGR_STATE_PENDING;
        } else {
                r = call_detach(bus, object, &error, &reply);
                if (r < 0) {
                        log_fail(0, "%s is unmounted, but dropping the reference on %s failed.",
                                 target, source);
                        return log_bus_error(&error, r, "Detach");
                }
                r = sd_bus_message_read(reply, "s", &state);
                if (r < 0)
                        return log_parse_error(r);
        }

        if (!arg_verbose)
                return 0;
        printf("%s\n", state);
        return flush_stdout();
}

/* ---- main -------------------------------------------------------------------------------- */

static int run(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        const Verb *verb = NULL;
        char **args = NULL;
        int r;

        r = parse_argv(argc, argv, &verb, &args);
        if (r < 0)
                return EXIT_SUCCESS;
        if (r > 0)
                return r;

        /* So that sd_bus_error_get_errno() knows the daemon's error names. */
        r = sd_bus_error_add_map(loopmgr_error_map);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Failed to register the error map: %s", strerror(-r));

        /* Honours DBUS_SYSTEM_BUS_ADDRESS, which the tests use for a private bus. */
        r = sd_bus_open_system(&bus);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Failed to connect to the system bus: %s",
                                strerror(-r));

        /* Without a terminal nobody could answer a password prompt: let polkit say no at
         * once (InteractiveAuthorizationRequired) instead of waiting for an agent. With one,
         * an agent of the user's session may answer, and if there is none, ctl_call() starts
         * pkttyagent on this terminal and asks again. */
        arg_interactive = isatty(STDIN_FILENO) > 0 && !arg_no_ask_password;
        r = sd_bus_set_allow_interactive_authorization(bus, arg_interactive);
        if (r < 0)
                return log_fail(EXIT_FAILURE, "Failed to set up the bus connection: %s",
                                strerror(-r));
        ctl_agent_set_allowed(arg_interactive);

        r = verb->run(bus, args);
        ctl_agent_close();
        return r;
}

int main(int argc, char *argv[]) {
        int r = run(argc, argv);

        free(arg_o);
        free(arg_mount_options);
        return r;
}
