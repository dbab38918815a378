// End to end on a real three-node cluster (tests/e2e/cluster.mjs): three hosts as network
// namespaces with a real sandgate-node each (runc, the `base` template, the envd bundle), two
// gateways, shared PostgreSQL and Redis, driven with the official `e2b` SDK and the REST API:
// lifecycle, list paging and filters, expiry, team isolation, 30 parallel creates over three
// nodes, a node agent SIGKILLed (lost, placement elsewhere, restart brings its sandboxes back),
// a gateway SIGKILLed, and Redis data loss (reconciliation ends what the catalog forgot).
// Calls into envd through the gateway (commands, files, ports, TLS host routing) and the CLI are
// in cluster-sdk.test.mjs. Needs root, runc, build/ and the template (SANDGATE_TEMPLATES or SG_TEMPLATES_DIR,
// default /var/lib/sandgate-cache/templates); skipped otherwise.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from 'e2b';
import { startCluster, canRun, teamKey, adminNodes, clusterLogs, DOMAIN, NODE_TOKEN } from '../e2e/cluster.mjs';
import { waitFor } from './lib/node-harness.mjs';

const skip = canRun();
// Each node: 12 slots of the `base` template shrunk to 1 vCPU / 128 MiB: 36 in all, 30 fit.
const CAP = { vcpu: 12, memoryMB: 12 * 128, maxSandboxes: 12 };
let c, key, gwA, gwB;

const sdk = (gw, apiKey = key) => ({ apiKey, apiUrl: gw.url, sandboxUrl: gw.url, domain: DOMAIN, requestTimeoutMs: 60000 });

