/* data.h - datasets and batches.
 *
 * Two on-disk formats:
 *  - byte-level text: any file; every byte is a token (vocabulary 256),
 *    as enwik8/text8.
 *  - llm.c token shards (.bin): a header of 256 little-endian int32
 *    (magic 20240520, version 1, token count, rest unused) followed by
 *    that many uint16 tokens.
 * Splits: with one source, the enwik8 convention, in tokens (bytes for
 * text), integer arithmetic: train = floor(9n/10) tokens from the start,
 * the held-out rest h = n - train is halved into valid = floor(h/2) then
 * test = h - valid (100M bytes -> 90M/5M/5M). Explicit valid/test files
 * replace the held-out parts they name, and the main file then supplies
 * only what is left:
 *   both valid_data and test_data: the whole main file is train;
 *   only one of them: train = first floor(9n/10), the other held-out
 *   split = the whole last 10% of the main file.
 * So no token is ever in two splits, and none is wasted. With format
 * "auto" every file's format goes by its own .bin suffix, and all must
 * agree.
 *
 * Batches are a pure function of (split, seed, index): the same batch for
 * every schedule, every rank count and every resumed run.
 */
#ifndef OURO_DATA_H
#define OURO_DATA_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int32_t *tokens;
    size_t n;
} TokenSplit;

typedef struct {
    char provenance[512]; /* one line: where the data came from, sizes, sha256 */
    int vocab_size;       /* 256 for byte-level text; for .bin the model's */
    int is_bytes;         /* byte-level text (bits per byte are meaningful) */
    TokenSplit train, valid, test;
} Dataset;

typedef struct {
    const char *data;       /* "default" (also NULL/""), a text file, or a
                               .bin shard */
    const char *valid_data; /* optional explicit valid file, or NULL/"" */
    const char *test_data;  /* optional explicit test file, or NULL/"" */
    const char *format;     /* "auto" (by .bin suffix), "bytes" or "bin" */
    int model_vocab;        /* tokens >= this are an error */
    int min_tokens;         /* each split needs at least this many (T+1) */
} DatasetSpec;

/* Is `path` read as an llm.c .bin token shard under `format`? "auto"
 * goes by the .bin suffix. The one rule for the loader and for callers
 * that must know the format before the data is read. */
int data_is_token_shard(const char *format, const char *path);

/* Loads a dataset or dies with a one-line error naming the file and what
 * is wrong (missing, empty, too short, bad header, token out of range
 * with its offset). "default" assembles the built-in corpus (see
 * data_default_corpus). */
void dataset_load(Dataset *ds, const DatasetSpec *spec);
void dataset_free(Dataset *ds);

/* The default corpus: the reStructuredText sources of the Python 3.11
 * documentation (Debian package python3.11-doc), every
 * /usr/share/doc/python3.11/html/_sources/ ** / *.rst.txt in byte order of
 * path (strcmp of the full path), concatenated; about 11 MB.
 * $OURO_DEFAULT_CORPUS_DIR replaces the directory (for tests). Writes the
 * bytes to *out (malloc'd), the size to *n and a provenance line (file
 * count, bytes, directory, first 16 hex digits of the sha256). Dies with
 * how to install it if absent. */
void data_default_corpus(uint8_t **out, size_t *n, char *provenance,
                         size_t provlen);

/* Fills inputs[B*T] and targets[B*T] (targets = inputs shifted by one)
 * from B windows of T+1 tokens; row r starts at
 * hash_u64(seed, index, r, 0) % (n - T), a pure function of
 * (seed, index, row). Dies if the split is shorter than T+1. */
void dataset_batch(const TokenSplit *split, uint64_t seed, uint64_t index,
                   int B, int T, int32_t *inputs, int32_t *targets);

/* Sequential, non-overlapping windows for evaluation: batch `index` of
 * the split, wrapping around; window w = index*B + r starts at
 * (w*T) % (n - T). Deterministic. */
void dataset_eval_batch(const TokenSplit *split, uint64_t index, int B, int T,
                        int32_t *inputs, int32_t *targets);

#endif
