/* train.c - `ouroboros train`: reads the config, sets up MPI, the data and
 * the plan, and hands every rank to the executor (pipeline.c). Under
 * mpirun each process is one rank; with emulate=1 one process plays every
 * rank of the schedule, the test oracle for the distributed run. */
#define _POSIX_C_SOURCE 200809L
#include "train.h"

#include <errno.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "cli.h"
#include "common.h"
#include "data.h"
#include "model.h"
#include "pipeline.h"
#include "settings.h"
#include "signals.h"
#include "transport.h"

#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
void openblas_set_num_threads(int);
#endif

static void abort_world(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

/* mkdir -p */
static void make_dirs(const char *path) {
    char buf[1024];
    if (strlen(path) >= sizeof buf) die("out=%s: the path is too long", path);
    memcpy(buf, path, strlen(path) + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            die("%s: cannot create directory: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        die("%s: cannot create directory: %s; choose another out=", buf, strerror(errno));
}

static void write_resolved_config(const Config *c) {
    char path[1100];
    snprintf(path, sizeof path, "%s/config.txt", c->out);
    FILE *f = fopen(path, "w");
    if (!f) die("%s: cannot create: %s", path, strerror(errno));
    fprintf(f, "# the resolved configuration of this run; `ouroboros train --config %s`\n"
               "# repeats it\n", path);
    config_write(c, f);
    fclose(f);
}

static int data_is_bin(const Config *c) { return data_is_token_shard(c->data_format, c->data); }

/* Only the coordinator (world rank 0) reads the data. */
static void load_data(Dataset *ds, const Config *c, int rank) {
    memset(ds, 0, sizeof *ds);
    ds->is_bytes = !data_is_bin(c);
    if (rank != 0) return;
    DatasetSpec spec = {c->data, c->valid_data, c->test_data, c->data_format,
                        c->vocab_size, c->block_size + 1};
    dataset_load(ds, &spec);
    printf("data: %s\n", ds->provenance);
}

static void print_model(const ParamLayout *pl, const Config *c) {
    const GPTConfig *g = &pl->cfg;
    printf("model: %d layers, %d heads, %d wide, context %d, vocab %d: %zu parameters, "
           "%.2f MFLOP/token\n", g->n_layer, g->n_head, g->n_embd, g->block_size,
           g->vocab_size, pl->n_params, model_train_flops_per_token(g, g->block_size) / 1e6);
    printf("training: batch %d x %d tokens, %d steps, %s lr %.2e (%s, warm-up %d)\n",
           c->batch_size, c->block_size, c->steps, c->optimizer, c->lr, c->lr_schedule,
           c->warmup);
}

int cmd_train(int argc, char **argv) {
    Config cfg;
    if (cli_parse(argc, argv, &cfg, "train",
                  "Trains a GPT-2 model with the chosen schedule, on one process or under\n"
                  "mpirun (mpirun -np P ouroboros train schedule=ouroboros ...: K-1 = P/replicas\n"
                  "ranks per pipeline). Writes <out>/metrics.jsonl, <out>/config.txt and\n"
                  "<out>/model.bin, and ends with the line\n"
                  "  final step=N train_loss=X val_loss=Y params_sha256=H\n"
                  "Checkpoints (HDF5) go to <out>/ckpt/step-NNNNNNNN every ckpt_every steps and\n"
                  "at the end; resume=latest continues a run bit for bit (another rank count or\n"
                  "schedule: by tensor name, the pipeline refilled); stop_after=S ends it early.") != 0)
        return 0;
    Config *c = &cfg;
    int rank = 0, size = 1;
    MPI_Init(NULL, NULL);
    stop_signal_install(); /* after MPI_Init, which may install its own handlers */
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) {
        set_error_rank(rank);
        set_die_hook(abort_world);
    }
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    openblas_set_num_threads(c->threads);
#endif
    if (c->emulate && size > 1)
        die("emulate=1 plays every rank in one process; run it without mpirun");
    if (c->vocab_size == 0) c->vocab_size = data_is_bin(c) ? 50257 : 256;
    GPTConfig g = {c->n_layer, c->n_head, c->n_embd, c->block_size, c->vocab_size};
    char err[256];
    if (gpt_config_check(&g, err, sizeof err) != 0) die("config: %s", err);
    int world = c->emulate ? (c->ranks > 0 ? c->ranks : 1) : size;
    if (!c->emulate && c->ranks > 0 && c->ranks != size)
        die("config: ranks=%d but mpirun started %d; leave ranks unset under mpirun",
            c->ranks, size);
    if (rank == 0) {
        make_dirs(c->out);
        write_resolved_config(c);
    }
    Dataset ds;
    load_data(&ds, c, rank);
    ParamLayout pl;
    param_layout_init(&pl, &g);
    Plan plan;
    plan_init(&plan, c, &pl, &ds, world);
    if (rank == 0) {
        print_model(&pl, c);
        plan_print(&plan);
        if (c->emulate) printf("emulation: %d ranks played in this one process\n", world);
    }
    CkptResume resume; /* resume=: verified, and what each rank restores */
    ckpt_setup(&plan, &resume, rank);
    MPI_Barrier(MPI_COMM_WORLD); /* directories exist before any rank writes */
    if (size == 1) {
        /* one process: the in-process transport (for emulation, all ranks) */
        void **args = xmalloc((size_t)world * sizeof(void *));
        for (int i = 0; i < world; i++) args[i] = &plan;
        transport_local_run(world, pipeline_rank_main, args);
        free(args);
    } else {
        Transport *tp = transport_mpi_create(c->comm_timeout);
        pipeline_rank_main(tp, &plan);
        transport_mpi_free(tp);
    }
    dataset_free(&ds);
    param_layout_free(&pl);
    MPI_Finalize();
    return 0;
}
