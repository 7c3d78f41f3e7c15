/**
 * The structured orthogonal rotations QuaRot (Ashkboos et al. 2024, §4) fuses into weights and runs
 * online, built from the Hadamard matrices of passes/hadamard-matrices.ts.
 *
 * A rotation of size n = K·P (P a power of two) is R = (Q_K ⊗ H_P/√P)·diag(s): Q_K a K×K orthogonal
 * factor (H_K/√K when a Hadamard matrix of order K exists, else a seeded Haar-random orthogonal
 * matrix — the documented fallback), H_P applied by the fast Walsh–Hadamard transform, s optional
 * random signs. x·R costs n·(K + log₂P) instead of n².
 */
import { mulberry32 } from '../src/core/rng.js';
import { EdgeLLMError, ShapeMismatchError } from '../src/core/errors.js';
import { hadamard, type HadamardMatrix } from './hadamard-matrices.js';

/**
 * Splits n = K·P with P the largest power of two such that a Hadamard matrix of order K exists;
 * when none exists for any split, K is n's odd part (an orthogonal K×K factor must then be random).
 */
export function kronSplit(n: number): { k: number; p: number; hk: HadamardMatrix | null } {
  let p = 1;
  while (n % (2 * p) === 0) p *= 2;
  for (; p >= 1; p /= 2) {
    const hk = hadamard(n / p);
    if (hk) return { k: n / p, p, hk };
  }
  let odd = n;
  while (odd % 2 === 0) odd /= 2;
  return { k: odd, p: n / odd, hk: null };
}

/** In-place unnormalised fast Walsh–Hadamard transform x ← x·H_P of x[off + i·stride], i < P. */
export function fwht(x: Float64Array, P: number, off = 0, stride = 1): void {
  for (let h = 1; h < P; h *= 2)
    for (let i = 0; i < P; i += 2 * h)
      for (let j = i; j < i + h; j++) {
        const a = x[off + j * stride];
        const b = x[off + (j + h) * stride];
        x[off + j * stride] = a + b;
        x[off + (j + h) * stride] = a - b;
      }
}

/** A structured orthogonal rotation R = (Q_K ⊗ H_P/√P)·diag(signs) of size n = K·P. */
export interface KronRotation {
  n: number;
  k: number;
  p: number;
  /** Q_K: orthogonal, Float64Array [k, k] row-major */
  qk: Float64Array;
  /** random ±1 of length n, or null for none */
  signs: Float64Array | null;
  /** how Q_K was made: a Hadamard construction ('sylvester' for K = 1) or 'random-orthogonal' */
  construction: string;
}

/**
 * A Haar-random orthogonal matrix [n, n] (Float64Array): QR (modified Gram–Schmidt) of a standard
 * Gaussian matrix drawn from `rng`, columns sign-fixed by diag(R) (Mezzadri 2007).
 */
export function randomOrthogonal(n: number, rng: () => number): Float64Array {
  const g = new Float64Array(n * n);
  for (let i = 0; i < n * n; i++) g[i] = Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
  // orthonormalise rows (rows of g are the vectors); sign fix keeps the distribution Haar
  for (let i = 0; i < n; i++) {
    const vi = g.subarray(i * n, (i + 1) * n);
    for (let j = 0; j < i; j++) {
      const vj = g.subarray(j * n, (j + 1) * n);
      let dot = 0;
      for (let k = 0; k < n; k++) dot += vi[k] * vj[k];
      for (let k = 0; k < n; k++) vi[k] -= dot * vj[k];
    }
    let norm = 0;
    for (let k = 0; k < n; k++) norm += vi[k] * vi[k];
    norm = Math.sqrt(norm);
    if (norm === 0) throw new EdgeLLMError('randomOrthogonal: degenerate draw');
    for (let k = 0; k < n; k++) vi[k] /= norm;
  }
  return g;
}

/**
 * The rotation of size n used by QuaRot: Q_K = H_K/√K (or a seeded random orthogonal factor when no
 * Hadamard matrix of order K is constructible), times random signs when `withSigns`.
 * @param rng seeded uniform [0, 1) source (signs, and the fallback factor)
 */
