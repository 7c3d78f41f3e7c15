/**
 * How a Model executes its KV cache, layer by layer: the one rule the lowering
 * (src/compiler/lowering.ts cacheAppend), the KV layout (src/compiler/kv-layout.ts) and the reference
 * forward's static mode (src/ir/reference-quant.ts) share, as src/ir/quant.ts activationQdq is for
 * activation points.
 *
 * Each layer's cache is static asymmetric per-tensor (K after RoPE, V), at its own width:
 * - KV8: ONNX QuantizeLinear to uint8 (ai.onnx, opset 17), the cache holds the uint8 codes;
 * - KV16: com.microsoft QuantizeLinear to uint16 (onnxruntime docs/ContribOperators.md; the ai.onnx op
 *   takes uint16 only from opset 21), the cache holds the uint16 codes;
 * - float: no QDQ, the cache holds float32.
 * Both quantized widths use y = saturate(round½even(x / scale) + zero_point), and attention reads
 * DequantizeLinear of the cache, x' = (q − zero_point)·scale.
 *
 * Stored ranges (model.quant.kvCache, ranges.json): empty when no layer is quantized; else one entry
 * per layer, `{k, v}` QParams (src/ir/quant.ts QdqParams: `bits: 16` on both for KV16, absent for
 * KV8), or null for a float layer of a model whose other layers are quantized (a recipe's
 * `kv_bits: 32` on some layers):
 *
 *   precision.kvCache[1] = {k: {bits: 16, …}, v: {bits: 16, …}}  → kvCache[1] = {k: {scale, zeroPoint, bits: 16}, v: {…, bits: 16}}
 *   precision.kvCache[2] = {k: {bits: 32, …}, v: {bits: 32, …}}  → kvCache[2] = null
 */
import type { Model, QParams } from './model.js';
import { qdqBitsOf, type QdqBits } from './quant.js';
import { UnsupportedModelError } from '../core/errors.js';

/** Element type of one layer's KV cache: uint8 KV8 codes, uint16 KV16 codes, or float32 (src/ir/executable.ts KvLayout). */
export type KvDtype = 'uint8' | 'uint16' | 'float32';

/** One layer's stored KV ranges: K and V QParams, or null for a float layer of a partly quantized cache. */
export type KvRangeEntry = { k: QParams; v: QParams } | null;

/**
 * model.quant.kvCache with its null entries typed: src/ir/model.ts declares the entries non-null
 * (its type predates float layers beside quantized ones), so every reader goes through this view.
 */
export function kvRanges(model: Pick<Model, 'quant'>): readonly KvRangeEntry[] {
  return model.quant.kvCache as readonly KvRangeEntry[];
}

/** The ranges as QuantState stores them (null entries for float layers; see {@link kvRanges}). */
export function storedKvRanges(entries: readonly KvRangeEntry[]): Model['quant']['kvCache'] {
  return entries as Model['quant']['kvCache'];
}

/** The model holds KV ranges for every layer (so its graphs quantize the layers whose entry is not null). */
export function hasKvRanges(model: Pick<Model, 'quant' | 'config'>): boolean {
  return model.quant.kvCache.length === model.config.numLayers;
}

/** How one layer's cache executes: QDQ on the `bits`-bit grid with K and V params. */
export interface KvCacheQdq {
  bits: QdqBits;
  k: QParams;
  v: QParams;
}

/** The cache element type of a layer that executes as `q`: uint8, uint16, or float32 (null). */
export function kvDtypeOf(q: KvCacheQdq | null): KvDtype {
  return q === null ? 'float32' : q.bits === 16 ? 'uint16' : 'uint8';
}

/**
 * How `model` executes layer `layer`'s KV cache: null (float32) when the model holds no KV ranges
 * ({@link hasKvRanges} false: none calibrated, or stripped for a calibration graph) or the layer's
 * entry is null; else QDQ at the width its ranges state ({@link qdqBitsOf}: uint8, uint16 for
 * `bits: 16`). When the model has a precision table (model.precision), the layer's entry there must
 * agree.
 * @param who the caller, first in error messages (`lowering`, `referenceForward`)
 * @throws UnsupportedModelError when K and V ranges have different widths, when a null entry's table
 *   width is not 32 ("no KV range"), or when the table gives the layer another width than its
 *   ranges (ranges calibrated for another recipe)
 */
export function kvCacheQdq(model: Pick<Model, 'quant' | 'precision' | 'config'>, layer: number, who: string): KvCacheQdq | null {
  if (!hasKvRanges(model)) return null;
  const e = kvRanges(model)[layer];
  const want = model.precision?.kvCache[layer]?.k.bits;
  if (e === null || e === undefined) {
    if (want === undefined || want === 32) return null;
    throw new UnsupportedModelError(`${who}: no KV range for layer ${layer} (its precision is ${want} bits)`);
  }
  const bits = qdqBitsOf(e.k);
  if (qdqBitsOf(e.v) !== bits) throw new UnsupportedModelError(`${who}: layer ${layer}'s K range is ${bits}-bit and its V range ${qdqBitsOf(e.v)}-bit (a layer's cache has one width)`);
  if (want !== undefined && want !== bits)
    throw new UnsupportedModelError(`${who}: layer ${layer}'s KV cache has ${bits}-bit ranges but the precision table gives it ${want} bits (ranges calibrated for another recipe; quantize again)`);
  return { bits, k: e.k, v: e.v };
}
