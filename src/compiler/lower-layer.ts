/**
 * One decoder layer (Llama/Qwen2/Mistral) in ONNX:
 *
 *   h = x + o_proj(attention(rmsnorm(x)·γ_in))
 *   y = h + down_proj(silu(gate_proj(n)) · up_proj(n)),   n = rmsnorm(h)·γ_post
 *
 * with RoPE on q and k, the new K/V appended to the layer's cache, GQA attention (query head
 * h = kv·groups + j reads KV head kv) under an additive causal mask, and a static A8 point at every
 * linear input.
 */
import type { Lowering } from './lowering.js';
import { layerLinears, layerNorms } from '../ir/architectures.js';

/** Names of the KV-cache I/O of layer i. */
export function kvNames(i: number) {
  return {
    pastKey: `past_key_values.${i}.key`,
    pastValue: `past_key_values.${i}.value`,
    presentKey: `present.${i}.key`,
    presentValue: `present.${i}.value`,
  };
}

/** KV capture point names of layer i (K after RoPE, V). */
export const kvPoints = (i: number) => ({ k: `model.layers.${i}.k_cache`, v: `model.layers.${i}.v_cache` });

/** Values shared by every layer of a graph. */
export interface LayerInputs {
  /** RoPE tables at the query positions, [1, S, 1, hd/2] */
  cos: string;
  sin: string;
  /** additive causal mask [S, T] */
  mask: string;
}

/**
 * Emits decoder layer `i` reading residual x: [1, S, H]; declares its `present.{i}.*` outputs.
 * @returns the layer's output residual [1, S, H]
 */
export function lowerDecoderLayer(L: Lowering, i: number, x: string, shared: LayerInputs): string {
  const { g, model } = L;
  const cfg = model.config;
  const { numHeads: nH, numKvHeads: nKv, headDim: hd } = cfg;
  const groups = nH / nKv;
  const P = `/model/layers.${i}`;
  const [qS, kS, vS, oS, gateS, upS, downS] = layerLinears(cfg, i);
  const norms = layerNorms(i);
  const kv = kvNames(i);
  // attention
  const a = L.actPoint(L.rmsNorm(x, norms.input, `${P}/input_layernorm`), i, 'attn_in');
  const q = L.rope(L.reshape(L.linear(a, qS, `${P}/attn/q_proj`), [0, 0, nH, hd], `${P}/attn/q_heads`), shared.cos, shared.sin, `${P}/attn/q_rope`); // [1, S, nH, hd]
  const k = L.rope(L.reshape(L.linear(a, kS, `${P}/attn/k_proj`), [0, 0, nKv, hd], `${P}/attn/k_heads`), shared.cos, shared.sin, `${P}/attn/k_rope`); // [1, S, nKv, hd]
  const v = L.reshape(L.linear(a, vS, `${P}/attn/v_proj`), [0, 0, nKv, hd], `${P}/attn/v_heads`);
  const kt = L.transpose(k, [0, 2, 1, 3], `${P}/attn/k_bhsd`); // [1, nKv, S, hd]
  const vt = L.transpose(v, [0, 2, 1, 3], `${P}/attn/v_bhsd`);
  const kvq = model.quant.kvCache[i];
  const kp = kvPoints(i);
  const kAll = L.cacheAppend(kt, kv.pastKey, kv.presentKey, kp.k, kvq?.k, `${P}/attn/k_cache`); // [1, nKv, T, hd]
  const vAll = L.cacheAppend(vt, kv.pastValue, kv.presentValue, kp.v, kvq?.v, `${P}/attn/v_cache`);
  g.output(kv.presentKey, L.kvType, [1, nKv, 'total_sequence_length', hd]);
  g.output(kv.presentValue, L.kvType, [1, nKv, 'total_sequence_length', hd]);
  const q5 = L.reshape(L.transpose(q, [0, 2, 1, 3], `${P}/attn/q_bhsd`), [1, nKv, groups, -1, hd], `${P}/attn/q_groups`); // [1, nKv, g, S, hd]
  const kT5 = L.transpose(g.node('Unsqueeze', [kAll, g.ints([2])], { name: `${P}/attn/k_groups` }), [0, 1, 2, 4, 3], `${P}/attn/k_T`); // [1, nKv, 1, hd, T]
  const scores = g.node('MatMul', [q5, kT5], { name: `${P}/attn/QK` }); // [1, nKv, g, S, T]
  const scaled = g.node('Mul', [scores, g.floats([1 / Math.sqrt(hd)], true)], { name: `${P}/attn/Scale` });
  const probs = g.node('Softmax', [g.node('Add', [scaled, shared.mask], { name: `${P}/attn/Mask` })], { name: `${P}/attn/Softmax`, attrs: { axis: -1 } });
  const v5 = g.node('Unsqueeze', [vAll, g.ints([2])], { name: `${P}/attn/v_groups` }); // [1, nKv, 1, T, hd]
  const ctx = g.node('MatMul', [probs, v5], { name: `${P}/attn/PV` }); // [1, nKv, g, S, hd]
  const heads = L.transpose(L.reshape(ctx, [1, nH, -1, hd], `${P}/attn/ctx_heads`), [0, 2, 1, 3], `${P}/attn/ctx_bshd`); // [1, S, nH, hd]
  const merged = L.reshape(heads, [0, 0, nH * hd], `${P}/attn/ctx`);
  const o = L.linear(L.actPoint(merged, i, 'o_proj_in'), oS, `${P}/attn/o_proj`);
  const h = g.node('Add', [x, o], { name: `${P}/attn/Residual` });
  // MLP
  const m = L.actPoint(L.rmsNorm(h, norms.postAttention, `${P}/post_attention_layernorm`), i, 'mlp_in');
  const gate = L.linear(m, gateS, `${P}/mlp/gate_proj`);
  const up = L.linear(m, upS, `${P}/mlp/up_proj`);
  const silu = g.node('Mul', [gate, g.node('Sigmoid', [gate], { name: `${P}/mlp/Sigmoid` })], { name: `${P}/mlp/SiLU` });
  const gu = g.node('Mul', [silu, up], { name: `${P}/mlp/GateUp` });
  const d = L.linear(L.actPoint(gu, i, 'down_proj_in'), downS, `${P}/mlp/down_proj`);
  return g.node('Add', [h, d], { name: `${P}/mlp/Residual` });
}
