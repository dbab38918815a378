#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "common/common.h"

static void test_common_strerror(void **state)
{
    assert_string_equal(sg_strerror(SG_ENOTFOUND), "not found");
    assert_string_equal(sg_strerror(0), "ok");
    assert_string_equal(sg_strerror(-999), "unknown error");
}

static void test_common_rand_distinct(void **state)
{
    uint8_t a[32], b[32], big[2000];
    assert_int_equal(sg_rand_bytes(a, sizeof(a)), 0);
    assert_int_equal(sg_rand_bytes(b, sizeof(b)), 0);
    assert_memory_not_equal(a, b, sizeof(a));
    assert_int_equal(sg_rand_bytes(big, sizeof(big)), 0); /* above the DRBG's per-call cap */
}

static void test_common_sha256_vector(void **state)
{
    uint8_t out[32];
    char hex[65];
    sg_sha256("abc", 3, out);
    sg_hex_encode(out, 32, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_common_hmac_vector(void **state)
{
    /* RFC 4231 test case 2 */
    uint8_t out[32];
    char hex[65];
    sg_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, out);
    sg_hex_encode(out, 32, hex);
    assert_string_equal(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

static void test_common_ct_compare(void **state)
{
    assert_true(sg_ct_equal("abcd", "abcd", 4));
    assert_false(sg_ct_equal("abcd", "abce", 4));
    assert_true(sg_ct_streq("token", "token"));
    assert_false(sg_ct_streq("token", "token2"));
    assert_false(sg_ct_streq("token2", "token"));
    assert_false(sg_ct_streq("", "x"));
    assert_true(sg_ct_streq("", ""));
}

static void test_common_hex_roundtrip(void **state)
{
    uint8_t in[4] = {0x00, 0xab, 0x7f, 0xff}, out[4];
    char hex[9];
    sg_hex_encode(in, 4, hex);
    assert_string_equal(hex, "00ab7fff");
    assert_int_equal(sg_hex_decode("00AB7fff", 8, out), 0);
    assert_memory_equal(in, out, 4);
    assert_int_equal(sg_hex_decode("00ab7ff", 7, out), SG_EINVAL);
    assert_int_equal(sg_hex_decode("zzab7fff", 8, out), SG_EINVAL);
}

static void test_common_log_logfmt(void **state)
{
    char buf[512];
    sg_log_field_t f[] = {SG_LS("path", "/a b"), SG_LI("status", 404), SG_LS("q", "x\"y"),
                          SG_LS("empty", NULL), SG_LD("ms", 1.5)};
    sg_log_format_line(buf, sizeof(buf), SG_LOG_LOGFMT, 1700000000123LL, SG_LOG_INFO, "access",
                       f, 5);
    assert_string_equal(buf, "ts=2023-11-14T22:13:20.123Z level=info msg=access path=\"/a b\" "
                             "status=404 q=\"x\\\"y\" empty=\"\" ms=1.500\n");
}

static void test_common_log_json(void **state)
{
    char buf[512];
    sg_log_field_t f[] = {SG_LS("k", "a\nb\x01"), SG_LI("n", -3)};
    sg_log_format_line(buf, sizeof(buf), SG_LOG_JSON, 0, SG_LOG_ERROR, "m\"x", f, 2);
    assert_string_equal(buf, "{\"ts\":\"1970-01-01T00:00:00.000Z\",\"level\":\"error\","
                             "\"msg\":\"m\\\"x\",\"k\":\"a\\nb\\u0001\",\"n\":-3}\n");
}

static void test_common_log_truncates(void **state)
{
    char big[300], buf[64];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    sg_log_field_t f[] = {SG_LS("v", big)};
    size_t n = sg_log_format_line(buf, sizeof(buf), SG_LOG_LOGFMT, 0, SG_LOG_INFO, "m", f, 1);
    assert_int_equal(n, strlen(buf));
    assert_true(n < sizeof(buf));
    assert_string_equal(buf + n - 4, "...\n");
}

static void test_common_log_parse(void **state)
{
    sg_log_level_t l;
    sg_log_format_t f;
    assert_int_equal(sg_log_level_parse("warn", &l), 0);
    assert_int_equal(l, SG_LOG_WARN);
    assert_int_equal(sg_log_level_parse("verbose", &l), SG_EINVAL);
    assert_int_equal(sg_log_format_parse("json", &f), 0);
    assert_int_equal(f, SG_LOG_JSON);
    assert_int_equal(sg_log_format_parse("xml", &f), SG_EINVAL);
}

/* Batched lines reach the stream only at a flush (or when the batch is full), whole and in order. */
static void test_common_log_batch(void **state)
{
    FILE *f = tmpfile();
    assert_non_null(f);
    sg_log_setup(SG_LOG_INFO, SG_LOG_LOGFMT, f);
    assert_int_equal(sg_log_batch_start(), 0);
    sg_log(SG_LOG_INFO, "first", SG_LI("n", 1));
    sg_log(SG_LOG_INFO, "second", SG_LI("n", 2));
    assert_int_equal(ftell(f), 0);
    sg_log_batch_flush();
    long after2 = ftell(f);
    assert_true(after2 > 0);
    /* 64 KiB of lines: the batch writes early instead of growing */
    char pad[301];
    memset(pad, 'x', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    for (int i = 0; i < 200; i++)
        sg_log(SG_LOG_INFO, "filler", SG_LS("pad", pad));
    assert_true(ftell(f) > after2);
    sg_log_batch_stop();
    sg_log_msg(SG_LOG_INFO, "unbatched");
    char buf[128 * 1024];
    rewind(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    char *first = strstr(buf, "msg=first n=1\n"), *second = strstr(buf, "msg=second n=2\n");
    assert_non_null(first);
    assert_non_null(second);
    assert_true(first < second);
    size_t lines = 0;
    for (char *p = buf; (p = strstr(p, "msg=filler pad=")) != NULL; p++)
        lines++;
    assert_int_equal(lines, 200);
    assert_non_null(strstr(buf, "msg=unbatched\n"));
    sg_log_setup(SG_LOG_INFO, SG_LOG_LOGFMT, NULL);
    fclose(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_common_strerror),     cmocka_unit_test(test_common_rand_distinct),
        cmocka_unit_test(test_common_sha256_vector), cmocka_unit_test(test_common_hmac_vector),
        cmocka_unit_test(test_common_ct_compare),   cmocka_unit_test(test_common_hex_roundtrip),
        cmocka_unit_test(test_common_log_logfmt),   cmocka_unit_test(test_common_log_json),
        cmocka_unit_test(test_common_log_truncates), cmocka_unit_test(test_common_log_parse),
        cmocka_unit_test(test_common_log_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
