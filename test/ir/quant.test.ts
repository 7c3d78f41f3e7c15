import { describe, it, expect } from 'vitest';
import * as ort from 'onnxruntime-node';
import {
  roundHalfEven,
  quantizeRtnW4,
  dequantizeW4,
  packW4,
  unpackW4,
  asymmetricQParams,
  quantizeU8,
  numGroups,
} from '../../src/ir/quant.js';
import { GraphBuilder } from '../../formats/onnx.js';
import { randn } from '../helpers/random.js';

describe('roundHalfEven', () => {
  it('rounds ties to the even neighbour and everything else to nearest', () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, 2.6, -2.6].map(roundHalfEven)).toEqual([0, 2, 2, -0, -2, -2, 2, 3, -3]);
  });
});

describe('W4 symmetric group-wise codec', () => {
  it('pack/unpack is lossless for all codes, including a ragged last group', () => {
    const N = 3;
    const K = 172; // stories260K down_proj: 2 full groups of 64 + a ragged one of 44
    const codes = Uint8Array.from({ length: N * K }, (_, i) => (i * 7) % 16);
    const packed = packW4(codes, N, K, 64);
    expect(packed.length).toBe(N * numGroups(K, 64) * 32);
    expect(unpackW4(packed, N, K, 64)).toEqual(codes);
  });

  it('dequantize(quantize(W)) errs by at most scale/2 per element (and scale = 2·max|w|/15 per group)', () => {
    const N = 8;
    const K = 172;
    const W = randn(N * K, 1);
    const p = quantizeRtnW4(W, N, K, 64);
    const Wq = dequantizeW4(p);
    const nb = numGroups(K, 64);
    for (let n = 0; n < N; n++)
      for (let b = 0; b < nb; b++) {
        let m = 0;
        for (let k = b * 64; k < Math.min(K, b * 64 + 64); k++) m = Math.max(m, Math.abs(W[n * K + k]));
        const s = p.scales[n * nb + b];
        expect(s).toBeCloseTo((2 * m) / 15, 6);
        for (let k = b * 64; k < Math.min(K, b * 64 + 64); k++) expect(Math.abs(W[n * K + k] - Wq[n * K + k])).toBeLessThanOrEqual((s / 2) * (1 + 1e-5)); // float32 rounding of w/scale
      }
  });

  it('ragged-group padding decodes to zero', () => {
    const p = quantizeRtnW4(randn(2 * 20, 2), 2, 20, 16);
    const codes = unpackW4(p.qweight, 2, 32, 16); // read the padded width
    for (let n = 0; n < 2; n++) for (let k = 20; k < 32; k++) expect(codes[n * 32 + k]).toBe(8);
  });
});

describe('static uint8 asymmetric per-tensor quantization', () => {
  it('ranges include zero and map min/max to the ends of [0, 255]', () => {
    const p = asymmetricQParams(-1, 3);
    expect(quantizeU8(-1, p)).toBe(0);
    expect(quantizeU8(3, p)).toBe(255);
    expect(quantizeU8(0, p)).toBe(p.zeroPoint);
    expect(asymmetricQParams(2, 5).zeroPoint).toBe(0); // widened to [0, 5]
  });

  it('TypeScript QuantizeLinear agrees bit for bit with onnxruntime on ties and random values', async () => {
    const p = { scale: 0.5, zeroPoint: 10 };
    // x/scale = k + 0.5 exactly: ties that must round to even
    const ties = Array.from({ length: 41 }, (_, i) => (i - 20 + 0.5) * p.scale);
    const xs = Float32Array.from([...ties, ...randn(500, 3).map((v) => v * 40)]);
    const g = new GraphBuilder('q');
    g.input('x', 'float32', [xs.length]);
    const s = g.constant({ dtype: 'F32', shape: [], data: Float32Array.of(p.scale) });
    const z = g.constant({ dtype: 'U8', shape: [], data: Uint8Array.of(p.zeroPoint) });
    g.node('QuantizeLinear', ['x', s, z], { name: '/q', outputNames: ['y'] });
    g.output('y', 'uint8', [xs.length]);
    const sess = await ort.InferenceSession.create(g.encode());
    const y = (await sess.run({ x: new ort.Tensor('float32', xs, [xs.length]) })).y.data as Uint8Array;
    expect(Array.from(y)).toEqual(Array.from(xs, (v) => quantizeU8(v, p)));
  });
});
