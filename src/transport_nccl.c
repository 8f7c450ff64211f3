/* transport_nccl.c - activations, their gradients and replica gradient sums
 * GPU to GPU over NCCL, as the device half of the MPI transport.
 *
 * What goes where. The payload of a device message (an activation, the
 * gradient of one, an evaluation activation: MSG_ACT, MSG_GRAD, MSG_EVAL)
 * goes over NCCL from GPU memory to GPU memory. Everything else stays on
 * MPI, and so does a small header per device message, sent with the host
 * transport under the message's own key: the byte count and a sequence
 * number. The receiver takes the header first (t->recv matches and checks
 * the key, with the MPI timeout), checks the count and that the number is
 * the next one it expects from that peer for that kind, and only then
 * takes the payload from NCCL. A receiver that disagrees with its sender
 * about the schedule therefore stops with a message naming the key, never
 * with the wrong tensor.
 *
 * Ordering. NCCL point-to-point has no tags: the k-th receive from a peer
 * on a communicator takes the k-th send of that peer on it. The executor
 * guarantees that between one sender and one receiver the messages of one
 * kind are received in the order they were sent, but not across kinds (a
 * rank may send a gradient and then an activation to a peer that takes
 * them in the other order). So every kind has communicators of its own.
 * One per kind is not enough, though: NCCL runs all the work of one
 * communicator in the order it was issued, whatever the stream, and a send
 * occupies its communicator until the peer posts the matching receive. The
 * ouroboros pipeline is a ring (module 0 and module K-1 both live on
 * pipeline rank 0) whose messages stay in flight from one step to the
 * next, so a rank that sends an activation downstream and then waits for
 * one from upstream on the same communicator would wait for its own send,
 * that is for the next step of its peer: a deadlock. Hence one
 * communicator per kind and per direction: for each edge of the ring (rank
 * i and rank i+1 of a pipeline) and each kind, a two-rank communicator on
 * which one end only sends and the other only receives. On every rank each
 * communicator then holds the messages of one (kind, peer) pair in send
 * order, which is the order the executor receives them in, and a send
 * waiting for its receiver never holds up anything else. split_groups
 * builds these (it needs the pipeline length, which enable does not know)
 * and connects each at once with a one-byte transfer (NCCL would
 * otherwise connect at the first message, blocking the sender's host
 * until the receiver gets there: see preconnect); a message between ranks
 * that are not ring neighbours is refused with a message. With that, any
 * schedule that is deadlock-free over the MPI transport (sends buffered,
 * receives blocking) is deadlock-free here too, as long as the GPU can
 * hold the few waiting NCCL kernels next to the compute (one per
 * communicator at most) and nothing synchronizes the whole device
 * (cudaDeviceSynchronize, cudaFree) while a send waits for a peer's next
 * step.
 *
 * Overlap. Every communicator has a stream of its own (non-blocking, top
 * priority, on the backend's GPU). A send copies the caller's tensor into
 * a transport buffer on the compute stream, so the caller may overwrite it
 * as soon as send_device returns, exactly like the host copy of the MPI
 * transport; the send stream waits for that copy and runs ncclSend from
 * the buffer while compute goes on. (Copying on the communication stream
 * instead would race: that stream may be held up behind an earlier send
 * for a whole step while the compute stream rewrites the tensor.) A
 * receive runs ncclRecv into a transport buffer on its own stream, without
 * waiting for this rank's queued compute, waits on the host for the data
 * to arrive, then queues the copy into the caller's tensor on the compute
 * stream and returns: the host stays ahead of the GPU. Buffers come from a
 * small pool and are reused once the event recorded after their last use
 * has completed, so memory stays at the number of messages in flight.
 * New buffers are stream-ordered allocations (cudaMallocAsync), which do
 * not synchronize the device. Messages a rank sends to itself (a two-
 * module pipeline on one rank) never touch NCCL, where a send with no
 * receive posted would block its stream: they wait in a FIFO per kind as
 * device copies and are served from there, on the compute stream.
 *
 * Gradient sums. allreduce_device sums over the world (one communicator)
 * or over a stage group, the ranks that hold the same modules in every
 * replica ({p, p + P, p + 2P, ...} for P pipeline ranks); the stage
 * communicators are split from the world one up front by
 * split_groups, because ncclCommSplit is collective over
 * every rank of the parent, not only the members. The sum runs after the
 * compute stream's queued work and the compute stream waits for it. NCCL's
 * summation order is fixed for a fixed communicator, message size and
 * algorithm choice, so a run repeats bit for bit on the same machines and
 * settings; but it is not the ordered host reduction of the CPU path
 * (group order, left to right), so the bits differ from that path.
 *
 * Fallback. NCCL refuses two ranks of one communicator on one GPU. enable
 * gathers every rank's host name and GPU PCI bus id; when two ranks of a
 * host share a GPU it returns 0 on every rank, installs nothing, and the
 * executor stages through host memory and MPI.
 *
 * Timeouts. Every wait here is bounded by the MPI transport's timeout
 * (comm_timeout=): the header wait by the MPI transport itself, the wait
 * for an NCCL transfer or sum by polling its completion event with a short
 * sleep, checking the communicator for asynchronous errors meanwhile. On
 * timeout or error the communicator is aborted and the job stops with a
 * message naming the peer and the key.
 */
