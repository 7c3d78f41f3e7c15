/**
 * The chat web page at `GET /` (after llama.cpp server's built-in page): one self-contained HTML
 * document (CSS and vanilla JS inline, no external resources, no build step) over the server's own
 * OpenAI routes:
 *
 * - a model selector filled from GET /v1/models (adapters appear as `<model>:<adapter>`);
 * - generation parameters (temperature, top_p, top_k, max_tokens, seed; empty = the server's default);
 * - Send streams the answer through POST /v1/chat/completions (`stream: true`, SSE `data:` lines read
 *   with fetch + ReadableStream); Stop aborts it (AbortController: the server aborts the generation
 *   when the connection closes), the text so far stays in the conversation;
 * - per answer, TTFT (ms, request sent → first token) and tokens/s (decode: tokens after the first
 *   over the time since the first), live while streaming;
 * - Save conversation downloads `{model, params, messages}` as JSON; Load conversation reads it back;
 * - an API key field: when set, requests carry `Authorization: Bearer <key>`.
 *
 * Model output is only ever put in the DOM with textContent. The route is public (no API key: the
 * page holds no data; the API calls it makes need the key), with a Content-Security-Policy that
 * allows only the inline script and style (by hash) and connections to this server.
 */
import { createHash } from 'node:crypto';
import type { FastifyInstance } from 'fastify';

const STYLE = `
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: #1d1d1f; background: #f5f5f7; display: flex; flex-direction: column; height: 100vh; }
header { display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: center; padding: 8px 12px; background: #fff; border-bottom: 1px solid #ddd; }
header h1 { font-size: 16px; margin: 0 8px 0 0; }
label { display: inline-flex; gap: 4px; align-items: center; }
input[type=number] { width: 6em; }
#main { flex: 1; overflow-y: auto; padding: 12px; }
#messages { max-width: 900px; margin: 0 auto; display: flex; flex-direction: column; gap: 8px; }
.msg { padding: 8px 10px; border-radius: 8px; background: #fff; border: 1px solid #e0e0e0; }
.msg[data-role=user] { background: #e8f0fe; align-self: flex-end; max-width: 80%; }
.msg[data-role=system] { background: #fff8e1; }
.msg .role { font-size: 11px; color: #666; text-transform: uppercase; }
.msg .content { white-space: pre-wrap; word-wrap: break-word; }
.msg .meta { font-size: 11px; color: #888; margin-top: 4px; }
footer { padding: 8px 12px; background: #fff; border-top: 1px solid #ddd; }
#compose { display: flex; gap: 8px; max-width: 900px; margin: 0 auto; }
#prompt { flex: 1; min-height: 3em; resize: vertical; font: inherit; }
#stats, #status { max-width: 900px; margin: 4px auto 0; font-size: 12px; color: #555; }
#status.error { color: #b00020; }
`;

