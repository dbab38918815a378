// Edge data path (issue 6): the gateway routes sandbox traffic by Host (<port>-<id>.<domain>) or
// by the e2b-sandbox-* headers, looks the sandbox up in the Redis catalog and proxies to a REAL
// node agent (lib/node-harness.mjs: its own network namespace, runc sandboxes from the `base`
// template) with PostgreSQL, Redis and the gateway from lib/services.mjs. Needs root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { Sandbox } from 'e2b';
import { World, canRun, TOKEN, waitFor } from './lib/node-harness.mjs';
import {
  startPostgres, startGateway, gatewayConfig, sandgate, createTeam, createKey, tmpdir, freePort, launch, onCleanup, SANDGATE,
} from './lib/services.mjs';
import { makeCerts, withTlsListener } from './lib/tls.mjs';

const DOMAIN = 'sandgate.test';
const GW_NODE_TOKEN = 'test-node-token-0123456789'; // what gatewayConfig() writes
const why = canRun();
const opts = { skip: why || false, timeout: 180000 };
let w, pg, gw, gw2, key, sdk;

before(async () => {
  if (why) return;
  w = new World();
  const node = await w.makeNode('e1');
  writeFileSync(node.config, readFileSync(node.config, 'utf8').replace(TOKEN, GW_NODE_TOKEN));
  await w.startRedis();
  await w.startNode(node);
  pg = await startPostgres();
  const redis = { address: `127.0.0.1:${w.redisPort}` };
  const cfg = path.join(tmpdir('cfg'), 'admin.yaml');
  writeFileSync(cfg, gatewayConfig({ port: 1, pg, redis }));
  sandgate(cfg, 'migrate');
  createTeam(cfg, 'edge', '--max-concurrent', '10', '--max-timeout', '3600');
  key = createKey(cfg, 'edge');
  gw = await startGateway({ pg, redis, extra: 'http:\n  proxy_max_body_bytes: 65536\nscheduler:\n  node_down_after_ms: 3000\n' });
  // a second gateway: learns of kills on the first one through Redis pub/sub only
  gw2 = await startGateway({ pg, redis, name: 'gw2' });
  sdk = { apiKey: key, apiUrl: gw.url, sandboxUrl: gw.url, domain: DOMAIN, requestTimeoutMs: 30000 };
});

after(async () => {
  if (gw) await gw.stop('SIGKILL');
  if (gw2) await gw2.stop('SIGKILL');
  if (pg) await pg.stop();
  if (w) await w.close();
});

// curl through the gateway; returns { status, body, type }.
function curl(url, args = []) {
  const out = execFileSync('curl', ['-sS', '-m', '10', '-o', '-', '-w', '\n%{http_code} %{content_type}', ...args, url],
    { encoding: 'utf8' });
  const nl = out.lastIndexOf('\n');
  const [status, type] = out.slice(nl + 1).split(' ');
  return { status: Number(status), body: out.slice(0, nl), type };
}
const hostUrl = (port, id, p = '/') => [`http://${port}-${id}.${DOMAIN}:${gw.port}${p}`,
  ['--resolve', `${port}-${id}.${DOMAIN}:${gw.port}:127.0.0.1`]];
const viaHost = (port, id, p, args = []) => { const [u, a] = hostUrl(port, id, p); return curl(u, [...a, ...args]); };
const viaHeaders = (port, id, p = '/', args = []) => curl(`${gw.url}${p}`,
  ['-H', `e2b-sandbox-id: ${id}`, '-H', `e2b-sandbox-port: ${port}`, ...args]);

