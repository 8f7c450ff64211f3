/* test_model_grad.c - the whole model's gradient against the double
 * reference, and module splitting against the whole model.
 *
 * For several small random configurations:
 *  1. the parameter layout matches the order documented in model.h,
 *     recomputed here independently;
 *  2. the fp32 loss of module_forward matches ref_gpt_loss in double;
 *  3. the fp32 gradient of module_backward (one whole-model module, loss
 *     scale 1/(B*T)) matches central finite differences of ref_gpt_loss
 *     over EVERY parameter;
 *  4. splitting the model into a chain of modules (x_in/dx_in passed
 *     between them) gives bit-identical loss and gradients, which is what
 *     lets pipeline schedules be exact.
 * Parameters are param_init's plus random noise, so LayerNorm weights are
 * not all one and biases not all zero: every term of the gradient counts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "model.h"
#include "ref_gpt.h"
#include "rng.h"

/* fp32 forward loss vs double: rounding through a few layers of tiny
 * width, ~1e-7 relative in practice. */
#define LOSS_TOL 1e-5
/* fp32 analytic gradient vs double central differences (h = 1e-6, FD
 * error ~1e-9 relative): the budget is fp32 rounding through the network,
 * ~1e-6 in practice. */
#define GRAD_TOL 1e-4
#define FD_H 1e-6
/* Per-tensor errors are relative to the tensor's own largest gradient, but
 * never to less than this fraction of the model's largest one: some
 * gradients are zero in exact arithmetic (the key bias, which shifts every
 * score of a row equally) and are pure rounding on both sides. */
#define TENSOR_FLOOR 1e-2
/* Noise added to every initialised parameter. */
#define PARAM_NOISE 0.3

typedef struct {
    GPTConfig cfg;
    int B, T;
} Case;

static int n_checks, n_failed;

static void check(const char *what, const Case *k, double err, double tol) {
    int ok = err <= tol; /* NaN fails */
    n_checks++;
    if (!ok) n_failed++;
    printf("%s %-40s L=%d NH=%d C=%2d bs=%d V=%2d B=%d T=%d  err=%.2e tol=%.0e\n",
           ok ? "PASS" : "FAIL", what, k->cfg.n_layer, k->cfg.n_head,
           k->cfg.n_embd, k->cfg.block_size, k->cfg.vocab_size, k->B, k->T,
           err, tol);
}

/* A configuration in the tested ranges, drawn from a fixed seed. Odd
 * seeds run T one short of block_size (the activations are sized for
 * block_size), even seeds the full context. */
static Case draw_case(uint64_t seed) {
    Rng r;
    rng_seed(&r, hash_u64(0xC0FF, seed, 0, 0));
    Case k;
    k.cfg.n_layer = 1 + (int)(rng_next(&r) % 3);
    k.cfg.n_head = 1 + (int)(rng_next(&r) % 3);
    int head_size = rng_next(&r) % 2 ? 4 : 2;
    /* Not C = 2: a centred 2-vector normalises to +-1 whatever its size, so
     * LayerNorm's true gradient is O(eps) and fp32 computes it as the
     * difference of near-equal numbers (1e-4 relative error, not a bug). */
    if (k.cfg.n_head * head_size < 4) head_size = 4;
    k.cfg.n_embd = k.cfg.n_head * head_size;
    k.cfg.block_size = 4 + (int)(rng_next(&r) % 5);
    k.cfg.vocab_size = 7 + (int)(rng_next(&r) % 7);
    k.B = 2 + (int)(rng_next(&r) % 2);
    k.T = k.cfg.block_size - (int)(seed % 2);
    return k;
}

/* ---- 1. layout ---- */

