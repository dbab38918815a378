// Test harness for envd: starts the envd bundle as PID 1 of a throw-away sandbox (overlay of a
// template rootfs, own mount and PID namespaces, host network on 127.0.0.1) and an API test
// double that answers the SDK's create/connect calls so the official `e2b` SDK can be pointed
// at that envd unchanged. Everything started here is stopped by the returned stop() functions.
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, '../../..');
export const build = process.env.SANDGATE_BUILD || path.join(repo, 'build');

// The base template rootfs: the cached one, else built with deploy/build-template.sh (slow).
export function baseRootfs() {
  const dir = process.env.SANDGATE_TEMPLATES || '/var/lib/sandgate-cache/templates';
  const rootfs = path.join(dir, 'base', 'rootfs');
  if (!existsSync(path.join(rootfs, 'bin', 'bash'))) {
    execFileSync(path.join(repo, 'deploy', 'build-template.sh'), [dir], { stdio: 'inherit' });
  }
  return rootfs;
}

function childrenOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function waitHealthy(url, child, log) {
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`envd exited early: ${log()}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.status === 204) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`envd not healthy after 10 s: ${log()}`);
}

// True when the envd under test is an ASan build (its bundle carries libasan).
export function sanitized() {
  return readdirSync(path.join(build, 'envd-bundle', 'lib')).some((f) => f.startsWith('libasan'));
}

export function envdVersion() {
  return execFileSync(path.join(build, 'sandgate-envd'), ['--version']).toString().trim();
}

// Starts envd in a sandbox. opts.token: access token (null = not secure); opts.env: extra
// variables of envd's environment (they become the default environment of processes).
export async function startEnvd({ token = randomBytes(16).toString('hex'), env = {}, args = [] } = {}) {
  const bundle = path.join(build, 'envd-bundle');
  if (!existsSync(path.join(bundle, 'sandgate-envd'))) throw new Error(`no envd bundle in ${bundle}: build first`);
  const rootfs = baseRootfs();
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'sg-envd-'));
  const port = await freePort();
  let tokenFile = '-';
  if (token) {
    tokenFile = path.join(scratch, 'token');
    writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  }
  const vars = Object.entries({ PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...env })
    .map(([k, v]) => `${k}=${v}`);
  const child = spawn('unshare', ['--mount', '--pid', '--fork', '--kill-child',
    path.join(here, 'envd-sandbox.sh'), rootfs, bundle, scratch, String(port), tokenFile, ...vars, '--', ...args],
  { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      // SIGTERM envd itself (PID 1 of the sandbox) for a clean exit, SIGKILL after 3 s; the
      // whole PID namespace goes with it. unshare's --kill-child is not enough: envd switches
      // its fsuid, and any credential change clears the parent-death signal.
      const signal = (sig) => {
        for (const pid of childrenOf(child.pid)) {
          try { process.kill(pid, sig); } catch { /* gone already */ }
        }
      };
      signal('SIGTERM');
      const timer = setTimeout(() => { signal('SIGKILL'); child.kill('SIGKILL'); }, 3000);
      await exited;
      clearTimeout(timer);
    }
    if (process.env.SANDGATE_ENVD_LOG) appendFileSync(process.env.SANDGATE_ENVD_LOG, out);
    // the overlay was mounted in the namespace that just died; only plain folders remain
    spawnSync('umount', ['-l', path.join(scratch, 'merged')]);
    rmSync(scratch, { recursive: true, force: true });
  };
  try {
    await waitHealthy(url, child, () => out);
  } catch (e) {
    await stop();
    throw e;
  }
  // envd's pid as the host sees it (the only child of unshare)
  const hostPid = () => childrenOf(child.pid)[0];
  return { url, port, token, scratch, stop, log: () => out, hostPid };
}

// API test double: answers the E2B REST calls Sandbox.create / Sandbox.connect make, pointing
// the SDK at one envd. It is a double, not the gateway: no auth, one fixed sandbox.
export async function startApiDouble({ envdVersion: version, envdAccessToken }) {
  const sandbox = () => ({
    sandboxID: 'sbx-envd-test', templateID: 'base', clientID: 'test-client', alias: 'base',
    envdVersion: version, envdAccessToken: envdAccessToken ?? null, trafficAccessToken: null, domain: null,
  });
  const srv = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const p = req.url.split('?')[0];
      if (req.method === 'POST' && (p === '/v2/sandboxes' || p === '/sandboxes')) {
        res.writeHead(201, { 'content-type': 'application/json' });
        res.end(JSON.stringify(sandbox()));
      } else if (req.method === 'POST' && /^\/(v2\/)?sandboxes\/[^/]+\/connect$/.test(p)) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(sandbox()));
      } else if (req.method === 'DELETE') {
        res.writeHead(204);
        res.end();
      } else {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ code: 404, message: 'not in the test double' }));
      }
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${srv.address().port}`, close: () => new Promise((r) => { srv.close(r); srv.closeAllConnections(); }) };
}

export const testApiKey = 'e2b_' + '0'.repeat(40);
