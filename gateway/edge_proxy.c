/*
 * edge_proxy: the gateway's streaming proxy to a node proxy (docs/node-api.md "Node proxy") for
 * every sandbox request that is not an Upgrade (WebSocket handshakes keep h2o's own proxy, whose
 * tunnel already relays with backpressure).
 *
 * Why not h2o's reverse proxy: in 2.2.5 it reads the upstream response as fast as the node sends
 * it, whatever the client's pace, and spools what the client has not taken to an unlinked mmap'd
 * file in /tmp: a slow client of a large response costs the gateway unbounded disk and memory.
 * Why not h2o_http1client either: its connection pool hands a socket back by dup(2)ing its
 * descriptor into a new libuv handle and closing the old one, and peeks at it before each reuse:
 * five system calls and two epoll changes per request, a third of the gateway's cost for small
 * responses (strace of bench/edge_bench.mjs). Here the upstream side is a plain libuv client.
 *
 * Downstream, an h2o generator: upstream body bytes go to `recv`; whenever h2o holds no chunk of
 * ours (it calls proceed once it wrote the previous one) `recv` is handed to h2o_send at once (a
 * Connect server stream or SSE event is never held back waiting for more bytes); while h2o still
 * holds one, `recv` fills up to HIGH_WATER and then the upstream socket stops reading (TCP
 * backpressure reaches the node proxy, which stops the sandbox's server). A read buffer that
 * arrives while `recv` is empty is swapped in whole, not copied. Memory per request: the three
 * buffers, about 2 * HIGH_WATER + 2 * READ_SIZE.
 *
 * Upstream: the request head is built as h2o's proxy builds it (the edge.c caller has already
 * replaced the X-Sandgate-* and X-Forwarded-Host headers): hop-by-hop headers dropped, cookies
 * merged, X-Forwarded-Proto / X-Forwarded-For / Via added, `Connection: keep-alive` (or `close`
 * when the connection is not pooled). Request bodies are h2o's buffered entity (bounded by the
 * caller's 413). The response head is parsed with picohttpparser (at most HEAD_MAX bytes,
 * MAX_HEADERS headers); its body is framed by Content-Length, chunked encoding (decoded here, h2o
 * frames it again for its client) or the connection's end; a body that ends early reaches the
 * client as an error (truncated), never as complete. Response headers lose the hop-by-hop ones,
 * Date and Server (h2o sets its own).
 *
 * Keep-alive: one pool of idle connections per node proxy address and worker thread (thread-
 * local, at most POOL_MAX addresses, never freed while the worker runs; past POOL_MAX nothing is
 * pooled), at most POOL_IDLE_MAX idle each, closed after POOL_IDLE_MS (below the node's own idle
 * bound, so the gateway closes first). A connection goes back to its pool only after a framed
 * response read to its exact end on HTTP/1.1 without `Connection: close`. Idle connections keep
 * reading: the node closing one (or sending anything) closes it at once. A reused connection that
 * ends before any byte of the answer (the node closed it as the request went out) is retried
 * once on a new connection when the method is idempotent.
 *
 * Timeouts: http.connect_timeout_ms until connected, then http.idle_timeout_ms between reads and
 * writes. Loop thread only; the exchange lives in the request's pool, and its dispose callback
 * closes the upstream connection when the client goes away mid-answer.
 */
#include <stdlib.h>
#include <string.h>
#include <netdb.h>
#include <sys/socket.h>
#include "gateway/internal.h"

#define HIGH_WATER (128 * 1024)
#define READ_SIZE (64 * 1024) /* room for one read once the body flows */
#define HEAD_MAX (64 * 1024)
#define MAX_HEADERS 100
#define POOL_MAX 64
#define POOL_IDLE_MAX 256
#define POOL_IDLE_MS 2000

typedef struct upconn upconn_t;
typedef struct eproxy eproxy_t;

typedef struct {
    char key[160]; /* "host:port" */
    char host[128];
    uint16_t port;
    h2o_linklist_t idle; /* upconn_t.link; most recently used first */
    size_t nidle;
} upool_t;

