/**
 * KV-cache layout of an executable: per layer, K (after RoPE) and V of shape
 * [batch=1, context, num_kv_heads, head_dim] (sequence-major: src/compiler/io-contract.ts), held as uint8 with static per-tensor per-layer
 * scale/zero point (KV8) or as float32. With K-cache centering the K cache holds K − c, c a per-layer
 * float32 [num_kv_heads·head_dim] offset (passes/k-centering.ts).
 *
 * The layout is the one source of the KV8 parameters and offsets: the graphs read them as the
 * initializers of {@link kvLayoutInitializers} (names in src/compiler/io-contract.ts `kvQuantNames`),
 * which the compiler leaves out of the weights and the runtime builds from the layout it loads.
 */
import type { Model } from '../ir/model.js';
import type { KvLayout } from '../ir/executable.js';
import type { Tensor } from '../ir/tensor.js';
import { kvQuantNames } from './io-contract.js';


/** The layout a model compiles to. */
export function kvLayoutOf(model: Model, maxContext: number): KvLayout {
  const c = model.config;
  const quantized = model.quant.kvCache.length === c.numLayers;
  return {
    numLayers: c.numLayers,
    numKvHeads: c.numKvHeads,
    headDim: c.headDim,
    maxContext,
    dtype: quantized ? 'uint8' : 'float32',
    layers: quantized ? model.quant.kvCache.map((l, i) => (model.quant.kCacheOffset ? { ...l, kOffset: model.quant.kCacheOffset[i] } : l)) : [],
  };
}

/**
 * The graph initializers a KV layout defines, by name (src/compiler/io-contract.ts `kvQuantNames`):
 * per layer with KV8, K and V scale float32 [] and zero point uint8 []; with K-cache centering the K
 * offset float32 [1, 1, kv_heads, head_dim]. Empty for a float32 cache.
 */
export function kvLayoutInitializers(l: KvLayout): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  if (l.dtype !== 'uint8') return out;
  l.layers.forEach((p, i) => {
    const n = kvQuantNames(i);
    out.set(n.kScale, { dtype: 'F32', shape: [], data: Float32Array.of(p.k.scale) });
    out.set(n.kZeroPoint, { dtype: 'U8', shape: [], data: Uint8Array.of(p.k.zeroPoint) });
    out.set(n.vScale, { dtype: 'F32', shape: [], data: Float32Array.of(p.v.scale) });
    out.set(n.vZeroPoint, { dtype: 'U8', shape: [], data: Uint8Array.of(p.v.zeroPoint) });
    if (p.kOffset) out.set(n.kOffset, { dtype: 'F32', shape: [1, 1, l.numKvHeads, l.headDim], data: Float32Array.from(p.kOffset) });
  });
  return out;
}
