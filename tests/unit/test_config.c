/*
 * Unit tests of config/: every error class with its exact file:line:column, ${VAR}
 * substitution, *_file secrets, defaults, sizes, printing, the generated reference in
 * docs/configuration.md (must match the schema) and the examples in deploy/ (must load and set
 * every key of the schema).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <yaml.h>

#include "common/common.h"
#include "config/config.h"

/* A valid gateway config; tests append lines from line 8 on. */
#define GW_MIN                                                                                     \
    "listeners:\n"                                                                                 \
    "  - port: 8080\n"                                                                             \
    "domain: example.com\n"                                                                        \
    "postgres:\n"                                                                                  \
    "  dsn: host=x\n"                                                                              \
    "node_token: 0123456789abcdef\n"                                                               \
    "token_secret: fedcba9876543210\n"

#define ND_MIN                                                                                     \
    "id: n1\n"                                                                                     \
    "node_token: 0123456789abcdef\n"                                                               \
    "envd_path: /opt/envd\n"

static char err[8192];

static int gw(const char *text, sg_gateway_config_t *g)
{
    return sg_config_load_gateway_buffer("t.yaml", text, strlen(text), g, err, sizeof(err));
}

static int nd(const char *text, sg_node_config_t *n)
{
    return sg_config_load_node_buffer("n.yaml", text, strlen(text), n, err, sizeof(err));
}

/* Loads text as a gateway config, expects failure and exactly the error text want. */
static void gw_fails(const char *text, const char *want)
{
    sg_gateway_config_t g;
    assert_int_equal(gw(text, &g), SG_EINVAL);
    assert_string_equal(err, want);
    assert_null(g.domain); /* freed and zeroed on failure */
    assert_int_equal(g.nlisteners, 0);
}

static void nd_fails(const char *text, const char *want)
{
    sg_node_config_t n;
    assert_int_equal(nd(text, &n), SG_EINVAL);
    assert_string_equal(err, want);
    assert_null(n.id);
}

