/*
 * The scheduler of one loop: node view refresh, create (place, reserve, node call, confirm),
 * catalog reads and changes, and the background duties (reaper, reservation sweep,
 * reconciliation, index trim).
 *
 * Every operation is an sg_sched_op_t on the scheduler's list, so sg_sched_free can cancel what
 * is in flight. An op runs one step at a time (one Redis script or one node request pending);
 * cancelling an op only clears its callback: a create keeps going so that what it started on a
 * node is either confirmed into the catalog or deleted again, never left half done.
 *
 * Create: candidates come from the cached view (best max_attempts first). Each attempt reserves
 * with one script; a node refusal (script 1, node 429/404/409) moves to the next candidate; a
 * node failure (5xx, I/O, timeout) marks the node suspect for SUSPECT_MS in this scheduler and
 * moves on; the team limit (script 2) ends the create with SG_ELIMIT. Reservations carry a TTL
 * (>= create timeout + 5 s); one never confirmed is released by the sweep.
 */
#include <stdlib.h>
#include <string.h>
#include "scheduler/sched_int.h"

#define SUSPECT_MS 10000
#define MAX_SUSPECTS 64
#define REAP_BATCH 100
#define SWEEP_BATCH 500
#define LIST_MAX 10000
#define RECONCILE_GRACE_MS 3000

typedef enum {
    OP_CREATE,
    OP_GET,
    OP_LIST,
    OP_KILL,
    OP_SETEND,
    OP_METRICS,
    OP_NODES,
    OP_NODEACT,
    OP_REAP,     /* background: one node delete after a reap/reconcile, detached */
    OP_BG,       /* background script in flight */
} op_kind_t;

struct sg_sched_op {
    sg_sched_t *s;
    sg_sched_op_t *prev, *next;
    op_kind_t kind;
    bool canceled;
    void *cb;
    void *data;
    sg__eval_t *eval;
    sg_redis_cmd_t *cmd;
    sg_nodecli_req_t *nreq;
    char id[64];
    char team[72];
    /* create */
    sg_sched_create_req_t req; /* string fields point into the copies below */
    char template_id[72], alias[72];
    char *node_body;
    char *meta_json;
    json_t *labels;
    size_t cand[10];
    char cand_ids[10][72];
    size_t ncand, attempt;
    uint64_t deadline_ns;
    char node[72];
    char node_api[128];
    sg_sched_sandbox_t sbx;
    /* list */
    sg_sched_list_req_t list;
    json_t *list_meta;
    char list_next[128];
    char list_template[72];
    /* set end */
    long long end_ms;
    sg_sched_end_mode_t mode;
    char action[16];
    bool in_call;          /* inside sg_sched_create: completions must be deferred */
    bool refreshed;        /* placement waited for a fresh view once */
    bool renamed;          /* id changed after a collision: node_body must follow */
    struct deferred *deferred;
};

typedef struct {
    char id[72];
    long long until_ms;
} suspect_t;

typedef struct refresh refresh_t;
typedef struct {
    refresh_t *rf;
    size_t i;
    bool alloc;
} slot_t;

struct refresh {
    sg_sched_t *s;
    sg_redis_cmd_t *zcmd;
    sg__view_t view;
    slot_t *slots;
    sg_redis_cmd_t **cmds;
    bool *reused; /* node entry copied from the previous view (heartbeat unchanged) */
    size_t pending;
};

typedef struct waiter {
    struct waiter *next;
    sg_sched_done_cb cb;
    void *data;
} waiter_t;

struct sg_sched {
    uv_loop_t *loop;
    sg_redis_t *redis;
    sg_nodecli_t *cli;
    sg_sched_config_t cfg;
    char *node_token, *token_secret;
    sg__view_t view;
    bool view_loaded;
    refresh_t *refresh;
    waiter_t *waiters;
    suspect_t suspects[MAX_SUSPECTS];
    uv_timer_t refresh_timer, bg_timer;
    int open_handles;
    unsigned bg_ticks;
    bool reaping, sweeping, reconciling;
    sg_sched_op_t *ops;
};

static sg_sched_op_t *op_new(sg_sched_t *s, op_kind_t kind, void *cb, void *data);
static void op_free(sg_sched_op_t *op);
static void create_next(sg_sched_op_t *op);
static void place(sg_sched_op_t *op);
static void on_fresh_view(int err, void *data);
static void create_fail(sg_sched_op_t *op, int err);
static void on_reserve(sg_redis_t *r, redisReply *reply, void *data);
static void on_node_created(int err, int status, const char *body, size_t len, void *data);
static void on_confirm(sg_redis_t *r, redisReply *reply, void *data);
static void release_detached(sg_sched_t *s, const char *id);
static void node_call_detached(sg_sched_t *s, const char *node, const char *method,
                               const char *path, const char *body);
static void on_get(sg_redis_t *r, redisReply *reply, void *data);
static void on_list(sg_redis_t *r, redisReply *reply, void *data);
static void on_remove(sg_redis_t *r, redisReply *reply, void *data);
static void on_kill_node(int err, int status, const char *body, size_t len, void *data);
static void on_setend(sg_redis_t *r, redisReply *reply, void *data);
static void on_metrics_get(sg_redis_t *r, redisReply *reply, void *data);
static void on_metrics_node(int err, int status, const char *body, size_t len, void *data);
static void on_nodes_refreshed(int err, void *data);
static void on_nodeflag(sg_redis_t *r, redisReply *reply, void *data);
static void on_nodeact_node(int err, int status, const char *body, size_t len, void *data);
static void refresh_start(sg_sched_t *s);
static void on_refresh_timer(uv_timer_t *t);
static void on_bg_timer(uv_timer_t *t);
static void on_handle_closed(uv_handle_t *h);
static int sbx_from_hash(sg_sched_t *s, redisReply *h, sg_sched_sandbox_t *out);
static void set_state(sg_sched_t *s, sg_sched_sandbox_t *sbx);
static bool node_suspect(sg_sched_t *s, const char *id, long long now);
static void mark_suspect(sg_sched_t *s, const char *id, long long now);
static void emit(sg_sched_t *s, const char *kind, const char *id, const char *team,
                 const char *node, const char *detail);

/* ---- lifecycle ---- */

sg_sched_t *sg_sched_new(uv_loop_t *loop, sg_redis_t *redis, const sg_sched_config_t *cfg)
{
    sg_sched_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->loop = loop;
    s->redis = redis;
    s->cfg = *cfg;
    if (s->cfg.cpu_overcommit < 1.0)
        s->cfg.cpu_overcommit = 1.0;
    if (s->cfg.max_attempts < 1)
        s->cfg.max_attempts = 3;
    if (s->cfg.max_attempts > 10)
        s->cfg.max_attempts = 10;
    if (s->cfg.node_down_after_ms <= 0)
        s->cfg.node_down_after_ms = 5000;
    if (s->cfg.create_timeout_ms <= 0)
        s->cfg.create_timeout_ms = 30000;
    if (s->cfg.reservation_ttl_ms < s->cfg.create_timeout_ms + 5000)
        s->cfg.reservation_ttl_ms = s->cfg.create_timeout_ms + 5000;
    if (s->cfg.refresh_ms <= 0)
        s->cfg.refresh_ms = 250;
    if (s->cfg.reaper_ms <= 0)
        s->cfg.reaper_ms = 200;
    if (s->cfg.node_timeout_ms <= 0)
        s->cfg.node_timeout_ms = 5000;
    s->node_token = strdup(cfg->node_token != NULL ? cfg->node_token : "");
    s->token_secret = strdup(cfg->token_secret != NULL ? cfg->token_secret : "");
    s->cli = sg_nodecli_new(loop, s->node_token);
    if (s->node_token == NULL || s->token_secret == NULL || s->cli == NULL) {
        if (s->cli != NULL)
            sg_nodecli_free(s->cli);
        free(s->node_token);
        free(s->token_secret);
        free(s);
        return NULL;
    }
    s->cfg.node_token = s->node_token;
    s->cfg.token_secret = s->token_secret;
    uv_timer_init(loop, &s->refresh_timer);
    uv_timer_init(loop, &s->bg_timer);
    s->refresh_timer.data = s;
    s->bg_timer.data = s;
    s->open_handles = 2;
    refresh_start(s);
    uv_timer_start(&s->refresh_timer, on_refresh_timer, (uint64_t)s->cfg.refresh_ms,
                   (uint64_t)s->cfg.refresh_ms);
    if (s->cfg.background)
        uv_timer_start(&s->bg_timer, on_bg_timer, (uint64_t)s->cfg.reaper_ms,
                       (uint64_t)s->cfg.reaper_ms);
    return s;
}

