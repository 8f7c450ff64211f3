/* attention.cu - fused causal self-attention, forward and backward, without
 * ever writing the T x T score matrix (see kernels.h for the C API and
 * attention_forward / attention_backward in src/ops_cpu.c for the reference).
 *
 * Layout. qkv is [B,T,3C]: for token (b,t) and head h, q[d] sits at
 * qkv[(b*T+t)*3C + h*HS + d], k at +C, v at +2C. out and dout are [B,T,C]
 * (heads side by side), lse and D are [B,NH,T]. scale = 1/sqrt(HS).
 *
 * Tiling. Every kernel works on one (sequence b, head h) pair and tiles of
 * TILE = 32 tokens, one token per lane of a warp. A block has WARPS = 8
 * warps; in a tile each warp owns PER_WARP = 4 of the 32 tokens whose
 * results the block produces (queries in the forward and the dQ pass, keys
 * in the dK/dV pass). The inner loops alternate two lane mappings:
 *   - scores: lane = the token of the *other* tile (a key, or in the dK/dV
 *     pass a query); each lane forms dot products of its token's row with
 *     the warp's 4 rows, so one shared-memory read serves 4 products;
 *   - accumulation: lane = a feature d (d = lane + 32c, c < ceil(HS/32));
 *     the 32 scores are passed lane to lane with __shfl_sync.
 * Rows read one per lane (lane = token, loop over d) are stored with a
 * stride of HS+1 floats so the 32 lanes hit 32 different banks; rows read
 * by all lanes at once (broadcast) or one feature per lane keep stride HS.
 * Head size is a template parameter (every multiple of 8 up to 128), so the
 * per-lane register arrays have fixed sizes; the loops over d unroll by 8
 * (a full unroll made the 96 instantiations compile 2-3x slower and
 * spilled more registers at HS = 128).
 *
 * Forward (one block per (b,h, query tile)): the block walks key tiles
 * 0 .. the diagonal. For each it computes the scaled scores, masks keys
 * after the query (and past T), and updates an online softmax per query
 * row: running max m and sum l, with the fp32 accumulator rescaled by
 * exp(m_old - m_new) whenever the max grows. At the end out = acc / l and
 * lse = m + log l. Tiles above the diagonal are never visited.
 *
 * Backward, deterministic and without atomics, in three kernels:
 *   1. D[t] = dout[t] . out[t] per (b,h,t), one warp per row, into scratch.
 *   2. One block per (b,h, key tile) loops over the query tiles at or after
 *      its keys, recomputes P = exp(s - lse) and dS = P (dout.v - D), and
 *      sums dV = P^T dout and dK = scale dS^T q for its 32 keys in
 *      registers.
 *   3. One block per (b,h, query tile) loops over the key tiles up to the
 *      diagonal, recomputes P and dS the same way and sums dQ = scale dS k.
 * dK/dV are sums over queries and dQ a sum over keys; giving each sum to
 * the block that owns its output rows means every element of dqkv is
 * written by exactly one thread, once, and each sum runs in a fixed order.
 * The price is that P and dS are computed twice (in passes 2 and 3); in
 * exchange nothing of size T x T is stored and no partial sums of dQ have
 * to be gathered across blocks.
 *
 * Shared memory per block, in floats (dynamic; the forward at HS = 128 and
 * the backward from HS = 96 need more than the default 48 KB, so the
 * launcher opts in whenever the size calls for it):
 *   forward:      32*HS (q) + 32*(HS+1) (k) + 32*HS (v)      HS=128: 49,280 B
 *   dK/dV and dQ: 2*32*HS + 2*32*(HS+1)                       HS=128: 65,792 B
 * (HS = 64: 24,704 B and 33,024 B.) Registers hold the per-row state:
 * 4 rows x ceil(HS/32) accumulators per lane (two sets in the dK/dV pass).
 *
 * Precision: inputs and outputs in the run's dtype (fp32 or bf16),
 * converted to fp32 on load; all arithmetic and lse/D in fp32.
 *
 * Tensor cores. bf16 runs with a head size that is a multiple of 16 up to
 * 128 (and 16-byte aligned arrays) go to a tensor-core path instead, same
 * algorithm and contract; the backward's D still comes from the kernel
 * here. There are two (attention_tc.h): the WMMA kernels of
 * attention_tc.cu, the default, and the mma.sync kernels of
 * attention_mma.cu, which keep the scores in registers. The environment
 * variable OURO_ATTENTION=simt|wmma|mma picks the path of bf16 runs (simt:
 * the kernels of this file), read once per process; a path that cannot
 * take a call leaves it to the kernels here. Tests and benchmarks name the
 * path of each call (k_attention_forward_path). fp32 always runs here: the
 * tensor cores take no fp32 inputs, and fp32 is the exact check against
 * the CPU.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "attention_tc.h"
#include "cuda_check.h"
#include "kernels.h"

extern "C" void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

namespace {

constexpr int TILE = 32;                  /* tokens per tile = lanes per warp */
constexpr int WARPS = 8;                  /* warps per block */
constexpr int PER_WARP = TILE / WARPS;    /* rows of the block's tile per warp */
constexpr int THREADS = WARPS * 32;
constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr size_t DEFAULT_SMEM = 48 * 1024; /* dynamic shared memory without opt-in */
constexpr int MAX_GRID_Y = 65535;

