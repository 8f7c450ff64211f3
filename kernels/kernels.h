/* kernels.h - the CUDA kernels of the GPU backend, as C functions that
 * launch them on a stream. One file per operation in kernels/; the
 * orchestration (which kernel runs when, cuBLAS for matrix products) is in
 * src/backend_cuda.c, and the CPU reference of every operation is in
 * src/ops_cpu.c, which tests/gpu/ compares these against.
 *
 * Conventions
 * - Row-major arrays; N = B*T rows; C channels; pointers are device memory
 *   unless named host_.
 * - Activations that feed matrix products are stored in the run's
 *   precision, OuroDType: fp32 or bf16 (`void *` with a dtype argument).
 *   The residual stream, LayerNorm statistics, attention's log-sum-exp,
 *   losses, parameters, gradients and optimizer state are always fp32.
 * - Gradients of parameters ACCUMULATE (+=), as on the CPU. Gradients of
 *   activations overwrite or accumulate as each function says.
 * - Deterministic: no reduction depends on the order threads run in (no
 *   floating-point atomics); a scratch argument, sized by the matching
 *   *_scratch_floats function, holds per-block partial sums that a second
 *   pass adds in a fixed order.
 * - Every launcher checks its launch (cudaGetLastError) and dies with the
 *   kernel's name on failure; none synchronizes unless it says so.
 */
#ifndef OURO_KERNELS_H
#define OURO_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { OURO_F32 = 0, OURO_BF16 = 1 } OuroDType;

static inline size_t ouro_dtype_size(OuroDType t) { return t == OURO_BF16 ? 2 : 4; }

/* ---- conversions and element-wise ---- */

/* dst[i] = (dst_t) src[i] */
void k_cast(void *dst, OuroDType dst_t, const void *src, OuroDType src_t, size_t n,
            cudaStream_t s);
/* y[i] = a[i] + b[i]: the residual add (a and y fp32, b in dtype bt; y may be a). */
void k_residual_forward(float *y, const float *a, const void *b, OuroDType bt, size_t n,
                        cudaStream_t s);
/* dst[i] += src[i] (dst fp32, src in dtype st). */
void k_accumulate(float *dst, const void *src, OuroDType st, size_t n, cudaStream_t s);
/* x[i] *= a (fp32). */
void k_scale(float *x, float a, size_t n, cudaStream_t s);

/* ---- embedding ---- */

/* out[b,t,:] = wte[tok[b,t],:] + wpe[t,:]; out fp32, tokens device int32. */
void k_embedding_forward(float *out, const int32_t *tokens, const float *wte,
                         const float *wpe, int B, int T, int C, cudaStream_t s);
/* dwpe[t,:] += sum over b (in b order) of dout[b,t,:]. */
void k_embedding_backward_wpe(float *dwpe, const float *dout, int B, int T, int C,
                              cudaStream_t s);
/* dwte[token,:] += the dout rows of the positions holding that token, in
 * position order. The positions arrive grouped by token (the host sorts
 * the batch's tokens, stably, in O(N)): order[0..N) lists positions,
 * seg_start[0..n_seg] delimits the groups and seg_token[0..n_seg) names
 * each group's token. One block per group: no two blocks write a row. */
void k_embedding_backward_wte(float *dwte, const float *dout, const int32_t *order,
                              const int32_t *seg_start, const int32_t *seg_token, int n_seg,
                              int C, cudaStream_t s);

/* ---- LayerNorm (eps 1e-5) ---- */

/* y = (x - mean) * rstd * w + b, y in dtype yt; mean and rstd [N] saved. */
void k_layernorm_forward(void *y, OuroDType yt, float *mean, float *rstd, const float *x,
                         const float *w, const float *b, int N, int C, cudaStream_t s);
/* The residual add fused with the LayerNorm that follows it:
 * res = a + r (r in dtype rt), y = LayerNorm(res). res may be a. */
void k_residual_layernorm_forward(float *res, void *y, OuroDType yt, float *mean,
                                  float *rstd, const float *a, const void *r, OuroDType rt,
                                  const float *w, const float *b, int N, int C,
                                  cudaStream_t s);
/* dx += d/dx, dw += d/dw, db += d/db for dy (dtype dyt). */
size_t k_layernorm_backward_scratch_floats(int N, int C);
void k_layernorm_backward(float *dx, float *dw, float *db, float *scratch, const void *dy,
                          OuroDType dyt, const float *x, const float *w, const float *mean,
                          const float *rstd, int N, int C, cudaStream_t s);

/* ---- matrix-product companions (the products themselves are cuBLAS) ---- */

/* y[n,:] += bias (y in dtype yt): for products without a bias epilogue. */
void k_add_bias(void *y, OuroDType yt, const float *bias, int N, int OC, cudaStream_t s);
/* dbias[o] += sum over rows of dy[:,o], rows in a fixed order. */
size_t k_bias_backward_scratch_floats(int N, int OC);
void k_bias_backward(float *dbias, float *scratch, const void *dy, OuroDType dyt, int N,
                     int OC, cudaStream_t s);

