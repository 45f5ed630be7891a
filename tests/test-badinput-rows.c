/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-badinput's matrix and its rows: the checks after each call, the options, a row for
 * every method, the devices a test holds. */

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <ftw.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-rawbus.h"
#include "integration-util.h"
#include "loopmgr-bus.h"
#include "test-badinput.h"

/* ------------------------------------------------------------------------------------------ */
/* The matrix */

static const char *short_name(const char *name) {
        if (!name)
                return "(success)";
        if (strncmp(name, DBUS_ERROR_PREFIX, strlen(DBUS_ERROR_PREFIX)) == 0)
                return name + strlen(DBUS_ERROR_PREFIX);
        if (strncmp(name, LOOPMGR_ERROR_PREFIX, strlen(LOOPMGR_ERROR_PREFIX)) == 0)
                return name + strlen(LOOPMGR_ERROR_PREFIX);
        return name;
}

/* The daemon answers, it is still our child, and exactly matrix.devices devices are bound to
 * files under the test's directory, on which losetup and the daemon agree. */
static void after_call_impl(Env *e, const char *what, const char *file, int line) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *version = NULL;
        size_t n = SIZE_MAX;
        int r, status;

        if (e->daemon_pid > 0 && waitpid(e->daemon_pid, &status, WNOHANG) == e->daemon_pid) {
                print_error("%s:%d: loopmgrd died after %s (%s %d)\n", file, line, what,
                            WIFEXITED(status) ? "status" : "signal",
                            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                e->daemon_pid = 0;
                env_group_failed = true;
                _fail(file, line);
        }
        r = get_version(e, &error, &version);
        if (r < 0) {
                print_error("%s:%d: the daemon does not answer Version after %s: %s\n", file, line,
                            what, error.message ?: strerror(-r));
                _fail(file, line);
        }
        /* A teardown the call may have started finishes asynchronously: give it a moment. */
        for (uint64_t deadline = now_usec() + 2 * USEC_PER_SEC;;) {
                r = losetup_count_backed_by(e->tmpdir, true, &n);
                if (r < 0 || n == matrix.devices || now_usec() >= deadline)
                        break;
                sleep_usec(50 * USEC_PER_MSEC);
        }
        if (r < 0 || n != matrix.devices) {
                print_error("%s:%d: after %s, %zu device(s) are bound to files under %s, expected "
                            "%zu\n",
                            file, line, what, n, e->tmpdir, matrix.devices);
                _fail(file, line);
        }
        if (env_check_consistency_only_under(e, e->tmpdir, 3 * USEC_PER_SEC) < 0) {
                print_error("%s:%d: after %s, losetup and the daemon disagree\n", file, line, what);
                _fail(file, line);
        }
}

static void mismatch_note(const char *method, const char *input) {
        char *s = NULL;

        if (asprintf(&s, "%s%s%s: %s", matrix.mismatch_list ?: "", matrix.mismatch_list ? "; " : "",
                     method, input) >= 0) {
                free(matrix.mismatch_list);
                matrix.mismatch_list = s;
        }
        matrix.mismatches++;
}

void row_impl(Env *e, const char *method, const char *input, const char *expected, int r,
              const sd_bus_error *error, const char *file, int line) {
        const char *got = r >= 0 ? NULL : error->name ?: strerror(-r);
        bool ok;

        if (expected)
                ok = r < 0 && sd_bus_error_has_name(error, expected) && error->message &&
                     error->message[0];
        else
                ok = r >= 0;

        print_message("| %-22s | %-50s | %-22s | %-22s |%s\n", method, input, short_name(expected),
                      short_name(got), ok ? "" : " <-- MISMATCH");
        if (!ok) {
                print_message("|   %s:%d: %s\n", file, line,
                              r < 0 ? error->message ?: "(no message)" : "the call succeeded");
                mismatch_note(method, input);
        }
        matrix.rows++;

        _cleanup_free_ char *what = NULL;
        if (asprintf(&what, "%s (%s)", method, input) < 0)
                what = NULL;
        after_call_impl(e, what ?: method, file, line);
}

void matrix_end_impl(const char *test, const char *file, int line) {
        print_message("%s: %zu row(s), %zu mismatch(es)\n", test, matrix.rows, matrix.mismatches);
        if (matrix.mismatches > 0) {
                print_error("%s:%d: %zu row(s) did not get the expected answer: %s\n", file, line,
                            matrix.mismatches, matrix.mismatch_list ?: "");
                _fail(file, line);
        }
}

/* ------------------------------------------------------------------------------------------ */
/* Building calls */

