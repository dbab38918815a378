/*
 * The node proxy (docs/node-api.md "Node proxy"): a small HTTP/1.1 relay on libuv instead of
 * h2o's built-in proxy, because h2o 2.2.5 spools a slow client's whole response to /tmp.
 *
 * Per request: read the request head (at most 64 KiB, 10 s for a connection's first one), check
 * the node token in constant time, resolve X-Sandgate-Sandbox-Id/-Port, connect to <sandbox
 * address>:<port> (5 s) or reuse the kept connection (below), send the head without the three
 * X-Sandgate headers, then relay bytes both ways. Each direction has one 64 KiB buffer; a write
 * the destination cannot take at once stops reading its source until it is done, so a slow
 * reader pauses the sender through TCP backpressure: memory per connection is bounded (~260 KiB:
 * the two relay buffers and the request and response head buffers). WebSocket upgrades are the
 * same relay.
 *
 * Keep-alive towards the client (the gateway): a request that is HTTP/1.1, no upgrade, no
 * "Connection: close" and framed by Content-Length (or bodiless) is relayed exactly (req_left
 * bytes of body, no more); when its response is framed too (Content-Length, HEAD, 204, 304) the
 * relay counts resp_left bytes and then reads the client's next request (idle bound KEEPALIVE_MS;
 * bytes that arrived early wait in `head`). Anything else (chunked, close-delimited, a response
 * before the whole request body was taken, an early EOF) falls back to the one-request
 * connection: "Connection: close" both ways, relay until both sides end.
 *
 * The sandbox connection of a keep-alive exchange: the request goes without "Connection: close";
 * when the sandbox's framed response leaves the connection open (HTTP/1.1, no "Connection:
 * close", nothing past the body) it is kept, idle and watched (the sandbox closing it drops it),
 * and the client's next request reuses it when it is for the same sandbox and port and the
 * connection has been idle less than UPSTREAM_IDLE_MS (a server may close an idle connection at
 * any moment; an older one is not trusted with a request). Otherwise it is reset (RST: nothing
 * is in flight, and no TIME-WAIT is left on the node's ports) and a new one connected. A sandbox
 * that closes instead gets to close first (at most DRAIN_MS) so that its TIME-WAIT stays on its
 * side. So a client's steady requests to one sandbox port cost no connection each.
 * A chunked response body is followed (sg__chunk_track) so that an upstream ending inside it (a
 * killed sandbox) reaches the client as a truncated body, not as a complete one.
 */
#include <stdlib.h>
#include <string.h>
#include "common/common.h"
#include "node/internal.h"

#define HEAD_MAX (64 * 1024)
#define BUF_SIZE (64 * 1024)
#define HEADER_TIMEOUT_MS 10000
#define CONNECT_TIMEOUT_MS 5000
#define KEEPALIVE_MS 60000 /* above the gateways' pool timeout: the gateway closes first */
#define DRAIN_MS 1000      /* how long a sandbox may take to close after its framed response */
#define UPSTREAM_IDLE_MS 2000 /* a kept sandbox connection idle longer is not reused (see top) */

typedef struct sg__proxy {
    uv_tcp_t listener;
    sg__node_t *n;
    int nconns;
} proxy_t;

typedef struct pconn pconn_t;
typedef struct {
    pconn_t *c;
    uv_stream_t *src, *dst;
    char buf[BUF_SIZE];
    uv_write_t w;
    uv_shutdown_t sh;
    bool eof;
    bool reading, writing;
} dir_t;

