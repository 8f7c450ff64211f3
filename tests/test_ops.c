/* test_ops.c - every op of src/ops.h against the double reference.
 *
 * For each op, on small odd shapes and several seeds:
 *  - the fp32 forward matches the double reference forward;
 *  - the fp32 backward, for a random upstream gradient dy and the
 *    objective L = sum(y * dy), matches central finite differences of the
 *    double reference for every input and parameter;
 *  - backward accumulates (a second call doubles every gradient).
 * Plus op-specific contracts: causality of attention, the scale, the
 * written-not-accumulated output, aliasing and large-logit stability of
 * the softmax cross-entropy, and matmul without bias.
 *
 * Inputs are drawn in fp32 and widened, so both sides see the same
 * numbers and the only difference left is fp32 arithmetic.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ops.h"
#include "ref_gpt.h"
#include "rng.h"

/* fp32 forward vs double: a few ulps (6e-8) of rounding per output, grown
 * by sums of at most a few dozen terms; 1e-5 leaves room for that and
 * still catches any real mistake (which shows up at 1e-2 or more). */
#define FWD_TOL 1e-5
/* fp32 analytic gradient vs double central differences. The FD side is
 * accurate to ~1e-9 relative (truncation O(h^2) ~ 1e-12, round-off
 * ~ eps*|L|/h ~ 1e-9), so the budget is the fp32 backward's own rounding,
 * ~1e-6 here; 1e-4 is generous yet far below any wrong term. */
#define GRAD_TOL 1e-4
#define FD_H 1e-6
/* A second backward call must add exactly the same values again; only the
 * final rounding of the sum may differ. */
#define ACCUM_TOL 1e-6

typedef struct {
    int B, T, C, NH, V;
    uint64_t seed;
} Shape;

static const Shape shapes[] = {
    {2, 7, 12, 3, 11, 1}, /* odd sizes everywhere */
    {1, 5, 8, 2, 7, 2},   /* N = 5 */
    {3, 4, 6, 1, 13, 3},  /* one head */
    {2, 3, 10, 5, 5, 4},  /* head size 2 */
    {1, 70, 8, 2, 9, 5},  /* attention over three row blocks, the last partial */
};
#define N_SHAPES ((int)(sizeof shapes / sizeof shapes[0]))

/* Attention alone, at head sizes that fill whole register tiles (32 and
 * 64 columns: no padding copies, one and two column tiles), with T not a
 * multiple of the 8-row or 32-key tiles. Their finite differences cover
 * every 7th element of qkv (all would take minutes). */
static const Shape attention_shapes[] = {
    {1, 70, 64, 2, 5, 6},
    {2, 45, 128, 2, 5, 7},
};
#define N_ATT_SHAPES ((int)(sizeof attention_shapes / sizeof attention_shapes[0]))
#define ATT_FD_STRIDE 7

static int n_checks, n_failed;

static void check(const char *what, const Shape *s, double err, double tol) {
    int ok = err <= tol; /* NaN fails */
    n_checks++;
    if (!ok) n_failed++;
    printf("%s %-36s B=%d T=%d C=%2d NH=%d V=%2d seed=%llu  err=%.2e tol=%.0e\n",
           ok ? "PASS" : "FAIL", what, s->B, s->T, s->C, s->NH, s->V,
           (unsigned long long)s->seed, err, tol);
}

/* ---- buffers ---- */

/* The same random numbers in fp32 (for the backend) and double (for the
 * reference): drawn, rounded to float, widened back. */
typedef struct {
    float *f;
    double *d;
    size_t n;
} Pair;

static Pair pair_random(Rng *r, size_t n, double scale) {
    Pair p = {xmalloc(sizeof(float) * n), xmalloc(sizeof(double) * n), n};
    for (size_t i = 0; i < n; i++) {
        p.f[i] = (float)(scale * rng_normal(r));
        p.d[i] = p.f[i];
    }
    return p;
}

static void pair_free(Pair *p) {
    free(p->f);
    free(p->d);
}

static float *fzeros(size_t n) { return xcalloc(n, sizeof(float)); }
static double *dzeros(size_t n) { return xcalloc(n, sizeof(double)); }

