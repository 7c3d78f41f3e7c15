/**
 * Shared by the server tests: the real stories260K quantized and compiled once per test file (with
 * the real wiki LoRA adapter), a tiny chat template, servers started in-process on 127.0.0.1 with
 * an ephemeral port, and `edgellm run --json` as the reference for greedy output.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AddressInfo } from 'node:net';
import { edgellm, STORIES } from '../helpers/cli.js';
import { WIKI_ADAPTER } from '../helpers/paths.js';
import { openSession } from '../../src/cli/open-session.js';
import { buildApp, type ServeAppOptions } from '../../src/serve/app.js';
import { modelIdOf } from '../../src/serve/model.js';
import type { ServeState } from '../../src/serve/state.js';
import type { FastifyInstance } from 'fastify';

/** A ChatML-like template small enough for stories260K (which has none); BOS first, as `run` adds it. */
export const CHAT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

export interface TestModel {
  dir: string;
  /** stories.hef: the base model plus adapter "wiki" */
  hef: string;
  /** the base HAR (for another HEF) */
  baseHar: string;
  template: string;
}

function cli(...args: string[]): string {
  const r = edgellm(...args);
  if (r.code !== 0) throw new Error(`edgellm ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** quantize → add-lora wiki → compile, into `dir` (a few seconds on stories260K). */
export function buildTestModel(dir: string): TestModel {
  const baseHar = path.join(dir, 'base.har');
  const har = path.join(dir, 'wiki.har');
  const hef = path.join(dir, 'stories.hef');
  cli('quantize', STORIES, '-o', baseHar, '--calib-samples', '8');
  cli('add-lora', WIKI_ADAPTER, '--har', baseHar, '--name', 'wiki', '-o', har, '--calib-samples', '8');
  cli('compile', har, '-o', hef, '--prefill-len', '32');
  const template = path.join(dir, 'chat.jinja');
  fs.writeFileSync(template, CHAT_TEMPLATE);
  return { dir, hef, baseHar, template };
}

/** Compiles the base HAR (no adapter) into another HEF: a different model for context files. */
export function buildOtherHef(m: TestModel): string {
  const other = path.join(m.dir, 'other.hef');
  cli('compile', m.baseHar, '-o', other, '--prefill-len', '32');
  return other;
}

/** `edgellm run <hef> -p prompt -t 0 -n n --json` (the reference for greedy output). */
export function runGreedy(hef: string, prompt: string, n: number, adapter?: string): { text: string; tokens: number[] } {
  return JSON.parse(cli('run', hef, '-p', prompt, '-t', '0', '-n', String(n), '--json', ...(adapter ? ['--adapter', adapter] : [])));
}

export interface TestServer {
  url: string;
  app: FastifyInstance;
  state: ServeState;
  close(): Promise<void>;
}

/** Opens `hef` and serves it on 127.0.0.1 at an ephemeral port. */
export async function startServer(hef: string, o: Omit<ServeAppOptions, 'model'> & { chatTemplateFile?: string; maxContexts?: number } = {}): Promise<TestServer> {
  const opened = await openSession(hef, { prefillLen: 32, slots: o.parallel ?? 1, chatTemplateFile: o.chatTemplateFile, contextsDir: o.contextsDir, maxContexts: o.maxContexts });
  const { app, state } = await buildApp({
    ...o,
    processMetrics: o.processMetrics ?? false,
    model: { session: opened.session, id: modelIdOf(opened.name), exe: opened.exe, loadMs: opened.loadMs, sizeBytes: fs.statSync(hef).size },
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const port = (app.server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    app,
    state,
    async close() {
      await app.close();
      await opened.session.dispose();
    },
  };
}

/** POSTs JSON (or raw bytes / text as given) and returns status, headers and the parsed body. */
export async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; headers: Headers; body: any; text: string }> {
  const raw = typeof body === 'string' ? body : body instanceof Uint8Array ? new Uint8Array(body) : JSON.stringify(body);
  const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: raw });
  const text = await r.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: r.status, headers: r.headers, body: parsed, text };
}
