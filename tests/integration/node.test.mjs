// Node agent integration tests (issue 4): real runc sandboxes from the `base` template, on a node
// agent running in its own network namespace, with a private Redis. Needs root; see
// lib/node-harness.mjs for what is created and how it is removed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, writeFileSync, unlinkSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import {
  World, canRun, api, viaProxy, createBody, execIn, execInStatus, probeScript, sh, trySh,
  waitFor, sleep, mountsUnder, TOKEN, containerOf, envdRun, templatesSrc,
} from './lib/node-harness.mjs';

const why = canRun();
let w, node, target;

before(async () => {
  if (why) return;
  w = new World();
  node = await w.makeNode('n1');
  await w.startRedis();
  // An "internet" target: a namespace behind the node's namespace with an HTTP server.
  const tns = `sgt${w.tag}x`;
  sh('ip', ['netns', 'add', tns]);
  w.cleanups.push(() => trySh('ip', ['netns', 'del', tns]));
  const a = `sgt${w.tag}xa`, b = `sgt${w.tag}xb`;
  sh('ip', ['link', 'add', a, 'netns', node.ns, 'type', 'veth', 'peer', 'name', b, 'netns', tns]);
  const tb = `10.${w.b}.200`;
  sh('ip', ['-n', node.ns, 'addr', 'add', `${tb}.1/30`, 'dev', a]);
  sh('ip', ['-n', node.ns, 'link', 'set', a, 'up']);
  sh('ip', ['-n', tns, 'addr', 'add', `${tb}.2/30`, 'dev', b]);
  sh('ip', ['-n', tns, 'link', 'set', b, 'up']);
  sh('ip', ['-n', tns, 'link', 'set', 'lo', 'up']);
  const srv = spawn('nsenter', [`--net=/var/run/netns/${tns}`, 'python3', '-m', 'http.server',
    '--bind', `${tb}.2`, '8080'], { stdio: 'ignore' });
  w.cleanups.push(() => srv.kill('SIGKILL'));
  target = { ip: `${tb}.2`, port: 8080 };
  await w.startNode(node);
});

after(async () => { if (w) await w.close(); });

const opts = { skip: why || false, timeout: 120000 };

function execFileSyncUser(n, id, args) {
  return sh('runc', ['--root', join(n.state, 'runc'), 'exec', '--user', '1000:1000', '--cwd', '/home/user', containerOf(n, id), ...args]);
}

async function create(over) {
  const body = createBody(over);
  const r = await api(node, 'POST', '/v1/sandboxes', body);
  assert.equal(r.status, 201, r.text);
  return { id: body.sandboxID, addr: r.json.address, res: r.json };
}
async function remove(id) {
  const r = await api(node, 'DELETE', `/v1/sandboxes/${id}`);
  assert.equal(r.status, 204, r.text);
}

test('node API: health, token, validation, info', opts, async () => {
  assert.equal((await fetch(`${node.api}/health`)).status, 204);
  let r = await api(node, 'GET', '/v1/info', undefined, 'wrong-token-wrong-token');
  assert.equal(r.status, 401);
  assert.deepEqual(r.json, { code: 401, message: 'invalid node token' });
  r = await api(node, 'GET', '/v1/info');
  assert.equal(r.status, 200);
  assert.equal(r.json.nodeID, 'n1');
  assert.deepEqual(r.json.templates, ['base']);
  assert.deepEqual(r.json.labels, { zone: 'test' });
  assert.equal(r.json.capacity.vcpu, 256);
  r = await api(node, 'POST', '/v1/sandboxes', { ...createBody(), sandboxID: 'BAD_ID' });
  assert.equal(r.status, 400);
  assert.equal(r.json.code, 400);
  r = await api(node, 'POST', '/v1/sandboxes', createBody({ templateID: 'nope' }));
  assert.equal(r.status, 404);
  assert.equal(r.json.message, 'template "nope" not found on this node');
  r = await api(node, 'POST', '/v1/sandboxes', createBody({ vcpu: 300 }));
  assert.equal(r.status, 400); // vcpu > 64 is invalid before capacity is looked at
  r = await api(node, 'POST', '/v1/sandboxes', createBody({ memoryMB: 20000 }));
  assert.equal(r.status, 429);
  assert.match(r.json.message, /^node has no room: /);
  r = await api(node, 'GET', '/v1/sandboxes/doesnotexist');
  assert.equal(r.status, 404);
  r = await api(node, 'DELETE', '/v1/sandboxes/doesnotexist');
  assert.equal(r.status, 404);
  // A template folder added while the agent runs is found by its periodic rescan (thread pool).
  const extra = join(node.dir, 'templates', 'extra');
  symlinkSync(join(templatesSrc, 'base'), extra);
  try {
    await waitFor(async () => (await api(node, 'GET', '/v1/info')).json.templates.includes('extra'), 12000);
  } finally { unlinkSync(extra); }
  await waitFor(async () => !(await api(node, 'GET', '/v1/info')).json.templates.includes('extra'), 12000);
});

