/**
 * Model -> Executable: the prefill graph (any number of tokens up to `prefillLen` per call: a
 * symbolic sequence length, so one graph and one backend session serve prompts of every length and
 * single decode steps) and the decode graph (one token, static shapes for a device that needs
 * them), lowered from the same Model so they read one shared set of weights, plus the tokenizer and
 * the KV-cache layout. Both take `logit_positions`, so lm_head runs only on the rows asked for. An Executable (src/ir/executable.ts) is what a HEF holds (formats/hef-executable.ts)
 * and what a backend loads.
 */
import { lowerModel } from './lower.js';
import { kvLayoutOf, kvLayoutInitializers } from './kv-layout.js';
import type { Model } from '../ir/model.js';
import type { Tensor } from '../ir/tensor.js';
import type { Executable } from '../ir/executable.js';
import { quantSchemeOf } from '../ir/quant-scheme.js';
import { UsageError } from '../core/errors.js';

export interface CompileOptions {
  /** most tokens per prefill call (longer prompts go in chunks of this many) */
  prefillLen: number;
  /** KV-cache capacity in tokens (default: the model's max_position_embeddings) */
  maxContext?: number;
  modelName?: string;
  sourceSha256?: string;
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
  const prefill = lowerModel(model, { seqLen: 'dynamic', maxContext, initializers: weights, name: 'prefill', logitPositions: true });
  const decode = lowerModel(model, { seqLen: 1, maxContext, initializers: weights, name: 'decode', logitPositions: true });
  const kvLayout = kvLayoutOf(model, maxContext);
  for (const n of kvLayoutInitializers(kvLayout).keys()) weights.delete(n); // stated once, by the KV layout
  return {
    modelName: opts.modelName ?? model.config.modelType,
    config: model.config,
    quant: quantSchemeOf(model),
    ...(model.precision ? { precision: model.precision } : {}),
    kvLayout,
    prefill: { onnx: prefill.encode(false), seqLen: opts.prefillLen, inputs: prefill.inputSpecs, outputs: prefill.outputSpecs },
    decode: { onnx: decode.encode(false), seqLen: 1, inputs: decode.inputSpecs, outputs: decode.outputSpecs },
    weights,
    tokenizer: model.tokenizer,
    sourceSha256: opts.sourceSha256 ?? '',
    adapters: (model.adapters ?? []).map((a) => ({ ...a, tensors: new Map([...a.tensors].map(([n, t]) => [n, t.load()])) })),
  };
}
