/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#include "guard.h"
#include "log.h"
#include "util.h"

#define LOOP_SET_FD_CMD    0x4C00
#define LOOP_CHANGE_FD_CMD 0x4C06
#define LOOP_CONFIGURE_CMD 0x4C0A

static const char *const mode_names[_GUARD_MODE_MAX] = {
        [GUARD_MODE_OFF] = "off",
        [GUARD_MODE_AUDIT] = "audit",
        [GUARD_MODE_ALIASES] = "aliases",
        [GUARD_MODE_EXCLUSIVE] = "exclusive",
};

const char *guard_mode_to_string(GuardMode mode) {
        if ((unsigned) mode >= _GUARD_MODE_MAX)
                return NULL;
        return mode_names[mode];
}

int guard_mode_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        for (int i = 0; i < _GUARD_MODE_MAX; i++)
                if (streq(s, mode_names[i]))
                        return i;
        return -EINVAL;
}

GuardKey guard_key_file(dev_t st_dev, uint64_t ino) {
        return (GuardKey){.dev = LOOP_GUARD_KDEV(major(st_dev), minor(st_dev)), .ino = ino};
}

GuardKey guard_key_block(dev_t rdev) {
        return (GuardKey){.dev = LOOP_GUARD_KDEV(major(rdev), minor(rdev)), .ino = 0};
}

int guard_key_compare(const void *a, const void *b) {
        const GuardKey *x = a, *y = b;

        if (x->dev != y->dev)
                return x->dev < y->dev ? -1 : 1;
        if (x->ino != y->ino)
                return x->ino < y->ino ? -1 : 1;
        return 0;
}

GuardBase guard_base(GuardKey key, dev_t holder, uint32_t flags) {
        return (GuardBase){
                .key = key,
                .holder = holder == 0 ? 0 : LOOP_GUARD_KDEV(major(holder), minor(holder)),
                .flags = flags,
        };
}

int guard_base_compare(const void *a, const void *b) {
        const GuardBase *x = a, *y = b;

        return guard_key_compare(&x->key, &y->key);
}

size_t guard_bases_uniq(GuardBase *bases, size_t n) {
        size_t k = 0;

        if (n == 0)
                return 0;
        qsort(bases, n, sizeof(GuardBase), guard_base_compare);
        for (size_t i = 1; i < n; i++) {
                if (guard_base_compare(&bases[k], &bases[i]) != 0) {
                        bases[++k] = bases[i];
                        continue;
                }
                if (bases[k].holder != bases[i].holder)
                        bases[k].holder = 0;
                bases[k].flags |= bases[i].flags;
        }
        return k + 1;
}

const char *guard_ioctl_name(uint32_t cmd, char *buf, size_t size) {
        static const struct {
                uint32_t cmd;
                const char *name;
        } names[] = {
                {0x4C00, "LOOP_SET_FD"},        {0x4C01, "LOOP_CLR_FD"},
                {0x4C02, "LOOP_SET_STATUS"},    {0x4C04, "LOOP_SET_STATUS64"},
                {0x4C06, "LOOP_CHANGE_FD"},     {0x4C07, "LOOP_SET_CAPACITY"},
                {0x4C08, "LOOP_SET_DIRECT_IO"}, {0x4C09, "LOOP_SET_BLOCK_SIZE"},
                {0x4C0A, "LOOP_CONFIGURE"},     {0x4C80, "LOOP_CTL_ADD"},
                {0x4C81, "LOOP_CTL_REMOVE"},
        };

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (names[i].cmd == cmd)
                        return names[i].name;
        (void) snprintf(buf, size, "0x%" PRIx32, cmd);
        return buf;
}

bool guard_event_is_bind(const GuardEvent *e) {
        return !(e->flags & LOOP_GUARD_EVENT_CONTROL) &&
               (e->cmd == LOOP_SET_FD_CMD || e->cmd == LOOP_CONFIGURE_CMD ||
                e->cmd == LOOP_CHANGE_FD_CMD);
}

/* The command name as the kernel keeps it: up to 15 bytes, not necessarily terminated, and
 * whatever the process chose; anything but printable ASCII becomes '?'. */
static void event_comm(const GuardEvent *e, char ret[static 16]) {
        size_t i;

        for (i = 0; i < 15 && e->comm[i]; i++)
                ret[i] = e->comm[i] > 0x20 && e->comm[i] < 0x7f ? e->comm[i] : '?';
        ret[i] = 0;
}

