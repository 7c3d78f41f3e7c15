/**
 * The dense linear algebra GPTQ needs (Frantar et al. 2022, §4 "Step 3: Cholesky reformulation"),
 * with the O(n³) work in onnxruntime-node Gemm calls and only small diagonal blocks in TypeScript:
 *
 * - {@link OrtLinalg}: cached Gemm sessions, Y = α·op(A)·op(B) + β·C on float32 row-major matrices.
 * - {@link inverseCholesky}: L⁻¹ for the lower Cholesky factor L of an SPD matrix A = L·Lᵀ, by
 *   recursive 2×2 blocking:
 *
 *       L11 = chol(A11),  L21 = A21·L11⁻ᵀ,  L22 = chol(A22 − L21·L21ᵀ),
 *       L⁻¹ = [[L11⁻¹, 0], [−L22⁻¹·L21·L11⁻¹, L22⁻¹]]
 *
 *   Blocks of at most `baseSize` are factored and inverted in float64 TypeScript; the products
 *   above are float32 ORT Gemms (the reference code factors in float32 on the GPU).
 * - {@link upperCholeskyOfInverse}: the upper factor U of H⁻¹ = Uᵀ·U that GPTQ's column loop reads
 *   (the reference's `cholesky(cholesky_inverse(cholesky(H)), upper=True)`), with one factorization
 *   instead of three: with J the reversal permutation, J·H·J = L̃·L̃ᵀ gives H = V·Vᵀ for the upper
 *   V = J·L̃·J, so H⁻¹ = V⁻ᵀ·V⁻¹ and U = V⁻¹ = J·L̃⁻¹·J. Reversing both indices of a row-major
 *   n×n matrix is reversing its flat array.
 * - {@link MatMul}: the float64 products of the LoRA refit (passes/lora/refit.ts), as TypeScript
 *   loops ({@link jsMatMul}) or onnxruntime Gemm in float32 ({@link ortMatMul}).
 */
import * as ort from 'onnxruntime-node';
import { GraphBuilder } from '../../formats/onnx.js';
import { CheckedSession } from './session.js';
import { EdgeLLMError, ShapeMismatchError } from '../core/errors.js';

/** A row-major float32 matrix. */
export interface Mat {
  data: Float32Array;
  rows: number;
  cols: number;
}

export interface GemmOptions {
  transA?: boolean;
  transB?: boolean;
  /** default 1 */
  alpha?: number;
  /** added as β·C (C: [M, N]) */
  c?: Mat;
  /** default 1 (only with c) */
  beta?: number;
}

/**
 * Gemm sessions over one tiny graph per (transA, transB, α, β, has C) signature, built on first use
 * and kept until {@link dispose}. Inputs are passed to ORT without copies (subarrays are fine).
 */
export class OrtLinalg {
  private readonly sessions = new Map<string, Promise<CheckedSession>>();

  /** Y = α·op(A)·op(B) (+ β·C), float32 [M, N]. @throws ShapeMismatchError when the inner dims differ */
  async gemm(a: Mat, b: Mat, opts: GemmOptions = {}): Promise<Float32Array> {
    const tA = opts.transA ?? false;
    const tB = opts.transB ?? false;
    const [M, Ka] = tA ? [a.cols, a.rows] : [a.rows, a.cols];
    const [Kb, N] = tB ? [b.cols, b.rows] : [b.rows, b.cols];
    if (Ka !== Kb) throw new ShapeMismatchError(`OrtLinalg.gemm: op(A) is [${M}, ${Ka}] and op(B) is [${Kb}, ${N}]; the inner dims must match`);
    if (opts.c && (opts.c.rows !== M || opts.c.cols !== N))
      throw new ShapeMismatchError(`OrtLinalg.gemm: C is [${opts.c.rows}, ${opts.c.cols}], the product is [${M}, ${N}]`);
    if (M === 0 || N === 0) return new Float32Array(M * N);
    if (Ka === 0) {
      const y = new Float32Array(M * N);
      if (opts.c) for (let i = 0; i < y.length; i++) y[i] = (opts.beta ?? 1) * opts.c.data[i];
      return y;
    }
    const alpha = opts.alpha ?? 1;
    const beta = opts.c ? (opts.beta ?? 1) : 0;
    const key = `${+tA}${+tB}|${alpha}|${beta}|${opts.c ? 1 : 0}`;
    let s = this.sessions.get(key);
    if (!s) {
      s = CheckedSession.create(gemmGraph(tA, tB, alpha, beta, !!opts.c), `gptq gemm ${key}`);
      this.sessions.set(key, s);
    }
    const t = (m: Mat) => new ort.Tensor('float32', m.data.length === m.rows * m.cols ? m.data : m.data.subarray(0, m.rows * m.cols), [m.rows, m.cols]);
    const feeds: Record<string, ort.Tensor> = { A: t(a), B: t(b) };
    if (opts.c) feeds.C = t(opts.c);
    const res = await (await s).run(feeds);
    return res.Y.data as Float32Array;
  }

