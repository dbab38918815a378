/*
 * Private to gateway/: the server's frozen global state, the per-thread worker, and the route
 * table that API files (api_*.c) contribute to.
 *
 * Threading: sg_server is written once before the workers start and only read afterwards. A
 * worker owns its loop, h2o context, PostgreSQL pool, Redis client, auth cache and scheduler
 * state; nothing in a worker is touched by another thread except the metrics counters (atomic).
 */
#ifndef SG_GATEWAY_INTERNAL_H
#define SG_GATEWAY_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>
#include <h2o.h>
#include <jansson.h>
#include "common/common.h"
#include "config/config.h"
#include "auth/auth.h"

typedef struct sg_worker sg_worker_t;
typedef struct sg__sbx_worker sg__sbx_worker_t; /* api_sandboxes.c: scheduler + template cache */
typedef struct sg__edge_worker sg__edge_worker_t; /* edge.c: route cache, proxy client context */
struct sg_sched;

/* ---- routes ---------------------------------------------------------------------------------- */

typedef enum { SG_ROUTE_PUBLIC, SG_ROUTE_KEY, SG_ROUTE_ADMIN } sg_route_auth_t;

#define SG_API_MAX_PARAMS 2

/* One authenticated API request. Lives in the request's pool. */
typedef struct {
    h2o_req_t *req;
    sg_worker_t *w;
    sg_auth_identity_t id; /* valid for SG_ROUTE_KEY routes */
    h2o_iovec_t params[SG_API_MAX_PARAMS]; /* "{id}" segments of the pattern, in order */
    size_t nparams;
    sg_auth_pending_t *pending; /* auth look-up in flight */
    bool gone;                  /* the request was disposed (client went away) */
} sg_api_call_t;

typedef void (*sg_api_fn)(sg_api_call_t *call);

typedef struct {
    const char *method;  /* "GET", "POST", ... */
    const char *pattern; /* "/sandboxes/{id}/timeout"; {x} matches one non-empty segment */
    sg_route_auth_t auth;
    sg_api_fn fn;
} sg_route_t;

/* Route tables contributed by api_*.c, each terminated by {NULL}. api.c lists them. */
extern const sg_route_t sg__routes_teams[];
extern const sg_route_t sg__routes_sandboxes[];
extern const sg_route_t sg__routes_admin[];

/* ---- workers and server ---------------------------------------------------------------------- */

#define SG_METRIC_SLOTS 256
#define SG_METRIC_BUCKETS 14

typedef struct {
    _Atomic int used;
    int route;  /* index into the flat route list, or a special label */
    int status;
    _Atomic uint64_t count, sum_us;
    _Atomic uint64_t buckets[SG_METRIC_BUCKETS];
} sg_metric_slot_t;

struct sg_worker {
    int index;
    pthread_t thread;
    uv_loop_t loop;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx[SG_CONFIG_MAX_LISTENERS];
    h2o_accept_ctx_t reject_ctx[SG_CONFIG_MAX_LISTENERS]; /* over max_connections_per_ip: 429 */
    uv_tcp_t listeners[SG_CONFIG_MAX_LISTENERS];
    size_t nlisteners;
    uv_async_t wake;
    uv_async_t tls_wake;            /* server.c: a certificate reload was published */
    uv_prepare_t log_flush;         /* server.c: writes this thread's batched log lines */
    _Atomic unsigned tls_gen_seen;  /* last reload generation this worker switched to */
    uv_timer_t drain;
    long long drain_deadline_ms, quiet_since_ms;
    sg_pg_t *pg;
    sg_redis_t *redis;
    sg_auth_t *auth;
    sg__sbx_worker_t *sbx; /* api_sandboxes.c */
    sg__edge_worker_t *edge; /* edge.c */
    uint64_t rng;
    int inflight;
    bool stopping;
    sg_metric_slot_t metrics[SG_METRIC_SLOTS];
};

typedef struct {
    sg_gateway_config_t cfg;
    h2o_globalconf_t h2o;
    h2o_hostconf_t *hosts_main[2];   /* {the gateway's host, NULL}: every normal connection */
    h2o_hostconf_t *hosts_reject[2]; /* {the connection-limit host, NULL}: answers only 429 */
    sg_worker_t *workers;
    int nworkers;
    long long started_ms;
} sg_server_t;

extern sg_server_t sg_server;

