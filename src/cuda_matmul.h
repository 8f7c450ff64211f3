/* cuda_matmul.h - the matrix products of the GPU backend, through
 * cuBLASLt, in the row-major conventions of ops.h: weights are
 * input-major (y = x W + b, W [IC,OC]) and the tied output projection
 * reads wte [V,C] (logits = x wte^T).
 *
 * Types. Inputs (activations and weights) are in the run's precision
 * (OuroDType: fp32 or bf16); products accumulate in fp32
 * (CUBLAS_COMPUTE_32F, never TF32); outputs that are activations are in the
 * run's precision; weight gradients are fp32 and accumulate (+=); biases
 * are fp32.
 *
 * Determinism. cuBLAS documents bit-wise identical results run to run for
 * the same toolkit version on GPUs of the same architecture and SM count,
 * provided a handle's work does not share a workspace across concurrent
 * streams. A CudaMatmul owns one cuBLASLt handle, one workspace of fixed
 * size and one stream, and picks each product's algorithm once, by a
 * heuristic query whose inputs (shapes, types, transposes, epilogue,
 * workspace size, the alignment of every pointer) are all part of the
 * cache key: the same call gets the same algorithm, hence the same bits.
 * CUBLAS_WORKSPACE_CONFIG is not needed: that variable governs the
 * internal workspaces of the cublas<t>gemm family, which is not used.
 * Every split-K reduction scheme cuBLASLt may choose adds its parts in a
 * fixed order (in place with sequencing counters, or in a separate pass).
 */
#ifndef OURO_CUDA_MATMUL_H
#define OURO_CUDA_MATMUL_H

#include <stddef.h>

#include <cuda_runtime_api.h>

#include "kernels.h"

typedef struct CudaMatmul CudaMatmul;

/* A cuBLASLt handle and workspace for products queued on `stream` (on the
 * current device). fuse_gelu: 1 lets the MLP's first product apply its
 * bias and GELU in the cuBLASLt epilogue; 0 always uses the project's own
 * GELU kernel (see cuda_matmul_forward_gelu). */
CudaMatmul *cuda_matmul_create(cudaStream_t stream, int fuse_gelu);
void cuda_matmul_destroy(CudaMatmul *mm);
/* Device bytes held (the workspace), for memory reports. */
size_t cuda_matmul_device_bytes(const CudaMatmul *mm);

/* y[N,OC] = x[N,IC] W[IC,OC] + bias[OC]; bias fp32, may be NULL. */
void cuda_matmul_forward(CudaMatmul *mm, void *y, const void *x, const void *W,
                         const float *bias, OuroDType t, int N, int IC, int OC);
/* pre[N,OC] = x W + bias (the GELU input the backward needs) and
 * out = GELU(pre), tanh approximation. */
void cuda_matmul_forward_gelu(CudaMatmul *mm, void *out, void *pre, const void *x,
                              const void *W, const float *bias, OuroDType t, int N, int IC,
                              int OC);
/* dx[N,IC] = beta * dx + dy[N,OC] W^T (beta 0 overwrites). */
void cuda_matmul_backward_input(CudaMatmul *mm, void *dx, const void *dy, const void *W,
                                OuroDType t, int N, int IC, int OC, float beta);
/* dW[IC,OC] += x^T dy (dW fp32). */
void cuda_matmul_backward_weight(CudaMatmul *mm, float *dW, const void *x, const void *dy,
                                 OuroDType t, int N, int IC, int OC);

/* Tied output projection: logits[N,V] = x[N,C] wte[V,C]^T. */
void cuda_logits_forward(CudaMatmul *mm, void *logits, const void *x, const void *wte,
                         OuroDType t, int N, int C, int V);
/* dx[N,C] = beta * dx + dlogits[N,V] wte[V,C]. */
void cuda_logits_backward_input(CudaMatmul *mm, void *dx, const void *dlogits,
                                const void *wte, OuroDType t, int N, int C, int V,
                                float beta);
/* dwte[V,C] += dlogits^T x (dwte fp32). */
void cuda_logits_backward_weight(CudaMatmul *mm, float *dwte, const void *dlogits,
                                 const void *x, OuroDType t, int N, int C, int V);

#endif