static char *write_temp(const char *content)
{
    char *path = strdup("/tmp/sg_test_config_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    return path;
}

/* ---- defaults and values --------------------------------------------------------------------- */

static void test_config_gateway_defaults(void **state)
{
    sg_gateway_config_t g;
    assert_int_equal(gw(GW_MIN, &g), 0);
    assert_string_equal(err, "");
    assert_int_equal(g.nlisteners, 1);
    assert_string_equal(g.listeners[0].address, "0.0.0.0");
    assert_int_equal(g.listeners[0].port, 8080);
    assert_int_equal(g.listeners[0].ncerts, 0);
    assert_false(g.listeners[0].http2);
    assert_string_equal(g.domain, "example.com");
    assert_int_equal(g.threads, 0);
    assert_string_equal(g.postgres.dsn, "host=x");
    assert_int_equal(g.postgres.pool_size, 4);
    assert_int_equal(g.postgres.query_timeout_ms, 3000);
    assert_string_equal(g.redis.address, "127.0.0.1:6379");
    assert_null(g.redis.password);
    assert_int_equal(g.redis.timeout_ms, 1000);
    assert_null(g.admin_token);
    assert_int_equal(g.sandbox.default_timeout_s, 300);
    assert_int_equal(g.sandbox.max_timeout_s, 3600);
    assert_true(g.scheduler.cpu_overcommit == 1.0);
    assert_string_equal(g.scheduler.policy, "least-allocated");
    assert_int_equal(g.http.max_body_bytes, 1024 * 1024);
    assert_int_equal(g.http.proxy_max_body_bytes, 100 * 1024 * 1024);
    assert_int_equal(g.http.idle_timeout_ms, 610000);
    assert_int_equal(g.http.max_connections_per_ip, 256);
    assert_int_equal(g.auth.cache_size, 100000);
    assert_string_equal(g.log.level, "info");
    assert_string_equal(g.log.format, "logfmt");
    assert_string_equal(g.state_dir, ".sandgate");
    sg_config_free_gateway(&g);
    assert_null(g.domain);
}

static void test_config_node_defaults(void **state)
{
    sg_node_config_t n;
    assert_int_equal(nd(ND_MIN "api_listen: 127.0.0.1:9000\n", &n), 0);
    assert_string_equal(n.id, "n1");
    assert_string_equal(n.api_listen, "127.0.0.1:9000");
    assert_string_equal(n.api_advertise, "127.0.0.1:9000"); /* defaults to api_listen */
    assert_string_equal(n.proxy_listen, "0.0.0.0:7071");
    assert_string_equal(n.proxy_advertise, "0.0.0.0:7071");
    assert_int_equal(n.capacity.max_sandboxes, 100);
    assert_int_equal(n.capacity.reserve_memory_mb, 512);
    assert_int_equal(n.nlabels, 0);
    assert_int_equal(n.nprotected, 0);
    assert_null(n.protected_addresses);
    assert_string_equal(n.runtime, "runc");
    assert_null(n.runtime_path);
    assert_string_equal(n.network_cidr, "10.11.0.0/16");
    assert_string_equal(n.bridge, "sgbr0");
    assert_int_equal(n.heartbeat_interval_ms, 1000);
    sg_config_free_node(&n);
}

static void test_config_values(void **state)
{
    sg_gateway_config_t g;
    assert_int_equal(gw("listeners:\n"
                        "  - port: 80\n"
                        "  - address: ::1\n"
                        "    port: 443\n"
                        "    http2: yes\n"
                        "    certs:\n"
                        "      - {cert_file: a.pem, key_file: a.key}\n"
                        "      - {cert_file: b.pem, key_file: b.key}\n"
                        "domain: example.com\n"
                        "postgres: {dsn: 'host=x', pool_size: 64}\n"
                        "node_token: 0123456789abcdef\n"
                        "token_secret: fedcba9876543210\n"
                        "scheduler: {cpu_overcommit: 2.5, policy: random}\n"
                        "http: {max_body_bytes: 10MB, proxy_max_body_bytes: 1 GiB}\n"
                        "log: {level: debug, format: json}\n",
                        &g),
                     0);
    assert_int_equal(g.nlisteners, 2);
    assert_string_equal(g.listeners[1].address, "::1");
    assert_true(g.listeners[1].http2);
    assert_int_equal(g.listeners[1].ncerts, 2);
    assert_string_equal(g.listeners[1].certs[1].key_file, "b.key");
    assert_int_equal(g.postgres.pool_size, 64);
    assert_true(g.scheduler.cpu_overcommit == 2.5);
    assert_string_equal(g.scheduler.policy, "random");
    assert_int_equal(g.http.max_body_bytes, 10000000);
    assert_int_equal(g.http.proxy_max_body_bytes, 1024 * 1024 * 1024);
    assert_string_equal(g.log.format, "json");
    sg_config_free_gateway(&g);

    sg_node_config_t n;
    assert_int_equal(nd(ND_MIN "labels: {zone: a, disk: nvme}\n"
                               "protected_addresses: [10.0.0.0/8, 'fd00::/8']\n",
                        &n),
                     0);
    assert_int_equal(n.nlabels, 2);
    assert_string_equal(n.labels[0].key, "zone");
    assert_string_equal(n.labels[1].value, "nvme");
    assert_int_equal(n.nprotected, 2);
    assert_string_equal(n.protected_addresses[1], "fd00::/8");
    sg_config_free_node(&n);
}

static void test_config_sizes(void **state)
{
    static const struct {
        const char *in;
        size_t want;
    } ok[] = {
        {"0", 0},           {"512", 512},          {"64KB", 64000},
        {"64KiB", 65536},   {"64k", 65536},        {"10MB", 10000000},
        {"10 MiB", 10485760}, {"1GiB", 1073741824}, {"1gb", 1000000000},
        {"2T", 2ull << 40}, {"7b", 7},
    };
    static const char *const bad[] = {"", "abc", "-1", "1.5MB", "10XB", "MB", " 1",
                                      "99999999999999999999", "20000000000TiB", "1 MB x"};
    size_t v;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_int_equal(sg_config_parse_size(ok[i].in, &v), 0);
        assert_int_equal(v, ok[i].want);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sg_config_parse_size(bad[i], &v), SG_EINVAL);
}

/* ---- error classes, exact positions ---------------------------------------------------------- */

static void test_config_syntax_error(void **state)
{
    gw_fails("listeners: [1, 2\n"
             "domain: x\n",
             "t.yaml:2:7: syntax error: did not find expected ',' or ']' while parsing a flow "
             "sequence\n");
    gw_fails("a: b\n"
             "  c: d\n",
             "t.yaml:2:4: syntax error: mapping values are not allowed in this context\n");
    /* invalid UTF-8: libyaml reports a byte offset, turned into line:column */
    gw_fails("domain: ok\n"
             "x: \xff\n",
             "t.yaml:2:4: syntax error: invalid leading UTF-8 octet\n");
    gw_fails(GW_MIN "---\na: 1\n", "t.yaml:9:1: only one YAML document is allowed\n");
}

