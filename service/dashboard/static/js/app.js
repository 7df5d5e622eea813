// The shell: sign-in, navigation and a hash router (#/jobs, #/jobs/ID, #/compare?ids=..., #/submit,
// #/lineage/STAGE). Each page is a function (root, params) -> dispose().

import { session, signIn, signOut, setUnauthorizedHandler } from './api.js';
import { h, replace } from './dom.js';
import { jobsPage } from './pages/jobs.js';
import { jobPage } from './pages/job.js';
import { comparePage } from './pages/compare.js';
import { submitPage } from './pages/submit.js';
import { lineagePage } from './pages/lineage.js';
import { signinPage } from './pages/signin.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
let dispose = null;

const routes = [
  [/^\/jobs\/([^/]+)$/, (root, m, q) => jobPage(root, decodeURIComponent(m[1]), q)],
  [/^\/jobs$/, (root, m, q) => jobsPage(root, q)],
  [/^\/compare$/, (root, m, q) => comparePage(root, q)],
  [/^\/submit$/, (root, m, q) => submitPage(root, q)],
  [/^\/lineage\/([^/]+)$/, (root, m, q) => lineagePage(root, decodeURIComponent(m[1]), q)],
];

export function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/jobs';
  const [path, qs] = raw.split('?');
  return { path, query: new URLSearchParams(qs || '') };
}

// Change the query of the current page without re-rendering it (filters).
export function setQuery(query) {
  const { path } = parseHash();
  const qs = query.toString();
  history.replaceState(null, '', `#${path}${qs ? `?${qs}` : ''}`);
}

function renderNav() {
  const { path } = parseHash();
  const link = (href, text, id) => h('a', { href, id, class: path.startsWith(href.slice(1)) ? 'active' : '' }, text);
  replace(nav,
    session.token && link('#/jobs', 'Jobs', 'nav-jobs'),
    session.token && link('#/compare', 'Compare', 'nav-compare'),
    session.token && session.canSubmit && link('#/submit', 'Submit', 'nav-submit'),
    h('span', { class: 'spacer' }),
    session.token && h('span', { class: 'scope', title: 'what this token may do', id: 'scope' },
      session.canSubmit ? 'read + submit' : 'read-only'),
    session.token && h('button', { class: 'btn ghost', id: 'signout', onclick: () => { signOut(); route(); } }, 'Sign out'));
}

function route() {
  if (dispose) { try { dispose(); } catch (e) { console.warn(e); } dispose = null; }
  window.scrollTo(0, 0);
  renderNav();
  clear();
  if (!session.token || !session.scope) {
    dispose = signinPage(main, async (token, remember) => {
      await signIn(token, remember);
      if (parseHash().path === '/signin') location.hash = '#/jobs';
      route();
    });
    return;
  }
  const { path, query } = parseHash();
  for (const [re, page] of routes) {
    const m = re.exec(path);
    if (m) { dispose = page(main, m, query) || null; return; }
  }
  location.hash = '#/jobs';
}

function clear() { main.replaceChildren(); main.removeAttribute('data-page'); }

setUnauthorizedHandler(() => {
  signOut();
  sessionStorage.setItem('tinyforge.signin_reason', 'The server refused the token (revoked or expired). Sign in again.');
  route();
});

window.addEventListener('hashchange', route);

(async () => {
  if (session.token) {
    try {
      await signIn(session.token, !!localStorage.getItem('tinyforge.token'));
    } catch {
      signOut();
    }
  }
  route();
})();
