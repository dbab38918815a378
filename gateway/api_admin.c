/*
 * Admin API (X-Admin-Token; closed when no admin token is configured, see api.c) and the
 * `sandgate node ...` commands: list nodes with capacity and status, cordon (no new placements),
 * drain (cordon + the node refuses creates; running sandboxes run to their end), uncordon.
 *
 * The HTTP routes go through the worker's scheduler (async). The commands run outside any event
 * loop, so they use a blocking hiredis connection and, for drain/undrain, one blocking HTTP call
 * to the node: the same Redis writes as the routes (NODEFLAG semantics: an unknown node is never
 * created by a typo).
 */
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <netdb.h>
#include <sys/socket.h>
#include <hiredis/hiredis.h>
#include "gateway/internal.h"
#include "scheduler/sched.h"

typedef struct {
    sg_api_call_t *call;
    h2o_req_t *req;
    sg_sched_op_t *op;
    char node[72];
} admin_pending_t;

static void on_admin_dispose(void *ptr)
{
    admin_pending_t *p = ptr;
    p->call = NULL;
    if (p->op != NULL)
        sg_sched_cancel(p->op);
    p->op = NULL;
}

static admin_pending_t *admin_pending(sg_api_call_t *call)
{
    admin_pending_t *p = h2o_mem_alloc_shared(&call->req->pool, sizeof(*p), on_admin_dispose);
    memset(p, 0, sizeof(*p));
    p->call = call;
    p->req = call->req;
    return p;
}

static void on_nodes(int err, int status, json_t *nodes, void *data)
{
    admin_pending_t *p = data;
    p->op = NULL;
    if (err != 0 || nodes == NULL) {
        sg_http_error(p->req, 503, "Node registry unavailable, try again");
        return;
    }
    json_incref(nodes);
    sg_http_json(p->req, 200, nodes);
}

static void on_admin_nodes(sg_api_call_t *call)
{
    admin_pending_t *p = admin_pending(call);
    if (sg_sched_nodes(sg__sandboxes_sched(call->w), on_nodes, p, &p->op) != 0)
        sg_http_error(call->req, 500, "Out of memory");
}

static void on_action_done(int err, void *data)
{
    admin_pending_t *p = data;
    p->op = NULL;
    if (err == SG_ENOTFOUND) {
        char msg[128];
        snprintf(msg, sizeof(msg), "Node \"%s\" is not registered", p->node);
        sg_http_error(p->req, 404, msg);
        return;
    }
    if (err != 0) {
        sg_http_error(p->req, 503, "Could not reach Redis or the node, try again");
        return;
    }
    sg_http_json(p->req, 204, NULL);
}

static void node_action(sg_api_call_t *call, const char *action)
{
    admin_pending_t *p = admin_pending(call);
    h2o_iovec_t v = call->params[0];
    bool ok = v.len > 0 && v.len <= 64;
    for (size_t i = 0; ok && i < v.len; i++) {
        char c = v.base[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
             c == '.' || c == '-';
    }
    if (!ok) {
        sg_http_error(call->req, 400, "Invalid node id");
        return;
    }
    memcpy(p->node, v.base, v.len);
    p->node[v.len] = '\0';
    if (sg_sched_node_action(sg__sandboxes_sched(call->w), p->node, action, on_action_done, p,
                             &p->op) != 0)
        sg_http_error(call->req, 500, "Out of memory");
}

static void on_cordon(sg_api_call_t *call) { node_action(call, "cordon"); }
static void on_uncordon(sg_api_call_t *call) { node_action(call, "uncordon"); }
static void on_drain(sg_api_call_t *call) { node_action(call, "drain"); }

const sg_route_t sg__routes_admin[] = {
    {"GET", "/admin/nodes", SG_ROUTE_ADMIN, on_admin_nodes},
    {"POST", "/admin/nodes/{id}/cordon", SG_ROUTE_ADMIN, on_cordon},
    {"POST", "/admin/nodes/{id}/uncordon", SG_ROUTE_ADMIN, on_uncordon},
    {"POST", "/admin/nodes/{id}/drain", SG_ROUTE_ADMIN, on_drain},
    {NULL},
};

/* ---- `sandgate node ...` ---- */

static redisContext *cli_redis(const sg_gateway_config_t *cfg, FILE *err)
{
    const char *a = cfg->redis.address;
    struct timeval tv = {.tv_sec = 5};
    redisContext *rc;
    if (strncmp(a, "unix:", 5) == 0) {
        rc = redisConnectUnixWithTimeout(a + 5, tv);
    } else {
        const char *colon = strrchr(a, ':');
        char host[256];
        snprintf(host, sizeof(host), "%.*s", colon ? (int)(colon - a) : (int)strlen(a), a);
        rc = redisConnectWithTimeout(host, colon ? atoi(colon + 1) : 6379, tv);
    }
    if (rc == NULL || rc->err) {
        fprintf(err, "sandgate: redis %s: %s\n", a, rc ? rc->errstr : "out of memory");
        if (rc)
            redisFree(rc);
        return NULL;
    }
    redisReply *r = NULL;
    if (cfg->redis.password != NULL)
        r = redisCommand(rc, "AUTH %s", cfg->redis.password);
    if (r != NULL)
        freeReplyObject(r);
    r = redisCommand(rc, "SELECT %d", cfg->redis.db);
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        fprintf(err, "sandgate: redis: %s\n", r ? r->str : rc->errstr);
        if (r)
            freeReplyObject(r);
        redisFree(rc);
        return NULL;
    }
    freeReplyObject(r);
    return rc;
}

