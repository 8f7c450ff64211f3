/* test_gpu_model.c - the whole model on the CUDA backend against the CPU
 * backend, through the Backend interface the executor uses (backend.h).
 *
 * Both backends get the same parameters (param_init, then every 1-D
 * tensor nudged off its initial 0 or 1 so that biases and LayerNorm
 * parameters matter to the forward) and the same random batch. Compared:
 *  - the whole model as one module {1, 0, L, 1}: the forward's loss and
 *    the gradient of every parameter tensor;
 *  - the model split into two modules, embedding + blocks [0, cut) and
 *    blocks [cut, L) + head, the output of the first fed to the second
 *    and the gradient of that activation passed back, as two pipeline
 *    ranks do: loss and gradients against the whole model's, and the
 *    activation and its gradient at the cut against the CPU's split;
 *  - each GPU run twice: the same bits (no reduction depends on timing).
 * In precision=fp32 (the GPU mode for checking against the CPU) and in
 * precision=bf16 (the training default, with looser bounds).
 *
 *   test_gpu_model               fp32, then bf16
 *   test_gpu_model fp32|bf16     that precision only
 * (tests/gpu/run.sh runs each precision in a process of its own, so a GPU
 * error in one, which ends the process, does not hide the other.)
 *
 * One line per check. Before each run of a backend a line names it, so a
 * run that dies (CUDA errors end the process through die()) or hangs is
 * the last thing the log names. A reference array that is all zero fails
 * its check: it could not tell a right result from a missing one. Exit 1
 * on any failure, 2 on a bad argument, 77 (automake's SKIP) when no GPU is
 * visible.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "device.h"
#include "model.h"
#include "ops.h"
#include "rng.h"
#include "settings.h"

#ifndef HAVE_CUDA

int main(void) {
    printf("skipped: no GPU (this build has no CUDA backend)\n");
    return 77;
}

#else

/* ---- tolerances ----
 * fp32: max |gpu - cpu| / max |cpu| of each tensor. The GPU runs the same
 * fp32 math in another order (tiled attention, cuBLAS, tree reductions)
 * with exact exponentials where the CPU approximates (2e-7): each op
 * differs by ~1e-6 of its output and three blocks of forward and backward
 * compound that to ~1e-5 for the smallest, most cancelling gradients (the
 * LayerNorm biases). A wrong term, index or scale is O(1).
 * bf16: every matrix product reads bf16 inputs (2^-8 rounding), ~10 of
 * them deep: the loss moves by well under 1%, the gradients by a few % in
 * the root-mean-square sense (max-based bounds would be dominated by a
 * single unlucky element, so bf16 tensors are judged by relative L2 error,
 * ||gpu - cpu|| / ||cpu||). */
#define FP32_LOSS_TOL 1e-5 /* relative */
#define FP32_GRAD_TOL 1e-3 /* max-based, per tensor */
#define FP32_CUT_TOL 1e-4  /* activation and gradient at the cut, max-based */
#define BF16_LOSS_TOL 2e-2 /* relative */
#define BF16_GRAD_TOL 1e-1 /* relative L2, per tensor */
#define BF16_CUT_TOL 5e-2  /* relative L2 */
/* The CPU split against the CPU whole model: the same operations on the
 * same numbers; only a bound so that a harmless reordering would pass. */
#define CPU_SPLIT_TOL 1e-6

#define MODEL_LAYERS 3
#define MODEL_HEADS 2
#define MODEL_EMBD 64   /* head size 32 */
#define MODEL_T 80      /* not a multiple of the 64-token tiles */
#define MODEL_VOCAB 301 /* odd, not a multiple of any tile */
#define BATCH 3
#define CUT 1 /* the split: blocks [0, 1) with the embedding, [1, 3) with the head */

typedef struct {
    int checks, failed;
} Tally;

/* What a run produced, downloaded to the host. */
typedef struct {
    float loss;
    float *grads;     /* n_params */
    float *cut_act;   /* [B*T*C] output of the first module (split runs) */
    float *cut_grad;  /* [B*T*C] its gradient */
} Result;

static void result_free(Result *r) {
    free(r->grads);
    free(r->cut_act);
    free(r->cut_grad);
    memset(r, 0, sizeof *r);
}

/* ---- comparisons ---- */

/* Both errors are infinite where got holds a NaN or an infinity, and
 * where the reference is all zero (nothing to compare against). */
