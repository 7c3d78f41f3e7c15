/**
 * The bounded queue and abort on disconnect: with --parallel 1 --max-queue 2, six simultaneous slow
 * requests get 200 or 429 with Retry-After (no other answer); a client that aborts mid-stream stops
 * its generation at once and frees the slot for the next request; a client that leaves while
 * queued frees its queue place.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import { suiteTempDir } from '../helpers/tmp.js';
import { buildTestModel, post, startServer, type TestModel, type TestServer } from './helpers.js';

const dir = suiteTempDir('edgellm-serve-queue-');
let m: TestModel;
let srv: TestServer;
const lines: string[] = [];

beforeAll(async () => {
  m = buildTestModel(dir);
  srv = await startServer(m.hef, { parallel: 1, maxQueue: 2, log: (l) => lines.push(l) });
});
afterAll(async () => srv?.close());

/** A request that runs until the context is full: ~500 tokens, the better part of a second. */
const slow = { model: 'stories', prompt: 'Once upon a time', max_tokens: 2000, temperature: 1, seed: 7, stop: ['\u0000never'] };

/** Opens a streamed completion and resolves once its first piece has arrived. */
async function openStream(body: object, signal: AbortSignal): Promise<ReadableStreamDefaultReader<Uint8Array>> {
  const r = await fetch(`${srv.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }), signal });
  expect(r.status).toBe(200);
  const reader = r.body!.getReader();
  await reader.read();
  return reader;
}

const waitFor = async (cond: () => boolean, ms: number) => {
  const t0 = Date.now();
  while (!cond() && Date.now() - t0 < ms) await new Promise((r) => setTimeout(r, 5));
  return cond();
};

describe('queue and abort', () => {
  it('answers 6 simultaneous slow requests with 200 or 429 + Retry-After (1 running, 2 queued)', async () => {
    const rs = await Promise.all(Array.from({ length: 6 }, (_, i) => post(`${srv.url}/v1/completions`, { ...slow, max_tokens: 150, seed: i })));
    const statuses = rs.map((r) => r.status).sort();
    expect(statuses.every((s) => s === 200 || s === 429), String(statuses)).toBe(true);
    const refused = rs.filter((r) => r.status === 429);
    expect(refused.length).toBeGreaterThanOrEqual(1);
    expect(rs.filter((r) => r.status === 200).length).toBeGreaterThanOrEqual(3);
    for (const r of refused) {
      expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(r.body.error).toMatchObject({ type: 'rate_limit_error', code: 'queue_full' });
    }
    // the openai client sees the 429 as a RateLimitError
    const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'x', maxRetries: 0 });
    const ac = new AbortController();
    const queued = (signal: AbortSignal) => fetch(`${srv.url}/v1/completions`, { method: 'POST', body: JSON.stringify(slow), signal });
    const hold = [openStream(slow, ac.signal), queued(ac.signal), queued(ac.signal)];
    await waitFor(() => srv.state.queue.waiting === 2, 5000);
    await expect(client.completions.create(slow)).rejects.toMatchObject({ status: 429 });
    ac.abort();
    await Promise.allSettled(hold);
    expect(await waitFor(() => srv.state.queue.running === 0 && srv.state.queue.waiting === 0, 10_000)).toBe(true);
  });

  it('a client that aborts mid-stream frees its slot at once; a queued one frees its place', async () => {
    lines.length = 0;
    const abortedCount = async () => Number(/edgellm_generations_total\{api="openai",status="aborted"\} (\d+)/.exec(await srv.state.metrics.text())?.[1] ?? 0);
    const abortedBefore = await abortedCount();
    const ac = new AbortController();
    await openStream(slow, ac.signal);
    const t0 = performance.now();
    ac.abort();
    const r = await post(`${srv.url}/v1/completions`, { model: 'stories', prompt: 'Hi', max_tokens: 4, temperature: 0 });
    const ms = performance.now() - t0;
    expect(r.status).toBe(200);
    // a full slow generation takes ~500 tokens; the aborted one stopped after a few
    expect(await waitFor(() => lines.some((l) => / 499 .* aborted$/.test(l)), 2000)).toBe(true);
    const gen = Number(/generated=(\d+)/.exec(lines.find((l) => / 499 /.test(l))!)![1]);
    expect(gen).toBeLessThan(100);
    expect(ms).toBeLessThan(1500);
    expect(await abortedCount()).toBe(abortedBefore + 1);

    // queued then gone: the queue place is given back (the next request waits instead of a 429)
    const a1 = new AbortController();
    const running = openStream(slow, a1.signal);
    await running;
    const a2 = new AbortController();
    const q1 = fetch(`${srv.url}/v1/completions`, { method: 'POST', body: JSON.stringify(slow), signal: a2.signal }).catch(() => 'aborted');
    const a3 = new AbortController();
    const q2 = fetch(`${srv.url}/v1/completions`, { method: 'POST', body: JSON.stringify(slow), signal: a3.signal }).catch(() => 'aborted');
    expect(await waitFor(() => srv.state.queue.waiting === 2, 5000)).toBe(true);
    a2.abort();
    a3.abort();
    expect(await waitFor(() => srv.state.queue.waiting === 0, 2000)).toBe(true);
    const q3 = post(`${srv.url}/v1/completions`, { model: 'stories', prompt: 'Hi', max_tokens: 2 });
    a1.abort();
    expect((await q3).status).toBe(200);
    expect(await Promise.all([q1, q2])).toEqual(['aborted', 'aborted']);
    expect((await fetch(`${srv.url}/health`)).status).toBe(200);
  });
});
