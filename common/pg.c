/*
 * An async PostgreSQL client on a libuv loop: a small pool of libpq connections, each watched
 * with uv_poll, and a bounded FIFO of queries waiting for a free connection.
 *
 * Never blocks the loop: connections use PQconnectStart/PQconnectPoll, queries PQsendQueryParams
 * on non-blocking sockets, PQflush on writable, PQconsumeInput/PQisBusy on readable. A query that
 * exceeds the timeout is answered NULL and its connection is dropped (the server may still be
 * working on it). Broken connections reconnect with backoff; while none is up, queries fail at
 * once (from the loop), so callers fail closed fast instead of queueing behind a dead server.
 *
 * Callback contract: exactly once per accepted query, never inside sg_pg_query(); the PGresult is
 * cleared after the callback returns. Poll handles live on the heap and are freed by their close
 * callbacks; the pool itself is freed in the close callback of its timer, which libuv runs after
 * those of the polls closed before it.
 */
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <libpq-fe.h>
#include "common/common.h"

#define SG_PG_MAX_QUEUE 10000

typedef enum { CONN_DOWN, CONN_CONNECTING, CONN_IDLE, CONN_BUSY } conn_state_t;

typedef struct pg_conn pg_conn_t;

struct sg_pg_query {
    sg_pg_t *pg;
    sg_pg_cb cb;
    void *data;
    char *sql;
    int nparams;
    char *params[SG_PG_MAX_PARAMS];
    uint64_t deadline_ns;
    bool canceled;
    sg_pg_query_t *next;
};

struct pg_conn {
    sg_pg_t *pg;
    PGconn *conn;
    conn_state_t state;
    uv_poll_t *poll;
    int fd;
    PGresult *last; /* last result of the running query */
    bool failed;    /* the running query got a non-OK result */
    sg_pg_query_t *q;
};

struct sg_pg {
    uv_loop_t *loop;
    char *dsn;
    int timeout_ms;
    int nconns;
    pg_conn_t *conns;
    sg_pg_query_t *head, *tail;
    size_t queued;
    uv_timer_t tick; /* reconnects and timeouts, every 50 ms */
    uv_timer_t kick; /* dispatch on the next loop iteration */
    int backoff_ms;
    uint64_t next_connect_ns;
    bool closing;
};

static void conn_drop(pg_conn_t *c, const char *why);
static void dispatch(sg_pg_t *pg);
static void on_poll(uv_poll_t *h, int status, int events);

static void query_free(sg_pg_query_t *q)
{
    free(q->sql);
    for (int i = 0; i < q->nparams; i++)
        free(q->params[i]);
    free(q);
}

static void query_complete(sg_pg_query_t *q, PGresult *res)
{
    if (!q->canceled)
        q->cb(q->pg, res, q->data);
    if (res)
        PQclear(res);
    query_free(q);
}

static void poll_close(pg_conn_t *c)
{
    if (c->poll) {
        uv_poll_stop(c->poll);
        uv_close((uv_handle_t *)c->poll, (uv_close_cb)free);
        c->poll = NULL;
    }
}

static int poll_watch(pg_conn_t *c, int events)
{
    int fd = PQsocket(c->conn);
    if (fd < 0)
        return -1;
    if (c->poll && fd != c->fd)
        poll_close(c); /* libpq may switch sockets while connecting (next address) */
    if (c->poll == NULL) {
        c->poll = malloc(sizeof(*c->poll));
        if (c->poll == NULL)
            return -1;
        if (uv_poll_init(c->pg->loop, c->poll, fd) != 0) {
            free(c->poll);
            c->poll = NULL;
            return -1;
        }
        c->poll->data = c;
        c->fd = fd;
    }
    uv_poll_start(c->poll, events, on_poll);
    return 0;
}

static void conn_drop(pg_conn_t *c, const char *why)
{
    sg_pg_t *pg = c->pg;
    if (c->state == CONN_IDLE || c->state == CONN_BUSY || pg->backoff_ms <= 200)
        sg_log(SG_LOG_WARN, "postgres connection dropped", SG_LS("reason", why ? why : ""),
               SG_LS("error", c->conn ? PQerrorMessage(c->conn) : ""));
    poll_close(c);
    if (c->conn)
        PQfinish(c->conn);
    c->conn = NULL;
    c->state = CONN_DOWN;
    if (c->last) {
        PQclear(c->last);
        c->last = NULL;
    }
    if (c->q) {
        sg_pg_query_t *q = c->q;
        c->q = NULL;
        query_complete(q, NULL);
    }
    /* Back off before the next attempt, so a dead server is not hammered. */
    pg->next_connect_ns = sg_mono_ns() + (uint64_t)pg->backoff_ms * 1000000u;
    pg->backoff_ms = pg->backoff_ms * 2 > 2000 ? 2000 : pg->backoff_ms * 2;
}

