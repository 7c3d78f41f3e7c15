/**
 * The quantization scheme of a model in one summary (weights, activations, KV cache), as the HAR
 * manifest, the HEF header, `inspect` and the eval report state it.
 */
import type { Model } from './model.js';

export interface QuantSchemeSummary {
  weightBits: number;
  weightGroupSize: number;
  weightScheme: 'symmetric' | 'none';
  weightMethod: string;
  activationScheme: 'static-asymmetric-per-tensor-u8' | 'none';
  /** '+k-centered': the K cache holds K − c (passes/k-centering.ts) */
  kvScheme: 'static-asymmetric-per-tensor-u8' | 'static-asymmetric-per-tensor-u8+k-centered' | 'none';
}

/** Summarises a Model's quantization state. */
export function quantSchemeOf(model: Model): QuantSchemeSummary {
  const lin = Object.values(model.quant.linears);
  return {
    weightBits: lin.length ? lin[0].bits : 32,
    weightGroupSize: lin.length ? lin[0].groupSize : 0,
    weightScheme: lin.length ? 'symmetric' : 'none',
    weightMethod: lin.length ? [...new Set(lin.map((l) => l.method))].join('+') : 'none',
    activationScheme: Object.keys(model.quant.activations).length ? 'static-asymmetric-per-tensor-u8' : 'none',
    kvScheme: !model.quant.kvCache.length ? 'none' : model.quant.kCacheOffset ? 'static-asymmetric-per-tensor-u8+k-centered' : 'static-asymmetric-per-tensor-u8',
  };
}
