/**
 * The quantizer grids, shared by every path that produces integers (RTN, GPTQ, calibration), so all
 * of them agree with the ONNX ops that execute them.
 *
 * - Weights: b-bit symmetric (b = 4 or 8), group-wise along the input dimension (GPTQ's `Quantizer`
 *   with sym=True: maxq = 2^b − 1, scale = 2·max|w|/maxq, zero point 2^(b−1),
 *   q = clamp(round(w/scale) + zero, 0, maxq); 4 bits: /15 and 8, 8 bits: /255 and 128), packed
 *   for com.microsoft MatMulNBits (B: uint8 [N, n_blocks, block_size·b/8]; 4 bits: element k of a
 *   block in the low nibble when k is even, 8 bits: one byte per element; scales float
 *   [N·n_blocks]; MatMulNBits' default zero point is 2^(b−1), so none is stored).
 * - Activations and KV cache: static asymmetric per-tensor, 8-bit (ONNX QuantizeLinear, uint8) or,
 *   per activation point and per layer's KV cache, 16-bit (uint16):
 *   q = saturate(roundHalfEven(x/scale) + zeroPoint), x' = (q − zeroPoint)·scale,
 *   scale = range/(2^bits − 1), zeroPoint ∈ [0, 2^bits − 1]; {@link activationQdq} says how a
 *   model executes one activation point (its width, or float), src/ir/kv-quant.ts kvCacheQdq one
 *   layer's KV cache.
 */
import type { Model, QParams } from './model.js';
import type { PointBits } from './precision.js';
import { ShapeMismatchError, UnsupportedModelError } from '../core/errors.js';

/** Round half to even, as ONNX QuantizeLinear and torch.round do. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  // Math.round rounds .5 up; fix the ties that land on an odd integer.
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export const W4_MAXQ = 15;
export const W4_ZERO = 8;

/** Widths of the symmetric group-wise weight grid (MatMulNBits `bits`). */
export type WeightBits = 4 | 8;

/** The largest code 2^bits − 1 and the zero point 2^(bits−1) of the `bits`-bit weight grid (4: 15 and 8; 8: 255 and 128). */
export function weightGrid(bits: WeightBits): { maxq: number; zero: number } {
  return bits === 4 ? { maxq: W4_MAXQ, zero: W4_ZERO } : { maxq: 255, zero: 128 };
}

/**
 * Symmetric scale of a group from its max |w|: 2·max|w|/maxq (GPTQ's convention; an all-zero group
 * gets 2/maxq). @param bits grid width (default 4: /15)
 */
export function symmetricScale(absMax: number, bits: WeightBits = 4): number {
  const { maxq } = weightGrid(bits);
  return absMax === 0 ? 2 / maxq : (2 * absMax) / maxq;
}

/** The `bits`-bit code of w on a grid with `scale`: clamp(round½even(w/scale) + 2^(bits−1), 0, 2^bits − 1). */
export function quantizeWeight(w: number, scale: number, bits: WeightBits): number {
  const { maxq, zero } = weightGrid(bits);
  const q = roundHalfEven(w / scale) + zero;
  return q < 0 ? 0 : q > maxq ? maxq : q;
}

/** The 4-bit code of w on a grid with `scale` (zero point 8). */
export function quantizeW4(w: number, scale: number): number {
  return quantizeWeight(w, scale, 4);
}

/** Number of groups (MatMulNBits blocks) for `inFeatures` columns; the last one may be ragged. */
export function numGroups(inFeatures: number, groupSize: number): number {
  return Math.ceil(inFeatures / groupSize);
}

/** Bytes of one packed group (MatMulNBits blob): groupSize·bits/8. */
export function blobBytes(groupSize: number, bits: WeightBits): number {
  return (groupSize * bits) / 8;
}

/** A b-bit group-wise quantized matrix in MatMulNBits layout. */
export interface PackedW4 {
  /** uint8 [N, nBlocks, groupSize·bits/8] */
  qweight: Uint8Array;
  /** float32 [N, nBlocks] */
  scales: Float32Array;
  outFeatures: number;
  inFeatures: number;
  groupSize: number;
  /** code width; absent: 4 */
  bits?: WeightBits;
}

/** A b-bit group-wise quantized matrix (the name says what {@link PackedW4} holds since it has a width). */
export type PackedWeights = PackedW4;

/**
 * Packs integer codes q (uint8 [N, K], values 0..2^bits − 1) into MatMulNBits blocks
 * (uint8 [N, n_blocks, groupSize·bits/8]); the padding of a ragged last block gets the zero point
 * (= 0.0). @throws ShapeMismatchError when codes is not N·K long or (4 bits) the group size is odd
 */
