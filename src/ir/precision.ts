/**
 * The per-module precision table: what bits every linear's weights, every static activation point and
 * every KV cache of a model get, resolved once from a recipe (src/ir/recipe.ts) against the model.
 * It is the one statement of precision the quantization passes, the calibration and the lowering
 * read, and the HAR manifest records it (`precision`, formats/har-model.ts).
 *
 * Module names (what a recipe glob matches):
 * - linears: HF module names, `model.layers.{i}.self_attn.{q,k,v,o}_proj`,
 *   `model.layers.{i}.mlp.{gate,up,down}_proj`, `lm_head` (src/ir/architectures.ts `allLinears`);
 * - activation points: `model.layers.{i}.{attn_in,o_proj_in,mlp_in,down_proj_in}` and `lm_head_in`
 *   (src/ir/architectures.ts `actPointName`), the static QDQ points at linear inputs;
 * - KV points: `model.layers.{i}.k_cache` and `model.layers.{i}.v_cache` ({@link kvPointName}, the
 *   names src/compiler/io-contract.ts `kvPoints` gives the calibration and the report).
 *
 * This module holds data types and constants only (no imports), so src/ir/model.ts can refer to the
 * table without an import cycle.
 */

/** Weight widths a recipe may ask for: 4 or 8 (symmetric group-wise, MatMulNBits) or 32 (float, not quantized). */
export const WEIGHT_BITS = [4, 8, 32] as const;
export type RecipeWeightBits = (typeof WEIGHT_BITS)[number];

/**
 * Activation and KV-cache widths: 8 (static asymmetric uint8 QDQ, the default), 16 (static
 * asymmetric uint16 QDQ, com.microsoft QuantizeLinear/DequantizeLinear: activation points, and KV
 * caches that hold uint16 codes) or 32 (float, not quantized). Each activation point and each
 * layer's KV cache (K and V together) has its own.
 */
export const POINT_BITS = [8, 16, 32] as const;
export type PointBits = (typeof POINT_BITS)[number];

/** Weight quantizers: GPTQ (passes/gptq-sequential.ts) or round to nearest (passes/rtn.ts); both do 4 and 8 bits. */
export const WEIGHT_METHODS = ['gptq', 'rtn'] as const;
export type WeightMethod = (typeof WEIGHT_METHODS)[number];

/** Range observers of static activation / KV points (calibration/observers.ts `OBSERVER_KINDS`, the same list). */
export const OBSERVER_NAMES = ['minmax', 'percentile', 'mse'] as const;
export type ObserverName = (typeof OBSERVER_NAMES)[number];

/** One linear's weight precision. A float linear (bits 32) has groupSize 0 and method 'none'. */
export interface LinearPrecision {
  bits: RecipeWeightBits;
  /** input columns per scale (MatMulNBits block size); 0 for float */
  groupSize: number;
  method: WeightMethod | 'none';
}

/** One activation or KV-cache point's precision. */
export interface PointPrecision {
  bits: PointBits;
  observer: ObserverName;
}

/** A recipe's settings as written in the file (snake_case keys), kept for provenance. */
export type RecipeText = { defaults: Record<string, unknown>; overrides: Record<string, Record<string, unknown>> };

/** The resolved per-module precision of a model. */
export interface PrecisionTable {
  /** linear name -> weight precision, for every linear of the model (all layers, then lm_head) */
  linears: Record<string, LinearPrecision>;
  /** activation point name -> precision, for every activation point */
  activations: Record<string, PointPrecision>;
  /** per decoder layer: its K and V caches */
  kvCache: { k: PointPrecision; v: PointPrecision }[];
  /** the recipe it was resolved from (defaults and overrides as written, snake_case keys), when one was given */
  recipe?: RecipeText;
}

/** The KV-cache point of layer `layer`: `model.layers.{layer}.k_cache` or `.v_cache`. */
export function kvPointName(layer: number, which: 'k' | 'v'): string {
  return `model.layers.${layer}.${which}_cache`;
}

/** "W4 g32 gptq", "W8 g16 rtn" or "float": one linear precision as `inspect` and errors print it. */
export function formatLinearPrecision(p: LinearPrecision): string {
  return p.bits === 32 ? 'float' : `W${p.bits} g${p.groupSize} ${p.method}`;
}
