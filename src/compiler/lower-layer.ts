/**
 * One decoder layer (Llama/Qwen2/Mistral) in ONNX:
 *
 *   h = x + o_proj(attention(rmsnorm(x)·γ_in))
 *   y = h + down_proj(silu(gate_proj(n)) · up_proj(n)),   n = rmsnorm(h)·γ_post
 *
 * with RoPE on q and k, the new K/V appended to the layer's cache, GQA attention (query head
 * h = kv·groups + j reads KV head kv) under an additive causal mask, and a static A8 point at every
 * linear input. The cache is sequence-major ([1, T, kv_heads, head_dim], io-contract.ts), each
 * layer's at its own width (uint8 KV8, uint16 KV16 or float32: src/ir/kv-quant.ts). With QuaRot's online rotations (model.online), R3 rotates q and k after RoPE (before
 * the KV cache) and R4 the down_proj input (before its A8 point); see {@link onlineRotation}. With
 * K-cache centering (model.quant.kCacheOffset) the cache holds K − c.
 */
import type { Lowering } from './lowering.js';
import { kvNames, kvPoints } from './io-contract.js';
import type { OnlineRotation } from '../ir/model.js';
import type { Dim } from '../../formats/onnx.js';
import { layerLinears, layerNorms } from '../ir/architectures.js';


/** Values shared by every layer of a graph. */
export interface LayerInputs {
  /** RoPE tables at the query positions, [1, S, 1, hd/2] */
  cos: string;
  sin: string;
  /** additive causal mask [S, T] */
  mask: string;
  /** the graph's S: a number or the symbolic 'sequence_length' */
  seqDim: Dim;
  /** Reshape targets (int64 [5] and [4]) of the attention scores: [1, kv_heads, g, S, T] and [1, kv_heads, g·S, T] */
  scoresGroups: string;
  scoresRows: string;
}

/**
 * Emits decoder layer `i` reading residual x: [1, S, H]; declares its `new_key_values.{i}.*` outputs
 * (this call's K/V rows, [1, S, kv_heads, head_dim]).
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
  let q = L.rope(L.reshape(L.linear(a, qS, `${P}/attn/q_proj`), [0, 0, nH, hd], `${P}/attn/q_heads`), shared.cos, shared.sin, `${P}/attn/q_rope`); // [1, S, nH, hd]
  let k = L.rope(L.reshape(L.linear(a, kS, `${P}/attn/k_proj`), [0, 0, nKv, hd], `${P}/attn/k_heads`), shared.cos, shared.sin, `${P}/attn/k_rope`); // [1, S, nKv, hd]
  const r3 = model.online?.r3;
  if (r3) {
    // QuaRot online R3: (q·R3)·(k·R3)ᵀ = q·kᵀ; the cache (and KV8) holds rotated K
    q = onlineRotation(L, q, r3, [1, -1, nH, hd], `${P}/attn/q_r3`);
    k = onlineRotation(L, k, r3, [1, -1, nKv, hd], `${P}/attn/k_r3`);
  }
  let kc = k; // [1, S, nKv, hd]: the cache is sequence-major (io-contract.ts)
  const kOffset = model.quant.kCacheOffset?.[i];
  if (kOffset) kc = L.kCenter(kc, i, kOffset, `${P}/attn/k_center`); // the cache holds K − c
  const v = L.reshape(L.linear(a, vS, `${P}/attn/v_proj`), [0, 0, nKv, hd], `${P}/attn/v_heads`);
  const kvq = L.kvQdq(i); // KV8, KV16 or float (null), this layer's own width
  const kp = kvPoints(i);
  const kAll = L.cacheAppend(kc, kv.pastKey, kv.newKey, kp.k, kvq && { params: kvq.k, bits: kvq.bits }, `${P}/attn/k_cache`); // [1, T, nKv, hd]
  const vAll = L.cacheAppend(v, kv.pastValue, kv.newValue, kp.v, kvq && { params: kvq.v, bits: kvq.bits }, `${P}/attn/v_cache`);
  g.output(kv.newKey, L.kvType(i), [1, shared.seqDim, nKv, hd]);
  g.output(kv.newValue, L.kvType(i), [1, shared.seqDim, nKv, hd]);
  // GQA as one product per KV head: the g query heads of a group and their S positions are the g·S
  // rows of one matrix (query head h = kv·g + j), so each KV head's K and V are read once per call,
  // not once per query head (6× fewer cache reads for Qwen2-1.5B's 12/2 heads)
  const qRows = L.reshape(L.transpose(q, [0, 2, 1, 3], `${P}/attn/q_bhsd`), [1, nKv, -1, hd], `${P}/attn/q_groups`); // [1, nKv, g·S, hd]
  const kT = L.transpose(kAll, [0, 2, 3, 1], `${P}/attn/k_T`); // [1, nKv, hd, T]
  const scores = g.node('MatMul', [qRows, kT], { name: `${P}/attn/QK` }); // [1, nKv, g·S, T]
  const scaled = g.node('Mul', [scores, g.floats([1 / Math.sqrt(hd)], true)], { name: `${P}/attn/Scale` });
  const scoresGroups = g.node('Reshape', [scaled, shared.scoresGroups], { name: `${P}/attn/scores_groups` }); // [1, nKv, g, S, T]
  const masked = g.node('Add', [scoresGroups, shared.mask], { name: `${P}/attn/Mask` }); // + [S, T]
  const probs = g.node('Reshape', [g.node('Softmax', [masked], { name: `${P}/attn/Softmax`, attrs: { axis: -1 } }), shared.scoresRows], { name: `${P}/attn/probs_rows` }); // [1, nKv, g·S, T]
  const vb = L.transpose(vAll, [0, 2, 1, 3], `${P}/attn/v_bhsd`); // [1, nKv, T, hd]
  const ctx = g.node('MatMul', [probs, vb], { name: `${P}/attn/PV` }); // [1, nKv, g·S, hd]
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
  // QuaRot online R4: down_proj's weight holds W·R4, its input is rotated here (before its A8 point)
  const r4 = model.online?.r4;
  const guRot = r4 ? onlineRotation(L, gu, r4, [1, -1, cfg.intermediateSize], `${P}/mlp/down_r4`) : gu;
  const d = L.linear(L.actPoint(guRot, i, 'down_proj_in'), downS, `${P}/mlp/down_proj`);
  return g.node('Add', [h, d], { name: `${P}/mlp/Residual` });
}

/**
 * Largest power-of-two factor P applied as one dense MatMul; above it, butterfly stages (see
 * onlineRotation). Measured with ORT on this 2-core machine, one token (S = 1): n = 8960 = 140·64,
 * dense 0.11 ms vs butterfly 0.70 ms; n = 1536 = 12·128, 0.014 vs 0.08 ms; n = 14336 = 28·512,
 * about equal (0.5-0.8 ms); n = 4096 = 1·4096, dense 7.7 ms vs butterfly 0.28 ms.
 */
