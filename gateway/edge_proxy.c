/*
 * edge_proxy: the gateway's streaming proxy to a node proxy (docs/node-api.md "Node proxy") for
 * every sandbox request that is not an Upgrade (WebSocket handshakes keep h2o's own proxy, whose
 * tunnel already relays with backpressure).
 *
 * Why not h2o's reverse proxy: in 2.2.5 it reads the upstream response as fast as the node sends
 * it, whatever the client's pace, and spools what the client has not taken to an unlinked mmap'd
 * file in /tmp: a slow client of a large response costs the gateway unbounded disk and memory.
 *
 * Here an h2o generator is driven by h2o_http1client: upstream bytes go to `recv`; whenever h2o
 * holds no chunk of ours (it calls proceed once it wrote the previous one) `recv` is handed to
 * h2o_send at once (so a Connect server stream or SSE event is never held back waiting for more
 * bytes), and while h2o still holds one, `recv` fills up to HIGH_WATER and then the upstream
 * socket stops reading (TCP backpressure reaches the node proxy, which stops the sandbox's
 * server). Memory per request: the two buffers, about 2 * (HIGH_WATER + one socket read).
 *
 * The request head is built as h2o's proxy builds it (the edge.c caller has already replaced the
 * X-Sandgate-* and X-Forwarded-Host headers): hop-by-hop headers dropped, cookies merged,
 * X-Forwarded-Proto / X-Forwarded-For / Via added, `Connection: keep-alive` (or `close` when the
 * connection is not pooled). Request bodies are h2o's buffered entity (bounded by the caller's 413).
 * Response headers lose the hop-by-hop ones, Date and Server (h2o sets its own).
 *
 * Upstream connections are kept alive (the node proxy serves several requests per connection
 * when both messages are framed, docs/node-api.md): one h2o socket pool per node proxy address
 * and worker thread (thread-local, at most POOL_MAX addresses, never freed while the worker
 * runs: a client may still return a socket to it; past POOL_MAX, connections are not pooled),
 * idle sockets closed after POOL_IDLE_MS, below the node's own idle bound so that the gateway
 * closes first. h2o checks a pooled socket with a MSG_PEEK before reuse.
 *
 * Timeouts: the connect runs on a client context whose io timeout is http.connect_timeout_ms;
 * once connected the client switches to the idle-timeout context for the rest of the exchange.
 * Loop thread only; everything lives in the request's pool, and its dispose callback cancels the
 * upstream when the client goes away.
 */
#include <stdlib.h>
#include <string.h>
#include <netdb.h>
#include <sys/socket.h>
#include "gateway/internal.h"

#define HIGH_WATER (128 * 1024)
#define POOL_MAX 64
#define POOL_IDLE_MS 2000

typedef struct {
    char key[160]; /* "host:port" */
    h2o_socketpool_t pool;
} upstream_pool_t;

/* this worker thread's pools (each worker has its own loop) */
static _Thread_local upstream_pool_t *pools;
static _Thread_local size_t npools;

typedef struct {
    h2o_generator_t super;
    h2o_req_t *req;
    h2o_http1client_t *client; /* NULL once the upstream exchange ended (or was cancelled) */
    h2o_http1client_ctx_t *io_ctx;
    h2o_iovec_t up[2]; /* request head, body */
    int is_head;
    h2o_buffer_t *recv;    /* upstream bytes not handed to h2o yet */
    h2o_buffer_t *sending; /* the chunk h2o holds until it calls proceed */
    h2o_socket_cb reader;  /* the http1client's read callback, restored on resume */
    bool inflight, eos, failed, paused;
} eproxy_t;

static h2o_http1client_head_cb on_connect(h2o_http1client_t *client, const char *errstr,
                                          h2o_iovec_t **reqbufs, size_t *reqbufcnt, int *is_head);
static h2o_http1client_body_cb on_head(h2o_http1client_t *client, const char *errstr, int minor,
                                       int status, h2o_iovec_t msg, h2o_header_t *headers,
                                       size_t nheaders, int rlen);
static int on_body(h2o_http1client_t *client, const char *errstr);
static bool do_send(eproxy_t *p);
static void on_proceed(h2o_generator_t *g, h2o_req_t *req);
static void on_stop(h2o_generator_t *g, h2o_req_t *req);
static void on_dispose(void *ptr);
static h2o_iovec_t build_head(h2o_req_t *req, bool keepalive);

