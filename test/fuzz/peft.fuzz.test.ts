/**
 * Fuzzing formats/peft.ts loadPeftAdapter(dir, config) on copies of the real stories260K wiki
 * adapter (written to a temp dir per case) with a mutated adapter_config.json and/or a mutated,
 * re-encoded or byte-mutated adapter_model.safetensors. Property: returns, or throws a one-line
 * FormatError naming a file of the adapter, or one of the errors loadPeftAdapter documents
 * (UnsupportedModelError, ShapeMismatchError, UsageError).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadPeftAdapter, PEFT_CONFIG, PEFT_WEIGHTS } from '../../formats/peft.js';
import { normalizeConfig } from '../../formats/hf.js';
import { decodeSafetensors, encodeSafetensors } from '../../formats/safetensors.js';
import { ShapeMismatchError, UnsupportedModelError, UsageError } from '../../src/core/errors.js';
import { DTYPES, type DType, type Tensor } from '../../src/ir/tensor.js';
import { STORIES, WIKI_ADAPTER } from '../helpers/paths.js';
import { suiteTempDir } from '../helpers/tmp.js';
import { anyJson, anyString, applyAll, applyMutation, byteMutation, expectTypedSync, Outcomes, runProperty, tally, TEST_TIMEOUT_MS, withField, type ByteMutation } from './fuzz-helpers.js';

const dir = suiteTempDir('edgellm-fuzz-peft-');
const cfg = normalizeConfig(JSON.parse(fs.readFileSync(path.join(STORIES, 'config.json'), 'utf8')));
const realConfig = JSON.parse(fs.readFileSync(path.join(WIKI_ADAPTER, PEFT_CONFIG), 'utf8')) as Record<string, unknown>;
const realWeights = fs.readFileSync(path.join(WIKI_ADAPTER, PEFT_WEIGHTS));
const realTensors = [...decodeSafetensors(realWeights, PEFT_WEIGHTS).tensors];

const KEYS = [...Object.keys(realConfig), 'use_dora', 'lora_bias', 'exclude_modules', 'target_parameters', 'trainable_token_indices', 'layer_replication', 'megatron_config'];
const MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'lm_head', 'embed_tokens', 'self_attn', 'model.layers.0.self_attn.q_proj', 'layers.1.mlp.up_proj'];
const value = fc.oneof(
  { weight: 3, arbitrary: anyJson },
  { weight: 2, arbitrary: fc.integer({ min: -2, max: 20 }) },
  { weight: 2, arbitrary: fc.uniqueArray(fc.constantFrom(...MODULES), { maxLength: 4 }) },
  { weight: 2, arbitrary: fc.constantFrom('LORA', 'all-linear', '.*q_proj', '(', '.*', 'model\\.layers\\.\\d+\\.self_attn\\.(q|v)_proj', 'none', 'all', 'layers', ['layers']) },
  { weight: 2, arbitrary: fc.dictionary(fc.oneof(fc.constantFrom(...MODULES), anyString, fc.constantFrom('(', '[', '*', 'q_proj|v_proj', '.*')), fc.oneof(fc.integer({ min: -1, max: 16 }), anyJson), { maxKeys: 2 }) },
  { weight: 1, arbitrary: fc.array(fc.integer({ min: -1, max: 6 }), { maxLength: 3 }) },
);

type WeightEdit =
  | { op: 'drop'; i: number }
  | { op: 'rename'; i: number; name: string }
  | { op: 'reshape'; i: number; shape: number[] }
  | { op: 'dtype'; i: number; dtype: DType }
  | { op: 'add'; name: string; shape: number[]; dtype: DType };

const weightEditArb: fc.Arbitrary<WeightEdit> = fc.oneof(
  fc.record({ op: fc.constant('drop' as const), i: fc.nat() }),
  fc.record({ op: fc.constant('rename' as const), i: fc.nat(), name: fc.oneof(anyString, fc.constantFrom('base_model.model.lm_head.lora_A.weight', 'base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight', 'base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector')) }),
  fc.record({ op: fc.constant('reshape' as const), i: fc.nat(), shape: fc.array(fc.integer({ min: 0, max: 70 }), { maxLength: 3 }) }),
  fc.record({ op: fc.constant('dtype' as const), i: fc.nat(), dtype: fc.constantFrom(...(Object.keys(DTYPES) as DType[])) }),
  fc.record({ op: fc.constant('add' as const), name: anyString, shape: fc.array(fc.integer({ min: 0, max: 8 }), { maxLength: 2 }), dtype: fc.constantFrom('F32' as DType, 'F16' as DType, 'I8' as DType) }),
);

/** The real tensors with `edits` applied, re-encoded (data zero-filled where shape or dtype changed). */
function editWeights(edits: WeightEdit[]): Uint8Array {
  const list: [string, Tensor][] = realTensors.map(([n, t]) => [n, t]);
  const fresh = (dtype: DType, shape: number[]): Tensor => ({ dtype, shape, data: new DTYPES[dtype].array(shape.reduce((a, b) => a * b, 1)) }) as Tensor;
  for (const e of edits) {
    if (e.op === 'add') {
      if (!list.some(([n]) => n === e.name) && e.name !== '__metadata__') list.push([e.name, fresh(e.dtype, e.shape)]);
      continue;
    }
    if (!list.length) continue;
    const i = e.i % list.length;
    if (e.op === 'drop') list.splice(i, 1);
    else if (e.op === 'rename') {
      if (!list.some(([n]) => n === e.name) && e.name !== '__metadata__') list[i] = [e.name, list[i][1]];
    } else if (e.op === 'reshape') list[i] = [list[i][0], fresh(list[i][1].dtype, e.shape)];
    else list[i] = [list[i][0], fresh(e.dtype, list[i][1].shape)];
  }
  return encodeSafetensors(list, { format: 'pt' });
}

