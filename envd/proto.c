/*
 * The wire pieces of envd that need no event loop: Connect envelopes, Connect error codes,
 * base64, the protobuf-JSON mapping of process.* and filesystem.* messages, and path resolution.
 *
 * Invariants: every parser here treats its input as hostile (lengths checked before reads,
 * types checked before use, counts bounded by the SG_ENVD_MAX_* limits) and reports failure as a
 * negative SG_E* code, never by crashing. Output JSON follows protobuf's JSON mapping: camelCase
 * names, enums as their names, bytes as base64, Timestamp as RFC 3339 with nanoseconds.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include "common/common.h"
#include "envd/envd.h"

static const struct {
    const char *name;
    int http;
} codes[] = {
    [SG_ENVD_CANCELED] = {"canceled", 499},
    [SG_ENVD_UNKNOWN] = {"unknown", 500},
    [SG_ENVD_INVALID_ARGUMENT] = {"invalid_argument", 400},
    [SG_ENVD_DEADLINE_EXCEEDED] = {"deadline_exceeded", 504},
    [SG_ENVD_NOT_FOUND] = {"not_found", 404},
    [SG_ENVD_ALREADY_EXISTS] = {"already_exists", 409},
    [SG_ENVD_PERMISSION_DENIED] = {"permission_denied", 403},
    [SG_ENVD_RESOURCE_EXHAUSTED] = {"resource_exhausted", 429},
    [SG_ENVD_FAILED_PRECONDITION] = {"failed_precondition", 400},
    [SG_ENVD_ABORTED] = {"aborted", 409},
    [SG_ENVD_OUT_OF_RANGE] = {"out_of_range", 400},
    [SG_ENVD_UNIMPLEMENTED] = {"unimplemented", 501},
    [SG_ENVD_INTERNAL] = {"internal", 500},
    [SG_ENVD_UNAVAILABLE] = {"unavailable", 503},
    [SG_ENVD_DATA_LOSS] = {"data_loss", 500},
    [SG_ENVD_UNAUTHENTICATED] = {"unauthenticated", 401},
};

/* ---- envelopes ------------------------------------------------------------------------------- */