/* The pool for host:port, created on first use; NULL when the table is full or host too long. */
static h2o_socketpool_t *pool_of(h2o_loop_t *loop, h2o_iovec_t host, uint16_t port)
{
    char key[160];
    int kl = snprintf(key, sizeof(key), "%.*s:%u", (int)host.len, host.base, (unsigned)port);
    if (kl < 0 || (size_t)kl >= sizeof(key))
        return NULL;
    for (size_t i = 0; i < npools; i++)
        if (strcmp(pools[i].key, key) == 0)
            return &pools[i].pool;
    if (pools == NULL && (pools = calloc(POOL_MAX, sizeof(*pools))) == NULL)
        return NULL;
    if (npools == POOL_MAX)
        return NULL;
    upstream_pool_t *u = &pools[npools++];
    memcpy(u->key, key, (size_t)kl + 1);
    h2o_socketpool_init_by_hostport(&u->pool, host, port, 0, SIZE_MAX);
    h2o_socketpool_set_timeout(&u->pool, loop, POOL_IDLE_MS);
    return &u->pool;
}

void sg__edge_proxy(h2o_req_t *req, h2o_http1client_ctx_t *connect_ctx,
                    h2o_http1client_ctx_t *io_ctx, h2o_iovec_t host, uint16_t port)
{
    eproxy_t *p = h2o_mem_alloc_shared(&req->pool, sizeof(*p), on_dispose);
    memset(p, 0, sizeof(*p));
    p->super.proceed = on_proceed;
    p->super.stop = on_stop;
    p->req = req;
    p->io_ctx = io_ctx;
    h2o_socketpool_t *pool = pool_of(connect_ctx->loop, host, port);
    p->up[0] = build_head(req, pool != NULL);
    p->up[1] = req->entity;
    p->is_head = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    h2o_buffer_init(&p->recv, &h2o_socket_buffer_prototype);
    h2o_buffer_init(&p->sending, &h2o_socket_buffer_prototype);
    if (pool != NULL)
        h2o_http1client_connect_with_pool(&p->client, p, connect_ctx, pool, on_connect);
    else
        h2o_http1client_connect(&p->client, p, connect_ctx, host, port, 0, on_connect);
}

/* ---- the request head ---- */

/* "a, b" from a and b (either may be empty) in the pool. */
static h2o_iovec_t join(h2o_mem_pool_t *pool, h2o_iovec_t a, h2o_iovec_t b, char sep)
{
    if (a.len == 0)
        return b;
    if (b.len == 0)
        return a;
    char *s = h2o_mem_alloc_pool(pool, a.len + 2 + b.len);
    memcpy(s, a.base, a.len);
    s[a.len] = sep;
    s[a.len + 1] = ' ';
    memcpy(s + a.len + 2, b.base, b.len);
    return h2o_iovec_init(s, a.len + 2 + b.len);
}

static bool is_put_or_post(const h2o_iovec_t *m)
{
    return h2o_memis(m->base, m->len, H2O_STRLIT("POST")) ||
           h2o_memis(m->base, m->len, H2O_STRLIT("PUT"));
}

