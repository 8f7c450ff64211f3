/* pipeline.c - see pipeline.h.
 *
 * One rank's life: build its modules (one, or two on pipeline rank 0),
 * then for every step run the schedule's actions. Data, activations,
 * gradients and reductions all travel through the transport, sends to
 * this same rank included, so one code path serves every placement.
 *
 * World rank 0 is the coordinator: it alone reads the training data and
 * sends every pipeline head the slice of minibatch t at the start of step
 * t. Gradient sums across replicas are ordered (the replica-0 rank adds
 * the contributions in replica order), so a run equals its emulation bit
 * for bit; MPI_Allreduce leaves the order of the sum unspecified.
 */
#define _POSIX_C_SOURCE 200809L
#include "pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "checkpoint.h"
#include "common.h"
#include "ops.h"
#include "progress.h"
#include "rank.h"
#include "sample.h"
#include "signals.h"
#include "weights.h"

/* ---------------------------------------------------------------- plan */

void plan_init(Plan *p, const Config *c, const ParamLayout *pl, const Dataset *ds,
               int world) {
    memset(p, 0, sizeof *p);
    p->cfg = c;
    p->pl = pl;
    p->ds = ds;
    p->world = world;
    optimizer_spec_from_config(&p->opt, c);
    Schedule *s = &p->sched;
    if (schedule_parse(c->schedule, &s->kind) != 0) die("config: unknown schedule %s", c->schedule);
    s->micro = s->kind == SCHED_GPIPE ? c->micro_batches : 1;
    s->bp_warmup = c->bp_warmup_steps;
    s->replicas = c->replicas;
    if (s->kind == SCHED_SINGLE && world != 1)
        die("config: schedule=single runs on one rank, not %d; use schedule=bp, "
            "ouroboros or dp for several", world);
    if (s->kind == SCHED_DP) {
        if (c->replicas != 1 && c->replicas != world)
            die("config: replicas=%d with schedule=dp: dp uses every rank as a replica "
                "(%d); leave replicas unset", c->replicas, world);
        s->replicas = world;
        s->K = 1;
    } else if (s->kind == SCHED_SINGLE) {
        s->K = 1;
    } else {
        if (world % c->replicas != 0)
            die("config: replicas=%d does not divide the %d ranks", c->replicas, world);
        s->K = world / c->replicas + 1;
    }
    p->pipe_ranks = schedule_pipeline_ranks(s);
    int B = c->batch_size;
    if (B % s->replicas != 0)
        die("config: batch_size=%d is not divisible by the %d replicas; each replica "
            "takes an equal slice", B, s->replicas);
    if ((B / s->replicas) % s->micro != 0)
        die("config: batch_size=%d gives %d sequences per replica, not divisible by "
            "micro_batches=%d", B, B / s->replicas, s->micro);
    p->rows_micro = B / s->replicas / s->micro;
    p->replay = strcmp(c->activations, "replay") == 0;
    if (c->partition[0] && s->K > 1)
        partition_parse(&p->part, c->partition, &pl->cfg, s->K);
    else
        partition_auto(&p->part, &pl->cfg, s->K);
}

void plan_print(const Plan *p) {
    const Schedule *s = &p->sched;
    char part[512];
    partition_format(&p->part, part, sizeof part);
    printf("placement: %s on %d rank%s: %d module%s per pipeline on %d rank%s x %d "
           "replica%s", schedule_name(s->kind), p->world, p->world > 1 ? "s" : "", s->K,
           s->K > 1 ? "s" : "", p->pipe_ranks, p->pipe_ranks > 1 ? "s" : "", s->replicas,
           s->replicas > 1 ? "s" : "");
    if (s->kind == SCHED_GPIPE) printf(", %d micro-batches", s->micro);
    if (s->bp_warmup > 0) printf(", %ld bp warm-up steps", s->bp_warmup);
    printf(", activations %s\n", p->replay ? "replay" : "store");
    printf("partition (blocks per module): %s\n", part);
    double total = 0.0, worst = 0.0;
    for (int r = 0; r < p->pipe_ranks; r++) {
        double c = partition_rank_cost(&p->part, &p->pl->cfg, r);
        total += c;
        if (c > worst) worst = c;
    }
    for (int r = 0; r < p->pipe_ranks; r++) {
        int mods[2];
        int n = schedule_rank_modules(s, r, mods);
        double c = partition_rank_cost(&p->part, &p->pl->cfg, r);
        printf("  rank %d: module%s", r, n > 1 ? "s" : "");
        for (int i = 0; i < n; i++) {
            ModuleSpec ms = partition_module(&p->part, mods[i]);
            printf(" %d [%s%d block%s%s]", mods[i] + 1, ms.has_embed ? "embedding + " : "",
                   ms.block_hi - ms.block_lo, ms.block_hi - ms.block_lo == 1 ? "" : "s",
                   ms.has_head ? " + head" : "");
        }
        printf(" | est. %.2f MFLOP/token (%.0f%% of the slowest)\n", c / 1e6,
               100.0 * c / worst);
    }
    if (p->pipe_ranks > 1)
        printf("  balance: ideal speedup %.2fx over one rank\n", total / worst);
    fflush(stdout);
}

/* ---------------------------------------------------------------- ranks */

