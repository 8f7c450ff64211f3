/* device.c - see device.h. The only file that calls into kernels/. */
#include "device.h"

#ifdef HAVE_CUDA
#include "device_probe.h"
#endif

#ifndef OURO_CUDA_ARCHS
#define OURO_CUDA_ARCHS "unknown"
#endif

int device_built_with_cuda(void)
{
#ifdef HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

int device_built_with_nccl(void)
{
#ifdef HAVE_NCCL
    return 1;
#else
    return 0;
#endif
}

int device_gpu_count(void)
{
#ifdef HAVE_CUDA
    int n = cuda_device_count();
    return n > 0 ? n : 0;
#else
    return 0;
#endif
}

const char *device_build_summary(void)
{
#if defined(HAVE_CUDA) && defined(HAVE_NCCL)
    return "cpu+cuda(" OURO_CUDA_ARCHS ")+nccl";
#elif defined(HAVE_CUDA)
    return "cpu+cuda(" OURO_CUDA_ARCHS ")";
#else
    return "cpu";
#endif
}

int device_probe_fill(float value, int n, float *out)
{
#ifdef HAVE_CUDA
    if (n <= 0 || out == 0)
        return -1;
    return cuda_probe_fill(value, n, out) == 0 ? 0 : -1;
#else
    (void)value;
    (void)n;
    (void)out;
    return -1;
#endif
}
