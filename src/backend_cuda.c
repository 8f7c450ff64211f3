/* backend_cuda.c - the Backend of backend.h on one CUDA GPU.
 *
 * The module forward and backward mirror model.c step for step (same
 * operations, same order, same accumulate-or-overwrite conventions), with
 * the kernels of kernels/kernels.h for every operation and cuBLASLt
 * (cuda_matmul.c) for the matrix products. Work is queued on one
 * non-blocking stream per Backend; host code waits only where it needs a
 * result (losses, reductions, downloads) or a host buffer back.
 *
 * Precision. fp32 master weights, gradients, optimizer state, residual
 * stream, LayerNorm statistics and losses. The activations that feed
 * matrix products (and the products' outputs, the attention output, the
 * GELU input and output, the logits) are in the "act dtype": bf16 under
 * precision=bf16 (and auto), fp32 under precision=fp32. In bf16 a product
 * needs bf16 weights: the backend keeps a bf16 mirror of a parameter
 * buffer, written when the parameters are loaded (params_loaded, k_cast)
 * and by every update (the optimizer kernels write it next to the fp32
 * weights), and tracks per tensor whether the mirror is current. A
 * forward whose weights have no current mirror (another buffer, or one
 * never announced) casts them into the activations' own bf16 copy.
 *
 * Serial emulation plays several ranks as threads of one process, each
 * with its own Backend, possibly on the same GPU: nothing here is global,
 * all state hangs off be->impl, and every entry point first makes the
 * Backend's GPU current (cudaSetDevice is cheap).
 *
 * Memory. Device allocations are recorded (pointer, size) so release can
 * free them and peak_bytes can report the high-water mark. Parameter-
 * shaped buffers (alloc_sparse) reserve the whole address range and map
 * physical memory only under the ranges a rank touches, with the CUDA
 * driver's virtual memory management. The driver functions are looked up
 * at run time (cudaGetDriverEntryPointByVersion) rather than linked
 * (-lcuda), so the program starts on machines with the toolkit but no
 * driver, and only a device=cuda run needs one.
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include "backend.h"
#include "common.h"
#include "cuda_check.h"
#include "cuda_matmul.h"
#include "kernels.h"

/* ================================================================ state */

/* The driver functions of the virtual memory management API, typed by
 * the ABI version requested (the _vNNNNN suffix). */
typedef struct {
    PFN_cuGetErrorName_v6000 get_error_name;
    PFN_cuDeviceGet_v2000 device_get;
    PFN_cuDeviceGetAttribute_v2000 device_get_attribute;
    PFN_cuMemGetAllocationGranularity_v10020 granularity;
    PFN_cuMemAddressReserve_v10020 address_reserve;
    PFN_cuMemAddressFree_v10020 address_free;
    PFN_cuMemCreate_v10020 create;
    PFN_cuMemRelease_v10020 release;
    PFN_cuMemMap_v10020 map;
    PFN_cuMemUnmap_v10020 unmap;
    PFN_cuMemSetAccess_v10020 set_access;
} DriverApi;

typedef struct {
    size_t lo, hi; /* bytes from the start of a reservation */
} ByteRange;

/* One device allocation. */
typedef struct {
    char *ptr;
    size_t bytes;    /* address range: reserved (sparse) or allocated (dense) */
    size_t physical; /* device memory behind it */
    int sparse;      /* 1: a reservation with mapped ranges */
    ByteRange *mapped;
    int n_mapped;
    /* the element ranges asked for (alloc_sparse), so a mirror of the
     * buffer can back the same elements; k = 0 for dense buffers */
    size_t *lo, *hi;
    int k;
} DevAlloc;

/* The bf16 copy of a fp32 parameter buffer. */
typedef struct {
    const float *params;
    void *bf16;    /* parameter-shaped, 2 bytes per parameter */
    char *current; /* per tensor: 1 when bf16 holds the rounded params */
    size_t *start; /* per tensor its offset, then n_params: [n_tensors + 1] */
    int n_tensors;
} Mirror;

typedef struct {
    int device;
    cudaStream_t stream;
    OuroDType dt; /* the act dtype */
    CudaMatmul *mm;
    DriverApi drv;
    int vmm;            /* 1: the GPU and driver support cuMemMap */
    size_t granularity; /* of physical allocations, bytes */
    int warned_dense;
    DevAlloc *allocs;
    int n_allocs, cap_allocs;
    Mirror *mirrors;
    int n_mirrors, cap_mirrors;
    size_t cur_bytes, peak_bytes;
    float *red_scratch; /* for k_sumsq / k_first_nonfinite */
    size_t red_scratch_floats;
} CudaImpl;

/* Saved forward state of one block (model.c BlockActs, flash-style: the
 * attention keeps each query row's log-sum-exp, not the T x T matrix). */
typedef struct {
    void *ln1;                  /* [N,C] act */
    float *ln1_mean, *ln1_rstd; /* [N] */
    void *qkv;                  /* [N,3C] act */
    void *atty;                 /* [N,C] act, attention output pre-projection */
    float *att_lse;             /* [B,NH,T] */
    float *res2;                /* [N,C] fp32, x + attention branch */
    void *ln2;                  /* [N,C] act */
    float *ln2_mean, *ln2_rstd;
    void *fch;      /* [N,4C] act, pre-GELU */
    void *fch_gelu; /* [N,4C] act */
    float *out;     /* [N,C] fp32, block output */
} GpuBlock;

struct BackendActs {
    ModuleSpec spec;
    int B, T;         /* capacity */
    int cur_B, cur_T; /* shape of the last forward */
    int C, NH, V;
    OuroDType dt;
    int have_targets;
    float loss;
    /* device memory, carved from one allocation */
    char *arena;
    size_t arena_bytes;
    int32_t *d_tokens, *d_targets; /* [N] */
    float *input;                  /* [N,C] module input */
    GpuBlock *blocks;
    void *lnf; /* head: [N,C] act */
    float *lnf_mean, *lnf_rstd;
    void *logits;  /* [N,V] act: logits, then dlogits */
    float *lse;    /* [N] */
    float *losses; /* [N] */
    /* backward scratch */
    float *d_res_a, *d_res_b; /* [N,C] fp32: residual gradient, ping-pong */
    float *d_res2;            /* [N,C] fp32: gradient of res2 */
    void *d_c;                /* [N,C] act: gradients of matmul inputs; forward scratch */
    void *d_wide;             /* [N,4C] act: d(fch), then d(qkv) */
    void *d_cast;             /* [N,C] act: a fp32 gradient rounded for a product (bf16) */
    float *scratch;           /* kernels' partial sums */
    size_t scratch_floats;
    int32_t *d_order, *d_seg_start, *d_seg_token; /* embedding backward groups */
    /* pinned host memory, carved from one allocation */
    char *host;
    int32_t *h_tokens, *h_targets; /* the host's copies of the last forward's */
    int32_t *h_order, *h_seg_start, *h_seg_token;
    float *h_losses;
    int32_t *h_count; /* [V+1] counting sort of the embedding backward */
    /* Recorded after the last copy out of the pinned buffers: the host
     * waits on it before writing them again. */
    cudaEvent_t staging;
    /* the weights of the last forward (keep_weights), parameter-shaped */
    int keep;
    float *w32;
    void *w16; /* bf16: the kept copy, or the cast of weights with no mirror */
};

/* The weights a module's math reads: fp32 (LayerNorm, biases, embedding)
 * and the act-dtype copy the matrix products read, both addressed by the
 * global offsets of the layout. */
typedef struct {
    const float *p32;
    const char *pm;
    size_t es; /* bytes per element of pm */
} Weights;

/* ================================================================ helpers */

static CudaImpl *enter(Backend *be) {
    CudaImpl *im = be->impl;
    cudaCheck(cudaSetDevice(im->device));
    return im;
}

static size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

static const char *dtype_name(OuroDType t) { return t == OURO_BF16 ? "bf16" : "fp32"; }

static void track_alloc(CudaImpl *im, size_t bytes) {
    im->cur_bytes += bytes;
    if (im->cur_bytes > im->peak_bytes) im->peak_bytes = im->cur_bytes;
}

static void *driver_symbol(const char *name, unsigned int version) {
    void *fn = NULL;
    enum cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    cudaError_t e = cudaGetDriverEntryPointByVersion(name, &fn, version, cudaEnableDefault,
                                                     &found);
    if (e != cudaSuccess || found != cudaDriverEntryPointSuccess) {
        (void)cudaGetLastError(); /* a failed lookup is an answer, not an error */
        return NULL;
    }
    return fn;
}

