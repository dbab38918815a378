// Test harness for the node agent: a network namespace per node (veth to the root namespace),
// a private Redis, a node config, the agent started inside the namespace with nsenter (only the
// network namespace changes: `ip netns exec` would remount /sys and hide the cgroup mounts runc
// needs), and a cleanup that removes everything even after a failed test.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, mkdirSync, symlinkSync, rmSync, existsSync, readFileSync, copyFileSync, readdirSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';

const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, '../../..');
export const nodeBin = process.env.SG_NODE_BIN || join(repo, 'build/sandgate-node');
// The real envd bundle once it exists on main; until then the python test double.
export const envdBundle = process.env.SG_ENVD_BUNDLE ||
  (existsSync(join(repo, 'build/envd-bundle/sandgate-envd')) ? join(repo, 'build/envd-bundle')
    : join(here, 'node-envd-double'));
export const templatesSrc = process.env.SG_TEMPLATES_DIR || process.env.SANDGATE_TEMPLATES ||
  '/var/lib/sandgate-cache/templates';
export const TOKEN = 'node-test-token-0123456789abcdef';

export function sh(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}
export function trySh(cmd, args, opts) {
  try { return sh(cmd, args, opts); } catch { return null; }
}

export function canRun() {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!existsSync(nodeBin)) return `missing ${nodeBin} (build first)`;
  if (!existsSync(join(templatesSrc, 'base/rootfs'))) return `missing template ${templatesSrc}/base/rootfs`;
  if (!trySh('runc', ['--version'])) return 'runc missing';
  return null;
}

export async function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); });
    s.on('error', rej);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(fn, timeoutMs = 10000, stepMs = 50) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    await sleep(stepMs);
  }
  throw new Error(`timed out waiting${last ? ': ' + last.message : ''}`);
}

// Worlds still open are torn down on exit and on SIGINT/SIGTERM too (every cleanup step is
// synchronous for that reason).
const live = new Set();
process.on('exit', () => { for (const w of live) w.closeSync(); });
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => { for (const w of live) w.closeSync(); process.exit(130); });
}

