/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "core-fixture.h"

/* The fixture of the test that runs: the send operations and the wrapped kernel calls get no
 * userdata of their own. */
static Fixture *current;

static Sent *record(SentKind kind, Call *call) {
        Sent *s;

        assert_non_null(current);
        assert_true(current->n_sent < FX_MAX_SENT);
        s = &current->sent[current->n_sent++];
        *s = (Sent){.kind = kind, .call = call};
        return s;
}

static void op_device_added(Manager *m, Device *d) {
        record(SENT_ADDED, NULL)->diskseq = d->status.diskseq;
}

static void op_device_removed(Manager *m, Device *d) {
        record(SENT_REMOVED, NULL)->diskseq = d->status.diskseq;
}

static void op_device_changed(Manager *m, Device *d, char **properties) {
        Sent *s = record(SENT_CHANGED, NULL);

        s->diskseq = d->status.diskseq;
        for (char **p = properties; p && *p; p++) {
                size_t k = strlen(s->text);

                snprintf(s->text + k, sizeof(s->text) - k, "%s%s", k > 0 ? " " : "", *p);
        }
}

static int op_attach_reply(Manager *m, Call *call, Device *d, bool reused) {
        Sent *s = record(SENT_ATTACH, call);

        s->diskseq = d->status.diskseq;
        s->reused = reused;
        return 1;
}

static int op_detach_reply(Manager *m, Call *call, const char *state) {
        snprintf(record(SENT_DETACH, call)->state, sizeof(((Sent *) NULL)->state), "%s", state);
        return 1;
}

static int op_error_reply(Manager *m, Call *call, const Problem *p) {
        Sent *s = record(SENT_ERROR, call);

        s->error = p->error;
        snprintf(s->text, sizeof(s->text), "%s", p->message ?: "");
        return 1;
}

static Call *op_call_ref(Call *call) {
        assert_non_null(call);
        call->refs++;
        return call;
}

static Call *op_call_unref(Call *call) {
        assert_non_null(call);
        assert_true(call->refs > 1);
        call->refs--;
        return NULL;
}

static void op_flush(Manager *m) {
        record(SENT_FLUSH, NULL);
}

static bool op_client_exists(Manager *m, const char *unique_name) {
        for (size_t i = 0; i < current->n_gone_clients; i++)
                if (strcmp(current->gone_clients[i], unique_name) == 0)
                        return false;
        return true;
}

static const ManagerSendOps recording_ops = {
        .device_added = op_device_added,
        .device_removed = op_device_removed,
        .device_changed = op_device_changed,
        .attach_reply = op_attach_reply,
        .detach_reply = op_detach_reply,
        .error_reply = op_error_reply,
        .call_ref = op_call_ref,
        .call_unref = op_call_unref,
        .flush = op_flush,
        .client_exists = op_client_exists,
};

int fx_setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));

        if (!f)
                return -1;
        snprintf(f->root, sizeof(f->root), "/tmp/loopmgr-test-core-XXXXXX");
        if (!mkdtemp(f->root) || sd_event_new(&f->event) < 0 ||
            manager_new(f->event, f->root, f->root, &f->manager) < 0)
                return -1;
        f->manager->send = &recording_ops;
        f->detach_result = 1;
        f->autoclear_result = 0;
        current = f;
        *state = f;
        return 0;
}

int fx_teardown(void **state) {
        Fixture *f = *state;
        char cmd[128];

        manager_free(f->manager);
        sd_event_unref(f->event);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->root);
        (void) system(cmd);
        current = NULL;
        free(f);
        return 0;
}

static void mkdir_parents(const char *path) {
        char cmd[600];

        snprintf(cmd, sizeof(cmd), "mkdir -p \"$(dirname '%s')\"", path);
        assert_int_equal(system(cmd), 0);
}

void fx_put(Fixture *f, const char *rel, const char *contents) {
        char path[512];
        FILE *file;

        snprintf(path, sizeof(path), "%s/%s", f->root, rel);
        mkdir_parents(path);
        file = fopen(path, "we");
        assert_non_null(file);
        fputs(contents, file);
        assert_int_equal(fclose(file), 0);
}

static void put_attr(Fixture *f, unsigned nr, const char *attr, uint64_t v) {
        char rel[128], text[64];

        snprintf(rel, sizeof(rel), "sys/block/loop%u/%s", nr, attr);
        snprintf(text, sizeof(text), "%" PRIu64 "\n", v);
        fx_put(f, rel, text);
}

