/* test_gpu_kernels.c - every kernel of kernels/kernels.h against the CPU
 * reference (src/ops.h, src/optimizer.c, or a double-precision loop where
 * the CPU has no separate op), on fresh random inputs, in fp32 and bf16,
 * on several shapes: T below, at and just past multiples of the 64-token
 * tiles, head sizes 8, 32 and 64, widths up to GPT-2 XL's 1600.
 *
 *   test_gpu_kernels              every group
 *   test_gpu_kernels GROUP...     those groups (names: --list)
 *   test_gpu_kernels --device     only says which GPU there is (exit 0 or 77)
 *
 * Groups are independent: each seeds its own random stream, so a group
 * run alone sees the inputs it sees in a full run, and tests/gpu/run.sh
 * runs each in a process of its own, so a kernel that kills the process
 * (an illegal address is fatal to the whole CUDA context) or hangs hides
 * no other group.
 *
 * Inputs of a bf16 run are rounded to bf16 on the host first and the CPU
 * reference runs on those rounded values, so a bf16 check measures only
 * what the GPU itself adds: the rounding of its bf16 outputs (and of any
 * bf16 intermediate), not the rounding of the inputs.
 *
 * One line per check:
 *   name  shape  inputs/output dtype  max_abs  rel  tol  PASS|FAIL
 * The name, shape and dtypes are printed (and flushed) BEFORE the check's
 * kernels run, the figures and the verdict after: a kernel that dies
 * (cudaCheck reports through die(), which exits) or hangs leaves the name
 * of its check as the last line of the log, followed by the error.
 * rel = max |gpu - cpu| / max |cpu| over the output, and tol comes from
 * the table below. Outputs a kernel must write are filled with garbage
 * first, so a kernel that writes nothing cannot pass on a previous
 * result, and a reference that is all zero fails the check (it could not
 * tell a right output from a missing one) unless zero is what is checked.
 * Exit 0 when every check passes, 1 otherwise, 2 on a bad argument, and 77
 * (automake's SKIP) when no GPU is visible.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cuda_check.h"
#include "kernels.h"
#include "model.h"
#include "ops.h"
#include "optimizer.h"
#include "rng.h"

/* ---- tolerances ----
 * Relative to the largest magnitude of the reference output. The fp32
 * column applies to outputs stored in fp32 (also when the inputs were
 * bf16: the reference sees the same rounded inputs); the bf16 column to
 * outputs stored in bf16, whose own rounding is up to 2^-8 = 3.9e-3 of the
 * value. A wrong index, a missing term or a lost accumulation shows up at
 * 1e-1 or more, far above every bound. */
typedef enum {
    TOL_ROUNDING,  /* one operation and one rounding per element */
    TOL_GELU,      /* a transcendental per element */
    TOL_ROWS,      /* reductions over a row or a column, another order */
    TOL_ATTENTION, /* online softmax, sums over T keys and HS features */
    TOL_SOFTMAX,   /* log-sum-exp over the vocabulary */
    TOL_OPTIMIZER, /* optimizer.c's formula per element */
    TOL_SUMSQ,     /* a double sum of squares */
    TOL_CLASSES
} TolClass;

static const struct {
    const char *name;
    double fp32, bf16;
    const char *why;
} TOLERANCE[TOL_CLASSES] = {
    {"rounding", 1e-6, 8e-3,
     "fp32: the same single operation, at most an ulp; bf16: one rounding of the output "
     "(up to 2^-8 of the value) with 2x room"},
    {"gelu", 1e-5, 1e-2,
     "the CPU's exp approximation (2e-7) against the GPU's expf/tanhf, amplified where "
     "GELU bends; bf16: output rounding (2^-8) with 2.5x room"},
    {"rows", 1e-5, 1e-2,
     "sums of up to a few thousand terms in another order (sqrt(n) ulps ~ 1e-6)"},
    {"attention", 1e-4, 2e-2,
     "online-softmax rescaling and sums over T and HS in tiles; bf16 outputs (and any "
     "bf16 probabilities) cost a few roundings of 2^-8"},
    {"softmax", 1e-4, 1e-2,
     "the CPU adds up to 50k exponentials one by one in fp32 (~sqrt(V) ulps: 3e-5 of the "
     "largest probability at V = 50304); the GPU adds them in a tree"},
    {"optimizer", 1e-5, 1e-5,
     "the same per-element formula; only FMA contraction differs (a few ulps)"},
    {"sumsq", 1e-6, 1e-6,
     "a double sum of squares: the CPU adds exact squares, a GPU may square in fp32 "
     "(6e-8 each)"},
};

static double tol_of(TolClass k, OuroDType out) {
    return out == OURO_BF16 ? TOLERANCE[k].bf16 : TOLERANCE[k].fp32;
}

/* ---- context: the stream, the random stream, the tally and the check
 * whose line is open ---- */

typedef struct {
    cudaStream_t s;
    Rng rng;
    int checks, failed;
    int open;      /* 1 between check_begin and the end of that check's line */
    OuroDType out; /* dtype of the output of the open check */
} Ctx;

static const char *dtype_name(OuroDType t) { return t == OURO_BF16 ? "bf16" : "fp32"; }

/* ---- host bf16, round to nearest even, as __float2bfloat16_rn ---- */

static uint16_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* x[i] becomes the value dtype t stores for it. */
static void round_to(float *x, size_t n, OuroDType t) {
    if (t == OURO_BF16)
        for (size_t i = 0; i < n; i++) x[i] = bf16_value(bf16_bits(x[i]));
}

/* ---- host buffers ---- */

static float *host_normal(Ctx *c, size_t n, double mean, double sd) {
    float *x = xmalloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(mean + sd * rng_normal(&c->rng));
    return x;
}

