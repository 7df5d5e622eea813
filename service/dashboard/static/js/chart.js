// A small canvas line chart: several series, a min/max band where the server downsampled (points
// [step, mean, min, max]), hover read-out, optional log y. The API caps points per series (max_points),
// so drawing stays cheap whatever the run's length.

import { h, fmtNum } from './dom.js';

export const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777',
  '#4b5563', '#65a30d'];

// Round tick positions covering [lo, hi]; also the step, for labels with just enough decimals.
function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((x) => x >= raw) || raw;
  const ticks = [];
  for (let v = Math.floor(lo / step) * step; v < hi + step * 0.999; v += step) ticks.push(+v.toPrecision(12));
  return { ticks, step };
}

function tickLabel(v, step) {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-4) return v.toExponential(step / a < 0.01 ? 2 : 1);
  const decimals = Math.min(6, (String(+step.toPrecision(6)).split('.')[1] || '').length); // 2.5 -> 1, 0.0005 -> 4
  return v.toLocaleString(undefined, { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
}

function lowerBound(points, x) {
  let lo = 0, hi = points.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (points[mid][0] < x) lo = mid + 1; else hi = mid; }
  return lo;
}

export class LineChart {
  constructor({ title, logY = false, height = 200, unit = '' }) {
    this.title = title;
    this.logY = logY;
    this.unit = unit;
    this.series = [];
    this.hoverX = null;
    this.canvas = h('canvas', { role: 'img', 'aria-label': title });
    this.legend = h('div', { class: 'legend' });
    this.tip = h('div', { class: 'chart-tip', hidden: true });
    this.empty = h('div', { class: 'chart-empty' }, 'no points yet');
    this.el = h('figure', { class: 'chart', dataset: { title } },
      h('figcaption', {}, h('span', {}, title), this.legend),
      h('div', { class: 'plot' }, this.canvas, this.tip, this.empty));
    this.el.querySelector('.plot').style.height = `${height}px`;
    this.canvas.addEventListener('mousemove', (e) => this.hover(e));
    this.canvas.addEventListener('mouseleave', () => { this.hoverX = null; this.tip.hidden = true; this.schedule(); });
    this.resizer = new ResizeObserver(() => this.schedule());
    this.resizer.observe(this.el);
  }

  // A width in CSS pixels: how many points per series are worth asking the server for.
  get pixelWidth() { return Math.max(100, Math.round(this.canvas.clientWidth || 600)); }

