/**
 * The simulator with KV16 caches and with caches at 16, 8 and 32 bits layer by layer (issue 13), on
 * the real stories260K quantized with a recipe (test/helpers/recipe-quantize.ts): a prompt prefilled
 * in chunks and continued token by token gives the logits of one full-sequence prefill; a context
 * saved to a context file and restored continues exactly as the original; fork and truncate keep
 * every side's cache its own. KV8 runs beside them as the control.
 *
 * "Prefill + decode = one prefill", and its tolerance: a position's K and V depend on the tokens up
 * to it only, so both runs cache the same codes, except that ORT's float32 MatMuls over one row
 * (decode) round differently from those over many, so a value on a rounding boundary of a QDQ point
 * can take the neighbouring code (a flip; test/ir/reference-static.test.ts), and with static A8
 * activations one flipped code moves later logits by up to ~0.8 (every downstream A8 point re-rounds
 * the difference). So the check is the reference tests' bookkeeping: the two prefill calls (16 and 24
 * tokens, on an empty and a filled cache) hold exactly one prefill's codes, the first differing code
 * of each window is a neighbour (±1) of the other's, and every logit before it agrees to {@link TOL}
 * (measured 1.3e-5 at most; first flips at positions 41-43, the first decode steps). With float activations
 * a KV16 flip is 1/257 of a KV8 one: whole windows agree to 1.4e-3 (KV16) against 0.43 (KV8).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { checkContextFits, readContextFile, writeContextFile } from '../../formats/context-file.js';
import { readExecutable, writeExecutable } from '../../formats/hef-executable.js';
import { loadTextFile, loadTokenWindows } from '../../calibration/datasets.js';
import { slidingWindows } from '../../calibration/windows.js';
import { calibrateRanges } from '../../passes/calibrate-ranges.js';
import { compile } from '../../src/compiler/compile.js';
import { silentContext } from '../../src/core/context.js';
import { kvLayerDtypes, kvSnapshotLayerBytes } from '../../src/ir/executable.js';
import type { Model } from '../../src/ir/model.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { MIXED_KV, quantizeWithRecipe } from '../helpers/recipe-quantize.js';
import { CALIB, STORIES, TINYSTORIES } from '../helpers/paths.js';
import { maxAbsDiffUnchecked } from '../helpers/numeric.js';
import { suiteTempDir } from '../helpers/tmp.js';

/** Logit agreement before the first flipped code (measured ≤ 1.3e-5). */
const TOL = 1e-4;
/** Positions the two prefill calls cover before decoding. */
const PREFILLED = 40;
/** Elements of one position of one layer's K (or V): 4 kv heads · 8 head_dim. */
const ROW = 32;
const MODEL = 'ef'.repeat(32);

/** The rows of successive calls, back to back. */
function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The model with every activation point float (KV caches as they are). */
const withFloatActivations = (m: Model): Model => ({
  ...m,
  quant: { ...m.quant, activations: {} },
  ...(m.precision ? { precision: { ...m.precision, activations: Object.fromEntries(Object.keys(m.precision.activations).map((p) => [p, { bits: 32 as const, observer: 'mse' as const }])) } } : {}),
});

