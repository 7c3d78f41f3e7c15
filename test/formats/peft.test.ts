/**
 * formats/peft.ts: the real stories260K adapter, reader/writer round trips over peft's config options
 * (rank_pattern, alpha_pattern, rslora, regex and "all-linear" targets, layers_to_transform), and a
 * one-line typed error for every malformed adapter.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPeftAdapter, writePeftAdapter, readPeftConfig, type PeftModuleWeights } from '../../formats/peft.js';
import { SafetensorsFile, encodeSafetensors } from '../../formats/safetensors.js';
import { normalizeConfig } from '../../formats/hf.js';
import { layerLinears } from '../../src/ir/architectures.js';
import { FormatError, ShapeMismatchError, UnsupportedModelError } from '../../src/core/errors.js';
import type { ModelConfig } from '../../src/ir/model.js';
import { STORIES, WIKI_ADAPTER as ADAPTER } from '../helpers/paths.js';
import { centredUniform } from '../helpers/random.js';
import { suiteTempDir } from '../helpers/tmp.js';
import { thrownBy } from '../helpers/errors.js';

const cfg: ModelConfig = normalizeConfig(JSON.parse(fs.readFileSync(path.join(STORIES, 'config.json'), 'utf8')));

const dir = suiteTempDir('edgellm-peft-');

/** Seeded small random modules for `roles` of every layer in `layers` (ranks from `rankOf`). */
function randomModules(roles: string[], layers: number[], rankOf: (name: string) => number, seed = 1): PeftModuleWeights[] {
  const rnd = centredUniform(seed);
  const out: PeftModuleWeights[] = [];
  for (const l of layers)
    for (const s of layerLinears(cfg, l).filter((s) => roles.includes(s.role))) {
      const r = rankOf(s.name);
      out.push({ linear: s.name, rank: r, inFeatures: s.inFeatures, outFeatures: s.outFeatures, A: Float32Array.from({ length: r * s.inFeatures }, rnd), B: Float32Array.from({ length: s.outFeatures * r }, rnd) });
    }
  return out;
}

/** Writes a valid 2-module adapter, then lets `mutate` break it; returns its directory. */
function variant(name: string, mutate: (d: string) => void, config: Record<string, unknown> = {}): string {
  const d = path.join(dir, name);
  writePeftAdapter(d, { r: 4, lora_alpha: 8, target_modules: ['q_proj'], base_model_name_or_path: 'stories260K', ...config }, randomModules(['q_proj'], [0, 1, 2, 3, 4], () => 4));
  mutate(d);
  return d;
}
const editConfig = (d: string, patch: Record<string, unknown>) => {
  const f = path.join(d, 'adapter_config.json');
  fs.writeFileSync(f, JSON.stringify({ ...JSON.parse(fs.readFileSync(f, 'utf8')), ...patch }));
};
const editTensors = (d: string, edit: (t: Map<string, { dtype: 'F32'; shape: number[]; data: Float32Array }>) => void) => {
  const f = path.join(d, 'adapter_model.safetensors');
  const st = SafetensorsFile.open(f);
  const t = new Map([...st.entries.keys()].map((k) => [k, st.read(k) as { dtype: 'F32'; shape: number[]; data: Float32Array }]));
  st.close();
  edit(t);
  fs.writeFileSync(f, encodeSafetensors(t));
};

