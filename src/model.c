/* model.c - GPT-2 parameter layout, initialisation and module forward /
 * backward on the CPU backend. See model.h for the layout. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ops.h"
#include "rng.h"
#include "sha256.h"

int gpt_config_check(const GPTConfig *cfg, char *err, size_t errlen) {
    struct { const char *name; int value; } f[] = {
        {"n_layer", cfg->n_layer}, {"n_head", cfg->n_head},
        {"n_embd", cfg->n_embd}, {"block_size", cfg->block_size},
        {"vocab_size", cfg->vocab_size}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].value < 1) {
            snprintf(err, errlen, "%s=%d must be a positive integer",
                     f[i].name, f[i].value);
            return -1;
        }
    if (cfg->n_embd % cfg->n_head != 0) {
        snprintf(err, errlen,
                 "n_embd=%d is not divisible by n_head=%d; pick n_embd a "
                 "multiple of n_head",
                 cfg->n_embd, cfg->n_head);
        return -1;
    }
    return 0;
}

/* ---- layout ---- */

static void add_tensor(ParamLayout *pl, int *idx, size_t *off, int block,
                       const char *name, int d0, int d1) {
    TensorInfo *t = &pl->tensors[(*idx)++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = d1 > 0 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1 > 0 ? d1 : 0;
    t->numel = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    t->offset = *off;
    t->block = block;
    t->is_matrix = t->ndim == 2;
    *off += t->numel;
}

void param_layout_init(ParamLayout *pl, const GPTConfig *cfg) {
    int C = cfg->n_embd, L = cfg->n_layer;
    pl->cfg = *cfg;
    pl->n_tensors = 2 + L * BT_COUNT + 2;
    pl->tensors = xcalloc((size_t)pl->n_tensors, sizeof(TensorInfo));
    int idx = 0;
    size_t off = 0;
    add_tensor(pl, &idx, &off, -1, "wte", cfg->vocab_size, C);
    add_tensor(pl, &idx, &off, -1, "wpe", cfg->block_size, C);
    static const struct { const char *suffix; int rows, cols; } block[BT_COUNT] = {
        {"ln_1.weight", 1, 0},        {"ln_1.bias", 1, 0},
        {"attn.c_attn.weight", 1, 3}, {"attn.c_attn.bias", 3, 0},
        {"attn.c_proj.weight", 1, 1}, {"attn.c_proj.bias", 1, 0},
        {"ln_2.weight", 1, 0},        {"ln_2.bias", 1, 0},
        {"mlp.c_fc.weight", 1, 4},    {"mlp.c_fc.bias", 4, 0},
        {"mlp.c_proj.weight", 4, 1},  {"mlp.c_proj.bias", 1, 0}};
    for (int l = 0; l < L; l++)
        for (int k = 0; k < BT_COUNT; k++) {
            char name[64];
            snprintf(name, sizeof name, "h.%d.%s", l, block[k].suffix);
            add_tensor(pl, &idx, &off, l, name, block[k].rows * C,
                       block[k].cols * C);
        }
    add_tensor(pl, &idx, &off, -1, "ln_f.weight", C, 0);
    add_tensor(pl, &idx, &off, -1, "ln_f.bias", C, 0);
    pl->n_params = off;
}

void param_layout_free(ParamLayout *pl) {
    free(pl->tensors);
    pl->tensors = NULL;
}

const TensorInfo *param_find(const ParamLayout *pl, const char *name) {
    for (int i = 0; i < pl->n_tensors; i++)
        if (strcmp(pl->tensors[i].name, name) == 0) return &pl->tensors[i];
    return NULL;
}

static int is_layernorm_weight(const char *name) {
    size_t n = strlen(name);
    return n >= 7 && strcmp(name + n - 7, ".weight") == 0 &&
           (strstr(name, "ln_") != NULL);
}

static int is_residual_projection(const char *name) {
    return strstr(name, "c_proj.weight") != NULL;
}

void param_init(const ParamLayout *pl, float *params, uint64_t seed,
                int first_tensor, int last_tensor) {
    double std = 0.02;
    double proj_std = 0.02 / sqrt(2.0 * pl->cfg.n_layer);
    for (int i = first_tensor; i < last_tensor; i++) {
        const TensorInfo *t = &pl->tensors[i];
        float *p = params + t->offset;
        if (t->ndim == 1) {
            float v = is_layernorm_weight(t->name) ? 1.0f : 0.0f;
            for (size_t j = 0; j < t->numel; j++) p[j] = v;
            continue;
        }
        Rng r;
        rng_seed(&r, hash_u64(seed, (uint64_t)i, 0x696e6974ull, 0));
        double s = is_residual_projection(t->name) ? proj_std : std;
        for (size_t j = 0; j < t->numel; j++) p[j] = (float)(s * rng_normal(&r));
    }
}

void params_sha256(const ParamLayout *pl, const float *params, char out[65]) {
    /* The hash is defined over little-endian fp32; convert on big-endian
     * hosts so the same weights give the same hash everywhere. */
    Sha256 s;
    sha256_init(&s);
    const uint32_t probe = 1;
    if (*(const uint8_t *)&probe == 1) {
        sha256_update(&s, params, pl->n_params * sizeof(float));
    } else {
        for (size_t i = 0; i < pl->n_params; i++) {
            uint32_t u;
            memcpy(&u, &params[i], 4);
            uint8_t b[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16),
                            (uint8_t)(u >> 24)};
            sha256_update(&s, b, 4);
        }
    }
    uint8_t d[32];
    sha256_final(&s, d);
    sha256_to_hex(d, out);
}

