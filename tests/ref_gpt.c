/* ref_gpt.c - see ref_gpt.h. */
#include "ref_gpt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REF_LN_EPS 1e-5
#define REF_PI 3.14159265358979323846

void ref_embedding_forward(double *out, const int32_t *tokens,
                           const double *wte, const double *wpe, int B, int T,
                           int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const double *e = wte + (size_t)tokens[b * T + t] * C;
            const double *p = wpe + (size_t)t * C;
            double *o = out + ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
        }
}

void ref_layernorm_forward(double *y, double *mean, double *rstd,
                           const double *x, const double *w, const double *b,
                           int N, int C) {
    for (int i = 0; i < N; i++) {
        const double *xi = x + (size_t)i * C;
        double m = 0.0;
        for (int c = 0; c < C; c++) m += xi[c];
        m /= C;
        double var = 0.0;
        for (int c = 0; c < C; c++) var += (xi[c] - m) * (xi[c] - m);
        var /= C; /* biased, as GPT-2 */
        double s = 1.0 / sqrt(var + REF_LN_EPS);
        for (int c = 0; c < C; c++)
            y[(size_t)i * C + c] = (xi[c] - m) * s * w[c] + b[c];
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = s;
    }
}

void ref_matmul_forward(double *y, const double *x, const double *W,
                        const double *bias, int N, int IC, int OC) {
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            double acc = bias ? bias[o] : 0.0;
            for (int k = 0; k < IC; k++)
                acc += x[(size_t)i * IC + k] * W[(size_t)k * OC + o];
            y[(size_t)i * OC + o] = acc;
        }
}

/* One head of one sequence: softmax over j <= t of q_t.k_j / sqrt(hs),
 * then the weighted sum of v_j. */
static void ref_attention_head(double *out, double *att, const double *qkv,
                               int T, int C, int hs, int h) {
    double scale = 1.0 / sqrt((double)hs);
    double *w = malloc(sizeof(double) * (size_t)T);
    for (int t = 0; t < T; t++) {
        const double *q = qkv + (size_t)t * 3 * C + h * hs;
        double mx = -INFINITY;
        for (int j = 0; j <= t; j++) {
            const double *k = qkv + (size_t)j * 3 * C + C + h * hs;
            double s = 0.0;
            for (int d = 0; d < hs; d++) s += q[d] * k[d];
            w[j] = s * scale;
            if (w[j] > mx) mx = w[j];
        }
        double sum = 0.0;
        for (int j = 0; j <= t; j++) {
            w[j] = exp(w[j] - mx);
            sum += w[j];
        }
        for (int j = 0; j <= t; j++) w[j] /= sum;
        double *o = out + (size_t)t * C + h * hs;
        for (int d = 0; d < hs; d++) {
            double acc = 0.0;
            for (int j = 0; j <= t; j++)
                acc += w[j] * qkv[(size_t)j * 3 * C + 2 * C + h * hs + d];
            o[d] = acc;
        }
        if (att)
            for (int j = 0; j < T; j++) att[(size_t)t * T + j] = j <= t ? w[j] : 0.0;
    }
    free(w);
}

void ref_attention_forward(double *out, double *att, const double *qkv, int B,
                           int T, int C, int NH) {
    int hs = C / NH;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            ref_attention_head(out + (size_t)b * T * C,
                               att ? att + ((size_t)b * NH + h) * T * T : NULL,
                               qkv + (size_t)b * T * 3 * C, T, C, hs, h);
}

void ref_gelu_forward(double *y, const double *x, int n) {
    const double k = sqrt(2.0 / REF_PI);
    for (int i = 0; i < n; i++) {
        double u = x[i];
        y[i] = 0.5 * u * (1.0 + tanh(k * (u + 0.044715 * u * u * u)));
    }
}

