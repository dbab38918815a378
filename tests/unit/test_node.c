/* Unit tests of the node agent's pure parts: create-request validation, the address pool, the
 * proxy's request-head rewrite, host:port parsing and the OCI config. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>
#include "common/common.h"
#include "node/internal.h"

#define TOK "node-token-0123456789"

static int parse(const char *body, sg__create_req_t *r, char *err)
{
    return sg__create_req_parse(body, strlen(body), r, err, 256);
}

static void test_node_create_req_valid(void **state)
{
    sg__create_req_t r;
    char err[256];
    assert_int_equal(parse("{\"sandboxID\":\"abc123\",\"teamID\":\"t\",\"templateID\":\"base\","
                           "\"vcpu\":2,\"memoryMB\":512,\"diskMB\":1024,\"envVars\":{\"A\":\"1\"},"
                           "\"metadata\":{\"k\":\"v\"},\"endAtMs\":1764139200000,"
                           "\"envdAccessToken\":\"tok\",\"allowInternetAccess\":false}",
                           &r, err),
                     0);
    assert_string_equal(r.id, "abc123");
    assert_string_equal(r.tmpl, "base");
    assert_int_equal(r.vcpu, 2);
    assert_int_equal(r.memory_mb, 512);
    assert_int_equal(r.disk_mb, 1024);
    assert_true(r.end_ms == 1764139200000LL);
    assert_string_equal(r.token, "tok");
    assert_false(r.internet);
    assert_string_equal(json_string_value(json_object_get(r.env, "A")), "1");
    sg__create_req_clear(&r);
    /* null token, missing optional fields */
    assert_int_equal(parse("{\"sandboxID\":\"x\",\"templateID\":\"b-1_X\",\"vcpu\":1,"
                           "\"memoryMB\":64,\"endAtMs\":1,\"envdAccessToken\":null}", &r, err),
                     0);
    assert_null(r.token);
    assert_true(r.internet);
    assert_int_equal(json_object_size(r.env), 0);
    sg__create_req_clear(&r);
}

static void test_node_create_req_invalid(void **state)
{
    static const char *bad[] = {
        "",
        "[]",
        "{\"sandboxID\":\"ABC\",\"templateID\":\"base\",\"vcpu\":1,\"memoryMB\":64,\"endAtMs\":1}",
        "{\"sandboxID\":\"a/b\",\"templateID\":\"base\",\"vcpu\":1,\"memoryMB\":64,\"endAtMs\":1}",
        "{\"sandboxID\":\"abc\",\"templateID\":\"../x\",\"vcpu\":1,\"memoryMB\":64,\"endAtMs\":1}",
        "{\"sandboxID\":\"abc\",\"templateID\":\"base\",\"vcpu\":0,\"memoryMB\":64,\"endAtMs\":1}",
        "{\"sandboxID\":\"abc\",\"templateID\":\"base\",\"vcpu\":65,\"memoryMB\":64,\"endAtMs\":1}",
        "{\"sandboxID\":\"abc\",\"templateID\":\"base\",\"vcpu\":1,\"memoryMB\":63,\"endAtMs\":1}",
        "{\"sandboxID\":\"abc\",\"templateID\":\"base\",\"vcpu\":1.5,\"memoryMB\":64,\"endAtMs\":1}",
        "{\"sandboxID\":\"abc\",\"templateID\":\"base\",\"vcpu\":1,\"memoryMB\":64}",
        "{\"sandboxID\":\"abc\",\"templateID\":\"base\",\"vcpu\":1,\"memoryMB\":64,\"endAtMs\":1,"
        "\"envVars\":{\"A=B\":\"x\"}}",
        "{\"sandboxID\":\"abc\",\"templateID\":\"base\",\"vcpu\":1,\"memoryMB\":64,\"endAtMs\":1,"
        "\"envVars\":{\"A\":1}}",
        "{\"sandboxID\":\"abc\",\"templateID\":\"base\",\"vcpu\":1,\"memoryMB\":64,\"endAtMs\":1,"
        "\"envdAccessToken\":5}",
        "{\"sandboxID\":\"abc\",\"templateID\":\"base\",\"vcpu\":1,\"memoryMB\":64,\"endAtMs\":1,"
        "\"allowInternetAccess\":\"yes\"}",
        "{\"sandboxID\":\"abc\",\"sandboxID\":\"abd\",\"templateID\":\"base\",\"vcpu\":1,"
        "\"memoryMB\":64,\"endAtMs\":1}",
        "{\"sandboxID\":\"a234567890123456789012345678901234567890123456789012345678901234\","
        "\"templateID\":\"base\",\"vcpu\":1,\"memoryMB\":64,\"endAtMs\":1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sg__create_req_t r;
        char err[256] = "";
        assert_int_equal(parse(bad[i], &r, err), SG_EINVAL);
        assert_true(err[0] != '\0');
        assert_null(r.env);
        assert_null(r.token);
    }
    /* 257 env vars: refused */
    json_t *o = json_pack("{s:s,s:s,s:i,s:i,s:i}", "sandboxID", "abc", "templateID", "base",
                          "vcpu", 1, "memoryMB", 64, "endAtMs", 1);
    json_t *env = json_object();
    for (int i = 0; i < 257; i++) {
        char k[16];
        snprintf(k, sizeof(k), "K%d", i);
        json_object_set_new(env, k, json_string("v"));
    }
    json_object_set_new(o, "envVars", env);
    char *s = json_dumps(o, 0);
    sg__create_req_t r;
    char err[256];
    assert_int_equal(parse(s, &r, err), SG_EINVAL);
    free(s);
    json_decref(o);
}

