/**
 * Load test of `edgellm serve` on loopback: N concurrent clients, each sending R streamed
 * completions one after another (OpenAI SSE, or Ollama NDJSON with --api ollama), against a server
 * this script spawns from the built CLI (or one already running, --url). It stops by itself: after
 * N×R requests or --duration seconds (no new requests after that; those in flight finish).
 *
 * Reports requests/s, TTFT p50/p99 (client side: request sent → first text), generated tokens/s
 * (all clients together), 200s, 429s, errors, the server's RSS over time (from its /metrics
 * `process_resident_memory_bytes`), RSS after the first 100 answers against RSS after the run,
 * and (spawned server, Linux) its open sockets before and after. A 429 is an answer: the client
 * waits as its Retry-After says (times a random 0.5-1, as clients jitter; or --backoff ms) and goes
 * on with its next request.
 *
 *   npm run build && npx vite-node scripts/bench-serve.ts -- --hef model.hef [--clients 100]
 *     [--requests 10] [--max-tokens 16] [--parallel 2] [--max-queue 32] [--duration 600]
 *     [--api openai|ollama] [--backoff ms] [--json out.json] [--url http://127.0.0.1:8080]
 *
 * Exit code 0 when every request got 200 or 429, the server is still up, and RSS after the run is
 * within 10% of RSS after the first 100 answers; 1 otherwise.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const argv = process.argv.slice(2).filter((a) => a !== '--');
const opt = (f: string, d?: string) => (argv.includes(f) ? argv[argv.indexOf(f) + 1] : d);
const num = (f: string, d: number) => Number(opt(f, String(d)));
const CLIENTS = num('--clients', 100);
const REQUESTS = num('--requests', 10);
const MAX_TOKENS = num('--max-tokens', 16);
const DURATION_S = num('--duration', 600);
/** ms to wait after a 429 (absent: the Retry-After header's seconds × a random 0.5-1) */
const BACKOFF_MS = opt('--backoff') === undefined ? null : num('--backoff', 0);
const API = opt('--api', 'openai') as 'openai' | 'ollama';
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PROMPTS = ['Once upon a time', 'The little dog', 'One day, a girl named Lily', 'Tom had a red ball', 'The sun was hot and'];

const quantile = (xs: number[], q: number) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
const mib = (b: number) => b / (1 << 20);

async function startServer(): Promise<{ url: string; proc?: ChildProcess }> {
  const url = opt('--url');
  if (url) return { url };
  const hef = opt('--hef');
  if (!hef || !fs.existsSync(hef)) throw new Error('usage: bench-serve.ts --hef model.hef [...] (or --url of a running server)');
  const args = [path.join(ROOT, 'dist/src/cli/main.js'), 'serve', hef, '--port', '0', '--parallel', opt('--parallel', '2')!, '--max-queue', opt('--max-queue', '32')!];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  const found = await new Promise<string>((resolve, reject) => {
    proc.stderr!.on('data', (d) => {
      err += d;
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) resolve(m[1]);
    });
    proc.once('exit', (c) => reject(new Error(`server exited ${c}: ${err}`)));
  });
  proc.stderr!.resume(); // keep draining its per-request log
  for (let i = 0; i < 1200; i++) {
    const ok = await get(`${found}/health`).then((r) => r.status === 200, () => false);
    if (ok) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url: found, proc };
}

const agent = new http.Agent({ keepAlive: true, maxSockets: CLIENTS + 4 });

function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

interface Outcome {
  status: number;
  /** Retry-After of a 429, seconds */
  retryAfter?: number;
  ttftMs: number;
  tokens: number;
  error?: string;
}

/** One streamed request: status, ms to the first text, tokens generated (from the final usage / counts). */
function streamOnce(url: string, model: string, prompt: string): Promise<Outcome> {
  const body =
    API === 'openai'
      ? { model, prompt, max_tokens: MAX_TOKENS, temperature: 0.8, stream: true, stream_options: { include_usage: true } }
      : { model, prompt, raw: true, stream: true, options: { num_predict: MAX_TOKENS } };
  const route = API === 'openai' ? '/v1/completions' : '/api/generate';
  return new Promise((resolve) => {
    const t0 = performance.now();
    let ttft = NaN;
    let tokens = 0;
    let buf = '';
    const req = http.request(`${url}${route}`, { method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        if (res.statusCode !== 200) return;
        buf += d;
        const sep = API === 'openai' ? '\n\n' : '\n';
        let i;
        while ((i = buf.indexOf(sep)) >= 0) {
          const line = buf.slice(0, i).replace(/^data: /, '');
          buf = buf.slice(i + sep.length);
          if (!line || line === '[DONE]') continue;
          const o = JSON.parse(line);
          const text = API === 'openai' ? o.choices?.[0]?.text : o.response;
          if (text && Number.isNaN(ttft)) ttft = performance.now() - t0;
          if (API === 'openai' && o.usage) tokens = o.usage.completion_tokens;
          if (API === 'ollama' && o.done) tokens = o.eval_count;
        }
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ttftMs: ttft, tokens, retryAfter: Number(res.headers['retry-after'] ?? 1) }));
      res.on('error', (e) => resolve({ status: -1, ttftMs: NaN, tokens: 0, error: e.message }));
    });
    req.on('error', (e) => resolve({ status: -1, ttftMs: NaN, tokens: 0, error: e.message }));
    req.end(JSON.stringify(body));
  });
}

