/**
 * Files the user names - packet files, the tokens file, TLS material - read
 * with errors that name the file, say why it cannot be used and what to give
 * instead (a `FileError`, exit code 1). The CLI's flags and the config file
 * (`config/proxy.ts`) both read their files here.
 */
import { closeSync, lstatSync, openSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Packet } from '../actors/connect.js';
import { FileError, UsageError } from '../transport/errors.js';
import { MsgType, toMessage } from '../transport/messages.js';
import { crlName, crlValidities, loadTls, TlsConfigError, validityOf, type CertPurpose, type TlsMaterial, type TlsNames, type Validity } from '../transport/tls.js';
import { ENV_REFERENCE, NOT_EXPANDED, yaml, yamlErrorWords, type Issue } from './schema.js';

/**
 * Why a file could not be read, in words. `file`, when given, is looked at for a symbolic link whose
 * target is gone (a Kubernetes ConfigMap whose key was removed): "it does not exist" named the link,
 * which does.
 */
export function whyUnreadable(err: unknown, file?: string): string {
  const e = err as NodeJS.ErrnoException;
  switch (e.code) {
    case 'ENOENT':
      return danglingLink(file) ?? 'it does not exist';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EISDIR':
      return 'it is a folder';
    case 'ENOTDIR':
      return 'a part of its path is not a folder';
    default:
      return e.code ? `${e.code} (${e.message})` : e.message;
  }
}

/** What a symbolic link `file` points at, said when that is gone; undefined when `file` is no link. */
function danglingLink(file: string | undefined): string | undefined {
  try {
    if (file === undefined || !lstatSync(file).isSymbolicLink()) return undefined;
    return `it is a symbolic link to ${readlinkSync(file)}, which does not exist`;
  } catch {
    return undefined;
  }
}

/** The text of a YAML file its loader checks next; one that cannot be read is refused as bad contents are, by `refuse`, at 1:1 ("cannot read WHAT: WHY"). */
export function readYamlFile(file: string, what: string, refuse: (issues: Issue[]) => Error): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw refuse([{ line: 1, col: 1, path: '', message: `cannot read ${what}: ${whyUnreadable(err, file)}` }]);
  }
}

/** The contents of a file given on the command line, or a FileError: "cannot read the WHAT 'PATH': WHY; TODO". */
export function readGiven(path: string, what: string, todo: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new FileError(`cannot read the ${what} '${path}': ${whyUnreadable(err, path)}; ${todo}`);
  }
}

/** Like `readGiven`, without reading the file (it may be big): only that it can be opened and is not a folder. */
export function checkGiven(path: string, what: string, todo: string): void {
  try {
    if (statSync(path).isDirectory()) throw Object.assign(new Error('is a folder'), { code: 'EISDIR' });
    closeSync(openSync(path, 'r'));
  } catch (err) {
    throw new FileError(`cannot read the ${what} '${path}': ${whyUnreadable(err, path)}; ${todo}`);
  }
}

/** The first line of a parser's message (YAML's run on with a drawing of the spot). */
const firstLine = (err: unknown): string => (err as Error).message.split('\n')[0]!.trim().replace(/:$/, '');

/** What --pkt takes, for the client's errors. */
export const PKT_HINT = '--pkt takes packet files (JSON, like pktfiles/1.json) or folders of them';
const PACKET_SHAPE = 'a packet file holds one data packet, e.g. {"type": "0", "srcid": "1", "privPoliId": "111", "payload": "xyz1"}';

/**
 * Packets from files: each path is a JSON file holding one data packet, or a
 * folder whose *.json files are read in numeric order. A file that cannot be
 * read or is not a packet is a FileError ending with `hint` (what to give instead).
 */
export function loadPackets(paths: string[], defaultSrcid: string, hint = PKT_HINT): Array<Packet & { file: string }> {
  const files: string[] = [];
  for (const p of paths) {
    let st;
    try {
      st = statSync(p);
    } catch (err) {
      throw new FileError(`cannot read the packet file '${p}': ${whyUnreadable(err)}; ${hint}`);
    }
    if (st.isDirectory()) {
      const names = readdirSync(p)
        .filter((n) => n.endsWith('.json'))
        .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
      if (names.length === 0) throw new FileError(`the folder '${p}' holds no .json packet files; ${hint}`);
      files.push(...names.map((n) => join(p, n)));
    } else files.push(p);
  }
  return files.map((file) => {
    let raw: unknown;
    try {
      // A UTF-8 byte order mark (Windows editors write one) is not JSON: read past it, as a config file's.
      raw = JSON.parse(readGiven(file, 'packet file', hint).toString('utf8').replace(/^\uFEFF/, ''));
    } catch (err) {
      if (err instanceof FileError) throw err;
      throw new FileError(`the packet file '${file}' is not valid JSON (${firstLine(err)}); ${PACKET_SHAPE}`);
    }
    if (raw && typeof raw === 'object' && !Array.isArray(raw) && !('srcid' in raw)) (raw as Record<string, unknown>).srcid = defaultSrcid;
    let msg;
    try {
      msg = toMessage(raw, { seqOptional: true });
    } catch (err) {
      throw new FileError(`the packet file '${file}' is not a data packet (${firstLine(err)}); ${PACKET_SHAPE}`);
    }
    if (msg.type !== MsgType.DATA) throw new FileError(`the packet file '${file}' has type ${msg.type}; a client sends data packets (type "0"): ${PACKET_SHAPE}`);
    return { file, srcid: msg.srcid, privPoliId: msg.privPoliId, payload: msg.payload };
  });
}

