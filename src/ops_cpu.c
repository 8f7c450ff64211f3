/* ops_cpu.c - the CPU backend (fp32 reference). See ops.h.
 *
 * Every loop runs in a fixed order and OpenBLAS runs single-threaded by
 * default, so results are bit-reproducible for a given binary. */
#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#define LN_EPS 1e-5f

/* Reductions over a row in a fixed order the compiler can vectorise: LANES
 * interleaved partial results (element i goes to lane i mod LANES), then
 * the lanes combined left to right. A plain left-to-right float sum may not
 * be vectorised (reassociating it changes the result); this order is fixed
 * by the code, so every machine and clone gets the same bits. */
enum { LANES = 16 };

static inline float lanes_sum(const float acc[LANES]) {
    float s = 0.0f;
    for (int k = 0; k < LANES; k++) s += acc[k];
    return s;
}

static inline float row_sum(const float *x, int n) {
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) acc[k] += x[i + k];
    for (int k = 0; i < n; i++, k++) acc[k] += x[i];
    return lanes_sum(acc);
}

/* max is exact in any order, so this equals the left-to-right maximum */
static inline float row_max(const float *x, int n) {
    float acc[LANES];
    for (int k = 0; k < LANES; k++) acc[k] = x[0];
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) acc[k] = x[i + k] > acc[k] ? x[i + k] : acc[k];
    for (int k = 0; i < n; i++, k++) acc[k] = x[i] > acc[k] ? x[i] : acc[k];
    float m = acc[0];
    for (int k = 1; k < LANES; k++) m = acc[k] > m ? acc[k] : m;
    return m;
}

static inline float row_dot(const float *x, const float *y, int n) {
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) acc[k] += x[i + k] * y[i + k];
    for (int k = 0; i < n; i++, k++) acc[k] += x[i] * y[i];
    return lanes_sum(acc);
}

/* sum of (x - m)^2 */
static inline float row_sqdev(const float *x, float m, int n) {
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) {
            float d = x[i + k] - m;
            acc[k] += d * d;
        }
    for (int k = 0; i < n; i++, k++) {
        float d = x[i] - m;
        acc[k] += d * d;
    }
    return lanes_sum(acc);
}

void backend_thread_init(void) {
#if defined(__SSE__)
    _mm_setcsr(_mm_getcsr() | 0x8040); /* FTZ (bit 15) and DAZ (bit 6) */
#endif
}

/* exp(x), written branch-free so the compiler vectorises the loops that
 * call it (libm's expf and tanhf are scalar calls; tanhf alone was a third
 * of a training step). x = n ln2 + r with |r| <= ln2/2, then a
 * degree-6 polynomial for exp(r), then 2^n through the exponent bits.
 * Relative error below 2e-7 for x in [-87, 88], where float's exponent
 * ends; exp_approx clamps x to that range first (below, the result is
 * ~1e-38 instead of 0: harmless for softmax and GELU). */
static inline float exp_in_range(float x) {
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    /* round to nearest by adding and subtracting 1.5 * 2^23: plain SSE2,
     * where floorf would be a library call that stops vectorisation */
    const float shifter = 12582912.0f;
    float n = (x * log2e + shifter) - shifter;
    float r = x - n * ln2_hi - n * ln2_lo;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float exp_approx(float x) {
    return exp_in_range(x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x));
}

/* x = exp(x - m) in place; returns the sum of the new x, added in the
 * lanes of row_sum (the same bits as row_sum after the loop). */
static inline float exp_shift_sum(float *x, float m, int n) {
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) acc[k] += x[i + k] = exp_approx(x[i + k] - m);
    for (int k = 0; i < n; i++, k++) acc[k] += x[i] = exp_approx(x[i] - m);
    return lanes_sum(acc);
}


VECTOR_CLONES void embedding_forward(float *out, const int32_t *tokens, const float *wte,
                       const float *wpe, int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)b * T + t) * C;
            const float *te = wte + (size_t)tokens[b * T + t] * C;
            const float *pe = wpe + (size_t)t * C;
            for (int c = 0; c < C; c++) o[c] = te[c] + pe[c];
        }
}

