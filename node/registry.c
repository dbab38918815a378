/*
 * Registration and heartbeats into Redis (docs/node-api.md "Redis"): every heartbeat_interval one
 * MULTI / HSET {sg}:node:<id> ... / PEXPIRE 60000 / ZADD {sg}:nodes / EXEC.
 *
 * Redis never blocks or stops the agent: common's sg_redis client reconnects (replaying AUTH and
 * SELECT) and times commands out; a heartbeat is skipped while the previous EXEC is unanswered.
 * Sandboxes are not touched by any of this.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/hiredis.h>
#include "common/common.h"
#include "node/internal.h"

typedef struct sg__registry {
    sg__node_t *n;
    sg_redis_t *redis;
    uv_timer_t timer;
    sg_redis_cmd_t *exec; /* the unanswered EXEC, NULL = none */
    bool logged_down;
    int failures; /* heartbeats in a row without an answer */
} reg_t;

#define RECREATE_AFTER 3

static void on_queued(sg_redis_t *redis, redisReply *reply, void *data) {}

static void on_exec(sg_redis_t *redis, redisReply *reply, void *data)
{
    reg_t *r = data;
    r->exec = NULL;
    r->failures = reply == NULL ? r->failures + 1 : 0;
    if (reply == NULL) {
        if (!r->logged_down)
            sg_log(SG_LOG_WARN, "redis heartbeat failed (unreachable); sandboxes keep running");
        r->logged_down = true;
    } else if (reply->type == REDIS_REPLY_ERROR) {
        sg_log(SG_LOG_WARN, "redis heartbeat failed", SG_LS("err", reply->str));
    } else if (r->logged_down) {
        sg_log(SG_LOG_INFO, "redis heartbeat restored");
        r->logged_down = false;
    }
}

static void send_cmd(reg_t *r, int argc, const char **argv)
{
    sg_redis_command(r->redis, on_queued, r, argc, argv, NULL);
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
    /* Sent back to back on one connection: a drop in between discards the transaction. */
    const char *multi[] = {"MULTI"};
    send_cmd(r, 1, multi);
    send_cmd(r, (int)argc, argv);
    const char *pexpire[] = {"PEXPIRE", key, "60000"};
    send_cmd(r, 3, pexpire);
    const char *zadd[] = {"ZADD", "{sg}:nodes", hb, cfg->id};
    send_cmd(r, 4, zadd);
    const char *exec[] = {"EXEC"};
    r->exec = sg_redis_command(r->redis, on_exec, r, 1, exec, NULL);
    free(templates);
    free(labels);
    free(idss);
}

static reg_t *reg_client(reg_t *r)
{
    const sg_config_redis_t *c = &r->n->cfg->redis;
    r->redis = sg_redis_new(r->n->loop, c->address,
                            c->password && *c->password ? c->password : NULL, c->db,
                            c->timeout_ms > 0 ? c->timeout_ms : 1000);
    return r->redis ? r : NULL;
}

static void on_timer(uv_timer_t *t)
{
    reg_t *r = t->data;
    /* A connection that died by a reset can look alive to the client (hiredis's libuv adapter
     * drops poll errors) while every command times out: start over with a fresh client. */
    if (r->failures >= RECREATE_AFTER && r->exec == NULL) {
        sg_log(SG_LOG_WARN, "redis heartbeats keep failing; reconnecting");
        sg_redis_free(r->redis);
        r->failures = 0;
        if (reg_client(r) == NULL)
            return;
    }
    /* One heartbeat at a time; the client's command timeout bounds how long one can hang. */
    if (r->exec == NULL && r->redis != NULL)
        heartbeat(r);
    else if (r->redis == NULL)
        reg_client(r);
}

int sg__registry_start(sg__node_t *n)
{
    reg_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return SG_ENOMEM;
    n->reg = r;
    r->n = n;
    if (reg_client(r) == NULL)
        return SG_ENOMEM;
    uv_timer_init(n->loop, &r->timer);
    r->timer.data = r;
    int iv = n->cfg->heartbeat_interval_ms > 0 ? n->cfg->heartbeat_interval_ms : 1000;
    uv_timer_start(&r->timer, on_timer, 0, (uint64_t)iv);
    return 0;
}

void sg__registry_stop(sg__node_t *n)
{
    reg_t *r = n->reg;
    if (r == NULL || r->redis == NULL)
        return;
    sg_redis_free(r->redis);
    r->redis = NULL;
}
