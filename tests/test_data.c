/* test_data.c - checks of src/data.c: split arithmetic, batch determinism,
 * .bin round trips, every bad-input error, and the default corpus.
 *
 * Error paths call die(), which exits, so each is run in a forked child
 * whose stderr goes to a file; the parent checks the exit status and that
 * the message is one line naming the file and the problem.
 *
 * Exit 0 when every check passes, 1 otherwise. */
#define _XOPEN_SOURCE 700 /* mkdtemp, setenv, nftw */
#include "data.h"
#include "sha256.h"

#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Ends the keyword list of expect_load_error; a typed null pointer, as a
 * bare NULL through "..." is not portable. */
#define END ((const char *)NULL)

static int failures = 0;
static char tmpdir[4096];

static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s - ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (!ok) failures++;
}

/* ---------------------------------------------------------------------- */
/* Files                                                                  */
/* ---------------------------------------------------------------------- */

static const char *tmp_path(const char *name) {
    static char paths[64][4200];
    static int next = 0;
    char *p = paths[next++ % 64];
    snprintf(p, sizeof paths[0], "%s/%s", tmpdir, name);
    return p;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "test_data: cannot write %s\n", path);
        exit(1);
    }
}

/* A text file whose byte i is a simple function of i, so a window's
 * position can be recovered from its contents. */
static const char *make_text(const char *name, size_t n) {
    uint8_t *buf = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)((i * 7 + i / 256) & 255);
    const char *path = tmp_path(name);
    write_bytes(path, buf, n);
    free(buf);
    return path;
}

static void put_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Writes an llm.c shard; header fields and payload size can be forged. */
static const char *make_bin(const char *name, uint32_t magic,
                            uint32_t version, uint32_t declared,
                            const uint16_t *tokens, size_t n_written) {
    size_t size = 1024 + 2 * n_written;
    uint8_t *buf = calloc(size, 1);
    put_le32(buf, magic);
    put_le32(buf + 4, version);
    put_le32(buf + 8, declared);
    for (size_t i = 0; i < n_written; i++) {
        buf[1024 + 2 * i] = (uint8_t)(tokens[i] & 255);
        buf[1024 + 2 * i + 1] = (uint8_t)(tokens[i] >> 8);
    }
    const char *path = tmp_path(name);
    write_bytes(path, buf, size);
    free(buf);
    return path;
}

static uint16_t *gpt2_tokens(size_t n) {
    uint16_t *t = malloc(n * sizeof *t);
    for (size_t i = 0; i < n; i++) t[i] = (uint16_t)((i * 37 + 11) % 50257);
    return t;
}

static DatasetSpec spec_for(const char *data, int min_tokens) {
    DatasetSpec s = {data, NULL, NULL, "auto", 50257, min_tokens};
    return s;
}

/* ---------------------------------------------------------------------- */
/* Death tests                                                            */
/* ---------------------------------------------------------------------- */

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return calloc(1, 1);
    char *buf = calloc(8192, 1);
    size_t got = fread(buf, 1, 8191, f);
    buf[got] = '\0';
    fclose(f);
    return buf;
}

/* Runs dataset_load in a child and checks it dies with one line on
 * stderr containing `name` and every keyword (END-terminated). */
static void expect_load_error(const char *what, const DatasetSpec *spec,
                              const char *name, ...) {
    const char *errpath = tmp_path("child-stderr.txt");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(errpath, "w", stderr)) _exit(99);
        Dataset ds;
        dataset_load(&ds, spec);
        _exit(0); /* reaching here means no error was raised */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int died = WIFEXITED(status) && WEXITSTATUS(status) != 0;
    char *msg = read_text(errpath);
    size_t len = strlen(msg);
    int one_line = len > 0 && msg[len - 1] == '\n' &&
                   strchr(msg, '\n') == msg + len - 1;
    int has_all = strstr(msg, name) != NULL;
    va_list ap;
    va_start(ap, name);
    for (const char *kw; (kw = va_arg(ap, const char *)) != NULL;)
        if (!strstr(msg, kw)) has_all = 0;
    va_end(ap);
    if (len) msg[len - 1] = '\0';
    check(died && one_line && has_all, "%s: exits %d with \"%s\"", what,
          WIFEXITED(status) ? WEXITSTATUS(status) : -1, msg);
    free(msg);
}