int guard_event_creator(const GuardEvent *e, char **ret) {
        char comm[16];

        event_comm(e, comm);
        if (asprintf(ret, "%s (pid %" PRIu32 ", uid %" PRIu32 ")", comm[0] ? comm : "?", e->pid,
                     e->uid) < 0)
                return -ENOMEM;
        return 0;
}

int guard_event_describe(const GuardEvent *e, char **ret) {
        _cleanup_free_ char *who = NULL;
        char name[16], target[48], backing[80] = "", verdict[48];
        int r;

        r = guard_event_creator(e, &who);
        if (r < 0)
                return r;
        if (e->flags & LOOP_GUARD_EVENT_CONTROL)
                (void) snprintf(target, sizeof(target), "/dev/loop-control (%" PRIu64 ")",
                                (uint64_t) e->arg);
        else
                (void) snprintf(target, sizeof(target), "loop%u", LOOP_GUARD_KDEV_MINOR(e->device));
        if (e->flags & LOOP_GUARD_EVENT_BACKING_BLOCK)
                (void) snprintf(backing, sizeof(backing), ", backing block device %u:%u",
                                LOOP_GUARD_KDEV_MAJOR(e->backing_dev),
                                LOOP_GUARD_KDEV_MINOR(e->backing_dev));
        else if (e->flags & LOOP_GUARD_EVENT_BACKING)
                (void) snprintf(backing, sizeof(backing), ", backing inode %" PRIu64 " on %u:%u",
                                (uint64_t) e->backing_ino, LOOP_GUARD_KDEV_MAJOR(e->backing_dev),
                                LOOP_GUARD_KDEV_MINOR(e->backing_dev));
        if (e->verdict == 0 && !(e->flags & LOOP_GUARD_EVENT_STALE))
                (void) snprintf(verdict, sizeof(verdict), "passed");
        else if (e->verdict != 0)
                (void) snprintf(verdict, sizeof(verdict), "refused (%s)",
                                e->verdict == -EEXIST  ? "EEXIST, an alias"
                                : e->verdict == -EBUSY ? "EBUSY, the device over it is going"
                                : e->verdict == -EPERM ? "EPERM"
                                                       : "error");
        else if (e->flags & LOOP_GUARD_EVENT_STALE)
                (void) snprintf(verdict, sizeof(verdict), "passed (the device over it is gone)");
        if (asprintf(ret, "%s: %s%s on %s%s: %s", who, guard_ioctl_name(e->cmd, name, sizeof(name)),
                     (e->flags & LOOP_GUARD_EVENT_COMPAT) ? " (32-bit)" : "", target, backing,
                     verdict) < 0)
                return -ENOMEM;
        return 0;
}

bool guard_lsm_list_has_bpf(const char *list) {
        const char *p = list;

        /* A comma-separated list: "lockdown,capability,landlock,yama,apparmor,bpf". */
        while (p && *p) {
                size_t n = strcspn(p, ",\n");

                if (n == 3 && strncmp(p, "bpf", 3) == 0)
                        return true;
                p += n;
                p += strspn(p, ",\n");
        }
        return false;
}

int guard_remove(const char *pin_dir) {
        /* With the temporary names of pin_replace(), which a crash may leave behind. */
        static const char *const names[] = {
                "link-ioctl", "link-ioctl-compat", "config",
                "bases",      "allowed",           "events",
                "pending",    "new-link-ioctl",    "new-link-ioctl-compat",
                "new-config", "new-bases",         "new-allowed",
                "new-events", "new-pending",
        };
        int found = 0;

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                _cleanup_free_ char *p = NULL;

                if (asprintf(&p, "%s/%s", pin_dir, names[i]) < 0)
                        return -ENOMEM;
                if (unlink(p) >= 0)
                        found = 1;
                else if (errno != ENOENT)
                        return -errno;
        }
        if (rmdir(pin_dir) >= 0)
                found = 1;
        else if (errno != ENOENT && errno != ENOTEMPTY)
                return -errno;
        return found;
}

#if HAVE_GUARD

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "loop-guard.skel.h"

#define GUARD_N_LINKS 2
#define GUARD_N_MAPS  5

static const char *const map_names[GUARD_N_MAPS] = {"config", "bases", "allowed", "events",
                                                    "pending"};

