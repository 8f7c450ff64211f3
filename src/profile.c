/* profile.c - see profile.h.
 *
 * The partition is chosen from a FLOP count (partition.h), but time is
 * what a pipeline waits on: the head's softmax over the vocabulary and the
 * embedding are limited by memory traffic, not FLOPs, and a GPU runs small
 * products far below its peak. This command measures each module on the
 * backend that would train it, so a partition can be checked (or chosen
 * by hand with partition=) against the real per-rank times.
 *
 * Each module is timed on its own, with its own activations, on random
 * inputs of the right shape: tokens and targets for the embedding and the
 * head, a unit-variance residual stream for a module that receives one and
 * a small random gradient for a module that sends one. Timings are
 * wall-clock between two be->synchronize calls, so a GPU's queued work is
 * inside the interval and nothing else is.
 */
#include "profile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "common.h"
#include "data.h"
#include "model.h"
#include "ops.h"
#include "partition.h"
#include "pipeline.h"
#include "rng.h"
#include "schedule.h"
#include "settings.h"

#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
void openblas_set_num_threads(int);
#endif

/* Untimed runs first: a GPU's first calls pay for cuBLAS heuristics,
 * lazy module loading and the memory pool; the CPU's first touch of fresh
 * activation pages faults them in. */
#define PROFILE_WARMUP 2
/* Timed runs; the median ignores one or two disturbed ones. */
#define PROFILE_REPS 5

typedef struct {
    double fwd_ms, bwd_ms, total_ms; /* medians over the timed runs */
} ModuleTiming;

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of x[0, n) (sorts x). */
static double median(double *x, int n) {
    qsort(x, (size_t)n, sizeof *x, compare_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

static void fill_normal(float *x, size_t n, Rng *r, double scale) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * rng_normal(r));
}

/* Backend memory holding n random normal floats of standard deviation
 * `scale`. */
static float *random_buffer(Backend *be, size_t n, Rng *r, double scale) {
    float *host = xmalloc(n * sizeof(float));
    fill_normal(host, n, r, scale);
    float *dev = be->alloc(be, n);
    be->upload(be, dev, host, n);
    free(host);
    return dev;
}

/* Forward and backward of module m on a B x T micro-batch, PROFILE_WARMUP
 * untimed runs then PROFILE_REPS timed ones. Gradients accumulate into
 * grads across the runs, as over the micro-batches of a step. */
static ModuleTiming time_module(Backend *be, const ParamLayout *pl, const float *params,
                                float *grads, const ModuleSpec *m, int B, int T,
                                uint64_t seed) {
    const GPTConfig *g = &pl->cfg;
    size_t N = (size_t)B * T, NC = N * (size_t)g->n_embd;
    Rng r;
    rng_seed(&r, seed);
    int32_t *tokens = xmalloc(N * sizeof(int32_t));
    int32_t *targets = xmalloc(N * sizeof(int32_t));
    for (size_t i = 0; i < N; i++) {
        tokens[i] = (int32_t)(rng_next(&r) % (uint64_t)g->vocab_size);
        targets[i] = (int32_t)(rng_next(&r) % (uint64_t)g->vocab_size);
    }
    /* the residual stream has roughly unit scale; the gradient arriving from
     * the next module is that of a mean loss over N tokens, about 1/N */
    float *x_in = m->has_embed ? NULL : random_buffer(be, NC, &r, 1.0);
    float *dx_in = m->has_embed ? NULL : be->alloc(be, NC);
    float *dout = m->has_head ? NULL : random_buffer(be, NC, &r, 1.0 / (double)N);
    BackendActs *a = be->acts_create(be, pl, m, B, T);

    double fwd[PROFILE_REPS], bwd[PROFILE_REPS], total[PROFILE_REPS];
    for (int i = 0; i < PROFILE_WARMUP + PROFILE_REPS; i++) {
        be->synchronize(be);
        double t0 = now_seconds();
        be->forward(be, pl, params, m, a, m->has_embed ? tokens : NULL, x_in,
                    m->has_head ? targets : NULL, B, T);
        be->synchronize(be);
        double t1 = now_seconds();
        be->backward(be, pl, params, grads, m, a, dout, 1.0f / (float)N, dx_in);
        be->synchronize(be);
        double t2 = now_seconds();
        int k = i - PROFILE_WARMUP;
        if (k < 0) continue;
        fwd[k] = 1e3 * (t1 - t0);
        bwd[k] = 1e3 * (t2 - t1);
        total[k] = 1e3 * (t2 - t0);
    }
    ModuleTiming mt = {median(fwd, PROFILE_REPS), median(bwd, PROFILE_REPS),
                       median(total, PROFILE_REPS)};

    be->acts_free(be, a);
    if (x_in) be->release(be, x_in);
    if (dx_in) be->release(be, dx_in);
    if (dout) be->release(be, dout);
    free(tokens);
    free(targets);
    return mt;
}

