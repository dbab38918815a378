/*
 * The API router: matches method + path against the route tables of api_*.c, authenticates
 * (X-API-Key through auth/, or the admin token), then calls the route's handler.
 *
 * An authenticated call's state lives in the request's pool; its dispose hook marks it gone and
 * cancels a pending auth look-up, so a client that leaves mid-look-up never gets a callback into
 * freed memory. Path parameters point into the request's path (pool memory).
 */
#include <string.h>
#include "gateway/internal.h"

static const sg_route_t *const route_tables[] = {
    sg__routes_teams,
    sg__routes_sandboxes,
    sg__routes_admin,
};

#define NTABLES (sizeof(route_tables) / sizeof(route_tables[0]))

int sg__api_route_count(void)
{
    int n = 0;
    for (size_t t = 0; t < NTABLES; t++)
        for (const sg_route_t *r = route_tables[t]; r->method; r++)
            n++;
    return n;
}

const char *sg__api_route_label(int idx)
{
    switch (idx) {
    case -2: return "/health";
    case -3: return "/ready";
    case -4: return "/metrics";
    case -5: return "sandbox-proxy";
    }
    int n = 0;
    for (size_t t = 0; t < NTABLES; t++)
        for (const sg_route_t *r = route_tables[t]; r->method; r++, n++)
            if (n == idx)
                return r->pattern;
    return "other";
}

static const char *route_method_label(int idx)
{
    int n = 0;
    for (size_t t = 0; t < NTABLES; t++)
        for (const sg_route_t *r = route_tables[t]; r->method; r++, n++)
            if (n == idx)
                return r->method;
    return "";
}

const char *sg__api_route_method(int idx)
{
    return route_method_label(idx);
}

/* Matches path (no query) against pattern; fills params. */
static bool match(const char *pattern, const char *path, size_t plen, h2o_iovec_t *params,
                  size_t *nparams)
{
    size_t pi = 0, si = 0, np = 0;
    while (pattern[pi] && si <= plen) {
        if (pattern[pi] == '{') {
            const char *end = strchr(pattern + pi, '}');
            size_t start = si;
            while (si < plen && path[si] != '/')
                si++;
            if (si == start || np >= SG_API_MAX_PARAMS)
                return false;
            params[np++] = h2o_iovec_init(path + start, si - start);
            pi = (size_t)(end - pattern) + 1;
            continue;
        }
        if (si >= plen || pattern[pi] != path[si])
            return false;
        pi++, si++;
    }
    /* a trailing slash is tolerated, as most routers do */
    if (pattern[pi] == '\0' && (si == plen || (si + 1 == plen && path[si] == '/'))) {
        *nparams = np;
        return true;
    }
    return false;
}

static void on_call_dispose(void *p)
{
    sg_api_call_t *call = p;
    call->gone = true;
    if (call->pending) {
        sg_auth_cancel(call->pending);
        call->pending = NULL;
    }
}

static void finish_auth(sg_api_call_t *call, const sg_route_t *route, const sg_auth_result_t *res)
{
    if (res->status != SG_AUTH_OK) {
        const char *msg;
        int status = sg_auth_http_status(res->status, &msg);
        if (res->status == SG_AUTH_THROTTLED) {
            char *ra = h2o_mem_alloc_pool(&call->req->pool, 16);
            int n = snprintf(ra, 16, "%d", res->retry_after_s);
            h2o_add_header(&call->req->pool, &call->req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                           ra, (size_t)n);
        }
        sg_http_error(call->req, status, msg);
        return;
    }
    call->id = res->id;
    sg_gateway_note_team(call->req, call->id.team_id);
    route->fn(call);
}

typedef struct {
    sg_api_call_t *call;
    const sg_route_t *route;
} auth_wait_t;

static void on_auth(const sg_auth_result_t *res, void *data)
{
    auth_wait_t *aw = data;
    sg_api_call_t *call = aw->call;
    call->pending = NULL;
    if (call->gone)
        return;
    finish_auth(call, aw->route, res);
}

static bool admin_ok(h2o_req_t *req)
{
    const char *tok = sg_server.cfg.admin_token;
    size_t len;
    const char *v = sg_http_header(req, "x-admin-token", &len);
    if (tok == NULL || v == NULL || len != strlen(tok))
        return false; /* no admin token configured: the admin API is closed */
    return sg_ct_equal(v, tok, len);
}

int sg__api_dispatch(h2o_req_t *req)
{
    size_t plen = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
    const char *path = req->path.base;
    h2o_iovec_t params[SG_API_MAX_PARAMS];
    size_t np = 0;
    bool path_known = false;
    int idx = 0;

    for (size_t t = 0; t < NTABLES; t++) {
        for (const sg_route_t *r = route_tables[t]; r->method; r++, idx++) {
            if (!match(r->pattern, path, plen, params, &np))
                continue;
            path_known = true;
            if (!h2o_memis(req->method.base, req->method.len, r->method, strlen(r->method)))
                continue;
            sg_gateway_note_route(req, idx);
            sg_api_call_t *call = h2o_mem_alloc_shared(&req->pool, sizeof(*call), on_call_dispose);
            memset(call, 0, sizeof(*call));
            call->req = req;
            call->w = sg_worker_of(req);
            memcpy(call->params, params, sizeof(params));
            call->nparams = np;
            if (req->entity.base && req->entity.len > sg_server.cfg.http.max_body_bytes) {
                sg_http_error(req, 413, "Request body too large");
                return 0;
            }
            if (r->auth == SG_ROUTE_PUBLIC) {
                r->fn(call);
                return 0;
            }
            if (r->auth == SG_ROUTE_ADMIN) {
                if (!admin_ok(req))
                    sg_http_error(req, 401, "Invalid or missing admin token");
                else
                    r->fn(call);
                return 0;
            }
            size_t klen = 0;
            const char *key = sg_http_header(req, "x-api-key", &klen);
            char addr[64];
            sg_auth_result_t res;
            auth_wait_t *aw = h2o_mem_alloc_pool(&req->pool, sizeof(*aw));
            aw->call = call;
            aw->route = r;
            int rc = sg_auth_check(call->w->auth, key, klen, sg_client_addr(req, addr, sizeof(addr)),
                                   &res, on_auth, aw, &call->pending);
            if (rc == 1)
                finish_auth(call, r, &res);
            else if (rc < 0)
                sg_http_error(req, 500, "Out of memory");
            return 0;
        }
    }
    if (path_known) {
        sg_http_error(req, 405, "Method not allowed");
        return 0;
    }
    return -1;
}

json_t *sg_api_body_json(sg_api_call_t *call)
{
    h2o_req_t *req = call->req;
    if (req->entity.base == NULL || req->entity.len == 0) {
        sg_http_error(req, 400, "Request body is missing: expected a JSON object");
        return NULL;
    }
    json_error_t err;
    json_t *j = json_loadb(req->entity.base, req->entity.len, JSON_REJECT_DUPLICATES, &err);
    if (j == NULL || !json_is_object(j)) {
        char msg[256];
        if (j == NULL)
            snprintf(msg, sizeof(msg), "Invalid JSON body at line %d, column %d: %s", err.line,
                     err.column, err.text);
        else
            snprintf(msg, sizeof(msg), "Invalid JSON body: expected an object");
        json_decref(j);
        sg_http_error(req, 400, msg); /* copied into the body */
        return NULL;
    }
    return j;
}
