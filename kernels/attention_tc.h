/* attention_tc.h - the two tensor-core (bf16) paths of the fused causal
 * attention, called by k_attention_forward / k_attention_backward
 * (attention.cu) for bf16 runs whose head size they handle: WMMA
 * (attention_tc.cu) and mma.sync with register-resident scores
 * (attention_mma.cu). Same contract as kernels.h's attention functions,
 * same head sizes and alignment; see each file for its design. Usable
 * from C and CUDA C++. */
#ifndef OURO_ATTENTION_TC_H
#define OURO_ATTENTION_TC_H

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if the tensor-core kernels exist for this head size (multiples of 16
 * up to 128). */
int k_attention_tc_handles(int head_size);

/* 1 if every pointer meets the tensor-core path's alignment (16 bytes: the
 * tiles move as 16-byte packs). A NULL pointer is ignored. */
int k_attention_tc_aligned(const void *a, const void *b, const void *c, const void *d);

/* bf16 qkv [B,T,3C] -> bf16 out [B,T,C] and fp32 lse [B,NH,T]. The sizes
 * must already be checked (positive, C = NH * HS with HS handled). */
void k_attention_tc_forward(void *out, float *lse, const void *qkv, int B, int T, int C,
                            int NH, cudaStream_t s);

/* dqkv (bf16 [B,T,3C]) OVERWRITTEN, given bf16 dout, qkv, fp32 lse and
 * D = rowsum(dout * out) [B,NH,T] already computed on the stream. */
void k_attention_tc_backward(void *dqkv, const float *D, const void *dout, const void *qkv,
                             const float *lse, int B, int T, int C, int NH, cudaStream_t s);

/* The mma.sync path: same arguments and contract as the two above. */
void k_attention_mma_forward(void *out, float *lse, const void *qkv, int B, int T, int C,
                             int NH, cudaStream_t s);
void k_attention_mma_backward(void *dqkv, const float *D, const void *dout, const void *qkv,
                              const float *lse, int B, int T, int C, int NH, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
