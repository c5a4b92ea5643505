/* sha256.h: SHA-256 (FIPS 180-4), incremental and one-shot.
 *
 * Used to name a run by the hash of its canonical config JSON. Streaming
 * (init / update / final) so that the JSON writer can hash as it writes,
 * without a buffer large enough for every possible config. Not constant-time
 * and not meant for secrets: memlab only needs a stable fingerprint. */
#ifndef MEMLAB_SHA256_H
#define MEMLAB_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sha256_ctx {
    uint32_t h[8];      /* chaining state */
    uint64_t bytes;     /* message length so far, in bytes */
    uint8_t block[64];  /* pending input, block_len bytes used */
    size_t block_len;
} sha256_ctx;

/* sha256_init: start a new message. */
void sha256_init(sha256_ctx *c);
/* sha256_update: append n bytes of data (data may be NULL when n is 0). */
void sha256_update(sha256_ctx *c, const void *data, size_t n);
/* sha256_final: pad, write the 32-byte digest to out; c must be re-initialised
 * before reuse. */
void sha256_final(sha256_ctx *c, uint8_t out[32]);
/* sha256_hex: digest of data[n] as 64 lowercase hex digits + NUL. */
void sha256_hex(const void *data, size_t n, char hex[65]);
/* sha256_to_hex: 32-byte digest as 64 lowercase hex digits + NUL. */
void sha256_to_hex(const uint8_t digest[32], char hex[65]);

#endif