VECTOR_CLONES void embedding_backward(float *dwte, float *dwpe, const float *dout,
                        const int32_t *tokens, int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *d = dout + ((size_t)b * T + t) * C;
            float *dte = dwte + (size_t)tokens[b * T + t] * C;
            float *dpe = dwpe + (size_t)t * C;
            for (int c = 0; c < C; c++) {
                dte[c] += d[c];
                dpe[c] += d[c];
            }
        }
}

VECTOR_CLONES void layernorm_forward(float *y, float *mean, float *rstd, const float *x,
                                     const float *w, const float *b, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * C;
        float *yi = y + (size_t)i * C;
        float m = row_sum(xi, C) / (float)C;
        float v = row_sqdev(xi, m, C) / (float)C;
        float s = 1.0f / sqrtf(v + LN_EPS);
        for (int c = 0; c < C; c++) yi[c] = (xi[c] - m) * s * w[c] + b[c];
        mean[i] = m;
        rstd[i] = s;
    }
}

VECTOR_CLONES void layernorm_backward(float *dx, float *dw, float *db, const float *dy,
                                      const float *x, const float *w, const float *mean,
                                      const float *rstd, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *dyi = dy + (size_t)i * C;
        const float *xi = x + (size_t)i * C;
        float *dxi = dx + (size_t)i * C;
        float m = mean[i], s = rstd[i];
        /* Two reductions over the row: mean of g and mean of g * xhat,
         * where g = dy * w is the gradient w.r.t. the normalised value
         * (in lanes, like row_sum). */
        float gacc[LANES] = {0}, gxacc[LANES] = {0};
        for (int c0 = 0; c0 < C; c0 += LANES) {
            int n = C - c0 < LANES ? C - c0 : LANES;
            for (int k = 0; k < n; k++) {
                int c = c0 + k;
                float xhat = (xi[c] - m) * s;
                float g = dyi[c] * w[c];
                gacc[k] += g;
                gxacc[k] += g * xhat;
                dw[c] += dyi[c] * xhat;
                db[c] += dyi[c];
            }
        }
        float gsum = lanes_sum(gacc) / (float)C;
        float gxsum = lanes_sum(gxacc) / (float)C;
        for (int c = 0; c < C; c++) {
            float xhat = (xi[c] - m) * s;
            float g = dyi[c] * w[c];
            dxi[c] += s * (g - gsum - xhat * gxsum);
        }
    }
}

/* y starts as the bias (and the residual) in every row and the product
 * adds to it (beta 1): one pass over y instead of BLAS zeroing it for
 * beta 0 and further passes adding the bias and the residual. */
VECTOR_CLONES void matmul_forward_residual(float *y, const float *x, const float *W,
                                           const float *bias, const float *resid, int N,
                                           int IC, int OC) {
    for (int i = 0; i < N && (bias || resid); i++) {
        float *yi = y + (size_t)i * OC;
        const float *ri = resid ? resid + (size_t)i * OC : NULL;
        if (bias && ri)
            for (int o = 0; o < OC; o++) yi[o] = ri[o] + bias[o];
        else
            memcpy(yi, bias ? bias : ri, (size_t)OC * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, OC, IC, 1.0f, x,
                IC, W, OC, bias || resid ? 1.0f : 0.0f, y, OC);
}

void matmul_forward(float *y, const float *x, const float *W, const float *bias, int N,
                    int IC, int OC) {
    matmul_forward_residual(y, x, W, bias, NULL, N, IC, OC);
}

void matmul_backward_input(float *dx, const float *dy, const float *W, int N,
                           int IC, int OC, float beta) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, IC, OC, 1.0f, dy, OC,
                W, OC, beta, dx, IC);
}

VECTOR_CLONES void matmul_backward_weight(float *dW, float *dbias, const float *dy,
                            const float *x, int N, int IC, int OC) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, IC, OC, N, 1.0f, x,
                IC, dy, OC, 1.0f, dW, OC);
    if (!dbias) return;
    for (int i = 0; i < N; i++) {
        const float *dyi = dy + (size_t)i * OC;
        for (int o = 0; o < OC; o++) dbias[o] += dyi[o];
    }
}