export function hadamardRotation(n: number, rng: () => number, withSigns: boolean): KronRotation {
  const { k, p, hk } = kronSplit(n);
  let qk: Float64Array;
  let construction: string;
  if (hk) {
    qk = new Float64Array(k * k);
    const s = 1 / Math.sqrt(k);
    for (let i = 0; i < k * k; i++) qk[i] = hk.data[i] * s;
    construction = hk.construction;
  } else {
    qk = randomOrthogonal(k, rng);
    construction = 'random-orthogonal';
  }
  const signs = withSigns ? Float64Array.from({ length: n }, () => (rng() < 0.5 ? -1 : 1)) : null;
  return { n, k, p, qk, signs, construction };
}

/** Per rotation: Qᵀ/√P, row-major [K, K] (the block-mixing matrix with the FWHT's normalisation folded in). */
const mixing = new WeakMap<KronRotation, Float64Array>();

function mixingOf(R: KronRotation): Float64Array {
  let qt = mixing.get(R);
  if (!qt) {
    const { k, p, qk } = R;
    const s = 1 / Math.sqrt(p);
    qt = new Float64Array(k * k);
    for (let a = 0; a < k; a++) for (let c = 0; c < k; c++) qt[c * k + a] = qk[a * k + c] * s;
    mixing.set(R, qt);
  }
  return qt;
}

/**
 * In-place x ← x·R for a row vector x (length R.n, contiguous). `tmp` is scratch of length n.
 * Viewing x as [K, P]: (x·(Q ⊗ H_P/√P))[c, d] = Σ_a Q[a, c]/√P · (x[a, :]·H_P)[d], i.e. an
 * unnormalised FWHT per block, then the K-block mixing (register-blocked over 4 columns of d: about
 * 1.5 ms per 8960-wide row, 3× the plain loop), then the signs.
 */
export function rotateVector(R: KronRotation, x: Float64Array, tmp = new Float64Array(R.n)): void {
  const { n, k, p, signs } = R;
  if (x.length !== n) throw new ShapeMismatchError(`rotateVector: vector of ${x.length} elements, rotation of size ${n}`);
  if (p > 1) for (let a = 0; a < k; a++) fwht(x, p, a * p);
  if (k > 1) {
    const qt = mixingOf(R); // qt[c·K + a] = Q[a, c]/√P
    for (let c = 0; c < k; c++) {
      const qo = c * k;
      let d = 0;
      for (; d + 4 <= p; d += 4) {
        let s0 = 0;
        let s1 = 0;
        let s2 = 0;
        let s3 = 0;
        for (let a = 0; a < k; a++) {
          const q = qt[qo + a];
          const b = a * p + d;
          s0 += q * x[b];
          s1 += q * x[b + 1];
          s2 += q * x[b + 2];
          s3 += q * x[b + 3];
        }
        const o = c * p + d;
        tmp[o] = s0;
        tmp[o + 1] = s1;
        tmp[o + 2] = s2;
        tmp[o + 3] = s3;
      }
      for (; d < p; d++) {
        let acc = 0;
        for (let a = 0; a < k; a++) acc += qt[qo + a] * x[a * p + d];
        tmp[c * p + d] = acc;
      }
    }
    x.set(tmp);
  } else if (p > 1) {
    const s = 1 / Math.sqrt(p);
    for (let i = 0; i < n; i++) x[i] *= s;
  }
  if (signs) for (let i = 0; i < n; i++) x[i] *= signs[i];
}

/** R as a dense Float64Array [n, n] (row i = e_i·R). */
export function denseRotation(R: KronRotation): Float64Array {
  const out = new Float64Array(R.n * R.n);
  const tmp = new Float64Array(R.n);
  for (let i = 0; i < R.n; i++) {
    const row = out.subarray(i * R.n, (i + 1) * R.n);
    row[i] = 1;
    rotateVector(R, row, tmp);
  }
  return out;
}

/**
 * A seeded uniform [0, 1) stream for `label` (e.g. 'r1', 'r2.3'), independent of other labels, so
 * each rotation can be rebuilt alone from the recorded seed.
 */
export function rotationRng(seed: number, label: string): () => number {
  let h = 0x811c9dc5; // FNV-1a over "seed:label"
  for (const ch of `${seed}:${label}`) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193) >>> 0;
  return mulberry32(h);
}
