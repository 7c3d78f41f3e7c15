/**
 * Model -> Executable: the prefill graph (static chunk of `prefillLen` tokens) and the decode graph
 * (one token), lowered from the same Model so they read one shared set of weights, plus the
 * tokenizer and the KV-cache layout. An Executable is what a HEF holds (src/compiler/hef-io.ts)
 * and what a backend loads.
 */
import { lowerModel } from './lower.js';
import { kvLayoutOf, type KvLayout } from './kv-layout.js';
import type { Model, ModelConfig, TokenizerFiles, LoraAdapter } from '../ir/model.js';
import type { Tensor } from '../ir/tensor.js';
import type { ValueSpec } from '../../formats/onnx.js';
import { UsageError } from '../core/errors.js';

export interface QuantSchemeSummary {
  weightBits: number;
  weightGroupSize: number;
  weightScheme: 'symmetric' | 'none';
  weightMethod: string;
  activationScheme: 'static-asymmetric-per-tensor-u8' | 'none';
  /** '+k-centered': the K cache holds K − c (calibration/k-centering.ts) */
  kvScheme: 'static-asymmetric-per-tensor-u8' | 'static-asymmetric-per-tensor-u8+k-centered' | 'none';
}

export interface GraphPart {
  /** ModelProto bytes without initializers */
  onnx: Uint8Array;
  /** tokens per call */
  seqLen: number;
  inputs: readonly ValueSpec[];
  outputs: readonly ValueSpec[];
}

export interface Executable {
  modelName: string;
  config: ModelConfig;
  quant: QuantSchemeSummary;
  kvLayout: KvLayout;
  prefill: GraphPart;
  decode: GraphPart;
  /** the one copy of the weights both graphs read, by initializer name */
  weights: Map<string, Tensor>;
  tokenizer: TokenizerFiles;
  /** sha256 of the source weights, when known */
  sourceSha256: string;
  /** LoRA adapters the graphs' `lora.*` inputs can be fed from (absent or empty: none) */
  adapters?: ExecutableAdapter[];
}

/** A LoRA adapter with its tensors in memory (quantized codes + scales, see src/ir/model.ts LoraAdapter). */
export type ExecutableAdapter = Omit<LoraAdapter, 'tensors'> & { tensors: Map<string, Tensor> };

export interface CompileOptions {
  /** static prefill chunk length in tokens (default 128) */
  prefillLen: number;
  /** KV-cache capacity in tokens (default: the model's max_position_embeddings) */
  maxContext?: number;
  modelName?: string;
  sourceSha256?: string;
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

/**
 * Compiles a Model into prefill and decode graphs over one weight store.
 * @throws UsageError for a prefill length < 1 or above the context
 */
export function compile(model: Model, opts: CompileOptions): Executable {
  const maxContext = opts.maxContext ?? model.config.maxPositionEmbeddings;
  if (!Number.isInteger(opts.prefillLen) || opts.prefillLen < 1 || opts.prefillLen > maxContext)
    throw new UsageError(`--prefill-len ${opts.prefillLen}: must be an integer in 1..${maxContext} (the context)`);
  const weights = new Map<string, Tensor>();
  const prefill = lowerModel(model, { seqLen: opts.prefillLen, maxContext, initializers: weights, name: 'prefill' });
  const decode = lowerModel(model, { seqLen: 1, maxContext, initializers: weights, name: 'decode' });
  return {
    modelName: opts.modelName ?? model.config.modelType,
    config: model.config,
    quant: quantSchemeOf(model),
    kvLayout: kvLayoutOf(model, maxContext),
    prefill: { onnx: prefill.encode(false), seqLen: opts.prefillLen, inputs: prefill.inputSpecs, outputs: prefill.outputSpecs },
    decode: { onnx: decode.encode(false), seqLen: 1, inputs: decode.inputSpecs, outputs: decode.outputSpecs },
    weights,
    tokenizer: model.tokenizer,
    sourceSha256: opts.sourceSha256 ?? '',
    adapters: (model.adapters ?? []).map((a) => ({ ...a, tensors: new Map([...a.tensors].map(([n, t]) => [n, t.load()])) })),
  };
}