static void driver_load(DriverApi *d) {
    d->get_error_name = (PFN_cuGetErrorName_v6000)driver_symbol("cuGetErrorName", 6000);
    d->device_get = (PFN_cuDeviceGet_v2000)driver_symbol("cuDeviceGet", 2000);
    d->device_get_attribute =
        (PFN_cuDeviceGetAttribute_v2000)driver_symbol("cuDeviceGetAttribute", 2000);
    d->granularity = (PFN_cuMemGetAllocationGranularity_v10020)driver_symbol(
        "cuMemGetAllocationGranularity", 10020);
    d->address_reserve =
        (PFN_cuMemAddressReserve_v10020)driver_symbol("cuMemAddressReserve", 10020);
    d->address_free = (PFN_cuMemAddressFree_v10020)driver_symbol("cuMemAddressFree", 10020);
    d->create = (PFN_cuMemCreate_v10020)driver_symbol("cuMemCreate", 10020);
    d->release = (PFN_cuMemRelease_v10020)driver_symbol("cuMemRelease", 10020);
    d->map = (PFN_cuMemMap_v10020)driver_symbol("cuMemMap", 10020);
    d->unmap = (PFN_cuMemUnmap_v10020)driver_symbol("cuMemUnmap", 10020);
    d->set_access = (PFN_cuMemSetAccess_v10020)driver_symbol("cuMemSetAccess", 10020);
}

static int driver_has_vmm(const DriverApi *d) {
    return d->device_get && d->device_get_attribute && d->granularity && d->address_reserve &&
           d->address_free && d->create && d->release && d->map && d->unmap && d->set_access;
}

static void driver_check(const CudaImpl *im, CUresult r, const char *call, const char *what,
                         size_t bytes) {
    if (r == CUDA_SUCCESS) return;
    const char *name = NULL;
    if (im->drv.get_error_name) im->drv.get_error_name(r, &name);
    die("CUDA driver error %s (%d) in %s, for %s (%zu MiB) on GPU %d%s",
        name ? name : "unknown", (int)r, call, what, bytes >> 20, im->device,
        r == CUDA_ERROR_OUT_OF_MEMORY
            ? "; the GPU is full: reduce batch_size or the model, or spread it over more ranks"
            : "");
}

static void *pinned_alloc(size_t bytes, const char *what) {
    void *p = NULL;
    cudaError_t e = cudaMallocHost(&p, bytes ? bytes : 1);
    if (e != cudaSuccess)
        die("cannot allocate %zu MiB of pinned host memory for %s (%s)", bytes >> 20, what,
            cudaGetErrorString(e));
    memset(p, 0, bytes);
    return p;
}

/* ================================================================ memory */

static DevAlloc *record_alloc(CudaImpl *im, void *ptr, size_t bytes, size_t physical) {
    if (im->n_allocs == im->cap_allocs) {
        int cap = im->cap_allocs ? 2 * im->cap_allocs : 64;
        DevAlloc *grown = realloc(im->allocs, (size_t)cap * sizeof *grown);
        if (!grown) die("out of memory growing the device allocation table to %d", cap);
        im->allocs = grown;
        im->cap_allocs = cap;
    }
    DevAlloc *r = &im->allocs[im->n_allocs++];
    memset(r, 0, sizeof *r);
    r->ptr = ptr;
    r->bytes = bytes;
    r->physical = physical;
    track_alloc(im, physical);
    return r;
}

static DevAlloc *find_alloc(CudaImpl *im, const void *p) {
    for (int i = 0; i < im->n_allocs; i++)
        if (im->allocs[i].ptr == (const char *)p) return &im->allocs[i];
    return NULL;
}

static void remember_ranges(DevAlloc *r, const size_t *lo, const size_t *hi, int k) {
    r->k = k;
    r->lo = xmalloc((size_t)(k > 0 ? k : 1) * sizeof(size_t));
    r->hi = xmalloc((size_t)(k > 0 ? k : 1) * sizeof(size_t));
    for (int i = 0; i < k; i++) {
        r->lo[i] = lo[i];
        r->hi[i] = hi[i];
    }
}

/* bytes of zeroed device memory; dies naming `what` and the size. */
static void *dev_alloc_dense(CudaImpl *im, size_t bytes, const char *what) {
    void *p = NULL;
    size_t n = bytes ? bytes : 256;
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        (void)cudaMemGetInfo(&free_b, &total_b);
        die("device=cuda: cannot allocate %zu MiB on GPU %d for %s (%s; this rank holds %zu "
            "MiB, %zu of %zu MiB free); reduce batch_size or the model, or use more ranks",
            n >> 20, im->device, what, cudaGetErrorString(e), im->cur_bytes >> 20, free_b >> 20,
            total_b >> 20);
    }
    cudaCheck(cudaMemsetAsync(p, 0, n, im->stream));
    cudaCheck(cudaStreamSynchronize(im->stream));
    record_alloc(im, p, n, n);
    return p;
}

static int compare_ranges(const void *a, const void *b) {
    const ByteRange *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo ? 1 : 0;
}

/* The byte ranges to map for element ranges [lo, hi) of `elem` bytes:
 * rounded out to the granularity, clipped to the reservation, sorted
 * and merged where they overlap or touch. Returns the count. */
static int mapped_ranges(ByteRange *out, size_t elem, const size_t *lo, const size_t *hi,
                         int k, size_t g, size_t reserved) {
    int n = 0;
    for (int i = 0; i < k; i++) {
        if (hi[i] <= lo[i]) continue;
        size_t a = lo[i] * elem / g * g;
        size_t b = round_up(hi[i] * elem, g);
        if (b > reserved) b = reserved;
        if (a < b) out[n++] = (ByteRange){a, b};
    }
    qsort(out, (size_t)n, sizeof *out, compare_ranges);
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (m > 0 && out[i].lo <= out[m - 1].hi) {
            if (out[i].hi > out[m - 1].hi) out[m - 1].hi = out[i].hi;
        } else {
            out[m++] = out[i];
        }
    }
    return m;
}

/* A parameter-shaped buffer of total_bytes whose elements (of `elem`
 * bytes) [lo[i], hi[i]) are backed by zeroed device memory; the rest of
 * the range is reserved address space only. */
static void *dev_alloc_sparse(CudaImpl *im, size_t total_bytes, size_t elem, const size_t *lo,
                              const size_t *hi, int k, const char *what) {
    for (int i = 0; i < k; i++)
        if (lo[i] > hi[i] || hi[i] * elem > total_bytes)
            die("alloc_sparse: range %d [%zu, %zu) lies outside the %zu elements of %s", i,
                lo[i], hi[i], total_bytes / elem, what);
    if (!im->vmm) {
        if (!im->warned_dense) {
            warn("GPU %d: no virtual memory management (cuMemMap); parameter-shaped buffers "
                 "are allocated whole, which costs memory for slices this rank never touches",
                 im->device);
            im->warned_dense = 1;
        }
        void *p = dev_alloc_dense(im, total_bytes, what);
        remember_ranges(find_alloc(im, p), lo, hi, k);
        return p;
    }
    size_t g = im->granularity;
    size_t reserved = round_up(total_bytes ? total_bytes : 1, g);
    CUdeviceptr base = 0;
    driver_check(im, im->drv.address_reserve(&base, reserved, g, 0, 0), "cuMemAddressReserve",
                 what, reserved);
    ByteRange *ranges = xmalloc((size_t)(k > 0 ? k : 1) * sizeof *ranges);
    int n = mapped_ranges(ranges, elem, lo, hi, k, g, reserved);
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = im->device;
    CUmemAccessDesc access;
    memset(&access, 0, sizeof access);
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    size_t physical = 0;
    for (int i = 0; i < n; i++) {
        size_t len = ranges[i].hi - ranges[i].lo;
        CUmemGenericAllocationHandle h;
        driver_check(im, im->drv.create(&h, len, &prop, 0), "cuMemCreate", what, len);
        driver_check(im, im->drv.map(base + ranges[i].lo, len, 0, h, 0), "cuMemMap", what, len);
        /* the mapping keeps the memory alive; it is freed at unmap */
        driver_check(im, im->drv.release(h), "cuMemRelease", what, len);
        driver_check(im, im->drv.set_access(base + ranges[i].lo, len, &access, 1),
                     "cuMemSetAccess", what, len);
        cudaCheck(cudaMemsetAsync((char *)(uintptr_t)base + ranges[i].lo, 0, len, im->stream));
        physical += len;
    }
    cudaCheck(cudaStreamSynchronize(im->stream));
    DevAlloc *r = record_alloc(im, (char *)(uintptr_t)base, reserved, physical);
    r->sparse = 1;
    r->mapped = ranges;
    r->n_mapped = n;
    remember_ranges(r, lo, hi, k);
    return r->ptr;
}

