import { describe, it, expect } from 'vitest';
import { hadamard, paleyI, paleyII, goethalsSeidel, sylvester } from '../../passes/hadamard-matrices.js';
import {
  kronSplit,
  fwht,
  hadamardRotation,
  denseRotation,
  rotateVector,
  rotationRng,
  randomOrthogonal,
} from '../../passes/hadamard.js';

/** H·Hᵀ computed here (integers, exact) and compared with n·I. */
function expectHadamard(h: Int8Array, n: number): void {
  expect(h.length).toBe(n * n);
  for (const v of h) expect(v === 1 || v === -1).toBe(true);
  let bad = 0;
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let dot = 0;
      for (let k = 0; k < n; k++) dot += h[i * n + k] * h[j * n + k];
      if (dot !== (i === j ? n : 0)) bad++;
    }
  expect(bad).toBe(0);
}

/** max |R·Rᵀ − I| of a dense [n, n] matrix. */
function orthogonalityError(R: Float64Array, n: number): number {
  let err = 0;
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let dot = 0;
      for (let k = 0; k < n; k++) dot += R[i * n + k] * R[j * n + k];
      err = Math.max(err, Math.abs(dot - (i === j ? 1 : 0)));
    }
  return err;
}

describe('Hadamard constructions', () => {
  it('Sylvester, Paley I, Paley II and Goethals–Seidel satisfy H·Hᵀ = nI exactly', () => {
    expectHadamard(sylvester(64), 64);
    expectHadamard(paleyI(11), 12);
    expectHadamard(paleyI(43), 44);
    expectHadamard(paleyII(13), 28);
    expectHadamard(paleyII(17), 36);
    expectHadamard(goethalsSeidel(13)!, 52);
    expectHadamard(goethalsSeidel(43)!, 172);
  });

  // Every K the design lists, plus the sizes stories260K (64, 172, 8), Qwen2-1.5B (12·128, 140·64, 128)
  // and the tiny Qwen2 fixture (32, 88 = 44·2, 8) need.
  it.each([1, 2, 4, 8, 12, 20, 28, 32, 36, 40, 44, 52, 60, 64, 88, 108, 128, 140, 156, 172])('hadamard(%i) exists and is Hadamard', (n) => {
    const h = hadamard(n);
    expect(h, `no construction for ${n}`).not.toBeNull();
    expectHadamard(h!.data, n);
  });

  it('reports no matrix where the order cannot be Hadamard or no construction reaches it', () => {
    expect(hadamard(6)).toBeNull(); // not 1, 2 or a multiple of 4
    expect(hadamard(86)).toBeNull();
  });

  it('splits the model sizes as n = K·P with the smallest constructible K', () => {
    const split = (n: number) => {
      const s = kronSplit(n);
      return [s.k, s.p, s.hk !== null];
    };
    expect(split(64)).toEqual([1, 64, true]);
    expect(split(8)).toEqual([1, 8, true]);
    expect(split(172)).toEqual([172, 1, true]);
    expect(split(1536)).toEqual([12, 128, true]);
    expect(split(8960)).toEqual([140, 64, true]);
    expect(split(88)).toEqual([44, 2, true]);
    expect(split(86)).toEqual([43, 2, false]); // 43 and 86 have no Hadamard matrix: random fallback
  });
});

describe('fwht', () => {
  it('equals multiplication by the Sylvester matrix (exact on integers)', () => {
    const P = 32;
    const H = sylvester(P);
    const x = Float64Array.from({ length: P }, (_, i) => ((i * 7) % 11) - 5);
    const want = new Float64Array(P);
    for (let d = 0; d < P; d++) for (let b = 0; b < P; b++) want[d] += x[b] * H[b * P + d];
    fwht(x, P);
    expect(Array.from(x)).toEqual(Array.from(want));
  });
});

describe('hadamardRotation', () => {
  // Orthogonality in float64: sums of n products of ±1/√n, error ~n·2^-53 ≈ 1e-14; bound 1e-12.
  it.each([8, 24, 88, 172])('is orthogonal for n = %i (R·Rᵀ = I to 1e-12)', (n) => {
    const R = hadamardRotation(n, rotationRng(1, 'test'), true);
    expect(orthogonalityError(denseRotation(R), n)).toBeLessThan(1e-12);
  });

  it('is (Q_K ⊗ H_P/√P)·diag(s) with Q_K = H_K/√K', () => {
    const n = 24; // K = 12 (Paley I), P = 2
    const R = hadamardRotation(n, rotationRng(5, 'test'), true);
    expect([R.k, R.p]).toEqual([12, 2]);
    const HK = hadamard(12)!.data;
    const HP = sylvester(2);
    const D = denseRotation(R);
    let err = 0;
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        const want = (HK[Math.floor(i / 2) * 12 + Math.floor(j / 2)] * HP[(i % 2) * 2 + (j % 2)] * R.signs![j]) / Math.sqrt(n);
        err = Math.max(err, Math.abs(D[i * n + j] - want));
      }
    expect(err).toBeLessThan(1e-15);
  });

  it('preserves norms at the Qwen2-1.5B intermediate size 8960 = 140·64', () => {
    const rng = rotationRng(2, 'x');
    const x = Float64Array.from({ length: 8960 }, () => rng() - 0.5);
    const norm = (v: Float64Array) => Math.sqrt(v.reduce((s, t) => s + t * t, 0));
    const before = norm(x);
    rotateVector(hadamardRotation(8960, rotationRng(2, 'r'), true), x);
    expect(Math.abs(norm(x) - before) / before).toBeLessThan(1e-13);
  });

  it('falls back to a seeded random orthogonal factor when no Hadamard matrix exists, deterministically', () => {
    const a = hadamardRotation(86, rotationRng(9, 'r4'), false);
    const b = hadamardRotation(86, rotationRng(9, 'r4'), false);
    expect(a.construction).toBe('random-orthogonal');
    expect(Array.from(a.qk)).toEqual(Array.from(b.qk));
    expect(orthogonalityError(denseRotation(a), 86)).toBeLessThan(1e-12);
    expect(orthogonalityError(randomOrthogonal(17, rotationRng(1, 'q')), 17)).toBeLessThan(1e-12);
  });

  it('draws independent, reproducible sign streams per label', () => {
    const s = (seed: number, label: string) => Array.from(hadamardRotation(64, rotationRng(seed, label), true).signs!);
    expect(s(0, 'r1')).toEqual(s(0, 'r1'));
    expect(s(0, 'r1')).not.toEqual(s(1, 'r1'));
    expect(s(0, 'r1')).not.toEqual(s(0, 'r2.0'));
  });
});
