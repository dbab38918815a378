/*
 * envd's HTTP front: one h2o handler that authenticates, picks the user and dispatches to the
 * process service, the filesystem service or /files; plus the Connect server-stream object.
 *
 * Started with --await-init (the node's warm pool), envd answers only /health and the one POST
 * /init that brings the sandbox's env vars and token, 503 to anything else until then.
 * Auth: every path but /health needs the access token (X-Access-Token, constant-time compare)
 * when envd was given one; /files also accepts E2B's signed URLs (signature[_expiration]).
 * The user comes from `Authorization: Basic base64("<user>:")`, else the `username` query
 * parameter of /files, else `user` (or root when the rootfs has no `user`).
 *
 * Streams (sg__stream_t) are heap objects tied to their request by a pool-shared token whose
 * dispose callback detaches them; h2o may send only one buffer at a time per response, so frames
 * queue in `pending` while `inflight` is on the wire, and the owner is told when the backlog
 * drains (backpressure). A stream is freed only after its request is gone and its timers closed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "common/common.h"
#include "envd/internal.h"

typedef struct {
    h2o_handler_t super;
    sg__server_t *srv;
} envd_handler_t;

typedef struct {
    sg__stream_t *st;
} stream_token_t;

static int on_req(h2o_handler_t *self, h2o_req_t *req);

/* ---- public helpers -------------------------------------------------------------------------- */

void sg__rpc_reply(h2o_req_t *req, json_t *body)
{
    sg_http_json(req, 200, body ? body : json_object());
}

void sg__rpc_fail(h2o_req_t *req, bool streaming, sg_envd_code_t code, const char *msg)
{
    sg_log(SG_LOG_DEBUG, "rpc error", SG_LS("code", sg_envd_code_name(code)), SG_LS("msg", msg));
    if (!streaming) {
        sg_http_json(req, sg_envd_code_http(code), sg_envd_error_json(code, msg));
        return;
    }
    json_t *end = json_pack("{s:o}", "error", sg_envd_error_json(code, msg));
    size_t n = 0;
    uint8_t *frame = sg_envd_envelope_json(SG_ENVD_FLAG_END, end, &n);
    json_decref(end);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/connect+json"));
    if (frame == NULL) {
        h2o_send_inline(req, "", 0);
        return;
    }
    char *copy = h2o_mem_alloc_pool(&req->pool, n);
    memcpy(copy, frame, n);
    free(frame);
    h2o_send_inline(req, copy, n);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

char *sg__query_param(h2o_req_t *req, const char *name)
{
    if (req->query_at == SIZE_MAX)
        return NULL;
    const char *q = req->path.base + req->query_at + 1;
    const char *end = req->path.base + req->path.len;
    size_t nlen = strlen(name);
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        const char *ke = eq ? eq : pe;
        if ((size_t)(ke - q) == nlen && memcmp(q, name, nlen) == 0) {
            const char *v = eq ? eq + 1 : pe;
            size_t vlen = (size_t)(pe - v);
            char *out = h2o_mem_alloc_pool(&req->pool, vlen + 1);
            size_t o = 0;
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] == '%' && i + 2 < vlen && hexval(v[i + 1]) >= 0 && hexval(v[i + 2]) >= 0) {
                    out[o++] = (char)(hexval(v[i + 1]) * 16 + hexval(v[i + 2]));
                    i += 2;
                } else if (v[i] == '+') {
                    out[o++] = ' ';
                } else {
                    out[o++] = v[i];
                }
            }
            out[o] = '\0';
            if (strlen(out) != o)
                return NULL; /* an encoded NUL byte: refuse the parameter */
            return out;
        }
        q = pe + 1;
    }
    return NULL;
}

/* ---- streams --------------------------------------------------------------------------------- */

static void stream_flush(sg__stream_t *st);

static void stream_free_if_done(sg__stream_t *st)
{
    if (st->req == NULL && st->handles == 0) {
        free(st->inflight);
        free(st->pending);
        free(st);
    }
}

static void on_stream_timer_close(uv_handle_t *h)
{
    sg__stream_t *st = h->data;
    st->handles--;
    stream_free_if_done(st);
}

