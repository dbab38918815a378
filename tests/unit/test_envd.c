/*
 * Unit tests of envd's loop-free wire code: the Connect envelope codec, the protobuf-JSON
 * mapping of process.* / filesystem.* messages, base64, path resolution, and the
 * multipart/form-data parser (well-formed, malformed, truncated and oversized input).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <cmocka.h>
#include "common/common.h"
#include "envd/envd.h"

/* ---- envelopes ---- */

static void test_envd_envelope_roundtrip(void **state)
{
    json_t *msg = json_pack("{s:{s:{s:i}}}", "event", "start", "pid", 42);
    size_t n;
    uint8_t *frame = sg_envd_envelope_json(0, msg, &n);
    assert_non_null(frame);
    assert_int_equal(frame[0], 0);
    uint8_t flags;
    const uint8_t *body;
    size_t blen, consumed;
    assert_int_equal(sg_envd_envelope_decode(frame, n, 1024, &flags, &body, &blen, &consumed), 0);
    assert_int_equal(consumed, n);
    assert_int_equal(blen, n - 5);
    assert_memory_equal(body, "{\"event\":{\"start\":{\"pid\":42}}}", blen);
    free(frame);
    json_decref(msg);
}

static void test_envd_envelope_header_big_endian(void **state)
{
    uint8_t h[5];
    sg_envd_envelope_header(h, SG_ENVD_FLAG_END, 0x01020304);
    const uint8_t want[5] = {0x02, 0x01, 0x02, 0x03, 0x04};
    assert_memory_equal(h, want, 5);
}

static void test_envd_envelope_truncated(void **state)
{
    const uint8_t frame[] = {0, 0, 0, 0, 5, '{', '}'};
    uint8_t flags;
    const uint8_t *body;
    size_t blen, consumed;
    for (size_t n = 0; n < 5; n++) /* short header */
        assert_int_equal(sg_envd_envelope_decode(frame, n, 100, &flags, &body, &blen, &consumed),
                         SG_EPROTO);
    /* announces 5 bytes, carries 2 */
    assert_int_equal(sg_envd_envelope_decode(frame, sizeof(frame), 100, &flags, &body, &blen,
                                             &consumed),
                     SG_EPROTO);
}

static void test_envd_envelope_oversized_and_compressed(void **state)
{
    const uint8_t huge[] = {0, 0xff, 0xff, 0xff, 0xff};
    const uint8_t comp[] = {1, 0, 0, 0, 2, '{', '}'};
    uint8_t flags;
    const uint8_t *body;
    size_t blen, consumed;
    assert_int_equal(sg_envd_envelope_decode(huge, sizeof(huge), 1 << 20, &flags, &body, &blen,
                                             &consumed),
                     SG_ETOOBIG);
    assert_int_equal(sg_envd_envelope_decode(comp, sizeof(comp), 100, &flags, &body, &blen,
                                             &consumed),
                     SG_EINVAL);
}

static void test_envd_envelope_trailing_data_reported(void **state)
{
    const uint8_t two[] = {0, 0, 0, 0, 2, '{', '}', 2, 0, 0, 0, 2, '{', '}'};
    uint8_t flags;
    const uint8_t *body;
    size_t blen, consumed;
    assert_int_equal(sg_envd_envelope_decode(two, sizeof(two), 100, &flags, &body, &blen,
                                             &consumed),
                     0);
    assert_int_equal(consumed, 7); /* the caller sees there is more than one envelope */
    assert_int_equal(sg_envd_envelope_decode(two + 7, 7, 100, &flags, &body, &blen, &consumed), 0);
    assert_int_equal(flags, SG_ENVD_FLAG_END);
}

/* ---- codes, base64 ---- */

