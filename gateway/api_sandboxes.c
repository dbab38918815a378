/*
 * The E2B sandbox REST API (SDK 2.51 / CLI 2.19 wire formats, ../shared/E2B-WIRE.md):
 * create (v1 and v2), list (v1 and v2 with metadata/state filters and X-Next-Token pages), get,
 * kill, timeout, refreshes, connect, metrics, templates; pause/resume answer 501.
 *
 * Each handler validates its input, then hands off to the worker's scheduler (scheduler/sched.h)
 * and answers from the callback. The pending state lives in the request's pool; its dispose hook
 * cancels the scheduler callback, so a client that leaves never gets an answer written into freed
 * memory (a create still completes and is recorded: the sandbox then lives until its timeout).
 *
 * Per worker (sg__sbx_worker_t, created by sg__sandboxes_worker_init): the scheduler (worker 0
 * also runs the reaper, sweep and reconciliation) and a small template cache (templates change
 * rarely; a create must not wait on PostgreSQL every time). Audit rows go to PostgreSQL from the
 * scheduler's event hook, fire and forget, off the request path.
 *
 * A sandbox of another team is always the same 404 as an unknown one.
 */
#include <errno.h>
#include <string.h>
#include <strings.h>
#include <stdlib.h>
#include <time.h>
#include <libpq-fe.h>
#include "gateway/internal.h"
#include "scheduler/sched.h"

#define TPL_CACHE 128
#define TPL_TTL_MS 10000
#define TPL_NEG_TTL_MS 2000
#define MAX_META 64
#define MAX_ENV 256
#define MAX_STR 4096

typedef struct {
    char key[72];
    bool found;
    char id[72], alias[72], team[40], envd[32];
    int vcpu, mem, disk;
    long long fetched_ms;
} tpl_t;

struct sg__sbx_worker {
    sg_sched_t *sched;
    tpl_t tpl[TPL_CACHE];
    sg_worker_t *w;
};

typedef struct {
    sg_api_call_t *call; /* NULL once the request is gone */
    h2o_req_t *req;
    sg_sched_op_t *op;
    sg_pg_query_t *q;
    sg_auth_identity_t id;
    json_t *body;
    char sbx_id[64];
    int timeout_s;
    bool v2;
    bool connect;
    long long from_s, to_s; /* metrics: the requested range, unix seconds (0 = open) */
    const char *unsupported; /* the feature a 501 names, e.g. "Snapshots are" */
} pending_t;

static void on_pending_dispose(void *p);
static pending_t *pending_new(sg_api_call_t *call);
static sg__sbx_worker_t *state_of(sg_api_call_t *call);
static bool param_id(sg_api_call_t *call, char *out, size_t cap);
static void not_found(h2o_req_t *req, const char *id);
static void sched_error(pending_t *p, int err, const char *what);
static json_t *sandbox_json(const sg_sched_sandbox_t *x, bool detail, sg_sched_t *s);
static json_t *created_json(const sg_sched_sandbox_t *x, sg_sched_t *s);
static int timeout_from(h2o_req_t *req, json_t *body, const char *field, const sg_auth_identity_t *id,
                        int *out);
static int cap_timeout_s(const sg_auth_identity_t *id);
static void create_with_template(pending_t *p, const tpl_t *t);
static void on_event(const char *kind, const char *sandbox_id, const char *team_id,
                     const char *node_id, const char *detail, void *data);
static size_t url_decode(const char *in, size_t len, char *out, size_t cap);
static long long parse_rfc3339(const char *s);
static int query_unix_s(h2o_req_t *req, const char *name, long long *out);

/* ---- worker state ---- */

int sg__sandboxes_worker_init(sg_worker_t *w)
{
    sg__sbx_worker_t *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return SG_ENOMEM;
    const sg_gateway_config_t *c = &sg_server.cfg;
    sg_sched_policy_t pol = SG_SCHED_LEAST_ALLOCATED;
    if (c->scheduler.policy != NULL && strcmp(c->scheduler.policy, "most-allocated") == 0)
        pol = SG_SCHED_MOST_ALLOCATED;
    else if (c->scheduler.policy != NULL && strcmp(c->scheduler.policy, "random") == 0)
        pol = SG_SCHED_RANDOM;
    sg_sched_config_t sc = {
        .cpu_overcommit = c->scheduler.cpu_overcommit,
        .policy = pol,
        .max_attempts = c->scheduler.max_attempts,
        .node_down_after_ms = c->scheduler.node_down_after_ms,
        .reservation_ttl_ms = c->scheduler.reservation_ttl_ms,
        .create_timeout_ms = c->scheduler.create_timeout_ms,
        .node_timeout_ms = c->http.connect_timeout_ms > 0 ? c->http.connect_timeout_ms : 5000,
        .node_token = c->node_token,
        .token_secret = c->token_secret,
        .background = w->index == 0,
        .on_event = on_event,
        .event_data = st,
    };
    st->w = w;
    st->sched = sg_sched_new(&w->loop, w->redis, &sc);
    if (st->sched == NULL) {
        free(st);
        return SG_ENOMEM;
    }
    w->sbx = st;
    return 0;
}

