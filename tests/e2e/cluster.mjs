// A multi-node test cluster: three "hosts" as network namespaces joined to the root namespace by
// veth links, a real sandgate-node agent in each (entered with `nsenter --net`, as
// tests/integration/lib/node-harness.mjs does, so /sys and the cgroup mounts runc needs stay
// visible), two gateways in the root namespace, and one shared PostgreSQL and Redis.
//
//   root namespace: PostgreSQL 127.0.0.1, Redis 127.0.0.1 + each host-side veth address,
//                   gateway A and gateway B on 127.0.0.1
//   netns host-k:   sandgate-node (API :7070, proxy :7071 on 10.<b>.<4k>.2), its bridge and sandboxes
//
// Gateways reach each node's API at its veth address; nodes heartbeat to Redis at the root-side
// veth address. Everything (processes, namespaces, links, containers, mounts, cgroups, temp folders)
// is removed by stop(), and also on exit, SIGINT and SIGTERM through the two harnesses' hooks.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { World, TOKEN as NODE_TOKEN, canRun as nodeCanRun } from '../integration/lib/node-harness.mjs';
import { startPostgres, launch, freePort, tmpdir, waitFor, onCleanup, sandgate, SANDGATE } from '../integration/lib/services.mjs';

export const ADMIN_TOKEN = 'cluster-admin-token-0123456789';
export const DOMAIN = 'sandgate.test';
export { NODE_TOKEN };

export function canRun() {
  const why = nodeCanRun();
  if (why) return why;
  if (!fs.existsSync(SANDGATE)) return `missing ${SANDGATE} (build first)`;
  return null;
}

function gatewayYaml({ port, pg, redisPort, extra }) {
  return `listeners:
  - address: 127.0.0.1
    port: ${port}
domain: ${DOMAIN}
threads: 1
postgres:
  dsn: "${pg.dsn}"
  query_timeout_ms: 3000
redis:
  address: 127.0.0.1:${redisPort}
node_token: "${NODE_TOKEN}"
admin_token: "${ADMIN_TOKEN}"
token_secret: cluster-token-secret-0123456789
scheduler:
  node_down_after_ms: ${extra.nodeDownAfterMs ?? 1500}
  create_timeout_ms: 30000
  reservation_ttl_ms: 40000
  max_attempts: 3
sandbox:
  default_timeout_s: 300
  max_timeout_s: 3600
log:
  level: ${extra.logLevel || 'info'}
`;
}

// Starts the cluster. opts.nodes: per-node capacity {vcpu, memoryMB, maxSandboxes} (default 3
// nodes); opts.gateways: how many gateways (default 2); opts.template: {vcpu, memoryMB} written to
// the `base` template row so that many small sandboxes fit.
export async function startCluster(opts = {}) {
  const nodeSpecs = opts.nodes || [{}, {}, {}];
  const pg = await startPostgres();
  const world = new World();
  let stopped = false;
  const c = { pg, world, nodes: [], gateways: [], redisPort: 0, dir: tmpdir('cluster') };
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    for (const g of c.gateways) await g.stop('SIGKILL');
    for (const n of c.nodes) await world.killNode(n, 'SIGKILL');
    world.closeSync(); // containers, mounts, cgroups, namespaces, links, Redis
    await pg.stop();
  };
  c.stop = stop;
  onCleanup(() => { if (!stopped) world.closeSync(); });
  try {
    for (let i = 0; i < nodeSpecs.length; i++) c.nodes.push(await world.makeNode(`e2e${world.tag}-host${i + 1}`, { graceMs: 1000, ...nodeSpecs[i] }));
    await world.startRedis(); // binds loopback and every host-side veth address
    c.redisPort = world.redisPort;

    c.config = path.join(c.dir, 'admin.yaml');
    fs.writeFileSync(c.config, gatewayYaml({ port: 1, pg, redisPort: c.redisPort, extra: opts }));
    sandgate(c.config, 'migrate');
    if (opts.template) {
      psql(pg, `UPDATE templates SET vcpu = ${Number(opts.template.vcpu)}, memory_mb = ${Number(opts.template.memoryMB)} WHERE id = 'base'`);
    }
    await Promise.all(c.nodes.map((n) => world.startNode(n)));
    for (let i = 0; i < (opts.gateways ?? 2); i++) c.gateways.push(await startGateway(c, `gw${String.fromCharCode(65 + i)}`, opts));
    // Every node registered and visible to the scheduler.
    await waitFor(async () => {
      const l = await adminNodes(c.gateways[0]);
      return l.length === c.nodes.length && l.every((n) => n.status === 'ready');
    }, { timeout: 15000, what: 'nodes registered' });
  } catch (e) {
    const logs = clusterLogs(c);
    await stop();
    e.message += `\n${logs}`;
    throw e;
  }
  return c;
}