static void test_config_unknown_key(void **state)
{
    gw_fails(GW_MIN "xyzzy: 1\n"
                    "threds: 4\n"
                    "completely_unrelated: 1\n",
             "t.yaml:8:1: xyzzy: unknown key\n"
             "t.yaml:9:1: threds: unknown key (did you mean 'threads'?)\n"
             "t.yaml:10:1: completely_unrelated: unknown key\n");
    gw_fails("listeners:\n"
             "  - port: 8080\n"
             "    adress: 1.2.3.4\n"
             "domain: example.com\n"
             "postgres:\n"
             "  dsn: host=x\n"
             "  pool_sise: 3\n"
             "  dsn_fil: /x\n"
             "node_token: 0123456789abcdef\n"
             "token_secret: fedcba9876543210\n",
             "t.yaml:3:5: listeners[0].adress: unknown key (did you mean 'address'?)\n"
             "t.yaml:7:3: postgres.pool_sise: unknown key (did you mean 'pool_size'?)\n"
             "t.yaml:8:3: postgres.dsn_fil: unknown key (did you mean 'dsn_file'?)\n");
}

static void test_config_wrong_type(void **state)
{
    gw_fails(GW_MIN "threads: abc\n"
                    "scheduler:\n"
                    "  cpu_overcommit: lots\n"
                    "http: {max_body_bytes: 10 parsecs}\n"
                    "listeners_extra: 1\n",
             "t.yaml:8:10: threads: expected an integer, got \"abc\"\n"
             "t.yaml:10:19: scheduler.cpu_overcommit: expected a number, got \"lots\"\n"
             "t.yaml:11:24: http.max_body_bytes: expected a size (e.g. 512, 64KiB, 10MB, "
             "1GiB), got \"10 parsecs\"\n"
             "t.yaml:12:1: listeners_extra: unknown key\n");
    gw_fails("listeners:\n"
             "  - port: 8080\n"
             "    http2: maybe\n"
             "domain: {a: 1}\n"
             "postgres: 5\n"
             "node_token: [x]\n"
             "token_secret: fedcba9876543210\n",
             "t.yaml:3:12: listeners[0].http2: expected a boolean (true or false), got "
             "\"maybe\"\n"
             "t.yaml:4:9: domain: expected a string, got a mapping\n"
             "t.yaml:5:11: postgres: expected a mapping, got a scalar\n"
             "t.yaml:6:13: node_token: expected a string, got a list\n");
    gw_fails("- a\n- b\n", "t.yaml:1:1: (top level): expected a mapping, got a list\n");
    nd_fails(ND_MIN "runtime_path: \"/usr/bin/runc\\0evil\"\n",
             "n.yaml:4:15: runtime_path: value contains a NUL character\n");
}

static void test_config_out_of_range(void **state)
{
    gw_fails(GW_MIN "threads: 65\n"
                    "scheduler: {cpu_overcommit: 0.5}\n"
                    "http: {max_body_bytes: 2GiB}\n"
                    "redis:\n"
                    "  db: -1\n"
                    "  timeout_ms: 99999999999999999999\n",
             "t.yaml:8:10: threads: value 65 out of range 0..64\n"
             "t.yaml:9:29: scheduler.cpu_overcommit: value 0.5 out of range 1..16\n"
             "t.yaml:10:24: http.max_body_bytes: value 2147483648 out of range 1024..1073741824 "
             "bytes\n"
             "t.yaml:12:7: redis.db: value -1 out of range 0..15\n"
             "t.yaml:13:15: redis.timeout_ms: expected an integer, got "
             "\"99999999999999999999\"\n");
    gw_fails("listeners:\n"
             "  - port: 0\n"
             "  - port: 65536\n"
             "domain: example.com\n"
             "postgres: {dsn: x}\n"
             "node_token: 0123456789abcdef\n"
             "token_secret: fedcba9876543210\n",
             "t.yaml:2:11: listeners[0].port: value 0 out of range 1..65535\n"
             "t.yaml:3:11: listeners[1].port: value 65536 out of range 1..65535\n");
}

