/**
 * GPTQ for one linear layer (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
 * Generative Pre-trained Transformers", Algorithm 1): quantizes W [N, K] column by column on the
 * b-bit symmetric group-wise grid of src/ir/quant.ts (the RTN grid; b = 4: scale = 2·max|w|/15 per
 * group, zero point 8; b = 8: /255 and 128), and after each column spreads its rounding error over the columns not yet
 * quantized, weighted by the inverse Hessian, so that ‖W·X − Q·X‖² stays small:
 *
 *   U = chol(H⁻¹)ᵀ (upper, H⁻¹ = Uᵀ·U)
 *   for each column i:  q_i = quant(w_i),  e_i = (w_i − q_i) / U[i, i],  w_{i+1:} −= e_i · U[i, i+1:]
 *
 * Details, as in the reference code (IST-DASLab/gptq, `GPTQ.fasterquant`):
 * - Dead inputs (diag H = 0, an input that is always 0 on the calibration data): H[d, d] = 1 and
 *   W[:, d] = 0.
 * - Damping (§4 "Step 3"): H + λ·I with λ = percDamp·mean(diag H). When the Cholesky factorization
 *   still fails (a numerically indefinite H), λ is multiplied by 10 and the factorization retried,
 *   up to {@link MAX_DAMP_RETRIES} times; the λ used and the retries are reported.
 * - Lazy batch updates (§4 "Step 2"): columns are processed in blocks of `blockSize`; inside a
 *   block the updates are applied row by row in TypeScript (O(N·B²) per block), and a block
 *   receives the updates of all earlier blocks at once when it starts, as one ORT Gemm
 *   W[:, i1:i2] −= Err[:, :i1]·U[:i1, i1:i2] (the left-looking form of the reference's
 *   W[:, i2:] −= Err1·U[i1:i2, i2:], same arithmetic, B×N values back from ORT per block).
 * - Groups: with `staticGroups` each group's scale is fixed up front from the (dead-zeroed)
 *   original weights; otherwise a group's scale is computed when the algorithm reaches its first
 *   column, from the weights as updated so far (blocks are then aligned to groups, so a group always
 *   sits inside one block).
 * - `actOrder` (the "act-order" heuristic of the reference code): columns are processed in order of
 *   decreasing diag H. Only with static groups: the scale of a column is still that of its group in
 *   the original column order, so the packed groups stay contiguous blocks of `groupSize` columns,
 *   which is what com.microsoft MatMulNBits decodes (no g_idx).
 */
import { OrtLinalg, inverseCholesky, NotPositiveDefiniteError } from '../src/engine/linalg.js';
import { numGroups, packWeights, quantizeWeight, symmetricScale, weightGrid, type PackedWeights, type WeightBits } from '../src/ir/quant.js';
import { EdgeLLMError, ShapeMismatchError, UsageError } from '../src/core/errors.js';

export interface GptqOptions {
  /** input columns per scale (MatMulNBits block size); even */
  groupSize: number;
  /** lazy-batch block of columns (§4 "Step 2") */
  blockSize: number;
  /** damping λ = percDamp·mean(diag H) */
  percDamp: number;
  /** process columns by decreasing diag H (requires staticGroups) */
  actOrder: boolean;
  /** group scales from the original weights, fixed before any update */
  staticGroups: boolean;
  /** code width, 4 or 8 (absent: 4) */
  bits?: WeightBits;
}

/** Defaults of everything but the group size (the reference code's, except staticGroups). */
export const GPTQ_DEFAULTS = { blockSize: 128, percDamp: 0.01, actOrder: false, staticGroups: true } as const;

/** Damping retries (λ ×10 each) after a failed Cholesky factorization. */
export const MAX_DAMP_RETRIES = 4;

/** Largest matrix factored entirely in float64 TypeScript (larger ones: blocked, ORT float32 Gemms). */
export const CHOLESKY_BASE_SIZE = 256;

export interface GptqResult {
  /** the quantized weights, MatMulNBits layout (identical to quantizeRtn's), with their `bits` */
  packed: PackedWeights;
  /** λ added to diag H (after retries) */
  damp: number;
  /** how many times λ was raised ×10 because the factorization failed */
  retries: number;
  /**
   * Σ e_i² over all columns and rows, which equals tr((W−Q)·H̃·(W−Q)ᵀ) for the damped H̃ that was
   * factored (twice the reference's `Losses` sum)
   */
  error: number;
}

/**
 * Quantizes W with GPTQ against the Hessian H.
 * @param W float32 [N, K] row-major (N = out features, K = in features); not modified
 * @param H float64 [K, K] row-major, symmetric positive semi-definite (e.g. HessianAccumulator.H); not modified
 * @param la ORT Gemm sessions to use (default: a private set, released before returning)
 * @throws ShapeMismatchError for inconsistent sizes; UsageError for bad options (odd group size,
 *   bits other than 4 or 8, actOrder without staticGroups); EdgeLLMError when H stays indefinite after every damping retry
 */
