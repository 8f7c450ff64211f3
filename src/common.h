/* common.h - error reporting and checked allocation shared by every layer.
 *
 * Every fatal error in ouroboros is one line on stderr of the form
 *   ouroboros: error: [rank R] <where>: <what>; <how to fix>
 * followed by a non-zero exit (MPI_Abort when MPI is running, so no peer
 * is left waiting). The rank prefix is filled in once MPI is up. */
#ifndef OURO_COMMON_H
#define OURO_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Printf-style fatal error: prints one line and exits the whole job. */
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
/* Printf-style warning line, same prefix as die(). */
void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The hook die() calls to bring the job down; MPI code installs one that
 * calls MPI_Abort. Defaults to exit(1). */
void set_die_hook(void (*hook)(int code));
/* Rank shown in error prefixes; -1 (the default) shows none. */
void set_error_rank(int rank);

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
/* 64-byte aligned, zeroed; free with free(). */
void *xalloc_aligned(size_t n);

/* Seconds from a monotonic clock. */
double now_seconds(void);

#endif