struct upconn {
    uv_tcp_t tcp;   /* first: close callbacks get this handle */
    upool_t *pool;  /* NULL: not pooled */
    eproxy_t *p;    /* the exchange; NULL while idle, connecting for nobody, or closing */
    h2o_buffer_t *in;
    h2o_linklist_t link; /* in pool->idle while idle */
    h2o_timeout_entry_t timer;
    uv_connect_t cr;
    uv_getaddrinfo_t gai;
    uv_write_t wr;
    bool reading, closing, resolving;
};

struct eproxy {
    h2o_generator_t super;
    h2o_req_t *req;
    upconn_t *c; /* NULL once the upstream exchange ended (or was given up) */
    h2o_timeout_t *connect_timeout, *io_timeout;
    upool_t *pool;
    h2o_iovec_t host;
    uint16_t port;
    h2o_iovec_t up[2]; /* request head, body */
    bool is_head, reused, retried, got_bytes;
    enum { HEAD, BODY } state;
    enum { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_CLOSE } framing;
    size_t left;                 /* BODY_LENGTH: bytes still to come */
    struct phr_chunked_decoder dec;
    bool keepalive;              /* the node allows another exchange on the connection */
    h2o_buffer_t *recv;          /* upstream body bytes not handed to h2o yet */
    h2o_buffer_t *sending;       /* the chunk h2o holds until it calls proceed */
    bool inflight, eos, failed, paused;
};

/* this worker thread's pools (each worker has its own loop) */
static _Thread_local upool_t *pools;
static _Thread_local size_t npools;
static _Thread_local h2o_timeout_t pool_idle_timeout; /* initialised with the first pool */
static _Thread_local char idle_sink[256];             /* what an idle connection reads into */

static void connect_new(eproxy_t *p);
static void send_request(eproxy_t *p);
static void on_connected(uv_connect_t *cr, int status);
static void on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res);
static bool retry(eproxy_t *p);
static void on_written(uv_write_t *wr, int status);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void on_io_timeout(h2o_timeout_entry_t *entry);
static void on_idle_timeout(h2o_timeout_entry_t *entry);
static void process(eproxy_t *p);
static void upstream_failed(eproxy_t *p, const char *stage, const char *err);
static void release(eproxy_t *p, bool reusable);
static void conn_close(upconn_t *c);
static bool do_send(eproxy_t *p);
static void on_proceed(h2o_generator_t *g, h2o_req_t *req);
static void on_stop(h2o_generator_t *g, h2o_req_t *req);
static void on_dispose(void *ptr);
static h2o_iovec_t build_head(h2o_req_t *req, bool keepalive);

/* The pool for host:port, created on first use; NULL when the table is full or host too long. */
static upool_t *pool_of(h2o_loop_t *loop, h2o_iovec_t host, uint16_t port)
{
    char key[160];
    int kl = snprintf(key, sizeof(key), "%.*s:%u", (int)host.len, host.base, (unsigned)port);
    if (kl < 0 || (size_t)kl >= sizeof(key) || host.len >= sizeof(pools->host))
        return NULL;
    for (size_t i = 0; i < npools; i++)
        if (strcmp(pools[i].key, key) == 0)
            return &pools[i];
    if (pools == NULL) {
        if ((pools = calloc(POOL_MAX, sizeof(*pools))) == NULL)
            return NULL;
        h2o_timeout_init(loop, &pool_idle_timeout, POOL_IDLE_MS);
    }
    if (npools == POOL_MAX)
        return NULL;
    upool_t *u = &pools[npools++];
    memcpy(u->key, key, (size_t)kl + 1);
    memcpy(u->host, host.base, host.len);
    u->host[host.len] = '\0';
    u->port = port;
    h2o_linklist_init_anchor(&u->idle);
    return u;
}

static bool is_idempotent(const h2o_iovec_t *m)
{
    static const char *const ok[] = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (h2o_memis(m->base, m->len, ok[i], strlen(ok[i])))
            return true;
    return false;
}

