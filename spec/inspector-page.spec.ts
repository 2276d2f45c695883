/**
 * The inspector page in a real browser (Debian's chromium through
 * playwright-core), against a running proxy with two servers of one policy.
 * Issue #6. If chromium cannot be launched this spec fails: it never skips.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdirSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import { runClient, startProxy, startServer, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { startInspector, type Inspector } from '../inspector/index.js';
import { eventually, LOCAL } from './helpers.js';
import { ROOT } from './procs.js';

const CHROMIUM = { executablePath: '/usr/bin/chromium', args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'] };

interface Ctx {
  insp: Inspector;
  proxy: ProxyHandle;
  servers: ServerHandle[];
  browser: Browser;
  page: Page;
}
const ctx = {} as Ctx;
const page = suite<Ctx>('inspector page', ctx);

page.before(async () => {
  ctx.insp = await startInspector({ port: 0, title: 'spec proxy', flushMs: 50 });
  ctx.proxy = await startProxy({ port: 0, inspect: ctx.insp.inspect, observer: ctx.insp.observer });
  ctx.servers = [];
  for (const id of ['1', '2']) {
    ctx.servers.push(await startServer({ id, policy: 'P', listenPort: 0, proxy: { host: LOCAL, port: ctx.proxy.port } }));
  }
  await eventually(() => ctx.proxy.pools().P?.members.length === 2, 3000, 'both servers in pool P');
  ctx.browser = await chromium.launch(CHROMIUM);
  ctx.page = await ctx.browser.newPage({ viewport: { width: 1400, height: 860 } });
  const outside: string[] = [];
  ctx.page.on('request', (r) => {
    if (!r.url().startsWith(ctx.insp.url!)) outside.push(r.url());
  });
  (ctx as unknown as { outside: string[] }).outside = outside;
  await ctx.page.goto(ctx.insp.url!);
});

page.after(async () => {
  await ctx.browser?.close();
  for (const s of ctx.servers ?? []) s.kill();
  await ctx.proxy?.stop();
  await ctx.insp?.close();
});

const pool = '[data-policy="P"]';

page('shows the pool with both members, in rotation order, serving', async () => {
  await ctx.page.waitForSelector(`${pool} [data-member="2"]`, { timeout: 5000 });
  const members = await ctx.page.$$eval(`${pool} .member`, (els) => els.map((e) => `${e.getAttribute('data-member')}:${e.getAttribute('data-state')}`));
  assert.equal(members, ['1:serving', '2:serving']);
  assert.is(await ctx.page.getAttribute(pool, 'data-next'), '1');
});

page('the cursor moves after a request', async () => {
  const before = await ctx.page.getAttribute(pool, 'data-next');
  const [r] = await runClient({ id: 'c', proxy: { host: LOCAL, port: ctx.proxy.port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'hello' }] });
  assert.is(r!.server, before, 'the member marked next answered');
  await ctx.page.waitForFunction((sel) => document.querySelector(sel)?.getAttribute('data-next') === '2', pool, { timeout: 5000 });
  assert.match((await ctx.page.textContent(`${pool} [data-member="1"] .counts`))!, /1 answered/);
});

page('the statechart of the selected actor marks its current state and last transition', async () => {
  await ctx.page.click('#tree .node:has(.name:text-is("pool:P"))');
  await ctx.page.waitForSelector('#chart svg [data-state="pool.serving"].current', { timeout: 5000 });
  const last = await ctx.page.$$eval('#chart svg .last', (els) => els.map((e) => e.getAttribute('data-edge')));
  assert.ok(last.some((e) => e?.includes('pool.serving|ROUTE')), `last transition marked: ${last.join(', ')}`);
});

page('the event log filters by event type, pauses, and steps back through recorded states', async () => {
  await ctx.page.selectOption('#f-type', 'ROUTE');
  const kinds = await ctx.page.$$eval('#log-body .row .e', (els) => [...new Set(els.map((e) => e.textContent))]);
  assert.ok(kinds.includes('ROUTE'), kinds.join(', '));
  assert.ok(kinds.every((k) => k === 'ROUTE' || k!.startsWith('→')), kinds.join(', '));
  await ctx.page.selectOption('#f-type', '');
  await ctx.page.click('#pause');
  assert.match((await ctx.page.textContent('#log-count'))!, /paused/);
  await ctx.page.click('#pause');
  await ctx.page.click('#step-back');
  await ctx.page.waitForFunction(() => /state \d+ of \d+/.test(document.getElementById('step-pos')!.textContent!), undefined, { timeout: 3000 });
  await ctx.page.click('#step-first');
  assert.match((await ctx.page.textContent('#step-pos'))!, /state 1 of/);
  await ctx.page.click('#step-live');
});

page('a killed server shows as gone, with why', async () => {
  ctx.servers[1]!.kill();
  await ctx.page.waitForSelector(`${pool} [data-member="2"][data-state="gone"]`, { timeout: 5000 });
  const reason = await ctx.page.getAttribute(`${pool} [data-member="2"]`, 'title');
  assert.ok(reason && reason.length > 0, 'the reason it left is shown');
  const serving = await ctx.page.$$eval(`${pool} .member[data-state="serving"]`, (els) => els.map((e) => e.getAttribute('data-member')));
  assert.equal(serving, ['1']);
  await ctx.page.click('#tree .node:has(.name:text-is("proxy"))');
  mkdirSync(`${ROOT}/artifacts`, { recursive: true });
  await ctx.page.screenshot({ path: `${ROOT}/artifacts/inspector.png`, fullPage: true });
});

page('the page loads nothing from outside the inspector', () => {
  assert.equal((ctx as unknown as { outside: string[] }).outside, []);
});

page.run();