static void test_envd_codes(void **state)
{
    assert_string_equal(sg_envd_code_name(SG_ENVD_NOT_FOUND), "not_found");
    assert_int_equal(sg_envd_code_http(SG_ENVD_NOT_FOUND), 404);
    assert_int_equal(sg_envd_code_http(SG_ENVD_UNAUTHENTICATED), 401);
    assert_int_equal(sg_envd_code_http(SG_ENVD_ALREADY_EXISTS), 409);
    assert_int_equal(sg_envd_code_http(SG_ENVD_DEADLINE_EXCEEDED), 504);
    assert_string_equal(sg_envd_code_name((sg_envd_code_t)99), "unknown");
    assert_int_equal(sg_envd_code_from_errno(ENOENT), SG_ENVD_NOT_FOUND);
    assert_int_equal(sg_envd_code_from_errno(EACCES), SG_ENVD_PERMISSION_DENIED);
    assert_int_equal(sg_envd_code_from_errno(EEXIST), SG_ENVD_ALREADY_EXISTS);
    assert_int_equal(sg_envd_code_from_errno(ENOTDIR), SG_ENVD_INVALID_ARGUMENT);
}

static void test_envd_base64(void **state)
{
    char out[64];
    uint8_t dec[64];
    assert_int_equal(sg_envd_b64_encode((const uint8_t *)"hi\n", 3, out), 4);
    assert_string_equal(out, "aGkK");
    sg_envd_b64_encode((const uint8_t *)"ab", 2, out);
    assert_string_equal(out, "YWI=");
    sg_envd_b64_encode((const uint8_t *)"a", 1, out);
    assert_string_equal(out, "YQ==");
    assert_int_equal(sg_envd_b64_decode("YWI=", 4, dec), 2);
    assert_memory_equal(dec, "ab", 2);
    assert_int_equal(sg_envd_b64_decode("YWI", 3, dec), 2);   /* unpadded */
    assert_int_equal(sg_envd_b64_decode("-_8", 3, dec), 2);   /* URL-safe */
    assert_int_equal(sg_envd_b64_decode("Y", 1, dec), -1);    /* impossible length */
    assert_int_equal(sg_envd_b64_decode("Y!==", 4, dec), -1); /* bad character */
}

/* ---- process.* mapping ---- */

static json_t *parse(const char *s)
{
    json_error_t e;
    json_t *j = json_loads(s, JSON_ALLOW_NUL, &e);
    assert_non_null(j);
    return j;
}

static void test_envd_parse_start_sdk_shape(void **state)
{
    json_t *req = parse("{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-l\",\"-c\",\"echo hi\"],"
                        "\"envs\":{\"X\":\"1\"},\"cwd\":\"/tmp\"},\"stdin\":false,\"tag\":\"t\"}");
    sg_envd_start_t s;
    char err[128];
    assert_int_equal(sg_envd_parse_start(req, &s, err, sizeof(err)), 0);
    assert_string_equal(s.cmd, "/bin/bash");
    assert_int_equal(s.nargs, 3);
    assert_string_equal(s.args[2], "echo hi");
    assert_null(s.args[3]);
    assert_string_equal(s.cwd, "/tmp");
    assert_string_equal(s.tag, "t");
    assert_false(s.stdin_open);
    assert_false(s.pty);
    assert_string_equal(json_string_value(json_object_get(s.envs, "X")), "1");
    json_decref(req);
}

static void test_envd_parse_start_defaults_and_pty(void **state)
{
    json_t *req = parse("{\"process\":{\"cmd\":\"sh\"},\"pty\":{\"size\":{\"cols\":120,\"rows\":40}}}");
    sg_envd_start_t s;
    char err[128];
    assert_int_equal(sg_envd_parse_start(req, &s, err, sizeof(err)), 0);
    assert_true(s.stdin_open); /* absent means true (older SDKs) */
    assert_true(s.pty);
    assert_int_equal(s.cols, 120);
    assert_int_equal(s.rows, 40);
    assert_null(s.cwd);
    assert_int_equal(s.nargs, 0);
    json_decref(req);
}

