/**
 * Lowers a Model to an ONNX graph: one lowering for the three modes.
 *
 * - fp32 (reference): float MatMuls, float KV cache.
 * - quantized: every weight-quantized linear becomes com.microsoft MatMulNBits (4-bit, zero point 8),
 *   every static A8 point a QuantizeLinear/DequantizeLinear pair (uint8, per-tensor), and the KV
 *   cache is held as uint8: new K (after RoPE) and V are quantized, concatenated to the past and
 *   dequantized for attention.
 * - calibration capture: extra outputs `capture.<point>` holding the float activation at every
 *   quantization point (before its QDQ), for the observers in calibration/.
 *
 * I/O contract (batch 1; S = `seqLen`, P = past_sequence_length, T = P + S):
 *
 * | name                          | dtype            | shape                      |
 * | ----------------------------- | ---------------- | -------------------------- |
 * | input_ids                     | int64            | [1, S]                     |
 * | past_key_values.{i}.key/value | float32 or uint8 | [1, kv_heads, P, head_dim] |
 * | logits                        | float32          | [1, S, vocab]              |
 * | present.{i}.key/value         | float32 or uint8 | [1, kv_heads, T, head_dim] |
 *
 * Positions are P..T−1 (taken from the past's length); attention is causal by position, so
 * padding appended at the end of a static prefill chunk never affects real tokens.
 */
import { GraphBuilder, type ElemType, type Dim } from '../../formats/onnx.js';
import type { Model, QParams } from '../ir/model.js';
import { layerLinears, lmHead, actPointName, layerNorms, type LinearSpec, type LinearInput } from '../ir/architectures.js';
import { toFloat32, type Tensor } from '../ir/tensor.js';
import { UnsupportedModelError } from '../errors.js';

export interface LowerOptions {
  /** static tokens per call (prefill chunk length, 1 for decode) or 'dynamic' */
  seqLen: number | 'dynamic';
  /** maximum context in tokens: the RoPE tables' length */
  maxContext: number;
  /** emit `capture.<point>` outputs (calibration); default false */
  capture?: boolean;
  /** apply the model's static A8 ranges; default: when the model has them */
  activationQuant?: boolean;
  /** hold the KV cache as uint8 with the model's KV8 ranges; default: when the model has them */
  kvQuant?: boolean;
  /** graph name */
  name?: string;
  /** initializer store shared with the model's other graphs (weights are built once) */
  initializers?: Map<string, Tensor>;
}

/** Names of the KV-cache I/O of layer i. */
export function kvNames(i: number) {
  return {
    pastKey: `past_key_values.${i}.key`,
    pastValue: `past_key_values.${i}.value`,
    presentKey: `present.${i}.key`,
    presentValue: `present.${i}.value`,
  };
}

/** Capture output name of a quantization point. */
export const captureName = (point: string) => `capture.${point}`;
/** KV capture point names of layer i (K after RoPE, V). */
export const kvPoints = (i: number) => ({ k: `model.layers.${i}.k_cache`, v: `model.layers.${i}.v_cache` });

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

/**
 * Builds the graph of `model` with `opts`. Weights become the builder's initializers, named after
 * the model's tensors (`<linear>.weight` float [out, in], or `.qweight`/`.scales` for MatMulNBits).
 * @throws UnsupportedModelError when the head dimension is odd (RoPE needs pairs)
 */
