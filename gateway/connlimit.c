/*
 * connlimit: open client connections per client address (http.max_connections_per_ip), counted
 * across every worker thread so a client gets the same limit whichever workers the kernel hands
 * its connections to.
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

static entry_t table[BUCKETS * WAYS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t over_limit, untracked; /* for /metrics */

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
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < sizeof(key); i++)
        h = (h ^ key[i]) * 16777619u;
    entry_t *b = &table[(h % BUCKETS) * WAYS];
    int slot = -1, free_way = -1;

    pthread_mutex_lock(&lock);
    for (int i = 0; i < WAYS; i++) {
        if (b[i].count > 0 && memcmp(b[i].addr, key, sizeof(key)) == 0) {
            slot = i;
            break;
        }
        if (b[i].count == 0 && free_way < 0)
            free_way = i;
    }
    if (slot < 0 && free_way >= 0) {
        slot = free_way;
        memcpy(b[slot].addr, key, sizeof(key));
    }
    if (slot >= 0)
        *count = ++b[slot].count;
    pthread_mutex_unlock(&lock);
    if (slot < 0)
        atomic_fetch_add_explicit(&untracked, 1, memory_order_relaxed);
    return slot < 0 ? -1 : (int)(b - table) + slot;
}

void sg__connlimit_note_over(void)
{
    atomic_fetch_add_explicit(&over_limit, 1, memory_order_relaxed);
}

void sg__connlimit_stats(uint64_t *over, uint64_t *untracked_out)
{
    *over = atomic_load_explicit(&over_limit, memory_order_relaxed);
    *untracked_out = atomic_load_explicit(&untracked, memory_order_relaxed);
}

void sg__connlimit_release(int slot)
{
    if (slot < 0 || slot >= BUCKETS * WAYS)
        return;
    pthread_mutex_lock(&lock);
    if (table[slot].count > 0)
        table[slot].count--;
    pthread_mutex_unlock(&lock);
}
