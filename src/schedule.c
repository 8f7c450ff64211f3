/* schedule.c - see schedule.h and ALGORITHM.md section 4. */
#include "schedule.h"

#include <string.h>

static const char *NAMES[] = {"single", "bp", "gpipe", "dp", "ouroboros",
                              "ouroboros-pipelined"};

int schedule_parse(const char *name, ScheduleKind *kind) {
    for (int i = 0; i < (int)(sizeof NAMES / sizeof NAMES[0]); i++)
        if (strcmp(name, NAMES[i]) == 0) {
            *kind = (ScheduleKind)i;
            return 0;
        }
    return -1;
}

const char *schedule_name(ScheduleKind kind) { return NAMES[kind]; }

int schedule_is_pipeline(ScheduleKind kind) {
    return kind != SCHED_SINGLE && kind != SCHED_DP;
}

int schedule_delayed(const Schedule *s, long step) {
    return (s->kind == SCHED_OUROBOROS || s->kind == SCHED_OUROBOROS_PIPELINED) &&
           step >= s->bp_warmup;
}

int schedule_pipeline_ranks(const Schedule *s) { return s->K > 1 ? s->K - 1 : 1; }

int schedule_module_rank(const Schedule *s, int m) {
    return (m == 0 || m == s->K - 1) ? 0 : m;
}

int schedule_rank_modules(const Schedule *s, int r, int modules[2]) {
    if (s->K == 1) {
        modules[0] = 0;
        return 1;
    }
    if (r == 0) {
        modules[0] = 0;
        modules[1] = s->K - 1;
        return 2;
    }
    modules[0] = r;
    return 1;
}

static Action act(ActionKind k, int m, long mb, int u) {
    Action a = {k, m, mb, u};
    return a;
}

/* Exact backprop, GPipe-style: every micro-batch forward through the ring,
 * then every backward, then one update. With one micro-batch this is `bp`
 * (and, with K == 1, `single` and `dp`). On rank 0 the head's backward
 * runs before module 0's, as in one whole-model backward: the tied wte
 * gradient then sums in the same order as `single`. */
static int exact_actions(const Schedule *s, long t, int r, Action *out) {
    int n = 0, M = s->micro, K = s->K;
    if (K == 1) {
        for (int u = 0; u < M; u++) out[n++] = act(ACT_FORWARD, 0, t, u);
        for (int u = 0; u < M; u++) out[n++] = act(ACT_BACKWARD, 0, t, u);
    } else if (r == 0) {
        for (int u = 0; u < M; u++) out[n++] = act(ACT_FORWARD, 0, t, u);
        for (int u = 0; u < M; u++) {
            out[n++] = act(ACT_FORWARD, K - 1, t, u);
            out[n++] = act(ACT_BACKWARD, K - 1, t, u);
        }
        for (int u = 0; u < M; u++) out[n++] = act(ACT_BACKWARD, 0, t, u);
    } else {
        for (int u = 0; u < M; u++) out[n++] = act(ACT_FORWARD, r, t, u);
        for (int u = 0; u < M; u++) out[n++] = act(ACT_BACKWARD, r, t, u);
    }
    out[n++] = act(ACT_UPDATE, 0, t, 0);
    return n;
}

/* The first minibatch of delayed training: after the bp warm-up, and not
 * before a restarted fill (nothing older is in flight then). */
static long first_delayed(const Schedule *s) {
    return s->bp_warmup > s->start ? s->bp_warmup : s->start;
}

/* The paper's algorithm: forward of minibatch t in ring order; module
 * K-1 backpropagates it at once; module m < K-1 backpropagates the delayed
 * gradient of minibatch t - (K-1-m), which arrived in an earlier step.
 * Every rank forwards first and then runs its delayed backward, so the
 * backward overlaps the forward travelling downstream and the head's work
 * on rank 0; only the forwards and the head's backward are on the
 * critical path of a step. */
static int ouroboros_actions(const Schedule *s, long t, int r, Action *out) {
    int n = 0, K = s->K;
    long first = first_delayed(s);
    if (r == 0) {
        long d0 = t - (K - 1);
        out[n++] = act(ACT_FORWARD, 0, t, 0);
        if (d0 >= first) out[n++] = act(ACT_BACKWARD, 0, d0, 0);
        out[n++] = act(ACT_FORWARD, K - 1, t, 0);
        out[n++] = act(ACT_BACKWARD, K - 1, t, 0);
    } else {
        long d = t - (K - 1 - r);
        out[n++] = act(ACT_FORWARD, r, t, 0);
        if (d >= first) out[n++] = act(ACT_BACKWARD, r, d, 0);
    }
    out[n++] = act(ACT_UPDATE, 0, t, 0);
    return n;
}

/* Forward locking removed too: in tick t module m forwards minibatch
 * t - m and backpropagates minibatch t - 2K + m + 2, both from what it
 * received in tick t-1. Module K-1 forwards and backpropagates the same
 * minibatch, t - K + 1. */
static int pipelined_actions(const Schedule *s, long t, int r, Action *out) {
    int n = 0, K = s->K;
    long first = first_delayed(s);
    int mods[2];
    int nm = schedule_rank_modules(s, r, mods);
    for (int i = 0; i < nm; i++) {
        int m = mods[i];
        long f = t - m, b = t - 2L * K + m + 2;
        if (f >= first) out[n++] = act(ACT_FORWARD, m, f, 0);
        if (m == K - 1 && f >= first) out[n++] = act(ACT_BACKWARD, m, f, 0);
        if (m != K - 1 && b >= first) out[n++] = act(ACT_BACKWARD, m, b, 0);
    }
    /* On rank 0 the order above is F0 B0 F(K-1) B(K-1); put module 0's
     * backward last so the head's work, which the ring waits for, runs
     * first: F0 F(K-1) B(K-1) B0. */
    if (r == 0 && n == 4) {
        Action b0 = out[1];
        out[1] = out[2];
        out[2] = out[3];
        out[3] = b0;
    }
    out[n++] = act(ACT_UPDATE, 0, t, 0);
    return n;
}

int schedule_actions(const Schedule *s, long t, int r, Action *out) {
    if (!schedule_delayed(s, t)) return exact_actions(s, t, r, out);
    if (s->kind == SCHED_OUROBOROS) return ouroboros_actions(s, t, r, out);
    return pipelined_actions(s, t, r, out);
}

long schedule_step_of(const Schedule *s, ActionKind kind, int m, long mb) {
    if (!schedule_delayed(s, mb)) return mb;
    int K = s->K;
    if (s->kind == SCHED_OUROBOROS)
        return kind == ACT_FORWARD ? mb : mb + (K - 1 - m);
    if (kind == ACT_FORWARD || m == K - 1) return mb + m;
    return mb + 2L * K - m - 2;
}

int schedule_max_actions(const Schedule *s) { return 4 * s->micro + 1; }

int schedule_inflight(const Schedule *s, int m) {
    int K = s->K, delay = 0;
    if (s->kind == SCHED_OUROBOROS) delay = K - 1 - m;
    if (s->kind == SCHED_OUROBOROS_PIPELINED) delay = 2 * (K - 1 - m);
    if (K == 1) delay = 0;
    int n = delay + 1;
    return n * s->micro;
}
