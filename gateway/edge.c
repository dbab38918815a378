/*
 * edge: sandbox traffic. The root handler asks sg__edge_handle() first; routing/ decides from the
 * Host (or, on a shared host, the e2b-sandbox-* headers) whether a request is for the API or for
 * a sandbox port. Sandbox requests are looked up in the Redis catalog ({sg}:sbx:<id> -> node ->
 * {sg}:node:<node>.proxy and .heartbeat_ms, one Lua round trip; a sandbox whose node is down gets
 * a JSON 502 at once, not a proxy attempt) through a per-worker cache, checked for the traffic
 * access token when the sandbox disallows public traffic, and proxied to the node proxy with the
 * X-Sandgate-* headers of docs/node-api.md: by edge_proxy.c (streaming, bounded memory) except
 * Upgrade requests, which go through h2o's reverse proxy (h2o_reprocess_request with a hostport
 * override and this worker's own client context, whose websocket timeout lets upgrades tunnel;
 * those use one connection each, the streaming proxy keeps node connections alive).
 *
 * The cache: CACHE_SLOTS direct-mapped entries per worker (bounded memory; a collision evicts),
 * positive entries live POS_TTL_MS (never past the sandbox's end), negative ones NEG_TTL_MS. A
 * kill or expiry seen by any gateway is PUBLISHed on {sg}:edge:gone; every worker holds its own
 * subscriber connection and drops the entry, so a killed sandbox's URL answers 502 at once and at
 * worst after POS_TTL_MS when a message is lost (subscriber reconnecting). A positive entry in
 * the second half of its life that serves a request is looked up again in the background
 * (refresh ahead, one at a time per entry): a sandbox in steady use is never a miss, so no
 * request waits on Redis and a worker's 64 concurrent requests do not all miss together when the
 * entry expires. The refreshed entry replaces the slot only if it still holds that sandbox (an
 * invalidation in between wins).
 * Owns: the cache, the client context and its timeouts, the subscriber. Loop thread only.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>
#include "gateway/internal.h"
#include "routing/routing.h"
#include "scheduler/sched.h"

#define CACHE_SLOTS 4096
#define POS_TTL_MS 1000
#define NEG_TTL_MS 250
#define GONE_CHANNEL "{sg}:edge:gone"
#define RESUB_MS 1000

typedef struct {
    char id[64];          /* "" = empty slot */
    bool found;
    bool public_traffic;
    char proxy[128];      /* node proxy host:port */
    long long node_hb_ms; /* the node's last heartbeat (wall ms), 0 = none */
    long long expires_ms; /* monotonic-free wall ms (sg_now_ms) */
} cache_entry_t;

/* A catalog look-up in flight (worker-owned: it outlives any request that waits for it). */
typedef struct {
    sg__edge_worker_t *e;
    char id[64];
    bool refresh; /* refresh ahead: no request waits; fills only if the slot still holds id */
    bool stale;   /* the sandbox was invalidated meanwhile: the answer is not cached */
    h2o_linklist_t waiters; /* pending_t.link */
} lookup_t;

struct sg__edge_worker {
    sg_worker_t *w;
    h2o_http1client_ctx_t client_ctx;
    h2o_timeout_t io_timeout, ws_timeout, connect_timeout;
    cache_entry_t cache[CACHE_SLOTS];
    lookup_t *inflight[CACHE_SLOTS]; /* the look-up in flight for the slot's id, if any */
    redisAsyncContext *sub;
    uv_timer_t resub;
    bool closing;
    _Atomic uint64_t hits, misses; /* written by this worker, read by /metrics on any */
};

/* A request waiting for a look-up (in its pool: its dispose leaves the waiters). */
typedef struct {
    h2o_req_t *req;
    h2o_linklist_t link;
    sg_routing_t route;
} pending_t;

static const char LOOKUP_LUA[] =
    "local f = redis.call('HMGET', KEYS[1], 'node', 'public', 'end')\n"
    "if not f[1] then return false end\n"
    "local n = redis.call('HMGET', '{sg}:node:' .. f[1], 'proxy', 'heartbeat_ms')\n"
    "return {f[1], f[2] or '1', f[3] or '0', n[1] or '', n[2] or '0'}\n";

static cache_entry_t *slot_of(sg__edge_worker_t *e, const char *id);
static lookup_t *lookup_start(sg__edge_worker_t *e, const char *id, bool refresh);
static void on_lookup(sg_redis_t *r, redisReply *reply, void *data);
static void on_pending_dispose(void *p);
static void forward(sg__edge_worker_t *e, h2o_req_t *req, const sg_routing_t *rt,
                    const cache_entry_t *ent);
