/* attention_emulation.h - runs kernels/attention_mma.cu on the CPU.
 *
 * kernels/attention_mma.cu is CUDA C++ whose only GPU-specific parts are a
 * handful of PTX wrappers (ldmatrix, mma.sync, cp.async) and the CUDA
 * built-ins (threadIdx, __syncthreads, __shfl_xor_sync). Compiled with
 * OURO_ATTENTION_EMULATION defined, it leaves those out and takes the
 * stand-ins below, so an ordinary C++ compiler builds the kernels and a
 * test runs them on any machine: every index, mask, tile stage, chunk
 * skip and write-out of the real kernels, against an independent
 * reference (tests/test_attention_emulation.cc).
 *
 * What this can and cannot show. The stand-ins implement the PTX
 * instructions as the PTX ISA documents them (fragment layouts of
 * mma.m16n8k16 with .bf16 inputs, ldmatrix .x4 with and without .trans,
 * cp.async's zero-fill); the kernels' own use of them is what is tested.
 * A misreading of the ISA shared by the kernels and this file would pass
 * here, and timing, occupancy and real memory ordering are not modelled,
 * so the GPU suite (tests/gpu/run.sh) remains the check of record.
 *
 * Execution model. A block's THREADS threads are user-level contexts
 * (ucontext) on one OS thread, scheduled cooperatively: a thread runs
 * until it reaches a synchronisation point (__syncthreads, or any warp
 * collective: ldmatrix, mma, shuffle), and resumes only when every thread
 * that point involves (its block, or its warp) has reached it. Warp
 * collectives exchange their operands through two slots per warp, used
 * alternately, which is enough because no lane can be more than one
 * collective ahead of another lane of its warp. A thread that waits for
 * partners that never come (a barrier inside divergent code, a warp whose
 * lanes take different numbers of collectives) is a deadlock, reported as
 * an error. Blocks run one after the other.
 *
 * The order in which ready threads run is a choice too
 * (emu::set_schedule): LOCKSTEP resumes every ready thread in turn, so
 * the warps advance together; AHEAD always resumes the lowest-numbered
 * ready thread, so warp 0 runs as far as it can before warp 1 starts (and
 * BEHIND the highest-numbered). A barrier missing between one warp's
 * reads of a shared tile and another thread's refill of it shows under
 * the skewed schedules.
 *
 * cp.async is modelled with a choice of when the data lands
 * (emu::set_copy_timing): at issue (EARLY: catches a refill that
 * overwrites a stage still being read) or at the wait that retires its
 * group (LATE: catches a read of a stage before its wait). Every copy
 * checks its shared-memory destination and, when it reads, that its
 * global source lies inside an array the test registered
 * (emu::allow_global). ldmatrix checks that its rows lie in shared
 * memory and are 16-byte aligned.
 */
#ifndef OURO_ATTENTION_EMULATION_H
#define OURO_ATTENTION_EMULATION_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <functional>
#include <vector>

/* ---- CUDA keywords ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__
#define __align__(n)

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

/* ---- bf16, bit for bit as cuda_bf16.h (round to nearest even) ---- */
struct __nv_bfloat16 {
    uint16_t bits;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y; /* x in the low half */
};

inline uint16_t emu_float_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0; /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
inline float emu_bf16_to_float(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi)
{
    __nv_bfloat162 v;
    v.x.bits = emu_float_to_bf16(lo);
    v.y.bits = emu_float_to_bf16(hi);
    return v;
}

