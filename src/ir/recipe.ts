/**
 * Recipes: per-module precision by glob, resolved against a model into its {@link PrecisionTable}
 * (src/ir/precision.ts), as the Dataflow Compiler's model script sets a precision per layer and
 * llama.cpp's `--tensor-type` / GPTQModel's `dynamic` override the base type per tensor.
 *
 *   defaults:  {weight_bits: 4, group_size: 32, weight_method: gptq, act_bits: 8, kv_bits: 8, observer: mse}
 *   overrides:                                   (in order: a later entry wins, key by key)
 *     model.layers.*.mlp.down_proj: {weight_bits: 8}
 *     lm_head: {weight_bits: 8}
 *
 * Resolution ({@link resolveRecipe}), for every module of the model (linears, activation points, KV
 * points; names in src/ir/precision.ts):
 *   settings ← {@link DEFAULT_SETTINGS}, then the recipe's `defaults` key by key,
 *   then {@link BUILTIN_OVERRIDES} (lm_head: {group_size: 16}), then the recipe's `overrides` in file
 *   order, each setting the keys it names on the modules its glob matches (of the kinds the key
 *   applies to: weight_bits, group_size, weight_method → linears; act_bits → activation points;
 *   kv_bits → KV points; observer → activation and KV points).
 * So a recipe is a change to the default recipe, as the CLI flags are: `defaults: {group_size: 64}`
 * leaves lm_head at 16, like `--group-size 64`.
 *
 * Globs match a module name whole or up to a `.` ({@link globRegExp}): `*` any characters but `.`
 * (within one name segment), `**` any characters, `?` one character but `.`, `{a,b}` either;
 * `model.layers.0` matches every module of layer 0, `model.layers.*.mlp` every MLP linear.
 *
 * Every problem is a {@link RecipeError}: one line naming the file and the key, exit code 2.
 */
import { UsageError } from '../core/errors.js';
import type { ModelConfig } from './model.js';
import { activationPoints, allLinears, lmHead, type LinearSpec } from './architectures.js';
import {
  kvPointName,
  OBSERVER_NAMES,
  POINT_BITS,
  WEIGHT_BITS,
  WEIGHT_METHODS,
  type LinearPrecision,
  type ObserverName,
  type PointBits,
  type PointPrecision,
  type PrecisionTable,
  type RecipeText,
  type RecipeWeightBits,
  type WeightMethod,
} from './precision.js';

/** A recipe problem: `<file>: <key>: <problem>`, a usage error (exit code 2). */
export class RecipeError extends UsageError {
  constructor(
    readonly file: string,
    readonly key: string,
    readonly problem: string,
  ) {
    super(`${file}: ${key ? `${key}: ` : ''}${problem}`);
  }
}

/** The settings one recipe entry may hold (the file's snake_case keys). */
export interface RecipeSettings {
  weight_bits?: RecipeWeightBits;
  group_size?: number;
  weight_method?: WeightMethod;
  act_bits?: PointBits;
  kv_bits?: PointBits;
  observer?: ObserverName;
}
export type RecipeKey = keyof RecipeSettings;

/** A parsed, schema-checked recipe (formats/recipe.ts reads one from YAML or JSON). */
export interface Recipe {
  /** the file it came from, named in every error */
  source: string;
  defaults: RecipeSettings;
  /** in file order: a later entry wins */
  overrides: { glob: string; settings: RecipeSettings }[];
}

/** What a module is, for the keys that apply to it. */
export type ModuleKind = 'linear' | 'activation' | 'kv';

/** One module a glob can match. */
export interface RecipeModule {
  name: string;
  kind: ModuleKind;
  /** the linear (kind 'linear') */
  spec?: LinearSpec;
}

const isPowerOfTwo16 = (v: number) => Number.isInteger(v) && v >= 16 && (v & (v - 1)) === 0;

/** Every recipe key: which module kinds it sets, and its check (a problem, or undefined). */
export const RECIPE_KEYS: Readonly<Record<RecipeKey, { kinds: readonly ModuleKind[]; check: (v: unknown) => string | undefined }>> = {
  weight_bits: { kinds: ['linear'], check: oneOf(WEIGHT_BITS, '32: float') },
  group_size: { kinds: ['linear'], check: (v) => (typeof v === 'number' && isPowerOfTwo16(v) ? undefined : `must be a power of two ≥ 16 (MatMulNBits block size), got ${show(v)}`) },
  weight_method: { kinds: ['linear'], check: oneOf(WEIGHT_METHODS) },
  act_bits: { kinds: ['activation'], check: oneOf(POINT_BITS, '32: float') },
  kv_bits: { kinds: ['kv'], check: oneOf(POINT_BITS, '32: float') },
  observer: { kinds: ['activation', 'kv'], check: oneOf(OBSERVER_NAMES) },
};

