/**
 * The OpenAI-compatible routes with the official `openai` npm client against the real server on
 * 127.0.0.1: chat completions and completions, streamed and not, greedy output equal to
 * `edgellm run`'s, LoRA adapters switched request by request, and the error statuses (404 unknown
 * model, 400 naming the field, 400 with the numbers for a prompt too long, 413, 401 with --api-key).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import { suiteTempDir } from '../helpers/tmp.js';
import { buildTestModel, post, runGreedy, startServer, type TestModel, type TestServer } from './helpers.js';

const dir = suiteTempDir('edgellm-serve-openai-');
let m: TestModel;
let srv: TestServer;
let client: OpenAI;
const N = 24;

beforeAll(async () => {
  m = buildTestModel(dir);
  srv = await startServer(m.hef, { chatTemplateFile: m.template, parallel: 2 });
  client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});
afterAll(async () => srv?.close());

describe('OpenAI API with the openai client', () => {
  it('lists the base model and each adapter as <model>:<adapter>', async () => {
    const list = await client.models.list();
    expect(list.data.map((d) => d.id)).toEqual(['stories', 'stories:wiki']);
    expect((await client.models.retrieve('stories:wiki')).id).toBe('stories:wiki');
  });

  it('completions: greedy output equals edgellm run, streamed and not', async () => {
    const ref = runGreedy(m.hef, 'Once upon a time', N);
    const r = await client.completions.create({ model: 'stories', prompt: 'Once upon a time', max_tokens: N, temperature: 0 });
    expect(r.object).toBe('text_completion');
    expect(r.choices[0].text).toBe(ref.text);
    expect(r.choices[0].finish_reason).toBe(ref.tokens.length === N ? 'length' : 'stop');
    expect(r.usage).toMatchObject({ completion_tokens: ref.tokens.length, prompt_tokens: 5, total_tokens: 5 + ref.tokens.length });
    const stream = await client.completions.create({ model: 'stories', prompt: 'Once upon a time', max_tokens: N, temperature: 0, stream: true });
    let text = '';
    const finishes: (string | null)[] = [];
    for await (const c of stream) {
      text += c.choices[0].text;
      finishes.push(c.choices[0].finish_reason);
    }
    expect(text).toBe(ref.text);
    expect(finishes.at(-1)).toBe('length');
    expect(finishes.slice(0, -1).every((f) => f === null)).toBe(true);
  });

  it('chat: the templated prompt gives edgellm run\'s greedy tokens; the stream starts with role assistant and ends with usage', async () => {
    // the template renders "<s>user: ...\nassistant:", which is what run -p encodes (it adds the BOS)
    const ref = runGreedy(m.hef, 'user: Once upon a time\nassistant:', N);
    const messages = [{ role: 'user' as const, content: 'Once upon a time' }];
    const r = await client.chat.completions.create({ model: 'stories', messages, max_tokens: N, temperature: 0 });
    expect(r.object).toBe('chat.completion');
    expect(r.choices[0].message).toMatchObject({ role: 'assistant', content: ref.text });
    expect(r.usage?.completion_tokens).toBe(ref.tokens.length);
    const stream = await client.chat.completions.create({ model: 'stories', messages, max_completion_tokens: N, temperature: 0, stream: true, stream_options: { include_usage: true } });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks[0].choices[0].delta.role).toBe('assistant');
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toMatchObject({ prompt_tokens: r.usage!.prompt_tokens, completion_tokens: ref.tokens.length });
    // the second identical chat reused the cached prompt (prefix reuse on the anonymous slot)
    expect((last.usage as any).prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
    const finish = chunks.at(-2)!.choices[0];
    expect(finish.finish_reason).toBe('length');
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(ref.text);
  });

  it('switches adapters request by request: stories:wiki and stories each equal edgellm run (--adapter wiki)', async () => {
    const prompt = 'The cat';
    const base = runGreedy(m.hef, prompt, N);
    const wiki = runGreedy(m.hef, prompt, N, 'wiki');
    expect(wiki.text).not.toBe(base.text);
    for (const model of ['stories:wiki', 'stories', 'stories:wiki', 'stories']) {
      const r = await client.completions.create({ model, prompt, max_tokens: N, temperature: 0 });
      expect(r.choices[0].text, model).toBe(model === 'stories' ? base.text : wiki.text);
      expect(r.model).toBe(model);
    }
  });

  it('answers an unknown model with 404, a bad field with 400 naming it, a prompt too long with 400 and the numbers', async () => {
    await expect(client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] })).rejects.toMatchObject({ status: 404, code: 'model_not_found' });
    await expect(client.completions.create({ model: 'stories:nope', prompt: 'x' })).rejects.toMatchObject({ status: 404 });
    await expect(client.completions.create({ model: 'stories', prompt: 'x', temperature: 'hot' as any })).rejects.toMatchObject({ status: 400, param: 'temperature' });
    await expect(client.completions.create({ model: 'stories', prompt: 'x', top_p: 3 })).rejects.toMatchObject({ status: 400, param: 'top_p' });
    await expect(client.chat.completions.create({ model: 'stories', messages: [{ role: 'user', content: 'x' }], max_completion_tokens: 1.5 })).rejects.toMatchObject({ status: 400, param: 'max_completion_tokens' });
    await expect(client.chat.completions.create({ model: 'stories', messages: [{ role: 'user', content: 'x' }], n: 2 })).rejects.toMatchObject({ status: 400, param: 'n' });
    await expect(client.chat.completions.create({ model: 'stories', messages: [{ role: 'wizard' as any, content: 'x' }] })).rejects.toMatchObject({ status: 400, param: 'messages[0].role' });
    const long = 'Once upon a time there was a dog. '.repeat(60);
    const e = await client.completions.create({ model: 'stories', prompt: long, stream: true }).catch((x) => x);
    expect(e.status).toBe(400);
    expect(e.code).toBe('context_length_exceeded');
    expect(e.message).toMatch(/the prompt has \d{3,} tokens, the context holds at most 512/);
  });

  it('answers a body over the limit with 413 and an unknown route with a JSON 404', async () => {
    const big = await post(`${srv.url}/v1/completions`, { model: 'stories', prompt: 'x'.repeat(2 << 20) });
    expect(big.status).toBe(413);
    expect(big.body.error.message).toMatch(/too large/);
    const nf = await fetch(`${srv.url}/v2/nothing`);
    expect(nf.status).toBe(404);
    expect((await nf.json()).error.code).toBe('not_found');
  });

  it('serves /health and Prometheus /metrics', async () => {
    const h = await fetch(`${srv.url}/health`);
    expect([h.status, (await h.json()).status]).toEqual([200, 'ok']);
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    for (const name of ['edgellm_http_requests_total', 'edgellm_generated_tokens_total', 'edgellm_time_to_first_token_seconds_bucket', 'edgellm_decode_tokens_per_second_bucket', 'edgellm_queue_waiting'])
      expect(text).toContain(name);
    expect(text).toMatch(/edgellm_http_requests_total\{method="POST",route="\/v1\/completions",status="200"\} \d+/);
  });
});

describe('--api-key', () => {
  let keyed: TestServer;
  beforeAll(async () => {
    keyed = await startServer(m.hef, { apiKey: 'sekrit' });
  });
  afterAll(async () => keyed?.close());

  it('refuses a missing or wrong key with 401 on both APIs, accepts the right one, leaves /health open', async () => {
    const wrong = new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
    await expect(wrong.models.list()).rejects.toMatchObject({ status: 401, code: 'invalid_api_key' });
    const none = await fetch(`${keyed.url}/api/tags`);
    expect(none.status).toBe(401);
    expect(typeof (await none.json()).error).toBe('string');
    const right = new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'sekrit', maxRetries: 0 });
    const r = await right.completions.create({ model: 'stories', prompt: 'Once', max_tokens: 3, temperature: 0 });
    expect(r.choices[0].text.length).toBeGreaterThan(0);
    expect((await fetch(`${keyed.url}/health`)).status).toBe(200);
  });
});
