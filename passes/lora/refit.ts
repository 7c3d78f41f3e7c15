/**
 * Refits a LoRA adapter, at its own rank, to the quantized base it will run on.
 *
 * An adapter is trained on the float base W; on the W4 base W_q its linears compute
 * (W_q + s·B·A)·x instead of (W + s·B·A)·x. What the adapter would have to add is
 *
 *   M = W − W_q + s·B·A                                   [out, in]
 *
 * and the best it can add at rank r, measured on the linear's calibration inputs X (H = X·Xᵀ), is
 *
 *   N = argmin_{rank N ≤ r} ‖(M − N)·X‖²_F = U_r·U_rᵀ·M,   U_r = top-r eigenvectors of M·H·Mᵀ
 *
 * (Eckart–Young in the H-weighted norm: with H = L·Lᵀ, ‖(M−N)·X‖ = ‖(M−N)·L‖, and the best rank-r
 * approximation of M·L is U_r·U_rᵀ·M·L, U_r its top-r left singular vectors.) The refit adapter
 * is B' = U_r, A' = U_rᵀ·M / s, so s·B'·A' = N. On a float base (W_q = W) M = s·B·A has rank r and
 * N = M: the adapter is unchanged in function. The original adapter is one rank-r candidate, so the
 * residual ‖(W_q + N − W − s·B·A)·X‖² never exceeds the unrefit one, ‖(W_q − W)·X‖².
 *
 * This is the low-rank compensation of quantization error of LoftQ (Li et al. 2023, §3: A, B from
 * the SVD of W − Q) and EoRA (Liu et al. 2024: the same in the eigenspace of the input
 * activations), applied without training to a trained adapter: the part of the base's W4 error
 * that lies in the subspace the adapter writes to (or can) is absorbed by the adapter. It costs no
 * rank, no bytes and no run time; the base weights are not touched, and the base without the
 * adapter is unchanged.
 *
 * U_r comes from subspace iteration on G = M·H·Mᵀ (never formed: G·V = (M·H)·(Mᵀ·V)) started from
 * B and a few seeded random columns, then Rayleigh–Ritz (Jacobi on the small projected matrix).
 * The large products go through a {@link MatMul}: float64 loops by default, onnxruntime Gemm
 * (float32) from `addLora`; everything else is float64.
 */
import type { Model, LoraAdapter } from '../../src/ir/model.js';
import { toFloat32 } from '../../src/ir/tensor.js';
import { actPointName, decoderLinear } from '../../src/ir/architectures.js';
import type { RunContext } from '../../src/core/context.js';
import { UnsupportedModelError } from '../../src/core/errors.js';
import { rotationRng } from '../hadamard.js';
import { OrtLinalg, jsMatMul, ortMatMul, matmul64, matmulT64, type MatMul } from '../../src/engine/linalg.js';

import { dequantizedWeight } from '../rtn.js';
import type { TransformedModule } from './transform.js';

export interface RefitResult {
  /** A' float32 [rank, in] */
  A: Float32Array;
  /** B' float32 [out, rank]; s·B'·A' is the refit update */
  B: Float32Array;
  /** ‖(W_q − W)·X‖²: the residual of the original adapter (H-weighted, H's scale) */
  residualBefore: number;
  /** ‖(M − N)·X‖²: the residual after the refit, before A'/B' storage rounding */
  residualAfter: number;
}

/** Extra columns of the iterated subspace beyond the rank (speeds convergence, guards ties). */
const OVERSAMPLE = 8;
const MAX_ITERATIONS = 60;
/** relative change of tr(Vᵀ·G·V) between iterations that ends the subspace iteration */
const CONVERGED = 1e-10;