describe.skipIf(!fs.existsSync(STORIES))('the simulator with KV16 and per-layer KV widths on stories260K', () => {
  const dir = suiteTempDir('edgellm-kvwidths-');
  const backends = new Map<string, SimulatorBackend>();
  /** KV16 and KV8 with float activations */
  const floatAct = new Map<string, SimulatorBackend>();
  let windows: number[][];
  beforeAll(async () => {
    const base = loadHfModel(STORIES);
    const calib = loadTokenWindows(CALIB).slice(0, 16);
    const kv16 = await quantizeWithRecipe(base, 'defaults: {kv_bits: 16}\n', calib);
    const models: [string, Model][] = [
      ['KV16', kv16],
      ['mixed 16/8/32', await quantizeWithRecipe(base, MIXED_KV, calib)],
      ['KV8', await calibrateRanges({ ...kv16, precision: undefined }, calib, { observer: 'mse', activations: true, kvCache: true }, silentContext)],
    ];
    for (const [name, m] of models) {
      const file = path.join(dir, `${name.replace(/\W/g, '')}.hef`);
      writeExecutable(file, compile(m, { prefillLen: 64, maxContext: 128 }));
      backends.set(name, await SimulatorBackend.load(readExecutable(file), { precision: 'exact' }));
      if (name !== 'mixed 16/8/32') floatAct.set(name, await SimulatorBackend.load(compile(withFloatActivations(m), { prefillLen: 64, maxContext: 128 }), { precision: 'exact' }));
    }
    const tok = new TextTokenizer(base.tokenizer);
    windows = slidingWindows(await tok.encode(loadTextFile(TINYSTORIES), true), 64, 4);
    return async () => {
      for (const b of [...backends.values(), ...floatAct.values()]) await b.dispose();
    };
  });

  it('the executables hold the caches the recipes ask for', () => {
    expect(kvLayerDtypes(backends.get('KV16')!.kvLayout)).toEqual(Array(5).fill('uint16'));
    expect(kvLayerDtypes(backends.get('mixed 16/8/32')!.kvLayout)).toEqual(['uint16', 'uint8', 'float32', 'uint8', 'uint16']);
    expect(backends.get('KV8')!.kvLayout.dtype).toBe('uint8');
  });

  it('a prompt prefilled in two calls, then decoded token by token, gives the codes and logits of one prefill up to the first rounding-boundary flip', async () => {
    const report: string[] = [];
    for (const [name, b] of backends) {
      const V = b.vocabSize;
      const dtypes = kvLayerDtypes(b.kvLayout);
      let worstBefore = 0;
      let firstFlip = Infinity;
      for (const w of windows) {
        const one = b.newContext();
        const full = await b.forward(one, w); // [64, V]: one call
        const ctx = b.newContext();
        const parts = [await b.forward(ctx, w.slice(0, 16)), await b.forward(ctx, w.slice(16, PREFILLED))]; // on an empty, then a filled cache
        for (let t = PREFILLED; t < w.length; t++) parts.push(await b.forward(ctx, [w[t]])); // decode steps
        const chunked = concat(parts);
        // the first position whose codes differ, and there the first cache in execution order (layer by layer, K before V)
        const [a, c] = [b.snapshot(one).layers, b.snapshot(ctx).layers];
        const codes = (i: number, kv: 'key' | 'value', s: typeof a) => (dtypes[i] === 'uint16' ? new Uint16Array(s[i][kv].slice().buffer) : dtypes[i] === 'uint8' ? s[i][kv] : null);
        let first: { t: number; step: number } | null = null;
        for (let t = 0; t < w.length && !first; t++)
          for (let i = 0; i < dtypes.length && !first; i++)
            for (const kv of ['key', 'value'] as const) {
              const [x, y] = [codes(i, kv, a), codes(i, kv, c)];
              if (!x || !y) continue;
              let step = 0;
              for (let j = t * ROW; j < (t + 1) * ROW; j++) step = Math.max(step, Math.abs(x[j] - y[j]));
              if (step) {
                first = { t, step };
                break;
              }
            }
        const t0 = first?.t ?? w.length;
        firstFlip = Math.min(firstFlip, t0);
        expect(first?.step ?? 1, `${name}: the first differing code is a neighbour`).toBe(1);
        worstBefore = Math.max(worstBefore, maxAbsDiffUnchecked(full.subarray(0, t0 * V), chunked.subarray(0, t0 * V)));
      }
      report.push(`${name}: first flip at position ${firstFlip}, |Δlogit| before it ${worstBefore.toExponential(1)}`);
      expect(firstFlip, `${name}: the prefill calls hold one prefill's codes`).toBeGreaterThanOrEqual(PREFILLED);
      expect(worstBefore, name).toBeLessThan(TOL);
    }
    console.info(`two prefill calls + decode against one prefill, ${windows.length} windows: ${report.join('; ')}`);
  });

  it('with float activations, KV16 decode stays within 5e-3 of one prefill on every row; a KV8 flip moves logits ~100× more', async () => {
    const diff = async (b: SimulatorBackend) => {
      let worst = 0;
      for (const w of windows) {
        const full = await b.forward(b.newContext(), w);
        const ctx = b.newContext();
        const parts = [await b.forward(ctx, w.slice(0, PREFILLED))];
        for (let t = PREFILLED; t < w.length; t++) parts.push(await b.forward(ctx, [w[t]]));
        worst = Math.max(worst, maxAbsDiffUnchecked(full, concat(parts)));
      }
      return worst;
    };
    const [d16, d8] = [await diff(floatAct.get('KV16')!), await diff(floatAct.get('KV8')!)];
    console.info(`float activations, prefill + decode against one prefill, max |Δlogit|: KV16 ${d16.toExponential(2)}, KV8 ${d8.toExponential(2)}`);
    // measured: KV16 1.4e-3, KV8 0.43
    expect(d16).toBeLessThan(5e-3);
    expect(d8).toBeGreaterThan(20 * d16);
  });

  it('a context saved to a file and restored holds the same bytes and continues exactly as the original', async () => {
    for (const [name, b] of backends) {
      const w = windows[1];
      const ctx = b.newContext();
      await b.forward(ctx, w.slice(0, 30));
      const file = path.join(dir, `${name.replace(/\W/g, '')}.ctx`);
      writeContextFile(file, { model: MODEL, tokens: w.slice(0, 30), kv: b.kvLayout, snapshot: b.snapshot(ctx), edgellm: 'test' });
      const f = readContextFile(file);
      checkContextFits(file, f, MODEL, b.kvLayout);
      // each layer at its width: 30 positions · 4 kv heads · 8 head_dim · 2, 1 or 4 bytes, K and V
      const kvBytes = f.snapshot.layers.reduce((s, l) => s + l.key.byteLength + l.value.byteLength, 0);
      expect(kvBytes, name).toBe(kvLayerDtypes(b.kvLayout).reduce((s, _d, i) => s + 2 * kvSnapshotLayerBytes(b.kvLayout, 30, i), 0));
      const restored = b.restore(f.snapshot);
      expect(b.snapshot(restored).layers, name).toEqual(b.snapshot(ctx).layers);
      const next = w.slice(30, 34);
      expect(await b.forward(restored, next), name).toEqual(await b.forward(ctx, next)); // bit-exact: same graph, same cache
    }
    const kv16 = backends.get('KV16')!;
    const codes = new Uint16Array(kv16.snapshot(kv16.restore(readContextFile(path.join(dir, 'KV16.ctx')).snapshot)).layers[0].key.slice().buffer);
    expect(codes.some((c) => c > 255)).toBe(true); // uint16 codes, not bytes
  });

  it('fork and truncate: each context continues on its own cache; a truncated one recomputes the same codes', async () => {
    for (const [name, b] of backends) {
      const w = windows[2];
      const ctx = b.newContext();
      await b.forward(ctx, w.slice(0, 20));
      const at20 = b.snapshot(ctx).layers;
      const f = b.fork(ctx);
      const forkLogits = await b.forward(f, w.slice(20, 24));
      const forked = b.snapshot(f).layers;
      await b.forward(ctx, w.slice(40, 44)); // the original goes elsewhere, into the positions the fork wrote too
      expect(b.snapshot(f).layers, `${name}: copy-on-write`).toEqual(forked);
      expect(b.snapshot(ctx).layers, name).not.toEqual(forked);
      expect(await b.forward(b.fork(b.restore({ length: 20, adapter: null, layers: at20 })), w.slice(20, 24)), name).toEqual(forkLogits);
      b.truncate(ctx, 20);
      expect(b.snapshot(ctx).layers, name).toEqual(at20);
      await b.forward(ctx, w.slice(20, 24));
      expect(b.snapshot(ctx).layers, name).toEqual(b.snapshot(f).layers);
    }
  });
});