static double max_rel_err(const float *ref, const float *got, size_t n) {
    double max_d = 0.0, max_r = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (isnan(d)) d = INFINITY;
        if (d > max_d) max_d = d;
        if (fabs(ref[i]) > max_r) max_r = fabs(ref[i]);
    }
    return max_r > 0.0 ? max_d / max_r : INFINITY;
}

static double rel_l2_err(const float *ref, const float *got, size_t n) {
    double dd = 0.0, rr = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        dd += d * d;
        rr += (double)ref[i] * ref[i];
    }
    if (isnan(dd)) return INFINITY;
    return rr > 0.0 ? sqrt(dd / rr) : INFINITY;
}

static void report(Tally *t, const char *run, const char *what, const char *metric, double err,
                   double tol) {
    int ok = err <= tol; /* NaN fails */
    t->checks++;
    if (!ok) t->failed++;
    printf("%s  %-22s %-36s %-8s %.3e  tol %.0e\n", ok ? "PASS" : "FAIL", run, what, metric, err,
           tol);
    fflush(stdout);
}

/* The errors of one array: max-based for fp32, relative L2 for bf16. */
static void compare_array(Tally *t, const char *run, const char *what, const float *ref,
                          const float *got, size_t n, int l2, double tol) {
    report(t, run, what, l2 ? "rel_l2" : "max_rel",
           l2 ? rel_l2_err(ref, got, n) : max_rel_err(ref, got, n), tol);
}

static void compare_loss(Tally *t, const char *run, float ref, float got, double tol) {
    char what[96];
    snprintf(what, sizeof what, "loss (cpu %.6f, this %.6f)", ref, got);
    double err = fabs((double)got - ref) / fabs((double)ref);
    report(t, run, what, "rel", isfinite(err) ? err : INFINITY, tol);
}

static void compare_grads(Tally *t, const char *run, const ParamLayout *pl, const float *ref,
                          const float *got, int l2, double tol) {
    for (int i = 0; i < pl->n_tensors; i++) {
        const TensorInfo *ti = &pl->tensors[i];
        char what[96];
        snprintf(what, sizeof what, "grad %s", ti->name);
        compare_array(t, run, what, ref + ti->offset, got + ti->offset, ti->numel, l2, tol);
    }
}

/* Both results of the same backend on the same inputs: equal bits. */
static void compare_bits(Tally *t, const char *run, const ParamLayout *pl, const Result *a,
                         const Result *b) {
    int same = memcmp(&a->loss, &b->loss, sizeof a->loss) == 0 &&
               memcmp(a->grads, b->grads, pl->n_params * sizeof(float)) == 0;
    t->checks++;
    if (!same) t->failed++;
    printf("%s  %-22s %-36s\n", same ? "PASS" : "FAIL", run,
           "a second run repeats loss and grads bit for bit");
    fflush(stdout);
}

/* ---- runs ---- */

/* Names the run about to start, flushed, so that a run that dies or hangs
 * is the last thing the log names. */
static void announce(const char *backend, const char *what) {
    printf("---- %s: %s\n", backend, what);
    fflush(stdout);
}

/* Backend copy of the host parameters, with the backend told they were
 * written (a GPU derives its bf16 copies). */
static float *backend_params(Backend *be, const ParamLayout *pl, const float *host) {
    float *p = be->alloc(be, pl->n_params);
    be->upload(be, p, host, pl->n_params);
    be->params_loaded(be, pl, p, 0, pl->n_tensors);
    return p;
}

static float *download_new(Backend *be, const float *src, size_t n) {
    float *h = xmalloc(n * sizeof(float));
    be->download(be, h, src, n);
    return h;
}

/* Forward and backward of the whole model as one module. */
static Result run_whole(Backend *be, const char *label, const ParamLayout *pl,
                        const float *host_params, const int32_t *tokens, const int32_t *targets,
                        int B, int T) {
    Result r;
    memset(&r, 0, sizeof r);
    announce(label, "whole model, forward and backward");
    ModuleSpec m = {1, 0, pl->cfg.n_layer, 1};
    float *p = backend_params(be, pl, host_params);
    float *g = be->alloc(be, pl->n_params);
    BackendActs *a = be->acts_create(be, pl, &m, B, T);
    be->forward(be, pl, p, &m, a, tokens, NULL, targets, B, T);
    be->synchronize(be);
    r.loss = be->loss(be, a);
    be->backward(be, pl, p, g, &m, a, NULL, 1.0f / (float)(B * T), NULL);
    be->synchronize(be);
    r.grads = download_new(be, g, pl->n_params);
    be->acts_free(be, a);
    be->release(be, g);
    be->release(be, p);
    return r;
}

