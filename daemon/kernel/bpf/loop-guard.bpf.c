/* SPDX-License-Identifier: GPL-2.0-only */

/*
 * The guard: a BPF LSM program on file_ioctl (and file_ioctl_compat, the 32-bit path) that
 * sees every ioctl on a loop block device (major 7) and on /dev/loop-control (10:237). Calls
 * by loopmgrd (the task that holds an entry in "allowed") pass untouched; every configuring
 * call by another process is reported through "events" and, depending on the mode in
 * "config", refused: binds of a backing that "bases" names with EEXIST (aliases), every
 * configuration with EPERM (exclusive). Read-only queries (LOOP_GET_STATUS*, GET_FREE) and
 * every other ioctl always pass.
 *
 * The map lags the kernel by the daemon's reaction to a uevent, and a LOOP_CLR_FD whose device
 * is still open leaves it bound until the last close (udev's probe, for a moment). For an
 * entry that is only the direct backing of one loop device (its "holder") the program asks
 * the kernel instead: the loop driver clears __GFP_IO and __GFP_FS in the gfp mask of its
 * backing's page cache while it is bound and restores them in its teardown, so a backing
 * whose mapping has both again has no device over it (the entry is stale, the bind passes).
 * A bind of the backing of a holder that a LOOP_CLR_FD by another process put into its
 * deferred teardown ("pending", written here), and that nothing uses but its openers (not
 * mounted, held or a backing: LOOP_GUARD_BASE_IN_USE), gets EBUSY instead of EEXIST: losetup
 * -f tries again on EBUSY, and by then the device has usually gone.
 *
 * CO-RE with the few kernel structures it reads declared here with preserve_access_index:
 * the build needs no BTF of the build host's kernel (package builds run in chroots on other
 * kernels); libbpf relocates the field offsets against the running kernel's BTF at load.
 *
 * What the program sees of a bind is the backing fd at the time of the hook: the driver
 * resolves the fd again afterwards, so a second thread of the caller can swap it in between.
 * The guard is a safety net against accidents, not a wall against a determined root
 * (docs/SECURITY.md). The kernel facts it relies on: docs/KERNEL.md, "BPF LSM".
 *
 * GPL: the helpers the program calls (bpf_probe_read_*, task storage) are GPL-only.
 */

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "loop-guard.h"

/* Return values: pre-negated constants, which the verifier of 6.12 checks to lie in
 * [-MAX_ERRNO, 0] for LSM programs. */
#define GUARD_EPERM  (-1)
#define GUARD_EBUSY  (-16)
#define GUARD_EEXIST (-17)

/* include/linux/gfp_types.h: ___GFP_IO and ___GFP_FS, the same bits from 2.6 to 6.18. */
#define GUARD_GFP_IO 0x40u
#define GUARD_GFP_FS 0x80u

#define S_IFMT  00170000
#define S_IFBLK 0060000
#define S_IFCHR 0020000
#define S_IFREG 0100000

#define LOOP_MAJOR      7
#define MISC_MAJOR      10
#define LOOP_CTRL_MINOR 237

/* include/uapi/linux/loop.h */
#define LOOP_SET_FD         0x4C00
#define LOOP_CLR_FD         0x4C01
#define LOOP_SET_STATUS     0x4C02
#define LOOP_SET_STATUS64   0x4C04
#define LOOP_CHANGE_FD      0x4C06
#define LOOP_SET_CAPACITY   0x4C07
#define LOOP_SET_DIRECT_IO  0x4C08
#define LOOP_SET_BLOCK_SIZE 0x4C09
#define LOOP_CONFIGURE      0x4C0A
#define LOOP_CTL_ADD        0x4C80
#define LOOP_CTL_REMOVE     0x4C81

struct super_block {
        __u32 s_dev;
} __attribute__((preserve_access_index));

struct inode {
        __u16 i_mode;
        unsigned long i_ino;
        __u32 i_rdev;
        struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct address_space {
        unsigned int gfp_mask;
} __attribute__((preserve_access_index));

struct file {
        struct inode *f_inode;
        struct address_space *f_mapping;
} __attribute__((preserve_access_index));

struct fdtable {
        unsigned int max_fds;
        struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
        struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
        struct files_struct *files;
} __attribute__((preserve_access_index));

/* The one field of struct loop_config that matters here: its first, the backing fd. */
struct loop_config_head {
        __u32 fd;
};

struct {
        __uint(type, BPF_MAP_TYPE_ARRAY);
        __uint(max_entries, 1);
        __type(key, __u32);
        __type(value, struct loop_guard_config);
} config SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, 65536);
        __type(key, struct loop_guard_key);
        __type(value, struct loop_guard_base);
} bases SEC(".maps");