static float *host_copy(const float *x, size_t n) {
    float *y = xmalloc((n ? n : 1) * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

static int32_t *host_tokens(Ctx *c, size_t n, int V) {
    int32_t *t = xmalloc((n ? n : 1) * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) t[i] = (int32_t)(rng_next(&c->rng) % (uint64_t)V);
    return t;
}

/* ---- device buffers ---- */

static void *dev_alloc(size_t bytes) {
    void *p = NULL;
    cudaCheck(cudaMalloc(&p, bytes ? bytes : 1));
    cudaCheck(cudaMemset(p, 0, bytes ? bytes : 1));
    return p;
}

static void dev_free(void *p) { cudaCheck(cudaFree(p)); }

/* Fills an output with 0x7f bytes, a huge finite value in fp32 and in
 * bf16 (3.4e38), before the kernel that must overwrite it: an element it
 * does not write, or adds to instead of writing, fails the comparison. */
static void poison(void *p, size_t bytes) { cudaCheck(cudaMemset(p, 0x7f, bytes)); }

/* Writes x[0, n) into device memory as dtype t (x must already hold
 * values t represents, see round_to). */
static void upload_into(void *dst, const float *x, size_t n, OuroDType t) {
    if (t == OURO_F32) {
        cudaCheck(cudaMemcpy(dst, x, n * sizeof(float), cudaMemcpyHostToDevice));
        return;
    }
    uint16_t *h = xmalloc((n ? n : 1) * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) h[i] = bf16_bits(x[i]);
    cudaCheck(cudaMemcpy(dst, h, n * sizeof(uint16_t), cudaMemcpyHostToDevice));
    free(h);
}

/* Rounds x to dtype t in place and uploads it to fresh device memory. */
static void *upload(float *x, size_t n, OuroDType t) {
    round_to(x, n, t);
    void *d = dev_alloc(n * ouro_dtype_size(t));
    upload_into(d, x, n, t);
    return d;
}

static int32_t *upload_i32(const int32_t *x, size_t n) {
    int32_t *d = dev_alloc(n * sizeof(int32_t));
    cudaCheck(cudaMemcpy(d, x, n * sizeof(int32_t), cudaMemcpyHostToDevice));
    return d;
}

/* The n values of device array d (dtype t) as host floats, after the
 * stream's queued work. */
static float *download(Ctx *c, const void *d, size_t n, OuroDType t) {
    cudaCheck(cudaStreamSynchronize(c->s));
    float *x = xmalloc((n ? n : 1) * sizeof(float));
    if (t == OURO_F32) {
        cudaCheck(cudaMemcpy(x, d, n * sizeof(float), cudaMemcpyDeviceToHost));
        return x;
    }
    uint16_t *h = xmalloc((n ? n : 1) * sizeof(uint16_t));
    cudaCheck(cudaMemcpy(h, d, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) x[i] = bf16_value(h[i]);
    free(h);
    return x;
}

/* ---- the line of a check ----
 * check_begin prints the first half (name, shape, dtypes) and flushes it
 * before any of the check's kernels is queued; one of the check_end_*
 * functions prints the figures and the verdict. run is the dtype of the
 * kernel's inputs, out that of the output compared. */

static void check_begin(Ctx *c, const char *name, const char *shape, OuroDType run,
                        OuroDType out) {
    if (c->open) die("test_gpu_kernels: check '%s' begun while another is open", name);
    printf("%-40s %-24s %s/%s  ", name, shape, dtype_name(run), dtype_name(out));
    fflush(stdout);
    c->open = 1;
    c->out = out;
}

static void check_end(Ctx *c, int ok, const char *detail) {
    if (!c->open) die("test_gpu_kernels: a check ended that was never begun");
    c->open = 0;
    c->checks++;
    if (!ok) c->failed++;
    printf("%s  %s\n", detail, ok ? "PASS" : "FAIL");
    fflush(stdout);
}

/* Ends the open check by comparing got with ref. max_abs is max |got - ref|
 * (infinite where got is NaN or infinite and ref is not), rel is max_abs
 * over max |ref|. A reference that is all zero fails unless zero_ok: it
 * would pass an output the kernel never wrote. */
static void check_end_compare(Ctx *c, const float *ref, const float *got, size_t n, double tol,
                              int zero_ok) {
    double max_abs = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < n; i++) {
        double r = ref[i], g = got[i];
        double d = fabs(g - r);
        if (isnan(d) || (isinf(g) && !isinf(r))) d = INFINITY;
        if (d > max_abs) max_abs = d;
        if (fabs(r) > max_ref) max_ref = fabs(r);
    }
    double rel = max_ref > 0.0 ? max_abs / max_ref : max_abs;
    int ok = rel <= tol; /* an infinite or NaN error fails */
    char detail[160];
    if (max_ref == 0.0 && !zero_ok) {
        ok = 0;
        snprintf(detail, sizeof detail,
                 "max_abs %.3e  the reference is all zero: nothing to compare", max_abs);
    } else {
        snprintf(detail, sizeof detail, "max_abs %.3e  rel %.3e  tol %.1e", max_abs, rel, tol);
    }
    check_end(c, ok, detail);
}

/* Ends the open check by comparing device array d, stored in the dtype
 * given to check_begin, with a host reference. */
static void check_end_device(Ctx *c, const float *ref, const void *d, size_t n, double tol) {
    float *got = download(c, d, n, c->out);
    check_end_compare(c, ref, got, n, tol, 0);
    free(got);
}

/* ---- shapes ---- */

typedef struct {
    int B, T, C, NH;
} Shape;

static const Shape SHAPES[] = {
    {2, 37, 32, 4},   /* HS 8, T shorter than one 64-token tile */
    {1, 65, 64, 2},   /* HS 32, T one past a multiple of 64 */
    {2, 128, 128, 2}, /* HS 64, whole tiles */
    {1, 200, 192, 3}, /* HS 64, T = 3*64 + 8 */
    {3, 1, 64, 1},    /* HS 64, one token per sequence */
    {1, 17, 768, 12}, /* GPT-2 small's width */
    {1, 9, 1600, 25}, /* GPT-2 XL's width */
};
#define N_SHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

static void shape_text(char *out, size_t len, const Shape *s) {
    snprintf(out, len, "B=%d T=%d C=%d NH=%d", s->B, s->T, s->C, s->NH);
}

static const OuroDType DTYPES[2] = {OURO_F32, OURO_BF16};

/* ---- conversions and element-wise ---- */

static void test_cast(Ctx *c, size_t n) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%zu", n);
    float *x = host_normal(c, n, 0.0, 10.0);
    float *xr = host_copy(x, n);
    round_to(xr, n, OURO_BF16);
    void *f32 = upload(x, n, OURO_F32);
    void *b16 = dev_alloc(n * 2), *back = dev_alloc(n * 4);
    void *same32 = dev_alloc(n * 4), *same16 = dev_alloc(n * 2);
    /* fp32 -> bf16 must round to nearest even, exactly as the host does */
    check_begin(c, "cast fp32->bf16", shape, OURO_F32, OURO_BF16);
    k_cast(b16, OURO_BF16, f32, OURO_F32, n, c->s);
    check_end_device(c, xr, b16, n, 0.0);
    check_begin(c, "cast bf16->fp32", shape, OURO_BF16, OURO_F32);
    k_cast(back, OURO_F32, b16, OURO_BF16, n, c->s);
    check_end_device(c, xr, back, n, 0.0);
    check_begin(c, "cast fp32->fp32", shape, OURO_F32, OURO_F32);
    k_cast(same32, OURO_F32, f32, OURO_F32, n, c->s);
    check_end_device(c, x, same32, n, 0.0);
    check_begin(c, "cast bf16->bf16", shape, OURO_BF16, OURO_BF16);
    k_cast(same16, OURO_BF16, b16, OURO_BF16, n, c->s);
    check_end_device(c, xr, same16, n, 0.0);
    dev_free(f32);
    dev_free(b16);
    dev_free(back);
    dev_free(same32);
    dev_free(same16);
    free(x);
    free(xr);
}

/* y = a + b on the host: the reference of the residual kernels */
static void host_add(float *y, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

static void test_elementwise(Ctx *c, size_t n, OuroDType t) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%zu", n);
    float *a = host_normal(c, n, 0.0, 1.0), *b = host_normal(c, n, 0.0, 1.0);
    void *da = upload(a, n, OURO_F32), *db = upload(b, n, t);
    float *ref = xmalloc(n * sizeof(float));
    double tol = tol_of(TOL_ROUNDING, OURO_F32); /* every output here is fp32 */

    /* y = a + b, into a fresh y and in place (y = a) */
    host_add(ref, a, b, n);
    float *dy = dev_alloc(n * 4);
    poison(dy, n * 4);
    check_begin(c, "residual_forward", shape, t, OURO_F32);
    k_residual_forward(dy, da, db, t, n, c->s);
    check_end_device(c, ref, dy, n, tol);
    check_begin(c, "residual_forward (y = a)", shape, t, OURO_F32);
    k_residual_forward(da, da, db, t, n, c->s);
    check_end_device(c, ref, da, n, tol);

    /* dst += src: ref (= a + b) + b */
    float *acc = host_copy(ref, n);
    for (size_t i = 0; i < n; i++) acc[i] += b[i];
    check_begin(c, "accumulate", shape, t, OURO_F32);
    k_accumulate(da, db, t, n, c->s);
    check_end_device(c, acc, da, n, tol);

    if (t == OURO_F32) { /* x *= a, fp32 only */
        for (size_t i = 0; i < n; i++) acc[i] *= -0.37f;
        check_begin(c, "scale", shape, t, OURO_F32);
        k_scale((float *)da, -0.37f, n, c->s);
        check_end_device(c, acc, da, n, tol);
    }
    dev_free(da);
    dev_free(db);
    dev_free(dy);
    free(a);
    free(b);
    free(ref);
    free(acc);
}

/* ---- embedding ---- */

/* Positions grouped by token, stably (counting sort), as kernels.h asks:
 * order[N], seg_start[n_seg + 1], seg_token[n_seg]. Returns n_seg. */
static int group_by_token(const int32_t *tokens, int N, int V, int32_t *order,
                          int32_t *seg_start, int32_t *seg_token) {
    int32_t *count = xcalloc((size_t)V + 1, sizeof(int32_t));
    for (int i = 0; i < N; i++) count[tokens[i] + 1]++;
    for (int v = 0; v < V; v++) count[v + 1] += count[v]; /* count[v]: first slot of v */
    int n_seg = 0;
    for (int v = 0; v < V; v++)
        if (count[v + 1] > count[v]) {
            seg_token[n_seg] = v;
            seg_start[n_seg] = count[v];
            n_seg++;
        }
    seg_start[n_seg] = N;
    for (int i = 0; i < N; i++) order[count[tokens[i]]++] = i;
    free(count);
    return n_seg;
}

static void test_embedding(Ctx *c, const Shape *s) {
    char shape[64];
    shape_text(shape, sizeof shape, s);
    int B = s->B, T = s->T, C = s->C, N = B * T, V = 50;
    size_t NC = (size_t)N * C;
    /* many repeats: most tokens from 0..6, every fifth the last one */
    int32_t *tok = xmalloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++)
        tok[i] = rng_next(&c->rng) % 5 == 0 ? V - 1 : (int32_t)(rng_next(&c->rng) % 7);
    float *wte = host_normal(c, (size_t)V * C, 0.0, 1.0);
    float *wpe = host_normal(c, (size_t)T * C, 0.0, 1.0);
    float *out = xmalloc(NC * sizeof(float));
    embedding_forward(out, tok, wte, wpe, B, T, C);
    int32_t *dtok = upload_i32(tok, (size_t)N);
    float *dwte_p = upload(wte, (size_t)V * C, OURO_F32);
    float *dwpe_p = upload(wpe, (size_t)T * C, OURO_F32);
    float *dout_dev = dev_alloc(NC * 4);
    poison(dout_dev, NC * 4);
    check_begin(c, "embedding_forward", shape, OURO_F32, OURO_F32);
    k_embedding_forward(dout_dev, dtok, dwte_p, dwpe_p, B, T, C, c->s);
    check_end_device(c, out, dout_dev, NC, tol_of(TOL_ROUNDING, OURO_F32));

    /* backward: gradients accumulate onto non-zero starting values; the
     * sums over positions may associate differently (the start value
     * added first or last), so row-sum bounds */
    double tol = tol_of(TOL_ROWS, OURO_F32);
    float *dout = host_normal(c, NC, 0.0, 1.0);
    float *gwte = host_normal(c, (size_t)V * C, 0.0, 0.1);
    float *gwpe = host_normal(c, (size_t)T * C, 0.0, 0.1);
    float *d_dout = upload(dout, NC, OURO_F32);
    float *d_gwte = upload(gwte, (size_t)V * C, OURO_F32);
    float *d_gwpe = upload(gwpe, (size_t)T * C, OURO_F32);
    embedding_backward(gwte, gwpe, dout, tok, B, T, C);
    check_begin(c, "embedding_backward_wpe", shape, OURO_F32, OURO_F32);
    k_embedding_backward_wpe(d_gwpe, d_dout, B, T, C, c->s);
    check_end_device(c, gwpe, d_gwpe, (size_t)T * C, tol);
    int32_t *order = xmalloc((size_t)N * sizeof(int32_t));
    int32_t *seg_start = xmalloc(((size_t)N + 1) * sizeof(int32_t));
    int32_t *seg_token = xmalloc((size_t)N * sizeof(int32_t));
    int n_seg = group_by_token(tok, N, V, order, seg_start, seg_token);
    int32_t *d_order = upload_i32(order, (size_t)N);
    int32_t *d_seg_start = upload_i32(seg_start, (size_t)n_seg + 1);
    int32_t *d_seg_token = upload_i32(seg_token, (size_t)n_seg);
    check_begin(c, "embedding_backward_wte", shape, OURO_F32, OURO_F32);
    k_embedding_backward_wte(d_gwte, d_dout, d_order, d_seg_start, d_seg_token, n_seg, C, c->s);
    check_end_device(c, gwte, d_gwte, (size_t)V * C, tol);

    void *devs[] = {dtok, dwte_p, dwpe_p, dout_dev, d_dout, d_gwte, d_gwpe,
                    d_order, d_seg_start, d_seg_token};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) dev_free(devs[i]);
    void *hosts[] = {tok, wte, wpe, out, dout, gwte, gwpe, order, seg_start, seg_token};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) free(hosts[i]);
}

