/* sample.h - text generation from a trained model. */
#ifndef OURO_SAMPLE_H
#define OURO_SAMPLE_H

#include <stdint.h>
#include <stdio.h>

#include "model.h"
#include "settings.h"

typedef struct {
    int n_new;          /* tokens to generate */
    double temperature; /* 0: greedy */
    int top_k;          /* 0: whole vocabulary */
    uint64_t seed;
} SampleSpec;

/* Generates s->n_new tokens after the prompt; writes them to f as bytes
 * (is_bytes) or as space-separated token ids. Deterministic in seed. */
void sample_generate(const ParamLayout *pl, const float *params,
                     const int32_t *prompt, int n_prompt, const SampleSpec *s,
                     int is_bytes, FILE *f);

/* Samples with the settings of a config (prompt, sample_tokens,
 * temperature, top_k, seed): a byte-level model continues the prompt,
 * which is printed first; other models start from token 0. */
void sample_from_config(const ParamLayout *pl, const float *params, const Config *c,
                        int is_bytes, FILE *f);

/* `ouroboros sample`: generates from <out>/model.bin. */
int cmd_sample(int argc, char **argv);

#endif