void sg_sched_free(sg_sched_t *s)
{
    while (s->ops != NULL) {
        sg_sched_op_t *op = s->ops;
        if (op->eval != NULL)
            sg__eval_cancel(op->eval);
        if (op->cmd != NULL)
            sg_redis_cancel(op->cmd);
        if (op->nreq != NULL)
            sg_nodecli_cancel(op->nreq);
        op->eval = NULL;
        op->cmd = NULL;
        op->nreq = NULL;
        op_free(op);
    }
    if (s->refresh != NULL) {
        refresh_t *rf = s->refresh;
        if (rf->zcmd != NULL)
            sg_redis_cancel(rf->zcmd);
        for (size_t i = 0; rf->cmds != NULL && i < 2 * rf->view.n; i++)
            if (rf->cmds[i] != NULL)
                sg_redis_cancel(rf->cmds[i]);
        sg__view_clear(&rf->view);
        free(rf->slots);
        free(rf->cmds);
        free(rf->reused);
        free(rf);
    }
    for (waiter_t *w = s->waiters, *nw; w != NULL; w = nw) {
        nw = w->next;
        free(w);
    }
    sg__view_clear(&s->view);
    sg_nodecli_free(s->cli);
    uv_close((uv_handle_t *)&s->refresh_timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->bg_timer, on_handle_closed);
}

static void on_handle_closed(uv_handle_t *h)
{
    sg_sched_t *s = h->data;
    if (--s->open_handles == 0) {
        free(s->node_token);
        free(s->token_secret);
        free(s);
    }
}

void sg_sched_cancel(sg_sched_op_t *op)
{
    op->canceled = true;
}

/* ---- ids and tokens ---- */

int sg_sched_new_id(char out[21])
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    size_t n = 0;
    while (n < 20) {
        uint8_t buf[32];
        if (sg_rand_bytes(buf, sizeof(buf)) != 0)
            return SG_EIO;
        /* Rejection sampling: 252 = 7 * 36 keeps every character equally likely. */
        for (size_t i = 0; i < sizeof(buf) && n < 20; i++)
            if (buf[i] < 252)
                out[n++] = alphabet[buf[i] % 36];
    }
    out[20] = '\0';
    return 0;
}

bool sg_sched_id_valid(const char *id)
{
    size_t n = 0;
    for (; id[n] != '\0'; n++)
        if (!((id[n] >= 'a' && id[n] <= 'z') || (id[n] >= '0' && id[n] <= '9')) || n >= 63)
            return false;
    return n > 0;
}

void sg_sched_token_with(const char *secret, const char *kind, const char *id, char out[65])
{
    char msg[160];
    int n = snprintf(msg, sizeof(msg), "%s:%s", kind, id);
    uint8_t mac[32];
    sg_hmac_sha256(secret, strlen(secret), msg, (size_t)n, mac);
    sg_hex_encode(mac, 32, out);
}

void sg_sched_token(const sg_sched_t *s, const char *kind, const char *id, char out[65])
{
    sg_sched_token_with(s->token_secret, kind, id, out);
}

void sg_sched_sandbox_clear(sg_sched_sandbox_t *sbx)
{
    if (sbx->metadata != NULL)
        json_decref(sbx->metadata);
    sbx->metadata = NULL;
}

void sg_sched_view_counts(const sg_sched_t *s, size_t *all, size_t *ready)
{
    long long now = sg_now_ms();
    size_t r = 0;
    for (size_t i = 0; i < s->view.n; i++) {
        const sg__node_t *n = &s->view.nodes[i];
        if (n->ready && !n->cordoned && sg__node_live(n, s->cfg.node_down_after_ms, now))
            r++;
    }
    if (all != NULL)
        *all = s->view.n;
    if (ready != NULL)
        *ready = r;
}

/* ---- create ---- */

sg_sched_op_t *sg_sched_create(sg_sched_t *s, const sg_sched_create_req_t *req,
                               sg_sched_create_cb cb, void *data)
{
    sg_sched_op_t *op = op_new(s, OP_CREATE, (void *)cb, data);
    json_t *body = NULL;
    if (op == NULL)
        return NULL;
    if (sg_sched_new_id(op->id) != 0)
        goto fail;
    snprintf(op->team, sizeof(op->team), "%s", req->team_id);
    snprintf(op->template_id, sizeof(op->template_id), "%s", req->template_id);
    snprintf(op->alias, sizeof(op->alias), "%s", req->alias != NULL ? req->alias : "");
    op->req = *req;
    op->req.team_id = op->team;
    op->req.template_id = op->template_id;
    op->req.alias = op->alias;
    op->req.env_vars = NULL;
    op->req.metadata = NULL;
    op->labels = req->labels != NULL ? json_deep_copy(req->labels) : NULL;
    op->req.labels = op->labels;
    op->meta_json = req->metadata != NULL ? json_dumps(req->metadata, JSON_COMPACT | JSON_SORT_KEYS)
                                          : strdup("{}");
    if (op->meta_json == NULL)
        goto fail;
    char tok[65];
    sg_sched_token(s, "envd", op->id, tok);
    body = json_pack("{s:s,s:s,s:s,s:i,s:i,s:i,s:O?,s:O?,s:I,s:s?,s:b}", "sandboxID", op->id,
                     "teamID", op->team, "templateID", op->template_id, "vcpu", req->vcpu,
                     "memoryMB", req->mem_mb, "diskMB", req->disk_mb, "envVars", req->env_vars,
                     "metadata", req->metadata, "endAtMs", (json_int_t)req->end_ms,
                     "envdAccessToken", req->secure ? tok : NULL, "allowInternetAccess",
                     req->allow_internet);
    if (body == NULL || (op->node_body = json_dumps(body, JSON_COMPACT)) == NULL)
        goto fail;
    json_decref(body);
    op->deadline_ns = sg_mono_ns() + (uint64_t)s->cfg.create_timeout_ms * 1000000ull;
    place(op);
    /* Each step starts from a loop callback; the first one from a Redis reply or, with no
     * candidate at all, from a zero timer (so cb never runs inside this call). */
    op->in_call = true;
    create_next(op);
    op->in_call = false;
    return op;
fail:
    if (body != NULL)
        json_decref(body);
    op_free(op);
    return NULL;
}

static void on_noroom_timer(uv_timer_t *t);
static void on_noroom_closed(uv_handle_t *h);

/* The best few candidates from the current view; later attempts re-check them against the live
 * view. */
static void place(sg_sched_op_t *op)
{
    sg_sched_t *s = op->s;
    sg__fit_req_t fit = {.vcpu = op->req.vcpu, .mem_mb = op->req.mem_mb,
                         .template_id = op->template_id, .labels = op->labels,
                         .overcommit = s->cfg.cpu_overcommit,
                         .down_after_ms = s->cfg.node_down_after_ms, .policy = s->cfg.policy};
    long long now = sg_now_ms();
    size_t idx[10];
    size_t n = sg__place(&s->view, &fit, now, idx, (size_t)s->cfg.max_attempts + 4);
    op->ncand = 0;
    op->attempt = 0;
    for (size_t i = 0; i < n && op->ncand < (size_t)s->cfg.max_attempts; i++) {
        const sg__node_t *nd = &s->view.nodes[idx[i]];
        if (node_suspect(s, nd->id, now))
            continue;
        snprintf(op->cand_ids[op->ncand++], sizeof(op->cand_ids[0]), "%s", nd->id);
    }
}

/* After the refresh sg_sched_create asked for (a loop callback: completing here is allowed). */
static void on_fresh_view(int err, void *data)
{
    sg_sched_op_t *op = data;
    place(op);
    create_next(op);
}

typedef struct deferred {
    uv_timer_t t;
    sg_sched_op_t *op;
    int err;
} deferred_t;

static void create_fail(sg_sched_op_t *op, int err)
{
    sg_sched_create_cb cb = (sg_sched_create_cb)op->cb;
    if (!op->canceled && cb != NULL)
        cb(err, NULL, op->data);
    op_free(op);
}

