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

static const char *const option_flag_names[_OPT_COUNT] = {
        "--offset",      "--size-limit", "--read-only",      "--partscan", "--direct-io",
        "--sector-size", "--exclusive",  "--lifetime",       "--no-wait",  "--timeout",
        "--wait",        "--recursive",  "--all-references", "--json",     "--no-legend",
        "--options",     "--types",      "--verbose",        "--writable", "--raw",
        "--output",
};

/* -o is --offset for every command but mount, where it is mount(8)'s -o: the values are kept
 * in command-line order until the command is known. */
typedef struct OArg {
        const char *value;
        bool options; /* given as --options, which is never an offset */
} OArg;

unsigned arg_given;
uint64_t arg_offset;
uint64_t arg_size_limit;
bool arg_read_only;
bool arg_partscan;
const char *arg_direct_io;
uint32_t arg_sector_size;
bool arg_exclusive;
const char *arg_lifetime;
bool arg_no_wait;
uint64_t arg_timeout_usec;
bool arg_wait;
bool arg_recursive;
bool arg_all_references;
bool arg_json;
bool arg_writable;
static bool arg_no_ask_password;
bool arg_no_legend;
bool arg_raw;
const char *arg_output;
char *arg_mount_options; /* the -o/--options of mount, joined with commas */
const char *arg_fstype;
bool arg_verbose;
static OArg *arg_o;
static size_t arg_n_o;
/* Derived from stdin being a terminal and --no-ask-password: may polkit ask the user? */
bool arg_interactive;

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

int parse_size_arg(const char *flag, const char *s, uint64_t *ret) {
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
               "  -n --noheadings        Do not print column headers (list; also --no-legend)\n"
               "     --raw               Raw output: no alignment, cells escaped (list, status)\n"
               "  -O --output=COLS       Columns to show, +COLS to add to the defaults (list,\n"
               "                         status); see loopmgrctl(1)\n"
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

static const Verb verbs[] = {
        {"attach", 1, "FILE|DEV",
         OPT_OFFSET | OPT_SIZE_LIMIT | OPT_READ_ONLY | OPT_PARTSCAN | OPT_DIRECT_IO |
                 OPT_SECTOR_SIZE | OPT_EXCLUSIVE | OPT_LIFETIME | OPT_NO_WAIT | OPT_TIMEOUT |
                 OPT_JSON,
         verb_attach},
        {"detach", 1, "DEV|FILE",
         OPT_WAIT | OPT_RECURSIVE | OPT_ALL_REFERENCES | OPT_TIMEOUT | OPT_JSON, verb_detach},
        {"list", 0, NULL, OPT_JSON | OPT_NO_LEGEND | OPT_RAW | OPT_OUTPUT, verb_list},
        {"status", 1, "DEV|FILE", OPT_JSON | OPT_RAW | OPT_OUTPUT, verb_status},
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
                ARG_RAW,
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
                { "noheadings",     no_argument,       NULL, 'n'                },
                { "raw",            no_argument,       NULL, ARG_RAW            },
                { "output",         required_argument, NULL, 'O'                },
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
        while ((c = getopt_long(argc, argv, ":ho:rPb:t:vnO:", options, NULL)) >= 0)
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
                case 'n':
                        arg_no_legend = true;
                        arg_given |= OPT_NO_LEGEND;
                        break;

                case ARG_RAW:
                        arg_raw = true;
                        arg_given |= OPT_RAW;
                        break;

                case 'O':
                        if (!optarg[0] || streq(optarg, "+"))
                                return log_usage("--output needs a list of columns.");
                        arg_output = optarg;
                        arg_given |= OPT_OUTPUT;
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