static void test_config_bad_enum(void **state)
{
    gw_fails(GW_MIN "scheduler:\n"
                    "  policy: best-fit\n"
                    "log: {level: verbose}\n",
             "t.yaml:9:11: scheduler.policy: invalid value \"best-fit\" (allowed: "
             "least-allocated, most-allocated, random)\n"
             "t.yaml:10:14: log.level: invalid value \"verbose\" (allowed: debug, info, warn, "
             "error)\n");
}

static void test_config_missing_required(void **state)
{
    /* positions are the enclosing mapping's: the document start, postgres' mapping, the item */
    gw_fails("postgres:\n"
             "  pool_size: 2\n"
             "listeners:\n"
             "  - address: 1.2.3.4\n"
             "    certs:\n"
             "      - cert_file: a.pem\n",
             "t.yaml:1:1: domain: missing required key\n"
             "t.yaml:1:1: node_token: missing required key\n"
             "t.yaml:1:1: token_secret: missing required key\n"
             "t.yaml:2:3: postgres.dsn: missing required key\n"
             "t.yaml:4:5: listeners[0].port: missing required key\n"
             "t.yaml:6:9: listeners[0].certs[0].key_file: missing required key\n");
    gw_fails("", "t.yaml:1:1: listeners: missing required key (at least 1 entry)\n"
                 "t.yaml:1:1: domain: missing required key\n"
                 "t.yaml:1:1: postgres.dsn: missing required key\n"
                 "t.yaml:1:1: node_token: missing required key\n"
                 "t.yaml:1:1: token_secret: missing required key\n");
    gw_fails("listeners: []\n"
             "domain: ''\n"
             "postgres: {dsn: x}\n"
             "node_token: 0123456789abcdef\n"
             "token_secret: fedcba9876543210\n",
             "t.yaml:1:12: listeners: at least 1 entry required\n"
             "t.yaml:2:9: domain: must not be empty\n");
}

static void test_config_duplicate_key(void **state)
{
    gw_fails(GW_MIN "domain: other.example.com\n"
                    "postgres:\n"
                    "  dsn: y\n",
             "t.yaml:8:1: domain: duplicate key (first given at line 3)\n"
             "t.yaml:9:1: postgres: duplicate key (first given at line 5)\n");
    nd_fails(ND_MIN "labels:\n"
                    "  zone: a\n"
                    "  zone: b\n",
             "n.yaml:6:3: labels.zone: duplicate key 'zone'\n");
}

static void test_config_too_many_entries(void **state)
{
    char text[4096] = "listeners:\n";
    for (int i = 0; i < 17; i++) {
        char line[64];
        snprintf(line, sizeof(line), "  - port: %d\n", 8000 + i);
        strcat(text, line);
    }
    strcat(text, "domain: example.com\n"
                 "postgres: {dsn: x}\n"
                 "node_token: 0123456789abcdef\n"
                 "token_secret: fedcba9876543210\n");
    gw_fails(text, "t.yaml:18:5: listeners[16]: too many entries (max 16)\n");

    char ntext[4096] = ND_MIN "labels:\n";
    for (int i = 0; i < 33; i++) {
        char line[64];
        snprintf(line, sizeof(line), "  k%d: v\n", i);
        strcat(ntext, line);
    }
    nd_fails(ntext, "n.yaml:37:3: labels.k32: too many entries (max 32)\n");

    strcpy(ntext, ND_MIN "protected_addresses:\n");
    for (int i = 0; i < 65; i++) {
        char line[64];
        snprintf(line, sizeof(line), "  - 10.0.%d.0/24\n", i);
        strcat(ntext, line);
    }
    nd_fails(ntext, "n.yaml:69:5: protected_addresses[64]: too many entries (max 64)\n");
}