#define _POSIX_C_SOURCE 200809L
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "common.h"
#include "cuda_check.h"
#include "transport.h"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 18, 0)
#error "the NCCL transport needs NCCL 2.18 or newer (ncclCommSplit, ncclConfig_t.splitShare)"
#endif

/* Connects this rank to its pipeline neighbours for device messages and
 * prepares the stage groups for allreduce_device; collective over the
 * world, after the world communicator exists. Returns 1, or 0 when the
 * device transport is off (then it does nothing, on every rank alike). */
static int split_groups(Transport *t, int pipe_ranks);

/* Every NCCL call goes through this: a failure stops the job with the call,
 * the place and NCCL's explanation. */
#define ncclCheck(call)                                                                    \
    do {                                                                                   \
        ncclResult_t nccl_check_res_ = (call);                                             \
        if (nccl_check_res_ != ncclSuccess)                                                \
            die("NCCL error %s at %s:%d in %s (%s)", ncclGetErrorString(nccl_check_res_), \
                __FILE__, __LINE__, #call, ncclGetLastError(NULL));                        \
    } while (0)

/* A wait polls its completion event this many times before it starts to
 * sleep 20 us between polls, and looks at the clock and at NCCL's
 * asynchronous error every CHECK_EVERY polls. */
enum { SPIN_POLLS = 2000, CHECK_EVERY = 256 };
/* More device messages in flight than this is a leak, not a schedule. */
enum { MAX_STAGE_BUFFERS = 256 };

/* The kinds that travel over NCCL: each has its own communicators. */
enum { LANE_ACT, LANE_GRAD, LANE_EVAL, N_LANES };
static const char *const lane_names[N_LANES] = {"activations", "gradients",
                                                "evaluation activations"};

/* One direction of one ring edge for one kind: a two-rank communicator on
 * which this rank only sends (an out channel) or only receives (in). */
typedef struct {
    ncclComm_t comm;    /* NULL: no such neighbour (one-rank pipeline) */
    int peer_world;     /* world rank at the other end, -1 when absent */
    int peer;           /* its rank in comm */
    cudaStream_t stream;
} Channel;

/* A device message from this rank to itself, waiting to be received. */
typedef struct SelfMsg {
    MsgKey key;
    size_t bytes;
    int buf; /* stage buffer holding it, -1 when empty */
    struct SelfMsg *next;
} SelfMsg;

/* A transport-owned device buffer; free for reuse when not held and its
 * event (recorded after its last use) has completed. */
typedef struct {
    void *ptr;
    size_t cap;
    cudaEvent_t released;
    int held;
} StageBuf;

/* What travels over MPI ahead of every payload. */
typedef struct {
    int64_t bytes;
    int64_t seq; /* 1, 2, ... per (kind, sender, receiver) */
} DeviceHeader;

typedef struct {
    int device;
    cudaStream_t compute; /* the backend's; never used after it may be gone */
    int stream_priority;
    double timeout_s;
    void (*host_flush)(Transport *t);

    ncclComm_t world;
    cudaStream_t reduce_stream;
    ncclComm_t stage; /* this rank's stage group, NULL when none */
    int *stage_members;
    int stage_size;

    int pipe_ranks; /* 0 until split_groups */
    Channel out[N_LANES], in[N_LANES];
    int64_t *sent_seq, *recv_seq; /* [lane * world + peer] */
    SelfMsg *self_msgs[N_LANES];  /* in send order */

    StageBuf *bufs;
    int n_bufs;

    cudaEvent_t ordered; /* scratch: one stream waits for another's work */
    cudaEvent_t landed;  /* scratch: polled right after it is recorded */

    ncclComm_t created[2 + 2 * N_LANES]; /* in creation order, for destroy */
    int n_created;
} NcclImpl;

/* ---------------------------------------------------------------- helpers */

/* "activation of minibatch 12 (part 0)": msg_describe into a buffer the
 * caller provides, for the argument list of a die(). */
typedef struct {
    char text[128];
} KeyText;

static const char *describe(MsgKey key, KeyText *kt) {
    msg_describe(key, kt->text, sizeof kt->text);
    return kt->text;
}

static int lane_of(MsgKey key, const char *what) {
    KeyText kt;
    switch (key.kind) {
    case MSG_ACT: return LANE_ACT;
    case MSG_GRAD: return LANE_GRAD;
    case MSG_EVAL: return LANE_EVAL;
    default:
        die("device %s of the %s (message kind %d): only activations, their gradients "
            "and evaluation activations travel GPU to GPU (an executor bug)",
            what, describe(key, &kt), (int)key.kind);
    }
}

static void check_peer(const Transport *t, int peer, MsgKey key, const char *dir) {
    KeyText kt;
    if (peer < 0 || peer >= t->size)
        die("device message %s rank %d (the %s) but the world has ranks 0..%d", dir, peer,
            describe(key, &kt), t->size - 1);
}

/* "2.28.9" from NCCL's version code (two encodings, see NCCL_VERSION). */
static void version_text(int code, char *out, size_t len) {
    if (code >= 10000)
        snprintf(out, len, "%d.%d.%d", code / 10000, code / 100 % 100, code % 100);
    else
        snprintf(out, len, "%d.%d.%d", code / 1000, code / 100 % 10, code % 100);
}

/* "0, 4, 8" (at most the first 8 ranks) into out, for error messages. */
static void ranks_text(const int *r, int n, char *out, size_t len) {
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < n && i < 8 && used + 1 < len; i++)
        used += (size_t)snprintf(out + used, len - used, "%s%d", i ? ", " : "", r[i]);
    if (n > 8 && used + 1 < len) snprintf(out + used, len - used, ", ... (%d ranks)", n);
}

