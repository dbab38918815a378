/*
 * The node API listener (docs/node-api.md "Node API"): libh2o on the agent's libuv loop.
 *
 * One handler dispatches on method and path; every route but GET /health checks the node token
 * in constant time first. Bodies are capped at 1 MiB by h2o (413 past it). Create is the only
 * asynchronous route: its state lives in a heap struct, and a token in the request's pool clears
 * the back-pointer when the request goes away first (client disconnect), so the completion never
 * touches a freed request.
 */
#include <stdlib.h>
#include <string.h>
#include <h2o.h>
#include "common/common.h"
#include "node/internal.h"

#define MAX_BODY (1024 * 1024)

typedef struct sg__api {
    h2o_globalconf_t globalconf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    uv_tcp_t listener;
    bool listening;
    sg__node_t *n;
} api_t;

typedef struct {
    h2o_handler_t super;
    api_t *api;
} handler_t;

static void on_create_token_dispose(void *p);

/* A request answered later by an asynchronous operation (create, metrics): the wait outlives the
 * request if the client goes; the token in the request's pool cuts the link when it does. */
typedef struct create_wait create_wait_t;
typedef struct {
    create_wait_t *w;
} create_token_t;
struct create_wait {
    h2o_req_t *req;
    create_token_t *token;
};

static create_wait_t *wait_new(h2o_req_t *req)
{
    create_wait_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    create_token_t *t = h2o_mem_alloc_shared(&req->pool, sizeof(*t), on_create_token_dispose);
    w->req = req;
    w->token = t;
    t->w = w;
    return w;
}

static void wait_cancel(create_wait_t *w)
{
    w->token->w = NULL;
    free(w);
}


static void on_create_token_dispose(void *p)
{
    create_token_t *t = p;
    if (t->w != NULL) {
        t->w->req = NULL;
        t->w->token = NULL;
    }
}

static void on_create_done(void *data, int status, json_t *body)
{
    create_wait_t *w = data;
    if (w->req != NULL) {
        w->token->w = NULL;
        sg_http_json(w->req, status, body);
    } else {
        json_decref(body);
    }
    free(w);
}

static bool path_is(h2o_iovec_t p, const char *s) { return h2o_memis(p.base, p.len, s, strlen(s)); }

static bool method_is(h2o_req_t *req, const char *m)
{
    return h2o_memis(req->method.base, req->method.len, m, strlen(m));
}

static int handle_create(api_t *api, h2o_req_t *req)
{
    sg__create_req_t cr;
    char err[256];
    if (sg__create_req_parse(req->entity.base, req->entity.len, &cr, err, sizeof(err)) != 0) {
        sg_http_error(req, 400, err);
        return 0;
    }
    create_wait_t *w = wait_new(req);
    if (w == NULL) {
        sg__create_req_clear(&cr);
        sg_http_error(req, 500, "out of memory");
        return 0;
    }
    int status;
    if (sg__sbx_create(api->n, &cr, on_create_done, w, &status, err, sizeof(err)) != 0) {
        wait_cancel(w);
        sg_http_error(req, status, err);
    }
    sg__create_req_clear(&cr);
    return 0;
}