static void test_node_addrpool(void **state)
{
    sg__addrpool_t p;
    assert_int_equal(sg__addrpool_init(&p, "10.11.0.0/29"), 0); /* 8 slots: 2..6 usable */
    int got[5];
    for (int i = 0; i < 5; i++) {
        got[i] = sg__addrpool_alloc(&p);
        assert_true(got[i] >= 2 && got[i] <= 6);
        for (int j = 0; j < i; j++)
            assert_int_not_equal(got[i], got[j]);
    }
    assert_int_equal(sg__addrpool_alloc(&p), SG_ENOROOM);
    sg__addrpool_release(&p, (uint32_t)got[2]);
    assert_int_equal(sg__addrpool_alloc(&p), got[2]);
    assert_int_equal(sg__addrpool_take(&p, (uint32_t)got[0]), SG_EEXISTS);
    assert_int_equal(sg__addrpool_take(&p, 1), SG_EINVAL); /* the bridge */
    assert_int_equal(sg__addrpool_take(&p, 7), SG_EINVAL); /* broadcast */
    assert_int_equal(sg__addrpool_index(&p, "10.11.0.5"), 5);
    assert_int_equal(sg__addrpool_index(&p, "10.11.1.5"), SG_EINVAL);
    assert_int_equal(sg__addrpool_index(&p, "nonsense"), SG_EINVAL);
    assert_true(sg__addrpool_addr(&p, 5) == 0x0a0b0005u);
    sg__addrpool_free(&p);
    /* Round robin: a freed address is not reused at once while others are free. */
    assert_int_equal(sg__addrpool_init(&p, "10.11.0.0/16"), 0);
    int a = sg__addrpool_alloc(&p);
    sg__addrpool_release(&p, (uint32_t)a);
    assert_int_not_equal(sg__addrpool_alloc(&p), a);
    sg__addrpool_free(&p);
    assert_int_equal(sg__addrpool_init(&p, "10.11.0.0"), SG_EINVAL);
    assert_int_equal(sg__addrpool_init(&p, "10.11.0.0/30"), SG_EINVAL);
    assert_int_equal(sg__addrpool_init(&p, "x/16"), SG_EINVAL);
}

static int head(const char *req, sg__proxy_head_t *h)
{
    return sg__proxy_parse_head(req, strlen(req), TOK, h);
}

