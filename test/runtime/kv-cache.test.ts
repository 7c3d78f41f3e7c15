/**
 * runtime/kv-cache: the preallocated, sequence-major KV cache of a simulator context. Everything is
 * exact (integer-valued bytes moved, no arithmetic), so every comparison is equality.
 */
import { describe, expect, it } from 'vitest';
import { KvCache } from '../../src/runtime/kv-cache.js';
import type { KvLayout } from '../../src/ir/executable.js';
import { mulberry32 } from '../../src/core/rng.js';

const layout: KvLayout = { numLayers: 3, numKvHeads: 2, headDim: 4, maxContext: 16, dtype: 'uint8', layers: [] };
const ROW = 2 * 4;

/** Pseudo-random rows for every layer: [K, V] of n positions. */
function rows(n: number, seed: number): [Uint8Array, Uint8Array][] {
  const r = mulberry32(seed);
  const one = () => Uint8Array.from({ length: n * ROW }, () => Math.floor(r() * 256));
  return Array.from({ length: layout.numLayers }, () => [one(), one()]);
}

/** Layer i's K and V over the positions held, as plain arrays. */
const held = (c: KvCache, i: number) => c.past(i).map((t) => Array.from(t.data as Uint8Array));

describe('KvCache', () => {
  it('feeds the positions held as [1, length, kv_heads, head_dim] views that append extends in place', () => {
    const c = KvCache.empty(layout);
    expect(c.past(0)[0].dims).toEqual([1, 0, 2, 4]);
    const a = rows(3, 1);
    const b = rows(2, 2);
    c.append(a, 3);
    const before = c.past(1)[0].data as Uint8Array;
    c.append(b, 2);
    expect(c.length).toBe(5);
    expect(c.past(1)[0].dims).toEqual([1, 5, 2, 4]);
    expect(held(c, 1)[0]).toEqual([...a[1][0], ...b[1][0]]);
    expect(held(c, 2)[1]).toEqual([...a[2][1], ...b[2][1]]);
    // a view, not a copy: the earlier view shares the buffer the later rows were written into
    expect(before.buffer).toBe((c.past(1)[0].data as Uint8Array).buffer);
  });

  it('fork is copy-on-write: each side continues on its own and the other is unchanged', () => {
    const c = KvCache.empty(layout);
    c.append(rows(4, 3), 4);
    const f = c.fork();
    const base = [0, 1, 2].map((i) => held(c, i));
    const x = rows(1, 4);
    const y = rows(2, 5);
    f.append(x, 1);
    c.append(y, 2);
    for (let i = 0; i < 3; i++) {
      expect(held(f, i)[0]).toEqual([...base[i][0], ...x[i][0]]);
      expect(held(c, i)[1]).toEqual([...base[i][1], ...y[i][1]]);
    }
  });

  it('truncate then append overwrites only its own copy when the buffer is shared', () => {
    const c = KvCache.empty(layout);
    c.append(rows(6, 6), 6);
    const f = c.fork();
    const whole = held(f, 0);
    c.truncate(2);
    c.append(rows(3, 7), 3);
    expect(held(f, 0)).toEqual(whole);
    expect(held(c, 0)[0].slice(0, 2 * ROW)).toEqual(whole[0].slice(0, 2 * ROW));
  });

  it('snapshot and restore round-trip the bytes; restore refuses a wrong size or length', () => {
    const c = KvCache.empty(layout);
    c.append(rows(5, 8), 5);
    const snap = { length: c.length, adapter: null, layers: c.snapshot() };
    expect(snap.layers[0].key.byteLength).toBe(5 * ROW);
    const r = KvCache.restore(layout, snap);
    for (let i = 0; i < 3; i++) expect(held(r, i)).toEqual(held(c, i));
    expect(() => KvCache.restore(layout, { ...snap, length: 17 })).toThrow(/capacity of 16/);
    expect(() => KvCache.restore(layout, { ...snap, layers: snap.layers.slice(1) })).toThrow(/2 layers/);
    expect(() => KvCache.restore(layout, { ...snap, length: 4 })).toThrow(/layer 0 K holds 40 bytes, the layout needs 32/);
  });

  it('refuses rows past the capacity or of the wrong size, and leaves the cache as it was', () => {
    const c = KvCache.empty(layout);
    c.append(rows(15, 9), 15);
    expect(() => c.append(rows(2, 10), 2)).toThrow(/15 \+ 2 positions exceed the capacity of 16/);
    expect(c.length).toBe(15);
    c.truncate(5);
    expect(() => c.append(rows(1, 11), 2)).toThrow(/hold 8 values, expected 16/);
    expect(c.length).toBe(5);
  });

  it('holds uint16 (KV16) caches, and layers at different widths side by side (mixed), each in its own type', () => {
    const q16 = { scale: 1e-4, zeroPoint: 30000, bits: 16 as const };
    const mixed: KvLayout = { ...layout, dtype: 'mixed', layers: [{ k: q16, v: q16 }, null, { k: { scale: 0.1, zeroPoint: 9 }, v: { scale: 0.1, zeroPoint: 9 } }] };
    const c = KvCache.empty(mixed);
    const r = [
      [Uint16Array.from({ length: ROW }, (_, j) => 65535 - j), Uint16Array.from({ length: ROW }, (_, j) => 300 + j)],
      [Float32Array.from({ length: ROW }, (_, j) => j / 4), Float32Array.from({ length: ROW }, (_, j) => -j)],
      [Uint8Array.from({ length: ROW }, (_, j) => 250 + j / 2), Uint8Array.from({ length: ROW }, (_, j) => j)],
    ] as const;
    c.append(r, 1);
    expect(c.past(0).map((t) => t.type)).toEqual(['uint16', 'uint16']);
    expect(c.past(1)[0].type).toBe('float32');
    expect(c.past(2)[1].type).toBe('uint8');
    expect(Array.from(c.past(0)[0].data as Uint16Array)).toEqual(Array.from(r[0][0])); // codes above 255 kept
    const f = c.fork();
    f.append(r, 1);
    expect(c.length).toBe(1);
    expect(Array.from(f.past(0)[1].data as Uint16Array)).toEqual([...r[0][1], ...r[0][1]]);
    const snap = { length: c.length, adapter: null, layers: c.snapshot() };
    expect(snap.layers.map((l) => l.key.byteLength)).toEqual([2 * ROW, 4 * ROW, ROW]);
    const back = KvCache.restore(mixed, snap);
    for (let i = 0; i < 3; i++) for (const kv of [0, 1]) expect(back.past(i)[kv].data).toEqual(c.past(i)[kv].data);
    // rows of another element type than the layer's are refused (a Float32Array would be silently converted by set)
    expect(() => c.append([r[1], r[1], r[2]], 1)).toThrow(/layer 0 K rows are float32, the layer holds uint16/);
  });

  it('holds float32 caches the same way', () => {
    const f32: KvLayout = { ...layout, dtype: 'float32' };
    const c = KvCache.empty(f32);
    const r = Array.from({ length: 3 }, (_, i) => [Float32Array.of(i, 0.5, -1, 2, 3, 4, 5, 6), Float32Array.of(-i, 1, 2, 3, 4, 5, 6, 7)] as const);
    c.append(r, 1);
    expect(c.past(2)[1].type).toBe('float32');
    expect(Array.from(c.past(2)[1].data as Float32Array)).toEqual([-2, 1, 2, 3, 4, 5, 6, 7]);
    const snap = c.snapshot();
    expect(Array.from(new Float32Array(snap[1].key.buffer, 0, 8))).toEqual([1, 0.5, -1, 2, 3, 4, 5, 6]);
  });
});
