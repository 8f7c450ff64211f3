/* device_probe.cu - smallest possible end-to-end check of the GPU path:
 * count devices, launch one kernel, copy its result back. Used by
 * src/device.c (and through it by tests/test_device) to tell a CUDA build
 * apart from a working GPU. */
#include <cuda_runtime.h>

#include "device_probe.h"

__global__ void fill_kernel(float *out, float value, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = value;
}

extern "C" {

int cuda_device_count(void)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky error, if any */
        return 0;
    }
    return count < 0 ? 0 : count;
}

int cuda_probe_fill(float value, int n, float *out_host)
{
    float *dev = NULL;
    int rc = -1;
    const int threads = 256;

    if (n <= 0 || out_host == NULL || cuda_device_count() <= 0)
        return -1;
    if (cudaSetDevice(0) != cudaSuccess)
        goto done;
    if (cudaMalloc((void **)&dev, (size_t)n * sizeof(float)) != cudaSuccess) {
        dev = NULL;
        goto done;
    }
    fill_kernel<<<(n + threads - 1) / threads, threads>>>(dev, value, n);
    if (cudaGetLastError() != cudaSuccess)
        goto done;
    if (cudaMemcpy(out_host, dev, (size_t)n * sizeof(float),
                   cudaMemcpyDeviceToHost) != cudaSuccess)
        goto done;
    rc = 0;
done:
    if (dev != NULL)
        cudaFree(dev);
    (void)cudaGetLastError();
    return rc;
}

} /* extern "C" */
