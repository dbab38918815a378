/*
 * routing: the Host / e2b-sandbox-* header parser (see routing.h for the grammar).
 *
 * Owns nothing: every function reads caller bytes and writes only into the caller's sg_routing_t.
 * Invariants: no read past host_len / hdr_*_len (inputs need not be NUL-terminated); the host is
 * lower-cased into a bounded stack copy (hosts are case-insensitive, RFC 3986 3.2.2, and browsers
 * already send them lower-case), so an over-long host is an error before any copy; error strings
 * are static, so callers may keep the pointer. Header values are NOT lower-cased: the SDK sends
 * ids exactly as the API returned them, and an upper-case id there is a client bug worth a 400.
 */
#include "routing/routing.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

static bool host_is_ip(const char *h, size_t len);
static bool label_tail_ok(const char *s, size_t len);
static sg_routing_kind_t fail(sg_routing_t *out, const char *msg);
static sg_routing_kind_t shared(sg_routing_t *out, const char *hdr_id, size_t hdr_id_len,
                                const char *hdr_port, size_t hdr_port_len);

sg_routing_kind_t sg_routing_resolve(const char *host, size_t host_len, const char *domain,
                                     const char *hdr_id, size_t hdr_id_len, const char *hdr_port,
                                     size_t hdr_port_len, sg_routing_t *out)
{
    memset(out, 0, sizeof(*out));
    if (host == NULL)
        host_len = 0;
    if (host_len > SG_ROUTING_MAX_HOST + 7) /* name + ":65535" + "." */
        return fail(out, "Host header too long");

    /* Split off ":port". An IPv6 literal keeps its brackets; its port follows the ']'. */
    size_t n = host_len;
    if (n > 0 && host[0] == '[') {
        const char *rb = memchr(host, ']', n);
        if (rb == NULL)
            return fail(out, "Host header has an unterminated IPv6 literal");
        size_t after = (size_t)(rb - host) + 1;
        if (after < n && (host[after] != ':' || sg_routing_parse_port(host + after + 1, n - after - 1) < 0))
            return fail(out, "Host header has an invalid port");
        if (!host_is_ip(host + 1, after - 2))
            return fail(out, "Host header has an invalid IPv6 literal");
        return shared(out, hdr_id, hdr_id_len, hdr_port, hdr_port_len);
    }
    const char *colon = memchr(host, ':', n);
    if (colon != NULL) {
        size_t at = (size_t)(colon - host);
        if (sg_routing_parse_port(colon + 1, n - at - 1) < 0)
            return fail(out, "Host header has an invalid port");
        n = at;
    }
    if (n > 0 && host[n - 1] == '.')
        n--;
    if (n > SG_ROUTING_MAX_HOST)
        return fail(out, "Host header too long");

    char h[SG_ROUTING_MAX_HOST + 1];
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)host[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                   c == '_'))
            return fail(out, "Host header has invalid characters");
        h[i] = (char)c;
    }
    h[n] = '\0';

    if (n == 0 || strcmp(h, "localhost") == 0 || host_is_ip(h, n))
        return shared(out, hdr_id, hdr_id_len, hdr_port, hdr_port_len);

    size_t dn = domain != NULL ? strlen(domain) : 0;
    if (dn > 0 && domain[dn - 1] == '.')
        dn--;
    if (dn == 0 || dn > n || strncasecmp(h + n - dn, domain, dn) != 0 ||
        (n > dn && h[n - dn - 1] != '.'))
        return shared(out, hdr_id, hdr_id_len, hdr_port, hdr_port_len); /* outside the domain */
    if (n == dn)
        return shared(out, hdr_id, hdr_id_len, hdr_port, hdr_port_len); /* the bare domain */

    size_t ln = n - dn - 1; /* the part left of ".<domain>" */
    if (memchr(h, '.', ln) != NULL)
        return fail(out, "Host has too many labels before the domain (want <port>-<sandboxID>.<domain>)");
    if (ln == 3 && memcmp(h, "api", 3) == 0)
        return out->kind = SG_ROUTE_API;
    if (ln == 7 && memcmp(h, "sandbox", 7) == 0)
        return shared(out, hdr_id, hdr_id_len, hdr_port, hdr_port_len);
    if (ln > 63)
        return fail(out, "Host label longer than 63 characters");

    const char *dash = memchr(h, '-', ln);
    if (dash == NULL)
        return fail(out, "Host must be <port>-<sandboxID>.<domain>: missing sandbox ID");
    int port = sg_routing_parse_port(h, (size_t)(dash - h));
    if (port < 0)
        return fail(out, "Host has an invalid port (want 1-65535 before the first '-')");
    const char *id = dash + 1, *end = h + ln;
    const char *idend = memchr(id, '-', (size_t)(end - id));
    if (idend == NULL)
        idend = end;
    if (!sg_routing_id_valid(id, (size_t)(idend - id)))
        return fail(out, "Host has an invalid sandbox ID (want [a-z0-9]{1,63})");
    if (idend < end && !label_tail_ok(idend + 1, (size_t)(end - idend - 1)))
        return fail(out, "Host has an invalid suffix after the sandbox ID");

    out->kind = SG_ROUTE_SANDBOX;
    out->port = port;
    memcpy(out->sandbox_id, id, (size_t)(idend - id));
    out->sandbox_id[idend - id] = '\0';
    return out->kind;
}

