/*
 * config: the schema tables of the gateway and node agent configs, the one source of keys,
 * types, defaults, ranges, secrecy and documentation (docs/configuration.md is generated from
 * here, and the examples in deploy/ are checked against it).
 *
 * Offsets are relative to the struct a table describes; the anonymous nested structs of
 * config.h are named with __typeof__ (SEC) so their tables stay plain offsetof lists. Defaults
 * are text, converted by the loader exactly like input, so a default outside its own range is
 * caught by the unit test that loads a minimal config. The terminator of a table may carry a
 * post hook for checks across fields; hooks must cope with fields left unset by earlier errors.
 */
#include "config/schema.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define SEC(T, m) __typeof__(((T *)0)->m)

#define STR(T, m, def_, flags_, minlen, check_, doc_)                                              \
    {.name = #m, .type = SG__T_STR, .off = offsetof(T, m), .def = (def_), .flags = (flags_),      \
     .min = (minlen), .check = (check_), .doc = (doc_)}
#define INTF(T, m, def_, lo, hi, flags_, doc_)                                                     \
    {.name = #m, .type = SG__T_INT, .off = offsetof(T, m), .def = (def_), .min = (lo),            \
     .max = (hi), .flags = (flags_), .doc = (doc_)}
#define INT(T, m, def_, lo, hi, doc_) INTF(T, m, def_, lo, hi, 0, doc_)
#define DBL(T, m, def_, lo, hi, doc_)                                                              \
    {.name = #m, .type = SG__T_DBL, .off = offsetof(T, m), .def = (def_), .min = (lo),            \
     .max = (hi), .doc = (doc_)}
#define SIZE(T, m, def_, lo, hi, doc_)                                                             \
    {.name = #m, .type = SG__T_SIZE, .off = offsetof(T, m), .def = (def_), .min = (lo),           \
     .max = (hi), .doc = (doc_)}