  /** Releases every session. */
  async dispose(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    for (const s of all) await (await s).release();
  }
}

function gemmGraph(tA: boolean, tB: boolean, alpha: number, beta: number, withC: boolean): Uint8Array {
  const g = new GraphBuilder('gptq_gemm');
  const ins = [g.input('A', 'float32', ['a0', 'a1']), g.input('B', 'float32', ['b0', 'b1'])];
  if (withC) ins.push(g.input('C', 'float32', ['M', 'N']));
  g.node('Gemm', ins, {
    name: '/gptq/Gemm',
    attrs: { transA: +tA, transB: +tB, alpha: { float: alpha }, beta: { float: beta } },
    outputNames: ['Y'],
  });
  g.output('Y', 'float32', ['M', 'N']);
  return g.encode(true);
}

/** Cholesky failed: the matrix is not (numerically) positive definite. */
export class NotPositiveDefiniteError extends EdgeLLMError {}

/** Float64 matrices are read at full precision; everything else is float32. */
type Dense = Float64Array | Float32Array;

/** Copies the block [r0, r0+rows) × [c0, c0+cols) of a row-major n-column matrix into a new Float32Array. */
function block(src: Dense, n: number, r0: number, c0: number, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const o = (r0 + r) * n + c0;
    for (let c = 0; c < cols; c++) out[r * cols + c] = src[o + c];
  }
  return out;
}

/** Writes a rows×cols block into a row-major n-column matrix at (r0, c0). */
function putBlock(dst: Float32Array, n: number, r0: number, c0: number, src: Dense, rows: number, cols: number): void {
  for (let r = 0; r < rows; r++) dst.set(src.subarray(r * cols, (r + 1) * cols), (r0 + r) * n + c0);
}

/**
 * Dense float64 Cholesky A = L·Lᵀ and L⁻¹ of an m×m block (row-major), in TypeScript.
 * @throws NotPositiveDefiniteError when a pivot is ≤ 0 or not finite
 */
function smallCholeskyInverse(A: Dense, m: number): { L: Float64Array; Linv: Float64Array } {
  const L = new Float64Array(m * m);
  for (let j = 0; j < m; j++) {
    let d = A[j * m + j];
    for (let k = 0; k < j; k++) d -= L[j * m + k] * L[j * m + k];
    if (!(d > 0) || !Number.isFinite(d)) throw new NotPositiveDefiniteError(`Cholesky: pivot ${j} of a ${m}×${m} block is ${d}`);
    const ljj = Math.sqrt(d);
    L[j * m + j] = ljj;
    for (let i = j + 1; i < m; i++) {
      let s = A[i * m + j];
      for (let k = 0; k < j; k++) s -= L[i * m + k] * L[j * m + k];
      L[i * m + j] = s / ljj;
    }
  }
  // L⁻¹ column by column (forward substitution of L·x = e_j); lower triangular.
  const Linv = new Float64Array(m * m);
  for (let j = 0; j < m; j++) {
    Linv[j * m + j] = 1 / L[j * m + j];
    for (let i = j + 1; i < m; i++) {
      let s = 0;
      for (let k = j; k < i; k++) s -= L[i * m + k] * Linv[k * m + j];
      Linv[i * m + j] = s / L[i * m + i];
    }
  }
  return { L, Linv };
}

/**
 * L⁻¹ for the lower Cholesky factor L of the symmetric positive definite A = L·Lᵀ (n×n,
 * row-major, both triangles stored), as a float32 n×n row-major array (upper triangle zero).
 * L itself is only held a block at a time.
 * @param baseSize largest block factored in float64 TypeScript (a matrix no larger is done
 *   entirely in float64)
 * @throws NotPositiveDefiniteError when a pivot is ≤ 0 (A not numerically positive definite)
 */
