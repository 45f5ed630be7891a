/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-badinput share: error names, the matrix and its rows, the calls of
 * every method with their options, the devices held, and its tests. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "integration-rawbus.h"
#include "integration-util.h"
#include "loopmgr-bus.h"

#define MiB (1024ULL * 1024ULL)

#define DBUS_ERROR_PREFIX            "org.freedesktop.DBus.Error."
#define DBUS_ERROR_INVALID_ARGS      DBUS_ERROR_PREFIX "InvalidArgs"
#define DBUS_ERROR_FILE_NOT_FOUND    DBUS_ERROR_PREFIX "FileNotFound"
#define DBUS_ERROR_UNKNOWN_METHOD    DBUS_ERROR_PREFIX "UnknownMethod"
#define DBUS_ERROR_UNKNOWN_OBJECT    DBUS_ERROR_PREFIX "UnknownObject"
#define DBUS_ERROR_UNKNOWN_PROPERTY  DBUS_ERROR_PREFIX "UnknownProperty"
#define DBUS_ERROR_UNKNOWN_INTERFACE DBUS_ERROR_PREFIX "UnknownInterface"
#define DBUS_ERROR_READ_ONLY         DBUS_ERROR_PREFIX "PropertyReadOnly"
#define PROPERTIES_INTERFACE         "org.freedesktop.DBus.Properties"

/* The row expects the call to succeed. */
#define ACCEPTED NULL

#define CALL_TIMEOUT (30 * USEC_PER_SEC)

/* The matrix of the running test. */
extern struct Matrix {
        size_t rows;
        size_t mismatches;
        char *mismatch_list; /* "method: input; ..." */
        size_t devices;      /* devices under the test's directory that the test holds */
} matrix;

/* One row: the call (result r, error) of method with input was expected to fail with
 * `expected` (or to succeed, ACCEPTED). Prints the row and checks the daemon afterwards. */
void row_impl(Env *e, const char *method, const char *input, const char *expected, int r,
              const sd_bus_error *error, const char *file, int line);

#define row(e, method, input, expected, r, error)                                                  \
        row_impl((e), (method), (input), (expected), (r), (error), __FILE__, __LINE__)

/* At the end of a test: fails it when any row did not get its expected answer. */
void matrix_end_impl(const char *test, const char *file, int line);

#define matrix_end() matrix_end_impl(__func__, __FILE__, __LINE__)

/* One option entry; sig says which member is used. */
typedef struct Opt {
        const char *key;
        const char *sig; /* t u b i s d as */
        uint64_t t;
        const char *s;
        double d;
} Opt;

/* clang-format off */
#define OT(k, v)  {.key = (k), .sig = "t", .t = (v)}
#define OU(k, v)  {.key = (k), .sig = "u", .t = (v)}
#define OB(k, v)  {.key = (k), .sig = "b", .t = (v)}
#define OI(k, v)  {.key = (k), .sig = "i", .t = (uint64_t) (v)}
#define OS(k, v)  {.key = (k), .sig = "s", .s = (v)}
#define OD(k, v)  {.key = (k), .sig = "d", .d = (v)}
#define OAS(k, v) {.key = (k), .sig = "as", .s = (v)}
#define OPTS(...) (const Opt[]){__VA_ARGS__}, ELEMENTSOF(((const Opt[]){__VA_ARGS__}))
#define NO_OPTS   NULL, 0
/* clang-format on */

#define attach_row(e, input, expected, fd, ...)                                                    \
        attach_row_impl((e), "Attach", 'h', &(int){(fd)}, (input), (expected), __VA_ARGS__,        \
                        __FILE__, __LINE__)

#define attach_path_row(e, input, expected, path, ...)                                             \
        attach_row_impl((e), "AttachPath", 's', (path), (input), (expected), __VA_ARGS__,          \
                        __FILE__, __LINE__)

void attach_row_impl(Env *e, const char *member, char lead, const void *lead_value,
                     const char *input, const char *expected, const Opt *opts, size_t n,
                     const char *file, int line);

#define resolve_row(e, input, expected, fd, ...)                                                   \
        resolve_row_impl((e), (input), (expected), (fd), __VA_ARGS__, __FILE__, __LINE__)

void resolve_row_impl(Env *e, const char *input, const char *expected, int fd, const Opt *opts,
                      size_t n, const char *file, int line);

/* Manager.Detach(object, opts), or the Device methods on object. When one of them detached a
 * device of the test against expectation, the count of held devices follows. */
#define detach_row(e, input, expected, object, ...)                                                \
        device_row_impl((e), LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, "Detach", 'o',       \
                        (object), (input), (expected), __VA_ARGS__, __FILE__, __LINE__)

#define device_detach_row(e, input, expected, object, ...)                                         \
        device_row_impl((e), (object), LOOPMGR_DEVICE_INTERFACE, "Detach", 0, NULL, (input),       \
                        (expected), __VA_ARGS__, __FILE__, __LINE__)

#define set_autoclear_row(e, input, expected, object, value, ...)                                  \
        device_row_impl((e), (object), LOOPMGR_DEVICE_INTERFACE, "SetAutoclear", 'b',              \
                        &(int){(value)}, (input), (expected), __VA_ARGS__, __FILE__, __LINE__)

#define set_capacity_row(e, input, expected, object, ...)                                          \
        device_row_impl((e), (object), LOOPMGR_DEVICE_INTERFACE, "SetCapacity", 0, NULL, (input),  \
                        (expected), __VA_ARGS__, __FILE__, __LINE__)

void device_row_impl(Env *e, const char *path, const char *interface, const char *member, char lead,
                     const void *lead_value, const char *input, const char *expected,
                     const Opt *opts, size_t n, const char *file, int line);

#define get_device_row(e, input, expected, spec)                                                   \
        get_device_row_impl((e), (input), (expected), (spec), __FILE__, __LINE__)

void get_device_row_impl(Env *e, const char *input, const char *expected, const char *spec,
                         const char *file, int line);

/* Any signature: where sd-bus must refuse the call before the daemon's code sees it. */
#define sig_row(e, path, interface, member, input, expected, sig, ...)                             \
        sig_row_impl((e), (path), (interface), (member), (input), (expected), __FILE__, __LINE__,  \
                     (sig), ##__VA_ARGS__)

void sig_row_impl(Env *e, const char *path, const char *interface, const char *member,
                  const char *input, const char *expected, const char *file, int line,
                  const char *sig, ...);

/* A handle index that names no fd, sent on the wire by integration-rawbus.c. The answer must
 * come from loopmgrd itself. */
void handle_row(Env *e, const char *member, uint32_t index, const int *fds, unsigned n_fds);

char *make_image(Env *e, uint64_t size);

/* Attaches path (read-write) as a device the test holds; counted in matrix.devices. */
void hold_device(Env *e, const char *path, Attached *ret);

void release_device(Env *e, const Attached *a);

/* The device is still there, attached, with one reference and autoclear off: none of the bad
 * calls changed it. */
void assert_untouched(Env *e, const Attached *a);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_manager_signatures(void **state);
void test_attach_options(void **state);
void test_attach_fds(void **state);
void test_handle_indexes(void **state);
void test_attach_path_inputs(void **state);
void test_detach_objects(void **state);
void test_get_device_inputs(void **state);
void test_device_methods(void **state);
void test_recycled_loop_number(void **state);
