/**
 * The server's life: `edgellm serve` spawned as a user would (the built CLI), found through its
 * "listening on" line and /health, logging one line per request to stderr, closing gracefully on
 * SIGTERM (a stream in flight is finished, then exit 0); usage errors on one line; and, in-process,
 * /health answering 503 {status:"loading"} until the model is loaded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import { edgellm, ROOT } from '../helpers/cli.js';
import { suiteTempDir } from '../helpers/tmp.js';
import { buildTestModel, runGreedy, type TestModel } from './helpers.js';
import { openSession } from '../../src/cli/open-session.js';
import { buildApp } from '../../src/serve/app.js';
import type { ServedModel } from '../../src/serve/model.js';

const dir = suiteTempDir('edgellm-serve-cli-');
let m: TestModel;
const children: ChildProcess[] = [];

beforeAll(() => {
  m = buildTestModel(dir);
});
afterAll(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
});

interface Spawned {
  proc: ChildProcess;
  url: string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Spawns `edgellm serve <args>` and waits for its "listening on" line. */
async function spawnServe(args: string[]): Promise<Spawned> {
  const proc = spawn(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), 'serve', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(proc);
  let err = '';
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no "listening on" line: ${err}`)), 60_000);
    proc.stderr!.on('data', () => {
      const hit = /listening on (http:\/\/\S+)/.exec(err);
      if (hit) {
        clearTimeout(t);
        resolve(hit[1]);
      }
    });
    void exited.then((code) => reject(new Error(`exited ${code}: ${err}`)));
  });
  return { proc, url, stderr: () => err, exited };
}

async function waitHealthy(url: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const r = await fetch(`${url}/health`).catch(() => null);
    if (r?.status === 200) return;
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error('never healthy');
}

describe('edgellm serve (the built CLI)', () => {
  it('serves, logs one line per request, and closes gracefully on SIGTERM after finishing the stream in flight', async () => {
    const s = await spawnServe([m.hef, '--port', '0', '--parallel', '2', '--chat-template', m.template, '--contexts-dir', path.join(dir, 'ctx')]);
    await waitHealthy(s.url);
    expect(s.stderr()).toMatch(/stories ready in \d+ ms \(context 512 tokens, 2 slot\(s\), queue 16, adapters stories:wiki\)/);
    const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'x', maxRetries: 0 });
    const ref = runGreedy(m.hef, 'Once upon a time', 16);
    const r = await client.completions.create({ model: 'stories', prompt: 'Once upon a time', max_tokens: 16, temperature: 0 });
    expect(r.choices[0].text).toBe(ref.text);
    await new Promise((res) => setTimeout(res, 100));
    expect(s.stderr()).toMatch(/ 127\.0\.0\.1 POST \/v1\/completions 200 [\d.]+ms model=stories prompt=5 cached=0 generated=16 ttft=[\d.]+ms [\d.]+tok\/s queue=\d+ms max_tokens\n/);

    // a stream in flight when SIGTERM arrives is answered to its end
    const stream = await client.completions.create({ model: 'stories', prompt: 'Once upon a time', max_tokens: 300, temperature: 0, stream: true });
    const it = stream[Symbol.asyncIterator]();
    let text = (await it.next()).value!.choices[0].text;
    s.proc.kill('SIGTERM');
    let finish: string | null = null;
    for (let x = await it.next(); !x.done; x = await it.next()) {
      text += x.value.choices[0].text;
      finish = x.value.choices[0].finish_reason ?? finish;
    }
    expect(finish).not.toBeNull();
    expect(text).toBe(runGreedy(m.hef, 'Once upon a time', 300).text);
    expect(await s.exited).toBe(0);
    expect(s.stderr()).toMatch(/SIGTERM: closing[\s\S]*closed\n$/);
  });

  it('reports usage errors on one line with exit code 2', async () => {
    const missing = edgellm('serve', path.join(dir, 'nope.hef'), '--port', '0');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/^error: .*nope\.hef: no such file or directory\n$/);
    expect(edgellm('serve', m.hef, '--parallel', '0').stderr).toMatch(/^error: --parallel 0: must be in \[1, 256\]/);
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const port = (busy.address() as net.AddressInfo).port;
    const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const p = spawn(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), 'serve', m.hef, '--port', String(port)], { cwd: ROOT });
      let err = '';
      p.stderr.on('data', (d) => (err += d));
      p.once('exit', (code) => resolve({ code, err }));
    });
    busy.close();
    expect(r.code).toBe(2);
    expect(r.err).toMatch(new RegExp(`error: cannot listen on 127\\.0\\.0\\.1:${port}: EADDRINUSE`));
  });
});

describe('while the model loads', () => {
  it('answers /health with 503 {status:"loading"} and model routes with 503, then 200 once loaded', async () => {
    let ready!: (m: ServedModel) => void;
    const loading = new Promise<ServedModel>((r) => (ready = r));
    const { app } = await buildApp({ model: loading, processMetrics: false });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(app.server.address() as net.AddressInfo).port}`;
    try {
      const h = await fetch(`${url}/health`);
      expect([h.status, await h.json()]).toEqual([503, { status: 'loading' }]);
      const models = await fetch(`${url}/v1/models`);
      expect(models.status).toBe(503);
      expect((await models.json()).error.type).toBe('unavailable_error');
      expect((await fetch(`${url}/api/tags`).then((r) => r.json())).error).toBe('the model is loading');
      const o = await openSession(m.hef, { prefillLen: 32 });
      ready({ session: o.session, id: 'stories', loadMs: o.loadMs });
      await loading;
      expect((await fetch(`${url}/health`)).status).toBe(200);
      expect((await fetch(`${url}/v1/models`).then((r) => r.json())).data.length).toBe(2);
      await app.close();
      await o.session.dispose();
    } finally {
      await app.close();
    }
  });
});
