/* test_attention_emulation - the mma.sync attention kernels
 * (kernels/attention_mma.cu) run on the CPU through
 * tests/attention_emulation.h, against a float64 reference.
 *
 * For each shape (batch, tokens, heads, head size) and each cp.async
 * timing (data landing at issue, or at the wait), with bf16 inputs drawn
 * at random:
 *   forward:  out against tests/ref_gpt.c's ref_attention_forward on the
 *             same (bf16-rounded) inputs; lse against a float64
 *             log-sum-exp;
 *   backward: dqkv (the dK/dV kernel, then the dQ kernel, D = rowsum(dout
 *             * out) as attention.cu computes it) against the float64
 *             gradient below, itself checked first against central finite
 *             differences of ref_attention_forward.
 * Outputs are poisoned (bf16 NaN) before each kernel, so an element left
 * unwritten fails; shared memory is exactly the size the launcher asks
 * for, so an overrun fails too (the emulation checks every access).
 *
 * Error: max |got - ref| / max |ref| per array. Tolerance 2e-2, the GPU
 * suite's bf16 attention tolerance: the kernels round P, dS and their
 * outputs to bf16 (8 significant bits, 4e-3 relative).
 *
 *   tests/test_attention_emulation [--quick]
 * --quick runs the smaller shapes only. Exit 0 when every check passes.
 */
#define OURO_ATTENTION_EMULATION 1

#include "attention_emulation.h"

namespace {
/* the kernels' dynamic shared memory (extern __shared__ mma_smem[]) */
alignas(128) unsigned char mma_smem[emu::SMEM_BYTES];
} /* namespace */

#include "attention_mma.cu"

extern "C" {
#include "ref_gpt.h"
}

namespace {

constexpr double TOL = 2e-2;

struct Shape {
    int B, T, NH, HS;
};

/* ---- data ---- */

struct Rng {
    uint64_t s;
    double uniform() /* [-1, 1) */
    {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return (double)(s >> 11) / (double)(1ull << 52) - 1.0;
    }
};

std::vector<bf16> random_bf16(size_t n, double amplitude, Rng &rng)
{
    std::vector<bf16> v(n);
    for (auto &x : v) x.bits = emu_float_to_bf16((float)(amplitude * rng.uniform()));
    return v;
}

std::vector<double> to_double(const std::vector<bf16> &v)
{
    std::vector<double> d(v.size());
    for (size_t i = 0; i < v.size(); i++) d[i] = emu_bf16_to_float(v[i].bits);
    return d;
}

/* ---- float64 references ---- */

/* lse [B,NH,T] of scale * q.k over the visible keys */
std::vector<double> ref_lse(const std::vector<double> &qkv, const Shape &s)
{
    const int C = s.NH * s.HS;
    const double scale = 1.0 / sqrt((double)s.HS);
    std::vector<double> lse((size_t)s.B * s.NH * s.T);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++)
            for (int t = 0; t < s.T; t++) {
                const double *q = &qkv[((size_t)b * s.T + t) * 3 * C + (size_t)h * s.HS];
                std::vector<double> sc(t + 1);
                double mx = -INFINITY;
                for (int j = 0; j <= t; j++) {
                    const double *k = &qkv[((size_t)b * s.T + j) * 3 * C + C + (size_t)h * s.HS];
                    double dot = 0;
                    for (int d = 0; d < s.HS; d++) dot += q[d] * k[d];
                    sc[j] = dot * scale;
                    mx = fmax(mx, sc[j]);
                }
                double sum = 0;
                for (int j = 0; j <= t; j++) sum += exp(sc[j] - mx);
                lse[((size_t)b * s.NH + h) * s.T + t] = mx + log(sum);
            }
    return lse;
}

/* The gradient of sum(out * dout) with respect to qkv. */
std::vector<double> ref_backward(const std::vector<double> &qkv, const std::vector<double> &dout,
                                 const Shape &s)
{
    const int C = s.NH * s.HS, T = s.T, HS = s.HS;
    const double scale = 1.0 / sqrt((double)HS);
    std::vector<double> dqkv(qkv.size(), 0.0);
    std::vector<double> p(T), dp(T);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++) {
            auto at = [&](int t, int part) { return ((size_t)b * T + t) * 3 * C + (size_t)part * C + (size_t)h * HS; };
            for (int t = 0; t < T; t++) {
                const double *q = &qkv[at(t, 0)];
                const double *go = &dout[((size_t)b * T + t) * C + (size_t)h * HS];
                double mx = -INFINITY;
                for (int j = 0; j <= t; j++) {
                    double dot = 0;
                    for (int d = 0; d < HS; d++) dot += q[d] * qkv[at(j, 1) + d];
                    p[j] = dot * scale;
                    mx = fmax(mx, p[j]);
                }
                double sum = 0;
                for (int j = 0; j <= t; j++) sum += (p[j] = exp(p[j] - mx));
                double pd = 0; /* sum_j p_j dp_j */
                for (int j = 0; j <= t; j++) {
                    p[j] /= sum;
                    double dot = 0;
                    for (int d = 0; d < HS; d++) dot += go[d] * qkv[at(j, 2) + d];
                    dp[j] = dot;
                    pd += p[j] * dp[j];
                }
                for (int j = 0; j <= t; j++) {
                    const double ds = p[j] * (dp[j] - pd) * scale;
                    for (int d = 0; d < HS; d++) {
                        dqkv[at(t, 0) + d] += ds * qkv[at(j, 1) + d];
                        dqkv[at(j, 1) + d] += ds * q[d];
                        dqkv[at(j, 2) + d] += p[j] * go[d];
                    }
                }
            }
        }
    return dqkv;
}

