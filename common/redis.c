/*
 * An async Redis client on a libuv loop (hiredis 0.14 + its libuv adapter).
 *
 * What hiredis 0.14 lacks and this adds: reconnect with backoff (100 ms doubling to 2 s), AUTH and
 * SELECT on every (re)connect, per-command timeouts (libuv timers), cancellation, asynchronous host
 * name resolution (uv_getaddrinfo: hiredis would call getaddrinfo on the loop), and the libuv
 * callback contract: a command's callback runs exactly once and never inside sg_redis_command().
 *
 * Ownership: a command (sg_redis_cmd_t) is referenced by hiredis until its reply or the
 * connection's end, and by its timer until the timer is closed; it is freed when both let go.
 * Invariant: r->ac is NULL exactly when no connection is up or being made.
 */
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>
#include "common/common.h"

struct sg_redis_cmd {
    sg_redis_t *r;
    sg_redis_cb cb;
    void *data;
    uv_timer_t timer;
    int refs;        /* hiredis's + the timer's */
    bool done;       /* cb has run, or must never run */
    sg_redis_cmd_t *next, *prev; /* r->cmds: every command not yet freed */
};

struct sg_redis {
    uv_loop_t *loop;
    char *host, *unix_path, *password;
    int port, db, timeout_ms;
    redisAsyncContext *ac;
    bool ready; /* connected, AUTH and SELECT sent */
    bool closing;
    uv_timer_t retry;
    uv_getaddrinfo_t gai;
    bool resolving;
    int backoff_ms;
    sg_redis_cmd_t *cmds;
};

static void connect_now(sg_redis_t *r);

static void cmd_unref(sg_redis_cmd_t *c)
{
    if (--c->refs > 0)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->r->cmds = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

static void on_cmd_timer_close(uv_handle_t *h)
{
    cmd_unref(h->data);
}

static void close_timer(sg_redis_cmd_t *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, on_cmd_timer_close);
}

static void cmd_finish(sg_redis_cmd_t *c, redisReply *reply)
{
    if (c->done)
        return;
    c->done = true;
    /* The caller holds a ref (hiredis's or the timer's), so c outlives the callback. */
    close_timer(c);
    c->cb(c->r, reply, c->data);
}

static void on_cmd_timeout(uv_timer_t *t)
{
    cmd_finish(t->data, NULL);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    sg_redis_cmd_t *c = priv;
    redisReply *rep = reply;
    /* A missing reply means the connection ended; an error reply is passed through. */
    cmd_finish(c, rep);
    cmd_unref(c);
}

static void on_internal_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *rep = reply;
    if (rep && rep->type == REDIS_REPLY_ERROR)
        sg_log(SG_LOG_ERROR, "redis setup command failed", SG_LS("error", rep->str));
}

/* A timer callback gets the timer, not the client: the client is its data. */
static void on_retry(uv_timer_t *t) { connect_now(t->data); }

static void schedule_retry(sg_redis_t *r)
{
    if (r->closing)
        return;
    uv_timer_start(&r->retry, on_retry, (uint64_t)r->backoff_ms, 0);
    r->backoff_ms = r->backoff_ms * 2 > 2000 ? 2000 : r->backoff_ms * 2;
}

/* hiredis 0.14's libuv adapter ignores a poll error, so a refused connect is never reported:
 * a connect that has not completed within the command timeout is dropped and retried. */
static void on_connect_timeout(uv_timer_t *t)
{
    sg_redis_t *r = t->data;
    if (r->ac == NULL || (r->ac->c.flags & REDIS_CONNECTED))
        return;
    sg_log(SG_LOG_WARN, "redis connect timed out", SG_LS("host", r->unix_path ? r->unix_path : r->host));
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    r->ready = false;
    redisAsyncFree(ac); /* pending commands get their NULL reply */
    schedule_retry(r);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    sg_redis_t *r = ac->data;
    uv_timer_stop(&r->retry);
    if (status != REDIS_OK) {
        sg_log(SG_LOG_WARN, "redis connect failed", SG_LS("error", ac->errstr));
        r->ac = NULL; /* hiredis frees the context after this callback */
        schedule_retry(r);
        return;
    }
    r->backoff_ms = 100;
    sg_log(SG_LOG_INFO, "redis connected", SG_LS("host", r->unix_path ? r->unix_path : r->host));
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    sg_redis_t *r = ac->data;
    r->ac = NULL;
    r->ready = false;
    if (!r->closing) {
        sg_log(SG_LOG_WARN, "redis connection lost", SG_LS("error", ac->errstr));
        schedule_retry(r);
    }
}