static void mod_init(Rank *r, Mod *md, int m) {
    const Plan *p = r->plan;
    const Schedule *s = &p->sched;
    int rows = p->rows_micro, T = p->cfg->block_size;
    md->m = m;
    md->spec = s->K == 1 ? (ModuleSpec){1, 0, p->pl->cfg.n_layer, 1} : partition_module(&p->part, m);
    module_tensor_range(p->pl, &md->spec, &md->first_tensor, &md->last_tensor);
    md->prev_rank = m > 0 ? world_rank_of(r, schedule_module_rank(s, m - 1)) : -1;
    md->next_rank = m < s->K - 1 ? world_rank_of(r, schedule_module_rank(s, m + 1)) : -1;
    md->n_slots = schedule_inflight(s, m);
    int sets = p->replay ? 1 : md->n_slots;
    Backend *be = r->be;
    md->acts = xcalloc((size_t)sets, sizeof(BackendActs *));
    for (int i = 0; i < sets; i++) md->acts[i] = be->acts_create(be, p->pl, &md->spec, rows, T);
    /* store under delayed gradients: the backward of a minibatch runs after
     * updates, and must use the weights of its forward (ALGORITHM.md 5) */
    int delayed = s->kind == SCHED_OUROBOROS || s->kind == SCHED_OUROBOROS_PIPELINED;
    if (!p->replay && delayed && m < s->K - 1)
        for (int i = 0; i < sets; i++) be->acts_keep_weights(be, p->pl, md->acts[i]);
    /* Store mode evaluates in a set of its own, so in-flight minibatches
     * keep theirs. Made now, not at the first evaluation: a GPU allocation
     * mid-run may wait for the whole device, and with it for sends that
     * only complete in a peer's next step. */
    if (!p->replay) md->eval_acts = be->acts_create(be, p->pl, &md->spec, rows, T);
    md->work_key = -1;
    md->slot_key = xcalloc((size_t)md->n_slots, sizeof(long));
    for (int i = 0; i < md->n_slots; i++) md->slot_key[i] = -1;
    size_t n = act_floats(r);
    if (p->replay) {
        md->inputs = xcalloc((size_t)md->n_slots, sizeof(float *));
        if (!md->spec.has_embed)
            for (int i = 0; i < md->n_slots; i++) md->inputs[i] = be->alloc(be, n);
    }
    md->in_buf = be->alloc(be, n);
    md->dout_buf = be->alloc(be, n);
    md->dx_buf = be->alloc(be, n);
    param_init(p->pl, r->params, (uint64_t)p->cfg->seed, md->first_tensor, md->last_tensor);
}

static void mod_free(const Plan *p, Backend *be, Mod *md) {
    int sets = p->replay ? 1 : md->n_slots;
    for (int i = 0; i < sets; i++) be->acts_free(be, md->acts[i]);
    if (md->eval_acts) be->acts_free(be, md->eval_acts);
    if (md->inputs) {
        for (int i = 0; i < md->n_slots; i++)
            if (md->inputs[i]) be->release(be, md->inputs[i]);
        free(md->inputs);
    }
    free(md->acts);
    free(md->slot_key);
    be->release(be, md->in_buf);
    be->release(be, md->dout_buf);
    be->release(be, md->dx_buf);
}

/* The parameter ranges [lo, hi) of the modules this rank holds (a head
 * reads wte, which the embedding module beside it owns). */
static int owned_ranges(const Plan *p, int prank, size_t *lo, size_t *hi) {
    int mods[2];
    int n = schedule_rank_modules(&p->sched, prank, mods);
    for (int i = 0; i < n; i++) {
        ModuleSpec ms = p->sched.K == 1 ? (ModuleSpec){1, 0, p->pl->cfg.n_layer, 1}
                                        : partition_module(&p->part, mods[i]);
        module_param_range(p->pl, &ms, &lo[i], &hi[i]);
    }
    return n;
}

/* Parameter-shaped state: on the CPU backend the host buffers are the
 * backend's; a GPU keeps its own (backed only under this rank's slices)
 * and a host copy for checkpoints and the end of the run. */
static void rank_alloc_state(Rank *r) {
    const Plan *p = r->plan;
    Backend *be = r->be;
    size_t n = p->pl->n_params, lo[2], hi[2];
    int k = owned_ranges(p, r->prank, lo, hi);
    /* Full-size buffers addressed by the global offsets; only this rank's
     * slices are ever written, so the rest stays untouched, unmapped. */
    r->d_params = be->alloc_sparse(be, n, lo, hi, k);
    r->d_grads = be->alloc_sparse(be, n, lo, hi, k);
    r->d_opt_m = be->alloc_sparse(be, n, lo, hi, k);
    r->d_opt_v = be->alloc_sparse(be, n, lo, hi, k);
    if (be->host_memory) {
        r->params = r->d_params;
        r->grads = r->d_grads;
        r->opt_m = r->d_opt_m;
        r->opt_v = r->d_opt_v;
        return;
    }
    r->params = xcalloc(n, sizeof(float));
    r->grads = xcalloc(n, sizeof(float));
    r->opt_m = xcalloc(n, sizeof(float));
    r->opt_v = xcalloc(n, sizeof(float));
    r->stage = xcalloc(act_floats(r), sizeof(float));
    r->d_stage = be->alloc(be, act_floats(r));
}

static void rank_free_state(Rank *r) {
    Backend *be = r->be;
    if (!be->host_memory) {
        free(r->params);
        free(r->grads);
        free(r->opt_m);
        free(r->opt_v);
        free(r->stage);
        be->release(be, r->d_stage);
    }
    be->release(be, r->d_params);
    be->release(be, r->d_grads);
    be->release(be, r->d_opt_m);
    be->release(be, r->d_opt_v);
}

/* The owned slices of params and optimizer state (gradients are zero at
 * every step boundary, where these run). */
static void rank_state_copy(Rank *r, int to_host) {
    Backend *be = r->be;
    if (be->host_memory) return;
    const ParamLayout *pl = r->plan->pl;
    float *host[3] = {r->params, r->opt_m, r->opt_v};
    float *dev[3] = {r->d_params, r->d_opt_m, r->d_opt_v};
    for (int k = 0; k < r->n_mods; k++) {
        const Mod *md = &r->mods[k];
        size_t lo = pl->tensors[md->first_tensor].offset;
        size_t hi = md->last_tensor < pl->n_tensors ? pl->tensors[md->last_tensor].offset
                                                    : pl->n_params;
        for (int b = 0; b < 3; b++) {
            if (to_host)
                be->download(be, host[b] + lo, dev[b] + lo, hi - lo);
            else
                be->upload(be, dev[b] + lo, host[b] + lo, hi - lo);
        }
        if (!to_host)
            be->params_loaded(be, pl, r->d_params, md->first_tensor, md->last_tensor);
    }
}

