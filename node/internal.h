/*
 * node/internal.h: types and functions shared between the files of the node module only.
 *
 * One sg__node_t per agent (one loop, one thread). Sandboxes live in a linked list owned by the
 * node; a sandbox is freed only by sg__sbx_free after its runtime, network and files are gone.
 */
#ifndef SG_NODE_INTERNAL_H
#define SG_NODE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include <jansson.h>
#include "config/config.h"

#define SG_NODE_VERSION "0.1.0"
#define SG_ENVD_PORT 49983

struct st_h2o_req_t;
typedef struct sg__node sg__node_t;
typedef struct sg__sbx sg__sbx_t;

/* WARMING/WARM: a pre-created container of the warm pool (n->warm), not yet any sandbox. */
typedef enum {
    SBX_CREATING,
    SBX_RUNNING,
    SBX_STOPPED,
    SBX_DELETING,
    SBX_WARMING,
    SBX_WARM
} sg__sbx_state_t;

/* ---- validated create request (pure, unit-tested) -------------------------------------------- */
typedef struct {
    char id[64];
    char team[128];
    char tmpl[65];
    int vcpu, memory_mb, disk_mb;
    long long end_ms;
    char *token;     /* heap, NULL when envdAccessToken is null */
    json_t *env;     /* object of strings (owned reference) */
    json_t *metadata;
    bool internet;
} sg__create_req_t;

/* Parses and validates a create body. 0, or SG_EINVAL with a message in err. On success the
 * caller frees with sg__create_req_clear. */
int sg__create_req_parse(const char *body, size_t len, sg__create_req_t *out, char *err,
                         size_t errlen);
void sg__create_req_clear(sg__create_req_t *r);
bool sg__valid_sandbox_id(const char *s, size_t len);
bool sg__valid_template_id(const char *s, size_t len);

/* ---- address allocation (pure, unit-tested) -------------------------------------------------- */
typedef struct {
    uint32_t base;   /* network address, host order */
    uint32_t prefix; /* prefix length */
    uint32_t size;   /* number of host slots (index 2 .. size-2 usable; 1 = bridge) */
    uint8_t *used;   /* bitmap, size bits */
    uint32_t next;   /* next index to try (round robin so freed addresses cool down) */
} sg__addrpool_t;

int sg__addrpool_init(sg__addrpool_t *p, const char *cidr);
void sg__addrpool_free(sg__addrpool_t *p);
/* Returns an index >= 2, or SG_ENOROOM. */
int sg__addrpool_alloc(sg__addrpool_t *p);
/* Marks idx used (rediscovery); SG_EEXISTS when already used, SG_EINVAL out of range. */
int sg__addrpool_take(sg__addrpool_t *p, uint32_t idx);
void sg__addrpool_release(sg__addrpool_t *p, uint32_t idx);
uint32_t sg__addrpool_addr(const sg__addrpool_t *p, uint32_t idx); /* host order */
/* Index of a dotted address inside the pool, or SG_EINVAL. */
int sg__addrpool_index(const sg__addrpool_t *p, const char *dotted);

/* ---- proxy request head (pure, unit-tested) -------------------------------------------------- */
typedef struct {
    int status;          /* 0 = complete and valid; else the HTTP error status to answer */
    const char *message; /* for status != 0 */
    char sandbox[64];
    int port;
    bool has_token;
    bool token_ok;
    bool upgrade;
    bool health;         /* GET /health without sandbox headers */
    size_t head_len;     /* bytes of the request head in the input */
    char *out;           /* rewritten head (heap), out_len bytes */
    size_t out_len;
    /* Keep-alive: the client's connection may carry another request after this one when it is
     * HTTP/1.1, not an upgrade, not "Connection: close", and its body is framed by one valid
     * Content-Length (or has none: body_len 0). Transfer-Encoding: no keep-alive. */
    bool keepalive;
    long long body_len;  /* request body bytes after the head (valid when keepalive) */
    bool is_head;        /* HEAD: the response has no body whatever its headers say */
} sg__proxy_head_t;

/* Parses buf[0..len). Returns 1 complete (see out->status), 0 incomplete (need more), or -1 on
 * a malformed head (out->status = 400). out->out is malloc'ed when status == 0. */
int sg__proxy_parse_head(const char *buf, size_t len, const char *token, sg__proxy_head_t *out);

/* Rewrites an upstream response head so the client never reuses the connection (the next request
 * on it could be for another sandbox): Connection/Keep-Alive dropped, "Connection: close" added,
 * except for 101 and other 1xx heads, which pass unchanged. Returns 1 (out malloc'ed, head_len =
 * bytes of the head in buf), 0 incomplete, -1 malformed. */
int sg__proxy_rewrite_response(const char *buf, size_t len, char **out, size_t *out_len,
                               size_t *head_len, int *status);
/* The same for a client connection that may stay open (keepalive): a final response whose end the
 * client can see without a close (HEAD, 204, 304, one valid Content-Length) gets no "Connection:
 * close" and *body_len = its body bytes (0 for bodiless ones); any other gets "Connection: close"
 * and *body_len = -1. keepalive false behaves as sg__proxy_rewrite_response (*body_len = -1). */
