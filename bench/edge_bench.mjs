// Edge proxy benchmark (issue 6): the sandgate gateway against nginx 1.22 as the reverse proxy in
// front of the same upstream: a real node agent (its own network namespace; its node proxy) and a
// sandbox running nginx (the host's binary, copied in) that answers /small (100 B) and /big
// (1 MiB). nginx on the host proxies to the node proxy with the same X-Sandgate-* and X-Forwarded-*
// headers and a keep-alive upstream; the gateway routes by Host (8080-<id>.<domain>). wrk keeps
// its connections alive; plain HTTP and TLS (the same self-signed certificate for both); the
// same wrk parameters for both; runs interleaved (the order alternates by round); the median
// round of each case is printed with req/s, p99 and the gateway/nginx ratios. Needs root, a built
// tree (build/), wrk and /usr/sbin/nginx.
//
//   node bench/edge_bench.mjs   (env: SG_BENCH_ROUNDS=3, SG_BENCH_DURATION=10, SG_BENCH_CONNS=64,
//                                SG_BENCH_THREADS=2 (wrk threads), SG_BENCH_CASES="1 MiB HTTP,...",
//                                SG_BENCH_GW_EXTRA=<gateway YAML appended>)
// The gateway runs the test configuration's 2 worker threads; nginx gets worker_processes 2.
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { execFileSync, spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { World, canRun, TOKEN, waitFor } from '../tests/integration/lib/node-harness.mjs';
import { startPostgres, startGateway, gatewayConfig, sandgate, createTeam, createKey, tmpdir, freePort,
  selfSignedCert, shutdownAll } from '../tests/integration/lib/services.mjs';

const why = canRun();
if (why) { console.error(`edge_bench: cannot run: ${why}`); process.exit(2); }
const { Sandbox } = createRequire(new URL('../tests/package.json', import.meta.url))('e2b');

const ROUNDS = Number(process.env.SG_BENCH_ROUNDS || 3);
const DURATION = Number(process.env.SG_BENCH_DURATION || 10);
const CONNS = Number(process.env.SG_BENCH_CONNS || 64);
const THREADS = Number(process.env.SG_BENCH_THREADS || 2);
const WORKERS = 2; // tests/integration/lib/services.mjs gatewayConfig(): threads: 2
const DOMAIN = 'sandgate.test';
const GW_NODE_TOKEN = 'test-node-token-0123456789';
const PORT = 8080;

const loadavg = () => fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
// CPU time in clock ticks (1/100 s): of some processes (user + system), and of the whole machine
// (busy: user, nice, system, irq, softirq)
const ticksOf = (pids) => pids.reduce((sum, pid) => {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return sum + Number(f[11]) + Number(f[12]);
  } catch { return sum; }
}, 0);
const busyTicks = () => {
  const c = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return c[0] + c[1] + c[2] + c[5] + c[6];
};

// wrk's summary: req/s and the p99 latency in ms (from --latency).
function wrk(url, host, seconds = DURATION) {
  const out = execFileSync('wrk', [`-t${THREADS}`, `-c${CONNS}`, `-d${seconds}s`, '--latency', '-H', `Host: ${host}`, url],
    { encoding: 'utf8' });
  const rps = Number(out.match(/Requests\/sec:\s+([\d.]+)/)[1]);
  const m = out.match(/^\s+99%\s+([\d.]+)(us|ms|s)\s*$/m);
  const p99 = Number(m[1]) * { us: 0.001, ms: 1, s: 1000 }[m[2]];
  const non2xx = out.match(/Non-2xx or 3xx responses:\s+(\d+)/);
  const errs = out.match(/Socket errors:.*/);
  return { rps, p99, non2xx: non2xx ? Number(non2xx[1]) : 0, errs: errs ? errs[0] : '' };
}

