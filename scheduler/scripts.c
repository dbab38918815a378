/*
 * The scheduler's Lua scripts and how they are sent (EVALSHA, EVAL on NOSCRIPT).
 *
 * Every multi-key change of placement state is one script, so it is atomic across gateways:
 * reserve (node fit + team limit + reservation), confirm, release, sweep of expired reservations,
 * remove (kill), reap (claim expired sandboxes: whoever's script runs first gets them, so no
 * sandbox is killed twice), set end, list, reconcile. All keys carry the {sg} hash tag, so they
 * live in one Redis Cluster slot; scripts that touch keys derived from stored values (alloc:<node>
 * of a reservation) rely on that slot rule rather than declaring them in KEYS.
 *
 * A script's SHA1 is computed once at first use; a NOSCRIPT reply (fresh or flushed Redis) makes
 * that one call resend the source with EVAL, which also loads it for the next EVALSHA.
 */
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <mbedtls/sha1.h>
#include "scheduler/sched_int.h"

struct sg__eval {
    sg_redis_t *r;
    sg_redis_cmd_t *cmd;
    sg_redis_cb cb;
    void *data;
    sg__script_t script;
    int argc;
    char **argv;
    size_t *argvlen;
};

static void on_evalsha(sg_redis_t *r, redisReply *reply, void *data);
static void on_eval(sg_redis_t *r, redisReply *reply, void *data);

/* Shared helpers, prepended to the scripts that need them. */
#define LUA_RELEASE                                                                                \
    "local function release(id)\n"                                                                 \
    "  local v = redis.call('HGET', '{sg}:resv', id)\n"                                            \
    "  redis.call('ZREM', '{sg}:resvexp', id)\n"                                                   \
    "  if not v then return 0 end\n"                                                               \
    "  redis.call('HDEL', '{sg}:resv', id)\n"                                                      \
    "  local node, team, vcpu, mem = string.match(v, '^([^\\t]*)\\t([^\\t]*)\\t(%d+)\\t(%d+)$')\n" \
    "  if not node then return 0 end\n"                                                            \
    "  local a = '{sg}:alloc:' .. node\n"                                                          \
    "  redis.call('HINCRBY', a, 'vcpu', -tonumber(vcpu))\n"                                        \
    "  redis.call('HINCRBY', a, 'mem', -tonumber(mem))\n"                                          \
    "  redis.call('HINCRBY', a, 'n', -1)\n"                                                        \
    "  redis.call('ZREM', '{sg}:team:' .. team, id)\n"                                             \
    "  return 1\n"                                                                                 \
    "end\n"

#define LUA_REMOVE                                                                                 \
    "local function remove(id, team)\n"                                                            \
    "  local k = '{sg}:sbx:' .. id\n"                                                              \
    "  local f = redis.call('HMGET', k, 'team', 'node', 'vcpu', 'mem')\n"                          \
    "  if not f[1] then redis.call('ZREM', '{sg}:expiry', id) return nil end\n"                    \
    "  if team ~= '' and f[1] ~= team then return nil end\n"                                       \
    "  redis.call('DEL', k)\n"                                                                     \
    "  redis.call('SET', '{sg}:gone:' .. id, '1', 'PX', 60000)\n"                                  \
    "  redis.call('ZREM', '{sg}:expiry', id)\n"                                                    \
    "  redis.call('SREM', '{sg}:nodesbx:' .. f[2], id)\n"                                          \
    "  redis.call('ZREM', '{sg}:team:' .. f[1], id)\n"                                             \
    "  local a = '{sg}:alloc:' .. f[2]\n"                                                          \
    "  redis.call('HINCRBY', a, 'vcpu', -tonumber(f[3] or '0'))\n"                                 \
    "  redis.call('HINCRBY', a, 'mem', -tonumber(f[4] or '0'))\n"                                  \
    "  redis.call('HINCRBY', a, 'n', -1)\n"                                                        \
    "  return {id, f[2], f[1]}\n"                                                                  \
    "end\n"

