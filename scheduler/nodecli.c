/*
 * A small asynchronous HTTP/1.1 client for the node API, on libuv (one per loop).
 *
 * Node API calls are small JSON exchanges, so a request and its response are held whole (response
 * bounded by MAX_RESPONSE). Connections are kept alive in a per-client idle pool keyed by
 * "host:port" (at most MAX_IDLE_PER_HOST each); an idle connection that the node closed is noticed
 * by its pending read and dropped. A request sent on a reused connection that fails before any
 * byte of a response is retried once on a fresh connection (the node may have closed the idle
 * connection just as we wrote). Names are resolved with uv_getaddrinfo, never blocking the loop.
 *
 * Lifetimes: a request owns a timer (freed in the timer's close callback); a connection owns its
 * TCP handle (freed in the handle's close callback). A request's callback runs once, from a loop
 * callback; cancel suppresses it and closes the connection the request was using.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "scheduler/sched_int.h"

#define MAX_RESPONSE (8u << 20)
#define MAX_IDLE_PER_HOST 32

typedef struct conn conn_t;

struct sg_nodecli {
    uv_loop_t *loop;
    char *token;
    conn_t *idle; /* singly linked */
    bool closing;
};

struct conn {
    uv_tcp_t tcp;
    uv_connect_t connreq;
    uv_write_t wr;
    sg_nodecli_t *cli;
    sg_nodecli_req_t *req; /* NULL when idle */
    conn_t *next;
    char hostport[128];
    bool closed;
    char sink[256];
};

struct sg_nodecli_req {
    sg_nodecli_t *cli;
    conn_t *conn;
    uv_timer_t timer;
    uv_getaddrinfo_t gai;
    bool resolving;
    char hostport[128];
    char *out;
    size_t outlen;
    char *in;
    size_t inlen, incap;
    bool reused, retried, done, canceled;
    int timeout_ms;
    int pending_err; /* an error found synchronously, delivered by the timer */
    sg_nodecli_cb cb;
    void *data;
};

static void start(sg_nodecli_req_t *req);
static void connect_to(sg_nodecli_req_t *req, const struct sockaddr *sa);
static void send_on(sg_nodecli_req_t *req, conn_t *c);
static void finish(sg_nodecli_req_t *req, int err, int status, const char *body, size_t len,
                   bool keep);
static void conn_close(conn_t *c);
static void on_timeout(uv_timer_t *t);
static void on_timer_closed(uv_handle_t *h);
static void on_conn_closed(uv_handle_t *h);
static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res);
static void on_connected(uv_connect_t *cr, int status);
static void on_written(uv_write_t *w, int status);
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static int parse(sg_nodecli_req_t *req, bool eof);
static int split_hostport(const char *hp, char *host, size_t hcap, int *port);

