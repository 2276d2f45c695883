/**
 * A machine's statechart, read from its definition (`machine.root`) and drawn
 * as SVG: nested states as boxes, transitions with targets as labelled arrows,
 * transitions without a target (actions only) as lines inside their state.
 * Every state carries `data-state` and every transition `data-edge`, so the
 * page highlights the current state and the last transition by toggling classes.
 */

export interface ChartEdge {
  /** Stable within one machine: `source|EVENT|n`. */
  id: string;
  source: string;
  targets: string[];
  event: string;
  guard?: string;
}

export interface ChartState {
  id: string;
  key: string;
  type: string;
  children: ChartState[];
  initial?: string;
}

export interface Chart {
  machine: string;
  root: ChartState;
  edges: ChartEdge[];
  svg: string;
}

/** The parts of an XState StateNode the chart reads (kept structural so tests can build their own). */
export interface StateNodeLike {
  id: string;
  key: string;
  type: string;
  states: Record<string, StateNodeLike>;
  initial?: { target?: ReadonlyArray<{ id: string }> };
  transitions: Map<string, ReadonlyArray<TransitionLike>>;
  always?: ReadonlyArray<TransitionLike>;
}

export interface TransitionLike {
  eventType: string;
  target?: ReadonlyArray<{ id: string }>;
  guard?: unknown;
  source: { id: string };
}

function guardName(g: unknown): string | undefined {
  if (!g) return undefined;
  if (typeof g === 'string') return g;
  if (typeof g === 'function') return g.name || 'guard';
  if (typeof g === 'object' && typeof (g as { type?: unknown }).type === 'string') return (g as { type: string }).type;
  return 'guard';
}

/** Delayed transitions' events (`xstate.after.drainTimeout.server.online.draining`) read as `after drainTimeout`. */
function delayName(event: string, nodeId: string): string {
  if (!event.startsWith('xstate.after.')) return event;
  const rest = event.slice('xstate.after.'.length);
  return `after ${rest.endsWith(`.${nodeId}`) ? rest.slice(0, -nodeId.length - 1) : rest}`;
}

/**
 * Read the states and transitions of a machine. `edgeOf` maps each
 * transition object of the definition to its edge id, so an inspector can
 * name the transition a microstep took without formatting strings per event.
 */
export function readChart(root: StateNodeLike): { root: ChartState; edges: ChartEdge[]; edgeOf: Map<object, string> } {
  const edges: ChartEdge[] = [];
  const edgeOf = new Map<object, string>();
  const visit = (node: StateNodeLike): ChartState => {
    const counts = new Map<string, number>();
    const add = (t: TransitionLike, event: string): void => {
      const n = counts.get(event) ?? 0;
      counts.set(event, n + 1);
      const id = `${node.id}|${event}|${n}`;
      edges.push({ id, source: node.id, targets: (t.target ?? []).map((s) => s.id), event, guard: guardName(t.guard) });
      edgeOf.set(t, id);
    };
    for (const [event, list] of node.transitions) for (const t of list) add(t, delayName(event, node.id));
    for (const t of node.always ?? []) add(t, 'always');
    const children = Object.values(node.states).map(visit);
    return { id: node.id, key: node.key, type: node.type, children, initial: node.initial?.target?.[0]?.id };
  };
  const state = visit(root);
  return { root: state, edges, edgeOf };
}

// Layout: monospace text of a known size keeps width estimates honest.
const CH = 7.3;
const LINE = 15;
const HEAD = 24;
const PAD = 12;
const GAP_Y = 18;
const MIN_W = 96;

interface Box {
  state: ChartState;
  x: number;
  y: number;
  w: number;
  h: number;
  lines: ChartEdge[];
  children: Box[];
}

const contains = (outer: string, inner: string): boolean => inner === outer || inner.startsWith(`${outer}.`);

function edgeText(e: ChartEdge, from: string): string {
  const guard = e.guard ? ` [${e.guard}]` : '';
  if (!e.targets.length || e.targets.every((t) => t === from)) return `${e.event}${guard}`;
  return `${e.event}${guard} → ${e.targets.map((t) => t.slice(t.lastIndexOf('.') + 1)).join(', ')}`;
}

/** Transitions drawn as text inside their source: no target, the source itself, or a state inside it. */
function isLine(e: ChartEdge): boolean {
  return e.targets.length === 0 || e.targets.every((t) => contains(e.source, t));
}

