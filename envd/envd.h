/*
 * envd: the in-sandbox daemon (sandgate-envd) speaking E2B's envd API.
 *
 * This header is the module's public surface: the pure, loop-free pieces that the daemon is
 * built from and that unit tests and fuzz targets drive directly:
 *   - the Connect envelope codec (flag byte + 4-byte big-endian length + message);
 *   - Connect error codes and their HTTP statuses;
 *   - the JSON mapping of the protobuf messages envd reads and writes (process.* and
 *     filesystem.*; field names camelCase out, camelCase or snake_case in, as protobuf JSON does);
 *   - base64 (protobuf `bytes` in JSON);
 *   - a multipart/form-data parser over a complete body (h2o hands envd whole bodies).
 * Everything here is reentrant and may be called from any thread. The daemon itself (main.c,
 * server.c, proc.c, fs.c, files.c, users.c) is private to the folder.
 */
#ifndef SG_ENVD_H
#define SG_ENVD_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <sys/types.h>
#include <jansson.h>

/* The E2B envd version whose gated SDK features this daemon implements (E2B-WIRE.md):
 * 0.3.0 stdin option, 0.4.0 default user, 0.5.2 closeStdin, 0.5.7 octet-stream uploads.
 * Not 0.6.2 (file metadata headers). */
#define SG_ENVD_VERSION "0.5.7"
#define SG_ENVD_DEFAULT_PORT 49983

/* ---- Connect envelopes ----------------------------------------------------------------------- */

#define SG_ENVD_FLAG_COMPRESSED 0x01
#define SG_ENVD_FLAG_END 0x02
#define SG_ENVD_ENVELOPE_HDR 5

/* Writes the 5-byte envelope header for a message of len bytes. */
void sg_envd_envelope_header(uint8_t out[SG_ENVD_ENVELOPE_HDR], uint8_t flags, uint32_t len);
/* Decodes the first envelope of buf[0..len). On success returns 0 and sets *flags, *msg and
 * *msglen (pointing into buf) and *consumed (header + message). Returns SG_EPROTO when buf
 * is shorter than the envelope it announces (truncated), SG_ETOOBIG when the message exceeds max_msg, and
 * SG_EINVAL for a compressed message (envd negotiates no compression). */
int sg_envd_envelope_decode(const uint8_t *buf, size_t len, size_t max_msg, uint8_t *flags,
                            const uint8_t **msg, size_t *msglen, size_t *consumed);
/* Returns a malloc'd envelope (header + compact JSON of msg) and its length in *outlen, or NULL
 * on allocation failure. msg is not consumed. The caller frees. */
uint8_t *sg_envd_envelope_json(uint8_t flags, const json_t *msg, size_t *outlen);

/* ---- Connect error codes --------------------------------------------------------------------- */

typedef enum {
    SG_ENVD_CANCELED = 1,
    SG_ENVD_UNKNOWN,
    SG_ENVD_INVALID_ARGUMENT,
    SG_ENVD_DEADLINE_EXCEEDED,
    SG_ENVD_NOT_FOUND,
    SG_ENVD_ALREADY_EXISTS,
    SG_ENVD_PERMISSION_DENIED,
    SG_ENVD_RESOURCE_EXHAUSTED,
    SG_ENVD_FAILED_PRECONDITION,
    SG_ENVD_ABORTED,
    SG_ENVD_OUT_OF_RANGE,
    SG_ENVD_UNIMPLEMENTED,
    SG_ENVD_INTERNAL,
    SG_ENVD_UNAVAILABLE,
    SG_ENVD_DATA_LOSS,
    SG_ENVD_UNAUTHENTICATED,
} sg_envd_code_t;

/* The wire name ("not_found") and the HTTP status of a unary error (404). */
const char *sg_envd_code_name(sg_envd_code_t code);
int sg_envd_code_http(sg_envd_code_t code);
/* The Connect code for an errno value from a filesystem call (ENOENT -> not_found, ...). */
sg_envd_code_t sg_envd_code_from_errno(int err);
/* {"code":"<name>","message":msg}; new reference. */
json_t *sg_envd_error_json(sg_envd_code_t code, const char *msg);

/* ---- base64 ---------------------------------------------------------------------------------- */

/* Standard base64 with padding into out (4*ceil(n/3)+1 bytes, NUL-terminated); returns length. */
size_t sg_envd_b64_encode(const uint8_t *in, size_t n, char *out);
/* Decodes standard or URL-safe base64 with optional padding into out (>= 3*len/4+3 bytes);
 * returns the decoded length, or -1 on an invalid character or impossible length. */
ssize_t sg_envd_b64_decode(const char *in, size_t len, uint8_t *out);

/* ---- process.* messages ---------------------------------------------------------------------- */

#define SG_ENVD_MAX_ARGS 4096
#define SG_ENVD_MAX_ENVS 4096

typedef struct {
    const char *cmd;            /* borrowed from the request JSON */
    const char *args[SG_ENVD_MAX_ARGS + 1]; /* NULL-terminated */
    size_t nargs;
    json_t *envs;               /* borrowed object of string values, or NULL */
    const char *cwd;            /* NULL when absent */
    const char *tag;            /* NULL when absent */
    bool stdin_open;            /* default true (proto: absent means true) */
    bool pty;
    uint32_t cols, rows;
} sg_envd_start_t;

