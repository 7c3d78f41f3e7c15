/**
 * Named contexts over HTTP (llama.cpp's slot API): generate on a named context from both APIs,
 * save it, restart the server (a new app on the same HEF and contexts dir), restore it, and the
 * continuation equals the unbroken conversation's while evaluating only the new tokens. A file with
 * one flipped byte, or saved from another HEF, is refused with 400 naming the problem and changes
 * nothing; file names outside the contexts directory are refused.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Ollama, type ChatResponse, type GenerateResponse } from 'ollama';
import OpenAI from 'openai';
import { suiteTempDir } from '../helpers/tmp.js';
import { buildOtherHef, buildTestModel, post, startServer, type TestModel, type TestServer } from './helpers.js';

const dir = suiteTempDir('edgellm-serve-contexts-');
const ctxDir = path.join(dir, 'contexts');
let m: TestModel;
let other: string;
const servers: TestServer[] = [];
const start = async (hef: string, o: Parameters<typeof startServer>[1] = {}) => {
  const s = await startServer(hef, { chatTemplateFile: m.template, contextsDir: ctxDir, ...o });
  servers.push(s);
  return s;
};
const stop = async (s: TestServer) => {
  servers.splice(servers.indexOf(s), 1);
  await s.close();
};

beforeAll(() => {
  m = buildTestModel(dir);
  other = buildOtherHef(m);
  fs.mkdirSync(ctxDir);
});
afterAll(async () => {
  for (const s of [...servers]) await s.close();
});

const opts = { temperature: 0, num_predict: 12 };
const turn1 = [{ role: 'user', content: 'Tell me a story about a cat.' }];
const turn2 = (a1: string) => [...turn1, { role: 'assistant', content: a1 }, { role: 'user', content: 'What did the cat do next?' }];
/** Non-streamed chat / generate with the `context_id` extension (which the client's types do not know). */
const chat = (o: Ollama, req: object) => o.chat({ ...req, stream: false } as any) as unknown as Promise<ChatResponse>;
const generate = (o: Ollama, req: object) => o.generate({ ...req, stream: false } as any) as unknown as Promise<GenerateResponse>;
const slot = (s: TestServer, id: string, action: string, body?: unknown) => post(`${s.url}/slots/${id}?action=${action}`, body ?? {});