// A deleted sandbox's processes die at once, so its CPU and memory are free for the next create
// even while its teardown (runc delete, veth, files) still waits for a slot.
test('delete frees the sandbox\'s capacity at once', opts, async () => {
  const big = { memoryMB: 12000 };
  const a = await create(big);
  let r = await api(node, 'POST', '/v1/sandboxes', createBody(big));
  assert.equal(r.status, 429, r.text);
  await remove(a.id);
  const b = await create(big); // right after the 204: before the teardown could have finished
  await remove(b.id);
});

test('drain refuses creates with 429, undrain accepts again', opts, async () => {
  assert.equal((await api(node, 'POST', '/v1/drain')).status, 204);
  const r = await api(node, 'POST', '/v1/sandboxes', createBody());
  assert.equal(r.status, 429);
  assert.equal((await api(node, 'GET', '/v1/info')).json.status, 'draining');
  assert.equal((await api(node, 'POST', '/v1/undrain')).status, 204);
  const { id } = await create();
  await remove(id);
});

test('sandbox: own hostname, processes, rootfs, env; token file consumed', opts, async () => {
  const { id, addr, res } = await create({ envdAccessToken: 'secret-envd-token', envVars: { FOO: 'bar' } });
  try {
    assert.match(addr, /^10\./);
    assert.ok(res.envdVersion);
    assert.equal(execIn(node, id, ['hostname']).trim(), id);
    assert.equal(execIn(node, id, ['cat', '/etc/hostname']).trim(), id);
    assert.match(execIn(node, id, ['cat', '/etc/hosts']), new RegExp(`\\s${id}\\n`));
    // Own PID namespace: envd is PID 1 and the only other process is this ps.
    const ps = execIn(node, id, ['ps', '-eo', 'pid,comm', '--no-headers']).trim().split('\n');
    assert.ok(ps.length <= 4, ps.join('|'));
    assert.equal(ps[0].trim().split(/\s+/)[0], '1');
    assert.ok(!ps.some((l) => /sandgate-node|redis|node$/.test(l)), ps.join('|'));
    // Own rootfs: a file made on the host is not visible; the template's os-release is.
    const marker = `/tmp/sg-host-marker-${id}`;
    writeFileSync(marker, 'host');
    try {
      assert.notEqual(execInStatus(node, id, ['test', '-e', marker]).code, 0);
    } finally { unlinkSync(marker); }
    assert.match(execIn(node, id, ['cat', '/etc/os-release']), /bookworm/);
    // The template stays untouched by writes inside the sandbox.
    execIn(node, id, ['sh', '-c', 'echo hi > /etc/sg-written']);
    assert.ok(!existsSync('/var/lib/sandgate-cache/templates/base/rootfs/etc/sg-written'));
    // The request's env is envd's (runc exec only sees the container's defaults).
    assert.equal((await envdRun(node, id, 'echo $FOO', 'secret-envd-token')).stdout, 'bar\n');
    // The envd token reached envd (it read the file) and is in nobody's environment.
    const seen = await viaProxy(node, id, 49983, '/token-seen');
    if (seen.status === 200) assert.equal(seen.text, 'yes'); // only the test double has this route
    assert.notEqual(execInStatus(node, id, ['test', '-e', '/run/sandgate/boot.json']).code, 0);
    assert.doesNotMatch(execIn(node, id, ['sh', '-c', 'cat /proc/1/environ | tr "\\0" "\\n"; env']),
      /secret-envd-token/);
    // user (uid 1000) has passwordless sudo (so no no_new_privileges); no namespaces, raw
    // sockets or mounts for anyone (seccomp, capabilities).
    assert.equal(execFileSyncUser(node, id, ['id', '-u']).trim(), '1000');
    assert.equal(execFileSyncUser(node, id, ['sudo', '-n', 'id', '-u']).trim(), '0');
    assert.notEqual(execInStatus(node, id, ['unshare', '-U', 'true']).code, 0);
    assert.notEqual(execInStatus(node, id, ['python3', '-c',
      'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)']).code, 0);
    assert.notEqual(execInStatus(node, id, ['mount', '-t', 'tmpfs', 'x', '/mnt']).code, 0);
    assert.match(execIn(node, id, ['grep', 'Seccomp:', '/proc/1/status']), /Seccomp:\s+2/);
    const one = await api(node, 'GET', `/v1/sandboxes/${id}`);
    assert.equal(one.status, 200);
    assert.equal(one.json.state, 'running');
    assert.equal(one.json.address, addr);
    const m = await api(node, 'GET', `/v1/sandboxes/${id}/metrics`);
    assert.equal(m.status, 200);
    assert.equal(m.json.memTotal, 256 * 1024 * 1024);
    assert.ok(m.json.memUsed > 0);
    // disk: the upper layer's size (walked on the agent's thread pool) grows with a 2 MB file
    execIn(node, id, ['sh', '-c', 'head -c 2000000 /dev/urandom > /home/user/blob']);
    const m2 = await api(node, 'GET', `/v1/sandboxes/${id}/metrics`);
    assert.ok(m2.json.diskUsed >= m.json.diskUsed + 1900000, `${m.json.diskUsed} -> ${m2.json.diskUsed}`);
    assert.ok(m2.json.diskTotal > 0);
  } finally { await remove(id); }
});

