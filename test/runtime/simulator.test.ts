/**
 * runtime/simulator: the onnxruntime-node backend through the ExecutionBackend contract
 * (src/runtime/backend.ts), on the real stories260K checkpoint compiled in fp32.
 *
 * Tolerances:
 *  - different call patterns (one prefill call, several calls, token-by-token decode) run different
 *    graphs (static chunk of 16 vs 1 token) over the same weights, so ORT may reassociate float32
 *    sums differently; on logits of magnitude ~10 after 5 layers that moves values by ~1e-6 relative.
 *    Bound: 1e-4 absolute (as test/compiler/lower.test.ts uses against the reference forward).
 *  - the same graph on the same inputs (lastOnly vs all rows, a fork vs an untouched context) is
 *    required to be bit-exact: ORT's CPU kernels are deterministic for identical shapes and feeds,
 *    and a fork shares the very same cache tensors, so any difference would be a state leak.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mulberry32 } from '../../src/core/rng.js';
import { loadHfModel } from '../../formats/hf.js';
import { compile } from '../../src/compiler/compile.js';
import { EdgeLLMError } from '../../src/core/errors.js';
import type { Model } from '../../src/ir/model.js';
import { referenceForward } from '../../src/ir/reference.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { STORIES } from '../helpers/paths.js';
import { maxAbsDiff } from '../helpers/numeric.js';

const V = 512;
const TOL = 1e-4;

/** BOS then n − 1 pseudo-random ids in [3, vocab) (seeded). */
function prompt(n: number, seed: number): number[] {
  const r = mulberry32(seed);
  return [1, ...Array.from({ length: n - 1 }, () => 3 + Math.floor(r() * (V - 3)))];
}

/** Feeds `ids` to a fresh context in calls of the given sizes; returns all rows [ids.length, V]. */
async function feed(b: SimulatorBackend, ids: number[], sizes: number[]): Promise<Float32Array> {
  expect(sizes.reduce((a, x) => a + x, 0)).toBe(ids.length);
  const ctx = b.newContext();
  const out = new Float32Array(ids.length * V);
  let at = 0;
  for (const s of sizes) {
    const rows = await b.forward(ctx, ids.slice(at, at + s));
    expect(rows.length).toBe(s * V);
    out.set(rows, at * V);
    at += s;
    expect(ctx.length).toBe(at);
  }
  return out;
}

describe('SimulatorBackend on stories260K (fp32)', () => {
  let model: Model;
  let b: SimulatorBackend;
  beforeAll(async () => {
    model = loadHfModel(STORIES);
    b = await SimulatorBackend.load(compile(model, { prefillLen: 16 }));
  });
  afterAll(async () => {
    await b?.dispose();
  });

  it('reports the executable it loaded', () => {
    expect(b.prefillLen).toBe(16);
    expect(b.maxContext).toBe(512); // default: max_position_embeddings of config.json
    expect(b.vocabSize).toBe(V);
    expect(b.adapters).toEqual([]);
    expect(b.name).toMatch(/simulator/);
  });

  it('logits of a short sequence agree with the TypeScript reference forward to 1e-4', async () => {
    const ids = prompt(12, 1);
    const got = await b.forward(b.newContext(), ids);
    expect(got.length).toBe(ids.length * V);
    expect(maxAbsDiff(got, referenceForward(model, ids))).toBeLessThan(TOL);
  });

  it('one prefill chunk, several calls and token-by-token decode give the same logits (1e-4)', async () => {
    const ids = prompt(14, 2); // fits one chunk of 16 (padded)
    const one = await feed(b, ids, [14]);
    const split = await feed(b, ids, [5, 9]);
    const steps = await feed(b, ids, Array(14).fill(1));
    expect(maxAbsDiff(split, one)).toBeLessThan(TOL);
    expect(maxAbsDiff(steps, one)).toBeLessThan(TOL);
    // the last rows, which a generator would sample from, in particular
    const last = (x: Float32Array) => x.subarray((ids.length - 1) * V);
    expect(maxAbsDiff(last(steps), last(one))).toBeLessThan(TOL);
  });

  it('a prompt longer than prefillLen (3 chunks, the last padded) equals uneven calls and decode steps (1e-4)', async () => {
    const ids = prompt(40, 3);
    const one = await feed(b, ids, [40]);
    const uneven = await feed(b, ids, [7, 20, 1, 12]);
    const steps = await feed(b, ids, Array(40).fill(1));
    expect(maxAbsDiff(uneven, one)).toBeLessThan(TOL);
    expect(maxAbsDiff(steps, one)).toBeLessThan(TOL);
  });

  it('lastOnly returns exactly the last row of the full result', async () => {
    const ids = prompt(21, 4);
    const all = await b.forward(b.newContext(), ids);
    const ctx = b.newContext();
    const last = await b.forward(ctx, ids, { lastOnly: true });
    expect(last.length).toBe(V);
    expect(ctx.length).toBe(21);
    expect(Array.from(last)).toEqual(Array.from(all.subarray(20 * V)));
  });

  it('a context holds the tokens fed: length grows by each call', async () => {
    const ctx = b.newContext();
    expect(ctx.length).toBe(0);
    expect(ctx.adapter).toBeNull();
    await b.forward(ctx, prompt(3, 5));
    expect(ctx.length).toBe(3);
    await b.forward(ctx, [42]);
    expect(ctx.length).toBe(4);
    await b.forward(ctx, prompt(17, 6).slice(1));
    expect(ctx.length).toBe(20);
    // other contexts are independent
    expect(b.newContext().length).toBe(0);
  });

  it('fork() continues bit-exactly like the original and leaves it unchanged (copy-on-write)', async () => {
    const ids = prompt(18, 7);
    const contA = prompt(6, 8).slice(1);
    const contB = prompt(6, 9).slice(1);
    const base = b.newContext();
    await b.forward(base, ids);
    const fork = b.fork(base);
    expect(fork.length).toBe(18);
    expect(fork.adapter).toBe(base.adapter);
    // the fork runs one continuation, then the original another
    const onFork = await b.forward(fork, contA);
    expect(fork.length).toBe(23);
    expect(base.length).toBe(18); // forwarding the fork did not move the original
    const onBase = await b.forward(base, contB);
    expect(base.length).toBe(23);
    // each equals the same continuation on a context that was never forked
    const fresh = async (cont: number[]) => {
      const c = b.newContext();
      await b.forward(c, ids);
      return b.forward(c, cont);
    };
    expect(Array.from(onFork)).toEqual(Array.from(await fresh(contA)));
    expect(Array.from(onBase)).toEqual(Array.from(await fresh(contB)));
    // and the continuations really differ (the comparison above is not vacuous)
    expect(maxAbsDiff(onFork, onBase)).toBeGreaterThan(1e-2);
    // a fork of a fork, continued by one decode step, matches the reference forward (1e-4)
    const f2 = b.fork(fork);
    const next = await b.forward(f2, [contB[0]]);
    expect(maxAbsDiff(next, referenceForward(model, [...ids, ...contA, contB[0]]).subarray(23 * V))).toBeLessThan(TOL);
  });

  it('rejects an empty call and unknown adapters with EdgeLLMError', async () => {
    const ctx = b.newContext();
    await expect(b.forward(ctx, [])).rejects.toThrow(EdgeLLMError);
    expect(ctx.length).toBe(0);
    expect(() => b.newContext({ adapter: 'nope' })).toThrow(EdgeLLMError);
    expect(() => b.selectAdapter('nope')).toThrow(/no LoRA adapter 'nope'.*none/);
    b.selectAdapter(null); // the base model is always selectable
  });

  it('rejects token ids outside the vocabulary (negative, too large, fractional) before running anything', async () => {
    const ctx = b.newContext();
    for (const bad of [[1, -1], [1, V], [2.5]]) {
      await expect(b.forward(ctx, bad)).rejects.toThrow(EdgeLLMError);
      await expect(b.forward(ctx, bad)).rejects.toThrow(/outside the vocabulary \[0, 512\)/);
    }
    expect(ctx.length).toBe(0);
  });
});

