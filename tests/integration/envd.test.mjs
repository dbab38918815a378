// envd driven by the official e2b SDK (2.51.0), unchanged: envd runs as PID 1 of a throw-away
// sandbox made from the base template (see lib/envd-harness.mjs); an API test double answers the
// SDK's create/connect calls and points it at that envd via sandboxUrl.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  Sandbox, CommandExitError, FileNotFoundError, NotFoundError, AuthenticationError, FilesystemEventType, TimeoutError,
} from 'e2b';
import { startEnvd, startApiDouble, envdVersion, testApiKey, sanitized } from './lib/envd-harness.mjs';

describe('envd with the e2b SDK', () => {
  let envd, api, sbx;
  const opts = () => ({ apiKey: testApiKey, apiUrl: api.url, sandboxUrl: envd.url });

  before(async () => {
    envd = await startEnvd({ env: { FOO: 'from-create', SANDGATE_SECRET: 'hidden' } });
    api = await startApiDouble({ envdVersion: envdVersion(), envdAccessToken: envd.token });
    sbx = await Sandbox.create('base', { ...opts(), secure: true });
  });
  after(async () => {
    await api?.close();
    await envd?.stop();
  });

  describe('commands', () => {
    it('captures stdout and stderr separately', async () => {
      const r = await sbx.commands.run('echo hello; echo oops >&2');
      assert.equal(r.exitCode, 0);
      assert.equal(r.stdout, 'hello\n');
      assert.equal(r.stderr, 'oops\n');
    });

    it('turns a non-zero exit into CommandExitError with the code', async () => {
      await assert.rejects(sbx.commands.run('echo partial; exit 3'), (e) => {
        assert.ok(e instanceof CommandExitError, String(e));
        assert.equal(e.exitCode, 3);
        assert.equal(e.stdout, 'partial\n');
        return true;
      });
    });

    it('passes envd environment (minus SANDGATE_*) and per-command envs', async () => {
      const r = await sbx.commands.run('echo "$FOO|$SANDGATE_SECRET|$MINE|$HOME|$USER"', { envs: { MINE: 'x y' } });
      assert.equal(r.stdout, 'from-create||x y|/home/user|user\n');
    });

    it('runs in the home folder by default and in cwd when given', async () => {
      assert.equal((await sbx.commands.run('pwd')).stdout, '/home/user\n');
      assert.equal((await sbx.commands.run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n');
      assert.equal((await sbx.commands.run('pwd', { cwd: 'sub/..' })).stdout, '/home/user\n');
    });

    it('runs as user by default and as root on request, umask 022', async () => {
      assert.equal((await sbx.commands.run('id -un; id -u; umask')).stdout, 'user\n1000\n0022\n');
      assert.equal((await sbx.commands.run('id -un; id -u', { user: 'root' })).stdout, 'root\n0\n');
      // the user cannot read root's home
      await assert.rejects(sbx.commands.run('ls /root'), CommandExitError);
    });

    it('keeps a background process running, lists it, and kills it', async () => {
      const h = await sbx.commands.run('sleep 60', { background: true });
      assert.ok(h.pid > 1);
      const listed = await sbx.commands.list();
      assert.ok(listed.some((p) => p.pid === h.pid && p.args.includes('sleep 60')), JSON.stringify(listed));
      assert.equal(await h.kill(), true);
      await assert.rejects(h.wait(), (e) => e instanceof CommandExitError && e.exitCode !== 0);
      const after = await sbx.commands.list();
      assert.ok(!after.some((p) => p.pid === h.pid));
    });

    it('streams output through callbacks while the process runs', async () => {
      const seen = [];
      const r = await sbx.commands.run('for i in 1 2 3; do echo line$i; sleep 0.05; done', {
        onStdout: (d) => seen.push(d),
      });
      assert.equal(r.stdout, 'line1\nline2\nline3\n');
      assert.equal(seen.join(''), r.stdout);
    });

    it('takes stdin and closes it', async () => {
      const h = await sbx.commands.run('cat; echo done', { background: true, stdin: true });
      await sbx.commands.sendStdin(h.pid, 'abc\n');
      await sbx.commands.sendStdin(h.pid, 'def\n');
      await sbx.commands.closeStdin(h.pid);
      const r = await h.wait();
      assert.equal(r.stdout, 'abc\ndef\ndone\n');
    });

    it('reconnects to a running process', async () => {
      const h = await sbx.commands.run('sleep 0.3; echo late', { background: true });
      const again = await sbx.commands.connect(h.pid);
      const r = await again.wait();
      assert.equal(r.stdout, 'late\n');
    });

    it('ends a command past its timeout with TimeoutError and kills it', async () => {
      await assert.rejects(sbx.commands.run('sleep 7.5', { timeoutMs: 300 }), TimeoutError);
      let left = true;
      for (const end = Date.now() + 5000; left && Date.now() < end;) {
        left = (await sbx.commands.list()).some((p) => p.args.includes('sleep 7.5'));
        if (left) await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(left, false);
    });

    it('reaps orphans: no zombies left behind (envd is PID 1)', async () => {
      // the subshell exits at once; its sleep child is orphaned to PID 1 and exits later
      await sbx.commands.run('(sleep 0.2 &) ; (sleep 0.1 & exec true)');
      assert.equal((await sbx.commands.run('echo $PPID; cat /proc/1/comm')).stdout.split('\n')[1], 'sandgate-envd');
      await new Promise((r) => setTimeout(r, 600));
      const ps = await sbx.commands.run("ps -eo stat=,pid=,comm= | awk '$1 ~ /^Z/'");
      assert.equal(ps.stdout, '');
    });

    it('reports a missing cwd as an error', async () => {
      await assert.rejects(sbx.commands.run('true', { cwd: '/does/not/exist' }));
    });
  });

  describe('pty', () => {
    it('runs an interactive shell in a real terminal, resizes it, and ends on exit', async () => {
      let out = '';
      const dec = new TextDecoder();
      const h = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { out += dec.decode(d); } });
      await sbx.pty.sendInput(h.pid, new TextEncoder().encode('tty; stty size; echo $((6*7))\n'));
      // resize only once the first command ran, so it saw the initial size
      const deadline = Date.now() + 5000;
      while (!/^42\r?$/m.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      await sbx.pty.resize(h.pid, { cols: 100, rows: 30 });
      await sbx.pty.sendInput(h.pid, new TextEncoder().encode('stty size; exit\n'));
      const r = await h.wait();
      assert.equal(r.exitCode, 0);
      assert.match(out, /\/dev\/pts\/\d+/);
      assert.match(out, /24 80/);
      assert.match(out, /42/);
      assert.match(out, /30 100/);
    });
  });

  describe('files', () => {
    it('writes and reads text', async () => {
      const info = await sbx.files.write('notes/hello.txt', 'hello world\n');
      assert.equal(info.path, '/home/user/notes/hello.txt');
      assert.equal(await sbx.files.read('/home/user/notes/hello.txt'), 'hello world\n');
      const st = await sbx.files.getInfo('notes/hello.txt');
      assert.equal(st.type, 'file');
      assert.equal(st.size, 12);
      assert.equal(st.owner, 'user');
      assert.equal(st.permissions, '-rw-r--r--');
      // overwrite is atomic and complete
      await sbx.files.write('notes/hello.txt', 'v2');
      assert.equal(await sbx.files.read('notes/hello.txt'), 'v2');
    });

    it('round-trips 5 MB of binary data', async () => {
      const data = randomBytes(5 * 1024 * 1024);
      await sbx.files.write('/tmp/blob.bin', data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
      const back = await sbx.files.read('/tmp/blob.bin', { format: 'bytes' });
      assert.equal(back.length, data.length);
      assert.ok(Buffer.from(back).equals(data));
      const sum = await sbx.commands.run('sha256sum /tmp/blob.bin | cut -d" " -f1');
      const { createHash } = await import('node:crypto');
      assert.equal(sum.stdout.trim(), createHash('sha256').update(data).digest('hex'));
    });

    it('writes a gzip-encoded octet-stream upload', async () => {
      await sbx.files.write('gz/a.txt', 'compressed body', { gzip: true });
      assert.equal(await sbx.files.read('gz/a.txt'), 'compressed body');
    });

    it('writes several files in one request', async () => {
      const res = await sbx.files.write([
        { path: '/tmp/multi/a.txt', data: 'A' },
        { path: '/tmp/multi/b.txt', data: 'B' },
        { path: 'multi/c.txt', data: 'C' },
      ]);
      assert.deepEqual(res.map((f) => f.path).sort(), ['/home/user/multi/c.txt', '/tmp/multi/a.txt', '/tmp/multi/b.txt']);
      assert.equal(await sbx.files.read('/tmp/multi/b.txt'), 'B');
      assert.equal(await sbx.files.read('multi/c.txt'), 'C');
    });

    it('lists, makes folders, renames and removes', async () => {
      assert.equal(await sbx.files.makeDir('tree/sub'), true);
      assert.equal(await sbx.files.makeDir('tree/sub'), false);
      await sbx.files.write('tree/sub/x.txt', 'x');
      await sbx.files.write('tree/top.txt', 'top');
      const l1 = await sbx.files.list('tree');
      assert.deepEqual(l1.map((e) => `${e.name}:${e.type}`).sort(), ['sub:dir', 'top.txt:file']);
      const l2 = await sbx.files.list('tree', { depth: 2 });
      assert.ok(l2.some((e) => e.path === '/home/user/tree/sub/x.txt'));
      const moved = await sbx.files.rename('tree/top.txt', 'tree/sub/moved.txt');
      assert.equal(moved.path, '/home/user/tree/sub/moved.txt');
      assert.equal(await sbx.files.exists('tree/top.txt'), false);
      assert.equal(await sbx.files.exists('tree/sub/moved.txt'), true);
      await sbx.files.remove('tree');
      assert.equal(await sbx.files.exists('tree'), false);
    });

    // Found by the E2B SDK's own suite (tests/sandbox/files/list.test.ts, info.test.ts).
    it('lists in name order, each folder followed by its contents, as E2B does', async () => {
      const names = ['a1', 'b2', 'c3', 'd4', 'e5', 'f6', 'g7', 'h8'];
      for (const n of names) await sbx.files.makeDir(`ordered/${n}`);
      await sbx.files.write('ordered/a1/z.txt', 'z');
      await sbx.files.write('ordered/a1/y.txt', 'y');
      const l = await sbx.files.list('ordered', { depth: 2 });
      assert.deepEqual(l.map((e) => e.path.slice('/home/user/ordered/'.length)),
        ['a1', 'a1/y.txt', 'a1/z.txt', ...names.slice(1)]);
      await sbx.files.remove('ordered');
    });

    it('reports a symlink target as the resolved absolute path', async () => {
      await sbx.files.write('linked/target.txt', 't');
      await sbx.commands.run('cd linked && ln -s target.txt rel-link && ln -s missing dangling');
      const info = await sbx.files.getInfo('linked/rel-link');
      assert.equal(info.symlinkTarget, '/home/user/linked/target.txt');
      assert.equal(info.type, 'file');
      assert.equal((await sbx.files.getInfo('linked/dangling')).symlinkTarget, 'missing');
      await sbx.files.remove('linked');
    });

    it('raises FileNotFoundError for a missing file', async () => {
      await assert.rejects(sbx.files.read('/nope/missing.txt'), FileNotFoundError);
      await assert.rejects(sbx.files.getInfo('/nope/missing.txt'), FileNotFoundError);
      await assert.rejects(sbx.files.list('/nope'), FileNotFoundError);
      await assert.rejects(sbx.files.rename('/nope/a', '/tmp/b'), NotFoundError);
      await sbx.files.remove('/nope/missing.txt'); // removing what is not there succeeds
    });

    it('reads an empty file as an empty string', async () => {
      await sbx.commands.run('touch empty.txt');
      assert.equal(await sbx.files.read('empty.txt'), '');
    });

    it('writes as root where the user may not, and refuses the user there', async () => {
      const info = await sbx.files.write('/root/secret.txt', 's3cret', { user: 'root' });
      assert.equal(info.path, '/root/secret.txt');
      assert.equal(await sbx.files.read('/root/secret.txt', { user: 'root' }), 's3cret');
      assert.equal((await sbx.files.getInfo('/root/secret.txt', { user: 'root' })).owner, 'root');
      await assert.rejects(sbx.files.read('/root/secret.txt'));
      await assert.rejects(sbx.files.write('/root/other.txt', 'x'));
      // a relative path is taken from the chosen user's home
      assert.equal((await sbx.files.write('rel.txt', 'r', { user: 'root' })).path, '/root/rel.txt');
    });

    it('watches a folder for changes', async () => {
      await sbx.files.makeDir('watched');
      const events = [];
      const handle = await sbx.files.watchDir('watched', (e) => events.push(e), { recursive: true });
      await sbx.files.write('watched/new.txt', 'n');
      await sbx.files.makeDir('watched/inner');
      await new Promise((r) => setTimeout(r, 100));
      await sbx.files.write('watched/inner/deep.txt', 'd');
      await sbx.files.remove('watched/new.txt');
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline && !events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.REMOVE)) {
        await new Promise((r) => setTimeout(r, 20));
      }
      await handle.stop();
      const kinds = events.map((e) => `${e.name}:${e.type}`);
      assert.ok(kinds.includes(`new.txt:${FilesystemEventType.CREATE}`), kinds.join(','));
      assert.ok(kinds.includes(`inner/deep.txt:${FilesystemEventType.CREATE}`), kinds.join(','));
      assert.ok(kinds.includes(`new.txt:${FilesystemEventType.REMOVE}`), kinds.join(','));
    });
    // Found by the E2B SDK's own suite (tests/sandbox/files/watch.test.ts): an upload is written
    // to a temporary file and renamed over its target; a watcher must see a write of the target.
    it('shows an overwrite as a write of the file, never the upload\'s temporary file', async () => {
      await sbx.files.write('rewatched/f.txt', 'one');
      const events = [];
      const handle = await sbx.files.watchDir('rewatched', (e) => events.push(e));
      await sbx.files.write('rewatched/f.txt', 'two');
      await sbx.files.write('rewatched/g.txt', 'new');
      const kinds = () => events.map((e) => `${e.name}:${e.type}`);
      const want = [`f.txt:${FilesystemEventType.WRITE}`, `g.txt:${FilesystemEventType.WRITE}`];
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline && !want.every((k) => kinds().includes(k))) {
        await new Promise((r) => setTimeout(r, 20));
      }
      await handle.stop();
      assert.ok(kinds().includes(want[0]), kinds().join(','));
      assert.ok(kinds().includes(`g.txt:${FilesystemEventType.CREATE}`), kinds().join(','));
      assert.ok(kinds().includes(want[1]), kinds().join(','));
      assert.ok(events.every((e) => e.name === 'f.txt' || e.name === 'g.txt'), kinds().join(','));
      await sbx.files.remove('rewatched');
    });
  });

  describe('access token', () => {
    // Found by the E2B SDK's own suite (tests/sandbox/files/signing.test.ts).
    it('serves signed file URLs; refuses expired ones with E2B\'s message and forged ones', async () => {
      await sbx.files.write('signed.txt', 'signed body');
      const ok = await fetch(await sbx.downloadUrl('signed.txt', { useSignatureExpiration: 10000 }));
      assert.equal(ok.status, 200);
      assert.equal(await ok.text(), 'signed body');
      const form = new FormData();
      form.append('file', new Blob(['up']), 'x.txt');
      const up = await fetch(await sbx.uploadUrl('signed-up.txt', { useSignatureExpiration: 10000 }), { method: 'POST', body: form });
      assert.equal(up.status, 200);
      assert.equal(await sbx.files.read('signed-up.txt'), 'up');
      for (const url of [await sbx.downloadUrl('signed.txt', { useSignatureExpiration: -10000 }),
        await sbx.uploadUrl('late.txt', { useSignatureExpiration: -100000 })]) {
        const r = await fetch(url, { method: url.includes('late.txt') ? 'POST' : 'GET', body: url.includes('late.txt') ? form : undefined });
        assert.equal(r.status, 401);
        assert.deepEqual(await r.json(), { code: 401, message: 'signature is already expired' });
      }
      const forged = new URL(await sbx.downloadUrl('signed.txt', { useSignatureExpiration: 10000 }));
      forged.searchParams.set('path', '/etc/shadow');
      const f = await fetch(forged);
      assert.equal(f.status, 401);
      assert.deepEqual(await f.json(), { code: 401, message: 'invalid access token' });
    });

    it('unlinked the token file after reading it', async () => {
      assert.equal(await sbx.files.exists('/run/sandgate/token', { user: 'root' }), false);
    });

    it('refuses a wrong access token with 401', async () => {
      const badApi = await startApiDouble({ envdVersion: envdVersion(), envdAccessToken: 'wrong-token' });
      try {
        const bad = await Sandbox.connect('sbx-envd-test', { apiKey: testApiKey, apiUrl: badApi.url, sandboxUrl: envd.url });
        await assert.rejects(bad.commands.run('true'), AuthenticationError);
        await assert.rejects(bad.files.read('/etc/hostname'), AuthenticationError);
        await assert.rejects(bad.files.list('/'), AuthenticationError);
      } finally {
        await badApi.close();
      }
      const raw = await fetch(`${envd.url}/files?path=/etc/hostname`);
      assert.equal(raw.status, 401);
      assert.equal((await raw.json()).code, 401);
      assert.equal((await fetch(`${envd.url}/health`)).status, 204);
    });
  });
});