static void dev_free(CudaImpl *im, void *p) {
    if (!p) return;
    DevAlloc *r = find_alloc(im, p);
    if (!r) die("backend release: %p is not a device buffer of this backend", p);
    if (r->sparse) {
        /* Unmapping does not wait for queued work that may still touch the
         * memory (this stream's, or a transport's). */
        cudaCheck(cudaDeviceSynchronize());
        CUdeviceptr base = (CUdeviceptr)(uintptr_t)r->ptr;
        for (int i = 0; i < r->n_mapped; i++)
            driver_check(im, im->drv.unmap(base + r->mapped[i].lo,
                                           r->mapped[i].hi - r->mapped[i].lo),
                         "cuMemUnmap", "a parameter-shaped buffer",
                         r->mapped[i].hi - r->mapped[i].lo);
        driver_check(im, im->drv.address_free(base, r->bytes), "cuMemAddressFree",
                     "a parameter-shaped buffer", r->bytes);
    } else {
        cudaCheck(cudaFree(r->ptr)); /* waits for queued work */
    }
    im->cur_bytes -= r->physical;
    free(r->mapped);
    free(r->lo);
    free(r->hi);
    *r = im->allocs[--im->n_allocs];
}

/* Scratch for the reductions over n floats (k_sumsq, k_first_nonfinite). */
static float *reduction_scratch(CudaImpl *im, size_t n) {
    size_t need = k_sumsq_scratch_floats(n);
    if (need > im->red_scratch_floats) {
        dev_free(im, im->red_scratch);
        im->red_scratch = dev_alloc_dense(im, need * sizeof(float), "reduction scratch");
        im->red_scratch_floats = need;
    }
    return im->red_scratch;
}

/* Sizes the reduction scratch for the largest tensor of the layout before
 * the first step, so the update never grows it: its cudaFree would wait
 * for the whole device, NCCL sends that wait for a peer's next step
 * included (a deadlock, see transport_nccl.c). */
static void reserve_reduction_scratch(CudaImpl *im, const ParamLayout *pl) {
    size_t most = 1;
    for (int i = 0; i < pl->n_tensors; i++)
        if (pl->tensors[i].numel > most) most = pl->tensors[i].numel;
    (void)reduction_scratch(im, most);
}

/* ---- the Backend's memory members ---- */

static float *cu_alloc(Backend *be, size_t n) {
    CudaImpl *im = enter(be);
    char what[64];
    snprintf(what, sizeof what, "a buffer of %zu floats", n);
    return dev_alloc_dense(im, n * sizeof(float), what);
}

static float *cu_alloc_sparse(Backend *be, size_t n, const size_t *lo, const size_t *hi,
                              int k) {
    CudaImpl *im = enter(be);
    return dev_alloc_sparse(im, n * sizeof(float), sizeof(float), lo, hi, k,
                            "a parameter-shaped buffer");
}

static void mirror_drop(CudaImpl *im, const float *params);
static void mirror_invalidate(CudaImpl *im, const float *p, size_t n);

static void cu_release(Backend *be, float *p) {
    CudaImpl *im = enter(be);
    if (!p) return;
    mirror_drop(im, p);
    dev_free(im, p);
}

static void cu_zero(Backend *be, float *p, size_t n) {
    CudaImpl *im = enter(be);
    if (!n) return;
    mirror_invalidate(im, p, n);
    cudaCheck(cudaMemsetAsync(p, 0, n * sizeof(float), im->stream));
}

/* Returns once the host buffer has been read: the caller reuses it. */
static void cu_upload(Backend *be, float *dst, const float *host_src, size_t n) {
    CudaImpl *im = enter(be);
    if (!n) return;
    mirror_invalidate(im, dst, n);
    cudaCheck(cudaMemcpyAsync(dst, host_src, n * sizeof(float), cudaMemcpyHostToDevice,
                              im->stream));
    cudaCheck(cudaStreamSynchronize(im->stream));
}

static void cu_download(Backend *be, float *host_dst, const float *src, size_t n) {
    CudaImpl *im = enter(be);
    if (!n) return;
    cudaCheck(cudaMemcpyAsync(host_dst, src, n * sizeof(float), cudaMemcpyDeviceToHost,
                              im->stream));
    cudaCheck(cudaStreamSynchronize(im->stream));
}

static size_t cu_peak_bytes(Backend *be) { return ((CudaImpl *)be->impl)->peak_bytes; }

/* ================================================================ weights */

/* The same, as ranges [lo, hi) for alloc_sparse. */
static int weight_ranges(const ParamLayout *pl, const ModuleSpec *m, size_t lo[2],
                         size_t hi[2]) {
    size_t n[2];
    int k = module_weight_spans(pl, m, lo, n);
    for (int i = 0; i < k; i++) hi[i] = lo[i] + n[i];
    return k;
}

static Mirror *mirror_find(CudaImpl *im, const float *params) {
    for (int i = 0; i < im->n_mirrors; i++)
        if (im->mirrors[i].params == params) return &im->mirrors[i];
    return NULL;
}

/* The mirror of `params`, made on first use; NULL when params is not the
 * start of one of this backend's buffers (nothing to mirror it by). */
static Mirror *mirror_get(CudaImpl *im, const ParamLayout *pl, const float *params) {
    Mirror *mr = mirror_find(im, params);
    if (mr) return mr;
    DevAlloc *r = find_alloc(im, params);
    if (!r) return NULL;
    if (r->bytes < pl->n_params * sizeof(float))
        die("backend: a parameter buffer of %zu bytes is smaller than the %zu parameters",
            r->bytes, pl->n_params);
    /* the bf16 copy backs the same elements as the fp32 buffer */
    void *bf16;
    if (r->k > 0) {
        /* copy the ranges first: allocating may move the table */
        int k = r->k;
        size_t *lo = xmalloc((size_t)k * sizeof(size_t));
        size_t *hi = xmalloc((size_t)k * sizeof(size_t));
        memcpy(lo, r->lo, (size_t)k * sizeof(size_t));
        memcpy(hi, r->hi, (size_t)k * sizeof(size_t));
        bf16 = dev_alloc_sparse(im, pl->n_params * 2, 2, lo, hi, k, "the bf16 weights");
        free(lo);
        free(hi);
    } else {
        bf16 = dev_alloc_dense(im, pl->n_params * 2, "the bf16 weights");
    }
    if (im->n_mirrors == im->cap_mirrors) {
        int cap = im->cap_mirrors ? 2 * im->cap_mirrors : 4;
        Mirror *grown = realloc(im->mirrors, (size_t)cap * sizeof *grown);
        if (!grown) die("out of memory growing the bf16 mirror table to %d", cap);
        im->mirrors = grown;
        im->cap_mirrors = cap;
    }
    mr = &im->mirrors[im->n_mirrors++];
    mr->params = params;
    mr->bf16 = bf16;
    mr->n_tensors = pl->n_tensors;
    mr->current = xcalloc((size_t)pl->n_tensors, 1);
    mr->start = xmalloc(((size_t)pl->n_tensors + 1) * sizeof(size_t));
    for (int i = 0; i < pl->n_tensors; i++) mr->start[i] = pl->tensors[i].offset;
    mr->start[pl->n_tensors] = pl->n_params;
    return mr;
}

/* Floats [p, p + n) were written other than by update_tensor (upload,
 * zero): the mirrored tensors they touch are no longer current, so bf16
 * forwards cast them afresh until params_loaded refreshes the mirror. */
static void mirror_invalidate(CudaImpl *im, const float *p, size_t n) {
    for (int m = 0; m < im->n_mirrors; m++) {
        Mirror *mr = &im->mirrors[m];
        uintptr_t at = (uintptr_t)p, base = (uintptr_t)mr->params;
        size_t len = mr->start[mr->n_tensors];
        if (at < base || at >= base + len * sizeof(float)) continue;
        size_t e0 = (at - base) / sizeof(float), e1 = e0 + n;
        for (int i = 0; i < mr->n_tensors; i++)
            if (mr->start[i] < e1 && mr->start[i + 1] > e0) mr->current[i] = 0;
    }
}