static int append_opts(sd_bus_message *m, const Opt *opts, size_t n) {
        int r;

        r = sd_bus_message_open_container(m, 'a', "{sv}");
        for (size_t i = 0; r >= 0 && i < n; i++) {
                const Opt *o = &opts[i];

                switch (o->sig[0]) {
                case 't':
                        r = sd_bus_message_append(m, "{sv}", o->key, "t", o->t);
                        break;
                case 'u':
                        r = sd_bus_message_append(m, "{sv}", o->key, "u", (uint32_t) o->t);
                        break;
                case 'b':
                        r = sd_bus_message_append(m, "{sv}", o->key, "b", (int) o->t);
                        break;
                case 'i':
                        r = sd_bus_message_append(m, "{sv}", o->key, "i", (int32_t) o->t);
                        break;
                case 's':
                        r = sd_bus_message_append(m, "{sv}", o->key, "s", o->s);
                        break;
                case 'd':
                        r = sd_bus_message_append(m, "{sv}", o->key, "d", o->d);
                        break;
                default:
                        r = sd_bus_message_append(m, "{sv}", o->key, "as", 1, o->s);
                }
        }
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

/* Calls path/interface/member with an optional leading argument (type lead: 'h' fd, 's' or 'o'
 * string, 'b' boolean, 0 none) followed by the a{sv} of opts. */
static int call_with_options(Env *e, const char *path, const char *interface, const char *member,
                             char lead, const void *lead_value, const Opt *opts, size_t n,
                             sd_bus_error *error, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(e->bus, &m, LOOPMGR_BUS_NAME, path, interface, member);
        if (r < 0)
                return r;
        if (lead != 0) {
                r = sd_bus_message_append_basic(m, lead, lead_value);
                if (r < 0)
                        return r;
        }
        r = append_opts(m, opts, n);
        if (r < 0)
                return r;
        return sd_bus_call(e->bus, m, CALL_TIMEOUT, error, ret_reply);
}

/* An Attach or AttachPath that was expected to fail but made a device: track it and take it
 * away again, so that the next rows start clean (the row is a mismatch already). */
static void undo_attach(Env *e, sd_bus_message *reply) {
        const char *object, *node;
        uint64_t diskseq;
        int reused;

        if (!reply || sd_bus_message_read(reply, "ostb", &object, &node, &diskseq, &reused) < 0)
                return;
        if (strncmp(node, "/dev/", 5) == 0)
                (void) env_track_device(e, node + 5, diskseq);
        if (reused)
                return; /* one of ours: the caller knows what it holds */

        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *state = NULL;
        (void) call_detach(e, object, &error, &state, 2, OPT_B(LOOPMGR_OPT_ALL_REFERENCES, true),
                           OPT_B(LOOPMGR_OPT_WAIT, true));
        if (strncmp(node, "/dev/", 5) == 0)
                (void) wait_binding_gone(node + 5, diskseq, 3 * USEC_PER_SEC);
}

void attach_row_impl(Env *e, const char *member, char lead, const void *lead_value,
                     const char *input, const char *expected, const Opt *opts, size_t n,
                     const char *file, int line) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        char method[64];
        int r;

        r = call_with_options(e, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, member, lead,
                              lead_value, opts, n, &error, &reply);
        if (r >= 0)
                undo_attach(e, reply);
        snprintf(method, sizeof(method), "Manager.%s", member);
        row_impl(e, method, input, expected, r, &error, file, line);
}

void resolve_row_impl(Env *e, const char *input, const char *expected, int fd, const Opt *opts,
                      size_t n, const char *file, int line) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = call_with_options(e, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, "Resolve",
                                  'h', &fd, opts, n, &error, NULL);
        row_impl(e, "Manager.Resolve", input, expected, r, &error, file, line);
}

void device_row_impl(Env *e, const char *path, const char *interface, const char *member, char lead,
                     const void *lead_value, const char *input, const char *expected,
                     const Opt *opts, size_t n, const char *file, int line) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        size_t before = SIZE_MAX;
        char method[64];
        int r;

        (void) losetup_count_backed_by(e->tmpdir, true, &before);
        r = call_with_options(e, path, interface, member, lead, lead_value, opts, n, &error,
                              &reply);
        snprintf(method, sizeof(method), "%s.%s",
                 streq(interface, LOOPMGR_MANAGER_INTERFACE) ? "Manager" : "Device", member);
        if (r >= 0 && expected && streq(member, "Detach") && before != SIZE_MAX) {
                /* A device of ours went (or is going): the mismatch is reported by the row, the
                 * leak check must not fail on top of it. */
                size_t after = before;
                for (uint64_t deadline = now_usec() + 2 * USEC_PER_SEC;
                     now_usec() < deadline && after == before;) {
                        (void) losetup_count_backed_by(e->tmpdir, true, &after);
                        if (after == before)
                                sleep_usec(50 * USEC_PER_MSEC);
                }
                if (after < before && matrix.devices >= before - after)
                        matrix.devices -= before - after;
        }
        row_impl(e, method, input, expected, r, &error, file, line);
}