static void random_tokens(Rng *r, int32_t *tok, int n, int V) {
    for (int i = 0; i < n; i++) tok[i] = (int32_t)(rng_next(r) % (uint64_t)V);
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ---- finite differences ---- */

typedef double (*Objective)(void *ctx);

/* Compares the analytic gradient g (of the objective f w.r.t. the array p,
 * which f reads through ctx) with central differences of f, over the
 * elements 0, stride, 2 stride, ... of p. */
static void check_grad_every(const char *what, const Shape *s, Objective f, void *ctx,
                             double *p, const float *g, size_t n, size_t stride) {
    size_t m = (n + stride - 1) / stride;
    double *fd = dzeros(m);
    float *gm = xmalloc(sizeof(float) * m);
    for (size_t k = 0; k < m; k++) {
        size_t i = k * stride;
        double saved = p[i];
        p[i] = saved + FD_H;
        double up = f(ctx);
        p[i] = saved - FD_H;
        double down = f(ctx);
        p[i] = saved;
        fd[k] = (up - down) / (2.0 * FD_H);
        gm[k] = g[i];
    }
    check(what, s, ref_rel_err(gm, fd, m), GRAD_TOL);
    free(fd);
    free(gm);
}

/* check_grad_every over every element */
static void check_grad(const char *what, const Shape *s, Objective f,
                       void *ctx, double *p, const float *g, size_t n) {
    check_grad_every(what, s, f, ctx, p, g, n, 1);
}

/* g2 (after two backward calls) against 2 * g1 (after one). */
static void check_doubled(const char *what, const Shape *s, const float *g1,
                          const float *g2, size_t n) {
    double *want = dzeros(n);
    for (size_t i = 0; i < n; i++) want[i] = 2.0 * (double)g1[i];
    check(what, s, ref_rel_err(g2, want, n), ACCUM_TOL);
    free(want);
}

static float *snapshot(const float *x, size_t n) {
    float *c = xmalloc(sizeof(float) * n);
    memcpy(c, x, sizeof(float) * n);
    return c;
}

/* ---- embedding ---- */

typedef struct {
    const Shape *s;
    const int32_t *tok;
    double *wte, *wpe;
    const double *dy;
} EmbCtx;

static double emb_objective(void *vc) {
    EmbCtx *c = vc;
    size_t n = (size_t)c->s->B * c->s->T * c->s->C;
    double *y = dzeros(n);
    ref_embedding_forward(y, c->tok, c->wte, c->wpe, c->s->B, c->s->T, c->s->C);
    double L = dot(y, c->dy, n);
    free(y);
    return L;
}

static void test_embedding(const Shape *s) {
    Rng r;
    rng_seed(&r, s->seed * 1000 + 1);
    int B = s->B, T = s->T, C = s->C, V = s->V, N = B * T;
    int32_t *tok = xmalloc(sizeof(int32_t) * N);
    random_tokens(&r, tok, N, V); /* N > V for most shapes: rows repeat */
    Pair wte = pair_random(&r, (size_t)V * C, 1.0);
    Pair wpe = pair_random(&r, (size_t)T * C, 1.0);
    Pair dy = pair_random(&r, (size_t)N * C, 1.0);

    float *y = fzeros((size_t)N * C);
    double *yr = dzeros((size_t)N * C);
    embedding_forward(y, tok, wte.f, wpe.f, B, T, C);
    ref_embedding_forward(yr, tok, wte.d, wpe.d, B, T, C);
    check("embedding fwd", s, ref_rel_err(y, yr, (size_t)N * C), FWD_TOL);

    float *dwte = fzeros(wte.n), *dwpe = fzeros(wpe.n);
    embedding_backward(dwte, dwpe, dy.f, tok, B, T, C);
    EmbCtx ctx = {s, tok, wte.d, wpe.d, dy.d};
    check_grad("embedding dwte", s, emb_objective, &ctx, wte.d, dwte, wte.n);
    check_grad("embedding dwpe", s, emb_objective, &ctx, wpe.d, dwpe, wpe.n);

    float *g1 = snapshot(dwte, wte.n), *g2 = snapshot(dwpe, wpe.n);
    embedding_backward(dwte, dwpe, dy.f, tok, B, T, C);
    check_doubled("embedding accumulate dwte", s, g1, dwte, wte.n);
    check_doubled("embedding accumulate dwpe", s, g2, dwpe, wpe.n);

    free(g1); free(g2); free(dwte); free(dwpe); free(y); free(yr); free(tok);
    pair_free(&wte); pair_free(&wpe); pair_free(&dy);
}

/* ---- layernorm ---- */

typedef struct {
    const Shape *s;
    double *x, *w, *b;
    const double *dy;
} LnCtx;

static double ln_objective(void *vc) {
    LnCtx *c = vc;
    int N = c->s->B * c->s->T, C = c->s->C;
    double *y = dzeros((size_t)N * C);
    ref_layernorm_forward(y, NULL, NULL, c->x, c->w, c->b, N, C);
    double L = dot(y, c->dy, (size_t)N * C);
    free(y);
    return L;
}

static void test_layernorm(const Shape *s) {
    Rng r;
    rng_seed(&r, s->seed * 1000 + 2);
    int N = s->B * s->T, C = s->C;
    size_t n = (size_t)N * C;
    /* an offset in x: the mean must really be subtracted */
    Pair x = pair_random(&r, n, 2.0);
    for (size_t i = 0; i < n; i++) x.d[i] = x.f[i] = x.f[i] + 0.5f;
    Pair w = pair_random(&r, C, 1.0), b = pair_random(&r, C, 1.0);
    Pair dy = pair_random(&r, n, 1.0);

    float *y = fzeros(n), *mean = fzeros(N), *rstd = fzeros(N);
    double *yr = dzeros(n), *meanr = dzeros(N), *rstdr = dzeros(N);
    layernorm_forward(y, mean, rstd, x.f, w.f, b.f, N, C);
    ref_layernorm_forward(yr, meanr, rstdr, x.d, w.d, b.d, N, C);
    check("layernorm fwd y", s, ref_rel_err(y, yr, n), FWD_TOL);
    check("layernorm fwd mean", s, ref_rel_err(mean, meanr, N), FWD_TOL);
    check("layernorm fwd rstd", s, ref_rel_err(rstd, rstdr, N), FWD_TOL);

    float *dx = fzeros(n), *dw = fzeros(C), *db = fzeros(C);
    layernorm_backward(dx, dw, db, dy.f, x.f, w.f, mean, rstd, N, C);
    LnCtx ctx = {s, x.d, w.d, b.d, dy.d};
    check_grad("layernorm dx", s, ln_objective, &ctx, x.d, dx, n);
    check_grad("layernorm dw", s, ln_objective, &ctx, w.d, dw, C);
    check_grad("layernorm db", s, ln_objective, &ctx, b.d, db, C);

    float *g1 = snapshot(dx, n), *g2 = snapshot(dw, C), *g3 = snapshot(db, C);
    layernorm_backward(dx, dw, db, dy.f, x.f, w.f, mean, rstd, N, C);
    check_doubled("layernorm accumulate dx", s, g1, dx, n);
    check_doubled("layernorm accumulate dw", s, g2, dw, C);
    check_doubled("layernorm accumulate db", s, g3, db, C);

    free(g1); free(g2); free(g3); free(dx); free(dw); free(db);
    free(y); free(mean); free(rstd); free(yr); free(meanr); free(rstdr);
    pair_free(&x); pair_free(&w); pair_free(&b); pair_free(&dy);
}

/* ---- matmul ---- */

typedef struct {
    int N, IC, OC;
    double *x, *W, *bias; /* bias may be NULL */
    const double *dy;
} MmCtx;

static double mm_objective(void *vc) {
    MmCtx *c = vc;
    double *y = dzeros((size_t)c->N * c->OC);
    ref_matmul_forward(y, c->x, c->W, c->bias, c->N, c->IC, c->OC);
    double L = dot(y, c->dy, (size_t)c->N * c->OC);
    free(y);
    return L;
}

static void test_matmul_bias(const Shape *s) {
    Rng r;
    rng_seed(&r, s->seed * 1000 + 3);
    /* OC = V: odd and different from IC, so a transposed W cannot pass */
    int N = s->B * s->T, IC = s->C, OC = s->V;
    Pair x = pair_random(&r, (size_t)N * IC, 1.0);
    Pair W = pair_random(&r, (size_t)IC * OC, 0.5);
    Pair bias = pair_random(&r, OC, 1.0);
    Pair dy = pair_random(&r, (size_t)N * OC, 1.0);

    float *y = fzeros((size_t)N * OC);
    double *yr = dzeros((size_t)N * OC);
    matmul_forward(y, x.f, W.f, bias.f, N, IC, OC);
    ref_matmul_forward(yr, x.d, W.d, bias.d, N, IC, OC);
    check("matmul fwd", s, ref_rel_err(y, yr, (size_t)N * OC), FWD_TOL);

    float *dx = fzeros(x.n), *dW = fzeros(W.n), *db = fzeros(OC);
    matmul_backward(dx, dW, db, dy.f, x.f, W.f, N, IC, OC);
    MmCtx ctx = {N, IC, OC, x.d, W.d, bias.d, dy.d};
    check_grad("matmul dx", s, mm_objective, &ctx, x.d, dx, x.n);
    check_grad("matmul dW", s, mm_objective, &ctx, W.d, dW, W.n);
    check_grad("matmul dbias", s, mm_objective, &ctx, bias.d, db, OC);

    float *g1 = snapshot(dx, x.n), *g2 = snapshot(dW, W.n), *g3 = snapshot(db, OC);
    matmul_backward(dx, dW, db, dy.f, x.f, W.f, N, IC, OC);
    check_doubled("matmul accumulate dx", s, g1, dx, x.n);
    check_doubled("matmul accumulate dW", s, g2, dW, W.n);
    check_doubled("matmul accumulate dbias", s, g3, db, OC);

    free(g1); free(g2); free(g3); free(dx); free(dW); free(db);
    free(y); free(yr);
    pair_free(&x); pair_free(&W); pair_free(&bias); pair_free(&dy);
}

/* bias = NULL in the forward; dx and dbias = NULL in the backward. */
static void test_matmul_nobias(const Shape *s) {
    Rng r;
    rng_seed(&r, s->seed * 1000 + 4);
    int N = s->B * s->T, IC = s->V, OC = s->C;
    Pair x = pair_random(&r, (size_t)N * IC, 1.0);
    Pair W = pair_random(&r, (size_t)IC * OC, 0.5);
    Pair dy = pair_random(&r, (size_t)N * OC, 1.0);

    float *y = fzeros((size_t)N * OC);
    double *yr = dzeros((size_t)N * OC);
    matmul_forward(y, x.f, W.f, NULL, N, IC, OC);
    ref_matmul_forward(yr, x.d, W.d, NULL, N, IC, OC);
    check("matmul fwd (no bias)", s, ref_rel_err(y, yr, (size_t)N * OC), FWD_TOL);

    float *dW = fzeros(W.n);
    matmul_backward(NULL, dW, NULL, dy.f, x.f, W.f, N, IC, OC);
    MmCtx ctx = {N, IC, OC, x.d, W.d, NULL, dy.d};
    check_grad("matmul dW (dx, dbias NULL)", s, mm_objective, &ctx, W.d, dW, W.n);

    /* matmul_backward_input with beta 0 overwrites whatever dx held: the
     * same bits as accumulating into zeros. */
    float *dx0 = fzeros(x.n), *dxj = fzeros(x.n);
    for (size_t i = 0; i < x.n; i++) dxj[i] = 1e30f;
    matmul_backward_input(dx0, dy.f, W.f, N, IC, OC, 1.0f);
    matmul_backward_input(dxj, dy.f, W.f, N, IC, OC, 0.0f);
    check("matmul dx beta 0 overwrites", s, memcmp(dx0, dxj, x.n * sizeof(float)) != 0, 0.5);

    free(dx0); free(dxj); free(dW); free(y); free(yr);
    pair_free(&x); pair_free(&W); pair_free(&dy);
}

/* ---- attention ---- */

typedef struct {
    const Shape *s;
    double *qkv;
    const double *dy;
} AttCtx;

static double att_objective(void *vc) {
    AttCtx *c = vc;
    const Shape *s = c->s;
    size_t n = (size_t)s->B * s->T * s->C;
    double *y = dzeros(n);
    ref_attention_forward(y, NULL, c->qkv, s->B, s->T, s->C, s->NH);
    double L = dot(y, c->dy, n);
    free(y);
    return L;
}

/* Largest |a - b| over rows t of every sequence with t in [lo, hi). */
static double rows_diff(const float *a, const float *b, int B, int T,
                        int width, int lo, int hi) {
    double m = 0.0;
    for (int bb = 0; bb < B; bb++)
        for (int t = lo; t < hi; t++)
            for (int c = 0; c < width; c++) {
                size_t i = ((size_t)bb * T + t) * width + c;
                double d = fabs((double)a[i] - (double)b[i]);
                if (d > m || d != d) m = d != d ? INFINITY : d;
            }
    return m;
}

/* Sum of |att| above the diagonal: must be exactly zero. */
static double att_upper(const float *att, int B, int NH, int T) {
    double s = 0.0;
    for (int bh = 0; bh < B * NH; bh++)
        for (int t = 0; t < T; t++)
            for (int j = t + 1; j < T; j++)
                s += fabs(att[((size_t)bh * T + t) * T + j]);
    return s;
}

/* Causality, exactly: changing k and v of position t0 leaves the outputs
 * of positions < t0 bit-identical, and an upstream gradient confined to
 * positions < t0 leaves d(qkv) of positions >= t0 exactly zero. */
static void check_causal(const Shape *s, const Pair *qkv, const float *out) {
    int B = s->B, T = s->T, C = s->C, NH = s->NH, t0 = T / 2;
    size_t n = (size_t)B * T * C;
    float *qkv2 = snapshot(qkv->f, qkv->n);
    for (int b = 0; b < B; b++)
        for (int c = C; c < 3 * C; c++)
            qkv2[((size_t)b * T + t0) * 3 * C + c] += 3.0f;
    float *out2 = fzeros(n), *att2 = fzeros((size_t)B * NH * T * T);
    float *scratch = fzeros(attention_scratch_floats(T, C, NH));
    attention_forward(out2, att2, scratch, qkv2, B, T, C, NH);
    check("attention causal: past unchanged", s,
          rows_diff(out, out2, B, T, C, 0, t0), 0.0);
    check("attention causal: future does change", s,
          rows_diff(out, out2, B, T, C, t0, T) > 0 ? 0.0 : 1.0, 0.0);

    float *dy = fzeros(n), *dqkv = fzeros(qkv->n);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < t0; t++)
            for (int c = 0; c < C; c++) dy[((size_t)b * T + t) * C + c] = 1.0f + c;
    attention_forward(out2, att2, scratch, qkv->f, B, T, C, NH);
    attention_backward(dqkv, scratch, dy, qkv->f, att2, B, T, C, NH);
    float *zero = fzeros(qkv->n);
    check("attention causal: no grad to future", s,
          rows_diff(dqkv, zero, B, T, 3 * C, t0, T), 0.0);

    free(zero); free(dy); free(dqkv); free(scratch); free(qkv2); free(out2); free(att2);
}