/* ---- LayerNorm ---- */

static void test_layernorm(Ctx *c, const Shape *s, OuroDType t) {
    char shape[64], name[64];
    shape_text(shape, sizeof shape, s);
    int N = s->B * s->T, C = s->C;
    size_t NC = (size_t)N * C, ybytes = NC * ouro_dtype_size(t);
    double tol_y = tol_of(TOL_ROWS, t), tol_f = tol_of(TOL_ROWS, OURO_F32);
    /* an offset and a spread, as the residual stream has */
    float *x = host_normal(c, NC, 0.3, 2.0);
    float *w = host_normal(c, (size_t)C, 1.0, 0.1), *b = host_normal(c, (size_t)C, 0.0, 0.1);
    float *y = xmalloc(NC * sizeof(float)), *mean = xmalloc((size_t)N * sizeof(float));
    float *rstd = xmalloc((size_t)N * sizeof(float));
    layernorm_forward(y, mean, rstd, x, w, b, N, C);
    float *dx_ = upload(x, NC, OURO_F32), *dw = upload(w, (size_t)C, OURO_F32);
    float *db = upload(b, (size_t)C, OURO_F32);
    void *dy = dev_alloc(ybytes);
    float *dmean = dev_alloc((size_t)N * 4), *drstd = dev_alloc((size_t)N * 4);
    poison(dy, ybytes);
    poison(dmean, (size_t)N * 4);
    poison(drstd, (size_t)N * 4);
    check_begin(c, "layernorm_forward.y", shape, t, t);
    k_layernorm_forward(dy, t, dmean, drstd, dx_, dw, db, N, C, c->s);
    check_end_device(c, y, dy, NC, tol_y);
    check_begin(c, "layernorm_forward.mean", shape, t, OURO_F32);
    check_end_device(c, mean, dmean, (size_t)N, tol_f);
    check_begin(c, "layernorm_forward.rstd", shape, t, OURO_F32);
    check_end_device(c, rstd, drstd, (size_t)N, tol_f);

    /* fused residual + LayerNorm: res = a + r, y = LN(res); res apart and
     * res = a. Every output is poisoned before each call, so the second
     * call cannot pass on what the first one wrote. */
    float *a = host_normal(c, NC, 0.3, 1.5), *r = host_normal(c, NC, 0.0, 1.0);
    float *da = upload(a, NC, OURO_F32);
    void *dr = upload(r, NC, t);
    float *res = xmalloc(NC * sizeof(float));
    host_add(res, a, r, NC);
    layernorm_forward(y, mean, rstd, res, w, b, N, C);
    float *dres = dev_alloc(NC * 4);
    for (int in_place = 0; in_place < 2; in_place++) {
        float *out_res = in_place ? da : dres;
        const char *tag = in_place ? " (res = a)" : "";
        if (!in_place) poison(dres, NC * 4);
        poison(dy, ybytes);
        poison(dmean, (size_t)N * 4);
        poison(drstd, (size_t)N * 4);
        snprintf(name, sizeof name, "residual_layernorm.res%s", tag);
        check_begin(c, name, shape, t, OURO_F32);
        k_residual_layernorm_forward(out_res, dy, t, dmean, drstd, da, dr, t, dw, db, N, C,
                                     c->s);
        check_end_device(c, res, out_res, NC, tol_of(TOL_ROUNDING, OURO_F32));
        snprintf(name, sizeof name, "residual_layernorm.y%s", tag);
        check_begin(c, name, shape, t, t);
        check_end_device(c, y, dy, NC, tol_y);
        snprintf(name, sizeof name, "residual_layernorm.mean%s", tag);
        check_begin(c, name, shape, t, OURO_F32);
        check_end_device(c, mean, dmean, (size_t)N, tol_f);
        snprintf(name, sizeof name, "residual_layernorm.rstd%s", tag);
        check_begin(c, name, shape, t, OURO_F32);
        check_end_device(c, rstd, drstd, (size_t)N, tol_f);
    }

    /* backward, accumulating onto non-zero dx, dw, db (the CPU's
     * layernorm_backward accumulates too); mean and rstd of the CPU
     * forward of res, given to both */
    float *g = host_normal(c, NC, 0.0, 1.0);
    void *dg = upload(g, NC, t);
    float *gx = host_normal(c, NC, 0.0, 0.1), *gw = host_normal(c, (size_t)C, 0.0, 0.1);
    float *gb = host_normal(c, (size_t)C, 0.0, 0.1);
    float *dgx = upload(gx, NC, OURO_F32), *dgw = upload(gw, (size_t)C, OURO_F32);
    float *dgb = upload(gb, (size_t)C, OURO_F32);
    float *dres_in = upload(res, NC, OURO_F32);
    upload_into(dmean, mean, (size_t)N, OURO_F32);
    upload_into(drstd, rstd, (size_t)N, OURO_F32);
    float *scratch = dev_alloc(k_layernorm_backward_scratch_floats(N, C) * 4);
    layernorm_backward(gx, gw, gb, g, res, w, mean, rstd, N, C);
    check_begin(c, "layernorm_backward.dx", shape, t, OURO_F32);
    k_layernorm_backward(dgx, dgw, dgb, scratch, dg, t, dres_in, dw, dmean, drstd, N, C, c->s);
    check_end_device(c, gx, dgx, NC, tol_f);
    check_begin(c, "layernorm_backward.dw", shape, t, OURO_F32);
    check_end_device(c, gw, dgw, (size_t)C, tol_f);
    check_begin(c, "layernorm_backward.db", shape, t, OURO_F32);
    check_end_device(c, gb, dgb, (size_t)C, tol_f);

    void *devs[] = {dx_, dw, db, dy, dmean, drstd, da, dr, dres, dg, dgx, dgw, dgb, dres_in,
                    scratch};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) dev_free(devs[i]);
    void *hosts[] = {x, w, b, y, mean, rstd, a, r, res, g, gx, gw, gb};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) free(hosts[i]);
}

