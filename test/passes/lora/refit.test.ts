/**
 * passes/lora/refit.ts: the rank-r refit of an adapter to a W4 base, against the explicit
 * Eckart–Young solution on generated matrices, its edge cases, and on the real stories260K adapter:
 * closer to fp32 + adapter (KL-divergence) than the adapter as trained, base untouched.
 */
import { describe, expect, it } from 'vitest';
import { symmetricEigen, refitLoraModule } from '../../../passes/lora/refit.js';
import { ortMatMul } from '../../../src/engine/linalg.js';
import { OrtLinalg } from '../../../src/engine/linalg.js';
import { addLora } from '../../../passes/lora/add.js';
import { rtn } from '../../../passes/rtn.js';
import { foldNorms } from '../../../passes/fold-norms.js';
import { quarot } from '../../../passes/quarot.js';
import { loadHfModel } from '../../../formats/hf.js';
import { loadPeftAdapter } from '../../../formats/peft.js';
import { TextTokenizer } from '../../../formats/tokenizer.js';
import { loadTextFile, loadTokenWindows } from '../../../calibration/datasets.js';
import { slidingWindows } from '../../../calibration/windows.js';
import { dequantizeW4, quantizeRtnW4 } from '../../../src/ir/quant.js';
import { compile } from '../../../src/compiler/compile.js';
import { SimulatorBackend } from '../../../src/runtime/simulator.js';
import { klDivergence } from '../../../src/eval/kld.js';
import { silentContext } from '../../../src/core/context.js';
import type { Model } from '../../../src/ir/model.js';
import { CALIB, STORIES, TINYSTORIES, WIKI_ADAPTER as ADAPTER } from '../../helpers/paths.js';
import { relMaxDiffUnchecked as relDiff } from '../../helpers/numeric.js';
import { centredUniform as rng } from '../../helpers/random.js';

/** A generated linear + adapter + anisotropic input Hessian. */
function problem(out: number, K: number, r: number, seed: number) {
  const u = rng(seed);
  const W = Float32Array.from({ length: out * K }, () => u() * 0.4);
  const A = Float32Array.from({ length: r * K }, () => u() * 0.3);
  const B = Float32Array.from({ length: out * r }, () => u() * 0.3);
  // X = Z·C: 256 samples of correlated, unequally scaled features
  const C = Float64Array.from({ length: K * K }, (_, i) => u() + (i % (K + 1) === 0 ? 2 + (i / K) % 5 : 0));
  const H = new Float64Array(K * K);
  const x = new Float64Array(K);
  for (let n = 0; n < 256; n++) {
    const z = Array.from({ length: K }, () => u());
    for (let j = 0; j < K; j++) {
      x[j] = 0;
      for (let i = 0; i < K; i++) x[j] += z[i] * C[i * K + j];
    }
    for (let i = 0; i < K; i++) for (let j = 0; j < K; j++) H[i * K + j] += (x[i] * x[j]) / 256;
  }
  const Wq = dequantizeW4(quantizeRtnW4(W, out, K, 32));
  return { W, Wq, A, B, H };
}

/** tr(D·H·Dᵀ) */
function energy(D: Float64Array, H: Float64Array, rows: number, K: number): number {
  let e = 0;
  for (let o = 0; o < rows; o++) for (let a = 0; a < K; a++) for (let b = 0; b < K; b++) e += D[o * K + a] * H[a * K + b] * D[o * K + b];
  return e;
}

/** s·B·A as float64 [out, K] */
function product(A: Float32Array, B: Float32Array, s: number, out: number, K: number, r: number): Float64Array {
  const P = new Float64Array(out * K);
  for (let o = 0; o < out; o++) for (let k = 0; k < K; k++) for (let j = 0; j < r; j++) P[o * K + k] += s * B[o * r + j] * A[j * K + k];
  return P;
}

describe('symmetricEigen', () => {
  it('diagonalizes a symmetric matrix: V·diag(λ)·Vᵀ = S, VᵀV = I, λ descending (1e-10)', () => {
    const n = 12;
    const u = rng(7);
    const S = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) S[i * n + j] = S[j * n + i] = u();
    const { values, vectors: V } = symmetricEigen(S, n);
    for (let i = 1; i < n; i++) expect(values[i]).toBeLessThanOrEqual(values[i - 1]);
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        let rec = 0;
        let dot = 0;
        for (let k = 0; k < n; k++) {
          rec += V[i * n + k] * values[k] * V[j * n + k];
          dot += V[k * n + i] * V[k * n + j];
        }
        expect(Math.abs(rec - S[i * n + j])).toBeLessThan(1e-10);
        expect(Math.abs(dot - (i === j ? 1 : 0))).toBeLessThan(1e-10);
      }
  });
});

