import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { gptq, weightedSquaredErrors, MAX_DAMP_RETRIES } from '../../passes/gptq.js';
import { OrtLinalg, upperCholeskyOfInverse } from '../../src/engine/linalg.js';
import { HessianAccumulator } from '../../calibration/hessian.js';
import { mulberry32 } from '../../src/core/rng.js';
import { loadTokenWindows } from '../../calibration/datasets.js';
import { loadHfModel } from '../../formats/hf.js';
import { layerLinears } from '../../src/ir/architectures.js';
import { dequantizeW4, quantizeRtnW4 } from '../../src/ir/quant.js';
import { toFloat32 } from '../../src/ir/tensor.js';
import { EdgeLLMError, ShapeMismatchError, UsageError } from '../../src/core/errors.js';
import { CALIB, STORIES } from '../helpers/paths.js';
import { randn } from '../helpers/random.js';
import { capturedHessians } from '../helpers/hessians.js';

/** H = XᵀX/rows + ridge·I for a random X [rows, K]. */
function randomHessian(K: number, rows: number, seed: number, ridge: number): Float64Array {
  const X = randn(rows * K, seed);
  const H = new Float64Array(K * K);
  for (let r = 0; r < rows; r++) for (let i = 0; i < K; i++) for (let j = 0; j < K; j++) H[i * K + j] += (X[r * K + i] * X[r * K + j]) / rows;
  for (let i = 0; i < K; i++) H[i * K + i] += ridge;
  return H;
}

function diagonal(d: number[] | Float64Array): Float64Array {
  const K = d.length;
  const H = new Float64Array(K * K);
  for (let i = 0; i < K; i++) H[i * K + i] = d[i];
  return H;
}

/** W − dequantize(Q) */
function residual(W: Float32Array, q: ReturnType<typeof quantizeRtnW4>): Float32Array {
  const d = dequantizeW4(q);
  return W.map((w, i) => w - d[i]);
}

let la: OrtLinalg;
beforeAll(() => {
  la = new OrtLinalg();
});
afterAll(async () => {
  await la.dispose();
});

describe('upperCholeskyOfInverse', () => {
  // U is returned in float32 (relative rounding 6e-8 per entry); H is well conditioned (ridge 0.5),
  // so Uᵀ·U·H reproduces I to 1e-5. K = 600 exercises the blocked path (ORT float32 Gemms).
  for (const K of [100, 600])
    it(`gives Uᵀ·U = H⁻¹ with U upper triangular (K = ${K}, |Uᵀ·U·H − I| < 1e-5)`, async () => {
      const H = randomHessian(K, Math.min(2 * K, 300), K, 0.5);
      const U = await upperCholeskyOfInverse(H, K, la);
      for (let i = 0; i < K; i++) for (let j = 0; j < i; j++) expect(U[i * K + j]).toBe(0);
      let maxErr = 0;
      for (const col of [0, 1, Math.floor(K / 2), K - 1]) {
        const u = new Float64Array(K); // U·H[:, col]
        for (let i = 0; i < K; i++) for (let k = i; k < K; k++) u[i] += U[i * K + k] * H[k * K + col];
        for (let i = 0; i < K; i++) {
          let s = 0;
          for (let k = 0; k <= i; k++) s += U[k * K + i] * u[k];
          maxErr = Math.max(maxErr, Math.abs(s - (i === col ? 1 : 0)));
        }
      }
      expect(maxErr).toBeLessThan(1e-5);
    });
});

