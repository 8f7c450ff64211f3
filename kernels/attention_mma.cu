/* attention_mma.cu - fused causal self-attention on tensor cores through
 * mma.sync with register-resident scores (bf16 inputs, fp32 accumulation),
 * forward and backward. Same algorithm and contract as attention.cu and
 * attention_tc.cu (read attention.cu's header first); what changes is
 * where the intermediate values live.
 *
 * Why a second tensor-core path. attention_tc.cu's WMMA fragments have an
 * opaque layout, so every score goes through shared memory to be
 * exponentiated, P goes back to shared memory as a matrix_a, and the
 * forward's output accumulator is loaded and stored around every P V so it
 * can be rescaled. Here the products are PTX mma.sync.m16n8k16 whose
 * fragment layouts are documented (PTX ISA, "Matrix Fragments for
 * mma.m16n8k16"), so the scores, P, dS and every accumulator stay in
 * registers and shared memory holds only the input tiles.
 *
 * Fragments, for lane l of a warp, g = l / 4 and q = l % 4:
 *   C/D (16x8 fp32):   c0,c1 = row g, columns 2q, 2q+1; c2,c3 = row g+8;
 *   A (16x16 bf16):    a0 = row g, k 2q..2q+1; a1 = row g+8, k 2q..2q+1;
 *                      a2, a3 the same at k 2q+8..2q+9;
 *   B (16x8 bf16):     b0 = k 2q..2q+1, column g; b1 = k 2q+8..2q+9.
 * Two score blocks side by side (16 x 16) hold in their c registers
 * exactly the elements an A fragment wants, in the same lanes, so P = exp(S
 * - m) becomes the next product's A operand by packing pairs to bf16 (no
 * shuffles, no shared memory). Input tiles move from shared memory with
 * ldmatrix (four 8x8 blocks at a time); an operand read along the other
 * dimension of its tile (V in P V, dO and Q in the dK/dV products, K in dS
 * K) uses ldmatrix.trans, so no tile is ever stored transposed.
 *
 * Blocks and warps: as attention_tc.cu, a block of WARPS = 4 warps owns
 * TILE = 64 rows of one (sequence b, head h) pair (queries in the forward
 * and the dQ pass, keys in the dK/dV pass), a warp owns 16 of them, and the
 * block walks 64-row tiles of the other kind. Those tiles are double
 * buffered in shared memory and filled with cp.async (16-byte copies,
 * zero-filled past T), the next tile in flight while the warps work on the
 * current one. Rows are HS + 8 elements apart (16 bytes of padding), so
 * the 8 rows of an ldmatrix block fall in 8 different bank groups.
 *
 * Forward: per key tile, S = Q_w K^T (16 x 64 per warp, 32 registers), the
 * online softmax in base 2 (scores times scale*log2(e); the row max over a
 * lane's 16 values and then over the 4 lanes of its row by two xor
 * shuffles), O_w = alpha O_w + P V. The row sums l stay per lane (the
 * rescaling is the same in the 4 lanes of a row) and are added across the
 * lanes once, at the end. lse = (m + log2 l) ln 2 is the natural-log value
 * the contract asks for.
 *
 * Backward, two kernels as attention_tc.cu (no atomics, every element of
 * dqkv written once by one thread), each walking its tile in chunks of 32
 * columns so two 16 x 32 score blocks fit in registers:
 *   dK/dV (a block per key tile, query tiles from the diagonal on):
 *     S^T = K_w Q^T, dP^T = V_w dO^T, P^T = exp(S^T scale - lse),
 *     dS^T = P^T (dP^T - D), dV_w += P^T dO, dK_w += dS^T Q;
 *   dQ (a block per query tile, key tiles up to the diagonal):
 *     S = Q_w K^T, dP = dO_w V^T, dS = P (dP - D), dQ_w += dS K.
 * dK and dQ are scaled by 1/sqrt(HS) when written. A chunk wholly above
 * the diagonal for a warp (every score masked) is skipped by that warp.
 * The warp's own A operands (K_w and V_w, or Q_w and dO_w) stay in
 * registers up to HS = 64; above, they are reloaded from shared memory per
 * chunk, to leave registers to the accumulators.
 *
 * Masking. A score is visible when key <= query (and, in the backward,
 * query < T). Keys and queries past T are zeros in the tiles; rows past T
 * are computed but never written.
 *
 * Precision and determinism: as attention_tc.cu. P and dS are rounded to
 * bf16 for the second product of each step; l, m, lse and the accumulators
 * are fp32; every sum runs in a fixed order.
 *
 * Shared memory per block (dynamic, bytes): six 64 x (HS+8) bf16 tiles for
 * the backward kernels (their own two, two double-buffered), plus
 * 2 x 2 x 64 fp32 of lse and D in the dK/dV pass; five for the forward (Q
 * and double-buffered K and V). HS = 64: forward 46,080, dK/dV 56,320, dQ
 * 55,296; HS = 128: 87,040 / 105,472 / 104,448. Global pointers must be
 * 16-byte aligned (k_attention_tc_aligned), as for the WMMA path.
 *
 * Testing. Besides the GPU suite (tests/gpu/test_gpu_kernels runs every
 * attention path against the CPU ops), this file builds for the CPU with
 * OURO_ATTENTION_EMULATION defined: tests/attention_emulation.h stands in
 * for the PTX wrappers and the CUDA built-ins, and
 * tests/test_attention_emulation.cc runs the kernels below, unchanged,
 * against a float64 reference in every `make check`.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* OURO_ATTENTION_EMULATION: built by a C++ compiler for
 * tests/test_attention_emulation.cc, with tests/attention_emulation.h in
 * place of CUDA and of the PTX wrappers below (see that header). */
