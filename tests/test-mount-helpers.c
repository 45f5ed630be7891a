/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* test-mount's helpers: the rules, calls as the users, what the daemon and the kernel say,
 * images. */

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-util.h"
#include "loopmgr-bus.h"
#include "polkit-util.h"
#include "test-mount.h"

/* ------------------------------------------------------------------------------------------ */
/* Rules */

sd_bus *test_bus;

void set_rules(const char *text) {
        int r = pk_rules_write(RULES_FILE, text);
        if (r < 0)
                fail_msg("writing %s: %s", RULES_FILE, strerror(-r));
}

void expect_verdict(unsigned who, const char *action, PkVerdict v) {
        PkVerdict last = PK_VERDICT_NO;
        int r = pk_await_verdict(test_bus, ctx.agents[who].unique_name, action, v, 5 * USEC_PER_SEC,
                                 &last);
        if (r < 0)
                fail_msg("polkit says %s for %s / %s, expected %s (%s)", pk_verdict_name(last),
                         user_names[who], action, pk_verdict_name(v), strerror(-r));
}

/* ------------------------------------------------------------------------------------------ */
/* Calls as the users */

void agent_do(unsigned who, PkRequest *q, PkReply *p) {
        int r = pk_agent_call(&ctx.agents[who], q, p, AGENT_TIMEOUT_MSEC);
        if (r < 0)
                fail_msg("no reply from the agent for %s: %s", user_names[who], strerror(-r));
}

/* Attach(fd opened as the user) with read-only and, unless NULL, lifetime as given; tracks the
 * device. */
void user_attach_lifetime(Env *e, unsigned who, const char *path, bool read_only,
                          const char *lifetime, Attached *ret) {
        static PkRequest q;
        static PkReply p;

        pk_request_call(&q, LOOPMGR_MANAGER_PATH, LOOPMGR_MANAGER_INTERFACE, "Attach");
        assert_int_equal(pk_request_arg(&q, 'h', read_only ? O_RDONLY : O_RDWR, path), 0);
        if (lifetime)
                assert_int_equal(pk_request_options(&q, 2, OPT_B(LOOPMGR_OPT_READ_ONLY, read_only),
                                                    OPT_S(LOOPMGR_OPT_LIFETIME, lifetime)),
                                 0);
        else
                assert_int_equal(pk_request_options(&q, 1, OPT_B(LOOPMGR_OPT_READ_ONLY, read_only)),
                                 0);
        agent_do(who, &q, &p);
        pk_expect_ok(&p, "Attach");
        const PkValue *object = pk_reply_value(&p, 0, 'o'), *node = pk_reply_value(&p, 1, 's'),
                      *diskseq = pk_reply_value(&p, 2, 't');
        assert_non_null(object);
        assert_non_null(node);
        assert_non_null(diskseq);
        assert_true(strncmp(node->string, "/dev/", 5) == 0);
        assert_int_equal(env_track_device(e, node->string + 5, diskseq->number), 0);
        *ret = (Attached){.object = strdup(object->string),
                          .node = strdup(node->string),
                          .diskseq = diskseq->number};
        assert_non_null(ret->object);
        assert_non_null(ret->node);
}

void user_attach(Env *e, unsigned who, const char *path, bool read_only, Attached *ret) {
        user_attach_lifetime(e, who, path, read_only, NULL, ret);
}

void user_device_call(unsigned who, const char *object, const char *member, PkReply *p, unsigned n,
                      ...) {
        static PkRequest q;
        va_list ap;

        pk_request_call(&q, object, LOOPMGR_DEVICE_INTERFACE, member);
        va_start(ap, n);
        int r = pk_request_options_va(&q, n, ap);
        va_end(ap);
        assert_int_equal(r, 0);
        agent_do(who, &q, p);
}

void user_detach(Env *e, unsigned who, const Attached *a, bool last) {
        static PkRequest q;
        static PkReply p;
        pk_request_call(&q, a->object, LOOPMGR_DEVICE_INTERFACE, "Detach");
        agent_do(who, &q, &p);
        pk_expect_ok(&p, "Detach");
        if (last)
                expect_device_gone(e, a);
}

const char *mount_point_of(Env *e, const PkReply *p) {
        pk_expect_ok(p, "Mount");
        const PkValue *v = pk_reply_value(p, 0, 's');
        assert_non_null(v);
        assert_int_equal(env_track_mount(e, v->string), 0);
        return v->string;
}

int user_read(unsigned who, const char *path, PkReply *p) {
        static PkRequest q;
        memset(&q, 0, sizeof(q));
        q.op = PK_OP_READ_FILE;
        assert_int_equal(pk_request_arg(&q, 's', 0, path), 0);
        agent_do(who, &q, p);
        return p->r;
}

/* ------------------------------------------------------------------------------------------ */
/* What the daemon and the kernel say */

char *get_string_prop(Env *e, const char *object, const char *name) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        char *s = NULL;
        int r = sd_bus_get_property_string(e->bus, LOOPMGR_BUS_NAME, object,
                                           LOOPMGR_DEVICE_INTERFACE, name, &error, &s);
        if (r < 0)
                fail_msg("Get %s of %s: %s", name, object, error.message ?: strerror(-r));
        return s;
}

uint32_t get_u32_prop(Env *e, const char *object, const char *name) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        uint32_t v = 0;
        int r = sd_bus_get_property_trivial(e->bus, LOOPMGR_BUS_NAME, object,
                                            LOOPMGR_DEVICE_INTERFACE, name, &error, 'u', &v);
        if (r < 0)
                fail_msg("Get %s of %s: %s", name, object, error.message ?: strerror(-r));
        return v;
}