/* ---------------------------------------------------------------------- */
/* Byte-level text                                                        */
/* ---------------------------------------------------------------------- */

static int split_matches(const TokenSplit *s, const uint8_t *file,
                         size_t begin) {
    for (size_t i = 0; i < s->n; i++)
        if (s->tokens[i] != file[begin + i]) return 0;
    return 1;
}

static void test_byte_splits(size_t n, size_t train, size_t valid,
                             size_t test) {
    char name[64];
    snprintf(name, sizeof name, "text-%zu.txt", n);
    const char *path = make_text(name, n);
    DatasetSpec spec = spec_for(path, 5);
    Dataset ds;
    dataset_load(&ds, &spec);
    check(ds.train.n == train && ds.valid.n == valid && ds.test.n == test,
          "%zu bytes split %zu/%zu/%zu (want %zu/%zu/%zu)", n, ds.train.n,
          ds.valid.n, ds.test.n, train, valid, test);
    FILE *f = fopen(path, "rb");
    uint8_t *file = malloc(n);
    size_t got = fread(file, 1, n, f);
    fclose(f);
    check(got == n && split_matches(&ds.train, file, 0) &&
              split_matches(&ds.valid, file, train) &&
              split_matches(&ds.test, file, train + valid),
          "%zu bytes: splits are the file's consecutive bytes", n);
    check(ds.vocab_size == 256 && ds.is_bytes == 1,
          "byte text: vocab_size 256, is_bytes");
    check(strstr(ds.provenance, path) && strstr(ds.provenance, "sha256"),
          "provenance names the file: %s", ds.provenance);
    free(file);
    dataset_free(&ds);
}

/* Does this window occur in the split at some start? Returns the start
 * or -1. */
static long find_window(const TokenSplit *s, const int32_t *w, int len) {
    for (size_t start = 0; start + (size_t)len <= s->n; start++)
        if (!memcmp(s->tokens + start, w, (size_t)len * sizeof *w))
            return (long)start;
    return -1;
}

static void test_batches(void) {
    const char *path = make_text("batches.txt", 20000);
    DatasetSpec spec = spec_for(path, 17);
    Dataset ds;
    dataset_load(&ds, &spec);
    enum { B = 4, T = 16 };
    int32_t in1[B * T], tg1[B * T], in2[B * T], tg2[B * T];
    dataset_batch(&ds.train, 42, 7, B, T, in1, tg1);
    dataset_batch(&ds.train, 42, 7, B, T, in2, tg2);
    check(!memcmp(in1, in2, sizeof in1) && !memcmp(tg1, tg2, sizeof tg1),
          "same (seed, index) gives the same batch");
    dataset_batch(&ds.train, 43, 7, B, T, in2, tg2);
    check(memcmp(in1, in2, sizeof in1) != 0, "another seed, another batch");
    dataset_batch(&ds.train, 42, 8, B, T, in2, tg2);
    check(memcmp(in1, in2, sizeof in1) != 0, "another index, another batch");

    int shifted = 1, inside = 1;
    for (int r = 0; r < B; r++) {
        const int32_t *x = in1 + r * T, *y = tg1 + r * T;
        for (int t = 0; t + 1 < T; t++) shifted &= y[t] == x[t + 1];
        int32_t window[T + 1];
        memcpy(window, x, sizeof(int32_t) * T);
        window[T] = y[T - 1];
        inside &= find_window(&ds.train, window, T + 1) >= 0;
    }
    check(shifted, "targets are inputs shifted by one");
    check(inside, "every row is a window of T+1 tokens of the train split");

    int starts_ok = 1;
    dataset_eval_batch(&ds.valid, 3, B, T, in1, tg1);
    for (int r = 0; r < B; r++) {
        uint64_t w = 3 * B + (uint64_t)r;
        size_t start = (size_t)((w * T) % (ds.valid.n - T));
        starts_ok &= !memcmp(in1 + r * T, ds.valid.tokens + start,
                             sizeof(int32_t) * T) &&
                     !memcmp(tg1 + r * T, ds.valid.tokens + start + 1,
                             sizeof(int32_t) * T);
    }
    check(starts_ok, "eval window w starts at (w*T) %% (n-T)");
    dataset_free(&ds);
}