int sg_routing_parse_port(const char *s, size_t len)
{
    if (len == 0 || len > 5 || s[0] == '0')
        return -1;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= 65535 ? v : -1;
}

bool sg_routing_id_valid(const char *s, size_t len)
{
    if (len == 0 || len > 63)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
            return false;
    return true;
}

/* ---- helpers ---- */

static sg_routing_kind_t fail(sg_routing_t *out, const char *msg)
{
    out->kind = SG_ROUTE_ERROR;
    out->error = msg;
    out->port = 0;
    out->sandbox_id[0] = '\0';
    return out->kind;
}

static sg_routing_kind_t shared(sg_routing_t *out, const char *hdr_id, size_t hdr_id_len,
                                const char *hdr_port, size_t hdr_port_len)
{
    if (hdr_id == NULL && hdr_port == NULL)
        return out->kind = SG_ROUTE_API;
    if (hdr_id == NULL)
        return fail(out, "Missing header e2b-sandbox-id (e2b-sandbox-port was given)");
    if (hdr_port == NULL)
        return fail(out, "Missing header e2b-sandbox-port (e2b-sandbox-id was given)");
    if (!sg_routing_id_valid(hdr_id, hdr_id_len))
        return fail(out, "Invalid header e2b-sandbox-id (want [a-z0-9]{1,63})");
    int port = sg_routing_parse_port(hdr_port, hdr_port_len);
    if (port < 0)
        return fail(out, "Invalid header e2b-sandbox-port (want 1-65535)");
    out->kind = SG_ROUTE_SANDBOX;
    out->by_header = true;
    out->port = port;
    memcpy(out->sandbox_id, hdr_id, hdr_id_len);
    out->sandbox_id[hdr_id_len] = '\0';
    return out->kind;
}

/* An IP literal (v4 dotted quad or v6 without brackets), by inet_pton on a bounded copy. */
static bool host_is_ip(const char *h, size_t len)
{
    char buf[INET6_ADDRSTRLEN + 1];
    unsigned char addr[16];
    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, h, len);
    buf[len] = '\0';
    return inet_pton(AF_INET, buf, addr) == 1 || inet_pton(AF_INET6, buf, addr) == 1;
}

/* The free-form suffix: DNS label characters, not ending in '-' (h is already lower-case). */
static bool label_tail_ok(const char *s, size_t len)
{
    if (len == 0 || s[len - 1] == '-')
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}
