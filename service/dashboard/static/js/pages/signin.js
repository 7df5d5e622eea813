// Sign in with an API token (`tinyforge token create --scope read|submit`).

import { h } from '../dom.js';

export function signinPage(root, onSignIn) {
  root.dataset.page = 'signin';
  const reason = sessionStorage.getItem('tinyforge.signin_reason');
  sessionStorage.removeItem('tinyforge.signin_reason');
  const token = h('input', { id: 'token', type: 'password', autocomplete: 'current-password', required: true,
    placeholder: 'tf_…', 'aria-label': 'API token' });
  const remember = h('input', { id: 'remember', type: 'checkbox', checked: true });
  const error = h('p', { class: 'field-error', id: 'signin-error', role: 'alert' }, reason || '');
  const button = h('button', { class: 'btn primary', type: 'submit', id: 'signin' }, 'Sign in');
  const form = h('form', { class: 'card signin', onsubmit: async (e) => {
    e.preventDefault();
    error.textContent = '';
    button.disabled = true;
    try {
      await onSignIn(token.value.trim(), remember.checked);
    } catch (err) {
      error.textContent = err.message.replace(/^\d+: /, '');
    } finally {
      button.disabled = false;
    }
  } },
  h('h1', {}, 'Sign in to tinyforge'),
  h('p', { class: 'muted' }, 'Paste an API token. Create one on the server with ',
    h('code', {}, 'tinyforge token create --scope read'), ' (watch) or ', h('code', {}, '--scope submit'),
    ' (also launch and cancel jobs). The token stays in this browser.'),
  h('label', { for: 'token' }, 'API token'), token,
  h('label', { class: 'check' }, remember, ' Remember on this device'),
  error, button);
  root.append(form);
  token.focus();
  return null;
}
