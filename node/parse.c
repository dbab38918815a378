/*
 * The node agent's pure parsers: create-request validation, the sandbox address pool, the node
 * proxy's request-head rewrite and its chunked-body tracking. No I/O here, so unit tests cover
 * every branch.
 *
 * The address pool is a bitmap over the node's CIDR. Index 0 is the network, 1 the bridge (the
 * sandboxes' gateway), the last the broadcast; allocation is round robin so a freed address is
 * not handed out again at once (stale ARP/conntrack entries age out first).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "common/common.h"
#include "node/internal.h"

#define MAX_ENV 256
#define MAX_PROXY_HEADERS 100

bool sg__valid_sandbox_id(const char *s, size_t len)
{
    if (len < 1 || len > 63)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
            return false;
    return true;
}

bool sg__valid_template_id(const char *s, size_t len)
{
    if (len < 1 || len > 64)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '-'))
            return false;
    return true;
}

static int fail(char *err, size_t errlen, const char *msg)
{
    snprintf(err, errlen, "%s", msg);
    return SG_EINVAL;
}

static bool get_int(json_t *o, const char *k, long long lo, long long hi, long long *out,
                    bool required)
{
    json_t *v = json_object_get(o, k);
    if (v == NULL)
        return !required;
    if (!json_is_integer(v))
        return false;
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return false;
    *out = x;
    return true;
}

static bool valid_env_name(const char *k)
{
    if (*k == '\0' || strlen(k) > 256)
        return false;
    for (const char *p = k; *p; p++)
        if (*p == '=' || (unsigned char)*p < 0x20)
            return false;
    return true;
}

int sg__create_req_parse(const char *body, size_t len, sg__create_req_t *out, char *err,
                         size_t errlen)
{
    memset(out, 0, sizeof(*out));
    json_error_t jerr;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    int ret = SG_EINVAL;
    if (o == NULL || !json_is_object(o)) {
        ret = fail(err, errlen, "request body must be a JSON object");
        goto done;
    }
    json_t *v = json_object_get(o, "sandboxID");
    if (!json_is_string(v) || !sg__valid_sandbox_id(json_string_value(v), json_string_length(v))) {
        ret = fail(err, errlen, "sandboxID must match [a-z0-9]{1,63}");
        goto done;
    }
    strcpy(out->id, json_string_value(v));
    v = json_object_get(o, "templateID");
    if (!json_is_string(v) || !sg__valid_template_id(json_string_value(v), json_string_length(v))) {
        ret = fail(err, errlen, "templateID must match [a-zA-Z0-9_-]{1,64}");
        goto done;
    }
    strcpy(out->tmpl, json_string_value(v));
    v = json_object_get(o, "teamID");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) >= sizeof(out->team) ||
            strlen(json_string_value(v)) != json_string_length(v)) {
            ret = fail(err, errlen, "teamID must be a string of at most 127 bytes");
            goto done;
        }
        strcpy(out->team, json_string_value(v));
    }
    long long x;
    if (!get_int(o, "vcpu", 1, 64, &x, true)) {
        ret = fail(err, errlen, "vcpu must be an integer 1..64");
        goto done;
    }
    out->vcpu = (int)x;
    if (!get_int(o, "memoryMB", 64, 262144, &x, true)) {
        ret = fail(err, errlen, "memoryMB must be an integer 64..262144");
        goto done;
    }
    out->memory_mb = (int)x;
    x = 0;
    if (!get_int(o, "diskMB", 0, 1048576, &x, false)) {
        ret = fail(err, errlen, "diskMB must be an integer 0..1048576");
        goto done;
    }
    out->disk_mb = (int)x;
    if (!get_int(o, "endAtMs", 0, 253402300799999LL, &x, true)) {
        ret = fail(err, errlen, "endAtMs must be an integer (ms since the epoch)");
        goto done;
    }
    out->end_ms = x;
    v = json_object_get(o, "allowInternetAccess");
    if (v != NULL && !json_is_null(v) && !json_is_boolean(v)) {
        ret = fail(err, errlen, "allowInternetAccess must be a boolean");
        goto done;
    }
    out->internet = v == NULL || json_is_null(v) ? true : json_is_true(v);
    v = json_object_get(o, "envdAccessToken");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v) || json_string_length(v) < 1 || json_string_length(v) > 512 ||
            strlen(json_string_value(v)) != json_string_length(v)) {
            ret = fail(err, errlen, "envdAccessToken must be null or a string of 1..512 bytes");
            goto done;
        }
        out->token = strdup(json_string_value(v));
    }
    v = json_object_get(o, "envVars");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_object(v) || json_object_size(v) > MAX_ENV) {
            ret = fail(err, errlen, "envVars must be an object of at most 256 strings");
            goto done;
        }
        const char *k;
        json_t *ev;
        json_object_foreach(v, k, ev) {
            if (!valid_env_name(k) || !json_is_string(ev) || json_string_length(ev) > 65536 ||
                strlen(json_string_value(ev)) != json_string_length(ev)) {
                ret = fail(err, errlen, "envVars: names must be non-empty without '=', values "
                                        "strings of at most 64 KiB without NUL");
                goto done;
            }
        }
        out->env = json_incref(v);
    } else {
        out->env = json_object();
    }
    v = json_object_get(o, "metadata");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_object(v)) {
            ret = fail(err, errlen, "metadata must be an object");
            goto done;
        }
        out->metadata = json_incref(v);
    }
    ret = 0;
done:
    json_decref(o);
    if (ret != 0)
        sg__create_req_clear(out);
    return ret;
}

void sg__create_req_clear(sg__create_req_t *r)
{
    free(r->token);
    r->token = NULL;
    json_decref(r->env);
    r->env = NULL;
    json_decref(r->metadata);
    r->metadata = NULL;
}

/* ---- address pool ---------------------------------------------------------------------------- */

