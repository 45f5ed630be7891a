/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the files of test-mount share: constants, the users and the context, the rules, calls
 * as the users, what the daemon and the kernel say, images, and its tests. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "integration-util.h"
#include "polkit-util.h"

#define MiB (1024ULL * 1024ULL)

#define RULES_FILE PK_RULES_DIR "/48-loopmgr-mount-test.rules"
#define LOCK_FILE  "/run/loopmgr-test-mount.lock"
#define MEDIA      "/run/media"

#define ERROR_ACCESS_DENIED "org.freedesktop.DBus.Error.AccessDenied"
#define ERROR_INVALID_ARGS  "org.freedesktop.DBus.Error.InvalidArgs"

#define AGENT_TIMEOUT_MSEC (60 * 1000)

enum { U1, U2, N_USERS };

typedef struct Ctx {
        uid_t uid[N_USERS];
        gid_t gid[N_USERS];
        char *dir[N_USERS]; /* <tmpdir>/<user>, 0700, the user's */
        PkAgent agents[N_USERS];
        int lock_fd;
        char *srcdir;
} Ctx;

extern const char *const user_names[N_USERS];
extern Ctx ctx;

#define RULE(action, user, result) PK_RULE("org.loopmgr." action, user, result)

/* What every test starts from: both users may attach and mount their own devices. */
#define BASE_RULES                                                                                 \
        RULE("attach", "lmdesk1", "YES")                                                           \
        RULE("attach", "lmdesk2", "YES")                                                           \
        RULE("mount", "lmdesk1", "YES")                                                            \
        RULE("mount", "lmdesk2", "YES") RULE("mount-others", "lmdesk1", "NO")

/* lmdesk2's mount-others verdict, which tests change, last. */
#define BASE_RULES_U2_NO BASE_RULES RULE("mount-others", "lmdesk2", "NO")

extern sd_bus *test_bus;

void set_rules(const char *text);
void expect_verdict(unsigned who, const char *action, PkVerdict v);
void agent_do(unsigned who, PkRequest *q, PkReply *p);

/* Attach(fd opened as the user) with read-only as given; tracks the device. */
void user_attach(Env *e, unsigned who, const char *path, bool read_only, Attached *ret);
/* The same with a lifetime ("client", ...), unless NULL. */
void user_attach_lifetime(Env *e, unsigned who, const char *path, bool read_only,
                          const char *lifetime, Attached *ret);
/* test-mount-slow.c: slowfs, and the tests on a slow image. */
void slowfs_stop(void);
void test_slow_mount_others(void **state);
void test_slow_mount_disconnect(void **state);

/* Device.Mount or Device.Unmount as the user, with n OPT_*() options. */
void user_device_call(unsigned who, const char *object, const char *member, PkReply *p, unsigned n,
                      ...);

void expect_device_gone(Env *e, const Attached *a);

/* Device.Detach of the user's own reference; waits until the device is gone when it was the
 * last one. */
void user_detach(Env *e, unsigned who, const Attached *a, bool last);

/* The mount point a successful Mount returned; tracked so that the cleanup unmounts it. */
const char *mount_point_of(Env *e, const PkReply *p);

int user_read(unsigned who, const char *path, PkReply *p);
char *get_string_prop(Env *e, const char *object, const char *name);
uint32_t get_u32_prop(Env *e, const char *object, const char *name);
bool object_exists(Env *e, const char *object);

/* The fields of the mountinfo line whose mount point is `path`: mount options and super
 * options; false when there is none. */
bool mountinfo_find(const char *path, char **ret_opts, char **ret_super, char **ret_type);

void expect_mounted(const char *path, const char *type, const char *const *opts,
                    const char *const *super);

/* The kernel mounts type (built in or loaded; a module it could load is not considered). */
bool kernel_has_fs(const char *type);

char *make_ext4(Env *e, unsigned who, const char *name, const char *label);
char *make_squashfs(Env *e, unsigned who, const char *name);
char *make_vfat(Env *e, unsigned who, const char *name, const char *label);
char *make_blank(Env *e, unsigned who, const char *name);

/* The tests, each defined in one of the topic files; main() lists them. */
void test_ext4_owner(void **state);
void test_squashfs(void **state);
void test_vfat_owner_ids(void **state);
void test_mount_others(void **state);
void test_polkit_no(void **state);
void test_names(void **state);
void test_refusals(void **state);
void test_external_umount(void **state);
void test_restart(void **state);
void test_udev_properties(void **state);
