/*
 * `sandgate serve`: worker threads, listeners, TLS, graceful shutdown.
 *
 * Each worker thread runs its own libuv loop and h2o context and binds every listener itself with
 * SO_REUSEPORT, so the kernel spreads connections over workers and no connection ever crosses a
 * thread. TLS listeners share SSL_CTXs (one per certificate, chosen by SNI, the first as default;
 * h2o's ALPN is registered on every one of them), grouped in one immutable generation behind an
 * atomic pointer; handshakes start on a permanent certificate-less front context per listener and
 * the SNI callback moves each to the current generation. SIGHUP re-reads every certificate and
 * key into a new generation and publishes it (a failure keeps the old one whole); each worker then
 * acknowledges through a uv_async, after which the old generation is freed: connections already
 * on it keep their SSL_CTX by OpenSSL's refcount.
 *
 * Shutdown (SIGTERM/SIGINT): the main thread wakes every worker, which closes its listeners,
 * asks h2o to wind down keep-alive connections, and stops its loop once no request is in flight
 * or the drain bound (10 s) passes.
 */
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "gateway/internal.h"

#define DRAIN_MS 10000
/* Connections past http.max_connections_per_ip that still get their 429 answer; past this many
 * more they are closed at accept, so a client's idle over-limit connections stay bounded too. */
#define REJECT_SLACK 16

/* A client connection: the libuv handle h2o wraps, and its connlimit slot. */
typedef struct {
    uv_tcp_t tcp; /* first: h2o's close callback receives this handle */
    int slot1;    /* connlimit slot + 1; 0 (as allocated) = not counted */
} client_conn_t;

sg_server_t sg_server;

sg_worker_t *sg_worker_of(h2o_req_t *req)
{
    return (sg_worker_t *)((char *)req->conn->ctx - offsetof(sg_worker_t, ctx));
}

const char *sg_client_addr(h2o_req_t *req, char *buf, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    buf[0] = '\0';
    if (len == 0)
        return buf;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, buf, (socklen_t)cap);
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, buf, (socklen_t)cap);
    return buf;
}

/* ---- TLS ------------------------------------------------------------------------------------- */

/* One generation of certificates for every listener, immutable once published. SSL objects hold
 * their own references to the SSL_CTX they were switched to (OpenSSL refcounts), so a
 * generation's contexts may be released once no worker can pick one for a new handshake. */
typedef struct {
    SSL_CTX *ctxs[SG_CONFIG_MAX_LISTENERS][SG_CONFIG_MAX_CERTS];
    size_t n[SG_CONFIG_MAX_LISTENERS];
} tls_set_t;

static _Atomic(tls_set_t *) tls_current;
/* Per TLS listener, made once and never freed: h2o's accept context and every socket accepted
 * but not yet past its ClientHello hold this pointer without a reference (h2o 2.2.5 defers
 * SSL_new to the first bytes), so it must not belong to a generation. It has no certificate:
 * on_sni always moves the handshake to a context of the current generation. */
static SSL_CTX *tls_front[SG_CONFIG_MAX_LISTENERS];
static _Atomic unsigned tls_gen; /* bumped by each published reload; workers echo it back */

/* Does the certificate of ctx cover name (exact or one-label wildcard)? */
static bool ctx_matches(SSL_CTX *ctx, const char *name)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    return x && X509_check_host(x, name, strlen(name), 0, NULL) == 1;
}

/* arg is the listener's index, never a set: a socket accepted before a reload may send its
 * ClientHello after it, and then takes the current generation. Every handshake starts on the
 * certificate-less front context, so this always switches (OpenSSL 1.1.1+ calls it with or
 * without an SNI extension); the SSL object takes its own reference to the context. */
static int on_sni(SSL *ssl, int *ad, void *arg)
{
    size_t l = (size_t)(uintptr_t)arg;
    tls_set_t *set = atomic_load_explicit(&tls_current, memory_order_acquire);
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    SSL_CTX *pick = set->ctxs[l][0];
    for (size_t i = 0; name != NULL && i < set->n[l]; i++)
        if (ctx_matches(set->ctxs[l][i], name)) {
            pick = set->ctxs[l][i];
            break;
        }
    if (SSL_get_SSL_CTX(ssl) != pick)
        SSL_set_SSL_CTX(ssl, pick);
    return SSL_TLSEXT_ERR_OK;
}

