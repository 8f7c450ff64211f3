/* layernorm.cu - LayerNorm over the last axis, eps 1e-5, biased variance,
 * as ops_cpu.c layernorm_forward/backward: k_layernorm_forward,
 * k_residual_layernorm_forward (the residual add fused in front),
 * k_layernorm_backward and its scratch size (see kernels.h).
 *
 * Forward: one warp per row. Each lane stages its channels (c = lane,
 * lane + 32, ...) in shared memory, so the row is read from global memory
 * once and the statistics are the two-pass ones: mean first, then the
 * mean of squared deviations from it (not E[x^2] - E[x]^2, which cancels
 * badly). A lane only ever reads back its own staged values, so no
 * barrier is needed. y is stored in the run's dtype, mean and rstd fp32.
 *
 * Backward: one block per chunk of kRowsPerChunk consecutive rows. For
 * each row, in order, the block reduces mean(g) and mean(g * xhat), with
 * g = dy * w, through warp butterflies and warp totals added in warp
 * order, then adds the row's gradient into dx and the row's dy * xhat and
 * dy into per-column partial sums held in shared memory (column c belongs
 * to thread c % blockDim.x for the whole kernel, so no two threads share
 * one). Each chunk writes its partials to scratch; a second kernel adds
 * the chunks in chunk order into dw and db. Nothing depends on which
 * block runs first.
 *
 * Shared memory grows with C (a row per warp forward, 2C floats
 * backward); beyond the default 48 KiB the kernels opt in, up to what the
 * device allows.
 */
#include "dtype.cuh"

namespace {

constexpr float kEps = 1e-5f;
constexpr int kForwardWarps = 4;      /* rows per forward block */
constexpr int kBackwardThreads = 256; /* threads per backward block */
constexpr int kRowsPerChunk = 32;     /* rows per backward block */
constexpr int kParamThreads = 256;    /* threads per block of the chunk sum */
constexpr size_t kDefaultSmem = 48u * 1024u;

/* y = LayerNorm(x), or with kFused: res = x + r first, then y = LayerNorm(res).
 * res may alias x: each element is read, then written, by one lane. */
template <typename Ty, typename Tr, bool kFused>
__global__ void layernorm_forward_kernel(float *res, Ty *y, float *mean, float *rstd,
                                         const float *x, const Tr *r, const float *w,
                                         const float *b, int N, int C) {
    extern __shared__ float staged_rows[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row = blockIdx.x * (blockDim.x >> 5) + warp;
    if (row >= N) return; /* whole warps leave; no barrier follows */
    float *xs = staged_rows + (size_t)warp * C;
    const size_t off = (size_t)row * C;

    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float v = x[off + c];
        if (kFused) {
            v += to_f32(r[off + c]);
            res[off + c] = v;
        }
        xs[c] = v;
        sum += v;
    }
    const float m = warp_sum(sum) / (float)C;

    float sq = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float d = xs[c] - m;
        sq += d * d;
    }
    const float var = warp_sum(sq) / (float)C;
    const float s = 1.0f / sqrtf(var + kEps);

    for (int c = lane; c < C; c += 32) y[off + c] = from_f32<Ty>((xs[c] - m) * s * w[c] + b[c]);
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

/* Warps per forward block such that their staged rows fit the default
 * shared memory, at least one (which then opts in to more). */
int forward_warps(int C) {
    const size_t row_bytes = (size_t)C * sizeof(float);
    size_t w = kDefaultSmem / row_bytes;
    if (w > (size_t)kForwardWarps) w = kForwardWarps;
    return w < 1 ? 1 : (int)w;
}

template <typename Ty, typename Tr, bool kFused>
void launch_forward(float *res, void *y, float *mean, float *rstd, const float *x,
                    const void *r, const float *w, const float *b, int N, int C,
                    cudaStream_t s) {
    const int warps = forward_warps(C);
    const size_t smem = (size_t)warps * C * sizeof(float);
    const unsigned blocks = (unsigned)((N + warps - 1) / warps);
    allow_dynamic_smem(layernorm_forward_kernel<Ty, Tr, kFused>, smem);
    layernorm_forward_kernel<Ty, Tr, kFused><<<blocks, warps * 32, smem, s>>>(
        res, static_cast<Ty *>(y), mean, rstd, x, static_cast<const Tr *>(r), w, b, N, C);
    OURO_CHECK_LAUNCH("layernorm_forward_kernel (k_layernorm_forward / "
                      "k_residual_layernorm_forward)");
}

size_t backward_chunks(int N) { return ((size_t)N + kRowsPerChunk - 1) / kRowsPerChunk; }

/* Pass 1: dx += the row gradients of this block's rows; partials[chunk] =
 * (sum dy * xhat [C], sum dy [C]) over them. */
template <typename T>
__global__ void layernorm_backward_kernel(float *dx, float *partials, const T *dy,
                                          const float *x, const float *w, const float *mean,
                                          const float *rstd, int N, int C) {
    extern __shared__ float col_acc[]; /* [0, C): dw partial, [C, 2C): db partial */
    __shared__ float red[2][2][32];    /* [row parity][g, g * xhat][warp] */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    const int r0 = blockIdx.x * kRowsPerChunk;
    const int r1 = min(N, r0 + kRowsPerChunk);

    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        col_acc[c] = 0.0f;
        col_acc[C + c] = 0.0f;
    }
    for (int row = r0; row < r1; row++) {
        const size_t off = (size_t)row * C;
        const float m = mean[row], s = rstd[row];
        float gs = 0.0f, gxs = 0.0f;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const float xhat = (x[off + c] - m) * s;
            const float g = to_f32(dy[off + c]) * w[c];
            gs += g;
            gxs += g * xhat;
        }
        gs = warp_sum(gs);
        gxs = warp_sum(gxs);
        /* Two buffers, alternating by row: a lane writing row r's totals
         * has passed row r-1's barrier, so nobody still reads row r-2's. */
        float(*buf)[32] = red[(row - r0) & 1];
        if (lane == 0) {
            buf[0][warp] = gs;
            buf[1][warp] = gxs;
        }
        __syncthreads();
        float gsum = 0.0f, gxsum = 0.0f;
        for (int k = 0; k < n_warps; k++) {
            gsum += buf[0][k];
            gxsum += buf[1][k];
        }
        gsum /= (float)C;
        gxsum /= (float)C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const float xhat = (x[off + c] - m) * s;
            const float d = to_f32(dy[off + c]);
            const float g = d * w[c];
            dx[off + c] += s * (g - gsum - xhat * gxsum);
            col_acc[c] += d * xhat;
            col_acc[C + c] += d;
        }
    }
    float *out = partials + (size_t)blockIdx.x * 2 * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        out[c] = col_acc[c];
        out[C + c] = col_acc[C + c];
    }
}

