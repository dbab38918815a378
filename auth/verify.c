/*
 * Request authentication: X-API-Key -> team identity, async on the worker's loop.
 *
 * One cache and one throttle for the whole process, shared by every worker under a mutex (held
 * for a few hundred nanoseconds: a look-up in a 4-way set): a set-associative cache (bounded by
 * cache_size) of key hash -> identity with a positive TTL (capped by the key's expiry) and a
 * short negative TTL, and a failure throttle per client address in a table of the same shape.
 * Shared, because a client's connections land on any worker: per-worker tables would multiply
 * the throttle's threshold and let a cached key fail over to an uncached worker when PostgreSQL
 * is down. Revocation and blocking take effect within the positive TTL. last_used_at is written
 * at most once a minute per key and worker, fire-and-forget. When PostgreSQL cannot answer, an
 * uncached key gets UNAVAILABLE (503): never a guess.
 */
#include <pthread.h>
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

typedef struct {
    pthread_mutex_t lock;
    int refs;
    sg_auth_options_t opt;
    cache_entry_t *cache;
    size_t nsets;
    throttle_entry_t *thr;
    size_t thr_sets;
} shared_t;

struct sg_auth {
    sg_pg_t *pg;
    shared_t *sh;
};

static pthread_mutex_t shared_init_lock = PTHREAD_MUTEX_INITIALIZER;
static shared_t *shared;

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

static shared_t *shared_get(const sg_auth_options_t *opt)
{
    pthread_mutex_lock(&shared_init_lock);
    if (shared == NULL) {
        shared_t *sh = calloc(1, sizeof(*sh));
        if (sh == NULL)
            goto out;
        pthread_mutex_init(&sh->lock, NULL);
        sh->opt = *opt;
        sh->nsets = pow2_at_least((size_t)(opt->cache_size > WAYS ? opt->cache_size : WAYS) / WAYS);
        sh->thr_sets = 1024; /* 4096 addresses tracked; beyond that the oldest windows go */
        sh->cache = calloc(sh->nsets * WAYS, sizeof(cache_entry_t));
        sh->thr = calloc(sh->thr_sets * WAYS, sizeof(throttle_entry_t));
        if (sh->cache == NULL || sh->thr == NULL) {
            free(sh->cache);
            free(sh->thr);
            free(sh);
            goto out;
        }
        shared = sh;
    }
    shared->refs++;
out:
    pthread_mutex_unlock(&shared_init_lock);
    return shared;
}

sg_auth_t *sg_auth_new(sg_pg_t *pg, const sg_auth_options_t *opt)
{
    sg_auth_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->pg = pg;
    if ((a->sh = shared_get(opt)) == NULL) {
        free(a);
        return NULL;
    }
    return a;
}

void sg_auth_free(sg_auth_t *a)
{
    if (a == NULL)
        return;
    pthread_mutex_lock(&shared_init_lock);
    if (--a->sh->refs == 0) {
        free(a->sh->cache);
        free(a->sh->thr);
        pthread_mutex_destroy(&a->sh->lock);
        free(a->sh);
        shared = NULL;
    }
    pthread_mutex_unlock(&shared_init_lock);
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
    cache_entry_t *set = &a->sh->cache[(h64(hash, 32) & (a->sh->nsets - 1)) * WAYS];
    for (int i = 0; i < WAYS; i++)
        if (set[i].used && set[i].expires_ms > now && sg_ct_equal(set[i].hash, hash, 32))
            return &set[i];
    return NULL;
}

static cache_entry_t *cache_slot(sg_auth_t *a, const uint8_t hash[32], long long now)
{
    cache_entry_t *set = &a->sh->cache[(h64(hash, 32) & (a->sh->nsets - 1)) * WAYS], *victim = &set[0];
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
    long long window = (long long)a->sh->opt.fail_window_s * 1000;
    throttle_entry_t *set = &a->sh->thr[(h64(addr, strlen(addr)) & (a->sh->thr_sets - 1)) * WAYS];
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
    if (a->sh->opt.fail_threshold <= 0 || addr == NULL)
        return 0;
    throttle_entry_t *t = thr_get(a, addr, now, false);
    if (t == NULL || t->failures < a->sh->opt.fail_threshold)
        return 0;
    long long left = t->window_start_ms + (long long)a->sh->opt.fail_window_s * 1000 - now;
    return (int)(left / 1000) + 1;
}

