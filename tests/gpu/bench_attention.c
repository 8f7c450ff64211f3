/* bench_attention - times every attention path (kernels/attention.cu's
 * SIMT kernels, the WMMA and the mma.sync tensor-core kernels) on the same
 * bf16 inputs, forward and backward, and prints a table.
 *
 *   tests/gpu/bench_attention [--reps N] [B T NH HS ...]
 *
 * Each shape is four numbers (batch, tokens, heads, head size); the
 * default is GPT-2 small's attention at the GPU benchmark's batch (16 1024
 * 12 64) and the same width in heads of 128 (16 1024 6 128). Each call is
 * timed with CUDA events around --reps (default 20) launches after 3
 * warm-up launches; the table gives the mean per call. The backward
 * includes D = rowsum(dout * out), as the backend runs it.
 *
 * TFLOP/s count the useful causal products: the forward's two (S = Q K^T,
 * O = P V) at 2 T^2 HS each per head, halved by causality; the backward's
 * five (S again, dP, dV, dK, dQ) as 2.5 times the forward. The last
 * columns compare each path's out and dqkv with the first path's (max
 * |difference| / max |first|): a timing of wrong results shows at once;
 * tests/gpu/test_gpu_kernels is the correctness test.
 *
 * Exit status 0, 77 when no GPU is visible, 1 on an error. Not a test:
 * timings are printed, never judged.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "common.h"
#include "cuda_check.h"
#include "kernels.h"

enum { WARMUP = 3 };

typedef struct {
    int B, T, NH, HS;
} Shape;

typedef struct {
    double fwd_ms, bwd_ms;
    double out_diff, dqkv_diff; /* against the first path */
} Timing;

static void *dev_alloc(size_t bytes) {
    void *p = NULL;
    cudaCheck(cudaMalloc(&p, bytes));
    return p;
}

/* n bf16 values uniform in [-amp, amp), from a fixed seed */
static void *random_bf16(size_t n, float amp, unsigned long long seed, cudaStream_t s) {
    float *h = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = amp * (float)((double)(seed >> 11) / (double)(1ull << 52) - 1.0);
    }
    float *d32 = dev_alloc(n * sizeof(float));
    void *d16 = dev_alloc(n * 2);
    cudaCheck(cudaMemcpy(d32, h, n * sizeof(float), cudaMemcpyHostToDevice));
    k_cast(d16, OURO_BF16, d32, OURO_F32, n, s);
    cudaCheck(cudaStreamSynchronize(s));
    cudaCheck(cudaFree(d32));
    free(h);
    return d16;
}

static float *download_f32(const void *d16, size_t n, cudaStream_t s) {
    float *d32 = dev_alloc(n * sizeof(float));
    k_cast(d32, OURO_F32, d16, OURO_BF16, n, s);
    float *h = xmalloc(n * sizeof(float));
    cudaCheck(cudaMemcpyAsync(h, d32, n * sizeof(float), cudaMemcpyDeviceToHost, s));
    cudaCheck(cudaStreamSynchronize(s));
    cudaCheck(cudaFree(d32));
    return h;
}

/* max |a - b| / max |a|; NaN anywhere: inf */
static double rel_diff(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)a[i]));
    }
    return den > 0.0 ? num / den : num;
}

typedef struct {
    const Shape *sh;
    KAttentionPath path;
    void *qkv, *dout, *out, *dqkv;
    float *lse, *scratch;
    cudaStream_t s;
} Call;

static void run_forward(const Call *c) {
    const Shape *h = c->sh;
    k_attention_forward_path(c->path, c->out, c->lse, c->qkv, OURO_BF16, h->B, h->T,
                             h->NH * h->HS, h->NH, c->s);
}

static void run_backward(const Call *c) {
    const Shape *h = c->sh;
    k_attention_backward_path(c->path, c->dqkv, c->scratch, c->dout, c->qkv, c->out, c->lse,
                              OURO_BF16, h->B, h->T, h->NH * h->HS, h->NH, c->s);
}

/* mean ms per call of fn over reps calls, after WARMUP */
static double time_calls(void (*fn)(const Call *), const Call *c, int reps) {
    for (int i = 0; i < WARMUP; i++) fn(c);
    cudaEvent_t a, b;
    cudaCheck(cudaEventCreate(&a));
    cudaCheck(cudaEventCreate(&b));
    cudaCheck(cudaEventRecord(a, c->s));
    for (int i = 0; i < reps; i++) fn(c);
    cudaCheck(cudaEventRecord(b, c->s));
    cudaCheck(cudaEventSynchronize(b));
    float ms = 0.0f;
    cudaCheck(cudaEventElapsedTime(&ms, a, b));
    cudaCheck(cudaEventDestroy(a));
    cudaCheck(cudaEventDestroy(b));
    return ms / reps;
}