struct pconn {
    proxy_t *px;
    uv_tcp_t client, upstream;
    uv_timer_t timer;
    uv_connect_t connreq;
    uv_write_t w;
    char *head;
    size_t head_len;
    char *resp; /* error response or rewritten head being written */
    int port;
    bool upstream_init, closing, relaying;
    bool resp_done;  /* the response head went out (rewritten); the rest is relayed as is */
    char *rhead;     /* response head being collected (HEAD_MAX) */
    size_t rhead_len;
    char *rout;      /* rewritten response head(s) being written */
    bool chunked;    /* a chunked response body is being relayed and has not ended yet */
    sg__chunk_track_t ct;
    int open_handles;
    bool head_reading; /* client read with on_head_read */
    /* keep-alive (see the note at the top) */
    bool ka, is_head, recycling;
    bool draining; /* ka: response relayed, waiting for the sandbox to close its side first */
    long long req_left;  /* ka: request body bytes not yet read from the client */
    long long resp_left; /* ka and the response is framed: body bytes not yet relayed */
    size_t head_fwd;     /* ka: bytes of `head` sent upstream with the request head */
    /* the sandbox connection kept for the next request (see the note at the top) */
    bool up_keep;        /* the response in progress leaves `upstream` open for another request */
    bool up_idle;        /* `upstream` is open and idle, connected to up_sbx:up_port */
    char up_sbx[64];
    int up_port;
    uint64_t up_idle_since; /* loop time (ms) when its last exchange ended */
    struct sockaddr_in up_sa; /* where the next connect goes */
    void (*after_drop)(pconn_t *c);
    dir_t c2u, u2c;
};

static void conn_close(pconn_t *c);
static void on_upstream_recycled(uv_handle_t *h);
static void keep_upstream(pconn_t *c);
static void serve_next(pconn_t *c);
static void handle_head(pconn_t *c);
static void read_heads(pconn_t *c);
static void on_timeout(uv_timer_t *t);

static void on_handle_closed(uv_handle_t *h)
{
    pconn_t *c = h->data;
    if (--c->open_handles == 0) {
        c->px->nconns--;
        free(c->head);
        free(c->resp);
        free(c->rhead);
        free(c->rout);
        free(c);
    }
}

static void conn_close(pconn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->client, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    /* an idle kept sandbox connection is reset: nothing is in flight on it, and no TIME-WAIT
     * is left on the node's ports */
    if (c->upstream_init &&
        !(c->up_idle && uv_tcp_close_reset(&c->upstream, on_handle_closed) == 0))
        uv_close((uv_handle_t *)&c->upstream, on_handle_closed);
}

static void on_resp_written(uv_write_t *w, int status) { conn_close(w->data); }

static void respond(pconn_t *c, int status, const char *message)
{
    uv_read_stop((uv_stream_t *)&c->client);
    if (c->upstream_init)
        uv_read_stop((uv_stream_t *)&c->upstream);
    json_t *o = json_pack("{s:i,s:s}", "code", status, "message", message);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    size_t bl = body ? strlen(body) : 0;
    free(c->resp);
    c->resp = malloc(bl + 256);
    if (c->resp == NULL) {
        free(body);
        conn_close(c);
        return;
    }
    int n;
    if (status == 204)
        n = snprintf(c->resp, 256, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    else
        n = snprintf(c->resp, bl + 256,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     status, sg_http_reason(status), bl, body ? body : "");
    free(body);
    uv_buf_t b = uv_buf_init(c->resp, (unsigned)n);
    c->w.data = c;
    if (uv_write(&c->w, (uv_stream_t *)&c->client, &b, 1, on_resp_written) != 0)
        conn_close(c);
}

/* ---- relay ------------------------------------------------------------------------------------ */

static void on_dir_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b);
static void on_dir_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

static void dir_read(dir_t *d)
{
    if (d->reading || d->writing || d->eof)
        return;
    if (uv_read_start(d->src, on_dir_alloc, on_dir_read) != 0) {
        conn_close(d->c);
        return;
    }
    d->reading = true;
}

static void dir_pause(dir_t *d)
{
    if (d->reading)
        uv_read_stop(d->src);
    d->reading = false;
}

static void maybe_done(pconn_t *c)
{
    if (c->c2u.eof && c->u2c.eof)
        conn_close(c);
}

static void on_shutdown(uv_shutdown_t *sh, int status) { maybe_done(sh->data); }

/* The response ended where its framing says (ka): drop the upstream connection, then serve the
 * client's next request (on_upstream_recycled). */
/* The sandbox answered before taking the whole request body: the client connection is
 * mid-request, so it cannot carry another one. */
static bool mid_request(const pconn_t *c) { return c->req_left > 0 || c->c2u.writing; }

static void next_request(pconn_t *c)
{
    c->draining = false;
    uv_timer_stop(&c->timer);
    if (mid_request(c)) {
        conn_close(c);
        return;
    }
    c->recycling = true;
    c->upstream_init = false;
    dir_pause(&c->u2c);
    uv_close((uv_handle_t *)&c->upstream, on_upstream_recycled);
}