static const char *const sources[SG__SCRIPT_COUNT] = {
    /* RESERVE. KEYS: node, alloc, team, resv, resvexp. ARGV: id, node, team, vcpu, mem,
     * team_limit, overcommit, now, deadline, down_after. 0 ok, 1 node refused, 2 team limit,
     * 3 id taken. */
    [SG__SCRIPT_RESERVE] =
        "local n = redis.call('HMGET', KEYS[1], 'status', 'cordoned', 'heartbeat_ms', 'cap_vcpu',"
        " 'cap_mem_mb', 'cap_sandboxes')\n"
        "if not n[3] or n[1] ~= 'ready' or n[2] == '1' then return 1 end\n"
        "if tonumber(ARGV[8]) - tonumber(n[3]) > tonumber(ARGV[10]) then return 1 end\n"
        "local lim = tonumber(ARGV[6])\n"
        "if lim > 0 and redis.call('ZCARD', KEYS[3]) >= lim then return 2 end\n"
        "if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 or"
        " redis.call('EXISTS', '{sg}:sbx:' .. ARGV[1]) == 1 then return 3 end\n"
        "local a = redis.call('HMGET', KEYS[2], 'vcpu', 'mem', 'n')\n"
        "local vcpu, mem = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
        "if tonumber(a[1] or '0') + vcpu > tonumber(n[4] or '0') * tonumber(ARGV[7]) + 1e-9 or"
        " tonumber(a[2] or '0') + mem > tonumber(n[5] or '0') or"
        " tonumber(a[3] or '0') + 1 > tonumber(n[6] or '0') then return 1 end\n"
        "redis.call('HINCRBY', KEYS[2], 'vcpu', vcpu)\n"
        "redis.call('HINCRBY', KEYS[2], 'mem', mem)\n"
        "redis.call('HINCRBY', KEYS[2], 'n', 1)\n"
        "redis.call('ZADD', KEYS[3], ARGV[8], ARGV[1])\n"
        "redis.call('HSET', KEYS[4], ARGV[1], ARGV[2] .. '\\t' .. ARGV[3] .. '\\t' .. ARGV[4] .."
        " '\\t' .. ARGV[5])\n"
        "redis.call('ZADD', KEYS[5], ARGV[9], ARGV[1])\n"
        "return 0\n",
    /* CONFIRM. KEYS: resv, resvexp, sbx, expiry, nodesbx, team. ARGV: id, end, started,
     * field, value, ... 1 ok, 0 the reservation is gone (capacity already given back). */
    [SG__SCRIPT_CONFIRM] =
        "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end\n"
        "redis.call('HDEL', KEYS[1], ARGV[1])\n"
        "redis.call('ZREM', KEYS[2], ARGV[1])\n"
        "redis.call('HSET', KEYS[3], unpack(ARGV, 4))\n"
        "redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])\n"
        "redis.call('SADD', KEYS[5], ARGV[1])\n"
        "redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])\n"
        "return 1\n",
    /* RELEASE. ARGV: id. 1 released, 0 nothing held. */
    [SG__SCRIPT_RELEASE] = LUA_RELEASE "return release(ARGV[1])\n",
    /* SWEEP. ARGV: now, limit. Number of expired reservations released. */
    [SG__SCRIPT_SWEEP] =
        LUA_RELEASE
        "local ids = redis.call('ZRANGEBYSCORE', '{sg}:resvexp', '-inf', ARGV[1], 'LIMIT', 0,"
        " tonumber(ARGV[2]))\n"
        "local c = 0\n"
        "for _, id in ipairs(ids) do c = c + release(id) end\n"
        "return c\n",
    /* REMOVE. KEYS: sbx, expiry. ARGV: id, team ('' = any). {id, node, team} or {}. */
    [SG__SCRIPT_REMOVE] = LUA_REMOVE "local r = remove(ARGV[1], ARGV[2])\n"
                                     "if r then return r end\n"
                                     "return {}\n",
    /* REAP. KEYS: expiry. ARGV: now, limit. Flat {id, node, team, ...} of the claimed. */
    [SG__SCRIPT_REAP] =
        LUA_REMOVE
        "local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0,"
        " tonumber(ARGV[2]))\n"
        "local out = {}\n"
        "for _, id in ipairs(ids) do\n"
        "  local r = remove(id, '')\n"
        "  if r then out[#out + 1] = r[1]; out[#out + 1] = r[2]; out[#out + 1] = r[3] end\n"
        "end\n"
        "return out\n",
    /* SETEND. KEYS: sbx, expiry. ARGV: id, team ('' = any), end, mode ('set'|'extend').
     * HGETALL of the sandbox after the change, {} when unknown. */
    [SG__SCRIPT_SETEND] =
        "local t = redis.call('HGET', KEYS[1], 'team')\n"
        "if not t or (ARGV[2] ~= '' and t ~= ARGV[2]) then return {} end\n"
        "local cur = tonumber(redis.call('HGET', KEYS[1], 'end') or '0')\n"
        "local e = tonumber(ARGV[3])\n"
        "if ARGV[4] == 'set' or e > cur then\n"
        "  redis.call('HSET', KEYS[1], 'end', ARGV[3])\n"
        "  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])\n"
        "end\n"
        "return redis.call('HGETALL', KEYS[1])\n",
    /* LIST. KEYS: team. ARGV: max. {HGETALL, ...} of the team's confirmed sandboxes. */
    [SG__SCRIPT_LIST] =
        "local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)\n"
        "local out = {}\n"
        "for _, id in ipairs(ids) do\n"
        "  local h = redis.call('HGETALL', '{sg}:sbx:' .. id)\n"
        "  if #h > 0 then out[#out + 1] = h end\n"
        "end\n"
        "return out\n",
    /* RECONCILE. KEYS: nodesbx, node. ARGV: grace_ms. Reads the node's heartbeat list.
     * {unknown ids to delete on the node, ids removed from the catalog as lost}.
     * A sandbox removed from the catalog in the last minute ({sg}:gone:<id>, set by remove) is
     * not "unknown": its delete is already on its way to the node, and a heartbeat sent before
     * the node got it would otherwise make reconciliation delete it a second time. */
    [SG__SCRIPT_RECONCILE] =
        LUA_REMOVE
        "local h = redis.call('HMGET', KEYS[2], 'sandboxes', 'heartbeat_ms')\n"
        "if not h[1] or not h[2] then return {{}, {}} end\n"
        "local ok, ids = pcall(cjson.decode, h[1])\n"
        "if not ok or type(ids) ~= 'table' then return {{}, {}} end\n"
        "local on, unknown, lost = {}, {}, {}\n"
        "for _, id in ipairs(ids) do\n"
        "  if type(id) == 'string' then\n"
        "    on[id] = true\n"
        "    if redis.call('EXISTS', '{sg}:sbx:' .. id) == 0 and"
        " redis.call('HEXISTS', '{sg}:resv', id) == 0 and"
        " redis.call('EXISTS', '{sg}:gone:' .. id) == 0 then unknown[#unknown + 1] = id end\n"
        "  end\n"
        "end\n"
        "local limit = tonumber(h[2]) - tonumber(ARGV[1])\n"
        "for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
        "  if not on[id] then\n"
        "    local st = redis.call('HGET', '{sg}:sbx:' .. id, 'started')\n"
        "    if not st then redis.call('SREM', KEYS[1], id)\n"
        "    elseif tonumber(st) < limit then\n"
        "      if remove(id, '') then lost[#lost + 1] = id end\n"
        "    end\n"
        "  end\n"
        "end\n"
        "return {unknown, lost}\n",
    /* NODEFLAG. KEYS: node. ARGV: 'set'|'clear'. 1 done, 0 unknown node (nothing written, so a
     * typo never creates a stray node hash). */
    [SG__SCRIPT_NODEFLAG] =
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
        "if ARGV[1] == 'set' then redis.call('HSET', KEYS[1], 'cordoned', '1')\n"
        "else redis.call('HDEL', KEYS[1], 'cordoned') end\n"
        "return 1\n",
};