/* h2o keeps the pointer it is given: the list must outlive every context. */
static const h2o_iovec_t alpn_http1[] = {{H2O_STRLIT("http/1.1")}, {NULL}};

/* A server context with the listener's protocol settings and no certificate. The settings an SSL
 * object copies at SSL_new (options, versions, ciphers) come from the front context, so every
 * context a handshake can be switched to carries the same ones. */
static SSL_CTX *tls_base(bool http2)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* TLS 1.2: forward-secret AEAD suites only (TLS 1.3 suites are all modern already). */
    SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20");
    h2o_ssl_register_alpn_protocols(ctx, http2 ? h2o_http2_alpn_protocols : alpn_http1);
    return ctx;
}

static SSL_CTX *tls_ctx(const sg_config_cert_t *c, bool http2, char *err, size_t errlen)
{
    SSL_CTX *ctx = tls_base(http2);
    if (ctx == NULL) {
        snprintf(err, errlen, "TLS: out of memory");
        return NULL;
    }
    ERR_clear_error();
    const char *what = NULL, *file = NULL;
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert_file) != 1)
        what = "cannot load certificate", file = c->cert_file;
    else if (SSL_CTX_use_PrivateKey_file(ctx, c->key_file, SSL_FILETYPE_PEM) != 1)
        what = "cannot load key", file = c->key_file;
    else if (SSL_CTX_check_private_key(ctx) != 1)
        what = "key does not match its certificate", file = c->key_file;
    if (what != NULL) {
        const char *reason = ERR_reason_error_string(ERR_peek_last_error());
        snprintf(err, errlen, "TLS: %s %s (certificate %s): %s", what, file, c->cert_file,
                 reason != NULL ? reason : "error");
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static void tls_set_free(tls_set_t *set)
{
    if (set == NULL)
        return;
    for (size_t l = 0; l < SG_CONFIG_MAX_LISTENERS; l++)
        for (size_t c = 0; c < set->n[l]; c++)
            SSL_CTX_free(set->ctxs[l][c]);
    free(set);
}

/* Reads every configured certificate and key (blocking file I/O: main thread only). NULL with
 * err naming the file on failure. */
static tls_set_t *tls_load(char *err, size_t errlen)
{
    tls_set_t *set = calloc(1, sizeof(*set));
    if (set == NULL) {
        snprintf(err, errlen, "TLS: out of memory");
        return NULL;
    }
    for (size_t l = 0; l < sg_server.cfg.nlisteners; l++) {
        sg_config_listener_t *li = &sg_server.cfg.listeners[l];
        for (size_t c = 0; c < li->ncerts; c++) {
            SSL_CTX *ctx = tls_ctx(&li->certs[c], li->http2, err, errlen);
            if (ctx == NULL) {
                tls_set_free(set);
                return NULL;
            }
            set->ctxs[l][set->n[l]++] = ctx;
            SSL_CTX_set_tlsext_servername_callback(ctx, on_sni);
            SSL_CTX_set_tlsext_servername_arg(ctx, (void *)(uintptr_t)l);
        }
    }
    return set;
}

static int setup_tls(char *err, size_t errlen)
{
    tls_set_t *set = tls_load(err, errlen);
    if (set == NULL)
        return -1;
    atomic_store_explicit(&tls_current, set, memory_order_release);
    for (size_t l = 0; l < sg_server.cfg.nlisteners; l++) {
        if (set->n[l] == 0)
            continue;
        if ((tls_front[l] = tls_base(sg_server.cfg.listeners[l].http2)) == NULL) {
            snprintf(err, errlen, "TLS: out of memory");
            return -1;
        }
        SSL_CTX_set_tlsext_servername_callback(tls_front[l], on_sni);
        SSL_CTX_set_tlsext_servername_arg(tls_front[l], (void *)(uintptr_t)l);
    }
    return 0;
}

/* Worker side of a reload: running at all means that no callback of this worker that read the
 * old set is still running (on_sni never keeps a set past its return), and later ones read the
 * new one; echoing the generation tells the main thread so. */
static void on_tls_reload(uv_async_t *a)
{
    sg_worker_t *w = a->data;
    unsigned gen = atomic_load_explicit(&tls_gen, memory_order_acquire);
    atomic_store_explicit(&w->tls_gen_seen, gen, memory_order_release);
}

/* SIGHUP: re-read every certificate; on any failure keep the current generation entirely. */
static void tls_reload(void)
{
    char err[1024];
    bool any = false;
    for (size_t l = 0; l < sg_server.cfg.nlisteners; l++)
        any = any || sg_server.cfg.listeners[l].ncerts > 0;
    if (!any) {
        sg_log_msg(SG_LOG_INFO, "reload: no TLS listener, nothing to do");
        return;
    }
    tls_set_t *set = tls_load(err, sizeof(err));
    if (set == NULL) {
        sg_log(SG_LOG_ERROR, "TLS reload failed, keeping the current certificates", SG_LS("error", err));
        return;
    }
    tls_set_t *old = atomic_exchange_explicit(&tls_current, set, memory_order_acq_rel);
    unsigned gen = atomic_fetch_add_explicit(&tls_gen, 1, memory_order_acq_rel) + 1;
    for (int i = 0; i < sg_server.nworkers; i++)
        uv_async_send(&sg_server.workers[i].tls_wake);
    /* Bounded wait for every worker to pass a loop iteration; a worker stuck past it would be a
     * bug elsewhere: then the old set is leaked rather than freed under it. */
    long long deadline = sg_now_ms() + 5000;
    bool all = false;
    while (!all && sg_now_ms() < deadline) {
        all = true;
        for (int i = 0; i < sg_server.nworkers; i++)
            if (atomic_load_explicit(&sg_server.workers[i].tls_gen_seen, memory_order_acquire) != gen)
                all = false;
        if (!all)
            usleep(5000);
    }
    if (all)
        tls_set_free(old);
    else
        sg_log_msg(SG_LOG_WARN, "TLS reload: a worker did not acknowledge; old certificates kept in memory");
    size_t n = 0;
    for (size_t l = 0; l < sg_server.cfg.nlisteners; l++)
        n += set->n[l];
    sg_log(SG_LOG_INFO, "TLS certificates reloaded", SG_LI("certificates", (long long)n));
}

/* ---- workers --------------------------------------------------------------------------------- */

/* Runs once per accepted connection, when libuv has closed its handle: the one place the
 * per-address count goes down. */
static void on_client_close(uv_handle_t *h)
{
    client_conn_t *c = (client_conn_t *)h;
    sg__connlimit_release(c->slot1 - 1);
    free(c);
}

static void on_accept(uv_stream_t *listener, int status)
{
    h2o_accept_ctx_t *actx = listener->data;
    sg_worker_t *w = (sg_worker_t *)((char *)listener->loop - offsetof(sg_worker_t, loop));
    size_t li = (size_t)(actx - w->accept_ctx);
    if (status != 0)
        return;
    client_conn_t *c = (client_conn_t *)sg_http_accept_conn(listener, sizeof(*c), on_client_close);
    if (c == NULL)
        return;
    int limit = sg_server.cfg.http.max_connections_per_ip, count = 0;
    if (limit > 0) {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
            c->slot1 = sg__connlimit_acquire((struct sockaddr *)&ss, &count) + 1;
        if (count > limit) {
            sg__connlimit_note_over();
            /* An HTTP/2 connection cannot be told to close after one answer (h2o 2.2.5 has no
             * handler-side GOAWAY), so over-limit connections on h2 listeners end at accept. */
            const sg_config_listener_t *cl = &sg_server.cfg.listeners[li];
            if (count > limit + REJECT_SLACK || (cl->ncerts > 0 && cl->http2)) {
                uv_close((uv_handle_t *)&c->tcp, on_client_close);
                return;
            }
            actx = &w->reject_ctx[li];
        }
    }
    sg_http_serve(&c->tcp, actx, on_client_close);
}

/* The only handler of connections over the per-address limit: 429, then the connection closes
 * (HTTP/1: the answer carries Connection: close). */
static int on_reject_req(h2o_handler_t *self, h2o_req_t *req)
{
    req->http1_is_persistent = 0;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("1"));
    sg_http_error(req, 429, "Too many open connections from this address");
    return 0;
}

