/**
 * The static activation and KV-cache quantization of a Model as the compiled graphs execute it
 * (src/compiler/lowering.ts actPoint / cacheAppend / kCenter), for the reference forward's 'static'
 * mode (src/ir/reference.ts). Every QDQ point is QuantizeLinear then DequantizeLinear on float32
 * values, with the one rounding definition of src/ir/quant.ts ({@link quantizeLinear},
 * {@link dequantizeLinear}):
 *
 *   x ← fl32((q − zp)·s),   q = saturate(roundHalfEven(fl32(fl32(x) / s)) + zp)
 *
 * Points, per decoder layer i (names as src/ir/architectures.ts actPointName and
 * src/compiler/io-contract.ts kvPoints give them):
 *   model.layers.{i}.attn_in       rmsnorm(x)·γ_in, the q/k/v input             A8, A16 or float
 *   model.layers.{i}.k_cache       K after RoPE, after online R3, minus c_i     KV8, KV16 or float (the cache holds the codes)
 *   model.layers.{i}.v_cache       V (v_proj output)                            KV8, KV16 or float
 *   model.layers.{i}.o_proj_in     the attention output                          A8, A16 or float
 *   model.layers.{i}.mlp_in        rmsnorm(h)·γ_post, the gate/up input          A8, A16 or float
 *   model.layers.{i}.down_proj_in  silu(gate)·up, after online R4               A8, A16 or float
 * and lm_head_in (the final norm's output). Attention reads the dequantized cache, i.e. K − c
 * (a softmax row is invariant to the constant q·c, so this is the graph's attention, not an
 * approximation of it).
 *
 * The graphs switch the same way: activation QDQ when model.quant.activations has entries, each
 * point at the width src/ir/quant.ts activationQdq gives it (the lowering's rule: uint8, uint16 for
 * a range stored with `bits: 16`, or none where the precision table makes the point float); the KV
 * cache when model.quant.kvCache has one entry per layer, each layer at the width
 * src/ir/kv-quant.ts kvCacheQdq gives it (uint8, uint16 for ranges with `bits: 16`, float for a null
 * entry), centering whenever model.quant.kCacheOffset is set. Out of scope: the LoRA branch and its intermediate A8 point (the
 * reference computes the base model, which is what the graphs compute with zero adapter feeds).
 */
import { ShapeMismatchError } from '../core/errors.js';
import { actPointName, type LinearInput } from './architectures.js';
import type { Model, QParams } from './model.js';
import { activationQdq, dequantizeLinear, quantizeLinear, type QdqBits } from './quant.js';
import { hasKvRanges, kvCacheQdq } from './kv-quant.js';

/**
 * How much of a model's quantization the reference forward applies:
 * - 'weights' (default): the 4-bit weights are dequantized; activations stay float64 and the KV
 *   cache float64 ("weights only", the W4 emulation level; A8/KV8 ranges are ignored);
 * - 'static': also every static activation point at its width (A8, A16; float points untouched) and
 *   the KV cache at each layer's width (KV8, KV16; float layers untouched; K-cache centering
 *   included), emulating the compiled graphs' QDQ pairs in float32
 *   (see src/ir/reference-quant.ts).
 */
export type ReferenceQuantization = 'weights' | 'static';

/** What one QDQ point saw and produced, for diagnostics (e.g. counting codes that differ from a graph's). */
export interface QdqRecord {
  /** point name, e.g. `model.layers.0.attn_in`, `model.layers.0.k_cache`, `lm_head_in` */
  point: string;
  /** the float32 values entering QuantizeLinear, [T, features] row-major (K/V: [T, kv_heads·head_dim]) */
  input: Float32Array;
  /**
   * their codes, same shape, in [0, 2^bits − 1] (Uint8Array for 8 bits, Uint16Array for 16). The hook
   * may overwrite entries: the reference dequantizes the codes held here when the hook returns (e.g.
   * to follow another implementation's choice where a value sits on a rounding boundary, as
   * test/ir/reference-static.test.ts does)
   */
  codes: Uint8Array | Uint16Array;
  params: QParams;
  /** the grid: 8 (uint8) or 16 (uint16) */
  bits: QdqBits;
}