export function packWeights(codes: Uint8Array, N: number, K: number, groupSize: number, bits: WeightBits): Uint8Array {
  const fn = `packW${bits}`;
  if (codes.length !== N * K) throw new ShapeMismatchError(`${fn}: codes has ${codes.length} elements, expected N·K = ${N}·${K}`);
  if (bits === 4 && groupSize % 2 !== 0) throw new ShapeMismatchError(`${fn}: group size ${groupSize} must be even`);
  const nb = numGroups(K, groupSize);
  const zero = weightGrid(bits).zero;
  if (bits === 8) {
    const out = new Uint8Array(N * nb * groupSize).fill(zero);
    for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) out[n * nb * groupSize + k] = codes[n * K + k]; // row n: blocks back to back
    return out;
  }
  const blob = groupSize / 2;
  const out = new Uint8Array(N * nb * blob).fill(zero | (zero << 4));
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      const b = Math.floor(k / groupSize);
      const j = k % groupSize;
      const idx = (n * nb + b) * blob + (j >> 1);
      const q = codes[n * K + k];
      out[idx] = j & 1 ? (out[idx] & 0x0f) | (q << 4) : (out[idx] & 0xf0) | q;
    }
  return out;
}

/** Inverse of {@link packWeights}: uint8 codes [N, K]. @throws ShapeMismatchError for a qweight of the wrong size */
export function unpackWeights(qweight: Uint8Array, N: number, K: number, groupSize: number, bits: WeightBits): Uint8Array {
  const nb = numGroups(K, groupSize);
  const blob = blobBytes(groupSize, bits);
  if (qweight.length !== N * nb * blob)
    throw new ShapeMismatchError(`unpackW${bits}: qweight has ${qweight.length} bytes, expected N·n_blocks·group·${bits}/8 = ${N}·${nb}·${blob}`);
  const codes = new Uint8Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      if (bits === 8) {
        codes[n * K + k] = qweight[n * nb * groupSize + k];
        continue;
      }
      const b = Math.floor(k / groupSize);
      const j = k % groupSize;
      const byte = qweight[(n * nb + b) * blob + (j >> 1)];
      codes[n * K + k] = j & 1 ? byte >> 4 : byte & 0x0f;
    }
  return codes;
}

/**
 * Packs integer codes q (uint8 [N, K], values 0..15) into MatMulNBits blocks; the padding of a
 * ragged last block gets code 8 (= 0.0).
 */
export function packW4(codes: Uint8Array, N: number, K: number, groupSize: number): Uint8Array {
  return packWeights(codes, N, K, groupSize, 4);
}

/** Inverse of {@link packW4}: uint8 codes [N, K]. */
export function unpackW4(qweight: Uint8Array, N: number, K: number, groupSize: number): Uint8Array {
  return unpackWeights(qweight, N, K, groupSize, 4);
}

/** Dequantizes packed weights (of width `p.bits`, default 4) to float32 W [N, K]: w = (q − 2^(bits−1))·scale. */
export function dequantizeWeights(p: PackedWeights): Float32Array {
  const { outFeatures: N, inFeatures: K, groupSize } = p;
  const bits = p.bits ?? 4;
  const zero = weightGrid(bits).zero;
  const codes = unpackWeights(p.qweight, N, K, groupSize, bits);
  const nb = numGroups(K, groupSize);
  const w = new Float32Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) w[n * K + k] = (codes[n * K + k] - zero) * p.scales[n * nb + Math.floor(k / groupSize)];
  return w;
}

/** Dequantizes packed 4-bit weights to float32 W [N, K]: w = (q − 8)·scale (`p.bits` is ignored). */
export function dequantizeW4(p: PackedW4): Float32Array {
  return dequantizeWeights({ ...p, bits: 4 });
}

/**
 * Round-to-nearest b-bit symmetric group-wise quantization of W [N, K] (float32, row-major).
 * Each group of `groupSize` input columns of a row has its own scale; the last group of a row is
 * ragged when K is not a multiple of groupSize.
 * @param W float32 [N, K], row-major (N = out features, K = in features); values must be finite
 *   (NaN or ±Infinity are not checked and give a NaN or infinite scale for their group)
 * @param N rows (out features)
 * @param K columns (in features)
 * @param groupSize columns per group (MatMulNBits block size): a positive integer, even for 4 bits
 * @param bits 4 or 8
 * @returns PackedWeights with `qweight` uint8 [N, n_blocks, groupSize·bits/8] (4 bits: two codes per
 *   byte, even column in the low nibble; 8 bits: one code per byte; ragged padding at the zero point),
 *   `scales` float32 [N, n_blocks] (each 2·max|w|/(2^bits − 1) of its group rounded to float32,
 *   2/(2^bits − 1) for an all-zero group), `bits`, where n_blocks = ceil(K / groupSize); dequantize
 *   with w = (q − 2^(bits−1))·scale ({@link dequantizeWeights})
 * @throws ShapeMismatchError when W.length ≠ N·K, or (from {@link packWeights}) when a 4-bit
 *   groupSize is odd or not an integer; a groupSize ≤ 0 is not checked and ends in a RangeError
 *   (typed-array length)
 */
