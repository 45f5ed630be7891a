/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The daemon process of the integration tests: starting, signalling and stopping loopmgrd,
 * and the consistency check of its objects against losetup --list. */

#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/* cmocka wants these first. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "integration-internal.h"
#include "integration-util.h"
#include "loopmgr-bus.h"

/* --- The daemon process --- */

int env_find_binary(const char *env_name, const char *name, char **ret) {
        const char *v = getenv(env_name);
        if (v && *v) {
                char *s = strdup(v);
                if (!s)
                        return -ENOMEM;
                *ret = s;
                return 0;
        }
        /* Fallback: the build directory, one level above tests/. */
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (n < 0)
                return -errno;
        exe[n] = 0;
        char *dir = dirname(dirname(exe));
        if (asprintf(ret, "%s/%s", dir, name) < 0)
                return -ENOMEM;
        return 0;
}

static int bus_name_owner(Env *e, char **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *owner;
        int r;

        r = sd_bus_call_method(e->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "GetNameOwner", &error, &reply, "s",
                               LOOPMGR_BUS_NAME);
        if (r < 0)
                return sd_bus_error_has_name(&error, "org.freedesktop.DBus.Error.NameHasNoOwner")
                               ? 0
                               : r;
        r = sd_bus_message_read(reply, "s", &owner);
        if (r < 0)
                return r;
        if (ret) {
                *ret = strdup(owner);
                if (!*ret)
                        return -ENOMEM;
        }
        return 1;
}

int env_start_daemon(Env *e) {
        return env_start_daemon_with(e, NULL, NULL);
}