static void mirror_drop(CudaImpl *im, const float *params) {
    Mirror *mr = mirror_find(im, params);
    if (!mr) return;
    dev_free(im, mr->bf16);
    free(mr->current);
    free(mr->start);
    *mr = im->mirrors[--im->n_mirrors];
}

/* 1 when the mirror is current for every tensor the module reads. */
static int mirror_covers(const ParamLayout *pl, const ModuleSpec *m, const Mirror *mr) {
    int first, last;
    module_tensor_range(pl, m, &first, &last);
    if (last > mr->n_tensors) return 0;
    for (int i = first; i < last; i++)
        if (!mr->current[i]) return 0;
    if (m->has_head && !m->has_embed && !mr->current[tensor_index_wte()]) return 0;
    return 1;
}

static void copy_spans(CudaImpl *im, void *dst, const void *src, size_t es, const size_t *lo,
                       const size_t *n, int k) {
    for (int i = 0; i < k; i++)
        cudaCheck(cudaMemcpyAsync((char *)dst + lo[i] * es, (const char *)src + lo[i] * es,
                                  n[i] * es, cudaMemcpyDeviceToDevice, im->stream));
}

static void cast_spans(CudaImpl *im, void *dst16, const float *src, const size_t *lo,
                       const size_t *n, int k) {
    for (int i = 0; i < k; i++)
        k_cast((char *)dst16 + lo[i] * 2, OURO_BF16, src + lo[i], OURO_F32, n[i], im->stream);
}

static void ensure_w16(CudaImpl *im, const ParamLayout *pl, BackendActs *a) {
    if (a->w16) return;
    size_t lo[2], hi[2];
    int k = weight_ranges(pl, &a->spec, lo, hi);
    a->w16 = dev_alloc_sparse(im, pl->n_params * 2, 2, lo, hi, k, "the module's bf16 weights");
}

/* The weights of a forward. With keep_weights the fp32 slices (and in
 * bf16 their rounded copy) are saved into the activations for the
 * backward, as model.c does. */
static Weights forward_weights(CudaImpl *im, const ParamLayout *pl, const ModuleSpec *m,
                               BackendActs *a, const float *params) {
    Weights w = {params, (const char *)params, sizeof(float)};
    size_t lo[2], n[2];
    int k = module_weight_spans(pl, m, lo, n);
    if (a->keep) copy_spans(im, a->w32, params, sizeof(float), lo, n, k);
    if (im->dt == OURO_F32) return w;
    w.es = 2;
    Mirror *mr = mirror_find(im, params);
    int current = mr && mirror_covers(pl, m, mr);
    if (current && !a->keep) {
        w.pm = mr->bf16;
        return w;
    }
    ensure_w16(im, pl, a);
    if (current)
        copy_spans(im, a->w16, mr->bf16, 2, lo, n, k);
    else
        cast_spans(im, a->w16, params, lo, n, k);
    w.pm = a->w16;
    return w;
}

/* The weights of a backward: the kept copy, or those it is given. */
static Weights backward_weights(CudaImpl *im, const ParamLayout *pl, const ModuleSpec *m,
                                BackendActs *a, const float *params) {
    size_t es = im->dt == OURO_BF16 ? 2 : sizeof(float);
    if (a->keep) {
        Weights w = {a->w32, im->dt == OURO_BF16 ? (const char *)a->w16 : (const char *)a->w32,
                     es};
        return w;
    }
    Weights w = {params, (const char *)params, es};
    if (im->dt == OURO_F32) return w;
    Mirror *mr = mirror_find(im, params);
    if (mr && mirror_covers(pl, m, mr)) {
        w.pm = mr->bf16;
        return w;
    }
    size_t lo[2], n[2];
    int k = module_weight_spans(pl, m, lo, n);
    ensure_w16(im, pl, a);
    cast_spans(im, a->w16, params, lo, n, k);
    w.pm = a->w16;
    return w;
}

static const float *wf(const ParamLayout *pl, const Weights *w, int tensor) {
    return w->p32 + pl->tensors[tensor].offset;
}

static const void *wm(const ParamLayout *pl, const Weights *w, int tensor) {
    return w->pm + pl->tensors[tensor].offset * w->es;
}

static float *gp(const ParamLayout *pl, float *grads, int tensor) {
    return grads + pl->tensors[tensor].offset;
}

/* ================================================================ activations */

typedef struct {
    char *base; /* NULL: only measure */
    size_t off;
} Carver;

/* 256-byte aligned pieces: what cuBLASLt's fastest algorithms want. */
static void *carve(Carver *cv, size_t bytes) {
    size_t at = round_up(cv->off, 256);
    cv->off = at + bytes;
    return cv->base ? cv->base + at : NULL;
}

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

/* Kernel scratch for a batch of B x T: the largest any backward kernel
 * of the module asks for. */
static size_t kernel_scratch_floats(const BackendActs *a, int B, int T) {
    int N = B * T, C = a->C;
    size_t s = k_layernorm_backward_scratch_floats(N, C);
    if (a->spec.block_hi > a->spec.block_lo) {
        s = max_size(s, k_bias_backward_scratch_floats(N, C));
        s = max_size(s, k_bias_backward_scratch_floats(N, 3 * C));
        s = max_size(s, k_bias_backward_scratch_floats(N, 4 * C));
        s = max_size(s, k_attention_backward_scratch_floats(B, T, C, a->NH));
    }
    return s;
}

/* Assigns every device and pinned host array of the activations from the
 * two carvers (run once to measure, once to place). */
static void acts_carve(BackendActs *a, Carver *d, Carver *h) {
    size_t N = (size_t)a->B * a->T, C = (size_t)a->C, V = (size_t)a->V;
    size_t NC = N * C, es = ouro_dtype_size(a->dt);
    int nb = a->spec.block_hi - a->spec.block_lo;
    a->d_tokens = carve(d, N * sizeof(int32_t));
    a->d_targets = carve(d, N * sizeof(int32_t));
    a->input = carve(d, NC * sizeof(float));
    for (int i = 0; i < nb; i++) {
        GpuBlock *k = &a->blocks[i];
        k->ln1 = carve(d, NC * es);
        k->ln1_mean = carve(d, N * sizeof(float));
        k->ln1_rstd = carve(d, N * sizeof(float));
        k->qkv = carve(d, 3 * NC * es);
        k->atty = carve(d, NC * es);
        k->att_lse = carve(d, (size_t)a->B * a->NH * a->T * sizeof(float));
        k->res2 = carve(d, NC * sizeof(float));
        k->ln2 = carve(d, NC * es);
        k->ln2_mean = carve(d, N * sizeof(float));
        k->ln2_rstd = carve(d, N * sizeof(float));
        k->fch = carve(d, 4 * NC * es);
        k->fch_gelu = carve(d, 4 * NC * es);
        k->out = carve(d, NC * sizeof(float));
    }
    if (a->spec.has_head) {
        a->lnf = carve(d, NC * es);
        a->lnf_mean = carve(d, N * sizeof(float));
        a->lnf_rstd = carve(d, N * sizeof(float));
        a->logits = carve(d, N * V * es);
        a->lse = carve(d, N * sizeof(float));
        a->losses = carve(d, N * sizeof(float));
    }
    a->d_res_a = carve(d, NC * sizeof(float));
    a->d_res_b = carve(d, NC * sizeof(float));
    if (nb > 0 || a->spec.has_head) a->d_c = carve(d, NC * es);
    if (nb > 0) {
        a->d_res2 = carve(d, NC * sizeof(float));
        a->d_wide = carve(d, 4 * NC * es);
        if (a->dt == OURO_BF16) a->d_cast = carve(d, NC * es);
    }
    a->scratch = carve(d, a->scratch_floats * sizeof(float));
    if (a->spec.has_embed) {
        a->d_order = carve(d, N * sizeof(int32_t));
        a->d_seg_start = carve(d, (N + 1) * sizeof(int32_t));
        a->d_seg_token = carve(d, N * sizeof(int32_t));
    }
    a->h_tokens = carve(h, N * sizeof(int32_t));
    a->h_targets = carve(h, N * sizeof(int32_t));
    a->h_losses = carve(h, N * sizeof(float));
    if (a->spec.has_embed) {
        a->h_order = carve(h, N * sizeof(int32_t));
        a->h_seg_start = carve(h, (N + 1) * sizeof(int32_t));
        a->h_seg_token = carve(h, N * sizeof(int32_t));
    }
}

