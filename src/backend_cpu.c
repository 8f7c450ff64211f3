/* backend_cpu.c - the CPU Backend: the reference. Every member is the
 * matching function of model.c, ops_cpu.c or optimizer.c on host memory,
 * so a run through this interface computes exactly what those functions
 * compute, bit for bit. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"

static float *cpu_alloc(Backend *be, size_t n) {
    (void)be;
    /* calloc: pages never written stay unmapped, which the parameter-shaped
     * buffers of a rank rely on (it only touches its own slices). */
    return xcalloc(n ? n : 1, sizeof(float));
}

static float *cpu_alloc_sparse(Backend *be, size_t n, const size_t *lo, const size_t *hi,
                               int k) {
    (void)lo;
    (void)hi;
    (void)k;
    return cpu_alloc(be, n);
}

static void cpu_release(Backend *be, float *p) {
    (void)be;
    free(p);
}

static void cpu_zero(Backend *be, float *p, size_t n) {
    (void)be;
    memset(p, 0, n * sizeof(float));
}

static void cpu_copy(Backend *be, float *dst, const float *src, size_t n) {
    (void)be;
    if (dst != src) memcpy(dst, src, n * sizeof(float));
}

static size_t cpu_peak_bytes(Backend *be) {
    (void)be;
    return 0; /* the process's peak RSS is the CPU's measure */
}

static BackendActs *cpu_acts_create(Backend *be, const ParamLayout *pl, const ModuleSpec *m,
                                    int B, int T) {
    (void)be;
    return (BackendActs *)module_acts_create(pl, m, B, T);
}

static void cpu_acts_free(Backend *be, BackendActs *a) {
    (void)be;
    module_acts_free((ModuleActs *)a);
}

static void cpu_acts_keep_weights(Backend *be, const ParamLayout *pl, BackendActs *a) {
    (void)be;
    module_acts_keep_weights(pl, (ModuleActs *)a);
}

static size_t cpu_acts_bytes(Backend *be, const BackendActs *a) {
    (void)be;
    return module_acts_bytes((const ModuleActs *)a);
}

static size_t cpu_acts_state_floats(Backend *be, const ParamLayout *pl, const BackendActs *a) {
    (void)be;
    return module_acts_state_floats(pl, (const ModuleActs *)a);
}

static void cpu_acts_export(Backend *be, const ParamLayout *pl, const BackendActs *a,
                            float *dst) {
    (void)be;
    module_acts_export(pl, (const ModuleActs *)a, dst);
}

static void cpu_acts_import(Backend *be, const ParamLayout *pl, BackendActs *a,
                            const float *src) {
    (void)be;
    module_acts_import(pl, (ModuleActs *)a, src);
}

static const float *cpu_forward(Backend *be, const ParamLayout *pl, const float *params,
                                const ModuleSpec *m, BackendActs *a, const int32_t *tokens,
                                const float *x_in, const int32_t *targets, int B, int T) {
    (void)be;
    return module_forward(pl, params, m, (ModuleActs *)a, tokens, x_in, targets, B, T);
}

static float cpu_loss(Backend *be, const BackendActs *a) {
    (void)be;
    return module_loss((const ModuleActs *)a);
}

static void cpu_backward(Backend *be, const ParamLayout *pl, const float *params,
                         float *grads, const ModuleSpec *m, BackendActs *a, const float *dout,
                         float loss_scale, float *dx_in) {
    (void)be;
    module_backward(pl, params, grads, m, (ModuleActs *)a, dout, loss_scale, dx_in);
}

static double cpu_sumsq(Backend *be, const float *g, size_t n) {
    (void)be;
    return grad_sumsq(g, 0, n);
}

static long cpu_first_nonfinite(Backend *be, const float *x, size_t n) {
    (void)be;
    return first_nonfinite(x, 0, n);
}

static void cpu_update_tensor(Backend *be, const ParamLayout *pl, const OptimizerSpec *o,
                              float *params, float *grads, float *m, float *v, int tensor,
                              float grad_scale, float lr, long t) {
    (void)be;
    optimizer_update(pl, o, params, grads, m, v, tensor, tensor + 1, grad_scale, lr, t);
}

static void cpu_params_loaded(Backend *be, const ParamLayout *pl, const float *params,
                              int first, int last) {
    (void)be;
    (void)pl;
    (void)params;
    (void)first;
    (void)last; /* nothing is derived from the parameters */
}

static void cpu_nothing(Backend *be) { (void)be; }

static void cpu_destroy(Backend *be) { free(be); }

Backend *backend_cpu_create(void) {
    Backend *be = xcalloc(1, sizeof *be);
    be->name = "cpu";
    be->host_memory = 1;
    be->device = -1;
    be->alloc = cpu_alloc;
    be->alloc_sparse = cpu_alloc_sparse;
    be->release = cpu_release;
    be->zero = cpu_zero;
    be->upload = cpu_copy;
    be->download = cpu_copy;
    be->peak_bytes = cpu_peak_bytes;
    be->acts_create = cpu_acts_create;
    be->acts_free = cpu_acts_free;
    be->acts_keep_weights = cpu_acts_keep_weights;
    be->acts_bytes = cpu_acts_bytes;
    be->acts_state_floats = cpu_acts_state_floats;
    be->acts_export = cpu_acts_export;
    be->acts_import = cpu_acts_import;
    be->forward = cpu_forward;
    be->loss = cpu_loss;
    be->backward = cpu_backward;
    be->sumsq = cpu_sumsq;
    be->first_nonfinite = cpu_first_nonfinite;
    be->update_tensor = cpu_update_tensor;
    be->params_loaded = cpu_params_loaded;
    be->synchronize = cpu_nothing;
    be->destroy = cpu_destroy;
    return be;
}

/* device=cpu-staged: the CPU's math behind the memory contract of a GPU.
 * Its buffers are plain host memory, but it says they are not, so the
 * executor takes every path a GPU takes (separate host copies of the
 * state, activations staged through host buffers, uploads after a
 * checkpoint is restored, downloads before one is written), and a test
 * can check those paths against device=cpu bit for bit. */
static Backend *backend_cpu_staged_create(void) {
    Backend *be = backend_cpu_create();
    be->name = "cpu-staged";
    be->host_memory = 0;
    return be;
}

Backend *backend_create(const Config *c, int rank, int local_rank) {
    int staged = strcmp(c->device, "cpu-staged") == 0;
    if (strcmp(c->device, "cpu") == 0 || staged) {
        if (strcmp(c->precision, "bf16") == 0)
            die("config: precision=bf16 needs device=cuda; the CPU backend computes in fp32 "
                "(leave precision=auto)");
        return staged ? backend_cpu_staged_create() : backend_cpu_create();
    }
#ifdef HAVE_CUDA
    return backend_cuda_create(c, rank, local_rank);
#else
    (void)rank;
    (void)local_rank;
    die("config: device=cuda, but this build has no CUDA backend (nvcc was not found at "
        "configure time); reconfigure with --with-cuda=DIR, or use device=cpu");
#endif
}