export function lowerModel(model: Model, opts: LowerOptions): GraphBuilder {
  const cfg = model.config;
  if (cfg.headDim % 2 !== 0) throw new UnsupportedModelError(`head_dim ${cfg.headDim} must be even for RoPE`);
  const g = new GraphBuilder(opts.name ?? 'edgellm', opts.initializers);
  const S: Dim = opts.seqLen === 'dynamic' ? 'sequence_length' : opts.seqLen;
  const actQuant = (opts.activationQuant ?? true) && Object.keys(model.quant.activations).length > 0;
  const kvQuant = (opts.kvQuant ?? true) && model.quant.kvCache.length === cfg.numLayers;
  const kvType: ElemType = kvQuant ? 'uint8' : 'float32';
  const { numHeads: nH, numKvHeads: nKv, headDim: hd, hiddenSize: H } = cfg;
  const groups = nH / nKv;
  const weightCache = new Map<string, Tensor>();
  const load = (name: string): Tensor => {
    let t = weightCache.get(name);
    if (!t) {
      const lt = model.weights.get(name);
      if (!lt) throw new UnsupportedModelError(`lowering: weight '${name}' is missing from the model`);
      t = lt.load();
      weightCache.set(name, t);
    }
    return t;
  };
  const f32 = (name: string): Tensor => ({ dtype: 'F32', shape: load(name).shape, data: toFloat32(load(name)) });

  // ---- inputs
  const ids = g.input('input_ids', 'int64', [1, S]);
  for (let i = 0; i < cfg.numLayers; i++) {
    const n = kvNames(i);
    g.input(n.pastKey, kvType, [1, nKv, 'past_sequence_length', hd]);
    g.input(n.pastValue, kvType, [1, nKv, 'past_sequence_length', hd]);
  }

  // ---- positions and causal mask: q positions P..T-1, k positions 0..T-1
  const pastLen = g.node('Shape', [kvNames(0).pastKey], { name: '/model/pos/past_len', attrs: { start: 2, end: 3 } });
  const curLen = g.node('Shape', [ids], { name: '/model/pos/cur_len', attrs: { start: 1, end: 2 } });
  const total = g.node('Add', [pastLen, curLen], { name: '/model/pos/total_len' });
  const sq = (x: string, name: string) => g.node('Squeeze', [x, g.ints([0])], { name });
  const one = g.ints([1], true);
  const pos = g.node('Range', [sq(pastLen, '/model/pos/past_scalar'), sq(total, '/model/pos/total_scalar'), one], { name: '/model/pos/q_positions' }); // [S]
  const kpos = g.node('Range', [g.ints([0], true), '/model/pos/total_scalar/output_0', one], { name: '/model/pos/k_positions' }); // [T]
  const allowed = g.node(
    'LessOrEqual',
    [
      g.node('Unsqueeze', [kpos, g.ints([0])], { name: '/model/mask/k_row' }), // [1, T]
      g.node('Unsqueeze', [pos, g.ints([1])], { name: '/model/mask/q_col' }), // [S, 1]
    ],
    { name: '/model/mask/causal' },
  ); // bool [S, T]
  const mask = g.node('Where', [allowed, g.floats([0], true), g.floats([-1e30], true)], { name: '/model/mask/additive' }); // [S, T]

  const maxCtx = opts.maxContext;
  const rope = () => ropeTables(hd, cfg.ropeTheta, maxCtx);
  g.weight('rope.cos_cache', () => ({ dtype: 'F32', shape: [maxCtx, hd / 2], data: rope().cos }));
  g.weight('rope.sin_cache', () => ({ dtype: 'F32', shape: [maxCtx, hd / 2], data: rope().sin }));
  const ropeAt = (table: string, name: string) =>
    g.node('Unsqueeze', [g.node('Gather', [table, pos], { name: `${name}/Gather`, attrs: { axis: 0 } }), g.ints([0, 2])], { name }); // [1, S, 1, hd/2]
  const cos = ropeAt('rope.cos_cache', '/model/rope/cos');
  const sin = ropeAt('rope.sin_cache', '/model/rope/sin');

  // ---- helpers
  const rmsNorm = (x: string, weight: string, name: string): string => {
    const w = g.weight(weight, () => f32(weight));
    const sqr = g.node('Mul', [x, x], { name: `${name}/Square` });
    const mean = g.node('ReduceMean', [sqr], { name: `${name}/ReduceMean`, attrs: { axes: [-1], keepdims: 1 } });
    const eps = g.node('Add', [mean, g.floats([cfg.rmsNormEps], true)], { name: `${name}/AddEps` });
    const inv = g.node('Reciprocal', [g.node('Sqrt', [eps], { name: `${name}/Sqrt` })], { name: `${name}/Reciprocal` });
    return g.node('Mul', [g.node('Mul', [x, inv], { name: `${name}/Normalize` }), w], { name: `${name}/Scale` });
  };
  const qp = (p: QParams, name: string): [string, string] => [
    g.constant({ dtype: 'F32', shape: [], data: Float32Array.of(p.scale) }, `${name}_scale`),
    g.constant({ dtype: 'U8', shape: [], data: Uint8Array.of(p.zeroPoint) }, `${name}_zp`),
  ];
  const capture = (x: string, point: string) => {
    if (!opts.capture) return;
    g.node('Identity', [x], { name: `/capture/${point}`, outputNames: [captureName(point)] });
    g.output(captureName(point), 'float32', null);
  };
  /** static A8 fake-quantization at an activation point */
  const actPoint = (x: string, layer: number, input: LinearInput): string => {
    const point = actPointName(layer, input);
    capture(x, point);
    if (!actQuant) return x;
    const p = model.quant.activations[point];
    if (!p) throw new UnsupportedModelError(`lowering: no A8 range for activation point '${point}'`);
    const [s, z] = qp(p, point);
    const q = g.node('QuantizeLinear', [x, s, z], { name: `/quant/${point}/QuantizeLinear` });
    return g.node('DequantizeLinear', [q, s, z], { name: `/quant/${point}/DequantizeLinear` });
  };
  const linear = (x: string, spec: LinearSpec, path: string): string => {
    const lq = model.quant.linears[spec.name];
    let y: string;
    if (lq) {
      g.weight(`${spec.name}.qweight`, () => load(`${spec.name}.qweight`));
      g.weight(`${spec.name}.scales`, () => {
        const sc = load(`${spec.name}.scales`);
        return { dtype: 'F32', shape: [sc.data.length], data: toFloat32(sc) };
      });
      y = g.node('MatMulNBits', [x, `${spec.name}.qweight`, `${spec.name}.scales`], {
        name: `${path}/MatMulNBits`,
        domain: 'com.microsoft',
        attrs: { K: spec.inFeatures, N: spec.outFeatures, bits: lq.bits, block_size: lq.groupSize },
      });
    } else {
      // Float weights stay [out, in] under their own names (a tied lm_head reads the embedding
      // table itself): Gemm with transB on the flattened tokens, y = x·Wᵀ.
      const wname = spec.role === 'lm_head' && !model.weights.has('lm_head.weight') ? 'model.embed_tokens.weight' : `${spec.name}.weight`;
      g.weight(wname, () => f32(wname));
      const flat = reshape(x, [-1, spec.inFeatures], `${path}/Flatten`);
      const gemm = g.node('Gemm', [flat, wname], { name: `${path}/Gemm`, attrs: { transB: 1 } });
      y = reshape(gemm, [1, -1, spec.outFeatures], `${path}/Unflatten`);
    }
    if (spec.hasBias) {
      g.weight(`${spec.name}.bias`, () => f32(`${spec.name}.bias`));
      y = g.node('Add', [y, `${spec.name}.bias`], { name: `${path}/BiasAdd` });
    }
    return y;
  };
  const reshape = (x: string, shape: number[], name: string) => g.node('Reshape', [x, g.ints(shape)], { name });
  const transpose = (x: string, perm: number[], name: string) => g.node('Transpose', [x], { name, attrs: { perm } });
  /** rotate-half RoPE on t: [1, S, heads, hd] */
  const applyRope = (t: string, name: string): string => {
    const half = hd / 2;
    const x1 = g.node('Slice', [t, g.ints([0]), g.ints([half]), g.ints([3])], { name: `${name}/x1` });
    const x2 = g.node('Slice', [t, g.ints([half]), g.ints([hd]), g.ints([3])], { name: `${name}/x2` });
    const m = (a: string, b: string, n: string) => g.node('Mul', [a, b], { name: `${name}/${n}` });
    const r1 = g.node('Sub', [m(x1, cos, 'x1cos'), m(x2, sin, 'x2sin')], { name: `${name}/r1` });
    const r2 = g.node('Add', [m(x2, cos, 'x2cos'), m(x1, sin, 'x1sin')], { name: `${name}/r2` });
    return g.node('Concat', [r1, r2], { name: `${name}/Concat`, attrs: { axis: 3 } });
  };
  /** appends new K or V [1, kv, S, hd] to the past; returns the float cache [1, kv, T, hd] */
  const cacheAppend = (fresh: string, past: string, present: string, point: string, p: QParams | undefined, name: string): string => {
    capture(fresh, point);
    if (!kvQuant) {
      g.node('Concat', [past, fresh], { name: `${name}/Concat`, attrs: { axis: 2 }, outputNames: [present] });
      return present;
    }
    const [s, z] = qp(p!, point);
    const q = g.node('QuantizeLinear', [fresh, s, z], { name: `${name}/QuantizeLinear` });
    g.node('Concat', [past, q], { name: `${name}/Concat`, attrs: { axis: 2 }, outputNames: [present] });
    return g.node('DequantizeLinear', [present, s, z], { name: `${name}/DequantizeLinear` });
  };

  // ---- decoder
  g.weight('model.embed_tokens.weight', () => f32('model.embed_tokens.weight'));
  let x = g.node('Gather', ['model.embed_tokens.weight', ids], { name: '/model/embed_tokens/Gather', attrs: { axis: 0 } }); // [1, S, H]
  const scale = g.floats([1 / Math.sqrt(hd)], true);
  for (let i = 0; i < cfg.numLayers; i++) {
    const P = `/model/layers.${i}`;
    const [qS, kS, vS, oS, gateS, upS, downS] = layerLinears(cfg, i);
    const norms = layerNorms(i);
    const kv = kvNames(i);
    // attention
    const a = actPoint(rmsNorm(x, norms.input, `${P}/input_layernorm`), i, 'attn_in');
    const q = applyRope(reshape(linear(a, qS, `${P}/attn/q_proj`), [0, 0, nH, hd], `${P}/attn/q_heads`), `${P}/attn/q_rope`); // [1, S, nH, hd]
    const k = applyRope(reshape(linear(a, kS, `${P}/attn/k_proj`), [0, 0, nKv, hd], `${P}/attn/k_heads`), `${P}/attn/k_rope`); // [1, S, nKv, hd]
    const v = reshape(linear(a, vS, `${P}/attn/v_proj`), [0, 0, nKv, hd], `${P}/attn/v_heads`);
    const kt = transpose(k, [0, 2, 1, 3], `${P}/attn/k_bhsd`); // [1, nKv, S, hd]
    const vt = transpose(v, [0, 2, 1, 3], `${P}/attn/v_bhsd`);
    const kvq = model.quant.kvCache[i];
    const kp = kvPoints(i);
    const kAll = cacheAppend(kt, kv.pastKey, kv.presentKey, kp.k, kvq?.k, `${P}/attn/k_cache`); // [1, nKv, T, hd]
    const vAll = cacheAppend(vt, kv.pastValue, kv.presentValue, kp.v, kvq?.v, `${P}/attn/v_cache`);
    g.output(kv.presentKey, kvType, [1, nKv, 'total_sequence_length', hd]);
    g.output(kv.presentValue, kvType, [1, nKv, 'total_sequence_length', hd]);
    // GQA: query head h = kv·groups + j reads kv head kv
    const q5 = reshape(transpose(q, [0, 2, 1, 3], `${P}/attn/q_bhsd`), [1, nKv, groups, -1, hd], `${P}/attn/q_groups`); // [1, nKv, g, S, hd]
    const kT5 = transpose(g.node('Unsqueeze', [kAll, g.ints([2])], { name: `${P}/attn/k_groups` }), [0, 1, 2, 4, 3], `${P}/attn/k_T`); // [1, nKv, 1, hd, T]
    const scores = g.node('MatMul', [q5, kT5], { name: `${P}/attn/QK` }); // [1, nKv, g, S, T]
    const masked = g.node('Add', [g.node('Mul', [scores, scale], { name: `${P}/attn/Scale` }), mask], { name: `${P}/attn/Mask` });
    const probs = g.node('Softmax', [masked], { name: `${P}/attn/Softmax`, attrs: { axis: -1 } });
    const v5 = g.node('Unsqueeze', [vAll, g.ints([2])], { name: `${P}/attn/v_groups` }); // [1, nKv, 1, T, hd]
    const ctx = g.node('MatMul', [probs, v5], { name: `${P}/attn/PV` }); // [1, nKv, g, S, hd]
    const merged = reshape(transpose(reshape(ctx, [1, nH, -1, hd], `${P}/attn/ctx_heads`), [0, 2, 1, 3], `${P}/attn/ctx_bshd`), [0, 0, nH * hd], `${P}/attn/ctx`);
    const o = linear(actPoint(merged, i, 'o_proj_in'), oS, `${P}/attn/o_proj`);
    x = g.node('Add', [x, o], { name: `${P}/attn/Residual` });
    // MLP
    const m = actPoint(rmsNorm(x, norms.postAttention, `${P}/post_attention_layernorm`), i, 'mlp_in');
    const gate = linear(m, gateS, `${P}/mlp/gate_proj`);
    const up = linear(m, upS, `${P}/mlp/up_proj`);
    const silu = g.node('Mul', [gate, g.node('Sigmoid', [gate], { name: `${P}/mlp/Sigmoid` })], { name: `${P}/mlp/SiLU` });
    const h = g.node('Mul', [silu, up], { name: `${P}/mlp/GateUp` });
    const d = linear(actPoint(h, i, 'down_proj_in'), downS, `${P}/mlp/down_proj`);
    x = g.node('Add', [x, d], { name: `${P}/mlp/Residual` });
  }
  const n = actPoint(rmsNorm(x, 'model.norm.weight', '/model/norm'), -1, 'lm_head_in');
  const logits = linear(n, lmHead(cfg), '/lm_head');
  g.node('Identity', [logits], { name: '/model/logits', outputNames: ['logits'] });
  g.output('logits', 'float32', [1, S, cfg.vocabSize]);
  return g;
}