/** The default recipe's defaults (the CLI's defaults: passes/pipeline.ts DEFAULT_QUANTIZE_OPTIONS). */
export const DEFAULT_SETTINGS: Readonly<Required<RecipeSettings>> = { weight_bits: 4, group_size: 32, weight_method: 'gptq', act_bits: 8, kv_bits: 8, observer: 'mse' };

/**
 * The default recipe's overrides, applied before a recipe's own: lm_head at group size 16 (the head
 * is the linear most sensitive to W4; see docs/quantization.md).
 */
export const BUILTIN_OVERRIDES: readonly { glob: string; settings: RecipeSettings }[] = [{ glob: 'lm_head', settings: { group_size: 16 } }];

function show(v: unknown): string {
  if (typeof v === 'string') return `'${v.length > 40 ? v.slice(0, 40) + '…' : v}' (a string)`;
  if (v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return String(v);
}

function oneOf(values: readonly (string | number)[], note?: string): (v: unknown) => string | undefined {
  return (v) => ((values as readonly unknown[]).includes(v) ? undefined : `expected one of ${values.join(', ')}${note ? ` (${note})` : ''}, got ${show(v)}`);
}

const isMapping = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** `overrides['<glob>']`: how errors name an override (its glob holds dots, so it is quoted). */
export function overrideKey(glob: string): string {
  return `overrides['${glob}']`;
}

/** Checks one entry's keys and values. @throws RecipeError naming `where.key` */
function settingsFrom(source: string, where: string, v: unknown): RecipeSettings {
  if (!isMapping(v)) throw new RecipeError(source, where, `expected a mapping of ${Object.keys(RECIPE_KEYS).join(', ')}, got ${show(v)}`);
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(v)) {
    if (!Object.hasOwn(RECIPE_KEYS, k)) throw new RecipeError(source, `${where}.${k}`, `unknown key (expected ${Object.keys(RECIPE_KEYS).join(', ')})`);
    const problem = RECIPE_KEYS[k as RecipeKey].check(val);
    if (problem) throw new RecipeError(source, `${where}.${k}`, problem);
    out[k] = val;
  }
  return out as RecipeSettings;
}

/**
 * A recipe from its parsed file contents (a YAML/JSON mapping with `defaults` and `overrides`, both
 * optional): unknown keys, bad values, bad globs and empty overrides are refused.
 * @param value the parsed document
 * @param source the file, named in errors
 * @param order the overrides' globs in file order, when the parser knows it (JavaScript objects
 *   put integer-like keys first); default: the object's own key order
 * @throws RecipeError naming the file and the key
 */
export function recipeFromValue(value: unknown, source: string, order?: readonly string[]): Recipe {
  if (!isMapping(value)) throw new RecipeError(source, '', `a recipe is a mapping with 'defaults' and 'overrides', got ${show(value)}`);
  for (const k of Object.keys(value)) if (k !== 'defaults' && k !== 'overrides') throw new RecipeError(source, k, "unknown top-level key (expected 'defaults', 'overrides')");
  const defaults = value.defaults == null ? {} : settingsFrom(source, 'defaults', value.defaults);
  const ov = value.overrides ?? {};
  if (!isMapping(ov)) throw new RecipeError(source, 'overrides', `expected a mapping of module glob -> settings, got ${show(ov)}`);
  const overrides = (order ?? Object.keys(ov)).map((glob) => {
    const where = overrideKey(glob);
    const problem = globProblem(glob);
    if (problem) throw new RecipeError(source, where, `bad glob: ${problem}`);
    const settings = settingsFrom(source, where, ov[glob]);
    if (!Object.keys(settings).length) throw new RecipeError(source, where, 'sets no key');
    return { glob, settings };
  });
  return { source, defaults, overrides };
}

/**
 * The recipe as written (snake_case keys, overrides in order) for the manifest's provenance. (An
 * integer-like glob would move first in the object, but such a glob matches no module name.)
 */
export function recipeText(r: Recipe): RecipeText {
  return { defaults: { ...r.defaults }, overrides: Object.fromEntries(r.overrides.map((o) => [o.glob, { ...o.settings }])) };
}

const GLOB_CHARS = /^[A-Za-z0-9_.*?{},-]+$/;

