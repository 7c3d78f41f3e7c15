import { describe, it, expect, beforeAll } from 'vitest';
import * as path from 'node:path';
import { loadHfModel } from '../../formats/hf.js';
import { loadTokenWindows } from '../../calibration/datasets.js';
import { centerKCache, kChannelRanges } from '../../passes/k-centering.js';
import { calibrateRanges } from '../../passes/calibrate-ranges.js';
import { compile } from '../../src/compiler/compile.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { writeExecutable, readExecutable } from '../../formats/hef-executable.js';
import { saveModelHar, loadModelHar } from '../../formats/har-model.js';
import { rtn } from '../../passes/rtn.js';
import { mulberry32 } from '../../src/core/rng.js';
import { silentContext } from '../../src/core/context.js';
import { kvPoints } from '../../src/compiler/io-contract.js';
import { quantizeModel, DEFAULT_QUANTIZE_OPTIONS } from '../../passes/pipeline.js';
import type { Model } from '../../src/ir/model.js';
import { tinyQwen2, randomWindows } from '../helpers/fixtures.js';
import { CALIB, STORIES } from '../helpers/paths.js';
import { maxAbsDiffUnchecked } from '../helpers/numeric.js';
import { makeTempDir, removeDir, withTempDir } from '../helpers/tmp.js';

async function logits(model: Model, ids: number[]): Promise<Float32Array> {
  const backend = await SimulatorBackend.load(compile(model, { prefillLen: 16, maxContext: 64 }));
  const ctx = backend.newContext();
  const out = [await backend.forward(ctx, ids.slice(0, 20))]; // two prefill chunks (one padded)
  for (const t of ids.slice(20)) out.push(await backend.forward(ctx, [t])); // then decode
  await backend.dispose();
  const all = new Float32Array(out.reduce((n, a) => n + a.length, 0));
  let o = 0;
  for (const a of out) all.set(a, (o += a.length) - a.length);
  return all;
}