static void create_next(sg_sched_op_t *op)
{
    sg_sched_t *s = op->s;
    if (op->attempt >= op->ncand && !op->refreshed && sg_mono_ns() <= op->deadline_ns &&
        sg_sched_refresh(s, on_fresh_view, op) == 0) {
        /* No node of this gateway's view took it, and that view can be a refresh old (a node
         * that just registered, room just freed, one just filled by another gateway): place
         * once more on a fresh view before saying no. */
        op->refreshed = true;
        op->nreq = NULL;
        return;
    }
    if (op->attempt >= op->ncand || sg_mono_ns() > op->deadline_ns) {
        int err = op->attempt >= op->ncand ? SG_ENOROOM : SG_ETIMEOUT;
        if (op->in_call) {
            /* Nothing tried yet: we may still be inside sg_sched_create. */
            deferred_t *d = calloc(1, sizeof(*d));
            if (d != NULL) {
                d->op = op;
                d->err = err;
                op->deferred = d;
                uv_timer_init(s->loop, &d->t);
                d->t.data = d;
                uv_timer_start(&d->t, on_noroom_timer, 0, 0);
                op->nreq = NULL;
                return;
            }
        }
        create_fail(op, err);
        return;
    }
    const char *nid = op->cand_ids[op->attempt++];
    sg__node_t *nd = sg__view_find(&s->view, nid);
    if (nd == NULL) {
        create_next(op);
        return;
    }
    snprintf(op->node, sizeof(op->node), "%s", nid);
    snprintf(op->node_api, sizeof(op->node_api), "%s", nd->api);
    char knode[128], kalloc[128], kteam[128], vcpu[16], mem[16], lim[16], oc[32], now[24],
        dl[24], down[16];
    snprintf(knode, sizeof(knode), "{sg}:node:%s", nid);
    snprintf(kalloc, sizeof(kalloc), "{sg}:alloc:%s", nid);
    snprintf(kteam, sizeof(kteam), "{sg}:team:%s", op->team);
    snprintf(vcpu, sizeof(vcpu), "%d", op->req.vcpu);
    snprintf(mem, sizeof(mem), "%d", op->req.mem_mb);
    snprintf(lim, sizeof(lim), "%d", op->req.team_max_concurrent);
    snprintf(oc, sizeof(oc), "%.6f", s->cfg.cpu_overcommit);
    long long t = sg_now_ms();
    snprintf(now, sizeof(now), "%lld", t);
    snprintf(dl, sizeof(dl), "%lld", t + s->cfg.reservation_ttl_ms);
    snprintf(down, sizeof(down), "%d", s->cfg.node_down_after_ms);
    const char *keys[] = {knode, kalloc, kteam, "{sg}:resv", "{sg}:resvexp"};
    const char *args[] = {op->id, nid, op->team, vcpu, mem, lim, oc, now, dl, down};
    op->eval = sg__eval(s->redis, SG__SCRIPT_RESERVE, 5, keys, 10, args, on_reserve, op);
    if (op->eval == NULL) {
        op->attempt = op->ncand; /* allocation failure: stop here */
        create_fail(op, SG_ENOMEM);
    }
}

static void on_noroom_timer(uv_timer_t *t)
{
    deferred_t *d = t->data;
    if (d->op != NULL) {
        d->op->deferred = NULL;
        create_fail(d->op, d->err);
    }
    uv_close((uv_handle_t *)&d->t, on_noroom_closed);
}

static void on_noroom_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_reserve(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    op->eval = NULL;
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        if (reply != NULL && reply->type == REDIS_REPLY_ERROR)
            sg_log(SG_LOG_ERROR, "reserve script failed", SG_LS("error", reply->str));
        create_fail(op, SG_EUNAVAIL);
        return;
    }
    switch (reply->integer) {
    case 0:
        break;
    case 2:
        create_fail(op, SG_ELIMIT);
        return;
    case 3: /* id collision: a fresh id, same node */
        sg_sched_new_id(op->id);
        op->renamed = true;
        op->attempt--;
        create_next(op);
        return;
    default:
        create_next(op);
        return;
    }
    sg__node_t *nd = sg__view_find(&s->view, op->node);
    if (nd != NULL) {
        /* Until the next refresh, later placements on this loop see what we hold. */
        nd->alloc_vcpu += op->req.vcpu;
        nd->alloc_mem += op->req.mem_mb;
        nd->alloc_n += 1;
    }
    /* The body was built with the first id; after a collision (rare) the id differs. */
    if (op->renamed) {
        op->renamed = false;
        json_t *b = json_loads(op->node_body, 0, NULL);
        if (b != NULL) {
            char tok[65];
            sg_sched_token(s, "envd", op->id, tok);
            json_object_set_new(b, "sandboxID", json_string(op->id));
            if (json_is_string(json_object_get(b, "envdAccessToken")))
                json_object_set_new(b, "envdAccessToken", json_string(tok));
            char *nb = json_dumps(b, JSON_COMPACT);
            if (nb != NULL) {
                free(op->node_body);
                op->node_body = nb;
            }
            json_decref(b);
        }
    }
    uint64_t now = sg_mono_ns();
    int left = op->deadline_ns > now ? (int)((op->deadline_ns - now) / 1000000ull) : 1;
    op->nreq = sg_nodecli_request(s->cli, op->node_api, "POST", "/v1/sandboxes", op->node_body,
                                  strlen(op->node_body), left < 1 ? 1 : left, on_node_created, op);
    if (op->nreq == NULL) {
        release_detached(s, op->id);
        create_fail(op, SG_ENOMEM);
    }
}

static void on_node_created(int err, int status, const char *body, size_t len, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    op->nreq = NULL;
    long long now = sg_now_ms();
    if (err != 0 || status >= 500 || (status != 201 && status != 200)) {
        sg__node_t *nd = sg__view_find(&s->view, op->node);
        if (nd != NULL) {
            nd->alloc_vcpu -= op->req.vcpu;
            nd->alloc_mem -= op->req.mem_mb;
            nd->alloc_n -= 1;
        }
        release_detached(s, op->id);
        if (err != 0 || status >= 500) {
            sg_log(SG_LOG_WARN, "node failed a create; marked suspect", SG_LS("node", op->node),
                   SG_LI("status", status), SG_LS("error", err != 0 ? sg_strerror(err) : ""));
            mark_suspect(s, op->node, now);
            /* The node may have created it after all (timeout): ask it to delete. */
            char path[128];
            snprintf(path, sizeof(path), "/v1/sandboxes/%s", op->id);
            node_call_detached(s, op->node, "DELETE", path, NULL);
        }
        if (status == 409) {
            sg_sched_new_id(op->id);
            op->renamed = true;
        }
        if (err == SG_ETIMEOUT && sg_mono_ns() > op->deadline_ns) {
            create_fail(op, SG_ETIMEOUT);
            return;
        }
        create_next(op);
        return;
    }
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *addr = json_string_value(json_object_get(j, "address"));
    const char *envd = json_string_value(json_object_get(j, "envdVersion"));
    json_t *st = json_object_get(j, "startedAtMs");
    sg_sched_sandbox_t *x = &op->sbx;
    snprintf(x->id, sizeof(x->id), "%s", op->id);
    snprintf(x->team, sizeof(x->team), "%s", op->team);
    snprintf(x->node, sizeof(x->node), "%s", op->node);
    snprintf(x->template_id, sizeof(x->template_id), "%s", op->template_id);
    snprintf(x->alias, sizeof(x->alias), "%s", op->alias);
    snprintf(x->client_id, sizeof(x->client_id), "%s", op->node);
    snprintf(x->envd_version, sizeof(x->envd_version), "%s", envd != NULL ? envd : "0.1.0");
    snprintf(x->address, sizeof(x->address), "%s", addr != NULL ? addr : "");
    snprintf(x->state, sizeof(x->state), "running");
    x->vcpu = op->req.vcpu;
    x->mem_mb = op->req.mem_mb;
    x->disk_mb = op->req.disk_mb;
    x->started_ms = json_is_integer(st) ? (long long)json_integer_value(st) : now;
    x->end_ms = op->req.end_ms;
    x->secure = op->req.secure;
    x->public_traffic = op->req.public_traffic;
    x->metadata = json_loads(op->meta_json, 0, NULL);
    if (j != NULL)
        json_decref(j);
    char ksbx[96], knsbx[128], kteam[128], end[24], started[24], vcpu[16], mem[16], disk[16];
    snprintf(ksbx, sizeof(ksbx), "{sg}:sbx:%s", op->id);
    snprintf(knsbx, sizeof(knsbx), "{sg}:nodesbx:%s", op->node);
    snprintf(kteam, sizeof(kteam), "{sg}:team:%s", op->team);
    snprintf(end, sizeof(end), "%lld", x->end_ms);
    snprintf(started, sizeof(started), "%lld", x->started_ms);
    snprintf(vcpu, sizeof(vcpu), "%d", x->vcpu);
    snprintf(mem, sizeof(mem), "%d", x->mem_mb);
    snprintf(disk, sizeof(disk), "%d", x->disk_mb);
    const char *keys[] = {"{sg}:resv", "{sg}:resvexp", ksbx, "{sg}:expiry", knsbx, kteam};
    const char *args[] = {op->id, end, started,
                          "id", op->id, "team", op->team, "node", op->node,
                          "template", op->template_id, "alias", op->alias,
                          "client", x->client_id, "vcpu", vcpu, "mem", mem, "disk", disk,
                          "started", started, "end", end, "meta", op->meta_json,
                          "envd", x->envd_version, "addr", x->address,
                          "secure", x->secure ? "1" : "0", "public", x->public_traffic ? "1" : "0"};
    op->eval = sg__eval(s->redis, SG__SCRIPT_CONFIRM, 6, keys, (int)(sizeof(args) / sizeof(args[0])),
                        args, on_confirm, op);
    if (op->eval == NULL) {
        char path[128];
        snprintf(path, sizeof(path), "/v1/sandboxes/%s", op->id);
        node_call_detached(s, op->node, "DELETE", path, NULL);
        release_detached(s, op->id);
        create_fail(op, SG_ENOMEM);
    }
}