// The warm pool: containers started ahead (envd waiting for its POST /init), nothing of a request
// in them. A create takes one, and everything request-specific must still be the request's.
async function warmReady() {
  return (await api(node, 'GET', '/v1/info')).json.warmPool.ready;
}
test('warm pool: a create takes a pre-created container with the request\'s name, limits, env, token', opts, async () => {
  await waitFor(async () => (await warmReady()) === 4, 20000);
  const { id } = await create({ vcpu: 2, memoryMB: 300, envVars: { WARM: 'yes', PATH: '/custom:/usr/bin:/bin' },
    envdAccessToken: 'warm-envd-token' });
  try {
    const cid = containerOf(node, id);
    assert.match(cid, /^w-[0-9a-f]+$/);
    assert.match(sh('runc', ['--root', join(node.state, 'runc'), 'state', cid]), /"status":\s*"running"/);
    assert.equal(execIn(node, id, ['hostname']).trim(), id);
    assert.equal(execIn(node, id, ['cat', '/etc/hostname']).trim(), id);
    assert.match(execIn(node, id, ['cat', '/etc/hosts']), new RegExp(`\\s${id}\\n`));
    // envd's environment (the default of every process it starts) is the request's, PATH
    // overridden; the token is in nobody's environment, the boot file is gone, and envd took the
    // token (without it: 401)
    assert.equal((await envdRun(node, id, 'true')).error, 'unauthenticated');
    const run = await envdRun(node, id, 'echo "$WARM|$PATH"', 'warm-envd-token');
    assert.equal(run.error, null, run.stdout);
    assert.equal(run.stdout, 'yes|/custom:/usr/bin:/bin\n');
    const pid = Number(sh('runc', ['--root', join(node.state, 'runc'), 'state', cid]).match(/"pid":\s*(\d+)/)[1]);
    assert.match(readFileSync(`/proc/${pid}/environ`, 'utf8'), /PATH=/);
    assert.doesNotMatch(readFileSync(`/proc/${pid}/environ`, 'utf8'), /warm-envd-token/);
    assert.notEqual(execInStatus(node, id, ['test', '-e', '/run/sandgate/boot.json']).code, 0);
    // limits are the request's, not the pool's defaults
    const cg = (h, f) => readFileSync(`/sys/fs/cgroup/${h}/sandgate/n1/${cid}/${f}`, 'utf8').trim();
    assert.equal(cg('memory', 'memory.limit_in_bytes'), String(300 * 1024 * 1024));
    assert.equal(cg('cpu', 'cpu.cfs_quota_us'), '200000');
    // the pool refills once no create is in flight
    await waitFor(async () => (await warmReady()) === 4, 20000);
  } finally { await remove(id); }
});

