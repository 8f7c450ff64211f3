/* inbox.h - messages a rank received before the step that consumes them.
 *
 * At a checkpoint every rank takes from the transport the messages that
 * were already sent to it for later steps (so that they can be saved), and
 * a resumed rank starts with the saved ones; either way they wait here,
 * and the executor looks here before it asks the transport. */
#ifndef OURO_INBOX_H
#define OURO_INBOX_H

#include <stddef.h>

#include "transport.h"

typedef struct InboxMsg {
    int src;
    MsgKey key;
    size_t bytes;
    void *data;
    struct InboxMsg *next;
} InboxMsg;

typedef struct {
    InboxMsg *head; /* in arrival order */
    int count;
} Inbox;

/* Keeps a copy of the message. */
void inbox_put(Inbox *in, int src, MsgKey key, const void *data, size_t bytes);
/* Is the message from src with this key waiting? */
int inbox_has(const Inbox *in, int src, MsgKey key);
/* Moves the waiting message into data and returns 1, or returns 0 if there
 * is none; dies if its size is not `bytes`. */
int inbox_take(Inbox *in, int src, MsgKey key, void *data, size_t bytes);
void inbox_clear(Inbox *in);

#endif
