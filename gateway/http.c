/*
 * The gateway's root handler and access logger.
 *
 * Every request gets a request id (returned as X-Request-Id, logged with every line about it),
 * is counted in flight for graceful shutdown, and is logged once when h2o disposes it (the
 * logger runs even when the client went away), with its route label and team id carried in
 * req->env (set by whoever learns them). Health, readiness and metrics are answered here; the
 * rest goes to the API router.
 */
#include <string.h>
#include <sys/time.h>
#include "gateway/internal.h"

/* h2o alone accepts about 400 KB of request head; nobody legitimate sends more than this. */
#define SG_MAX_HEADER_BYTES 32768

#define ENV_RID "sg-rid"
#define ENV_ROUTE "sg-route"
#define ENV_TEAM "sg-team"

static void env_set(h2o_req_t *req, const char *name, const char *value, size_t len)
{
    h2o_vector_reserve(&req->pool, &req->env, req->env.size + 2);
    req->env.entries[req->env.size++] = h2o_iovec_init(name, strlen(name));
    req->env.entries[req->env.size++] = h2o_iovec_init(value, len);
}

static h2o_iovec_t env_get(h2o_req_t *req, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i + 1 < req->env.size; i += 2)
        if (req->env.entries[i].len == n && memcmp(req->env.entries[i].base, name, n) == 0)
            return req->env.entries[i + 1];
    return h2o_iovec_init("", 0);
}

void sg_gateway_note_team(h2o_req_t *req, const char *team_id)
{
    env_set(req, ENV_TEAM, team_id, strlen(team_id));
}

void sg_gateway_note_route(h2o_req_t *req, int route)
{
    char *s = h2o_mem_alloc_pool(&req->pool, 12);
    int n = snprintf(s, 12, "%d", route);
    env_set(req, ENV_ROUTE, s, (size_t)n);
}

static uint64_t next_rand(sg_worker_t *w)
{
    /* xorshift64*: request ids need uniqueness, not secrecy */
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return w->rng * 2685821657736338717ull;
}

static void on_ready(h2o_req_t *req, sg_worker_t *w)
{
    bool pg = sg_pg_up(w->pg), redis = sg_redis_connected(w->redis);
    json_t *body = json_pack("{s:s,s:s,s:s}", "status", pg && redis ? "ready" : "unavailable",
                             "postgres", pg ? "up" : "down", "redis", redis ? "up" : "down");
    if (!(pg && redis))
        json_object_set_new(body, "code", json_integer(503)),
            json_object_set_new(body, "message",
                                json_string("a backing service is unreachable"));
    sg_http_json(req, pg && redis ? 200 : 503, body);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    sg_worker_t *w = sg_worker_of(req);
    char *rid = h2o_mem_alloc_pool(&req->pool, 17);
    snprintf(rid, 17, "%016llx", (unsigned long long)next_rand(w));
    env_set(req, ENV_RID, rid, 16);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-request-id"), 0, NULL, rid, 16);
    w->inflight++;

    size_t hbytes = req->path.len + req->authority.len;
    for (size_t i = 0; i < req->headers.size; i++)
        hbytes += req->headers.entries[i].name->len + req->headers.entries[i].value.len;
    if (hbytes > SG_MAX_HEADER_BYTES) {
        sg_http_error(req, 431, "Request headers too large");
        return 0;
    }

    /* Sandbox traffic first: a sandbox's own /health (envd's, which the SDK polls through the
     * e2b-sandbox-* headers) or /metrics must reach the sandbox, not the gateway's. */
    if (sg__edge_handle(req) == 0)
        return 0;
    if (h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/health"))) {
        sg_gateway_note_route(req, -2);
        sg_http_json(req, 200, json_pack("{s:s}", "status", "ok"));
        return 0;
    }
    if (h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/ready"))) {
        sg_gateway_note_route(req, -3);
        on_ready(req, w);
        return 0;
    }
    if (h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/metrics"))) {
        sg_gateway_note_route(req, -4);
        sg__metrics_render(req);
        return 0;
    }
    if (sg__ratelimit_check(req) != 0)
        return 0;
    if (sg__api_dispatch(req) != 0)
        sg_http_error(req, 404, "Not found");
    return 0;
}

static void on_log(h2o_logger_t *self, h2o_req_t *req)
{
    sg_worker_t *w = sg_worker_of(req);
    struct timeval now;
    gettimeofday(&now, NULL);
    int64_t us = (now.tv_sec - req->timestamps.request_begin_at.tv_sec) * 1000000LL +
                 (now.tv_usec - req->timestamps.request_begin_at.tv_usec);
    if (us < 0)
        us = 0;
    h2o_iovec_t route = env_get(req, ENV_ROUTE), rid = env_get(req, ENV_RID),
                team = env_get(req, ENV_TEAM);
    int route_idx = route.len ? atoi(route.base) : -1;
    int status = req->res.status ? req->res.status : 499; /* client closed before a response */
    sg__metrics_observe(w, route_idx, status, (uint64_t)us);
    w->inflight--;

    if (!sg_log_enabled(SG_LOG_INFO))
        return;
    char addr[64], method[16], host[256], path[512], rids[20], teams[40];
    snprintf(method, sizeof(method), "%.*s", (int)req->method.len, req->method.base);
    snprintf(host, sizeof(host), "%.*s", (int)req->authority.len, req->authority.base);
    /* the path without its query: queries may carry tokens */
    size_t plen = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
    snprintf(path, sizeof(path), "%.*s", (int)plen, req->path.base);
    snprintf(rids, sizeof(rids), "%.*s", (int)rid.len, rid.base);
    snprintf(teams, sizeof(teams), "%.*s", (int)team.len, team.base);
    sg_log(SG_LOG_INFO, "access", SG_LS("rid", rids), SG_LS("client", sg_client_addr(req, addr, sizeof(addr))),
           SG_LS("method", method), SG_LS("host", host), SG_LS("path", path),
           SG_LI("status", status), SG_LI("bytes", req->bytes_sent), SG_LD("ms", us / 1000.0),
           SG_LS("team", teams));
}

void sg__http_register(h2o_pathconf_t *pathconf)
{
    h2o_handler_t *h = h2o_create_handler(pathconf, sizeof(*h));
    h->on_req = on_req;
    h2o_logger_t *l = h2o_create_logger(pathconf, sizeof(*l));
    l->log_access = on_log;
}