test('network isolation: node API, proxy, Redis, other sandbox, metadata; internet flag', opts, async () => {
  const a = await create({ allowInternetAccess: false });
  const b = await create({ allowInternetAccess: true });
  try {
    const bridgeIp = sh('ip', ['-n', node.ns, '-4', '-o', 'addr', 'show', 'dev', node.bridge])
      .match(/inet (\S+)\//)[1];
    const targets = [[bridgeIp, 7070], [bridgeIp, 7071], [node.nodeIp, 7070], [node.nodeIp, 7071],
      [node.hostIp, w.redisPort], [b.addr, 49983], ['169.254.169.254', 80], [target.ip, target.port]];
    const outA = execIn(node, a.id, ['python3', '-c', probeScript(targets)]);
    for (const [h, p] of targets) assert.match(outA, new RegExp(`${h}:${p} closed`), outA);
    const outB = execIn(node, b.id, ['python3', '-c',
      probeScript([[a.addr, 49983], [node.hostIp, w.redisPort], [bridgeIp, 7070], [target.ip, target.port]])]);
    assert.match(outB, new RegExp(`${a.addr}:49983 closed`), outB);
    assert.match(outB, new RegExp(`${node.hostIp}:${w.redisPort} closed`), outB);
    assert.match(outB, new RegExp(`${bridgeIp}:7070 closed`), outB);
    // With internet access the same target answers: the checks above can fail.
    assert.match(outB, new RegExp(`${target.ip}:${target.port} open`), outB);
    // The node itself reaches both sandboxes (that is how the proxy works).
    assert.equal((await viaProxy(node, a.id, 49983, '/health')).status, 204);
  } finally { await remove(a.id); await remove(b.id); }
});

test('memory limit: an allocation beyond memoryMB is killed', opts, async () => {
  const { id } = await create({ memoryMB: 128 });
  try {
    const small = execInStatus(node, id, ['python3', '-c', 'b=bytearray(40*1024*1024); print(len(b))']);
    assert.equal(small.code, 0, small.out);
    const big = execInStatus(node, id, ['python3', '-c', 'b=bytearray(400*1024*1024); print(len(b))']);
    assert.notEqual(big.code, 0, big.out);
  } finally { await remove(id); }
});

test('node proxy: port 8000 server reachable, 8001 502, unknown 404, token 401', opts, async () => {
  const { id, addr } = await create();
  try {
    execIn(node, id, ['sh', '-c', 'mkdir -p /srv && echo hello-from-8000 > /srv/index.html']);
    // Detached: stdio must not be a pipe the server would hold open.
    sh('runc', ['--root', join(node.state, 'runc'), 'exec', '-d', containerOf(node, id),
      'python3', '-m', 'http.server', '8000', '--directory', '/srv'], { stdio: 'ignore' });
    await waitFor(async () => (await viaProxy(node, id, 8000, '/index.html')).status === 200);
    const ok = await viaProxy(node, id, 8000, '/index.html');
    assert.equal(ok.text, 'hello-from-8000\n');
    // Keep-alive: two framed requests written at once (the second asks to close) get two
    // responses on the one connection; only the second says "Connection: close", then the node
    // closes. (The sandbox's HTTP/1.0 server is answered as HTTP/1.1 by the node.)
    const one = (conn) => `GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: ${conn}\r\n` +
      `X-Sandgate-Node-Token: ${TOKEN}\r\nX-Sandgate-Sandbox-Id: ${id}\r\nX-Sandgate-Sandbox-Port: 8000\r\n\r\n`;
    const raw = await new Promise((resolve, reject) => {
      const sock = net.connect(7071, node.nodeIp);
      let buf = '';
      sock.setEncoding('latin1');
      sock.on('data', (d) => { buf += d; });
      sock.on('end', () => resolve(buf));
      sock.on('error', reject);
      sock.write(one('keep-alive') + one('close'));
    });
    const responses = raw.split(/(?=HTTP\/1\.[01] 200 )/);
    assert.equal(responses.length, 2, raw);
    for (const r of responses) assert.ok(r.endsWith('\r\n\r\nhello-from-8000\n'), r);
    assert.match(responses[0], /^HTTP\/1\.1 200 /);
    assert.doesNotMatch(responses[0], /\r\nConnection:/i);
    assert.match(responses[1], /\r\nConnection: close\r\n/);
    // The node lets the sandbox close each upstream connection first, so TIME-WAIT stays on the
    // sandbox's side: 20 requests (kept-alive client connection) leave none on the node's.
    const timeWait = () => sh('ip', ['netns', 'exec', node.ns, 'ss', '-Htan', 'state', 'time-wait',
      'dst', `${addr}:8000`]).split('\n').filter(Boolean).length;
    const tw0 = timeWait();
    for (let i = 0; i < 20; i++) assert.equal((await viaProxy(node, id, 8000, '/index.html')).status, 200);
    assert.equal(timeWait() - tw0, 0);
    const closed = await viaProxy(node, id, 8001, '/');
    assert.equal(closed.status, 502);
    assert.deepEqual(JSON.parse(closed.text),
      { code: 502, message: 'The sandbox is running but port 8001 is not open' });
    const unknown = await viaProxy(node, 'nosuchsandbox', 8000, '/');
    assert.equal(unknown.status, 404);
    assert.deepEqual(JSON.parse(unknown.text), { code: 404, message: 'sandbox "nosuchsandbox" not found' });
    const bad = await fetch(`${node.proxy}/`, { headers: { 'X-Sandgate-Node-Token': 'x'.repeat(32),
      'X-Sandgate-Sandbox-Id': id, 'X-Sandgate-Sandbox-Port': '8000' } });
    assert.equal(bad.status, 401);
    const noport = await fetch(`${node.proxy}/`, { headers: { 'X-Sandgate-Node-Token': TOKEN,
      'X-Sandgate-Sandbox-Id': id } });
    assert.equal(noport.status, 400);
  } finally { await remove(id); }
});

// An HTTP/1.1 keep-alive server that answers each request with the client's port: which
// connection of the node's the request came on.
const PORT_SERVER = `import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = str(self.client_address[1]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(__import__("sys").argv[1])), H).serve_forever()
`;

test('node proxy: a keep-alive client reuses one sandbox connection per sandbox port; switching ports or idling resets it', opts, async () => {
  const { id, addr } = await create();
  try {
    execIn(node, id, ['sh', '-c', `cat > /tmp/ps.py <<'PYEOF'\n${PORT_SERVER}PYEOF`]);
    for (const p of [8002, 8003])
      sh('runc', ['--root', join(node.state, 'runc'), 'exec', '-d', containerOf(node, id), 'python3', '/tmp/ps.py', String(p)],
        { stdio: 'ignore' });
    for (const p of [8002, 8003]) await waitFor(async () => (await viaProxy(node, id, p, '/')).status === 200);
    // one client connection, requests one after another
    const sock = net.connect(7071, node.nodeIp);
    sock.setEncoding('latin1');
    let buf = '';
    const waiters = [];
    sock.on('data', (d) => {
      buf += d;
      const m = buf.match(/^HTTP\/1\.1 200 [^]*?\r\n\r\n(\d+)/);
      if (m && waiters.length) { buf = buf.slice(m[0].length); waiters.shift()(m[1]); }
    });
    const get = (port) => new Promise((resolve) => {
      waiters.push(resolve);
      sock.write(`GET / HTTP/1.1\r\nHost: x\r\nX-Sandgate-Node-Token: ${TOKEN}\r\nX-Sandgate-Sandbox-Id: ${id}\r\n` +
        `X-Sandgate-Sandbox-Port: ${port}\r\n\r\n`);
    });
    const timeWait = () => sh('ip', ['netns', 'exec', node.ns, 'ss', '-Htan', 'state', 'time-wait',
      'dst', addr]).split('\n').filter(Boolean).length;
    const tw0 = timeWait();
    const a = [await get(8002), await get(8002), await get(8002)];
    assert.equal(new Set(a).size, 1, `three requests, one sandbox connection (${a})`);
    const b = await get(8003);
    const c = await get(8002);
    assert.notEqual(c, a[0], 'after a request to another port, a new connection');
    assert.equal(await get(8002), c);
    await new Promise((r) => setTimeout(r, 2300));
    assert.notEqual(await get(8002), c, 'a connection idle past 2 s is not reused');
    assert.ok(b);
    assert.equal(timeWait() - tw0, 0, 'connections the node dropped were reset: no TIME-WAIT on the node');
    sock.destroy();
  } finally { await remove(id); }
});

const BIG_SERVER = `import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        n = 200 * 1024 * 1024
        self.send_response(200); self.send_header("Content-Length", str(n)); self.end_headers()
        chunk = b"x" * (1024 * 1024)
        for _ in range(200): self.wfile.write(chunk)
    def log_message(self, *a): pass
http.server.HTTPServer(("0.0.0.0", 8000), H).serve_forever()
`;
// Answers an Upgrade with 101, then echoes every byte: a stand-in for a WebSocket server.
const UPGRADE_ECHO = `import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8002)); s.listen(5)
while True:
    c, _ = s.accept(); buf = b""
    while b"\\r\\n\\r\\n" not in buf:
        d = c.recv(4096)
        if not d: break
        buf += d
    ok = b"upgrade: websocket" in buf.lower()
    if not buf: c.close(); continue  # a port probe
    c.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n" if ok else b"HTTP/1.1 400 Bad\\r\\nContent-Length: 0\\r\\n\\r\\n")
    while ok:
        d = c.recv(4096)
        if not d: break
        c.sendall(d)
    c.close()
`;

function rssKiB(pid) {
  return Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);
}