/* fd_stride: finite differences on every fd_stride-th element of qkv */
static void test_attention(const Shape *s, size_t fd_stride) {
    Rng r;
    rng_seed(&r, s->seed * 1000 + 5);
    int B = s->B, T = s->T, C = s->C, NH = s->NH;
    size_t n = (size_t)B * T * C, natt = (size_t)B * NH * T * T;
    /* scale 1.5: scores of a few units, so the softmax is far from uniform */
    Pair qkv = pair_random(&r, (size_t)B * T * 3 * C, 1.5);
    Pair dy = pair_random(&r, n, 1.0);

    /* The scratch starts as NaN: a read of anything the kernels did not
     * write first would show in every check below. */
    size_t nscratch = attention_scratch_floats(T, C, NH);
    float *scratch = fzeros(nscratch);
    for (size_t i = 0; i < nscratch; i++) scratch[i] = NAN;

    float *out = fzeros(n), *att = fzeros(natt);
    double *outr = dzeros(n), *attr = dzeros(natt);
    attention_forward(out, att, scratch, qkv.f, B, T, C, NH);
    ref_attention_forward(outr, attr, qkv.d, B, T, C, NH);
    check("attention fwd out", s, ref_rel_err(out, outr, n), FWD_TOL);
    check("attention fwd att", s, ref_rel_err(att, attr, natt), FWD_TOL);
    check("attention att upper triangle == 0", s, att_upper(att, B, NH, T), 0.0);

    float *dqkv = fzeros(qkv.n);
    attention_backward(dqkv, scratch, dy.f, qkv.f, att, B, T, C, NH);
    AttCtx ctx = {s, qkv.d, dy.d};
    check_grad_every("attention dqkv", s, att_objective, &ctx, qkv.d, dqkv, qkv.n, fd_stride);

    /* attention_backward overwrites whatever dqkv held: the same bits
     * again over garbage. */
    float *g1 = snapshot(dqkv, qkv.n);
    for (size_t i = 0; i < qkv.n; i++) dqkv[i] = 1e30f;
    attention_backward(dqkv, scratch, dy.f, qkv.f, att, B, T, C, NH);
    check("attention dqkv overwrites", s, memcmp(g1, dqkv, qkv.n * sizeof(float)) != 0, 0.5);

    check_causal(s, &qkv, out);

    free(g1); free(dqkv); free(scratch); free(out); free(att); free(outr); free(attr);
    pair_free(&qkv); pair_free(&dy);
}

