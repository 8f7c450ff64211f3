/* ops.h - the CPU backend: forward and backward of every operation of the
 * model, fp32, on row-major arrays. Matrix products go through BLAS, but
 * for attention's many small ones, which have their own register tiles.
 *
 * Conventions: N = B*T rows; C channels. Backward functions ACCUMULATE
 * (+=) into every gradient they produce, for parameters and for inputs, so
 * a caller zeroes gradients once and paths that fan out add up naturally.
 * Exceptions, named where they are declared: gelu_backward,
 * attention_backward and softmax_crossentropy_backward overwrite, and
 * matmul_backward_input takes a beta.
 */
#ifndef OURO_OPS_H
#define OURO_OPS_H

#include <stddef.h>
#include <stdint.h>

/* The CPU's element-wise and row-wise loops (here and in optimizer.c) are
 * compiled for AVX-512, AVX2 and plain SSE2, and the best one the CPU has
 * is picked at load time (GCC's function clones): the build stays portable
 * (no -march=native), and the clones give identical bits, since every clone
 * does the same IEEE operations in the same order (no FMA contraction under
 * -std=c11, and reductions go through fixed lanes), only more at a time. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
/* The same for loops written with fmaf, whose clones need FMA as well
 * (x86-64-v4: AVX-512 and FMA; v3: AVX2 and FMA). The plain clone calls
 * libm's fmaf, which rounds once like the instruction: the same bits. */
#define VECTOR_FMA_CLONES                                                                  \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define OURO_FMA_CLONES 1
#else
#define VECTOR_CLONES
#define VECTOR_FMA_CLONES
#endif

/* Sets up the calling thread for the backend: on x86, denormal inputs and
 * results are flushed to zero (FTZ/DAZ). Tiny probabilities and the
 * unused lanes of branch-free vector code otherwise fall into denormals,
 * which cost a microcode assist each and made GELU 3x slower. The
 * results stay deterministic. Every thread that trains calls it. */
void backend_thread_init(void);

/* out[b,t,:] = wte[tok[b,t],:] + wpe[t,:] */
void embedding_forward(float *out, const int32_t *tokens, const float *wte,
                       const float *wpe, int B, int T, int C);
/* dwte[tok] += dout, dwpe[t] += dout (serial, fixed order: deterministic) */
void embedding_backward(float *dwte, float *dwpe, const float *dout,
                        const int32_t *tokens, int B, int T, int C);

/* y = (x - mean) * rstd * w + b over the last axis, eps 1e-5. Saves mean
 * and rstd (N floats each) for the backward. */
void layernorm_forward(float *y, float *mean, float *rstd, const float *x,
                       const float *w, const float *b, int N, int C);
void layernorm_backward(float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, const float *mean,
                        const float *rstd, int N, int C);

/* y[N,OC] = x[N,IC] W[IC,OC] + bias[OC] (bias may be NULL). W is stored
 * input-major, as GPT-2's Conv1D. */
void matmul_forward(float *y, const float *x, const float *W,
                    const float *bias, int N, int IC, int OC);
/* y = resid + bias + x W: a projection and the residual connection after
 * it, one pass over y fewer than matmul_forward then a sum. bias and resid
 * may be NULL; y may not alias resid or x. */
void matmul_forward_residual(float *y, const float *x, const float *W, const float *bias,
                             const float *resid, int N, int IC, int OC);
/* dx += dy W^T, dW += x^T dy, dbias += colsum(dy). dx, dbias may be NULL. */
void matmul_backward(float *dx, float *dW, float *dbias, const float *dy,
                     const float *x, const float *W, int N, int IC, int OC);
/* Its two halves. dx = beta * dx + dy W^T: beta 0 overwrites, so a fresh
 * buffer needs no zeroing first. */
void matmul_backward_input(float *dx, const float *dy, const float *W, int N,
                           int IC, int OC, float beta);
/* dW += x^T dy, dbias += colsum(dy) (dbias may be NULL). */
void matmul_backward_weight(float *dW, float *dbias, const float *dy,
                            const float *x, int N, int IC, int OC);

/* Causal self-attention. qkv is [B,T,3C] (q, k, v each C wide, heads of
 * C/NH). att saves the softmax probabilities [B,NH,T,T] (upper triangle
 * zero). out is [B,T,C], heads concatenated. scratch holds
 * attention_scratch_floats(T, C, NH) floats, for forward and backward. */
size_t attention_scratch_floats(int T, int C, int NH);
void attention_forward(float *out, float *att, float *scratch, const float *qkv, int B,
                       int T, int C, int NH);
/* dqkv = d(qkv), OVERWRITTEN (an exception to the accumulate rule: the
 * caller needs no zeroing pass). */
void attention_backward(float *dqkv, float *scratch, const float *dout,
                        const float *qkv, const float *att, int B, int T,
                        int C, int NH);

/* GELU, tanh approximation. */
void gelu_forward(float *y, const float *x, int n);
/* dx = GELU'(x) * dy over [N, C], given y = GELU(x) from the forward
 * (which spares the backward its exponentials), and dbias += colsum(dx)
 * when dbias is not NULL: the gradient of the bias the GELU's input
 * carries, in the same pass. An exception to the accumulate rule for dx:
 * it is OVERWRITTEN, and dx may be dy (in place), so the MLP's backward
 * needs no extra buffer or zeroing. */
void gelu_backward(float *dx, float *dbias, const float *x, const float *y, const float *dy,
                   int N, int C);

/* Tied output projection: logits[N,V] = x[N,C] wte[V,C]^T. */
void logits_forward(float *logits, const float *x, const float *wte, int N,
                    int C, int V);
/* dx += dlogits wte, dwte += dlogits^T x */
void logits_backward(float *dx, float *dwte, const float *dlogits,
                     const float *x, const float *wte, int N, int C, int V);

/* In place: logits -> softmax probabilities. losses[i] = -log p[target]. */
void softmax_crossentropy_forward(float *probs_inout, float *losses,
                                  const int32_t *targets, int N, int V);
/* dlogits = (probs - onehot(target)) * scale, written (not accumulated);
 * may alias probs. scale is d(total loss)/d(loss_i), e.g. 1/N for a mean. */
void softmax_crossentropy_backward(float *dlogits, const float *probs,
                                   const int32_t *targets, float scale, int N,
                                   int V);

#endif