void sg__edge_proxy(h2o_req_t *req, h2o_timeout_t *connect_timeout, h2o_timeout_t *io_timeout,
                    h2o_iovec_t host, uint16_t port)
{
    eproxy_t *p = h2o_mem_alloc_shared(&req->pool, sizeof(*p), on_dispose);
    memset(p, 0, sizeof(*p));
    p->super.proceed = on_proceed;
    p->super.stop = on_stop;
    p->req = req;
    p->connect_timeout = connect_timeout;
    p->io_timeout = io_timeout;
    p->host = host;
    p->port = port;
    p->pool = pool_of(req->conn->ctx->loop, host, port);
    p->up[0] = build_head(req, p->pool != NULL);
    p->up[1] = req->entity;
    p->is_head = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    h2o_buffer_init(&p->recv, &h2o_socket_buffer_prototype);
    h2o_buffer_init(&p->sending, &h2o_socket_buffer_prototype);
    if (p->pool != NULL && !h2o_linklist_is_empty(&p->pool->idle)) {
        upconn_t *c = H2O_STRUCT_FROM_MEMBER(upconn_t, link, p->pool->idle.next);
        h2o_linklist_unlink(&c->link);
        p->pool->nidle--;
        h2o_timeout_unlink(&c->timer);
        c->p = p;
        p->c = c;
        p->reused = true;
        send_request(p);
        return;
    }
    connect_new(p);
}

/* ---- the upstream connection ---- */

static void connect_new(eproxy_t *p)
{
    uv_loop_t *loop = p->req->conn->ctx->loop;
    upconn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        upstream_failed(p, "connect", "out of memory");
        return;
    }
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
    c->pool = p->pool;
    c->p = p;
    h2o_buffer_init(&c->in, &h2o_socket_buffer_prototype);
    c->timer.cb = on_io_timeout;
    p->c = c;
    h2o_timeout_link(loop, p->connect_timeout, &c->timer);

    char host[128];
    snprintf(host, sizeof(host), "%.*s", (int)p->host.len, p->host.base);
    struct sockaddr_storage ss;
    int r;
    if (uv_ip4_addr(host, p->port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(host, p->port, (struct sockaddr_in6 *)&ss) == 0) {
        r = uv_tcp_connect(&c->cr, &c->tcp, (struct sockaddr *)&ss, on_connected);
    } else {
        /* a node proxy advertised by name: resolved on libuv's thread pool, per connection */
        char port[8];
        snprintf(port, sizeof(port), "%u", (unsigned)p->port);
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        r = uv_getaddrinfo(loop, &c->gai, on_resolved, host, port, &hints);
        c->resolving = r == 0;
    }
    if (r != 0)
        upstream_failed(p, "connect", uv_strerror(r));
}

static void on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res)
{
    upconn_t *c = H2O_STRUCT_FROM_MEMBER(upconn_t, gai, gai);
    int r = status;
    c->resolving = false;
    if (c->closing || c->p == NULL) { /* the client left meanwhile */
        uv_freeaddrinfo(res);
        c->closing = false;
        conn_close(c);
        return;
    }
    if (r == 0)
        r = uv_tcp_connect(&c->cr, &c->tcp, res->ai_addr, on_connected);
    uv_freeaddrinfo(res);
    if (r != 0)
        upstream_failed(c->p, "connect", uv_strerror(r));
}

