/* sha256.h - SHA-256 (FIPS 180-4), incremental and one-shot. Used for the
 * params_sha256 that runs are compared by, and for data provenance. */
#ifndef OURO_SHA256_H
#define OURO_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t total;     /* bytes fed so far */
    uint8_t block[64];
    size_t fill;        /* bytes waiting in block */
} Sha256;

void sha256_init(Sha256 *s);
void sha256_update(Sha256 *s, const void *data, size_t n);
void sha256_final(Sha256 *s, uint8_t out[32]);

void sha256(const void *data, size_t n, uint8_t out[32]);
void sha256_hex(const void *data, size_t n, char out[65]);
/* 32 bytes to 64 lowercase hex digits plus NUL. */
void sha256_to_hex(const uint8_t digest[32], char out[65]);

#endif
