/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <libmount.h>
#include <sys/mount.h>

#include "ctl-mount.h"
#include "ctl-util.h"

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