static cudaStream_t new_stream(const NcclImpl *n) {
    cudaStream_t s;
    cudaCheck(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, n->stream_priority));
    return s;
}

/* Has all work before ev's last record completed? cudaErrorNotReady is an
 * answer, not an error; the runtime may still keep it as the thread's last
 * error, which a later cudaCheckLaunch would take for a failed launch, so
 * it is cleared (every other call is checked at once, so nothing else can
 * be pending there). */
static int event_done(cudaEvent_t ev) {
    cudaError_t err = cudaEventQuery(ev);
    if (err == cudaSuccess) return 1;
    if (err != cudaErrorNotReady)
        cuda_check_failed(err, "cudaEventQuery(ev)", __FILE__, __LINE__);
    (void)cudaGetLastError();
    return 0;
}

/* Polls ev until it completes, like the MPI transport's waits: spins a
 * little, then sleeps 20 us between polls, and looks at comm for an
 * asynchronous NCCL error now and then. Returns ncclSuccess when done,
 * NCCL's error, or ncclInProgress after the timeout. */
static ncclResult_t wait_event(const NcclImpl *n, cudaEvent_t ev, ncclComm_t comm,
                               double *waited) {
    double t0 = now_seconds();
    struct timespec nap = {0, 20000};
    ncclResult_t res = ncclSuccess;
    for (long polls = 0;; polls++) {
        if (event_done(ev)) break;
        if (polls % CHECK_EVERY == 0) {
            ncclResult_t async = ncclSuccess;
            ncclCheck(ncclCommGetAsyncError(comm, &async));
            if (async != ncclSuccess && async != ncclInProgress) {
                res = async;
                break;
            }
            if (now_seconds() - t0 > n->timeout_s) {
                res = ncclInProgress;
                break;
            }
        }
        if (polls >= SPIN_POLLS) nanosleep(&nap, NULL);
    }
    *waited = now_seconds() - t0;
    return res;
}

/* Aborts comm (its kernels are stuck or broken) and returns why, for the
 * message that follows; the abort's own failure is reported in it rather
 * than hiding the reason the job stops. */
static void abort_comm(ncclComm_t comm, char *detail, size_t len) {
    snprintf(detail, len, "%s", ncclGetLastError(comm));
    ncclResult_t ar = ncclCommAbort(comm);
    if (ar != ncclSuccess) {
        size_t used = strlen(detail);
        snprintf(detail + used, len - used, "%sncclCommAbort failed too: %s",
                 used ? "; " : "", ncclGetErrorString(ar));
    }
}

/* ---------------------------------------------------------------- stage buffers */

/* A free buffer of at least `bytes` (the smallest that fits), or a new one
 * allocated in stream order on `first_use`. Held until stage_release. */
static int stage_take(NcclImpl *n, size_t bytes, cudaStream_t first_use) {
    int best = -1;
    for (int i = 0; i < n->n_bufs; i++) {
        StageBuf *b = &n->bufs[i];
        if (b->held || b->cap < bytes) continue;
        if (best >= 0 && n->bufs[best].cap <= b->cap) continue;
        if (event_done(b->released)) best = i;
    }
    if (best >= 0) {
        n->bufs[best].held = 1;
        return best;
    }
    if (n->n_bufs == MAX_STAGE_BUFFERS)
        die("more than %d device messages are in flight (this one %zu bytes): sends are "
            "not being received (an executor bug, or a peer far behind)",
            MAX_STAGE_BUFFERS, bytes);
    if (n->n_bufs % 16 == 0)
        n->bufs = realloc(n->bufs, (size_t)(n->n_bufs + 16) * sizeof *n->bufs);
    if (!n->bufs) die("out of memory for the NCCL transport's buffer list");
    StageBuf *b = &n->bufs[n->n_bufs];
    memset(b, 0, sizeof *b);
    cudaCheck(cudaMallocAsync(&b->ptr, bytes, first_use));
    cudaCheck(cudaEventCreateWithFlags(&b->released, cudaEventDisableTiming));
    b->cap = bytes;
    b->held = 1;
    return n->n_bufs++;
}