describe('K-cache centering on stories260K', () => {
  let model: Model;
  let windows: number[][];
  beforeAll(() => {
    model = rtn(loadHfModel(STORIES), { groupSize: 32, quantizeLmHead: false }, silentContext);
    windows = loadTokenWindows(CALIB).slice(0, 8);
  });

  // Any offset leaves attention unchanged (a softmax row is shift-invariant); the only difference is
  // float32 rounding of q·k − q·c with offsets of ±20 against scores of similar size: 1e-3 absolute
  // on logits of magnitude ~10, over prefill and decode.
  it('leaves the float model’s logits unchanged for any offset (prefill and decode)', async () => {
    const { numLayers, numKvHeads, headDim } = model.config;
    const rand = mulberry32(5);
    const kCacheOffset = Array.from({ length: numLayers }, () => Array.from({ length: numKvHeads * headDim }, () => Math.fround(40 * rand() - 20)));
    const ids = [1, 403, 261, 1629 % 512, 275, 285, 301, 260, 396, 288, 290, 352, 344, 339, 365, 267, 406, 295, 360, 281, 273, 310, 298];
    const a = await logits(model, ids);
    const b = await logits({ ...model, quant: { ...model.quant, kCacheOffset } }, ids);
    let m = 0;
    for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
    expect(m).toBeLessThan(1e-3);
    expect(m).toBeGreaterThan(0); // the offsets really went into the graph
  });

  it('sets each channel’s midrange as its offset and narrows every layer’s K range (a finer KV8 step)', async () => {
    const centered = await centerKCache(model, windows, silentContext);
    const ranges = await kChannelRanges(model, windows, silentContext);
    const off = centered.quant.kCacheOffset!;
    expect(off).toHaveLength(model.config.numLayers);
    for (let i = 0; i < off.length; i++)
      for (let c = 0; c < off[i].length; c++) expect(off[i][c]).toBeCloseTo((ranges[i].min[c] + ranges[i].max[c]) / 2, 5);
    expect(centered.passes.at(-1)?.name).toBe('k-centering');
    const opts = { observer: 'minmax' as const, activations: false, kvCache: true };
    const plain = await calibrateRanges(model, windows, opts, silentContext);
    const withOffsets = await calibrateRanges(centered, windows, opts, silentContext);
    for (let i = 0; i < model.config.numLayers; i++) {
      const span = (p: { scale: number }) => 255 * p.scale;
      const k = kvPoints(i).k;
      // the centred tensor's range is the widest channel's spread, well below the whole tensor's
      // (stories260K: 31-59 → 18-35), so the uint8 step, and the absolute rounding error of every
      // cached key, shrink by as much (the SQNR need not rise: centering also removes the offsets'
      // share of the signal power)
      expect(span(withOffsets.quant.kvCache[i].k)).toBeLessThan(0.85 * span(plain.quant.kvCache[i].k));
      expect(withOffsets.report!.points[k]).toBeDefined();
      // V is not centred: its range moves only by the float32 rounding the K offsets cause in later layers
      expect(Math.abs(withOffsets.quant.kvCache[i].v.scale / plain.quant.kvCache[i].v.scale - 1)).toBeLessThan(1e-4);
    }
  });

  it('keeps the offsets through HAR and HEF, and the compiled HEF runs as the in-memory model', async () => {
    const centered = await calibrateRanges(await centerKCache(model, windows, silentContext), windows, { observer: 'mse', activations: true, kvCache: true }, silentContext);
    const dir = makeTempDir('edgellm-kc-');
    const har = path.join(dir, 'm.har');
    await saveModelHar(har, centered, { modelName: 'stories260K', sourceSha256: 'x'.repeat(64) });
    const back = (await loadModelHar(har)).model;
    expect(back.quant.kCacheOffset).toEqual(centered.quant.kCacheOffset);
    const exe = compile(back, { prefillLen: 16, maxContext: 64 });
    expect(exe.quant.kvScheme).toBe('static-asymmetric-per-tensor-u8+k-centered');
    const hef = path.join(dir, 'm.hef');
    writeExecutable(hef, exe);
    const read = readExecutable(hef);
    expect(read.kvLayout.layers.map((l) => l!.kOffset)).toEqual(centered.quant.kCacheOffset);
    const ids = [1, 403, 261, 275, 285, 301, 260, 396, 288, 290, 352, 344, 339, 365, 267, 406, 295, 360, 281, 273, 310, 298];
    const run = async (e: typeof exe) => {
      const b = await SimulatorBackend.load(e);
      const r = await b.forward(b.newContext(), ids);
      await b.dispose();
      return r;
    };
    expect(await run(read)).toEqual(await run(exe));
    removeDir(dir);
  });
});

describe('K-cache centering on a generated Qwen2 fixture (GQA, q/k/v biases)', () => {
  // The default pipeline (GPTQ + k-centering + calibrate) on a model whose K has a bias and whose KV
  // heads each serve two query heads: the offsets are set per KV head and channel, and the compiled
  // graph with KV8 off (float cache) gives the same logits with and without them (softmax shift
  // invariance holds per query head; 1e-4 absolute, float32 rounding).
  it('quantizes with the default recipe and the offsets leave the float-cache logits unchanged', async () => {
    await withTempDir('kc-qwen2-', async (dir) => {
      const model = tinyQwen2(dir, { dtype: 'BF16', seed: 3 });
      const calib = randomWindows(4, 40, model.config.vocabSize, 4);
      const { quantized } = await quantizeModel(model, { ...DEFAULT_QUANTIZE_OPTIONS, groupSize: 16 }, calib, silentContext);
      const { numLayers, numKvHeads, headDim } = model.config;
      expect(quantized.passes.map((p) => p.name)).toEqual(['gptq', 'k-centering', 'calibrate']);
      expect(quantized.quant.kCacheOffset).toHaveLength(numLayers);
      for (const l of quantized.quant.kCacheOffset!) expect(l).toHaveLength(numKvHeads * headDim);
      const floatCache = (m: Model): Model => ({ ...m, quant: { ...m.quant, activations: {}, kvCache: [] } });
      const ids = calib[0].slice(0, 30);
      const a = await logits(floatCache({ ...quantized, quant: { ...quantized.quant, kCacheOffset: undefined } }), ids);
      const b = await logits(floatCache(quantized), ids);
      expect(maxAbsDiffUnchecked(a, b)).toBeLessThan(1e-4);
    });
  });
});