static void test_node_proxy_head(void **state)
{
    sg__proxy_head_t h;
    const char *req = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Sandgate-Node-Token: " TOK "\r\n"
                      "x-sandgate-sandbox-id: abc1\r\nX-Sandgate-Sandbox-Port: 8000\r\n"
                      "Connection: keep-alive\r\nAuthorization: Basic dTo=\r\n\r\nBODY";
    assert_int_equal(head(req, &h), 1);
    assert_int_equal(h.status, 0);
    assert_string_equal(h.sandbox, "abc1");
    assert_int_equal(h.port, 8000);
    assert_false(h.upgrade);
    assert_int_equal(h.head_len, strlen(req) - 4);
    char *out = strndup(h.out, h.out_len);
    assert_non_null(strstr(out, "GET /a?b=1 HTTP/1.1\r\n"));
    assert_non_null(strstr(out, "Host: x\r\n"));
    assert_non_null(strstr(out, "Authorization: Basic dTo=\r\n"));
    /* a keep-alive request asks nothing of the sandbox (HTTP/1.1 keeps its connection open) */
    assert_true(h.keepalive);
    assert_null(strcasestr(out, "connection:"));
    assert_null(strcasestr(out, "sandgate"));
    assert_null(strstr(out, "keep-alive"));
    assert_true(strlen(out) > 4 && strcmp(out + strlen(out) - 4, "\r\n\r\n") == 0);
    free(out);
    free(h.out);
    /* one that cannot be followed by another asks the sandbox to close */
    assert_int_equal(head("GET / HTTP/1.1\r\nX-Sandgate-Node-Token: " TOK "\r\n"
                          "X-Sandgate-Sandbox-Id: abc1\r\nX-Sandgate-Sandbox-Port: 8000\r\n"
                          "Connection: close\r\n\r\n", &h), 1);
    assert_false(h.keepalive);
    out = strndup(h.out, h.out_len);
    assert_non_null(strstr(out, "Connection: close\r\n"));
    free(out);
    free(h.out);
    /* the sandbox's answer: may its connection carry another request? */
    static const char *const keep[] = {"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                                       "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"};
    static const char *const no[] = {"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                                     "HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n",
                                     "HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\n\r\n",
                                     "garbage\r\n\r\n", "HTTP/1.1 200 OK\r\n"};
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
        assert_true(sg__proxy_response_keepalive(keep[i], strlen(keep[i])));
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        assert_false(sg__proxy_response_keepalive(no[i], strlen(no[i])));

    /* Incomplete head */
    assert_int_equal(sg__proxy_parse_head(req, 20, TOK, &h), 0);
    /* Wrong / missing token: 401 before anything else */
    assert_int_equal(head("GET / HTTP/1.1\r\nX-Sandgate-Node-Token: nope\r\n"
                          "X-Sandgate-Sandbox-Id: abc\r\nX-Sandgate-Sandbox-Port: 1\r\n\r\n", &h), 1);
    assert_int_equal(h.status, 401);
    assert_int_equal(head("GET / HTTP/1.1\r\nX-Sandgate-Sandbox-Id: abc\r\n\r\n", &h), 1);
    assert_int_equal(h.status, 401);
    /* Bad sandbox id / port */
    static const char *bad[] = {
        "X-Sandgate-Sandbox-Id: ABC\r\nX-Sandgate-Sandbox-Port: 80\r\n",
        "X-Sandgate-Sandbox-Port: 80\r\n",
        "X-Sandgate-Sandbox-Id: abc\r\n",
        "X-Sandgate-Sandbox-Id: abc\r\nX-Sandgate-Sandbox-Port: 0\r\n",
        "X-Sandgate-Sandbox-Id: abc\r\nX-Sandgate-Sandbox-Port: 65536\r\n",
        "X-Sandgate-Sandbox-Id: abc\r\nX-Sandgate-Sandbox-Port: 8a\r\n",
        "X-Sandgate-Sandbox-Id: abc\r\nX-Sandgate-Sandbox-Port: 80\r\nX-Sandgate-Sandbox-Port: 81\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char buf[512];
        snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nX-Sandgate-Node-Token: " TOK "\r\n%s\r\n", bad[i]);
        assert_int_equal(head(buf, &h), 1);
        assert_int_equal(h.status, 400);
        assert_null(h.out);
    }
    /* Malformed */
    assert_int_equal(head("GARBAGE\r\n\r\n", &h), -1);
    assert_int_equal(h.status, 400);
    /* Health without sandbox headers */
    assert_int_equal(head("GET /health HTTP/1.1\r\nHost: n\r\n\r\n", &h), 1);
    assert_true(h.health);
    /* WebSocket upgrade: Connection/Upgrade kept */
    assert_int_equal(head("GET /ws HTTP/1.1\r\nX-Sandgate-Node-Token: " TOK "\r\n"
                          "X-Sandgate-Sandbox-Id: abc\r\nX-Sandgate-Sandbox-Port: 49983\r\n"
                          "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", &h), 1);
    assert_int_equal(h.status, 0);
    assert_true(h.upgrade);
    out = strndup(h.out, h.out_len);
    assert_non_null(strstr(out, "Connection: Upgrade\r\n"));
    assert_non_null(strstr(out, "Upgrade: websocket\r\n"));
    assert_null(strstr(out, "Connection: close"));
    free(out);
    free(h.out);
}

static void test_node_proxy_response(void **state)
{
    char *out;
    size_t out_len, head_len;
    int status;
    const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
                       "Keep-Alive: timeout=5\r\n\r\nhello";
    assert_int_equal(sg__proxy_rewrite_response(resp, strlen(resp), &out, &out_len, &head_len,
                                                &status), 1);
    assert_int_equal(status, 200);
    assert_int_equal(head_len, strlen(resp) - 5);
    char *o = strndup(out, out_len);
    assert_string_equal(o, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n");
    free(o);
    free(out);
    /* 101 passes unchanged (minus nothing) */
    const char *up = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    assert_int_equal(sg__proxy_rewrite_response(up, strlen(up), &out, &out_len, &head_len, &status), 1);
    assert_int_equal(status, 101);
    o = strndup(out, out_len);
    assert_string_equal(o, up);
    free(o);
    free(out);
    assert_int_equal(sg__proxy_rewrite_response(resp, 10, &out, &out_len, &head_len, &status), 0);
    assert_int_equal(sg__proxy_rewrite_response("NOT HTTP\r\n\r\n", 14, &out, &out_len, &head_len,
                                                &status), -1);
}

/* Keep-alive framing of requests: only HTTP/1.1 with one valid Content-Length (or none). */
static void test_node_proxy_head_keepalive(void **state)
{
    sg__proxy_head_t h;
#define KA_HEAD(line, extra) line "\r\nX-Sandgate-Node-Token: " TOK "\r\nX-Sandgate-Sandbox-Id: abc\r\n" \
                             "X-Sandgate-Sandbox-Port: 80\r\n" extra "\r\n"
    assert_int_equal(head(KA_HEAD("GET / HTTP/1.1", ""), &h), 1);
    assert_true(h.keepalive);
    assert_int_equal(h.body_len, 0);
    assert_false(h.is_head);
    free(h.out);
    assert_int_equal(head(KA_HEAD("POST / HTTP/1.1", "Content-Length: 1234\r\nConnection: keep-alive\r\n"), &h), 1);
    assert_true(h.keepalive);
    assert_int_equal(h.body_len, 1234);
    free(h.out);
    assert_int_equal(head(KA_HEAD("HEAD / HTTP/1.1", ""), &h), 1);
    assert_true(h.keepalive);
    assert_true(h.is_head);
    free(h.out);
    static const char *no[] = {
        KA_HEAD("GET / HTTP/1.0", ""),
        KA_HEAD("GET / HTTP/1.1", "Connection: close\r\n"),
        KA_HEAD("GET / HTTP/1.1", "Connection: keep-alive, Close\r\n"),
        KA_HEAD("POST / HTTP/1.1", "Transfer-Encoding: chunked\r\n"),
        KA_HEAD("POST / HTTP/1.1", "Content-Length: 5\r\nContent-Length: 5\r\n"),
        KA_HEAD("POST / HTTP/1.1", "Content-Length: -5\r\n"),
        KA_HEAD("POST / HTTP/1.1", "Content-Length: 5x\r\n"),
        KA_HEAD("POST / HTTP/1.1", "Content-Length: 1234567890123456789\r\n"),
        KA_HEAD("GET / HTTP/1.1", "Upgrade: websocket\r\n"),
        KA_HEAD("GET / HTTP/1.1", "Connection: Upgrade\r\nUpgrade: websocket\r\n"),
    };
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        assert_int_equal(head(no[i], &h), 1);
        assert_int_equal(h.status, 0);
        assert_false(h.keepalive);
        assert_int_equal(h.body_len, 0);
        free(h.out);
    }
#undef KA_HEAD
}

/* Keep-alive framing of responses: framed ones lose "Connection: close", others keep it. */
static void test_node_proxy_response_keepalive(void **state)
{
    char *out;
    size_t out_len, head_len;
    int status;
    long long body;
    struct {
        const char *resp;
        bool is_head;
        long long body;
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n", false, 5},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, 0},
        {"HTTP/1.1 204 No Content\r\n\r\n", false, 0},
        {"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false, 0},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, -1},
        {"HTTP/1.1 200 OK\r\n\r\n", false, -1},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", false, -1},
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false, -1},
        {"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false, -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *r = cases[i].resp;
        assert_int_equal(sg__proxy_rewrite_response_ka(r, strlen(r), true, cases[i].is_head, &out,
                                                       &out_len, &head_len, &status, &body), 1);
        assert_int_equal(body, cases[i].body);
        char *o = strndup(out, out_len);
        assert_null(strcasestr(o, "keep-alive"));
        if (cases[i].body >= 0)
            assert_null(strstr(o, "Connection: close"));
        else
            assert_non_null(strstr(o, "Connection: close\r\n\r\n"));
        free(o);
        free(out);
        /* without keep-alive: always close, no framing reported */
        assert_int_equal(sg__proxy_rewrite_response_ka(r, strlen(r), false, cases[i].is_head, &out,
                                                       &out_len, &head_len, &status, &body), 1);
        assert_int_equal(body, -1);
        assert_non_null(strstr(out, "Connection: close\r\n\r\n"));
        free(out);
    }
    /* 1xx heads are not final: unchanged, no framing */
    const char *cont = "HTTP/1.1 100 Continue\r\n\r\n";
    assert_int_equal(sg__proxy_rewrite_response_ka(cont, strlen(cont), true, false, &out, &out_len,
                                                   &head_len, &status, &body), 1);
    assert_int_equal(body, -1);
    assert_int_equal(out_len, strlen(cont));
    free(out);
}

static void test_node_hostport(void **state)
{
    struct sockaddr_storage sa;
    assert_int_equal(sg__parse_hostport("0.0.0.0:7070", &sa), 0);
    assert_int_equal(sa.ss_family, AF_INET);
    assert_int_equal(sg__parse_hostport("[::1]:7070", &sa), 0);
    assert_int_equal(sa.ss_family, AF_INET6);
    assert_int_equal(sg__parse_hostport("7070", &sa), SG_EINVAL);
    assert_int_equal(sg__parse_hostport("host:", &sa), SG_EINVAL);
    assert_int_equal(sg__parse_hostport("1.2.3.4:70000", &sa), SG_EINVAL);
    assert_int_equal(sg__parse_hostport("name.example:80", &sa), SG_EINVAL);
}

static void test_node_oci_config(void **state)
{
    sg__node_t n;
    memset(&n, 0, sizeof(n));
    n.envd_path = "/opt/envd-bundle";
    snprintf(n.cgroup_parent, sizeof(n.cgroup_parent), "/sandgate/node-1");
    sg__sbx_t s;
    memset(&s, 0, sizeof(s));
    snprintf(s.id, sizeof(s.id), "abc");
    snprintf(s.cid, sizeof(s.cid), "w-0123");
    s.vcpu = 2;
    s.memory_mb = 512;
    json_t *c = sg__oci_config(&n, &s);
    assert_non_null(c);
    assert_string_equal(json_string_value(json_object_get(c, "hostname")), "abc");
    json_t *p = json_object_get(c, "process");
    json_t *args = json_object_get(p, "args");
    assert_string_equal(json_string_value(json_array_get(args, 0)), "/opt/sandgate/sandgate-envd");
    assert_string_equal(json_string_value(json_array_get(args, 3)), "--boot-file");
    /* env: the defaults only (the request's vars and token come in the boot file) */
    char *envs = json_dumps(json_object_get(p, "env"), 0);
    assert_non_null(strstr(envs, "\"PATH=/usr/local"));
    assert_int_equal(json_array_size(json_object_get(p, "env")), 3);
    free(envs);
    json_t *lin = json_object_get(c, "linux");
    /* the cgroup is the container's name, not the sandbox id (a warm container keeps its own) */
    assert_string_equal(json_string_value(json_object_get(lin, "cgroupsPath")),
                        "/sandgate/node-1/w-0123");
    json_t *res = json_object_get(lin, "resources");
    assert_true(json_integer_value(json_object_get(json_object_get(res, "memory"), "limit")) ==
                512LL * 1024 * 1024);
    assert_true(json_integer_value(json_object_get(json_object_get(res, "cpu"), "quota")) == 200000);
    json_t *ns = json_object_get(lin, "namespaces");
    assert_int_equal(json_array_size(ns), 5);
    char *caps = json_dumps(json_object_get(json_object_get(p, "capabilities"), "bounding"), 0);
    assert_null(strstr(caps, "SYS_ADMIN"));
    assert_null(strstr(caps, "NET_RAW"));
    assert_null(strstr(caps, "NET_ADMIN"));
    free(caps);
    char *mounts = json_dumps(json_object_get(c, "mounts"), 0);
    assert_non_null(strstr(mounts, "\"/opt/envd-bundle\""));
    assert_non_null(strstr(mounts, "\"ro\""));
    free(mounts);
    assert_non_null(json_object_get(lin, "seccomp"));
    json_decref(c);
}

/* Chunked-body tracking for the node proxy: the end is seen whatever the split of the bytes, and
 * an upstream ending inside the body gets bytes that leave a client inside a chunk's data. */
static int track_split(const char *body, size_t split, sg__chunk_track_t *t)
{
    memset(t, 0, sizeof(*t));
    size_t len = strlen(body);
    int r = 0;
    for (size_t off = 0; off < len && r == 0; off += split)
        r = sg__chunk_track(t, body + off, len - off < split ? len - off : split);
    return r;
}

static void test_node_chunk_track(void **state)
{
    (void)state;
    const char *done[] = {
        "0\r\n\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
        "1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n3\r\nxyz\r\n0\r\nX-Trailer: t\r\n\r\n",
        "5\nhello\r\n0\n\n",
    };
    for (size_t i = 0; i < sizeof(done) / sizeof(done[0]); i++) {
        for (size_t split = 1; split <= strlen(done[i]); split++) {
            sg__chunk_track_t t;
            assert_int_equal(track_split(done[i], split, &t), 1);
            assert_string_equal(sg__chunk_abort_bytes(&t), "");
        }
    }
    /* after the end, more bytes change nothing */
    sg__chunk_track_t t = {0};
    assert_int_equal(sg__chunk_track(&t, "0\r\n\r\ngarbage", 14), 1);

    /* unfinished bodies and what a proxy sends before closing */
    struct { const char *body, *abort; } open[] = {
        {"", "1\r\n"},
        {"5\r\nhello\r\n", "1\r\n"},
        {"5\r\nhel", ""},
        {"5\r\nhello", "\r\n1\r\n"},
        {"5\r\nhello\r", "\n1\r\n"},
        {"5\r\nhello\r\n1", "\r\n"},
        {"5\r\nhello\r\n1;x", "\r\n"},
        {"5\r\nhello\r\n1\r", "\n"},
        {"5\r\nhello\r\n0", ""},
        {"0\r\nX-T: 1\r\n", ""},
    };
    for (size_t i = 0; i < sizeof(open) / sizeof(open[0]); i++) {
        assert_int_equal(track_split(open[i].body, 64, &t), 0);
        assert_string_equal(sg__chunk_abort_bytes(&t), open[i].abort);
    }
    /* not chunked framing */
    const char *bad[] = {"xyz\r\n", "\r\n", "5\r\nhelloXX", "5\rX", "1234567890abcdef0\r\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(track_split(bad[i], 64, &t), -1);

    const char *chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n";
    const char *sized = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
    assert_true(sg__proxy_head_chunked(chunked, strlen(chunked)));
    assert_false(sg__proxy_head_chunked(sized, strlen(sized)));
    assert_false(sg__proxy_head_chunked("HTTP/1.1 200", 12));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_create_req_valid),
        cmocka_unit_test(test_node_create_req_invalid),
        cmocka_unit_test(test_node_addrpool),
        cmocka_unit_test(test_node_proxy_head),
        cmocka_unit_test(test_node_proxy_response),
        cmocka_unit_test(test_node_proxy_head_keepalive),
        cmocka_unit_test(test_node_proxy_response_keepalive),
        cmocka_unit_test(test_node_chunk_track),
        cmocka_unit_test(test_node_hostport),
        cmocka_unit_test(test_node_oci_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
