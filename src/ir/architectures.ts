/**
 * One adapter object per model family (SliceGPT's `ModelAdapter`, §4 of Ashkboos et al. 2024: the
 * adapter *is* the model for every pass): which linears a decoder layer has, which of them read the
 * attention input, write the attention output, read the MLP input and write the MLP output, its
 * norms, embedding, final norm and head, and how the family's config sets the biases. Passes and the
 * lowering ask the adapter instead of testing `family` (no if-ladders); Llama, Qwen2 and Mistral
 * share the HF layout and differ in their biases (Qwen2's q/k/v).
 */
import type { Model, ModelConfig, ModelFamily } from './model.js';

/** Which activation a linear reads; linears reading the same tensor share one A8 quantization point. */
export type LinearInput = 'attn_in' | 'o_proj_in' | 'mlp_in' | 'down_proj_in' | 'lm_head_in';

export interface LinearSpec {
  /** HF module name without `.weight`, e.g. `model.layers.0.self_attn.q_proj` */
  name: string;
  /** short role, e.g. `q_proj` */
  role: 'q_proj' | 'k_proj' | 'v_proj' | 'o_proj' | 'gate_proj' | 'up_proj' | 'down_proj' | 'lm_head';
  inFeatures: number;
  outFeatures: number;
  hasBias: boolean;
  /** the activation it reads (its A8 quantization point is `actPointName(layer, input)`) */
  input: LinearInput;
  /** decoder layer index, or -1 for lm_head */
  layer: number;
}

/** Name of a static A8 activation quantization point: `model.layers.{i}.{input}` or `lm_head_in`. */
export function actPointName(layer: number, input: LinearInput): string {
  return layer < 0 ? input : `model.layers.${layer}.${input}`;
}


/** The per-family facts the passes, the lowering and the reference forward rely on. */
export interface ArchitectureAdapter {
  readonly family: ModelFamily;
  /** HF `model_type` values that map to this family */
  readonly modelTypes: readonly string[];
  /**
   * Which linears carry biases, from config.json's `attention_bias` / `mlp_bias`. Llama and Mistral:
   * `attention_bias` gives q/k/v and o_proj biases (HF LlamaAttention); Qwen2: q/k/v always have
   * biases and o_proj never does (HF Qwen2Attention), whatever `attention_bias` says.
   */
  biases(raw: { attentionBias: boolean; mlpBias: boolean }): Pick<ModelConfig, 'qkvBias' | 'oBias' | 'mlpBias'>;
  /**
   * q_proj, k_proj, v_proj of layer i: they read input_layernorm(x)·γ_in (one A8 point `attn_in`),
   * so fold-norms folds γ_in into their columns and QuaRot's R1 rotates their inputs; v_proj's output
   * (and bias) also takes R2 per KV head.
   */
  attentionInputs(cfg: ModelConfig, i: number): LinearSpec[];
  /** o_proj of layer i: reads the attention output (R2 per head on its input), writes the residual (R1 on its output). */
  attentionOutput(cfg: ModelConfig, i: number): LinearSpec;
  /** gate_proj, up_proj of layer i: read post_attention_layernorm(h)·γ_post (A8 point `mlp_in`; γ_post folded, R1 on inputs). */
  mlpInputs(cfg: ModelConfig, i: number): LinearSpec[];
  /** down_proj of layer i: reads silu(gate)·up (A8 point `down_proj_in`; online R4 on its input), writes the residual (R1 on its output). */
  mlpOutput(cfg: ModelConfig, i: number): LinearSpec;
  /** the linears of layer i in execution order: attention inputs, attention output, MLP inputs, MLP output */
  layerLinears(cfg: ModelConfig, i: number): LinearSpec[];
  /** the RMSNorm γ weights of layer i */
  layerNorms(i: number): { input: string; postAttention: string };
  /** the token embedding [vocab, hidden] (R1 on its rows' columns; lm_head's weight when tied) */
  readonly embedding: string;
  /** the final RMSNorm γ (folded into lm_head) */
  readonly finalNorm: string;
  /** the output head; its weight is `lm_head.weight` (untied) or the embedding (tied) */
  lmHead(cfg: ModelConfig): LinearSpec;
}