static BackendActs *cu_acts_create(Backend *be, const ParamLayout *pl, const ModuleSpec *m,
                                   int B, int T) {
    CudaImpl *im = enter(be);
    const GPTConfig *cfg = &pl->cfg;
    int nb = m->block_hi - m->block_lo;
    if (nb > 0 && !k_attention_supported(cfg->n_embd / cfg->n_head))
        die("device=cuda: the attention kernels do not handle heads of %d channels "
            "(n_embd=%d / n_head=%d); pick n_embd and n_head for another head size",
            cfg->n_embd / cfg->n_head, cfg->n_embd, cfg->n_head);
    if (B < 1 || T < 1) die("backend acts_create: empty batch %dx%d", B, T);
    BackendActs *a = xcalloc(1, sizeof *a);
    a->spec = *m;
    a->B = B;
    a->T = T;
    a->C = cfg->n_embd;
    a->NH = cfg->n_head;
    a->V = cfg->vocab_size;
    a->dt = im->dt;
    a->blocks = xcalloc(nb > 0 ? (size_t)nb : 1, sizeof(GpuBlock));
    a->scratch_floats = kernel_scratch_floats(a, B, T);
    Carver d = {NULL, 0}, h = {NULL, 0};
    acts_carve(a, &d, &h);
    a->arena_bytes = d.off;
    a->arena = dev_alloc_dense(im, d.off, "activations");
    a->host = pinned_alloc(h.off, "the activations' host buffers");
    d = (Carver){a->arena, 0};
    h = (Carver){a->host, 0};
    acts_carve(a, &d, &h);
    if (m->has_embed) a->h_count = xcalloc((size_t)a->V + 1, sizeof(int32_t));
    cudaCheck(cudaEventCreateWithFlags(&a->staging, cudaEventDisableTiming));
    reserve_reduction_scratch(im, pl);
    return a;
}

static void cu_acts_free(Backend *be, BackendActs *a) {
    CudaImpl *im = enter(be);
    if (!a) return;
    cudaCheck(cudaStreamSynchronize(im->stream));
    dev_free(im, a->arena);
    dev_free(im, a->w32);
    dev_free(im, a->w16);
    cudaCheck(cudaFreeHost(a->host));
    cudaCheck(cudaEventDestroy(a->staging));
    free(a->h_count);
    free(a->blocks);
    free(a);
}

static void cu_acts_keep_weights(Backend *be, const ParamLayout *pl, BackendActs *a) {
    CudaImpl *im = enter(be);
    if (a->keep) return;
    size_t lo[2], hi[2];
    int k = weight_ranges(pl, &a->spec, lo, hi);
    a->w32 = dev_alloc_sparse(im, pl->n_params * sizeof(float), sizeof(float), lo, hi, k,
                              "the module's kept weights");
    if (im->dt == OURO_BF16) ensure_w16(im, pl, a);
    a->keep = 1;
}

static size_t cu_acts_bytes(Backend *be, const BackendActs *a) {
    CudaImpl *im = be->impl;
    size_t bytes = a->arena_bytes;
    const void *kept[2] = {a->w32, a->w16};
    for (int i = 0; i < 2; i++) {
        DevAlloc *r = kept[i] ? find_alloc(im, kept[i]) : NULL;
        if (r) bytes += r->physical;
    }
    return bytes;
}

/* ---- the forward state, for checkpoints ----
 *
 * The GPU's own layout, not the CPU's (model.c): after the same four
 * header words (cur_B, cur_T, have_targets as int32, the loss), the
 * device arrays a later backward reads, each padded to whole floats:
 * tokens, targets, the module input, per block ln1, its mean and rstd,
 * qkv, atty, the attention's log-sum-exp, res2, ln2 and its statistics,
 * fch, fch_gelu, out; for a head lnf and its statistics, the logits, lse,
 * losses; with kept weights their fp32 slices, then (bf16) their bf16
 * slices. Act-dtype arrays are stored in the act dtype (bf16: two values
 * per float), so a state saved under one precision loads only under the
 * same precision and on a GPU; the count (acts_state_floats) differs from
 * the CPU's and between precisions. */

typedef struct {
    void *p;
    size_t bytes;
} DevSpan;

enum { ACTS_STATE_MAX_EXTRA = 3 + 6 + 4 };

static int acts_state_spans(const ParamLayout *pl, const BackendActs *a, DevSpan *s) {
    size_t N = (size_t)a->B * a->T, C = (size_t)a->C, V = (size_t)a->V;
    size_t NC = N * C, es = ouro_dtype_size(a->dt);
    int n = 0;
#define SPAN(ptr, count) (s[n].p = (void *)(ptr), s[n].bytes = (count), n++)
    SPAN(a->d_tokens, N * sizeof(int32_t));
    SPAN(a->d_targets, N * sizeof(int32_t));
    SPAN(a->input, NC * sizeof(float));
    for (int i = 0; i < a->spec.block_hi - a->spec.block_lo; i++) {
        const GpuBlock *k = &a->blocks[i];
        SPAN(k->ln1, NC * es);
        SPAN(k->ln1_mean, N * sizeof(float));
        SPAN(k->ln1_rstd, N * sizeof(float));
        SPAN(k->qkv, 3 * NC * es);
        SPAN(k->atty, NC * es);
        SPAN(k->att_lse, (size_t)a->B * a->NH * a->T * sizeof(float));
        SPAN(k->res2, NC * sizeof(float));
        SPAN(k->ln2, NC * es);
        SPAN(k->ln2_mean, N * sizeof(float));
        SPAN(k->ln2_rstd, N * sizeof(float));
        SPAN(k->fch, 4 * NC * es);
        SPAN(k->fch_gelu, 4 * NC * es);
        SPAN(k->out, NC * sizeof(float));
    }
    if (a->spec.has_head) {
        SPAN(a->lnf, NC * es);
        SPAN(a->lnf_mean, N * sizeof(float));
        SPAN(a->lnf_rstd, N * sizeof(float));
        SPAN(a->logits, N * V * es);
        SPAN(a->lse, N * sizeof(float));
        SPAN(a->losses, N * sizeof(float));
    }
    if (a->keep) {
        size_t lo[2], cnt[2];
        int k = module_weight_spans(pl, &a->spec, lo, cnt);
        for (int i = 0; i < k; i++) SPAN(a->w32 + lo[i], cnt[i] * sizeof(float));
        if (a->dt == OURO_BF16)
            for (int i = 0; i < k; i++) SPAN((char *)a->w16 + lo[i] * 2, cnt[i] * 2);
    }
#undef SPAN
    return n;
}

static DevSpan *state_spans_alloc(const BackendActs *a) {
    int nb = a->spec.block_hi - a->spec.block_lo;
    return xmalloc((size_t)(13 * nb + ACTS_STATE_MAX_EXTRA) * sizeof(DevSpan));
}

static size_t span_floats(size_t bytes) { return (bytes + 3) / 4; }

static size_t cu_acts_state_floats(Backend *be, const ParamLayout *pl, const BackendActs *a) {
    (void)be;
    DevSpan *s = state_spans_alloc(a);
    int n = acts_state_spans(pl, a, s);
    size_t total = ACTS_STATE_HEADER;
    for (int i = 0; i < n; i++) total += span_floats(s[i].bytes);
    free(s);
    return total;
}

static void cu_acts_export(Backend *be, const ParamLayout *pl, const BackendActs *a,
                           float *host_dst) {
    CudaImpl *im = enter(be);
    acts_state_header_write(host_dst, (ActsStateHeader){a->cur_B, a->cur_T, a->have_targets,
                                                        a->loss});
    float *dst = host_dst + ACTS_STATE_HEADER;
    DevSpan *s = state_spans_alloc(a);
    int n = acts_state_spans(pl, a, s);
    for (int i = 0; i < n; i++) {
        size_t whole = span_floats(s[i].bytes) * 4;
        if (whole > s[i].bytes) memset((char *)dst + s[i].bytes, 0, whole - s[i].bytes);
        cudaCheck(cudaMemcpyAsync(dst, s[i].p, s[i].bytes, cudaMemcpyDeviceToHost, im->stream));
        dst += whole / 4;
    }
    free(s);
    cudaCheck(cudaStreamSynchronize(im->stream));
}

