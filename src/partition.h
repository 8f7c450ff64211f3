/* partition.h - how the n_layer blocks are split into K modules.
 *
 * The cost model counts training FLOPs per token (forward + backward,
 * 3x the forward): a block costs 6*12*C^2 + 12*T*C, the head (tied V
 * projection and softmax) 6*V*C + 5*V, the embedding 3*C. Rank 0 carries
 * module 0 and module K-1, so the head's cost, which grows with the
 * vocabulary, is balanced against the blocks of the middle ranks. */
#ifndef OURO_PARTITION_H
#define OURO_PARTITION_H

#include <stddef.h>

#include "model.h"

typedef struct {
    int K;
    int blocks[64];   /* blocks per module; K <= 64 */
} Partition;

#define PARTITION_MAX_MODULES 64

double partition_block_cost(const GPTConfig *g, int T);
double partition_head_cost(const GPTConfig *g);
double partition_embed_cost(const GPTConfig *g);

/* Balances per-rank cost; dies if the model has too few blocks. */
void partition_auto(Partition *p, const GPTConfig *g, int K);
/* Parses "2,3,3,2"; dies with the reason if it is not a valid split of
 * g->n_layer into K modules. */
void partition_parse(Partition *p, const char *text, const GPTConfig *g, int K);

/* Module spec of module m. */
ModuleSpec partition_module(const Partition *p, int m);
/* Estimated cost (FLOPs per token) of pipeline rank r. */
double partition_rank_cost(const Partition *p, const GPTConfig *g, int r);
/* "2,3,3,2" */
void partition_format(const Partition *p, char *out, size_t outlen);

#endif
