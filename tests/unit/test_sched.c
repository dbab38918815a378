/*
 * scheduler unit tests: pure placement and ids/tokens, then the scheduler against a real
 * redis-server (started here on a unix socket in a temp folder) and small in-test HTTP nodes
 * (libuv responders that answer the node API's create/delete/patch as told).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include "scheduler/sched_int.h"

/* ---- pure: ids, tokens, placement ---- */

static void test_sched_ids_and_tokens(void **state)
{
    char a[21], b[21], t1[65], t2[65], t3[65];
    assert_int_equal(sg_sched_new_id(a), 0);
    assert_int_equal(sg_sched_new_id(b), 0);
    assert_int_equal(strlen(a), 20);
    assert_true(sg_sched_id_valid(a));
    assert_string_not_equal(a, b);
    assert_false(sg_sched_id_valid(""));
    assert_false(sg_sched_id_valid("ABC"));
    assert_false(sg_sched_id_valid("a/b"));
    sg_sched_token_with("secret-0123456789", "envd", a, t1);
    sg_sched_token_with("secret-0123456789", "envd", a, t2);
    sg_sched_token_with("secret-0123456789", "traffic", a, t3);
    assert_string_equal(t1, t2);
    assert_string_not_equal(t1, t3);
    assert_int_equal(strlen(t1), 64);
}

static sg__node_t mknode(const char *id, int cap_vcpu, int cap_mem, int cap_n, int av, int am,
                         int an, const char *templates, long long hb)
{
    sg__node_t n = {0};
    snprintf(n.id, sizeof(n.id), "%s", id);
    snprintf(n.api, sizeof(n.api), "127.0.0.1:1");
    n.ready = true;
    n.cap_vcpu = cap_vcpu;
    n.cap_mem = cap_mem;
    n.cap_n = cap_n;
    n.alloc_vcpu = av;
    n.alloc_mem = am;
    n.alloc_n = an;
    n.heartbeat_ms = hb;
    n.templates = strdup(templates);
    return n;
}

static void test_sched_place_filters_and_scores(void **state)
{
    long long now = 1000000;
    sg__node_t nodes[8];
    nodes[0] = mknode("busy", 8, 8192, 10, 6, 6000, 5, ",base,", now);
    nodes[1] = mknode("idle", 8, 8192, 10, 0, 0, 0, ",base,", now);
    nodes[2] = mknode("half", 8, 8192, 10, 4, 4096, 5, ",base,", now);
    nodes[3] = mknode("stale", 64, 65536, 100, 0, 0, 0, ",base,", now - 6000);
    nodes[4] = mknode("cordoned", 64, 65536, 100, 0, 0, 0, ",base,", now);
    nodes[4].cordoned = true;
    nodes[5] = mknode("draining", 64, 65536, 100, 0, 0, 0, ",base,", now);
    nodes[5].ready = false;
    nodes[6] = mknode("other-tpl", 64, 65536, 100, 0, 0, 0, ",python,basex,", now);
    nodes[7] = mknode("nomem", 64, 1024, 100, 0, 900, 0, ",base,", now);
    sg__view_t v = {.nodes = nodes, .n = 8};
    sg__fit_req_t r = {.vcpu = 2, .mem_mb = 512, .template_id = "base", .overcommit = 1.0,
                       .down_after_ms = 5000, .policy = SG_SCHED_LEAST_ALLOCATED};
    size_t out[8];
    size_t n = sg__place(&v, &r, now, out, 8);
    assert_int_equal(n, 3);
    assert_string_equal(nodes[out[0]].id, "idle");
    assert_string_equal(nodes[out[1]].id, "half");
    assert_string_equal(nodes[out[2]].id, "busy");
    r.policy = SG_SCHED_MOST_ALLOCATED;
    n = sg__place(&v, &r, now, out, 2);
    assert_int_equal(n, 2);
    assert_string_equal(nodes[out[0]].id, "busy");
    assert_string_equal(nodes[out[1]].id, "half");
    /* CPU: busy has 2 of 8 left; 3 vCPU fits only with overcommit. */
    r.vcpu = 3;
    r.policy = SG_SCHED_LEAST_ALLOCATED;
    assert_false(sg__node_fits(&nodes[0], &r, now));
    r.overcommit = 2.0;
    assert_true(sg__node_fits(&nodes[0], &r, now));
    /* Labels */
    nodes[1].labels = json_pack("{s:s}", "zone", "a");
    r.labels = json_pack("{s:s}", "zone", "a");
    assert_true(sg__node_fits(&nodes[1], &r, now));
    json_object_set_new(r.labels, "zone", json_string("b"));
    assert_false(sg__node_fits(&nodes[1], &r, now));
    json_decref(r.labels);
    /* Sandbox count */
    r.labels = NULL;
    nodes[2].alloc_n = 10;
    assert_false(sg__node_fits(&nodes[2], &r, now));
    for (int i = 0; i < 8; i++) {
        free(nodes[i].templates);
        if (nodes[i].labels)
            json_decref(nodes[i].labels);
    }
}