/* ---- gelu ---- */

typedef struct {
    int n;
    double *x;
    const double *dy;
} GeluCtx;

static double gelu_objective(void *vc) {
    GeluCtx *c = vc;
    double *y = dzeros(c->n);
    ref_gelu_forward(y, c->x, c->n);
    double L = dot(y, c->dy, c->n);
    free(y);
    return L;
}

static void test_gelu(const Shape *s) {
    Rng r;
    rng_seed(&r, s->seed * 1000 + 6);
    int N = s->B * s->T, C = s->C, n = N * C;
    Pair x = pair_random(&r, n, 2.0); /* covers the tails and the bend */
    Pair dy = pair_random(&r, n, 1.0);

    float *y = fzeros(n);
    double *yr = dzeros(n);
    gelu_forward(y, x.f, n);
    ref_gelu_forward(yr, x.d, n);
    check("gelu fwd", s, ref_rel_err(y, yr, n), FWD_TOL);

    float *dx = fzeros(n);
    gelu_backward(dx, NULL, x.f, y, dy.f, N, C);
    GeluCtx ctx = {n, x.d, dy.d};
    check_grad("gelu dx", s, gelu_objective, &ctx, x.d, dx, n);

    /* gelu_backward overwrites (ops.h): a second call gives the same bits,
     * and so does running it in place on a copy of dy. */
    float *g1 = snapshot(dx, n);
    gelu_backward(dx, NULL, x.f, y, dy.f, N, C);
    check("gelu overwrites dx", s, memcmp(g1, dx, (size_t)n * sizeof(float)) != 0, 0.5);
    float *inplace = snapshot(dy.f, n);
    gelu_backward(inplace, NULL, x.f, y, inplace, N, C);
    check("gelu in place", s, memcmp(g1, inplace, (size_t)n * sizeof(float)) != 0, 0.5);

    /* dbias accumulates the column sums of dx (against a float64 sum of
     * the dx just checked), and a second call adds them again */
    float *dbias = fzeros(C);
    double *want = dzeros(C);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) want[c] += g1[(size_t)i * C + c];
    gelu_backward(dx, dbias, x.f, y, dy.f, N, C);
    check("gelu dbias", s, ref_rel_err(dbias, want, C), FWD_TOL);
    check("gelu dx with dbias", s, memcmp(g1, dx, (size_t)n * sizeof(float)) != 0, 0.5);
    float *b1 = snapshot(dbias, C);
    gelu_backward(dx, dbias, x.f, y, dy.f, N, C);
    check_doubled("gelu accumulate dbias", s, b1, dbias, C);

    free(b1); free(want); free(dbias);
    free(inplace); free(g1); free(dx); free(y); free(yr);
    pair_free(&x); pair_free(&dy);
}