export const DENSE_HADAMARD_MAX = 256;

/**
 * Emits x·(Q ⊗ H_P/√P) over the last axis of x (a model.online rotation of size n = K·P; see
 * src/ir/model.ts OnlineRotation). x is viewed as X: [N, K, P]; H_P/√P acts on P, as one MatMul with
 * the normalised Sylvester matrix (P ≤ {@link DENSE_HADAMARD_MAX}) or as a fast Walsh–Hadamard
 * transform: log₂P butterfly stages (Split / Add / Sub / Concat along one axis of a [N·K, 2, …, 2]
 * view, H_P = H_2 ⊗ … ⊗ H_2) and one scale; then Q mixes the K blocks, Y = Qᵀ·X (one MatMul).
 * @param outShape the Reshape target of the result (e.g. [1, -1, heads, head_dim])
 * @param denseMax largest P applied as a dense MatMul (default {@link DENSE_HADAMARD_MAX})
 * @returns the rotated tensor, reshaped to outShape
 */
export function onlineRotation(L: Lowering, x: string, rot: OnlineRotation, outShape: number[], name: string, denseMax = DENSE_HADAMARD_MAX): string {
  const g = L.g;
  const K = rot.k;
  const Pn = rot.size / K;
  let y = L.reshape(x, [-1, K, Pn], `${name}/Blocks`); // [N, K, P]
  if (Pn > 1 && Pn <= denseMax) {
    const h = g.weight(`hadamard.sylvester_${Pn}`, () => ({ dtype: 'F32', shape: [Pn, Pn], data: sylvesterNormalised(Pn) }));
    y = g.node('MatMul', [y, h], { name: `${name}/Hadamard` }); // X·H_P/√P
  } else if (Pn > 1) {
    const bits = Math.log2(Pn);
    y = L.reshape(y, [-1, ...Array<number>(bits).fill(2)], `${name}/FWHT/View`); // [N·K, 2, …, 2]
    for (let s = 0; s < bits; s++) {
      const st = `${name}/FWHT/stage${s}`;
      const [lo, hi] = g.nodeN('Split', [y], { name: `${st}/Split`, attrs: { axis: s + 1 }, outputs: 2 });
      const sum = g.node('Add', [lo, hi], { name: `${st}/Add` });
      const diff = g.node('Sub', [lo, hi], { name: `${st}/Sub` });
      y = g.node('Concat', [sum, diff], { name: `${st}/Concat`, attrs: { axis: s + 1 } });
    }
    y = g.node('Mul', [L.reshape(y, [-1, K, Pn], `${name}/FWHT/Blocks`), g.floats([1 / Math.sqrt(Pn)], true)], { name: `${name}/FWHT/Scale` });
  }
  if (K > 1 && rot.factor) {
    const factor = rot.factor;
    const qt = g.weight(`${factor}.T`, () => {
      const q = L.load(factor).data as Float32Array; // Q: [K, K]
      const t = new Float32Array(K * K);
      for (let i = 0; i < K; i++) for (let j = 0; j < K; j++) t[j * K + i] = q[i * K + j];
      return { dtype: 'F32', shape: [K, K], data: t };
    });
    y = g.node('MatMul', [qt, y], { name: `${name}/MixBlocks` }); // Qᵀ·X: [N, K, P]
  }
  return L.reshape(y, outShape, `${name}/Unblocks`);
}

/** H_P/√P (Sylvester, H[i, j] = (−1)^popcount(i & j)) as float32 [P, P]. */
function sylvesterNormalised(P: number): Float32Array {
  const h = new Float32Array(P * P);
  const s = 1 / Math.sqrt(P);
  for (let i = 0; i < P; i++)
    for (let j = 0; j < P; j++) {
      let b = i & j;
      let parity = 0;
      for (; b; b &= b - 1) parity ^= 1;
      h[i * P + j] = parity ? -s : s;
    }
  return h;
}
