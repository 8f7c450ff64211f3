/* checkpoint.c - the checkpoint format, and reading and verifying it.
 * Writing is in ckpt_save.c, resuming in ckpt_resume.c, `inspect` and
 * `eval` in ckpt_cli.c.
 *
 * ==================================================================
 * Checkpoint format, version 1
 * ==================================================================
 *
 * A run with out=DIR writes checkpoints every ckpt_every steps, at
 * stop_after and at the end, into
 *
 *   DIR/ckpt/step-NNNNNNNN/       NNNNNNNN = steps done (8 digits)
 *       manifest.h5               written by world rank 0
 *       shard-RRRRR.h5            one per world rank RRRRR, written by it
 *   DIR/ckpt/latest               one line: the newest complete step-NNNNNNNN
 *
 * All files are HDF5 in the 1.10 file format (checksummed metadata; read
 * by any library built on HDF5 >= 1.10, e.g. a current h5py).
 * Every dataset is chunked with the Fletcher32 filter; numbers are
 * little-endian; strings are variable-length UTF-8 attributes.
 *
 * manifest.h5
 *   attributes of /:
 *     format_version  int   1; a reader refuses a newer version
 *     code_version    str   PACKAGE_VERSION of the writer
 *     step            int   steps done = the next step to run
 *     steps           int   the writing run's `steps` (its lr schedule)
 *     n_layer n_head n_embd block_size vocab_size n_params   the model
 *     world_size      int   ranks of the writing run
 *     K               int   modules per pipeline (1: single, dp)
 *     replicas        int   copies of the pipeline
 *     pipe_ranks      int   ranks per pipeline
 *     partition       str   blocks per module, e.g. "1,1,1,0"
 *     schedule        str   single, bp, gpipe, dp, ouroboros, ouroboros-pipelined
 *     activations     str   store or replay
 *     micro_batches   int   per minibatch (gpipe), else 1
 *     bp_warmup_steps int
 *     batch_size      int
 *     pipeline_start  int   first minibatch of the current pipeline fill
 *                           (0, or the step a re-layout resume started at)
 *     optimizer       str   adamw or sgd
 *     seed            int
 *     rng             str   "none": no random state at run time; batch t
 *                           is a pure function of (seed, t)
 *     data_position   str   the next batch index (= step)
 *     config          str   the writing run's resolved key=value lines
 *   /shards/shard-RRRRR.h5   an empty group per shard, attributes:
 *     sha256 (hex str, of the whole file), bytes, world_rank, replica,
 *     pipe_rank
 *   /params/<name>          external links, one per model tensor, to the
 *   /updates/<name>         same path in the shard of replica 0 that
 *   /adam/m/<name>          holds it (AdamW), or /sgd/momentum/<name>
 *   /adam/v/<name>          (SGD with momentum); link targets are file
 *                           names relative to the step directory
 *
 * shard-RRRRR.h5 (world rank RRRRR)
 *   attributes of /: format_version, world_rank, replica, pipe_rank,
 *     modules (str, 1-based, e.g. "1,4"), next_step, version (weights
 *     version: updates applied so far, for replay), rng, optimizer,
 *     inflight_messages, inflight_batches (counts)
 *   Replica 0 only (the other replicas hold the same numbers):
 *   /params/<name>          fp32, the Hugging Face GPT-2 name and shape:
 *                           wte [V,C], wpe [T,C], h.<i>.ln_1.weight [C],
 *                           h.<i>.attn.c_attn.weight [C,3C] (input-major,
 *                           as GPT-2's Conv1D), ..., ln_f.bias [C]; see
 *                           model.h. The output projection is wte (tied).
 *   /adam/m/<name>, /adam/v/<name>   fp32, AdamW moments, same shape
 *   /sgd/momentum/<name>    fp32, SGD momentum buffer (momentum > 0)
 *   /updates/<name>         int64 [1]: updates applied to the tensor
 *                           (Adam's bias-correction count)
 *   Every rank: the schedule's in-flight state after step `next_step`-1:
 *   /inflight/slot_keys/m<M>    int64 [slots]: minibatch*micro + micro
 *                           of the forward each activation slot of module
 *                           M (0-based) holds for a backward still to
 *                           come, -1 for none
 *   /inflight/acts/m<M>-s<I>    fp32: store mode, the saved forward of
 *                           slot I: its activations and, under delayed
 *                           gradients, the weights it used (opaque, written
 *                           and read by the backend's acts_export/import:
 *                           model.c's layout on the CPU, backend_cuda.c's
 *                           on a GPU; restored only on the same device and
 *                           precision, else the pipeline refills)
 *   /inflight/inputs/m<M>-s<I>  fp32 [rows*T*C]: replay mode, the saved
 *                           input of slot I (modules without embedding)
 *   /inflight/messages/<i>  fp32: activations and gradients already sent
 *                           to this rank for a later step; attributes src
 *                           (world rank), kind (2 activation, 3 gradient),
 *                           micro, minibatch
 *   /inflight/batches/<i>   int32 [2, rows*T]: inputs and targets of a
 *                           minibatch this rank still uses; attribute
 *                           minibatch
 *
 * The gradient buffers are not saved: every gradient computed in a step
 * is applied and zeroed in that step's update. Replay's recomputed
 * forward is not saved either: recomputing it gives the same numbers.
 *
 * Reading (checkpoint.c, ckpt_resume.c): the manifest first (a newer
 * format_version is refused), then every shard's size and SHA-256, then
 * every tensor's link, dtype and shape; datasets are read through their
 * Fletcher32 check. `ouroboros inspect DIR` does all of it and prints
 * what it found. Any failure is one line naming the file.
 *
 * Publishing (ckpt_save.c): the files are written into
 * DIR/ckpt/.tmp-step-NNNNNNNN/, flushed with fsync, the directory is
 * flushed and renamed to step-NNNNNNNN, DIR/ckpt is flushed, and only
 * then `latest` is replaced (latest.tmp, fsync, rename, fsync). A crash
 * at any moment leaves `latest` naming a complete checkpoint. keep_last=N
 * removes older step directories after that (renamed to .del-* first, so
 * a half-removed one is never taken for a checkpoint).
 *
 * Loading the weights without ouroboros (h5py, into Hugging Face's
 * PyTorch GPT-2; LayerNorm eps 1e-5, tanh GELU as in GPT-2):
 *
 *   import h5py, torch
 *   from transformers import GPT2Config, GPT2LMHeadModel
 *   f = h5py.File("DIR/ckpt/step-00000300/manifest.h5", "r")
 *   a = f.attrs
 *   model = GPT2LMHeadModel(GPT2Config(
 *       n_layer=int(a["n_layer"]), n_head=int(a["n_head"]), n_embd=int(a["n_embd"]),
 *       n_positions=int(a["block_size"]), vocab_size=int(a["vocab_size"]),
 *       activation_function="gelu_new", layer_norm_epsilon=1e-5))
 *   hf = lambda k: "transformer." + k + (".weight" if k in ("wte", "wpe") else "")
 *   sd = {hf(k): torch.from_numpy(f["params"][k][()]) for k in f["params"]}
 *   sd["lm_head.weight"] = sd["transformer.wte.weight"]
 *   missing, unexpected = model.load_state_dict(sd, strict=False)
 *   assert not unexpected and all(k.endswith(".attn.bias") or
 *       k.endswith(".attn.masked_bias") for k in missing)
 *
 * (f["params"][k] follows the external link into the shard; h5py finds
 * shards next to the manifest. tests/ckpt_format.sh reads a checkpoint
 * this way and runs a numpy GPT-2 of these conventions on it: it gets the
 * validation loss the run reported.)
 */
