// A throw-away test CA and leaf certificates for *.<domain> and api.<domain> (openssl CLI).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

// Writes ca.pem/ca.key and, for each name in leaves, <name>.pem/<name>.key (CN "cert-<name>",
// SANs *.<domain> and api.<domain>) into dir. Returns the CA's path and each leaf's file paths.
export function makeCerts(dir, domain, leaves = ['leaf']) {
  const ossl = (...a) => execFileSync('openssl', a, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
    '-subj', '/CN=sandgate test CA', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  fs.writeFileSync(path.join(dir, 'leaf.ext'), `subjectAltName=DNS:*.${domain},DNS:api.${domain}\n` +
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n');
  const out = { ca: path.join(dir, 'ca.pem') };
  for (const n of leaves) {
    ossl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${n}.key`, '-out', `${n}.csr`, '-subj', `/CN=cert-${n}`);
    ossl('x509', '-req', '-in', `${n}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
      '-out', `${n}.pem`, '-days', '2', '-extfile', 'leaf.ext');
    out[n] = { cert: path.join(dir, `${n}.pem`), key: path.join(dir, `${n}.key`) };
  }
  return out;
}

// gatewayConfig()'s YAML with its one listener replaced by a plain one on port and a TLS one on
// tlsPort serving cert/key (HTTP/2 offered when http2).
export function withTlsListener(yaml, { port, tlsPort, cert, key, http2 = false }) {
  const out = yaml.replace(/^listeners:\n {2}- address: .*\n {4}port: \d+\n/m, `listeners:
  - address: 127.0.0.1
    port: ${port}
  - address: 127.0.0.1
    port: ${tlsPort}
    http2: ${http2}
    certs:
      - cert_file: ${cert}
        key_file: ${key}
`);
  if (!out.includes(`port: ${tlsPort}`)) throw new Error('listeners not replaced');
  return out;
}
