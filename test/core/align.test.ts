import { describe, expect, it } from 'vitest';
import { alignUp, paddingLength } from '../../src/core/align.js';

describe('alignUp / paddingLength', () => {
  it('round up to the next multiple (0 and exact multiples stay) and give the padding to it', () => {
    for (const align of [8, 64, 512, 4096]) {
      expect(alignUp(0, align)).toBe(0);
      expect(alignUp(1, align)).toBe(align);
      expect(alignUp(align, align)).toBe(align);
      expect(alignUp(align + 1, align)).toBe(2 * align);
      expect(paddingLength(align + 1, align)).toBe(align - 1);
      expect(paddingLength(2 * align, align)).toBe(0);
    }
    expect(alignUp(48 + 1200, 64)).toBe(1280);
    expect(alignUp(2 ** 40 + 3, 4096)).toBe(2 ** 40 + 4096);
  });
});
