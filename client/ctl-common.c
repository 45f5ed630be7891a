/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * What the verbs of loopmgrctl share: messages and exit statuses, the checks of sizes given on
 * the command line, opening what the user named, finding a device object, the event loop.
 */

#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
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

/* ---- messages and exit statuses ---------------------------------------------------------- */

/* "loopmgrctl: MESSAGE" and the tail (a newline, or the hint at --help) on stderr. */
_printf_(2, 0) static void log_message(const char *tail, const char *fmt, va_list ap) {
        fflush(stdout);
        fputs("loopmgrctl: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputs(tail, stderr);
}

_printf_(2, 3) int log_fail(int status, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        log_message("\n", fmt, ap);
        va_end(ap);
        return status;
}

_printf_(1, 2) int log_usage(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        log_message("\nTry 'loopmgrctl --help' for more information.\n", fmt, ap);
        va_end(ap);
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

int device_info_get_or_log(sd_bus *bus, const char *object, DeviceInfo *ret) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = device_info_get(bus, object, &error, ret);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0 && sd_bus_error_is_set(&error))
                return log_bus_error(&error, r, "GetAll");
        if (r < 0)
                return log_parse_error(r);
        return 0;
}

int open_image(const char *path, bool read_only, int *ret_fd, bool *ret_fallback_read_only) {
        _cleanup_close_ int fd = -EBADF;
        bool fallback = false;
        struct stat st;
        int r;

        r = open_backing(path, read_only ? O_RDONLY : O_RDWR, &fd);
        if (!read_only && (r == -EACCES || r == -EROFS || r == -EPERM)) {
                r = open_backing(path, O_RDONLY, &fd);
                fallback = r >= 0;
        }
        if (r < 0)
                return log_fail(exit_status_from_local_errno(-r), "Failed to open %s: %s", path,
                                strerror(-r));

        if (fstat(fd, &st) < 0)
                return log_fail(EXIT_FAILURE, "Failed to stat %s: %s", path, strerror(errno));
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
                return log_fail(EXIT_FAILURE, "%s is neither a regular file nor a block device.",
                                path);

        *ret_fd = fd;
        fd = -EBADF;
        *ret_fallback_read_only = fallback;
        return 0;
}

static int on_exit_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

/* An event loop that ends with 0 on SIGINT/SIGTERM (or runs on_signal, with the bus as
 * userdata), with the bus attached so that the daemon can still talk to us while we wait.
 * sd-bus ends the loop with EXIT_FAILURE when the bus connection is lost. */
int event_new_with_signals(sd_bus *bus, sd_event_signal_handler_t on_signal, sd_event **ret) {
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
        r = sd_event_add_signal(event, NULL, SIGINT, on_signal ?: on_exit_signal, bus);
        if (r < 0)
                return r;
        r = sd_event_add_signal(event, NULL, SIGTERM, on_signal ?: on_exit_signal, bus);
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
