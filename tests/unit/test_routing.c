/*
 * routing unit tests: the Host grammar and the shared-host header routing of routing/routing.h,
 * table-driven. Each row states host, headers and the expected route (kind, id, port, or the
 * word the 400 message must contain), so a parser change that misroutes any row fails here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "routing/routing.h"

#define DOMAIN "sandgate.example.com"

typedef struct {
    const char *host, *hid, *hport;
    sg_routing_kind_t kind;
    const char *id;   /* SANDBOX */
    int port;         /* SANDBOX */
    const char *word; /* ERROR: a substring of the message */
} row_t;

static sg_routing_kind_t route(const char *host, const char *hid, const char *hport,
                               sg_routing_t *r)
{
    return sg_routing_resolve(host, host ? strlen(host) : 0, DOMAIN, hid, hid ? strlen(hid) : 0,
                              hport, hport ? strlen(hport) : 0, r);
}

static void check_rows(const row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        sg_routing_t r;
        sg_routing_kind_t k = route(rows[i].host, rows[i].hid, rows[i].hport, &r);
        if (k != rows[i].kind)
            fail_msg("row %zu host=%s: kind %d, want %d (error: %s)", i,
                     rows[i].host ? rows[i].host : "(null)", k, rows[i].kind,
                     r.error ? r.error : "-");
        assert_int_equal(k, r.kind);
        if (k == SG_ROUTE_SANDBOX) {
            assert_string_equal(r.sandbox_id, rows[i].id);
            assert_int_equal(r.port, rows[i].port);
            assert_null(r.error);
        } else if (k == SG_ROUTE_ERROR) {
            assert_non_null(r.error);
            if (strstr(r.error, rows[i].word) == NULL)
                fail_msg("row %zu host=%s: error '%s' lacks '%s'", i, rows[i].host, r.error,
                         rows[i].word);
            assert_string_equal(r.sandbox_id, "");
        } else {
            assert_null(r.error);
            assert_string_equal(r.sandbox_id, "");
        }
    }
}