/* The buffer is free again once `stream` has done what is queued on it. */
static void stage_release(NcclImpl *n, int i, cudaStream_t stream) {
    cudaCheck(cudaEventRecord(n->bufs[i].released, stream));
    n->bufs[i].held = 0;
}

/* Makes `waiter` wait for everything queued so far on `first`. */
static void order_after(NcclImpl *n, cudaStream_t waiter, cudaStream_t first) {
    cudaCheck(cudaEventRecord(n->ordered, first));
    cudaCheck(cudaStreamWaitEvent(waiter, n->ordered, 0));
}

/* ---------------------------------------------------------------- to itself */

static void self_put(NcclImpl *n, int lane, MsgKey key, const void *dev, size_t bytes) {
    SelfMsg *m = xcalloc(1, sizeof *m);
    m->key = key;
    m->bytes = bytes;
    m->buf = -1;
    if (bytes) {
        m->buf = stage_take(n, bytes, n->compute);
        cudaCheck(cudaMemcpyAsync(n->bufs[m->buf].ptr, dev, bytes, cudaMemcpyDeviceToDevice,
                                  n->compute));
    }
    SelfMsg **end = &n->self_msgs[lane];
    while (*end) end = &(*end)->next;
    *end = m;
}

static void self_take(NcclImpl *n, int lane, MsgKey key, void *dev, size_t bytes) {
    SelfMsg **p = &n->self_msgs[lane];
    while (*p && !((*p)->key.kind == key.kind && (*p)->key.micro == key.micro &&
                   (*p)->key.id == key.id))
        p = &(*p)->next;
    KeyText kt;
    if (!*p)
        die("expected the %s from this rank itself, but it has not sent it: the schedule "
            "receives before it sends (an executor bug)", describe(key, &kt));
    SelfMsg *m = *p;
    if (m->bytes != bytes)
        die("the %s this rank sent itself has %zu bytes, the receive expects %zu (an "
            "executor bug)", describe(key, &kt), m->bytes, bytes);
    if (bytes) {
        cudaCheck(cudaMemcpyAsync(dev, n->bufs[m->buf].ptr, bytes, cudaMemcpyDeviceToDevice,
                                  n->compute));
        stage_release(n, m->buf, n->compute);
    }
    *p = m->next;
    free(m);
}

/* ---------------------------------------------------------------- messages */

/* The channel that carries `key` to (out) or from (!out) `peer`. */
static Channel *channel_for(NcclImpl *n, int lane, int peer, int out, MsgKey key) {
    KeyText kt;
    const char *dir = out ? "to" : "from";
    if (!n->pipe_ranks)
        die("the %s %s rank %d needs the NCCL channels between pipeline neighbours, which "
            "are not set up (an executor bug)", describe(key, &kt), dir, peer);
    Channel *ch = out ? &n->out[lane] : &n->in[lane];
    if (!ch->comm)
        die("the %s %s rank %d: this rank has no pipeline neighbour for %s over NCCL (a "
            "pipeline of %d rank%s; an executor bug)", describe(key, &kt), dir, peer,
            lane_names[lane], n->pipe_ranks, n->pipe_ranks > 1 ? "s" : "");
    if (ch->peer_world != peer)
        die("the %s %s rank %d: NCCL carries %s only between pipeline neighbours, and this "
            "rank %s them %s rank %d (a schedule that is not a ring of %d pipeline ranks?)",
            describe(key, &kt), dir, peer, lane_names[lane], out ? "sends" : "receives", dir,
            ch->peer_world, n->pipe_ranks);
    return ch;
}

static void nccl_send_device(Transport *t, int dst, MsgKey key, const void *dev,
                             size_t bytes) {
    NcclImpl *n = t->device_impl;
    double t0 = now_seconds();
    int lane = lane_of(key, "send");
    check_peer(t, dst, key, "to");
    if (dst == t->rank) {
        self_put(n, lane, key, dev, bytes);
        t->comm_s += now_seconds() - t0;
        return;
    }
    Channel *ch = channel_for(n, lane, dst, 1, key);
    int64_t *seq = &n->sent_seq[(size_t)lane * (size_t)t->size + (size_t)dst];
    DeviceHeader h = {(int64_t)bytes, ++*seq};
    /* The header first: the receiver can post its ncclRecv while this
     * rank's compute, which the send waits for, still runs. */
    t->send(t, dst, key, &h, sizeof h);
    if (bytes) {
        int b = stage_take(n, bytes, n->compute);
        /* on the compute stream: the caller may reuse dev once we return */
        cudaCheck(cudaMemcpyAsync(n->bufs[b].ptr, dev, bytes, cudaMemcpyDeviceToDevice,
                                  n->compute));
        order_after(n, ch->stream, n->compute);
        ncclCheck(ncclSend(n->bufs[b].ptr, bytes, ncclUint8, ch->peer, ch->comm, ch->stream));
        stage_release(n, b, ch->stream);
    }
    t->comm_s += now_seconds() - t0;
}

