/* ckpt_h5.h - the little of HDF5 that checkpoints use, with the errors
 * turned into return codes (HDF5's own error stack is silenced, so the
 * callers can say in one line which file and which object is wrong).
 *
 * Files are written in the HDF5 1.10 file format, whose metadata
 * (superblock, object headers, attributes) carries checksums, and every
 * dataset is chunked with the Fletcher32 filter: a flipped bit anywhere
 * is an error on reading, never a silently different number. Only built
 * with HAVE_HDF5. */
#ifndef OURO_CKPT_H5_H
#define OURO_CKPT_H5_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

/* Silences HDF5's error printing; call before any other h5_ function. */
void h5_quiet(void);

/* Creates (truncating) / opens read-only; < 0 on failure. */
hid_t h5_create(const char *path);
hid_t h5_open_ro(const char *path);
/* Closes a file and everything still open in it; < 0 on failure. */
int h5_close(hid_t file);

/* Datasets at `name` (intermediate groups are created), chunked with
 * Fletcher32. dims has ndim (1 or 2) entries. Return < 0 on failure. */
int h5_write_f32(hid_t loc, const char *name, int ndim, const hsize_t *dims, const float *data);
int h5_write_i32(hid_t loc, const char *name, int ndim, const hsize_t *dims, const int32_t *data);
int h5_write_i64(hid_t loc, const char *name, hsize_t n, const int64_t *data);

/* Shape of a dataset: returns its rank (0 for a scalar), dims filled up
 * to 2; -1 if there is no such dataset or it cannot be read. *is_float:
 * 1 for a 4-byte float, 2 for an integer type, 0 otherwise. */
int h5_shape(hid_t loc, const char *name, hsize_t dims[2], int *is_float);
/* Reads a whole dataset, converting to the memory type; < 0 on failure
 * (a Fletcher32 mismatch is a failure). */
int h5_read_f32(hid_t loc, const char *name, float *data);
int h5_read_i32(hid_t loc, const char *name, int32_t *data);
int h5_read_i64(hid_t loc, const char *name, int64_t *data);

/* Creates the group `name` (and its parents); < 0 on failure. */
int h5_group(hid_t loc, const char *name);

/* Attributes on the object at `obj` (a path in loc, "." for loc itself). */
int h5_attr_set_i64(hid_t loc, const char *obj, const char *name, long long v);
int h5_attr_set_str(hid_t loc, const char *obj, const char *name, const char *v);
int h5_attr_get_i64(hid_t loc, const char *obj, const char *name, long long *v);
/* A string attribute into out (truncated to n-1); < 0 if absent. */
int h5_attr_get_str(hid_t loc, const char *obj, const char *name, char *out, size_t n);
/* A string attribute of any length, malloc'd; NULL if absent. */
char *h5_attr_get_str_alloc(hid_t loc, const char *obj, const char *name);

/* An external link at `name` (intermediate groups are created) to
 * object `target` in `file`, a name relative to the linking file's
 * directory. */
int h5_link_external(hid_t loc, const char *name, const char *file, const char *target);
/* The target of an external link: 1 and file/object filled; 0 if `name`
 * is no external link (absent, or another kind); < 0 on error. */
int h5_link_target(hid_t loc, const char *name, char *file, size_t nfile, char *obj,
                   size_t nobj);
/* Does a link (of any kind) exist at name? Parent groups may be absent. */
int h5_exists(hid_t loc, const char *name);

#endif
