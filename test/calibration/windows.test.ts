import { describe, expect, it } from 'vitest';
import { sampleWindows, slidingWindows } from '../../calibration/windows.js';
import { UsageError } from '../../src/core/errors.js';

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

describe('sampleWindows', () => {
  const tokens = range(1000);

  it('is deterministic for a seed and differs across seeds', () => {
    expect(sampleWindows(tokens, 16, 64, 7)).toEqual(sampleWindows(tokens, 16, 64, 7));
    expect(sampleWindows(tokens, 16, 64, 7)).not.toEqual(sampleWindows(tokens, 16, 64, 8));
  });

  it('returns n contiguous windows of seqLen inside the text', () => {
    const w = sampleWindows(tokens, 200, 100, 3);
    expect(w.length).toBe(200);
    for (const win of w) {
      expect(win.length).toBe(100);
      expect(win[0]).toBeGreaterThanOrEqual(0);
      expect(win[99]).toBeLessThan(1000);
      for (let i = 1; i < win.length; i++) expect(win[i]).toBe(win[i - 1] + 1);
    }
  });

  it('reaches every start offset, including the last one', () => {
    const seen = new Set(sampleWindows(range(10), 500, 8, 1).map((w) => w[0]));
    expect([...seen].sort()).toEqual([0, 1, 2]);
  });

  it('accepts a text exactly one window long and rejects a shorter one', () => {
    expect(sampleWindows(range(8), 3, 8, 0)).toEqual([range(8), range(8), range(8)]);
    expect(() => sampleWindows(range(7), 1, 8, 0)).toThrow(UsageError);
    expect(() => sampleWindows(range(7), 0, 2, 0)).toThrow(/positive integer/);
  });
});

describe('slidingWindows', () => {
  it('cuts non-overlapping windows and drops the tail', () => {
    const w = slidingWindows(range(1030), 256);
    expect(w.length).toBe(4);
    expect(w[3]).toEqual(range(256).map((i) => i + 768));
    expect(w.flat()).toEqual(range(1024));
  });

  it('keeps at most maxWindows', () => {
    expect(slidingWindows(range(1030), 256, 2)).toEqual([range(256), range(256).map((i) => i + 256)]);
    expect(slidingWindows(range(1030), 256, 99).length).toBe(4);
  });

  it('throws UsageError when the text is shorter than one window', () => {
    expect(() => slidingWindows(range(255), 256)).toThrow(UsageError);
    expect(slidingWindows(range(256), 256)).toEqual([range(256)]);
  });
});
