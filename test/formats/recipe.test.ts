/**
 * formats/recipe.ts (reading a recipe file) and the precision table in the HAR manifest
 * (formats/har-model.ts writes and reads it, formats/har-manifest.ts checks its shape).
 */
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readRecipe, parseRecipe, stringifyRecipe, MAX_RECIPE_BYTES } from '../../formats/recipe.js';
import { loadHfModel } from '../../formats/hf.js';
import { saveModelHar, loadModelHar } from '../../formats/har-model.js';
import { readHar, writeHar } from '../../formats/har.js';
import { rtn } from '../../passes/rtn.js';
import { recipeText, resolveRecipe, RecipeError } from '../../src/ir/recipe.js';
import { precisionOf } from '../../src/ir/quant-scheme.js';
import { silentContext } from '../../src/core/context.js';
import { STORIES } from '../helpers/paths.js';
import { fileWriter, suiteTempDir } from '../helpers/tmp.js';
import { expectOneLineFormatError, rejectionOf, thrownBy } from '../helpers/errors.js';
import type { Model } from '../../src/ir/model.js';

const dir = suiteTempDir('edgellm-recipe-');
const write = fileWriter(dir);

describe('readRecipe', () => {
  it('reads YAML and JSON files of the same schema to the same recipe (but its source)', () => {
    const y = readRecipe(write('r.yaml', 'defaults: {weight_bits: 8}\noverrides:\n  lm_head: {group_size: 32}\n'));
    const j = readRecipe(write('r.json', '{"defaults": {"weight_bits": 8}, "overrides": {"lm_head": {"group_size": 32}}}'));
    expect({ ...y, source: '' }).toEqual({ ...j, source: '' });
    expect(y.source).toBe(path.join(dir, 'r.yaml'));
    expect(y.overrides).toEqual([{ glob: 'lm_head', settings: { group_size: 32 } }]);
  });

  it('takes comments, anchors and an empty defaults', () => {
    const r = parseRecipe('# all MLP linears at W8\ndefaults:\noverrides:\n  model.layers.*.mlp.down_proj: &w8 {weight_bits: 8}\n  model.layers.*.mlp.up_proj: *w8\n', 'r.yaml');
    expect(r.defaults).toEqual({});
    expect(r.overrides.map((o) => o.settings)).toEqual([{ weight_bits: 8 }, { weight_bits: 8 }]);
  });

  it('stringifyRecipe writes a recipe that reads back the same, one override per line', () => {
    const r = parseRecipe("defaults: {weight_bits: 8, observer: minmax}\noverrides:\n  '10': {act_bits: 32}\n  model.layers.*.self_attn.{q,k}_proj: {weight_bits: 4, group_size: 64}\n  lm_head: {weight_bits: 32}\n", 'a.yaml');
    const text = stringifyRecipe(recipeText(r));
    expect(text).toContain('model.layers.*.self_attn.{q,k}_proj: { weight_bits: 4, group_size: 64 }\n');
    expect(parseRecipe(text, 'a.yaml')).toEqual(r);
    expect(stringifyRecipe({ defaults: {}, overrides: {} })).toMatch(/^defaults: \{\}\noverrides: \{\}\n$/);
  });

  const errorOf = (fn: () => unknown) => {
    const e = thrownBy(fn) as RecipeError;
    expect(e).toBeInstanceOf(RecipeError);
    expect(e.exitCode).toBe(2);
    expect(e.message).not.toMatch(/\n/);
    return e.message;
  };

  it('names the file when it is missing, a directory, too large, or not YAML', () => {
    const missing = path.join(dir, 'nope.yaml');
    expect(errorOf(() => readRecipe(missing))).toBe(`${missing}: cannot read the recipe: no such file`);
    expect(errorOf(() => readRecipe(dir))).toBe(`${dir}: not a file`);
    const big = write('big.yaml', '#'.repeat(MAX_RECIPE_BYTES + 1));
    expect(errorOf(() => readRecipe(big))).toBe(`${big}: ${MAX_RECIPE_BYTES + 1} bytes: larger than a recipe can be (${MAX_RECIPE_BYTES} bytes)`);
    const bad = write('bad.yaml', 'overrides:\n  lm_head: {weight_bits: 8\n  x: [\n');
    expect(errorOf(() => readRecipe(bad))).toMatch(new RegExp(`^${bad.replace(/[.]/g, '\\.')}: not valid YAML/JSON: .* at line \\d+, column \\d+$`));
  });
});

