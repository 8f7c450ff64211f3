/* ckpt_inflight.c - see ckpt_inflight.h. */
#include "ckpt_inflight.h"

#include <stdlib.h>

#include "common.h"

/* No message travels more steps than this: the longest delay of any
 * schedule is 2(K-1) steps (module 1 of ouroboros-pipelined). */
static long horizon(const Schedule *s) { return 2L * s->K + 2; }

void inflight_messages(const Schedule *s, int pr, long before, long from, long to,
                       InflightFn fn, void *arg) {
    if (s->K < 2) return; /* one module: nothing travels between steps */
    long end = before + horizon(s);
    if (to > end) to = end;
    Action *acts = xmalloc((size_t)schedule_max_actions(s) * sizeof(Action));
    for (long t = from; t < to; t++) {
        int n = schedule_actions(s, t, pr, acts);
        for (int i = 0; i < n; i++) {
            const Action *a = &acts[i];
            InflightMsg m = {a->kind, a->module, a->mb, a->micro, t, 0};
            if (a->kind == ACT_FORWARD && a->module > 0)
                m.sent_step = schedule_step_of(s, ACT_FORWARD, a->module - 1, a->mb);
            else if (a->kind == ACT_BACKWARD && a->module < s->K - 1)
                m.sent_step = schedule_step_of(s, ACT_BACKWARD, a->module + 1, a->mb);
            else
                continue;
            if (m.sent_step < before) fn(&m, arg);
        }
    }
    free(acts);
}

static void count_one(const InflightMsg *m, void *arg) {
    (void)m;
    (*(long *)arg)++;
}

long inflight_count(const Schedule *s, long before, long from, long to) {
    long n = 0;
    for (int pr = 0; pr < schedule_pipeline_ranks(s); pr++)
        inflight_messages(s, pr, before, from, to, count_one, &n);
    return n;
}

int inflight_batch_needed(const Schedule *s, int pr, long mb, long before, int replay) {
    int needed = 0;
    Action *acts = xmalloc((size_t)schedule_max_actions(s) * sizeof(Action));
    for (long t = before; t < before + horizon(s) && !needed; t++) {
        int n = schedule_actions(s, t, pr, acts);
        for (int i = 0; i < n; i++) {
            const Action *a = &acts[i];
            int ends = a->module == 0 || a->module == s->K - 1;
            if (a->kind != ACT_UPDATE && a->mb == mb && ends &&
                (a->kind == ACT_FORWARD || replay))
                needed = 1;
        }
    }
    free(acts);
    return needed;
}
