/* transport.h - point-to-point messages between ranks, the only thing the
 * executor needs from MPI. Two implementations: MPI (transport_mpi.c) and
 * an in-process mailbox for the serial emulation (transport_local.c); a
 * GPU transport (NCCL) fits behind the same calls.
 *
 * Every message carries a key (what it is, which minibatch, which
 * micro-batch). The receiver names the key it expects; a message with
 * another key or size is an error that stops the job, never silently
 * consumed. Sends never block: the data is copied and sent in the
 * background. Receives block, with a timeout that names the peer.
 */
#ifndef OURO_TRANSPORT_H
#define OURO_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    MSG_DATA = 1,   /* inputs and targets from the coordinator */
    MSG_ACT,        /* activations, downstream */
    MSG_GRAD,       /* gradients of activations, upstream */
    MSG_REDUCE,     /* a contribution to an ordered reduction */
    MSG_RESULT,     /* the result of a reduction */
    MSG_EVAL,       /* activations of an evaluation pass */
    MSG_STATS,      /* per-rank statistics to rank 0 */
    MSG_PARAMS,     /* parameters to rank 0 at the end */
    MSG_CKPT,       /* checkpoint hand-shakes (checkpoint.c) */
} MsgKind;

typedef struct {
    int32_t kind;
    int32_t micro; /* micro-batch, module, or chunk: what the kind needs */
    int64_t id;    /* minibatch or step */
} MsgKey;

typedef struct Transport Transport;
struct Transport {
    int rank, size;
    double wait_s; /* seconds blocked in recv */
    double comm_s; /* seconds spent sending and copying */
    void (*send)(Transport *t, int dst, MsgKey key, const void *data, size_t bytes);
    void (*recv)(Transport *t, int src, MsgKey key, void *data, size_t bytes);
    /* A hint that a message will be received: lets MPI post it early. */
    void (*expect)(Transport *t, int src, MsgKey key, size_t bytes);
    /* Completes every outstanding send. */
    void (*flush)(Transport *t);

    /* Where the ranks run: this rank's index among the ranks of its host
     * and how many share the host (the GPU a rank takes). */
    int local_rank, local_size;

    /* GPU-resident messages (activations and their gradients). NULL unless
     * a device transport is on (NCCL, transport_nccl.c): the executor then
     * stages backend memory through host buffers and the calls above.
     * Same keys, same rules; dev points to device memory. */
    void (*send_device)(Transport *t, int dst, MsgKey key, const void *dev, size_t bytes);
    void (*recv_device)(Transport *t, int src, MsgKey key, void *dev, size_t bytes);
    /* In-place sum of n floats of device memory over the world ranks in
     * group[0..g) (every member calls it with the same group). NULL when
     * absent; the executor then uses its ordered host reduction. */
    void (*allreduce_device)(Transport *t, const int *group, int g, float *dev, size_t n);
    /* Turns on the device calls above for a GPU backend (be is a Backend*,
     * its device and stream) and pipelines of pipe_ranks ranks (device
     * messages go between pipeline neighbours; sums over the world or a
     * stage group): NULL where the build has no device transport. Returns
     * 1 when on, 0 when the ranks must stage through the host (e.g.
     * several ranks share one GPU, which NCCL refuses), with the reason
     * printed by world rank 0. Collective: every rank calls it. */
    int (*enable_device)(Transport *t, void *be, int pipe_ranks);
    void *device_impl;

    void *impl;
};

static inline MsgKey msg_key(MsgKind kind, int micro, int64_t id) {
    MsgKey k = {(int32_t)kind, (int32_t)micro, id};
    return k;
}

/* "activation of minibatch 12 (micro 0)" into out, for error messages. */
void msg_describe(MsgKey key, char *out, size_t outlen);

/* MPI transport over MPI_COMM_WORLD; timeout_s bounds every wait. */
Transport *transport_mpi_create(double timeout_s);
void transport_mpi_free(Transport *t);
/* The timeout (comm_timeout=) of an MPI transport, which device waits obey too. */
double transport_mpi_timeout(const Transport *t);

#ifdef HAVE_NCCL
/* transport_nccl.c: Transport.enable_device of the MPI transport, and its
 * undoing (called by transport_mpi_free; harmless when never enabled). */
int transport_nccl_enable(Transport *t, void *be, int pipe_ranks);
void transport_nccl_disable(Transport *t);
#endif

/* The emulated world: n ranks in one process, one thread each, run one
 * at a time (a rank runs until it waits for a message). */
typedef struct LocalWorld LocalWorld;
typedef void (*LocalRankMain)(Transport *t, void *arg);
/* Runs main(t, args[r]) for every rank r and returns when all are done.
 * A deadlock (every rank waiting, nothing to deliver) is an error. */
void transport_local_run(int n, LocalRankMain main, void **args);

#endif