function startServer(id, file, code, port) {
  execIn(node, id, ['sh', '-c', `mkdir -p /srv && cat > /srv/${file}`], { input: code, stdio: ['pipe', 'pipe', 'pipe'] });
  sh('runc', ['--root', join(node.state, 'runc'), 'exec', '-d', containerOf(node, id), 'python3', `/srv/${file}`], { stdio: 'ignore' });
  return waitFor(() => /open/.test(execIn(node, id, ['python3', '-c', probeScript([['127.0.0.1', port]])])));
}

test('node proxy: a client that does not read does not grow the agent (backpressure)', opts, async () => {
  const { id } = await create({ memoryMB: 512 });
  try {
    await startServer(id, 'big.py', BIG_SERVER, 8000);
    const before = rssKiB(node.proc.pid);
    const sock = net.connect(7071, node.nodeIp);
    await new Promise((r) => sock.on('connect', r));
    sock.pause(); // read nothing: the relay must stop reading the sandbox
    // (Connection: close: the end of the connection marks the end of the response here)
    sock.write(`GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Sandgate-Node-Token: ${TOKEN}\r\n` +
      `X-Sandgate-Sandbox-Id: ${id}\r\nX-Sandgate-Sandbox-Port: 8000\r\n\r\n`);
    await sleep(3000);
    const stalled = rssKiB(node.proc.pid);
    let got = 0;
    sock.on('data', (d) => { got += d.length; });
    sock.resume();
    await new Promise((r) => sock.on('end', r));
    const after = rssKiB(node.proc.pid);
    assert.ok(got > 200 * 1024 * 1024, String(got)); // the whole body (plus the head) arrived
    // A buffered 200 MiB response would show here; the relay holds two 64 KiB buffers.
    assert.ok(stalled - before < 16 * 1024, `RSS ${before} -> ${stalled} kB while stalled`);
    assert.ok(after - before < 16 * 1024, `RSS ${before} -> ${after} kB after`);
  } finally { await remove(id); }
});