void matmul_backward(float *dx, float *dW, float *dbias, const float *dy,
                     const float *x, const float *W, int N, int IC, int OC) {
    if (dx) matmul_backward_input(dx, dy, W, N, IC, OC, 1.0f);
    matmul_backward_weight(dW, dbias, dy, x, N, IC, OC);
}

/* Attention's products are many small ones (per sequence and head, T x T
 * by a head of 32 or 64), too small for BLAS, which spends more time
 * packing them than multiplying. They go through one register tile
 * instead: ATT_TR rows by ATT_TW columns of a product, accumulated in
 * registers over a shared inner dimension,
 *
 *   tile[r][c] = sum_d a[r][d * astep] * b[d * ldb + c],
 *
 * where a's rows are given as pointers, so one routine serves the row
 * products (S = Q K^T against K packed transposed, O = P V) and the
 * column ones (dV = P^T dO, reading P's columns with astep T). Every
 * multiply-add is fused (fmaf): one rounding per term on every machine,
 * whether the clone has FMA instructions or libm's exact fmaf stands in
 * (but see att_fma).
 *
 * Causality: queries go in blocks of ATT_TR rows, and a block's scores
 * cover the keys up to its last row, rounded up to ATT_TW; the few scores
 * above the diagonal are computed and then zeroed by the softmax, so P
 * stays exactly causal. A key block's dK, dV sum only over the queries at
 * or after it.
 *
 * 8 x 32: sixteen AVX-512 accumulators, enough to hide the FMA latency.
 * Against 4 x 32, attention per layer at 4L x 128 went from 1.09 to 0.99
 * ms forward and 1.46 to 1.14 ms backward with AVX-512, and was 9% faster
 * with AVX2 too, though there the tile no longer fits in registers. */
enum { ATT_TR = 8, ATT_TW = 32 };

/* Everything that multiplies is inlined into the cloned entry points
 * (attention_forward, attention_backward): a function left out of line
 * would be compiled once, without FMA, and call libm's fmaf per term. */
#define ATT_INLINE static inline __attribute__((always_inline))

/* fmaf is one instruction in the FMA clones and wherever the target has
 * FMA (AArch64, -march=haswell and later). An x86 build without the clones
 * (clang, say) would call libm for every term, 50 times slower: there a
 * multiply and an add stand in, with other bits, as deterministic. */
#if defined(OURO_FMA_CLONES) || defined(__FMA__) || defined(__ARM_FEATURE_FMA) || \
    !(defined(__x86_64__) || defined(__i386__))
#define att_fma(a, b, c) fmaf(a, b, c)
#else
#define att_fma(a, b, c) ((a) * (b) + (c))
#endif

static inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

ATT_INLINE void att_tile(float tile[ATT_TR][ATT_TW], const float *const a[ATT_TR],
                         size_t astep, const float *b, size_t ldb, int n) {
    for (int r = 0; r < ATT_TR; r++)
        for (int c = 0; c < ATT_TW; c++) tile[r][c] = 0.0f;
    for (int d = 0; d < n; d++) {
        const float *bd = b + (size_t)d * ldb;
        for (int r = 0; r < ATT_TR; r++) {
            float x = a[r][(size_t)d * astep];
            for (int c = 0; c < ATT_TW; c++) tile[r][c] = att_fma(x, bd[c], tile[r][c]);
        }
    }
}

/* dst[r][c] = scale * tile[r][c] for the rows and columns that exist
 * (a whole tile in vector stores) */
ATT_INLINE void att_tile_store(float *dst, size_t ld, float tile[ATT_TR][ATT_TW], int rows,
                               int cols, float scale) {
    if (rows >= ATT_TR && cols >= ATT_TW) {
        for (int r = 0; r < ATT_TR; r++)
            for (int c = 0; c < ATT_TW; c++) dst[(size_t)r * ld + c] = tile[r][c] * scale;
        return;
    }
    for (int r = 0; r < rows && r < ATT_TR; r++)
        for (int c = 0; c < cols && c < ATT_TW; c++) dst[(size_t)r * ld + c] = tile[r][c] * scale;
}