/* ---- GELU (tanh approximation) ---- */

void k_gelu_forward(void *y, const void *x, OuroDType t, size_t n, cudaStream_t s);
/* dx = GELU'(x) * dy, OVERWRITTEN; dx may be dy (in place). */
void k_gelu_backward(void *dx, const void *x, const void *dy, OuroDType t, size_t n,
                     cudaStream_t s);

/* ---- causal self-attention (fused, tiled, online softmax) ----
 * qkv [B,T,3C] (q, k, v, each C wide, NH heads of HS = C/NH), out [B,T,C]
 * heads concatenated, all in dtype t. The T x T matrix is never written:
 * the forward saves the log-sum-exp of each query row, lse [B,NH,T] fp32,
 * and the backward recomputes the probabilities from it. */
int k_attention_supported(int head_size); /* 1 if HS is handled */
void k_attention_forward(void *out, float *lse, const void *qkv, OuroDType t, int B, int T,
                         int C, int NH, cudaStream_t s);
/* dqkv OVERWRITTEN with the gradient of qkv, given dout and the forward's
 * out and lse. Deterministic: dK and dV are summed over queries by the
 * block that owns the key tile, dQ over keys by the block that owns the
 * query tile; no atomics. */
size_t k_attention_backward_scratch_floats(int B, int T, int C, int NH);
void k_attention_backward(void *dqkv, float *scratch, const void *dout, const void *qkv,
                          const void *out, const float *lse, OuroDType t, int B, int T,
                          int C, int NH, cudaStream_t s);
/* The implementations behind the two calls above (attention.cu's header
 * says which runs when). AUTO is what k_attention_forward/backward do:
 * the path OURO_ATTENTION names, or the SIMT kernels where that one cannot
 * take the call. Tests and benchmarks name a path to run each in turn; a
 * named path that cannot take a call (k_attention_path_usable says which
 * can, alignment apart: 16 bytes for the tensor-core paths) is an error. */
typedef enum {
    K_ATTENTION_AUTO = 0,
    K_ATTENTION_SIMT, /* every dtype and head size: attention.cu */
    K_ATTENTION_WMMA, /* bf16, head size a multiple of 16 up to 128: attention_tc.cu */
    K_ATTENTION_MMA   /* the same calls: attention_mma.cu */
} KAttentionPath;
const char *k_attention_path_name(KAttentionPath p);
int k_attention_path_usable(KAttentionPath p, OuroDType t, int head_size);
void k_attention_forward_path(KAttentionPath p, void *out, float *lse, const void *qkv,
                              OuroDType t, int B, int T, int C, int NH, cudaStream_t s);
void k_attention_backward_path(KAttentionPath p, void *dqkv, float *scratch, const void *dout,
                               const void *qkv, const void *out, const float *lse,
                               OuroDType t, int B, int T, int C, int NH, cudaStream_t s);

/* ---- softmax + cross-entropy over the vocabulary ----
 * logits [N,V] in dtype t. The forward writes each row's log-sum-exp
 * lse [N] and, where targets is not NULL, losses[i] = lse[i] -
 * logits[i, target[i]]. The backward turns the logits IN PLACE into
 * dlogits = (softmax - onehot(target)) * scale: the probabilities are
 * never stored. targets are device int32. */
void k_crossentropy_forward(float *losses, float *lse, const void *logits, OuroDType t,
                            const int32_t *targets, int N, int V, cudaStream_t s);
void k_crossentropy_backward(void *logits_to_dlogits, const float *lse,
                             const int32_t *targets, float scale, OuroDType t, int N, int V,
                             cudaStream_t s);

/* ---- optimizer (fp32 master weights) ----
 * Each reads g * grad_scale, updates p (and m, v), writes the bf16 copy of
 * the new weights into p_bf16 when it is not NULL, and zeroes g. The
 * arithmetic is optimizer.c's, per element. c1, c2: Adam's bias
 * corrections 1 - beta^t. */
void k_adamw_update(float *p, void *p_bf16, float *g, float *m, float *v, size_t n,
                    float lr, float beta1, float beta2, float eps, float wd, float c1,
                    float c2, float grad_scale, cudaStream_t s);
void k_sgd_update(float *p, void *p_bf16, float *g, float *m, size_t n, float lr,
                  float momentum, float wd, float grad_scale, cudaStream_t s);

/* ---- reductions (deterministic; these synchronize the stream) ---- */

/* Sum of squares of x[0, n) in double: fixed-size blocks, a fixed tree in
 * each, block sums added in block order. */
size_t k_sumsq_scratch_floats(size_t n);
double k_sumsq(const float *x, size_t n, float *scratch, cudaStream_t s);
/* Index of the first non-finite value of x[0, n), or -1. Its scratch is
 * sized like k_sumsq's: k_sumsq_scratch_floats(n). */
long k_first_nonfinite(const float *x, size_t n, float *scratch, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
