import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadHfModel } from '../../formats/hf.js';
import { saveModelHar, loadModelHar } from '../../formats/har-model.js';
import { makeCheckpoint } from '../../fixtures/make-fixture.js';
import { foldNorms } from '../../passes/fold-norms.js';
import { quarot, rotationOf, type QuarotOptions } from '../../passes/quarot.js';
import { compile } from '../../src/compiler/compile.js';
import { SimulatorBackend } from '../../src/runtime/simulator.js';
import { referenceForward } from '../../src/ir/reference.js';
import { toFloat32 } from '../../src/ir/tensor.js';
import { inMemory, type Model } from '../../src/ir/model.js';
import { PassOrderError } from '../../src/core/errors.js';
import { emptyQuantState } from '../../src/ir/model.js';
import { GraphBuilder } from '../../formats/onnx.js';
import { Lowering } from '../../src/compiler/lowering.js';
import { onlineRotation } from '../../src/compiler/lower-layer.js';
import { hadamardRotation, rotationRng, rotateVector } from '../../passes/hadamard.js';
import * as ort from 'onnxruntime-node';
import { silentContext } from '../../src/core/context.js';
import { ROOT, STORIES } from '../helpers/paths.js';
import { relMaxDiff } from '../helpers/numeric.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';

/** A copy of `m` with every tensor loaded into memory (so a mutation by a pass would show). */
function materialise(m: Model): Model {
  return { ...m, weights: new Map([...m.weights].map(([n, t]) => [n, inMemory(t.load())])) };
}

/** Logits of `ids` through the compiled graphs: prefill chunks of 8 (the last one padded), then decode steps. */
async function graphLogits(m: Model, ids: number[], prefill: number): Promise<Float32Array> {
  const V = m.config.vocabSize;
  const backend = await SimulatorBackend.load(compile(m, { prefillLen: 8, maxContext: 64 }));
  const ctx = backend.newContext();
  const out = new Float32Array(ids.length * V);
  out.set(await backend.forward(ctx, ids.slice(0, prefill)));
  for (let t = prefill; t < ids.length; t++) out.set(await backend.forward(ctx, [ids[t]]), t * V);
  await backend.dispose();
  return out;
}

const NO_ONLINE: QuarotOptions = { seed: 3, online: { r3: false, r4: false } };
const ONLINE: QuarotOptions = { seed: 3, online: { r3: true, r4: true } };

let tmp: string;
const models: Record<string, { base: Model; folded: Model; ids: number[] }> = {};
beforeAll(() => {
  tmp = makeTempDir('edgellm-quarot-');
  const cfg = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures/tiny-qwen2/config.json'), 'utf8'));
  makeCheckpoint({ ...cfg, tie_word_embeddings: true }, path.join(tmp, 'qwen2'));
  for (const [name, dir, ids] of [
    ['stories260K', STORIES, [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267]],
    ['qwen2', path.join(tmp, 'qwen2'), [1, 17, 250, 3, 99, 42, 7, 7, 180, 2, 64, 5, 33, 201, 150, 11, 12, 290, 0, 8]],
  ] as const) {
    const base = loadHfModel(dir);
    models[name] = { base, folded: materialise(foldNorms(base, {}, silentContext)), ids: [...ids] };
  }
});
afterAll(() => removeDir(tmp));

