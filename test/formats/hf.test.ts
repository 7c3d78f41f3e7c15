/**
 * formats/hf.ts: config.json fields are type-checked (a wrong type is a one-line FormatError naming
 * the file and the field), and a checkpoint whose tensors disagree with its config.json is refused —
 * missing, mis-shaped, or present but unused (a layer the config does not count would be dropped).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadHfModel, normalizeConfig } from '../../formats/hf.js';
import { encodeSafetensors } from '../../formats/safetensors.js';
import { SafetensorsFile } from '../../formats/safetensors.js';
import { FormatError, UnsupportedModelError } from '../../src/core/errors.js';
import { thrownBy } from '../helpers/errors.js';
import { STORIES } from '../helpers/paths.js';
import { suiteTempDir } from '../helpers/tmp.js';

const dir = suiteTempDir('edgellm-hf-');
const realConfig = JSON.parse(fs.readFileSync(path.join(STORIES, 'config.json'), 'utf8'));

/** A copy of stories260K with its config.json edited and its tensors (name -> tensor) filtered or extended. */
function variant(name: string, edit: (cfg: Record<string, unknown>) => void, tensors?: (t: Map<string, any>) => void): string {
  const d = path.join(dir, name);
  fs.mkdirSync(d, { recursive: true });
  for (const f of fs.readdirSync(STORIES)) if (f !== 'config.json' && f !== 'model.safetensors' && fs.statSync(path.join(STORIES, f)).isFile()) fs.copyFileSync(path.join(STORIES, f), path.join(d, f));
  const cfg = structuredClone(realConfig);
  edit(cfg);
  fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));
  const src = SafetensorsFile.open(path.join(STORIES, 'model.safetensors'));
  const all = new Map([...src.entries.keys()].map((n) => [n, src.read(n)]));
  src.close();
  tensors?.(all);
  fs.writeFileSync(path.join(d, 'model.safetensors'), encodeSafetensors(all));
  return d;
}

function formatError(fn: () => unknown): FormatError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(FormatError);
    expect((e as Error).message).not.toContain('\n');
    return e as FormatError;
  }
  throw new Error('expected a FormatError');
}

describe('config.json types', () => {
  it.each(['tie_word_embeddings', 'attention_bias', 'mlp_bias'])('%s must be a boolean ("yes", 1 and "true" are refused; null means absent)', (key) => {
    for (const bad of ['yes', 1, 'true']) {
      const e = formatError(() => normalizeConfig({ ...realConfig, [key]: bad }, 'x/config.json'));
      expect(e.message).toMatch(new RegExp(`^x/config.json: field '${key}' must be true or false, got ${JSON.stringify(bad)}`));
    }
    expect(normalizeConfig({ ...realConfig, [key]: true })).toBeTruthy();
  });
});

describe('config.json strings and token ids', () => {
  it.each(['model_type', 'hidden_act'])('%s must be a string (objects whose toString is not a function, arrays and numbers are refused)', (key) => {
    for (const bad of [{ toString: 1 }, { valueOf: 1, toString: 1 }, [key === 'model_type' ? 'llama' : 'silu'], 3, true]) {
      const e = formatError(() => normalizeConfig({ ...realConfig, [key]: bad }, 'x/config.json'));
      expect(e.message).toMatch(new RegExp(`^x/config.json: field '${key}' must be a string, got `));
    }
  });

  it('a model_type naming an Object.prototype member is unsupported, not a crash', () => {
    for (const t of ['toString', '__proto__', 'constructor', 'hasOwnProperty'])
      expect(() => normalizeConfig({ ...realConfig, model_type: t }, 'x/config.json')).toThrow(UnsupportedModelError);
  });

  it.each(['eos_token_id', 'bos_token_id'])('%s must hold non-negative integer token ids', (key) => {
    const bads: unknown[] = [{ toString: 1 }, 'x', -1, -1.5, 2.5, true, [{}], ...(key === 'eos_token_id' ? [[{ toString: 1 }], ['x', {}], [1, -1], [2, null]] : [[1]])];
    for (const bad of bads) {
      const e = formatError(() => normalizeConfig({ ...realConfig, [key]: bad }, 'x/config.json'));
      expect(e.message).toMatch(new RegExp(`^x/config.json: field '${key}' must hold non-negative integer token ids, got `));
    }
    const ok = normalizeConfig({ ...realConfig, eos_token_id: [2, 0], bos_token_id: null });
    expect([ok.eosTokenIds, ok.bosTokenId]).toEqual([[2, 0], null]);
    expect(normalizeConfig({ ...realConfig, eos_token_id: null }).eosTokenIds).toEqual([]);
  });

  it('keeps an unsupported model_type with a newline on one line', () => {
    const e = thrownBy(() => normalizeConfig({ ...realConfig, model_type: 'lla\nma' }, 'x/config.json'));
    expect(e).toBeInstanceOf(UnsupportedModelError);
    expect((e as Error).message).toContain("unsupported model_type 'lla\\nma'");
  });
});

describe('checkpoint tensors against config.json', () => {
  it('refuses num_hidden_layers below the layers stored (the fifth layer would be dropped), naming an unused tensor', () => {
    const d = variant('fewer-layers', (c) => void (c.num_hidden_layers = 4));
    const e = formatError(() => loadHfModel(d));
    expect(e.message).toMatch(/tensor 'model\.layers\.4\.[a-z_.]+' \(and 8 more\) is in the checkpoint but not in the model config\.json describes/);
  });

  it('refuses a stray tensor, but ignores RoPE inv_freq buffers as transformers does', () => {
    const stray = variant('stray', () => {}, (t) => t.set('model.extra.weight', { dtype: 'F32', shape: [2], data: new Float32Array(2) }));
    expect(formatError(() => loadHfModel(stray)).message).toContain("tensor 'model.extra.weight' is in the checkpoint");
    const invFreq = variant('inv-freq', () => {}, (t) => t.set('model.layers.0.self_attn.rotary_emb.inv_freq', { dtype: 'F32', shape: [4], data: new Float32Array(4) }));
    expect(loadHfModel(invFreq).config.numLayers).toBe(5);
  });

  it('still names a missing tensor', () => {
    const d = variant('missing', () => {}, (t) => t.delete('model.layers.2.mlp.up_proj.weight'));
    expect(formatError(() => loadHfModel(d)).message).toContain("tensor 'model.layers.2.mlp.up_proj.weight' is missing");
  });
});
