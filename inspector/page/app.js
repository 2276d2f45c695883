// The inspector page: plain browser JavaScript, no libraries, nothing fetched
// from outside this server. Fed by /events (Server-Sent Events).
'use strict';

const MAX_LOG = 5000;
const MAX_ROWS = 1500;
/** Heartbeats (meta.beatMs apart) missed before the page says it hears nothing: one late beat on a busy machine is not a hung proxy. */
const QUIET_BEATS = 3;
/** How often a page refused its stream asks again (ms): the inspector's Retry-After (http.ts STREAM_RETRY_S). */
const RETRY_MS = 5000;
/** What the pools panel says while it has no pool to show: why. */
const NO_POOL = {
  yet: 'No pool yet: pools appear when a server registers with a proxy.',
  refused: `This page was refused: the inspector already feeds as many pages as it will. It shows nothing until one of them closes (it asks again every ${RETRY_MS / 1000} s); the proxy's pools may well have servers.`,
};
const $ = (id) => document.getElementById(id);

const S = {
  meta: {},
  actors: new Map(),
  charts: {},
  /** Pools by `poolKey` (their pool actor: one per policy per proxy); drawn by policy, then proxy. */
  pools: new Map(),
  conns: [],
  figures: null,
  log: [],
  types: new Set(),
  selected: null,
  history: null, // recorded states of the selected actor while stepping
  step: -1,
  paused: false,
  connsMore: 0,
  /** The server's records' clock minus our monotonic clock (ms), so ages are counted as the server counts them, whatever either wall clock does. */
  skew: 0,
  /** The server's wall clock minus its records' clock (ms): added to a record's time for its time of day (0 for a recorded log). */
  toWall: 0,
};

/** The server's time now (its records' clock); for a recorded log, the log's end; for a card of a stopped proxy's pool, when it stopped. */
function now() {
  if (stoppedAt !== undefined) return stoppedAt;
  return S.meta.recorded ? S.meta.now : performance.now() + S.skew;
}
/** Set while a stopped proxy's card is drawn: its ages stand at its proxy's stop (`updateCard`). */
let stoppedAt;

// ---------- feed ----------
function connect() {
  const es = new EventSource('/events');
  es.addEventListener('full', (m) => {
    const d = JSON.parse(m.data);
    const was = S.meta;
    S.meta = d.meta;
    S.skew = d.meta.now ? d.meta.now - performance.now() : 0;
    S.toWall = d.meta.wall ? d.meta.wall - d.meta.now : 0;
    S.charts = d.charts;
    // A new picture replaces the log. From the same process (a dropped stream) it holds what the page
    // showed; from a process that started since, not: the log lost the previous session's events
    // without a word, so it starts with a row saying so.
    const shown = S.log.filter((r) => r.k !== 'restart').length;
    S.log = [];
    if (was.started !== undefined && d.meta.started !== was.started) S.log.push({ k: 'restart', t: d.meta.started, pid: d.meta.pid, was: was.pid, lost: shown });
    // S.types stays: it lists the options the type filter already has (a new picture after a
    // reconnect or a proxy restart added each type a second time, 32 options for 13 types after 3).
    mergeRecs(d.recs);
    // After the log: its 'actor' records name actors the hub may have forgotten since; its list is the truth.
    S.actors = new Map(d.actors.map((a) => [a.sid, a]));
    setPools(d.pools || []);
    noPool(NO_POOL.yet);
    S.conns = d.conns;
    S.connsMore = d.connsMore || 0;
    S.figures = d.figures;
    if (!S.selected || !S.actors.has(S.selected)) S.selected = firstActor();
    heardAt = performance.now();
    linkBadge(S.meta.recorded ? 'recorded' : 'live');
    // A recorded log has nothing coming to hold back: its rows are paged and filtered on the server.
    $('pause').hidden = !!S.meta.recorded;
    pendingRows = [];
    renderAll();
  });
  es.addEventListener('beat', heard);
  es.addEventListener('batch', (m) => {
    heard();
    const d = JSON.parse(m.data);
    for (const a of d.actors) S.actors.set(a.sid, a);
    const added = mergeRecs(d.recs);
    for (const sid of d.forgot || []) S.actors.delete(sid);
    if (S.selected && !S.actors.has(S.selected)) S.selected = firstActor();
    S.conns = d.conns;
    S.connsMore = d.connsMore || 0;
    if (d.figures) S.figures = d.figures;
    if (!S.selected) S.selected = firstActor();
    // Drawn once a frame, however many batches came since: a page that fell behind (a busy
    // machine, a hidden tab) catches up in one render, not one per batch it missed.
    pendingRows.push(...added);
    if (pendingRows.length > MAX_ROWS) pendingRows.splice(0, pendingRows.length - MAX_ROWS);
    frame ||= requestAnimationFrame(renderBatches);
  });
  es.onerror = () => {
    if (S.meta.recorded) return linkBadge('recorded');
    linkBadge('down');
    // A dropped stream the browser opens again itself; one it was refused (503: the inspector
    // feeds its most pages) it gives up on, so the page asks again, and says why when it can.
    if (es.readyState !== EventSource.CLOSED) return;
    fetch('/api/state', { cache: 'no-store' }).then((r) => r.ok && es.readyState === EventSource.CLOSED && linkBadge('full'), () => {});
    setTimeout(connect, RETRY_MS);
  };
}

