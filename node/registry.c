/*
 * Registration and heartbeats into Redis (docs/node-api.md "Redis"): every heartbeat_interval one
 * MULTI / HSET {sg}:node:<id> ... / PEXPIRE 60000 / ZADD {sg}:nodes / EXEC, on hiredis async with
 * the libuv adapter.
 *
 * Redis never blocks or stops the agent: a lost connection is dropped and retried every second
 * (with AUTH and SELECT replayed first); a heartbeat is skipped while the previous one is still
 * unanswered, and one unanswered past the command timeout drops the connection (hiredis 0.14 async
 * has no timeouts of its own). Sandboxes are not touched by any of this.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libuv.h>
#include "common/common.h"
#include "node/internal.h"

#define RECONNECT_MS 1000

typedef struct sg__registry {
    sg__node_t *n;
    redisAsyncContext *ac;
    uv_timer_t timer;
    bool connected;
    uint64_t inflight_since; /* mono ns of the unanswered heartbeat, 0 = none */
    long long next_connect_ms;
    bool logged_down;
} reg_t;

static void reg_connect(reg_t *r);

static void on_connect(const redisAsyncContext *ac, int status)
{
    reg_t *r = ac->data;
    if (status != REDIS_OK) {
        if (!r->logged_down)
            sg_log(SG_LOG_WARN, "redis connect failed; retrying", SG_LS("err", ac->errstr));
        r->logged_down = true;
        r->ac = NULL; /* hiredis frees the context after this callback */
        r->inflight_since = 0;
        return;
    }
    r->connected = true;
    r->logged_down = false;
    sg_log(SG_LOG_INFO, "redis connected", SG_LS("address", r->n->cfg->redis.address));
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    reg_t *r = ac->data;
    if (r->ac == ac) {
        r->ac = NULL;
        r->connected = false;
        r->inflight_since = 0;
        sg_log(SG_LOG_WARN, "redis connection lost; sandboxes keep running");
    }
}

