/*
 * scheduler: placement of sandboxes on nodes, the sandbox catalog and lifetimes, in Redis.
 *
 * One sg_sched_t per worker loop. It keeps a cached view of the nodes (refreshed from Redis every
 * refresh_ms), places a create on the best fitting node with one atomic Lua reservation (node fit
 * AND team concurrency), calls the node API (docs/node-api.md) asynchronously, and confirms the
 * sandbox into the catalog. Instances created with `background` also run the gateway-wide duties:
 * the reaper (expired sandboxes), the reservation sweep and reconciliation with node heartbeats.
 * Any number of gateways may run them at once: every claim is one Lua script.
 *
 * Redis keys (all under the hash tag {sg}, see docs/node-api.md):
 *   {sg}:nodes zset, {sg}:node:<node> hash      written by nodes (gateways write `cordoned` only)
 *   {sg}:alloc:<node>   hash vcpu/mem/n         capacity held by reservations and sandboxes
 *   {sg}:team:<team>    zset id -> created ms   the team's reserved and running sandboxes
 *   {sg}:resv hash id -> "node\tteam\tvcpu\tmem", {sg}:resvexp zset id -> deadline ms
 *   {sg}:sbx:<id>       hash                    the catalog entry routing reads
 *   {sg}:expiry         zset id -> end ms       {sg}:nodesbx:<node> set of ids
 *
 * Threading: every function takes the sg_sched_t of the calling loop and must run on that loop.
 * Async contract: a function returning an op handle (or 0) runs its callback exactly once, never
 * from inside the call; a NULL handle (or error) means the callback never runs. Cancelling an op
 * stops the callback only: work already started (a node create) still completes and is recorded.
 */
#ifndef SG_SCHED_H
#define SG_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <jansson.h>
#include "common/common.h"

typedef struct sg_sched sg_sched_t;
typedef struct sg_sched_op sg_sched_op_t;

typedef enum {
    SG_SCHED_LEAST_ALLOCATED = 0,
    SG_SCHED_MOST_ALLOCATED,
    SG_SCHED_RANDOM,
} sg_sched_policy_t;

typedef void (*sg_sched_event_cb)(const char *kind, const char *sandbox_id, const char *team_id,
                                  const char *node_id, const char *detail, void *data);

typedef struct {
    double cpu_overcommit;     /* >= 1.0 */
    sg_sched_policy_t policy;
    int max_attempts;          /* nodes tried per create, 1..10 */
    int node_down_after_ms;    /* heartbeat age after which a node is down */
    int reservation_ttl_ms;    /* raised to create_timeout_ms + 5 s when lower */
    int create_timeout_ms;     /* whole create, including the node's start */
    int refresh_ms;            /* node view refresh, default 250 */
    int reaper_ms;             /* reaper tick, default 200 */
    int node_timeout_ms;       /* node API calls other than create, default 5000 */
    const char *node_token;    /* copied */
    const char *token_secret;  /* copied */
    bool background;           /* run reaper, reservation sweep and reconciliation here */
    sg_sched_event_cb on_event; /* audit: kinds "create", "kill", "expire", "lost"; may be NULL.
                                   Called on the loop; must not block. */
    void *event_data;
} sg_sched_config_t;

/* One sandbox as the catalog holds it. Strings are NUL-terminated copies; metadata is owned by
 * the struct (a JSON object, never NULL in results) and released by sg_sched_sandbox_clear(). */
typedef struct {
    char id[64];
    char team[72];
    char node[72];
    char template_id[72];
    char alias[72];
    char client_id[72];
    char envd_version[32];
    char address[64];
    char state[16]; /* "running", or "lost" when its node is down or gone */
    int vcpu, mem_mb, disk_mb;
    long long started_ms, end_ms;
    bool secure;           /* envd demands the envd access token */
    bool public_traffic;   /* false: other ports demand the traffic access token */
    json_t *metadata;
} sg_sched_sandbox_t;

typedef struct {
    const char *team_id;
    int team_max_concurrent;   /* 0 = unlimited */
    const char *template_id;
    const char *alias;         /* may be NULL */
    int vcpu, mem_mb, disk_mb;
    long long end_ms;          /* absolute end time, computed by the caller */
    json_t *env_vars;          /* object or NULL; borrowed for the duration of the call only */
    json_t *metadata;          /* object or NULL; borrowed likewise */
    json_t *labels;            /* node label selector (object of strings) or NULL */
    bool secure;
    bool allow_internet;
    bool public_traffic;
} sg_sched_create_req_t;

/* err: 0; SG_ELIMIT team concurrency; SG_ENOROOM no node fits; SG_ETIMEOUT the create took too
 * long; SG_EUNAVAIL Redis unavailable; SG_EIO every node tried failed. sbx is valid during the
 * call only. */