static_assert(TILE == 32, "the lane mappings assume one token per lane");
static_assert(PER_WARP * WARPS == TILE, "warps must cover the tile exactly");

/* Every head size the kernels are instantiated for. k_attention_supported
 * answers from the same list. */
#define ATTENTION_HEAD_SIZES(X)                                                        \
    X(8) X(16) X(24) X(32) X(40) X(48) X(56) X(64) X(72) X(80) X(88) X(96) X(104)   \
    X(112) X(120) X(128)

/* ---- element access: fp32 or bf16 in memory, fp32 in registers ---- */

__device__ __forceinline__ float load_elem(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float load_elem(const __nv_bfloat16 *p, size_t i)
{
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void store_elem(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_elem(__nv_bfloat16 *p, size_t i, float v)
{
    p[i] = __float2bfloat16(v);
}

/* Butterfly reductions: every lane ends with the same, order-fixed result. */
__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

/* Copies the HS features of tokens t0 .. t0+TILE-1 of one head into a
 * shared tile with row stride ld; tokens at or past T read as zeros so the
 * arithmetic on them is harmless (their results are masked or not stored).
 * src points at token 0's first feature; row_stride is between tokens. */
template <int HS, typename Elem>
__device__ void load_tile(float *tile, int ld, const Elem *src, size_t row_stride, int t0,
                          int T)
{
    for (int i = threadIdx.x; i < TILE * HS; i += THREADS) {
        const int r = i / HS, d = i - r * HS;
        const int t = t0 + r;
        tile[r * ld + d] = t < T ? load_elem(src, (size_t)t * row_stride + d) : 0.0f;
    }
}

/* One (sequence, head) pair's view of the [B,T,3C] / [B,T,C] arrays. */
struct HeadView {
    int b, h;
    size_t qkv_offset; /* of q for token 0 of this head; k at +C, v at +2C */
    size_t tc_offset;  /* of this head's features of token 0 in [B,T,C] */
    size_t row_offset; /* of token 0 in [B,NH,T] (lse, D) */
};

__device__ __forceinline__ HeadView head_view(int T, int C, int NH, int HS)
{
    HeadView v;
    v.b = blockIdx.x / NH;
    v.h = blockIdx.x % NH;
    v.qkv_offset = (size_t)v.b * T * 3 * C + (size_t)v.h * HS;
    v.tc_offset = (size_t)v.b * T * C + (size_t)v.h * HS;
    v.row_offset = (size_t)blockIdx.x * T;
    return v;
}

/* ---- forward ---- */

template <int HS>
constexpr size_t forward_smem_floats()
{
    return (size_t)TILE * HS + (size_t)TILE * (HS + 1) + (size_t)TILE * HS;
}

/* grid (B*NH, query tiles), THREADS threads. blockIdx.y counts from the
 * last query tile, which has the most key tiles, so the long blocks start
 * first. */
template <typename Elem, int HS>
__global__ void __launch_bounds__(THREADS)
    attention_forward_kernel(Elem *out, float *lse, const Elem *qkv, int T, int C, int NH,
                             float scale)
{
    constexpr int LD = HS + 1;
    constexpr int CH = (HS + 31) / 32; /* features per lane in the accumulator */
    extern __shared__ float smem[];
    float *q_s = smem;               /* [TILE][HS], read by broadcast */
    float *k_s = q_s + TILE * HS;    /* [TILE][LD], read one row per lane */
    float *v_s = k_s + TILE * LD;    /* [TILE][HS], read one feature per lane */

    const HeadView hv = head_view(T, C, NH, HS);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * TILE;
    const size_t stride = 3 * (size_t)C;
    const Elem *q_g = qkv + hv.qkv_offset;
    const Elem *k_g = q_g + C;
    const Elem *v_g = q_g + 2 * (size_t)C;

    load_tile<HS>(q_s, HS, q_g, stride, q0, T);

    float m[PER_WARP], l[PER_WARP], acc[PER_WARP][CH];
#pragma unroll
    for (int r = 0; r < PER_WARP; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < CH; c++) acc[r][c] = 0.0f;
    }

    /* the last key any query of this tile may see */
    const int last_key = min(q0 + TILE - 1, T - 1);
    for (int k0 = 0; k0 <= last_key; k0 += TILE) {
        __syncthreads(); /* the previous tile's k and v are no longer read */
        load_tile<HS>(k_s, LD, k_g, stride, k0, T);
        load_tile<HS>(v_s, HS, v_g, stride, k0, T);
        __syncthreads();

        /* scores, lane = key */
        const int key = k0 + lane;
        float s[PER_WARP];
#pragma unroll
        for (int r = 0; r < PER_WARP; r++) s[r] = 0.0f;
#pragma unroll 8
        for (int d = 0; d < HS; d++) {
            const float kd = k_s[lane * LD + d];
#pragma unroll
            for (int r = 0; r < PER_WARP; r++) s[r] += q_s[(warp * PER_WARP + r) * HS + d] * kd;
        }

        /* online softmax. Key tile 0 holds key 0, which every query sees,
         * so m is finite from the first tile on and exp(m - m_new) is
         * well defined (0 when m was still -inf). */
#pragma unroll
        for (int r = 0; r < PER_WARP; r++) {
            const int query = q0 + warp * PER_WARP + r;
            const bool visible = key <= query && key < T;
            const float sc = visible ? s[r] * scale : -INFINITY;
            const float m_new = fmaxf(m[r], warp_max(sc));
            const float alpha = expf(m[r] - m_new);
            const float p = visible ? expf(sc - m_new) : 0.0f;
            l[r] = l[r] * alpha + warp_sum(p);
            m[r] = m_new;
#pragma unroll
            for (int c = 0; c < CH; c++) acc[r][c] *= alpha;
            s[r] = p; /* s now holds this lane's probability (unnormalised) */
        }

        /* acc += P V, lane = feature */
#pragma unroll 4
        for (int j = 0; j < TILE; j++) {
#pragma unroll
            for (int r = 0; r < PER_WARP; r++) {
                const float pj = __shfl_sync(FULL_MASK, s[r], j);
#pragma unroll
                for (int c = 0; c < CH; c++) {
                    const int d = lane + 32 * c;
                    if (d < HS) acc[r][c] += pj * v_s[j * HS + d];
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < PER_WARP; r++) {
        const int query = q0 + warp * PER_WARP + r;
        if (query >= T) continue;
        const float inv_l = 1.0f / l[r];
#pragma unroll
        for (int c = 0; c < CH; c++) {
            const int d = lane + 32 * c;
            if (d < HS) store_elem(out, hv.tc_offset + (size_t)query * C + d, acc[r][c] * inv_l);
        }
        if (lane == 0) lse[hv.row_offset + query] = m[r] + logf(l[r]);
    }
}

/* ---- backward pass 1: D = rowsum(dout * out) ---- */

constexpr int D_WARPS = 8;

/* One warp per (b,t,h) row, rows numbered in [B,T,NH] order so that row r
 * is the HS contiguous elements at r*HS of dout and out. */
template <typename Elem>
__global__ void __launch_bounds__(D_WARPS * 32)
    attention_backward_d_kernel(float *D, const Elem *dout, const Elem *out, int T, int NH,
                                int HS, size_t rows)
{
    const size_t row = (size_t)blockIdx.x * D_WARPS + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return; /* the whole warp leaves together */
    float sum = 0.0f;
    for (int d = lane; d < HS; d += 32)
        sum += load_elem(dout, row * HS + d) * load_elem(out, row * HS + d);
    sum = warp_sum(sum);
    if (lane == 0) {
        const size_t bt = row / NH; /* b*T + t */
        const size_t h = row % NH;
        const size_t b = bt / T, t = bt % T;
        D[(b * NH + h) * T + t] = sum;
    }
}

/* ---- backward passes 2 and 3 ---- */

template <int HS>
constexpr size_t backward_smem_floats()
{
    return 2 * (size_t)TILE * HS + 2 * (size_t)TILE * (HS + 1);
}

/* Pass 2: dK and dV. grid (B*NH, key tiles), THREADS threads. Each warp
 * owns PER_WARP keys of the block's tile; key tile 0 (blockIdx.y = 0)
 * meets the most query tiles and starts first. */
template <typename Elem, int HS>
__global__ void __launch_bounds__(THREADS)
    attention_backward_dkdv_kernel(Elem *dqkv, const Elem *dout, const Elem *qkv,
                                   const float *lse, const float *D, int T, int C, int NH,
                                   float scale)
{
    constexpr int LD = HS + 1;
    constexpr int CH = (HS + 31) / 32;
    extern __shared__ float smem[];
    float *k_s = smem;               /* [TILE][HS], this block's keys, broadcast */
    float *v_s = k_s + TILE * HS;    /* [TILE][HS] */
    float *q_s = v_s + TILE * HS;    /* [TILE][LD], current query tile */
    float *do_s = q_s + TILE * LD;   /* [TILE][LD] */

    const HeadView hv = head_view(T, C, NH, HS);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int k0 = blockIdx.y * TILE;
    const size_t stride = 3 * (size_t)C;
    const Elem *q_g = qkv + hv.qkv_offset;
    const Elem *do_g = dout + hv.tc_offset;

    load_tile<HS>(k_s, HS, q_g + C, stride, k0, T);
    load_tile<HS>(v_s, HS, q_g + 2 * (size_t)C, stride, k0, T);

    float dk[PER_WARP][CH], dv[PER_WARP][CH];
#pragma unroll
    for (int r = 0; r < PER_WARP; r++)
#pragma unroll
        for (int c = 0; c < CH; c++) dk[r][c] = dv[r][c] = 0.0f;

    /* Tiles are aligned, so the first query tile that sees any of these
     * keys is the one starting at k0 (the diagonal tile). */
    for (int q0 = k0; q0 < T; q0 += TILE) {
        __syncthreads(); /* the previous query tile is no longer read */
        load_tile<HS>(q_s, LD, q_g, stride, q0, T);
        load_tile<HS>(do_s, LD, do_g, (size_t)C, q0, T);
        __syncthreads();

        /* scores and dP, lane = query */
        const int query = q0 + lane;
        const float lse_q = query < T ? lse[hv.row_offset + query] : 0.0f;
        const float d_q = query < T ? D[hv.row_offset + query] : 0.0f;
        float s[PER_WARP], dp[PER_WARP];
#pragma unroll
        for (int r = 0; r < PER_WARP; r++) s[r] = dp[r] = 0.0f;
#pragma unroll 8
        for (int d = 0; d < HS; d++) {
            const float qd = q_s[lane * LD + d];
            const float od = do_s[lane * LD + d];
#pragma unroll
            for (int r = 0; r < PER_WARP; r++) {
                const int kr = warp * PER_WARP + r;
                s[r] += qd * k_s[kr * HS + d];
                dp[r] += od * v_s[kr * HS + d];
            }
        }
        float p[PER_WARP], ds[PER_WARP];
#pragma unroll
        for (int r = 0; r < PER_WARP; r++) {
            const int key = k0 + warp * PER_WARP + r;
            const bool visible = key <= query && query < T && key < T;
            p[r] = visible ? expf(s[r] * scale - lse_q) : 0.0f;
            ds[r] = p[r] * (dp[r] - d_q);
        }

        /* dV += P^T dout, dK += dS^T q (scaled at the end); lane = feature */
#pragma unroll 4
        for (int i = 0; i < TILE; i++) {
#pragma unroll
            for (int r = 0; r < PER_WARP; r++) {
                const float pi = __shfl_sync(FULL_MASK, p[r], i);
                const float dsi = __shfl_sync(FULL_MASK, ds[r], i);
#pragma unroll
                for (int c = 0; c < CH; c++) {
                    const int d = lane + 32 * c;
                    if (d < HS) {
                        dv[r][c] += pi * do_s[i * LD + d];
                        dk[r][c] += dsi * q_s[i * LD + d];
                    }
                }
            }
        }
    }

    Elem *dk_g = dqkv + hv.qkv_offset + C;
    Elem *dv_g = dqkv + hv.qkv_offset + 2 * (size_t)C;
#pragma unroll
    for (int r = 0; r < PER_WARP; r++) {
        const int key = k0 + warp * PER_WARP + r;
        if (key >= T) continue;
#pragma unroll
        for (int c = 0; c < CH; c++) {
            const int d = lane + 32 * c;
            if (d < HS) {
                store_elem(dk_g, (size_t)key * stride + d, dk[r][c] * scale);
                store_elem(dv_g, (size_t)key * stride + d, dv[r][c]);
            }
        }
    }
}

/* Pass 3: dQ. grid (B*NH, query tiles), THREADS threads; each warp owns
 * PER_WARP queries, blockIdx.y counts from the last (longest) tile. */
template <typename Elem, int HS>
__global__ void __launch_bounds__(THREADS)
    attention_backward_dq_kernel(Elem *dqkv, const Elem *dout, const Elem *qkv,
                                 const float *lse, const float *D, int T, int C, int NH,
                                 float scale)
{
    constexpr int LD = HS + 1;
    constexpr int CH = (HS + 31) / 32;
    extern __shared__ float smem[];
    float *q_s = smem;               /* [TILE][HS], this block's queries, broadcast */
    float *do_s = q_s + TILE * HS;   /* [TILE][HS] */
    float *k_s = do_s + TILE * HS;   /* [TILE][LD], current key tile */
    float *v_s = k_s + TILE * LD;    /* [TILE][LD] */

    const HeadView hv = head_view(T, C, NH, HS);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * TILE;
    const size_t stride = 3 * (size_t)C;
    const Elem *q_g = qkv + hv.qkv_offset;

    load_tile<HS>(q_s, HS, q_g, stride, q0, T);
    load_tile<HS>(do_s, HS, dout + hv.tc_offset, (size_t)C, q0, T);

    float lse_r[PER_WARP], d_r[PER_WARP], dq[PER_WARP][CH];
#pragma unroll
    for (int r = 0; r < PER_WARP; r++) {
        const int query = q0 + warp * PER_WARP + r;
        lse_r[r] = query < T ? lse[hv.row_offset + query] : 0.0f;
        d_r[r] = query < T ? D[hv.row_offset + query] : 0.0f;
#pragma unroll
        for (int c = 0; c < CH; c++) dq[r][c] = 0.0f;
    }

    const int last_key = min(q0 + TILE - 1, T - 1);
    for (int k0 = 0; k0 <= last_key; k0 += TILE) {
        __syncthreads(); /* the previous key tile is no longer read */
        load_tile<HS>(k_s, LD, q_g + C, stride, k0, T);
        load_tile<HS>(v_s, LD, q_g + 2 * (size_t)C, stride, k0, T);
        __syncthreads();

        /* scores and dP, lane = key */
        const int key = k0 + lane;
        float s[PER_WARP], dp[PER_WARP];
#pragma unroll
        for (int r = 0; r < PER_WARP; r++) s[r] = dp[r] = 0.0f;
#pragma unroll 8
        for (int d = 0; d < HS; d++) {
            const float kd = k_s[lane * LD + d];
            const float vd = v_s[lane * LD + d];
#pragma unroll
            for (int r = 0; r < PER_WARP; r++) {
                const int qr = warp * PER_WARP + r;
                s[r] += q_s[qr * HS + d] * kd;
                dp[r] += do_s[qr * HS + d] * vd;
            }
        }
        float ds[PER_WARP];
#pragma unroll
        for (int r = 0; r < PER_WARP; r++) {
            const int query = q0 + warp * PER_WARP + r;
            const bool visible = key <= query && query < T && key < T;
            const float p = visible ? expf(s[r] * scale - lse_r[r]) : 0.0f;
            ds[r] = p * (dp[r] - d_r[r]);
        }

        /* dQ += dS K (scaled at the end), lane = feature */
#pragma unroll 4
        for (int j = 0; j < TILE; j++) {
#pragma unroll
            for (int r = 0; r < PER_WARP; r++) {
                const float dsj = __shfl_sync(FULL_MASK, ds[r], j);
#pragma unroll
                for (int c = 0; c < CH; c++) {
                    const int d = lane + 32 * c;
                    if (d < HS) dq[r][c] += dsj * k_s[j * LD + d];
                }
            }
        }
    }

    Elem *dq_g = dqkv + hv.qkv_offset;
#pragma unroll
    for (int r = 0; r < PER_WARP; r++) {
        const int query = q0 + warp * PER_WARP + r;
        if (query >= T) continue;
#pragma unroll
        for (int c = 0; c < CH; c++) {
            const int d = lane + 32 * c;
            if (d < HS) store_elem(dq_g, (size_t)query * stride + d, dq[r][c] * scale);
        }
    }
}

/* ---- host side ---- */

struct AttentionShape {
    int B, T, C, NH, HS;
    int heads;   /* B*NH: grid.x */
    int tiles;   /* ceil(T/TILE): grid.y */
    float scale; /* 1/sqrt(HS) */
};

int head_size_instantiated(int hs)
{
    switch (hs) {
#define ATTENTION_CASE(n) case n:
        ATTENTION_HEAD_SIZES(ATTENTION_CASE)
#undef ATTENTION_CASE
        return 1;
    default:
        return 0;
    }
}

/* Checks the sizes a launcher was given and derives the launch shape. */
AttentionShape attention_shape(const char *who, int B, int T, int C, int NH)
{
    if (B < 1 || T < 1 || C < 1 || NH < 1)
        die("%s: B=%d T=%d C=%d NH=%d must all be positive", who, B, T, C, NH);
    if (C % NH != 0)
        die("%s: C=%d is not a multiple of NH=%d; the heads must split C evenly", who, C, NH);
    AttentionShape a;
    a.B = B;
    a.T = T;
    a.C = C;
    a.NH = NH;
    a.HS = C / NH;
    if (!head_size_instantiated(a.HS))
        die("%s: head size %d (C=%d / NH=%d) is not supported; the CUDA attention handles "
            "multiples of 8 up to 128 (ask k_attention_supported before choosing this path)",
            who, a.HS, C, NH);
    const long long heads = (long long)B * NH;
    if (heads > 0x7fffffffLL)
        die("%s: B*NH=%lld exceeds the grid's x limit; use a smaller batch", who, heads);
    a.heads = (int)heads;
    a.tiles = (T + TILE - 1) / TILE;
    if (a.tiles > MAX_GRID_Y)
        die("%s: T=%d needs %d tiles of %d, more than the grid's y limit %d; use a shorter "
            "sequence",
            who, T, a.tiles, TILE, MAX_GRID_Y);
    a.scale = 1.0f / sqrtf((float)a.HS);
    return a;
}

/* Kernels needing more than the default dynamic shared memory must say so
 * before each launch (the attribute is per function and cheap to set). */
template <typename Kernel>
void allow_shared_memory(Kernel *kernel, size_t bytes)
{
    if (bytes > DEFAULT_SMEM)
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       (int)bytes));
}

template <typename Elem, int HS>
void launch_forward(void *out, float *lse, const void *qkv, const AttentionShape &a,
                    cudaStream_t s)
{
    const size_t smem = forward_smem_floats<HS>() * sizeof(float);
    allow_shared_memory(attention_forward_kernel<Elem, HS>, smem);
    const dim3 grid(a.heads, a.tiles);
    attention_forward_kernel<Elem, HS><<<grid, THREADS, smem, s>>>(
        (Elem *)out, lse, (const Elem *)qkv, a.T, a.C, a.NH, a.scale);
    cudaCheck(cudaGetLastError());
}

template <typename Elem, int HS>
void launch_backward_tiles(void *dqkv, const float *D, const void *dout, const void *qkv,
                           const float *lse, const AttentionShape &a, cudaStream_t s)
{
    const size_t smem = backward_smem_floats<HS>() * sizeof(float);
    const dim3 grid(a.heads, a.tiles);

    allow_shared_memory(attention_backward_dkdv_kernel<Elem, HS>, smem);
    attention_backward_dkdv_kernel<Elem, HS><<<grid, THREADS, smem, s>>>(
        (Elem *)dqkv, (const Elem *)dout, (const Elem *)qkv, lse, D, a.T, a.C, a.NH,
        a.scale);
    cudaCheck(cudaGetLastError());

    allow_shared_memory(attention_backward_dq_kernel<Elem, HS>, smem);
    attention_backward_dq_kernel<Elem, HS><<<grid, THREADS, smem, s>>>(
        (Elem *)dqkv, (const Elem *)dout, (const Elem *)qkv, lse, D, a.T, a.C, a.NH,
        a.scale);
    cudaCheck(cudaGetLastError());
}

template <typename Elem>
void forward_for_head_size(void *out, float *lse, const void *qkv, const AttentionShape &a,
                           cudaStream_t s)
{
    switch (a.HS) {
#define ATTENTION_CASE(n)                                                              \
    case n:                                                                            \
        launch_forward<Elem, n>(out, lse, qkv, a, s);                                  \
        return;
        ATTENTION_HEAD_SIZES(ATTENTION_CASE)
#undef ATTENTION_CASE
    default:
        die("k_attention_forward: head size %d has no kernel", a.HS);
    }
}

/* The path OURO_ATTENTION names (default WMMA), read once, on first use.
 * An unknown name is an error, so that a misspelt comparison cannot
 * silently time the default twice. */
KAttentionPath path_from_environment()
{
    static const KAttentionPath chosen = [] {
        const char *v = getenv("OURO_ATTENTION");
        if (v == NULL || *v == '\0') return K_ATTENTION_WMMA;
        for (int p = K_ATTENTION_SIMT; p <= K_ATTENTION_MMA; p++)
            if (strcmp(v, k_attention_path_name((KAttentionPath)p)) == 0)
                return (KAttentionPath)p;
        die("OURO_ATTENTION=%s: unknown attention path (simt, wmma or mma)", v);
    }();
    return chosen;
}

/* The path that runs a call of dtype t and head size hs on these arrays:
 * p (AUTO: the environment's) if it can take it, else SIMT. */
KAttentionPath resolve_path(KAttentionPath p, OuroDType t, int hs, const void *a, const void *b,
                            const void *c, const void *d)
{
    if (p == K_ATTENTION_AUTO) p = path_from_environment();
    if (p == K_ATTENTION_SIMT || t != OURO_BF16 || !k_attention_tc_handles(hs) ||
        !k_attention_tc_aligned(a, b, c, d))
        return K_ATTENTION_SIMT;
    return p;
}

template <typename Elem>
void backward_for_head_size(void *dqkv, float *D, const void *dout, const void *qkv,
                            const void *out, const float *lse, const AttentionShape &a,
                            KAttentionPath path, cudaStream_t s)
{
    const size_t rows = (size_t)a.B * a.T * a.NH;
    const size_t blocks = (rows + D_WARPS - 1) / D_WARPS;
    if (blocks > 0x7fffffffu)
        die("k_attention_backward: %zu rows need more blocks than the grid allows", rows);
    attention_backward_d_kernel<Elem><<<(unsigned)blocks, D_WARPS * 32, 0, s>>>(
        D, (const Elem *)dout, (const Elem *)out, a.T, a.NH, a.HS, rows);
    cudaCheck(cudaGetLastError());

    if (path == K_ATTENTION_WMMA) {
        k_attention_tc_backward(dqkv, D, dout, qkv, lse, a.B, a.T, a.C, a.NH, s);
        return;
    }
    if (path == K_ATTENTION_MMA) {
        k_attention_mma_backward(dqkv, D, dout, qkv, lse, a.B, a.T, a.C, a.NH, s);
        return;
    }
    switch (a.HS) {
#define ATTENTION_CASE(n)                                                              \
    case n:                                                                            \
        launch_backward_tiles<Elem, n>(dqkv, D, dout, qkv, lse, a, s);                 \
        return;
        ATTENTION_HEAD_SIZES(ATTENTION_CASE)
#undef ATTENTION_CASE
    default:
        die("k_attention_backward: head size %d has no kernel", a.HS);
    }
}

} /* namespace */

extern "C" int k_attention_supported(int head_size)
{
    return head_size_instantiated(head_size);
}

extern "C" const char *k_attention_path_name(KAttentionPath p)
{
    switch (p) {
    case K_ATTENTION_AUTO: return "auto";
    case K_ATTENTION_SIMT: return "simt";
    case K_ATTENTION_WMMA: return "wmma";
    case K_ATTENTION_MMA: return "mma";
    }
    return "unknown";
}

extern "C" int k_attention_path_usable(KAttentionPath p, OuroDType t, int head_size)
{
    if (!head_size_instantiated(head_size)) return 0;
    if (p == K_ATTENTION_AUTO || p == K_ATTENTION_SIMT) return 1;
    return t == OURO_BF16 && k_attention_tc_handles(head_size);
}

/* Dies when a named path cannot take the call (the tests and benchmarks
 * that name one must not measure another by accident). */
static void require_path(const char *who, KAttentionPath asked, KAttentionPath got)
{
    if (asked != K_ATTENTION_AUTO && asked != got)
        die("%s: the %s path cannot take this call (dtype, head size or alignment); "
            "check k_attention_path_usable first",
            who, k_attention_path_name(asked));
}

extern "C" void k_attention_forward_path(KAttentionPath p, void *out, float *lse,
                                         const void *qkv, OuroDType t, int B, int T, int C,
                                         int NH, cudaStream_t s)
{
    const AttentionShape a = attention_shape("k_attention_forward", B, T, C, NH);
    const KAttentionPath path = resolve_path(p, t, a.HS, out, qkv, NULL, NULL);
    require_path("k_attention_forward", p, path);
    switch (path) {
    case K_ATTENTION_WMMA:
        k_attention_tc_forward(out, lse, qkv, B, T, C, NH, s);
        return;
    case K_ATTENTION_MMA:
        k_attention_mma_forward(out, lse, qkv, B, T, C, NH, s);
        return;
    default:
        break;
    }
    switch (t) {
    case OURO_F32:
        forward_for_head_size<float>(out, lse, qkv, a, s);
        return;
    case OURO_BF16:
        forward_for_head_size<__nv_bfloat16>(out, lse, qkv, a, s);
        return;
    }
    die("k_attention_forward: unknown dtype %d", (int)t);
}

extern "C" void k_attention_forward(void *out, float *lse, const void *qkv, OuroDType t, int B,
                                    int T, int C, int NH, cudaStream_t s)
{
    k_attention_forward_path(K_ATTENTION_AUTO, out, lse, qkv, t, B, T, C, NH, s);
}

extern "C" size_t k_attention_backward_scratch_floats(int B, int T, int C, int NH)
{
    (void)C; /* D has one value per (b, h, t), whatever the head size; the
              * tensor-core paths need the same D and nothing more */
    return (size_t)B * NH * T;
}

extern "C" void k_attention_backward_path(KAttentionPath p, void *dqkv, float *scratch,
                                          const void *dout, const void *qkv, const void *out,
                                          const float *lse, OuroDType t, int B, int T, int C,
                                          int NH, cudaStream_t s)
{
    const AttentionShape a = attention_shape("k_attention_backward", B, T, C, NH);
    const KAttentionPath path = resolve_path(p, t, a.HS, dqkv, dout, qkv, out);
    require_path("k_attention_backward", p, path);
    switch (t) {
    case OURO_F32:
        backward_for_head_size<float>(dqkv, scratch, dout, qkv, out, lse, a, path, s);
        return;
    case OURO_BF16:
        backward_for_head_size<__nv_bfloat16>(dqkv, scratch, dout, qkv, out, lse, a, path, s);
        return;
    }
    die("k_attention_backward: unknown dtype %d", (int)t);
}

extern "C" void k_attention_backward(void *dqkv, float *scratch, const void *dout,
                                     const void *qkv, const void *out, const float *lse,
                                     OuroDType t, int B, int T, int C, int NH, cudaStream_t s)
{
    k_attention_backward_path(K_ATTENTION_AUTO, dqkv, scratch, dout, qkv, out, lse, t, B, T, C,
                              NH, s);
}