static void bench_shape(const Shape *sh, int reps, cudaStream_t s) {
    const int C = sh->NH * sh->HS;
    const size_t n_qkv = (size_t)sh->B * sh->T * 3 * C, n_out = (size_t)sh->B * sh->T * C;
    const size_t n_rows = (size_t)sh->B * sh->NH * sh->T;
    Call c = {sh, K_ATTENTION_SIMT, NULL, NULL, NULL, NULL, NULL, NULL, s};
    c.qkv = random_bf16(n_qkv, 2.0f, 1, s);
    c.dout = random_bf16(n_out, 1.0f, 2, s);
    c.out = dev_alloc(n_out * 2);
    c.dqkv = dev_alloc(n_qkv * 2);
    c.lse = dev_alloc(n_rows * sizeof(float));
    c.scratch = dev_alloc(
        k_attention_backward_scratch_floats(sh->B, sh->T, C, sh->NH) * sizeof(float));
    /* useful FLOPs: see the top of this file */
    const double fwd_flop = 2.0 * sh->B * sh->NH * (double)sh->T * sh->T * sh->HS;
    const double bwd_flop = 2.5 * fwd_flop;

    printf("B=%d T=%d NH=%d HS=%d (bf16), mean of %d calls after %d:\n", sh->B, sh->T, sh->NH,
           sh->HS, reps, WARMUP);
    printf("  %-6s %10s %11s %12s %12s %10s %10s\n", "path", "fwd_ms", "bwd_ms", "fwd_TFLOP/s",
           "bwd_TFLOP/s", "out_diff", "dqkv_diff");
    const KAttentionPath paths[] = {K_ATTENTION_SIMT, K_ATTENTION_WMMA, K_ATTENTION_MMA};
    float *first_out = NULL, *first_dqkv = NULL;
    for (int i = 0; i < (int)(sizeof paths / sizeof paths[0]); i++) {
        c.path = paths[i];
        const char *name = k_attention_path_name(c.path);
        if (!k_attention_path_usable(c.path, OURO_BF16, sh->HS)) {
            printf("  %-6s  does not take head size %d\n", name, sh->HS);
            continue;
        }
        Timing t;
        t.fwd_ms = time_calls(run_forward, &c, reps);
        t.bwd_ms = time_calls(run_backward, &c, reps);
        float *out = download_f32(c.out, n_out, s), *dqkv = download_f32(c.dqkv, n_qkv, s);
        if (!first_out) {
            first_out = out;
            first_dqkv = dqkv;
            t.out_diff = t.dqkv_diff = 0.0;
        } else {
            t.out_diff = rel_diff(first_out, out, n_out);
            t.dqkv_diff = rel_diff(first_dqkv, dqkv, n_qkv);
            free(out);
            free(dqkv);
        }
        printf("  %-6s %10.3f %11.3f %12.1f %12.1f %10.2e %10.2e\n", name, t.fwd_ms, t.bwd_ms,
               fwd_flop / (t.fwd_ms * 1e9), bwd_flop / (t.bwd_ms * 1e9), t.out_diff,
               t.dqkv_diff);
        fflush(stdout);
    }
    free(first_out);
    free(first_dqkv);
    cudaCheck(cudaFree(c.qkv));
    cudaCheck(cudaFree(c.dout));
    cudaCheck(cudaFree(c.out));
    cudaCheck(cudaFree(c.dqkv));
    cudaCheck(cudaFree(c.lse));
    cudaCheck(cudaFree(c.scratch));
}

static int parse_int(const char *s, const char *what) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 1 || v > 1 << 24)
        die("bench_attention: %s '%s' is not a positive integer (see --help)", what, s);
    return (int)v;
}

int main(int argc, char **argv) {
    int reps = 20;
    Shape shapes[16];
    int n_shapes = 0;
    int i = 1;
    if (i < argc && (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)) {
        printf("usage: %s [--reps N] [B T NH HS ...]\n"
               "Times every attention path on bf16 inputs (default shapes 16 1024 12 64 and\n"
               "16 1024 6 128) and prints a table; see the top of tests/gpu/bench_attention.c.\n",
               argv[0]);
        return 0;
    }
    if (i + 1 < argc && strcmp(argv[i], "--reps") == 0) {
        reps = parse_int(argv[i + 1], "--reps");
        i += 2;
    }
    if ((argc - i) % 4 != 0) die("bench_attention: shapes are four numbers each: B T NH HS");
    for (; i < argc; i += 4) {
        if (n_shapes == 16) die("bench_attention: at most 16 shapes");
        Shape s = {parse_int(argv[i], "B"), parse_int(argv[i + 1], "T"),
                   parse_int(argv[i + 2], "NH"), parse_int(argv[i + 3], "HS")};
        if (!k_attention_supported(s.HS)) die("bench_attention: no kernel for head size %d", s.HS);
        shapes[n_shapes++] = s;
    }
    if (n_shapes == 0) {
        shapes[0] = (Shape){16, 1024, 12, 64};
        shapes[1] = (Shape){16, 1024, 6, 128};
        n_shapes = 2;
    }
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1) {
        printf("bench_attention: skipped: no GPU\n");
        return 77;
    }
    struct cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("GPU: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    cudaStream_t s;
    cudaCheck(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    for (int k = 0; k < n_shapes; k++) bench_shape(&shapes[k], reps, s);
    cudaCheck(cudaStreamDestroy(s));
    return 0;
}
