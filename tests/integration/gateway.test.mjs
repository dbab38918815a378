// Foundation: migrations, admin commands, API-key auth end to end, fail-closed behaviour,
// health/ready/metrics, request ids, bad input, graceful shutdown. Real PostgreSQL and Redis.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import net from 'node:net';
import { stack, sandgate, createTeam, createKey, SANDGATE, sleep, startGateway, shutdownAll } from './lib/services.mjs';

const run = promisify(execFile);
let s; // { pg, redis, gw, config }

before(async () => {
  s = await stack({ gatewayExtra: 'auth:\n  positive_ttl_ms: 1000\n  negative_ttl_ms: 500\n  fail_threshold: 8\n  fail_window_s: 2\n' });
});
after(() => shutdownAll());

const me = (key, headers = {}) =>
  fetch(`${s.gw.url}/teams/me`, { headers: key ? { 'x-api-key': key, ...headers } : headers });

test('migrations are idempotent and safe to run concurrently', async () => {
  const out = sandgate(s.config, 'migrate');
  assert.match(out, /up to date/);
  const runs = await Promise.all([1, 2, 3].map(() => run(SANDGATE, ['--config', s.config, 'migrate'])));
  for (const r of runs) assert.match(r.stdout, /up to date/);
});

test('key create -> authenticated request works; key printed once and stored hashed', async () => {
  createTeam(s.config, 'alpha', '--max-concurrent', '7');
  const key = createKey(s.config, 'alpha', '--name', 'ci');
  assert.match(key, /^e2b_[0-9a-f]{40}$/);
  const r = await me(key);
  assert.equal(r.status, 200);
  const body = await r.json();
  assert.equal(body.name, 'alpha');
  assert.equal(body.limits.maxConcurrent, 7);
  assert.match(r.headers.get('x-request-id'), /^[0-9a-f]{16}$/);
  const list = sandgate(s.config, 'key', 'list', '--team', 'alpha');
  assert.ok(!list.includes(key), 'key list must not show the key');
  assert.ok(list.includes(key.slice(0, 8) + '...' + key.slice(-4)), 'mask shown');
  const raw = s.pg && (await run('psql', ['-h', '127.0.0.1', '-p', String(s.pg.port), '-U', 'sandgate', '-At', '-c',
    'SELECT hash FROM api_keys'])).stdout;
  assert.ok(!raw.includes(key.slice(4)), 'database holds no key in clear');
  assert.ok(!s.gw.logText().includes(key), 'logs hold no key');
});

test('missing, malformed and unknown keys get 401 JSON', async () => {
  let r = await me(null);
  assert.equal(r.status, 401);
  assert.deepEqual(Object.keys(await r.json()).sort(), ['code', 'message']);
  r = await me('e2b_xyz');
  assert.equal(r.status, 401);
  assert.equal((await r.json()).message, 'Invalid API key format');
  r = await me('e2b_' + '0'.repeat(40));
  assert.equal(r.status, 401);
  assert.equal((await r.json()).code, 401);
});

test('revoked key is rejected within the positive TTL', async () => {
  createTeam(s.config, 'beta');
  const key = createKey(s.config, 'beta');
  assert.equal((await me(key)).status, 200);
  const id = sandgate(s.config, 'key', 'list', '--team', 'beta').split('\n')[1].split('\t')[0];
  sandgate(s.config, 'key', 'revoke', id);
  await sleep(1100); // positive TTL in this test = 1 s
  assert.equal((await me(key)).status, 401);
});

test('expired key is rejected', async () => {
  createTeam(s.config, 'gamma');
  const key = createKey(s.config, 'gamma', '--expires', '1s');
  await sleep(1200);
  assert.equal((await me(key)).status, 401);
});

test('blocked team gets 403, unblocked works again', async () => {
  createTeam(s.config, 'delta');
  const key = createKey(s.config, 'delta');
  sandgate(s.config, 'team', 'update', 'delta', '--blocked', 'true');
  const r = await me(key);
  assert.equal(r.status, 403);
  assert.equal((await r.json()).code, 403);
  sandgate(s.config, 'team', 'update', 'delta', '--blocked', 'false');
  await sleep(1100);
  assert.equal((await me(key)).status, 200);
});

test('an address that keeps failing auth gets 429 with Retry-After', async () => {
  // All of this test's requests come from 127.0.0.2 (a distinct client address).
  const get = (key) => new Promise((resolve, reject) => {
    const sock = net.connect({ port: s.gw.port, host: '127.0.0.1', localAddress: '127.0.0.2' }, () => {
      sock.write(`GET /teams/me HTTP/1.1\r\nHost: x\r\nx-api-key: ${key}\r\nConnection: close\r\n\r\n`);
    });
    let data = '';
    sock.on('data', (d) => { data += d; });
    sock.on('end', () => resolve(data));
    sock.on('error', reject);
  });
  let last;
  for (let i = 0; i < 10; i++) last = await get('e2b_' + String(i).repeat(40).slice(0, 40));
  assert.match(last, /^HTTP\/1\.1 429/);
  assert.match(last, /retry-after: \d+/i);
  // other addresses are not affected
  createTeam(s.config, 'eps');
  assert.equal((await me(createKey(s.config, 'eps'))).status, 200);
});

