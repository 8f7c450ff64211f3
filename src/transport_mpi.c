/* transport_mpi.c - the transport over MPI point-to-point.
 *
 * Each message is a header (the key and the payload size) followed by the
 * payload, sent with MPI_Isend from a private copy. The MPI tag is derived
 * from the key so that messages of different kinds and minibatches never
 * match each other; the header is checked on arrival anyway, so a message
 * consumed out of order is reported, not used. Receives can be posted
 * early (expect) and are completed by polling MPI_Test with a short sleep,
 * which keeps oversubscribed ranks from starving each other and lets a
 * wait give up with a message after the timeout. */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "transport.h"

typedef struct {
    MsgKey key;
    int64_t bytes;
} WireHeader;

typedef struct Pending {
    MPI_Request req;
    int peer;
    MsgKey key;
    size_t bytes;
    char *buf; /* header + payload */
    struct Pending *next;
} Pending;

typedef struct {
    Pending *sends, *recvs;
    double timeout_s;
    int tag_ub;
} MpiImpl;

static int key_tag(const MpiImpl *m, MsgKey k) {
    long tag = (long)(k.kind & 15) | ((long)(k.micro & 63) << 4) |
               ((long)(k.id & 0x3fff) << 10);
    return (int)(tag % ((long)m->tag_ub + 1));
}

static int same_key(MsgKey a, MsgKey b) {
    return a.kind == b.kind && a.micro == b.micro && a.id == b.id;
}

/* Frees the sends MPI has completed. */
static void reap_sends(MpiImpl *m) {
    Pending **p = &m->sends;
    while (*p) {
        int done = 0;
        MPI_Test(&(*p)->req, &done, MPI_STATUS_IGNORE);
        if (done) {
            Pending *d = *p;
            *p = d->next;
            free(d->buf);
            free(d);
        } else {
            p = &(*p)->next;
        }
    }
}

static void mpi_send(Transport *t, int dst, MsgKey key, const void *data, size_t bytes) {
    MpiImpl *m = t->impl;
    double t0 = now_seconds();
    reap_sends(m);
    Pending *s = xcalloc(1, sizeof *s);
    s->buf = xmalloc(sizeof(WireHeader) + bytes);
    WireHeader h = {key, (int64_t)bytes};
    memcpy(s->buf, &h, sizeof h);
    if (bytes) memcpy(s->buf + sizeof h, data, bytes);
    s->peer = dst;
    s->key = key;
    s->bytes = bytes;
    if (sizeof h + bytes > (size_t)0x7fffffff)
        die("message of %zu bytes to rank %d is too large for one MPI send", bytes, dst);
    MPI_Isend(s->buf, (int)(sizeof h + bytes), MPI_BYTE, dst, key_tag(m, key),
              MPI_COMM_WORLD, &s->req);
    s->next = m->sends;
    m->sends = s;
    t->comm_s += now_seconds() - t0;
}

static Pending *post_recv(Transport *t, int src, MsgKey key, size_t bytes) {
    MpiImpl *m = t->impl;
    for (Pending *r = m->recvs; r; r = r->next)
        if (r->peer == src && same_key(r->key, key)) return r;
    Pending *r = xcalloc(1, sizeof *r);
    r->buf = xmalloc(sizeof(WireHeader) + bytes);
    r->peer = src;
    r->key = key;
    r->bytes = bytes;
    MPI_Irecv(r->buf, (int)(sizeof(WireHeader) + bytes), MPI_BYTE, src, key_tag(m, key),
              MPI_COMM_WORLD, &r->req);
    /* append: receives complete in the order they were posted */
    Pending **end = &m->recvs;
    while (*end) end = &(*end)->next;
    *end = r;
    return r;
}

static void mpi_expect(Transport *t, int src, MsgKey key, size_t bytes) {
    post_recv(t, src, key, bytes);
}

/* Polls until the request completes; spins briefly, then sleeps 20 us
 * between polls. Dies naming the peer after the timeout. */
