/* device_probe.h - C interface to kernels/device_probe.cu.
 *
 * Only src/device.c calls these, and only in builds with HAVE_CUDA. Both
 * functions report "no GPU" as a plain return value and never abort:
 * a CUDA build must still run (on the CPU backend) on a machine without a
 * GPU or without the NVIDIA driver. */
#ifndef OURO_DEVICE_PROBE_H
#define OURO_DEVICE_PROBE_H

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices the runtime can see; 0 on any runtime error
 * (no driver, no device, driver too old for this runtime, ...). */
int cuda_device_count(void);

/* Fill n floats with value on device 0 using a kernel, copy them back to
 * out_host. Returns 0 on success, -1 on any CUDA error or bad argument. */
int cuda_probe_fill(float value, int n, float *out_host);

#ifdef __cplusplus
}
#endif

#endif /* OURO_DEVICE_PROBE_H */
