/**
 * Range observers for static 8-bit asymmetric per-tensor quantization. An observer sees every
 * calibration batch of one quantization point and yields its QParams.
 *
 * - minmax: the observed [min, max] (widened to include 0).
 */
import type { QParams } from '../src/ir/model.js';
import { asymmetricQParams } from '../src/ir/quant.js';

export interface Observer {
  /** x: float32 values of one batch of the point (any shape, flattened) */
  observe(x: Float32Array): void;
  qparams(): QParams;
}

/** Min/max observer. */
export class MinMaxObserver implements Observer {
  min = Infinity;
  max = -Infinity;
  observe(x: Float32Array): void {
    let lo = this.min;
    let hi = this.max;
    for (let i = 0; i < x.length; i++) {
      const v = x[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    this.min = lo;
    this.max = hi;
  }
  qparams(): QParams {
    return asymmetricQParams(this.min === Infinity ? 0 : this.min, this.max === -Infinity ? 0 : this.max);
  }
}

export type ObserverKind = 'minmax';
export const OBSERVERS: Record<ObserverKind, () => Observer> = { minmax: () => new MinMaxObserver() };
