/*
 * Crypto helpers on mbedTLS (libmbedcrypto).
 *
 * One process-wide CTR_DRBG, seeded lazily from the platform entropy source and guarded by a
 * mutex: key and token generation is rare and never on a hot path, so contention does not matter.
 * A seeding failure is reported, never papered over with a weaker source.
 */
#include <pthread.h>
#include <string.h>
#include <mbedtls/constant_time.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/md.h>
#include <mbedtls/sha256.h>
#include "common/common.h"

static pthread_mutex_t drbg_lock = PTHREAD_MUTEX_INITIALIZER;
static mbedtls_entropy_context entropy;
static mbedtls_ctr_drbg_context drbg;
static bool drbg_ready;

int sg_rand_bytes(void *buf, size_t n)
{
    int ret = 0;
    pthread_mutex_lock(&drbg_lock);
    if (!drbg_ready) {
        static const char pers[] = "sandgate";
        mbedtls_entropy_init(&entropy);
        mbedtls_ctr_drbg_init(&drbg);
        if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy,
                                  (const unsigned char *)pers, sizeof(pers) - 1) != 0) {
            mbedtls_ctr_drbg_free(&drbg);
            mbedtls_entropy_free(&entropy);
            ret = SG_EIO;
            goto out;
        }
        drbg_ready = true;
    }
    /* mbedtls caps one request at MBEDTLS_CTR_DRBG_MAX_REQUEST bytes. */
    for (size_t off = 0; off < n;) {
        size_t chunk = n - off > MBEDTLS_CTR_DRBG_MAX_REQUEST ? MBEDTLS_CTR_DRBG_MAX_REQUEST : n - off;
        if (mbedtls_ctr_drbg_random(&drbg, (unsigned char *)buf + off, chunk) != 0) {
            ret = SG_EIO;
            goto out;
        }
        off += chunk;
    }
out:
    pthread_mutex_unlock(&drbg_lock);
    return ret;
}

void sg_sha256(const void *data, size_t len, uint8_t out[32])
{
    mbedtls_sha256_ret(data, len, out, 0);
}

void sg_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen, uint8_t out[32])
{
    mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), key, keylen, msg, msglen, out);
}

bool sg_ct_equal(const void *a, const void *b, size_t n)
{
    return mbedtls_ct_memcmp(a, b, n) == 0;
}

bool sg_ct_streq(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    /* Compare against itself when lengths differ, so the work done depends only on la. */
    bool same = sg_ct_equal(a, la == lb ? b : a, la);
    return same && la == lb;
}

void sg_hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int sg_hex_decode(const char *in, size_t inlen, uint8_t *out)
{
    if (inlen % 2)
        return SG_EINVAL;
    for (size_t i = 0; i < inlen / 2; i++) {
        int hi = hexval(in[2 * i]), lo = hexval(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return SG_EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}
