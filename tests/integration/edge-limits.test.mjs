// Edge protection (issue 6): the per-address request rate limit (http.rate_limit_rps / burst),
// shared by the gateway's workers; /health stays exempt. Real PostgreSQL, Redis and gateway.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { stack } from './lib/services.mjs';

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
