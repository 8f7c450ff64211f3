/* gelu.cu - GELU, tanh approximation, as ops_cpu.c gelu_forward/backward:
 * k_gelu_forward, k_gelu_backward (see kernels.h).
 *
 * GELU(u) = u * sigmoid(2z), z = sqrt(2/pi) (u + 0.044715 u^3), which is
 * 0.5 u (1 + tanh z) without the cancellation of 1 + tanh z near -1; 2z is
 * clamped to [-30, 30] as on the CPU. The backward recomputes the sigmoid
 * from x (the CPU derives it from the saved output instead; the two agree
 * to rounding) and OVERWRITES dx, which may be dy.
 *
 * Grid-stride loops over 16-byte packs (4 floats or 8 bf16) when every
 * array is 16-byte aligned, then a scalar loop for the tail (or for
 * everything when unaligned). Elements are independent, so the launch
 * shape cannot change the results.
 */
#include "dtype.cuh"

namespace {

constexpr int kThreads = 256;
constexpr float kGeluK = 0.7978845608028654f; /* sqrt(2/pi), as ops_cpu.c */

/* 1 + exp(-2z) for input u, with 2z clamped to [-30, 30]: GELU(u) is u
 * over it, sigmoid(2z) one over it. */
__device__ __forceinline__ float gelu_denominator(float u) {
    float z2 = 2.0f * kGeluK * (u + 0.044715f * u * u * u);
    z2 = fminf(fmaxf(z2, -30.0f), 30.0f);
    return 1.0f + expf(-z2);
}

__device__ __forceinline__ float gelu(float u) { return u / gelu_denominator(u); }

/* d GELU / du = s + u s (1 - s) d(2z)/du, d(2z)/du = 2K (1 + 3 0.044715 u^2). */
__device__ __forceinline__ float gelu_grad(float u) {
    const float s = 1.0f / gelu_denominator(u);
    return s + u * s * (1.0f - s) * 2.0f * kGeluK * (1.0f + 3.0f * 0.044715f * u * u);
}

/* Elements [0, n_vec) go by packs of Pack16<T>::N (n_vec is a multiple of
 * it, 0 when the arrays are not aligned), the rest one by one. */
template <typename T>
__global__ void gelu_forward_kernel(T *y, const T *x, size_t n, size_t n_vec) {
    constexpr int P = Pack16<T>::N;
    const size_t start = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t k = start; k < n_vec / P; k += stride) {
        const Pack16<T> xv = load_pack(x + k * P);
        Pack16<T> yv;
#pragma unroll
        for (int e = 0; e < P; e++) yv.v[e] = from_f32<T>(gelu(to_f32(xv.v[e])));
        store_pack(y + k * P, yv);
    }
    for (size_t i = n_vec + start; i < n; i += stride) y[i] = from_f32<T>(gelu(to_f32(x[i])));
}

/* dx may be dy: every element is read before it is written, by one thread. */
template <typename T>
__global__ void gelu_backward_kernel(T *dx, const T *x, const T *dy, size_t n, size_t n_vec) {
    constexpr int P = Pack16<T>::N;
    const size_t start = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t k = start; k < n_vec / P; k += stride) {
        const Pack16<T> xv = load_pack(x + k * P);
        const Pack16<T> dyv = load_pack(dy + k * P);
        Pack16<T> dxv;
#pragma unroll
        for (int e = 0; e < P; e++)
            dxv.v[e] = from_f32<T>(gelu_grad(to_f32(xv.v[e])) * to_f32(dyv.v[e]));
        store_pack(dx + k * P, dxv);
    }
    for (size_t i = n_vec + start; i < n; i += stride)
        dx[i] = from_f32<T>(gelu_grad(to_f32(x[i])) * to_f32(dy[i]));
}

/* How many leading elements the pack loop takes. */
template <typename T> size_t vector_part(size_t n, bool aligned) {
    constexpr size_t P = Pack16<T>::N;
    return aligned ? n / P * P : 0;
}

template <typename T> void launch_forward(void *y, const void *x, size_t n, cudaStream_t s) {
    const size_t n_vec = vector_part<T>(n, is_aligned16(y) && is_aligned16(x));
    const size_t work = n_vec / Pack16<T>::N + (n - n_vec);
    gelu_forward_kernel<T><<<grid_stride_blocks(work, kThreads), kThreads, 0, s>>>(
        static_cast<T *>(y), static_cast<const T *>(x), n, n_vec);
    OURO_CHECK_LAUNCH("gelu_forward_kernel (k_gelu_forward)");
}

template <typename T>
void launch_backward(void *dx, const void *x, const void *dy, size_t n, cudaStream_t s) {
    const size_t n_vec =
        vector_part<T>(n, is_aligned16(dx) && is_aligned16(x) && is_aligned16(dy));
    const size_t work = n_vec / Pack16<T>::N + (n - n_vec);
    gelu_backward_kernel<T><<<grid_stride_blocks(work, kThreads), kThreads, 0, s>>>(
        static_cast<T *>(dx), static_cast<const T *>(x), static_cast<const T *>(dy), n, n_vec);
    OURO_CHECK_LAUNCH("gelu_backward_kernel (k_gelu_backward)");
}

} // namespace

extern "C" void k_gelu_forward(void *y, const void *x, OuroDType t, size_t n, cudaStream_t s) {
    if (n == 0) return;
    if (t == OURO_F32)
        launch_forward<float>(y, x, n, s);
    else if (t == OURO_BF16)
        launch_forward<__nv_bfloat16>(y, x, n, s);
    else
        die_bad_dtype("k_gelu_forward", t);
}

extern "C" void k_gelu_backward(void *dx, const void *x, const void *dy, OuroDType t, size_t n,
                                cudaStream_t s) {
    if (n == 0) return;
    if (t == OURO_F32)
        launch_backward<float>(dx, x, dy, n, s);
    else if (t == OURO_BF16)
        launch_backward<__nv_bfloat16>(dx, x, dy, n, s);
    else
        die_bad_dtype("k_gelu_backward", t);
}