export async function inverseCholesky(A: Dense, n: number, la: OrtLinalg, baseSize = 256): Promise<Float32Array> {
  if (A.length !== n * n) throw new ShapeMismatchError(`inverseCholesky: A has ${A.length} elements, expected ${n}×${n}`);
  const Linv = new Float32Array(n * n);

  async function rec(S: Dense, m: number, off: number): Promise<void> {
    if (m <= baseSize) {
      putBlock(Linv, n, off, off, smallCholeskyInverse(S, m).Linv, m, m);
      return;
    }
    // Split at a multiple of 64 near the middle: both halves stay large enough for efficient Gemms.
    const m1 = Math.max(64, Math.round(m / 2 / 64) * 64);
    const m2 = m - m1;
    const A21 = { data: block(S, m, m1, 0, m2, m1), rows: m2, cols: m1 };
    const A22 = { data: block(S, m, m1, m1, m2, m2), rows: m2, cols: m2 };
    await rec(block(S, m, 0, 0, m1, m1), m1, off);
    const Linv11 = { data: block(Linv, n, off, off, m1, m1), rows: m1, cols: m1 };
    const L21 = { data: await la.gemm(A21, Linv11, { transB: true }), rows: m2, cols: m1 }; // A21·L11⁻ᵀ
    const schur = await la.gemm(L21, L21, { transB: true, alpha: -1, c: A22, beta: 1 }); // A22 − L21·L21ᵀ
    await rec(schur, m2, off + m1);
    const T = { data: await la.gemm(L21, Linv11), rows: m2, cols: m1 }; // L21·L11⁻¹
    const Linv22 = { data: block(Linv, n, off + m1, off + m1, m2, m2), rows: m2, cols: m2 };
    putBlock(Linv, n, off + m1, off, await la.gemm(Linv22, T, { alpha: -1 }), m2, m1); // −L22⁻¹·L21·L11⁻¹
  }

  await rec(A, n, 0);
  return Linv;
}

/**
 * The upper Cholesky factor U of H⁻¹ (H⁻¹ = Uᵀ·U), float32 n×n row-major, lower triangle zero.
 * @param H symmetric positive definite, n×n row-major (both triangles); not modified
 * @throws NotPositiveDefiniteError when H is not numerically positive definite
 */
export async function upperCholeskyOfInverse(H: Dense, n: number, la: OrtLinalg, baseSize = 256): Promise<Float32Array> {
  // J·H·J; float64 only when the whole factorization runs in float64 TypeScript (n ≤ baseSize)
  const rev = n <= baseSize ? new Float64Array(H).reverse() : new Float32Array(H).reverse();
  return (await inverseCholesky(rev, n, la, baseSize)).reverse(); // J·L̃⁻¹·J
}

/** Y [rows, k] = X [rows, n] · Z [n, k] (all row-major float64). */
export function matmul64(X: Float64Array, Z: Float64Array, rows: number, n: number, k: number): Float64Array {
  const Y = new Float64Array(rows * k);
  for (let i = 0; i < rows; i++)
    for (let t = 0; t < n; t++) {
      const x = X[i * n + t];
      if (x === 0) continue;
      for (let j = 0; j < k; j++) Y[i * k + j] += x * Z[t * k + j];
    }
  return Y;
}

/** Y [n, k] = Xᵀ · V for X [rows, n], V [rows, k]. */
export function matmulT64(X: Float64Array, V: Float64Array, rows: number, n: number, k: number): Float64Array {
  const Y = new Float64Array(n * k);
  for (let i = 0; i < rows; i++)
    for (let t = 0; t < n; t++) {
      const x = X[i * n + t];
      for (let j = 0; j < k; j++) Y[t * k + j] += x * V[i * k + j];
    }
  return Y;
}

/**
 * C = op(A)·B for row-major float64 matrices: A [aRows, aCols] (op(A) = Aᵀ with `transA`),
 * B [rows of op(A)'s columns, bCols].
 */
export type MatMul = (a: Float64Array, aRows: number, aCols: number, b: Float64Array, bCols: number, transA?: boolean) => Promise<Float64Array>;

/** float64 TypeScript loops: exact enough for tests and small models. */
export const jsMatMul: MatMul = async (a, aRows, aCols, b, bCols, transA = false) =>
  transA ? matmulT64(a, b, aRows, aCols, bCols) : matmul64(a, b, aRows, aCols, bCols);

/**
 * onnxruntime Gemm in float32 (the products of a 1536-wide linear are GFLOPs; the eigenvector
 * iteration and the final A'/B' stay float64 around them).
 */
export function ortMatMul(la: OrtLinalg): MatMul {
  return async (a, aRows, aCols, b, bCols, transA = false) => {
    const bRows = transA ? aRows : aCols;
    const y = await la.gemm({ data: Float32Array.from(a), rows: aRows, cols: aCols }, { data: Float32Array.from(b), rows: bRows, cols: bCols }, { transA });
    return Float64Array.from(y);
  };
}