let seq = 0;
// One test world: Redis in the root namespace + any number of nodes in their own namespaces.
export class World {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'sgnode-'));
    this.tag = `${process.pid % 10000}${seq++}`;
    this.cleanups = [];
    this.nodes = [];
    this.b = 1 + Math.floor(Math.random() * 250); // second octet of the test's link subnets
    live.add(this);
  }

  async startRedis() {
    this.redisPort ??= await freePort();
    await this.startRedis0();
  }

  // (Re)starts Redis on this.redisPort.
  async startRedis0() {
    const rdir = join(this.dir, 'redis'); mkdirSync(rdir, { recursive: true });
    // Bound to loopback and to every node's root-side veth address: call after makeNode().
    const binds = ['127.0.0.1', ...this.nodes.map((n) => n.hostIp)].join(' ');
    this.redis = spawn('redis-server', ['--port', String(this.redisPort), '--bind', binds,
      '--protected-mode', 'no', '--save', '', '--appendonly', 'no', '--dir', rdir],
      { stdio: 'ignore' });
    this.cleanups.push(() => { try { this.redis.kill('SIGKILL'); } catch {} });
    await waitFor(() => trySh('redis-cli', ['-p', String(this.redisPort), 'ping'])?.trim() === 'PONG');
  }

  redisCli(...args) { return sh('redis-cli', ['-p', String(this.redisPort), ...args]).trim(); }

  // Makes netns + veth and the node's config; Redis (started afterwards) listens on the
  // root-side veth address. The port is chosen here so the config can name it.
  async makeNode(name, extra = {}) {
    this.redisPort ??= await freePort();
    const k = this.nodes.length + 1;
    const ns = `sgt${this.tag}n${k}`;
    const hostIf = `sgt${this.tag}h${k}`.slice(0, 15), nsIf = `sgt${this.tag}i${k}`.slice(0, 15);
    const base = `10.${this.b}.${k * 4}`;
    const hostIp = `${base}.1`, nodeIp = `${base}.2`;
    sh('ip', ['netns', 'add', ns]);
    this.cleanups.push(() => trySh('ip', ['netns', 'del', ns]));
    sh('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf]);
    this.cleanups.push(() => trySh('ip', ['link', 'del', hostIf]));
    sh('ip', ['link', 'set', nsIf, 'netns', ns]);
    sh('ip', ['addr', 'add', `${hostIp}/30`, 'dev', hostIf]);
    sh('ip', ['link', 'set', hostIf, 'up']);
    const nx = (...a) => sh('ip', ['-n', ns, ...a]);
    nx('link', 'set', 'lo', 'up');
    nx('addr', 'add', `${nodeIp}/30`, 'dev', nsIf);
    nx('link', 'set', nsIf, 'up');
    nx('route', 'add', 'default', 'via', hostIp);
    const dir = join(this.dir, name);
    mkdirSync(join(dir, 'templates'), { recursive: true });
    symlinkSync(join(templatesSrc, 'base'), join(dir, 'templates/base'));
    const node = {
      name, ns, dir, hostIp, nodeIp, state: join(dir, 'state'),
      api: `http://${nodeIp}:7070`, proxy: `http://${nodeIp}:7071`,
      cidr: extra.cidr || `10.${(this.b + k) % 250 + 1}.${k * 16}.0/20`,
      bridge: `sgtb${this.tag}${k}`.slice(0, 15),
      proc: null, log: join(dir, 'node.log'),
    };
    const yaml = [
      `id: ${name}`,
      `api_listen: 0.0.0.0:7070`,
      `api_advertise: ${nodeIp}:7070`,
      `proxy_listen: 0.0.0.0:7071`,
      `proxy_advertise: ${nodeIp}:7071`,
      `node_token: "${TOKEN}"`,
      `redis:`, `  address: ${hostIp}:${this.redisPort}`, `  timeout_ms: 500`,
      `capacity:`, `  vcpu: ${extra.vcpu || 256}`, `  memory_mb: ${extra.memoryMB || 16384}`,
      `  max_sandboxes: ${extra.maxSandboxes || 200}`,
      `labels:`, `  zone: test`,
      `templates_dir: ${join(dir, 'templates')}`,
      `state_dir: ${node.state}`,
      `envd_path: ${envdBundle}`,
      `network_cidr: ${node.cidr}`,
      `bridge: ${node.bridge}`,
      `protected_addresses:`, `  - ${hostIp}/32`,
      `heartbeat_interval_ms: 200`,
      `sandbox_grace_ms: ${extra.graceMs ?? 1000}`,
      `warm_pool: ${extra.warmPool ?? 4}`,
      `log:`, `  level: debug`,
    ].join('\n') + '\n';
    node.config = join(dir, 'node.yaml');
    writeFileSync(node.config, yaml);
    this.nodes.push(node);
    this.cleanups.push(() => this.cleanNode(node));
    return node;
  }

  async startNode(node) {
    const { openSync } = await import('node:fs');
    const fd = openSync(node.log, 'a');
    node.proc = spawn('nsenter', [`--net=/var/run/netns/${node.ns}`, nodeBin, '-c', node.config],
      { stdio: ['ignore', fd, fd] });
    node.exited = new Promise((r) => node.proc.on('exit', (code, sig) => r({ code, sig })));
    await waitFor(async () => (await fetch(`${node.api}/health`)).status === 204, 15000);
  }

  async killNode(node, sig = 'SIGKILL') {
    if (!node.proc) return;
    node.proc.kill(sig);
    await node.exited;
    node.proc = null;
  }

  // Removes whatever a node left: containers, mounts, files (the namespace goes separately).
  cleanNode(node) {
    if (node.proc) { try { node.proc.kill('SIGKILL'); } catch {} }
    // SG_NODE_LOG_DIR=<dir> keeps each agent's log for a look after the run.
    if (process.env.SG_NODE_LOG_DIR) {
      try { copyFileSync(node.log, join(process.env.SG_NODE_LOG_DIR, `${this.tag}-${node.name}.log`)); } catch {}
    }
    const root = join(node.state, 'runc');
    const list = trySh('runc', ['--root', root, 'list', '-q']);
    for (const id of (list || '').split('\n').filter(Boolean)) trySh('runc', ['--root', root, 'delete', '-f', id]);
    for (const m of mountsUnder(node.state)) trySh('umount', ['-l', m]);
    // A sandbox whose teardown the agent had begun when it was killed may have no runc state
    // left but still run: kill what remains in the node's cgroups, then remove them (runc also
    // leaves the empty parent cgroups /sandgate/<node id> in every hierarchy).
    const nodeCg = (h) => `/sys/fs/cgroup/${h}/sandgate/${node.name}`;
    let subs = [];
    try { subs = readdirSync(nodeCg('pids'), { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name); } catch {}
    for (const sub of subs) {
      let pids = [];
      try { pids = readFileSync(`${nodeCg('pids')}/${sub}/cgroup.procs`, 'utf8').split('\n').filter(Boolean); } catch {}
      for (const pid of pids) { try { process.kill(Number(pid), 'SIGKILL'); } catch {} }
    }
    if (subs.length) trySh('sleep', ['0.2']);
    for (const h of readdirSync('/sys/fs/cgroup')) {
      for (const sub of subs) { try { rmdirSync(`${nodeCg(h)}/${sub}`); } catch {} }
      for (const d of [nodeCg(h), `/sys/fs/cgroup/${h}/sandgate`]) {
        try { rmdirSync(d); } catch {}
      }
    }
  }

  closeSync() {
    live.delete(this);
    for (const f of this.cleanups.splice(0).reverse()) { try { f(); } catch {} }
    rmSync(this.dir, { recursive: true, force: true });
  }

  async close() { this.closeSync(); }
}

export function mountsUnder(prefix) {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => l.split(' ')[4]).filter((m) => m && m.startsWith(prefix));
}

