// Node agent benchmark (issue 4): sandbox start latency (create request -> 201, which the node
// sends once envd answers GET /health) at 1 and 10 concurrent creates, without the warm pool
// (every start runs `runc run`, the previous version) and with it, as ratios; then the pool's own
// cost and the per-sandbox memory overhead of 100 idle sandboxes. Needs root and a built tree;
// uses the integration harness.
//
//   node bench/node_bench.mjs            (env: SG_ENVD_BUNDLE, SG_BENCH_SEQ=30, SG_BENCH_ROUNDS=5,
//                                         SG_BENCH_IDLE=100, SG_BENCH_POOL=10)
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { World, canRun, api, createBody, envdBundle, sleep, waitFor } from '../tests/integration/lib/node-harness.mjs';

const why = canRun();
if (why) { console.error(`node_bench: cannot run: ${why}`); process.exit(2); }

const SEQ = Number(process.env.SG_BENCH_SEQ || 30);
const ROUNDS = Number(process.env.SG_BENCH_ROUNDS || 5);
const IDLE = Number(process.env.SG_BENCH_IDLE || 100);

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}
const fmt = (xs) => `n=${xs.length} p50=${pct(xs, 50).toFixed(1)}ms p99=${pct(xs, 99).toFixed(1)}ms ` +
  `min=${Math.min(...xs).toFixed(1)} max=${Math.max(...xs).toFixed(1)}`;

function memAvailableKiB() {
  return Number(readFileSync('/proc/meminfo', 'utf8').match(/MemAvailable:\s+(\d+)/)[1]);
}
function rssKiB(pid) {
  return Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);
}
function cgroupUsage(node) {
  const dir = `/sys/fs/cgroup/memory/sandgate/${node.name}`;
  if (!existsSync(dir)) return 0;
  let sum = 0;
  for (const d of readdirSync(dir, { withFileTypes: true })) {
    if (d.isDirectory()) sum += Number(readFileSync(`${dir}/${d.name}/memory.usage_in_bytes`, 'utf8'));
  }
  return sum;
}

async function createTimed(node, over) {
  const body = createBody({ memoryMB: 128, ...over });
  const t0 = performance.now();
  const r = await api(node, 'POST', '/v1/sandboxes', body);
  const ms = performance.now() - t0;
  if (r.status !== 201) throw new Error(`create: ${r.status} ${r.text}`);
  return { id: body.sandboxID, ms };
}

// Warm pool containers ready on node.
async function warmReady(node) {
  return (await api(node, 'GET', '/v1/info')).json.warmPool.ready;
}
// Every sandbox torn down and the pool back to full: each round starts from the same state.
const settle = (node, pool) => waitFor(async () =>
  readdirSync(`${node.state}/sandboxes`).every((d) => d.startsWith('w-')) && (await warmReady(node)) === pool, 60000);

async function latency(node, pool) {
  for (let i = 0; i < 3; i++) { // warm-up (page cache of the template and of runc)
    const s = await createTimed(node);
    await api(node, 'DELETE', `/v1/sandboxes/${s.id}`);
  }
  await settle(node, pool);
  const seq = [];
  for (let i = 0; i < SEQ; i++) {
    const s = await createTimed(node);
    seq.push(s.ms);
    await api(node, 'DELETE', `/v1/sandboxes/${s.id}`);
    await settle(node, pool);
  }
  const conc = [];
  for (let r = 0; r < ROUNDS; r++) {
    const got = await Promise.all(Array.from({ length: 10 }, () => createTimed(node)));
    for (const g of got) conc.push(g.ms);
    await Promise.all(got.map((g) => api(node, 'DELETE', `/v1/sandboxes/${g.id}`)));
    await settle(node, pool);
  }
  return { seq, conc };
}