static int bind_listener(sg_worker_t *w, size_t i, char *err, size_t errlen)
{
    sg_config_listener_t *li = &sg_server.cfg.listeners[i];
    struct sockaddr_storage ss;
    int r;
    if (uv_ip4_addr(li->address, li->port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(li->address, li->port, (struct sockaddr_in6 *)&ss) != 0) {
        snprintf(err, errlen, "listener %s:%d: not an IP address", li->address, li->port);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on));
    socklen_t sl = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errlen, "listener %s:%d: %s", li->address, li->port, strerror(errno));
        close(fd);
        return -1;
    }
    uv_tcp_init(&w->loop, &w->listeners[i]);
    if ((r = uv_tcp_open(&w->listeners[i], fd)) != 0 ||
        (r = uv_listen((uv_stream_t *)&w->listeners[i], 1024, on_accept)) != 0) {
        snprintf(err, errlen, "listener %s:%d: %s", li->address, li->port, uv_strerror(r));
        return -1;
    }
    h2o_accept_ctx_t *actx = &w->accept_ctx[i];
    actx->ctx = &w->ctx;
    actx->hosts = sg_server.hosts_main;
    actx->ssl_ctx = tls_front[i]; /* NULL: plain HTTP */
    w->reject_ctx[i] = *actx;
    w->reject_ctx[i].hosts = sg_server.hosts_reject;
    w->listeners[i].data = actx;
    return 0;
}

