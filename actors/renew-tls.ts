/**
 * Renewed TLS material handed to a running proxy, server or client through the library
 * (`renewTls`): checked as the files are at start (`checkTls`), refused with a `TlsConfigError`
 * (code TLS_CONFIG) when it cannot be used, the running material kept then. TLS is turned on
 * or off only at start: a renewal replaces material, it does not add or remove it.
 */
import { checkTls, TlsConfigError, type CertPurpose, type TlsMaterial } from '../transport/tls.js';

/**
 * `next` checked against `running` (the material in use, undefined without TLS): `setting` names
 * it in errors (tls, upstreamTls), `needsCert` when it serves a listener (a certificate to present),
 * `needs` what its certificate must be fit for (as at start: `checkStartTls`).
 */
export function renewed(setting: string, running: TlsMaterial | undefined, next: TlsMaterial, needsCert = false, needs: readonly CertPurpose[] = []): TlsMaterial {
  const names = { cert: `${setting}.cert`, key: `${setting}.key`, ca: `${setting}.ca` };
  const on = needsCert ? Boolean(running?.cert) : Boolean(running);
  if (!on) throw new TlsConfigError(`cannot renew ${setting}: it was started without ${needsCert ? names.cert : setting} (TLS is turned on only at start): start it again with ${setting}`, 'usage');
  if (needsCert && !next.cert) throw new TlsConfigError(`${names.cert} and ${names.key} are missing: this side serves TLS, give the renewed certificate and its key`, 'usage');
  return checkTls(next, names, needs);
}
