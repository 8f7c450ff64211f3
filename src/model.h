/* model.h - the GPT-2 model: parameter layout, initialisation, and the
 * forward and backward of a *module* (a contiguous slice of the network).
 *
 * Parameter layout (the one source of truth for names, shapes and order).
 * All parameters live in one fp32 buffer, laid out layer by layer in the
 * canonical Hugging Face GPT-2 order, so every module's parameters, its
 * gradients and its optimizer state are each one contiguous slice:
 *
 *   wte [V,C]  wpe [T,C]
 *   h.{i}.ln_1.weight [C]  h.{i}.ln_1.bias [C]
 *   h.{i}.attn.c_attn.weight [C,3C]  h.{i}.attn.c_attn.bias [3C]
 *   h.{i}.attn.c_proj.weight [C,C]   h.{i}.attn.c_proj.bias [C]
 *   h.{i}.ln_2.weight [C]  h.{i}.ln_2.bias [C]
 *   h.{i}.mlp.c_fc.weight [C,4C]     h.{i}.mlp.c_fc.bias [4C]
 *   h.{i}.mlp.c_proj.weight [4C,C]   h.{i}.mlp.c_proj.bias [C]
 *   ... for i = 0 .. n_layer-1 ...
 *   ln_f.weight [C]  ln_f.bias [C]
 *
 * Weights are input-major (y = x W + b), as GPT-2's Conv1D. The output
 * projection is tied to wte: there is one tensor.
 */
#ifndef OURO_MODEL_H
#define OURO_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_layer;
    int n_head;
    int n_embd;
    int block_size; /* maximum context T */
    int vocab_size;
} GPTConfig;

/* Tensors of one block, in canonical order. */
enum {
    BT_LN1_W, BT_LN1_B, BT_ATTN_W, BT_ATTN_B, BT_ATTNPROJ_W, BT_ATTNPROJ_B,
    BT_LN2_W, BT_LN2_B, BT_FC_W, BT_FC_B, BT_FCPROJ_W, BT_FCPROJ_B,
    BT_COUNT
};

typedef struct {
    char name[64];    /* Hugging Face GPT-2 name, e.g. "h.3.attn.c_attn.weight" */
    int ndim;         /* 1 or 2 */
    int shape[2];
    size_t offset;    /* in floats, from the start of the parameter buffer */
    size_t numel;
    int block;        /* block index, or -1 for wte, wpe, ln_f */
    int is_matrix;    /* weight decay applies to matrices only */
} TensorInfo;

typedef struct {
    GPTConfig cfg;
    int n_tensors;
    TensorInfo *tensors; /* canonical order */
    size_t n_params;
} ParamLayout;

/* Checks the configuration; on error writes a one-line reason naming the
 * field into err and returns -1. */
int gpt_config_check(const GPTConfig *cfg, char *err, size_t errlen);

void param_layout_init(ParamLayout *pl, const GPTConfig *cfg);
void param_layout_free(ParamLayout *pl);

/* Tensor indices in the canonical order. */
static inline int tensor_index_wte(void) { return 0; }
static inline int tensor_index_wpe(void) { return 1; }
static inline int tensor_index_block(int block, int which) {
    return 2 + block * BT_COUNT + which;
}
static inline int tensor_index_lnf_w(const ParamLayout *pl) {
    return 2 + pl->cfg.n_layer * BT_COUNT;
}
const TensorInfo *param_find(const ParamLayout *pl, const char *name);

/* GPT-2 initialisation: weights N(0, 0.02), residual projections
 * (attn.c_proj, mlp.c_proj) N(0, 0.02/sqrt(2 n_layer)), biases 0,
 * LayerNorm weights 1. Each tensor draws from its own stream seeded by
 * (seed, tensor index), so any rank can initialise any slice on its own and
 * get the same bits. Initialises tensors [first, last). */
void param_init(const ParamLayout *pl, float *params, uint64_t seed,
                int first_tensor, int last_tensor);

/* SHA-256 of params as little-endian fp32 in canonical order, lowercase
 * hex into out[65]. */
void params_sha256(const ParamLayout *pl, const float *params, char out[65]);

/* ---- modules ---- */

/* A module: optionally the embeddings, blocks [block_lo, block_hi),
 * optionally the head (ln_f, tied projection, loss). The whole model is
 * {1, 0, n_layer, 1}. */
typedef struct {
    int has_embed;
    int block_lo, block_hi;
    int has_head;
} ModuleSpec;

