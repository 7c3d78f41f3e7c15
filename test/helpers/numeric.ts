/** Distances between arrays of numbers, as the tests' tolerances are stated. */
import { expect } from 'vitest';

/** max |a[i] − b[i]| over the indices of `a`; the lengths are not checked. */
export function maxAbsDiffUnchecked(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** max |a − b| over all elements; expects equal lengths. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  return maxAbsDiffUnchecked(a, b);
}

/** max |a[i] − b[i]| / max |b[i]| (‖a − b‖∞ / ‖b‖∞) over the indices of `b`; the lengths are not checked. */
export function relMaxDiffUnchecked(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}

/** ‖a − b‖∞ / ‖b‖∞; expects equal lengths. */
export function relMaxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  return relMaxDiffUnchecked(a, b);
}
