// A minimal Redis (RESP2) client for tests and the node test double: pipelined commands over one
// connection, replies as JS values (errors reject). Test tooling only, not product code.
import net from 'node:net';

export class Resp {
  static connect(address) {
    return new Promise((resolve, reject) => {
      const opts = address.startsWith('unix:') ? { path: address.slice(5) }
        : { host: address.slice(0, address.lastIndexOf(':')), port: Number(address.slice(address.lastIndexOf(':') + 1)) };
      const sock = net.connect(opts);
      sock.once('connect', () => resolve(new Resp(sock)));
      sock.once('error', reject);
    });
  }

  constructor(sock) {
    this.sock = sock;
    this.queue = [];
    this.buf = Buffer.alloc(0);
    sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.drain(); });
    sock.on('error', (e) => this.failAll(e));
    sock.on('close', () => this.failAll(new Error('redis connection closed')));
  }

  failAll(e) {
    const q = this.queue; this.queue = [];
    for (const { reject } of q) reject(e);
  }

  command(...args) {
    const parts = [`*${args.length}\r\n`];
    for (const a of args) {
      const b = Buffer.from(String(a));
      parts.push(`$${b.length}\r\n`, b, '\r\n');
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ resolve, reject });
      this.sock.write(Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p)))));
    });
  }

  drain() {
    for (;;) {
      const r = parse(this.buf, 0);
      if (r === null) return;
      this.buf = this.buf.subarray(r.end);
      const w = this.queue.shift();
      if (!w) continue;
      if (r.value instanceof Error) w.reject(r.value); else w.resolve(r.value);
    }
  }

  close() { this.sock.destroy(); }
}

function parse(buf, i) {
  const eol = buf.indexOf('\r\n', i);
  if (eol < 0) return null;
  const t = String.fromCharCode(buf[i]);
  const line = buf.toString('utf8', i + 1, eol);
  switch (t) {
    case '+': return { value: line, end: eol + 2 };
    case '-': return { value: new Error(line), end: eol + 2 };
    case ':': return { value: Number(line), end: eol + 2 };
    case '$': {
      const n = Number(line);
      if (n < 0) return { value: null, end: eol + 2 };
      if (buf.length < eol + 2 + n + 2) return null;
      return { value: buf.toString('utf8', eol + 2, eol + 2 + n), end: eol + 2 + n + 2 };
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return { value: null, end: eol + 2 };
      const out = [];
      let p = eol + 2;
      for (let k = 0; k < n; k++) {
        const r = parse(buf, p);
        if (r === null) return null;
        out.push(r.value);
        p = r.end;
      }
      return { value: out, end: p };
    }
    default: throw new Error(`bad RESP type ${t}`);
  }
}