void sg_envd_envelope_header(uint8_t out[SG_ENVD_ENVELOPE_HDR], uint8_t flags, uint32_t len)
{
    out[0] = flags;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

int sg_envd_envelope_decode(const uint8_t *buf, size_t len, size_t max_msg, uint8_t *flags,
                            const uint8_t **msg, size_t *msglen, size_t *consumed)
{
    if (len < SG_ENVD_ENVELOPE_HDR)
        return SG_EPROTO;
    uint32_t n = ((uint32_t)buf[1] << 24) | ((uint32_t)buf[2] << 16) | ((uint32_t)buf[3] << 8) |
                 (uint32_t)buf[4];
    if (n > max_msg)
        return SG_ETOOBIG;
    if (buf[0] & SG_ENVD_FLAG_COMPRESSED)
        return SG_EINVAL;
    if (len - SG_ENVD_ENVELOPE_HDR < n)
        return SG_EPROTO;
    *flags = buf[0];
    *msg = buf + SG_ENVD_ENVELOPE_HDR;
    *msglen = n;
    *consumed = SG_ENVD_ENVELOPE_HDR + (size_t)n;
    return 0;
}

uint8_t *sg_envd_envelope_json(uint8_t flags, const json_t *msg, size_t *outlen)
{
    size_t n = json_dumpb(msg, NULL, 0, JSON_COMPACT);
    if (n == 0 || n > UINT32_MAX)
        return NULL;
    uint8_t *out = malloc(SG_ENVD_ENVELOPE_HDR + n);
    if (out == NULL)
        return NULL;
    json_dumpb(msg, (char *)out + SG_ENVD_ENVELOPE_HDR, n, JSON_COMPACT);
    sg_envd_envelope_header(out, flags, (uint32_t)n);
    *outlen = SG_ENVD_ENVELOPE_HDR + n;
    return out;
}

/* ---- error codes ----------------------------------------------------------------------------- */

const char *sg_envd_code_name(sg_envd_code_t code)
{
    if (code < SG_ENVD_CANCELED || code > SG_ENVD_UNAUTHENTICATED)
        return "unknown";
    return codes[code].name;
}

int sg_envd_code_http(sg_envd_code_t code)
{
    if (code < SG_ENVD_CANCELED || code > SG_ENVD_UNAUTHENTICATED)
        return 500;
    return codes[code].http;
}

sg_envd_code_t sg_envd_code_from_errno(int err)
{
    switch (err) {
    case ENOENT: return SG_ENVD_NOT_FOUND;
    case EEXIST: case ENOTEMPTY: return SG_ENVD_ALREADY_EXISTS;
    case EACCES: case EPERM: case EROFS: return SG_ENVD_PERMISSION_DENIED;
    case ENOTDIR: case EISDIR: case EINVAL: case ENAMETOOLONG: case ELOOP: case EXDEV:
        return SG_ENVD_INVALID_ARGUMENT;
    case ENOSPC: case EDQUOT: case EMFILE: case ENFILE: return SG_ENVD_RESOURCE_EXHAUSTED;
    }
    return SG_ENVD_INTERNAL;
}

json_t *sg_envd_error_json(sg_envd_code_t code, const char *msg)
{
    return json_pack("{s:s,s:s}", "code", sg_envd_code_name(code), "message", msg ? msg : "");
}

/* ---- base64 ---------------------------------------------------------------------------------- */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t sg_envd_b64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        out[o++] = b64chars[v >> 18];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = b64chars[(v >> 6) & 63];
        out[o++] = b64chars[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        out[o++] = b64chars[v >> 18];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

ssize_t sg_envd_b64_decode(const char *in, size_t len, uint8_t *out)
{
    while (len > 0 && in[len - 1] == '=')
        len--;
    if (len % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64val((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    return (ssize_t)o;
}

/* ---- process.* ------------------------------------------------------------------------------- */

json_t *sg_envd_field(const json_t *obj, const char *camel, const char *snake)
{
    if (!json_is_object(obj))
        return NULL;
    json_t *v = json_object_get(obj, camel);
    if (v == NULL && snake != NULL)
        v = json_object_get(obj, snake);
    return json_is_null(v) ? NULL : v;
}

#define FAIL(...) do { snprintf(err, cap, __VA_ARGS__); return SG_EINVAL; } while (0)

int sg_envd_parse_start(const json_t *req, sg_envd_start_t *out, char *err, size_t cap)
{
    memset(out, 0, sizeof(*out));
    out->stdin_open = true;
    if (!json_is_object(req))
        FAIL("request must be a JSON object");
    json_t *p = sg_envd_field(req, "process", NULL);
    if (!json_is_object(p))
        FAIL("process is required");
    json_t *cmd = sg_envd_field(p, "cmd", NULL);
    if (!json_is_string(cmd) || json_string_length(cmd) == 0)
        FAIL("process.cmd must be a non-empty string");
    out->cmd = json_string_value(cmd);
    if (strlen(out->cmd) != json_string_length(cmd))
        FAIL("process.cmd contains a NUL byte");
    json_t *args = sg_envd_field(p, "args", NULL);
    if (args != NULL) {
        if (!json_is_array(args))
            FAIL("process.args must be an array of strings");
        if (json_array_size(args) > SG_ENVD_MAX_ARGS)
            FAIL("process.args has more than %d entries", SG_ENVD_MAX_ARGS);
        size_t i;
        json_t *a;
        json_array_foreach(args, i, a) {
            if (!json_is_string(a) || strlen(json_string_value(a)) != json_string_length(a))
                FAIL("process.args[%zu] must be a string without NUL bytes", i);
            out->args[out->nargs++] = json_string_value(a);
        }
    }
    out->args[out->nargs] = NULL;
    json_t *envs = sg_envd_field(p, "envs", NULL);
    if (envs != NULL) {
        if (!json_is_object(envs))
            FAIL("process.envs must be an object of strings");
        if (json_object_size(envs) > SG_ENVD_MAX_ENVS)
            FAIL("process.envs has more than %d entries", SG_ENVD_MAX_ENVS);
        const char *k;
        json_t *v;
        json_object_foreach(envs, k, v) {
            if (!json_is_string(v) || *k == '\0' || strchr(k, '=') != NULL ||
                strlen(json_string_value(v)) != json_string_length(v))
                FAIL("process.envs[%s] is not a valid variable", k);
        }
        out->envs = envs;
    }
    json_t *cwd = sg_envd_field(p, "cwd", NULL);
    if (cwd != NULL) {
        if (!json_is_string(cwd))
            FAIL("process.cwd must be a string");
        if (json_string_length(cwd) > 0)
            out->cwd = json_string_value(cwd);
    }
    json_t *tag = sg_envd_field(req, "tag", NULL);
    if (tag != NULL) {
        if (!json_is_string(tag) || json_string_length(tag) > 256)
            FAIL("tag must be a string of at most 256 bytes");
        out->tag = json_string_value(tag);
    }
    json_t *in = sg_envd_field(req, "stdin", NULL);
    if (in != NULL) {
        if (!json_is_boolean(in))
            FAIL("stdin must be a boolean");
        out->stdin_open = json_is_true(in);
    }
    json_t *pty = sg_envd_field(req, "pty", NULL);
    if (pty != NULL) {
        if (!json_is_object(pty))
            FAIL("pty must be an object");
        out->pty = true;
        out->cols = 80;
        out->rows = 24;
        json_t *size = sg_envd_field(pty, "size", NULL);
        if (size != NULL) {
            json_t *c = sg_envd_field(size, "cols", NULL), *r = sg_envd_field(size, "rows", NULL);
            if ((c && (!json_is_integer(c) || json_integer_value(c) < 0 ||
                       json_integer_value(c) > 65535)) ||
                (r && (!json_is_integer(r) || json_integer_value(r) < 0 ||
                       json_integer_value(r) > 65535)))
                FAIL("pty.size.cols and rows must be integers in 0..65535");
            if (c && json_integer_value(c) > 0)
                out->cols = (uint32_t)json_integer_value(c);
            if (r && json_integer_value(r) > 0)
                out->rows = (uint32_t)json_integer_value(r);
        }
    }
    return 0;
}

#undef FAIL

int sg_envd_parse_selector(const json_t *sel, uint32_t *pid, const char **tag)
{
    *pid = 0;
    *tag = NULL;
    json_t *p = sg_envd_field(sel, "pid", NULL), *t = sg_envd_field(sel, "tag", NULL);
    if (p != NULL) {
        /* uint32 may arrive as a number or a decimal string */
        long long v = -1;
        if (json_is_integer(p))
            v = json_integer_value(p);
        else if (json_is_string(p)) {
            char *end;
            errno = 0;
            v = strtoll(json_string_value(p), &end, 10);
            if (errno || *end || end == json_string_value(p))
                v = -1;
        }
        if (v <= 0 || v > INT32_MAX)
            return SG_EINVAL;
        *pid = (uint32_t)v;
        return 0;
    }
    if (json_is_string(t) && json_string_length(t) > 0) {
        *tag = json_string_value(t);
        return 0;
    }
    return SG_EINVAL;
}

int sg_envd_parse_signal(const json_t *v, int *signo)
{
    if (json_is_string(v)) {
        if (strcmp(json_string_value(v), "SIGNAL_SIGKILL") == 0) { *signo = SIGKILL; return 0; }
        if (strcmp(json_string_value(v), "SIGNAL_SIGTERM") == 0) { *signo = SIGTERM; return 0; }
        return SG_EINVAL;
    }
    if (json_is_integer(v) && (json_integer_value(v) == 9 || json_integer_value(v) == 15)) {
        *signo = (int)json_integer_value(v);
        return 0;
    }
    return SG_EINVAL;
}

json_t *sg_envd_event_start(uint32_t pid)
{
    return json_pack("{s:{s:{s:I}}}", "event", "start", "pid", (json_int_t)pid);
}

json_t *sg_envd_event_data(sg_envd_out_t kind, const uint8_t *buf, size_t len)
{
    static const char *const names[] = {"stdout", "stderr", "pty"};
    char *b64 = malloc(4 * ((len + 2) / 3) + 1);
    if (b64 == NULL)
        return NULL;
    size_t n = sg_envd_b64_encode(buf, len, b64);
    json_t *ev = json_pack("{s:{s:{s:s%}}}", "event", "data", names[kind], b64, n);
    free(b64);
    return ev;
}

static const char *signame_go(int sig)
{
    /* Go's syscall.Signal.String() wording, which E2B's status strings carry */
    switch (sig) {
    case SIGHUP: return "hangup";
    case SIGINT: return "interrupt";
    case SIGQUIT: return "quit";
    case SIGILL: return "illegal instruction";
    case SIGTRAP: return "trace/breakpoint trap";
    case SIGABRT: return "aborted";
    case SIGBUS: return "bus error";
    case SIGFPE: return "floating point exception";
    case SIGKILL: return "killed";
    case SIGUSR1: return "user defined signal 1";
    case SIGSEGV: return "segmentation fault";
    case SIGUSR2: return "user defined signal 2";
    case SIGPIPE: return "broken pipe";
    case SIGALRM: return "alarm clock";
    case SIGTERM: return "terminated";
    }
    return NULL;
}

json_t *sg_envd_event_end(int wstatus, const char *error)
{
    char status[64];
    int code;
    bool exited = WIFEXITED(wstatus);
    if (exited) {
        code = WEXITSTATUS(wstatus);
        snprintf(status, sizeof(status), "exit status %d", code);
    } else if (WIFSIGNALED(wstatus)) {
        code = -1;
        const char *n = signame_go(WTERMSIG(wstatus));
        if (n)
            snprintf(status, sizeof(status), "signal: %s", n);
        else
            snprintf(status, sizeof(status), "signal: signal %d", WTERMSIG(wstatus));
    } else {
        code = -1;
        snprintf(status, sizeof(status), "unknown");
    }
    json_t *end = json_pack("{s:i,s:b,s:s}", "exitCode", code, "exited", exited, "status", status);
    if (end && error)
        json_object_set_new(end, "error", json_string(error));
    return json_pack("{s:{s:o}}", "event", "end", end);
}

json_t *sg_envd_event_keepalive(void)
{
    return json_pack("{s:{s:{}}}", "event", "keepalive");
}

/* ---- filesystem.* ---------------------------------------------------------------------------- */

void sg_envd_mode_string(uint32_t m, char *out)
{
    static const char rwx[] = "rwxrwxrwx";
    char *p = out;
    /* Go prints type letters first (d, L, p, S, D, c, u, g, t), then the 9 permission bits */
    if (S_ISDIR(m)) *p++ = 'd';
    if (S_ISLNK(m)) *p++ = 'L';
    if (S_ISFIFO(m)) *p++ = 'p';
    if (S_ISSOCK(m)) *p++ = 'S';
    if (S_ISBLK(m)) *p++ = 'D';
    if (S_ISCHR(m)) { *p++ = 'D'; *p++ = 'c'; }
    if (m & S_ISUID) *p++ = 'u';
    if (m & S_ISGID) *p++ = 'g';
    if (m & S_ISVTX) *p++ = 't';
    if (p == out) *p++ = '-';
    for (int i = 0; i < 9; i++)
        *p++ = (m & (1u << (8 - i))) ? rwx[i] : '-';
    *p = '\0';
}

json_t *sg_envd_entry_json(const sg_envd_entry_t *e)
{
    static const char *const types[] = {"FILE_TYPE_UNSPECIFIED", "FILE_TYPE_FILE",
                                        "FILE_TYPE_DIRECTORY", "FILE_TYPE_SYMLINK"};
    char perms[16], ts[64], tbuf[32];
    sg_envd_mode_string(e->mode, perms);
    time_t t = (time_t)e->mtime_sec;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(tbuf, sizeof(tbuf), "%Y-%m-%dT%H:%M:%S", &tm);
    if (e->mtime_nsec > 0)
        snprintf(ts, sizeof(ts), "%s.%09ldZ", tbuf, e->mtime_nsec);
    else
        snprintf(ts, sizeof(ts), "%sZ", tbuf);
    unsigned type = (unsigned)e->type <= 3 ? (unsigned)e->type : 0;
    json_t *j = json_pack("{s:s,s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:s}", "name", e->name ? e->name : "",
                          "type", types[type], "path", e->path ? e->path : "", "size",
                          (json_int_t)e->size, "mode", (json_int_t)(e->mode & 07777),
                          "permissions", perms, "owner", e->owner ? e->owner : "", "group",
                          e->group ? e->group : "", "modifiedTime", ts);
    if (j && e->symlink_target)
        json_object_set_new(j, "symlinkTarget", json_string(e->symlink_target));
    return j;
}

json_t *sg_envd_watch_event(const char *name, sg_envd_evtype_t type)
{
    static const char *const types[] = {"EVENT_TYPE_UNSPECIFIED", "EVENT_TYPE_CREATE",
                                        "EVENT_TYPE_WRITE", "EVENT_TYPE_REMOVE",
                                        "EVENT_TYPE_RENAME", "EVENT_TYPE_CHMOD"};
    return json_pack("{s:{s:s,s:s}}", "filesystem", "name", name, "type",
                     types[(unsigned)type <= 5 ? type : 0]);
}

int sg_envd_resolve_path(const char *path, const char *home, char *out, size_t cap)
{
    char tmp[8192];
    if (path == NULL || *path == '\0')
        return SG_EINVAL;
    int n;
    if (path[0] == '~' && (path[1] == '\0' || path[1] == '/'))
        n = snprintf(tmp, sizeof(tmp), "%s/%s", home, path + 1);
    else if (path[0] != '/')
        n = snprintf(tmp, sizeof(tmp), "%s/%s", home, path);
    else
        n = snprintf(tmp, sizeof(tmp), "%s", path);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return SG_ETOOBIG;
    /* Clean: collapse "//", drop ".", and let ".." remove the previous element (never above /) */
    size_t o = 0;
    const char *p = tmp;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *s = p;
        while (*p && *p != '/')
            p++;
        size_t l = (size_t)(p - s);
        if (l == 1 && s[0] == '.')
            continue;
        if (l == 2 && s[0] == '.' && s[1] == '.') {
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--;
            continue;
        }
        if (o + 1 + l + 1 > cap)
            return SG_ETOOBIG;
        out[o++] = '/';
        memcpy(out + o, s, l);
        o += l;
    }
    if (o == 0) {
        if (cap < 2)
            return SG_ETOOBIG;
        out[o++] = '/';
    }
    out[o] = '\0';
    return 0;
}
