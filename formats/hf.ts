/**
 * HuggingFace checkpoint directory -> Model. `config.json` is normalised once into a typed
 * {@link ModelConfig} (Llama, Qwen2, Mistral); weights are read lazily from `model.safetensors` or a
 * sharded `model.safetensors.index.json`; tokenizer files are carried along as text.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FormatError, UnsupportedModelError } from '../src/core/errors.js';
import type { Model, ModelConfig, ModelFamily, LazyTensor, TokenizerFiles } from '../src/ir/model.js';
import { emptyQuantState } from '../src/ir/model.js';
import { ARCHITECTURES } from '../src/ir/architectures.js';
import { SafetensorsCheckpoint } from './safetensors-checkpoint.js';

/** model_type values edgellm accepts, with the family adapter they map to (src/ir/architectures.ts). */
export const SUPPORTED_MODEL_TYPES: Readonly<Record<string, ModelFamily>> = Object.fromEntries(
  Object.values(ARCHITECTURES).flatMap((a) => a.modelTypes.map((t) => [t, a.family])),
);

function readJson(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new FormatError(file, `cannot read: ${(e as Error).message}`);
  }
  try {
    const v = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new FormatError(file, `not valid JSON: ${(e as Error).message}`);
  }
}

function readOptionalText(file: string): string | null {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : null;
}

/**
 * Normalises an HF config.json object once.
 * @param raw the parsed config.json
 * @param file path used in error messages
 * @throws UnsupportedModelError for a `model_type` outside {@link SUPPORTED_MODEL_TYPES}, rope scaling,
 *   or an activation other than silu; FormatError naming the field for a missing or wrongly typed
 *   one (sizes not positive integers, `model_type` / `hidden_act` not strings, `bos_token_id` /
 *   `eos_token_id` entries not non-negative integers).
 */
