/**
 * runtime/session: ModelSession on the real stories260K, compiled in fp32 (float32 KV cache) and
 * quantized (RTN W4, A8, uint8 KV8), with a 96-token context so the capacity is reachable.
 *
 * References are computed independently, through the backend contract alone: a fresh context,
 * one forward of the whole prompt, then argmax and one-token forwards (what `generate` did before the
 * session existed). Greedy decoding on the same graphs and the same cache bytes is deterministic
 * (ORT's CPU kernels give identical results for identical feeds), so tokens are compared exactly.
 * Prefix reuse is compared on the fp32 build only: there the reused and re-evaluated caches differ
 * by float32 reassociation (~1e-6), far from any argmax margin of this model's greedy text; with a
 * uint8 cache such a difference can flip a KV8 code, so on the quantized build the exact comparison
 * is between an unbroken conversation and a saved-and-restored one (same bytes by construction).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { compile } from '../../src/compiler/compile.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { ModelSession, ContextOverflowError } from '../../src/runtime/session.js';
import { ContextLimitError } from '../../src/runtime/contexts.js';
import { argmax } from '../../src/runtime/sampling.js';
import { ParamError } from '../../src/runtime/params.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { FormatError } from '../../src/core/errors.js';
import { quantizeModel, DEFAULT_QUANTIZE_OPTIONS } from '../../passes/pipeline.js';
import { silentContext } from '../../src/core/context.js';
import type { Executable } from '../../src/ir/executable.js';
import { STORIES } from '../helpers/paths.js';
import { randomWindows } from '../helpers/fixtures.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';

const CAP = 96;
let fp32: Executable;
let q8: Executable;
const dir = makeTempDir('edgellm-session-');
const open: ModelSession[] = [];

async function session(exe: Executable, opts: { maxContexts?: number; spillDir?: string; digest?: string } = {}): Promise<ModelSession> {
  const s = new ModelSession(await SimulatorBackend.load(exe), new TextTokenizer(exe.tokenizer), {
    modelDigest: () => opts.digest ?? '0'.repeat(64),
    eosTokenIds: exe.config.eosTokenIds,
    contexts: { maxContexts: opts.maxContexts, spillDir: opts.spillDir },
  });
  open.push(s);
  return s;
}

/** Greedy reference through the backend contract: n tokens after `prompt` (stops early at EOS). */
async function reference(exe: Executable, prompt: number[], n: number): Promise<number[]> {
  const b = await SimulatorBackend.load(exe);
  const ctx = b.newContext();
  let logits = await b.forward(ctx, prompt, { lastOnly: true });
  const out: number[] = [];
  while (out.length < n) {
    const id = argmax(logits);
    if (exe.config.eosTokenIds.includes(id)) break;
    out.push(id);
    if (out.length < n) logits = await b.forward(ctx, [id]);
  }
  await b.dispose();
  return out;
}

beforeAll(async () => {
  const model = loadHfModel(STORIES);
  fp32 = compile(model, { prefillLen: 16, maxContext: CAP, modelName: 'fp32' });
  const { quantized } = await quantizeModel(model, { ...DEFAULT_QUANTIZE_OPTIONS, method: 'rtn' }, randomWindows(4, 64, 512, 1), silentContext);
  q8 = compile(quantized, { prefillLen: 16, maxContext: CAP, modelName: 'q8' });
  expect(q8.kvLayout.dtype).toBe('uint8');
});
afterAll(async () => {
  for (const s of open) await s.dispose();
  removeDir(dir);
});

const greedy = { temperature: 0 };