/* ---- with Redis and in-test nodes ---- */

typedef struct {
    uv_tcp_t server;
    int port;
    int status;        /* answer to creates */
    int creates, deletes, patches;
    char last_delete[64];
} tnode_t;

typedef struct {
    uv_tcp_t tcp;
    tnode_t *node;
    char buf[16384];
    size_t len;
    uv_write_t wr;
    char out[512];
} tconn_t;

static uv_loop_t loop;
static pid_t redis_pid;
static char tmpdir[64], sock_path[128], redis_addr[160];
static redisContext *rc;
static sg_redis_t *redis;
static tnode_t nodes[3];

static void tconn_closed(uv_handle_t *h) { free(h->data); }

static void tconn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    tconn_t *c = h->data;
    *b = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len - 1));
}

static void tconn_written(uv_write_t *w, int st) {}

static void tconn_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    tconn_t *c = s->data;
    if (n < 0) {
        uv_close((uv_handle_t *)s, tconn_closed);
        return;
    }
    c->len += (size_t)n;
    c->buf[c->len] = '\0';
    char *he = strstr(c->buf, "\r\n\r\n");
    if (he == NULL)
        return;
    const char *cl = strcasestr(c->buf, "content-length:");
    size_t blen = cl != NULL && cl < he ? (size_t)atol(cl + 15) : 0;
    if (c->len < (size_t)(he + 4 - c->buf) + blen)
        return;
    tnode_t *nd = c->node;
    int status = 204;
    char body[256] = "";
    assert_non_null(strstr(c->buf, "x-sandgate-node-token: node-token-0123456789\r\n"));
    if (strncmp(c->buf, "POST /v1/sandboxes ", 19) == 0) {
        nd->creates++;
        status = nd->status;
        if (status == 201) {
            const char *id = strstr(he, "\"sandboxID\":\"");
            char sid[32] = "";
            if (id != NULL)
                sscanf(id + 13, "%31[a-z0-9]", sid);
            snprintf(body, sizeof(body),
                     "{\"sandboxID\":\"%s\",\"address\":\"10.11.0.2\",\"envdVersion\":\"0.5.7\","
                     "\"startedAtMs\":%lld}", sid, sg_now_ms());
        } else {
            snprintf(body, sizeof(body), "{\"code\":%d,\"message\":\"test\"}", status);
        }
    } else if (strncmp(c->buf, "DELETE ", 7) == 0) {
        nd->deletes++;
        sscanf(c->buf + 7, "/v1/sandboxes/%63[a-z0-9]", nd->last_delete);
    } else if (strncmp(c->buf, "PATCH ", 6) == 0) {
        nd->patches++;
    }
    int m = snprintf(c->out, sizeof(c->out), "HTTP/1.1 %d X\r\ncontent-length: %zu\r\n\r\n%s",
                     status, strlen(body), body);
    /* Shift out the consumed request (keep-alive). */
    size_t used = (size_t)(he + 4 - c->buf) + blen;
    memmove(c->buf, c->buf + used, c->len - used);
    c->len -= used;
    uv_buf_t ob = uv_buf_init(c->out, (unsigned)m);
    uv_write(&c->wr, s, &ob, 1, tconn_written);
}

static void tnode_accept(uv_stream_t *server, int status)
{
    tconn_t *c = calloc(1, sizeof(*c));
    c->node = server->data;
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c;
    uv_accept(server, (uv_stream_t *)&c->tcp);
    uv_read_start((uv_stream_t *)&c->tcp, tconn_alloc, tconn_read);
}