test('edge: SDK envd calls, a sandbox port by host and by headers, 502 for a closed port and after kill', opts, async () => {
  const sbx = await Sandbox.create('base', { ...sdk, timeoutMs: 300000 });
  try {
    // (a) the SDK's envd traffic goes through the edge (E2B_SANDBOX_URL = the gateway)
    const r = await sbx.commands.run('echo hi');
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'hi\n');
    await sbx.files.write('/home/user/edge.txt', 'through the edge\n');
    assert.equal(await sbx.files.read('/home/user/edge.txt'), 'through the edge\n');

    // (b) a server on port 8000 in the sandbox
    await sbx.commands.run('mkdir -p /tmp/www && echo edge-ok > /tmp/www/index.html && cd /tmp/www && python3 -m http.server 8000',
      { background: true });
    await waitFor(() => viaHost(8000, sbx.sandboxId, '/index.html').status === 200, 15000, 100);
    let h = viaHost(8000, sbx.sandboxId, '/index.html');
    assert.equal(h.status, 200);
    assert.equal(h.body, 'edge-ok\n');
    h = viaHeaders(8000, sbx.sandboxId, '/index.html');
    assert.equal(h.status, 200);
    assert.equal(h.body, 'edge-ok\n');
    // a host with a free-form suffix after the id routes the same
    h = viaHost(8000, `${sbx.sandboxId}-client1`, '/index.html');
    assert.equal(h.status, 200);
    // the request headers the sandbox sees: forwarded headers set, node headers removed
    await sbx.commands.run(`cat > /tmp/hdr.py <<'EOF'
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200); self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(b))); self.end_headers(); self.wfile.write(b)
    def do_POST(self):
        n = int(self.headers.get('content-length', 0)); d = self.rfile.read(n)
        self.send_response(200); self.send_header('content-length', str(len(d))); self.end_headers(); self.wfile.write(d)
http.server.ThreadingHTTPServer(('0.0.0.0', 8002), H).serve_forever()
EOF
python3 /tmp/hdr.py`, { background: true });
    await waitFor(() => viaHost(8002, sbx.sandboxId, '/').status === 200, 15000, 100);
    h = viaHost(8002, sbx.sandboxId, '/', ['-H', 'x-sandgate-node-token: forged', '-H', 'keep-alive: 5']);
    const seen = JSON.parse(h.body);
    assert.equal(seen['x-forwarded-host'], `8002-${sbx.sandboxId}.${DOMAIN}:${gw.port}`);
    assert.equal(seen['x-forwarded-proto'], 'http');
    assert.ok(seen['x-forwarded-for'].includes('127.0.0.1'), JSON.stringify(seen));
    for (const k of Object.keys(seen)) assert.ok(!k.startsWith('x-sandgate-'), `leaked ${k}`);
    assert.equal(seen['keep-alive'], undefined);
    // request bodies: under the bound pass, over it 413 (http.proxy_max_body_bytes = 64 KiB)
    h = viaHost(8002, sbx.sandboxId, '/', ['--data-binary', 'x'.repeat(1000)]);
    assert.equal(h.status, 200);
    assert.equal(h.body.length, 1000);
    h = viaHost(8002, sbx.sandboxId, '/', ['--data-binary', 'x'.repeat(70000)]);
    assert.equal(h.status, 413);
    assert.equal(JSON.parse(h.body).code, 413);

    // a sandbox's /health is the sandbox's (envd answers 204), not the gateway's (200 JSON)
    h = viaHeaders(49983, sbx.sandboxId, '/health');
    assert.equal(h.status, 204);
    h = viaHost(49983, sbx.sandboxId, '/health');
    assert.equal(h.status, 204);
    h = viaHost(8000, sbx.sandboxId, '/metrics');
    assert.equal(h.status, 404); // python's http.server: no such file

    // nothing listens on 8001: the node's own 502
    h = viaHost(8001, sbx.sandboxId, '/');
    assert.equal(h.status, 502);
    assert.match(JSON.parse(h.body).message, /port 8001 is not open/);
    h = viaHeaders(8001, sbx.sandboxId, '/');
    assert.equal(h.status, 502);
    assert.match(JSON.parse(h.body).message, /port 8001 is not open/);

    // the second gateway serves the sandbox too (and so caches its route in both its workers)
    const on2 = (args = []) => curl(`http://8000-${sbx.sandboxId}.${DOMAIN}:${gw2.port}/index.html`,
      ['--resolve', `8000-${sbx.sandboxId}.${DOMAIN}:${gw2.port}:127.0.0.1`, ...args]);
    for (let i = 0; i < 4; i++) assert.equal(on2().status, 200);

    // (c) killed: the URL (cached a moment ago) answers the edge's 502 right after kill returns,
    // on the gateway that killed it and on the other one
    await sbx.kill();
    for (let i = 0; i < 4; i++) {
      h = on2();
      assert.equal(h.status, 502, h.body);
      assert.equal(JSON.parse(h.body).message, 'The sandbox was not found');
    }
    h = viaHost(8000, sbx.sandboxId, '/index.html');
    assert.equal(h.status, 502);
    assert.deepEqual(JSON.parse(h.body), { sandboxId: sbx.sandboxId, message: 'The sandbox was not found', code: 502 });
    h = viaHeaders(8000, sbx.sandboxId, '/index.html');
    assert.equal(h.status, 502);
    assert.equal(JSON.parse(h.body).sandboxId, sbx.sandboxId);
  } finally {
    await sbx.kill().catch(() => {});
  }
});