double model_train_flops_per_token(const GPTConfig *c, int T) {
    double C = c->n_embd, L = c->n_layer, V = c->vocab_size;
    double matmul_params = L * 12.0 * C * C + V * C;
    return 6.0 * matmul_params + 12.0 * L * C * T;
}

/* ---- modules ---- */

void module_tensor_range(const ParamLayout *pl, const ModuleSpec *m,
                         int *first, int *last) {
    *first = m->has_embed ? 0 : tensor_index_block(m->block_lo, 0);
    *last = m->has_head ? pl->n_tensors : tensor_index_block(m->block_hi, 0);
}

void module_param_range(const ParamLayout *pl, const ModuleSpec *m,
                        size_t *lo, size_t *hi) {
    int first, last;
    module_tensor_range(pl, m, &first, &last);
    *lo = pl->tensors[first].offset;
    *hi = last < pl->n_tensors ? pl->tensors[last].offset : pl->n_params;
}

/* Saved forward state of one Transformer block. */
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; /* [N,C], [N], [N] */
    float *qkv;                       /* [N,3C] */
    float *att;                       /* [B,NH,T,T] softmax probabilities */
    float *atty;                      /* [N,C] attention output, pre-proj */
    float *res2;                      /* [N,C] x + attention branch */
    float *ln2, *ln2_mean, *ln2_rstd;
    float *fch;                       /* [N,4C] pre-GELU */
    float *fch_gelu;                  /* [N,4C] */
    float *out;                       /* [N,C] block output */
} BlockActs;

struct ModuleActs {
    ModuleSpec spec;
    int B, T;      /* capacity */
    int cur_B, cur_T; /* shape of the last forward */
    int32_t *tokens, *targets; /* [N] copies */
    int have_targets;
    float *input;  /* [N,C] module input (embedding output or x_in copy) */
    BlockActs *blocks;
    float *lnf, *lnf_mean, *lnf_rstd; /* head */
    float *probs;  /* [N,V] logits, then probabilities, then dlogits */
    float *losses; /* [N] */
    float loss;
    /* backward scratch, shared by the blocks */
    float *d_res_a, *d_c, *d_3c, *d_4c;
    float *att_scratch; /* attention's, forward and backward */
    /* The weights of the last forward, when kept (module_acts_keep_weights):
     * parameter-shaped, only the module's slices written. */
    float *weights;
    size_t bytes;
};