static void tnode_start(tnode_t *n)
{
    memset(n, 0, sizeof(*n));
    n->status = 201;
    uv_tcp_init(&loop, &n->server);
    n->server.data = n;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&n->server, (struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&n->server, 64, tnode_accept), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&n->server, (struct sockaddr *)&ss, &len);
    n->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void rcmd_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
}

static long long rint_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer
                  : r->type == REDIS_REPLY_STRING ? atoll(r->str)
                                                  : 0;
    freeReplyObject(r);
    return v;
}

static void heartbeat(const char *id, int port, int cap_vcpu, int cap_mem, int cap_n,
                      long long hb)
{
    char api[64];
    snprintf(api, sizeof(api), "127.0.0.1:%d", port);
    rcmd_("HSET {sg}:node:%s id %s api %s proxy %s status ready cap_vcpu %d cap_mem_mb %d "
         "cap_sandboxes %d templates base labels {} heartbeat_ms %lld",
         id, id, api, api, cap_vcpu, cap_mem, cap_n, hb);
    rcmd_("ZADD {sg}:nodes %lld %s", hb, id);
}

static int setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/sgsched.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    snprintf(sock_path, sizeof(sock_path), "%s/redis.sock", tmpdir);
    snprintf(redis_addr, sizeof(redis_addr), "unix:%s", sock_path);
    redis_pid = fork();
    if (redis_pid == 0) {
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", sock_path,
               "--save", "", "--appendonly", "no", "--loglevel", "warning", "--dir", tmpdir, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200 && (rc == NULL || rc->err); i++) {
        if (rc != NULL)
            redisFree(rc);
        usleep(20000);
        rc = redisConnectUnix(sock_path);
    }
    assert_int_equal(rc->err, 0);
    uv_loop_init(&loop);
    redis = sg_redis_new(&loop, redis_addr, NULL, 0, 2000);
    for (int i = 0; i < 3; i++)
        tnode_start(&nodes[i]);
    return 0;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL); /* test connections' buffers are left to process exit */
}

static int teardown(void **state)
{
    sg_redis_free(redis);
    uv_walk(&loop, close_walk, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    redisFree(rc);
    kill(redis_pid, SIGTERM);
    waitpid(redis_pid, NULL, 0);
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static int reset(void **state)
{
    rcmd_("FLUSHALL");
    long long now = sg_now_ms();
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof(id), "n%d", i);
        int port = nodes[i].port;
        memset(&nodes[i].status, 0, sizeof(tnode_t) - offsetof(tnode_t, status));
        nodes[i].status = 201;
        heartbeat(id, port, 4, 4096, 3, now);
    }
    return 0;
}