/** Why `glob` is not a valid module glob, or undefined. */
export function globProblem(glob: string): string | undefined {
  if (!glob) return 'empty';
  if (!GLOB_CHARS.test(glob)) return 'only letters, digits, _ - . and the wildcards * ** ? {a,b} are allowed';
  let depth = 0;
  for (const c of glob) {
    if (c === '{' && ++depth > 1) return 'nested { }';
    if (c === '}' && --depth < 0) return 'unbalanced }';
    if (c === ',' && depth === 0) return "',' outside { }";
  }
  if (depth) return 'unbalanced {';
  if (glob.split('.').some((s) => s === '')) return "empty name segment (a leading, trailing or doubled '.')";
  return undefined;
}

/**
 * The RegExp of a module glob: anchored, matching a whole name or its part up to a `.` (so
 * `model.layers.0` matches `model.layers.0.mlp.down_proj`, not `model.layers.01…`). `*` = `[^.]*`,
 * `**` = `.*`, `?` = `[^.]`, `{a,b}` = `(?:a|b)`.
 * @throws Error for an invalid glob ({@link globProblem})
 */
export function globRegExp(glob: string): RegExp {
  const problem = globProblem(glob);
  if (problem) throw new Error(`bad glob '${glob}': ${problem}`);
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*' && glob[i + 1] === '*') {
      re += '.*';
      i++;
    } else if (c === '*') re += '[^.]*';
    else if (c === '?') re += '[^.]';
    else if (c === '{') re += '(?:';
    else if (c === '}') re += ')';
    else if (c === ',') re += '|';
    else if (c === '.' || c === '-') re += `\\${c}`;
    else re += c;
  }
  return new RegExp(`^(?:${re})(?:\\..*)?$`);
}

/** Every module of a model a glob can match: linears (all layers, then lm_head), activation points, KV points. */
export function recipeModules(cfg: ModelConfig): RecipeModule[] {
  return [
    ...allLinears(cfg).map((spec): RecipeModule => ({ name: spec.name, kind: 'linear', spec })),
    ...activationPoints(cfg).map((name): RecipeModule => ({ name, kind: 'activation' })),
    ...Array.from({ length: cfg.numLayers }, (_, i) => [kvPointName(i, 'k'), kvPointName(i, 'v')])
      .flat()
      .map((name): RecipeModule => ({ name, kind: 'kv' })),
  ];
}

const KIND_NOUN: Record<ModuleKind, string> = { linear: 'linear', activation: 'activation point', kv: 'KV-cache point' };
const KIND_NAMES: Record<ModuleKind, string> = {
  linear: 'model.layers.N.self_attn.{q,k,v,o}_proj, model.layers.N.mlp.{gate,up,down}_proj, lm_head',
  activation: 'model.layers.N.{attn_in,o_proj_in,mlp_in,down_proj_in}, lm_head_in',
  kv: 'model.layers.N.{k,v}_cache',
};

/** A recipe resolved against a model. */
export interface ResolvedRecipe {
  table: PrecisionTable;
  /**
   * module name -> key -> where its value came from: `defaults.<key>`, `overrides['<glob>'].<key>`,
   * or `built-in defaults.<key>` / `built-in overrides['lm_head'].<key>` (for errors that name the key)
   */
  origin: Map<string, Partial<Record<RecipeKey, string>>>;
  /** the file the recipe came from */
  source: string;
}

/**
 * Resolves `recipe` against a model into its precision table (see the module doc for the order).
 * @param opts.sharedEmbedding the tied embedding will be looked up in lm_head's quantized table
 *   (default `cfg.tieWordEmbeddings`; false when fold-norms unties the head, i.e. with --rotate)
 * @throws RecipeError naming the file and the key: an override whose glob matches no module, a key
 *   that applies to none of the modules its glob matches (act_bits on a linear's name), a layer whose
 *   K and V caches get different widths (a layer's cache has one width), or a quantized lm_head
 *   whose group size does not divide hidden_size while the embedding shares its table
 *   (GatherBlockQuantized reads whole groups)
 */