static void stream_stop_timers(sg__stream_t *st)
{
    if (!uv_is_closing((uv_handle_t *)&st->keepalive))
        uv_close((uv_handle_t *)&st->keepalive, on_stream_timer_close);
    if (!uv_is_closing((uv_handle_t *)&st->deadline))
        uv_close((uv_handle_t *)&st->deadline, on_stream_timer_close);
}

static void stream_detach(sg__stream_t *st)
{
    if (st->detached)
        return;
    st->detached = true;
    if (st->on_detach)
        st->on_detach(st);
}

static void on_stream_dispose(void *p)
{
    stream_token_t *tok = p;
    sg__stream_t *st = tok->st;
    stream_detach(st);
    st->req = NULL;
    st->srv->nstreams--;
    stream_stop_timers(st);
    stream_free_if_done(st);
}

static void on_stream_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    sg__stream_t *st = (sg__stream_t *)gen;
    st->sending = false;
    free(st->inflight);
    st->inflight = NULL;
    st->inflight_len = 0;
    stream_flush(st);
    if (!st->detached && st->on_drain && sg__stream_backlog(st) < SG__STREAM_LOW)
        st->on_drain(st);
}

static void on_stream_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    /* the connection went away; the pool's dispose callback does the cleanup */
}

static void on_keepalive(uv_timer_t *t)
{
    sg__stream_t *st = t->data;
    if (st->final_queued || st->req == NULL)
        return;
    /* skip the ping while data is still queued: the client is alive or backpressured */
    if (sg__stream_backlog(st) > 0)
        return;
    sg__stream_send(st, st->watch_keepalive ? json_pack("{s:{}}", "keepalive")
                                            : sg_envd_event_keepalive());
}

static void on_deadline(uv_timer_t *t)
{
    sg__stream_t *st = t->data;
    if (st->final_queued || st->req == NULL)
        return;
    stream_detach(st);
    sg__stream_end(st, SG_ENVD_DEADLINE_EXCEEDED, "the request's deadline was exceeded");
}

static long header_long(h2o_req_t *req, const char *name, long dflt, long max)
{
    size_t len;
    const char *v = sg_http_header(req, name, &len);
    if (v == NULL || len == 0 || len > 18)
        return dflt;
    long n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return dflt;
        n = n * 10 + (v[i] - '0');
    }
    return n > max ? max : n;
}

