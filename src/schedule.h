/* schedule.h - which module does what on which minibatch: the schedules of
 * ALGORITHM.md as pure logic (no MPI, no math), so they can be printed,
 * tested and played by the serial emulation.
 *
 * Terms. A pipeline has K modules (indices m = 0..K-1; the paper's module
 * k is m+1) on K-1 ranks: module 0 and module K-1 on pipeline rank 0,
 * module m on pipeline rank m otherwise. R replicas of the pipeline run
 * side by side, replica j on world ranks j*(K-1) .. j*(K-1)+K-2, each on
 * its 1/R slice of the minibatch. `single` and `dp` are K = 1 (the whole
 * model as one module) with R = 1 and R = world size.
 *
 * A step is a list of actions per rank. All schedules forward minibatch t
 * through module 0 in step t, so the coordinator hands out minibatch t at
 * step t.
 */
#ifndef OURO_SCHEDULE_H
#define OURO_SCHEDULE_H

typedef enum {
    SCHED_SINGLE,
    SCHED_BP,
    SCHED_GPIPE,
    SCHED_DP,
    SCHED_OUROBOROS,
    SCHED_OUROBOROS_PIPELINED,
} ScheduleKind;

typedef struct {
    ScheduleKind kind;
    int K;           /* modules per pipeline (1 for single and dp) */
    int replicas;    /* R */
    int micro;       /* micro-batches per minibatch (gpipe), else 1 */
    long bp_warmup;  /* steps of exact backprop before delayed gradients */
    long start;      /* first minibatch of the pipeline fill: 0, or the step a
                        resume restarted the fill at (checkpoint.c) */
} Schedule;

typedef enum { ACT_FORWARD, ACT_BACKWARD, ACT_UPDATE } ActionKind;

typedef struct {
    ActionKind kind;
    int module; /* m, for forward/backward */
    long mb;    /* minibatch */
    int micro;  /* micro-batch within it */
} Action;

/* Parses a schedule name; returns -1 if unknown. */
int schedule_parse(const char *name, ScheduleKind *kind);
const char *schedule_name(ScheduleKind kind);
/* Does this kind split the model into modules on several ranks? */
int schedule_is_pipeline(ScheduleKind kind);
/* Does step `step` use delayed gradients? */
int schedule_delayed(const Schedule *s, long step);

/* Ranks per pipeline: K-1, or 1 when K == 1. */
int schedule_pipeline_ranks(const Schedule *s);
/* Pipeline rank that holds module m. */
int schedule_module_rank(const Schedule *s, int m);
/* Modules held by pipeline rank r, in execution order of a forward pass;
 * returns how many (1 or 2). */
int schedule_rank_modules(const Schedule *s, int r, int modules[2]);

/* The actions of pipeline rank r in step t, in order; returns the count
 * (at most 4 * micro + 1). */
int schedule_actions(const Schedule *s, long t, int r, Action *out);
/* The step in which module m runs `kind` (forward or backward) on
 * minibatch mb: a sender skips a message whose consumer would run after
 * the last step. */
long schedule_step_of(const Schedule *s, ActionKind kind, int m, long mb);

/* Upper bound on the actions of one rank in one step. */
int schedule_max_actions(const Schedule *s);

/* Minibatches module m has forwarded but not yet backpropagated, at most,
 * between two steps plus the one in hand: how many activation sets it
 * must keep (per micro-batch). */
int schedule_inflight(const Schedule *s, int m);

#endif
