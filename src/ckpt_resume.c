/* ckpt_resume.c - continuing a run from a checkpoint.
 *
 * Same layout (world size, K, replicas, partition, schedule, activations,
 * micro-batches, bp warm-up, batch size): every rank restores its shard
 * exactly, in-flight state included, and the run continues bit for bit.
 * Another layout: parameters, optimizer state and update counts are
 * loaded by tensor name through the manifest's links, the in-flight state
 * is dropped and the pipeline fill restarts at the checkpoint's step
 * (Schedule.start), with a warning. The same happens when the run is
 * made longer (steps=) past what the checkpoint's in-flight state covers:
 * messages for steps beyond the writing run's end were never sent. */
#define _XOPEN_SOURCE 700
#include "checkpoint.h"

#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_fs.h"
#include "ckpt_inflight.h"
#include "ckpt_internal.h"
#include "common.h"
#include "rank.h"

#ifdef HAVE_HDF5

/* ---------------------------------------------------------------- set-up */

/* The step directory resume= names; "" for resume=auto with nothing yet. */
static void resolve_resume(const Config *c, char *dir, size_t n) {
    char ckdir[1100], name[64];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", c->out);
    dir[0] = '\0';
    if (strcmp(c->resume, "latest") == 0 || strcmp(c->resume, "auto") == 0) {
        if (ckpt_read_latest(ckdir, name, sizeof name) == 0) {
            fs_join(dir, n, ckdir, name);
            return;
        }
        if (strcmp(c->resume, "auto") == 0) return;
        die("%s/latest: no checkpoint to resume (resume=latest); train without resume= "
            "first, pass a checkpoint directory, or use resume=auto", ckdir);
    }
    ckpt_resolve(c->resume, dir, n);
}

/* Rank 0, before any rank loads: the whole checkpoint is sound and fits
 * this run. Returns the params_sha256 of its weights in sha. */
static void verify(const Plan *p, const char *dir, char sha[65]) {
    CkptManifest m;
    ckpt_manifest_read(dir, &m);
    ckpt_check_model(&m, &p->pl->cfg);
    if (strcmp(m.optimizer, p->cfg->optimizer) != 0)
        die("%s: written with optimizer=%s, this run has optimizer=%s; resume with "
            "optimizer=%s", m.path, m.optimizer, p->cfg->optimizer, m.optimizer);
    ckpt_verify_shards(&m, NULL);
    CkptReader rd;
    ckpt_reader_open(&rd, &m);
    ckpt_check_tensors(&rd, p->pl, NULL);
    const char *groups[2];
    int ng = ckpt_opt_groups(&p->opt, groups);
    for (int g = 0; g < ng; g++)
        if (!ckpt_has_group(&rd, p->pl, groups[g]))
            die("%s: no %s state (written with momentum=0?); resume with the optimizer "
                "settings of the checkpoint's run", m.path, groups[g]);
    float *params = xmalloc(p->pl->n_params * sizeof(float));
    ckpt_read_params(&rd, p->pl, params);
    params_sha256(p->pl, params, sha);
    free(params);
    ckpt_reader_close(&rd);
    ckpt_manifest_free(&m);
}

static void layout_text(char *out, size_t n, int world, const char *sched, int K, int R,
                        const char *part, const char *acts) {
    snprintf(out, n, "%s on %d rank%s, K=%d, %d replica%s, partition %s, activations %s",
             sched, world, world > 1 ? "s" : "", K, R, R > 1 ? "s" : "", part, acts);
}

static void plan_partition(const Plan *p, char *out, size_t n) {
    if (p->sched.K == 1) snprintf(out, n, "%d", p->pl->cfg.n_layer);
    else partition_format(&p->part, out, n);
}

/* Is key=value (value `now`) in the writing run's config text? A key the
 * writer did not know counts as its default, dflt. */
