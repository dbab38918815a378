/*
 * ratelimit: per-client-address request rate limit (http.rate_limit_rps, rate_limit_burst),
 * one token bucket per address, shared by every worker so a client gets the configured rate
 * whichever worker its connections land on.
 *
 * Owns a fixed table of SLOTS buckets (bounded memory whatever the number of clients), direct-
 * mapped by a hash of the address text; a colliding address takes the slot over with a full
 * bucket (it fails open for the evicted client rather than growing). One mutex guards the table:
 * the critical section is a few arithmetic operations, and it is skipped entirely when the limit
 * is off (rate_limit_rps = 0, the default). Health, readiness and metrics are never limited
 * (balancer probes); the caller checks before everything else.
 */
#include <pthread.h>
#include <string.h>
#include "gateway/internal.h"

#define SLOTS 8192

typedef struct {
    char addr[48]; /* "" = free */
    double tokens;
    long long last_ms;
} bucket_t;

static bucket_t buckets[SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

int sg__ratelimit_check(h2o_req_t *req)
{
    const sg_gateway_config_t *c = &sg_server.cfg;
    if (c->http.rate_limit_rps <= 0)
        return 0;
    char addr[48];
    sg_client_addr(req, addr, sizeof(addr));
    if (addr[0] == '\0')
        return 0; /* unix socket or unknown peer: nothing to key on */
    double rps = c->http.rate_limit_rps;
    double burst = c->http.rate_limit_burst > 0 ? c->http.rate_limit_burst : 1;
    uint32_t h = 2166136261u;
    for (const char *s = addr; *s != '\0'; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    long long now = sg_now_ms();
    int wait_s = 0;

    pthread_mutex_lock(&lock);
    bucket_t *b = &buckets[h % SLOTS];
    if (strcmp(b->addr, addr) != 0) {
        snprintf(b->addr, sizeof(b->addr), "%s", addr);
        b->tokens = burst;
        b->last_ms = now;
    }
    if (now > b->last_ms) {
        b->tokens += (double)(now - b->last_ms) * rps / 1000.0;
        if (b->tokens > burst)
            b->tokens = burst;
        b->last_ms = now;
    }
    if (b->tokens >= 1.0)
        b->tokens -= 1.0;
    else
        wait_s = (int)((1.0 - b->tokens) / rps + 0.999); /* whole seconds, rounded up */
    pthread_mutex_unlock(&lock);

    if (wait_s == 0)
        return 0;
    char *ra = h2o_mem_alloc_pool(&req->pool, 16);
    int n = snprintf(ra, 16, "%d", wait_s < 1 ? 1 : wait_s);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, ra, (size_t)n);
    sg_http_error(req, 429, "Too many requests from this address");
    return -1;
}