test('node proxy: Upgrade requests are tunnelled both ways', opts, async () => {
  const { id } = await create();
  try {
    await startServer(id, 'echo.py', UPGRADE_ECHO, 8002);
    const sock = net.connect(7071, node.nodeIp);
    let buf = '';
    sock.setEncoding('latin1');
    sock.on('data', (d) => { buf += d; });
    sock.write(`GET /ws HTTP/1.1\r\nHost: x\r\nX-Sandgate-Node-Token: ${TOKEN}\r\n` +
      `X-Sandgate-Sandbox-Id: ${id}\r\nX-Sandgate-Sandbox-Port: 8002\r\n` +
      `Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n`);
    await waitFor(() => buf.includes('\r\n\r\n'));
    assert.match(buf, /^HTTP\/1\.1 101 /);
    buf = '';
    sock.write('ping-1');
    await waitFor(() => buf === 'ping-1');
    sock.write('ping-2');
    await waitFor(() => buf === 'ping-1ping-2');
    sock.destroy();
  } finally { await remove(id); }
});

test('redis: registration fields, survives Redis outage, re-registers', opts, async () => {
  const { id } = await create();
  try {
    const key = '{sg}:node:n1';
    await waitFor(() => JSON.parse(w.redisCli('HGET', key, 'sandboxes') || '[]').includes(id));
    const h = {};
    const flat = w.redisCli('HGETALL', key).split('\n');
    for (let i = 0; i + 1 < flat.length; i += 2) h[flat[i]] = flat[i + 1];
    for (const f of ['id', 'api', 'proxy', 'status', 'cap_vcpu', 'cap_mem_mb', 'cap_sandboxes',
      'alloc_vcpu', 'alloc_mem_mb', 'alloc_sandboxes', 'usage_cpu_pct', 'usage_mem_mb', 'templates',
      'labels', 'agent_version', 'envd_version', 'heartbeat_ms', 'sandboxes']) assert.ok(f in h, f);
    assert.equal(h.api, `${node.nodeIp}:7070`);
    assert.equal(h.templates, 'base');
    assert.deepEqual(JSON.parse(h.labels), { zone: 'test' });
    const ttl = Number(w.redisCli('PTTL', key));
    assert.ok(ttl > 0 && ttl <= 60000, String(ttl));
    assert.ok(w.redisCli('ZSCORE', '{sg}:nodes', 'n1'));
    // Redis goes away: the sandbox keeps serving.
    w.redis.kill('SIGKILL');
    await sleep(600);
    assert.equal((await viaProxy(node, id, 49983, '/health')).status, 204);
    assert.equal((await api(node, 'GET', `/v1/sandboxes/${id}`)).status, 200);
    await w.startRedis0();
    await waitFor(() => w.redisCli('HGET', key, 'id') === 'n1', 15000);
  } finally { await remove(id); }
});

