/**
 * Tensors of the model IR: a dtype, a shape and a typed array. One {@link DTYPES} table serves every
 * format (safetensors names, ONNX TensorProto.DataType codes, byte sizes).
 */
import { ShapeMismatchError } from '../core/errors.js';

/** Safetensors dtype names; the canonical dtype vocabulary of edgellm. */
export type DType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'U16' | 'I8' | 'U8' | 'BOOL';

export type TypedArray =
  | Float64Array
  | Float32Array
  | Uint16Array // U16, and F16 / BF16 raw bits
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array;

export interface DTypeInfo {
  /** bytes per element */
  bytes: number;
  /** onnx.TensorProto.DataType code */
  onnx: number;
  /** constructor of the typed array holding the raw elements */
  array: { new (buf: ArrayBufferLike, byteOffset: number, length: number): TypedArray; new (length: number): TypedArray };
}

/** The one dtype table (safetensors name -> byte size, ONNX code, typed array). */
export const DTYPES: Readonly<Record<DType, DTypeInfo>> = {
  F64: { bytes: 8, onnx: 11, array: Float64Array },
  F32: { bytes: 4, onnx: 1, array: Float32Array },
  F16: { bytes: 2, onnx: 10, array: Uint16Array },
  BF16: { bytes: 2, onnx: 16, array: Uint16Array },
  I64: { bytes: 8, onnx: 7, array: BigInt64Array },
  I32: { bytes: 4, onnx: 6, array: Int32Array },
  I16: { bytes: 2, onnx: 5, array: Int16Array },
  U16: { bytes: 2, onnx: 4, array: Uint16Array },
  I8: { bytes: 1, onnx: 3, array: Int8Array },
  U8: { bytes: 1, onnx: 2, array: Uint8Array },
  BOOL: { bytes: 1, onnx: 9, array: Uint8Array },
};

export function isDType(s: string): s is DType {
  return Object.prototype.hasOwnProperty.call(DTYPES, s);
}

/** A materialised tensor. `data.length === numel(shape)`; row-major. */
export interface Tensor {
  dtype: DType;
  shape: number[];
  data: TypedArray;
}

/** Number of elements of a shape (1 for a scalar `[]`). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** A float32 tensor. @throws ShapeMismatchError when data.length ≠ numel(shape). */
export function f32(shape: number[], data?: Float32Array): Tensor & { data: Float32Array } {
  const n = numel(shape);
  const d = data ?? new Float32Array(n);
  if (d.length !== n) throw new ShapeMismatchError(`f32: data has ${d.length} elements, shape [${shape}] needs ${n}`);
  return { dtype: 'F32', shape, data: d };
}

/** IEEE half (binary16) bits -> number. */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** bfloat16 bits -> number (exact: bf16 is the top half of float32). */
export function bf16ToFloat(b: number): number {
  u32buf[0] = b << 16;
  return f32buf[0];
}

/** number -> bfloat16 bits, round to nearest even (as torch does). */
export function floatToBf16(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0];
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff)) return 0x7fc0; // NaN
  const rounded = u + 0x7fff + ((u >> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

/** number -> IEEE half bits, round to nearest even. */
export function floatToHalf(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let m = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    if (rem > half || (rem === half && m & 1)) m++;
    return sign | m;
  }
  let m = mant >> 13;
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && m & 1)) {
    m++;
    if (m === 0x400) {
      m = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | m;
}

/** Converts any float or integer tensor to a new Float32Array (F16/BF16 decoded, I64 via Number). */
export function toFloat32(t: Tensor): Float32Array {
  const n = t.data.length;
  if (t.dtype === 'F32') return t.data as Float32Array;
  const out = new Float32Array(n);
  const d = t.data;
  if (t.dtype === 'F16') for (let i = 0; i < n; i++) out[i] = halfToFloat((d as Uint16Array)[i]);
  else if (t.dtype === 'BF16') for (let i = 0; i < n; i++) out[i] = bf16ToFloat((d as Uint16Array)[i]);
  else if (t.dtype === 'I64') for (let i = 0; i < n; i++) out[i] = Number((d as BigInt64Array)[i]);
  else for (let i = 0; i < n; i++) out[i] = Number((d as Float64Array)[i]);
  return out;
}
