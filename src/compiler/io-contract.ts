/**
 * The graph I/O contract: every input and output name the lowering (src/compiler/lower.ts) emits
 * and the runtime, the calibration runs and the passes feed or read. Batch 1; S = tokens per call,
 * P = past_sequence_length, T = P + S:
 *
 * | name                          | dtype                     | shape                      |
 * | ----------------------------- | ------------------------- | -------------------------- |
 * | input_ids                     | int64                     | [1, S]                     |
 * | logit_positions               | int64                     | [R]: rows of S to compute logits for (compiled graphs) |
 * | past_key_values.{i}.key/value | float32, uint8 or uint16  | [1, P, kv_heads, head_dim] |
 * | logits                        | float32                   | [1, S, vocab] ([1, R, vocab] with logit_positions) |
 * | new_key_values.{i}.key/value  | float32, uint8 or uint16  | [1, S, kv_heads, head_dim]: this call's rows only |
 * | lora.<linear>.A / .B          | float32          | [r, in] / [out, r]         |
 * | lora.<linear>.act_scale / _zero_point | float32 / uint8 | [] (with static A8)  |
 * | capture.<point>               | float32          | the point's activation (calibration graphs) |
 * | hidden_states / hidden_states_out | float32      | [1, S, hidden] (one-layer graphs of GPTQ)  |
 *
 * Layer i's cache dtype is its width (src/ir/kv-quant.ts): uint8 KV8 codes, uint16 KV16 codes or
 * float32; layers of one graph may differ (the executable's KV layout states each, src/ir/executable.ts).
 *
 * The KV cache is sequence-major ([position, kv_head, head_dim] per layer), so the first P positions of
 * a cache preallocated to the context capacity are one contiguous prefix: the runtime feeds that
 * prefix as `past_key_values` without copying it and writes the `new_key_values` rows after it
 * (src/runtime/kv-cache.ts). Graphs compiled by edgellm before 0.2 return the whole cache as
 * `present.{i}.key/value` [1, kv_heads, T, head_dim] instead; the runtime refuses them.
 *
 * Pure names, no graph code: a device backend implementing the same contract needs only this file.
 */

/** Token ids, int64 [1, S]. */
export const INPUT_IDS = 'input_ids';
/**
 * Which of the S positions get logits, int64 [R] in [0, S) (e.g. [S − 1] when generating, 0..S−1 in
 * eval): lm_head runs on those rows only. An input of compiled graphs (src/compiler/compile.ts).
 */
export const LOGIT_POSITIONS = 'logit_positions';
/** Next-token logits, float32 [1, S, vocab] (or [1, R, vocab] at the {@link LOGIT_POSITIONS}). */
export const LOGITS = 'logits';
/** The residual stream into a one-layer graph, float32 [1, S, hidden]. */
export const HIDDEN_STATES = 'hidden_states';
/** The residual stream out of a one-layer graph, float32 [1, S, hidden]. */
export const HIDDEN_STATES_OUT = 'hidden_states_out';

/** Names of the KV-cache I/O of layer i: the past cache in, this call's new rows out. */
export function kvNames(i: number) {
  return {
    pastKey: `past_key_values.${i}.key`,
    pastValue: `past_key_values.${i}.value`,
    newKey: `new_key_values.${i}.key`,
    newValue: `new_key_values.${i}.value`,
  };
}

/** Output name of the whole-cache K of layer 0 in graphs compiled before 0.2 (which the runtime refuses). */
export const LEGACY_PRESENT_KEY = 'present.0.key';

/** Shape of `length` positions of one layer's K or V cache: [1, length, kv_heads, head_dim]. */
export const kvCacheDims = (numKvHeads: number, headDim: number, length: number): number[] => [1, length, numKvHeads, headDim];

/**
 * Initializer names of layer i's KV-cache quantization: the KV8/KV16 scale (float32 []) and zero point
 * (uint8 [] for KV8, uint16 [] for KV16) of K and V, and the K-cache centering offset c (float32
 * [1, 1, kv_heads, head_dim]).
 * They are not stored with the weights: the runtime builds them from the executable's KV layout
 * (src/compiler/kv-layout.ts {@link kvLayoutInitializers}), the one place a HEF states them.
 */
export function kvQuantNames(i: number) {
  return {
    kScale: `model.layers.${i}.k_cache.scale`,
    kZeroPoint: `model.layers.${i}.k_cache.zero_point`,
    vScale: `model.layers.${i}.v_cache.scale`,
    vZeroPoint: `model.layers.${i}.v_cache.zero_point`,
    kOffset: `model.layers.${i}.self_attn.k_cache_offset`,
  };
}

/** KV capture point names of layer i (K after RoPE, V). */
export const kvPoints = (i: number) => ({ k: `model.layers.${i}.k_cache`, v: `model.layers.${i}.v_cache` });

/** Capture output name of a quantization point. */
export const captureName = (point: string) => `capture.${point}`;

/**
 * Graph inputs of the LoRA branch of `linear` (fed per request by the runtime; zeros = no adapter):
 * A float32 [r, in], B float32 [out, r] (already multiplied by the scaling s), and the static A8
 * parameters of the intermediate A·x: scale float32 [] and zero point uint8 [].
 */
export const loraInputNames = (linear: string) => ({
  A: `lora.${linear}.A`,
  B: `lora.${linear}.B`,
  scale: `lora.${linear}.act_scale`,
  zeroPoint: `lora.${linear}.act_zero_point`,
});

/** The linear a `lora.*` graph input belongs to and which of its inputs it is, or null. */
export function parseLoraInput(name: string): { linear: string; kind: 'A' | 'B' | 'act_scale' | 'act_zero_point' } | null {
  const m = /^lora\.(.+)\.(A|B|act_scale|act_zero_point)$/.exec(name);
  return m ? { linear: m[1], kind: m[2] as 'A' | 'B' | 'act_scale' | 'act_zero_point' } : null;
}

/** Capture point of the LoRA intermediate A·x of `linear`. */
export const loraPoint = (linear: string) => `lora.${linear}`;
