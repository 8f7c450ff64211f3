/* partition.c - see partition.h. */
#include "partition.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

double partition_block_cost(const GPTConfig *g, int T) {
    double C = g->n_embd;
    return 6.0 * 12.0 * C * C + 12.0 * T * C;
}

double partition_head_cost(const GPTConfig *g) {
    return 6.0 * g->vocab_size * (double)g->n_embd + 5.0 * g->vocab_size;
}

double partition_embed_cost(const GPTConfig *g) { return 3.0 * g->n_embd; }

ModuleSpec partition_module(const Partition *p, int m) {
    int lo = 0;
    for (int i = 0; i < m; i++) lo += p->blocks[i];
    ModuleSpec s = {m == 0, lo, lo + p->blocks[m], m == p->K - 1};
    return s;
}

double partition_rank_cost(const Partition *p, const GPTConfig *g, int r) {
    double b = partition_block_cost(g, g->block_size);
    if (p->K == 1)
        return partition_embed_cost(g) + p->blocks[0] * b + partition_head_cost(g);
    if (r > 0) return p->blocks[r] * b;
    return partition_embed_cost(g) + partition_head_cost(g) +
           (p->blocks[0] + p->blocks[p->K - 1]) * b;
}

static void check_modules(const GPTConfig *g, int K) {
    if (K < 1 || K > PARTITION_MAX_MODULES)
        die("config: %d modules is outside 1..%d", K, PARTITION_MAX_MODULES);
    if (K > 2 && g->n_layer < K - 2)
        die("config: n_layer=%d is too few blocks for %d modules on %d ranks: each of "
            "the %d middle ranks needs at least one block; use fewer ranks or more layers",
            g->n_layer, K, K - 1, K - 2);
}

/* Tries every number a of blocks on rank 0; the middle ranks share the
 * rest as evenly as possible. Rank 0's blocks all go to the last module,
 * whose gradient is never delayed: blocks in module 0 would see gradients
 * K-1 steps old. Measured on the default corpus (4 layers, 2 ranks, 400
 * steps): partition 0,2,2 ends 2.0% above bp's validation loss, 1,2,1
 * ends 9.3% above. Under `ouroboros` blocks in module 0 would let rank 0
 * hide that module's delayed backward behind the middle ranks' forwards;
 * partition= trades that speed for accuracy by hand. */
void partition_auto(Partition *p, const GPTConfig *g, int K) {
    check_modules(g, K);
    memset(p, 0, sizeof *p);
    p->K = K;
    int L = g->n_layer;
    if (K == 1) { p->blocks[0] = L; return; }
    if (K == 2) { p->blocks[1] = L; return; }
    int mids = K - 2;
    double best = -1.0;
    for (int a = 0; a <= L - mids; a++) {
        Partition q;
        memset(&q, 0, sizeof q);
        q.K = K;
        q.blocks[K - 1] = a;
        int rest = L - a;
        for (int i = 0; i < mids; i++) q.blocks[1 + i] = rest / mids + (i < rest % mids);
        double worst = 0.0;
        for (int r = 0; r < K - 1; r++) {
            double c = partition_rank_cost(&q, g, r);
            if (c > worst) worst = c;
        }
        if (best < 0.0 || worst < best) {
            best = worst;
            *p = q;
        }
    }
}

void partition_parse(Partition *p, const char *text, const GPTConfig *g, int K) {
    check_modules(g, K);
    memset(p, 0, sizeof *p);
    p->K = K;
    int n = 0, sum = 0;
    const char *s = text;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > 100000)
            die("config: partition=%s: '%s' is not a block count", text, s);
        if (n >= K)
            die("config: partition=%s has more than %d entries; it needs one per module "
                "(K=%d for this rank count)", text, K, K);
        p->blocks[n++] = (int)v;
        sum += (int)v;
        s = end;
        if (*s == ',') s++;
        else if (*s) die("config: partition=%s: expected ',' at '%s'", text, s);
    }
    if (n != K)
        die("config: partition=%s has %d entries; it needs %d, one per module (%d ranks "
            "per pipeline hold %d modules)", text, n, K, K > 1 ? K - 1 : 1, K);
    if (sum != g->n_layer)
        die("config: partition=%s sums to %d blocks; the model has n_layer=%d", text, sum,
            g->n_layer);
    for (int m = 1; m < K - 1; m++)
        if (p->blocks[m] < 1)
            die("config: partition=%s gives module %d no block; every middle module "
                "needs at least one (rank %d would have nothing to do)", text, m + 1, m);
}

void partition_format(const Partition *p, char *out, size_t outlen) {
    size_t used = 0;
    out[0] = '\0';
    for (int m = 0; m < p->K && used < outlen; m++)
        used += (size_t)snprintf(out + used, outlen - used, "%s%d", m ? "," : "",
                                 p->blocks[m]);
}
