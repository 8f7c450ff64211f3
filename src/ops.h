/* ops.h - the CPU backend: forward and backward of every operation of the
 * model, fp32, on row-major arrays. Matrix products go through BLAS.
 *
 * Conventions: N = B*T rows; C channels. Backward functions ACCUMULATE
 * (+=) into every gradient they produce, for parameters and for inputs, so
 * a caller zeroes gradients once and paths that fan out add up naturally.
 * The residual stream is the one exception: callers manage it explicitly.
 */
#ifndef OURO_OPS_H
#define OURO_OPS_H

#include <stdint.h>

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
/* dx += dy W^T, dW += x^T dy, dbias += colsum(dy). dx, dbias may be NULL. */
void matmul_backward(float *dx, float *dW, float *dbias, const float *dy,
                     const float *x, const float *W, int N, int IC, int OC);

/* Causal self-attention. qkv is [B,T,3C] (q, k, v each C wide, heads of
 * C/NH). att saves the softmax probabilities [B,NH,T,T] (upper triangle
 * zero). out is [B,T,C], heads concatenated. */
void attention_forward(float *out, float *att, const float *qkv, int B, int T,
                       int C, int NH);
/* dqkv += d(qkv); scratch holds T*T floats. */
void attention_backward(float *dqkv, float *scratch, const float *dout,
                        const float *qkv, const float *att, int B, int T,
                        int C, int NH);

/* GELU, tanh approximation. */
void gelu_forward(float *y, const float *x, int n);
void gelu_backward(float *dx, const float *x, const float *dy, int n);

/* y = a + b */
void residual_forward(float *y, const float *a, const float *b, int n);
/* da += dy, db += dy */
void residual_backward(float *da, float *db, const float *dy, int n);

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
