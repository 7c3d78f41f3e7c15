/**
 * Lowers a Model to an ONNX graph: one lowering for the three modes.
 *
 * - fp32 (reference): float MatMuls, float KV cache.
 * - quantized: every weight-quantized linear becomes com.microsoft MatMulNBits (4- or 8-bit, zero
 *   point 2^(bits−1)), every static activation point a QuantizeLinear/DequantizeLinear pair (uint8,
 *   or com.microsoft uint16; per-tensor), and each layer's KV cache is held at its width — uint8
 *   (KV8), uint16 (KV16) or float32 (src/ir/kv-quant.ts): new K (after RoPE) and V are quantized,
 *   concatenated to the past and dequantized for attention.
 * - calibration capture: extra outputs `capture.<point>` holding the float activation at every
 *   quantization point (before its QDQ), for the observers in calibration/.
 *
 * I/O contract: src/compiler/io-contract.ts (every input/output name the runtime feeds or reads).
 *
 * Positions are P..T−1 (taken from the past's length); attention is causal by position, so
 * padding appended at the end of a static prefill chunk never affects real tokens.
 */
import { GraphBuilder, type Dim } from '../../formats/onnx.js';
import type { Model } from '../ir/model.js';
import { lmHead, allLinears, layerLinears } from '../ir/architectures.js';
import type { Tensor } from '../ir/tensor.js';
import { UnsupportedModelError } from '../core/errors.js';
import { Lowering } from './lowering.js';
import { hasKvRanges } from '../ir/kv-quant.js';
import { lowerDecoderLayer, type LayerInputs } from './lower-layer.js';
import { kvNames, INPUT_IDS, LOGITS, LOGIT_POSITIONS, HIDDEN_STATES, HIDDEN_STATES_OUT } from './io-contract.js';


export interface LowerOptions {
  /** static tokens per call (prefill chunk length, 1 for decode) or 'dynamic' */
  seqLen: number | 'dynamic';
  /** maximum context in tokens: the RoPE tables' length */
  maxContext: number;
  /** emit `capture.<point>` outputs (calibration); default false */
  capture?: boolean;
  /** apply the model's static A8 ranges; default: when the model has them */
  activationQuant?: boolean;
  /** hold each layer's KV cache at the width of the model's KV ranges (KV8 uint8, KV16 uint16); default: when the model has them */
  kvQuant?: boolean;
  /** graph name */
  name?: string;
  /** initializer store shared with the model's other graphs (weights are built once) */
  initializers?: Map<string, Tensor>;
  /** LoRA graph inputs for the linears the model's adapters target (see Lowering.loraBranch); default true */
  lora?: boolean;
  /** add the `logit_positions` input: lm_head runs only on the rows it lists (default false: every row) */
  logitPositions?: boolean;
}

/** RoPE tables cos/sin [maxContext, head_dim/2] (HF rotate-half layout, inv_freq = θ^(−2j/d)). */
export function ropeTables(headDim: number, theta: number, maxContext: number): { cos: Float32Array; sin: Float32Array } {
  const half = headDim / 2;
  const cos = new Float32Array(maxContext * half);
  const sin = new Float32Array(maxContext * half);
  for (let p = 0; p < maxContext; p++)
    for (let j = 0; j < half; j++) {
      const a = p * Math.pow(theta, (-2 * j) / headDim);
      cos[p * half + j] = Math.cos(a);
      sin[p * half + j] = Math.sin(a);
    }
  return { cos, sin };
}

function newLowering(model: Model, opts: Omit<LowerOptions, 'seqLen'>): Lowering {
  const cfg = model.config;
  if (cfg.headDim % 2 !== 0) throw new UnsupportedModelError(`head_dim ${cfg.headDim} must be even for RoPE`);
  const g = new GraphBuilder(opts.name ?? 'edgellm', opts.initializers);
  return new Lowering(g, model, {
    capture: opts.capture ?? false,
    actQuant: (opts.activationQuant ?? true) && Object.keys(model.quant.activations).length > 0,
    kvQuant: (opts.kvQuant ?? true) && hasKvRanges(model),
    lora: opts.lora ?? true,
  });
}

/**
 * Query positions P..T−1 (P read from the past cache `pastKey`, S from `tokens` axis 1), the RoPE
 * tables at those positions, the additive causal mask [S, T] and the attention scores' reshape
 * targets (which need T).
 */