typedef void (*sg_sched_create_cb)(int err, const sg_sched_sandbox_t *sbx, void *data);
/* err: 0, SG_ENOTFOUND (unknown or another team's), SG_EUNAVAIL. */
typedef void (*sg_sched_sbx_cb)(int err, const sg_sched_sandbox_t *sbx, void *data);
typedef void (*sg_sched_done_cb)(int err, void *data);
/* sbxs: n entries valid during the call; next: continuation token or NULL. */
typedef void (*sg_sched_list_cb)(int err, const sg_sched_sandbox_t *sbxs, size_t n,
                                 const char *next, void *data);
/* A node's answer passed through: status and JSON body (NULL when none). */
typedef void (*sg_sched_json_cb)(int err, int status, json_t *body, void *data);

typedef struct {
    const char *team_id;
    json_t *metadata;          /* object of required key/value pairs, or NULL */
    bool want_running, want_lost; /* states to return; both false = running only */
    const char *template_id;   /* or NULL */
    long long started_after_ms; /* 0 = any */
    bool oldest_first;         /* default newest first */
    int limit;                 /* 1..10000 (the API allows 1..100) */
    const char *next;          /* continuation token from a previous page, or NULL */
} sg_sched_list_req_t;

typedef enum { SG_SCHED_END_SET, SG_SCHED_END_EXTEND } sg_sched_end_mode_t;

/* Creates the scheduler of a loop; NULL on allocation failure. redis is borrowed (same loop). */
sg_sched_t *sg_sched_new(uv_loop_t *loop, sg_redis_t *redis, const sg_sched_config_t *cfg);
/* Stops timers, cancels callbacks; memory is released after the loop runs close callbacks. */
void sg_sched_free(sg_sched_t *s);

sg_sched_op_t *sg_sched_create(sg_sched_t *s, const sg_sched_create_req_t *req,
                               sg_sched_create_cb cb, void *data);
/* Only the callback is cancelled (see above). */
void sg_sched_cancel(sg_sched_op_t *op);

/* Each returns 0 (callback will run) or a negative SG_E* (it will not). team_id NULL = any team
 * (admin). */
int sg_sched_get(sg_sched_t *s, const char *team_id, const char *id, sg_sched_sbx_cb cb, void *data,
                 sg_sched_op_t **opp);
int sg_sched_list(sg_sched_t *s, const sg_sched_list_req_t *req, sg_sched_list_cb cb, void *data,
                  sg_sched_op_t **opp);
int sg_sched_kill(sg_sched_t *s, const char *team_id, const char *id, sg_sched_done_cb cb,
                  void *data, sg_sched_op_t **opp);
/* SET: end = end_ms; EXTEND: end = max(end, end_ms). Also tells the node. Returns the sandbox. */
int sg_sched_set_end(sg_sched_t *s, const char *team_id, const char *id, long long end_ms,
                     sg_sched_end_mode_t mode, sg_sched_sbx_cb cb, void *data,
                     sg_sched_op_t **opp);
int sg_sched_metrics(sg_sched_t *s, const char *team_id, const char *id, sg_sched_json_cb cb,
                     void *data, sg_sched_op_t **opp);

/* Admin. nodes: a JSON array (owned by the callee, valid during the call) of every registered node
 * with capacity, allocation, status and heartbeat. action: "cordon", "uncordon", "drain". */
int sg_sched_nodes(sg_sched_t *s, sg_sched_json_cb cb, void *data, sg_sched_op_t **opp);
int sg_sched_node_action(sg_sched_t *s, const char *node_id, const char *action,
                         sg_sched_done_cb cb, void *data, sg_sched_op_t **opp);

/* Tokens: lower-case hex HMAC-SHA256 of "<kind>:<id>" under token_secret; out has 65 bytes.
 * kind: "envd" or "traffic". Verify with sg_ct_streq against a freshly computed token. */
void sg_sched_token(const sg_sched_t *s, const char *kind, const char *id, char out[65]);
void sg_sched_token_with(const char *secret, const char *kind, const char *id, char out[65]);
/* A fresh sandbox id: 20 characters [a-z0-9]. Returns 0 or SG_EIO. */
int sg_sched_new_id(char out[21]);
/* Valid sandbox id syntax ([a-z0-9]{1,63}). */
bool sg_sched_id_valid(const char *id);
void sg_sched_sandbox_clear(sg_sched_sandbox_t *sbx);
/* Number of nodes in the cached view (all, and those that can take work now). */
void sg_sched_view_counts(const sg_sched_t *s, size_t *all, size_t *ready);
/* Forces a view refresh now (tests); cb runs once it is in place. */
int sg_sched_refresh(sg_sched_t *s, sg_sched_done_cb cb, void *data);

#endif
