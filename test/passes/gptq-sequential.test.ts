import { describe, it, expect, beforeAll } from 'vitest';
import { gptqModel, gptqReport, meta } from '../../passes/gptq-sequential.js';
import { OrtLinalg } from '../../src/engine/linalg.js';
import { weightedSquaredErrors } from '../../passes/gptq.js';
import { loadTokenWindows } from '../../calibration/datasets.js';
import { loadHfModel } from '../../formats/hf.js';
import { compile } from '../../src/compiler/compile.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { referenceForward } from '../../src/ir/reference.js';
import { allLinears, layerLinears } from '../../src/ir/architectures.js';
import { dequantizeW4, numGroups, quantizeRtnW4 } from '../../src/ir/quant.js';
import { toFloat32 } from '../../src/ir/tensor.js';
import { silentContext } from '../../src/core/context.js';
import { UsageError } from '../../src/core/errors.js';
import type { Model } from '../../src/ir/model.js';
import { tinyQwen2, randomWindows } from '../helpers/fixtures.js';
import { CALIB, STORIES } from '../helpers/paths.js';
import { maxAbsDiff } from '../helpers/numeric.js';
import { capturedHessians } from '../helpers/hessians.js';
import { withTempDir } from '../helpers/tmp.js';

const windows = loadTokenWindows(CALIB).slice(0, 4);

