// Benchmark (not a test): creates/s and p50/p99 latency of POST /v2/sandboxes through the whole
// API path (auth cached, node test double answering at once) at 32 concurrent connections, with
// 3 and with 1,000 registered nodes. Real PostgreSQL (audit rows) and Redis; wrk drives the load.
//
//   cmake --build build -j2 && node bench/sched_bench.mjs [--duration 10] [--nodes 3,1000]
import { spawn, execFileSync } from 'node:child_process';
import path from 'node:path';
import fs from 'node:fs';
import { startPostgres, startRedis, startGateway, gatewayConfig, sandgate, createTeam, createKey, tmpdir, ROOT, sleep, onCleanup } from '../tests/integration/lib/services.mjs';
import { Resp } from '../tests/integration/lib/sched-redis.mjs';

const args = process.argv.slice(2);
const opt = (k, d) => { const i = args.indexOf(k); return i >= 0 ? args[i + 1] : d; };
const duration = Number(opt('--duration', '10'));
const counts = opt('--nodes', '3,1000').split(',').map(Number);
const TOKEN = 'test-node-token-0123456789';
const extra = 'log:\n  level: warn\nsandbox:\n  default_timeout_s: 3600\n';

async function double(redis, id, count) {
  const p = spawn('node', [path.join(ROOT, 'tests/nodedouble/nodedouble.mjs'), '--redis', redis.address, '--token', TOKEN,
    '--id', id, '--count', String(count), '--vcpu', '1000000', '--mem', '100000000', '--no-list', '--heartbeat-ms', '1000'], { stdio: ['ignore', 'pipe', 'inherit'] });
  onCleanup(() => p.kill('SIGKILL'));
  await new Promise((resolve) => p.stdout.on('data', (d) => { if (String(d).includes('READY')) resolve(); }));
  return p;
}

for (const n of counts) {
  const pg = await startPostgres();
  const redis = await startRedis();
  const dir = tmpdir('bench');
  const config = path.join(dir, 'admin.yaml');
  fs.writeFileSync(config, gatewayConfig({ port: 1, pg, redis, extra }));
  sandgate(config, 'migrate');
  createTeam(config, 'bench', '--max-concurrent', '1000000');
  const key = createKey(config, 'bench');
  // n node ids: with 3, three processes; with 1,000, one process registering 1,000 ids (the
  // gateway sees 1,000 nodes; one double process answers for all of them).
  const procs = n <= 3 ? await Promise.all([...Array(n).keys()].map((i) => double(redis, `node-${i}`, 1)))
    : [await double(redis, 'node', n)];
  const gw = await startGateway({ pg, redis, extra, name: 'gw' });
  const resp = await Resp.connect(redis.address);
  await sleep(1500);
  const registered = (await resp.command('ZCARD', '{sg}:nodes'));
  // Warm up: the auth cache and keep-alive connections to the nodes.
  execFileSync('wrk', ['-t2', '-c32', '-d2s', '-s', path.join(ROOT, 'bench/sched_create.lua'), gw.url + '/v2/sandboxes'],
    { env: { ...process.env, SG_BENCH_KEY: key }, encoding: 'utf8' });
  const out = execFileSync('wrk', ['-t2', '-c32', `-d${duration}s`, '--latency', '-s', path.join(ROOT, 'bench/sched_create.lua'), gw.url + '/v2/sandboxes'],
    { env: { ...process.env, SG_BENCH_KEY: key }, encoding: 'utf8' });
  const line = out.split('\n').find((l) => l.startsWith('RESULT'));
  const sbx = await resp.command('EVAL', "return #redis.call('KEYS', '{sg}:sbx:*')", 0);
  console.log(`nodes=${registered} ${line.slice(7)} catalog_entries=${sbx}`);
  resp.close();
  await gw.stop('SIGKILL');
  for (const p of procs) p.kill('SIGKILL');
  await redis.stop();
  await pg.stop();
}
process.exit(0);
