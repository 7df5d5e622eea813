// One job: its stages as a pipeline, live charts (loss train/held-out, learning rate, grad norm,
// tokens/s), the live log, attempts and events, artifacts, cancel and retry.

import { api, blobUrl, download, session } from '../api.js';
import { LineChart, toChartSeries } from '../chart.js';
import {
  badge, confirmDialog, fmtAgo, fmtBytes, fmtDuration, fmtTime, h, labelChips, poll, progress, replace,
  resourcesText, table, toast,
} from '../dom.js';
import { LogView } from '../logview.js';

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
export const CHARTS = [
  // bits per byte is the one unit that compares stages with different tokenizers (nats per token does not)
  { key: 'bpb', title: 'Held-out bits per byte (comparable across tokenizers)' },
  { key: 'loss', title: 'Loss, nats per token of each stage\'s tokenizer (train — solid, held-out — dashed)' },
  { key: 'lr', title: 'Learning rate' },
  { key: 'grad_norm', title: 'Grad norm' },
  { key: 'tokens_per_s', title: 'Tokens / s' },
];

function pipeline(job, selected, onSelect) {
  const items = [];
  job.stages.forEach((st, i) => {
    if (i) items.push(h('span', { class: 'arrow', 'aria-hidden': 'true' }, '→'));
    items.push(h('button', {
      class: `stage st-${st.status}${selected === st.name ? ' selected' : ''}`, type: 'button',
      dataset: { stage: st.name, status: st.status }, 'aria-pressed': String(selected === st.name),
      title: 'show this stage only in the charts and the log', onclick: () => onSelect(selected === st.name ? null : st.name),
    },
    h('div', { class: 'stage-name' }, st.name, st.kind !== st.name ? h('span', { class: 'muted' }, ` · ${st.kind}`) : null),
    badge(st.status),
    st.total_steps || st.step != null ? progress(st.step, st.total_steps) : null,
    st.status === 'running' && st.eta_s != null ? h('div', { class: 'small muted' }, `ETA ${fmtDuration(st.eta_s)}`) : null,
    st.started_at ? h('div', { class: 'small muted' },
      st.finished_at ? `took ${fmtDuration(st.finished_at - st.started_at)}` : `started ${fmtAgo(st.started_at)}`) : null));
  });
  return h('div', { class: 'pipeline', id: 'pipeline' }, items);
}

function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(([, v]) => v != null && v !== '').map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))));
}

