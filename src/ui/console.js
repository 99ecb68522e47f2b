// The admin console. Every number on the page comes from the admin API a script would call
// (`/admin/backends`, `/admin/clusters`, `/admin/usage`, `/admin/keys`, `/admin/quotas`,
// `/admin/batches`); the key is kept in sessionStorage and sent as a bearer token. Text
// from the API is always set as text (never parsed as HTML): model names and users come
// from clients.
'use strict';

(function () {
  const KEY = 'igw-admin-key';
  // Served at /admin/ui, or under a prefix such as /resource_server/admin/ui.
  const BASE = location.pathname.replace(/\/admin\/ui\/?$/, '');
  const REFRESH_MS = 5000;
  const VIEWS = ['overview', 'usage', 'keys', 'quotas', 'batches'];
  let timer = null;

  // ------------------------------------------------------------------------ helpers

  const $ = (id) => document.getElementById(id);

  // An element with attributes (`text` sets its text, `class` its classes) and children
  // (nodes or strings, added as text).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'text') node.textContent = String(value);
      else if (name === 'class') node.className = value;
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === 'text') node.textContent = String(value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children) node.append(child);
    return node;
  }

  const fmt = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));
  function when(secs) {
    if (!secs) return '–';
    return new Date(secs * 1000).toISOString().replace('T', ' ').replace(/:\d\d\.\d+Z$/, ' UTC');
  }

  function showError(message) {
    const box = $('error');
    box.textContent = message || '';
    box.hidden = !message;
  }

  // One call to the admin API. Throws an Error carrying the API's message and status.
  async function api(method, path, body, key) {
    const token = key || sessionStorage.getItem(KEY);
    const headers = { Authorization: 'Bearer ' + token };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(BASE + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
    let data = null;
    try { data = await res.json(); } catch (_) { data = null; }
    if (!res.ok) {
      const message = data && data.error && data.error.message
        ? data.error.message : `${res.status} ${res.statusText}`;
      const err = new Error(message);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  // Runs an action, showing its failure in the banner; a refused key signs out.
  async function guard(action) {
    try {
      await action();
      showError('');
    } catch (e) {
      if (e.status === 401 || e.status === 403) {
        signOut('The admin key was refused: ' + e.message);
      } else {
        showError(e.message);
      }
    }
  }

  function badge(text, kind) {
    return el('span', { class: 'badge ' + (kind || ''), text });
  }
  const STATUS_KIND = {
    running: 'ok', healthy: 'ok', closed: 'ok', up: 'ok', active: 'ok', completed: 'ok',
    starting: 'warn', queued: 'warn', unknown: 'warn', half_open: 'warn', maintenance: 'warn',
    degraded: 'warn', validating: 'warn', in_progress: 'warn', finalizing: 'warn',
    cancelling: 'warn', none: '',
    offline: 'bad', unhealthy: 'bad', open: 'bad', failed: 'bad', revoked: 'bad',
    expired: 'bad', cancelled: 'bad', down: 'bad', unreachable: 'bad',
  };
  const status = (text) => badge(text, STATUS_KIND[text]);

  function fill(tbody, rows, columns, emptyText) {
    tbody.replaceChildren(...rows);
    if (!rows.length) {
      tbody.append(el('tr', {}, el('td', { class: 'empty', colspan: columns, text: emptyText })));
    }
  }

  // ------------------------------------------------------------------------ sign in

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    if (timer) clearInterval(timer);
    timer = null;
    $('nav').hidden = true;
    for (const v of VIEWS) $(v + '-view').hidden = true;
    $('signin-view').hidden = false;
    showError('');
    const err = $('signin-error');
    err.textContent = message || '';
    err.hidden = !message;
  }

  $('signin').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const key = $('signin-key').value.trim();
    try {
      await api('GET', '/admin/backends', undefined, key);
    } catch (e) {
      const why = e.status === 401 || e.status === 403
        ? 'That key is not an admin key: ' + e.message
        : 'Could not reach the gateway: ' + e.message;
      const err = $('signin-error');
      err.textContent = why;
      err.hidden = false;
      return;
    }
    sessionStorage.setItem(KEY, key);
    $('signin-key').value = '';
    $('signin-error').hidden = true;
    start();
  });
  $('signout').addEventListener('click', () => signOut(''));

  function start() {
    $('signin-view').hidden = true;
    $('nav').hidden = false;
    route();
  }

  function route() {
    if (!sessionStorage.getItem(KEY)) return;
    const view = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'overview';
    for (const v of VIEWS) $(v + '-view').hidden = v !== view;
    for (const a of document.querySelectorAll('nav a')) {
      a.classList.toggle('active', a.dataset.view === view);
    }
    if (timer) clearInterval(timer);
    timer = null;
    showError('');
    if (view === 'overview') {
      guard(loadOverview);
      timer = setInterval(() => guard(loadOverview), REFRESH_MS);
    } else if (view === 'usage') {
      guard(loadUsage);
    } else if (view === 'keys') {
      guard(loadKeys);
    } else if (view === 'quotas') {
      guard(loadQuotas);
    } else if (view === 'batches') {
      guard(loadBatches);
    }
  }
  window.addEventListener('hashchange', route);

  // ------------------------------------------------------------------------ overview

  async function loadOverview() {
    const [backends, clusters] = await Promise.all([
      api('GET', '/admin/backends'),
      api('GET', '/admin/clusters'),
    ]);
    fill($('models-table').tBodies[0], backends.models.map((m) => el('tr', { 'data-model': m.id },
      el('td', { text: m.id }),
      el('td', {}, status(m.status)),
      el('td', { class: 'wrap', text: m.targets.join(', ') }),
    )), 3, 'No models.');
    fill($('targets-table').tBodies[0], backends.data.map((t) => el('tr', { 'data-target': t.id },
      el('td', { text: t.id }),
      el('td', { text: t.model }),
      el('td', { text: t.cluster }),
      el('td', {}, status(t.health)),
      el('td', {}, status(t.breaker)),
      el('td', {}, status(t.maintenance ? 'maintenance' : t.scheduler)),
      el('td', { class: 'num', text: fmt(t.in_flight) }),
      el('td', { class: 'num', text: t.ewma_ttfb_ms === null ? '–' : t.ewma_ttfb_ms.toFixed(1) + ' ms' }),
      el('td', { class: 'num', text: fmt(t.requests) }),
      el('td', { class: 'num', text: fmt(t.failures) }),
      el('td', { class: 'wrap', text: t.last_error || '' }),
    )), 11, 'No targets.');
    // Do not redraw the clusters while an admin is typing a notice.
    const clusterBody = $('clusters-table').tBodies[0];
    if (!clusterBody.contains(document.activeElement)) {
      const rows = Object.entries(clusters.clusters).map(([name, c]) => clusterRow(name, c));
      fill(clusterBody, rows, 5, 'No clusters.');
    }
    $('overview-updated').textContent = 'Last: ' + new Date().toLocaleTimeString();
  }

  function clusterRow(name, c) {
    const inMaintenance = c.status === 'maintenance';
    const notice = el('input', { placeholder: 'Notice shown to users', 'data-notice': name });
    if (inMaintenance) notice.value = c.notice || '';
    const toggle = el('button', {
      type: 'button',
      'data-maintenance': name,
      class: inMaintenance ? '' : 'danger',
      text: inMaintenance ? 'End maintenance' : 'Start maintenance',
      onclick: () => guard(async () => {
        await api('PUT', `/admin/clusters/${encodeURIComponent(name)}/maintenance`,
          { enabled: !inMaintenance, notice: notice.value });
        document.activeElement.blur();
        await loadOverview();
      }),
    });
    return el('tr', { 'data-cluster': name },
      el('td', { text: name }),
      el('td', {}, status(c.status), inMaintenance && c.notice ? el('div', { class: 'muted', text: c.notice }) : null),
      el('td', {}, status(c.scheduler)),
      el('td', { class: 'num', text: c.free_nodes < 0 ? '–' : fmt(c.free_nodes) }),
      el('td', {}, notice, ' ', toggle),
    );
  }

  // ------------------------------------------------------------------------ usage

  $('usage-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    guard(loadUsage);
  });

  async function loadUsage() {
    const q = new URLSearchParams({ bucket: $('usage-range').value });
    for (const f of ['user', 'org', 'model']) {
      const v = $('usage-' + f).value.trim();
      if (v) q.set(f, v);
    }
    const u = await api('GET', '/admin/usage?' + q);
    const t = u.totals;
    const card = (id, label, value) => el('div', { class: 'card', id },
      el('div', { class: 'value', text: fmt(value) }), el('div', { class: 'label', text: label }));
    $('usage-totals').replaceChildren(
      card('total-requests', 'requests', t.requests),
      card('total-errors', 'errors', t.errors),
      card('total-prompt', 'prompt tokens', t.prompt_tokens),
      card('total-completion', 'completion tokens', t.completion_tokens),
      card('total-tokens', 'total tokens', t.total_tokens),
    );
    const label = (s) => bucketLabel(s.start, u.bucket);
    $('chart-requests').replaceChildren(
      barChart(u.series, [['requests', ''], ['errors', 'errors']], label),
      legend([['requests', ''], ['errors', 'errors']]));
    $('chart-tokens').replaceChildren(
      barChart(u.series, [['total_tokens', '']], label), legend([['total tokens', '']]));
    fill($('usage-models').tBodies[0], u.models.map((m) => el('tr', { 'data-model': m.model },
      el('td', { text: m.model }),
      el('td', { class: 'num', text: fmt(m.requests) }),
      el('td', { class: 'num', text: fmt(m.errors) }),
      el('td', { class: 'num', text: fmt(m.prompt_tokens) }),
      el('td', { class: 'num', text: fmt(m.completion_tokens) }),
      el('td', { class: 'num', text: fmt(m.total_tokens) }),
    )), 6, 'No requests in this period.');
  }

  function bucketLabel(start, bucket) {
    const iso = new Date(start * 1000).toISOString();
    return bucket === 'day' ? iso.slice(0, 10) : iso.slice(0, 16).replace('T', ' ') + ' UTC';
  }

  function legend(series) {
    return el('div', { class: 'legend' }, ...series.flatMap(([name, cls]) =>
      [el('span', { class: 'swatch ' + cls }), name]));
  }

  // Bars per bucket, one series drawn over the other (errors are a part of requests).
  // Each bar carries data-field/data-value, and a <title> for the hover text.
  function barChart(series, fields, label) {
    const W = 900, H = 220, left = 56, right = 8, top = 10, bottom = 24;
    const max = Math.max(1, ...series.map((s) => s[fields[0][0]]));
    const plotW = W - left - right, plotH = H - top - bottom;
    const step = plotW / Math.max(1, series.length);
    const barW = Math.max(1, step * 0.8);
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
    for (const frac of [0, 0.5, 1]) {
      const y = top + plotH * (1 - frac);
      root.append(svg('line', { class: 'grid', x1: left, x2: W - right, y1: y, y2: y }));
      root.append(svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end', text: fmt(Math.round(max * frac)) }));
    }
    root.append(svg('line', { class: 'axis', x1: left, x2: W - right, y1: top + plotH, y2: top + plotH }));
    series.forEach((s, i) => {
      for (const [field, cls] of fields) {
        const v = s[field];
        const h = (v / max) * plotH;
        const bar = svg('rect', {
          class: 'bar ' + cls, x: left + i * step + (step - barW) / 2, y: top + plotH - h,
          width: barW, height: h, 'data-field': field, 'data-value': v,
        }, svg('title', { text: `${label(s)}: ${fmt(v)} ${field.replace('_', ' ')}` }));
        root.append(bar);
      }
    });
    const ticks = series.length > 1 ? [0, Math.floor((series.length - 1) / 2), series.length - 1] : [0];
    for (const i of ticks) {
      if (!series[i]) continue;
      const anchor = i === 0 ? 'start' : i === series.length - 1 ? 'end' : 'middle';
      root.append(svg('text', { x: left + i * step + step / 2, y: H - 6, 'text-anchor': anchor, text: label(series[i]) }));
    }
    return root;
  }

  // ------------------------------------------------------------------------ keys

  $('key-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    guard(async () => {
      const body = { user: $('key-user').value.trim(), admin: $('key-admin').checked };
      const org = $('key-org').value.trim();
      const expires = $('key-expires').value.trim();
      const models = $('key-models').value.split(',').map((m) => m.trim()).filter(Boolean);
      if (org) body.org = org;
      if (expires) body.expires_in = expires;
      if (models.length) body.models = models;
      const created = await api('POST', '/admin/keys', body);
      $('key-secret').value = created.key;
      $('key-created').hidden = false;
      $('key-form').reset();
      await loadKeys();
    });
  });
  $('key-copy').addEventListener('click', async () => {
    const input = $('key-secret');
    try {
      await navigator.clipboard.writeText(input.value);
      $('key-copy').textContent = 'Copied';
    } catch (_) {
      // No clipboard permission (plain http on a tunnel): select it for Ctrl+C.
      input.focus();
      input.select();
      $('key-copy').textContent = 'Selected: press Ctrl+C';
    }
  });

  async function loadKeys() {
    const keys = await api('GET', '/admin/keys');
    fill($('keys-table').tBodies[0], keys.data.map((k) => {
      const state = k.revoked_at ? 'revoked' : k.active ? 'active' : 'expired';
      const revoke = k.revoked_at ? null : el('button', {
        type: 'button', class: 'danger', 'data-revoke': k.id, text: 'Revoke',
        onclick: (ev) => {
          const b = ev.currentTarget;
          if (b.dataset.confirm !== 'yes') {
            b.dataset.confirm = 'yes';
            b.textContent = 'Confirm revoke';
            return;
          }
          guard(async () => {
            await api('DELETE', '/admin/keys/' + encodeURIComponent(k.id));
            await loadKeys();
          });
        },
      });
      return el('tr', { 'data-key': k.id },
        el('td', { text: k.id }),
        el('td', {}, el('code', { text: k.prefix + '…' })),
        el('td', { text: k.user }),
        el('td', { text: k.org || '' }),
        el('td', { text: k.role }),
        el('td', { class: 'wrap', text: k.models.length ? k.models.join(', ') : 'all' }),
        el('td', { text: k.expires_at ? when(k.expires_at) : 'never' }),
        el('td', { text: k.last_used_at ? when(k.last_used_at) : 'never' }),
        el('td', {}, status(state)),
        el('td', {}, revoke),
      );
    }), 10, 'No keys yet.');
  }

  // ------------------------------------------------------------------------ quotas

  const LIMIT_INPUTS = () => [...document.querySelectorAll('#quota-form [data-limit]')];

  $('quota-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const body = {};
    for (const input of LIMIT_INPUTS()) {
      const v = input.value.trim();
      body[input.dataset.limit] = v === '' ? null : Number(v);
    }
    guard(() => saveOverride(body));
  });
  $('quota-remove').addEventListener('click', () => guard(() => saveOverride({})));

  async function saveOverride(body) {
    const subject = $('quota-subject').value.trim();
    if (!subject) throw new Error('Name a subject: user:<id>, org:<name> or model:<name>.');
    await api('PUT', '/admin/quota/' + encodeURIComponent(subject), body);
    await loadQuotas();
  }

  function meter(label, used, limit) {
    const track = el('div', { class: 'track' });
    const fillBar = el('div', { class: 'fill' });
    track.append(fillBar);
    if (limit > 0) {
      const frac = Math.min(1, used / limit);
      // CSSOM, not a style attribute: the page's policy allows no inline style.
      fillBar.style.width = (frac * 100).toFixed(1) + '%';
      if (frac >= 0.9) fillBar.classList.add('bad');
      else if (frac >= 0.7) fillBar.classList.add('warn');
    }
    return el('div', { class: 'meter', 'data-meter': label },
      el('span', { text: label }), track,
      el('span', { class: 'muted', text: limit > 0 ? `${fmt(used)} / ${fmt(limit)}` : `${fmt(used)} (no limit)` }));
  }

  async function loadQuotas() {
    const list = await api('GET', '/admin/quotas?limit=1000');
    fill($('quotas-table').tBodies[0], list.data.map((q) => {
      const u = q.usage, l = q.limits;
      const meters = el('div', {},
        meter('in flight', u.in_flight || 0, l.max_in_flight),
        u.minute ? meter('tokens / minute', u.minute.tokens, l.tokens_per_minute) : null,
        meter('requests / day', u.day.requests, l.requests_per_day),
        meter('tokens / day', u.day.tokens, l.tokens_per_day),
        meter('tokens / month', u.month.tokens, l.tokens_per_month),
        q.kind === 'user' ? meter('active batches', u.active_batches || 0, l.max_batches) : null,
      );
      const override = q.override
        ? Object.entries(q.override).filter(([, v]) => v !== null).map(([k, v]) => `${k} = ${v}`).join(', ')
        : '';
      return el('tr', { 'data-subject': q.subject },
        el('td', { text: q.subject }),
        el('td', {}, meters),
        el('td', { class: 'wrap', text: override || 'defaults' }),
        el('td', {},
          el('button', { type: 'button', text: 'Edit', onclick: () => editOverride(q) }), ' ',
          el('button', {
            type: 'button', class: 'danger', 'data-reset': q.subject, text: 'Reset usage',
            onclick: () => guard(async () => {
              await api('POST', `/admin/quota/${encodeURIComponent(q.subject)}/reset`);
              await loadQuotas();
            }),
          })),
      );
    }), 4, 'No subjects: none has sent a request since the start, and none has an override.');
  }

  function editOverride(q) {
    $('quota-subject').value = q.subject;
    for (const input of LIMIT_INPUTS()) {
      const v = q.override ? q.override[input.dataset.limit] : null;
      input.value = v === null || v === undefined ? '' : v;
    }
    $('quota-subject').focus();
  }

  // ------------------------------------------------------------------------ batches

  $('batches-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    guard(loadBatches);
  });

  async function loadBatches() {
    const q = new URLSearchParams({ limit: '200' });
    const s = $('batches-status').value;
    const user = $('batches-user').value.trim();
    if (s) q.set('status', s);
    if (user) q.set('user', user);
    const list = await api('GET', '/admin/batches?' + q);
    const final = ['completed', 'failed', 'cancelled', 'expired'];
    fill($('batches-table').tBodies[0], list.data.map((b) => {
      const c = b.request_counts;
      const progress = el('progress', { class: 'progress', max: Math.max(1, c.total), value: c.completed + c.failed });
      const errors = b.errors && b.errors.data ? b.errors.data : [];
      return el('tr', { 'data-batch': b.id },
        el('td', { text: b.id }),
        el('td', { text: b.owner }),
        el('td', { text: b.endpoint }),
        el('td', {}, status(b.status)),
        el('td', {}, progress, el('div', { class: 'muted', text: `${fmt(c.completed)} done, ${fmt(c.failed)} failed of ${fmt(c.total)}` })),
        el('td', { text: when(b.created_at) }),
        el('td', { class: 'wrap', text: errors.length ? errors.map((e) => e.message).join('; ') : (c.failed ? `${c.failed} failed lines` : '') }),
        el('td', {}, final.includes(b.status) || b.status === 'cancelling' ? null : el('button', {
          type: 'button', class: 'danger', 'data-cancel': b.id, text: 'Cancel',
          onclick: () => guard(async () => {
            await api('POST', `/admin/batches/${encodeURIComponent(b.id)}/cancel`);
            await loadBatches();
          }),
        })),
      );
    }), 8, 'No batches.');
  }

  // ------------------------------------------------------------------------ start

  if (sessionStorage.getItem(KEY)) start();
})();
