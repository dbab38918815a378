/*
 * Prometheus metrics: request counts and latency histograms per route and status, auth cache
 * hits and misses, and gauges.
 *
 * Each worker counts into its own fixed table of (route, status) slots, so the hot path takes no
 * lock; a scrape sums every worker's table with relaxed atomic loads. Routes are the static route
 * patterns (bounded label cardinality); statuses are whatever occurred (bounded by the table).
 */
#include <string.h>
#include "gateway/internal.h"

static const double bucket_le[SG_METRIC_BUCKETS - 1] = {0.001, 0.0025, 0.005, 0.01, 0.025,
                                                        0.05,  0.1,    0.25,  0.5,  1,
                                                        2.5,   5,      10};

const char *sg__api_route_method(int idx);

void sg__metrics_observe(sg_worker_t *w, int route, int status, uint64_t us)
{
    sg_metric_slot_t *slot = NULL;
    for (int i = 0; i < SG_METRIC_SLOTS; i++) {
        sg_metric_slot_t *s = &w->metrics[i];
        if (!atomic_load_explicit(&s->used, memory_order_acquire)) {
            s->route = route;
            s->status = status;
            atomic_store_explicit(&s->used, 1, memory_order_release);
            slot = s;
            break;
        }
        if (s->route == route && s->status == status) {
            slot = s;
            break;
        }
    }
    if (slot == NULL)
        return; /* table full: more distinct (route, status) pairs than slots; drop */
    atomic_fetch_add_explicit(&slot->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&slot->sum_us, us, memory_order_relaxed);
    int b = 0;
    while (b < SG_METRIC_BUCKETS - 1 && (double)us / 1e6 > bucket_le[b])
        b++;
    atomic_fetch_add_explicit(&slot->buckets[b], 1, memory_order_relaxed);
}

typedef struct {
    char *buf;
    size_t len, cap;
    h2o_mem_pool_t *pool;
} out_t;

static void outf(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(out_t *o, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t ncap = o->cap * 2 + (size_t)n;
        char *nb = h2o_mem_alloc_pool(o->pool, ncap);
        memcpy(nb, o->buf, o->len);
        o->buf = nb;
        o->cap = ncap;
    }
}

