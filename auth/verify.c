/*
 * Request authentication: X-API-Key -> team identity, async on the worker's loop.
 *
 * Per-worker state, so no locks: a set-associative cache (4 ways per set, bounded by
 * cache_size) of key hash -> identity with a positive TTL (capped by the key's expiry) and a
 * short negative TTL, and a failure throttle per client address in a table of the same shape.
 * Revocation and blocking reach every worker within the positive TTL. last_used_at is written
 * at most once a minute per key and worker, fire-and-forget. When PostgreSQL cannot answer, an
 * uncached key gets UNAVAILABLE (503): never a guess.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <libpq-fe.h>
#include "auth/auth.h"

#define WAYS 4
#define LAST_USED_EVERY_MS 60000

typedef struct {
    uint8_t hash[32];
    bool used, negative;
    sg_auth_status_t neg_status;
    long long expires_ms, touched_ms, last_used_write_ms;
    sg_auth_identity_t id;
} cache_entry_t;

typedef struct {
    char addr[48];
    bool used;
    long long window_start_ms;
    int failures;
} throttle_entry_t;

struct sg_auth {
    sg_pg_t *pg;
    sg_auth_options_t opt;
    cache_entry_t *cache;
    size_t nsets;
    throttle_entry_t *thr;
    size_t thr_sets;
};

struct sg_auth_pending {
    sg_auth_t *a;
    sg_auth_cb cb;
    void *data;
    uint8_t hash[32];
    char hexhash[65];
    char addr[48];
};

static atomic_uint_fast64_t cache_hits, cache_misses;

static const char verify_sql[] =
    "SELECT k.id, t.id, t.name, t.blocked, t.max_concurrent, t.max_timeout_s, t.max_vcpu,"
    " t.max_mem_mb, k.revoked_at IS NOT NULL OR (k.expires_at IS NOT NULL AND k.expires_at <= now()),"
    " COALESCE(floor(extract(epoch FROM k.expires_at) * 1000)::bigint, 0)"
    " FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE k.hash = $1";

static size_t pow2_at_least(size_t n)
{
    size_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

static uint64_t h64(const void *p, size_t n)
{
    /* FNV-1a: only spreads entries over sets; the key material is already a SHA-256. */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ ((const uint8_t *)p)[i]) * 1099511628211ull;
    return h;
}

sg_auth_t *sg_auth_new(sg_pg_t *pg, const sg_auth_options_t *opt)
{
    sg_auth_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->pg = pg;
    a->opt = *opt;
    a->nsets = pow2_at_least((size_t)(opt->cache_size > WAYS ? opt->cache_size : WAYS) / WAYS);
    a->thr_sets = 1024; /* 4096 addresses tracked; beyond that the oldest windows are dropped */
    a->cache = calloc(a->nsets * WAYS, sizeof(cache_entry_t));
    a->thr = calloc(a->thr_sets * WAYS, sizeof(throttle_entry_t));
    if (a->cache == NULL || a->thr == NULL) {
        sg_auth_free(a);
        return NULL;
    }
    return a;
}

void sg_auth_free(sg_auth_t *a)
{
    if (a == NULL)
        return;
    free(a->cache);
    free(a->thr);
    free(a);
}

void sg_auth_cache_stats(uint64_t *hits, uint64_t *misses)
{
    *hits = atomic_load(&cache_hits);
    *misses = atomic_load(&cache_misses);
}

int sg_auth_http_status(sg_auth_status_t s, const char **message)
{
    switch (s) {
    case SG_AUTH_OK:
        *message = "ok";
        return 200;
    case SG_AUTH_MISSING:
        *message = "Missing API key: set the X-API-Key header";
        return 401;
    case SG_AUTH_BADFORMAT:
        *message = "Invalid API key format";
        return 401;
    case SG_AUTH_INVALID:
        *message = "Invalid API key";
        return 401;
    case SG_AUTH_BLOCKED:
        *message = "Team is blocked";
        return 403;
    case SG_AUTH_THROTTLED:
        *message = "Too many failed authentication attempts; retry later";
        return 429;
    case SG_AUTH_UNAVAILABLE:
        *message = "Authentication is unavailable: the database cannot be reached";
        return 503;
    }
    *message = "error";
    return 500;
}

