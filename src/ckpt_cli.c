/* ckpt_cli.c - `ouroboros inspect DIR` and `ouroboros eval checkpoint=DIR`:
 * looking at a checkpoint without training. Both verify it first (every
 * shard's SHA-256, every tensor's link and shape) and stop with one line
 * naming the bad file. */
#define _POSIX_C_SOURCE 200809L
#include "checkpoint.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_fs.h"
#include "ckpt_internal.h"
#include "cli.h"
#include "common.h"
#include "data.h"
#include "ops.h"

#ifdef HAVE_HDF5

/* The checkpoint at path, verified; its model's layout in *pl. */
static void open_verified(const char *path, CkptManifest *m, ParamLayout *pl, FILE *out) {
    char dir[1100];
    ckpt_resolve(path, dir, sizeof dir);
    ckpt_manifest_read(dir, m);
    param_layout_init(pl, &m->model);
    if (out) fprintf(out, "shards:\n");
    ckpt_verify_shards(m, out);
}

/* ---------------------------------------------------------------- inspect */

static void print_manifest(const CkptManifest *m, const ParamLayout *pl) {
    printf("checkpoint: %s\n", m->dir);
    printf("  format %lld, written by ouroboros %s\n", m->format_version, m->code_version);
    printf("  step %ld of %ld: the next step to run is %ld\n", m->step, m->steps, m->step);
    printf("  model: n_layer=%d n_head=%d n_embd=%d block_size=%d vocab_size=%d, %zu "
           "parameters\n", m->model.n_layer, m->model.n_head, m->model.n_embd,
           m->model.block_size, m->model.vocab_size, pl->n_params);
    printf("  layout: %s on %d rank%s, K=%d, %d replica%s of %d rank%s, partition %s, "
           "activations %s, %d micro-batch%s, bp warm-up %d, pipeline fill from step %ld\n",
           m->schedule, m->world, m->world > 1 ? "s" : "", m->K, m->replicas,
           m->replicas > 1 ? "s" : "", m->pipe_ranks, m->pipe_ranks > 1 ? "s" : "",
           m->partition, m->activations, m->micro, m->micro > 1 ? "es" : "", m->bp_warmup,
           m->pipeline_start);
    printf("  optimizer: %s; random state: none (batch t is a pure function of (seed, t)); "
           "data position: batch %ld\n", m->optimizer, m->step);
    printf("config:\n");
    for (const char *p = m->config; *p;) {
        size_t n = strcspn(p, "\n");
        printf("  %.*s\n", (int)n, p);
        p += n + (p[n] == '\n');
    }
}

static long count_keys(hid_t f, const char *mods) {
    long n = 0;
    for (const char *p = mods; *p;) {
        int m = atoi(p) - 1;
        char obj[64];
        snprintf(obj, sizeof obj, "inflight/slot_keys/m%d", m);
        hsize_t d[2];
        int isf;
        if (h5_shape(f, obj, d, &isf) == 1 && isf == 2) {
            int64_t *k = xmalloc((size_t)d[0] * sizeof(int64_t));
            if (h5_read_i64(f, obj, k) == 0)
                for (hsize_t i = 0; i < d[0]; i++) n += k[i] >= 0;
            free(k);
        }
        p += strcspn(p, ",");
        if (*p == ',') p++;
    }
    return n;
}

static void print_inflight(CkptReader *rd) {
    printf("in flight (saved activations, messages, batches; weights version):\n");
    for (int w = 0; w < rd->m->n_shards; w++) {
        hid_t f = ckpt_reader_shard(rd, w);
        char mods[32] = "?";
        long long msgs = -1, batches = -1, version = -1;
        h5_attr_get_str(f, ".", "modules", mods, sizeof mods);
        h5_attr_get_i64(f, ".", "inflight_messages", &msgs);
        h5_attr_get_i64(f, ".", "inflight_batches", &batches);
        h5_attr_get_i64(f, ".", "version", &version);
        printf("  %s  modules %s: %ld, %lld, %lld; %lld\n", rd->m->shards[w].file, mods,
               count_keys(f, mods), msgs, batches, version);
    }
}

/* Reads every tensor of every group, so that a Fletcher32 mismatch shows. */
static void read_all(CkptReader *rd, const ParamLayout *pl, float *params) {
    static const char *groups[] = {"adam/m", "adam/v", "sgd/momentum"};
    ckpt_read_params(rd, pl, params);
    float *tmp = xmalloc(pl->n_params * sizeof(float));
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
        if (ckpt_has_group(rd, pl, groups[g]))
            for (int i = 0; i < pl->n_tensors; i++)
                ckpt_read_tensor(rd, groups[g], &pl->tensors[i], tmp + pl->tensors[i].offset);
    free(tmp);
}

