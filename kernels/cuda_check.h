/* cuda_check.h - every CUDA, cuBLAS and NCCL call of ouroboros is wrapped
 * in one of these: a failure stops the job with the call, the file and
 * line, the error's name and this rank (through die(), common.h), never a
 * silent wrong result. Usable from C and CUDA C++. */
#ifndef OURO_CUDA_CHECK_H
#define OURO_CUDA_CHECK_H

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

void cuda_check_failed(cudaError_t err, const char *call, const char *file, int line);
void cublas_check_failed(int status, const char *call, const char *file, int line);

#ifdef __cplusplus
}
#endif

#define cudaCheck(call)                                                        \
    do {                                                                       \
        cudaError_t cuda_check_err_ = (call);                                  \
        if (cuda_check_err_ != cudaSuccess)                                    \
            cuda_check_failed(cuda_check_err_, #call, __FILE__, __LINE__);     \
    } while (0)

/* cuBLAS and cuBLASLt statuses are plain enums; 0 is success. */
#define cublasCheck(call)                                                      \
    do {                                                                       \
        int cublas_check_st_ = (int)(call);                                    \
        if (cublas_check_st_ != 0)                                             \
            cublas_check_failed(cublas_check_st_, #call, __FILE__, __LINE__);  \
    } while (0)

/* After a kernel launch: a bad configuration is reported here, with the
 * kernel's name, rather than by a later unrelated call. */
#define cudaCheckLaunch(name)                                                  \
    do {                                                                       \
        cudaError_t cuda_check_err_ = cudaGetLastError();                      \
        if (cuda_check_err_ != cudaSuccess)                                    \
            cuda_check_failed(cuda_check_err_, "launch of " name, __FILE__,   \
                              __LINE__);                                       \
    } while (0)

#endif