describe('refitLoraModule', () => {
  const [out, K, r, s] = [48, 64, 4, 2];

  it('equals the explicit Eckart–Young solution U_r·U_rᵀ·M (top-r eigenvectors of M·H·Mᵀ) and lowers the residual', async () => {
    const { W, Wq, A, B, H } = problem(out, K, r, 1);
    const res = await refitLoraModule(W, Wq, A, B, s, H, out, K, r);
    const M = product(A, B, s, out, K, r);
    for (let i = 0; i < M.length; i++) M[i] += W[i] - Wq[i];
    // reference: form G = M·H·Mᵀ and diagonalize it in full
    const MH = new Float64Array(out * K);
    for (let o = 0; o < out; o++) for (let j = 0; j < K; j++) for (let k = 0; k < K; k++) MH[o * K + j] += M[o * K + k] * H[k * K + j];
    const G = new Float64Array(out * out);
    for (let a = 0; a < out; a++) for (let b = 0; b < out; b++) for (let k = 0; k < K; k++) G[a * out + b] += MH[a * K + k] * M[b * K + k];
    const { vectors: U } = symmetricEigen(G, out);
    const N = new Float64Array(out * K);
    for (let j = 0; j < r; j++)
      for (let c = 0; c < K; c++) {
        let uM = 0;
        for (let i = 0; i < out; i++) uM += U[i * out + j] * M[i * K + c];
        for (let o = 0; o < out; o++) N[o * K + c] += U[o * out + j] * uM;
      }
    const got = product(res.A, res.B, s, out, K, r);
    // A'/B' are float32: ~6e-8 relative per entry, summed over r products
    expect(relDiff(got, N)).toBeLessThan(1e-5);
    // the reported residuals are the direct ones (before: W_q − W; after: M − s·B'·A')
    const E = Float64Array.from(W, (w, i) => w - Wq[i]);
    expect(res.residualBefore / energy(E, H, out, K)).toBeCloseTo(1, 10);
    const D = Float64Array.from(M, (m, i) => m - got[i]);
    expect(Math.abs(res.residualAfter - energy(D, H, out, K)) / res.residualAfter).toBeLessThan(1e-3);
    // the original adapter is a rank-r candidate: the refit can only be better, and here it is
    expect(res.residualAfter).toBeLessThan(0.95 * res.residualBefore);
  });

  it('keeps the adapter on an unquantized base (W_q = W): s·B′·A′ = s·B·A, zero residuals', async () => {
    const { W, A, B, H } = problem(out, K, r, 2);
    const res = await refitLoraModule(W, W, A, B, s, H, out, K, r);
    const want = product(A, B, s, out, K, r);
    const got = product(res.A, res.B, s, out, K, r);
    expect(relDiff(got, want)).toBeLessThan(1e-5);
    expect(res.residualBefore).toBe(0);
    expect(res.residualAfter).toBeLessThan(1e-9 * energy(want, H, out, K));
  });

  it('with rank ≥ out the adapter absorbs the whole error: s·B′·A′ = W − W_q + s·B·A', async () => {
    const [o2, r2] = [6, 8];
    const { W, Wq, A, B, H } = problem(o2, K, r2, 3);
    const res = await refitLoraModule(W, Wq, A, B, s, H, o2, K, r2);
    const M = product(A, B, s, o2, K, r2);
    for (let i = 0; i < M.length; i++) M[i] += W[i] - Wq[i];
    const got = product(res.A, res.B, s, o2, K, r2);
    for (let i = 0; i < M.length; i++) expect(Math.abs(got[i] - M[i])).toBeLessThan(1e-5);
    expect(res.residualAfter).toBeLessThan(1e-9 * res.residualBefore);
  });
});

describe('refitLoraModule with onnxruntime Gemm (what addLora uses)', () => {
  it('agrees with the float64 loops: float32 products move the update by < 1e-4 relative', async () => {
    const [out, K, r, s] = [48, 64, 4, 2];
    const { W, Wq, A, B, H } = problem(out, K, r, 4);
    const la = new OrtLinalg();
    try {
      const f64 = await refitLoraModule(W, Wq, A, B, s, H, out, K, r);
      const f32 = await refitLoraModule(W, Wq, A, B, s, H, out, K, r, ortMatMul(la));
      expect(relDiff(product(f32.A, f32.B, s, out, K, r), product(f64.A, f64.B, s, out, K, r))).toBeLessThan(1e-4);
      expect(f32.residualBefore / f64.residualBefore).toBeCloseTo(1, 5);
      expect(f32.residualAfter / f64.residualAfter).toBeCloseTo(1, 3);
    } finally {
      await la.dispose();
    }
  });
});

