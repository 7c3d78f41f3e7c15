/**
 * Per-linear precision through the weight passes (passes/gptq-sequential.ts and passes/rtn.ts with
 * `linears`, as passes/pipeline.ts fills it from a recipe): W8 and W4 at their own group sizes, a
 * linear rounded to nearest inside GPTQ, a linear left float, a W8 lm_head whose table the tied
 * embedding reads; and the compiled graph (MatMulNBits / GatherBlockQuantized bits 8) computes the
 * float model with the dequantized weights.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { gptqModel, gptqReport } from '../../passes/gptq-sequential.js';
import { rtn, dequantizedWeight } from '../../passes/rtn.js';
import { loadTokenWindows } from '../../calibration/datasets.js';
import { loadHfModel } from '../../formats/hf.js';
import { compile } from '../../src/compiler/compile.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { allLinears, lmHead } from '../../src/ir/architectures.js';
import { numGroups, quantizeRtn } from '../../src/ir/quant.js';
import { toFloat32 } from '../../src/ir/tensor.js';
import { inMemory, type Model } from '../../src/ir/model.js';
import type { LinearPrecision } from '../../src/ir/precision.js';
import { quantSchemeOf, weightMix } from '../../src/ir/quant-scheme.js';
import { silentContext } from '../../src/core/context.js';
import { UsageError } from '../../src/core/errors.js';
import { CALIB, STORIES } from '../helpers/paths.js';
import { maxAbsDiff } from '../helpers/numeric.js';

const windows = loadTokenWindows(CALIB).slice(0, 4);
const model = loadHfModel(STORIES);
const cfg = model.config;

/** Every linear W4 g32 GPTQ, then the exceptions. */
function precisionTable(exceptions: Record<string, LinearPrecision>): Record<string, LinearPrecision> {
  return Object.fromEntries(allLinears(cfg).map((s) => [s.name, exceptions[s.name] ?? { bits: 4, groupSize: s.role === 'lm_head' ? 16 : 32, method: 'gptq' }]));
}

const W8 = (groupSize: number, method: 'gptq' | 'rtn' = 'gptq'): LinearPrecision => ({ bits: 8, groupSize, method });
const exceptions: Record<string, LinearPrecision> = {
  ...Object.fromEntries(Array.from({ length: cfg.numLayers }, (_, i) => [`model.layers.${i}.mlp.down_proj`, W8(32)])),
  'model.layers.0.self_attn.q_proj': { bits: 4, groupSize: 64, method: 'rtn' },
  'model.layers.2.mlp.up_proj': { bits: 32, groupSize: 0, method: 'none' },
  lm_head: W8(16),
};
const linears = precisionTable(exceptions);

/** The model with every quantized linear replaced by its dequantized float weight (the tied embedding by lm_head's table). */
function dequantizedFloat(q: Model): Model {
  const weights = new Map([...q.weights].filter(([n]) => !n.endsWith('.qweight') && !n.endsWith('.scales')));
  for (const s of allLinears(cfg))
    if (q.quant.linears[s.name]) weights.set(`${s.name}.weight`, inMemory({ dtype: 'F32', shape: [s.outFeatures, s.inFeatures], data: dequantizedWeight(q, s) }));
  weights.set('model.embed_tokens.weight', inMemory({ dtype: 'F32', shape: [cfg.vocabSize, cfg.hiddenSize], data: dequantizedWeight(q, lmHead(cfg)) }));
  weights.delete('lm_head.weight'); // tied again: lm_head reads the embedding
  return { ...q, weights, quant: { ...q.quant, linears: {} } };
}

