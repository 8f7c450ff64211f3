/* ckpt_internal.h - what the checkpoint files share among themselves
 * (checkpoint.c, ckpt_save.c, ckpt_resume.c, ckpt_cli.c). HDF5 only. */
#ifndef OURO_CKPT_INTERNAL_H
#define OURO_CKPT_INTERNAL_H

#ifdef HAVE_HDF5
#include <stdio.h>

#include "ckpt_h5.h"
#include "model.h"
#include "optimizer.h"

/* Bumped on any change a reader of an older version would misread. */
#define CKPT_FORMAT_VERSION 1

typedef struct {
    char file[32];      /* shard-00003.h5 */
    char sha256[65];
    long long bytes;
    int world_rank, replica, pipe_rank;
} CkptShard;

typedef struct {
    char dir[1100];     /* the step directory */
    char path[1200];    /* its manifest.h5 */
    long long format_version;
    char code_version[64];
    long step;          /* steps done: the next step to run */
    long steps;         /* the writing run's schedule length */
    long pipeline_start;
    int world, K, replicas, pipe_ranks, micro, bp_warmup, batch_size;
    char schedule[64], activations[16], partition[512], optimizer[16];
    GPTConfig model;
    char *config;       /* the writing run's resolved key=value lines */
    int n_shards;       /* = world */
    CkptShard *shards;  /* by world rank */
} CkptManifest;

/* Reads and checks the manifest of step directory dir; dies naming the
 * file and the problem (missing, unreadable, newer format, bad field). */
void ckpt_manifest_read(const char *dir, CkptManifest *m);
void ckpt_manifest_free(CkptManifest *m);
/* Every shard present, of the recorded size and SHA-256; with out, a
 * line per shard. Dies on the first bad one. */
void ckpt_verify_shards(const CkptManifest *m, FILE *out);
/* Dies if the checkpoint's model is not g (names the differing sizes). */
void ckpt_check_model(const CkptManifest *m, const GPTConfig *g);

/* Reads tensors through the manifest's links, opening shards as needed. */
typedef struct {
    const CkptManifest *m;
    hid_t manifest;
    hid_t *shard;       /* by world rank, -1 until opened */
} CkptReader;

void ckpt_reader_open(CkptReader *rd, const CkptManifest *m);
void ckpt_reader_close(CkptReader *rd);
/* The shard of a world rank, opened on first use; dies if unreadable. */
hid_t ckpt_reader_shard(CkptReader *rd, int world_rank);
/* Does the manifest link `group`/<tensor> for every tensor? */
int ckpt_has_group(CkptReader *rd, const ParamLayout *pl, const char *group);
/* Checks that group/<name> of every tensor is linked, in its shard,
 * fp32 and of the model's shape; with out, prints the tensor table.
 * Dies naming the shard and the tensor otherwise. */
void ckpt_check_tensors(CkptReader *rd, const ParamLayout *pl, FILE *out);
/* Reads group/<ti->name> into dst (ti->numel floats); dies naming the
 * shard and the tensor on any failure. */
void ckpt_read_tensor(CkptReader *rd, const char *group, const TensorInfo *ti, float *dst);
/* The update count of a tensor (updates/<name>). */
long ckpt_read_updates(CkptReader *rd, const TensorInfo *ti);
/* Every parameter, in the canonical layout, into params (n_params). */
void ckpt_read_params(CkptReader *rd, const ParamLayout *pl, float *params);

/* The optimizer-state groups of a run: {adam/m, adam/v} for AdamW,
 * {sgd/momentum} for SGD with momentum, none for plain SGD. */
int ckpt_opt_groups(const OptimizerSpec *o, const char *groups[2]);

/* Silences HDF5's own error printing (once per process). */
void ckpt_h5_init(void);

#endif
#endif
