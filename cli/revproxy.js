#!/usr/bin/env -S node --max-semi-space-size=8 --heap-growing-percent=50 --no-allocation-site-pretenuring
// Entry point for `npx revproxy` and `npm start`.
//
// The V8 flags bound the heap of a proxy holding many connections (the bench
// reads them from this line, so every process it starts runs as this one does):
// - --max-semi-space-size=8 bounds the young generation: with the default
//   (sized from this machine's 24 GB) a proxy holding 10,000 connections peaked
//   at 317 MB, with 16 MB semi-spaces at about 215 MB (170-174 MB once a
//   connection kept no closures), with 8 MB at 154-155 MB (alternating runs),
//   for the same throughput; pipelined, CPU per request moved by 1-2 % (paired
//   rounds; scavenges cost what survives them, a few hundred requests in flight).
// - --heap-growing-percent=50: a full collection is due when the old
//   generation has grown by half since the last one. V8's own factor reaches 4
//   on a machine with this much memory: 10,000 busy connections peaked at
//   229-256 MB with it, 162-173 MB with 2 (100 %), and, with 8 MB
//   semi-spaces, 154-158 MB with 2 and 132-142 MB with 1.5 (three rounds on
//   one proxy, alternating runs). Pipelined, CPU per request stayed within
//   1-2 % at each step (paired rounds), and GC took 6.2-7.4 % of the proxy's
//   CPU at 1.5 and at 2 alike (--trace-gc-nvp, 5 s runs: 35-40 short full
//   collections either way; what survives them is small).
// - --no-allocation-site-pretenuring: pipelined, the objects of requests in
//   flight survive a scavenge, and V8 then decides that the allocation sites
//   making them make long-lived objects (--trace-pretenuring-statistics: 46 sites
//   `tenure` in 12 s) and allocates them in the old generation, where they die
//   within milliseconds: a full collection every 0.3 s (8x32 on four servers,
//   --trace-gc: 46-50 in 12 s), each marking the whole live heap. Without it:
//   2 in 12 s, twice the scavenges. Saves about a fifth of the proxy's CPU per
//   request pipelined (bench, paired with the code before it, 7 rounds:
//   3.36 us against 4.26, every round lower; README's Benchmark).
//
// The sources run bundled into one plain JavaScript file (cli/bundle.mjs),
// made by `npm pack` for an installed package and, in a checkout, again
// whenever a source is newer. If bundling is impossible they run through tsx,
// a development dependency: a checkout has it, an installed package does not.
//
// The signals a daemon is sent are caught first, before anything slow loads (early-signals.mjs):
// Node's default for SIGHUP ended a proxy reloaded in its first fifth of a second.
import './early-signals.mjs';
import { pathToFileURL } from 'node:url';
import { bundle, bundlePath, installed } from './bundle.mjs';

let entry;
let failure;
try {
  entry = await bundle();
} catch (err) {
  failure = err;
  if (process.env.REVPROXY_DEBUG) console.error('revproxy: bundling failed, running through tsx:', err);
}
let main;
if (entry) {
  ({ main } = await import(pathToFileURL(entry).href));
} else {
  try {
    const { register } = await import('tsx/esm/api');
    register();
  } catch {
    console.error(
      `revproxy: cannot start: its sources could not be bundled into ${bundlePath} (${failure?.message ?? failure}), ` +
        'and tsx, which runs them unbundled, is not installed. ' +
        (installed
          ? 'Install revproxy from a package made by npm pack, which carries the bundle, or give it a folder it can write.'
          : 'Run npm install in the checkout (tsx is a development dependency), or fix what stops the bundle being written.'),
    );
    process.exit(1);
  }
  ({ main } = await import('./main.ts'));
}
const code = await main(process.argv.slice(2));
process.exitCode = code;
// A command that failed ends, even when what failed left sockets or timers open (an actor that
// stopped on an error keeps its children running): what it had to say is written by then.
if (code !== 0) setTimeout(() => process.exit(code), 2000).unref();