/**
 * When the page last heard from the proxy (its own monotonic clock, ms). A live proxy sends a batch
 * when something changes and a heartbeat every meta.beatMs: an idle one only beats, a hung one
 * (stopped, its event loop frozen) sends nothing, and the page said "live" for as long as it hung.
 */
let heardAt = performance.now();

function heard() {
  heardAt = performance.now();
  if ($('link').classList.contains('quiet')) linkBadge('live');
}

/** Says how long nothing came, once past a few heartbeats; only over "live" (disconnected or refused says more). */
function watchQuiet() {
  const badge = $('link');
  if (S.meta.recorded || !S.meta.beatMs || !(badge.classList.contains('live') || badge.classList.contains('quiet'))) return;
  const silent = performance.now() - heardAt;
  if (silent > QUIET_BEATS * S.meta.beatMs) linkBadge('quiet', silent);
}

/** Log records of the batches not drawn yet, and the frame that will draw them. */
let pendingRows = [];
let frame = 0;

function renderBatches() {
  frame = 0;
  const rows = pendingRows;
  pendingRows = [];
  renderTree();
  renderPools();
  renderConns();
  renderFigures();
  renderActor();
  appendLog(rows);
}

/** What changed in the pools since they were drawn: which policies, whether one came or went, or everything (a full picture). */
const poolsDirty = { all: true, order: false, policies: new Set() };

// Which pool a view is: inspector/views.ts poolKey (its pool actor; its policy in logs from before).
function poolKey(p) {
  return p.sid ?? p.policy;
}

function setPools(list) {
  S.pools = new Map(list.map((p) => [poolKey(p), p]));
  poolsDirty.all = true;
}

// A batch carries only the pools that changed (and the keys of those gone): inspector/views.ts mergePools.
function mergePools(changed, gone) {
  for (const p of changed) {
    const key = poolKey(p);
    if (!S.pools.has(key)) poolsDirty.order = true;
    S.pools.set(key, p);
    poolsDirty.policies.add(key);
  }
  for (const key of gone) if (S.pools.delete(key)) poolsDirty.order = true;
}

function mergeRecs(recs) {
  const added = [];
  for (const r of recs) {
    if (r.k === 'chart') {
      S.charts[r.machine] = r.chart;
      continue;
    }
    if (r.k === 'pools') {
      if (r.gone) mergePools(r.pools, r.gone);
      else setPools(r.pools);
      continue;
    }
    if (r.k === 'actor' && !S.actors.has(r.sid)) {
      S.actors.set(r.sid, { sid: r.sid, id: r.id, parent: r.parent, machine: r.machine, state: '', status: 'active', events: 0, context: null });
    }
    if (r.k === 'state' && r.name) {
      const a = S.actors.get(r.sid);
      if (a) a.id = r.name;
    }
    if (r.k !== 'event' && r.k !== 'actor' && r.k !== 'dropped' && !(r.k === 'state' && r.changed)) continue;
    const type = r.k === 'event' && typeKey(r.type);
    if (type && !S.types.has(type)) {
      S.types.add(type);
      addOption($('f-type'), type, type);
    }
    S.log.push(r);
    added.push(r);
  }
  if (S.log.length > MAX_LOG) S.log.splice(0, S.log.length - MAX_LOG);
  return added;
}

/**
 * An event's entry in the type filter. XState names an actor's done and error events after the
 * actor (`xstate.done.actor.upstream:310#26`): listed as they are, the filter gained an option for
 * each server that came and went, for ever (a soak: one a restart); they are one entry each,
 * `xstate.done.actor.*` and `xstate.error.actor.*`, which picks those events of every actor.
 */
// The server's `typeKey` (inspector/hub.ts) is this rule, for a recorded log's rows it filters.
function typeKey(type) {
  return type.replace(/^(xstate\.(?:done|error)\.actor\.).+$/, '$1*');
}

function firstActor() {
  for (const a of S.actors.values()) if (a.machine === 'pool' && a.status === 'active') return a.sid;
  for (const a of S.actors.values()) if (a.machine && !a.parent) return a.sid;
  return null;
}

/** Says why the pools panel is empty, while it is: a refused page said "No pool yet" with servers registered. */
function noPool(why) {
  if (!S.pools.size) $('pools').replaceChildren(el('p', { class: 'muted', text: why }));
}

