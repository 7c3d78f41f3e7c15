/**
 * `edgellm quantize --recipe` end to end on stories260K (the built CLI, as a user runs it): a
 * hand-written recipe putting every down_proj at W8 quantizes, compiles and runs, its HEF's
 * TinyStories perplexity is finite and not worse than the uniform W4 default's by more than 1% (the
 * CI gate's ppl threshold; W8 down_proj in fact improves it), and `inspect` shows the per-module
 * precision with bytes for the HAR and the HEF. Recipe problems and flags that conflict with a recipe
 * are one-line usage errors (exit code 2) written before any calibration, with no HAR left behind.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { edgellm, STORIES } from '../helpers/cli.js';
import { fileWriter, suiteTempDir } from '../helpers/tmp.js';
import { readHarManifest } from '../../formats/har.js';

const dir = suiteTempDir('edgellm-cli-recipe-');
const write = fileWriter(dir);
/** Calibration windows for both builds: fewer than the default 128 to keep the test short (both get the same). */
const CALIB_SAMPLES = '32';
/** How much worse than the uniform W4 default the recipe's TinyStories ppl may be (relative). */
const PPL_TOLERANCE = 0.01;

function ok(...args: string[]): string {
  const r = edgellm(...args);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}

/** quantize (with `extra` flags), compile, and the TinyStories ppl of the HEF from `eval --json`. */
function build(name: string, ...extra: string[]): { har: string; hef: string; ppl: number } {
  const har = path.join(dir, `${name}.har`);
  const hef = path.join(dir, `${name}.hef`);
  ok('-q', 'quantize', STORIES, '-o', har, '--calib-samples', CALIB_SAMPLES, '--no-emulation-weights', ...extra);
  ok('-q', 'compile', har, '-o', hef);
  const report = JSON.parse(ok('-q', 'eval', hef, '--task', 'ppl', '--text', 'tinystories', '--seqlen', '256', '--json'));
  return { har, hef, ppl: report.ppl };
}

describe('quantize --recipe: all down_proj at W8 on stories260K', () => {
  const recipe = write('down-proj-w8.yaml', '# every down_proj at W8, the rest the default recipe\noverrides:\n  model.layers.*.mlp.down_proj: {weight_bits: 8}\n');
  let uniform: ReturnType<typeof build>;
  let mixed: ReturnType<typeof build>;
  beforeAll(() => {
    uniform = build('uniform');
    mixed = build('down-w8', '--recipe', recipe);
  });

  it(`runs, with a finite TinyStories ppl not worse than the uniform W4 default by more than ${PPL_TOLERANCE * 100}%`, () => {
    console.info(`TinyStories ppl (${CALIB_SAMPLES} calibration windows): uniform W4 ${uniform.ppl.toFixed(4)}, down_proj W8 ${mixed.ppl.toFixed(4)}`);
    expect(Number.isFinite(mixed.ppl)).toBe(true);
    expect(mixed.ppl).toBeLessThanOrEqual(uniform.ppl * (1 + PPL_TOLERANCE));
  });

  it('records the resolved table and the recipe in the manifest; the uniform HAR has none', async () => {
    const m = await readHarManifest(mixed.har);
    const p = m.precision as any;
    expect(p.recipe).toEqual({ defaults: {}, overrides: { 'model.layers.*.mlp.down_proj': { weight_bits: 8 } } });
    for (let i = 0; i < 5; i++) {
      expect(p.linears[`model.layers.${i}.mlp.down_proj`]).toEqual({ bits: 8, groupSize: 32, method: 'gptq' });
      expect((m.linears as any)[`model.layers.${i}.mlp.down_proj`]).toEqual({ bits: 8, groupSize: 32, scheme: 'symmetric', method: 'gptq' });
      expect(p.linears[`model.layers.${i}.mlp.up_proj`]).toEqual({ bits: 4, groupSize: 32, method: 'gptq' });
    }
    expect(p.linears.lm_head).toEqual({ bits: 4, groupSize: 16, method: 'gptq' });
    expect(await readHarManifest(uniform.har)).not.toHaveProperty('precision');
  });

  it('inspect shows the per-module precision with bytes, for the HAR and the HEF', () => {
    for (const file of [mixed.har, mixed.hef]) {
      const out = ok('inspect', file);
      expect(out).toContain('precision per module (bytes on the device):');
      // down_proj [64, 172] at g32: 6 groups of 32 one-byte codes + a float32 scale per row, ×5 layers
      expect(out).toMatch(/down_proj ×5: +W8 g32 gptq, 67\.5 KiB \(10\.05 bits\/weight\)/);
      expect(out).toMatch(/up_proj ×5: +W4 g32 gptq, 33\.6 KiB/);
      expect(out).toMatch(/lm_head ×1: +W4 g16 gptq, 24\.0 KiB \(6\.00 bits\/weight; also the embedding table\)/);
      expect(out).toMatch(/k_cache ×5: +KV8.*, 80\.0 KiB at 512 tokens/);
    }
    // the HEF header carries the whole table (observers included), as the HAR manifest does
    for (const file of [mixed.har, mixed.hef]) expect(ok('inspect', file)).toMatch(/down_proj_in ×5: +A8 mse/);
    expect(JSON.parse(ok('inspect', mixed.hef, '--json')).precision).toEqual(JSON.parse(ok('inspect', mixed.har, '--json')).precision);
    const j = JSON.parse(ok('inspect', mixed.har, '--json'));
    expect(j.precision).toContainEqual({ kind: 'linear', role: 'down_proj', count: 5, precision: 'W8 g32 gptq', bytes: 5 * 64 * 6 * (32 + 4), weights: 5 * 64 * 172 });
    expect(ok('inspect', uniform.har)).toMatch(/down_proj ×5: +W4 g32 gptq, 37\.5 KiB/);
  });

  it('quantize --json states the nominal bits per weight of the decoder linears', () => {
    const out = path.join(dir, 'json.har');
    const s = JSON.parse(ok('quantize', STORIES, '-o', out, '--calib-samples', '2', '--no-emulation-weights', '--method', 'rtn', '--json'));
    expect(s.bitsPerWeight).toBe(5);
  });
});