export const TOKENS_HINT = '--tokens takes a YAML file that maps each privacy policy to its secret (8 or more characters), e.g. "111": secret-of-111, or to a list of secrets each accepted ("111": [old-secret, new-secret])';

/** Why a secret with white space at an end is refused, and how a newline at its end probably got there: said wherever one is refused. */
export const SECRET_SPACE_HINT = "a secret never starts or ends with white space here (the other side's would not match, and nothing would say why)";
const ECHO_HINT = "it probably came from a file made with echo, or a Kubernetes secret made from one (--from-file keeps the newline): make the file with printf '%s' SECRET (or echo -n), or strip it";

/**
 * What is wrong with a secret as given (a flag, an environment variable, a file), said as the end of
 * "<where> ...", or undefined: empty, or white space at an end (`SECRET_SPACE_HINT`). One rule for every
 * secret - the registration token on both sides, the admin and inspector tokens, the tokens file, etcd's
 * password: a token with a newline was taken by the proxy as it was, and servers given it trimmed were
 * refused UNAUTHORIZED with nothing pointing at the newline.
 */
export function badSecretText(value: string): string | undefined {
  if (value === '') return 'is empty';
  // `token: ${REVPROXY_TOKEN}` passed --check and became the secret, letter for letter: servers given the real one were refused.
  if (ENV_REFERENCE.test(value)) return `is '${value}', a reference to an environment variable: ${NOT_EXPANDED}`;
  if (value.endsWith('\n')) return `ends with a newline: ${SECRET_SPACE_HINT}; ${ECHO_HINT}`;
  if (value.endsWith('\r')) return `ends with a carriage return (a file saved with Windows line ends?): ${SECRET_SPACE_HINT}; strip it`;
  const at = /\s$/.test(value) ? 'ends' : /^\s/.test(value) ? 'starts' : undefined;
  return at && `${at} with ${/^ | $/.test(value) ? 'a space' : 'white space'}: ${SECRET_SPACE_HINT}; strip it`;
}

/**
 * What is wrong with `value` as a secret, said as the end of "<where> ...", or undefined: not text,
 * `badSecretText`, or shorter than `least` characters (the proxy's secrets take 8).
 */
export function badSecretValue(value: unknown, least = 0): string | undefined {
  if (typeof value !== 'string') return `is not text (got ${value === null ? 'null' : Array.isArray(value) ? 'a list' : typeof value})`;
  return badSecretText(value) ?? (value.length < least ? `is shorter than ${least} characters: a short secret is easy to guess` : undefined);
}

/**
 * A library caller's secret option (`token`, `tokens`' values, a registry password): one secret, or a
 * list of them where `list` (each accepted), by the rule the flags and the file keep. The library took
 * any: `token: ''` (an unset environment variable read as empty) started a proxy that asked servers for
 * no secret at all, and `'secret\n'` one that refused every server given it trimmed.
 */
export function badSecretOption(name: string, value: unknown, least: number, list = false): string | undefined {
  if (value === undefined) return undefined;
  const many = list && Array.isArray(value);
  if (many && value.length === 0) return `${name} is an empty list: give at least one secret, or leave ${name} out`;
  for (const [i, secret] of (many ? value : [value]).entries()) {
    const bad = badSecretValue(secret, least);
    if (bad) return `${many ? `${name}[${i}]` : name} ${bad}${bad === 'is empty' ? `: give the secret, or leave ${name} out to go without one` : ''}`;
  }
  return undefined;
}

/**
 * A per-policy tokens file: YAML (or JSON) mapping each privacy policy to
 * its registration secret, e.g. `"111": s3cret-for-111`.
 */
