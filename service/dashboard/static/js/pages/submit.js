// Submit: a form that writes a job spec, and the spec editor it fills (JSON or YAML, editable by
// hand). Plan first (POST /v1/jobs:plan: validation and expansion, nothing stored), then submit with an
// idempotency key so a double click cannot create two jobs. Errors appear next to the field they name.

import { api, session } from '../api.js';
import { h, replace, table, toast } from '../dom.js';

// The PanGu-pi Pro pipeline on the bundled corpus (as examples/recipe.yaml), small enough for a CPU.
const RECIPE = {
  data: { sources: ['data/sample'] },
  tokenizer: { vocab_size: 2048, compact_vocab: 512 },
  parent: { train: { model: { preset: 'tiny' }, steps: 200, micro_batch: 8, precision: 'fp32' } },
  inherit: { child: { preset: 'micro' }, depth: { method: 'ends' }, width: 'l2' },
  round1: { model: { preset: 'micro' }, steps: 150, micro_batch: 8, precision: 'fp32' },
  round2: { steps: 150, rate: 0.5 },
  export: { dtype: 'float32' },
  eval: { batches: 8 },
};

function key() { // crypto.randomUUID needs a secure context; getRandomValues does not
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function int(v) { const n = Number(v); return v === '' ? undefined : Number.isFinite(n) ? n : v; }

export function submitPage(root) {
  root.dataset.page = 'submit';
  if (!session.canSubmit) {
    root.append(h('div', { class: 'card notice', id: 'needs-submit' }, 'This token is read-only. Submitting a job needs a token ',
      'with the submit scope (tinyforge token create --scope submit).'));
    return null;
  }
  let idemKey = key(), edited = false;
  const fields = {};
  // one form field: `path` is where it sits in the spec (and in error paths from the server)
  const field = (id, label, path, input, hint) => {
    input.id = `f-${id}`;
    input.dataset.path = path;
    input.addEventListener('input', sync);
    input.addEventListener('change', sync);
    const err = h('div', { class: 'field-error', id: `err-${id}`, role: 'alert' });
    fields[id] = { input, err, path };
    return h('div', { class: 'field', dataset: { field: id } }, h('label', { for: input.id }, label), input,
      hint ? h('div', { class: 'hint' }, hint) : null, err);
  };
  const text = (value, attrs = {}) => h('input', { type: 'text', value: String(value ?? ''), ...attrs });
  const select = (options, value) => h('select', {}, options.map((o) => h('option', { value: o, selected: o === value }, o)));

  const template = select(['train', 'recipe'], 'train');
  template.id = 'f-template';
  template.addEventListener('change', () => { edited = false; renderTemplate(); sync(); });
  const exportBox = h('input', { type: 'checkbox', id: 'f-export' });
  exportBox.addEventListener('change', sync);
  const common = [
    field('name', 'Job name', 'name', text('micro-train'), 'required'),
    field('labels', 'Labels', 'labels', text('', { placeholder: 'team=nlp, exp=7' }), 'key=value, comma-separated'),
  ];
  const train = h('fieldset', { id: 'train-fields' }, h('legend', {}, 'Training'),
    field('preset', 'Model preset', 'stages.0.config.model.preset', text('micro'), 'micro, tiny, small, pangu-pi-1b-pro, …'),
    field('steps', 'Steps', 'stages.0.config.steps', text('40', { inputmode: 'numeric' })),
    field('micro_batch', 'Micro batch', 'stages.0.config.micro_batch', text('4', { inputmode: 'numeric' })),
    field('batch_size', 'Global batch', 'stages.0.config.batch_size', text('4', { inputmode: 'numeric' }), 'a multiple of the micro batch'),
    field('seq_len', 'Sequence length', 'stages.0.config.seq_len', text('64', { inputmode: 'numeric' })),
    field('precision', 'Precision', 'stages.0.config.precision', select(['fp32', 'bf16', 'fp16'], 'fp32')),
    field('sources', 'Data sources', 'stages.0.config.data.sources', text('data/sample'), 'paths inside the data roots, comma-separated'),
    field('log_every', 'Log every', 'stages.0.config.log_every', text('1', { inputmode: 'numeric' })),
    field('eval_every', 'Held-out eval every', 'stages.0.config.eval_every', text('10', { inputmode: 'numeric' })),
    h('label', { class: 'check' }, exportBox, ' Then export a Hugging Face model'));
  const recipe = h('fieldset', { id: 'recipe-fields' }, h('legend', {}, 'PanGu-π Pro recipe'),
    field('r_sources', 'Data sources', 'recipe.data.sources', text('data/sample')),
    field('r_parent_steps', 'Parent steps', 'recipe.parent.train.steps', text('200', { inputmode: 'numeric' })),
    field('r_round1_steps', 'Round 1 steps', 'recipe.round1.steps', text('150', { inputmode: 'numeric' })),
    field('r_round2_steps', 'Round 2 steps', 'recipe.round2.steps', text('150', { inputmode: 'numeric' })),
    field('r_rate', 'Round 2 replay rate', 'recipe.round2.rate', text('0.5', { inputmode: 'decimal' }), 'share of hard samples replayed'));
  const res = h('fieldset', {}, h('legend', {}, 'Resources'),
    field('backend', 'Backend', 'resources.backend', select(['auto', 'cpu', 'cuda', 'npu'], 'cpu')),
    field('devices', 'Devices per node', 'resources.devices_per_node', text('1', { inputmode: 'numeric' })),
    field('priority', 'Priority', 'resources.priority', text('0', { inputmode: 'numeric' })),
    field('max_restarts', 'Max restarts', 'resources.max_restarts', text('1', { inputmode: 'numeric' })),
    field('time_limit', 'Time limit', 'resources.time_limit', text('', { placeholder: '2h' }), 'seconds or 90s / 30m / 2h'));

  const editor = h('textarea', { id: 'spec-editor', spellcheck: 'false', rows: 24, 'aria-label': 'job spec (JSON or YAML)' });
  editor.addEventListener('input', () => { edited = true; editedNote.hidden = false; });
  const editedNote = h('div', { class: 'notice small', hidden: true, id: 'edited-note' }, 'Edited by hand: the form no longer writes the spec. ',
    h('button', { class: 'btn small', type: 'button', onclick: () => { edited = false; editedNote.hidden = true; sync(); } }, 'Rewrite from the form'));
  const errorList = h('ul', { class: 'errors', id: 'spec-errors', role: 'alert' });
  const planBox = h('div', { id: 'plan' });
  const planBtn = h('button', { class: 'btn', type: 'button', id: 'plan-btn', onclick: () => go(false) }, 'Plan');
  const submitBtn = h('button', { class: 'btn primary', type: 'submit', id: 'submit-btn' }, 'Submit');

  function renderTemplate() {
    train.hidden = template.value !== 'train';
    recipe.hidden = template.value !== 'recipe';
    if (template.value === 'recipe' && fields.name.input.value === 'micro-train') fields.name.input.value = 'recipe-sample';
    if (template.value === 'train' && fields.name.input.value === 'recipe-sample') fields.name.input.value = 'micro-train';
  }

  function list(v) { return v.split(',').map((x) => x.trim()).filter(Boolean); }

  function spec() {
    const f = (id) => fields[id].input.value.trim();
    const labels = {};
    for (const item of list(f('labels'))) { const [k, ...v] = item.split('='); labels[k.trim()] = v.join('=').trim(); }
    const resources = { backend: f('backend'), devices_per_node: int(f('devices')), priority: int(f('priority')), max_restarts: int(f('max_restarts')) };
    if (f('time_limit')) resources.time_limit = f('time_limit');
    const out = { name: fields.name.input.value, labels, resources };
    if (template.value === 'recipe') {
      const r = structuredClone(RECIPE);
      r.data.sources = list(f('r_sources'));
      r.parent.train.steps = int(f('r_parent_steps'));
      r.round1.steps = int(f('r_round1_steps'));
      r.round2.steps = int(f('r_round2_steps'));
      r.round2.rate = Number.isFinite(Number(f('r_rate'))) && f('r_rate') !== '' ? Number(f('r_rate')) : f('r_rate');
      out.recipe = r;
    } else {
      const config = { model: { preset: f('preset') }, data: { sources: list(f('sources')) }, steps: int(f('steps')),
        micro_batch: int(f('micro_batch')), batch_size: int(f('batch_size')), seq_len: int(f('seq_len')), precision: f('precision'),
        log_every: int(f('log_every')), eval_every: int(f('eval_every')), eval_batches: 2 };
      const steps = int(f('steps'));
      if (Number.isInteger(steps) && steps > 0) config.checkpoint_every = steps; // one checkpoint, at the end
      for (const k of Object.keys(config)) if (config[k] === undefined) delete config[k];
      out.stages = [{ name: 'train', kind: 'train', config }];
      if (exportBox.checked) out.stages.push({ name: 'export', kind: 'export', config: { checkpoint: '${stages.train.artifacts.checkpoint}' } });
    }
    return out;
  }

  function sync() {
    if (!edited) editor.value = JSON.stringify(spec(), null, 2);
  }

  function body() {
    const t = editor.value;
    return /^\s*[{[]/.test(t) ? { text: t, type: 'application/json' } : { text: t, type: 'application/yaml' };
  }

  function clearErrors() {
    for (const f of Object.values(fields)) { f.err.textContent = ''; f.input.removeAttribute('aria-invalid'); }
    replace(errorList);
  }

  // each error goes next to the form field whose path is the longest prefix of the error's path
  function showErrors(errors) {
    clearErrors();
    const unplaced = [];
    for (const e of errors) {
      const target = edited ? null : Object.values(fields)
        .filter((f) => e.field === f.path || e.field.startsWith(`${f.path}.`))
        .sort((a, b) => b.path.length - a.path.length)[0];
      if (target && !target.input.closest('fieldset')?.hidden) {
        target.err.append(h('div', {}, e.msg));
        target.input.setAttribute('aria-invalid', 'true');
      } else {
        unplaced.push(e);
      }
      errorList.append(h('li', { dataset: { field: e.field } }, h('code', {}, e.field), ': ', e.msg));
    }
    const first = document.querySelector('[aria-invalid="true"]');
    if (first) first.focus();
    else errorList.scrollIntoView({ block: 'nearest' });
    return unplaced;
  }

  function showPlan(plan) {
    replace(planBox,
      h('div', { class: plan.schedulable ? 'notice ok' : 'notice', id: 'plan-verdict' },
        plan.schedulable ? 'Valid. A running worker can take this job.' : `Valid, but it would wait: ${plan.reason || 'no worker fits'}`),
      table(['Stage', 'Kind', 'Command', 'Uses'], plan.stages.map((st) => h('tr', {},
        h('td', {}, st.name), h('td', {}, st.kind), h('td', {}, h('code', {}, st.command)),
        h('td', {}, st.references.length ? st.references.map((r) => h('code', { class: 'ref' }, `\${${r}}`)) : '–')))));
  }

  async function go(submit) {
    clearErrors();
    replace(planBox);
    planBtn.disabled = submitBtn.disabled = true;
    try {
      const plan = await api('/v1/jobs:plan', { method: 'POST', body: body() });
      showPlan(plan);
      if (!submit) return;
      const job = await api('/v1/jobs', { method: 'POST', body: body(), headers: { 'Idempotency-Key': idemKey } });
      idemKey = key();
      toast(`Submitted ${job.name}`, 'ok');
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (e) {
      if (e.errors) showErrors(e.errors);
      else { replace(errorList, h('li', {}, e.message)); }
    } finally {
      planBtn.disabled = submitBtn.disabled = false;
    }
  }

  const form = h('form', { class: 'submit-form', novalidate: true, onsubmit: (e) => { e.preventDefault(); go(true); } },
    h('div', { class: 'page-head' }, h('h1', {}, 'Submit a job'), h('div', { class: 'actions' }, planBtn, submitBtn)),
    h('div', { class: 'submit-layout' },
      h('div', { class: 'card' }, h('div', { class: 'field' }, h('label', { for: 'f-template' }, 'Template'), template), common, train, recipe, res),
      h('div', { class: 'card' }, h('h2', {}, 'Spec'), h('p', { class: 'hint' }, 'JSON or YAML; what is sent. Edit it for anything the form does not offer (docs/service.md).'),
        editedNote, editor, errorList, planBox)));
  root.append(form);
  renderTemplate();
  sync();
  return null;
}