void rank_state_to_host(Rank *r) { rank_state_copy(r, 1); }
void rank_state_to_device(Rank *r) { rank_state_copy(r, 0); }

static void rank_init(Rank *r, const Plan *p, Transport *tp, Backend *be) {
    memset(r, 0, sizeof *r);
    r->plan = p;
    r->tp = tp;
    r->be = be;
    r->rank = tp->rank;
    r->replica = tp->rank / p->pipe_ranks;
    r->prank = tp->rank % p->pipe_ranks;
    r->t_start = now_seconds();
    rank_alloc_state(r);
    r->tensor_updates = xcalloc((size_t)p->pl->n_tensors, sizeof(long));
    int mods[2];
    r->n_mods = schedule_rank_modules(&p->sched, r->prank, mods);
    for (int i = 0; i < r->n_mods; i++) mod_init(r, &r->mods[i], mods[i]);
    r->n_ring = 2 * p->sched.K + 2;
    r->ring = xcalloc((size_t)r->n_ring, sizeof(BatchSlot));
    size_t rows = (size_t)p->cfg->batch_size / p->sched.replicas * p->cfg->block_size;
    for (int i = 0; i < r->n_ring; i++) {
        r->ring[i].mb = -1;
        r->ring[i].inputs = xcalloc(rows, sizeof(int32_t));
        r->ring[i].targets = xcalloc(rows, sizeof(int32_t));
    }
    if (p->cfg->trace) {
        char path[1100];
        snprintf(path, sizeof path, "%s/trace-rank%d.txt", p->cfg->out, r->rank);
        r->trace = fopen(path, "w");
        if (!r->trace) die("%s: cannot create the trace file", path);
    }
}

static void rank_free(Rank *r) {
    for (int i = 0; i < r->n_mods; i++) mod_free(r->plan, r->be, &r->mods[i]);
    for (int i = 0; i < r->n_ring; i++) {
        free(r->ring[i].inputs);
        free(r->ring[i].targets);
    }
    free(r->ring);
    rank_free_state(r);
    free(r->tensor_updates);
    inbox_clear(&r->inbox);
    if (r->trace) fclose(r->trace);
}

static Mod *find_mod(Rank *r, int m) {
    for (int i = 0; i < r->n_mods; i++)
        if (r->mods[i].m == m) return &r->mods[i];
    die("schedule bug: module %d is not on this rank", m + 1);
}

/* Activations and their gradients: n floats of backend memory. On the
 * CPU they go straight to the transport; from a GPU through the device
 * transport when there is one (NCCL), else staged through host memory. */
static void rank_send(Rank *r, int dst, MsgKey key, const float *buf, size_t n) {
    Transport *tp = r->tp;
    Backend *be = r->be;
    if (be->host_memory) {
        tp->send(tp, dst, key, buf, n * sizeof(float));
    } else if (tp->send_device) {
        tp->send_device(tp, dst, key, buf, n * sizeof(float));
    } else {
        be->download(be, r->stage, buf, n);
        tp->send(tp, dst, key, r->stage, n * sizeof(float));
    }
}

/* A checkpoint may have received the message ahead of its step (or a
 * resume restored it) into the inbox, which holds host memory. */
static void rank_recv(Rank *r, int src, MsgKey key, float *buf, size_t n) {
    Transport *tp = r->tp;
    Backend *be = r->be;
    size_t bytes = n * sizeof(float);
    if (be->host_memory) {
        if (!inbox_take(&r->inbox, src, key, buf, bytes)) tp->recv(tp, src, key, buf, bytes);
    } else if (inbox_take(&r->inbox, src, key, r->stage, bytes)) {
        be->upload(be, buf, r->stage, n);
    } else if (tp->recv_device) {
        tp->recv_device(tp, src, key, buf, bytes);
    } else {
        tp->recv(tp, src, key, r->stage, bytes);
        be->upload(be, buf, r->stage, n);
    }
}

void rank_recv_to_host(Rank *r, int src, MsgKey key, float *host_buf, size_t n) {
    Transport *tp = r->tp;
    if (r->be->host_memory || !tp->recv_device) {
        tp->recv(tp, src, key, host_buf, n * sizeof(float));
        return;
    }
    tp->recv_device(tp, src, key, r->d_stage, n * sizeof(float));
    r->be->download(r->be, host_buf, r->d_stage, n);
}

/* Lets MPI post the receive early. A device transport posts its own. */
static void rank_expect(Rank *r, int src, MsgKey key, size_t bytes) {
    if (r->tp->recv_device && !r->be->host_memory) return;
    if (!inbox_has(&r->inbox, src, key)) r->tp->expect(r->tp, src, key, bytes);
}

/* ---------------------------------------------------------------- data */

/* The coordinator hands every pipeline head its slice of minibatch t. */
static void coordinator_send_batch(Rank *r, long t) {
    const Plan *p = r->plan;
    const Config *c = p->cfg;
    int B = c->batch_size, T = c->block_size, R = p->sched.replicas;
    size_t N = (size_t)B * T, slice = N / R;
    int32_t *buf = xmalloc(2 * N * sizeof(int32_t));
    dataset_batch(&p->ds->train, (uint64_t)c->seed, (uint64_t)t, B, T, buf, buf + N);
    int32_t *msg = xmalloc(2 * slice * sizeof(int32_t));
    for (int j = 0; j < R; j++) {
        memcpy(msg, buf + j * slice, slice * sizeof(int32_t));
        memcpy(msg + slice, buf + N + j * slice, slice * sizeof(int32_t));
        r->tp->send(r->tp, j * p->pipe_ranks, msg_key(MSG_DATA, 0, t), msg,
                    2 * slice * sizeof(int32_t));
    }
    free(msg);
    free(buf);
}

