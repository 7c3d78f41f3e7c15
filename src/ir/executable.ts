/**
 * What a HEF holds and a backend loads: the Executable (prefill and decode graphs over one weight
 * store, the tokenizer, the KV-cache layout, adapters). Plain data types, produced by
 * src/compiler/compile.ts, written and read by formats/hef-executable.ts, run by src/runtime.
 */
import type { ModelConfig, QParams, TokenizerFiles, LoraAdapter } from './model.js';
import type { Tensor } from './tensor.js';
import type { QuantSchemeSummary } from './quant-scheme.js';
import type { PrecisionTable } from './precision.js';

/** Element types used in graph I/O, by ONNX name. */
export type ElemType = 'float32' | 'int64' | 'uint8' | 'int32' | 'bool';

/** One graph dimension: a size, or a symbolic name (e.g. 'total_sequence_length'). */
export type Dim = number | string;

/** A graph input or output: name, element type and (possibly symbolic) shape. */
export interface ValueSpec {
  name: string;
  type: ElemType;
  /** null: rank and dims unknown */
  shape: Dim[] | null;
}

/**
 * KV-cache layout of an executable: per layer, K (after RoPE) and V of shape
 * [batch=1, num_kv_heads, context, head_dim], held as uint8 with static per-tensor per-layer
 * scale/zero point (KV8) or as float32. With K-cache centering the K cache holds K − c, c a per-layer
 * float32 [num_kv_heads·head_dim] offset (passes/k-centering.ts).
 */
export interface KvLayout {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  /** capacity in tokens */
  maxContext: number;
  dtype: 'uint8' | 'float32';
  /** per layer KV8 parameters (empty for float32); kOffset: the K-cache centering offset c, when used */
  layers: { k: QParams; v: QParams; kOffset?: number[] }[];
}

/** Bytes the KV cache takes at full context (K and V, all layers). */
export function kvCacheBytes(l: KvLayout): number {
  return 2 * l.numLayers * l.numKvHeads * l.headDim * l.maxContext * (l.dtype === 'uint8' ? 1 : 4);
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
   * `verify: 'deferred'`): hashed in passing while the backend copies them, or by
   * verifyMappedWeights; cleared once checked. Absent: checked already, or not to be checked.
   */
  unverified?: { offset: number; length: number; sha256: Uint8Array; label: string };
}

/** A LoRA adapter with its tensors in memory (quantized codes + scales, see src/ir/model.ts LoraAdapter). */
export type ExecutableAdapter = Omit<LoraAdapter, 'tensors'> & { tensors: Map<string, Tensor> };

/**
 * The contents of one KV-cache context as plain bytes (what a context file stores): per layer the
 * K and V caches of its first `length` positions, each [length, num_kv_heads, head_dim] (sequence-major, as the
 * graphs hold them: src/compiler/io-contract.ts) in the
 * layout's element type (uint8 KV8 codes, or float32 little-endian), row-major.
 */
export interface KvSnapshot {
  /** tokens held */
  length: number;
  /** the LoRA adapter the cache was computed with (null: the base model) */
  adapter: string | null;
  layers: { key: Uint8Array; value: Uint8Array }[];
}

/** Bytes of one K (or V) cache of `length` positions in layout `l`. */
export function kvSnapshotLayerBytes(l: KvLayout, length: number): number {
  return l.numKvHeads * length * l.headDim * (l.dtype === 'uint8' ? 1 : 4);
}