static int config_text_has(const char *text, const char *key, const char *now,
                           const char *dflt) {
    char want[128];
    snprintf(want, sizeof want, "%s=", key);
    size_t wl = strlen(want);
    const char *val = dflt;
    size_t vlen = strlen(dflt);
    for (const char *line = text; line && *line; line = strchr(line, '\n')) {
        if (*line == '\n') line++;
        if (strncmp(line, want, wl) == 0) {
            val = line + wl;
            vlen = strcspn(val, "\n");
            break;
        }
    }
    return strlen(now) == vlen && strncmp(val, now, vlen) == 0;
}

/* Would the in-flight state of m restore into this plan's ranks? Saved
 * forwards are in the backend's own format, so the device and precision
 * must match too. */
static int same_layout(const Plan *p, const CkptManifest *m) {
    char part[512];
    plan_partition(p, part, sizeof part);
    return config_text_has(m->config, "device", p->cfg->device, "cpu") &&
           config_text_has(m->config, "precision", p->cfg->precision, "auto") &&
           m->world == p->world && m->K == p->sched.K && m->replicas == p->sched.replicas &&
           strcmp(m->partition, part) == 0 &&
           strcmp(m->schedule, schedule_name(p->sched.kind)) == 0 &&
           strcmp(m->activations, p->replay ? "replay" : "store") == 0 &&
           m->micro == p->sched.micro && m->bp_warmup == p->sched.bp_warmup &&
           m->batch_size == p->cfg->batch_size;
}