/* The framed response is relayed. The sandbox was asked to close ("Connection: close"): let it
 * close first so that TIME-WAIT lands on its side, not on the node's ephemeral ports (at a few
 * hundred requests a second the node would run out of them); DRAIN_MS bounds a server that does
 * not close, and anything it still sends is dropped. */
static void await_upstream_close(pconn_t *c)
{
    if (c->up_keep) { /* the sandbox keeps it open: kept for the next request instead */
        keep_upstream(c);
        return;
    }
    c->draining = true;
    uv_timer_start(&c->timer, on_timeout, DRAIN_MS, 0);
    dir_read(&c->u2c);
}

/* Switches a keep-alive request to the one-request relay (the response is not framed): the
 * client's side is read again so that its EOF ends the connection, as without keep-alive. */
static void fall_back_to_close(pconn_t *c)
{
    c->ka = false;
    c->head_len = 0; /* a pipelined next request is not served */
    dir_read(&c->c2u);
}

/* A write toward d->dst ended (status 0: all of it went out): what direction d does next. */
static void dir_written(dir_t *d, int status)
{
    pconn_t *c = d->c;
    d->writing = false;
    if (c->closing || (c->recycling && d == &c->c2u))
        return;
    if (status != 0) {
        conn_close(c);
        return;
    }
    if (c->ka && d == &c->u2c && c->resp_done && c->resp_left == 0) {
        await_upstream_close(c);
        return;
    }
    if (c->ka && d == &c->c2u && c->req_left == 0) {
        dir_pause(d); /* the request body is complete: the client's next bytes are the next request */
        return;
    }
    dir_read(d);
}

static void on_dir_written(uv_write_t *w, int status) { dir_written(w->data, status); }

static dir_t *dir_of(pconn_t *c, uv_stream_t *src)
{
    return src == (uv_stream_t *)&c->client ? &c->c2u : &c->u2c;
}

static void on_dir_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    dir_t *d = dir_of(h->data, (uv_stream_t *)h);
    *b = uv_buf_init(d->buf, BUF_SIZE);
}

/* Writes bufs toward d->dst. Most writes go out at once (the destination's socket has room):
 * then d keeps reading, without the read stop and restart (two epoll changes) that a queued
 * write needs for backpressure. */
static void dir_write(dir_t *d, uv_buf_t *bufs, unsigned nb)
{
    size_t total = 0;
    for (unsigned i = 0; i < nb; i++)
        total += bufs[i].len;
    int n = uv_try_write(d->dst, bufs, nb);
    if (n >= 0 && (size_t)n == total) {
        dir_written(d, 0);
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        conn_close(d->c);
        return;
    }
    for (size_t left = n > 0 ? (size_t)n : 0; left > 0 && nb > 0;) { /* skip what went out */
        size_t k = left < bufs[0].len ? left : bufs[0].len;
        bufs[0].base += k;
        bufs[0].len -= k;
        left -= k;
        if (bufs[0].len == 0) {
            bufs++;
            nb--;
        }
    }
    dir_pause(d);
    d->w.data = d;
    d->writing = true;
    if (uv_write(&d->w, d->dst, bufs, nb, on_dir_written) != 0) {
        d->writing = false;
        conn_close(d->c);
    }
}

/* Collects the upstream's response head and sends it rewritten (see sg__proxy_rewrite_response);
 * 1xx heads other than 101 pass first. Returns true when it consumed the bytes. */
