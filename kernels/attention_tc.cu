/* attention_tc.cu - fused causal self-attention on tensor cores (WMMA,
 * bf16 inputs, fp32 accumulation), forward and backward. Same algorithm
 * and contract as attention.cu (read its header first); this file only
 * changes how the tile products are computed. attention.cu dispatches here
 * for bf16 runs with head size a multiple of 16 up to 128.
 *
 * Tiles. A block has WARPS = 4 warps and owns TILE = 64 rows of one
 * (sequence b, head h) pair: queries in the forward and the dQ pass, keys
 * in the dK/dV pass. Each warp owns 16 of those rows, i.e. one row of
 * 16x16 WMMA fragments. The block walks tiles of 64 rows of the other kind
 * (keys, or queries in the dK/dV pass), staged in shared memory as bf16
 * with a row stride of HS + 8 (16 bytes of padding so that fragment loads
 * of consecutive rows start in different banks).
 *
 * Products, per warp and 64-row tile (all 16x16x16 bf16 -> fp32):
 *   forward: S = Q_w K^T (16x64), O_w += P V (16xHS)
 *   dK/dV:   S^T = K_w Q^T, dP^T = V_w dO^T (16x64 each),
 *            dV_w += P^T dO, dK_w += dS^T Q (16xHS each)
 *   dQ:      S = Q_w K^T, dP = dO_w V^T, dQ_w += dS K
 * A transposed operand X^T is a col_major matrix_b load of X's row-major
 * tile, so nothing is ever transposed in memory.
 *
 * Element-wise work. The accumulator layout of a WMMA fragment is opaque,
 * so scores go through a per-warp fp32 buffer [16][64+4] (store_matrix_sync)
 * and are read back with a known lane mapping. In the forward, lane pair
 * (2r, 2r+1) owns row r, the two lanes taking alternate columns (adjacent
 * words, so the pair does not collide on a bank), and the row max and sum
 * need one __shfl_xor_sync. The backward needs no row reductions: step i
 * of its element-wise loop covers half of row i/2, one column per lane,
 * so the lanes read consecutive words. P and dS
 * go back to shared memory as bf16 [16][64+8] to be the next product's
 * matrix_a. The forward's output accumulator needs per-row rescaling by
 * exp(m_old - m_new), so it also lives in shared memory (fp32 [16][HS+4]
 * per warp), loaded into fragments before each P V and stored after. The
 * backward's accumulators (dK, dV or dQ) only ever grow by products, so
 * they stay in registers until the end, where scaling by a constant
 * element-wise is layout-independent.
 *
 * Masking. Tiles past T are loaded as zeros; a score is visible when
 * key <= query, key < T and (backward) query < T; invisible scores get
 * probability 0 (the forward max skips them as -inf). Rows past T are
 * never written. Key 0 is visible to every query, so the forward's
 * running max is finite after the first key tile; a row that has seen no
 * visible key yet (m = -inf) keeps alpha = 1 rather than exp(NaN).
 *
 * Loads. Each loop fetches its next tile from global memory into
 * registers (TileRegs) right after storing the current one to shared
 * memory, so the loads are in flight during the products. The backward
 * does so up to HS = 64; above, its register accumulators leave no room
 * and it loads each tile when it stores it.
 *
 * Backward: D = rowsum(dout * out) is computed by attention.cu before the
 * two kernels here, which split the sums as attention.cu does (dK/dV by
 * the block owning the keys, dQ by the block owning the queries): every
 * element of dqkv is written once by one thread, in a fixed order, with
 * no atomics. dS = P (dP - D); dK = scale dS^T Q; dQ = scale dS K.
 *
 * Precision: P and dS are rounded to bf16 for the second product of each
 * step (the tensor cores take bf16), the sums l, the lse and all
 * accumulators are fp32.
 *
 * Shared memory per block (bytes, dynamic; every size but the forward's at
 * HS = 16 is above the 48 KB default, so the launchers opt in):
 *   forward: 3*64*(HS+8)*2 (q,k,v) + 4*16*68*4 (S) + 4*16*72*2 (P)
 *            + 4*16*(HS+4)*4 (O)          HS=64: 71,680   HS=128: 112,640
 *   dK/dV:   4*64*(HS+8)*2 (k,v,q,dO) + 2*64*4 (lse,D) + 4*2*16*68*4
 *            (S, dP) + 4*2*16*72*2 (P, dS)  HS=64: 90,624  HS=128: 123,392
 *   dQ:      4*64*(HS+8)*2 + 2*64*4 + 4*2*16*68*4 + 4*16*72*2
 *                                           HS=64: 81,408  HS=128: 114,176
 * Alignment: every buffer starts on a 128-byte boundary and every fragment
 * pointer is a multiple of 16 rows or 16 columns into one, which keeps the
 * 32-byte alignment load/store_matrix_sync require; bf16 strides are
 * multiples of 8 elements and fp32 strides of 4 (16 bytes). Global tiles
 * move as 16-byte packs, so the launchers need 16-byte aligned pointers
 * (k_attention_tc_aligned; attention.cu keeps the SIMT path otherwise).
 */
