/**
 * KV caches at 8, 16 or 32 bits, layer by layer (issue 13): the one rule of src/ir/kv-quant.ts, the
 * calibrate pass with a recipe's table (passes/calibrate-ranges.ts: uint16 ranges with `bits: 16`,
 * null entries for float layers), the ranges record (ranges.json), the lowering (uint8 KV8 cache I/O
 * with ai.onnx QDQ, uint16 KV16 with com.microsoft QDQ, float32 for float layers), the KV layout and
 * its HEF header, on the real stories260K: `kv_bits: 16` on every layer, and a recipe mixing 16, 8
 * and 32 (float) layer by layer. ORT's KV16 codes equal quantizeLinear on every value the graph
 * cached, and KV16's TinyStories ppl is no worse than KV8's on the same weights and activation ranges.
 * (test/runtime/kv-widths.test.ts runs these caches: prefill + decode, contexts saved and restored.)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { loadModelHar, saveModelHar } from '../../formats/har-model.js';
import { checkRanges } from '../../formats/har-manifest.js';
import { decodeModel } from '../../formats/onnx.js';
import { readExecutable, writeExecutable } from '../../formats/hef-executable.js';
import { loadTextFile, loadTokenWindows } from '../../calibration/datasets.js';
import { slidingWindows } from '../../calibration/windows.js';
import { calibrateRanges } from '../../passes/calibrate-ranges.js';
import { compile } from '../../src/compiler/compile.js';
import { kvNames } from '../../src/compiler/io-contract.js';
import { lowerModel } from '../../src/compiler/lower.js';
import { kvCacheBytes, kvLayerDtypes } from '../../src/ir/executable.js';
import { kvCacheQdq, kvRanges } from '../../src/ir/kv-quant.js';
import { qdqBitsOf, quantizeLinear } from '../../src/ir/quant.js';
import { quantSchemeOf, precisionOf } from '../../src/ir/quant-scheme.js';
import { silentContext } from '../../src/core/context.js';
import { UnsupportedModelError } from '../../src/core/errors.js';
import type { Model } from '../../src/ir/model.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { perplexity } from '../../src/eval/ppl.js';
import { MIXED_KV, MIXED_KV_BITS as MIXED_BITS, quantizeWithRecipe, runQdqGraph } from '../helpers/recipe-quantize.js';
import { CALIB, STORIES, TINYSTORIES } from '../helpers/paths.js';
import { suiteTempDir } from '../helpers/tmp.js';


describe('kvCacheQdq: how a model executes a layer cache', () => {
  const q8 = { scale: 0.1, zeroPoint: 3 };
  const q16 = { scale: 1e-3, zeroPoint: 30000, bits: 16 as const };
  const model = (kvCache: unknown[], bits?: number[]) =>
    ({
      config: { numLayers: kvCache.length || 2 },
      quant: { linears: {}, activations: {}, kvCache },
      precision: bits ? { linears: {}, activations: {}, kvCache: bits.map((b) => ({ k: { bits: b, observer: 'mse' }, v: { bits: b, observer: 'mse' } })) } : undefined,
    }) as unknown as Model;

  it('reads each layer width from its ranges: uint8, uint16 (bits 16), float for a null entry or no ranges at all', () => {
    const m = model([{ k: q8, v: q8 }, { k: q16, v: q16 }, null], [8, 16, 32]);
    expect([0, 1, 2].map((i) => kvCacheQdq(m, i, 't')?.bits ?? 32)).toEqual([8, 16, 32]);
    expect(kvCacheQdq(m, 1, 't')).toEqual({ bits: 16, k: q16, v: q16 });
    expect(kvCacheQdq(model([], [8, 8]), 0, 't')).toBeNull(); // stripped ranges (a calibration graph): float
  });

  it('refuses K and V of a layer at different widths, and ranges the precision table does not give the layer', () => {
    expect(() => kvCacheQdq(model([{ k: q16, v: q8 }]), 0, 'lowering')).toThrow(/lowering: layer 0's K range is 16-bit and its V range 8-bit/);
    expect(() => kvCacheQdq(model([{ k: q8, v: q8 }], [16]), 0, 'lowering')).toThrow(/lowering: layer 0's KV cache has 8-bit ranges but the precision table gives it 16 bits/);
    expect(() => kvCacheQdq(model([{ k: q8, v: q8 }, null], [8, 16]), 1, 'lowering')).toThrow(/lowering: no KV range for layer 1 \(its precision is 16 bits\)/);
    expect(() => kvCacheQdq(model([{ k: q8, v: q8 }, null], [8, 16]), 1, 'lowering')).toThrow(UnsupportedModelError);
  });
});

describe.skipIf(!fs.existsSync(STORIES))('KV caches at 8, 16 and 32 bits on stories260K', () => {
  const dir = suiteTempDir('edgellm-kvprec-');
  const calib = () => loadTokenWindows(CALIB).slice(0, 16);
  let base: Model;
  let kv16: Model;
  let mixed: Model;
  let windows: number[][];
  beforeAll(async () => {
    base = loadHfModel(STORIES);
    kv16 = await quantizeWithRecipe(base, 'defaults: {kv_bits: 16}\n', calib());
    mixed = await quantizeWithRecipe(base, MIXED_KV, calib());
    const tok = new TextTokenizer(base.tokenizer);
    windows = slidingWindows(await tok.encode(loadTextFile(TINYSTORIES), true), 128, 8);
  });

  it('calibrates uint16 ranges (bits 16) at 16 bits, uint8 at 8, a null entry for a float layer; K stays centered', () => {
    for (const e of kvRanges(kv16)) for (const p of [e!.k, e!.v]) expect(qdqBitsOf(p) === 16 && Number.isInteger(p.zeroPoint) && p.zeroPoint <= 65535 && p.scale > 0).toBe(true);
    expect(kvRanges(kv16).some((e) => e!.k.zeroPoint > 255 || e!.v.zeroPoint > 255)).toBe(true); // codes only a 16-bit grid holds
    expect(kvRanges(mixed).map((e) => (e ? qdqBitsOf(e.k) : 32))).toEqual(MIXED_BITS);
    expect(Object.keys(kvRanges(mixed)[1]!.v).sort()).toEqual(['scale', 'zeroPoint']); // 8-bit ranges as before KV16
    expect(mixed.report!.points['model.layers.2.k_cache']).toBeUndefined(); // float: not observed
    expect(mixed.quant.kCacheOffset).toHaveLength(5);
    expect(precisionOf({ ...mixed, precision: undefined }).kvCache.map((l) => l.k.bits)).toEqual(MIXED_BITS); // what the ranges alone imply
  });

  it("every layer gets its table's observer and width: the same ranges a uniform calibration at that width gives", async () => {
    const uniform8 = await calibrateRanges({ ...mixed, precision: undefined }, calib(), { observer: 'mse', activations: true, kvCache: true }, silentContext);
    const minmax8 = await calibrateRanges({ ...mixed, precision: undefined }, calib(), { observer: 'minmax', activations: true, kvCache: true }, silentContext);
    expect(kvRanges(mixed)[3]).toEqual(kvRanges(uniform8)[3]);
    expect(kvRanges(mixed)[1]!.v).toEqual(kvRanges(minmax8)[1]!.v);
    expect(kvRanges(mixed)[0]).toEqual(kvRanges(kv16)[0]); // same weights (GPTQ does not see the KV width), same observer
    // 16 bits: ~48 dB more SQNR than the same cache at 8 bits (6.02 dB a bit)
    for (const p of ['model.layers.0.k_cache', 'model.layers.4.v_cache']) expect(mixed.report!.points[p].sqnrDb - uniform8.report!.points[p].sqnrDb, p).toBeGreaterThan(40);
  });

  it('ranges.json records bits 16 and null entries and round-trips; a null entry is a valid range record', async () => {
    const har = path.join(dir, 'mixed.har');
    await saveModelHar(har, mixed, { modelName: 'stories260K', sourceSha256: '' });
    const { model } = await loadModelHar(har);
    expect(model.quant.kvCache).toEqual(mixed.quant.kvCache);
    expect(model.precision).toEqual(mixed.precision);
    expect(() => checkRanges('x.har', { kvCache: [null, { k: { scale: 1, zeroPoint: 40000, bits: 16 }, v: { scale: 1, zeroPoint: 0, bits: 16 } }] }, 2, 32)).not.toThrow();
    expect(() => checkRanges('x.har', { kvCache: [7] }, 1, 32)).toThrow(/kvCache\[0\] must be \{k, v\} or null, got/);
  });

  it('lowers each layer at its width: uint16 cache I/O with com.microsoft QDQ, uint8 with ai.onnx QDQ, float32 with none', () => {
    const exe = compile(mixed, { prefillLen: 32 });
    const types = (specs: readonly { name: string; type: string }[], name: string) => specs.find((s) => s.name === name)?.type;
    const nodes = decodeModel(exe.prefill.onnx, 'prefill').graph!.node!;
    const want = { 16: 'uint16', 8: 'uint8', 32: 'float32' } as const;
    MIXED_BITS.forEach((bits, i) => {
      const n = kvNames(i);
      for (const [specs, names] of [[exe.prefill.inputs, [n.pastKey, n.pastValue]], [exe.prefill.outputs, [n.newKey, n.newValue]], [exe.decode.inputs, [n.pastKey]]] as const)
        for (const name of names) expect(types(specs, name), name).toBe(want[bits as 8 | 16 | 32]);
      const qdq = nodes.filter((x) => x.name?.startsWith(`/model/layers.${i}/attn/`) && /_cache\/(Quantize|Dequantize)Linear$/.test(x.name));
      expect(qdq.map((x) => x.domain).sort(), `layer ${i}`).toEqual(bits === 32 ? [] : Array(4).fill(bits === 16 ? 'com.microsoft' : ''));
    });
    expect(exe.quant.kvScheme).toBe('static-asymmetric-per-tensor-mixed+k-centered');
    expect(exe.kvLayout.dtype).toBe('mixed');
    expect(kvLayerDtypes(exe.kvLayout)).toEqual(MIXED_BITS.map((b) => want[b as 8 | 16 | 32]));
    // bytes at full context: 2 (K, V) · kv_heads·head_dim · context · (2 + 1 + 4 + 1 + 2) bytes
    expect(kvCacheBytes(exe.kvLayout)).toBe(2 * 32 * exe.kvLayout.maxContext * 10);
    const hef = path.join(dir, 'mixed.hef');
    writeExecutable(hef, exe);
    expect(readExecutable(hef).kvLayout).toEqual(exe.kvLayout);
    const all16 = compile(kv16, { prefillLen: 32 });
    expect([all16.kvLayout.dtype, all16.quant.kvScheme, all16.quant.activationScheme]).toEqual(['uint16', 'static-asymmetric-per-tensor-u16+k-centered', 'static-asymmetric-per-tensor-u8']);
    expect(kvCacheBytes(all16.kvLayout)).toBe(2 * kvCacheBytes({ ...all16.kvLayout, dtype: 'uint8', layers: [] }));
    expect(quantSchemeOf({ ...kv16, quant: { ...kv16.quant, kvCache: [] } }).kvScheme).toBe('none');
  });

  it('the lowering refuses KV ranges of another width than the precision table, and a quantized layer without ranges', () => {
    const at = (layer: number, bits: 8 | 16) => ({ ...mixed.precision!, kvCache: mixed.precision!.kvCache.map((kv, i) => (i === layer ? { k: { ...kv.k, bits }, v: { ...kv.v, bits } } : kv)) });
    const lower = (m: Model) => () => lowerModel(m, { seqLen: 'dynamic', maxContext: 8 });
    expect(lower({ ...mixed, precision: at(0, 8) })).toThrow(/lowering: layer 0's KV cache has 16-bit ranges but the precision table gives it 8 bits/);
    expect(lower({ ...mixed, precision: at(2, 8) })).toThrow(/lowering: no KV range for layer 2 \(its precision is 8 bits\)/);
  });

  it("ORT's KV16 (and KV8) cache codes equal quantizeLinear on every value the graph cached", async () => {
    const tally = { 8: { codes: 0, mismatches: 0 }, 16: { codes: 0, mismatches: 0, above255: 0 } };
    for (const m of [kv16, mixed])
      for (const run of await runQdqGraph(m, windows.slice(0, 4)))
        for (const s of run.points.values()) {
          if (!s.point.endsWith('_cache')) continue;
          const t = tally[s.bits];
          for (let i = 0; i < s.input.length; i++) {
            t.codes++;
            if (quantizeLinear(s.input[i], s.params, s.bits) !== s.codes[i]) t.mismatches++;
            if (s.bits === 16 && s.codes[i] > 255) tally[16].above255++;
          }
        }
    expect(tally[16].codes).toBeGreaterThan(100_000);
    expect(tally[16].above255).toBeGreaterThan(tally[16].codes / 2);
    expect(tally[8].codes).toBeGreaterThan(10_000);
    expect([tally[8].mismatches, tally[16].mismatches]).toEqual([0, 0]);
  });

  it("KV16's TinyStories ppl is no worse than KV8's (same weights and activation ranges); with float activations it is a float cache's", async () => {
    const kv8 = await calibrateRanges({ ...kv16, precision: undefined }, calib(), { observer: 'mse', activations: true, kvCache: true }, silentContext);
    expect(kv8.quant.activations).toEqual(kv16.quant.activations);
    const floatKv = (m: Model): Model => ({ ...m, precision: undefined, quant: { ...m.quant, kvCache: [] } });
    // float activations: no A8 point re-rounds what the KV cache perturbed, so the KV error is seen alone
    const floatAct = (m: Model): Model => ({ ...m, quant: { ...m.quant, activations: {} }, ...(m.precision ? { precision: { ...m.precision, activations: Object.fromEntries(Object.keys(m.precision.activations).map((p) => [p, { bits: 32 as const, observer: 'mse' as const }])) } } : {}) });
    const tok = new TextTokenizer(base.tokenizer);
    const evalWindows = slidingWindows(await tok.encode(loadTextFile(TINYSTORIES), true), 256, 20);
    const ppl = async (m: Model) => {
      const b = await SimulatorBackend.load(compile(m, { prefillLen: 256 }), { precision: 'exact' });
      const r = await perplexity(b, evalWindows);
      await b.dispose();
      return r.ppl;
    };
    const [p8, p16, pMixed] = [await ppl(kv8), await ppl(kv16), await ppl(mixed)];
    const [f8, f16, fFloat] = [await ppl(floatAct(kv8)), await ppl(floatAct(kv16)), await ppl(floatAct(floatKv(kv16)))];
    console.info(
      `TinyStories ppl (20 windows of 256), A8: KV8 ${p8.toFixed(4)}, KV16 ${p16.toFixed(4)}, mixed 16/8/32 ${pMixed.toFixed(4)}; float activations: KV8 ${f8.toFixed(4)}, KV16 ${f16.toFixed(4)}, float KV ${fFloat.toFixed(4)}`,
    );
    // measured: A8: KV8 6.7052, KV16 6.7026, mixed 6.7018; float activations: KV8 6.6944, KV16 6.6731, float KV 6.6766
    expect(p16).toBeLessThanOrEqual(p8);
    expect(pMixed).toBeLessThanOrEqual(p8 * 1.001);
    expect(Math.abs(f16 - fFloat) / fFloat).toBeLessThan(1e-3);
    expect(Math.abs(f16 - fFloat)).toBeLessThan(Math.abs(f8 - fFloat) / 4);
  });
});