export function loadTokens(path: string): Record<string, string | string[]> {
  const text = readGiven(path, 'tokens file', TOKENS_HINT).toString('utf8');
  let doc: unknown;
  try {
    // Every key and secret as text, as written: YAML's core schema read `0111:` as policy 111 and
    // a secret `0123456789` as the number 123456789, a secret the servers do not have.
    doc = yaml().parse(text, { schema: 'failsafe' });
  } catch (err) {
    const e = err as { code?: string; linePos?: Array<{ line: number }> };
    const why = e.code === 'MULTIPLE_DOCS' ? `line ${e.linePos?.[0]?.line ?? 1}: ${yamlErrorWords(e as Error)}` : firstLine(err);
    throw new FileError(`the tokens file '${path}' is not valid YAML (${why}); ${TOKENS_HINT}`);
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new FileError(`the tokens file '${path}' is not a map of policies to secrets; ${TOKENS_HINT}`);
  }
  const out: Record<string, string | string[]> = Object.create(null);
  for (const [policy, given] of Object.entries(doc)) {
    // A list: each accepted, while the policy's servers move from one secret to the next.
    const list = Array.isArray(given) ? given : [given];
    if (list.length === 0 || list.some((secret) => typeof secret !== 'string')) throw new FileError(`the tokens file '${path}': the secret of policy '${policy}' must be a string, or a list of them; ${TOKENS_HINT}`);
    const bad = list.map((secret) => badSecretValue(secret, 8)).find(Boolean);
    if (bad) throw new FileError(`the tokens file '${path}': a secret of policy '${policy}' ${bad}`);
    out[policy] = Array.isArray(given) ? list.map(String) : String(given);
  }
  return out;
}

export interface TlsFlags {
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsCrl?: string;
}

/** The TLS files the flags name, checked (`loadTls`; `needs`: what this side does with its certificate); a FileError or UsageError when they cannot be used. */
export function tlsFromFlags(o: TlsFlags, flag: TlsNames = { cert: '--tls-cert', key: '--tls-key', ca: '--tls-ca' }, needs: readonly CertPurpose[] = []): TlsMaterial | undefined {
  try {
    return loadTls({ cert: o.tlsCert, key: o.tlsKey, ca: o.tlsCa, crl: o.tlsCrl }, flag, needs);
  } catch (err) {
    if (!(err instanceof TlsConfigError)) throw err;
    if (err.kind === 'usage') throw new UsageError(err.message);
    // Name the file that cannot be read, and why, in words.
    const names = { ...flag, crl: crlName(flag) };
    for (const role of ['cert', 'key', 'ca', 'crl'] as const) {
      const path = { cert: o.tlsCert, key: o.tlsKey, ca: o.tlsCa, crl: o.tlsCrl }[role];
      if (path) readGiven(path, `${names[role]} file`, tlsFileHint(names, role));
    }
    throw new FileError(err.message);
  }
}

/** What each TLS file is, for the sentence saying it cannot be read: "--tls-cert takes a PEM certificate (with --tls-key, its key)". */
export function tlsFileHint(flag: TlsNames, role: 'cert' | 'key' | 'ca' | 'crl'): string {
  const what = {
    cert: `a PEM certificate (with ${flag.key}, its key)`, key: `the PEM private key of ${flag.cert}`, ca: "the PEM certificate of the CA that signs the peers' certificates",
    crl: `the PEM CRLs of the CAs in ${flag.ca}`,
  }[role];
  return `${role === 'crl' ? crlName(flag) : flag[role]} takes ${what}`;
}

/** A certificate file loaded: the setting that named it (tls.cert, --tls-ca...), the file, and when its certificate ends (`validityOf`); or a CRL of a CRL file (`crl`: when it was made and when its next is due). */
export interface LoadedCert extends Validity {
  role: string;
  file: string;
}

/**
 * The certificate and CA files of `files`, with their validity (read from `material`, what was loaded), each named by `names`.
 * Read as it is asked for (a scrape of the metric, a warning): in a CA bundle, once one CA has ended the one that matters
 * is the next to end while any verifies peers (`validityOf`), and an old CA left in the bundle does not read as expired.
 * With `names.crl`, each CRL of the CRL file that has a nextUpdate too (`crlValidities`): TLS refuses its CA's peers past it.
 */
export function loadedCerts(files: { cert?: string; ca?: string; crl?: string } | undefined, material: TlsMaterial | undefined, names: { cert: string; ca: string; crl?: string }): LoadedCert[] {
  const out: LoadedCert[] = [];
  for (const role of ['cert', 'ca'] as const) {
    const pem = material?.[role];
    const file = files?.[role];
    if (!pem || !file || !validityOf(pem, role)) continue;
    const now = (): Validity => validityOf(pem, role)!;
    out.push({ role: names[role], file, get notBefore() { return now().notBefore; }, get notAfter() { return now().notAfter; }, get subject() { return now().subject; } });
  }
  if (names.crl && files?.crl && material?.crl) for (const v of crlValidities(material.crl)) out.push({ role: names.crl, file: files.crl, ...v });
  return out;
}
