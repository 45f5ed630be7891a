/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/sysmacros.h>

#include "blockdev.h"
#include "canonical.h"
#include "loop-kernel.h"
#include "util.h"

/* Layers are collected here while walking; handed over to the Chain on success. */
typedef struct Walk {
        Layer *layers;
        size_t n_layers;
        dev_t seen[CHAIN_MAX_DEPTH + 2];
        size_t n_seen;
} Walk;

static void walk_done(Walk *w) {
        for (size_t i = 0; i < w->n_layers; i++)
                free(w->layers[i].path);
        free(w->layers);
        *w = (Walk){};
}

static int walk_push(Walk *w, LayerKind kind, dev_t devnum, const char *name, const char *path,
                     uint64_t offset, uint64_t size) {
        _cleanup_free_ char *p = NULL;
        Layer *l;

        if (path) {
                p = strdup(path);
                if (!p)
                        return -ENOMEM;
        }

        l = reallocarray(w->layers, w->n_layers + 1, sizeof(Layer));
        if (!l)
                return -ENOMEM;
        w->layers = l;

        l = &w->layers[w->n_layers++];
        *l = (Layer){
                .kind = kind,
                .devnum = devnum,
                .path = TAKE_PTR(p),
                .offset = offset,
                .size = size,
        };
        (void) snprintf(l->name, sizeof(l->name), "%s", name ?: "");
        return 0;
}

/* Records that the walk enters block device d; -ELOOP if it was there already. */
static int walk_enter(Walk *w, dev_t d) {
        for (size_t i = 0; i < w->n_seen; i++)
                if (w->seen[i] == d)
                        return -ELOOP;
        if (w->n_seen >= ELEMENTSOF(w->seen))
                return -ELOOP;
        w->seen[w->n_seen++] = d;
        return 0;
}

/* Before adding one more layer above the base. */
static int walk_check_depth(const Walk *w) {
        return w->n_layers >= CHAIN_MAX_DEPTH ? -ELOOP : 0;
}

/* Checks that [offset, offset + size) lies inside a layer of `total` bytes and returns the
 * range start on the layer below, which begins `shift` bytes into it. */
static int map_range(uint64_t offset, uint64_t size, uint64_t total, uint64_t shift,
                     uint64_t *ret) {
        uint64_t start, end;

        if (__builtin_add_overflow(offset, size, &end))
                return -EOVERFLOW;
        if (end > total)
                return -ERANGE;
        if (__builtin_add_overflow(offset, shift, &start))
                return -EOVERFLOW;
        /* The range must stay addressable on the layer below too. */
        if (__builtin_add_overflow(start, size, &end))
                return -EOVERFLOW;
        *ret = start;
        return 0;
}

/* Asks the kernel about a loop device the caller does not know. Returns 1 on success. */
static int loop_info_from_kernel(const char *root, dev_t devnum, const char *name,
                                 LoopLayerInfo *ret, char **ret_backing_file) {
        _cleanup_(loop_status_done) LoopStatus s = {};
        Backing b;
        int r;

        r = loop_read_sysfs(root, name, &s);
        if (r < 0)
                return r;
        /* The name was recycled between the sysfs look-up and now. */
        if (s.devnum != devnum)
                return -ENOENT;
        if (!s.bound)
                return -ENXIO;

        r = loop_read_ids(root, &s);
        if (r == -ESTALE)
                /* Rebound or unbound while we looked: nothing consistent to describe. */
                return -ENOENT;
        if (r < 0)
                return r;

        /* lo_device/lo_inode of a block backing are those of the device node; lo_rdevice
         * says which block device it is (docs/KERNEL.md, "Identity: diskseq and backing inode"). */
        if (s.backing_rdevice != 0)
                b = (Backing){.is_block = true, .device = s.backing_rdevice};
        else if (s.backing_device != 0 || s.backing_inode != 0)
                b = (Backing){.device = s.backing_device, .inode = s.backing_inode};
        else
                return -ENXIO;
        *ret = (LoopLayerInfo){
                .backing = b,
                .offset = s.offset,
                .size = s.size,
        };
        *ret_backing_file = TAKE_PTR(s.backing_file);
        return 1;
}

static bool layer_is_loop_like(const Layer *l) {
        return l->kind == LAYER_LOOP || l->kind == LAYER_REQUEST;
}

