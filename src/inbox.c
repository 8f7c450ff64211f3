/* inbox.c - see inbox.h. A list: it holds a few messages per module. */
#include "inbox.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

static int same_key(MsgKey a, MsgKey b) {
    return a.kind == b.kind && a.micro == b.micro && a.id == b.id;
}

static InboxMsg **find(Inbox *in, int src, MsgKey key) {
    for (InboxMsg **p = &in->head; *p; p = &(*p)->next)
        if ((*p)->src == src && same_key((*p)->key, key)) return p;
    return NULL;
}

void inbox_put(Inbox *in, int src, MsgKey key, const void *data, size_t bytes) {
    InboxMsg *m = xcalloc(1, sizeof *m);
    m->src = src;
    m->key = key;
    m->bytes = bytes;
    m->data = xmalloc(bytes);
    if (bytes) memcpy(m->data, data, bytes);
    InboxMsg **end = &in->head;
    while (*end) end = &(*end)->next;
    *end = m;
    in->count++;
}

int inbox_has(const Inbox *in, int src, MsgKey key) {
    return find((Inbox *)in, src, key) != NULL;
}

int inbox_take(Inbox *in, int src, MsgKey key, void *data, size_t bytes) {
    InboxMsg **p = find(in, src, key);
    if (!p) return 0;
    InboxMsg *m = *p;
    if (m->bytes != bytes) {
        char what[128];
        msg_describe(key, what, sizeof what);
        die("the saved %s from rank %d has %zu bytes, expected %zu: the checkpoint and "
            "this run disagree on the batch shape", what, src, m->bytes, bytes);
    }
    if (bytes) memcpy(data, m->data, bytes);
    *p = m->next;
    free(m->data);
    free(m);
    in->count--;
    return 1;
}

void inbox_clear(Inbox *in) {
    while (in->head) {
        InboxMsg *m = in->head;
        in->head = m->next;
        free(m->data);
        free(m);
    }
    in->count = 0;
}