function positionsAndMask(L: Lowering, pastKey: string, tokens: string, seqDim: Dim, maxContext: number): LayerInputs {
  const { g, model } = L;
  const hd = model.config.headDim;
  const pastLen = g.node('Shape', [pastKey], { name: '/model/pos/past_len', attrs: { start: 1, end: 2 } }); // [1, P, kv, hd]
  const curLen = g.node('Shape', [tokens], { name: '/model/pos/cur_len', attrs: { start: 1, end: 2 } });
  const total = g.node('Add', [pastLen, curLen], { name: '/model/pos/total_len' });
  const one = g.ints([1], true);
  const totalScalar = g.node('Squeeze', [total, g.ints([0])], { name: '/model/pos/total_scalar' });
  const pastScalar = g.node('Squeeze', [pastLen, g.ints([0])], { name: '/model/pos/past_scalar' });
  const pos = g.node('Range', [pastScalar, totalScalar, one], { name: '/model/pos/q_positions' }); // [S]
  const kpos = g.node('Range', [g.ints([0], true), totalScalar, one], { name: '/model/pos/k_positions' }); // [T]
  const allowed = g.node(
    'LessOrEqual',
    [
      g.node('Unsqueeze', [kpos, g.ints([0])], { name: '/model/mask/k_row' }), // [1, T]
      g.node('Unsqueeze', [pos, g.ints([1])], { name: '/model/mask/q_col' }), // [S, 1]
    ],
    { name: '/model/mask/causal' },
  ); // bool [S, T]
  const mask = g.node('Where', [allowed, g.floats([0], true), g.floats([-1e30], true)], { name: '/model/mask/additive' }); // [S, T]
  const tables = () => ropeTables(hd, model.config.ropeTheta, maxContext);
  g.weight('rope.cos_cache', () => ({ dtype: 'F32', shape: [maxContext, hd / 2], data: tables().cos }));
  g.weight('rope.sin_cache', () => ({ dtype: 'F32', shape: [maxContext, hd / 2], data: tables().sin }));
  const at = (table: string, name: string) =>
    g.node('Unsqueeze', [g.node('Gather', [table, pos], { name: `${name}/Gather`, attrs: { axis: 0 } }), g.ints([0, 2])], { name }); // [1, S, 1, hd/2]
  const { numHeads: nH, numKvHeads: nKv } = model.config;
  const shape = (dims: number[], name: string) => g.node('Concat', [g.ints(dims), total], { name, attrs: { axis: 0 } });
  return {
    cos: at('rope.cos_cache', '/model/rope/cos'),
    sin: at('rope.sin_cache', '/model/rope/sin'),
    mask,
    seqDim,
    scoresGroups: shape([1, nKv, nH / nKv, -1], '/model/attn_shape/scores_groups'),
    scoresRows: shape([1, nKv, -1], '/model/attn_shape/scores_rows'),
  };
}

function kvInputs(L: Lowering, i: number): void {
  const { numKvHeads: nKv, headDim: hd } = L.model.config;
  const n = kvNames(i);
  L.g.input(n.pastKey, L.kvType(i), [1, 'past_sequence_length', nKv, hd]);
  L.g.input(n.pastValue, L.kvType(i), [1, 'past_sequence_length', nKv, hd]);
}

/**
 * Builds the whole-model graph of `model` with `opts`. Weights become the builder's initializers,
 * named after the model's tensors (`<linear>.weight` float [out, in], or `.qweight`/`.scales` for
 * MatMulNBits).
 * @throws UnsupportedModelError when the head dimension is odd or a weight/range is missing
 */
export function lowerModel(model: Model, opts: LowerOptions): GraphBuilder {
  const cfg = model.config;
  const L = newLowering(model, opts);
  const g = L.g;
  const S: Dim = opts.seqLen === 'dynamic' ? 'sequence_length' : opts.seqLen;
  const ids = g.input(INPUT_IDS, 'int64', [1, S]);
  for (let i = 0; i < cfg.numLayers; i++) kvInputs(L, i);
  L.loraInputs(allLinears(cfg));
  const shared = positionsAndMask(L, kvNames(0).pastKey, ids, S, opts.maxContext);
  let x = L.embedding(ids); // [1, S, H]
  for (let i = 0; i < cfg.numLayers; i++) x = lowerDecoderLayer(L, i, x, shared);
  let R: Dim = S;
  if (opts.logitPositions) {
    // only the rows asked for reach the final norm and lm_head (both act row by row)
    const rows = g.input(LOGIT_POSITIONS, 'int64', ['logit_rows']);
    x = g.node('Gather', [x, rows], { name: '/model/logit_rows/Gather', attrs: { axis: 1 } }); // [1, R, H]
    R = 'logit_rows';
  }
  const n = L.actPoint(L.rmsNorm(x, 'model.norm.weight', '/model/norm'), -1, 'lm_head_in');
  const logits = L.linear(n, lmHead(cfg), '/lm_head');
  g.node('Identity', [logits], { name: '/model/logits', outputNames: [LOGITS] });
  g.output(LOGITS, 'float32', [1, R, cfg.vocabSize]);
  return g;
}

/**
 * One decoder layer as a standalone graph, for layer-by-layer work (GPTQ's true-sequential
 * calibration, streaming quantization): input `hidden_states` float [1, S, H] and the layer's
 * `past_key_values.{i}.*` (feed empty [1, 0, kv_heads, head_dim] tensors for a fresh window);
 * outputs `hidden_states_out` [1, S, H], `new_key_values.{i}.*` and, with `capture`, the layer's
 * quantization points.
 */
export function lowerLayerGraph(model: Model, layer: number, opts: Omit<LowerOptions, 'seqLen'>): GraphBuilder {
  const L = newLowering(model, opts);
  const g = L.g;
  const x = g.input(HIDDEN_STATES, 'float32', [1, 'sequence_length', model.config.hiddenSize]);
  kvInputs(L, layer);
  L.loraInputs(layerLinears(model.config, layer));
  const shared = positionsAndMask(L, kvNames(layer).pastKey, x, 'sequence_length', opts.maxContext);
  const y = lowerDecoderLayer(L, layer, x, shared);
  g.node('Identity', [y], { name: `/model/layers.${layer}/output`, outputNames: ['hidden_states_out'] });
  g.output(HIDDEN_STATES_OUT, 'float32', [1, 'sequence_length', model.config.hiddenSize]);
  return g;
}
