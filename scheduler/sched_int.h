/* Private to scheduler/: shared between its .c files, never included elsewhere. */
#ifndef SG_SCHED_INT_H
#define SG_SCHED_INT_H

#include <hiredis/hiredis.h>
#include "scheduler/sched.h"

/* ---- Lua scripts (scripts.c) ---- */
typedef enum {
    SG__SCRIPT_RESERVE,
    SG__SCRIPT_CONFIRM,
    SG__SCRIPT_RELEASE,
    SG__SCRIPT_SWEEP,
    SG__SCRIPT_REMOVE,
    SG__SCRIPT_REAP,
    SG__SCRIPT_SETEND,
    SG__SCRIPT_LIST,
    SG__SCRIPT_RECONCILE,
    SG__SCRIPT_NODEFLAG,
    SG__SCRIPT_COUNT
} sg__script_t;

typedef struct sg__eval sg__eval_t;
/* EVALSHA, falling back to EVAL on NOSCRIPT. Same contract as sg_redis_command. keys/args are
 * copied. Returns NULL on allocation failure. */
sg__eval_t *sg__eval(sg_redis_t *r, sg__script_t script, int nkeys, const char **keys, int nargs,
                     const char **args, sg_redis_cb cb, void *data);
void sg__eval_cancel(sg__eval_t *e);
const char *sg__script_source(sg__script_t script);

/* ---- node HTTP client (nodecli.c) ---- */
typedef struct sg_nodecli sg_nodecli_t;
typedef struct sg_nodecli_req sg_nodecli_req_t;
/* err 0 with status and body (body NUL-terminated, may be empty), or SG_ETIMEOUT / SG_EIO. */
typedef void (*sg_nodecli_cb)(int err, int status, const char *body, size_t len, void *data);
sg_nodecli_t *sg_nodecli_new(uv_loop_t *loop, const char *token);
void sg_nodecli_free(sg_nodecli_t *c);
/* hostport "host:port" (IPv4/IPv6 literal or name). Returns NULL on allocation failure. */
sg_nodecli_req_t *sg_nodecli_request(sg_nodecli_t *c, const char *hostport, const char *method,
                                     const char *path, const char *body, size_t len,
                                     int timeout_ms, sg_nodecli_cb cb, void *data);
void sg_nodecli_cancel(sg_nodecli_req_t *req);

/* ---- node view and placement (view.c) ---- */
typedef struct {
    char id[72];
    char api[128];
    char proxy[128];
    bool ready;       /* status == ready */
    bool cordoned;
    long long heartbeat_ms;
    int cap_vcpu, cap_mem, cap_n;
    int alloc_vcpu, alloc_mem, alloc_n;
    int used_cpu_pct, used_mem_mb;
    char *templates;  /* ",a,b," for token search; heap */
    json_t *labels;   /* object or NULL */
    long long suspect_until_ms;
} sg__node_t;

typedef struct {
    sg__node_t *nodes;
    size_t n;
} sg__view_t;

typedef struct {
    int vcpu, mem_mb;
    const char *template_id;
    json_t *labels;
    double overcommit;
    int down_after_ms;
    sg_sched_policy_t policy;
} sg__fit_req_t;

void sg__view_clear(sg__view_t *v);
sg__node_t *sg__view_find(sg__view_t *v, const char *id);
/* Whether node can take the request now (status, cordon, heartbeat, suspect, template, labels,
 * cpu with overcommit, memory, count). */
bool sg__node_fits(const sg__node_t *n, const sg__fit_req_t *r, long long now_ms);
bool sg__node_live(const sg__node_t *n, int down_after_ms, long long now_ms);
/* Fills out[0..k) with the indices of the best fitting nodes, best first; returns how many. */
size_t sg__place(const sg__view_t *v, const sg__fit_req_t *r, long long now_ms, size_t *out,
                 size_t k);
/* Fills a node from HMGET replies of the node hash (fields as in view.c) and alloc hash. */
int sg__node_from_replies(sg__node_t *n, const char *id, struct redisReply *node,
                          struct redisReply *alloc);

#endif