/* Model FLOPs per token of one module's forward + backward: the terms of
 * partition.h's cost model that the module holds, so the rows add up to
 * partition_rank_cost. */
static double module_flops_per_token(const GPTConfig *g, const ModuleSpec *m) {
    double f = (m->block_hi - m->block_lo) * partition_block_cost(g, g->block_size);
    if (m->has_embed) f += partition_embed_cost(g);
    if (m->has_head) f += partition_head_cost(g);
    return f;
}

static const char *module_parts(const ModuleSpec *m) {
    if (m->has_embed && m->has_head) return "embedding+head";
    if (m->has_embed) return "embedding";
    if (m->has_head) return "head";
    return "-";
}

/* The module specs of the plan, in module order. */
static int plan_modules(const Plan *p, ModuleSpec *specs) {
    int K = p->sched.K;
    for (int m = 0; m < K; m++)
        specs[m] = K == 1 ? (ModuleSpec){1, 0, p->pl->cfg.n_layer, 1}
                          : partition_module(&p->part, m);
    return K;
}

static void print_rank_sums(const Plan *p, const ModuleSpec *specs, const ModuleTiming *t) {
    const GPTConfig *g = &p->pl->cfg;
    int R = p->pipe_ranks;
    double *ms = xcalloc((size_t)R, sizeof(double));
    double *est = xcalloc((size_t)R, sizeof(double));
    double ms_sum = 0.0, ms_max = 0.0, est_sum = 0.0, est_max = 0.0;
    double tokens = (double)p->rows_micro * g->block_size;
    for (int r = 0; r < R; r++) {
        int mods[2];
        int n = schedule_rank_modules(&p->sched, r, mods);
        char names[32] = "";
        for (int i = 0; i < n; i++) {
            ms[r] += t[mods[i]].total_ms;
            est[r] += module_flops_per_token(g, &specs[mods[i]]);
            size_t len = strlen(names);
            snprintf(names + len, sizeof names - len, "%s%d", i ? "," : "", mods[i] + 1);
        }
        ms_sum += ms[r];
        est_sum += est[r];
        if (ms[r] > ms_max) ms_max = ms[r];
        if (est[r] > est_max) est_max = est[r];
        printf("rank %d: module%s %s: %.3f ms per micro-batch, %.1f GFLOP/s "
               "(est. %.2f MFLOP/token)\n", r, n > 1 ? "s" : "", names, ms[r],
               ms[r] > 0 ? est[r] * tokens / (ms[r] * 1e-3) / 1e9 : 0.0, est[r] / 1e6);
    }
    double ms_mean = ms_sum / R, est_mean = est_sum / R;
    printf("imbalance: slowest rank / mean = %.3f measured, %.3f estimated from FLOPs; "
           "ideal speedup over one rank %.2fx measured, %.2fx estimated\n",
           ms_mean > 0 ? ms_max / ms_mean : 0.0, est_mean > 0 ? est_max / est_mean : 0.0,
           ms_max > 0 ? ms_sum / ms_max : 0.0, est_max > 0 ? est_sum / est_max : 0.0);
    free(ms);
    free(est);
}

