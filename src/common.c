/* common.c - see common.h. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Process-wide error context: which rank we are and how to abort. These are
 * set once at start-up (MPI forces the rank to be global knowledge). */
static _Thread_local int error_rank = -1;
static void (*die_hook)(int code) = NULL;

void set_die_hook(void (*hook)(int code)) { die_hook = hook; }
void set_error_rank(int rank) { error_rank = rank; }

static void vreport(const char *kind, const char *fmt, va_list ap) {
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (error_rank >= 0)
        fprintf(stderr, "ouroboros: %s: [rank %d] %s\n", kind, error_rank, msg);
    else
        fprintf(stderr, "ouroboros: %s: %s\n", kind, msg);
    fflush(stderr);
}

void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport("error", fmt, ap);
    va_end(ap);
    fflush(stdout);
    if (die_hook) die_hook(1);
    exit(1);
}

void warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport("warning", fmt, ap);
    va_end(ap);
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory allocating %zu bytes", n);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) die("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *xalloc_aligned(size_t n) {
    size_t rounded = (n + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) die("out of memory allocating %zu bytes", n);
    memset(p, 0, rounded ? rounded : 64);
    return p;
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