/* Pointers to ATT_TR consecutive rows of x (stride ld), from row i0; rows
 * past n repeat row n - 1 (read, never stored). With ld 1, the same for
 * columns. */
static inline void att_rows(const float *rows[ATT_TR], const float *x, size_t ld, int i0,
                            int n) {
    for (int r = 0; r < ATT_TR; r++) rows[r] = x + (size_t)(i0 + r < n ? i0 + r : n - 1) * ld;
}

/* One head's sizes: T rows (queries or keys) of hs columns, and both
 * rounded up to whole tiles (Tp, hsp) for the packed copies. */
typedef struct {
    int T, hs, Tp, hsp;
} AttDims;

static AttDims att_dims(int T, int C, int NH) {
    AttDims d = {T, C / NH, round_up(T, ATT_TW), round_up(C / NH, ATT_TW)};
    return d;
}

size_t attention_scratch_floats(int T, int C, int NH) {
    AttDims d = att_dims(T, C, NH);
    return (size_t)d.hs * d.Tp + 3 * (size_t)d.Tp * d.hsp + (size_t)d.Tp * d.Tp;
}

/* xt[c][j] = x[j][c]: [T, hs] (stride ld) to [hs, Tp], zero past T */
static void att_pack_transposed(float *xt, const float *x, size_t ld, AttDims d) {
    enum { J = 8 };
    int j0 = 0;
    for (; j0 + J <= d.T; j0 += J)
        for (int c = 0; c < d.hs; c++)
            for (int j = 0; j < J; j++) xt[(size_t)c * d.Tp + j0 + j] = x[(size_t)(j0 + j) * ld + c];
    for (int c = 0; c < d.hs; c++) {
        for (int j = j0; j < d.T; j++) xt[(size_t)c * d.Tp + j] = x[(size_t)j * ld + c];
        for (int j = d.T; j < d.Tp; j++) xt[(size_t)c * d.Tp + j] = 0.0f;
    }
}

/* A [T, hs] view as the b operand of a tile: itself when hs is a whole
 * number of tiles, else copied into [T, hsp] with zero columns. Sets *ldb. */
static const float *att_columns(float *pad, const float *x, size_t ld, AttDims d,
                                size_t *ldb) {
    if (d.hs == d.hsp) {
        *ldb = ld;
        return x;
    }
    for (int j = 0; j < d.T; j++) {
        float *row = pad + (size_t)j * d.hsp;
        memcpy(row, x + (size_t)j * ld, (size_t)d.hs * sizeof(float));
        for (int c = d.hs; c < d.hsp; c++) row[c] = 0.0f;
    }
    *ldb = (size_t)d.hsp;
    return pad;
}

/* out rows [i0, i0 + ATT_TR) (stride ldo) = a rows (pointers, astep 1) times
 * b [n, hsp], all column tiles */
ATT_INLINE void att_rows_times(float *out, size_t ldo, int rows, const float *const a[ATT_TR],
                               const float *b, size_t ldb, int n, AttDims d) {
    float tile[ATT_TR][ATT_TW];
    for (int c0 = 0; c0 < d.hsp; c0 += ATT_TW) {
        att_tile(tile, a, 1, b + c0, ldb, n);
        att_tile_store(out + c0, ldo, tile, rows, d.hs - c0, 1.0f);
    }
}

/* out rows [j0, j0 + ATT_TR) = (x^T b) over rows i >= j0 of x [T, ldx] and
 * b: the key block's sum over the queries that see it */
ATT_INLINE void att_cols_times(float *out, size_t ldo, const float *x, size_t ldx, int j0,
                               const float *b, size_t ldb, AttDims d) {
    float tile[ATT_TR][ATT_TW];
    const float *ac[ATT_TR]; /* columns j0.. of x from row j0 on */
    att_rows(ac, x + (size_t)j0 * ldx, 1, j0, d.T);
    int rows = d.T - j0 < ATT_TR ? d.T - j0 : ATT_TR;
    for (int c0 = 0; c0 < d.hsp; c0 += ATT_TW) {
        att_tile(tile, ac, ldx, b + (size_t)j0 * ldb + c0, ldb, d.T - j0);
        att_tile_store(out + c0, ldo, tile, rows, d.hs - c0, 1.0f);
    }
}