static void not_found(h2o_req_t *req, const char *id);
static bool node_down(const cache_entry_t *ent, long long now);
static void node_unreachable(h2o_req_t *req, const char *id);
static void sandbox_502(h2o_req_t *req, const char *id, const char *message, const char *page);
static bool wants_html(h2o_req_t *req);
static void sub_connect(sg__edge_worker_t *e);
static void on_sub_message(redisAsyncContext *ac, void *reply, void *data);
static void on_sub_disconnect(const redisAsyncContext *ac, int status);
static void on_resub(uv_timer_t *t);
static void on_sub_connect(const redisAsyncContext *ac, int status);
static void on_published(sg_redis_t *r, redisReply *reply, void *data);

/* ---- public (gateway-private) functions ---- */

int sg__edge_worker_init(sg_worker_t *w)
{
    sg__edge_worker_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return SG_ENOMEM;
    const sg_gateway_config_t *c = &sg_server.cfg;
    uint64_t idle = c->http.idle_timeout_ms > 0 ? (uint64_t)c->http.idle_timeout_ms : 610000;
    e->w = w;
    h2o_timeout_init(&w->loop, &e->io_timeout, idle);
    h2o_timeout_init(&w->loop, &e->ws_timeout, idle);
    e->client_ctx = w->ctx.proxy.client_ctx; /* loop and getaddr receiver of this context */
    e->client_ctx.io_timeout = &e->io_timeout;
    e->client_ctx.websocket_timeout = &e->ws_timeout;
    e->client_ctx.ssl_ctx = NULL;
    uint64_t conn_ms = c->http.connect_timeout_ms > 0 ? (uint64_t)c->http.connect_timeout_ms : 5000;
    h2o_timeout_init(&w->loop, &e->connect_timeout, conn_ms);
    uv_timer_init(&w->loop, &e->resub);
    e->resub.data = e;
    w->edge = e;
    sub_connect(e);
    return 0;
}

void sg__edge_worker_fini(sg_worker_t *w)
{
    sg__edge_worker_t *e = w->edge;
    if (e == NULL)
        return;
    e->closing = true;
    uv_timer_stop(&e->resub);
    if (e->sub != NULL)
        redisAsyncFree(e->sub); /* runs on_sub_disconnect, which sees `closing` */
    /* the timer handle is closed with the loop's other handles; e stays until then */
}

void sg__edge_stats(sg_worker_t *w, uint64_t *hits, uint64_t *misses)
{
    sg__edge_worker_t *e = w->edge;
    *hits = e != NULL ? atomic_load_explicit(&e->hits, memory_order_relaxed) : 0;
    *misses = e != NULL ? atomic_load_explicit(&e->misses, memory_order_relaxed) : 0;
}

int sg__edge_handle(h2o_req_t *req)
{
    sg_worker_t *w = sg_worker_of(req);
    sg__edge_worker_t *e = w->edge;
    size_t idl = 0, portl = 0;
    const char *hid = sg_http_header(req, "e2b-sandbox-id", &idl);
    const char *hport = sg_http_header(req, "e2b-sandbox-port", &portl);
    sg_routing_t rt;
    switch (sg_routing_resolve(req->authority.base, req->authority.len, sg_server.cfg.domain, hid,
                               idl, hport, portl, &rt)) {
    case SG_ROUTE_API:
        return -1;
    case SG_ROUTE_ERROR:
        sg_gateway_note_route(req, -5);
        if (sg__ratelimit_check(req) == 0)
            sg_http_error(req, 400, rt.error);
        return 0;
    case SG_ROUTE_SANDBOX:
        break;
    }
    sg_gateway_note_route(req, -5);
    if (sg__ratelimit_check(req) != 0)
        return 0;
    if (req->entity.base != NULL && req->entity.len > sg_server.cfg.http.proxy_max_body_bytes) {
        sg_http_error(req, 413, "Request body too large");
        return 0;
    }
    cache_entry_t *ent = slot_of(e, rt.sandbox_id);
    long long now = sg_now_ms();
    if (strcmp(ent->id, rt.sandbox_id) == 0 && ent->expires_ms > now) {
        atomic_fetch_add_explicit(&e->hits, 1, memory_order_relaxed);
        if (ent->found && ent->expires_ms - now < POS_TTL_MS / 2 &&
            e->inflight[ent - e->cache] == NULL)
            lookup_start(e, ent->id, true);
        if (!ent->found)
            not_found(req, rt.sandbox_id);
        else if (node_down(ent, now))
            node_unreachable(req, rt.sandbox_id);
        else
            forward(e, req, &rt, ent);
        return 0;
    }
    atomic_fetch_add_explicit(&e->misses, 1, memory_order_relaxed);
    /* one look-up per sandbox at a time: concurrent misses wait for the one in flight */
    lookup_t *l = e->inflight[ent - e->cache];
    if (l == NULL || l->refresh || l->stale || strcmp(l->id, rt.sandbox_id) != 0)
        l = lookup_start(e, rt.sandbox_id, false);
    if (l == NULL) {
        sg_http_error(req, 503, "Sandbox catalog unavailable");
        return 0;
    }
    pending_t *p = h2o_mem_alloc_shared(&req->pool, sizeof(*p), on_pending_dispose);
    *p = (pending_t){.req = req, .route = rt}; /* link unlinked (NULL) before the insert */
    h2o_linklist_insert(&l->waiters, &p->link);
    return 0;
}

