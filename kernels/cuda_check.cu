/* cuda_check.cu - see cuda_check.h. */
#include "cuda_check.h"

extern "C" void die(const char *fmt, ...);

extern "C" void cuda_check_failed(cudaError_t err, const char *call, const char *file,
                                  int line) {
    die("CUDA error %s (%s) at %s:%d in %s", cudaGetErrorName(err), cudaGetErrorString(err),
        file, line, call);
}

extern "C" void cublas_check_failed(int status, const char *call, const char *file,
                                    int line) {
    die("cuBLAS error %d at %s:%d in %s", status, file, line, call);
}