static void receive_failed(Channel *ch, ncclResult_t res, MsgKey key, int src,
                           double waited) {
    char desc[128], detail[512];
    msg_describe(key, desc, sizeof desc);
    abort_comm(ch->comm, detail, sizeof detail);
    ch->comm = NULL;
    if (res == ncclInProgress)
        die("no %s from rank %d after %.0f s: its header came over MPI but the GPU transfer "
            "(NCCL) did not finish; that rank may have died or hung, or NCCL cannot reach "
            "it (raise comm_timeout= if it is just slow; NCCL_DEBUG=WARN for NCCL's view)%s%s",
            desc, src, waited, detail[0] ? ": " : "", detail);
    die("NCCL failed receiving the %s from rank %d: %s%s%s", desc, src,
        ncclGetErrorString(res), detail[0] ? ": " : "", detail);
}

static void nccl_recv_device(Transport *t, int src, MsgKey key, void *dev, size_t bytes) {
    NcclImpl *n = t->device_impl;
    int lane = lane_of(key, "receive");
    check_peer(t, src, key, "from");
    if (src == t->rank) {
        double t0 = now_seconds();
        self_take(n, lane, key, dev, bytes);
        t->comm_s += now_seconds() - t0;
        return;
    }
    Channel *ch = channel_for(n, lane, src, 0, key);
    DeviceHeader h;
    t->recv(t, src, key, &h, sizeof h);
    double t0 = now_seconds();
    int64_t *seq = &n->recv_seq[(size_t)lane * (size_t)t->size + (size_t)src];
    KeyText kt;
    if (h.bytes != (int64_t)bytes)
        die("the %s from rank %d has %lld bytes, expected %zu: the ranks disagree on the "
            "model or batch shape", describe(key, &kt), src, (long long)h.bytes, bytes);
    if (h.seq != *seq + 1)
        die("the %s from rank %d is its device message %lld of these %s to this rank, but "
            "this rank expected number %lld: NCCL delivers them in send order, so the "
            "executor received them out of order (an executor bug)",
            describe(key, &kt), src, (long long)h.seq, lane_names[lane],
            (long long)(*seq + 1));
    *seq = h.seq;
    if (!bytes) {
        t->comm_s += now_seconds() - t0;
        return;
    }
    /* into a transport buffer, so the transfer need not wait for this
     * rank's queued compute, which may still read the caller's buffer */
    int b = stage_take(n, bytes, ch->stream);
    ncclCheck(ncclRecv(n->bufs[b].ptr, bytes, ncclUint8, ch->peer, ch->comm, ch->stream));
    cudaCheck(cudaEventRecord(n->landed, ch->stream));
    double waited = 0.0;
    ncclResult_t res = wait_event(n, n->landed, ch->comm, &waited);
    if (res != ncclSuccess) receive_failed(ch, res, key, src, waited);
    cudaCheck(cudaStreamWaitEvent(n->compute, n->landed, 0));
    cudaCheck(cudaMemcpyAsync(dev, n->bufs[b].ptr, bytes, cudaMemcpyDeviceToDevice,
                              n->compute));
    stage_release(n, b, n->compute);
    t->wait_s += waited;
    t->comm_s += now_seconds() - t0 - waited;
}

/* ---------------------------------------------------------------- sums */