describe('ModelSession.generate', () => {
  it('greedy text and tokens equal the backend-contract reference; the streamed pieces join to the text', async () => {
    const s = await session(fp32);
    const prompt = await s.encode({ prompt: 'Once upon a time' });
    const pieces: string[] = [];
    const r = await s.generate({ input: { prompt: 'Once upon a time' }, params: { ...greedy, maxTokens: 30 }, onText: (t) => void pieces.push(t) });
    expect(r.tokens).toEqual(await reference(fp32, prompt, 30));
    expect(r.status).toBe('max_tokens');
    expect(pieces.join('')).toBe(r.text);
    const all = await s.tokenizer.decode([...prompt, ...r.tokens]);
    expect(r.text).toBe(all.slice((await s.tokenizer.decode(prompt)).length));
    expect([r.promptTokens, r.cachedTokens, r.contextCapacity]).toEqual([prompt.length, 0, CAP]);
    expect(r.contextIds).toEqual([...prompt, ...r.tokens]);
  });

  it('a prompt extending what a context holds evaluates only the new tokens, with the same greedy result', async () => {
    const s = await session(fp32);
    const r1 = await s.generate({ input: { prompt: 'The cat' }, context: 'c', params: { ...greedy, maxTokens: 12 } });
    const more = [...r1.contextIds, ...(await s.tokenizer.encode(' Then the dog', false))];
    const r2 = await s.generate({ input: { tokens: more }, context: 'c', params: { ...greedy, maxTokens: 12 } });
    // the cache holds the prompt and all generated tokens but the last (never fed back)
    expect(r2.cachedTokens).toBe(r1.contextIds.length - 1);
    expect(r2.tokens).toEqual(await reference(fp32, more, 12));
    // a prompt that diverges inside the cache reuses only the common prefix
    const r3 = await s.generate({ input: { tokens: more.slice(0, 4).concat([300, 301]) }, context: 'c', params: { ...greedy, maxTokens: 3 } });
    expect(r3.cachedTokens).toBe(4);
    // anonymous slots: the same prompt twice reuses all but its last token
    const a = await s.generate({ input: { tokens: more }, params: { ...greedy, maxTokens: 2 } });
    const b = await s.generate({ input: { tokens: more }, params: { ...greedy, maxTokens: 2 } });
    expect([a.cachedTokens, b.cachedTokens]).toEqual([0, more.length - 1]);
    expect(b.tokens).toEqual(a.tokens);
  });

  it('stop strings cut the text before them; stop token ids end generation without emitting them', async () => {
    const s = await session(fp32);
    const base = await s.generate({ input: { prompt: 'Once upon a time' }, params: { ...greedy, maxTokens: 40 } });
    const stop = base.text.slice(Math.floor(base.text.length / 2), Math.floor(base.text.length / 2) + 3);
    const pieces: string[] = [];
    const r = await s.generate({ input: { prompt: 'Once upon a time' }, params: { ...greedy, maxTokens: 40, stop: [stop, 'never-there'] }, onText: (t) => void pieces.push(t) });
    expect(r.text).toBe(base.text.slice(0, base.text.indexOf(stop)));
    expect(pieces.join('')).toBe(r.text);
    expect([r.status, r.stoppedBy]).toEqual(['end', { string: stop }]);
    const id = base.tokens[6];
    const t = await s.generate({ input: { prompt: 'Once upon a time' }, params: { ...greedy, maxTokens: 40, stopTokenIds: [id] } });
    expect(t.tokens).toEqual(base.tokens.slice(0, base.tokens.indexOf(id)));
    expect([t.status, t.stoppedBy]).toEqual(['end', { tokenId: id }]);
  });

  it('repetition penalties change greedy decoding and look at the prompt too', async () => {
    const s = await session(fp32);
    const plain = await s.generate({ input: { prompt: 'Once upon a time' }, params: { ...greedy, maxTokens: 40 } });
    const pen = await s.generate({ input: { prompt: 'Once upon a time' }, params: { ...greedy, maxTokens: 40, repeatPenalty: 1.5, repeatLastN: -1 } });
    expect(pen.tokens).not.toEqual(plain.tokens);
    // penalised seen tokens make room for new ones: the fraction of distinct tokens rises
    expect(new Set(pen.tokens).size / pen.tokens.length).toBeGreaterThan(new Set(plain.tokens).size / plain.tokens.length);
    await expect(s.generate({ input: { prompt: 'x' }, params: { topP: 2 } })).rejects.toThrow(ParamError);
    await expect(s.generate({ input: { prompt: 'x' }, params: { maxTokens: 0 } })).rejects.toThrow(/^maxTokens: must be in \[1, /);
  });

  it('aborts between tokens, fills the context to its capacity, refuses a prompt that does not fit', async () => {
    const s = await session(fp32);
    const ac = new AbortController();
    let n = 0;
    const r = await s.generate({ input: { prompt: 'Once upon a time' }, params: { ...greedy, maxTokens: 50 }, signal: ac.signal, onText: () => void (++n === 3 && ac.abort()) });
    expect(r.status).toBe('aborted');
    expect(r.tokens.length).toBeLessThan(10);
    const full = await s.generate({ input: { prompt: 'Once upon a time' }, context: 'f', params: { temperature: 1, seed: 3, maxTokens: 1000, stopTokenIds: [] } });
    expect([full.status, full.contextTokens]).toEqual(['context_full', CAP]);
    await expect(s.generate({ input: { tokens: Array(CAP).fill(300) } })).rejects.toThrow(ContextOverflowError);
    await expect(s.generate({ input: { tokens: [1, 512] } })).rejects.toThrow(/token id 512 is outside the vocabulary \[0, 512\)/);
  });
});

describe('contexts: save, load, spill (uint8 KV8 cache)', () => {
  it('save -> load in a new session continues exactly as the unbroken conversation', async () => {
    const turn2 = async (s: ModelSession, id: string, first: number[]) =>
      s.generate({ input: { tokens: [...first, ...(await s.tokenizer.encode(' and then', false))] }, context: id, params: { ...greedy, maxTokens: 15 } });
    const a = await session(q8);
    const r1 = await a.generate({ input: { prompt: 'Lily had a ball' }, context: 'x', params: { ...greedy, maxTokens: 15 } });
    const unbroken = await turn2(a, 'x', r1.contextIds);

    const b = await session(q8);
    const r1b = await b.generate({ input: { prompt: 'Lily had a ball' }, context: 'y', params: { ...greedy, maxTokens: 15 } });
    expect(r1b.tokens).toEqual(r1.tokens);
    const file = path.join(dir, 'y.ctx');
    expect(b.contexts.save('y', file)).toBe(r1.contextIds.length - 1);

    const c = await session(q8);
    c.contexts.load('z', file);
    const resumed = await turn2(c, 'z', r1.contextIds);
    expect(resumed.tokens).toEqual(unbroken.tokens);
    expect(resumed.cachedTokens).toBe(unbroken.cachedTokens);

    // a flipped byte or another model: refused in one line, the held context unchanged
    const bad = path.join(dir, 'bad.ctx');
    const bytes = fs.readFileSync(file);
    bytes[bytes.length >> 1] ^= 0x10;
    fs.writeFileSync(bad, bytes);
    const before = [...c.contexts.get('z').tokens];
    expect(() => c.contexts.load('z', bad)).toThrow(FormatError);
    expect(() => c.contexts.load('z', bad)).toThrow(/bad\.ctx: corrupt: sha256 mismatch/);
    const other = await session(q8, { digest: 'f'.repeat(64) });
    expect(() => other.contexts.load('z', file)).toThrow(/y\.ctx: saved from another model/);
    expect(c.contexts.get('z').tokens).toEqual(before);
    // and from a float32-cache model: same digest on purpose, the layout check refuses it
    const f32 = await session(fp32);
    expect(() => f32.contexts.load('z', file)).toThrow(/KV layout differs: dtype uint8, the model has float32/);
  });

  it('holds at most maxContexts: the least recently used spills to disk and comes back intact, or a clear refusal', async () => {
    const spill = path.join(dir, 'spill');
    const s = await session(q8, { maxContexts: 2, spillDir: spill });
    const first = await s.generate({ input: { prompt: 'One' }, context: 'a', params: { ...greedy, maxTokens: 8 } });
    await s.generate({ input: { prompt: 'Two' }, context: 'b', params: { ...greedy, maxTokens: 8 } });
    await s.generate({ input: { prompt: 'Three' }, context: 'c', params: { ...greedy, maxTokens: 8 } });
    expect(fs.readdirSync(spill)).toEqual(['a.spill.ctx']);
    expect(s.contexts.ids()).toEqual(['a', 'b', 'c']);
    const again = await s.generate({ input: { tokens: first.contextIds }, context: 'a', params: { ...greedy, maxTokens: 4 } });
    expect(again.cachedTokens).toBe(first.contextIds.length - 1);
    expect(fs.readdirSync(spill)).toEqual(['b.spill.ctx']);

    const t = await session(q8, { maxContexts: 1 });
    await t.generate({ input: { prompt: 'One' }, context: 'a', params: { ...greedy, maxTokens: 2 } });
    await expect(t.generate({ input: { prompt: 'Two' }, context: 'b', params: { ...greedy, maxTokens: 2 } })).rejects.toThrow(ContextLimitError);
    t.contexts.delete('a');
    await t.generate({ input: { prompt: 'Two' }, context: 'b', params: { ...greedy, maxTokens: 2 } });
    expect(t.contexts.ids()).toEqual(['b']);
    expect(() => t.contexts.get('../x')).toThrow(/context id "\.\.\/x" is not/);
  });
});