int cmd_inspect(int argc, char **argv) {
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        FILE *f = argc < 1 ? stderr : stdout;
        fprintf(f, "usage: ouroboros inspect DIR\n\n"
                   "Prints a checkpoint's manifest, shards, tensors and shapes, verifies every\n"
                   "shard's SHA-256 and every dataset's Fletcher32 checksum, and ends with\n"
                   "  checkpoint OK: DIR params_sha256=H\n"
                   "DIR is a step directory (<out>/ckpt/step-NNNNNNNN), <out>/ckpt or <out>\n"
                   "(their `latest`). Exits non-zero on the first problem.\n");
        return argc < 1 ? 2 : 0;
    }
    if (argc > 1) die("inspect: one directory, not %d arguments", argc);
    CkptManifest m;
    ParamLayout pl;
    char dir[1100];
    ckpt_resolve(argv[0], dir, sizeof dir);
    ckpt_manifest_read(dir, &m);
    param_layout_init(&pl, &m.model);
    print_manifest(&m, &pl);
    printf("shards:\n");
    ckpt_verify_shards(&m, stdout);
    CkptReader rd;
    ckpt_reader_open(&rd, &m);
    printf("tensors (name, shape, shard, updates applied):\n");
    ckpt_check_tensors(&rd, &pl, stdout);
    print_inflight(&rd);
    float *params = xmalloc(pl.n_params * sizeof(float));
    read_all(&rd, &pl, params);
    char sha[65];
    params_sha256(&pl, params, sha);
    printf("checkpoint OK: %s params_sha256=%s\n", m.dir, sha);
    free(params);
    ckpt_reader_close(&rd);
    param_layout_free(&pl);
    ckpt_manifest_free(&m);
    return 0;
}

/* ---------------------------------------------------------------- eval */

/* Was key=... given on the command line? */
static int given(int argc, char **argv, const char *key) {
    size_t n = strlen(key);
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], key, n) == 0 && argv[i][n] == '=') return 1;
    return 0;
}

/* The data and batch keys default to the checkpoint's run, so that eval
 * measures what that run's evaluation measured. */
static void defaults_from_run(Config *c, const CkptManifest *m, int argc, char **argv) {
    static const char *keys[] = {"data", "valid_data", "test_data", "data_format",
                                 "batch_size", "eval_batches"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        if (given(argc, argv, keys[k])) continue;
        char want[64];
        snprintf(want, sizeof want, "\n%s=", keys[k]);
        char *text = xmalloc(strlen(m->config) + 2);
        text[0] = '\n';
        strcpy(text + 1, m->config);
        const char *at = strstr(text, want);
        if (at) {
            char line[700];
            snprintf(line, sizeof line, "%.*s", (int)strcspn(at + 1, "\n"), at + 1);
            config_set(c, line, m->path);
        }
        free(text);
    }
}

static double eval_loss(const ParamLayout *pl, const float *params, const TokenSplit *split,
                        int B, int batches) {
    int T = pl->cfg.block_size;
    ModuleSpec whole = {1, 0, pl->cfg.n_layer, 1};
    ModuleActs *a = module_acts_create(pl, &whole, B, T);
    int32_t *in = xmalloc((size_t)B * T * sizeof(int32_t));
    int32_t *tg = xmalloc((size_t)B * T * sizeof(int32_t));
    double sum = 0.0;
    for (int i = 0; i < batches; i++) {
        dataset_eval_batch(split, (uint64_t)i, B, T, in, tg);
        module_forward(pl, params, &whole, a, in, NULL, tg, B, T);
        sum += module_loss(a);
    }
    free(in);
    free(tg);
    module_acts_free(a);
    return sum / batches;
}

int cmd_eval(int argc, char **argv) {
    Config c;
    if (cli_parse(argc, argv, &c, "eval",
                  "Measures the mean loss of a checkpoint's model on the valid or test split\n"
                  "(split=), over eval_batches sequential batches of batch_size sequences,\n"
                  "on one process. checkpoint= is a step, ckpt or run directory; data keys\n"
                  "and batch sizes default to the checkpoint's run. Ends with the line\n"
                  "  eval checkpoint=DIR step=S split=valid batches=N loss=X") != 0)
        return 0;
    if (!c.checkpoint[0])
        die("eval: checkpoint= is missing: a step directory (<out>/ckpt/step-NNNNNNNN), "
            "<out>/ckpt or <out>");
    backend_thread_init();
    CkptManifest m;
    ParamLayout pl;
    open_verified(c.checkpoint, &m, &pl, NULL);
    defaults_from_run(&c, &m, argc, argv);
    CkptReader rd;
    ckpt_reader_open(&rd, &m);
    ckpt_check_tensors(&rd, &pl, NULL);
    float *params = xmalloc(pl.n_params * sizeof(float));
    ckpt_read_params(&rd, &pl, params);
    ckpt_reader_close(&rd);
    Dataset ds;
    DatasetSpec spec = {c.data, c.valid_data, c.test_data, c.data_format,
                        m.model.vocab_size, m.model.block_size + 1};
    dataset_load(&ds, &spec);
    const TokenSplit *split = strcmp(c.split, "test") == 0 ? &ds.test : &ds.valid;
    double loss = eval_loss(&pl, params, split, c.batch_size, c.eval_batches);
    char bpb[48] = "";
    if (ds.is_bytes) snprintf(bpb, sizeof bpb, " bpb=%.6f", loss / log(2.0));
    printf("eval checkpoint=%s step=%ld split=%s batches=%d loss=%.6f%s\n", m.dir, m.step,
           c.split, c.eval_batches, loss, bpb);
    dataset_free(&ds);
    free(params);
    param_layout_free(&pl);
    ckpt_manifest_free(&m);
    return 0;
}

#else /* no HDF5 */

static int no_hdf5(const char *what) {
    die("%s: checkpoints need HDF5, and this build has none; install libhdf5-openmpi-dev "
        "and rebuild (launch/build)", what);
}

int cmd_inspect(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return no_hdf5("inspect");
}

int cmd_eval(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return no_hdf5("eval");
}

#endif