void sg__sandboxes_worker_fini(sg_worker_t *w)
{
    if (w->sbx == NULL)
        return;
    sg_sched_free(w->sbx->sched);
    free(w->sbx);
    w->sbx = NULL;
}

sg_sched_t *sg__sandboxes_sched(sg_worker_t *w)
{
    return w->sbx != NULL ? w->sbx->sched : NULL;
}

static sg__sbx_worker_t *state_of(sg_api_call_t *call)
{
    return call->w->sbx;
}

static void on_audit_done(sg_pg_t *pg, PGresult *res, void *data)
{
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
        sg_log(SG_LOG_WARN, "audit row not written",
               SG_LS("error", res != NULL ? PQresultErrorMessage(res) : "no connection"));
}

static void on_event(const char *kind, const char *sandbox_id, const char *team_id,
                     const char *node_id, const char *detail, void *data)
{
    sg__sbx_worker_t *st = data;
    if (strcmp(kind, "kill") == 0 || strcmp(kind, "expire") == 0)
        sg__edge_forget(st->w, sandbox_id, true);
    json_t *d = json_pack("{s:s?}", "detail", detail);
    char *ds = d != NULL ? json_dumps(d, JSON_COMPACT) : NULL;
    const char *params[] = {sandbox_id, team_id != NULL ? team_id : "", node_id != NULL ? node_id : "",
                            kind, ds != NULL ? ds : "{}"};
    sg_pg_query(st->w->pg,
                "INSERT INTO sandbox_events (sandbox_id, team_id, node_id, kind, detail) "
                "VALUES ($1, NULLIF($2, '')::uuid, NULLIF($3, ''), $4, $5::jsonb)",
                5, params, on_audit_done, NULL);
    free(ds);
    if (d != NULL)
        json_decref(d);
}

/* ---- create ---- */

static void on_tpl_row(sg_pg_t *pg, PGresult *res, void *data);
static void on_created(int err, const sg_sched_sandbox_t *sbx, void *data);

static void on_create(sg_api_call_t *call)
{
    h2o_req_t *req = call->req;
    json_t *body = sg_api_body_json(call);
    if (body == NULL)
        return;
    pending_t *p = pending_new(call);
    p->body = body;
    p->v2 = req->path.len >= 3 && memcmp(req->path.base, "/v2", 3) == 0;
    json_t *tpl = json_object_get(body, "templateID");
    const char *tname = json_string_value(tpl);
    size_t tl = tname != NULL ? strlen(tname) : 0;
    bool ok = tl > 0 && tl <= 64;
    for (size_t i = 0; ok && i < tl; i++)
        ok = (tname[i] >= 'a' && tname[i] <= 'z') || (tname[i] >= 'A' && tname[i] <= 'Z') ||
             (tname[i] >= '0' && tname[i] <= '9') || tname[i] == '_' || tname[i] == '-';
    if (!ok) {
        sg_http_error(req, 400, "templateID is required: 1-64 characters [A-Za-z0-9_-]");
        return;
    }
    if (timeout_from(req, body, "timeout", &call->id, &p->timeout_s) != 0)
        return;
    json_t *meta = json_object_get(body, "metadata");
    if (meta != NULL && !json_is_null(meta)) {
        if (!json_is_object(meta) || json_object_size(meta) > MAX_META) {
            sg_http_error(req, 400, "metadata must be an object of at most 64 string values");
            return;
        }
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) {
            if (!json_is_string(v) || strlen(k) == 0 || strlen(k) > 256 ||
                json_string_length(v) > MAX_STR) {
                sg_http_error(req, 400, "metadata values must be strings (keys 1-256 characters)");
                return;
            }
        }
    }
    json_t *env = json_object_get(body, "envVars");
    if (env != NULL && !json_is_null(env)) {
        if (!json_is_object(env) || json_object_size(env) > MAX_ENV) {
            sg_http_error(req, 400, "envVars must be an object of at most 256 string values");
            return;
        }
        const char *k;
        json_t *v;
        json_object_foreach(env, k, v) {
            if (!json_is_string(v) || strlen(k) == 0 || strlen(k) > 256 || strchr(k, '=') ||
                json_string_length(v) > MAX_STR * 8) {
                sg_http_error(req, 400, "envVars must map variable names to string values");
                return;
            }
        }
    }
    static const char *const bools[] = {"secure", "allow_internet_access", "autoPause"};
    for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++) {
        json_t *b = json_object_get(body, bools[i]);
        if (b != NULL && !json_is_boolean(b) && !json_is_null(b)) {
            char msg[96];
            snprintf(msg, sizeof(msg), "%s must be a boolean", bools[i]);
            sg_http_error(req, 400, msg);
            return;
        }
    }
    json_t *net = json_object_get(body, "network");
    if (net != NULL && !json_is_null(net) &&
        (!json_is_object(net) ||
         (json_object_get(net, "allowPublicTraffic") != NULL &&
          !json_is_boolean(json_object_get(net, "allowPublicTraffic"))))) {
        sg_http_error(req, 400, "network must be an object; network.allowPublicTraffic a boolean");
        return;
    }
    /* Template: from the cache, else one query (id or alias, public or the team's). */
    sg__sbx_worker_t *st = state_of(call);
    long long now = sg_now_ms();
    for (size_t i = 0; i < TPL_CACHE; i++) {
        tpl_t *t = &st->tpl[i];
        if (t->fetched_ms == 0 || strcmp(t->key, tname) != 0)
            continue;
        if (now - t->fetched_ms < (t->found ? TPL_TTL_MS : TPL_NEG_TTL_MS)) {
            create_with_template(p, t);
            return;
        }
        break;
    }
    const char *params[] = {tname};
    p->q = sg_pg_query(call->w->pg,
                       "SELECT id, COALESCE(alias, ''), COALESCE(team_id::text, ''), vcpu, "
                       "memory_mb, disk_mb, envd_version FROM templates "
                       "WHERE id = $1 OR alias = $1 ORDER BY (id = $1) DESC LIMIT 1",
                       1, params, on_tpl_row, p);
    if (p->q == NULL)
        sg_http_error(req, 500, "Out of memory");
}