void get_device_row_impl(Env *e, const char *input, const char *expected, const char *spec,
                         const char *file, int line) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *object = NULL;
        int r = call_get_device(e, spec, &error, &object);
        row_impl(e, "Manager.GetDevice", input, expected, r, &error, file, line);
}

void sig_row_impl(Env *e, const char *path, const char *interface, const char *member,
                  const char *input, const char *expected, const char *file, int line,
                  const char *sig, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *label = streq(interface, LOOPMGR_MANAGER_INTERFACE)  ? "Manager"
                            : streq(interface, LOOPMGR_DEVICE_INTERFACE) ? "Device"
                            : streq(interface, PROPERTIES_INTERFACE)     ? "Properties"
                                                                         : interface;
        char method[96];
        va_list ap;
        int r;

        r = sd_bus_message_new_method_call(e->bus, &m, LOOPMGR_BUS_NAME, path, interface, member);
        if (r >= 0 && sig[0]) {
                va_start(ap, sig);
                r = sd_bus_message_appendv(m, sig, ap);
                va_end(ap);
        }
        if (r < 0)
                fail_msg("%s:%d: cannot build %s.%s(%s): %s", file, line, label, member, sig,
                         strerror(-r));
        r = sd_bus_call(e->bus, m, CALL_TIMEOUT, &error, &reply);
        if (r >= 0 && streq(interface, LOOPMGR_MANAGER_INTERFACE) &&
            (streq(member, "Attach") || streq(member, "AttachPath")))
                undo_attach(e, reply);
        snprintf(method, sizeof(method), "%s.%s", label, member);
        row_impl(e, method, input, expected, r, &error, file, line);
}

void handle_row(Env *e, const char *member, uint32_t index, const int *fds, unsigned n_fds) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        RawReply reply = {};
        char input[80], method[64];
        int r;

        snprintf(input, sizeof(input), "handle index %" PRIu32 " with %u fd(s) attached", index,
                 n_fds);
        snprintf(method, sizeof(method), "Manager.%s", member);
        r = raw_call_with_handle(e->bus_address, LOOPMGR_BUS_NAME, LOOPMGR_MANAGER_PATH,
                                 LOOPMGR_MANAGER_INTERFACE, member, index, fds, n_fds,
                                 10 * USEC_PER_SEC, &reply);
        if (r >= 0 && reply.type == 3) {
                if (!streq_ptr(reply.sender, e->daemon_unique_name))
                        /* An error, but not the daemon's: say whose. */
                        (void) sd_bus_error_setf(&error, "org.loopmgr.Test.NotFromTheDaemon",
                                                 "%s from %s: %s", reply.error_name ?: "?",
                                                 reply.sender ?: "?", reply.error_message ?: "");
                else
                        (void) sd_bus_error_set(&error, reply.error_name,
                                                reply.error_message ?: "");
                r = -EINVAL;
        } else if (r >= 0 && reply.type == 2) {
                /* Succeeded?! Nothing to undo: with no usable fd nothing can be attached. */
                r = 0;
        } else if (r < 0)
                (void) sd_bus_error_setf(&error, "org.loopmgr.Test.NoReply", "no reply: %s",
                                         strerror(-r));
        raw_reply_done(&reply);
        row(e, method, input, DBUS_ERROR_INVALID_ARGS, r, &error);
}

char *make_image(Env *e, uint64_t size) {
        char *path = NULL;
        int r = env_make_image(e, e->tmpdir, size, &path);
        if (r < 0) {
                fail_msg("cannot create an image in %s: %s", e->tmpdir, strerror(-r));
                return NULL;
        }
        return path;
}

void hold_device(Env *e, const char *path, Attached *ret) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = attach_file(e, path, O_RDWR, &error, ret, 0);
        assert_bus_ok(r, &error, "Attach");
        matrix.devices++;
}

void release_device(Env *e, const Attached *a) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *state = NULL;
        int r = call_detach(e, a->object, &error, &state, 1, OPT_B(LOOPMGR_OPT_WAIT, true));
        assert_bus_ok(r, &error, "Detach");
        if (!streq(state, "detached"))
                fail_msg("Detach(%s) returned '%s', expected 'detached'", a->object, state);
        matrix.devices--;
        after_call_impl(e, "Detach", __FILE__, __LINE__);
}

void assert_untouched(Env *e, const Attached *a) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_props_ DeviceProps p = {};
        int r = device_props_get(e, a->object, &error, &p);
        assert_bus_ok(r, &error, "GetAll");
        if (!streq_ptr(p.state, "attached") || p.references != 1 || p.autoclear ||
            p.diskseq != a->diskseq)
                fail_msg("%s changed: State %s, References %u, Autoclear %s, DiskSeq %" PRIu64,
                         a->object, p.state ?: "?", p.references, p.autoclear ? "on" : "off",
                         p.diskseq);
}