/** Orthonormalizes the k columns of V [n, k] in place (modified Gram–Schmidt, twice). */
function orthonormalize(V: Float64Array, n: number, k: number): void {
  for (let pass = 0; pass < 2; pass++)
    for (let j = 0; j < k; j++) {
      for (let p = 0; p < j; p++) {
        let d = 0;
        for (let i = 0; i < n; i++) d += V[i * k + j] * V[i * k + p];
        for (let i = 0; i < n; i++) V[i * k + j] -= d * V[i * k + p];
      }
      let norm = 0;
      for (let i = 0; i < n; i++) norm += V[i * k + j] ** 2;
      norm = Math.sqrt(norm);
      // a column in the span of the others (G of low rank): any unit vector orthogonal to them will do
      if (norm < 1e-300) for (let i = 0; i < n; i++) V[i * k + j] = i === j % n ? 1 : 0;
      else for (let i = 0; i < n; i++) V[i * k + j] /= norm;
    }
}

/**
 * Eigen-decomposition of a small symmetric matrix by cyclic Jacobi rotations (float64).
 * @returns eigenvalues in descending order and the eigenvectors as the columns of `vectors` [n, n]
 */
export function symmetricEigen(S: Float64Array, n: number): { values: number[]; vectors: Float64Array } {
  const a = Float64Array.from(S);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    let diag = 0;
    for (let i = 0; i < n; i++) {
      diag += a[i * n + i] ** 2;
      for (let j = i + 1; j < n; j++) off += a[i * n + j] ** 2;
    }
    if (off <= 1e-30 * diag || off === 0) break;
    for (let p = 0; p < n; p++)
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (apq === 0) continue;
        const theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k * n + p];
          const akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p * n + k];
          const aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p];
          const vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
  }
  const order = [...Array(n).keys()].sort((i, j) => a[j * n + j] - a[i * n + i]);
  const vectors = new Float64Array(n * n);
  order.forEach((src, dst) => {
    for (let k = 0; k < n; k++) vectors[k * n + dst] = v[k * n + src];
  });
  return { values: order.map((i) => a[i * n + i]), vectors };
}

/** Σ X ∘ Y (the trace of X·Yᵀ). */
function dot(X: Float64Array, Y: Float64Array): number {
  let e = 0;
  for (let i = 0; i < X.length; i++) e += X[i] * Y[i];
  return e;
}

/**
 * Refits one adapted linear (see the file header).
 * @param W float base weight [out, in]; `Wq` the dequantized W4 weight the base runs, same shape
 * @param A adapter A [rank, in]; `B` [out, rank]; `scaling` s (alpha/r or alpha/√r)
 * @param H input Hessian [in, in] (any positive scale), float64 row-major
 */
