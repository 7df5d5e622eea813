// A live log tail: server-sent events from GET /v1/jobs/{id}/logs?follow=true, resumed with
// Last-Event-ID after a dropped connection; follow (keep the newest line in view) and search.

import { sse } from './api.js';
import { fmtClock, h } from './dom.js';

const MAX_LINES = 20000; // older lines are dropped from the page (they stay on the server)

export class LogView {
  constructor(jobId) {
    this.jobId = jobId;
    this.lastId = null;
    this.lines = [];
    this.abort = new AbortController();
    this.follow = h('input', { type: 'checkbox', id: 'log-follow', checked: true });
    this.search = h('input', { type: 'search', id: 'log-search', placeholder: 'search the log' });
    this.stream = h('select', { id: 'log-stream', 'aria-label': 'stream' },
      ['all streams', 'stdout', 'stderr', 'system'].map((x) => h('option', { value: x.startsWith('all') ? '' : x }, x)));
    this.stage = h('select', { id: 'log-stage', 'aria-label': 'stage' }, h('option', { value: '' }, 'all stages'));
    this.count = h('span', { class: 'muted small', id: 'log-count' }, '0 lines');
    this.state = h('span', { class: 'muted small', id: 'log-state' }, 'connecting…');
    this.box = h('div', { class: 'log', id: 'log', role: 'log', 'aria-live': 'off', tabindex: '0' });
    this.el = h('section', { class: 'card logs' },
      h('div', { class: 'section-head' }, h('h2', {}, 'Log'), this.state),
      h('div', { class: 'toolbar' }, h('label', { class: 'check' }, this.follow, ' Follow'), this.search, this.stream, this.stage, this.count),
      this.box);
    let t;
    this.search.addEventListener('input', () => { clearTimeout(t); t = setTimeout(() => this.refilter(), 150); });
    this.stream.addEventListener('change', () => this.refilter());
    this.stage.addEventListener('change', () => this.refilter());
    this.follow.addEventListener('change', () => this.follow.checked && this.scroll());
    this.box.addEventListener('scroll', () => {
      // scrolling up to read stops following; back at the bottom resumes it
      const atBottom = this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 8;
      if (this.follow.checked !== atBottom && !this.autoScrolling) this.follow.checked = atBottom;
    });
    this.run();
  }

  setStages(names) {
    const have = new Set([...this.stage.options].map((o) => o.value));
    for (const n of names) if (!have.has(n)) this.stage.append(h('option', { value: n }, n));
  }

  async run() {
    let delay = 1000;
    while (!this.abort.signal.aborted) {
      try {
        this.state.textContent = this.lastId ? 'reconnecting…' : 'connecting…';
        for await (const ev of sse(`/v1/jobs/${encodeURIComponent(this.jobId)}/logs`, {
          query: { follow: 'true', limit: 2000 }, lastEventId: this.lastId, signal: this.abort.signal,
        })) {
          delay = 1000;
          if (ev.event === 'log') {
            this.state.textContent = 'live';
            this.add(JSON.parse(ev.data));
            this.lastId = ev.id;
          } else if (ev.event === 'end') {
            this.state.textContent = `job ${JSON.parse(ev.data).job_status}; log complete`;
            this.el.dataset.ended = 'true';
            this.flush();
            return;
          }
          if (!this.pending) this.pending = requestAnimationFrame(() => this.flush());
        }
      } catch (e) {
        if (this.abort.signal.aborted) return;
        if (e.status && e.status < 500) { this.state.textContent = e.message; return; }
      }
      this.state.textContent = 'disconnected; retrying';
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
    }
  }

  add(line) {
    this.lines.push(line);
    (this.queue ||= []).push(line);
  }

  matches(line) {
    const q = this.search.value.trim().toLowerCase();
    return (!this.stream.value || line.stream === this.stream.value) && (!this.stage.value || line.stage === this.stage.value)
      && (!q || line.line.toLowerCase().includes(q));
  }

  render(line) {
    const q = this.search.value.trim();
    const text = h('span', { class: 'msg' });
    if (q) { // highlight every match, as text nodes and <mark>s
      const low = line.line.toLowerCase(), ql = q.toLowerCase();
      let at = 0, i;
      while ((i = low.indexOf(ql, at)) >= 0) {
        text.append(line.line.slice(at, i), h('mark', {}, line.line.slice(i, i + q.length)));
        at = i + q.length;
      }
      text.append(line.line.slice(at));
    } else {
      text.append(line.line);
    }
    return h('div', { class: `ln s-${line.stream}`, dataset: { id: String(line.id) } },
      h('span', { class: 't' }, fmtClock(line.time)), h('span', { class: 'stg' }, line.stage || ''), text);
  }

  flush() {
    this.pending = null;
    const queue = this.queue || [];
    this.queue = [];
    if (this.lines.length > MAX_LINES) {
      this.lines.splice(0, this.lines.length - MAX_LINES);
      while (this.box.childElementCount > MAX_LINES) this.box.firstElementChild.remove();
    }
    this.box.append(...queue.filter((l) => this.matches(l)).map((l) => this.render(l)));
    this.setStages([...new Set(queue.map((l) => l.stage).filter(Boolean))]);
    this.updateCount();
    this.scroll();
  }

  refilter() {
    this.box.replaceChildren(...this.lines.filter((l) => this.matches(l)).map((l) => this.render(l)));
    this.updateCount();
    this.scroll();
  }

  updateCount() {
    const shown = this.box.childElementCount;
    this.count.textContent = shown === this.lines.length ? `${shown} lines` : `${shown} of ${this.lines.length} lines`;
  }

  scroll() {
    if (!this.follow.checked) return;
    this.autoScrolling = true;
    this.box.scrollTop = this.box.scrollHeight;
    requestAnimationFrame(() => { this.autoScrolling = false; });
  }

  destroy() { this.abort.abort(); cancelAnimationFrame(this.pending); }
}
