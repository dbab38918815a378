// Test harness: real PostgreSQL, Redis and sandgate processes on loopback, started per test file
// in a temporary folder and torn down when the file ends (also on failure or Ctrl-C).
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BUILD = process.env.SANDGATE_BUILD || path.join(ROOT, 'build');
export const SANDGATE = path.join(BUILD, 'sandgate');

const children = new Set();
const cleanups = [];
function killAll() {
  for (const c of children) { try { c.kill('SIGKILL'); } catch {} }
  for (const f of cleanups.splice(0).reverse()) { try { f(); } catch {} }
}
process.on('exit', killAll);
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => { killAll(); process.exit(130); });

export function onCleanup(f) { cleanups.push(f); }

// Kills every process this harness started and removes its folders: call from after(), since
// a live child keeps the test file's process (and so the test run) from ending.
export function shutdownAll() { killAll(); }

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
    s.on('error', reject);
  });
}

export function tmpdir(prefix) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `sg-${prefix}-`));
  if (!process.env.SG_KEEP) onCleanup(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

// Spawns a long-running process; its output goes to a log file (shown when a test fails).
export function launch(cmd, args, { log, env, uid, gid } = {}) {
  const out = log ? fs.openSync(log, 'a') : 'ignore';
  const child = spawn(cmd, args, { stdio: ['ignore', out, out], env: { ...process.env, ...env }, uid, gid });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

export async function waitFor(fn, { timeout = 20000, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try { if (await fn()) return; } catch (e) { last = e; }
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}${last ? ': ' + last.message : ''}`);
}

async function tcpOpen(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const s = net.connect(port, host);
    s.on('connect', () => { s.destroy(); resolve(true); });
    s.on('error', () => resolve(false));
  });
}

function pgBin(name) {
  const base = '/usr/lib/postgresql';
  const v = fs.readdirSync(base).sort().pop();
  return path.join(base, v, 'bin', name);
}

function postgresIds() {
  const line = fs.readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('postgres:'));
  const f = line.split(':');
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

// PostgreSQL refuses to run as root: as root, it runs as the `postgres` user.
export async function startPostgres() {
  const dir = tmpdir('pg');
  const data = path.join(dir, 'data');
  const ids = process.getuid() === 0 ? postgresIds() : {};
  fs.chmodSync(dir, 0o777);
  execFileSync(pgBin('initdb'), ['-D', data, '-U', 'sandgate', '-A', 'trust', '--no-sync', '-E', 'UTF8'],
    { stdio: 'ignore', uid: ids.uid, gid: ids.gid });
  const port = await freePort();
  const pg = {
    port, dir, data,
    dsn: `host=127.0.0.1 port=${port} user=sandgate dbname=sandgate connect_timeout=2`,
    proc: null,
    async start() {
      pg.proc = launch(pgBin('postgres'), ['-D', data, '-p', String(port), '-k', dir,
        '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'max_connections=300'],
        { log: path.join(dir, 'postgres.log'), uid: ids.uid, gid: ids.gid });
      await waitFor(() => tcpOpen(port), { what: 'postgres' });
      await waitFor(() => {
        try { execFileSync(pgBin('pg_isready'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'sandgate'], { stdio: 'ignore' }); return true; }
        catch { return false; }
      }, { what: 'postgres ready' });
    },
    async stop() {
      if (!pg.proc) return;
      const p = pg.proc; pg.proc = null;
      const exited = new Promise((r) => p.on('exit', r));
      p.kill('SIGINT'); // fast shutdown
      await exited;
    },
  };
  await pg.start();
  execFileSync(pgBin('createdb'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'sandgate', 'sandgate'], { stdio: 'ignore' });
  onCleanup(() => pg.proc && pg.proc.kill('SIGKILL'));
  return pg;
}

export async function startRedis() {
  const dir = tmpdir('redis');
  const port = await freePort();
  const r = {
    port, dir, address: `127.0.0.1:${port}`, proc: null,
    async start() {
      r.proc = launch('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
        '--save', '', '--appendonly', 'no'], { log: path.join(dir, 'redis.log') });
      await waitFor(() => tcpOpen(port), { what: 'redis' });
    },
    async stop() {
      if (!r.proc) return;
      const p = r.proc; r.proc = null;
      const exited = new Promise((res) => p.on('exit', res));
      p.kill('SIGKILL');
      await exited;
    },
    cli(...args) {
      return execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' }).trim();
    },
  };
  await r.start();
  onCleanup(() => r.proc && r.proc.kill('SIGKILL'));
  return r;
}

export function gatewayConfig({ port, pg, redis, extra = '' }) {
  return `listeners:
  - address: 127.0.0.1
    port: ${port}
domain: sandgate.test
threads: 2
postgres:
  dsn: "${pg.dsn}"
  query_timeout_ms: 2000
redis:
  address: ${redis.address}
node_token: test-node-token-0123456789
admin_token: test-admin-token-0123456789
token_secret: test-token-secret-0123456789
${extra}`;
}

// Runs `sandgate` synchronously (admin commands). Returns stdout; throws with stderr on failure.
export function sandgate(config, ...args) {
  try {
    return execFileSync(SANDGATE, ['--config', config, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    throw new Error(`sandgate ${args.join(' ')} failed (${e.status}): ${e.stderr}`);
  }
}

// A self-signed certificate for *.<domain> in dir: { cert, key } (TLS listeners in tests).
export function selfSignedCert(dir, domain = 'sandgate.test') {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'key.pem', '-out', 'cert.pem',
    '-days', '2', '-subj', `/CN=*.${domain}`, '-addext', `subjectAltName=DNS:*.${domain},DNS:${domain}`],
  { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  return { cert: path.join(dir, 'cert.pem'), key: path.join(dir, 'key.pem') };
}

// tls: true adds a second listener (gw.tlsPort) with a self-signed certificate and HTTP/2.
export async function startGateway({ pg, redis, extra = '', name = 'gw', tls = false }) {
  const dir = tmpdir(name);
  const port = await freePort();
  const config = path.join(dir, 'gateway.yaml');
  let yaml = gatewayConfig({ port, pg, redis, extra });
  let tlsPort = null;
  if (tls) {
    tlsPort = await freePort();
    const c = selfSignedCert(dir);
    yaml = yaml.replace(/^listeners:\n/m, `listeners:
  - address: 127.0.0.1
    port: ${tlsPort}
    http2: true
    certs:
      - cert_file: ${c.cert}
        key_file: ${c.key}
`);
  }
  fs.writeFileSync(config, yaml);
  const gw = {
    port, tlsPort, dir, config, url: `http://127.0.0.1:${port}`, log: path.join(dir, 'gateway.log'), proc: null,
    async start() {
      gw.proc = launch(SANDGATE, ['--config', config, 'serve'], { log: gw.log });
      await waitFor(async () => (await fetch(`${gw.url}/health`)).status === 200, { what: 'gateway' });
    },
    async stop(signal = 'SIGTERM') {
      if (!gw.proc) return null;
      const p = gw.proc; gw.proc = null;
      const exited = new Promise((r) => p.on('exit', (code, sig) => r({ code, sig })));
      p.kill(signal);
      return exited;
    },
    logText() { return fs.existsSync(gw.log) ? fs.readFileSync(gw.log, 'utf8') : ''; },
  };
  await gw.start();
  onCleanup(() => gw.proc && gw.proc.kill('SIGKILL'));
  return gw;
}

// A migrated database with one team and key: the usual starting point.
export async function stack({ gatewayExtra = '' } = {}) {
  const pg = await startPostgres();
  const redis = await startRedis();
  const dir = tmpdir('cfg');
  const config = path.join(dir, 'admin.yaml');
  fs.writeFileSync(config, gatewayConfig({ port: 1, pg, redis }));
  sandgate(config, 'migrate');
  const gw = await startGateway({ pg, redis, extra: gatewayExtra });
  return { pg, redis, gw, config };
}

export function createTeam(config, name, ...opts) {
  sandgate(config, 'team', 'create', name, ...opts);
  return name;
}

export function createKey(config, team, ...opts) {
  return sandgate(config, 'key', 'create', '--team', team, ...opts).trim();
}
