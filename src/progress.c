/* progress.c - see progress.h. */
#include "progress.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "common.h"

void progress_open(Progress *p, const char *out_dir, int is_bytes,
                   long total_steps, long tokens_per_step, long first_step) {
    memset(p, 0, sizeof *p);
    p->first_step = p->step_last = first_step;
    p->is_bytes = is_bytes;
    p->total_steps = total_steps;
    p->tokens_per_step = tokens_per_step;
    p->t_start = p->t_last = now_seconds();
    if (!out_dir) return;
    char path[1024];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out_dir);
    p->metrics = fopen(path, first_step > 0 ? "a" : "w");
    if (!p->metrics)
        die("%s: cannot create: %s; check out= points to a writable directory",
            path, strerror(errno));
}

void progress_close(Progress *p) {
    if (p->metrics) fclose(p->metrics);
    p->metrics = NULL;
}

void format_duration(double s, char *out, size_t outlen) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, outlen, "%ldh%02ldm%02lds", t / 3600, t / 60 % 60, t % 60);
    else if (t >= 60)
        snprintf(out, outlen, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(out, outlen, "%.1fs", s);
}

void progress_train(Progress *p, long step, double loss, double lr,
                    const char *extra, const char *extra_json) {
    double now = now_seconds();
    double interval = now - p->t_last;
    long steps = step - p->step_last;
    double tok_s = interval > 0 ? (double)(steps * p->tokens_per_step) / interval : 0;
    double elapsed = now - p->t_start;
    long done = step - p->first_step;
    double eta = done > 0 ? elapsed / (double)done * (double)(p->total_steps - step) : 0;
    p->t_last = now;
    p->step_last = step;
    char el[32], et[32], bpb[32] = "";
    format_duration(elapsed, el, sizeof el);
    format_duration(eta, et, sizeof et);
    if (p->is_bytes) snprintf(bpb, sizeof bpb, " | bpb %.3f", loss / log(2.0));
    printf("step %6ld/%ld | loss %.4f%s | lr %.2e | %8.0f tok/s | elapsed %s | eta %s%s\n",
           step, p->total_steps, loss, bpb, lr, tok_s, el, et, extra ? extra : "");
    fflush(stdout);
    if (!p->metrics) return;
    /* JSON has no NaN: a loss not known yet (a pipeline still filling) is null */
    char loss_s[32] = "null", bpb_s[32] = "null";
    if (isfinite(loss)) {
        snprintf(loss_s, sizeof loss_s, "%.6f", loss);
        snprintf(bpb_s, sizeof bpb_s, "%.6f", loss / log(2.0));
    }
    fprintf(p->metrics,
            "{\"step\": %ld, \"train_loss\": %s, \"lr\": %.6e, "
            "\"tokens_per_s\": %.1f, \"elapsed_s\": %.3f, \"eta_s\": %.1f",
            step, loss_s, lr, tok_s, elapsed, eta);
    if (p->is_bytes) fprintf(p->metrics, ", \"train_bpb\": %s", bpb_s);
    fprintf(p->metrics, "%s}\n", extra_json ? extra_json : "");
    fflush(p->metrics);
}

void progress_eval(Progress *p, long step, double val_loss) {
    double elapsed = now_seconds() - p->t_start;
    char bpb[32] = "";
    if (p->is_bytes) snprintf(bpb, sizeof bpb, " | val bpb %.3f", val_loss / log(2.0));
    printf("eval   %6ld | val loss %.4f%s\n", step, val_loss, bpb);
    fflush(stdout);
    if (!p->metrics) return;
    fprintf(p->metrics, "{\"step\": %ld, \"val_loss\": %.6f, \"elapsed_s\": %.3f", step,
            val_loss, elapsed);
    if (p->is_bytes) fprintf(p->metrics, ", \"val_bpb\": %.6f", val_loss / log(2.0));
    fprintf(p->metrics, "}\n");
    fflush(p->metrics);
}