/* This replica's slice of minibatch mb, received from the coordinator the
 * first time it is needed. */
static BatchSlot *batch_of(Rank *r, long mb) {
    BatchSlot *b = &r->ring[mb % r->n_ring];
    if (b->mb == mb) return b;
    size_t slice = (size_t)r->plan->cfg->batch_size / r->plan->sched.replicas *
                   r->plan->cfg->block_size;
    int32_t *msg = xmalloc(2 * slice * sizeof(int32_t));
    r->tp->recv(r->tp, 0, msg_key(MSG_DATA, 0, mb), msg, 2 * slice * sizeof(int32_t));
    memcpy(b->inputs, msg, slice * sizeof(int32_t));
    memcpy(b->targets, msg + slice, slice * sizeof(int32_t));
    free(msg);
    b->mb = mb;
    return b;
}

/* ---------------------------------------------------------------- actions */

static void trace_action(Rank *r, long t, const char *what, int m, long mb, int u) {
    if (!r->trace) return;
    fprintf(r->trace, "step %ld rank %d %s module %d mb %ld micro %d\n", t, r->rank, what,
            m + 1, mb, u);
}

static const float *run_forward(Rank *r, Mod *md, BackendActs *a, long mb, int u,
                                const float *x_in) {
    const Plan *p = r->plan;
    int rows = p->rows_micro, T = p->cfg->block_size;
    size_t off = (size_t)u * rows * T;
    const int32_t *tokens = NULL, *targets = NULL;
    if (md->spec.has_embed || md->spec.has_head) {
        BatchSlot *b = batch_of(r, mb);
        tokens = md->spec.has_embed ? b->inputs + off : NULL;
        targets = md->spec.has_head ? b->targets + off : NULL;
    }
    double t0 = now_seconds();
    const float *out = r->be->forward(r->be, p->pl, r->d_params, &md->spec, a, tokens,
                                      md->spec.has_embed ? NULL : x_in, targets, rows, T);
    r->compute_s += now_seconds() - t0;
    return out;
}

static void action_forward(Rank *r, long t, const Action *ac) {
    const Plan *p = r->plan;
    Mod *md = find_mod(r, ac->module);
    long key = ac->mb * p->sched.micro + ac->micro;
    int slot = (int)(key % md->n_slots);
    size_t n = act_floats(r);
    float *x_in = NULL;
    if (!md->spec.has_embed) {
        x_in = p->replay ? md->inputs[slot] : md->in_buf;
        rank_recv(r, md->prev_rank, msg_key(MSG_ACT, ac->micro, ac->mb), x_in, n);
    }
    BackendActs *a = md->acts[p->replay ? 0 : slot];
    const float *out = run_forward(r, md, a, ac->mb, ac->micro, x_in);
    md->slot_key[slot] = key;
    md->work_key = key;
    md->work_version = r->version;
    trace_action(r, t, "fwd", ac->module, ac->mb, ac->micro);
    if (md->spec.has_head) {
        /* this micro-batch's share of the minibatch mean */
        r->loss += r->be->loss(r->be, a) * (double)p->rows_micro / p->cfg->batch_size;
        r->have_loss = 1;
    } else if (schedule_step_of(&p->sched, ACT_FORWARD, ac->module + 1, ac->mb) <
               p->cfg->steps) {
        rank_send(r, md->next_rank, msg_key(MSG_ACT, ac->micro, ac->mb), out, n);
    }
}

static void action_backward(Rank *r, long t, const Action *ac) {
    const Plan *p = r->plan;
    Mod *md = find_mod(r, ac->module);
    long key = ac->mb * p->sched.micro + ac->micro;
    int slot = (int)(key % md->n_slots);
    size_t n = act_floats(r);
    if (md->slot_key[slot] != key)
        die("schedule bug: module %d backward of minibatch %ld, whose forward it no "
            "longer holds", ac->module + 1, ac->mb);
    if (!md->spec.has_head)
        rank_recv(r, md->next_rank, msg_key(MSG_GRAD, ac->micro, ac->mb), md->dout_buf, n);
    BackendActs *a = md->acts[p->replay ? 0 : slot];
    /* Replay: recompute the forward from the stored input with the current
     * weights, unless the set still holds exactly that forward. */
    if (p->replay && (md->work_key != key || md->work_version != r->version))
        run_forward(r, md, a, ac->mb, ac->micro, md->inputs[slot]);
    md->work_key = -1; /* the backward consumes the set */
    double t0 = now_seconds();
    float scale = 1.0f / ((float)p->cfg->batch_size * (float)p->cfg->block_size);
    r->be->backward(r->be, p->pl, r->d_params, r->d_grads, &md->spec, a,
                    md->spec.has_head ? NULL : md->dout_buf, scale,
                    md->spec.has_embed ? NULL : md->dx_buf);
    r->compute_s += now_seconds() - t0;
    md->touched = 1;
    trace_action(r, t, "bwd", ac->module, ac->mb, ac->micro);
    if (!md->spec.has_embed &&
        schedule_step_of(&p->sched, ACT_BACKWARD, ac->module - 1, ac->mb) < p->cfg->steps)
        rank_send(r, md->prev_rank, msg_key(MSG_GRAD, ac->micro, ac->mb), md->dx_buf, n);
}

/* ---------------------------------------------------------------- reductions */

/* Sums `n` values (float or double) over the group's ranks, in group
 * order, and leaves the sum on every member: members send to the first
 * rank, which adds them in order and sends the result back. */
