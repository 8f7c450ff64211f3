/* rank.h - one rank's training state, as the executor (pipeline.c) keeps
 * it between and during steps. Shared with checkpoint.c, which saves and
 * restores exactly these fields; anything added here that survives a step
 * boundary belongs in the checkpoint too (see the format in checkpoint.c). */
#ifndef OURO_RANK_H
#define OURO_RANK_H

#include <stdio.h>

#include "backend.h"
#include "inbox.h"
#include "pipeline.h"

typedef struct {
    int m;
    ModuleSpec spec;
    int first_tensor, last_tensor;
    int prev_rank, next_rank; /* world ranks of the neighbour modules, or -1 */
    int n_slots;
    BackendActs **acts;       /* store: n_slots sets; replay: one */
    BackendActs *eval_acts;   /* store: the set evaluation uses */
    long *slot_key;           /* (mb * micro + u) each set holds */
    float **inputs;           /* replay: the stored input of each slot (backend memory) */
    long work_key;            /* replay: which forward acts[0] holds, or -1 */
    long work_version;        /* replay: weights version of that forward */
    float *in_buf, *dout_buf, *dx_buf; /* message buffers (backend memory) */
    int touched;              /* has a gradient to apply this step */
} Mod;

typedef struct {
    long mb;
    int32_t *inputs, *targets;
} BatchSlot;

typedef struct Rank {
    const Plan *plan;
    Transport *tp;
    int rank, replica, prank;
    int n_mods;
    Mod mods[2];
    Backend *be;
    /* The training state where the backend computes on it... */
    float *d_params, *d_grads, *d_opt_m, *d_opt_v;
    /* ...and its host copy, which checkpoints and the end of the run read:
     * the same buffers on the CPU backend, else brought up to date by
     * rank_state_to_host (and pushed back by rank_state_to_device). */
    float *params, *grads, *opt_m, *opt_v;
    float *stage, *d_stage;   /* one activation message: host, backend memory */
    long *tensor_updates;
    long version;             /* bumped by every update */
    int n_ring;
    BatchSlot *ring;
    Inbox inbox;              /* messages received ahead of their step (checkpoints) */
    double t_start;           /* when this rank started, on its own clock */
    double compute_s;
    double loss;              /* this replica's share of the step's mean loss */
    int have_loss;
    FILE *trace;
} Rank;

static inline int world_rank_of(const Rank *r, int pipe_rank) {
    return r->replica * r->plan->pipe_ranks + pipe_rank;
}

/* Floats in one activation message (one micro-batch of this replica). */
static inline size_t act_floats(const Rank *r) {
    return (size_t)r->plan->rows_micro * r->plan->cfg->block_size * r->plan->pl->cfg.n_embd;
}

/* pipeline.c: moving the state between the backend and the host copy
 * (no-ops on the CPU backend), and receiving one activation-sized message
 * into host memory whatever the transport. */
void rank_state_to_host(Rank *r);
void rank_state_to_device(Rank *r);
void rank_recv_to_host(Rank *r, int src, MsgKey key, float *host_buf, size_t n);

#endif