/* ---- bias ---- */

static void test_bias(Ctx *c, int N, int OC, OuroDType t) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d OC=%d", N, OC);
    size_t n = (size_t)N * OC;
    float *y = host_normal(c, n, 0.0, 1.0), *bias = host_normal(c, (size_t)OC, 0.0, 1.0);
    void *dy = upload(y, n, t);
    float *dbias = upload(bias, (size_t)OC, OURO_F32);
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) y[(size_t)i * OC + o] += bias[o];
    check_begin(c, "add_bias", shape, t, t);
    k_add_bias(dy, t, dbias, N, OC, c->s);
    check_end_device(c, y, dy, n, tol_of(TOL_ROUNDING, t));

    /* dbias += column sums of dy, the reference in double */
    float *g = host_normal(c, n, 0.0, 1.0);
    void *dg = upload(g, n, t);
    float *acc = host_normal(c, (size_t)OC, 0.0, 0.1);
    float *dacc = upload(acc, (size_t)OC, OURO_F32);
    for (int o = 0; o < OC; o++) {
        double sum = acc[o];
        for (int i = 0; i < N; i++) sum += g[(size_t)i * OC + o];
        acc[o] = (float)sum;
    }
    float *scratch = dev_alloc(k_bias_backward_scratch_floats(N, OC) * 4);
    check_begin(c, "bias_backward", shape, t, OURO_F32);
    k_bias_backward(dacc, scratch, dg, t, N, OC, c->s);
    check_end_device(c, acc, dacc, (size_t)OC, tol_of(TOL_ROWS, OURO_F32));
    dev_free(dy);
    dev_free(dbias);
    dev_free(dg);
    dev_free(dacc);
    dev_free(scratch);
    free(y);
    free(bias);
    free(g);
    free(acc);
}

