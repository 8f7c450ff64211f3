/* weights.h - the final weights of a run, <out>/model.bin, read by
 * `ouroboros sample`.
 *
 * Format (little-endian): 8-byte magic "OUROWTS1"; int32 version (1);
 * int32 n_layer, n_head, n_embd, block_size, vocab_size; int64 n_params;
 * 64 bytes: params_sha256 as lowercase hex; then n_params fp32 in the
 * canonical order of model.h. Written to a temporary file, flushed to
 * disk and renamed, so a crash never leaves a half-written model.bin. */
#ifndef OURO_WEIGHTS_H
#define OURO_WEIGHTS_H

#include "model.h"

void weights_save(const char *path, const ParamLayout *pl, const float *params);
/* Reads the header into *cfg, allocates and fills *params; verifies size
 * and checksum. Dies naming the file on any mismatch. */
void weights_load(const char *path, GPTConfig *cfg, float **params);

#endif