#define _POSIX_C_SOURCE 200809L
#include "checkpoint.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_fs.h"
#include "ckpt_internal.h"
#include "common.h"

long ckpt_last_step(const Config *c) {
    return c->stop_after > 0 && c->stop_after < c->steps ? c->stop_after : c->steps;
}

#ifdef HAVE_HDF5

void ckpt_h5_init(void) { h5_quiet(); }

int ckpt_opt_groups(const OptimizerSpec *o, const char *groups[2]) {
    if (o->adam) {
        groups[0] = "adam/m";
        groups[1] = "adam/v";
        return 2;
    }
    if (o->momentum > 0.0f) {
        groups[0] = "sgd/momentum";
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- manifest */

static long long need_int(hid_t f, const CkptManifest *m, const char *name) {
    long long v;
    if (h5_attr_get_i64(f, ".", name, &v) != 0)
        die("%s: no integer attribute '%s': not a complete ouroboros checkpoint manifest",
            m->path, name);
    return v;
}

static void need_str(hid_t f, const CkptManifest *m, const char *name, char *out, size_t n) {
    if (h5_attr_get_str(f, ".", name, out, n) != 0)
        die("%s: no string attribute '%s': not a complete ouroboros checkpoint manifest",
            m->path, name);
}

static void read_shard_table(hid_t f, CkptManifest *m) {
    m->n_shards = m->world;
    m->shards = xcalloc((size_t)m->world, sizeof(CkptShard));
    for (int w = 0; w < m->world; w++) {
        CkptShard *s = &m->shards[w];
        char obj[64];
        snprintf(s->file, sizeof s->file, "shard-%05d.h5", w);
        snprintf(obj, sizeof obj, "shards/%s", s->file);
        long long v[4];
        const char *names[4] = {"bytes", "world_rank", "replica", "pipe_rank"};
        if (!h5_exists(f, obj) || h5_attr_get_str(f, obj, "sha256", s->sha256, sizeof s->sha256) ||
            strlen(s->sha256) != 64)
            die("%s: no entry (with its sha256) for %s of world rank %d: the manifest is "
                "incomplete", m->path, s->file, w);
        for (int i = 0; i < 4; i++)
            if (h5_attr_get_i64(f, obj, names[i], &v[i]) != 0)
                die("%s: the entry of %s has no '%s'", m->path, s->file, names[i]);
        s->bytes = v[0];
        s->world_rank = (int)v[1];
        s->replica = (int)v[2];
        s->pipe_rank = (int)v[3];
    }
}

static void read_manifest_fields(hid_t f, CkptManifest *m) {
    m->step = (long)need_int(f, m, "step");
    m->steps = (long)need_int(f, m, "steps");
    m->pipeline_start = (long)need_int(f, m, "pipeline_start");
    m->world = (int)need_int(f, m, "world_size");
    m->K = (int)need_int(f, m, "K");
    m->replicas = (int)need_int(f, m, "replicas");
    m->pipe_ranks = (int)need_int(f, m, "pipe_ranks");
    m->micro = (int)need_int(f, m, "micro_batches");
    m->bp_warmup = (int)need_int(f, m, "bp_warmup_steps");
    m->batch_size = (int)need_int(f, m, "batch_size");
    m->model.n_layer = (int)need_int(f, m, "n_layer");
    m->model.n_head = (int)need_int(f, m, "n_head");
    m->model.n_embd = (int)need_int(f, m, "n_embd");
    m->model.block_size = (int)need_int(f, m, "block_size");
    m->model.vocab_size = (int)need_int(f, m, "vocab_size");
    need_str(f, m, "code_version", m->code_version, sizeof m->code_version);
    need_str(f, m, "schedule", m->schedule, sizeof m->schedule);
    need_str(f, m, "activations", m->activations, sizeof m->activations);
    need_str(f, m, "partition", m->partition, sizeof m->partition);
    need_str(f, m, "optimizer", m->optimizer, sizeof m->optimizer);
    m->config = h5_attr_get_str_alloc(f, ".", "config");
    if (!m->config) die("%s: no 'config' attribute: the manifest is incomplete", m->path);
    char err[256];
    if (gpt_config_check(&m->model, err, sizeof err) != 0)
        die("%s: the model it records is invalid: %s", m->path, err);
    if (m->world < 1 || m->world > 1 << 20 || m->step < 0)
        die("%s: world_size=%d step=%ld: the manifest is corrupt", m->path, m->world, m->step);
}

void ckpt_manifest_read(const char *dir, CkptManifest *m) {
    ckpt_h5_init();
    memset(m, 0, sizeof *m);
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    snprintf(m->path, sizeof m->path, "%s/manifest.h5", dir);
    if (!fs_is_dir(dir))
        die("%s: cannot open the checkpoint directory: %s", dir,
            errno ? strerror(errno) : "not a directory");
    if (!fs_is_file(m->path))
        die("%s: missing: not a complete checkpoint (one that crashed before it was "
            "published?); pass a published step directory, or resume=latest", m->path);
    hid_t f = h5_open_ro(m->path);
    if (f < 0)
        die("%s: not a readable HDF5 file (truncated or corrupt); use another checkpoint",
            m->path);
    long long version;
    if (h5_attr_get_i64(f, ".", "format_version", &version) != 0)
        die("%s: no format_version: not an ouroboros checkpoint manifest", m->path);
    m->format_version = version;
    if (version > CKPT_FORMAT_VERSION || version < 1)
        die("%s: checkpoint format version %lld; this build reads version %d and older: "
            "use the ouroboros that wrote it, or a newer one", m->path, version,
            CKPT_FORMAT_VERSION);
    read_manifest_fields(f, m);
    read_shard_table(f, m);
    h5_close(f);
}

void ckpt_manifest_free(CkptManifest *m) {
    free(m->config);
    free(m->shards);
    m->config = NULL;
    m->shards = NULL;
}

void ckpt_verify_shards(const CkptManifest *m, FILE *out) {
    for (int w = 0; w < m->n_shards; w++) {
        const CkptShard *s = &m->shards[w];
        char path[1300], hex[65];
        long long bytes = 0;
        snprintf(path, sizeof path, "%s/%s", m->dir, s->file);
        if (!fs_is_file(path))
            die("%s: missing shard of world rank %d: the checkpoint is incomplete; use "
                "another checkpoint", path, w);
        if (fs_sha256(path, hex, &bytes) != 0)
            die("%s: cannot read the shard: %s", path, strerror(errno));
        if (bytes != s->bytes)
            die("%s: %lld bytes, the manifest says %lld: the shard is truncated or was "
                "changed; use another checkpoint", path, bytes, s->bytes);
        if (strcmp(hex, s->sha256) != 0)
            die("%s: SHA-256 %.16s... does not match the manifest's %.16s...: the shard is "
                "corrupt or was changed; use another checkpoint", path, hex, s->sha256);
        if (out)
            fprintf(out, "  %s  world rank %d (replica %d, pipeline rank %d)  %lld bytes  "
                         "sha256 %.16s...  ok\n",
                    s->file, s->world_rank, s->replica, s->pipe_rank, s->bytes, hex);
    }
}

static void model_line(const GPTConfig *g, char *out, size_t n) {
    snprintf(out, n, "n_layer=%d n_head=%d n_embd=%d block_size=%d vocab_size=%d", g->n_layer,
             g->n_head, g->n_embd, g->block_size, g->vocab_size);
}

void ckpt_check_model(const CkptManifest *m, const GPTConfig *g) {
    const GPTConfig *c = &m->model;
    if (c->n_layer == g->n_layer && c->n_head == g->n_head && c->n_embd == g->n_embd &&
        c->block_size == g->block_size && c->vocab_size == g->vocab_size)
        return;
    char a[256], b[256];
    model_line(c, a, sizeof a);
    model_line(g, b, sizeof b);
    die("%s: the checkpoint holds another model size (%s) than this run (%s); run with the "
        "checkpoint's sizes", m->path, a, b);
}

/* ---------------------------------------------------------------- reader */

void ckpt_reader_open(CkptReader *rd, const CkptManifest *m) {
    rd->m = m;
    rd->manifest = h5_open_ro(m->path);
    if (rd->manifest < 0) die("%s: not a readable HDF5 file", m->path);
    rd->shard = xmalloc((size_t)m->n_shards * sizeof(hid_t));
    for (int i = 0; i < m->n_shards; i++) rd->shard[i] = -1;
}

void ckpt_reader_close(CkptReader *rd) {
    for (int i = 0; i < rd->m->n_shards; i++)
        if (rd->shard[i] >= 0) h5_close(rd->shard[i]);
    h5_close(rd->manifest);
    free(rd->shard);
}

hid_t ckpt_reader_shard(CkptReader *rd, int w) {
    if (rd->shard[w] >= 0) return rd->shard[w];
    char path[1300];
    fs_join(path, sizeof path, rd->m->dir, rd->m->shards[w].file);
    rd->shard[w] = h5_open_ro(path);
    if (rd->shard[w] < 0)
        die("%s: not a readable HDF5 file (truncated or corrupt); use another checkpoint",
            path);
    return rd->shard[w];
}

/* The shard (world rank) and object that group/<name> links to. */
static int link_of(CkptReader *rd, const char *group, const char *name, char *obj, size_t n) {
    char link[256], file[64];
    snprintf(link, sizeof link, "%s/%s", group, name);
    int rc = h5_link_target(rd->manifest, link, file, sizeof file, obj, n);
    if (rc <= 0)
        die("%s: no link %s: the checkpoint lacks this tensor (another model, or an "
            "incomplete manifest)", rd->m->path, link);
    for (int w = 0; w < rd->m->n_shards; w++)
        if (strcmp(rd->m->shards[w].file, file) == 0) return w;
    die("%s: %s links to %s, which is not one of its shards", rd->m->path, link, file);
}

int ckpt_has_group(CkptReader *rd, const ParamLayout *pl, const char *group) {
    for (int i = 0; i < pl->n_tensors; i++) {
        char link[256];
        snprintf(link, sizeof link, "%s/%s", group, pl->tensors[i].name);
        if (!h5_exists(rd->manifest, link)) return 0;
    }
    return 1;
}

static void shape_text(int nd, const hsize_t *d, char *out, size_t n) {
    if (nd == 1) snprintf(out, n, "[%llu]", (unsigned long long)d[0]);
    else if (nd == 2)
        snprintf(out, n, "[%llu, %llu]", (unsigned long long)d[0], (unsigned long long)d[1]);
    else snprintf(out, n, "(rank %d)", nd);
}

/* Dies unless group/<ti->name> is fp32 of the tensor's shape; returns
 * the world rank of its shard and its object path in obj. */
static int check_tensor(CkptReader *rd, const char *group, const TensorInfo *ti, char *obj,
                        size_t n) {
    int w = link_of(rd, group, ti->name, obj, n);
    hid_t f = ckpt_reader_shard(rd, w);
    char path[1300];
    snprintf(path, sizeof path, "%s/%s", rd->m->dir, rd->m->shards[w].file);
    hsize_t d[2];
    int is_float = 0;
    int nd = h5_shape(f, obj, d, &is_float);
    if (nd < 0) die("%s: no dataset %s (the manifest links it here)", path, obj);
    hsize_t want[2] = {(hsize_t)ti->shape[0], (hsize_t)ti->shape[1]};
    if (nd != ti->ndim || d[0] != want[0] || (nd == 2 && d[1] != want[1])) {
        char got[64], need[64];
        shape_text(nd, d, got, sizeof got);
        shape_text(ti->ndim, want, need, sizeof need);
        die("%s: tensor %s has shape %s, the model needs %s; the checkpoint does not fit "
            "this model", path, obj, got, need);
    }
    if (is_float != 1) die("%s: tensor %s is not fp32", path, obj);
    return w;
}

void ckpt_check_tensors(CkptReader *rd, const ParamLayout *pl, FILE *out) {
    const char *groups[4] = {"params", "updates"};
    int ng = 2;
    if (ckpt_has_group(rd, pl, "adam/m")) groups[ng++] = "adam/m";
    if (ckpt_has_group(rd, pl, "adam/v")) groups[ng++] = "adam/v";
    if (ng == 2 && ckpt_has_group(rd, pl, "sgd/momentum")) groups[ng++] = "sgd/momentum";
    for (int i = 0; i < pl->n_tensors; i++) {
        const TensorInfo *ti = &pl->tensors[i];
        char obj[256], shape[64];
        int w = -1;
        for (int g = 0; g < ng; g++) {
            if (g == 1) { /* updates: an int64 count, not a tensor */
                int ww = link_of(rd, "updates", ti->name, obj, sizeof obj);
                hsize_t d[2];
                int isf = 0;
                if (h5_shape(ckpt_reader_shard(rd, ww), obj, d, &isf) != 1 || d[0] != 1 ||
                    isf != 2)
                    die("%s/%s: %s is not an int64 [1] update count", rd->m->dir,
                        rd->m->shards[ww].file, obj);
                continue;
            }
            int wg = check_tensor(rd, groups[g], ti, obj, sizeof obj);
            if (g == 0) w = wg;
        }
        if (out) {
            hsize_t d[2] = {(hsize_t)ti->shape[0], (hsize_t)ti->shape[1]};
            shape_text(ti->ndim, d, shape, sizeof shape);
            fprintf(out, "  %-28s %-12s fp32  %s  updates %ld\n", ti->name, shape,
                    rd->m->shards[w].file, ckpt_read_updates(rd, ti));
        }
    }
}

void ckpt_read_tensor(CkptReader *rd, const char *group, const TensorInfo *ti, float *dst) {
    char obj[256];
    int w = check_tensor(rd, group, ti, obj, sizeof obj);
    if (h5_read_f32(ckpt_reader_shard(rd, w), obj, dst) != 0)
        die("%s/%s: reading %s failed its Fletcher32 checksum (or the file is damaged); "
            "use another checkpoint", rd->m->dir, rd->m->shards[w].file, obj);
}

long ckpt_read_updates(CkptReader *rd, const TensorInfo *ti) {
    char obj[256];
    int w = link_of(rd, "updates", ti->name, obj, sizeof obj);
    int64_t v = 0;
    hsize_t d[2];
    int isf = 0;
    if (h5_shape(ckpt_reader_shard(rd, w), obj, d, &isf) != 1 || d[0] != 1 || isf != 2 ||
        h5_read_i64(ckpt_reader_shard(rd, w), obj, &v) != 0 || v < 0)
        die("%s/%s: %s is not a readable int64 [1] update count", rd->m->dir,
            rd->m->shards[w].file, obj);
    return (long)v;
}

void ckpt_read_params(CkptReader *rd, const ParamLayout *pl, float *params) {
    for (int i = 0; i < pl->n_tensors; i++)
        ckpt_read_tensor(rd, "params", &pl->tensors[i], params + pl->tensors[i].offset);
}

/* ---------------------------------------------------------------- whole model */

void ckpt_load_model(const char *path, GPTConfig *g, float **params, char *dir, size_t n,
                     long *step) {
    char d[1100];
    ckpt_resolve(path, d, sizeof d);
    CkptManifest m;
    ckpt_manifest_read(d, &m);
    ckpt_verify_shards(&m, NULL);
    *g = m.model;
    ParamLayout pl;
    param_layout_init(&pl, g);
    CkptReader rd;
    ckpt_reader_open(&rd, &m);
    ckpt_check_tensors(&rd, &pl, NULL);
    *params = xmalloc(pl.n_params * sizeof(float));
    ckpt_read_params(&rd, &pl, *params);
    ckpt_reader_close(&rd);
    if (dir) snprintf(dir, n, "%s", d);
    if (step) *step = m.step;
    param_layout_free(&pl);
    ckpt_manifest_free(&m);
}

#else /* no HDF5 */

void ckpt_load_model(const char *path, GPTConfig *g, float **params, char *dir, size_t n,
                     long *step) {
    (void)g; (void)params; (void)dir; (void)n; (void)step;
    die("%s: reading checkpoints needs HDF5, and this build has none; install "
        "libhdf5-openmpi-dev and rebuild (launch/build)", path);
}

#endif