/** The server's RSS and V8 heap in use, bytes (NaN when /metrics does not say). */
async function memory(url: string): Promise<{ rss: number; heap: number }> {
  const r = await get(`${url}/metrics`).catch(() => null);
  const read = (name: string) => {
    const m = r && new RegExp(`^${name} (\\S+)`, 'm').exec(r.body);
    return m ? Number(m[1]) : NaN;
  };
  return { rss: read('process_resident_memory_bytes'), heap: read('nodejs_heap_size_used_bytes') };
}
const rssBytes = async (url: string) => (await memory(url)).rss;

function socketCount(pid?: number): number | null {
  if (!pid || process.platform !== 'linux') return null;
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).filter((f) => fs.readlinkSync(`/proc/${pid}/fd/${f}`).startsWith('socket:')).length;
  } catch {
    return null;
  }
}

/** The server's model id: the first model it lists. */
async function modelId(url: string): Promise<string> {
  const r = await get(`${url}/v1/models`);
  return JSON.parse(r.body).data[0].id;
}

const { url, proc } = await startServer();
const model = await modelId(url);
const load0 = os.loadavg();
const socketsBefore = socketCount(proc?.pid);
const rss: { t: number; mib: number; heapMiB: number; done: number }[] = [];
const outcomes: Outcome[] = [];
const t0 = performance.now();
const deadline = t0 + DURATION_S * 1000;
let rssAt100 = NaN;
const sampler = setInterval(async () => {
  const b = await memory(url);
  rss.push({ t: (performance.now() - t0) / 1000, mib: mib(b.rss), heapMiB: mib(b.heap), done: outcomes.length });
}, 1000);

await Promise.all(
  Array.from({ length: CLIENTS }, async (_, c) => {
    for (let r = 0; r < REQUESTS && performance.now() < deadline; r++) {
      const o = await streamOnce(url, model, PROMPTS[(c * REQUESTS + r) % PROMPTS.length]);
      outcomes.push(o);
      if (outcomes.length === 100) rssAt100 = await rssBytes(url);
      if (o.status === 429) await new Promise((res) => setTimeout(res, BACKOFF_MS ?? (o.retryAfter ?? 1) * 1000 * (0.5 + Math.random() / 2)));
    }
  }),
);
const wallS = (performance.now() - t0) / 1000;
clearInterval(sampler);
agent.destroy();
await new Promise((r) => setTimeout(r, 1000));
const rssEnd = await rssBytes(url);
const alive = (await get(`${url}/health`).catch(() => ({ status: 0 }))).status === 200;
const socketsAfter = socketCount(proc?.pid);
const load1 = os.loadavg();

const ok = outcomes.filter((o) => o.status === 200);
const refused = outcomes.filter((o) => o.status === 429);
const errors = outcomes.filter((o) => o.status !== 200 && o.status !== 429);
const tokens = ok.reduce((n, o) => n + o.tokens, 0);
const ttfts = ok.map((o) => o.ttftMs).filter(Number.isFinite);
const rssGrowth = rssEnd / rssAt100 - 1;
const report = {
  api: API,
  clients: CLIENTS,
  requestsPerClient: REQUESTS,
  maxTokens: MAX_TOKENS,
  requests: outcomes.length,
  wallSeconds: wallS,
  requestsPerSecond: outcomes.length / wallS,
  ok: ok.length,
  http429: refused.length,
  errors: errors.length,
  errorSamples: [...new Set(errors.map((e) => `${e.status} ${e.error ?? ''}`))].slice(0, 5),
  ttftMsP50: quantile(ttfts, 0.5),
  ttftMsP99: quantile(ttfts, 0.99),
  generatedTokens: tokens,
  tokensPerSecond: tokens / wallS,
  rssMiBAfter100: mib(rssAt100),
  rssMiBEnd: mib(rssEnd),
  rssGrowth,
  rssOverTime: rss,
  socketsBefore,
  socketsAfter,
  serverAlive: alive,
  loadAverageBefore: load0,
  loadAverageAfter: load1,
  pass: errors.length === 0 && alive && Math.abs(rssGrowth) <= 0.1,
};
const json = opt('--json');
if (json) fs.writeFileSync(json, JSON.stringify(report, null, 2) + '\n');
console.log(
  `${report.requests} requests (${CLIENTS} clients × ${REQUESTS}, ${API}, max ${MAX_TOKENS} tokens) in ${wallS.toFixed(1)} s: ${report.requestsPerSecond.toFixed(1)} req/s; ` +
    `200: ${ok.length}, 429: ${refused.length}, errors: ${errors.length}\n` +
    `TTFT p50 ${report.ttftMsP50.toFixed(1)} ms, p99 ${report.ttftMsP99.toFixed(1)} ms; ${tokens} tokens, ${report.tokensPerSecond.toFixed(1)} tokens/s\n` +
    `RSS after 100 answers ${report.rssMiBAfter100.toFixed(1)} MiB, at the end ${report.rssMiBEnd.toFixed(1)} MiB (${(rssGrowth * 100).toFixed(1)}%); ` +
    `RSS over time (MiB): ${rss.map((s) => s.mib.toFixed(0)).join(' ')}\n` +
    `V8 heap used over time (MiB): ${rss.map((s) => s.heapMiB.toFixed(0)).join(' ')}\n` +
    `sockets before ${socketsBefore ?? '-'}, after ${socketsAfter ?? '-'}; server alive: ${alive}; load average ${load0.map((x) => x.toFixed(2)).join(' ')} -> ${load1.map((x) => x.toFixed(2)).join(' ')}\n` +
    (report.pass ? 'PASS' : 'FAIL'),
);
if (proc) {
  proc.kill('SIGTERM');
  await new Promise((r) => proc.once('exit', r));
}
process.exit(report.pass ? 0 : 1);