int env_start_daemon_with(Env *e, char *const *args, char *const *env) {
        _cleanup_free_ char *state_dir = NULL;
        pid_t parent = getpid();
        size_t n_args = 0;
        int r;

        if (asprintf(&state_dir, "%s/state", e->tmpdir) < 0)
                return -ENOMEM;

        r = bus_name_owner(e, NULL);
        if (r < 0)
                return r;
        if (r > 0) {
                print_error("%s is already owned on this bus: another loopmgrd is running\n",
                            LOOPMGR_BUS_NAME);
                return -EADDRINUSE;
        }

        while (args && args[n_args])
                n_args++;

        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                /* Never outlive the test binary, even if it crashes. */
                (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (getppid() != parent)
                        _exit(1);
                if (setenv("LOOPMGR_STATE_DIR", state_dir, 1) < 0)
                        _exit(1);
                for (char *const *i = env; i && *i; i++)
                        if (putenv(*i) < 0)
                                _exit(1);
                char **argv = calloc(n_args + 2, sizeof(char *));
                if (!argv)
                        _exit(1);
                argv[0] = (char *) "loopmgrd";
                for (size_t i = 0; i < n_args; i++)
                        argv[i + 1] = args[i];
                execv(e->loopmgrd, argv);
                fprintf(stderr, "Failed to execute %s: %m\n", e->loopmgrd);
                _exit(127);
        }
        e->daemon_pid = pid;

        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        for (;;) {
                int status;
                pid_t w = waitpid(pid, &status, WNOHANG);
                if (w == pid) {
                        e->daemon_pid = 0;
                        print_error("loopmgrd exited during startup (%s %d)\n",
                                    WIFEXITED(status) ? "status" : "signal",
                                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                        return -ECHILD;
                }
                free(e->daemon_unique_name);
                e->daemon_unique_name = NULL;
                r = bus_name_owner(e, &e->daemon_unique_name);
                if (r < 0)
                        return r;
                if (r > 0)
                        return 0;
                if (now_usec() >= deadline) {
                        print_error("loopmgrd did not take %s within 10 s\n", LOOPMGR_BUS_NAME);
                        return -ETIMEDOUT;
                }
                sleep_usec(20 * USEC_PER_MSEC);
        }
}

int env_kill_daemon(Env *e, int sig) {
        int status;

        if (e->daemon_pid <= 0)
                return -ESRCH;
        if (kill(e->daemon_pid, sig) < 0)
                return -errno;

        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        for (;;) {
                pid_t w = waitpid(e->daemon_pid, &status, WNOHANG);
                if (w == e->daemon_pid)
                        break;
                if (w < 0)
                        return -errno;
                if (now_usec() >= deadline) {
                        print_error("loopmgrd did not exit within 10 s of signal %d, killing it\n",
                                    sig);
                        (void) kill(e->daemon_pid, SIGKILL);
                        (void) waitpid(e->daemon_pid, &status, 0);
                        e->daemon_pid = 0;
                        return -ETIMEDOUT;
                }
                sleep_usec(2 * USEC_PER_MSEC);
        }
        e->daemon_pid = 0;
        free(e->daemon_unique_name);
        e->daemon_unique_name = NULL;

        if (WIFSIGNALED(status))
                return WTERMSIG(status) == sig ? 0 : -EPROTO;
        /* A signal the daemon handles (SIGTERM) must end in a clean exit. */
        return WEXITSTATUS(status) == 0 ? 0 : -EPROTO;
}

int proc_vmrss_kib(pid_t pid, uint64_t *ret) {
        _cleanup_free_ char *path = NULL, *line = NULL;
        size_t size = 0;

        if (asprintf(&path, "/proc/%d/status", (int) pid) < 0)
                return -ENOMEM;
        _cleanup_(fclosep) FILE *f = fopen(path, "re");
        if (!f)
                return -errno;
        while (getline(&line, &size, f) > 0) {
                unsigned long long v;
                if (sscanf(line, "VmRSS: %llu kB", &v) == 1) {
                        *ret = v;
                        return 0;
                }
        }
        return -ENODATA;
}

int env_stop_daemon(Env *e) {
        int status;

        if (e->daemon_pid <= 0)
                return 0;
        if (kill(e->daemon_pid, SIGTERM) < 0)
                return -errno;

        uint64_t deadline = now_usec() + 10 * USEC_PER_SEC;
        for (;;) {
                pid_t w = waitpid(e->daemon_pid, &status, WNOHANG);
                if (w == e->daemon_pid)
                        break;
                if (w < 0)
                        return -errno;
                if (now_usec() >= deadline) {
                        print_error("loopmgrd did not exit within 10 s of SIGTERM, killing it\n");
                        (void) kill(e->daemon_pid, SIGKILL);
                        (void) waitpid(e->daemon_pid, &status, 0);
                        e->daemon_pid = 0;
                        return -ETIMEDOUT;
                }
                sleep_usec(20 * USEC_PER_MSEC);
        }
        e->daemon_pid = 0;

        if (WIFSIGNALED(status)) {
                print_error("loopmgrd was killed by signal %d (%s)\n", WTERMSIG(status),
                            strsignal(WTERMSIG(status)));
                return -EPROTO;
        }
        if (WEXITSTATUS(status) != 0) {
                print_error("loopmgrd exited with status %d\n", WEXITSTATUS(status));
                return -EPROTO;
        }
        return 0;
}

/* Whether backing (a path) is under dir, or is the node of a device in names[] or of one of
 * its partitions ("/dev/loop3", "/dev/loop3p1"). */
static bool backing_in_scope(const char *backing, const char *dir, char **names, size_t n_names) {
        size_t len = strlen(dir);

        if (!backing)
                return false;
        if (strncmp(backing, dir, len) == 0 && backing[len] == '/')
                return true;
        if (strncmp(backing, "/dev/", 5) != 0)
                return false;
        for (size_t i = 0; i < n_names; i++) {
                size_t l = strlen(names[i]);
                const char *rest = backing + 5 + l;
                if (strncmp(backing + 5, names[i], l) != 0)
                        continue;
                if (*rest == 0)
                        return true;
                if (*rest == 'p' && rest[1] && strspn(rest + 1, "0123456789") == strlen(rest + 1))
                        return true;
        }
        return false;
}

/* The nodes ("/dev/loopN") of every device that is backed, directly or through other loop
 * devices and their partitions, by a file under dir, in either view. */
static int scope_nodes(const char *dir, const LosetupEntry *l, size_t nl, const DaemonDevice *d,
                       size_t nd, char ***ret, size_t *ret_n) {
        char **names = NULL; /* "loopN" */
        size_t n = 0;
        bool added;

        do {
                added = false;
                for (size_t i = 0; i < nl + nd; i++) {
                        const char *node = i < nl ? l[i].node : d[i - nl].props.node;
                        const char *backing =
                                i < nl ? l[i].back_file : d[i - nl].props.backing_file;
                        bool known = false;

                        if (!node || strncmp(node, "/dev/", 5) != 0)
                                continue;
                        for (size_t j = 0; j < n; j++)
                                if (streq(names[j], node + 5))
                                        known = true;
                        if (known || !backing_in_scope(backing, dir, names, n))
                                continue;
                        char *s = strdup(node + 5);
                        if (!s || strv_push(&names, &n, s) < 0) {
                                free(s);
                                strv_free(names);
                                return -ENOMEM;
                        }
                        added = true;
                }
        } while (added);

        *ret = names;
        *ret_n = n;
        return 0;
}

static bool node_in(char **names, size_t n, const char *node) {
        if (!node || strncmp(node, "/dev/", 5) != 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (streq(names[i], node + 5))
                        return true;
        return false;
}

/* One snapshot of both views; 1 and a report of the differences when they disagree. With a
 * scope, only devices backed (through any layers) by files under that directory count, and
 * *ret_ignored says how many differences elsewhere were left out. */
static int consistency_report(Env *e, const char *scope, char **ret_report, size_t *ret_ignored) {
        LosetupEntry *l = NULL;
        DaemonDevice *d = NULL;
        size_t nl = 0, nd = 0, n_names = 0, ignored = 0;
        char **names = NULL;
        char *report = NULL;
        size_t report_size = 0;
        FILE *f;
        int r;

        r = losetup_list(&l, &nl);
        if (r < 0)
                return r;
        r = daemon_devices_list(e, &d, &nd);
        if (r < 0) {
                losetup_entries_free(l, nl);
                return r;
        }
        if (scope)
                r = scope_nodes(scope, l, nl, d, nd, &names, &n_names);
        f = r < 0 ? NULL : open_memstream(&report, &report_size);
        if (!f) {
                losetup_entries_free(l, nl);
                daemon_devices_free(d, nd);
                strv_free(names);
                return -ENOMEM;
        }

        for (size_t i = 0; i < nl; i++) {
                const DaemonDevice *match = NULL;
                if (scope && !node_in(names, n_names, l[i].node)) {
                        /* Counted below only if it differs. */
                        for (size_t j = 0; j < nd; j++)
                                if (streq_ptr(d[j].props.node, l[i].node))
                                        match = &d[j];
                        if (!match || !streq_ptr(match->props.backing_file, l[i].back_file) ||
                            match->props.offset != l[i].offset ||
                            match->props.size_limit != l[i].size_limit)
                                ignored++;
                        continue;
                }
                for (size_t j = 0; j < nd; j++)
                        if (streq_ptr(d[j].props.node, l[i].node))
                                match = &d[j];
                if (!match) {
                        fprintf(f,
                                "  kernel: %s bound to '%s' (offset %" PRIu64 "), daemon: no "
                                "object\n",
                                l[i].node, l[i].back_file, l[i].offset);
                        continue;
                }
                if (!streq_ptr(match->props.backing_file, l[i].back_file))
                        fprintf(f, "  %s: kernel backing file '%s', daemon BackingFile '%s'\n",
                                l[i].node, l[i].back_file, match->props.backing_file);
                if (match->props.offset != l[i].offset)
                        fprintf(f, "  %s: kernel offset %" PRIu64 ", daemon Offset %" PRIu64 "\n",
                                l[i].node, l[i].offset, match->props.offset);
                if (match->props.size_limit != l[i].size_limit)
                        fprintf(f,
                                "  %s: kernel sizelimit %" PRIu64 ", daemon SizeLimit %" PRIu64
                                "\n",
                                l[i].node, l[i].size_limit, match->props.size_limit);
        }
        for (size_t j = 0; j < nd; j++) {
                bool found = false;
                for (size_t i = 0; i < nl; i++)
                        if (streq_ptr(d[j].props.node, l[i].node))
                                found = true;
                if (scope && !node_in(names, n_names, d[j].props.node)) {
                        if (!found)
                                ignored++;
                        continue;
                }
                if (!found)
                        fprintf(f, "  daemon: %s for %s, kernel: not bound\n", d[j].object,
                                d[j].props.node ?: "(no Node)");
                _cleanup_free_ char *expected = device_object_path(d[j].props.diskseq);
                if (expected && !streq(expected, d[j].object))
                        fprintf(f, "  daemon: %s has DiskSeq %" PRIu64 "\n", d[j].object,
                                d[j].props.diskseq);
                if (d[j].props.present != DEVICE_PROPS_ALL)
                        fprintf(f, "  daemon: %s lacks properties (mask %#x)\n", d[j].object,
                                d[j].props.present);
                if (d[j].props.type_errors)
                        fprintf(f, "  daemon: %s property types: %s\n", d[j].object,
                                d[j].props.type_errors);
        }

        fclose(f);
        losetup_entries_free(l, nl);
        daemon_devices_free(d, nd);
        strv_free(names);
        if (ret_ignored)
                *ret_ignored = ignored;
        if (report_size == 0) {
                free(report);
                return 0;
        }
        *ret_report = report;
        return 1;
}

static int check_consistency_scoped(Env *e, const char *scope, uint64_t timeout_usec, bool quiet) {
        uint64_t deadline = now_usec() + timeout_usec;
        _cleanup_free_ char *report = NULL;
        size_t ignored = 0;

        for (;;) {
                free(report);
                report = NULL;
                int r = consistency_report(e, scope, &report, &ignored);
                if (r < 0) {
                        print_error("consistency check failed: %s\n", strerror(-r));
                        return r;
                }
                if (r == 0) {
                        if (ignored > 0 && !quiet)
                                print_message("note: %zu difference(s) between losetup and the "
                                              "daemon on devices not backed by %s ignored "
                                              "(other users of this kernel)\n",
                                              ignored, scope);
                        return 0;
                }
                if (now_usec() >= deadline)
                        break;
                sleep_usec(100 * USEC_PER_MSEC);
        }
        if (!quiet)
                print_error("losetup --list and the daemon's objects disagree%s%s:\n%s",
                            scope ? " on devices backed by " : "", scope ?: "", report);
        return -1;
}

int env_check_consistency(Env *e) {
        return check_consistency_scoped(e, NULL, 3 * USEC_PER_SEC, false);
}

int env_check_consistency_under(Env *e, const char *dir) {
        /* The whole host first; when other users of the kernel keep udev (and so the daemon)
         * busy, our own devices must still agree exactly. */
        if (check_consistency_scoped(e, NULL, 3 * USEC_PER_SEC, true) == 0)
                return 0;
        return check_consistency_scoped(e, dir, 3 * USEC_PER_SEC, false);
}

int env_check_consistency_only_under(Env *e, const char *dir, uint64_t timeout_usec) {
        /* Quietly (no note about the rest of the host after every call); on failure once more
         * to print the differences. */
        if (check_consistency_scoped(e, dir, timeout_usec, true) == 0)
                return 0;
        return check_consistency_scoped(e, dir, 0, false);
}

size_t env_detach_all_under(const char *dir) {
        LosetupEntry *l = NULL;
        size_t n = 0, count = 0, len = strlen(dir);

        if (losetup_list(&l, &n) < 0)
                return 0;
        for (size_t i = 0; i < n; i++)
                if (strncmp(l[i].back_file, dir, len) == 0 && l[i].back_file[len] == '/') {
                        char *argv[] = {(char *) "losetup", (char *) "-d", l[i].node, NULL};
                        print_message("cleanup: losetup -d %s (%s)\n", l[i].node, l[i].back_file);
                        (void) run_command(argv, NULL, NULL, NULL);
                        count++;
                }
        losetup_entries_free(l, n);
        return count;
}

bool env_wait_nothing_under(const char *dir, uint64_t timeout_usec) {
        uint64_t deadline = now_usec() + timeout_usec;
        for (;;) {
                size_t n;
                if (losetup_count_backed_by(dir, true, &n) >= 0 && n == 0)
                        return true;
                if (now_usec() >= deadline)
                        return false;
                sleep_usec(50 * USEC_PER_MSEC);
        }
}