let caseNo = 0;
/** Writes a fresh adapter directory and loads it. */
function load(configText: string | null, weights: Uint8Array | null, out: Outcomes): void {
  const d = path.join(dir, `case-${caseNo++}`);
  fs.mkdirSync(d);
  try {
    if (configText !== null) fs.writeFileSync(path.join(d, PEFT_CONFIG), configText);
    if (weights !== null) fs.writeFileSync(path.join(d, PEFT_WEIGHTS), weights);
    const ad = expectTypedSync(tally(out, () => loadPeftAdapter(d, cfg, { baseName: 'stories260K' })), { file: d, also: [UnsupportedModelError, ShapeMismatchError, UsageError] });
    if (ad) {
      expect(ad.modules.length).toBeGreaterThan(0);
      for (const m of ad.modules) {
        expect(m.A.length).toBe(m.rank * m.inFeatures);
        expect(m.B.length).toBe(m.outFeatures * m.rank);
      }
    }
  } finally {
    fs.rmSync(d, { recursive: true, force: true });
  }
}

describe('fuzz: PEFT adapter (loadPeftAdapter)', () => {
  it('adapter_config.json: fields replaced/removed/added, raw JSON values, byte mutations', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const configText = fc.oneof(
      { weight: 5, arbitrary: fc.array(fc.record({ key: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...KEYS) }, { weight: 1, arbitrary: anyString }), value, remove: fc.boolean() }), { minLength: 1, maxLength: 4 }).map((edits) => {
        let c = realConfig;
        for (const e of edits) c = withField(c, e.key, e.value, e.remove);
        return JSON.stringify(c, null, 2);
      }) },
      { weight: 1, arbitrary: anyJson.map((v) => JSON.stringify(v) ?? '') },
      { weight: 1, arbitrary: byteMutation(800, 800).map((m) => new TextDecoder().decode(applyMutation(new TextEncoder().encode(JSON.stringify(realConfig, null, 2)), m))) },
    );
    await runProperty(
      'peft adapter_config.json',
      fc.property(configText, (text) => load(text, realWeights, out)),
      { seedOffset: 501, outcomes: out },
    );
  });

  it('adapter_model.safetensors: tensors dropped/renamed/reshaped/retyped/added, byte mutations, truncation; files missing', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const weights = fc.oneof(
      // descriptions, turned into bytes inside the property, so a counterexample stays readable
      { weight: 4, arbitrary: fc.record({ edits: fc.array(weightEditArb, { minLength: 1, maxLength: 3 }) }) },
      { weight: 3, arbitrary: fc.record({ bytes: fc.array(byteMutation(realWeights.length, 2048), { minLength: 1, maxLength: 2 }) }) },
      { weight: 1, arbitrary: fc.constant(null) },
    );
    const bytesOf = (w: { edits: WeightEdit[] } | { bytes: ByteMutation[] } | null): Uint8Array | null =>
      w === null ? null : 'edits' in w ? editWeights(w.edits) : applyAll(new Uint8Array(realWeights), w.bytes);
    const config = fc.oneof({ weight: 6, arbitrary: fc.constant(JSON.stringify(realConfig)) }, { weight: 1, arbitrary: fc.constant(null) }, {
      weight: 2,
      arbitrary: fc.record({ r: fc.constantFrom(4, 8, 16), target_modules: fc.constantFrom('all-linear', ['q_proj', 'v_proj'], ['o_proj'], 'model\\.layers\\.[0-2]\\.self_attn\\.q_proj'), use_rslora: fc.boolean() }).map((o) => JSON.stringify({ ...realConfig, ...o })),
    });
    await runProperty(
      'peft adapter_model.safetensors',
      fc.property(config, weights, (c, w) => load(c, bytesOf(w), out)),
      { seedOffset: 502, outcomes: out },
    );
  });
});
