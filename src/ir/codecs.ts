/**
 * The codecs: every integer encoding edgellm stores or emulates, each an encode/decode pair
 * registered in one table ({@link CODECS}), in the manner of gguf-py's `quants.py`. Every path that
 * produces or reads these integers (RTN, GPTQ, the LoRA storage, the TypeScript reference forward,
 * the observers) goes through them, so all agree with the ONNX ops that execute them.
 *
 * | codec            | codes                                  | parameters           | op it matches |
 * | ---------------- | -------------------------------------- | -------------------- | ------------- |
 * | `w4-groupwise`   | uint8 [N, n_blocks, group/2] (nibbles) | float32 [N, n_blocks] | com.microsoft MatMulNBits (bits 4, zero point 8) |
 * | `w8-groupwise`   | uint8 [N, n_blocks, group] (bytes)     | float32 [N, n_blocks] | com.microsoft MatMulNBits (bits 8, zero point 128) |
 * | `i8-per-channel` | int8 [N, K]                            | float32 [N, 1]       | DequantizeLinear (axis 0) |
 * | `u8-per-tensor`  | uint8 [n]                              | scale, zero point    | QuantizeLinear / DequantizeLinear (uint8) |
 *
 * The grids themselves (rounding, scales, packing) are in src/ir/quant.ts.
 */
import type { QParams } from './model.js';
import { roundHalfEven, quantizeRtn, dequantizeWeights, quantizeU8, numGroups, blobBytes, type WeightBits } from './quant.js';
import { ShapeMismatchError } from '../core/errors.js';

/** A weight matrix W [rows, cols] (float32, row-major) in one of the matrix codecs. */
export interface EncodedMatrix {
  /** the integer codes: uint8 (w4-groupwise nibbles packed, w8-groupwise bytes) or int8 (i8-per-channel) */
  codes: Uint8Array | Int8Array;
  /** the codes' shape as stored */
  codesShape: number[];
  /** float32 scales */
  scales: Float32Array;
  scalesShape: number[];
}

/** An encode/decode pair over weight matrices. */
export interface MatrixCodec {
  readonly name: 'w4-groupwise' | 'w8-groupwise' | 'i8-per-channel';
  readonly bits: 4 | 8;
  /**
   * @param W float32 [rows, cols], row-major
   * @param groupSize columns per scale (group-wise codecs; even for 4 bits); ignored by per-channel codecs
   * @throws ShapeMismatchError when W does not have rows·cols elements
   */
  encode(W: Float32Array, rows: number, cols: number, groupSize?: number): EncodedMatrix;
  /** float32 [rows, cols]; each value (q − zero)·scale rounded to float32, as DequantizeLinear / MatMulNBits compute it */
  decode(e: Pick<EncodedMatrix, 'codes' | 'scales'>, rows: number, cols: number, groupSize?: number): Float32Array;
}

const I8_MAX = 127;

/** b-bit symmetric group-wise along the input dimension, MatMulNBits packing (src/ir/quant.ts). */
function groupwise(bits: WeightBits): MatrixCodec {
  return {
    name: bits === 4 ? 'w4-groupwise' : 'w8-groupwise',
    bits,
    encode(W, rows, cols, groupSize = 32) {
      const p = quantizeRtn(W, rows, cols, groupSize, bits);
      const nb = numGroups(cols, groupSize);
      return { codes: p.qweight, codesShape: [rows, nb, blobBytes(groupSize, bits)], scales: p.scales, scalesShape: [rows, nb] };
    },
    decode(e, rows, cols, groupSize = 32) {
      return dequantizeWeights({ qweight: e.codes as Uint8Array, scales: e.scales, outFeatures: rows, inFeatures: cols, groupSize, bits });
    },
  };
}

/** 4-bit symmetric group-wise (zero point 8, two codes per byte). */
export const W4_GROUPWISE: MatrixCodec = groupwise(4);

/** 8-bit symmetric group-wise (scale 2·max|w|/255 per group, zero point 128, one code per byte). */
export const W8_GROUPWISE: MatrixCodec = groupwise(8);

/**
 * int8 symmetric per output channel (row): scale = max|w|/127 (1/127 for a zero row),
 * q = clamp(round½even(w/scale), −127, 127), w' = q·scale.
 */
export const I8_PER_CHANNEL: MatrixCodec = {
  name: 'i8-per-channel',
  bits: 8,
  encode(W, rows, cols) {
    if (W.length !== rows * cols) throw new ShapeMismatchError(`i8-per-channel: ${W.length} elements, shape [${rows}, ${cols}] needs ${rows * cols}`);
    const q = new Int8Array(rows * cols);
    const scales = new Float32Array(rows);
    for (let i = 0; i < rows; i++) {
      let m = 0;
      for (let j = 0; j < cols; j++) m = Math.max(m, Math.abs(W[i * cols + j]));
      const s = Math.fround(m === 0 ? 1 / I8_MAX : m / I8_MAX);
      scales[i] = s;
      for (let j = 0; j < cols; j++) q[i * cols + j] = Math.max(-I8_MAX, Math.min(I8_MAX, roundHalfEven(Math.fround(W[i * cols + j] / s))));
    }
    return { codes: q, codesShape: [rows, cols], scales, scalesShape: [rows, 1] };
  },
  decode(e, rows, cols) {
    const q = e.codes as Int8Array;
    const w = new Float32Array(rows * cols);
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) w[i * cols + j] = q[i * cols + j] * e.scales[i];
    return w;
  },
};

/** uint8 asymmetric per-tensor (ONNX QuantizeLinear): q = saturate(round½even(x/scale) + zero point). */
export const U8_PER_TENSOR = {
  name: 'u8-per-tensor' as const,
  bits: 8 as const,
  /** x float32 [n] -> uint8 [n] */
  encode(x: Float32Array, p: QParams): Uint8Array {
    const q = new Uint8Array(x.length);
    for (let i = 0; i < x.length; i++) q[i] = quantizeU8(x[i], p);
    return q;
  },
  /** uint8 [n] -> float32 [n]: (q − zero point)·scale */
  decode(q: Uint8Array, p: QParams): Float32Array {
    const x = new Float32Array(q.length);
    for (let i = 0; i < q.length; i++) x[i] = (q[i] - p.zeroPoint) * p.scale;
    return x;
  },
};

/** Every codec by name. */
export const CODECS = {
  'w4-groupwise': W4_GROUPWISE,
  'w8-groupwise': W8_GROUPWISE,
  'i8-per-channel': I8_PER_CHANNEL,
  'u8-per-tensor': U8_PER_TENSOR,
} as const;

export type CodecName = keyof typeof CODECS;

/** The matrix codec storing `bits`-bit weights (4: w4-groupwise, 8: i8-per-channel). */
export function matrixCodec(bits: 4 | 8): MatrixCodec {
  return bits === 4 ? W4_GROUPWISE : I8_PER_CHANNEL;
}

/**
 * The codec of a weight-quantized linear's `.qweight` / `.scales` (the MatMulNBits layout of
 * src/ir/model.ts): w4-groupwise for 4 bits, w8-groupwise for 8.
 */
export function linearCodec(bits: WeightBits): MatrixCodec {
  return bits === 4 ? W4_GROUPWISE : W8_GROUPWISE;
}