static h2o_iovec_t build_head(h2o_req_t *req, bool keepalive)
{
    h2o_mem_pool_t *pool = &req->pool;
    char addr[NI_MAXHOST];
    size_t addrlen = 0;
    struct sockaddr_storage ss;
    socklen_t sl = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    if (sl != 0 && (addrlen = h2o_socket_getnumerichost((struct sockaddr *)&ss, sl, addr)) == SIZE_MAX)
        addrlen = 0;

    /* Room: every header counted as "name: value\r\n" also covers it as a piece of a merged
     * value ("; " separators); 512 covers the fixed text (request line, our own headers). */
    h2o_iovec_t cookie = {NULL}, xff = {NULL}, via = {NULL};
    size_t cap = req->method.len + req->path.len + req->authority.len + req->input.authority.len +
                 addrlen + 512;
    for (size_t i = 0; i < req->headers.size; i++) {
        const h2o_header_t *h = &req->headers.entries[i];
        cap += h->name->len + h->value.len + 4;
    }
    char *buf = h2o_mem_alloc_pool(pool, cap);
    size_t off = 0;
#define PUT(s, l) (memcpy(buf + off, (s), (l)), off += (l))
#define PUTLIT(lit) PUT(lit, sizeof(lit) - 1)
    PUT(req->method.base, req->method.len);
    PUTLIT(" ");
    PUT(req->path.base, req->path.len);
    if (keepalive)
        PUTLIT(" HTTP/1.1\r\nconnection: keep-alive\r\nhost: ");
    else
        PUTLIT(" HTTP/1.1\r\nconnection: close\r\nhost: ");
    PUT(req->authority.base, req->authority.len);
    PUTLIT("\r\n");
    if (req->entity.base != NULL || is_put_or_post(&req->method))
        off += (size_t)sprintf(buf + off, "content-length: %zu\r\n", req->entity.len);
    for (size_t i = 0; i < req->headers.size; i++) {
        const h2o_header_t *h = &req->headers.entries[i];
        if (h2o_iovec_is_token(h->name)) {
            const h2o_token_t *t = (const h2o_token_t *)h->name;
            if (t->proxy_should_drop_for_req || t == H2O_TOKEN_HOST || t == H2O_TOKEN_CONTENT_LENGTH)
                continue;
            if (t == H2O_TOKEN_COOKIE) {
                cookie = join(pool, cookie, h->value, ';');
                continue;
            }
            if (t == H2O_TOKEN_X_FORWARDED_FOR) {
                xff = join(pool, xff, h->value, ',');
                continue;
            }
            if (t == H2O_TOKEN_VIA) {
                via = join(pool, via, h->value, ',');
                continue;
            }
        }
        if (h2o_lcstris(h->name->base, h->name->len, H2O_STRLIT("x-forwarded-proto")))
            continue; /* ours replaces the client's */
        PUT(h->orig_name != NULL ? h->orig_name : h->name->base, h->name->len);
        PUTLIT(": ");
        PUT(h->value.base, h->value.len);
        PUTLIT("\r\n");
    }
    if (cookie.len != 0) {
        PUTLIT("cookie: ");
        PUT(cookie.base, cookie.len);
        PUTLIT("\r\n");
    }
    PUTLIT("x-forwarded-proto: ");
    PUT(req->input.scheme->name.base, req->input.scheme->name.len);
    PUTLIT("\r\nx-forwarded-for: ");
    if (xff.len != 0) {
        PUT(xff.base, xff.len);
        if (addrlen != 0)
            PUTLIT(", ");
    }
    PUT(addr, addrlen);
    PUTLIT("\r\nvia: ");
    if (via.len != 0) {
        PUT(via.base, via.len);
        PUTLIT(", ");
    }
    if (req->version < 0x200)
        off += (size_t)sprintf(buf + off, "1.%d ", req->version >= 0x100 && req->version <= 0x109
                                                      ? req->version - 0x100 : 0);
    else
        PUTLIT("2 ");
    PUT(req->input.authority.base, req->input.authority.len);
    PUTLIT("\r\n\r\n");
#undef PUT
#undef PUTLIT
    return h2o_iovec_init(buf, off);
}

/* ---- upstream callbacks ---- */

static void fail_502(eproxy_t *p, const char *what, const char *errstr)
{
    sg_log(SG_LOG_WARN, "edge proxy: upstream failed", SG_LS("stage", what), SG_LS("error", errstr));
    sg_http_error(p->req, 502, "The sandbox's node could not be reached");
}

static h2o_http1client_head_cb on_connect(h2o_http1client_t *client, const char *errstr,
                                          h2o_iovec_t **reqbufs, size_t *reqbufcnt, int *is_head)
{
    eproxy_t *p = client->data;
    if (errstr != NULL) {
        p->client = NULL;
        fail_502(p, "connect", errstr);
        return NULL;
    }
    /* connected: from here on the idle timeout applies, not the connect timeout */
    client->ctx = p->io_ctx;
    *reqbufs = p->up;
    *reqbufcnt = p->up[1].base != NULL ? 2 : 1;
    *is_head = p->is_head;
    return on_head;
}