int chain_resolve(const char *root, const Layer *top, const Backing *backing, uint64_t offset,
                  uint64_t size, LoopInfoLookup lookup, void *userdata, Chain *ret) {
        _cleanup_(walk_done) Walk w = {};
        Backing b;
        uint64_t cur = offset, end;
        int r;

        if (!top || !backing || !ret || size == 0)
                return -EINVAL;
        if (__builtin_add_overflow(offset, size, &end))
                return -EOVERFLOW;

        r = walk_push(&w, top->kind, top->devnum, top->name, top->path, offset, size);
        if (r < 0)
                return r;
        if (top->devnum != 0) {
                r = walk_enter(&w, top->devnum);
                if (r < 0)
                        return r;
        }

        b = *backing;
        for (;;) {
                const Layer *above = &w.layers[w.n_layers - 1];
                char name[sizeof(((Layer *) NULL)->name)] = "";
                PartitionInfo part;
                int have_name;

                if (!b.is_block) {
                        /* A regular file: the base. Its ids come from (st_dev, st_ino), so an
                         * unlinked file keeps its identity; the path is for display only. */
                        r = walk_push(&w, LAYER_BASE_FILE, 0, NULL,
                                      layer_is_loop_like(above) ? above->path : NULL, cur, size);
                        if (r < 0)
                                return r;
                        ret->identity = (Identity){
                                .kind = BASE_FILE,
                                .base_device = b.device,
                                .base_inode = b.inode,
                                .offset = cur,
                                .size = size,
                        };
                        break;
                }

                r = walk_enter(&w, b.device);
                if (r < 0)
                        return r;

                have_name = blockdev_get_name(root, b.device, name, sizeof(name));
                if (have_name < 0 && have_name != -ENOENT)
                        return have_name;

                if (major(b.device) == LOOP_MAJOR_NUMBER && lookup) {
                        LoopLayerInfo info = {};

                        r = lookup(b.device, userdata, &info);
                        if (r < 0)
                                return r;
                        if (r > 0) {
                                uint64_t next;

                                r = walk_check_depth(&w);
                                if (r < 0)
                                        return r;
                                r = map_range(cur, size, info.size, info.offset, &next);
                                if (r < 0)
                                        return r;
                                r = walk_push(&w, LAYER_LOOP, b.device,
                                              have_name >= 0 ? name : NULL, info.backing_file, next,
                                              size);
                                if (r < 0)
                                        return r;
                                b = info.backing;
                                cur = next;
                                continue;
                        }
                }

                /* Everything below needs sysfs: the device must exist. */
                if (have_name < 0)
                        return -ENOENT;

                /* Partitions first: with loop.max_part set, loop partitions have major 7. */
                r = blockdev_get_partition(root, b.device, &part);
                if (r < 0)
                        return r;
                if (r > 0) {
                        uint64_t next;

                        r = walk_check_depth(&w);
                        if (r < 0)
                                return r;
                        r = map_range(cur, size, part.size, part.start, &next);
                        if (r < 0)
                                return r;
                        r = walk_push(&w, LAYER_PARTITION, b.device, name, NULL, next, size);
                        if (r < 0)
                                return r;
                        b = (Backing){.is_block = true, .device = part.parent};
                        cur = next;
                        continue;
                }

                if (major(b.device) == LOOP_MAJOR_NUMBER) {
                        _cleanup_free_ char *backing_file = NULL;
                        LoopLayerInfo info = {};
                        uint64_t next;

                        r = loop_info_from_kernel(root, b.device, name, &info, &backing_file);
                        if (r < 0)
                                return r;
                        r = walk_check_depth(&w);
                        if (r < 0)
                                return r;
                        r = map_range(cur, size, info.size, info.offset, &next);
                        if (r < 0)
                                return r;
                        r = walk_push(&w, LAYER_LOOP, b.device, name, backing_file, next, size);
                        if (r < 0)
                                return r;
                        b = info.backing;
                        cur = next;
                        continue;
                }

                r = blockdev_is_dm(root, b.device);
                if (r < 0)
                        return r;
                if (r > 0) {
                        _cleanup_(dm_table_done) DmTable t = {};
                        dev_t target;
                        uint64_t next;

                        /* Without a readable table (no control node, no live table) the dm
                         * device is opaque: a base of its own. */
                        r = dm_read_table(root, b.device, &t);
                        if (r >= 0)
                                r = dm_table_map(&t, cur, size, &target, &next);
                        else if (r != -ENOMEM)
                                r = 0;
                        if (r < 0)
                                return r;
                        if (r > 0) {
                                r = walk_check_depth(&w);
                                if (r < 0)
                                        return r;
                                r = walk_push(&w, LAYER_DM_LINEAR, b.device, name, NULL, next,
                                              size);
                                if (r < 0)
                                        return r;
                                b = (Backing){.is_block = true, .device = target};
                                cur = next;
                                continue;
                        }
                }

                /* Any other block device is a base of its own. */
                r = walk_push(&w, LAYER_BASE_BLOCK, b.device, name, NULL, cur, size);
                if (r < 0)
                        return r;
                ret->identity = (Identity){
                        .kind = BASE_BLOCK,
                        .base_device = b.device,
                        .base_inode = 0,
                        .offset = cur,
                        .size = size,
                };
                break;
        }

        ret->identity.depth = (unsigned) (w.n_layers - 1);
        ret->layers = TAKE_PTR(w.layers);
        ret->n_layers = w.n_layers;
        w.n_layers = 0;
        return 0;
}