/* One blocking POST to a node (CLI only). Returns the HTTP status or -1. */
static int cli_node_post(const char *api, const char *path, const char *token)
{
    const char *colon = strrchr(api, ':');
    if (colon == NULL)
        return -1;
    char host[256];
    snprintf(host, sizeof(host), "%.*s", (int)(colon - api), api);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
        return -1;
    int fd = socket(res->ai_family, SOCK_STREAM, 0), status = -1;
    struct timeval tv = {.tv_sec = 5};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
        char buf[1024];
        int n = snprintf(buf, sizeof(buf),
                         "POST %s HTTP/1.1\r\nhost: %s\r\nx-sandgate-node-token: %s\r\n"
                         "content-length: 0\r\nconnection: close\r\n\r\n",
                         path, api, token);
        if (write(fd, buf, (size_t)n) == n) {
            ssize_t got = read(fd, buf, sizeof(buf) - 1);
            if (got > 12) {
                buf[got] = '\0';
                sscanf(buf, "HTTP/1.%*d %d", &status);
            }
        }
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(res);
    return status;
}

int sg__node_cli(const sg_gateway_config_t *cfg, int argc, char **argv, FILE *out, FILE *err)
{
    if (argc < 1) {
        fprintf(err, "usage: sandgate node list | cordon ID | uncordon ID | drain ID\n");
        return 2;
    }
    redisContext *rc = cli_redis(cfg, err);
    if (rc == NULL)
        return 1;
    int ret = 1;
    if (strcmp(argv[0], "list") == 0) {
        redisReply *ids = redisCommand(rc, "ZRANGE {sg}:nodes 0 -1");
        long long now = sg_now_ms();
        fprintf(out, "%-24s %-9s %-22s %-12s %-14s %-10s\n", "NODE", "STATUS", "API", "VCPU",
                "MEMORY_MB", "SANDBOXES");
        for (size_t i = 0; ids != NULL && ids->type == REDIS_REPLY_ARRAY && i < ids->elements; i++) {
            const char *id = ids->element[i]->str;
            redisReply *h = redisCommand(rc, "HMGET {sg}:node:%s api status cordoned heartbeat_ms "
                                             "cap_vcpu cap_mem_mb cap_sandboxes", id);
            redisReply *a = redisCommand(rc, "HMGET {sg}:alloc:%s vcpu mem n", id);
            if (h != NULL && h->type == REDIS_REPLY_ARRAY && h->elements == 7 &&
                h->element[0]->type == REDIS_REPLY_STRING) {
#define S(r, k) ((r)->element[k]->type == REDIS_REPLY_STRING ? (r)->element[k]->str : "0")
                long long hb = atoll(S(h, 3));
                const char *st = now - hb > cfg->scheduler.node_down_after_ms ? "down"
                                 : strcmp(S(h, 2), "1") == 0             ? "cordoned"
                                                                         : S(h, 1);
                char vc[32], mem[32], n[32];
                snprintf(vc, sizeof(vc), "%s/%s", a ? S(a, 0) : "0", S(h, 4));
                snprintf(mem, sizeof(mem), "%s/%s", a ? S(a, 1) : "0", S(h, 5));
                snprintf(n, sizeof(n), "%s/%s", a ? S(a, 2) : "0", S(h, 6));
                fprintf(out, "%-24s %-9s %-22s %-12s %-14s %-10s\n", id, st, S(h, 0), vc, mem, n);
#undef S
            }
            if (h)
                freeReplyObject(h);
            if (a)
                freeReplyObject(a);
        }
        if (ids)
            freeReplyObject(ids);
        ret = 0;
    } else if (argc == 2 && (strcmp(argv[0], "cordon") == 0 || strcmp(argv[0], "uncordon") == 0 ||
                             strcmp(argv[0], "drain") == 0)) {
        bool set = strcmp(argv[0], "uncordon") != 0;
        redisReply *r = redisCommand(rc, "EVAL %s 1 {sg}:node:%s %s",
                                     "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
                                     "if ARGV[1] == 'set' then redis.call('HSET', KEYS[1], 'cordoned', '1')\n"
                                     "else redis.call('HDEL', KEYS[1], 'cordoned') end\n"
                                     "return 1\n",
                                     argv[1], set ? "set" : "clear");
        if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
            fprintf(err, "sandgate: redis: %s\n", r && r->str ? r->str : rc->errstr);
        } else if (r->integer != 1) {
            fprintf(err, "sandgate: node %s is not registered\n", argv[1]);
        } else {
            ret = 0;
            if (strcmp(argv[0], "cordon") != 0) {
                redisReply *api = redisCommand(rc, "HGET {sg}:node:%s api", argv[1]);
                int st = api != NULL && api->type == REDIS_REPLY_STRING
                             ? cli_node_post(api->str, set ? "/v1/drain" : "/v1/undrain",
                                             cfg->node_token)
                             : -1;
                if (st != 204 && st != 200) {
                    fprintf(err, "sandgate: node %s did not accept %s (status %d); cordoned %s\n",
                            argv[1], set ? "drain" : "undrain", st, set ? "anyway" : "lifted");
                    ret = 1;
                }
                if (api)
                    freeReplyObject(api);
            }
            if (ret == 0)
                fprintf(out, "node %s: %s\n", argv[1],
                        strcmp(argv[0], "drain") == 0 ? "draining" : set ? "cordoned" : "ready");
        }
        if (r)
            freeReplyObject(r);
    } else {
        fprintf(err, "usage: sandgate node list | cordon ID | uncordon ID | drain ID\n");
        ret = 2;
    }
    redisFree(rc);
    return ret;
}