void sg__edge_forget(sg_worker_t *w, const char *sandbox_id, bool publish)
{
    sg__edge_worker_t *e = w->edge;
    if (e == NULL || !sg_routing_id_valid(sandbox_id, strlen(sandbox_id)))
        return;
    cache_entry_t *ent = slot_of(e, sandbox_id);
    if (strcmp(ent->id, sandbox_id) == 0)
        ent->id[0] = '\0';
    lookup_t *l = e->inflight[ent - e->cache];
    if (l != NULL && strcmp(l->id, sandbox_id) == 0)
        l->stale = true; /* its answer may predate the kill: not cached */
    if (publish) {
        const char *argv[] = {"PUBLISH", GONE_CHANNEL, sandbox_id};
        sg_redis_command(w->redis, on_published, NULL, 3, argv, NULL);
    }
}

/* ---- the lookup ---- */

static void on_pending_dispose(void *ptr)
{
    pending_t *p = ptr;
    if (h2o_linklist_is_linked(&p->link))
        h2o_linklist_unlink(&p->link);
}

/* The cache entry of id from a LOOKUP_LUA reply (not an error reply). */
static void fill_entry(cache_entry_t *ent, const char *id, const redisReply *reply, long long now)
{
    memset(ent, 0, sizeof(*ent));
    snprintf(ent->id, sizeof(ent->id), "%s", id);
    ent->expires_ms = now + NEG_TTL_MS;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 5) {
        redisReply **el = reply->element;
        long long end = el[2]->type == REDIS_REPLY_STRING ? atoll(el[2]->str) : 0;
        bool has_proxy = el[3]->type == REDIS_REPLY_STRING && el[3]->len > 0 &&
                         el[3]->len < sizeof(ent->proxy);
        /* an entry past its end is gone even if the reaper has not removed it yet */
        if (has_proxy && end > now) {
            ent->found = true;
            ent->public_traffic = !(el[1]->type == REDIS_REPLY_STRING && strcmp(el[1]->str, "0") == 0);
            memcpy(ent->proxy, el[3]->str, el[3]->len);
            ent->node_hb_ms = el[4]->type == REDIS_REPLY_STRING ? atoll(el[4]->str) : 0;
            ent->expires_ms = now + POS_TTL_MS < end ? now + POS_TTL_MS : end;
        }
    }
}

/* Sends the look-up of id; NULL when it cannot be sent (no memory). The slot remembers it unless
 * another sandbox's look-up holds the slot already. */
static lookup_t *lookup_start(sg__edge_worker_t *e, const char *id, bool refresh)
{
    lookup_t *l = malloc(sizeof(*l));
    if (l == NULL)
        return NULL;
    memset(l, 0, sizeof(*l));
    l->e = e;
    l->refresh = refresh;
    snprintf(l->id, sizeof(l->id), "%s", id);
    h2o_linklist_init_anchor(&l->waiters);
    char key[96];
    snprintf(key, sizeof(key), "{sg}:sbx:%s", id);
    const char *argv[] = {"EVAL", LOOKUP_LUA, "1", key};
    if (sg_redis_command(e->w->redis, on_lookup, l, 4, argv, NULL) == NULL) {
        free(l);
        return NULL;
    }
    lookup_t **slot = &e->inflight[slot_of(e, id) - e->cache];
    if (*slot == NULL)
        *slot = l;
    return l;
}

