// TEST DOUBLE of a sandgate node agent: speaks docs/node-api.md (node API + Redis registration and
// heartbeats) but runs no sandbox at all; a "sandbox" is an entry in a Map. It lets scheduler and
// API tests run without the real node agent (the node agent's issue reruns the same tests against
// the real thing). Never use it outside tests.
//
// In-process:  const n = await NodeDouble.start({ id, redis: '127.0.0.1:6379', token, ... })
// As a process: node tests/nodedouble/nodedouble.mjs --redis ADDR --token T --id ID
//               [--count N] [--vcpu V] [--mem MB] [--slots N] [--no-list]   prints "READY <port>"
import http from 'node:http';
import crypto from 'node:crypto';
import { Resp } from '../integration/lib/sched-redis.mjs';

export class NodeDouble {
  static async start(opts) {
    const n = new NodeDouble(opts);
    await n.listen();
    n.redis = await Resp.connect(opts.redis);
    await n.heartbeat();
    n.timer = setInterval(() => { n.heartbeat().catch(() => {}); n.expire(); }, n.heartbeatMs);
    return n;
  }

  constructor(o) {
    this.id = o.id;
    this.token = o.token;
    this.ids = o.count > 1 ? Array.from({ length: o.count }, (_, i) => `${o.id}-${i}`) : [o.id];
    this.capacity = { vcpu: o.vcpu ?? 8, memoryMB: o.memoryMB ?? 16384, sandboxes: o.sandboxes ?? 50 };
    this.templates = o.templates ?? ['base'];
    this.labels = o.labels ?? {};
    this.heartbeatMs = o.heartbeatMs ?? 250;
    this.graceMs = o.graceMs ?? 10000;
    this.reportList = o.reportList ?? true;
    this.envdVersion = o.envdVersion ?? '0.5.7';
    this.sandboxes = new Map();
    this.deleted = new Map(); // id -> { at, endAtMs } of DELETE calls that found the sandbox
    this.status = 'ready';
    this.heartbeats = true;
    // Test knobs: failNext (answer 500 to the next N creates), delayMs (before answering creates),
    // stats (counters the tests assert on).
    this.failNext = 0;
    this.delayMs = 0;
    this.stats = { creates: 0, created: 0, refused: 0, deletes: 0, patches: 0, peak: 0, overCapacity: 0 };
    this.log = [];
  }