/* The documented layout, recomputed: name, rows, cols (0 for vectors). */
static int expected_layout(const GPTConfig *c, int index, char *name,
                           int *rows, int *cols) {
    int C = c->n_embd, nb = c->n_layer * BT_COUNT;
    static const char *suffix[BT_COUNT] = {
        "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
        "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
        "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
        "mlp.c_proj.bias"};
    static const int shape[BT_COUNT][2] = {
        {1, 0}, {1, 0}, {1, 3}, {3, 0}, {1, 1}, {1, 0},
        {1, 0}, {1, 0}, {1, 4}, {4, 0}, {4, 1}, {1, 0}};
    if (index == 0) {
        strcpy(name, "wte"); *rows = c->vocab_size; *cols = C;
    } else if (index == 1) {
        strcpy(name, "wpe"); *rows = c->block_size; *cols = C;
    } else if (index - 2 < nb) {
        int l = (index - 2) / BT_COUNT, w = (index - 2) % BT_COUNT;
        snprintf(name, 64, "h.%d.%s", l, suffix[w]);
        *rows = shape[w][0] * C;
        *cols = shape[w][1] * C;
    } else if (index - 2 - nb < 2) {
        strcpy(name, index - 2 == nb ? "ln_f.weight" : "ln_f.bias");
        *rows = C; *cols = 0;
    } else {
        return 0;
    }
    return 1;
}

static void check_layout(const Case *k, const ParamLayout *pl) {
    char name[64];
    int rows, cols, bad = 0, i = 0;
    size_t off = 0;
    for (; expected_layout(&k->cfg, i, name, &rows, &cols); i++) {
        if (i >= pl->n_tensors) { bad++; break; }
        const TensorInfo *t = &pl->tensors[i];
        size_t numel = (size_t)rows * (cols ? cols : 1);
        int ok = strcmp(t->name, name) == 0 && t->offset == off &&
                 t->numel == numel && t->ndim == (cols ? 2 : 1) &&
                 t->shape[0] == rows && (!cols || t->shape[1] == cols) &&
                 t->is_matrix == (cols != 0) && param_find(pl, name) == t;
        if (!ok) {
            printf("  layout mismatch at tensor %d: want %s [%d,%d] @%zu, "
                   "got %s [%d,%d] @%zu\n", i, name, rows, cols, off, t->name,
                   t->shape[0], t->shape[1], t->offset);
            bad++;
        }
        off += numel;
    }
    if (i != pl->n_tensors || off != pl->n_params) bad++;
    check("layout matches model.h (mismatches)", k, bad, 0);
}

/* ---- helpers ---- */

static void random_tokens(Rng *r, int32_t *tok, int n, int V) {
    for (int i = 0; i < n; i++) tok[i] = (int32_t)(rng_next(r) % (uint64_t)V);
}

static float *noisy_params(const ParamLayout *pl, uint64_t seed) {
    float *p = xcalloc(pl->n_params, sizeof(float));
    param_init(pl, p, seed, 0, pl->n_tensors);
    Rng r;
    rng_seed(&r, hash_u64(seed, 0x4015E, 0, 0));
    for (size_t i = 0; i < pl->n_params; i++)
        p[i] += (float)(PARAM_NOISE * rng_normal(&r));
    return p;
}

/* Forward and backward through a chain of modules, each feeding the next
 * its output and receiving its input gradient back, exactly as a pipeline
 * would. grads (n_params floats) is zeroed here. Returns the loss. */
