/* embedding.cu - token and position embeddings: k_embedding_forward,
 * k_embedding_backward_wpe, k_embedding_backward_wte (see kernels.h).
 * Everything is fp32.
 *
 * Forward: blocks walk the rows (grid-stride), threads the channels, with
 * float4 loads when C is a multiple of 4 and the arrays are 16-byte
 * aligned.
 *
 * Backward, deterministic without atomics, and in the CPU's order
 * (ops_cpu.c embedding_backward adds rows in position order straight into
 * the gradient), so fp32 results match it bit for bit:
 * - wpe: one thread per (t, c) adds dout[b, t, c] for b = 0, 1, ... to the
 *   old gradient in registers and writes once.
 * - wte: the host groups the positions by token (stable, so each group is
 *   in position order); one block per group, threads over C, adds the
 *   group's rows in order onto the token's gradient row. Distinct groups
 *   name distinct tokens, so no two blocks write the same row.
 * The token ids are not checked here (no vocabulary size is passed): the
 * host validates them before they reach the device.
 */
#include "dtype.cuh"

namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxRowBlocks = 1u << 16;

template <bool kVec4>
__global__ void embedding_forward_kernel(float *out, const int32_t *tokens, const float *wte,
                                         const float *wpe, size_t N, int T, int C) {
    for (size_t r = blockIdx.x; r < N; r += gridDim.x) {
        const int t = (int)(r % (size_t)T);
        const float *te = wte + (size_t)tokens[r] * C;
        const float *pe = wpe + (size_t)t * C;
        float *o = out + r * C;
        if (kVec4) {
            for (int c4 = threadIdx.x; c4 < C / 4; c4 += blockDim.x) {
                const float4 a = reinterpret_cast<const float4 *>(te)[c4];
                const float4 b = reinterpret_cast<const float4 *>(pe)[c4];
                reinterpret_cast<float4 *>(o)[c4] =
                    make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
            }
        } else {
            for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = te[c] + pe[c];
        }
    }
}

/* i runs over the T*C entries of dwpe. */
__global__ void embedding_backward_wpe_kernel(float *dwpe, const float *dout, int B,
                                              size_t TC) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < TC;
         i += (size_t)gridDim.x * blockDim.x) {
        float acc = dwpe[i];
        for (int b = 0; b < B; b++) acc += dout[(size_t)b * TC + i];
        dwpe[i] = acc;
    }
}

__global__ void embedding_backward_wte_kernel(float *dwte, const float *dout,
                                              const int32_t *order, const int32_t *seg_start,
                                              const int32_t *seg_token, int n_seg, int C) {
    for (int g = blockIdx.x; g < n_seg; g += gridDim.x) {
        const int first = seg_start[g], last = seg_start[g + 1];
        float *row = dwte + (size_t)seg_token[g] * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float acc = row[c];
            for (int k = first; k < last; k++) acc += dout[(size_t)order[k] * C + c];
            row[c] = acc;
        }
    }
}

} // namespace

extern "C" void k_embedding_forward(float *out, const int32_t *tokens, const float *wte,
                                    const float *wpe, int B, int T, int C, cudaStream_t s) {
    if (B <= 0 || T <= 0 || C <= 0) return;
    const size_t N = (size_t)B * T;
    const unsigned blocks = (unsigned)(N < kMaxRowBlocks ? N : kMaxRowBlocks);
    const bool vec4 = C % 4 == 0 && is_aligned16(out) && is_aligned16(wte) && is_aligned16(wpe);
    if (vec4)
        embedding_forward_kernel<true><<<blocks, kThreads, 0, s>>>(out, tokens, wte, wpe, N, T,
                                                                   C);
    else
        embedding_forward_kernel<false><<<blocks, kThreads, 0, s>>>(out, tokens, wte, wpe, N, T,
                                                                    C);
    OURO_CHECK_LAUNCH("embedding_forward_kernel (k_embedding_forward)");
}

extern "C" void k_embedding_backward_wpe(float *dwpe, const float *dout, int B, int T, int C,
                                         cudaStream_t s) {
    if (B <= 0 || T <= 0 || C <= 0) return;
    const size_t TC = (size_t)T * C;
    embedding_backward_wpe_kernel<<<grid_stride_blocks(TC, kThreads), kThreads, 0, s>>>(
        dwpe, dout, B, TC);
    OURO_CHECK_LAUNCH("embedding_backward_wpe_kernel (k_embedding_backward_wpe)");
}

extern "C" void k_embedding_backward_wte(float *dwte, const float *dout, const int32_t *order,
                                         const int32_t *seg_start, const int32_t *seg_token,
                                         int n_seg, int C, cudaStream_t s) {
    if (n_seg <= 0 || C <= 0) return;
    const unsigned blocks = (unsigned)n_seg < kMaxRowBlocks ? (unsigned)n_seg : kMaxRowBlocks;
    embedding_backward_wte_kernel<<<blocks, kThreads, 0, s>>>(dwte, dout, order, seg_start,
                                                              seg_token, n_seg, C);
    OURO_CHECK_LAUNCH("embedding_backward_wte_kernel (k_embedding_backward_wte)");
}