static void on_drain_tick(uv_timer_t *t)
{
    sg_worker_t *w = t->data;
    /* Done when no request has been in the handlers for a second: h2o 2.2.5 keeps idle HTTP/1
     * keep-alive connections open after request_shutdown, so open connections cannot be the
     * test; the quiet second lets requests whose bodies are still arriving reach a handler. */
    long long now = sg_now_ms();
    if (w->inflight > 0 || !h2o_linklist_is_empty(&w->ctx.http2._conns))
        w->quiet_since_ms = now;
    if (now - w->quiet_since_ms >= 1000 || now >= w->drain_deadline_ms) {
        if (w->inflight > 0)
            sg_log(SG_LOG_WARN, "shutdown: drain bound reached", SG_LI("worker", w->index),
                   SG_LI("inflight", w->inflight));
        uv_stop(&w->loop);
    }
}

static void on_wake(uv_async_t *a)
{
    sg_worker_t *w = a->data;
    if (w->stopping)
        return;
    w->stopping = true;
    for (size_t i = 0; i < w->nlisteners; i++)
        uv_close((uv_handle_t *)&w->listeners[i], NULL);
    h2o_context_request_shutdown(&w->ctx);
    w->drain_deadline_ms = sg_now_ms() + DRAIN_MS;
    w->quiet_since_ms = sg_now_ms();
    uv_timer_init(&w->loop, &w->drain);
    w->drain.data = w;
    uv_timer_start(&w->drain, on_drain_tick, 0, 20);
}

static void on_log_flush(uv_prepare_t *h) { sg_log_batch_flush(); }

