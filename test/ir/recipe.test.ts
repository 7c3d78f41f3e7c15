/**
 * Recipes (src/ir/recipe.ts, formats/recipe.ts): globs, resolution order against stories260K's
 * config, and every error being one line that names the file and the key (a usage error, exit 2).
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { loadHfModel } from '../../formats/hf.js';
import { parseRecipe } from '../../formats/recipe.js';
import { BUILTIN_OVERRIDES, DEFAULT_SETTINGS, globRegExp, recipeModules, refuseUnsupported, resolveRecipe, RecipeError, type RecipeSettings } from '../../src/ir/recipe.js';
import { kvPointName, OBSERVER_NAMES, type PrecisionTable } from '../../src/ir/precision.js';
import { precisionOf } from '../../src/ir/quant-scheme.js';
import { allLinears, layerLinears } from '../../src/ir/architectures.js';
import { kvPoints } from '../../src/compiler/io-contract.js';
import { OBSERVER_KINDS } from '../../calibration/observers.js';
import { DEFAULT_QUANTIZE_OPTIONS, withPrecision } from '../../passes/pipeline.js';
import { UsageError } from '../../src/core/errors.js';
import type { Model, LinearQuant } from '../../src/ir/model.js';
import { STORIES } from '../helpers/paths.js';

const cfg = loadHfModel(STORIES).config; // 5 layers, hidden 64, intermediate 172, tied embeddings
const resolve = (yaml: string, opts?: { sharedEmbedding?: boolean }) => resolveRecipe(parseRecipe(yaml, 'r.yaml'), cfg, opts);
const table = (yaml: string) => resolve(yaml).table;

/** The message of the RecipeError `fn` throws (and checks it is a one-line usage error). */
function recipeError(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(RecipeError);
    expect(e).toBeInstanceOf(UsageError);
    expect((e as UsageError).exitCode).toBe(2);
    const m = (e as Error).message;
    expect(m).not.toMatch(/[\n\r]/);
    return m;
  }
  throw new Error('expected a RecipeError');
}

describe('module globs', () => {
  const matches = (glob: string, name: string) => globRegExp(glob).test(name);

  it('match a whole name or its part up to a dot, * within one segment', () => {
    expect(matches('lm_head', 'lm_head')).toBe(true);
    expect(matches('lm_head', 'lm_head_in')).toBe(false);
    expect(matches('model.layers.0', 'model.layers.0.mlp.down_proj')).toBe(true);
    expect(matches('model.layers.1', 'model.layers.10.mlp.down_proj')).toBe(false);
    expect(matches('model.layers.*.mlp.down_proj', 'model.layers.3.mlp.down_proj')).toBe(true);
    expect(matches('model.layers.*.down_proj', 'model.layers.3.mlp.down_proj')).toBe(false); // * is one segment
    expect(matches('model.layers.*.*_in', 'model.layers.3.down_proj_in')).toBe(true);
    expect(matches('model.**.down_proj', 'model.layers.3.mlp.down_proj')).toBe(true);
    expect(matches('model.layers.?.k_cache', 'model.layers.4.k_cache')).toBe(true);
    expect(matches('model.layers.?.k_cache', 'model.layers.14.k_cache')).toBe(false);
    expect(matches('model.layers.*.self_attn.{q,k}_proj', 'model.layers.0.self_attn.k_proj')).toBe(true);
    expect(matches('model.layers.*.self_attn.{q,k}_proj', 'model.layers.0.self_attn.v_proj')).toBe(false);
    expect(matches('model.layers.0.*', 'model.layers.0.attn_in')).toBe(true);
  });

  it('refuse bad syntax', () => {
    for (const g of ['', 'model..layers', '.lm_head', 'model.layers.{0,1', 'a}b', 'a,b', 'model.layers.[0-3]', 'a/b']) expect(() => globRegExp(g)).toThrow(/bad glob/);
  });

  it('cover every linear, activation point and KV cache of the model, each once', () => {
    const names = recipeModules(cfg).map((m) => m.name);
    expect(new Set(names).size).toBe(names.length);
    expect(names).toHaveLength(cfg.numLayers * (7 + 4 + 2) + 2);
    expect(names).toContain('model.layers.4.v_cache');
    for (let i = 0; i < cfg.numLayers; i++) expect([kvPointName(i, 'k'), kvPointName(i, 'v')]).toEqual([kvPoints(i).k, kvPoints(i).v]);
  });
});

