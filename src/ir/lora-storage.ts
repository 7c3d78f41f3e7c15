/**
 * How a LoRA adapter's A and B are stored (Hu et al. 2021, §4.1: h = W·x + s·B·A·x): float32, int8
 * per output channel or 4-bit group-wise, through the codecs of src/ir/codecs.ts; and how the runtime
 * and the passes read them back as the float32 matrices the graph consumes.
 */
import type { Model, LoraAdapter, LoraModule } from './model.js';
import type { Tensor } from './tensor.js';
import { toFloat32 } from './tensor.js';
import type { ExecutableAdapter } from './executable.js';
import { matrixCodec } from './codecs.js';
import { decoderLinear } from './architectures.js';
import { EdgeLLMError, ShapeMismatchError } from '../core/errors.js';

/** A LoraAdapter whose tensors are in memory (what an Executable holds). */
export type LoraAdapterData = ExecutableAdapter;

/** Materialises an adapter's tensors. */
export function adapterData(a: LoraAdapter): LoraAdapterData {
  return { ...a, tensors: new Map([...a.tensors].map(([n, t]) => [n, t.load()])) };
}

/** The 4-bit group size used for a matrix `cols` wide: `groupSize`, capped at cols rounded up to even. */
export function loraGroupSize(cols: number, groupSize: number): number {
  return Math.min(groupSize, cols + (cols % 2));
}

/**
 * Quantizes one LoRA matrix W float32 [rows, cols] (rows = output channels: r for A, out for B).
 * - 8: int8 symmetric per row (codec i8-per-channel): qweight I8 [rows, cols], scales F32 [rows, 1]
 * - 4: 4-bit symmetric group-wise (codec w4-groupwise): qweight U8 [rows, n_blocks, g/2], scales F32 [rows, n_blocks]
 * @returns the tensors to store under `prefix` (`.qweight`, `.scales`), or `prefix` itself (F32) for 32
 * @throws ShapeMismatchError when W does not have rows·cols elements
 */
export function quantizeLoraMatrix(W: Float32Array, rows: number, cols: number, bits: 32 | 8 | 4, groupSize: number, prefix: string): [string, Tensor][] {
  if (W.length !== rows * cols) throw new ShapeMismatchError(`quantizeLoraMatrix ${prefix}: ${W.length} elements, shape [${rows}, ${cols}] needs ${rows * cols}`);
  if (bits === 32) return [[prefix, { dtype: 'F32', shape: [rows, cols], data: Float32Array.from(W) }]];
  const e = matrixCodec(bits).encode(W, rows, cols, bits === 4 ? loraGroupSize(cols, groupSize) : undefined);
  return [
    [`${prefix}.qweight`, { dtype: bits === 4 ? 'U8' : 'I8', shape: e.codesShape, data: e.codes }],
    [`${prefix}.scales`, { dtype: 'F32', shape: e.scalesShape, data: e.scales }],
  ];
}

/**
 * Inverse of {@link quantizeLoraMatrix}: float32 [rows, cols], w = q·scale (int8) or (q − 8)·scale
 * (4-bit), each product rounded to float32 as DequantizeLinear computes it.
 * @throws EdgeLLMError when a tensor is missing
 */
export function dequantizeLoraMatrix(get: (name: string) => Tensor | undefined, prefix: string, rows: number, cols: number, bits: 32 | 8 | 4, groupSize: number): Float32Array {
  const need = (n: string) => {
    const t = get(n);
    if (!t) throw new EdgeLLMError(`LoRA tensor '${n}' is missing`);
    return t;
  };
  if (bits === 32) return Float32Array.from(toFloat32(need(prefix)));
  const e = { codes: need(`${prefix}.qweight`).data as Uint8Array | Int8Array, scales: toFloat32(need(`${prefix}.scales`)) };
  return matrixCodec(bits).decode(e, rows, cols, bits === 4 ? loraGroupSize(cols, groupSize) : undefined);
}

/**
 * Shapes of a module's A [rank, in] and B [out, rank] from the model config.
 * @throws EdgeLLMError when `linear` is not a decoder-layer linear
 */
export function loraModuleDims(model: Pick<Model, 'config'>, linear: string): { inFeatures: number; outFeatures: number } {
  const spec = decoderLinear(model.config, linear);
  if (!spec) throw new EdgeLLMError(`LoRA module '${linear}' is not a decoder-layer linear`);
  return spec;
}

/**
 * One module's dequantized A float32 [rank, in] and scaled B float32 [out, rank] (B·s, rounded to
 * float32), as the graph consumes them.
 */
export function loraMatrices(model: Pick<Model, 'config'>, a: LoraAdapterData, m: LoraModule): { A: Float32Array; B: Float32Array } {
  const { inFeatures, outFeatures } = loraModuleDims(model, m.linear);
  const get = (n: string) => a.tensors.get(n);
  const A = dequantizeLoraMatrix(get, `${m.linear}.lora_A`, m.rank, inFeatures, a.bits, a.groupSize);
  const B = dequantizeLoraMatrix(get, `${m.linear}.lora_B`, outFeatures, m.rank, a.bits, a.groupSize);
  for (let i = 0; i < B.length; i++) B[i] = Math.fround(B[i] * m.scaling);
  return { A, B };
}
