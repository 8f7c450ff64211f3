/* optimizer.h - SGD (with optional momentum) and AdamW over a slice of
 * tensors, the learning-rate schedule, and gradient-norm helpers.
 *
 * State (Adam m and v, or SGD momentum in m) has the parameter layout, so
 * a module's optimizer state is the same slice as its parameters. Each
 * module counts its own updates (t), because under delayed gradients
 * modules start updating at different iterations. */
#ifndef OURO_OPTIMIZER_H
#define OURO_OPTIMIZER_H

#include <stddef.h>

#include "settings.h"
#include "model.h"

typedef struct {
    int adam; /* 1: AdamW, 0: SGD */
    float beta1, beta2, eps, weight_decay, momentum;
} OptimizerSpec;

void optimizer_spec_from_config(OptimizerSpec *o, const Config *c);

/* Applies one update to tensors [first, last) from the gradient times
 * grad_scale (the clipping scale; 1 for none), then zeroes the gradient,
 * ready for the next step. t is the 1-based count of updates of this slice
 * (Adam's bias correction). m and v are parameter-shaped (v unused by
 * SGD). */
void optimizer_update(const ParamLayout *pl, const OptimizerSpec *o,
                      float *params, float *grads, float *m, float *v,
                      int first, int last, float grad_scale, float lr, long t);

/* Learning rate of (0-based) step: linear warm-up to lr over `warmup`
 * steps, then constant or cosine decay to lr*min_lr_ratio at `steps`. */
double lr_at_step(const Config *c, long step);

/* Sum of squares of g[lo, hi), accumulated in double in index order. */
double grad_sumsq(const float *g, size_t lo, size_t hi);

/* Scale factor for clipping by global norm: min(1, clip / norm); 1 when
 * clip <= 0. */
float clip_scale(double norm, double clip);

/* Index of the first non-finite value in x[lo, hi), or -1. */
long first_nonfinite(const float *x, size_t lo, size_t hi);

#endif