function linkBadge(kind, silent = 0) {
  if (kind === 'full') noPool(NO_POOL.refused);
  // Disconnected (the proxy stopped, or its inspector), or hung (nothing heard for a few heartbeats):
  // the pools are the last states seen, not its members now - they read SERVING with a drain button
  // and ages still counting up.
  document.body.classList.toggle('offline', kind === 'down' || kind === 'quiet');
  $('pools').title = kind === 'down' ? 'disconnected: the last states seen' : kind === 'quiet' ? 'nothing heard from the proxy lately: the last states seen' : '';
  const b = $('link');
  b.className = `badge ${kind === 'full' ? 'down' : kind}`;
  b.textContent = kind === 'live' ? 'live' : kind === 'recorded' ? 'recorded log' : kind === 'full' ? 'refused: too many pages follow this inspector; trying again'
    : kind === 'quiet' ? `no data for ${dur(silent)}: the proxy may be hung` : 'disconnected';
}

// ---------- rendering ----------
function renderAll() {
  $('title').textContent = S.meta.title || '';
  document.title = `revproxy inspector: ${S.meta.title || ''}`;
  renderTree();
  renderPools();
  renderConns();
  renderFigures();
  renderActor();
  renderActorFilter();
  redrawLog();
}

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k) e.append(k);
  return e;
}

function name(sid) {
  const a = S.actors.get(sid);
  return a ? a.id : sid || '';
}

/** What the tree showed when last drawn: it is drawn again only when that changes. */
let treeShown = '';

function renderTree() {
  // A fleet under load changes its actors' contexts every batch, but seldom what the tree shows;
  // rebuilt each frame (500 actors), its nodes were replaced under the pointer and the page spent
  // its time laying them out again.
  let shown = S.selected || '';
  for (const a of S.actors.values()) shown += `\n${a.sid} ${a.parent || ''} ${a.status} ${a.state} ${a.id}`;
  if (shown === treeShown) return;
  treeShown = shown;
  const kids = new Map();
  const roots = [];
  for (const a of S.actors.values()) {
    if (a.parent && S.actors.has(a.parent)) {
      if (!kids.has(a.parent)) kids.set(a.parent, []);
      kids.get(a.parent).push(a);
    } else roots.push(a);
  }
  const item = (a) => {
    const st = a.status === 'active' ? a.state || 'active' : a.state ? `${a.state} (${a.status})` : a.status;
    const node = el('div', { class: `node${a.sid === S.selected ? ' selected' : ''}`, 'data-sid': a.sid, onclick: () => select(a.sid) },
      el('span', { class: 'name', text: a.id }),
      el('span', { class: 'st', text: st }));
    const li = el('li', { class: a.status === 'active' ? 'live' : 'stopped', 'data-actor': a.id }, node);
    const children = kids.get(a.sid);
    if (children) li.append(el('ul', {}, ...children.map(item)));
    return li;
  };
  $('tree').replaceChildren(...roots.map(item));
  renderActorFilter();
}

function renderActorFilter() {
  const sel = $('f-actor');
  for (const o of [...sel.options]) if (o.value && o.value !== sel.value && !S.actors.has(o.value)) o.remove();
  const have = new Set([...sel.options].map((o) => o.value));
  for (const a of S.actors.values()) if (!have.has(a.sid)) addOption(sel, a.sid, a.id);
  for (const o of sel.options) if (o.value) setText(o, name(o.value));
}

function addOption(sel, value, text) {
  sel.append(el('option', { value, text }));
}

// ---------- pools ----------
// Pools and member cards are kept and updated in place (keyed by policy and
// member id), so a button stays under the pointer while the figures change.

/**
 * One line per field of a member's card (inspector/views.ts MemberView):
 * a new field is one more line here. `show` returns the text, or nothing to
 * leave the line out; `cls` adds a class (a warning, say).
 */
const MEMBER_FIELDS = [
  { key: 'address', show: (m) => m.address && `${m.address}${m.wire === 'json' ? ' · old JSON server' : ''}${m.source === 'registry' ? ' · from the registry' : m.source === 'unlisted' ? ' · gone from the registry, kept while it answers' : ''}` },
  { key: 'why', show: (m) => whyText(m), cls: () => 'warn' },
  { key: 'load', show: (m) => m.inflight !== undefined && `${m.inflight} in flight · p50 ${ms(m.p50)} · p99 ${ms(m.p99)}` },
  { key: 'counts', show: (m) => `${m.answered} answered · ${m.errors} errors` },
  { key: 'error', show: (m) => m.lastError && `last error ${ago(m.lastError.at)}: ${m.lastError.code}${m.lastError.inARow > 1 ? ` (${m.lastError.inARow} in a row)` : ''} · ${m.lastError.message}`, cls: () => 'bad' },
  { key: 'check', show: (m) => m.lastCheck && `check ${m.lastCheck.ok ? 'passed' : 'failed'} ${ago(m.lastCheck.at)}${m.lastCheck.ok ? '' : `: ${m.lastCheck.message}`}${m.missedPings ? ` · ${m.missedPings} PING${m.missedPings > 1 ? 's' : ''} unanswered` : ''}`, cls: (m) => (m.lastCheck.ok && !m.missedPings ? '' : 'bad') },
  { key: 'since', show: (m) => m.since !== undefined && `${m.state} for ${dur(now() - m.since)}${m.backAt ? ` · ${m.state === 'ejected' ? 'back' : 'next probe'} in ${dur(m.backAt - now())}` : ''}` },
  { key: 'reason', show: (m) => m.reason },
];

