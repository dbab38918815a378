// Edge streaming (issue 6, item 3): the gateway's sandbox proxy streams with backpressure.
// A 200 MiB response from a server inside a real sandbox (lib/node-harness.mjs: a real node agent
// in its own network namespace, runc, the `base` template) read through the gateway by a client
// that first does not read at all and then reads slowly: the gateway's RSS must stay within
// RSS_BOUND of its level before the request and no file under /tmp may be mapped or open in the
// gateway (h2o 2.2.5's own proxy spools what a slow client has not read to an unlinked mmap'd
// /tmp file). And an event stream: the first event must reach the client while the server still
// holds the second (the server writes the second only when the client, having received the first,
// asks it to: a proxy that waits for more bytes never delivers the first one alone).
// Both over HTTP/1.1 (plain listener) and HTTP/2 (TLS listener). Needs root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import http from 'node:http';
import http2 from 'node:http2';
import { execFileSync } from 'node:child_process';
import { Sandbox } from 'e2b';
import { World, canRun, TOKEN, waitFor } from './lib/node-harness.mjs';
import { startPostgres, startGateway, gatewayConfig, sandgate, createTeam, createKey, tmpdir, freePort } from './lib/services.mjs';

const DOMAIN = 'sandgate.test';
const GW_NODE_TOKEN = 'test-node-token-0123456789';
const MIB = 1024 * 1024;
const BIG_MIB = 200;
const RSS_BOUND = 64 * MIB;
const why = canRun();
const opts = { skip: why || false, timeout: 300000 };
let w, pg, gw, sbx, node;

// The sandbox's server: /big?n=<MiB> (Content-Length), /sse (chunked; the second event waits
// for /go), /go, /hop (hop-by-hop response headers).
const SERVER = `import http.server, threading
CHUNK = bytes(range(256)) * 4096
go = threading.Event()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path.startswith('/big'):
            n = int(self.path.split('=')[1])
            self.send_response(200); self.send_header('content-type', 'application/octet-stream')
            self.send_header('content-length', str(n * len(CHUNK))); self.end_headers()
            for _ in range(n): self.wfile.write(CHUNK)
        elif self.path == '/sse':
            go.clear()
            self.send_response(200); self.send_header('content-type', 'text/event-stream')
            self.send_header('transfer-encoding', 'chunked'); self.end_headers()
            def chunk(b): self.wfile.write(b'%x\\r\\n%s\\r\\n' % (len(b), b)); self.wfile.flush()
            chunk(b'data: one\\n\\n')
            chunk(b'data: two\\n\\n' if go.wait(20) else b'data: timeout\\n\\n')
            self.wfile.write(b'0\\r\\n\\r\\n'); self.wfile.flush()
        elif self.path == '/hop':
            self.send_response(200); self.send_header('connection', 'keep-alive'); self.send_header('keep-alive', 'timeout=5')
            self.send_header('upgrade', 'example/1')
            self.send_header('x-kept', '1'); self.send_header('content-length', '3'); self.end_headers(); self.wfile.write(b'hop')
        elif self.path == '/go':
            go.set()
            self.send_response(200); self.send_header('content-length', '2'); self.end_headers(); self.wfile.write(b'ok')
        else:
            self.send_response(404); self.send_header('content-length', '0'); self.end_headers()
http.server.ThreadingHTTPServer(('0.0.0.0', 8004), H).serve_forever()
`;

before(async () => {
  if (why) return;
  w = new World();
  node = await w.makeNode('s1');
  fs.writeFileSync(node.config, fs.readFileSync(node.config, 'utf8').replace(TOKEN, GW_NODE_TOKEN));
  await w.startRedis();
  await w.startNode(node);
  pg = await startPostgres();
  const redis = { address: `127.0.0.1:${w.redisPort}` };
  const cfg = path.join(tmpdir('cfg'), 'admin.yaml');
  fs.writeFileSync(cfg, gatewayConfig({ port: 1, pg, redis }));
  sandgate(cfg, 'migrate');
  createTeam(cfg, 'stream', '--max-concurrent', '4', '--max-timeout', '3600');
  const key = createKey(cfg, 'stream');
  gw = await startGateway({ pg, redis, tls: true });
  sbx = await Sandbox.create('base', { apiKey: key, apiUrl: gw.url, sandboxUrl: gw.url, domain: DOMAIN,
    requestTimeoutMs: 30000, timeoutMs: 600000 });
  await sbx.files.write('/tmp/srv.py', SERVER);
  await sbx.commands.run('python3 /tmp/srv.py', { background: true, timeoutMs: 0 }); // (the SDK's default ends it after 60 s)
  await waitFor(async () => (await h1Get('/big?n=1')).length === MIB, 15000, 200);
});