/* ---- cache ----------------------------------------------------------------------------------- */

static cache_entry_t *cache_find(sg_auth_t *a, const uint8_t hash[32], long long now)
{
    cache_entry_t *set = &a->cache[(h64(hash, 32) & (a->nsets - 1)) * WAYS];
    for (int i = 0; i < WAYS; i++)
        if (set[i].used && set[i].expires_ms > now && memcmp(set[i].hash, hash, 32) == 0)
            return &set[i];
    return NULL;
}

static cache_entry_t *cache_slot(sg_auth_t *a, const uint8_t hash[32], long long now)
{
    cache_entry_t *set = &a->cache[(h64(hash, 32) & (a->nsets - 1)) * WAYS], *victim = &set[0];
    for (int i = 0; i < WAYS; i++) {
        if (!set[i].used || set[i].expires_ms <= now || memcmp(set[i].hash, hash, 32) == 0)
            return &set[i];
        if (set[i].touched_ms < victim->touched_ms)
            victim = &set[i];
    }
    return victim; /* least recently used of the set */
}

/* ---- throttle -------------------------------------------------------------------------------- */

static throttle_entry_t *thr_get(sg_auth_t *a, const char *addr, long long now, bool create)
{
    long long window = (long long)a->opt.fail_window_s * 1000;
    throttle_entry_t *set = &a->thr[(h64(addr, strlen(addr)) & (a->thr_sets - 1)) * WAYS];
    throttle_entry_t *victim = &set[0];
    for (int i = 0; i < WAYS; i++) {
        if (set[i].used && strcmp(set[i].addr, addr) == 0) {
            if (now - set[i].window_start_ms >= window) {
                set[i].window_start_ms = now;
                set[i].failures = 0;
            }
            return &set[i];
        }
        if (!set[i].used || set[i].window_start_ms < victim->window_start_ms)
            victim = &set[i];
    }
    if (!create)
        return NULL;
    memset(victim, 0, sizeof(*victim));
    victim->used = true;
    snprintf(victim->addr, sizeof(victim->addr), "%s", addr);
    victim->window_start_ms = now;
    return victim;
}

static int throttled(sg_auth_t *a, const char *addr, long long now)
{
    if (a->opt.fail_threshold <= 0 || addr == NULL)
        return 0;
    throttle_entry_t *t = thr_get(a, addr, now, false);
    if (t == NULL || t->failures < a->opt.fail_threshold)
        return 0;
    long long left = t->window_start_ms + (long long)a->opt.fail_window_s * 1000 - now;
    return (int)(left / 1000) + 1;
}

static void note_failure(sg_auth_t *a, const char *addr, long long now)
{
    if (a->opt.fail_threshold <= 0 || addr == NULL)
        return;
    throttle_entry_t *t = thr_get(a, addr, now, true);
    t->failures++;
}

/* ---- look-up --------------------------------------------------------------------------------- */

static void on_last_used(sg_pg_t *pg, PGresult *res, void *data)
{
    /* fire-and-forget: a lost update only delays last_used_at */
}

static void touch_last_used(sg_auth_t *a, cache_entry_t *e, long long now)
{
    if (now - e->last_used_write_ms < LAST_USED_EVERY_MS)
        return;
    e->last_used_write_ms = now;
    const char *p[] = {e->id.key_id};
    sg_pg_query(a->pg, "UPDATE api_keys SET last_used_at = now() WHERE id = $1", 1, p,
                on_last_used, NULL);
}

static void result_from_entry(sg_auth_t *a, cache_entry_t *e, const char *addr, long long now,
                              sg_auth_result_t *res)
{
    memset(res, 0, sizeof(*res));
    res->cached = true;
    if (e->negative) {
        res->status = e->neg_status;
        note_failure(a, addr, now);
        return;
    }
    res->id = e->id;
    res->status = SG_AUTH_OK;
    touch_last_used(a, e, now);
}

