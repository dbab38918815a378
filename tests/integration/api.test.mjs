// The E2B sandbox REST API on the wire: shapes, tokens, validation, list pagination, metrics,
// unsupported routes, templates, chunked bodies. One gateway, two node test doubles.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { schedStack, team, api, pool, notFoundMsg } from './lib/sched-stack.mjs';

let s, key;
const SECRET = 'test-token-secret-0123456789';
const hmac = (kind, id) => crypto.createHmac('sha256', SECRET).update(`${kind}:${id}`).digest('hex');

after(async () => { await s?.stop(); });

before(async () => {
  const node = { sandboxes: 100, vcpu: 64, memoryMB: 65536 };
  s = await schedStack({ gateways: 1, nodes: [node, node] });
  key = team(s.config, 'wire', '--max-concurrent', '100', '--max-timeout', '3600');
});

test('create: 201 shape, tokens are HMACs, trafficAccessToken only without public traffic', async () => {
  let r = await api(s.gw, key, 'POST', '/v2/sandboxes', { templateID: 'base', secure: true, allow_internet_access: true });
  assert.equal(r.status, 201);
  const id = r.json.sandboxID;
  assert.match(id, /^[a-z0-9]{20}$/);
  assert.deepEqual(Object.keys(r.json).sort(),
    ['alias', 'clientID', 'domain', 'envdAccessToken', 'envdVersion', 'sandboxID', 'templateID', 'trafficAccessToken']);
  assert.equal(r.json.templateID, 'base');
  assert.equal(r.json.alias, 'base');
  assert.equal(r.json.envdVersion, '0.5.7');
  assert.equal(r.json.domain, 'sandgate.test');
  assert.equal(r.json.envdAccessToken, hmac('envd', id));
  assert.equal(r.json.trafficAccessToken, null);
  const node = s.nodes.find((n) => n.sandboxes.has(id));
  assert.equal(node.sandboxes.get(id).envdAccessToken, hmac('envd', id), 'the node got the same token');

  r = await api(s.gw, key, 'POST', '/sandboxes', { templateID: 'base', network: { allowPublicTraffic: false } });
  assert.equal(r.status, 201, 'v1 create');
  assert.equal(r.json.trafficAccessToken, hmac('traffic', r.json.sandboxID));
  assert.equal(r.json.envdAccessToken, null, 'not secure: envd takes no token');
  assert.notEqual(hmac('traffic', r.json.sandboxID), hmac('envd', r.json.sandboxID));

  const g = await api(s.gw, key, 'GET', `/sandboxes/${id}`);
  assert.equal(g.status, 200);
  for (const k of ['sandboxID', 'templateID', 'alias', 'clientID', 'metadata', 'startedAt', 'endAt', 'state',
    'cpuCount', 'memoryMB', 'diskSizeMB', 'envdVersion', 'domain', 'envdAccessToken']) assert.ok(k in g.json, k);
  assert.equal(g.json.cpuCount, 2);
  assert.equal(g.json.memoryMB, 512);
  assert.equal(g.json.envdAccessToken, hmac('envd', id));
  assert.ok(Math.abs(Date.parse(g.json.endAt) - Date.parse(g.json.startedAt) - 300000) < 2000, 'default timeout 300 s');
});

test('create: bad input is a 400 JSON error, unknown template 404, no key 401', async () => {
  const cases = [
    ['{"templateID":', 400], [JSON.stringify([1]), 400], [JSON.stringify({}), 400],
    [JSON.stringify({ templateID: 'no/slash' }), 400], [JSON.stringify({ templateID: 'base', timeout: -1 }), 400],
    [JSON.stringify({ templateID: 'base', timeout: 'x' }), 400], [JSON.stringify({ templateID: 'base', timeout: 3601 }), 400],
    [JSON.stringify({ templateID: 'base', metadata: { a: 1 } }), 400], [JSON.stringify({ templateID: 'base', metadata: 'x' }), 400],
    [JSON.stringify({ templateID: 'base', envVars: { A: 2 } }), 400], [JSON.stringify({ templateID: 'base', secure: 'yes' }), 400],
    [JSON.stringify({ templateID: 'nope' }), 404],
  ];
  for (const [body, status] of cases) {
    const r = await api(s.gw, key, 'POST', '/v2/sandboxes', body);
    assert.equal(r.status, status, body);
    assert.deepEqual(Object.keys(r.json).sort(), ['code', 'message'], body);
    assert.equal(r.json.code, status);
  }
  const r = await api(s.gw, null, 'POST', '/v2/sandboxes', { templateID: 'base' });
  assert.equal(r.status, 401);
});

test('create accepts a chunked body, as the SDK sends it', async () => {
  const body = new ReadableStream({
    start(c) { c.enqueue(new TextEncoder().encode('{"templateID":')); c.enqueue(new TextEncoder().encode('"base","metadata":{"x":"y"}}')); c.close(); },
  });
  const r = await fetch(`${s.gw.url}/v2/sandboxes`, { method: 'POST', body, duplex: 'half', headers: { 'x-api-key': key, 'content-type': 'application/json' } });
  assert.equal(r.status, 201);
  const j = await r.json();
  assert.deepEqual((await api(s.gw, key, 'GET', `/sandboxes/${j.sandboxID}`)).json.metadata, { x: 'y' });
});