after(async () => {
  if (sbx) await sbx.kill().catch(() => {});
  if (gw) await gw.stop('SIGKILL');
  if (pg) await pg.stop();
  if (w) await w.close();
});

const host = () => `8004-${sbx.sandboxId}.${DOMAIN}`;

// What the gateway holds now: resident memory and any /tmp file it maps or has open.
function gatewayState() {
  const pid = gw.proc.pid;
  const exe = fs.readlinkSync(`/proc/${pid}/exe`);
  const rss = Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB/m)[1]) * 1024;
  const tmp = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes(' /tmp/') && !l.endsWith(exe))
    .map((l) => l.slice(l.indexOf('/tmp/')));
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const t = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (t.startsWith('/tmp/') && t !== gw.log) tmp.push(t); // its stdout/stderr log is not a spool
    } catch {}
  }
  return { rss, tmp };
}

// One HTTP/1.1 GET on a raw socket; resolves with the body (Connection: close, so the end of
// the stream is the end of the body).
function h1Get(p) {
  return new Promise((resolve, reject) => {
    const s = net.connect(gw.port, '127.0.0.1');
    const parts = [];
    s.on('data', (d) => parts.push(d));
    s.on('error', reject);
    s.on('end', () => {
      const all = Buffer.concat(parts);
      const i = all.indexOf('\r\n\r\n');
      resolve(/^HTTP\/1\.1 200 /.test(all.toString('latin1', 0, 16)) ? all.subarray(i + 4) : Buffer.alloc(0));
    });
    s.write(`GET ${p} HTTP/1.1\r\nHost: ${host()}\r\nConnection: close\r\n\r\n`);
  });
}

// The slow reader (base: gatewayState() before the request): after the head, it reads nothing for `stallMs`, then reads in 8 MiB steps
// with a pause after each; it samples the gateway every 100 ms throughout. `source` gives
// { onData(fn), onEnd(fn), pause(), resume() } over either protocol.
async function slowRead(base, source, stallMs = 3000) {
  let got = 0, sum = 0, maxRss = base.rss;
  const tmpSeen = new Set();
  const sample = () => {
    const s = gatewayState();
    maxRss = Math.max(maxRss, s.rss);
    for (const t of s.tmp) tmpSeen.add(t);
  };
  const timer = setInterval(sample, 100);
  try {
    await new Promise((resolve, reject) => {
      let nextPause = 8 * MIB;
      source.onError(reject);
      source.onData((d) => {
        // a checksum of positions: byte i of the body is i % 256
        for (let i = 0; i < d.length; i += 4093) if (d[i] !== (got + i) % 256) { reject(new Error(`byte ${got + i} is wrong`)); return; }
        got += d.length;
        sum += d.length;
        if (got >= nextPause) {
          nextPause += 8 * MIB;
          source.pause();
          setTimeout(() => source.resume(), 50);
        }
      });
      source.onEnd(resolve);
      source.pause();
      setTimeout(() => source.resume(), stallMs);
    });
  } finally {
    clearInterval(timer);
  }
  sample();
  return { got: sum, growth: maxRss - base.rss, tmp: [...tmpSeen] };
}