export function quantizeRtn(W: Float32Array, N: number, K: number, groupSize: number, bits: WeightBits): PackedWeights {
  if (W.length !== N * K) throw new ShapeMismatchError(`quantizeRtnW${bits}: W has ${W.length} elements, shape [${N}, ${K}] needs ${N * K}`);
  const nb = numGroups(K, groupSize);
  const scales = new Float32Array(N * nb);
  const codes = new Uint8Array(N * K);
  for (let n = 0; n < N; n++)
    for (let b = 0; b < nb; b++) {
      const k0 = b * groupSize;
      const k1 = Math.min(K, k0 + groupSize);
      let m = 0;
      for (let k = k0; k < k1; k++) m = Math.max(m, Math.abs(W[n * K + k]));
      // Stored as float32: quantize with the float32 value so the graph sees the same grid.
      const s = Math.fround(symmetricScale(m, bits));
      scales[n * nb + b] = s;
      for (let k = k0; k < k1; k++) codes[n * K + k] = quantizeWeight(W[n * K + k], s, bits);
    }
  return { qweight: packWeights(codes, N, K, groupSize, bits), scales, outFeatures: N, inFeatures: K, groupSize, bits };
}

/**
 * Round-to-nearest 4-bit symmetric group-wise quantization of W [N, K]: {@link quantizeRtn} with 4
 * bits (`qweight` uint8 [N, n_blocks, groupSize/2], scales 2·max|w|/15, zero point 8), without the
 * `bits` field in its result.
 * @throws ShapeMismatchError as {@link quantizeRtn}
 */
export function quantizeRtnW4(W: Float32Array, N: number, K: number, groupSize: number): PackedW4 {
  const { bits: _bits, ...p } = quantizeRtn(W, N, K, groupSize, 4);
  return p;
}

/**
 * Bit widths of the static asymmetric QDQ grids: 8 (uint8, [0, 255]), the default scheme, and 16
 * (uint16, [0, 65535]), the only other unsigned width ONNX QuantizeLinear saturates to.
 */
export type QdqBits = 8 | 16;

/**
 * QParams of a static QDQ point as stored (model.quant.activations and .kvCache, ranges.json, the
 * HEF header's KV layout): `bits` absent for
 * the uint8 grid (every range written before 16-bit points existed), 16 for uint16, whose zero
 * point may exceed 255.
 */
export type QdqParams = QParams & { bits?: 16 };

/** The largest code 2^bits − 1 of the unsigned `bits`-bit grid (255 or 65535). */
export function qdqMax(bits: QdqBits): number {
  return bits === 8 ? 255 : 65535;
}

/** The grid width of stored QParams: 16 when they say `bits: 16`, else 8. */
export function qdqBitsOf(p: QParams): QdqBits {
  return (p as QdqParams).bits === 16 ? 16 : 8;
}

/**
 * Static asymmetric per-tensor parameters from an observed range, on the unsigned `bits`-bit grid:
 * scale = fl32((hi − lo)/(2^bits − 1)), zeroPoint = clamp(roundHalfEven(−lo/scale), 0, 2^bits − 1),
 * with the range widened to include 0 (so zero is exact, as ONNX quantization tools require); an
 * empty range gives scale 1, zero point 0.
 * @param bits 8 (default; the result has no `bits` field, as ranges always had) or 16 (`bits: 16`)
 */
export function asymmetricQParams(min: number, max: number, bits: QdqBits = 8): QdqParams {
  const tag = bits === 16 ? { bits: 16 as const } : {};
  const qmax = qdqMax(bits);
  const lo = Math.min(0, min);
  const hi = Math.max(0, max);
  if (hi - lo === 0) return { scale: 1, zeroPoint: 0, ...tag };
  const scale = Math.fround((hi - lo) / qmax);
  const zp = roundHalfEven(-lo / scale);
  return { scale, zeroPoint: Math.max(0, Math.min(qmax, zp)), ...tag };
}

