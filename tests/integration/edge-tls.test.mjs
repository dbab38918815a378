// Edge TLS (issue 6): certificate reload on SIGHUP without dropping connections. A gateway with a
// plain listener and a TLS one serving certificate A; a keep-alive HTTPS connection keeps making
// requests while the files are replaced by certificate B and the gateway gets SIGHUP: new
// handshakes see B (with and without SNI), the old connection keeps working (on A), and a reload
// with a broken key keeps B and logs the file. Real PostgreSQL, Redis and gateway; a test CA.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import {
  SANDGATE, startPostgres, startRedis, gatewayConfig, sandgate, tmpdir, freePort, launch, waitFor,
  onCleanup, sleep,
} from './lib/services.mjs';
import { makeCerts, withTlsListener } from './lib/tls.mjs';

const DOMAIN = 'sandgate.test';
let pg, redis, gw, dir, ca;

before(async () => {
  pg = await startPostgres();
  redis = await startRedis();
  dir = tmpdir('gwtls');
  ca = makeCerts(dir, DOMAIN, ['A', 'B']).ca;
  fs.copyFileSync(path.join(dir, 'A.pem'), path.join(dir, 'cert.pem'));
  fs.copyFileSync(path.join(dir, 'A.key'), path.join(dir, 'key.pem'));
  const admin = path.join(dir, 'admin.yaml');
  fs.writeFileSync(admin, gatewayConfig({ port: 1, pg, redis }));
  sandgate(admin, 'migrate');
  const port = await freePort();
  const tlsPort = await freePort();
  const yaml = withTlsListener(gatewayConfig({ port, pg, redis }),
    { port, tlsPort, cert: path.join(dir, 'cert.pem'), key: path.join(dir, 'key.pem') });
  const config = path.join(dir, 'gateway.yaml');
  fs.writeFileSync(config, yaml);
  gw = { port, tlsPort, url: `http://127.0.0.1:${port}`, log: path.join(dir, 'gateway.log') };
  gw.proc = launch(SANDGATE, ['--config', config, 'serve'], { log: gw.log });
  onCleanup(() => gw.proc.kill('SIGKILL'));
  await waitFor(async () => (await fetch(`${gw.url}/health`)).status === 200, { what: 'gateway' });
});

after(async () => {
  gw?.proc.kill('SIGKILL');
  await redis?.stop();
  await pg?.stop();
});

// The CN of the certificate a new handshake gets (servername undefined: no SNI, the default).
function peerCN(servername) {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: gw.tlsPort, servername, ca: fs.readFileSync(ca),
      checkServerIdentity: () => undefined }, () => {
      const cn = s.getPeerCertificate().subject.CN;
      s.end();
      resolve(cn);
    });
    s.on('error', reject);
  });
}

function get(agent) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port: gw.tlsPort, servername: `api.${DOMAIN}`, path: '/health',
      headers: { host: `api.${DOMAIN}` }, ca: fs.readFileSync(ca), agent }, (res) => {
      const sock = res.socket;
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode, port: sock.localPort, cn: sock.getPeerCertificate().subject.CN }));
    });
    req.on('error', reject);
  });
}

