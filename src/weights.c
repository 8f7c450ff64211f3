/* weights.c - see weights.h. */
#define _POSIX_C_SOURCE 200809L
#include "weights.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

static const char MAGIC[8] = {'O', 'U', 'R', 'O', 'W', 'T', 'S', '1'};

typedef struct {
    char magic[8];
    int32_t version, n_layer, n_head, n_embd, block_size, vocab_size;
    int64_t n_params;
    char sha[64];
} WeightsHeader;

void weights_save(const char *path, const ParamLayout *pl, const float *params) {
    WeightsHeader h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, MAGIC, 8);
    h.version = 1;
    h.n_layer = pl->cfg.n_layer;
    h.n_head = pl->cfg.n_head;
    h.n_embd = pl->cfg.n_embd;
    h.block_size = pl->cfg.block_size;
    h.vocab_size = pl->cfg.vocab_size;
    h.n_params = (int64_t)pl->n_params;
    char hex[65];
    params_sha256(pl, params, hex);
    memcpy(h.sha, hex, 64);
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) die("%s: cannot create: %s", tmp, strerror(errno));
    int ok = fwrite(&h, sizeof h, 1, f) == 1 &&
             fwrite(params, sizeof(float), pl->n_params, f) == pl->n_params &&
             fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f) != 0 || !ok) die("%s: write failed: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) die("%s: rename failed: %s", path, strerror(errno));
}

void weights_load(const char *path, GPTConfig *cfg, float **params) {
    FILE *f = fopen(path, "rb");
    if (!f)
        die("%s: cannot open: %s; train a model first (ouroboros train out=DIR)",
            path, strerror(errno));
    WeightsHeader h;
    if (fread(&h, sizeof h, 1, f) != 1) die("%s: shorter than its header", path);
    if (memcmp(h.magic, MAGIC, 8) != 0) die("%s: not an ouroboros model file (bad magic)", path);
    if (h.version != 1) die("%s: format version %d, this build reads version 1", path, h.version);
    cfg->n_layer = h.n_layer;
    cfg->n_head = h.n_head;
    cfg->n_embd = h.n_embd;
    cfg->block_size = h.block_size;
    cfg->vocab_size = h.vocab_size;
    char err[256];
    if (gpt_config_check(cfg, err, sizeof err) != 0) die("%s: header: %s", path, err);
    ParamLayout pl;
    param_layout_init(&pl, cfg);
    if ((int64_t)pl.n_params != h.n_params)
        die("%s: header says %lld parameters, the model it describes has %zu", path,
            (long long)h.n_params, pl.n_params);
    *params = xmalloc(pl.n_params * sizeof(float));
    if (fread(*params, sizeof(float), pl.n_params, f) != pl.n_params)
        die("%s: truncated: expected %zu parameters", path, pl.n_params);
    fclose(f);
    char hex[65];
    params_sha256(&pl, *params, hex);
    if (memcmp(hex, h.sha, 64) != 0) die("%s: checksum mismatch: the file is corrupt", path);
    param_layout_free(&pl);
}