const SCRIPT = `
'use strict';
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var messages = [];   // {role, content, ttft_ms?, tokens_per_s?}
  var busy = null;     // the AbortController of the answer streaming, if any

  function headers(json) {
    var h = {};
    if (json) h['Content-Type'] = 'application/json';
    var key = $('apikey').value.trim();
    if (key) h['Authorization'] = 'Bearer ' + key;
    return h;
  }
  function setStatus(text, isError) {
    $('status').textContent = text;
    $('status').className = isError ? 'error' : '';
  }
  async function errorText(res) {
    var t = await res.text();
    try { var j = JSON.parse(t); if (j && j.error) return res.status + ': ' + (j.error.message || j.error); } catch (e) {}
    return res.status + ': ' + t.slice(0, 300);
  }

  async function loadModels() {
    var sel = $('model');
    var keep = sel.value;
    try {
      var res = await fetch('/v1/models', { headers: headers(false) });
      if (!res.ok) { setStatus('models: ' + await errorText(res), true); return; }
      var list = (await res.json()).data || [];
      sel.textContent = '';
      list.forEach(function (m) {
        var o = document.createElement('option');
        o.value = m.id; o.textContent = m.id;
        sel.appendChild(o);
      });
      if (list.some(function (m) { return m.id === keep; })) sel.value = keep;
      setStatus(list.length + ' model(s)', false);
    } catch (e) { setStatus('models: ' + e, true); }
  }

  function fmt(x, digits) { return Number.isFinite(x) ? x.toFixed(digits) : '-'; }
  function metaText(m) {
    return 'TTFT ' + fmt(m.ttft_ms, 1) + ' ms · ' + fmt(m.tokens_per_s, 1) + ' tok/s' + (m.stopped ? ' · stopped' : '');
  }
  function render(m) {
    var div = document.createElement('div');
    div.className = 'msg';
    div.setAttribute('data-role', m.role);
    var role = document.createElement('div'); role.className = 'role'; role.textContent = m.role;
    var content = document.createElement('div'); content.className = 'content'; content.textContent = m.content;
    div.appendChild(role); div.appendChild(content);
    if (m.role === 'assistant') {
      var meta = document.createElement('div'); meta.className = 'meta'; meta.textContent = metaText(m);
      div.appendChild(meta);
    }
    $('messages').appendChild(div);
    $('main').scrollTop = $('main').scrollHeight;
    return div;
  }
  function renderAll() {
    $('messages').textContent = '';
    messages.forEach(render);
  }

  function params() {
    var p = {};
    [['temperature', false], ['top_p', false], ['top_k', true], ['max_tokens', true], ['seed', true]].forEach(function (f) {
      var v = $(f[0]).value.trim();
      if (v !== '') p[f[0]] = f[1] ? parseInt(v, 10) : parseFloat(v);
    });
    return p;
  }
  function setBusy(on) {
    $('send').disabled = on; $('stop').disabled = !on;
    document.body.setAttribute('data-state', on ? 'streaming' : 'idle');
  }

  async function send() {
    if (busy) return;
    var text = $('prompt').value;
    if (!text.trim()) return;
    if (!$('model').value) { setStatus('no model selected', true); return; }
    $('prompt').value = '';
    var user = { role: 'user', content: text };
    messages.push(user); render(user);
    var answer = { role: 'assistant', content: '', ttft_ms: NaN, tokens_per_s: NaN };
    var body = Object.assign({ model: $('model').value, stream: true, stream_options: { include_usage: true } }, params());
    body.messages = messages.map(function (m) { return { role: m.role, content: m.content }; });
    messages.push(answer);
    var div = render(answer);
    var contentEl = div.querySelector('.content'), metaEl = div.querySelector('.meta');
    $('ttft').textContent = '-'; $('tps').textContent = '-';
    var ctl = new AbortController();
    busy = ctl; setBusy(true); setStatus('generating…', false);
    var t0 = performance.now(), tFirst = NaN, tLast = NaN, pieces = 0, usageTokens = NaN;
    function update() {
      var n = Number.isFinite(usageTokens) ? usageTokens : pieces;
      answer.ttft_ms = tFirst - t0;
      answer.tokens_per_s = n > 1 && tLast > tFirst ? (n - 1) / ((tLast - tFirst) / 1000) : n / (Math.max(tLast - t0, 0.001) / 1000);
      $('ttft').textContent = fmt(answer.ttft_ms, 1);
      $('tps').textContent = fmt(answer.tokens_per_s, 1);
      metaEl.textContent = metaText(answer);
    }
    function onData(payload) {
      if (payload === '[DONE]') return;
      var j = JSON.parse(payload);
      if (j.error) throw new Error(j.error.message || String(j.error));
      if (j.usage && j.usage.completion_tokens != null) usageTokens = j.usage.completion_tokens;
      var c = j.choices && j.choices[0];
      var piece = c && c.delta && c.delta.content;
      if (piece) {
        var now = performance.now();
        if (!Number.isFinite(tFirst)) tFirst = now;
        tLast = now; pieces++;
        answer.content += piece;
        contentEl.textContent = answer.content;
        update();
      }
    }
    try {
      var res = await fetch('/v1/chat/completions', { method: 'POST', headers: headers(true), body: JSON.stringify(body), signal: ctl.signal });
      if (!res.ok) throw new Error(await errorText(res));
      var reader = res.body.getReader(), dec = new TextDecoder(), buf = '';
      for (;;) {
        var r = await reader.read();
        if (r.done) break;
        buf += dec.decode(r.value, { stream: true });
        var lines = buf.split('\\n');
        buf = lines.pop();
        lines.forEach(function (line) {
          if (line.indexOf('data:') === 0) onData(line.slice(5).trim());
        });
      }
      if (buf.indexOf('data:') === 0) onData(buf.slice(5).trim());
      if (Number.isFinite(tFirst)) update();
      setStatus('done', false);
    } catch (e) {
      if (ctl.signal.aborted) { answer.stopped = true; metaEl.textContent = metaText(answer); setStatus('stopped', false); }
      else setStatus(String(e && e.message || e), true);
      if (!answer.content && !answer.stopped) { messages.pop(); div.remove(); }
    } finally {
      busy = null; setBusy(false);
    }
  }

  function save() {
    var data = { model: $('model').value, params: params(), messages: messages };
    var url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' }));
    var a = document.createElement('a');
    a.href = url; a.download = 'conversation.json';
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
  }
  async function load(file) {
    try {
      var data = JSON.parse(await file.text());
      var ms = Array.isArray(data) ? data : data && data.messages;
      if (!Array.isArray(ms) || !ms.every(function (m) { return m && typeof m.role === 'string' && typeof m.content === 'string'; }))
        throw new Error('not a conversation: expected {"messages": [{"role", "content"}, ...]}');
      messages = ms.map(function (m) {
        var o = { role: m.role, content: m.content };
        if (m.role === 'assistant') { o.ttft_ms = Number(m.ttft_ms); o.tokens_per_s = Number(m.tokens_per_s); o.stopped = !!m.stopped; }
        return o;
      });
      if (data.params) Object.keys(data.params).forEach(function (k) { if ($(k)) $(k).value = String(data.params[k]); });
      if (data.model && Array.prototype.some.call($('model').options, function (o) { return o.value === data.model; })) $('model').value = data.model;
      renderAll();
      setStatus('loaded ' + messages.length + ' message(s) from ' + file.name, false);
    } catch (e) { setStatus('load: ' + (e && e.message || e), true); }
  }

  $('send').addEventListener('click', send);
  $('stop').addEventListener('click', function () { if (busy) busy.abort(); });
  $('prompt').addEventListener('keydown', function (e) { if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); send(); } });
  $('clear').addEventListener('click', function () { if (!busy) { messages = []; renderAll(); } });
  $('save').addEventListener('click', save);
  $('load').addEventListener('click', function () { $('load-file').click(); });
  $('load-file').addEventListener('change', function () { var f = this.files && this.files[0]; if (f) load(f); this.value = ''; });
  $('apikey').addEventListener('change', loadModels);
  $('reload-models').addEventListener('click', loadModels);
  setBusy(false);
  loadModels();
})();
`;