int sg__proxy_rewrite_response_ka(const char *buf, size_t len, bool keepalive, bool is_head,
                                  char **out, size_t *out_len, size_t *head_len, int *status,
                                  long long *body_len);

/* Whether a (rewritten) final response head announces a chunked body: Transfer-Encoding whose
 * codings include "chunked". */
bool sg__proxy_head_chunked(const char *head, size_t len);
/* Whether an upstream's final response head (as received) leaves its connection open for another
 * request: HTTP/1.1 without "Connection: close". */
bool sg__proxy_response_keepalive(const char *buf, size_t len);

/* Follows a chunked response body as the proxy relays it, so that an upstream that goes away
 * mid-body (a killed sandbox) can be told from one that finished. */
typedef struct {
    int state;        /* CT_* in parse.c; 0 = at a chunk boundary, before the size */
    int digits;       /* hex digits of the size line so far */
    uint64_t left;    /* size line: the size so far; data: bytes of the chunk still to come */
} sg__chunk_track_t;

/* Feeds relayed body bytes. Returns 1 once the last chunk and trailers have passed (bytes after
 * it are ignored), 0 while the body goes on, -1 on a body that is not valid chunked framing. */
int sg__chunk_track(sg__chunk_track_t *t, const char *buf, size_t len);

/* The bytes to send downstream before closing on an upstream that ended inside the body, so that
 * an HTTP/1.1 client stands inside a chunk's data when the connection closes and reports a
 * truncated body (h2o's client, like browsers, takes a close at a chunk boundary for the end of
 * the body). Returns a static string, "" when the framing state already does that or cannot. */
const char *sg__chunk_abort_bytes(const sg__chunk_track_t *t);

/* ---- runtime (runtime_runc.c) ---------------------------------------------------------------- */
typedef void (*sg__rt_cb)(void *data, int status, const char *errmsg);

typedef struct {
    uint64_t cpu_ns;    /* cumulative CPU time */
    uint64_t mem_bytes; /* current memory usage */
    uint64_t mem_limit;
} sg__rt_stats_t;

typedef struct sg__runtime {
    const char *name;
    /* create: prepares the container from a bundle; start: runs its first process. kill: sends
     * signal; delete: forced removal. Each completes through cb exactly once (never inside the
     * call) unless it returns an error. background: nobody waits (the warm pool): it runs only
     * when no other operation is queued. */
    int (*create)(struct sg__runtime *rt, const char *id, const char *bundle, const char *pidfile,
                  int log_fd, bool background, sg__rt_cb cb, void *data);
    int (*start)(struct sg__runtime *rt, const char *id, sg__rt_cb cb, void *data);
    /* create + start in one step (one runtime process instead of two); the first process runs
     * before the caller has touched the container (its network comes up after it starts). */
    int (*run)(struct sg__runtime *rt, const char *id, const char *bundle, const char *pidfile,
               int log_fd, bool background, sg__rt_cb cb, void *data);
    int (*kill)(struct sg__runtime *rt, const char *id, int sig, sg__rt_cb cb, void *data);
    int (*delete)(struct sg__runtime *rt, const char *id, sg__rt_cb cb, void *data);
    /* Synchronous: reads the container's cgroup files (small procfs/sysfs reads). */
    int (*stats)(struct sg__runtime *rt, const char *cgroup, sg__rt_stats_t *out);
    /* Synchronous, start-up only (before the loop runs): 1 running, 2 created (first process not
     * started), 0 gone/stopped. */
    int (*probe)(struct sg__runtime *rt, const char *id, int *pid);
    /* Synchronous (thread pool), for handing a running warm container to a sandbox. limit: sets
     * its CPU and memory limits; set_hostname: names its host (UTS namespace of init pid). NULL
     * when the runtime cannot (no warm pool then). */
    int (*limit)(struct sg__runtime *rt, const char *cgroup, int vcpu, int memory_mb);
    int (*set_hostname)(struct sg__runtime *rt, int pid, const char *hostname);
    /* Counted spawned children, so the reaper leaves them to libuv. */
    bool (*owns_pid)(struct sg__runtime *rt, int pid);
    void *priv;
} sg__runtime_t;

sg__runtime_t *sg__runtime_runc_new(uv_loop_t *loop, const char *runc_path, const char *root);
void sg__runtime_free(sg__runtime_t *rt);

/* ---- network (net.c) ------------------------------------------------------------------------- */
/* Start-up (blocking, before the loop): bridge + address, forwarding, nftables ruleset. */
int sg__net_setup(sg__node_t *n);
/* Moves a veth into the container netns of pid and configures it (netlink; fast syscalls). */
int sg__net_attach(sg__node_t *n, sg__sbx_t *s, int pid);
/* Removes the host side veth (if still present). */
void sg__net_detach(sg__node_t *n, sg__sbx_t *s);
/* Adds/removes the sandbox's address to the nft set allowing egress (async nft). */
int sg__net_set_internet(sg__node_t *n, sg__sbx_t *s, bool on, sg__rt_cb cb, void *data);
void sg__net_teardown(sg__node_t *n);

