import { describe, it, expect } from 'vitest';
import { MinMaxObserver, PercentileObserver, MseObserver } from '../../calibration/observers.js';
import { fakeQuantU8 } from '../../src/ir/quant.js';
import { mulberry32 } from '../../src/core/rng.js';
import type { QParams } from '../../src/ir/model.js';

/** Laplace-distributed activations with a few huge outliers (the shape that makes min/max waste range). */
function heavyTailed(n: number, seed: number): Float32Array {
  const r = mulberry32(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = r() - 0.5;
    x[i] = -Math.sign(u) * Math.log(1 - 2 * Math.abs(u));
  }
  x[5] = 60;
  x[9] = -45;
  return x;
}

const mse = (x: Float32Array, p: QParams) => x.reduce((s, v) => s + (v - fakeQuantU8(v, p)) ** 2, 0) / x.length;

describe('range observers', () => {
  const x = heavyTailed(50_000, 1);

  it('minmax covers exactly the observed range across batches', () => {
    const o = new MinMaxObserver();
    o.observe(x.subarray(0, 25_000));
    o.observe(x.subarray(25_000));
    const p = o.qparams();
    expect(fakeQuantU8(60, p)).toBeCloseTo(60, 0);
    expect(fakeQuantU8(-45, p)).toBeCloseTo(-45, 0);
  });

  it('percentile clips the outliers to a much narrower range', () => {
    const o = new PercentileObserver(99.9);
    o.observe(x);
    const p = o.qparams();
    const range = 255 * p.scale;
    expect(range).toBeLessThan(30);
    expect(range).toBeGreaterThan(8); // the 0.1 %..99.9 % quantiles of a unit Laplace are about ±6.2
  });

  it('mse chooses a range with lower quantization MSE than minmax on heavy-tailed data, and a higher SQNR', () => {
    const mm = new MinMaxObserver();
    const ms = new MseObserver();
    mm.observe(x);
    ms.observe(x);
    const pm = mm.qparams();
    const pe = ms.qparams();
    expect(mse(x, pe)).toBeLessThan(mse(x, pm));
    expect(ms.sqnrDb(pe)).toBeGreaterThan(mm.sqnrDb(pm));
  });

  it('SQNR is 10·log10(signal/noise) of the fake-quantized values', () => {
    const o = new MinMaxObserver();
    const small = Float32Array.from([0.1, -0.3, 0.7, 1.3, -2.2]);
    o.observe(small);
    const p = o.qparams();
    let s = 0;
    let n = 0;
    for (const v of small) {
      s += v * v;
      n += (v - fakeQuantU8(v, p)) ** 2;
    }
    expect(o.sqnrDb(p)).toBeCloseTo(10 * Math.log10(s / n), 9);
  });
});
