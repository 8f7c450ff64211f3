/* device.h - what compute devices this build and this machine offer.
 *
 * The rest of ouroboros asks here instead of calling CUDA directly, so the
 * same sources build with and without the CUDA backend (HAVE_CUDA). A CUDA
 * build on a machine without a usable GPU reports 0 GPUs and runs on the
 * CPU backend. */
#ifndef OURO_DEVICE_H
#define OURO_DEVICE_H

/* 1 when the CUDA backend was compiled in, else 0. */
int device_built_with_cuda(void);

/* 1 when NCCL was compiled in, else 0. */
int device_built_with_nccl(void);

/* Number of usable GPUs: 0 without the CUDA backend, or when the CUDA
 * runtime reports no device or any error (e.g. no driver). */
int device_gpu_count(void);

/* Short description of the build, e.g. "cpu" or
 * "cpu+cuda(sm_80,sm_90)+nccl". Static storage; do not free. */
const char *device_build_summary(void);

/* Runs a fill kernel on GPU 0 that writes value into n floats and copies
 * them to out. Returns 0 on success, -1 when there is no GPU, the build has
 * no CUDA backend, or any CUDA call failed. */
int device_probe_fill(float value, int n, float *out);

#endif /* OURO_DEVICE_H */
