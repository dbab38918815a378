// The edge's upstream client (gateway/edge_proxy.c) against a node proxy that misbehaves on
// purpose: a scripted TCP server registered in the Redis catalog as a sandbox's node proxy.
// Keep-alive reuse, chunked decoding, framing edge cases (HEAD/204/304, 1xx, close-delimited,
// bytes past the body, a body cut short), a pooled connection closed under a request (retried for
// GET only), malformed and oversized heads, and the pool's idle close. Real PostgreSQL, Redis and
// gateway.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { stack } from './lib/services.mjs';

const SBX = 'upstreamfake0001';
const HOST = `8000-${SBX}.sandgate.test`;
let s, server, port, handler, conns = 0, beat;

before(async () => {
  s = await stack();
  server = net.createServer((sock) => {
    const conn = { n: ++conns, reqs: 0, closed: false };
    sock.on('close', () => { conn.closed = true; });
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString('latin1');
        const cl = Number((head.match(/^content-length:\s*(\d+)/im) || [0, 0])[1]);
        if (buf.length < end + 4 + cl) return;
        const [method, path] = head.split(' ');
        const body = buf.subarray(end + 4, end + 4 + cl).toString();
        buf = buf.subarray(end + 4 + cl);
        conn.reqs++;
        handler({ method, path, head, body }, sock, conn);
      }
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  port = server.address().port;
  const register = () => {
    s.redis.cli('HSET', `{sg}:sbx:${SBX}`, 'node', 'fakenode', 'public', '1', 'end', String(Date.now() + 3600000));
    s.redis.cli('HSET', '{sg}:node:fakenode', 'proxy', `127.0.0.1:${port}`, 'heartbeat_ms', String(Date.now()));
  };
  register();
  beat = setInterval(register, 1000); // the node stays "up" for the edge
});

after(async () => {
  clearInterval(beat);
  server?.close();
  await s?.gw.stop('SIGKILL');
  await s?.redis.stop();
  await s?.pg.stop();
});

// One keep-alive connection to the gateway, so consecutive requests reach the same worker (and
// so the same upstream pool).
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(method, path = '/', { body, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: s.gw.port, method, path, agent,
      headers: { host: HOST, ...headers } }, (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString(),
        complete: res.complete }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('aborted')));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const ok = (sock, body, extra = '') =>
  sock.write(`HTTP/1.1 200 OK\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`);

test('sequential requests share one upstream connection; request bodies and answers arrive whole', async () => {
  conns = 0;
  handler = (req, sock) => ok(sock, `${req.method} ${req.path} ${req.body.length}`, 'X-Custom: Value\r\n');
  for (let i = 0; i < 20; i++) {
    const body = i % 2 ? 'x'.repeat(1000 * i) : undefined;
    const r = await request(i % 2 ? 'POST' : 'GET', `/n${i}`, { body });
    assert.equal(r.status, 200);
    assert.equal(r.body, `${i % 2 ? 'POST' : 'GET'} /n${i} ${body ? body.length : 0}`);
    assert.equal(r.headers['x-custom'], 'Value');
  }
  assert.equal(conns, 1, 'one upstream connection for 20 requests');
});

test('chunked answers are decoded and framed again, trailers consumed, the connection reused', async () => {
  conns = 0;
  await new Promise((r) => setTimeout(r, 2500)); // the pool's idle connections from before are gone
  handler = (req, sock) => {
    sock.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n');
    setTimeout(() => sock.write('6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n'), 20);
  };
  for (let i = 0; i < 3; i++) {
    const r = await request('GET');
    assert.equal(r.status, 200);
    assert.equal(r.body, 'hello world');
    assert.ok(r.complete);
  }
  assert.equal(conns, 1);
});