sg_nodecli_t *sg_nodecli_new(uv_loop_t *loop, const char *token)
{
    sg_nodecli_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->loop = loop;
    if ((c->token = strdup(token != NULL ? token : "")) == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

void sg_nodecli_free(sg_nodecli_t *c)
{
    /* Requests in flight must have been cancelled by the owner; idle connections close here and
     * free themselves; the client struct is released at once because idle connections no longer
     * point back to it once closed. */
    for (conn_t *x = c->idle, *nx; x != NULL; x = nx) {
        nx = x->next;
        x->cli = NULL;
        conn_close(x);
    }
    free(c->token);
    free(c);
}

sg_nodecli_req_t *sg_nodecli_request(sg_nodecli_t *c, const char *hostport, const char *method,
                                     const char *path, const char *body, size_t len,
                                     int timeout_ms, sg_nodecli_cb cb, void *data)
{
    sg_nodecli_req_t *req = calloc(1, sizeof(*req));
    if (req == NULL)
        return NULL;
    size_t cap = strlen(method) + strlen(path) + strlen(hostport) + strlen(c->token) + len + 256;
    if ((req->out = malloc(cap)) == NULL) {
        free(req);
        return NULL;
    }
    int n = snprintf(req->out, cap,
                     "%s %s HTTP/1.1\r\nhost: %s\r\nx-sandgate-node-token: %s\r\n"
                     "content-type: application/json\r\ncontent-length: %zu\r\n\r\n",
                     method, path, hostport, c->token, len);
    memcpy(req->out + n, body, len);
    req->outlen = (size_t)n + len;
    snprintf(req->hostport, sizeof(req->hostport), "%s", hostport);
    req->cli = c;
    req->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    req->cb = cb;
    req->data = data;
    uv_timer_init(c->loop, &req->timer);
    req->timer.data = req;
    uv_timer_start(&req->timer, on_timeout, (uint64_t)req->timeout_ms, 0);
    start(req);
    return req;
}

void sg_nodecli_cancel(sg_nodecli_req_t *req)
{
    req->canceled = true;
    finish(req, SG_ECANCELED, 0, NULL, 0, false);
}

/* ---- helpers ---- */

static void start(sg_nodecli_req_t *req)
{
    sg_nodecli_t *c = req->cli;
    /* Reuse an idle connection to the same node, unless this is the retry after a stale one. */
    if (!req->retried) {
        for (conn_t **pp = &c->idle; *pp != NULL; pp = &(*pp)->next) {
            if (strcmp((*pp)->hostport, req->hostport) == 0) {
                conn_t *x = *pp;
                *pp = x->next;
                x->next = NULL;
                req->reused = true;
                send_on(req, x);
                return;
            }
        }
    }
    req->reused = false;
    char host[128];
    int port;
    if (split_hostport(req->hostport, host, sizeof(host), &port) != 0) {
        /* Reported from the loop (the timer), keeping the never-inside-the-call promise. */
        req->pending_err = SG_EINVAL;
        uv_timer_start(&req->timer, on_timeout, 0, 0);
        return;
    }
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) == 0) {
        connect_to(req, (struct sockaddr *)&ss);
        return;
    }
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    req->gai.data = req;
    req->resolving = true;
    if (uv_getaddrinfo(c->loop, &req->gai, on_resolved, host, portstr, &hints) != 0) {
        req->resolving = false;
        req->pending_err = SG_EIO;
        uv_timer_start(&req->timer, on_timeout, 0, 0);
    }
}

static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res)
{
    sg_nodecli_req_t *req = g->data;
    req->resolving = false;
    if (req->done) {
        /* Finished (cancelled or timed out) while resolving: the request waited for us. */
        if (res != NULL)
            uv_freeaddrinfo(res);
        uv_close((uv_handle_t *)&req->timer, on_timer_closed);
        return;
    }
    if (status != 0 || res == NULL) {
        if (res != NULL)
            uv_freeaddrinfo(res);
        finish(req, SG_EIO, 0, NULL, 0, false);
        return;
    }
    connect_to(req, res->ai_addr);
    uv_freeaddrinfo(res);
}

static void connect_to(sg_nodecli_req_t *req, const struct sockaddr *sa)
{
    conn_t *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        req->pending_err = SG_ENOMEM;
        uv_timer_start(&req->timer, on_timeout, 0, 0);
        return;
    }
    x->cli = req->cli;
    snprintf(x->hostport, sizeof(x->hostport), "%s", req->hostport);
    uv_tcp_init(req->cli->loop, &x->tcp);
    x->tcp.data = x;
    x->connreq.data = x;
    x->req = req;
    req->conn = x;
    uv_tcp_nodelay(&x->tcp, 1);
    if (uv_tcp_connect(&x->connreq, &x->tcp, sa, on_connected) != 0) {
        req->conn = NULL;
        x->req = NULL;
        conn_close(x);
        req->pending_err = SG_EIO;
        uv_timer_start(&req->timer, on_timeout, 0, 0);
    }
}

static void on_connected(uv_connect_t *cr, int status)
{
    conn_t *x = cr->data;
    sg_nodecli_req_t *req = x->req;
    if (req == NULL) { /* request finished meanwhile; connection already closing */
        return;
    }
    if (status != 0) {
        finish(req, SG_EIO, 0, NULL, 0, false);
        return;
    }
    send_on(req, x);
}