/* Times every module of the plan on backend be and prints the table. */
static void profile_plan(Backend *be, const Plan *p) {
    const ParamLayout *pl = p->pl;
    const GPTConfig *g = &pl->cfg;
    int B = p->rows_micro, T = g->block_size;
    /* Whole-model buffers addressed by the global offsets, as a rank holds
     * them: every module finds its tensors (and the head its tied wte). */
    float *params = be->alloc(be, pl->n_params);
    float *grads = be->alloc(be, pl->n_params);
    if (be->host_memory) {
        param_init(pl, params, (uint64_t)p->cfg->seed, 0, pl->n_tensors);
    } else {
        float *host = xmalloc(pl->n_params * sizeof(float));
        param_init(pl, host, (uint64_t)p->cfg->seed, 0, pl->n_tensors);
        be->upload(be, params, host, pl->n_params);
        free(host);
    }
    be->params_loaded(be, pl, params, 0, pl->n_tensors);

    ModuleSpec specs[PARTITION_MAX_MODULES];
    ModuleTiming times[PARTITION_MAX_MODULES];
    int K = plan_modules(p, specs);
    printf("profile: backend %s, precision=%s, micro-batch %d x %d tokens, median of %d "
           "runs after %d warm-up\n", be->name, p->cfg->precision, B, T, PROFILE_REPS,
           PROFILE_WARMUP);
    printf("%6s %4s %6s %-14s %12s %10s %10s %10s %10s %9s\n", "module", "rank", "blocks",
           "parts", "params", "fwd_ms", "bwd_ms", "total_ms", "MFLOP/tok", "GFLOP/s");
    fflush(stdout);
    for (int m = 0; m < K; m++) {
        const ModuleSpec *ms = &specs[m];
        times[m] = time_module(be, pl, params, grads, ms, B, T,
                               hash_u64((uint64_t)p->cfg->seed, 0x70726f66ull, (uint64_t)m, 0));
        size_t lo, hi;
        module_param_range(pl, ms, &lo, &hi);
        double flops = module_flops_per_token(g, ms);
        double secs = times[m].total_ms * 1e-3;
        printf("%6d %4d %6d %-14s %12zu %10.4f %10.4f %10.4f %10.3f %9.1f\n", m + 1,
               p->sched.K == 1 ? 0 : schedule_module_rank(&p->sched, m),
               ms->block_hi - ms->block_lo, module_parts(ms), hi - lo, times[m].fwd_ms,
               times[m].bwd_ms, times[m].total_ms, flops / 1e6,
               secs > 0 ? flops * (double)B * T / secs / 1e9 : 0.0);
        fflush(stdout);
    }
    print_rank_sums(p, specs, times);
    size_t peak = be->peak_bytes(be); /* 0 where the backend does not count (the CPU) */
    if (peak > 0)
        printf("peak %s memory: %.1f MiB (all parameters and gradients, one module's "
               "activations at a time)\n", be->name, (double)peak / (1 << 20));
    be->release(be, params);
    be->release(be, grads);
}

int cmd_profile(int argc, char **argv) {
    Config cfg;
    if (cli_parse(argc, argv, &cfg, "profile",
                  "Times every module of the configured schedule and partition on the\n"
                  "backend of device= and precision=: the forward and the backward of one\n"
                  "micro-batch (batch_size / replicas / micro_batches sequences of\n"
                  "block_size tokens) on random inputs, after a warm-up, median of 5 runs.\n"
                  "ranks= is the rank count the plan is made for (default 2, or 1 for\n"
                  "schedule=single); one process plays them, without MPI. Prints one row\n"
                  "per module\n"
                  "  module rank blocks parts params fwd_ms bwd_ms total_ms MFLOP/tok GFLOP/s\n"
                  "then each rank's sum and the imbalance, measured and estimated.") != 0)
        return 0;
    Config *c = &cfg;
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    openblas_set_num_threads(c->threads);
#endif
    backend_thread_init();
    int single = strcmp(c->schedule, "single") == 0;
    int world = c->ranks > 0 ? c->ranks : (single ? 1 : 2);
    int is_bin = data_is_token_shard(c->data_format, c->data);
    if (c->vocab_size == 0) c->vocab_size = is_bin ? 50257 : 256;
    GPTConfig g = {c->n_layer, c->n_head, c->n_embd, c->block_size, c->vocab_size};
    char err[256];
    if (gpt_config_check(&g, err, sizeof err) != 0) die("config: %s", err);
    ParamLayout pl;
    param_layout_init(&pl, &g);
    /* The plan reads no data: the batch split and the partition depend on
     * the config and the rank count only. */
    Dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.is_bytes = !is_bin;
    Plan plan;
    plan_init(&plan, c, &pl, &ds, world);
    printf("model: %d layers, %d heads, %d wide, context %d, vocab %d: %zu parameters, "
           "%.2f MFLOP/token\n", g.n_layer, g.n_head, g.n_embd, g.block_size, g.vocab_size,
           pl.n_params, model_train_flops_per_token(&g, g.block_size) / 1e6);
    plan_print(&plan);
    Backend *be = backend_create(c, 0, 0);
    profile_plan(be, &plan);
    be->destroy(be);
    param_layout_free(&pl);
    return 0;
}