static void on_row(sg_pg_t *pg, PGresult *r, void *data)
{
    sg_auth_pending_t *p = data;
    sg_auth_t *a = p->a;
    sg_auth_result_t res = {0};
    long long now = sg_now_ms();

    if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) {
        res.status = SG_AUTH_UNAVAILABLE; /* fail closed, and cache nothing */
        goto done;
    }
    cache_entry_t *e = cache_slot(a, p->hash, now);
    memset(e, 0, sizeof(*e));
    memcpy(e->hash, p->hash, 32);
    e->used = true;
    e->touched_ms = now;
    if (PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 8), "t") == 0) {
        e->negative = true;
        e->neg_status = SG_AUTH_INVALID;
        e->expires_ms = now + a->opt.negative_ttl_ms;
    } else {
        sg_auth_identity_t *id = &e->id;
        snprintf(id->key_id, sizeof(id->key_id), "%s", PQgetvalue(r, 0, 0));
        snprintf(id->team_id, sizeof(id->team_id), "%s", PQgetvalue(r, 0, 1));
        snprintf(id->team_name, sizeof(id->team_name), "%s", PQgetvalue(r, 0, 2));
        id->max_concurrent = atoi(PQgetvalue(r, 0, 4));
        id->max_timeout_s = atoi(PQgetvalue(r, 0, 5));
        id->max_vcpu = atoi(PQgetvalue(r, 0, 6));
        id->max_mem_mb = atoi(PQgetvalue(r, 0, 7));
        long long key_exp = atoll(PQgetvalue(r, 0, 9));
        e->expires_ms = now + a->opt.positive_ttl_ms;
        if (key_exp && key_exp < e->expires_ms)
            e->expires_ms = key_exp; /* an expiring key stops working on time */
        if (strcmp(PQgetvalue(r, 0, 3), "t") == 0) {
            e->negative = true;
            e->neg_status = SG_AUTH_BLOCKED;
        }
    }
    if (a->opt.positive_ttl_ms == 0 && !e->negative)
        e->used = false; /* caching disabled */
    if (e->negative) {
        res.status = e->neg_status;
        if (e->neg_status == SG_AUTH_INVALID)
            note_failure(a, p->addr, now);
    } else {
        res.status = SG_AUTH_OK;
        res.id = e->id;
        touch_last_used(a, e, now);
    }
done:
    if (p->cb)
        p->cb(&res, p->data);
    free(p);
}

int sg_auth_check(sg_auth_t *a, const char *key, size_t keylen, const char *client_addr,
                  sg_auth_result_t *res, sg_auth_cb cb, void *data, sg_auth_pending_t **pending)
{
    long long now = sg_now_ms();
    uint8_t raw[SG_AUTH_KEY_RAW], hash[32];
    memset(res, 0, sizeof(*res));

    if ((res->retry_after_s = throttled(a, client_addr, now)) > 0) {
        res->status = SG_AUTH_THROTTLED;
        return 1;
    }
    if (key == NULL || keylen == 0) {
        res->status = SG_AUTH_MISSING;
        note_failure(a, client_addr, now);
        return 1;
    }
    if (sg_auth_key_parse(key, keylen, raw) != 0) {
        res->status = SG_AUTH_BADFORMAT;
        note_failure(a, client_addr, now);
        return 1;
    }
    sg_sha256(raw, sizeof(raw), hash);
    cache_entry_t *e = cache_find(a, hash, now);
    if (e) {
        atomic_fetch_add(&cache_hits, 1);
        e->touched_ms = now;
        result_from_entry(a, e, client_addr, now, res);
        return 1;
    }
    atomic_fetch_add(&cache_misses, 1);
    sg_auth_pending_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return SG_ENOMEM;
    p->a = a;
    p->cb = cb;
    p->data = data;
    memcpy(p->hash, hash, 32);
    sg_hex_encode(hash, 32, p->hexhash);
    snprintf(p->addr, sizeof(p->addr), "%s", client_addr ? client_addr : "");
    const char *params[] = {p->hexhash};
    if (sg_pg_query(a->pg, verify_sql, 1, params, on_row, p) == NULL) {
        free(p);
        return SG_ENOMEM;
    }
    *pending = p;
    return 0;
}

void sg_auth_cancel(sg_auth_pending_t *p)
{
    p->cb = NULL;
}