static void cu_acts_import(Backend *be, const ParamLayout *pl, BackendActs *a,
                           const float *host_src) {
    CudaImpl *im = enter(be);
    ActsStateHeader h = acts_state_header_read(host_src, a->B, a->T, "backend acts_import");
    a->cur_B = h.B;
    a->cur_T = h.T;
    a->have_targets = h.have_targets;
    a->loss = h.loss;
    const float *src = host_src + ACTS_STATE_HEADER;
    /* tokens and targets lead: keep the host's copies too (the embedding
     * backward groups positions by token on the host) */
    size_t N = (size_t)a->B * a->T;
    cudaCheck(cudaEventSynchronize(a->staging));
    memcpy(a->h_tokens, src, N * sizeof(int32_t));
    memcpy(a->h_targets, src + N, N * sizeof(int32_t));
    DevSpan *s = state_spans_alloc(a);
    int n = acts_state_spans(pl, a, s);
    for (int i = 0; i < n; i++) {
        cudaCheck(cudaMemcpyAsync(s[i].p, src, s[i].bytes, cudaMemcpyHostToDevice, im->stream));
        src += span_floats(s[i].bytes);
    }
    free(s);
    cudaCheck(cudaStreamSynchronize(im->stream));
}

/* ================================================================ forward */

static float *kernel_scratch(const BackendActs *a, size_t need, const char *kernel) {
    if (need > a->scratch_floats)
        die("backend: %s needs %zu scratch floats, more than the %zu sized at acts_create",
            kernel, need, a->scratch_floats);
    return a->scratch;
}

static void block_forward(CudaImpl *im, const ParamLayout *pl, const Weights *w, int l,
                          BackendActs *a, GpuBlock *k, const float *x) {
    int C = a->C, NH = a->NH, B = a->cur_B, T = a->cur_T, N = B * T;
    OuroDType dt = a->dt;
    cudaStream_t s = im->stream;
#define BW(which) tensor_index_block(l, which)
    k_layernorm_forward(k->ln1, dt, k->ln1_mean, k->ln1_rstd, x, wf(pl, w, BW(BT_LN1_W)),
                        wf(pl, w, BW(BT_LN1_B)), N, C, s);
    cuda_matmul_forward(im->mm, k->qkv, k->ln1, wm(pl, w, BW(BT_ATTN_W)),
                        wf(pl, w, BW(BT_ATTN_B)), dt, N, C, 3 * C);
    k_attention_forward(k->atty, k->att_lse, k->qkv, dt, B, T, C, NH, s);
    /* the projection's output is scratch: res2 = x + proj */
    cuda_matmul_forward(im->mm, a->d_c, k->atty, wm(pl, w, BW(BT_ATTNPROJ_W)),
                        wf(pl, w, BW(BT_ATTNPROJ_B)), dt, N, C, C);
    k_residual_layernorm_forward(k->res2, k->ln2, dt, k->ln2_mean, k->ln2_rstd, x, a->d_c, dt,
                                 wf(pl, w, BW(BT_LN2_W)), wf(pl, w, BW(BT_LN2_B)), N, C, s);
    cuda_matmul_forward_gelu(im->mm, k->fch_gelu, k->fch, k->ln2, wm(pl, w, BW(BT_FC_W)),
                             wf(pl, w, BW(BT_FC_B)), dt, N, C, 4 * C);
    cuda_matmul_forward(im->mm, a->d_c, k->fch_gelu, wm(pl, w, BW(BT_FCPROJ_W)),
                        wf(pl, w, BW(BT_FCPROJ_B)), dt, N, 4 * C, C);
    k_residual_forward(k->out, k->res2, a->d_c, dt, (size_t)N * C, s);
#undef BW
}

/* The head: lnf, the tied projection, the cross-entropy; the mean loss
 * is summed on the host in double, in index order, as model.c does. */
static void head_forward(CudaImpl *im, const ParamLayout *pl, const Weights *w, BackendActs *a,
                         const float *x, int with_targets) {
    int C = a->C, V = a->V, N = a->cur_B * a->cur_T;
    OuroDType dt = a->dt;
    int lw = tensor_index_lnf_w(pl);
    k_layernorm_forward(a->lnf, dt, a->lnf_mean, a->lnf_rstd, x, wf(pl, w, lw),
                        wf(pl, w, lw + 1), N, C, im->stream);
    cuda_logits_forward(im->mm, a->logits, a->lnf, wm(pl, w, tensor_index_wte()), dt, N, C, V);
    a->have_targets = with_targets;
    k_crossentropy_forward(a->losses, a->lse, a->logits, dt, with_targets ? a->d_targets : NULL,
                           N, V, im->stream);
    if (!with_targets) return;
    cudaCheck(cudaMemcpyAsync(a->h_losses, a->losses, (size_t)N * sizeof(float),
                              cudaMemcpyDeviceToHost, im->stream));
    cudaCheck(cudaStreamSynchronize(im->stream));
    double sum = 0.0;
    for (int i = 0; i < N; i++) sum += a->h_losses[i];
    a->loss = (float)(sum / (double)N);
}

static void check_tokens(const int32_t *tok, size_t n, int V, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (tok[i] < 0 || tok[i] >= V)
            die("backend forward: %s %d at position %zu is outside the vocabulary of %d", what,
                tok[i], i, V);
}

static const float *cu_forward(Backend *be, const ParamLayout *pl, const float *params,
                               const ModuleSpec *m, BackendActs *a, const int32_t *tokens,
                               const float *x_in, const int32_t *targets, int B, int T) {
    CudaImpl *im = enter(be);
    if (B > a->B || T > a->T || B < 1 || T < 1)
        die("backend forward: batch %dx%d does not fit the %dx%d the activations were sized "
            "for", B, T, a->B, a->T);
    size_t N = (size_t)B * T, NC = N * (size_t)a->C;
    cudaStream_t s = im->stream;
    a->cur_B = B;
    a->cur_T = T;
    Weights w = forward_weights(im, pl, m, a, params);
    /* the pinned buffers may still be feeding the previous forward's copies */
    cudaCheck(cudaEventSynchronize(a->staging));
    if (m->has_embed) {
        if (!tokens) die("backend forward: a module with the embedding needs tokens");
        if (T > pl->cfg.block_size)
            die("backend forward: T=%d exceeds block_size=%d (the rows of wpe)", T,
                pl->cfg.block_size);
        check_tokens(tokens, N, a->V, "token");
        memcpy(a->h_tokens, tokens, N * sizeof(int32_t));
        cudaCheck(cudaMemcpyAsync(a->d_tokens, a->h_tokens, N * sizeof(int32_t),
                                  cudaMemcpyHostToDevice, s));
        k_embedding_forward(a->input, a->d_tokens, wf(pl, &w, tensor_index_wte()),
                            wf(pl, &w, tensor_index_wpe()), B, T, a->C, s);
    } else {
        if (!x_in) die("backend forward: a module without the embedding needs x_in");
        if (x_in != a->input)
            cudaCheck(cudaMemcpyAsync(a->input, x_in, NC * sizeof(float),
                                      cudaMemcpyDeviceToDevice, s));
    }
    if (m->has_head && targets) {
        check_tokens(targets, N, a->V, "target");
        memcpy(a->h_targets, targets, N * sizeof(int32_t));
        cudaCheck(cudaMemcpyAsync(a->d_targets, a->h_targets, N * sizeof(int32_t),
                                  cudaMemcpyHostToDevice, s));
    }
    cudaCheck(cudaEventRecord(a->staging, s));
    const float *x = a->input;
    for (int l = m->block_lo; l < m->block_hi; l++) {
        GpuBlock *k = &a->blocks[l - m->block_lo];
        block_forward(im, pl, &w, l, a, k, x);
        x = k->out;
    }
    if (!m->has_head) return x;
    head_forward(im, pl, &w, a, x, targets != NULL);
    return (const float *)a->logits; /* device, in the act dtype */
}

static float cu_loss(Backend *be, const BackendActs *a) {
    (void)be;
    return a->loss;
}

/* ================================================================ backward */

/* A fp32 gradient as the input of a product: itself in fp32, rounded into
 * d_cast in bf16. */
static const void *product_input(CudaImpl *im, BackendActs *a, const float *g, size_t n) {
    if (a->dt == OURO_F32) return g;
    k_cast(a->d_cast, OURO_BF16, g, OURO_F32, n, im->stream);
    return a->d_cast;
}

static void bias_backward(CudaImpl *im, BackendActs *a, float *dbias, const void *dy,
                          OuroDType dyt, int N, int OC) {
    float *scratch = kernel_scratch(a, k_bias_backward_scratch_floats(N, OC), "k_bias_backward");
    k_bias_backward(dbias, scratch, dy, dyt, N, OC, im->stream);
}

