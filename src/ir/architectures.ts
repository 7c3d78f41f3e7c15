/**
 * Per-family layout of a decoder layer, as adapters instead of if-ladders (SliceGPT's
 * `ModelAdapter` idea): the linears of each layer, which input each one reads, and the static
 * activation-quantization points. Llama, Qwen2 and Mistral share the HF naming; family differences
 * (Qwen2's q/k/v biases) are carried by the normalised ModelConfig flags.
 */
import type { ModelConfig } from './model.js';

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

/** The linears of decoder layer `i`, in execution order. */
export function layerLinears(cfg: ModelConfig, i: number): LinearSpec[] {
  const p = `model.layers.${i}`;
  const h = cfg.hiddenSize;
  const qOut = cfg.numHeads * cfg.headDim;
  const kvOut = cfg.numKvHeads * cfg.headDim;
  const m = cfg.intermediateSize;
  const L = (role: LinearSpec['role'], name: string, inF: number, outF: number, bias: boolean, input: LinearInput): LinearSpec => ({
    name,
    role,
    inFeatures: inF,
    outFeatures: outF,
    hasBias: bias,
    input,
    layer: i,
  });
  return [
    L('q_proj', `${p}.self_attn.q_proj`, h, qOut, cfg.qkvBias, 'attn_in'),
    L('k_proj', `${p}.self_attn.k_proj`, h, kvOut, cfg.qkvBias, 'attn_in'),
    L('v_proj', `${p}.self_attn.v_proj`, h, kvOut, cfg.qkvBias, 'attn_in'),
    L('o_proj', `${p}.self_attn.o_proj`, qOut, h, cfg.oBias, 'o_proj_in'),
    L('gate_proj', `${p}.mlp.gate_proj`, h, m, cfg.mlpBias, 'mlp_in'),
    L('up_proj', `${p}.mlp.up_proj`, h, m, cfg.mlpBias, 'mlp_in'),
    L('down_proj', `${p}.mlp.down_proj`, m, h, cfg.mlpBias, 'down_proj_in'),
  ];
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
  return { name: 'lm_head', role: 'lm_head', inFeatures: cfg.hiddenSize, outFeatures: cfg.vocabSize, hasBias: false, input: 'lm_head_in', layer: -1 };
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

/** Per-layer norm weight names. */
export function layerNorms(i: number): { input: string; postAttention: string } {
  return { input: `model.layers.${i}.input_layernorm.weight`, postAttention: `model.layers.${i}.post_attention_layernorm.weight` };
}
