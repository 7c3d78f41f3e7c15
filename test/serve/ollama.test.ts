/**
 * The Ollama-compatible routes with the official `ollama` npm client against the real server on
 * 127.0.0.1: version, list, ps, show; generate streamed and not (greedy output equal to `edgellm
 * run`'s), resumed with `context` (the second call evaluates only its new tokens); chat; the
 * errors in Ollama's `{error}` shape.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Ollama } from 'ollama';
import { suiteTempDir } from '../helpers/tmp.js';
import { buildTestModel, post, runGreedy, startServer, type TestModel, type TestServer } from './helpers.js';

const dir = suiteTempDir('edgellm-serve-ollama-');
let m: TestModel;
let srv: TestServer;
let ollama: Ollama;
const N = 20;

beforeAll(async () => {
  m = buildTestModel(dir);
  srv = await startServer(m.hef, { chatTemplateFile: m.template });
  ollama = new Ollama({ host: srv.url });
});
afterAll(async () => srv?.close());

describe('Ollama API with the ollama client', () => {
  it('answers version, list, ps and show', async () => {
    expect((await ollama.version()).version).toMatch(/^\d+\.\d+\.\d+/);
    const list = await ollama.list();
    expect(list.models.map((x) => x.name)).toEqual(['stories', 'stories:wiki']);
    expect(list.models[0].details).toMatchObject({ format: 'hef', family: 'llama', parameter_size: expect.stringMatching(/K$/), quantization_level: 'W4A8KV8' });
    expect(list.models[0].size).toBeGreaterThan(100_000);
    const ps = await ollama.ps();
    expect(ps.models.map((x) => x.name)).toEqual(['stories', 'stories:wiki']);
    const show = await ollama.show({ model: 'stories:wiki' });
    expect(show.model_info).toMatchObject({ 'general.architecture': 'llama', 'llama.context_length': 512, 'edgellm.adapter': 'wiki' });
    expect(show.parameters).toContain('num_ctx 512');
  });

  it('generate (raw): greedy output equals edgellm run, streamed and not, with the final object\'s counts and durations', async () => {
    const ref = runGreedy(m.hef, 'Once upon a time', N);
    const r = await ollama.generate({ model: 'stories', prompt: 'Once upon a time', raw: true, stream: false, options: { temperature: 0, num_predict: N } });
    expect(r.response).toBe(ref.text);
    expect(r.done).toBe(true);
    expect(r.done_reason).toBe('length');
    expect(r.eval_count).toBe(N);
    expect(r.context).toEqual([...(r.context as number[]).slice(0, 5), ...ref.tokens]);
    for (const k of ['total_duration', 'load_duration', 'prompt_eval_duration', 'eval_duration'] as const) expect(Number.isInteger(r[k]) && r[k] >= 0, k).toBe(true);
    expect(r.total_duration).toBeGreaterThanOrEqual(r.prompt_eval_duration + r.eval_duration);
    const parts = [];
    for await (const p of await ollama.generate({ model: 'stories', prompt: 'Once upon a time', raw: true, stream: true, options: { temperature: 0, num_predict: N } })) parts.push(p);
    expect(parts.map((p) => p.response).join('')).toBe(ref.text);
    expect(parts.slice(0, -1).every((p) => !p.done)).toBe(true);
    expect(parts.at(-1)).toMatchObject({ done: true, done_reason: 'length', eval_count: N });
  });

  it('generate with context resumes: the second call evaluates only its new tokens', async () => {
    const r1 = await ollama.generate({ model: 'stories', prompt: 'Once upon a time', raw: true, stream: false, options: { temperature: 0, num_predict: 10 } });
    expect(r1.prompt_eval_count).toBeGreaterThan(0);
    const r2 = await ollama.generate({ model: 'stories', prompt: ' The dog', raw: true, context: r1.context, stream: false, options: { temperature: 0, num_predict: 10 } });
    const newTokens = r2.context.length - r2.eval_count - r1.context.length;
    expect(newTokens).toBeGreaterThan(0);
    // + 1: the last token generated in the first call was never fed to the model (r1 ended by length)
    expect(r2.prompt_eval_count).toBe(newTokens + 1);
    expect(r2.context.slice(0, r1.context.length)).toEqual(r1.context);
    // the same continuation as one unbroken run over the whole prompt's tokens
    const whole = await post(`${srv.url}/v1/completions`, { model: 'stories', prompt: r2.context.slice(0, r2.context.length - r2.eval_count), max_tokens: 10, temperature: 0 });
    expect(whole.body.choices[0].text).toBe(r2.response);
  });

  it('generate (templated) and chat give the chat template\'s greedy answer, streamed and not', async () => {
    const ref = runGreedy(m.hef, 'user: Once upon a time\nassistant:', N);
    const g = await ollama.generate({ model: 'stories', prompt: 'Once upon a time', stream: false, options: { temperature: 0, num_predict: N } });
    expect(g.response).toBe(ref.text);
    const c = await ollama.chat({ model: 'stories', messages: [{ role: 'user', content: 'Once upon a time' }], stream: false, options: { temperature: 0, num_predict: N } });
    expect(c.message).toEqual({ role: 'assistant', content: ref.text });
    expect(c.done_reason).toBe('length');
    // a second identical chat finds its prompt cached: it evaluates just the last prompt token
    expect(c.prompt_eval_count).toBe(1);
    let text = '';
    let last;
    for await (const p of await ollama.chat({ model: 'stories:wiki', messages: [{ role: 'user', content: 'Once upon a time' }], stream: true, options: { temperature: 0, num_predict: N } })) {
      text += p.message.content;
      last = p;
    }
    expect(text).toBe(runGreedy(m.hef, 'user: Once upon a time\nassistant:', N, 'wiki').text);
    expect(last).toMatchObject({ done: true, eval_count: N, message: { role: 'assistant', content: '' } });
  });

  it('answers an empty prompt with done_reason "load", as Ollama does', async () => {
    const r = await ollama.generate({ model: 'stories', prompt: '', stream: false });
    expect(r).toMatchObject({ done: true, done_reason: 'load', response: '' });
  });

  it('answers errors as {error}: unknown model 404, bad option 400 naming it, num_ctx over the capacity', async () => {
    await expect(ollama.generate({ model: 'llama3', prompt: 'x', stream: false })).rejects.toMatchObject({ status_code: 404, error: expect.stringMatching(/model 'llama3' not found/) });
    await expect(ollama.generate({ model: 'stories', prompt: 'x', stream: false, options: { temperature: 'hot' as any } })).rejects.toMatchObject({ status_code: 400, error: expect.stringMatching(/^options\.temperature: /) });
    await expect(ollama.chat({ model: 'stories', messages: [{ role: 'user', content: 'x' }], stream: false, options: { num_ctx: 4096 } })).rejects.toMatchObject({ status_code: 400, error: expect.stringMatching(/options\.num_ctx: must be in \[1, 512\]/) });
    await expect(ollama.generate({ model: 'stories', prompt: 'x', stream: false, options: { top_k: -3 } })).rejects.toMatchObject({ status_code: 400, error: expect.stringMatching(/^options\.top_k/) });
    const r = await post(`${srv.url}/api/generate`, { model: 'stories', prompt: 'x', format: 'json' });
    expect([r.status, r.body]).toEqual([400, { error: 'format: is not supported by edgellm' }]);
  });
});
