// DOM building and formatting. Every text from the server goes in as a text node (never as HTML),
// so job names, labels and log lines cannot inject markup.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (['value', 'checked', 'disabled', 'selected', 'hidden'].includes(k)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

export function append(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  return append(clear(el), children);
}

// ------------------------------------------------------------------ formatting

const STATUSES = new Set(['queued', 'running', 'succeeded', 'failed', 'cancelled', 'pending', 'skipped', 'lost',
  'idle', 'busy', 'stopped']);

export function badge(status) {
  const known = STATUSES.has(status) ? status : 'unknown';
  return h('span', { class: `badge st-${known}`, dataset: { status: String(status) } }, String(status));
}

export function fmtDuration(sec) {
  if (sec == null || !isFinite(sec)) return '–';
  sec = Math.max(0, Math.round(sec));
  if (sec < 60) return `${sec}s`;
  const m = Math.floor(sec / 60), r = sec % 60;
  if (m < 60) return `${m}m ${String(r).padStart(2, '0')}s`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs}h ${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(hrs / 24)}d ${hrs % 24}h`;
}

export function fmtAgo(epoch) {
  if (epoch == null) return '–';
  const d = Date.now() / 1000 - epoch;
  if (d < 5) return 'just now';
  return `${fmtDuration(d)} ago`;
}

export function fmtTime(epoch) {
  if (epoch == null) return '–';
  return new Date(epoch * 1000).toLocaleString();
}

export function fmtClock(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString([], { hour12: false });
}

export function fmtBytes(n) {
  if (n == null) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

export function fmtNum(v) {
  if (v == null || typeof v !== 'number' || !isFinite(v)) return v == null ? '–' : String(v);
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (Number.isInteger(v) && a < 1e6) return v.toLocaleString();
  if (a >= 1e6) return v.toExponential(2);
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(3);
  if (a >= 1e-3) return v.toPrecision(3);
  return v.toExponential(2);
}

export function resourcesText(r) {
  if (!r) return '–';
  let t = `${r.backend} × ${r.devices_per_node}`;
  if (r.nodes > 1) t += ` × ${r.nodes} nodes`;
  if (r.launcher !== 'local') t += ` (${r.launcher})`;
  return t;
}

export function progress(step, total) {
  const pct = step != null && total ? Math.min(100, (100 * step) / total) : 0;
  const bar = h('div', { class: 'bar' }, h('div', { class: 'fill' }));
  bar.firstChild.style.width = `${pct.toFixed(1)}%`;
  return h('div', { class: 'progress' }, bar,
    h('span', { class: 'steps' }, step != null ? `${step.toLocaleString()} / ${total != null ? total.toLocaleString() : '?'}` : '–'));
}

export function labelChips(labels) {
  return Object.entries(labels || {}).map(([k, v]) => h('span', { class: 'chip' }, v === '' ? k : `${k}=${v}`));
}

export function table(headers, rows, cls = '') {
  return h('div', { class: 'table-wrap' },
    h('table', { class: cls },
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))),
      h('tbody', {}, rows)));
}

// A modal confirmation (an in-page <dialog>, not window.confirm).
export function confirmDialog(title, message, okText = 'OK', danger = false) {
  return new Promise((resolve) => {
    const dlg = h('dialog', { class: 'confirm', 'aria-label': title },
      h('h3', {}, title), h('p', {}, message),
      h('div', { class: 'actions' },
        h('button', { class: 'btn', value: 'cancel', onclick: () => dlg.close('cancel') }, 'Keep it'),
        h('button', { class: danger ? 'btn danger' : 'btn primary', value: 'ok', onclick: () => dlg.close('ok') }, okText)));
    dlg.addEventListener('close', () => { dlg.remove(); resolve(dlg.returnValue === 'ok'); });
    document.body.append(dlg);
    dlg.showModal();
  });
}

export function toast(message, kind = 'info') {
  let box = document.getElementById('toasts');
  if (!box) { box = h('div', { id: 'toasts', role: 'status' }); document.body.append(box); }
  const t = h('div', { class: `toast ${kind}` }, message);
  box.append(t);
  setTimeout(() => t.remove(), 5000);
}

// Runs fn now and then every `ms` after it finished, while the page is visible. now() runs it again
// at once (after the run in progress, if any); stop() ends it.
export function poll(fn, ms) {
  let timer = null, stopped = false, running = false, again = false;
  const tick = async () => {
    clearTimeout(timer);
    if (stopped) return;
    if (running) { again = true; return; }
    running = true;
    try {
      if (!document.hidden) await fn();
    } catch (e) {
      if (!stopped) console.warn('poll', e);
    } finally {
      running = false;
    }
    if (!stopped) timer = setTimeout(tick, again ? 0 : ms);
    again = false;
  };
  tick();
  return { stop() { stopped = true; clearTimeout(timer); }, now: tick };
}
