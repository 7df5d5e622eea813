// The public REST API (/v1, docs/service.md) with the signed-in bearer token. The dashboard has no
// other way into the service.

const KEY = 'tinyforge.token';
// the API lives where the dashboard is mounted, minus /ui/ (works behind a path prefix too)
export const BASE = location.pathname.replace(/\/ui(\/.*)?$/, '');

export const session = {
  token: localStorage.getItem(KEY) || sessionStorage.getItem(KEY) || null,
  scope: null, // 'read' | 'submit' (submit or admin): decides which buttons exist
  get canSubmit() { return this.scope === 'submit'; },
};

// An error answer: an RFC 9457 problem (application/problem+json) with `detail` and, for bad input,
// the fields under `errors` ([{loc, field, msg, type}]).
export class ApiError extends Error {
  constructor(status, detail, errors = null) {
    const text = errors?.length ? errors.map((d) => `${d.field}: ${d.msg}`).join('; ') : String(detail);
    super(`${status}: ${text}`);
    this.status = status;
    this.detail = detail;
    this.errors = errors?.length ? errors : null;
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

function headers(extra = {}) {
  return { ...extra, Authorization: `Bearer ${session.token}` };
}

async function failure(r) {
  let problem = {};
  try { problem = await r.json(); } catch { /* not JSON */ }
  return new ApiError(r.status, problem.detail ?? problem.title ?? r.statusText, problem.errors);
}

// JSON in and out. body: an object (sent as JSON) or {text, type} (sent as is, e.g. YAML).
export async function api(path, { method = 'GET', body, query, headers: extra = {}, signal, raw = false } = {}) {
  const h = headers(extra);
  let payload;
  if (body !== undefined) {
    if (body && typeof body.text === 'string') { payload = body.text; h['Content-Type'] = body.type; }
    else { payload = JSON.stringify(body); h['Content-Type'] = 'application/json'; }
  }
  const url = new URL(BASE + path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v == null || v === '') continue;
    for (const item of [v].flat()) url.searchParams.append(k, String(item));
  }
  const r = await fetch(url, { method, headers: h, body: payload, signal });
  if (r.status === 401) {
    const err = await failure(r);
    onUnauthorized(err);
    throw err;
  }
  if (!r.ok) throw await failure(r);
  return raw ? r : r.json();
}

// Check a token and learn what it may do. There is no "who am I" endpoint: a read works for every
// scope, and planning an empty spec answers 403 to a read-only token and 422 (nothing stored) otherwise.
export async function signIn(token, remember) {
  const probe = (path, init) => fetch(BASE + path, { ...init, headers: { ...init?.headers, Authorization: `Bearer ${token}` } });
  const r = await probe('/v1/jobs?limit=1', {});
  if (r.status === 401) throw new ApiError(401, 'this token is not valid (revoked, mistyped, or from another server)');
  if (!r.ok) throw await failure(r);
  const plan = await probe('/v1/jobs:plan', { method: 'POST', body: '{}', headers: { 'Content-Type': 'application/json' } });
  session.token = token;
  session.scope = plan.status === 403 ? 'read' : 'submit';
  (remember ? localStorage : sessionStorage).setItem(KEY, token);
  (remember ? sessionStorage : localStorage).removeItem(KEY);
  return session.scope;
}

export function signOut() {
  session.token = null;
  session.scope = null;
  localStorage.removeItem(KEY);
  sessionStorage.removeItem(KEY);
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
// Yields {id, event, data} until the server closes the stream.
export async function* sse(path, { query, lastEventId, signal } = {}) {
  const url = new URL(BASE + path, location.origin);
  for (const [k, v] of Object.entries(query || {})) if (v != null && v !== '') url.searchParams.set(k, String(v));
  const h = headers({ Accept: 'text/event-stream' });
  if (lastEventId != null) h['Last-Event-ID'] = String(lastEventId);
  const r = await fetch(url, { headers: h, signal, cache: 'no-store' });
  if (r.status === 401) { const err = await failure(r); onUnauthorized(err); throw err; }
  if (!r.ok) throw await failure(r);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '', ev = { id: null, event: 'message', data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      let line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (ev.data.length) yield { id: ev.id, event: ev.event, data: ev.data.join('\n') };
        ev = { id: null, event: 'message', data: [] };
        continue;
      }
      if (line.startsWith(':')) continue; // keep-alive comment
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'data') ev.data.push(val);
      else if (field === 'event') ev.event = val;
      else if (field === 'id') ev.id = val;
    }
  }
}

// Downloads need the token too, so fetch the file and hand the browser a blob URL.
export async function download(path, fallbackName) {
  const r = await api(path, { raw: true });
  const cd = r.headers.get('Content-Disposition') || '';
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(cd);
  const name = m ? decodeURIComponent(m[1]) : fallbackName;
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return name;
}

// An image artifact (a plot) as a blob URL for <img>.
export async function blobUrl(path) {
  const r = await api(path, { raw: true });
  return URL.createObjectURL(await r.blob());
}
