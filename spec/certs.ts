/** Throw-away certificates for TLS specs, made with openssl in a temp folder. */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { libfaketime } from './faketime.js';
import { tempDir } from './helpers.js';

export interface Pki {
  dir: string;
  ca: string;
  /** cert and key paths by name. */
  cert(name: string): { cert: string; key: string };
}

function run(args: string[], cwd: string, env?: Record<string, string>): void {
  execFileSync('openssl', args, { cwd, stdio: 'pipe', env: env && { ...process.env, ...env } });
}

/**
 * A CA and certificates it signs, each valid for 127.0.0.1 and localhost, for `days` (2) from now,
 * or from `made` ago (a libfaketime offset such as `-3d` or `-60h`: an expired certificate, or one about to be).
 */
export function makePki(names: string[], caName = 'revproxy test CA', { days = 2, made }: { days?: number; made?: string } = {}): Pki {
  const dir = tempDir('revproxy-pki-');
  const lib = made ? libfaketime() : undefined;
  if (made && !lib) throw new Error('libfaketime is not installed (Debian: sudo apt-get install -y faketime)');
  const env = lib ? { LD_PRELOAD: lib, FAKETIME: made! } : undefined;
  const openssl = (args: string[], cwd: string): void => run(args, cwd, env);
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', String(days), '-subj', `/CN=${caName}`], dir);
  writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
  for (const n of names) {
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${n}.key`, '-out', `${n}.csr`, '-subj', `/CN=${n}`], dir);
    openssl(['x509', '-req', '-in', `${n}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${n}.pem`, '-days', String(days), '-extfile', 'san.ext'], dir);
  }
  return { dir, ca: join(dir, 'ca.pem'), cert: (n) => ({ cert: join(dir, `${n}.pem`), key: join(dir, `${n}.key`) }) };
}
