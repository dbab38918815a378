/*
 * routing: where a request goes, from its Host (":authority") and, on a shared host, the
 * e2b-sandbox-id / e2b-sandbox-port headers. Pure functions over bytes: no allocation, no I/O,
 * safe on any thread, fuzzed (tests/fuzz/fuzz_host.c).
 *
 * Hosts (matched case-insensitively, an optional ":port" and one trailing dot ignored):
 *   <port>-<sandboxID>[-<anything>].<domain>  sandbox port (1..65535, no leading zero; id
 *                                             [a-z0-9]{1,63} after lower-casing)
 *   api.<domain>                              the API
 *   sandbox.<domain>, <domain>, localhost, an IPv4 literal, an [IPv6] literal, any host outside
 *   <domain> (a balancer's own name)          shared: the e2b-sandbox-* headers when present,
 *                                             else the API
 *   any other name under <domain>             error (400)
 * On a shared host both headers must be present and valid, or neither (one alone is an error).
 */
#ifndef SG_ROUTING_H
#define SG_ROUTING_H

#include <stdbool.h>
#include <stddef.h>

#define SG_ROUTING_MAX_HOST 253 /* longest DNS name; longer hosts are errors */
#define SG_ROUTING_ENVD_PORT 49983

typedef enum {
    SG_ROUTE_API = 0,  /* the API (and the gateway's own paths) */
    SG_ROUTE_SANDBOX,  /* proxy to sandbox_id:port */
    SG_ROUTE_ERROR,    /* answer 400 with `error` */
} sg_routing_kind_t;

typedef struct {
    sg_routing_kind_t kind;
    bool by_header;        /* SANDBOX: chosen by the e2b-sandbox-* headers */
    int port;              /* SANDBOX: 1..65535 */
    char sandbox_id[64];   /* SANDBOX: NUL-terminated [a-z0-9]{1,63}; "" otherwise */
    const char *error;     /* ERROR: static message naming the problem; NULL otherwise */
} sg_routing_t;

/*
 * Routes one request. host: the Host/:authority bytes (may be NULL/0 when absent); domain: the
 * configured public domain (NUL-terminated, e.g. "sandgate.example.com"); hdr_id/hdr_port: the
 * e2b-sandbox-id and e2b-sandbox-port header values or NULL when absent. Never fails to fill out;
 * returns out->kind.
 */
sg_routing_kind_t sg_routing_resolve(const char *host, size_t host_len, const char *domain,
                                     const char *hdr_id, size_t hdr_id_len, const char *hdr_port,
                                     size_t hdr_port_len, sg_routing_t *out);

/* Parses a decimal port 1..65535 without sign, spaces or leading zeros; returns it or -1. */
int sg_routing_parse_port(const char *s, size_t len);

/* True when s[0..len) is a sandbox id: [a-z0-9]{1,63}. */
bool sg_routing_id_valid(const char *s, size_t len);

#endif