static void test_envd_parse_start_rejects_bad_input(void **state)
{
    static const char *const bad[] = {
        "[]",
        "{}",
        "{\"process\":{}}",
        "{\"process\":{\"cmd\":\"\"}}",
        "{\"process\":{\"cmd\":5}}",
        "{\"process\":{\"cmd\":\"a\\u0000b\"}}",
        "{\"process\":{\"cmd\":\"sh\",\"args\":\"-c\"}}",
        "{\"process\":{\"cmd\":\"sh\",\"args\":[1]}}",
        "{\"process\":{\"cmd\":\"sh\",\"envs\":{\"A=B\":\"x\"}}}",
        "{\"process\":{\"cmd\":\"sh\",\"envs\":{\"A\":1}}}",
        "{\"process\":{\"cmd\":\"sh\",\"cwd\":7}}",
        "{\"process\":{\"cmd\":\"sh\"},\"stdin\":\"yes\"}",
        "{\"process\":{\"cmd\":\"sh\"},\"pty\":{\"size\":{\"cols\":-1}}}",
        "{\"process\":{\"cmd\":\"sh\"},\"pty\":{\"size\":{\"rows\":70000}}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *req = parse(bad[i]);
        sg_envd_start_t s;
        char err[128] = "";
        assert_int_equal(sg_envd_parse_start(req, &s, err, sizeof(err)), SG_EINVAL);
        assert_true(err[0] != '\0');
        json_decref(req);
    }
}

static void test_envd_parse_start_too_many_args(void **state)
{
    json_t *args = json_array();
    for (int i = 0; i <= SG_ENVD_MAX_ARGS; i++)
        json_array_append_new(args, json_string("x"));
    json_t *req = json_pack("{s:{s:s,s:o}}", "process", "cmd", "sh", "args", args);
    sg_envd_start_t *s = malloc(sizeof(*s));
    char err[128];
    assert_int_equal(sg_envd_parse_start(req, s, err, sizeof(err)), SG_EINVAL);
    free(s);
    json_decref(req);
}

static void test_envd_parse_selector_and_signal(void **state)
{
    uint32_t pid;
    const char *tag;
    int sig;
    json_t *j = parse("{\"pid\":77}");
    assert_int_equal(sg_envd_parse_selector(j, &pid, &tag), 0);
    assert_int_equal(pid, 77);
    json_decref(j);
    j = parse("{\"pid\":\"78\"}");
    assert_int_equal(sg_envd_parse_selector(j, &pid, &tag), 0);
    assert_int_equal(pid, 78);
    json_decref(j);
    j = parse("{\"tag\":\"web\"}");
    assert_int_equal(sg_envd_parse_selector(j, &pid, &tag), 0);
    assert_string_equal(tag, "web");
    json_decref(j);
    static const char *const bad[] = {"{}", "{\"pid\":0}", "{\"pid\":-3}", "{\"pid\":\"x\"}",
                                      "{\"tag\":\"\"}", "{\"pid\":99999999999}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        j = parse(bad[i]);
        assert_int_equal(sg_envd_parse_selector(j, &pid, &tag), SG_EINVAL);
        json_decref(j);
    }
    assert_int_equal(sg_envd_parse_selector(NULL, &pid, &tag), SG_EINVAL);
    j = json_string("SIGNAL_SIGKILL");
    assert_int_equal(sg_envd_parse_signal(j, &sig), 0);
    assert_int_equal(sig, SIGKILL);
    json_decref(j);
    j = json_integer(15);
    assert_int_equal(sg_envd_parse_signal(j, &sig), 0);
    assert_int_equal(sig, SIGTERM);
    json_decref(j);
    j = json_string("SIGNAL_UNSPECIFIED");
    assert_int_equal(sg_envd_parse_signal(j, &sig), SG_EINVAL);
    json_decref(j);
    j = json_integer(2);
    assert_int_equal(sg_envd_parse_signal(j, &sig), SG_EINVAL);
    json_decref(j);
}

static void assert_json(json_t *j, const char *want)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(s, want);
    free(s);
    json_decref(j);
}

