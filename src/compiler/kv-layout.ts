/**
 * KV-cache layout of an executable: per layer, K (after RoPE) and V of shape
 * [batch=1, context, num_kv_heads, head_dim] (sequence-major: src/compiler/io-contract.ts), each
 * layer held at its own width — uint8 (KV8) or uint16 (KV16) codes with static per-tensor per-layer
 * scale/zero point, or float32 (src/ir/kv-quant.ts). With K-cache centering the K cache holds K − c,
 * c a per-layer float32 [num_kv_heads·head_dim] offset (passes/k-centering.ts).
 *
 * The layout is the one source of the quantized layers' parameters and offsets: the graphs read them
 * as the initializers of {@link kvLayoutInitializers} (names in src/compiler/io-contract.ts
 * `kvQuantNames`), which the compiler leaves out of the weights and the runtime builds from the
 * layout it loads. (A float layer's K offset, in a layout whose other layers are quantized, stays
 * with the weights, as every offset does in an all-float layout.)
 */
import type { Model } from '../ir/model.js';
import type { KvDtype, KvLayerQuant, KvLayout } from '../ir/executable.js';
import type { Tensor } from '../ir/tensor.js';
import { kvCacheQdq, kvDtypeOf } from '../ir/kv-quant.js';
import { kvQuantNames } from './io-contract.js';

/**
 * The layout a model compiles to: `dtype` the one width of every layer (uint8, uint16, float32) or
 * 'mixed', `layers` the quantized layers' parameters (null for a float layer of a mixed layout;
 * empty when every layer is float).
 * @throws UnsupportedModelError as src/ir/kv-quant.ts kvCacheQdq (ranges that disagree with the
 *   model's precision table)
 */
export function kvLayoutOf(model: Model, maxContext: number): KvLayout {
  const c = model.config;
  const qdq = Array.from({ length: c.numLayers }, (_, i) => kvCacheQdq(model, i, 'compile'));
  const dtypes = new Set<KvDtype>(qdq.map(kvDtypeOf));
  const dtype = dtypes.size === 1 ? [...dtypes][0] : 'mixed';
  const layers = (): (KvLayerQuant | null)[] =>
    qdq.map((q, i) => {
      if (!q) return null;
      const off = model.quant.kCacheOffset?.[i];
      return off ? { k: q.k, v: q.v, kOffset: off } : { k: q.k, v: q.v };
    });
  return { numLayers: c.numLayers, numKvHeads: c.numKvHeads, headDim: c.headDim, maxContext, dtype, layers: dtype === 'float32' ? [] : layers() };
}

/** A KV cache point's zero point as its graph initializer: uint8 [] (KV8) or uint16 [] (`bits: 16`, KV16). */
export function kvZeroPoint(p: { zeroPoint: number; bits?: number }): Tensor {
  return p.bits === 16 ? { dtype: 'U16', shape: [], data: Uint16Array.of(p.zeroPoint) } : { dtype: 'U8', shape: [], data: Uint8Array.of(p.zeroPoint) };
}

/**
 * The graph initializers a KV layout defines, by name (src/compiler/io-contract.ts `kvQuantNames`):
 * per quantized layer, K and V scale float32 [] and zero point uint8 [] (KV8) or uint16 [] (KV16);
 * with K-cache centering the K offset float32 [1, 1, kv_heads, head_dim]. None for float layers.
 */
export function kvLayoutInitializers(l: KvLayout): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  if (l.dtype === 'float32') return out;
  l.layers.forEach((p, i) => {
    if (!p) return;
    const n = kvQuantNames(i);
    out.set(n.kScale, { dtype: 'F32', shape: [], data: Float32Array.of(p.k.scale) });
    out.set(n.kZeroPoint, kvZeroPoint(p.k));
    out.set(n.vScale, { dtype: 'F32', shape: [], data: Float32Array.of(p.v.scale) });
    out.set(n.vZeroPoint, kvZeroPoint(p.v));
    if (p.kOffset) out.set(n.kOffset, { dtype: 'F32', shape: [1, 1, l.numKvHeads, l.headDim], data: Float32Array.from(p.kOffset) });
  });
  return out;
}
