/*
 * API key format, hashing and masking. A key is "e2b_" + hex of 20 random bytes; the database
 * keeps SHA-256 of those bytes (as E2B does), so a leaked table gives no usable key.
 */
#include <string.h>
#include "auth/auth.h"

int sg_auth_key_generate(char out[SG_AUTH_KEY_LEN + 1])
{
    uint8_t raw[SG_AUTH_KEY_RAW];
    if (sg_rand_bytes(raw, sizeof(raw)) != 0)
        return SG_EIO;
    memcpy(out, "e2b_", 4);
    sg_hex_encode(raw, sizeof(raw), out + 4);
    memset(raw, 0, sizeof(raw));
    return 0;
}

int sg_auth_key_parse(const char *key, size_t len, uint8_t raw[SG_AUTH_KEY_RAW])
{
    if (key == NULL || len != SG_AUTH_KEY_LEN || memcmp(key, "e2b_", 4) != 0)
        return SG_EINVAL;
    for (size_t i = 4; i < len; i++) /* lower-case only, as issued */
        if (!((key[i] >= '0' && key[i] <= '9') || (key[i] >= 'a' && key[i] <= 'f')))
            return SG_EINVAL;
    return sg_hex_decode(key + 4, len - 4, raw);
}

void sg_auth_key_hash(const uint8_t raw[SG_AUTH_KEY_RAW], char hex[65])
{
    uint8_t h[32];
    sg_sha256(raw, SG_AUTH_KEY_RAW, h);
    sg_hex_encode(h, 32, hex);
}

void sg_auth_key_mask(const char *key, char *out, size_t cap)
{
    size_t n = strlen(key);
    if (n < 12) {
        snprintf(out, cap, "****");
        return;
    }
    snprintf(out, cap, "%.8s...%s", key, key + n - 4);
}
