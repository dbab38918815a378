/*
 * envd internals shared by the files of this folder (never included from outside envd/).
 *
 * One process, one libuv loop, one h2o context. The server object is created once by main.c and
 * frozen; everything below runs on the loop thread unless a comment says otherwise.
 */
#ifndef SG_ENVD_INTERNAL_H
#define SG_ENVD_INTERNAL_H

#include <stdbool.h>
#include <sys/types.h>
#include <uv.h>
#include <h2o.h>
#include <jansson.h>
#include "envd/envd.h"

#define SG__MAX_GROUPS 64
#define SG__STREAM_HIGH (1u << 20) /* a stream's unsent bytes above which producers pause */
#define SG__STREAM_LOW (256u << 10) /* ... and below which they resume */

typedef struct sg__proc sg__proc_t;
typedef struct sg__stream sg__stream_t;

typedef struct {
    uv_loop_t *loop;
    h2o_globalconf_t conf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    uv_tcp_t listener;
    char *token;              /* NULL: calls need no token (the sandbox is not secure) */
    size_t max_body;          /* bytes; larger request bodies get 413 */
    uint64_t req_timeout_ms;  /* time to receive a whole request (h2o http1.req_timeout) */
    unsigned max_procs, nprocs;
    unsigned max_streams, nstreams;
    char **env;               /* default environment of started processes (NULL-terminated) */
    char *init_key;           /* non-NULL while waiting for POST /init (a pre-started sandbox) */
    sg__proc_t *procs;
    uv_signal_t sigchld, sigterm, sigint;
    bool stopping;
} sg__server_t;

/* envd's environment minus SANDGATE_* variables, as the default of started processes (main.c);
 * NULL when out of memory. */
char **sg__envd_child_env(void);

typedef struct {
    char name[256];
    uid_t uid;
    gid_t gid;
    char home[1024];
    char shell[256];
    gid_t groups[SG__MAX_GROUPS];
    int ngroups;
} sg__user_t;

/* ---- users.c ---- */
/* Looks a user up in /etc/passwd (+ supplementary groups from /etc/group), without NSS.
 * Returns 0, SG_ENOTFOUND, or SG_EIO when /etc/passwd cannot be read. */
int sg__user_lookup(const char *name, sg__user_t *u);
/* Switches this thread's filesystem identity (fsuid, fsgid, supplementary groups) to u, so
 * that the following path operations are checked as that user; sg__as_root() switches back.
 * Per-thread raw syscalls: other threads (libuv's pool) keep root. */
void sg__as_user(const sg__user_t *u);
void sg__as_root(void);

typedef struct {
    struct { unsigned id; char *name; } *users, *groups;
    size_t nusers, ngroups;
} sg__idmap_t;
/* Loads uid->name and gid->name maps (bounded to 65536 entries each); free with _free. */
void sg__idmap_load(sg__idmap_t *m);
void sg__idmap_free(sg__idmap_t *m);
/* Name of an id, or its decimal form written into buf (>= 16 bytes). */
const char *sg__idmap_user(const sg__idmap_t *m, unsigned uid, char *buf);
const char *sg__idmap_group(const sg__idmap_t *m, unsigned gid, char *buf);

/* ---- server.c ---- */
/* Sets up h2o on srv->loop and listens on host:port. Returns 0 or SG_EIO/SG_EINVAL. */
int sg__server_listen(sg__server_t *srv, const char *host, int port);
/* Sends a Connect error: for a unary call an HTTP status + {"code","message"}; for a streaming
 * call (streaming=true) a 200 response whose only frame is the end-of-stream error. */
void sg__rpc_fail(h2o_req_t *req, bool streaming, sg_envd_code_t code, const char *msg);
/* 200 + compact JSON for a unary Connect call; takes ownership of body. */
void sg__rpc_reply(h2o_req_t *req, json_t *body);
/* The value of a query parameter (percent-decoded into the request pool), or NULL. */
char *sg__query_param(h2o_req_t *req, const char *name);

/* A server stream (Connect server-streaming response). The owner (a process, a watcher) pushes
 * messages; the stream bounds what it holds by telling its owner when it drains. */
struct sg__stream {
    h2o_generator_t gen;
    h2o_req_t *req;          /* NULL once h2o disposed the request */
    sg__server_t *srv;
    uint8_t *inflight;
    size_t inflight_len;
    uint8_t *pending;
    size_t pending_len, pending_cap;
    bool sending, final_queued, final_sent, detached, watch_keepalive;
    uv_timer_t keepalive, deadline;
    int handles;
    void *owner;
    void (*on_detach)(sg__stream_t *st); /* the stream leaves its owner (disconnect, deadline) */
    void (*on_drain)(sg__stream_t *st);  /* backlog fell below SG__STREAM_LOW */
    sg__stream_t *next;      /* owner's list */
};
/* Starts a 200 application/connect+json response on req, with the keepalive and deadline
 * timers taken from the request headers. Returns NULL (and answers resource_exhausted) past
 * the stream limit. watch_keepalive selects the WatchDir keepalive shape. */
sg__stream_t *sg__stream_open(sg__server_t *srv, h2o_req_t *req, void *owner,
                              void (*on_detach)(sg__stream_t *), void (*on_drain)(sg__stream_t *),
                              bool watch_keepalive);
/* Queues one message frame (msg is consumed). No-op after the stream ended. */
void sg__stream_send(sg__stream_t *st, json_t *msg);
/* Queues the end-of-stream frame ({} or {"error":...} when code != 0) and finishes the
 * response. The owner must already have dropped the stream from its list. */
void sg__stream_end(sg__stream_t *st, sg_envd_code_t code, const char *msg);
size_t sg__stream_backlog(const sg__stream_t *st);

/* ---- proc.c ---- */
void sg__proc_rpc(sg__server_t *srv, h2o_req_t *req, const sg__user_t *user, const char *method,
                  json_t *body, bool streaming);
/* Reaps every exited child (tracked or orphaned); called on SIGCHLD. */
void sg__proc_reap(sg__server_t *srv);
/* SIGKILLs every tracked process group (shutdown). */
void sg__proc_kill_all(sg__server_t *srv);

/* ---- fs.c ---- */
void sg__fs_rpc(sg__server_t *srv, h2o_req_t *req, const sg__user_t *user, const char *method,
                json_t *body, bool streaming);
/* Fills an EntryInfo for path (lstat; symlinks report their target). Returns 0 or -errno. */
int sg__fs_entry(const char *path, const sg__idmap_t *ids, json_t **out);
/* mkdir -p of the folder that holds file, as the current fs identity; 0 or -errno. */
int sg__fs_mkdir_parents(const char *file);

/* ---- files.c ---- */
void sg__files_get(sg__server_t *srv, h2o_req_t *req, const sg__user_t *user);
void sg__files_post(sg__server_t *srv, h2o_req_t *req, const sg__user_t *user);
/* Whether a file name is one of the temporary files an upload writes before renaming it over
 * its target (".<target>" UPLOAD_TMP_TAG "XXXXXX"). */
#define SG__UPLOAD_TMP_TAG ".sg-upload-"
bool sg__files_is_upload_tmp(const char *name);

#endif
