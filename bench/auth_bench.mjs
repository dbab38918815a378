// Authenticated request throughput: GET /teams/me with a cached API key vs GET /health on the
// same gateway in the same run (wrk, keep-alive, 2 threads, 64 connections). Reports both and
// their ratio: what API-key authentication costs per request once the key is cached.
//   node bench/auth_bench.mjs [--duration 5]
import { execFileSync } from 'node:child_process';
import { stack, createTeam, createKey, shutdownAll } from '../tests/integration/lib/services.mjs';

const dur = process.argv.includes('--duration') ? process.argv[process.argv.indexOf('--duration') + 1] : '5';
const s = await stack();
createTeam(s.config, 'bench');
const key = createKey(s.config, 'bench');
await fetch(`${s.gw.url}/teams/me`, { headers: { 'x-api-key': key } }); // warm the cache

function wrk(path, headers = []) {
  const args = ['-t2', '-c64', `-d${dur}s`, '--latency', ...headers.flatMap((h) => ['-H', h]), `${s.gw.url}${path}`];
  const out = execFileSync('wrk', args, { encoding: 'utf8' });
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)[1]);
  const p99 = /99%\s+([\d.]+\w+)/.exec(out)[1];
  return { rps, p99, cmd: `wrk ${args.join(' ')}` };
}
const health = wrk('/health');
const me = wrk('/teams/me', [`x-api-key: ${key}`]);
console.log(`/health:   ${health.rps.toFixed(0)} req/s, p99 ${health.p99}`);
console.log(`/teams/me: ${me.rps.toFixed(0)} req/s, p99 ${me.p99} (cached API key)`);
console.log(`ratio authenticated/health: ${(me.rps / health.rps).toFixed(2)}`);
shutdownAll();
process.exit(0);