static int same_ranks(const int *a, const int *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* The communicator whose ranks are exactly group[0..g), in that order. */
static ncclComm_t group_comm(const NcclImpl *n, const Transport *t, const int *group, int g) {
    int identity = g == t->size;
    for (int i = 0; identity && i < g; i++) identity = group[i] == i;
    if (identity) return n->world;
    if (n->stage && g == n->stage_size && same_ranks(group, n->stage_members, g))
        return n->stage;
    char list[160];
    ranks_text(group, g, list, sizeof list);
    die("a GPU gradient sum over ranks %s has no NCCL communicator: only the whole world "
        "and this rank's stage group are prepared (an executor bug)", list);
}

static void nccl_allreduce_device(Transport *t, const int *group, int g, float *dev,
                                  size_t count) {
    NcclImpl *n = t->device_impl;
    int member = 0;
    for (int i = 0; i < g; i++) member |= group[i] == t->rank;
    if (!member) die("rank %d takes part in a GPU gradient sum over a group it is not in "
                     "(an executor bug)", t->rank);
    if (g <= 1 || count == 0) return;
    ncclComm_t comm = group_comm(n, t, group, g);
    double t0 = now_seconds();
    order_after(n, n->reduce_stream, n->compute);
    ncclCheck(ncclAllReduce(dev, dev, count, ncclFloat, ncclSum, comm, n->reduce_stream));
    cudaCheck(cudaEventRecord(n->landed, n->reduce_stream));
    double waited = 0.0;
    ncclResult_t res = wait_event(n, n->landed, comm, &waited);
    if (res != ncclSuccess) {
        char list[160], detail[512];
        ranks_text(group, g, list, sizeof list);
        abort_comm(comm, detail, sizeof detail);
        if (res == ncclInProgress)
            die("the GPU gradient sum of %zu floats over ranks %s did not finish after %.0f "
                "s: one of them may have died or hung (raise comm_timeout= if it is just "
                "slow)%s%s", count, list, waited, detail[0] ? ": " : "", detail);
        die("NCCL failed summing %zu gradient floats over ranks %s: %s%s%s", count, list,
            ncclGetErrorString(res), detail[0] ? ": " : "", detail);
    }
    cudaCheck(cudaStreamWaitEvent(n->compute, n->landed, 0));
    t->comm_s += now_seconds() - t0;
}

/* ---------------------------------------------------------------- flush */

/* Waits, bounded, until every device send has been taken by its receiver. */
static void drain_sends(Transport *t, NcclImpl *n) {
    for (int lane = 0; lane < N_LANES; lane++) {
        Channel *ch = &n->out[lane];
        if (!ch->comm) continue;
        cudaCheck(cudaEventRecord(n->landed, ch->stream));
        double waited = 0.0;
        ncclResult_t res = wait_event(n, n->landed, ch->comm, &waited);
        t->wait_s += waited;
        if (res == ncclSuccess) continue;
        char detail[512];
        abort_comm(ch->comm, detail, sizeof detail);
        ch->comm = NULL;
        if (res == ncclInProgress)
            die("the %s this rank sent to rank %d over NCCL were not all received after "
                "%.0f s: that rank may have died or hung, or the schedule sends what it "
                "never receives%s%s", lane_names[lane], ch->peer_world, waited,
                detail[0] ? ": " : "", detail);
        die("NCCL failed sending %s to rank %d: %s%s%s", lane_names[lane], ch->peer_world,
            ncclGetErrorString(res), detail[0] ? ": " : "", detail);
    }
}

static void nccl_flush(Transport *t) {
    NcclImpl *n = t->device_impl;
    double t0 = now_seconds();
    drain_sends(t, n);
    t->comm_s += now_seconds() - t0;
    n->host_flush(t);
}

/* ---------------------------------------------------------------- set-up */

typedef struct {
    char host[MPI_MAX_PROCESSOR_NAME + 1];
    char bus[64];
} GpuPlace;

/* Returns 1 and the first pair of ranks (on one host) that share a GPU. */
static int find_shared_gpu(const GpuPlace *all, int size, int *a, int *b) {
    for (int i = 0; i < size; i++)
        for (int j = i + 1; j < size; j++)
            if (!strcmp(all[i].bus, all[j].bus) && !strcmp(all[i].host, all[j].host)) {
                *a = i;
                *b = j;
                return 1;
            }
    return 0;
}

static int enable_world(Transport *t, void *backend) {
    Backend *be = backend;
    if (t->device_impl) return 1;
    if (!be || be->host_memory || be->device < 0)
        die("the NCCL transport was turned on for the %s backend; it needs a GPU backend "
            "(an integration bug)", be ? be->name : "missing");
    cudaCheck(cudaSetDevice(be->device));

    /* Collective check that NCCL can take these ranks at all. */
    GpuPlace mine;
    memset(&mine, 0, sizeof mine);
    int len = 0;
    MPI_Get_processor_name(mine.host, &len);
    cudaCheck(cudaDeviceGetPCIBusId(mine.bus, (int)sizeof mine.bus, be->device));
    GpuPlace *all = xcalloc((size_t)t->size, sizeof *all);
    MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE,
                  MPI_COMM_WORLD);
    int a = -1, b = -1;
    if (find_shared_gpu(all, t->size, &a, &b)) {
        if (t->rank == 0) {
            printf("transport: ranks %d and %d share GPU %s on %s: activations go through "
                   "host memory over MPI\n", a, b, all[a].bus, all[a].host);
            fflush(stdout);
        }
        free(all);
        return 0;
    }
    free(all);

    NcclImpl *n = xcalloc(1, sizeof *n);
    n->device = be->device;
    n->compute = (cudaStream_t)be->stream;
    n->timeout_s = transport_mpi_timeout(t);
    int least = 0, greatest = 0;
    cudaCheck(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    n->stream_priority = greatest; /* communication first, compute fills the rest */
    for (int lane = 0; lane < N_LANES; lane++) {
        n->out[lane].peer_world = n->in[lane].peer_world = -1;
    }
    n->sent_seq = xcalloc((size_t)N_LANES * (size_t)t->size, sizeof *n->sent_seq);
    n->recv_seq = xcalloc((size_t)N_LANES * (size_t)t->size, sizeof *n->recv_seq);
    cudaCheck(cudaEventCreateWithFlags(&n->ordered, cudaEventDisableTiming));
    cudaCheck(cudaEventCreateWithFlags(&n->landed, cudaEventDisableTiming));
    n->reduce_stream = new_stream(n);

    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (t->rank == 0) ncclCheck(ncclGetUniqueId(&id));
    MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    ncclCheck(ncclCommInitRank(&n->world, t->size, id, t->rank));
    n->created[n->n_created++] = n->world;

    int version = 0;
    ncclCheck(ncclGetVersion(&version));
    if (t->rank == 0) {
        char v[32];
        version_text(version, v, sizeof v);
        printf("transport: NCCL %s over %d ranks: activations GPU to GPU\n", v, t->size);
        fflush(stdout);
    }

    n->host_flush = t->flush;
    t->device_impl = n;
    t->send_device = nccl_send_device;
    t->recv_device = nccl_recv_device;
    t->allreduce_device = nccl_allreduce_device;
    t->flush = nccl_flush;
    return 1;
}

/* The ring edges of a pipeline of P ranks: edge e joins pipeline ranks e
 * and (e + 1) mod P. Communicators are split from the world in rounds,
 * each rank in at most one edge per round (a proper edge colouring of the
 * ring): even edges, then odd ones, then for odd P the closing edge. */
static int ring_rounds(int P) { return P < 2 ? 0 : P % 2 ? 3 : 2; }
static int edge_round(int e, int P) { return P % 2 && e == P - 1 ? 2 : e % 2; }

static ncclComm_t split_world(NcclImpl *n, int color, int key) {
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 1;
    cfg.splitShare = 0; /* own resources: a parent's work must not queue behind it */
    ncclComm_t c = NULL;
    ncclCheck(ncclCommSplit(n->world, color, key, &c, &cfg));
    if (c) n->created[n->n_created++] = c;
    return c;
}

/* NCCL connects the two ends of a point-to-point pair lazily, at their
 * first send and receive, and that set-up blocks the host until the peer
 * takes part. Left to the first message, it would deadlock: a sender
 * blocked in ncclSend never posts the header its receiver waits for, and
 * a message received only in the peer's next step (the pipelined
 * schedules) holds the sender inside this step's ncclSend while the peer
 * waits for it elsewhere (the stop vote, the statistics). So every channel
 * moves one byte as soon as it exists, while both ends are here, in the
 * same round of the splits: later sends only enqueue work. The connection
 * covers every NCCL channel the pair will use, whatever the message size. */
static void preconnect(NcclImpl *n, Channel *ch, int sends, int lane, void *probe) {
    if (sends)
        ncclCheck(ncclSend(probe, 1, ncclUint8, ch->peer, ch->comm, ch->stream));
    else
        ncclCheck(ncclRecv(probe, 1, ncclUint8, ch->peer, ch->comm, ch->stream));
    cudaCheck(cudaEventRecord(n->landed, ch->stream));
    double waited = 0.0;
    ncclResult_t res = wait_event(n, n->landed, ch->comm, &waited);
    if (res == ncclSuccess) return;
    char detail[512];
    abort_comm(ch->comm, detail, sizeof detail);
    ch->comm = NULL;
    die("connecting the NCCL channel for %s %s rank %d failed (%s) after %.0f s: is the "
        "peer's GPU reachable (NCCL_DEBUG=WARN for NCCL's view)?%s%s", lane_names[lane],
        sends ? "to" : "from", ch->peer_world,
        res == ncclInProgress ? "timed out" : ncclGetErrorString(res), waited,
        detail[0] ? ": " : "", detail);
}

/* Builds the two channels of one kind. Forward kinds (activations) flow
 * from pipeline rank i to i + 1, gradients from i + 1 to i. On edge e the
 * lower end (rank e) has key 0, the upper end key 1. */
static void connect_lane(NcclImpl *n, int lane, int world_rank, int P, void *probe) {
    int j = world_rank / P, i = world_rank % P;
    int up = (i + 1) % P, down = (i + P - 1) % P; /* edges i and i - 1 */
    int next = j * P + up, prev = j * P + down;
    int forward = lane != LANE_GRAD;
    for (int round = 0; round < ring_rounds(P); round++) {
        int color = NCCL_SPLIT_NOCOLOR, key = 0;
        Channel *ch = NULL;
        int peer_world = -1;
        if (edge_round(i, P) == round) { /* edge i: this rank is its lower end */
            color = j * P + i;
            key = 0;
            ch = forward ? &n->out[lane] : &n->in[lane];
            peer_world = next;
        } else if (edge_round(down, P) == round) { /* edge i - 1: the upper end */
            color = j * P + down;
            key = 1;
            ch = forward ? &n->in[lane] : &n->out[lane];
            peer_world = prev;
        }
        ncclComm_t c = split_world(n, color, key);
        if (!ch) continue;
        if (!c)
            die("NCCL split gave rank %d no communicator for the edge to rank %d (an NCCL "
                "or set-up bug)", world_rank, peer_world);
        int me = 0, count = 0;
        ncclCheck(ncclCommUserRank(c, &me));
        ncclCheck(ncclCommCount(c, &count));
        if (count != 2)
            die("the NCCL communicator for the edge between ranks %d and %d has %d ranks, "
                "expected 2 (a set-up bug)", world_rank, peer_world, count);
        ch->comm = c;
        ch->peer = 1 - me;
        ch->peer_world = peer_world;
        ch->stream = new_stream(n);
        preconnect(n, ch, ch == &n->out[lane], lane, probe);
    }
}

static int split_groups(Transport *t, int pipe_ranks) {
    NcclImpl *n = t->device_impl;
    if (!n) return 0;
    if (n->pipe_ranks) die("the NCCL transport was enabled twice (an executor bug)");
    int P = pipe_ranks;
    if (P < 1 || t->size % P)
        die("cannot split %d ranks into pipelines of %d ranks (an integration bug)", t->size,
            P);
    cudaCheck(cudaSetDevice(n->device));
    /* the byte each channel moves to connect, whatever its value (nothing
     * else runs yet, so cudaFree's wait for the whole device costs nothing) */
    void *probe = NULL;
    cudaCheck(cudaMalloc(&probe, 256));
    /* The same calls in the same order on every rank: each is collective. */
    for (int lane = 0; lane < N_LANES; lane++) connect_lane(n, lane, t->rank, P, probe);
    cudaCheck(cudaFree(probe));
    int R = t->size / P;
    if (R > 1 && R < t->size) {
        /* stage group of pipeline rank p: p, p + P, ..., in replica order */
        n->stage = split_world(n, t->rank % P, t->rank / P);
        if (!n->stage) die("NCCL split gave rank %d no stage group (an NCCL bug)", t->rank);
        n->stage_size = R;
        n->stage_members = xmalloc((size_t)R * sizeof(int));
        for (int j = 0; j < R; j++) n->stage_members[j] = j * P + t->rank % P;
    }
    n->pipe_ranks = P;
    return 1;
}

int transport_nccl_enable(Transport *t, void *backend, int pipe_ranks) {
    if (t->device_impl) return 1;
    if (!enable_world(t, backend)) return 0;
    return split_groups(t, pipe_ranks);
}

void transport_nccl_disable(Transport *t) {
    if (!t || !t->device_impl) return;
    NcclImpl *n = t->device_impl;
    cudaCheck(cudaSetDevice(n->device));
    /* Sends wait on peers (bounded). After them no NCCL kernel waits for
     * anyone (receives and sums were waited for when issued), so the whole
     * device can be synchronized: that also covers copies still queued on
     * the compute stream, which may be gone already and is not touched. */
    drain_sends(t, n);
    cudaCheck(cudaDeviceSynchronize());
    for (int i = 0; i < n->n_bufs; i++) {
        cudaCheck(cudaFreeAsync(n->bufs[i].ptr, n->reduce_stream));
        cudaCheck(cudaEventDestroy(n->bufs[i].released));
    }
    cudaCheck(cudaStreamSynchronize(n->reduce_stream));
    free(n->bufs);
    for (int lane = 0; lane < N_LANES; lane++)
        while (n->self_msgs[lane]) {
            SelfMsg *m = n->self_msgs[lane];
            n->self_msgs[lane] = m->next;
            free(m);
        }
    /* The split communicators before the world one they came from, in an
     * order that is the same on every rank (the reverse of creation). */
    for (int i = n->n_created - 1; i >= 0; i--) ncclCheck(ncclCommDestroy(n->created[i]));
    for (int lane = 0; lane < N_LANES; lane++) {
        if (n->out[lane].stream) cudaCheck(cudaStreamDestroy(n->out[lane].stream));
        if (n->in[lane].stream) cudaCheck(cudaStreamDestroy(n->in[lane].stream));
    }
    cudaCheck(cudaStreamDestroy(n->reduce_stream));
    cudaCheck(cudaEventDestroy(n->ordered));
    cudaCheck(cudaEventDestroy(n->landed));
    t->flush = n->host_flush;
    t->send_device = NULL;
    t->recv_device = NULL;
    t->allreduce_device = NULL;
    t->device_impl = NULL;
    free(n->stage_members);
    free(n->sent_seq);
    free(n->recv_seq);
    free(n);
}