test('PostgreSQL down: cached key 200, uncached 503; recovers without a gateway restart', async () => {
  createTeam(s.config, 'zeta');
  const cached = createKey(s.config, 'zeta');
  const uncached = createKey(s.config, 'zeta');
  assert.equal((await me(cached)).status, 200);
  await s.pg.stop();
  try {
    assert.equal((await me(cached)).status, 200, 'cached key keeps working');
    const r = await me(uncached);
    assert.equal(r.status, 503);
    assert.equal((await r.json()).code, 503);
    assert.equal((await fetch(`${s.gw.url}/ready`)).status, 503);
  } finally {
    await s.pg.start();
  }
  let status;
  for (let i = 0; i < 100 && status !== 200; i++) { await sleep(100); status = (await me(uncached)).status; }
  assert.equal(status, 200, 'uncached key works once PostgreSQL is back');
});

test('health, ready (Redis down -> 503) and metrics', async () => {
  assert.equal((await fetch(`${s.gw.url}/health`)).status, 200);
  assert.equal((await fetch(`${s.gw.url}/ready`)).status, 200);
  await s.redis.stop();
  try {
    let r;
    for (let i = 0; i < 50; i++) { r = await fetch(`${s.gw.url}/ready`); if (r.status === 503) break; await sleep(100); }
    assert.equal(r.status, 503);
    assert.equal((await r.json()).redis, 'down');
  } finally { await s.redis.start(); }
  let ok = false;
  for (let i = 0; i < 60 && !ok; i++) { await sleep(100); ok = (await fetch(`${s.gw.url}/ready`)).status === 200; }
  assert.ok(ok, 'ready again after Redis returns');
  const m = await (await fetch(`${s.gw.url}/metrics`)).text();
  assert.match(m, /sandgate_http_requests_total\{method="GET",route="\/teams\/me",status="200"\} \d+/);
  assert.match(m, /sandgate_http_request_duration_seconds_bucket\{.*le="\+Inf"\} \d+/);
  assert.match(m, /sandgate_auth_cache_hits_total \d+/);
  assert.match(m, /sandgate_auth_cache_misses_total \d+/);
});

test('bad input: unknown route 404 JSON, wrong method 405, oversized body 413', async () => {
  let r = await fetch(`${s.gw.url}/nope`);
  assert.equal(r.status, 404);
  assert.equal((await r.json()).code, 404);
  r = await fetch(`${s.gw.url}/teams/me`, { method: 'DELETE' });
  assert.equal(r.status, 405);
  createTeam(s.config, 'eta');
  const key = createKey(s.config, 'eta');
  r = await fetch(`${s.gw.url}/teams/me`, { method: 'GET', headers: { 'x-api-key': key } });
  assert.equal(r.status, 200);
  r = await fetch(`${s.gw.url}/teams/me`, { headers: { 'x-api-key': key, 'x-big': 'a'.repeat(40000) } });
  assert.equal(r.status, 431);
  assert.equal((await r.json()).code, 431);
  // beyond h2o's own request-head limit: refused by the HTTP layer, never a crash
  r = await fetch(`${s.gw.url}/teams/me`, { headers: { 'x-api-key': key, 'x-big': 'a'.repeat(500000) } }).catch((e) => e);
  assert.ok(r instanceof Error || r.status >= 400);
  r = await fetch(`${s.gw.url}/teams/me`, { method: 'POST', headers: { 'x-api-key': key }, body: '{' });
  assert.equal(r.status, 405);
  // malformed request line: h2o answers 400 and the gateway lives on
  const raw = await new Promise((resolve) => {
    const c = net.connect(s.gw.port, '127.0.0.1', () => c.write('GET /\x01 HTTP/9\r\n\r\n'));
    let d = ''; c.on('data', (x) => { d += x; }); c.on('close', () => resolve(d)); c.on('error', () => resolve(d));
  });
  assert.ok(raw === '' || /^HTTP\/1\.1 4\d\d/.test(raw), raw);
  assert.equal((await fetch(`${s.gw.url}/health`)).status, 200, 'still alive');
});

test('config check: precise errors and masked effective config', async () => {
  const fs = await import('node:fs');
  const bad = `${s.gw.dir}/bad.yaml`;
  fs.writeFileSync(bad, 'listeners:\n  - port: 99999\ndomian: x\n');
  const r = await run(SANDGATE, ['config', 'check', bad]).catch((e) => e);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /bad\.yaml:2:\d+: listeners\[0\]\.port/);
  assert.match(r.stderr, /bad\.yaml:3:1: .*domian.*did you mean 'domain'/);
  const ok = await run(SANDGATE, ['config', 'check', s.gw.config]);
  assert.match(ok.stdout, /node_token: "?\*{8}/);
  assert.ok(!ok.stdout.includes('test-node-token-0123456789'));
});

test('SIGTERM: a request in flight finishes, then the gateway exits 0', async () => {
  const gw2 = await startGateway({ pg: s.pg, redis: s.redis, name: 'gw2' });
  // A request whose body is still arriving when SIGTERM comes.
  const sock = net.connect(gw2.port, '127.0.0.1');
  await new Promise((r) => sock.on('connect', r));
  sock.write('POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345');
  let reply = '';
  sock.on('data', (d) => { reply += d; });
  await sleep(200);
  const exiting = gw2.stop('SIGTERM');
  await sleep(300);
  const refused = await new Promise((resolve) => {
    const c = net.connect(gw2.port, '127.0.0.1');
    c.on('connect', () => { c.destroy(); resolve(false); });
    c.on('error', () => resolve(true));
  });
  assert.equal(refused, true, 'no new connections after SIGTERM');
  sock.write('67890');
  const exit = await exiting;
  assert.match(reply, /^HTTP\/1\.1 200/);
  assert.equal(exit.code, 0);
});