#ifndef OURO_ATTENTION_EMULATION
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "attention_tc.h"
#include "cuda_check.h"
#include "dtype.cuh"
#endif
#include "attention_grid.cuh"

namespace {

using namespace attention_grid;
typedef __nv_bfloat16 bf16;

constexpr int WARPS = 4;
constexpr int WROWS = TILE / WARPS; /* rows per warp: one m16 fragment */
constexpr int THREADS = WARPS * 32;
constexpr int CHUNK = 32;           /* columns of a backward score block */
constexpr unsigned FULL = 0xffffffffu;
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

static_assert(WROWS == 16, "a warp owns the 16 rows of one mma fragment");
static_assert(TILE % CHUNK == 0 && CHUNK % 16 == 0, "chunks are whole k-steps");

template <int HS> __host__ __device__ constexpr int ld_tile() { return HS + 8; }
template <int HS> __host__ __device__ constexpr size_t tile_bytes()
{
    return round128((size_t)TILE * ld_tile<HS>() * sizeof(bf16));
}
template <int HS> constexpr size_t forward_smem() { return 5 * tile_bytes<HS>(); }
template <int HS> constexpr size_t dkdv_smem()
{
    return 6 * tile_bytes<HS>() + round128(2 * 2 * TILE * sizeof(float));
}
template <int HS> constexpr size_t dq_smem() { return 6 * tile_bytes<HS>(); }

/* The warp's own operands stay in registers up to this head size. */
template <int HS> __host__ __device__ constexpr bool hold_own_rows() { return HS <= 64; }

/* ---- PTX ---- */

#ifndef OURO_ATTENTION_EMULATION
__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* Four 8x8 bf16 blocks; lane l gives the address of row l % 8 of block
 * l / 8 and receives, of block i, r[i] = (row g, columns 2q, 2q+1). */
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16 *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row))
                 : "memory");
}

/* The same, transposed: r[i] = (rows 2q, 2q+1, column g) of block i. */
__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const bf16 *row)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row))
                 : "memory");
}

