/* rng.h - small deterministic random number generation.
 *
 * Everything random in ouroboros is a pure function of a seed and a few
 * integers (tensor index, step, row), never of hidden global state, so any
 * rank can reproduce any draw. */
#ifndef OURO_RNG_H
#define OURO_RNG_H

#include <stdint.h>

/* SplitMix64 finaliser: a good 64-bit mixing function. */
static inline uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Hash of a seed and up to three integers. */
static inline uint64_t hash_u64(uint64_t seed, uint64_t a, uint64_t b,
                                uint64_t c) {
    return mix64(mix64(mix64(mix64(seed) ^ a) ^ b) ^ c);
}

/* A sequential stream (SplitMix64). */
typedef struct {
    uint64_t state;
} Rng;

static inline void rng_seed(Rng *r, uint64_t seed) { r->state = seed; }
static inline uint64_t rng_next(Rng *r) {
    r->state += 0x9E3779B97F4A7C15ull;
    uint64_t z = r->state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* Uniform in [0, 1) with 53 random bits. */
static inline double rng_uniform(Rng *r) {
    return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}
/* Standard normal (Box-Muller, one value per call, in double). */
double rng_normal(Rng *r);

#endif