describe('contexts over HTTP', () => {
  it('save -> restart -> restore -> continue equals the unbroken conversation and evaluates only the new tokens', async () => {
    // unbroken: two turns on one server, context "conv"
    const a = await start(m.hef);
    const oa = new Ollama({ host: a.url });
    const u1 = await chat(oa, { model: 'stories:wiki', messages: turn1, options: opts, context_id: 'conv' });
    const saved = await slot(a, 'conv', 'save', { filename: 'conv.ctx' });
    expect(saved.status, saved.text).toBe(200);
    expect(saved.body).toMatchObject({ id_slot: 'conv', filename: 'conv.ctx', n_saved: u1.prompt_eval_count + 11 });
    const u2 = await chat(oa, { model: 'stories:wiki', messages: turn2(u1.message.content), options: opts, context_id: 'conv' });
    // exact token-level resume through /api/generate's context array on a second named context
    const g1 = await generate(oa, { model: 'stories', prompt: 'Once upon a time', raw: true, options: opts, context_id: 'gen' });
    expect((await slot(a, 'gen', 'save', { filename: 'gen.ctx' })).status).toBe(200);
    const g2 = await generate(oa, { model: 'stories', prompt: ' The end.', raw: true, context: g1.context, options: opts, context_id: 'gen' });
    await stop(a);

    // broken: a new server on the same HEF and directory restores both and continues
    const b = await start(m.hef);
    const ob = new Ollama({ host: b.url });
    const restored = await slot(b, 'conv', 'restore', { filename: 'conv.ctx' });
    expect(restored.status, restored.text).toBe(200);
    expect(restored.body).toMatchObject({ id_slot: 'conv', n_restored: saved.body.n_saved });
    expect((await fetch(`${b.url}/slots/conv`).then((r) => r.json())).adapter).toBe('wiki');
    const r2 = await chat(ob, { model: 'stories:wiki', messages: turn2(u1.message.content), options: opts, context_id: 'conv' });
    expect(r2.message.content).toBe(u2.message.content);
    expect(r2.prompt_eval_count).toBe(u2.prompt_eval_count);
    const promptTokens = r2.prompt_eval_count + saved.body.n_saved;
    expect(r2.prompt_eval_count).toBeLessThan(promptTokens / 2);

    expect((await slot(b, 'gen', 'restore', { filename: 'gen.ctx' })).status).toBe(200);
    const h2 = await fetch(`${b.url}/api/generate`, {
      method: 'POST',
      headers: { 'x-edgellm-context': 'gen' },
      body: JSON.stringify({ model: 'stories', prompt: ' The end.', raw: true, context: g1.context, stream: false, options: opts }),
    }).then((r) => r.json());
    expect(h2.response).toBe(g2.response);
    const newTokens = h2.context.length - h2.eval_count - g1.context.length;
    expect(h2.prompt_eval_count).toBe(newTokens + 1); // + the last token of the first answer, never evaluated
    expect(h2.prompt_eval_count).toBe(g2.prompt_eval_count);

    // the OpenAI API reaches named contexts too, and reports the cached tokens
    const client = new OpenAI({ baseURL: `${b.url}/v1`, apiKey: 'x', maxRetries: 0 });
    const c = await client.chat.completions.create({ model: 'stories:wiki', messages: turn2(u1.message.content) as any, max_tokens: 4, temperature: 0, context_id: 'conv' } as any);
    expect(c.usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThan(promptTokens / 2);
    await stop(b);
  });

  it('refuses a file with one flipped byte, or one saved from another HEF, with 400 naming the problem, and changes nothing', async () => {
    const s = await start(m.hef);
    const good = fs.readFileSync(path.join(ctxDir, 'conv.ctx'));
    const bad = Buffer.from(good);
    bad[Math.floor(bad.length / 2)] ^= 0x10;
    fs.writeFileSync(path.join(ctxDir, 'flipped.ctx'), bad);
    expect((await slot(s, 'conv', 'restore', { filename: 'conv.ctx' })).status).toBe(200);
    const before = await fetch(`${s.url}/slots/conv`).then((r) => r.json());
    const r = await slot(s, 'conv', 'restore', { filename: 'flipped.ctx' });
    expect(r.status).toBe(400);
    expect(r.body.error).toMatchObject({ param: 'filename', message: 'flipped.ctx: corrupt: sha256 mismatch (the file was modified or truncated)' });
    expect(await fetch(`${s.url}/slots/conv`).then((x) => x.json())).toEqual(before);
    // into a new id: nothing is created
    expect((await slot(s, 'fresh', 'restore', { filename: 'flipped.ctx' })).status).toBe(400);
    expect((await fetch(`${s.url}/slots/fresh`)).status).toBe(404);

    // the same (good) file restored by a server on another HEF
    const o = await start(other);
    const x = await slot(o, 'conv', 'restore', { filename: 'conv.ctx' });
    expect(x.status).toBe(400);
    expect(x.body.error.message).toMatch(/^conv\.ctx: saved from another model \(sha256 [0-9a-f]{12}…, this model is [0-9a-f]{12}…\)$/);
    expect((await fetch(`${o.url}/slots`).then((y) => y.json()))).toEqual([]);
    // and the file itself is untouched
    expect(fs.readFileSync(path.join(ctxDir, 'conv.ctx')).equals(good)).toBe(true);
    await stop(o);
    await stop(s);
  });

  it('keeps file names inside --contexts-dir, erases, and answers 404 / 501 where it should', async () => {
    const s = await start(m.hef);
    await post(`${s.url}/v1/completions`, { model: 'stories', prompt: 'Hi', max_tokens: 2, context_id: 'c1' });
    for (const filename of ['../escape.ctx', '/etc/passwd', 'a/b.ctx', '..', '.hidden', '', 'x\u0000y', 'c1.spill.ctx', 'a\\b'])
      expect((await slot(s, 'c1', 'save', { filename })).body.error, filename).toMatchObject({ param: 'filename' });
    expect(fs.readdirSync(dir).filter((f) => f.startsWith('escape'))).toEqual([]);
    expect((await slot(s, 'c1', 'save', {})).status).toBe(400);
    expect((await slot(s, 'c1', 'explode', { filename: 'x.ctx' })).body.error.param).toBe('querystring action');
    expect((await slot(s, 'no-such', 'save', { filename: 'x.ctx' })).status).toBe(404);
    expect((await slot(s, 'c1', 'restore', { filename: 'missing.ctx' })).status).toBe(404);
    expect([400, 404]).toContain((await slot(s, '%2e%2e', 'save', { filename: 'x.ctx' })).status);
    expect((await slot(s, 'c1', 'erase')).body).toEqual({ id_slot: 'c1', n_erased: expect.any(Number) });
    expect((await fetch(`${s.url}/slots/c1`)).status).toBe(404);
    await stop(s);
    const nodir = await startServer(m.hef, {});
    servers.push(nodir);
    await post(`${nodir.url}/v1/completions`, { model: 'stories', prompt: 'Hi', max_tokens: 2, context_id: 'c1' });
    expect((await slot(nodir, 'c1', 'save', { filename: 'x.ctx' })).status).toBe(501);
    await stop(nodir);
  });
});