/* c += A B for one 16x8x16 step. */
__device__ __forceinline__ void mma_16x8x16(float c[4], const uint32_t a[4], uint32_t b0,
                                            uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* 16-byte (or 4-byte) asynchronous copies; when !valid nothing is read
 * and the destination is zero-filled. */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async4(void *dst, const void *src, bool valid)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(valid ? 4 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
/* Waits until at most `pending` committed groups are still in flight. */
template <int pending> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
}

#endif /* OURO_ATTENTION_EMULATION */

/* Two fp32 as one bf16 pair, lo in the low half (the lower column). */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

/* The A fragment of two adjacent 16x8 accumulator blocks (16 x 16). */
__device__ __forceinline__ void acc_pair_to_a(uint32_t a[4], const float left[4],
                                              const float right[4])
{
    a[0] = pack_bf16(left[0], left[1]);
    a[1] = pack_bf16(left[2], left[3]);
    a[2] = pack_bf16(right[0], right[1]);
    a[3] = pack_bf16(right[2], right[3]);
}

/* ---- tiles ---- */

/* Starts copying tokens t0 .. t0+TILE-1 of one head (HS features each,
 * `stride` elements between tokens, src at token 0) into a shared tile. */
template <int HS>
__device__ void tile_load_async(bf16 *tile, const bf16 *src, size_t stride, int t0, int T)
{
    constexpr int PACKS = HS / 8;
    for (int i = threadIdx.x; i < TILE * PACKS; i += THREADS) {
        const int r = i / PACKS, c = i - r * PACKS;
        const int t = t0 + r;
        const bool valid = t < T;
        cp_async16(tile + r * ld_tile<HS>() + c * 8, src + (size_t)(valid ? t : 0) * stride + c * 8,
                   valid);
    }
}

/* Starts copying TILE per-token floats (lse or D) from row t0 on. */
__device__ void rows_load_async(float *dst, const float *src, int t0, int T)
{
    for (int i = threadIdx.x; i < TILE; i += THREADS) {
        const bool valid = t0 + i < T;
        cp_async4(dst + i, src + (valid ? t0 + i : 0), valid);
    }
}

/* Row address a lane gives ldmatrix for the A fragment of rows r0..r0+15,
 * columns k0..k0+15 of a tile (blocks: top-left, bottom-left, top-right,
 * bottom-right = a0..a3). */
template <int HS>
__device__ __forceinline__ const bf16 *a_rows(const bf16 *tile, int r0, int k0, int lane)
{
    return tile + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld_tile<HS>() + k0 + (lane >> 4) * 8;
}

/* For B = X^T with X row-major [n][k] in the tile: the b0,b1 of the column
 * blocks n0..n0+7 (r[0], r[1]) and n0+8..n0+15 (r[2], r[3]) at k0..k0+15. */
template <int HS>
__device__ __forceinline__ const bf16 *bt_rows(const bf16 *tile, int n0, int k0, int lane)
{
    return tile + (n0 + (lane & 7) + (lane >> 4) * 8) * ld_tile<HS>() + k0 + ((lane >> 3) & 1) * 8;
}

/* For B = X with X row-major [k][n] in the tile (read with .trans): the
 * b0,b1 of columns n0..n0+7 (r[0], r[1]) and n0+8..n0+15 (r[2], r[3]) at
 * rows k0..k0+15. */
template <int HS>
__device__ __forceinline__ const bf16 *b_rows(const bf16 *tile, int k0, int n0, int lane)
{
    return tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld_tile<HS>() + n0 + (lane >> 4) * 8;
}

/* acc[0 .. 2*pairs) += A (16 x 16) times 16 x 16*pairs of the tile, the tile
 * holding X [n][k] (B = X^T, cols n from n0, k from k0). */
template <int HS, int PAIRS>
__device__ __forceinline__ void mma_row_tile(float (*acc)[4], const uint32_t a[4],
                                             const bf16 *tile, int n0, int k0, int lane)
{
#pragma unroll
    for (int p = 0; p < PAIRS; p++) {
        uint32_t b[4];
        ldsm_x4(b, bt_rows<HS>(tile, n0 + 16 * p, k0, lane));
        mma_16x8x16(acc[2 * p], a, b[0], b[1]);
        mma_16x8x16(acc[2 * p + 1], a, b[2], b[3]);
    }
}

/* acc[0 .. HS/8) += A (16 x 16) times rows k0..k0+15 of the tile, all HS
 * columns (B = X, X [k][HS] row-major). */
template <int HS>
__device__ __forceinline__ void mma_col_tile(float (*acc)[4], const uint32_t a[4],
                                             const bf16 *tile, int k0, int lane)
{
#pragma unroll
    for (int p = 0; p < HS / 16; p++) {
        uint32_t b[4];
        ldsm_x4_trans(b, b_rows<HS>(tile, k0, 16 * p, lane));
        mma_16x8x16(acc[2 * p], a, b[0], b[1]);
        mma_16x8x16(acc[2 * p + 1], a, b[2], b[3]);
    }
}

/* Writes rows g and g+8 of a 16 x HS accumulator (times mul) as bf16 to
 * dst0 / dst8 (NULL: that row is past T). */
template <int HS>
__device__ __forceinline__ void store_acc_rows(bf16 *dst0, bf16 *dst8, const float (*acc)[4],
                                               float mul0, float mul8, int lane)
{
    const int c = 2 * (lane & 3);
#pragma unroll
    for (int n = 0; n < HS / 8; n++) {
        if (dst0)
            *reinterpret_cast<uint32_t *>(dst0 + n * 8 + c) =
                pack_bf16(acc[n][0] * mul0, acc[n][1] * mul0);
        if (dst8)
            *reinterpret_cast<uint32_t *>(dst8 + n * 8 + c) =
                pack_bf16(acc[n][2] * mul8, acc[n][3] * mul8);
    }
}

template <int N> __device__ __forceinline__ void zero(float (*acc)[4])
{
#pragma unroll
    for (int n = 0; n < N; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[n][e] = 0.0f;
}

/* The warp's own A operands of a backward kernel, 16 rows from r0 of two
 * tiles, as fragments for every k-step (kept when hold_own_rows). */
template <int HS>
__device__ __forceinline__ void load_own_rows(uint32_t (*fa)[4], uint32_t (*fb)[4],
                                              const bf16 *own_a, const bf16 *own_b, int r0,
                                              int lane)
{
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) {
        ldsm_x4(fa[kk], a_rows<HS>(own_a, r0, kk * 16, lane));
        ldsm_x4(fb[kk], a_rows<HS>(own_b, r0, kk * 16, lane));
    }
}

/* The two score blocks of a backward chunk, 16 x CHUNK each, over all HS
 * features: sa = A_w Xa^T and sb = B_w Xb^T, with A_w, B_w the warp's own
 * rows (held: the fragments ha, hb; else reloaded from rows r0.. of
 * own_a, own_b) and Xa, Xb the chunk's rows c0.. of the walked tiles. */
template <int HS>
__device__ __forceinline__ void chunk_scores(float (*sa)[4], float (*sb)[4],
                                             const uint32_t (*ha)[4], const uint32_t (*hb)[4],
                                             const bf16 *own_a, const bf16 *own_b, int r0,
                                             const bf16 *xa, const bf16 *xb, int c0, int lane)
{
    constexpr int CBLK = CHUNK / 8;
    zero<CBLK>(sa);
    zero<CBLK>(sb);
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) {
        uint32_t ta[4], tb[4];
        const uint32_t *fa = ta, *fb = tb;
        if constexpr (hold_own_rows<HS>()) {
            fa = ha[kk];
            fb = hb[kk];
        } else {
            ldsm_x4(ta, a_rows<HS>(own_a, r0, kk * 16, lane));
            ldsm_x4(tb, a_rows<HS>(own_b, r0, kk * 16, lane));
        }
        mma_row_tile<HS, CBLK / 2>(sa, fa, xa, c0, kk * 16, lane);
        mma_row_tile<HS, CBLK / 2>(sb, fb, xb, c0, kk * 16, lane);
    }
}

