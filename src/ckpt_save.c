/* ckpt_save.c - writing a checkpoint: every rank its shard, world rank 0
 * the manifest, then the atomic publish (format and protocol at the top
 * of checkpoint.c).
 *
 * The steps, all ranks together after step `done`-1:
 *  1. every rank takes from the transport the messages already sent to it
 *     for later steps (they are part of its state) into its inbox;
 *  2. rank 0 makes an empty .tmp-step-N directory and tells the others
 *     to go (so no shard lands in a stale directory);
 *  3. every rank writes and fsyncs its shard and reports its SHA-256 and
 *     size to rank 0;
 *  4. rank 0 writes the manifest, fsyncs it and the directory, renames
 *     it to step-N, fsyncs ckpt/, points `latest` at it, prunes.
 * A rank that dies anywhere leaves `latest` naming the previous one. */
#define _POSIX_C_SOURCE 200809L
#include "checkpoint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <dirent.h>

#include "ckpt_fs.h"
#include "ckpt_inflight.h"
#include "ckpt_internal.h"
#include "common.h"
#include "rank.h"

int ckpt_due(const Config *c, long done) {
#ifdef HAVE_HDF5
    if (done == ckpt_last_step(c)) return 1;
    return c->ckpt_every > 0 && done % c->ckpt_every == 0;
#else
    (void)c;
    (void)done;
    return 0;
#endif
}

#ifdef HAVE_HDF5

typedef struct {
    char sha256[65];
    char pad[7];
    int64_t bytes;
} ShardReport;

static Mod *mod_of(Rank *r, int m) {
    for (int i = 0; i < r->n_mods; i++)
        if (r->mods[i].m == m) return &r->mods[i];
    die("checkpoint: module %d is not on this rank (a schedule bug)", m + 1);
}

/* ---------------------------------------------------------------- 1. in flight */

static void collect_one(const InflightMsg *im, void *arg) {
    Rank *r = arg;
    Mod *md = mod_of(r, im->module);
    int fwd = im->kind == ACT_FORWARD;
    int src = fwd ? md->prev_rank : md->next_rank;
    MsgKey key = msg_key(fwd ? MSG_ACT : MSG_GRAD, im->micro, im->mb);
    if (inbox_has(&r->inbox, src, key)) return; /* taken at an earlier checkpoint */
    size_t bytes = act_floats(r) * sizeof(float);
    float *buf = xmalloc(bytes);
    rank_recv_to_host(r, src, key, buf, act_floats(r));
    inbox_put(&r->inbox, src, key, buf, bytes);
    free(buf);
}

/* Every message sent to this rank for a step in [done, steps): its
 * producer has run, so it has been sent and can be received now. */
static void collect_inflight(Rank *r, long done) {
    const Plan *p = r->plan;
    inflight_messages(&p->sched, r->prank, done, done, p->cfg->steps, collect_one, r);
}

/* Does slot i of md hold a forward whose backward is still to come? */
static int slot_in_flight(const Rank *r, const Mod *md, int i, long done) {
    const Schedule *s = &r->plan->sched;
    long key = md->slot_key[i];
    if (key < 0) return 0;
    long mb = key / s->micro;
    return mb >= s->start && schedule_step_of(s, ACT_BACKWARD, md->m, mb) >= done;
}

/* ---------------------------------------------------------------- 3. the shard */

