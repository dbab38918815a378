// A gateway places on what its cached node view shows, and that view can be a refresh old (250
// ms). A create that finds no room there must look at a fresh view before answering 503: a node
// that registered a moment ago (or room freed a moment ago) is real capacity. Seen as a 503
// "No node has room" in CI when a test created its first sandbox right after its node started.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { schedStack, team, api, NODE_TOKEN } from './lib/sched-stack.mjs';
import { NodeDouble } from '../nodedouble/nodedouble.mjs';

let s;
const doubles = [];
after(async () => {
  await Promise.all(doubles.map((n) => n.stop()));
  await s?.stop();
});

test('a create right after a node registers lands on it (no 503 from a stale view)', async () => {
  s = await schedStack({ gateways: 1, nodes: [] });
  const key = team(s.config, 'fresh', '--max-concurrent', '100');
  // With no node at all the answer is 503 (after one fresh look).
  let r = await api(s.gw, key, 'POST', '/v2/sandboxes', { templateID: 'base' });
  assert.equal(r.status, 503, r.text);
  for (let i = 0; i < 5; i++) {
    // One sandbox per node: each round's new node is the only one with room. start() resolves
    // once its first heartbeat is in Redis; the create follows at once, before the gateway's
    // periodic refresh could have seen the node (most of the time), and while its view may still
    // show the previous node with room.
    const n = await NodeDouble.start({ id: `fresh-${i}`, redis: s.redis.address, token: NODE_TOKEN,
      heartbeatMs: 200, sandboxes: 1 });
    doubles.push(n);
    r = await api(s.gw, key, 'POST', '/v2/sandboxes', { templateID: 'base', timeout: 60 });
    assert.equal(r.status, 201, `node ${i}: ${r.text}`);
    assert.equal(r.json.clientID, `fresh-${i}`);
  }
});