int sg__addrpool_init(sg__addrpool_t *p, const char *cidr)
{
    memset(p, 0, sizeof(*p));
    char buf[64];
    const char *slash = strchr(cidr, '/');
    if (slash == NULL || (size_t)(slash - cidr) >= sizeof(buf))
        return SG_EINVAL;
    memcpy(buf, cidr, slash - cidr);
    buf[slash - cidr] = '\0';
    struct in_addr a;
    if (inet_pton(AF_INET, buf, &a) != 1)
        return SG_EINVAL;
    char *end;
    long pl = strtol(slash + 1, &end, 10);
    if (*end != '\0' || pl < 8 || pl > 29)
        return SG_EINVAL;
    p->prefix = (uint32_t)pl;
    uint32_t mask = 0xffffffffu << (32 - pl);
    p->base = ntohl(a.s_addr) & mask;
    p->size = 1u << (32 - pl);
    p->used = calloc((p->size + 7) / 8, 1);
    if (p->used == NULL)
        return SG_ENOMEM;
    p->next = 2;
    return 0;
}

void sg__addrpool_free(sg__addrpool_t *p)
{
    free(p->used);
    p->used = NULL;
}

static bool bit(const sg__addrpool_t *p, uint32_t i) { return p->used[i / 8] & (1u << (i % 8)); }

int sg__addrpool_alloc(sg__addrpool_t *p)
{
    uint32_t usable = p->size - 3; /* network, bridge, broadcast */
    for (uint32_t n = 0; n < usable; n++) {
        uint32_t i = p->next;
        p->next = p->next + 1 >= p->size - 1 ? 2 : p->next + 1;
        if (!bit(p, i)) {
            p->used[i / 8] |= 1u << (i % 8);
            return (int)i;
        }
    }
    return SG_ENOROOM;
}

int sg__addrpool_take(sg__addrpool_t *p, uint32_t i)
{
    if (i < 2 || i >= p->size - 1)
        return SG_EINVAL;
    if (bit(p, i))
        return SG_EEXISTS;
    p->used[i / 8] |= 1u << (i % 8);
    return 0;
}

void sg__addrpool_release(sg__addrpool_t *p, uint32_t i)
{
    if (i >= 2 && i < p->size - 1)
        p->used[i / 8] &= ~(1u << (i % 8));
}

uint32_t sg__addrpool_addr(const sg__addrpool_t *p, uint32_t i) { return p->base + i; }

int sg__addrpool_index(const sg__addrpool_t *p, const char *dotted)
{
    struct in_addr a;
    if (inet_pton(AF_INET, dotted, &a) != 1)
        return SG_EINVAL;
    uint32_t h = ntohl(a.s_addr);
    if (h < p->base || h - p->base >= p->size)
        return SG_EINVAL;
    return (int)(h - p->base);
}

/* ---- proxy head ------------------------------------------------------------------------------- */

static bool hname(const struct phr_header *h, const char *name)
{
    return h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0;
}

static bool contains_token_ci(const char *v, size_t len, const char *tok)
{
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= len; i++)
        if (strncasecmp(v + i, tok, tl) == 0)
            return true;
    return false;
}

/* A Content-Length value: 1..18 digits (optional surrounding blanks were trimmed by the parser),
 * else -1. */