test('HEAD, 204 and 304 answers have no body and leave the connection reusable; 1xx answers are skipped', async () => {
  conns = 0;
  await new Promise((r) => setTimeout(r, 2500));
  handler = (req, sock) => {
    if (req.method === 'HEAD') sock.write('HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n');
    else if (req.path === '/204') sock.write('HTTP/1.1 204 No Content\r\n\r\n');
    else if (req.path === '/304') sock.write('HTTP/1.1 304 Not Modified\r\netag: "a"\r\n\r\n');
    else sock.write('HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
  };
  const h = await request('HEAD');
  assert.equal(h.status, 200);
  assert.equal(h.headers['content-length'], '5000');
  assert.equal(h.body, '');
  assert.equal((await request('GET', '/204')).status, 204);
  const n = await request('GET', '/304');
  assert.equal(n.status, 304);
  assert.equal(n.headers.etag, '"a"');
  const r = await request('GET', '/hints');
  assert.equal(r.status, 200);
  assert.equal(r.body, 'ok');
  assert.equal(conns, 1);
});

test('a close-delimited answer arrives whole; bytes past a framed body are dropped and the connection is not reused', async () => {
  handler = (req, sock, conn) => {
    if (req.path === '/close') {
      sock.end(`HTTP/1.1 200 OK\r\nconnection: close\r\nx-conn: ${conn.n}\r\n\r\nall of it`);
    } else {
      sock.write(`HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-conn: ${conn.n}\r\n\r\nhelloEXTRA`);
    }
  };
  const c = await request('GET', '/close');
  assert.equal(c.body, 'all of it');
  assert.ok(c.complete);
  const e1 = await request('GET', '/extra');
  const e2 = await request('GET', '/extra');
  assert.equal(e1.body, 'hello');
  assert.equal(e2.body, 'hello');
  const used = [c, e1, e2].map((r) => r.headers['x-conn']);
  assert.equal(new Set(used).size, 3, `neither connection went back to the pool (connections ${used})`);
});

test('an answer cut short reaches the client as an error, never as a complete body', async () => {
  handler = (req, sock) => {
    sock.write('HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly this');
    setTimeout(() => sock.destroy(), 50);
  };
  await assert.rejects(request('GET', '/short'));
  handler = (req, sock) => {
    sock.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n');
    setTimeout(() => sock.destroy(), 50);
  };
  await assert.rejects(request('GET', '/short-chunked'));
});

test('a pooled connection the node closes under a request: GET is retried on a new one, POST gets 502', async () => {
  handler = (req, sock, conn) => {
    if (conn.reqs === 2) sock.destroy(); // closed as the second request arrives, unanswered
    else ok(sock, 'fine');
  };
  conns = 0;
  assert.equal((await request('GET', '/a')).body, 'fine');
  const r = await request('GET', '/b');
  assert.equal(r.status, 200);
  assert.equal(r.body, 'fine');
  assert.equal(conns, 2, 'the retry used a new connection');
  assert.equal((await request('GET', '/c')).body, 'fine'); // conn 2's second request: closed, retried
  const p = await request('POST', '/d', { body: 'x' });
  assert.equal(p.status, 502, 'a POST is not sent twice');
  assert.equal(JSON.parse(p.body).code, 502);
});

test('malformed and oversized answer heads get 502 JSON', async () => {
  handler = (req, sock) => sock.write('NOT HTTP AT ALL\r\n\r\n');
  const a = await request('GET', '/bad');
  assert.equal(a.status, 502);
  assert.deepEqual(JSON.parse(a.body), { code: 502, message: "The sandbox's node could not be reached" });
  handler = (req, sock) => sock.write(`HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(70000)}\r\n`);
  assert.equal((await request('GET', '/big-head')).status, 502);
  handler = (req, sock) => sock.write('HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello');
  assert.equal((await request('GET', '/two-lengths')).status, 502);
});

test('idle pooled connections are closed by the gateway after about 2 s', async () => {
  const seen = [];
  handler = (req, sock, conn) => { seen.push(conn); ok(sock, 'x'); };
  await request('GET', '/idle');
  const conn = seen[0];
  assert.equal(conn.closed, false);
  const t0 = Date.now();
  while (!conn.closed && Date.now() - t0 < 6000) await new Promise((r) => setTimeout(r, 100));
  assert.ok(conn.closed, 'the gateway closed its idle connection');
  assert.ok(Date.now() - t0 >= 1000, 'not before the idle bound');
});

test('route cache: concurrent misses for one sandbox share one catalog look-up per worker', async () => {
  handler = (req, sock) => ok(sock, 'x');
  const evals = () => Number((s.redis.cli('INFO', 'commandstats').match(/cmdstat_eval:calls=(\d+)/) || [0, 0])[1]);
  await new Promise((r) => setTimeout(r, 1300)); // every cached entry of the sandbox has expired
  const e0 = evals();
  const one = () => new Promise((resolve, reject) => { // each on its own connection
    http.get({ host: '127.0.0.1', port: s.gw.port, path: '/burst', agent: false, headers: { host: HOST } }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
  const rs = await Promise.all(Array.from({ length: 40 }, one));
  for (const r of rs) assert.deepEqual(r, { status: 200, body: 'x' });
  const n = evals() - e0;
  assert.ok(n >= 1 && n <= 2, `${n} look-ups for 40 concurrent requests (one per worker at most)`);
});

test('route cache: a sandbox in steady use is refreshed in the background, never a miss, and follows a catalog change', async () => {
  // a second node proxy the catalog will switch the sandbox to
  const other = net.createServer((sock) => {
    sock.on('error', () => {});
    sock.on('data', (d) => { if (d.includes('\r\n\r\n')) ok(sock, 'other'); });
  });
  await new Promise((r) => other.listen(0, '127.0.0.1', r));
  try {
    handler = (req, sock) => ok(sock, 'first');
    const misses = async () => {
      const m = await (await fetch(`${s.gw.url}/metrics`, { headers: { host: 'api.sandgate.test' } })).text();
      return Number(m.match(/^sandgate_route_cache_misses_total (\d+)$/m)[1]);
    };
    assert.equal((await request('GET', '/warm')).body, 'first');
    const m0 = await misses();
    const t0 = Date.now();
    while (Date.now() - t0 < 3500) { // 3.5 cache lifetimes of steady use on one worker
      assert.equal((await request('GET', '/steady')).body, 'first');
      await new Promise((r) => setTimeout(r, 40));
    }
    assert.equal(await misses() - m0, 0, 'no request missed the cache');

    clearInterval(beat);
    const move = () => s.redis.cli('HSET', '{sg}:node:fakenode', 'proxy', `127.0.0.1:${other.address().port}`,
      'heartbeat_ms', String(Date.now()));
    move();
    beat = setInterval(move, 1000);
    const t1 = Date.now();
    let body;
    while (Date.now() - t1 < 3000 && (body = (await request('GET', '/moved')).body) !== 'other')
      await new Promise((r) => setTimeout(r, 40));
    assert.equal(body, 'other', 'the refreshed entry points at the new node proxy');
    assert.ok(Date.now() - t1 < 1600, `followed within a cache lifetime (${Date.now() - t1} ms)`);
  } finally {
    other.close();
  }
});
