/**
 * KV-cache layout of an executable: per layer, K (after RoPE) and V of shape
 * [batch=1, num_kv_heads, context, head_dim], held as uint8 with static per-tensor per-layer
 * scale/zero point (KV8) or as float32. With K-cache centering the K cache holds K − c, c a per-layer
 * float32 [num_kv_heads·head_dim] offset (passes/k-centering.ts).
 */
import type { Model } from '../ir/model.js';
import type { KvLayout } from '../ir/executable.js';


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