describe('gptqModel on stories260K', () => {
  const model = loadHfModel(STORIES);
  const cfg = model.config;
  let q: Model;
  beforeAll(async () => {
    q = await gptqModel(model, windows, { groupSize: 64, actOrder: true }, silentContext);
  });

  it('replaces every decoder linear by RTN-layout qweight/scales, keeps lm_head float and records the pass', () => {
    for (const s of allLinears(cfg).filter((l) => l.role !== 'lm_head')) {
      const nb = numGroups(s.inFeatures, 64);
      expect(model.weights.has(`${s.name}.weight`)).toBe(true); // input untouched
      expect(q.weights.has(`${s.name}.weight`)).toBe(false);
      expect(q.weights.get(`${s.name}.qweight`)!.shape).toEqual([s.outFeatures, nb, 32]);
      expect(q.weights.get(`${s.name}.qweight`)!.dtype).toBe('U8');
      expect(q.weights.get(`${s.name}.scales`)!.shape).toEqual([s.outFeatures, nb]);
      expect(q.quant.linears[s.name]).toEqual({ bits: 4, groupSize: 64, scheme: 'symmetric', method: 'gptq' });
    }
    expect(q.quant.linears.lm_head).toBeUndefined();
    expect(q.weights.has('lm_head.qweight')).toBe(false);
    const rec = q.passes.at(-1)!;
    expect(rec.name).toBe(meta.name);
    expect(rec.options).toMatchObject({ groupSize: 64, actOrder: true, staticGroups: true, blockSize: 128, percDamp: 0.01, windows: 4 });
  });

  it('reports, for every linear, a GPTQ layer-wise error below RTN on the same Hessian', () => {
    const rep = gptqReport(q)!;
    expect(rep.map((r) => r.name)).toEqual(allLinears(cfg).filter((l) => l.role !== 'lm_head').map((l) => l.name));
    for (const r of rep) {
      expect(r.gptq, r.name).toBeLessThan(r.rtn);
      expect(q.report!.linears[r.name]).toEqual({ relError: r.gptq / r.reference, rtnRelError: r.rtn / r.reference, method: 'gptq' });
    }
  });

  // act-order permutes the processing order only; the packed groups must still be the contiguous
  // MatMulNBits blocks. The ONNX graph (MatMulNBits) and the TypeScript reference (dequantize by
  // contiguous groups) agree to 1e-4, as for RTN weights (test/compiler/lower.test.ts).
  it('act-order output decodes with MatMulNBits semantics: ONNX logits = dequantized reference forward (1e-4)', async () => {
    const ids = [1, ...windows[0].slice(0, 40)];
    const backend = await SimulatorBackend.load(compile(q, { prefillLen: 64, maxContext: 256 }));
    const got = await backend.forward(backend.newContext(), ids);
    await backend.dispose();
    expect(maxAbsDiff(got, referenceForward(q, ids))).toBeLessThan(1e-4);
  });

  // True-sequential: layer 0's o_proj must see inputs made by the quantized q/k/v, layer 1 the
  // output of the quantized layer 0, and so on. Recomputing the RTN error of those linears on
  // Hessians captured from the whole quantized model reproduces the reported value (the same float32
  // ops run, so it agrees bit for bit here; 1e-6 leaves room for ORT's kernel choice), while Hessians
  // from the fp32 model give another one (observed 5e-5 relative for layer 0's o_proj, whose input
  // barely moves, up to 7e-3 for layer 4's down_proj).
  it('calibrates each linear on inputs produced by the already-quantized linears before it', async () => {
    const points = ['model.layers.0.o_proj_in', 'model.layers.1.attn_in', 'model.layers.4.down_proj_in'];
    const hq = await capturedHessians(q, windows, points);
    const hf = await capturedHessians(model, windows, points);
    const rep = new Map(gptqReport(q)!.map((r) => [r.name, r]));
    const la = new OrtLinalg();
    for (const [point, spec] of [
      [points[0], layerLinears(cfg, 0)[3]],
      [points[1], layerLinears(cfg, 1)[0]],
      [points[2], layerLinears(cfg, 4)[6]],
    ] as const) {
      const W = toFloat32(model.weights.get(`${spec.name}.weight`)!.load());
      const R = dequantizeW4(quantizeRtnW4(W, spec.outFeatures, spec.inFeatures, 64)).map((v, i) => W[i] - v);
      const [onQuantized] = await weightedSquaredErrors([R], spec.outFeatures, spec.inFeatures, hq.get(point)!, la);
      const [onFloat] = await weightedSquaredErrors([R], spec.outFeatures, spec.inFeatures, hf.get(point)!, la);
      const reported = rep.get(spec.name)!.rtn;
      expect(Math.abs(onQuantized - reported) / reported, spec.name).toBeLessThan(1e-6);
      expect(Math.abs(onFloat - reported) / reported, spec.name).toBeGreaterThan(2e-5);
    }
    await la.dispose();
  });

  it('quantizes lm_head with GPTQ on the final-norm output when asked (tied: the embedding stays float)', async () => {
    const ql = await gptqModel(model, windows.slice(0, 2), { groupSize: 32, quantizeLmHead: true, cacheBytes: 0 }, silentContext);
    expect(ql.quant.linears.lm_head).toEqual({ bits: 4, groupSize: 32, scheme: 'symmetric', method: 'gptq' });
    expect(ql.weights.get('lm_head.qweight')!.shape).toEqual([cfg.vocabSize, 2, 16]);
    expect(ql.weights.has('model.embed_tokens.weight')).toBe(true);
    const r = gptqReport(ql)!.at(-1)!;
    expect(r.name).toBe('lm_head');
    expect(r.gptq).toBeLessThan(r.rtn);
  });

  it('rejects bad options', async () => {
    await expect(gptqModel(model, windows, { groupSize: 48 }, silentContext)).rejects.toThrow(UsageError);
    await expect(gptqModel(model, [], { groupSize: 64 }, silentContext)).rejects.toThrow(UsageError);
    await expect(gptqModel(model, windows, { groupSize: 64, actOrder: true, staticGroups: false }, silentContext)).rejects.toThrow(UsageError);
  });
});

describe('gptqModel on a generated Qwen2 fixture (GQA, q/k/v biases, bf16 weights)', () => {
  it('quantizes every linear and the ONNX logits match the dequantized reference forward (1e-4)', async () => {
    await withTempDir('gptq-qwen2-', async (dir) => {
      const model = tinyQwen2(dir, { dtype: 'BF16', seed: 5 });
      const calib = randomWindows(3, 48, model.config.vocabSize, 9);
      const q = await gptqModel(model, calib, { groupSize: 16 }, silentContext);
      const rep = gptqReport(q)!;
      expect(rep).toHaveLength(model.config.numLayers * 7);
      for (const r of rep) expect(r.gptq, r.name).toBeLessThan(r.rtn);
      const ids = [1, ...calib[0].slice(0, 20)];
      const backend = await SimulatorBackend.load(compile(q, { prefillLen: 32, maxContext: 64 }));
      const got = await backend.forward(backend.newContext(), ids);
      await backend.dispose();
      expect(maxAbsDiff(got, referenceForward(q, ids))).toBeLessThan(1e-4);
    });
  });
});