static void test_routing_host_valid(void **state)
{
    static const row_t rows[] = {
        {"8000-abc123." DOMAIN, NULL, NULL, SG_ROUTE_SANDBOX, "abc123", 8000, NULL},
        {"49983-i0abcdefghijklmnopqr." DOMAIN, NULL, NULL, SG_ROUTE_SANDBOX,
         "i0abcdefghijklmnopqr", 49983, NULL},
        {"8000-abc-client-x1." DOMAIN, NULL, NULL, SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        {"8000-abc." DOMAIN ":443", NULL, NULL, SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        {"8000-abc." DOMAIN ".", NULL, NULL, SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        {"8000-abc." DOMAIN ".:8443", NULL, NULL, SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        /* hosts are case-insensitive: upper-case is folded, not rejected */
        {"8000-ABC." DOMAIN, NULL, NULL, SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        {"8000-Abc.SANDGATE.Example.COM", NULL, NULL, SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        /* the host wins over headers when it names a sandbox */
        {"8000-abc." DOMAIN, "zzz", "9000", SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        {"api." DOMAIN, NULL, NULL, SG_ROUTE_API, NULL, 0, NULL},
        {"API." DOMAIN ":443", NULL, NULL, SG_ROUTE_API, NULL, 0, NULL},
    };
    check_rows(rows, sizeof(rows) / sizeof(rows[0]));
}

static void test_routing_edge_ports(void **state)
{
    static const row_t rows[] = {
        {"0-abc." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
        {"1-abc." DOMAIN, NULL, NULL, SG_ROUTE_SANDBOX, "abc", 1, NULL},
        {"65535-abc." DOMAIN, NULL, NULL, SG_ROUTE_SANDBOX, "abc", 65535, NULL},
        {"65536-abc." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
        {"99999-abc." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
        {"123456-abc." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
        {"08000-abc." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
        {"x80-abc." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
        {"-abc." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
        {"8000-abc." DOMAIN ":0", NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
        {"8000-abc." DOMAIN ":65536", NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
        {"8000-abc." DOMAIN ":", NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
        {"8000-abc." DOMAIN ":80:80", NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
    };
    check_rows(rows, sizeof(rows) / sizeof(rows[0]));
    assert_int_equal(sg_routing_parse_port("1", 1), 1);
    assert_int_equal(sg_routing_parse_port("65535", 5), 65535);
    assert_int_equal(sg_routing_parse_port("65536", 5), -1);
    assert_int_equal(sg_routing_parse_port("0", 1), -1);
    assert_int_equal(sg_routing_parse_port("+80", 3), -1);
    assert_int_equal(sg_routing_parse_port(" 80", 3), -1);
    assert_int_equal(sg_routing_parse_port("", 0), -1);
    /* length-bounded: the digits after len are never read */
    assert_int_equal(sg_routing_parse_port("80999", 2), 80);
}

static void test_routing_host_malformed(void **state)
{
    static const row_t rows[] = {
        {"8000." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "missing sandbox ID"},
        {"abc." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "missing sandbox ID"},
        {"8000-." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "sandbox ID"},
        {"8000--x." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "sandbox ID"},
        {"8000-abc-." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "suffix"},
        {"8000-ab_c." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "sandbox ID"},
        {"8000-abc.extra." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "labels"},
        {"a.b.c." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "labels"},
        {"www." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "missing sandbox ID"},
        {"8000-abc/x." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "invalid characters"},
        {"8000-abc\x01." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "invalid characters"},
        {"8000-ab c." DOMAIN, NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "invalid characters"},
        {"[::1", NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "IPv6"},
        {"[zz::1]", NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "IPv6"},
        {"[::1]x", NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
        {"[::1]:0", NULL, NULL, SG_ROUTE_ERROR, NULL, 0, "port"},
    };
    check_rows(rows, sizeof(rows) / sizeof(rows[0]));
}

static void test_routing_host_long(void **state)
{
    sg_routing_t r;
    char host[1200];
    /* a 63-character id is the longest allowed */
    char id63[64];
    memset(id63, 'a', 63);
    id63[63] = '\0';
    /* "1-" + 63 = 65 > 63-character label: refused by the label bound, not silently cut */
    snprintf(host, sizeof(host), "1-%s." DOMAIN, id63);
    assert_int_equal(route(host, NULL, NULL, &r), SG_ROUTE_ERROR);
    assert_non_null(strstr(r.error, "63"));
    /* the longest id that fits a label: 63 - strlen("1-") = 61 */
    snprintf(host, sizeof(host), "1-%.61s." DOMAIN, id63);
    assert_int_equal(route(host, NULL, NULL, &r), SG_ROUTE_SANDBOX);
    assert_int_equal(strlen(r.sandbox_id), 61);
    /* a 63-character id is valid by header */
    assert_int_equal(route("localhost", id63, "80", &r), SG_ROUTE_SANDBOX);
    assert_string_equal(r.sandbox_id, id63);
    char id64[65];
    memset(id64, 'a', 64);
    id64[64] = '\0';
    assert_int_equal(route("localhost", id64, "80", &r), SG_ROUTE_ERROR);
    /* a host past any DNS name length */
    memset(host, 'a', sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    assert_int_equal(route(host, NULL, NULL, &r), SG_ROUTE_ERROR);
    assert_non_null(strstr(r.error, "too long"));
    /* 254 characters without a port: longer than a DNS name */
    host[254] = '\0';
    assert_int_equal(route(host, NULL, NULL, &r), SG_ROUTE_ERROR);
    assert_non_null(strstr(r.error, "too long"));
    /* exactly 253 outside the domain: a valid (foreign, shared) name */
    host[253] = '\0';
    assert_int_equal(route(host, NULL, NULL, &r), SG_ROUTE_API);
}

static void test_routing_shared_hosts(void **state)
{
    static const row_t rows[] = {
        {"localhost", NULL, NULL, SG_ROUTE_API, NULL, 0, NULL},
        {"localhost:3000", "abc", "49983", SG_ROUTE_SANDBOX, "abc", 49983, NULL},
        {"127.0.0.1:8080", "abc", "8000", SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        {"127.0.0.1", NULL, NULL, SG_ROUTE_API, NULL, 0, NULL},
        {"[::1]", "abc", "8000", SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        {"[::1]:8080", "abc", "8000", SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        {"[2001:db8::7]:443", NULL, NULL, SG_ROUTE_API, NULL, 0, NULL},
        {"[::ffff:10.0.0.1]", "x1", "1", SG_ROUTE_SANDBOX, "x1", 1, NULL},
        {"sandbox." DOMAIN, "abc", "8000", SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        {"sandbox." DOMAIN, NULL, NULL, SG_ROUTE_API, NULL, 0, NULL},
        {DOMAIN, "abc", "8000", SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        {DOMAIN, NULL, NULL, SG_ROUTE_API, NULL, 0, NULL},
        /* a balancer's own name outside the domain behaves as a shared host */
        {"gw.internal:3000", "abc", "8000", SG_ROUTE_SANDBOX, "abc", 8000, NULL},
        {"gw.internal", NULL, NULL, SG_ROUTE_API, NULL, 0, NULL},
        /* the domain must match at a label boundary */
        {"8000-abcx" DOMAIN, NULL, NULL, SG_ROUTE_API, NULL, 0, NULL},
        {NULL, NULL, NULL, SG_ROUTE_API, NULL, 0, NULL},
        {"", "abc", "80", SG_ROUTE_SANDBOX, "abc", 80, NULL},
        /* bad or partial headers */
        {"localhost", "abc", NULL, SG_ROUTE_ERROR, NULL, 0, "e2b-sandbox-port"},
        {"localhost", NULL, "80", SG_ROUTE_ERROR, NULL, 0, "e2b-sandbox-id"},
        {"localhost", "ABC", "80", SG_ROUTE_ERROR, NULL, 0, "e2b-sandbox-id"},
        {"localhost", "", "80", SG_ROUTE_ERROR, NULL, 0, "e2b-sandbox-id"},
        {"localhost", "a/b", "80", SG_ROUTE_ERROR, NULL, 0, "e2b-sandbox-id"},
        {"localhost", "abc", "0", SG_ROUTE_ERROR, NULL, 0, "e2b-sandbox-port"},
        {"localhost", "abc", "65536", SG_ROUTE_ERROR, NULL, 0, "e2b-sandbox-port"},
        {"localhost", "abc", "8o", SG_ROUTE_ERROR, NULL, 0, "e2b-sandbox-port"},
    };
    check_rows(rows, sizeof(rows) / sizeof(rows[0]));
    sg_routing_t r;
    assert_int_equal(route("localhost", "abc", "80", &r), SG_ROUTE_SANDBOX);
    assert_true(r.by_header);
    assert_int_equal(route("80-abc." DOMAIN, NULL, NULL, &r), SG_ROUTE_SANDBOX);
    assert_false(r.by_header);
}

static void test_routing_not_nul_terminated(void **state)
{
    /* inputs are length-bounded: trailing bytes past the lengths must not change the result */
    const char host[] = "8000-abc." DOMAIN "GARBAGE";
    sg_routing_t r;
    assert_int_equal(sg_routing_resolve(host, strlen(host) - 7, DOMAIN, NULL, 0, NULL, 0, &r),
                     SG_ROUTE_SANDBOX);
    assert_string_equal(r.sandbox_id, "abc");
    assert_int_equal(sg_routing_resolve("localhost", 9, DOMAIN, "abcdef", 3, "8000x", 4, &r),
                     SG_ROUTE_SANDBOX);
    assert_string_equal(r.sandbox_id, "abc");
    assert_int_equal(r.port, 8000);
    /* a domain configured with a trailing dot or upper-case still matches */
    assert_int_equal(route("api.sandgate.example.com", NULL, NULL, &r), SG_ROUTE_API);
    assert_int_equal(sg_routing_resolve("9-a.x.org", 9, "X.ORG.", NULL, 0, NULL, 0, &r),
                     SG_ROUTE_SANDBOX);
    assert_int_equal(r.port, 9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routing_host_valid),
        cmocka_unit_test(test_routing_edge_ports),
        cmocka_unit_test(test_routing_host_malformed),
        cmocka_unit_test(test_routing_host_long),
        cmocka_unit_test(test_routing_shared_hosts),
        cmocka_unit_test(test_routing_not_nul_terminated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
