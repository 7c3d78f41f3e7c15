/**
 * PEFT LoRA adapters (HuggingFace `peft`, Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
 * Language Models", §4.1): a directory with `adapter_config.json` and `adapter_model.safetensors`.
 * Reader and writer in one file.
 *
 *   adapter_config.json          peft_type "LORA", r, lora_alpha, target_modules (list or regex),
 *                                rank_pattern / alpha_pattern, use_rslora, bias, fan_in_fan_out, ...
 *   adapter_model.safetensors    base_model.model.<module>.lora_A.weight  [r, in]
 *                                base_model.model.<module>.lora_B.weight  [out, r]
 *
 * A target linear computes y = W·x + s·B·(A·x), s = lora_alpha / r (lora_alpha / √r with
 * `use_rslora`, Kalajdzievski 2023). Module matching follows peft's `check_target_module_exists`: a
 * list entry t matches module `name` when `name == t` or `name` ends with `.t`; a string is a regex
 * that must match the whole name; "all-linear" is every decoder-layer linear. rank_pattern /
 * alpha_pattern keys match as peft's `get_pattern_key`: `^(.*\.)?(key)$`.
 *
 *   const ad = loadPeftAdapter('adapters/wiki', model.config, { baseName: 'stories260K' });
 *   ad.modules[0]  // { linear: 'model.layers.0.self_attn.q_proj', rank: 8, scaling: 2, A, B, ... }
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FormatError, ShapeMismatchError, UnsupportedModelError, UsageError } from '../src/core/errors.js';
import type { ModelConfig } from '../src/ir/model.js';
import { layerLinears, type LinearSpec } from '../src/ir/architectures.js';
import { toFloat32, type Tensor } from '../src/ir/tensor.js';
import { SafetensorsFile, encodeSafetensors } from './safetensors.js';
import { writeFileAtomicSync } from '../src/core/atomic.js';

export const PEFT_CONFIG = 'adapter_config.json';
export const PEFT_WEIGHTS = 'adapter_model.safetensors';
const PEFT_BIN = 'adapter_model.bin';
/** Key prefix peft writes before the base model's own module names. */
const KEY_PREFIX = 'base_model.model.';

/** The adapter_config.json fields edgellm uses, normalised. */
export interface PeftLoraConfig {
  r: number;
  loraAlpha: number;
  /** list of module-name suffixes, or a regex over the whole module name, or 'all-linear' */
  targetModules: string[] | string;
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
  useRslora: boolean;
  /** layers_to_transform, when set */
  layersToTransform: number[] | null;
  baseModelNameOrPath: string | null;
  /** the file's JSON as read */
  raw: Record<string, unknown>;
}

/** One adapted linear. */
export interface PeftLoraModule {
  /** base linear name, e.g. `model.layers.0.self_attn.q_proj` */
  linear: string;
  role: LinearSpec['role'];
  layer: number;
  rank: number;
  alpha: number;
  /** s: alpha/r, or alpha/√r with rslora */
  scaling: number;
  inFeatures: number;
  outFeatures: number;
  /** A: float32 [rank, in] */
  A: Float32Array;
  /** B: float32 [out, rank] */
  B: Float32Array;
}

export interface PeftAdapter {
  dir: string;
  config: PeftLoraConfig;
  /** adapted linears in execution order */
  modules: PeftLoraModule[];
  /** non-fatal findings (e.g. base_model_name_or_path differs); the caller shows them */
  warnings: string[];
}