struct Guard {
        struct loop_guard_bpf *skel;
        char *pin_dir;
        GuardMode mode;
        struct bpf_link *links[GUARD_N_LINKS];
        bool reused[GUARD_N_MAPS]; /* taken from the pins */
        int pidfd;
        struct ring_buffer *ring;
        GuardEventHandler handler;
        void *userdata;
        GuardBase *bases; /* what the bases map holds, sorted */
        size_t n_bases;
};

static const char *const link_names[GUARD_N_LINKS] = {"link-ioctl", "link-ioctl-compat"};

static struct bpf_map *guard_map(Guard *g, size_t i) {
        struct bpf_map *maps[GUARD_N_MAPS] = {g->skel->maps.config, g->skel->maps.bases,
                                              g->skel->maps.allowed, g->skel->maps.events,
                                              g->skel->maps.pending};

        return maps[i];
}

Guard *guard_free(Guard *g) {
        if (!g)
                return NULL;
        ring_buffer__free(g->ring);
        /* Closing the links detaches only what is not pinned: published links stay. */
        for (size_t i = 0; i < GUARD_N_LINKS; i++)
                bpf_link__destroy(g->links[i]);
        loop_guard_bpf__destroy(g->skel);
        safe_close(g->pidfd);
        free(g->bases);
        free(g->pin_dir);
        free(g);
        return NULL;
}

static int libbpf_quiet(enum libbpf_print_level level, const char *format, va_list args) {
        char buf[512];
        size_t n;

        /* libbpf prints to stderr by default: the verifier log and such go to our debug log
         * (its lines start with "libbpf: " and end in a newline already). */
        if (log_get_max_level() < LOG_DEBUG)
                return 0;
        (void) vsnprintf(buf, sizeof(buf), format, args);
        n = strlen(buf);
        if (n > 0 && buf[n - 1] == '\n')
                buf[n - 1] = 0;
        log_debug("%s", buf);
        return 0;
}

/* Reuses the map pinned at pin_dir/name when its type and sizes are the program's. */
static int reuse_pinned_map(struct bpf_map *map, const char *pin_dir, const char *name) {
        _cleanup_free_ char *p = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct bpf_map_info info = {};
        uint32_t len = sizeof(info);
        int r;

        if (asprintf(&p, "%s/%s", pin_dir, name) < 0)
                return -ENOMEM;
        fd = bpf_obj_get(p);
        if (fd < 0)
                return 0;
        r = bpf_obj_get_info_by_fd(fd, &info, &len);
        if (r < 0)
                return 0;
        if (info.type != (uint32_t) bpf_map__type(map) || info.key_size != bpf_map__key_size(map) ||
            info.value_size != bpf_map__value_size(map) ||
            info.max_entries != bpf_map__max_entries(map) ||
            info.map_flags != bpf_map__map_flags(map)) {
                log_debug("guard: the pinned map %s differs from this program's, not reused", p);
                return 0;
        }
        r = bpf_map__reuse_fd(map, fd);
        if (r < 0)
                return r;
        return 1;
}

static bool kernel_has_hook(const char *func) {
        struct btf *vmlinux = btf__load_vmlinux_btf();
        bool found;

        if (!vmlinux)
                return true; /* let the load say what is wrong */
        found = btf__find_by_name_kind(vmlinux, func, BTF_KIND_FUNC) >= 0;
        btf__free(vmlinux);
        return found;
}

static int on_ring_event(void *ctx, void *data, size_t size) {
        Guard *g = ctx;

        if (size < sizeof(GuardEvent))
                return 0;
        if (g->handler)
                g->handler(data, g->userdata);
        return 0;
}

static int problem(char **ret_problem, int r, const char *what) {
        char *s = NULL;

        if (what && asprintf(&s, "%s: %s", what, strerror(-r)) < 0)
                s = NULL;
        *ret_problem = s;
        return r;
}