namespace emu {

constexpr int MAX_THREADS = 128;
constexpr size_t STACK_BYTES = 256 * 1024;
constexpr size_t SMEM_BYTES = 160 * 1024;

enum CopyTiming { EARLY, LATE };
enum Schedule { LOCKSTEP, AHEAD, BEHIND };

/* What a lane brings to a warp collective. */
struct Deposit {
    const void *addr;
    uint32_t a[4], b[2];
    float f;
};

enum Wait { READY, AT_WARP, AT_BLOCK, DONE };

struct PendingCopy {
    void *dst;
    const void *src; /* NULL: zero-fill */
    int bytes;
};

struct Thread {
    ucontext_t ctx;
    dim3 tid;
    Wait wait;
    long warp_seq, block_seq; /* collectives / barriers reached so far */
    std::vector<std::vector<PendingCopy>> groups; /* cp.async: committed groups, oldest first */
    std::vector<PendingCopy> open_group;
};

struct State {
    Thread th[MAX_THREADS];
    int n_threads = 0;
    Thread *cur = nullptr;
    ucontext_t scheduler;
    std::vector<char> stacks;
    Deposit slots[MAX_THREADS / 32][2][32];
    dim3 block, grid;
    CopyTiming timing = EARLY;
    Schedule schedule = LOCKSTEP;
    unsigned char *smem = nullptr;
    size_t smem_bytes = 0;
    std::vector<std::pair<const char *, size_t>> globals;
    std::function<void()> kernel;
};

inline State &st()
{
    static State s;
    return s;
}

[[noreturn]] inline void fail(const char *what)
{
    Thread *t = st().cur;
    fprintf(stderr, "attention emulation: %s (block %u,%u thread %u)\n", what, st().block.x,
            st().block.y, t ? t->tid.x : 0u);
    /* _Exit: this may run on a thread's stack, which exit's destructors free */
    fflush(stdout);
    fflush(stderr);
    _Exit(1);
}

inline void set_copy_timing(CopyTiming t) { st().timing = t; }
inline void set_schedule(Schedule s) { st().schedule = s; }
inline void set_shared_memory(unsigned char *p, size_t bytes)
{
    st().smem = p;
    st().smem_bytes = bytes;
}
inline void allow_global(const void *p, size_t bytes)
{
    st().globals.push_back({(const char *)p, bytes});
}
inline void clear_globals() { st().globals.clear(); }

inline bool in_shared(const void *p, size_t bytes)
{
    const unsigned char *c = (const unsigned char *)p;
    return c >= st().smem && c + bytes <= st().smem + st().smem_bytes;
}
inline bool in_global(const void *p, size_t bytes)
{
    const char *c = (const char *)p;
    for (auto &g : st().globals)
        if (c >= g.first && c + bytes <= g.first + g.second) return true;
    return false;
}

/* Suspends the current thread at a synchronisation point. */
inline void suspend(Wait w)
{
    Thread *t = st().cur;
    t->wait = w;
    if (swapcontext(&t->ctx, &st().scheduler) != 0) fail("swapcontext failed");
}

inline bool can_resume(const Thread &t)
{
    State &s = st();
    switch (t.wait) {
    case READY:
        return true;
    case AT_WARP: {
        const int w0 = (int)t.tid.x / 32 * 32;
        for (int i = w0; i < w0 + 32 && i < s.n_threads; i++)
            if (s.th[i].warp_seq < t.warp_seq) return false;
        return true;
    }
    case AT_BLOCK:
        for (int i = 0; i < s.n_threads; i++)
            if (s.th[i].block_seq < t.block_seq) return false;
        return true;
    case DONE:
        return false;
    }
    return false;
}

/* Deposits this lane's operands for its warp's next collective, waits for
 * the other 31 lanes, and returns the 32 deposits. */
inline const Deposit *warp_exchange(const Deposit &d)
{
    Thread *t = st().cur;
    const int w = (int)t->tid.x / 32, lane = (int)t->tid.x % 32;
    const long n = t->warp_seq++;
    st().slots[w][n & 1][lane] = d;
    suspend(AT_WARP);
    return st().slots[w][n & 1];
}

inline void land(const PendingCopy &c)
{
    if (c.src)
        memcpy(c.dst, c.src, (size_t)c.bytes);
    else
        memset(c.dst, 0, (size_t)c.bytes);
}

inline void thread_entry(int i)
{
    State &s = st();
    s.kernel();
    if (!s.th[i].open_group.empty() || !s.th[i].groups.empty())
        fail("the kernel ended with cp.async copies not waited for");
    s.th[i].wait = DONE;
    /* returning resumes uc_link: the scheduler */
}

/* Runs kernel() as every block of `grid` with `threads` threads each. */
inline void launch(dim3 grid, int threads, std::function<void()> kernel)
{
    State &s = st();
    if (threads < 1 || threads > MAX_THREADS || threads % 32 != 0) fail("bad block size");
    if (s.stacks.empty()) s.stacks.resize(STACK_BYTES * MAX_THREADS);
    s.kernel = kernel;
    s.grid = grid;
    s.n_threads = threads;
    for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++) {
            s.block = dim3(bx, by);
            memset(s.smem, 0xff, s.smem_bytes); /* NaN-like garbage: unwritten reads show */
            for (int i = 0; i < threads; i++) {
                Thread &t = s.th[i];
                t.tid = dim3((unsigned)i);
                t.wait = READY;
                t.warp_seq = t.block_seq = 0;
                t.groups.clear();
                t.open_group.clear();
                if (getcontext(&t.ctx) != 0) fail("getcontext failed");
                t.ctx.uc_stack.ss_sp = &s.stacks[(size_t)i * STACK_BYTES];
                t.ctx.uc_stack.ss_size = STACK_BYTES;
                t.ctx.uc_link = &s.scheduler;
                makecontext(&t.ctx, (void (*)())thread_entry, 1, i);
            }
            for (;;) {
                bool ran = false, all_done = true;
                for (int k = 0; k < threads; k++) {
                    const int i = s.schedule == BEHIND ? threads - 1 - k : k;
                    Thread &t = s.th[i];
                    if (t.wait == DONE) continue;
                    all_done = false;
                    if (!can_resume(t)) continue;
                    s.cur = &t;
                    t.wait = READY;
                    if (swapcontext(&s.scheduler, &t.ctx) != 0) fail("swapcontext failed");
                    ran = true;
                    if (s.schedule != LOCKSTEP) break; /* rescan from the first thread */
                }
                s.cur = nullptr;
                if (all_done) break;
                if (!ran) fail("deadlock: threads wait at synchronisation points that not all "
                               "of their partners reach");
            }
        }
}