static void layernorm_backward(CudaImpl *im, BackendActs *a, float *dx, float *dw, float *db,
                               const void *dy, const float *x, const float *w,
                               const float *mean, const float *rstd, int N) {
    float *scratch = kernel_scratch(a, k_layernorm_backward_scratch_floats(N, a->C),
                                    "k_layernorm_backward");
    k_layernorm_backward(dx, dw, db, scratch, dy, a->dt, x, w, mean, rstd, N, a->C,
                         im->stream);
}

/* Backward of block l (model.c block_backward). dout: gradient of the
 * block output, fp32, only read; dx: receives (overwrites) the gradient
 * of the block input x. */
static void block_backward(CudaImpl *im, const ParamLayout *pl, const Weights *w, float *grads,
                           int l, BackendActs *a, const GpuBlock *k, const float *x,
                           const float *dout, float *dx) {
    int C = a->C, NH = a->NH, B = a->cur_B, T = a->cur_T, N = B * T;
    size_t NC = (size_t)N * C;
    OuroDType dt = a->dt;
    cudaStream_t s = im->stream;
    CudaMatmul *mm = im->mm;
#define BW(which) tensor_index_block(l, which)
    /* MLP branch: out = res2 + proj(gelu(fc(ln2(res2)))) */
    float *dres2 = a->d_res2;
    cudaCheck(cudaMemcpyAsync(dres2, dout, NC * sizeof(float), cudaMemcpyDeviceToDevice, s));
    const void *dout_m = product_input(im, a, dout, NC);
    /* fresh scratch is overwritten (beta 0, GELU in place), as in model.c */
    cuda_matmul_backward_input(mm, a->d_wide, dout_m, wm(pl, w, BW(BT_FCPROJ_W)), dt, N, 4 * C,
                               C, 0.0f);
    cuda_matmul_backward_weight(mm, gp(pl, grads, BW(BT_FCPROJ_W)), k->fch_gelu, dout_m, dt, N,
                                4 * C, C);
    bias_backward(im, a, gp(pl, grads, BW(BT_FCPROJ_B)), dout, OURO_F32, N, C);
    k_gelu_backward(a->d_wide, k->fch, a->d_wide, dt, 4 * NC, s);
    cuda_matmul_backward_input(mm, a->d_c, a->d_wide, wm(pl, w, BW(BT_FC_W)), dt, N, C, 4 * C,
                               0.0f);
    cuda_matmul_backward_weight(mm, gp(pl, grads, BW(BT_FC_W)), k->ln2, a->d_wide, dt, N, C,
                                4 * C);
    bias_backward(im, a, gp(pl, grads, BW(BT_FC_B)), a->d_wide, dt, N, 4 * C);
    layernorm_backward(im, a, dres2, gp(pl, grads, BW(BT_LN2_W)), gp(pl, grads, BW(BT_LN2_B)),
                       a->d_c, k->res2, wf(pl, w, BW(BT_LN2_W)), k->ln2_mean, k->ln2_rstd, N);
    /* attention branch: res2 = x + proj(attn(qkv(ln1(x)))) */
    const void *dres2_m = product_input(im, a, dres2, NC);
    cuda_matmul_backward_input(mm, a->d_c, dres2_m, wm(pl, w, BW(BT_ATTNPROJ_W)), dt, N, C, C,
                               0.0f);
    cuda_matmul_backward_weight(mm, gp(pl, grads, BW(BT_ATTNPROJ_W)), k->atty, dres2_m, dt, N,
                                C, C);
    bias_backward(im, a, gp(pl, grads, BW(BT_ATTNPROJ_B)), dres2, OURO_F32, N, C);
    /* d(qkv) overwrites the wide scratch, free again once d(fch) is used */
    float *att_scratch = kernel_scratch(a, k_attention_backward_scratch_floats(B, T, C, NH),
                                        "k_attention_backward");
    k_attention_backward(a->d_wide, att_scratch, a->d_c, k->qkv, k->atty, k->att_lse, dt, B, T,
                         C, NH, s);
    cuda_matmul_backward_input(mm, a->d_c, a->d_wide, wm(pl, w, BW(BT_ATTN_W)), dt, N, C,
                               3 * C, 0.0f);
    cuda_matmul_backward_weight(mm, gp(pl, grads, BW(BT_ATTN_W)), k->ln1, a->d_wide, dt, N, C,
                                3 * C);
    bias_backward(im, a, gp(pl, grads, BW(BT_ATTN_B)), a->d_wide, dt, N, 3 * C);
    cudaCheck(cudaMemcpyAsync(dx, dres2, NC * sizeof(float), cudaMemcpyDeviceToDevice, s));
    layernorm_backward(im, a, dx, gp(pl, grads, BW(BT_LN1_W)), gp(pl, grads, BW(BT_LN1_B)),
                       a->d_c, x, wf(pl, w, BW(BT_LN1_W)), k->ln1_mean, k->ln1_rstd, N);
#undef BW
}

/* The head's backward into d_res_a (overwritten): dlogits in place, the
 * tied projection's two halves, ln_f. */
static void head_backward(CudaImpl *im, const ParamLayout *pl, const Weights *w, float *grads,
                          BackendActs *a, const float *x, float loss_scale) {
    int C = a->C, V = a->V, N = a->cur_B * a->cur_T;
    OuroDType dt = a->dt;
    int lw = tensor_index_lnf_w(pl);
    k_crossentropy_backward(a->logits, a->lse, a->d_targets, loss_scale, dt, N, V, im->stream);
    cuda_logits_backward_input(im->mm, a->d_c, a->logits, wm(pl, w, tensor_index_wte()), dt, N,
                               C, V, 0.0f);
    cuda_logits_backward_weight(im->mm, gp(pl, grads, tensor_index_wte()), a->logits, a->lnf,
                                dt, N, C, V);
    cudaCheck(cudaMemsetAsync(a->d_res_a, 0, (size_t)N * C * sizeof(float), im->stream));
    layernorm_backward(im, a, a->d_res_a, gp(pl, grads, lw), gp(pl, grads, lw + 1), a->d_c, x,
                       wf(pl, w, lw), a->lnf_mean, a->lnf_rstd, N);
}

/* Groups the positions of the last forward by token on the host (a
 * stable counting sort, O(N + V)) for k_embedding_backward_wte, which
 * gives each token's rows to one block. Returns the number of groups. */
static int group_positions_by_token(BackendActs *a, int N) {
    int V = a->V;
    int32_t *count = a->h_count;
    memset(count, 0, ((size_t)V + 1) * sizeof(int32_t));
    for (int i = 0; i < N; i++) {
        int32_t t = a->h_tokens[i];
        if (t < 0 || t >= V)
            die("backend backward: token %d at position %d is outside the vocabulary of %d", t,
                i, V);
        count[t + 1]++;
    }
    for (int v = 0; v < V; v++) count[v + 1] += count[v]; /* count[v]: first slot of v */
    for (int i = 0; i < N; i++) a->h_order[count[a->h_tokens[i]]++] = i;
    int n_seg = 0;
    for (int j = 0; j < N; j++) {
        int32_t t = a->h_tokens[a->h_order[j]];
        if (j == 0 || t != a->h_tokens[a->h_order[j - 1]]) {
            a->h_seg_start[n_seg] = j;
            a->h_seg_token[n_seg] = t;
            n_seg++;
        }
    }
    a->h_seg_start[n_seg] = N;
    return n_seg;
}