export function normalizeConfig(raw: Record<string, unknown>, file = 'config.json'): ModelConfig {
  const str = (key: string, fallback: string): string => {
    const v = raw[key] ?? fallback;
    if (typeof v !== 'string') throw new FormatError(file, `field '${key}' must be a string, got ${JSON.stringify(v)}`);
    return v;
  };
  /** A token id: a non-negative integer. */
  const tokenId = (key: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new FormatError(file, `field '${key}' must hold non-negative integer token ids, got ${JSON.stringify(v)}`);
    return v;
  };
  const modelType = str('model_type', '');
  const family = Object.hasOwn(SUPPORTED_MODEL_TYPES, modelType) ? SUPPORTED_MODEL_TYPES[modelType] : undefined;
  if (!family)
    throw new UnsupportedModelError(
      `${file}: unsupported model_type '${modelType}' (supported: ${Object.keys(SUPPORTED_MODEL_TYPES).join(', ')})`,
    );
  const int = (key: string, fallback?: number): number => {
    const v = raw[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new FormatError(file, `field '${key}' must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const num = (key: string, fallback: number): number => {
    const v = raw[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new FormatError(file, `field '${key}' must be a number, got ${JSON.stringify(v)}`);
    return v;
  };
  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0)
    throw new FormatError(file, `num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`);
  const headDim = int('head_dim', Math.floor(hiddenSize / numHeads));
  const act = str('hidden_act', 'silu');
  if (act !== 'silu') throw new UnsupportedModelError(`${file}: hidden_act '${act}' is not supported (supported: silu)`);
  if (raw.rope_scaling != null) throw new UnsupportedModelError(`${file}: rope_scaling is not supported yet`);
  const eos = raw.eos_token_id;
  const eosTokenIds = Array.isArray(eos) ? eos.map((v) => tokenId('eos_token_id', v)) : eos == null ? [] : [tokenId('eos_token_id', eos)];
  const bosTokenId = raw.bos_token_id == null ? null : tokenId('bos_token_id', raw.bos_token_id);
  const bool = (key: string): boolean => {
    const v = raw[key] ?? false;
    if (typeof v !== 'boolean') throw new FormatError(file, `field '${key}' must be true or false, got ${JSON.stringify(v)}`);
    return v;
  };
  const attentionBias = bool('attention_bias');
  return {
    family,
    modelType,
    hiddenSize,
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    maxPositionEmbeddings: int('max_position_embeddings', 2048),
    rmsNormEps: num('rms_norm_eps', 1e-6),
    ropeTheta: num('rope_theta', 10000),
    hiddenAct: 'silu',
    // HF's default is untied for all three families; a checkpoint without lm_head is treated as tied.
    tieWordEmbeddings: bool('tie_word_embeddings'),
    // Qwen2 always has q/k/v biases; Llama/Mistral only with attention_bias (the family adapter says).
    ...ARCHITECTURES[family].biases({ attentionBias, mlpBias: bool('mlp_bias') }),
    bosTokenId,
    eosTokenIds,
  };
}

/** Reads tokenizer.json (required), tokenizer_config.json and generation_config.json (optional). */
export function readTokenizerFiles(dir: string): TokenizerFiles {
  const tj = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(tj)) throw new FormatError(tj, 'missing: edgellm needs a HuggingFace tokenizer.json');
  return {
    tokenizerJson: fs.readFileSync(tj, 'utf8'),
    tokenizerConfigJson: readOptionalText(path.join(dir, 'tokenizer_config.json')),
    generationConfigJson: readOptionalText(path.join(dir, 'generation_config.json')),
  };
}

/**
 * Loads a HuggingFace checkpoint directory as a fp32-state Model. Weights stay on disk until
 * `load()`ed. Checks that every weight the architecture needs exists with the right shape.
 * @throws FormatError (missing/malformed files, missing or mis-shaped tensors), UnsupportedModelError
 */
export function loadHfModel(dir: string): Model {
  const cfgFile = path.join(dir, 'config.json');
  if (!fs.existsSync(cfgFile)) throw new FormatError(cfgFile, 'missing: not a HuggingFace model directory');
  const config = normalizeConfig(readJson(cfgFile), cfgFile);
  const ckpt = SafetensorsCheckpoint.open(dir);
  const weights = new Map<string, LazyTensor>();
  for (const name of ckpt.names()) {
    const e = ckpt.entry(name);
    weights.set(name, { dtype: e.dtype, shape: e.shape, load: () => ckpt.read(name) });
  }
  // Untied checkpoints that still store lm_head are fine; tied ones must not need it.
  if (config.tieWordEmbeddings) weights.delete('lm_head.weight');
  else if (!weights.has('lm_head.weight')) config.tieWordEmbeddings = true;
  checkWeights(config, weights, dir);
  return { config, weights, quant: emptyQuantState(), passes: [], tokenizer: readTokenizerFiles(dir) };
}

/** Expected HF weight names and shapes for a config (W: [out, in]). */
export function expectedWeights(cfg: ModelConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const h = cfg.hiddenSize;
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  m.set('model.embed_tokens.weight', [cfg.vocabSize, h]);
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    m.set(`${p}.input_layernorm.weight`, [h]);
    m.set(`${p}.post_attention_layernorm.weight`, [h]);
    m.set(`${p}.self_attn.q_proj.weight`, [q, h]);
    m.set(`${p}.self_attn.k_proj.weight`, [kv, h]);
    m.set(`${p}.self_attn.v_proj.weight`, [kv, h]);
    m.set(`${p}.self_attn.o_proj.weight`, [h, q]);
    if (cfg.qkvBias) {
      m.set(`${p}.self_attn.q_proj.bias`, [q]);
      m.set(`${p}.self_attn.k_proj.bias`, [kv]);
      m.set(`${p}.self_attn.v_proj.bias`, [kv]);
    }
    if (cfg.oBias) m.set(`${p}.self_attn.o_proj.bias`, [h]);
    m.set(`${p}.mlp.gate_proj.weight`, [cfg.intermediateSize, h]);
    m.set(`${p}.mlp.up_proj.weight`, [cfg.intermediateSize, h]);
    m.set(`${p}.mlp.down_proj.weight`, [h, cfg.intermediateSize]);
    if (cfg.mlpBias) {
      m.set(`${p}.mlp.gate_proj.bias`, [cfg.intermediateSize]);
      m.set(`${p}.mlp.up_proj.bias`, [cfg.intermediateSize]);
      m.set(`${p}.mlp.down_proj.bias`, [h]);
    }
  }
  m.set('model.norm.weight', [h]);
  if (!cfg.tieWordEmbeddings) m.set('lm_head.weight', [cfg.vocabSize, h]);
  return m;
}

/**
 * Checkpoint tensors that HF models carry as buffers, not weights, and transformers ignores on load
 * (`_keys_to_ignore_on_load_unexpected`): RoPE's inv_freq, recomputed from rope_theta.
 */
const IGNORED_TENSORS = /(^|\.)rotary_emb\.inv_freq$/;

function checkWeights(cfg: ModelConfig, weights: Map<string, LazyTensor>, dir: string): void {
  const expected = expectedWeights(cfg);
  // A tensor nothing reads means config.json and the weights disagree (e.g. num_hidden_layers 4 over
  // a 5-layer checkpoint would silently drop a layer): an error naming it, not a silent drop.
  const unused = [...weights.keys()].filter((n) => !expected.has(n) && !IGNORED_TENSORS.test(n));
  if (unused.length)
    throw new FormatError(dir, `tensor '${unused[0]}'${unused.length > 1 ? ` (and ${unused.length - 1} more)` : ''} is in the checkpoint but not in the model config.json describes`);
  for (const [name, shape] of expected) {
    const w = weights.get(name);
    if (!w) throw new FormatError(dir, `tensor '${name}' is missing from the checkpoint`);
    if (w.shape.length !== shape.length || w.shape.some((d, i) => d !== shape[i]))
      throw new FormatError(dir, `tensor '${name}' has shape [${w.shape}], config.json implies [${shape}]`);
  }
}
