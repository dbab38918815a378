// Scheduler/API test stack: real PostgreSQL and Redis, N gateways, M node test doubles
// (tests/nodedouble), one team + key. Built on services.mjs (processes cleaned up on exit).
import { startPostgres, startRedis, startGateway, gatewayConfig, sandgate, createTeam, createKey, tmpdir, onCleanup } from './services.mjs';
import { NodeDouble } from '../../nodedouble/nodedouble.mjs';
import { Resp } from './sched-redis.mjs';
import fs from 'node:fs';
import path from 'node:path';

export const NODE_TOKEN = 'test-node-token-0123456789';
export const ADMIN_TOKEN = 'test-admin-token-0123456789';

export const SCHED_EXTRA = `scheduler:
  node_down_after_ms: 1500
  create_timeout_ms: 2000
  reservation_ttl_ms: 3000
  max_attempts: 3
sandbox:
  default_timeout_s: 300
  max_timeout_s: 3600
`;

export async function schedStack({ gateways = 1, nodes = [{}], extra = SCHED_EXTRA } = {}) {
  const pg = await startPostgres();
  const redis = await startRedis();
  const dir = tmpdir('cfg');
  const config = path.join(dir, 'admin.yaml');
  fs.writeFileSync(config, gatewayConfig({ port: 1, pg, redis, extra }));
  sandgate(config, 'migrate');
  const doubles = [];
  for (let i = 0; i < nodes.length; i++) {
    const n = await NodeDouble.start({ id: `node-${i + 1}`, redis: redis.address, token: NODE_TOKEN, heartbeatMs: 200, ...nodes[i] });
    onCleanup(() => n.stop());
    doubles.push(n);
  }
  const gws = [];
  for (let i = 0; i < gateways; i++) gws.push(await startGateway({ pg, redis, extra, name: `gw${i}` }));
  const resp = await Resp.connect(redis.address);
  onCleanup(() => resp.close());
  // Everything this stack holds open, so that the test file's process can exit.
  const stop = async () => {
    resp.close();
    for (const g of gws) await g.stop('SIGKILL');
    await Promise.all(doubles.map((n) => n.stop()));
    await redis.stop();
    await pg.stop();
  };
  return { pg, redis, gws, gw: gws[0], nodes: doubles, config, resp, stop };
}

export function team(config, name, ...opts) {
  createTeam(config, name, ...opts);
  return createKey(config, name);
}

export async function api(gw, key, method, p, body, headers = {}) {
  const h = { ...headers };
  if (key) h['x-api-key'] = key;
  if (body !== undefined) h['content-type'] = 'application/json';
  const r = await fetch(`${gw.url}${p}`, { method, headers: h, body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)) });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch {}
  return { status: r.status, json, text, headers: r.headers };
}

// Runs fn over items with at most `n` in flight.
export async function pool(items, n, fn) {
  const out = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) { const i = next++; out[i] = await fn(items[i], i); }
  }));
  return out;
}

export const notFoundMsg = (id) => `Sandbox "${id}" doesn't exist or you don't have access to it`;