static void ordered_allreduce(Rank *r, const int *group, int g, void *buf, size_t n,
                              int is_double, MsgKey key) {
    if (g <= 1) return;
    Transport *tp = r->tp;
    size_t bytes = n * (is_double ? sizeof(double) : sizeof(float));
    MsgKey result = msg_key(MSG_RESULT, key.micro, key.id);
    if (tp->rank != group[0]) {
        tp->send(tp, group[0], key, buf, bytes);
        tp->recv(tp, group[0], result, buf, bytes);
        return;
    }
    void *part = xmalloc(bytes);
    for (int i = 1; i < g; i++) {
        tp->recv(tp, group[i], key, part, bytes);
        double t0 = now_seconds();
        if (is_double)
            for (size_t k = 0; k < n; k++) ((double *)buf)[k] += ((double *)part)[k];
        else
            for (size_t k = 0; k < n; k++) ((float *)buf)[k] += ((float *)part)[k];
        tp->comm_s += now_seconds() - t0;
    }
    free(part);
    for (int i = 1; i < g; i++) tp->send(tp, group[i], result, buf, bytes);
}

/* The world ranks holding the same modules as this one, replica 0 first. */
static int stage_group(const Rank *r, int *group) {
    int R = r->plan->sched.replicas;
    for (int j = 0; j < R; j++) group[j] = j * r->plan->pipe_ranks + r->prank;
    return R;
}

/* The world ranks of this rank's pipeline. */
static int pipeline_group(const Rank *r, int *group) {
    int P = r->plan->pipe_ranks;
    for (int i = 0; i < P; i++) group[i] = world_rank_of(r, i);
    return P;
}

/* ---------------------------------------------------------------- update */

/* Marks the tensors that get an update this step: those of every module
 * with a gradient, and the tied wte when the head has one (its slice
 * belongs to the embedding module, whose own gradient may still be on its
 * way in the first steps of a delayed schedule). Returns how many. */
static int tensors_to_update(const Rank *r, char *upd) {
    const ParamLayout *pl = r->plan->pl;
    int n = 0;
    memset(upd, 0, (size_t)pl->n_tensors);
    for (int k = 0; k < r->n_mods; k++) {
        const Mod *md = &r->mods[k];
        if (md->touched)
            for (int i = md->first_tensor; i < md->last_tensor; i++) upd[i] = 1;
        if (md->touched && md->spec.has_head) upd[tensor_index_wte()] = 1;
    }
    for (int i = 0; i < pl->n_tensors; i++) n += upd[i];
    return n;
}

/* Screens each run of consecutive tensors to update with one call (a
 * GPU answers each call with a wait for its stream), and names the first
 * tensor with a non-finite gradient. */
static void check_finite(const Rank *r, const char *upd, long t) {
    const ParamLayout *pl = r->plan->pl;
    for (int i = 0; i < pl->n_tensors;) {
        if (!upd[i]) {
            i++;
            continue;
        }
        int j = i;
        while (j < pl->n_tensors && upd[j]) j++;
        size_t lo = pl->tensors[i].offset;
        size_t hi = pl->tensors[j - 1].offset + pl->tensors[j - 1].numel;
        long bad = r->be->first_nonfinite(r->be, r->d_grads + lo, hi - lo);
        if (bad >= 0) {
            size_t at = lo + (size_t)bad;
            int k = i;
            while (k + 1 < j && pl->tensors[k + 1].offset <= at) k++;
            die("step %ld: non-finite gradient in %s; lower lr=, raise warmup= or set "
                "grad_clip=", t + 1, pl->tensors[k].name);
        }
        i = j;
    }
}

/* Clipping scale from the global norm of every gradient applied in this
 * update, over the whole pipeline: per-tensor sums of squares, which only
 * one rank owns each, are summed across ranks (exactly: the others add
 * zeros) and then over tensors in canonical order. */
static float global_clip_scale(Rank *r, const char *upd, long t) {
    const Plan *p = r->plan;
    const ParamLayout *pl = p->pl;
    if (p->cfg->grad_clip <= 0.0) return 1.0f;
    double *sq = xcalloc((size_t)pl->n_tensors, sizeof(double));
    for (int i = 0; i < pl->n_tensors; i++)
        if (upd[i])
            sq[i] = r->be->sumsq(r->be, r->d_grads + pl->tensors[i].offset,
                                 pl->tensors[i].numel);
    int group[PARTITION_MAX_MODULES];
    int g = pipeline_group(r, group);
    ordered_allreduce(r, group, g, sq, (size_t)pl->n_tensors, 1, msg_key(MSG_REDUCE, 63, t));
    double total = 0.0;
    for (int i = 0; i < pl->n_tensors; i++) total += sq[i];
    free(sq);
    return clip_scale(sqrt(total), p->cfg->grad_clip);
}

/* Sums n floats of gradient at offset lo over the group: NCCL's reduction
 * on GPUs when the transport has one; else the ordered host reduction,
 * through the host copy for a GPU backend. */
static void sum_slice_across(Rank *r, const int *group, int g, size_t lo, size_t n,
                             MsgKey key) {
    Backend *be = r->be;
    if (be->host_memory) {
        ordered_allreduce(r, group, g, r->grads + lo, n, 0, key);
    } else if (r->tp->allreduce_device) {
        r->tp->allreduce_device(r->tp, group, g, r->d_grads + lo, n);
    } else {
        be->download(be, r->grads + lo, r->d_grads + lo, n);
        ordered_allreduce(r, group, g, r->grads + lo, n, 0, key);
        be->upload(be, r->d_grads + lo, r->grads + lo, n);
    }
}

/* Replicas: sum each module's gradient slice across the ranks that hold
 * it (every replica marks the same tensors, so they agree on what to send). */
static void sum_across_replicas(Rank *r, const char *upd, long t) {
    const ParamLayout *pl = r->plan->pl;
    static const int max_group = 1 << 12;
    int R = r->plan->sched.replicas;
    if (R <= 1) return;
    if (R > max_group) die("config: replicas=%d is more than the %d supported", R, max_group);
    int *group = xmalloc((size_t)R * sizeof(int));
    int g = stage_group(r, group);
    for (int k = 0; k < r->n_mods; k++) {
        const Mod *md = &r->mods[k];
        int any = 0;
        for (int i = md->first_tensor; i < md->last_tensor; i++) any |= upd[i];
        if (!any) continue;
        size_t lo = pl->tensors[md->first_tensor].offset;
        size_t hi = md->last_tensor < pl->n_tensors ? pl->tensors[md->last_tensor].offset
                                                    : pl->n_params;
        sum_slice_across(r, group, g, lo, hi - lo, msg_key(MSG_REDUCE, md->m, t));
    }
    free(group);
}