void sg__metrics_render(h2o_req_t *req)
{
    out_t o = {.pool = &req->pool, .cap = 16384};
    o.buf = h2o_mem_alloc_pool(&req->pool, o.cap);

    /* Sum every worker's slots into one table keyed by (route, status). */
    typedef struct {
        int route, status;
        uint64_t count, sum_us, buckets[SG_METRIC_BUCKETS];
    } agg_t;
    static const size_t max_agg = SG_METRIC_SLOTS * 2;
    agg_t *agg = h2o_mem_alloc_pool(&req->pool, sizeof(agg_t) * max_agg);
    size_t nagg = 0;
    for (int wi = 0; wi < sg_server.nworkers; wi++) {
        sg_worker_t *w = &sg_server.workers[wi];
        for (int i = 0; i < SG_METRIC_SLOTS; i++) {
            sg_metric_slot_t *s = &w->metrics[i];
            if (!atomic_load_explicit(&s->used, memory_order_acquire))
                break;
            size_t a = 0;
            while (a < nagg && !(agg[a].route == s->route && agg[a].status == s->status))
                a++;
            if (a == nagg) {
                if (nagg == max_agg)
                    continue;
                memset(&agg[nagg], 0, sizeof(agg_t));
                agg[nagg].route = s->route;
                agg[nagg].status = s->status;
                nagg++;
            }
            agg[a].count += atomic_load_explicit(&s->count, memory_order_relaxed);
            agg[a].sum_us += atomic_load_explicit(&s->sum_us, memory_order_relaxed);
            for (int b = 0; b < SG_METRIC_BUCKETS; b++)
                agg[a].buckets[b] += atomic_load_explicit(&s->buckets[b], memory_order_relaxed);
        }
    }

    outf(&o, "# HELP sandgate_http_requests_total HTTP requests by route and status.\n"
             "# TYPE sandgate_http_requests_total counter\n");
    for (size_t a = 0; a < nagg; a++)
        outf(&o, "sandgate_http_requests_total{method=\"%s\",route=\"%s\",status=\"%d\"} %llu\n",
             sg__api_route_method(agg[a].route), sg__api_route_label(agg[a].route),
             agg[a].status, (unsigned long long)agg[a].count);
    outf(&o, "# HELP sandgate_http_request_duration_seconds Request latency by route and status.\n"
             "# TYPE sandgate_http_request_duration_seconds histogram\n");
    for (size_t a = 0; a < nagg; a++) {
        const char *m = sg__api_route_method(agg[a].route), *r = sg__api_route_label(agg[a].route);
        uint64_t cum = 0;
        for (int b = 0; b < SG_METRIC_BUCKETS; b++) {
            cum += agg[a].buckets[b];
            if (b < SG_METRIC_BUCKETS - 1)
                outf(&o,
                     "sandgate_http_request_duration_seconds_bucket{method=\"%s\",route=\"%s\","
                     "status=\"%d\",le=\"%g\"} %llu\n",
                     m, r, agg[a].status, bucket_le[b], (unsigned long long)cum);
            else
                outf(&o,
                     "sandgate_http_request_duration_seconds_bucket{method=\"%s\",route=\"%s\","
                     "status=\"%d\",le=\"+Inf\"} %llu\n",
                     m, r, agg[a].status, (unsigned long long)cum);
        }
        outf(&o,
             "sandgate_http_request_duration_seconds_sum{method=\"%s\",route=\"%s\",status=\"%d\"}"
             " %.6f\n",
             m, r, agg[a].status, agg[a].sum_us / 1e6);
        outf(&o,
             "sandgate_http_request_duration_seconds_count{method=\"%s\",route=\"%s\","
             "status=\"%d\"} %llu\n",
             m, r, agg[a].status, (unsigned long long)agg[a].count);
    }
    uint64_t hits, misses;
    sg_auth_cache_stats(&hits, &misses);
    outf(&o,
         "# HELP sandgate_auth_cache_hits_total API key look-ups answered from the cache.\n"
         "# TYPE sandgate_auth_cache_hits_total counter\n"
         "sandgate_auth_cache_hits_total %llu\n"
         "# HELP sandgate_auth_cache_misses_total API key look-ups that went to PostgreSQL.\n"
         "# TYPE sandgate_auth_cache_misses_total counter\n"
         "sandgate_auth_cache_misses_total %llu\n",
         (unsigned long long)hits, (unsigned long long)misses);
    uint64_t rh = 0, rm = 0;
    for (int i = 0; i < sg_server.nworkers; i++) {
        uint64_t h, m;
        sg__edge_stats(&sg_server.workers[i], &h, &m);
        rh += h;
        rm += m;
    }
    outf(&o,
         "# HELP sandgate_route_cache_hits_total Sandbox routes answered from a worker's cache.\n"
         "# TYPE sandgate_route_cache_hits_total counter\n"
         "sandgate_route_cache_hits_total %llu\n"
         "# HELP sandgate_route_cache_misses_total Sandbox routes looked up in the Redis catalog.\n"
         "# TYPE sandgate_route_cache_misses_total counter\n"
         "sandgate_route_cache_misses_total %llu\n",
         (unsigned long long)rh, (unsigned long long)rm);
    uint64_t refused, untracked;
    sg__connlimit_stats(&refused, &untracked);
    outf(&o,
         "# HELP sandgate_connections_over_limit_total Connections past "
         "http.max_connections_per_ip (answered 429 or closed).\n"
         "# TYPE sandgate_connections_over_limit_total counter\n"
         "sandgate_connections_over_limit_total %llu\n"
         "# HELP sandgate_connections_untracked_total Connections not counted per address "
         "(the address table's set was full).\n"
         "# TYPE sandgate_connections_untracked_total counter\n"
         "sandgate_connections_untracked_total %llu\n"
         "# HELP sandgate_connections_counted Client connections counted per address now.\n"
         "# TYPE sandgate_connections_counted gauge\n"
         "sandgate_connections_counted %llu\n"
         "# HELP sandgate_upstream_over_limit_total Sandbox requests past "
         "http.max_upstream_per_sandbox (answered 429).\n"
         "# TYPE sandgate_upstream_over_limit_total counter\n"
         "sandgate_upstream_over_limit_total %llu\n",
         (unsigned long long)refused, (unsigned long long)untracked,
         (unsigned long long)sg__connlimit_open(), (unsigned long long)sg__upstream_over_total());
    outf(&o,
         "# HELP sandgate_uptime_seconds Seconds since this gateway started.\n"
         "# TYPE sandgate_uptime_seconds gauge\nsandgate_uptime_seconds %lld\n",
         (sg_now_ms() - sg_server.started_ms) / 1000);

    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("text/plain; version=0.0.4"));
    h2o_send_inline(req, o.buf, o.len);
}
