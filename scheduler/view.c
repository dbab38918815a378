/*
 * The cached view of nodes and the placement decision over it.
 *
 * A view is an array of nodes built from one refresh (HMGET of each node hash and its alloc hash);
 * it is owned by one scheduler (one loop) and replaced whole by the next refresh, so placement
 * never reads Redis per node. Placement is a single pass: filter (ready, not cordoned, live
 * heartbeat, not suspect, template, labels, CPU with overcommit, memory, count), score by policy,
 * keep the best k. The view may be a little stale: the reservation script re-checks fit
 * atomically, so staleness costs a retry, never an over-commit.
 */
#include <stdlib.h>
#include <string.h>
#include "scheduler/sched_int.h"

static int reply_int(redisReply *r, size_t i, int def);
static const char *reply_str(redisReply *r, size_t i);
static double score(const sg__node_t *n, const sg__fit_req_t *r);

void sg__view_clear(sg__view_t *v)
{
    for (size_t i = 0; i < v->n; i++) {
        free(v->nodes[i].templates);
        if (v->nodes[i].labels != NULL)
            json_decref(v->nodes[i].labels);
    }
    free(v->nodes);
    v->nodes = NULL;
    v->n = 0;
}

sg__node_t *sg__view_find(sg__view_t *v, const char *id)
{
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->nodes[i].id, id) == 0)
            return &v->nodes[i];
    return NULL;
}

bool sg__node_live(const sg__node_t *n, int down_after_ms, long long now_ms)
{
    return n->heartbeat_ms > 0 && now_ms - n->heartbeat_ms <= down_after_ms;
}

bool sg__node_fits(const sg__node_t *n, const sg__fit_req_t *r, long long now_ms)
{
    if (!n->ready || n->cordoned || !sg__node_live(n, r->down_after_ms, now_ms))
        return false;
    if (n->suspect_until_ms > now_ms)
        return false;
    if (n->alloc_n + 1 > n->cap_n || n->alloc_mem + r->mem_mb > n->cap_mem)
        return false;
    if ((double)(n->alloc_vcpu + r->vcpu) > (double)n->cap_vcpu * r->overcommit + 1e-9)
        return false;
    if (r->template_id != NULL) {
        /* templates is ",a,b,": a token match without allocating. */
        size_t tl = strlen(r->template_id);
        const char *p = n->templates;
        bool found = false;
        while (p != NULL && (p = strstr(p, r->template_id)) != NULL) {
            if (p > n->templates && p[-1] == ',' && p[tl] == ',') {
                found = true;
                break;
            }
            p++;
        }
        if (!found)
            return false;
    }
    if (r->labels != NULL && json_object_size(r->labels) > 0) {
        const char *k;
        json_t *v;
        json_object_foreach(r->labels, k, v) {
            json_t *have = n->labels != NULL ? json_object_get(n->labels, k) : NULL;
            if (!json_is_string(have) || !json_is_string(v) ||
                strcmp(json_string_value(have), json_string_value(v)) != 0)
                return false;
        }
    }
    return true;
}

size_t sg__place(const sg__view_t *v, const sg__fit_req_t *r, long long now_ms, size_t *out,
                 size_t k)
{
    double best[16];
    size_t m = 0;
    if (k > 16)
        k = 16;
    for (size_t i = 0; i < v->n; i++) {
        const sg__node_t *n = &v->nodes[i];
        if (!sg__node_fits(n, r, now_ms))
            continue;
        double s = score(n, r);
        /* Insertion into the small sorted top-k (higher score first). */
        size_t pos = m;
        while (pos > 0 && best[pos - 1] < s)
            pos--;
        if (pos >= k)
            continue;
        size_t last = m < k ? m : k - 1;
        for (size_t j = last; j > pos; j--) {
            best[j] = best[j - 1];
            out[j] = out[j - 1];
        }
        best[pos] = s;
        out[pos] = i;
        if (m < k)
            m++;
    }
    return m;
}

int sg__node_from_replies(sg__node_t *n, const char *id, redisReply *node, redisReply *alloc)
{
    /* Field order of the HMGET in sched.c: api proxy status cordoned heartbeat_ms cap_vcpu
     * cap_mem_mb cap_sandboxes templates labels usage_cpu_pct usage_mem_mb. */
    memset(n, 0, sizeof(*n));
    if (node == NULL || node->type != REDIS_REPLY_ARRAY || node->elements < 12)
        return SG_EPROTO;
    snprintf(n->id, sizeof(n->id), "%s", id);
    const char *s;
    if ((s = reply_str(node, 0)) == NULL)
        return SG_ENOTFOUND; /* the hash expired between ZRANGE and HMGET */
    snprintf(n->api, sizeof(n->api), "%s", s);
    snprintf(n->proxy, sizeof(n->proxy), "%s", (s = reply_str(node, 1)) != NULL ? s : "");
    n->ready = (s = reply_str(node, 2)) != NULL && strcmp(s, "ready") == 0;
    n->cordoned = (s = reply_str(node, 3)) != NULL && strcmp(s, "1") == 0;
    n->heartbeat_ms = (s = reply_str(node, 4)) != NULL ? atoll(s) : 0;
    n->cap_vcpu = reply_int(node, 5, 0);
    n->cap_mem = reply_int(node, 6, 0);
    n->cap_n = reply_int(node, 7, 0);
    s = reply_str(node, 8);
    size_t tl = s != NULL ? strlen(s) : 0;
    if ((n->templates = malloc(tl + 3)) == NULL)
        return SG_ENOMEM;
    snprintf(n->templates, tl + 3, ",%s,", s != NULL ? s : "");
    if ((s = reply_str(node, 9)) != NULL) {
        n->labels = json_loads(s, 0, NULL);
        if (n->labels != NULL && !json_is_object(n->labels)) {
            json_decref(n->labels);
            n->labels = NULL;
        }
    }
    n->used_cpu_pct = reply_int(node, 10, 0);
    n->used_mem_mb = reply_int(node, 11, 0);
    if (alloc != NULL && alloc->type == REDIS_REPLY_ARRAY && alloc->elements >= 3) {
        n->alloc_vcpu = reply_int(alloc, 0, 0);
        n->alloc_mem = reply_int(alloc, 1, 0);
        n->alloc_n = reply_int(alloc, 2, 0);
    }
    return 0;
}

static double score(const sg__node_t *n, const sg__fit_req_t *r)
{
    if (r->policy == SG_SCHED_RANDOM) {
        /* Placement randomness needs no cryptographic quality; it only spreads load. */
        return (double)rand();
    }
    double cpu_cap = (double)n->cap_vcpu * r->overcommit;
    double fc = cpu_cap > 0 ? (double)(n->alloc_vcpu + r->vcpu) / cpu_cap : 1.0;
    double fm = n->cap_mem > 0 ? (double)(n->alloc_mem + r->mem_mb) / n->cap_mem : 1.0;
    double fn = n->cap_n > 0 ? (double)(n->alloc_n + 1) / n->cap_n : 1.0;
    double used = (fc + fm + fn) / 3.0;
    return r->policy == SG_SCHED_MOST_ALLOCATED ? used : 1.0 - used;
}

static const char *reply_str(redisReply *r, size_t i)
{
    if (i >= r->elements || r->element[i]->type != REDIS_REPLY_STRING)
        return NULL;
    return r->element[i]->str;
}

static int reply_int(redisReply *r, size_t i, int def)
{
    const char *s = reply_str(r, i);
    if (s == NULL)
        return def;
    long v = strtol(s, NULL, 10);
    if (v < 0)
        return 0;
    return v > 1000000000 ? 1000000000 : (int)v;
}
