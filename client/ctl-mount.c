/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * loopmgrctl mount and umount: the libmount side first (options, mounting a node, finding and
 * unmounting a mount; see ctl-mount.h), then the two verbs.
 */

#include <libmount.h>
#include <linux/major.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <systemd/sd-bus.h>

#include "ctl-common.h"
#include "ctl-devices.h"
#include "ctl-mount.h"
#include "ctl-util.h"
#include "loopmgr-bus.h"

static inline void mnt_free_contextp(struct libmnt_context **c) {
        mnt_free_context(*c);
}

static inline void mnt_unref_tablep(struct libmnt_table **t) {
        mnt_unref_table(*t);
}

static inline void mnt_unref_cachep(struct libmnt_cache **c) {
        mnt_unref_cache(*c);
}

void mount_options_done(MountOptions *o) {
        free(o->options);
        free(o->offset);
        free(o->size_limit);
        *o = (MountOptions){};
}

static bool name_is(const char *name, size_t namesz, const char *what) {
        return namesz == strlen(what) && strncmp(name, what, namesz) == 0;
}

/* Replaces *field with a copy of the value, or fails for a missing or empty value. */
static int take_value(const char *value, size_t valuesz, char **field) {
        char *v;

        if (!value || valuesz == 0)
                return -EINVAL;
        v = strndup(value, valuesz);
        if (!v)
                return -ENOMEM;
        free(*field);
        *field = v;
        return 0;
}