static void note_failure(sg_auth_t *a, const char *addr, long long now)
{
    if (a->sh->opt.fail_threshold <= 0 || addr == NULL)
        return;
    throttle_entry_t *t = thr_get(a, addr, now, true);
    t->failures++;
}

/* ---- look-up --------------------------------------------------------------------------------- */

static void on_last_used(sg_pg_t *pg, PGresult *res, void *data)
{
    /* fire-and-forget: a lost update only delays last_used_at */
}

/* Under the lock: is a last_used_at write due for this entry? Copies the key id out. */
static bool due_last_used(cache_entry_t *e, long long now, char key_id[37])
{
    if (now - e->last_used_write_ms < LAST_USED_EVERY_MS)
        return false;
    e->last_used_write_ms = now;
    memcpy(key_id, e->id.key_id, 37);
    return true;
}

static void write_last_used(sg_auth_t *a, const char *key_id)
{
    const char *p[] = {key_id};
    sg_pg_query(a->pg, "UPDATE api_keys SET last_used_at = now() WHERE id = $1", 1, p,
                on_last_used, NULL);
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
    bool touch = false;
    char key_id[37] = "";
    pthread_mutex_lock(&a->sh->lock);
    cache_entry_t *e = cache_slot(a, p->hash, now);
    memset(e, 0, sizeof(*e));
    memcpy(e->hash, p->hash, 32);
    e->used = true;
    e->touched_ms = now;
    if (PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 8), "t") == 0) {
        e->negative = true;
        e->neg_status = SG_AUTH_INVALID;
        e->expires_ms = now + a->sh->opt.negative_ttl_ms;
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
        e->expires_ms = now + a->sh->opt.positive_ttl_ms;
        if (key_exp && key_exp < e->expires_ms)
            e->expires_ms = key_exp; /* an expiring key stops working on time */
        if (strcmp(PQgetvalue(r, 0, 3), "t") == 0) {
            e->negative = true;
            e->neg_status = SG_AUTH_BLOCKED;
        }
    }
    if (a->sh->opt.positive_ttl_ms == 0 && !e->negative)
        e->used = false; /* caching disabled */
    if (e->negative) {
        res.status = e->neg_status;
        if (e->neg_status == SG_AUTH_INVALID)
            note_failure(a, p->addr, now);
    } else {
        res.status = SG_AUTH_OK;
        res.id = e->id;
        touch = due_last_used(e, now, key_id);
    }
    pthread_mutex_unlock(&a->sh->lock);
    if (touch)
        write_last_used(a, key_id);
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

    int answered = 1;
    bool touch = false;
    char key_id[37];
    bool parsed = key && keylen && sg_auth_key_parse(key, keylen, raw) == 0;
    if (parsed)
        sg_sha256(raw, sizeof(raw), hash);

    pthread_mutex_lock(&a->sh->lock);
    cache_entry_t *e;
    if ((res->retry_after_s = throttled(a, client_addr, now)) > 0) {
        res->status = SG_AUTH_THROTTLED;
    } else if (!parsed) {
        res->status = key == NULL || keylen == 0 ? SG_AUTH_MISSING : SG_AUTH_BADFORMAT;
        note_failure(a, client_addr, now);
    } else if ((e = cache_find(a, hash, now)) != NULL) {
        atomic_fetch_add(&cache_hits, 1);
        e->touched_ms = now;
        res->cached = true;
        if (e->negative) {
            res->status = e->neg_status;
            if (e->neg_status == SG_AUTH_INVALID)
                note_failure(a, client_addr, now);
        } else {
            res->status = SG_AUTH_OK;
            res->id = e->id;
            touch = due_last_used(e, now, key_id);
        }
    } else {
        answered = 0;
    }
    pthread_mutex_unlock(&a->sh->lock);
    if (touch)
        write_last_used(a, key_id);
    if (answered)
        return 1;
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
