/* cuda_matmul.c - see cuda_matmul.h.
 *
 * Row-major through a column-major library. cuBLASLt's default layout is
 * column-major; a row-major [R,K] array read column-major is its
 * transpose, a [K,R] matrix with leading dimension K. So a row-major
 * product Y = X W is computed as the column-major Y^T = W^T X^T, the
 * operands swapped and no data moved. Each public function below states
 * its column-major form (m, n, k and the operations on A and B).
 *
 * Epilogues. y = x W + b uses CUBLASLT_EPILOGUE_BIAS (the bias, fp32 as
 * requested by CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, is added in the fp32
 * accumulator before the one rounding to the output type), and the MLP's
 * first product uses CUBLASLT_EPILOGUE_GELU_AUX_BIAS (D = GELU(acc + b),
 * aux = acc + b: the pre-GELU activation the backward needs, leading
 * dimension a multiple of 8 as cuBLASLt requires). cuBLASLt does not
 * support every type combination with every epilogue on every GPU, so
 * each fused product is first asked of the heuristic; when it answers
 * with no algorithm, the product runs plain and the bias and GELU follow
 * as the project's kernels (k_add_bias, k_gelu_forward). The answer is a
 * function of the GPU, the library version and the call's shape, types
 * and alignments, so one machine always takes the same path. A fused
 * product that the heuristic offers but cublasLtMatmul then refuses (not
 * supported, invalid value) takes the same fallback, from then on.
 * cuBLASLt's alignment preferences name A, B, C and D only, and fused
 * kernels have been seen to assume a 16-byte aligned bias; a bias (a
 * parameter slice, which may start at any float) or aux buffer below 16
 * bytes of alignment is therefore never handed to an epilogue.
 *
 * GELU fusion is off when the creator asks (fuse_gelu = 0, the fp32
 * precision used to check the GPU against the CPU): cuBLASLt does not
 * document its GELU formula, while k_gelu_forward is the tanh
 * approximation of the CPU reference and the one k_gelu_backward
 * differentiates. In bf16 the outputs round to 8 significant bits, far
 * coarser than any difference between GELU approximations.
 *
 * Bias gradients are not taken from the BGRADA/BGRADB epilogues: their
 * reduction order is not documented as deterministic, so the backend uses
 * k_bias_backward.
 */
#include "cuda_matmul.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>

#include "common.h"
#include "cuda_check.h"

/* 32 MiB: what cuBLAS recommends for Hopper (4 MiB suffice before it). */
enum { MATMUL_WORKSPACE_BYTES = 32 << 20 };

/* The alignment, in bytes, below which a bias or aux pointer is not given
 * to an epilogue (see the top of this file). */
enum { EPILOGUE_MIN_ALIGN = 16 };

/* Everything the heuristic's choice depends on. Laid out without padding
 * so keys compare with memcmp. */
typedef struct {
    int32_t op_a, op_b;   /* cublasOperation_t */
    int32_t ab_type;      /* cudaDataType of A and B */
    int32_t cd_type;      /* of C and D */
    int32_t epilogue;     /* cublasLtEpilogue_t */
    uint32_t align[5];    /* bytes: A, B, C/D, bias, aux */
    uint64_t m, n, k;
    int64_t lda, ldb, ldc, aux_ld;
} PlanKey;

typedef struct {
    PlanKey key;
    int supported; /* 0: cuBLASLt offered no algorithm (status below) */
    int status;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} Plan;

struct CudaMatmul {
    cublasLtHandle_t lt;
    cudaStream_t stream;
    void *workspace;
    size_t workspace_bytes;
    int fuse_gelu;
    Plan *plans;
    int n_plans, cap_plans;
};

CudaMatmul *cuda_matmul_create(cudaStream_t stream, int fuse_gelu) {
    CudaMatmul *mm = xcalloc(1, sizeof *mm);
    mm->stream = stream;
    mm->fuse_gelu = fuse_gelu;
    cublasCheck(cublasLtCreate(&mm->lt));
    mm->workspace_bytes = MATMUL_WORKSPACE_BYTES;
    cudaCheck(cudaMalloc(&mm->workspace, mm->workspace_bytes));
    return mm;
}

static void plan_free(Plan *p) {
    if (p->la) cublasCheck(cublasLtMatrixLayoutDestroy(p->la));
    if (p->lb) cublasCheck(cublasLtMatrixLayoutDestroy(p->lb));
    if (p->lc) cublasCheck(cublasLtMatrixLayoutDestroy(p->lc));
    if (p->desc) cublasCheck(cublasLtMatmulDescDestroy(p->desc));
}