sg__stream_t *sg__stream_open(sg__server_t *srv, h2o_req_t *req, void *owner,
                              void (*on_detach)(sg__stream_t *), void (*on_drain)(sg__stream_t *),
                              bool watch_keepalive)
{
    if (srv->nstreams >= srv->max_streams) {
        sg__rpc_fail(req, true, SG_ENVD_RESOURCE_EXHAUSTED, "too many open streams");
        return NULL;
    }
    sg__stream_t *st = calloc(1, sizeof(*st));
    stream_token_t *tok = st ? h2o_mem_alloc_shared(&req->pool, sizeof(*tok), on_stream_dispose)
                             : NULL;
    if (tok == NULL) {
        free(st);
        sg__rpc_fail(req, true, SG_ENVD_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    tok->st = st;
    srv->nstreams++;
    st->srv = srv;
    st->req = req;
    st->owner = owner;
    st->on_detach = on_detach;
    st->on_drain = on_drain;
    st->watch_keepalive = watch_keepalive;
    st->gen.proceed = on_stream_proceed;
    st->gen.stop = on_stream_stop;
    uv_timer_init(srv->loop, &st->keepalive);
    uv_timer_init(srv->loop, &st->deadline);
    st->keepalive.data = st->deadline.data = st;
    st->handles = 2;
    /* h2o reads nothing from a connection while its response streams, so a vanished client
     * is noticed only when envd next writes: a ping (the SDK asks for one every 50 s; that is
     * also the default) bounds how long a stream can outlive its client. */
    long ping = header_long(req, "keepalive-ping-interval", 50, 3600);
    if (ping > 0)
        uv_timer_start(&st->keepalive, on_keepalive, (uint64_t)ping * 1000, (uint64_t)ping * 1000);
    long deadline = header_long(req, "connect-timeout-ms", 0, 100L * 24 * 3600 * 1000);
    if (deadline > 0)
        uv_timer_start(&st->deadline, on_deadline, (uint64_t)deadline, 0);
    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/connect+json"));
    h2o_start_response(req, &st->gen);
    return st;
}

size_t sg__stream_backlog(const sg__stream_t *st)
{
    return st->pending_len + st->inflight_len;
}

static int stream_append(sg__stream_t *st, uint8_t flags, const json_t *msg)
{
    size_t n;
    uint8_t *frame = sg_envd_envelope_json(flags, msg, &n);
    if (frame == NULL)
        return SG_ENOMEM;
    if (st->pending_len + n > st->pending_cap) {
        size_t cap = st->pending_cap ? st->pending_cap : 4096;
        while (cap < st->pending_len + n)
            cap *= 2;
        uint8_t *p = realloc(st->pending, cap);
        if (p == NULL) {
            free(frame);
            return SG_ENOMEM;
        }
        st->pending = p;
        st->pending_cap = cap;
    }
    memcpy(st->pending + st->pending_len, frame, n);
    st->pending_len += n;
    free(frame);
    return 0;
}

static void stream_flush(sg__stream_t *st)
{
    if (st->req == NULL || st->sending || st->final_sent || st->pending_len == 0)
        return;
    st->inflight = st->pending;
    st->inflight_len = st->pending_len;
    st->pending = NULL;
    st->pending_len = st->pending_cap = 0;
    st->sending = true;
    h2o_iovec_t buf = h2o_iovec_init(st->inflight, st->inflight_len);
    h2o_send_state_t state = H2O_SEND_STATE_IN_PROGRESS;
    if (st->final_queued) {
        state = H2O_SEND_STATE_FINAL;
        st->final_sent = true;
    }
    h2o_send(st->req, &buf, 1, state);
}

void sg__stream_send(sg__stream_t *st, json_t *msg)
{
    if (msg == NULL)
        return;
    if (st->final_queued || st->req == NULL) {
        json_decref(msg);
        return;
    }
    int r = stream_append(st, 0, msg);
    json_decref(msg);
    if (r != 0) {
        stream_detach(st);
        sg__stream_end(st, SG_ENVD_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    stream_flush(st);
}

void sg__stream_end(sg__stream_t *st, sg_envd_code_t code, const char *msg)
{
    if (st->final_queued || st->req == NULL)
        return;
    st->detached = true; /* the owner dropped it already */
    json_t *end = code ? json_pack("{s:o}", "error", sg_envd_error_json(code, msg)) : json_object();
    if (stream_append(st, SG_ENVD_FLAG_END, end) != 0) {
        /* cannot even say goodbye: end the response with what is queued */
    }
    json_decref(end);
    st->final_queued = true;
    if (uv_is_active((uv_handle_t *)&st->keepalive))
        uv_timer_stop(&st->keepalive);
    if (uv_is_active((uv_handle_t *)&st->deadline))
        uv_timer_stop(&st->deadline);
    if (st->pending_len == 0 && !st->sending) {
        h2o_send(st->req, NULL, 0, H2O_SEND_STATE_FINAL);
        st->final_sent = true;
        return;
    }
    stream_flush(st);
}

/* ---- request handling ------------------------------------------------------------------------ */

static bool path_is(h2o_req_t *req, const char *p, size_t *rest)
{
    size_t n = strlen(p);
    h2o_iovec_t path = req->path_normalized;
    if (path.len < n || memcmp(path.base, p, n) != 0)
        return false;
    *rest = n;
    return true;
}

/* Verifies E2B's signed /files URLs: "v1_" + base64(sha256("path:op:user:token[:exp]")). An
 * expired one is refused before its hash is checked, with E2B's own message in *why. */
static bool files_signature_ok(sg__server_t *srv, h2o_req_t *req, const char **why)
{
    char *sig = sg__query_param(req, "signature");
    if (sig == NULL || srv->token == NULL)
        return false;
    char *path = sg__query_param(req, "path");
    char *user = sg__query_param(req, "username");
    char *exp = sg__query_param(req, "signature_expiration");
    const char *op = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")) ? "read"
                                                                                      : "write";
    if (exp != NULL) {
        char *end;
        long long e = strtoll(exp, &end, 10);
        if (*exp == '\0' || *end != '\0')
            return false;
        if (e < (long long)time(NULL)) {
            *why = "signature is already expired";
            return false;
        }
    }
    size_t cap = strlen(path ? path : "") + strlen(user ? user : "") + strlen(srv->token) + 64;
    char *raw = h2o_mem_alloc_pool(&req->pool, cap);
    int n = snprintf(raw, cap, "%s:%s:%s:%s%s%s", path ? path : "", op, user ? user : "",
                     srv->token, exp ? ":" : "", exp ? exp : "");
    uint8_t digest[32];
    sg_sha256(raw, (size_t)n, digest);
    char b64[64], expected[80];
    size_t bl = sg_envd_b64_encode(digest, 32, b64);
    while (bl > 0 && b64[bl - 1] == '=')
        b64[--bl] = '\0';
    snprintf(expected, sizeof(expected), "v1_%s", b64);
    return sg_ct_streq(expected, sig);
}

/* *why: the message of the 401 when this returns false (set beforehand to the default). */
static bool authenticated(sg__server_t *srv, h2o_req_t *req, bool is_files, const char **why)
{
    if (srv->token == NULL)
        return true;
    size_t len;
    const char *v = sg_http_header(req, "x-access-token", &len);
    if (v != NULL) {
        char *tok = h2o_mem_alloc_pool(&req->pool, len + 1);
        memcpy(tok, v, len);
        tok[len] = '\0';
        return sg_ct_streq(tok, srv->token);
    }
    return is_files && files_signature_ok(srv, req, why);
}

/* Resolves the calling user; on failure answers the request and returns non-zero. */
static int pick_user(h2o_req_t *req, bool is_files, bool rpc, bool streaming, sg__user_t *u)
{
    char name[256] = "";
    bool explicit_user = false;
    size_t len;
    const char *auth = sg_http_header(req, "authorization", &len);
    if (auth != NULL && len > 6 && strncasecmp(auth, "Basic ", 6) == 0) {
        uint8_t dec[400];
        if (len - 6 > 512) {
            goto bad;
        }
        ssize_t n = sg_envd_b64_decode(auth + 6, len - 6, dec);
        if (n < 0)
            goto bad;
        size_t ul = 0;
        while (ul < (size_t)n && dec[ul] != ':')
            ul++;
        if (ul == 0 || ul >= sizeof(name) || memchr(dec, '\0', ul) != NULL)
            goto bad;
        memcpy(name, dec, ul);
        name[ul] = '\0';
        explicit_user = true;
    } else if (is_files) {
        char *q = sg__query_param(req, "username");
        if (q != NULL && *q != '\0') {
            if (strlen(q) >= sizeof(name))
                goto bad;
            snprintf(name, sizeof(name), "%s", q);
            explicit_user = true;
        }
    }
    if (!explicit_user)
        snprintf(name, sizeof(name), "user");
    int r = sg__user_lookup(name, u);
    if (r == SG_ENOTFOUND && !explicit_user)
        r = sg__user_lookup("root", u);
    if (r == 0)
        return 0;
    {
        char msg[400];
        snprintf(msg, sizeof(msg), "invalid user: '%s'", name);
        if (rpc)
            sg__rpc_fail(req, streaming, SG_ENVD_UNAUTHENTICATED, msg);
        else
            sg_http_error(req, 401, msg);
        return -1;
    }
bad:
    if (rpc)
        sg__rpc_fail(req, streaming, SG_ENVD_UNAUTHENTICATED, "malformed authorization header");
    else
        sg_http_error(req, 401, "malformed authorization header");
    return -1;
}

static void handle_rpc(sg__server_t *srv, h2o_req_t *req, bool is_process, const char *method,
                       size_t mlen)
{
    size_t ctlen = 0;
    const char *ct = sg_http_header(req, "content-type", &ctlen);
    bool streaming = ct && ctlen >= 24 && strncasecmp(ct, "application/connect+json", 24) == 0;
    bool unary_json = ct && ctlen >= 16 && strncasecmp(ct, "application/json", 16) == 0;
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
        sg_http_json(req, 405, sg_envd_error_json(SG_ENVD_UNIMPLEMENTED, "use POST"));
        return;
    }
    if (!streaming && !unary_json) {
        sg_http_json(req, 415, sg_envd_error_json(SG_ENVD_INVALID_ARGUMENT,
                                                  "content-type must be application/json or "
                                                  "application/connect+json"));
        return;
    }
    if (!authenticated(srv, req, false, &(const char *){NULL})) {
        sg__rpc_fail(req, streaming, SG_ENVD_UNAUTHENTICATED, "invalid access token");
        return;
    }
    bool stream_method = (is_process && ((mlen == 5 && memcmp(method, "Start", 5) == 0) ||
                                         (mlen == 7 && memcmp(method, "Connect", 7) == 0))) ||
                         (!is_process && mlen == 8 && memcmp(method, "WatchDir", 8) == 0);
    if (stream_method != streaming) {
        sg__rpc_fail(req, false, SG_ENVD_INVALID_ARGUMENT,
                     streaming ? "a unary method takes application/json"
                               : "a streaming method takes application/connect+json");
        return;
    }
    const uint8_t *msg = (const uint8_t *)req->entity.base;
    size_t msglen = req->entity.base ? req->entity.len : 0;
    if (streaming) {
        uint8_t flags;
        size_t consumed;
        int r = sg_envd_envelope_decode(msg, msglen, srv->max_body, &flags, &msg, &msglen,
                                        &consumed);
        if (r != 0 || consumed != req->entity.len) {
            sg__rpc_fail(req, true, SG_ENVD_INVALID_ARGUMENT,
                         r == SG_EINVAL ? "compressed messages are not supported"
                                        : "the request body must be exactly one envelope");
            return;
        }
    }
    json_error_t jerr;
    json_t *body = msglen ? json_loadb((const char *)msg, msglen, JSON_REJECT_DUPLICATES, &jerr)
                          : json_object();
    if (!json_is_object(body)) {
        json_decref(body);
        sg__rpc_fail(req, streaming, SG_ENVD_INVALID_ARGUMENT,
                     "the request message must be a JSON object");
        return;
    }
    sg__user_t user;
    if (pick_user(req, false, true, streaming, &user) == 0) {
        char m[64];
        snprintf(m, sizeof(m), "%.*s", (int)(mlen < 63 ? mlen : 63), method);
        if (is_process)
            sg__proc_rpc(srv, req, &user, m, body, streaming);
        else
            sg__fs_rpc(srv, req, &user, m, body, streaming);
    }
    json_decref(body);
}

/* POST /init, once, from the node that started this envd ahead of its sandbox: the request's env
 * vars become envd's own (the default of every process it starts) and its access token takes
 * effect. Answered 404 once done, so nothing inside the sandbox can re-initialise envd. */
static void handle_init(sg__server_t *srv, h2o_req_t *req)
{
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
        sg_http_error(req, 405, "method not allowed");
        return;
    }
    size_t len;
    const char *v = sg_http_header(req, "x-sandgate-init-key", &len);
    char *key = v ? h2o_mem_alloc_pool(&req->pool, len + 1) : NULL;
    if (key != NULL) {
        memcpy(key, v, len);
        key[len] = '\0';
    }
    if (key == NULL || !sg_ct_streq(key, srv->init_key)) {
        sg_http_error(req, 401, "invalid init key");
        return;
    }
    json_error_t jerr;
    json_t *o = req->entity.base ? json_loadb(req->entity.base, req->entity.len, 0, &jerr) : NULL;
    json_t *envs = json_object_get(o, "envVars"), *tok = json_object_get(o, "accessToken");
    const char *k;
    json_t *val;
    bool ok = json_is_object(o) && (envs == NULL || json_is_object(envs)) &&
              (tok == NULL || json_is_null(tok) || json_is_string(tok));
    json_object_foreach(envs, k, val) {
        if (!json_is_string(val) || k[0] == '\0' || strchr(k, '=') != NULL)
            ok = false;
    }
    if (!ok) {
        json_decref(o);
        sg_http_error(req, 400, "init body must be {\"envVars\":{name:string},\"accessToken\":string|null}");
        return;
    }
    json_object_foreach(envs, k, val) setenv(k, json_string_value(val), 1);
    char **env = sg__envd_child_env();
    char *token = json_is_string(tok) && json_string_length(tok) > 0 ? strdup(json_string_value(tok)) : NULL;
    json_decref(o);
    if (env == NULL || (json_is_string(tok) && json_string_length(tok) > 0 && token == NULL)) {
        free(token);
        sg_http_error(req, 500, "out of memory");
        return;
    }
    for (char **e = srv->env; e && *e; e++)
        free(*e);
    free(srv->env);
    srv->env = env;
    srv->token = token;
    explicit_bzero(srv->init_key, strlen(srv->init_key));
    free(srv->init_key);
    srv->init_key = NULL;
    sg_log(SG_LOG_INFO, "envd initialised", SG_LI("secure", token != NULL));
    req->res.status = 204;
    req->res.reason = "No Content";
    h2o_send_inline(req, "", 0);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    sg__server_t *srv = ((envd_handler_t *)self)->srv;
    size_t rest;
    if (h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/health"))) {
        req->res.status = 204;
        req->res.reason = "No Content";
        h2o_send_inline(req, "", 0);
        return 0;
    }
    if (srv->init_key != NULL) {
        if (h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/init")))
            handle_init(srv, req);
        else
            sg_http_error(req, 503, "envd is not initialised yet");
        return 0;
    }
    if (h2o_memis(req->path_normalized.base, req->path_normalized.len, H2O_STRLIT("/files"))) {
        const char *why = "invalid access token";
        if (!authenticated(srv, req, true, &why)) {
            sg_http_error(req, 401, why);
            return 0;
        }
        sg__user_t user;
        if (pick_user(req, true, false, false, &user) != 0)
            return 0;
        if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET")))
            sg__files_get(srv, req, &user);
        else if (h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST")))
            sg__files_post(srv, req, &user);
        else
            sg_http_error(req, 405, "method not allowed");
        return 0;
    }
    if (path_is(req, "/process.Process/", &rest)) {
        handle_rpc(srv, req, true, req->path_normalized.base + rest,
                   req->path_normalized.len - rest);
        return 0;
    }
    if (path_is(req, "/filesystem.Filesystem/", &rest)) {
        handle_rpc(srv, req, false, req->path_normalized.base + rest,
                   req->path_normalized.len - rest);
        return 0;
    }
    if (!authenticated(srv, req, false, &(const char *){NULL})) {
        sg_http_error(req, 401, "invalid access token");
        return 0;
    }
    sg_http_error(req, 404, "not found");
    return 0;
}

/* ---- set-up ---------------------------------------------------------------------------------- */

static void on_accept(uv_stream_t *listener, int status)
{
    sg__server_t *srv = listener->data;
    if (status != 0)
        return;
    sg_http_accept(listener, &srv->accept_ctx);
}

int sg__server_listen(sg__server_t *srv, const char *host, int port)
{
    h2o_config_init(&srv->conf);
    srv->conf.max_request_entity_size = srv->max_body;
    /* h2o's default (10 s) also bounds receiving the request body: an upload slower than that
     * would be cut. It doubles as the keep-alive idle timeout. */
    srv->conf.http1.req_timeout = srv->req_timeout_ms;
    h2o_hostconf_t *hc = h2o_config_register_host(&srv->conf,
                                                  h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pc = h2o_config_register_path(hc, "/", 0);
    envd_handler_t *h = (envd_handler_t *)h2o_create_handler(pc, sizeof(*h));
    h->super.on_req = on_req;
    h->srv = srv;
    h2o_context_init(&srv->ctx, srv->loop, &srv->conf);
    srv->accept_ctx.ctx = &srv->ctx;
    srv->accept_ctx.hosts = srv->conf.hosts;

    struct sockaddr_in addr;
    int r = uv_ip4_addr(host, port, &addr);
    if (r != 0)
        return SG_EINVAL;
    uv_tcp_init(srv->loop, &srv->listener);
    srv->listener.data = srv;
    if ((r = uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0)) != 0 ||
        (r = uv_listen((uv_stream_t *)&srv->listener, 128, on_accept)) != 0) {
        sg_log(SG_LOG_ERROR, "cannot listen", SG_LS("host", host), SG_LI("port", port),
               SG_LS("error", uv_strerror(r)));
        return SG_EIO;
    }
    return 0;
}