int module_weight_spans(const ParamLayout *pl, const ModuleSpec *m, size_t lo[2],
                        size_t n[2]) {
    size_t hi;
    module_param_range(pl, m, &lo[0], &hi);
    n[0] = hi - lo[0];
    if (!m->has_head || m->has_embed) return 1;
    lo[1] = pl->tensors[tensor_index_wte()].offset;
    n[1] = pl->tensors[tensor_index_wte()].numel;
    return 2;
}

void module_acts_keep_weights(const ParamLayout *pl, ModuleActs *a) {
    if (a->weights) return;
    a->weights = xcalloc(pl->n_params, sizeof(float)); /* untouched pages stay unmapped */
    size_t lo[2], n[2];
    int k = module_weight_spans(pl, &a->spec, lo, n);
    for (int i = 0; i < k; i++) a->bytes += n[i] * sizeof(float);
}

static float *acts_alloc(ModuleActs *a, size_t n) {
    a->bytes += n * sizeof(float);
    return xalloc_aligned(n * sizeof(float));
}

ModuleActs *module_acts_create(const ParamLayout *pl, const ModuleSpec *m,
                               int B, int T) {
    ModuleActs *a = xcalloc(1, sizeof *a);
    int C = pl->cfg.n_embd, NH = pl->cfg.n_head, V = pl->cfg.vocab_size;
    size_t N = (size_t)B * T;
    a->spec = *m;
    a->B = B;
    a->T = T;
    a->tokens = xcalloc(N, sizeof(int32_t));
    a->targets = xcalloc(N, sizeof(int32_t));
    a->input = acts_alloc(a, N * C);
    int nb = m->block_hi - m->block_lo;
    a->blocks = xcalloc(nb > 0 ? (size_t)nb : 1, sizeof(BlockActs));
    for (int i = 0; i < nb; i++) {
        BlockActs *k = &a->blocks[i];
        k->ln1 = acts_alloc(a, N * C);
        k->ln1_mean = acts_alloc(a, N);
        k->ln1_rstd = acts_alloc(a, N);
        k->qkv = acts_alloc(a, N * 3 * C);
        k->att = acts_alloc(a, (size_t)B * NH * T * T);
        k->atty = acts_alloc(a, N * C);
        k->res2 = acts_alloc(a, N * C);
        k->ln2 = acts_alloc(a, N * C);
        k->ln2_mean = acts_alloc(a, N);
        k->ln2_rstd = acts_alloc(a, N);
        k->fch = acts_alloc(a, N * 4 * C);
        k->fch_gelu = acts_alloc(a, N * 4 * C);
        k->out = acts_alloc(a, N * C);
    }
    if (m->has_head) {
        a->lnf = acts_alloc(a, N * C);
        a->lnf_mean = acts_alloc(a, N);
        a->lnf_rstd = acts_alloc(a, N);
        a->probs = acts_alloc(a, N * V);
        a->losses = acts_alloc(a, N);
    }
    a->d_res_a = acts_alloc(a, N * C);
    a->d_c = acts_alloc(a, N * C);
    a->d_3c = acts_alloc(a, N * 3 * C);
    a->d_4c = acts_alloc(a, N * 4 * C);
    a->att_scratch = acts_alloc(a, attention_scratch_floats(T, C, NH));
    return a;
}

