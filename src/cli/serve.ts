/**
 * edgellm serve (see `edgellm serve --help`): the OpenAI- and Ollama-compatible HTTP server
 * (src/serve/) over one model session. It listens at once (/health answers 503 while the model
 * loads), logs one line per request to stderr, and on SIGINT / SIGTERM stops accepting requests,
 * lets those in flight finish (at most --grace seconds, then aborts them) and exits 0; a second
 * signal aborts at once.
 */
import type { Command } from 'commander';
import * as fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import { UsageError } from '../core/errors.js';
import { openSession } from './open-session.js';
import { addLoadFlags, loadFlags } from './common.js';
import { int } from './common.js';
import { buildApp, DEFAULT_BODY_LIMIT } from '../serve/app.js';
import { modelIdOf, type ServedModel } from '../serve/model.js';
import { webPage } from '../serve/web-page.js';

const log = (line: string) => void process.stderr.write(line + '\n');

function atLeast(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string) => {
    const n = int(name)(v);
    if (n < min || n > max) throw new UsageError(`${name} ${v}: must be in [${min}, ${max}]`);
    return n;
  };
}

/** Resolves on the first SIGINT or SIGTERM; a second one calls `hurry`. */
function untilSignal(hurry: () => void): Promise<string> {
  return new Promise((resolve) => {
    let seen = false;
    const on = (sig: string) => {
      if (seen) return hurry();
      seen = true;
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

/** `edgellm serve`: the HTTP server. */
export function registerServe(program: Command): void {
  addLoadFlags(program.command('serve'))
    .description('serve a model over HTTP: OpenAI-compatible /v1, Ollama-compatible /api, contexts under /slots, /health, /metrics (see docs/serving.md)')
    .argument('<model>', 'model.hef (or a HAR / model directory, compiled in memory)')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port to listen on (0: any free port)', atLeast('--port', 0, 65535), 8080)
    .option('--parallel <n>', 'generations at once (each has its own KV-cache slot)', atLeast('--parallel', 1, 256), 1)
    .option('--max-queue <n>', 'requests waiting beyond --parallel; more get 429 with Retry-After', atLeast('--max-queue', 0, 100_000), 16)
    .option('--api-key <key>', 'require Authorization: Bearer <key> on every route but /health (default: $EDGELLM_API_KEY)')
    .option('--contexts-dir <dir>', 'where /slots save and restore context files (and least-recently-used contexts spill)')
    .option('--max-contexts <n>', 'named contexts held in memory', atLeast('--max-contexts', 1, 100_000), 8)
    .option('--adapter <name>', 'the LoRA adapter the base model name selects (others: <model>:<adapter>)')
    .option('--chat-template <file>', 'a jinja chat template replacing the model\'s')
    .option('--prefill-len <n>', 'prefill chunk length when compiling a directory or HAR in memory', atLeast('--prefill-len', 1), 128)
    .option('--body-limit <bytes>', 'largest request body (413 past it)', atLeast('--body-limit', 1024), DEFAULT_BODY_LIMIT)
    .option('--grace <s>', 'seconds a shutdown waits for answers in flight before aborting them', atLeast('--grace', 0, 3600), 10)
    .action(async (file: string, o) => {
      if (!fs.existsSync(file)) throw new UsageError(`${file}: no such file or directory`);
      if (o.contextsDir !== undefined) fs.mkdirSync(o.contextsDir, { recursive: true });
      const apiKey: string | undefined = o.apiKey ?? (process.env.EDGELLM_API_KEY || undefined);
      const loading = openSession(file, {
        prefillLen: o.prefillLen,
        adapter: o.adapter,
        chatTemplateFile: o.chatTemplate,
        slots: o.parallel,
        maxContexts: o.maxContexts,
        contextsDir: o.contextsDir,
        ...loadFlags(o),
      }).then((m): ServedModel => {
        const st = fs.statSync(file);
        return { session: m.session, id: modelIdOf(m.name), exe: m.exe, loadMs: m.loadMs, sizeBytes: st.size, modifiedAt: st.mtime, defaultAdapter: o.adapter ?? null };
      });
      loading.catch(() => {}); // reported below, after listen
      const { app, state } = await buildApp({
        model: loading,
        parallel: o.parallel,
        maxQueue: o.maxQueue,
        apiKey,
        contextsDir: o.contextsDir,
        bodyLimit: o.bodyLimit,
        log,
        plugins: [webPage],
      });
      try {
        await app.listen({ host: o.host, port: o.port });
      } catch (e) {
        await app.close();
        const code = (e as NodeJS.ErrnoException).code;
        throw new UsageError(`cannot listen on ${o.host}:${o.port}: ${code ?? (e as Error).message}`);
      }
      const addr = app.server.address() as AddressInfo;
      const url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
      log(`edgellm serve: listening on ${url} (loading ${file})`);
      const stopped = untilSignal(() => state.abortAll());
      let served: ServedModel;
      try {
        served = await Promise.race([loading, stopped.then(() => null)]) as ServedModel;
      } catch (e) {
        await app.close();
        throw e;
      }
      if (served) {
        const s = served.session;
        const adapters = s.backend.adapters.map((a) => `${served.id}:${a}`);
        log(
          `edgellm serve: ${served.id} ready in ${served.loadMs.toFixed(0)} ms (context ${s.capacity} tokens, ${o.parallel} slot(s), queue ${o.maxQueue}` +
            `${adapters.length ? `, adapters ${adapters.join(', ')}` : ''}${s.hasChatTemplate ? '' : ', no chat template'}${apiKey ? ', API key required' : ''})`,
        );
      }
      const sig = await stopped;
      log(`edgellm serve: ${sig}: closing (waiting up to ${o.grace} s for ${state.queue.running} generation(s) in flight)`);
      const timer = setTimeout(() => state.abortAll(), o.grace * 1000);
      await app.close();
      clearTimeout(timer);
      await state.model?.session.dispose();
      log('edgellm serve: closed');
    });
}