static void send_on(sg_nodecli_req_t *req, conn_t *x)
{
    x->req = req;
    req->conn = x;
    req->inlen = 0;
    uv_buf_t b = uv_buf_init(req->out, (unsigned)req->outlen);
    x->wr.data = x;
    int rr = 0;
    if (uv_write(&x->wr, (uv_stream_t *)&x->tcp, &b, 1, on_written) != 0 ||
        ((rr = uv_read_start((uv_stream_t *)&x->tcp, on_alloc, on_read)) != 0 && rr != UV_EALREADY)) {
        /* A reused connection whose peer is gone: retried from finish(), which the timer calls
         * so that nothing completes inside sg_nodecli_request. */
        req->pending_err = SG_EIO;
        uv_timer_start(&req->timer, on_timeout, 0, 0);
    }
}

static void on_written(uv_write_t *w, int status)
{
    conn_t *x = w->data;
    if (status != 0 && x->req != NULL)
        finish(x->req, SG_EIO, 0, NULL, 0, false);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    conn_t *x = h->data;
    sg_nodecli_req_t *req = x->req;
    if (req == NULL) { /* idle: anything read just closes the connection */
        *buf = uv_buf_init(x->sink, sizeof(x->sink));
        return;
    }
    if (req->incap - req->inlen < 4096) {
        size_t ncap = req->incap == 0 ? 8192 : req->incap * 2;
        if (ncap > MAX_RESPONSE + 4096) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        char *p = realloc(req->in, ncap);
        if (p == NULL) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        req->in = p;
        req->incap = ncap;
    }
    *buf = uv_buf_init(req->in + req->inlen, (unsigned)(req->incap - req->inlen - 1));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    conn_t *x = s->data;
    sg_nodecli_req_t *req = x->req;
    if (req == NULL) {
        /* Idle: data or EOF means the node closed it (or broke protocol); drop it. */
        if (n != 0) {
            sg_nodecli_t *c = x->cli;
            if (c != NULL)
                for (conn_t **pp = &c->idle; *pp != NULL; pp = &(*pp)->next)
                    if (*pp == x) {
                        *pp = x->next;
                        break;
                    }
            conn_close(x);
        }
        return;
    }
    if (n == UV_ENOBUFS) {
        finish(req, SG_ETOOBIG, 0, NULL, 0, false);
        return;
    }
    if (n < 0) {
        if (parse(req, true) != 0)
            finish(req, SG_EIO, 0, NULL, 0, false);
        return;
    }
    req->inlen += (size_t)n;
    parse(req, false);
}

/* Parses the response in req->in; finishes the request and returns 0 once complete, returns
 * non-zero when more input is needed (or, at eof, when the response is broken). */
static int parse(sg_nodecli_req_t *req, bool eof)
{
    req->in[req->inlen] = '\0';
    char *hend = strstr(req->in, "\r\n\r\n");
    if (hend == NULL)
        return -1;
    int minor = 0, status = 0;
    if (sscanf(req->in, "HTTP/1.%d %d", &minor, &status) != 2 || status < 100 || status > 999)
        goto broken;
    long long clen = -1;
    bool chunked = false, keep = minor >= 1;
    for (char *line = strstr(req->in, "\r\n") + 2; line < hend;) {
        char *eol = strstr(line, "\r\n");
        char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon != NULL) {
            size_t nl = (size_t)(colon - line);
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t vl = (size_t)(eol - v);
            if (nl == 14 && strncasecmp(line, "content-length", 14) == 0)
                clen = atoll(v);
            else if (nl == 17 && strncasecmp(line, "transfer-encoding", 17) == 0)
                chunked = vl >= 7 && strncasecmp(v + vl - 7, "chunked", 7) == 0;
            else if (nl == 10 && strncasecmp(line, "connection", 10) == 0)
                keep = !(vl == 5 && strncasecmp(v, "close", 5) == 0);
        }
        line = eol + 2;
    }
    char *body = hend + 4;
    size_t avail = req->inlen - (size_t)(body - req->in);
    if (status == 204 || status == 304 || (status >= 100 && status < 200)) {
        finish(req, 0, status, "", 0, keep && avail == 0);
        return 0;
    }
    if (chunked) {
        /* Two passes over the raw chunks: first check the body is complete, then decode in place
         * (decoding only moves bytes backwards, so a partial decode must not happen). */
        for (int pass = 0; pass < 2; pass++) {
            char *src = body, *end = body + avail, *dst = body;
            for (;;) {
                char *eol = memmem(src, (size_t)(end - src), "\r\n", 2);
                if (eol == NULL)
                    goto more;
                unsigned long sz = strtoul(src, NULL, 16);
                if (sz > MAX_RESPONSE)
                    goto broken;
                src = eol + 2;
                if (sz == 0) {
                    /* No trailers from the node: expect the final CRLF. */
                    if (end - src < 2)
                        goto more;
                    if (pass == 1) {
                        *dst = '\0';
                        finish(req, 0, status, body, (size_t)(dst - body), keep && src + 2 == end);
                        return 0;
                    }
                    break;
                }
                if ((size_t)(end - src) < sz + 2)
                    goto more;
                if (pass == 1)
                    memmove(dst, src, sz);
                dst += sz;
                src += sz + 2;
            }
        }
    more:
        if (eof)
            goto broken;
        return -1;
    }
    if (clen >= 0) {
        if ((size_t)clen > MAX_RESPONSE)
            goto broken;
        if (avail < (size_t)clen) {
            if (eof)
                goto broken;
            return -1;
        }
        body[clen] = '\0'; /* in[] always has a spare byte (on_alloc) */
        finish(req, 0, status, body, (size_t)clen, keep && avail == (size_t)clen);
        return 0;
    }
    if (!eof)
        return -1;
    finish(req, 0, status, body, avail, false);
    return 0;