void module_acts_free(ModuleActs *a) {
    if (!a) return;
    int nb = a->spec.block_hi - a->spec.block_lo;
    for (int i = 0; i < nb; i++) {
        BlockActs *k = &a->blocks[i];
        float *all[] = {k->ln1, k->ln1_mean, k->ln1_rstd, k->qkv, k->att,
                        k->atty, k->res2, k->ln2, k->ln2_mean, k->ln2_rstd,
                        k->fch, k->fch_gelu, k->out};
        for (size_t j = 0; j < sizeof all / sizeof all[0]; j++) free(all[j]);
    }
    float *rest[] = {a->input, a->lnf, a->lnf_mean, a->lnf_rstd, a->probs,
                     a->losses, a->d_res_a, a->d_c,
                     a->d_3c, a->d_4c, a->att_scratch, a->weights};
    for (size_t j = 0; j < sizeof rest / sizeof rest[0]; j++) free(rest[j]);
    free(a->blocks);
    free(a->tokens);
    free(a->targets);
    free(a);
}

size_t module_acts_bytes(const ModuleActs *a) { return a->bytes; }

/* ---- saving the forward state (checkpoints of in-flight minibatches) ---- */

typedef struct {
    void *p;
    size_t n; /* 4-byte elements */
} StateSpan;

/* The arrays a later backward reads, in a fixed order: everything but the
 * backward scratch. Keep in step with BlockActs and ModuleActs. Returns
 * the count (at most 3 + 13 * blocks + 5 + 2). */
static int acts_state_spans(const ParamLayout *pl, const ModuleActs *a, StateSpan *s) {
    size_t C = (size_t)pl->cfg.n_embd, NH = (size_t)pl->cfg.n_head;
    size_t V = (size_t)pl->cfg.vocab_size, B = (size_t)a->B, T = (size_t)a->T;
    size_t N = B * T;
    int n = 0;
#define SPAN(ptr, count) (s[n].p = (void *)(ptr), s[n].n = (count), n++)
    SPAN(a->tokens, N);
    SPAN(a->targets, N);
    SPAN(a->input, N * C);
    for (int i = 0; i < a->spec.block_hi - a->spec.block_lo; i++) {
        const BlockActs *k = &a->blocks[i];
        SPAN(k->ln1, N * C);
        SPAN(k->ln1_mean, N);
        SPAN(k->ln1_rstd, N);
        SPAN(k->qkv, N * 3 * C);
        SPAN(k->att, B * NH * T * T);
        SPAN(k->atty, N * C);
        SPAN(k->res2, N * C);
        SPAN(k->ln2, N * C);
        SPAN(k->ln2_mean, N);
        SPAN(k->ln2_rstd, N);
        SPAN(k->fch, N * 4 * C);
        SPAN(k->fch_gelu, N * 4 * C);
        SPAN(k->out, N * C);
    }
    if (a->spec.has_head) {
        SPAN(a->lnf, N * C);
        SPAN(a->lnf_mean, N);
        SPAN(a->lnf_rstd, N);
        SPAN(a->probs, N * V);
        SPAN(a->losses, N);
    }
    if (a->weights) {
        size_t lo[2], cnt[2];
        int k = module_weight_spans(pl, &a->spec, lo, cnt);
        for (int i = 0; i < k; i++) SPAN(a->weights + lo[i], cnt[i]);
    }
#undef SPAN
    return n;
}

void acts_state_header_write(float dst[ACTS_STATE_HEADER], ActsStateHeader h) {
    int32_t head[ACTS_STATE_HEADER - 1] = {h.B, h.T, h.have_targets};
    memcpy(dst, head, sizeof head);
    dst[ACTS_STATE_HEADER - 1] = h.loss;
}

ActsStateHeader acts_state_header_read(const float src[ACTS_STATE_HEADER], int cap_B,
                                       int cap_T, const char *who) {
    int32_t head[ACTS_STATE_HEADER - 1];
    memcpy(head, src, sizeof head);
    if (head[0] < 0 || head[0] > cap_B || head[1] < 0 || head[1] > cap_T)
        die("%s: saved batch %dx%d exceeds the %dx%d of these activations", who, head[0],
            head[1], cap_B, cap_T);
    ActsStateHeader h = {head[0], head[1], head[2], src[ACTS_STATE_HEADER - 1]};
    return h;
}