// Raw Connect / HTTP against an envd without a token (secure: false) and a 1 MB body limit.
describe('envd wire details and limits', () => {
  let envd;
  before(async () => { envd = await startEnvd({ token: null, args: ['--max-body-mb', '1'] }); });
  after(async () => { await envd?.stop(); });

  const envelope = (msg, flags = 0) => {
    const body = Buffer.from(JSON.stringify(msg));
    const h = Buffer.alloc(5);
    h[0] = flags;
    h.writeUInt32BE(body.length, 1);
    return Buffer.concat([h, body]);
  };
  const frames = (buf) => {
    const out = [];
    for (let o = 0; o + 5 <= buf.length;) {
      const n = buf.readUInt32BE(o + 1);
      out.push({ flags: buf[o], msg: JSON.parse(buf.subarray(o + 5, o + 5 + n).toString()) });
      o += 5 + n;
    }
    return out;
  };
  const startRaw = (cmd) => fetch(`${envd.url}/process.Process/Start`, {
    method: 'POST',
    headers: { 'content-type': 'application/connect+json', 'connect-protocol-version': '1' },
    body: envelope({ process: { cmd: '/bin/bash', args: ['-l', '-c', cmd] }, stdin: false }),
  });

  it('streams start, data, end, then the end-of-stream frame', async () => {
    const res = await startRaw('printf abc; exit 7');
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/connect+json');
    const f = frames(Buffer.from(await res.arrayBuffer()));
    assert.ok(f[0].msg.event.start.pid > 1);
    assert.equal(f[1].msg.event.data.stdout, Buffer.from('abc').toString('base64'));
    assert.deepEqual(f[f.length - 2].msg.event.end, { exitCode: 7, exited: true, status: 'exit status 7' });
    assert.deepEqual(f[f.length - 1], { flags: 2, msg: {} });
  });

  it('answers bad requests with Connect errors, never a crash', async () => {
    const bad = await fetch(`${envd.url}/process.Process/Start`, {
      method: 'POST', headers: { 'content-type': 'application/connect+json' }, body: Buffer.from([0, 0, 0, 9, 9, 1]),
    });
    const f = frames(Buffer.from(await bad.arrayBuffer()));
    assert.equal(f[0].flags, 2);
    assert.equal(f[0].msg.error.code, 'invalid_argument');
    const unary = await fetch(`${envd.url}/filesystem.Filesystem/Stat`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"path": 5',
    });
    assert.equal(unary.status, 400);
    assert.equal((await unary.json()).code, 'invalid_argument');
    const missing = await fetch(`${envd.url}/filesystem.Filesystem/Stat`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"path":"/nope"}',
    });
    assert.equal(missing.status, 404);
    assert.equal((await missing.json()).code, 'not_found');
    const user = await fetch(`${envd.url}/filesystem.Filesystem/Stat`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Basic ${Buffer.from('nobody-here:').toString('base64')}` },
      body: '{"path":"/"}',
    });
    assert.equal(user.status, 401);
    assert.equal((await fetch(`${envd.url}/health`)).status, 204);
  });

  it('refuses a body over the limit with 413 and writes nothing', async () => {
    // announce 2 MB and send none of it: the refusal must come from the header alone
    const net = await import('node:net');
    const reply = await new Promise((resolve, reject) => {
      const s = net.connect(envd.port, '127.0.0.1');
      let got = '';
      s.on('data', (d) => { got += d; });
      s.on('end', () => resolve(got));
      s.on('close', () => resolve(got));
      s.on('error', reject);
      s.write('POST /files?path=/tmp/big.bin HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n' +
              `Content-Length: ${2 << 20}\r\nConnection: close\r\n\r\n`);
      setTimeout(() => s.end(), 2000);
    });
    assert.match(reply, /^HTTP\/1\.1 413 /);
    const st = await fetch(`${envd.url}/files?path=/tmp/big.bin`);
    assert.equal(st.status, 404);
    assert.equal((await st.json()).code, 404);
  });

  it('never leaves a half file when an upload fails', async () => {
    const { gzipSync } = await import('node:zlib');
    const gz = gzipSync(Buffer.alloc(300000, 7));
    const res = await fetch(`${envd.url}/files?path=/tmp/half/x.bin`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream', 'content-encoding': 'gzip' },
      body: gz.subarray(0, gz.length - 20), // truncated gzip stream
    });
    assert.equal(res.status, 400);
    assert.equal((await fetch(`${envd.url}/files?path=/tmp/half/x.bin`)).status, 404);
    const ls = await fetch(`${envd.url}/filesystem.Filesystem/ListDir`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"path":"/tmp/half","depth":1}',
    });
    assert.deepEqual((await ls.json()).entries ?? [], []);
  });

  it('survives clients vanishing mid-stream and mid-upload, leaving nothing behind', async () => {
    const { request } = await import('node:http');
    const { readdirSync, readlinkSync } = await import('node:fs');
    const post = (p, body, headers, abort) => new Promise((resolve) => {
      const req = request(`${envd.url}${p}`, { method: 'POST', headers: { ...headers, 'content-length': body.length } });
      req.on('response', (res) => { res.resume(); res.on('end', resolve); res.on('error', resolve); });
      req.on('error', resolve);
      if (abort === 'body') { req.write(body.subarray(0, body.length >> 1)); setTimeout(() => req.destroy(), 30); return; }
      if (abort) setTimeout(() => req.destroy(), abort);
      req.end(body);
    });
    const jobs = [];
    for (let i = 0; i < 10; i++) {
      jobs.push(post('/process.Process/Start', envelope({ process: { cmd: '/bin/bash', args: ['-c', 'head -c 3000000 /dev/urandom | base64'] }, stdin: false }),
        { 'content-type': 'application/connect+json' }, 20 + 10 * i));
      jobs.push(post(`/files?path=/tmp/gone/${i}.bin`, Buffer.alloc(2 << 20, i), { 'content-type': 'application/octet-stream' }, 'body'));
      // a vanished client is noticed at the next write: the ping (1 s here, 50 s from the SDK)
      jobs.push(post('/filesystem.Filesystem/WatchDir', envelope({ path: '/tmp', recursive: true }),
        { 'content-type': 'application/connect+json', 'keepalive-ping-interval': '1' }, 50));
    }
    await Promise.all(jobs);
    assert.equal((await fetch(`${envd.url}/health`)).status, 204);
    // every process ran to its end (nobody killed them) and was reaped
    let procs;
    for (const end = Date.now() + 10000; Date.now() < end;) {
      procs = (await (await fetch(`${envd.url}/process.Process/List`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).json()).processes;
      if (procs.length === 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.deepEqual(procs, []);
    // no half-written uploads, no temporary files
    const ls = await fetch(`${envd.url}/filesystem.Filesystem/ListDir`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"path":"/tmp/gone"}' });
    assert.ok(ls.status === 404 || (await ls.json()).entries.length === 0);
    // the watchers of vanished streams were closed (no inotify descriptors left)
    const pid = envd.hostPid();
    let watchers = -1;
    for (const end = Date.now() + 5000; watchers !== 0 && Date.now() < end;) {
      watchers = readdirSync(`/proc/${pid}/fd`).filter((f) => { try { return readlinkSync(`/proc/${pid}/fd/${f}`).includes('inotify'); } catch { return false; } }).length;
      if (watchers) await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(watchers, 0);
  });

  it('pauses a process that writes faster than the client reads (bounded memory)', async () => {
    const { request } = await import('node:http');
    const rssOf = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${envd.hostPid()}/status`, 'utf8'))[1]) * 1024;
    const rss0 = rssOf();
    const body = envelope({ process: { cmd: '/bin/bash', args: ['-c', 'head -c 300000000 /dev/zero'] }, stdin: false });
    const req = request(`${envd.url}/process.Process/Start`, {
      method: 'POST', headers: { 'content-type': 'application/connect+json', 'content-length': body.length },
    });
    const res = await new Promise((resolve, reject) => { req.on('response', resolve); req.on('error', reject); req.end(body); });
    res.pause(); // read nothing: the kernel buffers fill, then envd must stop reading the pipe
    await new Promise((r) => setTimeout(r, 1500));
    const grown = rssOf() - rss0;
    // 300 MB of output unread: envd may hold about a megabyte per stream, not the output
    // (an ASan build keeps freed memory in quarantine, so it gets more headroom)
    assert.ok(grown < (sanitized() ? 64 : 24) << 20, `envd RSS grew by ${grown} bytes`);
    const list = await fetch(`${envd.url}/process.Process/List`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}',
    });
    const procs = (await list.json()).processes;
    assert.equal(procs.length, 1, 'the writer is still alive, blocked on its pipe');
    await fetch(`${envd.url}/process.Process/SendSignal`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ process: { pid: procs[0].pid }, signal: 'SIGNAL_SIGKILL' }),
    });
    res.destroy();
  });
});