/* The smallest file that loads is exactly the one the error asks for. */
static void test_minimum_size(void) {
    int m = 65; /* block_size 64 */
    size_t need = 20 * (size_t)m - 9;
    const char *ok = make_text("min-ok.txt", need);
    DatasetSpec spec = spec_for(ok, m);
    Dataset ds;
    dataset_load(&ds, &spec);
    check(ds.valid.n == (size_t)m, "%zu bytes is enough for block_size %d",
          need, m - 1);
    dataset_free(&ds);
    const char *small = make_text("min-short.txt", need - 1);
    DatasetSpec bad = spec_for(small, m);
    char want[64];
    snprintf(want, sizeof want, "need at least %zu bytes", need);
    expect_load_error("one byte too short", &bad, small, "valid split",
                      "fewer than", want, "smaller block_size", END);
}

static void test_explicit_files(void) {
    const char *main_path = make_text("main.txt", 1000);
    const char *valid_path = make_text("valid.txt", 300);
    const char *test_path = make_text("test.txt", 200);
    Dataset ds;
    DatasetSpec both = {main_path, valid_path, test_path, "auto", 256, 10};
    dataset_load(&ds, &both);
    check(ds.train.n == 1000 && ds.valid.n == 300 && ds.test.n == 200,
          "valid_data and test_data given: main file is all train");
    dataset_free(&ds);
    DatasetSpec only_valid = {main_path, valid_path, "", "auto", 256, 10};
    dataset_load(&ds, &only_valid);
    check(ds.train.n == 900 && ds.valid.n == 300 && ds.test.n == 100,
          "only valid_data given: test is the main file's last 10%%");
    dataset_free(&ds);
    DatasetSpec only_test = {main_path, NULL, test_path, "auto", 256, 10};
    dataset_load(&ds, &only_test);
    check(ds.train.n == 900 && ds.valid.n == 100 && ds.test.n == 200,
          "only test_data given: valid is the main file's last 10%%");
    dataset_free(&ds);
}

/* ---------------------------------------------------------------------- */
/* .bin shards                                                            */
/* ---------------------------------------------------------------------- */

static void test_bin_roundtrip(void) {
    size_t n = 5000;
    uint16_t *tokens = gpt2_tokens(n);
    tokens[17] = 50256; /* the largest GPT-2 id is in range */
    const char *path = make_bin("good.bin", 20240520, 1, (uint32_t)n, tokens,
                                n);
    DatasetSpec spec = spec_for(path, 65);
    Dataset ds;
    dataset_load(&ds, &spec);
    int same = ds.train.n + ds.valid.n + ds.test.n == n;
    for (size_t i = 0; same && i < ds.train.n; i++)
        same = ds.train.tokens[i] == tokens[i];
    for (size_t i = 0; same && i < ds.valid.n; i++)
        same = ds.valid.tokens[i] == tokens[ds.train.n + i];
    for (size_t i = 0; same && i < ds.test.n; i++)
        same = ds.test.tokens[i] == tokens[ds.train.n + ds.valid.n + i];
    check(same && ds.train.n == 4500 && ds.valid.n == 250,
          ".bin round-trips its %zu tokens, split 4500/250/250", n);
    check(ds.vocab_size == 50257 && ds.is_bytes == 0,
          ".bin: vocab_size is the model's, not bytes");
    check(strstr(ds.provenance, "bin") != NULL, "provenance: %s",
          ds.provenance);
    dataset_free(&ds);
    free(tokens);
}