/* Pass 2: dw[c] += sum over chunks, in chunk order, of partials[chunk][c];
 * db likewise from the second half of each chunk's partials. */
__global__ void layernorm_param_grads_kernel(float *dw, float *db, const float *partials,
                                             int n_chunks, int C) {
    const size_t width = 2 * (size_t)C;
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < width;
         j += (size_t)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int k = 0; k < n_chunks; k++) acc += partials[(size_t)k * width + j];
        if (j < (size_t)C)
            dw[j] += acc;
        else
            db[j - C] += acc;
    }
}

template <typename T>
void launch_backward(float *dx, float *partials, const void *dy, const float *x,
                     const float *w, const float *mean, const float *rstd, int N, int C,
                     cudaStream_t s) {
    const size_t smem = 2 * (size_t)C * sizeof(float);
    allow_dynamic_smem(layernorm_backward_kernel<T>, smem);
    layernorm_backward_kernel<T><<<(unsigned)backward_chunks(N), kBackwardThreads, smem, s>>>(
        dx, partials, static_cast<const T *>(dy), x, w, mean, rstd, N, C);
    OURO_CHECK_LAUNCH("layernorm_backward_kernel (k_layernorm_backward)");
}

} // namespace

extern "C" void k_layernorm_forward(void *y, OuroDType yt, float *mean, float *rstd,
                                    const float *x, const float *w, const float *b, int N,
                                    int C, cudaStream_t s) {
    if (N <= 0 || C <= 0) return;
    if (yt == OURO_F32)
        launch_forward<float, float, false>(nullptr, y, mean, rstd, x, nullptr, w, b, N, C, s);
    else if (yt == OURO_BF16)
        launch_forward<__nv_bfloat16, float, false>(nullptr, y, mean, rstd, x, nullptr, w, b,
                                                    N, C, s);
    else
        die_bad_dtype("k_layernorm_forward", yt);
}

extern "C" void k_residual_layernorm_forward(float *res, void *y, OuroDType yt, float *mean,
                                             float *rstd, const float *a, const void *r,
                                             OuroDType rt, const float *w, const float *b,
                                             int N, int C, cudaStream_t s) {
    if (N <= 0 || C <= 0) return;
    if (yt != OURO_F32 && yt != OURO_BF16) die_bad_dtype("k_residual_layernorm_forward (y)", yt);
    if (rt != OURO_F32 && rt != OURO_BF16) die_bad_dtype("k_residual_layernorm_forward (r)", rt);
    if (yt == OURO_F32 && rt == OURO_F32)
        launch_forward<float, float, true>(res, y, mean, rstd, a, r, w, b, N, C, s);
    else if (yt == OURO_F32)
        launch_forward<float, __nv_bfloat16, true>(res, y, mean, rstd, a, r, w, b, N, C, s);
    else if (rt == OURO_F32)
        launch_forward<__nv_bfloat16, float, true>(res, y, mean, rstd, a, r, w, b, N, C, s);
    else
        launch_forward<__nv_bfloat16, __nv_bfloat16, true>(res, y, mean, rstd, a, r, w, b, N,
                                                           C, s);
}

extern "C" size_t k_layernorm_backward_scratch_floats(int N, int C) {
    if (N <= 0 || C <= 0) return 0;
    return backward_chunks(N) * 2 * (size_t)C;
}

extern "C" void k_layernorm_backward(float *dx, float *dw, float *db, float *scratch,
                                     const void *dy, OuroDType dyt, const float *x,
                                     const float *w, const float *mean, const float *rstd,
                                     int N, int C, cudaStream_t s) {
    if (N <= 0 || C <= 0) return;
    if (dyt == OURO_F32)
        launch_backward<float>(dx, scratch, dy, x, w, mean, rstd, N, C, s);
    else if (dyt == OURO_BF16)
        launch_backward<__nv_bfloat16>(dx, scratch, dy, x, w, mean, rstd, N, C, s);
    else
        die_bad_dtype("k_layernorm_backward", dyt);

    const size_t width = 2 * (size_t)C;
    layernorm_param_grads_kernel<<<grid_stride_blocks(width, kParamThreads), kParamThreads, 0,
                                   s>>>(dw, db, scratch, (int)backward_chunks(N), C);
    OURO_CHECK_LAUNCH("layernorm_param_grads_kernel (k_layernorm_backward)");
}