function psql(pg, sql) {
  execFileSync('psql', ['-h', '127.0.0.1', '-p', String(pg.port), '-U', 'sandgate', '-d', 'sandgate', '-v', 'ON_ERROR_STOP=1', '-qc', sql], { stdio: ['ignore', 'ignore', 'pipe'] });
}

async function startGateway(c, name, opts) {
  const dir = tmpdir(name);
  const port = await freePort();
  const config = path.join(dir, 'gateway.yaml');
  fs.writeFileSync(config, gatewayYaml({ port, pg: c.pg, redisPort: c.redisPort, extra: opts }));
  const gw = {
    name, port, dir, config, url: `http://127.0.0.1:${port}`, log: path.join(dir, 'gateway.log'), proc: null,
    async start() {
      gw.proc = launch(SANDGATE, ['--config', config, 'serve'], { log: gw.log });
      gw.exited = new Promise((r) => gw.proc.on('exit', (code, sig) => r({ code, sig })));
      await waitFor(async () => (await fetch(`${gw.url}/health`)).status === 200, { what: `gateway ${name}` });
    },
    async stop(signal = 'SIGTERM') {
      if (!gw.proc) return null;
      const p = gw.proc; gw.proc = null;
      p.kill(signal);
      return gw.exited;
    },
  };
  await gw.start();
  onCleanup(() => gw.proc && gw.proc.kill('SIGKILL'));
  return gw;
}

// GET /admin/nodes on a gateway: the scheduler's view of the nodes.
export async function adminNodes(gw) {
  const r = await fetch(`${gw.url}/admin/nodes`, { headers: { 'x-admin-token': ADMIN_TOKEN } });
  if (r.status !== 200) throw new Error(`admin/nodes: ${r.status} ${await r.text()}`);
  const j = await r.json();
  return j;
}

// A team and an API key for it.
export function teamKey(c, name, ...opts) {
  sandgate(c.config, 'team', 'create', name, ...opts);
  return sandgate(c.config, 'key', 'create', '--team', name).trim();
}

// The tails of every log of the cluster, for a failure message.
export function clusterLogs(c, lines = 30) {
  const tail = (f) => { try { return fs.readFileSync(f, 'utf8').split('\n').slice(-lines).join('\n'); } catch { return ''; } };
  const parts = [];
  for (const n of c.nodes) parts.push(`--- ${n.name} (${n.log})\n${tail(n.log)}`);
  for (const g of c.gateways) parts.push(`--- ${g.name} (${g.log})\n${tail(g.log)}`);
  return parts.join('\n');
}

// `node tests/e2e/cluster.mjs` (as root, after a build): starts the cluster with a team and key,
// prints what an E2B SDK client needs, and runs until Ctrl-C, which tears everything down.
if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const why = canRun();
  if (why) { console.error(`cluster: cannot run: ${why}`); process.exit(1); }
  const c = await startCluster();
  const key = teamKey(c, 'dev', '--max-concurrent', '100');
  console.log(`# ${c.nodes.length} nodes (${c.nodes.map((n) => `${n.name} ${n.api}`).join(', ')}), ${c.gateways.length} gateways`);
  for (const g of c.gateways) console.log(`# ${g.name}: ${g.url}  log ${g.log}`);
  console.log(`export E2B_API_KEY=${key}\nexport E2B_API_URL=${c.gateways[0].url}\nexport E2B_DOMAIN=${DOMAIN}`);
  console.log('# Ctrl-C stops the cluster');
  setInterval(() => {}, 1 << 30);
}