static void on_confirm(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    op->eval = NULL;
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER || reply->integer != 1) {
        /* Not in the catalog: the sandbox must not keep running unaccounted. */
        char path[128];
        snprintf(path, sizeof(path), "/v1/sandboxes/%s", op->id);
        node_call_detached(s, op->node, "DELETE", path, NULL);
        create_fail(op, reply == NULL || reply->type == REDIS_REPLY_ERROR ? SG_EUNAVAIL
                                                                          : SG_ETIMEOUT);
        return;
    }
    emit(s, "create", op->id, op->team, op->node, op->template_id);
    sg_sched_create_cb cb = (sg_sched_create_cb)op->cb;
    if (!op->canceled && cb != NULL)
        cb(0, &op->sbx, op->data);
    op_free(op);
}

/* ---- reads and changes ---- */

/* The common end of every operation's start: on failure frees op (its callback never runs). */
static int op_started(sg_sched_op_t *op, bool sent, sg_sched_op_t **opp)
{
    if (!sent) {
        op_free(op);
        return SG_ENOMEM;
    }
    if (opp != NULL)
        *opp = op;
    return 0;
}

/* Starts an operation that first reads the sandbox's catalog hash; on_reply continues it. */
static int read_catalog(sg_sched_t *s, int kind, const char *team_id, const char *id, void *cb,
                        void *data, sg_redis_cb on_reply, sg_sched_op_t **opp)
{
    sg_sched_op_t *op = op_new(s, kind, cb, data);
    if (op == NULL)
        return SG_ENOMEM;
    snprintf(op->id, sizeof(op->id), "%s", id);
    snprintf(op->team, sizeof(op->team), "%s", team_id != NULL ? team_id : "");
    char key[96];
    snprintf(key, sizeof(key), "{sg}:sbx:%s", id);
    const char *argv[] = {"HGETALL", key};
    op->cmd = sg_redis_command(s->redis, on_reply, op, 2, argv, NULL);
    if (op->cmd == NULL) {
        op_free(op);
        return SG_ENOMEM;
    }
    if (opp != NULL)
        *opp = op;
    return 0;
}

int sg_sched_get(sg_sched_t *s, const char *team_id, const char *id, sg_sched_sbx_cb cb, void *data,
                 sg_sched_op_t **opp)
{
    if (!sg_sched_id_valid(id))
        return SG_ENOTFOUND;
    return read_catalog(s, OP_GET, team_id, id, (void *)cb, data, on_get, opp);
}

static void on_get(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    op->cmd = NULL;
    sg_sched_sandbox_t sbx = {0};
    int err = 0;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY)
        err = SG_EUNAVAIL;
    else if (sbx_from_hash(op->s, reply, &sbx) != 0 ||
             (op->team[0] != '\0' && strcmp(sbx.team, op->team) != 0))
        err = SG_ENOTFOUND;
    sg_sched_sbx_cb cb = (sg_sched_sbx_cb)op->cb;
    if (!op->canceled)
        cb(err, err == 0 ? &sbx : NULL, op->data);
    sg_sched_sandbox_clear(&sbx);
    op_free(op);
}

int sg_sched_list(sg_sched_t *s, const sg_sched_list_req_t *req, sg_sched_list_cb cb, void *data,
                  sg_sched_op_t **opp)
{
    if (req->team_id == NULL)
        return SG_EINVAL;
    sg_sched_op_t *op = op_new(s, OP_LIST, (void *)cb, data);
    if (op == NULL)
        return SG_ENOMEM;
    op->list = *req;
    snprintf(op->team, sizeof(op->team), "%s", req->team_id);
    op->list.team_id = op->team;
    op->list_meta = req->metadata != NULL ? json_deep_copy(req->metadata) : NULL;
    op->list.metadata = op->list_meta;
    snprintf(op->list_next, sizeof(op->list_next), "%s", req->next != NULL ? req->next : "");
    op->list.next = op->list_next[0] != '\0' ? op->list_next : NULL;
    snprintf(op->list_template, sizeof(op->list_template), "%s",
             req->template_id != NULL ? req->template_id : "");
    op->list.template_id = op->list_template[0] != '\0' ? op->list_template : NULL;
    if (op->list.limit < 1 || op->list.limit > LIST_MAX)
        op->list.limit = 100;
    char key[128], max[16];
    snprintf(key, sizeof(key), "{sg}:team:%s", op->team);
    snprintf(max, sizeof(max), "%d", LIST_MAX);
    const char *keys[] = {key};
    const char *args[] = {max};
    op->eval = sg__eval(s->redis, SG__SCRIPT_LIST, 1, keys, 1, args, on_list, op);
    return op_started(op, op->eval != NULL, opp);
}

static int cmp_newest(const void *a, const void *b)
{
    const sg_sched_sandbox_t *x = a, *y = b;
    if (x->started_ms != y->started_ms)
        return x->started_ms > y->started_ms ? -1 : 1;
    return -strcmp(x->id, y->id);
}

static int cmp_oldest(const void *a, const void *b)
{
    return -cmp_newest(a, b);
}

static void on_list(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    op->eval = NULL;
    sg_sched_list_cb cb = (sg_sched_list_cb)op->cb;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        if (!op->canceled)
            cb(SG_EUNAVAIL, NULL, 0, NULL, op->data);
        op_free(op);
        return;
    }
    sg_sched_sandbox_t *all = calloc(reply->elements + 1, sizeof(*all));
    size_t n = 0;
    if (all == NULL) {
        if (!op->canceled)
            cb(SG_ENOMEM, NULL, 0, NULL, op->data);
        op_free(op);
        return;
    }
    const sg_sched_list_req_t *q = &op->list;
    bool want_running = q->want_running || !q->want_lost;
    for (size_t i = 0; i < reply->elements; i++) {
        sg_sched_sandbox_t *x = &all[n];
        if (sbx_from_hash(s, reply->element[i], x) != 0)
            continue;
        bool keep = strcmp(x->team, op->team) == 0;
        if (keep && strcmp(x->state, "running") == 0 && !want_running)
            keep = false;
        if (keep && strcmp(x->state, "lost") == 0 && !q->want_lost)
            keep = false;
        if (keep && q->template_id != NULL && strcmp(x->template_id, q->template_id) != 0 &&
            strcmp(x->alias, q->template_id) != 0)
            keep = false;
        /* Inclusive, as E2B: startedAfter=<a sandbox's startedAt> lists that sandbox. */
        if (keep && q->started_after_ms > 0 && x->started_ms < q->started_after_ms)
            keep = false;
        if (keep && q->metadata != NULL) {
            const char *k;
            json_t *v;
            json_object_foreach(q->metadata, k, v) {
                json_t *have = json_object_get(x->metadata, k);
                if (!json_is_string(have) || !json_is_string(v) ||
                    strcmp(json_string_value(have), json_string_value(v)) != 0) {
                    keep = false;
                    break;
                }
            }
        }
        if (keep)
            n++;
        else
            sg_sched_sandbox_clear(x);
    }
    qsort(all, n, sizeof(*all), q->oldest_first ? cmp_oldest : cmp_newest);
    /* The token names the last item of the previous page: "<started_ms>.<id>". Resuming after it
     * (not at an offset) visits each sandbox once even when others come and go between pages. */
    size_t from = 0;
    if (q->next != NULL) {
        sg_sched_sandbox_t key = {0};
        const char *dot = strchr(q->next, '.');
        if (dot != NULL && (size_t)(dot - q->next) < 20 && strlen(dot + 1) < sizeof(key.id)) {
            key.started_ms = atoll(q->next);
            snprintf(key.id, sizeof(key.id), "%s", dot + 1);
            int (*cmp)(const void *, const void *) = q->oldest_first ? cmp_oldest : cmp_newest;
            while (from < n && cmp(&all[from], &key) <= 0)
                from++;
        } else {
            from = n;
        }
    }
    size_t count = n - from < (size_t)q->limit ? n - from : (size_t)q->limit;
    char next[128] = "";
    if (from + count < n && count > 0)
        snprintf(next, sizeof(next), "%lld.%s", all[from + count - 1].started_ms,
                 all[from + count - 1].id);
    if (!op->canceled)
        cb(0, all + from, count, next[0] != '\0' ? next : NULL, op->data);
    for (size_t i = 0; i < n; i++)
        sg_sched_sandbox_clear(&all[i]);
    free(all);
    op_free(op);
}