/* Rows [i0, i0 + ATT_TR) of x (stride ldx) times xt ([hs, Tp], packed
 * transposed) over the first kc columns, scaled, into out [ATT_TR, Tp]:
 * a query block's scores (Q K^T) or its dP (dO V^T). Rows past T repeat
 * the last one; out needs ATT_TR rows all the same. */
ATT_INLINE void att_block_scores(float *out, const float *x, size_t ldx, int i0,
                                 const float *xt, int kc, AttDims d, float scale) {
    float tile[ATT_TR][ATT_TW];
    const float *rows[ATT_TR];
    att_rows(rows, x, ldx, i0, d.T);
    for (int j0 = 0; j0 < kc; j0 += ATT_TW) {
        att_tile(tile, rows, 1, xt + j0, d.Tp, d.hs);
        att_tile_store(out + j0, d.Tp, tile, ATT_TR, ATT_TW, scale);
    }
}

/* Row i of a causal score matrix s (n columns, a whole number of tiles):
 * softmax over j <= i, zero above, written to s and to p (T columns).
 * The row goes in whole lanes up to m, the first multiple of LANES past i,
 * with the scores above the diagonal set to -inf for the maximum and
 * masked to zero after the exponential: no scalar tails, which cost as
 * much as the rest on rows this short. The lanes are combined as in
 * row_max and row_sum. */
static inline void causal_softmax_row(float *s, float *p, int i, int n, int T) {
    int m = round_up(i + 1, LANES);
    for (int j = i + 1; j < m; j++) s[j] = -INFINITY;
    float mx = row_max(s, m), acc[LANES] = {0};
    for (int j0 = 0; j0 < m; j0 += LANES)
        for (int k = 0; k < LANES; k++) {
            float e = exp_approx(s[j0 + k] - mx);
            s[j0 + k] = e = j0 + k <= i ? e : 0.0f;
            acc[k] += e;
        }
    float inv = 1.0f / lanes_sum(acc);
    int w = m < T ? m : T;
    for (int j = 0; j < w; j++) p[j] = s[j] = s[j] * inv;
    for (int j = m; j < n; j++) s[j] = 0.0f;
    for (int j = w; j < T; j++) p[j] = 0.0f;
}

/* Row i of dS from dP (in place, n columns) and P (T columns, zero above
 * the diagonal): dS = P (dP - <P, dP>) scale, zero above the diagonal.
 * The same whole lanes as the softmax: P's zeros do the masking. */
static inline void causal_softmax_backward_row(float *ds, const float *p, int i, int n, int T,
                                               float scale) {
    int m = round_up(i + 1, LANES), w = m < T ? m : T;
    float dot = row_dot(p, ds, w);
    for (int j = 0; j < w; j++) ds[j] = p[j] * (ds[j] - dot) * scale;
    for (int j = w; j < n; j++) ds[j] = 0.0f;
}

/* One (sequence, head): q, k, v, o are [T, hs] views (strides ldq, ldo). */
ATT_INLINE void attention_head_forward(float *o, size_t ldo, float *p, const float *q,
                                       const float *k, const float *v, size_t ldq,
                                       float *scratch, AttDims d, float scale) {
    float *kt = scratch, *vpad = kt + (size_t)d.hs * d.Tp, *sb = vpad + (size_t)d.Tp * d.hsp;
    size_t ldv;
    att_pack_transposed(kt, k, ldq, d);
    const float *vb = att_columns(vpad, v, ldq, d, &ldv);
    const float *rows[ATT_TR];
    for (int i0 = 0; i0 < d.T; i0 += ATT_TR) {
        int nrows = d.T - i0 < ATT_TR ? d.T - i0 : ATT_TR, keys = i0 + nrows;
        int kc = round_up(keys, ATT_TW);
        /* S block into sb [ATT_TR, Tp], then P in place, copied to p */
        att_block_scores(sb, q, ldq, i0, kt, kc, d, scale);
        for (int r = 0; r < nrows; r++)
            causal_softmax_row(sb + (size_t)r * d.Tp, p + (size_t)(i0 + r) * d.T, i0 + r, kc,
                               d.T);
        /* O rows = P rows V, over the keys the block sees */
        att_rows(rows, sb, d.Tp, 0, nrows);
        att_rows_times(o + (size_t)i0 * ldo, ldo, nrows, rows, vb, ldv, keys, d);
    }
}

