// The inspector page: plain browser JavaScript, no libraries, nothing fetched
// from outside this server. Fed by /events (Server-Sent Events).
'use strict';

const MAX_LOG = 5000;
const MAX_ROWS = 1500;
const $ = (id) => document.getElementById(id);

const S = {
  meta: {},
  actors: new Map(),
  charts: {},
  pools: [],
  conns: [],
  figures: null,
  log: [],
  types: new Set(),
  selected: null,
  history: null, // recorded states of the selected actor while stepping
  step: -1,
  paused: false,
};

// ---------- feed ----------
function connect() {
  const es = new EventSource('/events');
  es.addEventListener('full', (m) => {
    const d = JSON.parse(m.data);
    S.meta = d.meta;
    S.charts = d.charts;
    S.actors = new Map(d.actors.map((a) => [a.sid, a]));
    S.log = [];
    S.types = new Set();
    mergeRecs(d.recs);
    S.pools = d.pools;
    S.conns = d.conns;
    S.figures = d.figures;
    if (!S.selected || !S.actors.has(S.selected)) S.selected = firstActor();
    linkBadge(S.meta.recorded ? 'recorded' : 'live');
    renderAll();
  });
  es.addEventListener('batch', (m) => {
    const d = JSON.parse(m.data);
    for (const a of d.actors) S.actors.set(a.sid, a);
    const added = mergeRecs(d.recs);
    S.pools = d.pools;
    S.conns = d.conns;
    if (d.figures) S.figures = d.figures;
    if (!S.selected) S.selected = firstActor();
    renderTree();
    renderPools();
    renderConns();
    renderFigures();
    renderActor();
    appendLog(added);
  });
  es.onerror = () => linkBadge(S.meta.recorded ? 'recorded' : 'down');
}

function mergeRecs(recs) {
  const added = [];
  for (const r of recs) {
    if (r.k === 'chart') {
      S.charts[r.machine] = r.chart;
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
    if (r.k === 'event' && !S.types.has(r.type)) {
      S.types.add(r.type);
      addOption($('f-type'), r.type, r.type);
    }
    S.log.push(r);
    added.push(r);
  }
  if (S.log.length > MAX_LOG) S.log.splice(0, S.log.length - MAX_LOG);
  return added;
}

function firstActor() {
  for (const a of S.actors.values()) if (a.machine === 'pool' && a.status === 'active') return a.sid;
  for (const a of S.actors.values()) if (a.machine && !a.parent) return a.sid;
  return null;
}

function linkBadge(kind) {
  const b = $('link');
  b.className = `badge ${kind}`;
  b.textContent = kind === 'live' ? 'live' : kind === 'recorded' ? 'recorded log' : 'disconnected';
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

function renderTree() {
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
  const have = new Set([...sel.options].map((o) => o.value));
  for (const a of S.actors.values()) if (!have.has(a.sid)) addOption(sel, a.sid, a.id);
  for (const o of sel.options) if (o.value) o.textContent = name(o.value);
}

function addOption(sel, value, text) {
  sel.append(el('option', { value, text }));
}

function renderPools() {
  const box = $('pools');
  if (!S.pools.length) return;
  box.replaceChildren(...S.pools.map((p) => {
    const members = p.members.map((m) => member(m, m.id === p.next));
    const gone = p.gone.map((m) => member(m, false));
    return el('div', { class: 'pool', 'data-policy': p.policy, 'data-cursor': String(p.cursor), 'data-next': p.next || '' },
      el('h3', {}, el('span', { text: `policy ${p.policy}` }), el('span', { class: 'badge', text: p.state }),
        el('span', { class: 'meta', text: `cursor ${p.cursor} · ${p.routed} routed` })),
      el('div', { class: 'members' }, ...members, ...gone));
  }));
}

function member(m, isNext) {
  return el('div', { class: `member${isNext ? ' next' : ''}`, 'data-member': m.id, 'data-state': m.state, title: m.reason || '' },
    el('div', { class: 'id', text: m.id }),
    el('div', { class: 'ms', text: m.state }),
    el('div', { class: 'counts', text: `${m.answered} answered · ${m.errors} errors` }),
    m.reason ? el('div', { class: 'reason', text: m.reason }) : null);
}

function renderConns() {
  if (!S.conns.length) {
    $('conns').replaceChildren(el('li', { class: 'muted', text: 'none seen yet' }));
    return;
  }
  $('conns').replaceChildren(...S.conns.map((c) =>
    el('li', { class: c.closed ? 'closed' : '', title: c.closed ? 'closed' : 'open' },
      document.createTextNode(`#${c.id} ${c.role}${c.peer.startsWith('unknown') ? '' : ` ${c.peer}`}${c.outstanding ? ` · ${c.outstanding} waiting` : ''}`))));
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
      box.innerHTML = chart.svg;
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
  $('step-info').textContent = shown ? `${new Date(shown.t).toLocaleTimeString()} · after ${shown.event || '?'}${shown.changed ? ' · state changed' : ''}` : `${a.events} events${a.event ? ` · last ${a.event}` : ''}`;
  $('step-live').classList.toggle('on', !!shown);
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
function matches(r) {
  const fa = $('f-actor').value;
  const ft = $('f-type').value;
  if (r.k === 'state' && !$('f-states').checked) return false;
  if (fa && r.sid !== fa && r.from !== fa) return false;
  if (ft && !(r.k === 'event' && r.type === ft)) return false;
  return true;
}

function row(r) {
  const t = new Date(r.t);
  const time = `${t.toLocaleTimeString([], { hour12: false })}.${String(t.getMilliseconds()).padStart(3, '0')}`;
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

function atBottom() {
  const box = $('log');
  return box.scrollHeight - box.scrollTop - box.clientHeight < 30;
}

function redrawLog() {
  const rows = S.log.filter(matches).slice(-MAX_ROWS).map(row);
  $('log-body').replaceChildren(...rows);
  $('log').scrollTop = $('log').scrollHeight;
  countLog();
}

function appendLog(recs) {
  if (S.paused) {
    countLog();
    return;
  }
  const stick = atBottom();
  const body = $('log-body');
  for (const r of recs) if (matches(r)) body.append(row(r));
  while (body.childElementCount > MAX_ROWS) body.firstElementChild.remove();
  if (stick) $('log').scrollTop = $('log').scrollHeight;
  countLog();
}

function countLog() {
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