test('expiry: the node kills a sandbox at endAtMs + grace on its own; PATCH extends', opts, async () => {
  const a = await create({ endAtMs: Date.now() + 300 });
  const b = await create({ endAtMs: Date.now() + 300 });
  assert.equal((await api(node, 'PATCH', `/v1/sandboxes/${b.id}`, { endAtMs: Date.now() + 3600_000 })).status, 204);
  assert.equal((await api(node, 'PATCH', `/v1/sandboxes/${b.id}`, { endAtMs: 'x' })).status, 400);
  await waitFor(async () => (await api(node, 'GET', `/v1/sandboxes/${a.id}`)).status === 404, 15000);
  await sleep(500);
  assert.equal((await api(node, 'GET', `/v1/sandboxes/${b.id}`)).status, 200);
  // PATCHes at once: each answered 204 once written; meta.json (what a restarted agent reads)
  // ends with the value the agent holds (the last to arrive), and a delete right after a PATCH
  // leaves no file behind.
  const base = Date.now() + 7200_000;
  const codes = await Promise.all([...Array(10)].map((_, i) =>
    api(node, 'PATCH', `/v1/sandboxes/${b.id}`, { endAtMs: base + i }).then((r) => r.status)));
  assert.deepEqual(codes, Array(10).fill(204));
  const meta = JSON.parse(readFileSync(join(node.state, 'sandboxes', containerOf(node, b.id), 'meta.json'), 'utf8'));
  assert.ok(meta.endAtMs >= base && meta.endAtMs <= base + 9, String(meta.endAtMs));
  assert.equal((await api(node, 'GET', `/v1/sandboxes/${b.id}`)).json.endAtMs, meta.endAtMs);
  const dir = join(node.state, 'sandboxes', containerOf(node, b.id));
  void api(node, 'PATCH', `/v1/sandboxes/${b.id}`, { endAtMs: base + 10 });
  await remove(b.id);
  await waitFor(() => !existsSync(dir), 15000);
});

