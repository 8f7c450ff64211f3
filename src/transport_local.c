/* transport_local.c - the serial emulation's transport: every rank of the
 * world is a thread of this process, and exactly one of them runs at a
 * time. A rank holds the world's lock while it computes and gives it up
 * only to wait for a message, so the ranks interleave like coroutines:
 * one process, one core, a valid order, the same arithmetic as the
 * distributed run. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "transport.h"

typedef struct Msg {
    int src, dst;
    MsgKey key;
    size_t bytes;
    char *data;
    struct Msg *next;
} Msg;

struct LocalWorld {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    Msg *head, **tail;
    int n, alive;
    int *waiting;      /* per rank: 1 while blocked in recv */
    int *want_src;     /* what it waits for */
    MsgKey *want_key;
};

typedef struct {
    LocalWorld *w;
    Transport t;
    LocalRankMain main;
    void *arg;
} RankThread;

static int same_key(MsgKey a, MsgKey b) {
    return a.kind == b.kind && a.micro == b.micro && a.id == b.id;
}

static Msg **find_msg(LocalWorld *w, int src, int dst, MsgKey key) {
    for (Msg **p = &w->head; *p; p = &(*p)->next)
        if ((*p)->src == src && (*p)->dst == dst && same_key((*p)->key, key)) return p;
    return NULL;
}

static void local_send(Transport *t, int dst, MsgKey key, const void *data, size_t bytes) {
    LocalWorld *w = t->impl;
    if (dst < 0 || dst >= w->n) die("send to rank %d, which does not exist", dst);
    Msg *m = xcalloc(1, sizeof *m);
    m->src = t->rank;
    m->dst = dst;
    m->key = key;
    m->bytes = bytes;
    m->data = xmalloc(bytes);
    if (bytes) memcpy(m->data, data, bytes);
    *w->tail = m;
    w->tail = &m->next;
    pthread_cond_broadcast(&w->changed);
}

/* Would every live rank wait forever? Only if all wait and none of them
 * has its message in the mailbox. */
static int deadlocked(LocalWorld *w) {
    int waiting = 0;
    for (int r = 0; r < w->n; r++) {
        if (!w->waiting[r]) continue;
        if (find_msg(w, w->want_src[r], r, w->want_key[r])) return 0;
        waiting++;
    }
    return waiting == w->alive;
}

static void local_recv(Transport *t, int src, MsgKey key, void *data, size_t bytes) {
    LocalWorld *w = t->impl;
    Msg **p;
    while (!(p = find_msg(w, src, t->rank, key))) {
        w->waiting[t->rank] = 1;
        w->want_src[t->rank] = src;
        w->want_key[t->rank] = key;
        if (deadlocked(w)) {
            char what[128];
            msg_describe(key, what, sizeof what);
            die("emulation deadlock: every rank waits; rank %d waits for the %s from "
                "rank %d (a schedule bug)", t->rank, what, src);
        }
        pthread_cond_broadcast(&w->changed);
        pthread_cond_wait(&w->changed, &w->lock);
        w->waiting[t->rank] = 0;
    }
    Msg *m = *p;
    if (m->bytes != bytes) {
        char what[128];
        msg_describe(key, what, sizeof what);
        die("the %s from rank %d has %zu bytes, expected %zu", what, src, m->bytes, bytes);
    }
    if (bytes) memcpy(data, m->data, bytes);
    *p = m->next;
    if (w->tail == &m->next) w->tail = p;
    free(m->data);
    free(m);
}

static void local_expect(Transport *t, int src, MsgKey key, size_t bytes) {
    (void)t; (void)src; (void)key; (void)bytes;
}

static void local_flush(Transport *t) { (void)t; }

static void *rank_thread(void *p) {
    RankThread *rt = p;
    LocalWorld *w = rt->w;
    pthread_mutex_lock(&w->lock);
    set_error_rank(rt->t.rank);
    rt->main(&rt->t, rt->arg);
    w->alive--;
    if (w->alive > 0 && deadlocked(w))
        die("emulation deadlock: rank %d finished while the others wait (a schedule bug)",
            rt->t.rank);
    pthread_cond_broadcast(&w->changed);
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

void transport_local_run(int n, LocalRankMain main, void **args) {
    LocalWorld w;
    memset(&w, 0, sizeof w);
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.changed, NULL);
    w.tail = &w.head;
    w.n = w.alive = n;
    w.waiting = xcalloc((size_t)n, sizeof(int));
    w.want_src = xcalloc((size_t)n, sizeof(int));
    w.want_key = xcalloc((size_t)n, sizeof(MsgKey));
    RankThread *rt = xcalloc((size_t)n, sizeof *rt);
    pthread_t *th = xcalloc((size_t)n, sizeof *th);
    for (int r = 0; r < n; r++) {
        rt[r].w = &w;
        rt[r].t.rank = r;
        rt[r].t.size = n;
        rt[r].t.local_rank = r; /* one host */
        rt[r].t.local_size = n;
        rt[r].t.impl = &w;
        rt[r].t.send = local_send;
        rt[r].t.recv = local_recv;
        rt[r].t.expect = local_expect;
        rt[r].t.flush = local_flush;
        rt[r].main = main;
        rt[r].arg = args[r];
        /* generous stacks: the executor keeps little on the stack, but BLAS may not */
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 16u << 20);
        if (pthread_create(&th[r], &attr, rank_thread, &rt[r]) != 0)
            die("cannot start the thread of emulated rank %d", r);
        pthread_attr_destroy(&attr);
    }
    for (int r = 0; r < n; r++) pthread_join(th[r], NULL);
    if (w.head) die("emulation finished with undelivered messages (a schedule bug)");
    free(th);
    free(rt);
    free(w.waiting);
    free(w.want_src);
    free(w.want_key);
    pthread_cond_destroy(&w.changed);
    pthread_mutex_destroy(&w.lock);
}
