/**
 * The sensitivity analysis (passes/sensitivity.ts) on stories260K: every candidate promotion is
 * measured, and what it measures is what `quantize --recipe` with that one promotion produces —
 * checked where the two must agree exactly: lm_head (the last linear: nothing quantized after it
 * sees its output, and GPTQ solves it on the same Hessian), an activation point and a layer's KV
 * cache (ranges are observed on float activations, so one point's width changes nothing else). There the candidate's
 * KLD must equal the KLD src/eval/kld.ts measures on the recipe-quantized model, up to float64
 * summation order (1e-9 nats: the two sum the same float64 per-token terms in different orders).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { loadTokenWindows } from '../../calibration/datasets.js';
import { measureSensitivity } from '../../passes/sensitivity.js';
import { compile } from '../../src/compiler/compile.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { klDivergence } from '../../src/eval/kld.js';
import { silentContext } from '../../src/core/context.js';
import { activationPoints, allLinears } from '../../src/ir/architectures.js';
import type { Model } from '../../src/ir/model.js';
import type { SensitivityReport } from '../../src/ir/sensitivity.js';
import { loadPeftAdapter } from '../../formats/peft.js';
import { addLora } from '../../passes/lora/add.js';
import { quantizeWithRecipe } from '../helpers/recipe-quantize.js';
import { CALIB, STORIES, WIKI_ADAPTER } from '../helpers/paths.js';

/** Same-sum-different-order float64 tolerance of two mean KLDs (nats/token). */
const KLD_TOL = 1e-9;
const SEQ = 96;

/** KLD of `m` from `ref` on `windows` (both with `adapter` selected), by src/eval/kld.ts. */
async function kldFrom(m: Model, ref: Model, windows: number[][], adapter: string | null): Promise<number> {
  const load = (x: Model) => SimulatorBackend.load(compile(x, { prefillLen: SEQ, maxContext: SEQ }));
  const [a, b] = [await load(m), await load(ref)];
  try {
    a.selectAdapter(adapter);
    b.selectAdapter(adapter);
    return (await klDivergence(a, b, windows)).meanKld;
  } finally {
    await a.dispose();
    await b.dispose();
  }
}

