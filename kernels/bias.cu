/* bias.cu - the bias half of a matrix product's forward and backward:
 * k_add_bias, k_bias_backward and its scratch size (see kernels.h).
 *
 * k_add_bias: blocks walk the rows, threads the columns; y is read and
 * written in its dtype, the sum is fp32.
 *
 * k_bias_backward is a deterministic column sum in two passes. Pass 1:
 * block (chunk, column tile) has one thread per column sum the chunk's
 * kRowsPerChunk rows in row order (loads coalesced across the columns) and
 * write the chunk's partial to scratch. Pass 2: one thread per column adds
 * the partials in chunk order and adds the total into dbias. The result
 * depends only on N, OC and kRowsPerChunk, never on scheduling.
 */
#include "dtype.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerChunk = 64;
constexpr unsigned kMaxRowBlocks = 1u << 16;

template <typename T>
__global__ void add_bias_kernel(T *y, const float *bias, size_t N, int OC) {
    for (size_t r = blockIdx.x; r < N; r += gridDim.x) {
        T *row = y + r * OC;
        for (int o = threadIdx.x; o < OC; o += blockDim.x)
            row[o] = from_f32<T>(to_f32(row[o]) + bias[o]);
    }
}

/* grid (chunks, column tiles): partials[chunk][o] = sum of the chunk's dy[:, o]. */
template <typename T>
__global__ void bias_partials_kernel(float *partials, const T *dy, int N, int OC) {
    const int o = blockIdx.y * blockDim.x + threadIdx.x;
    if (o >= OC) return;
    const int r0 = blockIdx.x * kRowsPerChunk;
    const int r1 = min(N, r0 + kRowsPerChunk);
    float acc = 0.0f;
    for (int r = r0; r < r1; r++) acc += to_f32(dy[(size_t)r * OC + o]);
    partials[(size_t)blockIdx.x * OC + o] = acc;
}

__global__ void bias_sum_chunks_kernel(float *dbias, const float *partials, int n_chunks,
                                       int OC) {
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= OC) return;
    float acc = 0.0f;
    for (int k = 0; k < n_chunks; k++) acc += partials[(size_t)k * OC + o];
    dbias[o] += acc;
}

size_t bias_chunks(int N) { return ((size_t)N + kRowsPerChunk - 1) / kRowsPerChunk; }

template <typename T>
void launch_bias_partials(float *partials, const void *dy, int N, int OC, cudaStream_t s) {
    const dim3 grid((unsigned)bias_chunks(N), (unsigned)((OC + kThreads - 1) / kThreads));
    bias_partials_kernel<T><<<grid, kThreads, 0, s>>>(partials, static_cast<const T *>(dy), N,
                                                      OC);
    OURO_CHECK_LAUNCH("bias_partials_kernel (k_bias_backward)");
}

} // namespace

extern "C" void k_add_bias(void *y, OuroDType yt, const float *bias, int N, int OC,
                           cudaStream_t s) {
    if (N <= 0 || OC <= 0) return;
    const unsigned blocks = (unsigned)N < kMaxRowBlocks ? (unsigned)N : kMaxRowBlocks;
    if (yt == OURO_F32)
        add_bias_kernel<float><<<blocks, kThreads, 0, s>>>(static_cast<float *>(y), bias,
                                                          (size_t)N, OC);
    else if (yt == OURO_BF16)
        add_bias_kernel<__nv_bfloat16><<<blocks, kThreads, 0, s>>>(
            static_cast<__nv_bfloat16 *>(y), bias, (size_t)N, OC);
    else
        die_bad_dtype("k_add_bias", yt);
    OURO_CHECK_LAUNCH("add_bias_kernel (k_add_bias)");
}

extern "C" size_t k_bias_backward_scratch_floats(int N, int OC) {
    if (N <= 0 || OC <= 0) return 0;
    return bias_chunks(N) * (size_t)OC;
}

extern "C" void k_bias_backward(float *dbias, float *scratch, const void *dy, OuroDType dyt,
                                int N, int OC, cudaStream_t s) {
    if (N <= 0 || OC <= 0) return;
    if ((OC + kThreads - 1) / kThreads > 65535)
        die("k_bias_backward: OC = %d columns need more than 65535 column tiles of %d; "
            "bias gradients that wide are not supported",
            OC, kThreads);
    if (dyt == OURO_F32)
        launch_bias_partials<float>(scratch, dy, N, OC, s);
    else if (dyt == OURO_BF16)
        launch_bias_partials<__nv_bfloat16>(scratch, dy, N, OC, s);
    else
        die_bad_dtype("k_bias_backward", dyt);

    bias_sum_chunks_kernel<<<(unsigned)((OC + kThreads - 1) / kThreads), kThreads, 0, s>>>(
        dbias, scratch, (int)bias_chunks(N), OC);
    OURO_CHECK_LAUNCH("bias_sum_chunks_kernel (k_bias_backward)");
}