static bool response_head(pconn_t *c, dir_t *d, const char *data, size_t len)
{
    if (c->rhead == NULL && (c->rhead = malloc(HEAD_MAX)) == NULL) {
        conn_close(c);
        return true;
    }
    if (len > HEAD_MAX - c->rhead_len) {
        respond(c, 502, "the sandbox sent a response head that is too large");
        return true;
    }
    memcpy(c->rhead + c->rhead_len, data, len);
    c->rhead_len += len;
    size_t off = 0, out_len = 0;
    char *out = NULL;
    for (;;) {
        char *h;
        size_t hl, consumed;
        int status;
        long long body_len;
        int r = sg__proxy_rewrite_response_ka(c->rhead + off, c->rhead_len - off, c->ka,
                                              c->is_head, &h, &hl, &consumed, &status, &body_len);
        if (r < 0) {
            free(out);
            if (out_len == 0) {
                respond(c, 502, "the sandbox sent a malformed response");
            } else {
                conn_close(c);
            }
            return true;
        }
        if (r == 0)
            break;
        char *grown = realloc(out, out_len + hl);
        if (grown == NULL) {
            free(h);
            free(out);
            conn_close(c);
            return true;
        }
        out = grown;
        memcpy(out + out_len, h, hl);
        out_len += hl;
        free(h);
        bool final = status != 101 && status >= 200;
        bool up_ka = final && sg__proxy_response_keepalive(c->rhead + off, consumed);
        off += consumed;
        if (status == 101 || status >= 200) {
            c->resp_done = true;
            if (c->ka && body_len >= 0) {
                c->resp_left = body_len;
                c->up_keep = up_ka;
            } else if (c->ka) {
                fall_back_to_close(c);
            }
            c->chunked = status != 101 && status != 204 && status != 304 &&
                         !c->is_head &&
                         sg__proxy_head_chunked(out + out_len - hl, hl);
            if (c->chunked && sg__chunk_track(&c->ct, c->rhead + off, c->rhead_len - off) != 0)
                c->chunked = false;
            break;
        }
    }
    if (out_len == 0)
        return true; /* need more of the head: keep reading */
    /* Whatever follows the head(s) goes out with them; an unfinished 1xx tail keeps collecting. */
    uv_buf_t bufs[2];
    unsigned nb = 0;
    free(c->rout);
    c->rout = out;
    bufs[nb++] = uv_buf_init(out, (unsigned)out_len);
    if (c->resp_done) {
        size_t rest = c->rhead_len - off;
        if (c->ka && (long long)rest > c->resp_left) {
            rest = (size_t)c->resp_left; /* bytes past the framed body are not the client's */
            c->up_keep = false;          /* and the connection is out of step: not reused */
        }
        if (c->ka)
            c->resp_left -= (long long)rest;
        if (rest > 0)
            bufs[nb++] = uv_buf_init(c->rhead + off, (unsigned)rest);
        c->rhead_len = 0;
    } else {
        memmove(c->rhead, c->rhead + off, c->rhead_len - off);
        c->rhead_len -= off;
    }
    dir_write(d, bufs, nb);
    return true;
}

static void on_dir_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    pconn_t *c = s->data;
    dir_t *d = dir_of(c, s);
    if (nread == 0)
        return;
    if (c->draining && d == &c->u2c) {
        if (nread < 0)
            next_request(c); /* the sandbox closed (or failed): either way the exchange is over */
        return;              /* bytes past the framed response: not the client's */
    }
    if (nread > 0 && d == &c->u2c && !c->resp_done) {
        response_head(c, d, b->base, (size_t)nread);
        return;
    }
    if (nread < 0) {
        dir_pause(d);
        if (d == &c->u2c && c->chunked) {
            /* The sandbox went away inside a chunked body (killed, or its server died): make
             * the truncation visible downstream, then close (sg__chunk_abort_bytes). */
            const char *tail = sg__chunk_abort_bytes(&c->ct);
            if (*tail != '\0') {
                /* No write is pending toward the client (reads stop while one is), so these
                 * few bytes go straight out; best effort, the close follows either way. */
                uv_buf_t tb = uv_buf_init((char *)tail, (unsigned)strlen(tail));
                (void)uv_try_write(d->dst, &tb, 1);
            }
            conn_close(c);
            return;
        }
        /* keep-alive: an EOF before the framed end is a truncated message */
        if (nread != UV_EOF || c->ka) {
            conn_close(c);
            return;
        }
        d->eof = true;
        d->sh.data = c;
        if (uv_shutdown(&d->sh, d->dst, on_shutdown) != 0)
            maybe_done(c);
        return;
    }
    if (d == &c->u2c && c->chunked && sg__chunk_track(&c->ct, b->base, (size_t)nread) != 0)
        c->chunked = false; /* ended (or not chunked framing after all): EOF is no truncation */
    size_t n = (size_t)nread;
    if (c->ka && d == &c->c2u) {
        if ((long long)n > c->req_left) {
            /* the next request's first bytes: kept for later (head_len is 0 while a body is
             * being read, and they fit: BUF_SIZE <= HEAD_MAX) */
            size_t extra = n - (size_t)c->req_left;
            memcpy(c->head, d->buf + c->req_left, extra);
            c->head_len = extra;
            n = (size_t)c->req_left;
        }
        c->req_left -= (long long)n;
        if (n == 0) {
            dir_pause(d);
            return;
        }
    } else if (c->ka && d == &c->u2c) {
        if ((long long)n > c->resp_left) {
            n = (size_t)c->resp_left; /* past the framed body: not the client's */
            c->up_keep = false;
        }
        c->resp_left -= (long long)n;
        if (n == 0) { /* (reading stops at the framed end; should it not, the same ending) */
            dir_pause(d);
            await_upstream_close(c);
            return;
        }
    }
    /* Backpressure: no more reads from this side until the other side took these bytes. */
    uv_buf_t out = uv_buf_init(d->buf, (unsigned)n);
    dir_write(d, &out, 1);
}