/* Loop devices (kernel encoding) on which another process called LOOP_CLR_FD: their teardown
 * may be deferred. Any later configuration of the device takes it out; LRU, because nobody
 * takes out the entry of a device nobody configures again. */
struct {
        __uint(type, BPF_MAP_TYPE_LRU_HASH);
        __uint(max_entries, 4096);
        __type(key, __u64);
        __type(value, __u8);
} pending SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
        __uint(map_flags, BPF_F_NO_PREALLOC);
        __type(key, int);
        __type(value, struct loop_guard_allowed);
} allowed SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_RINGBUF);
        __uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline int is_bind(unsigned int cmd) {
        return cmd == LOOP_SET_FD || cmd == LOOP_CONFIGURE || cmd == LOOP_CHANGE_FD;
}

static __always_inline int is_loop_config(unsigned int cmd) {
        switch (cmd) {
        case LOOP_SET_FD:
        case LOOP_CLR_FD:
        case LOOP_SET_STATUS:
        case LOOP_SET_STATUS64:
        case LOOP_CHANGE_FD:
        case LOOP_SET_CAPACITY:
        case LOOP_SET_DIRECT_IO:
        case LOOP_SET_BLOCK_SIZE:
        case LOOP_CONFIGURE:
                return 1;
        }
        return 0;
}

/* The file behind the caller's fd, from its fd table: there is no kfunc for an fd lookup
 * (6.1), so the table is read with bpf_probe_read_kernel. NULL when fd is not open. */
static __always_inline struct file *backing_file(struct task_struct *task, __u32 fd) {
        struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
        struct file **fds;
        struct file *f = NULL;

        if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
                return NULL;
        fds = BPF_CORE_READ(fdt, fd);
        if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) < 0 || !f)
                return NULL;
        return f;
}

/* Whether a loop device binds this file now: the driver takes __GFP_IO and __GFP_FS out of
 * the gfp mask of the backing's page cache (file->f_mapping, the block device's own for a
 * device node) while it is bound. A mapping without them for another reason counts as bound:
 * the guard then refuses as if it had no such check. */
static __always_inline int backing_bound(struct file *f) {
        unsigned int gfp = BPF_CORE_READ(f, f_mapping, gfp_mask);

        return (gfp & (GUARD_GFP_IO | GUARD_GFP_FS)) != (GUARD_GFP_IO | GUARD_GFP_FS);
}

/* Whether the holder, a loop device, is used beyond being one: mounted, held, a backing. */
static __always_inline int holder_in_use(__u64 holder) {
        struct loop_guard_key hk = {.dev = holder, .ino = 0};
        struct loop_guard_base *hb = bpf_map_lookup_elem(&bases, &hk);

        return !hb || (hb->flags & LOOP_GUARD_BASE_IN_USE);
}