export async function api(node, method, path, body, token = TOKEN) {
  const r = await fetch(`${node.api}${path}`, {
    method, headers: { 'X-Sandgate-Node-Token': token, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null; try { json = text ? JSON.parse(text) : null; } catch {}
  return { status: r.status, json, text };
}

export async function viaProxy(node, id, port, path = '/', headers = {}) {
  const r = await fetch(`${node.proxy}${path}`, {
    headers: { 'X-Sandgate-Node-Token': TOKEN, 'X-Sandgate-Sandbox-Id': id,
      'X-Sandgate-Sandbox-Port': String(port), ...headers },
  });
  return { status: r.status, text: await r.text() };
}

// Runs cmd with bash through envd's Process.Start (Connect, JSON envelopes) via the node proxy:
// processes started this way get envd's environment, i.e. the request's env vars. -> stdout.
export async function envdRun(node, id, cmd, token) {
  const json = Buffer.from(JSON.stringify({ process: { cmd: '/bin/bash', args: ['-c', cmd] }, stdin: false }));
  const env = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), json]);
  env.writeUInt32BE(json.length, 1);
  const r = await fetch(`${node.proxy}/process.Process/Start`, {
    method: 'POST', body: env,
    headers: { 'X-Sandgate-Node-Token': TOKEN, 'X-Sandgate-Sandbox-Id': id, 'X-Sandgate-Sandbox-Port': '49983',
      'content-type': 'application/connect+json', ...(token ? { 'X-Access-Token': token } : {}) },
  });
  const buf = Buffer.from(await r.arrayBuffer());
  if (r.status !== 200) return { status: r.status, stdout: buf.toString() };
  let out = '', error = null;
  for (let o = 0; o + 5 <= buf.length;) {
    const n = buf.readUInt32BE(o + 1);
    const msg = JSON.parse(buf.subarray(o + 5, o + 5 + n).toString());
    if (buf[o] & 2) error = msg.error?.code ?? null; // end-of-stream frame
    else if (msg.event?.data?.stdout) out += Buffer.from(msg.event.data.stdout, 'base64').toString();
    o += 5 + n;
  }
  return { status: 200, stdout: out, error };
}

let sbxSeq = 0;
export function sandboxId() { return `t${process.pid.toString(36)}${(sbxSeq++).toString(36)}${Math.random().toString(36).slice(2, 6)}`; }

export function createBody(over = {}) {
  return { sandboxID: sandboxId(), teamID: 'team-1', templateID: 'base', vcpu: 1, memoryMB: 256,
    diskMB: 0, envVars: { FOO: 'bar' }, metadata: {}, endAtMs: Date.now() + 3600_000,
    envdAccessToken: null, allowInternetAccess: false, ...over };
}

// The runc container of sandbox id: its own id, or the warm pool container (w-<hex>) it took.
export function containerOf(node, id) {
  const dir = join(node.state, 'sandboxes');
  for (const d of readdirSync(dir)) {
    try {
      if (JSON.parse(readFileSync(join(dir, d, 'meta.json'), 'utf8')).sandboxID === id) return d;
    } catch {}
  }
  return id;
}

// Runs a command inside a sandbox through the OCI runtime (until envd runs processes).
export function execIn(node, id, args, opts = {}) {
  return execFileSync('runc', ['--root', join(node.state, 'runc'), 'exec', containerOf(node, id), ...args],
    { encoding: 'utf8', timeout: 30000, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}
export function execInStatus(node, id, args) {
  try { return { code: 0, out: execIn(node, id, args) }; }
  catch (e) { return { code: e.status ?? -1, out: (e.stdout || '') + (e.stderr || '') }; }
}

// Python inside the sandbox: tries TCP connects, prints "host:port open|closed" per target.
export function probeScript(targets) {
  return `import socket
for h,p in ${JSON.stringify(targets)}:
    s=socket.socket(); s.settimeout(1.5)
    try:
        s.connect((h,p)); print(f"{h}:{p} open")
    except Exception as e:
        print(f"{h}:{p} closed")
    s.close()
`;
}