/* Keys whose change does not make the continuation another run. */
static int key_is_incidental(const char *key) {
    static const char *keys[] = {
        "resume", "out", "stop_after", "ckpt_every", "keep_last", "log_every", "eval_every",
        "eval_batches", "emulate", "ranks", "trace", "comm_timeout", "threads",
        "sample_tokens", "prompt", "temperature", "top_k", "checkpoint", "split", "steps",
        "schedule", "replicas", "partition", "micro_batches", "activations",
        "bp_warmup_steps"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (strcmp(key, keys[i]) == 0) return 1;
    return 0;
}

/* One warning line naming the keys that differ from the writing run's. */
static void warn_config_changes(const Config *c, const CkptManifest *m) {
    char *now = NULL, diff[2048] = "";
    size_t nn = 0, used = 0;
    FILE *f = open_memstream(&now, &nn);
    if (!f) return;
    fputc('\n', f); /* every key is then found as "\nkey=" */
    config_write(c, f);
    fclose(f);
    char *save = NULL;
    for (char *line = strtok_r(m->config, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = '\0';
        char want[600];
        snprintf(want, sizeof want, "\n%s=", line);
        const char *at = strstr(now, want);
        const char *val = at ? at + strlen(want) : "";
        size_t vlen = strcspn(val, "\n");
        int same = at && strlen(eq + 1) == vlen && strncmp(val, eq + 1, vlen) == 0;
        if (!same && !key_is_incidental(line) && used < sizeof diff)
            used += (size_t)snprintf(diff + used, sizeof diff - used, "%s%s (%s -> %.*s)",
                                     used ? ", " : "", line, eq + 1, (int)vlen, val);
        *eq = '=';
    }
    free(now);
    if (used)
        warn("resume: keys differ from the checkpoint's run: %s; the continuation is not "
             "the run it came from", diff);
}

/* Rank 0: explains what the resume keeps and drops. */
static void report_resume(const Plan *p, const CkptManifest *m, const CkptResume *res,
                          int same, const char *sha) {
    const Config *c = p->cfg;
    char was[700], now[700], part[512];
    plan_partition(p, part, sizeof part);
    layout_text(was, sizeof was, m->world, m->schedule, m->K, m->replicas, m->partition,
                m->activations);
    layout_text(now, sizeof now, p->world, schedule_name(p->sched.kind), p->sched.K,
                p->sched.replicas, part, p->replay ? "replay" : "store");
    int delayed = strncmp(m->schedule, "ouroboros", 9) == 0 && m->step > m->bp_warmup;
    if (!same)
        warn("resume: the layout changed (%s, now %s): parameters and optimizer state are "
             "loaded by name%s, and the pipeline fill restarts at step %ld", was, now,
             delayed ? "; the in-flight state (delayed gradients) is dropped" : "",
             res->step);
    else if (!res->keep_inflight)
        warn("resume: steps=%d runs past the checkpoint's run (steps=%ld), whose last "
             "messages were never sent: the in-flight state is dropped and the pipeline "
             "fill restarts at step %ld", c->steps, m->steps, res->step);
    if (c->steps != m->steps)
        warn("resume: steps=%d, the checkpoint's run had steps=%ld: the learning-rate "
             "schedule differs from that run's", c->steps, m->steps);
    warn_config_changes(c, m);
    printf("resume: %s: step %ld of %ld (written by ouroboros %s, %s); loaded "
           "params_sha256=%s; %s\n", m->dir, m->step, m->steps, m->code_version, was, sha,
           res->keep_inflight ? "in-flight state restored" : "pipeline fill restarts");
    fflush(stdout);
}

/* Is dir a step directory directly inside ckdir? */
static int inside(const char *ckdir, const char *dir) {
    char a[PATH_MAX], b[PATH_MAX], parent[1200];
    snprintf(parent, sizeof parent, "%s/..", dir);
    return realpath(ckdir, a) && realpath(parent, b) && strcmp(a, b) == 0;
}

/* Rank 0: makes <out>/ckpt ready for this run's checkpoints. Resuming
 * from one of its own, `latest` is pointed at it (later ones belong to an
 * abandoned timeline and are replaced when the run reaches their step);
 * otherwise earlier checkpoints are moved aside to ckpt.prev. */
static void tidy_out(const Config *c, const char *dir) {
    char ckdir[1100], prev[1100], name[64];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", c->out);
    if (!fs_is_dir(ckdir)) return;
    if (dir[0] && inside(ckdir, dir)) {
        const char *base = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
        if (ckpt_read_latest(ckdir, name, sizeof name) != 0 || strcmp(name, base) != 0) {
            char text[64];
            snprintf(text, sizeof text, "%s\n", base);
            fs_write_atomic(ckdir, "latest", text);
            warn("resume: %s/latest now names %s; later checkpoints there are replaced as "
                 "this run reaches their steps", ckdir, base);
        }
        return;
    }
    long steps[1];
    char latest[1200];
    snprintf(latest, sizeof latest, "%s/latest", ckdir);
    if (ckpt_list_steps(ckdir, steps, 1) == 0 && !fs_is_file(latest)) return;
    snprintf(prev, sizeof prev, "%s/ckpt.prev", c->out);
    if (fs_is_dir(prev)) {
        char tmp[1200];
        snprintf(tmp, sizeof tmp, "%s/ckpt.prev.del", c->out);
        fs_rename(prev, tmp);
        char sub[1300];
        long s[4096];
        int n = ckpt_list_steps(tmp, s, 4096);
        for (int i = 0; i < n; i++) {
            ckpt_step_name(s[i], name, sizeof name);
            snprintf(sub, sizeof sub, "%s/%s", tmp, name);
            fs_remove_dir(sub);
        }
        fs_remove_dir(tmp);
    }
    fs_rename(ckdir, prev);
    warn("out=%s already held checkpoints of an earlier run: moved to %s (resume=latest "
         "continues a run instead)", c->out, prev);
}

void ckpt_setup(Plan *p, CkptResume *res, int rank) {
    const Config *c = p->cfg;
    ckpt_h5_init();
    memset(res, 0, sizeof *res);
    p->resume = NULL;
    char dir[1100] = "", sha[65] = "";
    if (c->resume[0] && rank == 0) {
        resolve_resume(c, dir, sizeof dir);
        if (dir[0]) verify(p, dir, sha);
    }
    /* rank 0 has checked it: the others take its word for where it is */
    MPI_Bcast(dir, (int)sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (!dir[0]) {
        if (rank == 0) tidy_out(c, "");
        return;
    }
    CkptManifest m;
    ckpt_manifest_read(dir, &m);
    if (c->steps < m.step)
        die("steps=%d is before the checkpoint's step %ld (%s); resume with steps >= %ld",
            c->steps, m.step, m.path, m.step);
    snprintf(res->dir, sizeof res->dir, "%s", dir);
    res->step = m.step;
    int same = same_layout(p, &m);
    res->keep_inflight = same;
    if (same) {
        p->sched.start = m.pipeline_start;
        if (c->steps > m.steps && inflight_count(&p->sched, m.step, m.steps, c->steps) > 0)
            res->keep_inflight = 0;
    }
    if (!res->keep_inflight) p->sched.start = m.step;
    p->resume = res;
    if (rank == 0) {
        report_resume(p, &m, res, same, sha);
        tidy_out(c, dir);
    }
    ckpt_manifest_free(&m);
}

/* ---------------------------------------------------------------- restore */

static void load_tensors(Rank *r, CkptReader *rd) {
    const Plan *p = r->plan;
    const ParamLayout *pl = p->pl;
    const char *groups[2];
    int ng = ckpt_opt_groups(&p->opt, groups);
    float *state[2] = {r->opt_m, r->opt_v};
    for (int k = 0; k < r->n_mods; k++)
        for (int i = r->mods[k].first_tensor; i < r->mods[k].last_tensor; i++) {
            const TensorInfo *ti = &pl->tensors[i];
            ckpt_read_tensor(rd, "params", ti, r->params + ti->offset);
            for (int g = 0; g < ng; g++) ckpt_read_tensor(rd, groups[g], ti, state[g] + ti->offset);
            r->tensor_updates[i] = ckpt_read_updates(rd, ti);
        }
}

static long long shard_int(hid_t f, const char *path, const char *obj, const char *name) {
    long long v;
    if (h5_attr_get_i64(f, obj, name, &v) != 0)
        die("%s: %s has no attribute '%s': the shard is incomplete", path, obj, name);
    return v;
}

/* Reads a 1-D fp32 dataset of exactly n values. */
static void read_exact(hid_t f, const char *path, const char *obj, float *dst, size_t n) {
    hsize_t d[2];
    int isf = 0;
    int nd = h5_shape(f, obj, d, &isf);
    if (nd < 0) die("%s: no dataset %s: the in-flight state is incomplete", path, obj);
    if (nd != 1 || d[0] != n || isf != 1)
        die("%s: %s has %llu values, this run needs %zu: the shard does not fit this run",
            path, obj, (unsigned long long)d[0], n);
    if (h5_read_f32(f, obj, dst) != 0)
        die("%s: reading %s failed its Fletcher32 checksum; use another checkpoint", path, obj);
}

static void load_slots(Rank *r, hid_t f, const char *path) {
    const Plan *p = r->plan;
    for (int k = 0; k < r->n_mods; k++) {
        Mod *md = &r->mods[k];
        char obj[64];
        snprintf(obj, sizeof obj, "inflight/slot_keys/m%d", md->m);
        int64_t *keys = xmalloc((size_t)md->n_slots * sizeof(int64_t));
        hsize_t d[2];
        int isf = 0;
        if (h5_shape(f, obj, d, &isf) != 1 || d[0] != (hsize_t)md->n_slots || isf != 2 ||
            h5_read_i64(f, obj, keys) != 0)
            die("%s: %s is missing or not %d slot keys", path, obj, md->n_slots);
        for (int i = 0; i < md->n_slots; i++) {
            md->slot_key[i] = keys[i];
            if (keys[i] < 0) continue;
            Backend *be = r->be;
            if (!p->replay) {
                size_t n = be->acts_state_floats(be, p->pl, md->acts[i]);
                float *buf = xmalloc(n * sizeof(float));
                snprintf(obj, sizeof obj, "inflight/acts/m%d-s%d", md->m, i);
                read_exact(f, path, obj, buf, n);
                be->acts_import(be, p->pl, md->acts[i], buf);
                free(buf);
            } else if (md->inputs[i]) {
                size_t n = act_floats(r);
                float *buf = xmalloc(n * sizeof(float));
                snprintf(obj, sizeof obj, "inflight/inputs/m%d-s%d", md->m, i);
                read_exact(f, path, obj, buf, n);
                be->upload(be, md->inputs[i], buf, n);
                free(buf);
            }
        }
        md->work_key = -1; /* replay recomputes: the same numbers */
        free(keys);
    }
}

static void load_messages(Rank *r, hid_t f, const char *path) {
    long n = (long)shard_int(f, path, ".", "inflight_messages");
    size_t floats = act_floats(r);
    float *buf = xmalloc(floats * sizeof(float));
    for (long i = 0; i < n; i++) {
        char obj[64];
        snprintf(obj, sizeof obj, "inflight/messages/%ld", i);
        read_exact(f, path, obj, buf, floats);
        MsgKey key = msg_key((MsgKind)shard_int(f, path, obj, "kind"),
                             (int)shard_int(f, path, obj, "micro"),
                             shard_int(f, path, obj, "minibatch"));
        inbox_put(&r->inbox, (int)shard_int(f, path, obj, "src"), key, buf,
                  floats * sizeof(float));
    }
    free(buf);
}

static void load_batches(Rank *r, hid_t f, const char *path) {
    const Config *c = r->plan->cfg;
    size_t slice = (size_t)c->batch_size / r->plan->sched.replicas * c->block_size;
    long n = (long)shard_int(f, path, ".", "inflight_batches");
    int32_t *buf = xmalloc(2 * slice * sizeof(int32_t));
    for (long i = 0; i < n; i++) {
        char obj[64];
        snprintf(obj, sizeof obj, "inflight/batches/%ld", i);
        hsize_t d[2];
        int isf = 0;
        if (h5_shape(f, obj, d, &isf) != 2 || d[0] != 2 || d[1] != slice || isf != 2 ||
            h5_read_i32(f, obj, buf) != 0)
            die("%s: %s is missing, damaged or not [2, %zu]", path, obj, slice);
        long mb = (long)shard_int(f, path, obj, "minibatch");
        BatchSlot *b = &r->ring[mb % r->n_ring];
        b->mb = mb;
        memcpy(b->inputs, buf, slice * sizeof(int32_t));
        memcpy(b->targets, buf + slice, slice * sizeof(int32_t));
    }
    free(buf);
}

static void load_inflight(Rank *r, CkptReader *rd) {
    hid_t f = ckpt_reader_shard(rd, r->rank);
    char path[1300];
    snprintf(path, sizeof path, "%s/%s", rd->m->dir, rd->m->shards[r->rank].file);
    if (shard_int(f, path, ".", "world_rank") != r->rank)
        die("%s: the shard of world rank %lld, not %d: the checkpoint is mixed up", path,
            shard_int(f, path, ".", "world_rank"), r->rank);
    r->version = (long)shard_int(f, path, ".", "version");
    load_slots(r, f, path);
    load_messages(r, f, path);
    load_batches(r, f, path);
}

long ckpt_restore(Rank *r) {
    const CkptResume *res = r->plan->resume;
    if (!res) return 0;
    ckpt_h5_init();
    CkptManifest m;
    ckpt_manifest_read(res->dir, &m);
    CkptReader rd;
    ckpt_reader_open(&rd, &m);
    load_tensors(r, &rd);
    if (res->keep_inflight) load_inflight(r, &rd);
    ckpt_reader_close(&rd);
    ckpt_manifest_free(&m);
    return res->step;
}

#else /* no HDF5 */

void ckpt_setup(Plan *p, CkptResume *res, int rank) {
    const Config *c = p->cfg;
    (void)rank;
    memset(res, 0, sizeof *res);
    p->resume = NULL;
    const char *key = c->resume[0] ? "resume=" : c->stop_after > 0 ? "stop_after=" :
                      c->ckpt_every > 0 ? "ckpt_every=" : NULL;
    if (key)
        die("config: %s needs checkpoints, which need HDF5, and this build has none; "
            "install libhdf5-openmpi-dev and rebuild (launch/build)", key);
}

long ckpt_restore(Rank *r) {
    (void)r;
    return 0;
}

#endif
