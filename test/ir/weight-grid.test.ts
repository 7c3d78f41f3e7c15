/**
 * The 8-bit weight grid (src/ir/quant.ts quantizeRtn/packWeights at 8 bits, codec w8-groupwise) and
 * that onnxruntime's MatMulNBits and GatherBlockQuantized (bits 8, default zero point 128) decode the
 * stored layout exactly as the TypeScript codec does; GPTQ at 8 bits (H = I equals RTN).
 */
import { describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import { blobBytes, dequantizeW4, dequantizeWeights, numGroups, packWeights, quantizeRtn, quantizeRtnW4, unpackWeights, weightGrid } from '../../src/ir/quant.js';
import { CODECS, linearCodec, W8_GROUPWISE } from '../../src/ir/codecs.js';
import { gptq } from '../../passes/gptq.js';
import { GraphBuilder } from '../../formats/onnx.js';
import { ShapeMismatchError } from '../../src/core/errors.js';
import { randn } from '../helpers/random.js';

describe('8-bit symmetric group-wise grid', () => {
  it('zero point 128, largest code 255; 4 bits keep 8 and 15', () => {
    expect(weightGrid(8)).toEqual({ maxq: 255, zero: 128 });
    expect(weightGrid(4)).toEqual({ maxq: 15, zero: 8 });
    expect(blobBytes(32, 8)).toBe(32);
    expect(blobBytes(32, 4)).toBe(16);
  });

  it('pack/unpack is lossless for all codes, with a ragged last group padded at the zero point', () => {
    const N = 3;
    const K = 172; // stories260K down_proj: 5 groups of 32 + a ragged one of 12
    const codes = Uint8Array.from({ length: N * K }, (_, i) => (i * 37) % 256);
    const packed = packWeights(codes, N, K, 32, 8);
    expect(packed.length).toBe(N * numGroups(K, 32) * 32);
    expect(unpackWeights(packed, N, K, 32, 8)).toEqual(codes);
    const padded = unpackWeights(packed, N, numGroups(K, 32) * 32, 32, 8);
    for (let n = 0; n < N; n++) for (let k = K; k < 192; k++) expect(padded[n * 192 + k]).toBe(128);
    expect(() => unpackWeights(packed.subarray(1), N, K, 32, 8)).toThrow(ShapeMismatchError);
  });

  it('dequantize(quantize(W)) errs by at most scale/2 per element, with scale = 2·max|w|/255 per group', () => {
    const N = 8;
    const K = 172;
    const W = randn(N * K, 5);
    const p = quantizeRtn(W, N, K, 32, 8);
    expect(p.bits).toBe(8);
    const Wq = dequantizeWeights(p);
    const nb = numGroups(K, 32);
    let worst = 0;
    for (let n = 0; n < N; n++)
      for (let b = 0; b < nb; b++) {
        let m = 0;
        for (let k = b * 32; k < Math.min(K, b * 32 + 32); k++) m = Math.max(m, Math.abs(W[n * K + k]));
        const s = p.scales[n * nb + b];
        expect(s).toBeCloseTo((2 * m) / 255, 7);
        for (let k = b * 32; k < Math.min(K, b * 32 + 32); k++) {
          const e = Math.abs(W[n * K + k] - Wq[n * K + k]);
          expect(e).toBeLessThanOrEqual((s / 2) * (1 + 1e-4)); // the clamped top code 127·fl32(s) adds up to 254 ulps of s
          worst = Math.max(worst, e / m);
        }
      }
    expect(worst).toBeLessThan(1 / 255 + 1e-6); // 16× finer than W4's 1/15
  });

  it('at 4 bits is the W4 grid exactly (quantizeRtnW4, dequantizeW4)', () => {
    const W = randn(6 * 100, 9);
    const a = quantizeRtn(W, 6, 100, 32, 4);
    const b = quantizeRtnW4(W, 6, 100, 32);
    expect(a.qweight).toEqual(b.qweight);
    expect(a.scales).toEqual(b.scales);
    expect(dequantizeWeights(a)).toEqual(dequantizeW4(b));
  });

  it('the w8-groupwise codec is registered and is the 8-bit linear codec', () => {
    expect(CODECS['w8-groupwise']).toBe(W8_GROUPWISE);
    expect(linearCodec(8)).toBe(W8_GROUPWISE);
    const W = randn(4 * 64, 2);
    const e = W8_GROUPWISE.encode(W, 4, 64, 16);
    expect(e.codesShape).toEqual([4, 4, 16]);
    expect(e.scalesShape).toEqual([4, 4]);
    expect(W8_GROUPWISE.decode(e, 4, 64, 16)).toEqual(dequantizeWeights({ qweight: e.codes as Uint8Array, scales: e.scales, outFeatures: 4, inFeatures: 64, groupSize: 16, bits: 8 }));
  });
});

describe('onnxruntime reads the 8-bit layout as the codec does', () => {
  const N = 40;
  const K = 172;
  const G = 32;
  const W = randn(N * K, 11);
  const p = quantizeRtn(W, N, K, G, 8);
  const Wq = dequantizeWeights(p);
  const nb = numGroups(K, G);

  // float32 accumulation over K = 172 products of |y| ~ 10 errs by ~1e-5; a wrong code or zero point errs by ~scale ≈ 0.02
  it('MatMulNBits bits 8 (default zero point 128, ragged K) computes x·Wqᵀ (exact levels 0 and 1, to 1e-4)', async () => {
    const M = 3;
    const x = randn(M * K, 12);
    const ref = new Float64Array(M * N);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) ref[m * N + n] += x[m * K + k] * Wq[n * K + k];
    for (const level of [0, 1]) {
      const g = new GraphBuilder('w8');
      g.input('x', 'float32', [1, M, K]);
      g.initializer('w', { dtype: 'U8', shape: [N, nb, G], data: p.qweight });
      g.initializer('s', { dtype: 'F32', shape: [N * nb], data: p.scales });
      g.node('MatMulNBits', ['x', 'w', 's'], { name: '/mm', domain: 'com.microsoft', attrs: { K, N, bits: 8, block_size: G, accuracy_level: level }, outputNames: ['y'] });
      g.output('y', 'float32', [1, M, N]);
      const sess = await ort.InferenceSession.create(g.encode());
      const y = (await sess.run({ x: new ort.Tensor('float32', x, [1, M, K]) })).y.data as Float32Array;
      await sess.release();
      let err = 0;
      for (let i = 0; i < y.length; i++) err = Math.max(err, Math.abs(y[i] - ref[i]));
      expect(err, `accuracy_level ${level}`).toBeLessThan(1e-4);
    }
  });

  it('GatherBlockQuantized bits 8 (the tied embedding) returns rows of Wq exactly', async () => {
    const V = 50;
    const H = 64;
    const E = randn(V * H, 13);
    const e = quantizeRtn(E, V, H, 16, 8);
    const Eq = dequantizeWeights(e);
    const g = new GraphBuilder('gbq8');
    g.input('ids', 'int64', [1, 3]);
    g.initializer('w', { dtype: 'U8', shape: [V, H / 16, 16], data: e.qweight });
    g.initializer('s', { dtype: 'F32', shape: [V, H / 16, 1], data: e.scales });
    g.node('GatherBlockQuantized', ['w', 'ids', 's'], { name: '/g', domain: 'com.microsoft', attrs: { gather_axis: 0, quantize_axis: 2, block_size: 16, bits: 8 }, outputNames: ['y'] });
    g.output('y', 'float32', null);
    const sess = await ort.InferenceSession.create(g.encode());
    const ids = [0, 17, 49];
    const y = (await sess.run({ ids: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, 3]) })).y.data as Float32Array;
    await sess.release();
    expect(Array.from(y)).toEqual(ids.flatMap((id) => Array.from(Eq.subarray(id * H, (id + 1) * H))));
  });
});

describe('GPTQ at 8 bits', () => {
  it('with H = I equals RTN on the 8-bit grid, and packs 8-bit codes', async () => {
    const N = 6;
    const K = 96;
    const W = randn(N * K, 21);
    const H = new Float64Array(K * K);
    for (let i = 0; i < K; i++) H[i * K + i] = 1;
    const r = await gptq(W, N, K, H, { groupSize: 32, bits: 8 });
    const rtn = quantizeRtn(W, N, K, 32, 8);
    expect(r.packed.bits).toBe(8);
    expect(r.packed.qweight).toEqual(rtn.qweight);
    expect(r.packed.scales).toEqual(rtn.scales);
  });

  it('refuses other widths', async () => {
    await expect(gptq(randn(4, 1), 2, 2, Float64Array.of(1, 0, 0, 1), { groupSize: 2, bits: 6 as 8 })).rejects.toThrow('gptq: bits 6 must be 4 or 8');
  });
});