void cuda_matmul_destroy(CudaMatmul *mm) {
    if (!mm) return;
    /* Queued products may still read the workspace: cudaFree waits. */
    cudaCheck(cudaStreamSynchronize(mm->stream));
    for (int i = 0; i < mm->n_plans; i++) plan_free(&mm->plans[i]);
    free(mm->plans);
    cudaCheck(cudaFree(mm->workspace));
    cublasCheck(cublasLtDestroy(mm->lt));
    free(mm);
}

size_t cuda_matmul_device_bytes(const CudaMatmul *mm) { return mm->workspace_bytes; }

/* ---------------------------------------------------------------- plans */

static cudaDataType_t cuda_type(OuroDType t) {
    return t == OURO_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

static const char *type_name(int32_t t) {
    return t == CUDA_R_16BF ? "bf16" : t == CUDA_R_32F ? "fp32" : "other";
}

/* The largest power of two up to 256 that divides the address: what
 * cuBLASLt's alignment preferences are stated in. */
static uint32_t alignment_of(const void *p) {
    uintptr_t a = (uintptr_t)p;
    if (a == 0) return 256;
    uint32_t al = 1;
    while (al < 256 && (a & al) == 0) al <<= 1;
    return al;
}

/* 1 when an epilogue may read or write p (NULL: nothing to read). */
static int epilogue_aligned(const void *p) {
    return p == NULL || alignment_of(p) >= EPILOGUE_MIN_ALIGN;
}

static void desc_set(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                     const void *value, size_t bytes) {
    cublasCheck(cublasLtMatmulDescSetAttribute(d, attr, value, bytes));
}

static void pref_set(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr,
                     const void *value, size_t bytes) {
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(p, attr, value, bytes));
}

/* Stored shape of an operand: op(X) is rows x cols, so X is stored
 * transposed when op is T. */
static void layout_create(cublasLtMatrixLayout_t *l, int32_t type, int32_t op, uint64_t rows,
                          uint64_t cols, int64_t ld) {
    if (op == CUBLAS_OP_N)
        cublasCheck(cublasLtMatrixLayoutCreate(l, (cudaDataType_t)type, rows, cols, ld));
    else
        cublasCheck(cublasLtMatrixLayoutCreate(l, (cudaDataType_t)type, cols, rows, ld));
}

/* Builds the descriptors of `key` and asks the heuristic for one
 * algorithm. bias and aux are the pointers of the first call: the
 * heuristic reads their alignment (which the key records). */
static void plan_build(CudaMatmul *mm, Plan *p, const PlanKey *key, const float *bias,
                       const void *aux) {
    memset(p, 0, sizeof *p);
    p->key = *key;
    cublasCheck(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t op_a = (cublasOperation_t)key->op_a, op_b = (cublasOperation_t)key->op_b;
    desc_set(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a);
    desc_set(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b);
    cublasLtEpilogue_t epi = (cublasLtEpilogue_t)key->epilogue;
    desc_set(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    if (epi == CUBLASLT_EPILOGUE_BIAS || epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
        int32_t bias_type = CUDA_R_32F; /* the fp32 master bias, whatever D is */
        desc_set(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type);
        desc_set(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    }
    if (epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || epi == CUBLASLT_EPILOGUE_GELU_AUX) {
        /* The aux matrix has D's type (the default), and D's shape. */
        desc_set(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux);
        desc_set(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &key->aux_ld,
                 sizeof key->aux_ld);
    }
    layout_create(&p->la, key->ab_type, key->op_a, key->m, key->k, key->lda);
    layout_create(&p->lb, key->ab_type, key->op_b, key->k, key->n, key->ldb);
    layout_create(&p->lc, key->cd_type, CUBLAS_OP_N, key->m, key->n, key->ldc);

    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = mm->workspace_bytes;
    pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key->align[0],
             sizeof key->align[0]);
    pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key->align[1],
             sizeof key->align[1]);
    pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key->align[2],
             sizeof key->align[2]);
    pref_set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key->align[2],
             sizeof key->align[2]);
    cublasLtMatmulHeuristicResult_t result;
    memset(&result, 0, sizeof result);
    int returned = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(mm->lt, p->desc, p->la, p->lb, p->lc,
                                                       p->lc, pref, 1, &result, &returned);
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    if (st == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
        p->supported = 1;
        p->algo = result.algo;
    } else {
        p->status = st != CUBLAS_STATUS_SUCCESS ? (int)st : (int)result.state;
    }
}