static void *worker_main(void *arg)
{
    sg_worker_t *w = arg;
    /* access lines of one loop iteration in one write (without the buffer, logging unbatched) */
    if (sg_log_batch_start() == 0) {
        uv_prepare_init(&w->loop, &w->log_flush);
        uv_prepare_start(&w->log_flush, on_log_flush);
        uv_unref((uv_handle_t *)&w->log_flush);
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    sg_log_batch_stop();
    return NULL;
}

static int worker_init(sg_worker_t *w, int index, char *err, size_t errlen)
{
    sg_gateway_config_t *c = &sg_server.cfg;
    w->index = index;
    uv_loop_init(&w->loop);
    h2o_context_init(&w->ctx, &w->loop, &sg_server.h2o);
    sg_rand_bytes(&w->rng, sizeof(w->rng));
    w->rng |= 1;
    uv_async_init(&w->loop, &w->wake, on_wake);
    w->wake.data = w;
    uv_async_init(&w->loop, &w->tls_wake, on_tls_reload);
    w->tls_wake.data = w;
    w->pg = sg_pg_new(&w->loop, c->postgres.dsn, c->postgres.pool_size, c->postgres.query_timeout_ms);
    w->redis = sg_redis_new(&w->loop, c->redis.address, c->redis.password, c->redis.db,
                            c->redis.timeout_ms);
    sg_auth_options_t ao = {
        .positive_ttl_ms = c->auth.positive_ttl_ms,
        .negative_ttl_ms = c->auth.negative_ttl_ms,
        .cache_size = c->auth.cache_size / sg_server.nworkers,
        .fail_threshold = c->auth.fail_threshold,
        .fail_window_s = c->auth.fail_window_s,
    };
    w->auth = w->pg ? sg_auth_new(w->pg, &ao) : NULL;
    if (w->pg == NULL || w->redis == NULL || w->auth == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (sg__sandboxes_worker_init(w) != 0 || sg__edge_worker_init(w) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < c->nlisteners; i++) {
        if (bind_listener(w, i, err, errlen) != 0)
            return -1;
        w->nlisteners++;
    }
    return 0;
}

int sg__serve(const char *config_path)
{
    char err[8192];
    sg_log_level_t lvl;
    sg_log_format_t fmt;

    if (sg_config_load_gateway(config_path, &sg_server.cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s", err);
        return 1;
    }
    sg_gateway_config_t *c = &sg_server.cfg;
    sg_log_level_parse(c->log.level, &lvl);
    sg_log_format_parse(c->log.format, &fmt);
    sg_log_setup(lvl, fmt, stderr);
    signal(SIGPIPE, SIG_IGN);

    h2o_config_init(&sg_server.h2o);
    sg_server.h2o.server_name = h2o_iovec_init(H2O_STRLIT("sandgate"));
    size_t maxbody = c->http.max_body_bytes > c->http.proxy_max_body_bytes
                         ? c->http.max_body_bytes
                         : c->http.proxy_max_body_bytes;
    sg_server.h2o.max_request_entity_size = maxbody;
    sg_server.h2o.http1.req_timeout = (uint64_t)c->http.header_timeout_ms;
    sg_server.h2o.http2.idle_timeout = (uint64_t)c->http.idle_timeout_ms;
    sg_server.h2o.http2.graceful_shutdown_timeout = DRAIN_MS;
    /* HTTP/2 is opt-in per TLS listener (ALPN, `http2: true`): h2o's default would also accept
     * cleartext HTTP/2 (Upgrade: h2c and the prior-knowledge preface) on every plain listener. */
    sg_server.h2o.http1.upgrade_to_http2 = 0;
    h2o_hostconf_t *host = h2o_config_register_host(&sg_server.h2o,
                                                    h2o_iovec_init(H2O_STRLIT("default")), 65535);
    sg__http_register(h2o_config_register_path(host, "/", 0));
    /* Registered in the same globalconf so h2o sets it up in every context; listeners give it
     * only to over-limit connections (a one-host list: no Host header can reach it otherwise). */
    h2o_hostconf_t *reject = h2o_config_register_host(
        &sg_server.h2o, h2o_iovec_init(H2O_STRLIT("sandgate-connection-limit")), 65535);
    h2o_create_handler(h2o_config_register_path(reject, "/", 0), sizeof(h2o_handler_t))->on_req =
        on_reject_req;
    sg_server.hosts_main[0] = host;
    sg_server.hosts_reject[0] = reject;

    if (setup_tls(err, sizeof(err)) != 0) {
        fprintf(stderr, "sandgate: %s\n", err);
        return 1;
    }
    sg_server.nworkers = c->threads > 0 ? c->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (sg_server.nworkers < 1)
        sg_server.nworkers = 1;
    sg_server.workers = calloc((size_t)sg_server.nworkers, sizeof(sg_worker_t));
    sg_server.started_ms = sg_now_ms();

    /* Signals are taken by the main thread only: block them before any worker starts. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    for (int i = 0; i < sg_server.nworkers; i++)
        if (worker_init(&sg_server.workers[i], i, err, sizeof(err)) != 0) {
            fprintf(stderr, "sandgate: %s\n", err);
            return 1;
        }
    for (int i = 0; i < sg_server.nworkers; i++)
        pthread_create(&sg_server.workers[i].thread, NULL, worker_main, &sg_server.workers[i]);
    for (size_t i = 0; i < c->nlisteners; i++)
        sg_log(SG_LOG_INFO, "listening", SG_LS("address", c->listeners[i].address),
               SG_LI("port", c->listeners[i].port), SG_LS("tls", c->listeners[i].ncerts ? "on" : "off"));
    sg_log(SG_LOG_INFO, "sandgate started", SG_LI("workers", sg_server.nworkers),
           SG_LS("domain", c->domain));

    int sig = 0;
    while (sigwait(&set, &sig) == 0 && sig == SIGHUP)
        tls_reload();
    sg_log(SG_LOG_INFO, "shutting down", SG_LS("signal", sig == SIGTERM ? "TERM" : "INT"));
    for (int i = 0; i < sg_server.nworkers; i++)
        uv_async_send(&sg_server.workers[i].wake);
    for (int i = 0; i < sg_server.nworkers; i++)
        pthread_join(sg_server.workers[i].thread, NULL);
    sg_log_msg(SG_LOG_INFO, "stopped");
    return 0;
}