int mount_options_parse(const char *optstr, MountOptions *ret, char **ret_bad) {
        _cleanup_(mount_options_done) MountOptions o = {};
        _cleanup_free_ char *copy = NULL;
        unsigned long flags = 0;
        char *p;
        int r;

        if (optstr) {
                copy = strdup(optstr);
                if (!copy)
                        return -ENOMEM;
        }

        for (p = copy; p;) {
                _cleanup_free_ char *n = NULL, *v = NULL;
                size_t namesz, valuesz;
                char *name, *value;

                r = mnt_optstr_next_option(&p, &name, &namesz, &value, &valuesz);
                if (r == 1)
                        break;
                if (r < 0) {
                        *ret_bad = NULL;
                        return -EINVAL;
                }

                r = 0;
                if (name_is(name, namesz, "loop")) {
                        /* "loop" asks for what we do anyway; "loop=/dev/loopN" would pick a
                         * device behind loopmgrd's back. */
                        if (!value)
                                continue;
                        r = -EINVAL;
                } else if (name_is(name, namesz, "offset"))
                        r = take_value(value, valuesz, &o.offset);
                else if (name_is(name, namesz, "sizelimit"))
                        r = take_value(value, valuesz, &o.size_limit);
                else if (name_is(name, namesz, "encryption"))
                        r = -EINVAL;
                else {
                        n = strndup(name, namesz);
                        v = value ? strndup(value, valuesz) : NULL;
                        if (!n || (value && !v))
                                return -ENOMEM;
                        r = mnt_optstr_append_option(&o.options, n, v);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (r == -EINVAL) {
                        *ret_bad =
                                strndup(name, value ? (size_t) (value - name) + valuesz : namesz);
                        if (!*ret_bad)
                                return -ENOMEM;
                }
                if (r < 0)
                        return r;
        }

        if (o.options) {
                /* Walks the options in order, so "ro,rw" is writable, like mount(8). */
                r = mnt_optstr_get_flags(o.options, &flags, mnt_get_builtin_optmap(MNT_LINUX_MAP));
                if (r < 0) {
                        *ret_bad = NULL;
                        return -EINVAL;
                }
        }
        o.read_only = flags & MS_RDONLY;

        *ret = o;
        o = (MountOptions){};
        return 0;
}

bool mount_options_has(const MountOptions *o, const char *name) {
        char *value = NULL;
        size_t valuesz = 0;

        return o->options && mnt_optstr_get_option(o->options, name, &value, &valuesz) == 0;
}

int mount_options_force_read_only(MountOptions *o) {
        int r;

        /* Appended, so that it wins over an earlier "rw". */
        r = mnt_optstr_append_option(&o->options, "ro", NULL);
        if (r < 0)
                return r;
        o->read_only = true;
        return 0;
}

/* libmount's text for the outcome rc of an operation on cxt, NULL when it has none. */
static char *context_message(struct libmnt_context *cxt, int rc) {
        char buf[BUFSIZ] = "";

        (void) mnt_context_get_excode(cxt, rc, buf, sizeof(buf));
        return buf[0] ? strdup(buf) : NULL;
}

/* The errno for a failed operation: the system call's when it ran, else libmount's. */
static int context_errno(struct libmnt_context *cxt, int rc) {
        int err = mnt_context_syscall_called(cxt) ? mnt_context_get_syscall_errno(cxt) : 0;

        if (err > 0)
                return -err;
        if (rc < 0 && rc > -4096)
                return rc;
        /* A helper (mount.<type>) failed, or a libmount-specific MNT_ERR_* code. */
        return -EIO;
}

int ctl_mount(const char *source, const char *target, const char *fstype, const char *options,
              char **ret_message) {
        _cleanup_(mnt_free_contextp) struct libmnt_context *cxt = NULL;
        int r, rc;

        cxt = mnt_new_context();
        if (!cxt)
                return -ENOMEM;

        r = mnt_context_set_source(cxt, source);
        if (r >= 0)
                r = mnt_context_set_target(cxt, target);
        if (r >= 0 && fstype)
                r = mnt_context_set_fstype(cxt, fstype);
        if (r >= 0 && options)
                r = mnt_context_set_options(cxt, options);
        if (r < 0)
                return r;

        rc = mnt_context_mount(cxt);

        /* Non-zero with status 1 means the mount happened but a later step (the utab update)
         * failed: the file system is mounted, so the device must stay. */
        if (rc == 0 || mnt_context_get_status(cxt) == 1) {
                *ret_message = rc == 0 ? NULL : context_message(cxt, rc);
                return 0;
        }

        *ret_message = context_message(cxt, rc);
        return context_errno(cxt, rc);
}

int ctl_find_mount(const char *dir, char **ret_target, char **ret_source) {
        _cleanup_(mnt_unref_tablep) struct libmnt_table *tb = NULL;
        _cleanup_(mnt_unref_cachep) struct libmnt_cache *cache = NULL;
        _cleanup_free_ char *target = NULL, *source = NULL;
        struct libmnt_fs *fs;
        int r;

        tb = mnt_new_table();
        cache = mnt_new_cache();
        if (!tb || !cache)
                return -ENOMEM;

        /* With a cache, the lookup also compares canonical paths (symlinks, "..", relative
         * names), as umount(8) does. */
        r = mnt_table_set_cache(tb, cache);
        if (r < 0)
                return r;
        r = mnt_table_parse_mtab(tb, NULL);
        if (r < 0)
                return r;

        /* Backwards: the last mount on dir is the one that is visible and that umount(2)
         * removes. */
        fs = mnt_table_find_target(tb, dir, MNT_ITER_BACKWARD);
        if (!fs)
                return -ENOENT;

        target = strdup(strempty(mnt_fs_get_target(fs)));
        if (!target)
                return -ENOMEM;
        if (mnt_fs_get_srcpath(fs)) {
                source = strdup(mnt_fs_get_srcpath(fs));
                if (!source)
                        return -ENOMEM;
        }

        *ret_target = TAKE_PTR(target);
        *ret_source = TAKE_PTR(source);
        return 0;
}

int ctl_umount(const char *target, char **ret_message) {
        _cleanup_(mnt_free_contextp) struct libmnt_context *cxt = NULL;
        int r, rc;

        cxt = mnt_new_context();
        if (!cxt)
                return -ENOMEM;

        r = mnt_context_set_target(cxt, target);
        if (r < 0)
                return r;

        /* mnt_context_umount() in steps, so that loop deletion can be switched off after
         * prepare: it turns it on by itself for a mount that utab records with "loop". */
        rc = mnt_context_prepare_umount(cxt);
        if (rc == 0) {
                r = mnt_context_enable_loopdel(cxt, false);
                if (r < 0)
                        return r;
                rc = mnt_context_do_umount(cxt);
        }
        if (rc == 0)
                rc = mnt_context_finalize_umount(cxt);

        /* As for mounting: status 1 means umount(2) succeeded, whatever came after. */
        if (rc == 0 || mnt_context_get_status(cxt) == 1) {
                *ret_message = rc == 0 ? NULL : context_message(cxt, rc);
                return 0;
        }

        *ret_message = context_message(cxt, rc);
        return context_errno(cxt, rc);
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

int verb_mount(sd_bus *bus, char **args) {
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

        /* As attach and mount(8) do: a file we may only read is mounted read-only. */
        r = open_image(image, mo.read_only, &fd, &fallback_read_only);
        if (r != 0)
                return r;

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

int verb_umount(sd_bus *bus, char **args) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        _cleanup_free_ char *target = NULL, *source = NULL, *object = NULL, *message = NULL;
        const char *dir = args[0], *state;
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
        if (!path_is_loop_node(source, NULL))
                return log_fail(EXIT_FAILURE,
                                "%s is mounted from %s, which is not a loop device; use umount(8).",
                                target, source ?: "something that is not a device");

        r = resolve_device(bus, source, &object);
        if (r != 0)
                return r;
        r = device_info_get_or_log(bus, object, &d);
        if (r != 0)
                return r;

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