/* ---- projection + residual ---- */

/* matmul_forward_residual against the float64 product plus the residual,
 * with and without a bias */
static void test_matmul_residual(const Shape *s) {
    Rng r;
    rng_seed(&r, s->seed * 1000 + 7);
    int N = s->B * s->T, IC = s->V, OC = s->C;
    size_t n = (size_t)N * OC;
    Pair x = pair_random(&r, (size_t)N * IC, 1.0);
    Pair W = pair_random(&r, (size_t)IC * OC, 0.5);
    Pair bias = pair_random(&r, OC, 1.0);
    Pair resid = pair_random(&r, n, 1.0);

    float *y = fzeros(n);
    double *yr = dzeros(n);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        matmul_forward_residual(y, x.f, W.f, with_bias ? bias.f : NULL, resid.f, N, IC, OC);
        ref_matmul_forward(yr, x.d, W.d, with_bias ? bias.d : NULL, N, IC, OC);
        ref_residual_forward(yr, resid.d, yr, (int)n);
        check(with_bias ? "matmul + residual fwd" : "matmul + residual fwd (no bias)", s,
              ref_rel_err(y, yr, n), FWD_TOL);
    }
    free(y); free(yr);
    pair_free(&x); pair_free(&W); pair_free(&bias); pair_free(&resid);
}