test(`edge stream: ${BIG_MIB} MiB to a stalled then slow HTTP/1.1 client, gateway memory bounded, no /tmp spool`, opts, async (t) => {
  const s = net.connect(gw.port, '127.0.0.1');
  let head = null, pending = [];
  const handlers = {};
  s.on('data', (d) => {
    if (head === null) {
      pending.push(d);
      const all = Buffer.concat(pending);
      const i = all.indexOf('\r\n\r\n');
      if (i < 0) return;
      head = all.toString('latin1', 0, i);
      if (i + 4 < all.length) handlers.data?.(all.subarray(i + 4));
      return;
    }
    handlers.data?.(d);
  });
  const base = gatewayState();
  s.write(`GET /big?n=${BIG_MIB} HTTP/1.1\r\nHost: ${host()}\r\nConnection: close\r\n\r\n`);
  const r = await slowRead(base, {
    onData: (f) => { handlers.data = f; },
    onEnd: (f) => s.on('end', f),
    onError: (f) => s.on('error', f),
    pause: () => s.pause(),
    resume: () => s.resume(),
  });
  t.diagnostic(`RSS growth ${(r.growth / MIB).toFixed(1)} MiB, /tmp files ${JSON.stringify(r.tmp)}`);
  assert.match(head, /^HTTP\/1\.1 200 /);
  assert.match(head, new RegExp(`content-length: ${BIG_MIB * MIB}`, 'i'));
  assert.equal(r.got, BIG_MIB * MIB);
  assert.deepEqual(r.tmp, [], 'the gateway spooled to /tmp');
  assert.ok(r.growth < RSS_BOUND, `gateway RSS grew by ${(r.growth / MIB).toFixed(1)} MiB`);
});

function h2Session() {
  const session = http2.connect(`https://127.0.0.1:${gw.tlsPort}`, { rejectUnauthorized: false, servername: host() });
  session.on('error', () => {});
  return session;
}

test(`edge stream: ${BIG_MIB} MiB to a stalled then slow HTTP/2 client, gateway memory bounded, no /tmp spool`, opts, async (t) => {
  const session = h2Session();
  try {
    await new Promise((res) => session.on('connect', res));
    const base = gatewayState();
    const st = session.request({ ':path': `/big?n=${BIG_MIB}`, ':authority': host() });
    const headers = await new Promise((res, rej) => { st.on('response', res); st.on('error', rej); });
    assert.equal(headers[':status'], 200);
    const r = await slowRead(base, {
      onData: (f) => st.on('data', f),
      onEnd: (f) => st.on('end', f),
      onError: (f) => st.on('error', f),
      pause: () => st.pause(),
      resume: () => st.resume(),
    });
    t.diagnostic(`RSS growth ${(r.growth / MIB).toFixed(1)} MiB, /tmp files ${JSON.stringify(r.tmp)}`);
    assert.equal(r.got, BIG_MIB * MIB);
    assert.deepEqual(r.tmp, [], 'the gateway spooled to /tmp');
    assert.ok(r.growth < RSS_BOUND, `gateway RSS grew by ${(r.growth / MIB).toFixed(1)} MiB`);
  } finally {
    session.close();
  }
});

// The event stream: `get` opens /sse and calls onChunk for each piece; on the first piece the
// client asks the server (through the gateway, on another connection) for the second event.
async function eventStream(open) {
  let text = '';
  let asked = false;
  await new Promise((resolve, reject) => {
    open((d) => {
      text += d.toString();
      if (!asked && text.includes('data: one\n\n')) {
        asked = true;
        // the server writes the second event only after /go: nothing else may have come yet
        if (text.includes('data: two') || text.includes('timeout')) reject(new Error(`events came together: ${text}`));
        else h1Get('/go').catch(reject);
      }
    }, resolve, reject);
  });
  return text;
}

test('edge stream: an event stream over HTTP/1.1 delivers the first event before the second exists', opts, async () => {
  const text = await eventStream((onChunk, onEnd, onError) => {
    const s = net.connect(gw.port, '127.0.0.1');
    let head = true, buf = '';
    s.on('data', (d) => {
      if (head) {
        buf += d.toString('latin1');
        const i = buf.indexOf('\r\n\r\n');
        if (i < 0) return;
        head = false;
        if (!/^HTTP\/1\.1 200 /.test(buf) || !/content-type: text\/event-stream/i.test(buf)) {
          onError(new Error(`unexpected head: ${buf}`));
          return;
        }
        if (i + 4 < buf.length) onChunk(Buffer.from(buf.slice(i + 4), 'latin1'));
        return;
      }
      onChunk(d);
    });
    s.on('end', onEnd);
    s.on('error', onError);
    s.write(`GET /sse HTTP/1.1\r\nHost: ${host()}\r\nConnection: close\r\n\r\n`);
  });
  // chunked framing through the gateway: the events are in the body in order
  assert.ok(text.indexOf('data: one') < text.indexOf('data: two'), text);
  assert.ok(!text.includes('timeout'), text);
});