/** The page: self-contained HTML, CSS and JS. */
export const WEB_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>edgellm chat</title>
<style>${STYLE}</style>
</head>
<body data-state="loading">
<header>
  <h1>edgellm</h1>
  <label>model <select id="model"></select></label>
  <button id="reload-models" type="button" title="reload the model list">&#x21bb;</button>
  <label>temperature <input id="temperature" type="number" step="0.05" min="0" value="0.8"></label>
  <label>top_p <input id="top_p" type="number" step="0.05" min="0" max="1" value="0.95"></label>
  <label>top_k <input id="top_k" type="number" step="1" min="0" value="40"></label>
  <label>max_tokens <input id="max_tokens" type="number" step="1" min="1" value="256"></label>
  <label>seed <input id="seed" type="number" step="1" placeholder="random"></label>
  <label>API key <input id="apikey" type="password" autocomplete="off" placeholder="none"></label>
  <button id="save" type="button">Save conversation</button>
  <button id="load" type="button">Load conversation</button>
  <input id="load-file" type="file" accept="application/json,.json" hidden>
  <button id="clear" type="button">Clear</button>
</header>
<div id="main"><div id="messages"></div></div>
<footer>
  <div id="compose">
    <textarea id="prompt" placeholder="Message (Enter sends, Shift+Enter: new line)"></textarea>
    <button id="send" type="button">Send</button>
    <button id="stop" type="button" disabled>Stop</button>
  </div>
  <div id="stats">TTFT <span id="ttft">-</span> ms · <span id="tps">-</span> tok/s</div>
  <div id="status"></div>
</footer>
<script>${SCRIPT}</script>
</body>
</html>
`;

const sha256 = (s: string) => `'sha256-${createHash('sha256').update(s, 'utf8').digest('base64')}'`;

/** Only the page's own inline script and style, and connections back to this server. */
const CSP = `default-src 'none'; script-src ${sha256(SCRIPT)}; style-src ${sha256(STYLE)}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;

/** Serves the page at `GET /` (public: exempt from --api-key). A ServePlugin for buildApp. */
export function webPage(app: FastifyInstance): void {
  app.get('/', { config: { public: true } }, async (_req, reply) =>
    reply
      .type('text/html; charset=utf-8')
      .header('content-security-policy', CSP)
      .header('x-content-type-options', 'nosniff')
      .header('cache-control', 'no-cache')
      .send(WEB_PAGE),
  );
}
