/** Seeded random test data, all from mulberry32 (src/core/rng.ts). */
import { mulberry32 } from '../../src/core/rng.js';

/** `n` standard normal values (Box–Muller, cosine branch) from `seed`. */
export function randn(n: number, seed: number): Float32Array {
  const r = mulberry32(seed);
  return Float32Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r()));
}

/** Deterministic bytes: the low byte of each mulberry32 word. */
export function randomBytes(n: number, seed: number): Uint8Array {
  const r = mulberry32(seed);
  return Uint8Array.from({ length: n }, () => (r() * 2 ** 32) & 0xff);
}

/** A seeded generator of uniform values in [-scale/2, scale/2). */
export function centredUniform(seed: number, scale = 1): () => number {
  const u = mulberry32(seed);
  return () => (u() - 0.5) * scale;
}