test('edge: unknown sandbox 502 (JSON, HTML for browsers), malformed hosts and headers 400, API still served', opts, async () => {
  let h = viaHost(8000, 'nosuchsandbox0', '/');
  assert.equal(h.status, 502);
  assert.deepEqual(JSON.parse(h.body), { sandboxId: 'nosuchsandbox0', message: 'The sandbox was not found', code: 502 });
  h = viaHost(8000, 'nosuchsandbox0', '/', ['-H', 'accept: text/html,application/xhtml+xml']);
  assert.equal(h.status, 502);
  assert.match(h.type, /text\/html/);
  assert.match(h.body, /nosuchsandbox0/);
  h = viaHost(8000, 'nosuchsandbox0', '/', ['-H', 'sec-fetch-mode: navigate']);
  assert.match(h.type, /text\/html/);

  const bad = (host) => curl(`${gw.url}/`, ['-H', `host: ${host}`]);
  for (const [host, word] of [[`0-abc.${DOMAIN}`, 'port'], [`65536-abc.${DOMAIN}`, 'port'],
    [`8000.${DOMAIN}`, 'sandbox ID'], [`a.b.${DOMAIN}`, 'labels'], [`8000-a_b.${DOMAIN}`, 'sandbox ID']]) {
    h = bad(host);
    assert.equal(h.status, 400, host);
    const j = JSON.parse(h.body);
    assert.equal(j.code, 400);
    assert.ok(j.message.includes(word), `${host}: ${j.message}`);
  }
  h = curl(`${gw.url}/`, ['-H', 'e2b-sandbox-id: abc']);
  assert.equal(h.status, 400);
  assert.match(JSON.parse(h.body).message, /e2b-sandbox-port/);
  h = curl(`${gw.url}/`, ['-H', 'e2b-sandbox-id: abc', '-H', 'e2b-sandbox-port: 70000']);
  assert.equal(h.status, 400);

  // the API on api.<domain> and on the shared host without sandbox headers
  h = curl(`http://api.${DOMAIN}:${gw.port}/health`, ['--resolve', `api.${DOMAIN}:${gw.port}:127.0.0.1`]);
  assert.equal(h.status, 200);
  h = curl(`${gw.url}/sandboxes`, ['-H', `x-api-key: ${key}`]);
  assert.equal(h.status, 200);

  // route cache counters (the look-ups above missed the cache: the sandbox never existed)
  const m = await (await fetch(`${gw.url}/metrics`)).text();
  assert.match(m, /^sandgate_route_cache_hits_total \d+$/m);
  assert.ok(Number(m.match(/^sandgate_route_cache_misses_total (\d+)$/m)[1]) >= 1);
  assert.match(m, /route="sandbox-proxy",status="502"/);
});