static void connect_step(pg_conn_t *c)
{
    switch (PQconnectPoll(c->conn)) {
    case PGRES_POLLING_READING:
        if (poll_watch(c, UV_READABLE) != 0)
            conn_drop(c, "poll");
        return;
    case PGRES_POLLING_WRITING:
        if (poll_watch(c, UV_WRITABLE) != 0)
            conn_drop(c, "poll");
        return;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(c->conn, 1) != 0) {
            conn_drop(c, "setnonblocking");
            return;
        }
        c->state = CONN_IDLE;
        c->pg->backoff_ms = 100;
        poll_watch(c, UV_READABLE); /* notices and server-side closes */
        dispatch(c->pg);
        return;
    default:
        conn_drop(c, "connect failed");
    }
}

static void conn_start(pg_conn_t *c)
{
    c->conn = PQconnectStart(c->pg->dsn);
    if (c->conn == NULL || PQstatus(c->conn) == CONNECTION_BAD) {
        conn_drop(c, "connect failed");
        return;
    }
    c->state = CONN_CONNECTING;
    connect_step(c);
}

static void query_step(pg_conn_t *c)
{
    int fl = PQflush(c->conn);
    if (fl < 0) {
        conn_drop(c, "flush");
        return;
    }
    if (fl == 1) {
        poll_watch(c, UV_READABLE | UV_WRITABLE);
        return;
    }
    poll_watch(c, UV_READABLE);
    while (!PQisBusy(c->conn)) {
        PGresult *res = PQgetResult(c->conn);
        if (res == NULL) {
            /* Query finished: hand over its last result. */
            sg_pg_query_t *q = c->q;
            PGresult *last = c->last;
            c->q = NULL;
            c->last = NULL;
            c->state = CONN_IDLE;
            query_complete(q, last);
            dispatch(c->pg);
            return;
        }
        if (c->last)
            PQclear(c->last);
        c->last = res;
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    pg_conn_t *c = h->data;
    if (status < 0) {
        conn_drop(c, "socket error");
        return;
    }
    switch (c->state) {
    case CONN_CONNECTING:
        connect_step(c);
        return;
    case CONN_BUSY:
        if ((events & UV_READABLE) && !PQconsumeInput(c->conn)) {
            conn_drop(c, "read");
            return;
        }
        query_step(c);
        return;
    case CONN_IDLE:
        if (!PQconsumeInput(c->conn) || PQstatus(c->conn) == CONNECTION_BAD) {
            conn_drop(c, "server closed the connection");
            return;
        }
        PGnotify *n;
        while ((n = PQnotifies(c->conn)) != NULL)
            PQfreemem(n);
        return;
    case CONN_DOWN:
        return;
    }
}

static void dispatch(sg_pg_t *pg)
{
    for (int i = 0; i < pg->nconns && pg->head; i++) {
        pg_conn_t *c = &pg->conns[i];
        if (c->state != CONN_IDLE)
            continue;
        sg_pg_query_t *q = pg->head;
        pg->head = q->next;
        if (pg->head == NULL)
            pg->tail = NULL;
        pg->queued--;
        if (q->canceled) {
            query_free(q);
            i--;
            continue;
        }
        if (!PQsendQueryParams(c->conn, q->sql, q->nparams, NULL,
                               (const char *const *)q->params, NULL, NULL, 0)) {
            c->q = q;
            conn_drop(c, "send");
            continue;
        }
        c->q = q;
        c->state = CONN_BUSY;
        query_step(c);
    }
}

static int conns_up(sg_pg_t *pg)
{
    int up = 0;
    for (int i = 0; i < pg->nconns; i++)
        up += pg->conns[i].state == CONN_IDLE || pg->conns[i].state == CONN_BUSY;
    return up;
}

static void fail_queue(sg_pg_t *pg)
{
    while (pg->head) {
        sg_pg_query_t *q = pg->head;
        pg->head = q->next;
        pg->queued--;
        query_complete(q, NULL);
    }
    pg->tail = NULL;
}

static void on_tick(uv_timer_t *t)
{
    sg_pg_t *pg = t->data;
    uint64_t now = sg_mono_ns();
    for (int i = 0; i < pg->nconns; i++) {
        pg_conn_t *c = &pg->conns[i];
        if (c->state == CONN_BUSY && c->q && now > c->q->deadline_ns)
            conn_drop(c, "query timeout");
        else if (c->state == CONN_DOWN && now >= pg->next_connect_ns)
            conn_start(c);
    }
    /* Queued queries time out too; with no connection up nothing waits at all. */
    if (conns_up(pg) == 0) {
        fail_queue(pg);
    } else {
        while (pg->head && now > pg->head->deadline_ns) {
            sg_pg_query_t *q = pg->head;
            pg->head = q->next;
            if (pg->head == NULL)
                pg->tail = NULL;
            pg->queued--;
            query_complete(q, NULL);
        }
    }
}

sg_pg_t *sg_pg_new(uv_loop_t *loop, const char *dsn, int pool_size, int timeout_ms)
{
    sg_pg_t *pg = calloc(1, sizeof(*pg));
    if (pg == NULL)
        return NULL;
    pg->loop = loop;
    pg->dsn = strdup(dsn);
    pg->timeout_ms = timeout_ms > 0 ? timeout_ms : 3000;
    pg->nconns = pool_size > 0 ? pool_size : 1;
    pg->conns = calloc((size_t)pg->nconns, sizeof(pg_conn_t));
    pg->backoff_ms = 100;
    if (pg->dsn == NULL || pg->conns == NULL) {
        free(pg->dsn);
        free(pg->conns);
        free(pg);
        return NULL;
    }
    for (int i = 0; i < pg->nconns; i++)
        pg->conns[i].pg = pg;
    uv_timer_init(loop, &pg->tick);
    pg->tick.data = pg;
    uv_timer_start(&pg->tick, on_tick, 0, 50);
    uv_timer_init(loop, &pg->kick);
    pg->kick.data = pg;
    return pg;
}

bool sg_pg_up(sg_pg_t *pg)
{
    return conns_up(pg) > 0;
}

static void on_kick(uv_timer_t *t)
{
    dispatch(t->data);
}

static void on_fail_now(uv_timer_t *t)
{
    sg_pg_query_t *q = t->data;
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
    query_complete(q, NULL);
}

sg_pg_query_t *sg_pg_query(sg_pg_t *pg, const char *sql, int nparams, const char *const *params,
                           sg_pg_cb cb, void *data)
{
    if (nparams > SG_PG_MAX_PARAMS)
        return NULL;
    sg_pg_query_t *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->pg = pg;
    q->cb = cb;
    q->data = data;
    q->sql = strdup(sql);
    q->nparams = nparams;
    for (int i = 0; i < nparams; i++)
        q->params[i] = params[i] ? strdup(params[i]) : NULL;
    q->deadline_ns = sg_mono_ns() + (uint64_t)pg->timeout_ms * 1000000u;
    if (conns_up(pg) == 0 || pg->queued >= SG_PG_MAX_QUEUE || pg->closing) {
        /* Fail from the loop, never inside this call. */
        uv_timer_t *t = malloc(sizeof(*t));
        if (t == NULL) {
            query_free(q);
            return NULL;
        }
        uv_timer_init(pg->loop, t);
        t->data = q;
        uv_timer_start(t, on_fail_now, 0, 0);
        return q;
    }
    if (pg->tail)
        pg->tail->next = q;
    else
        pg->head = q;
    pg->tail = q;
    pg->queued++;
    /* Dispatch from the loop, not now: a callback never runs inside this call. */
    uv_timer_start(&pg->kick, on_kick, 0, 0);
    return q;
}

void sg_pg_cancel(sg_pg_query_t *q)
{
    q->canceled = true;
}

static void on_tick_close(uv_handle_t *h)
{
    sg_pg_t *pg = h->data;
    free(pg->conns);
    free(pg->dsn);
    free(pg);
}

void sg_pg_free(sg_pg_t *pg)
{
    pg->closing = true;
    for (sg_pg_query_t *q = pg->head; q; q = q->next)
        q->canceled = true;
    fail_queue(pg);
    for (int i = 0; i < pg->nconns; i++) {
        pg_conn_t *c = &pg->conns[i];
        if (c->q)
            c->q->canceled = true;
        poll_close(c);
        if (c->conn)
            PQfinish(c->conn);
        c->conn = NULL;
        if (c->last)
            PQclear(c->last);
        if (c->q)
            query_free(c->q);
        c->q = NULL;
    }
    uv_close((uv_handle_t *)&pg->kick, NULL);
    uv_close((uv_handle_t *)&pg->tick, on_tick_close); /* runs after kick's close */
}