test('list pagination visits every sandbox exactly once, newest first, with X-Next-Token', async () => {
  const k = team(s.config, 'pages', '--max-concurrent', '100');
  const made = await pool([...Array(23).keys()], 4, (i) => api(s.gw, k, 'POST', '/v2/sandboxes', { templateID: 'base', metadata: { set: 'p', i: String(i) } }));
  const ids = new Set(made.map((r) => r.json.sandboxID));
  await api(s.gw, k, 'POST', '/v2/sandboxes', { templateID: 'base', metadata: { set: 'other' } });
  const seen = [];
  let token = null, pages = 0, addedMidway = null;
  do {
    const q = new URLSearchParams({ metadata: 'set=p', limit: '5', state: 'running' });
    if (token) q.set('nextToken', token);
    const r = await api(s.gw, k, 'GET', `/v2/sandboxes?${q}`);
    assert.equal(r.status, 200);
    assert.ok(r.json.length <= 5);
    for (let i = 1; i < r.json.length; i++) assert.ok(Date.parse(r.json[i - 1].startedAt) >= Date.parse(r.json[i].startedAt));
    seen.push(...r.json.map((x) => x.sandboxID));
    token = r.headers.get('x-next-token');
    pages++;
    if (pages === 2) {
      // Changes between pages neither repeat nor skip what was there: a newer one sorts before
      // the cursor; a killed one simply is not visited.
      addedMidway = (await api(s.gw, k, 'POST', '/v2/sandboxes', { templateID: 'base', metadata: { set: 'p' } })).json.sandboxID;
    }
  } while (token && pages < 20);
  assert.equal(pages, 5);
  assert.equal(seen.length, new Set(seen).size, 'no sandbox twice');
  assert.deepEqual(new Set(seen), ids);
  assert.ok(!seen.includes(addedMidway));
  const v1 = await api(s.gw, k, 'GET', `/sandboxes?metadata=${encodeURIComponent('set=p')}`);
  assert.equal(v1.json.length, 24, 'v1 list: all, no pages');
  const asc = await api(s.gw, k, 'GET', '/v2/sandboxes?order=asc&limit=1&metadata=set%3Dp');
  const oldest = [...v1.json].sort((a, b) => Date.parse(a.startedAt) - Date.parse(b.startedAt) || (a.sandboxID < b.sandboxID ? -1 : 1))[0];
  assert.equal(asc.json[0].sandboxID, oldest.sandboxID);
  assert.equal((await api(s.gw, k, 'GET', '/v2/sandboxes?state=paused')).json.length, 0);
  assert.equal((await api(s.gw, k, 'GET', '/v2/sandboxes?limit=0')).status, 400);
  assert.equal((await api(s.gw, k, 'GET', '/v2/sandboxes?limit=101')).status, 400);
  const later = new Date(Date.now() + 60000).toISOString();
  assert.equal((await api(s.gw, k, 'GET', `/v2/sandboxes?startedAfter=${encodeURIComponent(later)}`)).json.length, 0);
  const bogus = await api(s.gw, k, 'GET', '/v2/sandboxes?nextToken=garbage');
  assert.equal(bogus.status, 200);
  assert.deepEqual(bogus.json, []);
});

test('metrics from the node; pause and resume answer 501; templates list', async () => {
  const c = await api(s.gw, key, 'POST', '/v2/sandboxes', { templateID: 'base' });
  const id = c.json.sandboxID;
  const m = await api(s.gw, key, 'GET', `/sandboxes/${id}/metrics`);
  assert.equal(m.status, 200);
  assert.equal(m.json.length, 1);
  for (const k of ['timestamp', 'cpuUsedPct', 'cpuCount', 'memUsed', 'memTotal', 'diskUsed', 'diskTotal']) assert.ok(k in m.json[0], k);
  assert.equal(m.json[0].cpuCount, 2);
  for (const p of [`/sandboxes/${id}/pause`, `/sandboxes/${id}/resume`]) {
    const r = await api(s.gw, key, 'POST', p);
    assert.equal(r.status, 501);
    assert.equal(r.json.code, 501);
  }
  const t = await api(s.gw, key, 'GET', '/templates');
  assert.equal(t.status, 200);
  const base = t.json.find((x) => x.templateID === 'base');
  assert.deepEqual(base.aliases, ['base']);
  assert.equal(base.cpuCount, 2);
  assert.equal((await api(s.gw, key, 'GET', '/sandboxes/UPPER')).status, 404);
  const long = 'a'.repeat(200);
  const r = await api(s.gw, key, 'DELETE', `/sandboxes/${long}`);
  assert.equal(r.status, 404);
  assert.equal((await api(s.gw, key, 'GET', `/sandboxes/zzzzzzzzzzzzzzzzzzzz`)).json.message, notFoundMsg('zzzzzzzzzzzzzzzzzzzz'));
});