test('edge: traffic access token on non-envd ports when public traffic is disallowed', opts, async () => {
  const sbx = await Sandbox.create('base', { ...sdk, timeoutMs: 300000, network: { allowPublicTraffic: false } });
  try {
    const tok = sbx.trafficAccessToken;
    assert.match(tok || '', /^[0-9a-f]{64}$/);
    // envd's port is not gated by the traffic token: the SDK works without sending it
    const r = await sbx.commands.run('mkdir -p /tmp/w && echo tok-ok > /tmp/w/i.html');
    assert.equal(r.exitCode, 0);
    await sbx.commands.run('cd /tmp/w && python3 -m http.server 8000', { background: true });
    const good = ['-H', `e2b-traffic-access-token: ${tok}`];
    await waitFor(() => viaHost(8000, sbx.sandboxId, '/i.html', good).status === 200, 15000, 100);
    let h = viaHost(8000, sbx.sandboxId, '/i.html', good);
    assert.equal(h.status, 200);
    assert.equal(h.body, 'tok-ok\n');
    h = viaHost(8000, sbx.sandboxId, '/i.html');
    assert.equal(h.status, 403);
    assert.deepEqual(JSON.parse(h.body), { code: 403, message: 'Missing header e2b-traffic-access-token' });
    const wrong = tok.slice(0, 63) + (tok[63] === '0' ? '1' : '0');
    // (curl sends an empty header for "name;")
    for (const t of [wrong, tok + '0', tok.slice(0, 10), tok.toUpperCase(), '']) {
      h = viaHost(8000, sbx.sandboxId, '/i.html', ['-H', t ? `e2b-traffic-access-token: ${t}` : 'e2b-traffic-access-token;']);
      assert.equal(h.status, 403, `token ${JSON.stringify(t)}`);
      assert.equal(JSON.parse(h.body).message, 'Invalid header e2b-traffic-access-token');
    }
    h = viaHeaders(8000, sbx.sandboxId, '/i.html');
    assert.equal(h.status, 403);
    h = viaHeaders(8000, sbx.sandboxId, '/i.html', good);
    assert.equal(h.status, 200);
  } finally {
    await sbx.kill().catch(() => {});
  }
});

// A minimal RFC 6455 echo server (python3's standard library has no WebSocket module).
const WS_ECHO = `import socket, hashlib, base64, threading
G = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def recvn(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d: raise EOFError
        b += d
    return b
def serve(c):
    buf = b""
    while b"\\r\\n\\r\\n" not in buf:
        d = c.recv(4096)
        if not d: c.close(); return
        buf += d
    key = [l.split(b":", 1)[1].strip() for l in buf.split(b"\\r\\n") if l.lower().startswith(b"sec-websocket-key:")][0]
    acc = base64.b64encode(hashlib.sha1(key + G).digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: " + acc + b"\\r\\n\\r\\n")
    try:
        while True:
            h = recvn(c, 2); op = h[0] & 15; n = h[1] & 127
            if n == 126: n = int.from_bytes(recvn(c, 2), "big")
            elif n == 127: n = int.from_bytes(recvn(c, 8), "big")
            m = recvn(c, 4) if h[1] & 128 else b"\\0\\0\\0\\0"
            p = bytes(x ^ m[i % 4] for i, x in enumerate(recvn(c, n)))
            if op == 8: c.sendall(b"\\x88\\x00"); break
            hdr = bytes([0x80 | op]) + (bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big"))
            c.sendall(hdr + p)
    except EOFError: pass
    c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8003)); s.listen(16)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
`;

