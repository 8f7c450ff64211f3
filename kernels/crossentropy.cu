/* crossentropy.cu - softmax + cross-entropy over the vocabulary:
 * k_crossentropy_forward, k_crossentropy_backward (see kernels.h).
 *
 * One block per row of V logits (V up to ~50k), fp32 arithmetic whatever
 * the logits' dtype. The forward makes one pass over the row: each thread
 * keeps a running maximum m and sum s of exp(z - m) over its elements, in
 * order (an "online" softmax, rescaling s when m grows), then the threads'
 * pairs are combined by a fixed tree: xor butterflies within each warp,
 * then the warp results in warp order. The combination is written with
 * explicit round-to-nearest operations, so that both lanes of a butterfly
 * pair get the same bits whatever the compiler contracts. The row's
 * log-sum-exp is lse = m + log(s); the loss is log(s) - (z_target - m), the
 * form ops_cpu.c uses, exact even where the target's probability
 * underflows.
 *
 * The backward rewrites the row in place: dlogit = exp(z - lse) * scale,
 * minus scale at the target (the CPU's order of operations), stored in
 * the logits' dtype.
 *
 * Rows are read by 16-byte packs when the logits are 16-byte aligned and
 * V is a multiple of the pack width (then every row is aligned), else one
 * element at a time. Targets outside [0, V) are never dereferenced: the
 * host validates them, and here they give a NaN loss and no one-hot term.
 */
#include <math.h>

#include "dtype.cuh"