int guard_open(GuardMode mode, const char *pin_dir, GuardEventHandler handler, void *userdata,
               Guard **ret, char **ret_problem) {
        _cleanup_free_ char *lsm = NULL;
        Guard *g;
        struct loop_guard_config cfg = {.mode = mode};
        struct loop_guard_allowed allowed = {.allowed = 1};
        uint32_t zero = 0;
        int r;

        assert(mode > GUARD_MODE_OFF && mode < _GUARD_MODE_MAX);

        /* Unreadable (securityfs not mounted): the load will tell. */
        if (read_one_line_file("/sys/kernel/security/lsm", &lsm) >= 0 &&
            !guard_lsm_list_has_bpf(lsm)) {
                *ret_problem = strdup("the kernel has no bpf LSM in its active list");
                return -EOPNOTSUPP;
        }

        g = calloc(1, sizeof(Guard));
        if (!g)
                return problem(ret_problem, -ENOMEM, "allocating the guard failed");
        g->pidfd = -EBADF;
        g->mode = mode;
        g->handler = handler;
        g->userdata = userdata;
        g->pin_dir = strdup(pin_dir);
        if (!g->pin_dir) {
                guard_free(g);
                return problem(ret_problem, -ENOMEM, "allocating the guard failed");
        }

        libbpf_set_print(libbpf_quiet);
        g->skel = loop_guard_bpf__open();
        if (!g->skel) {
                r = -errno;
                guard_free(g);
                return problem(ret_problem, r, "opening the BPF LSM program failed");
        }
        if (!kernel_has_hook("bpf_lsm_file_ioctl_compat"))
                (void) bpf_program__set_autoload(g->skel->progs.loop_guard_ioctl_compat, false);

        {
                for (size_t i = 0; i < GUARD_N_MAPS; i++) {
                        r = reuse_pinned_map(guard_map(g, i), pin_dir, map_names[i]);
                        if (r < 0) {
                                guard_free(g);
                                return problem(ret_problem, r, "reusing the pinned maps failed");
                        }
                        g->reused[i] = r > 0;
                }
        }

        r = loop_guard_bpf__load(g->skel);
        if (r < 0) {
                guard_free(g);
                return problem(ret_problem, r, "loading the BPF LSM program failed");
        }

        /* Claimed before the mode is set or anything attached: we must never refuse
         * ourselves. The daemon is single-threaded: task storage is per thread. */
        g->pidfd = (int) syscall(SYS_pidfd_open, getpid(), 0);
        if (g->pidfd < 0) {
                r = -errno;
                guard_free(g);
                return problem(ret_problem, r, "opening a pidfd of the daemon failed");
        }
        if (bpf_map_update_elem(bpf_map__fd(g->skel->maps.allowed), &g->pidfd, &allowed, BPF_ANY) <
            0) {
                r = -errno;
                guard_free(g);
                return problem(ret_problem, r, "claiming the guard failed");
        }
        if (bpf_map_update_elem(bpf_map__fd(g->skel->maps.config), &zero, &cfg, BPF_ANY) < 0) {
                r = -errno;
                guard_free(g);
                return problem(ret_problem, r, "setting the guard's mode failed");
        }
        if (g->reused[1]) {
                /* What the earlier daemon left: kept (stale entries only refuse more) until
                 * the first guard_sync_bases(), which needs to know it to remove it. */
                int fd = bpf_map__fd(g->skel->maps.bases);
                GuardKey k, next, *cur = NULL;

                while (bpf_map_get_next_key(fd, cur, &next) == 0) {
                        GuardBase *nb = realloc(g->bases, (g->n_bases + 1) * sizeof(GuardBase));
                        struct loop_guard_base v = {};

                        if (!nb) {
                                guard_free(g);
                                return problem(ret_problem, -ENOMEM, "reading the bases failed");
                        }
                        g->bases = nb;
                        (void) bpf_map_lookup_elem(fd, &next, &v);
                        g->bases[g->n_bases++] =
                                (GuardBase){.key = next, .holder = v.holder, .flags = v.flags};
                        k = next;
                        cur = &k;
                }
                g->n_bases = guard_bases_uniq(g->bases, g->n_bases);
        }

        {
                struct bpf_program *progs[GUARD_N_LINKS] = {g->skel->progs.loop_guard_ioctl,
                                                            g->skel->progs.loop_guard_ioctl_compat};

                for (size_t i = 0; i < GUARD_N_LINKS; i++) {
                        if (!bpf_program__autoload(progs[i]))
                                continue;
                        g->links[i] = bpf_program__attach_lsm(progs[i]);
                        if (!g->links[i]) {
                                r = -errno;
                                guard_free(g);
                                return problem(ret_problem, r,
                                               "attaching the BPF LSM program failed");
                        }
                }
        }

        g->ring = ring_buffer__new(bpf_map__fd(g->skel->maps.events), on_ring_event, g, NULL);
        if (!g->ring) {
                r = -errno;
                guard_free(g);
                return problem(ret_problem, r, "opening the guard's ring buffer failed");
        }

        *ret = g;
        *ret_problem = NULL;
        return 0;
}