describe('gptq', () => {
  // With a diagonal H, H⁻¹'s Cholesky factor is diagonal: no error is propagated, so every column is
  // rounded on its own, exactly as RTN does (same float32 scales, same codes), in every mode.
  // K = 172 is stories260K's down_proj (ragged last group); K = 320 takes the blocked Cholesky path.
  for (const [K, G, mode] of [
    [172, 64, { staticGroups: true }],
    [172, 32, { staticGroups: false }],
    [172, 64, { staticGroups: true, actOrder: true }],
    [320, 64, { staticGroups: false, blockSize: 96 }],
    [320, 128, { staticGroups: true, actOrder: true, blockSize: 128 }],
  ] as const)
    it(`with a diagonal H equals RTN exactly (K = ${K}, group ${G}, ${JSON.stringify(mode)})`, async () => {
      const N = 12;
      const W = randn(N * K, K + G);
      const r = mulberry32(7);
      const H = mode.actOrder ? diagonal(Float64Array.from({ length: K }, () => 0.1 + r())) : diagonal(new Array(K).fill(1));
      const res = await gptq(W, N, K, H, { groupSize: G, ...mode }, la);
      const ref = quantizeRtnW4(W, N, K, G);
      expect(res.packed.qweight).toEqual(ref.qweight);
      expect(res.packed.scales).toEqual(ref.scales);
      expect(res.retries).toBe(0);
    });

  describe('on real calibration activations of stories260K', () => {
    /** layer input point -> Hessian, from the fp32 model on 6 calibration windows */
    const hessians = new Map<string, Float64Array>();
    const model = loadHfModel(STORIES);
    const cfg = model.config;
    beforeAll(async () => {
      const windows = loadTokenWindows(CALIB).slice(0, 6);
      const points = ['attn_in', 'o_proj_in', 'mlp_in', 'down_proj_in'].flatMap((p) => [`model.layers.0.${p}`, `model.layers.3.${p}`]);
      for (const [p, H] of await capturedHessians(model, windows, points)) hessians.set(p, H);
    });

    // The point of GPTQ: a smaller layer-wise error ‖(W − Q)·X‖² than rounding to nearest on the
    // same grid. Its reported error Σ e² equals tr((W−Q)·(H + λI)·(W−Q)ᵀ) (float32 products: 1e-3).
    for (const layer of [0, 3])
      for (const G of [64, 32])
        it(`lowers tr((W−Q)·H·(W−Q)ᵀ) below RTN for every linear of layer ${layer} (group ${G})`, async () => {
          for (const spec of layerLinears(cfg, layer)) {
            const H = hessians.get(`model.layers.${layer}.${spec.input}`)!;
            const N = spec.outFeatures;
            const K = spec.inFeatures;
            const W = toFloat32(model.weights.get(`${spec.name}.weight`)!.load());
            const res = await gptq(W, N, K, H, { groupSize: G }, la);
            const rtn = quantizeRtnW4(W, N, K, G);
            const [eG, eR] = await weightedSquaredErrors([residual(W, res.packed), residual(W, rtn)], N, K, H, la);
            expect(eG, spec.name).toBeLessThan(0.9 * eR);
            const Hd = Float64Array.from(H);
            for (let i = 0; i < K; i++) Hd[i * K + i] += res.damp;
            const [eDamped] = await weightedSquaredErrors([residual(W, res.packed)], N, K, Hd, la);
            expect(Math.abs(res.error - eDamped) / eDamped, spec.name).toBeLessThan(1e-3);
          }
        });

    it('act-order with static groups also beats RTN (layer 3 down_proj, K = 172)', async () => {
      const spec = layerLinears(cfg, 3)[6];
      const H = hessians.get('model.layers.3.down_proj_in')!;
      const W = toFloat32(model.weights.get(`${spec.name}.weight`)!.load());
      const res = await gptq(W, spec.outFeatures, spec.inFeatures, H, { groupSize: 64, actOrder: true }, la);
      const rtn = quantizeRtnW4(W, spec.outFeatures, spec.inFeatures, 64);
      const [eG, eR] = await weightedSquaredErrors([residual(W, res.packed), residual(W, rtn)], spec.outFeatures, spec.inFeatures, H, la);
      expect(eG).toBeLessThan(0.9 * eR);
    });
  });

  it('zeroes dead columns (diag H = 0) and still beats RTN on the live ones', async () => {
    const N = 8;
    const K = 64;
    const rows = 200;
    const X = randn(rows * K, 3);
    const deadCols = [3, 10, 63];
    for (let r = 0; r < rows; r++) for (const d of deadCols) X[r * K + d] = 0;
    const acc = new HessianAccumulator(K);
    await acc.addBatch(X);
    const W = randn(N * K, 4);
    const res = await gptq(W, N, K, acc.H, { groupSize: 32 }, la);
    const Q = dequantizeW4(res.packed);
    for (let n = 0; n < N; n++) for (const d of deadCols) expect(Q[n * K + d]).toBe(0);
    expect(Q.every(Number.isFinite)).toBe(true);
    const [eG, eR] = await weightedSquaredErrors([residual(W, res.packed), residual(W, quantizeRtnW4(W, N, K, 32))], N, K, acc.H, la);
    expect(eG).toBeLessThan(eR);
    await acc.dispose();
  });

  it('retries the Cholesky factorization with 10× the damping when H is numerically indefinite', async () => {
    // eigenvalues 2.05 and −0.05: +0.01·mean diag (= 0.01) is not enough, +0.1 is
    const H = Float64Array.from([1, 1.05, 1.05, 1]);
    const res = await gptq(Float32Array.from([0.3, -0.2, 1, 0.5]), 2, 2, H, { groupSize: 2 }, la);
    expect(res.retries).toBe(1);
    expect(res.damp).toBeCloseTo(0.1, 12);
    // never positive definite: gives up after MAX_DAMP_RETRIES with a typed error
    const bad = Float64Array.from([1, NaN, NaN, 1]);
    await expect(gptq(Float32Array.from([1, 2]), 1, 2, bad, { groupSize: 2 }, la)).rejects.toThrow(
      new RegExp(`not positive definite .*\\(${MAX_DAMP_RETRIES} retries`),
    );
    await expect(gptq(Float32Array.from([1, 2]), 1, 2, bad, { groupSize: 2 }, la)).rejects.toBeInstanceOf(EdgeLLMError);
  });

  it('rejects act-order with dynamic groups, odd group sizes and mismatched shapes', async () => {
    const W = new Float32Array(8);
    const H = diagonal([1, 1, 1, 1]);
    await expect(gptq(W, 2, 4, H, { groupSize: 2, actOrder: true, staticGroups: false }, la)).rejects.toThrow(UsageError);
    await expect(gptq(W, 2, 4, H, { groupSize: 3 }, la)).rejects.toThrow(UsageError);
    await expect(gptq(W, 2, 3, H, { groupSize: 2 }, la)).rejects.toThrow(ShapeMismatchError);
    await expect(gptq(W, 2, 4, diagonal([1, 1]), { groupSize: 2 }, la)).rejects.toThrow(ShapeMismatchError);
  });
});