void chain_done(Chain *c) {
        if (!c)
                return;
        for (size_t i = 0; i < c->n_layers; i++)
                free(c->layers[i].path);
        free(c->layers);
        *c = (Chain){};
}

/* How a layer is named when it is what the layer above maps onto. */
static char *layer_target_name(const Layer *l, const Identity *id) {
        char *s = NULL;
        int r;

        switch (l->kind) {
        case LAYER_BASE_FILE:
                if (l->path)
                        return strdup(l->path);
                r = asprintf(&s, "file (device %u:%u, inode %" PRIu64 ")", major(id->base_device),
                             minor(id->base_device), id->base_inode);
                return r < 0 ? NULL : s;
        case LAYER_REQUEST:
                return strdup("request");
        default:
                if (l->name[0] != '\0')
                        r = asprintf(&s, "/dev/%s", l->name);
                else
                        r = asprintf(&s, "block device %u:%u", major(l->devnum), minor(l->devnum));
                return r < 0 ? NULL : s;
        }
}

static int format_layer(const Layer *l, const Layer *below, const Identity *id, char **ret) {
        _cleanup_free_ char *target = NULL;
        char devbuf[64] = "", *s;
        const char *label;
        int r;

        if (l->kind == LAYER_BASE_FILE)
                r = asprintf(&s, "file %s%s(device %u:%u, inode %" PRIu64 ")", l->path ?: "",
                             l->path ? " " : "", major(id->base_device), minor(id->base_device),
                             id->base_inode);
        else if (l->kind == LAYER_BASE_BLOCK) {
                if (l->name[0] != '\0')
                        r = asprintf(&s, "block device %s (%u:%u)", l->name, major(l->devnum),
                                     minor(l->devnum));
                else
                        r = asprintf(&s, "block device %u:%u", major(l->devnum), minor(l->devnum));
        } else {
                if (!below)
                        return -EINVAL;
                target = layer_target_name(below, id);
                if (!target)
                        return -ENOMEM;

                if (l->name[0] == '\0' && l->kind != LAYER_REQUEST)
                        (void) snprintf(devbuf, sizeof(devbuf), "%u:%u", major(l->devnum),
                                        minor(l->devnum));

                switch (l->kind) {
                case LAYER_REQUEST:
                        label = "request";
                        break;
                case LAYER_LOOP:
                        label = "";
                        break;
                case LAYER_PARTITION:
                        label = "partition ";
                        break;
                case LAYER_DM_LINEAR:
                        label = "dm linear ";
                        break;
                default:
                        return -EINVAL;
                }
                if (l->kind == LAYER_LOOP && l->name[0] == '\0')
                        label = "loop ";

                r = asprintf(&s, "%s%s%s: bytes %" PRIu64 "+%" PRIu64 " of %s", label,
                             l->kind == LAYER_REQUEST ? "" : l->name, devbuf, l->offset, l->size,
                             target);
        }
        if (r < 0)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int chain_format(const Chain *c, char ***ret_lines) {
        _cleanup_strv_free_ char **lines = NULL;

        if (!c || !ret_lines)
                return -EINVAL;

        lines = calloc(c->n_layers + 1, sizeof(char *));
        if (!lines)
                return -ENOMEM;

        for (size_t i = 0; i < c->n_layers; i++) {
                int r;

                r = format_layer(&c->layers[i], i + 1 < c->n_layers ? &c->layers[i + 1] : NULL,
                                 &c->identity, &lines[i]);
                if (r < 0)
                        return r;
        }

        *ret_lines = TAKE_PTR(lines);
        return 0;
}

bool chain_contains(const Chain *c, dev_t devnum) {
        if (!c || devnum == 0)
                return false;
        for (size_t i = 0; i < c->n_layers; i++)
                if (c->layers[i].devnum == devnum)
                        return true;
        return false;
}

bool identity_same_base(const Identity *a, const Identity *b) {
        return a->kind == b->kind && a->base_device == b->base_device &&
               a->base_inode == b->base_inode;
}

bool identity_equal_range(const Identity *a, const Identity *b) {
        return identity_same_base(a, b) && a->offset == b->offset && a->size == b->size;
}

bool identity_intersect(const Identity *a, const Identity *b) {
        /* Half-open ranges [offset, offset + size); sizes are > 0 and sums were checked by
         * chain_resolve(), but saturate anyway for identities built elsewhere. */
        uint64_t a_end, b_end;

        if (!identity_same_base(a, b))
                return false;
        if (__builtin_add_overflow(a->offset, a->size, &a_end))
                a_end = UINT64_MAX;
        if (__builtin_add_overflow(b->offset, b->size, &b_end))
                b_end = UINT64_MAX;
        return a->offset < b_end && b->offset < a_end;
}
