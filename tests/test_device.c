/* test_device.c - the device layer reports a sane GPU count and, where a
 * GPU is present, a kernel launched through it computes the right values.
 *
 * Exit status follows the automake test protocol: 0 pass, 1 fail,
 * 77 skip (no CUDA backend built, or no GPU on this machine). */
#include <stdio.h>

#include "device.h"

#define PROBE_N 1000

int main(void)
{
    static float out[PROBE_N];
    const float value = 3.25f;
    int gpus = device_gpu_count();
    int bad = 0;

    printf("build: %s\n", device_build_summary());
    printf("gpus: %d\n", gpus);

    if (gpus < 0) {
        printf("FAIL: negative GPU count\n");
        return 1;
    }
    if (!device_built_with_cuda()) {
        if (gpus != 0) {
            printf("FAIL: CPU-only build reports %d GPUs\n", gpus);
            return 1;
        }
        if (device_probe_fill(value, PROBE_N, out) != -1) {
            printf("FAIL: CPU-only build ran the GPU probe\n");
            return 1;
        }
        printf("skipped: built without CUDA\n");
        return 77;
    }
    if (gpus == 0) {
        printf("skipped: no GPU\n");
        return 77;
    }

    for (int i = 0; i < PROBE_N; i++)
        out[i] = -1.0f;
    if (device_probe_fill(value, PROBE_N, out) != 0) {
        printf("FAIL: the probe kernel did not run on a machine with %d GPU(s)\n", gpus);
        return 1;
    }
    for (int i = 0; i < PROBE_N; i++) {
        if (out[i] != value) {
            if (bad < 5)
                printf("FAIL: out[%d] = %g, expected %g\n", i, (double)out[i], (double)value);
            bad++;
        }
    }
    if (bad) {
        printf("FAIL: %d of %d values wrong\n", bad, PROBE_N);
        return 1;
    }
    printf("ok: probe kernel filled %d values on GPU 0\n", PROBE_N);
    return 0;
}