describe('SimulatorBackend at the KV-cache capacity', () => {
  let model: Model;
  let b: SimulatorBackend;
  const CAP = 40;
  beforeAll(async () => {
    model = loadHfModel(STORIES);
    b = await SimulatorBackend.load(compile(model, { prefillLen: 16, maxContext: CAP }));
  });
  afterAll(async () => {
    await b?.dispose();
  });

  it('fills the context exactly (chunks that would pass the end go through decode) and matches the reference (1e-4)', async () => {
    expect(b.maxContext).toBe(CAP);
    const ids = prompt(CAP, 10);
    const ctx = b.newContext();
    // 35 tokens: chunks at 0 and 16, then 32 + 16 > 40, so the last 3 run one at a time
    const first = await b.forward(ctx, ids.slice(0, 35));
    // 5 more from 35: all through decode
    const rest = await b.forward(ctx, ids.slice(35));
    expect(ctx.length).toBe(CAP);
    const got = new Float32Array(CAP * V);
    got.set(first);
    got.set(rest, 35 * V);
    expect(maxAbsDiff(got, referenceForward(model, ids))).toBeLessThan(TOL);
  });

  it('throws EdgeLLMError past the capacity and leaves the context as it was', async () => {
    const ids = prompt(CAP + 1, 11);
    const full = b.newContext();
    await b.forward(full, ids.slice(0, CAP));
    await expect(b.forward(full, [ids[CAP]])).rejects.toThrow(EdgeLLMError);
    await expect(b.forward(full, [ids[CAP]])).rejects.toThrow(/context full: 40 \+ 1 tokens exceed the KV-cache capacity of 40/);
    expect(full.length).toBe(CAP);
    // one call that would overflow an empty context is refused before anything runs
    const empty = b.newContext();
    await expect(b.forward(empty, ids)).rejects.toThrow(EdgeLLMError);
    expect(empty.length).toBe(0);
    // a partly filled one too: 30 + 11 > 40
    const part = b.newContext();
    await b.forward(part, ids.slice(0, 30));
    await expect(b.forward(part, ids.slice(0, 11))).rejects.toThrow(/exceed/);
    expect(part.length).toBe(30);
    // and it still runs up to the capacity afterwards
    await b.forward(part, ids.slice(30, 40));
    expect(part.length).toBe(CAP);
  });
});

describe('SimulatorBackend.dispose', () => {
  it('releases the sessions: it resolves, and later forwards reject', async () => {
    const model = loadHfModel(STORIES);
    const b = await SimulatorBackend.load(compile(model, { prefillLen: 16, maxContext: 32 }));
    const ctx = b.newContext();
    await b.forward(ctx, [1, 5]);
    await expect(b.dispose()).resolves.toBeUndefined();
    await expect(b.dispose()).resolves.toBeUndefined(); // a second dispose does nothing
    await expect(b.forward(ctx, [7])).rejects.toThrow(/disposed/);
    await expect(b.forward(b.newContext(), [1, 2, 3])).rejects.toThrow(EdgeLLMError);
  });
});