/* The same as two modules, embedding + blocks [0, cut) and blocks
 * [cut, L) + head, with the activation and its gradient passed between
 * them in backend memory, as a pipeline passes them between ranks. */
static Result run_split(Backend *be, const char *label, const ParamLayout *pl,
                        const float *host_params, const int32_t *tokens, const int32_t *targets,
                        int B, int T, int cut) {
    Result r;
    memset(&r, 0, sizeof r);
    announce(label, "two modules, forward and backward");
    size_t NC = (size_t)B * T * pl->cfg.n_embd;
    ModuleSpec first = {1, 0, cut, 0}, second = {0, cut, pl->cfg.n_layer, 1};
    float *p = backend_params(be, pl, host_params);
    float *g = be->alloc(be, pl->n_params);
    float *d_cut = be->alloc(be, NC);
    BackendActs *a1 = be->acts_create(be, pl, &first, B, T);
    BackendActs *a2 = be->acts_create(be, pl, &second, B, T);
    const float *x_cut = be->forward(be, pl, p, &first, a1, tokens, NULL, NULL, B, T);
    be->forward(be, pl, p, &second, a2, NULL, x_cut, targets, B, T);
    be->synchronize(be);
    r.loss = be->loss(be, a2);
    r.cut_act = download_new(be, x_cut, NC);
    /* the second module's dx_in (overwritten) is the first module's dout;
     * loss_scale is for head modules only, the first module has none */
    be->backward(be, pl, p, g, &second, a2, NULL, 1.0f / (float)(B * T), d_cut);
    be->backward(be, pl, p, g, &first, a1, d_cut, 0.0f, NULL);
    be->synchronize(be);
    r.cut_grad = download_new(be, d_cut, NC);
    r.grads = download_new(be, g, pl->n_params);
    be->acts_free(be, a1);
    be->acts_free(be, a2);
    be->release(be, d_cut);
    be->release(be, g);
    be->release(be, p);
    return r;
}

/* ---- set-up ---- */

static void set_key(Config *c, const char *key, long value) {
    char kv[96];
    snprintf(kv, sizeof kv, "%s=%ld", key, value);
    config_set(c, kv, "test_gpu_model");
}

static void model_config(Config *c, const char *precision) {
    config_defaults(c);
    set_key(c, "n_layer", MODEL_LAYERS);
    set_key(c, "n_head", MODEL_HEADS);
    set_key(c, "n_embd", MODEL_EMBD);
    set_key(c, "block_size", MODEL_T);
    set_key(c, "vocab_size", MODEL_VOCAB);
    set_key(c, "batch_size", BATCH);
    config_set(c, "device=cuda", "test_gpu_model");
    char kv[64];
    snprintf(kv, sizeof kv, "precision=%s", precision);
    config_set(c, kv, "test_gpu_model");
}

/* GPT-2 initialisation leaves every bias 0 and every LayerNorm weight 1,
 * where a forward that skipped them (or a backward that lost their
 * gradient's path) would look right; nudge every 1-D tensor. */
static void init_params(const ParamLayout *pl, float *params, uint64_t seed) {
    param_init(pl, params, seed, 0, pl->n_tensors);
    Rng r;
    rng_seed(&r, hash_u64(seed, 0x6e75646765ull, 0, 0));
    for (int i = 0; i < pl->n_tensors; i++) {
        const TensorInfo *ti = &pl->tensors[i];
        if (ti->ndim != 1) continue;
        for (size_t j = 0; j < ti->numel; j++)
            params[ti->offset + j] += (float)(0.05 * rng_normal(&r));
    }
}