static int write_tensors(const Rank *r, hid_t f) {
    const Plan *p = r->plan;
    const ParamLayout *pl = p->pl;
    const char *groups[2];
    int ng = ckpt_opt_groups(&p->opt, groups);
    const float *state[2] = {r->opt_m, r->opt_v};
    int bad = 0;
    for (int k = 0; k < r->n_mods; k++)
        for (int i = r->mods[k].first_tensor; i < r->mods[k].last_tensor; i++) {
            const TensorInfo *ti = &pl->tensors[i];
            hsize_t dims[2] = {(hsize_t)ti->shape[0], (hsize_t)ti->shape[1]};
            char name[256];
            snprintf(name, sizeof name, "params/%s", ti->name);
            bad |= h5_write_f32(f, name, ti->ndim, dims, r->params + ti->offset);
            for (int g = 0; g < ng; g++) {
                snprintf(name, sizeof name, "%s/%s", groups[g], ti->name);
                bad |= h5_write_f32(f, name, ti->ndim, dims, state[g] + ti->offset);
            }
            int64_t upd = r->tensor_updates[i];
            snprintf(name, sizeof name, "updates/%s", ti->name);
            bad |= h5_write_i64(f, name, 1, &upd);
        }
    return bad;
}

static int write_slots(const Rank *r, hid_t f, long done) {
    const Plan *p = r->plan;
    int bad = 0;
    for (int k = 0; k < r->n_mods; k++) {
        const Mod *md = &r->mods[k];
        int64_t *keys = xmalloc((size_t)md->n_slots * sizeof(int64_t));
        for (int i = 0; i < md->n_slots; i++) {
            keys[i] = slot_in_flight(r, md, i, done) ? md->slot_key[i] : -1;
            if (keys[i] < 0) continue;
            char name[64];
            Backend *be = r->be;
            if (!p->replay) {
                size_t n = be->acts_state_floats(be, p->pl, md->acts[i]);
                float *buf = xmalloc(n * sizeof(float));
                be->acts_export(be, p->pl, md->acts[i], buf);
                hsize_t d = n;
                snprintf(name, sizeof name, "inflight/acts/m%d-s%d", md->m, i);
                bad |= h5_write_f32(f, name, 1, &d, buf);
                free(buf);
            } else if (md->inputs[i]) {
                size_t n = act_floats(r);
                float *buf = xmalloc(n * sizeof(float));
                be->download(be, buf, md->inputs[i], n);
                hsize_t d = n;
                snprintf(name, sizeof name, "inflight/inputs/m%d-s%d", md->m, i);
                bad |= h5_write_f32(f, name, 1, &d, buf);
                free(buf);
            }
        }
        char name[64];
        snprintf(name, sizeof name, "inflight/slot_keys/m%d", md->m);
        bad |= h5_write_i64(f, name, (hsize_t)md->n_slots, keys);
        free(keys);
    }
    return bad;
}

static int write_messages(const Rank *r, hid_t f) {
    int bad = 0, i = 0;
    for (const InboxMsg *m = r->inbox.head; m; m = m->next, i++) {
        char name[64];
        snprintf(name, sizeof name, "inflight/messages/%d", i);
        hsize_t d = m->bytes / sizeof(float);
        bad |= h5_write_f32(f, name, 1, &d, m->data);
        bad |= h5_attr_set_i64(f, name, "src", m->src);
        bad |= h5_attr_set_i64(f, name, "kind", m->key.kind);
        bad |= h5_attr_set_i64(f, name, "micro", m->key.micro);
        bad |= h5_attr_set_i64(f, name, "minibatch", m->key.id);
    }
    return bad | h5_attr_set_i64(f, ".", "inflight_messages", i);
}

static int write_batches(const Rank *r, hid_t f, long done) {
    const Config *c = r->plan->cfg;
    size_t slice = (size_t)c->batch_size / r->plan->sched.replicas * c->block_size;
    int32_t *buf = xmalloc(2 * slice * sizeof(int32_t));
    int bad = 0, n = 0;
    for (int i = 0; i < r->n_ring; i++) {
        const BatchSlot *b = &r->ring[i];
        if (b->mb < 0 || b->mb >= done ||
            !inflight_batch_needed(&r->plan->sched, r->prank, b->mb, done, r->plan->replay))
            continue;
        memcpy(buf, b->inputs, slice * sizeof(int32_t));
        memcpy(buf + slice, b->targets, slice * sizeof(int32_t));
        char name[64];
        snprintf(name, sizeof name, "inflight/batches/%d", n++);
        hsize_t d[2] = {2, slice};
        bad |= h5_write_i32(f, name, 2, d, buf);
        bad |= h5_attr_set_i64(f, name, "minibatch", b->mb);
    }
    free(buf);
    return bad | h5_attr_set_i64(f, ".", "inflight_batches", n);
}