static void start_relay(pconn_t *c)
{
    c->relaying = true;
    c->c2u = (dir_t){.c = c, .src = (uv_stream_t *)&c->client, .dst = (uv_stream_t *)&c->upstream};
    c->u2c = (dir_t){.c = c, .src = (uv_stream_t *)&c->upstream, .dst = (uv_stream_t *)&c->client};
    if (!c->ka || c->req_left > 0)
        dir_read(&c->c2u);
    dir_read(&c->u2c);
}

static void on_head_sent(uv_write_t *w, int status)
{
    pconn_t *c = w->data;
    if (c->closing)
        return;
    if (status != 0) {
        conn_close(c);
        return;
    }
    /* what is left in `head` after the forwarded body is the next request (ka) */
    memmove(c->head, c->head + c->head_fwd, c->head_len - c->head_fwd);
    c->head_len -= c->head_fwd;
    c->head_fwd = 0;
    start_relay(c);
}

/* Sends the request head (c->resp) on `upstream`, connected or reused. */
static void send_head(pconn_t *c)
{
    /* c->resp holds the rewritten head; bytes already read past the head follow it (ka: only
     * the request's own body; later bytes stay for the next request). */
    size_t fwd = c->head_len;
    if (c->ka && (long long)fwd > c->req_left)
        fwd = (size_t)c->req_left;
    if (c->ka)
        c->req_left -= (long long)fwd;
    c->head_fwd = fwd;
    uv_buf_t bufs[2] = {uv_buf_init(c->resp, (unsigned)strlen(c->resp)),
                        uv_buf_init(c->head, (unsigned)fwd)};
    c->w.data = c;
    if (uv_write(&c->w, (uv_stream_t *)&c->upstream, bufs, fwd ? 2 : 1, on_head_sent) != 0)
        conn_close(c);
}

static void on_upstream_connect(uv_connect_t *req, int status)
{
    pconn_t *c = req->data;
    if (c->closing)
        return;
    uv_timer_stop(&c->timer);
    if (status != 0) {
        char msg[96];
        snprintf(msg, sizeof(msg), "The sandbox is running but port %d is not open", c->port);
        respond(c, 502, msg);
        return;
    }
    send_head(c);
}

static void connect_upstream(pconn_t *c)
{
    uv_tcp_init(c->client.loop, &c->upstream);
    c->upstream.data = c;
    c->upstream_init = true;
    c->open_handles++;
    uv_tcp_nodelay(&c->upstream, 1);
    c->connreq.data = c;
    uv_timer_start(&c->timer, on_timeout, CONNECT_TIMEOUT_MS, 0);
    if (uv_tcp_connect(&c->connreq, &c->upstream, (struct sockaddr *)&c->up_sa, on_upstream_connect) != 0) {
        char msg[96];
        snprintf(msg, sizeof(msg), "The sandbox is running but port %d is not open", c->port);
        respond(c, 502, msg);
    }
}

/* ---- the kept sandbox connection ---- */