function measure(state: ChartState, edges: ChartEdge[]): Box {
  const lines = edges.filter((e) => e.source === state.id && isLine(e));
  const children = state.children.map((c) => measure(c, edges));
  const textW = Math.max(state.key.length * CH + 2 * PAD, ...lines.map((l) => edgeText(l, state.id).length * CH + 2 * PAD), MIN_W);
  const headH = HEAD + lines.length * LINE;
  if (!children.length) return { state, x: 0, y: 0, w: textW, h: headH + 6, lines, children };
  // Columns by distance from the initial child along transitions between children.
  const childOf = (id: string): number => children.findIndex((c) => contains(c.state.id, id));
  const rank = new Array<number>(children.length).fill(-1);
  const start = Math.max(0, state.initial ? childOf(state.initial) : 0);
  rank[start] = 0;
  const queue = [start];
  while (queue.length) {
    const i = queue.shift()!;
    for (const e of edges) {
      if (childOf(e.source) !== i) continue;
      for (const t of e.targets) {
        const j = childOf(t);
        if (j >= 0 && rank[j] === -1) {
          rank[j] = rank[i]! + 1;
          queue.push(j);
        }
      }
    }
  }
  const maxRank = Math.max(...rank);
  for (let i = 0; i < rank.length; i++) if (rank[i] === -1) rank[i] = maxRank + 1;
  const columns: Box[][] = [];
  children.forEach((c, i) => (columns[rank[i]!] ??= []).push(c));
  const labelW = Math.max(0, ...edges.filter((e) => childOf(e.source) >= 0 && !isLine(e)).map((e) => (e.event.length + (e.guard ? e.guard.length + 3 : 0)) * CH));
  // Transitions between states of one column bulge out to its right, labels beside them: leave room.
  const sameColumn = new Set<number>();
  let bulgeW = 0;
  for (const e of edges) {
    const i = childOf(e.source);
    if (i < 0 || isLine(e)) continue;
    for (const t of e.targets) {
      const j = childOf(t);
      if (j >= 0 && j !== i && rank[j] === rank[i]) {
        sameColumn.add(rank[i]!);
        bulgeW = Math.max(bulgeW, (e.event.length + (e.guard ? e.guard.length + 3 : 0)) * CH + 40);
      }
    }
  }
  const baseGap = Math.max(48, Math.min(190, labelW + 28));
  let x = PAD;
  let bottom = 0;
  let gapX = baseGap;
  for (const [c, col] of columns.entries()) {
    if (!col) continue;
    gapX = sameColumn.has(c) ? Math.max(baseGap, bulgeW) : baseGap;
    let y = headH + PAD;
    let w = 0;
    for (const b of col) {
      b.x = x;
      b.y = y;
      y += b.h + GAP_Y;
      w = Math.max(w, b.w);
    }
    bottom = Math.max(bottom, y - GAP_Y);
    x += w + gapX;
  }
  const trailing = sameColumn.has(columns.length - 1) ? bulgeW : 0;
  const w = Math.max(textW, x - gapX + trailing + PAD);
  // Room under the boxes for arcs of transitions that go back to an earlier column.
  return { state, x: 0, y: 0, w, h: bottom + PAD + 34, lines, children };
}