export function jobPage(root, jobId) {
  root.dataset.page = 'job';
  let job = null, stage = null, lastEvent = 0, finalMetrics = false, artifactsSeen = -1;
  const head = h('div', { class: 'page-head' });
  const notice = h('div', { id: 'job-notice' });
  const comparison = h('div', { id: 'job-comparison-box' });
  const info = h('section', { class: 'card', id: 'job-info' });
  const pipe = h('section', { class: 'card', id: 'job-stages' }, h('h2', {}, 'Stages'), h('div'));
  const charts = CHARTS.map((c) => ({ ...c, chart: new LineChart({ title: c.title, logY: false }) }));
  charts.forEach((c) => { c.chart.el.id = `chart-${c.key}`; });
  const chartNote = h('span', { class: 'muted small', id: 'chart-note' });
  const chartSec = h('section', { class: 'card', id: 'job-charts' },
    h('div', { class: 'section-head' }, h('h2', {}, 'Metrics'), chartNote),
    h('div', { class: 'charts' }, charts.map((c) => c.chart.el)));
  let logs = new LogView(jobId);
  const attempts = h('section', { class: 'card', id: 'job-attempts' }, h('h2', {}, 'Attempts'), h('div'));
  const eventsBox = h('ol', { class: 'events', id: 'events' });
  const events = h('section', { class: 'card', id: 'job-events' }, h('h2', {}, 'Events'), eventsBox);
  const arts = h('section', { class: 'card', id: 'job-artifacts' }, h('h2', {}, 'Artifacts'), h('div'));
  root.append(head, notice, comparison, info, pipe, chartSec, logs.el, h('div', { class: 'two' }, attempts, events), arts);

  function selectStage(name) {
    stage = name;
    logs.stage.value = name || '';
    logs.refilter();
    renderJob();
    finalMetrics = false;
    metricsPoll.now();
  }

  async function act(what) {
    const verb = what === 'cancel' ? 'Cancel' : 'Retry';
    const msg = what === 'cancel'
      ? `Cancel "${job.name}"? A running stage gets SIGTERM, saves a checkpoint and stops; the job ends cancelled.`
      : `Retry "${job.name}"? A new attempt starts; stages that succeeded are kept.`;
    if (!(await confirmDialog(`${verb} job`, msg, `${verb} job`, what === 'cancel'))) return;
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(jobId)}:${what}`, { method: 'POST' }); // custom methods
      toast(what === 'cancel' ? 'Cancel requested' : 'Retry queued', 'ok');
      finalMetrics = false;
      if (what === 'retry' && logs.el.dataset.ended) { // the log goes on: follow it again
        logs.destroy();
        const fresh = new LogView(jobId);
        logs.el.replaceWith(fresh.el);
        logs = fresh;
      }
      renderJob();
      jobPoll.now();
    } catch (e) {
      toast(e.message, 'error');
    }
  }

  function renderJob() {
    const actions = [];
    if (session.canSubmit && !TERMINAL.has(job.status)) {
      actions.push(h('button', { class: 'btn danger', id: 'cancel-job', disabled: job.cancel_requested, onclick: () => act('cancel') },
        job.cancel_requested ? 'Cancelling…' : 'Cancel'));
    }
    if (session.canSubmit && (job.status === 'failed' || job.status === 'cancelled')) {
      actions.push(h('button', { class: 'btn', id: 'retry-job', onclick: () => act('retry') }, 'Retry'));
    }
    const last = job.stages[job.stages.length - 1];
    actions.push(h('a', { class: 'btn ghost', href: `#/compare?ids=${encodeURIComponent(job.id)}` }, 'Compare…'));
    if (last) actions.push(h('a', { class: 'btn ghost', id: 'lineage-link', href: `#/lineage/${encodeURIComponent(last.id)}` }, 'Lineage'));
    replace(head,
      h('div', {},
        h('a', { href: '#/jobs', class: 'back' }, '← Jobs'),
        h('h1', { id: 'job-name' }, job.name, ' ', badge(job.status)),
        h('div', { class: 'chips' }, labelChips(job.labels)),
        h('code', { class: 'muted small' }, job.id)),
      h('div', { class: 'actions' }, actions));
    root.dataset.status = job.status;
    replace(notice,
      job.status === 'queued' && job.pending_reason ? h('div', { class: 'notice', id: 'pending-reason' }, 'Waiting: ', job.pending_reason) : null,
      job.failure_reason ? h('div', { class: 'notice error', id: 'failure-reason' }, `Failed (${job.failure_class || 'unknown'}): `, job.failure_reason) : null);
    const cmp = job.comparison; // the recipe against its from-scratch control (service/recipe.py)
    replace(comparison, cmp ? h('div', { class: `notice ${cmp.difference < 0 ? 'ok' : 'error'}`, id: 'job-comparison' },
      h('strong', {}, 'Recipe vs scratch: '), `${cmp.recipe_bpb.toFixed(4)} vs ${cmp.scratch_bpb.toFixed(4)} held-out bits/byte `,
      `(${cmp.difference >= 0 ? '+' : ''}${cmp.difference.toFixed(4)}) at equal child training compute `,
      `(${(cmp.child_flops / 1e12).toFixed(2)} vs ${((cmp.scratch_flops || 0) / 1e12).toFixed(2)} TFLOP, `,
      `${cmp.child_tokens.toLocaleString()} vs ${(cmp.scratch_tokens || 0).toLocaleString()} tokens)`,
      cmp.parent_flops ? `; the parent cost ${(cmp.parent_flops / 1e12).toFixed(2)} TFLOP more` : '') : null);
    const r = job.resources;
    const run = job.started_at ? (job.finished_at || Date.now() / 1000) - job.started_at : null;
    replace(info, h('h2', {}, 'Overview'), kv([
      ['Status', badge(job.status)],
      ['Current stage', job.current_stage && `${job.current_stage} — step ${job.step ?? '–'} / ${job.total_steps ?? '?'}`],
      ['ETA', job.eta_s != null ? fmtDuration(job.eta_s) : null],
      ['Resources', `${resourcesText(r)}, priority ${job.priority}`],
      ['Restarts', `${job.restarts} of ${r.max_restarts}`],
      ['Limits', [r.time_limit && `run ${fmtDuration(r.time_limit)}`, r.queue_time_limit && `queue ${fmtDuration(r.queue_time_limit)}`].filter(Boolean).join(', ') || null],
      ['Created', fmtTime(job.created_at)],
      ['Running time', run != null ? fmtDuration(run) : null],
      ['Finished', job.finished_at ? fmtTime(job.finished_at) : null],
    ]));
    replace(pipe.lastChild, pipeline(job, stage, selectStage));
    logs.setStages(job.stages.map((s) => s.name));
    replace(attempts.lastChild, table(['#', 'Status', 'Worker', 'Stage', 'Exit', 'Failure', 'Started', 'Finished'],
      (job.attempts || []).slice().reverse().map((a) => h('tr', { dataset: { attempt: String(a.number) } },
        h('td', {}, String(a.number)), h('td', {}, badge(a.status)), h('td', {}, a.worker_id || '–'), h('td', {}, a.stage || '–'),
        h('td', {}, a.exit_code ?? '–'), h('td', {}, a.failure_class ? `${a.failure_class}: ${a.failure_reason || ''}` : '–'),
        h('td', {}, a.started_at ? fmtTime(a.started_at) : '–'), h('td', {}, a.finished_at ? fmtTime(a.finished_at) : '–')))));
  }

  async function loadJob() {
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
    } catch (e) {
      if (e.status !== 404) throw e;
      jobPoll.stop(); metricsPoll.stop(); logs.destroy();
      root.replaceChildren(h('a', { href: '#/jobs', class: 'back' }, '← Jobs'), h('div', { class: 'notice error', id: 'not-found' }, e.message));
      return;
    }
    document.title = `${job.name} · tinyforge`;
    renderJob();
    const evs = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { query: { after: lastEvent } });
    for (const e of evs) {
      eventsBox.prepend(h('li', { dataset: { type: e.type } }, h('span', { class: 't' }, fmtTime(e.time)), ' ',
        h('span', { class: 'chip' }, e.type), ' ', e.message));
      lastEvent = e.id;
    }
    const done = job.stages.filter((s) => TERMINAL.has(s.status)).length;
    if (done !== artifactsSeen) { artifactsSeen = done; await loadArtifacts(); }
  }

  async function loadArtifacts() {
    const list = await api(`/v1/jobs/${encodeURIComponent(jobId)}/artifacts`);
    const plots = [];
    const rows = list.map((a) => {
      const btn = h('button', { class: 'btn small', dataset: { artifact: a.name }, onclick: async () => {
        try { await download(a.download_url, a.name); } catch (e) { toast(e.message, 'error'); }
      } }, 'Download');
      if (a.type === 'plot' && /\.(png|svg|jpe?g)$/i.test(a.path)) plots.push(a);
      return h('tr', { dataset: { artifact: a.name } }, h('td', {}, a.stage || '–'), h('td', {}, a.name), h('td', {}, a.type),
        h('td', {}, fmtBytes(a.size_bytes)), h('td', { class: 'path', title: a.path }, a.path), h('td', {}, btn));
    });
    const gallery = h('div', { class: 'gallery' });
    replace(arts.lastChild, rows.length ? table(['Stage', 'Name', 'Type', 'Size', 'Path', ''], rows, 'artifacts')
      : h('p', { class: 'empty' }, 'No artifacts yet: stages record them when they finish.'), gallery);
    for (const a of plots) {
      try {
        const url = await blobUrl(a.download_url);
        gallery.append(h('figure', {}, h('img', { src: url, alt: `${a.stage} ${a.name}` }), h('figcaption', {}, `${a.stage} · ${a.name}`)));
      } catch { /* the download link still says why */ }
    }
  }

  async function loadMetrics() {
    if (!job) return;
    if (finalMetrics) return;
    const maxPoints = Math.min(2000, Math.max(...charts.map((c) => c.chart.pixelWidth)));
    const res = await api(`/v1/jobs/${encodeURIComponent(jobId)}/metrics`, {
      query: { keys: CHARTS.map((c) => c.key).join(','), max_points: maxPoints, stage },
    });
    const stages = new Set(res.series.map((s) => s.stage));
    const name = stages.size > 1 ? (s) => `${s.stage} ${s.split}` : (s) => s.split;
    for (const c of charts) {
      c.chart.setSeries(toChartSeries(res.series.filter((s) => s.key === c.key), name));
      c.chart.el.hidden = res.series.length > 0 && !c.chart.series.length; // a metric this engine does not record
    }
    const recorded = res.series.reduce((n, s) => n + s.count, 0);
    const down = res.series.some((s) => s.downsampled);
    chartNote.textContent = `${recorded.toLocaleString()} points recorded${down ? `, at most ${res.max_points} per series drawn (min–max band)` : ''}${stage ? ` · stage ${stage}` : ''}`;
    if (TERMINAL.has(job.status)) finalMetrics = true; // nothing more will come
  }

  const jobPoll = poll(loadJob, 1500);
  const metricsPoll = poll(loadMetrics, 1500);
  return () => {
    jobPoll.stop(); metricsPoll.stop(); logs.destroy(); charts.forEach((c) => c.chart.destroy());
    document.title = 'tinyforge';
  };
}