#include <math.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "attention_grid.cuh"
#include "attention_tc.h"
#include "cuda_check.h"
#include "dtype.cuh"

namespace {

using namespace nvcuda;
using namespace attention_grid;
typedef __nv_bfloat16 bf16;

constexpr int WARPS = 4;
constexpr int WROWS = TILE / WARPS;      /* rows per warp: one fragment row */
constexpr int THREADS = WARPS * 32;
constexpr int LDS = TILE + 4;            /* fp32 score buffer row stride */
constexpr int LDP = TILE + 8;            /* bf16 P / dS buffer row stride */
constexpr int FRAG = 16;
constexpr int TILE_FRAGS = TILE / FRAG;  /* fragments across a 64-wide tile */
constexpr unsigned FULL = 0xffffffffu;

static_assert(WROWS == FRAG, "each warp owns exactly one row of fragments");
static_assert(WROWS * 2 == 32, "a lane pair owns each of the warp's rows");

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragB;
/* matrix_b = X^T for a row-major X in shared memory */
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBt;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

/* ---- shared memory layout ---- */

template <int HS> __host__ __device__ constexpr int ld_head() { return HS + 8; }
template <int HS> __host__ __device__ constexpr size_t head_tile_bytes() { return round128((size_t)TILE * ld_head<HS>() * 2); }
__host__ __device__ constexpr size_t score_warp_floats() { return (size_t)WROWS * LDS; }
__host__ __device__ constexpr size_t prob_warp_elems() { return (size_t)WROWS * LDP; }
template <int HS> __host__ __device__ constexpr int ld_acc() { return HS + 4; }

template <int HS>
constexpr size_t forward_smem_bytes()
{
    return 3 * head_tile_bytes<HS>() + round128(WARPS * score_warp_floats() * 4) +
           round128(WARPS * prob_warp_elems() * 2) +
           round128((size_t)WARPS * WROWS * ld_acc<HS>() * 4);
}

/* The backward keeps two fp32 score buffers per warp (S and dP), reused at
 * the end to stage the fp32 results [16][HS+4]. */
template <int HS>
constexpr size_t backward_dkdv_smem_bytes()
{
    return 4 * head_tile_bytes<HS>() + round128(2 * TILE * 4) +
           round128(WARPS * 2 * score_warp_floats() * 4) +
           round128(WARPS * 2 * prob_warp_elems() * 2);
}
template <int HS>
constexpr size_t backward_dq_smem_bytes()
{
    return 4 * head_tile_bytes<HS>() + round128(2 * TILE * 4) +
           round128(WARPS * 2 * score_warp_floats() * 4) +
           round128(WARPS * prob_warp_elems() * 2);
}

/* Carves consecutive 128-byte aligned buffers out of dynamic shared memory. */
struct SmemCarver {
    unsigned char *p;
    template <typename T> __device__ T *take(size_t bytes)
    {
        T *r = reinterpret_cast<T *>(p);
        p += round128(bytes);
        return r;
    }
};

/* ---- global <-> shared ---- */

/* One thread's share of a head tile (HS features of tokens t0 ..
 * t0+TILE-1 of one head, bf16), held in registers between the global load
 * (fetch) and the store into a shared tile of row stride HS+8. Splitting
 * the two lets a kernel fetch the next tile before computing on the
 * current one, so the loads are in flight during the products. Tokens at
 * or past T read as zeros. src points at token 0's first feature. */
template <int HS> struct TileRegs {
    static constexpr int PACKS = HS / 8; /* 16-byte packs per row */
    static constexpr int PER_THREAD = TILE * PACKS / THREADS;
    static_assert(PER_THREAD * THREADS == TILE * PACKS, "the block moves whole tiles");
    int4 v[PER_THREAD];

    __device__ void fetch(const bf16 *src, size_t row_stride, int t0, int T)
    {
#pragma unroll
        for (int i = 0; i < PER_THREAD; i++) {
            const int idx = threadIdx.x + i * THREADS;
            const int r = idx / PACKS, c = idx - r * PACKS;
            const int t = t0 + r;
            v[i] = t < T ? *reinterpret_cast<const int4 *>(src + (size_t)t * row_stride + c * 8)
                         : make_int4(0, 0, 0, 0);
        }
    }
    __device__ void store(bf16 *tile) const
    {
#pragma unroll
        for (int i = 0; i < PER_THREAD; i++) {
            const int idx = threadIdx.x + i * THREADS;
            const int r = idx / PACKS, c = idx - r * PACKS;
            *reinterpret_cast<int4 *>(tile + r * ld_head<HS>() + c * 8) = v[i];
        }
    }
};

/* Fetches a head tile and stores it into shared memory at once. */
template <int HS>
__device__ void load_head_tile(bf16 *tile, const bf16 *src, size_t row_stride, int t0, int T)
{
    TileRegs<HS> regs;
    regs.fetch(src, row_stride, t0, T);
    regs.store(tile);
}

/* The backward kernels hold their accumulators in registers; from HS = 80
 * on, two more tiles' worth of prefetch registers would make them spill,
 * so they fetch each tile when they store it. The forward always
 * prefetches. */
template <int HS> __host__ __device__ constexpr bool backward_prefetches() { return HS <= 64; }

/* Writes half a row (HS/2 features from an fp32 shared row, times mul) as
 * bf16 to global memory, 8 elements (16 bytes) at a time. */
template <int HS>
__device__ void store_half_row(bf16 *dst, const float *src, float mul)
{
    static_assert((HS / 2) % 8 == 0, "half rows move as 16-byte packs");
#pragma unroll
    for (int j = 0; j < HS / 2; j += 8) {
        union {
            int4 v;
            __nv_bfloat162 h[4];
        } pack;
#pragma unroll
        for (int e = 0; e < 4; e++)
            pack.h[e] = __floats2bfloat162_rn(src[j + 2 * e] * mul, src[j + 2 * e + 1] * mul);
        *reinterpret_cast<int4 *>(dst + j) = pack.v;
    }
}

/* ---- forward ---- */

/* grid (B*NH, query tiles), THREADS threads. blockIdx.y counts from the
 * last query tile (most key tiles) so the long blocks start first. */
template <int HS>
__global__ void __launch_bounds__(THREADS)
    attention_tc_forward_kernel(bf16 *out, float *lse, const bf16 *qkv, int T, int C, int NH,
                                float scale)
{
    constexpr int LD = ld_head<HS>();
    constexpr int LDO = ld_acc<HS>();
    constexpr int HF = HS / FRAG; /* fragments across the head */
    extern __shared__ __align__(128) unsigned char tc_smem[];
    SmemCarver carve{tc_smem};
    bf16 *q_s = carve.take<bf16>((size_t)TILE * LD * 2);
    bf16 *k_s = carve.take<bf16>((size_t)TILE * LD * 2);
    bf16 *v_s = carve.take<bf16>((size_t)TILE * LD * 2);
    float *s_all = carve.take<float>(WARPS * score_warp_floats() * 4);
    bf16 *p_all = carve.take<bf16>(WARPS * prob_warp_elems() * 2);
    float *o_all = carve.take<float>((size_t)WARPS * WROWS * LDO * 4);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * TILE;
    const size_t stride = 3 * (size_t)C;
    const bf16 *q_g = qkv + (size_t)b * T * stride + (size_t)h * HS;
    const bf16 *k_g = q_g + C;
    const bf16 *v_g = q_g + 2 * (size_t)C;

    float *s_w = s_all + warp * score_warp_floats();
    bf16 *p_w = p_all + warp * prob_warp_elems();
    float *o_w = o_all + (size_t)warp * WROWS * LDO;

    load_head_tile<HS>(q_s, q_g, stride, q0, T);
    for (int i = lane; i < WROWS * LDO; i += 32) o_w[i] = 0.0f;
    __syncthreads();

    FragA qf[HF]; /* this warp's 16 queries, reused for every key tile */
#pragma unroll
    for (int f = 0; f < HF; f++)
        wmma::load_matrix_sync(qf[f], q_s + warp * WROWS * LD + f * FRAG, LD);

    const int row = lane >> 1, half = lane & 1;
    const int query = q0 + warp * WROWS + row;
    float m = -INFINITY, l = 0.0f;

    const int last_key = min(q0 + TILE - 1, T - 1);
    TileRegs<HS> k_next, v_next;
    k_next.fetch(k_g, stride, 0, T);
    v_next.fetch(v_g, stride, 0, T);
    for (int k0 = 0; k0 <= last_key; k0 += TILE) {
        __syncthreads(); /* every warp is done with the previous k and v */
        k_next.store(k_s);
        v_next.store(v_s);
        __syncthreads();
        if (k0 + TILE <= last_key) { /* in flight during this tile's work */
            k_next.fetch(k_g, stride, k0 + TILE, T);
            v_next.fetch(v_g, stride, k0 + TILE, T);
        }

        /* S = Q_w K^T */
#pragma unroll
        for (int n = 0; n < TILE_FRAGS; n++) {
            FragC sc;
            wmma::fill_fragment(sc, 0.0f);
#pragma unroll
            for (int f = 0; f < HF; f++) {
                FragBt kb;
                wmma::load_matrix_sync(kb, k_s + n * FRAG * LD + f * FRAG, LD);
                wmma::mma_sync(sc, qf[f], kb, sc);
            }
            wmma::store_matrix_sync(s_w + n * FRAG, sc, LDS, wmma::mem_row_major);
        }
        __syncwarp();

        /* online softmax on row `row`, columns half, half+2, .. (interleaved
         * so the lane pair reads adjacent words, not the same bank) */
        const float *s_row = s_w + row * LDS + half;
        bf16 *p_row = p_w + row * LDP + half;
        const int key0 = k0 + half;
        float tile_max = -INFINITY;
#pragma unroll 8
        for (int j = 0; j < 32; j++) {
            const int key = key0 + 2 * j;
            const bool visible = key <= query && key < T;
            tile_max = fmaxf(tile_max, visible ? s_row[2 * j] * scale : -INFINITY);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(FULL, tile_max, 1));
        const float m_new = fmaxf(m, tile_max);
        const float alpha = m_new == -INFINITY ? 1.0f : expf(m - m_new);
        float sum = 0.0f;
#pragma unroll 8
        for (int j = 0; j < 32; j++) {
            const int key = key0 + 2 * j;
            const bool visible = key <= query && key < T;
            const float p = visible ? expf(s_row[2 * j] * scale - m_new) : 0.0f;
            p_row[2 * j] = __float2bfloat16(p);
            sum += p;
        }
        sum += __shfl_xor_sync(FULL, sum, 1);
        l = l * alpha + sum;
        m = m_new;
        float *o_row = o_w + row * LDO + half;
#pragma unroll 8
        for (int j = 0; j < HS / 2; j++) o_row[2 * j] *= alpha;
        __syncwarp();

        /* O_w += P V */
        FragA pa[TILE_FRAGS];
#pragma unroll
        for (int kk = 0; kk < TILE_FRAGS; kk++)
            wmma::load_matrix_sync(pa[kk], p_w + kk * FRAG, LDP);
#pragma unroll
        for (int n = 0; n < HF; n++) {
            FragC oc;
            wmma::load_matrix_sync(oc, o_w + n * FRAG, LDO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < TILE_FRAGS; kk++) {
                FragB vb;
                wmma::load_matrix_sync(vb, v_s + kk * FRAG * LD + n * FRAG, LD);
                wmma::mma_sync(oc, pa[kk], vb, oc);
            }
            wmma::store_matrix_sync(o_w + n * FRAG, oc, LDO, wmma::mem_row_major);
        }
        __syncwarp(); /* O and P settled before the next tile's softmax */
    }

    if (query < T) {
        bf16 *out_row = out + (size_t)b * T * C + (size_t)query * C + (size_t)h * HS;
        store_half_row<HS>(out_row + half * (HS / 2), o_w + row * LDO + half * (HS / 2),
                           1.0f / l);
        if (half == 0) lse[(size_t)blockIdx.x * T + query] = m + logf(l);
    }
}

/* ---- backward: dK and dV ---- */

/* grid (B*NH, key tiles), THREADS threads; each warp owns 16 keys and
 * walks the query tiles from its diagonal on. */
template <int HS>
__global__ void __launch_bounds__(THREADS)
    attention_tc_backward_dkdv_kernel(bf16 *dqkv, const bf16 *dout, const bf16 *qkv,
                                      const float *lse, const float *D, int T, int C, int NH,
                                      float scale)
{
    constexpr int LD = ld_head<HS>();
    constexpr int LDO = ld_acc<HS>();
    constexpr int HF = HS / FRAG;
    static_assert((size_t)WROWS * LDO <= 2 * score_warp_floats(),
                  "the result staging reuses the warp's two score buffers");
    extern __shared__ __align__(128) unsigned char tc_smem[];
    SmemCarver carve{tc_smem};
    bf16 *k_s = carve.take<bf16>((size_t)TILE * LD * 2);  /* this block's keys */
    bf16 *v_s = carve.take<bf16>((size_t)TILE * LD * 2);
    bf16 *q_s = carve.take<bf16>((size_t)TILE * LD * 2);  /* current query tile */
    bf16 *do_s = carve.take<bf16>((size_t)TILE * LD * 2);
    float *lse_s = carve.take<float>(2 * TILE * 4);
    float *d_s = lse_s + TILE;
    float *f_all = carve.take<float>(WARPS * 2 * score_warp_floats() * 4);
    bf16 *b_all = carve.take<bf16>(WARPS * 2 * prob_warp_elems() * 2);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int k0 = blockIdx.y * TILE;
    const size_t stride = 3 * (size_t)C;
    const size_t head_qkv = (size_t)b * T * stride + (size_t)h * HS;
    const bf16 *q_g = qkv + head_qkv;
    const bf16 *do_g = dout + (size_t)b * T * C + (size_t)h * HS;
    const size_t row0 = (size_t)blockIdx.x * T; /* token 0 in [B,NH,T] */

    float *st_w = f_all + warp * 2 * score_warp_floats(); /* S^T [16 keys][64 queries] */
    float *dpt_w = st_w + score_warp_floats();            /* dP^T */
    bf16 *pt_w = b_all + warp * 2 * prob_warp_elems();    /* P^T, bf16 */
    bf16 *dst_w = pt_w + prob_warp_elems();               /* dS^T, bf16 */

    load_head_tile<HS>(k_s, q_g + C, stride, k0, T);
    load_head_tile<HS>(v_s, q_g + 2 * (size_t)C, stride, k0, T);

    FragC dk[HF], dv[HF];
#pragma unroll
    for (int n = 0; n < HF; n++) {
        wmma::fill_fragment(dk[n], 0.0f);
        wmma::fill_fragment(dv[n], 0.0f);
    }

    const int row = lane >> 1, half = lane & 1;
    const int key = k0 + warp * WROWS + row;

    /* Tiles are aligned, so the first query tile that sees any of these
     * keys is the one starting at k0. */
    constexpr bool PREFETCH = backward_prefetches<HS>();
    TileRegs<HS> q_next, do_next;
    if (PREFETCH) {
        q_next.fetch(q_g, stride, k0, T);
        do_next.fetch(do_g, (size_t)C, k0, T);
    }
    for (int q0 = k0; q0 < T; q0 += TILE) {
        __syncthreads(); /* every warp is done with the previous q, dO, lse, D */
        if (!PREFETCH) {
            q_next.fetch(q_g, stride, q0, T);
            do_next.fetch(do_g, (size_t)C, q0, T);
        }
        q_next.store(q_s);
        do_next.store(do_s);
        for (int i = threadIdx.x; i < TILE; i += THREADS) {
            const int q = q0 + i;
            lse_s[i] = q < T ? lse[row0 + q] : 0.0f;
            d_s[i] = q < T ? D[row0 + q] : 0.0f;
        }
        __syncthreads();
        if (PREFETCH && q0 + TILE < T) { /* in flight during this tile's work */
            q_next.fetch(q_g, stride, q0 + TILE, T);
            do_next.fetch(do_g, (size_t)C, q0 + TILE, T);
        }

        /* S^T = K_w Q^T and dP^T = V_w dO^T */
#pragma unroll
        for (int n = 0; n < TILE_FRAGS; n++) {
            FragC sc, dpc;
            wmma::fill_fragment(sc, 0.0f);
            wmma::fill_fragment(dpc, 0.0f);
#pragma unroll
            for (int f = 0; f < HF; f++) {
                FragA ka, va;
                FragBt qb, ob;
                wmma::load_matrix_sync(ka, k_s + warp * WROWS * LD + f * FRAG, LD);
                wmma::load_matrix_sync(qb, q_s + n * FRAG * LD + f * FRAG, LD);
                wmma::mma_sync(sc, ka, qb, sc);
                wmma::load_matrix_sync(va, v_s + warp * WROWS * LD + f * FRAG, LD);
                wmma::load_matrix_sync(ob, do_s + n * FRAG * LD + f * FRAG, LD);
                wmma::mma_sync(dpc, va, ob, dpc);
            }
            wmma::store_matrix_sync(st_w + n * FRAG, sc, LDS, wmma::mem_row_major);
            wmma::store_matrix_sync(dpt_w + n * FRAG, dpc, LDS, wmma::mem_row_major);
        }
        __syncwarp();

        /* P^T and dS^T, element-wise: step i covers half a row (key r =
         * i/2), one query per lane, so the lanes read consecutive words */
#pragma unroll 4
        for (int i = 0; i < WROWS * TILE / 32; i++) {
            const int r = i >> 1, qi = (i & 1) * 32 + lane;
            const int key_i = k0 + warp * WROWS + r, query = q0 + qi;
            const bool visible = key_i <= query && query < T && key_i < T;
            const float p = visible ? expf(st_w[r * LDS + qi] * scale - lse_s[qi]) : 0.0f;
            const float ds = p * (dpt_w[r * LDS + qi] - d_s[qi]);
            pt_w[r * LDP + qi] = __float2bfloat16(p);
            dst_w[r * LDP + qi] = __float2bfloat16(ds);
        }
        __syncwarp();

        /* dV_w += P^T dO and dK_w += dS^T Q */
#pragma unroll
        for (int kk = 0; kk < TILE_FRAGS; kk++) {
            FragA pa, da;
            wmma::load_matrix_sync(pa, pt_w + kk * FRAG, LDP);
            wmma::load_matrix_sync(da, dst_w + kk * FRAG, LDP);
#pragma unroll
            for (int n = 0; n < HF; n++) {
                FragB ob, qb;
                wmma::load_matrix_sync(ob, do_s + kk * FRAG * LD + n * FRAG, LD);
                wmma::mma_sync(dv[n], pa, ob, dv[n]);
                wmma::load_matrix_sync(qb, q_s + kk * FRAG * LD + n * FRAG, LD);
                wmma::mma_sync(dk[n], da, qb, dk[n]);
            }
        }
        /* the next tile's first write to this warp's buffers follows a
         * __syncthreads, which also orders these reads before it */
    }

    /* Stage each result through the warp's fp32 buffers (free now) and
     * write its rows; keys past T are not written. */
    float *stage = st_w;
    bf16 *dk_g = dqkv + head_qkv + C;
    bf16 *dv_g = dqkv + head_qkv + 2 * (size_t)C;
    __syncwarp();
#pragma unroll
    for (int n = 0; n < HF; n++)
        wmma::store_matrix_sync(stage + n * FRAG, dv[n], LDO, wmma::mem_row_major);
    __syncwarp();
    if (key < T)
        store_half_row<HS>(dv_g + (size_t)key * stride + half * (HS / 2),
                           stage + row * LDO + half * (HS / 2), 1.0f);
    __syncwarp();
#pragma unroll
    for (int n = 0; n < HF; n++)
        wmma::store_matrix_sync(stage + n * FRAG, dk[n], LDO, wmma::mem_row_major);
    __syncwarp();
    if (key < T)
        store_half_row<HS>(dk_g + (size_t)key * stride + half * (HS / 2),
                           stage + row * LDO + half * (HS / 2), scale);
}

/* ---- backward: dQ ---- */

/* grid (B*NH, query tiles), THREADS threads; each warp owns 16 queries,
 * blockIdx.y counts from the last (longest) query tile. */
template <int HS>
__global__ void __launch_bounds__(THREADS)
    attention_tc_backward_dq_kernel(bf16 *dqkv, const bf16 *dout, const bf16 *qkv,
                                    const float *lse, const float *D, int T, int C, int NH,
                                    float scale)
{
    constexpr int LD = ld_head<HS>();
    constexpr int LDO = ld_acc<HS>();
    constexpr int HF = HS / FRAG;
    static_assert((size_t)WROWS * LDO <= 2 * score_warp_floats(),
                  "the result staging reuses the warp's two score buffers");
    extern __shared__ __align__(128) unsigned char tc_smem[];
    SmemCarver carve{tc_smem};
    bf16 *q_s = carve.take<bf16>((size_t)TILE * LD * 2);  /* this block's queries */
    bf16 *do_s = carve.take<bf16>((size_t)TILE * LD * 2);
    bf16 *k_s = carve.take<bf16>((size_t)TILE * LD * 2);  /* current key tile */
    bf16 *v_s = carve.take<bf16>((size_t)TILE * LD * 2);
    float *lse_s = carve.take<float>(2 * TILE * 4); /* of this block's queries */
    float *d_s = lse_s + TILE;
    float *f_all = carve.take<float>(WARPS * 2 * score_warp_floats() * 4);
    bf16 *ds_all = carve.take<bf16>(WARPS * prob_warp_elems() * 2);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.x / NH, h = blockIdx.x % NH;
    const int q0 = (gridDim.y - 1 - blockIdx.y) * TILE;
    const size_t stride = 3 * (size_t)C;
    const size_t head_qkv = (size_t)b * T * stride + (size_t)h * HS;
    const bf16 *q_g = qkv + head_qkv;
    const size_t row0 = (size_t)blockIdx.x * T;

    float *s_w = f_all + warp * 2 * score_warp_floats();
    float *dp_w = s_w + score_warp_floats();
    bf16 *ds_w = ds_all + warp * prob_warp_elems();

    load_head_tile<HS>(q_s, q_g, stride, q0, T);
    load_head_tile<HS>(do_s, dout + (size_t)b * T * C + (size_t)h * HS, (size_t)C, q0, T);
    for (int i = threadIdx.x; i < TILE; i += THREADS) {
        const int q = q0 + i;
        lse_s[i] = q < T ? lse[row0 + q] : 0.0f;
        d_s[i] = q < T ? D[row0 + q] : 0.0f;
    }
    __syncthreads();

    FragA qf[HF], of[HF]; /* this warp's queries and their dout */
#pragma unroll
    for (int f = 0; f < HF; f++) {
        wmma::load_matrix_sync(qf[f], q_s + warp * WROWS * LD + f * FRAG, LD);
        wmma::load_matrix_sync(of[f], do_s + warp * WROWS * LD + f * FRAG, LD);
    }

    const int row = lane >> 1, half = lane & 1;
    const int query = q0 + warp * WROWS + row;

    FragC dq[HF];
#pragma unroll
    for (int n = 0; n < HF; n++) wmma::fill_fragment(dq[n], 0.0f);

    const int last_key = min(q0 + TILE - 1, T - 1);
    constexpr bool PREFETCH = backward_prefetches<HS>();
    const bf16 *k_g = q_g + C;
    const bf16 *v_g = q_g + 2 * (size_t)C;
    TileRegs<HS> k_next, v_next;
    if (PREFETCH) {
        k_next.fetch(k_g, stride, 0, T);
        v_next.fetch(v_g, stride, 0, T);
    }
    for (int k0 = 0; k0 <= last_key; k0 += TILE) {
        __syncthreads(); /* every warp is done with the previous k and v */
        if (!PREFETCH) {
            k_next.fetch(k_g, stride, k0, T);
            v_next.fetch(v_g, stride, k0, T);
        }
        k_next.store(k_s);
        v_next.store(v_s);
        __syncthreads();
        if (PREFETCH && k0 + TILE <= last_key) { /* in flight during this tile's work */
            k_next.fetch(k_g, stride, k0 + TILE, T);
            v_next.fetch(v_g, stride, k0 + TILE, T);
        }

        /* S = Q_w K^T and dP = dO_w V^T */
#pragma unroll
        for (int n = 0; n < TILE_FRAGS; n++) {
            FragC sc, dpc;
            wmma::fill_fragment(sc, 0.0f);
            wmma::fill_fragment(dpc, 0.0f);
#pragma unroll
            for (int f = 0; f < HF; f++) {
                FragBt kb, vb;
                wmma::load_matrix_sync(kb, k_s + n * FRAG * LD + f * FRAG, LD);
                wmma::mma_sync(sc, qf[f], kb, sc);
                wmma::load_matrix_sync(vb, v_s + n * FRAG * LD + f * FRAG, LD);
                wmma::mma_sync(dpc, of[f], vb, dpc);
            }
            wmma::store_matrix_sync(s_w + n * FRAG, sc, LDS, wmma::mem_row_major);
            wmma::store_matrix_sync(dp_w + n * FRAG, dpc, LDS, wmma::mem_row_major);
        }
        __syncwarp();

        /* dS, element-wise: step i covers half a row (query r = i/2), one
         * key per lane, so the lanes read consecutive words */
#pragma unroll 4
        for (int i = 0; i < WROWS * TILE / 32; i++) {
            const int r = i >> 1, kj = (i & 1) * 32 + lane;
            const int qr = warp * WROWS + r;
            const int query_i = q0 + qr, key = k0 + kj;
            const bool visible = key <= query_i && query_i < T && key < T;
            const float p = visible ? expf(s_w[r * LDS + kj] * scale - lse_s[qr]) : 0.0f;
            ds_w[r * LDP + kj] = __float2bfloat16(p * (dp_w[r * LDS + kj] - d_s[qr]));
        }
        __syncwarp();

        /* dQ_w += dS K */
#pragma unroll
        for (int kk = 0; kk < TILE_FRAGS; kk++) {
            FragA da;
            wmma::load_matrix_sync(da, ds_w + kk * FRAG, LDP);
#pragma unroll
            for (int n = 0; n < HF; n++) {
                FragB kb;
                wmma::load_matrix_sync(kb, k_s + kk * FRAG * LD + n * FRAG, LD);
                wmma::mma_sync(dq[n], da, kb, dq[n]);
            }
        }
    }

    float *stage = s_w;
    __syncwarp();
#pragma unroll
    for (int n = 0; n < HF; n++)
        wmma::store_matrix_sync(stage + n * FRAG, dq[n], LDO, wmma::mem_row_major);
    __syncwarp();
    if (query < T)
        store_half_row<HS>(dqkv + head_qkv + (size_t)query * stride + half * (HS / 2),
                           stage + row * LDO + half * (HS / 2), scale);
}

/* ---- host side ---- */

template <int HS>
void launch_tc_forward(void *out, float *lse, const void *qkv, const TcShape &a, cudaStream_t s)
{
    const size_t smem = forward_smem_bytes<HS>();
    allow_dynamic_smem(attention_tc_forward_kernel<HS>, smem);
    attention_tc_forward_kernel<HS><<<a.grid, THREADS, smem, s>>>(
        (bf16 *)out, lse, (const bf16 *)qkv, a.T, a.C, a.NH, a.scale);
    cudaCheck(cudaGetLastError());
}

template <int HS>
void launch_tc_backward(void *dqkv, const float *D, const void *dout, const void *qkv,
                        const float *lse, const TcShape &a, cudaStream_t s)
{
    const size_t smem_kv = backward_dkdv_smem_bytes<HS>();
    allow_dynamic_smem(attention_tc_backward_dkdv_kernel<HS>, smem_kv);
    attention_tc_backward_dkdv_kernel<HS><<<a.grid, THREADS, smem_kv, s>>>(
        (bf16 *)dqkv, (const bf16 *)dout, (const bf16 *)qkv, lse, D, a.T, a.C, a.NH, a.scale);
    cudaCheck(cudaGetLastError());

    const size_t smem_q = backward_dq_smem_bytes<HS>();
    allow_dynamic_smem(attention_tc_backward_dq_kernel<HS>, smem_q);
    attention_tc_backward_dq_kernel<HS><<<a.grid, THREADS, smem_q, s>>>(
        (bf16 *)dqkv, (const bf16 *)dout, (const bf16 *)qkv, lse, D, a.T, a.C, a.NH, a.scale);
    cudaCheck(cudaGetLastError());
}

} /* namespace */

