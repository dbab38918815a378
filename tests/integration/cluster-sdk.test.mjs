// The official `e2b` SDK and `@e2b/cli` against the three-node cluster (tests/e2e/cluster.mjs)
// through the edge, in both routing modes:
//   - header routing: E2B_SANDBOX_URL = a gateway; commands, files and a web server in the sandbox
//     reached with the e2b-sandbox-* headers and by Host (sandbox.getHost(8000)), for sandboxes on
//     two different nodes, through both gateways;
//   - host subdomains over TLS: a third gateway with a TLS listener (a test CA and a wildcard
//     certificate for *.<domain>) and a child node process that trusts the CA
//     (NODE_EXTRA_CA_CERTS), resolves *.<domain> to 127.0.0.1 and sends port 443 to the listener
//     (an --import preload), with only E2B_DOMAIN set so the SDK uses https://api.<domain> and
//     https://49983-<id>.<domain>;
//   - the CLI's `sandbox list` with E2B_API_URL.
// Needs root, runc, build/ and the `base` template; skipped otherwise.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import { execFileSync, execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Sandbox, CommandExitError } from 'e2b';
import { startCluster, canRun, teamKey, clusterLogs, DOMAIN } from '../e2e/cluster.mjs';
import { waitFor } from './lib/node-harness.mjs';
import { launch, freePort, tmpdir, onCleanup, SANDGATE, waitFor as waitUntil } from './lib/services.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const skip = canRun();
const CAP = { vcpu: 8, memoryMB: 8 * 128, maxSandboxes: 8 };
let c, key, gwA, gwB;

const sdk = (gw) => ({ apiKey: key, apiUrl: gw.url, sandboxUrl: gw.url, domain: DOMAIN, requestTimeoutMs: 60000 });

before(async () => {
  if (skip) return;
  c = await startCluster({ nodes: [CAP, CAP, CAP], gateways: 2, template: { vcpu: 1, memoryMB: 128 } });
  [gwA, gwB] = c.gateways;
  key = teamKey(c, 'sdk', '--max-concurrent', '50', '--max-timeout', '3600');
});

after(async () => { await c?.stop(); });

async function withLogs(fn) {
  try { await fn(); } catch (e) { e.message += `\n${clusterLogs(c)}`; throw e; }
}

async function nodeOf(gw, id) {
  const r = await fetch(`${gw.url}/sandboxes/${id}`, { headers: { 'x-api-key': key } });
  assert.equal(r.status, 200);
  return (await r.json()).clientID;
}

// A plain HTTP GET to a gateway with a given Host header (fetch cannot set Host).
function getWithHost(gw, host, p) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: gw.port, path: p, headers: { host } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', reject);
    req.setTimeout(10000, () => req.destroy(new Error('timeout')));
    req.end();
  });
}

