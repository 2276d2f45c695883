/**
 * What is read from a PEM text (a CRL file's CRLs, a certificate file's certificates), read once for as long as
 * it is in use. Found by the Buffer itself first - a dial, a metrics scrape, a `/readyz` probe read the same one
 * again and again - else by the bytes' SHA-256: a reload (SIGHUP, a renewal) reads each file again into a new
 * Buffer, and an unchanged one is not read again (a CRL of 20,000 entries, 1 MB, took 57 ms to parse, its digest 1.6 ms).
 * Nothing is kept for bytes no longer in use: an entry lives while a Buffer of those bytes does (the material
 * running holds it), then goes with it, so a CRL renewed every day leaves no old one behind. A PEM string (a
 * library caller's) has no Buffer to hold it: it is found by its digest, while the material read from an equal
 * Buffer, or the last call's result, still lives. `args` go to `read` and may change only how it says what cannot
 * be read (a file's name in its error): what it returns depends on the bytes alone.
 */
import { createHash } from 'node:crypto';

export function byBytes<T extends object, A extends unknown[] = []>(read: (pem: Buffer, ...args: A) => T): (pem: Buffer, ...args: A) => T {
  const held = new WeakMap<object, T>();
  const shared = new Map<string, WeakRef<T>>();
  const gone = new FinalizationRegistry<string>((digest) => {
    if (shared.get(digest)?.deref() === undefined) shared.delete(digest);
  });
  // Held, never read: the last PEM string's result stays alive for its next call.
  let last: T | undefined;
  return (pem, ...args) => {
    const own = typeof pem === 'object' ? held.get(pem) : undefined;
    if (own) return own;
    const digest = createHash('sha256').update(pem).digest('base64');
    let value = shared.get(digest)?.deref();
    if (value === undefined) {
      value = read(pem, ...args);
      shared.set(digest, new WeakRef(value));
      gone.register(value, digest);
    }
    if (typeof pem === 'object') held.set(pem, value);
    else last = value;
    return value;
  };
}