/* Runs the loop until *flag reaches want or ms pass. */
static void run_until(int *flag, int want, int ms)
{
    uint64_t end = uv_now(&loop) + (uint64_t)ms;
    while (*flag < want && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
}

static void on_timer_tick(uv_timer_t *t) { (*(int *)t->data)++; }

static void run_for(int ms)
{
    int done = 0;
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    t.data = &done;
    uv_timer_start(&t, on_timer_tick, (uint64_t)ms, 0);
    run_until(&done, 1, ms + 1000);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

typedef struct {
    int done, ok, limit, noroom, other;
    char ids[64][64];
    char nodes_of[64][72];
} results_t;

static void on_created(int err, const sg_sched_sandbox_t *sbx, void *data)
{
    results_t *r = data;
    if (err == 0) {
        snprintf(r->ids[r->ok], 64, "%s", sbx->id);
        snprintf(r->nodes_of[r->ok], 72, "%s", sbx->node);
        r->ok++;
    } else if (err == SG_ELIMIT) {
        r->limit++;
    } else if (err == SG_ENOROOM) {
        r->noroom++;
    } else {
        r->other++;
    }
    r->done++;
}

static sg_sched_t *new_sched(bool background)
{
    sg_sched_config_t cfg = {.cpu_overcommit = 1.0, .max_attempts = 3, .node_down_after_ms = 5000,
                             .create_timeout_ms = 5000, .refresh_ms = 50, .reaper_ms = 50,
                             .node_token = "node-token-0123456789",
                             .token_secret = "token-secret-0123456789", .background = background};
    sg_sched_t *s = sg_sched_new(&loop, redis, &cfg);
    assert_non_null(s);
    int done = 0;
    run_for(200); /* first view */
    (void)done;
    return s;
}

static void free_sched(sg_sched_t *s)
{
    sg_sched_free(s);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static sg_sched_create_req_t creq(const char *team, int limit)
{
    return (sg_sched_create_req_t){.team_id = team, .team_max_concurrent = limit,
                                   .template_id = "base", .vcpu = 1, .mem_mb = 512,
                                   .end_ms = sg_now_ms() + 60000, .secure = true,
                                   .allow_internet = true, .public_traffic = true};
}

static void test_sched_team_limit_exact(void **state)
{
    sg_sched_t *s = new_sched(false);
    results_t r = {0};
    sg_sched_create_req_t q = creq("team-a", 4);
    for (int i = 0; i < 9; i++)
        assert_non_null(sg_sched_create(s, &q, on_created, &r));
    assert_int_equal(r.done, 0); /* never inside the call */
    run_until(&r.done, 9, 5000);
    assert_int_equal(r.ok, 4);
    assert_int_equal(r.limit, 5);
    assert_int_equal(rint_("ZCARD {sg}:team:team-a"), 4);
    assert_int_equal(rint_("HLEN {sg}:resv"), 0);
    free_sched(s);
}

static void test_sched_capacity_never_exceeded(void **state)
{
    /* 3 nodes x 3 slots (and 4 vCPU each): 12 creates, 9 fit. */
    sg_sched_t *s = new_sched(false);
    results_t r = {0};
    sg_sched_create_req_t q = creq("team-b", 0);
    for (int i = 0; i < 12; i++)
        assert_non_null(sg_sched_create(s, &q, on_created, &r));
    run_until(&r.done, 12, 5000);
    assert_int_equal(r.ok, 9);
    assert_int_equal(r.noroom, 3);
    for (int i = 0; i < 3; i++) {
        char key[32];
        snprintf(key, sizeof(key), "{sg}:alloc:n%d", i);
        assert_int_equal(rint_("HGET %s n", key), 3);
        assert_int_equal(rint_("HGET %s mem", key), 1536);
    }
    free_sched(s);
}

static void test_sched_node_failure_tries_next(void **state)
{
    sg_sched_t *s = new_sched(false);
    nodes[0].status = 500;
    nodes[1].status = 429;
    results_t r = {0};
    sg_sched_create_req_t q = creq("team-c", 0);
    for (int i = 0; i < 3; i++) {
        assert_non_null(sg_sched_create(s, &q, on_created, &r));
        run_until(&r.done, i + 1, 5000);
    }
    assert_int_equal(r.ok, 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(r.nodes_of[i], "n2");
    /* Refused and failed attempts gave their capacity back. */
    assert_int_equal(rint_("HGET {sg}:alloc:n0 n"), 0);
    assert_int_equal(rint_("HGET {sg}:alloc:n1 n"), 0);
    assert_int_equal(rint_("HGET {sg}:alloc:n2 n"), 3);
    assert_true(nodes[0].creates >= 1);
    assert_true(nodes[0].deletes >= 1); /* the failed node is asked to clean up */
    free_sched(s);
}

static void test_sched_down_node_gets_nothing(void **state)
{
    heartbeat("n0", nodes[0].port, 4, 4096, 3, sg_now_ms() - 10000);
    heartbeat("n1", nodes[1].port, 4, 4096, 3, sg_now_ms() - 10000);
    sg_sched_t *s = new_sched(false);
    results_t r = {0};
    sg_sched_create_req_t q = creq("team-d", 0);
    for (int i = 0; i < 5; i++)
        assert_non_null(sg_sched_create(s, &q, on_created, &r));
    run_until(&r.done, 5, 5000);
    assert_int_equal(r.ok, 3);
    assert_int_equal(nodes[0].creates + nodes[1].creates, 0);
    free_sched(s);
}

typedef struct {
    int done, err;
    long long end;
    char state[16];
} one_t;

static void on_sbx(int err, const sg_sched_sandbox_t *sbx, void *data)
{
    one_t *o = data;
    o->err = err;
    if (sbx != NULL) {
        o->end = sbx->end_ms;
        snprintf(o->state, sizeof(o->state), "%s", sbx->state);
    }
    o->done++;
}

static void on_done(int err, void *data)
{
    one_t *o = data;
    o->err = err;
    o->done++;
}

static void test_sched_get_kill_cross_team(void **state)
{
    sg_sched_t *s = new_sched(false);
    results_t r = {0};
    sg_sched_create_req_t q = creq("team-e", 0);
    assert_non_null(sg_sched_create(s, &q, on_created, &r));
    run_until(&r.done, 1, 5000);
    assert_int_equal(r.ok, 1);
    one_t o = {0};
    assert_int_equal(sg_sched_get(s, "team-x", r.ids[0], on_sbx, &o, NULL), 0);
    run_until(&o.done, 1, 2000);
    assert_int_equal(o.err, SG_ENOTFOUND);
    memset(&o, 0, sizeof(o));
    assert_int_equal(sg_sched_kill(s, "team-x", r.ids[0], on_done, &o, NULL), 0);
    run_until(&o.done, 1, 2000);
    assert_int_equal(o.err, SG_ENOTFOUND);
    memset(&o, 0, sizeof(o));
    assert_int_equal(sg_sched_set_end(s, "team-e", r.ids[0], 1, SG_SCHED_END_EXTEND, on_sbx, &o,
                                      NULL), 0);
    run_until(&o.done, 1, 2000);
    assert_int_equal(o.err, 0);
    assert_true(o.end > sg_now_ms()); /* extend never shortens */
    memset(&o, 0, sizeof(o));
    assert_int_equal(sg_sched_get(s, "team-e", r.ids[0], on_sbx, &o, NULL), 0);
    run_until(&o.done, 1, 2000);
    assert_int_equal(o.err, 0);
    assert_string_equal(o.state, "running");
    memset(&o, 0, sizeof(o));
    int deletes = nodes[0].deletes + nodes[1].deletes + nodes[2].deletes;
    assert_int_equal(sg_sched_kill(s, "team-e", r.ids[0], on_done, &o, NULL), 0);
    run_until(&o.done, 1, 2000);
    assert_int_equal(o.err, 0);
    assert_int_equal(nodes[0].deletes + nodes[1].deletes + nodes[2].deletes, deletes + 1);
    assert_int_equal(rint_("EXISTS {sg}:sbx:%s", r.ids[0]), 0);
    assert_int_equal(rint_("ZCARD {sg}:team:team-e"), 0);
    memset(&o, 0, sizeof(o));
    assert_int_equal(sg_sched_kill(s, "team-e", r.ids[0], on_done, &o, NULL), 0);
    run_until(&o.done, 1, 2000);
    assert_int_equal(o.err, SG_ENOTFOUND);
    free_sched(s);
}

static void test_sched_reaper_kills_once(void **state)
{
    /* Two background schedulers (two gateways) race for the same expired sandboxes. */
    sg_sched_t *a = new_sched(true), *b = new_sched(true);
    results_t r = {0};
    sg_sched_create_req_t q = creq("team-f", 0);
    q.end_ms = sg_now_ms() + 300;
    for (int i = 0; i < 6; i++)
        assert_non_null(sg_sched_create(i % 2 ? a : b, &q, on_created, &r));
    run_until(&r.done, 6, 5000);
    assert_int_equal(r.ok, 6);
    run_for(1000);
    assert_int_equal(nodes[0].deletes + nodes[1].deletes + nodes[2].deletes, 6);
    assert_int_equal(rint_("ZCARD {sg}:expiry"), 0);
    assert_int_equal(rint_("ZCARD {sg}:team:team-f"), 0);
    for (int i = 0; i < 3; i++) {
        char key[32];
        snprintf(key, sizeof(key), "{sg}:alloc:n%d", i);
        assert_int_equal(rint_("HGET %s n", key), 0);
        assert_int_equal(rint_("HGET %s vcpu", key), 0);
    }
    free_sched(a);
    free_sched(b);
}

static void on_eval_reply(sg_redis_t *r, redisReply *reply, void *data)
{
    long long *out = data;
    *out = reply != NULL && reply->type == REDIS_REPLY_INTEGER ? reply->integer : -100;
}

static void test_sched_reservation_expires(void **state)
{
    /* A reservation whose gateway died: the sweep gives the capacity and team slot back. */
    sg_sched_t *s = new_sched(true);
    long long res = -1;
    char now[24], dl[24];
    snprintf(now, sizeof(now), "%lld", sg_now_ms());
    snprintf(dl, sizeof(dl), "%lld", sg_now_ms() + 300);
    const char *keys[] = {"{sg}:node:n0", "{sg}:alloc:n0", "{sg}:team:team-g", "{sg}:resv",
                          "{sg}:resvexp"};
    const char *args[] = {"deadbeef", "n0", "team-g", "2", "1024", "1", "1.0", now, dl, "5000"};
    assert_non_null(sg__eval(redis, SG__SCRIPT_RESERVE, 5, keys, 10, args, on_eval_reply, &res));
    run_for(100);
    assert_int_equal(res, 0);
    assert_int_equal(rint_("HGET {sg}:alloc:n0 vcpu"), 2);
    assert_int_equal(rint_("ZCARD {sg}:team:team-g"), 1);
    /* The team is at its limit of 1 now. */
    res = -1;
    const char *args2[] = {"deadbee2", "n0", "team-g", "1", "1", "1", "1.0", now, dl, "5000"};
    assert_non_null(sg__eval(redis, SG__SCRIPT_RESERVE, 5, keys, 10, args2, on_eval_reply, &res));
    run_for(100);
    assert_int_equal(res, 2);
    run_for(1500); /* sweep runs once a second */
    assert_int_equal(rint_("HGET {sg}:alloc:n0 vcpu"), 0);
    assert_int_equal(rint_("HGET {sg}:alloc:n0 mem"), 0);
    assert_int_equal(rint_("ZCARD {sg}:team:team-g"), 0);
    assert_int_equal(rint_("HLEN {sg}:resv"), 0);
    free_sched(s);
}

typedef struct {
    int done, pages, seen;
    char ids[64][64];
    char next[128];
} pages_t;

static void on_page(int err, const sg_sched_sandbox_t *sbxs, size_t n, const char *next,
                    void *data)
{
    pages_t *p = data;
    assert_int_equal(err, 0);
    for (size_t i = 0; i < n; i++)
        snprintf(p->ids[p->seen++], 64, "%s", sbxs[i].id);
    snprintf(p->next, sizeof(p->next), "%s", next != NULL ? next : "");
    p->pages++;
    p->done++;
}

static void test_sched_list_pages_visit_each_once(void **state)
{
    sg_sched_t *s = new_sched(false);
    results_t r = {0};
    sg_sched_create_req_t q = creq("team-h", 0);
    q.metadata = json_pack("{s:s}", "k", "v");
    for (int i = 0; i < 7; i++)
        assert_non_null(sg_sched_create(s, &q, on_created, &r));
    json_decref(q.metadata);
    q.metadata = NULL;
    assert_non_null(sg_sched_create(s, &q, on_created, &r)); /* no metadata: filtered out */
    run_until(&r.done, 8, 5000);
    assert_int_equal(r.ok, 8);
    pages_t p = {0};
    json_t *meta = json_pack("{s:s}", "k", "v");
    do {
        sg_sched_list_req_t lq = {.team_id = "team-h", .metadata = meta, .limit = 3,
                                  .next = p.next[0] ? p.next : NULL};
        int want = p.done + 1;
        assert_int_equal(sg_sched_list(s, &lq, on_page, &p, NULL), 0);
        run_until(&p.done, want, 2000);
    } while (p.next[0] != '\0' && p.pages < 10);
    json_decref(meta);
    assert_int_equal(p.pages, 3);
    assert_int_equal(p.seen, 7);
    for (int i = 0; i < p.seen; i++)
        for (int j = i + 1; j < p.seen; j++)
            assert_string_not_equal(p.ids[i], p.ids[j]);
    free_sched(s);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    sg_log_setup(SG_LOG_WARN, SG_LOG_LOGFMT, stderr);
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_sched_ids_and_tokens),
        cmocka_unit_test(test_sched_place_filters_and_scores),
    };
    const struct CMUnitTest live[] = {
        cmocka_unit_test_setup(test_sched_team_limit_exact, reset),
        cmocka_unit_test_setup(test_sched_capacity_never_exceeded, reset),
        cmocka_unit_test_setup(test_sched_node_failure_tries_next, reset),
        cmocka_unit_test_setup(test_sched_down_node_gets_nothing, reset),
        cmocka_unit_test_setup(test_sched_get_kill_cross_team, reset),
        cmocka_unit_test_setup(test_sched_reaper_kills_once, reset),
        cmocka_unit_test_setup(test_sched_reservation_expires, reset),
        cmocka_unit_test_setup(test_sched_list_pages_visit_each_once, reset),
    };
    int fails = cmocka_run_group_tests_name("sched_pure", pure, NULL, NULL);
    fails += cmocka_run_group_tests_name("sched_redis", live, setup, teardown);
    return fails;
}
