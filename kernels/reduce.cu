/* reduce.cu - whole-tensor reductions for the update: k_sumsq (sum of
 * squares in double, for the gradient norm) with its scratch size, and
 * k_first_nonfinite (see kernels.h). Both synchronize the stream and
 * return the result to the host.
 *
 * Both split x into fixed chunks of kChunk elements, one block each, so
 * the partition depends on n alone (not on the GPU). Within a chunk,
 * thread t takes elements t, t + kThreads, ... in order (coalesced).
 * - k_sumsq: each thread accumulates x^2 in double; the block adds its
 *   threads through warp butterflies and the warp totals in warp order,
 *   and writes the chunk's sum to scratch. Pass 2, a single thread, adds
 *   the chunk sums in chunk order: the result repeats bit for bit and
 *   agrees with the CPU's sequential double sum to double rounding.
 * - k_first_nonfinite: each block writes the smallest index of a NaN or
 *   infinity in its chunk (or "none"); pass 2 takes the minimum over the
 *   chunks. A minimum is exact in any order.
 *
 * Scratch: k_sumsq_scratch_floats(n) floats, used as doubles / 64-bit
 * indices (one per chunk plus one for the result), with one spare float
 * so that a scratch pointer that is only 4-byte aligned can be rounded up
 * to 8. k_first_nonfinite needs the same amount.
 */
#include <limits.h>

#include "dtype.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 64;
constexpr size_t kChunk = (size_t)kThreads * kItemsPerThread; /* elements per block */
constexpr long long kNone = LLONG_MAX;                       /* no non-finite value */

size_t n_chunks(size_t n) { return (n + kChunk - 1) / kChunk; }

/* The scratch floats viewed as 8-byte slots, rounded up to an 8-byte
 * boundary (k_sumsq_scratch_floats leaves a spare float for this). */
template <typename S> S *scratch_slots(float *scratch, const char *who) {
    if (scratch == nullptr || (reinterpret_cast<uintptr_t>(scratch) & 3u) != 0)
        die("%s: scratch %p is NULL or not 4-byte aligned; pass device memory of "
            "k_sumsq_scratch_floats(n) floats",
            who, (void *)scratch);
    const uintptr_t a = (reinterpret_cast<uintptr_t>(scratch) + 7u) & ~(uintptr_t)7u;
    return reinterpret_cast<S *>(a);
}

__device__ __forceinline__ bool is_nonfinite(float x) {
    return (__float_as_uint(x) & 0x7f800000u) == 0x7f800000u; /* exponent all ones */
}

__device__ __forceinline__ long long warp_min(long long v) {
    for (int o = 16; o > 0; o >>= 1) {
        const long long w = __shfl_xor_sync(OURO_FULL_MASK, v, o);
        v = w < v ? w : v;
    }
    return v;
}

__global__ void sumsq_chunks_kernel(double *chunk_sums, const float *x, size_t n) {
    __shared__ double warp_sums[kThreads / 32];
    const size_t start = (size_t)blockIdx.x * kChunk;
    const size_t end = n - start < kChunk ? n : start + kChunk;
    double acc = 0.0;
    for (size_t i = start + threadIdx.x; i < end; i += kThreads) {
        const double v = (double)x[i];
        acc += v * v;
    }
    acc = warp_sum(acc);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x != 0) return;
    double total = 0.0;
    for (int w = 0; w < kThreads / 32; w++) total += warp_sums[w];
    chunk_sums[blockIdx.x] = total;
}

/* One thread: result = the chunk sums added in chunk order. */
__global__ void sum_in_order_kernel(double *result, const double *chunk_sums, size_t count) {
    double total = 0.0;
    for (size_t k = 0; k < count; k++) total += chunk_sums[k];
    *result = total;
}