static char shas[SG__SCRIPT_COUNT][41];
static pthread_once_t shas_once = PTHREAD_ONCE_INIT;

static void compute_shas(void)
{
    for (int i = 0; i < SG__SCRIPT_COUNT; i++) {
        uint8_t d[20];
        mbedtls_sha1_ret((const unsigned char *)sources[i], strlen(sources[i]), d);
        sg_hex_encode(d, 20, shas[i]);
    }
}

const char *sg__script_source(sg__script_t script)
{
    return sources[script];
}

sg__eval_t *sg__eval(sg_redis_t *r, sg__script_t script, int nkeys, const char **keys, int nargs,
                     const char **args, sg_redis_cb cb, void *data)
{
    pthread_once(&shas_once, compute_shas);
    sg__eval_t *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return NULL;
    char nk[16];
    snprintf(nk, sizeof(nk), "%d", nkeys);
    e->argc = 3 + nkeys + nargs;
    e->argv = calloc((size_t)e->argc, sizeof(char *));
    e->argvlen = calloc((size_t)e->argc, sizeof(size_t));
    if (e->argv == NULL || e->argvlen == NULL)
        goto fail;
    e->argv[0] = strdup("EVALSHA");
    e->argv[1] = strdup(shas[script]);
    e->argv[2] = strdup(nk);
    for (int i = 0; i < nkeys; i++)
        e->argv[3 + i] = strdup(keys[i]);
    for (int i = 0; i < nargs; i++)
        e->argv[3 + nkeys + i] = strdup(args[i] != NULL ? args[i] : "");
    for (int i = 0; i < e->argc; i++) {
        if (e->argv[i] == NULL)
            goto fail;
        e->argvlen[i] = strlen(e->argv[i]);
    }
    e->r = r;
    e->cb = cb;
    e->data = data;
    e->script = script;
    e->cmd = sg_redis_command(r, on_evalsha, e, e->argc, (const char **)e->argv, e->argvlen);
    if (e->cmd == NULL)
        goto fail;
    return e;
fail:
    if (e->argv != NULL)
        for (int i = 0; i < e->argc; i++)
            free(e->argv[i]);
    free(e->argv);
    free(e->argvlen);
    free(e);
    return NULL;
}