static void wait_request(Transport *t, MPI_Request *req, MPI_Status *st, int peer,
                         MsgKey key) {
    MpiImpl *m = t->impl;
    double t0 = now_seconds();
    struct timespec nap = {0, 20000};
    for (long polls = 0;; polls++) {
        int done = 0;
        MPI_Test(req, &done, st);
        if (done) break;
        if (polls < 2000) continue;
        nanosleep(&nap, NULL);
        if ((polls & 1023) == 0 && now_seconds() - t0 > m->timeout_s) {
            char what[128];
            msg_describe(key, what, sizeof what);
            die("waited %.0f s for the %s from rank %d; that rank may have died or "
                "hung (raise comm_timeout= if it is just slow)", m->timeout_s, what, peer);
        }
    }
    t->wait_s += now_seconds() - t0;
}

static void mpi_recv(Transport *t, int src, MsgKey key, void *data, size_t bytes) {
    MpiImpl *m = t->impl;
    Pending *r = post_recv(t, src, key, bytes);
    MPI_Status st;
    wait_request(t, &r->req, &st, src, key);
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    WireHeader h;
    memcpy(&h, r->buf, sizeof h);
    char want[128], got[128];
    msg_describe(key, want, sizeof want);
    if (count < (int)sizeof h)
        die("a message from rank %d is shorter than its header (expected the %s)", src, want);
    msg_describe(h.key, got, sizeof got);
    if (!same_key(h.key, key))
        die("expected the %s from rank %d but received the %s: the ranks disagree on the "
            "schedule (same config and binary on every rank?)", want, src, got);
    if ((size_t)h.bytes != bytes || (size_t)count != sizeof h + bytes)
        die("the %s from rank %d has %lld bytes, expected %zu: the ranks disagree on the "
            "model or batch shape", want, src, (long long)h.bytes, bytes);
    double t0 = now_seconds();
    if (bytes) memcpy(data, r->buf + sizeof h, bytes);
    Pending **p = &m->recvs;
    while (*p != r) p = &(*p)->next;
    *p = r->next;
    free(r->buf);
    free(r);
    t->comm_s += now_seconds() - t0;
}

static void mpi_flush(Transport *t) {
    MpiImpl *m = t->impl;
    while (m->sends) {
        Pending *s = m->sends;
        wait_request(t, &s->req, MPI_STATUS_IGNORE, s->peer, s->key);
        m->sends = s->next;
        free(s->buf);
        free(s);
    }
}

Transport *transport_mpi_create(double timeout_s) {
    Transport *t = xcalloc(1, sizeof *t);
    MpiImpl *m = xcalloc(1, sizeof *m);
    MPI_Comm_rank(MPI_COMM_WORLD, &t->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &t->size);
    int *ub = NULL, flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
    m->tag_ub = flag && ub ? *ub : 32767;
    m->timeout_s = timeout_s;
    /* The ranks of this host: a shared-memory split, which agrees with
     * Open MPI's and Slurm's local-rank variables and needs neither. */
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, t->rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &t->local_rank);
    MPI_Comm_size(node, &t->local_size);
    MPI_Comm_free(&node);
#ifdef HAVE_NCCL
    t->enable_device = transport_nccl_enable;
#endif
    t->impl = m;
    t->send = mpi_send;
    t->recv = mpi_recv;
    t->expect = mpi_expect;
    t->flush = mpi_flush;
    return t;
}

double transport_mpi_timeout(const Transport *t) {
    return ((const MpiImpl *)t->impl)->timeout_s;
}

void transport_mpi_free(Transport *t) {
    if (!t) return;
#ifdef HAVE_NCCL
    transport_nccl_disable(t);
#endif
    mpi_flush(t);
    MpiImpl *m = t->impl;
    while (m->recvs) {
        Pending *r = m->recvs;
        m->recvs = r->next;
        MPI_Cancel(&r->req);
        MPI_Request_free(&r->req);
        free(r->buf);
        free(r);
    }
    free(m);
    free(t);
}
