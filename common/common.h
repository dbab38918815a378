/*
 * common: what every sandgate module shares.
 *
 * - error codes (SG_E*, negative ints) and sg_strerror();
 * - structured logging (one line per event, logfmt or JSON);
 * - crypto helpers on mbedTLS: randomness (CTR_DRBG), SHA-256, HMAC-SHA256, constant-time compare;
 * - the one HTTP error path (JSON {"code":N,"message":"..."}) for every h2o-based server.
 *
 * Thread safety: everything here may be called from any thread unless a comment says otherwise.
 */
#ifndef SG_COMMON_H
#define SG_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdbool.h>
#include <sys/types.h>

/* ---- errors ---------------------------------------------------------------------------------- */

#define SG_ERRNO_MAP(X)                                                                            \
    X(NOMEM, -1, "out of memory")                                                                  \
    X(INVAL, -2, "invalid argument")                                                               \
    X(IO, -3, "input/output error")                                                                \
    X(NOTFOUND, -4, "not found")                                                                   \
    X(EXISTS, -5, "already exists")                                                                \
    X(UNAVAIL, -6, "service unavailable")                                                          \
    X(TIMEOUT, -7, "timed out")                                                                    \
    X(AUTH, -8, "authentication failed")                                                           \
    X(LIMIT, -9, "limit reached")                                                                  \
    X(CANCELED, -10, "canceled")                                                                   \
    X(PROTO, -11, "protocol error")                                                                \
    X(NOROOM, -12, "no capacity")                                                                  \
    X(TOOBIG, -13, "too large")

enum {
    SG_OK = 0,
#define SG__ERR_ENUM(name, code, msg) SG_E##name = code,
    SG_ERRNO_MAP(SG__ERR_ENUM)
#undef SG__ERR_ENUM
};

/* Returns a static string for an SG_E* code (or "unknown error"). */
const char *sg_strerror(int err);

/* ---- logging --------------------------------------------------------------------------------- */

typedef enum { SG_LOG_DEBUG, SG_LOG_INFO, SG_LOG_WARN, SG_LOG_ERROR } sg_log_level_t;
typedef enum { SG_LOG_LOGFMT, SG_LOG_JSON } sg_log_format_t;
typedef enum { SG_LF_STR, SG_LF_INT, SG_LF_DBL } sg_log_ftype_t;

typedef struct {
    const char *key;
    sg_log_ftype_t type;
    union {
        const char *s; /* NULL is logged as an empty string */
        long long i;
        double d;
    };
} sg_log_field_t;

#define SG_LS(k, v) ((sg_log_field_t){.key = (k), .type = SG_LF_STR, .s = (v)})
#define SG_LI(k, v) ((sg_log_field_t){.key = (k), .type = SG_LF_INT, .i = (long long)(v)})
#define SG_LD(k, v) ((sg_log_field_t){.key = (k), .type = SG_LF_DBL, .d = (double)(v)})

/* Sets the process-wide minimum level, format and stream (default: info, logfmt, stderr).
 * Call once at start-up, before other threads log. */
void sg_log_setup(sg_log_level_t level, sg_log_format_t format, FILE *out);
/* Parses "debug|info|warn|error" / "logfmt|json"; returns 0 or SG_EINVAL. */
int sg_log_level_parse(const char *s, sg_log_level_t *out);
int sg_log_format_parse(const char *s, sg_log_format_t *out);
bool sg_log_enabled(sg_log_level_t level);

/* Writes one line: ts, level, msg, then the fields in order. The line is written with a single
 * fwrite, so lines from different threads never interleave. */
void sg_log_fields(sg_log_level_t level, const char *msg, const sg_log_field_t *fields, size_t n);
/* Batching for a thread that runs an event loop: after sg_log_batch_start() the thread's lines
 * are kept in a 64 KiB buffer (written early only when it fills) until sg_log_batch_flush(),
 * which the loop calls once per iteration before it waits (uv_prepare): a busy worker writes its
 * access lines once per iteration instead of once per request, and no line waits longer than the
 * iteration that logged it. sg_log_batch_stop() flushes and ends it. Per thread. */