/* ref_backward against central differences of ref_attention_forward on a
 * small shape: the reference must be right before it judges. */
bool check_reference_backward()
{
    const Shape s = {1, 5, 2, 4};
    const int C = s.NH * s.HS;
    Rng rng = {7};
    std::vector<double> qkv((size_t)s.B * s.T * 3 * C), dout((size_t)s.B * s.T * C);
    for (auto &x : qkv) x = rng.uniform();
    for (auto &x : dout) x = rng.uniform();
    const std::vector<double> g = ref_backward(qkv, dout, s);
    std::vector<double> out(dout.size());
    auto objective = [&]() {
        ref_attention_forward(out.data(), NULL, qkv.data(), s.B, s.T, C, s.NH);
        double f = 0;
        for (size_t i = 0; i < out.size(); i++) f += out[i] * dout[i];
        return f;
    };
    double worst = 0;
    const double eps = 1e-5;
    for (size_t i = 0; i < qkv.size(); i++) {
        const double x = qkv[i];
        qkv[i] = x + eps;
        const double fp = objective();
        qkv[i] = x - eps;
        const double fm = objective();
        qkv[i] = x;
        worst = fmax(worst, fabs((fp - fm) / (2 * eps) - g[i]));
    }
    const bool ok = worst < 1e-7;
    printf("%s  reference backward vs finite differences: max abs error %.2e (tol 1e-07)\n",
           ok ? "PASS" : "FAIL", worst);
    return ok;
}

/* ---- comparison ---- */

/* max |got - ref| / max |ref| over the elements where `use` (NaN: inf). */
double rel_error(const std::vector<double> &got, const std::vector<double> &ref,
                 const std::function<bool(size_t)> &use)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        if (!use(i)) continue;
        if (!std::isfinite(got[i])) return INFINITY;
        num = fmax(num, fabs(got[i] - ref[i]));
        den = fmax(den, fabs(ref[i]));
    }
    return den > 0 ? num / den : num;
}

bool report(const char *what, const Shape &s, const char *mode, double err)
{
    const bool ok = err <= TOL;
    printf("%s  %-4s B=%d T=%-3d NH=%d HS=%-3d %-20s rel error %.2e (tol %.0e)\n",
           ok ? "PASS" : "FAIL", what, s.B, s.T, s.NH, s.HS, mode, err, TOL);
    return ok;
}

/* ---- one shape ---- */

/* How the emulated threads are run: see attention_emulation.h. */
struct Mode {
    emu::CopyTiming timing;
    emu::Schedule schedule;
    const char *name;
};