static void on_upstream_dropped(uv_handle_t *h)
{
    pconn_t *c = h->data;
    if (c->closing) {
        on_handle_closed(h);
        return;
    }
    c->open_handles--;
    void (*then)(pconn_t *) = c->after_drop;
    c->after_drop = NULL;
    if (then != NULL)
        then(c);
}

/* Closes the idle kept connection (reset: nothing is in flight); then `then` runs, if any. */
static void drop_idle_upstream(pconn_t *c, void (*then)(pconn_t *))
{
    c->up_idle = false;
    c->upstream_init = false;
    c->after_drop = then;
    uv_read_stop((uv_stream_t *)&c->upstream);
    if (uv_tcp_close_reset(&c->upstream, on_upstream_dropped) != 0)
        uv_close((uv_handle_t *)&c->upstream, on_upstream_dropped);
}

static void on_idle_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    pconn_t *c = h->data;
    *b = uv_buf_init(c->u2c.buf, BUF_SIZE); /* the relay buffer is free while idle */
}

/* The sandbox closed its idle connection, or sent what no request asked for: not reusable. */
static void on_idle_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    pconn_t *c = s->data;
    if (nread != 0 && c->up_idle)
        drop_idle_upstream(c, NULL);
}

/* The framed response is relayed and the sandbox keeps its connection open: it stays, watched
 * for the sandbox closing it, for the client's next request if that is for the same sandbox and
 * port. */
static void keep_upstream(pconn_t *c)
{
    uv_timer_stop(&c->timer);
    if (mid_request(c)) {
        conn_close(c);
        return;
    }
    dir_pause(&c->u2c);
    if (uv_read_start((uv_stream_t *)&c->upstream, on_idle_alloc, on_idle_read) != 0) {
        conn_close(c);
        return;
    }
    c->up_idle = true;
    c->up_idle_since = uv_now(c->client.loop);
    serve_next(c);
}

static void on_timeout(uv_timer_t *t)
{
    pconn_t *c = t->data;
    if (c->draining) {
        next_request(c); /* the sandbox keeps its side open: close ours */
        return;
    }
    if (c->upstream_init && !c->relaying && !c->up_idle) {
        char msg[96];
        snprintf(msg, sizeof(msg), "The sandbox is running but port %d is not open", c->port);
        respond(c, 502, msg);
        return;
    }
    conn_close(c); /* slow request head, or an idle keep-alive connection */
}

static void on_head_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    pconn_t *c = h->data;
    *b = uv_buf_init(c->head + c->head_len, (unsigned)(HEAD_MAX - c->head_len));
}

static void on_head_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    pconn_t *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->head_len += (size_t)nread;
    handle_head(c);
}

/* Reads (more of) a request head from the client. */
static void read_heads(pconn_t *c)
{
    if (c->head_reading)
        return;
    if (uv_read_start((uv_stream_t *)&c->client, on_head_alloc, on_head_read) != 0) {
        conn_close(c);
        return;
    }
    c->head_reading = true;
}

/* The upstream connection of the previous request is closed: serve the next one. */
static void on_upstream_recycled(uv_handle_t *h)
{
    pconn_t *c = h->data;
    c->recycling = false;
    if (c->closing) {
        on_handle_closed(h);
        return;
    }
    c->open_handles--;
    serve_next(c);
}

/* The previous exchange is over (its upstream connection closed or kept idle): the next request. */
static void serve_next(pconn_t *c)
{
    c->relaying = false;
    c->resp_done = false;
    c->rhead_len = 0;
    c->ka = false;
    c->resp_left = 0;
    c->up_keep = false;
    free(c->rout);
    c->rout = NULL;
    uv_timer_start(&c->timer, on_timeout, KEEPALIVE_MS, 0);
    if (c->head_len > 0)
        handle_head(c); /* early bytes of the next request */
    else
        read_heads(c);
}