describe('the precision table in the HAR manifest', () => {
  const fp = loadHfModel(STORIES);
  const cfg = fp.config;
  let withRecipe: Model;
  let file: string;
  beforeAll(async () => {
    const table = resolveRecipe(parseRecipe('overrides:\n  model.layers.*.mlp.down_proj: {weight_bits: 8, weight_method: rtn}\n', 'r.yaml'), cfg).table;
    const q = rtn(fp, { groupSize: 32, quantizeLmHead: true, lmHeadGroupSize: 16, linears: table.linears }, silentContext);
    withRecipe = { ...q, precision: table };
    file = path.join(dir, 'recipe.har');
    await saveModelHar(file, withRecipe, { modelName: 'stories260K', sourceSha256: '' });
  });

  it('is written as `precision` (the table and the recipe as written) and read back equal', async () => {
    const { manifest } = await readHar(file);
    expect(manifest.precision).toEqual(withRecipe.precision);
    expect((manifest.precision as any).recipe).toEqual({ defaults: {}, overrides: { 'model.layers.*.mlp.down_proj': { weight_bits: 8, weight_method: 'rtn' } } });
    expect((manifest.linears as any)['model.layers.3.mlp.down_proj']).toEqual({ bits: 8, groupSize: 32, scheme: 'symmetric', method: 'rtn' });
    const back = await loadModelHar(file);
    expect(back.model.precision).toEqual(withRecipe.precision);
    expect(precisionOf(back.model)).toBe(back.model.precision);
    expect(back.model.weights.get('model.layers.3.mlp.down_proj.qweight')!.shape).toEqual([64, 6, 32]);
  });

  it('is absent without a recipe (the manifest of before recipes)', async () => {
    const plain = path.join(dir, 'plain.har');
    await saveModelHar(plain, rtn(fp, { groupSize: 32, quantizeLmHead: true, lmHeadGroupSize: 16 }, silentContext), { modelName: 'stories260K', sourceSha256: '' });
    const { manifest } = await readHar(plain);
    expect(manifest).not.toHaveProperty('precision');
    expect((await loadModelHar(plain)).model.precision).toBeUndefined();
  });

  it.each([
    ['not an object', (p: any) => 'x', /manifest field 'precision' must be an object, got "x"/],
    ['a linear at 6 bits', (p: any) => ({ ...p, linears: { ...p.linears, lm_head: { bits: 6, groupSize: 16, method: 'gptq' } } }), /precision' linears\['lm_head'\] must be \{bits: 4\|8\|32, groupSize, method\}/],
    ['a point without an observer', (p: any) => ({ ...p, activations: { lm_head_in: { bits: 8 } } }), /precision' activations\['lm_head_in'\] must be \{bits: 8\|16\|32, observer\}/],
    ['kvCache of the wrong length', (p: any) => ({ ...p, kvCache: p.kvCache.slice(1) }), /precision' needs kvCache: a list of 5 layers/],
  ])('refuses a precision table that is %s, on one line naming the HAR', async (_what, edit, pattern) => {
    const c = await readHar(file);
    const { format: _f, formatVersion: _v, files: _l, ...rest } = c.manifest;
    const bad = path.join(dir, `bad-${_what.replace(/\W+/g, '-')}.har`);
    await writeHar(bad, { ...rest, precision: edit(rest.precision) }, c.files);
    expectOneLineFormatError(await rejectionOf(loadModelHar(bad)), bad, pattern);
  });
});
