/*
 * connlimit: open client connections per client address (http.max_connections_per_ip), and
 * requests in flight to each sandbox (http.max_upstream_per_sandbox), counted across every worker
 * thread so a limit is the same whichever workers the kernel hands the connections to. Two
 * tables of the same kind, keyed by 16 bytes (an IPv6 address; a sandbox id's SHA-256 prefix).
 *
 * Owns a fixed, set-associative table: BUCKETS buckets of WAYS entries, an address hashing to one
 * bucket (bounded memory whatever the number of clients). An entry whose count is 0 is free. When
 * all WAYS entries of a bucket hold live addresses, a new address is not tracked: its connection
 * is accepted uncounted (fails open for that address rather than growing or refusing everyone
 * who collides; at 8 entries per bucket that takes thousands of concurrent client addresses).
 * One mutex guards the table: the critical sections are a few comparisons, run once per accept
 * and once per close, never per request.
 *
 * Invariant: every sg__connlimit_acquire() that returns a slot >= 0 is matched by exactly one
 * sg__connlimit_release() of that slot (server.c calls it from the connection's close callback).
 */
#include <pthread.h>
#include <string.h>
#include <netinet/in.h>
#include "gateway/internal.h"

#define BUCKETS 2048
#define WAYS 8

typedef struct {
    uint8_t addr[16]; /* IPv6, or IPv4 as ::ffff:a.b.c.d */
    int count;        /* open connections; 0 = free entry */
} entry_t;

typedef struct {
    entry_t table[BUCKETS * WAYS];
    pthread_mutex_t lock;
    _Atomic uint64_t over_limit, untracked; /* for /metrics */
} ctab_t;

static ctab_t clients = {.lock = PTHREAD_MUTEX_INITIALIZER};
static ctab_t sandboxes = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int tab_acquire(ctab_t *t, const uint8_t key[16], int *count)
{
    entry_t *table = t->table;
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    entry_t *b = &table[(h % BUCKETS) * WAYS];
    int slot = -1, free_way = -1;

    *count = 0;
    pthread_mutex_lock(&t->lock);
    for (int i = 0; i < WAYS; i++) {
        if (b[i].count > 0 && memcmp(b[i].addr, key, 16) == 0) {
            slot = i;
            break;
        }
        if (b[i].count == 0 && free_way < 0)
            free_way = i;
    }
    if (slot < 0 && free_way >= 0) {
        slot = free_way;
        memcpy(b[slot].addr, key, 16);
    }
    if (slot >= 0)
        *count = ++b[slot].count;
    pthread_mutex_unlock(&t->lock);
    if (slot < 0)
        atomic_fetch_add_explicit(&t->untracked, 1, memory_order_relaxed);
    return slot < 0 ? -1 : (int)(b - table) + slot;
}

static void tab_release(ctab_t *t, int slot)
{
    if (slot < 0 || slot >= BUCKETS * WAYS)
        return;
    pthread_mutex_lock(&t->lock);
    if (t->table[slot].count > 0)
        t->table[slot].count--;
    pthread_mutex_unlock(&t->lock);
}

int sg__connlimit_acquire(const struct sockaddr *sa, int *count)
{
    uint8_t key[16] = {0};
    *count = 0;
    if (sa->sa_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    } else {
        return -1; /* nothing to key on */
    }
    return tab_acquire(&clients, key, count);
}

void sg__connlimit_release(int slot) { tab_release(&clients, slot); }

void sg__connlimit_note_over(void)
{
    atomic_fetch_add_explicit(&clients.over_limit, 1, memory_order_relaxed);
}

/* Connections counted right now, over every address (a gauge for /metrics: a scan of the table). */
uint64_t sg__connlimit_open(void)
{
    uint64_t n = 0;
    pthread_mutex_lock(&clients.lock);
    for (size_t i = 0; i < BUCKETS * WAYS; i++)
        n += (uint64_t)clients.table[i].count;
    pthread_mutex_unlock(&clients.lock);
    return n;
}

void sg__connlimit_stats(uint64_t *over, uint64_t *untracked_out)
{
    *over = atomic_load_explicit(&clients.over_limit, memory_order_relaxed);
    *untracked_out = atomic_load_explicit(&clients.untracked, memory_order_relaxed);
}

int sg__upstream_acquire(const char *sandbox_id, int *count)
{
    uint8_t digest[32];
    sg_sha256(sandbox_id, strlen(sandbox_id), digest);
    return tab_acquire(&sandboxes, digest, count);
}

void sg__upstream_release(int slot) { tab_release(&sandboxes, slot); }

void sg__upstream_note_over(void)
{
    atomic_fetch_add_explicit(&sandboxes.over_limit, 1, memory_order_relaxed);
}

uint64_t sg__upstream_over_total(void)
{
    return atomic_load_explicit(&sandboxes.over_limit, memory_order_relaxed);
}