inline const dim3 &thread_index() { return st().cur->tid; }

} /* namespace emu */

#define threadIdx (emu::thread_index())
#define blockIdx (emu::st().block)
#define gridDim (emu::st().grid)

inline void __syncthreads()
{
    emu::st().cur->block_seq++;
    emu::suspend(emu::AT_BLOCK);
}

inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask)
{
    if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync: only full-warp shuffles are modelled");
    emu::Deposit d = {};
    d.f = v;
    const emu::Deposit *all = emu::warp_exchange(d);
    return all[((int)threadIdx.x % 32) ^ lane_mask].f;
}

/* ---- the PTX wrappers of attention_mma.cu ---- */

inline uint32_t emu_pair(const __nv_bfloat16 &lo, const __nv_bfloat16 &hi)
{
    return (uint32_t)lo.bits | ((uint32_t)hi.bits << 16);
}

inline const emu::Deposit *emu_ldmatrix_exchange(const __nv_bfloat16 *row)
{
    if (!emu::in_shared(row, 16)) emu::fail("ldmatrix: a row outside shared memory");
    if (((uintptr_t)row & 15u) != 0) emu::fail("ldmatrix: a row not 16-byte aligned");
    emu::Deposit d = {};
    d.addr = row;
    return emu::warp_exchange(d);
}

/* ldmatrix.x4: r[i] = (row g, columns 2q, 2q+1) of block i, whose row j
 * lane 8i+j addressed. */
inline void ldsm_x4(uint32_t r[4], const __nv_bfloat16 *row)
{
    const emu::Deposit *all = emu_ldmatrix_exchange(row);
    const int lane = (int)threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    for (int i = 0; i < 4; i++) {
        const __nv_bfloat16 *p = (const __nv_bfloat16 *)all[8 * i + g].addr;
        r[i] = emu_pair(p[2 * q], p[2 * q + 1]);
    }
}