void fx_fake_loop(Fixture *f, unsigned nr, uint64_t diskseq, const FakeLoop *l) {
        char rel[128], text[600];

        snprintf(rel, sizeof(rel), "sys/block/loop%u/dev", nr);
        snprintf(text, sizeof(text), "%u:%u\n", LOOP_MAJOR_NUMBER, nr);
        fx_put(f, rel, text);
        put_attr(f, nr, "diskseq", diskseq);
        put_attr(f, nr, "size", l && l->backing ? l->size / 512 : 0);
        put_attr(f, nr, "ro", l && l->read_only);
        put_attr(f, nr, "queue/logical_block_size", 512);

        snprintf(text, sizeof(text), "rm -rf '%s/sys/block/loop%u/loop'", f->root, nr);
        assert_int_equal(system(text), 0);
        if (!l || !l->backing)
                return;

        snprintf(rel, sizeof(rel), "sys/block/loop%u/loop/backing_file", nr);
        snprintf(text, sizeof(text), "%s\n", l->backing);
        fx_put(f, rel, text);
        put_attr(f, nr, "loop/offset", l->offset);
        put_attr(f, nr, "loop/sizelimit", l->size_limit);
        put_attr(f, nr, "loop/autoclear", l->autoclear);
        put_attr(f, nr, "loop/partscan", l->partscan);
        put_attr(f, nr, "loop/dio", l->direct_io);
}

void fx_remove_loop(Fixture *f, unsigned nr) {
        char cmd[128];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s/sys/block/loop%u'", f->root, nr);
        assert_int_equal(system(cmd), 0);
}

void fx_udev_link(Fixture *f, unsigned nr, uint64_t diskseq) {
        char path[256], target[64];

        snprintf(path, sizeof(path), "%s/dev/disk/by-diskseq/%" PRIu64, f->root, diskseq);
        snprintf(target, sizeof(target), "../../loop%u", nr);
        mkdir_parents(path);
        assert_int_equal(symlink(target, path), 0);
}

void fx_set_ids(Fixture *f, const char *name, dev_t device, uint64_t inode, dev_t rdevice) {
        assert_true(f->n_ids < sizeof(f->ids) / sizeof(f->ids[0]));
        f->ids[f->n_ids] = (FakeIds){.device = device, .inode = inode, .rdevice = rdevice};
        snprintf(f->ids[f->n_ids].name, sizeof(f->ids[f->n_ids].name), "%s", name);
        f->n_ids++;
}

void fx_client_gone(Fixture *f, const char *name) {
        assert_true(f->n_gone_clients < sizeof(f->gone_clients) / sizeof(f->gone_clients[0]));
        snprintf(f->gone_clients[f->n_gone_clients++], sizeof(f->gone_clients[0]), "%s", name);
}

void fx_script_detach(Fixture *f, size_t n, const int *answers) {
        assert_true(n <= FX_MAX_SCRIPT);
        memcpy(f->detach_script, answers, n * sizeof(int));
        f->n_detach_script = n;
        f->detach_pos = 0;
}

int fx_backing_file(Fixture *f, const char *rel, uint64_t size) {
        char path[256];
        int fd;

        snprintf(path, sizeof(path), "%s/%s", f->root, rel);
        mkdir_parents(path);
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        return fd;
}

int fx_attach(Fixture *f, Call *call, const char *rel, unsigned nr, uint64_t diskseq,
              const AttachOptions *o, uid_t uid, const char *sender, Problem *error) {
        AttachOptions defaults;
        AttachRequest req = {};
        int fd, r;

        if (!o) {
                attach_options_init(&defaults);
                defaults.wait_udev = false;
                o = &defaults;
        }
        fd = fx_backing_file(f, rel, 1 << 20);
        req = (AttachRequest){.fd = fd, .options = o, .uid = uid, .sender = sender};
        assert_int_equal(fstat(fd, &req.st), 0);
        req.backing_size = req.size = (uint64_t) req.st.st_size;

        f->attach_number = nr;
        f->attach_diskseq = diskseq;
        r = manager_attach(f->manager, call, &req, error);
        assert_int_equal(close(fd), 0);
        return r;
}