static void on_tpl_row(sg_pg_t *pg, PGresult *res, void *data)
{
    pending_t *p = data;
    p->q = NULL;
    if (p->call == NULL)
        return;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        sg_http_error(p->req, 503, "Template catalog unavailable, try again");
        return;
    }
    const char *tname = json_string_value(json_object_get(p->body, "templateID"));
    sg__sbx_worker_t *st = state_of(p->call);
    /* Replace the matching or the oldest entry. */
    size_t slot = 0;
    for (size_t i = 0; i < TPL_CACHE; i++) {
        if (strcmp(st->tpl[i].key, tname) == 0) {
            slot = i;
            break;
        }
        if (st->tpl[i].fetched_ms < st->tpl[slot].fetched_ms)
            slot = i;
    }
    tpl_t *t = &st->tpl[slot];
    memset(t, 0, sizeof(*t));
    snprintf(t->key, sizeof(t->key), "%s", tname);
    t->fetched_ms = sg_now_ms();
    if (PQntuples(res) == 1) {
        t->found = true;
        snprintf(t->id, sizeof(t->id), "%s", PQgetvalue(res, 0, 0));
        snprintf(t->alias, sizeof(t->alias), "%s", PQgetvalue(res, 0, 1));
        snprintf(t->team, sizeof(t->team), "%s", PQgetvalue(res, 0, 2));
        t->vcpu = atoi(PQgetvalue(res, 0, 3));
        t->mem = atoi(PQgetvalue(res, 0, 4));
        t->disk = atoi(PQgetvalue(res, 0, 5));
        snprintf(t->envd, sizeof(t->envd), "%s", PQgetvalue(res, 0, 6));
    }
    create_with_template(p, t);
}

static void create_with_template(pending_t *p, const tpl_t *t)
{
    h2o_req_t *req = p->req;
    const char *tname = json_string_value(json_object_get(p->body, "templateID"));
    if (!t->found || (t->team[0] != '\0' && strcmp(t->team, p->id.team_id) != 0)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "template '%s' not found", tname);
        sg_http_error(req, 404, msg);
        return;
    }
    if (t->vcpu > p->id.max_vcpu || t->mem > p->id.max_mem_mb) {
        sg_http_error(req, 400, "Template needs more vCPU or memory than the team's limits allow");
        return;
    }
    json_t *net = json_object_get(p->body, "network");
    json_t *apt = net != NULL ? json_object_get(net, "allowPublicTraffic") : NULL;
    json_t *secure = json_object_get(p->body, "secure");
    json_t *inet = json_object_get(p->body, "allow_internet_access");
    json_t *meta = json_object_get(p->body, "metadata");
    json_t *env = json_object_get(p->body, "envVars");
    sg_sched_create_req_t cr = {
        .team_id = p->id.team_id,
        .team_max_concurrent = p->id.max_concurrent,
        .template_id = t->id,
        .alias = t->alias,
        .vcpu = t->vcpu,
        .mem_mb = t->mem,
        .disk_mb = t->disk,
        .end_ms = sg_now_ms() + (long long)p->timeout_s * 1000,
        .env_vars = json_is_object(env) ? env : NULL,
        .metadata = json_is_object(meta) ? meta : NULL,
        /* /v2 (SDK 2.51+) no longer sends "secure": every v2 sandbox is secured. */
        .secure = p->v2 || json_is_true(secure),
        .allow_internet = !json_is_false(inet),
        .public_traffic = !json_is_false(apt),
    };
    if (p->id.max_concurrent == 0) {
        /* A team limit of 0 means no sandbox at all, not "unlimited". */
        sg_http_error(req, 429, "Your team's concurrent sandbox limit is 0");
        return;
    }
    p->op = sg_sched_create(state_of(p->call)->sched, &cr, on_created, p);
    if (p->op == NULL)
        sg_http_error(req, 500, "Out of memory");
}

static void on_created(int err, const sg_sched_sandbox_t *sbx, void *data)
{
    pending_t *p = data;
    p->op = NULL;
    if (err != 0) {
        sched_error(p, err, NULL);
        return;
    }
    sg_http_json(p->req, 201, created_json(sbx, state_of(p->call)->sched));
}