static void on_lookup(sg_redis_t *r, redisReply *reply, void *data)
{
    lookup_t *l = data;
    sg__edge_worker_t *e = l->e;
    cache_entry_t *ent = slot_of(e, l->id);
    if (e->inflight[ent - e->cache] == l)
        e->inflight[ent - e->cache] = NULL;
    bool failed = reply == NULL || reply->type == REDIS_REPLY_ERROR;
    if (failed && !h2o_linklist_is_empty(&l->waiters))
        sg_log(SG_LOG_WARN, "edge lookup failed",
               SG_LS("error", reply != NULL ? reply->str : "no connection"));
    long long now = sg_now_ms();
    cache_entry_t got;
    if (!failed) {
        fill_entry(&got, l->id, reply, now);
        /* a refresh never revives an entry invalidated (or evicted) meanwhile; a failed look-up
         * leaves the entry to expire: no decision past its TTL without Redis */
        if (!l->stale && (!l->refresh || strcmp(ent->id, l->id) == 0))
            *ent = got;
    }
    while (!h2o_linklist_is_empty(&l->waiters)) {
        pending_t *p = H2O_STRUCT_FROM_MEMBER(pending_t, link, l->waiters.next);
        h2o_linklist_unlink(&p->link);
        if (failed)
            sg_http_error(p->req, 503, "Sandbox catalog unavailable");
        else if (!got.found)
            not_found(p->req, p->route.sandbox_id);
        else if (node_down(&got, now))
            node_unreachable(p->req, p->route.sandbox_id);
        else
            forward(e, p->req, &p->route, &got);
    }
    free(l);
}

/* ---- proxying ---- */

static bool drop_header(const h2o_iovec_t *name)
{
    static const char *const drop[] = {
        "x-sandgate-node-token", "x-sandgate-sandbox-id", "x-sandgate-sandbox-port",
        "x-forwarded-host", "keep-alive", "proxy-connection", "proxy-authorization", "te",
        "trailer", NULL};
    for (size_t i = 0; drop[i] != NULL; i++)
        if (h2o_lcstris(name->base, name->len, drop[i], strlen(drop[i])))
            return true;
    return false;
}

/* http.max_upstream_per_sandbox: the request is counted against its sandbox (every worker) until
 * its pool goes, i.e. when h2o is done with it (a WebSocket only until the upgrade: the tunnel is
 * h2o's). Over the cap: 429 and true. */
static void on_upstream_dispose(void *p) { sg__upstream_release(*(int *)p); }

static bool over_upstream_cap(h2o_req_t *req, const char *sandbox_id)
{
    int cap = sg_server.cfg.http.max_upstream_per_sandbox, count;
    if (cap <= 0)
        return false;
    int *slot = h2o_mem_alloc_shared(&req->pool, sizeof(*slot), on_upstream_dispose);
    *slot = sg__upstream_acquire(sandbox_id, &count);
    if (count <= cap)
        return false;
    sg__upstream_note_over();
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("1"));
    sg_http_error(req, 429, "Too many concurrent requests to this sandbox");
    return true;
}

