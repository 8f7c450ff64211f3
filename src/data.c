/* data.c - see data.h.
 *
 * Loading reads each source file whole, validates it, then decodes the
 * token range of every split straight from the raw bytes into its own
 * int32 array, so a split never aliases another and dataset_free is a
 * plain free of each. */
#define _POSIX_C_SOURCE 200809L
#include "data.h"

#include "common.h"
#include "rng.h"
#include "sha256.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum {
    BIN_MAGIC = 20240520,
    BIN_VERSION = 1,
    BIN_HEADER_INTS = 256,
    BIN_HEADER_BYTES = BIN_HEADER_INTS * 4,
    BYTE_VOCAB = 256,
};

#define DEFAULT_CORPUS_DIR "/usr/share/doc/python3.11/html/_sources"
#define DEFAULT_CORPUS_SUFFIX ".rst.txt"
#define DEFAULT_CORPUS_ENV "OURO_DEFAULT_CORPUS_DIR"

/* One input file (or the assembled default corpus), validated. */
typedef struct {
    const char *role;       /* "data", "valid_data" or "test_data" */
    const char *name;       /* path as the user gave it, for messages */
    int is_bin;
    uint8_t *raw;           /* the whole file */
    size_t raw_size;
    const uint8_t *payload; /* first token: raw, or raw past the header */
    size_t n;               /* tokens */
    char origin[320];       /* how to describe it in the provenance */
} Source;

/* ---------------------------------------------------------------------- */
/* Small helpers                                                          */
/* ---------------------------------------------------------------------- */

static int is_set(const char *s) { return s && s[0]; }