describe('loadPeftAdapter on the real stories260K-lora-wiki adapter', () => {
  it('reads 20 modules (q/k/v/o of 5 layers) with r 8, alpha 16, scaling 2 and the file values', () => {
    const ad = loadPeftAdapter(ADAPTER, cfg, { baseName: 'stories260K' });
    expect(ad.warnings).toEqual([]);
    expect(ad.modules.map((m) => m.linear)).toEqual(
      [0, 1, 2, 3, 4].flatMap((l) => ['q_proj', 'k_proj', 'v_proj', 'o_proj'].map((r) => `model.layers.${l}.self_attn.${r}`)),
    );
    for (const m of ad.modules) expect([m.rank, m.alpha, m.scaling]).toEqual([8, 16, 2]);
    const st = SafetensorsFile.open(path.join(ADAPTER, 'adapter_model.safetensors'));
    const k = ad.modules[6]; // layers.1 v_proj: [8, 64] and [32, 8]
    expect([k.A.length, k.B.length]).toEqual([8 * 64, 32 * 8]);
    expect(k.A).toEqual(st.read(`base_model.model.${k.linear}.lora_A.weight`).data);
    expect(k.B).toEqual(st.read(`base_model.model.${k.linear}.lora_B.weight`).data);
    st.close();
  });

  it('warns (does not fail) when base_model_name_or_path names another model', () => {
    const ad = loadPeftAdapter(ADAPTER, cfg, { baseName: 'Qwen2-0.5B' });
    expect(ad.warnings).toHaveLength(1);
    expect(ad.warnings[0]).toMatch(/base_model_name_or_path 'stories260K' differs from the base model 'Qwen2-0.5B'/);
  });
});

describe('writePeftAdapter / loadPeftAdapter round trip', () => {
  it('keeps A and B exactly, applies rank_pattern, alpha_pattern and rslora scaling', () => {
    const rankOf = (n: string) => (n.endsWith('down_proj') ? 2 : 4);
    const mods = randomModules(['gate_proj', 'down_proj'], [0, 1, 2, 3, 4], rankOf);
    const d = path.join(dir, 'patterns');
    writePeftAdapter(d, { r: 4, lora_alpha: 8, target_modules: ['gate_proj', 'down_proj'], rank_pattern: { down_proj: 2 }, alpha_pattern: { 'layers.1.mlp.gate_proj': 2 }, use_rslora: true }, mods);
    const ad = loadPeftAdapter(d, cfg);
    expect(ad.modules.map((m) => m.linear)).toEqual(mods.map((m) => m.linear));
    ad.modules.forEach((m, i) => {
      expect(m.A).toEqual(mods[i].A);
      expect(m.B).toEqual(mods[i].B);
      expect(m.rank).toBe(rankOf(m.linear));
      const alpha = m.linear === 'model.layers.1.mlp.gate_proj' ? 2 : 8;
      expect(m.scaling).toBeCloseTo(alpha / Math.sqrt(m.rank), 12); // rslora: alpha/√r
    });
  });

  it('matches target_modules given as a regex, as "all-linear", and restricted by layers_to_transform', () => {
    const d = path.join(dir, 'regex');
    writePeftAdapter(d, { r: 2, lora_alpha: 4, target_modules: '.*\\.mlp\\.(up|down)_proj', layers_to_transform: [1, 3] }, randomModules(['up_proj', 'down_proj'], [1, 3], () => 2));
    expect(loadPeftAdapter(d, cfg).modules.map((m) => m.linear)).toEqual([
      'model.layers.1.mlp.up_proj',
      'model.layers.1.mlp.down_proj',
      'model.layers.3.mlp.up_proj',
      'model.layers.3.mlp.down_proj',
    ]);
    const all = path.join(dir, 'all-linear');
    writePeftAdapter(all, { r: 1, lora_alpha: 1, target_modules: 'all-linear' }, randomModules(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], [0, 1, 2, 3, 4], () => 1));
    expect(loadPeftAdapter(all, cfg).modules).toHaveLength(35);
    expect(readPeftConfig(all).targetModules).toBe('all-linear');
  });
});