static void forward(sg__edge_worker_t *e, h2o_req_t *req, const sg_routing_t *rt,
                    const cache_entry_t *ent)
{
    if (!ent->public_traffic && rt->port != SG_ROUTING_ENVD_PORT) {
        size_t tl = 0;
        const char *tok = sg_http_header(req, "e2b-traffic-access-token", &tl);
        if (tok == NULL) {
            sg_http_error(req, 403, "Missing header e2b-traffic-access-token");
            return;
        }
        char want[65], got[65];
        sg_sched_token_with(sg_server.cfg.token_secret, "traffic", rt->sandbox_id, want);
        /* copy at most 64 bytes: a longer value differs from the token anyway (length differs) */
        size_t n = tl < 64 ? tl : 64;
        memcpy(got, tok, n);
        got[n] = '\0';
        if (tl > 64 || !sg_ct_streq(got, want)) {
            sg_http_error(req, 403, "Invalid header e2b-traffic-access-token");
            return;
        }
    }

    if (over_upstream_cap(req, rt->sandbox_id))
        return;

    /* Node proxy address "host:port" or "[v6]:port". */
    const char *colon = strrchr(ent->proxy, ':');
    int port = colon != NULL ? sg_routing_parse_port(colon + 1, strlen(colon + 1)) : -1;
    if (port < 0) {
        sg_http_error(req, 502, "The sandbox's node has no valid proxy address");
        return;
    }
    const char *hb = ent->proxy, *he = colon;
    if (*hb == '[' && he > hb + 1 && he[-1] == ']') {
        hb++;
        he--;
    }

    h2o_headers_t hdrs = {NULL};
    for (size_t i = 0; i < req->headers.size; i++) {
        if (drop_header(req->headers.entries[i].name))
            continue;
        h2o_vector_reserve(&req->pool, &hdrs, hdrs.size + 1);
        hdrs.entries[hdrs.size++] = req->headers.entries[i];
    }
    req->headers = hdrs;
    const sg_gateway_config_t *c = &sg_server.cfg;
    char *portbuf = h2o_mem_alloc_pool(&req->pool, 8);
    int pl = snprintf(portbuf, 8, "%d", rt->port);
    size_t idl = strlen(rt->sandbox_id);
    char *id = h2o_mem_alloc_pool(&req->pool, idl);
    memcpy(id, rt->sandbox_id, idl);
    h2o_add_header_by_str(&req->pool, &req->headers, H2O_STRLIT("x-sandgate-node-token"), 0, NULL,
                          c->node_token, strlen(c->node_token));
    h2o_add_header_by_str(&req->pool, &req->headers, H2O_STRLIT("x-sandgate-sandbox-id"), 0, NULL,
                          id, idl);
    h2o_add_header_by_str(&req->pool, &req->headers, H2O_STRLIT("x-sandgate-sandbox-port"), 0, NULL,
                          portbuf, (size_t)pl);
    if (req->authority.len > 0)
        h2o_add_header_by_str(&req->pool, &req->headers, H2O_STRLIT("x-forwarded-host"), 0, NULL,
                              req->authority.base, req->authority.len);

    if (req->upgrade.base == NULL) {
        /* everything but Upgrade: the streaming proxy with backpressure (edge_proxy.c) */
        sg__edge_proxy(req, &e->connect_timeout, &e->io_timeout,
                       h2o_strdup(&req->pool, hb, (size_t)(he - hb)), (uint16_t)port);
        return;
    }
    /* WebSocket upgrades: h2o's proxy, whose tunnel relays with backpressure */
    h2o_req_overrides_t *ov = h2o_mem_alloc_pool(&req->pool, sizeof(*ov));
    memset(ov, 0, sizeof(*ov));
    ov->client_ctx = &e->client_ctx;
    ov->hostport.host = h2o_strdup(&req->pool, hb, (size_t)(he - hb));
    ov->hostport.port = (uint16_t)port;
    h2o_reprocess_request(req, req->method, req->scheme, req->authority, req->path, ov, 0);
}

static void not_found(h2o_req_t *req, const char *id)
{
    sandbox_502(req, id, "The sandbox was not found",
                "it may have been killed or timed out");
}

/* The scheduler's rule (docs/node-api.md): a node whose last heartbeat is older than
 * scheduler.node_down_after_ms is down and its sandboxes are lost. Its proxy address may answer
 * nothing at all (a hung or partitioned host): proxying would hold the client until the I/O
 * timeout, so the edge answers at once. A node that heartbeats again is served again (the cache
 * entry lives at most POS_TTL_MS). */
static bool node_down(const cache_entry_t *ent, long long now)
{
    return now - ent->node_hb_ms > sg_server.cfg.scheduler.node_down_after_ms;
}

static void node_unreachable(h2o_req_t *req, const char *id)
{
    sandbox_502(req, id, "The sandbox is not reachable: its node is down",
                "its node stopped responding; the sandbox is lost unless the node returns");
}

/* A 502 about a sandbox: a page for browsers, {"sandboxId","message","code"} JSON (E2B's shape)
 * for everything else. page completes "The sandbox <id> ...: <page>." in the HTML. */
static void sandbox_502(h2o_req_t *req, const char *id, const char *message, const char *page)
{
    if (wants_html(req)) {
        static const char fmt[] =
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>%s</title>"
            "</head><body><h1>%s</h1><p>The sandbox <code>%s</code>: %s.</p></body></html>\n";
        size_t cap = sizeof(fmt) + 2 * strlen(message) + strlen(id) + strlen(page);
        char *body = h2o_mem_alloc_pool(&req->pool, cap);
        /* id is [a-z0-9], message and page are constants: nothing to escape */
        int n = snprintf(body, cap, fmt, message, message, id, page);
        req->res.status = 502;
        req->res.reason = "Bad Gateway";
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                       H2O_STRLIT("text/html; charset=utf-8"));
        h2o_send_inline(req, body, (size_t)n);
        return;
    }
    sg_http_json(req, 502, json_pack("{s:s,s:s,s:i}", "sandboxId", id, "message", message, "code", 502));
}

