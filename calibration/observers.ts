/**
 * Range observers for static 8-bit asymmetric per-tensor quantization (activations and KV cache).
 * An observer sees every calibration batch of one quantization point and yields its QParams.
 *
 * - minmax: the observed [min, max] (widened to include 0).
 * - percentile: [p-th lowest, p-th highest] percentiles of the observed values (default 99.99 %),
 *   clipping rare outliers (as in TensorRT / ONNX Runtime's percentile calibrators).
 * - mse: the clipping range [α·min, α·max] (α on a grid in [0.2, 1]) minimising the mean squared
 *   error of fake quantization over the observed values (Banner et al. 2019, "Post training 4-bit
 *   quantization of convolutional networks", §3, searched numerically rather than in closed form).
 *
 * percentile and mse work on a seeded uniform reservoir sample (Vitter's algorithm R) of at most
 * `capacity` values per point, so memory stays bounded for any amount of calibration data; the exact
 * min and max are always tracked.
 */
import type { QParams } from '../src/ir/model.js';
import { asymmetricQParams, fakeQuantU8 } from '../src/ir/quant.js';
import { mulberry32 } from '../src/core/rng.js';

export interface Observer {
  /** x: float32 values of one batch of the point (any shape, flattened) */
  observe(x: Float32Array): void;
  qparams(): QParams;
  /** signal-to-quantization-noise ratio (dB) of `p` on the observed values (sampled) */
  sqnrDb(p: QParams): number;
}

/** A bounded uniform sample of a stream (algorithm R) plus exact min/max. */
class Reservoir {
  readonly sample: Float32Array;
  size = 0;
  seen = 0;
  min = Infinity;
  max = -Infinity;
  private readonly rand: () => number;
  constructor(capacity: number, seed: number) {
    this.sample = new Float32Array(capacity);
    this.rand = mulberry32(seed);
  }
  add(x: Float32Array): void {
    const cap = this.sample.length;
    for (let i = 0; i < x.length; i++) {
      const v = x[i];
      if (v < this.min) this.min = v;
      if (v > this.max) this.max = v;
      if (this.size < cap) this.sample[this.size++] = v;
      else {
        const j = Math.floor(this.rand() * (this.seen + 1));
        if (j < cap) this.sample[j] = v;
      }
      this.seen++;
    }
  }
  values(): Float32Array {
    return this.sample.subarray(0, this.size);
  }
}

function sqnr(values: Float32Array, p: QParams): number {
  let sig = 0;
  let noise = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    const e = v - fakeQuantU8(v, p);
    sig += v * v;
    noise += e * e;
  }
  return noise === 0 ? Infinity : 10 * Math.log10(sig / noise);
}

function mse(values: Float32Array, p: QParams): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) {
    const e = values[i] - fakeQuantU8(values[i], p);
    s += e * e;
  }
  return s / Math.max(1, values.length);
}

abstract class SampledObserver implements Observer {
  protected readonly r: Reservoir;
  constructor(capacity = 1 << 18, seed = 0) {
    this.r = new Reservoir(capacity, seed);
  }
  observe(x: Float32Array): void {
    this.r.add(x);
  }
  abstract qparams(): QParams;
  sqnrDb(p: QParams): number {
    return sqnr(this.r.values(), p);
  }
  protected get lo(): number {
    return this.r.min === Infinity ? 0 : this.r.min;
  }
  protected get hi(): number {
    return this.r.max === -Infinity ? 0 : this.r.max;
  }
}

/** Min/max observer. */
export class MinMaxObserver extends SampledObserver {
  qparams(): QParams {
    return asymmetricQParams(this.lo, this.hi);
  }
}

/** Percentile observer: clips to the [100−p, p] percentiles of the sample. */
export class PercentileObserver extends SampledObserver {
  constructor(readonly percentile = 99.99) {
    super();
  }
  qparams(): QParams {
    const v = Float32Array.from(this.r.values()).sort();
    if (v.length === 0) return asymmetricQParams(0, 0);
    const at = (q: number) => v[Math.min(v.length - 1, Math.max(0, Math.round((q / 100) * (v.length - 1))))];
    return asymmetricQParams(at(100 - this.percentile), at(this.percentile));
  }
}

/** MSE observer: the range scale α ∈ [0.2, 1] minimising fake-quantization MSE on the sample. */
export class MseObserver extends SampledObserver {
  qparams(): QParams {
    const all = this.r.values();
    const values = all.subarray(0, Math.min(all.length, 1 << 16)); // the reservoir is already a uniform sample
    let best = asymmetricQParams(this.lo, this.hi);
    let bestErr = mse(values, best);
    for (let a = 0.98; a >= 0.2; a -= 0.02) {
      const p = asymmetricQParams(this.lo * a, this.hi * a);
      const err = mse(values, p);
      if (err < bestErr) {
        bestErr = err;
        best = p;
      }
    }
    return best;
  }
}

export type ObserverKind = 'minmax' | 'percentile' | 'mse';
export const OBSERVER_KINDS: readonly ObserverKind[] = ['minmax', 'percentile', 'mse'];
export const OBSERVERS: Record<ObserverKind, () => Observer> = {
  minmax: () => new MinMaxObserver(),
  percentile: () => new PercentileObserver(),
  mse: () => new MseObserver(),
};