static int write_shard_attrs(const Rank *r, hid_t f, long done) {
    char mods[32];
    if (r->n_mods == 2) snprintf(mods, sizeof mods, "%d,%d", r->mods[0].m + 1, r->mods[1].m + 1);
    else snprintf(mods, sizeof mods, "%d", r->mods[0].m + 1);
    return h5_attr_set_i64(f, ".", "format_version", CKPT_FORMAT_VERSION) |
           h5_attr_set_i64(f, ".", "world_rank", r->rank) |
           h5_attr_set_i64(f, ".", "replica", r->replica) |
           h5_attr_set_i64(f, ".", "pipe_rank", r->prank) |
           h5_attr_set_str(f, ".", "modules", mods) |
           h5_attr_set_i64(f, ".", "next_step", done) |
           h5_attr_set_i64(f, ".", "version", r->version) |
           h5_attr_set_str(f, ".", "optimizer", r->plan->cfg->optimizer) |
           h5_attr_set_str(f, ".", "rng", "none");
}

static void write_shard(const Rank *r, const char *path, long done, ShardReport *rep) {
    hid_t f = h5_create(path);
    if (f < 0) die("%s: cannot create the shard; check that out= is writable", path);
    int bad = write_shard_attrs(r, f, done);
    if (r->replica == 0) bad |= write_tensors(r, f);
    bad |= write_slots(r, f, done);
    bad |= write_messages(r, f);
    bad |= write_batches(r, f, done);
    if (h5_close(f) != 0 || bad)
        die("%s: writing the shard failed (disk full?); the previous checkpoint stays the "
            "latest", path);
    fs_fsync(path);
    long long bytes = 0;
    if (fs_sha256(path, rep->sha256, &bytes) != 0)
        die("%s: cannot read back the shard: %s", path, strerror(errno));
    rep->bytes = bytes;
}

/* ---------------------------------------------------------------- 4. the manifest */

/* World rank (replica 0) holding tensor i. */
static int tensor_owner(const Plan *p, int i) {
    const Schedule *s = &p->sched;
    if (s->K == 1) return 0;
    for (int m = 0; m < s->K; m++) {
        ModuleSpec ms = partition_module(&p->part, m);
        int first, last;
        module_tensor_range(p->pl, &ms, &first, &last);
        if (i >= first && i < last) return schedule_module_rank(s, m);
    }
    die("checkpoint: tensor %d belongs to no module (a partition bug)", i);
}

static int manifest_links(const Plan *p, hid_t f) {
    const char *groups[4] = {"params", "updates"};
    int ng = 2 + ckpt_opt_groups(&p->opt, groups + 2);
    int bad = 0;
    for (int i = 0; i < p->pl->n_tensors; i++) {
        char file[32], name[256];
        snprintf(file, sizeof file, "shard-%05d.h5", tensor_owner(p, i));
        for (int g = 0; g < ng; g++) {
            snprintf(name, sizeof name, "%s/%s", groups[g], p->pl->tensors[i].name);
            bad |= h5_link_external(f, name, file, name);
        }
    }
    return bad;
}

static int manifest_shards(const Plan *p, hid_t f, const ShardReport *reps) {
    int bad = 0;
    for (int w = 0; w < p->world; w++) {
        char obj[64];
        snprintf(obj, sizeof obj, "shards/shard-%05d.h5", w);
        bad |= h5_group(f, obj);
        bad |= h5_attr_set_str(f, obj, "sha256", reps[w].sha256);
        bad |= h5_attr_set_i64(f, obj, "bytes", reps[w].bytes);
        bad |= h5_attr_set_i64(f, obj, "world_rank", w);
        bad |= h5_attr_set_i64(f, obj, "replica", w / p->pipe_ranks);
        bad |= h5_attr_set_i64(f, obj, "pipe_rank", w % p->pipe_ranks);
    }
    return bad;
}