/* Parameter slice [lo, hi) in floats that the module owns. An embedding
 * module owns wte and wpe; a head module owns ln_f and uses wte, which
 * stays with the embedding module (both live on rank 0). */
void module_param_range(const ParamLayout *pl, const ModuleSpec *m,
                        size_t *lo, size_t *hi);
/* The parameter slices a module's forward reads: its own, and wte for a
 * head that does not own it (as offsets lo[i] and float counts n[i]).
 * Returns how many (1 or 2). */
int module_weight_spans(const ParamLayout *pl, const ModuleSpec *m, size_t lo[2],
                        size_t n[2]);
/* Same, in tensor indices [first, last). */
void module_tensor_range(const ParamLayout *pl, const ModuleSpec *m,
                         int *first, int *last);

/* Everything a module's backward needs from its forward, for a batch of
 * B sequences of up to T tokens. */
typedef struct ModuleActs ModuleActs;

ModuleActs *module_acts_create(const ParamLayout *pl, const ModuleSpec *m,
                               int B, int T);
void module_acts_free(ModuleActs *a);
/* Makes every later forward keep a copy of the weights it used, and the
 * backward use that copy instead of the params it is given: the exact
 * gradient at the forward's weights, for a backward that runs after some
 * updates (delayed gradients with stored activations). */
void module_acts_keep_weights(const ParamLayout *pl, ModuleActs *a);
/* Bytes held by the activations (for memory reports). */
size_t module_acts_bytes(const ModuleActs *a);
/* The forward state a later backward reads (everything but scratch), as
 * floats, for checkpoints of in-flight minibatches: export writes
 * module_acts_state_floats() floats (integers bit for bit), import reads
 * them into activations of the same module and capacity. */
size_t module_acts_state_floats(const ParamLayout *pl, const ModuleActs *a);
/* The words that lead every backend's saved forward state: the shape of
 * the last forward, whether it had targets (the three as int32 bits), and
 * its loss. The arrays that follow are each backend's own. */
enum { ACTS_STATE_HEADER = 4 };
typedef struct {
    int B, T, have_targets;
    float loss;
} ActsStateHeader;
void acts_state_header_write(float dst[ACTS_STATE_HEADER], ActsStateHeader h);
/* Reads the header and checks the shape fits activations of capacity
 * cap_B x cap_T; dies naming `who` when it does not. */
ActsStateHeader acts_state_header_read(const float src[ACTS_STATE_HEADER], int cap_B,
                                       int cap_T, const char *who);
void module_acts_export(const ParamLayout *pl, const ModuleActs *a, float *dst);
void module_acts_import(const ParamLayout *pl, ModuleActs *a, const float *src);

/* Forward on B x T (T <= the T the acts were created for).
 * tokens: [B*T] if the module has the embedding, else NULL.
 * x_in:   [B*T*C] input activations if it has no embedding, else NULL;
 *         copied into the acts, so the caller may reuse its buffer.
 * targets:[B*T] if the module has the head (may be NULL to skip the loss).
 * Returns the output activations [B*T*C] (owned by acts) for modules
 * without a head; for a head module returns the logits/probabilities
 * [B*T*V] (owned by acts). */
const float *module_forward(const ParamLayout *pl, const float *params,
                            const ModuleSpec *m, ModuleActs *a,
                            const int32_t *tokens, const float *x_in,
                            const int32_t *targets, int B, int T);
/* Mean cross-entropy of the last forward (head modules with targets). */
float module_loss(const ModuleActs *a);

/* Backward of the last forward. Accumulates parameter gradients into
 * grads (same layout as params; caller zeroes).
 * dout:  [B*T*C] gradient of the output, for modules without a head.
 * loss_scale: for head modules, d(objective)/d(per-token loss); 1/(B*T)
 *        for the mean over this batch.
 * dx_in: [B*T*C] receives (overwrites) the gradient of x_in, for modules
 *        without the embedding; may be NULL if unwanted. */
void module_backward(const ParamLayout *pl, const float *params, float *grads,
                     const ModuleSpec *m, ModuleActs *a, const float *dout,
                     float loss_scale, float *dx_in);

/* Model FLOPs of one training step per token (forward + backward), the
 * PaLM/nanoGPT convention: 6 * (matmul parameters, head included) +
 * 12 * n_layer * n_embd * T. */
double model_train_flops_per_token(const GPTConfig *cfg, int T);

#endif