/* ---- logits ---- */

typedef struct {
    int N, C, V;
    double *x, *wte;
    const double *dy;
} LogitsCtx;

static double logits_objective(void *vc) {
    LogitsCtx *c = vc;
    double *y = dzeros((size_t)c->N * c->V);
    ref_logits_forward(y, c->x, c->wte, c->N, c->C, c->V);
    double L = dot(y, c->dy, (size_t)c->N * c->V);
    free(y);
    return L;
}

static void test_logits(const Shape *s) {
    Rng r;
    rng_seed(&r, s->seed * 1000 + 8);
    int N = s->B * s->T, C = s->C, V = s->V;
    Pair x = pair_random(&r, (size_t)N * C, 1.0);
    Pair wte = pair_random(&r, (size_t)V * C, 0.5);
    Pair dy = pair_random(&r, (size_t)N * V, 1.0);

    float *y = fzeros((size_t)N * V);
    double *yr = dzeros((size_t)N * V);
    logits_forward(y, x.f, wte.f, N, C, V);
    ref_logits_forward(yr, x.d, wte.d, N, C, V);
    check("logits fwd", s, ref_rel_err(y, yr, (size_t)N * V), FWD_TOL);

    float *dx = fzeros(x.n), *dwte = fzeros(wte.n);
    logits_backward(dx, dwte, dy.f, x.f, wte.f, N, C, V);
    LogitsCtx ctx = {N, C, V, x.d, wte.d, dy.d};
    check_grad("logits dx", s, logits_objective, &ctx, x.d, dx, x.n);
    check_grad("logits dwte", s, logits_objective, &ctx, wte.d, dwte, wte.n);

    float *g1 = snapshot(dx, x.n), *g2 = snapshot(dwte, wte.n);
    logits_backward(dx, dwte, dy.f, x.f, wte.f, N, C, V);
    check_doubled("logits accumulate dx", s, g1, dx, x.n);
    check_doubled("logits accumulate dwte", s, g2, dwte, wte.n);

    free(g1); free(g2); free(dx); free(dwte); free(y); free(yr);
    pair_free(&x); pair_free(&wte); pair_free(&dy);
}