/* ---- list ---- */

static void on_listed(int err, const sg_sched_sandbox_t *sbxs, size_t n, const char *next,
                      void *data);

static void on_list(sg_api_call_t *call)
{
    h2o_req_t *req = call->req;
    pending_t *p = pending_new(call);
    p->v2 = req->path.len >= 3 && memcmp(req->path.base, "/v2", 3) == 0;
    sg_sched_list_req_t q = {.team_id = call->id.team_id, .limit = p->v2 ? 100 : 10000};
    json_t *meta = NULL;
    char next[128] = "", tpl[72] = "";
    bool states = false;
    if (req->query_at != SIZE_MAX) {
        const char *qs = req->path.base + req->query_at + 1;
        size_t qlen = req->path.len - req->query_at - 1;
        for (size_t i = 0; i < qlen;) {
            size_t j = i;
            while (j < qlen && qs[j] != '&')
                j++;
            const char *eq = memchr(qs + i, '=', j - i);
            char k[32], v[2048];
            if (eq != NULL && (size_t)(eq - (qs + i)) < sizeof(k) && (size_t)(qs + j - eq) < sizeof(v)) {
                url_decode(qs + i, (size_t)(eq - (qs + i)), k, sizeof(k));
                url_decode(eq + 1, (size_t)(qs + j - eq - 1), v, sizeof(v));
                if (strcmp(k, "limit") == 0) {
                    char *end;
                    long l = strtol(v, &end, 10);
                    if (*end != '\0' || l < 1 || l > 100) {
                        if (meta)
                            json_decref(meta);
                        sg_http_error(req, 400, "limit must be an integer from 1 to 100");
                        return;
                    }
                    q.limit = (int)l;
                } else if (strcmp(k, "nextToken") == 0) {
                    snprintf(next, sizeof(next), "%.127s", v);
                } else if (strcmp(k, "state") == 0) {
                    states = true;
                    for (char *s = strtok(v, ","); s != NULL; s = strtok(NULL, ",")) {
                        if (strcmp(s, "running") == 0)
                            q.want_running = true;
                        else if (strcmp(s, "lost") == 0)
                            q.want_lost = true;
                        /* "paused": never, until pause exists */
                    }
                } else if (strcmp(k, "template") == 0 || strcmp(k, "templateID") == 0) {
                    snprintf(tpl, sizeof(tpl), "%.71s", v);
                } else if (strcmp(k, "startedAfter") == 0) {
                    q.started_after_ms = parse_rfc3339(v);
                    if (q.started_after_ms < 0) {
                        if (meta)
                            json_decref(meta);
                        sg_http_error(req, 400, "startedAfter must be an RFC 3339 time");
                        return;
                    }
                } else if (strcmp(k, "order") == 0) {
                    q.oldest_first = strcasecmp(v, "asc") == 0;
                } else if (strcmp(k, "metadata") == 0) {
                    /* "k=v&k2=v2", each part url-encoded again inside. */
                    if (meta == NULL)
                        meta = json_object();
                    for (char *save = NULL, *pair = strtok_r(v, "&", &save); pair != NULL;
                         pair = strtok_r(NULL, "&", &save)) {
                        char *e = strchr(pair, '=');
                        char mk[512], mv[2048];
                        if (e == NULL || e == pair) {
                            json_decref(meta);
                            sg_http_error(req, 400, "metadata filter must be key=value pairs");
                            return;
                        }
                        /* The SDK encodes each part twice (encodeURIComponent, then
                         * URLSearchParams): decode twice. */
                        char t1[2048];
                        url_decode(pair, (size_t)(e - pair), t1, sizeof(t1));
                        url_decode(t1, strlen(t1), mk, sizeof(mk));
                        url_decode(e + 1, strlen(e + 1), t1, sizeof(t1));
                        url_decode(t1, strlen(t1), mv, sizeof(mv));
                        json_object_set_new(meta, mk, json_string(mv));
                    }
                }
            }
            i = j + 1;
        }
    }
    if (!states)
        q.want_running = q.want_lost = true; /* lost ones stay visible until cleaned */
    else if (!q.want_running && !q.want_lost) {
        /* Only states that cannot exist (paused): an empty page. */
        if (meta)
            json_decref(meta);
        sg_http_json(req, 200, json_array());
        return;
    }
    q.metadata = meta;
    q.next = next[0] != '\0' ? next : NULL;
    q.template_id = tpl[0] != '\0' ? tpl : NULL;
    int rc = sg_sched_list(state_of(call)->sched, &q, on_listed, p, &p->op);
    if (meta)
        json_decref(meta);
    if (rc != 0)
        sg_http_error(req, 500, "Out of memory");
}

static void on_listed(int err, const sg_sched_sandbox_t *sbxs, size_t n, const char *next,
                      void *data)
{
    pending_t *p = data;
    p->op = NULL;
    if (err != 0) {
        sched_error(p, err, NULL);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, sandbox_json(&sbxs[i], false, NULL));
    if (next != NULL && p->v2) {
        size_t l = strlen(next);
        char *v = h2o_mem_alloc_pool(&p->req->pool, l + 1);
        memcpy(v, next, l + 1);
        h2o_add_header_by_str(&p->req->pool, &p->req->res.headers, H2O_STRLIT("x-next-token"), 0,
                              NULL, v, l);
    }
    sg_http_json(p->req, 200, arr);
}