/* Browsers navigating get a page; SDKs and fetch() get JSON (as E2B's edge decides). */
static bool wants_html(h2o_req_t *req)
{
    size_t n = 0;
    const char *v = sg_http_header(req, "sec-fetch-mode", &n);
    if (v != NULL && h2o_lcstris(v, n, H2O_STRLIT("navigate")))
        return true;
    v = sg_http_header(req, "accept", &n);
    return v != NULL && h2o_strstr(v, n, H2O_STRLIT("text/html")) != SIZE_MAX;
}

/* ---- cache ---- */

static cache_entry_t *slot_of(sg__edge_worker_t *e, const char *id)
{
    /* FNV-1a: ids are random, any spread-out hash does */
    uint32_t h = 2166136261u;
    for (const char *s = id; *s != '\0'; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return &e->cache[h % CACHE_SLOTS];
}

/* ---- invalidation: {sg}:edge:gone ---- */

static void on_published(sg_redis_t *r, redisReply *reply, void *data)
{
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        sg_log(SG_LOG_WARN, "edge: publish of a gone sandbox failed",
               SG_LS("error", reply != NULL ? reply->str : "no connection"));
}

static void sub_connect(sg__edge_worker_t *e)
{
    const sg_gateway_config_t *c = &sg_server.cfg;
    const char *addr = c->redis.address;
    redisAsyncContext *ac;
    if (strncmp(addr, "unix:", 5) == 0) {
        ac = redisAsyncConnectUnix(addr + 5);
    } else {
        char host[256];
        const char *colon = strrchr(addr, ':');
        int port = colon != NULL ? atoi(colon + 1) : 6379;
        size_t hl = colon != NULL ? (size_t)(colon - addr) : strlen(addr);
        if (hl >= sizeof(host))
            hl = sizeof(host) - 1;
        memcpy(host, addr, hl);
        host[hl] = '\0';
        ac = redisAsyncConnect(host, port);
    }
    if (ac == NULL || ac->err) {
        if (ac != NULL)
            redisAsyncFree(ac);
        uv_timer_start(&e->resub, on_resub, RESUB_MS, 0);
        return;
    }
    ac->data = e;
    if (redisLibuvAttach(ac, &e->w->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        uv_timer_start(&e->resub, on_resub, RESUB_MS, 0);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_sub_connect);
    redisAsyncSetDisconnectCallback(ac, on_sub_disconnect);
    e->sub = ac;
    if (c->redis.password != NULL && c->redis.password[0] != '\0')
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", c->redis.password);
    /* SUBSCRIBE's callback runs for the confirmation and then for every message */
    redisAsyncCommand(ac, on_sub_message, e, "SUBSCRIBE " GONE_CHANNEL);
}

static void on_sub_message(redisAsyncContext *ac, void *r, void *data)
{
    sg__edge_worker_t *e = data;
    redisReply *reply = r;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)
        return;
    redisReply **el = reply->element;
    if (el[0]->type == REDIS_REPLY_STRING && strcmp(el[0]->str, "message") == 0 &&
        el[2]->type == REDIS_REPLY_STRING)
        sg__edge_forget(e->w, el[2]->str, false);
}

static void on_sub_disconnect(const redisAsyncContext *ac, int status)
{
    sg__edge_worker_t *e = ac->data;
    e->sub = NULL;
    if (e->closing)
        return;
    /* messages published while disconnected are lost: the TTL bounds how stale entries get */
    uv_timer_start(&e->resub, on_resub, RESUB_MS, 0);
}

/* hiredis frees a context whose connect failed without calling the disconnect callback */
static void on_sub_connect(const redisAsyncContext *ac, int status)
{
    sg__edge_worker_t *e = ac->data;
    if (status == REDIS_OK)
        return;
    e->sub = NULL;
    if (!e->closing)
        uv_timer_start(&e->resub, on_resub, RESUB_MS, 0);
}

static void on_resub(uv_timer_t *t)
{
    sg__edge_worker_t *e = t->data;
    if (!e->closing && e->sub == NULL)
        sub_connect(e);
}
