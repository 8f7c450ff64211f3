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
 * Relative error below 2e-7; x is clamped to [-87, 88], where float's
 * exponent ends (below, the result is ~1e-38 instead of 0: harmless for
 * softmax and GELU). */
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
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

/* With a bias, y starts as the bias in every row and the product adds to
 * it (beta 1): one pass over y instead of BLAS zeroing it for beta 0 and a
 * second pass adding the bias. */
VECTOR_CLONES void matmul_forward(float *y, const float *x, const float *W,
                                  const float *bias, int N, int IC, int OC) {
    if (bias)
        for (int i = 0; i < N; i++) memcpy(y + (size_t)i * OC, bias, (size_t)OC * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, OC, IC, 1.0f, x,
                IC, W, OC, bias ? 1.0f : 0.0f, y, OC);
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

/* Row i of a causal score matrix: softmax over j <= i, zero above. */
static inline void causal_softmax_row(float *row, int i, int T) {
    float mx = row_max(row, i + 1);
    for (int j = 0; j <= i; j++) row[j] = exp_approx(row[j] - mx);
    float sum = row_sum(row, i + 1);
    float inv = 1.0f / sum;
    for (int j = 0; j <= i; j++) row[j] *= inv;
    for (int j = i + 1; j < T; j++) row[j] = 0.0f;
}

/* Per (sequence, head), the products are plain matrix products on strided
 * views of qkv: S = scale Q K^T, P = softmax(S), O = P V. Causality lets
 * them skip the upper triangle: queries go in blocks of ATT_ROWS rows, and
 * a block attends only the keys up to its last row, so the products cover
 * (n+1)/2n of the square for n blocks instead of all of it. Inside a
 * block the few scores above the diagonal are computed and then zeroed by
 * the softmax, so P stays exactly causal (and zero above the diagonal). */
enum { ATT_ROWS = 32 };

VECTOR_CLONES void attention_forward(float *out, float *att, const float *qkv, int B, int T,
                       int C, int NH) {
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * 3 * C + h * hs;
            const float *k = q + C;
            const float *v = q + 2 * C;
            float *p = att + ((size_t)b * NH + h) * T * T;
            float *o = out + (size_t)b * T * C + h * hs;
            for (int i0 = 0; i0 < T; i0 += ATT_ROWS) {
                int rows = T - i0 < ATT_ROWS ? T - i0 : ATT_ROWS, keys = i0 + rows;
                float *pb = p + (size_t)i0 * T;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hs, scale,
                            q + (size_t)i0 * 3 * C, 3 * C, k, 3 * C, 0.0f, pb, T);
                for (int i = i0; i < keys; i++) causal_softmax_row(p + (size_t)i * T, i, T);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, keys, 1.0f,
                            pb, T, v, 3 * C, 0.0f, o + (size_t)i0 * C, C);
            }
        }
}

/* The same blocks: a query block's rows of dP, dS, and its contributions
 * to dQ (its own rows) and to dK, dV (the keys it attends). The blocks go
 * last to first: the last attends every key, so its products write all of
 * dK and dV (beta 0) and the others add to them, and each block writes its
 * own rows of dQ: dqkv is overwritten, with no zeroing pass. */
VECTOR_CLONES void attention_backward(float *dqkv, float *scratch, const float *dout,
                                      const float *qkv, const float *att, int B, int T,
                                      int C, int NH) {
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    int last = (T - 1) / ATT_ROWS * ATT_ROWS;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t base = (size_t)b * T * 3 * C + h * hs;
            const float *q = qkv + base, *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + base, *dk = dq + C, *dv = dq + 2 * C;
            const float *p = att + ((size_t)b * NH + h) * T * T;
            const float *dO = dout + (size_t)b * T * C + h * hs;
            for (int i0 = last; i0 >= 0; i0 -= ATT_ROWS) {
                int rows = T - i0 < ATT_ROWS ? T - i0 : ATT_ROWS, keys = i0 + rows;
                float kv_beta = i0 == last ? 0.0f : 1.0f;
                const float *pb = p + (size_t)i0 * T, *dOb = dO + (size_t)i0 * C;
                float *ds = scratch + (size_t)i0 * T;
                /* dP = dO V^T ; dV (+)= P^T dO */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hs, 1.0f,
                            dOb, C, v, 3 * C, 0.0f, ds, T);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, keys, hs, rows, 1.0f,
                            pb, T, dOb, C, kv_beta, dv, 3 * C);
                /* softmax backward, row by row: dS = P (dP - <P, dP>) scale */
                for (int i = i0; i < keys; i++) {
                    const float *pi = p + (size_t)i * T;
                    float *di = scratch + (size_t)i * T;
                    float dot = row_dot(pi, di, i + 1);
                    for (int j = 0; j <= i; j++) di[j] = pi[j] * (di[j] - dot) * scale;
                    for (int j = i + 1; j < keys; j++) di[j] = 0.0f;
                }
                /* dQ = dS K ; dK (+)= dS^T Q */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, keys, 1.0f,
                            ds, T, k, 3 * C, 0.0f, dq + (size_t)i0 * 3 * C, 3 * C);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, keys, hs, rows, 1.0f,
                            ds, T, q + (size_t)i0 * 3 * C, 3 * C, kv_beta, dk, 3 * C);
            }
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
        y[i] = u / (1.0f + exp_approx(-z2));
    }
}

/* d/du [u s(u)] = s + u s (1 - s) dz2/du, dz2/du = 2K (1 + 3 0.044715 u^2).
 * s is recovered from the forward as y / u (exact to a rounding or two;
 * s(0) = 1/2), so the backward needs no exponential. */
VECTOR_CLONES void gelu_backward(float *dx, const float *restrict x, const float *restrict y,
                   const float *dy, int n) {
    /* dx may be dy: element i is read before it is written, so the loop is
     * safe to vectorise in place (without this, the aliasing check sends
     * in-place calls to the scalar loop) */
#pragma GCC ivdep
    for (int i = 0; i < n; i++) {
        float u = x[i];
        float s = u != 0.0f ? y[i] / u : 0.5f;
        float d = s + u * s * (1.0f - s) * 2.0f * GELU_K * (1.0f + 3.0f * 0.044715f * u * u);
        dx[i] = d * dy[i];
    }
}

VECTOR_CLONES void residual_forward(float *y, const float *a, const float *b, int n) {
    for (int i = 0; i < n; i++) y[i] = a[i] + b[i];
}

VECTOR_CLONES void residual_backward(float *da, float *db, const float *dy, int n) {
    for (int i = 0; i < n; i++) {
        da[i] += dy[i];
        db[i] += dy[i];
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
        for (int j = 0; j < V; j++) row[j] = exp_approx(row[j] - mx);
        float sum = row_sum(row, V);
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