/* ---- GELU ---- */

static void test_gelu(Ctx *c, size_t n, OuroDType t) {
    char shape[64];
    snprintf(shape, sizeof shape, "n=%zu", n);
    double tol = tol_of(TOL_GELU, t);
    size_t bytes = n * ouro_dtype_size(t);
    float *x = host_normal(c, n, 0.0, 3.0), *g = host_normal(c, n, 0.0, 1.0);
    void *dx_in = upload(x, n, t), *dg = upload(g, n, t);
    float *y = xmalloc(n * sizeof(float)), *dx = xmalloc(n * sizeof(float));
    gelu_forward(y, x, (int)n);
    void *dy = dev_alloc(bytes);
    poison(dy, bytes);
    check_begin(c, "gelu_forward", shape, t, t);
    k_gelu_forward(dy, dx_in, t, n, c->s);
    check_end_device(c, y, dy, n, tol);
    /* the CPU's backward reads the forward's y, the GPU's only x */
    gelu_backward(dx, NULL, x, y, g, 1, (int)n);
    void *ddx = dev_alloc(bytes);
    poison(ddx, bytes);
    check_begin(c, "gelu_backward", shape, t, t);
    k_gelu_backward(ddx, dx_in, dg, t, n, c->s);
    check_end_device(c, dx, ddx, n, tol);
    check_begin(c, "gelu_backward (dx = dy)", shape, t, t);
    k_gelu_backward(dg, dx_in, dg, t, n, c->s); /* in place: dx = dy */
    check_end_device(c, dx, dg, n, tol);
    dev_free(dx_in);
    dev_free(dg);
    dev_free(dy);
    dev_free(ddx);
    free(x);
    free(g);
    free(y);
    free(dx);
}

/* ---- attention ---- */

/* lse[b,h,t] = log sum_{j<=t} exp(scale q_t . k_j), in double from the
 * same qkv the GPU read. */
static void attention_lse(float *lse, const float *qkv, int B, int T, int C, int NH) {
    int hs = C / NH;
    double scale = 1.0 / sqrt((double)hs);
    double *s = xmalloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float *q = qkv + ((size_t)b * T + t) * 3 * C + (size_t)h * hs;
                double mx = -INFINITY;
                for (int j = 0; j <= t; j++) {
                    const float *k = qkv + ((size_t)b * T + j) * 3 * C + C + (size_t)h * hs;
                    double d = 0.0;
                    for (int e = 0; e < hs; e++) d += (double)q[e] * k[e];
                    s[j] = d * scale;
                    if (s[j] > mx) mx = s[j];
                }
                double sum = 0.0;
                for (int j = 0; j <= t; j++) sum += exp(s[j] - mx);
                lse[((size_t)b * NH + h) * T + t] = (float)(mx + log(sum));
            }
    free(s);
}

/* One attention path's forward and backward against the CPU's (out, lse,
 * ref from the same qkv and g, already rounded to t). */
static void test_attention_path(Ctx *c, KAttentionPath path, const char *shape, const Shape *s,
                                OuroDType t, const float *qkv, const float *out,
                                const float *lse, const float *g, const float *ref) {
    int B = s->B, T = s->T, C = s->C, NH = s->NH;
    size_t NC = (size_t)B * T * C, N3C = 3 * NC, NL = (size_t)B * NH * T;
    size_t es = ouro_dtype_size(t);
    double tol = tol_of(TOL_ATTENTION, t);
    const char *pn = k_attention_path_name(path);
    char name[64];
    void *dqkv_in = dev_alloc(N3C * es);
    upload_into(dqkv_in, qkv, N3C, t);
    void *dout = dev_alloc(NC * es);
    float *dlse = dev_alloc(NL * 4);
    poison(dout, NC * es);
    poison(dlse, NL * 4);
    snprintf(name, sizeof name, "attention_forward.out [%s]", pn);
    check_begin(c, name, shape, t, t);
    k_attention_forward_path(path, dout, dlse, dqkv_in, t, B, T, C, NH, c->s);
    check_end_device(c, out, dout, NC, tol);
    snprintf(name, sizeof name, "attention_forward.lse [%s]", pn);
    check_begin(c, name, shape, t, OURO_F32);
    check_end_device(c, lse, dlse, NL, tol_of(TOL_ATTENTION, OURO_F32));

    /* backward from the GPU's own out and lse, as the backend runs it; the
     * CPU's attention_backward and the GPU's both OVERWRITE dqkv (the
     * GPU's starts as garbage) */
    void *dg = dev_alloc(NC * es);
    upload_into(dg, g, NC, t);
    void *dgrad = dev_alloc(N3C * es);
    poison(dgrad, N3C * es);
    float *scratch = dev_alloc(k_attention_backward_scratch_floats(B, T, C, NH) * 4);
    snprintf(name, sizeof name, "attention_backward.dqkv [%s]", pn);
    check_begin(c, name, shape, t, t);
    k_attention_backward_path(path, dgrad, scratch, dg, dqkv_in, dout, dlse, t, B, T, C, NH,
                              c->s);
    check_end_device(c, ref, dgrad, N3C, tol);

    dev_free(dqkv_in);
    dev_free(dout);
    dev_free(dlse);
    dev_free(dg);
    dev_free(dgrad);
    dev_free(scratch);
}

