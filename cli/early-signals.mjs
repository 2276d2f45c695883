// The signals a daemon is sent, caught from the first line of the CLI's own code on.
//
// Making or loading the bundle takes a fifth of a second or more (cli/revproxy.js): until a
// command installs its handlers, Node's defaults apply, and a SIGHUP (a reload: logrotate,
// `systemctl reload`, a deploy script) or a SIGUSR2 ended the process there and then (exit 129),
// a SIGTERM or SIGINT ended it without its drain, and a SIGUSR1 opened Node's debugger. Caught
// here, each is remembered in order; the command that handles it takes it when it installs its
// own handler (cli/common.ts, takeEarlySignals) - the proxy applies a reload once it listens,
// and drains on a SIGTERM - and every command that does not is given back Node's default,
// with the signals it was sent, when it starts (releaseEarlySignals).
//
// Plain JavaScript, imported first by cli/revproxy.js: it must run before anything slow loads.
// The state lives on globalThis, under a registered symbol, so the bundle (or the sources run
// through tsx) reaches it without importing this file.
const KEY = Symbol.for('revproxy.earlySignals');
const SIGNALS = ['SIGHUP', 'SIGINT', 'SIGTERM', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];

if (!globalThis[KEY]) {
  const state = { received: [], listeners: new Map() };
  for (const signal of SIGNALS) {
    const f = () => state.received.push(signal);
    state.listeners.set(signal, f);
    process.on(signal, f);
  }
  globalThis[KEY] = state;
}