static void action_update(Rank *r, long t) {
    const Plan *p = r->plan;
    const ParamLayout *pl = p->pl;
    char *upd = xmalloc((size_t)pl->n_tensors);
    int n = tensors_to_update(r, upd);
    sum_across_replicas(r, upd, t);
    check_finite(r, upd, t);
    float scale = global_clip_scale(r, upd, t);
    float lr = (float)lr_at_step(p->cfg, t);
    double t0 = now_seconds();
    for (int i = 0; i < pl->n_tensors; i++) {
        if (!upd[i]) continue;
        r->be->update_tensor(r->be, pl, &p->opt, r->d_params, r->d_grads, r->d_opt_m,
                             r->d_opt_v, i, scale, lr, ++r->tensor_updates[i]);
    }
    for (int k = 0; k < r->n_mods; k++) r->mods[k].touched = 0;
    if (n > 0) r->version++;
    r->compute_s += now_seconds() - t0;
    trace_action(r, t, "update", -1, t, 0);
    free(upd);
}

/* ---------------------------------------------------------------- evaluation */

/* The activations an evaluation forward may overwrite: replay's single set
 * (whatever it held is recomputed anyway), or in store mode the extra set
 * mod_init made, so in-flight minibatches keep theirs. */
static BackendActs *eval_acts(Rank *r, Mod *md) {
    if (r->plan->replay) {
        md->work_key = -1;
        return md->acts[0];
    }
    return md->eval_acts;
}

/* Mean loss over eval_batches sequential batches of the validation split,
 * forwarded around replica 0's ring in chunks of rows_micro sequences
 * (the shape the activations were made for). The result is on world
 * rank 0; other replicas take no part. */
static double evaluate(Rank *r, long round) {
    const Plan *p = r->plan;
    const Config *c = p->cfg;
    if (r->replica != 0) return NAN;
    if (p->sched.K == 1 && r->rank != 0) return NAN;
    int B = c->batch_size, T = c->block_size, rows = p->rows_micro, chunks = B / rows;
    size_t N = (size_t)B * T, n = act_floats(r);
    int32_t *in = NULL, *tg = NULL;
    if (r->rank == 0) {
        in = xmalloc(N * sizeof(int32_t));
        tg = xmalloc(N * sizeof(int32_t));
    }
    double sum = 0.0;
    for (int i = 0; i < c->eval_batches; i++) {
        if (r->rank == 0) dataset_eval_batch(&p->ds->valid, (uint64_t)i, B, T, in, tg);
        for (int ch = 0; ch < chunks; ch++) {
            MsgKey key = msg_key(MSG_EVAL, ch, round * c->eval_batches + i);
            size_t off = (size_t)ch * rows * T;
            for (int k = 0; k < r->n_mods; k++) {
                Mod *md = &r->mods[k];
                BackendActs *a = eval_acts(r, md);
                if (!md->spec.has_embed) rank_recv(r, md->prev_rank, key, md->in_buf, n);
                double t0 = now_seconds();
                const float *out = r->be->forward(
                    r->be, p->pl, r->d_params, &md->spec, a,
                    md->spec.has_embed ? in + off : NULL,
                    md->spec.has_embed ? NULL : md->in_buf,
                    md->spec.has_head ? tg + off : NULL, rows, T);
                r->compute_s += now_seconds() - t0;
                if (md->spec.has_head)
                    sum += r->be->loss(r->be, a) / chunks;
                else
                    rank_send(r, md->next_rank, key, out, n);
            }
        }
    }
    free(in);
    free(tg);
    return sum / c->eval_batches;
}

/* ---------------------------------------------------------------- reporting */

enum { ST_LOSS, ST_HAVE_LOSS, ST_COMPUTE, ST_WAIT, ST_COMM, ST_MEM_PARAMS, ST_MEM_OPT,
       ST_MEM_ACTS, ST_MAXRSS, ST_DEVICE_PEAK, ST_WALL, ST_COUNT };

/* What world rank 0 keeps to print progress. */
typedef struct {
    Progress progress;
    double *prev;      /* [world][ST_COUNT] at the previous report */
    double *cur;
    double last_loss;
} Reporter;

static size_t owned_floats(const Rank *r) {
    size_t n = 0;
    const ParamLayout *pl = r->plan->pl;
    for (int k = 0; k < r->n_mods; k++)
        for (int i = r->mods[k].first_tensor; i < r->mods[k].last_tensor; i++)
            n += pl->tensors[i].numel;
    return n;
}

static double acts_bytes(const Rank *r) {
    double b = 0.0;
    size_t n = act_floats(r) * sizeof(float);
    for (int k = 0; k < r->n_mods; k++) {
        const Mod *md = &r->mods[k];
        int sets = r->plan->replay ? 1 : md->n_slots;
        for (int i = 0; i < sets; i++) b += (double)r->be->acts_bytes(r->be, md->acts[i]);
        if (md->eval_acts) b += (double)r->be->acts_bytes(r->be, md->eval_acts);
        if (md->inputs && !md->spec.has_embed) b += (double)md->n_slots * n;
        b += 3.0 * n; /* message buffers */
    }
    return b;
}

/* Every rank sends its statistics to world rank 0, which gathers them in
 * rank order into rep->cur. */