describe('resolveRecipe', () => {
  it('an empty recipe is the default recipe: W4 g32 GPTQ, lm_head g16, A8/KV8 mse', () => {
    const t = table('{}');
    for (const s of allLinears(cfg)) expect(t.linears[s.name]).toEqual({ bits: 4, groupSize: s.role === 'lm_head' ? 16 : 32, method: 'gptq' });
    expect(Object.values(t.activations).every((p) => p.bits === 8 && p.observer === 'mse')).toBe(true);
    expect(t.kvCache).toHaveLength(cfg.numLayers);
    expect(t.kvCache.every((kv) => kv.k.bits === 8 && kv.v.bits === 8)).toBe(true);
    // the CLI defaults are the recipe defaults
    const o = withPrecision(DEFAULT_QUANTIZE_OPTIONS, t, cfg);
    expect({ ...o, precision: undefined }).toEqual({ ...DEFAULT_QUANTIZE_OPTIONS, precision: undefined });
    expect(BUILTIN_OVERRIDES[0].settings.group_size).toBe(DEFAULT_QUANTIZE_OPTIONS.lmHeadGroupSize);
  });

  it('equals the table a default-quantized model implies (precisionOf)', () => {
    const linears: Record<string, LinearQuant> = {};
    for (const s of allLinears(cfg)) linears[s.name] = { bits: 4, groupSize: s.role === 'lm_head' ? 16 : 32, scheme: 'symmetric', method: 'gptq' };
    const q = { linears, activations: Object.fromEntries(Object.keys(table('{}').activations).map((p) => [p, { scale: 1, zeroPoint: 0 }])), kvCache: Array.from({ length: cfg.numLayers }, () => ({ k: { scale: 1, zeroPoint: 0 }, v: { scale: 1, zeroPoint: 0 } })) };
    const derived = precisionOf({ config: cfg, passes: [{ name: 'calibrate', options: { observer: 'mse' } }], quant: q } as Pick<Model, 'config' | 'passes' | 'quant'>);
    const { recipe: _r, ...resolved } = table('{}');
    expect(derived).toEqual(resolved);
  });

  it('applies defaults, then the built-in lm_head override, then overrides in file order (later wins, key by key)', () => {
    const t = table(`
defaults: {group_size: 64, observer: minmax}
overrides:
  model.layers.*.mlp: {weight_bits: 8, weight_method: rtn}
  model.layers.*.mlp.down_proj: {weight_bits: 4}
  model.layers.0: {weight_bits: 32}
  lm_head: {weight_bits: 8}
`);
    expect(t.linears['model.layers.1.mlp.gate_proj']).toEqual({ bits: 8, groupSize: 64, method: 'rtn' });
    expect(t.linears['model.layers.1.mlp.down_proj']).toEqual({ bits: 4, groupSize: 64, method: 'rtn' }); // bits from the later entry, method from the earlier
    expect(t.linears['model.layers.1.self_attn.q_proj']).toEqual({ bits: 4, groupSize: 64, method: 'gptq' });
    expect(t.linears['model.layers.0.mlp.down_proj']).toEqual({ bits: 32, groupSize: 0, method: 'none' }); // layer 0 came last
    expect(t.linears.lm_head).toEqual({ bits: 8, groupSize: 16, method: 'gptq' }); // defaults.group_size does not reach the head: the built-in override comes after
    expect(t.activations['model.layers.2.mlp_in']).toEqual({ bits: 8, observer: 'minmax' });
    expect(t.recipe?.overrides['model.layers.0']).toEqual({ weight_bits: 32 });
    // reversed, the first two entries resolve the other way round
    const r = table(`
overrides:
  model.layers.*.mlp.down_proj: {weight_bits: 4}
  model.layers.*.mlp: {weight_bits: 8}
`);
    expect(r.linears['model.layers.1.mlp.down_proj'].bits).toBe(8);
  });

  it('a key sets only the modules of its kind the glob matches', () => {
    const t = table('overrides:\n  model.layers.0: {act_bits: 32, kv_bits: 16, weight_bits: 8}\n');
    expect(t.activations['model.layers.0.down_proj_in'].bits).toBe(32);
    expect(t.activations['model.layers.1.down_proj_in'].bits).toBe(8);
    expect(t.kvCache[0]).toEqual({ k: { bits: 16, observer: 'mse' }, v: { bits: 16, observer: 'mse' } });
    expect(layerLinears(cfg, 0).every((s) => t.linears[s.name].bits === 8)).toBe(true);
    expect(t.linears['model.layers.1.mlp.up_proj'].bits).toBe(4);
  });

  it('keeps integer-like globs in file order (a JavaScript object would not)', () => {
    const r = parseRecipe("overrides:\n  lm_head: {weight_bits: 8}\n  '**': {weight_bits: 4}\n", 'r.yaml');
    expect(r.overrides.map((o) => o.glob)).toEqual(['lm_head', '**']);
    expect(resolveRecipe(r, cfg).table.linears.lm_head.bits).toBe(4);
  });

  it('reads JSON with the same schema', () => {
    const j = table('{"defaults": {"weight_bits": 8}, "overrides": {"lm_head": {"group_size": 32}}}');
    expect(j.linears.lm_head).toEqual({ bits: 8, groupSize: 32, method: 'gptq' });
    expect(j.linears['model.layers.3.self_attn.o_proj']).toEqual({ bits: 8, groupSize: 32, method: 'gptq' });
  });

  it('does not depend on the order of overrides that set disjoint modules (property)', () => {
    // each override targets its own (layer, role) pair or layer's points, so no two touch one module
    const targets = [
      ...Array.from({ length: cfg.numLayers }, (_, i) => [`model.layers.${i}.mlp.down_proj`, `model.layers.${i}.self_attn.{q,k,v}_proj`, `model.layers.${i}.*_in`, `model.layers.${i}.?_cache`]).flat(),
      'lm_head',
      'lm_head_in',
    ];
    const settingsArb = (glob: string): fc.Arbitrary<RecipeSettings> =>
      glob.endsWith('_in')
        ? fc.record({ act_bits: fc.constantFrom(8, 16, 32), observer: fc.constantFrom(...OBSERVER_NAMES) }, { requiredKeys: ['act_bits'] })
        : glob.endsWith('_cache')
          ? fc.record({ kv_bits: fc.constantFrom(8, 16, 32), observer: fc.constantFrom(...OBSERVER_NAMES) }, { requiredKeys: ['kv_bits'] })
          : fc.record({ weight_bits: fc.constantFrom(4, 8, 32), group_size: fc.constantFrom(16, 32, 64), weight_method: fc.constantFrom('gptq', 'rtn') }, { requiredKeys: ['weight_bits'] });
    const arb = fc
      .uniqueArray(fc.constantFrom(...targets), { minLength: 1, maxLength: 8 })
      .chain((globs) => fc.tuple(...globs.map((g) => settingsArb(g).map((s) => ({ glob: g, settings: s })))))
      .chain((overrides) => fc.tuple(fc.constant(overrides), fc.shuffledSubarray(overrides, { minLength: overrides.length, maxLength: overrides.length })));
    fc.assert(
      fc.property(arb, ([overrides, shuffled]) => {
        const a = resolveRecipe({ source: 'r.yaml', defaults: {}, overrides }, cfg).table;
        const b = resolveRecipe({ source: 'r.yaml', defaults: {}, overrides: shuffled }, cfg).table;
        const strip = (t: PrecisionTable) => ({ ...t, recipe: undefined });
        expect(strip(b)).toEqual(strip(a));
      }),
      { numRuns: 100 },
    );
  });

  it('for overlapping overrides, the value of the last one that sets a key wins (property)', () => {
    const globs = ['model.layers.*.mlp.down_proj', 'model.layers.2', 'model.layers.{1,2}.mlp', '**', 'model.layers.2.mlp.down_proj'];
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.constantFrom(...globs), fc.constantFrom(4, 8, 32)), { minLength: 1, maxLength: 6 }), (entries) => {
        // one entry per glob (a mapping), in the order the globs first appear, the value of the first occurrence
        const seen = new Map<string, number>();
        for (const [g, b] of entries) if (!seen.has(g)) seen.set(g, b);
        const overrides = [...seen].map(([glob, b]) => ({ glob, settings: { weight_bits: b as 4 | 8 | 32 } }));
        const t = resolveRecipe({ source: 'r.yaml', defaults: {}, overrides }, cfg).table;
        const name = 'model.layers.2.mlp.down_proj';
        const last = [...overrides].reverse().find((o) => globRegExp(o.glob).test(name));
        expect(t.linears[name].bits).toBe(last!.settings.weight_bits);
      }),
      { numRuns: 100 },
    );
  });
});