static float run_chain(const ParamLayout *pl, const float *params,
                       const ModuleSpec *mods, int n_mods,
                       const int32_t *tokens, const int32_t *targets,
                       const Case *k, float *grads) {
    size_t NC = (size_t)k->B * k->T * pl->cfg.n_embd;
    ModuleActs **acts = xcalloc((size_t)n_mods, sizeof *acts);
    float **dx = xcalloc((size_t)n_mods, sizeof *dx);
    const float *x = NULL;
    for (int i = 0; i < n_mods; i++) {
        const ModuleSpec *m = &mods[i];
        acts[i] = module_acts_create(pl, m, k->B, pl->cfg.block_size);
        dx[i] = xcalloc(NC, sizeof(float));
        x = module_forward(pl, params, m, acts[i], m->has_embed ? tokens : NULL,
                           m->has_embed ? NULL : x, m->has_head ? targets : NULL,
                           k->B, k->T);
    }
    float loss = module_loss(acts[n_mods - 1]);
    float scale = 1.0f / (float)(k->B * k->T);
    memset(grads, 0, pl->n_params * sizeof(float));
    for (int i = n_mods - 1; i >= 0; i--) {
        const ModuleSpec *m = &mods[i];
        module_backward(pl, params, grads, m, acts[i],
                        m->has_head ? NULL : dx[i + 1], scale,
                        m->has_embed ? NULL : dx[i]);
    }
    for (int i = 0; i < n_mods; i++) {
        module_acts_free(acts[i]);
        free(dx[i]);
    }
    free(acts);
    free(dx);
    return loss;
}

/* ---- 2, 3. loss and gradient against the reference ---- */

static void fd_gradient(const Case *k, double *pd, size_t n,
                        const int32_t *tokens, const int32_t *targets,
                        double *fd) {
    for (size_t i = 0; i < n; i++) {
        double saved = pd[i];
        pd[i] = saved + FD_H;
        double up = ref_gpt_loss(&k->cfg, pd, tokens, targets, k->B, k->T);
        pd[i] = saved - FD_H;
        double down = ref_gpt_loss(&k->cfg, pd, tokens, targets, k->B, k->T);
        pd[i] = saved;
        fd[i] = (up - down) / (2.0 * FD_H);
    }
}

/* Worst per-tensor relative error; names the tensor. */
static double worst_tensor(const ParamLayout *pl, const float *g,
                           const double *fd, double global_max,
                           const char **name) {
    double worst = 0.0;
    *name = "-";
    for (int i = 0; i < pl->n_tensors; i++) {
        const TensorInfo *t = &pl->tensors[i];
        double scale = ref_max_abs(fd + t->offset, t->numel);
        if (scale < TENSOR_FLOOR * global_max) scale = TENSOR_FLOOR * global_max;
        double err = 0.0;
        for (size_t j = 0; j < t->numel; j++) {
            double e = fabs((double)g[t->offset + j] - fd[t->offset + j]);
            if (e > err || e != e) err = e != e ? INFINITY : e;
        }
        if (err / scale > worst || err != err) {
            worst = err != err ? INFINITY : err / scale;
            *name = t->name;
        }
    }
    return worst;
}

static void check_against_reference(const Case *k, const ParamLayout *pl,
                                    const float *params, const float *grads,
                                    float loss, const int32_t *tokens,
                                    const int32_t *targets) {
    size_t n = pl->n_params;
    double *pd = xmalloc(n * sizeof(double)), *fd = xmalloc(n * sizeof(double));
    ref_to_double(pd, params, n);
    double ref_loss = ref_gpt_loss(&k->cfg, pd, tokens, targets, k->B, k->T);
    printf("  loss fp32 %.7f  double %.7f  params %zu\n", loss, ref_loss, n);
    check("loss fp32 vs double", k, fabs(loss - ref_loss) / fabs(ref_loss), LOSS_TOL);

    fd_gradient(k, pd, n, tokens, targets, fd);
    check("grad vs FD, all params", k, ref_rel_err(grads, fd, n), GRAD_TOL);
    const char *name;
    double w = worst_tensor(pl, grads, fd, ref_max_abs(fd, n), &name);
    char what[96];
    snprintf(what, sizeof what, "grad vs FD, worst tensor %s", name);
    check(what, k, w, GRAD_TOL);
    free(pd);
    free(fd);
}

/* ---- 4. splitting ---- */