static void test_bin_errors(void) {
    size_t n = 2000;
    uint16_t *tokens = gpt2_tokens(n);
    DatasetSpec s;

    const char *p = tmp_path("short.bin");
    write_bytes(p, "0123456789", 10);
    s = spec_for(p, 65);
    expect_load_error(".bin shorter than its header", &s, p, "header", END);

    p = make_bin("magic.bin", 20240521, 1, (uint32_t)n, tokens, n);
    s = spec_for(p, 65);
    expect_load_error("bad magic", &s, p, "bad magic", "20240520", END);

    p = make_bin("version.bin", 20240520, 2, (uint32_t)n, tokens, n);
    s = spec_for(p, 65);
    expect_load_error("bad version", &s, p, "version 2", END);

    p = make_bin("truncated.bin", 20240520, 1, (uint32_t)n, tokens, n - 3);
    s = spec_for(p, 65);
    expect_load_error("truncated payload", &s, p, "truncated", END);

    p = make_bin("trailing.bin", 20240520, 1, (uint32_t)n - 3, tokens, n);
    s = spec_for(p, 65);
    expect_load_error("trailing bytes", &s, p, "trailing", END);

    tokens[123] = 60000;
    tokens[500] = 65535;
    p = make_bin("range.bin", 20240520, 1, (uint32_t)n, tokens, n);
    s = spec_for(p, 65);
    expect_load_error("token out of range", &s, p, "token 60000",
                      "index 123", "byte offset 1270", "vocab_size=65536",
                      END);
    free(tokens);
}

/* ---------------------------------------------------------------------- */
/* Other bad inputs                                                       */
/* ---------------------------------------------------------------------- */

static void test_other_errors(void) {
    const char *missing = tmp_path("no-such-file.txt");
    DatasetSpec s = spec_for(missing, 65);
    expect_load_error("missing file", &s, missing, "cannot open", END);

    const char *empty = make_text("empty.txt", 0);
    s = spec_for(empty, 65);
    expect_load_error("empty file", &s, empty, "empty", END);

    const char *small = make_text("small.txt", 500);
    s = spec_for(small, 65);
    expect_load_error("too short for block_size", &s, small, "fewer than",
                      "need at least 1291 bytes", END);

    const char *text = make_text("vocab.txt", 5000);
    s = spec_for(text, 65);
    s.model_vocab = 100;
    expect_load_error("byte text with vocab_size < 256", &s, text,
                      "vocab_size=256", END);

    s = spec_for(text, 65);
    s.format = "words";
    expect_load_error("unknown format", &s, "format=words", "bytes", END);

    uint16_t *tokens = gpt2_tokens(2000);
    const char *shard = make_bin("mixed.bin", 20240520, 1, 2000, tokens,
                                 2000);
    free(tokens);
    DatasetSpec mixed = {text, shard, NULL, "auto", 50257, 65};
    expect_load_error("text data with a .bin valid_data", &mixed, shard,
                      "same format", END);

    const char *short_valid = make_text("short-valid.txt", 40);
    DatasetSpec sv = {text, short_valid, NULL, "auto", 256, 65};
    expect_load_error("explicit valid_data too short", &sv, short_valid,
                      "valid split", "need at least 65 bytes", END);
}

/* ---------------------------------------------------------------------- */
/* Default corpus                                                         */
/* ---------------------------------------------------------------------- */

static void make_dir(const char *path) {
    if (mkdir(path, 0700) != 0) {
        fprintf(stderr, "test_data: cannot mkdir %s\n", path);
        exit(1);
    }
}

/* A tiny tree checks the walk: only *.rst.txt, recursive, and byte order
 * of the path ('.' sorts before '/', so b.rst.txt precedes b/c.rst.txt). */