describe('recipe errors: one line, naming the file and the key', () => {
  const cases: [string, string, RegExp | string][] = [
    ['unknown top-level key', 'default: {weight_bits: 4}\n', "r.yaml: default: unknown top-level key (expected 'defaults', 'overrides')"],
    ['unknown key in defaults', 'defaults: {bitz: 4}\n', 'r.yaml: defaults.bitz: unknown key (expected weight_bits, group_size, weight_method, act_bits, kv_bits, observer)'],
    ['unknown key in an override', 'overrides:\n  lm_head: {bits: 8}\n', /^r\.yaml: overrides\['lm_head'\]\.bits: unknown key/],
    ['bad weight_bits', 'defaults: {weight_bits: 3}\n', 'r.yaml: defaults.weight_bits: expected one of 4, 8, 32 (32: float), got 3'],
    ['a number as a string', "overrides:\n  lm_head: {weight_bits: '8'}\n", "r.yaml: overrides['lm_head'].weight_bits: expected one of 4, 8, 32 (32: float), got '8' (a string)"],
    ['group size not a power of two', 'defaults: {group_size: 24}\n', 'r.yaml: defaults.group_size: must be a power of two ≥ 16 (MatMulNBits block size), got 24'],
    ['bad method', 'defaults: {weight_method: awq}\n', "r.yaml: defaults.weight_method: expected one of gptq, rtn, got 'awq' (a string)"],
    ['bad act_bits', 'overrides:\n  lm_head_in: {act_bits: 4}\n', "r.yaml: overrides['lm_head_in'].act_bits: expected one of 8, 16, 32 (32: float), got 4"],
    ['bad observer', 'defaults: {observer: max}\n', "r.yaml: defaults.observer: expected one of minmax, percentile, mse, got 'max' (a string)"],
    ['overrides not a mapping', 'overrides: [lm_head]\n', 'r.yaml: overrides: expected a mapping of module glob -> settings, got a list'],
    ['an override that sets nothing', 'overrides:\n  lm_head: {}\n', "r.yaml: overrides['lm_head']: sets no key"],
    ['bad glob', 'overrides:\n  model.layers.{0,1.mlp: {weight_bits: 8}\n', "r.yaml: overrides['model.layers.{0,1.mlp']: bad glob: unbalanced {"],
    ['a glob that matches nothing', 'overrides:\n  model.layer.*.mlp.down_proj: {weight_bits: 8}\n', /^r\.yaml: overrides\['model\.layer\.\*\.mlp\.down_proj'\]: 'model\.layer\.\*\.mlp\.down_proj' matches no module of this model \(/],
    [
      'a key that fits none of the matches',
      'overrides:\n  model.layers.*.mlp.down_proj: {act_bits: 16}\n',
      /^r\.yaml: overrides\['model\.layers\.\*\.mlp\.down_proj'\]\.act_bits: applies to activation points, but '.*' matches only 5 linear\(s\)/,
    ],
    ['K and V of a layer at different widths', 'overrides:\n  model.layers.1.k_cache: {kv_bits: 16}\n', /^r\.yaml: overrides\['model\.layers\.1\.k_cache'\]\.kv_bits: layer 1's K cache gets 16 bits and its V cache 8/],
    [
      'a shared lm_head group that does not divide hidden_size',
      'overrides:\n  lm_head: {group_size: 128}\n',
      "r.yaml: overrides['lm_head'].group_size: lm_head group size 128 does not divide hidden_size 64: the tied embedding is looked up in lm_head's 4-bit table (GatherBlockQuantized), whole groups only",
    ],
    ['a duplicate key', 'overrides:\n  lm_head: {weight_bits: 8}\n  lm_head: {weight_bits: 4}\n', 'r.yaml: not valid YAML/JSON: Map keys must be unique at line 3, column 3'],
    ['not YAML', 'defaults: {weight_bits: 4\n', /^r\.yaml: not valid YAML\/JSON: /],
    ['not a mapping', '- 1\n', "r.yaml: a recipe is a mapping with 'defaults' and 'overrides', got a list"],
  ];
  for (const [what, yaml, want] of cases)
    it(what, () => {
      const m = recipeError(() => resolve(yaml));
      if (typeof want === 'string') expect(m).toBe(want);
      else expect(m).toMatch(want);
    });

  it('allows the head group size that does not divide hidden_size when the embedding is not shared (--rotate unties it)', () => {
    expect(resolve('overrides:\n  lm_head: {group_size: 128}\n', { sharedEmbedding: false }).table.linears.lm_head.groupSize).toBe(128);
  });

  it('a group size that does not divide in_features is allowed (ragged last group, as the default for down_proj 172)', () => {
    expect(table('defaults: {group_size: 64}\n').linears['model.layers.0.mlp.down_proj'].groupSize).toBe(64);
  });
});

describe('refuseUnsupported: what the lowering cannot execute yet (nothing a resolved table states, today)', () => {
  it('accepts 16-bit KV caches, and KV caches at 8, 16 and 32 bits layer by layer', () => {
    for (const yaml of ['defaults: {kv_bits: 16}\n', 'overrides:\n  model.layers.0: {kv_bits: 16}\n  model.layers.2: {kv_bits: 32}\n', 'overrides:\n  model.layers.3: {kv_bits: 32}\n'])
      expect(() => refuseUnsupported(resolve(yaml)), yaml).not.toThrow();
  });

  it('accepts 16-bit, float and 8-bit activation points side by side, and an observer per point', () => {
    for (const yaml of ['overrides:\n  model.layers.0: {act_bits: 16}\n', 'overrides:\n  model.layers.0: {act_bits: 32}\n', 'overrides:\n  model.layers.1: {observer: minmax}\n'])
      expect(() => refuseUnsupported(resolve(yaml))).not.toThrow();
  });

  it('accepts W8 anywhere, float linears, and all points float', () => {
    expect(() => refuseUnsupported(resolve('defaults: {weight_bits: 8, act_bits: 32, kv_bits: 32}\noverrides:\n  model.layers.0: {weight_bits: 32}\n'))).not.toThrow();
    const o = withPrecision(DEFAULT_QUANTIZE_OPTIONS, table('defaults: {act_bits: 32, kv_bits: 32, weight_method: rtn}\n'), cfg);
    expect([o.activationQuant, o.kvQuant, o.method]).toEqual([false, false, 'rtn']);
  });
});

describe('shared names', () => {
  it('the recipe observers are calibration/observers.ts OBSERVER_KINDS', () => {
    expect([...OBSERVER_NAMES]).toEqual([...OBSERVER_KINDS]);
    expect(DEFAULT_SETTINGS.observer).toBe(DEFAULT_QUANTIZE_OPTIONS.observer);
  });
});