export async function gptq(
  W: Float32Array,
  N: number,
  K: number,
  H: Float64Array,
  options: Partial<GptqOptions> & { groupSize: number },
  la?: OrtLinalg,
): Promise<GptqResult> {
  const o: GptqOptions = { ...GPTQ_DEFAULTS, ...options };
  const G = o.groupSize;
  if (W.length !== N * K) throw new ShapeMismatchError(`gptq: W has ${W.length} elements, shape [${N}, ${K}] needs ${N * K}`);
  if (H.length !== K * K) throw new ShapeMismatchError(`gptq: H has ${H.length} elements, K = ${K} needs [${K}, ${K}]`);
  if (!Number.isInteger(G) || G < 2 || G % 2 !== 0) throw new UsageError(`gptq: group size ${G} must be an even integer ≥ 2`);
  if (o.bits !== undefined && o.bits !== 4 && o.bits !== 8) throw new UsageError(`gptq: bits ${o.bits} must be 4 or 8`);
  if (!Number.isInteger(o.blockSize) || o.blockSize < 1) throw new UsageError(`gptq: block size ${o.blockSize} must be a positive integer`);
  if (!(o.percDamp > 0)) throw new UsageError(`gptq: percDamp ${o.percDamp} must be > 0`);
  if (o.actOrder && !o.staticGroups)
    throw new UsageError('gptq: act-order needs static groups (MatMulNBits decodes contiguous groups; dynamic groups in act order would need a g_idx)');
  const own = !la;
  const ops = la ?? new OrtLinalg();
  try {
    return await solve(W, N, K, H, o, ops);
  } finally {
    if (own) await ops.dispose();
  }
}

async function solve(W: Float32Array, N: number, K: number, H: Float64Array, o: GptqOptions, la: OrtLinalg): Promise<GptqResult> {
  const G = o.groupSize;
  const bits = o.bits ?? 4;
  const zero = weightGrid(bits).zero;
  const nb = numGroups(K, G);
  // Dead inputs: H[d, d] = 1 (below, in the factored matrix) and W[:, d] = 0.
  const dead = new Uint8Array(K);
  let anyDead = false;
  for (let d = 0; d < K; d++)
    if (H[d * K + d] === 0) {
      dead[d] = 1;
      anyDead = true;
    }
  const diag = (i: number) => (dead[i] ? 1 : H[i * K + i]);
  // act-order permutation: perm[j] = original column processed j-th (stable for ties)
  const perm = o.actOrder ? Int32Array.from({ length: K }, (_, i) => i).sort((a, b) => diag(b) - diag(a) || a - b) : null;
  // Wp: the weights in processing order, dead columns zeroed
  let Wp = W;
  if (anyDead || perm) {
    Wp = new Float32Array(N * K);
    for (let n = 0; n < N; n++)
      for (let j = 0; j < K; j++) {
        const c = perm ? perm[j] : j;
        Wp[n * K + j] = dead[c] ? 0 : W[n * K + c];
      }
  }
  const scales = new Float32Array(N * nb);
  if (o.staticGroups)
    for (let n = 0; n < N; n++)
      for (let j = 0; j < K; j++) {
        const c = perm ? perm[j] : j;
        const g = n * nb + Math.floor(c / G);
        scales[g] = Math.max(scales[g], Math.abs(Wp[n * K + j])); // max |w| first, scale below
      }
  if (o.staticGroups) for (let i = 0; i < scales.length; i++) scales[i] = Math.fround(symmetricScale(scales[i], bits));

  const { U, damp, retries } = await dampedInverseFactor(H, K, diag, perm, o.percDamp, la);

  // Blocks: aligned to groups when scales are chosen on the fly, so a group never straddles two.
  const B = o.staticGroups ? o.blockSize : Math.max(1, Math.floor(o.blockSize / G)) * G;
  const errT = new Float32Array(K * N); // Err transposed: errT[j, n] = e of row n, column j (processing order)
  const codes = new Uint8Array(N * K); // original column order
  const w = new Float64Array(B);
  const Ub = new Float64Array(B * B);
  let error = 0;
  for (let i1 = 0; i1 < K; i1 += B) {
    const i2 = Math.min(K, i1 + B);
    const b = i2 - i1;
    // updates from all earlier blocks: corr [b, N] = U[:i1, i1:i2]ᵀ · Err[:, :i1]ᵀ
    let corr: Float32Array | null = null;
    if (i1 > 0) {
      const panelT = new Float32Array(b * i1);
      for (let r = 0; r < i1; r++) for (let j = 0; j < b; j++) panelT[j * i1 + r] = U[r * K + i1 + j];
      corr = await la.gemm({ data: panelT, rows: b, cols: i1 }, { data: errT.subarray(0, i1 * N), rows: i1, cols: N });
    }
    for (let j = 0; j < b; j++) for (let t = j; t < b; t++) Ub[j * b + t] = U[(i1 + j) * K + i1 + t];
    for (let n = 0; n < N; n++) {
      for (let j = 0; j < b; j++) w[j] = Wp[n * K + i1 + j] - (corr ? corr[j * N + n] : 0);
      for (let j = 0; j < b; j++) {
        const col = i1 + j;
        const orig = perm ? perm[col] : col;
        const g = n * nb + Math.floor(orig / G);
        if (!o.staticGroups && col % G === 0) {
          let m = 0;
          for (let t = j; t < Math.min(b, j + G); t++) m = Math.max(m, Math.abs(w[t]));
          scales[g] = Math.fround(symmetricScale(m, bits));
        }
        const s = scales[g];
        const q = quantizeWeight(w[j], s, bits);
        codes[n * K + orig] = q;
        const e = (w[j] - (q - zero) * s) / Ub[j * b + j];
        errT[col * N + n] = e;
        error += e * e;
        for (let t = j + 1; t < b; t++) w[t] -= e * Ub[j * b + t];
      }
    }
  }
  return { packed: { qweight: packWeights(codes, N, K, G, bits), scales, outFeatures: N, inFeatures: K, groupSize: G, bits }, damp, retries, error };
}