/* One step of the walk over key tiles that the forward and the dQ pass
 * make, K and V double-buffered (stages of TE elements): starts copying
 * tile it+1 into the other stage if there is one, then waits until tile
 * it has landed for the whole block. */
template <int HS>
__device__ __forceinline__ void key_tile_step(bf16 *k_s, bf16 *v_s, const bf16 *k_g,
                                              const bf16 *v_g, size_t stride, int it,
                                              int n_tiles, int T)
{
    constexpr size_t TE = tile_bytes<HS>() / sizeof(bf16);
    if (it + 1 < n_tiles) {
        const int st = (it + 1) & 1;
        tile_load_async<HS>(k_s + st * TE, k_g, stride, (it + 1) * TILE, T);
        tile_load_async<HS>(v_s + st * TE, v_g, stride, (it + 1) * TILE, T);
        cp_async_commit();
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
    __syncthreads();
}

/* Where a thread stands: its warp and lane (g = lane / 4 and quad =
 * lane % 4, as in the fragment tables), and its block's (sequence, head)
 * pair: q of token 0 in qkv [B,T,3C] (k at +C, v at +2C; stride 3C
 * between tokens) and token 0's features in [B,T,C]. */
struct BlockView {
    int warp, lane, g, quad;
    size_t stride, head_qkv, head_c;
};

template <int HS> __device__ __forceinline__ BlockView block_view(int T, int C)
{
    BlockView v;
    v.warp = threadIdx.x / 32;
    v.lane = threadIdx.x % 32;
    v.g = v.lane >> 2;
    v.quad = v.lane & 3;
    const int NH = C / HS, b = blockIdx.x / NH, h = blockIdx.x % NH;
    v.stride = 3 * (size_t)C;
    v.head_qkv = (size_t)b * T * v.stride + (size_t)h * HS;
    v.head_c = (size_t)b * T * C + (size_t)h * HS;
    return v;
}

/* The first query of a block whose grid walks query tiles: blockIdx.y
 * counts from the last tile (the most key tiles) so the long blocks start
 * first. */
__device__ __forceinline__ int query_tile_start() { return (gridDim.y - 1 - blockIdx.y) * TILE; }

/* ---- forward ---- */

/* grid (B*NH, query tiles), THREADS threads; blockIdx.y counts from the
 * last query tile (most key tiles) so the long blocks start first. */
template <int HS>
__global__ void __launch_bounds__(THREADS)
    attention_mma_forward_kernel(bf16 *out, float *lse, const bf16 *qkv, int T, int C,
                                 float scale_log2)
{
    constexpr int KSTEPS = HS / 16;  /* k-steps of Q K^T */
    constexpr int TBLK = TILE / 8;   /* 8-column blocks of S */
    constexpr int HBLK = HS / 8;     /* 8-column blocks of O */
    constexpr size_t TE = tile_bytes<HS>() / sizeof(bf16);
    extern __shared__ __align__(128) unsigned char mma_smem[];
    bf16 *q_s = reinterpret_cast<bf16 *>(mma_smem);
    bf16 *k_s = q_s + TE;     /* two stages */
    bf16 *v_s = k_s + 2 * TE; /* two stages */

    const BlockView bv = block_view<HS>(T, C);
    const int warp = bv.warp, lane = bv.lane, quad = bv.quad;
    const size_t stride = bv.stride;
    const int q0 = query_tile_start();
    const bf16 *q_g = qkv + bv.head_qkv;
    const bf16 *k_g = q_g + C;
    const bf16 *v_g = q_g + 2 * (size_t)C;
    const int row0 = q0 + warp * WROWS + bv.g; /* the query of c0,c1; row0 + 8 of c2,c3 */

    tile_load_async<HS>(q_s, q_g, stride, q0, T);
    tile_load_async<HS>(k_s, k_g, stride, 0, T);
    tile_load_async<HS>(v_s, v_g, stride, 0, T);
    cp_async_commit();

    uint32_t qf[KSTEPS][4];
    float o[HBLK][4];
    zero<HBLK>(o);
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    const int n_tiles = q0 / TILE + 1; /* up to and including the diagonal */
    for (int it = 0; it < n_tiles; it++) {
        const int k0 = it * TILE;
        key_tile_step<HS>(k_s, v_s, k_g, v_g, stride, it, n_tiles, T);
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++)
                ldsm_x4(qf[kk], a_rows<HS>(q_s, warp * WROWS, kk * 16, lane));
        }
        const bf16 *ks = k_s + (it & 1) * TE, *vs = v_s + (it & 1) * TE;

        float s[TBLK][4];
        zero<TBLK>(s);
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++)
            mma_row_tile<HS, TBLK / 2>(s, qf[kk], ks, 0, kk * 16, lane);

        /* scale to base 2, mask the diagonal tile, row maxima */
        const bool diagonal = k0 == q0;
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int j = 0; j < TBLK; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1, key = k0 + 8 * j + 2 * quad + (e & 1);
                float v = s[j][e] * scale_log2;
                if (diagonal && key > row0 + 8 * r) v = -INFINITY;
                s[j][e] = v;
                mx[r] = fmaxf(mx[r], v);
            }
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(FULL, mx[r], 2));
            /* key 0 is in the first tile and visible to every row, so
             * mx is finite; exp2(-inf) = 0 drops the empty start */
            alpha[r] = exp2f(m[r] - mx[r]);
            m[r] = mx[r];
            l[r] *= alpha[r];
        }