static int handle_one(api_t *api, h2o_req_t *req, const char *id, size_t idlen, const char *rest)
{
    sg__node_t *n = api->n;
    sg__sbx_t *s = sg__valid_sandbox_id(id, idlen) ? sg__node_find(n, id, idlen) : NULL;
    if (s == NULL) {
        char msg[128];
        snprintf(msg, sizeof(msg), "sandbox \"%.*s\" not found", (int)(idlen > 63 ? 63 : idlen), id);
        sg_http_error(req, 404, msg);
        return 0;
    }
    if (*rest == '\0') {
        if (method_is(req, "GET")) {
            sg_http_json(req, 200, sg__sbx_json(s));
        } else if (method_is(req, "DELETE")) {
            sg__sbx_delete(n, s);
            sg_http_json(req, 204, NULL);
        } else if (method_is(req, "PATCH")) {
            json_t *o = json_loadb(req->entity.base, req->entity.len, 0, NULL);
            json_t *e = json_object_get(o, "endAtMs");
            if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                json_integer_value(e) > 253402300799999LL) {
                sg_http_error(req, 400, "body must be {\"endAtMs\": <integer ms>}");
            } else {
                create_wait_t *w = wait_new(req);
                if (w == NULL ||
                    sg__sbx_update_end(n, s, json_integer_value(e), on_create_done, w) != 0) {
                    if (w != NULL)
                        wait_cancel(w);
                    sg_http_error(req, 500, "cannot persist the new end time");
                }
            }
            json_decref(o);
        } else {
            sg_http_error(req, 405, "method not allowed");
        }
        return 0;
    }
    if (strcmp(rest, "/metrics") == 0 && method_is(req, "GET")) {
        create_wait_t *w = wait_new(req);
        if (w == NULL || sg__sbx_metrics(n, s, on_create_done, w) != 0) {
            if (w != NULL)
                wait_cancel(w);
            sg_http_error(req, 500, "metrics unavailable");
        }
        return 0;
    }
    sg_http_error(req, 404, "no such route");
    return 0;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    api_t *api = ((handler_t *)self)->api;
    sg__node_t *n = api->n;
    h2o_iovec_t path = req->path_normalized;
    if (path_is(path, "/health")) {
        if (!method_is(req, "GET"))
            sg_http_error(req, 405, "method not allowed");
        else
            sg_http_json(req, 204, NULL);
        return 0;
    }
    size_t tl;
    const char *tv = sg_http_header(req, "x-sandgate-node-token", &tl);
    char tok[1024];
    bool ok = false;
    if (tv != NULL && tl < sizeof(tok)) {
        memcpy(tok, tv, tl);
        tok[tl] = '\0';
        ok = sg_ct_streq(tok, n->cfg->node_token);
    }
    if (!ok) {
        sg_http_error(req, 401, "invalid node token");
        return 0;
    }
    if (path_is(path, "/v1/sandboxes")) {
        if (method_is(req, "POST"))
            return handle_create(api, req);
        if (method_is(req, "GET")) {
            json_t *a = json_array();
            for (sg__sbx_t *s = n->sandboxes; s; s = s->next)
                if (s->state != SBX_DELETING && !s->delete_requested)
                    json_array_append_new(a, sg__sbx_json(s));
            sg_http_json(req, 200, json_pack("{s:o}", "sandboxes", a));
            return 0;
        }
        sg_http_error(req, 405, "method not allowed");
        return 0;
    }
    static const char pre[] = "/v1/sandboxes/";
    if (path.len > sizeof(pre) - 1 && memcmp(path.base, pre, sizeof(pre) - 1) == 0) {
        const char *id = path.base + sizeof(pre) - 1;
        size_t rest_len = path.len - (sizeof(pre) - 1);
        const char *slash = memchr(id, '/', rest_len);
        size_t idlen = slash ? (size_t)(slash - id) : rest_len;
        char rest[32] = "";
        if (slash) {
            size_t rl = rest_len - idlen;
            if (rl >= sizeof(rest)) {
                sg_http_error(req, 404, "no such route");
                return 0;
            }
            memcpy(rest, slash, rl);
            rest[rl] = '\0';
        }
        return handle_one(api, req, id, idlen, rest);
    }
    if (path_is(path, "/v1/info") && method_is(req, "GET")) {
        sg_http_json(req, 200, sg__node_info_json(n));
        return 0;
    }
    if ((path_is(path, "/v1/drain") || path_is(path, "/v1/undrain")) && method_is(req, "POST")) {
        n->draining = path_is(path, "/v1/drain");
        sg_log(SG_LOG_INFO, n->draining ? "node draining" : "node ready");
        sg_http_json(req, 204, NULL);
        return 0;
    }
    sg_http_error(req, 404, "no such route");
    return 0;
}

static void on_accept(uv_stream_t *listener, int status)
{
    api_t *api = listener->data;
    if (status != 0)
        return;
    sg_http_accept(listener, &api->accept_ctx);
}

int sg__api_start(sg__node_t *n)
{
    api_t *api = calloc(1, sizeof(*api));
    if (api == NULL)
        return SG_ENOMEM;
    n->api = api;
    api->n = n;
    h2o_config_init(&api->globalconf);
    api->globalconf.max_request_entity_size = MAX_BODY;
    h2o_hostconf_t *host =
        h2o_config_register_host(&api->globalconf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pc = h2o_config_register_path(host, "/", 0);
    handler_t *h = (handler_t *)h2o_create_handler(pc, sizeof(*h));
    h->super.on_req = on_req;
    h->api = api;
    h2o_context_init(&api->ctx, n->loop, &api->globalconf);
    api->accept_ctx.ctx = &api->ctx;
    api->accept_ctx.hosts = api->globalconf.hosts;

    struct sockaddr_storage sa;
    if (sg__parse_hostport(n->cfg->api_listen, &sa) != 0) {
        sg_log(SG_LOG_ERROR, "api_listen must be addr:port", SG_LS("api_listen", n->cfg->api_listen));
        return SG_EINVAL;
    }
    uv_tcp_init(n->loop, &api->listener);
    api->listener.data = api;
    api->listening = true;
    int r;
    if ((r = uv_tcp_bind(&api->listener, (struct sockaddr *)&sa, 0)) != 0 ||
        (r = uv_listen((uv_stream_t *)&api->listener, 512, on_accept)) != 0) {
        sg_log(SG_LOG_ERROR, "node API listen failed", SG_LS("addr", n->cfg->api_listen),
               SG_LS("err", uv_strerror(r)));
        return SG_EIO;
    }
    return 0;
}

void sg__api_stop(sg__node_t *n)
{
    /* Handles are closed by the agent's final loop walk; the h2o context dies with the process. */
    (void)n;
}