/** The KV-cache point names of layer i (the strings of src/compiler/io-contract.ts kvPoints). */
export function kvPointNames(i: number): { k: string; v: string } {
  return { k: `model.layers.${i}.k_cache`, v: `model.layers.${i}.v_cache` };
}

/** The static activation and KV-cache QDQ points of one model, applied in place to float64 activations. */
export class StaticQdq {
  /** activation QDQ on: the model has activation ranges */
  readonly activations: boolean;
  /** KV quantization on: one entry per layer (a K/V range pair, or null for a float layer) */
  readonly kvCache: boolean;

  constructor(
    readonly model: Model,
    private readonly onQdq?: (r: QdqRecord) => void,
  ) {
    this.activations = Object.keys(model.quant.activations).length > 0;
    this.kvCache = hasKvRanges(model);
  }

  /**
   * Fake quantization at activation point (layer, input), in place on x: [T, features], at the
   * point's width (8 or 16 bits; a float point is left as it is).
   * @throws EdgeLLMError (UnsupportedModelError) when the model quantizes activations but has no
   *   range for this point, or a range of another width than its precision table says
   */
  activation(x: Float64Array, layer: number, input: LinearInput): void {
    if (!this.activations) return;
    const point = actPointName(layer, input);
    const qdq = activationQdq(this.model, point, 'referenceForward');
    if (qdq) this.qdq(x, qdq.params, qdq.bits, point);
  }

  /**
   * KV8 / KV16 fake quantization of layer i's new K or V rows, in place on x: [T, kv_heads·head_dim],
   * at the layer's width (a float layer is left as it is).
   * @throws EdgeLLMError (UnsupportedModelError) as src/ir/kv-quant.ts kvCacheQdq: ranges of another
   *   width than the precision table gives the layer, or K and V ranges of different widths
   */
  cache(x: Float64Array, layer: number, which: 'k' | 'v'): void {
    if (!this.kvCache) return;
    const q = kvCacheQdq(this.model, layer, 'referenceForward');
    if (q) this.qdq(x, which === 'k' ? q.k : q.v, q.bits, kvPointNames(layer)[which]);
  }

  /**
   * K-cache centering of layer i, in place on the post-RoPE (post-R3) k: [T, kv_heads·head_dim]:
   * k ← k − c with c the float32 offsets model.quant.kCacheOffset[i]; a no-op without offsets.
   * @throws ShapeMismatchError when the offsets do not have kv_heads·head_dim values
   */
  center(k: Float64Array, layer: number): void {
    const off = this.model.quant.kCacheOffset?.[layer];
    if (!off) return;
    const n = this.model.config.numKvHeads * this.model.config.headDim;
    if (off.length !== n) throw new ShapeMismatchError(`referenceForward: layer ${layer} K-cache offset has ${off.length} values, expected ${n}`);
    for (let i = 0; i < k.length; i++) k[i] -= Math.fround(off[i % n]);
  }

  /**
   * x ← DequantizeLinear(QuantizeLinear(x)), element-wise, float32 results stored in x. With a
   * hook, the codes are handed to it first and the codes the record holds when it returns are the
   * ones dequantized.
   */
  private qdq(x: Float64Array, p: QParams, bits: QdqBits, point: string): void {
    if (!this.onQdq) {
      for (let i = 0; i < x.length; i++) x[i] = dequantizeLinear(quantizeLinear(x[i], p, bits), p);
      return;
    }
    const input = Float32Array.from(x);
    const codes = bits === 8 ? new Uint8Array(x.length) : new Uint16Array(x.length);
    for (let i = 0; i < x.length; i++) codes[i] = quantizeLinear(input[i], p, bits);
    const r: QdqRecord = { point, input, codes, params: p, bits };
    this.onQdq(r);
    for (let i = 0; i < x.length; i++) x[i] = dequantizeLinear(r.codes[i], p);
  }
}