bool fx_run(Fixture *f, bool (*cond)(Fixture *f, void *userdata), void *userdata,
            uint64_t max_usec) {
        struct timespec ts;
        uint64_t start, now;

        assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        start = (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
        for (;;) {
                if (cond && cond(f, userdata))
                        return true;
                assert_int_equal(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
                now = (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
                if (now - start >= max_usec)
                        return false;
                assert_true(sd_event_run(f->event, max_usec - (now - start)) >= 0);
        }
}

const Sent *fx_find(Fixture *f, SentKind kind, const Call *call, size_t from) {
        for (size_t i = from; i < f->n_sent; i++)
                if (f->sent[i].kind == kind && (!call || f->sent[i].call == call))
                        return &f->sent[i];
        return NULL;
}

size_t fx_count(Fixture *f, SentKind kind) {
        size_t n = 0;

        for (size_t i = 0; i < f->n_sent; i++)
                n += f->sent[i].kind == kind;
        return n;
}

static bool word_in(const char *list, const char *word) {
        size_t n = strlen(word);

        for (const char *p = list; (p = strstr(p, word)); p += n)
                if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == 0))
                        return true;
        return false;
}

const Sent *fx_find_changed(Fixture *f, uint64_t diskseq, const char *property, size_t from) {
        for (size_t i = from; i < f->n_sent; i++)
                if (f->sent[i].kind == SENT_CHANGED && f->sent[i].diskseq == diskseq &&
                    (!property || word_in(f->sent[i].text, property)))
                        return &f->sent[i];
        return NULL;
}

void fx_forget_sent(Fixture *f) {
        f->n_sent = 0;
}

void fx_assert_error(Fixture *f, const Call *call, int error, const char *text) {
        const Sent *s = fx_find(f, SENT_ERROR, call, 0);

        assert_non_null(s);
        assert_int_equal(s->error, error);
        if (text)
                assert_string_equal(s->text, text);
}

void fx_assert_detach_reply(Fixture *f, const Call *call, const char *state) {
        const Sent *s = fx_find(f, SENT_DETACH, call, 0);

        assert_non_null(s);
        assert_string_equal(s->state, state);
}

/* The kernel, as scripted by the test. */

int __wrap_loop_detach_nowait(const char *root, const char *name, uint64_t diskseq, bool need_lock);
int __wrap_loop_attach(const char *root, int backing_fd, const LoopConfig *config, LoopStatus *ret);
int __wrap_loop_set_autoclear(const char *root, const char *name, uint64_t diskseq, bool autoclear);
int __wrap_loop_read_ids(const char *root, LoopStatus *status);
int __real_loop_read_ids(const char *root, LoopStatus *status);

static KernelCall *kernel_call(KernelCall *calls, size_t *n, const char *name, uint64_t diskseq) {
        KernelCall *c;

        assert_true(*n < FX_MAX_CALLS);
        c = &calls[(*n)++];
        *c = (KernelCall){.diskseq = diskseq};
        snprintf(c->name, sizeof(c->name), "%s", name);
        (void) sd_event_now(current->event, CLOCK_MONOTONIC, &c->usec);
        return c;
}

int __wrap_loop_detach_nowait(const char *root, const char *name, uint64_t diskseq,
                              bool need_lock) {
        Fixture *f = current;

        assert_non_null(f);
        assert_string_equal(root, f->root);
        kernel_call(f->detaches, &f->n_detaches, name, diskseq)->need_lock = need_lock;
        if (f->detach_pos < f->n_detach_script)
                return f->detach_script[f->detach_pos++];
        if (f->lock_held && need_lock)
                return -EWOULDBLOCK;
        return f->detach_result;
}

int __wrap_loop_attach(const char *root, int backing_fd, const LoopConfig *config,
                       LoopStatus *ret) {
        Fixture *f = current;
        char proc[64], path[512];
        struct stat st;
        ssize_t k;
        int r;

        assert_non_null(f);
        f->n_attaches++;
        if (f->attach_result < 0)
                return f->attach_result;
        *ret = (LoopStatus){
                .number = f->attach_number,
                .devnum = makedev(LOOP_MAJOR_NUMBER, f->attach_number),
                .diskseq = f->attach_diskseq,
                .bound = true,
                .offset = config->offset,
                .size_limit = config->size_limit,
                .sector_size = 512,
                .read_only = config->read_only,
                .partscan = config->partscan,
        };
        snprintf(ret->name, sizeof(ret->name), "loop%u", f->attach_number);
        if (config->prepare) {
                r = config->prepare(ret->name, config->userdata);
                if (r < 0)
                        return r;
        }
        assert_int_equal(fstat(backing_fd, &st), 0);
        ret->size = (uint64_t) st.st_size - config->offset;
        ret->backing_device = st.st_dev;
        ret->backing_inode = st.st_ino;
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", backing_fd);
        k = readlink(proc, path, sizeof(path) - 1);
        assert_true(k > 0);
        path[k] = 0;
        ret->backing_file = strdup(path);
        assert_non_null(ret->backing_file);

        /* What sysfs says of the new binding from now on. */
        fx_fake_loop(f, f->attach_number, f->attach_diskseq,
                     &(FakeLoop){.backing = path,
                                 .offset = config->offset,
                                 .size_limit = config->size_limit,
                                 .size = ret->size,
                                 .read_only = config->read_only,
                                 .partscan = config->partscan});
        return 0;
}

int __wrap_loop_set_autoclear(const char *root, const char *name, uint64_t diskseq,
                              bool autoclear) {
        Fixture *f = current;

        assert_non_null(f);
        kernel_call(f->autoclears, &f->n_autoclears, name, diskseq)->autoclear = autoclear;
        return f->autoclear_result;
}

int __wrap_loop_read_ids(const char *root, LoopStatus *status) {
        Fixture *f = current;

        assert_non_null(f);
        for (size_t i = 0; i < f->n_ids; i++)
                if (strcmp(f->ids[i].name, status->name) == 0) {
                        status->backing_device = f->ids[i].device;
                        status->backing_inode = f->ids[i].inode;
                        status->backing_rdevice = f->ids[i].rdevice;
                        return 0;
                }
        /* Not scripted: the real one, which finds no device node under the fake root. */
        return __real_loop_read_ids(root, status);
}