/* Every path that takes this dtype and head size (attention.cu's header),
 * each against the same CPU results. */
static void test_attention(Ctx *c, const Shape *s, OuroDType t) {
    char shape[64];
    shape_text(shape, sizeof shape, s);
    int B = s->B, T = s->T, C = s->C, NH = s->NH, HS = C / NH;
    if (!k_attention_supported(HS)) {
        char why[96];
        snprintf(why, sizeof why, "k_attention_supported(%d) = 0: the model needs it", HS);
        check_begin(c, "attention", shape, t, t);
        check_end(c, 0, why);
        return;
    }
    size_t NC = (size_t)B * T * C, N3C = 3 * NC, NL = (size_t)B * NH * T;
    /* scores of standard deviation 1.5: some rows peaked, some flat */
    float *qkv = host_normal(c, N3C, 0.0, sqrt(1.5));
    float *g = host_normal(c, NC, 0.0, 1.0);
    /* the CPU computes from exactly what the GPU reads */
    round_to(qkv, N3C, t);
    round_to(g, NC, t);
    float *out = xmalloc(NC * sizeof(float)), *lse = xmalloc(NL * sizeof(float));
    float *att = xmalloc((size_t)B * NH * T * T * sizeof(float));
    float *scratch_cpu = xmalloc(attention_scratch_floats(T, C, NH) * sizeof(float));
    attention_forward(out, att, scratch_cpu, qkv, B, T, C, NH);
    attention_lse(lse, qkv, B, T, C, NH);
    float *ref = xcalloc(N3C, sizeof(float));
    attention_backward(ref, scratch_cpu, g, qkv, att, B, T, C, NH);

    const KAttentionPath paths[] = {K_ATTENTION_SIMT, K_ATTENTION_WMMA, K_ATTENTION_MMA};
    for (int i = 0; i < (int)(sizeof paths / sizeof paths[0]); i++)
        if (k_attention_path_usable(paths[i], t, HS))
            test_attention_path(c, paths[i], shape, s, t, qkv, out, lse, g, ref);

    free(qkv);
    free(out);
    free(lse);
    free(att);
    free(g);
    free(ref);
    free(scratch_cpu);
}

/* ---- cross-entropy ---- */

static void test_crossentropy(Ctx *c, int N, int V, OuroDType t) {
    char shape[64];
    snprintf(shape, sizeof shape, "N=%d V=%d", N, V);
    size_t n = (size_t)N * V;
    float *logits = host_normal(c, n, 0.0, 3.0);
    void *dlogits = upload(logits, n, t);
    int32_t *tg = host_tokens(c, (size_t)N, V);
    int32_t *dtg = upload_i32(tg, (size_t)N);
    /* reference lse in double; losses and dlogits from the CPU ops, whose
     * forward turns (a copy of) the logits into probabilities in place */
    float *lse = xmalloc((size_t)N * sizeof(float)), *loss = xmalloc((size_t)N * sizeof(float));
    for (int i = 0; i < N; i++) {
        const float *row = logits + (size_t)i * V;
        double mx = row[0], sum = 0.0;
        for (int j = 1; j < V; j++) mx = row[j] > mx ? row[j] : mx;
        for (int j = 0; j < V; j++) sum += exp(row[j] - mx);
        lse[i] = (float)(mx + log(sum));
    }
    float *probs = host_copy(logits, n);
    softmax_crossentropy_forward(probs, loss, tg, N, V);
    float *dloss = dev_alloc((size_t)N * 4), *dlse = dev_alloc((size_t)N * 4);
    double tol_f = tol_of(TOL_SOFTMAX, OURO_F32);
    /* without targets only the lse is written */
    poison(dlse, (size_t)N * 4);
    check_begin(c, "crossentropy_forward.lse (no targets)", shape, t, OURO_F32);
    k_crossentropy_forward(dloss, dlse, dlogits, t, NULL, N, V, c->s);
    check_end_device(c, lse, dlse, (size_t)N, tol_f);
    /* with targets both; poisoned again so the lse of the call without
     * targets cannot stand in for this one's */
    poison(dlse, (size_t)N * 4);
    poison(dloss, (size_t)N * 4);
    check_begin(c, "crossentropy_forward.losses", shape, t, OURO_F32);
    k_crossentropy_forward(dloss, dlse, dlogits, t, dtg, N, V, c->s);
    check_end_device(c, loss, dloss, (size_t)N, tol_f);
    check_begin(c, "crossentropy_forward.lse", shape, t, OURO_F32);
    check_end_device(c, lse, dlse, (size_t)N, tol_f);
    /* the CPU writes (probs - onehot) * scale over its probabilities; the
     * GPU overwrites the logits in place from them and the lse */
    float scale = 1.0f / (float)N;
    softmax_crossentropy_backward(probs, probs, tg, scale, N, V);
    check_begin(c, "crossentropy_backward.dlogits", shape, t, t);
    k_crossentropy_backward(dlogits, dlse, dtg, scale, t, N, V, c->s);
    check_end_device(c, probs, dlogits, n, tol_of(TOL_SOFTMAX, t));
    dev_free(dlogits);
    dev_free(dtg);
    dev_free(dloss);
    dev_free(dlse);
    free(logits);
    free(tg);
    free(lse);
    free(loss);
    free(probs);
}

/* ---- optimizer ---- */

/* A layout of one tensor of n floats, a matrix (weight decay applies), so
 * optimizer_update is the reference as it stands. */
static void one_tensor_layout(ParamLayout *pl, TensorInfo *ti, size_t n) {
    memset(pl, 0, sizeof *pl);
    memset(ti, 0, sizeof *ti);
    snprintf(ti->name, sizeof ti->name, "test.weight");
    ti->ndim = 1;
    ti->shape[0] = (int)n;
    ti->numel = n;
    ti->is_matrix = 1;
    ti->block = -1;
    pl->n_tensors = 1;
    pl->tensors = ti;
    pl->n_params = n;
}

