/** Throw-away certificates for TLS specs, made with openssl in a temp folder. */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './helpers.js';

export interface Pki {
  dir: string;
  ca: string;
  /** cert and key paths by name. */
  cert(name: string): { cert: string; key: string };
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: 'pipe' });
}

/** A CA and certificates it signs, each valid for 127.0.0.1 and localhost. */
export function makePki(names: string[], caName = 'revproxy test CA'): Pki {
  const dir = tempDir('revproxy-pki-');
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', `/CN=${caName}`], dir);
  writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
  for (const n of names) {
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${n}.key`, '-out', `${n}.csr`, '-subj', `/CN=${n}`], dir);
    openssl(['x509', '-req', '-in', `${n}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${n}.pem`, '-days', '2', '-extfile', 'san.ext'], dir);
  }
  return { dir, ca: join(dir, 'ca.pem'), cert: (n) => ({ cert: join(dir, `${n}.pem`), key: join(dir, `${n}.key`) }) };
}
