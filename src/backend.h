/* backend.h - where the math of a rank runs: the CPU (the reference,
 * ops_cpu.c through model.c) or a CUDA GPU (backend_cuda.c, kernels/).
 * `device=cpu|cuda` picks one; the executor (pipeline.c) only talks to
 * this interface, so every schedule runs on either.
 *
 * Memory. Parameters, gradients, optimizer state, activations and the
 * message buffers of a module live in the backend's memory: plain host
 * memory on the CPU (host_memory = 1, and every copy below is a memcpy
 * the executor skips), device memory on a GPU. Buffers are fp32 and use
 * the parameter layout of model.h: a parameter-shaped buffer is addressed
 * by the global offsets of the layout, and only the slices a rank owns are
 * ever touched.
 *
 * Modules. acts_* and forward/backward have exactly the meaning of the
 * module_* functions of model.h (the CPU backend is those functions). The
 * tokens and targets are always host arrays; x_in, dout, dx_in and the
 * returned output are backend memory ([B*T*C] fp32: the residual stream,
 * what travels between ranks, whatever the precision of the math).
 *
 * Precision. fp32 everywhere on the CPU. On a GPU, `precision=bf16` (the
 * default there) keeps fp32 master weights, gradients and optimizer state
 * and the fp32 residual stream, and runs matrix products on bf16 inputs
 * with fp32 accumulation; `precision=fp32` is for checking the GPU against
 * the CPU.
 *
 * Determinism. Every implementation repeats bit for bit for the same
 * inputs: no reduction depends on thread timing.
 */
#ifndef OURO_BACKEND_H
#define OURO_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "optimizer.h"
#include "settings.h"

typedef struct BackendActs BackendActs; /* a backend's ModuleActs */
typedef struct Backend Backend;

struct Backend {
    const char *name;   /* "cpu" or "cuda" */
    int host_memory;    /* 1: buffers are host memory, used directly */
    int device;         /* GPU ordinal, -1 on the CPU */
    void *stream;       /* the compute stream (cudaStream_t), NULL on the CPU */
    void *impl;

    /* ---- memory: n floats of the backend's memory ---- */
    float *(*alloc)(Backend *be, size_t n);          /* zeroed; dies naming the size */
    /* A parameter-shaped buffer: n floats addressed by the global offsets,
     * of which only the k ranges [lo[i], hi[i]) are ever touched, so only
     * those are backed by memory (zeroed). The CPU relies on untouched
     * pages staying unmapped; a GPU maps physical memory under the ranges
     * of one reserved address range. Freed with release. */
    float *(*alloc_sparse)(Backend *be, size_t n, const size_t *lo, const size_t *hi, int k);
    void (*release)(Backend *be, float *p);
    void (*zero)(Backend *be, float *p, size_t n);
    void (*upload)(Backend *be, float *dst, const float *host_src, size_t n);
    void (*download)(Backend *be, float *host_dst, const float *src, size_t n);
    /* Peak bytes this backend had allocated at once (device memory on a GPU). */
    size_t (*peak_bytes)(Backend *be);

    /* ---- modules (model.h) ---- */
    BackendActs *(*acts_create)(Backend *be, const ParamLayout *pl, const ModuleSpec *m,
                                int B, int T);
    void (*acts_free)(Backend *be, BackendActs *a);
    void (*acts_keep_weights)(Backend *be, const ParamLayout *pl, BackendActs *a);
    size_t (*acts_bytes)(Backend *be, const BackendActs *a);
    /* Forward state for checkpoints, in the CPU layout of model.c
     * (module_acts_state_floats), as host floats. A backend whose saved
     * state differs from the CPU's (a GPU keeps other intermediates) uses
     * its own count; checkpoints record the device they came from. */
    size_t (*acts_state_floats)(Backend *be, const ParamLayout *pl, const BackendActs *a);
    void (*acts_export)(Backend *be, const ParamLayout *pl, const BackendActs *a,
                        float *host_dst);
    void (*acts_import)(Backend *be, const ParamLayout *pl, BackendActs *a,
                        const float *host_src);
    const float *(*forward)(Backend *be, const ParamLayout *pl, const float *params,
                            const ModuleSpec *m, BackendActs *a, const int32_t *tokens,
                            const float *x_in, const int32_t *targets, int B, int T);
    float (*loss)(Backend *be, const BackendActs *a);
    void (*backward)(Backend *be, const ParamLayout *pl, const float *params, float *grads,
                     const ModuleSpec *m, BackendActs *a, const float *dout,
                     float loss_scale, float *dx_in);

    /* ---- the update, one tensor at a time ---- */
    /* Sum of squares of g[0, n), accumulated in double in a fixed order. */
    double (*sumsq)(Backend *be, const float *g, size_t n);
    /* Index of the first non-finite value of x[0, n), or -1. */
    long (*first_nonfinite)(Backend *be, const float *x, size_t n);
    /* g *= grad_scale, then optimizer_update of tensor `tensor` (optimizer.h)
     * with update count t, then g = 0. */
    void (*update_tensor)(Backend *be, const ParamLayout *pl, const OptimizerSpec *o,
                          float *params, float *grads, float *m, float *v, int tensor,
                          float grad_scale, float lr, long t);
    /* The parameters of tensors [first, last) were written from outside
     * (initialisation, a checkpoint): a backend refreshes what it derives
     * from them (the bf16 copies of a GPU). */
    void (*params_loaded)(Backend *be, const ParamLayout *pl, const float *params, int first,
                          int last);
    /* Waits for all queued work (timing, and before host code reads results). */
    void (*synchronize)(Backend *be);
    void (*destroy)(Backend *be);
};

/* The backend `c->device` names, for world rank `rank`, which is the
 * `local_rank`-th rank on its host (a GPU backend takes GPU local_rank
 * modulo the GPUs it sees, and prints the mapping). Dies with a message
 * naming the key when the build or the machine cannot provide it. */
Backend *backend_create(const Config *c, int rank, int local_rank);

Backend *backend_cpu_create(void);
#ifdef HAVE_CUDA
Backend *backend_cuda_create(const Config *c, int rank, int local_rank);
#endif

#endif