void ref_residual_forward(double *y, const double *a, const double *b, int n) {
    for (int i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void ref_logits_forward(double *logits, const double *x, const double *wte,
                        int N, int C, int V) {
    for (int i = 0; i < N; i++)
        for (int v = 0; v < V; v++) {
            double acc = 0.0;
            for (int c = 0; c < C; c++)
                acc += x[(size_t)i * C + c] * wte[(size_t)v * C + c];
            logits[(size_t)i * V + v] = acc;
        }
}

void ref_crossentropy_forward(double *probs, double *losses,
                              const double *logits, const int32_t *targets,
                              int N, int V) {
    for (int i = 0; i < N; i++) {
        const double *z = logits + (size_t)i * V;
        double mx = z[0];
        for (int v = 1; v < V; v++)
            if (z[v] > mx) mx = z[v];
        double sum = 0.0;
        for (int v = 0; v < V; v++) sum += exp(z[v] - mx);
        double logsum = mx + log(sum);
        losses[i] = logsum - z[targets[i]];
        if (probs)
            for (int v = 0; v < V; v++)
                probs[(size_t)i * V + v] = exp(z[v] - logsum);
    }
}

/* ---- whole model ---- */

static const double *tensor_at(const ParamLayout *pl, const double *params,
                               int index) {
    return params + pl->tensors[index].offset;
}

/* One transformer block, in place on the residual stream x [N,C]. */
static void ref_block(const ParamLayout *pl, const double *params, int layer,
                      double *x, int B, int T) {
    int C = pl->cfg.n_embd, NH = pl->cfg.n_head, N = B * T;
    const double *p[BT_COUNT];
    for (int w = 0; w < BT_COUNT; w++)
        p[w] = tensor_at(pl, params, tensor_index_block(layer, w));

    double *ln = malloc(sizeof(double) * (size_t)N * C);
    double *qkv = malloc(sizeof(double) * (size_t)N * 3 * C);
    double *att = malloc(sizeof(double) * (size_t)N * C);
    double *proj = malloc(sizeof(double) * (size_t)N * C);
    double *fc = malloc(sizeof(double) * (size_t)N * 4 * C);
    double *act = malloc(sizeof(double) * (size_t)N * 4 * C);

    ref_layernorm_forward(ln, NULL, NULL, x, p[BT_LN1_W], p[BT_LN1_B], N, C);
    ref_matmul_forward(qkv, ln, p[BT_ATTN_W], p[BT_ATTN_B], N, C, 3 * C);
    ref_attention_forward(att, NULL, qkv, B, T, C, NH);
    ref_matmul_forward(proj, att, p[BT_ATTNPROJ_W], p[BT_ATTNPROJ_B], N, C, C);
    ref_residual_forward(x, x, proj, N * C);

    ref_layernorm_forward(ln, NULL, NULL, x, p[BT_LN2_W], p[BT_LN2_B], N, C);
    ref_matmul_forward(fc, ln, p[BT_FC_W], p[BT_FC_B], N, C, 4 * C);
    ref_gelu_forward(act, fc, N * 4 * C);
    ref_matmul_forward(proj, act, p[BT_FCPROJ_W], p[BT_FCPROJ_B], N, 4 * C, C);
    ref_residual_forward(x, x, proj, N * C);

    free(ln); free(qkv); free(att); free(proj); free(fc); free(act);
}

/* Final LayerNorm, tied projection and mean cross-entropy. */
static double ref_head_loss(const ParamLayout *pl, const double *params,
                            const double *x, const int32_t *targets, int N) {
    int C = pl->cfg.n_embd, V = pl->cfg.vocab_size;
    int lnf = tensor_index_lnf_w(pl);
    double *ln = malloc(sizeof(double) * (size_t)N * C);
    double *logits = malloc(sizeof(double) * (size_t)N * V);
    double *losses = malloc(sizeof(double) * (size_t)N);
    ref_layernorm_forward(ln, NULL, NULL, x, tensor_at(pl, params, lnf),
                          tensor_at(pl, params, lnf + 1), N, C);
    ref_logits_forward(logits, ln, tensor_at(pl, params, tensor_index_wte()),
                       N, C, V);
    ref_crossentropy_forward(NULL, losses, logits, targets, N, V);
    double sum = 0.0;
    for (int i = 0; i < N; i++) sum += losses[i];
    free(ln); free(logits); free(losses);
    return sum / N;
}

double ref_gpt_loss(const GPTConfig *cfg, const double *params,
                    const int32_t *tokens, const int32_t *targets, int B,
                    int T) {
    ParamLayout pl;
    param_layout_init(&pl, cfg);
    int C = cfg->n_embd;
    double *x = malloc(sizeof(double) * (size_t)B * T * C);
    ref_embedding_forward(x, tokens,
                          tensor_at(&pl, params, tensor_index_wte()),
                          tensor_at(&pl, params, tensor_index_wpe()), B, T, C);
    for (int l = 0; l < cfg->n_layer; l++) ref_block(&pl, params, l, x, B, T);
    double loss = ref_head_loss(&pl, params, x, targets, B * T);
    free(x);
    param_layout_free(&pl);
    return loss;
}

/* ---- helpers ---- */

void ref_to_double(double *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = src[i];
}

double ref_max_abs(const double *x, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        if (fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}

double ref_rel_err(const float *got, const double *want, size_t n) {
    double err = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        /* NaN must fail the comparison, not vanish in a max */
        if (e > err || e != e) err = e != e ? INFINITY : e;
    }
    double scale = ref_max_abs(want, n);
    return err / (scale > 1e-300 ? scale : 1e-300);
}