describe('malformed adapters: one-line typed errors', () => {
  const cases: [string, () => string, new (...a: any[]) => Error, RegExp][] = [
    ['a PyTorch .bin adapter', () => variant('bin', (d) => fs.renameSync(path.join(d, 'adapter_model.safetensors'), path.join(d, 'adapter_model.bin'))), FormatError, /adapter_model\.bin: .*convert it to adapter_model\.safetensors/],
    ['DoRA', () => variant('dora', (d) => editConfig(d, { use_dora: true })), UnsupportedModelError, /DoRA \(use_dora: true\) is not supported/],
    ['bias "all"', () => variant('bias', (d) => editConfig(d, { bias: 'all' })), UnsupportedModelError, /bias "all" \(only "none"\) is not supported/],
    ['modules_to_save', () => variant('mts', (d) => editConfig(d, { modules_to_save: ['lm_head'] })), UnsupportedModelError, /modules_to_save \["lm_head"\] is not supported/],
    ['peft_type IA3', () => variant('ia3', (d) => editConfig(d, { peft_type: 'IA3' })), UnsupportedModelError, /peft_type "IA3"/],
    ['a target module the base does not have', () => variant('c_attn', (d) => editConfig(d, { target_modules: ['c_attn'] })), UnsupportedModelError, /target module 'c_attn' does not exist in the base model/],
    ['a target that is not a decoder linear', () => variant('embed', (d) => editConfig(d, { target_modules: ['q_proj', 'embed_tokens'] })), UnsupportedModelError, /LoRA on 'model\.embed_tokens' is not supported/],
    [
      'lora_A with the wrong input width',
      () => variant('shapeA', (d) => editTensors(d, (t) => t.set('base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight', { dtype: 'F32', shape: [4, 32], data: new Float32Array(128) }))),
      ShapeMismatchError,
      /layers\.2\.self_attn\.q_proj\.lora_A is \[4, 32\], the base linear needs \[r, in\] = \[4, 64\]/,
    ],
    ['r in the config disagreeing with the tensors', () => variant('rank', (d) => editConfig(d, { r: 8 })), ShapeMismatchError, /lora_A is \[4, 64\], the base linear needs \[r, in\] = \[8, 64\]/],
    [
      'a tensor for a layer the base does not have',
      () =>
        variant('layer9', (d) =>
          editTensors(d, (t) => {
            t.set('base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight', { dtype: 'F32', shape: [4, 64], data: new Float32Array(256) });
          }),
        ),
      UnsupportedModelError,
      /adapts 'model\.layers\.9\.self_attn\.q_proj', which the base model does not have/,
    ],
    ['a missing lora_B tensor', () => variant('missing', (d) => editTensors(d, (t) => t.delete('base_model.model.model.layers.4.self_attn.q_proj.lora_B.weight'))), FormatError, /tensor '.*layers\.4\.self_attn\.q_proj\.lora_B\.weight' is missing/],
    ['adapter_config.json that is not JSON', () => variant('json', (d) => fs.writeFileSync(path.join(d, 'adapter_config.json'), '{r: 4')), FormatError, /adapter_config\.json: not valid JSON/],
    [
      'adapter_config.json that is not JSON, with a newline where JSON.parse quotes it',
      () => variant('json-nl', (d) => fs.writeFileSync(path.join(d, 'adapter_config.json'), 'z\n  "r": 4,\n}')),
      FormatError,
      /adapter_config\.json: not valid JSON: .*\\n/,
    ],
    ['a rank_pattern key that is not a regex', () => variant('rank-re', (d) => editConfig(d, { rank_pattern: { '(': 4 } })), FormatError, /adapter_config\.json: field 'rank_pattern': key "\(" is not a valid regex/],
    ['an alpha_pattern key that is not a regex', () => variant('alpha-re', (d) => editConfig(d, { alpha_pattern: { 'q_proj[': 2 } })), FormatError, /adapter_config\.json: field 'alpha_pattern': key "q_proj\[" is not a valid regex/],
    ['a target_modules regex that is not a regex', () => variant('tm-re', (d) => editConfig(d, { target_modules: '(q_proj' })), FormatError, /adapter_config\.json: target_modules regex "\(q_proj" is invalid/],
    [
      'a tensor not selected by target_modules whose name holds a newline (kept on one line)',
      () => variant('nl-name', (d) => editTensors(d, (t) => t.set('base_model.model.x\ny', { dtype: 'F32', shape: [1], data: new Float32Array(1) }))),
      FormatError,
      /not selected by target_modules, e\.g\. 'base_model\.model\.x\\ny'/,
    ],
  ];
  for (const [what, make, type, msg] of cases)
    it(`rejects ${what}`, () => {
      const d = make();
      const err = thrownBy(() => loadPeftAdapter(d, cfg, { baseName: 'stories260K' }));
      expect(err).toBeInstanceOf(type);
      expect((err as Error).message).toMatch(msg);
      expect((err as Error).message).not.toContain('\n');
    });
});
