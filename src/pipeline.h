/* pipeline.h - the executor: runs a schedule's actions on one rank, with
 * the model, the optimizer and a transport. The same code runs under MPI
 * (one rank per process) and in the serial emulation (every rank in one
 * process), which is why the two give the same bits. */
#ifndef OURO_PIPELINE_H
#define OURO_PIPELINE_H

#include "data.h"
#include "model.h"
#include "optimizer.h"
#include "partition.h"
#include "schedule.h"
#include "settings.h"
#include "transport.h"

struct CkptResume;

/* What every rank agrees on before training: read-only during the run. */
typedef struct {
    const Config *cfg;
    const ParamLayout *pl;
    const Dataset *ds;  /* train split on the coordinator; valid on rank 0 */
    OptimizerSpec opt;
    Schedule sched;
    Partition part;
    int world;          /* ranks in all */
    int pipe_ranks;     /* ranks per pipeline */
    int rows_micro;     /* sequences per replica per micro-batch */
    int replay;         /* activations=replay */
    const struct CkptResume *resume; /* the checkpoint resumed from, or NULL */
} Plan;

/* Builds the plan (partition, batch split) for `world` ranks; dies with a
 * message naming the key when the config and the rank count disagree. */
void plan_init(Plan *p, const Config *cfg, const ParamLayout *pl, const Dataset *ds,
               int world);
/* Prints the placement, the partition and the per-rank cost estimate. */
void plan_print(const Plan *p);

/* Trains on this rank: every step, evaluation, and at the end (on world
 * rank 0) the final line, model.bin and the sample. arg is a Plan*. */
void pipeline_rank_main(Transport *t, void *plan);

#endif