/**
 * U = upper Cholesky factor of (P·(H + λI)·Pᵀ)⁻¹ (dead diagonal entries set to 1 first), with the
 * damping retries. Built directly in reversed order for upperCholeskyOfInverse's trick (see
 * src/engine/linalg.ts): M = J·Hp·J, U = J·chol(M)⁻¹·J.
 */
async function dampedInverseFactor(
  H: Float64Array,
  K: number,
  diag: (i: number) => number,
  perm: Int32Array | null,
  percDamp: number,
  la: OrtLinalg,
): Promise<{ U: Float32Array; damp: number; retries: number }> {
  let mean = 0;
  for (let i = 0; i < K; i++) mean += diag(i);
  mean /= K;
  let damp = percDamp * mean;
  for (let retries = 0; ; retries++) {
    const M = K <= CHOLESKY_BASE_SIZE ? new Float64Array(K * K) : new Float32Array(K * K);
    for (let r = 0; r < K; r++) {
      const pr = perm ? perm[K - 1 - r] : K - 1 - r;
      for (let c = 0; c < K; c++) {
        const pc = perm ? perm[K - 1 - c] : K - 1 - c;
        M[r * K + c] = r === c ? diag(pr) + damp : H[pr * K + pc];
      }
    }
    try {
      const U = (await inverseCholesky(M, K, la, CHOLESKY_BASE_SIZE)).reverse();
      return { U, damp, retries };
    } catch (e) {
      if (!(e instanceof NotPositiveDefiniteError)) throw e;
      if (retries >= MAX_DAMP_RETRIES)
        throw new EdgeLLMError(
          `gptq: the Hessian [${K}, ${K}] is not positive definite even with damping ${damp.toExponential(3)} (${MAX_DAMP_RETRIES} retries from ${percDamp}·mean diag); are the calibration activations finite?`,
        );
      damp *= 10;
    }
  }
}

/**
 * Layer-wise errors tr(D·H·Dᵀ) = Σ_x ‖D·x‖²·(scale of H) for several [N, K] matrices D at once
 * (e.g. W − Q_gptq, W − Q_rtn and W itself), with one ORT Gemm.
 * @param H [K, K] row-major (float64 is converted to float32 for the product)
 * @returns one trace per matrix, in float64
 * @throws ShapeMismatchError when a matrix is not N·K long
 */
export async function weightedSquaredErrors(Ds: Float32Array[], N: number, K: number, H: Float64Array | Float32Array, la: OrtLinalg): Promise<number[]> {
  for (const D of Ds) if (D.length !== N * K) throw new ShapeMismatchError(`weightedSquaredErrors: a matrix has ${D.length} elements, [${N}, ${K}] needs ${N * K}`);
  const stack = new Float32Array(Ds.length * N * K);
  Ds.forEach((D, i) => stack.set(D, i * N * K));
  const Hf = H instanceof Float32Array ? H : new Float32Array(H);
  const DH = await la.gemm({ data: stack, rows: Ds.length * N, cols: K }, { data: Hf, rows: K, cols: K });
  return Ds.map((_, i) => {
    let s = 0;
    for (let j = i * N * K; j < (i + 1) * N * K; j++) s += stack[j] * DH[j];
    return s;
  });
}
