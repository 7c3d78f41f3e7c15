/**
 * Exact W8 at the speed of W4 for the simulator's `exact` mode: every 8-bit com.microsoft MatMulNBits
 * is rewritten into two 4-bit ones on the code's nibbles, because onnxruntime 1.30's CPU kernel at
 * accuracy_level 0/1 dequantizes a whole 8-bit matrix on every call (Qwen2-1.5B's down_proj
 * 1536×8960: ~238 ms a token; lm_head 151936×1536: ~5 s) while its 4-bit path is blocked and fast
 * (~0.9 ms and ~15 ms).
 *
 * A W8 code q ∈ [0, 255] of a group with scale s (zero point 128: src/ir/quant.ts) is q = 16·h + l
 * with nibbles h, l ∈ [0, 15], so
 *
 *   (q − 128)·s = (h − 8)·(16·s) + (l − 0)·s
 *
 * — a 4-bit MatMulNBits on the high nibbles with scales 16·s and the default zero point 8, plus one
 * on the low nibbles with scales s and zero point 0 (an explicit uint8 zero_points input, packed two
 * blocks a byte: com.microsoft MatMulNBits, onnxruntime/docs/ContribOperators.md). The integer codes
 * and the group scales are those of the W8 weight; only float32 rounding differs: 16·s is exact (a
 * power of two), and each nibble product and the final sum round where the single (q − 128)·s product
 * rounded before — float reassociation of ~1 ulp per weight, within what a GEMM's summation order
 * already changes.
 *
 * Memory: the two nibble tables hold the W8 codes' bytes once (two half-byte tables), plus a second
 * float32 scale set and the zero points; they are built in JavaScript at load (the 8-bit tables in
 * the HEF are not read by the session, so they stay unmapped). A tied embedding's
 * GatherBlockQuantized keeps reading the 8-bit table (an 8-bit gather is fast).
 */
import type onnxProto from 'onnx-proto';
import type { Tensor } from '../ir/tensor.js';
import { FormatError } from '../core/errors.js';
import type { MappedWeights } from '../ir/executable.js';
import { readMappedWeights } from '../../formats/hef-executable.js';

const INT = 2; // onnx.AttributeProto.AttributeType.INTS = 7, INT = 2

function intAttr(n: onnxProto.onnx.INodeProto, name: string): number | undefined {
  const a = n.attribute?.find((x) => x.name === name);
  return a ? Number(a.i) : undefined;
}

/** A reader of one initializer of the executable (in memory, or read from the mapped file). */
export type WeightReader = (name: string) => Tensor;

/** Reads initializer `name` from the executable's in-memory weights, or else from its mapped file (formats/hef-executable.ts readMappedWeights). */
export function weightReader(weights: ReadonlyMap<string, Tensor>, mapped: MappedWeights | undefined): WeightReader {
  return (name) => {
    const t = weights.get(name);
    if (t) return t;
    if (!mapped) throw new FormatError('weights', `graph reads weight '${name}', which the weights section does not hold`);
    return readMappedWeights(mapped, [name]).get(name)!;
  };
}

/**
 * The nibble tables of W8 codes in MatMulNBits' layout: `codes` uint8 [N, nb, G] (one byte a weight)
 * -> high and low nibbles, each uint8 [N, nb, G/2] (two weights a byte, the even column in the low
 * nibble).
 */
export function splitCodes(codes: Uint8Array, groupSize: number): { hi: Uint8Array; lo: Uint8Array } {
  const hi = new Uint8Array(codes.length / 2);
  const lo = new Uint8Array(codes.length / 2);
  for (let j = 0, k = 0; k < codes.length; j++, k += 2) {
    const a = codes[k];
    const b = codes[k + 1];
    hi[j] = (a >> 4) | (b & 0xf0);
    lo[j] = (a & 0x0f) | ((b & 0x0f) << 4);
  }
  if (groupSize % 2) throw new FormatError('weights', `MatMulNBits block size ${groupSize} is odd`);
  return { hi, lo };
}

/**
 * `model` with every 8-bit MatMulNBits replaced by the two 4-bit ones above (node names `<name>/hi`,
 * `<name>/lo`, summed by `<name>/sum` into the original output), and the initializers they read.
 * Graphs without 8-bit MatMulNBits come back unchanged (the same object) with no weights.
 * @throws FormatError when a node's weights are not where its attributes say
 */
export function splitW8MatMuls(model: onnxProto.onnx.IModelProto, read: WeightReader): { model: onnxProto.onnx.IModelProto; weights: Map<string, Tensor> } {
  const nodes = model.graph?.node ?? [];
  if (!nodes.some((n) => n.opType === 'MatMulNBits' && intAttr(n, 'bits') === 8)) return { model, weights: new Map() };
  const weights = new Map<string, Tensor>();
  const out: onnxProto.onnx.INodeProto[] = [];
  for (const n of nodes) {
    if (n.opType !== 'MatMulNBits' || intAttr(n, 'bits') !== 8) {
      out.push(n);
      continue;
    }
    const [x, qweight, scales, zp, gIdx, bias] = n.input ?? [];
    if (zp || gIdx) throw new FormatError(qweight, 'an 8-bit MatMulNBits with zero points or g_idx (the lowering emits neither)');
    const N = intAttr(n, 'N')!;
    const G = intAttr(n, 'block_size')!;
    const q = read(qweight);
    const s = read(scales);
    const nb = s.data.length / N;
    if (q.data.length !== N * nb * G) throw new FormatError(qweight, `expected ${N}×${nb}×${G} 8-bit codes, got ${q.data.length} bytes`);
    const { hi, lo } = splitCodes(q.data as Uint8Array, G);
    const s16 = Float32Array.from(s.data as Float32Array, (v) => v * 16);
    const names = { hi: `${qweight}.w8hi`, lo: `${qweight}.w8lo`, s16: `${scales}.w8x16`, zp: `${qweight}.w8zp0` };
    weights.set(names.hi, { dtype: 'U8', shape: [N, nb, G / 2], data: hi });
    weights.set(names.lo, { dtype: 'U8', shape: [N, nb, G / 2], data: lo });
    weights.set(names.s16, { dtype: 'F32', shape: [...s.shape], data: s16 });
    weights.set(names.zp, { dtype: 'U8', shape: [N * Math.ceil(nb / 2)], data: new Uint8Array(N * Math.ceil(nb / 2)) });
    const attrs = (n.attribute ?? []).map((a) => (a.name === 'bits' ? { name: 'bits', type: INT, i: 4 } : a));
    const y = n.output![0];
    const hiOut = `${y}/w8hi`;
    const loOut = `${y}/w8lo`;
    out.push(
      { ...n, name: `${n.name}/hi`, input: bias ? [x, names.hi, names.s16, '', '', bias] : [x, names.hi, names.s16], output: [hiOut], attribute: attrs },
      { ...n, name: `${n.name}/lo`, input: [x, names.lo, scales, names.zp], output: [loOut], attribute: attrs },
      { name: `${n.name}/sum`, opType: 'Add', domain: '', input: [hiOut, loOut], output: [y] },
    );
  }
  return { model: { ...model, graph: { ...model.graph!, node: out } }, weights };
}