__global__ void first_nonfinite_chunks_kernel(long long *chunk_first, const float *x,
                                              size_t n) {
    __shared__ long long warp_first[kThreads / 32];
    const size_t start = (size_t)blockIdx.x * kChunk;
    const size_t end = n - start < kChunk ? n : start + kChunk;
    long long first = kNone;
    for (size_t i = start + threadIdx.x; i < end; i += kThreads)
        if (is_nonfinite(x[i])) {
            first = (long long)i; /* this thread's indices only grow */
            break;
        }
    first = warp_min(first);
    if ((threadIdx.x & 31) == 0) warp_first[threadIdx.x >> 5] = first;
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int w = 0; w < kThreads / 32; w++)
        if (warp_first[w] < first) first = warp_first[w];
    chunk_first[blockIdx.x] = first;
}

/* One block: result = the minimum of the chunks' first indices. */
__global__ void min_index_kernel(long long *result, const long long *chunk_first,
                                 size_t count) {
    __shared__ long long warp_first[kThreads / 32];
    long long first = kNone;
    for (size_t k = threadIdx.x; k < count; k += kThreads)
        if (chunk_first[k] < first) first = chunk_first[k];
    first = warp_min(first);
    if ((threadIdx.x & 31) == 0) warp_first[threadIdx.x >> 5] = first;
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int w = 0; w < kThreads / 32; w++)
        if (warp_first[w] < first) first = warp_first[w];
    *result = first;
}

} // namespace

extern "C" size_t k_sumsq_scratch_floats(size_t n) {
    /* a slot per chunk and one for the result, 2 floats each, and a spare
     * float for alignment */
    return 2 * (n_chunks(n) + 1) + 1;
}

extern "C" double k_sumsq(const float *x, size_t n, float *scratch, cudaStream_t s) {
    if (n == 0) return 0.0;
    double *slots = scratch_slots<double>(scratch, "k_sumsq");
    const size_t chunks = n_chunks(n);
    if (chunks > (size_t)INT_MAX)
        die("k_sumsq: %zu elements make %zu chunks of %zu, over the grid limit; the tensor "
            "is too large to reduce at once",
            n, chunks, kChunk);
    sumsq_chunks_kernel<<<(unsigned)chunks, kThreads, 0, s>>>(slots, x, n);
    OURO_CHECK_LAUNCH("sumsq_chunks_kernel (k_sumsq)");
    sum_in_order_kernel<<<1, 1, 0, s>>>(slots + chunks, slots, chunks);
    OURO_CHECK_LAUNCH("sum_in_order_kernel (k_sumsq)");
    double result = 0.0;
    cudaCheck(cudaMemcpyAsync(&result, slots + chunks, sizeof result, cudaMemcpyDeviceToHost, s));
    cudaCheck(cudaStreamSynchronize(s));
    return result;
}

extern "C" long k_first_nonfinite(const float *x, size_t n, float *scratch, cudaStream_t s) {
    if (n == 0) return -1;
    long long *slots = scratch_slots<long long>(scratch, "k_first_nonfinite");
    const size_t chunks = n_chunks(n);
    if (chunks > (size_t)INT_MAX)
        die("k_first_nonfinite: %zu elements make %zu chunks of %zu, over the grid limit; "
            "the tensor is too large to scan at once",
            n, chunks, kChunk);
    first_nonfinite_chunks_kernel<<<(unsigned)chunks, kThreads, 0, s>>>(slots, x, n);
    OURO_CHECK_LAUNCH("first_nonfinite_chunks_kernel (k_first_nonfinite)");
    min_index_kernel<<<1, kThreads, 0, s>>>(slots + chunks, slots, chunks);
    OURO_CHECK_LAUNCH("min_index_kernel (k_first_nonfinite)");
    long long first = kNone;
    cudaCheck(cudaMemcpyAsync(&first, slots + chunks, sizeof first, cudaMemcpyDeviceToHost, s));
    cudaCheck(cudaStreamSynchronize(s));
    return first == kNone ? -1 : (long)first;
}
