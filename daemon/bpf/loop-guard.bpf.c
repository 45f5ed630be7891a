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
 * CO-RE with the few kernel structures it reads declared here with preserve_access_index:
 * the build needs no BTF of the build host's kernel (package builds run in chroots on other
 * kernels); libbpf relocates the field offsets against the running kernel's BTF at load.
 *
 * What the program sees of a bind is the backing fd at the time of the hook: the driver
 * resolves the fd again afterwards, so a second thread of the caller can swap it in between.
 * The guard is a safety net against accidents, not a wall against a determined root
 * (docs/SECURITY.md).
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
#define GUARD_EEXIST (-17)

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

struct file {
        struct inode *f_inode;
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
        __type(value, __u8);
} bases SEC(".maps");

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

/* The inode behind the caller's fd, from its fd table: there is no kfunc for an fd lookup
 * (6.1), so the table is read with bpf_probe_read_kernel. NULL when fd is not open. */
static __always_inline struct inode *backing_inode(struct task_struct *task, __u32 fd) {
        struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
        struct file **fds;
        struct file *f = NULL;

        if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
                return NULL;
        fds = BPF_CORE_READ(fdt, fd);
        if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) < 0 || !f)
                return NULL;
        return BPF_CORE_READ(f, f_inode);
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
        if (bpf_task_storage_get(&allowed, task, NULL, 0))
                return 0;

        if (is_bind(cmd)) {
                struct inode *b;
                __u32 fd = (__u32) arg;

                if (cmd == LOOP_CONFIGURE) {
                        struct loop_config_head head = {};

                        if (bpf_probe_read_user(&head, sizeof(head), (void *) arg) < 0)
                                head.fd = (__u32) -1;
                        fd = head.fd;
                }
                b = backing_inode(task, fd);
                if (b) {
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
                        if (mode == LOOP_GUARD_MODE_ALIASES && bpf_map_lookup_elem(&bases, &key))
                                verdict = GUARD_EEXIST;
                }
        }
        if (mode == LOOP_GUARD_MODE_EXCLUSIVE)
                verdict = GUARD_EPERM;

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
