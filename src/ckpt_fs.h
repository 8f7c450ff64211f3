/* ckpt_fs.h - the file-system side of checkpoints: durable writes,
 * atomic publishing, the `latest` pointer, and finding a checkpoint from
 * what the user typed. Independent of HDF5. */
#ifndef OURO_CKPT_FS_H
#define OURO_CKPT_FS_H

#include <stddef.h>

/* out = a/b; dies if it does not fit in n bytes. */
void fs_join(char *out, size_t n, const char *a, const char *b);
/* 1 if path is a directory / a regular file. */
int fs_is_dir(const char *path);
int fs_is_file(const char *path);
/* Flushes a file or a directory (its entries) to disk; dies naming it. */
void fs_fsync(const char *path);
/* rename(2) that dies naming both paths. */
void fs_rename(const char *from, const char *to);
/* Removes a directory and the files in it (checkpoint directories hold
 * files only). Dies naming what could not be removed. */
void fs_remove_dir(const char *path);
/* Writes text to path durably and atomically: path.tmp, fsync, rename,
 * fsync of the directory. */
void fs_write_atomic(const char *dir, const char *name, const char *text);
/* SHA-256 (hex) and size of a file; -1 with errno set if it cannot be read. */
int fs_sha256(const char *path, char hex[65], long long *bytes);

/* "step-00000012" */
void ckpt_step_name(long step, char *out, size_t n);
/* The step of a "step-NNNNNNNN" name, or -1. */
long ckpt_step_of_name(const char *name);
/* The step directory named by <ckpt_dir>/latest into name (n >= 16), or
 * -1 if there is no such file; dies if it is there but does not name one. */
int ckpt_read_latest(const char *ckpt_dir, char *name, size_t n);
/* Up to max published steps in ckpt_dir, ascending; returns the count. */
int ckpt_list_steps(const char *ckpt_dir, long *steps, int max);

/* The step directory a user's path means: itself if it holds
 * manifest.h5, else what its `latest` or `ckpt/latest` names. Dies with
 * what is wrong (missing, unreadable, not a checkpoint). */
void ckpt_resolve(const char *path, char *dir, size_t n);

#endif