static char *config_text(const Config *c) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) die("checkpoint: out of memory for the config text");
    config_write(c, f);
    fclose(f);
    return buf;
}

static int manifest_attrs(const Plan *p, hid_t f, long done) {
    const Config *c = p->cfg;
    const GPTConfig *g = &p->pl->cfg;
    char part[512], pos[128];
    partition_format(&p->part, part, sizeof part);
    if (p->sched.K == 1) snprintf(part, sizeof part, "%d", g->n_layer);
    snprintf(pos, sizeof pos, "next batch index %ld (= step)", done);
    char *cfg = config_text(c);
    struct { const char *k; long long v; } ints[] = {
        {"format_version", CKPT_FORMAT_VERSION}, {"step", done}, {"steps", c->steps},
        {"n_layer", g->n_layer}, {"n_head", g->n_head}, {"n_embd", g->n_embd},
        {"block_size", g->block_size}, {"vocab_size", g->vocab_size},
        {"n_params", (long long)p->pl->n_params}, {"world_size", p->world},
        {"K", p->sched.K}, {"replicas", p->sched.replicas}, {"pipe_ranks", p->pipe_ranks},
        {"micro_batches", p->sched.micro}, {"bp_warmup_steps", p->sched.bp_warmup},
        {"batch_size", c->batch_size}, {"pipeline_start", p->sched.start}, {"seed", c->seed}};
    struct { const char *k; const char *v; } strs[] = {
        {"code_version", PACKAGE_VERSION}, {"partition", part},
        {"schedule", schedule_name(p->sched.kind)},
        {"activations", p->replay ? "replay" : "store"}, {"optimizer", c->optimizer},
        {"rng", "none: batch t is a pure function of (seed, t)"}, {"data_position", pos},
        {"config", cfg}};
    int bad = 0;
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        bad |= h5_attr_set_i64(f, ".", ints[i].k, ints[i].v);
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        bad |= h5_attr_set_str(f, ".", strs[i].k, strs[i].v);
    free(cfg);
    return bad;
}

static void write_manifest(const Plan *p, const char *dir, long done, const ShardReport *reps) {
    char path[1300];
    snprintf(path, sizeof path, "%s/manifest.h5", dir);
    hid_t f = h5_create(path);
    if (f < 0) die("%s: cannot create the manifest; check that out= is writable", path);
    int bad = manifest_attrs(p, f, done) | manifest_shards(p, f, reps) | manifest_links(p, f);
    if (h5_close(f) != 0 || bad)
        die("%s: writing the manifest failed (disk full?); the previous checkpoint stays "
            "the latest", path);
    fs_fsync(path);
}

/* ---------------------------------------------------------------- publishing */

/* Removes leftovers of interrupted checkpoints (.tmp-*, .del-*). */
static void remove_leftovers(const char *ckdir) {
    DIR *d = opendir(ckdir);
    if (!d) die("%s: cannot read: %s", ckdir, strerror(errno));
    char names[64][64];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 64)
        if (strncmp(e->d_name, ".tmp-", 5) == 0 || strncmp(e->d_name, ".del-", 5) == 0)
            if ((size_t)snprintf(names[n], sizeof names[0], "%s", e->d_name) < sizeof names[0])
                n++;
    closedir(d);
    for (int i = 0; i < n; i++) {
        char path[1200];
        fs_join(path, sizeof path, ckdir, names[i]);
        fs_remove_dir(path);
    }
}