/* ---- get, kill, timeouts, connect, metrics ---- */

static void on_got(int err, const sg_sched_sandbox_t *sbx, void *data)
{
    pending_t *p = data;
    p->op = NULL;
    if (err != 0) {
        sched_error(p, err, p->sbx_id);
        return;
    }
    sg_http_json(p->req, 200, sandbox_json(sbx, true, state_of(p->call)->sched));
}

static void on_get(sg_api_call_t *call)
{
    pending_t *p = pending_new(call);
    if (!param_id(call, p->sbx_id, sizeof(p->sbx_id)))
        return;
    int rc = sg_sched_get(state_of(call)->sched, call->id.team_id, p->sbx_id, on_got, p, &p->op);
    if (rc == SG_ENOTFOUND)
        not_found(call->req, p->sbx_id);
    else if (rc != 0)
        sg_http_error(call->req, 500, "Out of memory");
}

static void on_killed(int err, void *data)
{
    pending_t *p = data;
    p->op = NULL;
    if (err != 0) {
        sched_error(p, err, p->sbx_id);
        return;
    }
    sg_http_json(p->req, 204, NULL);
}

static void on_kill(sg_api_call_t *call)
{
    pending_t *p = pending_new(call);
    if (!param_id(call, p->sbx_id, sizeof(p->sbx_id)))
        return;
    int rc = sg_sched_kill(state_of(call)->sched, call->id.team_id, p->sbx_id, on_killed, p, &p->op);
    if (rc == SG_ENOTFOUND)
        not_found(call->req, p->sbx_id);
    else if (rc != 0)
        sg_http_error(call->req, 500, "Out of memory");
}

static void on_end_set(int err, const sg_sched_sandbox_t *sbx, void *data)
{
    pending_t *p = data;
    p->op = NULL;
    if (err != 0) {
        sched_error(p, err, p->sbx_id);
        return;
    }
    if (p->connect)
        sg_http_json(p->req, 200, created_json(sbx, state_of(p->call)->sched));
    else
        sg_http_json(p->req, 204, NULL);
}

/* timeout (set), refreshes (extend), connect (extend, answers the create shape). */
static void change_end(sg_api_call_t *call, const char *field, sg_sched_end_mode_t mode,
                       bool connect)
{
    h2o_req_t *req = call->req;
    pending_t *p = pending_new(call);
    if (!param_id(call, p->sbx_id, sizeof(p->sbx_id)))
        return;
    p->connect = connect;
    json_t *body = NULL;
    if (req->entity.base != NULL && req->entity.len > 0) {
        if ((body = sg_api_body_json(call)) == NULL)
            return;
        p->body = body;
    }
    if (timeout_from(req, body, field, &call->id, &p->timeout_s) != 0)
        return;
    long long end = sg_now_ms() + (long long)p->timeout_s * 1000;
    int rc = sg_sched_set_end(state_of(call)->sched, call->id.team_id, p->sbx_id, end, mode,
                              on_end_set, p, &p->op);
    if (rc == SG_ENOTFOUND)
        not_found(req, p->sbx_id);
    else if (rc != 0)
        sg_http_error(req, 500, "Out of memory");
}

static void on_timeout(sg_api_call_t *call)
{
    change_end(call, "timeout", SG_SCHED_END_SET, false);
}

static void on_refresh(sg_api_call_t *call)
{
    change_end(call, "duration", SG_SCHED_END_EXTEND, false);
}

static void on_connect(sg_api_call_t *call)
{
    change_end(call, "timeout", SG_SCHED_END_EXTEND, true);
}

static void on_metrics_done(int err, int status, json_t *body, void *data)
{
    pending_t *p = data;
    p->op = NULL;
    if (err == SG_ENOTFOUND || status == 404) {
        not_found(p->req, p->sbx_id);
        return;
    }
    if (err != 0 || status != 200 || !json_is_object(body)) {
        sg_http_error(p->req, 502, "The sandbox's node did not return metrics");
        return;
    }
    json_t *ts = json_object_get(body, "timestampMs");
    long long ms = json_is_integer(ts) ? (long long)json_integer_value(ts) : sg_now_ms();
    char iso[32];
    sg_format_rfc3339(ms, iso, sizeof(iso));
    json_t *m = json_pack("{s:s,s:I,s:O?,s:O?,s:O?,s:O?,s:O?,s:O?}", "timestamp", iso,
                          "timestampUnix", (json_int_t)(ms / 1000), "cpuUsedPct",
                          json_object_get(body, "cpuUsedPct"), "cpuCount",
                          json_object_get(body, "cpuCount"), "memUsed",
                          json_object_get(body, "memUsed"), "memTotal",
                          json_object_get(body, "memTotal"), "diskUsed",
                          json_object_get(body, "diskUsed"), "diskTotal",
                          json_object_get(body, "diskTotal"));
    json_t *arr = json_array();
    /* The node keeps no history, only the live sample: it is the answer when it falls in the
     * requested range. The range comes in whole seconds (the SDK rounds), so each bound
     * stands for its whole second either side. */
    bool in_range = (p->from_s == 0 || ms >= (p->from_s - 1) * 1000) &&
                    (p->to_s == 0 || ms < (p->to_s + 1) * 1000);
    if (m != NULL && in_range)
        json_array_append_new(arr, m);
    else if (m != NULL)
        json_decref(m);
    sg_http_json(p->req, 200, arr);
}