/* One precision of the GPU against the CPU references. */
static void check_gpu(Tally *t, const char *precision, const ParamLayout *pl,
                      const float *params, const int32_t *tokens, const int32_t *targets,
                      const Result *cpu_whole, const Result *cpu_split) {
    int bf16 = strcmp(precision, "bf16") == 0;
    double loss_tol = bf16 ? BF16_LOSS_TOL : FP32_LOSS_TOL;
    double grad_tol = bf16 ? BF16_GRAD_TOL : FP32_GRAD_TOL;
    double cut_tol = bf16 ? BF16_CUT_TOL : FP32_CUT_TOL;
    size_t NC = (size_t)BATCH * MODEL_T * MODEL_EMBD;
    Config c;
    model_config(&c, precision);
    char run[48];
    snprintf(run, sizeof run, "gpu %s", precision);
    announce(run, "backend_cuda_create");
    Backend *be = backend_cuda_create(&c, 0, 0);

    snprintf(run, sizeof run, "gpu %s whole", precision);
    Result w = run_whole(be, run, pl, params, tokens, targets, BATCH, MODEL_T);
    Result w2 = run_whole(be, run, pl, params, tokens, targets, BATCH, MODEL_T);
    compare_loss(t, run, cpu_whole->loss, w.loss, loss_tol);
    compare_grads(t, run, pl, cpu_whole->grads, w.grads, bf16, grad_tol);
    compare_bits(t, run, pl, &w, &w2);

    snprintf(run, sizeof run, "gpu %s split", precision);
    Result s = run_split(be, run, pl, params, tokens, targets, BATCH, MODEL_T, CUT);
    compare_loss(t, run, cpu_whole->loss, s.loss, loss_tol);
    compare_grads(t, run, pl, cpu_whole->grads, s.grads, bf16, grad_tol);
    compare_array(t, run, "activation at the cut", cpu_split->cut_act, s.cut_act, NC, bf16,
                  cut_tol);
    compare_array(t, run, "gradient at the cut", cpu_split->cut_grad, s.cut_grad, NC, bf16,
                  cut_tol);

    result_free(&w);
    result_free(&w2);
    result_free(&s);
    be->destroy(be);
}

int main(int argc, char **argv) {
    int want_fp32 = argc < 2, want_bf16 = argc < 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "fp32") == 0) {
            want_fp32 = 1;
        } else if (strcmp(argv[i], "bf16") == 0) {
            want_bf16 = 1;
        } else {
            fprintf(stderr, "usage: test_gpu_model [fp32] [bf16]\n");
            return 2;
        }
    }
    if (device_gpu_count() <= 0) {
        printf("skipped: no GPU\n");
        return 77;
    }
    backend_thread_init();
    GPTConfig g = {MODEL_LAYERS, MODEL_HEADS, MODEL_EMBD, MODEL_T, MODEL_VOCAB};
    ParamLayout pl;
    param_layout_init(&pl, &g);
    float *params = xmalloc(pl.n_params * sizeof(float));
    init_params(&pl, params, 1337);
    size_t N = (size_t)BATCH * MODEL_T;
    int32_t *tokens = xmalloc(N * sizeof(int32_t)), *targets = xmalloc(N * sizeof(int32_t));
    Rng r;
    rng_seed(&r, 20240520);
    for (size_t i = 0; i < N; i++) {
        tokens[i] = (int32_t)(rng_next(&r) % MODEL_VOCAB);
        targets[i] = (int32_t)(rng_next(&r) % MODEL_VOCAB);
    }
    printf("model: %d layers, %d heads, width %d, T %d, vocab %d, batch %d; split after "
           "block %d\n", MODEL_LAYERS, MODEL_HEADS, MODEL_EMBD, MODEL_T, MODEL_VOCAB, BATCH,
           CUT);
    printf("tolerances: fp32 loss %.0e rel, grads %.0e max-rel, cut %.0e max-rel; "
           "bf16 loss %.0e rel, grads %.0e rel-L2, cut %.0e rel-L2\n", FP32_LOSS_TOL,
           FP32_GRAD_TOL, FP32_CUT_TOL, BF16_LOSS_TOL, BF16_GRAD_TOL, BF16_CUT_TOL);

    Tally t = {0, 0};
    Backend *cpu = backend_cpu_create();
    Result cpu_whole = run_whole(cpu, "cpu whole", &pl, params, tokens, targets, BATCH, MODEL_T);
    Result cpu_split =
        run_split(cpu, "cpu split", &pl, params, tokens, targets, BATCH, MODEL_T, CUT);
    cpu->destroy(cpu);
    /* the reference itself: the split computes what the whole model does */
    compare_loss(&t, "cpu split", cpu_whole.loss, cpu_split.loss, CPU_SPLIT_TOL);
    compare_grads(&t, "cpu split", &pl, cpu_whole.grads, cpu_split.grads, 0, CPU_SPLIT_TOL);

    if (want_fp32) check_gpu(&t, "fp32", &pl, params, tokens, targets, &cpu_whole, &cpu_split);
    if (want_bf16) check_gpu(&t, "bf16", &pl, params, tokens, targets, &cpu_whole, &cpu_split);

    result_free(&cpu_whole);
    result_free(&cpu_split);
    free(params);
    free(tokens);
    free(targets);
    param_layout_free(&pl);
    printf("%d checks, %d failed\n", t.checks, t.failed);
    return t.failed ? 1 : 0;
}

#endif /* HAVE_CUDA */
