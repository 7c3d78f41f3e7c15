import { describe, it, expect, beforeAll } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { compile } from '../../src/compiler/compile.js';
import { lowerModel } from '../../src/compiler/lower.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { referenceForward } from '../../src/ir/reference.js';
import { rtn } from '../../passes/rtn.js';
import { silentContext } from '../../src/core/context.js';
import type { Model } from '../../src/ir/model.js';
import { tinyQwen2 } from '../helpers/fixtures.js';
import { STORIES } from '../helpers/paths.js';
import { maxAbsDiff } from '../helpers/numeric.js';
import { suiteTempDir } from '../helpers/tmp.js';

function tokens(n: number, vocab: number, seed: number): number[] {
  let s = seed;
  return Array.from({ length: n }, () => (s = (s * 1103515245 + 12345) % 2147483648) % vocab);
}

describe('lowerModel on stories260K', () => {
  let model: Model;
  beforeAll(() => {
    model = loadHfModel(STORIES);
  });

  // Tolerance 1e-4 absolute on logits of magnitude ~10: float32 ONNX vs the float64-accumulating
  // TypeScript reference differ only by float32 rounding (~1e-6 relative per op over 5 layers).
  it('fp32 graph logits match the TypeScript reference forward to 1e-4 (prefill in chunks + decode)', async () => {
    const ids = [1, ...tokens(40, 512, 7)];
    const backend = await SimulatorBackend.load(compile(model, { prefillLen: 16 }));
    const ctx = backend.newContext();
    // 33 tokens through the prefill graph (chunks of 16, last one padded), then 8 decode steps
    const prefill = await backend.forward(ctx, ids.slice(0, 33));
    const decode: Float32Array[] = [];
    for (const t of ids.slice(33)) decode.push(await backend.forward(ctx, [t]));
    const got = new Float32Array(ids.length * 512);
    got.set(prefill);
    decode.forEach((d, i) => got.set(d, (33 + i) * 512));
    const ref = referenceForward(model, ids);
    expect(maxAbsDiff(got, ref)).toBeLessThan(1e-4);
    await backend.dispose();
  });

  it('W4 graph (MatMulNBits) matches the reference forward with dequantized weights; the tied table is shared', async () => {
    const q = rtn(model, { groupSize: 64, quantizeLmHead: true }, silentContext);
    const ids = [1, ...tokens(20, 512, 3)];
    const exe = compile(q, { prefillLen: 32 });
    // one 4-bit copy: the lookup reads lm_head's MatMulNBits initializer, the float table is not shipped
    expect(exe.weights.has('model.embed_tokens.weight')).toBe(false);
    expect(exe.weights.has('lm_head.qweight')).toBe(true);
    expect(Buffer.from(exe.prefill.onnx).includes(Buffer.from('GatherBlockQuantized'))).toBe(true);
    const backend = await SimulatorBackend.load(exe);
    const got = await backend.forward(backend.newContext(), ids);
    // MatMulNBits dequantizes in float32 and accumulates blockwise: same 1e-4 bound.
    expect(maxAbsDiff(got, referenceForward(q, ids))).toBeLessThan(1e-4);
    await backend.dispose();
  });

  it('names every node and gives graph I/O the documented contract', () => {
    const g = lowerModel(model, { seqLen: 1, maxContext: 64 });
    const ins = g.inputSpecs.map((s) => `${s.name}:${s.type}:[${s.shape}]`);
    expect(ins[0]).toBe('input_ids:int64:[1,1]');
    expect(ins).toContain('past_key_values.4.value:float32:[1,past_sequence_length,4,8]');
    const outs = g.outputSpecs.map((s) => s.name);
    expect(outs).toContain('new_key_values.0.key');
    expect(g.outputSpecs.find((s) => s.name === 'new_key_values.0.key')?.shape).toEqual([1, 1, 4, 8]);
    expect(outs[outs.length - 1]).toBe('logits');
  });
});

describe('lowerModel on a generated Qwen2 fixture (q/k/v biases, tied embeddings, GQA)', () => {
  const dir = suiteTempDir('edgellm-qwen2-');
  let model: Model;
  beforeAll(() => {
    model = tinyQwen2(dir, { seed: 5 });
  });

  it('normalises the config: qwen2 family, biases, tied, GQA 4/2', () => {
    const c = model.config;
    expect([c.family, c.qkvBias, c.tieWordEmbeddings, c.numHeads, c.numKvHeads]).toEqual(['qwen2', true, true, 4, 2]);
    expect(model.weights.has('model.layers.1.self_attn.v_proj.bias')).toBe(true);
  });

  // Same 1e-4 bound as for stories260K (logits here are O(1)).
  it('fp32 graph logits match the TypeScript reference forward to 1e-4 (prefill chunks + decode)', async () => {
    const ids = [1, ...tokens(25, 300, 11)];
    const backend = await SimulatorBackend.load(compile(model, { prefillLen: 8 }));
    const ctx = backend.newContext();
    const got = new Float32Array(ids.length * 300);
    got.set(await backend.forward(ctx, ids.slice(0, 20)));
    for (let i = 20; i < ids.length; i++) got.set(await backend.forward(ctx, [ids[i]]), i * 300);
    expect(maxAbsDiff(got, referenceForward(model, ids))).toBeLessThan(1e-4);
    await backend.dispose();
  });
});