/* ---- OCI bundle (oci.c) ---------------------------------------------------------------------- */
/* config.json for s (new reference): sizes, cgroup s->cid, hostname s->id; nothing else of the
 * request (that comes in the boot file). */
json_t *sg__oci_config(const sg__node_t *n, const sg__sbx_t *s);
/* Writes /etc/hostname, /etc/hosts, resolv.conf and (when boot != NULL) the 0400 boot file
 * /run/sandgate/boot.json under root (an upper layer, or a mounted root not yet started). */
int sg__oci_write_files(const sg__sbx_t *s, const char *root, const char *boot);

/* ---- sandbox ----------------------------------------------------------------------------------- */
struct sg__sbx {
    sg__sbx_t *next;
    sg__node_t *node;
    char id[64];
    char cid[64]; /* container: runtime id, cgroup and folder name; = id unless it came warm */
    char team[128];
    char tmpl[65];
    int vcpu, memory_mb, disk_mb;
    long long started_ms, end_ms;
    bool internet;
    sg__sbx_state_t state;
    uint32_t addr_idx;
    char addr[16];
    char veth[16];
    int pid;
    char *dir; /* <state>/sandboxes/<cid> */
    bool warm; /* listed in n->warm, not n->sandboxes */
    char init_key[33]; /* warm: the key its waiting envd takes POST /init with */
    bool mounted;
    bool delete_requested; /* DELETE (or expiry) arrived while creating */
    bool nft_added;        /* address is in the egress set */
    bool meta_busy;        /* a meta.json write (PATCH) is on the thread pool */
    bool rm_after_meta;    /* the teardown waits for it to remove the files */
    struct meta_wait *meta_wait; /* PATCH callers waiting for the next write */
    /* create in progress */
    struct sg__create_op *op;
    /* cpu % sampling */
    uint64_t last_cpu_ns;
    uint64_t last_sample_ns;
    double cpu_pct;
    int refs; /* pending async ops keeping it alive */
};

struct sg__node {
    const sg_node_config_t *cfg;
    uv_loop_t *loop;
    sg__runtime_t *rt;
    sg__addrpool_t pool;
    sg__sbx_t *sandboxes;
    int nsandboxes;
    sg__sbx_t *warm; /* the warm pool */
    long long warm_retry_ms; /* no pool refill before (after a failure) */
    json_t *templates;       /* names of the templates found (rescanned on the thread pool) */
    bool tscan_busy;
    int cap_vcpu, cap_mem_mb, cap_sandboxes;
    bool draining;
    char envd_version[64];
    char *state_dir;     /* absolute */
    char *templates_dir; /* absolute */
    char *envd_path;     /* absolute */
    char nft_table[80];
    char cgroup_parent[160];
    uint32_t bridge_addr; /* host order */
    uv_timer_t tick;
    uv_signal_t sigterm, sigint, sigchld;
    /* node-wide usage */
    uint64_t last_cpu_total, last_cpu_idle;
    double usage_cpu_pct;
    long usage_mem_mb;
    struct sg__api *api;
    struct sg__proxy *proxy;
    struct sg__registry *reg;
};

sg__sbx_t *sg__node_find(sg__node_t *n, const char *id, size_t len);
void sg__node_alloc(const sg__node_t *n, int *vcpu, int *mem, int *count);
json_t *sg__sbx_json(const sg__sbx_t *s);
json_t *sg__node_info_json(sg__node_t *n);

/* Create: async; done(req_data, status, body) runs exactly once unless it returns an error. */
typedef void (*sg__create_done_cb)(void *data, int status, json_t *body);
int sg__sbx_create(sg__node_t *n, sg__create_req_t *req, sg__create_done_cb cb, void *data,
                   int *status, char *err, size_t errlen);
/* Delete: starts the teardown; the sandbox disappears from lookups at once. */
int sg__sbx_delete(sg__node_t *n, sg__sbx_t *s);
/* PATCH: new end time at once; done(data, 204|500, body) once it is in meta.json (thread pool),
 * exactly once unless this returns an error. */
int sg__sbx_update_end(sg__node_t *n, sg__sbx_t *s, long long end_ms, sg__create_done_cb cb,
                       void *data);
/* Metrics (cgroup files, upper-layer size) read on the thread pool; done(data, status, body) runs
 * on the loop exactly once (404 if the sandbox went meanwhile) unless this returns an error. */
int sg__sbx_metrics(sg__node_t *n, sg__sbx_t *s, sg__create_done_cb cb, void *data);

/* ---- listeners --------------------------------------------------------------------------------- */
int sg__api_start(sg__node_t *n);
void sg__api_stop(sg__node_t *n);
int sg__proxy_start(sg__node_t *n);
void sg__proxy_stop(sg__node_t *n);
int sg__registry_start(sg__node_t *n);
void sg__registry_stop(sg__node_t *n);

/* "addr:port" (IPv4 or [v6]) into a sockaddr; 0 or SG_EINVAL. */
int sg__parse_hostport(const char *s, struct sockaddr_storage *out);

#endif