void sg__eval_cancel(sg__eval_t *e)
{
    sg_redis_cancel(e->cmd);
    for (int i = 0; i < e->argc; i++)
        free(e->argv[i]);
    free(e->argv);
    free(e->argvlen);
    free(e);
}

static void finish(sg__eval_t *e, redisReply *reply)
{
    sg_redis_cb cb = e->cb;
    void *data = e->data;
    sg_redis_t *r = e->r;
    for (int i = 0; i < e->argc; i++)
        free(e->argv[i]);
    free(e->argv);
    free(e->argvlen);
    free(e);
    cb(r, reply, data);
}

static void on_evalsha(sg_redis_t *r, redisReply *reply, void *data)
{
    sg__eval_t *e = data;
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        free(e->argv[0]);
        free(e->argv[1]);
        e->argv[0] = strdup("EVAL");
        e->argv[1] = strdup(sources[e->script]);
        if (e->argv[0] != NULL && e->argv[1] != NULL) {
            e->argvlen[0] = 4;
            e->argvlen[1] = strlen(e->argv[1]);
            e->cmd = sg_redis_command(r, on_eval, e, e->argc, (const char **)e->argv, e->argvlen);
            if (e->cmd != NULL)
                return;
        }
        /* Allocation failure: report it as an unavailable Redis, the caller's usual path. */
        finish(e, NULL);
        return;
    }
    finish(e, reply);
}

static void on_eval(sg_redis_t *r, redisReply *reply, void *data)
{
    finish(data, reply);
}
