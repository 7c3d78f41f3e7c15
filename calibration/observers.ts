/**
 * Range observers for static asymmetric per-tensor quantization (activations and KV cache) on the
 * unsigned 8-bit grid (uint8, the default) or the 16-bit one (uint16, 16-bit activation points of a
 * recipe). An observer sees every calibration batch of one quantization point and yields its
 * QParams for its grid (src/ir/quant.ts asymmetricQParams: scale = range/(2^bits − 1)); its
 * fake quantization is src/ir/quant.ts quantizeLinear at that width.
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
import { asymmetricQParams, fakeQuantLinear, type QdqBits, type QdqParams } from '../src/ir/quant.js';
import { mulberry32 } from '../src/core/rng.js';

export interface Observer {
  /** x: float32 values of one batch of the point (any shape, flattened) */
  observe(x: Float32Array): void;
  /** the range's parameters on the observer's grid (16 bits: with `bits: 16`) */
  qparams(): QdqParams;
  /** signal-to-quantization-noise ratio (dB) of `p` on the observed values (sampled), on the observer's grid */
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

function sqnr(values: Float32Array, p: QParams, bits: QdqBits): number {
  let sig = 0;
  let noise = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    const e = v - fakeQuantLinear(v, p, bits);
    sig += v * v;
    noise += e * e;
  }
  return noise === 0 ? Infinity : 10 * Math.log10(sig / noise);
}

function mse(values: Float32Array, p: QParams, bits: QdqBits): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) {
    const e = values[i] - fakeQuantLinear(values[i], p, bits);
    s += e * e;
  }
  return s / Math.max(1, values.length);
}

/**
 * Squared fake-quantization error of a stream of `seen` values estimated from a uniform `sample` of it
 * plus its exact `extremes`: Σ_sample e²·(seen / |sample|) + Σ_extremes e², over `seen` (each sample
 * value stands for seen/|sample| values of the stream, each extreme for itself).
 */
function tailAwareMse(sample: Float32Array, seen: number, extremes: readonly number[], p: QParams, bits: QdqBits): number {
  let s = mse(sample, p, bits) * seen;
  for (const x of extremes) s += (x - fakeQuantLinear(x, p, bits)) ** 2;
  return s / Math.max(1, seen);
}

abstract class SampledObserver implements Observer {
  protected readonly r: Reservoir;
  /**
   * @param bits the grid: 8 (uint8, default) or 16 (uint16)
   * @param capacity reservoir size (values kept per point)
   */
  constructor(
    readonly bits: QdqBits = 8,
    capacity = 1 << 18,
    seed = 0,
  ) {
    this.r = new Reservoir(capacity, seed);
  }
  observe(x: Float32Array): void {
    this.r.add(x);
  }
  abstract qparams(): QdqParams;
  sqnrDb(p: QParams): number {
    return sqnr(this.r.values(), p, this.bits);
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
  qparams(): QdqParams {
    return asymmetricQParams(this.lo, this.hi, this.bits);
  }
}

/** Percentile observer: clips to the [100−p, p] percentiles of the sample. */
export class PercentileObserver extends SampledObserver {
  constructor(
    readonly percentile = 99.99,
    bits: QdqBits = 8,
  ) {
    super(bits);
  }
  qparams(): QdqParams {
    const v = Float32Array.from(this.r.values()).sort();
    if (v.length === 0) return asymmetricQParams(0, 0, this.bits);
    const at = (q: number) => v[Math.min(v.length - 1, Math.max(0, Math.round((q / 100) * (v.length - 1))))];
    return asymmetricQParams(at(100 - this.percentile), at(this.percentile), this.bits);
  }
}

/**
 * MSE observer: the range scale α ∈ [0.2, 1] minimising fake-quantization MSE on the sample. At 16
 * bits the exact extremes count too, each as the one value it is against the sample's share of the
 * stream ({@link tailAwareMse}): the rounding noise is then ~65,000× (48 dB) smaller than at 8 bits
 * and clipping decides, and a 65,536-value sample misses the rare extremes a clip cuts (stories260K's
 * down_proj inputs: the sample alone clips the range to 2/3 and loses 39 dB of SQNR on the stream).
 */
export class MseObserver extends SampledObserver {
  qparams(): QdqParams {
    const all = this.r.values();
    const values = all.subarray(0, Math.min(all.length, 1 << 16)); // the reservoir is already a uniform sample
    const error = (p: QParams) => (this.bits === 8 ? mse(values, p, 8) : tailAwareMse(values, this.r.seen, [this.lo, this.hi], p, this.bits));
    let best = asymmetricQParams(this.lo, this.hi, this.bits);
    let bestErr = error(best);
    for (let a = 0.98; a >= 0.2; a -= 0.02) {
      const p = asymmetricQParams(this.lo * a, this.hi * a, this.bits);
      const err = error(p);
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
/** A new observer of each kind, on the `bits`-bit grid (default 8). */
export const OBSERVERS: Record<ObserverKind, (bits?: QdqBits) => Observer> = {
  minmax: (bits = 8) => new MinMaxObserver(bits),
  percentile: (bits = 8) => new PercentileObserver(undefined, bits),
  mse: (bits = 8) => new MseObserver(bits),
};
