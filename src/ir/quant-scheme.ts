/**
 * The quantization scheme of a model in one summary (weights, activations, KV cache), as the HAR
 * manifest, the HEF header, `inspect` and the eval report state it.
 */
import type { Model } from './model.js';
import { lmHead, sharesQuantizedEmbedding } from './architectures.js';

export interface QuantSchemeSummary {
  weightBits: number;
  weightGroupSize: number;
  weightScheme: 'symmetric' | 'none';
  weightMethod: string;
  activationScheme: 'static-asymmetric-per-tensor-u8' | 'none';
  /** '+k-centered': the K cache holds K − c (passes/k-centering.ts) */
  kvScheme: 'static-asymmetric-per-tensor-u8' | 'static-asymmetric-per-tensor-u8+k-centered' | 'none';
  /** lm_head: 4 (W4 group-wise) or 32 (float), and its group size (0 when float) */
  lmHeadBits: number;
  lmHeadGroupSize: number;
  /** the tied embedding lookup reads lm_head's 4-bit table (src/ir/architectures.ts sharesQuantizedEmbedding) */
  embeddingShared: boolean;
}

/** Summarises a Model's quantization state. */
export function quantSchemeOf(model: Model): QuantSchemeSummary {
  const head = model.quant.linears[lmHead(model.config).name];
  const lin = Object.entries(model.quant.linears)
    .filter(([n]) => n !== lmHead(model.config).name)
    .map(([, l]) => l);
  return {
    weightBits: lin.length ? lin[0].bits : 32,
    weightGroupSize: lin.length ? lin[0].groupSize : 0,
    weightScheme: lin.length ? 'symmetric' : 'none',
    weightMethod: lin.length ? [...new Set(lin.map((l) => l.method))].join('+') : 'none',
    activationScheme: Object.keys(model.quant.activations).length ? 'static-asymmetric-per-tensor-u8' : 'none',
    kvScheme: !model.quant.kvCache.length ? 'none' : model.quant.kCacheOffset ? 'static-asymmetric-per-tensor-u8+k-centered' : 'static-asymmetric-per-tensor-u8',
    lmHeadBits: head ? head.bits : 32,
    lmHeadGroupSize: head ? head.groupSize : 0,
    embeddingShared: sharesQuantizedEmbedding(model),
  };
}
