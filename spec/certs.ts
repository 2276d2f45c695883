/** Throw-away certificates for TLS specs, made with openssl in a temp folder. */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { loadTls, type TlsFiles } from '../transport/tls.js';
import { libfaketime } from './faketime.js';
import { LOCAL, tempDir } from './helpers.js';

export interface Pki {
  dir: string;
  ca: string;
  /** cert and key paths by name (with `intermediate`, cert is the chain: the leaf, then the intermediate). */
  cert(name: string): { cert: string; key: string };
  /** With `intermediate`: its certificate, and each leaf's alone (no chain). */
  intermediate?: string;
  leaf?(name: string): string;
  /**
   * Make the CA's CRL (`openssl ca -gencrl`) at `file` (default ca.crl in `dir`), revoking the certificates
   * of `revoke` (names given to makePki) and those of earlier calls; valid from now for `hours` (24), or made
   * `made` ago (a libfaketime offset: `-3d` with `hours` 24 is one past its nextUpdate), or for `seconds`;
   * `pss`: signed with RSA-PSS (an RSA CA's); `intermediate`: the intermediate CA's CRL (its own database), not the root's.
   * A name may be a path without `.pem` (another PKI's certificate: a CRL of the same name under another key). Returns its path.
   */
  crl(revoke?: string[], opts?: CrlOptions): string;
}

/** What `Pki.crl` makes beyond its defaults. */
export interface CrlOptions {
  file?: string;
  hours?: number;
  seconds?: number;
  made?: string;
  pss?: boolean;
  intermediate?: boolean;
}

function run(args: string[], cwd: string, env?: Record<string, string>): void {
  execFileSync('openssl', args, { cwd, stdio: 'pipe', env: env && { ...process.env, ...env } });
}

/** What `makePki` makes beyond its defaults. */
export interface PkiOptions {
  /** How long each certificate is valid (2 days). */
  days?: number;
  /** When they were made: a libfaketime offset such as `-3d` or `-60h` (an expired certificate, or one about to be), `+1d` (one not valid yet). */
  made?: string;
  /**
   * Other subjectAltName entries for a name (`{ proxy: 'IP:127.0.0.1,IP:::1' }`); a list is written one entry a line,
   * as openssl's section of them (`['URI:https://x.example/a,b']`: a value with a comma, which the inline form splits).
   */
  sans?: Record<string, string | string[]>;
  /** The certificates the CA signs made at another time, for another length (an expired leaf of a valid CA). */
  leaves?: { days: number; made: string };
  /** Another extendedKeyUsage for a name (`{ proxy: 'clientAuth' }`; '' for none at all). */
  usages?: Record<string, string>;
  /**
   * Leaves signed by an intermediate CA the root signed, not by the root: it is `made` (default: the
   * root's) and valid `days` (the root's), and the leaves are made when it is, valid the root's `days`.
   */
  intermediate?: { made?: string; days?: number };
  /** The keys' type (P-256 by default). */
  key?: 'ec' | 'rsa' | 'ed25519';
}

/**
 * A CA and certificates it signs, each valid for 127.0.0.1 and localhost, with extendedKeyUsage serverAuth
 * and clientAuth, for `days` (2) from now, or from `made`; `sans` and `usages` change a name's
 * (`PkiOptions`). With `intermediate`, each name's certificate file is its chain.
 */