int sg_sched_kill(sg_sched_t *s, const char *team_id, const char *id, sg_sched_done_cb cb,
                  void *data, sg_sched_op_t **opp)
{
    if (!sg_sched_id_valid(id))
        return SG_ENOTFOUND;
    sg_sched_op_t *op = op_new(s, OP_KILL, (void *)cb, data);
    if (op == NULL)
        return SG_ENOMEM;
    snprintf(op->id, sizeof(op->id), "%s", id);
    snprintf(op->team, sizeof(op->team), "%s", team_id != NULL ? team_id : "");
    char key[96];
    snprintf(key, sizeof(key), "{sg}:sbx:%s", id);
    const char *keys[] = {key, "{sg}:expiry"};
    const char *args[] = {op->id, op->team};
    op->eval = sg__eval(s->redis, SG__SCRIPT_REMOVE, 2, keys, 2, args, on_remove, op);
    return op_started(op, op->eval != NULL, opp);
}

static void on_remove(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    op->eval = NULL;
    sg_sched_done_cb cb = (sg_sched_done_cb)op->cb;
    int err = 0;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY)
        err = SG_EUNAVAIL;
    else if (reply->elements < 3)
        err = SG_ENOTFOUND;
    if (err != 0) {
        if (!op->canceled)
            cb(err, op->data);
        op_free(op);
        return;
    }
    snprintf(op->node, sizeof(op->node), "%s", reply->element[1]->str);
    snprintf(op->team, sizeof(op->team), "%s", reply->element[2]->str);
    emit(s, "kill", op->id, op->team, op->node, NULL);
    sg__node_t *nd = sg__view_find(&s->view, op->node);
    if (nd != NULL) {
        /* Wait for the node: once kill answers, the sandbox is gone. Its errors are the
         * reconciler's to repair (the catalog no longer knows the sandbox). */
        char path[128];
        snprintf(path, sizeof(path), "/v1/sandboxes/%s", op->id);
        op->nreq = sg_nodecli_request(s->cli, nd->api, "DELETE", path, "", 0,
                                      s->cfg.node_timeout_ms, on_kill_node, op);
        if (op->nreq != NULL)
            return;
    }
    if (!op->canceled)
        cb(0, op->data);
    op_free(op);
}

static void on_kill_node(int err, int status, const char *body, size_t len, void *data)
{
    sg_sched_op_t *op = data;
    op->nreq = NULL;
    if (err != 0 || (status != 204 && status != 404 && status != 200))
        sg_log(SG_LOG_WARN, "node delete failed", SG_LS("sandbox", op->id),
               SG_LS("node", op->node), SG_LI("status", status));
    sg_sched_done_cb cb = (sg_sched_done_cb)op->cb;
    if (!op->canceled)
        cb(0, op->data);
    op_free(op);
}

int sg_sched_set_end(sg_sched_t *s, const char *team_id, const char *id, long long end_ms,
                     sg_sched_end_mode_t mode, sg_sched_sbx_cb cb, void *data,
                     sg_sched_op_t **opp)
{
    if (!sg_sched_id_valid(id))
        return SG_ENOTFOUND;
    sg_sched_op_t *op = op_new(s, OP_SETEND, (void *)cb, data);
    if (op == NULL)
        return SG_ENOMEM;
    snprintf(op->id, sizeof(op->id), "%s", id);
    snprintf(op->team, sizeof(op->team), "%s", team_id != NULL ? team_id : "");
    char key[96], end[24];
    snprintf(key, sizeof(key), "{sg}:sbx:%s", id);
    snprintf(end, sizeof(end), "%lld", end_ms);
    const char *keys[] = {key, "{sg}:expiry"};
    const char *args[] = {op->id, op->team, end, mode == SG_SCHED_END_SET ? "set" : "extend"};
    op->eval = sg__eval(s->redis, SG__SCRIPT_SETEND, 2, keys, 4, args, on_setend, op);
    return op_started(op, op->eval != NULL, opp);
}

static void on_setend(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    op->eval = NULL;
    sg_sched_sbx_cb cb = (sg_sched_sbx_cb)op->cb;
    sg_sched_sandbox_t sbx = {0};
    int err = 0;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY)
        err = SG_EUNAVAIL;
    else if (sbx_from_hash(s, reply, &sbx) != 0)
        err = SG_ENOTFOUND;
    if (err == 0) {
        /* The node enforces end + grace on its own: keep it informed (best effort; a missed
         * update only matters if no gateway runs at the old end time). */
        char path[128], body[64];
        snprintf(path, sizeof(path), "/v1/sandboxes/%s", sbx.id);
        snprintf(body, sizeof(body), "{\"endAtMs\":%lld}", sbx.end_ms);
        node_call_detached(s, sbx.node, "PATCH", path, body);
    }
    if (!op->canceled)
        cb(err, err == 0 ? &sbx : NULL, op->data);
    sg_sched_sandbox_clear(&sbx);
    op_free(op);
}

int sg_sched_metrics(sg_sched_t *s, const char *team_id, const char *id, sg_sched_json_cb cb,
                     void *data, sg_sched_op_t **opp)
{
    if (!sg_sched_id_valid(id))
        return SG_ENOTFOUND;
    return read_catalog(s, OP_METRICS, team_id, id, (void *)cb, data, on_metrics_get, opp);
}

static void on_metrics_get(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    op->cmd = NULL;
    sg_sched_json_cb cb = (sg_sched_json_cb)op->cb;
    sg_sched_sandbox_t sbx = {0};
    int err = 0;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY)
        err = SG_EUNAVAIL;
    else if (sbx_from_hash(s, reply, &sbx) != 0 ||
             (op->team[0] != '\0' && strcmp(sbx.team, op->team) != 0))
        err = SG_ENOTFOUND;
    sg__node_t *nd = err == 0 ? sg__view_find(&s->view, sbx.node) : NULL;
    if (err == 0 && nd == NULL)
        err = SG_EUNAVAIL;
    if (err == 0) {
        char path[128];
        snprintf(path, sizeof(path), "/v1/sandboxes/%s/metrics", op->id);
        op->nreq = sg_nodecli_request(s->cli, nd->api, "GET", path, "", 0, s->cfg.node_timeout_ms,
                                      on_metrics_node, op);
        if (op->nreq == NULL)
            err = SG_ENOMEM;
    }
    sg_sched_sandbox_clear(&sbx);
    if (err != 0) {
        if (!op->canceled)
            cb(err, 0, NULL, op->data);
        op_free(op);
    }
}

static void on_metrics_node(int err, int status, const char *body, size_t len, void *data)
{
    sg_sched_op_t *op = data;
    op->nreq = NULL;
    sg_sched_json_cb cb = (sg_sched_json_cb)op->cb;
    json_t *j = err == 0 ? json_loadb(body, len, 0, NULL) : NULL;
    if (!op->canceled)
        cb(err != 0 ? SG_EUNAVAIL : 0, status, j, op->data);
    if (j != NULL)
        json_decref(j);
    op_free(op);
}

/* ---- admin ---- */

int sg_sched_nodes(sg_sched_t *s, sg_sched_json_cb cb, void *data, sg_sched_op_t **opp)
{
    sg_sched_op_t *op = op_new(s, OP_NODES, (void *)cb, data);
    if (op == NULL)
        return SG_ENOMEM;
    int ret = sg_sched_refresh(s, on_nodes_refreshed, op);
    if (ret != 0) {
        op_free(op);
        return ret;
    }
    if (opp != NULL)
        *opp = op;
    return 0;
}