test('restart: SIGKILL the agent, start it again: sandboxes still answer, accounting intact', opts, async () => {
  const a = await create({ vcpu: 2, memoryMB: 300 });
  const b = await create({ allowInternetAccess: true });
  try {
    // Only a and b: an earlier test's teardown still running would be counted before, not after.
    await waitFor(async () => (await api(node, 'GET', '/v1/info')).json.allocated.sandboxes === 2, 15000);
    const before = (await api(node, 'GET', '/v1/info')).json.allocated;
    await w.killNode(node, 'SIGKILL');
    // Sandboxes run on without the agent.
    const pid = Number(sh('runc', ['--root', join(node.state, 'runc'), 'state', containerOf(node, a.id)]).match(/"pid":\s*(\d+)/)[1]);
    assert.ok(existsSync(`/proc/${pid}`));
    await w.startNode(node);
    const after = (await api(node, 'GET', '/v1/info')).json.allocated;
    assert.deepEqual(after, before);
    const list = (await api(node, 'GET', '/v1/sandboxes')).json.sandboxes.map((s) => s.sandboxID);
    assert.ok(list.includes(a.id) && list.includes(b.id), list.join(','));
    assert.equal((await viaProxy(node, a.id, 49983, '/health')).status, 204);
    // Egress rules were rebuilt for the rediscovered sandbox with internet access.
    const out = execIn(node, b.id, ['python3', '-c', probeScript([[target.ip, target.port]])]);
    assert.match(out, /open/);
    // A new sandbox does not get a rediscovered one's address.
    const c = await create();
    assert.ok(c.addr !== a.addr && c.addr !== b.addr);
    await remove(c.id);
  } finally { await remove(a.id); await remove(b.id); }
});

test('create/delete cycles leave no mounts, veths, cgroups, processes or files', { ...opts, timeout: 3600_000 }, async () => {
  const cycles = Number(process.env.SG_NODE_CYCLES || 20);
  for (let i = 0; i < cycles; i++) {
    const { id } = await create({ allowInternetAccess: i % 2 === 0 });
    await remove(id);
  }
  // Deletion finishes in the background: wait for the files, then check the rest. What may stay
  // is the warm pool (w-<hex> containers, at most warm_pool = 4), each with exactly one folder,
  // overlay mount, runc container, cgroup and veth.
  const sbxDir = join(node.state, 'sandboxes');
  await waitFor(async () => readdirSync(sbxDir).every((d) => d.startsWith('w-')) && (await warmReady()) === 4, 20000);
  const warm = readdirSync(sbxDir).sort();
  assert.ok(warm.length <= 4, warm.join(' '));
  assert.deepEqual(mountsUnder(node.state).sort(), warm.map((w) => join(sbxDir, w, 'rootfs')));
  const links = sh('ip', ['-n', node.ns, '-o', 'link', 'show']);
  assert.equal((links.match(/sgv[0-9a-f]+/g) || []).length, warm.length, links);
  assert.deepEqual(sh('runc', ['--root', join(node.state, 'runc'), 'list', '-q']).trim().split('\n').filter(Boolean).sort(), warm);
  const cg = '/sys/fs/cgroup/memory/sandgate/n1';
  if (existsSync(cg)) {
    assert.deepEqual(readdirSync(cg, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort(), warm);
  }
  const set = sh('nsenter', [`--net=/var/run/netns/${node.ns}`, 'nft', 'list', 'set', 'inet', 'sgnode_n1', 'internet']);
  assert.doesNotMatch(set, /elements/);
  // No processes left behind: nothing runs in the sandbox cgroup tree, no zombies of the agent.
  const zombies = sh('ps', ['-eo', 'ppid,stat', '--no-headers']).split('\n')
    .filter((l) => l.trim().startsWith(String(node.proc.pid) + ' ') && /Z/.test(l));
  assert.deepEqual(zombies, []);
});
