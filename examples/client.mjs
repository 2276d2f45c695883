// A Node program that uses the library: connect to the proxy, send requests, read answers.
//
//   npm run build                      # once, in this repository (an installed package is built)
//   node examples/client.mjs 2100      # the proxy's port, or HOST:PORT[,HOST:PORT...]
//
// Elsewhere: npm pack here, npm install the revproxy-*.tgz it makes (revproxy is not on the npm
// registry: "npm install revproxy" finds nothing), then the same import.
import { connect, HandlerError, RequestError } from 'revproxy';

const client = await connect({ revproc: process.argv[2] ?? '2100', id: 'example', timeoutMs: 2000 });

const requests = [
  ['111', 'Write to ada@example.org or call +44 20 7946 0958.'],
  ['222', JSON.stringify({ id: 7, name: 'Ada', email: 'ada@example.org', country: 'UK', plan: 'pro' })],
  ['222', 'not json'],
];

for (const [policy, payload] of requests) {
  try {
    const answer = await client.request(policy, payload);
    console.log(`${policy} ${JSON.stringify(payload)} -> ${JSON.stringify(answer)}`);
  } catch (err) {
    if (err instanceof HandlerError) console.log(`${policy} ${JSON.stringify(payload)} -> refused by the handler: ${err.appCode}: ${err.message}`);
    else if (err instanceof RequestError) console.log(`${policy} ${JSON.stringify(payload)} -> no answer: ${err.code}: ${err.message}`);
    else throw err;
  }
}
await client.close();