export function makePki(names: string[], caName = 'revproxy test CA', { days = 2, made, sans = {}, leaves, usages = {}, intermediate, key = 'ec' }: PkiOptions = {}): Pki {
  const dir = tempDir('revproxy-pki-');
  const faked = (at: string | undefined): Record<string, string> | undefined => {
    if (!at) return undefined;
    const lib = libfaketime();
    if (!lib) throw new Error('libfaketime is not installed (Debian: sudo apt-get install -y faketime)');
    return { LD_PRELOAD: lib, FAKETIME: at };
  };
  const env = faked(made);
  // An intermediate is made at its own time; the leaves when it is, or at `leaves.made`.
  const interEnv = intermediate?.made ? faked(intermediate.made) : env;
  const leafEnv = leaves ? faked(leaves.made) : intermediate ? interEnv : env;
  const leafDays = leaves?.days ?? days;
  const openssl = (args: string[], cwd: string, e = env): void => run(args, cwd, e);
  const newKey = { ec: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'], rsa: ['-newkey', 'rsa:2048', '-nodes'], ed25519: ['-newkey', 'ed25519', '-nodes'] }[key];
  openssl(['req', '-x509', ...newKey, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', String(days), '-subj', `/CN=${caName}`], dir);
  const signer = intermediate ? 'inter' : 'ca';
  if (intermediate) {
    writeFileSync(join(dir, 'inter.ext'), 'basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n');
    openssl(['req', ...newKey, '-keyout', 'inter.key', '-out', 'inter.csr', '-subj', `/CN=${caName} intermediate`], dir, interEnv);
    openssl(['x509', '-req', '-in', 'inter.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'inter.pem', '-days', String(intermediate.days ?? days), '-extfile', 'inter.ext'], dir, interEnv);
  }
  for (const n of names) {
    const usage = usages[n] ?? 'serverAuth,clientAuth';
    const san = sans[n] ?? 'IP:127.0.0.1,DNS:localhost';
    // A list: `subjectAltName=@alt` and its section last (what follows a section's header is the section's).
    const section = Array.isArray(san) ? `[alt]\n${san.map((e, i) => `${e.slice(0, e.indexOf(':'))}.${i + 1} = ${e.slice(e.indexOf(':') + 1)}`).join('\n')}\n` : '';
    writeFileSync(join(dir, `${n}.ext`), `subjectAltName=${Array.isArray(san) ? '@alt' : san}\n${usage ? `extendedKeyUsage=${usage}\n` : ''}${section}`);
    openssl(['req', ...newKey, '-keyout', `${n}.key`, '-out', `${n}.csr`, '-subj', `/CN=${n}`], dir, leafEnv);
    openssl(['x509', '-req', '-in', `${n}.csr`, '-CA', `${signer}.pem`, '-CAkey', `${signer}.key`, '-CAcreateserial', '-out', intermediate ? `${n}.leaf.pem` : `${n}.pem`, '-days', String(leafDays), '-extfile', `${n}.ext`], dir, leafEnv);
    if (intermediate) writeFileSync(join(dir, `${n}.pem`), Buffer.concat([readFileSync(join(dir, `${n}.leaf.pem`)), readFileSync(join(dir, 'inter.pem'))]));
  }
  const crl = (revoke: string[] = [], o: CrlOptions = {}): string => {
    // openssl ca's own database (one for each CA): the certificates revoked so far, and the CRL's number.
    const by = o.intermediate ? 'inter' : 'ca';
    const cnf = `${by}.cnf`;
    if (!existsSync(join(dir, cnf))) {
      writeFileSync(join(dir, `${by}.index.txt`), '');
      writeFileSync(join(dir, `${by}.crlnumber`), '01\n');
      writeFileSync(join(dir, cnf), `[ca]\ndefault_ca = d\n[d]\ndatabase = ${by}.index.txt\ncrlnumber = ${by}.crlnumber\ndefault_md = sha256\ncertificate = ${by}.pem\nprivate_key = ${by}.key\n`);
    }
    for (const n of revoke) run(['ca', '-config', cnf, '-revoke', `${n}.pem`], dir);
    const file = o.file ?? join(dir, `${by}.crl`);
    const faked = o.made ? libfaketime() : undefined;
    if (o.made && !faked) throw new Error('libfaketime is not installed (Debian: sudo apt-get install -y faketime)');
    const lasts = o.seconds ? ['-crlsec', String(o.seconds)] : ['-crlhours', String(o.hours ?? 24)];
    const pss = o.pss ? ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32'] : [];
    run(['ca', '-config', cnf, '-gencrl', ...lasts, ...pss, '-out', file], dir, faked ? { LD_PRELOAD: faked, FAKETIME: o.made! } : undefined);
    return file;
  };
  return {
    dir,
    ca: join(dir, 'ca.pem'),
    cert: (n) => ({ cert: join(dir, `${n}.pem`), key: join(dir, `${n}.key`) }),
    crl,
    ...(intermediate ? { intermediate: join(dir, 'inter.pem'), leaf: (n: string) => join(dir, `${n}.leaf.pem`) } : {}),
  };
}

/**
 * A TLS handshake with a listener (a proxy, a server), presenting `files`' certificate: resolves with the socket (left open) once it is done.
 * TLS 1.2, where the proxy's refusal of our certificate ends the handshake (in 1.3 it comes after the client's end of it).
 */
export function handshake(port: number, files: TlsFiles): Promise<TLSSocket> {
  const tls = loadTls(files)!;
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: LOCAL, port, ca: tls.ca, cert: tls.cert, key: tls.key, maxVersion: 'TLSv1.2' }, () => resolve(s));
    s.once('error', reject);
  });
}

/** The common name of the certificate a listener presents to a new handshake. */
export async function presented(port: number, files: TlsFiles): Promise<string> {
  const s = await handshake(port, files);
  const cn = String(s.getPeerCertificate().subject.CN);
  s.destroy();
  return cn;
}