export function resolveRecipe(recipe: Recipe, cfg: ModelConfig, opts: { sharedEmbedding?: boolean } = {}): ResolvedRecipe {
  const { source } = recipe;
  const modules = recipeModules(cfg);
  const keys = Object.keys(RECIPE_KEYS) as RecipeKey[];
  const base: Required<RecipeSettings> = { ...DEFAULT_SETTINGS, ...recipe.defaults };
  const baseOrigin = Object.fromEntries(keys.map((k) => [k, recipe.defaults[k] !== undefined ? `defaults.${k}` : `built-in defaults.${k}`]));
  const settings = modules.map(() => ({ ...base }));
  const origin = modules.map((): Partial<Record<RecipeKey, string>> => ({ ...baseOrigin }));
  const rules = [...BUILTIN_OVERRIDES.map((r) => ({ ...r, label: `built-in ${overrideKey(r.glob)}`, builtin: true })), ...recipe.overrides.map((r) => ({ ...r, label: overrideKey(r.glob), builtin: false }))];
  for (const rule of rules) {
    const re = globRegExp(rule.glob);
    const hit = modules.flatMap((m, i) => (re.test(m.name) ? [i] : []));
    if (!hit.length && !rule.builtin) throw new RecipeError(source, rule.label, `'${rule.glob}' matches no module of this model (${KIND_NAMES.linear}; ${KIND_NAMES.activation}; ${KIND_NAMES.kv})`);
    for (const key of Object.keys(rule.settings) as RecipeKey[]) {
      const kinds = RECIPE_KEYS[key].kinds;
      const targets = hit.filter((i) => kinds.includes(modules[i].kind));
      if (!targets.length && !rule.builtin) {
        const got = [...new Set(hit.map((i) => modules[i].kind))].map((k) => `${hit.filter((i) => modules[i].kind === k).length} ${KIND_NOUN[k]}(s)`).join(', ');
        throw new RecipeError(source, `${rule.label}.${key}`, `applies to ${kinds.map((k) => KIND_NOUN[k] + 's').join(' and ')}, but '${rule.glob}' matches only ${got} (${kinds.map((k) => KIND_NAMES[k]).join('; ')})`);
      }
      for (const i of targets) {
        (settings[i] as Record<string, unknown>)[key] = rule.settings[key];
        origin[i][key] = `${rule.label}.${key}`;
      }
    }
  }
  const table: PrecisionTable = { linears: {}, activations: {}, kvCache: Array.from({ length: cfg.numLayers }, () => ({}) as { k: PointPrecision; v: PointPrecision }) };
  const shared = opts.sharedEmbedding ?? cfg.tieWordEmbeddings;
  const head = lmHead(cfg).name;
  modules.forEach((m, i) => {
    const s = settings[i];
    if (m.kind === 'linear') {
      const p: LinearPrecision = s.weight_bits === 32 ? { bits: 32, groupSize: 0, method: 'none' } : { bits: s.weight_bits, groupSize: s.group_size, method: s.weight_method };
      if (m.name === head && shared && p.bits !== 32 && cfg.hiddenSize % p.groupSize !== 0)
        throw new RecipeError(
          source,
          origin[i].group_size!,
          `lm_head group size ${p.groupSize} does not divide hidden_size ${cfg.hiddenSize}: the tied embedding is looked up in lm_head's ${p.bits}-bit table (GatherBlockQuantized), whole groups only`,
        );
      table.linears[m.name] = p;
    } else if (m.kind === 'activation') table.activations[m.name] = { bits: s.act_bits, observer: s.observer };
    else {
      const [, layer, which] = /^model\.layers\.(\d+)\.(k|v)_cache$/.exec(m.name)!;
      table.kvCache[Number(layer)][which as 'k' | 'v'] = { bits: s.kv_bits, observer: s.observer };
    }
  });
  table.kvCache.forEach((kv, layer) => {
    if (kv.k.bits !== kv.v.bits) {
      const o = origin[modules.findIndex((m) => m.name === kvPointName(layer, 'k'))].kv_bits!;
      throw new RecipeError(source, o, `layer ${layer}'s K cache gets ${kv.k.bits} bits and its V cache ${kv.v.bits}: a layer's KV cache has one width (set kv_bits on model.layers.${layer} or on both caches)`);
    }
  });
  table.recipe = recipeText(recipe);
  const originMap = new Map(modules.map((m, i) => [m.name, origin[i]]));
  return { table, origin: originMap, source };
}

/**
 * Refuses the precisions the lowering cannot execute yet (quantize calls it on the resolved table,
 * after {@link resolveRecipe}), each as a one-line RecipeError naming the file and the key that set
 * the offending value. Nothing a resolved table can state is refused today: activation points may mix
 * 8, 16 and 32 (float) bits point by point, KV caches 8 (uint8 KV8), 16 (uint16 KV16) and 32 (float)
 * bits layer by layer (src/ir/kv-quant.ts; a layer's K and V caches share one width, which
 * resolveRecipe enforces), and every point may have its own observer (calibration observes each point
 * with its own; passes/calibrate-ranges.ts). The function stays the one place a new limit goes.
 * @throws RecipeError (none today)
 */
export function refuseUnsupported(r: ResolvedRecipe): void {
  void r; // every table resolveRecipe returns is executable
}