broken:
    finish(req, SG_EIO, 0, NULL, 0, false);
    return 0;
}

static void finish(sg_nodecli_req_t *req, int err, int status, const char *body, size_t len,
                   bool keep)
{
    if (req->done)
        return;
    conn_t *x = req->conn;
    /* A reused connection that failed before any response byte: retry once, fresh. */
    if (err == SG_EIO && req->reused && !req->retried && req->inlen == 0 && !req->canceled) {
        req->conn = NULL;
        if (x != NULL) {
            x->req = NULL;
            conn_close(x);
        }
        req->retried = true;
        req->pending_err = 0;
        uv_timer_start(&req->timer, on_timeout, (uint64_t)req->timeout_ms, 0);
        start(req);
        return;
    }
    req->done = true;
    uv_timer_stop(&req->timer);
    req->conn = NULL;
    if (x != NULL) {
        x->req = NULL;
        sg_nodecli_t *c = req->cli;
        size_t count = 0;
        for (conn_t *y = c->idle; y != NULL; y = y->next)
            if (strcmp(y->hostport, x->hostport) == 0)
                count++;
        if (keep && err == 0 && !c->closing && count < MAX_IDLE_PER_HOST) {
            x->next = c->idle;
            c->idle = x;
        } else {
            conn_close(x);
        }
    }
    if (!req->canceled && req->cb != NULL)
        req->cb(err, status, body, len, req->data);
    free(req->out);
    req->out = NULL;
    free(req->in);
    req->in = NULL;
    /* While a getaddrinfo is pending its callback still references req: it closes the timer. */
    if (!req->resolving)
        uv_close((uv_handle_t *)&req->timer, on_timer_closed);
}

static void on_timeout(uv_timer_t *t)
{
    sg_nodecli_req_t *req = t->data;
    /* Also the path for errors detected synchronously in start(): they are delivered here, from
     * the loop, so the callback never runs inside sg_nodecli_request. */
    finish(req, req->pending_err != 0 ? req->pending_err : SG_ETIMEOUT, 0, NULL, 0, false);
    if (req->resolving)
        uv_cancel((uv_req_t *)&req->gai);
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void conn_close(conn_t *x)
{
    if (x->closed)
        return;
    x->closed = true;
    uv_close((uv_handle_t *)&x->tcp, on_conn_closed);
}

static void on_conn_closed(uv_handle_t *h)
{
    free(h->data);
}

static int split_hostport(const char *hp, char *host, size_t hcap, int *port)
{
    const char *colon = strrchr(hp, ':');
    if (colon == NULL || colon == hp)
        return -1;
    const char *h = hp;
    size_t hl = (size_t)(colon - hp);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl >= hcap)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p < 1 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}
