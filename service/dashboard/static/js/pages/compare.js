// Compare: overlay several jobs' curves (say round 2 with hard-sample replay against random sampling,
// inherited against random initialisation) and put their results side by side, with the per-round or
// ablation tables that stages record in their summaries.

import { api } from '../api.js';
import { setQuery } from '../app.js';
import { LineChart, PALETTE } from '../chart.js';
import { badge, fmtAgo, fmtDuration, fmtNum, h, poll, replace, table } from '../dom.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const OTHER = [['lr', 'Learning rate'], ['grad_norm', 'Grad norm'], ['tokens_per_s', 'Tokens / s']];

// Summary values that are lists of records (the rounds of a rounds stage, an ablation's rows) become tables.
function summaryTables(job) {
  const out = [];
  for (const st of job.stages) {
    for (const [key, value] of Object.entries(st.summary || {})) {
      if (!Array.isArray(value) || !value.length || !value.every((r) => r && typeof r === 'object' && !Array.isArray(r))) continue;
      const cols = [...new Set(value.flatMap((r) => Object.keys(r)))];
      // a nested record (a round's selection) shows its first few plain values; all of them on hover
      const flat = (v) => Object.entries(v).filter(([, x]) => x != null && typeof x !== 'object')
        .map(([k, x]) => `${k}=${typeof x === 'number' ? fmtNum(x) : x}`);
      const cell = (v, c) => {
        const cls = c.includes('checkpoint') || c === 'parent' ? 'path' : '';
        if (v != null && typeof v === 'object') {
          const all = flat(v);
          return h('td', { title: all.join('\n') }, all.slice(0, 4).join(', ') + (all.length > 4 ? ', …' : ''));
        }
        return h('td', { class: cls }, v == null ? '–' : typeof v === 'number' ? fmtNum(v) : String(v));
      };
      out.push(h('div', { class: 'summary-table', dataset: { job: job.id, stage: st.name, key } },
        h('h3', {}, `${job.name} · ${st.name} · ${key}`),
        table(cols, value.map((r) => h('tr', {}, cols.map((c) => cell(r[c], c)))))));
    }
  }
  return out;
}

function lastValue(series, key, split) {
  const s = series.filter((x) => x.key === key && x.split === split && x.points.length);
  if (!s.length) return null;
  const pts = s[s.length - 1].points;
  return pts[pts.length - 1][1];
}

