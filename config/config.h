/*
 * config: the operator's YAML configuration for the gateway and the node agent.
 *
 * One loader (libyaml) walks a typed schema table per section (name, type, offsetof, default,
 * range, flags, doc), so validation, defaults, `config check` output and the documentation come
 * from one source. Errors name file:line:column and the key, with a suggestion for near-miss keys.
 *
 * Values may use ${VAR} and ${VAR:-default} environment substitution. A key marked secret may be
 * given as `<key>_file: PATH` instead, in which case the file's contents (trailing newline
 * stripped) are the value.
 *
 * Loaded configs are plain structs, frozen after load, freed with sg_config_free_*(). Loading
 * does blocking file I/O: call it at start-up only, never on an event loop.
 */
#ifndef SG_CONFIG_H
#define SG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define SG_CONFIG_MAX_LISTENERS 16
#define SG_CONFIG_MAX_CERTS 16
#define SG_CONFIG_MAX_LABELS 32
#define SG_CONFIG_MAX_TEMPLATES 64

typedef struct {
    char *cert_file; /* PEM certificate chain */
    char *key_file;  /* PEM private key */
} sg_config_cert_t;

typedef struct {
    char *address; /* default "0.0.0.0" */
    int port;      /* 1..65535, required */
    sg_config_cert_t certs[SG_CONFIG_MAX_CERTS]; /* empty: plain HTTP listener */
    size_t ncerts;
    bool http2; /* default false (HTTP/2 Rapid Reset guard: opt-in) */
} sg_config_listener_t;

typedef struct {
    char *key;
    char *value;
} sg_config_kv_t;

typedef struct {
    char *address;  /* "host:port" or "unix:/path"; default "127.0.0.1:6379" */
    char *password; /* secret; NULL when unset (password_file allowed) */
    int db;         /* 0..15, default 0 */
    int timeout_ms; /* command timeout, default 1000, 10..60000 */
} sg_config_redis_t;

/* ---- gateway --------------------------------------------------------------------------------- */

typedef struct {
    sg_config_listener_t listeners[SG_CONFIG_MAX_LISTENERS]; /* at least one */
    size_t nlisteners;
    char *domain; /* public domain, e.g. "sandgate.example.com"; required */
    int threads;  /* worker threads (event loops), 0 = number of CPUs; default 0, max 64 */

    struct {
        char *dsn;           /* libpq connection string; secret (dsn_file allowed); required */
        int pool_size;       /* connections per worker thread, default 4, 1..64 */
        int query_timeout_ms; /* default 3000, 100..60000 */
    } postgres;

    sg_config_redis_t redis;

    char *node_token;    /* shared secret with node agents; secret; required (>= 16 chars) */
    char *admin_token;   /* admin API token; secret; NULL = admin API disabled (fails closed) */
    char *token_secret;  /* HMAC key for envd/traffic access tokens; secret; required (>= 16) */

    struct {
        int default_timeout_s; /* default 300, 1..86400 */
        int max_timeout_s;     /* default 3600, 1..2592000; teams may have lower caps */
        int default_vcpu;      /* default 2, 1..64 (template may override) */
        int default_memory_mb; /* default 512, 64..262144 */
    } sandbox;

    struct {
        double cpu_overcommit;  /* default 1.0, 1.0..16.0 */
        char *policy;           /* "least-allocated" (default) | "most-allocated" | "random" */
        int max_attempts;       /* nodes tried per create, default 3, 1..10 */
        int node_down_after_ms; /* default 5000, 1000..600000 */
        int reservation_ttl_ms; /* default 30000, 1000..600000 */
        int create_timeout_ms;  /* default 30000, 1000..600000 */
    } scheduler;

    struct {
        size_t max_body_bytes;   /* default 1 MiB for the API, 1024..1 GiB; sizes accept "10MB" */
        size_t proxy_max_body_bytes; /* default 100 MiB */
        int idle_timeout_ms;     /* default 610000 */
        int connect_timeout_ms;  /* default 5000 */
        int header_timeout_ms;   /* slowloris guard, default 10000 */
        int max_connections_per_ip; /* default 256, 0 = unlimited */
        int max_upstream_per_sandbox; /* requests in flight to one sandbox, default 1024, 0 = unlimited */
        int rate_limit_rps;      /* per client address, default 0 = off */
        int rate_limit_burst;    /* default 100 */
    } http;

    struct {
        int positive_ttl_ms;     /* default 30000, 0..3600000 */
        int negative_ttl_ms;     /* default 2000, 0..600000 */
        int cache_size;          /* entries, default 100000, 16..10000000 */
        int fail_threshold;      /* failed auths per address per window before 429, default 20 */
        int fail_window_s;       /* default 60, 1..86400 */
    } auth;

    struct {
        char *level;  /* debug|info|warn|error, default info */
        char *format; /* logfmt|json, default logfmt */
    } log;

    char *state_dir; /* default ".sandgate" (pid files, etc.) */
} sg_gateway_config_t;

