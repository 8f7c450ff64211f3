/* params_diff.c - compares the weights of two runs.
 *
 *   params_diff A/model.bin B/model.bin TOL [INIT/model.bin]
 *
 * Both files must describe the same model (src/weights.h: magic, version,
 * n_layer, n_head, n_embd, block_size, vocab_size, n_params; the checksum
 * may differ). Prints the largest absolute difference and that divided by
 * the largest |a|, and exits 0 when the relative figure is at most TOL,
 * 1 when it is not (or a value is not finite), 2 on bad input.
 *
 * With INIT (the weights before training, a steps=0 run) the relative
 * figure is max |a-b| / max |a-init| instead: the difference measured
 * against how far training moved the weights, which does not depend on
 * the size of the initial weights or of the learning rate. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The header as written: 8 + 6*4 + 8 + 64 = 104 bytes, no padding. */
typedef struct {
    char magic[8];
    int32_t dims[6]; /* version, n_layer, n_head, n_embd, block_size, vocab_size */
    int64_t n_params;
    char sha[64];
} Header;

static FILE *open_model(const char *path, Header *h) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    if (fread(h->magic, 8, 1, f) != 1 || fread(h->dims, 4, 6, f) != 6 ||
        fread(&h->n_params, 8, 1, f) != 1 || fread(h->sha, 64, 1, f) != 1) {
        fprintf(stderr, "%s: shorter than the model header\n", path);
        exit(2);
    }
    if (memcmp(h->magic, "OUROWTS1", 8) != 0 || h->n_params <= 0) {
        fprintf(stderr, "%s: not an ouroboros model file\n", path);
        exit(2);
    }
    return f;
}

static float read_param(FILE *f, const char *path) {
    float x;
    if (fread(&x, sizeof x, 1, f) != 1) {
        fprintf(stderr, "%s: truncated\n", path);
        exit(2);
    }
    return x;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: params_diff A/model.bin B/model.bin TOL [INIT/model.bin]\n");
        return 2;
    }
    double tol = atof(argv[3]);
    const char *init = argc == 5 ? argv[4] : NULL;
    Header ha, hb, hi;
    FILE *fa = open_model(argv[1], &ha), *fb = open_model(argv[2], &hb);
    FILE *fi = init ? open_model(init, &hi) : NULL;
    if (memcmp(ha.dims, hb.dims, sizeof ha.dims) != 0 || ha.n_params != hb.n_params ||
        (fi && (memcmp(ha.dims, hi.dims, sizeof ha.dims) != 0 || ha.n_params != hi.n_params))) {
        fprintf(stderr, "%s, %s%s%s: not the same model\n", argv[1], argv[2],
                init ? ", " : "", init ? init : "");
        return 2;
    }
    double max_diff = 0, max_abs = 0, max_moved = 0;
    int finite = 1;
    for (int64_t i = 0; i < ha.n_params; i++) {
        double a = read_param(fa, argv[1]), b = read_param(fb, argv[2]);
        if (!isfinite(a) || !isfinite(b)) finite = 0;
        if (fabs(a - b) > max_diff) max_diff = fabs(a - b);
        if (fabs(a) > max_abs) max_abs = fabs(a);
        if (fi) {
            double a0 = read_param(fi, init);
            if (fabs(a - a0) > max_moved) max_moved = fabs(a - a0);
        }
    }
    if (fgetc(fa) != EOF || fgetc(fb) != EOF || (fi && fgetc(fi) != EOF)) {
        fprintf(stderr, "trailing bytes after the %lld parameters\n", (long long)ha.n_params);
        return 2;
    }
    double scale = fi ? max_moved : max_abs;
    double rel = scale > 0 ? max_diff / scale : max_diff;
    printf("%lld parameters: max |a-b| %.3e, max |a-%s| %.3e, ratio %.3e (tolerance %.1e)%s\n",
           (long long)ha.n_params, max_diff, fi ? "init" : "0", scale, rel, tol,
           finite ? "" : ", NOT FINITE");
    return finite && rel <= tol ? 0 : 1;
}