describe('gptqModel with per-linear precision', () => {
  let q: Model;
  beforeAll(async () => {
    q = await gptqModel(model, windows, { groupSize: 32, quantizeLmHead: true, lmHeadGroupSize: 16, linears }, silentContext);
  });

  it('stores each linear at its bits and group size, leaves the float one float, records the method', () => {
    for (const s of allLinears(cfg)) {
      const p = linears[s.name];
      if (p.bits === 32) {
        expect(q.quant.linears[s.name]).toBeUndefined();
        expect(q.weights.has(`${s.name}.weight`)).toBe(true);
        expect(q.weights.has(`${s.name}.qweight`)).toBe(false);
        continue;
      }
      const nb = numGroups(s.inFeatures, p.groupSize);
      expect(q.quant.linears[s.name], s.name).toEqual({ bits: p.bits, groupSize: p.groupSize, scheme: 'symmetric', method: p.method });
      expect(q.weights.get(`${s.name}.qweight`)!.shape, s.name).toEqual([s.outFeatures, nb, (p.groupSize * p.bits) / 8]);
      expect(q.weights.get(`${s.name}.scales`)!.shape).toEqual([s.outFeatures, nb]);
    }
    expect(q.passes.at(-1)!.options.linears).toEqual(linears);
  });

  it('rounds the rtn linear to nearest in its place (the same codes as quantizeRtn), and GPTQ beats RTN on the W8 ones', () => {
    const s = allLinears(cfg).find((l) => l.name === 'model.layers.0.self_attn.q_proj')!;
    const want = quantizeRtn(toFloat32(model.weights.get(`${s.name}.weight`)!.load()), s.outFeatures, s.inFeatures, 64, 4);
    expect(q.weights.get(`${s.name}.qweight`)!.load().data).toEqual(want.qweight);
    const rep = new Map(gptqReport(q)!.map((r) => [r.name, r]));
    expect(rep.get(s.name)!.gptq).toBe(rep.get(s.name)!.rtn);
    expect(q.report!.linears[s.name].method).toBe('rtn');
    expect(rep.has('model.layers.2.mlp.up_proj')).toBe(false);
    for (let i = 0; i < cfg.numLayers; i++) {
      const r = rep.get(`model.layers.${i}.mlp.down_proj`)!;
      expect(r.gptq, r.name).toBeLessThan(r.rtn);
      expect(r.rtn / r.reference, r.name).toBeLessThan(1e-3); // W8: ~256× below W4's error
    }
  });

  it('summarises the mix: the most common precision in the scheme, the rest in weightMix', () => {
    const s = quantSchemeOf(q);
    expect([s.weightBits, s.weightGroupSize, s.weightMethod, s.lmHeadBits, s.lmHeadGroupSize, s.embeddingShared]).toEqual([4, 32, 'rtn+gptq', 8, 16, true]);
    expect(weightMix(q)).toEqual([
      ['W4 g32 gptq', 28],
      ['W8 g32 gptq', 5],
      ['W4 g64 rtn', 1],
      ['float', 1],
    ]);
  });

  // MatMulNBits bits 8 (ragged K = 172 for down_proj), GatherBlockQuantized bits 8 for the tied
  // embedding, a float Gemm for up_proj: the compiled logits equal the float model carrying the
  // dequantized weights (both float32; 1e-4 as for W4, test/compiler/lower.test.ts)
  it('compiles and runs: logits equal the float model with the dequantized weights (1e-4)', async () => {
    const ids = [1, ...windows[0].slice(0, 40)];
    const run = async (m: Model) => {
      const backend = await SimulatorBackend.load(compile(m, { prefillLen: 64, maxContext: 256 }));
      const out = await backend.forward(backend.newContext(), ids);
      await backend.dispose();
      return out;
    };
    expect(maxAbsDiff(await run(q), await run(dequantizedFloat(q)))).toBeLessThan(1e-4);
  });
});

describe('rtn with per-linear precision', () => {
  it('rounds every linear at its own bits and group size (method ignored), skipping float ones', () => {
    const q = rtn(model, { groupSize: 32, quantizeLmHead: true, lmHeadGroupSize: 16, linears }, silentContext);
    for (const s of allLinears(cfg)) {
      const p = linears[s.name];
      if (p.bits === 32) {
        expect(q.quant.linears[s.name]).toBeUndefined();
        continue;
      }
      const W = toFloat32((s.role === 'lm_head' ? model.weights.get('model.embed_tokens.weight') : model.weights.get(`${s.name}.weight`))!.load());
      expect(q.weights.get(`${s.name}.qweight`)!.load().data, s.name).toEqual(quantizeRtn(W, s.outFeatures, s.inFeatures, p.groupSize, p.bits as 4 | 8).qweight);
      expect(q.quant.linears[s.name].method).toBe('rtn');
    }
  });

  it('refuses bad per-linear widths and group sizes', () => {
    expect(() => rtn(model, { groupSize: 32, quantizeLmHead: false, linears: { ...linears, lm_head: { bits: 6 as 8, groupSize: 16, method: 'rtn' } } }, silentContext)).toThrow(UsageError);
    expect(() => rtn(model, { groupSize: 32, quantizeLmHead: false, linears: { ...linears, lm_head: W8(24) } }, silentContext)).toThrow('--group-size 24');
  });
});