  listen() {
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.server.keepAliveTimeout = 60000;
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => {
      this.port = this.server.address().port;
      this.api = `127.0.0.1:${this.port}`;
      resolve();
    }));
  }

  async heartbeat() {
    if (!this.heartbeats) return;
    const now = Date.now();
    const alloc = this.allocated();
    const list = this.reportList ? JSON.stringify([...this.sandboxes.keys()]) : null;
    const cmds = [['MULTI']];
    for (const id of this.ids) {
      const fields = ['id', id, 'api', this.api, 'proxy', this.api, 'status', this.status,
        'cap_vcpu', this.capacity.vcpu, 'cap_mem_mb', this.capacity.memoryMB, 'cap_sandboxes', this.capacity.sandboxes,
        'alloc_vcpu', alloc.vcpu, 'alloc_mem_mb', alloc.memoryMB, 'alloc_sandboxes', alloc.sandboxes,
        'usage_cpu_pct', 1, 'usage_mem_mb', 100, 'templates', this.templates.join(','),
        'labels', JSON.stringify(this.labels), 'agent_version', 'double', 'envd_version', this.envdVersion,
        'heartbeat_ms', now];
      if (list !== null) fields.push('sandboxes', list);
      cmds.push(['HSET', `{sg}:node:${id}`, ...fields], ['PEXPIRE', `{sg}:node:${id}`, 60000],
        ['ZADD', '{sg}:nodes', now, id]);
    }
    cmds.push(['EXEC']);
    await Promise.all(cmds.map((c) => this.redis.command(...c)));
  }

  allocated() {
    const a = { vcpu: 0, memoryMB: 0, sandboxes: 0 };
    for (const s of this.sandboxes.values()) { a.vcpu += s.vcpu; a.memoryMB += s.memoryMB; a.sandboxes++; }
    return a;
  }

  expire() {
    const now = Date.now();
    for (const [id, s] of this.sandboxes) if (s.endAtMs + this.graceMs < now) this.sandboxes.delete(id);
  }

  send(res, status, body) {
    const b = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(b) });
    res.end(b);
  }

  handle(req, res) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      try {
        this.route(req, res, Buffer.concat(chunks).toString('utf8'));
      } catch (e) {
        this.send(res, 500, { code: 500, message: String(e) });
      }
    });
  }

  route(req, res, raw) {
    const url = new URL(req.url, 'http://x');
    const p = url.pathname;
    this.log.push(`${req.method} ${p}`);
    if (this.log.length > 10000) this.log.splice(0, 5000);
    if (req.method === 'GET' && p === '/health') return this.send(res, 204);
    const tok = req.headers['x-sandgate-node-token'] ?? '';
    const a = Buffer.from(String(tok)), b = Buffer.from(this.token);
    if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) return this.send(res, 401, { code: 401, message: 'invalid node token' });
    let m;
    if (req.method === 'POST' && p === '/v1/sandboxes') return this.create(res, raw);
    if (req.method === 'GET' && p === '/v1/sandboxes') return this.send(res, 200, { sandboxes: [...this.sandboxes.values()].map((s) => this.entry(s)) });
    if (req.method === 'GET' && p === '/v1/info') {
      return this.send(res, 200, { nodeID: this.id, status: this.status, capacity: this.capacity, allocated: this.allocated(),
        usage: { cpuPct: 1, memUsedMB: 100 }, templates: this.templates, labels: this.labels, agentVersion: 'double', envdVersion: this.envdVersion });
    }
    if (req.method === 'POST' && (p === '/v1/drain' || p === '/v1/undrain')) {
      this.status = p === '/v1/drain' ? 'draining' : 'ready';
      this.heartbeat().catch(() => {});
      return this.send(res, 204);
    }
    if ((m = p.match(/^\/v1\/sandboxes\/([a-z0-9]{1,63})(\/metrics)?$/))) {
      const s = this.sandboxes.get(m[1]);
      if (req.method === 'DELETE' && !m[2]) {
        this.stats.deletes++;
        if (!s) return this.send(res, 404, { code: 404, message: `sandbox "${m[1]}" not found` });
        this.sandboxes.delete(m[1]);
        this.deleted.set(m[1], { at: Date.now(), endAtMs: s.endAtMs });
        return this.send(res, 204);
      }
      if (!s) return this.send(res, 404, { code: 404, message: `sandbox "${m[1]}" not found` });
      if (req.method === 'GET' && m[2]) {
        return this.send(res, 200, { timestampMs: Date.now(), cpuUsedPct: 1.5, cpuCount: s.vcpu, memUsed: 64 << 20,
          memTotal: s.memoryMB * 1048576, diskUsed: 1 << 20, diskTotal: s.diskMB * 1048576 });
      }
      if (req.method === 'GET') return this.send(res, 200, this.entry(s));
      if (req.method === 'PATCH') {
        const body = JSON.parse(raw);
        if (!Number.isInteger(body.endAtMs)) return this.send(res, 400, { code: 400, message: 'endAtMs required' });
        s.endAtMs = body.endAtMs;
        this.stats.patches++;
        return this.send(res, 204);
      }
    }
    return this.send(res, 404, { code: 404, message: 'no such route' });
  }

  entry(s) {
    return { sandboxID: s.sandboxID, teamID: s.teamID, templateID: s.templateID, address: s.address, state: 'running',
      startedAtMs: s.startedAtMs, endAtMs: s.endAtMs, vcpu: s.vcpu, memoryMB: s.memoryMB, diskMB: s.diskMB };
  }

  create(res, raw) {
    this.stats.creates++;
    let b;
    try { b = JSON.parse(raw); } catch { return this.send(res, 400, { code: 400, message: 'invalid JSON' }); }
    if (typeof b.sandboxID !== 'string' || !/^[a-z0-9]{1,63}$/.test(b.sandboxID) || typeof b.templateID !== 'string' ||
        !Number.isInteger(b.vcpu) || b.vcpu < 1 || b.vcpu > 64 || !Number.isInteger(b.memoryMB) ||
        b.memoryMB < 64 || !Number.isInteger(b.endAtMs) || typeof b.teamID !== 'string') {
      return this.send(res, 400, { code: 400, message: 'invalid request' });
    }
    const answer = () => {
      if (this.failNext > 0) { this.failNext--; return this.send(res, 500, { code: 500, message: 'injected failure' }); }
      if (this.status !== 'ready') { this.stats.refused++; return this.send(res, 429, { code: 429, message: 'node has no room: draining' }); }
      if (!this.templates.includes(b.templateID)) return this.send(res, 404, { code: 404, message: `template "${b.templateID}" not found on this node` });
      if (this.sandboxes.has(b.sandboxID)) return this.send(res, 409, { code: 409, message: 'exists' });
      const a = this.allocated();
      // Capacity is shared by every id this process registers (bench mode); one id: exact.
      const cap = this.capacity, k = this.ids.length;
      if (a.sandboxes + 1 > cap.sandboxes * k || a.memoryMB + b.memoryMB > cap.memoryMB * k || a.vcpu + b.vcpu > cap.vcpu * k) {
        this.stats.refused++;
        this.stats.overCapacity++;
        return this.send(res, 429, { code: 429, message: 'node has no room: capacity' });
      }
      const s = { sandboxID: b.sandboxID, teamID: b.teamID, templateID: b.templateID, address: '10.11.0.9',
        startedAtMs: Date.now(), endAtMs: b.endAtMs, vcpu: b.vcpu, memoryMB: b.memoryMB, diskMB: b.diskMB ?? 0,
        envdAccessToken: b.envdAccessToken ?? null, metadata: b.metadata ?? {}, envVars: b.envVars ?? {} };
      this.sandboxes.set(s.sandboxID, s);
      this.stats.created++;
      this.stats.peak = Math.max(this.stats.peak, this.sandboxes.size);
      this.send(res, 201, { sandboxID: s.sandboxID, address: s.address, envdVersion: this.envdVersion, startedAtMs: s.startedAtMs });
    };
    if (this.delayMs > 0) setTimeout(answer, this.delayMs); else answer();
  }

  async stop() {
    clearInterval(this.timer);
    this.server.closeAllConnections?.();
    await new Promise((r) => this.server.close(r));
    this.redis?.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const get = (k, d) => { const i = args.indexOf(k); return i >= 0 ? args[i + 1] : d; };
  const n = await NodeDouble.start({
    id: get('--id', 'double'), redis: get('--redis', '127.0.0.1:6379'), token: get('--token', ''),
    count: Number(get('--count', '1')), vcpu: Number(get('--vcpu', '64')), memoryMB: Number(get('--mem', '262144')),
    sandboxes: Number(get('--slots', '10000')), reportList: !args.includes('--no-list'),
    heartbeatMs: Number(get('--heartbeat-ms', '1000')), graceMs: 1000,
  });
  process.stdout.write(`READY ${n.port}\n`);
  process.on('SIGTERM', () => n.stop().then(() => process.exit(0)));
}