static void on_metrics(sg_api_call_t *call)
{
    pending_t *p = pending_new(call);
    if (!param_id(call, p->sbx_id, sizeof(p->sbx_id)))
        return;
    if (query_unix_s(call->req, "start", &p->from_s) != 0 ||
        query_unix_s(call->req, "end", &p->to_s) != 0) {
        sg_http_error(call->req, 400, "start and end must be unix timestamps in seconds");
        return;
    }
    int rc = sg_sched_metrics(state_of(call)->sched, call->id.team_id, p->sbx_id, on_metrics_done,
                              p, &p->op);
    if (rc == SG_ENOTFOUND)
        not_found(call->req, p->sbx_id);
    else if (rc != 0)
        sg_http_error(call->req, 500, "Out of memory");
}

static void on_unsupported_got(int err, const sg_sched_sandbox_t *sbx, void *data)
{
    pending_t *p = data;
    p->op = NULL;
    (void)sbx;
    if (err != 0) {
        sched_error(p, err, p->sbx_id);
        return;
    }
    char msg[128];
    snprintf(msg, sizeof(msg), "%s not supported by this server yet", p->unsupported);
    sg_http_error(p->req, 501, msg);
}

/* E2B operations this server does not have yet: 404 for an unknown sandbox as E2B answers, else a
 * 501 naming the feature (not the route miss's 404, which the SDK would report as "sandbox not
 * found" for a sandbox that is running). */
static void on_unsupported(sg_api_call_t *call)
{
    pending_t *p = pending_new(call);
    if (!param_id(call, p->sbx_id, sizeof(p->sbx_id)))
        return;
    h2o_iovec_t path = call->req->path_normalized;
    const char *what = "Pause and resume are";
    if (path.len >= 5 && memcmp(path.base + path.len - 5, "/fork", 5) == 0)
        what = "Forking sandboxes is";
    else if (path.len >= 10 && memcmp(path.base + path.len - 10, "/snapshots", 10) == 0)
        what = "Snapshots are";
    else if (path.len >= 8 && memcmp(path.base + path.len - 8, "/network", 8) == 0)
        what = "Changing the network rules of a running sandbox is";
    p->unsupported = what;
    int rc = sg_sched_get(state_of(call)->sched, call->id.team_id, p->sbx_id, on_unsupported_got, p,
                          &p->op);
    if (rc == SG_ENOTFOUND)
        not_found(call->req, p->sbx_id);
    else if (rc != 0)
        sg_http_error(call->req, 500, "Out of memory");
}

/* ---- templates ---- */

static void on_templates_rows(sg_pg_t *pg, PGresult *res, void *data)
{
    pending_t *p = data;
    p->q = NULL;
    if (p->call == NULL)
        return;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        sg_http_error(p->req, 503, "Template catalog unavailable, try again");
        return;
    }
    json_t *arr = json_array();
    for (int i = 0; i < PQntuples(res); i++) {
        const char *alias = PQgetvalue(res, i, 1);
        json_t *aliases = json_array();
        if (alias[0] != '\0')
            json_array_append_new(aliases, json_string(alias));
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:o,s:i,s:i,s:i,s:b,s:s,s:s}", "templateID",
                           PQgetvalue(res, i, 0), "buildID", PQgetvalue(res, i, 0), "aliases",
                           aliases, "cpuCount", atoi(PQgetvalue(res, i, 2)), "memoryMB",
                           atoi(PQgetvalue(res, i, 3)), "diskSizeMB", atoi(PQgetvalue(res, i, 4)),
                           "public", PQgetvalue(res, i, 5)[0] == 't', "envdVersion",
                           PQgetvalue(res, i, 6), "createdAt", PQgetvalue(res, i, 7)));
    }
    sg_http_json(p->req, 200, arr);
}

static void on_templates(sg_api_call_t *call)
{
    pending_t *p = pending_new(call);
    const char *params[] = {call->id.team_id};
    p->q = sg_pg_query(call->w->pg,
                       "SELECT id, COALESCE(alias, ''), vcpu, memory_mb, disk_mb, "
                       "team_id IS NULL, envd_version, "
                       "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') "
                       "FROM templates WHERE team_id IS NULL OR team_id = $1::uuid ORDER BY id",
                       1, params, on_templates_rows, p);
    if (p->q == NULL)
        sg_http_error(call->req, 500, "Out of memory");
}

/* ---- helpers ---- */

