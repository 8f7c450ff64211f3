/* ckpt_h5.c - see ckpt_h5.h. */
#ifdef HAVE_HDF5
#include "ckpt_h5.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Chunks of at most this many elements (16 MB of floats): small enough
 * to read in a few pieces, large enough that a GPT-2 tensor is a handful. */
#define CHUNK_ELEMS ((hsize_t)4 << 20)

void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static hid_t fapl(void) {
    hid_t p = H5Pcreate(H5P_FILE_ACCESS);
    /* the 1.10 format: checksummed metadata, and a small index for the
     * single-chunk datasets most tensors are */
    H5Pset_libver_bounds(p, H5F_LIBVER_V110, H5F_LIBVER_LATEST);
#if H5_VERSION_GE(1, 10, 7)
    /* Checkpoint files are written once, by one process; file locks only
     * get in the way on file systems that do not support them. */
    H5Pset_file_locking(p, 0, 1);
#endif
    return p;
}

hid_t h5_create(const char *path) {
    hid_t p = fapl();
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, p);
    H5Pclose(p);
    return f;
}

hid_t h5_open_ro(const char *path) {
    hid_t p = fapl();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, p);
    H5Pclose(p);
    return f;
}

int h5_close(hid_t file) { return H5Fclose(file) < 0 ? -1 : 0; }

static hid_t lcpl(void) {
    hid_t p = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(p, 1);
    return p;
}

static int write_ds(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, int ndim,
                    const hsize_t *dims, const void *data) {
    hsize_t chunk[2] = {dims[0], ndim > 1 ? dims[1] : 1};
    if (ndim == 1 && chunk[0] > CHUNK_ELEMS) chunk[0] = CHUNK_ELEMS;
    if (ndim == 2) {
        hsize_t rows = CHUNK_ELEMS / (chunk[1] ? chunk[1] : 1);
        if (rows < 1) rows = 1;
        if (chunk[0] > rows) chunk[0] = rows;
    }
    for (int i = 0; i < ndim; i++)
        if (chunk[i] == 0) chunk[i] = 1; /* a chunk needs a positive size */
    hid_t sp = H5Screate_simple(ndim, dims, NULL);
    hid_t dc = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dc, ndim, chunk);
    H5Pset_fletcher32(dc);
    hid_t lc = lcpl();
    hid_t ds = H5Dcreate2(loc, name, file_type, sp, lc, dc, H5P_DEFAULT);
    int rc = ds < 0 ? -1 : 0;
    if (ds >= 0 && H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) rc = -1;
    if (ds >= 0) H5Dclose(ds);
    H5Pclose(lc);
    H5Pclose(dc);
    H5Sclose(sp);
    return rc;
}

int h5_group(hid_t loc, const char *name) {
    hid_t lc = lcpl();
    hid_t g = H5Gcreate2(loc, name, lc, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lc);
    if (g < 0) return -1;
    H5Gclose(g);
    return 0;
}

int h5_write_f32(hid_t loc, const char *name, int ndim, const hsize_t *dims, const float *data) {
    return write_ds(loc, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, ndim, dims, data);
}

int h5_write_i32(hid_t loc, const char *name, int ndim, const hsize_t *dims,
                 const int32_t *data) {
    return write_ds(loc, name, H5T_STD_I32LE, H5T_NATIVE_INT32, ndim, dims, data);
}

int h5_write_i64(hid_t loc, const char *name, hsize_t n, const int64_t *data) {
    return write_ds(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &n, data);
}

int h5_exists(hid_t loc, const char *name) {
    /* H5Lexists wants every parent to exist: walk the path. */
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", name);
    for (char *p = buf; (p = strchr(p, '/')); p++) {
        *p = '\0';
        htri_t e = H5Lexists(loc, buf, H5P_DEFAULT);
        *p = '/';
        if (e <= 0) return 0;
    }
    return H5Lexists(loc, buf, H5P_DEFAULT) > 0;
}

int h5_shape(hid_t loc, const char *name, hsize_t dims[2], int *is_float) {
    if (!h5_exists(loc, name)) return -1;
    hid_t ds = H5Dopen2(loc, name, H5P_DEFAULT);
    if (ds < 0) return -1;
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    int nd = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    hsize_t d[H5S_MAX_RANK];
    if (nd >= 0 && nd <= H5S_MAX_RANK) H5Sget_simple_extent_dims(sp, d, NULL);
    for (int i = 0; i < 2; i++) dims[i] = i < nd ? d[i] : 0;
    H5T_class_t cls = ty < 0 ? H5T_NO_CLASS : H5Tget_class(ty);
    *is_float = cls == H5T_FLOAT && H5Tget_size(ty) == 4 ? 1 : cls == H5T_INTEGER ? 2 : 0;
    if (ty >= 0) H5Tclose(ty);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(ds);
    return nd;
}