static void test_envd_events(void **state)
{
    assert_json(sg_envd_event_start(4242), "{\"event\":{\"start\":{\"pid\":4242}}}");
    assert_json(sg_envd_event_data(SG_ENVD_OUT_STDERR, (const uint8_t *)"hi\n", 3),
                "{\"event\":{\"data\":{\"stderr\":\"aGkK\"}}}");
    assert_json(sg_envd_event_data(SG_ENVD_OUT_PTY, (const uint8_t *)"", 0),
                "{\"event\":{\"data\":{\"pty\":\"\"}}}");
    assert_json(sg_envd_event_keepalive(), "{\"event\":{\"keepalive\":{}}}");
    /* wait statuses as the kernel encodes them: exit code << 8, or the signal number */
    assert_json(sg_envd_event_end(0, NULL),
                "{\"event\":{\"end\":{\"exitCode\":0,\"exited\":true,\"status\":\"exit status 0\"}}}");
    assert_json(sg_envd_event_end(3 << 8, NULL),
                "{\"event\":{\"end\":{\"exitCode\":3,\"exited\":true,\"status\":\"exit status 3\"}}}");
    assert_json(sg_envd_event_end(SIGKILL, NULL),
                "{\"event\":{\"end\":{\"exitCode\":-1,\"exited\":false,\"status\":\"signal: killed\"}}}");
    assert_json(sg_envd_event_end(SIGTERM, "boom"),
                "{\"event\":{\"end\":{\"error\":\"boom\",\"exitCode\":-1,\"exited\":false,"
                "\"status\":\"signal: terminated\"}}}");
}

/* ---- filesystem.* mapping ---- */

static void test_envd_mode_string(void **state)
{
    char s[16];
    sg_envd_mode_string(S_IFREG | 0644, s);
    assert_string_equal(s, "-rw-r--r--");
    sg_envd_mode_string(S_IFDIR | 0755, s);
    assert_string_equal(s, "drwxr-xr-x");
    sg_envd_mode_string(S_IFDIR | S_ISVTX | 0777, s);
    assert_string_equal(s, "dtrwxrwxrwx");
    sg_envd_mode_string(S_IFLNK | 0777, s);
    assert_string_equal(s, "Lrwxrwxrwx");
    sg_envd_mode_string(S_IFREG | S_ISUID | 0755, s);
    assert_string_equal(s, "urwxr-xr-x");
}

static void test_envd_entry_json(void **state)
{
    sg_envd_entry_t e = {.name = "a.txt", .path = "/home/user/a.txt", .type = SG_ENVD_FT_FILE,
                         .size = 12, .mode = S_IFREG | 0644, .owner = "user", .group = "user",
                         .mtime_sec = 1800000000, .mtime_nsec = 5};
    assert_json(sg_envd_entry_json(&e),
                "{\"group\":\"user\",\"mode\":420,\"modifiedTime\":\"2027-01-15T08:00:00.000000005Z\","
                "\"name\":\"a.txt\",\"owner\":\"user\",\"path\":\"/home/user/a.txt\","
                "\"permissions\":\"-rw-r--r--\",\"size\":12,\"type\":\"FILE_TYPE_FILE\"}");
    e.type = SG_ENVD_FT_SYMLINK;
    e.symlink_target = "/etc/x";
    e.mtime_nsec = 0;
    json_t *j = sg_envd_entry_json(&e);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "FILE_TYPE_SYMLINK");
    assert_string_equal(json_string_value(json_object_get(j, "symlinkTarget")), "/etc/x");
    assert_string_equal(json_string_value(json_object_get(j, "modifiedTime")),
                        "2027-01-15T08:00:00Z");
    json_decref(j);
    assert_json(sg_envd_watch_event("d/f", SG_ENVD_EV_REMOVE),
                "{\"filesystem\":{\"name\":\"d/f\",\"type\":\"EVENT_TYPE_REMOVE\"}}");
}

