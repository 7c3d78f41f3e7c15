/**
 * The model IR shared by passes, compiler and runtime: a normalised {@link ModelConfig}, named weight
 * tensors read lazily, and the quantization state. Every pass maps a Model to a new Model; the HAR
 * is this object on disk.
 *
 * Weight naming follows HuggingFace (`model.layers.{i}.self_attn.q_proj.weight`, W: [out, in]).
 * A weight-quantized linear replaces `<linear>.weight` by `<linear>.qweight` (U8, MatMulNBits
 * packing [out, n_blocks, group_size/2], low nibble = even column) and `<linear>.scales`
 * (F32 [out, n_blocks]); the zero point is the implicit 2^(bits-1) = 8 of symmetric quantization.
 */
import type { Tensor, DType } from './tensor.js';
import type { PrecisionTable } from './precision.js';
import type { SensitivityReport } from './sensitivity.js';

export type ModelFamily = 'llama' | 'qwen2' | 'mistral';

/** HF config.json normalised once (see formats/hf.ts `normalizeConfig`). */
export interface ModelConfig {
  family: ModelFamily;
  /** `model_type` as found in config.json */
  modelType: string;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  /** maximum context (tokens) the RoPE tables are built for */
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** activation of the gated MLP; only 'silu' is supported */
  hiddenAct: 'silu';
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry biases (Qwen2) */
  qkvBias: boolean;
  /** o_proj carries a bias */
  oBias: boolean;
  /** gate/up/down carry biases */
  mlpBias: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

/** A weight whose bytes are read only when needed. */
export interface LazyTensor {
  dtype: DType;
  shape: number[];
  /** Reads the tensor (from disk or memory). @throws FormatError on unreadable bytes. */
  load(): Tensor;
}

/** Static 8-bit asymmetric per-tensor quantization parameters: x ≈ (q − zeroPoint)·scale, q ∈ [0, 255]. */
export interface QParams {
  scale: number;
  zeroPoint: number;
}

/** How a weight-quantized linear was quantized. */
export interface LinearQuant {
  /** 4 or 8: `.qweight` is [out, n_blocks, group·bits/8], zero point 2^(bits-1) (src/ir/quant.ts) */
  bits: 4 | 8;
  groupSize: number;
  /** 'symmetric': zero point 2^(bits-1) */
  scheme: 'symmetric';
  /** the algorithm that chose the integers: 'rtn' | 'gptq' */
  method: string;
}

/** Quantization state of a Model. Empty maps mean "fp32". */
export interface QuantState {
  /** linear name (e.g. `model.layers.0.self_attn.q_proj`) -> weight quantization */
  linears: Record<string, LinearQuant>;
  /** activation quantization point name (see src/ir/architectures.ts) -> static A8 params */
  activations: Record<string, QParams>;
  /** per layer: static KV8 params of the K and V caches (post-RoPE K) */
  kvCache: { k: QParams; v: QParams }[];
  /**
   * K-cache centering (passes/k-centering.ts): per layer, float32 values [numKvHeads·headDim]
   * subtracted from the post-RoPE K before it enters the cache. Attention is unchanged (a softmax
   * row is invariant to the constant q·c); the cache holds K − c, whose per-tensor KV8 range is
   * narrower. Absent: no centering.
   */
  kCacheOffset?: number[][];
}

/** A record of one pass that has run, kept in the HAR manifest. */
export interface PassRecord {
  name: string;
  options: Record<string, unknown>;
}

export interface Model {
  config: ModelConfig;
  weights: Map<string, LazyTensor>;
  quant: QuantState;
  /** the passes applied so far, in order */
  passes: PassRecord[];
  /** tokenizer.json text and tokenizer_config.json / generation_config.json / chat template, if any */
  tokenizer: TokenizerFiles;
  /** per-layer quantization error measured on calibration data (filled by the passes that quantize) */
  report?: QuantReport;
  /** LoRA adapters beside the base weights (passes/lora/add.ts); absent or empty: none */
  adapters?: LoraAdapter[];
  /** rotations executed at run time (passes/quarot.ts online R3/R4); absent: none */
  online?: OnlineRotations;
  /**
   * the per-module precision resolved from `quantize --recipe` (src/ir/precision.ts); absent: the
   * uniform precision the quantization state states (src/ir/quant-scheme.ts precisionOf derives it)
   */
  precision?: PrecisionTable;
}

/**
 * An orthogonal rotation applied at run time to the last axis (size n = K·P, P a power of two):
 * x ← x·(Q ⊗ H_P/√P), with Q the weight `factor` (F32 [K, K], orthogonal; null when K = 1) and
 * H_P Sylvester's Hadamard matrix, H_P[i, j] = (−1)^popcount(i & j) (a fast Walsh–Hadamard transform).
 */
export interface OnlineRotation {
  size: number;
  k: number;
  /** weight name of Q, or null when k = 1 */
  factor: string | null;
}

/**
 * QuaRot's online rotations (Ashkboos et al. 2024, §4): `r4` on the down_proj input (its inverse is
 * fused into down_proj's weight); `r3` per head (size head_dim) on Q and K after RoPE, which leaves
 * Q·Kᵀ unchanged, so the KV cache holds rotated K.
 */
export interface OnlineRotations {
  r3?: OnlineRotation;
  r4?: OnlineRotation;
}

/**
 * A LoRA adapter kept beside the base (passes/lora/add.ts `addLora`): each module adds s·B·(A·x) to its
 * linear's output, with A and B already transformed like the base (folded norms, rotations).
 * Tensors, per module `<linear>`: `.lora_A` F32 [rank, in] and `.lora_B` F32 [out, rank] (bits 32),
 * or `.lora_A.qweight` + `.lora_A.scales` (and the same for B): I8 [rows, cols] + F32 [rows, 1]
 * (bits 8, symmetric per output channel), U8 MatMulNBits packing + F32 [rows, n_groups] (bits 4).
 */
export interface LoraAdapter {
  name: string;
  /** PEFT r and lora_alpha (per-module values are in `modules`) */
  r: number;
  alpha: number;
  useRslora: boolean;
  /** storage of A and B: 32 float, 8 int8 per output channel, 4 group-wise (groupSize columns) */
  bits: 32 | 8 | 4;
  groupSize: number;
  modules: LoraModule[];
  tensors: Map<string, LazyTensor>;
  /**
   * PEFT base_model_name_or_path, the base passes whose transforms were applied to A/B, and, when
   * A/B were refit to the W4 base (passes/lora/refit.ts), how many modules on how many windows and
   * the H-weighted base-error residual Σ‖(W_q + s·B·A − W − s·B₀·A₀)·X‖² before and after
   */
  source: {
    baseModelNameOrPath: string | null;
    transforms: string[];
    refit?: { modules: number; windows: number; residualBefore: number; residualAfter: number };
  };
}

/** One adapted linear of a {@link LoraAdapter}. */
export interface LoraModule {
  /** base linear, e.g. `model.layers.0.self_attn.q_proj` */
  linear: string;
  rank: number;
  /** s = alpha/r (alpha/√r with rslora), applied at run time */
  scaling: number;
  /** static A8 parameters of the intermediate A·x, when calibrated */
  act?: QParams;
}

/** Per-layer quantization error, measured on calibration data. */
export interface QuantReport {
  /**
   * linear name -> relative output error tr((W−Q)H(W−Q)ᵀ) / tr(WHWᵀ) with H the calibration
   * Hessian 2/n·ΣxxᵀXᵀ (i.e. ‖X(W−Q)ᵀ‖²/‖XWᵀ‖²), and the same for RTN on the same H when known
   */
  linears: Record<string, { relError: number; rtnRelError?: number; method: string }>;
  /** activation / KV quantization point -> SQNR in dB of its static quantization, and its parameters (`bits: 16` for a uint16 point) */
  points: Record<string, { sqnrDb: number; scale: number; zeroPoint: number; bits?: 16 }>;
  /** KLD cost of each quantization choice, measured by `analyze` or `quantize --auto-precision` (passes/sensitivity.ts) */
  sensitivity?: SensitivityReport;
}

/** The tokenizer files carried with a model from the HF directory to the HAR and the HEF. */
export interface TokenizerFiles {
  /** tokenizer.json contents (HuggingFace tokenizers format) */
  tokenizerJson: string;
  /** tokenizer_config.json contents, or null */
  tokenizerConfigJson: string | null;
  /** generation_config.json contents, or null */
  generationConfigJson: string | null;
}

export function emptyQuantState(): QuantState {
  return { linears: {}, activations: {}, kvCache: [] };
}

/** A LazyTensor over an in-memory tensor. */
export function inMemory(t: Tensor): LazyTensor {
  return { dtype: t.dtype, shape: t.shape, load: () => t };
}