static void test_config_validation(void **state)
{
    gw_fails("listeners:\n"
             "  - port: 80\n"
             "  - port: 80\n"
             "domain: -bad..domain\n"
             "postgres: {dsn: x}\n"
             "node_token: short\n"
             "admin_token: alsoshort\n"
             "token_secret: fedcba9876543210\n"
             "sandbox: {default_timeout_s: 7200}\n",
             "t.yaml:3:5: listeners[1]: same address and port as listeners[0]\n"
             "t.yaml:4:9: domain: invalid value \"-bad..domain\": not a DNS name (letters, "
             "digits, '-' and '.')\n"
             "t.yaml:6:13: node_token: too short (5 characters, at least 16 required)\n"
             "t.yaml:7:14: admin_token: too short (9 characters, at least 16 required)\n"
             "t.yaml:9:30: sandbox.default_timeout_s: 7200 is above max_timeout_s (3600)\n");
    nd_fails("id: 'bad id'\n"
             "node_token: 0123456789abcdef\n"
             "envd_path: /opt/envd\n"
             "api_listen: 0.0.0.0\n"
             "network_cidr: 10.0.0.0/33\n"
             "bridge: a-very-long-bridge-name\n"
             "protected_addresses: [10.0.0.0/8, nope]\n"
             "labels: {'bad key': x}\n"
             "capacity: {vcpu: 4, reserve_vcpu: 4}\n"
             "redis: {address: 'unix:relative'}\n",
             "n.yaml:1:5: id: invalid value \"bad id\": must match [a-zA-Z0-9_.-]{1,64}\n"
             "n.yaml:4:13: api_listen: invalid value \"0.0.0.0\": expected host:port\n"
             "n.yaml:5:15: network_cidr: invalid value \"10.0.0.0/33\": IPv4 prefix must be "
             "0..32\n"
             "n.yaml:6:9: bridge: invalid value \"a-very-long-bridge-name\": must be 1..15 "
             "characters of [a-zA-Z0-9_.-]\n"
             "n.yaml:7:35: protected_addresses[1]: invalid value \"nope\": expected an "
             "address/prefix CIDR\n"
             "n.yaml:8:10: labels.bad key: invalid key \"bad key\": must be 1..63 characters of "
             "[a-zA-Z0-9_./-]\n"
             "n.yaml:9:35: capacity.reserve_vcpu: must be below vcpu (4) so sandboxes get at "
             "least one\n"
             "n.yaml:10:18: redis.address: invalid value \"unix:relative\": expected "
             "unix:/absolute/path\n");
}

static void test_config_error_buffer_truncated(void **state)
{
    /* many errors, a tiny buffer: stays NUL-terminated, never overflows */
    char small[40];
    sg_gateway_config_t g;
    const char *text = "a: 1\nb: 2\nc: 3\n";
    memset(small, 'x', sizeof(small));
    assert_int_equal(sg_config_load_gateway_buffer("t.yaml", text, strlen(text), &g, small,
                                                   sizeof(small)),
                     SG_EINVAL);
    assert_string_equal(small, "t.yaml:1:1: a: unknown key\n"); /* whole lines only */
    /* more than 50 problems: 50 lines, then a count of the rest */
    char many[2048] = "";
    for (int i = 0; i < 60; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "k%d: 1\n", i);
    assert_int_equal(sg_config_load_gateway_buffer("t.yaml", many, strlen(many), &g, err,
                                                   sizeof(err)),
                     SG_EINVAL);
    assert_non_null(strstr(err, "t.yaml:50:1: k49: unknown key\n"
                                "t.yaml: 15 more errors not shown\n"));
    /* and no buffer at all is fine too */
    assert_int_equal(sg_config_load_gateway_buffer("t.yaml", text, strlen(text), &g, NULL, 0),
                     SG_EINVAL);
}

/* ---- ${VAR} ---------------------------------------------------------------------------------- */

static void test_config_env_substitution(void **state)
{
    sg_gateway_config_t g;
    setenv("SG_T_DOMAIN", "env.example.com", 1);
    setenv("SG_T_TOKEN", "0123456789abcdef", 1);
    setenv("SG_T_EMPTY", "", 1);
    unsetenv("SG_T_UNSET");
    assert_int_equal(gw("listeners: [{port: '${SG_T_PORT:-9090}'}]\n"
                        "domain: ${SG_T_DOMAIN}\n"
                        "postgres: {dsn: \"password=a$$b ${SG_T_UNSET:-x}${SG_T_EMPTY:-y} $ $x\"}\n"
                        "node_token: ${SG_T_TOKEN}\n"
                        "token_secret: pre-${SG_T_TOKEN}-post\n"
                        "admin_token: ${SG_T_UNSET:-}\n",
                        &g),
                     0);
    assert_int_equal(g.listeners[0].port, 9090);
    assert_string_equal(g.domain, "env.example.com");
    assert_string_equal(g.postgres.dsn, "password=a$b xy $ $x");
    assert_string_equal(g.node_token, "0123456789abcdef");
    assert_string_equal(g.token_secret, "pre-0123456789abcdef-post");
    assert_null(g.admin_token); /* empty optional value = unset */
    sg_config_free_gateway(&g);

    /* undefined without default: error at the ${ (plain scalar), or the scalar (quoted) */
    gw_fails(GW_MIN "state_dir: /var/${SG_T_UNSET}/x\n"
                    "log: {level: \"${SG_T_UNSET}\"}\n"
                    "redis:\n"
                    "  address: ${SG_T_BAD:oops}\n"
                    "threads: ${SG_T_EMPTY:-abc\n",
             "t.yaml:8:17: state_dir: environment variable SG_T_UNSET is not set\n"
             "t.yaml:9:14: log.level: environment variable SG_T_UNSET is not set\n"
             "t.yaml:11:12: redis.address: bad variable reference (use ${NAME}, "
             "${NAME:-default} or $$ for a literal $)\n"
             "t.yaml:12:10: threads: unterminated ${ in value\n");
    unsetenv("SG_T_DOMAIN");
    unsetenv("SG_T_TOKEN");
    unsetenv("SG_T_EMPTY");
}

