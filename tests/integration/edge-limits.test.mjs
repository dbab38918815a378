// Edge protection (issue 6): the per-address request rate limit (http.rate_limit_rps / burst),
// shared by the gateway's workers, /health exempt; and the per-address connection limit
// (http.max_connections_per_ip). Real PostgreSQL, Redis and gateways.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import {
  stack, gatewayConfig, launch, tmpdir, freePort, waitFor, onCleanup, SANDGATE, startGateway,
} from './lib/services.mjs';

let s;
before(async () => {
  s = await stack({ gatewayExtra: 'http:\n  rate_limit_rps: 1\n  rate_limit_burst: 5\n' });
});
after(async () => {
  await s?.gw.stop('SIGKILL');
  await s?.redis.stop();
  await s?.pg.stop();
});

test('rate limit: a burst past rate_limit_burst gets 429 JSON with Retry-After; /health is exempt', async () => {
  const t0 = Date.now();
  // 30 requests at once over several connections (so over both workers)
  const rs = await Promise.all(Array.from({ length: 30 }, () => fetch(`${s.gw.url}/teams/me`)));
  const elapsed = (Date.now() - t0) / 1000;
  const limited = rs.filter((r) => r.status === 429);
  const passed = rs.filter((r) => r.status !== 429);
  // burst 5 plus at most 1 token per elapsed second (+1 for a partly refilled token)
  assert.ok(passed.length <= 5 + Math.ceil(elapsed) + 1, `${passed.length} passed in ${elapsed}s`);
  assert.ok(passed.length >= 1);
  for (const r of passed) assert.equal(r.status, 401); // unauthenticated, but not limited
  assert.ok(limited.length >= 1);
  const r = limited[0];
  assert.ok(Number(r.headers.get('retry-after')) >= 1);
  assert.deepEqual(await r.json(), { code: 429, message: 'Too many requests from this address' });
  await Promise.all(rs.map((x) => x.text().catch(() => {})));
  for (let i = 0; i < 10; i++) assert.equal((await fetch(`${s.gw.url}/health`)).status, 200);
});

// http.max_connections_per_ip, on a second gateway with a limit of 3 (no rate limit). Raw sockets
// so that each connection is one TCP connection held open as long as the test says.
function openConn(port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1', () => resolve(sock));
    sock.on('error', reject);
  });
}

// One HTTP/1.1 request on sock; resolves with the status, headers and body of the response
// (Content-Length, chunked or ended by the close), and whether the server closed the connection.
function request(sock, path = '/health') {
  return new Promise((resolve, reject) => {
    if (sock.destroyed || sock.readableEnded) { reject(new Error('connection already closed')); return; }
    let buf = Buffer.alloc(0);
    let head = null;
    const finish = (body, closed) => {
      sock.off('data', onData); sock.off('end', onEnd); sock.off('close', onClose);
      resolve({ ...head, body, closed });
    };
    const onData = (d) => {
      buf = Buffer.concat([buf, d]);
      if (!head) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const lines = buf.subarray(0, end).toString().split('\r\n');
        const headers = Object.fromEntries(lines.slice(1).map((l) => {
          const i = l.indexOf(':'); return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()];
        }));
        head = { status: Number(lines[0].split(' ')[1]), headers };
        buf = buf.subarray(end + 4);
      }
      const h = head.headers;
      if (h['content-length'] !== undefined) {
        const len = Number(h['content-length']);
        if (buf.length >= len) finish(buf.subarray(0, len).toString(), false);
      } else if (h['transfer-encoding'] === 'chunked') {
        let body = '', off = 0;
        for (;;) {
          const nl = buf.indexOf('\r\n', off);
          if (nl < 0) return;
          const n = parseInt(buf.subarray(off, nl).toString(), 16);
          if (buf.length < nl + 2 + n + 2) return;
          if (n === 0) { finish(body, false); return; }
          body += buf.subarray(nl + 2, nl + 2 + n).toString();
          off = nl + 2 + n + 2;
        }
      } // else: the body ends with the connection (onEnd)
    };
    const onEnd = () => {
      if (!head) { reject(new Error('connection closed before a response')); return; }
      finish(buf.toString(), true);
    };
    // a reset or a close without a complete response
    const onClose = () => reject(new Error('connection closed before a complete response'));
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.on('close', onClose);
    sock.write(`GET ${path} HTTP/1.1\r\nHost: api.sandgate.test\r\n\r\n`);
  });
}