static void test_optimizer(Ctx *c, size_t n, int adam, float momentum, int with_bf16) {
    char shape[64], name[64];
    snprintf(shape, sizeof shape, "n=%zu%s", n, with_bf16 ? "" : " p_bf16=NULL");
    const char *what = adam ? "adamw" : momentum > 0.0f ? "sgd momentum" : "sgd";
    ParamLayout pl;
    TensorInfo ti;
    one_tensor_layout(&pl, &ti, n);
    OptimizerSpec o = {adam, 0.9f, 0.95f, 1e-8f, 0.1f, momentum};
    float lr = 3e-3f, grad_scale = 0.5f;
    float *p = host_normal(c, n, 0.0, 0.05);
    float *m = xcalloc(n, sizeof(float)), *v = xcalloc(n, sizeof(float));
    float *dp = upload(p, n, OURO_F32), *dm = dev_alloc(n * 4), *dv = dev_alloc(n * 4);
    void *dpb = with_bf16 ? dev_alloc(n * 2) : NULL;
    if (dpb) poison(dpb, n * 2);
    float *dg = dev_alloc(n * 4);
    float *zero = xcalloc(n, sizeof(float));
    for (long step = 1; step <= 3; step++) {
        float *g = host_normal(c, n, 0.0, 0.01);
        upload_into(dg, g, n, OURO_F32);
        optimizer_update(&pl, &o, p, g, m, v, 0, 1, grad_scale, lr, step);
        /* the update zeroes the gradient it read (which was not zero) */
        snprintf(name, sizeof name, "%s step %ld: g zeroed", what, step);
        check_begin(c, name, shape, OURO_F32, OURO_F32);
        if (adam) {
            /* optimizer.c's bias corrections, in float */
            float c1 = 1.0f - powf(o.beta1, (float)step), c2 = 1.0f - powf(o.beta2, (float)step);
            k_adamw_update(dp, dpb, dg, dm, dv, n, lr, o.beta1, o.beta2, o.eps,
                           o.weight_decay, c1, c2, grad_scale, c->s);
        } else {
            k_sgd_update(dp, dpb, dg, momentum > 0.0f ? dm : NULL, n, lr, momentum,
                         o.weight_decay, grad_scale, c->s);
        }
        float *got = download(c, dg, n, OURO_F32);
        check_end_compare(c, zero, got, n, 0.0, 1);
        free(got);
        free(g);
    }
    double tol = tol_of(TOL_OPTIMIZER, OURO_F32);
    snprintf(name, sizeof name, "%s x3: p", what);
    check_begin(c, name, shape, OURO_F32, OURO_F32);
    check_end_device(c, p, dp, n, tol);
    if (adam || momentum > 0.0f) {
        snprintf(name, sizeof name, "%s x3: m", what);
        check_begin(c, name, shape, OURO_F32, OURO_F32);
        check_end_device(c, m, dm, n, tol);
    }
    if (adam) {
        snprintf(name, sizeof name, "%s x3: v", what);
        check_begin(c, name, shape, OURO_F32, OURO_F32);
        check_end_device(c, v, dv, n, tol);
    }
    if (with_bf16) {
        /* exactly the rounding of the fp32 weight the update wrote */
        snprintf(name, sizeof name, "%s x3: p_bf16 = bf16(p)", what);
        check_begin(c, name, shape, OURO_BF16, OURO_BF16);
        float *pr = download(c, dp, n, OURO_F32);
        round_to(pr, n, OURO_BF16);
        check_end_device(c, pr, dpb, n, 0.0);
        free(pr);
        dev_free(dpb);
    }
    dev_free(dp);
    dev_free(dm);
    dev_free(dv);
    dev_free(dg);
    free(p);
    free(m);
    free(v);
    free(zero);
}

/* ---- reductions (these two synchronize the stream themselves) ---- */

static void test_sumsq(Ctx *c, size_t n) {
    char shape[64], detail[160];
    snprintf(shape, sizeof shape, "n=%zu", n);
    float *x = host_normal(c, n, 0.0, 1.0);
    double ref = 0.0;
    for (size_t i = 0; i < n; i++) ref += (double)x[i] * (double)x[i];
    float *dx = upload(x, n, OURO_F32);
    float *scratch = dev_alloc(k_sumsq_scratch_floats(n) * 4);
    double tol = tol_of(TOL_SUMSQ, OURO_F32);
    check_begin(c, "sumsq", shape, OURO_F32, OURO_F32);
    double got = k_sumsq(dx, n, scratch, c->s);
    double err = fabs(got - ref), rel = ref > 0 ? err / ref : INFINITY;
    snprintf(detail, sizeof detail, "max_abs %.3e  rel %.3e  tol %.1e  (gpu %.10g, host %.10g)",
             err, rel, tol, got, ref);
    check_end(c, rel <= tol, detail);
    check_begin(c, "sumsq repeats bit for bit", shape, OURO_F32, OURO_F32);
    double again = k_sumsq(dx, n, scratch, c->s);
    snprintf(detail, sizeof detail, "two calls: %a and %a", got, again);
    check_end(c, memcmp(&got, &again, sizeof got) == 0, detail);
    dev_free(dx);
    dev_free(scratch);
    free(x);
}

/* One scan: x holds a NaN, +inf or -inf at each position of bad[0, k)
 * (k may be 0); the answer must be the smallest of them, or -1. */
static void scan_nonfinite(Ctx *c, size_t n, const size_t *bad, int k) {
    static const float specials[3] = {NAN, INFINITY, -INFINITY};
    char shape[64], name[64], detail[128];
    snprintf(shape, sizeof shape, "n=%zu", n);
    float *x = host_normal(c, n, 0.0, 1e30); /* huge but finite values too */
    long want = -1;
    for (int i = 0; i < k; i++) {
        x[bad[i]] = specials[i % 3];
        if (want < 0 || (long)bad[i] < want) want = (long)bad[i];
    }
    float *dx = upload(x, n, OURO_F32);
    float *scratch = dev_alloc(k_sumsq_scratch_floats(n) * 4);
    snprintf(name, sizeof name, "first_nonfinite (%d non-finite)", k);
    check_begin(c, name, shape, OURO_F32, OURO_F32);
    long got = k_first_nonfinite(dx, n, scratch, c->s);
    snprintf(detail, sizeof detail, "gpu %ld, expected %ld", got, want);
    check_end(c, got == want, detail);
    dev_free(dx);
    dev_free(scratch);
    free(x);
}

static void test_first_nonfinite(Ctx *c, size_t n) {
    scan_nonfinite(c, n, NULL, 0);
    size_t last = n - 1;
    scan_nonfinite(c, n, &last, 1);
    size_t first = 0;
    scan_nonfinite(c, n, &first, 1);
    if (n > 2) {
        /* the later ones listed first, in other blocks where n is large */
        size_t several[3] = {n - 1, n / 2 + 1, n / 3};
        scan_nonfinite(c, n, several, 3);
    }
}