static pending_t *pending_new(sg_api_call_t *call)
{
    pending_t *p = h2o_mem_alloc_shared(&call->req->pool, sizeof(*p), on_pending_dispose);
    memset(p, 0, sizeof(*p));
    p->call = call;
    p->req = call->req;
    p->id = call->id;
    return p;
}

static void on_pending_dispose(void *ptr)
{
    pending_t *p = ptr;
    p->call = NULL;
    if (p->op != NULL)
        sg_sched_cancel(p->op);
    if (p->q != NULL)
        sg_pg_cancel(p->q);
    if (p->body != NULL)
        json_decref(p->body);
    p->op = NULL;
    p->q = NULL;
    p->body = NULL;
}

static bool param_id(sg_api_call_t *call, char *out, size_t cap)
{
    h2o_iovec_t v = call->params[0];
    size_t n = v.len < cap - 1 ? v.len : cap - 1;
    memcpy(out, v.base, n);
    out[n] = '\0';
    /* The SDK may send "<id>-<clientID>" (older sandbox ids); the id is what precedes '-'. */
    char *dash = strchr(out, '-');
    if (dash != NULL)
        *dash = '\0';
    if (v.len >= cap || !sg_sched_id_valid(out)) {
        char shown[80];
        snprintf(shown, sizeof(shown), "%.*s", (int)(v.len < 64 ? v.len : 64), v.base);
        not_found(call->req, shown);
        return false;
    }
    return true;
}

static void not_found(h2o_req_t *req, const char *id)
{
    char msg[160];
    snprintf(msg, sizeof(msg), "Sandbox \"%s\" doesn't exist or you don't have access to it", id);
    sg_http_error(req, 404, msg);
}

static void sched_error(pending_t *p, int err, const char *id)
{
    char msg[256];
    switch (err) {
    case SG_ENOTFOUND:
        not_found(p->req, id != NULL ? id : "");
        return;
    case SG_ELIMIT:
        snprintf(msg, sizeof(msg),
                 "You have reached the maximum number of concurrent sandboxes (%d) for your team",
                 p->id.max_concurrent);
        sg_http_error(p->req, 429, msg);
        return;
    case SG_ENOROOM:
        sg_http_error(p->req, 503, "No node has room for this sandbox right now, try again later");
        return;
    case SG_ETIMEOUT:
        sg_http_error(p->req, 504, "Timed out placing the sandbox");
        return;
    case SG_EUNAVAIL:
        sg_http_error(p->req, 503, "Scheduler state unavailable, try again");
        return;
    default:
        sg_http_error(p->req, 503, "No node could start the sandbox, try again later");
        return;
    }
}

static int cap_timeout_s(const sg_auth_identity_t *id)
{
    int cap = sg_server.cfg.sandbox.max_timeout_s;
    if (id->max_timeout_s > 0 && id->max_timeout_s < cap)
        cap = id->max_timeout_s;
    return cap;
}

/* Reads an optional integer number of seconds; default from config; above the team's cap is a
 * 400, as E2B answers. Sends the error itself and returns -1. */