/* Removes a step directory so that it is never seen half-removed. */
static void remove_step(const char *ckdir, const char *name) {
    char from[1200], to[1200];
    snprintf(from, sizeof from, "%s/%s", ckdir, name);
    snprintf(to, sizeof to, "%s/.del-%s", ckdir, name);
    fs_rename(from, to);
    fs_remove_dir(to);
}

static void prepare_tmp(const char *ckdir, const char *tmp) {
    if (mkdir(ckdir, 0755) != 0 && errno != EEXIST)
        die("%s: cannot create the checkpoint directory: %s", ckdir, strerror(errno));
    remove_leftovers(ckdir);
    if (mkdir(tmp, 0755) != 0) die("%s: cannot create: %s", tmp, strerror(errno));
}

static void publish(const char *ckdir, const char *tmp, const char *name) {
    char final[1200], text[64];
    fs_fsync(tmp);
    snprintf(final, sizeof final, "%s/%s", ckdir, name);
    /* A step directory of an abandoned timeline (the run resumed from an
     * older checkpoint): `latest` does not name it, so it can go first. */
    if (fs_is_dir(final)) remove_step(ckdir, name);
    fs_rename(tmp, final);
    fs_fsync(ckdir);
    snprintf(text, sizeof text, "%s\n", name);
    fs_write_atomic(ckdir, "latest", text);
}

/* keep_last: the newest `keep` steps up to `done` stay. */
static void prune(const char *ckdir, int keep, long done) {
    if (keep <= 0) return;
    static long steps[1 << 14];
    int n = ckpt_list_steps(ckdir, steps, 1 << 14), kept = 0;
    for (int i = n - 1; i >= 0; i--) {
        if (steps[i] > done) continue;
        if (++kept <= keep) continue;
        char name[32];
        ckpt_step_name(steps[i], name, sizeof name);
        remove_step(ckdir, name);
    }
}

void ckpt_save(Rank *r, long done) {
    const Plan *p = r->plan;
    double t0 = now_seconds();
    ckpt_h5_init();
    collect_inflight(r, done);
    char ckdir[1100], name[32], tmp[1200], path[1300];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", p->cfg->out);
    ckpt_step_name(done, name, sizeof name);
    snprintf(tmp, sizeof tmp, "%s/.tmp-%s", ckdir, name);
    MsgKey go = msg_key(MSG_CKPT, 0, done), report = msg_key(MSG_CKPT, 1, done);
    int32_t token = 1;
    if (r->rank == 0) {
        prepare_tmp(ckdir, tmp);
        for (int w = 1; w < p->world; w++) r->tp->send(r->tp, w, go, &token, sizeof token);
    } else {
        r->tp->recv(r->tp, 0, go, &token, sizeof token);
    }
    ShardReport rep;
    memset(&rep, 0, sizeof rep);
    snprintf(path, sizeof path, "%s/shard-%05d.h5", tmp, r->rank);
    write_shard(r, path, done, &rep);
    if (r->rank != 0) {
        r->tp->send(r->tp, 0, report, &rep, sizeof rep);
        return;
    }
    ShardReport *reps = xcalloc((size_t)p->world, sizeof *reps);
    reps[0] = rep;
    for (int w = 1; w < p->world; w++) r->tp->recv(r->tp, w, report, &reps[w], sizeof rep);
    write_manifest(p, tmp, done, reps);
    publish(ckdir, tmp, name);
    prune(ckdir, p->cfg->keep_last, done);
    double total = 0;
    for (int w = 0; w < p->world; w++) total += (double)reps[w].bytes;
    printf("checkpoint: step %ld -> %s/%s (%d shard%s, %.2f MB, %.2f s)\n", done, ckdir, name,
           p->world, p->world > 1 ? "s" : "", total / 1e6, now_seconds() - t0);
    fflush(stdout);
    free(reps);
}

#else /* no HDF5: ckpt_due() is never true */

void ckpt_save(Rank *r, long done) {
    (void)r;
    (void)done;
}

#endif