static void reg_connect(reg_t *r)
{
    const sg_config_redis_t *c = &r->n->cfg->redis;
    redisAsyncContext *ac;
    if (strncmp(c->address, "unix:", 5) == 0) {
        ac = redisAsyncConnectUnix(c->address + 5);
    } else {
        char host[256];
        const char *colon = strrchr(c->address, ':');
        int port = colon ? atoi(colon + 1) : 6379;
        size_t hl = colon ? (size_t)(colon - c->address) : strlen(c->address);
        if (hl >= sizeof(host))
            hl = sizeof(host) - 1;
        memcpy(host, c->address, hl);
        host[hl] = '\0';
        ac = redisAsyncConnect(host, port);
    }
    if (ac == NULL)
        return;
    if (ac->err) {
        redisAsyncFree(ac);
        return;
    }
    ac->data = r;
    if (redisLibuvAttach(ac, r->n->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    if (c->password && *c->password)
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", c->password);
    if (c->db != 0)
        redisAsyncCommand(ac, NULL, NULL, "SELECT %d", c->db);
}

static void on_exec(redisAsyncContext *ac, void *reply, void *priv)
{
    reg_t *r = priv;
    redisReply *rep = reply;
    if (r->ac == ac)
        r->inflight_since = 0;
    if (rep && rep->type == REDIS_REPLY_ERROR)
        sg_log(SG_LOG_WARN, "redis heartbeat failed", SG_LS("err", rep->str));
}

static void heartbeat(reg_t *r)
{
    sg__node_t *n = r->n;
    const sg_node_config_t *cfg = n->cfg;
    int v, m, c;
    sg__node_alloc(n, &v, &m, &c);
    char key[128], cap_v[16], cap_m[16], cap_s[16], al_v[16], al_m[16], al_s[16], ucpu[32],
        umem[32], hb[32];
    snprintf(key, sizeof(key), "{sg}:node:%s", cfg->id);
    snprintf(cap_v, sizeof(cap_v), "%d", n->cap_vcpu);
    snprintf(cap_m, sizeof(cap_m), "%d", n->cap_mem_mb);
    snprintf(cap_s, sizeof(cap_s), "%d", n->cap_sandboxes);
    snprintf(al_v, sizeof(al_v), "%d", v);
    snprintf(al_m, sizeof(al_m), "%d", m);
    snprintf(al_s, sizeof(al_s), "%d", c);
    snprintf(ucpu, sizeof(ucpu), "%.1f", n->usage_cpu_pct);
    snprintf(umem, sizeof(umem), "%ld", n->usage_mem_mb);
    long long now = sg_now_ms();
    snprintf(hb, sizeof(hb), "%lld", now);
    json_t *tl = sg__node_info_json(n); /* for the template list */
    json_t *tarr = json_object_get(tl, "templates");
    size_t tcap = 16 + json_array_size(tarr) * 66, tlen = 0, i;
    char *templates = calloc(1, tcap);
    json_t *t;
    json_array_foreach(tarr, i, t) {
        tlen += (size_t)snprintf(templates + tlen, tcap - tlen, "%s%s", tlen ? "," : "",
                                 json_string_value(t));
    }
    char *labels = json_dumps(json_object_get(tl, "labels"), JSON_COMPACT);
    json_t *ids = json_array();
    for (sg__sbx_t *s = n->sandboxes; s; s = s->next)
        if (s->state != SBX_DELETING && !s->delete_requested)
            json_array_append_new(ids, json_string(s->id));
    char *idss = json_dumps(ids, JSON_COMPACT);
    json_decref(ids);
    json_decref(tl);
    const char *api = cfg->api_advertise && *cfg->api_advertise ? cfg->api_advertise : cfg->api_listen;
    const char *proxy =
        cfg->proxy_advertise && *cfg->proxy_advertise ? cfg->proxy_advertise : cfg->proxy_listen;
    const char *argv[] = {
        "HSET", key, "id", cfg->id, "api", api, "proxy", proxy, "status",
        n->draining ? "draining" : "ready", "cap_vcpu", cap_v, "cap_mem_mb", cap_m,
        "cap_sandboxes", cap_s, "alloc_vcpu", al_v, "alloc_mem_mb", al_m, "alloc_sandboxes", al_s,
        "usage_cpu_pct", ucpu, "usage_mem_mb", umem, "templates", templates ? templates : "",
        "labels", labels ? labels : "{}", "agent_version", SG_NODE_VERSION, "envd_version",
        n->envd_version, "heartbeat_ms", hb, "sandboxes", idss ? idss : "[]",
    };
    size_t argc = sizeof(argv) / sizeof(argv[0]);
    redisAsyncCommand(r->ac, NULL, NULL, "MULTI");
    redisAsyncCommandArgv(r->ac, NULL, NULL, (int)argc, argv, NULL);
    redisAsyncCommand(r->ac, NULL, NULL, "PEXPIRE %s 60000", key);
    redisAsyncCommand(r->ac, NULL, NULL, "ZADD {sg}:nodes %s %s", hb, cfg->id);
    redisAsyncCommand(r->ac, on_exec, r, "EXEC");
    r->inflight_since = sg_mono_ns();
    free(templates);
    free(labels);
    free(idss);
}

static void on_timer(uv_timer_t *t)
{
    reg_t *r = t->data;
    if (r->ac == NULL) {
        long long now = sg_now_ms();
        if (now >= r->next_connect_ms) {
            r->next_connect_ms = now + RECONNECT_MS;
            reg_connect(r);
        }
        return;
    }
    if (!r->connected)
        return;
    if (r->inflight_since != 0) {
        uint64_t waited_ms = (sg_mono_ns() - r->inflight_since) / 1000000;
        if (waited_ms > (uint64_t)r->n->cfg->redis.timeout_ms) {
            sg_log(SG_LOG_WARN, "redis heartbeat timed out; reconnecting");
            redisAsyncContext *ac = r->ac;
            r->ac = NULL;
            r->connected = false;
            r->inflight_since = 0;
            redisAsyncFree(ac); /* runs on_exec with a NULL reply, then on_disconnect */
        }
        return;
    }
    heartbeat(r);
}

int sg__registry_start(sg__node_t *n)
{
    reg_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return SG_ENOMEM;
    n->reg = r;
    r->n = n;
    uv_timer_init(n->loop, &r->timer);
    r->timer.data = r;
    reg_connect(r);
    int iv = n->cfg->heartbeat_interval_ms > 0 ? n->cfg->heartbeat_interval_ms : 1000;
    uv_timer_start(&r->timer, on_timer, 0, (uint64_t)iv);
    return 0;
}

void sg__registry_stop(sg__node_t *n)
{
    reg_t *r = n->reg;
    if (r == NULL)
        return;
    if (r->ac != NULL) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        redisAsyncFree(ac);
    }
}