test('edge stream: an event stream over HTTP/2 delivers the first event before the second exists', opts, async () => {
  const session = h2Session();
  try {
    const text = await eventStream((onChunk, onEnd, onError) => {
      const st = session.request({ ':path': '/sse', ':authority': host() });
      st.on('response', (h) => {
        if (h[':status'] !== 200) onError(new Error(`status ${h[':status']}`));
      });
      st.on('data', onChunk);
      st.on('end', onEnd);
      st.on('error', onError);
    });
    assert.equal(text, 'data: one\n\ndata: two\n\n');
  } finally {
    session.close();
  }
});

test('edge stream: hop-by-hop response headers are dropped (HTTP/1.1 and HTTP/2)', opts, async () => {
  const s = net.connect(gw.port, '127.0.0.1');
  const parts = [];
  s.on('data', (d) => parts.push(d));
  await new Promise((res, rej) => { s.on('end', res); s.on('error', rej);
    s.write(`GET /hop HTTP/1.1\r\nHost: ${host()}\r\nConnection: close\r\n\r\n`); });
  const text = Buffer.concat(parts).toString('latin1');
  assert.match(text, /^HTTP\/1\.1 200 /);
  assert.match(text, /^x-kept: 1\r$/mi);
  assert.doesNotMatch(text, /^keep-alive:/mi);
  assert.doesNotMatch(text, /^upgrade:/mi); // (the node drops keep-alive itself; the gateway drops upgrade)
  assert.match(text, /\r\n\r\nhop$/);
  // HTTP/2 forbids connection-specific headers: node's client fails the stream if one comes
  const session = h2Session();
  try {
    const st = session.request({ ':path': '/hop', ':authority': host() });
    const h = await new Promise((res, rej) => { st.on('response', res); st.on('error', rej); });
    let body = '';
    st.on('data', (d) => { body += d; });
    await new Promise((res, rej) => { st.on('end', res); st.on('error', rej); });
    assert.equal(h[':status'], 200);
    assert.equal(h['x-kept'], '1');
    assert.equal(h['keep-alive'], undefined);
    assert.equal(h.upgrade, undefined);
    assert.equal(body, 'hop');
  } finally {
    session.close();
  }
});

test('edge stream: a node proxy that cannot be reached gives 502 JSON', opts, async () => {
  // a catalog entry whose node's proxy address has no listener (a port just freed)
  const dead = await freePort();
  const cli = (...a) => execFileSync('redis-cli', ['-p', String(w.redisPort), ...a], { encoding: 'utf8' });
  cli('HSET', '{sg}:node:deadnode', 'proxy', `127.0.0.1:${dead}`, 'status', 'ready', 'heartbeat_ms', String(Date.now()));
  cli('HSET', '{sg}:sbx:deadsbx0', 'node', 'deadnode', 'public', '1', 'end', String(Date.now() + 600000));
  try {
    const r = await fetch(`${gw.url}/`, { headers: { 'e2b-sandbox-id': 'deadsbx0', 'e2b-sandbox-port': '8000' } });
    assert.equal(r.status, 502);
    assert.match(r.headers.get('content-type'), /application\/json/);
    const j = await r.json();
    assert.equal(j.code, 502);
    assert.equal(typeof j.message, 'string');
  } finally {
    cli('DEL', '{sg}:sbx:deadsbx0', '{sg}:node:deadnode');
  }
});

// TCP sockets of this (root) namespace to the node proxy, in any state (a connection the gateway
// closed stays in TIME-WAIT here for a minute).
function socketsToNode() {
  const out = execFileSync('ss', ['-Htan', 'dst', `${node.nodeIp}:7071`], { encoding: 'utf8' });
  return out.split('\n').filter(Boolean).length;
}

test('edge stream: sequential requests reuse the gateway\'s connection to the node proxy', opts, async () => {
  // one client connection (so one gateway worker); 20 requests, each read to its end
  const before = socketsToNode();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    for (let i = 0; i < 20; i++) {
      const body = await new Promise((resolve, reject) => {
        http.get({ host: '127.0.0.1', port: gw.port, path: '/hop', headers: { host: host() }, agent }, (res) => {
          let b = '';
          res.on('data', (d) => { b += d; });
          res.on('end', () => resolve(b));
        }).on('error', reject);
      });
      assert.equal(body, 'hop');
    }
  } finally {
    agent.destroy();
  }
  const opened = socketsToNode() - before;
  assert.ok(opened <= 2, `${opened} new connections to the node proxy for 20 requests`);
});