static void on_connected(uv_connect_t *cr, int status)
{
    upconn_t *c = H2O_STRUCT_FROM_MEMBER(upconn_t, cr, cr);
    if (c->closing)
        return;
    if (c->p == NULL) {
        conn_close(c);
        return;
    }
    if (status != 0) {
        upstream_failed(c->p, "connect", uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    send_request(c->p);
}

static void send_request(eproxy_t *p)
{
    upconn_t *c = p->c;
    uv_loop_t *loop = c->tcp.loop;
    h2o_timeout_unlink(&c->timer);
    c->timer.cb = on_io_timeout;
    h2o_timeout_link(loop, p->io_timeout, &c->timer);
    uv_buf_t bufs[2] = {uv_buf_init(p->up[0].base, (unsigned)p->up[0].len),
                        uv_buf_init(p->up[1].base, (unsigned)p->up[1].len)};
    int r = uv_write(&c->wr, (uv_stream_t *)&c->tcp, bufs, p->up[1].base != NULL ? 2 : 1, on_written);
    if (r == 0 && !c->reading) {
        r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        c->reading = r == 0;
    }
    if (r != 0 && !retry(p))
        upstream_failed(p, "request", uv_strerror(r));
}

/* A pooled connection that failed before any byte of the answer: the node closed it as the
 * request went out. An idempotent request gets one new try on a new connection (true). */
static bool retry(eproxy_t *p)
{
    if (p->state != HEAD || p->got_bytes || !p->reused || p->retried ||
        !is_idempotent(&p->req->method))
        return false;
    upconn_t *c = p->c;
    p->c = NULL;
    c->p = NULL;
    conn_close(c);
    p->retried = true;
    p->reused = false;
    connect_new(p);
    return true;
}

static void on_written(uv_write_t *wr, int status)
{
    upconn_t *c = H2O_STRUCT_FROM_MEMBER(upconn_t, wr, wr);
    if (status == 0 || c->closing || c->p == NULL)
        return;
    /* A node that answered before taking the whole request body may close: its answer, if
     * any, is read as usual; without one the read side reports the end. */
    if (c->p->state == HEAD && !c->p->got_bytes && !retry(c->p))
        upstream_failed(c->p, "request", uv_strerror(status));
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    upconn_t *c = h->data;
    if (c->p == NULL) { /* idle: anything read closes the connection */
        *buf = uv_buf_init(idle_sink, sizeof(idle_sink));
        return;
    }
    h2o_iovec_t room = h2o_buffer_reserve(&c->in, c->p->state == HEAD ? 4096 : READ_SIZE);
    *buf = uv_buf_init(room.base, room.base != NULL ? (unsigned)room.len : 0);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    upconn_t *c = s->data;
    eproxy_t *p = c->p;
    if (n == 0)
        return;
    if (p == NULL) { /* idle: the node closed it (or broke the protocol) */
        if (h2o_linklist_is_linked(&c->link)) {
            h2o_linklist_unlink(&c->link);
            c->pool->nidle--;
        }
        conn_close(c);
        return;
    }
    if (n < 0) {
        if (retry(p))
            return;
        if (p->state == BODY && p->framing == BODY_CLOSE && n == UV_EOF) {
            release(p, false);
            p->eos = true;
            if (!p->inflight)
                do_send(p);
            return;
        }
        upstream_failed(p, p->state == HEAD ? "response head" : "response body",
                        n == UV_EOF ? "connection closed" : uv_strerror((int)n));
        return;
    }
    c->in->size += (size_t)n;
    p->got_bytes = true;
    h2o_timeout_unlink(&c->timer);
    h2o_timeout_link(c->tcp.loop, p->io_timeout, &c->timer);
    process(p);
}

static void on_io_timeout(h2o_timeout_entry_t *entry)
{
    upconn_t *c = H2O_STRUCT_FROM_MEMBER(upconn_t, timer, entry);
    if (c->p != NULL)
        upstream_failed(c->p, c->reading ? "response" : "connect", "timeout");
    else
        conn_close(c);
}

static void on_idle_timeout(h2o_timeout_entry_t *entry)
{
    upconn_t *c = H2O_STRUCT_FROM_MEMBER(upconn_t, timer, entry);
    h2o_linklist_unlink(&c->link);
    c->pool->nidle--;
    conn_close(c);
}

static void on_conn_closed(uv_handle_t *h)
{
    upconn_t *c = h->data;
    h2o_buffer_dispose(&c->in);
    free(c);
}

/* Closes c (detached from any exchange first). Safe to call once per connection. */
static void conn_close(upconn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->p = NULL;
    h2o_timeout_unlink(&c->timer);
    if (c->resolving)
        return; /* on_resolved closes it: c->gai is in use until then */
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/* The exchange is over for the upstream connection: back to its pool when it can carry another
 * one, else closed. */
static void release(eproxy_t *p, bool reusable)
{
    upconn_t *c = p->c;
    if (c == NULL)
        return;
    p->c = NULL;
    c->p = NULL;
    upool_t *u = c->pool;
    if (!reusable || u == NULL || u->nidle >= POOL_IDLE_MAX || c->in->size != 0) {
        conn_close(c);
        return;
    }
    h2o_timeout_unlink(&c->timer);
    h2o_buffer_dispose(&c->in); /* an idle connection holds no buffer */
    h2o_buffer_init(&c->in, &h2o_socket_buffer_prototype);
    if (!c->reading) { /* paused by backpressure at the very end */
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
            conn_close(c);
            return;
        }
        c->reading = true;
    }
    c->timer.cb = on_idle_timeout;
    h2o_timeout_link(c->tcp.loop, &pool_idle_timeout, &c->timer);
    h2o_linklist_insert(u->idle.next, &c->link);
    u->nidle++;
}

/* ---- the response ---- */

static void fail_502(eproxy_t *p, const char *what, const char *errstr)
{
    sg_log(SG_LOG_WARN, "edge proxy: upstream failed", SG_LS("stage", what), SG_LS("error", errstr));
    sg_http_error(p->req, 502, "The sandbox's node could not be reached");
}

/* The upstream connection failed: a 502 before the answer started, a truncated answer after. */
static void upstream_failed(eproxy_t *p, const char *stage, const char *err)
{
    bool started = p->state == BODY;
    if (p->c != NULL) {
        upconn_t *c = p->c;
        p->c = NULL;
        conn_close(c);
    }
    if (!started) {
        p->state = BODY; /* nothing more from upstream either way */
        p->eos = true;
        fail_502(p, stage, err);
        return;
    }
    sg_log(SG_LOG_WARN, "edge proxy: upstream body failed", SG_LS("error", err));
    p->eos = true;
    p->failed = true;
    if (!p->inflight)
        do_send(p);
}

static bool hdr_is(const struct phr_header *h, const char *name)
{
    return h2o_lcstris(h->name, h->name_len, name, strlen(name));
}

/* Parses the response head in c->in and starts the answer. Returns false when not complete yet
 * or when the exchange failed (p->state tells). */
static bool parse_head(eproxy_t *p)
{
    upconn_t *c = p->c;
    h2o_req_t *req = p->req;
    struct phr_header hs[MAX_HEADERS];
    size_t nh;
    int minor, status, hl;
    const char *msg;
    size_t msglen;
    for (;;) {
        nh = MAX_HEADERS;
        hl = phr_parse_response(c->in->bytes, c->in->size, &minor, &status, &msg, &msglen, hs, &nh, 0);
        if (hl == -2) {
            if (c->in->size >= HEAD_MAX)
                upstream_failed(p, "response head", "too large");
            return false;
        }
        if (hl < 0) {
            upstream_failed(p, "response head", "malformed");
            return false;
        }
        if (status == 101) { /* only Upgrade requests may switch, and those do not come here */
            upstream_failed(p, "response head", "101 to a request without Upgrade");
            return false;
        }
        if (status >= 200)
            break;
        h2o_buffer_consume(&c->in, (size_t)hl); /* 1xx: informational, the answer follows */
    }

    bool close = minor == 0, chunked = false, has_length = false;
    size_t length = 0;
    for (size_t i = 0; i < nh; i++) {
        const struct phr_header *h = &hs[i];
        if (hdr_is(h, "connection")) {
            if (h2o_contains_token(h->value, h->value_len, H2O_STRLIT("close"), ','))
                close = true;
            else if (minor == 0 && h2o_contains_token(h->value, h->value_len, H2O_STRLIT("keep-alive"), ','))
                close = false;
        } else if (hdr_is(h, "transfer-encoding")) {
            chunked = true; /* the node speaks HTTP/1.1: chunked is the only coding it sends */
        } else if (hdr_is(h, "content-length")) {
            size_t v = h2o_strtosize(h->value, h->value_len);
            if (v == SIZE_MAX || (has_length && v != length)) {
                upstream_failed(p, "response head", "malformed content-length");
                return false;
            }
            has_length = true;
            length = v;
        }
    }
    p->keepalive = !close;
    if (p->is_head || status == 204 || status == 304) {
        p->framing = BODY_NONE;
    } else if (chunked) {
        p->framing = BODY_CHUNKED;
        p->dec.consume_trailer = 1;
    } else if (has_length) {
        p->framing = BODY_LENGTH;
        p->left = length;
    } else {
        p->framing = BODY_CLOSE;
        p->keepalive = false;
    }

    req->res.status = status;
    req->res.reason = h2o_strdup(&req->pool, msg, msglen).base;
    for (size_t i = 0; i < nh; i++) {
        const struct phr_header *h = &hs[i];
        if (h->name == NULL) /* a folded continuation line: dropped */
            continue;
        h2o_strtolower((char *)h->name, h->name_len); /* tokens are lower case; c->in is ours */
        const h2o_token_t *t = h2o_lookup_token(h->name, h->name_len);
        if (t != NULL) {
            if (t->proxy_should_drop_for_res || t == H2O_TOKEN_SERVER || t == H2O_TOKEN_DATE ||
                t == H2O_TOKEN_X_COMPRESS_HINT || t == H2O_TOKEN_CONTENT_LENGTH ||
                t == H2O_TOKEN_TRANSFER_ENCODING)
                continue;
            h2o_iovec_t v = h2o_strdup(&req->pool, h->value, h->value_len);
            h2o_add_header(&req->pool, &req->res.headers, t, NULL, v.base, v.len);
        } else {
            h2o_iovec_t n = h2o_strdup(&req->pool, h->name, h->name_len);
            h2o_iovec_t v = h2o_strdup(&req->pool, h->value, h->value_len);
            h2o_add_header_by_str(&req->pool, &req->res.headers, n.base, n.len, 0, NULL, v.base, v.len);
        }
    }
    if (p->framing == BODY_LENGTH)
        req->res.content_length = length;
    else if (p->framing == BODY_NONE && p->is_head && has_length)
        req->res.content_length = length; /* HEAD: the length the GET would have */
    h2o_buffer_consume(&c->in, (size_t)hl);
    p->state = BODY;
    h2o_start_response(req, &p->super);
    return true;
}

/* Moves n bytes from the front of c->in to the end of p->recv (the whole buffer when recv is
 * empty and n is all of it: no copy). */
static void take(eproxy_t *p, size_t n)
{
    upconn_t *c = p->c;
    if (n == 0)
        return;
    if (p->recv->size == 0 && n == c->in->size) {
        h2o_buffer_t *t = p->recv;
        p->recv = c->in;
        c->in = t;
        return;
    }
    h2o_iovec_t room = h2o_buffer_reserve(&p->recv, n);
    memcpy(room.base, c->in->bytes, n);
    p->recv->size += n;
    h2o_buffer_consume(&c->in, n);
}

/* Everything c->in holds: the head first, then body bytes by the response's framing. */
static void process(eproxy_t *p)
{
    if (p->state == HEAD && !parse_head(p))
        return;
    upconn_t *c = p->c;
    if (c == NULL) /* failed while parsing */
        return;
    bool done = false, extra = false;
    switch (p->framing) {
    case BODY_NONE:
        done = true;
        extra = c->in->size != 0;
        break;
    case BODY_LENGTH: {
        size_t n = c->in->size < p->left ? c->in->size : p->left;
        extra = c->in->size > n;
        if (extra)
            c->in->size = n; /* what follows the body is not ours to pass on */
        take(p, n);
        p->left -= n;
        done = p->left == 0;
        break;
    }
    case BODY_CHUNKED: {
        size_t sz = c->in->size;
        ssize_t r = phr_decode_chunked(&p->dec, c->in->bytes, &sz);
        if (r == -1) {
            upstream_failed(p, "response body", "malformed chunked encoding");
            return;
        }
        c->in->size = sz;
        take(p, sz);
        if (r >= 0) {
            done = true;
            extra = r > 0;
        }
        break;
    }
    case BODY_CLOSE:
        take(p, c->in->size);
        break;
    }
    if (done) {
        release(p, p->keepalive && !extra);
        p->eos = true;
    } else if (p->recv->size >= HIGH_WATER && c->reading) {
        /* backpressure: nothing more from the node until h2o took what we hold */
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
        p->paused = true;
    }
    if (!p->inflight)
        do_send(p);
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
    upconn_t *c = p->c;
    if (p->paused && c != NULL && p->recv->size < HIGH_WATER) {
        p->paused = false;
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = true;
        else
            upstream_failed(p, "response body", "read restart failed");
    }
}

/* The client is gone mid-answer: the upstream connection cannot carry another exchange. */
static void on_stop(h2o_generator_t *g, h2o_req_t *req)
{
    eproxy_t *p = (eproxy_t *)g;
    if (p->c != NULL) {
        upconn_t *c = p->c;
        p->c = NULL;
        conn_close(c);
    }
}

static void on_dispose(void *ptr)
{
    eproxy_t *p = ptr;
    if (p->c != NULL) {
        upconn_t *c = p->c;
        p->c = NULL;
        conn_close(c);
    }
    h2o_buffer_dispose(&p->recv);
    h2o_buffer_dispose(&p->sending);
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

