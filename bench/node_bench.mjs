// Node agent benchmark (issue 4): sandbox start latency (create request -> 201, which the node
// sends once envd answers GET /health) at 1 and 10 concurrent creates, and the per-sandbox memory
// overhead of 100 idle sandboxes. Needs root and a built tree; uses the integration harness.
//
//   node bench/node_bench.mjs            (env: SG_ENVD_BUNDLE, SG_BENCH_SEQ=30, SG_BENCH_ROUNDS=5,
//                                         SG_BENCH_IDLE=100)
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

const w = new World();
try {
  const node = await w.makeNode('bench1', { maxSandboxes: Math.max(IDLE + 10, 200), memoryMB: 65536 });
  await w.startRedis();
  await w.startNode(node);
  console.log(`envd bundle: ${envdBundle}`);
  // warm-up (page cache of the template and of runc)
  for (let i = 0; i < 3; i++) { const s = await createTimed(node); await api(node, 'DELETE', `/v1/sandboxes/${s.id}`); }

  const seq = [];
  for (let i = 0; i < SEQ; i++) {
    const s = await createTimed(node);
    seq.push(s.ms);
    await api(node, 'DELETE', `/v1/sandboxes/${s.id}`);
    await waitFor(() => readdirSync(`${node.state}/sandboxes`).length === 0, 30000);
  }
  console.log(`start latency, 1 concurrent:  ${fmt(seq)}`);

  const conc = [];
  for (let r = 0; r < ROUNDS; r++) {
    const got = await Promise.all(Array.from({ length: 10 }, () => createTimed(node)));
    for (const g of got) conc.push(g.ms);
    await Promise.all(got.map((g) => api(node, 'DELETE', `/v1/sandboxes/${g.id}`)));
    // Teardown runs in the background: let it finish so each round starts from the same state.
    await waitFor(() => readdirSync(`${node.state}/sandboxes`).length === 0, 30000);
  }
  console.log(`start latency, 10 concurrent: ${fmt(conc)}`);

  await waitFor(() => readdirSync(`${node.state}/sandboxes`).length === 0, 30000);
  await sleep(1000);
  const agentBefore = rssKiB(node.proc.pid);
  const availBefore = memAvailableKiB();
  const ids = [];
  for (let i = 0; i < IDLE; i += 10) {
    const got = await Promise.all(Array.from({ length: Math.min(10, IDLE - i) }, () => createTimed(node)));
    ids.push(...got.map((g) => g.id));
  }
  await sleep(3000);
  const availAfter = memAvailableKiB();
  const agentAfter = rssKiB(node.proc.pid);
  const inSandboxes = cgroupUsage(node) / 1024;
  const total = availBefore - availAfter;
  console.log(`idle sandboxes: ${ids.length}`);
  console.log(`  host memory used (MemAvailable drop): ${(total / 1024).toFixed(1)} MiB = ${(total / ids.length / 1024).toFixed(2)} MiB/sandbox`);
  console.log(`  charged to the sandboxes' cgroups:    ${(inSandboxes / 1024).toFixed(1)} MiB = ${(inSandboxes / ids.length / 1024).toFixed(2)} MiB/sandbox`);
  console.log(`  outside the sandboxes (overhead):     ${((total - inSandboxes) / 1024).toFixed(1)} MiB = ${((total - inSandboxes) / ids.length / 1024).toFixed(2)} MiB/sandbox`);
  console.log(`  agent RSS: ${(agentBefore / 1024).toFixed(1)} -> ${(agentAfter / 1024).toFixed(1)} MiB`);
  await Promise.all(ids.map((id) => api(node, 'DELETE', `/v1/sandboxes/${id}`)));
  await waitFor(() => readdirSync(`${node.state}/sandboxes`).length === 0, 60000);
} finally {
  await w.close();
}
