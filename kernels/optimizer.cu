/* optimizer.cu - the parameter update on fp32 master weights:
 * k_adamw_update, k_sgd_update (see kernels.h).
 *
 * Per element, exactly optimizer.c's arithmetic (adamw_tensor,
 * sgd_tensor) on the gradient g * grad_scale, in the same order of
 * operations, so fp32 results agree with the CPU to rounding (and bit for
 * bit where the compilers make the same contractions). Each kernel also
 * writes the bf16 copy of the new weight when p_bf16 is given (the copy
 * the bf16 matrix products read) and zeroes the gradient, so an update
 * is a single pass over memory.
 *
 * Grid-stride loops, one element per thread iteration: tensors start at
 * arbitrary offsets of the parameter buffer, so no alignment is assumed.
 */
#include "dtype.cuh"

namespace {

constexpr int kThreads = 256;

__global__ void adamw_kernel(float *p, __nv_bfloat16 *p_bf16, float *g, float *m, float *v,
                             size_t n, float lr, float beta1, float beta2, float eps, float wd,
                             float c1, float c2, float grad_scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float gi = g[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        const float mhat = mi / c1, vhat = vi / c2;
        float pi = p[i];
        pi -= lr * (mhat / (sqrtf(vhat) + eps) + wd * pi);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        g[i] = 0.0f;
        if (p_bf16 != nullptr) p_bf16[i] = __float2bfloat16_rn(pi);
    }
}

/* m is read and written only when momentum > 0 (it may be NULL otherwise). */
__global__ void sgd_kernel(float *p, __nv_bfloat16 *p_bf16, float *g, float *m, size_t n,
                           float lr, float momentum, float wd, float grad_scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float gi = g[i] * grad_scale;
        float pi = p[i];
        float d = gi + wd * pi;
        if (momentum > 0.0f) {
            const float mi = momentum * m[i] + d;
            m[i] = mi;
            d = mi;
        }
        pi -= lr * d;
        p[i] = pi;
        g[i] = 0.0f;
        if (p_bf16 != nullptr) p_bf16[i] = __float2bfloat16_rn(pi);
    }
}

} // namespace

extern "C" void k_adamw_update(float *p, void *p_bf16, float *g, float *m, float *v, size_t n,
                               float lr, float beta1, float beta2, float eps, float wd,
                               float c1, float c2, float grad_scale, cudaStream_t s) {
    if (n == 0) return;
    adamw_kernel<<<grid_stride_blocks(n, kThreads), kThreads, 0, s>>>(
        p, static_cast<__nv_bfloat16 *>(p_bf16), g, m, v, n, lr, beta1, beta2, eps, wd, c1, c2,
        grad_scale);
    OURO_CHECK_LAUNCH("adamw_kernel (k_adamw_update)");
}

extern "C" void k_sgd_update(float *p, void *p_bf16, float *g, float *m, size_t n, float lr,
                             float momentum, float wd, float grad_scale, cudaStream_t s) {
    if (n == 0) return;
    if (momentum > 0.0f && m == nullptr)
        die("k_sgd_update: momentum %g needs the momentum buffer m, which is NULL "
            "(allocate optimizer state for SGD with momentum)",
            (double)momentum);
    sgd_kernel<<<grid_stride_blocks(n, kThreads), kThreads, 0, s>>>(
        p, static_cast<__nv_bfloat16 *>(p_bf16), g, m, n, lr, momentum, wd, grad_scale);
    OURO_CHECK_LAUNCH("sgd_kernel (k_sgd_update)");
}