/** Mean KLD of each model's `wiki` adapter from fp32 + adapter on 8 TinyStories windows of 128 (not the C4 calibration text). */
async function kldsFromFp32Adapter(models: Model[]): Promise<number[]> {
  const fp = loadHfModel(STORIES);
  const peft = loadPeftAdapter(ADAPTER, fp.config);
  const tok = new TextTokenizer(fp.tokenizer);
  const windows = slidingWindows(await tok.encode(loadTextFile(TINYSTORIES), true), 128, 8);
  const ref = await SimulatorBackend.load(compile(await addLora(fp, peft, { name: 'wiki', bits: 32, groupSize: 32 }, [], silentContext), { prefillLen: 128 }), { threads: 1 });
  ref.selectAdapter('wiki');
  const out: number[] = [];
  try {
    for (const m of models) {
      const b = await SimulatorBackend.load(compile(m, { prefillLen: 128 }), { threads: 1 });
      b.selectAdapter('wiki');
      out.push((await klDivergence(b, ref, windows)).meanKld);
      await b.dispose();
    }
  } finally {
    await ref.dispose();
  }
  return out;
}

describe('addLora refit on stories260K (W4 RTN g64 base, real adapter)', () => {
  it('is closer to fp32 + adapter than the adapter as trained; fp32 bases and --no-refit keep A/B', async () => {
    const fp = loadHfModel(STORIES);
    const peft = loadPeftAdapter(ADAPTER, fp.config);
    const base = rtn(fp, { groupSize: 64, quantizeLmHead: false }, silentContext);
    const calib = loadTokenWindows(CALIB).slice(0, 32);
    const opts = { name: 'wiki', bits: 8 as const, groupSize: 32 };
    const refit = await addLora(base, peft, opts, calib, silentContext, { optimized: fp });
    const plain = await addLora(base, peft, { ...opts, refit: false }, calib, silentContext, { optimized: fp });
    const info = refit.adapters![0].source.refit!;
    expect(info.modules).toBe(20);
    expect(info.windows).toBe(32);
    expect(info.residualAfter).toBeLessThan(info.residualBefore);
    expect(plain.adapters![0].source.refit).toBeUndefined();
    // the base's weights are the same objects: not copied, not changed
    for (const [n, t] of base.weights) expect(refit.weights.get(n)).toBe(t);
    // no fp32 weights to refit against: the adapter stays as trained
    const noFp = await addLora(base, peft, opts, calib, silentContext, {});
    expect(noFp.adapters![0].source.refit).toBeUndefined();
    for (const [n, t] of plain.adapters![0].tensors) expect(noFp.adapters![0].tensors.get(n)!.load().data).toEqual(t.load().data);
    // an fp32 base has nothing to absorb: nothing is refit
    const onFp = await addLora(fp, peft, opts, calib, silentContext, { optimized: fp });
    expect(onFp.adapters![0].source.refit).toBeUndefined();

    const [kRefit, kPlain] = await kldsFromFp32Adapter([refit, plain]);
    expect(kRefit).toBeLessThan(0.95 * kPlain);
  });

  it('works in the rotated space of fold-norms + QuaRot (with online R3/R4): the refit adapter is closer to fp32 + adapter', async () => {
    const fp = loadHfModel(STORIES);
    const peft = loadPeftAdapter(ADAPTER, fp.config);
    const rotated = quarot(foldNorms(fp, {}, silentContext), { seed: 3, online: { r3: true, r4: true } }, silentContext);
    const base = rtn(rotated, { groupSize: 64, quantizeLmHead: false }, silentContext);
    const calib = loadTokenWindows(CALIB).slice(0, 32);
    const opts = { name: 'wiki', bits: 8 as const, groupSize: 32 };
    const src = { native: fp, optimized: rotated };
    const refit = await addLora(base, peft, opts, calib, silentContext, src);
    const plain = await addLora(base, peft, { ...opts, refit: false }, calib, silentContext, src);
    const info = refit.adapters![0].source.refit!;
    expect(info.residualAfter).toBeLessThan(info.residualBefore);
    const [kRefit, kPlain] = await kldsFromFp32Adapter([refit, plain]);
    // a refit in the wrong (unrotated) space would add error, not remove it; measured 0.215 vs 0.237
    expect(kRefit).toBeLessThan(0.95 * kPlain);
  });
});