export function comparePage(root, query) {
  root.dataset.page = 'compare';
  const ids = (query.get('ids') || '').split(',').filter(Boolean);
  const selected = new Set(ids);
  const other = h('select', { id: 'compare-metric', 'aria-label': 'third chart' }, OTHER.map(([k, t]) => h('option', { value: k }, t)));
  const charts = {
    train: new LineChart({ title: 'Training loss' }),
    val: new LineChart({ title: 'Held-out loss' }),
    other: new LineChart({ title: 'Learning rate' }),
  };
  charts.train.el.id = 'compare-train';
  charts.val.el.id = 'compare-val';
  charts.other.el.id = 'compare-other';
  const filter = h('input', { type: 'search', id: 'compare-filter', placeholder: 'filter jobs by name' });
  const picker = h('div', { class: 'picker', id: 'compare-picker' });
  const summary = h('div', { id: 'compare-summary' });
  const tables = h('div', { id: 'compare-tables' });
  const data = new Map(); // job id -> {job, series}
  let candidates = [];

  function toggle(id, on) {
    on ? selected.add(id) : selected.delete(id);
    const q = new URLSearchParams();
    if (selected.size) q.set('ids', [...selected].join(','));
    setQuery(q);
    refresh.now();
  }

  function renderPicker() {
    const f = filter.value.trim().toLowerCase();
    const known = new Map(candidates.map((j) => [j.id, j]));
    for (const [id, d] of data) if (!known.has(id)) known.set(id, d.job);
    const rows = [...known.values()].filter((j) => selected.has(j.id) || !f || j.name.toLowerCase().includes(f)).slice(0, 60);
    replace(picker, rows.map((j) => h('label', { class: 'pick', dataset: { jobId: j.id } },
      h('input', { type: 'checkbox', checked: selected.has(j.id), onchange: (e) => toggle(j.id, e.target.checked) }),
      h('span', { class: 'pick-name' }, j.name), badge(j.status), h('span', { class: 'muted small' }, fmtAgo(j.created_at)))));
  }

  async function load() {
    candidates = (await api('/v1/jobs', { query: { limit: 100 } })).items;
    const maxPoints = Math.min(2000, charts.train.pixelWidth);
    await Promise.all([...selected].map(async (id) => {
      const have = data.get(id);
      if (have && TERMINAL.has(have.job.status) && have.maxPoints >= maxPoints) return; // finished: nothing new
      try {
        const [job, m] = await Promise.all([
          api(`/v1/jobs/${encodeURIComponent(id)}`),
          api(`/v1/jobs/${encodeURIComponent(id)}/metrics`, { query: { keys: 'loss,lr,grad_norm,tokens_per_s', max_points: maxPoints } }),
        ]);
        data.set(id, { job, series: m.series, maxPoints });
      } catch (e) {
        if (e.status === 404) { selected.delete(id); data.delete(id); } else throw e;
      }
    }));
    for (const id of [...data.keys()]) if (!selected.has(id)) data.delete(id);
    render();
  }

  function render() {
    renderPicker();
    const picked = [...selected].map((id) => data.get(id)).filter(Boolean);
    const names = picked.map((r) => r.job.name);
    const label = (r) => (names.filter((n) => n === r.job.name).length > 1 ? `${r.job.name} (${r.job.id.slice(-6)})` : r.job.name);
    const build = (key, split) => picked.flatMap((r, i) => {
      const ss = r.series.filter((s) => s.key === key && (!split || s.split === split) && (split || s.split === 'train'));
      const multi = new Set(ss.map((s) => s.stage)).size > 1;
      return ss.map((s, k) => ({ label: multi ? `${label(r)} · ${s.stage}` : label(r), points: s.points, count: s.count,
        downsampled: s.downsampled, color: PALETTE[i % PALETTE.length], dashed: k % 2 === 1 }));
    });
    charts.train.setSeries(build('loss', 'train'));
    charts.val.setSeries(build('loss', 'val'));
    charts.other.title = OTHER.find(([k]) => k === other.value)[1];
    charts.other.el.querySelector('figcaption span').textContent = charts.other.title;
    charts.other.setSeries(build(other.value));
    replace(summary, picked.length ? table(['', 'Job', 'Status', 'Stages', 'Steps', 'Last train loss', 'Held-out loss', 'Bits / byte', 'Tokens', 'Run time'],
      picked.map((r, i) => {
        const sums = r.job.stages.map((s) => s.summary || {});
        const lastWith = (k) => [...sums].reverse().find((s) => s[k] != null)?.[k];
        const sw = h('i', { class: 'sw' });
        sw.style.borderColor = PALETTE[i % PALETTE.length];
        const run = r.job.started_at ? (r.job.finished_at || Date.now() / 1000) - r.job.started_at : null;
        return h('tr', { dataset: { jobId: r.job.id } }, h('td', {}, sw),
          h('td', {}, h('a', { href: `#/jobs/${encodeURIComponent(r.job.id)}` }, label(r))), h('td', {}, badge(r.job.status)),
          h('td', {}, r.job.stages.map((s) => s.name).join(' → ')),
          h('td', {}, fmtNum(r.job.stages.reduce((n, s) => n + (s.step || 0), 0))),
          h('td', {}, fmtNum(lastValue(r.series, 'loss', 'train'))),
          h('td', {}, fmtNum(lastWith('val_loss') ?? lastValue(r.series, 'loss', 'val'))),
          h('td', {}, fmtNum(lastWith('val_bpb'))), h('td', {}, fmtNum(lastWith('tokens'))),
          h('td', {}, run != null ? fmtDuration(run) : '–'));
      }), 'compare') : h('p', { class: 'empty' }, 'Pick two or more jobs to overlay their curves.'));
    replace(tables, picked.flatMap((r) => summaryTables(r.job)));
  }

  filter.addEventListener('input', renderPicker);
  other.addEventListener('change', render);
  root.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Compare jobs')),
    h('div', { class: 'compare-layout' },
      h('aside', { class: 'card' }, h('h2', {}, 'Jobs'), filter, picker),
      h('div', {},
        h('section', { class: 'card' }, h('div', { class: 'charts' }, charts.train.el, charts.val.el,
          h('div', { class: 'chart-with-select' }, other, charts.other.el))),
        h('section', { class: 'card' }, h('h2', {}, 'Results'), summary, tables))));
  const refresh = poll(load, 3000);
  return () => { refresh.stop(); Object.values(charts).forEach((c) => c.destroy()); };
}