function place(b: Box, dx: number, dy: number, out: Map<string, Box>): void {
  b.x += dx;
  b.y += dy;
  out.set(b.state.id, b);
  for (const c of b.children) place(c, b.x, b.y, out);
}

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Draw a chart as a standalone SVG string. */
export function drawChart(root: ChartState, edges: ChartEdge[]): string {
  const top = measure(root, edges);
  const boxes = new Map<string, Box>();
  place(top, 1, 1, boxes);
  const parts: string[] = [];
  const drawBox = (b: Box): void => {
    const kind = b.state.type === 'final' ? ' final' : b.children.length ? ' compound' : '';
    parts.push(`<g class="state${kind}" data-state="${esc(b.state.id)}">`);
    parts.push(`<rect x="${b.x}" y="${b.y}" width="${b.w}" height="${b.h}" rx="8"/>`);
    parts.push(`<text class="name" x="${b.x + PAD}" y="${b.y + 17}">${esc(b.state.key)}${b.state.type === 'final' ? ' ◉' : ''}</text>`);
    b.lines.forEach((l, i) => {
      parts.push(`<text class="edge-line" data-edge="${esc(l.id)}" x="${b.x + PAD}" y="${b.y + HEAD + 11 + i * LINE}">${esc(edgeText(l, b.state.id))}</text>`);
    });
    parts.push('</g>');
    for (const c of b.children) drawBox(c);
  };
  drawBox(top);
  // Initial-state markers.
  for (const b of boxes.values()) {
    if (!b.state.initial || !b.children.length) continue;
    const t = boxes.get(b.state.initial);
    if (t) parts.push(`<circle class="initial" cx="${t.x - 7}" cy="${t.y + 12}" r="4"/>`);
  }
  // Arrows, one path per (source, target) pair with stacked labels.
  const pairs = new Map<string, { from: Box; to: Box; edges: ChartEdge[] }>();
  for (const e of edges) {
    if (isLine(e)) continue;
    const from = boxes.get(e.source);
    for (const t of e.targets) {
      const to = boxes.get(t);
      if (!from || !to || contains(to.state.id, from.state.id)) continue;
      const k = `${from.state.id}>${to.state.id}`;
      const p = pairs.get(k) ?? { from, to, edges: [] };
      p.edges.push(e);
      pairs.set(k, p);
    }
  }
  let arc = 0;
  const bulges = new Map<string, number>();
  for (const { from, to, edges: es } of pairs.values()) {
    const ids = es.map((e) => esc(e.id)).join(' ');
    const labels = es.map((e) => `${e.event}${e.guard ? ` [${e.guard}]` : ''}`);
    const anchorY = (b: Box): number => b.y + Math.min(b.h / 2, 14);
    let d: string;
    let lx: number;
    let ly: number;
    let anchor = 'middle';
    if (to.x >= from.x + from.w) {
      // Forward: left to right; the label sits just before its target so fanned-out edges keep theirs apart.
      const x1 = from.x + from.w;
      const y1 = anchorY(from);
      const x2 = to.x;
      const y2 = anchorY(to);
      const mx = (x1 + x2) / 2;
      d = `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 2},${y2}`;
      lx = x2 - 6;
      ly = y2 - 6 - (labels.length - 1) * 13;
      anchor = 'end';
    } else if (to.x + to.w <= from.x) {
      // Backward: an arc under both boxes.
      const x1 = from.x + from.w / 2;
      const y1 = from.y + from.h;
      const x2 = to.x + to.w / 2 + 10;
      const y2 = to.y + to.h;
      const dip = Math.max(y1, y2) + 18 + (arc++ % 3) * 6;
      d = `M${x1},${y1} C${x1},${dip} ${x2},${dip} ${x2},${y2 + 2}`;
      lx = (x1 + x2) / 2;
      ly = dip - 2;
    } else {
      // Same column: a bulge out to the right, clear of the boxes in between.
      const col = `${Math.round(from.x + from.w)}`;
      const k = bulges.get(col) ?? 0;
      bulges.set(col, k + 1);
      const off = 26 + k * 16;
      const x1 = from.x + from.w;
      const y1 = anchorY(from) + 6;
      const x2 = to.x + to.w;
      const y2 = anchorY(to);
      const xr = Math.max(x1, x2) + off;
      d = `M${x1},${y1} C${xr},${y1} ${xr},${y2} ${x2 + 2},${y2}`;
      lx = xr - off / 4 + 4;
      ly = (y1 + y2) / 2 - (labels.length - 1) * 6.5;
      anchor = 'start';
    }
    parts.push(`<path class="edge" data-edge="${ids}" d="${d}" marker-end="url(#arrow)"/>`);
    es.forEach((e, i) => {
      parts.push(`<text class="edge-label" data-edge="${esc(e.id)}" x="${lx}" y="${ly + i * 13}" text-anchor="${anchor}">${esc(labels[i]!)}</text>`);
    });
  }
  const w = Math.ceil(top.w + 2);
  const h = Math.ceil(top.h + 2);
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 ${w} ${h}" width="${w}" height="${h}">` +
    '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">' +
    '<path d="M0,0 L10,5 L0,10 z"/></marker></defs>' +
    parts.join('') +
    '</svg>'
  );
}

/** Read and draw a machine's chart in one go. */
export function chartOf(machineId: string, root: StateNodeLike): Chart & { edgeOf: Map<object, string> } {
  const { root: state, edges, edgeOf } = readChart(root);
  return { machine: machineId, root: state, edges, svg: drawChart(state, edges), edgeOf };
}

/** Ids of a state value's active states, outermost first: `{online: 'registered'}` in `server` -> server, server.online, server.online.registered. */
export function activeIds(rootId: string, value: unknown): string[] {
  const out = [rootId];
  const walk = (prefix: string, v: unknown): void => {
    if (typeof v === 'string') out.push(`${prefix}.${v}`);
    else if (v && typeof v === 'object') {
      for (const [k, inner] of Object.entries(v)) {
        out.push(`${prefix}.${k}`);
        walk(`${prefix}.${k}`, inner);
      }
    }
  };
  walk(rootId, value);
  return out;
}