static void check_chain(const Case *k, const ParamLayout *pl,
                        const float *params, const float *whole_grads,
                        float whole_loss, const ModuleSpec *mods, int n_mods,
                        const int32_t *tokens, const int32_t *targets,
                        const char *what) {
    float *g = xcalloc(pl->n_params, sizeof(float));
    float loss = run_chain(pl, params, mods, n_mods, tokens, targets, k, g);
    int same = memcmp(g, whole_grads, pl->n_params * sizeof(float)) == 0 &&
               memcmp(&loss, &whole_loss, sizeof loss) == 0;
    check(what, k, same ? 0.0 : 1.0, 0.0);
    free(g);
}

/* The owned parameter ranges of a chain tile [0, n_params) in order. */
static void check_ranges(const Case *k, const ParamLayout *pl,
                         const ModuleSpec *mods, int n_mods) {
    size_t expect = 0;
    int bad = 0;
    for (int i = 0; i < n_mods; i++) {
        size_t lo, hi;
        module_param_range(pl, &mods[i], &lo, &hi);
        if (lo != expect || hi < lo) bad++;
        expect = hi;
    }
    if (expect != pl->n_params) bad++;
    check("module ranges tile the parameters (bad)", k, bad, 0);
}

static void check_splits(const Case *k, const ParamLayout *pl,
                         const float *params, const float *grads, float loss,
                         const int32_t *tokens, const int32_t *targets) {
    int L = k->cfg.n_layer;
    char what[96];
    /* two modules, cut before block c (c = 0: embedding alone; c = L: the
     * head alone) */
    for (int c = 0; c <= L; c++) {
        ModuleSpec two[2] = {{1, 0, c, 0}, {0, c, L, 1}};
        snprintf(what, sizeof what, "split {1,0,%d,0}+{0,%d,%d,1} bit-equal", c, c, L);
        check_chain(k, pl, params, grads, loss, two, 2, tokens, targets, what);
    }
    /* finest: embedding, every block alone, head */
    ModuleSpec *fine = xcalloc((size_t)L + 2, sizeof *fine);
    fine[0] = (ModuleSpec){1, 0, 0, 0};
    for (int l = 0; l < L; l++) fine[l + 1] = (ModuleSpec){0, l, l + 1, 0};
    fine[L + 1] = (ModuleSpec){0, L, L, 1};
    check_chain(k, pl, params, grads, loss, fine, L + 2, tokens, targets,
                "split into every block bit-equal");
    check_ranges(k, pl, fine, L + 2);
    free(fine);
}

static void run_case(uint64_t seed) {
    Case k = draw_case(seed);
    ParamLayout pl;
    param_layout_init(&pl, &k.cfg);
    check_layout(&k, &pl);

    float *params = noisy_params(&pl, seed);
    Rng r;
    rng_seed(&r, hash_u64(seed, 0x70C, 0, 0));
    int N = k.B * k.T;
    int32_t *tokens = xmalloc(sizeof(int32_t) * N);
    int32_t *targets = xmalloc(sizeof(int32_t) * N);
    random_tokens(&r, tokens, N, k.cfg.vocab_size);
    random_tokens(&r, targets, N, k.cfg.vocab_size);

    ModuleSpec whole = {1, 0, k.cfg.n_layer, 1};
    float *grads = xcalloc(pl.n_params, sizeof(float));
    float loss = run_chain(&pl, params, &whole, 1, tokens, targets, &k, grads);
    check_against_reference(&k, &pl, params, grads, loss, tokens, targets);
    check_splits(&k, &pl, params, grads, loss, tokens, targets);

    free(grads); free(params); free(tokens); free(targets);
    param_layout_free(&pl);
}

int main(void) {
    double t0 = now_seconds();
    for (uint64_t seed = 1; seed <= 8; seed++) run_case(seed);
    printf("test_model_grad: %d/%d checks passed (%.1f s)\n",
           n_checks - n_failed, n_checks, now_seconds() - t0);
    return n_failed ? 1 : 0;
}