describe('quantize --recipe errors', () => {
  /** Runs quantize with `args`; expects exit 2, one stderr line, and no HAR written. */
  function refused(har: string, ...args: string[]): string {
    const r = edgellm('quantize', STORIES, '-o', har, '--calib-samples', '2', ...args);
    expect(r.code, r.stderr).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(fs.existsSync(har)).toBe(false);
    return lines[0];
  }
  const har = path.join(dir, 'refused.har');

  it('an unknown key, naming the file and the key', () => {
    const f = write('unknown.yaml', 'overrides:\n  lm_head: {weight_bit: 8}\n');
    expect(refused(har, '--recipe', f)).toBe(`error: ${f}: overrides['lm_head'].weight_bit: unknown key (expected weight_bits, group_size, weight_method, act_bits, kv_bits, observer)`);
  });

  it('a glob that matches nothing', () => {
    const f = write('nomatch.yaml', 'overrides:\n  model.layers.9.mlp: {weight_bits: 8}\n');
    expect(refused(har, '--recipe', f)).toMatch(new RegExp(`^error: ${f.replace(/[.]/g, '\\.')}: overrides\\['model\\.layers\\.9\\.mlp'\\]: 'model\\.layers\\.9\\.mlp' matches no module of this model`));
  });

  it("a layer's K and V caches at different widths (16-bit KV caches are accepted: test/passes/kv-precision.test.ts)", () => {
    const f = write('kv16-k-only.yaml', 'overrides:\n  model.layers.0.k_cache: {kv_bits: 16}\n');
    expect(refused(har, '--recipe', f)).toMatch(
      new RegExp(`^error: ${f.replace(/[.]/g, '\\.')}: overrides\\['model\\.layers\\.0\\.k_cache'\\]\\.kv_bits: layer 0's K cache gets 16 bits and its V cache 8: a layer's KV cache has one width`),
    );
  });

  it('a precision flag beside a recipe, naming both', () => {
    const f = write('ok.yaml', 'defaults: {weight_bits: 8}\n');
    expect(refused(har, '--recipe', f, '--group-size', '64')).toBe(
      `error: --group-size conflicts with --recipe ${f}: the recipe sets the precision (group_size in its defaults or an override); drop the flag or edit the recipe`,
    );
    expect(refused(har, '--recipe', f, '--no-kv-quant')).toMatch(/^error: --no-kv-quant conflicts with --recipe .*\(kv_bits: 32 in its defaults or an override\)/);
  });

  it('a missing recipe file', () => {
    const f = path.join(dir, 'missing.yaml');
    expect(refused(har, '--recipe', f)).toBe(`error: ${f}: cannot read the recipe: no such file`);
  });
});