namespace {

constexpr int kThreads = 512;

/* The running (maximum, sum of exp(z - maximum)) of a set of logits; the
 * empty set is (-inf, 0). */
struct SoftmaxAcc {
    float m;
    float s;
};

__device__ __forceinline__ void acc_add(SoftmaxAcc &a, float z) {
    if (z > a.m) { /* new maximum: rescale what is summed so far */
        a.s = a.s * expf(a.m - z) + 1.0f;
        a.m = z;
    } else {
        /* z == -inf adds nothing (and would give exp(nan) when m is -inf);
         * a NaN z lands here and propagates through the sum */
        a.s += z == -INFINITY ? 0.0f : expf(z - a.m);
    }
}

/* Symmetric in its two arguments, bit for bit. */
__device__ __forceinline__ SoftmaxAcc acc_merge(SoftmaxAcc a, SoftmaxAcc b) {
    const float m = fmaxf(a.m, b.m);
    if (m == -INFINITY) return SoftmaxAcc{m, __fadd_rn(a.s, b.s)}; /* 0, or NaN carried */
    const float s = __fadd_rn(__fmul_rn(a.s, expf(a.m - m)), __fmul_rn(b.s, expf(b.m - m)));
    return SoftmaxAcc{m, s};
}

/* Adds this thread's share of the row: elements tid, tid + blockDim.x, ...
 * (by packs of P when kVec). */
template <typename T, bool kVec>
__device__ __forceinline__ void acc_row(SoftmaxAcc &a, const T *row, int V) {
    if (kVec) {
        constexpr int P = Pack16<T>::N;
        for (int k = threadIdx.x; k < V / P; k += blockDim.x) {
            const Pack16<T> z = load_pack(row + (size_t)k * P);
#pragma unroll
            for (int e = 0; e < P; e++) acc_add(a, to_f32(z.v[e]));
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x) acc_add(a, to_f32(row[j]));
    }
}

template <typename T, bool kVec>
__global__ void crossentropy_forward_kernel(float *losses, float *lse, const T *logits,
                                            const int32_t *targets, int V) {
    __shared__ SoftmaxAcc warp_acc[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    const size_t i = blockIdx.x;
    const T *row = logits + i * V;

    SoftmaxAcc a{-INFINITY, 0.0f};
    acc_row<T, kVec>(a, row, V);
    for (int o = 16; o > 0; o >>= 1) {
        const SoftmaxAcc b{__shfl_xor_sync(OURO_FULL_MASK, a.m, o),
                           __shfl_xor_sync(OURO_FULL_MASK, a.s, o)};
        a = acc_merge(a, b);
    }
    if (lane == 0) warp_acc[warp] = a;
    __syncthreads();
    if (threadIdx.x != 0) return;
    SoftmaxAcc total = warp_acc[0];
    for (int w = 1; w < n_warps; w++) total = acc_merge(total, warp_acc[w]);

    const float log_s = logf(total.s);
    lse[i] = total.m + log_s;
    if (targets != nullptr && losses != nullptr) {
        const int t = targets[i];
        losses[i] = (t >= 0 && t < V) ? log_s - (to_f32(row[t]) - total.m)
                                      : __int_as_float(0x7fc00000); /* quiet NaN */
    }
}

__device__ __forceinline__ float dlogit(float z, float lse, float scale, bool is_target) {
    float d = expf(z - lse) * scale;
    if (is_target) d -= scale;
    return d;
}

template <typename T, bool kVec>
__global__ void crossentropy_backward_kernel(T *logits, const float *lse,
                                             const int32_t *targets, float scale, int V) {
    const size_t i = blockIdx.x;
    T *row = logits + i * V;
    const float l = lse[i];
    const int t = targets[i]; /* outside [0, V): matches no column */
    if (kVec) {
        constexpr int P = Pack16<T>::N;
        for (int k = threadIdx.x; k < V / P; k += blockDim.x) {
            Pack16<T> z = load_pack(row + (size_t)k * P);
#pragma unroll
            for (int e = 0; e < P; e++)
                z.v[e] = from_f32<T>(dlogit(to_f32(z.v[e]), l, scale, k * P + e == t));
            store_pack(row + (size_t)k * P, z);
        }
    } else {
        for (int j = threadIdx.x; j < V; j += blockDim.x)
            row[j] = from_f32<T>(dlogit(to_f32(row[j]), l, scale, j == t));
    }
}

/* Whether every row can be read by 16-byte packs. */
template <typename T> bool rows_vectorizable(const void *logits, int V) {
    return is_aligned16(logits) && V % Pack16<T>::N == 0;
}

template <typename T>
void launch_forward(float *losses, float *lse, const void *logits, const int32_t *targets,
                    int N, int V, cudaStream_t s) {
    const T *z = static_cast<const T *>(logits);
    if (rows_vectorizable<T>(logits, V))
        crossentropy_forward_kernel<T, true><<<N, kThreads, 0, s>>>(losses, lse, z, targets, V);
    else
        crossentropy_forward_kernel<T, false><<<N, kThreads, 0, s>>>(losses, lse, z, targets,
                                                                     V);
    OURO_CHECK_LAUNCH("crossentropy_forward_kernel (k_crossentropy_forward)");
}

template <typename T>
void launch_backward(void *logits, const float *lse, const int32_t *targets, float scale,
                     int N, int V, cudaStream_t s) {
    T *z = static_cast<T *>(logits);
    if (rows_vectorizable<T>(logits, V))
        crossentropy_backward_kernel<T, true><<<N, kThreads, 0, s>>>(z, lse, targets, scale, V);
    else
        crossentropy_backward_kernel<T, false><<<N, kThreads, 0, s>>>(z, lse, targets, scale,
                                                                      V);
    OURO_CHECK_LAUNCH("crossentropy_backward_kernel (k_crossentropy_backward)");
}

} // namespace

extern "C" void k_crossentropy_forward(float *losses, float *lse, const void *logits,
                                       OuroDType t, const int32_t *targets, int N, int V,
                                       cudaStream_t s) {
    if (N <= 0 || V <= 0) return;
    if (t == OURO_F32)
        launch_forward<float>(losses, lse, logits, targets, N, V, s);
    else if (t == OURO_BF16)
        launch_forward<__nv_bfloat16>(losses, lse, logits, targets, N, V, s);
    else
        die_bad_dtype("k_crossentropy_forward", t);
}

extern "C" void k_crossentropy_backward(void *logits_to_dlogits, const float *lse,
                                        const int32_t *targets, float scale, OuroDType t, int N,
                                        int V, cudaStream_t s) {
    if (N <= 0 || V <= 0) return;
    if (targets == nullptr)
        die("k_crossentropy_backward: targets is NULL; the gradient of the loss needs the "
            "target of every row");
    if (t == OURO_F32)
        launch_backward<float>(logits_to_dlogits, lse, targets, scale, N, V, s);
    else if (t == OURO_BF16)
        launch_backward<__nv_bfloat16>(logits_to_dlogits, lse, targets, scale, N, V, s);
    else
        die_bad_dtype("k_crossentropy_backward", t);
}