/** Why the pool passes this member over now (routing.ts `unavailable`), in words; nothing when it may take the next request. */
function whyText(m) {
  switch (m.why) {
    case 'drained': return `drained by an operator: no new requests${m.inflight ? `; finishing ${m.inflight}` : ''}`;
    // The count that ejected it, as the proxy's eject line says: its last error's count goes on after the ejection.
    case 'ejected': return `ejected${m.ejectedFor ? ` after ${m.ejectedFor.failures} failures in a row (${m.ejectedFor.code})` : ''}`;
    case 'not_connected': return m.state === 'connecting' ? 'connecting: its link is not verified yet'
      : m.state === 'refused' ? "refused by the proxy's upstream_tls (names, server name, CRL): probed every probe_max, and at each reload of upstream_tls"
      : 'down: its link failed; probed until it answers';
    case 'full': return `at its in-flight limit (${m.inflight})`;
    case 'silent': return `silent: no answer for ${dur(now() - m.oldestAt)} (oldest of ${m.inflight} in flight)`;
    case 'backlogged': return 'backlogged: it reads its link too slowly; no new requests until it has read what waits unwritten';
    default: return m.why || null;
  }
}

function ms(v) {
  return v === undefined || v === null ? '–' : `${v} ms`;
}

function dur(d) {
  const s = Math.max(0, d) / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function ago(t) {
  return `${dur(now() - t)} ago`;
}

/** Each policy's pool box. */
const poolBoxes = new Map();

/** Draws the pools that changed since the last draw (a fleet of 500 pools is 1,000 cards: one change rewrote them all). */
function renderPools() {
  const box = $('pools');
  if (!S.pools.size) return;
  const { all, order, policies } = poolsDirty;
  if (all || order) {
    for (const e of [...box.children]) if (!e.classList.contains('pool')) e.remove();
    // By policy, then proxy (inspector/views.ts byPolicy).
    [...S.pools.entries()].sort(([, a], [, b]) => a.policy.localeCompare(b.policy) || (a.proxy || '').localeCompare(b.proxy || '')).forEach(([key, p], i) => {
      let pool = poolBoxes.get(key);
      if (!pool) poolBoxes.set(key, (pool = newPool(p.policy)));
      if (box.children[i] !== pool) box.insertBefore(pool, box.children[i] || null);
    });
    for (const [key, pool] of poolBoxes) {
      if (S.pools.has(key)) continue;
      for (const card of pool._cards.values()) dropCard(card);
      pool.remove();
      poolBoxes.delete(key);
    }
  }
  for (const key of all ? S.pools.keys() : policies) {
    const p = S.pools.get(key);
    if (p) updatePool(poolBoxes.get(key), p);
  }
  poolsDirty.all = poolsDirty.order = false;
  policies.clear();
}

function newPool(policy) {
  const pool = el('div', { class: 'pool', 'data-policy': policy },
    el('h3', {}, el('span', { text: `policy ${policy}` }), el('span', { class: 'proxy muted' }), el('span', { class: 'badge' }), el('span', { class: 'meta' })),
    el('div', { class: 'action-msg', role: 'status' }),
    el('div', { class: 'members' }));
  pool._cards = new Map();
  return pool;
}

function updatePool(box, p) {
  box.dataset.cursor = String(p.cursor);
  box.dataset.next = p.next || '';
  box.dataset.proxy = p.proxy || '';
  // A stopped proxy's pool: its last states, dimmed, without buttons, its ages standing (style.css .pool.stopped).
  box._stoppedAt = p.stoppedAt;
  if (box.classList.contains('stopped') !== (p.stoppedAt !== undefined)) box.classList.toggle('stopped');
  setText(box.querySelector('.badge'), p.stoppedAt !== undefined ? 'proxy stopped' : p.state);
  // Several proxies in one process (revproxy scenario A.yaml B.yaml) may each have a pool of a policy.
  setText(box.querySelector('.proxy'), p.proxy && [...S.pools.values()].some((o) => o !== p && o.policy === p.policy) ? `proxy ${p.proxy}` : '');
  const noneNext = p.members.length && !p.next ? ' · no member can take a request now' : '';
  const waiting = p.waiting ? ` · ${p.waiting} waiting for room` : '';
  const retries = p.retries ? ` · ${p.retries.made} of ${p.retries.allowed} retries the budget allows in 10 s${p.retries.made >= p.retries.allowed ? ' (spent)' : ''}` : '';
  setText(box.querySelector('.meta'), `cursor ${p.cursor} · ${p.routed} routed${waiting}${retries}${noneNext}`);
  const list = box.querySelector('.members');
  const all = [...p.members.map((m) => [m, m.id === p.next]), ...p.gone.map((m) => [m, false])];
  const keep = new Set();
  all.forEach(([m, isNext], i) => {
    const key = `${m.state === 'gone' ? 'gone:' : ''}${m.id}`;
    keep.add(key);
    let card = box._cards.get(key);
    if (!card) box._cards.set(key, (card = newCard(key, m.id, box)));
    if (list.children[i] !== card) list.insertBefore(card, list.children[i] || null);
    if (!card._m) onScreen.watch(card);
    updateCard(card, m, isNext);
  });
  for (const [key, card] of box._cards) {
    if (keep.has(key)) continue;
    dropCard(card);
    box._cards.delete(key);
  }
}

/**
 * The cards on screen (or nearly): the only ones whose ages move on each
 * second. One that comes into view is brought up to date then.
 */
const onScreen = {
  cards: new Set(),
  seen: new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) onScreen.cards.delete(e.target);
      else if (!onScreen.cards.has(e.target)) {
        onScreen.cards.add(e.target);
        tickCard(e.target);
      }
    }
  }, { rootMargin: '200px' }),
  watch(card) {
    this.seen.observe(card);
  },
};

