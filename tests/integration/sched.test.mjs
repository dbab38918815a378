// Scheduler through the API: two gateways, three node test doubles, real PostgreSQL and Redis.
// Placement limits under concurrency, reservations after a gateway dies, expiry, reconciliation,
// heartbeat loss, cordon/drain.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { schedStack, team, api, pool } from './lib/sched-stack.mjs';
import { sleep, waitFor, SANDGATE } from './lib/services.mjs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

// Async on purpose: the node doubles live in this process and must keep answering.
const cli = async (...args) => (await promisify(execFile)(SANDGATE, ['--config', s.config, ...args])).stdout;

let s;

after(async () => { await s?.stop(); });

before(async () => {
  const node = { sandboxes: 20, vcpu: 64, memoryMB: 65536 };
  s = await schedStack({ gateways: 2, nodes: [node, node, node] });
});

const create = (gw, key, body = {}) => api(gw, key, 'POST', '/v2/sandboxes', { templateID: 'base', ...body });
const killAll = async (key) => {
  const l = await api(s.gw, key, 'GET', '/sandboxes');
  await pool(l.json, 8, (x) => api(s.gw, key, 'DELETE', `/sandboxes/${x.sandboxID}`));
};
const hgetall = async (k) => {
  const a = await s.resp.command('HGETALL', k);
  const o = {};
  for (let i = 0; i < a.length; i += 2) o[a[i]] = a[i + 1];
  return o;
};

test('200 creates, 32 clients, 2 gateways: exactly the team limit succeed, the rest 429', async () => {
  const key = team(s.config, 'limit50', '--max-concurrent', '50');
  const results = await pool([...Array(200).keys()], 32, (i) => create(s.gws[i % 2], key));
  const by = {};
  for (const r of results) by[r.status] = (by[r.status] ?? 0) + 1;
  assert.deepEqual(by, { 201: 50, 429: 150 });
  for (const r of results.filter((x) => x.status === 429)) assert.equal(r.json.code, 429);
  for (const n of s.nodes) assert.equal(n.stats.overCapacity, 0);
  assert.equal(await s.resp.command('HLEN', '{sg}:resv'), 0);
  const ids = new Set(results.filter((r) => r.status === 201).map((r) => r.json.sandboxID));
  assert.equal(ids.size, 50);
  await killAll(key);
});

test('200 creates, 32 clients: no node over its capacity; the rest 503', async () => {
  const key = team(s.config, 'nolimit', '--max-concurrent', '1000');
  const results = await pool([...Array(200).keys()], 32, (i) => create(s.gws[i % 2], key));
  const by = {};
  for (const r of results) by[r.status] = (by[r.status] ?? 0) + 1;
  assert.deepEqual(by, { 201: 60, 503: 140 });
  for (const n of s.nodes) {
    assert.ok(n.stats.peak <= 20, `${n.id} peak ${n.stats.peak}`);
    assert.equal(n.sandboxes.size, 20);
    assert.equal(n.stats.overCapacity, 0);
    const alloc = await hgetall(`{sg}:alloc:${n.id}`);
    assert.equal(Number(alloc.n), 20);
  }
  await killAll(key);
  for (const n of s.nodes) assert.equal(n.sandboxes.size, 0);
  for (const n of s.nodes) assert.equal(Number((await hgetall(`{sg}:alloc:${n.id}`)).n), 0);
});