int sg_log_batch_start(void);
void sg_log_batch_flush(void);
void sg_log_batch_stop(void);
/* Formats a line into buf (NUL-terminated, truncated to cap, always ending in '\n');
 * returns its length. ts_ms is milliseconds since the epoch. Exposed for tests. */
size_t sg_log_format_line(char *buf, size_t cap, sg_log_format_t fmt, long long ts_ms,
                          sg_log_level_t level, const char *msg, const sg_log_field_t *fields,
                          size_t n);

#define sg_log(level, msg, ...)                                                                    \
    sg_log_fields((level), (msg), (const sg_log_field_t[]){__VA_ARGS__},                          \
                  sizeof((const sg_log_field_t[]){__VA_ARGS__}) / sizeof(sg_log_field_t))
#define sg_log_msg(level, msg) sg_log_fields((level), (msg), NULL, 0)

/* ---- crypto ---------------------------------------------------------------------------------- */

/* Fills buf with n bytes from a process-wide CTR_DRBG seeded from the OS entropy source.
 * Returns 0, or SG_EIO when the DRBG cannot be seeded (callers must fail closed). */
int sg_rand_bytes(void *buf, size_t n);
void sg_sha256(const void *data, size_t len, uint8_t out[32]);
void sg_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                    uint8_t out[32]);
/* Constant-time equality of two buffers of the same length n; returns true when equal. */
bool sg_ct_equal(const void *a, const void *b, size_t n);
/* Constant-time equality of two NUL-terminated strings (time depends only on the lengths). */
bool sg_ct_streq(const char *a, const char *b);
/* Lower-case hex of n bytes into out (2n+1 bytes, NUL-terminated). */
void sg_hex_encode(const uint8_t *in, size_t n, char *out);
/* Parses exactly 2n hex digits (either case) into out; returns 0 or SG_EINVAL. */
int sg_hex_decode(const char *in, size_t inlen, uint8_t *out);

/* ---- time ------------------------------------------------------------------------------------ */

/* Wall clock in milliseconds since the epoch, and a monotonic clock in nanoseconds. */
long long sg_now_ms(void);
uint64_t sg_mono_ns(void);
/* RFC 3339 UTC with milliseconds ("2026-11-26T04:50:00.123Z") into out (>= 25 bytes). */
void sg_format_rfc3339(long long ms, char *out, size_t cap);

/* ---- Redis (async, libuv) -------------------------------------------------------------------- */

struct redisReply;
struct uv_loop_s;
typedef struct sg_redis sg_redis_t;
typedef struct sg_redis_cmd sg_redis_cmd_t;
/* reply is NULL when not connected, timed out or the connection was lost; an error reply
 * (type REDIS_REPLY_ERROR) is passed through. The reply is freed by hiredis after the callback. */
typedef void (*sg_redis_cb)(sg_redis_t *r, struct redisReply *reply, void *data);

/* Creates a client on loop (loop thread only from here on). address is "host:port" or
 * "unix:/path"; password may be NULL. Connects in the background, reconnects with backoff and
 * sends AUTH/SELECT on every connect. Returns NULL on allocation failure. */
sg_redis_t *sg_redis_new(struct uv_loop_s *loop, const char *address, const char *password, int db,
                         int timeout_ms);
/* Closes the client; callbacks of pending commands never run. Memory is released once the loop
 * has run the handles' close callbacks. */
void sg_redis_free(sg_redis_t *r);
bool sg_redis_connected(sg_redis_t *r);
/* Sends one command. cb runs exactly once, never inside this call: with the reply, or NULL on not
 * connected / timeout / connection lost. Returns NULL only on allocation failure (cb never runs).
 * argvlen may be NULL for NUL-terminated arguments. */
sg_redis_cmd_t *sg_redis_command(sg_redis_t *r, sg_redis_cb cb, void *data, int argc,
                                 const char **argv, const size_t *argvlen);
/* After this the command's callback never runs. Valid until the callback would have run. */
void sg_redis_cancel(sg_redis_cmd_t *cmd);

/* ---- PostgreSQL (async, libuv) ---------------------------------------------------------------- */

#define SG_PG_MAX_PARAMS 16
struct pg_result;
typedef struct sg_pg sg_pg_t;
typedef struct sg_pg_query sg_pg_query_t;
/* res is NULL when no connection is up, on timeout or when the connection broke; otherwise the
 * query's last result, which may be an error (check PQresultStatus). Cleared after the callback. */
