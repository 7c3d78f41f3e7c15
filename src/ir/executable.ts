/**
 * What a HEF holds and a backend loads: the Executable (prefill and decode graphs over one weight
 * store, the tokenizer, the KV-cache layout, adapters). Plain data types, produced by
 * src/compiler/compile.ts, written and read by formats/hef-executable.ts, run by src/runtime.
 */
import type { ModelConfig, TokenizerFiles, LoraAdapter } from './model.js';
import type { Tensor } from './tensor.js';
import type { QuantSchemeSummary } from './quant-scheme.js';
import type { PrecisionTable } from './precision.js';
import type { QdqParams } from './quant.js';
import type { KvDtype } from './kv-quant.js';

/** Element types used in graph I/O, by ONNX name. */
export type ElemType = 'float32' | 'int64' | 'uint8' | 'uint16' | 'int32' | 'bool';

/** One graph dimension: a size, or a symbolic name (e.g. 'total_sequence_length'). */
export type Dim = number | string;

/** A graph input or output: name, element type and (possibly symbolic) shape. */
export interface ValueSpec {
  name: string;
  type: ElemType;
  /** null: rank and dims unknown */
  shape: Dim[] | null;
}

export type { KvDtype } from './kv-quant.js';

/**
 * One quantized layer's KV-cache parameters: the static asymmetric per-tensor scale and zero point of
 * K and V (src/ir/quant.ts QdqParams: `bits: 16` on both for a KV16 layer, absent for KV8), and the
 * K-cache centering offset c (float32 [num_kv_heads·head_dim]), when used.
 */
export interface KvLayerQuant {
  k: QdqParams;
  v: QdqParams;
  kOffset?: number[];
}

/**
 * KV-cache layout of an executable: per layer, K (after RoPE) and V of shape
 * [batch=1, context, num_kv_heads, head_dim] (sequence-major, src/compiler/io-contract.ts), held as
 * uint8 codes (KV8), uint16 codes (KV16; static asymmetric per-tensor per-layer scale/zero point,
 * ONNX QuantizeLinear semantics) or float32, each layer at its own width. With K-cache centering a
 * quantized layer's K cache holds K − c, c a per-layer float32 [num_kv_heads·head_dim] offset
 * (passes/k-centering.ts).
 *
 * Widths: `dtype` names every layer's element type, or is 'mixed' when layers differ; then
 * `layers` has one entry per layer, null for a float32 layer, and a quantized layer's width is its
 * params' (`bits: 16`: uint16, else uint8; {@link kvLayerDtype}). Layouts written before KV16
 * ('uint8' with 8-bit params, or 'float32') read unchanged.
 */
export interface KvLayout {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  /** capacity in tokens */
  maxContext: number;
  dtype: KvDtype | 'mixed';
  /**
   * per layer KV8/KV16 parameters: one per layer for a quantized or mixed layout (null: a float32
   * layer of a mixed layout, whose K offset, if any, stays with the weights), empty for float32
   */
  layers: (KvLayerQuant | null)[];
}

/** Bytes per element of a KV dtype: 1 (uint8), 2 (uint16), 4 (float32). */
export function kvDtypeBytes(d: KvDtype): number {
  return d === 'uint8' ? 1 : d === 'uint16' ? 2 : 4;
}

/**
 * The element type of layer `i`'s cache: the layout's `dtype`, or, in a 'mixed' layout, float32 for
 * a null entry and uint16 / uint8 for params with / without `bits: 16`.
 * @throws RangeError for a layer index outside the layout, or a mixed layout without that entry
 */
export function kvLayerDtype(l: Pick<KvLayout, 'dtype' | 'layers' | 'numLayers'>, i: number): KvDtype {
  if (!Number.isInteger(i) || i < 0 || i >= l.numLayers) throw new RangeError(`KV layout: layer ${i} is outside [0, ${l.numLayers})`);
  if (l.dtype !== 'mixed') return l.dtype;
  const p = l.layers[i];
  if (p === undefined) throw new RangeError(`KV layout: a mixed layout has no entry for layer ${i}`);
  return p === null ? 'float32' : p.k.bits === 16 ? 'uint16' : 'uint8';
}

/** Every layer's element type ({@link kvLayerDtype}), [numLayers]. */
export function kvLayerDtypes(l: Pick<KvLayout, 'dtype' | 'layers' | 'numLayers'>): KvDtype[] {
  return Array.from({ length: l.numLayers }, (_, i) => kvLayerDtype(l, i));
}

/** Bytes the KV cache takes at full context (K and V, all layers, each at its width). */
export function kvCacheBytes(l: KvLayout): number {
  return kvLayerDtypes(l).reduce((sum, d) => sum + 2 * l.numKvHeads * l.headDim * l.maxContext * kvDtypeBytes(d), 0);
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
  /** the per-module precision table of a model quantized with a recipe (src/ir/precision.ts); absent: uniform, as `quant` states */
  precision?: PrecisionTable;
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
  /**
   * Weights left in their file for the backend to memory-map (formats/hef-executable.ts
   * readExecutable with `mapWeights`): not in `weights`. Absent: every weight is in `weights`.
   */
  mappedWeights?: MappedWeights;
}

/** Tensors stored raw (little-endian, row-major) at page-aligned offsets of a file. */
export interface MappedWeights {
  /** the file holding them (a HEF) */
  file: string;
  /** initializer name -> its bytes in `file`: `offset` absolute, a multiple of 4096 */
  tensors: Map<string, { dtype: Tensor['dtype']; shape: number[]; offset: number; byteLength: number }>;
  /**
   * The file range (the HEF's weights section) whose sha256 is still to be checked, when the reader
   * left the check to the first one to read the bytes (formats/hef-executable.ts readExecutable
   * `verify: 'deferred'`): hashed by the backend on a worker thread while its session is created, or by
   * verifyMappedWeights; cleared once checked. Absent: checked already, or not to be checked.
   */
  unverified?: { offset: number; length: number; sha256: Uint8Array; label: string };
}

/** A LoRA adapter with its tensors in memory (quantized codes + scales, see src/ir/model.ts LoraAdapter). */
export type ExecutableAdapter = Omit<LoraAdapter, 'tensors'> & { tensors: Map<string, Tensor> };

/**
 * The contents of one KV-cache context as plain bytes (what a context file stores): per layer the
 * K and V caches of its first `length` positions, each [length, num_kv_heads, head_dim] (sequence-major, as the
 * graphs hold them: src/compiler/io-contract.ts) in that layer's element type (uint8 KV8 codes,
 * uint16 KV16 codes or float32, little-endian), row-major.
 */
export interface KvSnapshot {
  /** tokens held */
  length: number;
  /** the LoRA adapter the cache was computed with (null: the base model) */
  adapter: string | null;
  layers: { key: Uint8Array; value: Uint8Array }[];
}

/** Bytes of one K (or V) cache of `length` positions of layer `layer` (default 0) in layout `l`. */
export function kvSnapshotLayerBytes(l: Pick<KvLayout, 'dtype' | 'layers' | 'numLayers' | 'numKvHeads' | 'headDim'>, length: number, layer = 0): number {
  return l.numKvHeads * length * l.headDim * kvDtypeBytes(kvLayerDtype(l, layer));
}