/* ---- groups ---- */

static const size_t ELEMENT_SIZES[] = {1, 7, 4099, (1u << 20) + 5};
#define N_ELEMENT_SIZES (sizeof ELEMENT_SIZES / sizeof ELEMENT_SIZES[0])

static void group_cast(Ctx *c) {
    for (size_t i = 0; i < N_ELEMENT_SIZES; i++) test_cast(c, ELEMENT_SIZES[i]);
}

static void group_elementwise(Ctx *c) {
    for (int d = 0; d < 2; d++)
        for (size_t i = 0; i < N_ELEMENT_SIZES; i++)
            test_elementwise(c, ELEMENT_SIZES[i], DTYPES[d]);
}

static void group_gelu(Ctx *c) {
    for (int d = 0; d < 2; d++)
        for (size_t i = 0; i < N_ELEMENT_SIZES; i++) test_gelu(c, ELEMENT_SIZES[i], DTYPES[d]);
}

static void group_embedding(Ctx *c) {
    for (int i = 0; i < N_SHAPES; i++) test_embedding(c, &SHAPES[i]);
}

static void group_layernorm(Ctx *c) {
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < N_SHAPES; i++) test_layernorm(c, &SHAPES[i], DTYPES[d]);
}

static void group_attention(Ctx *c) {
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < N_SHAPES; i++) test_attention(c, &SHAPES[i], DTYPES[d]);
}

/* the products' widths (3C, C, 4C), and a tall one that needs several
 * row blocks */
static void group_bias(Ctx *c) {
    static const int shapes[][2] = {{74, 96}, {65, 64}, {17, 3072}, {5003, 384}};
    for (int d = 0; d < 2; d++)
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            test_bias(c, shapes[i][0], shapes[i][1], DTYPES[d]);
}

/* byte vocabulary, odd sizes, GPT-2's padded and real vocabularies */
static void group_crossentropy(Ctx *c) {
    static const int shapes[][2] = {{74, 256}, {130, 1001}, {65, 50304}, {3, 50257}};
    for (int d = 0; d < 2; d++)
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            test_crossentropy(c, shapes[i][0], shapes[i][1], DTYPES[d]);
}

static void group_optimizer(Ctx *c) {
    static const size_t sizes[] = {1, 1000, (1u << 20) + 3};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        test_optimizer(c, sizes[i], 1, 0.0f, 1);
        test_optimizer(c, sizes[i], 0, 0.0f, 1);
        test_optimizer(c, sizes[i], 0, 0.9f, 1);
    }
    test_optimizer(c, 1000, 1, 0.0f, 0);
    test_optimizer(c, 1000, 0, 0.9f, 0);
}

static void group_reductions(Ctx *c) {
    static const size_t sizes[] = {1, 257, 16384, (1u << 22) + 13};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        test_sumsq(c, sizes[i]);
        test_first_nonfinite(c, sizes[i]);
    }
}

typedef struct {
    const char *name;
    void (*run)(Ctx *c);
} Group;

static const Group GROUPS[] = {
    {"cast", group_cast},
    {"elementwise", group_elementwise},
    {"gelu", group_gelu},
    {"embedding", group_embedding},
    {"layernorm", group_layernorm},
    {"attention", group_attention},
    {"bias", group_bias},
    {"crossentropy", group_crossentropy},
    {"optimizer", group_optimizer},
    {"reductions", group_reductions},
};
#define N_GROUPS ((int)(sizeof GROUPS / sizeof GROUPS[0]))

static int find_group(const char *name) {
    for (int g = 0; g < N_GROUPS; g++)
        if (strcmp(GROUPS[g].name, name) == 0) return g;
    return -1;
}

/* Runs group g on a random stream of its own, so its inputs do not
 * depend on which groups ran before it. */
static void run_group(Ctx *c, int g) {
    int checks = c->checks, failed = c->failed;
    printf("== group %s\n", GROUPS[g].name);
    fflush(stdout);
    rng_seed(&c->rng, hash_u64(20240520, (uint64_t)g, 0, 0));
    GROUPS[g].run(c);
    printf("== group %s: %d checks, %d failed\n", GROUPS[g].name, c->checks - checks,
           c->failed - failed);
    fflush(stdout);
}

/* ---- main ---- */

static int gpu_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
    return n;
}

static void usage(FILE *f) {
    fprintf(f, "usage: test_gpu_kernels [--list | --device | GROUP...]\ngroups:");
    for (int g = 0; g < N_GROUPS; g++) fprintf(f, " %s", GROUPS[g].name);
    fprintf(f, "\n");
}

int main(int argc, char **argv) {
    int selected[N_GROUPS], n_selected = 0, device_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--list") == 0) {
            for (int g = 0; g < N_GROUPS; g++) printf("%s\n", GROUPS[g].name);
            return 0;
        }
        if (strcmp(argv[i], "--device") == 0) {
            device_only = 1;
            continue;
        }
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        int g = find_group(argv[i]);
        if (g < 0 || n_selected == N_GROUPS) {
            fprintf(stderr, "test_gpu_kernels: unknown group '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
        selected[n_selected++] = g;
    }
    if (n_selected == 0)
        for (int g = 0; g < N_GROUPS; g++) selected[n_selected++] = g;

    if (gpu_count() <= 0) {
        printf("skipped: no GPU\n");
        return 77;
    }
    cudaCheck(cudaSetDevice(0));
    struct cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("device 0: %s (sm_%d%d, %zu MiB)\n", prop.name, prop.major, prop.minor,
           (size_t)prop.totalGlobalMem >> 20);
    fflush(stdout);
    if (device_only) return 0;

    Ctx c;
    memset(&c, 0, sizeof c);
    cudaCheck(cudaStreamCreate(&c.s));
    backend_thread_init();
    printf("tolerances (max |gpu - cpu| / max |cpu|):\n");
    for (int k = 0; k < TOL_CLASSES; k++)
        printf("  %-10s fp32 %.0e  bf16 %.0e  %s\n", TOLERANCE[k].name, TOLERANCE[k].fp32,
               TOLERANCE[k].bf16, TOLERANCE[k].why);
    printf("each line: check, shape, input/output dtype, then max_abs, rel, tol, verdict\n");
    fflush(stdout);
    for (int i = 0; i < n_selected; i++) run_group(&c, selected[i]);

    cudaCheck(cudaStreamDestroy(c.s));
    printf("%d checks, %d failed\n", c.checks, c.failed);
    return c.failed ? 1 : 0;
}
