/* checkpoint.h - sharded HDF5 checkpoints with exact resume.
 *
 * Every rank writes its own shard; world rank 0 writes the manifest that
 * links them and publishes the step directory atomically. The format and
 * the publishing protocol are documented at the top of checkpoint.c.
 * Built without HDF5, runs write no checkpoint and the keys that need one
 * (resume=, stop_after=, ckpt_every=) are errors that say so. */
#ifndef OURO_CHECKPOINT_H
#define OURO_CHECKPOINT_H

#include <stddef.h>

#include "model.h"
#include "pipeline.h"
#include "settings.h"

struct Rank;

/* What a resumed run starts from (Plan.resume). */
typedef struct CkptResume {
    char dir[1100];    /* the step directory */
    long step;         /* steps it holds: the run continues with this step */
    int keep_inflight; /* same layout: restore the in-flight state exactly;
                          else the pipeline fill restarts at `step` */
} CkptResume;

/* train.c, on every rank before the ranks start (MPI is up). For
 * resume=: rank 0 verifies the checkpoint (manifest, every shard's
 * SHA-256, every tensor's shape) while the others wait; then each rank
 * decides the same way whether the in-flight state can be kept, sets
 * plan->resume = res and plan->sched.start. Rank 0 also tidies <out>/ckpt
 * for the checkpoints this run will write. Dies with one line naming the
 * file and what is wrong. */
void ckpt_setup(Plan *plan, CkptResume *res, int rank);

/* pipeline.c: loads this rank's state from plan->resume (parameters and
 * optimizer state by name; the in-flight state if kept). Returns the
 * first step to run (0 for a fresh run). */
long ckpt_restore(struct Rank *r);
/* Where the step loop ends: stop_after if set and before steps, else steps. */
long ckpt_last_step(const Config *c);
/* Is a checkpoint due after `done` steps? */
int ckpt_due(const Config *c, long done);
/* Writes the checkpoint of step `done` (collective: every rank calls it). */
void ckpt_save(struct Rank *r, long done);

/* The whole model from a checkpoint (a step, ckpt or run directory):
 * verifies it, fills *g and a malloc'd *params; dir receives the step
 * directory and *step its step. For `sample` and `eval`. */
void ckpt_load_model(const char *path, GPTConfig *g, float **params, char *dir, size_t n,
                     long *step);

/* `ouroboros inspect DIR` and `ouroboros eval checkpoint=DIR ...`. */
int cmd_inspect(int argc, char **argv);
int cmd_eval(int argc, char **argv);

#endif
