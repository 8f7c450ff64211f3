/* ref_gpt.h - an independent double-precision reference of the GPT-2 math.
 *
 * Plain loops, no BLAS, no shared code with src/ops_cpu.c: the tests feed
 * the same numbers to the fp32 backend and to this reference and compare.
 * Written for clarity, not speed; the models the tests use are tiny.
 *
 * Shapes and layouts follow src/ops.h: row-major, N = B*T rows, C
 * channels, weights input-major (y = x W + b), qkv as [B,T,3C] with q, k,
 * v each C wide and heads of C/NH inside each.
 */
#ifndef OURO_REF_GPT_H
#define OURO_REF_GPT_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* out[b,t,:] = wte[tok[b,t],:] + wpe[t,:] */
void ref_embedding_forward(double *out, const int32_t *tokens,
                           const double *wte, const double *wpe, int B, int T,
                           int C);
/* LayerNorm over the last axis, eps 1e-5, biased variance. mean and rstd
 * (N each) may be NULL. */
void ref_layernorm_forward(double *y, double *mean, double *rstd,
                           const double *x, const double *w, const double *b,
                           int N, int C);
/* y[N,OC] = x[N,IC] W[IC,OC] + bias (bias may be NULL). */
void ref_matmul_forward(double *y, const double *x, const double *W,
                        const double *bias, int N, int IC, int OC);
/* Causal multi-head attention; att [B,NH,T,T] may be NULL. */
void ref_attention_forward(double *out, double *att, const double *qkv, int B,
                           int T, int C, int NH);
/* GELU, tanh approximation. */
void ref_gelu_forward(double *y, const double *x, int n);
void ref_residual_forward(double *y, const double *a, const double *b, int n);
/* logits[N,V] = x[N,C] wte[V,C]^T */
void ref_logits_forward(double *logits, const double *x, const double *wte,
                        int N, int C, int V);
/* losses[i] = -log softmax(logits[i])[target[i]]; probs [N,V] may be NULL. */
void ref_crossentropy_forward(double *probs, double *losses,
                              const double *logits, const int32_t *targets,
                              int N, int V);

/* Whole-model mean cross-entropy over B x T tokens, parameters read through
 * the canonical layout of model.h. */
double ref_gpt_loss(const GPTConfig *cfg, const double *params,
                    const int32_t *tokens, const int32_t *targets, int B,
                    int T);

/* ---- helpers shared by the tests ---- */

void ref_to_double(double *dst, const float *src, size_t n);
double ref_max_abs(const double *x, size_t n);
/* max|got - want| / max|want| (max|want| floored at 1e-300). */
double ref_rel_err(const float *got, const double *want, size_t n);

#endif