static StateSpan *state_spans_alloc(const ModuleActs *a) {
    int nb = a->spec.block_hi - a->spec.block_lo;
    return xmalloc((size_t)(3 + 13 * nb + 5 + 2) * sizeof(StateSpan));
}

size_t module_acts_state_floats(const ParamLayout *pl, const ModuleActs *a) {
    StateSpan *s = state_spans_alloc(a);
    int n = acts_state_spans(pl, a, s);
    size_t total = ACTS_STATE_HEADER;
    for (int i = 0; i < n; i++) total += s[i].n;
    free(s);
    return total;
}

void module_acts_export(const ParamLayout *pl, const ModuleActs *a, float *dst) {
    acts_state_header_write(dst, (ActsStateHeader){a->cur_B, a->cur_T, a->have_targets,
                                                   a->loss});
    dst += ACTS_STATE_HEADER;
    StateSpan *s = state_spans_alloc(a);
    int n = acts_state_spans(pl, a, s);
    for (int i = 0; i < n; i++) {
        memcpy(dst, s[i].p, s[i].n * 4);
        dst += s[i].n;
    }
    free(s);
}

void module_acts_import(const ParamLayout *pl, ModuleActs *a, const float *src) {
    ActsStateHeader h = acts_state_header_read(src, a->B, a->T, "module_acts_import");
    a->cur_B = h.B;
    a->cur_T = h.T;
    a->have_targets = h.have_targets;
    a->loss = h.loss;
    src += ACTS_STATE_HEADER;
    StateSpan *s = state_spans_alloc(a);
    int n = acts_state_spans(pl, a, s);
    for (int i = 0; i < n; i++) {
        memcpy(s[i].p, src, s[i].n * 4);
        src += s[i].n;
    }
    free(s);
}

float module_loss(const ModuleActs *a) { return a->loss; }

/* Pointer to tensor `which` of block l in a parameter-shaped buffer. */
static float *bt(const ParamLayout *pl, const float *buf, int l, int which) {
    return (float *)buf + pl->tensors[tensor_index_block(l, which)].offset;
}

static void block_forward(const ParamLayout *pl, const float *p, int l,
                          BlockActs *k, const float *x, float *att_scratch, int B,
                          int T) {
    int C = pl->cfg.n_embd, NH = pl->cfg.n_head, N = B * T;
    layernorm_forward(k->ln1, k->ln1_mean, k->ln1_rstd, x,
                      bt(pl, p, l, BT_LN1_W), bt(pl, p, l, BT_LN1_B), N, C);
    matmul_forward(k->qkv, k->ln1, bt(pl, p, l, BT_ATTN_W),
                   bt(pl, p, l, BT_ATTN_B), N, C, 3 * C);
    attention_forward(k->atty, k->att, att_scratch, k->qkv, B, T, C, NH);
    matmul_forward_residual(k->res2, k->atty, bt(pl, p, l, BT_ATTNPROJ_W),
                            bt(pl, p, l, BT_ATTNPROJ_B), x, N, C, C);
    layernorm_forward(k->ln2, k->ln2_mean, k->ln2_rstd, k->res2,
                      bt(pl, p, l, BT_LN2_W), bt(pl, p, l, BT_LN2_B), N, C);
    matmul_forward(k->fch, k->ln2, bt(pl, p, l, BT_FC_W),
                   bt(pl, p, l, BT_FC_B), N, C, 4 * C);
    gelu_forward(k->fch_gelu, k->fch, N * 4 * C);
    matmul_forward_residual(k->out, k->fch_gelu, bt(pl, p, l, BT_FCPROJ_W),
                            bt(pl, p, l, BT_FCPROJ_B), k->res2, N, 4 * C, C);
}