// Client side: handshake, then masked text frames; resolves with the echoed payloads.
function wsEcho(port, host, messages) {
  return new Promise((resolve, reject) => {
    const key = randomBytes(16).toString('base64');
    const want = createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
    const sock = net.connect(port, '127.0.0.1');
    const timer = setTimeout(() => { sock.destroy(); reject(new Error('websocket echo timed out')); }, 15000);
    let buf = Buffer.alloc(0), upgraded = false;
    const got = [];
    const frame = (text) => {
      const p = Buffer.from(text), m = randomBytes(4);
      const out = Buffer.concat([Buffer.from([0x81, 0x80 | p.length]), m, Buffer.from(p.map((x, i) => x ^ m[i % 4]))]);
      sock.write(out);
    };
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString('latin1');
        buf = buf.subarray(end + 4);
        if (!/^HTTP\/1\.1 101 /.test(head) || !head.toLowerCase().includes(`sec-websocket-accept: ${want.toLowerCase()}`)) {
          clearTimeout(timer); sock.destroy(); reject(new Error(`no upgrade: ${head}`)); return;
        }
        upgraded = true;
        frame(messages[0]);
      }
      while (buf.length >= 2 && buf.length >= 2 + (buf[1] & 127)) {
        const n = buf[1] & 127;
        got.push(buf.subarray(2, 2 + n).toString());
        buf = buf.subarray(2 + n);
        if (got.length === messages.length) { clearTimeout(timer); sock.destroy(); resolve(got); return; }
        frame(messages[got.length]);
      }
    });
    sock.write(`GET /ws HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  });
}

test('edge: a WebSocket echo server in the sandbox, through the edge by host', opts, async () => {
  const sbx = await Sandbox.create('base', { ...sdk, timeoutMs: 300000 });
  try {
    await sbx.files.write('/tmp/ws.py', WS_ECHO);
    await sbx.commands.run('python3 /tmp/ws.py', { background: true });
    await waitFor(async () => { try { return (await wsEcho(gw.port, `8003-${sbx.sandboxId}.${DOMAIN}`, ['probe'])).length === 1; } catch { return false; } }, 15000, 200);
    const msgs = ['hello-ws', 'second message', 'x'.repeat(100)];
    assert.deepEqual(await wsEcho(gw.port, `8003-${sbx.sandboxId}.${DOMAIN}`, msgs), msgs);
  } finally {
    await sbx.kill().catch(() => {});
  }
});

// A node that stops answering (its agent SIGSTOPped: the node proxy accepts TCP but never
// replies, the worst case for a proxy) is down once its heartbeat is scheduler.node_down_after_ms
// old (3 s on this gateway); its sandboxes' URLs then get the edge's JSON 502 at once instead of
// a proxy attempt that would hang. The node heartbeating again brings the routes back.
test('edge: a sandbox on a down node answers a JSON 502 at once; served again when the node returns', opts, async () => {
  const sbx = await Sandbox.create('base', { ...sdk, timeoutMs: 300000 });
  const node = w.nodes[0];
  let stopped = false;
  try {
    await sbx.commands.run('mkdir -p /tmp/d && echo down-ok > /tmp/d/i.html && cd /tmp/d && python3 -m http.server 8000',
      { background: true });
    await waitFor(() => viaHost(8000, sbx.sandboxId, '/i.html').status === 200, 15000, 100);

    node.proc.kill('SIGSTOP');
    stopped = true;
    // the API's view first (the same rule): the sandbox is lost
    await waitFor(async () => {
      const r = await fetch(`${gw.url}/sandboxes/${sbx.sandboxId}`, { headers: { 'x-api-key': key } });
      return r.status === 200 && (await r.json()).state === 'lost';
    }, 20000, 100);
    // curl gives up after 3 s: a proxy attempt to the stopped node would hang until then
    const want = { sandboxId: sbx.sandboxId, message: 'The sandbox is not reachable: its node is down', code: 502 };
    for (const h of [viaHost(8000, sbx.sandboxId, '/i.html', ['-m', '3']), viaHeaders(8000, sbx.sandboxId, '/i.html', ['-m', '3']),
      viaHost(49983, sbx.sandboxId, '/health', ['-m', '3'])]) {
      assert.equal(h.status, 502, h.body);
      assert.deepEqual(JSON.parse(h.body), want);
    }
    const page = viaHost(8000, sbx.sandboxId, '/i.html', ['-m', '3', '-H', 'accept: text/html']);
    assert.equal(page.status, 502);
    assert.match(page.type, /text\/html/);
    assert.match(page.body, /node is down/);

    node.proc.kill('SIGCONT');
    stopped = false;
    // every worker of the gateway sees the node back within its route cache's lifetime (1 s):
    // wait for several answers in a row (new connections: either worker)
    await waitFor(() => [0, 1, 2, 3].every(() => viaHost(8000, sbx.sandboxId, '/i.html', ['-m', '3']).status === 200),
      20000, 200);
    assert.equal(viaHost(8000, sbx.sandboxId, '/i.html').body, 'down-ok\n');
  } finally {
    if (stopped) node.proc.kill('SIGCONT');
    await sbx.kill().catch(() => {});
  }
});

// HTTP/2 at the edge: a TLS listener with http2 enabled (a test CA), curl negotiating h2 by ALPN
// to https://8000-<id>.<domain>/, a python http.server in the sandbox behind it (HTTP/1.1 to the
// node, HTTP/2 to the client).
test('edge: HTTP/2 over TLS to a sandbox port', opts, async () => {
  const dir = tmpdir('gwh2');
  const certs = makeCerts(dir, DOMAIN);
  const port = await freePort();
  const tlsPort = await freePort();
  const config = path.join(dir, 'gateway.yaml');
  writeFileSync(config, withTlsListener(gatewayConfig({ port, pg, redis: { address: `127.0.0.1:${w.redisPort}` } }),
    { port, tlsPort, cert: certs.leaf.cert, key: certs.leaf.key, http2: true }));
  const proc = launch(SANDGATE, ['--config', config, 'serve'], { log: path.join(dir, 'gateway.log') });
  onCleanup(() => proc.kill('SIGKILL'));
  const sbx = await Sandbox.create('base', { ...sdk, timeoutMs: 300000 });
  try {
    await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/health`)).status === 200, 15000, 100);
    await sbx.commands.run('mkdir -p /tmp/h2 && echo h2-ok > /tmp/h2/i.html && cd /tmp/h2 && python3 -m http.server 8000',
      { background: true });
    const host = `8000-${sbx.sandboxId}.${DOMAIN}`;
    const get = (extra = []) => curl(`https://${host}:${tlsPort}/i.html`,
      ['--cacert', certs.ca, '--resolve', `${host}:${tlsPort}:127.0.0.1`, ...extra]);
    await waitFor(() => get(['--http2']).status === 200, 15000, 100);
    let h = get(['--http2']);
    assert.equal(h.status, 200);
    assert.equal(h.body, 'h2-ok\n');
    const version = execFileSync('curl', ['-sS', '-m', '10', '-o', '/dev/null', '-w', '%{http_version}', '--http2',
      '--cacert', certs.ca, '--resolve', `${host}:${tlsPort}:127.0.0.1`, `https://${host}:${tlsPort}/i.html`], { encoding: 'utf8' });
    assert.equal(version, '2');
    // the same URL over HTTP/1.1 on the same listener (ALPN offers both)
    const v1 = execFileSync('curl', ['-sS', '-m', '10', '-o', '/dev/null', '-w', '%{http_version}', '--http1.1',
      '--cacert', certs.ca, '--resolve', `${host}:${tlsPort}:127.0.0.1`, `https://${host}:${tlsPort}/i.html`], { encoding: 'utf8' });
    assert.equal(v1, '1.1');
  } finally {
    proc.kill('SIGKILL');
    await sbx.kill().catch(() => {});
  }
});