VECTOR_FMA_CLONES void attention_forward(float *out, float *att, float *scratch,
                                         const float *qkv, int B, int T, int C, int NH) {
    AttDims d = att_dims(T, C, NH);
    float scale = 1.0f / sqrtf((float)d.hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * 3 * C + h * d.hs;
            attention_head_forward(out + (size_t)b * T * C + h * d.hs, (size_t)C,
                                   att + ((size_t)b * NH + h) * T * T, q, q + C, q + 2 * C,
                                   3 * (size_t)C, scratch, d, scale);
        }
}

/* One (sequence, head) backward: dq, dk, dv share q's stride ldq. */
ATT_INLINE void attention_head_backward(float *dq, float *dk, float *dv, const float *dO,
                                        size_t ldo, const float *p, const float *q,
                                        const float *k, const float *v, size_t ldq,
                                        float *scratch, AttDims d, float scale) {
    float *vt = scratch, *kpad = vt + (size_t)d.hs * d.Tp;
    float *qpad = kpad + (size_t)d.Tp * d.hsp, *opad = qpad + (size_t)d.Tp * d.hsp;
    float *ds = opad + (size_t)d.Tp * d.hsp; /* dS [Tp, Tp] */
    size_t ldk, ldqb, ldob;
    att_pack_transposed(vt, v, ldq, d);
    const float *kb = att_columns(kpad, k, ldq, d, &ldk);
    const float *qb = att_columns(qpad, q, ldq, d, &ldqb);
    const float *ob = att_columns(opad, dO, ldo, d, &ldob);
    const float *rows[ATT_TR];
    for (int i0 = 0; i0 < d.T; i0 += ATT_TR) {
        int nrows = d.T - i0 < ATT_TR ? d.T - i0 : ATT_TR, keys = i0 + nrows;
        int kc = round_up(keys, ATT_TW);
        float *dsb = ds + (size_t)i0 * d.Tp;
        /* dP = dO V^T, then dS row by row */
        att_block_scores(dsb, dO, ldo, i0, vt, kc, d, 1.0f);
        for (int r = 0; r < nrows; r++)
            causal_softmax_backward_row(dsb + (size_t)r * d.Tp, p + (size_t)(i0 + r) * d.T,
                                        i0 + r, kc, d.T, scale);
        /* dQ rows = dS rows K */
        att_rows(rows, dsb, d.Tp, 0, nrows);
        att_rows_times(dq + (size_t)i0 * ldq, ldq, nrows, rows, kb, ldk, keys, d);
    }
    /* dV = P^T dO and dK = dS^T Q, a key block at a time */
    for (int j0 = 0; j0 < d.T; j0 += ATT_TR) {
        att_cols_times(dv + (size_t)j0 * ldq, ldq, p, (size_t)d.T, j0, ob, ldob, d);
        att_cols_times(dk + (size_t)j0 * ldq, ldq, ds, (size_t)d.Tp, j0, qb, ldqb, d);
    }
}

VECTOR_FMA_CLONES void attention_backward(float *dqkv, float *scratch, const float *dout,
                                          const float *qkv, const float *att, int B, int T,
                                          int C, int NH) {
    AttDims d = att_dims(T, C, NH);
    float scale = 1.0f / sqrtf((float)d.hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t base = (size_t)b * T * 3 * C + h * d.hs;
            const float *q = qkv + base;
            float *dq = dqkv + base;
            attention_head_backward(dq, dq + C, dq + 2 * C,
                                    dout + (size_t)b * T * C + h * d.hs, (size_t)C,
                                    att + ((size_t)b * NH + h) * T * T, q, q + C, q + 2 * C,
                                    3 * (size_t)C, scratch, d, scale);
        }
}

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */

/* GELU(u) = 0.5 u (1 + tanh(z)) with z = sqrt(2/pi) (u + 0.044715 u^3).
 * Since 0.5 (1 + tanh(z)) = sigmoid(2z) = 1 / (1 + exp(-2z)), computing the
 * sigmoid directly avoids the cancellation of 1 + tanh(z) near -1.
 * Arguments are clamped to |2z| <= 30: above, the sigmoid is 1.0f exactly;
 * below, GELU is under 1e-12 in size either way.
 */
VECTOR_CLONES void gelu_forward(float *restrict y, const float *restrict x, int n) {
    for (int i = 0; i < n; i++) {
        float u = x[i];
        float z2 = 2.0f * GELU_K * (u + 0.044715f * u * u * u);
        z2 = z2 > 30.0f ? 30.0f : (z2 < -30.0f ? -30.0f : z2);
        y[i] = u / (1.0f + exp_in_range(-z2)); /* |z2| <= 30: no second clamp */
    }
}

/* d/du [u s(u)] = s + u s (1 - s) dz2/du, dz2/du = 2K (1 + 3 0.044715 u^2).
 * s is recovered from the forward as y / u (exact to a rounding or two;
 * s(0) = 1/2), so the backward needs no exponential. */
VECTOR_CLONES void gelu_backward(float *dx, float *dbias, const float *restrict x,
                                 const float *restrict y, const float *dy, int N, int C) {
    for (int i = 0; i < N; i++) {
        size_t r = (size_t)i * C;
        float *dxi = dx + r;
        /* dx may be dy: element c is read before it is written, so the
         * loop is safe to vectorise in place (without this, the aliasing
         * check sends in-place calls to the scalar loop) */
#pragma GCC ivdep
        for (int c = 0; c < C; c++) {
            float u = x[r + c];
            float s = u != 0.0f ? y[r + c] / u : 0.5f;
            float d = s + u * s * (1.0f - s) * 2.0f * GELU_K * (1.0f + 3.0f * 0.044715f * u * u);
            dxi[c] = d * dy[r + c];
        }
        if (dbias)
            for (int c = 0; c < C; c++) dbias[c] += dxi[c];
    }
}

void logits_forward(float *logits, const float *x, const float *wte, int N,
                    int C, int V) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, V, C, 1.0f, x, C,
                wte, C, 0.0f, logits, V);
}

void logits_backward(float *dx, float *dwte, const float *dlogits,
                     const float *x, const float *wte, int N, int C, int V) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, V, 1.0f,
                dlogits, V, wte, C, 1.0f, dx, C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, N, 1.0f,
                dlogits, V, x, C, 1.0f, dwte, C);
}

VECTOR_CLONES void softmax_crossentropy_forward(float *probs, float *losses,
                                                const int32_t *targets, int N, int V) {
    for (int i = 0; i < N; i++) {
        float *row = probs + (size_t)i * V;
        float mx = row_max(row, V);
        /* loss = log(sum exp(z - max)) - (z_target - max): exact even where
         * the target's probability underflows. */
        float zt = (losses && targets) ? row[targets[i]] - mx : 0.0f;
        float sum = exp_shift_sum(row, mx, V);
        float inv = 1.0f / sum;
        for (int j = 0; j < V; j++) row[j] *= inv;
        if (losses && targets) losses[i] = logf(sum) - zt;
    }
}

VECTOR_CLONES void softmax_crossentropy_backward(float *dlogits, const float *probs,
                                   const int32_t *targets, float scale, int N,
                                   int V) {
    for (int i = 0; i < N; i++) {
        const float *p = probs + (size_t)i * V;
        float *d = dlogits + (size_t)i * V;
        for (int j = 0; j < V; j++) d[j] = p[j] * scale;
        d[targets[i]] -= scale;
    }
}
