/* dtype.cuh - what the CUDA kernels of kernels/ share: access to arrays
 * stored as OuroDType (fp32 or bf16) with fp32 arithmetic, 16-byte packed
 * loads and stores, a deterministic warp sum, and small host-side launch
 * helpers. CUDA C++ only (included by the .cu files).
 *
 * Element types. Kernels are templates on the storage type T (float or
 * __nv_bfloat16); values are converted to float on load (to_f32) and back
 * on store (from_f32<T>, round to nearest even for bf16), so every
 * computation runs in fp32 whatever the storage. Where a kernel is not a
 * template, load_as_float / store_float_as take the OuroDType at run time.
 *
 * Packs. Pack16<T> is 16 bytes of T (4 floats or 8 bf16), loaded and
 * stored as one int4. Callers check 16-byte alignment with is_aligned16()
 * and keep a scalar path for the rest.
 *
 * Reductions. warp_sum uses an xor butterfly: every lane ends with the
 * same value, built in the same order on every run (addition is
 * commutative, so the two lanes of each pair compute the same bits). No
 * atomics. Block-level sums are left to each kernel, which adds its warp
 * totals in warp order.
 *
 * Host side: grid_stride_blocks, OURO_CHECK_LAUNCH (the launch check that
 * names the kernel), die_bad_dtype, allow_dynamic_smem.
 */
#ifndef OURO_DTYPE_CUH
#define OURO_DTYPE_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "cuda_check.h"
#include "kernels.h"

/* common.h's fatal error (src/ is not on nvcc's include path). */
extern "C" void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* ---- element conversion ---- */

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

/* Element i of an array whose type is known only at run time. */
__device__ __forceinline__ float load_as_float(const void *p, OuroDType t, size_t i) {
    return t == OURO_BF16 ? __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i])
                          : static_cast<const float *>(p)[i];
}
__device__ __forceinline__ void store_float_as(void *p, OuroDType t, size_t i, float v) {
    if (t == OURO_BF16)
        static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(v);
    else
        static_cast<float *>(p)[i] = v;
}

/* ---- 16-byte packs ---- */

template <typename T> struct alignas(16) Pack16 {
    static constexpr int N = 16 / (int)sizeof(T);
    T v[N];
};

/* p must be 16-byte aligned. */
template <typename T> __device__ __forceinline__ Pack16<T> load_pack(const T *p) {
    Pack16<T> r;
    *reinterpret_cast<int4 *>(&r) = *reinterpret_cast<const int4 *>(p);
    return r;
}
template <typename T> __device__ __forceinline__ void store_pack(T *p, const Pack16<T> &r) {
    *reinterpret_cast<int4 *>(p) = *reinterpret_cast<const int4 *>(&r);
}

__host__ __device__ __forceinline__ bool is_aligned16(const void *p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

/* ---- deterministic reductions ---- */

#define OURO_FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(OURO_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(OURO_FULL_MASK, v, o);
    return v;
}

/* ---- host-side helpers ---- */

/* Blocks for a grid-stride loop over n elements: enough to fill any GPU,
 * capped so the count fits grid.x comfortably (the loop does the rest). */
static inline unsigned grid_stride_blocks(size_t n, int threads) {
    const size_t cap = (size_t)1 << 16;
    size_t blocks = (n + (size_t)threads - 1) / (size_t)threads;
    return (unsigned)(blocks < cap ? blocks : cap);
}

/* After every launch: cudaCheckLaunch (cuda_check.h), which names the
 * kernel. */
#define OURO_CHECK_LAUNCH(kernel_name) cudaCheckLaunch(kernel_name)

[[noreturn]] static inline void die_bad_dtype(const char *where, OuroDType t) {
    die("%s: unknown element type %d (OURO_F32 = 0 or OURO_BF16 = 1 expected); the caller "
        "passed a corrupt dtype",
        where, (int)t);
}

/* Lets kernel `func` use `bytes` of dynamic shared memory: beyond 48 KiB
 * the kernel must opt in (up to the device's limit; cudaCheck reports a
 * request over it, naming this call). */
template <typename F> static inline void allow_dynamic_smem(F *func, size_t bytes) {
    if (bytes > 48u * 1024u)
        cudaCheck(cudaFuncSetAttribute(func, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)bytes));
}

#endif