static void on_nodes_refreshed(int err, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    sg_sched_json_cb cb = (sg_sched_json_cb)op->cb;
    json_t *arr = json_array();
    long long now = sg_now_ms();
    for (size_t i = 0; arr != NULL && i < s->view.n; i++) {
        const sg__node_t *n = &s->view.nodes[i];
        bool live = sg__node_live(n, s->cfg.node_down_after_ms, now);
        const char *status = !live ? "down" : n->cordoned ? "cordoned" : !n->ready ? "draining"
                                                                                   : "ready";
        size_t tl = strlen(n->templates);
        json_t *tpl = json_array();
        /* templates is ",a,b,": split it back. */
        for (size_t a = 1; tpl != NULL && a < tl;) {
            const char *c = strchr(n->templates + a, ',');
            if (c == NULL || c == n->templates + a)
                break;
            json_array_append_new(tpl, json_stringn(n->templates + a,
                                                    (size_t)(c - (n->templates + a))));
            a = (size_t)(c - n->templates) + 1;
        }
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:s,s:s,s:b,s:b,s:I,s:{s:i,s:i,s:i},s:{s:i,s:i,s:i},"
                           "s:{s:i,s:i},s:o,s:O?}",
                           "nodeID", n->id, "status", status, "api", n->api, "proxy", n->proxy,
                           "cordoned", n->cordoned, "draining", !n->ready, "heartbeatMs",
                           (json_int_t)n->heartbeat_ms, "capacity", "vcpu", n->cap_vcpu,
                           "memoryMB", n->cap_mem, "sandboxes", n->cap_n, "allocated", "vcpu",
                           n->alloc_vcpu, "memoryMB", n->alloc_mem, "sandboxes", n->alloc_n,
                           "usage", "cpuPct", n->used_cpu_pct, "memUsedMB", n->used_mem_mb,
                           "templates", tpl != NULL ? tpl : json_array(), "labels", n->labels));
    }
    if (!op->canceled)
        cb(err != 0 ? err : (arr == NULL ? SG_ENOMEM : 0), 200, arr, op->data);
    if (arr != NULL)
        json_decref(arr);
    op_free(op);
}

int sg_sched_node_action(sg_sched_t *s, const char *node_id, const char *action,
                         sg_sched_done_cb cb, void *data, sg_sched_op_t **opp)
{
    bool set;
    if (strcmp(action, "cordon") == 0 || strcmp(action, "drain") == 0)
        set = true;
    else if (strcmp(action, "uncordon") == 0)
        set = false;
    else
        return SG_EINVAL;
    if (strlen(node_id) == 0 || strlen(node_id) > 64)
        return SG_ENOTFOUND;
    sg_sched_op_t *op = op_new(s, OP_NODEACT, (void *)cb, data);
    if (op == NULL)
        return SG_ENOMEM;
    snprintf(op->node, sizeof(op->node), "%s", node_id);
    snprintf(op->action, sizeof(op->action), "%s", action);
    char key[128];
    snprintf(key, sizeof(key), "{sg}:node:%s", node_id);
    const char *keys[] = {key};
    const char *args[] = {set ? "set" : "clear"};
    op->eval = sg__eval(s->redis, SG__SCRIPT_NODEFLAG, 1, keys, 1, args, on_nodeflag, op);
    return op_started(op, op->eval != NULL, opp);
}

static void on_nodeflag(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    op->eval = NULL;
    sg_sched_done_cb cb = (sg_sched_done_cb)op->cb;
    int err = reply == NULL || reply->type != REDIS_REPLY_INTEGER ? SG_EUNAVAIL
              : reply->integer != 1                               ? SG_ENOTFOUND
                                                                  : 0;
    sg__node_t *nd = sg__view_find(&s->view, op->node);
    if (err == 0 && nd != NULL)
        nd->cordoned = strcmp(op->action, "uncordon") != 0;
    if (err == 0 && nd != NULL && strcmp(op->action, "cordon") != 0) {
        /* drain tells the node (it refuses creates and reports "draining"); uncordon undoes
         * both. */
        op->nreq = sg_nodecli_request(s->cli, nd->api, "POST",
                                      strcmp(op->action, "drain") == 0 ? "/v1/drain"
                                                                       : "/v1/undrain",
                                      "", 0, s->cfg.node_timeout_ms, on_nodeact_node, op);
        if (op->nreq != NULL)
            return;
    }
    if (!op->canceled)
        cb(err, op->data);
    op_free(op);
}

static void on_nodeact_node(int err, int status, const char *body, size_t len, void *data)
{
    sg_sched_op_t *op = data;
    op->nreq = NULL;
    sg_sched_done_cb cb = (sg_sched_done_cb)op->cb;
    int e = err != 0 || status >= 300 ? SG_EUNAVAIL : 0;
    if (e != 0)
        sg_log(SG_LOG_WARN, "node drain call failed", SG_LS("node", op->node),
               SG_LI("status", status));
    if (!op->canceled)
        cb(e, op->data);
    op_free(op);
}

/* ---- node view refresh ---- */

int sg_sched_refresh(sg_sched_t *s, sg_sched_done_cb cb, void *data)
{
    waiter_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return SG_ENOMEM;
    w->cb = cb;
    w->data = data;
    w->next = s->waiters;
    s->waiters = w;
    /* A refresh already in flight may have read the index before the caller's change: waiters
     * are served by the next complete refresh that starts after them. */
    if (s->refresh == NULL)
        refresh_start(s);
    return 0;
}

static void refresh_done(sg_sched_t *s, int err, refresh_t *rf);

/* qsort has no context argument: the view being sorted (loop thread only, so per-thread). */
static _Thread_local const sg__view_t *sort_view;

static int cmp_view_id(const void *a, const void *b)
{
    return strcmp(sort_view->nodes[*(const size_t *)a].id, sort_view->nodes[*(const size_t *)b].id);
}

static const sg__node_t *find_sorted(const sg__view_t *v, const size_t *order, const char *id)
{
    size_t lo = 0, hi = v->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(v->nodes[order[mid]].id, id);
        if (c == 0)
            return &v->nodes[order[mid]];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static void on_refresh_timer(uv_timer_t *t)
{
    sg_sched_t *s = t->data;
    if (s->refresh == NULL)
        refresh_start(s);
}

static void on_node_hmget(sg_redis_t *r, redisReply *reply, void *data)
{
    slot_t *sl = data;
    refresh_t *rf = sl->rf;
    sg__node_t *n = &rf->view.nodes[sl->i];
    rf->cmds[2 * sl->i + (sl->alloc ? 1 : 0)] = NULL;
    if (!sl->alloc) {
        char id[72];
        memcpy(id, n->id, sizeof(id));
        if (reply == NULL || sg__node_from_replies(n, id, reply, NULL) != 0) {
            free(n->templates);
            if (n->labels != NULL)
                json_decref(n->labels);
            memset(n, 0, sizeof(*n));
            memcpy(n->id, id, sizeof(id));
            n->heartbeat_ms = -1; /* invalid: dropped when the refresh completes */
        }
    } else if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3) {
        for (size_t k = 0; k < 3; k++) {
            redisReply *e = reply->element[k];
            int v = e->type == REDIS_REPLY_STRING ? atoi(e->str) : 0;
            if (v < 0)
                v = 0;
            if (k == 0)
                n->alloc_vcpu = v;
            else if (k == 1)
                n->alloc_mem = v;
            else
                n->alloc_n = v;
        }
    }
    if (--rf->pending == 0)
        refresh_done(rf->s, 0, rf);
}