const w = new World();
try {
  // The previous version's path (warm_pool: 0, every start runs `runc run`) and the warm pool, in
  // the same run on the same machine; two agents, one after the other.
  const POOL = Number(process.env.SG_BENCH_POOL || 10);
  const cold = await w.makeNode('bench0', { maxSandboxes: 50, memoryMB: 65536, warmPool: 0 });
  const node = await w.makeNode('bench1', { maxSandboxes: Math.max(IDLE + 10, 200), memoryMB: 65536, warmPool: POOL });
  await w.startRedis();
  await w.startNode(cold);
  console.log(`envd bundle: ${envdBundle}`);
  const c = await latency(cold, 0);
  await w.killNode(cold, 'SIGTERM');
  await w.startNode(node);
  const h = await latency(node, POOL);
  console.log(`start latency, 1 concurrent,  cold (warm_pool 0):  ${fmt(c.seq)}`);
  console.log(`start latency, 1 concurrent,  warm (warm_pool ${POOL}): ${fmt(h.seq)}`);
  console.log(`start latency, 10 concurrent, cold (warm_pool 0):  ${fmt(c.conc)}`);
  console.log(`start latency, 10 concurrent, warm (warm_pool ${POOL}): ${fmt(h.conc)}`);
  const r = (a, b, p) => (pct(a, p) / pct(b, p)).toFixed(2);
  console.log(`ratios cold/warm: 1 concurrent p50 ${r(c.seq, h.seq, 50)}x p99 ${r(c.seq, h.seq, 99)}x; ` +
    `10 concurrent p50 ${r(c.conc, h.conc, 50)}x p99 ${r(c.conc, h.conc, 99)}x`);

  // What the pool itself costs: its containers' cgroups (runc init waiting) and its processes.
  await settle(node, POOL);
  let poolCg = 0;
  const dir = `/sys/fs/cgroup/memory/sandgate/${node.name}`;
  for (const d of readdirSync(dir)) if (d.startsWith('w-')) poolCg += Number(readFileSync(`${dir}/${d}/memory.usage_in_bytes`, 'utf8'));
  console.log(`warm pool: ${POOL} containers, ${(poolCg / 1048576).toFixed(1)} MiB in their cgroups ` +
    `(${(poolCg / POOL / 1048576).toFixed(2)} MiB each)`);

  await sleep(1000);
  const poolBefore = cgroupUsage(node);
  const agentBefore = rssKiB(node.proc.pid);
  const availBefore = memAvailableKiB();
  const ids = [];
  for (let i = 0; i < IDLE; i += 10) {
    const got = await Promise.all(Array.from({ length: Math.min(10, IDLE - i) }, () => createTimed(node)));
    ids.push(...got.map((g) => g.id));
  }
  await waitFor(async () => (await warmReady(node)) === POOL, 60000);
  await sleep(3000);
  const availAfter = memAvailableKiB();
  const agentAfter = rssKiB(node.proc.pid);
  const inSandboxes = (cgroupUsage(node) - poolBefore) / 1024;
  const total = availBefore - availAfter;
  console.log(`idle sandboxes: ${ids.length} (pool refilled to ${POOL} before and after)`);
  console.log(`  host memory used (MemAvailable drop): ${(total / 1024).toFixed(1)} MiB = ${(total / ids.length / 1024).toFixed(2)} MiB/sandbox`);
  console.log(`  charged to the sandboxes' cgroups:    ${(inSandboxes / 1024).toFixed(1)} MiB = ${(inSandboxes / ids.length / 1024).toFixed(2)} MiB/sandbox`);
  console.log(`  outside the sandboxes (overhead):     ${((total - inSandboxes) / 1024).toFixed(1)} MiB = ${((total - inSandboxes) / ids.length / 1024).toFixed(2)} MiB/sandbox`);
  console.log(`  agent RSS: ${(agentBefore / 1024).toFixed(1)} -> ${(agentAfter / 1024).toFixed(1)} MiB`);
  await Promise.all(ids.map((id) => api(node, 'DELETE', `/v1/sandboxes/${id}`)));
  await settle(node, POOL);
} finally {
  await w.close();
}
