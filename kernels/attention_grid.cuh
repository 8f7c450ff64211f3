/* attention_grid.cuh - what the two tensor-core attention files
 * (attention_tc.cu: WMMA; attention_mma.cu: mma.sync) share: the head
 * sizes they are built for, the grid of 64-token tiles, and the shape
 * check and head-size dispatch of every entry point. Internal to
 * kernels/ (CUDA C++; tests/test_attention_emulation.cc builds it for the
 * CPU). */
#ifndef OURO_ATTENTION_GRID_CUH
#define OURO_ATTENTION_GRID_CUH

#include <math.h>

#include <type_traits>

#ifndef OURO_ATTENTION_EMULATION /* tests/attention_emulation.h stands in */
#include <cuda_runtime.h>
#endif

extern "C" void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Every head size the tensor-core kernels are instantiated for: the
 * fragments are 16 wide. k_attention_tc_handles answers from this list. */
#define TC_HEAD_SIZES(X) X(16) X(32) X(48) X(64) X(80) X(96) X(112) X(128)

namespace attention_grid {

constexpr int TILE = 64; /* tokens per block, and per tile a block walks */
constexpr int MAX_GRID_Y = 65535;

__host__ __device__ constexpr size_t round128(size_t bytes) { return (bytes + 127) / 128 * 128; }

struct TcShape {
    int T, C, NH;
    dim3 grid;   /* (B*NH, ceil(T/TILE)) */
    float scale; /* 1/sqrt(HS) */
};

/* Checks the sizes (dies naming `who`) and lays out the grid. */
static inline TcShape tc_shape(const char *who, int B, int T, int C, int NH)
{
    if (B < 1 || T < 1 || C < 1 || NH < 1 || C % NH != 0)
        die("%s: B=%d T=%d C=%d NH=%d: sizes must be positive with C a multiple of NH", who,
            B, T, C, NH);
    const long long heads = (long long)B * NH;
    const int tiles = (T + TILE - 1) / TILE;
    if (heads > 0x7fffffffLL || tiles > MAX_GRID_Y)
        die("%s: B*NH=%lld and %d tiles of %d tokens exceed the grid limits; use a smaller "
            "batch or a shorter sequence",
            who, heads, tiles, TILE);
    TcShape a;
    a.T = T;
    a.C = C;
    a.NH = NH;
    a.grid = dim3((unsigned)heads, (unsigned)tiles);
    a.scale = 1.0f / sqrtf((float)(C / NH));
    return a;
}

/* What every tensor-core entry point does: checks the sizes and lays out
 * the grid (tc_shape), then calls f(std::integral_constant<int, HS>(), a)
 * for the head size, one of TC_HEAD_SIZES, so f can launch the kernels
 * instantiated for it. Dies naming `who` for bad sizes or another head
 * size. */
template <typename F> void with_tc_launch(const char *who, int B, int T, int C, int NH, F &&f)
{
    const TcShape a = tc_shape(who, B, T, C, NH);
    switch (C / NH) {
#define TC_CASE(n)                                                                     \
    case n:                                                                            \
        f(std::integral_constant<int, n>(), a);                                        \
        return;
        TC_HEAD_SIZES(TC_CASE)
#undef TC_CASE
    }
    die("%s: head size %d has no tensor-core kernel (multiples of 16 up to 128 only; check "
        "k_attention_tc_handles first)",
        who, C / NH);
}

} /* namespace attention_grid */

#endif