test('max_connections_per_ip: N connections served, N+1 gets 429 and is closed, a freed one lets a new one in', { timeout: 60000 }, async () => {
  // started by hand: startGateway's readiness fetch() would leave a keep-alive connection open
  const dir = tmpdir('gwconn');
  const port = await freePort();
  const config = path.join(dir, 'gateway.yaml');
  fs.writeFileSync(config, gatewayConfig({ port, pg: s.pg, redis: s.redis, extra: 'http:\n  max_connections_per_ip: 3\n' }));
  const proc = launch(SANDGATE, ['--config', config, 'serve'], { log: path.join(dir, 'gateway.log') });
  onCleanup(() => proc.kill('SIGKILL'));
  try {
    await waitFor(async () => {
      const c = await openConn(port);
      try { return (await request(c)).status === 200; } finally { c.destroy(); }
    }, { what: 'gateway' });
    // N connections at once, held open (retried until the readiness probe's connection is gone)
    let open = [];
    await waitFor(async () => {
      const cs = [];
      for (let i = 0; i < 3; i++) cs.push(await openConn(port));
      const rs = [];
      for (const c of cs) rs.push(await request(c));
      if (rs.every((r) => r.status === 200 && !r.closed)) { open = cs; return true; }
      cs.forEach((c) => c.destroy());
      return false;
    }, { what: '3 connections served' });
    // every one stays usable (keep-alive)
    for (const c of open) assert.equal((await request(c)).status, 200);

    const extra = await openConn(port);
    const r = await request(extra);
    assert.equal(r.status, 429);
    assert.equal(r.closed, true, 'the over-limit connection is closed after its answer');
    assert.equal(r.headers.connection, 'close');
    assert.ok(Number(r.headers['retry-after']) >= 1);
    assert.deepEqual(JSON.parse(r.body), { code: 429, message: 'Too many open connections from this address' });
    extra.destroy();

    // the held connections are unaffected
    assert.equal((await request(open[0])).status, 200);

    // free one: the gateway sees the close, and a new connection is served again
    open.pop().destroy();
    let last;
    await waitFor(async () => {
      const c = await openConn(port);
      last = await request(c);
      if (last.status === 200) { open.push(c); return true; }
      c.destroy();
      return false;
    }, { what: 'a connection accepted after one closed', timeout: 10000 });
    assert.equal(last.status, 200);
    // and the limit still holds with the new one counted
    const again = await openConn(port);
    assert.equal((await request(again)).status, 429);
    again.destroy();
    // the refusals are counted for operators
    const m = await request(open[0], '/metrics');
    assert.equal(m.status, 200);
    assert.ok(Number(m.body.match(/^sandgate_connections_over_limit_total (\d+)$/m)[1]) >= 2, m.body);
    assert.match(m.body, /^sandgate_connections_untracked_total 0$/m);
    for (const c of open) c.destroy();
  } finally {
    proc.kill('SIGKILL');
  }
});

// http.max_upstream_per_sandbox: requests in flight to one sandbox, over every worker. A catalog
// entry points the sandbox at a stand-in node proxy (this process) that holds every request until
// told to answer, so the count is exact.
test('max_upstream_per_sandbox: past the cap a sandbox request gets 429 + Retry-After; others and later ones pass', { timeout: 60000 }, async () => {
  const held = [];
  const upstream = http.createServer((req, res) => { held.push(res); });
  await new Promise((r) => upstream.listen(0, '127.0.0.1', r));
  onCleanup(() => upstream.close());
  const up = upstream.address().port;
  const redisCli = (...a) => execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', s.redis.address.split(':')[1], ...a]);
  const far = String(Date.now() + 3600_000);
  for (const id of ['capsbx1', 'capsbx2'])
    redisCli('HSET', `{sg}:sbx:${id}`, 'node', 'capnode', 'public', '1', 'end', far);
  redisCli('HSET', '{sg}:node:capnode', 'proxy', `127.0.0.1:${up}`, 'heartbeat_ms', far);
  const gw = await startGateway({ pg: s.pg, redis: s.redis, name: 'gwcap', extra: 'http:\n  max_upstream_per_sandbox: 2\n' });
  onCleanup(() => gw.stop('SIGKILL'));
  // node:http, not fetch (which will not send a Host of our choosing); a fresh connection each
  const get = (id) => new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: gw.port, path: '/x', agent: false,
      headers: { host: `8000-${id}.sandgate.test` } }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    }).on('error', reject);
  });
  const a = [get('capsbx1'), get('capsbx1')];
  await waitFor(() => held.length === 2, { what: 'two requests held upstream' });
  const third = await get('capsbx1');
  assert.equal(third.status, 429);
  assert.equal(third.headers['retry-after'], '1');
  assert.deepEqual(JSON.parse(third.body), { code: 429, message: 'Too many concurrent requests to this sandbox' });
  // another sandbox has its own count
  const other = get('capsbx2');
  await waitFor(() => held.length === 3, { what: 'the other sandbox passes' });
  for (const res of held.splice(0)) res.end('ok');
  for (const r of [...await Promise.all(a), await other]) assert.equal(r.status, 200);
  // the finished requests no longer count
  const later = get('capsbx1');
  await waitFor(() => held.length === 1, { what: 'a later request passes' });
  held.splice(0).forEach((res) => res.end('ok'));
  assert.equal((await later).status, 200);
  const m = await (await fetch(`${gw.url}/metrics`)).text();
  assert.match(m, /^sandgate_upstream_over_limit_total 1$/m);
  await gw.stop('SIGKILL');
  upstream.closeAllConnections();
  upstream.close();
});