const w = new World();
let nginx = null;
try {
  const node = await w.makeNode('eb1');
  fs.writeFileSync(node.config, fs.readFileSync(node.config, 'utf8').replace(TOKEN, GW_NODE_TOKEN));
  await w.startRedis();
  await w.startNode(node);
  const pg = await startPostgres();
  const redis = { address: `127.0.0.1:${w.redisPort}` };
  const cfg = path.join(tmpdir('cfg'), 'admin.yaml');
  fs.writeFileSync(cfg, gatewayConfig({ port: 1, pg, redis }));
  sandgate(cfg, 'migrate');
  createTeam(cfg, 'bench', '--max-concurrent', '4', '--max-timeout', '3600');
  const key = createKey(cfg, 'bench');
  // (the gateway's rate limit is off by default, as nginx has none)
  const gw = await startGateway({ pg, redis, tls: true, extra: process.env.SG_BENCH_GW_EXTRA || '' });
  const sbx = await Sandbox.create('base', { apiKey: key, apiUrl: gw.url, sandboxUrl: gw.url, domain: DOMAIN,
    requestTimeoutMs: 60000, timeoutMs: 3600000 });

  // the upstream: nginx inside the sandbox (same Debian release: its libraries are in the template)
  await sbx.files.write('/tmp/up/nginx', new Blob([fs.readFileSync('/usr/sbin/nginx')]));
  await sbx.files.write('/tmp/up/nginx.conf', `daemon off; master_process off; worker_processes 1;
error_log /tmp/up/error.log; pid /tmp/up/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path /tmp/up/b; proxy_temp_path /tmp/up/p; fastcgi_temp_path /tmp/up/f;
  uwsgi_temp_path /tmp/up/u; scgi_temp_path /tmp/up/s; keepalive_requests 100000;
  server { listen ${PORT}; root /tmp/up/www;
    location = /small { default_type text/plain; return 200 '${'x'.repeat(99)}\n'; } }
}
`);
  const r = await sbx.commands.run('chmod +x /tmp/up/nginx && mkdir -p /tmp/up/www && head -c 1048576 /dev/urandom > /tmp/up/www/big');
  if (r.exitCode !== 0) throw new Error('upstream setup failed');
  // timeoutMs 0: the SDK's default (60 s) would end the server mid-benchmark
  await sbx.commands.run('/tmp/up/nginx -p /tmp/up -c /tmp/up/nginx.conf', { background: true, timeoutMs: 0 });
  const host = `${PORT}-${sbx.sandboxId}.${DOMAIN}`;
  const status = (url) => execFileSync('curl', ['-sk', '-o', '/dev/null', '-w', '%{http_code}', '-H', `Host: ${host}`, url],
    { encoding: 'utf8' });
  await waitFor(() => status(`${gw.url}/small`) === '200', 15000, 200);

  // nginx on the host: the reverse proxy to compare with
  const nd = tmpdir('nginx');
  const cert = selfSignedCert(nd);
  const nPlain = await freePort();
  const nTls = await freePort();
  const proxyAddr = node.proxy.replace('http://', '');
  fs.writeFileSync(path.join(nd, 'nginx.conf'), `daemon off; worker_processes ${WORKERS};
error_log ${nd}/error.log; pid ${nd}/nginx.pid;
events { worker_connections 4096; }
http {
  # an access log line per request, as the gateway writes one (the comparison is like for like)
  access_log ${nd}/access.log; client_body_temp_path ${nd}/b; proxy_temp_path ${nd}/p; fastcgi_temp_path ${nd}/f;
  uwsgi_temp_path ${nd}/u; scgi_temp_path ${nd}/s; keepalive_requests 100000;
  upstream node { server ${proxyAddr}; keepalive 128; }
  server {
    listen 127.0.0.1:${nPlain}; listen 127.0.0.1:${nTls} ssl;
    ssl_certificate ${cert.cert}; ssl_certificate_key ${cert.key};
    ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
    location / {
      proxy_pass http://node; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Sandgate-Node-Token "${GW_NODE_TOKEN}";
      proxy_set_header X-Sandgate-Sandbox-Id "${sbx.sandboxId}";
      proxy_set_header X-Sandgate-Sandbox-Port "${PORT}";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
    }
  }
}
`);
  nginx = spawn('/usr/sbin/nginx', ['-p', nd, '-c', path.join(nd, 'nginx.conf')], { stdio: 'ignore' });
  // SIGTERM to the master ends its workers too (SIGKILL would leave them running)
  process.on('exit', () => { try { nginx.kill('SIGTERM'); } catch {} });
  await waitFor(() => status(`http://127.0.0.1:${nPlain}/small`) === '200', 10000, 100);
  for (const u of [`https://127.0.0.1:${gw.tlsPort}/big`, `https://127.0.0.1:${nTls}/big`]) {
    if (status(u) !== '200') throw new Error(`${u} does not answer 200`);
  }

  const cases = [];
  for (const size of ['small', 'big']) {
    for (const tls of [false, true]) {
      const scheme = tls ? 'https' : 'http';
      cases.push({
        name: `${size === 'small' ? '100 B' : '1 MiB'} ${tls ? 'TLS ' : 'HTTP'}`,
        gateway: `${scheme}://127.0.0.1:${tls ? gw.tlsPort : gw.port}/${size}`,
        nginx: `${scheme}://127.0.0.1:${tls ? nTls : nPlain}/${size}`,
        runs: { gateway: [], nginx: [] },
      });
    }
  }
  // SG_BENCH_CASES="1 MiB HTTP,100 B TLS": only those cases
  if (process.env.SG_BENCH_CASES) {
    const keep = process.env.SG_BENCH_CASES.split(',').map((x) => x.trim());
    cases.splice(0, cases.length, ...cases.filter((c) => keep.includes(c.name.trim())));
  }
  console.log(`cpus=${os.cpus().length} wrk -t${THREADS} -c${CONNS} -d${DURATION}s --latency; gateway threads=${WORKERS}, nginx workers=${WORKERS}; rounds=${ROUNDS}`);
  console.log(`load before: ${loadavg()}`);
  for (const c of cases) { wrk(c.gateway, host, 2); wrk(c.nginx, host, 2); } // warm-up
  // the gateway's route cache over the measured runs (its /metrics counters, all workers)
  const routeCache = () => {
    const m = execFileSync('curl', ['-s', '-H', 'Host: api.sandgate.test', `http://127.0.0.1:${gw.port}/metrics`], { encoding: 'utf8' });
    const n = (name) => Number((m.match(new RegExp(`^${name} (\\d+)$`, 'm')) || [0, NaN])[1]);
    return { hits: n('sandgate_route_cache_hits_total'), misses: n('sandgate_route_cache_misses_total') };
  };
  const cache0 = routeCache();
  for (let round = 0; round < ROUNDS; round++) {
    for (const c of cases) {
      const order = round % 2 === 0 ? ['gateway', 'nginx'] : ['nginx', 'gateway'];
      for (const who of order) {
        const pids = who === 'gateway' ? [gw.proc.pid] : execFileSync('pgrep', ['-P', String(nginx.pid)], { encoding: 'utf8' })
          .split('\n').filter(Boolean).map(Number);
        const t0 = ticksOf(pids), b0 = busyTicks();
        const res = wrk(c[who], host);
        const n = res.rps * DURATION; // requests served
        res.cpu = ((ticksOf(pids) - t0) * 10) / n; // ms of the proxy's CPU per request
        res.busy = ((busyTicks() - b0) * 10) / n;  // ms of the machine's CPU per request
        c.runs[who].push(res);
        if (res.non2xx && !c.sampled) { // what the failures are (wrk only counts them)
          c.sampled = true;
          // status and size only: a 1 MiB body would overflow execFileSync's buffer
          const out = execFileSync('curl', ['-sk', '-m', '5', '-o', '/dev/null', '-H', `Host: ${host}`,
            '-w', '[%{http_code}] %{size_download} bytes', c[who]], { encoding: 'utf8' });
          console.log(`    a request right after: ${out}`);
        }
        console.log(`  round ${round + 1} ${c.name} ${who.padEnd(7)} ${res.rps.toFixed(0).padStart(7)} req/s p99 ${res.p99.toFixed(2)} ms` +
          `${res.non2xx ? ` non-2xx ${res.non2xx}` : ''}${res.errs ? ` ${res.errs}` : ''} (load ${loadavg()})`);
      }
    }
  }
  console.log(`load after: ${loadavg()}`);
  const cache1 = routeCache();
  const dh = cache1.hits - cache0.hits, dm = cache1.misses - cache0.misses;
  console.log(`route cache over the measured runs: ${dh} hits, ${dm} misses (hit rate ${(100 * dh / (dh + dm)).toFixed(3)}%)`);
  // What the gateway still holds once every client is gone (a stuck request would show here).
  const held = () => ['port', 'tlsPort'].map((k) => execFileSync('ss', ['-Htn', 'state', 'connected',
    `( sport = :${gw[k]} )`], { encoding: 'utf8' }).split('\n').filter(Boolean).length);
  console.log(`gateway connections still open (any state but listening/time-wait; plain, TLS): ${held().join(', ')}`);
  await new Promise((r) => setTimeout(r, 2000));
  console.log(`... 2 s later: ${held().join(', ')}`);
  const met = execFileSync('curl', ['-s', '-H', 'Host: api.sandgate.test', `http://127.0.0.1:${gw.port}/metrics`], { encoding: 'utf8' });
  console.log(`  gateway's own count: ${(met.match(/^sandgate_connections_counted \d+$/m) || ['?'])[0]}`);
  // sockets the gateway process still has open (a socket reset by the client leaves no TCP state
  // that ss lists, but an fd h2o never closed stays here)
  const socks = fs.readdirSync(`/proc/${gw.proc.pid}/fd`).filter((f) => {
    try { return fs.readlinkSync(`/proc/${gw.proc.pid}/fd/${f}`).startsWith('socket:'); } catch { return false; }
  }).length;
  console.log(`  gateway process's open sockets (listeners, Redis, PostgreSQL, node pools included): ${socks}`);
  if (process.env.SG_BENCH_HOLD) { console.log(`holding (gateway pid ${gw.proc.pid}, Host: ${host}; ${cases.map((c) => `${c.name}: ${c.gateway} vs ${c.nginx}`).join('; ')}); Ctrl-C to end`); await new Promise(() => {}); }
  for (const st of ['close-wait', 'time-wait', 'established', 'fin-wait-1', 'fin-wait-2'])
    console.log(`  ${st}: ${['port', 'tlsPort'].map((k) => execFileSync('ss', ['-Htn', 'state', st,
      `( sport = :${gw[k]} )`], { encoding: 'utf8' }).split('\n').filter(Boolean).length).join(', ')}`);
  const after = execFileSync('curl', ['-sk', '-o', '/dev/null', '-m', '5', '-w', '%{http_code}', '-H', `Host: ${host}`,
    cases[0].gateway], { encoding: 'utf8' });
  console.log(`a gateway request after the runs: ${after}`);
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log('\n(medians of the rounds; a case with non-2xx answers in any round is marked *: not a valid figure)');
  console.log('case          | gateway req/s  p99 ms | nginx req/s  p99 ms | rps ratio | p99 ratio | paired ratio');
  console.log('(paired ratio: the median of each round\'s gateway/nginx req/s, robust to a machine that drifts between rounds)');
  for (const c of cases) {
    const g = { rps: median(c.runs.gateway.map((x) => x.rps)), p99: median(c.runs.gateway.map((x) => x.p99)) };
    const n = { rps: median(c.runs.nginx.map((x) => x.rps)), p99: median(c.runs.nginx.map((x) => x.p99)) };
    const bad = [...c.runs.gateway, ...c.runs.nginx].some((x) => x.non2xx || x.errs) ? '*' : ' ';
    const paired = median(c.runs.gateway.map((x, i) => x.rps / c.runs.nginx[i].rps));
    console.log(`${c.name}${bad}   | ${g.rps.toFixed(0).padStart(13)} ${g.p99.toFixed(2).padStart(7)} | ${n.rps.toFixed(0).padStart(11)} ` +
      `${n.p99.toFixed(2).padStart(7)} | ${(g.rps / n.rps).toFixed(2).padStart(9)} | ${(g.p99 / n.p99).toFixed(2).padStart(9)} | ` +
      `${paired.toFixed(2).padStart(12)}`);
  }
  // Where the CPU goes: both proxies share the node proxy, the sandbox's server and wrk on the same
  // cores, so a proxy that used no CPU at all would serve at most busy / (busy - nginx's own) times
  // nginx's requests (CPU-bound runs).
  console.log('\nCPU per request (ms, medians of the rounds): the proxy itself, and the whole machine');
  console.log('case          | gateway  machine | nginx  machine | bound for a proxy using no CPU');
  for (const c of cases) {
    const gc = median(c.runs.gateway.map((x) => x.cpu)), gb = median(c.runs.gateway.map((x) => x.busy));
    const nc = median(c.runs.nginx.map((x) => x.cpu)), nb = median(c.runs.nginx.map((x) => x.busy));
    console.log(`${c.name}    | ${gc.toFixed(4).padStart(7)} ${gb.toFixed(4).padStart(8)} | ${nc.toFixed(4).padStart(5)} ` +
      `${nb.toFixed(4).padStart(8)} | ${(nb / (nb - nc)).toFixed(2)}x nginx`);
  }
  await sbx.kill().catch(() => {});
  await gw.stop('SIGKILL');
  await pg.stop();
} finally {
  if (nginx && nginx.exitCode === null) {
    const gone = new Promise((r) => nginx.on('exit', r));
    nginx.kill('SIGTERM');
    await gone;
  }
  shutdownAll();
  await w.close();
}
