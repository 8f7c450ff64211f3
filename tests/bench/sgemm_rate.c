/* sgemm_rate.c - single-thread OpenBLAS sgemm rate, the "limit" of the CPU
 * benchmark. For each shape (M x K) * (K x N) it warms up, then reports the
 * best of several repetitions in GFLOP/s (2*M*N*K flops per call). The last
 * line, "limit_gflops <x>", is the best rate over all shapes.
 *
 *   cc -O2 sgemm_rate.c $(pkg-config --cflags --libs openblas) -o sgemm_rate
 *   OPENBLAS_NUM_THREADS=1 ./sgemm_rate [reps]
 */
#define _POSIX_C_SOURCE 199309L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void openblas_set_num_threads(int num_threads);
char *openblas_get_corename(void);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double rate(int M, int N, int K, int reps) {
    float *a = malloc(sizeof(float) * (size_t)M * K);
    float *b = malloc(sizeof(float) * (size_t)K * N);
    float *c = malloc(sizeof(float) * (size_t)M * N);
    if (!a || !b || !c) {
        fprintf(stderr, "sgemm_rate: out of memory\n");
        exit(1);
    }
    unsigned s = 12345u;
    for (size_t i = 0; i < (size_t)M * K; i++) {
        s = s * 1103515245u + 12345u;
        a[i] = (float)((s >> 9) & 0xffff) / 65536.0f - 0.5f;
    }
    for (size_t i = 0; i < (size_t)K * N; i++) {
        s = s * 1103515245u + 12345u;
        b[i] = (float)((s >> 9) & 0xffff) / 65536.0f - 0.5f;
    }
    double flops = 2.0 * M * N * K, best = 0.0;
    /* warm-up: at least ~0.2 s */
    double t0 = now_s();
    do {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f,
                    a, K, b, N, 0.0f, c, N);
    } while (now_s() - t0 < 0.2);
    for (int r = 0; r < reps; r++) {
        double t = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f,
                    a, K, b, N, 0.0f, c, N);
        double dt = now_s() - t;
        double g = flops / dt / 1e9;
        if (g > best) best = g;
    }
    free(a);
    free(b);
    free(c);
    return best;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 10;
    if (reps < 1) reps = 1;
    openblas_set_num_threads(1);
    static const int shapes[][3] = { /* M, N, K */
        {2048, 512, 512}, {2048, 1024, 1024}, {2048, 2048, 512},
        {2048, 512, 2048}};
    double best = 0.0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        int M = shapes[i][0], N = shapes[i][1], K = shapes[i][2];
        double g = rate(M, N, K, reps);
        printf("sgemm M=%d N=%d K=%d: %.2f GFLOP/s\n", M, N, K, g);
        if (g > best) best = g;
    }
    /* the kernels OpenBLAS runs: its own pick, or OPENBLAS_CORETYPE's */
    printf("openblas_core %s\n", openblas_get_corename());
    printf("limit_gflops %.3f\n", best);
    return 0;
}