/* ldmatrix.x4.trans: r[i] = (rows 2q, 2q+1, column g) of block i. */
inline void ldsm_x4_trans(uint32_t r[4], const __nv_bfloat16 *row)
{
    const emu::Deposit *all = emu_ldmatrix_exchange(row);
    const int lane = (int)threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    for (int i = 0; i < 4; i++) {
        const __nv_bfloat16 *r0 = (const __nv_bfloat16 *)all[8 * i + 2 * q].addr;
        const __nv_bfloat16 *r1 = (const __nv_bfloat16 *)all[8 * i + 2 * q + 1].addr;
        r[i] = emu_pair(r0[g], r1[g]);
    }
}

/* mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32, c += A B, each lane's
 * registers placed as the PTX ISA's fragment figures say. */
inline void mma_16x8x16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    emu::Deposit d = {};
    memcpy(d.a, a, sizeof d.a);
    d.b[0] = b0;
    d.b[1] = b1;
    const emu::Deposit *all = emu::warp_exchange(d);
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, q = l & 3;
        const uint32_t *ra = all[l].a, *rb = all[l].b;
        const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * q, 2 * q, 2 * q + 8, 2 * q + 8};
        for (int i = 0; i < 4; i++) {
            A[rows[i]][cols[i]] = emu_bf16_to_float((uint16_t)(ra[i] & 0xffffu));
            A[rows[i]][cols[i] + 1] = emu_bf16_to_float((uint16_t)(ra[i] >> 16));
        }
        B[2 * q][g] = emu_bf16_to_float((uint16_t)(rb[0] & 0xffffu));
        B[2 * q + 1][g] = emu_bf16_to_float((uint16_t)(rb[0] >> 16));
        B[2 * q + 8][g] = emu_bf16_to_float((uint16_t)(rb[1] & 0xffffu));
        B[2 * q + 9][g] = emu_bf16_to_float((uint16_t)(rb[1] >> 16));
    }
    const int lane = (int)threadIdx.x % 32, g = lane >> 2, q = lane & 3;
    const int row[4] = {g, g, g + 8, g + 8}, col[4] = {2 * q, 2 * q + 1, 2 * q, 2 * q + 1};
    for (int i = 0; i < 4; i++) {
        float acc = c[i];
        for (int k = 0; k < 16; k++) acc += A[row[i]][k] * B[k][col[i]];
        c[i] = acc;
    }
}

inline void emu_cp_async(void *dst, const void *src, int bytes, bool valid)
{
    if (!emu::in_shared(dst, (size_t)bytes)) emu::fail("cp.async: destination outside shared memory");
    if (((uintptr_t)dst % (uintptr_t)bytes) != 0 || ((uintptr_t)src % (uintptr_t)bytes) != 0)
        emu::fail("cp.async: misaligned source or destination");
    if (valid && !emu::in_global(src, (size_t)bytes))
        emu::fail("cp.async: source outside every input array");
    emu::PendingCopy c = {dst, valid ? src : nullptr, bytes};
    if (emu::st().timing == emu::EARLY)
        emu::land(c);
    else
        emu::st().cur->open_group.push_back(c);
}
inline void cp_async16(void *dst, const void *src, bool valid) { emu_cp_async(dst, src, 16, valid); }
inline void cp_async4(void *dst, const void *src, bool valid) { emu_cp_async(dst, src, 4, valid); }
inline void cp_async_commit()
{
    emu::Thread *t = emu::st().cur;
    t->groups.push_back(t->open_group);
    t->open_group.clear();
}
template <int pending> inline void cp_async_wait()
{
    emu::Thread *t = emu::st().cur;
    while ((int)t->groups.size() > pending) {
        for (const emu::PendingCopy &c : t->groups.front()) emu::land(c);
        t->groups.erase(t->groups.begin());
    }
}

#endif
