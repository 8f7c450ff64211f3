/* sample.c - see sample.h. */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "cli.h"
#include "common.h"
#include "ops.h"
#include "rng.h"
#include "settings.h"
#include "weights.h"

/* Draws a token from probabilities p[V] with temperature and top-k. */
static int32_t draw_token(const float *p, int V, const SampleSpec *s, Rng *r,
                          double *w) {
    if (s->temperature <= 0.0) {
        int best = 0;
        for (int j = 1; j < V; j++) if (p[j] > p[best]) best = j;
        return best;
    }
    /* Keep the k most likely: find the k-th largest probability. */
    float cut = 0.0f;
    if (s->top_k > 0 && s->top_k < V) {
        float *sorted = xmalloc((size_t)V * sizeof(float));
        memcpy(sorted, p, (size_t)V * sizeof(float));
        for (int i = 0; i < s->top_k; i++) { /* partial selection sort */
            int m = i;
            for (int j = i + 1; j < V; j++) if (sorted[j] > sorted[m]) m = j;
            float t = sorted[i]; sorted[i] = sorted[m]; sorted[m] = t;
        }
        cut = sorted[s->top_k - 1];
        free(sorted);
    }
    /* p^(1/temperature) is softmax(logits / temperature), renormalised. */
    double total = 0.0;
    for (int j = 0; j < V; j++) {
        w[j] = (p[j] >= cut && p[j] > 0.0f) ? pow(p[j], 1.0 / s->temperature) : 0.0;
        total += w[j];
    }
    double u = rng_uniform(r) * total, acc = 0.0;
    for (int j = 0; j < V; j++) {
        acc += w[j];
        if (u < acc) return j;
    }
    for (int j = V - 1; j >= 0; j--) if (w[j] > 0) return j;
    return 0;
}

void sample_generate(const ParamLayout *pl, const float *params,
                     const int32_t *prompt, int n_prompt, const SampleSpec *s,
                     int is_bytes, FILE *f) {
    int T = pl->cfg.block_size, V = pl->cfg.vocab_size;
    ModuleSpec whole = {1, 0, pl->cfg.n_layer, 1};
    ModuleActs *a = module_acts_create(pl, &whole, 1, T);
    int cap = n_prompt + s->n_new + 1;
    int32_t *seq = xmalloc((size_t)cap * sizeof(int32_t));
    int n = 0;
    if (n_prompt > 0) {
        memcpy(seq, prompt, (size_t)n_prompt * sizeof(int32_t));
        n = n_prompt;
    } else {
        seq[n++] = 0; /* an empty prompt starts from token 0 */
    }
    double *w = xmalloc((size_t)V * sizeof(double));
    Rng r;
    rng_seed(&r, hash_u64(s->seed, 0x73616d70ull, 0, 0));
    for (int i = 0; i < s->n_new; i++) {
        int ctx = n < T ? n : T;
        const float *probs = module_forward(pl, params, &whole, a, seq + n - ctx,
                                            NULL, NULL, 1, ctx);
        int32_t tok = draw_token(probs + (size_t)(ctx - 1) * V, V, s, &r, w);
        seq[n++] = tok;
        if (is_bytes) fputc((unsigned char)tok, f);
        else fprintf(f, "%s%d", i ? " " : "", tok);
    }
    fputc('\n', f);
    fflush(f);
    free(w);
    free(seq);
    module_acts_free(a);
}

void sample_from_config(const ParamLayout *pl, const float *params, const Config *c,
                        int is_bytes, FILE *f) {
    /* a text prompt needs a byte-level model */
    int n_prompt = is_bytes ? (int)strlen(c->prompt) : 0;
    int32_t *prompt = xmalloc((size_t)(n_prompt + 1) * sizeof(int32_t));
    for (int i = 0; i < n_prompt; i++) prompt[i] = (unsigned char)c->prompt[i];
    SampleSpec s = {c->sample_tokens, c->temperature, c->top_k, (uint64_t)c->seed};
    if (is_bytes) fputs(c->prompt, f);
    sample_generate(pl, params, prompt, n_prompt, &s, is_bytes, f);
    free(prompt);
}

int cmd_sample(int argc, char **argv) {
    Config c;
    if (cli_parse(argc, argv, &c, "sample",
                  "Generates text from the model a run saved in <out>/model.bin, or from\n"
                  "a checkpoint (checkpoint=DIR: a step, ckpt or run directory).\n"
                  "Keys used: out, checkpoint, prompt, sample_tokens, temperature, top_k,\n"
                  "seed.") != 0)
        return 0;
    backend_thread_init();
    GPTConfig g;
    float *params;
    if (c.checkpoint[0]) {
        ckpt_load_model(c.checkpoint, &g, &params, NULL, 0, NULL);
    } else {
        char path[1100];
        snprintf(path, sizeof path, "%s/model.bin", c.out);
        weights_load(path, &g, &params);
    }
    ParamLayout pl;
    param_layout_init(&pl, &g);
    sample_from_config(&pl, params, &c, g.vocab_size == 256, stdout);
    free(params);
    param_layout_free(&pl);
    return 0;
}
