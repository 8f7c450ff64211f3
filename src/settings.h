/* settings.h - every setting of a run, as key=value.
 *
 * The same keys are accepted in a config file (one `key = value` per line,
 * `#` starts a comment) and on the command line (`key=value`), the command
 * line winning. Unknown keys and bad values are errors naming the key.
 * CONFIG_KEYS below is the one list of keys, types, defaults and help. */
#ifndef OURO_SETTINGS_H
#define OURO_SETTINGS_H

#include <stdio.h>

/* X(type, name, default, min, max, help); for STR, min/max are unused and
 * for ENUM the choices are given as a "|"-separated default-first list. */
#define CONFIG_KEYS(INT, DBL, STR, ENUM)                                       \
    INT(n_layer, 4, 1, 1024, "Transformer blocks")                              \
    INT(n_head, 4, 1, 1024, "attention heads per block")                        \
    INT(n_embd, 128, 1, 65536, "model width C (a multiple of n_head)")          \
    INT(block_size, 128, 1, 65536, "context length T")                          \
    INT(vocab_size, 0, 0, 1 << 24, "vocabulary (0: from the data, 256 for bytes)") \
    STR(data, "default", "training data: default, a text file, or an llm.c .bin shard") \
    STR(valid_data, "", "explicit validation file (else held out from data)")   \
    STR(test_data, "", "explicit test file (else held out from data)")          \
    ENUM(data_format, "auto|bytes|bin", "how to read data files")               \
    INT(batch_size, 16, 1, 1 << 20, "sequences per minibatch")                  \
    INT(steps, 300, 0, 1 << 30, "optimizer steps")                              \
    ENUM(optimizer, "adamw|sgd", "update rule")                                 \
    DBL(lr, 1e-3, 0.0, 1e3, "peak learning rate")                               \
    DBL(min_lr_ratio, 0.1, 0.0, 1.0, "cosine floor as a fraction of lr")       \
    INT(warmup, 20, 0, 1 << 30, "linear learning-rate warm-up steps")           \
    ENUM(lr_schedule, "cosine|constant", "learning rate after warm-up")         \
    DBL(weight_decay, 0.0, 0.0, 10.0, "decoupled weight decay (matrices only)") \
    DBL(beta1, 0.9, 0.0, 1.0, "Adam beta1")                                      \
    DBL(beta2, 0.999, 0.0, 1.0, "Adam beta2")                                    \
    DBL(eps, 1e-8, 0.0, 1.0, "Adam epsilon")                                     \
    DBL(momentum, 0.0, 0.0, 1.0, "SGD momentum")                                \
    DBL(grad_clip, 1.0, 0.0, 1e9, "clip the global gradient norm (0: off)")     \
    INT(seed, 1337, 0, 2147483647, "seed of initialisation and data order")     \
    INT(eval_every, 100, 0, 1 << 30, "validate every N steps (0: only at the end)") \
    INT(eval_batches, 8, 1, 1 << 20, "validation batches per evaluation")       \
    INT(log_every, 10, 1, 1 << 30, "progress line every N steps")               \
    STR(out, "runs/latest", "run directory (metrics.jsonl, config)")            \
    INT(ckpt_every, 0, 0, 1 << 30, "checkpoint into <out>/ckpt every N steps (0: only at the end)") \
    INT(keep_last, 0, 0, 1 << 30, "checkpoints to keep, oldest pruned first (0: all)") \
    STR(resume, "", "continue from a checkpoint: latest, auto (latest if any) or a directory") \
    INT(stop_after, 0, 0, 1 << 30, "end the run after this step, with a checkpoint (0: at steps)") \
    STR(checkpoint, "", "checkpoint directory to evaluate or sample from (eval, sample)") \
    ENUM(split, "valid|test", "split that eval measures")                       \
    ENUM(schedule, "single|bp|gpipe|dp|ouroboros|ouroboros-pipelined",          \
         "training schedule (ALGORITHM.md)")                                    \
    INT(replicas, 1, 1, 1 << 20, "data-parallel copies of the pipeline")        \
    STR(partition, "", "blocks per module, e.g. 2,3,3,2 (default: balanced)")   \
    INT(micro_batches, 4, 1, 1 << 20, "micro-batches per minibatch (gpipe)")    \
    ENUM(activations, "store|replay", "keep activations, or replay the forward") \
    INT(bp_warmup_steps, 0, 0, 1 << 30, "exact backprop steps before delayed gradients") \
    INT(emulate, 0, 0, 1, "1: play every rank in this one process")             \
    INT(ranks, 0, 0, 1 << 20, "ranks to emulate (emulate=1; 0: the MPI world size)") \
    INT(trace, 0, 0, 1, "1: write <out>/trace-rank<R>.txt, the actions of each step") \
    DBL(comm_timeout, 300.0, 0.1, 1e9, "seconds a rank waits for a peer before giving up") \
    INT(threads, 1, 1, 1024, "BLAS threads per process")                        \
    ENUM(device, "cpu|cuda|cpu-staged",                                        \
         "where the math runs: the CPU, one GPU per rank, or (for tests) the CPU "  \
         "through the GPU's memory paths")                                      \
    ENUM(precision, "auto|fp32|bf16",                                           \
         "math precision (auto: bf16 matrix inputs on cuda, fp32 on cpu)")      \
    INT(sample_tokens, 200, 0, 1 << 20, "tokens sampled at the end of training") \
    STR(prompt, "The ", "prompt of the sample (byte-level data)")               \
    DBL(temperature, 0.8, 0.0, 100.0, "sampling temperature (0: greedy)")       \
    INT(top_k, 40, 0, 1 << 24, "sample from the k most likely (0: all)")

typedef struct {
#define CFG_INT(n, d, lo, hi, h) int n;
#define CFG_DBL(n, d, lo, hi, h) double n;
#define CFG_STR(n, d, h) char n[512];
#define CFG_ENUM(n, choices, h) char n[64];
    CONFIG_KEYS(CFG_INT, CFG_DBL, CFG_STR, CFG_ENUM)
#undef CFG_INT
#undef CFG_DBL
#undef CFG_STR
#undef CFG_ENUM
} Config;

void config_defaults(Config *c);
/* Applies one "key=value"; `where` names its origin for errors (e.g.
 * "command line" or "run.conf:12"). Dies on an unknown key or bad value. */
void config_set(Config *c, const char *assignment, const char *where);
/* Reads a config file of key=value lines. */
void config_load_file(Config *c, const char *path);
/* Writes every key as key=value lines (a valid config file). */
void config_write(const Config *c, FILE *f);
/* Prints the keys with defaults and help, for --help. */
void config_print_help(FILE *f);

#endif