describe('quarot', () => {
  // Reference: rotated weights are rounded once to float32 (~6e-8 relative each); the float64
  // reference then reproduces the logits to ~1e-7 relative. Bound: 1e-5 relative to max |logit|.
  // Graph: float32 ONNX arithmetic (prefill chunks of 8 + decode, online Hadamards as MatMuls) vs the
  // float64 reference of the original model, ~1e-6 relative measured; bound: 2e-5.
  for (const name of ['stories260K', 'qwen2'])
    for (const [label, opts] of [
      ['R1+R2', NO_ONLINE],
      ['R1+R2 with online R3+R4', ONLINE],
    ] as const)
      it(`fold+QuaRot (${label}) reproduces the original logits on ${name}: reference and ONNX graph`, async () => {
        const { base, folded, ids } = models[name];
        const want = referenceForward(base, ids);
        const q = quarot(folded, opts, silentContext);
        expect(relMaxDiff(referenceForward(q, ids), want)).toBeLessThan(1e-5);
        expect(relMaxDiff(await graphLogits(q, ids, 13), want)).toBeLessThan(2e-5);
      });

  it('changes the weights (the invariance is not vacuous) and differs between seeds', () => {
    const { folded } = models.qwen2;
    const a = quarot(folded, { ...NO_ONLINE, seed: 1 }, silentContext);
    const b = quarot(folded, { ...NO_ONLINE, seed: 2 }, silentContext);
    for (const n of ['model.embed_tokens.weight', 'model.layers.0.self_attn.v_proj.weight', 'model.layers.1.mlp.down_proj.weight', 'lm_head.weight']) {
      const w0 = toFloat32(folded.weights.get(n)!.load());
      const wa = toFloat32(a.weights.get(n)!.load());
      const wb = toFloat32(b.weights.get(n)!.load());
      expect(relMaxDiff(wa, w0)).toBeGreaterThan(0.1);
      expect(relMaxDiff(wa, wb)).toBeGreaterThan(0.1);
    }
    expect(a.online).toBeUndefined();
  });

  it('records the online rotations: stories260K R4 is the 172 Goethals–Seidel Hadamard, R3 the head_dim 8 Sylvester', () => {
    const q = quarot(models.stories260K.folded, ONLINE, silentContext);
    expect(q.online).toEqual({ r3: { size: 8, k: 1, factor: null }, r4: { size: 172, k: 172, factor: 'online.r4.factor' } });
    const F = toFloat32(q.weights.get('online.r4.factor')!.load());
    for (const v of F) expect(Math.abs(Math.abs(v) - 1 / Math.sqrt(172))).toBeLessThan(1e-8);
    expect(q.passes.at(-1)).toEqual({ name: 'quarot', options: { seed: 3, online: { r3: true, r4: true } } });
  });

  it('rotationOf rebuilds R1 and R2 from the recorded seed: E′ = E·R1 and W_v′ = R2ᵀ·W_v·R1 per head', () => {
    const { folded } = models.qwen2;
    const q = quarot(folded, { ...NO_ONLINE, seed: 11 }, silentContext);
    const { r1, r2 } = rotationOf(q);
    const cfg = q.config;
    const H = cfg.hiddenSize;
    const hd = cfg.headDim;
    const E = toFloat32(folded.weights.get('model.embed_tokens.weight')!.load());
    const E1 = toFloat32(q.weights.get('model.embed_tokens.weight')!.load());
    const Wv = toFloat32(folded.weights.get('model.layers.1.self_attn.v_proj.weight')!.load());
    const Wv1 = toFloat32(q.weights.get('model.layers.1.self_attn.v_proj.weight')!.load());
    let errE = 0;
    for (const t of [0, 5, 299])
      for (let j = 0; j < H; j++) {
        let s = 0;
        for (let i = 0; i < H; i++) s += E[t * H + i] * r1[i * H + j];
        errE = Math.max(errE, Math.abs(E1[t * H + j] - s));
      }
    let errV = 0;
    for (let g = 0; g < cfg.numKvHeads; g++)
      for (let a = 0; a < hd; a++)
        for (let j = 0; j < H; j++) {
          let s = 0;
          for (let b = 0; b < hd; b++) for (let i = 0; i < H; i++) s += r2[1][b * hd + a] * Wv[(g * hd + b) * H + i] * r1[i * H + j];
          errV = Math.max(errV, Math.abs(Wv1[(g * hd + a) * H + j] - s));
        }
    // float32 storage of values of magnitude ≲ 4: rounding ≲ 5e-7
    expect(errE).toBeLessThan(1e-6);
    expect(errV).toBeLessThan(1e-6);
  });

  it('throws PassOrderError without fold-norms, twice, or after weight quantization', () => {
    const { base, folded } = models.stories260K;
    expect(() => quarot(base, NO_ONLINE, silentContext)).toThrow(PassOrderError);
    expect(() => quarot(quarot(folded, NO_ONLINE, silentContext), NO_ONLINE, silentContext)).toThrow(PassOrderError);
    const quantized = { ...folded, quant: { ...folded.quant, linears: { lm_head: { bits: 4 as const, groupSize: 64, scheme: 'symmetric' as const, method: 'rtn' } } } };
    expect(() => quarot(quantized, NO_ONLINE, silentContext)).toThrow(PassOrderError);
  });

  it('does not mutate its input', () => {
    const { folded } = models.qwen2;
    const before = new Map([...folded.weights].map(([n, t]) => [n, Array.from(toFloat32(t.load()))]));
    const passes = JSON.stringify(folded.passes);
    const q = quarot(folded, ONLINE, silentContext);
    for (const t of q.weights.values()) t.load(); // force every rotation
    expect(folded.online).toBeUndefined();
    expect(JSON.stringify(folded.passes)).toBe(passes);
    expect([...folded.weights.keys()]).toEqual([...before.keys()]);
    for (const [n, t] of folded.weights) expect(Array.from(toFloat32(t.load())), n).toEqual(before.get(n));
  });

  it('keeps the online rotations through a HAR round trip', async () => {
    const { base, folded, ids } = models.qwen2;
    const q = quarot(folded, ONLINE, silentContext);
    const file = path.join(tmp, 'rotated.har');
    await saveModelHar(file, q, { modelName: 'tiny-qwen2', sourceSha256: '' });
    const back = (await loadModelHar(file)).model;
    expect(back.online).toEqual(q.online);
    expect(relMaxDiff(referenceForward(back, ids), referenceForward(base, ids))).toBeLessThan(1e-5);
  });
});