template <int HS> bool run_shape(const Shape &s, const Mode &mode)
{
    const char *tname = mode.name;
    emu::set_copy_timing(mode.timing);
    emu::set_schedule(mode.schedule);
    const int C = s.NH * HS, T = s.T;
    const size_t n_qkv = (size_t)s.B * T * 3 * C, n_out = (size_t)s.B * T * C;
    const size_t n_rows = (size_t)s.B * s.NH * T;
    Rng rng = {(uint64_t)(1000003 * T + 7919 * HS + 31 * s.NH + s.B)};
    const std::vector<bf16> qkv = random_bf16(n_qkv, 2.0, rng);
    const std::vector<bf16> dout = random_bf16(n_out, 1.0, rng);
    const std::vector<double> qkv_d = to_double(qkv), dout_d = to_double(dout);
    const bf16 poison = {0x7fc0};
    const TcShape a = tc_shape("test_attention_emulation", s.B, T, C, s.NH);

    /* forward */
    std::vector<bf16> out(n_out, poison);
    std::vector<float> lse(n_rows, NAN);
    emu::clear_globals();
    emu::allow_global(qkv.data(), n_qkv * sizeof(bf16));
    emu::set_shared_memory(mma_smem, forward_smem<HS>());
    emu::launch(a.grid, THREADS, [&] {
        attention_mma_forward_kernel<HS>(out.data(), lse.data(), qkv.data(), T, C,
                                         a.scale * LOG2E);
    });
    std::vector<double> out_ref(n_out);
    ref_attention_forward(out_ref.data(), NULL, qkv_d.data(), s.B, T, C, s.NH);
    const std::vector<double> lse_ref = ref_lse(qkv_d, s);
    const std::vector<double> out_got = to_double(out);
    std::vector<double> lse_got(lse.begin(), lse.end());
    auto all = [](size_t) { return true; };
    bool ok = report("out", s, tname, rel_error(out_got, out_ref, all));
    ok &= report("lse", s, tname, rel_error(lse_got, lse_ref, all));

    /* backward: D as attention.cu's kernel computes it, from the bf16 out */
    std::vector<float> D(n_rows);
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.NH; h++)
            for (int t = 0; t < T; t++) {
                float acc = 0;
                for (int d = 0; d < HS; d++) {
                    const size_t i = ((size_t)b * T + t) * C + (size_t)h * HS + d;
                    acc += (float)out_got[i] * (float)dout_d[i];
                }
                D[((size_t)b * s.NH + h) * T + t] = acc;
            }
    std::vector<bf16> dqkv(n_qkv, poison);
    emu::allow_global(dout.data(), n_out * sizeof(bf16));
    emu::allow_global(lse.data(), n_rows * sizeof(float));
    emu::allow_global(D.data(), n_rows * sizeof(float));
    emu::set_shared_memory(mma_smem, dkdv_smem<HS>());
    emu::launch(a.grid, THREADS, [&] {
        attention_mma_backward_dkdv_kernel<HS>(dqkv.data(), dout.data(), qkv.data(), lse.data(),
                                               D.data(), T, C, a.scale, a.scale * LOG2E);
    });
    emu::set_shared_memory(mma_smem, dq_smem<HS>());
    emu::launch(a.grid, THREADS, [&] {
        attention_mma_backward_dq_kernel<HS>(dqkv.data(), dout.data(), qkv.data(), lse.data(),
                                             D.data(), T, C, a.scale, a.scale * LOG2E);
    });
    const std::vector<double> g_ref = ref_backward(qkv_d, dout_d, s);
    const std::vector<double> g_got = to_double(dqkv);
    const char *names[3] = {"dq", "dk", "dv"};
    for (int part = 0; part < 3; part++)
        ok &= report(names[part], s, tname, rel_error(g_got, g_ref, [&](size_t i) {
                         return (int)(i % (3 * (size_t)C) / C) == part;
                     }));
    return ok;
}

bool run(const Shape &s, const Mode &mode)
{
    switch (s.HS) {
#define EMU_CASE(n)                                                                    \
    case n:                                                                            \
        return run_shape<n>(s, mode);
        TC_HEAD_SIZES(EMU_CASE)
#undef EMU_CASE
    }
    die("head size %d has no mma kernel", s.HS);
}

} /* namespace */

int main(int argc, char **argv)
{
    const bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (argc > 1 && !quick) {
        fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
        return 2;
    }
    /* T around the 64-token tiles and the 32-column chunks: one token, a
     * part tile, exactly one and two tiles, one past, several with a
     * ragged end; every head size's register path (HS <= 64 keeps the
     * warp's operands, above reloads them) */
    const Shape quick_shapes[] = {{1, 1, 1, 16}, {1, 17, 2, 16}, {1, 64, 1, 32},
                                  {2, 65, 2, 64}, {1, 180, 1, 32}, {1, 45, 1, 128}};
    const Shape more_shapes[] = {{1, 128, 1, 48}, {1, 100, 1, 80}, {1, 70, 2, 96},
                                 {1, 33, 1, 112}, {1, 200, 1, 64}, {1, 129, 1, 128},
                                 {1, 130, 1, 64}};
    /* copies landing early with warp 0 ahead would show a refill racing
     * the other warps' reads; late with warp 3 ahead, a read before the
     * wait */
    const Mode modes[] = {{emu::EARLY, emu::LOCKSTEP, "lockstep, early"},
                          {emu::EARLY, emu::AHEAD, "warp 0 ahead, early"},
                          {emu::LATE, emu::BEHIND, "warp 3 ahead, late"}};
    bool ok = check_reference_backward();
    for (const Mode &mode : modes) {
        for (const Shape &s : quick_shapes) ok &= run(s, mode);
        if (!quick)
            for (const Shape &s : more_shapes) ok &= run(s, mode);
    }
    printf("%s\n", ok ? "all checks passed" : "SOME CHECKS FAILED");
    return ok ? 0 : 1;
}