test('cross-team get, kill, timeout, connect, metrics are 404 with E2B wording', async () => {
  const a = team(s.config, 'owner'), b = team(s.config, 'stranger');
  const c = await create(s.gw, a, { metadata: { who: 'a' } });
  assert.equal(c.status, 201);
  const id = c.json.sandboxID;
  const msg = `Sandbox "${id}" doesn't exist or you don't have access to it`;
  for (const [m, p, body] of [['GET', `/sandboxes/${id}`], ['DELETE', `/sandboxes/${id}`],
    ['POST', `/sandboxes/${id}/timeout`, { timeout: 60 }], ['POST', `/v2/sandboxes/${id}/connect`, { timeout: 60 }],
    ['POST', `/sandboxes/${id}/connect`, { timeout: 60 }], ['POST', `/sandboxes/${id}/refreshes`, { duration: 60 }],
    ['GET', `/sandboxes/${id}/metrics`]]) {
    const r = await api(s.gws[1], b, m, p, body);
    assert.equal(r.status, 404, `${m} ${p}`);
    assert.deepEqual(r.json, { code: 404, message: msg });
  }
  const own = await api(s.gws[1], a, 'GET', `/sandboxes/${id}`);
  assert.equal(own.status, 200);
  assert.equal(own.json.sandboxID, id);
  const listB = await api(s.gw, b, 'GET', '/v2/sandboxes');
  assert.deepEqual(listB.json, []);
  assert.equal((await api(s.gw, a, 'DELETE', `/sandboxes/${id}`)).status, 204);
  const again = await api(s.gw, a, 'DELETE', `/sandboxes/${id}`);
  assert.equal(again.status, 404);
  assert.deepEqual(again.json, { code: 404, message: msg });
});

test('expiry: reaped within a second of the end time, deleted exactly once', async () => {
  const key = team(s.config, 'expiry');
  const made = await pool([...Array(6).keys()], 6, () => create(s.gws[0], key, { timeout: 1 }));
  const ids = made.map((r) => { assert.equal(r.status, 201); return r.json.sandboxID; });
  await waitFor(async () => (await s.resp.command('ZCARD', '{sg}:team:' + (await teamId(key)))) === 0, { timeout: 5000, what: 'reap' });
  await sleep(1000); // a second reaper pass (and the other gateway's) must not delete again
  for (const id of ids) {
    const node = s.nodes.find((n) => n.deleted.has(id));
    assert.ok(node, `sandbox ${id} deleted on its node`);
    const d = node.deleted.get(id);
    assert.ok(d.at - d.endAtMs <= 1000, `reaped ${d.at - d.endAtMs} ms after its end`);
    assert.equal(s.nodes.filter((n) => n.log.filter((l) => l === `DELETE /v1/sandboxes/${id}`).length > 0)
      .reduce((acc, n) => acc + n.log.filter((l) => l === `DELETE /v1/sandboxes/${id}`).length, 0), 1);
    assert.equal((await api(s.gw, key, 'GET', `/sandboxes/${id}`)).status, 404);
  }
  const rows = s.pg && await psql(`SELECT count(*) FROM sandbox_events WHERE kind = 'expire' AND sandbox_id IN (${ids.map((i) => `'${i}'`).join(',')})`);
  assert.equal(rows, '6');
});

async function teamId(key) {
  const r = await api(s.gw, key, 'GET', '/teams/me');
  return r.json.teamID;
}

async function psql(sql) {
  const { execFileSync } = await import('node:child_process');
  return execFileSync('psql', ['-h', '127.0.0.1', '-p', String(s.pg.port), '-U', 'sandgate', '-At', '-c', sql], { encoding: 'utf8' }).trim();
}