static void gather_stats(Rank *r, Reporter *rep, long t) {
    double st[ST_COUNT] = {0};
    st[ST_LOSS] = r->loss;
    st[ST_HAVE_LOSS] = r->have_loss && r->prank == 0;
    st[ST_COMPUTE] = r->compute_s;
    st[ST_WAIT] = r->tp->wait_s;
    st[ST_COMM] = r->tp->comm_s;
    st[ST_WALL] = now_seconds() - r->t_start; /* each rank's own clock */
    double pb = (double)owned_floats(r) * sizeof(float);
    st[ST_MEM_PARAMS] = 2.0 * pb; /* parameters and gradients */
    st[ST_MEM_OPT] = r->plan->opt.adam ? 2.0 * pb : (r->plan->opt.momentum > 0 ? pb : 0.0);
    st[ST_MEM_ACTS] = acts_bytes(r);
    struct rusage ru;
    st[ST_MAXRSS] = getrusage(RUSAGE_SELF, &ru) == 0 ? 1024.0 * (double)ru.ru_maxrss : 0.0;
    st[ST_DEVICE_PEAK] = (double)r->be->peak_bytes(r->be);
    MsgKey key = msg_key(MSG_STATS, 0, t);
    r->tp->send(r->tp, 0, key, st, sizeof st);
    if (r->rank != 0) return;
    for (int w = 0; w < r->plan->world; w++)
        r->tp->recv(r->tp, w, key, rep->cur + (size_t)w * ST_COUNT, sizeof st);
}

/* The step's loss: the replicas' shares summed, if every head had one. */
static double global_loss(const Plan *p, const double *cur) {
    double loss = 0.0;
    int heads = 0;
    for (int w = 0; w < p->world; w += p->pipe_ranks) {
        loss += cur[(size_t)w * ST_COUNT + ST_LOSS];
        heads += cur[(size_t)w * ST_COUNT + ST_HAVE_LOSS] > 0;
    }
    return heads == p->sched.replicas ? loss : NAN;
}

static void report_progress(Rank *r, Reporter *rep, long t) {
    gather_stats(r, rep, t);
    if (r->rank != 0) return;
    const Plan *p = r->plan;
    double loss = global_loss(p, rep->cur);
    if (!isnan(loss)) rep->last_loss = loss;
    if (!isfinite(loss) && !isnan(loss))
        die("step %ld: non-finite loss (%g); lower lr= or raise warmup=", t + 1, loss);
    char line[4096], json[8192];
    size_t ul = (size_t)snprintf(line, sizeof line, " | %s", schedule_name(p->sched.kind));
    size_t uj = (size_t)snprintf(json, sizeof json, ", \"schedule\": \"%s\", \"ranks\": [",
                                 schedule_name(p->sched.kind));
    if (p->world > 1 || p->sched.kind != SCHED_SINGLE)
        ul += (size_t)snprintf(line + ul, sizeof line - ul, " | busy/wait/comm%%");
    for (int w = 0; w < p->world; w++) {
        const double *c = rep->cur + (size_t)w * ST_COUNT, *q = rep->prev + (size_t)w * ST_COUNT;
        double dt = c[ST_WALL] - q[ST_WALL];
        double busy = dt > 0 ? (c[ST_COMPUTE] - q[ST_COMPUTE]) / dt : 0;
        double wait = dt > 0 ? (c[ST_WAIT] - q[ST_WAIT]) / dt : 0;
        double comm = dt > 0 ? (c[ST_COMM] - q[ST_COMM]) / dt : 0;
        if ((p->world > 1 || p->sched.kind != SCHED_SINGLE) && w < 16 && ul < sizeof line)
            ul += (size_t)snprintf(line + ul, sizeof line - ul, " %.0f/%.0f/%.0f", 100 * busy,
                                   100 * wait, 100 * comm);
        if (uj < sizeof json)
            uj += (size_t)snprintf(json + uj, sizeof json - uj,
                                   "%s{\"rank\": %d, \"compute\": %.4f, \"wait\": %.4f, "
                                   "\"comm\": %.4f}",
                                   w ? ", " : "", w, busy, wait, comm);
    }
    if (p->world > 16 && ul < sizeof line) snprintf(line + ul, sizeof line - ul, " ...");
    if (uj < sizeof json) snprintf(json + uj, sizeof json - uj, "]");
    memcpy(rep->prev, rep->cur, (size_t)p->world * ST_COUNT * sizeof(double));
    progress_train(&rep->progress, t + 1, rep->last_loss, lr_at_step(p->cfg, t), line, json);
}

static void print_memory(const Plan *p, const double *cur) {
    int gpu = strcmp(p->cfg->device, "cuda") == 0;
    printf("peak memory per rank (parameters+gradients, optimizer state, activations; "
           "process peak RSS%s):\n", gpu ? "; peak GPU memory allocated" : "");
    for (int w = 0; w < p->world; w++) {
        const double *c = cur + (size_t)w * ST_COUNT;
        printf("  rank %d: %.1f MB, %.1f MB, %.1f MB = %.1f MB; RSS %.1f MB", w,
               c[ST_MEM_PARAMS] / 1e6, c[ST_MEM_OPT] / 1e6, c[ST_MEM_ACTS] / 1e6,
               (c[ST_MEM_PARAMS] + c[ST_MEM_OPT] + c[ST_MEM_ACTS]) / 1e6, c[ST_MAXRSS] / 1e6);
        if (gpu) printf("; GPU %.1f MB", c[ST_DEVICE_PEAK] / 1e6);
        printf("\n");
    }
}

/* ---------------------------------------------------------------- the end */

/* Replica 0's ranks send their parameter slices to world rank 0. */
static void gather_params(Rank *r) {
    const Plan *p = r->plan;
    const ParamLayout *pl = p->pl;
    if (r->replica != 0) return;
    rank_state_to_host(r);
    if (p->sched.K == 1) return;
    for (int w = 0; w < p->pipe_ranks; w++) {
        if (r->rank != 0 && r->rank != w) continue;
        if (w == 0) continue;
        int mods[2];
        int n = schedule_rank_modules(&p->sched, w, mods);
        for (int k = 0; k < n; k++) {
            ModuleSpec ms = partition_module(&p->part, mods[k]);
            size_t lo, hi;
            module_param_range(pl, &ms, &lo, &hi);
            MsgKey key = msg_key(MSG_PARAMS, mods[k], 0);
            if (r->rank == w)
                r->tp->send(r->tp, 0, key, r->params + lo, (hi - lo) * sizeof(float));
            else
                r->tp->recv(r->tp, w, key, r->params + lo, (hi - lo) * sizeof(float));
        }
    }
}