async function rest(gw, method, p, apiKey = key, body) {
  const h = { 'x-api-key': apiKey };
  if (body !== undefined) h['content-type'] = 'application/json';
  const r = await fetch(`${gw.url}${p}`, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = null; try { json = text ? JSON.parse(text) : null; } catch {}
  return { status: r.status, json, text };
}

// The node a sandbox runs on: the REST API's clientID is the node id.
async function nodeOf(gw, id) {
  const r = await rest(gw, 'GET', `/sandboxes/${id}`);
  assert.equal(r.status, 200, r.text);
  return r.json.clientID;
}

// The sandboxes a node agent itself reports (its own API, inside its namespace).
async function onNode(node) {
  const r = await fetch(`${node.api}/v1/sandboxes`, { headers: { 'X-Sandgate-Node-Token': NODE_TOKEN } });
  assert.equal(r.status, 200);
  return (await r.json()).sandboxes.map((x) => x.sandboxID);
}

async function nodeInfo(node) {
  const r = await fetch(`${node.api}/v1/info`, { headers: { 'X-Sandgate-Node-Token': NODE_TOKEN } });
  assert.equal(r.status, 200);
  return r.json();
}

const nodeByName = (name) => c.nodes.find((n) => n.name === name);

before(async () => {
  if (skip) return;
  c = await startCluster({ nodes: [CAP, CAP, CAP], gateways: 2, template: { vcpu: 1, memoryMB: 128 } });
  [gwA, gwB] = c.gateways;
  key = teamKey(c, 'e2e', '--max-concurrent', '100', '--max-timeout', '3600');
});

after(async () => { await c?.stop(); });

// Adds the cluster's logs to a failure.
async function withLogs(fn) {
  try { await fn(); } catch (e) { e.message += `\n${clusterLogs(c)}`; throw e; }
}

test('create with metadata, envs and timeout; getInfo, connect, kill', { skip: skip || false }, () => withLogs(async () => {
  const meta = { suite: 'cluster', case: 'basic', tricky: 'a b&c=d' };
  const a = await Sandbox.create('base', { ...sdk(gwA), metadata: meta, envs: { E2E_FOO: 'bar baz' }, timeoutMs: 120000 });
  assert.match(a.sandboxId, /^[a-z0-9]{20}$/);
  const info = await a.getInfo();
  assert.equal(info.templateId, 'base');
  assert.deepEqual(info.metadata, meta);
  assert.equal(info.state, 'running');
  assert.ok(Math.abs(info.endAt.getTime() - (Date.now() + 120000)) < 10000, 'endAt follows timeoutMs');

  // The sandbox really runs on the node the catalog names, with the env vars given.
  const node = nodeByName(await nodeOf(gwA, a.sandboxId));
  assert.ok(node, 'clientID names one of the cluster nodes');
  assert.ok((await onNode(node)).includes(a.sandboxId));
  // The create's env vars are envd's, so every command's default (not in the container's initial
  // environment: they come in the boot file or envd's POST /init).
  assert.equal((await a.commands.run('echo "$E2E_FOO"')).stdout, 'bar baz\n');

  // Either gateway serves it.
  const viaB = await Sandbox.getInfo(a.sandboxId, sdk(gwB));
  assert.deepEqual(viaB.metadata, meta);
  const conn = await Sandbox.connect(a.sandboxId, { ...sdk(gwB), timeoutMs: 30000 });
  assert.equal(conn.sandboxId, a.sandboxId);

  assert.equal(await a.kill(), true);
  assert.equal(await Sandbox.kill(a.sandboxId, sdk(gwB)), false, 'a second kill finds nothing');
  await assert.rejects(Sandbox.getInfo(a.sandboxId, sdk(gwA)));
  await waitFor(async () => !(await onNode(node)).includes(a.sandboxId), 10000);
}));

test('list: metadata filter and paging', { skip: skip || false }, () => withLogs(async () => {
  const run = `p${Date.now()}`;
  const made = await Promise.all(Array.from({ length: 5 }, (_, i) =>
    Sandbox.create('base', { ...sdk(i % 2 ? gwB : gwA), metadata: { run, i: String(i) }, timeoutMs: 120000 })));
  const other = await Sandbox.create('base', { ...sdk(gwA), metadata: { run: 'other' }, timeoutMs: 120000 });
  const pager = Sandbox.list({ ...sdk(gwB), limit: 2, query: { metadata: { run } } });
  const pages = [];
  while (pager.hasNext) pages.push((await pager.nextItems()).map((x) => x.sandboxId));
  assert.deepEqual(pages.map((p) => p.length), [2, 2, 1], 'three pages of at most 2');
  assert.deepEqual(pages.flat().sort(), made.map((s) => s.sandboxId).sort(), 'every sandbox once, no other');
  const one = await Sandbox.list({ ...sdk(gwA), query: { metadata: { run, i: '3' } } }).nextItems();
  assert.deepEqual(one.map((x) => x.sandboxId), [made[3].sandboxId]);
  await Promise.all([...made, other].map((s) => s.kill()));
  assert.deepEqual(await Sandbox.list({ ...sdk(gwA), query: { metadata: { run } } }).nextItems(), []);
}));

test('setTimeout and expiry: the sandbox ends on its node too', { skip: skip || false }, () => withLogs(async () => {
  const s = await Sandbox.create('base', { ...sdk(gwA), timeoutMs: 600000, metadata: { case: 'expiry' } });
  const node = nodeByName(await nodeOf(gwA, s.sandboxId));
  await s.setTimeout(300000);
  const end = (await s.getInfo()).endAt.getTime();
  assert.ok(Math.abs(end - (Date.now() + 300000)) < 10000, 'setTimeout moved endAt');
  await s.setTimeout(2000);
  await waitFor(async () => (await rest(gwB, 'GET', `/sandboxes/${s.sandboxId}`)).status === 404, 30000);
  await waitFor(async () => !(await onNode(node)).includes(s.sandboxId), 15000);
  await assert.rejects(Sandbox.connect(s.sandboxId, sdk(gwA)));
}));

test('another team sees nothing of this team', { skip: skip || false }, () => withLogs(async () => {
  const mine = await Sandbox.create('base', { ...sdk(gwA), metadata: { case: 'teams' }, timeoutMs: 120000 });
  const otherKey = teamKey(c, 'e2e-other', '--max-concurrent', '5');
  for (const gw of [gwA, gwB]) {
    assert.deepEqual(await Sandbox.list(sdk(gw, otherKey)).nextItems(), []);
    await assert.rejects(Sandbox.getInfo(mine.sandboxId, sdk(gw, otherKey)), (e) => /doesn't exist|not found/i.test(e.message));
    await assert.rejects(Sandbox.connect(mine.sandboxId, sdk(gw, otherKey)));
    assert.equal(await Sandbox.kill(mine.sandboxId, sdk(gw, otherKey)), false);
    assert.equal((await rest(gw, 'POST', `/sandboxes/${mine.sandboxId}/timeout`, otherKey, { timeout: 5 })).status, 404);
  }
  assert.equal((await mine.getInfo()).state, 'running', 'untouched by the other team');
  await mine.kill();
}));

test('30 sandboxes created in parallel land on all three nodes within capacity', { skip: skip || false }, () => withLogs(async () => {
  const run = `par${Date.now()}`;
  const made = await Promise.all(Array.from({ length: 30 }, (_, i) =>
    Sandbox.create('base', { ...sdk(i % 2 ? gwB : gwA), metadata: { run }, timeoutMs: 300000 })));
  const ids = made.map((s) => s.sandboxId);
  assert.equal(new Set(ids).size, 30);
  const per = {};
  for (const id of ids) { const n = await nodeOf(gwA, id); per[n] = (per[n] || 0) + 1; }
  assert.deepEqual(Object.keys(per).sort(), c.nodes.map((n) => n.name).sort(), `all nodes used: ${JSON.stringify(per)}`);
  for (const n of c.nodes) {
    assert.ok(per[n.name] <= CAP.maxSandboxes, `${n.name} within capacity: ${per[n.name]}`);
    const there = new Set(await onNode(n));
    assert.ok(ids.filter((id) => per[n.name] && there.has(id)).length === per[n.name], `${n.name} runs what the catalog says`);
  }
  for (const n of await adminNodes(gwB)) {
    assert.ok(n.allocated.sandboxes <= n.capacity.sandboxes && n.allocated.vcpu <= n.capacity.vcpu &&
      n.allocated.memoryMB <= n.capacity.memoryMB, `allocation within capacity: ${JSON.stringify(n)}`);
  }
  const listed = [];
  const pager = Sandbox.list({ ...sdk(gwB), limit: 100, query: { metadata: { run } } });
  while (pager.hasNext) listed.push(...(await pager.nextItems()).map((x) => x.sandboxId));
  assert.deepEqual(listed.sort(), [...ids].sort());

  const killed = await Promise.all(made.map((s, i) => Sandbox.kill(s.sandboxId, sdk(i % 2 ? gwA : gwB))));
  assert.ok(killed.every(Boolean));
  for (const n of c.nodes) await waitFor(async () => (await onNode(n)).filter((id) => ids.includes(id)).length === 0, 20000);
  // A node holds a killed sandbox's resources until its teardown finished (runc delete, network,
  // upper layer): until then it refuses creates beyond capacity. Wait for all of it to be freed.
  for (const n of c.nodes) await waitFor(async () => (await nodeInfo(n)).allocated.sandboxes === 0, 30000);
}));

test('a node SIGKILLed: its sandboxes report lost; new creates go elsewhere', { skip: skip || false }, () => withLogs(async () => {
  const run = `lost${Date.now()}`;
  const made = await Promise.all(Array.from({ length: 9 }, () =>
    Sandbox.create('base', { ...sdk(gwA), metadata: { run }, timeoutMs: 300000 })));
  const where = {};
  for (const s of made) where[s.sandboxId] = await nodeOf(gwA, s.sandboxId);
  const victimName = where[made[0].sandboxId];
  const victim = nodeByName(victimName);
  const onVictim = made.map((s) => s.sandboxId).filter((id) => where[id] === victimName).sort();
  const elsewhere = made.map((s) => s.sandboxId).filter((id) => where[id] !== victimName).sort();

  await c.world.killNode(victim, 'SIGKILL');

  for (const gw of [gwA, gwB]) {
    await waitFor(async () => {
      const l = await rest(gw, 'GET', `/v2/sandboxes?metadata=${encodeURIComponent(`run=${run}`)}&state=running,lost`);
      if (l.status !== 200) return false;
      const lost = l.json.filter((x) => x.state === 'lost').map((x) => x.sandboxID).sort();
      const running = l.json.filter((x) => x.state === 'running').map((x) => x.sandboxID).sort();
      return JSON.stringify(lost) === JSON.stringify(onVictim) && JSON.stringify(running) === JSON.stringify(elsewhere);
    }, 15000);
    for (const id of onVictim) {
      const g = await rest(gw, 'GET', `/sandboxes/${id}`);
      assert.equal(g.status, 200);
      assert.equal(g.json.state, 'lost');
    }
  }
  const down = (await adminNodes(gwA)).find((n) => n.nodeID === victimName);
  assert.equal(down.status, 'down');

  const fresh = await Promise.all(Array.from({ length: 6 }, (_, i) =>
    Sandbox.create('base', { ...sdk(i % 2 ? gwB : gwA), metadata: { run: `${run}-after` }, timeoutMs: 300000 })));
  for (const s of fresh) assert.notEqual(await nodeOf(gwB, s.sandboxId), victimName, 'nothing placed on the dead node');
  await Promise.all([...fresh.map((s) => s.kill()), ...elsewhere.map((id) => Sandbox.kill(id, sdk(gwA)))]);

  // The agent restarted (as after an upgrade): it rediscovers the sandboxes it left running and
  // they are reported running again.
  await c.world.startNode(victim);
  await waitFor(async () => {
    const states = await Promise.all(onVictim.map(async (id) => (await rest(gwA, 'GET', `/sandboxes/${id}`)).json?.state));
    return states.every((st) => st === 'running');
  }, 15000);
  assert.deepEqual((await onNode(victim)).filter((id) => onVictim.includes(id)).sort(), onVictim);
  for (const id of onVictim) assert.equal(await Sandbox.kill(id, sdk(gwB)), true);
  await waitFor(async () => (await onNode(victim)).filter((id) => onVictim.includes(id)).length === 0, 15000);
}));

test('a gateway SIGKILLed changes nothing for clients of the other', { skip: skip || false }, () => withLogs(async () => {
  const run = `gw${Date.now()}`;
  const viaB = await Sandbox.create('base', { ...sdk(gwB), metadata: { run }, timeoutMs: 300000 });
  const viaA = await Sandbox.create('base', { ...sdk(gwA), metadata: { run }, timeoutMs: 300000 });
  const r = await gwB.stop('SIGKILL');
  assert.equal(r.sig, 'SIGKILL');

  const o = sdk(gwA);
  const listed = (await Sandbox.list({ ...o, query: { metadata: { run } } }).nextItems()).map((x) => x.sandboxId).sort();
  assert.deepEqual(listed, [viaA.sandboxId, viaB.sandboxId].sort());
  assert.equal((await Sandbox.getInfo(viaB.sandboxId, o)).state, 'running');
  await Sandbox.setTimeout(viaB.sandboxId, 200000, o);
  const more = await Promise.all(Array.from({ length: 4 }, () => Sandbox.create('base', { ...o, metadata: { run }, timeoutMs: 120000 })));
  const c2 = await Sandbox.connect(viaB.sandboxId, o);
  assert.equal(c2.sandboxId, viaB.sandboxId);
  for (const s of [viaA, ...more]) assert.equal(await s.kill(), true);
  assert.equal(await Sandbox.kill(viaB.sandboxId, o), true);
  assert.deepEqual(await Sandbox.list({ ...o, query: { metadata: { run } } }).nextItems(), []);
}));

test('Redis data lost: nodes re-register, sandboxes unknown to the catalog end, creates work again', { skip: skip || false }, () => withLogs(async () => {
  const o = sdk(gwA);
  const made = await Promise.all(Array.from({ length: 3 }, () => Sandbox.create('base', { ...o, metadata: { case: 'flush' }, timeoutMs: 300000 })));
  const where = {};
  for (const s of made) where[s.sandboxId] = nodeByName(await nodeOf(gwA, s.sandboxId));
  c.world.redisCli('FLUSHALL');
  // Reconciliation deletes, on each node, what the (now empty) catalog does not know.
  for (const s of made) await waitFor(async () => !(await onNode(where[s.sandboxId])).includes(s.sandboxId), 20000);
  await assert.rejects(Sandbox.getInfo(made[0].sandboxId, o));
  await waitFor(async () => (await adminNodes(gwA)).filter((n) => n.status === 'ready').length === c.nodes.length, 10000);
  const again = await Sandbox.create('base', { ...o, timeoutMs: 60000 });
  assert.equal((await again.getInfo()).state, 'running');
  await again.kill();
}));