/* The worker that runs req (from its h2o context). */
sg_worker_t *sg_worker_of(h2o_req_t *req);
/* The client's address as text into buf (>= 48 bytes); "" when unknown. */
const char *sg_client_addr(h2o_req_t *req, char *buf, size_t cap);

/* http.c: the root handler (request id, access log, metrics, health/ready/metrics, API). */
void sg__http_register(h2o_pathconf_t *pathconf);
/* Records the team id / route index of a request for its access log line and metrics. */
void sg_gateway_note_team(h2o_req_t *req, const char *team_id);
void sg_gateway_note_route(h2o_req_t *req, int route);
/* api.c: dispatches an API request; returns -1 when no route matched the path at all. */
int sg__api_dispatch(h2o_req_t *req);
/* Route label for metrics: index of the matched route in the flat list, or -1. */
int sg__api_route_count(void);
const char *sg__api_route_label(int idx);
/* Reads the request body as JSON (objects only). On failure sends the 400/413/415 error itself
 * and returns NULL. The result is owned by the caller (json_decref). */
json_t *sg_api_body_json(sg_api_call_t *call);

/* api_sandboxes.c: the worker's scheduler (worker 0 also runs the reaper, reservation sweep and
 * reconciliation). init after the worker's Redis and PostgreSQL clients exist; 0 or SG_ENOMEM. */
int sg__sandboxes_worker_init(sg_worker_t *w);
void sg__sandboxes_worker_fini(sg_worker_t *w);
struct sg_sched *sg__sandboxes_sched(sg_worker_t *w);
/* api_admin.c: `sandgate node list|cordon|uncordon|drain` (blocking; not on a loop). */
int sg__node_cli(const sg_gateway_config_t *cfg, int argc, char **argv, FILE *out, FILE *err);

/* edge.c: sandbox traffic (routing/, the catalog look-up and the node proxy).
 * sg__edge_handle returns -1 when the request is for the API (the caller continues), else 0:
 * the request was answered or handed to the proxy. Call it before the gateway's own paths
 * (/health, ...): those belong to the sandbox on sandbox hosts. It applies the rate limit itself.
 * init after the worker's h2o context and Redis client exist; 0 or SG_ENOMEM. sg__edge_forget drops a sandbox from this worker's route cache
 * and, with publish, tells every gateway's workers (kill, expiry). Loop thread only. */
int sg__edge_worker_init(sg_worker_t *w);
void sg__edge_worker_fini(sg_worker_t *w);
int sg__edge_handle(h2o_req_t *req);
void sg__edge_forget(sg_worker_t *w, const char *sandbox_id, bool publish);
/* Route cache counters of one worker; callable from any thread (relaxed atomics). */
void sg__edge_stats(sg_worker_t *w, uint64_t *hits, uint64_t *misses);

/* edge_proxy.c: proxies req (headers already prepared by edge.c) to the node proxy at host:port
 * with a streaming, backpressured generator; answers 502 JSON itself when the node cannot be
 * reached. connect_timeout bounds the connect, io_timeout every wait after it. Not for
 * Upgrade requests. */
void sg__edge_proxy(h2o_req_t *req, h2o_timeout_t *connect_timeout, h2o_timeout_t *io_timeout,
                    h2o_iovec_t host, uint16_t port);

/* ratelimit.c: the per-address request rate limit. Returns 0 (go on) or -1 after answering 429
 * with Retry-After. Any worker thread. */
int sg__ratelimit_check(h2o_req_t *req);

/* connlimit.c: open connections per client address, shared by every worker. acquire counts one
 * more connection of sa's address and stores the new count in *count; it returns the slot to pass
 * to release exactly once when the connection closes, or -1 (count 0) when the address is not
 * tracked (not IP, or its table bucket is full: fails open). Any thread. */
int sg__connlimit_acquire(const struct sockaddr *sa, int *count);
void sg__connlimit_release(int slot);
/* Counts one connection refused for being over the limit; the totals for /metrics. Any thread. */
void sg__connlimit_note_over(void);
void sg__connlimit_stats(uint64_t *over_limit, uint64_t *untracked);
uint64_t sg__connlimit_open(void);
/* The same for requests in flight to one sandbox (http.max_upstream_per_sandbox). */
int sg__upstream_acquire(const char *sandbox_id, int *count);
void sg__upstream_release(int slot);
void sg__upstream_note_over(void);
uint64_t sg__upstream_over_total(void);

/* metrics.c */
void sg__metrics_observe(sg_worker_t *w, int route, int status, uint64_t us);
void sg__metrics_render(h2o_req_t *req);

#endif
