/*
 * auth: teams, API keys and templates in PostgreSQL; request authentication for the gateway.
 *
 * Keys have E2B's format, "e2b_" + 40 lower-case hex digits (20 random bytes from the CTR_DRBG).
 * Only SHA-256 of the 20 raw bytes is stored, with a display prefix and mask. Verification is
 * async on the worker's loop (common/ sg_pg_*), with a per-worker cache (positive and short
 * negative TTLs) and a per-client-address throttle on failures. Fails closed: with PostgreSQL
 * unreachable, only keys already cached pass.
 *
 * The admin and migration functions use blocking libpq: command line only, never on a loop.
 */
#ifndef SG_AUTH_H
#define SG_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "common/common.h"

#define SG_AUTH_KEY_LEN 44 /* "e2b_" + 40 hex */
#define SG_AUTH_KEY_RAW 20

/* ---- keys (pure functions) ------------------------------------------------------------------- */

/* Writes a fresh key (NUL-terminated, SG_AUTH_KEY_LEN chars) into out. 0 or SG_EIO. */
int sg_auth_key_generate(char out[SG_AUTH_KEY_LEN + 1]);
/* Checks the format and decodes the 20 raw bytes. 0 or SG_EINVAL. */
int sg_auth_key_parse(const char *key, size_t len, uint8_t raw[SG_AUTH_KEY_RAW]);
/* Lower-case hex SHA-256 of the raw bytes (what the database stores). */
void sg_auth_key_hash(const uint8_t raw[SG_AUTH_KEY_RAW], char hex[65]);
/* Display mask "e2b_1a2b...9f0e" (out >= 20 bytes). */
void sg_auth_key_mask(const char *key, char *out, size_t cap);

/* ---- schema and admin (blocking; command line only) ------------------------------------------- */

/* Applies the embedded migrations not yet applied, each in its own transaction, under an advisory
 * lock (safe from several processes at once). Progress lines go to out. 0 or negative SG_E*. */
int sg_auth_migrate(const char *dsn, FILE *out, FILE *err);
/* `sandgate team ...` / `sandgate key ...`: argv after the noun. Prints results to out and
 * problems to err; returns a process exit code. */
int sg_auth_admin_team(const char *dsn, int argc, char **argv, FILE *out, FILE *err);
int sg_auth_admin_key(const char *dsn, int argc, char **argv, FILE *out, FILE *err);

/* ---- request authentication (async, one sg_auth_t per worker loop) ------------------------------ */

typedef struct {
    char team_id[37];
    char team_name[129];
    char key_id[37];
    int max_concurrent, max_timeout_s, max_vcpu, max_mem_mb;
} sg_auth_identity_t;

typedef enum {
    SG_AUTH_OK,
    SG_AUTH_MISSING,     /* 401 no key */
    SG_AUTH_BADFORMAT,   /* 401 not e2b_ + 40 hex */
    SG_AUTH_INVALID,     /* 401 unknown, revoked or expired */
    SG_AUTH_BLOCKED,     /* 403 the team is blocked */
    SG_AUTH_THROTTLED,   /* 429 this address failed too often; see retry_after_s */
    SG_AUTH_UNAVAILABLE, /* 503 PostgreSQL unreachable and the key not cached */
} sg_auth_status_t;

typedef struct {
    sg_auth_status_t status;
    int retry_after_s;
    bool cached;
    sg_auth_identity_t id; /* valid when status is OK (team fields also when BLOCKED) */
} sg_auth_result_t;

typedef struct {
    int positive_ttl_ms, negative_ttl_ms;
    int cache_size;
    int fail_threshold, fail_window_s;
} sg_auth_options_t;

typedef struct sg_auth sg_auth_t;
typedef struct sg_auth_pending sg_auth_pending_t;
typedef void (*sg_auth_cb)(const sg_auth_result_t *res, void *data);

/* pg is the worker's pool (borrowed; must outlive the sg_auth_t). Loop thread only. */
sg_auth_t *sg_auth_new(sg_pg_t *pg, const sg_auth_options_t *opt);
void sg_auth_free(sg_auth_t *a);
/* Authenticates key (may be NULL: missing) for a client address. Returns 1 when answered at once
 * (*res filled; cb never runs), 0 when a database look-up was started (cb runs once, later;
 * *pending lets the caller cancel), or SG_ENOMEM. */
int sg_auth_check(sg_auth_t *a, const char *key, size_t keylen, const char *client_addr,
                  sg_auth_result_t *res, sg_auth_cb cb, void *data, sg_auth_pending_t **pending);
/* The callback will not run (the look-up still fills the cache). */
void sg_auth_cancel(sg_auth_pending_t *p);
/* HTTP status and message for a non-OK status. */
int sg_auth_http_status(sg_auth_status_t s, const char **message);
/* Process-wide cache counters (all workers). */
void sg_auth_cache_stats(uint64_t *hits, uint64_t *misses);

#endif