const float *module_forward(const ParamLayout *pl, const float *params,
                            const ModuleSpec *m, ModuleActs *a,
                            const int32_t *tokens, const float *x_in,
                            const int32_t *targets, int B, int T) {
    int C = pl->cfg.n_embd, V = pl->cfg.vocab_size;
    size_t N = (size_t)B * T;
    if (B > a->B || T > a->T)
        die("module_forward: batch %dx%d exceeds the %dx%d the activations "
            "were sized for", B, T, a->B, a->T);
    a->cur_B = B;
    a->cur_T = T;
    if (a->weights) {
        size_t lo[2], n[2];
        int k = module_weight_spans(pl, m, lo, n);
        for (int i = 0; i < k; i++)
            memcpy(a->weights + lo[i], params + lo[i], n[i] * sizeof(float));
    }
    if (m->has_embed) {
        memcpy(a->tokens, tokens, N * sizeof(int32_t));
        embedding_forward(a->input, tokens,
                          params + pl->tensors[tensor_index_wte()].offset,
                          params + pl->tensors[tensor_index_wpe()].offset, B,
                          T, C);
    } else if (x_in != a->input) {
        memcpy(a->input, x_in, N * C * sizeof(float));
    }
    const float *x = a->input;
    for (int l = m->block_lo; l < m->block_hi; l++) {
        BlockActs *k = &a->blocks[l - m->block_lo];
        block_forward(pl, params, l, k, x, a->att_scratch, B, T);
        x = k->out;
    }
    if (!m->has_head) return x;
    int lw = tensor_index_lnf_w(pl);
    layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, x,
                      params + pl->tensors[lw].offset,
                      params + pl->tensors[lw + 1].offset, (int)N, C);
    logits_forward(a->probs, a->lnf,
                   params + pl->tensors[tensor_index_wte()].offset, (int)N, C,
                   V);
    a->have_targets = targets != NULL;
    softmax_crossentropy_forward(a->probs, a->losses, targets, (int)N, V);
    if (targets) {
        memcpy(a->targets, targets, N * sizeof(int32_t));
        double sum = 0.0; /* double: a mean over many tokens */
        for (size_t i = 0; i < N; i++) sum += a->losses[i];
        a->loss = (float)(sum / (double)N);
    }
    return a->probs;
}

/* Backward of block l, in place: dresid holds the gradient of the block
 * output on entry and of the block input x on exit. Each branch's
 * LayerNorm backward adds its share into it, after the products that read
 * the incoming gradient: out = res2 + mlp(res2) gives d res2 = dout +
 * (mlp path), res2 = x + attn(x) gives dx = d res2 + (attention path). */
