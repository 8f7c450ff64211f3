/* test_overfit.c - a small model memorises one batch.
 *
 * The end-to-end check that forward, backward and the parameter layout add
 * up to something that learns: a 2-layer byte-level model trained with a
 * plain Adam loop (local to this test, so it does not depend on the
 * project's optimizer) on ONE repeated random batch must drive its mean
 * loss from ~ln(256) to almost zero, and keep it there. A coarse check by
 * design: a broken loss, update path or gradient stalls or wanders; the
 * exact gradient checks are test_ops and test_model_grad.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "model.h"
#include "rng.h"

#define STEPS 300
#define PRINT_EVERY 50
#define LR 1e-2
#define BETA1 0.9
#define BETA2 0.999
#define ADAM_EPS 1e-8
/* At initialisation (weights N(0, 0.02)) the logits are near zero, so the
 * loss is ln(256) = 5.545 up to small noise. */
#define INIT_TOL 0.1
/* Memorised: a mean probability of the right byte above 95%... */
#define FINAL_LOSS_MAX 0.05
/* ...from this step on, and staying there. A correct model gets there in
 * about 50 steps; a gradient that is merely roughly right (a dropped
 * residual term, a wrong GELU derivative) still learns, but slowly or
 * unstably, and is caught here rather than by the final loss alone. */
#define SETTLED_STEP 100

typedef struct {
    float *m, *v;
    size_t n;
    int t;
} Adam;

static void adam_step(Adam *a, float *params, const float *grads) {
    a->t++;
    double c1 = 1.0 - pow(BETA1, a->t), c2 = 1.0 - pow(BETA2, a->t);
    for (size_t i = 0; i < a->n; i++) {
        double g = grads[i];
        a->m[i] = (float)(BETA1 * a->m[i] + (1.0 - BETA1) * g);
        a->v[i] = (float)(BETA2 * a->v[i] + (1.0 - BETA2) * g * g);
        double mhat = a->m[i] / c1, vhat = a->v[i] / c2;
        params[i] -= (float)(LR * mhat / (sqrt(vhat) + ADAM_EPS));
    }
}

int main(void) {
    GPTConfig cfg = {.n_layer = 2, .n_head = 2, .n_embd = 32,
                     .block_size = 16, .vocab_size = 256};
    int B = 4, T = 16, N = B * T;
    ParamLayout pl;
    param_layout_init(&pl, &cfg);
    float *params = xcalloc(pl.n_params, sizeof(float));
    float *grads = xcalloc(pl.n_params, sizeof(float));
    param_init(&pl, params, 1337, 0, pl.n_tensors);
    Adam adam = {xcalloc(pl.n_params, sizeof(float)),
                 xcalloc(pl.n_params, sizeof(float)), pl.n_params, 0};

    /* one batch of random bytes; targets are the next byte */
    Rng r;
    rng_seed(&r, 42);
    int32_t *tokens = xmalloc(sizeof(int32_t) * N);
    int32_t *targets = xmalloc(sizeof(int32_t) * N);
    for (int b = 0; b < B; b++) {
        int32_t prev = (int32_t)(rng_next(&r) % 256);
        for (int t = 0; t < T; t++) {
            int32_t next = (int32_t)(rng_next(&r) % 256);
            tokens[b * T + t] = prev;
            targets[b * T + t] = next;
            prev = next;
        }
    }

    ModuleSpec whole = {1, 0, cfg.n_layer, 1};
    ModuleActs *acts = module_acts_create(&pl, &whole, B, T);
    double t0 = now_seconds();
    float first = 0.0f, loss = 0.0f, worst_settled = 0.0f;
    for (int step = 0; step <= STEPS; step++) {
        module_forward(&pl, params, &whole, acts, tokens, NULL, targets, B, T);
        loss = module_loss(acts);
        if (step == 0) first = loss;
        if (step >= SETTLED_STEP && !(loss <= worst_settled)) worst_settled = loss;
        if (step % PRINT_EVERY == 0) printf("step %3d  loss %.5f\n", step, loss);
        if (step == STEPS) break; /* the last loss is after STEPS updates */
        for (size_t i = 0; i < pl.n_params; i++) grads[i] = 0.0f;
        module_backward(&pl, params, grads, &whole, acts, NULL, 1.0f / (float)N, NULL);
        adam_step(&adam, params, grads);
    }

    int fails = 0;
    double init_err = fabs(first - log(256.0));
    int ok = init_err <= INIT_TOL;
    fails += !ok;
    printf("%s initial loss %.4f vs ln(256) %.4f  err=%.2e tol=%.0e\n",
           ok ? "PASS" : "FAIL", first, log(256.0), init_err, INIT_TOL);
    ok = loss < FINAL_LOSS_MAX; /* NaN fails */
    fails += !ok;
    printf("%s final loss after %d Adam steps %.5f  max=%.2f\n",
           ok ? "PASS" : "FAIL", STEPS, loss, FINAL_LOSS_MAX);
    ok = worst_settled < FINAL_LOSS_MAX;
    fails += !ok;
    printf("%s worst loss over steps %d..%d %.5f  max=%.2f\n", ok ? "PASS" : "FAIL",
           SETTLED_STEP, STEPS, worst_settled, FINAL_LOSS_MAX);
    printf("test_overfit: %s (%.1f s, %zu params)\n", fails ? "FAILED" : "passed",
           now_seconds() - t0, pl.n_params);

    module_acts_free(acts);
    free(adam.m); free(adam.v); free(params); free(grads);
    free(tokens); free(targets);
    param_layout_free(&pl);
    return fails ? 1 : 0;
}