/* ---- *_file secrets -------------------------------------------------------------------------- */

static void test_config_secret_files(void **state)
{
    char *dsn = write_temp("host=/run/postgresql password=s3cret\n");
    char *tok = write_temp("0123456789abcdef0123\r\n");
    char *shorttok = write_temp("short");
    char text[2048];
    sg_gateway_config_t g;

    snprintf(text, sizeof(text),
             "listeners: [{port: 80}]\n"
             "domain: example.com\n"
             "postgres: {dsn_file: %s}\n"
             "node_token_file: %s\n"
             "token_secret: fedcba9876543210\n"
             "redis: {password_file: %s}\n",
             dsn, tok, shorttok);
    assert_int_equal(gw(text, &g), 0);
    assert_string_equal(g.postgres.dsn, "host=/run/postgresql password=s3cret");
    assert_string_equal(g.node_token, "0123456789abcdef0123");
    assert_string_equal(g.redis.password, "short");
    sg_config_free_gateway(&g);

    /* unreadable file: the error names the path; both forms: refused; the length rule holds */
    snprintf(text, sizeof(text),
             "listeners: [{port: 80}]\n"
             "domain: example.com\n"
             "postgres: {dsn_file: /nonexistent/sg-dsn}\n"
             "node_token_file: %s\n"
             "token_secret: fedcba9876543210\n"
             "token_secret_file: %s\n",
             shorttok, tok);
    gw_fails(text, "t.yaml:3:22: postgres.dsn_file: cannot read \"/nonexistent/sg-dsn\": No such "
                   "file or directory\n"
                   "t.yaml:4:18: node_token_file: too short (5 characters, at least 16 "
                   "required)\n"
                   "t.yaml:6:1: token_secret_file: give either 'token_secret' or "
                   "'token_secret_file', not both\n");
    /* only secrets have a _file form */
    gw_fails(GW_MIN "state_dir_file: /x\n",
             "t.yaml:8:1: state_dir_file: unknown key ('state_dir' is not a secret: give its value "
             "directly)\n");
    /* a directory is not a secret file */
    gw_fails("listeners: [{port: 80}]\n"
             "domain: example.com\n"
             "postgres: {dsn_file: /tmp}\n"
             "node_token: 0123456789abcdef\n"
             "token_secret: fedcba9876543210\n",
             "t.yaml:3:22: postgres.dsn_file: cannot read \"/tmp\": Invalid argument\n");
    unlink(dsn);
    unlink(tok);
    unlink(shorttok);
    free(dsn);
    free(tok);
    free(shorttok);
}

/* ---- files, printing ------------------------------------------------------------------------- */

static void test_config_load_file(void **state)
{
    char *path = write_temp(GW_MIN "threads: x\n");
    sg_gateway_config_t g;
    char want[512];
    assert_int_equal(sg_config_load_gateway(path, &g, err, sizeof(err)), SG_EINVAL);
    snprintf(want, sizeof(want), "%s:8:10: threads: expected an integer, got \"x\"\n", path);
    assert_string_equal(err, want);
    unlink(path);
    assert_int_equal(sg_config_load_gateway(path, &g, err, sizeof(err)), SG_EIO);
    snprintf(want, sizeof(want), "%s: cannot read: No such file or directory\n", path);
    assert_string_equal(err, want);
    free(path);
}

