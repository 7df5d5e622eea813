// Lineage: what a stage was made from (tokenizer -> parent -> inherited child -> round 1 -> round 2 ->
// export), from GET /v1/stages/{id}/lineage, drawn left to right in layers.

import { api } from '../api.js';
import { badge, h, replace, s, table } from '../dom.js';

const W = 176, H = 58, GAP_X = 74, GAP_Y = 22, PAD = 16;

function layers(nodes, edges) {
  const preds = new Map(nodes.map((n) => [n.id, []]));
  for (const e of edges) preds.get(e.to)?.push(e.from);
  const depth = new Map();
  const visit = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0; // a cycle would be a server bug; do not loop on it
    seen.add(id);
    const d = Math.max(-1, ...preds.get(id).map((p) => visit(p, seen))) + 1;
    depth.set(id, d);
    return d;
  };
  nodes.forEach((n) => visit(n.id));
  const cols = [];
  for (const n of nodes) (cols[depth.get(n.id)] ||= []).push(n);
  // order each column by the mean row of its inputs (fewer crossings)
  const row = new Map();
  cols.forEach((col) => {
    col.sort((a, b) => mean(preds.get(a.id).map((p) => row.get(p))) - mean(preds.get(b.id).map((p) => row.get(p))));
    col.forEach((n, i) => row.set(n.id, i));
  });
  return cols;
}

function mean(xs) { const v = xs.filter((x) => x != null); return v.length ? v.reduce((a, b) => a + b, 0) / v.length : 0; }

function tail(path, parts = 2) { return path.split('/').filter(Boolean).slice(-parts).join('/'); }

function clip(text, n) { return text.length > n ? `${text.slice(0, n - 1)}…` : text; }

export function lineagePage(root, stageId) {
  root.dataset.page = 'lineage';
  const graph = h('div', { class: 'lineage-graph', id: 'lineage-graph' }, h('p', { class: 'muted' }, 'loading…'));
  const list = h('div', { id: 'lineage-edges' });
  const title = h('h1', {}, 'Lineage');
  const back = h('a', { class: 'back', href: '#/jobs' }, '← Jobs');
  root.append(h('div', { class: 'page-head' }, h('div', {}, back, title)),
    h('section', { class: 'card' }, graph), h('section', { class: 'card' }, h('h2', {}, 'Inputs'), list));

  (async () => {
    let data;
    try {
      data = await api(`/v1/stages/${encodeURIComponent(stageId)}/lineage`);
    } catch (e) {
      replace(graph, h('p', { class: 'notice error' }, e.message));
      return;
    }
    const byId = new Map(data.nodes.map((n) => [n.id, n]));
    const start = byId.get(stageId);
    if (start?.job_id) { back.href = `#/jobs/${encodeURIComponent(start.job_id)}`; back.textContent = '← Job'; }
    if (start) replace(title, 'Lineage of ', h('span', { id: 'lineage-stage' }, start.stage || start.id));
    // one arrow per pair of nodes; a named role (checkpoint, tokenizer) says more than a plain "input"
    const pairs = new Map();
    for (const e of data.edges) {
      const k = `${e.from}\n${e.to}`;
      (pairs.get(k) || pairs.set(k, { from: e.from, to: e.to, roles: [] }).get(k)).roles.push(e.role);
    }
    const edges = [...pairs.values()].map((e) => {
      const named = [...new Set(e.roles)].filter((r) => r !== 'input');
      return { from: e.from, to: e.to, role: named.length ? named.join(', ') : 'input' };
    });
    const cols = layers(data.nodes, edges);
    const pos = new Map();
    const tallest = Math.max(...cols.map((c) => c.length));
    cols.forEach((col, x) => col.forEach((n, y) => {
      const offset = ((tallest - col.length) * (H + GAP_Y)) / 2;
      pos.set(n.id, { x: PAD + x * (W + GAP_X), y: PAD + offset + y * (H + GAP_Y) });
    }));
    const width = PAD * 2 + cols.length * W + (cols.length - 1) * GAP_X;
    const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y;
    const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': `lineage of ${start?.stage || stageId}` });
    for (const e of edges) {
      const a = pos.get(e.from), b = pos.get(e.to);
      if (!a || !b) continue;
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      svg.append(s('path', { class: 'edge', d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2 - 6},${y2}`, 'marker-end': 'url(#arrow)' }),
        s('text', { class: 'edge-label', x: mx, y: (y1 + y2) / 2 - 4, 'text-anchor': 'middle' }, e.role));
    }
    svg.prepend(s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 5, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      s('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrowhead' }))));
    for (const n of data.nodes) {
      const p = pos.get(n.id);
      const isStage = n.type === 'stage';
      const g = s('g', { class: `node ${isStage ? `stage st-${n.status}` : 'path'}${n.id === stageId ? ' focus' : ''}`, transform: `translate(${p.x},${p.y})`,
        'data-node': n.id, tabindex: isStage ? 0 : null },
      s('title', {}, isStage ? `${n.stage} (${n.kind}) — ${n.status}\njob ${n.job_id}` : n.path),
      s('rect', { width: W, height: H, rx: 8 }),
      s('text', { x: 10, y: 22, class: 'node-title' }, isStage ? clip(n.stage, 20) : clip(tail(n.path), 24)),
      s('text', { x: 10, y: 42, class: 'node-sub' }, isStage ? `${n.kind} · ${n.status}` : 'input path'));
      if (isStage) {
        const open = () => { location.hash = `#/jobs/${encodeURIComponent(n.job_id)}`; };
        g.addEventListener('click', open);
        g.addEventListener('keydown', (e) => { if (e.key === 'Enter') open(); });
      }
      svg.append(g);
    }
    replace(graph, svg);
    const label = (n) => (n.type === 'stage' ? `${n.stage} (${n.kind})` : n.path);
    replace(list, table(['From', 'As', 'Into'], edges.map((e) => {
      const from = byId.get(e.from), to = byId.get(e.to);
      const cell = (n) => (n.type === 'stage'
        ? h('td', {}, h('a', { href: `#/jobs/${encodeURIComponent(n.job_id)}` }, label(n)), ' ', badge(n.status))
        : h('td', { class: 'path' }, n.path));
      return h('tr', {}, cell(from), h('td', {}, h('code', {}, e.role)), cell(to));
    })));
  })();
  return null;
}