extern "C" int k_attention_tc_handles(int head_size)
{
    switch (head_size) {
#define TC_CASE(n) case n:
        TC_HEAD_SIZES(TC_CASE)
#undef TC_CASE
        return 1;
    default:
        return 0;
    }
}

extern "C" int k_attention_tc_aligned(const void *a, const void *b, const void *c,
                                      const void *d)
{
    const void *ptrs[4] = {a, b, c, d};
    for (int i = 0; i < 4; i++)
        if (ptrs[i] && !is_aligned16(ptrs[i])) return 0;
    return 1;
}

extern "C" void k_attention_tc_forward(void *out, float *lse, const void *qkv, int B, int T,
                                       int C, int NH, cudaStream_t s)
{
    with_tc_launch("k_attention_tc_forward", B, T, C, NH, [&](auto hs, const TcShape &a) {
        launch_tc_forward<decltype(hs)::value>(out, lse, qkv, a, s);
    });
}

extern "C" void k_attention_tc_backward(void *dqkv, const float *D, const void *dout,
                                        const void *qkv, const float *lse, int B, int T, int C,
                                        int NH, cudaStream_t s)
{
    with_tc_launch("k_attention_tc_backward", B, T, C, NH, [&](auto hs, const TcShape &a) {
        launch_tc_backward<decltype(hs)::value>(dqkv, D, dout, qkv, lse, a, s);
    });
}
