/** The family adapters of src/ir/architectures.ts: the facts each pass asks them for. */
import { describe, expect, it } from 'vitest';
import { ARCHITECTURES, LLAMA, QWEN2, MISTRAL, architectureOf, layerLinears } from '../../src/ir/architectures.js';
import { normalizeConfig, SUPPORTED_MODEL_TYPES } from '../../formats/hf.js';

const raw = (modelType: string, extra: Record<string, unknown> = {}) => ({
  model_type: modelType,
  hidden_size: 64,
  intermediate_size: 172,
  num_hidden_layers: 2,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  vocab_size: 512,
  ...extra,
});

describe('architecture adapters', () => {
  it('every supported model_type maps to the adapter of its family', () => {
    expect(Object.keys(SUPPORTED_MODEL_TYPES).sort()).toEqual(['llama', 'mistral', 'qwen2']);
    for (const [t, family] of Object.entries(SUPPORTED_MODEL_TYPES)) expect(ARCHITECTURES[family].modelTypes).toContain(t);
  });

  it('sets the biases as HF does: Qwen2 q/k/v always and o_proj never; Llama/Mistral all four with attention_bias', () => {
    expect(normalizeConfig(raw('qwen2'))).toMatchObject({ qkvBias: true, oBias: false, mlpBias: false });
    expect(normalizeConfig(raw('qwen2', { attention_bias: true }))).toMatchObject({ qkvBias: true, oBias: false });
    for (const t of ['llama', 'mistral']) {
      expect(normalizeConfig(raw(t))).toMatchObject({ qkvBias: false, oBias: false });
      expect(normalizeConfig(raw(t, { attention_bias: true, mlp_bias: true }))).toMatchObject({ qkvBias: true, oBias: true, mlpBias: true });
    }
  });

  it('splits a layer into attention inputs, attention output, MLP inputs and MLP output, with shapes from the config', () => {
    const cfg = normalizeConfig(raw('qwen2'));
    const a = architectureOf(cfg);
    expect(a).toBe(QWEN2);
    expect(a.attentionInputs(cfg, 1).map((s) => [s.role, s.inFeatures, s.outFeatures, s.hasBias, s.input])).toEqual([
      ['q_proj', 64, 64, true, 'attn_in'],
      ['k_proj', 64, 32, true, 'attn_in'], // 4 KV heads of head_dim 8
      ['v_proj', 64, 32, true, 'attn_in'],
    ]);
    expect(a.attentionOutput(cfg, 1)).toMatchObject({ name: 'model.layers.1.self_attn.o_proj', inFeatures: 64, outFeatures: 64, hasBias: false, input: 'o_proj_in' });
    expect(a.mlpInputs(cfg, 1).map((s) => [s.name, s.outFeatures])).toEqual([
      ['model.layers.1.mlp.gate_proj', 172],
      ['model.layers.1.mlp.up_proj', 172],
    ]);
    expect(a.mlpOutput(cfg, 1)).toMatchObject({ role: 'down_proj', inFeatures: 172, outFeatures: 64, input: 'down_proj_in', layer: 1 });
    expect(layerLinears(cfg, 1)).toEqual([...a.attentionInputs(cfg, 1), a.attentionOutput(cfg, 1), ...a.mlpInputs(cfg, 1), a.mlpOutput(cfg, 1)]);
    expect(a.lmHead(cfg)).toMatchObject({ name: 'lm_head', inFeatures: 64, outFeatures: 512, layer: -1 });
  });

  it('names the norms, the embedding and the final norm with the HF weight names', () => {
    for (const a of [LLAMA, QWEN2, MISTRAL]) {
      expect(a.layerNorms(3)).toEqual({ input: 'model.layers.3.input_layernorm.weight', postAttention: 'model.layers.3.post_attention_layernorm.weight' });
      expect([a.embedding, a.finalNorm]).toEqual(['model.embed_tokens.weight', 'model.norm.weight']);
    }
  });
});
