// The user-visible headline: Sandbox.create() -> first command output, through the gateway with
// the official SDK, at 1 and at N concurrent users, against the cluster in .sandgate/dev.env
// (start it with `SANDGATE_DETACH=1 deploy/dev.sh`). Every sandbox is killed afterwards.
//   node bench/e2e_bench.mjs [--rounds 10] [--users 1,20] [--pause-ms 3000] [--env FILE]
// --env: another cluster's `export E2B_...=` lines (e.g. what tests/e2e/cluster.mjs prints).
// --pause-ms: quiet time between rounds, in which the node refills its warm pool (a burst of N
// users every few seconds, not back to back).
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const envFile = process.argv.includes('--env') ? process.argv[process.argv.indexOf('--env') + 1]
  : path.join(root, '.sandgate/dev.env');
for (const line of fs.readFileSync(envFile, 'utf8').split('\n')) {
  const m = /^export (\w+)=(.*)$/.exec(line);
  if (m) process.env[m[1]] = m[2];
}
const { Sandbox } = createRequire(path.join(root, 'tests/package.json'))('e2b');
const arg = (k, d) => (process.argv.includes(k) ? process.argv[process.argv.indexOf(k) + 1] : d);
const rounds = Number(arg('--rounds', '10'));
const users = arg('--users', '1,20').split(',').map(Number);
const pauseMs = Number(arg('--pause-ms', '3000'));

const pct = (a, p) => a[Math.min(a.length - 1, Math.floor((a.length * p) / 100))];
async function one() {
  const t0 = performance.now();
  const s = await Sandbox.create('base', { timeoutMs: 120000 });
  const r = await s.commands.run('echo ready');
  const ms = performance.now() - t0;
  if (r.stdout.trim() !== 'ready') throw new Error('unexpected output');
  return { ms, s };
}
for (const n of users) {
  const times = [];
  const made = [];
  for (let i = 0; i < rounds; i++) {
    const res = await Promise.all([...Array(n)].map(() => one()));
    for (const x of res) { times.push(x.ms); made.push(x.s); }
    await Promise.all(made.splice(0).map((s) => s.kill()));
    await new Promise((r) => setTimeout(r, pauseMs));
  }
  times.sort((a, b) => a - b);
  console.log(`users=${n} pause=${pauseMs}ms samples=${times.length} create->first-output p50=${pct(times, 50).toFixed(1)}ms p99=${pct(times, 99).toFixed(1)}ms max=${times[times.length - 1].toFixed(1)}ms`);
}