static void test_config_print_masks_secrets(void **state)
{
    sg_gateway_config_t g;
    sg_node_config_t n;
    char *buf = NULL;
    size_t len = 0;

    assert_int_equal(gw(GW_MIN "redis: {password: hunter2hunter2}\n"
                               "admin_token: adminadminadmin-1\n",
                        &g),
                     0);
    FILE *f = open_memstream(&buf, &len);
    sg_config_print_gateway(f, &g);
    fclose(f);
    assert_null(strstr(buf, "hunter2"));
    assert_null(strstr(buf, "0123456789abcdef"));
    assert_null(strstr(buf, "fedcba9876543210"));
    assert_null(strstr(buf, "adminadmin"));
    assert_null(strstr(buf, "host=x"));
    assert_non_null(strstr(buf, "  dsn: \"********\"\n"));
    assert_non_null(strstr(buf, "node_token: \"********\"\n"));
    assert_non_null(strstr(buf, "listeners:\n  - address: \"0.0.0.0\"\n    port: 8080\n"
                                "    certs: []\n    http2: false\n"));
    assert_non_null(strstr(buf, "  max_body_bytes: 1048576\n"));
    sg_config_free_gateway(&g);
    free(buf);

    /* the printed node config (no secrets besides node_token) loads back to the same text */
    assert_int_equal(nd(ND_MIN "labels: {zone: \"a \\\"b\\\"\"}\n"
                               "protected_addresses: ['10.0.0.0/8']\n",
                        &n),
                     0);
    buf = NULL;
    f = open_memstream(&buf, &len);
    sg_config_print_node(f, &n);
    fclose(f);
    sg_config_free_node(&n);
    char *masked = strstr(buf, "\"********\"");
    assert_non_null(masked);
    char *again = malloc(len + 32);
    size_t pre = (size_t)(masked - buf);
    memcpy(again, buf, pre);
    strcpy(again + pre, "\"0123456789abcdef\"");
    strcat(again, masked + strlen("\"********\""));
    assert_int_equal(nd(again, &n), 0);
    char *buf2 = NULL;
    size_t len2 = 0;
    f = open_memstream(&buf2, &len2);
    sg_config_print_node(f, &n);
    fclose(f);
    assert_string_equal(buf, buf2);
    assert_string_equal(n.labels[0].value, "a \"b\"");
    sg_config_free_node(&n);
    free(buf);
    free(buf2);
    free(again);
}

/* ---- generated docs and examples ------------------------------------------------------------- */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = '\0';
    fclose(f);
    return b;
}

static void test_config_reference_doc_current(void **state)
{
    char *gen = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&gen, &len);
    sg_config_reference_markdown(f);
    fclose(f);
    if (getenv("SG_REGEN_DOCS")) {
        FILE *out = fopen(SG_SOURCE_DIR "/docs/configuration.md", "wb");
        assert_non_null(out);
        fputs(gen, out);
        fclose(out);
    }
    char *committed = slurp(SG_SOURCE_DIR "/docs/configuration.md");
    assert_non_null(committed);
    if (strcmp(gen, committed) != 0)
        fail_msg("docs/configuration.md is stale: regenerate with SG_REGEN_DOCS=1 %s",
                 "build/tests/test_config");
    free(gen);
    free(committed);
}

/* Key paths of a YAML mapping, "a.b", lists of mappings as "a[]", "<secret>_file" also as
 * "<secret>", appended to out (newline-separated, each line "\n<path>\n"-findable). */
static void collect_paths(yaml_document_t *doc, yaml_node_t *map, const char *path, char *out,
                          size_t cap)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        yaml_node_t *v = yaml_document_get_node(doc, p->value);
        char kp[256];
        snprintf(kp, sizeof(kp), "%s%s%s", path, path[0] ? "." : "",
                 (const char *)k->data.scalar.value);
        size_t kl = strlen(kp);
        if (kl > 5 && strcmp(kp + kl - 5, "_file") == 0) {
            strncat(out, kp, cap - strlen(out) - 1);
            strncat(out, "\n", cap - strlen(out) - 1);
            kp[kl - 5] = '\0';
        }
        if (v->type == YAML_SEQUENCE_NODE && v->data.sequence.items.top > v->data.sequence.items.start &&
            yaml_document_get_node(doc, v->data.sequence.items.start[0])->type ==
                YAML_MAPPING_NODE) {
            strncat(kp, "[]", sizeof(kp) - strlen(kp) - 1);
            for (yaml_node_item_t *it = v->data.sequence.items.start;
                 it < v->data.sequence.items.top; it++)
                collect_paths(doc, yaml_document_get_node(doc, *it), kp, out, cap);
        } else if (v->type == YAML_MAPPING_NODE) {
            collect_paths(doc, v, kp, out, cap);
        }
        strncat(out, kp, cap - strlen(out) - 1);
        strncat(out, "\n", cap - strlen(out) - 1);
    }
}