function dropCard(card) {
  onScreen.seen.unobserve(card);
  onScreen.cards.delete(card);
  card.remove();
}

function newCard(key, id, poolBox) {
  const button = el('button', { class: 'act', type: 'button' });
  button.addEventListener('click', () => act(button, id, poolBox));
  const state = el('span', { class: 'ms' });
  const lines = MEMBER_FIELDS.map((f) => el('div', { class: `f f-${f.key}`, 'data-field': f.key }));
  const card = el('div', { class: 'member', 'data-key': key, 'data-member': id },
    el('div', { class: 'top' }, el('span', { class: 'id', text: id }), state),
    ...lines,
    el('div', { class: 'actions' }, button));
  Object.assign(card, { _state: state, _lines: lines, _button: button, _pool: poolBox });
  return card;
}

/** Writes only what differs from what the card shows: an unchanged card costs the browser nothing. */
function updateCard(card, m, isNext) {
  card._m = m;
  card._next = isNext;
  stoppedAt = card._pool._stoppedAt;
  try {
    drawCard(card, m, isNext);
  } finally {
    stoppedAt = undefined;
  }
}

function drawCard(card, m, isNext) {
  setData(card, 'state', m.state);
  setData(card, 'why', m.why || '');
  if (card.classList.contains('next') !== isNext) card.classList.toggle('next', isNext);
  setProp(card, 'title', m.reason || '');
  setText(card._state, m.state);
  MEMBER_FIELDS.forEach((f, i) => {
    const line = card._lines[i];
    const text = f.show(m) || '';
    setText(line, text);
    setProp(line, 'hidden', !text);
    setProp(line, 'className', `f f-${f.key}${text && f.cls ? ` ${f.cls(m)}` : ''}`);
  });
  const button = card._button;
  const action = m.state === 'drained' ? 'enable' : 'drain';
  setProp(button, 'hidden', m.state === 'gone' || !S.meta.actions || stoppedAt !== undefined);
  if (!button.disabled) {
    setData(button, 'action', action);
    setText(button, action);
    setProp(button, 'title', action === 'drain' ? 'no new requests for this member; it finishes what it has and stays registered' : 'put this member back in rotation');
  }
}

