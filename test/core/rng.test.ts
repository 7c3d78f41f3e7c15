import { describe, expect, it } from 'vitest';
import { mulberry32 } from '../../src/core/rng.js';

describe('mulberry32', () => {
  it('matches the reference mulberry32 stream for seed 0 and stays in [0, 1)', () => {
    // reference: the widely copied JS one-liner (a += 0x6D2B79F5; t = Math.imul(t ^ t >>> 15, t | 1); ...)
    const ref = (a: number) => () => {
      let t = (a += 0x6d2b79f5);
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    for (const seed of [0, 1, 42, 0xffffffff]) {
      const a = mulberry32(seed);
      const b = ref(seed);
      for (let i = 0; i < 1000; i++) {
        const x = a();
        expect(x).toBe(b());
        expect(x).toBeGreaterThanOrEqual(0);
        expect(x).toBeLessThan(1);
      }
    }
  });

  it('returns u / 2³² exactly, so the 32-bit words and (u + 0.5) / 2³² can be recovered', () => {
    const r = mulberry32(7);
    for (let i = 0; i < 1000; i++) {
      const x = r();
      const u = x * 2 ** 32;
      expect(Number.isInteger(u) && u >= 0 && u < 2 ** 32).toBe(true);
      expect(x + 2 ** -33).toBe((u + 0.5) / 4294967296);
    }
  });
});