export interface LoadPeftOptions {
  /** the base model's name (HAR modelName); a different `base_model_name_or_path` is a warning */
  baseName?: string;
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isEmpty = (v: unknown) => v == null || v === false || (Array.isArray(v) && v.length === 0) || (isObj(v) && Object.keys(v).length === 0);

/**
 * Reads and validates adapter_config.json.
 * @throws FormatError (missing/malformed file or field), UnsupportedModelError (peft_type ≠ LORA,
 *   DoRA, bias ≠ none, modules_to_save, layer_replication and other options edgellm cannot execute)
 */
export function readPeftConfig(dir: string): PeftLoraConfig {
  const file = path.join(dir, PEFT_CONFIG);
  if (!fs.existsSync(file)) throw new FormatError(file, 'missing: not a PEFT adapter directory');
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new FormatError(file, `not valid JSON: ${(e as Error).message}`);
  }
  if (!isObj(raw)) throw new FormatError(file, 'must be a JSON object');
  const unsupported = (what: string) => new UnsupportedModelError(`${file}: ${what} is not supported (edgellm executes plain LoRA: y = W·x + s·B·A·x)`);
  if (raw.peft_type !== 'LORA') throw unsupported(`peft_type ${JSON.stringify(raw.peft_type)} (only "LORA")`);
  if (raw.use_dora === true) throw unsupported('DoRA (use_dora: true)');
  if ((raw.bias ?? 'none') !== 'none') throw unsupported(`bias ${JSON.stringify(raw.bias)} (only "none")`);
  if (raw.lora_bias === true) throw unsupported('lora_bias: true');
  for (const key of ['modules_to_save', 'layer_replication', 'megatron_config', 'target_parameters', 'trainable_token_indices'])
    if (!isEmpty(raw[key])) throw unsupported(`${key} ${JSON.stringify(raw[key])}`);
  if (!isEmpty(raw.exclude_modules)) throw unsupported('exclude_modules');
  const lp = raw.layers_pattern;
  if (!isEmpty(lp) && lp !== 'layers' && !(Array.isArray(lp) && lp.every((p) => p === 'layers'))) throw unsupported(`layers_pattern ${JSON.stringify(lp)}`);
  const posInt = (key: string): number => {
    const v = raw[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new FormatError(file, `field '${key}' must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const r = posInt('r');
  const alpha = raw.lora_alpha ?? 8; // peft's default
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) throw new FormatError(file, `field 'lora_alpha' must be a number, got ${JSON.stringify(alpha)}`);
  const tm = raw.target_modules;
  if (!(typeof tm === 'string' || (Array.isArray(tm) && tm.length > 0 && tm.every((t) => typeof t === 'string'))))
    throw new FormatError(file, `field 'target_modules' must be a non-empty list of module names or a regex string, got ${JSON.stringify(tm)}`);
  const pattern = (key: string, integer: boolean): Record<string, number> => {
    const v = raw[key] ?? {};
    if (!isObj(v) || !Object.values(v).every((x) => typeof x === 'number' && x > 0 && (!integer || Number.isInteger(x))))
      throw new FormatError(file, `field '${key}' must map module patterns to positive ${integer ? 'integers' : 'numbers'}, got ${JSON.stringify(v)}`);
    for (const k of Object.keys(v)) {
      try {
        patternRegExp(k);
      } catch (e) {
        throw new FormatError(file, `field '${key}': key ${JSON.stringify(k)} is not a valid regex: ${(e as Error).message}`);
      }
    }
    return v as Record<string, number>;
  };
  let layers: number[] | null = null;
  const ltt = raw.layers_to_transform;
  if (typeof ltt === 'number') layers = [ltt];
  else if (Array.isArray(ltt) && ltt.length > 0) layers = ltt as number[];
  if (layers && !layers.every((l) => Number.isInteger(l) && l >= 0)) throw new FormatError(file, `field 'layers_to_transform' must hold layer indices, got ${JSON.stringify(ltt)}`);
  const base = raw.base_model_name_or_path;
  return {
    r,
    loraAlpha: alpha,
    targetModules: tm as string[] | string,
    rankPattern: pattern('rank_pattern', true),
    alphaPattern: pattern('alpha_pattern', false),
    useRslora: raw.use_rslora === true,
    layersToTransform: layers,
    baseModelNameOrPath: typeof base === 'string' ? base : null,
    raw,
  };
}

/** The regex a rank_pattern / alpha_pattern key stands for (peft's `get_pattern_key`). @throws SyntaxError for an invalid key */
function patternRegExp(key: string): RegExp {
  return new RegExp(`^(.*\\.)?(?:${key})$`);
}

/** peft's `get_pattern_key`: the first pattern key matching `^(.*\.)?(key)$`, or undefined (keys are checked by readPeftConfig). */
function patternValue(patterns: Record<string, number>, name: string): number | undefined {
  for (const [key, v] of Object.entries(patterns)) if (patternRegExp(key).test(name)) return v;
  return undefined;
}

/** Module names of the base, linear or not, that a PEFT target may name (HF Llama/Qwen2/Mistral). */
function baseModuleNames(cfg: ModelConfig): string[] {
  const names = ['model', 'model.embed_tokens', 'model.layers', 'model.norm', 'model.rotary_emb', 'lm_head'];
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    names.push(p, `${p}.self_attn`, `${p}.mlp`, `${p}.mlp.act_fn`, `${p}.input_layernorm`, `${p}.post_attention_layernorm`);
    names.push(...layerLinears(cfg, i).map((s) => s.name));
  }
  return names;
}

/**
 * The decoder-layer linears an adapter config targets.
 * @throws UnsupportedModelError when a target names a module the base does not have, or a module
 *   edgellm cannot adapt (embeddings, lm_head, norms)
 */
export function targetLinears(config: PeftLoraConfig, cfg: ModelConfig, file = PEFT_CONFIG): LinearSpec[] {
  const linears = Array.from({ length: cfg.numLayers }, (_, i) => layerLinears(cfg, i)).flat();
  const linearNames = new Set(linears.map((s) => s.name));
  const all = baseModuleNames(cfg);
  const tm = config.targetModules;
  let matches: (name: string) => boolean;
  if (tm === 'all-linear') matches = (n) => linearNames.has(n);
  else if (typeof tm === 'string') {
    let re: RegExp;
    try {
      re = new RegExp(`^(?:${tm})$`);
    } catch (e) {
      throw new FormatError(file, `target_modules regex ${JSON.stringify(tm)} is invalid: ${(e as Error).message}`);
    }
    matches = (n) => re.test(n);
    if (!all.some(matches)) throw new UnsupportedModelError(`${file}: target_modules regex ${JSON.stringify(tm)} matches no module of the base model`);
  } else {
    const hit = (n: string, t: string) => n === t || n.endsWith(`.${t}`);
    for (const t of tm)
      if (!all.some((n) => hit(n, t)))
        throw new UnsupportedModelError(
          `${file}: target module '${t}' does not exist in the base model (${cfg.modelType}: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)`,
        );
    matches = (n) => tm.some((t) => hit(n, t));
  }
  const bad = all.filter((n) => matches(n) && !linearNames.has(n));
  if (bad.length) throw new UnsupportedModelError(`${file}: LoRA on '${bad[0]}' is not supported (only the decoder-layer linears q/k/v/o/gate/up/down)`);
  return linears.filter((s) => matches(s.name) && (!config.layersToTransform || config.layersToTransform.includes(s.layer)));
}

/**
 * Loads a PEFT LoRA adapter for a base with config `cfg`.
 * @returns the adapted linears with float32 A [r, in] and B [out, r], and warnings
 * @throws UsageError (no such directory), FormatError (a PyTorch `.bin` adapter: convert it to
 *   safetensors; missing or unexpected tensors), UnsupportedModelError (see {@link readPeftConfig},
 *   {@link targetLinears}; DoRA magnitude tensors), ShapeMismatchError (A or B disagrees with the
 *   base linear or the configured rank)
 */
export function loadPeftAdapter(dir: string, cfg: ModelConfig, opts: LoadPeftOptions = {}): PeftAdapter {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new UsageError(`${dir}: no such adapter directory`);
  const wfile = path.join(dir, PEFT_WEIGHTS);
  if (!fs.existsSync(wfile)) {
    if (fs.existsSync(path.join(dir, PEFT_BIN)))
      throw new FormatError(
        path.join(dir, PEFT_BIN),
        `PyTorch pickle adapters are not read (unsafe and torch-only); convert it to ${PEFT_WEIGHTS}, e.g. PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)`,
      );
    throw new FormatError(wfile, 'missing: a PEFT adapter needs adapter_model.safetensors');
  }
  const config = readPeftConfig(dir);
  const cfile = path.join(dir, PEFT_CONFIG);
  const warnings: string[] = [];
  if (config.raw.fan_in_fan_out === true)
    warnings.push(`${cfile}: fan_in_fan_out is true but the targets are plain linears; ignored, as peft does`);
  if (opts.baseName && config.baseModelNameOrPath != null) {
    const want = opts.baseName.replace(/\/+$/, '');
    const got = config.baseModelNameOrPath.replace(/\/+$/, '');
    if (got !== want && path.basename(got) !== path.basename(want))
      warnings.push(`${cfile}: base_model_name_or_path '${config.baseModelNameOrPath}' differs from the base model '${opts.baseName}'; applying it anyway`);
  }
  const specs = targetLinears(config, cfg, cfile);
  const file = SafetensorsFile.open(wfile);
  try {
    const keys = new Set(file.entries.keys());
    const take = (key: string): Tensor => {
      keys.delete(key);
      return file.read(key);
    };
    const modules: PeftLoraModule[] = [];
    for (const s of specs) {
      const rank = patternValue(config.rankPattern, s.name) ?? config.r;
      const alpha = patternValue(config.alphaPattern, s.name) ?? config.loraAlpha;
      const k = `${KEY_PREFIX}${s.name}`;
      for (const part of ['lora_A', 'lora_B'])
        if (!keys.has(`${k}.${part}.weight`)) throw new FormatError(wfile, `tensor '${k}.${part}.weight' is missing (target_modules selects ${s.name})`);
      const A = take(`${k}.lora_A.weight`);
      const B = take(`${k}.lora_B.weight`);
      const shape = (t: Tensor) => `[${t.shape.join(', ')}]`;
      if (A.shape.length !== 2 || A.shape[0] !== rank || A.shape[1] !== s.inFeatures)
        throw new ShapeMismatchError(`${wfile}: ${s.name}.lora_A is ${shape(A)}, the base linear needs [r, in] = [${rank}, ${s.inFeatures}]`);
      if (B.shape.length !== 2 || B.shape[0] !== s.outFeatures || B.shape[1] !== rank)
        throw new ShapeMismatchError(`${wfile}: ${s.name}.lora_B is ${shape(B)}, the base linear needs [out, r] = [${s.outFeatures}, ${rank}]`);
      const scaling = config.useRslora ? alpha / Math.sqrt(rank) : alpha / rank;
      modules.push({ linear: s.name, role: s.role, layer: s.layer, rank, alpha, scaling, inFeatures: s.inFeatures, outFeatures: s.outFeatures, A: Float32Array.from(toFloat32(A)), B: Float32Array.from(toFloat32(B)) });
    }
    if (keys.size) {
      const extra = [...keys];
      const dora = extra.find((k) => k.includes('lora_magnitude_vector'));
      if (dora) throw new UnsupportedModelError(`${wfile}: DoRA tensor '${dora}' is not supported (plain LoRA only)`);
      const m = /^base_model\.model\.(.+)\.lora_[AB]\.weight$/.exec(extra[0]);
      if (m && !baseModuleNames(cfg).includes(m[1])) throw new UnsupportedModelError(`${wfile}: tensor '${extra[0]}' adapts '${m[1]}', which the base model does not have`);
      throw new FormatError(wfile, `${extra.length} tensor(s) not selected by target_modules, e.g. '${extra[0]}'`);
    }
    if (modules.length === 0) throw new UnsupportedModelError(`${cfile}: target_modules selects no linear of the base model`);
    return { dir, config, modules, warnings };
  } finally {
    file.close();
  }
}

/** What {@link writePeftAdapter} writes: one module's float A [r, in] and B [out, r]. */
export interface PeftModuleWeights {
  linear: string;
  A: Float32Array;
  B: Float32Array;
  rank: number;
  inFeatures: number;
  outFeatures: number;
}

/**
 * Writes a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, float32)
 * that peft itself can load; each file is written atomically. `config` is written as given, with
 * peft's defaults for the fields it omits.
 */
export function writePeftAdapter(dir: string, config: Record<string, unknown>, modules: PeftModuleWeights[]): void {
  fs.mkdirSync(dir, { recursive: true });
  const full = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    lora_dropout: 0,
    use_dora: false,
    use_rslora: false,
    rank_pattern: {},
    alpha_pattern: {},
    modules_to_save: null,
    ...config,
  };
  const tensors: [string, Tensor][] = [];
  for (const m of modules) {
    tensors.push([`${KEY_PREFIX}${m.linear}.lora_A.weight`, { dtype: 'F32', shape: [m.rank, m.inFeatures], data: m.A }]);
    tensors.push([`${KEY_PREFIX}${m.linear}.lora_B.weight`, { dtype: 'F32', shape: [m.outFeatures, m.rank], data: m.B }]);
  }
  writeFileAtomicSync(path.join(dir, PEFT_WEIGHTS), encodeSafetensors(tensors, { format: 'pt' }));
  writeFileAtomicSync(path.join(dir, PEFT_CONFIG), JSON.stringify(full, null, 2) + '\n');
}