static void handle_head(pconn_t *c)
{
    sg__proxy_head_t h;
    int r = sg__proxy_parse_head(c->head, c->head_len, c->px->n->cfg->node_token, &h);
    if (r == 0) {
        if (c->head_len >= HEAD_MAX)
            respond(c, 431, "request head too large");
        else
            read_heads(c);
        return;
    }
    if (c->head_reading)
        uv_read_stop((uv_stream_t *)&c->client);
    c->head_reading = false;
    if (h.health) {
        respond(c, 204, "");
        return;
    }
    if (r < 0 || h.status != 0) {
        respond(c, h.status ? h.status : 400, h.message ? h.message : "malformed request");
        free(h.out);
        return;
    }
    sg__sbx_t *sb = sg__node_find(c->px->n, h.sandbox, strlen(h.sandbox));
    if (sb == NULL) {
        char msg[128];
        snprintf(msg, sizeof(msg), "sandbox \"%s\" not found", h.sandbox);
        respond(c, 404, msg);
        free(h.out);
        return;
    }
    c->port = h.port;
    if (sb->state != SBX_RUNNING) {
        char msg[96];
        snprintf(msg, sizeof(msg), "The sandbox is running but port %d is not open", c->port);
        respond(c, 502, msg);
        free(h.out);
        return;
    }
    c->ka = h.keepalive;
    c->is_head = h.is_head;
    c->req_left = h.keepalive ? h.body_len : 0;
    /* Keep the rewritten head (NUL-terminated) and move the bytes after the head down. */
    free(c->resp);
    c->resp = malloc(h.out_len + 1);
    if (c->resp == NULL) {
        free(h.out);
        conn_close(c);
        return;
    }
    memcpy(c->resp, h.out, h.out_len);
    c->resp[h.out_len] = '\0';
    free(h.out);
    memmove(c->head, c->head + h.head_len, c->head_len - h.head_len);
    c->head_len -= h.head_len;

    uv_ip4_addr(sb->addr, c->port, &c->up_sa);
    bool same = strcmp(c->up_sbx, h.sandbox) == 0 && c->up_port == c->port;
    snprintf(c->up_sbx, sizeof(c->up_sbx), "%s", h.sandbox);
    c->up_port = c->port;
    if (c->up_idle) {
        /* a sandbox server may close an idle connection at any time: one idle a while is not
         * trusted with a request (it could close under it), a fresh connection is */
        if (same && uv_now(c->client.loop) - c->up_idle_since < UPSTREAM_IDLE_MS) {
            uv_read_stop((uv_stream_t *)&c->upstream);
            c->up_idle = false;
            uv_timer_stop(&c->timer);
            send_head(c);
            return;
        }
        drop_idle_upstream(c, connect_upstream);
        return;
    }
    connect_upstream(c);
}

static void on_accept(uv_stream_t *l, int status)
{
    proxy_t *px = l->data;
    if (status != 0)
        return;
    pconn_t *c = calloc(1, sizeof(*c));
    char *head = malloc(HEAD_MAX);
    if (c == NULL || head == NULL) {
        free(c);
        free(head);
        return;
    }
    c->px = px;
    c->head = head;
    uv_tcp_init(l->loop, &c->client);
    uv_timer_init(l->loop, &c->timer);
    c->client.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    px->nconns++;
    if (uv_accept(l, (uv_stream_t *)&c->client) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->client, 1);
    uv_timer_start(&c->timer, on_timeout, HEADER_TIMEOUT_MS, 0);
    read_heads(c);
}

int sg__proxy_start(sg__node_t *n)
{
    proxy_t *px = calloc(1, sizeof(*px));
    if (px == NULL)
        return SG_ENOMEM;
    n->proxy = px;
    px->n = n;
    struct sockaddr_storage sa;
    if (sg__parse_hostport(n->cfg->proxy_listen, &sa) != 0) {
        sg_log(SG_LOG_ERROR, "proxy_listen must be addr:port",
               SG_LS("proxy_listen", n->cfg->proxy_listen));
        return SG_EINVAL;
    }
    uv_tcp_init(n->loop, &px->listener);
    px->listener.data = px;
    int r;
    if ((r = uv_tcp_bind(&px->listener, (struct sockaddr *)&sa, 0)) != 0 ||
        (r = uv_listen((uv_stream_t *)&px->listener, 1024, on_accept)) != 0) {
        sg_log(SG_LOG_ERROR, "node proxy listen failed", SG_LS("addr", n->cfg->proxy_listen),
               SG_LS("err", uv_strerror(r)));
        return SG_EIO;
    }
    return 0;
}

void sg__proxy_stop(sg__node_t *n) { (void)n; }
