/* elementwise.cu - conversions and element-wise arithmetic: k_cast,
 * k_residual_forward, k_accumulate, k_scale (see kernels.h).
 *
 * Each is a grid-stride loop with one element per thread iteration and a
 * size_t index, so any n works with a capped grid. Every element is
 * independent, so the results cannot depend on the launch shape. The
 * storage type of the non-fp32 operand is a template parameter, chosen
 * once by the launcher; the arithmetic is fp32. These run on arbitrary
 * offsets into parameter-shaped buffers (no alignment to rely on), so
 * they stay scalar; the loads are coalesced either way.
 */
#include "dtype.cuh"

namespace {

constexpr int kThreads = 256;

template <typename Dst, typename Src>
__global__ void cast_kernel(Dst *dst, const Src *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = from_f32<Dst>(to_f32(src[i]));
}

template <typename Dst, typename Src>
void launch_cast(void *dst, const void *src, size_t n, cudaStream_t s) {
    cast_kernel<Dst, Src><<<grid_stride_blocks(n, kThreads), kThreads, 0, s>>>(
        static_cast<Dst *>(dst), static_cast<const Src *>(src), n);
    OURO_CHECK_LAUNCH("cast_kernel (k_cast)");
}

/* y may be a: each element is read before it is written, by one thread. */
template <typename T>
__global__ void residual_kernel(float *y, const float *a, const T *b, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = a[i] + to_f32(b[i]);
}

template <typename T> __global__ void accumulate_kernel(float *dst, const T *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] += to_f32(src[i]);
}

__global__ void scale_kernel(float *x, float a, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] *= a;
}

} // namespace

extern "C" void k_cast(void *dst, OuroDType dst_t, const void *src, OuroDType src_t, size_t n,
                       cudaStream_t s) {
    if (n == 0) return;
    if (dst_t != OURO_F32 && dst_t != OURO_BF16) die_bad_dtype("k_cast (destination)", dst_t);
    if (src_t != OURO_F32 && src_t != OURO_BF16) die_bad_dtype("k_cast (source)", src_t);
    if (dst_t == OURO_F32 && src_t == OURO_F32)
        launch_cast<float, float>(dst, src, n, s);
    else if (dst_t == OURO_F32)
        launch_cast<float, __nv_bfloat16>(dst, src, n, s);
    else if (src_t == OURO_F32)
        launch_cast<__nv_bfloat16, float>(dst, src, n, s);
    else
        launch_cast<__nv_bfloat16, __nv_bfloat16>(dst, src, n, s);
}

extern "C" void k_residual_forward(float *y, const float *a, const void *b, OuroDType bt,
                                   size_t n, cudaStream_t s) {
    if (n == 0) return;
    const unsigned blocks = grid_stride_blocks(n, kThreads);
    if (bt == OURO_F32)
        residual_kernel<float><<<blocks, kThreads, 0, s>>>(y, a, static_cast<const float *>(b),
                                                          n);
    else if (bt == OURO_BF16)
        residual_kernel<__nv_bfloat16><<<blocks, kThreads, 0, s>>>(
            y, a, static_cast<const __nv_bfloat16 *>(b), n);
    else
        die_bad_dtype("k_residual_forward", bt);
    OURO_CHECK_LAUNCH("residual_kernel (k_residual_forward)");
}

extern "C" void k_accumulate(float *dst, const void *src, OuroDType st, size_t n,
                             cudaStream_t s) {
    if (n == 0) return;
    const unsigned blocks = grid_stride_blocks(n, kThreads);
    if (st == OURO_F32)
        accumulate_kernel<float><<<blocks, kThreads, 0, s>>>(
            dst, static_cast<const float *>(src), n);
    else if (st == OURO_BF16)
        accumulate_kernel<__nv_bfloat16><<<blocks, kThreads, 0, s>>>(
            dst, static_cast<const __nv_bfloat16 *>(src), n);
    else
        die_bad_dtype("k_accumulate", st);
    OURO_CHECK_LAUNCH("accumulate_kernel (k_accumulate)");
}

extern "C" void k_scale(float *x, float a, size_t n, cudaStream_t s) {
    if (n == 0) return;
    scale_kernel<<<grid_stride_blocks(n, kThreads), kThreads, 0, s>>>(x, a, n);
    OURO_CHECK_LAUNCH("scale_kernel (k_scale)");
}