/* ---- softmax cross-entropy ---- */

typedef struct {
    int N, V;
    double *logits;
    const int32_t *targets;
    double scale;
} CeCtx;

/* L = scale * sum_i loss_i */
static double ce_objective(void *vc) {
    CeCtx *c = vc;
    double *losses = dzeros(c->N);
    ref_crossentropy_forward(NULL, losses, c->logits, c->targets, c->N, c->V);
    double L = 0.0;
    for (int i = 0; i < c->N; i++) L += losses[i];
    free(losses);
    return c->scale * L;
}

/* Forward on logits scaled by `mult`, against the reference. */
static void check_ce_forward(const Shape *s, const Pair *logits,
                             const int32_t *targets, float mult,
                             const char *what_p, const char *what_l) {
    int N = s->B * s->T, V = s->V;
    size_t n = (size_t)N * V;
    float *probs = fzeros(n), *losses = fzeros(N);
    double *z = dzeros(n), *probsr = dzeros(n), *lossesr = dzeros(N);
    for (size_t i = 0; i < n; i++) {
        probs[i] = logits->f[i] * mult;
        z[i] = probs[i];
    }
    softmax_crossentropy_forward(probs, losses, targets, N, V);
    ref_crossentropy_forward(probsr, lossesr, z, targets, N, V);
    check(what_p, s, ref_rel_err(probs, probsr, n), FWD_TOL);
    check(what_l, s, ref_rel_err(losses, lossesr, N), FWD_TOL);
    free(probs); free(losses); free(z); free(probsr); free(lossesr);
}

