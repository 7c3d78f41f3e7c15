/**
 * Activation points at 8, 16 or 32 bits, point by point (issue 13): the 16-bit grid of src/ir/quant.ts
 * and the observers, the calibrate pass with a recipe's table (passes/calibrate-ranges.ts), the
 * ranges record (ranges.json: `bits: 16`, zero points up to 65535), the lowering (uint8 QDQ, uint16
 * com.microsoft QDQ, none for float) and what src/ir/recipe.ts still refuses, on the real
 * stories260K: a recipe with points at 8, 16 and 32 bits and four observers quantizes, compiles and
 * runs; ORT's 8- and 16-bit codes equal quantizeLinear on every value the graph quantized; all
 * points at 16 bits bring the TinyStories ppl to the no-activation-quantization figure.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { parseRecipe } from '../../formats/recipe.js';
import { loadModelHar, saveModelHar } from '../../formats/har-model.js';
import { checkRanges } from '../../formats/har-manifest.js';
import { decodeModel } from '../../formats/onnx.js';
import { readExecutable, writeExecutable } from '../../formats/hef-executable.js';
import { loadTextFile, loadTokenWindows } from '../../calibration/datasets.js';
import { slidingWindows } from '../../calibration/windows.js';
import { MinMaxObserver, MseObserver } from '../../calibration/observers.js';
import { calibrateRanges } from '../../passes/calibrate-ranges.js';
import { compile } from '../../src/compiler/compile.js';
import { lowerModel } from '../../src/compiler/lower.js';
import { activationPoints } from '../../src/ir/architectures.js';
import { asymmetricQParams, quantizeLinear, roundHalfEven } from '../../src/ir/quant.js';
import { refuseUnsupported, resolveRecipe } from '../../src/ir/recipe.js';
import { silentContext } from '../../src/core/context.js';
import { FormatError, UnsupportedModelError } from '../../src/core/errors.js';
import type { Model } from '../../src/ir/model.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { perplexity } from '../../src/eval/ppl.js';
import { MIXED_POINTS, quantizeWithRecipe, runQdqGraph } from '../helpers/recipe-quantize.js';
import { CALIB, STORIES, TINYSTORIES } from '../helpers/paths.js';
import { suiteTempDir } from '../helpers/tmp.js';

describe('the 16-bit grid (src/ir/quant.ts) and the observers at 16 bits', () => {
  it('asymmetricQParams(min, max, 16): scale (hi − lo)/65535, zero point round(−lo/scale) in [0, 65535], bits 16', () => {
    const p = asymmetricQParams(-1, 3, 16);
    expect(p.scale).toBe(Math.fround(4 / 65535));
    expect(p.zeroPoint).toBe(roundHalfEven(1 / p.scale)); // 16383.75 → 16384
    expect(p.zeroPoint).toBe(16384);
    expect(p.bits).toBe(16);
    expect(asymmetricQParams(2, 5, 16)).toEqual({ scale: Math.fround(5 / 65535), zeroPoint: 0, bits: 16 }); // widened to [0, 5]
    expect(asymmetricQParams(-5, -2, 16).zeroPoint).toBe(65535);
    expect(asymmetricQParams(0, 0, 16)).toEqual({ scale: 1, zeroPoint: 0, bits: 16 });
    // 8 bits: as before, no bits field
    expect(asymmetricQParams(-1, 3)).toEqual({ scale: Math.fround(4 / 255), zeroPoint: 64 });
  });

  it('a 16-bit observer covers its range with 65535 steps: ~48 dB more SQNR than at 8 bits (6.02 dB a bit)', () => {
    const x = Float32Array.from({ length: 4096 }, (_, i) => Math.sin(i * 0.37) * 3 + Math.cos(i * 1.3));
    for (const make of [(b: 8 | 16) => new MinMaxObserver(b), (b: 8 | 16) => new MseObserver(b)]) {
      const [o8, o16] = [make(8), make(16)];
      o8.observe(x);
      o16.observe(x);
      const [p8, p16] = [o8.qparams(), o16.qparams()];
      expect(p16.bits).toBe(16);
      expect(p16.zeroPoint).toBeGreaterThan(255);
      expect(o16.sqnrDb(p16) - o8.sqnrDb(p8)).toBeGreaterThan(44);
    }
  });
});

describe('MseObserver at 16 bits counts the exact extremes the sample misses', () => {
  it('keeps a rare outlier inside the range (8 bits may clip it: its rounding noise is 65,000× larger)', () => {
    const x = Float32Array.from({ length: 100_000 }, (_, i) => Math.sin(i * 0.37));
    x[77_777] = 20; // one value in 100,000: a 1,024-value reservoir almost surely misses it
    const o = new MseObserver(16, 1024);
    o.observe(x);
    const p = o.qparams();
    expect(p.scale * (65535 - p.zeroPoint)).toBeGreaterThan(19.99);
  });
});

describe('refuseUnsupported with per-point activation precision', () => {
  const cfg = fs.existsSync(STORIES) ? loadHfModel(STORIES).config : null;
  const resolve = (yaml: string) => resolveRecipe(parseRecipe(yaml, 'r.yaml'), cfg!);
  it.skipIf(!cfg)('accepts activation points at 8, 16 and 32 bits mixed, and several observers', () => {
    expect(() => refuseUnsupported(resolve(MIXED_POINTS))).not.toThrow();
    expect(() => refuseUnsupported(resolve('defaults: {act_bits: 16}\n'))).not.toThrow();
    expect(() => refuseUnsupported(resolve('overrides:\n  model.layers.0: {act_bits: 32}\n'))).not.toThrow();
  });

  it.skipIf(!cfg)('accepts 16-bit KV caches and KV caches partly float (test/passes/kv-precision.test.ts runs them)', () => {
    expect(() => refuseUnsupported(resolve('defaults: {kv_bits: 16}\n'))).not.toThrow();
    expect(() => refuseUnsupported(resolve('overrides:\n  model.layers.2: {kv_bits: 32}\n'))).not.toThrow();
  });
});

describe.skipIf(!fs.existsSync(STORIES))('activation points at 8, 16 and 32 bits on stories260K', () => {
  const dir = suiteTempDir('edgellm-actprec-');
  const calib = () => loadTokenWindows(CALIB).slice(0, 16);
  let base: Model;
  let mixed: Model;
  let windows: number[][];
  let table: ReturnType<typeof resolveRecipe>['table'];
  beforeAll(async () => {
    base = loadHfModel(STORIES);
    mixed = await quantizeWithRecipe(base, MIXED_POINTS, calib());
    table = mixed.precision!;
    const tok = new TextTokenizer(base.tokenizer);
    windows = slidingWindows(await tok.encode(loadTextFile(TINYSTORIES), true), 128, 8);
  });
  const bitsOf = (p: string) => table.activations[p].bits;

  it('calibrates each point at its own width: uint16 ranges (bits 16) at 16, uint8 at 8, none at 32', () => {
    const points = activationPoints(base.config);
    expect(points.filter((p) => bitsOf(p) === 16)).toHaveLength(4 + 4);
    expect(points.filter((p) => bitsOf(p) === 32)).toEqual(['model.layers.3.o_proj_in', 'lm_head_in']);
    for (const p of points) {
      const q = mixed.quant.activations[p];
      if (bitsOf(p) === 32) {
        expect(q, p).toBeUndefined();
        expect(mixed.report!.points[p], p).toBeUndefined();
        continue;
      }
      expect(Number.isInteger(q.zeroPoint) && q.zeroPoint >= 0 && q.scale > 0, p).toBe(true);
      if (bitsOf(p) === 16) expect(q, p).toMatchObject({ bits: 16 });
      else expect(Object.keys(q).sort(), p).toEqual(['scale', 'zeroPoint']);
      expect(q.zeroPoint, p).toBeLessThanOrEqual(bitsOf(p) === 16 ? 65535 : 255);
    }
    // a zero point only a 16-bit grid holds (an activation with a negative part)
    expect(points.some((p) => mixed.quant.activations[p]?.zeroPoint > 255)).toBe(true);
    expect(mixed.quant.kvCache).toHaveLength(5);
    // the table is not copied into the pass record (the manifest's precision holds it)
    expect(Object.keys(mixed.passes.at(-1)!.options).sort()).toEqual(['activations', 'kvCache', 'observer', 'windows']);
  });

  it('every point gets the observer its table names, as a uniform calibration with that observer gives it', async () => {
    const uniform = async (observer: 'mse' | 'percentile' | 'minmax') => calibrateRanges(mixed, calib(), { observer, activations: true, kvCache: true }, silentContext);
    const [mse, percentile, minmax] = [await uniform('mse'), await uniform('percentile'), await uniform('minmax')];
    expect(mixed.quant.activations['model.layers.2.mlp_in']).toEqual(percentile.quant.activations['model.layers.2.mlp_in']);
    expect(mixed.quant.activations['model.layers.4.attn_in']).toEqual(minmax.quant.activations['model.layers.4.attn_in']);
    expect(mixed.quant.activations['model.layers.1.mlp_in']).toEqual(mse.quant.activations['model.layers.1.mlp_in']);
    expect(mixed.quant.kvCache[1].v).toEqual(minmax.quant.kvCache[1].v);
    expect(mixed.quant.kvCache[1].k).toEqual(mse.quant.kvCache[1].k);
    // 16 bits: far finer than the 8-bit range of the same point (8 more bits ≈ 48 dB)
    for (const p of ['model.layers.0.attn_in', 'model.layers.2.down_proj_in'])
      expect(mixed.report!.points[p].sqnrDb - mse.report!.points[p].sqnrDb, p).toBeGreaterThan(40);
    // the default recipe's table gives what the flags give: the same ranges, report and pass record
    const dflt = resolveRecipe(parseRecipe('{}', 'default.yaml'), base.config).table;
    const viaTable = await calibrateRanges(mixed, calib(), { observer: 'mse', activations: true, kvCache: true, precision: dflt }, silentContext);
    expect(viaTable.quant).toEqual(mse.quant);
    expect(viaTable.report).toEqual(mse.report);
    expect(viaTable.passes).toEqual(mse.passes);
  });

  it('ranges.json records bits: 16 and round-trips; a zero point beyond its width is refused', async () => {
    const har = path.join(dir, 'mixed.har');
    await saveModelHar(har, mixed, { modelName: 'stories260K', sourceSha256: '' });
    const { model } = await loadModelHar(har);
    expect(model.quant.activations).toEqual(mixed.quant.activations);
    expect(model.precision).toEqual(mixed.precision);
    const check = (activations: unknown) => () => checkRanges('x.har', { activations, kvCache: [] }, 5, 32);
    expect(check({ a: { scale: 0.1, zeroPoint: 40000, bits: 16 } })).not.toThrow();
    expect(check({ a: { scale: 0.1, zeroPoint: 300 } })).toThrow(/ranges\.json: activations\['a'\] zeroPoint must be an integer in \[0, 255\] for a 8-bit range, got 300/);
    expect(check({ a: { scale: 0.1, zeroPoint: 70000, bits: 16 } })).toThrow(/in \[0, 65535\] for a 16-bit range/);
    expect(check({ a: { scale: 0.1, zeroPoint: 3, bits: 12 } })).toThrow(FormatError);
    expect(check({ a: { scale: -1, zeroPoint: 3 } })).toThrow(/scale must be a positive finite number/);
    expect(() => checkRanges('x.har', { kvCache: [{ k: { scale: 1, zeroPoint: 256 }, v: { scale: 1, zeroPoint: 0 } }] }, 5, 32)).toThrow(/kvCache\[0\]\.k zeroPoint/);
  });

  it('lowers 8-bit points to uint8 QDQ, 16-bit ones to com.microsoft uint16 QDQ and float ones to nothing; the HEF runs', async () => {
    const exe = compile(mixed, { prefillLen: 32 });
    const nodes = decodeModel(exe.prefill.onnx, 'prefill').graph!.node!;
    for (const p of activationPoints(base.config)) {
      const q = nodes.filter((n) => n.name?.startsWith(`/quant/${p}/`) && ['QuantizeLinear', 'DequantizeLinear'].includes(n.opType!));
      if (bitsOf(p) === 32) expect(q, p).toHaveLength(0);
      else expect(q.map((n) => [n.opType, n.domain]).sort(), p).toEqual([['DequantizeLinear', bitsOf(p) === 16 ? 'com.microsoft' : ''], ['QuantizeLinear', bitsOf(p) === 16 ? 'com.microsoft' : '']]);
    }
    const hef = path.join(dir, 'mixed.hef');
    writeExecutable(hef, exe);
    for (const precision of ['exact', 'fast'] as const) {
      const b = await SimulatorBackend.load(readExecutable(hef), { precision });
      const ctx = b.newContext();
      const logits = await b.forward(ctx, windows[0].slice(0, 40)); // a prefill chunk and a ragged one
      const next = await b.forward(ctx, [windows[0][40]]); // a decode step
      expect(logits.every(Number.isFinite) && next.every(Number.isFinite)).toBe(true);
      await b.dispose();
    }
  });

  it("ORT's 8- and 16-bit QuantizeLinear codes equal quantizeLinear on every value the graph quantized", async () => {
    const runs = await runQdqGraph(mixed, windows);
    const tally = { 8: { codes: 0, mismatches: 0 }, 16: { codes: 0, mismatches: 0, above255: 0 } };
    for (const run of runs)
      for (const s of run.points.values())
        for (let i = 0; i < s.input.length; i++) {
          const t = tally[s.bits];
          t.codes++;
          if (quantizeLinear(s.input[i], s.params, s.bits) !== s.codes[i]) t.mismatches++;
          if (s.bits === 16 && s.codes[i] > 255) tally[16].above255++;
        }
    expect(tally[16].codes).toBeGreaterThan(100_000);
    expect(tally[16].above255).toBeGreaterThan(tally[16].codes / 2);
    expect(tally[8].codes).toBeGreaterThan(100_000);
    expect(tally[8].mismatches).toBe(0);
    expect(tally[16].mismatches).toBe(0);
  });

  it('the lowering refuses ranges of another width than the table, and a missing range', () => {
    const lower = (m: Model) => () => lowerModel(m, { seqLen: 'dynamic', maxContext: 8 });
    const table8 = { ...table, activations: { ...table.activations, 'model.layers.0.attn_in': { bits: 8 as const, observer: 'mse' as const } } };
    expect(lower({ ...mixed, precision: table8 })).toThrow(/lowering: activation point 'model\.layers\.0\.attn_in' has a 16-bit range but the precision table gives it 8 bits/);
    expect(lower({ ...mixed, quant: { ...mixed.quant, activations: { ...mixed.quant.activations, lm_head_in: { scale: 1, zeroPoint: 0 } } } })).toThrow(/has a 8-bit range but the precision table gives it 32 bits/);
    expect(lower({ ...mixed, precision: undefined })).toThrow(UnsupportedModelError);
    expect(lower({ ...mixed, precision: undefined })).toThrow(/no A8 range for activation point 'model\.layers\.3\.o_proj_in'/);
  });

  it('every activation point at 16 bits: TinyStories ppl within 0.1% of no activation quantization, closing most of the A8 gap', async () => {
    const a16 = await quantizeWithRecipe(base, 'defaults: {act_bits: 16}\n', calib());
    const a8 = await calibrateRanges({ ...a16, precision: undefined }, calib(), { observer: 'mse', activations: true, kvCache: true }, silentContext);
    const noAct: Model = { ...a16, precision: undefined, quant: { ...a16.quant, activations: {} } };
    const tok = new TextTokenizer(base.tokenizer);
    const evalWindows = slidingWindows(await tok.encode(loadTextFile(TINYSTORIES), true), 256, 20);
    const ppl = async (m: Model) => {
      const b = await SimulatorBackend.load(compile(m, { prefillLen: 256 }), { precision: 'exact' });
      const r = await perplexity(b, evalWindows);
      await b.dispose();
      return r.ppl;
    };
    const [p8, p16, pNone] = [await ppl(a8), await ppl(a16), await ppl(noAct)];
    // measured (16 calibration windows, 20 windows of 256): A8 6.7052, A16 6.6961, none 6.6944 (all KV8)
    expect(Math.abs(p16 - pNone) / pNone).toBeLessThan(1e-3);
    expect(Math.abs(p16 - pNone)).toBeLessThan((p8 - pNone) / 4);
  });
});