test('timeout sets, refreshes and connect only extend; the node is told the end', async () => {
  const key = team(s.config, 'lifetimes', '--max-timeout', '600');
  const c = await create(s.gw, key, { timeout: 100 });
  const id = c.json.sandboxID;
  const get = async () => (await api(s.gw, key, 'GET', `/sandboxes/${id}`)).json;
  const end0 = Date.parse((await get()).endAt);
  let r = await api(s.gw, key, 'POST', `/v2/sandboxes/${id}/connect`, { timeout: 10 });
  assert.equal(r.status, 200);
  assert.equal(r.json.sandboxID, id);
  assert.equal(Date.parse((await get()).endAt), end0, 'connect with a shorter timeout leaves endAt unchanged');
  r = await api(s.gw, key, 'POST', `/sandboxes/${id}/timeout`, { timeout: 20 });
  assert.equal(r.status, 204);
  const end1 = Date.parse((await get()).endAt);
  assert.ok(end1 < end0 && end1 > Date.now() + 15000);
  r = await api(s.gw, key, 'POST', `/sandboxes/${id}/refreshes`, { duration: 200 });
  assert.equal(r.status, 204);
  assert.ok(Date.parse((await get()).endAt) > end0);
  r = await api(s.gw, key, 'POST', `/sandboxes/${id}/timeout`, { timeout: 601 });
  assert.equal(r.status, 400);
  assert.match(r.json.message, /Timeout cannot be greater than 600 seconds/);
  r = await create(s.gw, key, { timeout: 601 });
  assert.equal(r.status, 400);
  const node = s.nodes.find((n) => n.sandboxes.has(id));
  const endNow = Date.parse((await get()).endAt);
  await waitFor(() => node.sandboxes.get(id).endAtMs === endNow, { timeout: 3000, what: 'node told the end' });
  assert.equal((await api(s.gw, key, 'DELETE', `/sandboxes/${id}`)).status, 204);
});

test('a gateway SIGKILLed mid-create leaves no reservation once the TTL passes', async () => {
  const key = team(s.config, 'crash');
  for (const n of s.nodes) n.delayMs = 1500;
  const inflight = pool([...Array(8).keys()], 8, () => create(s.gws[1], key).catch(() => null));
  await waitFor(async () => (await s.resp.command('HLEN', '{sg}:resv')) > 0, { timeout: 3000, what: 'reservations' });
  await s.gws[1].stop('SIGKILL');
  await inflight;
  for (const n of s.nodes) n.delayMs = 0;
  assert.ok((await s.resp.command('HLEN', '{sg}:resv')) > 0, 'reservations held after the crash');
  // TTL = create timeout (2 s) + 5 s; the surviving gateway's sweep gives capacity back.
  await waitFor(async () => (await s.resp.command('HLEN', '{sg}:resv')) === 0, { timeout: 12000, what: 'reservations swept' });
  assert.equal(await s.resp.command('ZCARD', '{sg}:resvexp'), 0);
  assert.equal(await s.resp.command('ZCARD', '{sg}:team:' + (await teamId(key))), 0);
  for (const n of s.nodes) assert.equal(Number((await hgetall(`{sg}:alloc:${n.id}`)).n), 0);
  // Sandboxes the nodes started for the dead gateway are unknown to the catalog: reconciliation
  // deletes them.
  await waitFor(() => s.nodes.every((n) => n.sandboxes.size === 0), { timeout: 8000, what: 'orphans deleted' });
  await s.gws[1].start();
});

test('heartbeat lost: nothing placed there, its sandboxes listed as lost', async () => {
  const key = team(s.config, 'hb');
  const first = await pool([...Array(6).keys()], 6, () => create(s.gw, key));
  for (const r of first) assert.equal(r.status, 201);
  const victim = s.nodes[0];
  const onVictim = first.map((r) => r.json.sandboxID).filter((id) => victim.sandboxes.has(id));
  assert.ok(onVictim.length > 0);
  victim.heartbeats = false;
  await sleep(2200); // node_down_after_ms 1500 + view refresh
  const before = victim.stats.creates;
  const more = await pool([...Array(10).keys()], 5, () => create(s.gw, key));
  for (const r of more) assert.equal(r.status, 201);
  assert.equal(victim.stats.creates, before);
  const l = await api(s.gw, key, 'GET', '/v2/sandboxes?limit=100');
  const lost = l.json.filter((x) => x.state === 'lost').map((x) => x.sandboxID).sort();
  assert.deepEqual(lost, onVictim.sort());
  const one = await api(s.gw, key, 'GET', `/sandboxes/${onVictim[0]}`);
  assert.equal(one.json.state, 'lost');
  const running = await api(s.gw, key, 'GET', '/v2/sandboxes?state=running');
  assert.equal(running.json.length, 16 - onVictim.length);
  victim.heartbeats = true;
  await sleep(600);
  await killAll(key);
});

