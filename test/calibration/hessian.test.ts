import { describe, it, expect } from 'vitest';
import { HessianAccumulator } from '../../calibration/hessian.js';
import { mulberry32 } from '../../src/core/rng.js';
import { ShapeMismatchError } from '../../src/core/errors.js';

/** rows × K integers in [−3, 3] */
function intBatch(rows: number, K: number, rng: () => number): Float32Array {
  return Float32Array.from({ length: rows * K }, () => Math.floor(rng() * 7) - 3);
}

describe('HessianAccumulator', () => {
  // Integer inputs in [−3, 3] over ≤ 91 rows: every product and partial sum of XᵀX is an integer
  // below 2^24, so onnxruntime's float32 product is exact and the 1e-9 bound checks the running-mean
  // update itself (the rescales n/(n+m) are the only rounding, ~1e-16 each).
  for (const [K, panelSize, label] of [
    [40, 1024, 'one full XᵀX'],
    [300, 64, 'upper-triangle row panels, ragged last panel'],
  ] as const)
    it(`equals 2/n·Σ x·xᵀ computed in plain float64 (${label}, 1e-9 relative)`, async () => {
      const rng = mulberry32(K);
      const acc = new HessianAccumulator(K, { panelSize });
      const sum = new Float64Array(K * K);
      let n = 0;
      for (const rows of [7, 50, 1, 33]) {
        const x = intBatch(rows, K, rng);
        await acc.addBatch(x);
        for (let r = 0; r < rows; r++)
          for (let i = 0; i < K; i++) for (let j = 0; j < K; j++) sum[i * K + j] += x[r * K + i] * x[r * K + j];
        n += rows;
      }
      expect(acc.nsamples).toBe(n);
      const H = acc.H;
      let maxErr = 0;
      let maxRef = 0;
      for (let i = 0; i < K * K; i++) {
        const ref = (2 / n) * sum[i];
        maxErr = Math.max(maxErr, Math.abs(H[i] - ref));
        maxRef = Math.max(maxRef, Math.abs(ref));
      }
      expect(maxErr / maxRef).toBeLessThan(1e-9);
      for (let i = 0; i < K; i++) for (let j = 0; j < i; j++) expect(H[i * K + j]).toBe(H[j * K + i]);
      await acc.dispose();
    });

  it('keeps accumulating after H was read', async () => {
    const K = 8;
    const acc = new HessianAccumulator(K);
    const ones = new Float32Array(2 * K).fill(1);
    await acc.addBatch(ones);
    expect(acc.H[K + 3]).toBe(2); // 2/2 · (1 + 1)
    await acc.addBatch(new Float32Array(2 * K)); // two rows of zeros halve the mean
    expect(acc.H[K + 3]).toBe(1);
    expect(acc.H[3 * K + 1]).toBe(1);
    await acc.dispose();
  });

  it('rejects a batch that is not [rows, K]', async () => {
    const acc = new HessianAccumulator(5);
    await expect(acc.addBatch(new Float32Array(12))).rejects.toThrow(ShapeMismatchError);
    expect(() => new HessianAccumulator(0)).toThrow(ShapeMismatchError);
  });
});
