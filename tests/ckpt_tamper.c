/* ckpt_tamper.c - damages a checkpoint on purpose, for tests/ckpt_bad.sh.
 * Not a test itself.
 *
 *   ckpt_tamper offset FILE DATASET     byte offset of the dataset's first
 *                                       chunk in FILE (to flip a byte in it)
 *   ckpt_tamper reshape FILE DATASET    rewrites a 2-D dataset with its two
 *                                       dimensions swapped (same numbers)
 *   ckpt_tamper set-int FILE ATTR N     sets integer attribute ATTR of / to N
 *   ckpt_tamper rehash DIR              records the current SHA-256 and size
 *                                       of every shard in DIR/manifest.h5, so
 *                                       that a damaged shard passes the
 *                                       whole-file check and the finer checks
 *                                       (shape, Fletcher32) are reached
 *
 * Exits 0 on success, 1 on failure, 77 (skip) in a build without HDF5. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HAVE_HDF5
#include "ckpt_fs.h"
#include "ckpt_h5.h"

static int fail(const char *what, const char *path) {
    fprintf(stderr, "ckpt_tamper: %s: %s\n", path, what);
    return 1;
}

static hid_t open_rw(const char *path) { return H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT); }

static int offset(const char *path, const char *name) {
    hid_t f = h5_open_ro(path);
    if (f < 0) return fail("cannot open", path);
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0) return fail("no such dataset", name);
    hsize_t origin[2] = {0, 0}, size = 0;
    haddr_t addr = HADDR_UNDEF;
    unsigned mask = 0;
    if (H5Dget_chunk_info_by_coord(ds, origin, &mask, &addr, &size) < 0 || addr == HADDR_UNDEF)
        return fail("no chunk address", name);
    printf("%llu\n", (unsigned long long)addr);
    H5Dclose(ds);
    return h5_close(f) ? 1 : 0;
}

static int reshape(const char *path, const char *name) {
    hid_t f = open_rw(path);
    if (f < 0) return fail("cannot open", path);
    hsize_t d[2];
    int isf = 0;
    if (h5_shape(f, name, d, &isf) != 2 || isf != 1) return fail("not a 2-D fp32 dataset", name);
    float *buf = malloc((size_t)(d[0] * d[1]) * sizeof(float));
    if (!buf || h5_read_f32(f, name, buf) != 0) return fail("cannot read", name);
    if (H5Ldelete(f, name, H5P_DEFAULT) < 0) return fail("cannot delete", name);
    hsize_t swapped[2] = {d[1], d[0]};
    if (h5_write_f32(f, name, 2, swapped, buf) != 0) return fail("cannot write", name);
    free(buf);
    return h5_close(f) ? 1 : 0;
}

static int set_int(const char *path, const char *attr, long long v) {
    hid_t f = open_rw(path);
    if (f < 0) return fail("cannot open", path);
    if (h5_attr_set_i64(f, ".", attr, v) != 0) return fail("cannot set", attr);
    return h5_close(f) ? 1 : 0;
}

static int rehash(const char *dir) {
    char path[1200];
    snprintf(path, sizeof path, "%s/manifest.h5", dir);
    hid_t f = open_rw(path);
    if (f < 0) return fail("cannot open", path);
    long long world;
    if (h5_attr_get_i64(f, ".", "world_size", &world) != 0) return fail("no world_size", path);
    for (long long w = 0; w < world; w++) {
        char obj[64], shard[1300], hex[65];
        long long bytes;
        snprintf(obj, sizeof obj, "shards/shard-%05lld.h5", w);
        snprintf(shard, sizeof shard, "%s/shard-%05lld.h5", dir, w);
        if (fs_sha256(shard, hex, &bytes) != 0) return fail("cannot read", shard);
        if (h5_attr_set_str(f, obj, "sha256", hex) || h5_attr_set_i64(f, obj, "bytes", bytes))
            return fail("cannot update", obj);
    }
    return h5_close(f) ? 1 : 0;
}

int main(int argc, char **argv) {
    h5_quiet();
    if (argc == 4 && strcmp(argv[1], "offset") == 0) return offset(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "reshape") == 0) return reshape(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "set-int") == 0)
        return set_int(argv[2], argv[3], atoll(argv[4]));
    if (argc == 3 && strcmp(argv[1], "rehash") == 0) return rehash(argv[2]);
    fprintf(stderr, "usage: ckpt_tamper offset|reshape FILE DATASET | set-int FILE ATTR N | "
                    "rehash DIR\n");
    return 2;
}

#else

int main(void) {
    fprintf(stderr, "ckpt_tamper: built without HDF5\n");
    return 77;
}

#endif
