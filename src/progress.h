/* progress.h - progress lines on stdout and metrics.jsonl in the run
 * directory: the same numbers in both. */
#ifndef OURO_PROGRESS_H
#define OURO_PROGRESS_H

#include <stdio.h>

typedef struct {
    FILE *metrics;      /* <out>/metrics.jsonl, or NULL */
    int is_bytes;       /* print bits per byte */
    long total_steps;
    long tokens_per_step;
    double t_start;     /* run start, seconds */
    double t_last;      /* time of the previous progress line */
    long step_last;     /* step of the previous progress line */
    long first_step;    /* where this run started: 0, or a resumed step */
} Progress;

/* A resumed run (first_step > 0) appends to metrics.jsonl. */
void progress_open(Progress *p, const char *out_dir, int is_bytes,
                   long total_steps, long tokens_per_step, long first_step);
void progress_close(Progress *p);
/* After `step` (1-based count of completed steps). `extra` is appended to
 * the line as is (e.g. per-rank timings), and `extra_json` (", \"k\": v"
 * pairs, or "") to the JSON object. */
void progress_train(Progress *p, long step, double loss, double lr,
                    const char *extra, const char *extra_json);
void progress_eval(Progress *p, long step, double val_loss);

/* "1h02m03s" style; out holds at least 16 bytes. */
void format_duration(double seconds, char *out, size_t outlen);

#endif
