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
import tls from 'node:tls';
import { execFileSync, execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Sandbox, CommandExitError, TimeoutError } from 'e2b';
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
  // Placement may pack several sandboxes on one node: create until two nodes hold one (a node
  // takes at most CAP.maxSandboxes, so this ends).
  const make = (i) => Sandbox.create('base', { ...sdk(i % 2 ? gwB : gwA), envs: { E2E_TAG: `t${i}` }, metadata: { case: 'sdk-headers' }, timeoutMs: 300000 });
  const made = await Promise.all([0, 1, 2].map(make));
  try {
    const where = await Promise.all(made.map((s) => nodeOf(gwA, s.sandboxId)));
    while (new Set(where).size < 2 && made.length <= CAP.maxSandboxes) {
      made.push(await make(made.length));
      where.push(await nodeOf(gwA, made[made.length - 1].sandboxId));
    }
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

// A test CA and a certificate for *.<domain> and api.<domain> signed by it, in dir.
function makeCerts(dir) {
  const ossl = (...a) => execFileSync('openssl', a, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
    '-subj', '/CN=sandgate e2e test CA', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  ossl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', `/CN=*.${DOMAIN}`);
  fs.writeFileSync(path.join(dir, 'leaf.ext'), `subjectAltName=DNS:*.${DOMAIN},DNS:api.${DOMAIN}\n` +
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n');
  ossl('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'leaf.pem',
    '-days', '2', '-extfile', 'leaf.ext');
  return { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'leaf.pem'), key: path.join(dir, 'leaf.key') };
}

// A third gateway on the cluster: gateway A's configuration with a plain listener and a TLS one
// (HTTP/2 offered). Added to c.gateways so that c.stop() ends it and its log shows on failure.
async function startTlsGateway(certs) {
  const dir = tmpdir('gwT');
  const port = await freePort();
  const tlsPort = await freePort();
  const yaml = fs.readFileSync(gwA.config, 'utf8').replace(/^listeners:\n(?: {2}- address: .*\n {4}port: \d+\n)/m,
    `listeners:
  - address: 127.0.0.1
    port: ${port}
  - address: 127.0.0.1
    port: ${tlsPort}
    http2: true
    certs:
      - cert_file: ${certs.cert}
        key_file: ${certs.key}
`);
  assert.ok(yaml.includes(`port: ${tlsPort}`), 'listeners replaced');
  const config = path.join(dir, 'gateway.yaml');
  fs.writeFileSync(config, yaml);
  const gw = { name: 'gwT', port, tlsPort, dir, config, url: `http://127.0.0.1:${port}`, log: path.join(dir, 'gateway.log'), proc: null };
  gw.proc = launch(SANDGATE, ['--config', config, 'serve'], { log: gw.log });
  gw.exited = new Promise((r) => gw.proc.on('exit', (code, sig) => r({ code, sig })));
  gw.stop = async (signal = 'SIGTERM') => {
    if (!gw.proc) return null;
    const p = gw.proc; gw.proc = null;
    p.kill(signal);
    return gw.exited;
  };
  onCleanup(() => gw.proc && gw.proc.kill('SIGKILL'));
  c.gateways.push(gw);
  await waitUntil(async () => (await fetch(`${gw.url}/health`)).status === 200, { what: 'TLS gateway' });
  return gw;
}

// The child process: resolves *.<domain> to 127.0.0.1 and sends its port 443 to the TLS listener
// (the only way to reach it: no E2B_API_URL/E2B_SANDBOX_URL), then drives the SDK over HTTPS.
const PRELOAD = `import dns from 'node:dns';
import tls from 'node:tls';
const domain = process.env.E2B_DOMAIN;
const port = Number(process.env.SG_TLS_PORT);
const ours = (h) => typeof h === 'string' && (h === domain || h.endsWith('.' + domain));
const lookup = dns.lookup;
dns.lookup = function (host, opts, cb) {
  if (typeof opts === 'function') { cb = opts; opts = {}; }
  if (!ours(host)) return lookup.call(this, host, opts, cb);
  if (opts && opts.all) return process.nextTick(cb, null, [{ address: '127.0.0.1', family: 4 }]);
  return process.nextTick(cb, null, '127.0.0.1', 4);
};
const connect = tls.connect;
tls.connect = function (...args) {
  const o = args[0];
  if (o && typeof o === 'object' && ours(o.servername || o.host) && (!o.port || Number(o.port) === 443)) args[0] = { ...o, port };
  return connect.apply(this, args);
};
`;
const CHILD = `const { Sandbox } = await import(process.env.E2B_ENTRY);
const s = await Sandbox.create('base', { timeoutMs: 120000, metadata: { case: 'tls' } });
const out = { id: s.sandboxId, host: s.getHost(49983) };
try {
  const r = await s.commands.run('echo tls-$((6*7)); echo e >&2');
  out.stdout = r.stdout; out.stderr = r.stderr;
  try { await s.commands.run('exit 3'); } catch (e) { out.exitErr = e.constructor.name + ':' + e.exitCode; }
  await s.files.write('/home/user/tls.txt', 'over tls\\n');
  out.text = await s.files.read('/home/user/tls.txt');
  const bin = new Uint8Array(40000).map((_, i) => (i * 7) & 0xff);
  await s.files.write('/home/user/tls.bin', bin.buffer);
  const back = await s.files.read('/home/user/tls.bin', { format: 'bytes' });
  out.binOk = back.length === bin.length && back.every((b, i) => b === bin[i]);
  out.list = (await s.files.list('/home/user')).map((e) => e.name).filter((n) => n.startsWith('tls.')).sort();
  out.listed = (await Sandbox.list({ query: { metadata: { case: 'tls' } } }).nextItems()).map((x) => x.sandboxId);
} finally {
  out.killed = await s.kill();
}
console.log(JSON.stringify(out));
`;

// Found by the E2B SDK's own suite (tests/sandbox/commands/sandboxKilledDuringRun.test.ts): a
// command stream cut by a kill must reach the client as a cut (h2o's proxy client takes a close
// at a chunk boundary for a complete body), so the SDK can tell the sandbox is gone.
test('killing a sandbox mid-command surfaces as the SDK\'s "sandbox was killed" TimeoutError', { skip: skip || false, timeout: 120000 }, () => withLogs(async () => {
  for (const gw of [gwA, gwB]) {
    const sbx = await Sandbox.create('base', sdk(gw));
    const cmd = await sbx.commands.run('sleep 60', { background: true });
    assert.equal(await sbx.kill(), true);
    const err = await cmd.wait().catch((e) => e);
    assert.ok(err instanceof TimeoutError, `${err?.constructor?.name}: ${err?.message}`);
    assert.match(err.message, /sandbox was killed or reached its end of life/);
  }
}));

test('host subdomains over TLS: https://api.<domain> and https://49983-<id>.<domain> with a test CA', { skip: skip || false, timeout: 180000 }, () => withLogs(async () => {
  const dir = tmpdir('tls');
  const certs = makeCerts(dir);
  const gwT = await startTlsGateway(certs);
  // The listener verifies with the test CA for api.<domain> and for a sandbox host, and offers h2.
  for (const servername of [`api.${DOMAIN}`, `49983-abcdefghij0123456789.${DOMAIN}`]) {
    const alpn = await new Promise((resolve, reject) => {
      const sock = tls.connect({ host: '127.0.0.1', port: gwT.tlsPort, servername, ca: fs.readFileSync(certs.ca), ALPNProtocols: ['h2', 'http/1.1'] },
        () => { const p = sock.alpnProtocol; sock.destroy(); resolve(p); });
      sock.on('error', reject);
    });
    assert.equal(alpn, 'h2', servername);
  }
  fs.writeFileSync(path.join(dir, 'preload.mjs'), PRELOAD);
  fs.writeFileSync(path.join(dir, 'child.mjs'), CHILD);
  const env = { ...process.env, NODE_EXTRA_CA_CERTS: certs.ca, E2B_API_KEY: key, E2B_DOMAIN: DOMAIN,
    SG_TLS_PORT: String(gwT.tlsPort), E2B_ENTRY: createRequire(import.meta.url).resolve('e2b') };
  delete env.E2B_API_URL; delete env.E2B_SANDBOX_URL; delete env.E2B_DEBUG;
  const run = () => new Promise((resolve, reject) => {
    execFile(process.execPath, ['--import', `file://${path.join(dir, 'preload.mjs')}`, path.join(dir, 'child.mjs')],
      { env, timeout: 120000, encoding: 'utf8' }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve(stdout)));
  });
  const out = JSON.parse((await run()).trim().split('\n').pop());
  assert.match(out.id, /^[a-z0-9]{20}$/);
  assert.equal(out.host, `49983-${out.id}.${DOMAIN}`);
  assert.equal(out.stdout, 'tls-42\n');
  assert.equal(out.stderr, 'e\n');
  assert.equal(out.exitErr, 'CommandExitError:3');
  assert.equal(out.text, 'over tls\n');
  assert.equal(out.binOk, true);
  assert.deepEqual(out.list, ['tls.bin', 'tls.txt']);
  assert.deepEqual(out.listed, [out.id]);
  assert.equal(out.killed, true);

  // Without the test CA the same client refuses the gateway's certificate.
  delete env.NODE_EXTRA_CA_CERTS;
  await assert.rejects(run(), /unable to verify the first certificate|UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
}));

test('@e2b/cli sandbox list with E2B_API_URL lists a sandbox made here', { skip: skip || false, timeout: 120000 }, () => withLogs(async () => {
  const s = await Sandbox.create('base', { ...sdk(gwB), metadata: { case: 'cli' }, timeoutMs: 120000 });
  try {
    for (const gw of [gwA, gwB]) {
      const env = { ...process.env, E2B_API_KEY: key, E2B_API_URL: gw.url, E2B_DOMAIN: DOMAIN, NO_COLOR: '1' };
      delete env.E2B_ACCESS_TOKEN;
      const out = await new Promise((resolve, reject) => {
        execFile(path.join(here, '../node_modules/.bin/e2b'), ['sandbox', 'list'], { env, timeout: 60000, encoding: 'utf8' },
          (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve(stdout)));
      });
      assert.ok(out.includes(s.sandboxId), `the CLI lists ${s.sandboxId} via ${gw.name}:\n${out}`);
      assert.ok(out.includes('base'), out);
    }
  } finally {
    await s.kill();
  }
}));