test('reconciliation: unknown sandboxes die on the node, vanished ones leave the catalog', async () => {
  const key = team(s.config, 'recon');
  const made = await pool([...Array(6).keys()], 6, () => create(s.gw, key));
  const mine = made[0].json.sandboxID;
  const node = s.nodes.find((n) => n.sandboxes.has(mine));
  assert.ok(node, 'placed on a node');
  node.sandboxes.set('strayzzzzzzzzzzzzzzz', { sandboxID: 'strayzzzzzzzzzzzzzzz', teamID: 'x', templateID: 'base', address: '', startedAtMs: Date.now(), endAtMs: Date.now() + 600000, vcpu: 1, memoryMB: 64, diskMB: 0 });
  node.sandboxes.delete(mine); // the node lost it (crash, OOM)
  await waitFor(() => !node.sandboxes.has('strayzzzzzzzzzzzzzzz'), { timeout: 8000, what: 'stray deleted' });
  await waitFor(async () => (await api(s.gw, key, 'GET', `/sandboxes/${mine}`)).status === 404, { timeout: 10000, what: 'lost removed' });
  const ev = await psql(`SELECT kind FROM sandbox_events WHERE sandbox_id = '${mine}' ORDER BY id`);
  assert.deepEqual(ev.split('\n'), ['create', 'lost']);
  await killAll(key);
});

test('admin: fails closed, lists nodes, cordon and drain stop placements, uncordon resumes', async () => {
  const key = team(s.config, 'admin');
  let r = await api(s.gw, null, 'GET', '/admin/nodes');
  assert.equal(r.status, 401);
  r = await api(s.gw, null, 'GET', '/admin/nodes', undefined, { 'x-admin-token': 'wrong-admin-token-0123456789' });
  assert.equal(r.status, 401);
  const H = { 'x-admin-token': 'test-admin-token-0123456789' };
  r = await api(s.gw, null, 'GET', '/admin/nodes', undefined, H);
  assert.equal(r.status, 200);
  assert.deepEqual(r.json.map((n) => n.nodeID).sort(), ['node-1', 'node-2', 'node-3']);
  assert.equal(r.json[0].capacity.sandboxes, 20);
  assert.equal((await api(s.gw, null, 'POST', '/admin/nodes/nope/cordon', undefined, H)).status, 404);
  assert.equal((await api(s.gw, null, 'POST', '/admin/nodes/node-1/cordon', undefined, H)).status, 204);
  await cli('node', 'drain', 'node-2');
  assert.equal(s.nodes[1].status, 'draining');
  const out = await cli('node', 'list');
  assert.match(out, /node-1\s+cordoned/);
  assert.match(out, /node-2\s+cordoned/);
  await sleep(400);
  const c0 = s.nodes[0].stats.creates, c1 = s.nodes[1].stats.creates;
  const made = await pool([...Array(6).keys()], 3, () => create(s.gws[i2()], key));
  for (const m of made) assert.equal(m.status, 201);
  assert.equal(s.nodes[0].stats.creates, c0);
  assert.equal(s.nodes[1].stats.creates, c1);
  assert.equal((await api(s.gw, null, 'POST', '/admin/nodes/node-1/uncordon', undefined, H)).status, 204);
  await cli('node', 'uncordon', 'node-2');
  assert.equal(s.nodes[1].status, 'ready');
  r = await api(s.gw, null, 'GET', '/admin/nodes', undefined, H);
  assert.ok(r.json.every((n) => n.status === 'ready'));
  await killAll(key);
});

let flip = 0;
const i2 = () => (flip++) % 2;