static void start_context(sg_redis_t *r, const char *ip)
{
    redisAsyncContext *ac = r->unix_path ? redisAsyncConnectUnix(r->unix_path)
                                         : redisAsyncConnect(ip, r->port);
    if (ac == NULL || ac->err) {
        sg_log(SG_LOG_WARN, "redis connect failed", SG_LS("error", ac ? ac->errstr : "oom"));
        if (ac)
            redisAsyncFree(ac);
        schedule_retry(r);
        return;
    }
    ac->data = r;
    if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        schedule_retry(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    uv_timer_start(&r->retry, on_connect_timeout, (uint64_t)r->timeout_ms, 0);
    /* Queued now, sent first once connected: every command after them sees AUTH and SELECT done. */
    if (r->password) {
        const char *argv[] = {"AUTH", r->password};
        redisAsyncCommandArgv(ac, on_internal_reply, NULL, 2, argv, NULL);
    }
    if (r->db) {
        char db[16];
        snprintf(db, sizeof(db), "%d", r->db);
        const char *argv[] = {"SELECT", db};
        redisAsyncCommandArgv(ac, on_internal_reply, NULL, 2, argv, NULL);
    }
    r->ready = true;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    sg_redis_t *r = req->data;
    r->resolving = false;
    if (r->closing) {
        if (res)
            uv_freeaddrinfo(res);
        return;
    }
    if (status != 0 || res == NULL) {
        sg_log(SG_LOG_WARN, "redis host lookup failed", SG_LS("host", r->host),
               SG_LS("error", uv_strerror(status)));
        schedule_retry(r);
        return;
    }
    char ip[64];
    uv_ip4_name((struct sockaddr_in *)res->ai_addr, ip, sizeof(ip));
    uv_freeaddrinfo(res);
    start_context(r, ip);
}

static void connect_now(sg_redis_t *r)
{
    if (r->closing || r->ac || r->resolving)
        return;
    if (r->unix_path) {
        start_context(r, NULL);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    r->gai.data = r;
    r->resolving = true;
    if (uv_getaddrinfo(r->loop, &r->gai, on_resolved, r->host, NULL, &hints) != 0) {
        r->resolving = false;
        schedule_retry(r);
    }
}

sg_redis_t *sg_redis_new(uv_loop_t *loop, const char *address, const char *password, int db,
                         int timeout_ms)
{
    sg_redis_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->loop = loop;
    r->db = db;
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 1000;
    r->backoff_ms = 100;
    r->password = password && *password ? strdup(password) : NULL;
    if (strncmp(address, "unix:", 5) == 0) {
        r->unix_path = strdup(address + 5);
    } else {
        const char *colon = strrchr(address, ':');
        r->host = colon ? strndup(address, (size_t)(colon - address)) : strdup(address);
        r->port = colon ? atoi(colon + 1) : 6379;
    }
    uv_timer_init(loop, &r->retry);
    r->retry.data = r;
    connect_now(r);
    return r;
}

bool sg_redis_connected(sg_redis_t *r)
{
    return r->ac != NULL && (r->ac->c.flags & REDIS_CONNECTED) != 0;
}

sg_redis_cmd_t *sg_redis_command(sg_redis_t *r, sg_redis_cb cb, void *data, int argc,
                                 const char **argv, const size_t *argvlen)
{
    sg_redis_cmd_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->r = r;
    c->cb = cb;
    c->data = data;
    c->refs = 1; /* the timer's */
    c->next = r->cmds;
    if (r->cmds)
        r->cmds->prev = c;
    r->cmds = c;
    uv_timer_init(r->loop, &c->timer);
    c->timer.data = c;
    if (r->ac && r->ready && !r->closing &&
        redisAsyncCommandArgv(r->ac, on_reply, c, argc, argv, argvlen) == REDIS_OK) {
        c->refs++;
        uv_timer_start(&c->timer, on_cmd_timeout, (uint64_t)r->timeout_ms, 0);
    } else {
        /* Not connected: fail fast, but from the loop, never inside this call. */
        uv_timer_start(&c->timer, on_cmd_timeout, 0, 0);
    }
    return c;
}

void sg_redis_cancel(sg_redis_cmd_t *c)
{
    if (c->done)
        return;
    c->done = true;
    close_timer(c);
}

static void on_retry_close(uv_handle_t *h)
{
    sg_redis_t *r = h->data;
    free(r->host);
    free(r->unix_path);
    free(r->password);
    free(r);
}

void sg_redis_free(sg_redis_t *r)
{
    r->closing = true;
    for (sg_redis_cmd_t *c = r->cmds; c; c = c->next)
        c->done = true; /* no callback runs after free */
    if (r->resolving)
        uv_cancel((uv_req_t *)&r->gai);
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        redisAsyncFree(ac); /* pending replies come back NULL and drop their refs */
    }
    /* Close every command timer; each close drops the last ref and frees the command. */
    for (sg_redis_cmd_t *c = r->cmds; c; c = c->next)
        close_timer(c);
    uv_close((uv_handle_t *)&r->retry, on_retry_close);
}