static void finish_on_rank0(Rank *r, Reporter *rep, double val) {
    const Plan *p = r->plan;
    const Config *c = p->cfg;
    char path[1100], sha[65];
    print_memory(p, rep->cur);
    snprintf(path, sizeof path, "%s/model.bin", c->out);
    weights_save(path, p->pl, r->params);
    params_sha256(p->pl, r->params, sha);
    if (c->sample_tokens > 0) {
        printf("sample (temperature %.2f, top-k %d):\n-----\n", c->temperature, c->top_k);
        sample_from_config(p->pl, r->params, c, p->ds->is_bytes, stdout);
        printf("-----\n");
    }
    printf("final step=%d train_loss=%.6f val_loss=%.6f params_sha256=%s\n", c->steps,
           rep->last_loss, val, sha);
    fflush(stdout);
}

/* ---------------------------------------------------------------- main loop */

/* Did any rank get the stop signal? The ranks agree after every step (a
 * one-number reduction over the world), so they all stop after the same
 * step, where a checkpoint can hold the whole run. */
static int stop_requested(Rank *r, long t) {
    int world = r->plan->world;
    int *group = xmalloc((size_t)world * sizeof(int));
    for (int i = 0; i < world; i++) group[i] = i;
    double flag = stop_signal_received() ? 1.0 : 0.0;
    ordered_allreduce(r, group, world, &flag, 1, 1, msg_key(MSG_REDUCE, 62, t));
    free(group);
    return flag > 0.0;
}

static void expect_inputs(Rank *r, const Action *acts, int n) {
    size_t bytes = act_floats(r) * sizeof(float);
    for (int i = 0; i < n; i++) {
        const Action *a = &acts[i];
        if (a->kind == ACT_UPDATE) continue;
        Mod *md = find_mod(r, a->module);
        if (a->kind == ACT_FORWARD && !md->spec.has_embed)
            rank_expect(r, md->prev_rank, msg_key(MSG_ACT, a->micro, a->mb), bytes);
        if (a->kind == ACT_BACKWARD && !md->spec.has_head)
            rank_expect(r, md->next_rank, msg_key(MSG_GRAD, a->micro, a->mb), bytes);
    }
}

static void run_step(Rank *r, long t, Action *acts) {
    const Plan *p = r->plan;
    r->loss = 0.0;
    r->have_loss = 0;
    if (r->rank == 0) coordinator_send_batch(r, t);
    int n = schedule_actions(&p->sched, t, r->prank, acts);
    expect_inputs(r, acts, n);
    for (int i = 0; i < n; i++) {
        switch (acts[i].kind) {
        case ACT_FORWARD: action_forward(r, t, &acts[i]); break;
        case ACT_BACKWARD: action_backward(r, t, &acts[i]); break;
        case ACT_UPDATE: action_update(r, t); break;
        }
    }
}

void pipeline_rank_main(Transport *tp, void *arg) {
    const Plan *p = arg;
    const Config *c = p->cfg;
    backend_thread_init();
    Backend *be = backend_create(c, tp->rank, tp->local_rank);
    if (be->device >= 0 && tp->enable_device) tp->enable_device(tp, be, p->pipe_ranks);
    Rank r;
    rank_init(&r, p, tp, be);
    Reporter rep;
    memset(&rep, 0, sizeof rep);
    rep.prev = xcalloc((size_t)p->world * ST_COUNT, sizeof(double));
    rep.cur = xcalloc((size_t)p->world * ST_COUNT, sizeof(double));
    rep.last_loss = NAN;
    long first = ckpt_restore(&r), last = ckpt_last_step(c);
    rank_state_to_device(&r);
    if (r.rank == 0)
        progress_open(&rep.progress, c->out, p->ds->is_bytes, c->steps,
                      (long)c->batch_size * c->block_size, first);
    Action *acts = xmalloc((size_t)schedule_max_actions(&p->sched) * sizeof(Action));
    long evals = 0;
    for (long t = first; t < last; t++) {
        run_step(&r, t, acts);
        long done = t + 1;
        if (done % c->log_every == 0 || done == c->steps) report_progress(&r, &rep, t);
        if (c->eval_every > 0 && done % c->eval_every == 0 && done != c->steps) {
            double val = evaluate(&r, evals++);
            if (r.rank == 0) progress_eval(&rep.progress, done, val);
        }
        int stop = stop_requested(&r, t);
        if (ckpt_due(c, done) || (stop && done < c->steps)) {
            rank_state_to_host(&r);
            ckpt_save(&r, done);
        }
        if (stop && done < c->steps) {
            last = done;
            break;
        }
    }
    if (last < c->steps) { /* stop_after or a signal: the checkpoint holds the rest */
        tp->flush(tp);
        if (r.rank == 0) {
            progress_close(&rep.progress);
            printf("stopped after step %ld of %d (%s); continue with resume=latest\n", last,
                   c->steps, stop_signal_received() ? stop_signal_name() : "stop_after");
            fflush(stdout);
        }
        free(acts);
        free(rep.prev);
        free(rep.cur);
        rank_free(&r);
        be->destroy(be);
        return;
    }
    if (c->steps == 0) gather_stats(&r, &rep, 0);
    double val = evaluate(&r, evals++);
    gather_params(&r);
    gather_stats(&r, &rep, c->steps + 1);
    tp->flush(tp);
    if (r.rank == 0) {
        progress_eval(&rep.progress, c->steps, val);
        progress_close(&rep.progress);
        finish_on_rank0(&r, &rep, val);
    }
    free(acts);
    free(rep.prev);
    free(rep.cur);
    rank_free(&r);
    be->destroy(be);
}