static void embedding_backward(CudaImpl *im, const ParamLayout *pl, BackendActs *a,
                               float *grads, const float *dout) {
    int B = a->cur_B, T = a->cur_T, N = B * T;
    cudaStream_t s = im->stream;
    cudaCheck(cudaEventSynchronize(a->staging));
    int n_seg = group_positions_by_token(a, N);
    cudaCheck(cudaMemcpyAsync(a->d_order, a->h_order, (size_t)N * sizeof(int32_t),
                              cudaMemcpyHostToDevice, s));
    cudaCheck(cudaMemcpyAsync(a->d_seg_start, a->h_seg_start,
                              ((size_t)n_seg + 1) * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    cudaCheck(cudaMemcpyAsync(a->d_seg_token, a->h_seg_token, (size_t)n_seg * sizeof(int32_t),
                              cudaMemcpyHostToDevice, s));
    cudaCheck(cudaEventRecord(a->staging, s));
    k_embedding_backward_wte(gp(pl, grads, tensor_index_wte()), dout, a->d_order,
                             a->d_seg_start, a->d_seg_token, n_seg, a->C, s);
    k_embedding_backward_wpe(gp(pl, grads, tensor_index_wpe()), dout, B, T, a->C, s);
}

static void cu_backward(Backend *be, const ParamLayout *pl, const float *params, float *grads,
                        const ModuleSpec *m, BackendActs *a, const float *dout,
                        float loss_scale, float *dx_in) {
    CudaImpl *im = enter(be);
    size_t NC = (size_t)a->cur_B * a->cur_T * a->C;
    if (NC == 0) die("backend backward: no forward to differentiate");
    Weights w = backward_weights(im, pl, m, a, params);
    int nb = m->block_hi - m->block_lo;
    const float *last = nb > 0 ? a->blocks[nb - 1].out : a->input;
    /* the gradient of the residual stream, carried downwards */
    const float *dcur;
    if (m->has_head) {
        if (!a->have_targets) die("backend backward: the head's last forward had no targets");
        head_backward(im, pl, &w, grads, a, last, loss_scale);
        a->have_targets = 0; /* dlogits overwrote the logits */
        dcur = a->d_res_a;
    } else {
        if (!dout) die("backend backward: a module without the head needs dout");
        dcur = dout;
    }
    for (int i = nb - 1; i >= 0; i--) {
        const float *x = i > 0 ? a->blocks[i - 1].out : a->input;
        /* the lowest block writes straight into dx_in when there is one */
        float *dx = i == 0 && !m->has_embed && dx_in ? dx_in
                    : dcur == a->d_res_a            ? a->d_res_b
                                                    : a->d_res_a;
        block_backward(im, pl, &w, grads, m->block_lo + i, a, &a->blocks[i], x, dcur, dx);
        dcur = dx;
    }
    if (m->has_embed)
        embedding_backward(im, pl, a, grads, dcur);
    else if (dx_in && dx_in != dcur)
        cudaCheck(cudaMemcpyAsync(dx_in, dcur, NC * sizeof(float), cudaMemcpyDeviceToDevice,
                                  im->stream));
}

/* ================================================================ update */

static double cu_sumsq(Backend *be, const float *g, size_t n) {
    CudaImpl *im = enter(be);
    if (n == 0) return 0.0;
    return k_sumsq(g, n, reduction_scratch(im, n), im->stream);
}

static long cu_first_nonfinite(Backend *be, const float *x, size_t n) {
    CudaImpl *im = enter(be);
    if (n == 0) return -1;
    /* the reductions share one layout of per-block partials */
    return k_first_nonfinite(x, n, reduction_scratch(im, n), im->stream);
}

static void cu_update_tensor(Backend *be, const ParamLayout *pl, const OptimizerSpec *o,
                             float *params, float *grads, float *m, float *v, int tensor,
                             float grad_scale, float lr, long t) {
    CudaImpl *im = enter(be);
    const TensorInfo *ti = &pl->tensors[tensor];
    size_t off = ti->offset, n = ti->numel;
    Mirror *mr = im->dt == OURO_BF16 ? mirror_get(im, pl, params) : NULL;
    void *p16 = mr ? (char *)mr->bf16 + off * 2 : NULL;
    float wd = ti->is_matrix ? o->weight_decay : 0.0f;
    if (o->adam) {
        /* optimizer.c's bias corrections, in float */
        float c1 = 1.0f - powf(o->beta1, (float)t);
        float c2 = 1.0f - powf(o->beta2, (float)t);
        k_adamw_update(params + off, p16, grads + off, m + off, v + off, n, lr, o->beta1,
                       o->beta2, o->eps, wd, c1, c2, grad_scale, im->stream);
    } else {
        k_sgd_update(params + off, p16, grads + off, m + off, n, lr, o->momentum, wd, grad_scale,
                     im->stream);
    }
    if (mr) mr->current[tensor] = 1;
}

static void cu_params_loaded(Backend *be, const ParamLayout *pl, const float *params, int first,
                             int last) {
    CudaImpl *im = enter(be);
    if (im->dt == OURO_F32) return; /* nothing is derived from the parameters */
    Mirror *mr = mirror_get(im, pl, params);
    if (!mr) return; /* not a buffer of this backend: forwards cast what they read */
    for (int i = first; i < last; i++) {
        const TensorInfo *ti = &pl->tensors[i];
        k_cast((char *)mr->bf16 + ti->offset * 2, OURO_BF16, params + ti->offset, OURO_F32,
               ti->numel, im->stream);
        mr->current[i] = 1;
    }
}

static void cu_synchronize(Backend *be) {
    CudaImpl *im = enter(be);
    cudaCheck(cudaStreamSynchronize(im->stream));
}

static void cu_destroy(Backend *be) {
    CudaImpl *im = enter(be);
    cudaCheck(cudaStreamSynchronize(im->stream));
    while (im->n_mirrors > 0) mirror_drop(im, im->mirrors[0].params);
    /* whatever the caller did not release */
    while (im->n_allocs > 0) dev_free(im, im->allocs[0].ptr);
    cuda_matmul_destroy(im->mm);
    cudaCheck(cudaStreamDestroy(im->stream));
    free(im->allocs);
    free(im->mirrors);
    free(im);
    free(be);
}

/* ================================================================ creation */

static void describe_gpu(const CudaImpl *im, int rank, int local_rank, const char *host) {
    struct cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, im->device));
    char bus[32] = "";
    cudaCheck(cudaDeviceGetPCIBusId(bus, (int)sizeof bus, im->device));
    printf("rank %d (local %d): GPU %d %s, %s, %zu MiB on %s, precision %s\n", rank, local_rank,
           im->device, prop.name, bus, (size_t)prop.totalGlobalMem >> 20, host,
           dtype_name(im->dt));
    fflush(stdout);
}

/* Virtual memory management needs the driver's functions and the GPU's
 * support; without them parameter-shaped buffers are allocated whole. */
static void vmm_init(CudaImpl *im) {
    driver_load(&im->drv);
    if (!driver_has_vmm(&im->drv)) return;
    CUdevice dev;
    int supported = 0;
    if (im->drv.device_get(&dev, im->device) != CUDA_SUCCESS ||
        im->drv.device_get_attribute(&supported,
                                     CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                                     dev) != CUDA_SUCCESS ||
        !supported)
        return;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = im->device;
    size_t g = 0;
    if (im->drv.granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS || !g)
        return;
    im->granularity = g;
    im->vmm = 1;
}

Backend *backend_cuda_create(const Config *c, int rank, int local_rank) {
    char host[256] = "this host";
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "this host");
    host[sizeof host - 1] = '\0';
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count <= 0)
        die("device=cuda: no usable GPU on %s (%s); use device=cpu", host,
            e != cudaSuccess ? cudaGetErrorString(e) : "the CUDA runtime sees no device");
    CudaImpl *im = xcalloc(1, sizeof *im);
    im->device = local_rank % count;
    im->dt = strcmp(c->precision, "fp32") == 0 ? OURO_F32 : OURO_BF16; /* auto: bf16 */
    cudaCheck(cudaSetDevice(im->device));
    cudaCheck(cudaStreamCreateWithFlags(&im->stream, cudaStreamNonBlocking));
    /* GELU fusion in bf16 only: fp32 checks the GPU against the CPU's GELU */
    im->mm = cuda_matmul_create(im->stream, im->dt == OURO_BF16);
    track_alloc(im, cuda_matmul_device_bytes(im->mm));
    vmm_init(im);
    describe_gpu(im, rank, local_rank, host);

    Backend *be = xcalloc(1, sizeof *be);
    be->name = "cuda";
    be->host_memory = 0;
    be->device = im->device;
    be->stream = (void *)im->stream;
    be->impl = im;
    be->alloc = cu_alloc;
    be->alloc_sparse = cu_alloc_sparse;
    be->release = cu_release;
    be->zero = cu_zero;
    be->upload = cu_upload;
    be->download = cu_download;
    be->peak_bytes = cu_peak_bytes;
    be->acts_create = cu_acts_create;
    be->acts_free = cu_acts_free;
    be->acts_keep_weights = cu_acts_keep_weights;
    be->acts_bytes = cu_acts_bytes;
    be->acts_state_floats = cu_acts_state_floats;
    be->acts_export = cu_acts_export;
    be->acts_import = cu_acts_import;
    be->forward = cu_forward;
    be->loss = cu_loss;
    be->backward = cu_backward;
    be->sumsq = cu_sumsq;
    be->first_nonfinite = cu_first_nonfinite;
    be->update_tensor = cu_update_tensor;
    be->params_loaded = cu_params_loaded;
    be->synchronize = cu_synchronize;
    be->destroy = cu_destroy;
    return be;
}