/**
 * ONNX QuantizeLinear of one value onto the unsigned `bits`-bit grid: the one rounding definition
 * shared by calibration (observers' fake quantization), the uint8 codec and the reference forward's
 * static scheme (src/ir/reference-quant.ts).
 *
 *   q = saturate(roundHalfEven(fl32(fl32(x) / fl32(scale))) + zeroPoint),  saturate to [0, 2^bits − 1]
 *
 * Source: ONNX operators, QuantizeLinear (y = saturate((x / y_scale) + y_zero_point), "rounds to the
 * nearest even", uint8 [0, 255], uint16 [0, 65535]); the graphs are float32, so x and the scale are
 * float32 and the division is a float32 division (onnxruntime's MLAS kernel divides, it does not
 * multiply by 1/scale). fl32 is Math.fround: the float64 quotient of two float32 values rounded once to
 * float32 is the correctly rounded float32 quotient, so this equals the float32 op bit for bit.
 * @param x any number; it is rounded to float32 first (a no-op for a value read from a Float32Array)
 * @param p scale (> 0, used as float32) and integer zero point in [0, 2^bits − 1]
 * @param bits grid width (default 8)
 * @returns the integer code in [0, 2^bits − 1] (NaN for a NaN x, as no range check is made)
 */
export function quantizeLinear(x: number, p: QParams, bits: QdqBits = 8): number {
  const qmax = qdqMax(bits);
  const q = roundHalfEven(Math.fround(Math.fround(x) / Math.fround(p.scale))) + p.zeroPoint;
  return q < 0 ? 0 : q > qmax ? qmax : q;
}

/**
 * ONNX DequantizeLinear of one code: fl32((q − zeroPoint)·fl32(scale)), the float32 value the graph's
 * DequantizeLinear yields (the integer difference times a float32 is exact in float64, then rounded
 * once). Source: ONNX operators, DequantizeLinear (y = (x − x_zero_point) · x_scale).
 */
export function dequantizeLinear(q: number, p: QParams): number {
  return Math.fround((q - p.zeroPoint) * Math.fround(p.scale));
}

/**
 * ONNX QuantizeLinear (uint8) of one value: {@link quantizeLinear} with 8 bits. For float32 x and
 * scale (every caller's case: calibration captures, Float32Array codec inputs, scales from
 * {@link asymmetricQParams}) this is the pre-existing `roundHalfEven(fl32(x / scale))` bit for bit.
 */
export function quantizeU8(x: number, p: QParams): number {
  return quantizeLinear(x, p, 8);
}

/** QuantizeLinear then DequantizeLinear of one value on the `bits`-bit grid (fake quantization; the product in float64). */
export function fakeQuantLinear(x: number, p: QParams, bits: QdqBits): number {
  return (quantizeLinear(x, p, bits) - p.zeroPoint) * p.scale;
}

/** QuantizeLinear then DequantizeLinear of one value (fake quantization, uint8). */
export function fakeQuantU8(x: number, p: QParams): number {
  return fakeQuantLinear(x, p, 8);
}

/** How one activation point executes: QDQ on the `bits`-bit grid with `params`. */
export interface ActivationQdq {
  params: QParams;
  bits: QdqBits;
}

/**
 * How `model` executes activation point `point` (src/ir/architectures.ts actPointName), the one
 * rule the lowering (src/compiler/lowering.ts actPoint) and the reference forward's static mode
 * (src/ir/reference-quant.ts) share: QDQ with its stored range (model.quant.activations[point]) at
 * the range's width ({@link qdqBitsOf}: uint8, or uint16 for `bits: 16`), or null — no QDQ, float —
 * when the model's precision table (model.precision) gives the point 32 bits and no range is stored.
 * Call it only when the model quantizes activations (model.quant.activations is not empty).
 * @param who the caller, first in error messages (`lowering`, `referenceForward`)
 * @throws UnsupportedModelError when the point has no range and the table does not make it float
 *   ("no A8 range for activation point …"), or when the table and the range disagree on the width
 *   (the table says 32 but a range is stored, or 8 against a 16-bit range and vice versa: ranges
 *   calibrated for another recipe)
 */
export function activationQdq(model: Pick<Model, 'quant' | 'precision'>, point: string, who: string): ActivationQdq | null {
  const p = model.quant.activations[point];
  const want: PointBits | undefined = model.precision?.activations[point]?.bits;
  if (!p) {
    if (want === 32) return null;
    throw new UnsupportedModelError(`${who}: no A8 range for activation point '${point}'${want ? ` (its precision is ${want} bits)` : ''}`);
  }
  const bits = qdqBitsOf(p);
  if (want !== undefined && want !== bits)
    throw new UnsupportedModelError(`${who}: activation point '${point}' has a ${bits}-bit range but the precision table gives it ${want} bits (ranges calibrated for another recipe; quantize again)`);
  return { params: p, bits };
}
