// A handler that does what a privacy policy would, for `revproxy server --handler`:
//
//   policy 111  masks e-mail addresses and phone numbers in a text payload
//               "write to ada@example.org or +44 20 7946 0958" -> "write to a***@example.org or +** ** **** **58"
//   policy 222  keeps only the allowed fields of a JSON object (PRIVACY_ALLOW, default id,country,plan,consent)
//               {"id":7,"name":"Ada","email":"ada@example.org","country":"UK"} -> {"id":7,"country":"UK"}
//
// Run: revproxy server --id 500 --pp 111 --revproc 2100 --handler examples/privacy-handler.js
//
// A handler is the default export of an ES module: async (payload, ctx) => answer. The
// payload is a string (MessagePack str) or bytes (bin); ctx has clientId, policy, serverId
// and an AbortSignal. An error with a string `code` is an application error: the client gets
// it as HANDLER_ERROR with that code, and the proxy neither retries it nor holds it against
// the server. No imports needed.

const EMAIL = /([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)/g;
// A run of 7 or more digits, possibly with spaces, dots, dashes or brackets between them.
const PHONE = /\+?\(?\d(?:[\s().-]*\d){6,}/g;
const ALLOWED = new Set((process.env.PRIVACY_ALLOW ?? 'id,country,plan,consent').split(',').map((f) => f.trim()).filter(Boolean));

function refuse(code, message) {
  return Object.assign(new Error(message), { code });
}

/** The payload as text: bytes must be UTF-8. */
function text(payload) {
  if (typeof payload === 'string') return payload;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(payload);
  } catch {
    throw refuse('NOT_TEXT', `this policy takes text; ${payload.length} bytes are not UTF-8`);
  }
}

/** Every digit but the last two becomes '*'; the separators stay. */
function maskPhone(number) {
  let keep = 2;
  return [...number].reverse().map((c) => (/\d/.test(c) ? (keep-- > 0 ? c : '*') : c)).reverse().join('');
}

export function maskContacts(s) {
  return s.replace(EMAIL, (_, first, domain) => `${first}***@${domain}`).replace(PHONE, maskPhone);
}

export function keepAllowed(s) {
  let value;
  try {
    value = JSON.parse(s);
  } catch {
    throw refuse('NOT_JSON', 'policy 222 takes a JSON object');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw refuse('NOT_JSON', 'policy 222 takes a JSON object');
  return JSON.stringify(Object.fromEntries(Object.entries(value).filter(([k]) => ALLOWED.has(k))));
}

export default async function privacy(payload, ctx) {
  switch (ctx.policy) {
    case '111':
      return maskContacts(text(payload));
    case '222':
      return keepAllowed(text(payload));
    default:
      throw refuse('UNKNOWN_POLICY', `this handler knows policies 111 and 222, not ${ctx.policy}`);
  }
}