static long long parse_length(const char *v, size_t len)
{
    if (len < 1 || len > 18)
        return -1;
    long long n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

int sg__proxy_parse_head(const char *buf, size_t len, const char *token, sg__proxy_head_t *out)
{
    memset(out, 0, sizeof(*out));
    const char *method, *path;
    size_t mlen, plen, nh = MAX_PROXY_HEADERS;
    int minor;
    struct phr_header hs[MAX_PROXY_HEADERS];
    int r = phr_parse_request(buf, len, &method, &mlen, &path, &plen, &minor, hs, &nh, 0);
    if (r == -2)
        return 0;
    if (r < 0) {
        out->status = 400;
        out->message = "malformed request";
        return -1;
    }
    out->head_len = (size_t)r;
    const struct phr_header *tok = NULL, *sid = NULL, *sport = NULL;
    bool conn_upgrade = false, has_upgrade = false, conn_close = minor < 1, has_te = false;
    int ncl = 0;
    long long cl = 0;
    for (size_t i = 0; i < nh; i++) {
        if (hs[i].name == NULL) { /* obsolete line folding: refuse rather than guess */
            out->status = 400;
            out->message = "malformed request";
            return -1;
        }
        if (hname(&hs[i], "x-sandgate-node-token")) {
            if (tok != NULL)
                goto dup;
            tok = &hs[i];
        } else if (hname(&hs[i], "x-sandgate-sandbox-id")) {
            if (sid != NULL)
                goto dup;
            sid = &hs[i];
        } else if (hname(&hs[i], "x-sandgate-sandbox-port")) {
            if (sport != NULL)
                goto dup;
            sport = &hs[i];
        } else if (hname(&hs[i], "connection")) {
            conn_upgrade |= contains_token_ci(hs[i].value, hs[i].value_len, "upgrade");
            conn_close |= contains_token_ci(hs[i].value, hs[i].value_len, "close");
        } else if (hname(&hs[i], "upgrade")) {
            has_upgrade = true;
        } else if (hname(&hs[i], "transfer-encoding")) {
            has_te = true;
        } else if (hname(&hs[i], "content-length")) {
            ncl++;
            cl = parse_length(hs[i].value, hs[i].value_len);
        }
    }
    out->upgrade = conn_upgrade && has_upgrade;
    out->is_head = mlen == 4 && memcmp(method, "HEAD", 4) == 0;
    /* anything unusual (two lengths, a bad one, chunked, an upgrade): one request, then close */
    out->keepalive = !conn_close && !out->upgrade && !has_upgrade && !has_te && ncl <= 1 && cl >= 0;
    out->body_len = out->keepalive ? cl : 0;
    if (tok == NULL && sid == NULL && sport == NULL && mlen == 3 && memcmp(method, "GET", 3) == 0 &&
        plen == 7 && memcmp(path, "/health", 7) == 0) {
        out->health = true;
        return 1;
    }
    out->has_token = tok != NULL;
    if (tok != NULL) {
        char tmp[1024];
        if (tok->value_len < sizeof(tmp)) {
            memcpy(tmp, tok->value, tok->value_len);
            tmp[tok->value_len] = '\0';
            out->token_ok = sg_ct_streq(tmp, token);
        }
    }
    if (!out->token_ok) {
        out->status = 401;
        out->message = "invalid node token";
        return 1;
    }
    if (sid == NULL || !sg__valid_sandbox_id(sid->value, sid->value_len)) {
        out->status = 400;
        out->message = "missing or malformed X-Sandgate-Sandbox-Id";
        return 1;
    }
    memcpy(out->sandbox, sid->value, sid->value_len);
    out->sandbox[sid->value_len] = '\0';
    int port = 0;
    if (sport == NULL || sport->value_len < 1 || sport->value_len > 5)
        goto badport;
    for (size_t i = 0; i < sport->value_len; i++) {
        if (sport->value[i] < '0' || sport->value[i] > '9')
            goto badport;
        port = port * 10 + (sport->value[i] - '0');
    }
    if (port < 1 || port > 65535)
        goto badport;
    out->port = port;

    /* Rewrite: request line, headers minus ours and the client's Connection/Keep-Alive; a request
     * that cannot be followed by another on its connection gets "Connection: close" (a keep-alive
     * one asks nothing: HTTP/1.1 keeps the sandbox's connection open for the node to reuse). */
    size_t cap = out->head_len + 64;
    char *o = malloc(cap);
    if (o == NULL) {
        out->status = 500;
        out->message = "out of memory";
        return 1;
    }
    size_t n = 0;
    n += (size_t)snprintf(o + n, cap - n, "%.*s %.*s HTTP/1.%d\r\n", (int)mlen, method, (int)plen,
                          path, minor);
    for (size_t i = 0; i < nh; i++) {
        const struct phr_header *h = &hs[i];
        if (h == tok || h == sid || h == sport)
            continue;
        if (!out->upgrade && (hname(h, "connection") || hname(h, "keep-alive")))
            continue;
        if (n + h->name_len + h->value_len + 4 > cap)
            break; /* cannot happen: the output is never longer than the input + 64 */
        memcpy(o + n, h->name, h->name_len);
        n += h->name_len;
        memcpy(o + n, ": ", 2);
        n += 2;
        memcpy(o + n, h->value, h->value_len);
        n += h->value_len;
        memcpy(o + n, "\r\n", 2);
        n += 2;
    }
    if (!out->upgrade && !out->keepalive)
        n += (size_t)snprintf(o + n, cap - n, "Connection: close\r\n");
    n += (size_t)snprintf(o + n, cap - n, "\r\n");
    out->out = o;
    out->out_len = n;
    return 1;
badport:
    out->status = 400;
    out->message = "missing or malformed X-Sandgate-Sandbox-Port";
    return 1;
dup:
    out->status = 400;
    out->message = "duplicate X-Sandgate header";
    return 1;
}

int sg__proxy_rewrite_response(const char *buf, size_t len, char **out, size_t *out_len,
                               size_t *head_len, int *status)
{
    long long body_len;
    return sg__proxy_rewrite_response_ka(buf, len, false, false, out, out_len, head_len, status,
                                         &body_len);
}

int sg__proxy_rewrite_response_ka(const char *buf, size_t len, bool keepalive, bool is_head,
                                  char **out, size_t *out_len, size_t *head_len, int *status,
                                  long long *body_len)
{
    int minor;
    const char *msg;
    size_t msg_len, nh = MAX_PROXY_HEADERS;
    struct phr_header hs[MAX_PROXY_HEADERS];
    int r = phr_parse_response(buf, len, &minor, status, &msg, &msg_len, hs, &nh, 0);
    if (r == -2)
        return 0;
    if (r < 0)
        return -1;
    *head_len = (size_t)r;
    bool final = *status != 101 && *status >= 200;
    *body_len = -1;
    if (final && keepalive) {
        int ncl = 0;
        long long cl = 0;
        bool has_te = false;
        for (size_t i = 0; i < nh; i++) {
            if (hs[i].name == NULL)
                continue;
            if (hname(&hs[i], "content-length")) {
                ncl++;
                cl = parse_length(hs[i].value, hs[i].value_len);
            } else if (hname(&hs[i], "transfer-encoding")) {
                has_te = true;
            }
        }
        if (is_head || *status == 204 || *status == 304)
            *body_len = 0;
        else if (!has_te && ncl == 1 && cl >= 0)
            *body_len = cl;
    }
    /* hop-by-hop headers go for every final response; "Connection: close" when the end of the
     * response is the end of the connection */
    bool strip = final, close = final && *body_len < 0;
    size_t cap = (size_t)r + 64;
    char *o = malloc(cap);
    if (o == NULL)
        return -1;
    /* a framed response on a kept-alive connection is ours to version (RFC 9110 6.2: an
     * intermediary sends its own version): HTTP/1.1, so the client may reuse the connection */
    if (final && !close)
        minor = 1;
    size_t n = (size_t)snprintf(o, cap, "HTTP/1.%d %d %.*s\r\n", minor, *status, (int)msg_len, msg);
    for (size_t i = 0; i < nh; i++) {
        const struct phr_header *h = &hs[i];
        if (h->name == NULL || (strip && (hname(h, "connection") || hname(h, "keep-alive"))))
            continue;
        if (n + h->name_len + h->value_len + 4 > cap)
            break; /* cannot happen: the output is never longer than the input + 64 */
        memcpy(o + n, h->name, h->name_len);
        n += h->name_len;
        memcpy(o + n, ": ", 2);
        n += 2;
        memcpy(o + n, h->value, h->value_len);
        n += h->value_len;
        memcpy(o + n, "\r\n", 2);
        n += 2;
    }
    if (close)
        n += (size_t)snprintf(o + n, cap - n, "Connection: close\r\n");
    n += (size_t)snprintf(o + n, cap - n, "\r\n");
    *out = o;
    *out_len = n;
    return 1;
}

bool sg__proxy_response_keepalive(const char *buf, size_t len)
{
    int minor, status;
    const char *msg;
    size_t msg_len, nh = MAX_PROXY_HEADERS;
    struct phr_header hs[MAX_PROXY_HEADERS];
    if (phr_parse_response(buf, len, &minor, &status, &msg, &msg_len, hs, &nh, 0) <= 0 || minor != 1)
        return false;
    for (size_t i = 0; i < nh; i++)
        if (hs[i].name != NULL && hname(&hs[i], "connection") &&
            contains_token_ci(hs[i].value, hs[i].value_len, "close"))
            return false;
    return true;
}

bool sg__proxy_head_chunked(const char *head, size_t len)
{
    int minor, status;
    const char *msg;
    size_t msg_len, nh = MAX_PROXY_HEADERS;
    struct phr_header hs[MAX_PROXY_HEADERS];
    if (phr_parse_response(head, len, &minor, &status, &msg, &msg_len, hs, &nh, 0) < 0)
        return false;
    for (size_t i = 0; i < nh; i++)
        if (hs[i].name != NULL && hname(&hs[i], "transfer-encoding") &&
            contains_token_ci(hs[i].value, hs[i].value_len, "chunked"))
            return true;
    return false;
}

enum { CT_SIZE, CT_EXT, CT_SIZE_LF, CT_DATA, CT_DATA_CR, CT_DATA_LF, CT_TRAILER_START, CT_TRAILER,
       CT_END_LF, CT_DONE };

int sg__chunk_track(sg__chunk_track_t *t, const char *buf, size_t len)
{
    for (size_t i = 0; i < len && t->state != CT_DONE; i++) {
        char ch = buf[i];
        switch (t->state) {
        case CT_SIZE:
            if (isxdigit((unsigned char)ch)) {
                if (++t->digits > 15)
                    return -1; /* past 2^60 bytes: not a real chunk */
                t->left = t->left * 16 + (uint64_t)(isdigit((unsigned char)ch) ? ch - '0'
                                                                               : (ch | 0x20) - 'a' + 10);
                break;
            }
            if (t->digits == 0)
                return -1;
            if (ch == '\n')
                goto size_done;
            t->state = ch == '\r' ? CT_SIZE_LF : CT_EXT;
            break;
        case CT_EXT: /* chunk extensions: skipped up to the end of the line */
            if (ch == '\r')
                t->state = CT_SIZE_LF;
            else if (ch == '\n')
                goto size_done;
            break;
        case CT_SIZE_LF:
            if (ch != '\n')
                return -1;
        size_done:
            t->digits = 0;
            t->state = t->left == 0 ? CT_TRAILER_START : CT_DATA;
            break;
        case CT_DATA: {
            uint64_t take = len - i < t->left ? len - i : t->left;
            t->left -= take;
            i += take - 1;
            if (t->left == 0)
                t->state = CT_DATA_CR;
            break;
        }
        case CT_DATA_CR:
            if (ch != '\r')
                return -1;
            t->state = CT_DATA_LF;
            break;
        case CT_DATA_LF:
            if (ch != '\n')
                return -1;
            t->state = CT_SIZE;
            break;
        case CT_TRAILER_START:
            t->state = ch == '\r' ? CT_END_LF : ch == '\n' ? CT_DONE : CT_TRAILER;
            break;
        case CT_TRAILER:
            if (ch == '\n')
                t->state = CT_TRAILER_START;
            break;
        case CT_END_LF:
            if (ch != '\n')
                return -1;
            t->state = CT_DONE;
            break;
        }
    }
    return t->state == CT_DONE ? 1 : 0;
}

const char *sg__chunk_abort_bytes(const sg__chunk_track_t *t)
{
    switch (t->state) {
    case CT_SIZE:
        /* At a boundary: announce one more byte that never comes. Inside a non-zero size: end
         * the size line. A size of 0 so far could only end the body: nothing to do. */
        if (t->digits == 0)
            return "1\r\n";
        return t->left > 0 ? "\r\n" : "";
    case CT_EXT:
        return t->left > 0 ? "\r\n" : "";
    case CT_SIZE_LF:
        return t->left > 0 ? "\n" : "";
    case CT_DATA_CR:
        return "\r\n1\r\n";
    case CT_DATA_LF:
        return "\n1\r\n";
    default: /* inside data already, or in the trailers of a body that did end */
        return "";
    }
}

int sg__parse_hostport(const char *s, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    char host[128];
    const char *colon;
    const char *h = s;
    size_t hl;
    if (*s == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':')
            return SG_EINVAL;
        h = s + 1;
        hl = rb - h;
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return SG_EINVAL;
        hl = colon - s;
    }
    if (hl == 0 || hl >= sizeof(host))
        return SG_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535 || colon[1] == '\0')
        return SG_EINVAL;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)out) == 0)
        return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)out) == 0)
        return 0;
    return SG_EINVAL;
}