static void test_corpus_walk(void) {
    char dir[4200], sub[4300];
    snprintf(dir, sizeof dir, "%s/corpus", tmpdir);
    snprintf(sub, sizeof sub, "%s/b", dir);
    make_dir(dir);
    make_dir(sub);
    const struct { const char *name, *text; } files[] = {
        {"corpus/b/c.rst.txt", "C"}, {"corpus/a.rst.txt", "A"},
        {"corpus/b.rst.txt", "B"},   {"corpus/notes.txt", "X"},
        {"corpus/b/d.rst", "Y"},     {"corpus/Z.rst.txt", "Z"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        write_bytes(tmp_path(files[i].name), files[i].text, 1);
    setenv("OURO_DEFAULT_CORPUS_DIR", dir, 1);
    uint8_t *bytes;
    size_t n;
    char prov[512];
    data_default_corpus(&bytes, &n, prov, sizeof prov);
    check(n == 4 && !memcmp(bytes, "ZABC", 4),
          "corpus walk: *.rst.txt only, recursive, strcmp order (got %.*s)",
          (int)n, (const char *)bytes);
    check(strstr(prov, "4 files") && strstr(prov, dir),
          "corpus provenance: %s", prov);
    free(bytes);

    char none[4200];
    snprintf(none, sizeof none, "%s/no-corpus-here", tmpdir);
    setenv("OURO_DEFAULT_CORPUS_DIR", none, 1);
    DatasetSpec s = spec_for("default", 65);
    expect_load_error("default corpus missing", &s, none,
                      "apt-get install python3.11-doc", "data=FILE", END);
    unsetenv("OURO_DEFAULT_CORPUS_DIR");
}

static void test_default_corpus(void) {
    const char *dir = "/usr/share/doc/python3.11/html/_sources";
    struct stat st;
    if (stat(dir, &st) != 0) {
        check(0, "default corpus at %s: missing; run launch/setup-deps "
                 "(apt-get install python3.11-doc)", dir);
        return;
    }
    uint8_t *a, *b;
    size_t na, nb;
    char prov[512], sha_a[65], sha_b[65];
    data_default_corpus(&a, &na, prov, sizeof prov);
    data_default_corpus(&b, &nb, prov, sizeof prov);
    sha256_hex(a, na, sha_a);
    sha256_hex(b, nb, sha_b);
    check(na >= 10u * 1000 * 1000, "default corpus is %zu bytes (>= 10 MB)",
          na);
    check(na == nb && !strcmp(sha_a, sha_b),
          "default corpus loads identically twice (sha256 %.16s)", sha_a);
    const char *sha_in_prov = strstr(prov, "sha256 ");
    check(sha_in_prov && !strncmp(sha_in_prov + 7, sha_a, 16) &&
              strstr(prov, "python3.11-doc"),
          "provenance: %s", prov);
    free(a);
    free(b);

    Dataset ds;
    DatasetSpec s = spec_for("default", 1025);
    dataset_load(&ds, &s);
    check(ds.is_bytes && ds.train.n + ds.valid.n + ds.test.n == na &&
              ds.train.n == na / 10 * 9 + na % 10 * 9 / 10,
          "data=default: bytes, split %zu/%zu/%zu", ds.train.n, ds.valid.n,
          ds.test.n);
    dataset_free(&ds);
}

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/ouro-test-data-XXXXXX",
             base && base[0] ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "test_data: cannot create a temp dir under %s\n",
                base && base[0] ? base : "/tmp");
        return 1;
    }
    unsetenv("OURO_DEFAULT_CORPUS_DIR");
    test_byte_splits(1000, 900, 50, 50);
    test_byte_splits(1003, 902, 50, 51);
    test_byte_splits(1019, 917, 51, 51);
    test_batches();
    test_minimum_size();
    test_explicit_files();
    test_bin_roundtrip();
    test_bin_errors();
    test_other_errors();
    test_corpus_walk();
    test_default_corpus();
    if (failures) {
        printf("FAIL: %d failure%s (files kept in %s)\n", failures,
               failures == 1 ? "" : "s", tmpdir);
        return 1;
    }
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    printf("PASS: all data checks\n");
    return 0;
}