/** The HF decoder layout shared by the three families; `biases` is what differs. */
function hfDecoder(family: ModelFamily, modelTypes: string[], biases: ArchitectureAdapter['biases']): ArchitectureAdapter {
  const spec = (cfg: ModelConfig, i: number, role: LinearSpec['role'], module: string, inF: number, outF: number, bias: boolean, input: LinearInput): LinearSpec => ({
    name: `model.layers.${i}.${module}`,
    role,
    inFeatures: inF,
    outFeatures: outF,
    hasBias: bias,
    input,
    layer: i,
  });
  const qOut = (c: ModelConfig) => c.numHeads * c.headDim;
  const kvOut = (c: ModelConfig) => c.numKvHeads * c.headDim;
  const a: ArchitectureAdapter = {
    family,
    modelTypes,
    biases,
    attentionInputs: (c, i) => [
      spec(c, i, 'q_proj', 'self_attn.q_proj', c.hiddenSize, qOut(c), c.qkvBias, 'attn_in'),
      spec(c, i, 'k_proj', 'self_attn.k_proj', c.hiddenSize, kvOut(c), c.qkvBias, 'attn_in'),
      spec(c, i, 'v_proj', 'self_attn.v_proj', c.hiddenSize, kvOut(c), c.qkvBias, 'attn_in'),
    ],
    attentionOutput: (c, i) => spec(c, i, 'o_proj', 'self_attn.o_proj', qOut(c), c.hiddenSize, c.oBias, 'o_proj_in'),
    mlpInputs: (c, i) => [
      spec(c, i, 'gate_proj', 'mlp.gate_proj', c.hiddenSize, c.intermediateSize, c.mlpBias, 'mlp_in'),
      spec(c, i, 'up_proj', 'mlp.up_proj', c.hiddenSize, c.intermediateSize, c.mlpBias, 'mlp_in'),
    ],
    mlpOutput: (c, i) => spec(c, i, 'down_proj', 'mlp.down_proj', c.intermediateSize, c.hiddenSize, c.mlpBias, 'down_proj_in'),
    layerLinears: (c, i) => [...a.attentionInputs(c, i), a.attentionOutput(c, i), ...a.mlpInputs(c, i), a.mlpOutput(c, i)],
    layerNorms: (i) => ({ input: `model.layers.${i}.input_layernorm.weight`, postAttention: `model.layers.${i}.post_attention_layernorm.weight` }),
    embedding: 'model.embed_tokens.weight',
    finalNorm: 'model.norm.weight',
    lmHead: (c) => ({ name: 'lm_head', role: 'lm_head', inFeatures: c.hiddenSize, outFeatures: c.vocabSize, hasBias: false, input: 'lm_head_in', layer: -1 }),
  };
  return a;
}

/** Llama (HF LlamaForCausalLM): attention_bias covers q/k/v and o_proj. */
export const LLAMA = hfDecoder('llama', ['llama'], (r) => ({ qkvBias: r.attentionBias, oBias: r.attentionBias, mlpBias: r.mlpBias }));
/** Qwen2 (HF Qwen2ForCausalLM): q/k/v biases always, o_proj never. */
export const QWEN2 = hfDecoder('qwen2', ['qwen2'], (r) => ({ qkvBias: true, oBias: false, mlpBias: r.mlpBias }));
/** Mistral (HF MistralForCausalLM): Llama's layout (its sliding window does not change the weights). */
export const MISTRAL = hfDecoder('mistral', ['mistral'], (r) => ({ qkvBias: r.attentionBias, oBias: r.attentionBias, mlpBias: r.mlpBias }));

/** Every supported family's adapter. */
export const ARCHITECTURES: Readonly<Record<ModelFamily, ArchitectureAdapter>> = { llama: LLAMA, qwen2: QWEN2, mistral: MISTRAL };

/** The adapter of a model's family. */
export function architectureOf(cfg: Pick<ModelConfig, 'family'>): ArchitectureAdapter {
  return ARCHITECTURES[cfg.family];
}

/** The linears of decoder layer `i`, in execution order (the family adapter's `layerLinears`). */
export function layerLinears(cfg: ModelConfig, i: number): LinearSpec[] {
  return architectureOf(cfg).layerLinears(cfg, i);
}

/**
 * The decoder-layer linear named `name` (e.g. `model.layers.3.self_attn.q_proj`), or undefined when
 * the model has no such linear.
 */
export function decoderLinear(cfg: ModelConfig, name: string): LinearSpec | undefined {
  const layer = Number(/^model\.layers\.(\d+)\./.exec(name)?.[1] ?? -1);
  return layer >= 0 && layer < cfg.numLayers ? layerLinears(cfg, layer).find((s) => s.name === name) : undefined;
}

/** The output head. Its weight is `lm_head.weight` (untied) or `model.embed_tokens.weight` (tied). */
export function lmHead(cfg: ModelConfig): LinearSpec {
  return architectureOf(cfg).lmHead(cfg);
}

/** Every linear of the model (all layers, then lm_head). */
export function allLinears(cfg: ModelConfig): LinearSpec[] {
  const out: LinearSpec[] = [];
  for (let i = 0; i < cfg.numLayers; i++) out.push(...layerLinears(cfg, i));
  out.push(lmHead(cfg));
  return out;
}

/** All static A8 activation-quantization point names, in execution order. */
export function activationPoints(cfg: ModelConfig): string[] {
  const pts: string[] = [];
  for (let i = 0; i < cfg.numLayers; i++)
    for (const inp of ['attn_in', 'o_proj_in', 'mlp_in', 'down_proj_in'] as const) pts.push(actPointName(i, inp));
  pts.push(actPointName(-1, 'lm_head_in'));
  return pts;
}

/** Per-layer norm weight names (the same for every supported family: {@link ArchitectureAdapter.layerNorms}). */
export function layerNorms(i: number): { input: string; postAttention: string } {
  return LLAMA.layerNorms(i);
}

/**
 * True when a model's embedding lookup reads its quantized lm_head table: tied embeddings
 * (`tie_word_embeddings`, still set: fold-norms unties them) and a weight-quantized lm_head. The
 * compiled graphs then hold one 4-bit copy for both (GatherBlockQuantized and MatMulNBits read the
 * same initializer) and the float embedding table is not shipped.
 */
export function sharesQuantizedEmbedding(model: Pick<Model, 'config' | 'quant'>): boolean {
  return model.config.tieWordEmbeddings && model.quant.linears[lmHead(model.config).name] !== undefined;
}