static Plan *plan_get(CudaMatmul *mm, const PlanKey *key, const float *bias, const void *aux) {
    for (int i = 0; i < mm->n_plans; i++)
        if (memcmp(&mm->plans[i].key, key, sizeof *key) == 0) return &mm->plans[i];
    if (mm->n_plans == mm->cap_plans) {
        int cap = mm->cap_plans ? 2 * mm->cap_plans : 32;
        Plan *grown = realloc(mm->plans, (size_t)cap * sizeof(Plan));
        if (!grown) die("out of memory growing the cuBLASLt plan cache to %d entries", cap);
        mm->plans = grown;
        mm->cap_plans = cap;
    }
    Plan *p = &mm->plans[mm->n_plans++];
    plan_build(mm, p, key, bias, aux);
    return p;
}

/* One column-major product D[m,n] = op_a(A) op_b(B) + beta D with the
 * epilogue `epi` (bias fp32 of length m; aux the GELU input, like D).
 * Returns 0 when cuBLASLt has no algorithm for it; `what` names the
 * product for the error a plain product (may_fail 0) dies with. */
static int lt_gemm(CudaMatmul *mm, const char *what, cublasOperation_t op_a,
                   cublasOperation_t op_b, int m, int n, int k, const void *A, int64_t lda,
                   const void *B, int64_t ldb, void *D, int64_t ldc, OuroDType ab,
                   OuroDType cd, float beta, cublasLtEpilogue_t epi, const float *bias,
                   void *aux, int64_t aux_ld, int may_fail) {
    if (m <= 0 || n <= 0) return 1;
    if (k <= 0) die("%s: empty inner dimension (m=%d n=%d k=%d)", what, m, n, k);
    PlanKey key;
    memset(&key, 0, sizeof key);
    key.op_a = op_a;
    key.op_b = op_b;
    key.ab_type = cuda_type(ab);
    key.cd_type = cuda_type(cd);
    key.epilogue = epi;
    key.align[0] = alignment_of(A);
    key.align[1] = alignment_of(B);
    key.align[2] = alignment_of(D);
    key.align[3] = bias ? alignment_of(bias) : 0;
    key.align[4] = aux ? alignment_of(aux) : 0;
    key.m = (uint64_t)m;
    key.n = (uint64_t)n;
    key.k = (uint64_t)k;
    key.lda = lda;
    key.ldb = ldb;
    key.ldc = ldc;
    key.aux_ld = aux ? aux_ld : 0;
    Plan *p = plan_get(mm, &key, bias, aux);
    if (!p->supported) {
        if (may_fail) return 0;
        die("%s: cuBLASLt offers no algorithm for m=%d n=%d k=%d (ld %lld %lld %lld, "
            "alignment A %u B %u D %u bytes) with %s inputs and %s output (status %d); "
            "check the CUDA toolkit and the GPU (CUBLASLT_LOG_LEVEL=5 shows why)",
            what, m, n, k, (long long)lda, (long long)ldb, (long long)ldc, key.align[0],
            key.align[1], key.align[2], type_name(key.ab_type), type_name(key.cd_type),
            p->status);
    }
    if (bias) desc_set(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    if (aux) desc_set(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux);
    const float alpha = 1.0f;
    cublasStatus_t st = cublasLtMatmul(mm->lt, p->desc, &alpha, A, p->la, B, p->lb, &beta, D,
                                       p->lc, D, p->lc, &p->algo, mm->workspace,
                                       mm->workspace_bytes, mm->stream);
    /* A refusal is decided on the host before anything is launched, so
     * nothing was written: a fused product falls back, now and on every
     * later call with this key. */
    if (may_fail && (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE ||
                     st == CUBLAS_STATUS_ARCH_MISMATCH)) {
        p->supported = 0;
        p->status = (int)st;
        return 0;
    }
    if (st != CUBLAS_STATUS_SUCCESS) {
        char call[96];
        snprintf(call, sizeof call, "cublasLtMatmul (%s, m=%d n=%d k=%d)", what, m, n, k);
        cublas_check_failed((int)st, call, __FILE__, __LINE__);
    }
    return 1;
}

/* ---------------------------------------------------------------- products */

/* Column-major: y^T[OC,N] = W^T[OC,IC] x^T[IC,N]; W row-major [IC,OC] is
 * W^T column-major with ld OC, x is x^T with ld IC. No transposes. */
static int forward_epilogue(CudaMatmul *mm, void *y, const void *x, const void *W,
                            const float *bias, void *aux, cublasLtEpilogue_t epi,
                            OuroDType t, int N, int IC, int OC, int may_fail) {
    return lt_gemm(mm, "matmul forward", CUBLAS_OP_N, CUBLAS_OP_N, OC, N, IC, W, OC, x, IC, y,
                   OC, t, t, 0.0f, epi, bias, aux, OC, may_fail);
}

void cuda_matmul_forward(CudaMatmul *mm, void *y, const void *x, const void *W,
                         const float *bias, OuroDType t, int N, int IC, int OC) {
    if (bias && epilogue_aligned(bias) &&
        forward_epilogue(mm, y, x, W, bias, NULL, CUBLASLT_EPILOGUE_BIAS, t, N, IC, OC, 1))
        return;
    forward_epilogue(mm, y, x, W, NULL, NULL, CUBLASLT_EPILOGUE_DEFAULT, t, N, IC, OC, 0);
    if (bias) k_add_bias(y, t, bias, N, OC, mm->stream);
}

void cuda_matmul_forward_gelu(CudaMatmul *mm, void *out, void *pre, const void *x,
                              const void *W, const float *bias, OuroDType t, int N, int IC,
                              int OC) {
    /* aux's leading dimension (OC) must be a multiple of 8 */
    if (mm->fuse_gelu && OC % 8 == 0 && epilogue_aligned(bias) && epilogue_aligned(pre)) {
        cublasLtEpilogue_t epi =
            bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
        if (forward_epilogue(mm, out, x, W, bias, pre, epi, t, N, IC, OC, 1)) return;
    }
    cuda_matmul_forward(mm, pre, x, W, bias, t, N, IC, OC);
    k_gelu_forward(out, pre, t, (size_t)N * (size_t)OC, mm->stream);
}

/* Column-major: dx^T[IC,N] = W[IC,OC] dy^T[OC,N]; W is stored as W^T
 * (ld OC), hence op T on A. */
void cuda_matmul_backward_input(CudaMatmul *mm, void *dx, const void *dy, const void *W,
                                OuroDType t, int N, int IC, int OC, float beta) {
    lt_gemm(mm, "matmul backward (input)", CUBLAS_OP_T, CUBLAS_OP_N, IC, N, OC, W, OC, dy, OC,
            dx, IC, t, t, beta, CUBLASLT_EPILOGUE_DEFAULT, NULL, NULL, 0, 0);
}

/* Column-major: dW^T[OC,IC] += dy^T[OC,N] x[N,IC]; x is stored as x^T
 * (ld IC), hence op T on B. */
void cuda_matmul_backward_weight(CudaMatmul *mm, float *dW, const void *x, const void *dy,
                                 OuroDType t, int N, int IC, int OC) {
    if (N <= 0) return;
    lt_gemm(mm, "matmul backward (weight)", CUBLAS_OP_N, CUBLAS_OP_T, OC, IC, N, dy, OC, x, IC,
            dW, OC, t, OURO_F32, 1.0f, CUBLASLT_EPILOGUE_DEFAULT, NULL, NULL, 0, 0);
}

/* Column-major: logits^T[V,N] = wte[V,C] x^T[C,N]; wte row-major [V,C] is
 * stored as wte^T (ld C), hence op T on A. */
void cuda_logits_forward(CudaMatmul *mm, void *logits, const void *x, const void *wte,
                         OuroDType t, int N, int C, int V) {
    lt_gemm(mm, "logits forward", CUBLAS_OP_T, CUBLAS_OP_N, V, N, C, wte, C, x, C, logits, V,
            t, t, 0.0f, CUBLASLT_EPILOGUE_DEFAULT, NULL, NULL, 0, 0);
}

/* Column-major: dx^T[C,N] = wte^T[C,V] dlogits^T[V,N]: both as stored. */
void cuda_logits_backward_input(CudaMatmul *mm, void *dx, const void *dlogits,
                                const void *wte, OuroDType t, int N, int C, int V,
                                float beta) {
    lt_gemm(mm, "logits backward (input)", CUBLAS_OP_N, CUBLAS_OP_N, C, N, V, wte, C, dlogits,
            V, dx, C, t, t, beta, CUBLASLT_EPILOGUE_DEFAULT, NULL, NULL, 0, 0);
}

/* Column-major: dwte^T[C,V] += x^T[C,N] dlogits[N,V]; dlogits is stored
 * as dlogits^T (ld V), hence op T on B. */
void cuda_logits_backward_weight(CudaMatmul *mm, float *dwte, const void *dlogits,
                                 const void *x, OuroDType t, int N, int C, int V) {
    if (N <= 0) return;
    lt_gemm(mm, "logits backward (weight)", CUBLAS_OP_N, CUBLAS_OP_T, C, V, N, x, C, dlogits,
            V, dwte, C, t, OURO_F32, 1.0f, CUBLASLT_EPILOGUE_DEFAULT, NULL, NULL, 0, 0);
}