describe('measureSensitivity on stories260K (16 calibration windows of 96 tokens, KLD on 3)', () => {
  const base = loadHfModel(STORIES);
  const windows = loadTokenWindows(CALIB, { vocabSize: base.config.vocabSize })
    .slice(0, 16)
    .map((w) => w.slice(0, SEQ));
  const measure = windows.slice(0, 3);
  let q: Model;
  let report: SensitivityReport;

  const kldOf = (m: Model) => kldFrom(m, base, measure, null);

  beforeAll(async () => {
    q = await quantizeWithRecipe(base, 'defaults: {}\n', windows);
    report = await measureSensitivity(q, base, { calibration: windows, measure }, silentContext);
  }, 300_000);

  it('measures g16 and W8 for every W4 g32 linear, W8 for the g16 lm_head, A16 for every A8 point, KV16 for every KV8 layer, in model order', () => {
    const expected: string[] = [];
    for (const s of allLinears(base.config)) {
      if (s.role !== 'lm_head') expected.push(`${s.name} W4 g16 gptq`);
      expected.push(`${s.name} W8 g${s.role === 'lm_head' ? 16 : 32} gptq`);
    }
    for (const p of activationPoints(base.config)) expected.push(`${p} A16`);
    for (let l = 0; l < base.config.numLayers; l++) expected.push(`model.layers.${l}.{k,v}_cache KV16`);
    expect(report.candidates.map((c) => `${c.module} ${c.to}`)).toEqual(expected);
    expect(report.windows).toBe(3);
    expect(report.seqLen).toBe(SEQ);
    expect(report.adapter).toBeNull();
  });

  it('costs: a promotion adds the bytes of its wider codes or extra scales; activation points cost none', () => {
    const by = (m: string, to: string) => report.candidates.find((c) => c.module === m && c.to === to)!;
    // lm_head 512 × 64 at g16: 4 groups per row, 8 → 16 bytes of codes a group
    expect(by('lm_head', 'W8 g16 gptq').bytes).toBe(512 * 4 * 8);
    // q_proj 64 × 64: g32 → g16 adds 2 float32 scales a row
    expect(by('model.layers.0.self_attn.q_proj', 'W4 g16 gptq').bytes).toBe(64 * 2 * 4);
    // down_proj 64 × 172: 6 groups of 32 (the last ragged, padded) → 16 + 16 extra bytes each
    expect(by('model.layers.0.mlp.down_proj', 'W8 g32 gptq').bytes).toBe(64 * 6 * 16);
    for (const c of report.candidates.filter((x) => x.kind === 'activation')) expect(c.bytes).toBe(0);
    // a layer's K and V at 512 tokens × 4 KV heads × head_dim 8: one more byte a value
    expect(by('model.layers.0.{k,v}_cache', 'KV16').bytes).toBe(2 * 512 * 4 * 8);
  });

  it('the baseline KLD is that of the model as quantized, and every gain is baseline − KLD', async () => {
    expect(Math.abs(report.baselineKld - (await kldOf(q)))).toBeLessThan(KLD_TOL);
    for (const c of report.candidates) expect(c.gain).toBe(report.baselineKld - c.kld);
  });

  it('lm_head at W8: the candidate is exactly `quantize --recipe {lm_head: {weight_bits: 8}}`', async () => {
    const m = await quantizeWithRecipe(base, 'overrides:\n  lm_head: {weight_bits: 8}\n', windows);
    const c = report.candidates.find((x) => x.module === 'lm_head')!;
    expect(Math.abs(c.kld - (await kldOf(m)))).toBeLessThan(KLD_TOL);
    expect(c.gain).toBeGreaterThan(0); // the head is the most sensitive linear of this model
  }, 120_000);

  it("one layer's KV cache at KV16: the candidate is exactly that recipe", async () => {
    const m = await quantizeWithRecipe(base, 'overrides:\n  model.layers.2.{k,v}_cache: {kv_bits: 16}\n', windows);
    const c = report.candidates.find((x) => x.module === 'model.layers.2.{k,v}_cache')!;
    expect(Math.abs(c.kld - (await kldOf(m)))).toBeLessThan(KLD_TOL);
  }, 120_000);

  it('one activation point at A16: the candidate is exactly that recipe', async () => {
    const point = 'model.layers.2.down_proj_in';
    const m = await quantizeWithRecipe(base, `overrides:\n  ${point}: {act_bits: 16}\n`, windows);
    const c = report.candidates.find((x) => x.module === point)!;
    expect(Math.abs(c.kld - (await kldOf(m)))).toBeLessThan(KLD_TOL);
  }, 120_000);
});

describe('measureSensitivity with an adapter selected (the wiki LoRA, 8 windows of 96, A16 candidates only)', () => {
  it('measures the adapted model against the fp32 model with the same adapter; an unknown adapter is a usage error', async () => {
    const base = loadHfModel(STORIES);
    const windows = loadTokenWindows(CALIB, { vocabSize: base.config.vocabSize })
      .slice(0, 8)
      .map((w) => w.slice(0, SEQ));
    const wiki = loadPeftAdapter(WIKI_ADAPTER, base.config);
    const q = await addLora(await quantizeWithRecipe(base, 'defaults: {}\n', windows), wiki, { name: 'wiki', bits: 8, groupSize: 32 }, windows, silentContext);
    const measure = windows.slice(0, 2);
    const r = await measureSensitivity(q, base, { calibration: windows, measure, adapter: 'wiki', promotions: { g16: false, w8: false, a16: true, kv16: false } }, silentContext);
    expect(r.adapter).toBe('wiki');
    expect(r.candidates.map((c) => c.to)).toEqual(activationPoints(base.config).map(() => 'A16'));
    const expected = await kldFrom(q, { ...base, adapters: q.adapters }, measure, 'wiki');
    expect(Math.abs(r.baselineKld - expected)).toBeLessThan(KLD_TOL);
    // and it differs from the base model's own KLD: the adapter is really selected
    expect(Math.abs(r.baselineKld - (await kldFrom(q, base, measure, null)))).toBeGreaterThan(1e-4);
    await expect(measureSensitivity(q, base, { calibration: windows, measure, adapter: 'nope' }, silentContext)).rejects.toThrow(/--adapter nope: the model has no such adapter \(it has: wiki\)/);
  }, 300_000);
});