static void test_crossentropy(const Shape *s) {
    Rng r;
    rng_seed(&r, s->seed * 1000 + 9);
    int N = s->B * s->T, V = s->V;
    size_t n = (size_t)N * V;
    Pair logits = pair_random(&r, n, 3.0);
    int32_t *targets = xmalloc(sizeof(int32_t) * N);
    random_tokens(&r, targets, N, V);

    check_ce_forward(s, &logits, targets, 1.0f, "softmax_ce fwd probs",
                     "softmax_ce fwd losses");
    /* logits in the hundreds: a softmax without the max shift overflows */
    check_ce_forward(s, &logits, targets, 100.0f, "softmax_ce fwd probs (x100)",
                     "softmax_ce fwd losses (x100)");

    float *probs = snapshot(logits.f, n), *losses = fzeros(N);
    softmax_crossentropy_forward(probs, losses, targets, N, V);
    const float scales[2] = {0.37f, 1.0f / (float)N};
    for (int k = 0; k < 2; k++) {
        /* garbage first: the backward writes, it does not accumulate */
        float *dl = fzeros(n);
        for (size_t i = 0; i < n; i++) dl[i] = 1e3f;
        softmax_crossentropy_backward(dl, probs, targets, scales[k], N, V);
        CeCtx ctx = {N, V, logits.d, targets, (double)scales[k]};
        check_grad(k == 0 ? "softmax_ce dlogits (scale 0.37)"
                          : "softmax_ce dlogits (scale 1/N)",
                   s, ce_objective, &ctx, logits.d, dl, n);
        if (k == 0) {
            /* in place (dlogits == probs) gives the same bits */
            float *inplace = snapshot(probs, n);
            softmax_crossentropy_backward(inplace, inplace, targets, scales[k], N, V);
            check("softmax_ce backward in place", s,
                  memcmp(inplace, dl, sizeof(float) * n) == 0 ? 0.0 : 1.0, 0.0);
            free(inplace);
        }
        free(dl);
    }
    free(probs); free(losses); free(targets);
    pair_free(&logits);
}

int main(void) {
    for (int i = 0; i < N_SHAPES; i++) {
        const Shape *s = &shapes[i];
        test_embedding(s);
        test_layernorm(s);
        test_matmul_bias(s);
        test_matmul_nobias(s);
        test_attention(s, 1);
        test_gelu(s);
        test_matmul_residual(s);
        test_logits(s);
        test_crossentropy(s);
    }
    for (int i = 0; i < N_ATT_SHAPES; i++) test_attention(&attention_shapes[i], ATT_FD_STRIDE);
    printf("test_ops: %d/%d checks passed\n", n_checks - n_failed, n_checks);
    return n_failed ? 1 : 0;
}