// Commands, files and a sandbox web server through gateway `gw` for sandbox `sbx`.
async function exercise(sbx, gw, tag) {
  // commands: stdout, stderr, env var given at create, non-zero exit
  let r = await sbx.commands.run('echo out-$E2E_TAG; echo err >&2');
  assert.equal(r.exitCode, 0);
  assert.equal(r.stdout, `out-${tag}\n`);
  assert.equal(r.stderr, 'err\n');
  r = await sbx.commands.run('echo "$E2E_TAG"', { envs: { E2E_TAG: 'per-command' } });
  assert.equal(r.stdout, 'per-command\n');
  await assert.rejects(sbx.commands.run('echo no >&2; exit 7'), (e) => {
    assert.ok(e instanceof CommandExitError, `${e?.constructor?.name}: ${e?.message}`);
    assert.equal(e.exitCode, 7);
    assert.equal(e.stderr, 'no\n');
    return true;
  });

  // a background command, then kill
  const bg = await sbx.commands.run('sleep 600', { background: true });
  assert.ok(bg.pid > 0);
  assert.ok((await sbx.commands.list()).some((p) => p.pid === bg.pid), 'listed while running');
  assert.equal(await bg.kill(), true);
  await assert.rejects(bg.wait());
  await waitFor(async () => !(await sbx.commands.list()).some((p) => p.pid === bg.pid), 10000);

  // files: text, binary, list, remove
  const dir = `/home/user/e2e-${tag}`;
  await sbx.files.makeDir(dir);
  await sbx.files.write(`${dir}/a.txt`, `text ${tag}\nline 2\n`);
  assert.equal(await sbx.files.read(`${dir}/a.txt`), `text ${tag}\nline 2\n`);
  const bin = new Uint8Array(70000);
  for (let i = 0; i < bin.length; i++) bin[i] = (i * 131 + 7) & 0xff;
  await sbx.files.write(`${dir}/b.bin`, bin.buffer);
  const back = await sbx.files.read(`${dir}/b.bin`, { format: 'bytes' });
  assert.equal(back.length, bin.length);
  assert.ok(Buffer.from(back).equals(Buffer.from(bin)), 'binary round trip');
  assert.deepEqual((await sbx.files.list(dir)).map((e) => e.name).sort(), ['a.txt', 'b.bin']);
  await sbx.files.remove(`${dir}/a.txt`);
  assert.equal(await sbx.files.exists(`${dir}/a.txt`), false);
  assert.deepEqual((await sbx.files.list(dir)).map((e) => e.name), ['b.bin']);

  // a web server on port 8000, reached by headers and by Host through the gateway
  await sbx.commands.run(`mkdir -p /tmp/www && echo "web ${tag}" > /tmp/www/index.html && cd /tmp/www && python3 -m http.server 8000`,
    { background: true });
  const viaHeaders = () => fetch(`${gw.url}/index.html`, { headers: { 'e2b-sandbox-id': sbx.sandboxId, 'e2b-sandbox-port': '8000' } });
  await waitFor(async () => (await viaHeaders()).status === 200, 15000);
  const h = await viaHeaders();
  assert.equal(await h.text(), `web ${tag}\n`);
  const host = sbx.getHost(8000);
  assert.equal(host, `8000-${sbx.sandboxId}.${DOMAIN}`);
  const byHost = await getWithHost(gw, `${host}:${gw.port}`, '/index.html');
  assert.equal(byHost.status, 200);
  assert.equal(byHost.body, `web ${tag}\n`);
}

test('header routing: commands, files and a web server on sandboxes on two nodes, through both gateways', { skip: skip || false, timeout: 240000 }, () => withLogs(async () => {
  const made = await Promise.all(Array.from({ length: 3 }, (_, i) =>
    Sandbox.create('base', { ...sdk(i % 2 ? gwB : gwA), envs: { E2E_TAG: `t${i}` }, metadata: { case: 'sdk-headers' }, timeoutMs: 300000 })));
  try {
    const where = await Promise.all(made.map((s) => nodeOf(gwA, s.sandboxId)));
    const first = 0;
    const second = where.findIndex((n) => n !== where[first]);
    assert.ok(second > 0, `sandboxes on two different nodes: ${where.join(', ')}`);
    // each through its own gateway, and each through the other one too (connect via it)
    await exercise(made[first], gwA, `t${first}`);
    await exercise(made[second], second % 2 ? gwB : gwA, `t${second}`);
    const other = await Sandbox.connect(made[first].sandboxId, sdk(gwB));
    const r = await other.commands.run('echo via-b $E2E_TAG');
    assert.equal(r.stdout, `via-b t${first}\n`);
    const gwOther = second % 2 ? gwA : gwB;
    const cross = await Sandbox.connect(made[second].sandboxId, sdk(gwOther));
    assert.equal(await cross.files.read(`/home/user/e2e-t${second}/b.bin`, { format: 'bytes' }).then((b) => b.length), 70000);
    const h = await getWithHost(gwOther, `${cross.getHost(8000)}:${gwOther.port}`, '/index.html');
    assert.equal(h.status, 200);
    assert.equal(h.body, `web t${second}\n`);
  } finally {
    await Promise.all(made.map((s) => s.kill().catch(() => {})));
  }
}));