static h2o_http1client_body_cb on_head(h2o_http1client_t *client, const char *errstr, int minor,
                                       int status, h2o_iovec_t msg, h2o_header_t *headers,
                                       size_t nheaders, int rlen)
{
    eproxy_t *p = client->data;
    h2o_req_t *req = p->req;
    if (errstr != NULL && errstr != h2o_http1client_error_is_eos) {
        p->client = NULL;
        fail_502(p, "response head", errstr);
        return NULL;
    }
    if (status == 101) { /* only Upgrade requests may switch, and those do not come here */
        p->client = NULL;
        fail_502(p, "response head", "101 to a request without Upgrade");
        return NULL;
    }
    req->res.status = status;
    req->res.reason = h2o_strdup(&req->pool, msg.base, msg.len).base;
    for (size_t i = 0; i < nheaders; i++) {
        h2o_header_t *h = &headers[i];
        /* http1client frees the head once this returns: copy every value */
        h2o_iovec_t v = h2o_strdup(&req->pool, h->value.base, h->value.len);
        if (h2o_iovec_is_token(h->name)) {
            const h2o_token_t *t = (const h2o_token_t *)h->name;
            if (t->proxy_should_drop_for_res || t == H2O_TOKEN_SERVER || t == H2O_TOKEN_X_COMPRESS_HINT)
                continue;
            if (t == H2O_TOKEN_CONTENT_LENGTH) {
                if (req->res.content_length != SIZE_MAX ||
                    (req->res.content_length = h2o_strtosize(v.base, v.len)) == SIZE_MAX) {
                    p->client = NULL;
                    req->res.content_length = SIZE_MAX;
                    req->res.headers = (h2o_headers_t){NULL};
                    fail_502(p, "response head", "malformed content-length");
                    return NULL;
                }
                continue;
            }
            h2o_add_header(&req->pool, &req->res.headers, t, h->orig_name, v.base, v.len);
        } else {
            h2o_iovec_t n = h2o_strdup(&req->pool, h->name->base, h->name->len);
            h2o_add_header_by_str(&req->pool, &req->res.headers, n.base, n.len, 0, h->orig_name,
                                  v.base, v.len);
        }
    }
    h2o_start_response(req, &p->super);
    if (errstr == h2o_http1client_error_is_eos) {
        p->client = NULL;
        p->eos = true;
        do_send(p);
        return NULL;
    }
    return on_body;
}

static int on_body(h2o_http1client_t *client, const char *errstr)
{
    eproxy_t *p = client->data;
    h2o_buffer_t **in = &client->sock->input;
    if ((*in)->size != 0) {
        if (p->recv->size == 0) {
            /* take the socket's buffer as is (no copy); it gets our empty one */
            h2o_buffer_t *t = p->recv;
            p->recv = *in;
            *in = t;
        } else {
            h2o_iovec_t room = h2o_buffer_reserve(&p->recv, (*in)->size);
            memcpy(room.base, (*in)->bytes, (*in)->size);
            p->recv->size += (*in)->size;
            h2o_buffer_consume(in, (*in)->size);
        }
    }
    if (errstr != NULL) {
        /* the client is closed when this returns */
        p->client = NULL;
        p->eos = true;
        if (errstr != h2o_http1client_error_is_eos) {
            p->failed = true;
            sg_log(SG_LOG_WARN, "edge proxy: upstream body failed", SG_LS("error", errstr));
        }
    } else if (p->recv->size >= HIGH_WATER && !p->paused) {
        /* backpressure: nothing more from the node until h2o took what we hold */
        p->reader = client->sock->_cb.read;
        h2o_socket_read_stop(client->sock);
        p->paused = true;
    }
    if (!p->inflight)
        do_send(p);
    return 0;
}

/* ---- downstream ---- */

/* Hands `recv` to h2o when h2o holds nothing of ours. Returns false when the final chunk went
 * out: the request (and p, in its pool) may be gone then. h2o 2.2.5 calls proceed from write
 * completions, never from inside h2o_send, so p is intact while h2o_send runs. */
static bool do_send(eproxy_t *p)
{
    if (p->inflight || (p->recv->size == 0 && !p->eos))
        return true;
    h2o_buffer_t *t = p->sending;
    p->sending = p->recv;
    p->recv = t;
    h2o_iovec_t v = h2o_iovec_init(p->sending->bytes, p->sending->size);
    p->inflight = true;
    if (p->eos) {
        h2o_send(p->req, &v, v.len != 0 ? 1 : 0,
                 p->failed ? H2O_SEND_STATE_ERROR : H2O_SEND_STATE_FINAL);
        return false;
    }
    h2o_send(p->req, &v, 1, H2O_SEND_STATE_IN_PROGRESS);
    return true;
}

static void on_proceed(h2o_generator_t *g, h2o_req_t *req)
{
    eproxy_t *p = (eproxy_t *)g;
    p->inflight = false;
    h2o_buffer_consume(&p->sending, p->sending->size);
    if (!do_send(p))
        return;
    if (p->paused && p->client != NULL && p->recv->size < HIGH_WATER) {
        p->paused = false;
        h2o_socket_read_start(p->client->sock, p->reader);
    }
}

static void on_stop(h2o_generator_t *g, h2o_req_t *req)
{
    eproxy_t *p = (eproxy_t *)g;
    if (p->client != NULL)
        h2o_http1client_cancel(p->client);
    p->client = NULL;
}

static void on_dispose(void *ptr)
{
    eproxy_t *p = ptr;
    if (p->client != NULL)
        h2o_http1client_cancel(p->client);
    p->client = NULL;
    h2o_buffer_dispose(&p->recv);
    h2o_buffer_dispose(&p->sending);
}
