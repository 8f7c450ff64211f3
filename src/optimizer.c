/* optimizer.c - see optimizer.h. */
#include "optimizer.h"

#include <math.h>
#include <string.h>

#include "ops.h"

void optimizer_spec_from_config(OptimizerSpec *o, const Config *c) {
    o->adam = strcmp(c->optimizer, "adamw") == 0;
    o->beta1 = (float)c->beta1;
    o->beta2 = (float)c->beta2;
    o->eps = (float)c->eps;
    o->weight_decay = (float)c->weight_decay;
    o->momentum = (float)c->momentum;
}

/* Each reads g * gs (gs: the clipping scale), updates, and zeroes g: one
 * pass over the gradient instead of three. They run over every parameter
 * each step, so they are vector clones (ops.h). */
VECTOR_CLONES static void adamw_tensor(float *p, float *g, float *m, float *v, size_t n,
                                       const OptimizerSpec *o, float gs, float lr, float wd,
                                       long t) {
    float c1 = 1.0f - powf(o->beta1, (float)t);
    float c2 = 1.0f - powf(o->beta2, (float)t);
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gs;
        g[i] = 0.0f;
        m[i] = o->beta1 * m[i] + (1.0f - o->beta1) * gi;
        v[i] = o->beta2 * v[i] + (1.0f - o->beta2) * gi * gi;
        float mhat = m[i] / c1, vhat = v[i] / c2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + o->eps) + wd * p[i]);
    }
}

VECTOR_CLONES static void sgd_tensor(float *p, float *g, float *m, size_t n,
                                     const OptimizerSpec *o, float gs, float lr, float wd) {
    for (size_t i = 0; i < n; i++) {
        float d = g[i] * gs + wd * p[i];
        g[i] = 0.0f;
        if (o->momentum > 0.0f) {
            m[i] = o->momentum * m[i] + d;
            d = m[i];
        }
        p[i] -= lr * d;
    }
}

void optimizer_update(const ParamLayout *pl, const OptimizerSpec *o,
                      float *params, float *grads, float *m, float *v,
                      int first, int last, float grad_scale, float lr, long t) {
    for (int i = first; i < last; i++) {
        const TensorInfo *ti = &pl->tensors[i];
        size_t off = ti->offset;
        float wd = ti->is_matrix ? o->weight_decay : 0.0f;
        if (o->adam)
            adamw_tensor(params + off, grads + off, m + off, v + off,
                         ti->numel, o, grad_scale, lr, wd, t);
        else
            sgd_tensor(params + off, grads + off, m + off, ti->numel, o, grad_scale, lr,
                       wd);
    }
}

double lr_at_step(const Config *c, long step) {
    if (step < c->warmup) return c->lr * (double)(step + 1) / (double)c->warmup;
    if (strcmp(c->lr_schedule, "constant") == 0 || c->steps <= c->warmup)
        return c->lr;
    double progress = (double)(step - c->warmup) / (double)(c->steps - c->warmup);
    if (progress > 1.0) progress = 1.0;
    double floor = c->lr * c->min_lr_ratio;
    return floor + 0.5 * (c->lr - floor) * (1.0 + cos(3.14159265358979323846 * progress));
}

/* In 8 interleaved double lanes, added left to right at the end: a fixed
 * order the compiler can vectorise. */
VECTOR_CLONES double grad_sumsq(const float *g, size_t lo, size_t hi) {
    enum { L = 8 };
    double acc[L] = {0};
    size_t i = lo;
    for (; i + L <= hi; i += L)
        for (int k = 0; k < L; k++) acc[k] += (double)g[i + k] * (double)g[i + k];
    for (int k = 0; i < hi; i++, k++) acc[k] += (double)g[i] * (double)g[i];
    double s = 0.0;
    for (int k = 0; k < L; k++) s += acc[k];
    return s;
}

float clip_scale(double norm, double clip) {
    if (clip <= 0.0 || norm <= clip) return 1.0f;
    return (float)(clip / norm);
}

/* Blocks of 1024 are screened without a branch per element (x - x is 0
 * for finite x, NaN otherwise), then a block that has one is searched. */
VECTOR_CLONES long first_nonfinite(const float *x, size_t lo, size_t hi) {
    enum { BLOCK = 1024 };
    for (size_t b = lo; b < hi; b += BLOCK) {
        size_t e = hi - b < BLOCK ? hi : b + BLOCK;
        float probe = 0.0f;
        for (size_t i = b; i < e; i++) probe += x[i] - x[i];
        if (probe == 0.0f) continue;
        for (size_t i = b; i < e; i++)
            if (!isfinite(x[i])) return (long)i;
    }
    return -1;
}