#pragma unroll
        for (int j = 0; j < TBLK; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = exp2f(s[j][e] - m[e >> 1]);
                s[j][e] = p;
                l[e >> 1] += p;
            }
#pragma unroll
        for (int n = 0; n < HBLK; n++) {
            o[n][0] *= alpha[0];
            o[n][1] *= alpha[0];
            o[n][2] *= alpha[1];
            o[n][3] *= alpha[1];
        }

        /* O += P V, P straight from the score registers */
#pragma unroll
        for (int kk = 0; kk < TILE / 16; kk++) {
            uint32_t pa[4];
            acc_pair_to_a(pa, s[2 * kk], s[2 * kk + 1]);
            mma_col_tile<HS>(o, pa, vs, kk * 16, lane);
        }
        __syncthreads(); /* every warp is done with this stage before it is refilled */
    }

    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(FULL, l[r], 1);
        l[r] += __shfl_xor_sync(FULL, l[r], 2);
        inv[r] = 1.0f / l[r];
    }
    bf16 *out_h = out + bv.head_c;
    bf16 *dst0 = row0 < T ? out_h + (size_t)row0 * C : NULL;
    bf16 *dst8 = row0 + 8 < T ? out_h + (size_t)(row0 + 8) * C : NULL;
    store_acc_rows<HS>(dst0, dst8, o, inv[0], inv[1], lane);
    if (quad == 0) {
        float *lse_h = lse + (size_t)blockIdx.x * T;
        if (dst0) lse_h[row0] = m[0] * LN2 + logf(l[0]);
        if (dst8) lse_h[row0 + 8] = m[1] * LN2 + logf(l[1]);
    }
}

