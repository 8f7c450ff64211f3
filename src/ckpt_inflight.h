/* ckpt_inflight.h - what is in flight at a step boundary: pure schedule
 * logic (no I/O), so the writer, the resume check and the tests agree.
 *
 * Between step S-1 and step S a message is in flight for pipeline rank r
 * when one of r's actions in a step >= S consumes it and its producer ran
 * in a step < S: an activation from module m-1 for a forward of module m,
 * or a gradient from module m+1 for a backward of module m. Its producer
 * sent it only if the consumer's step is before the run's last step. */
#ifndef OURO_CKPT_INFLIGHT_H
#define OURO_CKPT_INFLIGHT_H

#include "schedule.h"

typedef struct {
    ActionKind kind; /* ACT_FORWARD: an activation; ACT_BACKWARD: a gradient */
    int module;      /* the consuming module m */
    long mb;
    int micro;
    long step;       /* the step that consumes it */
    long sent_step;  /* the step that produced it */
} InflightMsg;

typedef void (*InflightFn)(const InflightMsg *msg, void *arg);

/* Calls fn for every message pipeline rank pr consumes in a step in
 * [from, to) that was produced in a step before `before`. */
void inflight_messages(const Schedule *s, int pr, long before, long from, long to,
                       InflightFn fn, void *arg);

/* Does pipeline rank pr read minibatch mb (< before) from its batch ring
 * in a step >= before? Modules with the embedding or the head read it in
 * their forward, and in replay also in their backward's recomputation. */
int inflight_batch_needed(const Schedule *s, int pr, long mb, long before, int replay);

/* How many such messages, over every pipeline rank. */
long inflight_count(const Schedule *s, long before, long from, long to);

#endif