static __always_inline int guard(struct file *file, unsigned int cmd, unsigned long arg,
                                 __u32 flags) {
        struct loop_guard_config *cfg;
        struct loop_guard_event *e;
        struct task_struct *task;
        struct inode *inode;
        struct loop_guard_key key = {};
        __u64 device = 0;
        __u32 zero = 0, mode, rdev;
        __u16 imode;
        int verdict = 0;

        inode = BPF_CORE_READ(file, f_inode);
        if (!inode)
                return 0;
        imode = BPF_CORE_READ(inode, i_mode) & S_IFMT;
        rdev = BPF_CORE_READ(inode, i_rdev);
        if (imode == S_IFBLK && (rdev >> 20) == LOOP_MAJOR) {
                if (!is_loop_config(cmd))
                        return 0;
                device = rdev;
        } else if (imode == S_IFCHR && rdev == ((MISC_MAJOR << 20) | LOOP_CTRL_MINOR)) {
                if (cmd != LOOP_CTL_ADD && cmd != LOOP_CTL_REMOVE)
                        return 0;
                flags |= LOOP_GUARD_EVENT_CONTROL;
        } else
                return 0;

        cfg = bpf_map_lookup_elem(&config, &zero);
        if (!cfg)
                return 0;
        mode = cfg->mode;
        if (mode == LOOP_GUARD_MODE_OFF)
                return 0;

        task = bpf_get_current_task_btf();
        if (bpf_task_storage_get(&allowed, task, NULL, 0)) {
                /* The daemon binding or reviving a device: it is no longer going away. */
                if (device && cmd != LOOP_CLR_FD)
                        bpf_map_delete_elem(&pending, &device);
                return 0;
        }

        if (is_bind(cmd)) {
                struct file *bf;
                struct inode *b;
                __u32 fd = (__u32) arg;

                if (cmd == LOOP_CONFIGURE) {
                        struct loop_config_head head = {};

                        if (bpf_probe_read_user(&head, sizeof(head), (void *) arg) < 0)
                                head.fd = (__u32) -1;
                        fd = head.fd;
                }
                bf = backing_file(task, fd);
                b = bf ? BPF_CORE_READ(bf, f_inode) : NULL;
                if (b) {
                        struct loop_guard_base *base;
                        __u16 bmode = BPF_CORE_READ(b, i_mode) & S_IFMT;

                        if (bmode == S_IFBLK) {
                                key.dev = BPF_CORE_READ(b, i_rdev);
                                key.ino = 0;
                                flags |= LOOP_GUARD_EVENT_BACKING | LOOP_GUARD_EVENT_BACKING_BLOCK;
                        } else {
                                key.dev = BPF_CORE_READ(b, i_sb, s_dev);
                                key.ino = BPF_CORE_READ(b, i_ino);
                                flags |= LOOP_GUARD_EVENT_BACKING;
                        }
                        base = mode == LOOP_GUARD_MODE_ALIASES ? bpf_map_lookup_elem(&bases, &key)
                                                               : NULL;
                        if (base) {
                                __u64 holder = base->holder;

                                if (holder && !backing_bound(bf))
                                        flags |= LOOP_GUARD_EVENT_STALE;
                                else if (holder && bpf_map_lookup_elem(&pending, &holder) &&
                                         !holder_in_use(holder)) {
                                        verdict = GUARD_EBUSY;
                                        flags |= LOOP_GUARD_EVENT_PENDING;
                                } else
                                        verdict = GUARD_EEXIST;
                        }
                }
        }
        if (mode == LOOP_GUARD_MODE_EXCLUSIVE)
                verdict = GUARD_EPERM;

        if (verdict == 0 && device) {
                __u8 one = 1;

                if (cmd == LOOP_CLR_FD)
                        bpf_map_update_elem(&pending, &device, &one, BPF_ANY);
                else
                        bpf_map_delete_elem(&pending, &device);
        }

        e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
        if (e) {
                __u64 pid_tgid = bpf_get_current_pid_tgid();

                e->pid = pid_tgid >> 32;
                e->uid = (__u32) bpf_get_current_uid_gid();
                e->cmd = cmd;
                e->flags = flags;
                e->verdict = verdict;
                e->reserved = 0;
                e->device = device;
                e->arg = (flags & LOOP_GUARD_EVENT_CONTROL) ? arg : 0;
                e->backing_dev = key.dev;
                e->backing_ino = key.ino;
                bpf_get_current_comm(e->comm, sizeof(e->comm));
                bpf_ringbuf_submit(e, 0);
        }

        if (verdict == GUARD_EEXIST)
                return GUARD_EEXIST;
        if (verdict == GUARD_EBUSY)
                return GUARD_EBUSY;
        if (verdict == GUARD_EPERM)
                return GUARD_EPERM;
        return 0;
}

/* A refusal by an earlier BPF program on the hook stands. Bounded explicitly, so that the
 * verifier of 6.12 sees a value in [-MAX_ERRNO, 0]. */
static __always_inline int earlier_verdict(int ret) {
        if (ret < -4095)
                return -4095;
        if (ret > 0)
                return 0;
        return ret;
}

SEC("lsm/file_ioctl")
int BPF_PROG(loop_guard_ioctl, struct file *file, unsigned int cmd, unsigned long arg, int ret) {
        if (ret != 0)
                return earlier_verdict(ret);
        return guard(file, cmd, arg, 0);
}

/* security_file_ioctl_compat(): 6.8, and 6.1.74 and later stable kernels. The loader does not
 * load it on a kernel without the hook. */
SEC("lsm/file_ioctl_compat")
int BPF_PROG(loop_guard_ioctl_compat, struct file *file, unsigned int cmd, unsigned long arg,
             int ret) {
        if (ret != 0)
                return earlier_verdict(ret);
        return guard(file, cmd, arg, LOOP_GUARD_EVENT_COMPAT);
}

char LICENSE[] SEC("license") = "GPL";