/* Parses a StartRequest. Returns 0, or SG_EINVAL with a reason in err (cap bytes). The struct
 * borrows strings from req, which must outlive it. */
int sg_envd_parse_start(const json_t *req, sg_envd_start_t *out, char *err, size_t cap);
/* Parses a ProcessSelector object ({"pid":N} or {"tag":"t"}): sets *pid (0 if by tag) and *tag
 * (borrowed, NULL if by pid). Returns 0 or SG_EINVAL. */
int sg_envd_parse_selector(const json_t *sel, uint32_t *pid, const char **tag);
/* Parses a Signal enum value ("SIGNAL_SIGKILL", "SIGNAL_SIGTERM" or 9/15) into a signal number;
 * returns 0 or SG_EINVAL (SIGNAL_UNSPECIFIED and anything else). */
int sg_envd_parse_signal(const json_t *v, int *signo);
/* Gets a field by its camelCase or its snake_case name (protobuf JSON accepts both). */
json_t *sg_envd_field(const json_t *obj, const char *camel, const char *snake);

typedef enum { SG_ENVD_OUT_STDOUT, SG_ENVD_OUT_STDERR, SG_ENVD_OUT_PTY } sg_envd_out_t;
/* {"event":{"start":{"pid":N}}} */
json_t *sg_envd_event_start(uint32_t pid);
/* {"event":{"data":{"stdout"|"stderr"|"pty":"<base64>"}}}; NULL on allocation failure. */
json_t *sg_envd_event_data(sg_envd_out_t kind, const uint8_t *buf, size_t len);
/* {"event":{"end":{"exitCode","exited","status"[,"error"]}}} from a waitpid() status, with Go's
 * wording ("exit status 1", "signal: killed") and exitCode -1 for a signal, as E2B reports it. */
json_t *sg_envd_event_end(int wstatus, const char *error);
json_t *sg_envd_event_keepalive(void);

/* ---- filesystem.* messages ------------------------------------------------------------------- */

typedef enum {
    SG_ENVD_FT_UNSPECIFIED = 0,
    SG_ENVD_FT_FILE = 1,
    SG_ENVD_FT_DIRECTORY = 2,
    SG_ENVD_FT_SYMLINK = 3,
} sg_envd_ftype_t;

typedef struct {
    const char *name;
    const char *path;
    sg_envd_ftype_t type;
    int64_t size;
    uint32_t mode;              /* st_mode, all bits */
    const char *owner, *group;
    int64_t mtime_sec;
    long mtime_nsec;
    const char *symlink_target; /* NULL unless a symlink */
} sg_envd_entry_t;

/* EntryInfo JSON ({"name","type":"FILE_TYPE_FILE",...,"modifiedTime":"RFC 3339"}). */
json_t *sg_envd_entry_json(const sg_envd_entry_t *e);
/* Go's FileMode.String() of an st_mode into out (>= 12 bytes): "-rw-r--r--", "drwxr-xr-x". */
void sg_envd_mode_string(uint32_t st_mode, char *out);

typedef enum {
    SG_ENVD_EV_CREATE = 1,
    SG_ENVD_EV_WRITE = 2,
    SG_ENVD_EV_REMOVE = 3,
    SG_ENVD_EV_RENAME = 4,
    SG_ENVD_EV_CHMOD = 5,
} sg_envd_evtype_t;
/* {"filesystem":{"name":name,"type":"EVENT_TYPE_CREATE"}} */
json_t *sg_envd_watch_event(const char *name, sg_envd_evtype_t type);

/* Lexically cleans path (as Go's filepath.Clean) and resolves it against home: "~" and "~/x"
 * expand to home, relative paths are taken from home. Writes an absolute path into out (cap
 * bytes). Returns 0, SG_EINVAL for an empty path, or SG_ETOOBIG past cap. */
int sg_envd_resolve_path(const char *path, const char *home, char *out, size_t cap);

/* ---- multipart/form-data --------------------------------------------------------------------- */

typedef struct {
    const char *name;           /* form field name (points into the body), name_len bytes */
    size_t name_len;
    char filename[4096];        /* decoded filename (NUL-terminated; "" if none) */
    const char *content_type;
    size_t content_type_len;
    const uint8_t *data;        /* part body (points into the body) */
    size_t len;
} sg_envd_part_t;

/* Extracts the boundary parameter of a multipart/form-data content type. Returns 0 with
 * *b and *blen pointing into ctype, or SG_EINVAL (not multipart, no boundary, boundary > 70). */
int sg_envd_multipart_boundary(const char *ctype, size_t len, const char **b, size_t *blen);
/* Parses a complete multipart body into parts[0..max_parts). Returns 0 and *nparts, SG_EPROTO
 * for malformed or truncated input (no closing boundary, bad part headers), SG_ETOOBIG when
 * there are more than max_parts parts or a part's headers exceed 8 KB. */
int sg_envd_multipart_parse(const uint8_t *body, size_t len, const char *boundary, size_t blen,
                            sg_envd_part_t *parts, size_t max_parts, size_t *nparts);

#endif