// Started ahead of its sandbox (the node's warm pool): only /health and one authenticated POST
// /init (env vars + token) until initialised; /init never works twice.
describe('envd --await-init', () => {
  let envd;
  const key = randomBytes(16).toString('hex');
  before(async () => {
    envd = await startEnvd({ token: null, env: { SANDGATE_INIT_KEY: key }, args: ['--await-init'] });
  });
  after(async () => { if (envd) await envd.stop(); });
  const init = (body, k = key) => fetch(`${envd.url}/init`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-sandgate-init-key': k }, body,
  });
  it('answers 503 before /init, takes env and token once, then refuses /init', async () => {
    assert.equal((await fetch(`${envd.url}/health`)).status, 204);
    let r = await fetch(`${envd.url}/files?path=/etc/hostname`);
    assert.equal(r.status, 503);
    assert.equal((await r.json()).code, 503);
    assert.equal((await init('{}', 'x'.repeat(32))).status, 401);
    assert.equal((await init('{"envVars":{"A":1}}')).status, 400);
    assert.equal((await init('not json')).status, 400);
    assert.equal((await fetch(`${envd.url}/init`, { headers: { 'x-sandgate-init-key': key } })).status, 405);
    r = await init(JSON.stringify({ envVars: { INIT_VAR: 'v1' }, accessToken: 'init-token' }));
    assert.equal(r.status, 204, await r.text());
    // now the token is required, and the env var is every process's default
    assert.equal((await fetch(`${envd.url}/files?path=/etc/hostname`)).status, 401);
    const api = await startApiDouble({ envdVersion: envdVersion(), envdAccessToken: 'init-token' });
    try {
      const s = await Sandbox.create('base', { apiKey: testApiKey, apiUrl: api.url, sandboxUrl: envd.url, secure: true });
      const out = await s.commands.run('echo "$INIT_VAR"; env | grep -c SANDGATE_ || true');
      assert.equal(out.stdout, 'v1\n0\n');
    } finally { await api.close(); }
    // /init once only, whatever the key
    r = await init(JSON.stringify({ envVars: {}, accessToken: null }));
    assert.ok(r.status === 401 || r.status === 404, String(r.status));
  });
});