/* Every key path the reference lists under heading must be set in the example file. */
static void check_example_covers(const char *md, const char *heading, const char *next,
                                 const char *example)
{
    char *text = slurp(example);
    assert_non_null(text);
    yaml_parser_t parser;
    yaml_document_t doc;
    static char paths[65536];
    assert_true(yaml_parser_initialize(&parser));
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    assert_true(yaml_parser_load(&parser, &doc));
    paths[0] = '\n';
    paths[1] = '\0';
    collect_paths(&doc, yaml_document_get_root_node(&doc), "", paths, sizeof(paths));
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    free(text);

    const char *sec = strstr(md, heading);
    assert_non_null(sec);
    const char *end = next ? strstr(sec, next) : sec + strlen(sec);
    int nkeys = 0;
    for (const char *line = strstr(sec, "\n| `"); line && line < end;
         line = strstr(line + 1, "\n| `")) {
        const char *k0 = line + 4, *k1 = strchr(k0, '`');
        char want[300];
        snprintf(want, sizeof(want), "\n%.*s\n", (int)(k1 - k0), k0);
        if (!strstr(paths, want))
            fail_msg("%s does not set key %.*s", example, (int)(k1 - k0), k0);
        nkeys++;
    }
    assert_true(nkeys > 20); /* the scan really found the tables */
}

static void test_config_examples(void **state)
{
    sg_gateway_config_t g;
    sg_node_config_t n;
    setenv("SANDGATE_NODE_TOKEN", "example-node-token-0123", 1);
    setenv("SANDGATE_TOKEN_SECRET", "example-token-secret-0123", 1);
    assert_int_equal(sg_config_load_gateway(SG_SOURCE_DIR "/deploy/gateway.example.yaml", &g, err,
                                            sizeof(err)),
                     0);
    assert_string_equal(err, "");
    assert_int_equal(g.nlisteners, 2);
    assert_int_equal(g.listeners[1].ncerts, 1);
    sg_config_free_gateway(&g);
    assert_int_equal(sg_config_load_node(SG_SOURCE_DIR "/deploy/node.example.yaml", &n, err,
                                         sizeof(err)),
                     0);
    assert_string_equal(err, "");
    assert_int_equal(n.nlabels, 2);
    sg_config_free_node(&n);
    unsetenv("SANDGATE_NODE_TOKEN");
    unsetenv("SANDGATE_TOKEN_SECRET");

    char *gen = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&gen, &len);
    sg_config_reference_markdown(f);
    fclose(f);
    check_example_covers(gen, "\n## Gateway\n", "\n## Node agent\n",
                         SG_SOURCE_DIR "/deploy/gateway.example.yaml");
    check_example_covers(gen, "\n## Node agent\n", NULL, SG_SOURCE_DIR "/deploy/node.example.yaml");
    free(gen);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_gateway_defaults),
        cmocka_unit_test(test_config_node_defaults),
        cmocka_unit_test(test_config_values),
        cmocka_unit_test(test_config_sizes),
        cmocka_unit_test(test_config_syntax_error),
        cmocka_unit_test(test_config_unknown_key),
        cmocka_unit_test(test_config_wrong_type),
        cmocka_unit_test(test_config_out_of_range),
        cmocka_unit_test(test_config_bad_enum),
        cmocka_unit_test(test_config_missing_required),
        cmocka_unit_test(test_config_duplicate_key),
        cmocka_unit_test(test_config_too_many_entries),
        cmocka_unit_test(test_config_validation),
        cmocka_unit_test(test_config_error_buffer_truncated),
        cmocka_unit_test(test_config_env_substitution),
        cmocka_unit_test(test_config_secret_files),
        cmocka_unit_test(test_config_load_file),
        cmocka_unit_test(test_config_print_masks_secrets),
        cmocka_unit_test(test_config_reference_doc_current),
        cmocka_unit_test(test_config_examples),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