static int read_ds(hid_t loc, const char *name, hid_t mem_type, void *data) {
    if (!h5_exists(loc, name)) return -1;
    hid_t ds = H5Dopen2(loc, name, H5P_DEFAULT);
    if (ds < 0) return -1;
    int rc = H5Dread(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0 ? -1 : 0;
    H5Dclose(ds);
    return rc;
}

int h5_read_f32(hid_t loc, const char *name, float *data) {
    return read_ds(loc, name, H5T_NATIVE_FLOAT, data);
}

int h5_read_i32(hid_t loc, const char *name, int32_t *data) {
    return read_ds(loc, name, H5T_NATIVE_INT32, data);
}

int h5_read_i64(hid_t loc, const char *name, int64_t *data) {
    return read_ds(loc, name, H5T_NATIVE_INT64, data);
}

/* A new attribute on obj, replacing one of the same name. */
static hid_t attr_create(hid_t loc, const char *obj, const char *name, hid_t type) {
    if (H5Aexists_by_name(loc, obj, name, H5P_DEFAULT) > 0)
        H5Adelete_by_name(loc, obj, name, H5P_DEFAULT);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate_by_name(loc, obj, name, type, sp, H5P_DEFAULT, H5P_DEFAULT,
                                H5P_DEFAULT);
    H5Sclose(sp);
    return a;
}

int h5_attr_set_i64(hid_t loc, const char *obj, const char *name, long long v) {
    hid_t a = attr_create(loc, obj, name, H5T_STD_I64LE);
    if (a < 0) return -1;
    int64_t x = v;
    int rc = H5Awrite(a, H5T_NATIVE_INT64, &x) < 0 ? -1 : 0;
    H5Aclose(a);
    return rc;
}

/* Variable-length UTF-8 strings: h5py reads them as str. */
static hid_t str_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

int h5_attr_set_str(hid_t loc, const char *obj, const char *name, const char *v) {
    hid_t t = str_type();
    hid_t a = attr_create(loc, obj, name, t);
    int rc = -1;
    if (a >= 0) {
        rc = H5Awrite(a, t, &v) < 0 ? -1 : 0;
        H5Aclose(a);
    }
    H5Tclose(t);
    return rc;
}

int h5_attr_get_i64(hid_t loc, const char *obj, const char *name, long long *v) {
    if (H5Aexists_by_name(loc, obj, name, H5P_DEFAULT) <= 0) return -1;
    hid_t a = H5Aopen_by_name(loc, obj, name, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t ty = H5Aget_type(a);
    int64_t x = 0;
    int rc = H5Tget_class(ty) == H5T_INTEGER && H5Aread(a, H5T_NATIVE_INT64, &x) >= 0 ? 0 : -1;
    H5Tclose(ty);
    H5Aclose(a);
    *v = x;
    return rc;
}

char *h5_attr_get_str_alloc(hid_t loc, const char *obj, const char *name) {
    if (H5Aexists_by_name(loc, obj, name, H5P_DEFAULT) <= 0) return NULL;
    hid_t a = H5Aopen_by_name(loc, obj, name, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0) return NULL;
    hid_t ty = H5Aget_type(a);
    char *out = NULL;
    if (H5Tget_class(ty) == H5T_STRING && H5Tis_variable_str(ty) > 0) {
        hid_t t = str_type();
        char *v = NULL;
        if (H5Aread(a, t, &v) >= 0 && v) {
            size_t n = strlen(v);
            out = xmalloc(n + 1);
            memcpy(out, v, n + 1);
            H5free_memory(v);
        }
        H5Tclose(t);
    }
    H5Tclose(ty);
    H5Aclose(a);
    return out;
}

int h5_attr_get_str(hid_t loc, const char *obj, const char *name, char *out, size_t n) {
    char *v = h5_attr_get_str_alloc(loc, obj, name);
    if (!v) return -1;
    snprintf(out, n, "%s", v);
    free(v);
    return 0;
}

int h5_link_external(hid_t loc, const char *name, const char *file, const char *target) {
    hid_t lc = lcpl();
    int rc = H5Lcreate_external(file, target, loc, name, lc, H5P_DEFAULT) < 0 ? -1 : 0;
    H5Pclose(lc);
    return rc;
}

int h5_link_target(hid_t loc, const char *name, char *file, size_t nfile, char *obj,
                   size_t nobj) {
    if (!h5_exists(loc, name)) return 0;
    H5L_info_t info;
    if (H5Lget_info(loc, name, &info, H5P_DEFAULT) < 0) return -1;
    if (info.type != H5L_TYPE_EXTERNAL) return 0;
    char *buf = xmalloc(info.u.val_size + 1);
    int rc = -1;
    const char *f = NULL, *o = NULL;
    unsigned flags = 0;
    if (H5Lget_val(loc, name, buf, info.u.val_size, H5P_DEFAULT) >= 0 &&
        H5Lunpack_elink_val(buf, info.u.val_size, &flags, &f, &o) >= 0) {
        snprintf(file, nfile, "%s", f);
        snprintf(obj, nobj, "%s", o);
        rc = 1;
    }
    free(buf);
    return rc;
}
#else
typedef int ckpt_h5_unused; /* built without HDF5: nothing here */
#endif