static void test_envd_resolve_path(void **state)
{
    char out[64];
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"/tmp/a", "/tmp/a"},       {"a/b", "/home/user/a/b"}, {"~", "/home/user"},
        {"~/x", "/home/user/x"},    {"//a//b/", "/a/b"},       {"/a/./b/../c", "/a/c"},
        {"/../..", "/"},            {"..", "/home"},           {"~x", "/home/user/~x"},
        {".", "/home/user"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(sg_envd_resolve_path(cases[i].in, "/home/user", out, sizeof(out)), 0);
        assert_string_equal(out, cases[i].want);
    }
    assert_int_equal(sg_envd_resolve_path("", "/home/user", out, sizeof(out)), SG_EINVAL);
    char longp[200];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = '\0';
    assert_int_equal(sg_envd_resolve_path(longp, "/", out, sizeof(out)), SG_ETOOBIG);
}

/* ---- multipart ---- */

static int mp(const char *body, sg_envd_part_t *parts, size_t max, size_t *n)
{
    return sg_envd_multipart_parse((const uint8_t *)body, strlen(body), "XyZ", 3, parts, max, n);
}

static void test_envd_multipart_boundary(void **state)
{
    const char *b;
    size_t bl;
    const char *ct = "multipart/form-data; boundary=----formdata-undici-0123";
    assert_int_equal(sg_envd_multipart_boundary(ct, strlen(ct), &b, &bl), 0);
    assert_int_equal(bl, strlen("----formdata-undici-0123"));
    assert_memory_equal(b, "----formdata-undici-0123", bl);
    ct = "Multipart/Form-Data; charset=utf-8; boundary=\"a b\"";
    assert_int_equal(sg_envd_multipart_boundary(ct, strlen(ct), &b, &bl), 0);
    assert_memory_equal(b, "a b", 3);
    static const char *const bad[] = {"application/json", "multipart/form-data",
                                      "multipart/form-data; boundary=",
                                      "multipart/form-data; boundary=\"abc",
                                      "multipart/form-data; boundary=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sg_envd_multipart_boundary(bad[i], strlen(bad[i]), &b, &bl), SG_EINVAL);
}

static void test_envd_multipart_two_files(void **state)
{
    const char *body = "--XyZ\r\n"
                       "Content-Disposition: form-data; name=\"file\"; filename=\"/tmp/a.txt\"\r\n"
                       "Content-Type: application/octet-stream\r\n"
                       "\r\n"
                       "hello\r\n--not-a-boundary\r\n"
                       "\r\n--XyZ\r\n"
                       "content-disposition: form-data; name=\"file\"; filename=\"q%22uote%0A.txt\"\r\n"
                       "\r\n"
                       "\r\n--XyZ--\r\n";
    sg_envd_part_t parts[4];
    size_t n;
    assert_int_equal(mp(body, parts, 4, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(parts[0].name_len, 4);
    assert_memory_equal(parts[0].name, "file", 4);
    assert_string_equal(parts[0].filename, "/tmp/a.txt");
    assert_int_equal(parts[0].len, strlen("hello\r\n--not-a-boundary\r\n"));
    assert_memory_equal(parts[0].data, "hello\r\n--not-a-boundary\r\n", parts[0].len);
    assert_string_equal(parts[1].filename, "q\"uote\n.txt");
    assert_int_equal(parts[1].len, 0);
}

static void test_envd_multipart_preamble_and_lf(void **state)
{
    const char *body = "preamble text\n--XyZ\n"
                       "Content-Disposition: form-data; name=\"file\"; filename=\"x\"\n"
                       "\n"
                       "data\n--XyZ--";
    sg_envd_part_t parts[2];
    size_t n;
    assert_int_equal(mp(body, parts, 2, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(parts[0].len, 4);
    assert_memory_equal(parts[0].data, "data", 4);
}

static void test_envd_multipart_binary_data(void **state)
{
    uint8_t body[256];
    const char *head = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n\r\n";
    const char *tail = "\r\n--XyZ--\r\n";
    size_t o = 0;
    memcpy(body, head, strlen(head));
    o += strlen(head);
    for (int i = 0; i < 64; i++)
        body[o++] = (uint8_t)(i * 7); /* includes NUL, CR, LF and '-' bytes */
    memcpy(body + o, tail, strlen(tail));
    o += strlen(tail);
    sg_envd_part_t parts[1];
    size_t n;
    assert_int_equal(sg_envd_multipart_parse(body, o, "XyZ", 3, parts, 1, &n), 0);
    assert_int_equal(parts[0].len, 64);
    assert_memory_equal(parts[0].data, body + strlen(head), 64);
}

static void test_envd_multipart_malformed(void **state)
{
    static const char *const bad[] = {
        "",                                                    /* empty */
        "no boundary at all",                                  /* no delimiter */
        "--XyZ--\r\n",                                         /* no parts */
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\ndata", /* truncated */
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n",        /* no body */
        "--XyZ\r\n\r\ndata\r\n--XyZ--",                        /* no headers */
        "--XyZ\r\nbroken header line\r\n\r\nx\r\n--XyZ--",     /* header without colon */
        "--XyZ\r\nContent-Disposition: attachment\r\n\r\nx\r\n--XyZ--", /* not form-data */
        "--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--",       /* no disposition */
        "--XyZ\r\nContent-Disposition: form-data; name=\"fi\r\n\r\nx\r\n--XyZ--", /* open quote */
        "--XyZjunk\r\n",                                       /* junk after the delimiter */
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\\",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sg_envd_part_t parts[4];
        size_t n;
        int r = mp(bad[i], parts, 4, &n);
        if (r != SG_EPROTO)
            fail_msg("case %zu: got %d", i, r);
    }
}

static void test_envd_multipart_oversized(void **state)
{
    /* too many parts */
    char body[4096] = "";
    for (int i = 0; i < 5; i++)
        strcat(body, "--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n");
    strcat(body, "--XyZ--\r\n");
    sg_envd_part_t parts[4];
    size_t n;
    assert_int_equal(mp(body, parts, 4, &n), SG_ETOOBIG);
    /* part headers over 8 KB */
    size_t big = 10000;
    char *b = malloc(big + 200);
    int o = sprintf(b, "--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Pad: ");
    memset(b + o, 'p', big);
    o += (int)big;
    o += sprintf(b + o, "\r\n\r\nx\r\n--XyZ--\r\n");
    assert_int_equal(sg_envd_multipart_parse((uint8_t *)b, (size_t)o, "XyZ", 3, parts, 4, &n),
                     SG_ETOOBIG);
    free(b);
    /* a filename longer than the part's buffer is an error, not a silent cut */
    size_t fl = 5000;
    b = malloc(fl + 200);
    o = sprintf(b, "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"");
    memset(b + o, 'f', fl);
    o += (int)fl;
    o += sprintf(b + o, "\"\r\n\r\nx\r\n--XyZ--\r\n");
    assert_int_equal(sg_envd_multipart_parse((uint8_t *)b, (size_t)o, "XyZ", 3, parts, 4, &n),
                     SG_EPROTO);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_envd_envelope_roundtrip),
        cmocka_unit_test(test_envd_envelope_header_big_endian),
        cmocka_unit_test(test_envd_envelope_truncated),
        cmocka_unit_test(test_envd_envelope_oversized_and_compressed),
        cmocka_unit_test(test_envd_envelope_trailing_data_reported),
        cmocka_unit_test(test_envd_codes),
        cmocka_unit_test(test_envd_base64),
        cmocka_unit_test(test_envd_parse_start_sdk_shape),
        cmocka_unit_test(test_envd_parse_start_defaults_and_pty),
        cmocka_unit_test(test_envd_parse_start_rejects_bad_input),
        cmocka_unit_test(test_envd_parse_start_too_many_args),
        cmocka_unit_test(test_envd_parse_selector_and_signal),
        cmocka_unit_test(test_envd_events),
        cmocka_unit_test(test_envd_mode_string),
        cmocka_unit_test(test_envd_entry_json),
        cmocka_unit_test(test_envd_resolve_path),
        cmocka_unit_test(test_envd_multipart_boundary),
        cmocka_unit_test(test_envd_multipart_two_files),
        cmocka_unit_test(test_envd_multipart_preamble_and_lf),
        cmocka_unit_test(test_envd_multipart_binary_data),
        cmocka_unit_test(test_envd_multipart_malformed),
        cmocka_unit_test(test_envd_multipart_oversized),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