export async function refitLoraModule(
  W: Float32Array,
  Wq: Float32Array,
  A: Float32Array,
  B: Float32Array,
  scaling: number,
  H: Float64Array,
  out: number,
  inFeatures: number,
  rank: number,
  mm: MatMul = jsMatMul,
): Promise<RefitResult> {
  const K = inFeatures;
  const E = new Float64Array(out * K);
  const M = new Float64Array(out * K);
  for (let o = 0; o < out; o++)
    for (let k = 0; k < K; k++) {
      let ba = 0;
      for (let j = 0; j < rank; j++) ba += B[o * rank + j] * A[j * K + k];
      E[o * K + k] = W[o * K + k] - Wq[o * K + k];
      M[o * K + k] = E[o * K + k] + scaling * ba;
    }
  const residualBefore = dot(await mm(E, out, K, H, K), E); // tr(E·H·Eᵀ)
  const MH = await mm(M, out, K, H, K);
  const total = dot(MH, M);
  const apply = async (V: Float64Array, k: number) => mm(MH, out, K, await mm(M, out, K, V, k, true), k); // G·V = (M·H)·(Mᵀ·V)

  const k = Math.min(out, rank + OVERSAMPLE);
  const V = new Float64Array(out * k);
  const rng = rotationRng(out * 131 + K, 'lora-refit');
  for (let i = 0; i < out; i++) for (let j = 0; j < k; j++) V[i * k + j] = j < rank ? B[i * rank + j] : rng() - 0.5;
  orthonormalize(V, out, k);
  let last = -1;
  for (let it = 0; it < MAX_ITERATIONS; it++) {
    const GV = await apply(V, k);
    let trace = 0;
    for (let i = 0; i < V.length; i++) trace += V[i] * GV[i];
    V.set(GV);
    orthonormalize(V, out, k);
    if (it >= 2 && Math.abs(trace - last) <= CONVERGED * Math.abs(trace)) break;
    last = trace;
  }
  // Rayleigh–Ritz: T = Vᵀ·G·V, U = V·eigvecs(T)
  const T = matmulT64(V, await apply(V, k), out, k, k);
  for (let i = 0; i < k; i++) for (let j = 0; j < i; j++) T[i * k + j] = T[j * k + i] = 0.5 * (T[i * k + j] + T[j * k + i]);
  const { values, vectors } = symmetricEigen(T, k);
  const U = matmul64(V, vectors, out, k, k);
  const used = Math.min(rank, k);
  let captured = 0;
  for (let j = 0; j < used; j++) captured += Math.max(0, values[j]);

  const Bn = new Float32Array(out * rank);
  const An = new Float32Array(rank * K);
  for (let j = 0; j < used; j++) {
    // a deterministic sign: the largest entry of each vector positive
    let big = 0;
    for (let i = 0; i < out; i++) if (Math.abs(U[i * k + j]) > Math.abs(big)) big = U[i * k + j];
    const sign = big < 0 ? -1 : 1;
    for (let i = 0; i < out; i++) Bn[i * rank + j] = sign * U[i * k + j];
    for (let c = 0; c < K; c++) {
      let acc = 0;
      for (let i = 0; i < out; i++) acc += sign * U[i * k + j] * M[i * K + c];
      An[j * K + c] = acc / scaling;
    }
  }
  return { A: An, B: Bn, residualBefore, residualAfter: Math.max(0, total - captured) };
}

/** What the refit did, kept in the adapter's `source.refit` (H-weighted residuals, summed over modules). */
export type LoraRefitSummary = NonNullable<LoraAdapter['source']['refit']>;

/**
 * Refits every module of `modules` whose base linear is W4-quantized in `model` ({@link refitLoraModule},
 * onnxruntime products); the others are returned as they are.
 * @param fp32 the base's fp32 weights in the same (transformed) space: a HAR's `emulation/optimized`
 * @param hessians input point → H of the adapted linears' inputs (passes/lora/calibrate.ts)
 * @throws UnsupportedModelError when `fp32` lacks an adapted linear's weight
 */
export async function refitToBase(
  model: Model,
  fp32: Model,
  modules: TransformedModule[],
  hessians: Map<string, Float64Array>,
  windows: number,
  ctx: RunContext,
): Promise<{ modules: TransformedModule[]; summary: LoraRefitSummary }> {
  const onQuantized = modules.filter((m) => model.quant.linears[m.linear]);
  const summary: LoraRefitSummary = { modules: onQuantized.length, windows, residualBefore: 0, residualAfter: 0 };
  const la = new OrtLinalg();
  const mm = ortMatMul(la);
  const bar = ctx.progress('lora-refit', onQuantized.length);
  const out: TransformedModule[] = [];
  try {
    for (const m of modules) {
      const spec = model.quant.linears[m.linear] ? decoderLinear(model.config, m.linear) : undefined;
      if (!spec) {
        out.push(m);
        continue;
      }
      const W = fp32.weights.get(`${m.linear}.weight`);
      if (!W) throw new UnsupportedModelError(`add-lora: the HAR's fp32 weights have no '${m.linear}.weight'`);
      const H = hessians.get(actPointName(spec.layer, spec.input))!;
      const r = await refitLoraModule(toFloat32(W.load()), dequantizedWeight(model, spec), m.A, m.B, m.scaling, H, m.outFeatures, m.inFeatures, m.rank, mm);
      summary.residualBefore += r.residualBefore;
      summary.residualAfter += r.residualAfter;
      out.push({ ...m, A: r.A, B: r.B });
      bar.tick();
    }
  } finally {
    bar.done();
    await la.dispose();
  }
  return { modules: out, summary };
}