/* ---- node agent ------------------------------------------------------------------------------ */

typedef struct {
    char *id;            /* node id, required, [a-zA-Z0-9_.-]{1,64} */
    char *api_listen;    /* "addr:port" the node API binds, default "0.0.0.0:7070" */
    char *api_advertise; /* "host:port" gateways use; default = api_listen */
    char *proxy_listen;  /* default "0.0.0.0:7071" */
    char *proxy_advertise;
    char *node_token;    /* secret, required */
    sg_config_redis_t redis;

    struct {
        int vcpu;          /* 0 = detect from host; default 0 */
        int memory_mb;     /* 0 = detect; default 0 */
        int max_sandboxes; /* default 100, 1..10000 */
        int reserve_vcpu;  /* kept back for the host, default 0 */
        int reserve_memory_mb; /* default 512 */
    } capacity;

    sg_config_kv_t labels[SG_CONFIG_MAX_LABELS];
    size_t nlabels;
    char *templates_dir; /* folder of templates (<dir>/<name>/rootfs), default "/var/lib/sandgate/templates" */
    char *state_dir;     /* default "/var/lib/sandgate/node" */
    char *envd_path;     /* the envd bundle folder to bind-mount, required */
    char *runtime;       /* "runc" (default) | "crun" */
    char *runtime_path;  /* default: found on PATH */
    char *network_cidr;  /* sandbox network, default "10.11.0.0/16" */
    char *bridge;        /* bridge name, default "sgbr0" */
    char **protected_addresses; /* extra CIDRs sandboxes must not reach (control plane) */
    size_t nprotected;
    int heartbeat_interval_ms; /* default 1000, 100..60000 */
    int sandbox_grace_ms;      /* default 10000 */
    int warm_pool;             /* pre-created containers per warm template, default 4, 0..256 */
    char **warm_templates;     /* empty = "base" */
    size_t nwarm_templates;

    struct {
        char *level;
        char *format;
    } log;
} sg_node_config_t;

/* Loads and validates path into *out (zeroed first). On failure returns a negative SG_E* code,
 * leaves *out freed, and writes every problem found (one per line, "file:line:col: key: what")
 * into err (NUL-terminated, truncated to errlen). Returns 0, SG_EINVAL (bad config), SG_EIO
 * (file unreadable: err is "path: cannot read: why"), SG_ETOOBIG (over 1 MiB) or SG_ENOMEM.
 * Lines are sorted by position, at most 50 are listed, whole lines only; err may be NULL with
 * errlen 0. The caller owns *out and frees it with sg_config_free_*(). Any thread; blocking. */
int sg_config_load_gateway(const char *path, sg_gateway_config_t *out, char *err, size_t errlen);
int sg_config_load_node(const char *path, sg_node_config_t *out, char *err, size_t errlen);

/* Same as the loaders above, but parse the len bytes at data (need not be NUL-terminated); name
 * stands for the file name in error messages. For tests, fuzzing and `config check` on stdin. */
int sg_config_load_gateway_buffer(const char *name, const char *data, size_t len,
                                  sg_gateway_config_t *out, char *err, size_t errlen);
int sg_config_load_node_buffer(const char *name, const char *data, size_t len,
                               sg_node_config_t *out, char *err, size_t errlen);

/* Prints the effective configuration as YAML (every key, defaults included; strings
 * double-quoted, unset strings as null, sizes in bytes), secrets shown as "********". */
void sg_config_print_gateway(FILE *f, const sg_gateway_config_t *cfg);
void sg_config_print_node(FILE *f, const sg_node_config_t *cfg);

void sg_config_free_gateway(sg_gateway_config_t *cfg);
void sg_config_free_node(sg_node_config_t *cfg);

/* Prints a Markdown reference of every key of both configs (path, type, default, range or
 * allowed values, secret, description), generated from the schema tables; docs/configuration.md
 * is this output. */
void sg_config_reference_markdown(FILE *f);

/* Parses a size such as "512", "64KB", "10MB", "1GiB" into bytes; 0 or SG_EINVAL (also on
 * overflow). KB/MB/GB/TB are powers of 1000; K/M/G/T and KiB/MiB/GiB/TiB powers of 1024; units
 * are case-insensitive and may follow a space. */
int sg_config_parse_size(const char *s, size_t *out);

#endif