static void block_backward(const ParamLayout *pl, const float *p, float *g,
                           int l, const BlockActs *k, const float *x,
                           float *dresid, ModuleActs *a) {
    int C = pl->cfg.n_embd, NH = pl->cfg.n_head;
    int B = a->cur_B, T = a->cur_T, N = B * T;
    /* MLP branch: out = res2 + proj(gelu(fc(ln2(res2)))). Fresh scratch is
     * overwritten (beta 0, GELU in place), not zeroed and accumulated into:
     * the same numbers, less memory traffic. */
    matmul_backward_input(a->d_4c, dresid, bt(pl, p, l, BT_FCPROJ_W), N, 4 * C, C, 0.0f);
    matmul_backward_weight(bt(pl, g, l, BT_FCPROJ_W), bt(pl, g, l, BT_FCPROJ_B), dresid,
                           k->fch_gelu, N, 4 * C, C);
    gelu_backward(a->d_4c, bt(pl, g, l, BT_FC_B), k->fch, k->fch_gelu, a->d_4c, N, 4 * C);
    matmul_backward_input(a->d_c, a->d_4c, bt(pl, p, l, BT_FC_W), N, C, 4 * C, 0.0f);
    matmul_backward_weight(bt(pl, g, l, BT_FC_W), NULL, a->d_4c, k->ln2, N, C, 4 * C);
    layernorm_backward(dresid, bt(pl, g, l, BT_LN2_W), bt(pl, g, l, BT_LN2_B),
                       a->d_c, k->res2, bt(pl, p, l, BT_LN2_W), k->ln2_mean,
                       k->ln2_rstd, N, C);
    /* attention branch: res2 = x + proj(attn(qkv(ln1(x)))) */
    matmul_backward_input(a->d_c, dresid, bt(pl, p, l, BT_ATTNPROJ_W), N, C, C, 0.0f);
    matmul_backward_weight(bt(pl, g, l, BT_ATTNPROJ_W), bt(pl, g, l, BT_ATTNPROJ_B), dresid,
                           k->atty, N, C, C);
    attention_backward(a->d_3c, a->att_scratch, a->d_c, k->qkv, k->att, B, T, C, NH);
    matmul_backward_input(a->d_c, a->d_3c, bt(pl, p, l, BT_ATTN_W), N, C, 3 * C, 0.0f);
    matmul_backward_weight(bt(pl, g, l, BT_ATTN_W), bt(pl, g, l, BT_ATTN_B), a->d_3c,
                           k->ln1, N, C, 3 * C);
    layernorm_backward(dresid, bt(pl, g, l, BT_LN1_W), bt(pl, g, l, BT_LN1_B),
                       a->d_c, x, bt(pl, p, l, BT_LN1_W), k->ln1_mean,
                       k->ln1_rstd, N, C);
}

void module_backward(const ParamLayout *pl, const float *params, float *grads,
                     const ModuleSpec *m, ModuleActs *a, const float *dout,
                     float loss_scale, float *dx_in) {
    int C = pl->cfg.n_embd, V = pl->cfg.vocab_size;
    int N = a->cur_B * a->cur_T;
    if (a->weights) params = a->weights; /* the weights this forward used */
    size_t NC = (size_t)N * C;
    int nb = m->block_hi - m->block_lo;
    const float *last = nb > 0 ? a->blocks[nb - 1].out : a->input;
    /* d_res_a carries the gradient of the residual stream downwards. */
    float *dcur = a->d_res_a;
    if (m->has_head) {
        if (!a->have_targets)
            die("module_backward: the head's last forward had no targets");
        const float *wte = params + pl->tensors[tensor_index_wte()].offset;
        float *dwte = grads + pl->tensors[tensor_index_wte()].offset;
        int lw = tensor_index_lnf_w(pl);
        softmax_crossentropy_backward(a->probs, a->probs, a->targets,
                                      loss_scale, N, V);
        memset(a->d_c, 0, NC * sizeof(float));
        logits_backward(a->d_c, dwte, a->probs, a->lnf, wte, N, C, V);
        memset(dcur, 0, NC * sizeof(float));
        layernorm_backward(dcur, grads + pl->tensors[lw].offset,
                           grads + pl->tensors[lw + 1].offset, a->d_c, last,
                           params + pl->tensors[lw].offset, a->lnf_mean,
                           a->lnf_rstd, N, C);
        a->have_targets = 0; /* dlogits overwrote the probabilities */
    } else {
        memcpy(dcur, dout, NC * sizeof(float));
    }
    for (int i = nb - 1; i >= 0; i--) {
        const float *x = i > 0 ? a->blocks[i - 1].out : a->input;
        block_backward(pl, params, grads, m->block_lo + i, &a->blocks[i], x, dcur, a);
    }
    if (m->has_embed) {
        embedding_backward(grads + pl->tensors[tensor_index_wte()].offset,
                           grads + pl->tensors[tensor_index_wpe()].offset,
                           dcur, a->tokens, a->cur_B, a->cur_T, C);
    } else if (dx_in) {
        memcpy(dx_in, dcur, NC * sizeof(float));
    }
}