describe('onlineRotation (graph op)', () => {
  // x·(Q ⊗ H_P/√P) in float32 ORT (dense MatMul or butterfly FWHT) vs float64 x·R: sums of ≤ n
  // terms of magnitude ≤ 1/√n·|x|, error ~√n·2^-24 ≈ 1e-6 relative; bound 1e-5.
  it.each([
    [24, 64, 'dense H_2, Q_12 mix'],
    [88, 0, 'butterfly H_2, Q_44 mix'],
    [1024, 256, 'butterfly H_1024'],
    [12 * 512, 256, 'butterfly H_512, Q_12 mix'],
    [172, 256, 'Q_172 only'],
  ])('n = %i (denseMax %i: %s) equals x·R', async (n, denseMax) => {
    const R = hadamardRotation(n, rotationRng(0, 'test'), false);
    const model = { ...models.stories260K.base, weights: new Map([['f', inMemory({ dtype: 'F32', shape: [R.k, R.k], data: Float32Array.from(R.qk) })]]), quant: emptyQuantState() };
    const g = new GraphBuilder('rot');
    const L = new Lowering(g, model, { capture: false, actQuant: false, kvQuant: false });
    const x = g.input('x', 'float32', [1, 'S', n]);
    const y = onlineRotation(L, x, { size: n, k: R.k, factor: R.k > 1 ? 'f' : null }, [1, -1, n], '/rot', denseMax);
    g.node('Identity', [y], { name: '/out', outputNames: ['y'] });
    g.output('y', 'float32', [1, 'S', n]);
    const session = await ort.InferenceSession.create(g.encode(true));
    const S = 3;
    const rng = rotationRng(1, 'x');
    const xs = Float32Array.from({ length: S * n }, () => rng() * 2 - 1);
    const got = (await session.run({ x: new ort.Tensor('float32', xs, [1, S, n]) })).y.data as Float32Array;
    await session.release();
    // x·R in float64 by rotateVector (checked against the dense (Q ⊗ H_P/√P) in hadamard.test.ts)
    const want = new Float32Array(S * n);
    for (let t = 0; t < S; t++) {
      const row = Float64Array.from(xs.subarray(t * n, (t + 1) * n));
      rotateVector(R, row);
      want.set(row, t * n);
    }
    expect(relMaxDiff(got, want)).toBeLessThan(1e-5);
  });
});