test('SIGHUP reloads certificates: new handshakes get the new one, a keep-alive connection goes on', { timeout: 60000 }, async () => {
  assert.equal(await peerCN(`api.${DOMAIN}`), 'cert-A');
  assert.equal(await peerCN(undefined), 'cert-A');

  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const seen = [];
  let stop = false;
  const loop = (async () => {
    while (!stop) { seen.push(await get(agent)); await sleep(20); }
  })();
  await waitFor(() => seen.length >= 5, { what: 'requests before the reload' });

  fs.copyFileSync(path.join(dir, 'B.pem'), path.join(dir, 'cert.pem'));
  fs.copyFileSync(path.join(dir, 'B.key'), path.join(dir, 'key.pem'));
  const before = seen.length;
  gw.proc.kill('SIGHUP');
  await waitFor(async () => (await peerCN(`api.${DOMAIN}`)) === 'cert-B', { what: 'certificate B', timeout: 10000 });
  assert.equal(await peerCN(`7000-abcdefghijklmnopqrst.${DOMAIN}`), 'cert-B');
  assert.equal(await peerCN(undefined), 'cert-B');
  await waitFor(() => seen.length >= before + 10, { what: 'requests after the reload' });
  stop = true;
  await loop;
  agent.destroy();

  for (const r of seen) assert.equal(r.status, 200);
  // one connection throughout, still on the certificate it was set up with
  assert.deepEqual([...new Set(seen.map((r) => r.port))].length, 1, 'the keep-alive connection was kept');
  assert.ok(seen.every((r) => r.cn === 'cert-A'));
  assert.match(fs.readFileSync(gw.log, 'utf8'), /TLS certificates reloaded/);

  // A broken reload: B's certificate with A's key. B stays, the error names the key file.
  fs.copyFileSync(path.join(dir, 'A.key'), path.join(dir, 'key.pem'));
  gw.proc.kill('SIGHUP');
  await waitFor(() => /TLS reload failed/.test(fs.readFileSync(gw.log, 'utf8')), { what: 'reload error', timeout: 10000 });
  const line = fs.readFileSync(gw.log, 'utf8').split('\n').find((l) => /TLS reload failed/.test(l));
  assert.ok(line.includes(path.join(dir, 'key.pem')), line);
  assert.equal(await peerCN(`api.${DOMAIN}`), 'cert-B');
  assert.equal((await get(false)).status, 200);

  // An unreadable file: same.
  fs.rmSync(path.join(dir, 'cert.pem'));
  gw.proc.kill('SIGHUP');
  await waitFor(() => fs.readFileSync(gw.log, 'utf8').split('\n')
    .some((l) => /TLS reload failed/.test(l) && l.includes(path.join(dir, 'cert.pem'))), { what: 'second reload error', timeout: 10000 });
  assert.equal(await peerCN(undefined), 'cert-B');
  assert.equal((await fetch(`${gw.url}/health`)).status, 200);
  assert.equal(gw.proc.exitCode, null, 'the gateway is still running');

  // A connection accepted before a reload whose ClientHello comes only after it (h2o 2.2.5
  // creates the TLS session on the first bytes): it must not touch the replaced generation,
  // which is freed once no connection holds it (the asan preset shows a use-after-free if it did).
  const early = await new Promise((resolve, reject) => {
    const c = net.connect(gw.tlsPort, '127.0.0.1', () => resolve(c));
    c.on('error', reject);
  });
  fs.copyFileSync(path.join(dir, 'A.pem'), path.join(dir, 'cert.pem'));
  fs.copyFileSync(path.join(dir, 'A.key'), path.join(dir, 'key.pem'));
  gw.proc.kill('SIGHUP');
  await waitFor(async () => (await peerCN(`api.${DOMAIN}`)) === 'cert-A', { what: 'certificate A again', timeout: 10000 });
  await waitFor(() => (fs.readFileSync(gw.log, 'utf8').match(/TLS certificates reloaded/g) || []).length === 2,
    { what: 'second reload logged' });
  const lateCN = await new Promise((resolve, reject) => {
    const t = tls.connect({ socket: early, servername: `api.${DOMAIN}`, ca: fs.readFileSync(ca) }, () => {
      const cn = t.getPeerCertificate().subject.CN;
      t.end();
      resolve(cn);
    });
    t.on('error', reject);
  });
  assert.equal(lateCN, 'cert-A');
  assert.equal((await fetch(`${gw.url}/health`)).status, 200);
});

test('HTTP/2 is opt-in over TLS only: no cleartext HTTP/2 (h2c upgrade or prior knowledge) on a plain listener', () => {
  const curl = (...a) => spawnSync('curl', ['-s', '-o', '/dev/null', '-w', '%{http_version}', '--max-time', '5', ...a], { encoding: 'utf8' });
  assert.equal(curl(`${gw.url}/health`).stdout, '1.1');
  assert.equal(curl('--http2', `${gw.url}/health`).stdout, '1.1', 'the Upgrade: h2c offer is ignored');
  assert.notEqual(curl('--http2-prior-knowledge', `${gw.url}/health`).stdout, '2', 'the h2 preface is not accepted');
});

// Sockets the gateway process holds open (listeners and its PostgreSQL / Redis connections too).
function gatewaySockets() {
  const dir = `/proc/${gw.proc.pid}/fd`;
  return fs.readdirSync(dir).filter((f) => {
    try { return fs.readlinkSync(`${dir}/${f}`).startsWith('socket:'); } catch { return false; }
  }).length;
}

// A TLS client that gets its answer and then resets the connection (RST: what a client killed
// mid-response, or one closing with unread bytes, sends). h2o 2.2.5 answers the failed read by
// closing TLS with a close_notify, whose write libuv refuses at once (the read error left the
// stream unwritable) without the callback h2o waits for: every such connection stayed open for
// good (fd, memory, its per-address count) until the gateway fixed it.
function resetAfterAnswer() {
  return new Promise((resolve, reject) => {
    const raw = net.connect(gw.tlsPort, '127.0.0.1');
    const s = tls.connect({ socket: raw, servername: `api.${DOMAIN}`, ca: fs.readFileSync(ca) }, () => {
      s.write(`GET /health HTTP/1.1\r\nHost: api.${DOMAIN}\r\n\r\n`);
    });
    let got = '';
    s.on('data', (d) => {
      got += d;
      if (/\r\n\r\n[\s\S]+/.test(got)) { raw.resetAndDestroy(); resolve(); }
    });
    s.on('error', reject);
  });
}

test('TLS clients that reset their connection leave nothing open in the gateway', { timeout: 60000 }, async () => {
  await get(new https.Agent({ keepAlive: false }));
  await sleep(300);
  const before = gatewaySockets();
  for (let i = 0; i < 40; i++) await resetAfterAnswer();
  let now;
  await waitFor(() => (now = gatewaySockets()) <= before, { timeout: 5000, what: `sockets back to ${before}` })
    .catch(() => assert.fail(`the gateway holds ${now} sockets, ${now - before} more than before 40 resets`));
  assert.equal((await get(new https.Agent({ keepAlive: false }))).status, 200);
});