static int has_suffix(const char *s, const char *suffix) {
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

/* Appends to a fixed buffer, silently truncating: provenance is a
 * description, and a cut-off path is better than no line at all. */
static void appendf(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void appendf(char *buf, size_t cap, const char *fmt, ...) {
    size_t used = strlen(buf);
    if (used + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, cap - used, fmt, ap);
    va_end(ap);
}

static void sha16_of(const void *data, size_t n, char out[17]) {
    char hex[65];
    sha256_hex(data, n, hex);
    memcpy(out, hex, 16);
    out[16] = '\0';
}

static uint32_t read_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint32_t read_le16(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

/* Reads a whole regular file; every failure names the file and the
 * option it came from. An empty file returns size 0 (callers decide). */
static uint8_t *read_whole_file(const char *role, const char *path,
                                size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f)
        die("%s %s: cannot open (%s); check the path, or pass data=default "
            "for the built-in corpus", role, path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode))
        die("%s %s: not a regular file; pass a text file or a .bin shard",
            role, path);
    size_t n = (size_t)st.st_size;
    uint8_t *buf = xmalloc(n);
    size_t got = fread(buf, 1, n, f);
    if (got != n || ferror(f))
        die("%s %s: read %zu of %zu bytes (%s); check the file is readable "
            "and not being written", role, path, got, n, strerror(errno));
    fclose(f);
    *size = n;
    return buf;
}

/* ---------------------------------------------------------------------- */
/* The default corpus                                                     */
/* ---------------------------------------------------------------------- */

typedef struct {
    char **paths;
    size_t count, cap;
} PathList;

static void pathlist_push(PathList *list, const char *path) {
    if (list->count == list->cap) {
        size_t cap = list->cap ? 2 * list->cap : 256;
        char **grown = realloc(list->paths, cap * sizeof *grown);
        if (!grown) die("out of memory listing the default corpus");
        list->paths = grown;
        list->cap = cap;
    }
    list->paths[list->count++] = xstrdup(path);
}

static void pathlist_free(PathList *list) {
    for (size_t i = 0; i < list->count; i++) free(list->paths[i]);
    free(list->paths);
}

/* Collects every *.rst.txt under dir. Symlinked directories are not
 * followed (no cycles); symlinked files are taken if they match. The
 * order here does not matter: the caller sorts. */
static void collect_corpus_files(const char *dir, PathList *list) {
    DIR *d = opendir(dir);
    if (!d) return; /* unreadable subdirectory: simply contributes nothing */
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        char *path = xmalloc(len);
        snprintf(path, len, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            collect_corpus_files(path, list);
        else if (has_suffix(e->d_name, DEFAULT_CORPUS_SUFFIX) &&
                 stat(path, &st) == 0 && S_ISREG(st.st_mode))
            pathlist_push(list, path);
        free(path);
    }
    closedir(d);
}

static int compare_paths(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static const char *default_corpus_dir(void) {
    const char *env = getenv(DEFAULT_CORPUS_ENV);
    return is_set(env) ? env : DEFAULT_CORPUS_DIR;
}

void data_default_corpus(uint8_t **out, size_t *n, char *provenance,
                         size_t provlen) {
    const char *dir = default_corpus_dir();
    PathList list = {0};
    collect_corpus_files(dir, &list);
    if (list.count == 0)
        die("default corpus not found at %s (no *%s files): install it with "
            "`apt-get install python3.11-doc` (or run launch/setup-deps), "
            "or pass data=FILE", dir, DEFAULT_CORPUS_SUFFIX);
    /* Byte order of the full path, so the corpus is the same bytes on
     * every machine whatever order the file system lists entries in. */
    qsort(list.paths, list.count, sizeof *list.paths, compare_paths);

    uint8_t *corpus = NULL;
    size_t total = 0;
    for (size_t i = 0; i < list.count; i++) {
        size_t size;
        uint8_t *bytes = read_whole_file("default corpus", list.paths[i],
                                         &size);
        uint8_t *grown = realloc(corpus, total + size + 1);
        if (!grown) die("out of memory assembling the default corpus");
        corpus = grown;
        memcpy(corpus + total, bytes, size);
        total += size;
        free(bytes);
    }
    char sha[17];
    sha16_of(corpus, total, sha);
    if (provenance && provlen) {
        provenance[0] = '\0';
        appendf(provenance, provlen,
                "default corpus: %zu files, %zu bytes from %s (%s), "
                "sha256 %s", list.count, total, dir,
                strcmp(dir, DEFAULT_CORPUS_DIR) == 0
                    ? "Debian python3.11-doc" : "$" DEFAULT_CORPUS_ENV,
                sha);
    }
    pathlist_free(&list);
    *out = corpus;
    *n = total;
}

/* ---------------------------------------------------------------------- */
/* Sources: reading and validating one file                               */
/* ---------------------------------------------------------------------- */

int data_is_token_shard(const char *format, const char *path) {
    if (!is_set(format) || !strcmp(format, "auto"))
        return has_suffix(path, ".bin");
    if (!strcmp(format, "bin")) return 1;
    if (!strcmp(format, "bytes")) return 0;
    die("format=%s is not known; use format=auto (.bin suffix means token "
        "shard), format=bytes or format=bin", format);
}

static void validate_bin_header(const Source *s) {
    if (s->raw_size < BIN_HEADER_BYTES)
        die("%s %s: %zu bytes is shorter than the %d-byte .bin header; not "
            "an llm.c token shard (use format=bytes to read it as text)",
            s->role, s->name, s->raw_size, BIN_HEADER_BYTES);
    uint32_t magic = read_le32(s->raw), version = read_le32(s->raw + 4);
    if (magic != BIN_MAGIC)
        die("%s %s: bad magic %u in the .bin header (expected %d); not an "
            "llm.c token shard (use format=bytes to read it as text)",
            s->role, s->name, magic, BIN_MAGIC);
    if (version != BIN_VERSION)
        die("%s %s: unsupported .bin version %u (expected %d, uint16 "
            "tokens); re-export the shard in the version-%d format",
            s->role, s->name, version, BIN_VERSION, BIN_VERSION);
}

/* The header's token count must account for every payload byte: a short
 * file is a cut-off download, a long one is not what it claims to be. */
static void validate_bin_size(const Source *s, size_t count) {
    size_t payload = s->raw_size - BIN_HEADER_BYTES;
    if (payload < 2 * count)
        die("%s %s: truncated: the header declares %zu tokens (%zu payload "
            "bytes) but the file has %zu; re-download or re-export it",
            s->role, s->name, count, 2 * count, payload);
    if (payload > 2 * count)
        die("%s %s: %zu trailing bytes after the %zu tokens the header "
            "declares; the file is corrupt or not an llm.c shard",
            s->role, s->name, payload - 2 * count, count);
    if (count == 0)
        die("%s %s: the shard is empty (0 tokens); pass a shard with data",
            s->role, s->name);
}

/* Reports the first token out of range, and the largest, so one fix of
 * vocab_size is enough. */
static void validate_bin_tokens(const Source *s, int model_vocab) {
    size_t first_bad = s->n;
    uint32_t max_token = 0;
    for (size_t i = 0; i < s->n; i++) {
        uint32_t t = read_le16(s->payload + 2 * i);
        if (t >= (uint32_t)model_vocab && first_bad == s->n) first_bad = i;
        if (t > max_token) max_token = t;
    }
    if (first_bad == s->n) return;
    die("%s %s: token %u at index %zu (byte offset %zu) >= vocab_size %d "
        "(largest token in the file: %u); set vocab_size=%u or more, or use "
        "a shard made with the model's tokenizer", s->role, s->name,
        read_le16(s->payload + 2 * first_bad), first_bad,
        (size_t)BIN_HEADER_BYTES + 2 * first_bad, model_vocab, max_token,
        max_token + 1);
}

static void load_bin_source(Source *s, int model_vocab) {
    validate_bin_header(s);
    int32_t declared = (int32_t)read_le32(s->raw + 8);
    if (declared < 0)
        die("%s %s: negative token count %d in the .bin header; the file is "
            "corrupt", s->role, s->name, declared);
    validate_bin_size(s, (size_t)declared);
    s->payload = s->raw + BIN_HEADER_BYTES;
    s->n = (size_t)declared;
    validate_bin_tokens(s, model_vocab);
}

/* Fails before any reading when the format cannot hold the model's
 * vocabulary, so the user learns the fix without waiting on a big file. */
static void check_vocab(const Source *s, int model_vocab) {
    if (!s->is_bin && model_vocab < BYTE_VOCAB)
        die("%s %s: byte-level text has 256 token values but vocab_size is "
            "%d; set vocab_size=256", s->role, s->name, model_vocab);
    if (s->is_bin && model_vocab <= 0)
        die("%s %s: vocab_size is %d; set vocab_size to the tokenizer's "
            "(50257 for GPT-2 shards)", s->role, s->name, model_vocab);
}

static void describe_source(Source *s) {
    char sha[17];
    sha16_of(s->raw, s->raw_size, sha);
    snprintf(s->origin, sizeof s->origin, "%s %s (%s, %zu tokens, sha256 %s)",
             s->role, s->name, s->is_bin ? "bin" : "bytes", s->n, sha);
}

static void load_source(Source *s, const char *role, const char *path,
                        const DatasetSpec *spec) {
    memset(s, 0, sizeof *s);
    s->role = role;
    s->name = path;
    int is_default = !strcmp(role, "data") && !strcmp(path, "default");
    s->is_bin = data_is_token_shard(spec->format, is_default ? "" : path);
    if (is_default && s->is_bin)
        die("data default: the default corpus is byte-level text; use "
            "format=auto or format=bytes, or pass data=FILE.bin");
    check_vocab(s, spec->model_vocab);

    if (is_default) {
        /* It describes itself: file count, directory and hash. */
        data_default_corpus(&s->raw, &s->raw_size, s->origin,
                            sizeof s->origin);
    } else {
        s->raw = read_whole_file(role, path, &s->raw_size);
        if (s->raw_size == 0)
            die("%s %s: file is empty; pass a non-empty text file or .bin "
                "shard", role, path);
    }
    if (s->is_bin) {
        load_bin_source(s, spec->model_vocab);
    } else {
        s->payload = s->raw;
        s->n = s->raw_size;
    }
    if (!is_default) describe_source(s);
}

static void free_source(Source *s) {
    free(s->raw);
    s->raw = NULL;
}

/* ---------------------------------------------------------------------- */
/* Splits                                                                 */
/* ---------------------------------------------------------------------- */

/* The enwik8 convention: train is floor(9n/10) tokens, the rest (that is
 * ceil(n/10)) is held out. Written to avoid overflowing 9n. */
static size_t train_part(size_t n) { return n / 10 * 9 + n % 10 * 9 / 10; }

/* How the main source is cut. need_valid/need_test say which held-out
 * splits it must supply (those without an explicit file): both halves the
 * held-out tail into valid then test (the smaller half first), one gives
 * it whole to that split, none makes the whole source train. */
typedef struct {
    size_t train, valid, test; /* token counts taken from the main source */
} MainCut;

static MainCut cut_main(size_t n, int need_valid, int need_test) {
    MainCut c = {0};
    c.train = (need_valid || need_test) ? train_part(n) : n;
    size_t held = n - c.train;
    if (need_valid && need_test) {
        c.valid = held / 2;
        c.test = held - c.valid;
    } else if (need_valid) {
        c.valid = held;
    } else if (need_test) {
        c.test = held;
    }
    return c;
}

static int cut_fits(MainCut c, size_t m, int need_valid, int need_test) {
    return c.train >= m && (!need_valid || c.valid >= m) &&
           (!need_test || c.test >= m);
}

/* Smallest main source that gives every split it supplies m tokens. The
 * closed form (20m-9 for two held-out splits, 10m-9 for one) is only a
 * starting point: stepping up from it keeps this exact at tiny m. */
static size_t min_main_tokens(size_t m, int need_valid, int need_test) {
    int parts = need_valid + need_test;
    size_t n = parts == 2 ? 20 * m : parts == 1 ? 10 * m : m + 9;
    n = n > 9 ? n - 9 : 1;
    while (!cut_fits(cut_main(n, need_valid, need_test), m, need_valid,
                     need_test))
        n++;
    return n;
}

static void decode_split(const Source *s, size_t begin, size_t count,
                         TokenSplit *out) {
    out->tokens = xmalloc(count * sizeof *out->tokens);
    out->n = count;
    for (size_t i = 0; i < count; i++)
        out->tokens[i] = s->is_bin
                             ? (int32_t)read_le16(s->payload + 2 * (begin + i))
                             : (int32_t)s->payload[begin + i];
}

/* Where one split's tokens come from: a range of one source. */
typedef struct {
    const char *name;   /* "train", "valid", "test" */
    const Source *from;
    size_t begin, n;
    size_t need;        /* source size that would give this split enough */
    const char *where;  /* for the provenance: "data 90-95%", "valid_data" */
} SplitPlan;

/* Lays the three splits over the sources (see data.h for the rule). */
static void plan_splits(const Source *primary, const Source *valid,
                        const Source *test, size_t m, SplitPlan plan[3]) {
    int need_valid = valid == NULL, need_test = test == NULL;
    MainCut cut = cut_main(primary->n, need_valid, need_test);
    size_t need = min_main_tokens(m, need_valid, need_test);
    plan[0] = (SplitPlan){"train", primary, 0, cut.train, need,
                          need_valid || need_test ? "data 0-90%"
                                                  : "all of data"};
    if (need_valid)
        plan[1] = (SplitPlan){"valid", primary, cut.train, cut.valid, need,
                              need_test ? "data 90-95%" : "data 90-100%"};
    else
        plan[1] = (SplitPlan){"valid", valid, 0, valid->n, m, "valid_data"};
    if (need_test)
        plan[2] = (SplitPlan){"test", primary, cut.train + cut.valid,
                              cut.test, need,
                              need_valid ? "data 95-100%" : "data 90-100%"};
    else
        plan[2] = (SplitPlan){"test", test, 0, test->n, m, "test_data"};
}

static void check_split_size(const SplitPlan *p, size_t m) {
    if (p->n >= m) return;
    const Source *s = p->from;
    die("%s %s: %s split has %zu tokens (%s, of %zu in the file), fewer "
        "than the %zu needed for one window of block_size+1; need at least "
        "%zu %s; use a bigger file or a smaller block_size", s->role,
        s->name, p->name, p->n, p->where, s->n, m, p->need,
        s->is_bin ? "tokens" : "bytes");
}

static void check_same_format(const Source *primary, const Source *other) {
    if (primary->is_bin == other->is_bin) return;
    die("%s %s is %s but data %s is %s; every split must use the same "
        "format (pass format=bytes or format=bin to force one)", other->role,
        other->name, other->is_bin ? "a .bin token shard" : "byte text",
        primary->name, primary->is_bin ? "a .bin token shard" : "byte text");
}

static void write_provenance(Dataset *ds, Source *sources[3],
                             const SplitPlan plan[3]) {
    char *buf = ds->provenance;
    size_t cap = sizeof ds->provenance;
    for (int i = 0; i < 3; i++)
        if (sources[i])
            appendf(buf, cap, "%s%s", i ? "; " : "", sources[i]->origin);
    appendf(buf, cap, "; %s tokens:", ds->is_bytes ? "bytes" : "bin");
    for (int i = 0; i < 3; i++)
        appendf(buf, cap, "%s %s %zu (%s)", i ? "," : "", plan[i].name,
                plan[i].n, plan[i].where);
}

/* ---------------------------------------------------------------------- */
/* Public API                                                             */
/* ---------------------------------------------------------------------- */

void dataset_load(Dataset *ds, const DatasetSpec *spec) {
    memset(ds, 0, sizeof *ds);
    if (spec->min_tokens < 1)
        die("data: min_tokens is %d; it must be block_size+1 >= 2",
            spec->min_tokens);
    Source primary, valid, test;
    Source *sources[3] = {&primary, NULL, NULL};
    load_source(&primary, "data",
                is_set(spec->data) ? spec->data : "default", spec);
    if (is_set(spec->valid_data)) {
        load_source(&valid, "valid_data", spec->valid_data, spec);
        check_same_format(&primary, &valid);
        sources[1] = &valid;
    }
    if (is_set(spec->test_data)) {
        load_source(&test, "test_data", spec->test_data, spec);
        check_same_format(&primary, &test);
        sources[2] = &test;
    }

    SplitPlan plan[3];
    size_t m = (size_t)spec->min_tokens;
    plan_splits(&primary, sources[1], sources[2], m, plan);
    for (int i = 0; i < 3; i++) check_split_size(&plan[i], m);
    TokenSplit *out[3] = {&ds->train, &ds->valid, &ds->test};
    for (int i = 0; i < 3; i++)
        decode_split(plan[i].from, plan[i].begin, plan[i].n, out[i]);

    ds->is_bytes = !primary.is_bin;
    ds->vocab_size = primary.is_bin ? spec->model_vocab : BYTE_VOCAB;
    write_provenance(ds, sources, plan);
    for (int i = 0; i < 3; i++)
        if (sources[i]) free_source(sources[i]);
}

void dataset_free(Dataset *ds) {
    free(ds->train.tokens);
    free(ds->valid.tokens);
    free(ds->test.tokens);
    ds->train = ds->valid = ds->test = (TokenSplit){0};
}

/* A window of T+1 tokens must fit; this is a programming or config error
 * that dataset_load's min_tokens check normally rules out. */
static void check_window(const TokenSplit *split, int B, int T,
                         const char *who) {
    if (B <= 0 || T <= 0)
        die("%s: batch %d x block %d; batch_size and block_size must be "
            "positive", who, B, T);
    if (split->n < (size_t)T + 1)
        die("%s: split has %zu tokens, fewer than block_size+1 = %d; use a "
            "smaller block_size or a bigger dataset", who, split->n, T + 1);
}

static void copy_window(const TokenSplit *split, uint64_t start, int T,
                        int32_t *inputs, int32_t *targets) {
    const int32_t *w = split->tokens + start;
    memcpy(inputs, w, (size_t)T * sizeof *w);
    memcpy(targets, w + 1, (size_t)T * sizeof *w);
}

void dataset_batch(const TokenSplit *split, uint64_t seed, uint64_t index,
                   int B, int T, int32_t *inputs, int32_t *targets) {
    check_window(split, B, T, "dataset_batch");
    /* n - T starts leave room for the target past the last input. */
    uint64_t starts = (uint64_t)split->n - (uint64_t)T;
    for (int r = 0; r < B; r++) {
        uint64_t start = hash_u64(seed, index, (uint64_t)r, 0) % starts;
        copy_window(split, start, T, inputs + (size_t)r * (size_t)T,
                    targets + (size_t)r * (size_t)T);
    }
}

void dataset_eval_batch(const TokenSplit *split, uint64_t index, int B, int T,
                        int32_t *inputs, int32_t *targets) {
    check_window(split, B, T, "dataset_eval_batch");
    uint64_t starts = (uint64_t)split->n - (uint64_t)T;
    for (int r = 0; r < B; r++) {
        uint64_t w = index * (uint64_t)B + (uint64_t)r;
        uint64_t start = (w * (uint64_t)T) % starts;
        copy_window(split, start, T, inputs + (size_t)r * (size_t)T,
                    targets + (size_t)r * (size_t)T);
    }
}