static int timeout_from(h2o_req_t *req, json_t *body, const char *field, const sg_auth_identity_t *id,
                        int *out)
{
    json_t *t = body != NULL ? json_object_get(body, field) : NULL;
    int cap = cap_timeout_s(id);
    long long v = sg_server.cfg.sandbox.default_timeout_s;
    if (t != NULL && !json_is_null(t)) {
        if (!json_is_integer(t) || json_integer_value(t) < 0) {
            char msg[96];
            snprintf(msg, sizeof(msg), "%s must be a non-negative integer number of seconds", field);
            sg_http_error(req, 400, msg);
            return -1;
        }
        v = json_integer_value(t);
    }
    if (v > cap) {
        char msg[128];
        snprintf(msg, sizeof(msg), "Timeout cannot be greater than %d seconds (%d hours)", cap,
                 cap / 3600);
        sg_http_error(req, 400, msg);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static json_t *sandbox_json(const sg_sched_sandbox_t *x, bool detail, sg_sched_t *s)
{
    char started[32], end[32];
    sg_format_rfc3339(x->started_ms, started, sizeof(started));
    sg_format_rfc3339(x->end_ms, end, sizeof(end));
    json_t *j = json_pack("{s:s,s:s,s:s?,s:s,s:O,s:s,s:s,s:s,s:i,s:i,s:i,s:s}", "sandboxID", x->id,
                          "templateID", x->template_id, "alias",
                          x->alias[0] != '\0' ? x->alias : NULL, "clientID", x->client_id,
                          "metadata", x->metadata, "startedAt", started, "endAt", end, "state",
                          x->state, "cpuCount", x->vcpu, "memoryMB", x->mem_mb, "diskSizeMB",
                          x->disk_mb, "envdVersion", x->envd_version);
    if (j != NULL && detail) {
        json_object_set_new(j, "domain", json_string(sg_server.cfg.domain));
        if (x->secure && s != NULL) {
            char tok[65];
            sg_sched_token(s, "envd", x->id, tok);
            json_object_set_new(j, "envdAccessToken", json_string(tok));
        }
    }
    return j;
}

static json_t *created_json(const sg_sched_sandbox_t *x, sg_sched_t *s)
{
    char envd[65], traffic[65];
    sg_sched_token(s, "envd", x->id, envd);
    sg_sched_token(s, "traffic", x->id, traffic);
    return json_pack("{s:s,s:s,s:s,s:s,s:s?,s:s?,s:s,s:s?}", "sandboxID", x->id, "templateID",
                     x->template_id, "clientID", x->client_id, "envdVersion", x->envd_version,
                     "envdAccessToken", x->secure ? envd : NULL, "trafficAccessToken",
                     x->public_traffic ? NULL : traffic, "domain", sg_server.cfg.domain, "alias",
                     x->alias[0] != '\0' ? x->alias : NULL);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes (and '+' -> ' ') into out, NUL-terminated, truncated to cap. */
static size_t url_decode(const char *in, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < cap; i++) {
        if (in[i] == '%' && i + 2 < len && hexval(in[i + 1]) >= 0 && hexval(in[i + 2]) >= 0) {
            char c = (char)(hexval(in[i + 1]) * 16 + hexval(in[i + 2]));
            out[o++] = c == '\0' ? '?' : c;
            i += 2;
        } else {
            out[o++] = in[i] == '+' ? ' ' : in[i];
        }
    }
    out[o] = '\0';
    return o;
}

/* "2026-11-26T04:50:00.123Z" (fraction optional, Z or +hh:mm) to ms; -1 when malformed. */
/* A query parameter holding a non-negative integer (unix seconds); absent leaves *out at 0. */
static int query_unix_s(h2o_req_t *req, const char *name, long long *out)
{
    if (req->query_at == SIZE_MAX)
        return 0;
    const char *qs = req->path.base + req->query_at + 1;
    size_t qlen = req->path.len - req->query_at - 1, nlen = strlen(name);
    for (size_t i = 0; i < qlen;) {
        size_t j = i;
        while (j < qlen && qs[j] != '&')
            j++;
        if (j - i > nlen && memcmp(qs + i, name, nlen) == 0 && qs[i + nlen] == '=') {
            char v[24];
            size_t vlen = j - i - nlen - 1;
            if (vlen == 0 || vlen >= sizeof(v))
                return SG_EINVAL;
            memcpy(v, qs + i + nlen + 1, vlen);
            v[vlen] = '\0';
            char *end;
            errno = 0;
            long long x = strtoll(v, &end, 10);
            if (*end != '\0' || errno != 0 || x < 0 || x > 32503680000LL) /* year 3000 */
                return SG_EINVAL;
            *out = x;
        }
        i = j + 1;
    }
    return 0;
}

static long long parse_rfc3339(const char *s)
{
    struct tm tm = {0};
    int used = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &used) != 6)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    long long ms = (long long)timegm(&tm) * 1000;
    const char *p = s + used;
    if (*p == '.') {
        long long frac = 0, scale = 1000;
        for (p++; *p >= '0' && *p <= '9'; p++) {
            if (scale > 1) {
                scale /= 10;
                frac += (*p - '0') * scale;
            }
        }
        ms += frac;
    }
    if (*p == 'Z' && p[1] == '\0')
        return ms;
    int hh, mm;
    if ((*p == '+' || *p == '-') && sscanf(p + 1, "%2d:%2d", &hh, &mm) == 2) {
        long long off = ((long long)hh * 60 + mm) * 60000;
        return *p == '+' ? ms - off : ms + off;
    }
    return -1;
}

const sg_route_t sg__routes_sandboxes[] = {
    {"POST", "/sandboxes", SG_ROUTE_KEY, on_create},
    {"POST", "/v2/sandboxes", SG_ROUTE_KEY, on_create},
    {"GET", "/sandboxes", SG_ROUTE_KEY, on_list},
    {"GET", "/v2/sandboxes", SG_ROUTE_KEY, on_list},
    {"GET", "/sandboxes/{id}", SG_ROUTE_KEY, on_get},
    {"DELETE", "/sandboxes/{id}", SG_ROUTE_KEY, on_kill},
    {"POST", "/sandboxes/{id}/timeout", SG_ROUTE_KEY, on_timeout},
    {"POST", "/sandboxes/{id}/refreshes", SG_ROUTE_KEY, on_refresh},
    {"POST", "/sandboxes/{id}/connect", SG_ROUTE_KEY, on_connect},
    {"POST", "/v2/sandboxes/{id}/connect", SG_ROUTE_KEY, on_connect},
    {"GET", "/sandboxes/{id}/metrics", SG_ROUTE_KEY, on_metrics},
    {"POST", "/sandboxes/{id}/pause", SG_ROUTE_KEY, on_unsupported},
    {"POST", "/sandboxes/{id}/resume", SG_ROUTE_KEY, on_unsupported},
    {"POST", "/sandboxes/{id}/fork", SG_ROUTE_KEY, on_unsupported},
    {"POST", "/sandboxes/{id}/snapshots", SG_ROUTE_KEY, on_unsupported},
    {"PUT", "/sandboxes/{id}/network", SG_ROUTE_KEY, on_unsupported},
    {"GET", "/templates", SG_ROUTE_KEY, on_templates},
    {NULL},
};