#define BOOL(T, m, def_, doc_)                                                                     \
    {.name = #m, .type = SG__T_BOOL, .off = offsetof(T, m), .def = (def_), .doc = (doc_)}
#define ENUM(T, m, def_, values, doc_)                                                             \
    {.name = #m, .type = SG__T_ENUM, .off = offsetof(T, m), .def = (def_), .enums = (values),     \
     .doc = (doc_)}
#define SECTION(T, m, sub_, doc_)                                                                  \
    {.name = #m, .type = SG__T_SECTION, .off = offsetof(T, m), .sub = (sub_), .doc = (doc_)}
#define LIST(T, m, countm, sub_, lo, doc_)                                                         \
    {.name = #m, .type = SG__T_LIST, .off = offsetof(T, m), .sub = (sub_),                        \
     .count_off = offsetof(T, countm), .elem_size = sizeof(((T *)0)->m[0]),                       \
     .max_items = sizeof(((T *)0)->m) / sizeof(((T *)0)->m[0]), .min = (lo), .doc = (doc_)}
#define STRLIST(T, m, countm, maxn, check_, doc_)                                                  \
    {.name = #m, .type = SG__T_STRLIST, .off = offsetof(T, m), .count_off = offsetof(T, countm),  \
     .max_items = (maxn), .check = (check_), .doc = (doc_)}
#define STRMAP(T, m, countm, check_, doc_)                                                         \
    {.name = #m, .type = SG__T_STRMAP, .off = offsetof(T, m), .count_off = offsetof(T, countm),   \
     .max_items = sizeof(((T *)0)->m) / sizeof(((T *)0)->m[0]), .check = (check_),               \
     .doc = (doc_)}
#define END(post_) {.name = NULL, .post = (post_)}

#define GW sg_gateway_config_t
#define ND sg_node_config_t

/* ---- validators ------------------------------------------------------------------------------ */

static bool all_chars(const char *s, const char *extra)
{
    for (; *s; s++) {
        if (!isalnum((unsigned char)*s) && !strchr(extra, *s))
            return false;
    }
    return true;
}

static const char *check_host(const char *s)
{
    if (strlen(s) > 253 || !all_chars(s, ".-:[]_"))
        return "not a host name or IP address";
    return NULL;
}

static const char *check_domain(const char *s)
{
    if (strlen(s) > 253 || !all_chars(s, ".-") || s[0] == '.' || s[0] == '-' ||
        s[strlen(s) - 1] == '.' || strstr(s, ".."))
        return "not a DNS name (letters, digits, '-' and '.')";
    return NULL;
}

static const char *check_hostport(const char *s)
{
    const char *colon = strrchr(s, ':');
    char *end;
    if (!colon || colon == s)
        return "expected host:port";
    long port = strtol(colon + 1, &end, 10);
    if (!isdigit((unsigned char)colon[1]) || *end || port < 1 || port > 65535)
        return "expected host:port with a port in 1..65535";
    char host[256];
    size_t hl = (size_t)(colon - s);
    if (hl >= sizeof(host))
        return "host too long";
    memcpy(host, s, hl);
    host[hl] = '\0';
    return check_host(host);
}

static const char *check_redis_address(const char *s)
{
    if (strncmp(s, "unix:", 5) == 0)
        return s[5] == '/' ? NULL : "expected unix:/absolute/path";
    return check_hostport(s);
}

static const char *check_node_id(const char *s)
{
    if (strlen(s) > 64 || !all_chars(s, "_.-"))
        return "must match [a-zA-Z0-9_.-]{1,64}";
    return NULL;
}

static const char *check_ifname(const char *s)
{
    if (strlen(s) > 15 || !all_chars(s, "_.-"))
        return "must be 1..15 characters of [a-zA-Z0-9_.-]";
    return NULL;
}

static const char *check_label_key(const char *s)
{
    if (!*s || strlen(s) > 63 || !all_chars(s, "_.-/"))
        return "must be 1..63 characters of [a-zA-Z0-9_./-]";
    return NULL;
}

static const char *check_cidr(const char *s)
{
    char addr[64];
    const char *slash = strchr(s, '/');
    unsigned char bin[16];
    char *end;
    if (!slash || (size_t)(slash - s) >= sizeof(addr))
        return "expected an address/prefix CIDR";
    memcpy(addr, s, (size_t)(slash - s));
    addr[slash - s] = '\0';
    long prefix = strtol(slash + 1, &end, 10);
    if (!isdigit((unsigned char)slash[1]) || *end)
        return "expected an address/prefix CIDR";
    if (inet_pton(AF_INET, addr, bin) == 1)
        return prefix <= 32 ? NULL : "IPv4 prefix must be 0..32";
    if (inet_pton(AF_INET6, addr, bin) == 1)
        return prefix <= 128 ? NULL : "IPv6 prefix must be 0..128";
    return "not an IPv4 or IPv6 address";
}

/* ---- cross-field checks ---------------------------------------------------------------------- */

static yaml_mark_t mark_of(sg__cfg_ctx_t *c, yaml_node_t *map, const char *key, yaml_mark_t pos)
{
    yaml_node_t *n = sg__cfg_find(c, map, key);
    return n ? n->start_mark : pos;
}

static void post_sandbox(sg__cfg_ctx_t *c, void *base, yaml_node_t *map, yaml_mark_t pos,
                         const char *path)
{
    SEC(GW, sandbox) *sb = base;
    char p[300];
    if (sb->default_timeout_s > sb->max_timeout_s) {
        snprintf(p, sizeof(p), "%s.default_timeout_s", path);
        sg__cfg_error(c, mark_of(c, map, "default_timeout_s", pos), p,
                      "%d is above max_timeout_s (%d)", sb->default_timeout_s, sb->max_timeout_s);
    }
}

static void post_gateway(sg__cfg_ctx_t *c, void *base, yaml_node_t *map, yaml_mark_t pos,
                         const char *path)
{
    sg_gateway_config_t *g = base;
    yaml_node_t *list = sg__cfg_find(c, map, "listeners");
    for (size_t i = 0; i < g->nlisteners; i++) {
        for (size_t j = 0; j < i; j++) {
            const sg_config_listener_t *a = &g->listeners[i], *b = &g->listeners[j];
            if (a->port == 0 || a->port != b->port || !a->address || !b->address ||
                strcmp(a->address, b->address) != 0)
                continue;
            yaml_node_t *it = sg__cfg_item(c, list, i);
            yaml_mark_t m = it ? it->start_mark : pos;
            char p[64];
            snprintf(p, sizeof(p), "listeners[%zu]", i);
            sg__cfg_error(c, m, p, "same address and port as listeners[%zu]", j);
        }
    }
}

static void post_capacity(sg__cfg_ctx_t *c, void *base, yaml_node_t *map, yaml_mark_t pos,
                          const char *path)
{
    SEC(ND, capacity) *cap = base;
    char p[300];
    if (cap->vcpu > 0 && cap->reserve_vcpu >= cap->vcpu) {
        snprintf(p, sizeof(p), "%s.reserve_vcpu", path);
        sg__cfg_error(c, mark_of(c, map, "reserve_vcpu", pos), p,
                      "must be below vcpu (%d) so sandboxes get at least one", cap->vcpu);
    }
    if (cap->memory_mb > 0 && cap->reserve_memory_mb >= cap->memory_mb) {
        snprintf(p, sizeof(p), "%s.reserve_memory_mb", path);
        sg__cfg_error(c, mark_of(c, map, "reserve_memory_mb", pos), p,
                      "must be below memory_mb (%d)", cap->memory_mb);
    }
}

static void post_node(sg__cfg_ctx_t *c, void *base, yaml_node_t *map, yaml_mark_t pos,
                      const char *path)
{
    sg_node_config_t *n = base;
    /* the advertised addresses default to the listen addresses */
    if (!n->api_advertise && n->api_listen && !(n->api_advertise = strdup(n->api_listen)))
        sg__cfg_error(c, pos, "api_advertise", "out of memory");
    if (!n->proxy_advertise && n->proxy_listen &&
        !(n->proxy_advertise = strdup(n->proxy_listen)))
        sg__cfg_error(c, pos, "proxy_advertise", "out of memory");
}

/* ---- tables ---------------------------------------------------------------------------------- */

static const char *const policies[] = {"least-allocated", "most-allocated", "random", NULL};
static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const formats[] = {"logfmt", "json", NULL};
static const char *const runtimes[] = {"runc", "crun", NULL};

static const sg__field_t cert_fields[] = {
    STR(sg_config_cert_t, cert_file, NULL, SG__F_REQUIRED, 0, NULL,
        "PEM certificate chain file (leaf first)."),
    STR(sg_config_cert_t, key_file, NULL, SG__F_REQUIRED, 0, NULL,
        "PEM private key file of that certificate."),
    END(NULL),
};

static const sg__field_t listener_fields[] = {
    STR(sg_config_listener_t, address, "0.0.0.0", 0, 0, check_host, "Address to bind."),
    INTF(sg_config_listener_t, port, NULL, 1, 65535, SG__F_REQUIRED, "TCP port to bind."),
    LIST(sg_config_listener_t, certs, ncerts, cert_fields, 0,
         "TLS certificates (SNI picks one); empty means a plain HTTP listener."),
    BOOL(sg_config_listener_t, http2, "false",
         "Offer HTTP/2 via ALPN on TLS listeners (opt-in: HTTP/2 Rapid Reset guard)."),
    END(NULL),
};

static const sg__field_t redis_fields[] = {
    STR(sg_config_redis_t, address, "127.0.0.1:6379", 0, 0, check_redis_address,
        "Redis server: `host:port` or `unix:/path/to/socket`."),
    STR(sg_config_redis_t, password, NULL, SG__F_SECRET, 0, NULL,
        "Redis AUTH password; unset means no AUTH."),
    INT(sg_config_redis_t, db, "0", 0, 15, "Redis database number."),
    INT(sg_config_redis_t, timeout_ms, "1000", 10, 60000, "Command timeout in milliseconds."),
    END(NULL),
};

static const sg__field_t postgres_fields[] = {
    STR(SEC(GW, postgres), dsn, NULL, SG__F_SECRET | SG__F_REQUIRED, 0, NULL,
        "libpq connection string, e.g. `host=/run/postgresql dbname=sandgate`."),
    INT(SEC(GW, postgres), pool_size, "4", 1, 64, "Connections per worker thread."),
    INT(SEC(GW, postgres), query_timeout_ms, "3000", 100, 60000,
        "Query timeout in milliseconds."),
    END(NULL),
};

static const sg__field_t sandbox_fields[] = {
    INT(SEC(GW, sandbox), default_timeout_s, "300", 1, 86400,
        "Sandbox lifetime when the create request gives none (seconds)."),
    INT(SEC(GW, sandbox), max_timeout_s, "3600", 1, 2592000,
        "Longest lifetime a request may ask for (seconds); teams may have lower caps."),
    INT(SEC(GW, sandbox), default_vcpu, "2", 1, 64, "vCPUs when the template sets none."),
    INT(SEC(GW, sandbox), default_memory_mb, "512", 64, 262144,
        "Memory (MiB) when the template sets none."),
    END(post_sandbox),
};

static const sg__field_t scheduler_fields[] = {
    DBL(SEC(GW, scheduler), cpu_overcommit, "1.0", 1.0, 16.0,
        "vCPUs placed per host CPU."),
    ENUM(SEC(GW, scheduler), policy, "least-allocated", policies,
         "Node choice: spread load, pack nodes, or pick at random."),
    INT(SEC(GW, scheduler), max_attempts, "3", 1, 10, "Nodes tried per sandbox create."),
    INT(SEC(GW, scheduler), node_down_after_ms, "5000", 1000, 600000,
        "A node without a heartbeat for this long gets no new sandboxes."),
    INT(SEC(GW, scheduler), reservation_ttl_ms, "30000", 1000, 600000,
        "Capacity reserved for a create in flight is released after this long."),
    INT(SEC(GW, scheduler), create_timeout_ms, "30000", 1000, 600000,
        "Time a node gets to create a sandbox."),
    END(NULL),
};

static const sg__field_t http_fields[] = {
    SIZE(SEC(GW, http), max_body_bytes, "1MiB", 1024, 1073741824.0,
         "Largest API request body."),
    SIZE(SEC(GW, http), proxy_max_body_bytes, "100MiB", 1024, 68719476736.0,
         "Largest request body proxied to a sandbox (file uploads)."),
    INT(SEC(GW, http), idle_timeout_ms, "610000", 1000, 86400000,
        "Idle keep-alive connections are closed after this long."),
    INT(SEC(GW, http), connect_timeout_ms, "5000", 100, 600000,
        "Timeout connecting to a node's proxy."),
    INT(SEC(GW, http), header_timeout_ms, "10000", 100, 600000,
        "Time a client gets to send request headers (slowloris guard)."),
    INT(SEC(GW, http), max_connections_per_ip, "256", 0, 1000000,
        "Concurrent connections per client address; 0 = unlimited."),
    INT(SEC(GW, http), max_upstream_per_sandbox, "1024", 0, 1000000,
        "Requests in flight to one sandbox, over every client and gateway thread (429 past it); "
        "0 = unlimited."),
    INT(SEC(GW, http), rate_limit_rps, "0", 0, 1000000,
        "Requests per second per client address; 0 = no rate limit."),
    INT(SEC(GW, http), rate_limit_burst, "100", 1, 1000000,
        "Burst allowed above rate_limit_rps."),
    END(NULL),
};

static const sg__field_t auth_fields[] = {
    INT(SEC(GW, auth), positive_ttl_ms, "30000", 0, 3600000,
        "How long a valid API key stays cached."),
    INT(SEC(GW, auth), negative_ttl_ms, "2000", 0, 600000,
        "How long an unknown API key stays cached as invalid."),
    INT(SEC(GW, auth), cache_size, "100000", 16, 10000000, "API key cache entries."),
    INT(SEC(GW, auth), fail_threshold, "20", 1, 1000000,
        "Failed authentications per client address per window before answering 429."),
    INT(SEC(GW, auth), fail_window_s, "60", 1, 86400, "Window of fail_threshold (seconds)."),
    END(NULL),
};

static const sg__field_t gw_log_fields[] = {
    ENUM(SEC(GW, log), level, "info", levels, "Lowest level logged."),
    ENUM(SEC(GW, log), format, "logfmt", formats, "Log line format."),
    END(NULL),
};

static const sg__field_t nd_log_fields[] = {
    ENUM(SEC(ND, log), level, "info", levels, "Lowest level logged."),
    ENUM(SEC(ND, log), format, "logfmt", formats, "Log line format."),
    END(NULL),
};

static const sg__field_t capacity_fields[] = {
    INT(SEC(ND, capacity), vcpu, "0", 0, 4096, "vCPUs offered; 0 = the host's CPU count."),
    INT(SEC(ND, capacity), memory_mb, "0", 0, 16777216,
        "Memory offered (MiB); 0 = the host's memory."),
    INT(SEC(ND, capacity), max_sandboxes, "100", 1, 10000, "Most sandboxes run at once."),
    INT(SEC(ND, capacity), reserve_vcpu, "0", 0, 4096, "vCPUs kept back for the host."),
    INT(SEC(ND, capacity), reserve_memory_mb, "512", 0, 16777216,
        "Memory (MiB) kept back for the host."),
    END(post_capacity),
};

const sg__field_t sg__cfg_gateway_schema[] = {
    LIST(GW, listeners, nlisteners, listener_fields, 1, "Addresses the gateway serves on."),
    STR(GW, domain, NULL, SG__F_REQUIRED, 0, check_domain,
        "Public domain; sandboxes are reached at `<port>-<sandbox>.<domain>`."),
    INT(GW, threads, "0", 0, 64, "Worker threads (event loops); 0 = number of CPUs."),
    SECTION(GW, postgres, postgres_fields, "PostgreSQL (teams, API keys, templates)."),
    SECTION(GW, redis, redis_fields, "Redis (sandbox catalog and node registry)."),
    STR(GW, node_token, NULL, SG__F_SECRET | SG__F_REQUIRED, 16, NULL,
        "Shared secret node agents present to the gateway and the gateway to them."),
    STR(GW, admin_token, NULL, SG__F_SECRET, 16, NULL,
        "Admin API token; unset disables the admin API."),
    STR(GW, token_secret, NULL, SG__F_SECRET | SG__F_REQUIRED, 16, NULL,
        "HMAC key for envd and traffic access tokens."),
    SECTION(GW, sandbox, sandbox_fields, "Sandbox defaults and limits."),
    SECTION(GW, scheduler, scheduler_fields, "Placement of sandboxes on nodes."),
    SECTION(GW, http, http_fields, "HTTP server limits."),
    SECTION(GW, auth, auth_fields, "API key cache and brute-force guard."),
    SECTION(GW, log, gw_log_fields, "Logging."),
    STR(GW, state_dir, ".sandgate", 0, 0, NULL, "Folder for pid files and runtime state."),
    END(post_gateway),
};

const sg__field_t sg__cfg_node_schema[] = {
    STR(ND, id, NULL, SG__F_REQUIRED, 0, check_node_id, "Node id, unique in the cluster."),
    STR(ND, api_listen, "0.0.0.0:7070", 0, 0, check_hostport,
        "`host:port` the node API binds."),
    STR(ND, api_advertise, NULL, 0, 0, check_hostport,
        "`host:port` gateways use to reach the node API; unset = api_listen."),
    STR(ND, proxy_listen, "0.0.0.0:7071", 0, 0, check_hostport,
        "`host:port` the sandbox traffic proxy binds."),
    STR(ND, proxy_advertise, NULL, 0, 0, check_hostport,
        "`host:port` gateways use to reach the proxy; unset = proxy_listen."),
    STR(ND, node_token, NULL, SG__F_SECRET | SG__F_REQUIRED, 16, NULL,
        "Shared secret with the gateways (same value as the gateway's node_token)."),
    SECTION(ND, redis, redis_fields, "Redis (node registry and heartbeats)."),
    SECTION(ND, capacity, capacity_fields, "Resources offered to sandboxes."),
    STRMAP(ND, labels, nlabels, check_label_key,
           "Free-form labels published with the node (e.g. `zone: a`)."),
    STR(ND, templates_dir, "/var/lib/sandgate/templates", 0, 0, NULL,
        "Folder of templates (`<dir>/<name>/rootfs`)."),
    STR(ND, state_dir, "/var/lib/sandgate/node", 0, 0, NULL,
        "Folder for sandbox bundles and runtime state."),
    STR(ND, envd_path, NULL, SG__F_REQUIRED, 0, NULL,
        "The envd bundle folder bind-mounted into every sandbox."),
    ENUM(ND, runtime, "runc", runtimes, "OCI runtime."),
    STR(ND, runtime_path, NULL, 0, 0, NULL, "Path of the runtime binary; unset = found on PATH."),
    STR(ND, network_cidr, "10.11.0.0/16", 0, 0, check_cidr, "Sandbox network."),
    STR(ND, bridge, "sgbr0", 0, 0, check_ifname, "Bridge interface for the sandbox network."),
    STRLIST(ND, protected_addresses, nprotected, 64, check_cidr,
            "Extra CIDRs sandboxes must not reach (control plane, metadata services)."),
    INT(ND, heartbeat_interval_ms, "1000", 100, 60000, "Heartbeat period to Redis."),
    INT(ND, sandbox_grace_ms, "10000", 0, 600000,
        "Time a sandbox gets to stop before it is killed."),
    INT(ND, warm_pool, "4", 0, 256,
        "Containers kept running ahead of any request, per warm template, envd waiting for the "
        "sandbox's env vars and token: a create takes one instead of waiting for the runtime "
        "(about 100 ms with runc). Each costs about 1 MiB and an address; 0 = off."),
    STRLIST(ND, warm_templates, nwarm_templates, 16, NULL,
            "Templates kept warm (see warm_pool); empty = `base` only."),
    SECTION(ND, log, nd_log_fields, "Logging."),
    END(post_node),
};