static void on_node_index(sg_redis_t *r, redisReply *reply, void *data)
{
    refresh_t *rf = data;
    sg_sched_t *s = rf->s;
    rf->zcmd = NULL;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        refresh_done(s, SG_EUNAVAIL, rf);
        return;
    }
    size_t n = reply->elements / 2; /* id, score pairs */
    if (n == 0) {
        refresh_done(s, 0, rf);
        return;
    }
    rf->view.nodes = calloc(n, sizeof(sg__node_t));
    rf->slots = calloc(2 * n, sizeof(slot_t));
    rf->cmds = calloc(2 * n, sizeof(sg_redis_cmd_t *));
    rf->reused = calloc(n, sizeof(bool));
    if (rf->view.nodes == NULL || rf->slots == NULL || rf->cmds == NULL || rf->reused == NULL) {
        refresh_done(s, SG_ENOMEM, rf);
        return;
    }
    rf->view.n = n;
    /* The old view sorted by id: a node whose heartbeat (the index score) has not moved since
     * the last refresh has an unchanged hash (nodes write both in one MULTI), so only its
     * allocation is read again. With 1,000 nodes heartbeating every second and a 250 ms
     * refresh this cuts the node-hash reads by about four. */
    size_t *order = s->view.n > 0 ? malloc(s->view.n * sizeof(size_t)) : NULL;
    for (size_t i = 0; order != NULL && i < s->view.n; i++)
        order[i] = i;
    if (order != NULL) {
        sort_view = &s->view;
        qsort(order, s->view.n, sizeof(size_t), cmp_view_id);
    }
    for (size_t i = 0; i < n; i++) {
        redisReply *e = reply->element[2 * i], *sc = reply->element[2 * i + 1];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        snprintf(rf->view.nodes[i].id, sizeof(rf->view.nodes[i].id), "%s", e->str);
        long long hb = sc->type == REDIS_REPLY_STRING ? atoll(sc->str) : -1;
        const sg__node_t *old = order != NULL ? find_sorted(&s->view, order, e->str) : NULL;
        if (old != NULL && old->heartbeat_ms == hb && hb > 0 && old->templates != NULL) {
            sg__node_t *nn = &rf->view.nodes[i];
            *nn = *old;
            nn->templates = strdup(old->templates);
            nn->labels = old->labels != NULL ? json_incref(old->labels) : NULL;
            if (nn->templates == NULL)
                nn->heartbeat_ms = -1;
            rf->reused[i] = true;
        }
    }
    free(order);
    for (size_t i = 0; i < n; i++) {
        char knode[128], kalloc[128];
        snprintf(knode, sizeof(knode), "{sg}:node:%s", rf->view.nodes[i].id);
        snprintf(kalloc, sizeof(kalloc), "{sg}:alloc:%s", rf->view.nodes[i].id);
        const char *a1[] = {"HMGET", knode, "api", "proxy", "status", "cordoned",
                            "heartbeat_ms", "cap_vcpu", "cap_mem_mb", "cap_sandboxes",
                            "templates", "labels", "usage_cpu_pct", "usage_mem_mb"};
        const char *a2[] = {"HMGET", kalloc, "vcpu", "mem", "n"};
        rf->slots[2 * i] = (slot_t){rf, i, false};
        rf->slots[2 * i + 1] = (slot_t){rf, i, true};
        if (!rf->reused[i]) {
            rf->cmds[2 * i] =
                sg_redis_command(s->redis, on_node_hmget, &rf->slots[2 * i], 14, a1, NULL);
            if (rf->cmds[2 * i] != NULL)
                rf->pending++;
            else
                rf->view.nodes[i].heartbeat_ms = -1;
        }
        rf->cmds[2 * i + 1] =
            sg_redis_command(s->redis, on_node_hmget, &rf->slots[2 * i + 1], 5, a2, NULL);
        if (rf->cmds[2 * i + 1] != NULL)
            rf->pending++;
    }
    if (rf->pending == 0)
        refresh_done(s, SG_ENOMEM, rf);
}

static void refresh_start(sg_sched_t *s)
{
    refresh_t *rf = calloc(1, sizeof(*rf));
    if (rf == NULL)
        return;
    rf->s = s;
    /* Waiters registered before this point are served by this refresh. */
    const char *argv[] = {"ZRANGE", "{sg}:nodes", "0", "-1", "WITHSCORES"};
    rf->zcmd = sg_redis_command(s->redis, on_node_index, rf, 5, argv, NULL);
    if (rf->zcmd == NULL) {
        free(rf);
        return;
    }
    s->refresh = rf;
}

static void refresh_done(sg_sched_t *s, int err, refresh_t *rf)
{
    s->refresh = NULL;
    if (err == 0) {
        /* Drop nodes whose hash was gone; keep the rest in index order. */
        size_t k = 0;
        for (size_t i = 0; i < rf->view.n; i++) {
            if (rf->view.nodes[i].heartbeat_ms < 0 || rf->view.nodes[i].templates == NULL) {
                free(rf->view.nodes[i].templates);
                if (rf->view.nodes[i].labels != NULL)
                    json_decref(rf->view.nodes[i].labels);
                continue;
            }
            rf->view.nodes[k++] = rf->view.nodes[i];
        }
        rf->view.n = k;
        sg__view_clear(&s->view);
        s->view = rf->view;
        s->view_loaded = true;
    } else {
        sg__view_clear(&rf->view);
    }
    free(rf->slots);
    free(rf->cmds);
    free(rf->reused);
    free(rf);
    waiter_t *w = s->waiters;
    s->waiters = NULL;
    while (w != NULL) {
        waiter_t *nw = w->next;
        w->cb(err, w->data);
        free(w);
        w = nw;
    }
}

/* ---- background: reaper, sweep, reconciliation ---- */

static void on_reaped(sg_redis_t *r, redisReply *reply, void *data);
static void on_swept(sg_redis_t *r, redisReply *reply, void *data);
static void on_reconciled(sg_redis_t *r, redisReply *reply, void *data);
static void reap(sg_sched_t *s);

typedef struct {
    sg_sched_t *s;
    char node[72];
} bgctx_t;

static void on_bg_timer(uv_timer_t *t)
{
    sg_sched_t *s = t->data;
    s->bg_ticks++;
    reap(s);
    long long now = sg_now_ms();
    unsigned per_sec = (unsigned)(1000 / s->cfg.reaper_ms);
    if (per_sec == 0)
        per_sec = 1;
    if (!s->sweeping && s->bg_ticks % per_sec == 0) {
        char nows[24], lim[16];
        snprintf(nows, sizeof(nows), "%lld", now);
        snprintf(lim, sizeof(lim), "%d", SWEEP_BATCH);
        const char *args[] = {nows, lim};
        sg_sched_op_t *op = op_new(s, OP_BG, NULL, NULL);
        if (op != NULL) {
            op->eval = sg__eval(s->redis, SG__SCRIPT_SWEEP, 0, NULL, 2, args, on_swept, op);
            if (op->eval == NULL)
                op_free(op);
            else
                s->sweeping = true;
        }
        /* Forgotten nodes (hash expired a minute after the last heartbeat) leave the index. */
        char old[24];
        snprintf(old, sizeof(old), "%lld", now - 120000);
        const char *argv[] = {"ZREMRANGEBYSCORE", "{sg}:nodes", "-inf", old};
        sg_sched_op_t *op2 = op_new(s, OP_BG, NULL, NULL);
        if (op2 != NULL) {
            op2->cmd = sg_redis_command(s->redis, on_swept, op2, 4, argv, NULL);
            if (op2->cmd == NULL)
                op_free(op2);
        }
    }
    if (!s->reconciling && s->bg_ticks % (2 * per_sec) == 0 && s->view.n > 0) {
        char grace[16];
        snprintf(grace, sizeof(grace), "%d", RECONCILE_GRACE_MS);
        for (size_t i = 0; i < s->view.n; i++) {
            const sg__node_t *n = &s->view.nodes[i];
            if (!sg__node_live(n, s->cfg.node_down_after_ms, now))
                continue;
            char knsbx[128], knode[128];
            snprintf(knsbx, sizeof(knsbx), "{sg}:nodesbx:%s", n->id);
            snprintf(knode, sizeof(knode), "{sg}:node:%s", n->id);
            const char *keys[] = {knsbx, knode};
            const char *args[] = {grace};
            sg_sched_op_t *op = op_new(s, OP_BG, NULL, NULL);
            if (op == NULL)
                break;
            snprintf(op->node, sizeof(op->node), "%s", n->id);
            op->eval = sg__eval(s->redis, SG__SCRIPT_RECONCILE, 2, keys, 1, args, on_reconciled, op);
            if (op->eval == NULL)
                op_free(op);
        }
    }
}

static void reap(sg_sched_t *s)
{
    if (s->reaping)
        return;
    char nows[24], lim[16];
    snprintf(nows, sizeof(nows), "%lld", sg_now_ms());
    snprintf(lim, sizeof(lim), "%d", REAP_BATCH);
    const char *keys[] = {"{sg}:expiry"};
    const char *args[] = {nows, lim};
    sg_sched_op_t *op = op_new(s, OP_BG, NULL, NULL);
    if (op == NULL)
        return;
    op->eval = sg__eval(s->redis, SG__SCRIPT_REAP, 1, keys, 2, args, on_reaped, op);
    if (op->eval == NULL) {
        op_free(op);
        return;
    }
    s->reaping = true;
}