  // series: [{label, color, points: [[x, y] | [x, mean, min, max]], count, downsampled, dashed}]
  setSeries(series) {
    this.series = series.map((s, i) => ({ color: PALETTE[i % PALETTE.length], ...s }));
    const total = this.series.reduce((n, s) => n + s.points.length, 0);
    const recorded = this.series.reduce((n, s) => n + (s.count ?? s.points.length), 0);
    Object.assign(this.canvas.dataset, {
      points: String(total), recorded: String(recorded), series: String(this.series.length),
      downsampled: String(this.series.some((s) => s.downsampled)),
      lastStep: String(Math.max(0, ...this.series.map((s) => (s.points.length ? s.points[s.points.length - 1][0] : 0)))),
    });
    this.canvas.setAttribute('aria-label', `${this.title}: ${this.series.length} series, ${recorded} points`);
    this.empty.hidden = total > 0;
    this.legend.replaceChildren(...this.series.map((s) => {
      const sw = h('i', { class: s.dashed ? 'sw dashed' : 'sw' });
      sw.style.borderColor = s.color;
      return h('span', { class: 'item', title: s.downsampled ? `${s.count} points, downsampled to ${s.points.length}` : '' },
        sw, s.label);
    }));
    this.schedule();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.draw(); });
  }

  destroy() { this.resizer.disconnect(); cancelAnimationFrame(this.frame); }

  ty(v) { return this.logY ? Math.log10(Math.max(v, 1e-12)) : v; }

  layout() {
    const dpr = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth, hgt = this.canvas.clientHeight;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(hgt * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(hgt * dpr);
    }
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const s of this.series) {
      for (const p of s.points) {
        x0 = Math.min(x0, p[0]); x1 = Math.max(x1, p[0]);
        const lo = this.ty(p.length > 2 ? p[2] : p[1]), hi = this.ty(p.length > 2 ? p[3] : p[1]);
        if (isFinite(lo)) y0 = Math.min(y0, lo);
        if (isFinite(hi)) y1 = Math.max(y1, hi);
      }
    }
    if (!isFinite(x0)) return null;
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    const Y = niceTicks(y0, y1, Math.max(2, Math.floor(hgt / 50)));
    const yt = Y.ticks;
    y0 = yt[0]; y1 = yt[yt.length - 1]; // the axis ends on round values
    const pad = { l: 58, r: 12, t: 8, b: 24 };
    if (w < 360) pad.l = 48;
    const X = niceTicks(x0, x1, Math.max(2, Math.floor(w / 90)));
    return { dpr, w, hgt, pad, x0, x1, y0, y1, yt, yStep: Y.step, xt: X.ticks, xStep: X.step };
  }

  draw() {
    const L = this.layout();
    const ctx = this.canvas.getContext('2d');
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    if (!L) return;
    this.L = L;
    const { dpr, w, hgt, pad, x0, x1, y0, y1 } = L;
    ctx.scale(dpr, dpr);
    const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (w - pad.l - pad.r);
    const Y = (y) => hgt - pad.b - ((this.ty(y) - y0) / (y1 - y0 || 1)) * (hgt - pad.t - pad.b);
    this.X = X;
    const style = getComputedStyle(this.el);
    const grid = style.getPropertyValue('--grid') || '#e5e7eb', ink = style.getPropertyValue('--muted') || '#6b7280';
    ctx.font = '11px system-ui, sans-serif';
    ctx.lineWidth = 1;
    ctx.strokeStyle = grid;
    ctx.fillStyle = ink;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (const t of L.yt) {
      const y = hgt - pad.b - ((t - y0) / (y1 - y0 || 1)) * (hgt - pad.t - pad.b);
      ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
      ctx.fillText(this.logY ? fmtNum(10 ** t) : tickLabel(t, L.yStep), pad.l - 6, y);
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (const t of L.xt) {
      if (t < x0 || t > x1) continue;
      const label = tickLabel(t, L.xStep), half = ctx.measureText(label).width / 2;
      ctx.fillText(label, Math.min(X(t), w - half - 1), hgt - pad.b + 6); // the last label stays inside
    }
    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.l, pad.t, w - pad.l - pad.r, hgt - pad.t - pad.b);
    ctx.clip();
    for (const s of this.series) {
      const pts = s.points;
      if (!pts.length) continue;
      if (pts[0].length > 2) { // the band between each bucket's min and max
        ctx.beginPath();
        pts.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), Y(p[3])) : ctx.moveTo(X(p[0]), Y(p[3]))));
        for (let i = pts.length - 1; i >= 0; i--) ctx.lineTo(X(pts[i][0]), Y(pts[i][2]));
        ctx.closePath();
        ctx.globalAlpha = 0.15;
        ctx.fillStyle = s.color;
        ctx.fill();
        ctx.globalAlpha = 1;
      }
      ctx.beginPath();
      ctx.setLineDash(s.dashed ? [5, 4] : []);
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 1.6;
      pts.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
      if (pts.length === 1) { ctx.arc(X(pts[0][0]), Y(pts[0][1]), 2.5, 0, 2 * Math.PI); ctx.fillStyle = s.color; ctx.fill(); }
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.restore();
    if (this.hoverX != null) {
      ctx.strokeStyle = ink;
      ctx.beginPath(); ctx.moveTo(X(this.hoverX), pad.t); ctx.lineTo(X(this.hoverX), hgt - pad.b); ctx.stroke();
    }
  }

  hover(e) {
    const L = this.L;
    if (!L) return;
    const rect = this.canvas.getBoundingClientRect();
    const px = e.clientX - rect.left;
    const x = L.x0 + ((px - L.pad.l) / (L.w - L.pad.l - L.pad.r)) * (L.x1 - L.x0);
    const rows = [];
    let snap = null;
    for (const s of this.series) {
      if (!s.points.length) continue;
      let i = Math.min(lowerBound(s.points, x), s.points.length - 1);
      if (i > 0 && Math.abs(s.points[i - 1][0] - x) < Math.abs(s.points[i][0] - x)) i--;
      const p = s.points[i];
      snap = snap ?? p[0];
      const sw = h('i', { class: 'sw' });
      sw.style.borderColor = s.color;
      rows.push(h('div', {}, sw, `${s.label}: ${fmtNum(p[1])}${p.length > 2 ? ` (${fmtNum(p[2])}…${fmtNum(p[3])})` : ''}`,
        h('span', { class: 'muted' }, ` @ ${fmtNum(p[0])}`)));
    }
    if (!rows.length) return;
    this.hoverX = snap;
    this.tip.replaceChildren(h('div', { class: 'muted' }, `step ≈ ${fmtNum(Math.round(x))}`), ...rows);
    this.tip.hidden = false;
    this.tip.style.left = `${Math.min(px + 12, rect.width - 200)}px`;
    this.schedule();
  }
}

// API metric series -> chart series. `name` labels a series; split "val" is drawn dashed.
export function toChartSeries(apiSeries, name = (s) => `${s.stage} ${s.split}`) {
  return apiSeries.map((s) => ({
    label: name(s), points: s.points, count: s.count, downsampled: s.downsampled, dashed: s.split !== 'train',
  }));
}