/* ---- backward: dK and dV ---- */

/* grid (B*NH, key tiles), THREADS threads; each warp owns 16 keys and
 * walks the query tiles from the diagonal on (blockIdx.y = 0, the first
 * keys, has the most). */
template <int HS>
__global__ void __launch_bounds__(THREADS)
    attention_mma_backward_dkdv_kernel(bf16 *dqkv, const bf16 *dout, const bf16 *qkv,
                                       const float *lse, const float *D, int T, int C,
                                       float scale, float scale_log2)
{
    constexpr int KSTEPS = HS / 16;
    constexpr int CBLK = CHUNK / 8; /* 8-column blocks of a score chunk */
    constexpr int HBLK = HS / 8;
    constexpr bool HOLD = hold_own_rows<HS>();
    constexpr size_t TE = tile_bytes<HS>() / sizeof(bf16);
    extern __shared__ __align__(128) unsigned char mma_smem[];
    bf16 *k_s = reinterpret_cast<bf16 *>(mma_smem); /* this block's keys */
    bf16 *v_s = k_s + TE;
    bf16 *q_s = v_s + TE;      /* two stages */
    bf16 *do_s = q_s + 2 * TE; /* two stages */
    float *lse_s = reinterpret_cast<float *>(do_s + 2 * TE); /* [2][TILE] */
    float *d_s = lse_s + 2 * TILE;                            /* [2][TILE] */

    const BlockView bv = block_view<HS>(T, C);
    const int warp = bv.warp, lane = bv.lane, quad = bv.quad;
    const size_t stride = bv.stride, head_qkv = bv.head_qkv;
    const int k0 = blockIdx.y * TILE;
    const bf16 *q_g = qkv + head_qkv;
    const bf16 *do_g = dout + bv.head_c;
    const float *lse_g = lse + (size_t)blockIdx.x * T;
    const float *d_g = D + (size_t)blockIdx.x * T;
    const int key0 = k0 + warp * WROWS + bv.g; /* the key of c0,c1; key0 + 8 of c2,c3 */

    tile_load_async<HS>(k_s, q_g + C, stride, k0, T);
    tile_load_async<HS>(v_s, q_g + 2 * (size_t)C, stride, k0, T);
    tile_load_async<HS>(q_s, q_g, stride, k0, T);
    tile_load_async<HS>(do_s, do_g, (size_t)C, k0, T);
    rows_load_async(lse_s, lse_g, k0, T);
    rows_load_async(d_s, d_g, k0, T);
    cp_async_commit();

    uint32_t ka[HOLD ? KSTEPS : 1][4], va[HOLD ? KSTEPS : 1][4];
    float dk[HBLK][4], dv[HBLK][4];
    zero<HBLK>(dk);
    zero<HBLK>(dv);

    for (int q0 = k0, it = 0; q0 < T; q0 += TILE, it++) {
        if (q0 + TILE < T) {
            const int st = (it + 1) & 1;
            tile_load_async<HS>(q_s + st * TE, q_g, stride, q0 + TILE, T);
            tile_load_async<HS>(do_s + st * TE, do_g, (size_t)C, q0 + TILE, T);
            rows_load_async(lse_s + st * TILE, lse_g, q0 + TILE, T);
            rows_load_async(d_s + st * TILE, d_g, q0 + TILE, T);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if constexpr (HOLD)
            if (it == 0) load_own_rows<HS>(ka, va, k_s, v_s, warp * WROWS, lane);
        const bf16 *qs = q_s + (it & 1) * TE, *dos = do_s + (it & 1) * TE;
        const float *lse_t = lse_s + (it & 1) * TILE, *d_t = d_s + (it & 1) * TILE;
        const bool edge = q0 == k0 || q0 + TILE > T; /* the diagonal, or past T */

#pragma unroll
        for (int c0 = 0; c0 < TILE; c0 += CHUNK) {
            /* every query of the chunk before every key of the warp */
            if (q0 + c0 + CHUNK - 1 < k0 + warp * WROWS) continue;
            float st[CBLK][4], dpt[CBLK][4]; /* S^T = K_w Q^T, dP^T = V_w dO^T */
            chunk_scores<HS>(st, dpt, ka, va, k_s, v_s, warp * WROWS, qs, dos, c0, lane);
            /* P^T and dS^T: rows are keys, columns queries */
#pragma unroll
            for (int j = 0; j < CBLK; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int qi = c0 + 8 * j + 2 * quad + (e & 1);
                    const int query = q0 + qi, key = key0 + 8 * (e >> 1);
                    const bool visible = !edge || (key <= query && query < T);
                    const float p =
                        visible ? exp2f(fmaf(st[j][e], scale_log2, -lse_t[qi] * LOG2E)) : 0.0f;
                    st[j][e] = p;
                    dpt[j][e] = p * (dpt[j][e] - d_t[qi]);
                }
            /* dV += P^T dO, dK += dS^T Q over the chunk's queries */
#pragma unroll
            for (int kq = 0; kq < CBLK / 2; kq++) {
                uint32_t pa[4], da[4];
                acc_pair_to_a(pa, st[2 * kq], st[2 * kq + 1]);
                acc_pair_to_a(da, dpt[2 * kq], dpt[2 * kq + 1]);
                mma_col_tile<HS>(dv, pa, dos, c0 + 16 * kq, lane);
                mma_col_tile<HS>(dk, da, qs, c0 + 16 * kq, lane);
            }
        }
        __syncthreads(); /* every warp is done with this stage before it is refilled */
    }

    bf16 *dk_h = dqkv + head_qkv + C;
    bf16 *dv_h = dqkv + head_qkv + 2 * (size_t)C;
    const bool in0 = key0 < T, in8 = key0 + 8 < T;
    store_acc_rows<HS>(in0 ? dv_h + (size_t)key0 * stride : NULL,
                       in8 ? dv_h + (size_t)(key0 + 8) * stride : NULL, dv, 1.0f, 1.0f, lane);
    store_acc_rows<HS>(in0 ? dk_h + (size_t)key0 * stride : NULL,
                       in8 ? dk_h + (size_t)(key0 + 8) * stride : NULL, dk, scale, scale, lane);
}

/* ---- backward: dQ ---- */

/* grid (B*NH, query tiles), THREADS threads; each warp owns 16 queries,
 * blockIdx.y counts from the last (longest) query tile. */
template <int HS>
__global__ void __launch_bounds__(THREADS)
    attention_mma_backward_dq_kernel(bf16 *dqkv, const bf16 *dout, const bf16 *qkv,
                                     const float *lse, const float *D, int T, int C,
                                     float scale, float scale_log2)
{
    constexpr int KSTEPS = HS / 16;
    constexpr int CBLK = CHUNK / 8;
    constexpr int HBLK = HS / 8;
    constexpr bool HOLD = hold_own_rows<HS>();
    constexpr size_t TE = tile_bytes<HS>() / sizeof(bf16);
    extern __shared__ __align__(128) unsigned char mma_smem[];
    bf16 *q_s = reinterpret_cast<bf16 *>(mma_smem); /* this block's queries */
    bf16 *do_s = q_s + TE;
    bf16 *k_s = do_s + TE;    /* two stages */
    bf16 *v_s = k_s + 2 * TE; /* two stages */

    const BlockView bv = block_view<HS>(T, C);
    const int warp = bv.warp, lane = bv.lane, quad = bv.quad;
    const size_t stride = bv.stride, head_qkv = bv.head_qkv;
    const int q0 = query_tile_start();
    const bf16 *q_g = qkv + head_qkv;
    const bf16 *k_g = q_g + C;
    const bf16 *v_g = q_g + 2 * (size_t)C;
    const int row0 = q0 + warp * WROWS + bv.g; /* the query of c0,c1; row0 + 8 of c2,c3 */

    tile_load_async<HS>(q_s, q_g, stride, q0, T);
    tile_load_async<HS>(do_s, dout + bv.head_c, (size_t)C, q0, T);
    tile_load_async<HS>(k_s, k_g, stride, 0, T);
    tile_load_async<HS>(v_s, v_g, stride, 0, T);
    cp_async_commit();

    /* this lane's two rows: lse in base 2 and D (rows past T: never written) */
    float lse2[2], drow[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row0 + 8 * r;
        const size_t at = (size_t)blockIdx.x * T + row;
        lse2[r] = row < T ? lse[at] * LOG2E : 0.0f;
        drow[r] = row < T ? D[at] : 0.0f;
    }

    uint32_t qa[HOLD ? KSTEPS : 1][4], oa[HOLD ? KSTEPS : 1][4];
    float dq[HBLK][4];
    zero<HBLK>(dq);

    const int n_tiles = q0 / TILE + 1;
    for (int it = 0; it < n_tiles; it++) {
        const int k0 = it * TILE;
        key_tile_step<HS>(k_s, v_s, k_g, v_g, stride, it, n_tiles, T);
        if constexpr (HOLD)
            if (it == 0) load_own_rows<HS>(qa, oa, q_s, do_s, warp * WROWS, lane);
        const bf16 *ks = k_s + (it & 1) * TE, *vs = v_s + (it & 1) * TE;
        const bool diagonal = k0 == q0;

#pragma unroll
        for (int c0 = 0; c0 < TILE; c0 += CHUNK) {
            /* every key of the chunk after every query of the warp */
            if (k0 + c0 > q0 + warp * WROWS + WROWS - 1) continue;
            float s[CBLK][4], dp[CBLK][4]; /* S = Q_w K^T, dP = dO_w V^T */
            chunk_scores<HS>(s, dp, qa, oa, q_s, do_s, warp * WROWS, ks, vs, c0, lane);
            /* dS = P (dP - D) */
#pragma unroll
            for (int j = 0; j < CBLK; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = e >> 1, key = k0 + c0 + 8 * j + 2 * quad + (e & 1);
                    const bool visible = !diagonal || key <= row0 + 8 * r;
                    const float p =
                        visible ? exp2f(fmaf(s[j][e], scale_log2, -lse2[r])) : 0.0f;
                    dp[j][e] = p * (dp[j][e] - drow[r]);
                }
            /* dQ += dS K over the chunk's keys */
#pragma unroll
            for (int kc = 0; kc < CBLK / 2; kc++) {
                uint32_t da[4];
                acc_pair_to_a(da, dp[2 * kc], dp[2 * kc + 1]);
                mma_col_tile<HS>(dq, da, ks, c0 + 16 * kc, lane);
            }
        }
        __syncthreads(); /* every warp is done with this stage before it is refilled */
    }

    bf16 *dq_h = dqkv + head_qkv;
    store_acc_rows<HS>(row0 < T ? dq_h + (size_t)row0 * stride : NULL,
                       row0 + 8 < T ? dq_h + (size_t)(row0 + 8) * stride : NULL, dq, scale,
                       scale, lane);
}

#ifndef OURO_ATTENTION_EMULATION
/* ---- host side ---- */

template <int HS>
void launch_mma_forward(void *out, float *lse, const void *qkv, const TcShape &a, cudaStream_t s)
{
    const size_t smem = forward_smem<HS>();
    allow_dynamic_smem(attention_mma_forward_kernel<HS>, smem);
    attention_mma_forward_kernel<HS><<<a.grid, THREADS, smem, s>>>(
        (bf16 *)out, lse, (const bf16 *)qkv, a.T, a.C, a.scale * LOG2E);
    cudaCheck(cudaGetLastError());
}

template <int HS>
void launch_mma_backward(void *dqkv, const float *D, const void *dout, const void *qkv,
                         const float *lse, const TcShape &a, cudaStream_t s)
{
    const size_t smem_kv = dkdv_smem<HS>();
    allow_dynamic_smem(attention_mma_backward_dkdv_kernel<HS>, smem_kv);
    attention_mma_backward_dkdv_kernel<HS><<<a.grid, THREADS, smem_kv, s>>>(
        (bf16 *)dqkv, (const bf16 *)dout, (const bf16 *)qkv, lse, D, a.T, a.C, a.scale,
        a.scale * LOG2E);
    cudaCheck(cudaGetLastError());

    const size_t smem_q = dq_smem<HS>();
    allow_dynamic_smem(attention_mma_backward_dq_kernel<HS>, smem_q);
    attention_mma_backward_dq_kernel<HS><<<a.grid, THREADS, smem_q, s>>>(
        (bf16 *)dqkv, (const bf16 *)dout, (const bf16 *)qkv, lse, D, a.T, a.C, a.scale,
        a.scale * LOG2E);
    cudaCheck(cudaGetLastError());
}

#endif /* OURO_ATTENTION_EMULATION */

} /* namespace */

#ifndef OURO_ATTENTION_EMULATION
extern "C" void k_attention_mma_forward(void *out, float *lse, const void *qkv, int B, int T,
                                        int C, int NH, cudaStream_t s)
{
    with_tc_launch("k_attention_mma_forward", B, T, C, NH, [&](auto hs, const TcShape &a) {
        launch_mma_forward<decltype(hs)::value>(out, lse, qkv, a, s);
    });
}

extern "C" void k_attention_mma_backward(void *dqkv, const float *D, const void *dout,
                                         const void *qkv, const float *lse, int B, int T, int C,
                                         int NH, cudaStream_t s)
{
    with_tc_launch("k_attention_mma_backward", B, T, C, NH, [&](auto hs, const TcShape &a) {
        launch_mma_backward<decltype(hs)::value>(dqkv, D, dout, qkv, lse, a, s);
    });
}

#endif /* OURO_ATTENTION_EMULATION */