static void on_reaped(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    op->eval = NULL;
    s->reaping = false;
    size_t got = 0;
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 2 < reply->elements; i += 3) {
            const char *id = reply->element[i]->str, *node = reply->element[i + 1]->str,
                       *team = reply->element[i + 2]->str;
            if (id == NULL || node == NULL || team == NULL)
                continue;
            got++;
            emit(s, "expire", id, team, node, NULL);
            char path[128];
            snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
            node_call_detached(s, node, "DELETE", path, NULL);
        }
    } else if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        sg_log(SG_LOG_ERROR, "reap script failed", SG_LS("error", reply->str));
    }
    op_free(op);
    if (got == REAP_BATCH)
        reap(s); /* more are due: keep up without waiting for the next tick */
}

static void on_swept(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    if (op->eval != NULL) {
        s->sweeping = false;
        if (reply != NULL && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0)
            sg_log(SG_LOG_INFO, "expired reservations released", SG_LI("count", reply->integer));
    }
    op->eval = NULL;
    op->cmd = NULL;
    op_free(op);
}

static void on_reconciled(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    sg_sched_t *s = op->s;
    op->eval = NULL;
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        redisReply *unknown = reply->element[0], *lost = reply->element[1];
        for (size_t i = 0; unknown->type == REDIS_REPLY_ARRAY && i < unknown->elements; i++) {
            if (unknown->element[i]->type != REDIS_REPLY_STRING)
                continue;
            const char *id = unknown->element[i]->str;
            if (!sg_sched_id_valid(id))
                continue;
            sg_log(SG_LOG_WARN, "sandbox unknown to the catalog; deleting it on its node",
                   SG_LS("sandbox", id), SG_LS("node", op->node));
            char path[128];
            snprintf(path, sizeof(path), "/v1/sandboxes/%s", id);
            node_call_detached(s, op->node, "DELETE", path, NULL);
        }
        for (size_t i = 0; lost->type == REDIS_REPLY_ARRAY && i < lost->elements; i++)
            if (lost->element[i]->type == REDIS_REPLY_STRING)
                emit(s, "lost", lost->element[i]->str, NULL, op->node, "gone from its node");
    }
    op_free(op);
}

/* ---- helpers ---- */

static sg_sched_op_t *op_new(sg_sched_t *s, op_kind_t kind, void *cb, void *data)
{
    sg_sched_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return NULL;
    op->s = s;
    op->kind = kind;
    op->cb = cb;
    op->data = data;
    op->next = s->ops;
    if (s->ops != NULL)
        s->ops->prev = op;
    s->ops = op;
    return op;
}

static void op_free(sg_sched_op_t *op)
{
    sg_sched_t *s = op->s;
    if (op->prev != NULL)
        op->prev->next = op->next;
    else
        s->ops = op->next;
    if (op->next != NULL)
        op->next->prev = op->prev;
    if (op->deferred != NULL)
        op->deferred->op = NULL;
    free(op->node_body);
    free(op->meta_json);
    if (op->labels != NULL)
        json_decref(op->labels);
    if (op->list_meta != NULL)
        json_decref(op->list_meta);
    sg_sched_sandbox_clear(&op->sbx);
    free(op);
}

static void on_detached_done(int err, int status, const char *body, size_t len, void *data)
{
    sg_sched_op_t *op = data;
    op->nreq = NULL;
    if (err != 0 || status >= 500)
        sg_log(SG_LOG_WARN, "node call failed", SG_LS("node", op->node), SG_LS("call", op->action),
               SG_LI("status", status), SG_LS("error", err != 0 ? sg_strerror(err) : ""));
    op_free(op);
}

static void node_call_detached(sg_sched_t *s, const char *node, const char *method,
                               const char *path, const char *body)
{
    sg__node_t *nd = sg__view_find(&s->view, node);
    if (nd == NULL)
        return; /* unknown node: the node's own end-time enforcement and reconciliation remain */
    sg_sched_op_t *op = op_new(s, OP_REAP, NULL, NULL);
    if (op == NULL)
        return;
    snprintf(op->node, sizeof(op->node), "%s", node);
    snprintf(op->action, sizeof(op->action), "%s", method);
    op->nreq = sg_nodecli_request(s->cli, nd->api, method, path, body != NULL ? body : "",
                                  body != NULL ? strlen(body) : 0, s->cfg.node_timeout_ms,
                                  on_detached_done, op);
    if (op->nreq == NULL)
        op_free(op);
}

static void on_released(sg_redis_t *r, redisReply *reply, void *data)
{
    sg_sched_op_t *op = data;
    op->eval = NULL;
    op_free(op);
}

static void release_detached(sg_sched_t *s, const char *id)
{
    /* If this fails (Redis down) the sweep releases the reservation at its deadline. */
    sg_sched_op_t *op = op_new(s, OP_BG, NULL, NULL);
    if (op == NULL)
        return;
    const char *keys[] = {"{sg}:resv", "{sg}:resvexp"};
    const char *args[] = {id};
    op->eval = sg__eval(s->redis, SG__SCRIPT_RELEASE, 2, keys, 1, args, on_released, op);
    if (op->eval == NULL)
        op_free(op);
}

static const char *hget(redisReply *h, const char *field)
{
    for (size_t i = 0; i + 1 < h->elements; i += 2)
        if (h->element[i]->type == REDIS_REPLY_STRING && strcmp(h->element[i]->str, field) == 0)
            return h->element[i + 1]->type == REDIS_REPLY_STRING ? h->element[i + 1]->str : NULL;
    return NULL;
}

static int sbx_from_hash(sg_sched_t *s, redisReply *h, sg_sched_sandbox_t *out)
{
    memset(out, 0, sizeof(*out));
    if (h == NULL || h->type != REDIS_REPLY_ARRAY || h->elements < 2)
        return SG_ENOTFOUND;
    const char *v;
    if ((v = hget(h, "id")) == NULL)
        return SG_ENOTFOUND;
    snprintf(out->id, sizeof(out->id), "%s", v);
#define STR(field, key) snprintf(out->field, sizeof(out->field), "%s", (v = hget(h, key)) ? v : "")
    STR(team, "team");
    STR(node, "node");
    STR(template_id, "template");
    STR(alias, "alias");
    STR(client_id, "client");
    STR(envd_version, "envd");
    STR(address, "addr");
#undef STR
    out->vcpu = (v = hget(h, "vcpu")) ? atoi(v) : 0;
    out->mem_mb = (v = hget(h, "mem")) ? atoi(v) : 0;
    out->disk_mb = (v = hget(h, "disk")) ? atoi(v) : 0;
    out->started_ms = (v = hget(h, "started")) ? atoll(v) : 0;
    out->end_ms = (v = hget(h, "end")) ? atoll(v) : 0;
    out->secure = (v = hget(h, "secure")) && strcmp(v, "1") == 0;
    out->public_traffic = !((v = hget(h, "public")) && strcmp(v, "0") == 0);
    out->metadata = (v = hget(h, "meta")) ? json_loads(v, 0, NULL) : NULL;
    if (!json_is_object(out->metadata)) {
        if (out->metadata != NULL)
            json_decref(out->metadata);
        out->metadata = json_object();
    }
    set_state(s, out);
    return 0;
}

static void set_state(sg_sched_t *s, sg_sched_sandbox_t *sbx)
{
    const char *st = "running";
    if (s->view_loaded) {
        sg__node_t *n = sg__view_find(&s->view, sbx->node);
        if (n == NULL || !sg__node_live(n, s->cfg.node_down_after_ms, sg_now_ms()))
            st = "lost";
    }
    snprintf(sbx->state, sizeof(sbx->state), "%s", st);
}

static bool node_suspect(sg_sched_t *s, const char *id, long long now)
{
    for (size_t i = 0; i < MAX_SUSPECTS; i++)
        if (s->suspects[i].until_ms > now && strcmp(s->suspects[i].id, id) == 0)
            return true;
    return false;
}

static void mark_suspect(sg_sched_t *s, const char *id, long long now)
{
    size_t slot = 0;
    for (size_t i = 0; i < MAX_SUSPECTS; i++) {
        if (strcmp(s->suspects[i].id, id) == 0 || s->suspects[i].until_ms <= now) {
            slot = i;
            break;
        }
        if (s->suspects[i].until_ms < s->suspects[slot].until_ms)
            slot = i;
    }
    snprintf(s->suspects[slot].id, sizeof(s->suspects[slot].id), "%s", id);
    s->suspects[slot].until_ms = now + SUSPECT_MS;
}

static void emit(sg_sched_t *s, const char *kind, const char *id, const char *team,
                 const char *node, const char *detail)
{
    sg_log(SG_LOG_INFO, "sandbox event", SG_LS("kind", kind), SG_LS("sandbox", id),
           SG_LS("team", team), SG_LS("node", node));
    if (s->cfg.on_event != NULL)
        s->cfg.on_event(kind, id, team, node, detail, s->cfg.event_data);
}