bool object_exists(Env *e, const char *object) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        char *s = NULL;
        int r = sd_bus_get_property_string(e->bus, LOOPMGR_BUS_NAME, object,
                                           LOOPMGR_DEVICE_INTERFACE, "Node", &error, &s);
        free(s);
        return r >= 0;
}

void expect_device_gone(Env *e, const Attached *a) {
        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        while (object_exists(e, a->object) || loop_binding_present(a->node + 5, a->diskseq) > 0) {
                if (now_usec() >= deadline)
                        fail_msg("%s (%s) is still there", a->node, a->object);
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

bool mountinfo_find(const char *path, char **ret_opts, char **ret_super, char **ret_type) {
        FILE *f = fopen("/proc/self/mountinfo", "re");
        char *line = NULL;
        size_t size = 0;
        bool found = false;

        assert_non_null(f);
        while (getline(&line, &size, f) > 0) {
                char target[4096], opts[1024], rest[4096];
                /* id parent maj:min root target opts ... - type source super */
                if (sscanf(line, "%*s %*s %*s %*s %4095s %1023s %4095[^\n]", target, opts, rest) !=
                    3)
                        continue;
                if (!streq(target, path))
                        continue;
                /* Optional fields (there may be none), then "-". */
                const char *dash = strncmp(rest, "- ", 2) == 0 ? rest - 1 : strstr(rest, " - ");
                char type[64] = "", source[1024] = "", super[1024] = "";
                if (!dash || sscanf(dash + 3, "%63s %1023s %1023s", type, source, super) < 2)
                        continue;
                if (ret_opts)
                        *ret_opts = strdup(opts);
                if (ret_super)
                        *ret_super = strdup(super);
                if (ret_type)
                        *ret_type = strdup(type);
                found = true;
        }
        free(line);
        fclose(f);
        return found;
}

static bool has_option(const char *list, const char *opt) {
        size_t n = strlen(opt);
        for (const char *p = list; p && *p;) {
                size_t k = strcspn(p, ",");
                if (k == n && strncmp(p, opt, n) == 0)
                        return true;
                p += k + (p[k] ? 1 : 0);
        }
        return false;
}

void expect_mounted(const char *path, const char *type, const char *const *opts,
                    const char *const *super) {
        _cleanup_free_ char *o = NULL, *s = NULL, *t = NULL;
        if (!mountinfo_find(path, &o, &s, &t))
                fail_msg("%s is not in /proc/self/mountinfo", path);
        print_message("  %s: %s %s %s\n", path, t, o, s);
        assert_string_equal(t, type);
        for (; opts && *opts; opts++)
                if (!has_option(o, *opts))
                        fail_msg("%s is mounted with '%s', without %s", path, o, *opts);
        for (; super && *super; super++)
                if (!has_option(s, *super))
                        fail_msg("%s has super options '%s', without %s", path, s, *super);
}

bool kernel_has_fs(const char *type) {
        FILE *f = fopen("/proc/filesystems", "re");
        char line[256];
        bool found = false;

        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                char *t = strrchr(line, '\t');
                t = t ? t + 1 : line;
                t[strcspn(t, "\n")] = 0;
                if (streq(t, type))
                        found = true;
        }
        fclose(f);
        if (!found && access("/lib/modules", F_OK) >= 0) {
                /* Loadable: the daemon's mount would load it. */
                found = true;
        }
        return found;
}

/* ------------------------------------------------------------------------------------------ */
/* Images */

/* dir/<name> with a file hello.txt ("hello from <name>\n") inside, owned by the user. */
static char *content_dir(Env *e, const char *name) {
        _cleanup_free_ char *dir = NULL, *file = NULL;
        assert_true(asprintf(&dir, "%s/content-%s", e->tmpdir, name) > 0);
        (void) mkdir(dir, 0755);
        assert_true(asprintf(&file, "%s/hello.txt", dir) > 0);
        FILE *f = fopen(file, "we");
        assert_non_null(f);
        fprintf(f, "hello from %s\n", name);
        assert_int_equal(fclose(f), 0);
        assert_int_equal(chmod(file, 0644), 0);
        return TAKE_PTR(dir);
}

static char *user_image(Env *e, unsigned who, const char *name) {
        char *path = NULL;
        assert_true(asprintf(&path, "%s/%s", ctx.dir[who], name) > 0);
        return path;
}

static void give(unsigned who, const char *path) {
        assert_int_equal(chown(path, ctx.uid[who], ctx.gid[who]), 0);
        assert_int_equal(chmod(path, 0600), 0);
}

char *make_ext4(Env *e, unsigned who, const char *name, const char *label) {
        _cleanup_free_ char *content = content_dir(e, name);
        char *img = user_image(e, who, name);
        int fd = open(img, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 16 * MiB), 0);
        close(fd);
        env_run_ok("mkfs.ext4", "-q", "-F", "-L", label, "-d", content, img);
        give(who, img);
        return img;
}

char *make_squashfs(Env *e, unsigned who, const char *name) {
        _cleanup_free_ char *content = content_dir(e, name);
        char *img = user_image(e, who, name);
        env_run_ok("mksquashfs", content, img, "-quiet", "-noappend", "-no-progress");
        give(who, img);
        return img;
}

char *make_vfat(Env *e, unsigned who, const char *name, const char *label) {
        char *img = user_image(e, who, name);
        int fd = open(img, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 16 * MiB), 0);
        close(fd);
        env_run_ok("mkfs.vfat", "-n", label, img);
        give(who, img);
        return img;
}

char *make_blank(Env *e, unsigned who, const char *name) {
        char *img = user_image(e, who, name);
        int fd = open(img, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 8 * MiB), 0);
        close(fd);
        give(who, img);
        return img;
}
