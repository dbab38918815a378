// deploy/: the production example YAML passes `sandgate config check` (gateway) and
// `config check --node` / `sandgate-node --check` (nodes) with the secrets systemd would pass as
// credentials; the systemd units parse (systemd-analyze verify, when installed) and keep the
// properties the docs promise.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT, BUILD, SANDGATE, tmpdir } from './lib/services.mjs';

const PROD = path.join(ROOT, 'deploy/production');
const UNITS = path.join(ROOT, 'deploy/systemd');
const NODE_BIN = path.join(BUILD, 'sandgate-node');

// What LoadCredential= in the units provides, as files in a temporary $CREDENTIALS_DIRECTORY.
function credentials() {
  const dir = tmpdir('creds');
  const secrets = {
    pg_dsn: 'host=10.0.0.21 dbname=sandgate user=sandgate sslmode=require',
    redis_password: 'redis-password-0123456789',
    node_token: 'node-token-0123456789abcdef',
    admin_token: 'admin-token-0123456789abcdef',
    token_secret: 'token-secret-0123456789abcdef',
  };
  for (const [k, v] of Object.entries(secrets)) fs.writeFileSync(path.join(dir, k), `${v}\n`, { mode: 0o600 });
  return dir;
}

function check(args, env) {
  return spawnSync(SANDGATE, ['config', 'check', ...args], { encoding: 'utf8', env: { PATH: process.env.PATH, ...env } });
}

const nodeFiles = fs.readdirSync(PROD).filter((f) => /^node-\d+\.yaml$/.test(f)).sort();

test('production layout: one gateway file and three node files', () => {
  assert.ok(fs.existsSync(path.join(PROD, 'gateway.yaml')));
  assert.deepEqual(nodeFiles, ['node-1.yaml', 'node-2.yaml', 'node-3.yaml']);
});

test('gateway.yaml passes `sandgate config check` with its credentials', () => {
  const creds = credentials();
  const r = check([path.join(PROD, 'gateway.yaml')], { CREDENTIALS_DIRECTORY: creds, SANDGATE_PRIVATE_ADDR: '10.0.0.11' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /domain: "sandboxes.example.com"/);
  assert.match(r.stdout, /node_token: "\*+"/, 'secrets are read and masked');
  // Without the credentials it must fail: the check is real.
  const bad = check([path.join(PROD, 'gateway.yaml')], { SANDGATE_PRIVATE_ADDR: '10.0.0.11' });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /CREDENTIALS_DIRECTORY/);
});

test('node-N.yaml pass `config check --node` and `sandgate-node --check`; ids, addresses distinct', () => {
  const creds = credentials();
  const ids = new Set(), apis = new Set();
  for (const f of nodeFiles) {
    const file = path.join(PROD, f);
    const r = check([file, '--node'], { CREDENTIALS_DIRECTORY: creds });
    assert.equal(r.status, 0, `${f}: ${r.stderr}`);
    ids.add(/^id: "?([^"\n]+)"?$/m.exec(r.stdout)[1]);
    apis.add(/^api_advertise: "?([^"\n]+)"?$/m.exec(r.stdout)[1]);
    if (fs.existsSync(NODE_BIN)) {
      const n = spawnSync(NODE_BIN, ['-c', file, '--check'], { encoding: 'utf8', env: { PATH: process.env.PATH, CREDENTIALS_DIRECTORY: creds } });
      assert.equal(n.status, 0, `${f}: ${n.stderr}`);
    }
    const missing = check([file, '--node'], { CREDENTIALS_DIRECTORY: path.join(creds, 'nope') });
    assert.notEqual(missing.status, 0, 'missing node token file is an error');
  }
  assert.equal(ids.size, 3);
  assert.equal(apis.size, 3);
  // A node file is not a gateway file.
  assert.notEqual(check([path.join(PROD, nodeFiles[0])], { CREDENTIALS_DIRECTORY: creds }).status, 0);
});

function unit(name) {
  const text = fs.readFileSync(path.join(UNITS, name), 'utf8');
  const kv = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (m) (kv[m[1]] ||= []).push(m[2]);
  }
  return kv;
}

test('systemd units: the gateway unprivileged and locked down; the node agent keeps sandboxes on stop', () => {
  const gw = unit('sandgate.service');
  for (const [k, v] of [['NoNewPrivileges', 'yes'], ['DynamicUser', 'yes'], ['ProtectSystem', 'strict'],
    ['PrivateDevices', 'yes'], ['RestrictNamespaces', 'yes'], ['CapabilityBoundingSet', 'CAP_NET_BIND_SERVICE']]) {
    assert.deepEqual(gw[k], [v], `gateway ${k}=${v}`);
  }
  assert.ok(gw.ExecStart[0].endsWith(' serve'));
  assert.equal(gw.LoadCredential.length, 5, 'every secret of gateway.yaml comes as a credential');
  const node = unit('sandgate-node.service');
  assert.deepEqual(node.KillMode, ['process'], 'stopping the agent must not kill sandboxes');
  for (const k of ['SystemCallFilter', 'NoNewPrivileges', 'ProtectSystem', 'PrivateTmp', 'PrivateMounts',
    'CapabilityBoundingSet', 'RestrictNamespaces', 'RestrictAddressFamilies']) {
    assert.equal(node[k], undefined, `node unit must not set ${k} (inherited by sandboxes or a private mount namespace)`);
  }
  assert.equal(node.LoadCredential.length, 2);
});

test('systemd units parse (systemd-analyze verify)', { skip: spawnSync('systemd-analyze', ['--version']).status !== 0 && 'systemd-analyze missing' }, () => {
  const dir = tmpdir('units');
  for (const f of ['sandgate.service', 'sandgate-node.service']) {
    // Point the units at build/ so that verify also finds the binaries.
    fs.writeFileSync(path.join(dir, f), fs.readFileSync(path.join(UNITS, f), 'utf8').replaceAll('/usr/local/bin/', `${BUILD}/`));
  }
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', path.join(dir, 'sandgate.service'), path.join(dir, 'sandgate-node.service')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr.trim(), '', r.stderr);
});