/** A card's ages now (its other fields change with a batch). */
function tickCard(card) {
  if (card._m) updateCard(card, card._m, card._next);
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setProp(node, key, value) {
  if (node[key] !== value) node[key] = value;
}

function setData(node, key, value) {
  if (node.dataset[key] !== value) node.dataset[key] = value;
}

/** Drain or enable a member: a POST with a JSON body, as the inspector's guard requires (inspector/guard.ts). */
async function act(button, id, poolBox) {
  const action = button.dataset.action;
  const msg = poolBox.querySelector('.action-msg');
  button.disabled = true;
  try {
    const r = await fetch(`/api/members/${action}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ member: id, proxy: poolBox.dataset.proxy || undefined }),
    });
    const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    msg.className = `action-msg ${r.ok ? 'ok' : 'bad'}`;
    msg.textContent = r.ok ? `${action === 'drain' ? 'drained' : 'enabled'} ${id}: now ${body.state}` : `${action} ${id} refused: ${body.error}`;
  } catch (err) {
    msg.className = 'action-msg bad';
    msg.textContent = `${action} ${id} failed: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

/** Ages on the cards in view move on with the clock, between batches too. */
function tickAges() {
  if (S.meta.recorded || document.body.classList.contains('offline')) return;
  for (const card of onScreen.cards) tickCard(card);
}

function renderConns() {
  if (!S.conns.length) {
    $('conns').replaceChildren(el('li', { class: 'muted', text: 'none seen yet' }));
    return;
  }
  $('conns').replaceChildren(...S.conns.map((c) =>
    el('li', { class: c.closed ? 'closed' : '', title: c.closed ? 'closed' : 'open', 'data-role': c.role, 'data-open': String(!c.closed) },
      document.createTextNode(`#${c.id} ${c.role}${c.peer.startsWith('unknown') ? '' : ` ${c.peer}`}${c.outstanding ? ` · ${c.outstanding} waiting` : ''}`))),
    ...(S.connsMore ? [el('li', { class: 'muted', text: `and ${S.connsMore} more open` })] : []));
}

function fmt(v, digits) {
  return v === undefined || v === null ? '–' : Number(v).toFixed(digits);
}

function renderFigures() {
  const f = S.figures;
  if (!f) return;
  $('f-rps').textContent = fmt(f.rps, 0);
  $('f-p50').textContent = fmt(f.p50, 2);
  $('f-p99').textContent = fmt(f.p99, 2);
  $('f-inflight').textContent = fmt(f.inflight, 0);
  $('f-answered').textContent = fmt(f.answered, 0);
  $('f-errors').textContent = fmt(f.errors, 0);
}

// ---------- one actor: chart, context, stepping ----------
function select(sid) {
  S.selected = sid;
  S.history = null;
  S.step = -1;
  renderTree();
  renderActor();
}

function activeIds(rootId, state) {
  const out = new Set([rootId]);
  for (const region of String(state).split(' | ')) {
    let prefix = rootId;
    for (const part of region.split('.')) {
      if (!part) continue;
      prefix = `${prefix}.${part}`;
      out.add(prefix);
    }
  }
  return out;
}

function renderActor() {
  const a = S.actors.get(S.selected);
  if (!a) return;
  const shown = S.history && S.step >= 0 ? S.history[S.step] : null;
  const state = shown ? shown.state : a.state;
  const edge = shown ? shown.edge : a.edge;
  $('actor-name').textContent = a.id;
  $('actor-state').textContent = shown ? `${state} (recorded)` : `${state || a.status}${a.status !== 'active' ? ` · ${a.status}` : ''}`;
  $('context').textContent = JSON.stringify(shown ? shown.context : a.context, null, 2);
  const chart = a.machine && S.charts[a.machine];
  const box = $('chart');
  if (!chart) {
    if (box.dataset.machine !== '') {
      box.dataset.machine = '';
      box.replaceChildren(el('p', { class: 'muted', text: a.machine ? 'no chart recorded' : 'a callback actor: it has no states of its own, only its parent\'s events' }));
    }
  } else {
    if (box.dataset.machine !== a.machine) {
      box.dataset.machine = a.machine;
      const svg = chartSvg(chart.svg);
      box.replaceChildren(svg || el('p', { class: 'muted', text: 'this chart is not one the inspector draws: not shown' }));
    }
    const active = activeIds(chart.root.id, state);
    for (const g of box.querySelectorAll('[data-state]')) {
      const id = g.getAttribute('data-state');
      g.classList.toggle('active', active.has(id));
      const isLeaf = active.has(id) && ![...active].some((x) => x.startsWith(`${id}.`));
      g.classList.toggle('current', isLeaf);
    }
    for (const e of box.querySelectorAll('[data-edge]')) {
      e.classList.toggle('last', !!edge && e.getAttribute('data-edge').split(' ').includes(edge));
    }
  }
  const n = S.history ? S.history.length : 0;
  $('step-pos').textContent = shown ? `state ${S.step + 1} of ${n}` : 'live';
  $('step-info').textContent = shown ? `${new Date(shown.t + S.toWall).toLocaleTimeString()} · after ${shown.event || '?'}${shown.changed ? ' · state changed' : ''}` : `${a.events} events${a.event ? ` · last ${a.event}` : ''}`;
  $('step-live').classList.toggle('on', !!shown);
}

// A chart's SVG came from the server, and a recorded log's from whoever wrote the file: it is never put into
// the page as markup (a log's `<img onerror=...>` ran its script). It is read in an inert document, and only
// what inspector/chart.ts draws is built again, element by element: its elements, its attributes, its text.
const SVG_NS = 'http://www.w3.org/2000/svg';
const CHART_ATTRS = {
  svg: ['class', 'viewBox', 'width', 'height'],
  defs: [],
  marker: ['id', 'viewBox', 'refX', 'refY', 'markerWidth', 'markerHeight', 'orient'],
  g: ['class', 'data-state'],
  rect: ['x', 'y', 'width', 'height', 'rx'],
  circle: ['class', 'cx', 'cy', 'r'],
  path: ['class', 'd', 'marker-end', 'data-edge'],
  text: ['class', 'x', 'y', 'text-anchor', 'data-edge'],
};
/** Attributes whose values are checked too: the only reference a chart makes is to its own arrow head. */
const CHART_VALUES = { 'marker-end': /^url\(#arrow\)$/, id: /^arrow$/, d: /^[MLCZz0-9.,\s-]*$/ };

function chartSvg(text) {
  if (typeof text !== 'string') return null;
  const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
  const root = doc.documentElement;
  if (root.namespaceURI !== SVG_NS || root.localName !== 'svg' || doc.getElementsByTagName('parsererror').length) return null;
  const copy = (node) => {
    const allowed = CHART_ATTRS[node.localName];
    if (node.namespaceURI !== SVG_NS || !allowed) return null;
    const out = document.createElementNS(SVG_NS, node.localName);
    for (const name of allowed) {
      const v = node.getAttribute(name);
      if (v !== null && (!CHART_VALUES[name] || CHART_VALUES[name].test(v))) out.setAttribute(name, v);
    }
    for (const kid of node.childNodes) {
      if (kid.nodeType === Node.TEXT_NODE) out.append(document.createTextNode(kid.data));
      else if (kid.nodeType === Node.ELEMENT_NODE) {
        const k = copy(kid);
        if (k) out.append(k);
      }
    }
    return out;
  };
  return copy(root);
}

async function loadHistory() {
  if (!S.selected) return false;
  const r = await fetch(`/api/history?actor=${encodeURIComponent(S.selected)}`);
  S.history = await r.json();
  return S.history.length > 0;
}

async function stepTo(where) {
  if (!S.history && !(await loadHistory())) return;
  const n = S.history.length;
  if (where === 'first') S.step = 0;
  else if (where === 'back') S.step = S.step < 0 ? n - 1 : Math.max(0, S.step - 1);
  else if (where === 'fwd') {
    if (S.step >= 0 && S.step < n - 1) S.step++;
  }
  renderActor();
}

$('step-first').onclick = () => stepTo('first');
$('step-back').onclick = () => stepTo('back');
$('step-fwd').onclick = () => stepTo('fwd');
$('step-live').onclick = () => {
  S.history = null;
  S.step = -1;
  renderActor();
};

// ---------- event log ----------
// The server's `rowMatches` (inspector/hub.ts) is this rule, for a recorded log's rows it filters.
function matches(r) {
  if (r.k === 'restart') return true;
  const fa = $('f-actor').value;
  const ft = $('f-type').value;
  if (r.k === 'state' && !$('f-states').checked) return false;
  if (fa && r.sid !== fa && r.from !== fa) return false;
  if (ft && !(r.k === 'event' && typeKey(r.type) === ft)) return false;
  return true;
}

// One formatter for every row: toLocaleTimeString makes one per call (0.16 ms here, 250 rows a batch).
const TIME = new Intl.DateTimeFormat([], { hour: 'numeric', minute: 'numeric', second: 'numeric', hour12: false });

function row(r) {
  const t = new Date(r.t + S.toWall);
  const time = `${TIME.format(t)}.${String(t.getMilliseconds()).padStart(3, '0')}`;
  let actor = name(r.sid);
  let what = '';
  let detail = '';
  let cls = r.k;
  if (r.k === 'event') {
    what = r.type;
    detail = `${r.from ? `from ${name(r.from)} ` : ''}${JSON.stringify(r.data)}`;
  } else if (r.k === 'state') {
    what = `→ ${r.state}`;
    detail = `${r.status !== 'active' ? `${r.status} ` : ''}after ${r.event || '?'}`;
  } else if (r.k === 'actor') {
    actor = r.id;
    what = 'started';
    detail = r.parent ? `child of ${name(r.parent)}` : 'root actor';
  } else if (r.k === 'restart') {
    actor = S.meta.title || '';
    what = `restarted at ${time}`;
    detail = `${r.pid === r.was ? 'its inspector started again' : `a new process, pid ${r.pid} (was ${r.was})`}: the ${r.lost} events shown before are gone from this page`;
  } else if (r.k === 'dropped') {
    actor = '';
    what = `${r.count} events not logged`;
    detail = `over the page's budget: ${JSON.stringify(r.types)}`;
  }
  if (detail.length > 220) detail = `${detail.slice(0, 220)}…`;
  return el('div', { class: `row ${cls}`, onclick: () => r.sid && select(r.sid) },
    el('div', { class: 'head' }, el('span', { class: 't', text: time }), el('span', { class: 'a', text: actor }), el('span', { class: 'e', text: what, title: what })),
    detail ? el('div', { class: 'd', text: detail }) : null);
}

/**
 * Whether the log follows its newest rows: a state the reader changes by scrolling, not read from
 * where the log is scrolled after a batch. Rows off screen are laid out at an estimated height
 * (content-visibility in style.css) and grow as they come into view, so the end moved away after
 * each scroll to it and the log stopped following after a batch or two; and reading it after the
 * frame's changes laid the whole page out once more each frame (a fifth of the page's time with
 * a fleet under load).
 */
const follow = {
  on: true,
  /** The log is being scrolled by the page, not by the reader. */
  own: false,
  atEnd() {
    const box = $('log');
    return box.scrollHeight - box.scrollTop - box.clientHeight < 30;
  },
  /** To the end, when following. */
  pin() {
    if (!follow.on) return;
    const box = $('log');
    const end = box.scrollHeight - box.clientHeight;
    if (Math.abs(box.scrollTop - end) <= 1) return;
    follow.own = true;
    box.scrollTop = end;
  },
};
$('log').addEventListener('scroll', () => {
  if (follow.own) follow.own = false;
  else follow.on = follow.atEnd();
});
// Rows grow to their real height as they are laid out: the end moves, and a following log goes with it.
new ResizeObserver(() => follow.pin()).observe($('log-body'));

/**
 * A recorded log's rows as the server keeps them (/api/events): every row the log holds, read a
 * page at a time and filtered there. The page kept only the last 2000 the picture carried, so an
 * incident minutes before the end could not be reached by the list or its filters.
 */
const recordedRows = {
  /** The number of the first row shown, whether rows before it match too, how many match, how many there are. */
  first: null,
  more: false,
  matching: 0,
  total: 0,
  /** Answers to an older question are dropped (the filters changed since). */
  asked: 0,
  async load(before) {
    const q = new URLSearchParams({ limit: String(MAX_ROWS), actor: $('f-actor').value, type: $('f-type').value, states: $('f-states').checked ? '1' : '0' });
    if (before !== undefined) q.set('before', String(before));
    const asked = ++this.asked;
    const d = await (await fetch(`/api/events?${q}`, { cache: 'no-store' })).json();
    if (asked !== this.asked) return;
    for (const type of d.types) if (!S.types.has(type)) {
      S.types.add(type);
      addOption($('f-type'), type, type);
    }
    const body = $('log-body');
    const rows = d.rows.map(row);
    if (before === undefined) {
      body.replaceChildren(...rows);
      follow.on = true;
      follow.pin();
    } else {
      // Earlier rows go above the ones shown, which stay where the reader has them.
      const box = $('log');
      const height = box.scrollHeight;
      body.prepend(...rows);
      box.scrollTop += box.scrollHeight - height;
    }
    if (d.rows.length) this.first = d.rows[0].i;
    Object.assign(this, { more: d.more, matching: d.matching, total: d.total });
    $('log-earlier').hidden = !d.more;
    countLog();
  },
};
$('log-earlier').onclick = () => recordedRows.load(recordedRows.first ?? undefined);

function redrawLog() {
  if (S.meta.recorded) return void recordedRows.load();
  const rows = S.log.filter(matches).slice(-MAX_ROWS).map(row);
  $('log-body').replaceChildren(...rows);
  follow.on = true;
  follow.pin();
  countLog();
}

function appendLog(recs) {
  if (S.paused) {
    countLog();
    return;
  }
  const body = $('log-body');
  const rows = recs.filter(matches).slice(-MAX_ROWS).map(row);
  const extra = body.childElementCount + rows.length - MAX_ROWS;
  if (extra >= body.childElementCount) body.replaceChildren();
  else if (extra > 0) {
    const range = document.createRange();
    range.setStartBefore(body.firstElementChild);
    range.setEndAfter(body.children[extra - 1]);
    range.deleteContents();
  }
  body.append(...rows);
  follow.pin();
  countLog();
}

function countLog() {
  if (S.meta.recorded) {
    const r = recordedRows;
    const shown = $('log-body').childElementCount;
    $('log-count').textContent = `${shown} shown of ${r.matching === r.total ? `${r.total} recorded` : `${r.matching} matching, ${r.total} recorded`}`;
    return;
  }
  $('log-count').textContent = `${S.log.length} kept${S.paused ? ' · paused' : ''}`;
}

$('f-actor').onchange = redrawLog;
$('f-type').onchange = redrawLog;
$('f-states').onchange = redrawLog;
$('pause').onclick = () => {
  S.paused = !S.paused;
  $('pause').textContent = S.paused ? 'resume' : 'pause';
  $('pause').classList.toggle('on', S.paused);
  if (!S.paused) redrawLog();
  else countLog();
};

connect();
setInterval(tickAges, 1000);
setInterval(watchQuiet, 500);