typedef void (*sg_pg_cb)(sg_pg_t *pg, struct pg_result *res, void *data);

/* A pool of pool_size connections on loop (loop thread only). Connects in the background and
 * reconnects with backoff. Returns NULL on allocation failure. */
sg_pg_t *sg_pg_new(struct uv_loop_s *loop, const char *dsn, int pool_size, int timeout_ms);
/* Closes every connection; callbacks of pending queries never run. */
void sg_pg_free(sg_pg_t *pg);
/* True when at least one connection is up. */
bool sg_pg_up(sg_pg_t *pg);
/* Queues a parameterised query (text parameters, copied). cb runs exactly once, never inside
 * this call. Returns NULL (cb never runs) on allocation failure or more than SG_PG_MAX_PARAMS. */
sg_pg_query_t *sg_pg_query(sg_pg_t *pg, const char *sql, int nparams, const char *const *params,
                           sg_pg_cb cb, void *data);
/* The query's callback will not run. Valid until the callback would have run. */
void sg_pg_cancel(sg_pg_query_t *q);

/* ---- HTTP (h2o) ------------------------------------------------------------------------------ */

struct st_h2o_req_t;
struct json_t;

/* The one error path: responds with status and JSON {"code":status,"message":message}.
 * Must be called on the request's loop thread; the request is finished afterwards. */
void sg_http_error(struct st_h2o_req_t *req, int status, const char *message);
/* Responds with status and the JSON body (compact); takes ownership of body (decref'd here).
 * A NULL body sends an empty response (use for 204). */
void sg_http_json(struct st_h2o_req_t *req, int status, struct json_t *body);
struct st_h2o_accept_ctx_t;
struct uv_stream_s;
struct uv_handle_s;
/* picohttpparser, as libh2o 2.2.5 bundles and exports it (no header of it is installed). */
struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};
struct phr_chunked_decoder {
    size_t bytes_left_in_chunk;
    char consume_trailer; /* consume the trailer section too (needed to reuse a connection) */
    char _hex_count;
    char _state;
};
int phr_parse_request(const char *buf, size_t len, const char **method, size_t *method_len,
                      const char **path, size_t *path_len, int *minor_version,
                      struct phr_header *headers, size_t *num_headers, size_t last_len);
int phr_parse_response(const char *buf, size_t len, int *minor_version, int *status,
                       const char **msg, size_t *msg_len, struct phr_header *headers,
                       size_t *num_headers, size_t last_len);
/* Decodes in place: -1 malformed, -2 more needed, else the bytes left after the body. */
ssize_t phr_decode_chunked(struct phr_chunked_decoder *decoder, char *buf, size_t *bufsz);

/* For a process that relays response bodies (gateway, node agent): called first in main. */
void sg_http_tune_malloc(void);
/* Accepts one pending connection on listener (from its connection callback) and hands it to h2o
 * with actx; a failed accept closes the new handle. Loop thread of listener only. */
void sg_http_accept(struct uv_stream_s *listener, struct st_h2o_accept_ctx_t *actx);
/* The two halves of sg_http_accept, for a server that looks at a connection before h2o does.
 * accept_conn: a heap block of size bytes (>= sizeof(uv_tcp_t), the TCP handle first) holding the
 * accepted connection with TCP_NODELAY, or NULL (a failed accept is closed through close_cb).
 * serve: hands it to h2o; close_cb runs exactly once, when the handle is closed, and frees it. */
struct uv_tcp_s *sg_http_accept_conn(struct uv_stream_s *listener, size_t size,
                                     void (*close_cb)(struct uv_handle_s *));
void sg_http_serve(struct uv_tcp_s *conn, struct st_h2o_accept_ctx_t *actx,
                   void (*close_cb)(struct uv_handle_s *));
/* Standard reason phrase for a status ("Not Found"); "" when unknown. */
const char *sg_http_reason(int status);
/* Finds a request header by lower-case name; returns its value (not NUL-terminated) and sets
 * *len, or NULL when absent. */
const char *sg_http_header(struct st_h2o_req_t *req, const char *name, size_t *len);

#endif
