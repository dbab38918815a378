#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>
#include "auth/auth.h"

static void test_auth_key_generate_format(void **state)
{
    char a[SG_AUTH_KEY_LEN + 1], b[SG_AUTH_KEY_LEN + 1];
    uint8_t raw[SG_AUTH_KEY_RAW];
    assert_int_equal(sg_auth_key_generate(a), 0);
    assert_int_equal(sg_auth_key_generate(b), 0);
    assert_int_equal(strlen(a), 44);
    assert_memory_equal(a, "e2b_", 4);
    for (int i = 4; i < 44; i++)
        assert_true((a[i] >= '0' && a[i] <= '9') || (a[i] >= 'a' && a[i] <= 'f'));
    assert_string_not_equal(a, b);
    assert_int_equal(sg_auth_key_parse(a, strlen(a), raw), 0);
}

static void test_auth_key_parse_rejects(void **state)
{
    uint8_t raw[SG_AUTH_KEY_RAW];
    const char *good = "e2b_00112233445566778899aabbccddeeff00112233";
    assert_int_equal(sg_auth_key_parse(good, 44, raw), 0);
    assert_int_equal(raw[0], 0x00);
    assert_int_equal(raw[19], 0x33);
    assert_int_equal(sg_auth_key_parse(good, 43, raw), SG_EINVAL);           /* short */
    assert_int_equal(sg_auth_key_parse("e2c_00112233445566778899aabbccddeeff00112233", 44, raw),
                     SG_EINVAL);                                                /* prefix */
    assert_int_equal(sg_auth_key_parse("e2b_00112233445566778899AABBCCDDEEFF00112233", 44, raw),
                     SG_EINVAL);                                                /* upper case */
    assert_int_equal(sg_auth_key_parse("e2b_0011223344556677889 aabbccddeeff00112233", 44, raw),
                     SG_EINVAL);                                                /* space */
    assert_int_equal(sg_auth_key_parse(NULL, 0, raw), SG_EINVAL);
    char with_nul[45];
    memcpy(with_nul, good, 45);
    with_nul[10] = '\0';
    assert_int_equal(sg_auth_key_parse(with_nul, 44, raw), SG_EINVAL);         /* embedded NUL */
}

static void test_auth_key_hash_is_sha256_of_raw(void **state)
{
    uint8_t raw[SG_AUTH_KEY_RAW] = {0};
    char hex[65];
    sg_auth_key_hash(raw, hex);
    /* SHA-256 of 20 zero bytes */
    assert_string_equal(hex, "de47c9b27eb8d300dbb5f2c353e632c393262cf06340c4fa7f1b40c4cbd36f90");
}

static void test_auth_key_mask(void **state)
{
    char m[32];
    sg_auth_key_mask("e2b_00112233445566778899aabbccddeeff00112233", m, sizeof(m));
    assert_string_equal(m, "e2b_0011...2233");
    sg_auth_key_mask("short", m, sizeof(m));
    assert_string_equal(m, "****");
}

static void test_auth_http_status(void **state)
{
    const char *msg;
    assert_int_equal(sg_auth_http_status(SG_AUTH_MISSING, &msg), 401);
    assert_int_equal(sg_auth_http_status(SG_AUTH_BADFORMAT, &msg), 401);
    assert_string_equal(msg, "Invalid API key format");
    assert_int_equal(sg_auth_http_status(SG_AUTH_BLOCKED, &msg), 403);
    assert_int_equal(sg_auth_http_status(SG_AUTH_THROTTLED, &msg), 429);
    assert_int_equal(sg_auth_http_status(SG_AUTH_UNAVAILABLE, &msg), 503);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auth_key_generate_format),
        cmocka_unit_test(test_auth_key_parse_rejects),
        cmocka_unit_test(test_auth_key_hash_is_sha256_of_raw),
        cmocka_unit_test(test_auth_key_mask),
        cmocka_unit_test(test_auth_http_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