/* Pins obj at pin_dir/name, replacing what is there in one rename(2): the old object stays
 * in force until the new one has taken its place. (No dots in the temporary name: bpffs
 * refuses names with dots, which it reserves, with EPERM.) */
static int pin_replace(const char *pin_dir, const char *name, int fd) {
        _cleanup_free_ char *p = NULL, *tmp = NULL;

        if (asprintf(&p, "%s/%s", pin_dir, name) < 0 ||
            asprintf(&tmp, "%s/new-%s", pin_dir, name) < 0)
                return -ENOMEM;
        (void) unlink(tmp);
        if (bpf_obj_pin(fd, tmp) < 0)
                return -errno;
        if (rename(tmp, p) < 0) {
                int r = -errno;

                (void) unlink(tmp);
                return r;
        }
        return 0;
}

int guard_publish(Guard *g) {
        int r;

        if (mkdir(g->pin_dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        for (size_t i = 0; i < GUARD_N_MAPS; i++) {
                if (g->reused[i])
                        continue;
                r = pin_replace(g->pin_dir, map_names[i], bpf_map__fd(guard_map(g, i)));
                if (r < 0)
                        return r;
                g->reused[i] = true;
        }
        for (size_t i = 0; i < GUARD_N_LINKS; i++) {
                _cleanup_free_ char *p = NULL;

                if (!g->links[i]) {
                        /* No such hook in this kernel: nothing may stay of an earlier one. */
                        if (asprintf(&p, "%s/%s", g->pin_dir, link_names[i]) < 0)
                                return -ENOMEM;
                        (void) unlink(p);
                        continue;
                }
                r = pin_replace(g->pin_dir, link_names[i], bpf_link__fd(g->links[i]));
                if (r < 0)
                        return r;
        }
        return 0;
}

int guard_event_fd(Guard *g) {
        return ring_buffer__epoll_fd(g->ring);
}

int guard_process_events(Guard *g) {
        int r = ring_buffer__consume(g->ring);

        return r < 0 ? r : 0;
}

int guard_sync_bases(Guard *g, const GuardBase *bases, size_t n) {
        int fd = bpf_map__fd(g->skel->maps.bases);
        size_t i = 0, j = 0;
        GuardBase *copy;

        /* Both sorted: one merge adds what is new or has another holder now and deletes what
         * went. Additions first, so that a key that moved is never missing. */
        while (j < n) {
                int c = i < g->n_bases ? guard_base_compare(&g->bases[i], &bases[j]) : 1;

                if (c < 0)
                        i++;
                else {
                        if (c > 0 || g->bases[i].holder != bases[j].holder ||
                            g->bases[i].flags != bases[j].flags) {
                                struct loop_guard_base v = {.holder = bases[j].holder,
                                                            .flags = bases[j].flags};

                                if (bpf_map_update_elem(fd, &bases[j].key, &v, BPF_ANY) < 0)
                                        return -errno;
                        }
                        if (c == 0)
                                i++;
                        j++;
                }
        }
        for (i = 0, j = 0; i < g->n_bases; i++) {
                while (j < n && guard_base_compare(&bases[j], &g->bases[i]) < 0)
                        j++;
                if (j < n && guard_base_compare(&bases[j], &g->bases[i]) == 0)
                        continue;
                if (bpf_map_delete_elem(fd, &g->bases[i].key) < 0 && errno != ENOENT)
                        return -errno;
        }
        copy = n > 0 ? malloc(n * sizeof(GuardBase)) : NULL;
        if (n > 0 && !copy)
                return -ENOMEM;
        if (n > 0)
                memcpy(copy, bases, n * sizeof(GuardBase));
        free(g->bases);
        g->bases = copy;
        g->n_bases = n;
        return 0;
}

#else /* !HAVE_GUARD */

struct Guard {
        int unused;
};

int guard_open(GuardMode mode, const char *pin_dir, GuardEventHandler handler, void *userdata,
               Guard **ret, char **ret_problem) {
        *ret_problem = strdup("the daemon was built without the guard");
        return -EOPNOTSUPP;
}

int guard_publish(Guard *g) {
        return -EOPNOTSUPP;
}

Guard *guard_free(Guard *g) {
        free(g);
        return NULL;
}

int guard_event_fd(Guard *g) {
        return -EBADF;
}

int guard_process_events(Guard *g) {
        return -EOPNOTSUPP;
}

int guard_sync_bases(Guard *g, const GuardBase *bases, size_t n) {
        return -EOPNOTSUPP;
}

#endif
