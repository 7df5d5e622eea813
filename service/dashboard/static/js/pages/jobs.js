// Jobs: a live table (status, stage progress, step / total, ETA, backend and devices) with filters by
// status, name and label, and a selection to compare.

import { api } from '../api.js';
import { setQuery } from '../app.js';
import { badge, fmtAgo, fmtDuration, h, labelChips, poll, progress, replace, resourcesText, table } from '../dom.js';

const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
const PAGE = 50;

export function stageDots(stages) {
  return h('div', { class: 'dots', 'aria-label': stages.map((st) => `${st.name}: ${st.status}`).join(', ') },
    stages.map((st) => h('span', { class: `dot st-${st.status}`, title: `${st.name} (${st.kind}): ${st.status}` })));
}

export function jobsPage(root, query) {
  root.dataset.page = 'jobs';
  const selected = new Set();
  let limit = PAGE;
  const status = new Set((query.get('status') || '').split(',').filter((x) => STATUSES.includes(x)));
  const name = h('input', { id: 'filter-name', type: 'search', placeholder: 'name (* as wildcard)', value: query.get('name') || '' });
  const label = h('input', { id: 'filter-label', type: 'search', placeholder: 'label: key or key=value, …', value: query.get('label') || '' });
  const chips = STATUSES.map((st) => h('button', { class: `filter-chip st-${st}`, type: 'button', dataset: { status: st },
    'aria-pressed': String(status.has(st)), onclick: (e) => {
      status.has(st) ? status.delete(st) : status.add(st);
      e.currentTarget.setAttribute('aria-pressed', String(status.has(st)));
      changed();
    } }, st));
  const compareBtn = h('button', { class: 'btn', id: 'compare-selected', disabled: true, onclick: () => {
    location.hash = `#/compare?ids=${[...selected].map(encodeURIComponent).join(',')}`;
  } }, 'Compare selected');
  const body = h('div', { id: 'jobs-body' });
  const more = h('button', { class: 'btn ghost', id: 'load-more', hidden: true, onclick: () => { limit = Math.min(500, limit + PAGE); poller.now(); } }, 'Load more');
  const note = h('p', { class: 'muted small', id: 'jobs-note' });
  let debounce;
  name.addEventListener('input', () => { clearTimeout(debounce); debounce = setTimeout(changed, 250); });
  label.addEventListener('input', () => { clearTimeout(debounce); debounce = setTimeout(changed, 250); });

  function filters() {
    const n = name.value.trim();
    return {
      status: status.size ? [...status].join(',') : null,
      name: n ? (n.includes('*') ? n : `*${n}*`) : null, // plain text matches anywhere in the name
      label: label.value.split(',').map((x) => x.trim()).filter(Boolean),
    };
  }

  function changed() {
    const q = new URLSearchParams();
    if (status.size) q.set('status', [...status].join(','));
    if (name.value.trim()) q.set('name', name.value.trim());
    if (label.value.trim()) q.set('label', label.value.trim());
    setQuery(q);
    limit = PAGE;
    poller.now();
  }

  function row(job) {
    const box = h('input', { type: 'checkbox', 'aria-label': `select ${job.name}`, checked: selected.has(job.id), onchange: (e) => {
      e.target.checked ? selected.add(job.id) : selected.delete(job.id);
      compareBtn.disabled = selected.size < 1;
      compareBtn.textContent = selected.size ? `Compare selected (${selected.size})` : 'Compare selected';
    } });
    const reason = job.pending_reason || (job.status === 'failed' && job.failure_reason);
    return h('tr', { dataset: { jobId: job.id, status: job.status } },
      h('td', { class: 'sel' }, box),
      h('td', { class: 'name' }, h('a', { href: `#/jobs/${encodeURIComponent(job.id)}`, class: 'job-link' }, job.name),
        h('div', { class: 'chips' }, labelChips(job.labels))),
      h('td', {}, badge(job.status), job.cancel_requested && job.status === 'running' ? h('span', { class: 'muted small' }, ' cancelling') : null,
        reason ? h('div', { class: 'reason small', title: reason }, reason) : null),
      h('td', { class: 'hide-sm' }, stageDots(job.stages)),
      h('td', {}, job.current_stage
        ? [h('div', { class: 'small muted' }, job.current_stage), progress(job.step, job.total_steps)]
        : h('span', { class: 'small muted' }, `${job.stages.filter((s) => s.status === 'succeeded').length} / ${job.stages.length} stages done`)),
      h('td', { class: 'eta' }, job.eta_s != null ? fmtDuration(job.eta_s) : '–'),
      h('td', { class: 'hide-sm' }, resourcesText(job.resources)),
      h('td', { class: 'hide-sm', title: new Date(job.created_at * 1000).toLocaleString() }, fmtAgo(job.created_at)));
  }

  async function load() {
    const res = await api('/v1/jobs', { query: { ...filters(), limit } });
    const rows = res.items.map(row);
    replace(body, rows.length
      ? table(['', 'Name', 'Status', 'Stages', 'Progress', 'ETA', 'Backend × devices', 'Created'], rows, 'jobs')
      : h('p', { class: 'empty', id: 'no-jobs' }, 'No jobs match these filters.'));
    body.querySelectorAll('th').forEach((th, i) => { if ([3, 6, 7].includes(i)) th.classList.add('hide-sm'); });
    more.hidden = !res.next_cursor || limit >= 500;
    note.textContent = `${res.items.length} job${res.items.length === 1 ? '' : 's'} shown · updated ${new Date().toLocaleTimeString()}`;
  }

  root.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Jobs'), compareBtn),
    h('div', { class: 'filters card' }, h('div', { class: 'chip-row', role: 'group', 'aria-label': 'status' }, chips), name, label),
    body, more, note);
  const poller = poll(load, 2000);
  return () => { poller.stop(); clearTimeout(debounce); };
}
